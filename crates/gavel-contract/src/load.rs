//! Reading a contract from disk (or from memory) and turning serde errors into located ones.

use std::path::{Path, PathBuf};

use crate::error::{ContractError, ContractErrors};
use crate::raw::RawContract;
use crate::validate::{validate, Loaded, SourceFiles};

/// A contract larger than this is refused before parsing: no real contract comes close.
pub const MAX_CONTRACT_BYTES: usize = 8 * 1024 * 1024;

/// The contract file inside a contract folder.
pub const CONTRACT_FILE_NAME: &str = "gavel.yaml";

/// Reads referenced files from the file system.
pub struct Disk;

impl SourceFiles for Disk {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// `path` is a contract file, or a folder holding `gavel.yaml`.
pub fn contract_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CONTRACT_FILE_NAME)
    } else {
        path.to_path_buf()
    }
}

/// Loads and validates the contract at `path` (a file, or a folder holding `gavel.yaml`).
pub fn load(path: &Path) -> Result<Loaded, ContractErrors> {
    let file = contract_file(path);
    let bytes = std::fs::read(&file).map_err(|e| {
        ContractError::whole_file(
            &file,
            format!("cannot read the contract ({e}); expected a YAML file or a folder with {CONTRACT_FILE_NAME} (create one with `gavel init`)"),
        )
    })?;
    load_bytes(&file, &bytes, &Disk)
}

/// Loads a contract whose text is `bytes`, named `file` in messages; referenced files are read
/// through `files`, relative to `file`'s folder.
pub fn load_bytes(
    file: &Path,
    bytes: &[u8],
    files: &dyn SourceFiles,
) -> Result<Loaded, ContractErrors> {
    if bytes.len() > MAX_CONTRACT_BYTES {
        return Err(ContractError::whole_file(
            file,
            format!(
                "the contract is {} bytes; the limit is {MAX_CONTRACT_BYTES}",
                bytes.len()
            ),
        )
        .into());
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_col(bytes, e.valid_up_to());
        ContractError::at(
            file,
            line,
            column,
            "invalid UTF-8; expected a UTF-8 YAML file",
        )
    })?;
    if let Some(nul) = text.find('\0') {
        let (line, column) = line_col(bytes, nul);
        return Err(ContractError::at(file, line, column, "a NUL byte; expected YAML text").into());
    }
    let raw: RawContract = serde_saphyr::from_str(text).map_err(|e| located(file, &e))?;
    validate(raw, file, files)
}

fn located(file: &Path, error: &serde_saphyr::Error) -> ContractErrors {
    let rendered = error.without_snippet().to_string();
    // The library appends " at line L, column C"; the location goes in front instead.
    let message = rendered
        .rsplit_once(" at line ")
        .map_or(rendered.as_str(), |(message, _)| message)
        .to_string();
    let message = explain(&message);
    match error.location() {
        Some(loc) => ContractError::at(file, loc.line(), loc.column(), message),
        None => ContractError::whole_file(file, message),
    }
    .into()
}

/// serde's messages name the problem; add what to do about the common ones.
fn explain(message: &str) -> String {
    if message.starts_with("unknown field") {
        format!("{message}; remove or rename the key (see docs/contract.md)")
    } else if message.starts_with("missing field") {
        format!("{message}; this key is required here")
    } else if message.starts_with("duplicate mapping key") {
        let key_part = message
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(message);
        format!("{key_part}; each key may appear once")
    } else if message.starts_with("data did not match any variant") {
        "this value has the wrong shape; expected a number, a string, a boolean or { min, max }"
            .to_string()
    } else {
        message.to_string()
    }
}

fn line_col(bytes: &[u8], offset: usize) -> (u64, u64) {
    let before = bytes.get(..offset).unwrap_or(bytes);
    let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    (line, (offset - line_start) as u64 + 1)
}
