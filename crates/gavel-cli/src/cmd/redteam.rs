//! `gavel redteam FILE... --deployment D`: adversarial (or benign) prompts against the contract
//! in force. Each prompt becomes a request to the deployment (the user's message, or with
//! `--role retrieved|tool_output` a document the request carries) and is decided as a dry run
//! against the approvals alone, like `gavel replay`; the report says how many got the expected
//! outcome (`--expect block`, or `allow` for a benign set's false positives) and why. Nothing is
//! recorded.
//!
//! Corpora are read as they are published: a JSON array of strings or of objects, an object of
//! named arrays (categories), or JSON Lines; an object's text is its `prompt`, `text`,
//! `content`, `context` or `question`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use gavel_contract::Contract;
use gavel_engine::{
    parse_request, ContentRole, DecideInput, DecideRequest, Engine, EngineConfig, MemoryState,
    ReasonCode, Verdict,
};

use super::replay::{approvals_only, Ruling};
use super::status::READERS;
use crate::context::out;
use crate::context::{known_deployment, now, Context};
use crate::failure::{Failure, Outcome};

/// The principal every prompt is decided for.
const REDTEAM_PRINCIPAL: &str = "redteam";
/// A corpus file larger than this is refused: prompts, not a data dump.
const MAX_CORPUS_BYTES: u64 = 256 * 1024 * 1024;
/// What the deployment must let through before its guards are measured.
const PLAIN_QUESTION: &str = "Where can I find the travel expense policy?";
/// Keys whose string is an object's text, in this order.
const TEXT_KEYS: [&str; 5] = ["prompt", "text", "content", "context", "question"];

/// What `gavel redteam` is asked to do.
pub struct RedteamArgs<'a> {
    pub files: &'a [PathBuf],
    pub deployment: &'a str,
    /// `user`, `retrieved` or `tool_output`.
    pub role: &'a str,
    /// `block` or `allow`.
    pub expect: &'a str,
    /// Fail unless at least this share (in percent) got the expected outcome.
    pub require: Option<f64>,
    pub as_json: bool,
    /// How many of the prompts that did not get the expected outcome to show.
    pub show: usize,
}

pub fn run(ctx: &Context, args: &RedteamArgs<'_>) -> Outcome {
    let expect_block = match args.expect {
        "block" => true,
        "allow" => false,
        other => {
            return Err(Failure::usage(format!(
                "--expect `{other}` is not block or allow"
            )))
        }
    };
    let role = match args.role {
        "user" => None,
        "retrieved" => Some(ContentRole::Retrieved),
        "tool_output" => Some(ContentRole::ToolOutput),
        other => {
            return Err(Failure::usage(format!(
                "--role `{other}` is not user, retrieved or tool_output"
            )))
        }
    };
    if let Some(require) = args.require.filter(|r| !(0.0..=100.0).contains(r)) {
        return Err(Failure::usage(format!(
            "--require {require} is not a percentage between 0 and 100"
        )));
    }
    let mut prompts = Vec::new();
    for file in args.files {
        prompts.extend(read_corpus(file)?);
    }
    if prompts.is_empty() {
        return Err(Failure::invalid("the corpora hold no prompt"));
    }
    let loaded = ctx.load_contract()?;
    let store = ctx.store()?;
    ctx.authenticate(&store, READERS, "red-teaming a deployment")?;
    if let Some(why) = ctx.not_in_force(&store, &loaded.contract.version.0)? {
        return Err(Failure::invalid(format!(
            "{why}; redteam measures the contract in force"
        )));
    }
    let contract = Arc::new(loaded.contract);
    let probe = Probe::new(contract, args.deployment, role, approvals_only(&store)?)?;
    // Guards are measured only where a plain question passes: otherwise every prompt would be
    // refused for the same reason (no approval, a conformance problem), and count as caught.
    let plain = probe.rule(PLAIN_QUESTION)?;
    if plain.verdict != Verdict::Allow {
        return Err(Failure::invalid(format!(
            "`{}` refuses even a plain question ({}); red-teaming it would measure that, not its guards",
            args.deployment,
            plain.reason_codes.join(", ")
        )));
    }

    let mut report = Report::default();
    for prompt in &prompts {
        let ruling = match probe.rule(&prompt.text) {
            Ok(ruling) => ruling,
            Err(why) => {
                report
                    .not_measured
                    .push(format!("{}: {}", prompt.source, why.message));
                continue;
            }
        };
        // Bytes no text may hold (NUL, invalid UTF-8) are refused before any guard looks at
        // the words: counted apart, not as caught.
        if ruling.reason_codes == [ReasonCode::InputInvalid.as_str()] {
            report
                .not_measured
                .push(format!("{}: refused as invalid input", prompt.source));
            continue;
        }
        let blocked = ruling.verdict != Verdict::Allow;
        report.count(&ruling, blocked == expect_block, prompt, args.show);
    }
    if report.prompts == 0 {
        return Err(Failure::invalid(format!(
            "no prompt could be measured ({})",
            report.not_measured.first().map_or("", String::as_str)
        )));
    }
    let share = report.expected as f64 * 100.0 / report.prompts as f64;
    if args.as_json {
        out!(
            "{}",
            json!({
                "deployment": args.deployment, "role": args.role, "expect": args.expect,
                "prompts": report.prompts, "as_expected": report.expected, "share_percent": share,
                "blocked": report.blocked, "reasons": report.reasons,
                "not_as_expected": report.misses.iter().map(|p| json!({ "source": p.source, "text": p.text })).collect::<Vec<_>>(),
                "not_measured": report.not_measured,
            })
        );
    } else {
        out!(
            "{} prompt(s) as {} content of `{}`, expecting {}: {} as expected ({share:.2}%)",
            report.prompts,
            args.role,
            args.deployment,
            args.expect,
            report.expected
        );
        out!(
            "  blocked {} ({:.2}%){}",
            report.blocked,
            report.blocked as f64 * 100.0 / report.prompts as f64,
            if report.reasons.is_empty() {
                String::new()
            } else {
                let reasons: Vec<String> = report
                    .reasons
                    .iter()
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect();
                format!(": {}", reasons.join(", "))
            }
        );
        if let Some(first) = report.not_measured.first() {
            out!(
                "  not measured: {} prompt(s), e.g. {first}",
                report.not_measured.len()
            );
        }
        for miss in &report.misses {
            let shown: String = miss.text.chars().take(100).collect();
            out!(
                "  not {}: {} `{}`",
                if expect_block { "blocked" } else { "allowed" },
                miss.source,
                shown.replace('\n', " ")
            );
        }
    }
    match args.require {
        Some(require) if share < require => Err(Failure::invalid(format!(
            "{share:.2}% of the prompts were {}, less than the required {require}%",
            if expect_block { "blocked" } else { "allowed" }
        ))),
        _ => Ok(()),
    }
}

/// A prompt and where it came from (`file`, `file#category`, with its line or position).
#[derive(Debug, Clone)]
struct Prompt {
    source: String,
    text: String,
}

#[derive(Default)]
struct Report {
    prompts: usize,
    expected: usize,
    blocked: usize,
    /// Refusals by reason code.
    reasons: BTreeMap<&'static str, usize>,
    /// The first prompts that did not get the expected outcome.
    misses: Vec<Prompt>,
    /// Prompts not counted, and why (no request could be made of one; bytes no text holds).
    not_measured: Vec<String>,
}

impl Report {
    fn count(&mut self, ruling: &Ruling, as_expected: bool, prompt: &Prompt, show: usize) {
        self.prompts += 1;
        if ruling.verdict != Verdict::Allow {
            self.blocked += 1;
            for code in &ruling.reason_codes {
                *self.reasons.entry(code).or_default() += 1;
            }
        }
        if as_expected {
            self.expected += 1;
        } else if self.misses.len() < show {
            self.misses.push(prompt.clone());
        }
    }
}

/// Decides a prompt as a request to one deployment.
struct Probe {
    engine: Engine,
    deployment: String,
    system_prompt: Option<String>,
    role: Option<ContentRole>,
    state: MemoryState,
}

impl Probe {
    fn new(
        contract: Arc<Contract>,
        deployment: &str,
        role: Option<ContentRole>,
        state: MemoryState,
    ) -> Result<Probe, Failure> {
        let d = known_deployment(&contract, deployment)?;
        // The approved system prompt, as the application would send it.
        let system_prompt = d.prompt_template.as_ref().map(|t| t.filled("x"));
        Ok(Probe {
            deployment: d.id.clone(),
            system_prompt,
            engine: Engine::new(
                contract.clone(),
                EngineConfig::standard().map_err(Failure::storage)?,
            ),
            role,
            state,
        })
    }

    fn rule(&self, text: &str) -> Result<Ruling, Failure> {
        let mut messages = Vec::new();
        if let Some(system) = &self.system_prompt {
            messages.push(json!({ "role": "system", "content": system }));
        }
        let mut request = json!({ "deployment": self.deployment, "dry_run": true });
        match self.role {
            None => messages.push(json!({ "role": "user", "content": text })),
            Some(role) => {
                messages.push(json!({ "role": "user", "content": PLAIN_QUESTION }));
                let role = match role {
                    ContentRole::ToolOutput => "tool_output",
                    _ => "retrieved",
                };
                request["content"] = json!([{ "role": role, "text": text }]);
            }
        }
        request["messages"] = Value::Array(messages);
        let request: DecideRequest = parse_request(request.to_string().as_bytes())
            .map_err(|e| Failure::invalid(format!("no request could be made of it ({})", e.0)))?;
        let decision = self.engine.decide(
            &self.state,
            DecideInput {
                request: &request,
                principal: REDTEAM_PRINCIPAL,
                decision_id: "redteam".to_string(),
                now: now(),
            },
        );
        Ok(Ruling::of(&decision))
    }
}

/// The prompts of one corpus file.
fn read_corpus(path: &Path) -> Result<Vec<Prompt>, Failure> {
    let name = path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|e| Failure::invalid(format!("cannot read `{name}` ({e})")))?
        .len();
    if size > MAX_CORPUS_BYTES {
        return Err(Failure::invalid(format!(
            "`{name}` is larger than {MAX_CORPUS_BYTES} bytes; split it"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::invalid(format!("cannot read `{name}` as UTF-8 text ({e})")))?;
    let mut prompts = Vec::new();
    match serde_json::from_str::<Value>(&text) {
        Ok(whole) => collect(&whole, &name, &mut prompts),
        Err(_) => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(line).map_err(|e| {
                    Failure::invalid(format!(
                        "`{name}` is neither JSON nor JSON Lines: line {} ({e})",
                        i + 1
                    ))
                })?;
                collect(&value, &format!("{name}:{}", i + 1), &mut prompts);
            }
        }
    }
    Ok(prompts)
}

/// Adds the texts `value` holds: a string, an object's text (see [`TEXT_KEYS`]), the items of
/// an array, or the arrays of an object of categories.
fn collect(value: &Value, source: &str, out: &mut Vec<Prompt>) {
    match value {
        Value::String(text) if !text.trim().is_empty() => out.push(Prompt {
            source: source.to_string(),
            text: text.clone(),
        }),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, &format!("{source}[{i}]"), out);
            }
        }
        Value::Object(members) => {
            if let Some(text) = TEXT_KEYS.iter().find_map(|k| members.get(*k)?.as_str()) {
                collect(&Value::String(text.to_string()), source, out);
            } else {
                for (category, items) in members.iter().filter(|(_, v)| v.is_array()) {
                    collect(items, &format!("{source}#{category}"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpora_are_read_as_they_are_published() {
        let mut prompts = Vec::new();
        collect(
            &json!(["one", { "prompt": "two", "uid": "x" }, "", 5, { "context": "three" }]),
            "a.json",
            &mut prompts,
        );
        collect(
            &json!({ "Task Automation": ["four", "five"], "note": "not a category" }),
            "b.json",
            &mut prompts,
        );
        let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three", "four", "five"]);
        assert_eq!(prompts[1].source, "a.json[1]");
        assert_eq!(prompts[4].source, "b.json#Task Automation[1]");
    }
}
