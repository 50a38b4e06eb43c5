//! The `Store` half of the interface (keys, approvals, registrations, kills), and what only a
//! file-backed store can show: state survives reopening, and two connections stay exact.

use gavel_contract::time::{Span, Timestamp};
use gavel_engine::approval::Registration;
use gavel_engine::*;
use gavel_store::{hash_key, ContractRecord, KeyRecord, PruneBefore, Role, SqliteStore, Store};

use crate::*;

fn approval(id: &str) -> Approval {
    Approval {
        id: id.into(),
        deployment: "kb".into(),
        use_case: "uc".into(),
        binding: "b".repeat(64),
        contract_version: "v".into(),
        tier: "minimal".into(),
        population: "p".into(),
        created_at: NOW,
        expires_at: NOW.saturating_add(Span::from_days(1)),
        thresholds: [("accuracy".to_string(), 0.9)].into(),
        on_breach: OnBreach::Cooldown { seconds: 60 },
        evidence: vec![],
        signoffs: vec![Signoff {
            principal: "rita".into(),
            approver_role: Some("risk".into()),
            at: NOW,
        }],
        status: ApprovalStatus::Active,
        revocation: None,
        activated_at: None,
    }
}

/// A timed kill of deployment `kb` from `NOW` for 60 seconds.
fn kill_of_kb_for_a_minute() -> Kill {
    Kill {
        scope: Scope::Deployment("kb".into()),
        reason: "r".into(),
        by: "olga".into(),
        at: NOW,
        until: Some(NOW.saturating_add(Span::from_secs(60))),
    }
}

/// Key `key_1` of principal `svc`, role service, for `secret`.
fn service_key(secret: &str) -> KeyRecord {
    KeyRecord {
        id: "key_1".into(),
        hash: hash_key(secret),
        principal: "svc".into(),
        role: Role::Service,
        approver_role: None,
        created_at: NOW,
        created_by: "admin".into(),
        revoked_at: None,
    }
}

/// Breach `brc_1` of `kb` under `apr_1`: p99 latency 900 against 500.
fn latency_breach(on_breach: OnBreach, until: Option<Timestamp>) -> Breach {
    Breach {
        id: "brc_1".into(),
        deployment: "kb".into(),
        approval_id: "apr_1".into(),
        threshold: "latency".into(),
        signal: "latency".into(),
        value: 900.0,
        limit: 500.0,
        on_breach,
        since: NOW,
        until,
    }
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gavel.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert_key(&KeyRecord {
            id: "key_1".into(),
            hash: hash_key("gvl_secret"),
            principal: "rita".into(),
            role: Role::Approver,
            approver_role: Some("risk".into()),
            created_at: NOW,
            created_by: "admin".into(),
            revoked_at: None,
        })
        .unwrap();
        assert!(s.save_approval(&approval("apr_1"), None).unwrap());
        s.set_registration(
            "kb",
            &Registration {
                binding: "b".into(),
                changed_by: "olga".into(),
                at: NOW,
            },
        )
        .unwrap();
        let record = ContractRecord {
            version: "v1".into(),
            applied_by: "olga".into(),
            at: NOW,
        };
        let snapshot = gavel_contract::Snapshot {
            contract_name: "gavel.yaml".into(),
            files: [("gavel.yaml".to_string(), b"version: 1".to_vec())].into(),
        };
        assert!(s.record_contract(&record, &snapshot).unwrap());
        assert!(!s.record_contract(&record, &snapshot).unwrap());
        s.set_kill(&Kill {
            scope: Scope::UseCase("uc".into()),
            reason: "r".into(),
            by: "olga".into(),
            at: NOW,
            until: None,
        })
        .unwrap();
        s.reserve(
            &reservation("r1", vec![charge("a", 70, 100)], vec![]),
            NOW,
            false,
        )
        .unwrap()
        .unwrap();
    }
    let s = SqliteStore::open_existing(&path).unwrap();
    let key = s.key_by_hash(&hash_key("gvl_secret")).unwrap().unwrap();
    assert_eq!(
        (
            key.principal.as_str(),
            key.role,
            key.approver_role.as_deref()
        ),
        ("rita", Role::Approver, Some("risk"))
    );
    assert!(s.key_by_hash(&hash_key("gvl_other")).unwrap().is_none());
    assert_eq!(s.approval("apr_1").unwrap().unwrap(), approval("apr_1"));
    assert_eq!(s.registration("kb").unwrap().unwrap().changed_by, "olga");
    assert_eq!(
        s.contract_applied("v1").unwrap().unwrap().applied_by,
        "olga"
    );
    let (latest, files) = s.latest_contract().unwrap().unwrap();
    assert_eq!(latest.version, "v1");
    assert_eq!(files.files["gavel.yaml"], b"version: 1".to_vec());
    assert_eq!(s.kills(NOW).unwrap().len(), 1);
    assert!(s
        .reserve(
            &reservation("r2", vec![charge("a", 31, 100)], vec![]),
            NOW,
            false
        )
        .unwrap()
        .is_err());
    assert!(s.revoke_key("key_1", NOW).unwrap());
    assert!(!s.revoke_key("key_1", NOW).unwrap());
    assert!(s
        .key_by_hash(&hash_key("gvl_secret"))
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
}

const SECRET: &str = "gvl_0123456789abcdef0123456789abcdef";

/// A store in a new file under `dir` holding the service key for [`SECRET`].
fn store_with_service_key(dir: &tempfile::TempDir) -> (SqliteStore, std::path::PathBuf) {
    let path = dir.path().join("gavel.db");
    let store = SqliteStore::open(&path).unwrap();
    store.insert_key(&service_key(SECRET)).unwrap();
    (store, path)
}

#[test]
fn the_key_itself_is_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (s, path) = store_with_service_key(&dir);
    drop(s);
    let mut bytes = std::fs::read(&path).unwrap();
    for suffix in ["-wal", "-shm"] {
        if let Ok(more) = std::fs::read(format!("{}{suffix}", path.display())) {
            bytes.extend(more);
        }
    }
    assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
}

#[test]
fn two_connections_to_one_file_share_exact_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gavel.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let grants = std::thread::scope(|scope| {
        let ha = scope.spawn(|| {
            (0..20)
                .filter(|i| {
                    a.reserve(
                        &reservation(&format!("a{i}"), vec![charge("w", 10, 100)], vec![]),
                        NOW,
                        false,
                    )
                    .unwrap()
                    .is_ok()
                })
                .count()
        });
        let hb = scope.spawn(|| {
            (0..20)
                .filter(|i| {
                    b.reserve(
                        &reservation(&format!("b{i}"), vec![charge("w", 10, 100)], vec![]),
                        NOW,
                        false,
                    )
                    .unwrap()
                    .is_ok()
                })
                .count()
        });
        ha.join().unwrap() + hb.join().unwrap()
    });
    assert_eq!(grants, 10);
}

/// A budget transaction waiting for the write lock (the gateway's ledger holds it through
/// every commit) must not hold back authentication, which runs on the gateway's async workers.
#[test]
fn a_key_is_found_while_a_budget_transaction_waits_for_the_write_lock() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = store_with_service_key(&dir);
    assert!(store.save_approval(&approval("apr_1"), None).unwrap());
    // The governance copy is loaded, as in a gateway that has decided before.
    assert_eq!(
        store
            .view("kb", "uc", "svc", None, NOW)
            .unwrap()
            .approvals
            .len(),
        1
    );
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let reserved = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            let grant = store.reserve(
                &reservation("r1", vec![charge("w", 10, 100)], vec![]),
                NOW,
                false,
            );
            reserved.store(true, Ordering::SeqCst);
            grant
        });
        // Time for the reservation to start waiting (were it slower, this test would pass
        // without showing anything, never fail wrongly).
        std::thread::sleep(std::time::Duration::from_millis(200));
        let found = store.key_by_hash(&hash_key(SECRET)).unwrap();
        let view = store.view("kb", "uc", "svc", None, NOW).unwrap();
        let reservation_still_waiting = !reserved.load(Ordering::SeqCst);
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(found.map(|k| k.principal), Some("svc".to_string()));
        assert_eq!(view.approvals.len(), 1);
        assert!(
            reservation_still_waiting,
            "the key lookup or the view waited until the budget transaction was done"
        );
        assert!(waiting.join().unwrap().unwrap().is_ok());
    });
}

#[test]
fn approvals_are_replaced_by_id_and_listed_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
    assert!(s.save_approval(&approval("apr_1"), None).unwrap());
    let mut second = approval("apr_2");
    second.created_at = NOW.saturating_add(Span::from_secs(1));
    assert!(s.save_approval(&second, None).unwrap());
    let mut revoked = approval("apr_1");
    revoked.status = ApprovalStatus::Revoked;
    assert!(
        !s.save_approval(&revoked, None).unwrap(),
        "not new any more"
    );
    let mut stale = approval("apr_1");
    stale.population = "someone else".into();
    assert!(
        !s.save_approval(&revoked, Some(&stale)).unwrap(),
        "changed since it was read"
    );
    assert!(s.save_approval(&revoked, Some(&approval("apr_1"))).unwrap());
    let all = s.all_approvals().unwrap();
    assert_eq!(
        all.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["apr_1", "apr_2"]
    );
    assert_eq!(all[0].status, ApprovalStatus::Revoked);
    assert_eq!(s.approvals_of("kb").unwrap().len(), 2);
}

#[test]
fn a_database_from_a_newer_gavel_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gavel.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let e = SqliteStore::open(&path).err().unwrap();
    assert!(e.0.contains("schema version 99"), "{e}");
}

#[test]
fn one_breach_per_deployment_shows_in_the_view_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
    let breach = latency_breach(
        OnBreach::Cooldown { seconds: 60 },
        Some(NOW.saturating_add(Span::from_secs(60))),
    );
    assert!(s.start_breach(&breach).unwrap());
    let second = Breach {
        id: "brc_2".into(),
        ..breach.clone()
    };
    assert!(
        !s.start_breach(&second).unwrap(),
        "one breach at a time per deployment"
    );
    let extended = Breach {
        until: Some(NOW.saturating_add(Span::from_secs(120))),
        ..breach.clone()
    };
    s.update_breach(&extended).unwrap();
    let view = s.view("kb", "uc", "svc", None, NOW).unwrap();
    assert_eq!(view.breach, Some(extended.clone()));
    assert!(s
        .view("other", "uc", "svc", None, NOW)
        .unwrap()
        .breach
        .is_none());
    assert_eq!(s.breaches().unwrap(), vec![extended.clone()]);
    assert_eq!(s.end_breach("kb").unwrap(), Some(extended));
    assert_eq!(s.end_breach("kb").unwrap(), None);
    assert!(s
        .view("kb", "uc", "svc", None, NOW)
        .unwrap()
        .breach
        .is_none());
}

#[test]
fn rollups_replace_per_writer_and_prune_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
    let row = |start_ms: i64, writer: &str, body: &str| gavel_store::Rollup {
        deployment: "kb".into(),
        start_ms,
        writer: writer.into(),
        body: body.as_bytes().to_vec(),
    };
    s.save_rollups(&[
        row(10_000, "a", "1"),
        row(10_000, "b", "2"),
        row(20_000, "a", "3"),
    ])
    .unwrap();
    s.save_rollups(&[row(10_000, "a", "4")]).unwrap();
    let bodies: Vec<Vec<u8>> = s
        .rollups_since(0, Some("kb"))
        .unwrap()
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(bodies.len(), 3);
    assert!(bodies.contains(&b"4".to_vec()) && !bodies.contains(&b"1".to_vec()));
    assert!(s.rollups_since(0, Some("other")).unwrap().is_empty());
    assert_eq!(s.rollups_since(15_000, None).unwrap().len(), 1);
    assert_eq!(s.prune_rollups(15_000).unwrap(), 2);
    assert_eq!(s.rollups_since(0, None).unwrap().len(), 1);
}

/// The governance view and key lookups are served from a copy that is read again only when
/// the watched tables change; a change made through another connection (another gavel process)
/// must show on the very next read, never a stale answer.
#[test]
fn changes_from_another_connection_show_at_once_despite_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gavel.db");
    let gateway = SqliteStore::open(&path).unwrap();
    let cli = SqliteStore::open(&path).unwrap();
    let view = |s: &SqliteStore| s.view("kb", "uc", "svc", None, NOW).unwrap();
    let fresh = view(&gateway);
    assert!(fresh.kills.is_empty() && fresh.approvals.is_empty() && fresh.breach.is_none());
    assert!(gateway.key_by_hash(&hash_key("gvl_k")).unwrap().is_none());

    cli.insert_key(&service_key("gvl_k")).unwrap();
    assert!(gateway.key_by_hash(&hash_key("gvl_k")).unwrap().is_some());
    cli.revoke_key("key_1", NOW).unwrap();
    let key = gateway.key_by_hash(&hash_key("gvl_k")).unwrap().unwrap();
    assert!(key.revoked_at.is_some(), "a revocation shows at once");

    cli.save_approval(&approval("apr_1"), None).unwrap();
    assert_eq!(view(&gateway).approvals, vec![approval("apr_1")]);
    assert_eq!(gateway.approvals_of("kb").unwrap(), vec![approval("apr_1")]);

    let kill = kill_of_kb_for_a_minute();
    cli.set_kill(&kill).unwrap();
    assert_eq!(view(&gateway).kills, vec![kill.clone()]);
    // A timed kill ends by the clock, with no write to announce it.
    let later = NOW.saturating_add(Span::from_secs(61));
    assert!(gateway
        .view("kb", "uc", "svc", None, later)
        .unwrap()
        .kills
        .is_empty());
    // A view asked for an earlier moment than the copy was taken at is answered afresh.
    assert_eq!(view(&gateway).kills, vec![kill]);

    let cooldown = Cooldown {
        scope: Scope::Principal("svc".into()),
        code: "abuse.cooldown".into(),
        reason: "r".into(),
        since: NOW,
        until: NOW.saturating_add(Span::from_secs(30)),
    };
    cli.start_cooldown(&cooldown).unwrap();
    assert_eq!(view(&gateway).cooldowns, vec![cooldown]);

    let breach = latency_breach(OnBreach::Block, None);
    cli.start_breach(&breach).unwrap();
    assert_eq!(view(&gateway).breach, Some(breach));
    cli.end_breach("kb").unwrap();
    assert!(view(&gateway).breach.is_none());
}

/// Tokens charged to window `key`, as another connection sees them (committed only); `None`
/// when the window has no row.
fn committed_tokens(path: &std::path::Path, key: &str) -> Option<i64> {
    use rusqlite::OptionalExtension;
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT tokens FROM budget_windows WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
}

#[test]
fn a_batch_sees_its_own_writes_commits_them_together_and_undoes_a_failed_one_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gavel.db");
    let store = SqliteStore::open(&path).unwrap();
    let batch = store.batch().unwrap();
    {
        let state = batch.state();
        let w = |id: &str, tokens| reservation(id, vec![charge("w", tokens, 100)], vec![]);
        assert_eq!(state.reserve(&w("r1", 60), NOW, false).unwrap(), Ok(()));
        let other = reservation("r3", vec![charge("v", 7, 100)], vec![]);
        assert_eq!(state.reserve(&other, NOW, false).unwrap(), Ok(()));
        // The first reservation counts, though nothing is committed yet: 60 + 60 > 100.
        assert!(state.reserve(&w("r2", 60), NOW, false).unwrap().is_err());
        // A write that fails (the reservation id is taken) is undone alone: its charge to
        // the window too, not only the row that failed.
        assert!(state.reserve(&w("r1", 10), NOW, false).is_err());
    }
    assert!(batch.is_intact());
    assert_eq!(committed_tokens(&path, "w"), None, "seen before the commit");
    batch.commit().unwrap();
    assert_eq!(committed_tokens(&path, "w"), Some(60));
    assert_eq!(committed_tokens(&path, "v"), Some(7));
}

#[test]
fn a_panic_inside_a_batch_rolls_it_back_and_leaves_the_store_usable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gavel.db");
    let store = SqliteStore::open(&path).unwrap();
    let w = |id: &str, tokens| reservation(id, vec![charge("w", tokens, 100)], vec![]);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let batch = store.batch().unwrap();
        assert_eq!(
            batch.state().reserve(&w("r1", 40), NOW, false).unwrap(),
            Ok(())
        );
        panic!("a bug while deciding");
    }));
    assert!(panicked.is_err());
    assert_eq!(committed_tokens(&path, "w"), None);
    // Writes go on as before, on their own and in batches.
    assert_eq!(store.reserve(&w("r2", 10), NOW, false).unwrap(), Ok(()));
    let batch = store.batch().unwrap();
    assert_eq!(
        batch.state().reserve(&w("r3", 5), NOW, false).unwrap(),
        Ok(())
    );
    batch.commit().unwrap();
    assert_eq!(committed_tokens(&path, "w"), Some(15));
}

#[test]
fn a_dropped_batch_leaves_nothing_and_other_writers_wait_for_it_instead_of_joining_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gavel.db");
    let store = SqliteStore::open(&path).unwrap();
    let batch = store.batch().unwrap();
    assert_eq!(
        batch
            .state()
            .reserve(
                &reservation("in_batch", vec![charge("w", 30, 100)], vec![]),
                NOW,
                false
            )
            .unwrap(),
        Ok(())
    );
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let outside = scope.spawn(|| {
            let grant = store.reserve(
                &reservation("outside", vec![charge("w", 5, 100)], vec![]),
                NOW,
                false,
            );
            done.store(true, Ordering::SeqCst);
            grant
        });
        // Time for the other writer to reach the store (were it slower, this test would pass
        // without showing anything, never fail wrongly).
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !done.load(Ordering::SeqCst),
            "a write went ahead while a batch was open"
        );
        drop(batch);
        assert_eq!(outside.join().unwrap().unwrap(), Ok(()));
    });
    // Had the other write run inside the batch's transaction, the rollback would have taken
    // it too.
    assert_eq!(committed_tokens(&path, "w"), Some(5));
}

/// A batch checks the governance copy once and reads it for each decision after; a decision
/// at an earlier moment than the copy was read for still sees what had not ended by then.
#[test]
fn a_batch_reuses_its_governance_copy_only_for_moments_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
    assert!(store.save_approval(&approval("apr_1"), None).unwrap());
    let kill = kill_of_kb_for_a_minute();
    store.set_kill(&kill).unwrap();
    let batch = store.batch().unwrap();
    let state = batch.state();
    let at = |secs| {
        state
            .view(
                "kb",
                "uc",
                "svc",
                None,
                NOW.saturating_add(Span::from_secs(secs)),
            )
            .unwrap()
    };
    let later = at(120);
    assert!(later.kills.is_empty(), "the kill had ended");
    assert_eq!(later.approvals.len(), 1);
    assert_eq!(
        at(30).kills,
        vec![kill],
        "read for a moment the copy does not cover"
    );
    assert_eq!(state.approvals_of("kb").unwrap().len(), 1);
    drop(state);
    batch.commit().unwrap();
}

/// A database made when the tables a decision writes were rowid tables is rebuilt with them
/// `WITHOUT ROWID`, and keeps what they held: a reservation settles, a window keeps its charge,
/// an idempotency key stays claimed.
#[test]
fn tables_of_an_older_layout_are_rebuilt_with_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let old = SqliteStore::open(&path).unwrap();
        old.reserve(
            &reservation("r1", vec![charge("a", 80, 100)], vec![]),
            NOW,
            false,
        )
        .unwrap()
        .unwrap();
        old.claim_idempotency("k1", "dec_1", NOW, NOW.saturating_add(Span::from_secs(60)))
            .unwrap();
    }
    // Back to the layout before: rowid tables, each with the index of its text key.
    let conn = rusqlite::Connection::open(&path).unwrap();
    for (table, columns, key, names) in [
        ("idempotency", "key TEXT PRIMARY KEY, decision_id TEXT NOT NULL, expires_at INTEGER NOT NULL", "key", "key, decision_id, expires_at"),
        ("budget_windows", "key TEXT PRIMARY KEY, tokens INTEGER NOT NULL, usd_micros INTEGER NOT NULL, requests INTEGER NOT NULL, tool_calls INTEGER NOT NULL", "key", "key, tokens, usd_micros, requests, tool_calls"),
        ("reservations", "id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, windows TEXT NOT NULL", "id", "id, expires_at, windows"),
    ] {
        conn.execute_batch(&format!(
            "CREATE TABLE {table}_old ({columns});
             INSERT INTO {table}_old SELECT {names} FROM {table};
             DROP TABLE {table};
             ALTER TABLE {table}_old RENAME TO {table};"
        ))
        .unwrap();
        let rows: i64 = conn
            .query_row(&format!("SELECT COUNT({key}) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "{table}");
    }
    let layouts = |conn: &rusqlite::Connection| -> Vec<String> {
        conn.prepare(
            "SELECT sql FROM sqlite_schema WHERE type = 'table'
             AND name IN ('idempotency', 'budget_windows', 'reservations') ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    assert!(layouts(&conn)
        .iter()
        .all(|sql| !sql.contains("WITHOUT ROWID")));
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rebuilt = layouts(&conn);
    assert_eq!(rebuilt.len(), 3);
    assert!(
        rebuilt.iter().all(|sql| sql.ends_with("WITHOUT ROWID")),
        "{rebuilt:?}"
    );
    // The key's claim, the window's charge and the reservation all came through.
    assert_eq!(
        store
            .claim_idempotency("k1", "dec_2", NOW, NOW.saturating_add(Span::from_secs(60)))
            .unwrap(),
        Some("dec_1".to_string())
    );
    assert!(store
        .reserve(
            &reservation("r2", vec![charge("a", 21, 100)], vec![]),
            NOW,
            false
        )
        .unwrap()
        .is_err());
    let actual = Amounts {
        tokens: 10,
        requests: 1,
        ..Default::default()
    };
    assert_eq!(store.settle("r1", actual, NOW).unwrap(), Settled::Settled);
}

/// Windows, idempotency keys and cooldowns that ended are pruned, and reservations never
/// settled once past their own, later cutoff; the current window, a window that never ends (a
/// run's), a live key, a live cooldown and a reservation still inside its cutoff stay, with what
/// they hold.
#[test]
fn ended_windows_expired_keys_and_abandoned_reservations_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
    let minute = Span::from_secs(60);
    let ended = WindowCharge {
        resets_at: Some(NOW),
        ..charge("ended", 10, 100)
    };
    let current = WindowCharge {
        resets_at: Some(NOW.saturating_add(Span::from_secs(600))),
        ..charge("current", 10, 100)
    };
    let endless = WindowCharge {
        resets_at: None,
        ..charge("run", 10, 100)
    };
    store
        .reserve(
            &reservation("r1", vec![ended, current, endless], vec![]),
            NOW,
            false,
        )
        .unwrap()
        .unwrap();
    store
        .claim_idempotency("old", "dec_1", NOW, NOW.saturating_add(Span::from_secs(1)))
        .unwrap();
    store
        .claim_idempotency(
            "live",
            "dec_2",
            NOW,
            NOW.saturating_add(Span::from_secs(600)),
        )
        .unwrap();
    ended_and_live_cooldowns(&store, minute);
    // Never settled: its resource claim lapsed at NOW.
    let abandoned = ReservationRequest {
        expires_at: NOW,
        ..reservation(
            "r0",
            vec![],
            vec![ResourceClaim {
                name: "memory_mb".into(),
                amount: 10,
                capacity: 100,
            }],
        )
    };
    store.reserve(&abandoned, NOW, false).unwrap().unwrap();
    let later = NOW.saturating_add(Span::from_secs(30));
    let cutoffs = PruneBefore {
        ended_ms: later.millis(),
        unsettled_ms: NOW.millis(),
    };
    assert_eq!(store.prune_expired(cutoffs).unwrap(), 3);
    assert!(store.reservation_open("r0").unwrap());
    let cutoffs = PruneBefore {
        unsettled_ms: later.millis(),
        ..cutoffs
    };
    assert_eq!(store.prune_expired(cutoffs).unwrap(), 2);
    assert_eq!(store.prune_expired(cutoffs).unwrap(), 0);
    assert_eq!(
        store.settle("r0", Amounts::default(), later).unwrap(),
        Settled::Unknown
    );
    // Read as of the epoch, so that an ended cooldown left in the table would show.
    let cooldowns = store.cooldowns(Timestamp(0)).unwrap();
    assert_eq!(cooldowns.len(), 1);
    assert_eq!(cooldowns[0].reason, "live");
    // What stayed still counts: 95 more do not fit in the current window or the run's.
    for key in ["current", "run"] {
        assert!(store
            .reserve(
                &reservation("r2", vec![charge(key, 95, 100)], vec![]),
                later,
                false
            )
            .unwrap()
            .is_err());
    }
    assert_eq!(
        store
            .claim_idempotency("live", "dec_3", later, later.saturating_add(minute))
            .unwrap(),
        Some("dec_2".to_string())
    );
    // Settling into the pruned window leaves it gone; the others take the settlement.
    let actual = Amounts {
        tokens: 1,
        requests: 1,
        ..Default::default()
    };
    assert_eq!(store.settle("r1", actual, later).unwrap(), Settled::Settled);
    let conn = rusqlite::Connection::open(dir.path().join("gavel.db")).unwrap();
    let windows: Vec<(String, i64)> = conn
        .prepare("SELECT key, tokens FROM budget_windows ORDER BY key")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        windows,
        [("current".to_string(), 1), ("run".to_string(), 1)]
    );
    // Expired keys among 120,000 live ones go at the first prune.
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 120000)
         INSERT INTO idempotency (key, decision_id, expires_at)
             SELECT 'a' || i, 'dec_x', 9000000000000 FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
         INSERT INTO idempotency (key, decision_id, expires_at) SELECT 'k' || i, 'dec_x', 0 FROM n;",
    )
    .unwrap();
    assert_eq!(store.prune_expired(cutoffs).unwrap(), 10);
    let keys: i64 = conn
        .query_row("SELECT COUNT(*) FROM idempotency", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 120_001, "the live keys stay");
}

/// Cooldowns that ended are listed until their end is noted as recorded; one in force is not.
#[test]
fn ended_cooldowns_are_listed_until_their_end_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
    ended_and_live_cooldowns(&store, Span::from_secs(60));
    let ended = store.ended_cooldowns_unrecorded(NOW).unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].1.reason, "ended");
    store.cooldown_end_recorded(ended[0].0).unwrap();
    assert!(store.ended_cooldowns_unrecorded(NOW).unwrap().is_empty());
    // The other, once it ends.
    let later = store
        .ended_cooldowns_unrecorded(NOW.saturating_add(Span::from_secs(60)))
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].1.reason, "live");
}

/// A principal's cooldown that ended at NOW (reason `ended`) and one that ends `live_for` later
/// (reason `live`).
fn ended_and_live_cooldowns(store: &SqliteStore, live_for: Span) {
    for (until, reason) in [(NOW, "ended"), (NOW.saturating_add(live_for), "live")] {
        store
            .start_cooldown(&Cooldown {
                scope: Scope::Principal("p".into()),
                code: "abuse.cooldown".into(),
                reason: reason.into(),
                since: NOW,
                until,
            })
            .unwrap();
    }
}

/// Report claims are taken all or none, refuse a second claimant, and once given back can be
/// taken again (what lets an outcome that was not recorded be reported again).
#[test]
fn report_claims_are_all_or_none_and_can_be_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
    let keys = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        store.claim_reports(&keys(&["a", "b"]), "first").unwrap(),
        None
    );
    assert_eq!(
        store.claim_reports(&keys(&["c", "b"]), "second").unwrap(),
        Some("b".to_string())
    );
    // All or none: `c` was not taken by the refused claim.
    assert_eq!(store.claim_reports(&keys(&["c"]), "third").unwrap(), None);
    store.release_reports(&keys(&["b", "c"])).unwrap();
    assert_eq!(
        store.claim_reports(&keys(&["b", "c"]), "fourth").unwrap(),
        None
    );
    assert_eq!(
        store.claim_reports(&keys(&["a"]), "fifth").unwrap(),
        Some("a".to_string()),
        "a claim not given back still holds"
    );
}
