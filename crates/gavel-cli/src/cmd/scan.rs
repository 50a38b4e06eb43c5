//! `gavel scan [FILE|-]`: the scanners from the command line. Bytes in, findings out; invalid
//! UTF-8 and NUL bytes are findings of their own, never a crash. Findings show rule, span and
//! confidence, never the matched text.

use std::io::Read;
use std::path::Path;

use serde_json::json;

use gavel_scan::{ContentRole, ScanConfig, Scanners};

use crate::context::out;
use crate::failure::{Failure, Outcome};

/// Files larger than this are refused: scan them in pieces.
const MAX_SCAN_BYTES: u64 = 256 * 1024 * 1024;

pub fn run(input: &Path, role: &str, threshold: f32, format: &str) -> Outcome {
    let role = match role {
        "user" => ContentRole::User,
        "system" => ContentRole::System,
        "retrieved" => ContentRole::Retrieved,
        "tool_output" => ContentRole::ToolOutput,
        "output" => ContentRole::Output,
        other => {
            return Err(Failure::usage(format!(
                "--role `{other}` is not one of user, system, retrieved, tool_output, output"
            )))
        }
    };
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Failure::usage("--threshold must be within [0, 1]"));
    }
    let json_output = match format {
        "text" => false,
        "json" => true,
        other => {
            return Err(Failure::usage(format!(
                "--format `{other}` is not text or json"
            )))
        }
    };
    let bytes = read(input)?;
    let scanners = Scanners::new(&ScanConfig {
        injection_threshold: threshold,
        ..ScanConfig::default()
    })
    .map_err(Failure::storage)?;
    let mut findings = Vec::new();
    let outcome = scanners.scan_bytes(&bytes, role, &mut findings);
    let found = !findings.is_empty();
    if json_output {
        let rows: Vec<_> = findings
            .iter()
            .map(|f| json!({ "kind": f.kind.as_str(), "rule_id": f.rule_id, "start": f.span.start, "end": f.span.end, "confidence": rounded(f.confidence) }))
            .collect();
        out!(
            "{}",
            json!({ "findings": rows, "injection_score": outcome.injection_score, "bytes": bytes.len() })
        );
    } else {
        for f in &findings {
            out!(
                "{}..{}\t{}\t{:.2}",
                f.span.start,
                f.span.end,
                f.rule_id,
                f.confidence
            );
        }
        crate::context::note(&format!(
            "{} finding(s) in {} bytes; injection score {:.2} (threshold {threshold})",
            findings.len(),
            bytes.len(),
            outcome.injection_score
        ));
    }
    if found {
        // Not a failure of the command: exit 1 says "something was found", for scripts and CI.
        return Err(Failure::invalid("findings at or above the threshold"));
    }
    Ok(())
}

fn read(input: &Path) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    let result = if input == Path::new("-") {
        std::io::stdin()
            .take(MAX_SCAN_BYTES + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(input).and_then(|f| f.take(MAX_SCAN_BYTES + 1).read_to_end(&mut bytes))
    };
    result.map_err(|e| Failure::invalid(format!("cannot read `{}` ({e})", input.display())))?;
    if bytes.len() as u64 > MAX_SCAN_BYTES {
        return Err(Failure::invalid(format!(
            "the input is larger than {MAX_SCAN_BYTES} bytes; scan it in pieces"
        )));
    }
    Ok(bytes)
}

/// Confidences are f32; print them as the short decimals they were set as.
fn rounded(confidence: f32) -> f64 {
    (f64::from(confidence) * 1000.0).round() / 1000.0
}
