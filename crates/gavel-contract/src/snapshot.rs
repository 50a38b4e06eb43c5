//! Every byte a contract version was built from, so that an earlier version can be loaded
//! again later (to diff it against a new one) exactly as it was applied.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{ContractError, ContractErrors};
use crate::load::{contract_file, Disk};
use crate::validate::{Loaded, SourceFiles};

/// The contract file and every file it refers to, keyed by path relative to the contract's
/// folder (the contract file itself under its own name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub contract_name: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Reads through `Disk` and remembers what it read.
struct Recording {
    base: PathBuf,
    read: RefCell<BTreeMap<String, Vec<u8>>>,
}

impl SourceFiles for Recording {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let bytes = Disk.read(path)?;
        let relative = path.strip_prefix(&self.base).unwrap_or(path);
        self.read
            .borrow_mut()
            .insert(relative.to_string_lossy().into_owned(), bytes.clone());
        Ok(bytes)
    }
}

/// Loads the contract at `path` (like [`crate::load`]) and returns the snapshot it was built from.
pub fn load_with_snapshot(path: &Path) -> Result<(Loaded, Snapshot), ContractErrors> {
    let file = contract_file(path);
    let bytes = std::fs::read(&file).map_err(|e| {
        ContractError::whole_file(
            &file,
            format!("cannot read the contract ({e}); create one with `gavel init`"),
        )
    })?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let recording = Recording {
        base,
        read: RefCell::new(BTreeMap::new()),
    };
    let loaded = crate::load_bytes(&file, &bytes, &recording)?;
    let contract_name = file.file_name().map_or_else(
        || "gavel.yaml".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut files = recording.read.into_inner();
    files.insert(contract_name.clone(), bytes);
    Ok((
        loaded,
        Snapshot {
            contract_name,
            files,
        },
    ))
}

impl SourceFiles for Snapshot {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.files
            .get(&path.to_string_lossy().into_owned())
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not in the snapshot"))
    }
}

impl Snapshot {
    /// Loads the contract exactly as it was when the snapshot was taken.
    pub fn load(&self) -> Result<Loaded, ContractErrors> {
        let text = self
            .files
            .get(&self.contract_name)
            .cloned()
            .unwrap_or_default();
        crate::load_bytes(Path::new(&self.contract_name), &text, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reloads_to_the_same_version_after_the_files_change() {
        let dir = tempfile::tempdir().unwrap();
        crate::example::write_to(dir.path()).unwrap();
        let (loaded, snapshot) = load_with_snapshot(dir.path()).unwrap();
        assert!(snapshot.files.contains_key("gavel.yaml"));
        assert!(snapshot.files.contains_key("prompts/triage.txt"));
        std::fs::write(
            dir.path().join("prompts/triage.txt"),
            "changed {{queue_list}}",
        )
        .unwrap();
        let again = snapshot.load().unwrap();
        assert_eq!(again.contract.version, loaded.contract.version);
        assert_ne!(
            crate::load(dir.path()).unwrap().contract.version,
            loaded.contract.version
        );
    }
}
