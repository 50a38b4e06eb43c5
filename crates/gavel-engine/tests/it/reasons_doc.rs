//! docs/reasons.md lists exactly the codes the engine can give.

use std::collections::BTreeSet;

use gavel_engine::ReasonCode;

#[test]
fn reasons_doc_lists_every_code_and_no_other() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/reasons.md"
    ))
    .unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(code, _)| code.to_string())
        .collect();
    let in_code: BTreeSet<String> = ReasonCode::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    let undocumented: Vec<_> = in_code.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&in_code).collect();
    assert!(
        undocumented.is_empty(),
        "codes missing from docs/reasons.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/reasons.md lists codes the engine never gives: {stale:?}"
    );
}

#[test]
fn serde_names_match_as_str() {
    for code in ReasonCode::ALL {
        assert_eq!(
            serde_json::to_value(code).unwrap(),
            serde_json::json!(code.as_str())
        );
    }
}
