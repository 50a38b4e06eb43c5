//! Secret detectors: vendor key formats anchored on their literal prefixes, private key blocks,
//! JWTs, credentials in URLs, and high-entropy values assigned to secret-looking names.

use base64::Engine as _;

use crate::detect::{at, is_word, run_end, Anchor, Sink};
use crate::{Finding, FindingKind};

/// Index into [`PREFIX_RULES`].
pub(crate) type Prefix = u16;

/// Characters a key body may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    UpperDigit,
    Alnum,
    AlnumDashUnderscore,
    Base64Padded,
    SlackToken,
    WebhookPath,
}

impl Class {
    fn contains(self, c: u8) -> bool {
        match self {
            Class::UpperDigit => c.is_ascii_uppercase() || c.is_ascii_digit(),
            Class::Alnum => c.is_ascii_alphanumeric(),
            Class::AlnumDashUnderscore => c.is_ascii_alphanumeric() || c == b'-' || c == b'_',
            Class::Base64Padded => c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='),
            Class::SlackToken => c.is_ascii_alphanumeric() || c == b'-',
            Class::WebhookPath => c.is_ascii_alphanumeric() || c == b'/',
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Body {
    /// The prefix is followed by `min..=max` bytes of the class, then a byte outside it.
    Run {
        class: Class,
        min: usize,
        max: usize,
        /// The span covers only the body (the prefix is a parameter name, not the secret).
        body_only: bool,
    },
    AzureClientSecret,
    PrivateKey,
    Jwt,
    SendGrid,
    UrlCredentials,
}

#[derive(Debug, Clone, Copy)]
struct PrefixRule {
    literal: &'static str,
    rule_id: &'static str,
    body: Body,
    confidence: f32,
}

const fn run(class: Class, min: usize, max: usize) -> Body {
    Body::Run {
        class,
        min,
        max,
        body_only: false,
    }
}

const fn rule(
    literal: &'static str,
    rule_id: &'static str,
    body: Body,
    confidence: f32,
) -> PrefixRule {
    PrefixRule {
        literal,
        rule_id,
        body,
        confidence,
    }
}

use Class::*;

const AWS: &str = "secret.aws_access_key_id";
const GITHUB: &str = "secret.github_token";
const GITLAB: &str = "secret.gitlab_token";
const SLACK: &str = "secret.slack_token";
const STRIPE: &str = "secret.stripe_key";
const OPENAI: &str = "secret.openai_api_key";

static PREFIX_RULES: &[PrefixRule] = &[
    rule("AKIA", AWS, run(UpperDigit, 16, 16), 0.95),
    rule("ASIA", AWS, run(UpperDigit, 16, 16), 0.95),
    rule("ABIA", AWS, run(UpperDigit, 16, 16), 0.9),
    rule("ACCA", AWS, run(UpperDigit, 16, 16), 0.9),
    rule(
        "AIza",
        "secret.gcp_api_key",
        run(AlnumDashUnderscore, 35, 35),
        0.95,
    ),
    rule(
        "GOCSPX-",
        "secret.gcp_oauth_client_secret",
        run(AlnumDashUnderscore, 28, 28),
        0.95,
    ),
    rule("ghp_", GITHUB, run(Alnum, 36, 36), 0.95),
    rule("gho_", GITHUB, run(Alnum, 36, 36), 0.95),
    rule("ghu_", GITHUB, run(Alnum, 36, 36), 0.95),
    rule("ghs_", GITHUB, run(Alnum, 36, 36), 0.95),
    rule("ghr_", GITHUB, run(Alnum, 36, 36), 0.95),
    rule(
        "github_pat_",
        GITHUB,
        run(AlnumDashUnderscore, 70, 100),
        0.95,
    ),
    rule("glpat-", GITLAB, run(AlnumDashUnderscore, 20, 64), 0.95),
    rule("glrt-", GITLAB, run(AlnumDashUnderscore, 20, 64), 0.9),
    rule("gldt-", GITLAB, run(AlnumDashUnderscore, 20, 64), 0.9),
    rule("glptt-", GITLAB, run(AlnumDashUnderscore, 20, 64), 0.9),
    rule("xoxb-", SLACK, run(SlackToken, 20, 250), 0.95),
    rule("xoxp-", SLACK, run(SlackToken, 20, 250), 0.95),
    rule("xoxa-", SLACK, run(SlackToken, 20, 250), 0.95),
    rule("xoxr-", SLACK, run(SlackToken, 20, 250), 0.95),
    rule("xoxs-", SLACK, run(SlackToken, 20, 250), 0.95),
    rule("xoxe-", SLACK, run(SlackToken, 20, 250), 0.9),
    rule(
        "hooks.slack.com/services/",
        "secret.slack_webhook",
        run(WebhookPath, 40, 80),
        0.95,
    ),
    rule("sk_live_", STRIPE, run(Alnum, 20, 247), 0.95),
    rule("rk_live_", STRIPE, run(Alnum, 20, 247), 0.95),
    rule("sk_test_", STRIPE, run(Alnum, 20, 247), 0.7),
    rule("rk_test_", STRIPE, run(Alnum, 20, 247), 0.7),
    rule("sk-proj-", OPENAI, run(AlnumDashUnderscore, 40, 300), 0.95),
    rule(
        "sk-svcacct-",
        OPENAI,
        run(AlnumDashUnderscore, 40, 300),
        0.95,
    ),
    rule("sk-admin-", OPENAI, run(AlnumDashUnderscore, 40, 300), 0.95),
    rule("sk-", OPENAI, run(Alnum, 48, 48), 0.85),
    rule(
        "sk-ant-",
        "secret.anthropic_api_key",
        run(AlnumDashUnderscore, 32, 300),
        0.95,
    ),
    rule("hf_", "secret.huggingface_token", run(Alnum, 34, 34), 0.85),
    rule("npm_", "secret.npm_token", run(Alnum, 36, 36), 0.85),
    rule("SG.", "secret.sendgrid_api_key", Body::SendGrid, 0.95),
    rule(
        "AccountKey=",
        "secret.azure_storage_key",
        Body::Run {
            class: Base64Padded,
            min: 80,
            max: 100,
            body_only: true,
        },
        0.95,
    ),
    rule(
        "SharedAccessKey=",
        "secret.azure_shared_access_key",
        Body::Run {
            class: Base64Padded,
            min: 40,
            max: 60,
            body_only: true,
        },
        0.9,
    ),
    rule(
        "Q~",
        "secret.azure_client_secret",
        Body::AzureClientSecret,
        0.85,
    ),
    rule("-----BEGIN ", "secret.private_key", Body::PrivateKey, 0.99),
    rule("eyJ", "secret.jwt", Body::Jwt, 0.95),
    rule("://", "secret.url_credentials", Body::UrlCredentials, 0.85),
];

/// Anchor literals for the automaton, with their prefix index. `Q~` is left out: a two-byte
/// pattern would disable the automaton's SIMD prefilter, so it is found with `memchr` instead.
pub(crate) fn prefixes() -> impl Iterator<Item = (&'static str, Anchor)> {
    PREFIX_RULES
        .iter()
        .enumerate()
        .filter(|(_, r)| !matches!(r.body, Body::AzureClientSecret))
        .map(|(i, r)| (r.literal, Anchor::Secret(i as Prefix)))
}

/// The rule anchored on `Q~`.
pub(crate) fn tilde_rule() -> Option<Prefix> {
    PREFIX_RULES
        .iter()
        .position(|r| matches!(r.body, Body::AzureClientSecret))
        .and_then(|i| Prefix::try_from(i).ok())
}

/// What a keyword anchor introduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeywordKind {
    Password,
    ApiKey,
    Bearer,
}

pub(crate) static KEYWORDS: &[(&str, KeywordKind)] = &[
    ("password", KeywordKind::Password),
    ("passwd", KeywordKind::Password),
    ("pwd", KeywordKind::Password),
    ("secret", KeywordKind::ApiKey),
    ("api_key", KeywordKind::ApiKey),
    ("apikey", KeywordKind::ApiKey),
    ("api-key", KeywordKind::ApiKey),
    ("access_key", KeywordKind::ApiKey),
    ("auth_token", KeywordKind::ApiKey),
    ("access_token", KeywordKind::ApiKey),
    ("token", KeywordKind::ApiKey),
    ("private_key", KeywordKind::ApiKey),
    // camelCase spellings (the automaton is case-sensitive; see `detect`)
    ("apiKey", KeywordKind::ApiKey),
    ("accessKey", KeywordKind::ApiKey),
    ("authToken", KeywordKind::ApiKey),
    ("accessToken", KeywordKind::ApiKey),
    ("privateKey", KeywordKind::ApiKey),
    ("bearer", KeywordKind::Bearer),
];

/// Vendor prefixes that the specific rules report; the generic assignment rule leaves them alone.
fn has_vendor_prefix(value: &[u8]) -> bool {
    PREFIX_RULES
        .iter()
        .filter(|r| {
            matches!(
                r.body,
                Body::Run {
                    body_only: false,
                    ..
                } | Body::Jwt
                    | Body::SendGrid
            )
        })
        .any(|r| value.starts_with(r.literal.as_bytes()))
        || value.get(4..6) == Some(b"Q~")
}

fn secret(rule_id: &'static str, start: usize, end: usize, confidence: f32) -> Finding {
    Finding {
        kind: FindingKind::Secret,
        rule_id,
        span: start..end,
        confidence,
    }
}

pub(crate) fn on_prefix(b: &[u8], start: usize, end: usize, prefix: Prefix, sink: &mut Sink<'_>) {
    let Some(rule) = PREFIX_RULES.get(usize::from(prefix)) else {
        return;
    };
    match rule.body {
        Body::Run {
            class,
            min,
            max,
            body_only,
        } => {
            // A token glued to a longer word (`xAKIA...`) is some other identifier.
            if !body_only
                && at(b, start.wrapping_sub(1)).is_some_and(|c| c.is_ascii_alphanumeric())
                && start > 0
            {
                return;
            }
            let body_end = run_end(b, end, max + 1, |c| class.contains(c));
            if sink.hit_end(body_end, b.len(), start) {
                return;
            }
            let len = body_end - end;
            if len < min || len > max {
                return;
            }
            if at(b, body_end).is_some_and(|c| is_word(c) && !class.contains(c)) {
                return;
            }
            if rule.literal == "sk-" && !mixed_alnum(b.get(end..body_end).unwrap_or_default()) {
                return;
            }
            let span_start = if body_only { end } else { start };
            sink.push(secret(rule.rule_id, span_start, body_end, rule.confidence));
        }
        Body::AzureClientSecret => azure_client_secret(b, start, end, rule, sink),
        Body::PrivateKey => private_key(b, start, end, rule, sink),
        Body::Jwt => jwt(b, start, rule, sink),
        Body::SendGrid => sendgrid(b, start, end, rule, sink),
        Body::UrlCredentials => url_credentials(b, start, end, rule, sink),
    }
}

/// Random keys mix letters and digits; `sk-` followed by an English compound word does not.
fn mixed_alnum(v: &[u8]) -> bool {
    v.iter().any(u8::is_ascii_digit) && v.iter().any(u8::is_ascii_alphabetic)
}

fn azure_client_secret(b: &[u8], q: usize, q_end: usize, rule: &PrefixRule, sink: &mut Sink<'_>) {
    // `[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}`
    let class = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'~' | b'.');
    let Some(start) = q.checked_sub(4) else {
        return;
    };
    let head_ok = b
        .get(start..q - 1)
        .is_some_and(|h| h.iter().all(|&c| class(c)))
        && at(b, q - 1).is_some_and(|c| c.is_ascii_digit())
        && !at(b, start.wrapping_sub(1)).is_some_and(class);
    if !head_ok {
        return;
    }
    let body_end = run_end(b, q_end, 35, |c| class(c) || c == b'-');
    if sink.hit_end(body_end, b.len(), start) {
        return;
    }
    if (31..=34).contains(&(body_end - q_end)) {
        sink.push(secret(rule.rule_id, start, body_end, rule.confidence));
    }
}

/// The longest private key block searched for its END line; without one, the key material that
/// follows the header is reported up to this distance.
const MAX_KEY_BLOCK: usize = 16 * 1024;

/// Where the key material after a private key header stops when no END line follows (a key
/// cut short, as by an answer's token limit): over base64 lines, their indentation and the
/// armor headers of encrypted PEM and OpenPGP blocks (`Proc-Type: 4,ENCRYPTED`, `Version: …`),
/// to the last byte of a line of them; a blank line after base64 ends it. Line breaks may be
/// written as JSON escapes (`\n`), as in a cloud service account's key file.
fn key_material_end(b: &[u8], from: usize, limit: usize) -> usize {
    let is_base64 = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=');
    let (mut i, mut last, mut line_start, mut seen_base64) = (from, from, true, false);
    while let Some(&c) = b.get(i).filter(|_| i < limit) {
        // An escaped line break counts as the break it stands for.
        let (c, width) = match (c, b.get(i + 1)) {
            (b'\\', Some(b'n')) => (b'\n', 2),
            (b'\\', Some(b'r')) => (b'\r', 2),
            _ => (c, 1),
        };
        match c {
            b'\n' if line_start && seen_base64 => return last,
            b'\n' => {
                line_start = true;
                i += width;
            }
            b'\r' => i += width,
            b' ' | b'\t' if line_start => i += 1,
            _ if line_start && is_armor_header(b, i, limit) => {
                // To its line's end, a `\n` escape's included.
                i = run_end(b, i, limit - i, |c| c != b'\n' && c != b'\\');
                last = i;
                line_start = false;
            }
            _ if is_base64(c) => {
                i += 1;
                last = i;
                line_start = false;
                seen_base64 = true;
            }
            _ => return last,
        }
    }
    last
}

/// A `Name: value` header line of a PEM or OpenPGP armor (RFC 1421, RFC 4880 6.2) at `from`,
/// read no further than `limit` (so that a stream, which decides once it holds `limit` bytes,
/// reads it as the whole text does).
fn is_armor_header(b: &[u8], from: usize, limit: usize) -> bool {
    let name_end = run_end(b, from, 32, |c| c.is_ascii_alphanumeric() || c == b'-');
    at(b, from).is_some_and(|c| c.is_ascii_alphabetic())
        && name_end + 2 <= limit
        && b.get(name_end..name_end + 2) == Some(b": ")
}

fn private_key(b: &[u8], start: usize, end: usize, rule: &PrefixRule, sink: &mut Sink<'_>) {
    // `-----BEGIN [A-Z0-9 ]{0,30}PRIVATE KEY( BLOCK)?-----`
    let label_end = run_end(b, end, 48, |c| {
        c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' '
    });
    if sink.hit_end(label_end + 5, b.len(), start) {
        return;
    }
    let label = b.get(end..label_end).unwrap_or_default();
    let is_private = label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK");
    if !is_private || b.get(label_end..label_end + 5) != Some(b"-----") {
        return;
    }
    let header_end = label_end + 5;
    let window_end = (header_end + MAX_KEY_BLOCK).min(b.len());
    let window = b.get(header_end..window_end).unwrap_or_default();
    match memchr::memmem::find(window, b"-----END ") {
        Some(i) => {
            let footer = header_end + i + 9;
            let close = run_end(b, footer, 48, |c| c != b'-' && c != b'\n');
            if sink.hit_end(close + 5, b.len(), start) {
                return;
            }
            let mut stop = close;
            while stop < close + 5 && at(b, stop) == Some(b'-') {
                stop += 1;
            }
            sink.push(secret(rule.rule_id, start, stop, rule.confidence));
        }
        None => {
            // The END line may still come; once it cannot, the material is what is found.
            if window_end < header_end + MAX_KEY_BLOCK && sink.hit_end(window_end, b.len(), start) {
                return;
            }
            let stop = key_material_end(b, header_end, window_end);
            sink.push(secret(rule.rule_id, start, stop, rule.confidence));
        }
    }
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

fn jwt(b: &[u8], start: usize, rule: &PrefixRule, sink: &mut Sink<'_>) {
    if start > 0 && at(b, start - 1).is_some_and(is_b64url) {
        return;
    }
    let header_end = run_end(b, start, 1025, is_b64url);
    if sink.hit_end(header_end + 4, b.len(), start) {
        return;
    }
    if at(b, header_end) != Some(b'.') || b.get(header_end + 1..header_end + 4) != Some(b"eyJ") {
        return;
    }
    let payload_end = run_end(b, header_end + 1, 16 * 1024, is_b64url);
    if sink.hit_end(payload_end + 1, b.len(), start) {
        return;
    }
    if at(b, payload_end) != Some(b'.') || payload_end - header_end < 8 {
        return;
    }
    let sig_end = run_end(b, payload_end + 1, 2048, is_b64url);
    if sink.hit_end(sig_end, b.len(), start) {
        return;
    }
    // The header must decode to a JOSE header; `eyJ` alone is just base64 of `{"`.
    let header = b.get(start..header_end).unwrap_or_default();
    let mut buf = [0u8; 768];
    let Ok(n) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(header, &mut buf)
    else {
        return;
    };
    let decoded = buf.get(..n).unwrap_or_default();
    if memchr::memmem::find(decoded, b"\"alg\"").is_some() {
        sink.push(secret(rule.rule_id, start, sig_end, rule.confidence));
    }
}

fn sendgrid(b: &[u8], start: usize, end: usize, rule: &PrefixRule, sink: &mut Sink<'_>) {
    if start > 0 && at(b, start - 1).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return;
    }
    let first = run_end(b, end, 23, is_b64url);
    if sink.hit_end(first + 1, b.len(), start) {
        return;
    }
    if first - end != 22 || at(b, first) != Some(b'.') {
        return;
    }
    let second = run_end(b, first + 1, 44, is_b64url);
    if sink.hit_end(second, b.len(), start) {
        return;
    }
    if second - first - 1 == 43 {
        sink.push(secret(rule.rule_id, start, second, rule.confidence));
    }
}

fn url_credentials(b: &[u8], start: usize, end: usize, rule: &PrefixRule, sink: &mut Sink<'_>) {
    // scheme://user:password@host — the span is the password.
    if !(start > 0 && at(b, start - 1).is_some_and(|c| c.is_ascii_alphanumeric())) {
        return;
    }
    let userinfo =
        |c: u8| !c.is_ascii_whitespace() && !matches!(c, b'/' | b'@' | b'"' | b'\'' | b'<' | b'>');
    let user_end = run_end(b, end, 65, |c| userinfo(c) && c != b':');
    if sink.hit_end(user_end, b.len(), start) {
        return;
    }
    if at(b, user_end) != Some(b':') || user_end == end {
        return;
    }
    let pass_start = user_end + 1;
    let pass_end = run_end(b, pass_start, 129, userinfo);
    if sink.hit_end(pass_end, b.len(), start) {
        return;
    }
    if at(b, pass_end) != Some(b'@') || pass_end - pass_start < 3 || pass_end - pass_start > 128 {
        return;
    }
    let pass = b.get(pass_start..pass_end).unwrap_or_default();
    if is_placeholder(pass) || pass.iter().all(u8::is_ascii_digit) {
        return;
    }
    sink.push(secret(rule.rule_id, pass_start, pass_end, rule.confidence));
}

/// Longest identifier tail after a keyword (`password_hash`, `token_v2`).
const MAX_NAME_TAIL: usize = 24;
/// Longest value considered for a generic assignment.
const MAX_VALUE: usize = 256;

pub(crate) fn on_keyword(
    b: &[u8],
    start: usize,
    end: usize,
    kind: KeywordKind,
    sink: &mut Sink<'_>,
) {
    // The keyword must begin a name component: `db_password`, `dbPassword`, `"token"`, not
    // `stopwatch` for `pwd` or `tokenizer`'s middle.
    if let Some(prev) = start.checked_sub(1).and_then(|p| at(b, p)) {
        let first = at(b, start).unwrap_or(b'a');
        let camel = prev.is_ascii_lowercase() && first.is_ascii_uppercase();
        if prev.is_ascii_alphanumeric() && !camel {
            return;
        }
    }
    match kind {
        KeywordKind::Bearer => bearer(b, start, end, sink),
        KeywordKind::Password | KeywordKind::ApiKey => assignment(b, start, end, kind, sink),
    }
}

fn bearer(b: &[u8], start: usize, end: usize, sink: &mut Sink<'_>) {
    let sp = run_end(b, end, 4, |c| c == b' ' || c == b'\t');
    if sink.hit_end(sp, b.len(), start) {
        return;
    }
    if sp == end {
        return;
    }
    let token =
        |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
    let tok_end = run_end(b, sp, 4097, token);
    let tok_end = run_end(b, tok_end, 2, |c| c == b'=');
    if sink.hit_end(tok_end, b.len(), start) {
        return;
    }
    let value = b.get(sp..tok_end).unwrap_or_default();
    if value.len() < 16 || value.len() > 4096 || has_vendor_prefix(value) || is_placeholder(value) {
        return;
    }
    if class_count(value) < 2 || !value.iter().any(u8::is_ascii_digit) || entropy(value) < 3.0 {
        return;
    }
    sink.push(secret("secret.bearer_token", sp, tok_end, 0.9));
}

fn assignment(b: &[u8], start: usize, end: usize, kind: KeywordKind, sink: &mut Sink<'_>) {
    let len = b.len();
    let name_end = run_end(b, end, MAX_NAME_TAIL + 1, |c| {
        is_word(c) || c == b'-' || c == b'.'
    });
    if name_end - end > MAX_NAME_TAIL {
        return;
    }
    let mut i = name_end;
    if matches!(at(b, i), Some(b'"' | b'\'')) {
        i += 1;
    }
    i = run_end(b, i, 4, |c| c == b' ' || c == b'\t');
    // Separator: `=`, `:`, `:=`, `=>`; `==` is a comparison, not an assignment.
    if sink.hit_end(i + 2, len, start) {
        return;
    }
    match (at(b, i), at(b, i + 1)) {
        (Some(b'='), Some(b'=')) => return,
        (Some(b':'), Some(b'=')) | (Some(b'='), Some(b'>')) => i += 2,
        (Some(b'=' | b':'), _) => i += 1,
        _ => return,
    }
    i = run_end(b, i, 4, |c| c == b' ' || c == b'\t');
    if sink.hit_end(i + 1, len, start) {
        return;
    }
    let quote = at(b, i).filter(|c| matches!(c, b'"' | b'\'' | b'`'));
    let (v_start, v_end) = match quote {
        Some(q) => {
            let v_start = i + 1;
            let v_end = run_end(b, v_start, MAX_VALUE + 1, |c| {
                c != q && !c.is_ascii_whitespace()
            });
            if sink.hit_end(v_end, len, start) {
                return;
            }
            if at(b, v_end) != Some(q) {
                return;
            }
            (v_start, v_end)
        }
        None => {
            let value = |c: u8| {
                c.is_ascii_alphanumeric()
                    || matches!(
                        c,
                        b'+' | b'/'
                            | b'='
                            | b'_'
                            | b'~'
                            | b'!'
                            | b'@'
                            | b'#'
                            | b'$'
                            | b'%'
                            | b'^'
                            | b'&'
                            | b'*'
                            | b'-'
                            | b'.'
                    )
            };
            let v_end = run_end(b, i, MAX_VALUE + 1, value);
            if sink.hit_end(v_end + 1, len, start) {
                return;
            }
            // `token = make_token(x)` or `password: str[...]` are code, not values.
            if matches!(at(b, v_end), Some(b'(' | b'[' | b'{')) {
                return;
            }
            (i, v_end)
        }
    };
    let value = b.get(v_start..v_end).unwrap_or_default();
    let min_len = if quote.is_some() { 8 } else { 10 };
    if value.len() < min_len
        || value.len() > MAX_VALUE
        || is_placeholder(value)
        || has_vendor_prefix(value)
    {
        return;
    }
    let classes = class_count(value);
    let needed_entropy = ((value.len() as f32).log2() - 0.5).min(3.0);
    let shaped = if quote.is_some() {
        classes >= 2
    } else {
        classes >= 3 || (classes >= 2 && value.iter().any(u8::is_ascii_digit) && value.len() >= 16)
    };
    if !shaped || entropy(value) < needed_entropy {
        return;
    }
    let name = b
        .get(start.saturating_sub(16)..name_end)
        .unwrap_or_default();
    let aws = memchr::memmem::find(&name.to_ascii_lowercase_array(), b"aws").is_some();
    let (rule_id, confidence) = if aws && value.len() == 40 {
        ("secret.aws_secret_access_key", 0.9)
    } else if kind == KeywordKind::Password {
        (
            "secret.password_assignment",
            if quote.is_some() { 0.8 } else { 0.7 },
        )
    } else {
        (
            "secret.generic_api_key",
            if quote.is_some() { 0.75 } else { 0.65 },
        )
    };
    sink.push(secret(rule_id, v_start, v_end, confidence));
}

/// Lower-cases a short slice into a fixed buffer, so that name checks do not allocate.
trait LowerArray {
    fn to_ascii_lowercase_array(&self) -> LowerBuf;
}

struct LowerBuf {
    buf: [u8; 48],
    len: usize,
}

impl std::ops::Deref for LowerBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl LowerArray for [u8] {
    fn to_ascii_lowercase_array(&self) -> LowerBuf {
        let mut out = LowerBuf {
            buf: [0; 48],
            len: 0,
        };
        for (slot, c) in out.buf.iter_mut().zip(self) {
            *slot = c.to_ascii_lowercase();
            out.len += 1;
        }
        out
    }
}

/// Values that document where a secret goes rather than being one.
fn is_placeholder(v: &[u8]) -> bool {
    const MARKERS: &[&[u8]] = &[
        b"xxxx",
        b"****",
        b"....",
        b"<",
        b">",
        b"${",
        b"{{",
        b"%s",
        b"your",
        b"example",
        b"placeholder",
        b"redacted",
        b"dummy",
        b"sample",
        b"changeme",
        b"here",
        b"process.env",
        b"os.environ",
        b"getenv",
        b"null",
        b"none",
        b"undefined",
        b"secret_key",
        b"api_key",
        b"password",
        b"token",
    ];
    let lower = v.to_ascii_lowercase_array();
    // Long values are only partially lowered; the markers that matter sit at the start anyway.
    MARKERS
        .iter()
        .any(|m| memchr::memmem::find(&lower, m).is_some())
        || v.iter().all(|&c| c == v.first().copied().unwrap_or(0))
}

/// Number of character classes present: lower, upper, digit, other.
fn class_count(v: &[u8]) -> u32 {
    let mut seen = [false; 4];
    for &c in v {
        let i = if c.is_ascii_lowercase() {
            0
        } else if c.is_ascii_uppercase() {
            1
        } else if c.is_ascii_digit() {
            2
        } else {
            3
        };
        if let Some(s) = seen.get_mut(i) {
            *s = true;
        }
    }
    seen.iter().filter(|&&s| s).count() as u32
}

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(v: &[u8]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mut counts = [0u16; 256];
    for &c in v {
        if let Some(n) = counts.get_mut(usize::from(c)) {
            *n = n.saturating_add(1);
        }
    }
    let len = v.len() as f32;
    counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = f32::from(n) / len;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::{ContentRole, ScanConfig, Scanners};

    /// Deterministic pseudo-random characters so that every test key is built here, not copied.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn chars(&mut self, alphabet: &[u8], n: usize) -> String {
            (0..n)
                .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
                .collect()
        }
    }

    const UPPER_DIGIT: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const URLSAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    fn ids(text: &str) -> Vec<(&'static str, String)> {
        let s = Scanners::new(&ScanConfig::default()).unwrap();
        let mut out = Vec::new();
        s.scan(text, ContentRole::Output, &mut out);
        out.iter()
            .filter(|f| f.kind == crate::FindingKind::Secret)
            .map(|f| (f.rule_id, text[f.span.clone()].to_string()))
            .collect()
    }

    /// One realistic fake per rule, embedded in the kind of text it turns up in.
    pub(crate) fn fake_secrets(seed: u64) -> Vec<(&'static str, String, String)> {
        let mut g = Gen(seed | 1);
        let mut v: Vec<(&'static str, String, String)> = Vec::new();
        let mut add = |rule: &'static str, secret: String, wrap: &dyn Fn(&str) -> String| {
            let text = wrap(&secret);
            v.push((rule, secret, text));
        };
        add(
            "secret.aws_access_key_id",
            format!("AKIA{}", g.chars(UPPER_DIGIT, 16)),
            &|s| format!("aws_access_key_id = {s}\n"),
        );
        add("secret.aws_secret_access_key", g.chars(B64, 40), &|s| {
            format!("aws_secret_access_key = {s}\n")
        });
        add(
            "secret.gcp_api_key",
            format!("AIza{}", g.chars(URLSAFE, 35)),
            &|s| format!("const key = \"{s}\";"),
        );
        add(
            "secret.gcp_oauth_client_secret",
            format!("GOCSPX-{}", g.chars(URLSAFE, 28)),
            &|s| format!("\"client_secret\": \"{s}\","),
        );
        add(
            "secret.github_token",
            format!("ghp_{}", g.chars(ALNUM, 36)),
            &|s| format!("git clone https://{s}@github.com/o/r.git"),
        );
        add(
            "secret.github_token",
            format!("github_pat_{}", g.chars(URLSAFE, 82)),
            &|s| format!("GH={s}"),
        );
        add(
            "secret.gitlab_token",
            format!("glpat-{}", g.chars(URLSAFE, 20)),
            &|s| format!("export GITLAB_TOKEN={s}"),
        );
        add(
            "secret.slack_token",
            format!(
                "xoxb-{}-{}-{}",
                g.chars(b"0123456789", 12),
                g.chars(b"0123456789", 13),
                g.chars(ALNUM, 24)
            ),
            &|s| format!("slack: {s}"),
        );
        add(
            "secret.slack_webhook",
            format!(
                "hooks.slack.com/services/T{}/B{}/{}",
                g.chars(UPPER_DIGIT, 8),
                g.chars(UPPER_DIGIT, 10),
                g.chars(ALNUM, 24)
            ),
            &|s| format!("url=https://{s}"),
        );
        add(
            "secret.stripe_key",
            format!("sk_live_{}", g.chars(ALNUM, 24)),
            &|s| format!("Stripe.api_key = '{s}'"),
        );
        add(
            "secret.openai_api_key",
            format!("sk-proj-{}", g.chars(URLSAFE, 120)),
            &|s| format!("OPENAI_API_KEY={s}"),
        );
        add(
            "secret.openai_api_key",
            format!("sk-{}T3BlbkFJ{}", g.chars(ALNUM, 20), g.chars(ALNUM, 20)),
            &|s| format!("openai.api_key = \"{s}\""),
        );
        add(
            "secret.anthropic_api_key",
            format!("sk-ant-api03-{}", g.chars(URLSAFE, 93)),
            &|s| format!("x-api-key: {s}"),
        );
        add(
            "secret.huggingface_token",
            format!(
                "hf_{}{}",
                g.chars(b"abcdefghijklmnop", 17),
                g.chars(b"ABCDEFGHIJKLMNOP", 17)
            ),
            &|s| format!("login(token=\"{s}\")"),
        );
        add(
            "secret.npm_token",
            format!("npm_{}", g.chars(ALNUM, 36)),
            &|s| format!("//registry.npmjs.org/:_authToken={s}"),
        );
        add(
            "secret.sendgrid_api_key",
            format!("SG.{}.{}", g.chars(URLSAFE, 22), g.chars(URLSAFE, 43)),
            &|s| format!("SENDGRID={s}"),
        );
        add(
            "secret.azure_storage_key",
            format!("{}==", g.chars(B64, 86)),
            &|s| {
                format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={s};EndpointSuffix=core.windows.net")
            },
        );
        add(
            "secret.azure_shared_access_key",
            format!("{}=", g.chars(B64, 43)),
            &|s| {
                format!("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={s}")
            },
        );
        add(
            "secret.azure_client_secret",
            format!(
                "{}{}Q~{}",
                g.chars(ALNUM, 3),
                g.chars(b"0123456789", 1),
                g.chars(ALNUM, 34)
            ),
            &|s| format!("AZURE_CLIENT_SECRET: {s}"),
        );
        add(
            "secret.private_key",
            format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{}\n{}\n-----END RSA PRIVATE KEY-----",
                g.chars(B64, 64),
                g.chars(B64, 40)
            ),
            &|s| format!("key:\n{s}\nrest"),
        );
        let header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            b"{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
        );
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            format!("{{\"sub\":\"{}\",\"iat\":1516239022}}", g.chars(ALNUM, 10)),
        );
        add(
            "secret.jwt",
            format!("{header}.{payload}.{}", g.chars(URLSAFE, 43)),
            &|s| format!("cookie session={s}; path=/"),
        );
        add(
            "secret.url_credentials",
            format!("p{}", g.chars(ALNUM, 15)),
            &|s| format!("DATABASE_URL=postgres://app:{s}@db.internal:5432/app"),
        );
        add("secret.bearer_token", g.chars(URLSAFE, 40), &|s| {
            format!("curl -H 'Authorization: Bearer {s}' https://api.example.com")
        });
        add(
            "secret.password_assignment",
            format!("{}!{}", g.chars(ALNUM, 8), g.chars(b"0123456789", 3)),
            &|s| format!("db:\n  password: \"{s}\"\n"),
        );
        add("secret.generic_api_key", g.chars(ALNUM, 32), &|s| {
            format!("{{\"api_key\": \"{s}\"}}")
        });
        v
    }

    #[test]
    fn every_rule_finds_its_fake_secret() {
        for seed in [1, 7, 42, 1234, 99991] {
            for (rule, secret, text) in fake_secrets(seed) {
                let found = ids(&text);
                assert!(
                    found.iter().any(|(r, s)| *r == rule && *s == secret),
                    "{rule} not found exactly in {text:?}: {found:?}"
                );
            }
        }
    }

    #[test]
    fn ordinary_text_and_code_are_not_secrets() {
        let benign = [
            "Set password = get_password() and token = make_token(user) before calling.",
            "the tokenizer splits text into tokens; max_tokens=1000 is enough",
            "password: str = Field(..., min_length=8)",
            "API_KEY=your_api_key_here",
            "if password == \"hunter2hunter2\": deny()",
            "Use the AKIA prefix check in the linter, e.g. AKIAEXAMPLE is too short.",
            "ask-someone-else-about-this-very-long-hyphenated-compound-word-that-goes-on",
            "sk-learnandotherwordsthatlooklikeakeybutarejustaverylongsentence",
            "std::string token; auth_token: Option<String>, api_key: String,",
            "The header eyJhbGciOi is only the start of base64 for {\"alg\".",
            "https://example.com/path?a=1 and ftp://files.example.org",
        ];
        for text in benign {
            assert_eq!(ids(text), Vec::<(&str, String)>::new(), "{text}");
        }
    }

    #[test]
    fn private_key_without_end_reports_the_key_material_after_its_header() {
        let cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAABG5vbmU+/w==";
        assert_eq!(ids(cut), [("secret.private_key", cut.to_string())]);
        // Indented, CRLF lines, encrypted PEM's headers; what follows the material is not in it.
        let pem = "  -----BEGIN RSA PRIVATE KEY-----\r\n  Proc-Type: 4,ENCRYPTED\r\n  DEK-Info: AES-128-CBC,0A1B\r\n\r\n  MIIEowIBAAKCAQEA\r\n  q83jfK+a/Z==";
        for (after, text) in [
            ("", pem.to_string()),
            (" That was the key.", format!("{pem} That was the key.")),
            (
                "\r\n\r\nThat was the key.",
                format!("{pem}\r\n\r\nThat was the key."),
            ),
            ("\n{\"done\": true}", format!("{pem}\n{{\"done\": true}}")),
        ] {
            assert_eq!(
                ids(&text),
                [("secret.private_key", pem.trim_start().to_string())],
                "followed by {after:?}"
            );
        }
        let pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\nlQOYBF8x";
        assert_eq!(ids(pgp), [("secret.private_key", pgp.to_string())]);
        // Escaped in JSON, an armor header ends at its `\n` escape, not at the next real line.
        let escaped = r#"-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\nlQOYBF8x"#;
        let file = format!(r#"{{"key": "{escaped}", "client_email": "bot@corp.example"}}"#);
        assert_eq!(ids(&file), [("secret.private_key", escaped.to_string())]);
        // A service account's key file, cut short: the material is in JSON escapes.
        let escaped = r#"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0BAQEF"#;
        for text in [
            escaped.to_string(),
            format!(r#"{{"private_key": "{escaped}", "x": 1}}"#),
        ] {
            assert_eq!(ids(&text), [("secret.private_key", escaped.to_string())]);
        }
        assert_eq!(
            ids("-----BEGIN EC PRIVATE KEY-----. That is a header."),
            [(
                "secret.private_key",
                "-----BEGIN EC PRIVATE KEY-----".to_string()
            )]
        );
        assert!(ids("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----").is_empty());
    }

    #[test]
    fn jwt_needs_a_jose_header() {
        let fake = "eyJub3QiOiJqb3NlIn0.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl";
        assert!(ids(fake).is_empty());
    }

    #[test]
    fn entropy_of_uniform_and_constant() {
        assert_eq!(super::entropy(b"aaaa"), 0.0);
        assert!((super::entropy(b"abcd") - 2.0).abs() < 1e-6);
    }
}
