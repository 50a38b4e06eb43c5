//! The ledger record: a small versioned envelope around a JSON body, stored as
//! its RFC 8785 canonical bytes (the bytes the Merkle leaf hashes).

use crate::jcs::{self, JcsError};
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Version of the record envelope. Bumped on any change to the canonical
/// layout; verifiers refuse versions they do not know rather than guess.
pub const FORMAT_VERSION: u32 = 1;

/// What a record is about. The serialised names are part of format 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A governance decision on one inference (the engine's decision JSON).
    Decision,
    /// What happened after a decision (usage, latency, output hash).
    Outcome,
    /// A contract was loaded; body should follow [`ContractLoaded`].
    ContractLoaded,
    KeyCreated,
    KeyRevoked,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalPending,
    ApprovalCompleted,
    ApprovalRevoked,
    Kill,
    Unkill,
    CooldownStarted,
    CooldownEnded,
    Breach,
    Recovery,
    /// Any other administrative action (e.g. a payload subject forgotten).
    Admin,
}

impl RecordKind {
    /// Every kind, in a stable order (for CLI help and tests).
    pub const ALL: [RecordKind; 17] = [
        RecordKind::Decision,
        RecordKind::Outcome,
        RecordKind::ContractLoaded,
        RecordKind::KeyCreated,
        RecordKind::KeyRevoked,
        RecordKind::ApprovalRequested,
        RecordKind::ApprovalGranted,
        RecordKind::ApprovalPending,
        RecordKind::ApprovalCompleted,
        RecordKind::ApprovalRevoked,
        RecordKind::Kill,
        RecordKind::Unkill,
        RecordKind::CooldownStarted,
        RecordKind::CooldownEnded,
        RecordKind::Breach,
        RecordKind::Recovery,
        RecordKind::Admin,
    ];

    /// The name used in the canonical bytes and in the sink's `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Decision => "decision",
            RecordKind::Outcome => "outcome",
            RecordKind::ContractLoaded => "contract_loaded",
            RecordKind::KeyCreated => "key_created",
            RecordKind::KeyRevoked => "key_revoked",
            RecordKind::ApprovalRequested => "approval_requested",
            RecordKind::ApprovalGranted => "approval_granted",
            RecordKind::ApprovalPending => "approval_pending",
            RecordKind::ApprovalCompleted => "approval_completed",
            RecordKind::ApprovalRevoked => "approval_revoked",
            RecordKind::Kill => "kill",
            RecordKind::Unkill => "unkill",
            RecordKind::CooldownStarted => "cooldown_started",
            RecordKind::CooldownEnded => "cooldown_ended",
            RecordKind::Breach => "breach",
            RecordKind::Recovery => "recovery",
            RecordKind::Admin => "admin",
        }
    }

    /// Inverse of [`RecordKind::as_str`].
    pub fn parse(s: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ledger entry. `body` is whatever the producer records (the engine's
/// decision JSON, a governance change); the envelope fields are fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub format: u32,
    pub kind: RecordKind,
    /// Milliseconds since the Unix epoch, as seen by the producer.
    pub at_ms: i64,
    /// Producer-chosen identifier (decision id, approval id + event, ...).
    pub id: String,
    pub body: Value,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    Canonical(JcsError),
    Parse(String),
    UnknownFormat(u32),
    /// The bytes parse but are not in canonical form, so they are not what
    /// this format writes.
    NotCanonical,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Canonical(e) => write!(f, "record has no canonical form: {e}"),
            RecordError::Parse(e) => write!(f, "record does not parse: {e}"),
            RecordError::UnknownFormat(v) => write!(
                f,
                "unknown record format {v} (this build knows {FORMAT_VERSION})"
            ),
            RecordError::NotCanonical => {
                f.write_str("record bytes are not in RFC 8785 canonical form")
            }
        }
    }
}

impl std::error::Error for RecordError {}

impl Record {
    /// A format-1 record whose body is any serialisable value.
    pub fn new<B: Serialize>(
        kind: RecordKind,
        at_ms: i64,
        id: impl Into<String>,
        body: &B,
    ) -> Result<Record, RecordError> {
        let body = serde_json::to_value(body).map_err(|e| RecordError::Parse(e.to_string()))?;
        Ok(Record::from_value(kind, at_ms, id, body))
    }

    /// A format-1 record over a body already built as JSON (taken as it is: [`Record::new`]
    /// would copy it).
    pub fn from_value(kind: RecordKind, at_ms: i64, id: impl Into<String>, body: Value) -> Record {
        Record {
            format: FORMAT_VERSION,
            kind,
            at_ms,
            id: id.into(),
            body,
        }
    }

    /// RFC 8785 canonical bytes: what is stored and what the leaf hashes.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::with_capacity(256);
        write_envelope(
            &mut out,
            self.format,
            self.kind,
            self.at_ms,
            &self.id,
            &self.body,
            |_, _| {},
        )?;
        Ok(out)
    }

    /// The record as the appender takes it: canonical bytes and query columns.
    pub fn encode(&self) -> Result<Encoded, RecordError> {
        Ok(Encoded {
            kind: self.kind,
            at_ms: self.at_ms,
            id: self.id.clone(),
            bytes: self.canonical_bytes()?,
            fields: self.index_fields(),
        })
    }

    /// Parses stored bytes and checks they are exactly the canonical form of a
    /// record of a known format.
    pub fn from_canonical(bytes: &[u8]) -> Result<Record, RecordError> {
        let record: Record =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Parse(e.to_string()))?;
        if record.format != FORMAT_VERSION {
            return Err(RecordError::UnknownFormat(record.format));
        }
        if record.canonical_bytes()? != bytes {
            return Err(RecordError::NotCanonical);
        }
        Ok(record)
    }

    /// Checks that stored bytes are exactly the canonical form of a record of a known format,
    /// as [`Record::from_canonical`] does, but in one pass over the bytes without building the
    /// record: what verification runs on every record. Both accept and refuse the same bytes;
    /// bytes with several defects may be refused for another of them (form is checked before
    /// the envelope, so a non-canonical record of another format is `NotCanonical` here).
    pub fn check_canonical(bytes: &[u8]) -> Result<(), RecordError> {
        check_envelope(bytes, None).map(drop)
    }

    /// The query columns a sink stores next to the bytes (see [`IndexFields`]): read from the
    /// body as [`RecordAids::from_bytes`] and [`Encoded::new`] read them from bytes.
    pub fn index_fields(&self) -> IndexFields {
        // Any JSON value reads as `Lenient<_>`: nothing here can fail.
        Lenient::<IndexFields>::deserialize(&self.body)
            .map(|fields| fields.0)
            .unwrap_or_default()
    }
}

/// The envelope members of bytes that [`check_envelope`] found to be a canonical record.
struct CheckedEnvelope<'a> {
    at_ms: i64,
    /// The `id` member's string literal, quotes included.
    id: &'a [u8],
    kind: RecordKind,
}

/// [`Record::check_canonical`], calling `visit_body_member` with each body member (key as its
/// string literal, value as canonical bytes) in the same pass, and returning the envelope.
fn check_envelope<'a>(
    bytes: &'a [u8],
    visit_body_member: jcs::Visit<'_, 'a>,
) -> Result<CheckedEnvelope<'a>, RecordError> {
    const ENVELOPE: [&[u8]; 5] = [
        b"\"at_ms\"",
        b"\"body\"",
        b"\"format\"",
        b"\"id\"",
        b"\"kind\"",
    ];
    let parse = |what: &str| RecordError::Parse(what.to_owned());
    if bytes.first() != Some(&b'{') {
        return Err(parse("a record is a JSON object"));
    }
    // The envelope's members, without an allocation per record; `found` counts them all. The
    // second-level visitor sees the members of the one member that may be an object, the body.
    let mut members: [(&[u8], &[u8]); 5] = [(&[], &[]); 5];
    let mut found = 0;
    jcs::check(
        bytes,
        |key, value| {
            if let Some(slot) = members.get_mut(found) {
                *slot = (key, value);
            }
            found += 1;
        },
        visit_body_member,
    )
    .map_err(|defect| match defect {
        jcs::Defect::Syntax(..) => RecordError::Parse(defect.describe()),
        jcs::Defect::NotCanonical(..) => RecordError::NotCanonical,
    })?;
    // Keys come sorted and once each, so the envelope is exactly these five in this order.
    let [(k0, at_ms), (k1, _), (k2, format), (k3, id), (k4, kind)] = members;
    if found != ENVELOPE.len() || [k0, k1, k2, k3, k4] != ENVELOPE {
        return Err(parse(
            "a record has exactly the members at_ms, body, format, id and kind",
        ));
    }
    let integer = |value: &[u8]| {
        std::str::from_utf8(value)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
    };
    let at_ms = integer(at_ms).ok_or_else(|| parse("`at_ms` is not an integer"))?;
    if id.first() != Some(&b'"') {
        return Err(parse("`id` is not a string"));
    }
    let kind = kind
        .strip_prefix(b"\"")
        .and_then(|k| k.strip_suffix(b"\""))
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(RecordKind::parse)
        .ok_or_else(|| parse("`kind` is not a known record kind"))?;
    match integer(format).and_then(|f| u32::try_from(f).ok()) {
        Some(FORMAT_VERSION) => Ok(CheckedEnvelope { at_ms, id, kind }),
        Some(other) => Err(RecordError::UnknownFormat(other)),
        None => Err(parse("`format` is not a version number")),
    }
}

/// Writes the envelope around `body`, calling `visit_body_member` as
/// [`jcs::write_visiting_members`] does for the body.
fn write_envelope<B: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    format: u32,
    kind: RecordKind,
    at_ms: i64,
    id: &str,
    body: &B,
    visit_body_member: impl FnMut(&[u8], &[u8]),
) -> Result<(), RecordError> {
    // Member by member, keys already in RFC 8785 order: at_ms, body, format, id, kind.
    out.extend_from_slice(b"{\"at_ms\":");
    jcs::write(out, &at_ms).map_err(RecordError::Canonical)?;
    out.extend_from_slice(b",\"body\":");
    jcs::write_visiting_members(out, body, visit_body_member).map_err(RecordError::Canonical)?;
    out.extend_from_slice(b",\"format\":");
    jcs::write(out, &format).map_err(RecordError::Canonical)?;
    out.extend_from_slice(b",\"id\":");
    jcs::write_string(out, id);
    out.extend_from_slice(b",\"kind\":");
    jcs::write_string(out, kind.as_str());
    out.push(b'}');
    Ok(())
}

/// A record in its canonical bytes, with the query columns a sink stores next to them: what
/// the appender takes ([`Record::encode`] or [`Encoded::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub kind: RecordKind,
    pub at_ms: i64,
    pub id: String,
    pub bytes: Vec<u8>,
    pub fields: IndexFields,
}

impl Encoded {
    /// A format-1 record over any serialisable body, written straight into its canonical
    /// bytes: no JSON tree is built on the way (for a decision, that is most of the cost of
    /// recording it). The same bytes and columns as `Record::new(..)?.encode()`.
    pub fn new<B: Serialize + ?Sized>(
        kind: RecordKind,
        at_ms: i64,
        id: impl Into<String>,
        body: &B,
    ) -> Result<Encoded, RecordError> {
        let id = id.into();
        let mut bytes = Vec::with_capacity(1024);
        let mut fields = IndexFields::default();
        write_envelope(
            &mut bytes,
            FORMAT_VERSION,
            kind,
            at_ms,
            &id,
            body,
            |key, value| fields.take(key, value),
        )?;
        Ok(Encoded {
            kind,
            at_ms,
            id,
            bytes,
            fields,
        })
    }
}

/// What the appender accepts: a [`Record`] (encoded on the caller's thread) or an [`Encoded`]
/// one.
pub trait Appendable {
    fn encoded(self) -> Result<Encoded, RecordError>;
}

impl Appendable for &Record {
    fn encoded(self) -> Result<Encoded, RecordError> {
        self.encode()
    }
}

impl Appendable for Encoded {
    fn encoded(self) -> Result<Encoded, RecordError> {
        Ok(self)
    }
}

/// Filter columns taken from conventional body members: `deployment`,
/// `approval_id`, `principal` (strings) and `reason_codes` (array of strings).
/// They are a query aid only: verification never trusts them, and checks a sink's copies
/// against the records (`VerifyOptions::check_query_aids`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFields {
    pub deployment: Option<String>,
    pub approval_id: Option<String>,
    pub principal: Option<String>,
    pub reason_codes: Vec<String>,
}

impl IndexFields {
    /// Takes a body member (key as a JSON string literal, value as canonical JSON) if it is
    /// one of the four, read as [`Pick`] reads them.
    fn take(&mut self, key: &[u8], value: &[u8]) {
        match key {
            b"\"deployment\"" => self.deployment = text(value),
            b"\"approval_id\"" => self.approval_id = text(value),
            b"\"principal\"" => self.principal = text(value),
            b"\"reason_codes\"" => {
                self.reason_codes = serde_json::from_slice::<Lenient<Codes>>(value)
                    .map(|codes| codes.0 .0)
                    .unwrap_or_default();
            }
            _ => {}
        }
    }
}

fn text(value: &[u8]) -> Option<String> {
    if let Some(plain) = unescaped_literal(value) {
        return Some(plain.to_owned());
    }
    serde_json::from_slice::<Lenient<Text>>(value)
        .ok()
        .and_then(|text| text.0 .0)
}

/// The text of a JSON string literal (quotes included) that holds no escape: its bytes between
/// the quotes. None for any other value, whose reading is left to a parser. Only for values
/// that are JSON (from the canonical writer or the checker), where a literal without a
/// backslash cannot hold a quote or a control byte: ids, names and codes nearly always take
/// this path, which costs a scan where a parser costs several times that.
fn unescaped_literal(value: &[u8]) -> Option<&str> {
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// A record's envelope members and query columns, read from its bytes without building its
/// body: what a sink's lookup columns must hold for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAids {
    pub id: String,
    pub kind: RecordKind,
    pub at_ms: i64,
    pub fields: IndexFields,
}

impl RecordAids {
    /// [`Record::check_canonical`] and [`RecordAids::from_bytes`] in one pass over the bytes:
    /// the aids of bytes that are exactly a canonical record, or why they are not one. The body
    /// members are read as the writer reads them ([`Encoded::new`]). What verification runs
    /// on every record when it checks both the format and a sink's query aids.
    pub fn from_canonical(bytes: &[u8]) -> Result<RecordAids, RecordError> {
        let mut fields = IndexFields::default();
        let envelope = {
            let mut take = |key: &[u8], value: &[u8]| fields.take(key, value);
            check_envelope(bytes, Some(&mut take))?
        };
        let id = match unescaped_literal(envelope.id) {
            Some(plain) => plain.to_owned(),
            None => serde_json::from_slice::<String>(envelope.id)
                .map_err(|e| RecordError::Parse(e.to_string()))?,
        };
        Ok(RecordAids {
            id,
            kind: envelope.kind,
            at_ms: envelope.at_ms,
            fields,
        })
    }

    /// The parsed record's `id`, `kind`, `at_ms` and [`Record::index_fields`], at a fraction of
    /// the cost of parsing it: members other than these are skipped, not built.
    pub fn from_bytes(bytes: &[u8]) -> Result<RecordAids, RecordError> {
        #[derive(Deserialize)]
        struct Envelope {
            id: String,
            kind: RecordKind,
            at_ms: i64,
            body: Lenient<IndexFields>,
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Parse(e.to_string()))?;
        Ok(RecordAids {
            id: envelope.id,
            kind: envelope.kind,
            at_ms: envelope.at_ms,
            fields: envelope.body.0,
        })
    }
}

/// What a query column takes from a JSON value, by the value's type; values of any other type
/// give the default. Skipped values are read with `IgnoredAny`, which has no nesting limit, so
/// a deeply nested value loses nothing around it.
trait Pick: Default {
    fn string(_: &str) -> Self {
        Self::default()
    }
    fn list<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
    fn object<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
}

/// Any JSON value, read for what `T` picks from it.
struct Lenient<T>(T);

impl<'de, T: Pick> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lenient<T>, D::Error> {
        struct AnyValue<T>(std::marker::PhantomData<T>);
        impl<'de, T: Pick> Visitor<'de> for AnyValue<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, s: &str) -> Result<Lenient<T>, E> {
                Ok(Lenient(T::string(s)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Lenient<T>, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Lenient<T>, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Lenient<T>, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Lenient<T>, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_unit<E>(self) -> Result<Lenient<T>, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Lenient<T>, A::Error> {
                T::list(seq).map(Lenient)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Lenient<T>, A::Error> {
                T::object(map).map(Lenient)
            }
        }
        d.deserialize_any(AnyValue(std::marker::PhantomData))
    }
}

/// `deployment`, `approval_id`, `principal`: a string, or nothing.
#[derive(Default)]
struct Text(Option<String>);

impl Pick for Text {
    fn string(s: &str) -> Text {
        Text(Some(s.to_owned()))
    }
}

/// `reason_codes`: the strings of a list, in order; other elements are skipped.
#[derive(Default)]
struct Codes(Vec<String>);

impl Pick for Codes {
    fn list<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Codes, A::Error> {
        let mut codes = Vec::new();
        while let Some(code) = seq.next_element::<Lenient<Text>>()? {
            codes.extend(code.0 .0);
        }
        Ok(Codes(codes))
    }
}

/// A body's columns: the four conventional members of an object body; other bodies have none.
impl Pick for IndexFields {
    fn object<'de, A: MapAccess<'de>>(mut map: A) -> Result<IndexFields, A::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Member {
            Deployment,
            ApprovalId,
            Principal,
            ReasonCodes,
            #[serde(other)]
            Other,
        }
        let mut fields = IndexFields::default();
        while let Some(member) = map.next_key::<Member>()? {
            match member {
                Member::Deployment => fields.deployment = map.next_value::<Lenient<Text>>()?.0 .0,
                Member::ApprovalId => fields.approval_id = map.next_value::<Lenient<Text>>()?.0 .0,
                Member::Principal => fields.principal = map.next_value::<Lenient<Text>>()?.0 .0,
                Member::ReasonCodes => {
                    fields.reason_codes = map.next_value::<Lenient<Codes>>()?.0 .0;
                }
                Member::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// Suggested body of a [`RecordKind::ContractLoaded`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractLoaded {
    pub contract_version: String,
    pub previous_version: Option<String>,
    /// Human-readable summary lines of what changed.
    pub changes: Vec<String>,
    /// True when any limit was raised, a guard disabled, a tier lowered or an
    /// allowlist widened: the change weakens governance.
    pub loosening: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_layout_is_pinned() {
        let r = Record::new(
            RecordKind::Decision,
            1_700_000_000_000,
            "d-1",
            &json!({"z": 1, "a": [true, null, 1.5]}),
        )
        .unwrap();
        let bytes = r.canonical_bytes().unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"at_ms":1700000000000,"body":{"a":[true,null,1.5],"z":1},"format":1,"id":"d-1","kind":"decision"}"#
        );
        assert_eq!(Record::from_canonical(&bytes).unwrap(), r);
    }

    #[test]
    fn a_record_over_a_json_body_is_the_record_over_the_same_data_typed() {
        #[derive(Serialize)]
        struct Typed {
            z: u32,
            a: (bool, Option<u8>, f64),
        }
        let typed = Typed {
            z: 1,
            a: (true, None, 1.5),
        };
        let from_typed = Record::new(RecordKind::Outcome, 5, "o-1", &typed).unwrap();
        let from_json = Record::from_value(
            RecordKind::Outcome,
            5,
            "o-1",
            json!({"a": [true, null, 1.5], "z": 1}),
        );
        assert_eq!(from_json, from_typed);
        assert_eq!(
            from_json.canonical_bytes().unwrap(),
            from_typed.canonical_bytes().unwrap()
        );
    }

    #[test]
    fn an_encoded_typed_body_is_the_record_over_its_json_encoded() {
        #[derive(Serialize)]
        struct Decision {
            verdict: &'static str,
            principal: &'static str,
            reason_codes: Vec<&'static str>,
            deployment: Option<&'static str>,
            approval_id: u32,
            confidence: f32,
        }
        let typed = Decision {
            verdict: "BLOCK",
            principal: "svc",
            reason_codes: vec!["privacy.pii", "injection.direct"],
            deployment: Some("prod"),
            approval_id: 7,
            confidence: 0.2,
        };
        let encoded = both_routes(&typed);
        assert_eq!(encoded.fields.principal.as_deref(), Some("svc"));
        assert_eq!(encoded.fields.approval_id, None, "not a string");
        assert_eq!(encoded.fields.reason_codes.len(), 2);
        // Bodies that are not objects have no columns, even when positions would fit.
        for body in [
            json!(["prod", "ap", "svc", ["x"]]),
            json!("prod"),
            json!(null),
        ] {
            assert_eq!(both_routes(&body).fields, IndexFields::default(), "{body}");
        }
        // Members of the wrong type are skipped as the JSON route skips them; nested objects
        // and objects inside an enum variant are not the body's members.
        #[derive(Serialize)]
        enum Wrapped {
            Change { deployment: &'static str },
        }
        for body in [
            json!({"reason_codes": ["a", 3, null, "b"], "principal": 5, "deployment": "d"}),
            json!({"x": {"deployment": "nested"}, "approval_id": ["ap"]}),
            serde_json::to_value(Wrapped::Change {
                deployment: "inner",
            })
            .unwrap(),
        ] {
            both_routes(&body);
        }
        let wrapped = both_routes(&Wrapped::Change {
            deployment: "inner",
        });
        assert_eq!(wrapped.fields, IndexFields::default());
        // An enum variant that is the body is an object of one member, as in JSON.
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Variant {
            Deployment(&'static str),
            ReasonCodes(Vec<&'static str>),
            Principal(&'static str, u8),
        }
        for body in [
            Variant::Deployment("prod"),
            Variant::ReasonCodes(vec!["a", "b"]),
            Variant::Principal("p", 1),
        ] {
            both_routes(&body);
        }
        let deployment = both_routes(&Variant::Deployment("prod"));
        assert_eq!(deployment.fields.deployment.as_deref(), Some("prod"));
        // A deeply nested element (past serde_json's nesting limit) does not lose the codes.
        let mut deep = json!("x");
        for _ in 0..200 {
            deep = json!([deep]);
        }
        let encoded = both_routes(&json!({"reason_codes": ["a", deep, "b"]}));
        assert_eq!(
            encoded.fields.reason_codes,
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert_eq!(
            RecordAids::from_bytes(&encoded.bytes).unwrap().fields,
            encoded.fields,
            "read back from the bytes, too"
        );
        let first = both_routes(&json!({"reason_codes": ["a", 3, "b"], "deployment": "d"}));
        assert_eq!(
            first.fields.reason_codes,
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert_eq!(first.fields.deployment.as_deref(), Some("d"));
    }

    /// The body encoded straight to bytes, after checking it is exactly what the JSON-tree
    /// route (`Record::new(..).encode()`) gives: the same bytes and the same columns.
    fn both_routes<B: Serialize>(body: &B) -> Encoded {
        let encoded = Encoded::new(RecordKind::Admin, 1, "a", body).unwrap();
        let via_record = Record::new(RecordKind::Admin, 1, "a", body)
            .unwrap()
            .encode()
            .unwrap();
        assert_eq!(encoded, via_record);
        encoded
    }

    #[test]
    fn non_canonical_and_unknown_are_refused() {
        let spaced = br#"{"at_ms":1, "body":{},"format":1,"id":"x","kind":"kill"}"#;
        let v2 = br#"{"at_ms":1,"body":{},"format":2,"id":"x","kind":"kill"}"#;
        let extra = br#"{"at_ms":1,"body":{},"extra":0,"format":1,"id":"x","kind":"kill"}"#;
        // Parsing and writing again, and the one-pass check, say the same of each.
        type Check = fn(&[u8]) -> Result<(), RecordError>;
        let checks: [(&str, Check); 2] = [
            ("from_canonical", |b| Record::from_canonical(b).map(drop)),
            ("check_canonical", Record::check_canonical),
        ];
        for (name, check) in checks {
            assert_eq!(check(spaced), Err(RecordError::NotCanonical), "{name}");
            assert_eq!(check(v2), Err(RecordError::UnknownFormat(2)), "{name}");
            assert!(matches!(check(extra), Err(RecordError::Parse(_))), "{name}");
            assert!(
                matches!(check(b"\xff"), Err(RecordError::Parse(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn kinds_round_trip_through_names() {
        for k in RecordKind::ALL {
            assert_eq!(RecordKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
        assert_eq!(RecordKind::parse("nope"), None);
    }

    #[test]
    fn query_columns_are_read_back_from_the_bytes() {
        let r = Record::new(
            RecordKind::Decision,
            -5,
            "d\n\"1",
            &json!({"verdict": {"deployment": "nested"}, "deployment": "prod", "approval_id": "ap-1", "principal": "alice", "reason_codes": ["pii", 3, ["x"], "cost"], "zzz": [1, 2]}),
        )
        .unwrap();
        let aids = RecordAids::from_bytes(&r.canonical_bytes().unwrap()).unwrap();
        assert_eq!(
            aids,
            RecordAids {
                id: "d\n\"1".to_owned(),
                kind: RecordKind::Decision,
                at_ms: -5,
                fields: IndexFields {
                    deployment: Some("prod".to_owned()),
                    approval_id: Some("ap-1".to_owned()),
                    principal: Some("alice".to_owned()),
                    reason_codes: vec!["pii".to_owned(), "cost".to_owned()],
                },
            }
        );
        assert_eq!(aids.fields, r.index_fields());
        for body in [
            json!("prod"),
            json!(["prod"]),
            json!(null),
            json!({"principal": 7}),
        ] {
            let r = Record::new(RecordKind::Admin, 1, "a", &body).unwrap();
            let aids = RecordAids::from_bytes(&r.canonical_bytes().unwrap()).unwrap();
            assert_eq!(aids.fields, IndexFields::default(), "{body}");
        }
        assert!(RecordAids::from_bytes(b"{\"id\":1}").is_err());
    }

    #[test]
    fn index_fields_come_from_conventional_members() {
        let r = Record::new(
            RecordKind::Decision,
            0,
            "d",
            &json!({"deployment": "prod", "approval_id": "ap-1", "principal": "alice", "reason_codes": ["pii", 3, "cost"]}),
        )
        .unwrap();
        let f = r.index_fields();
        assert_eq!(f.deployment.as_deref(), Some("prod"));
        assert_eq!(f.approval_id.as_deref(), Some("ap-1"));
        assert_eq!(f.principal.as_deref(), Some("alice"));
        assert_eq!(f.reason_codes, vec!["pii".to_owned(), "cost".to_owned()]);
    }
}
