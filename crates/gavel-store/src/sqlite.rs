//! The embedded backend: one SQLite file in WAL mode.
//!
//! Writes that must be atomic across processes (budget reservations, idempotency claims) run
//! in `BEGIN IMMEDIATE` transactions, which take SQLite's write lock up front, so two `gavel`
//! processes (or threads) can never both see room in a window and both take it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use gavel_ledger_sqlite::{immediate, savepoint};

use gavel_contract::time::Timestamp;
use gavel_contract::Snapshot;
use gavel_engine::approval::Registration;
use gavel_engine::*;

use crate::keys::{KeyRecord, Role};
use crate::{ContractRecord, PruneBefore, Rollup, Store, StoreError, StoredBaseline};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, principal TEXT NOT NULL, role TEXT NOT NULL,
    approver_role TEXT, created_at INTEGER NOT NULL, created_by TEXT NOT NULL, revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS contract_versions (
    version TEXT PRIMARY KEY, applied_by TEXT NOT NULL, applied_at INTEGER NOT NULL,
    contract_name TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS contract_files (
    version TEXT NOT NULL, path TEXT NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY (version, path));
CREATE TABLE IF NOT EXISTS registrations (
    deployment TEXT PRIMARY KEY, binding TEXT NOT NULL, changed_by TEXT NOT NULL, changed_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, deployment TEXT NOT NULL, created_at INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS approvals_by_deployment ON approvals (deployment);
CREATE TABLE IF NOT EXISTS kills (scope TEXT PRIMARY KEY, until INTEGER, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cooldowns (
    id INTEGER PRIMARY KEY, scope TEXT NOT NULL, until INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS cooldowns_by_scope ON cooldowns (scope, until);
CREATE TABLE IF NOT EXISTS reservation_resources (
    reservation_id TEXT NOT NULL, name TEXT NOT NULL, amount INTEGER NOT NULL, expires_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS resources_by_name ON reservation_resources (name, expires_at);
CREATE TABLE IF NOT EXISTS strikes (principal TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS strikes_by_principal ON strikes (principal, at);
CREATE TABLE IF NOT EXISTS breaches (deployment TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS report_claims (key TEXT PRIMARY KEY, by_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rollups (
    start_ms INTEGER NOT NULL, deployment TEXT NOT NULL, writer TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (start_ms, deployment, writer));
CREATE TABLE IF NOT EXISTS baselines (
    approval_id TEXT PRIMARY KEY, deployment TEXT NOT NULL, recorded_at INTEGER NOT NULL,
    recorded_by TEXT NOT NULL, source TEXT NOT NULL, body TEXT NOT NULL);
";

/// Tables the governance view and key lookups read. Every change to them, by any connection of
/// any process, bumps `generation` (by trigger, so no write path can forget it); a reader that
/// sees the generation it last loaded knows its copy is current.
const WATCHED_TABLES: [&str; 5] = ["kills", "cooldowns", "approvals", "breaches", "api_keys"];

/// A table a decision writes to, keyed by text.
struct KeyedTable {
    name: &'static str,
    columns: &'static str,
    definition: &'static str,
}

/// The tables a decision writes to, keyed by text. Each is kept `WITHOUT ROWID`: in one b-tree,
/// where a rowid table with a text primary key is two (its rows, and an index of its key), so
/// a decision's commit writes one page fewer for each of them (docs/gateway.md, "Pages written
/// per request").
const KEYED_TABLES: [KeyedTable; 3] = [
    KeyedTable {
        name: "idempotency",
        columns: "key, decision_id, expires_at",
        definition: "key TEXT PRIMARY KEY, decision_id TEXT NOT NULL, expires_at INTEGER NOT NULL",
    },
    // `resets_at`: when the window ends (NULL for one that never does, a run's), so that
    // ended windows can be pruned (`prune_expired`). Rows from before it have none and stay.
    KeyedTable {
        name: "budget_windows",
        columns: "key, tokens, usd_micros, requests, tool_calls",
        definition: "key TEXT PRIMARY KEY, tokens INTEGER NOT NULL, usd_micros INTEGER NOT NULL,
            requests INTEGER NOT NULL, tool_calls INTEGER NOT NULL, resets_at INTEGER",
    },
    KeyedTable {
        name: "reservations",
        columns: "id, expires_at, windows",
        definition: "id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, windows TEXT NOT NULL",
    },
];

fn keyed_schema() -> String {
    KEYED_TABLES
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE IF NOT EXISTS {} ({}) WITHOUT ROWID;",
                t.name, t.definition
            )
        })
        .collect()
}

/// The tables [`Store::prune_expired`] deletes from, each with its key, the column that says
/// when a row ends, and whether it is cut at [`PruneBefore::unsettled_ms`] rather than
/// [`PruneBefore::ended_ms`].
const EXPIRING: [(&str, &str, &str, bool); 5] = [
    ("budget_windows", "key", "resets_at", false),
    ("idempotency", "key", "expires_at", false),
    ("cooldowns", "id", "until", false),
    ("reservations", "id", "expires_at", true),
    ("reservation_resources", "rowid", "expires_at", true),
];

/// An index on each of those end columns, so that a prune finds what ended without reading the
/// table: a decision's commit writes one page more for its reservation (the index's newest
/// leaf), and one for an idempotency key. Created after the keyed tables are rebuilt, since a
/// rebuild drops a table's indexes.
fn expiry_indexes() -> String {
    EXPIRING
        .iter()
        .map(|(table, _, end, _)| {
            format!("CREATE INDEX IF NOT EXISTS {table}_by_{end} ON {table} ({end});")
        })
        .collect()
}

/// Deletes at most ?2 rows of `table` that ended before ?1. A NULL end (a window that never
/// ends) is never before anything.
fn prune_statement(table: &str, key: &str, end: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {end} < ?1 LIMIT ?2)"
    )
}

/// Rows deleted per transaction: each takes the write lock anew, so that decisions wait behind
/// at most this many deletes.
const PRUNE_DELETES_PER_TRANSACTION: i64 = 250;

/// Databases made before the keyed tables were `WITHOUT ROWID` have them as rowid tables: each
/// is rebuilt once, its rows kept, in one transaction that holds the write lock while it copies
/// (nothing pruned idempotency keys or past budget windows before, so a busy gateway's tables
/// can be large: about two seconds per million rows, docs/gateway.md).
fn rebuild_keyed_tables(conn: &Connection) -> rusqlite::Result<()> {
    let with_rowid = |c: &Connection, table: &str| -> rusqlite::Result<bool> {
        let without_rowid: Option<bool> = c
            .query_row(
                "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()?;
        Ok(without_rowid == Some(false))
    };
    for t in &KEYED_TABLES {
        if !with_rowid(conn, t.name)? {
            continue;
        }
        immediate(conn, |tx| {
            // Another process may have rebuilt it while this one waited for the write lock.
            if with_rowid(tx, t.name)? {
                let (name, columns, definition) = (t.name, t.columns, t.definition);
                tx.execute_batch(&format!(
                    "CREATE TABLE {name}_keyed ({definition}) WITHOUT ROWID;
                     INSERT INTO {name}_keyed ({columns}) SELECT {columns} FROM {name};
                     DROP TABLE {name};
                     ALTER TABLE {name}_keyed RENAME TO {name};"
                ))?;
            }
            Ok::<_, rusqlite::Error>(())
        })?;
    }
    Ok(())
}

/// Columns added after their tables were first made: a window's end (made `WITHOUT ROWID`
/// before windows had one, for a few hours of commits on 2026-11-24), and whether a cooldown's
/// end is in the ledger.
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in [
        ("budget_windows", "resets_at", "INTEGER"),
        ("cooldowns", "end_recorded", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        let has = |c: &Connection| {
            c.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
                .exists([table, column])
        };
        if !has(conn)? {
            immediate(conn, |tx| {
                // Another process may have added it while this one waited for the write lock.
                if !has(tx)? {
                    tx.execute_batch(&format!(
                        "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                    ))?;
                }
                Ok::<_, rusqlite::Error>(())
            })?;
        }
    }
    Ok(())
}

fn generation_schema() -> String {
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
         INSERT OR IGNORE INTO generation (id, n) VALUES (0, 0);",
    );
    for table in WATCHED_TABLES {
        for op in ["insert", "update", "delete"] {
            sql.push_str(&format!(
                "CREATE TRIGGER IF NOT EXISTS {table}_{op}_bumps AFTER {op} ON {table}
                 BEGIN UPDATE generation SET n = n + 1 WHERE id = 0; END;"
            ));
        }
    }
    sql
}

/// Governance state as of one generation: kills, cooldowns, approvals, breaches and keys.
/// Loaded whole when the generation moves, so a decision reads one integer, not five tables.
struct Governance {
    generation: i64,
    /// Kills and cooldowns that had ended by this time were left out.
    loaded_at: Timestamp,
    kills: Vec<Kill>,
    cooldowns: Vec<Cooldown>,
    /// By deployment, oldest first.
    approvals: HashMap<String, Vec<Approval>>,
    breaches: HashMap<String, Breach>,
    /// By key hash.
    keys: HashMap<String, KeyRecord>,
}

/// How far a commit is made durable before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: survives power loss (SQLite `synchronous=FULL`).
    EveryCommit,
    /// No fsync per commit in WAL mode: a commit survives the process being killed, but the
    /// last moments may be lost on power loss or an OS crash (`synchronous=NORMAL`). For the
    /// gateway's hot counters (budgets, idempotency keys), whose decisions the ledger records
    /// durably anyway.
    ProcessCrash,
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Taken before `conn` by every use of it, and held by a [`Batch`] for its whole life (a
    /// batch locks `conn` itself call by call: a held `Connection` guard cannot be shared with
    /// the engine, which wants `Sync` state). So nothing else writes into a batch's
    /// transaction, and nothing waits on `conn` while a batch is open except on this lock.
    writer: Mutex<()>,
    /// A second connection, only for reads of governance: the copy's generation check, its
    /// reload and key lookups run without waiting for `conn`, which a budget transaction may
    /// hold while it waits for the ledger's write lock. Authenticating a request (on the
    /// gateway's async workers) and a decision's view then never queue behind another
    /// decision's writes.
    watch: Mutex<Connection>,
    governance: Mutex<Option<Arc<Governance>>>,
}

fn locked<T>(conn: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreError> {
    conn.lock()
        .map_err(|_| StoreError("the database handle is poisoned by an earlier panic".into()))
}

/// The store's connection, held for one call (see `SqliteStore::writer`).
struct Held<'a> {
    conn: MutexGuard<'a, Connection>,
    _writer: MutexGuard<'a, ()>,
}

impl std::ops::Deref for Held<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError(format!("the database refused a transaction: {e}"))
    }
}

fn err(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{context}: {e}"))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError(format!("cannot encode a record: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError(format!("a stored record is corrupt: {e}")))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let connect = || {
            Connection::open(path).map_err(|e| {
                StoreError(format!(
                    "cannot open the database `{}`: {e}",
                    path.display()
                ))
            })
        };
        Self::init(connect()?, connect()?, &path.display().to_string())
    }

    /// Opens an existing database, refusing to create one (for read-only commands).
    pub fn open_existing(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError(format!(
                "no database at `{}`; create one with `gavel init` or pass --db",
                path.display()
            )));
        }
        Self::open(path)
    }

    /// Changes how far each commit is made durable (every connection starts at
    /// [`Durability::EveryCommit`]).
    pub fn set_durability(&self, durability: Durability) -> Result<(), StoreError> {
        let level = match durability {
            Durability::EveryCommit => "FULL",
            Durability::ProcessCrash => "NORMAL",
        };
        self.conn()?
            .pragma_update(None, "synchronous", level)
            .map_err(err("synchronous"))
    }

    /// Stops this connection's commits from checkpointing the WAL, for a process that runs a
    /// `gavel_ledger_sqlite::WalCheckpointer` (a checkpoint inside a budget commit made the
    /// decision waiting on it several milliseconds late).
    pub fn hand_checkpoints_to_background(&self) -> Result<(), StoreError> {
        self.conn()?
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(err("wal_autocheckpoint"))
    }

    fn init(conn: Connection, watch: Connection, name: &str) -> Result<SqliteStore, StoreError> {
        for c in [&conn, &watch] {
            c.busy_handler(Some(gavel_ledger_sqlite::wait_for_writer))
                .map_err(err("busy handler"))?;
        }
        // Every statement stays prepared: re-parsing SQL was a visible share of a decision.
        conn.set_prepared_statement_cache_capacity(128);
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("WAL mode"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("synchronous"))?;
        conn.execute_batch(SCHEMA)
            .and_then(|()| conn.execute_batch(&keyed_schema()))
            .and_then(|()| rebuild_keyed_tables(&conn))
            .and_then(|()| add_missing_columns(&conn))
            .and_then(|()| conn.execute_batch(&expiry_indexes()))
            .and_then(|()| conn.execute_batch(&generation_schema()))
            .map_err(|e| StoreError(format!("cannot create the schema in `{name}`: {e}")))?;
        let version: Option<String> = conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'schema_version'")
            .map_err(err("statement"))?
            .query_row([], |r| r.get(0))
            .optional()
            .map_err(err("schema version"))?;
        match version {
            None => {
                conn.prepare_cached("INSERT INTO meta (key, value) VALUES ('schema_version', ?1)")
                    .map_err(err("statement"))?
                    .execute([SCHEMA_VERSION.to_string()])
                    .map_err(err("schema version"))?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(StoreError(format!(
                    "`{name}` has schema version {v}; this gavel understands {SCHEMA_VERSION}"
                )))
            }
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            writer: Mutex::new(()),
            watch: Mutex::new(watch),
            governance: Mutex::new(None),
        })
    }

    /// The `writer` lock. It guards nothing but the order of access, so a panic that poisoned
    /// it leaves nothing inconsistent behind: taken regardless.
    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn conn(&self) -> Result<Held<'_>, StoreError> {
        let writer = self.writer();
        Ok(Held {
            conn: locked(&self.conn)?,
            _writer: writer,
        })
    }

    fn watch(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        locked(&self.watch)
    }

    fn approvals_where(&self, deployment: Option<&str>) -> Result<Vec<Approval>, StoreError> {
        bodies(&*self.conn()?, APPROVALS_SQL, [deployment])
    }

    /// The governance state as of the latest committed change: the cached copy while the
    /// generation has not moved, else everything read again in one read transaction. `now`
    /// is when kills and cooldowns are to be judged (None: the caller reads neither).
    fn governance(&self, now: Option<Timestamp>) -> Result<Arc<Governance>, StoreError> {
        let mut conn = self.watch()?;
        if let Some(governance) = self.current_copy(&conn, now)? {
            return Ok(governance);
        }
        let loaded_at = now.unwrap_or(Timestamp(i64::MIN));
        let tx = conn.transaction().map_err(err("governance"))?;
        let mut approvals: HashMap<String, Vec<Approval>> = HashMap::new();
        for approval in bodies::<Approval, _>(&tx, APPROVALS_SQL, [None::<&str>])? {
            approvals
                .entry(approval.deployment.clone())
                .or_default()
                .push(approval);
        }
        let keys = {
            let mut stmt = tx
                .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys"))
                .map_err(err("keys"))?;
            let rows = stmt.query_map([], key_from_row).map_err(err("keys"))?;
            rows.map(|r| with_role(r.map_err(err("keys"))?).map(|k| (k.hash.clone(), k)))
                .collect::<Result<HashMap<_, _>, _>>()?
        };
        let governance = Arc::new(Governance {
            generation: current_generation(&tx)?,
            loaded_at,
            kills: bodies(&tx, KILLS_SQL, [loaded_at.millis()])?,
            cooldowns: bodies(&tx, COOLDOWNS_SQL, [loaded_at.millis()])?,
            approvals,
            breaches: bodies::<Breach, _>(&tx, BREACHES_SQL, [])?
                .into_iter()
                .map(|b| (b.deployment.clone(), b))
                .collect(),
            keys,
        });
        tx.commit().map_err(err("governance"))?;
        *self.cache()? = Some(governance.clone());
        Ok(governance)
    }

    /// The cached copy if no watched table changed since it was read (and, for `now`, if it
    /// was not read for a later moment).
    fn current_copy(
        &self,
        conn: &Connection,
        now: Option<Timestamp>,
    ) -> Result<Option<Arc<Governance>>, StoreError> {
        let generation = current_generation(conn)?;
        Ok(self
            .cache()?
            .as_ref()
            .filter(|g| g.generation == generation && now.is_none_or(|now| now >= g.loaded_at))
            .cloned())
    }

    fn cache(&self) -> Result<MutexGuard<'_, Option<Arc<Governance>>>, StoreError> {
        self.governance
            .lock()
            .map_err(|_| StoreError("the governance cache is poisoned by an earlier panic".into()))
    }
}

const APPROVALS_SQL: &str =
    "SELECT body FROM approvals WHERE (?1 IS NULL OR deployment = ?1) ORDER BY created_at, id";
const KILLS_SQL: &str = "SELECT body FROM kills WHERE until IS NULL OR until > ?1 ORDER BY scope";
const COOLDOWNS_SQL: &str = "SELECT body FROM cooldowns WHERE until > ?1 ORDER BY id";
const BREACHES_SQL: &str = "SELECT body FROM breaches ORDER BY deployment";

fn current_generation(conn: &Connection) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT n FROM generation WHERE id = 0")
        .map_err(err("statement"))?
        .query_row([], |r| r.get(0))
        .map_err(err("generation"))
}

/// Every row of a one-column query of JSON bodies, decoded.
fn bodies<T: serde::de::DeserializeOwned, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(err("statement"))?;
    let rows = stmt
        .query_map(params, |r| r.get::<_, String>(0))
        .map_err(err("query"))?;
    rows.map(|r| from_json(&r.map_err(err("query"))?)).collect()
}

fn contract_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ContractRecord> {
    Ok(ContractRecord {
        version: r.get(0)?,
        applied_by: r.get(1)?,
        at: Timestamp(r.get(2)?),
    })
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(KeyRecord, String)> {
    let role: String = row.get(3)?;
    Ok((
        KeyRecord {
            id: row.get(0)?,
            hash: row.get(1)?,
            principal: row.get(2)?,
            role: Role::Service,
            approver_role: row.get(4)?,
            created_at: Timestamp(row.get(5)?),
            created_by: row.get(6)?,
            revoked_at: row.get::<_, Option<i64>>(7)?.map(Timestamp),
        },
        role,
    ))
}

fn with_role((mut key, role): (KeyRecord, String)) -> Result<KeyRecord, StoreError> {
    key.role = Role::parse(&role)
        .ok_or_else(|| StoreError(format!("key {} has unknown role `{role}`", key.id)))?;
    Ok(key)
}

const KEY_COLUMNS: &str =
    "id, hash, principal, role, approver_role, created_at, created_by, revoked_at";

impl Store for SqliteStore {
    fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                &format!(
                    "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    key.id,
                    key.hash,
                    key.principal,
                    key.role.as_str(),
                    key.approver_role,
                    key.created_at.millis(),
                    key.created_by,
                    key.revoked_at.map(Timestamp::millis)
                ],
            )
            .map_err(err("insert key"))?;
        Ok(())
    }

    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        // A current copy answers at once (the gateway's case: every decision keeps one). Without
        // one, a single indexed lookup: a one-shot CLI command should not read every approval
        // to authenticate its caller.
        let conn = self.watch()?;
        if let Some(governance) = self.current_copy(&conn, None)? {
            return Ok(governance.keys.get(hash).cloned());
        }
        let row = conn
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"
            ))
            .map_err(err("statement"))?
            .query_row([hash], key_from_row)
            .optional()
            .map_err(err("key lookup"))?;
        row.map(with_role).transpose()
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ))
            .map_err(err("keys"))?;
        let rows = stmt.query_map([], key_from_row).map_err(err("keys"))?;
        rows.map(|r| with_role(r.map_err(err("keys"))?)).collect()
    }

    fn revoke_key(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let changed = self
            .conn()?
            .execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at.millis()],
            )
            .map_err(err("revoke key"))?;
        Ok(changed == 1)
    }

    fn record_contract(
        &self,
        record: &ContractRecord,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("record contract"))?;
        let known: bool = tx
            .prepare_cached("SELECT 1 FROM contract_versions WHERE version = ?1")
            .map_err(err("statement"))?
            .query_row([&record.version], |_| Ok(true))
            .optional()
            .map_err(err("record contract"))?
            .unwrap_or(false);
        // Re-applying an older version makes it the latest again, so `seq` always moves on.
        let seq: i64 = tx
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM contract_versions")
            .map_err(err("statement"))?
            .query_row([], |r| r.get(0))
            .map_err(err("record contract"))?;
        if known {
            tx.prepare_cached("UPDATE contract_versions SET seq = ?2 WHERE version = ?1")
                .map_err(err("statement"))?
                .execute(params![record.version, seq])
                .map_err(err("record contract"))?;
        } else {
            tx.prepare_cached("INSERT INTO contract_versions (version, applied_by, applied_at, contract_name, seq) VALUES (?1, ?2, ?3, ?4, ?5)")
.map_err(err("statement"))?
.execute(
                params![record.version, record.applied_by, record.at.millis(), snapshot.contract_name, seq],
            )
            .map_err(err("record contract"))?;
            for (path, bytes) in &snapshot.files {
                tx.prepare_cached(
                    "INSERT INTO contract_files (version, path, bytes) VALUES (?1, ?2, ?3)",
                )
                .map_err(err("statement"))?
                .execute(params![record.version, path, bytes])
                .map_err(err("record contract"))?;
            }
        }
        tx.commit().map_err(err("record contract"))?;
        Ok(!known)
    }

    fn contract_applied(&self, version: &str) -> Result<Option<ContractRecord>, StoreError> {
        self.conn()?
            .prepare_cached(
                "SELECT version, applied_by, applied_at FROM contract_versions WHERE version = ?1",
            )
            .map_err(err("statement"))?
            .query_row([version], contract_record)
            .optional()
            .map_err(err("contract lookup"))
    }

    fn latest_contract(&self) -> Result<Option<(ContractRecord, Snapshot)>, StoreError> {
        let conn = self.conn()?;
        let latest = conn
            .prepare_cached("SELECT version, applied_by, applied_at, contract_name FROM contract_versions ORDER BY seq DESC LIMIT 1")
.map_err(err("statement"))?
.query_row(
                [],
                |r| Ok((contract_record(r)?, r.get::<_, String>(3)?)),
            )
            .optional()
            .map_err(err("latest contract"))?;
        let Some((record, contract_name)) = latest else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare("SELECT path, bytes FROM contract_files WHERE version = ?1")
            .map_err(err("contract files"))?;
        let files = stmt
            .query_map([&record.version], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(err("contract files"))?
            .collect::<Result<_, _>>()
            .map_err(err("contract files"))?;
        Ok(Some((
            record,
            Snapshot {
                contract_name,
                files,
            },
        )))
    }

    fn registration(&self, deployment: &str) -> Result<Option<Registration>, StoreError> {
        self.conn()?
            .prepare_cached(
                "SELECT binding, changed_by, changed_at FROM registrations WHERE deployment = ?1",
            )
            .map_err(err("statement"))?
            .query_row([deployment], |r| {
                Ok(Registration {
                    binding: r.get(0)?,
                    changed_by: r.get(1)?,
                    at: Timestamp(r.get(2)?),
                })
            })
            .optional()
            .map_err(err("registration"))
    }

    fn set_registration(
        &self,
        deployment: &str,
        registration: &Registration,
    ) -> Result<(), StoreError> {
        self.conn()?
            .prepare_cached("INSERT INTO registrations (deployment, binding, changed_by, changed_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (deployment) DO UPDATE SET binding = ?2, changed_by = ?3, changed_at = ?4")
.map_err(err("statement"))?
.execute(
                params![deployment, registration.binding, registration.changed_by, registration.at.millis()],
            )
            .map_err(err("registration"))?;
        Ok(())
    }

    fn save_approval(
        &self,
        approval: &Approval,
        read: Option<&Approval>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("save approval"))?;
        let stored: Option<String> = tx
            .prepare_cached("SELECT body FROM approvals WHERE id = ?1")
            .map_err(err("statement"))?
            .query_row([&approval.id], |r| r.get(0))
            .optional()
            .map_err(err("save approval"))?;
        let stored: Option<Approval> = stored.map(|b| from_json(&b)).transpose()?;
        if stored.as_ref() != read {
            return Ok(false);
        }
        tx.prepare_cached(
            "INSERT INTO approvals (id, deployment, created_at, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET body = ?4",
        )
        .map_err(err("statement"))?
        .execute(params![
            approval.id,
            approval.deployment,
            approval.created_at.millis(),
            json(approval)?
        ])
        .map_err(err("save approval"))?;
        tx.commit().map_err(err("save approval"))?;
        Ok(true)
    }

    fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let body: Option<String> = self
            .conn()?
            .query_row("SELECT body FROM approvals WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err("approval"))?;
        body.map(|b| from_json(&b)).transpose()
    }

    fn all_approvals(&self) -> Result<Vec<Approval>, StoreError> {
        self.approvals_where(None)
    }

    fn set_kill(&self, kill: &Kill) -> Result<(), StoreError> {
        self.conn()?
            .prepare_cached(
                "INSERT INTO kills (scope, until, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope) DO UPDATE SET until = ?2, body = ?3",
            )
            .map_err(err("statement"))?
            .execute(params![
                kill.scope.key(),
                kill.until.map(Timestamp::millis),
                json(kill)?
            ])
            .map_err(err("kill"))?;
        Ok(())
    }

    fn clear_kill(&self, scope: &Scope) -> Result<Option<Kill>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(err("unkill"))?;
        let body: Option<String> = tx
            .prepare_cached("SELECT body FROM kills WHERE scope = ?1")
            .map_err(err("statement"))?
            .query_row([scope.key()], |r| r.get(0))
            .optional()
            .map_err(err("unkill"))?;
        tx.prepare_cached("DELETE FROM kills WHERE scope = ?1")
            .map_err(err("statement"))?
            .execute([scope.key()])
            .map_err(err("unkill"))?;
        tx.commit().map_err(err("unkill"))?;
        body.map(|b| from_json(&b)).transpose()
    }

    fn kills(&self, now: Timestamp) -> Result<Vec<Kill>, StoreError> {
        bodies(&*self.conn()?, KILLS_SQL, [now.millis()])
    }

    fn cooldowns(&self, now: Timestamp) -> Result<Vec<Cooldown>, StoreError> {
        bodies(&*self.conn()?, COOLDOWNS_SQL, [now.millis()])
    }

    fn ended_cooldowns_unrecorded(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(i64, Cooldown)>, StoreError> {
        let conn = self.conn()?;
        let mut statement = conn
            .prepare_cached(
                "SELECT id, body FROM cooldowns WHERE until <= ?1 AND end_recorded = 0 ORDER BY id",
            )
            .map_err(err("statement"))?;
        let rows = statement
            .query_map([now.millis()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(err("cooldowns"))?;
        rows.into_iter()
            .map(|(id, body)| Ok((id, from_json(&body)?)))
            .collect()
    }

    fn cooldown_end_recorded(&self, id: i64) -> Result<(), StoreError> {
        self.conn()?
            .prepare_cached("UPDATE cooldowns SET end_recorded = 1 WHERE id = ?1")
            .map_err(err("statement"))?
            .execute([id])
            .map_err(err("cooldowns"))
            .map(drop)
    }

    fn start_breach(&self, breach: &Breach) -> Result<bool, StoreError> {
        let inserted = self
            .conn()?
            .prepare_cached("INSERT OR IGNORE INTO breaches (deployment, body) VALUES (?1, ?2)")
            .map_err(err("statement"))?
            .execute(params![breach.deployment, json(breach)?])
            .map_err(err("breach"))?;
        Ok(inserted == 1)
    }

    fn update_breach(&self, breach: &Breach) -> Result<(), StoreError> {
        self.conn()?
            .prepare_cached("UPDATE breaches SET body = ?2 WHERE deployment = ?1")
            .map_err(err("statement"))?
            .execute(params![breach.deployment, json(breach)?])
            .map_err(err("breach"))?;
        Ok(())
    }

    fn end_breach(&self, deployment: &str) -> Result<Option<Breach>, StoreError> {
        let body: Option<String> = self
            .conn()?
            .prepare_cached("DELETE FROM breaches WHERE deployment = ?1 RETURNING body")
            .map_err(err("statement"))?
            .query_row([deployment], |r| r.get(0))
            .optional()
            .map_err(err("breach"))?;
        body.map(|b| from_json(&b)).transpose()
    }

    fn breaches(&self) -> Result<Vec<Breach>, StoreError> {
        bodies(&*self.conn()?, BREACHES_SQL, [])
    }

    fn save_rollups(&self, rows: &[Rollup]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(err("rollups"))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO rollups (start_ms, deployment, writer, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err("statement"))?;
            for row in rows {
                stmt.execute(params![row.start_ms, row.deployment, row.writer, row.body])
                    .map_err(err("rollups"))?;
            }
        }
        tx.commit().map_err(err("rollups"))
    }

    fn rollups_since(
        &self,
        from_ms: i64,
        deployment: Option<&str>,
    ) -> Result<Vec<Rollup>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT start_ms, deployment, writer, body FROM rollups
                 WHERE start_ms >= ?1 AND (?2 IS NULL OR deployment = ?2) ORDER BY start_ms",
            )
            .map_err(err("rollups"))?;
        let rows = stmt
            .query_map(params![from_ms, deployment], |r| {
                Ok(Rollup {
                    start_ms: r.get(0)?,
                    deployment: r.get(1)?,
                    writer: r.get(2)?,
                    body: r.get(3)?,
                })
            })
            .map_err(err("rollups"))?;
        rows.map(|r| r.map_err(err("rollups"))).collect()
    }

    fn prune_expired(&self, cutoffs: PruneBefore) -> Result<usize, StoreError> {
        let mut pruned = 0;
        for (table, key, end, unsettled) in EXPIRING {
            let before_ms = if unsettled {
                cutoffs.unsettled_ms
            } else {
                cutoffs.ended_ms
            };
            let sql = prune_statement(table, key, end);
            loop {
                let deleted = immediate(&*self.conn()?, |tx| {
                    tx.prepare_cached(&sql)
                        .map_err(err("statement"))?
                        .execute(params![before_ms, PRUNE_DELETES_PER_TRANSACTION])
                        .map_err(err("pruning"))
                })?;
                pruned += deleted;
                if (deleted as i64) < PRUNE_DELETES_PER_TRANSACTION {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    fn prune_rollups(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.conn()?
            .prepare_cached("DELETE FROM rollups WHERE start_ms < ?1")
            .map_err(err("statement"))?
            .execute([before_ms])
            .map_err(err("rollups"))
    }

    fn reservation_open(&self, decision_id: &str) -> Result<bool, StoreError> {
        self.conn()?
            .prepare_cached("SELECT 1 FROM reservations WHERE id = ?1")
            .map_err(err("statement"))?
            .exists([decision_id])
            .map_err(err("reservation"))
    }

    fn claim_reports(&self, keys: &[String], by: &str) -> Result<Option<String>, StoreError> {
        // Nothing to claim takes no write lock.
        if keys.is_empty() {
            return Ok(None);
        }
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("report claim"))?;
        for key in keys {
            let taken = tx
                .prepare_cached("SELECT 1 FROM report_claims WHERE key = ?1")
                .map_err(err("statement"))?
                .exists([key])
                .map_err(err("report claim"))?;
            if taken {
                return Ok(Some(key.clone()));
            }
        }
        for key in keys {
            tx.prepare_cached("INSERT INTO report_claims (key, by_id) VALUES (?1, ?2)")
                .map_err(err("statement"))?
                .execute(params![key, by])
                .map_err(err("report claim"))?;
        }
        tx.commit().map_err(err("report claim"))?;
        Ok(None)
    }

    fn claim_expiring(
        &self,
        key: &str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<bool, StoreError> {
        // `by_id` holds when the claim was made; only a stale one is overwritten.
        let changed = self
            .conn()?
            .prepare_cached(
                "INSERT INTO report_claims (key, by_id) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET by_id = excluded.by_id
                 WHERE CAST(report_claims.by_id AS INTEGER) < ?3",
            )
            .map_err(err("statement"))?
            .execute(params![key, now_ms.to_string(), stale_before_ms])
            .map_err(err("report claim"))?;
        Ok(changed == 1)
    }

    fn release_reports(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(err("report claim"))?;
        for key in keys {
            tx.prepare_cached("DELETE FROM report_claims WHERE key = ?1")
                .map_err(err("statement"))?
                .execute([key])
                .map_err(err("report claim"))?;
        }
        tx.commit().map_err(err("report claim"))
    }

    fn save_baseline(&self, b: &StoredBaseline) -> Result<(), StoreError> {
        self.conn()?
            .prepare_cached(
                "INSERT OR REPLACE INTO baselines (approval_id, deployment, recorded_at, recorded_by, source, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(err("statement"))?
            .execute(params![b.approval_id, b.deployment, b.recorded_at.millis(), b.recorded_by, b.source, b.body])
            .map_err(err("baseline"))?;
        Ok(())
    }

    fn baseline(&self, approval_id: &str) -> Result<Option<StoredBaseline>, StoreError> {
        self.conn()?
            .prepare_cached(
                "SELECT approval_id, deployment, recorded_at, recorded_by, source, body FROM baselines WHERE approval_id = ?1",
            )
            .map_err(err("statement"))?
            .query_row([approval_id], |r| {
                Ok(StoredBaseline {
                    approval_id: r.get(0)?,
                    deployment: r.get(1)?,
                    recorded_at: Timestamp(r.get(2)?),
                    recorded_by: r.get(3)?,
                    source: r.get(4)?,
                    body: r.get(5)?,
                })
            })
            .optional()
            .map_err(err("baseline"))
    }
}

/// The runtime state over one connection the caller holds: [`SqliteStore`] lends it its
/// connection for one call, a [`Batch`] for many.
struct Connected<'a> {
    conn: &'a Connection,
    /// Inside a [`Batch`]'s transaction: each write is a savepoint of it.
    in_batch: bool,
}

impl SqliteStore {
    fn lend<T>(
        &self,
        work: impl FnOnce(&Connected<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let conn = self.conn()?;
        work(&Connected {
            conn: &conn,
            in_batch: false,
        })
    }

    /// Opens a write transaction that decisions share until [`Batch::commit`]: one write lock,
    /// one commit and one WAL write of each changed page for all of them, instead of one each.
    /// Other users of the store's connection wait until the batch is committed or dropped
    /// (rolled back).
    pub fn batch(&self) -> Result<Batch<'_>, StoreError> {
        let writer = self.writer();
        locked(&self.conn)?
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut begin| begin.execute([]))
            .map_err(err("begin a batch"))?;
        Ok(Batch {
            store: self,
            writer: Some(writer),
        })
    }
}

/// Decisions made in one write transaction (see [`SqliteStore::batch`]). Each write a decision
/// makes runs in a savepoint, so a decision whose write fails is undone alone. Reads of
/// governance (kills, cooldowns, approvals) go through the store's second connection and so
/// see what is committed, not what this batch has written: a cooldown a decision starts binds
/// the next decisions once the batch is committed.
pub struct Batch<'s> {
    store: &'s SqliteStore,
    /// `None` once committed.
    writer: Option<MutexGuard<'s, ()>>,
}

impl Batch<'_> {
    /// The state to decide against: reads and writes within this batch.
    pub fn state(&self) -> impl RuntimeState + '_ {
        BatchState {
            batch: self,
            governance: Mutex::new(None),
        }
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        if self.writer.is_none() {
            return Err(StoreError("the batch was already committed".into()));
        }
        locked(&self.store.conn)
    }

    /// False once SQLite has rolled the whole transaction back on its own (an I/O error, a
    /// full disk): what the batch wrote is gone, and it must not be reported as held.
    pub fn is_intact(&self) -> bool {
        self.conn().is_ok_and(|c| !c.is_autocommit())
    }

    /// Commits everything the batch's decisions wrote, or nothing.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let committed = {
            let conn = self.conn()?;
            if conn.is_autocommit() {
                return Err(StoreError(
                    "the database rolled the batch back after an error".into(),
                ));
            }
            conn.prepare_cached("COMMIT")
                .and_then(|mut commit| commit.execute([]))
                .map_err(err("commit a batch"))
        };
        if committed.is_ok() {
            self.writer = None;
        }
        committed.map(drop)
    }
}

impl Drop for Batch<'_> {
    /// Rolls back what was not committed, also after a panic inside a call (which poisons the
    /// connection's lock): the connection is then back out of any transaction, so it is fit
    /// for use again and its poison is cleared.
    fn drop(&mut self) {
        if self.writer.is_none() {
            return;
        }
        let lock = &self.store.conn;
        let conn = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !conn.is_autocommit() {
            let _ = conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut rollback| rollback.execute([]));
        }
        if conn.is_autocommit() {
            drop(conn);
            lock.clear_poison();
        }
    }
}

/// A batch lent out as runtime state; every call uses the batch's transaction.
struct BatchState<'b, 's> {
    batch: &'b Batch<'s>,
    /// The governance copy, checked against the generation once per batch rather than once
    /// per read: nobody can commit a change to governance while the batch holds SQLite's write
    /// lock, and the batch's own writes (a cooldown) are not visible to the copy's connection.
    governance: Mutex<Option<Arc<Governance>>>,
}

impl BatchState<'_, '_> {
    /// As [`SqliteStore::governance`], from the copy this batch already checked when it can.
    fn governance(&self, now: Option<Timestamp>) -> Result<Arc<Governance>, StoreError> {
        let mut held = locked(&self.governance)?;
        if let Some(copy) = held
            .as_ref()
            .filter(|g| now.is_none_or(|now| now >= g.loaded_at))
        {
            return Ok(copy.clone());
        }
        let copy = self.batch.store.governance(now)?;
        *held = Some(copy.clone());
        Ok(copy)
    }

    fn lend<T>(
        &self,
        work: impl FnOnce(&Connected<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let conn = self.batch.conn()?;
        work(&Connected {
            conn: &conn,
            in_batch: true,
        })
    }
}

/// `RuntimeState` for a type whose `lend` runs a call on a [`Connected`] and whose `governance`
/// gives the governance copy: the store (its own connection, one transaction per write) and a
/// batch's state (the batch's transaction).
macro_rules! runtime_state_through_lend {
    ($ty:ty) => {
        impl RuntimeState for $ty {
            fn view(
                &self,
                deployment: &str,
                use_case: &str,
                principal: &str,
                run_id: Option<&str>,
                now: Timestamp,
            ) -> Result<GovernanceView, StateError> {
                let scopes = relevant_scopes(deployment, use_case, principal, run_id);
                Ok(view_of(
                    &*self.governance(Some(now))?,
                    deployment,
                    &scopes,
                    now,
                ))
            }

            fn approvals_of(&self, deployment: &str) -> Result<Vec<Approval>, StateError> {
                Ok(self
                    .governance(None)?
                    .approvals
                    .get(deployment)
                    .cloned()
                    .unwrap_or_default())
            }

            fn claim_idempotency(
                &self,
                key: &str,
                decision_id: &str,
                now: Timestamp,
                expires_at: Timestamp,
            ) -> Result<Option<String>, StateError> {
                self.lend(|c| c.claim_idempotency(key, decision_id, now, expires_at))
            }

            fn release_idempotency(&self, key: &str, decision_id: &str) -> Result<(), StateError> {
                self.lend(|c| c.release_idempotency(key, decision_id))
            }

            fn reserve(
                &self,
                request: &ReservationRequest,
                now: Timestamp,
                dry_run: bool,
            ) -> Result<Result<(), Refusal>, StateError> {
                self.lend(|c| c.reserve(request, now, dry_run))
            }

            fn settle(
                &self,
                reservation_id: &str,
                actual: Amounts,
                now: Timestamp,
            ) -> Result<Settled, StateError> {
                self.lend(|c| c.settle(reservation_id, actual, now))
            }

            fn settle_many(
                &self,
                settlements: &[(String, Amounts)],
                now: Timestamp,
            ) -> Result<Vec<Settled>, StateError> {
                self.lend(|c| c.settle_many(settlements, now))
            }

            fn add_strike(
                &self,
                principal: &str,
                now: Timestamp,
                within_ms: u64,
            ) -> Result<u32, StateError> {
                self.lend(|c| c.add_strike(principal, now, within_ms))
            }

            fn start_cooldown(&self, cooldown: &Cooldown) -> Result<(), StateError> {
                self.lend(|c| c.start_cooldown(cooldown))
            }
        }
    };
}

runtime_state_through_lend!(SqliteStore);
runtime_state_through_lend!(BatchState<'_, '_>);

/// What a decision needs of the governance copy, for its scopes at `now`. The copy comes from
/// the store's second connection (never `conn`, which a batch or a waiting budget transaction
/// may hold).
fn view_of(
    governance: &Governance,
    deployment: &str,
    scopes: &[Scope],
    now: Timestamp,
) -> GovernanceView {
    GovernanceView {
        kills: governance
            .kills
            .iter()
            .filter(|k| k.until.is_none_or(|until| until > now) && scopes.contains(&k.scope))
            .cloned()
            .collect(),
        cooldowns: governance
            .cooldowns
            .iter()
            .filter(|c| c.until > now && scopes.contains(&c.scope))
            .cloned()
            .collect(),
        approvals: governance
            .approvals
            .get(deployment)
            .cloned()
            .unwrap_or_default(),
        breach: governance.breaches.get(deployment).cloned(),
    }
}

/// The runtime state's writes, on the connection lent.
impl Connected<'_> {
    /// `work` in a write transaction of its own, or in a savepoint of the batch's.
    fn write<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.in_batch {
            savepoint(self.conn, work)
        } else {
            immediate(self.conn, work)
        }
    }

    fn claim_idempotency(
        &self,
        key: &str,
        decision_id: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Option<String>, StateError> {
        Ok(self.write(|tx| -> Result<_, StoreError> {
            let first: Option<String> = tx
                .prepare_cached(
                    "SELECT decision_id FROM idempotency WHERE key = ?1 AND expires_at > ?2",
                )
                .map_err(err("statement"))?
                .query_row(params![key, now.millis()], |r| r.get(0))
                .optional()
                .map_err(err("idempotency"))?;
            if first.is_some() {
                return Ok(first);
            }
            tx.prepare_cached(
                "INSERT INTO idempotency (key, decision_id, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET decision_id = ?2, expires_at = ?3",
            )
            .map_err(err("statement"))?
            .execute(params![key, decision_id, expires_at.millis()])
            .map_err(err("idempotency"))?;
            Ok(None)
        })?)
    }

    fn release_idempotency(&self, key: &str, decision_id: &str) -> Result<(), StateError> {
        Ok(self.write(|tx| {
            tx.prepare_cached("DELETE FROM idempotency WHERE key = ?1 AND decision_id = ?2")
                .map_err(err("statement"))?
                .execute(params![key, decision_id])
                .map_err(err("idempotency"))
                .map(drop)
        })?)
    }

    fn reserve(
        &self,
        request: &ReservationRequest,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<Result<(), Refusal>, StateError> {
        Ok(self.write(|tx| -> Result<_, StoreError> {
            let refusal = request.first_refusal(
                |key| window_usage(tx, key),
                |name| {
                    tx.prepare_cached("SELECT COALESCE(SUM(amount), 0) FROM reservation_resources WHERE name = ?1 AND expires_at > ?2")
    .map_err(err("statement"))?
    .query_row(
                        params![name, now.millis()],
                        |r| r.get::<_, i64>(0),
                    )
                    .map(to_u64)
                    .map_err(err("reserve"))
                },
            )?;
            if let Some(refusal) = refusal {
                return Ok(Err(refusal));
            }
            if dry_run {
                return Ok(Ok(()));
            }
            for charge in &request.windows {
                add_to_window(tx, &charge.key, charge.amounts, charge.resets_at)?;
            }
            let held: Vec<(&str, Amounts)> = request
                .windows
                .iter()
                .map(|c| (c.key.as_str(), c.amounts))
                .collect();
            tx.prepare_cached(
                "INSERT INTO reservations (id, expires_at, windows) VALUES (?1, ?2, ?3)",
            )
            .map_err(err("statement"))?
            .execute(params![
                request.reservation_id,
                request.expires_at.millis(),
                json(&held)?
            ])
            .map_err(err("reserve"))?;
            for claim in &request.resources {
                tx.prepare_cached("INSERT INTO reservation_resources (reservation_id, name, amount, expires_at) VALUES (?1, ?2, ?3, ?4)")
    .map_err(err("statement"))?
    .execute(
                    params![request.reservation_id, claim.name, to_i64(claim.amount), request.expires_at.millis()],
                )
                .map_err(err("reserve"))?;
            }
            Ok(Ok(()))
        })?)
    }

    fn settle(
        &self,
        reservation_id: &str,
        actual: Amounts,
        _now: Timestamp,
    ) -> Result<Settled, StateError> {
        Ok(self.write(|tx| settle_in(tx, reservation_id, actual))?)
    }

    fn settle_many(
        &self,
        settlements: &[(String, Amounts)],
        _now: Timestamp,
    ) -> Result<Vec<Settled>, StateError> {
        Ok(self.write(|tx| {
            settlements
                .iter()
                .map(|(reservation_id, actual)| settle_in(tx, reservation_id, *actual))
                .collect::<Result<Vec<_>, StoreError>>()
        })?)
    }

    fn add_strike(
        &self,
        principal: &str,
        now: Timestamp,
        within_ms: u64,
    ) -> Result<u32, StateError> {
        Ok(self.write(|tx| -> Result<_, StoreError> {
            let since = now.millis().saturating_sub(to_i64(within_ms));
            tx.prepare_cached("DELETE FROM strikes WHERE principal = ?1 AND at < ?2")
                .map_err(err("statement"))?
                .execute(params![principal, since])
                .map_err(err("strike"))?;
            tx.prepare_cached("INSERT INTO strikes (principal, at) VALUES (?1, ?2)")
                .map_err(err("statement"))?
                .execute(params![principal, now.millis()])
                .map_err(err("strike"))?;
            let count: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM strikes WHERE principal = ?1")
                .map_err(err("statement"))?
                .query_row([principal], |r| r.get(0))
                .map_err(err("strike"))?;
            Ok(u32::try_from(count).unwrap_or(u32::MAX))
        })?)
    }

    fn start_cooldown(&self, cooldown: &Cooldown) -> Result<(), StateError> {
        Ok(self.write(|tx| {
            tx.prepare_cached("INSERT INTO cooldowns (scope, until, body) VALUES (?1, ?2, ?3)")
                .map_err(err("statement"))?
                .execute(params![
                    cooldown.scope.key(),
                    cooldown.until.millis(),
                    json(cooldown)?
                ])
                .map_err(err("cooldown"))
                .map(drop)
        })?)
    }
}

/// Replaces one reservation's estimate with `actual` in every window it charged, and releases
/// its resources; inside the caller's write transaction.
fn settle_in(
    tx: &Connection,
    reservation_id: &str,
    actual: Amounts,
) -> Result<Settled, StoreError> {
    let held: Option<String> = tx
        .prepare_cached("SELECT windows FROM reservations WHERE id = ?1")
        .map_err(err("statement"))?
        .query_row([reservation_id], |r| r.get(0))
        .optional()
        .map_err(err("settle"))?;
    let Some(held) = held else {
        return Ok(Settled::Unknown);
    };
    let held: Vec<(String, Amounts)> = from_json(&held)?;
    for (key, reserved) in held {
        let used = window_usage(tx, &key)?;
        let settled = used
            .saturating_sub(reserved)
            .saturating_add(actual.settled_within(reserved));
        set_window(tx, &key, settled)?;
    }
    tx.prepare_cached("DELETE FROM reservations WHERE id = ?1")
        .map_err(err("statement"))?
        .execute([reservation_id])
        .map_err(err("settle"))?;
    tx.prepare_cached("DELETE FROM reservation_resources WHERE reservation_id = ?1")
        .map_err(err("statement"))?
        .execute([reservation_id])
        .map_err(err("settle"))?;
    Ok(Settled::Settled)
}

fn window_usage(tx: &Connection, key: &str) -> Result<Amounts, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT tokens, usd_micros, requests, tool_calls FROM budget_windows WHERE key = ?1",
        )
        .map_err(err("statement"))?
        .query_row([key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()
        .map_err(err("budget window"))?;
    Ok(
        row.map_or(Amounts::default(), |(tokens, usd, requests, tools)| {
            Amounts {
                tokens: to_u64(tokens),
                usd_micros: to_u64(usd),
                requests: to_u64(requests),
                tool_calls: to_u64(tools),
            }
        }),
    )
}

/// Sets a window's use to `amounts` (a settlement). A window pruned meanwhile (it ended over
/// an hour ago) is left gone: nothing is charged to it any more.
fn set_window(tx: &Connection, key: &str, amounts: Amounts) -> Result<(), StoreError> {
    let [tokens, usd_micros, requests, tool_calls] = window_columns(amounts);
    tx.prepare_cached(
        "UPDATE budget_windows SET tokens = ?2, usd_micros = ?3, requests = ?4, tool_calls = ?5
         WHERE key = ?1",
    )
    .map_err(err("statement"))?
    .execute(params![key, tokens, usd_micros, requests, tool_calls])
    .map_err(err("budget window"))?;
    Ok(())
}

/// A window's amounts as its columns hold them: tokens, usd_micros, requests, tool_calls.
fn window_columns(amounts: Amounts) -> [i64; 4] {
    [
        to_i64(amounts.tokens),
        to_i64(amounts.usd_micros),
        to_i64(amounts.requests),
        to_i64(amounts.tool_calls),
    ]
}

/// Adds `amounts` to a window; its row notes when the window ends. Charging it again leaves that
/// column as it is, so that its index is not written (a row from before windows had an end
/// keeps none).
fn add_to_window(
    tx: &Connection,
    key: &str,
    amounts: Amounts,
    resets_at: Option<Timestamp>,
) -> Result<(), StoreError> {
    let [tokens, usd_micros, requests, tool_calls] = window_columns(amounts);
    tx.prepare_cached(
        "INSERT INTO budget_windows (key, tokens, usd_micros, requests, tool_calls, resets_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (key) DO UPDATE SET tokens = tokens + ?2, usd_micros = usd_micros + ?3,
             requests = requests + ?4, tool_calls = tool_calls + ?5",
    )
        .map_err(err("statement"))?
        .execute(params![
            key,
            tokens,
            usd_micros,
            requests,
            tool_calls,
            resets_at.map(Timestamp::millis)
        ])
        .map_err(err("budget window"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each prune finds what ended through an index on its end column, not by reading the
    /// table: a busy gateway's reservations and idempotency keys run to millions of rows.
    #[test]
    fn every_prune_searches_an_index_of_its_end_column() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
        let conn = store.conn().unwrap();
        for (table, key, end, _) in EXPIRING {
            let plan: Vec<String> = conn
                .prepare(&format!(
                    "EXPLAIN QUERY PLAN {}",
                    prune_statement(table, key, end)
                ))
                .unwrap()
                .query_map(params![0, 1], |r| r.get(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                plan.iter()
                    .any(|step| step.contains(&format!("INDEX {table}_by_{end}"))),
                "{table}: {plan:?}"
            );
        }
    }
}
