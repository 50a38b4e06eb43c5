//! Contract errors: each names the file, line and column, what is wrong and what was expected.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a contract, located in its source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single place (e.g. the file cannot be read).
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl ContractError {
    pub(crate) fn at(file: &Path, line: u64, column: u64, message: impl Into<String>) -> Self {
        ContractError {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    pub(crate) fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        ContractError::at(file, 0, 0, message)
    }
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every problem found in one load, in source order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractErrors(pub Vec<ContractError>);

impl ContractErrors {
    pub fn first(&self) -> Option<&ContractError> {
        self.0.first()
    }
}

impl fmt::Display for ContractErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ContractErrors {}

impl From<ContractError> for ContractErrors {
    fn from(error: ContractError) -> Self {
        ContractErrors(vec![error])
    }
}
