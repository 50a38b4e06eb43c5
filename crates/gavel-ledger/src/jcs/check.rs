//! Checks that bytes are exactly the canonical form (RFC 8785) of the JSON they hold, in one pass
//! over the bytes and without building the value: what verification asks of every stored record,
//! where parsing each into a `serde_json::Value` and writing it again cost about 5 us per
//! gateway-sized record. It accepts exactly what that round trip accepts (a property test in
//! tests/properties.rs holds the two to the same answers), because canonical JSON leaves one
//! way to write each value: no whitespace, members in UTF-16 order with no key twice, strings
//! escaped as `write_string` escapes them, numbers as `write_number` prints them.

use super::{is_plain_key, literal_order, next_escaped, write_number};
use std::cmp::Ordering;

/// Nesting at which serde_json stops parsing (its recursion limit of 128 counts every open
/// array and object, the outermost included): deeper input does not parse there either.
const MAX_DEPTH: u32 = 128;

/// Why bytes are not canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Defect {
    /// Not JSON at all (what a parser would refuse): a sentence and the byte offset.
    Syntax(&'static str, usize),
    /// JSON, but not written the one canonical way.
    NotCanonical(&'static str, usize),
}

impl Defect {
    /// The sentence, with where it was found.
    pub(crate) fn describe(&self) -> String {
        match self {
            Defect::Syntax(what, at) | Defect::NotCanonical(what, at) => {
                format!("{what} at byte {at}")
            }
        }
    }
}

/// Checks that `bytes` are one canonical JSON value and nothing else, calling
/// `visit_top_member` with the key (as its string literal, quotes included) and the value bytes
/// of each member when that value is an object, in order; and `visit_second_member` likewise
/// for the members of each of those values that is itself an object (before the member that
/// holds them), so that a caller reads a record's body members in the same pass.
pub(crate) fn check<'a>(
    bytes: &'a [u8],
    mut visit_top_member: impl FnMut(&'a [u8], &'a [u8]),
    visit_second_member: Visit<'_, 'a>,
) -> Result<(), Defect> {
    // Outside strings only ASCII is JSON, so the bytes are UTF-8 wherever they are JSON at all:
    // one pass over them all here costs less than one per string.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(Defect::Syntax("not UTF-8", e.valid_up_to()));
    }
    let mut checker = Checker {
        bytes,
        at: 0,
        depth: 0,
        number: Vec::new(),
    };
    checker.value(Some(&mut visit_top_member), visit_second_member)?;
    match bytes.get(checker.at) {
        None => Ok(()),
        Some(b' ' | b'\t' | b'\n' | b'\r') => Err(Defect::NotCanonical(
            "whitespace after the value",
            checker.at,
        )),
        Some(_) => Err(Defect::Syntax("characters after the value", checker.at)),
    }
}

/// Called with a member's key (its string literal) and value bytes.
pub(crate) type Visit<'v, 'a> = Option<&'v mut dyn FnMut(&'a [u8], &'a [u8])>;

struct Checker<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: u32,
    /// A number as the canonical writer prints it, to compare with the one found.
    number: Vec<u8>,
}

/// A string literal found: from its opening quote to just past its closing one.
#[derive(Clone, Copy)]
struct Literal {
    start: usize,
    end: usize,
}

impl<'a> Checker<'a> {
    /// `visit` sees the members of this value if it is an object, `below` those of its members'
    /// values that are objects.
    fn value(&mut self, visit: Visit<'_, 'a>, below: Visit<'_, 'a>) -> Result<(), Defect> {
        match self.bytes.get(self.at) {
            Some(b'{') => self.object(visit, below),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b' ' | b'\t' | b'\n' | b'\r') => {
                Err(Defect::NotCanonical("whitespace before a value", self.at))
            }
            Some(_) => Err(Defect::Syntax("expected a JSON value", self.at)),
            None => Err(Defect::Syntax(
                "the JSON ends where a value was expected",
                self.at,
            )),
        }
    }

    fn enter(&mut self) -> Result<(), Defect> {
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return Err(Defect::Syntax(
                "arrays and objects nested too deep",
                self.at,
            ));
        }
        self.at += 1;
        Ok(())
    }

    /// After a member or element: `,` goes on, `close` ends; anything else is a defect.
    fn separator(&mut self, close: u8) -> Result<bool, Defect> {
        let at = self.at;
        self.at += 1;
        match self.bytes.get(at) {
            Some(b',') => Ok(true),
            Some(&b) if b == close => Ok(false),
            Some(b' ' | b'\t' | b'\n' | b'\r') => {
                Err(Defect::NotCanonical("whitespace between values", at))
            }
            Some(_) => Err(Defect::Syntax("expected `,` or the closing bracket", at)),
            None => Err(Defect::Syntax(
                "the JSON ends inside an array or object",
                at,
            )),
        }
    }

    fn object(&mut self, mut visit: Visit<'_, 'a>, mut below: Visit<'_, 'a>) -> Result<(), Defect> {
        self.enter()?;
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            self.depth -= 1;
            return Ok(());
        }
        // The previous key, and whether it is plain (so each key is looked at once for that).
        let mut previous: Option<(Literal, bool)> = None;
        loop {
            match self.bytes.get(self.at) {
                Some(b'"') => {}
                Some(b' ' | b'\t' | b'\n' | b'\r') => {
                    return Err(Defect::NotCanonical("whitespace before a key", self.at))
                }
                _ => return Err(Defect::Syntax("expected a string as the key", self.at)),
            }
            let key = self.string()?;
            let plain = is_plain_key(self.inner(key));
            if let Some(previous) = previous {
                if self.key_order(previous, (key, plain)) != Ordering::Less {
                    return Err(Defect::NotCanonical(
                        "object keys out of order or repeated",
                        key.start,
                    ));
                }
            }
            previous = Some((key, plain));
            match self.bytes.get(self.at) {
                Some(b':') => self.at += 1,
                Some(b' ' | b'\t' | b'\n' | b'\r') => {
                    return Err(Defect::NotCanonical("whitespace after a key", self.at))
                }
                _ => return Err(Defect::Syntax("expected `:` after the key", self.at)),
            }
            let value_start = self.at;
            let below = below
                .as_mut()
                .map(|v| &mut **v as &mut dyn FnMut(&'a [u8], &'a [u8]));
            self.value(below, None)?;
            if let Some(visit) = visit.as_mut() {
                visit(
                    self.bytes.get(key.start..key.end).unwrap_or_default(),
                    self.bytes.get(value_start..self.at).unwrap_or_default(),
                );
            }
            if !self.separator(b'}')? {
                break;
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn array(&mut self) -> Result<(), Defect> {
        self.enter()?;
        if self.bytes.get(self.at) == Some(&b']') {
            self.at += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.value(None, None)?;
            if !self.separator(b']')? {
                break;
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Defect> {
        if self.bytes.get(self.at..self.at + word.len()) != Some(word) {
            return Err(Defect::Syntax(
                "expected `true`, `false` or `null`",
                self.at,
            ));
        }
        self.at += word.len();
        Ok(())
    }

    /// A string literal, its escapes exactly those the canonical writer makes and its text
    /// UTF-8.
    fn string(&mut self) -> Result<Literal, Defect> {
        let start = self.at;
        self.at += 1;
        loop {
            self.at = next_escaped(self.bytes, self.at);
            match self.bytes.get(self.at) {
                None => return Err(Defect::Syntax("a string is not closed", start)),
                Some(b'"') => break,
                Some(b'\\') => self.escape()?,
                // What else stops the scan is a control byte.
                Some(_) => {
                    return Err(Defect::Syntax(
                        "a control character inside a string",
                        self.at,
                    ))
                }
            }
        }
        self.at += 1;
        Ok(Literal {
            start,
            end: self.at,
        })
    }

    /// One escape, at the backslash: the canonical writer escapes `"` and `\` as themselves,
    /// five controls by letter and the other controls as `\u00xx` in lower case, nothing else.
    fn escape(&mut self) -> Result<(), Defect> {
        let at = self.at;
        match self.bytes.get(at + 1) {
            Some(b'"' | b'\\' | b'b' | b't' | b'n' | b'f' | b'r') => {
                self.at += 2;
                Ok(())
            }
            Some(b'/') => Err(Defect::NotCanonical("`\\/` in a string", at)),
            Some(b'u') => {
                let hex = self.bytes.get(at + 2..at + 6).unwrap_or_default();
                let text = std::str::from_utf8(hex).unwrap_or_default();
                let Some(unit) = (hex.len() == 4 && hex.iter().all(u8::is_ascii_hexdigit))
                    .then(|| u32::from_str_radix(text, 16).ok())
                    .flatten()
                else {
                    return Err(Defect::Syntax("`\\u` without four hex digits", at));
                };
                let by_letter = matches!(unit, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d);
                if unit >= 0x20 || by_letter || hex.iter().any(u8::is_ascii_uppercase) {
                    return Err(Defect::NotCanonical(
                        "a `\\u` escape the canonical form does not use",
                        at,
                    ));
                }
                self.at += 6;
                Ok(())
            }
            _ => Err(Defect::Syntax("an unknown escape in a string", at)),
        }
    }

    /// A number in JSON's grammar, printed exactly as the canonical writer prints the value a
    /// parser reads from it.
    fn number(&mut self) -> Result<(), Defect> {
        let start = self.at;
        let digits = |c: &mut Self| {
            let from = c.at;
            while c.bytes.get(c.at).is_some_and(u8::is_ascii_digit) {
                c.at += 1;
            }
            c.at > from
        };
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        match self.bytes.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(Defect::Syntax("a number without digits", start)),
        }
        let integer_end = self.at;
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if !digits(self) {
                return Err(Defect::Syntax("a number with no digit after `.`", start));
            }
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !digits(self) {
                return Err(Defect::Syntax(
                    "a number with no digit in its exponent",
                    start,
                ));
            }
        }
        let token = self.bytes.get(start..self.at).unwrap_or_default();
        // Integers of up to 15 digits are below 2^53 and print as themselves: no leading zero
        // (the grammar above allows none but `0`) and no `-0`. That is nearly every number in a
        // record; the rest are parsed and printed again.
        let magnitude = integer_end - start - usize::from(negative);
        if integer_end == self.at && magnitude <= 15 && token != b"-0" {
            return Ok(());
        }
        let number: serde_json::Number = serde_json::from_slice(token)
            .map_err(|_| Defect::Syntax("a number out of range", start))?;
        self.number.clear();
        if write_number(&mut self.number, &number).is_err() || self.number != token {
            return Err(Defect::NotCanonical(
                "a number not written the canonical way",
                start,
            ));
        }
        Ok(())
    }

    /// A string literal's bytes between its quotes.
    fn inner(&self, l: Literal) -> &'a [u8] {
        self.bytes.get(l.start + 1..l.end - 1).unwrap_or_default()
    }

    /// The order of two keys' texts (RFC 8785: by UTF-16 code units), as the writer orders
    /// them; each key comes with whether it is plain (`is_plain_key`).
    fn key_order(&self, (a, a_plain): (Literal, bool), (b, b_plain): (Literal, bool)) -> Ordering {
        if a_plain && b_plain {
            let (a, b) = (self.inner(a), self.inner(b));
            // Most neighbouring keys differ in their first byte: settled without a call.
            return match a.first().cmp(&b.first()) {
                Ordering::Equal => a.cmp(b),
                first => first,
            };
        }
        let literal = |l: Literal| self.bytes.get(l.start..l.end).unwrap_or_default();
        literal_order(literal(a), literal(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> bool {
        check(json.as_bytes(), |_, _| {}, None).is_ok()
    }

    #[test]
    fn canonical_texts_pass() {
        for json in [
            "{}",
            "[]",
            "0",
            "-1",
            "1.5",
            "1e+21",
            "1e-7",
            "123456789012345",
            "9007199254740992",
            r#""a\"\\\b\t\n\f\r\u0000\u001f é 😀""#,
            r#"{"a":1,"b":[true,false,null],"c":{"":"x"}}"#,
            // U+E000 sorts after U+1F600 in UTF-16 (0xE000 > 0xD83D), before it in UTF-8.
            "{\"\u{1f600}\":1,\"\u{e000}\":2}",
            r#"{"\"":1,"a":2}"#,
            // Escaped keys are ordered by their text: U+0001 before U+0008, U+000A before U+000B.
            r#"{"\u0001":1,"\b":2}"#,
            r#"{"\n":1,"\u000b":2}"#,
        ] {
            assert!(ok(json), "{json}");
        }
    }

    #[test]
    fn every_other_way_of_writing_the_same_value_fails() {
        for json in [
            " {}",
            "{} ",
            "{ }",
            r#"{"a": 1}"#,
            r#"{"a":1 ,"b":2}"#,
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            "{\"\u{e000}\":1,\"\u{1f600}\":2}",
            r#"{"\b":1,"\u0001":2}"#,
            r#"{"\u000b":1,"\n":2}"#,
            r#""\u0041""#,
            r#""\u000a""#,
            r#""\u001F""#,
            r#""\/""#,
            "1.0",
            "1E+21",
            "1e21",
            "-0",
            "0.10",
            "100000000000000000000000",
            "9007199254740993",
        ] {
            assert!(
                matches!(
                    check(json.as_bytes(), |_, _| {}, None),
                    Err(Defect::NotCanonical(..))
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn what_is_not_json_is_a_syntax_defect() {
        for json in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "01",
            "1.",
            "-",
            "1e",
            "\"\\x\"",
            "\"\u{1}\"",
            "tru",
            "{1:2}",
            "\"abc",
            "\"\\u12\"",
        ] {
            assert!(
                matches!(
                    check(json.as_bytes(), |_, _| {}, None),
                    Err(Defect::Syntax(..))
                ),
                "{json}"
            );
        }
        assert!(matches!(
            check(b"\"\xff\"", |_, _| {}, None),
            Err(Defect::Syntax(..))
        ));
    }

    #[test]
    fn nesting_stops_where_serde_json_stops() {
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        for n in [126, 127, 128, 129] {
            let parses = serde_json::from_str::<serde_json::Value>(&nested(n)).is_ok();
            assert_eq!(ok(&nested(n)), parses, "{n} levels");
        }
    }

    #[test]
    fn top_members_are_visited_in_order_with_their_value_bytes() {
        let mut seen = Vec::new();
        check(
            br#"{"a":[1,{"x":2}],"b":"c"}"#,
            |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
            },
            None,
        )
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (b"\"a\"".to_vec(), b"[1,{\"x\":2}]".to_vec()),
                (b"\"b\"".to_vec(), b"\"c\"".to_vec()),
            ]
        );
    }

    /// Only the members of objects that are top members' values: not those of objects in
    /// arrays, nor deeper ones.
    #[test]
    fn second_members_are_those_of_top_members_that_are_objects() {
        let mut top = Vec::new();
        let mut second = Vec::new();
        let mut record_second = |k: &[u8], v: &[u8]| second.push((k.to_vec(), v.to_vec()));
        check(
            br#"{"a":[{"no":1}],"b":{"c":{"d":2},"e":"f"},"g":{}}"#,
            |k, _| top.push(k.to_vec()),
            Some(&mut record_second),
        )
        .unwrap();
        assert_eq!(top, [&b"\"a\""[..], b"\"b\"", b"\"g\""]);
        assert_eq!(
            second,
            vec![
                (b"\"c\"".to_vec(), b"{\"d\":2}".to_vec()),
                (b"\"e\"".to_vec(), b"\"f\"".to_vec()),
            ]
        );
    }
}
