//! Scores texts for injection and prints score and evidence, for tuning and diagnostics.
//!
//! ```text
//! cargo run --release -p gavel-scan --example injscore -- [--indirect] [--below X] FILE.json
//! ```
//!
//! `FILE.json` is a JSON list of strings. Prints one line per text: index, score, the features
//! with their weights and the evidence text (normalised spans are mapped back to the original),
//! then the first 80 characters of the text. `--below X` prints only texts scoring below `X`.

use gavel_scan::{ContentRole, ScanConfig, Scanners};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let mut role = ContentRole::User;
    let mut below = f32::INFINITY;
    let mut above = f32::NEG_INFINITY;
    let mut file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--indirect" => role = ContentRole::Retrieved,
            "--below" => below = args.next().ok_or("--below needs a value")?.parse()?,
            "--above" => above = args.next().ok_or("--above needs a value")?.parse()?,
            _ => file = Some(a),
        }
    }
    let file = file.ok_or("usage: injscore [--indirect] [--below X] [--above X] FILE.json")?;
    let texts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(file)?)?;
    let s = Scanners::new(&ScanConfig::default())?;
    let mut flagged = 0;
    for (i, t) in texts.iter().enumerate() {
        let r = s.injection(t, role);
        flagged += usize::from(r.score >= s.config().injection_threshold);
        if r.score >= below || r.score < above {
            continue;
        }
        let ev: Vec<String> = r
            .evidence
            .iter()
            .map(|e| {
                let frag: String = t
                    .get(e.span.clone())
                    .unwrap_or("?")
                    .chars()
                    .take(40)
                    .collect();
                format!("{}:{:.2}:{:?}", &e.feature.rule_id()[10..], e.weight, frag)
            })
            .collect();
        let head: String = t.chars().take(80).collect::<String>().replace('\n', " ");
        println!("{i} {:.2} [{}] {head}", r.score, ev.join(" "));
    }
    eprintln!("flagged {flagged}/{}", texts.len());
    Ok(())
}
