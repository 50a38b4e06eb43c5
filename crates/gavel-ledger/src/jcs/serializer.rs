//! RFC 8785 bytes written straight from any `Serialize` value, with no `serde_json::Value`
//! built on the way: one output buffer, and member sorting done in place over byte ranges.
//!
//! The bytes are those the previous writer (a walk over `serde_json::to_value` of the same
//! value, kept in the tests as the reference) gave, including serde_json's choices where JSON
//! has none: a non-finite float is `null`, an `f32` is widened to the double it is, bytes are
//! an array of numbers, enum variants are tagged externally, finite float keys are their
//! shortest text. The differences are refusals, on purpose: an object with the same key
//! twice ([`JcsError::DuplicateKey`]) rather than keeping the last value; serde_json's
//! `RawValue`; and a `Serialize` impl that goes on writing after an error it was given.

use super::{is_plain_key, literal_order, write_number, write_string, JcsError};
use serde::ser::{self, Impossible, Serialize};
use serde_json::Number;
use std::cmp::Ordering;

/// Canonical bytes of `value`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, JcsError> {
    let mut out = Vec::with_capacity(256);
    write(&mut out, value)?;
    Ok(out)
}

/// Appends the canonical form of `value` to `out`.
pub fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), JcsError> {
    write_visiting_members(out, value, |_, _| {})
}

/// [`write`], then, when `value` is an object, `visit(key, value)` for each of its members in
/// order: the key as its JSON string literal (quotes included) and the value as its canonical
/// bytes. Lets a caller read a few top-level members without parsing what it just wrote.
pub fn write_visiting_members<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
    mut visit: impl FnMut(&[u8], &[u8]),
) -> Result<(), JcsError> {
    let mut writer = Writer {
        out,
        members: Vec::new(),
        scratch: Vec::new(),
        depth: 0,
        root_members: Vec::new(),
        root_variant: None,
        failed: false,
    };
    value.serialize(&mut writer)?;
    if writer.failed || writer.depth != 0 {
        // A `Serialize` impl went on after an error it was given (or left something open):
        // what was written is not one JSON value.
        return Err(went_on());
    }
    for m in &writer.root_members {
        visit(
            &writer.out[m.start..m.key_end],
            &writer.out[m.key_end + 1..m.end],
        );
    }
    Ok(())
}

impl ser::Error for JcsError {
    fn custom<T: std::fmt::Display>(msg: T) -> JcsError {
        JcsError::Serialize(msg.to_string())
    }
}

/// Where one object member lies in the output: `"key":value`.
#[derive(Clone, Copy)]
struct Member {
    start: usize,
    /// Just past the key's closing quote.
    key_end: usize,
    end: usize,
    /// The key's bytes between the quotes order as its UTF-16 code units do: no escapes, no
    /// character whose UTF-8 and UTF-16 orders differ (see `utf16_cmp`).
    plain: bool,
    /// A plain key's first 8 bytes, big-endian, zero-padded: most keys differ there, so most
    /// comparisons are one integer comparison. (A plain key has no NUL byte, so padding
    /// orders a shorter key first, as byte order does.)
    prefix: u64,
}

struct Writer<'o> {
    out: &'o mut Vec<u8>,
    /// Members of the objects being written, innermost last (one stack for all levels).
    members: Vec<Member>,
    /// Room to reorder an object's members in.
    scratch: Vec<u8>,
    /// Arrays, objects and enum-variant wrappers open around the value being written.
    depth: usize,
    /// The members of the value itself when it is an object, where they ended up.
    root_members: Vec<Member>,
    /// Where the variant name of an enum variant that is the value itself lies (start, end
    /// of its string literal): `{"variant":...}` is then the value's one member.
    root_variant: Option<(usize, usize)>,
    /// A nested value failed: nothing more is written (see [`Writer::check`]).
    failed: bool,
}

fn went_on() -> JcsError {
    JcsError::Serialize("a value was written on after an error in it".into())
}

impl<'o> Writer<'o> {
    /// Refuses to go on once a nested value failed: a `Serialize` impl that ignores an error
    /// and carries on must not get bytes that are not JSON.
    fn check(&self) -> Result<(), JcsError> {
        if self.failed {
            Err(went_on())
        } else {
            Ok(())
        }
    }

    /// A `Serialize` impl called the serializer out of order: nothing more is written.
    fn misuse(&mut self, what: &str) -> JcsError {
        self.failed = true;
        JcsError::Serialize(what.to_owned())
    }

    /// Ends an array or object (and the enum-variant wrapper around it, when `close` is two
    /// bytes).
    fn close(&mut self, close: &[u8]) {
        self.out.extend_from_slice(close);
        self.depth = self.depth.saturating_sub(close.len());
        if close.len() == 2 {
            let value_end = self.out.len() - 1;
            self.close_variant(value_end);
        }
    }

    /// Writes a nested value, remembering whether it failed.
    fn nested<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        self.check()?;
        let written = value.serialize(&mut *self);
        self.failed |= written.is_err();
        written
    }

    /// Ends an enum-variant wrapper `{"variant":...}` whose value ends at `value_end`: the
    /// value's one member when the wrapper is the value itself.
    fn close_variant(&mut self, value_end: usize) {
        if self.depth == 0 {
            if let Some((start, key_end)) = self.root_variant.take() {
                let key = self.out.get(start + 1..key_end - 1).unwrap_or_default();
                let (plain, prefix) = key_order_hints(key);
                self.root_members.push(Member {
                    start,
                    key_end,
                    end: value_end,
                    plain,
                    prefix,
                });
            }
        }
    }

    fn number(&mut self, n: Number) -> Result<(), JcsError> {
        write_number(self.out, &n)
    }

    /// What serde_json makes of a float: a number when finite, `null` otherwise.
    fn float(&mut self, f: f64) -> Result<(), JcsError> {
        match Number::from_f64(f) {
            Some(n) => self.number(n),
            None => {
                self.out.extend_from_slice(b"null");
                Ok(())
            }
        }
    }

    fn open_object(&mut self) -> Object<'_, 'o> {
        self.out.push(b'{');
        self.depth += 1;
        if self.members.capacity() == 0 {
            // Enough for a decision's members at every level without growing.
            self.members.reserve(48);
        }
        let first = self.members.len();
        Object {
            first,
            key_start: 0,
            key_end: 0,
            key_pending: false,
            close: b"}",
            writer: self,
        }
    }

    /// `{"variant":` of an externally tagged enum variant.
    fn open_variant(&mut self, variant: &str) {
        self.out.push(b'{');
        let start = self.out.len();
        write_string(self.out, variant);
        if self.depth == 0 {
            self.root_variant = Some((start, self.out.len()));
        }
        self.depth += 1;
        self.out.push(b':');
    }

    /// Puts the members written since `first` in RFC 8785 order (and keeps where they are
    /// when they are the root object's).
    fn sort_members(&mut self, first: usize, root: bool) -> Result<(), JcsError> {
        let out = &*self.out;
        let members = &mut self.members[first..];
        let in_order = members
            .windows(2)
            .all(|pair| key_order(out, &pair[0], &pair[1]) == Ordering::Less);
        if !in_order {
            let start = members.iter().map(|m| m.start).min().unwrap_or(out.len());
            if members.iter().all(|m| m.plain) {
                // Integer comparisons first (half the cost of writing a decision was its
                // sort), then the runs of keys that share their first 8 bytes, by the rest.
                members.sort_unstable_by_key(|m| m.prefix);
                let mut run = 0;
                while run < members.len() {
                    let prefix = members[run].prefix;
                    let len = members[run..]
                        .iter()
                        .take_while(|m| m.prefix == prefix)
                        .count();
                    if len > 1 {
                        members[run..run + len].sort_unstable_by(|a, b| key_order(out, a, b));
                    }
                    run += len;
                }
            } else {
                members.sort_unstable_by(|a, b| key_order(out, a, b));
            }
            // Equal keys have equal escaped bytes, so equal prefixes.
            if let Some(pair) = members.windows(2).find(|pair| {
                pair[0].prefix == pair[1].prefix
                    && key_order(out, &pair[0], &pair[1]) == Ordering::Equal
            }) {
                let key = &out[pair[0].start..pair[0].key_end];
                return Err(JcsError::DuplicateKey(
                    serde_json::from_slice(key).unwrap_or_default(),
                ));
            }
            self.scratch.clear();
            for (i, m) in members.iter_mut().enumerate() {
                if i > 0 {
                    self.scratch.push(b',');
                }
                let moved_to = start + self.scratch.len();
                self.scratch.extend_from_slice(&out[m.start..m.end]);
                *m = Member {
                    start: moved_to,
                    key_end: moved_to + (m.key_end - m.start),
                    end: moved_to + (m.end - m.start),
                    ..*m
                };
            }
            self.out.truncate(start);
            self.out.extend_from_slice(&self.scratch);
        }
        if root {
            self.root_members.extend_from_slice(&self.members[first..]);
        }
        self.members.truncate(first);
        Ok(())
    }
}

/// Orders two members of `out` by their raw keys (escapes undone, only for keys that have any).
#[inline]
fn key_order(out: &[u8], a: &Member, b: &Member) -> Ordering {
    let literal = |m: &Member| &out[m.start..m.key_end];
    if a.plain && b.plain {
        let inner = |m: &Member| &out[m.start + 1..m.key_end - 1];
        return a.prefix.cmp(&b.prefix).then_with(|| inner(a).cmp(inner(b)));
    }
    literal_order(literal(a), literal(b))
}

/// [`Member::plain`] and [`Member::prefix`] of a key's bytes between the quotes.
#[inline]
fn key_order_hints(inner: &[u8]) -> (bool, u64) {
    let plain = is_plain_key(inner);
    let mut first = [0u8; 8];
    let n = inner.len().min(8);
    first[..n].copy_from_slice(&inner[..n]);
    (plain, u64::from_be_bytes(first))
}

/// An array being written; `close` ends it (and the variant wrapping it, if any).
struct Array<'a, 'o> {
    writer: &'a mut Writer<'o>,
    first: bool,
    close: &'static [u8],
}

impl Array<'_, '_> {
    #[inline]
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        if !self.first {
            self.writer.out.push(b',');
        }
        self.first = false;
        self.writer.nested(value)
    }

    fn close(self) -> Result<(), JcsError> {
        self.writer.check()?;
        self.writer.close(self.close);
        Ok(())
    }
}

/// An object being written; its members are sorted when it closes.
struct Object<'a, 'o> {
    writer: &'a mut Writer<'o>,
    /// This object's first entry in the writer's member stack.
    first: usize,
    key_start: usize,
    key_end: usize,
    /// A key was written and its value not yet.
    key_pending: bool,
    close: &'static [u8],
}

impl Object<'_, '_> {
    #[inline]
    fn begin_key(&mut self) -> Result<(), JcsError> {
        self.writer.check()?;
        if self.key_pending {
            return Err(self.writer.misuse("an object key without a value"));
        }
        if self.writer.members.len() > self.first {
            self.writer.out.push(b',');
        }
        self.key_start = self.writer.out.len();
        Ok(())
    }

    #[inline]
    fn end_key(&mut self) {
        self.key_end = self.writer.out.len();
        self.key_pending = true;
        self.writer.out.push(b':');
    }

    #[inline]
    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        if !self.key_pending {
            return Err(self.writer.misuse("an object value without a key"));
        }
        self.key_pending = false;
        let key = self
            .writer
            .out
            .get(self.key_start + 1..self.key_end.saturating_sub(1))
            .unwrap_or_default();
        let (plain, prefix) = key_order_hints(key);
        self.writer.nested(value)?;
        let member = Member {
            start: self.key_start,
            key_end: self.key_end,
            end: self.writer.out.len(),
            plain,
            prefix,
        };
        self.writer.members.push(member);
        Ok(())
    }

    #[inline]
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), JcsError> {
        self.begin_key()?;
        write_string(self.writer.out, key);
        self.end_key();
        self.value(value)
    }

    fn close(self) -> Result<(), JcsError> {
        self.writer.check()?;
        if self.key_pending {
            return Err(self.writer.misuse("an object key without a value"));
        }
        // A plain object with nothing open around it is the value itself (a variant's object
        // closes with its wrapper, which is the value).
        let root = self.writer.depth == 1 && self.close.len() == 1;
        self.writer.sort_members(self.first, root)?;
        self.writer.close(self.close);
        Ok(())
    }
}

macro_rules! numbers {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method(self, v: $ty) -> Result<(), JcsError> {
            self.number(Number::from(v))
        })*
    };
}

impl<'a, 'o> ser::Serializer for &'a mut Writer<'o> {
    type Ok = ();
    type Error = JcsError;
    type SerializeSeq = Array<'a, 'o>;
    type SerializeTuple = Array<'a, 'o>;
    type SerializeTupleStruct = Array<'a, 'o>;
    type SerializeTupleVariant = Array<'a, 'o>;
    type SerializeMap = Object<'a, 'o>;
    type SerializeStruct = Object<'a, 'o>;
    type SerializeStructVariant = Object<'a, 'o>;

    fn serialize_bool(self, v: bool) -> Result<(), JcsError> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    numbers!(serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64);

    fn serialize_i128(self, v: i128) -> Result<(), JcsError> {
        match (u64::try_from(v), i64::try_from(v)) {
            (Ok(u), _) => self.number(Number::from(u)),
            (_, Ok(i)) => self.number(Number::from(i)),
            _ => Err(JcsError::UnsafeInteger(v.to_string())),
        }
    }

    fn serialize_u128(self, v: u128) -> Result<(), JcsError> {
        match u64::try_from(v) {
            Ok(u) => self.number(Number::from(u)),
            Err(_) => Err(JcsError::UnsafeInteger(v.to_string())),
        }
    }

    fn serialize_f32(self, v: f32) -> Result<(), JcsError> {
        self.float(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), JcsError> {
        self.float(v)
    }

    fn serialize_char(self, v: char) -> Result<(), JcsError> {
        write_string(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), JcsError> {
        write_string(self.out, v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), JcsError> {
        let mut array = ser::Serializer::serialize_seq(self, Some(v.len()))?;
        for b in v {
            array.element(b)?;
        }
        array.close()
    }

    fn serialize_none(self) -> Result<(), JcsError> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), JcsError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), JcsError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), JcsError> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), JcsError> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        self.open_variant(variant);
        self.nested(value)?;
        let value_end = self.out.len();
        self.out.push(b'}');
        self.depth = self.depth.saturating_sub(1);
        self.close_variant(value_end);
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a, 'o>, JcsError> {
        self.out.push(b'[');
        self.depth += 1;
        Ok(Array {
            writer: self,
            first: true,
            close: b"]",
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Array<'a, 'o>, JcsError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Array<'a, 'o>, JcsError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'a, 'o>, JcsError> {
        self.open_variant(variant);
        self.out.push(b'[');
        self.depth += 1;
        Ok(Array {
            writer: self,
            first: true,
            close: b"]}",
        })
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a, 'o>, JcsError> {
        Ok(self.open_object())
    }

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Object<'a, 'o>, JcsError> {
        // serde_json's `RawValue` (its `raw_value` feature) and its numbers under
        // `arbitrary_precision` reach a serializer as a struct with a private name; written
        // as an object they would record something else than the value meant.
        if name.starts_with("$serde_json::private::") {
            return Err(JcsError::Serialize(format!(
                "`{name}` (serde_json's raw JSON or arbitrary-precision number) has no \
                 canonical form here; record a parsed value"
            )));
        }
        Ok(self.open_object())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a, 'o>, JcsError> {
        self.open_variant(variant);
        let mut object = self.open_object();
        object.close = b"}}";
        Ok(object)
    }
}

/// serde has one trait per kind of sequence; an array is written the same for each.
macro_rules! array_impls {
    ($($kind:ident: $method:ident),*) => {
        $(impl ser::$kind for Array<'_, '_> {
            type Ok = ();
            type Error = JcsError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
                self.element(value)
            }
            fn end(self) -> Result<(), JcsError> {
                self.close()
            }
        })*
    };
}

array_impls!(SerializeSeq: serialize_element, SerializeTuple: serialize_element,
    SerializeTupleStruct: serialize_field, SerializeTupleVariant: serialize_field);

impl ser::SerializeMap for Object<'_, '_> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), JcsError> {
        self.begin_key()?;
        let written = key.serialize(KeyWriter {
            out: self.writer.out,
        });
        self.writer.failed |= written.is_err();
        written?;
        self.end_key();
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JcsError> {
        self.value(value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.close()
    }
}

/// A struct and a struct variant are written the same.
macro_rules! struct_impls {
    ($($kind:ident),*) => {
        $(impl ser::$kind for Object<'_, '_> {
            type Ok = ();
            type Error = JcsError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), JcsError> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), JcsError> {
                self.close()
            }
        })*
    };
}

struct_impls!(SerializeStruct, SerializeStructVariant);

/// Writes a map key as the JSON string serde_json would make of it: strings as they are,
/// integers and booleans as their text, unit variants as their name.
struct KeyWriter<'o> {
    out: &'o mut Vec<u8>,
}

fn key_must_be_a_string() -> JcsError {
    JcsError::Serialize(
        "an object key must be a string, a number or a boolean (finite, for a float)".into(),
    )
}

macro_rules! integer_keys {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method(self, v: $ty) -> Result<(), JcsError> {
            write_string(self.out, &v.to_string());
            Ok(())
        })*
    };
}

impl ser::Serializer for KeyWriter<'_> {
    type Ok = ();
    type Error = JcsError;
    type SerializeSeq = Impossible<(), JcsError>;
    type SerializeTuple = Impossible<(), JcsError>;
    type SerializeTupleStruct = Impossible<(), JcsError>;
    type SerializeTupleVariant = Impossible<(), JcsError>;
    type SerializeMap = Impossible<(), JcsError>;
    type SerializeStruct = Impossible<(), JcsError>;
    type SerializeStructVariant = Impossible<(), JcsError>;

    fn serialize_str(self, v: &str) -> Result<(), JcsError> {
        write_string(self.out, v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), JcsError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_bool(self, v: bool) -> Result<(), JcsError> {
        self.serialize_str(if v { "true" } else { "false" })
    }

    integer_keys!(serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128);

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), JcsError> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        value.serialize(self)
    }

    /// As serde_json writes a float key: its shortest text, finite floats only.
    fn serialize_f32(self, v: f32) -> Result<(), JcsError> {
        if !v.is_finite() {
            return Err(key_must_be_a_string());
        }
        let text = serde_json::to_string(&v).map_err(|e| JcsError::Serialize(e.to_string()))?;
        self.serialize_str(&text)
    }
    fn serialize_f64(self, v: f64) -> Result<(), JcsError> {
        if !v.is_finite() {
            return Err(key_must_be_a_string());
        }
        let text = serde_json::to_string(&v).map_err(|e| JcsError::Serialize(e.to_string()))?;
        self.serialize_str(&text)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_none(self) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, JcsError> {
        Err(key_must_be_a_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jcs::utf16_cmp;
    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::{json, Value};
    use std::collections::BTreeMap;

    /// The writer these bytes replaced (a walk over a `serde_json::Value`, as of 74b5834), kept
    /// as the reference: the ledger's existing records were written by it.
    fn reference(value: &Value, out: &mut Vec<u8>) -> Result<(), JcsError> {
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Number(n) => super::super::write_number(out, n)?,
            Value::String(s) => super::super::write_string(out, s),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    reference(item, out)?;
                }
                out.push(b']');
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| utf16_cmp(a.0, b.0));
                out.push(b'{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    super::super::write_string(out, k);
                    out.push(b':');
                    reference(v, out)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }

    /// What the reference makes of `serde_json::to_value(value)`: these bytes must equal it.
    fn through_value<T: Serialize>(value: &T) -> Result<Vec<u8>, JcsError> {
        let tree = serde_json::to_value(value).map_err(|e| JcsError::Serialize(e.to_string()))?;
        let mut out = Vec::new();
        reference(&tree, &mut out)?;
        Ok(out)
    }

    struct Fails;
    impl Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("no"))
        }
    }

    /// Fails after writing part of an object.
    struct FailsDeep;
    impl Serialize for FailsDeep {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("deployment", "inner")?;
            m.serialize_entry("x", &Fails)?;
            m.end()
        }
    }

    #[test]
    fn a_value_that_goes_on_after_an_error_is_refused_not_written() {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct MapGoesOn;
        impl Serialize for MapGoesOn {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                let _ = m.serialize_entry("bad", &Fails);
                let _ = m.serialize_entry("deep", &FailsDeep);
                m.serialize_entry("a", &1)?;
                m.end()
            }
        }
        struct SeqGoesOn;
        impl Serialize for SeqGoesOn {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut q = s.serialize_seq(None)?;
                let _ = q.serialize_element(&FailsDeep);
                q.serialize_element(&1)?;
                q.end()
            }
        }
        struct KeyTwice;
        impl Serialize for KeyTwice {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                let _ = m.serialize_key("a");
                let _ = m.serialize_key("b");
                m.serialize_value(&1)?;
                m.end()
            }
        }
        struct ValueWithoutKey;
        impl Serialize for ValueWithoutKey {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                let _ = m.serialize_key(&());
                let _ = m.serialize_value(&1);
                m.serialize_entry("a", &1)?;
                m.end()
            }
        }
        assert!(to_vec(&MapGoesOn).is_err());
        assert!(to_vec(&SeqGoesOn).is_err());
        assert!(to_vec(&KeyTwice).is_err());
        assert!(to_vec(&ValueWithoutKey).is_err());
        // Nested: the outer value is refused too, whatever it does with the error.
        assert!(to_vec(&vec![json!(1)]).is_ok());
        assert!(to_vec(&(1, SeqGoesOn)).is_err());
    }

    #[test]
    fn serde_json_raw_values_are_refused() {
        let raw = serde_json::value::RawValue::from_string(r#"{"b":1,"a":2}"#.into()).unwrap();
        assert!(matches!(to_vec(&raw), Err(JcsError::Serialize(_))));
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(u8, String),
        Struct { zeta: bool, alpha: Option<f32> },
    }

    #[derive(Serialize)]
    struct Nested {
        // Declared out of order on purpose: the writer must sort.
        zulu: Vec<Shape>,
        alpha: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        mike: BTreeMap<u32, &'static str>,
        #[serde(flatten)]
        extra: serde_json::Map<String, Value>,
        bytes: serde_bytes_like::Bytes,
        unit: (),
        character: char,
        nan: f64,
        // Internally tagged, as the engine's obligations are: the tag is a member like the rest.
        tagged: Vec<Tagged>,
    }

    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Tagged {
        CapMaxTokens { max_tokens: u64 },
        Route { to: String, approval_id: String },
    }

    /// A `serialize_bytes` caller without pulling in serde_bytes.
    mod serde_bytes_like {
        pub struct Bytes(pub Vec<u8>);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    #[test]
    fn typed_values_give_the_bytes_of_their_json_value() {
        let mut extra = serde_json::Map::new();
        extra.insert("\u{20ac}".into(), json!("euro"));
        extra.insert("beta".into(), json!({"y": [1, 2.5, null], "x": "\n"}));
        extra.insert("a\"quoted".into(), json!(true));
        let value = Nested {
            zulu: vec![
                Shape::Unit,
                Shape::Newtype(7),
                Shape::Tuple(1, "t".into()),
                Shape::Struct {
                    zeta: false,
                    alpha: Some(0.2),
                },
            ],
            alpha: -1.5e-7,
            skipped: None,
            mike: BTreeMap::from([(10, "ten"), (9, "nine")]),
            extra,
            bytes: serde_bytes_like::Bytes(vec![0, 255]),
            unit: (),
            character: '\u{1f600}',
            nan: f64::NAN,
            tagged: vec![
                Tagged::CapMaxTokens { max_tokens: 400 },
                Tagged::Route {
                    to: "local".into(),
                    approval_id: "apr_1".into(),
                },
            ],
        };
        let direct = to_vec(&value).unwrap();
        assert_eq!(
            String::from_utf8(direct.clone()).unwrap(),
            String::from_utf8(through_value(&value).unwrap()).unwrap()
        );
        // Keys escaped in the output ("a\"quoted") still sort by their raw characters.
        let text = String::from_utf8(direct).unwrap();
        assert!(text.starts_with(r#"{"a\"quoted":true,"alpha":"#), "{text}");
    }

    #[test]
    fn a_key_twice_is_refused_not_overwritten() {
        #[derive(Serialize)]
        struct Twice {
            id: u8,
            #[serde(flatten)]
            more: BTreeMap<&'static str, u8>,
        }
        let twice = Twice {
            id: 1,
            more: BTreeMap::from([("id", 2)]),
        };
        assert_eq!(to_vec(&twice), Err(JcsError::DuplicateKey("id".into())));
    }

    #[test]
    fn unsafe_integers_and_odd_keys_are_refused() {
        assert!(matches!(
            to_vec(&(1u64 << 60)),
            Err(JcsError::UnsafeInteger(_))
        ));
        assert!(matches!(
            to_vec(&u128::MAX),
            Err(JcsError::UnsafeInteger(_))
        ));
        struct FloatKeyed(Vec<(f64, u8)>);
        impl Serialize for FloatKeyed {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        // Finite float keys are written as serde_json writes them; others are refused.
        let finite = FloatKeyed(vec![(1.5, 1), (-0.25, 2), (1e21, 3), (1.0, 4)]);
        assert_eq!(to_vec(&finite).unwrap(), through_value(&finite).unwrap());
        assert!(matches!(
            to_vec(&FloatKeyed(vec![(f64::NAN, 1)])),
            Err(JcsError::Serialize(_))
        ));
    }

    /// Any JSON value: objects with keys drawn so that escapes, non-ASCII and near-duplicates
    /// occur, numbers of every kind the writer treats differently.
    fn any_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            "[a-c]{0,3}",
            Just("\u{20ac}".to_owned()),
            Just("\u{1f600}".to_owned()),
            Just("\u{ff61}".to_owned()),
            Just("\"".to_owned()),
            Just("\n".to_owned()),
            Just("\\".to_owned()),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Bytes equal to the reference writer's for any JSON value.
        #[test]
        fn any_json_value_gives_the_reference_bytes(value in any_json()) {
            let mut want = Vec::new();
            reference(&value, &mut want).unwrap();
            prop_assert_eq!(to_vec(&value).unwrap(), want);
        }

        /// The same members declared in a random order (a struct's field order, a map that
        /// does not sort) come out in canonical order, with nothing lost or doubled.
        #[test]
        fn members_in_any_order_come_out_sorted(
            value in any_json(),
            seed in any::<u64>(),
        ) {
            struct Shuffled<'a>(&'a Value, u64);
            impl Serialize for Shuffled<'_> {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    match self.0 {
                        Value::Object(map) => {
                            let mut members: Vec<_> = map.iter().collect();
                            // A fixed permutation per seed: reverse and rotate.
                            members.reverse();
                            let len = members.len().max(1);
                            members.rotate_left((self.1 as usize) % len);
                            s.collect_map(members.into_iter().map(|(k, v)| (k, Shuffled(v, self.1))))
                        }
                        Value::Array(items) => {
                            s.collect_seq(items.iter().map(|v| Shuffled(v, self.1)))
                        }
                        other => other.serialize(s),
                    }
                }
            }
            let mut want = Vec::new();
            reference(&value, &mut want).unwrap();
            prop_assert_eq!(to_vec(&Shuffled(&value, seed)).unwrap(), want);
        }
    }
}
