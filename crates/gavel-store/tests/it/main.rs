//! One suite, every backend: the in-memory state and SQLite must behave the same. A PostgreSQL
//! backend joins by adding one line to `backends()`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly by design"
)]

mod concurrency;
mod sqlite_only;

use gavel_contract::time::{Span, Timestamp};
use gavel_engine::*;

pub const NOW: Timestamp = Timestamp(1_795_348_800_000);

/// A backend under test, kept alive with whatever it needs (a temp dir for SQLite).
pub struct Backend {
    pub name: &'static str,
    pub state: Box<dyn RuntimeState>,
    _dir: Option<tempfile::TempDir>,
}

pub fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = gavel_store::SqliteStore::open(&dir.path().join("gavel.db")).unwrap();
    vec![
        Backend {
            name: "memory",
            state: Box::new(MemoryState::new()),
            _dir: None,
        },
        Backend {
            name: "sqlite",
            state: Box::new(sqlite),
            _dir: Some(dir),
        },
    ]
}

pub fn charge(key: &str, tokens: u64, limit: u64) -> WindowCharge {
    WindowCharge {
        key: key.to_string(),
        limits: WindowLimits {
            tokens: Some(limit),
            ..Default::default()
        },
        amounts: Amounts {
            tokens,
            requests: 1,
            ..Default::default()
        },
        resets_at: Some(NOW.saturating_add(Span::from_secs(60))),
    }
}

pub fn reservation(
    id: &str,
    windows: Vec<WindowCharge>,
    resources: Vec<ResourceClaim>,
) -> ReservationRequest {
    ReservationRequest {
        reservation_id: id.to_string(),
        windows,
        resources,
        expires_at: NOW.saturating_add(Span::from_secs(600)),
    }
}

#[test]
fn reserve_refuses_the_first_overflow_in_any_window_and_charges_nothing_then() {
    for b in backends() {
        let s = &*b.state;
        let two = |id: &str, tokens| {
            reservation(
                id,
                vec![charge("a", tokens, 100), charge("b", tokens, 50)],
                vec![],
            )
        };
        assert_eq!(
            s.reserve(&two("r1", 40), NOW, false).unwrap(),
            Ok(()),
            "{}",
            b.name
        );
        let refused = s.reserve(&two("r2", 40), NOW, false).unwrap().unwrap_err();
        match refused {
            Refusal::Window {
                key,
                measure,
                limit,
                used,
                requested,
                ..
            } => {
                assert_eq!(
                    (key.as_str(), measure, limit, used, requested),
                    ("b", Measure::Tokens, 50, 40, 40),
                    "{}",
                    b.name
                );
            }
            other => panic!("{}: {other:?}", b.name),
        }
        // "a" was not charged by the refused reservation: 60 more still fit there.
        assert_eq!(
            s.reserve(
                &reservation("r3", vec![charge("a", 60, 100)], vec![]),
                NOW,
                false
            )
            .unwrap(),
            Ok(()),
            "{}",
            b.name
        );
        assert!(
            s.reserve(
                &reservation("r4", vec![charge("a", 1, 100)], vec![]),
                NOW,
                false
            )
            .unwrap()
            .is_err(),
            "{}",
            b.name
        );
    }
}

#[test]
fn dry_run_reserve_records_nothing() {
    for b in backends() {
        let s = &*b.state;
        for i in 0..5 {
            assert_eq!(
                s.reserve(
                    &reservation(&format!("d{i}"), vec![charge("a", 100, 100)], vec![]),
                    NOW,
                    true
                )
                .unwrap(),
                Ok(()),
                "{}",
                b.name
            );
        }
        assert_eq!(
            s.settle("d0", Amounts::default(), NOW).unwrap(),
            Settled::Unknown,
            "{}",
            b.name
        );
    }
}

#[test]
fn settling_many_at_once_equals_settling_each() {
    for b in backends() {
        let s = &*b.state;
        for id in ["r1", "r2", "r3"] {
            s.reserve(
                &reservation(id, vec![charge("a", 30, 100)], vec![]),
                NOW,
                false,
            )
            .unwrap()
            .unwrap();
        }
        let used = |tokens| Amounts {
            tokens,
            requests: 1,
            ..Default::default()
        };
        let settled = s
            .settle_many(
                &[
                    ("r1".to_string(), used(5)),
                    ("unknown".to_string(), used(50)),
                    ("r2".to_string(), used(7)),
                ],
                NOW,
            )
            .unwrap();
        assert_eq!(
            settled,
            vec![Settled::Settled, Settled::Unknown, Settled::Settled],
            "{}",
            b.name
        );
        // Held now: 5 + 7 settled, 30 still reserved by r3: 42 of 100, so 58 fit and 59 not.
        let fits = |id: &str, tokens| {
            s.reserve(
                &reservation(id, vec![charge("a", tokens, 100)], vec![]),
                NOW,
                true,
            )
            .unwrap()
            .is_ok()
        };
        assert!(fits("probe1", 58), "{}", b.name);
        assert!(!fits("probe2", 59), "{}", b.name);
    }
}

#[test]
fn a_settlement_charges_at_most_twice_its_reservation() {
    for b in backends() {
        let s = &*b.state;
        s.reserve(
            &reservation("r1", vec![charge("a", 80, 1_000_000)], vec![]),
            NOW,
            false,
        )
        .unwrap()
        .unwrap();
        let claimed = Amounts {
            tokens: 1 << 53,
            requests: 1,
            ..Default::default()
        };
        assert_eq!(s.settle("r1", claimed, NOW).unwrap(), Settled::Settled);
        // 2 x 80 + 1,024 charged: room is left for the next call.
        let left = 1_000_000 - (2 * 80 + 1_024);
        let fits = |id: &str, tokens: u64| {
            s.reserve(
                &reservation(id, vec![charge("a", tokens, 1_000_000)], vec![]),
                NOW,
                false,
            )
            .unwrap()
            .is_ok()
        };
        assert!(!fits("r2", left + 1), "{}", b.name);
        assert!(fits("r3", left), "{}", b.name);
    }
}

#[test]
fn settle_replaces_the_estimate_and_only_once() {
    for b in backends() {
        let s = &*b.state;
        s.reserve(
            &reservation("r1", vec![charge("a", 80, 100)], vec![]),
            NOW,
            false,
        )
        .unwrap()
        .unwrap();
        let actual = Amounts {
            tokens: 10,
            requests: 1,
            ..Default::default()
        };
        assert_eq!(
            s.settle("r1", actual, NOW).unwrap(),
            Settled::Settled,
            "{}",
            b.name
        );
        assert_eq!(
            s.settle("r1", actual, NOW).unwrap(),
            Settled::Unknown,
            "{}",
            b.name
        );
        // 10 used, so 90 fit and 91 do not.
        assert!(
            s.reserve(
                &reservation("r2", vec![charge("a", 91, 100)], vec![]),
                NOW,
                false
            )
            .unwrap()
            .is_err(),
            "{}",
            b.name
        );
        assert_eq!(
            s.reserve(
                &reservation("r3", vec![charge("a", 90, 100)], vec![]),
                NOW,
                false
            )
            .unwrap(),
            Ok(()),
            "{}",
            b.name
        );
    }
}

#[test]
fn resources_are_released_by_settle_or_expiry() {
    for b in backends() {
        let s = &*b.state;
        let mem = |amount| {
            vec![ResourceClaim {
                name: "memory_mb".into(),
                amount,
                capacity: 100,
            }]
        };
        s.reserve(&reservation("r1", vec![], mem(70)), NOW, false)
            .unwrap()
            .unwrap();
        let refused = s
            .reserve(&reservation("r2", vec![], mem(40)), NOW, false)
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(refused, Refusal::Resource { in_use: 70, .. }),
            "{}: {refused:?}",
            b.name
        );
        s.settle("r1", Amounts::default(), NOW).unwrap();
        s.reserve(&reservation("r3", vec![], mem(100)), NOW, false)
            .unwrap()
            .unwrap();
        let after_ttl = NOW.saturating_add(Span::from_secs(601));
        s.reserve(&reservation("r4", vec![], mem(100)), after_ttl, false)
            .unwrap()
            .unwrap();
    }
}

#[test]
fn idempotency_claims_hold_until_expiry_or_release() {
    for b in backends() {
        let s = &*b.state;
        let until = NOW.saturating_add(Span::from_secs(60));
        assert_eq!(
            s.claim_idempotency("k", "dec_1", NOW, until).unwrap(),
            None,
            "{}",
            b.name
        );
        assert_eq!(
            s.claim_idempotency("k", "dec_2", NOW, until)
                .unwrap()
                .as_deref(),
            Some("dec_1"),
            "{}",
            b.name
        );
        assert_eq!(
            s.claim_idempotency("other", "dec_2", NOW, until).unwrap(),
            None,
            "{}",
            b.name
        );
        // Only the holder can give a key back.
        s.release_idempotency("k", "dec_2").unwrap();
        assert_eq!(
            s.claim_idempotency("k", "dec_3", NOW, until)
                .unwrap()
                .as_deref(),
            Some("dec_1"),
            "{}",
            b.name
        );
        s.release_idempotency("k", "dec_1").unwrap();
        assert_eq!(
            s.claim_idempotency("k", "dec_4", NOW, until).unwrap(),
            None,
            "{}",
            b.name
        );
        assert_eq!(
            s.claim_idempotency(
                "other",
                "dec_5",
                until,
                until.saturating_add(Span::from_secs(60))
            )
            .unwrap(),
            None,
            "{}: expired",
            b.name
        );
    }
}

#[test]
fn strikes_count_within_the_window_and_cooldowns_are_scoped() {
    for b in backends() {
        let s = &*b.state;
        let minute = 60_000;
        assert_eq!(s.add_strike("p", NOW, minute).unwrap(), 1);
        assert_eq!(
            s.add_strike("p", NOW.saturating_add(Span::from_secs(30)), minute)
                .unwrap(),
            2,
            "{}",
            b.name
        );
        assert_eq!(
            s.add_strike("p", NOW.saturating_add(Span::from_secs(70)), minute)
                .unwrap(),
            2,
            "{}: the first strike aged out",
            b.name
        );
        assert_eq!(s.add_strike("q", NOW, minute).unwrap(), 1, "{}", b.name);
        let until = NOW.saturating_add(Span::from_secs(60));
        s.start_cooldown(&Cooldown {
            scope: Scope::Principal("p".into()),
            code: "abuse.cooldown".into(),
            reason: "r".into(),
            since: NOW,
            until,
        })
        .unwrap();
        let view = s.view("d", "u", "p", None, NOW).unwrap();
        assert_eq!(view.cooldowns.len(), 1, "{}", b.name);
        assert!(
            s.view("d", "u", "q", None, NOW)
                .unwrap()
                .cooldowns
                .is_empty(),
            "{}",
            b.name
        );
        assert!(
            s.view("d", "u", "p", None, until)
                .unwrap()
                .cooldowns
                .is_empty(),
            "{}: expired",
            b.name
        );
    }
}
