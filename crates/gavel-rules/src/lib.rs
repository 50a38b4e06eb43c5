//! Custom rules (SPEC section 5, stage 7): the Rego policies a contract names, compiled once
//! when the contract loads and run on every request that reaches that stage.
//!
//! A rule file is one Rego v1 module that defines `deny`, a set of messages; each message is a
//! reason the request may not go ahead. The engine builds the input document with [`Doc`]:
//! governance facts about the request, never its texts (docs/rules.md lists every field).
//!
//! ```
//! use gavel_rules::{Doc, RuleProgram};
//!
//! let rule = RuleProgram::compile(
//!     "rules/tokens.rego",
//!     r#"package acme.tokens
//! deny contains msg if {
//!     input.params.max_tokens > 1000
//!     msg := sprintf("max_tokens %d is above 1000", [input.params.max_tokens])
//! }"#,
//! )
//! .unwrap();
//! let asks = |n: u64| Doc::default().with("params", Doc::default().with("max_tokens", n));
//! assert_eq!(rule.evaluate(&asks(4096).into()).unwrap(), ["max_tokens 4096 is above 1000"]);
//! assert!(rule.evaluate(&asks(512).into()).unwrap().is_empty());
//! ```
//!
//! Evaluation runs regorus's interpreter on the policy compiled at load, under a time limit
//! ([`TIME_LIMIT`]), so a rule that loops over something large fails with an error (which the
//! engine turns into `governance.unavailable`) rather than stalling the caller.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Once;
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::utils::limits::{
    fallback_execution_timer_config, set_fallback_execution_timer_config, ExecutionTimerConfig,
};
use regorus::{CompiledPolicy, Value};

/// Longest one evaluation may run, by the clock. A rule over a request's facts takes
/// microseconds; one that takes this long is looping over something large, and the decision
/// waits for it. Generous because the clock also counts time the thread was not running.
pub const TIME_LIMIT: Duration = Duration::from_millis(100);
/// Most messages kept from one evaluation: they become reasons, which the ledger records.
pub const MAX_MESSAGES: usize = 8;
/// Most characters kept of each message, for the same reason.
pub const MAX_MESSAGE_CHARS: usize = 200;
/// One compiled rule file: its package's `deny` set, ready to evaluate from any thread.
#[derive(Clone)]
pub struct RuleProgram {
    package: String,
    policy: CompiledPolicy,
}

impl fmt::Debug for RuleProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleProgram")
            .field("package", &self.package)
            .finish_non_exhaustive()
    }
}

/// Why a rule file does not compile, located in that file where regorus says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// Line and column (from 1) in the rule file.
    pub at: Option<(u32, u32)>,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why an evaluation gave no answer: the request cannot be ruled on by this rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl RuleProgram {
    /// Compiles the Rego v1 module `source`; `name` (the file's path as the contract gives it)
    /// is what errors are reported against.
    pub fn compile(name: &str, source: &str) -> Result<RuleProgram, CompileError> {
        let mut engine = regorus::Engine::new();
        let package = engine
            .add_policy(name.to_string(), source.to_string())
            .map_err(|e| CompileError::from_regorus(&format!("{e:#}")))?;
        let entry = format!("{package}.deny");
        let package = package
            .strip_prefix("data.")
            .unwrap_or(&package)
            .to_string();
        let no_deny = || {
            CompileError {
            at: None,
            message: format!(
                "package `{package}` defines no `deny` rule; a rule file must define `deny contains msg if {{ ... }}`"
            ),
        }
        };
        let policy = engine
            .compile_with_entrypoint(&entry.as_str().into())
            .map_err(|e| match format!("{e:#}") {
                text if text.contains("not a valid rule path") => no_deny(),
                text => CompileError::from_regorus(&text),
            })?;
        // The interpreter resolves a function only when it calls it: an unknown one would
        // fail every request that reaches it. The bytecode compiler resolves them all now.
        Compiler::compile_from_policy(&policy, &[&entry])
            .map_err(|e| CompileError::from_regorus(&format!("{e:#}")))?;
        limit_evaluation_time();
        Ok(RuleProgram { package, policy })
    }

    /// The Rego package the file declares, e.g. `acme.tokens`.
    pub fn package(&self) -> &str {
        &self.package
    }

    /// The messages of `deny` for `input`, in order (empty when nothing is denied). An
    /// error when the rule fails at run time, runs past [`TIME_LIMIT`], or its `deny` is not a
    /// set of messages.
    pub fn evaluate(&self, input: &Field) -> Result<Vec<String>, EvalError> {
        let value = self
            .policy
            .eval_with_input(input.0.clone())
            .map_err(|e| EvalError(format!("{e:#}")))?;
        messages(&value)
    }
}

/// A compiled policy evaluates under regorus's process-wide fallback time limit (it offers no
/// limit per policy); set it once, unless the embedding program has set its own.
fn limit_evaluation_time() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if fallback_execution_timer_config().is_none() {
            set_fallback_execution_timer_config(Some(ExecutionTimerConfig {
                limit: TIME_LIMIT,
                check_interval: NonZeroU32::MIN.saturating_add(63),
            }));
        }
    });
}

/// `deny`'s value as messages: strings as they are, anything else as compact JSON, each cut to
/// [`MAX_MESSAGE_CHARS`], at most [`MAX_MESSAGES`] of them (the last saying how many more).
fn messages(deny: &Value) -> Result<Vec<String>, EvalError> {
    let items: Vec<&Value> = match deny {
        Value::Undefined => return Ok(Vec::new()),
        Value::Set(set) => set.iter_sorted().collect(),
        Value::Array(array) => array.iter().collect(),
        other => {
            return Err(EvalError(format!(
                "`deny` must be a set of messages, not {}",
                cut(&compact(other))
            )))
        }
    };
    let mut out: Vec<String> = items
        .iter()
        .take(MAX_MESSAGES)
        .map(|v| match v {
            Value::String(s) => cut(s),
            other => cut(&compact(other)),
        })
        .collect();
    if items.len() > MAX_MESSAGES {
        if let Some(last) = out.last_mut() {
            last.push_str(&format!(" (and {} more)", items.len() - MAX_MESSAGES));
        }
    }
    Ok(out)
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

impl CompileError {
    /// regorus reports `--> file:line:col`, the source line, a caret and `error: what`, nested
    /// for compilation errors; the innermost location and message say the most.
    fn from_regorus(text: &str) -> CompileError {
        let at = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("--> "))
            .next_back()
            .and_then(|place| {
                let mut parts = place.rsplitn(3, ':');
                let column = parts.next()?.trim().parse().ok()?;
                let line = parts.next()?.trim().parse().ok()?;
                Some((line, column))
            });
        let message = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("error: "))
            .map(|m| m.trim_start_matches("Compilation error:").trim())
            .rfind(|m| !m.is_empty())
            .unwrap_or_else(|| text.lines().next().unwrap_or("unknown error").trim())
            .to_string();
        CompileError { at, message }
    }
}

/// A value of the input document.
#[derive(Debug, Clone, PartialEq)]
pub struct Field(Value);

/// An object of the input document, built key by key. Cloning a [`Field`] made from one is a
/// reference count, so parts that do not change between requests can be built once.
#[derive(Debug, Clone, Default)]
pub struct Doc(BTreeMap<Value, Value>);

impl Doc {
    /// This object with `key` set to `value`.
    pub fn with(mut self, key: &str, value: impl Into<Field>) -> Doc {
        self.set(key, value);
        self
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: impl Into<Field>) {
        self.0.insert(Value::from(key), value.into().0);
    }
}

impl From<Doc> for Field {
    fn from(doc: Doc) -> Field {
        Field(Value::from(doc.0))
    }
}

impl From<&str> for Field {
    fn from(s: &str) -> Field {
        Field(Value::from(s))
    }
}

impl From<bool> for Field {
    fn from(b: bool) -> Field {
        Field(Value::from(b))
    }
}

impl From<u64> for Field {
    fn from(n: u64) -> Field {
        Field(Value::from(n))
    }
}

impl From<f64> for Field {
    fn from(n: f64) -> Field {
        Field(Value::from(n))
    }
}

impl From<&serde_json::Value> for Field {
    fn from(v: &serde_json::Value) -> Field {
        Field(Value::from(v.clone()))
    }
}

impl<T: Into<Field>> From<Option<T>> for Field {
    /// Absent is `null`, which a rule can test for (an undefined key would make every
    /// expression on it undefined).
    fn from(v: Option<T>) -> Field {
        v.map_or(Field(Value::Null), Into::into)
    }
}

impl<T: Into<Field>> FromIterator<T> for Field {
    /// An array.
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Field {
        Field(Value::from(
            items.into_iter().map(|i| i.into().0).collect::<Vec<_>>(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(source: &str) -> RuleProgram {
        match RuleProgram::compile("rules/t.rego", source) {
            Ok(rule) => rule,
            Err(e) => unreachable!("{e} at {:?}", e.at),
        }
    }

    fn principal(name: &str) -> Field {
        Doc::default().with("principal", name).into()
    }

    const ONLY_BATCH: &str = r#"package t
deny contains sprintf("principal %s may not call this", [input.principal]) if {
    input.principal != "svc-batch"
}"#;

    #[test]
    fn deny_gives_one_message_per_element_and_none_when_nothing_matches() {
        let r = rule(ONLY_BATCH);
        assert_eq!(r.package(), "t");
        assert_eq!(
            r.evaluate(&principal("mallory")).unwrap(),
            ["principal mallory may not call this"]
        );
        assert!(r.evaluate(&principal("svc-batch")).unwrap().is_empty());
    }

    /// One compiled policy serves every evaluation: each must see its own input.
    #[test]
    fn each_evaluation_sees_its_own_input() {
        let r = rule(ONLY_BATCH);
        for _ in 0..3 {
            assert_eq!(r.evaluate(&principal("a")).unwrap().len(), 1);
            assert!(r.evaluate(&principal("svc-batch")).unwrap().is_empty());
        }
        // Several threads at once share the pool.
        std::thread::scope(|s| {
            for who in ["x", "svc-batch", "y", "svc-batch"] {
                let r = &r;
                s.spawn(move || {
                    for _ in 0..50 {
                        let denied = !r.evaluate(&principal(who)).unwrap().is_empty();
                        assert_eq!(denied, who != "svc-batch");
                    }
                });
            }
        });
    }

    #[test]
    fn syntax_and_unknown_builtins_are_located_in_the_rule_file() {
        let e = RuleProgram::compile(
            "rules/t.rego",
            "package t\n\ndeny contains m if {\n  input.x ==\n}\n",
        )
        .unwrap_err();
        assert_eq!(e.at, Some((5, 1)), "{e}");
        assert_eq!(e.message, "expecting expression");
        let e = RuleProgram::compile(
            "rules/t.rego",
            "package t\ndeny contains m if { m := http.send({\"url\": input.u}) }\n",
        )
        .unwrap_err();
        assert_eq!(e.at, Some((2, 36)), "{e}");
        assert!(e.message.contains("http.send"), "{e}");
        // Rego v0 bodies (no `if`) are refused with the reason.
        let e = RuleProgram::compile("rules/t.rego", "package t\ndeny[m] { m := input.x }\n")
            .unwrap_err();
        assert!(e.message.contains("`if`"), "{e}");
    }

    #[test]
    fn a_file_without_deny_is_refused() {
        let e = RuleProgram::compile("rules/t.rego", "package t\nallow if input.ok\n").unwrap_err();
        assert_eq!(e.at, None);
        assert!(e.message.contains("defines no `deny` rule"), "{e}");
        let e = RuleProgram::compile(
            "rules/t.rego",
            "package t\n# deny is only a comment here\nallow if true\n",
        )
        .unwrap_err();
        assert!(e.message.contains("defines no `deny` rule"), "{e}");
    }

    /// Rego: an expression on an undefined value fails the body it is in, assignments
    /// included. (regorus's RVM in 0.14.1 lets such a body succeed, which is why it is not
    /// used: here a spurious denial, under `not` a missed one.)
    #[test]
    fn a_body_with_an_undefined_assignment_fails() {
        let r = rule("package t\ndeny contains \"ticket\" if {\n  t := input.m.id\n  not startswith(t, \"T-\")\n}\n");
        let m = |v: serde_json::Value| -> Field { Doc::default().with("m", &v).into() };
        assert!(r.evaluate(&m(serde_json::json!({}))).unwrap().is_empty());
        assert!(r
            .evaluate(&m(serde_json::json!({"id": "T-1"})))
            .unwrap()
            .is_empty());
        assert_eq!(
            r.evaluate(&m(serde_json::json!({"id": "Q"}))).unwrap(),
            ["ticket"]
        );
        let r =
            rule("package t\nok if { t := input.m.role }\ndeny contains \"no role\" if not ok\n");
        assert_eq!(r.evaluate(&m(serde_json::json!({}))).unwrap(), ["no role"]);
    }

    #[test]
    fn a_deny_that_is_not_a_set_is_an_error_not_an_answer() {
        let r = rule("package t\ndeny := true\n");
        let e = r.evaluate(&principal("a")).unwrap_err();
        assert!(e.0.contains("must be a set of messages"), "{e}");
    }

    #[test]
    fn a_rule_that_runs_too_long_is_an_error() {
        let r = rule("package t\ndeny contains sprintf(\"%d\", [i]) if { some i in numbers.range(1, 1000000); i < 0 }\n");
        let e = r.evaluate(&principal("a")).unwrap_err();
        assert!(e.0.contains("time limit"), "{e}");
        // The next evaluation is timed afresh.
        assert!(rule(ONLY_BATCH).evaluate(&principal("a")).is_ok());
    }

    #[test]
    fn messages_are_cut_and_counted() {
        let r = rule("package t\ndeny contains sprintf(\"%d %s\", [i, input.long]) if { some i in numbers.range(1, 20) }\n");
        let long: Field = Doc::default().with("long", "x".repeat(300).as_str()).into();
        let m = r.evaluate(&long).unwrap();
        assert_eq!(m.len(), MAX_MESSAGES);
        assert!(m[0].ends_with("..."), "{}", m[0]);
        assert_eq!(m[0].chars().count(), MAX_MESSAGE_CHARS + 3);
        assert!(m[MAX_MESSAGES - 1].ends_with("(and 12 more)"), "{}", m[7]);
        // Non-string elements become JSON.
        let r = rule("package t\ndeny contains {\"why\": input.principal} if true\n");
        assert_eq!(r.evaluate(&principal("a")).unwrap(), [r#"{"why":"a"}"#]);
    }

    #[test]
    fn input_fields_keep_their_types() {
        let r = rule(
            r#"package t
deny contains "types" if {
    is_number(input.n)
    is_boolean(input.b)
    input.none == null
    input.list == ["a", "b"]
    input.json.k == [1, 2]
    input.x.y == 1.5
}"#,
        );
        let doc: Field = Doc::default()
            .with("n", 3u64)
            .with("b", true)
            .with("none", None::<&str>)
            .with("list", ["a", "b"].into_iter().collect::<Field>())
            .with("json", &serde_json::json!({"k": [1, 2]}))
            .with("x", Doc::default().with("y", 1.5))
            .into();
        assert_eq!(r.evaluate(&doc).unwrap(), ["types"]);
    }
}
