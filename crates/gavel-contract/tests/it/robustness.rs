//! The loader on mangled input: never a panic, always a contract or located errors. (The same
//! target runs under libFuzzer in fuzz/.)

use proptest::prelude::*;

use crate::Files;

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (
            any::<usize>(),
            prop::collection::vec(
                prop::sample::select(b": -[]{}\n\t'\"&*!|>#0a".to_vec()),
                1..8
            )
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..200).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(text: &mut Vec<u8>, m: &Mutation) {
    let len = text.len().max(1);
    match m {
        Mutation::Flip(i, b) => {
            let i = i % len;
            if let Some(byte) = text.get_mut(i) {
                *byte = *b;
            }
        }
        Mutation::Delete(i, n) => {
            let i = i % len;
            let end = (i + n).min(text.len());
            text.drain(i.min(end)..end);
        }
        Mutation::Insert(i, bytes) => {
            let i = i % len;
            let i = i.min(text.len());
            text.splice(i..i, bytes.iter().copied());
        }
        Mutation::Duplicate(i, n) => {
            let i = (i % len).min(text.len());
            let end = (i + n).min(text.len());
            let chunk = text[i..end].to_vec();
            text.splice(end..end, chunk);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn mangled_contracts_load_or_fail_with_located_errors(mutations in prop::collection::vec(mutation(), 1..6)) {
        let mut files = Files::example();
        let mut text = files.0["gavel.yaml"].clone();
        for m in &mutations {
            apply(&mut text, m);
        }
        files.0.insert("gavel.yaml".into(), text);
        if let Err(errors) = files.load() {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("gavel.yaml"), "{}", shown);
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut files = Files::example();
        files.0.insert("gavel.yaml".into(), bytes);
        let _ = files.load();
    }
}

#[test]
fn deeply_nested_yaml_is_refused_not_overflowed() {
    let mut files = Files::example();
    let deep = format!(
        "version: 1\norganization: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    files.set("gavel.yaml", &deep);
    assert!(files.load().is_err());
}

#[test]
fn oversized_contract_is_refused_before_parsing() {
    let mut files = Files::example();
    let huge = format!("# {}\n", "x".repeat(gavel_contract::MAX_CONTRACT_BYTES));
    files.set("gavel.yaml", &huge);
    let e = files.load().unwrap_err().to_string();
    assert!(e.contains("the limit is"), "{e}");
}
