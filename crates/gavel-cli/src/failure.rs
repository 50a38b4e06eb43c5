//! Failures and their exit codes. Every failure is one sentence saying what was wrong and
//! what to do; the codes are documented in `gavel --help` and docs/cli.md.

use std::fmt;

/// 1: invalid input, or a governance refusal (invalid contract, approval refused).
pub const EXIT_INVALID: u8 = 1;
/// 2: the command line itself is wrong (clap uses this too).
pub const EXIT_USAGE: u8 = 2;
/// 3: no key, an unknown or revoked key, or a key whose role may not do this.
pub const EXIT_AUTH: u8 = 3;
/// 4: the database cannot be opened or written.
pub const EXIT_STORAGE: u8 = 4;

#[derive(Debug)]
pub struct Failure {
    pub exit_code: u8,
    pub message: String,
    /// The stable code of a request that conflicts with the state of what it is about (the
    /// HTTP API answers 409 with it); None for every other failure.
    pub conflict: Option<&'static str>,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            exit_code: EXIT_INVALID,
            message: message.into(),
            conflict: None,
        }
    }

    /// A request refused because of the state of what it is about (exit code 1, HTTP 409 with
    /// `code`).
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            conflict: Some(code),
            ..Failure::invalid(message)
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            exit_code: EXIT_USAGE,
            message: message.into(),
            conflict: None,
        }
    }

    pub fn auth(message: impl Into<String>) -> Failure {
        Failure {
            exit_code: EXIT_AUTH,
            message: message.into(),
            conflict: None,
        }
    }

    pub fn storage(message: impl fmt::Display) -> Failure {
        Failure {
            exit_code: EXIT_STORAGE,
            message: message.to_string(),
            conflict: None,
        }
    }
}

impl From<gavel_store::StoreError> for Failure {
    fn from(e: gavel_store::StoreError) -> Self {
        Failure::storage(e)
    }
}

impl From<gavel_engine::StateError> for Failure {
    fn from(e: gavel_engine::StateError) -> Self {
        Failure::storage(e)
    }
}

pub type Outcome = Result<(), Failure>;
