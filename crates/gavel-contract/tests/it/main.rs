//! Loading the contract: the example, located errors for every kind of bad input, and the
//! binding property (a binding changes exactly when bound content changes).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly by design"
)]

mod bindings;
mod errors;
mod robustness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gavel_contract::{load_bytes, ContractErrors, Loaded, SourceFiles};

/// The example's files with some replaced or removed, served from memory.
#[derive(Clone)]
pub struct Files(pub BTreeMap<String, Vec<u8>>);

impl Files {
    pub fn example() -> Files {
        Files(
            gavel_contract::example::FILES
                .iter()
                .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
                .collect(),
        )
    }

    pub fn set(&mut self, path: &str, contents: &str) -> &mut Self {
        self.0
            .insert(path.to_string(), contents.as_bytes().to_vec());
        self
    }

    pub fn contract(&self) -> String {
        String::from_utf8(self.0["gavel.yaml"].clone()).unwrap()
    }

    /// Replaces the first occurrence of `from` in gavel.yaml; the test fails if it is absent.
    pub fn edit(&mut self, from: &str, to: &str) -> &mut Self {
        let text = self.contract();
        assert!(text.contains(from), "the example has no `{from}`");
        self.set("gavel.yaml", &text.replacen(from, to, 1))
    }

    pub fn load(&self) -> Result<Loaded, ContractErrors> {
        load_bytes(Path::new("gavel.yaml"), &self.0["gavel.yaml"], self)
    }
}

impl SourceFiles for Files {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let relative: PathBuf = path
            .components()
            .skip_while(|c| c.as_os_str() == ".")
            .collect();
        self.0
            .get(relative.to_str().unwrap_or_default())
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }
}

#[test]
fn example_contract_validates_with_expected_tiers() {
    let loaded = Files::example().load().unwrap();
    let c = &loaded.contract;
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let tier = |u: &str| c.use_cases[u].tier.as_str();
    assert_eq!(tier("credit-limit"), "high");
    assert_eq!(tier("support-triage"), "limited");
    assert_eq!(tier("knowledge-search"), "minimal");
    assert_eq!(tier("tenant-trust-score"), "unacceptable");
    assert!(c.deployments["order-agent-v2"].is_chain());
    assert_eq!(c.version.0.len(), 64);
    let bindings: std::collections::BTreeSet<_> =
        c.deployments.values().map(|d| d.binding.clone()).collect();
    assert_eq!(
        bindings.len(),
        c.deployments.len(),
        "bindings are distinct per deployment"
    );
}

#[test]
fn loading_twice_gives_the_same_version_and_bindings() {
    let a = Files::example().load().unwrap().contract;
    let b = Files::example().load().unwrap().contract;
    assert_eq!(a.version, b.version);
    for (id, d) in &a.deployments {
        assert_eq!(d.binding, b.deployments[id].binding);
    }
}

#[test]
fn init_writes_a_folder_that_loads_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    gavel_contract::example::write_to(dir.path()).unwrap();
    let from_disk = gavel_contract::load(dir.path()).unwrap().contract;
    let from_memory = Files::example().load().unwrap().contract;
    assert_eq!(from_disk.version, from_memory.version);
    let again = gavel_contract::example::write_to(dir.path()).unwrap_err();
    assert!(again.to_string().contains("already exists"));
}
