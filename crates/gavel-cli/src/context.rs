//! What every command needs: where the contract and database are, who is calling, the time
//! and fresh ids.

use std::path::{Path, PathBuf};

use gavel_contract::time::Timestamp;
use gavel_contract::{Contract, Deployment, Loaded, UseCase};
use gavel_store::{hash_key, KeyRecord, Role, SqliteStore, Store};

use crate::cli::Global;
use crate::failure::Failure;

pub struct Context {
    pub contract_path: PathBuf,
    pub db_path: PathBuf,
    db_given: bool,
    key: Option<String>,
}

impl Context {
    pub fn new(global: &Global) -> Context {
        Context {
            db_path: global
                .db
                .clone()
                .unwrap_or_else(|| default_db(&global.contract)),
            contract_path: global.contract.clone(),
            db_given: global.db.is_some(),
            key: global.key.clone(),
        }
    }

    /// The same caller, looking at another contract (and its database, unless --db was given).
    pub fn with_contract(&self, contract: &Path) -> Context {
        Context {
            contract_path: contract.to_path_buf(),
            db_path: if self.db_given {
                self.db_path.clone()
            } else {
                default_db(contract)
            },
            db_given: self.db_given,
            key: self.key.clone(),
        }
    }

    /// The caller's API key, for a command that presents it to a gateway.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub fn load_contract(&self) -> Result<Loaded, Failure> {
        load_contract_at(&self.contract_path)
    }

    /// The contract in force: the version most recently applied, loaded from the files it was
    /// applied with, whatever the contract file says now. What reports on what governs
    /// (`explain`, `card`, `status`) read: an edited file that nobody applied governs nothing.
    pub fn contract_in_force(&self, store: &dyn Store) -> Result<Contract, Failure> {
        let Some((record, snapshot)) = store.latest_contract()? else {
            return Err(Failure::invalid(
                "no contract has been applied yet, so nothing governs; an operator must run `gavel apply`",
            ));
        };
        snapshot.load().map(|loaded| loaded.contract).map_err(|e| {
            Failure::storage(format!(
                "the contract in force (version {}) no longer loads from the files it was applied with: {e}",
                gavel_contract::short_hash(&record.version)
            ))
        })
    }

    /// Why the contract on disk is not the one in force, if it is not: only the most recently
    /// applied version governs (a caller cannot pick an older or an unapplied file).
    pub fn not_in_force(
        &self,
        store: &dyn Store,
        version: &str,
    ) -> Result<Option<String>, Failure> {
        Ok(match store.latest_contract()? {
            None => Some("no contract has been applied yet; an operator must run `gavel apply`".to_string()),
            Some((latest, _)) if latest.version != version => Some(format!(
                "the contract file is version {}, but the version in force is {} (applied by {}); run `gavel apply` to make this file the one in force",
                gavel_contract::short_hash(version),
                gavel_contract::short_hash(&latest.version),
                latest.applied_by
            )),
            Some(_) => None,
        })
    }

    pub fn store(&self) -> Result<SqliteStore, Failure> {
        Ok(SqliteStore::open_existing(&self.db_path)?)
    }

    /// The caller's key record, if the key is valid and its role is one of `allowed`.
    pub fn authenticate(
        &self,
        store: &dyn Store,
        allowed: &[Role],
        action: &str,
    ) -> Result<KeyRecord, Failure> {
        authenticate(store, self.key.as_deref(), allowed, action)
    }
}

/// The key's record, if the key is valid and its role is one of `allowed`; `action` names what
/// the caller is doing, for the refusal.
pub fn authenticate(
    store: &dyn Store,
    key: Option<&str>,
    allowed: &[Role],
    action: &str,
) -> Result<KeyRecord, Failure> {
    let record = known_key(store, key, action)?;
    role_allowed(&record, allowed, action)?;
    Ok(record)
}

/// The record of an active key (any role).
pub fn known_key(store: &dyn Store, key: Option<&str>, action: &str) -> Result<KeyRecord, Failure> {
    let key = key.filter(|k| !k.is_empty()).ok_or_else(|| {
        Failure::auth(format!(
            "{action} needs an API key; set GAVEL_KEY or pass --key"
        ))
    })?;
    active_key(store, &hash_key(key))
}

/// The record of the active key whose hash is `hash` (any role).
pub fn active_key(store: &dyn Store, hash: &str) -> Result<KeyRecord, Failure> {
    let record = store.key_by_hash(hash)?.ok_or_else(|| {
        Failure::auth("this API key is not known; check GAVEL_KEY or ask an admin for a key")
    })?;
    if record.revoked_at.is_some() {
        return Err(Failure::auth(format!(
            "key {} of `{}` was revoked; ask an admin for a new one",
            record.id, record.principal
        )));
    }
    Ok(record)
}

/// Refuses a key whose role is not one of `allowed`.
pub fn role_allowed(record: &KeyRecord, allowed: &[Role], action: &str) -> Result<(), Failure> {
    if allowed.contains(&record.role) {
        return Ok(());
    }
    let roles: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    Err(Failure::auth(format!(
        "`{}` has role {}; {action} needs role {}",
        record.principal,
        record.role,
        roles.join(" or ")
    )))
}

/// `gavel.db` next to the contract file.
fn default_db(contract: &Path) -> PathBuf {
    gavel_contract::contract_file(contract)
        .parent()
        .map_or_else(|| PathBuf::from("gavel.db"), |dir| dir.join("gavel.db"))
}

/// The deployment `id` names, or the sentence that says the contract has none.
pub fn known_deployment<'c>(contract: &'c Contract, id: &str) -> Result<&'c Deployment, Failure> {
    contract.deployment(id).ok_or_else(|| {
        Failure::invalid(format!(
            "deployment `{id}` is not in the contract; see `gavel check`"
        ))
    })
}

/// The deployment `id` names and its use case.
pub fn deployment_and_use_case<'c>(
    contract: &'c Contract,
    id: &str,
) -> Result<(&'c Deployment, &'c UseCase), Failure> {
    let d = known_deployment(contract, id)?;
    // A validated contract has no dangling use case; said plainly all the same.
    let use_case = contract
        .use_case_of(d)
        .ok_or_else(|| Failure::invalid(format!("deployment `{id}` has no use case")))?;
    Ok((d, use_case))
}

pub fn load_contract_at(path: &Path) -> Result<Loaded, Failure> {
    gavel_contract::load(path).map_err(|errors| Failure::invalid(errors.to_string()))
}

pub fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Timestamp(i64::try_from(millis).unwrap_or(i64::MAX))
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], Failure> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| Failure::storage(format!("the system has no randomness to offer ({e})")))?;
    Ok(bytes)
}

/// A fresh time-ordered id such as `dec_01J...`.
pub fn new_id(prefix: &str) -> Result<String, Failure> {
    Ok(gavel_engine::new_id(prefix, now(), random_bytes()?))
}

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::invalid(format!("cannot print JSON: {e}")))?;
    emit(&text)
}

/// Writes one line to standard output. A closed pipe (`gavel decide | head -1`) ends the
/// command with an error instead of a panic.
pub fn emit(line: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::storage(format!("cannot write to standard output ({e})")))
}

/// Writes a diagnostic line to standard error; if even that is closed there is no one to tell.
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `println!` that fails instead of panicking; use inside functions returning `Result<_, Failure>`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::context::emit(&format!($($arg)*))?
    };
}

/// `eprintln!` that never panics.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::context::note(&format!($($arg)*))
    };
}

pub(crate) use {diag, out};
