//! Payload capture storage: sealed payloads under per-subject keys, and
//! crypto-shredding by deleting a subject's key.

use crate::{Error, SqliteLedgerSink};
use gavel_ledger::payload::PayloadKey;
use rusqlite::{params, OptionalExtension};
use std::time::{SystemTime, UNIX_EPOCH};

fn context(record_id: &str, part: &str) -> Vec<u8> {
    // Binds each ciphertext to its slot; the separator cannot occur in part
    // names we write, and ids are length-prefixed to keep it unambiguous.
    format!("gavel-payload/1\n{}:{record_id}\n{part}", record_id.len()).into_bytes()
}

impl SqliteLedgerSink {
    /// Encrypts and stores a payload (e.g. part "input" or "output") of
    /// record `record_id` under `subject`'s key, creating the key if needed.
    pub fn store_payload(
        &self,
        subject: &str,
        record_id: &str,
        part: &str,
        plaintext: &[u8],
    ) -> Result<(), Error> {
        let fresh = PayloadKey::generate().map_err(Error::Payload)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO ledger_payload_keys (subject, key, created_ms) VALUES (?1, ?2, ?3)",
            params![subject, &fresh.as_bytes()[..], now],
        )?;
        let key: Vec<u8> = conn.query_row(
            "SELECT key FROM ledger_payload_keys WHERE subject = ?1",
            params![subject],
            |r| r.get(0),
        )?;
        let key = PayloadKey::from_bytes(&key).map_err(Error::Payload)?;
        let sealed = key
            .seal(&context(record_id, part), plaintext)
            .map_err(Error::Payload)?;
        conn.execute(
            "INSERT INTO ledger_payloads (record_id, part, subject, sealed) VALUES (?1, ?2, ?3, ?4)",
            params![record_id, part, subject, sealed],
        )?;
        Ok(())
    }

    /// Decrypts a stored payload. None when there is none or its subject was
    /// forgotten.
    pub fn load_payload(&self, record_id: &str, part: &str) -> Result<Option<Vec<u8>>, Error> {
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> = self
            .conn()
            .query_row(
                "SELECT p.sealed, k.key FROM ledger_payloads p LEFT JOIN ledger_payload_keys k ON k.subject = p.subject
                 WHERE p.record_id = ?1 AND p.part = ?2",
                params![record_id, part],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((sealed, Some(key))) = row else {
            return Ok(None);
        };
        let key = PayloadKey::from_bytes(&key).map_err(Error::Payload)?;
        key.open(&context(record_id, part), &sealed)
            .map(Some)
            .map_err(Error::Payload)
    }

    /// Crypto-shreds `subject`: deletes its key (and its now unreadable
    /// ciphertexts) and checkpoints the WAL so the old pages leave the log
    /// file too. Ledger records are untouched and still verify: they hold
    /// only payload hashes. Returns whether a key existed.
    pub fn forget(&self, subject: &str) -> Result<bool, Error> {
        let conn = self.conn();
        let existed = conn.execute(
            "DELETE FROM ledger_payload_keys WHERE subject = ?1",
            params![subject],
        )? > 0;
        conn.execute(
            "DELETE FROM ledger_payloads WHERE subject = ?1",
            params![subject],
        )?;
        // Best effort: readers holding old snapshots can keep WAL frames alive
        // until they finish; secure_delete zeroes the freed database pages.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(existed)
    }
}
