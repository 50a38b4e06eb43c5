//! API keys and roles. A key is shown once when created; only its SHA-256 is stored. Keys are
//! 256 random bits, so a plain hash is enough: there is nothing to brute-force.

use std::fmt;

use serde::{Deserialize, Serialize};

use gavel_contract::time::Timestamp;

/// What a key may do (SPEC section 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The data path: decide and report outcomes.
    Service,
    /// Kill switches, contract applies.
    Operator,
    /// Approvals and revocations.
    Approver,
    /// Read-only access to everything.
    Auditor,
    /// Keys.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Service,
        Role::Operator,
        Role::Approver,
        Role::Auditor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Service => "service",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored key: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub id: String,
    #[serde(skip)]
    pub hash: String,
    pub principal: String,
    pub role: Role,
    /// For approvers: the governance role they sign as (e.g. `risk`, `engineering`).
    pub approver_role: Option<String>,
    pub created_at: Timestamp,
    pub created_by: String,
    pub revoked_at: Option<Timestamp>,
}

/// Hex SHA-256 of a presented key.
pub fn hash_key(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(key.as_bytes()))
}
