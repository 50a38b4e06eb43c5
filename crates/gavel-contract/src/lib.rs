//! The governance contract: policy as code.
//!
//! A contract is one YAML file (see `docs/contract.md`) naming the organisation's risk
//! taxonomy, endpoints, use cases, deployments, runtime policy and prices. This crate loads it
//! strictly — unknown keys, wrong types, dangling references and impossible values are errors
//! located at `file:line:col` — and produces a [`Contract`] in which every deployment carries its
//! [`Binding`] (the SHA-256 of its canonical form, bound files included) and the contract its
//! [`ContractVersion`].
//!
//! The crate does no I/O of its own beyond [`load`]'s reading of the contract and the files it
//! names, which goes through [`SourceFiles`] so that embedders can supply files from memory.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! gavel_contract::example::write_to(dir.path()).unwrap();
//! let loaded = gavel_contract::load(dir.path()).unwrap();
//! let triage = loaded.contract.deployment("support-triage-v3").unwrap();
//! assert_eq!(triage.binding.0.len(), 64);
//! ```

mod binding;
pub mod diff;
mod error;
pub mod example;
mod load;
mod model;
mod prices;
mod raw;
mod snapshot;
pub mod template;
pub mod time;
mod validate;

pub use binding::binding_of;
pub use error::{ContractError, ContractErrors};
pub use load::{contract_file, load, load_bytes, Disk, CONTRACT_FILE_NAME, MAX_CONTRACT_BYTES};
pub use model::*;
pub use snapshot::{load_with_snapshot, Snapshot};
pub use validate::{Loaded, SourceFiles};
