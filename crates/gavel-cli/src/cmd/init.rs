//! `gavel init [DIR]`: the example contract, a database, and the first admin key.

use std::path::Path;

use gavel_ledger::RecordKind;
use gavel_store::{hash_key, KeyRecord, Role, SqliteStore, Store};
use serde_json::json;

use crate::context::{diag, out};
use crate::context::{new_id, now, random_bytes};
use crate::failure::{Failure, Outcome};
use crate::ledger::{self, Ledger};

pub fn run(dir: &Path) -> Outcome {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::invalid(format!("cannot create `{}` ({e})", dir.display())))?;
    let db_path = dir.join("gavel.db");
    if db_path.exists() {
        return Err(Failure::invalid(format!(
            "`{}` already exists; this folder is initialised (use another folder, or ask an admin for a key)",
            db_path.display()
        )));
    }
    gavel_contract::example::write_to(dir).map_err(|e| Failure::invalid(e.to_string()))?;
    let organization = gavel_contract::load(dir)
        .map_err(|e| Failure::invalid(e.to_string()))?
        .contract
        .organization;
    let store = SqliteStore::open(&db_path)?;
    ledger::create_key(&db_path, &organization)?;
    let ledger = Ledger::open(&db_path)?;
    let key = create_key(&store, &ledger, "admin", Role::Admin, None, "gavel init")?;
    ledger.close()?;
    out!("{key}");
    diag!(
        "wrote the example contract to {}/gavel.yaml and created {}\n\
         the line above is the first admin key (principal `admin`); it is shown once, store it now:\n  export GAVEL_KEY=<that key>\n\
         next: `gavel check`, then `gavel keys create` for operators, approvers and services",
        dir.display(),
        db_path.display()
    );
    Ok(())
}

/// Creates a key, records its creation in the ledger, and returns it; only its hash is stored.
pub fn create_key(
    store: &dyn Store,
    ledger: &Ledger,
    principal: &str,
    role: Role,
    approver_role: Option<String>,
    created_by: &str,
) -> Result<String, Failure> {
    crate::ledger::without_secret("the key's principal", principal)?;
    let key = format!("gvl_{}", hex::encode(random_bytes::<32>()?));
    let record = KeyRecord {
        id: new_id("key")?,
        hash: hash_key(&key),
        principal: principal.to_string(),
        role,
        approver_role,
        created_at: now(),
        created_by: created_by.to_string(),
        revoked_at: None,
    };
    let body = ledger::change(
        created_by,
        "key_created",
        json!({ "key_id": record.id, "key_principal": record.principal, "role": role.as_str(), "approver_role": record.approver_role }),
    );
    ledger.record(RecordKind::KeyCreated, record.created_at, &record.id, body)?;
    store.insert_key(&record)?;
    Ok(key)
}
