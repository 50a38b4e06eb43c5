//! Repeatable cost of injection scoring, for instruction counting under callgrind (the shared
//! machine makes wall-clock figures move by 2x; instruction counts do not).
//!
//! ```text
//! cargo build --release -p gavel-scan --example injcost
//! for n in 1 201; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \
//!     target/release/examples/injcost ascii direct $n; done
//! # instructions per call = (Ir(201) - Ir(1)) / 200
//! ```
//!
//! Texts (1 KiB each, from `../shared/corpora` or `$GAVEL_CORPORA`): `ascii` is the first KiB of
//! the arena-hard prompts concatenated (the criterion bench's input: a task statement with code
//! and short lines); `unicode` is the first KiB of the arena-hard prompts that contain non-ASCII
//! characters, most non-ASCII first; `email` is the first KiB of the BIPIA e-mails concatenated
//! (prose). Modes: `direct`, `indirect`. Prints the score so the work cannot be optimised away.

#[path = "common/corpus.rs"]
mod corpus;

use gavel_scan::{ContentRole, ScanConfig, Scanners};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "ascii".into());
    let mode = args.next().unwrap_or_else(|| "direct".into());
    let iters: u32 = args.next().map_or(Ok(1), |n| n.parse())?;
    let dir = std::env::var("GAVEL_CORPORA").unwrap_or_else(|_| "../shared/corpora".into());
    let prompts = corpus::arena_hard_prompts(&dir)?;
    let text = match which.as_str() {
        "ascii" => prompts.join("\n\n"),
        "unicode" => {
            let non_ascii = |p: &String| p.chars().filter(|c| !c.is_ascii()).count();
            let mut v: Vec<&String> = prompts.iter().filter(|p| !p.is_ascii()).collect();
            v.sort_by_key(|p| std::cmp::Reverse(non_ascii(p)));
            v.into_iter().cloned().collect::<Vec<_>>().join("\n\n")
        }
        "email" => {
            let raw =
                std::fs::read_to_string(format!("{dir}/benign/bipia_email_contexts_train.jsonl"))?;
            let mut v = Vec::new();
            for line in raw.lines().filter(|l| !l.trim().is_empty()) {
                let e: serde_json::Value = serde_json::from_str(line)?;
                if let Some(c) = e.get("context").and_then(|c| c.as_str()) {
                    v.push(c.to_owned());
                }
            }
            v.join("\n\n")
        }
        other => return Err(format!("unknown text `{other}` (ascii|unicode|email)").into()),
    };
    let kb = corpus::prefix(&text, 1024);
    let role = match mode.as_str() {
        "direct" => ContentRole::User,
        "indirect" => ContentRole::Retrieved,
        other => return Err(format!("unknown mode `{other}` (direct|indirect)").into()),
    };
    let s = Scanners::new(&ScanConfig {
        secrets: false,
        pii: false,
        ..ScanConfig::default()
    })?;
    let mut out = Vec::new();
    let mut total = 0.0f32;
    for _ in 0..iters {
        out.clear();
        total += s.scan(kb, role, &mut out).injection_score;
    }
    println!(
        "{which} {mode}: {} bytes, {} non-ASCII chars, score {:.3}",
        kb.len(),
        kb.chars().filter(|c| !c.is_ascii()).count(),
        total / iters as f32
    );
    Ok(())
}
