//! The decide request: what a caller asks to do. The same JSON is accepted by `gavel decide`
//! and (later) `POST /v1/decide`; docs/decide.md documents it.
//!
//! Parsing is strict: an unknown field is an error, so a misspelt `dry_run` or an invented
//! `bypass: true` can never be silently taken for something else.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Bodies nested deeper than this are refused before they reach serde.
pub const MAX_JSON_DEPTH: usize = 64;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// The deployment id the caller wants to use.
    pub deployment: String,
    /// Optional: when present it must equal the authenticated principal.
    #[serde(default)]
    pub principal: Option<String>,
    #[serde(default)]
    pub action: Action,
    /// Chat messages in OpenAI's shape.
    #[serde(default, deserialize_with = "messages_from")]
    pub messages: Vec<Message>,
    /// Content parts marked with their role, for non-chat actions and retrieved documents.
    #[serde(default)]
    pub content: Vec<ContentPart>,
    /// The model name the caller will send upstream; must match the approved model.
    #[serde(default)]
    pub model: Option<String>,
    /// Generation parameters (temperature, max_tokens, ...).
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// Tool definitions offered to the model, in OpenAI's `tools` shape.
    #[serde(default)]
    pub tools: Vec<ToolDefinition>,
    /// For chains: the declared step this request is.
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Declared resource needs while the action runs, e.g. `{ "memory_mb": 2048 }`.
    #[serde(default)]
    pub resources: BTreeMap<String, u64>,
    /// Caller metadata (an end-user id, a ticket id). Never a switch for any guard; the
    /// field the contract names in `policy.payload_capture.subject` selects whose key encrypts
    /// a captured payload.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(rename = "type")]
    pub kind: ActionKind,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub args: Option<Value>,
}

impl Default for Action {
    fn default() -> Self {
        Action {
            kind: ActionKind::Inference,
            name: None,
            args: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Inference,
    ToolCall,
    Task,
    /// A model reads the content's texts and answers with vectors: prompt tokens, no
    /// completion (the gateway's `/v1/embeddings`).
    Embeddings,
}

/// An OpenAI chat message, with every field OpenAI's API defines and no other: a body is
/// forwarded upstream as it came, so a field the engine did not read would carry text past
/// the scanners. Besides `content` and `tool_calls`, the fields that can hold text (`name`,
/// `tool_call_id`, `refusal`, `function_call`, `audio`, `annotations`) are scanned as one more
/// text of the message (see [`DecideRequest::texts`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: MessageRole,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub refusal: Option<Value>,
    #[serde(default)]
    pub function_call: Option<Value>,
    #[serde(default)]
    pub audio: Option<Value>,
    #[serde(default)]
    pub annotations: Option<Value>,
}

/// Reads a `T` from a JSON object only. serde's derive also reads a struct from an array, field
/// by field (`["user", "hi"]` as a message), which OpenAI's API does not take, and a chat body
/// is forwarded as written: its redactions are written into those objects.
struct ObjectOnly<T> {
    expected: &'static str,
    reads: std::marker::PhantomData<T>,
}

impl<T> ObjectOnly<T> {
    fn new(expected: &'static str) -> ObjectOnly<T> {
        ObjectOnly {
            expected,
            reads: std::marker::PhantomData,
        }
    }
}

// Written out: derived, they would ask `T` to be `Clone` and `Copy` too.
impl<T> Clone for ObjectOnly<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ObjectOnly<T> {}

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for ObjectOnly<T> {
    type Value = T;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.expected)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

/// Chat messages from a list of message objects, each content part an object too (a message or
/// a part written as an array is refused: see [`ObjectOnly`]). The gateway reads a chat body's
/// `messages` with it as the decide API reads them.
pub fn messages_from<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Message>, D::Error> {
    struct Messages;
    impl<'de> serde::de::Visitor<'de> for Messages {
        type Value = Vec<Message>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of messages")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Message>, A::Error> {
            let message = ObjectOnly::new("a message object ({\"role\": ..., \"content\": ...})");
            let mut messages = Vec::new();
            while let Some(m) = seq.next_element_seed(message)? {
                messages.push(m);
            }
            Ok(messages)
        }
    }
    d.deserialize_seq(Messages)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<MessagePart>),
}

/// A string or a list of parts. Written out rather than `untagged`, whose one error for any
/// mistake ("did not match any variant") would hide which field of which part is wrong.
impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MessageContent, D::Error> {
        struct Content;
        impl<'de> serde::de::Visitor<'de> for Content {
            type Value = MessageContent;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<MessageContent, E> {
                Ok(MessageContent::Text(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<MessageContent, E> {
                Ok(MessageContent::Text(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<MessageContent, A::Error> {
                let mut parts = Vec::new();
                let part = ObjectOnly::new("a content part object ({\"type\": ..., ...})");
                while let Some(part) = seq.next_element_seed(part)? {
                    parts.push(part);
                }
                Ok(MessageContent::Parts(parts))
            }
        }
        d.deserialize_any(Content)
    }
}

/// A part of a message's content, with the fields OpenAI's API defines for its part types.
/// `text` is the message's text; the others (an image's URL, a file's or audio's data, a
/// refusal) are scanned with the message's other fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagePart {
    #[serde(rename = "type")]
    pub kind: PartKind,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub image_url: Option<Value>,
    #[serde(default)]
    pub input_audio: Option<Value>,
    #[serde(default)]
    pub file: Option<Value>,
    #[serde(default)]
    pub refusal: Option<Value>,
}

/// The kinds of content part the API takes. A part's `type` is forwarded as sent, so it is one
/// of these, never free text nothing scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    Text,
    ImageUrl,
    InputAudio,
    File,
    Refusal,
}

impl MessagePart {
    /// Whether the part carries more than its text (and its image, unless `images`).
    fn carries_more_than_text(&self, images: bool) -> bool {
        let image = if images { &self.image_url } else { &None };
        [image, &self.input_audio, &self.file, &self.refusal]
            .iter()
            .any(|v| v.as_ref().is_some_and(|v| !v.is_null()))
    }
}

impl Message {
    /// Everything the message carries besides its text and tool calls, as one JSON text to
    /// scan, or `None` when that is nothing: `name`, `tool_call_id`, `refusal`,
    /// `function_call`, `audio`, `annotations`, and the content parts that are not text.
    pub fn other_content(&self) -> Option<String> {
        self.other_fields(true)
    }

    /// [`Message::other_content`] with the images left out, if `images` is false: a model
    /// sees an image, not its URL or base64 text, and images are counted apart
    /// ([`DecideRequest::images`]).
    fn other_fields(&self, images: bool) -> Option<String> {
        let mut other = serde_json::Map::new();
        let text = |v: &Option<String>| v.as_ref().map(|t| Value::String(t.clone()));
        let fields = [
            ("name", text(&self.name)),
            // An id by OpenAI's design, but any string by JSON's: forwarded as it came.
            ("tool_call_id", text(&self.tool_call_id)),
            ("refusal", self.refusal.clone()),
            ("function_call", self.function_call.clone()),
            ("audio", self.audio.clone()),
            ("annotations", self.annotations.clone()),
        ];
        for (key, value) in fields {
            if let Some(value) = value.filter(|v| !v.is_null()) {
                other.insert(key.to_string(), value);
            }
        }
        if let Some(MessageContent::Parts(parts)) = &self.content {
            let parts: Vec<Value> = parts
                .iter()
                .filter(|p| p.carries_more_than_text(images))
                .map(|p| {
                    let image = if images { &p.image_url } else { &None };
                    serde_json::json!({
                        "image_url": image, "input_audio": p.input_audio,
                        "file": p.file, "refusal": p.refusal,
                    })
                })
                .collect();
            if !parts.is_empty() {
                other.insert("parts".to_string(), Value::Array(parts));
            }
        }
        if other.is_empty() {
            return None;
        }
        // `images`: the text as sent, not as counted.
        Some(json_text(&Value::Object(other), images))
    }

    /// The message's text; non-text parts (images...) contribute nothing.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// `value` as a text: its compact JSON; `as_sent` (scanned and hashed), then each string in it
/// that JSON had to escape (one with a quote, a backslash or a control character), as sent, on
/// a line of its own. OpenAI sends a tool call's `arguments` as such a string: escaped, its
/// JSON reads `{\"password\":\"...\"}`, where the scanners' assignment rules (`password=`,
/// `api_key:`) look for a quote, not a backslash. The JSON comes first and whole, so two values
/// never give one text. Counted (not `as_sent`), the JSON alone: the model reads it once.
fn json_text(value: &Value, as_sent: bool) -> String {
    fn push_escaped(value: &Value, out: &mut String) {
        match value {
            Value::String(text)
                if text.contains(['"', '\\']) || text.contains(char::is_control) =>
            {
                out.push('\n');
                out.push_str(text);
            }
            Value::Array(items) => items.iter().for_each(|v| push_escaped(v, out)),
            Value::Object(members) => members.values().for_each(|v| push_escaped(v, out)),
            _ => {}
        }
    }
    let mut out = value.to_string();
    if as_sent {
        push_escaped(value, &mut out);
    }
    out
}

fn role_of(role: MessageRole) -> ContentRole {
    match role {
        MessageRole::System | MessageRole::Developer => ContentRole::System,
        MessageRole::User => ContentRole::User,
        MessageRole::Assistant => ContentRole::Assistant,
        MessageRole::Tool => ContentRole::ToolOutput,
    }
}

/// Who wrote a piece of content, which decides how it is scanned: retrieved documents and tool
/// outputs are data, so instructions inside them are suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentRole {
    User,
    System,
    Assistant,
    Retrieved,
    ToolOutput,
}

impl ContentRole {
    /// The role's name as requests give it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentRole::User => "user",
            ContentRole::System => "system",
            ContentRole::Assistant => "assistant",
            ContentRole::Retrieved => "retrieved",
            ContentRole::ToolOutput => "tool_output",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    pub role: ContentRole,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDefinition {
    /// `function`, the one kind of tool a definition with a `function` member is; forwarded
    /// as sent, so never free text.
    #[serde(rename = "type", default)]
    pub kind: Option<ToolKind>,
    pub function: FunctionDefinition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    Function,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// The images of a request ([`DecideRequest::images`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Images {
    pub all: u64,
    /// Of `all`, those sent with `detail: low`.
    pub low_detail: u64,
}

/// The field a text of [`DecideRequest::texts`] comes from: what the input digest hashes
/// beside it, so that requests of different shapes with the same texts digest apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextSource {
    /// The content of `messages[i]`.
    Message(usize),
    /// `content[i]` (the decide API's content parts).
    Part(usize),
    /// The `user` parameter.
    UserParam,
    /// The tool calls of `messages[i]`, or (None) the action's arguments.
    ToolCalls(Option<usize>),
    /// The fields of `messages[i]` beyond its text and tool calls.
    OtherFields(usize),
    /// The description of `tools[i]`.
    ToolDescription(usize),
}

impl TextSource {
    /// The field's name, as captured payloads give it (docs/contract.md, `payload_capture`).
    pub fn name(self) -> &'static str {
        match self {
            TextSource::Message(_) => "message",
            TextSource::Part(_) => "part",
            TextSource::UserParam => "user",
            TextSource::ToolCalls(Some(_)) => "tool_calls",
            TextSource::ToolCalls(None) => "action_args",
            TextSource::OtherFields(_) => "other_fields",
            TextSource::ToolDescription(_) => "tool_description",
        }
    }

    /// The index of the message, content part or tool the text comes from, if any.
    pub fn index(self) -> Option<usize> {
        match self {
            TextSource::Message(i)
            | TextSource::Part(i)
            | TextSource::OtherFields(i)
            | TextSource::ToolDescription(i)
            | TextSource::ToolCalls(Some(i)) => Some(i),
            TextSource::UserParam | TextSource::ToolCalls(None) => None,
        }
    }

    /// A tag byte and an index, as the input digest writes them (docs/decide.md).
    pub fn tag(self) -> (u8, u64) {
        let index = |i: usize| i as u64;
        match self {
            TextSource::Message(i) => (0, index(i)),
            TextSource::Part(i) => (1, index(i)),
            TextSource::UserParam => (2, 0),
            TextSource::ToolCalls(i) => (3, i.map_or(u64::MAX, index)),
            TextSource::OtherFields(i) => (4, index(i)),
            TextSource::ToolDescription(i) => (5, index(i)),
        }
    }
}

impl DecideRequest {
    /// Every piece of text in the request with its role, in order: one per message (its
    /// content), one per content part, the `user` parameter ([`DecideRequest::user_param`]),
    /// the tool calls' arguments, one per message that carries more than content and tool calls
    /// ([`Message::other_content`]), then the offered tools' descriptions. Only the first three
    /// kinds can be redacted ([`DecideRequest::redactable_texts`]).
    pub fn texts(&self) -> impl Iterator<Item = (ContentRole, std::borrow::Cow<'_, str>)> {
        self.texts_with(true).map(|(_, role, text)| (role, text))
    }

    /// [`Self::texts`], each with the field it comes from.
    pub fn sourced_texts(
        &self,
    ) -> impl Iterator<Item = (TextSource, ContentRole, std::borrow::Cow<'_, str>)> {
        self.texts_with(true)
    }

    /// The `user` parameter (the end user's id, which OpenAI's API takes), when it is a string:
    /// forwarded upstream as sent, so an e-mail address or a credential there leaves like any
    /// text. Scanned and redactable ([`DecideRequest::texts`]), not counted: the model does
    /// not read it.
    pub fn user_param(&self) -> Option<&str> {
        self.params.get("user").and_then(Value::as_str)
    }

    /// What a model reads of the request as text, for counting its tokens: [`Self::texts`]
    /// with the images left out (each counts as [`Contract::image_tokens_of`] says, not as
    /// the length of its URL or of its base64 data).
    ///
    /// [`Contract::image_tokens_of`]: gavel_contract::Contract::image_tokens_of
    pub fn counted_texts(&self) -> impl Iterator<Item = (ContentRole, std::borrow::Cow<'_, str>)> {
        self.texts_with(false).map(|(_, role, text)| (role, text))
    }

    /// How many images the request's messages carry (content parts with an `image_url`), and
    /// how many of those ask for `detail: low`.
    pub fn images(&self) -> Images {
        let mut images = Images::default();
        let urls = self
            .messages
            .iter()
            .filter_map(|m| match &m.content {
                Some(MessageContent::Parts(parts)) => Some(parts),
                _ => None,
            })
            .flatten()
            .filter_map(|p| p.image_url.as_ref().filter(|v| !v.is_null()));
        for url in urls {
            images.all += 1;
            if url.get("detail").and_then(Value::as_str) == Some("low") {
                images.low_detail += 1;
            }
        }
        images
    }

    /// [`Self::texts`] with `as_sent`; [`Self::counted_texts`] without: then no image URL or
    /// data and no `user` parameter, which the model does not read as text.
    fn texts_with(
        &self,
        as_sent: bool,
    ) -> impl Iterator<Item = (TextSource, ContentRole, std::borrow::Cow<'_, str>)> {
        use std::borrow::Cow;
        let messages = self.messages.iter().enumerate().map(|(i, m)| {
            let text = match &m.content {
                Some(MessageContent::Text(t)) => Cow::Borrowed(t.as_str()),
                _ => Cow::Owned(m.text()),
            };
            (TextSource::Message(i), role_of(m.role), text)
        });
        let parts = self
            .content
            .iter()
            .enumerate()
            .map(|(i, p)| (TextSource::Part(i), p.role, Cow::Borrowed(p.text.as_str())));
        let user = self
            .user_param()
            .filter(|_| as_sent)
            .map(|u| (TextSource::UserParam, ContentRole::User, Cow::Borrowed(u)));
        // Tool-call arguments (in assistant messages and in a tool_call action) are content
        // too: they can carry secrets, PII or instructions, so they are scanned and hashed.
        let calls = self
            .messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.tool_calls.as_ref().map(|v| (Some(i), v)))
            .chain(self.action.args.as_ref().map(|v| (None, v)))
            .map(move |(i, v)| {
                (
                    TextSource::ToolCalls(i),
                    ContentRole::Assistant,
                    Cow::Owned(json_text(v, as_sent)),
                )
            });
        let others = self.messages.iter().enumerate().filter_map(move |(i, m)| {
            m.other_fields(as_sent).map(|text| {
                (
                    TextSource::OtherFields(i),
                    role_of(m.role),
                    Cow::Owned(text),
                )
            })
        });
        // Tool descriptions go to the model with the request, and conformance compares only a
        // tool's name and schema: text nobody approved, in the caller's hands, so read as user
        // input (secrets, personal data and direct injection). Read as system text they
        // escaped the injection scanner ("Ignore all previous instructions" passed there).
        let descriptions = self.tools.iter().enumerate().filter_map(|(i, t)| {
            t.function.description.as_deref().map(|d| {
                (
                    TextSource::ToolDescription(i),
                    ContentRole::User,
                    Cow::Borrowed(d),
                )
            })
        });
        messages
            .chain(parts)
            .chain(user)
            .chain(calls)
            .chain(others)
            .chain(descriptions)
    }

    /// The first identifier that holds a secret, as (field, rule id). Identifiers (the
    /// deployment and model names, the run, step and idempotency ids, tool, parameter and
    /// resource names) go into ledger records and reasons as they are, and no secret may be
    /// in a ledger record; unlike content, they cannot be scanned and redacted, so a request
    /// carrying a secret in one is refused before anything is decided or recorded.
    pub fn secret_in_identifiers(&self) -> Option<(&'static str, &'static str)> {
        fn optional(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or_default()
        }
        let singles = [
            ("deployment", self.deployment.as_str()),
            ("principal", optional(&self.principal)),
            ("model", optional(&self.model)),
            ("run_id", optional(&self.run_id)),
            ("step", optional(&self.step)),
            ("idempotency_key", optional(&self.idempotency_key)),
            ("action.name", optional(&self.action.name)),
        ];
        let names = self
            .tools
            .iter()
            .map(|t| ("tools[].function.name", t.function.name.as_str()))
            .chain(self.params.keys().map(|k| ("params", k.as_str())))
            .chain(self.resources.keys().map(|k| ("resources", k.as_str())));
        singles
            .into_iter()
            .chain(names)
            .find_map(|(field, text)| secret_in_text(text).map(|rule| (field, rule)))
    }

    /// How many of [`DecideRequest::texts`] come first and can be redacted in place: each
    /// message's content, each content part, and the `user` parameter. The texts after them
    /// (tool-call arguments, other message fields) are scanned, but a finding there that policy
    /// would redact blocks instead.
    pub fn redactable_texts(&self) -> usize {
        self.messages.len() + self.content.len() + usize::from(self.user_param().is_some())
    }

    /// The index in [`DecideRequest::texts`] of the `user` parameter, if it is there.
    pub fn user_text_index(&self) -> Option<usize> {
        self.user_param()
            .map(|_| self.messages.len() + self.content.len())
    }

    /// Whether the request generates text (an inference, or anything carrying chat messages):
    /// then the prompt template, the max_tokens ceiling and token budgets apply whatever the
    /// action is called.
    pub fn is_generative(&self) -> bool {
        self.action.kind == ActionKind::Inference || !self.messages.is_empty()
    }

    /// Whether a model reads the request's texts as its prompt: generative requests, and
    /// embeddings. A tool call's arguments and a task's content are not a model's tokens.
    pub fn reads_prompt(&self) -> bool {
        self.is_generative() || self.action.kind == ActionKind::Embeddings
    }

    /// The system prompt: system/developer messages' content, or system content parts.
    pub fn system_prompts(&self) -> Vec<std::borrow::Cow<'_, str>> {
        self.texts()
            .take(self.redactable_texts())
            .filter(|(role, _)| *role == ContentRole::System)
            .map(|(_, text)| text)
            .collect()
    }
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError(pub String);

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RequestError {}

/// Parses one JSON request, refusing deep nesting before serde recurses into it.
pub fn parse_request(bytes: &[u8]) -> Result<DecideRequest, RequestError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        RequestError(format!(
            "the request is not valid UTF-8 (first bad byte at offset {}); send UTF-8 JSON",
            e.valid_up_to()
        ))
    })?;
    if let Some(depth_at) = nesting_exceeds(text.as_bytes(), MAX_JSON_DEPTH) {
        return Err(RequestError(format!(
            "the request nests deeper than {MAX_JSON_DEPTH} levels (at byte {depth_at}); flatten it"
        )));
    }
    let request: DecideRequest = serde_json::from_str(text).map_err(|e| {
        let what = e.to_string();
        let hint = if what.starts_with("unknown field") {
            "; see docs/decide.md for the accepted fields"
        } else if what.starts_with("missing field") {
            "; this field is required"
        } else {
            ""
        };
        RequestError(format!("invalid decide request: {what}{hint}"))
    })?;
    match request.secret_in_identifiers() {
        Some((field, rule)) => Err(secret_in(field, rule)),
        None => Ok(request),
    }
}

/// The rule of the first secret the scanners find in `text`, which is not content but goes
/// into ledger records as it is (an identifier, a reason, a name): such text must hold no
/// secret, and cannot be redacted. Secrets only: PII or injection in such text is not what
/// this guards (it is never shown to a model). If the scanners cannot be built, every text is
/// refused rather than recorded unchecked.
pub fn secret_in_text(text: &str) -> Option<&'static str> {
    static SECRETS: std::sync::OnceLock<Option<gavel_scan::Scanners>> = std::sync::OnceLock::new();
    let scanners = SECRETS.get_or_init(|| {
        gavel_scan::Scanners::new(&gavel_scan::ScanConfig {
            pii: false,
            injection: false,
            ..gavel_scan::ScanConfig::default()
        })
        .ok()
    });
    let Some(scanners) = scanners else {
        return Some("scanners unavailable");
    };
    let mut findings = Vec::new();
    scanners.scan(text, gavel_scan::ContentRole::User, &mut findings);
    findings.first().map(|f| f.rule_id)
}

/// Why a request with a secret in identifier `field` is refused.
pub fn secret_in(field: &str, rule: &str) -> RequestError {
    RequestError(format!(
        "`{field}` holds what looks like a secret ({rule}); identifiers are recorded in the ledger as they are, so send an opaque id and keep secrets out of them"
    ))
}

/// Returns the byte offset where nesting first exceeds `max`, ignoring brackets in strings.
/// The byte offset where JSON `bytes` first nest deeper than `max`, if they do: a check that
/// runs before any parser recurses.
pub fn nesting_exceeds(bytes: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_chat_request() {
        let r = parse_request(
            br#"{"deployment":"d","messages":[{"role":"system","content":"S"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"params":{"max_tokens":10}}"#,
        )
        .unwrap();
        assert_eq!(r.system_prompts(), vec!["S"]);
        assert_eq!(r.texts().count(), 2);
        assert_eq!(r.action.kind, ActionKind::Inference);
    }

    #[test]
    fn refuses_unknown_fields_and_deep_nesting_and_bad_utf8() {
        let e = parse_request(br#"{"deployment":"d","bypass":true}"#).unwrap_err();
        assert!(e.0.contains("unknown field `bypass`"), "{e}");
        let deep = format!(
            "{{\"deployment\":\"d\",\"params\":{{\"x\":{}{}}}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(parse_request(deep.as_bytes())
            .unwrap_err()
            .0
            .contains("nests deeper"));
        assert!(parse_request(b"{\"deployment\":\"\xff\"}")
            .unwrap_err()
            .0
            .contains("UTF-8"));
        assert!(parse_request(b"{")
            .unwrap_err()
            .0
            .starts_with("invalid decide request"));
        assert!(parse_request(b"{}")
            .unwrap_err()
            .0
            .contains("missing field `deployment`"));
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_nesting() {
        let text = format!("{{\"deployment\":\"{}\"}}", "[".repeat(500));
        assert!(parse_request(text.as_bytes()).is_ok());
    }
}
