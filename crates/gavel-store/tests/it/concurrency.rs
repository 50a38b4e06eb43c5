//! Property: under random concurrent reserve/settle sequences from several threads, no budget
//! window is ever exceeded and no reservation leaks.

use std::sync::Arc;

use proptest::prelude::*;

use gavel_engine::*;

use crate::*;

const LIMIT: u64 = 1_000;
const KEYS: [&str; 3] = ["w0", "w1", "w2"];

/// One thread's script: reservations of `tokens` on a subset of windows, each settled (with
/// `actual`) or not.
#[derive(Debug, Clone)]
struct Op {
    tokens: u64,
    windows: Vec<usize>,
    settle_with: Option<u64>,
}

fn op() -> impl Strategy<Value = Op> {
    (
        1u64..400,
        prop::sample::subsequence(vec![0usize, 1, 2], 1..=3),
        prop::option::of(0u64..400),
    )
        .prop_map(|(tokens, windows, settle_with)| Op {
            tokens,
            windows,
            settle_with,
        })
}

fn run(
    state: Arc<dyn RuntimeState>,
    scripts: Vec<Vec<Op>>,
) -> Vec<(String, Vec<usize>, u64, bool)> {
    let threads: Vec<_> = scripts
        .into_iter()
        .enumerate()
        .map(|(t, script)| {
            let state = state.clone();
            std::thread::spawn(move || {
                let mut log = Vec::new();
                for (i, op) in script.into_iter().enumerate() {
                    let id = format!("t{t}-{i}");
                    let windows = op
                        .windows
                        .iter()
                        .map(|&w| charge(KEYS[w], op.tokens, LIMIT))
                        .collect();
                    let granted = state
                        .reserve(&reservation(&id, windows, vec![]), NOW, false)
                        .unwrap()
                        .is_ok();
                    let mut final_tokens = op.tokens;
                    let mut settled = false;
                    if granted {
                        if let Some(actual) = op.settle_with {
                            let amounts = Amounts {
                                tokens: actual,
                                requests: 1,
                                ..Default::default()
                            };
                            settled = state.settle(&id, amounts, NOW).unwrap() == Settled::Settled;
                            assert!(settled, "a granted reservation settles");
                            final_tokens = actual;
                        }
                        log.push((id, op.windows.clone(), final_tokens, settled));
                    }
                }
                log
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn windows_never_overflow_and_nothing_leaks(scripts in prop::collection::vec(prop::collection::vec(op(), 1..25), 2..5)) {
        for b in backends() {
            let state: Arc<dyn RuntimeState> = Arc::from(b.state);
            let log = run(state.clone(), scripts.clone());
            // Exactness: each window's usage equals the sum of what granted reservations hold
            // (the estimate, or the actual once settled). Grants never overflow, so unless
            // settlement reported more than was estimated, the sum is within the limit.
            for (w, key) in KEYS.iter().enumerate() {
                let held: u64 = log.iter().filter(|(_, ws, _, _)| ws.contains(&w)).map(|(_, _, t, _)| *t).sum();
                let grants_only: u64 = log.iter().filter(|(_, ws, _, settled)| ws.contains(&w) && !settled).map(|(_, _, t, _)| *t).sum();
                prop_assert!(grants_only <= LIMIT, "{}: unsettled grants {} exceed {}", b.name, grants_only, LIMIT);
                // Probe the window: the room left must be exactly LIMIT - held.
                let room = LIMIT.saturating_sub(held);
                if room > 0 {
                    let fits = state.reserve(&reservation("probe", vec![charge(key, room, LIMIT)], vec![]), NOW, true).unwrap();
                    prop_assert!(fits.is_ok(), "{}: {} tokens should still fit in {}", b.name, room, key);
                }
                let over = state.reserve(&reservation("probe", vec![charge(key, room + 1, LIMIT)], vec![]), NOW, true).unwrap();
                prop_assert!(over.is_err(), "{}: {} tokens should not fit in {}", b.name, room + 1, key);
            }
            // No leak: every settled reservation is gone; every unsettled one still settles once.
            for (id, _, _, settled) in &log {
                let again = state.settle(id, Amounts::default(), NOW).unwrap();
                prop_assert_eq!(again == Settled::Settled, !settled, "{}: reservation {}", b.name, id);
            }
        }
    }
}

/// Many threads race for the last room in one window: exactly the ones that fit win.
#[test]
fn a_race_for_the_last_room_has_exactly_as_many_winners_as_fit() {
    for b in backends() {
        let state: Arc<dyn RuntimeState> = Arc::from(b.state);
        let scripts: Vec<Vec<Op>> = (0..8)
            .map(|_| {
                vec![
                    Op {
                        tokens: 100,
                        windows: vec![0],
                        settle_with: None
                    };
                    5
                ]
            })
            .collect();
        let log = run(state, scripts);
        assert_eq!(log.len(), (LIMIT / 100) as usize, "{}", b.name);
    }
}
