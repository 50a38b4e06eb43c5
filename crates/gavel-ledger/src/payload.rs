//! Payload capture crypto: prompts and outputs are sealed with
//! XChaCha20-Poly1305 under a per-subject key. Records hold only hashes of
//! payloads, so destroying a subject's key (crypto-shredding) makes its
//! payloads unreadable without touching a single ledger leaf.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;

const NONCE_LEN: usize = 24;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError(pub String);

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "payload crypto: {}", self.0)
    }
}

impl std::error::Error for PayloadError {}

/// A per-subject 256-bit key.
#[derive(Clone, PartialEq, Eq)]
pub struct PayloadKey([u8; 32]);

impl fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PayloadKey(..)")
    }
}

impl PayloadKey {
    pub fn generate() -> Result<PayloadKey, PayloadError> {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k).map_err(|e| PayloadError(e.to_string()))?;
        Ok(PayloadKey(k))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<PayloadKey, PayloadError> {
        let k: [u8; 32] = bytes
            .try_into()
            .map_err(|_| PayloadError("key must be 32 bytes".into()))?;
        Ok(PayloadKey(k))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Encrypts `plaintext`, binding it to `context` (e.g. record id and part)
    /// so a ciphertext cannot be moved to another record. Output is
    /// nonce || ciphertext; the random 192-bit nonce makes reuse negligible.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PayloadError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| PayloadError(e.to_string()))?;
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .map_err(|_| PayloadError("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`PayloadKey::seal`] produced with the same context.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, PayloadError> {
        if sealed.len() < NONCE_LEN {
            return Err(PayloadError("sealed payload too short".into()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context,
                },
            )
            .map_err(|_| PayloadError("wrong key, context or corrupted payload".into()))
    }
}

/// Hex SHA-256 of a payload: what a record stores instead of the payload.
pub fn payload_hash(plaintext: &[u8]) -> String {
    Sha256::digest(plaintext)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = PayloadKey::generate().unwrap();
        let sealed = k.seal(b"rec-1/input", b"hello").unwrap();
        assert_eq!(k.open(b"rec-1/input", &sealed).unwrap(), b"hello");
        assert!(k.open(b"rec-2/input", &sealed).is_err());
        assert!(PayloadKey::generate()
            .unwrap()
            .open(b"rec-1/input", &sealed)
            .is_err());
        assert!(k.open(b"rec-1/input", &sealed[..10]).is_err());
        assert_eq!(
            payload_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
