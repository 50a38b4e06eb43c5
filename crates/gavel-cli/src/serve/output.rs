//! Output scanning under `policy.privacy.output`: the model's answer passes through the
//! streaming scanner's hold-back window, so no byte of a span that must be blocked or redacted
//! is released before the scan that catches it has run. Non-streamed answers take the same path
//! in one push.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde_json::{json, Value};

use gavel_contract::{FindingAction, PrivacyActions};
use gavel_engine::ReasonCode;
use gavel_scan::{Finding, FindingKind, Scanners, StreamScanner};

/// An output finding that the policy blocks: the stream must end here.
#[derive(Debug, Clone)]
pub struct Violation {
    pub code: ReasonCode,
    pub rule_id: &'static str,
    /// Bytes of the text that held it: the answer, or the stream `field` names.
    pub span: Range<usize>,
    /// Which text of a streamed choice held it (e.g. `choices[0].delta.tool_calls[1].function.arguments`),
    /// when it was not the content.
    pub field: Option<String>,
}

impl Violation {
    pub fn message(&self) -> String {
        if self.code == ReasonCode::GovernanceUnavailable {
            return format!(
                "the upstream's stream carried more than {MAX_STREAM_TEXTS} separate texts (choices, tool calls, fields), more than gavel guards in one stream, so it was cut at {}",
                self.field.as_deref().unwrap_or("an event")
            );
        }
        format!(
            "the model's output contained {} ({}){} at bytes {}..{}; policy.privacy.output blocks it, so the rest was withheld",
            match self.code {
                ReasonCode::PrivacySecret => "a secret",
                _ => "personal data",
            },
            self.rule_id,
            self.field
                .as_ref()
                .map(|f| format!(" in {f}"))
                .unwrap_or_default(),
            self.span.start,
            self.span.end
        )
    }

    /// What the outcome record says of it (never the text).
    pub fn record(&self) -> Value {
        json!({ "code": self.code.as_str(), "rule_id": self.rule_id, "field": self.field, "start": self.span.start, "end": self.span.end })
    }
}

pub struct OutputGuard {
    scanner: StreamScanner,
    actions: Option<PrivacyActions>,
    /// Spans to replace as they are released, with their placeholders.
    redactions: Vec<(Range<usize>, String)>,
    /// Placeholder numbering per label, in order of appearance within one answer.
    counters: HashMap<&'static str, usize>,
    /// Every finding, for the outcome record (kind, rule, span; never the text).
    pub findings: Vec<Value>,
}

impl OutputGuard {
    pub fn new(scanners: Arc<Scanners>, actions: Option<PrivacyActions>) -> OutputGuard {
        OutputGuard {
            scanner: StreamScanner::new(scanners),
            actions,
            redactions: Vec::new(),
            counters: HashMap::new(),
            findings: Vec::new(),
        }
    }

    /// Adds model output; returns the text now safe to send (possibly empty), or the violation
    /// that ends the answer.
    pub fn push(&mut self, chunk: &str) -> Result<String, Violation> {
        let from = self.scanner.released_len();
        let event = self.scanner.push(chunk);
        let (findings, released) = (event.findings.to_vec(), event.released.to_string());
        self.judge(&findings, from, released)
    }

    /// Guards `text` as a whole answer: one push, then the end.
    pub fn whole(&mut self, text: &str) -> Result<String, Violation> {
        let head = self.push(text)?;
        Ok(head + &self.finish()?)
    }

    /// Ends the answer: decides what was held back and releases the rest.
    pub fn finish(&mut self) -> Result<String, Violation> {
        let from = self.scanner.released_len();
        let event = self.scanner.finish();
        let (findings, released) = (event.findings.to_vec(), event.released.to_string());
        self.judge(&findings, from, released)
    }

    fn judge(
        &mut self,
        findings: &[Finding],
        from: usize,
        released: String,
    ) -> Result<String, Violation> {
        for finding in findings {
            let (action, code) = match finding.kind {
                FindingKind::Secret => (self.actions.map(|a| a.secret), ReasonCode::PrivacySecret),
                FindingKind::Pii => (self.actions.map(|a| a.pii), ReasonCode::PrivacyPii),
                _ => (Some(FindingAction::Flag), ReasonCode::PrivacyPii),
            };
            let action = action.unwrap_or(FindingAction::Allow);
            self.findings.push(json!({
                "kind": finding.kind.as_str(),
                "rule_id": finding.rule_id,
                "start": finding.span.start,
                "end": finding.span.end,
                "action": format!("{action:?}").to_lowercase(),
            }));
            match action {
                FindingAction::Block => {
                    return Err(Violation {
                        code,
                        rule_id: finding.rule_id,
                        span: finding.span.clone(),
                        field: None,
                    })
                }
                FindingAction::Redact => {
                    let label = finding.label();
                    let n = self.counters.entry(label).or_insert(0);
                    *n += 1;
                    self.redactions
                        .push((finding.span.clone(), format!("[{label}_{n}]")));
                }
                FindingAction::Flag | FindingAction::Allow => {}
            }
        }
        Ok(self.redact(from, released))
    }

    /// `released` starts at stream offset `from`; replaces the parts of it that fall in a
    /// redaction span, writing each placeholder once, where its span starts.
    fn redact(&mut self, from: usize, released: String) -> String {
        // Most pieces of most answers: handed on as they were released, not copied again.
        if self.redactions.is_empty() {
            return released;
        }
        let to = from + released.len();
        let mut out = String::with_capacity(released.len());
        let mut at = from;
        self.redactions.sort_by_key(|(span, _)| span.start);
        for (span, placeholder) in &self.redactions {
            if span.end <= at || span.start >= to {
                continue;
            }
            if span.start > at {
                out.push_str(&released[at - from..span.start - from]);
            }
            if span.start >= from {
                out.push_str(placeholder);
            }
            at = span.end.min(to).max(at);
        }
        if at < to {
            out.push_str(&released[at - from..]);
        }
        self.redactions.retain(|(span, _)| span.end > to);
        out
    }
}

/// Where a streamed choice carries text that arrives in pieces, one piece per event. Each is an
/// answer of its own with its own hold-back window: a span split across events (a model streams
/// tool-call arguments a few characters at a time) is caught whole, and the text of one never
/// runs into another's.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Channel {
    Content,
    Refusal,
    /// The deprecated `function_call`'s arguments.
    FunctionArguments,
    /// The arguments of the tool call with this `index`.
    ToolArguments(u64),
    /// The input of the custom tool call with this `index` (`custom.input`).
    ToolInput(u64),
    /// Any other string of the tool call with this `index`, by its JSON pointer within the
    /// call (a `function.input`, an `arguments` beside `function`).
    CallOther(u64, String),
    /// Any other string of the delta, by its JSON pointer within the delta: a reasoning model's
    /// `reasoning_content`, an audio answer's `transcript`, a content part's strings other than
    /// its `text` (which is [`Channel::Content`]).
    Other(String),
}

impl Channel {
    fn field(&self, choice: u64) -> String {
        match self {
            Channel::Content => format!("choices[{choice}].delta.content"),
            Channel::Refusal => format!("choices[{choice}].delta.refusal"),
            Channel::FunctionArguments => {
                format!("choices[{choice}].delta.function_call.arguments")
            }
            Channel::ToolArguments(call) => {
                format!("choices[{choice}].delta.tool_calls[{call}].function.arguments")
            }
            Channel::ToolInput(call) => {
                format!("choices[{choice}].delta.tool_calls[{call}].custom.input")
            }
            Channel::CallOther(call, pointer) => {
                format!(
                    "choices[{choice}].delta.tool_calls[{call}]{}",
                    pointer.replace('/', ".")
                )
            }
            Channel::Other(pointer) => {
                format!("choices[{choice}].delta{}", pointer.replace('/', "."))
            }
        }
    }
}

/// Keys of a delta's own members whose strings name things rather than say them (`"role":
/// "assistant"`, a content part's `type`, an audio answer's `id`): sent as they come, each
/// guarded whole with the rest of the event, never held back. Inside a call only the places
/// [`call_names`] lists name things.
const NAMING_KEYS: [&str; 4] = ["role", "type", "id", "name"];

/// Most texts (choices times channels) one stream may carry. Each holds a window and a scanner;
/// models stream a few choices of a few texts each, and past this the stream is cut.
pub const MAX_STREAM_TEXTS: usize = 1024;

/// What [`StreamGuard::event`] did to an event.
pub struct Guarded {
    /// Whether the event still says anything (pieces that are all held back are not sent).
    pub forward: bool,
    /// JSON pointers to the texts it guarded, which the rest of the event's guarding must
    /// leave alone.
    pub texts: Vec<String>,
    /// The `choices` of an event to send right after this one: the held-back ends of the
    /// choices that finished in it, with their finish.
    pub after: Option<Value>,
}

/// The output guards of one streamed answer: one per choice and [`Channel`], made as their
/// first piece arrives and finished with their choice (or at the end of the stream).
pub struct StreamGuard {
    scanners: Arc<Scanners>,
    actions: Option<PrivacyActions>,
    guards: std::collections::BTreeMap<(u64, Channel), OutputGuard>,
    /// Every finding so far, each naming its field (kind, rule, span; never the text).
    pub findings: Vec<Value>,
    /// Every piece of text the upstream streamed, in arrival order: for the outcome's digest and
    /// for counting tokens when the upstream reports no usage.
    pub seen: String,
    /// Texts given a guard so far (finished ones included).
    texts: usize,
    /// Choices whose latest `content` came as parts: the held-back end of their content goes
    /// out as a text part too, not as a string a parts-reading client would not expect.
    content_as_parts: std::collections::BTreeSet<u64>,
}

impl StreamGuard {
    pub fn new(scanners: Arc<Scanners>, actions: Option<PrivacyActions>) -> StreamGuard {
        StreamGuard {
            scanners,
            actions,
            guards: Default::default(),
            findings: Vec::new(),
            seen: String::new(),
            texts: 0,
            content_as_parts: Default::default(),
        }
    }

    /// Guards one `chat.completion.chunk` in place: each text piece of each choice is replaced
    /// by what its guard releases; the rest of the texts of a choice that finishes, with its
    /// finish, goes in [`Guarded::after`]. Returns what it did, or the violation that ends the
    /// stream.
    pub fn event(&mut self, chunk: &mut Value) -> Result<Guarded, Violation> {
        // An event that reports usage is sent, whatever its choices say.
        let mut guarded = Guarded {
            forward: chunk.get("usage").is_some_and(|u| !u.is_null()),
            texts: Vec::new(),
            after: None,
        };
        let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) else {
            return Ok(guarded);
        };
        if choices.is_empty() {
            guarded.forward = true;
            return Ok(guarded);
        }
        // A finishing choice's held-back texts go in an event of their own right after this
        // one, which carries its finish instead: they arrive after what this event released
        // and before the finish, never meet the shapes of this event's delta, and a client
        // that reads `choices[0]` of each event still reads them.
        let mut after = Vec::new();
        for (position, choice) in choices.iter_mut().enumerate() {
            let index = choice["index"].as_u64().unwrap_or(position as u64);
            let finished = !choice["finish_reason"].is_null();
            let Some(choice) = choice.as_object_mut() else {
                continue;
            };
            if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                guarded.forward |= self.delta(index, delta)?;
            }
            if finished {
                let mut tails = serde_json::Map::new();
                self.finish_choice(index, &mut tails)?;
                if tails.is_empty() {
                    guarded.forward = true;
                } else {
                    let finish = choice
                        .insert("finish_reason".to_string(), Value::Null)
                        .unwrap_or(Value::Null);
                    after.push(json!({ "index": index, "delta": tails, "finish_reason": finish }));
                }
            }
            if let Some(delta) = choice.get("delta").and_then(Value::as_object) {
                let at = format!("/choices/{position}/delta");
                windowed_texts(delta, &at, &mut guarded.texts);
            }
        }
        guarded.after = (!after.is_empty()).then_some(Value::Array(after));
        Ok(guarded)
    }

    /// Guards the texts of one choice's `delta`; whether it still says anything.
    fn delta(
        &mut self,
        index: u64,
        delta: &mut serde_json::Map<String, Value>,
    ) -> Result<bool, Violation> {
        let mut says_something = false;
        // A lone call that says nothing now, to drop as an array's are dropped.
        let mut silent_call = false;
        for (key, value) in delta.iter_mut() {
            let channel = match key.as_str() {
                "content" if value.is_string() => {
                    self.content_as_parts.remove(&index);
                    Channel::Content
                }
                // Content as parts (or one part): each part's `text` is the same text as a
                // `content` string, in the same window, so that a stream that switches between
                // the two shapes, or moves its text part along the array, cannot split a text
                // between two windows.
                "content" if value.is_array() || value.is_object() => {
                    self.content_as_parts.insert(index);
                    says_something |= self.content_parts(index, value)?;
                    continue;
                }
                "refusal" if value.is_string() => Channel::Refusal,
                "function_call" if value.is_object() => {
                    says_something |= self.guard_call(index, Channel::FunctionArguments, value)?;
                    continue;
                }
                // Not a function call's shape: its strings are texts like any other.
                "function_call" => {
                    says_something |=
                        self.other(index, value, "/function_call", function_call_names)?;
                    continue;
                }
                "tool_calls" if value.is_array() => {
                    says_something |= self.guard_calls(index, value)?;
                    continue;
                }
                // One call not wrapped in an array: the same call, and the same window, as
                // when it comes as the array's item, so that its text cannot be split between
                // two windows by changing the shape from one event to the next.
                "tool_calls" if value.is_object() => {
                    let number = value["index"].as_u64().unwrap_or(0);
                    let says = self.guard_call(index, Channel::ToolArguments(number), value)?;
                    silent_call = !says;
                    says_something |= says;
                    continue;
                }
                _ => {
                    says_something |= self.other(index, value, &pointer_segment(key), names)?;
                    continue;
                }
            };
            if let Value::String(text) = value {
                *text = self.push(index, channel, text)?;
                says_something |= !text.is_empty();
            }
        }
        if silent_call
            || delta
                .get("tool_calls")
                .is_some_and(|c| c.as_array().is_some_and(Vec::is_empty))
        {
            delta.remove("tool_calls");
        }
        Ok(says_something)
    }

    /// Guards `content` given as an array of parts or as one part: a part's `text` string (or a
    /// bare string where a part should be) goes through the choice's [`Channel::Content`]
    /// window, a refusal part's `refusal` through its [`Channel::Refusal`] window, the parts'
    /// other strings through windows of their own (as [`StreamGuard::other`] gives them);
    /// whether anything still says something.
    fn content_parts(&mut self, index: u64, content: &mut Value) -> Result<bool, Violation> {
        let Value::Array(parts) = content else {
            return self.content_part(index, content, "/content");
        };
        let mut says = false;
        for (i, part) in parts.iter_mut().enumerate() {
            says |= self.content_part(index, part, &format!("/content/{i}"))?;
        }
        Ok(says)
    }

    fn content_part(&mut self, index: u64, part: &mut Value, at: &str) -> Result<bool, Violation> {
        let members = match part {
            // A bare string where a part should be is text too.
            Value::String(text) => {
                *text = self.push(index, Channel::Content, text)?;
                return Ok(!text.is_empty());
            }
            Value::Object(members) => members,
            _ => return self.other(index, part, at, names),
        };
        let mut says = false;
        for (key, member) in members.iter_mut() {
            says |= match member {
                Value::String(text) if key == "text" => {
                    *text = self.push(index, Channel::Content, text)?;
                    !text.is_empty()
                }
                // A refusal part's text is the refusal's, as a `refusal` string's is.
                Value::String(text) if key == "refusal" => {
                    *text = self.push(index, Channel::Refusal, text)?;
                    !text.is_empty()
                }
                member => self.other(
                    index,
                    member,
                    &format!("{at}{}", pointer_segment(key)),
                    names,
                )?,
            };
        }
        Ok(says)
    }

    /// Guards a delta's `tool_calls` in place, dropping the calls that say nothing now.
    fn guard_calls(&mut self, index: u64, calls: &mut Value) -> Result<bool, Violation> {
        let Value::Array(calls) = calls else {
            return Ok(false);
        };
        let mut kept = Vec::with_capacity(calls.len());
        for (position, mut call) in std::mem::take(calls).into_iter().enumerate() {
            let says = if call.is_object() {
                let number = call["index"].as_u64().unwrap_or(position as u64);
                self.guard_call(index, Channel::ToolArguments(number), &mut call)?
            } else {
                // Not a call's shape: every string of it is a text, by position (no key in it
                // is a call's naming field).
                let at = format!("/tool_calls/{position}");
                self.other(index, &mut call, &at, names_nothing)?
            };
            if says {
                kept.push(call);
            }
        }
        let says_something = !kept.is_empty();
        *calls = kept;
        Ok(says_something)
    }

    /// Guards the texts of a function or tool call in place, each with a window of its own;
    /// whether the call still says anything (its id, name or type, or text released now).
    /// `channel` is the call's arguments channel: [`Channel::ToolArguments`] for a tool call
    /// (its texts keyed by the call's `index`, so that its pieces meet in one window whatever
    /// shape they come in), [`Channel::FunctionArguments`] for the deprecated `function_call`.
    fn guard_call(
        &mut self,
        choice: u64,
        channel: Channel,
        call: &mut Value,
    ) -> Result<bool, Violation> {
        if !call.is_object() {
            return Ok(!call.is_null());
        }
        if let Channel::ToolArguments(number) = channel {
            // One buffer for every pointer within the call: a few characters stream per event,
            // and a string per key per event was most of the cost of guarding one.
            let mut path = String::with_capacity(32);
            return self.call_text(choice, number, call, &mut path);
        }
        let Value::Object(members) = call else {
            return Ok(false);
        };
        let mut says_something = false;
        for (key, member) in members.iter_mut() {
            let at = pointer_segment(key);
            says_something |= match &channel {
                _ if key == "arguments" && member.is_string() => {
                    let Value::String(text) = member else {
                        continue;
                    };
                    *text = self.push(choice, Channel::FunctionArguments, text)?;
                    !text.is_empty()
                }
                _ => self.other(
                    choice,
                    member,
                    &format!("/function_call{at}"),
                    function_call_names,
                )?,
            };
        }
        Ok(says_something)
    }

    /// Guards the strings under `value`, at `path` within tool call `number`: the call's naming
    /// fields ([`call_names`]) go as they are; every other string has a window (the function's
    /// `arguments`, a custom tool's `input`, any other key, a string `index`), so that nothing
    /// of a call is judged one event at a time. Whether anything of it says something.
    fn call_text(
        &mut self,
        choice: u64,
        number: u64,
        value: &mut Value,
        path: &mut String,
    ) -> Result<bool, Violation> {
        match value {
            Value::String(text) => {
                if call_names(path) {
                    return Ok(!text.is_empty());
                }
                let channel = match path.as_str() {
                    "/function/arguments" => Channel::ToolArguments(number),
                    "/custom/input" => Channel::ToolInput(number),
                    _ => Channel::CallOther(number, path.clone()),
                };
                *text = self.push(choice, channel, text)?;
                Ok(!text.is_empty())
            }
            Value::Array(items) => {
                let mut says = false;
                let len = path.len();
                for (i, item) in items.iter_mut().enumerate() {
                    path.push('/');
                    path.push_str(&i.to_string());
                    says |= self.call_text(choice, number, item, path)?;
                    path.truncate(len);
                }
                Ok(says)
            }
            Value::Object(members) => {
                let mut says = false;
                let len = path.len();
                for (key, member) in members.iter_mut() {
                    push_segment(path, key);
                    says |= self.call_text(choice, number, member, path)?;
                    path.truncate(len);
                }
                Ok(says)
            }
            Value::Null => Ok(false),
            // The call's `index` only says which call a piece belongs to.
            Value::Bool(_) | Value::Number(_) => Ok(path != "/index"),
        }
    }

    /// Guards every string under `value` (at `path` within the delta) with a window of its
    /// own, but those `naming` says name something; whether anything of it still says
    /// something.
    fn other(
        &mut self,
        index: u64,
        value: &mut Value,
        path: &str,
        naming: Naming,
    ) -> Result<bool, Violation> {
        match value {
            Value::String(text) => {
                if naming(path) {
                    return Ok(!text.is_empty());
                }
                *text = self.push(index, Channel::Other(path.to_string()), text)?;
                Ok(!text.is_empty())
            }
            Value::Array(items) => {
                let mut says = false;
                for (i, item) in items.iter_mut().enumerate() {
                    says |= self.other(index, item, &format!("{path}/{i}"), naming)?;
                }
                Ok(says)
            }
            Value::Object(members) => {
                let mut says = false;
                for (key, member) in members.iter_mut() {
                    let inner = format!("{path}{}", pointer_segment(key));
                    says |= self.other(index, member, &inner, naming)?;
                }
                Ok(says)
            }
            Value::Null => Ok(false),
            Value::Bool(_) | Value::Number(_) => Ok(true),
        }
    }

    /// Ends the stream: the rest of every choice that did not finish, as the `choices` of one
    /// last event (None when nothing was held back), or the violation found in it.
    pub fn finish(&mut self) -> Result<Option<Value>, Violation> {
        let mut open: Vec<u64> = self.guards.keys().map(|(choice, _)| *choice).collect();
        open.dedup();
        let mut choices = Vec::new();
        for index in open {
            let mut delta = serde_json::Map::new();
            self.finish_choice(index, &mut delta)?;
            if !delta.is_empty() {
                choices.push(json!({ "index": index, "delta": delta, "finish_reason": null }));
            }
        }
        Ok((!choices.is_empty()).then_some(Value::Array(choices)))
    }

    fn push(&mut self, choice: u64, channel: Channel, piece: &str) -> Result<String, Violation> {
        self.seen.push_str(piece);
        let key = (choice, channel);
        if !self.guards.contains_key(&key) {
            if self.texts >= MAX_STREAM_TEXTS {
                return Err(Violation {
                    code: ReasonCode::GovernanceUnavailable,
                    rule_id: "stream.too_many_texts",
                    span: 0..0,
                    field: Some(key.1.field(choice)),
                });
            }
            self.texts += 1;
        }
        let guard = self
            .guards
            .entry(key.clone())
            .or_insert_with(|| OutputGuard::new(self.scanners.clone(), self.actions));
        let released = guard.push(piece);
        tagged(&mut self.findings, guard, || key.1.field(choice), released)
    }

    /// Finishes every guard of `choice`, adding what they held back to `delta`.
    fn finish_choice(
        &mut self,
        choice: u64,
        delta: &mut serde_json::Map<String, Value>,
    ) -> Result<(), Violation> {
        let channels: Vec<Channel> = self
            .guards
            .range((choice, Channel::Content)..)
            .take_while(|((c, _), _)| *c == choice)
            .map(|((_, channel), _)| channel.clone())
            .collect();
        // Where each tool call's texts go in `delta`, by the call's index, so that many calls'
        // tails are placed in one pass.
        let mut call_at: HashMap<u64, usize> = HashMap::new();
        for channel in channels {
            let Some(mut guard) = self.guards.remove(&(choice, channel.clone())) else {
                continue;
            };
            let tail = guard.finish();
            let tail = tagged(
                &mut self.findings,
                &mut guard,
                || channel.field(choice),
                tail,
            )?;
            if tail.is_empty() {
                continue;
            }
            if channel == Channel::Content && self.content_as_parts.contains(&choice) {
                delta.insert(
                    "content".to_string(),
                    json!([{ "type": "text", "text": tail }]),
                );
            } else {
                put_tail(delta, &channel, tail, &mut call_at);
            }
        }
        self.content_as_parts.remove(&choice);
        Ok(())
    }
}

/// Says whether the string at a pointer names something rather than says it: sent as it
/// comes, never held back.
type Naming = fn(&str) -> bool;

/// In a delta's own members (`role`, a content part's `type`, an audio answer's `id`): the
/// string's key is one of [`NAMING_KEYS`].
fn names(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|key| NAMING_KEYS.contains(&key))
}

/// In a tool call: its `id` and `type` and its function's or custom tool's `name`, where the API
/// puts them, and nowhere else (a `name` inside the arguments is the model's text).
fn call_names(path: &str) -> bool {
    matches!(path, "/id" | "/type" | "/function/name" | "/custom/name")
}

/// Inside an item of `tool_calls` that is not a call: nothing there is a call's naming field.
fn names_nothing(_: &str) -> bool {
    false
}

/// In the deprecated `function_call`: its `name`.
fn function_call_names(path: &str) -> bool {
    path == "/function_call/name"
}

/// Adds to `texts` the pointers (`at` followed by `path`) of the strings under `value` that
/// have windows: all but those `naming` says name something.
fn windowed_strings(
    value: &Value,
    path: &mut String,
    at: &str,
    naming: Naming,
    texts: &mut Vec<String>,
) {
    let len = path.len();
    match value {
        Value::String(_) if !naming(path) => texts.push(format!("{at}{path}")),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push('/');
                path.push_str(&i.to_string());
                windowed_strings(item, path, at, naming, texts);
                path.truncate(len);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                push_segment(path, key);
                windowed_strings(member, path, at, naming, texts);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Adds to `texts` the pointers (under `at`) of the strings of `delta` that have windows, as
/// [`StreamGuard::delta`] chose them, tails included: the rest of the event's guarding leaves
/// them alone.
fn windowed_texts(delta: &serde_json::Map<String, Value>, at: &str, texts: &mut Vec<String>) {
    // One buffer for the pointers within a member, as in `StreamGuard::call_text`.
    let mut path = String::with_capacity(32);
    for (key, value) in delta {
        path.clear();
        match (key.as_str(), value) {
            ("content" | "refusal", Value::String(_)) => texts.push(format!("{at}/{key}")),
            ("function_call", call) => {
                path.push_str("/function_call");
                windowed_strings(call, &mut path, at, function_call_names, texts);
            }
            ("tool_calls", Value::Array(calls)) => {
                for (i, call) in calls.iter().enumerate() {
                    path.clear();
                    if call.is_object() {
                        let call_at = format!("{at}/tool_calls/{i}");
                        windowed_strings(call, &mut path, &call_at, call_names, texts);
                    } else {
                        path.push_str(&format!("/tool_calls/{i}"));
                        windowed_strings(call, &mut path, at, names_nothing, texts);
                    }
                }
            }
            ("tool_calls", call @ Value::Object(_)) => {
                let call_at = format!("{at}/tool_calls");
                windowed_strings(call, &mut path, &call_at, call_names, texts);
            }
            _ => {
                push_segment(&mut path, key);
                windowed_strings(value, &mut path, at, names, texts);
            }
        }
    }
}

/// The pointers of the windowed texts of an event of held-back ends (its `choices` from
/// [`Guarded::after`] or [`StreamGuard::finish`]).
pub fn tail_texts(chunk: &Value) -> Vec<String> {
    let mut texts = Vec::new();
    for (position, choice) in chunk["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(delta) = choice["delta"].as_object() {
            windowed_texts(delta, &format!("/choices/{position}/delta"), &mut texts);
        }
    }
    texts
}

/// `key` as a JSON pointer segment (RFC 6901: `~` and `/` escaped), with its leading `/`.
fn pointer_segment(key: &str) -> String {
    let mut segment = String::with_capacity(key.len() + 1);
    push_segment(&mut segment, key);
    segment
}

/// Appends `key` to `path` as a JSON pointer segment ([`pointer_segment`]).
fn push_segment(path: &mut String, key: &str) {
    path.push('/');
    if key.contains(['~', '/']) {
        path.push_str(&key.replace('~', "~0").replace('/', "~1"));
    } else {
        path.push_str(key);
    }
}

/// Moves the findings of a guard into `findings`, each naming its `field`, and names the field
/// of a violation; the field is written out only then, not for every piece.
fn tagged(
    findings: &mut Vec<Value>,
    guard: &mut OutputGuard,
    field: impl Fn() -> String,
    released: Result<String, Violation>,
) -> Result<String, Violation> {
    for mut finding in guard.findings.drain(..) {
        finding["field"] = json!(field());
        findings.push(finding);
    }
    released.map_err(|mut v| {
        v.field = Some(field());
        v
    })
}

/// Adds the held-back end of `channel`'s text to a choice's `delta`, after what the delta
/// already carries of it; `call_at` says where each tool call already is in the delta.
fn put_tail(
    delta: &mut serde_json::Map<String, Value>,
    channel: &Channel,
    tail: String,
    call_at: &mut HashMap<u64, usize>,
) {
    match channel {
        Channel::Content => append(delta.entry("content").or_insert(Value::Null), tail),
        Channel::Refusal => append(delta.entry("refusal").or_insert(Value::Null), tail),
        Channel::FunctionArguments => append_at(
            delta.entry("function_call").or_insert(Value::Null),
            "/arguments",
            tail,
        ),
        Channel::ToolArguments(number)
        | Channel::ToolInput(number)
        | Channel::CallOther(number, _) => {
            let pointer = match channel {
                Channel::ToolInput(_) => "/custom/input",
                Channel::CallOther(_, pointer) => pointer.as_str(),
                _ => "/function/arguments",
            };
            let calls = delta.entry("tool_calls").or_insert_with(|| json!([]));
            let Value::Array(calls) = calls else { return };
            let at = *call_at.entry(*number).or_insert_with(|| {
                calls.push(json!({ "index": number }));
                calls.len() - 1
            });
            if let Some(call) = calls.get_mut(at) {
                append_at(call, pointer, tail);
            }
        }
        Channel::Other(pointer) => {
            let Some((first, rest)) = pointer
                .strip_prefix('/')
                .map(|p| p.split_once('/').map_or((p, ""), |(f, r)| (f, r)))
            else {
                return;
            };
            let key = first.replace("~1", "/").replace("~0", "~");
            let rest = if rest.is_empty() {
                String::new()
            } else {
                format!("/{rest}")
            };
            append_at(delta.entry(key).or_insert(Value::Null), &rest, tail);
        }
    }
}

/// Appends `tail` to the string in `slot`, or puts it there if `slot` is empty. A slot holding
/// something else (a stream that changed a field's shape) is left as it is and the tail
/// dropped: losing text is better than overwriting text already released.
fn append(slot: &mut Value, tail: String) {
    match slot {
        Value::String(text) => text.push_str(&tail),
        Value::Null => *slot = Value::String(tail),
        _ => {}
    }
}

/// Most empty items [`append_at`] adds to an array to reach an index: content parts sit near
/// the front, and an index taken from the upstream must not size an allocation.
const MOST_PADDING: usize = 64;

/// Appends `tail` to the string at `pointer` under `slot`, making the objects and array items
/// the way needs (an array is grown by at most [`MOST_PADDING`] empty objects). A way that
/// runs into something of another shape is not forced: the tail is dropped (see [`append`]).
fn append_at(slot: &mut Value, pointer: &str, tail: String) {
    let Some(rest) = pointer.strip_prefix('/') else {
        return append(slot, tail);
    };
    let (segment, rest) = rest.split_once('/').map_or((rest, ""), |(s, r)| (s, r));
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("/{rest}")
    };
    // An array index in canonical form only (`+1` and `01` are keys).
    let canonical = segment == "0"
        || (!segment.is_empty()
            && !segment.starts_with('0')
            && segment.bytes().all(|b| b.is_ascii_digit()));
    let index = canonical.then(|| segment.parse::<usize>().ok()).flatten();
    if slot.is_null() {
        // A pointer does not say whether `7` is an index or a key: a small number makes an
        // array (content parts), anything else an object.
        *slot = if index.is_some_and(|i| i < MOST_PADDING) {
            json!([])
        } else {
            json!({})
        };
    }
    match (index, slot) {
        (Some(i), Value::Array(items)) => {
            if i >= items.len() && i - items.len() < MOST_PADDING {
                // Empty objects up to it; the item itself empty, for the way on to fill.
                items.resize_with(i, || json!({}));
                items.push(Value::Null);
            }
            if let Some(item) = items.get_mut(i) {
                append_at(item, &rest, tail);
            }
        }
        (_, Value::Object(members)) => {
            let key = segment.replace("~1", "/").replace("~0", "~");
            append_at(members.entry(key).or_insert(Value::Null), &rest, tail);
        }
        _ => {}
    }
}

/// Guards, in place, every string in `value` (object keys included), each as a whole answer
/// with a guard of its own from `new_guard`, adding what they found to `findings`. An upstream's
/// answer carries text in more places than the message content the proxy guards as the answer
/// (a `refusal`, tool-call arguments, content given as parts, an error's message, fields of the
/// upstream's own), and all of it reaches the client. A span split across two strings (two
/// stream events) is seen by neither.
pub fn guard_strings(
    value: &mut Value,
    new_guard: &dyn Fn() -> OutputGuard,
    findings: &mut Vec<Value>,
) -> Result<(), Violation> {
    match value {
        Value::String(text) => {
            if let Some(guarded) = guarded(text, new_guard, findings)? {
                *text = guarded;
            }
        }
        Value::Array(items) => {
            for item in items {
                guard_strings(item, new_guard, findings)?;
            }
        }
        Value::Object(members) => {
            // Keys are rewritten only when guarding changed one (a redaction): rebuilding the
            // map for every object would cost more than guarding it.
            let mut renamed = Vec::new();
            for (key, member) in members.iter_mut() {
                guard_strings(member, new_guard, findings)?;
                if let Some(guarded_key) = guarded(key, new_guard, findings)? {
                    renamed.push((key.clone(), guarded_key));
                }
            }
            // Two keys can redact to the same placeholder (each string is guarded on its own):
            // the later ones are numbered rather than overwrite a member, each placeholder's
            // count kept so that many such keys are numbered in one pass.
            let mut taken: HashMap<String, usize> = HashMap::new();
            for (key, guarded_key) in renamed {
                if let Some(member) = members.remove(&key) {
                    let n = taken.entry(guarded_key.clone()).or_insert(1);
                    let mut free = guarded_key.clone();
                    while members.contains_key(&free) {
                        *n += 1;
                        free = format!("{guarded_key} ({n})");
                    }
                    members.insert(free, member);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Most strings [`CLEAN`] holds before it starts again.
const CLEAN_MOST: usize = 512;

/// Longest string [`CLEAN`] remembers: what recurs is short (names, ids, a model), and
/// remembering long strings would let an upstream fill 512 entries with answers of up to the
/// 32 MiB an answer may hold.
const CLEAN_LONGEST: usize = 256;

thread_local! {
    /// Strings this thread guarded and found to hold nothing at all, not scanned again:
    /// answers repeat themselves (field names, a model's name, a stream's id in every event),
    /// and each string scanned costs about half a microsecond. Whether a string holds a
    /// finding depends on it and the scanners alone, not on the policy or the answer around
    /// it, so what was clean once stays clean. Emptied when full, so that ids seen once do not
    /// keep out the strings that recur.
    static CLEAN: std::cell::RefCell<std::collections::HashSet<String>> = Default::default();
}

/// Guards `text` as a whole answer, unless this thread found it clean before: what to put in
/// its place if guarding changed it (a redaction), `None` if it goes as it is.
fn guarded(
    text: &str,
    new_guard: &dyn Fn() -> OutputGuard,
    findings: &mut Vec<Value>,
) -> Result<Option<String>, Violation> {
    if CLEAN.with_borrow(|clean| clean.contains(text)) {
        return Ok(None);
    }
    let mut guard = new_guard();
    let result = guard.whole(text);
    if guard.findings.is_empty() && text.len() <= CLEAN_LONGEST {
        CLEAN.with_borrow_mut(|clean| {
            if clean.len() >= CLEAN_MOST {
                clean.clear();
            }
            clean.insert(text.to_string());
        });
    }
    findings.append(&mut guard.findings);
    Ok(Some(result?).filter(|guarded| guarded != text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_scan::ScanConfig;

    fn guard(pii: FindingAction) -> OutputGuard {
        let scanners = Arc::new(Scanners::new(&ScanConfig::default()).unwrap());
        OutputGuard::new(
            scanners,
            Some(PrivacyActions {
                pii,
                secret: FindingAction::Block,
            }),
        )
    }

    /// Feeds `text` in `size`-byte chunks (on char boundaries) and returns what was released.
    fn run(guard: &mut OutputGuard, text: &str, size: usize) -> Result<String, Violation> {
        let mut out = String::new();
        let mut start = 0;
        while start < text.len() {
            let mut end = (start + size).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            out.push_str(&guard.push(&text[start..end])?);
            start = end;
        }
        out.push_str(&guard.finish()?);
        Ok(out)
    }

    #[test]
    fn redacts_across_chunk_boundaries_in_order() {
        let text = "Write to jane.doe@example.org or to jane.doe@example.org, and bob@example.com.";
        for size in [1, 3, 7, 64] {
            let out = run(&mut guard(FindingAction::Redact), text, size).unwrap();
            assert_eq!(
                out, "Write to [EMAIL_1] or to [EMAIL_2], and [EMAIL_3].",
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn a_blocked_span_is_never_released() {
        let text = format!(
            "{} call me at jane.doe@example.org tomorrow",
            "ok ".repeat(100)
        );
        for size in [1, 5, 50] {
            let mut g = guard(FindingAction::Block);
            let mut released = String::new();
            let mut start = 0;
            let violation = loop {
                let end = (start + size).min(text.len());
                match g.push(&text[start..end]) {
                    Ok(r) => released.push_str(&r),
                    Err(v) => break Some(v),
                }
                start = end;
                if start == text.len() {
                    break g.finish().err();
                }
            };
            let v = violation.expect("the e-mail must be caught");
            assert_eq!(v.code, ReasonCode::PrivacyPii);
            assert!(released.len() <= v.span.start, "released past the finding");
            assert!(!released.contains('@'));
        }
    }

    #[test]
    fn clean_text_passes_unchanged() {
        let text = "The VPN guide is on the wiki under IT > Remote access. ".repeat(20);
        assert_eq!(
            run(&mut guard(FindingAction::Block), &text, 13).unwrap(),
            text
        );
    }

    /// Every string of an answer is guarded, keys included; what holds a finding is guarded
    /// again each time (only clean strings are remembered), and a redacted key is renamed.
    #[test]
    fn every_string_is_guarded_each_time_it_holds_something() {
        let email = "jane.doe@example.org";
        for _ in 0..3 {
            let mut answer = serde_json::json!({
                "id": "c1",
                "choices": [{"message": {"refusal": format!("write to {email}")}}],
                (format!("note {email}")): 1,
            });
            let mut findings = Vec::new();
            guard_strings(&mut answer, &|| guard(FindingAction::Redact), &mut findings).unwrap();
            let text = answer.to_string();
            assert!(!text.contains(email), "{text}");
            assert_eq!(
                answer["choices"][0]["message"]["refusal"],
                "write to [EMAIL_1]"
            );
            assert_eq!(answer["note [EMAIL_1]"], 1, "{text}");
            assert_eq!(findings.len(), 2);
            // Two keys redacted alike keep both members.
            let mut twins =
                serde_json::json!({ (format!("to {email}")): 1, "to bob@example.com": 2 });
            guard_strings(
                &mut twins,
                &|| guard(FindingAction::Redact),
                &mut Vec::new(),
            )
            .unwrap();
            assert_eq!(twins.as_object().unwrap().len(), 2, "{twins}");
            let mut blocked = answer.clone();
            blocked["extra"] = serde_json::json!(["ok", email]);
            let refused = guard_strings(
                &mut blocked,
                &|| guard(FindingAction::Block),
                &mut Vec::new(),
            );
            assert!(refused.is_err());
        }
    }

    fn stream(pii: FindingAction) -> StreamGuard {
        let scanners = Arc::new(Scanners::new(&ScanConfig::default()).unwrap());
        StreamGuard::new(
            scanners,
            Some(PrivacyActions {
                pii,
                secret: FindingAction::Block,
            }),
        )
    }

    /// A chunk of choice `choice` whose delta is `delta`.
    fn chunk(choice: u64, delta: Value, finish: Option<&str>) -> Value {
        serde_json::json!({ "object": "chat.completion.chunk",
            "choices": [{ "index": choice, "delta": delta, "finish_reason": finish }] })
    }

    /// `text` in pieces of `size` bytes, as a model streams a tool call's arguments: the first
    /// piece with the call's id and name.
    fn tool_call_pieces(text: &str, size: usize) -> Vec<Value> {
        let mut pieces = vec![chunk(
            0,
            serde_json::json!({ "role": "assistant", "tool_calls": [{ "index": 0, "id": "call_1", "type": "function", "function": { "name": "send", "arguments": "" } }] }),
            None,
        )];
        for piece in text.as_bytes().chunks(size) {
            let piece = std::str::from_utf8(piece).unwrap();
            pieces.push(chunk(
                0,
                serde_json::json!({ "tool_calls": [{ "index": 0, "function": { "arguments": piece } }] }),
                None,
            ));
        }
        pieces
    }

    /// What the client receives of `event`: the event itself if it still says something, then
    /// the event of the held-back ends of the choices that finished in it.
    fn relay(guard: &mut StreamGuard, mut event: Value) -> Vec<Value> {
        let guarded = guard.event(&mut event).unwrap();
        let mut sent = Vec::new();
        if guarded.forward {
            sent.push(event);
        }
        sent.extend(
            guarded
                .after
                .map(|choices| serde_json::json!({ "choices": choices })),
        );
        sent
    }

    /// What the client receives of tool call 0's arguments: every forwarded event's piece.
    fn arguments_sent(events: &[Value]) -> String {
        events
            .iter()
            .flat_map(|e| e["choices"].as_array().into_iter().flatten())
            .filter_map(|c| c["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
            .collect()
    }

    /// A model streams tool-call arguments a few characters at a time, so a secret in them is
    /// never whole in one event: each call's arguments have a hold-back window of their own.
    #[test]
    fn a_secret_split_across_tool_call_pieces_is_caught_before_any_of_it_is_sent() {
        let token = format!("ghp_{}", "wWPw5k4aXcaT4fNP0UcnZwJUVFk6LO0pINUx");
        let arguments = format!("{{\"note\": \"use {token} to push\"}}");
        for size in [1, 3, 4, 16] {
            let mut guard = stream(FindingAction::Block);
            let mut sent = Vec::new();
            let violation = tool_call_pieces(&arguments, size)
                .into_iter()
                .find_map(|mut event| match guard.event(&mut event) {
                    Ok(guarded) => {
                        if guarded.forward {
                            sent.push(event);
                        }
                        None
                    }
                    Err(v) => Some(v),
                })
                .or_else(|| guard.finish().err())
                .expect("the token must be caught");
            assert_eq!(violation.code, ReasonCode::PrivacySecret, "size {size}");
            assert_eq!(
                violation.field.as_deref(),
                Some("choices[0].delta.tool_calls[0].function.arguments")
            );
            let released = arguments_sent(&sent);
            assert!(
                released.len() <= violation.span.start,
                "size {size}: {released}"
            );
            assert!(arguments.starts_with(&released));
            // The call itself (id and name) was announced.
            assert_eq!(
                sent[0]["choices"][0]["delta"]["tool_calls"][0]["id"],
                "call_1"
            );
        }
    }

    #[test]
    fn tool_call_arguments_are_redacted_across_pieces_and_finished_with_their_choice() {
        let arguments = r#"{"to": "jane.doe@example.org", "cc": "bob@example.com"}"#;
        for size in [1, 2, 5, 64] {
            let mut guard = stream(FindingAction::Redact);
            let mut events = tool_call_pieces(arguments, size);
            events.push(chunk(0, serde_json::json!({}), Some("tool_calls")));
            let sent: Vec<Value> = events
                .into_iter()
                .flat_map(|event| relay(&mut guard, event))
                .collect();
            assert_eq!(guard.finish().unwrap(), None, "the choice finished already");
            assert_eq!(
                arguments_sent(&sent),
                r#"{"to": "[EMAIL_1]", "cc": "[EMAIL_2]"}"#,
                "size {size}"
            );
            assert_eq!(
                sent.last().unwrap()["choices"][0]["finish_reason"],
                "tool_calls"
            );
            assert_eq!(guard.findings.len(), 2);
            assert_eq!(
                guard.findings[0]["field"],
                "choices[0].delta.tool_calls[0].function.arguments"
            );
            // A piece that released nothing is not sent as an event of its own.
            for event in &sent[1..sent.len() - 1] {
                let call = &event["choices"][0]["delta"]["tool_calls"][0];
                assert_ne!(call["function"]["arguments"], "", "size {size}: {event}");
            }
        }
    }

    /// With `n` > 1 the choices' pieces interleave: each choice is an answer of its own, so
    /// nothing of one is released into another, and a refusal has a window of its own too.
    #[test]
    fn interleaved_choices_and_refusals_keep_their_own_text() {
        let first = "Mail jane.doe@example.org about the outage. ".repeat(2);
        let second = "Nothing personal here, only the outage report. ".repeat(3);
        let refusal = "I cannot write to bob@example.com.";
        let mut guard = stream(FindingAction::Redact);
        let mut texts: [String; 3] = Default::default();
        let mut take = |event: &Value| {
            for choice in event["choices"].as_array().unwrap() {
                let i = choice["index"].as_u64().unwrap() as usize;
                let delta = &choice["delta"];
                texts[i].push_str(delta["content"].as_str().unwrap_or(""));
                texts[2].push_str(delta["refusal"].as_str().unwrap_or(""));
            }
        };
        let pieces = |text: &str| -> Vec<String> {
            text.as_bytes()
                .chunks(3)
                .map(|p| String::from_utf8(p.to_vec()).unwrap())
                .collect()
        };
        let (a, b, r) = (pieces(&first), pieces(&second), pieces(refusal));
        for i in 0..a.len().max(b.len()) {
            for (choice, pieces) in [(0, &a), (1, &b)] {
                if let Some(piece) = pieces.get(i) {
                    let mut delta = serde_json::json!({ "content": piece });
                    if choice == 1 {
                        if let Some(piece) = r.get(i) {
                            delta["refusal"] = serde_json::json!(piece);
                        }
                    }
                    let mut event = chunk(choice, delta, None);
                    if guard.event(&mut event).unwrap().forward {
                        take(&event);
                    }
                }
            }
        }
        for sent in relay(&mut guard, chunk(0, serde_json::json!({}), Some("stop"))) {
            take(&sent);
        }
        // Choice 1 never finished: its rest comes with the end of the stream.
        let rest = guard.finish().unwrap().expect("choice 1 held text back");
        take(&serde_json::json!({ "choices": rest }));
        assert_eq!(
            texts[0],
            "Mail [EMAIL_1] about the outage. Mail [EMAIL_2] about the outage. "
        );
        assert_eq!(texts[1], second);
        assert_eq!(texts[2], "I cannot write to [EMAIL_1].");
    }

    /// Text in fields of a delta other than the content, the refusal and the calls' arguments
    /// (a reasoning model's `reasoning_content`, an audio answer's transcript) has a window of
    /// its own too; naming fields (`role`, `id`, `type`, `name`) go as they come.
    #[test]
    fn other_streamed_texts_have_windows_of_their_own() {
        let token = format!("ghp_{}", "wWPw5k4aXcaT4fNP0UcnZwJUVFk6LO0pINUx");
        let reasoning = format!("I could use {token} for that.");
        let mut guard = stream(FindingAction::Block);
        let mut first = chunk(
            0,
            serde_json::json!({ "role": "assistant", "audio": { "id": "audio_1" } }),
            None,
        );
        let guarded = guard.event(&mut first).unwrap();
        assert!(guarded.forward);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["audio"]["id"], "audio_1");
        let mut released = String::new();
        let mut violation = None;
        for piece in reasoning.as_bytes().chunks(4) {
            let piece = std::str::from_utf8(piece).unwrap();
            let mut event = chunk(0, serde_json::json!({ "reasoning_content": piece }), None);
            match guard.event(&mut event) {
                Ok(guarded) => {
                    assert_eq!(guarded.texts, ["/choices/0/delta/reasoning_content"]);
                    released.push_str(
                        event["choices"][0]["delta"]["reasoning_content"]
                            .as_str()
                            .unwrap(),
                    );
                }
                Err(v) => {
                    violation = Some(v);
                    break;
                }
            }
        }
        let v = violation
            .or_else(|| guard.finish().err())
            .expect("the token must be caught");
        assert_eq!(
            v.field.as_deref(),
            Some("choices[0].delta.reasoning_content")
        );
        assert!(!released.contains("ghp"), "{released}");

        // Redacted, and the rest placed where it belongs when the choice finishes without a
        // delta of its own.
        let mut guard = stream(FindingAction::Redact);
        let transcript = "Write to jane.doe@example.org today";
        let mut sent = String::new();
        for piece in transcript.as_bytes().chunks(5) {
            let piece = std::str::from_utf8(piece).unwrap();
            let mut event = chunk(
                0,
                serde_json::json!({ "audio": { "transcript": piece } }),
                None,
            );
            if guard.event(&mut event).unwrap().forward {
                sent.push_str(
                    event["choices"][0]["delta"]["audio"]["transcript"]
                        .as_str()
                        .unwrap(),
                );
            }
        }
        let mut end = serde_json::json!({ "choices": [{ "index": 0, "finish_reason": "stop" }] });
        let guarded = guard.event(&mut end).unwrap();
        // The tail goes in an event of its own, which carries the finish; the finishing event
        // itself says nothing more.
        assert!(!guarded.forward);
        assert_eq!(end["choices"][0]["finish_reason"], Value::Null);
        let after = guarded.after.expect("the held-back end");
        assert_eq!(after[0]["finish_reason"], "stop");
        sent.push_str(after[0]["delta"]["audio"]["transcript"].as_str().unwrap());
        assert_eq!(sent, "Write to [EMAIL_1] today");
        assert_eq!(guard.finish().unwrap(), None);
    }

    /// A custom tool's input (`custom.input`) streams like a function's arguments, and has a
    /// window of its own too.
    #[test]
    fn custom_tool_input_has_a_window_of_its_own() {
        let input = "send the report to jane.doe@example.org tonight";
        let mut guard = stream(FindingAction::Redact);
        let mut events = vec![chunk(
            0,
            serde_json::json!({ "tool_calls": [{ "index": 0, "id": "call_1", "type": "custom", "custom": { "name": "mail", "input": "" } }] }),
            None,
        )];
        for piece in input.as_bytes().chunks(3) {
            let piece = std::str::from_utf8(piece).unwrap();
            events.push(chunk(
                0,
                serde_json::json!({ "tool_calls": [{ "index": 0, "custom": { "input": piece } }] }),
                None,
            ));
        }
        events.push(chunk(0, serde_json::json!({}), Some("tool_calls")));
        let sent: Vec<Value> = events
            .into_iter()
            .flat_map(|event| relay(&mut guard, event))
            .collect();
        let received: String = sent
            .iter()
            .flat_map(|e| e["choices"].as_array().into_iter().flatten())
            .filter_map(|c| c["delta"]["tool_calls"][0]["custom"]["input"].as_str())
            .collect();
        assert_eq!(received, "send the report to [EMAIL_1] tonight");
        assert_eq!(
            sent[0]["choices"][0]["delta"]["tool_calls"][0]["custom"]["name"],
            "mail"
        );
        assert_eq!(
            guard.findings[0]["field"],
            "choices[0].delta.tool_calls[0].custom.input"
        );
    }

    /// A stream may not open more windows than [`MAX_STREAM_TEXTS`]: each costs a scanner.
    #[test]
    fn a_stream_of_too_many_texts_is_cut() {
        let mut guard = stream(FindingAction::Block);
        let calls: Vec<Value> = (0..MAX_STREAM_TEXTS as u64 + 1)
            .map(|i| serde_json::json!({ "index": i, "function": { "arguments": "{" } }))
            .collect();
        let mut event = chunk(0, serde_json::json!({ "tool_calls": calls }), None);
        let v = guard.event(&mut event).err().expect("cut");
        assert_eq!(v.code, ReasonCode::GovernanceUnavailable);
        assert!(
            v.message().contains("more than 1024 separate texts"),
            "{}",
            v.message()
        );
        // Many calls within the limit finish in one pass each.
        let mut guard = stream(FindingAction::Block);
        let calls: Vec<Value> = (0..1000u64)
            .map(|i| serde_json::json!({ "index": i, "function": { "arguments": "{\"a\": 1}" } }))
            .collect();
        let mut event = chunk(
            0,
            serde_json::json!({ "tool_calls": calls }),
            Some("tool_calls"),
        );
        let after = guard.event(&mut event).unwrap().after.expect("tails");
        let calls = after[0]["delta"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1000);
        assert!(calls
            .iter()
            .all(|c| c["function"]["arguments"] == "{\"a\": 1}"));
    }

    /// An upstream that changes a field's shape between events cannot make a tail overwrite
    /// text, nor make an index taken from it size an allocation.
    #[test]
    fn tails_keep_to_their_own_shape_and_size() {
        let mut guard = stream(FindingAction::Redact);
        let mut first = chunk(
            0,
            serde_json::json!({ "x": { "99999999999": "held back" } }),
            None,
        );
        guard.event(&mut first).unwrap();
        let mut end = chunk(
            0,
            serde_json::json!({ "x": [] , "content": "done" }),
            Some("stop"),
        );
        let after = guard.event(&mut end).unwrap().after.expect("tails");
        assert_eq!(end["choices"][0]["delta"]["x"], serde_json::json!([]));
        assert_eq!(after[0]["delta"]["content"], "done");
        // The tail went to a key, not to an array index grown to 10^11.
        assert_eq!(after[0]["delta"]["x"]["99999999999"], "held back");
        let mut array = serde_json::json!([]);
        append_at(&mut array, "/100000", "t".to_string());
        assert_eq!(array, serde_json::json!([]));
        append_at(&mut array, "/1/text", "t".to_string());
        assert_eq!(array, serde_json::json!([{}, { "text": "t" }]));
        // An array item's own tail is kept: `{"x": ["..."]}` ends in `{"x": ["...tail"]}`.
        let mut empty = Value::Null;
        append_at(&mut empty, "/0", "tail".to_string());
        assert_eq!(empty, serde_json::json!(["tail"]));
        // An event reporting usage is sent even when all it says of its choices is held back.
        let mut guard = stream(FindingAction::Block);
        let mut with_usage = chunk(
            0,
            serde_json::json!({ "content": "almost done" }),
            Some("stop"),
        );
        with_usage["usage"] = serde_json::json!({ "prompt_tokens": 1, "completion_tokens": 2 });
        let guarded = guard.event(&mut with_usage).unwrap();
        assert!(guarded.forward && guarded.after.is_some());
        let mut text = serde_json::json!(["a part"]);
        append(&mut text, "tail".to_string());
        assert_eq!(text, serde_json::json!(["a part"]), "not overwritten");
    }

    /// An upstream decides the shape of its events: shapes no chunk has are relayed as they
    /// are (their strings guarded by the rest of the event's guarding), never a panic.
    #[test]
    fn events_of_any_shape_are_handled() {
        let shapes = [
            serde_json::json!({ "choices": 5 }),
            serde_json::json!({ "choices": [5, null, "x"] }),
            serde_json::json!({ "choices": [{ "delta": "text" }] }),
            serde_json::json!({ "choices": [{ "delta": { "tool_calls": "x" } }] }),
            serde_json::json!({ "choices": [{ "delta": { "tool_calls": [1, { "function": "f" }, { "function": { "arguments": 3 } }] } }] }),
            serde_json::json!({ "choices": [{ "delta": { "function_call": "f", "content": 7 } }] }),
            serde_json::json!({ "choices": [{ "index": "one", "delta": { "content": "jane.doe@" } }] }),
            serde_json::json!({ "choices": [{ "index": 0, "delta": { "tool_calls": [{ "index": 2, "function": { "arguments": "example.org" } }] }, "finish_reason": "x" }] }),
        ];
        let mut guard = stream(FindingAction::Redact);
        for mut shape in shapes {
            guard.event(&mut shape).unwrap();
        }
        guard.finish().unwrap();
    }

    /// Feeds `events` to a blocking guard until it refuses one; what was sent before, and the
    /// violation (also one found when the stream ends).
    fn until_refused(events: Vec<Value>) -> (Vec<Value>, Option<Violation>) {
        let mut guard = stream(FindingAction::Block);
        let mut sent = Vec::new();
        for mut event in events {
            match guard.event(&mut event) {
                Ok(guarded) => {
                    if guarded.forward {
                        sent.push(event);
                    }
                }
                Err(v) => return (sent, Some(v)),
            }
        }
        let violation = guard.finish().err();
        (sent, violation)
    }

    /// Every string a client could read in `events`, in order.
    fn all_strings(events: &[Value]) -> String {
        fn walk(value: &Value, out: &mut String) {
            match value {
                Value::String(s) => out.push_str(s),
                Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                Value::Object(members) => members.values().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = String::new();
        events.iter().for_each(|e| walk(e, &mut out));
        out
    }

    /// A hostile or sloppy upstream may send one call as an object in one event and as the
    /// array's item in the next, or the same call twice in one event: the pieces still run
    /// through one window, so a secret split between them is caught before any of it is sent.
    #[test]
    fn a_call_keeps_its_window_whatever_shape_its_pieces_come_in() {
        let token = format!("ghp_{}", "wWPw5k4aXcaT4fNP0UcnZwJUVFk6LO0pINUx");
        let (head, tail) = token.split_at(12);
        let object = |piece: &str| {
            chunk(
                0,
                serde_json::json!({ "tool_calls": { "index": 0, "function": { "arguments": piece } } }),
                None,
            )
        };
        let array = |pieces: &[&str]| {
            let calls: Vec<Value> = pieces
                .iter()
                .map(|p| serde_json::json!({ "index": 0, "function": { "arguments": p } }))
                .collect();
            chunk(0, serde_json::json!({ "tool_calls": calls }), None)
        };
        let cases = [
            ("object, then array", vec![object(head), array(&[tail])]),
            ("array, then object", vec![array(&[head]), object(tail)]),
            ("twice in one event", vec![array(&[head, tail])]),
        ];
        for (case, events) in cases {
            let (sent, violation) = until_refused(events);
            let violation = violation.unwrap_or_else(|| panic!("{case}: not caught"));
            assert_eq!(violation.code, ReasonCode::PrivacySecret, "{case}");
            assert!(!all_strings(&sent).contains("ghp_"), "{case}: {sent:?}");
        }
    }

    /// Content as a string and content as parts are one text: a secret split between the two
    /// shapes, or between text parts at different places in the array, meets in one window and
    /// is caught before any of it is sent.
    #[test]
    fn content_keeps_its_window_whatever_shape_its_pieces_come_in() {
        let token = format!("ghp_{}", "wWPw5k4aXcaT4fNP0UcnZwJUVFk6LO0pINUx");
        let (head, tail) = token.split_at(12);
        let string = |t: &str| chunk(0, serde_json::json!({ "content": t }), None);
        let parts = |t: &str| {
            chunk(
                0,
                serde_json::json!({ "content": [{ "type": "text", "text": t }] }),
                None,
            )
        };
        let second_part = |t: &str| {
            chunk(
                0,
                serde_json::json!({ "content": [
                    { "type": "image_url", "image_url": { "url": "https://example.com/a.png" } },
                    { "type": "text", "text": t }
                ] }),
                None,
            )
        };
        let one_part = |t: &str| {
            chunk(
                0,
                serde_json::json!({ "content": { "type": "text", "text": t } }),
                None,
            )
        };
        let cases = [
            ("string, then parts", vec![string(head), parts(tail)]),
            ("parts, then string", vec![parts(head), string(tail)]),
            (
                "first part, then second",
                vec![parts(head), second_part(tail)],
            ),
            ("one part, then string", vec![one_part(head), string(tail)]),
            (
                "refusal, then a refusal part",
                vec![
                    chunk(0, serde_json::json!({ "refusal": head }), None),
                    chunk(
                        0,
                        serde_json::json!({ "content": [{ "type": "refusal", "refusal": tail }] }),
                        None,
                    ),
                ],
            ),
            (
                "string, then a bare string in an array",
                vec![
                    string(head),
                    chunk(0, serde_json::json!({ "content": [tail] }), None),
                ],
            ),
        ];
        for (case, events) in cases {
            let (sent, violation) = relay_as_the_proxy_does(events);
            assert!(
                violation.is_some_and(|v| v.code == ReasonCode::PrivacySecret),
                "{case}: not caught"
            );
            assert!(!all_strings(&sent).contains("ghp_"), "{case}: {sent:?}");
        }
        // What was held back of content that came as parts goes out as a text part.
        let mut guard = stream(FindingAction::Block);
        let mut event = parts("Hello there");
        let guarded = guard.event(&mut event).unwrap();
        assert_eq!(guarded.texts, ["/choices/0/delta/content/0/text"]);
        let rest = guard.finish().unwrap().unwrap();
        let released = event["choices"][0]["delta"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            released + rest[0]["delta"]["content"][0]["text"].as_str().unwrap(),
            "Hello there"
        );
        assert_eq!(rest[0]["delta"]["content"][0]["type"], "text");
        // And after a string, as a string.
        let mut guard = stream(FindingAction::Block);
        guard.event(&mut parts("Hello")).unwrap();
        guard.event(&mut string(" there")).unwrap();
        let rest = guard.finish().unwrap().unwrap();
        assert!(rest[0]["delta"]["content"].is_string(), "{rest}");
    }

    /// Relays `events` as the proxy does: each event through the stream guard, then everything
    /// in it but the texts the windows guarded through a guard of its own (one event at a
    /// time); what was sent before a violation, and the violation (also one found at the end).
    fn relay_as_the_proxy_does(events: Vec<Value>) -> (Vec<Value>, Option<Violation>) {
        let scanners = Arc::new(Scanners::new(&ScanConfig::default()).unwrap());
        let actions = Some(PrivacyActions {
            pii: FindingAction::Block,
            secret: FindingAction::Block,
        });
        let mut guard = StreamGuard::new(scanners.clone(), actions);
        let per_event = || OutputGuard::new(scanners.clone(), actions);
        let mut sent = Vec::new();
        for mut event in events {
            let guarded = match guard.event(&mut event) {
                Ok(guarded) => guarded,
                Err(v) => return (sent, Some(v)),
            };
            let set_aside: Vec<Option<Value>> = guarded
                .texts
                .iter()
                .map(|pointer| event.pointer_mut(pointer).map(Value::take))
                .collect();
            if let Err(v) = guard_strings(&mut event, &per_event, &mut Vec::new()) {
                return (sent, Some(v));
            }
            for (pointer, text) in guarded.texts.iter().zip(set_aside) {
                if let (Some(text), Some(slot)) = (text, event.pointer_mut(pointer)) {
                    *slot = text;
                }
            }
            if guarded.forward {
                sent.push(event);
            }
        }
        let violation = guard.finish().err();
        (sent, violation)
    }

    /// Every string of a call but its naming fields has a window, keyed by the call's index:
    /// a secret in a key no client library reads (a `function.input`, an `arguments` beside
    /// `function`, the deprecated `function_call`'s `input`) is caught whole in one event and
    /// split across two, whatever the shape, and the windowed texts are exactly the ones the
    /// rest of the event's guarding may skip.
    #[test]
    fn every_string_of_a_call_has_a_window_keyed_by_the_call() {
        let token = format!("ghp_{}", "wWPw5k4aXcaT4fNP0UcnZwJUVFk6LO0pINUx");
        let (head, tail) = token.split_at(12);
        /// A delta carrying one piece of text somewhere in a call.
        type Carrying = fn(&str) -> Value;
        let shapes: [(&str, Carrying); 15] = [
            (
                "function.input",
                |t| serde_json::json!({ "tool_calls": [{ "index": 0, "function": { "input": t } }] }),
            ),
            (
                "custom.arguments",
                |t| serde_json::json!({ "tool_calls": [{ "index": 0, "custom": { "arguments": t } }] }),
            ),
            (
                "arguments beside function",
                |t| serde_json::json!({ "tool_calls": [{ "index": 0, "arguments": t }] }),
            ),
            (
                "object call",
                |t| serde_json::json!({ "tool_calls": { "index": 0, "function": { "input": [t] } } }),
            ),
            (
                "function_call.input",
                |t| serde_json::json!({ "function_call": { "name": "f", "input": t } }),
            ),
            // Naming keys count where the API puts them only: elsewhere a `name`, `id` or
            // `type` is the model's text.
            (
                "a name inside the arguments",
                |t| serde_json::json!({ "tool_calls": [{ "index": 0, "function": { "arguments": { "name": t } } }] }),
            ),
            (
                "an id inside function.input",
                |t| serde_json::json!({ "tool_calls": [{ "index": 0, "function": { "input": { "id": t } } }] }),
            ),
            (
                "a string index",
                |t| serde_json::json!({ "tool_calls": [{ "index": t }] }),
            ),
            (
                "a type inside function_call",
                |t| serde_json::json!({ "function_call": { "x": { "type": t } } }),
            ),
            // Not a call's shape at all: still a text with a window.
            (
                "a string for a call",
                |t| serde_json::json!({ "tool_calls": [t] }),
            ),
            (
                "an array for a call",
                |t| serde_json::json!({ "tool_calls": [[t]] }),
            ),
            (
                "a name inside a call inside an array",
                |t| serde_json::json!({ "tool_calls": [[{ "function": { "arguments": { "name": t } } }]] }),
            ),
            (
                "a call inside an array",
                |t| serde_json::json!({ "tool_calls": [[{ "index": 0, "function": { "arguments": t } }]] }),
            ),
            (
                "a string for function_call",
                |t| serde_json::json!({ "function_call": t }),
            ),
            (
                "an array for function_call",
                |t| serde_json::json!({ "function_call": [t] }),
            ),
        ];
        for (shape, delta) in shapes {
            for pieces in [vec![token.as_str()], vec![head, tail]] {
                let events = pieces.iter().map(|p| chunk(0, delta(p), None)).collect();
                let (sent, violation) = relay_as_the_proxy_does(events);
                assert!(
                    violation.is_some_and(|v| v.code == ReasonCode::PrivacySecret),
                    "{shape}, {} piece(s): not caught",
                    pieces.len()
                );
                assert!(!all_strings(&sent).contains("ghp_"), "{shape}: {sent:?}");
            }
        }
        // Naming fields and the index are not held back: a call's id and name go out at once.
        let mut guard = stream(FindingAction::Block);
        let mut event = chunk(
            0,
            serde_json::json!({ "tool_calls": [{ "index": 0, "id": "call_1", "type": "function", "function": { "name": "send", "input": "x" } }] }),
            None,
        );
        let guarded = guard.event(&mut event).unwrap();
        assert!(guarded.forward);
        assert_eq!(
            guarded.texts,
            ["/choices/0/delta/tool_calls/0/function/input"]
        );
        let call = &event["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (&call["id"], &call["function"]["name"]),
            (&serde_json::json!("call_1"), &serde_json::json!("send"))
        );
        // A lone call whose texts are all held back is dropped from an event that is sent.
        let mut event = chunk(
            0,
            serde_json::json!({ "refusal": "x".repeat(200), "tool_calls": { "index": 1, "function": { "arguments": "held" } } }),
            None,
        );
        assert!(
            stream(FindingAction::Block)
                .event(&mut event)
                .unwrap()
                .forward
        );
        assert!(
            event["choices"][0]["delta"].get("tool_calls").is_none(),
            "{event}"
        );
        // Held back until the choice ends, then sent in its call, by its index.
        assert_eq!(call["function"]["input"], "");
        let rest = guard.finish().unwrap().unwrap();
        assert_eq!(rest[0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(rest[0]["delta"]["tool_calls"][0]["function"]["input"], "x");
    }
}
