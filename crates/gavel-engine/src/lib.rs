//! The decision engine: a request in, a [`Decision`] out — ALLOW, BLOCK, COOLDOWN or NO_OP with
//! stable reason codes, obligations, and the ids that tie it to the approval and contract
//! version that made it possible.
//!
//! The engine does no I/O and never reads the clock: it is handed the contract, a
//! [`RuntimeState`] (kills, cooldowns, approvals, budget counters) and the time. It never
//! fails: a state error becomes BLOCK `governance.unavailable`.
//!
//! ```
//! use std::sync::Arc;
//! use gavel_engine::{DecideInput, Engine, EngineConfig, MemoryState, Verdict};
//!
//! let contract = Arc::new(gavel_contract::example::load().unwrap().contract);
//! let engine = Engine::new(contract, EngineConfig::default());
//! let state = MemoryState::new();
//! let request = gavel_engine::parse_request(br#"{"deployment": "kb-search-v1"}"#).unwrap();
//! let decision = engine.decide(&state, DecideInput {
//!     request: &request,
//!     principal: "svc-wiki",
//!     decision_id: "dec_1".into(),
//!     now: gavel_contract::time::Timestamp(1_790_000_000_000),
//! });
//! // Nothing was approved yet, so nothing runs.
//! assert_eq!(decision.verdict, Verdict::Block);
//! assert_eq!(decision.reasons[0].code.as_str(), "approval.missing");
//! ```

pub mod approval;
mod custom_rules;
mod decision;
mod engine;
mod ids;
mod memory;
mod request;
mod scan;
mod scanning;
mod schema;
mod state;
mod tokens;

pub use decision::*;
pub use engine::{window_charge, DecideInput, Engine, EngineConfig, Prescanned, Usage};
pub use ids::new_id;
pub use memory::{relevant_scopes, MemoryState};
pub use request::*;
pub use scan::{ContentScanner, ScanReport, Unapproved};
pub use scanning::PolicyScanner;
pub use state::*;
pub use tokens::Encoding;
