//! The example contract that `gavel init` writes: a realistic organisation with use cases in
//! every tier, an agent chain with tools, external endpoints, a self-hosted fallback, budgets
//! and prices. Tests load it too, so it always validates.

use std::path::Path;

/// Every file of the example, by path relative to the contract folder.
pub const FILES: &[(&str, &str)] = &[
    ("gavel.yaml", include_str!("../example/gavel.yaml")),
    (
        "prompts/triage.txt",
        include_str!("../example/prompts/triage.txt"),
    ),
    (
        "prompts/credit.txt",
        include_str!("../example/prompts/credit.txt"),
    ),
    (
        "prompts/order-agent.txt",
        include_str!("../example/prompts/order-agent.txt"),
    ),
    ("prompts/kb.txt", include_str!("../example/prompts/kb.txt")),
    (
        "schemas/lookup_order.json",
        include_str!("../example/schemas/lookup_order.json"),
    ),
    (
        "schemas/issue_refund.json",
        include_str!("../example/schemas/issue_refund.json"),
    ),
    (
        "evals/triage-v3.jsonl",
        include_str!("../example/evals/triage-v3.jsonl"),
    ),
    (
        "evals/credit-v1.jsonl",
        include_str!("../example/evals/credit-v1.jsonl"),
    ),
    (
        "evals/order-agent-v2.jsonl",
        include_str!("../example/evals/order-agent-v2.jsonl"),
    ),
    (
        "rules/refund_ticket.rego",
        include_str!("../example/rules/refund_ticket.rego"),
    ),
];

/// Writes the example into `dir`, refusing to overwrite any existing file.
pub fn write_to(dir: &Path) -> std::io::Result<()> {
    for (relative, _) in FILES {
        let path = dir.join(relative);
        if path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists; choose an empty folder", path.display()),
            ));
        }
    }
    for (relative, contents) in FILES {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)?;
    }
    Ok(())
}

/// Serves the example's files from memory, for tests and benchmarks.
pub struct InMemory;

impl crate::SourceFiles for InMemory {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        FILES
            .iter()
            .find(|(relative, _)| path.ends_with(relative))
            .map(|(_, contents)| contents.as_bytes().to_vec())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not in the example"))
    }
}

/// The example contract, loaded from memory.
pub fn load() -> Result<crate::Loaded, crate::ContractErrors> {
    let (name, text) = FILES[0];
    crate::load_bytes(Path::new(name), text.as_bytes(), &InMemory)
}
