//! Quality bench for the scanners, on third-party data.
//!
//! ```text
//! cargo run --release -p gavel-scan --example scanbench -- [--corpora DIR] [--data DIR] [--verbose]
//! ```
//!
//! - `--corpora` (default `../shared/corpora`): the evaluation corpora (see their README).
//! - `--data` (default `target/scanbench`): the labelled PII and secrets sets written by
//!   `bench/scanners/run.sh` (Faker, seeded). Without them the PII and secrets tables are skipped.
//!   gavel's figures are also written there as `gavel.json` for the peer comparison.
//!   With `pyrit_jailbreaks.json` there too (written by `bench/scanners/pyrit_jailbreaks.py`),
//!   a second jailbreak corpus is scored, with the split that script made.
//! - `--verbose`: prints the first 60 characters of missed attacks and false positives of the
//!   *training* split, for tuning. Held-out texts are never printed.
//!
//! Every corpus is split by a hash of the text: 30% held out, reported separately.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use gavel_scan::{ContentRole, Finding, FindingKind, ScanConfig, Scanners};
use serde_json::Value;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let mut corpora = PathBuf::from("../shared/corpora");
    let mut data = PathBuf::from("target/scanbench");
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--corpora" => corpora = args.next().ok_or("--corpora needs a value")?.into(),
            "--data" => data = args.next().ok_or("--data needs a value")?.into(),
            "--verbose" => verbose = true,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let scanners = Scanners::new(&ScanConfig::default())?;
    let mut summary = serde_json::Map::new();

    injection_direct(&scanners, &corpora, verbose, &mut summary)?;
    let pyrit_path = data.join("pyrit_jailbreaks.json");
    if pyrit_path.exists() {
        injection_second_corpus(&scanners, &pyrit_path, verbose, &mut summary)?;
    } else {
        println!(
            "\n(second jailbreak corpus skipped: {} missing; run bench/scanners/run.sh)",
            pyrit_path.display()
        );
    }
    injection_indirect(&scanners, &corpora, verbose, &mut summary)?;
    let pii_path = data.join("pii.jsonl");
    if pii_path.exists() {
        pii(&scanners, &pii_path, verbose, &mut summary)?;
    } else {
        println!(
            "\n(PII table skipped: {} missing; run bench/scanners/run.sh)",
            pii_path.display()
        );
    }
    let secrets_path = data.join("secrets.jsonl");
    if secrets_path.exists() {
        secrets(&scanners, &secrets_path, &corpora, verbose, &mut summary)?;
    } else {
        println!(
            "\n(secrets table skipped: {} missing; run bench/scanners/run.sh)",
            secrets_path.display()
        );
    }
    if data.exists() {
        std::fs::write(
            data.join("gavel.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
    }
    Ok(())
}

/// FNV-1a: a stable split that does not depend on file order.
fn held_out(text: &str) -> bool {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h % 10 < 3
}

fn split_name(held: bool) -> &'static str {
    if held {
        "held-out"
    } else {
        "train"
    }
}

fn snippet(s: &str) -> String {
    s.chars().take(60).collect::<String>().replace('\n', " ")
}

#[derive(Default, Clone, Copy)]
struct Rate {
    hit: usize,
    total: usize,
}

impl Rate {
    fn add(&mut self, hit: bool) {
        self.total += 1;
        self.hit += usize::from(hit);
    }
    fn pct(self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.hit as f64 / self.total as f64
        }
    }
    fn show(self) -> String {
        format!("{:6.2}% ({}/{})", self.pct(), self.hit, self.total)
    }
}

fn read_json(path: &Path) -> Res<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn read_jsonl(path: &Path) -> Res<Vec<Value>> {
    std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

fn injection_direct(
    s: &Scanners,
    corpora: &Path,
    verbose: bool,
    summary: &mut serde_json::Map<String, Value>,
) -> Res<()> {
    let attacks = strings(&read_json(
        &corpora.join("attacks/inthewild_jailbreaks.json"),
    )?);
    let benign: Vec<String> = read_jsonl(&corpora.join("benign/arena_hard_v0.1_questions.jsonl"))?
        .iter()
        .filter_map(|v| v.get("prompt").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let mut det = [Rate::default(); 2];
    let mut fp = [Rate::default(); 2];
    let mut time = 0.0f64;
    let mut bytes = 0usize;
    let mut out = Vec::new();
    for a in &attacks {
        let held = held_out(a);
        out.clear();
        let t = Instant::now();
        let o = s.scan(a, ContentRole::User, &mut out);
        time += t.elapsed().as_secs_f64();
        bytes += a.len();
        let hit = o.injection_score >= s.config().injection_threshold;
        det[usize::from(held)].add(hit);
        if verbose && !held && !hit {
            println!("miss {:.2} {}", o.injection_score, snippet(a));
        }
    }
    for b in &benign {
        let held = held_out(b);
        out.clear();
        let t = Instant::now();
        let o = s.scan(b, ContentRole::User, &mut out);
        time += t.elapsed().as_secs_f64();
        bytes += b.len();
        let hit = o.injection_score >= s.config().injection_threshold;
        fp[usize::from(held)].add(hit);
        if verbose && !held && hit {
            let r = s.injection(b, ContentRole::User);
            let feats: Vec<&str> = r.evidence.iter().map(|e| e.feature.rule_id()).collect();
            println!("fp {:.2} {} {:?}", o.injection_score, snippet(b), feats);
        }
    }
    if verbose {
        let mut top: Vec<(f32, &String)> = benign
            .iter()
            .filter(|b| !held_out(b))
            .map(|b| (s.injection(b, ContentRole::User).score, b))
            .collect();
        top.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (sc, b) in top.iter().take(8) {
            println!("top benign {sc:.2} {}", snippet(b));
        }
    }
    println!(
        "\n## Injection, direct (role user, threshold {})",
        s.config().injection_threshold
    );
    println!("| split | detection on inthewild_jailbreaks | false positives on arena-hard |");
    println!("|---|---|---|");
    for held in [false, true] {
        let i = usize::from(held);
        println!(
            "| {} | {} | {} |",
            split_name(held),
            det[i].show(),
            fp[i].show()
        );
    }
    let n = attacks.len() + benign.len();
    println!(
        "full scan (secrets + PII + injection) per prompt: mean {:.1} us, {:.0} MB/s",
        time * 1e6 / n as f64,
        bytes as f64 / time / 1e6
    );
    for held in [false, true] {
        let i = usize::from(held);
        summary.insert(
            format!("injection_direct_{}", split_name(held)),
            serde_json::json!({"detection": det[i].pct(), "false_positive": fp[i].pct()}),
        );
    }
    Ok(())
}

/// Detection on PyRIT's jailbreak templates (see bench/scanners/pyrit_jailbreaks.py, which also
/// splits them, by clusters of near-copies). Training figures by template folder; the held-out
/// split only as a whole, so that no single held-out text can be read off a small cell.
/// `--verbose` prints training misses only.
fn injection_second_corpus(
    s: &Scanners,
    path: &Path,
    verbose: bool,
    summary: &mut serde_json::Map<String, Value>,
) -> Res<()> {
    let mut train_by_group: BTreeMap<String, Rate> = BTreeMap::new();
    let mut all = [Rate::default(); 2];
    let mut out = Vec::new();
    let Value::Array(prompts) = read_json(path)? else {
        return Err(format!("{}: expected a JSON list", path.display()).into());
    };
    for p in &prompts {
        let (Some(text), Some(group), Some(held)) = (
            p.get("text").and_then(Value::as_str),
            p.get("group").and_then(Value::as_str),
            p.get("held_out").and_then(Value::as_bool),
        ) else {
            return Err(format!(
                "{}: every entry needs `text`, `group` and `held_out`",
                path.display()
            )
            .into());
        };
        out.clear();
        let score = s.scan(text, ContentRole::User, &mut out).injection_score;
        let hit = score >= s.config().injection_threshold;
        all[usize::from(held)].add(hit);
        if !held {
            train_by_group.entry(group.to_owned()).or_default().add(hit);
            if verbose && !hit {
                println!("miss {score:.2} [{group}] {}", snippet(text));
            }
        }
    }
    println!("\n## Injection, direct: second corpus (PyRIT jailbreak templates, role user)");
    println!("| split | template folder | detection |");
    println!("|---|---|---|");
    for (group, rate) in &train_by_group {
        println!("| train | {group} | {} |", rate.show());
    }
    println!("| train | all | {} |", all[0].show());
    println!("| held-out | all | {} |", all[1].show());
    for held in [false, true] {
        summary.insert(
            format!("injection_direct_pyrit_{}", split_name(held)),
            serde_json::json!({"detection": all[usize::from(held)].pct()}),
        );
    }
    Ok(())
}

/// Splits an e-mail near its middle at a sentence end.
fn middle(ctx: &str) -> usize {
    let half = ctx.len() / 2;
    let after = ctx
        .get(half..)
        .and_then(|t| t.find(". "))
        .map(|i| half + i + 2);
    match after {
        Some(i) if i < ctx.len() => i,
        _ => (0..=half)
            .rev()
            .find(|&i| ctx.is_char_boundary(i))
            .unwrap_or(0),
    }
}

fn injection_indirect(
    s: &Scanners,
    corpora: &Path,
    verbose: bool,
    summary: &mut serde_json::Map<String, Value>,
) -> Res<()> {
    let mut attacks: Vec<(String, String)> = Vec::new();
    for file in [
        "bipia_text_attacks_train.json",
        "bipia_code_attacks_train.json",
    ] {
        let v = read_json(&corpora.join("attacks").join(file))?;
        if let Value::Object(o) = v {
            for (cat, list) in o {
                for a in strings(&list) {
                    attacks.push((cat.clone(), a));
                }
            }
        }
    }
    let emails: Vec<String> = read_jsonl(&corpora.join("benign/bipia_email_contexts_train.jsonl"))?
        .iter()
        .filter_map(|v| v.get("context").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let threshold = s.config().injection_threshold;
    let mut out = Vec::new();
    let mut score = |text: &str| {
        out.clear();
        s.scan(text, ContentRole::Retrieved, &mut out)
            .injection_score
    };
    // [split][position]
    let mut det = [[Rate::default(); 3]; 2];
    let mut per_cat: BTreeMap<String, Rate> = BTreeMap::new();
    let mut missed_train: BTreeMap<String, f32> = BTreeMap::new();
    for (cat, a) in &attacks {
        let held = held_out(a);
        for e in &emails {
            let m = middle(e);
            let texts = [
                format!("{a} {e}"),
                format!(
                    "{} {a} {}",
                    e.get(..m).unwrap_or_default(),
                    e.get(m..).unwrap_or_default()
                ),
                format!("{e} {a}"),
            ];
            for (pos, t) in texts.iter().enumerate() {
                let sc = score(t);
                let hit = sc >= threshold;
                det[usize::from(held)][pos].add(hit);
                per_cat.entry(cat.clone()).or_default().add(hit);
                if !hit && !held {
                    let entry = missed_train.entry(a.clone()).or_insert(0.0);
                    *entry = entry.max(sc);
                }
            }
        }
    }
    let mut fp = [Rate::default(); 2];
    for e in &emails {
        let held = held_out(e);
        let hit = score(e) >= threshold;
        fp[usize::from(held)].add(hit);
        if verbose && hit && !held {
            let r = s.injection(e, ContentRole::Retrieved);
            let feats: Vec<&str> = r.evidence.iter().map(|e| e.feature.rule_id()).collect();
            println!("email fp {:.2} {} {:?}", r.score, snippet(e), feats);
        }
    }
    if verbose {
        for (a, sc) in &missed_train {
            println!("bipia miss (max {sc:.2}) {}", snippet(a));
        }
    }
    println!("\n## Injection, indirect (BIPIA attacks in BIPIA e-mails, role retrieved)");
    println!("| split (by attack) | start | middle | end | all |");
    println!("|---|---|---|---|---|");
    for held in [false, true] {
        let r = det[usize::from(held)];
        let all = Rate {
            hit: r.iter().map(|x| x.hit).sum(),
            total: r.iter().map(|x| x.total).sum(),
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            split_name(held),
            r[0].show(),
            r[1].show(),
            r[2].show(),
            all.show()
        );
        summary.insert(
            format!("injection_indirect_{}", split_name(held)),
            serde_json::json!({"detection": all.pct()}),
        );
    }
    println!("| split (by e-mail) | false positives on clean e-mails |");
    println!("|---|---|");
    for held in [false, true] {
        println!(
            "| {} | {} |",
            split_name(held),
            fp[usize::from(held)].show()
        );
    }
    println!("\nper attack category (both splits):");
    for (cat, r) in &per_cat {
        println!("  {cat:40} {}", r.show());
    }
    Ok(())
}

/// gavel rule id -> the entity names used in the labelled set.
fn entity_of(f: &Finding) -> Option<&'static str> {
    Some(match f.rule_id {
        "pii.email" => "EMAIL",
        "pii.phone" => "PHONE",
        "pii.payment_card" => "CARD",
        "pii.iban" => "IBAN",
        "pii.us_ssn" => "SSN",
        "pii.ipv4" => "IPV4",
        "pii.ipv6" => "IPV6",
        "pii.date_of_birth" => "DOB",
        _ => return None,
    })
}

#[derive(Default, Clone, Copy)]
struct Prf {
    tp: usize,
    fp: usize,
    fneg: usize,
}

impl Prf {
    fn p(self) -> f64 {
        if self.tp + self.fp == 0 {
            0.0
        } else {
            self.tp as f64 / (self.tp + self.fp) as f64
        }
    }
    fn r(self) -> f64 {
        if self.tp + self.fneg == 0 {
            0.0
        } else {
            self.tp as f64 / (self.tp + self.fneg) as f64
        }
    }
}

fn pii(
    s: &Scanners,
    path: &Path,
    verbose: bool,
    summary: &mut serde_json::Map<String, Value>,
) -> Res<()> {
    let rows = read_jsonl(path)?;
    let mut stats: [BTreeMap<String, Prf>; 2] = Default::default();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut time = 0.0f64;
    let mut shown = 0;
    for row in &rows {
        let text = row.get("text").and_then(Value::as_str).unwrap_or_default();
        let held = held_out(text);
        let gold: Vec<(String, usize, usize)> = row
            .get("entities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        Some((
                            e.get("type")?.as_str()?.to_owned(),
                            usize::try_from(e.get("start")?.as_u64()?).ok()?,
                            usize::try_from(e.get("end")?.as_u64()?).ok()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.clear();
        let t = Instant::now();
        s.scan(text, ContentRole::Output, &mut out);
        time += t.elapsed().as_secs_f64();
        bytes += text.len();
        let st = &mut stats[usize::from(held)];
        let pred: Vec<(&str, usize, usize)> = out
            .iter()
            .filter(|f| f.kind == FindingKind::Pii)
            .filter_map(|f| Some((entity_of(f)?, f.span.start, f.span.end)))
            .collect();
        for &(ty, ps, pe) in &pred {
            let ok = gold
                .iter()
                .any(|(gt, gs, ge)| gt == ty && ps < *ge && *gs < pe);
            let e = st.entry(ty.to_owned()).or_default();
            if ok {
                e.tp += 1;
            } else {
                e.fp += 1;
                if verbose && !held && shown < 40 {
                    shown += 1;
                    println!("pii fp {ty}: {:?}", text.get(ps..pe).unwrap_or_default());
                }
            }
        }
        for (gt, gs, ge) in &gold {
            let found = pred
                .iter()
                .any(|&(ty, ps, pe)| ty == gt && ps < *ge && *gs < pe);
            if !found {
                st.entry(gt.clone()).or_default().fneg += 1;
                if verbose && !held && shown < 40 {
                    shown += 1;
                    println!(
                        "pii miss {gt}: {:?}",
                        text.get(*gs..*ge).unwrap_or_default()
                    );
                }
            }
        }
    }
    println!(
        "\n## PII (Faker-generated labelled set, {} texts, span-overlap match)",
        rows.len()
    );
    println!("| entity | train P | train R | held-out P | held-out R |");
    println!("|---|---|---|---|---|");
    let mut entities: Vec<&String> = stats[0].keys().chain(stats[1].keys()).collect();
    entities.sort();
    entities.dedup();
    let mut json = serde_json::Map::new();
    for e in entities {
        let a = stats[0].get(e).copied().unwrap_or_default();
        let b = stats[1].get(e).copied().unwrap_or_default();
        println!(
            "| {e} | {:.3} | {:.3} | {:.3} | {:.3} |",
            a.p(),
            a.r(),
            b.p(),
            b.r()
        );
        let all = Prf {
            tp: a.tp + b.tp,
            fp: a.fp + b.fp,
            fneg: a.fneg + b.fneg,
        };
        json.insert(
            e.clone(),
            serde_json::json!({"precision": all.p(), "recall": all.r()}),
        );
    }
    // Throughput on the same texts, repeated so that the timer sees more than noise.
    let t = Instant::now();
    let mut reps = 0;
    while t.elapsed().as_secs_f64() < 1.0 {
        for row in &rows {
            let text = row.get("text").and_then(Value::as_str).unwrap_or_default();
            out.clear();
            s.scan(text, ContentRole::Output, &mut out);
        }
        reps += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let per_text_us = secs * 1e6 / (reps * rows.len()) as f64;
    let mbps = (bytes * reps) as f64 / secs / 1e6;
    println!("gavel full scan on these texts: {per_text_us:.2} us/text, {mbps:.0} MB/s (first pass {:.0} MB/s)", bytes as f64 / time / 1e6);
    summary.insert("pii".into(), Value::Object(json));
    summary.insert("pii_us_per_text".into(), serde_json::json!(per_text_us));
    Ok(())
}

fn secrets(
    s: &Scanners,
    path: &Path,
    corpora: &Path,
    verbose: bool,
    summary: &mut serde_json::Map<String, Value>,
) -> Res<()> {
    let rows = read_jsonl(path)?;
    let mut per_rule: BTreeMap<String, [Rate; 2]> = BTreeMap::new();
    let mut out = Vec::new();
    let mut secs = 0.0f64;
    for row in &rows {
        let text = row.get("text").and_then(Value::as_str).unwrap_or_default();
        let kind = row.get("kind").and_then(Value::as_str).unwrap_or_default();
        let (Some(gs), Some(ge)) = (
            row.get("start")
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok()),
            row.get("end")
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok()),
        ) else {
            continue;
        };
        out.clear();
        let t = Instant::now();
        s.scan(text, ContentRole::Output, &mut out);
        secs += t.elapsed().as_secs_f64();
        let hit = out
            .iter()
            .any(|f| f.kind == FindingKind::Secret && f.span.start < ge && gs < f.span.end);
        per_rule.entry(kind.to_owned()).or_default()[usize::from(held_out(text))].add(hit);
        if verbose && !hit {
            println!("secret miss {kind}: {}", snippet(text));
        }
    }
    println!("\n## Secrets (generated fakes, recall: a secret finding overlaps the planted key)");
    println!("| kind | train | held-out |");
    println!("|---|---|---|");
    let mut all = [Rate::default(); 2];
    for (k, r) in &per_rule {
        println!("| {k} | {} | {} |", r[0].show(), r[1].show());
        for i in 0..2 {
            all[i].hit += r[i].hit;
            all[i].total += r[i].total;
        }
    }
    println!("| all | {} | {} |", all[0].show(), all[1].show());
    let benign: Vec<String> = read_jsonl(&corpora.join("benign/arena_hard_v0.1_questions.jsonl"))?
        .iter()
        .filter_map(|v| v.get("prompt").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let mut fp_prompts = 0;
    let mut fp_rules: BTreeMap<&str, usize> = BTreeMap::new();
    let mut pii_prompts = 0;
    let mut pii_rules: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &benign {
        out.clear();
        s.scan(b, ContentRole::Output, &mut out);
        let secret: Vec<&Finding> = out
            .iter()
            .filter(|f| f.kind == FindingKind::Secret)
            .collect();
        if !secret.is_empty() {
            fp_prompts += 1;
        }
        for f in &secret {
            *fp_rules.entry(f.rule_id).or_default() += 1;
            if verbose {
                println!(
                    "arena secret {}: {:?}",
                    f.rule_id,
                    b.get(f.span.clone()).map(snippet)
                );
            }
        }
        let pii: Vec<&Finding> = out.iter().filter(|f| f.kind == FindingKind::Pii).collect();
        if !pii.is_empty() {
            pii_prompts += 1;
        }
        for f in &pii {
            *pii_rules.entry(f.rule_id).or_default() += 1;
            if verbose {
                println!(
                    "arena pii {}: {:?}",
                    f.rule_id,
                    b.get(f.span.clone()).map(snippet)
                );
            }
        }
    }
    println!(
        "arena-hard prompts with a secret finding: {fp_prompts}/{} {:?}",
        benign.len(),
        fp_rules
    );
    println!(
        "arena-hard prompts with a PII finding (not labelled; inspect with --verbose): {pii_prompts}/{} {:?}",
        benign.len(),
        pii_rules
    );
    summary.insert(
        "secrets".into(),
        serde_json::json!({
            "recall_train": all[0].pct(),
            "recall_held_out": all[1].pct(),
            "recall": Rate { hit: all[0].hit + all[1].hit, total: all[0].total + all[1].total }.pct(),
            "arena_fp_prompts": fp_prompts,
            "us_per_text": secs * 1e6 / rows.len().max(1) as f64,
        }),
    );
    Ok(())
}
