//! gavel's tamper-evident ledger, independent of any storage engine.
//!
//! - [`record`]: the versioned record envelope and its RFC 8785 bytes ([`jcs`]).
//! - [`merkle`]: RFC 6962 tree, inclusion and consistency proofs.
//! - [`note`]: C2SP signed notes (Ed25519) and tlog checkpoints.
//! - [`verify`]: full re-derivation of a stored ledger.
//! - [`sink`] + [`appender`]: storage interface and group-commit appender.
//! - [`proof`]: self-contained inclusion proofs for third parties.
//! - [`payload`]: crypto-shreddable payload encryption.
//!
//! See docs/ledger.md for the format and the durability design.

pub mod appender;
pub mod jcs;
pub mod merkle;
pub mod note;
pub mod payload;
pub mod proof;
pub mod record;
pub mod sink;
pub mod verify;

pub use appender::{
    Appender, AppenderConfig, BatchObserver, Durable, LedgerError, Pending, Receipt,
};
pub use merkle::{Hash, MerkleFrontier, MerkleTree, TreeNode};
pub use note::{Checkpoint, NoteSigner, NoteVerifier};
pub use proof::{check_proof_json, CheckedInclusion, InclusionBundle, Prover};
pub use record::{
    Appendable, ContractLoaded, Encoded, IndexFields, Record, RecordAids, RecordKind,
    FORMAT_VERSION,
};
pub use sink::{
    AidCheck, AidError, AppendRecord, Flusher, LedgerSink, MemorySink, RecordReader, SinkError,
    StoredCheckpoint, StoredRecord, Visit, VisitWithAids, LEAF_BLOCK,
};
pub use verify::{
    verify_records, verify_sink, verify_sink_reporting, Problem, VerifyError, VerifyFailure,
    VerifyOptions, VerifyReport,
};
