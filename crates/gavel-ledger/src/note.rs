//! C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, and
//! C2SP tlog checkpoints (https://c2sp.org/tlog-checkpoint) carried in them.

use crate::merkle::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;

/// Signature algorithm byte for Ed25519 in the signed-note key formats.
const ALG_ED25519: u8 = 0x01;
/// Extension line carrying the checkpoint sequence number. Consecutive
/// checkpoints have consecutive numbers, so a deleted or replayed checkpoint
/// shows as a gap or a repeat.
const SEQ_PREFIX: &str = "gavel-seq ";
/// Extension line carrying the signer's clock (ms since the Unix epoch).
const TIME_PREFIX: &str = "gavel-time ";

/// Why a key, note or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoteError {
    BadKey(String),
    Malformed(String),
    /// No signature line by the verifier's name and key id.
    NotSigned,
    /// A signature line by this key exists but does not verify.
    BadSignature,
    Random(String),
}

impl fmt::Display for NoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoteError::BadKey(e) => write!(f, "bad key: {e}"),
            NoteError::Malformed(e) => write!(f, "malformed note: {e}"),
            NoteError::NotSigned => f.write_str("note carries no signature by the expected key"),
            NoteError::BadSignature => f.write_str("signature does not verify"),
            NoteError::Random(e) => write!(f, "no randomness for key generation: {e}"),
        }
    }
}

impl std::error::Error for NoteError {}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('+')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Key id per the signed-note spec: the first four bytes, big-endian, of
/// SHA-256(name || "\n" || 0x01 || public key).
fn key_id(name: &str, public: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Splits `name+hhhhhhhh+base64` and checks the key id.
fn parse_key_parts<'a>(s: &'a str, what: &str) -> Result<(&'a str, u32, Vec<u8>), NoteError> {
    let mut parts = s.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::BadKey(format!("{what} is not name+keyid+key")));
    };
    if !valid_name(name)
        || id.len() != 8
        || !id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(NoteError::BadKey(format!(
            "{what} has a bad name or key id"
        )));
    }
    let id = u32::from_str_radix(id, 16).map_err(|e| NoteError::BadKey(e.to_string()))?;
    let key = B64
        .decode(key)
        .map_err(|e| NoteError::BadKey(e.to_string()))?;
    Ok((name, id, key))
}

/// An Ed25519 note signer. Its text form is the Go `golang.org/x/mod/sumdb/note`
/// private key format, `PRIVATE+KEY+<name>+<keyid>+<base64(0x01 || seed)>`.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    id: u32,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the seed.
        write!(f, "NoteSigner({}+{:08x})", self.name, self.id)
    }
}

impl NoteSigner {
    /// A fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<NoteSigner, NoteError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| NoteError::Random(e.to_string()))?;
        NoteSigner::from_seed(name, &seed)
    }

    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<NoteSigner, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::BadKey(format!("invalid key name {name:?}")));
        }
        let key = SigningKey::from_bytes(seed);
        let id = key_id(name, &key.verifying_key());
        Ok(NoteSigner {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// Parses the `PRIVATE+KEY+...` text form.
    pub fn from_private_key(s: &str) -> Result<NoteSigner, NoteError> {
        let rest = s
            .trim_end()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::BadKey("missing PRIVATE+KEY+ prefix".into()))?;
        let (name, id, key) = parse_key_parts(rest, "private key")?;
        let seed: [u8; 32] = match key.split_first() {
            Some((&ALG_ED25519, seed)) => seed
                .try_into()
                .map_err(|_| NoteError::BadKey("Ed25519 seed must be 32 bytes".into()))?,
            _ => return Err(NoteError::BadKey("unsupported key algorithm".into())),
        };
        let signer = NoteSigner::from_seed(name, &seed)?;
        if signer.id != id {
            return Err(NoteError::BadKey("key id does not match key".into()));
        }
        Ok(signer)
    }

    /// The `PRIVATE+KEY+...` text form (secret: store owner-only).
    pub fn to_private_key(&self) -> String {
        let mut bytes = vec![ALG_ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            B64.encode(bytes)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            id: self.id,
        }
    }

    /// Signs `text` (which must end in a newline) and returns the signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        Ok(format!(
            "{text}\n\u{2014} {} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("text must end with a newline".into()));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed(
            "text contains control characters".into(),
        ));
    }
    Ok(())
}

/// A note verifier key, text form `<name>+<keyid>+<base64(0x01 || pubkey)>`
/// (what `gavel audit pubkey` prints and third parties pin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
    id: u32,
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = vec![ALG_ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(bytes))
    }
}

impl NoteVerifier {
    pub fn parse(s: &str) -> Result<NoteVerifier, NoteError> {
        let (name, id, key) = parse_key_parts(s.trim(), "verifier key")?;
        let public: [u8; 32] = match key.split_first() {
            Some((&ALG_ED25519, k)) => k
                .try_into()
                .map_err(|_| NoteError::BadKey("Ed25519 public key must be 32 bytes".into()))?,
            _ => return Err(NoteError::BadKey("unsupported key algorithm".into())),
        };
        let key =
            VerifyingKey::from_bytes(&public).map_err(|e| NoteError::BadKey(e.to_string()))?;
        if key_id(name, &key) != id {
            return Err(NoteError::BadKey("key id does not match key".into()));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            key,
            id,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// Checks a signed note and returns its text (with trailing newline).
    /// Signature lines by other keys are allowed and ignored (co-signers,
    /// witnesses); one valid signature by this key is required.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before signatures".into()))?;
        let text = &note[..split + 1];
        let sigs = &note[split + 2..];
        check_text(text)?;
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature block must end with a newline".into(),
            ));
        }
        let mut found = false;
        for line in sigs.lines() {
            let rest = line.strip_prefix("\u{2014} ").ok_or_else(|| {
                NoteError::Malformed("signature line must start with an em dash".into())
            })?;
            let (name, b64) = rest.split_once(' ').ok_or_else(|| {
                NoteError::Malformed("signature line needs name and signature".into())
            })?;
            if !valid_name(name) {
                return Err(NoteError::Malformed("bad signer name".into()));
            }
            let blob = B64
                .decode(b64)
                .map_err(|e| NoteError::Malformed(e.to_string()))?;
            if blob.len() < 5 {
                return Err(NoteError::Malformed("signature too short".into()));
            }
            let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
            if name != self.name || id != self.id {
                continue;
            }
            let sig = Signature::from_slice(&blob[4..]).map_err(|_| NoteError::BadSignature)?;
            self.key
                .verify_strict(text.as_bytes(), &sig)
                .map_err(|_| NoteError::BadSignature)?;
            found = true;
        }
        if found {
            Ok(text)
        } else {
            Err(NoteError::NotSigned)
        }
    }
}

/// A tlog checkpoint body: origin, tree size, root hash, plus two extension
/// lines of our own (sequence number and signer time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// 1 for the first checkpoint of a ledger, then +1 each.
    pub seq: u64,
    pub at_ms: i64,
}

impl Checkpoint {
    /// The note text (C2SP tlog-checkpoint body).
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n{SEQ_PREFIX}{}\n{TIME_PREFIX}{}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.seq,
            self.at_ms
        )
    }

    /// Parses note text produced by [`Checkpoint::to_text`].
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |m: &str| NoteError::Malformed(format!("checkpoint: {m}"));
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("missing final newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root, seq, at] = lines.as_slice() else {
            return Err(bad("expected origin, size, root, seq and time lines"));
        };
        if origin.is_empty() {
            return Err(bad("empty origin"));
        }
        let size = parse_decimal(size).ok_or_else(|| bad("size is not a decimal integer"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("root is not a base64 SHA-256 hash"))?;
        let seq = seq
            .strip_prefix(SEQ_PREFIX)
            .and_then(parse_decimal)
            .ok_or_else(|| bad("missing sequence line"))?;
        let at_ms = at
            .strip_prefix(TIME_PREFIX)
            .and_then(parse_decimal)
            .and_then(|t| i64::try_from(t).ok())
            .ok_or_else(|| bad("missing time line"))?;
        Ok(Checkpoint {
            origin: (*origin).to_owned(),
            size,
            root,
            seq,
            at_ms,
        })
    }

    /// Signs the checkpoint, returning the signed note.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, NoteError> {
        signer.sign(&self.to_text())
    }

    /// Verifies a signed checkpoint note and parses it. The origin must be the
    /// verifier's key name: one key per log.
    pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Checkpoint, NoteError> {
        let cp = Checkpoint::parse(verifier.open(note)?)?;
        if cp.origin != verifier.name() {
            return Err(NoteError::Malformed(format!(
                "checkpoint origin {:?} is not the key name {:?}",
                cp.origin,
                verifier.name()
            )));
        }
        Ok(cp)
    }
}

/// Decimal without sign, leading zeros or spaces (tlog-checkpoint's rule).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from golang.org/x/mod sumdb/note/note_test.go (TestNewSigner,
    // TestSign, TestOpen), the reference implementation of C2SP signed-note.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const GO_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const GO_ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    #[test]
    fn go_reference_keys_and_signature() {
        let signer = NoteSigner::from_private_key(GO_SKEY).unwrap();
        assert_eq!(signer.to_private_key(), GO_SKEY);
        assert_eq!(signer.verifier().to_string(), GO_VKEY);
        let signed = signer.sign(GO_TEXT).unwrap();
        assert_eq!(signed, format!("{GO_TEXT}\n{GO_SIG}"));
        let v = NoteVerifier::parse(GO_VKEY).unwrap();
        assert_eq!(v.open(&signed).unwrap(), GO_TEXT);
        // A co-signature by an unknown key is ignored.
        assert_eq!(
            v.open(&format!("{GO_TEXT}\n{GO_SIG}{GO_ENOCH_SIG}"))
                .unwrap(),
            GO_TEXT
        );
        assert_eq!(
            v.open(&format!("{GO_TEXT}\n{GO_ENOCH_SIG}")),
            Err(NoteError::NotSigned)
        );
    }

    #[test]
    fn tampered_notes_and_keys_are_refused() {
        let v = NoteVerifier::parse(GO_VKEY).unwrap();
        let good = format!("{GO_TEXT}\n{GO_SIG}");
        assert_eq!(
            v.open(&good.replace("cryptography", "cryptographY")),
            Err(NoteError::BadSignature)
        );
        assert!(v.open(GO_TEXT).is_err());
        assert!(v.open(&good[..good.len() - 1]).is_err());
        let mut b = GO_VKEY.as_bytes().to_vec();
        for i in 0..b.len() {
            b[i] = b[i].wrapping_add(1);
            if let Ok(s) = std::str::from_utf8(&b) {
                assert!(NoteVerifier::parse(s).is_err(), "mangled key accepted: {s}");
            }
            b[i] = b[i].wrapping_sub(1);
        }
    }

    #[test]
    fn checkpoint_round_trip_and_origin_binding() {
        let signer = NoteSigner::from_seed("gavel.test/log", &[7u8; 32]).unwrap();
        let cp = Checkpoint {
            origin: "gavel.test/log".into(),
            size: 42,
            root: [9u8; 32],
            seq: 3,
            at_ms: 1_700_000_000_123,
        };
        let note = cp.sign(&signer).unwrap();
        assert!(note.starts_with(
            "gavel.test/log\n42\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\ngavel-seq 3\n"
        ));
        assert_eq!(Checkpoint::open(&note, &signer.verifier()).unwrap(), cp);
        let other = NoteSigner::from_seed("gavel.test/log", &[8u8; 32]).unwrap();
        assert_eq!(
            Checkpoint::open(&note, &other.verifier()),
            Err(NoteError::NotSigned)
        );
        let wrong_origin = Checkpoint {
            origin: "elsewhere".into(),
            ..cp
        };
        assert!(
            Checkpoint::open(&wrong_origin.sign(&signer).unwrap(), &signer.verifier()).is_err()
        );
        assert!(Checkpoint::parse(
            "o\n042\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\ngavel-seq 1\ngavel-time 0\n"
        )
        .is_err());
    }
}
