//! The command line, as clap sees it. Each command's logic is in `cmd/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "gavel",
    version,
    about = "Runtime governance for AI systems: every request ruled on, every ruling tied to an approval.",
    after_help = "Exit codes: 0 ok; 1 invalid input or refused; 2 usage error; 3 authentication or authorisation failed; 4 storage unavailable."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The contract: a YAML file or a folder holding gavel.yaml.
    #[arg(long, global = true, env = "GAVEL_CONTRACT", default_value = ".")]
    pub contract: PathBuf,
    /// The SQLite database [default: gavel.db next to the contract].
    #[arg(long, global = true, env = "GAVEL_DB")]
    pub db: Option<PathBuf>,
    /// Your API key (prefer the GAVEL_KEY environment variable: flags show up in `ps`).
    #[arg(long, global = true, env = "GAVEL_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the example contract and a database into DIR, and print the first admin key.
    Init {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Validate the contract and summarise it; exit 1 if it is invalid.
    Check {
        /// The contract (overrides --contract).
        path: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record the contract's current version and deployments as applied by you (operator or admin).
    Apply,
    /// Manage API keys (admin).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign an approval of a deployment's current binding (approver).
    Approve(ApproveArgs),
    /// Revoke an approval (approver).
    Revoke {
        approval_id: String,
        #[arg(long)]
        reason: String,
    },
    /// List approvals with their state.
    Approvals {
        #[arg(long)]
        deployment: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Decide requests: one JSON object, or JSON Lines, on stdin or from --file (service).
    Decide {
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Show what a candidate contract would change: each request (one JSON object, or JSON
    /// Lines, on stdin or from --file) is decided as a dry run under the contract in force and
    /// under the candidate, and the differences are printed. Nothing is recorded.
    Replay {
        /// The candidate contract (a file or a folder).
        #[arg(long)]
        candidate: PathBuf,
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print every request's two rulings as JSON Lines, then a summary line.
        #[arg(long)]
        json: bool,
        /// Exit 1 if any request's verdict, reasons or obligations would change.
        #[arg(long)]
        fail_on_change: bool,
    },
    /// Measure the contract in force on prompt corpora: each prompt is decided as a dry run of
    /// a request to DEPLOYMENT, and the share blocked (or, for a benign set, allowed) is shown.
    Redteam {
        /// Corpus files: a JSON array, an object of arrays, or JSON Lines, of strings or of
        /// objects with a `prompt`, `text`, `content`, `context` or `question`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        deployment: String,
        /// Where each prompt goes: user (the user's message), retrieved or tool_output (a
        /// document the request carries).
        #[arg(long, default_value = "user")]
        role: String,
        /// block (attacks) or allow (a benign set: what is blocked is a false positive).
        #[arg(long, default_value = "block")]
        expect: String,
        /// Exit 1 unless at least this percentage got the expected outcome.
        #[arg(long)]
        require: Option<f64>,
        /// How many prompts that did not get the expected outcome to show.
        #[arg(long, default_value_t = 10)]
        show: usize,
        #[arg(long)]
        json: bool,
    },
    /// Run the gateway: OpenAI-compatible proxy, decide API, admin API (operator or admin key).
    Serve(ServeArgs),
    /// Settle a decision's reserved budget with the actual usage (service).
    Outcome {
        #[arg(long)]
        decision: String,
        #[arg(long)]
        deployment: String,
        #[arg(long)]
        prompt_tokens: u64,
        #[arg(long)]
        completion_tokens: u64,
        #[arg(long, default_value_t = 0)]
        tool_calls: u64,
        /// What else to record for monitoring, as JSON: {"latency_ms", "success",
        /// "fallback_used", "score", "prediction", "label", "group", "features": {...}}.
        #[arg(long)]
        report: Option<String>,
    },
    /// Report an accuracy proxy, a label, a prediction or features for a decision (service).
    Feedback {
        decision: String,
        /// An accuracy proxy in [0, 1].
        #[arg(long)]
        score: Option<f64>,
        /// The ground truth: true/false or 1/0.
        #[arg(long)]
        label: Option<String>,
        /// What the model predicted: true/false or 1/0.
        #[arg(long)]
        prediction: Option<String>,
        /// The subject's group, for fairness.
        #[arg(long)]
        group: Option<String>,
        /// A declared feature, NAME=VALUE (repeatable); a number when VALUE reads as one.
        #[arg(long = "feature")]
        features: Vec<String>,
    },
    /// Record the baseline drift is measured against, with the deployment's approval
    /// (approver): from an eval-set run's feature rows, or from a window of past traffic.
    Baseline {
        deployment: String,
        /// JSON Lines: one object of features per line.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        file: Option<PathBuf>,
        /// Start of the traffic window (YYYY-MM-DD or RFC 3339 UTC).
        #[arg(long, requires = "to")]
        from: Option<String>,
        #[arg(long, requires = "from")]
        to: Option<String>,
    },
    /// Every deployment's state and signals against its approved thresholds.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop a deployment, a use case or everything (operator).
    Kill(KillArgs),
    /// Lift a kill switch (operator).
    Unkill(ScopeArgs),
    /// Scan text for secrets, PII and prompt injection; exit 1 if anything at or above the
    /// threshold is found, 0 if not.
    Scan {
        /// A file, or `-` for standard input.
        #[arg(default_value = "-")]
        input: PathBuf,
        /// How to read the text: user (direct injection), retrieved or tool_output (indirect),
        /// system, output.
        #[arg(long, default_value = "user")]
        role: String,
        /// Injection score from which injection counts as found.
        #[arg(long, default_value_t = 0.5)]
        threshold: f32,
        /// text or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// The tamper-evident ledger: verify, show, export, prove, check-proof, pubkey.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// A model card for a deployment, written from the contract, its approval, its live signals
    /// and the ledger (Markdown, or JSON).
    Card {
        deployment: String,
        #[arg(long)]
        json: bool,
    },
    /// Write an evidence pack for a deployment (EU AI Act Annex IV, NIST AI RMF) into a new
    /// folder: model card, contract files, approvals with proofs, history, incidents, decisions,
    /// checkpoints; its manifest's digest is recorded in the ledger.
    Evidence {
        deployment: String,
        /// The folder to create (it must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Count decisions from this time (inclusive): YYYY-MM-DD or RFC 3339.
        #[arg(long)]
        from: Option<String>,
        /// Up to this time (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// Ask the gateway at this URL for the pack (`POST /v1/admin/evidence`) instead of
        /// reading the database, which a running gateway holds.
        #[arg(long)]
        url: Option<String>,
        /// With --url: the ledger's public key (as `gavel audit pubkey` prints it) to prove the
        /// pack's record with, instead of the key the pack carries.
        #[arg(long, requires = "url")]
        pubkey: Option<String>,
    },
    /// Who approved this deployment, how it performs against its thresholds, who is on the hook.
    Explain {
        deployment: String,
        #[arg(long)]
        json: bool,
    },
    /// Compliance drift from the ledger: per-guard block and finding rates by day, guards gone
    /// quiet, loosened contracts and approval thresholds, approvals extended repeatedly.
    Drift(DriftArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and only its hash is stored.
    Create {
        #[arg(long)]
        principal: String,
        /// service, operator, approver, auditor or admin.
        #[arg(long)]
        role: String,
        /// For approvers: the role they sign as, e.g. risk, engineering, budget_owner.
        #[arg(long)]
        approver_role: Option<String>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Re-derive every record, the tree and every checkpoint signature; exit 1 naming the
    /// first bad index if anything was edited, deleted, inserted, reordered or truncated.
    Verify {
        /// Also fail if records after the newest checkpoint are not yet signed while a gavel
        /// process is writing the ledger (with none writing, such records always fail).
        #[arg(long)]
        strict: bool,
        /// Check the checkpoints' signatures against this public key (as `gavel audit pubkey`
        /// prints it) instead of the one derived from the signing key file next to the
        /// database: pin the key you trust, and verify without read access to the private key.
        #[arg(long, value_name = "KEY")]
        pubkey: Option<String>,
    },
    /// One record by id (decision id, or a governance change's id).
    Show { id: String },
    /// Records as JSON Lines (their canonical bytes), filtered.
    Export(ExportArgs),
    /// An inclusion proof of a record against the newest signed checkpoint, as JSON.
    Prove { id: String },
    /// Verify a proof file with nothing but it and the ledger's public key (no database).
    CheckProof {
        file: PathBuf,
        #[arg(long)]
        pubkey: String,
    },
    /// The ledger's public key (signed-note verifier key), for third parties.
    Pubkey,
    /// A decision's captured payload, if payload capture is on and the subject not forgotten.
    Payload { decision_id: String },
    /// Crypto-shred a subject: destroy its payload key (admin). The ledger still verifies.
    Forget {
        #[arg(long)]
        subject: String,
    },
}

#[derive(Debug, Default, Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportArgs {
    #[arg(long)]
    pub deployment: Option<String>,
    #[arg(long)]
    pub approval: Option<String>,
    #[arg(long)]
    pub principal: Option<String>,
    /// A reason code, e.g. approval.missing.
    #[arg(long)]
    pub reason: Option<String>,
    /// A record kind, e.g. decision, approval_completed, kill.
    #[arg(long)]
    pub kind: Option<String>,
    /// From this time (inclusive): YYYY-MM-DD or RFC 3339.
    #[arg(long)]
    pub from: Option<String>,
    /// Up to this time (exclusive).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub limit: Option<u64>,
    /// Only records after this leaf index: the next page after one that ended there.
    #[arg(long)]
    pub after: Option<u64>,
    /// Only records before this leaf index.
    #[arg(long)]
    pub before: Option<u64>,
}

#[derive(Debug, Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveArgs {
    pub deployment: String,
    /// Who the approval covers; required to start an approval.
    #[arg(long)]
    pub population: Option<String>,
    /// Expiry: YYYY-MM-DD, an RFC 3339 time, or a duration from now such as 90d.
    #[arg(long)]
    pub expires: Option<String>,
    /// A threshold NAME=VALUE (accuracy, drift, latency, abuse, fallback, fairness, spend); repeatable.
    #[arg(long = "threshold")]
    #[serde(default)]
    pub thresholds: Vec<String>,
    /// What a breach does: cooldown:<duration>, fallback or block.
    #[arg(long)]
    pub on_breach: Option<String>,
    /// Evidence KIND=PATH (the file is hashed in); repeatable.
    #[arg(long = "evidence")]
    #[serde(default)]
    pub evidence: Vec<String>,
}

#[derive(Debug, Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeArgs {
    #[arg(long, group = "scope")]
    pub deployment: Option<String>,
    #[arg(long, group = "scope")]
    pub use_case: Option<String>,
    /// One caller (the principal of API keys): every request it makes, on any deployment.
    #[arg(long, group = "scope")]
    pub principal: Option<String>,
    /// Everything in the organisation.
    #[arg(long, group = "scope")]
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[arg(long)]
    pub reason: String,
    /// A timed kill (COOLDOWN until it ends), e.g. 30m; without it the kill holds until unkill.
    #[arg(long = "for")]
    pub duration: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers), in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Most connections open at once; more are turned away.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Time a client has to send its request head (also the keep-alive idle limit).
    #[arg(long, default_value = "10s")]
    pub header_timeout: String,
    /// Time a client has to send its request body.
    #[arg(long, default_value = "30s")]
    pub body_timeout: String,
    /// Longest a decision may take, its durable ledger record included: past it the answer is
    /// BLOCK with `governance.unavailable`.
    #[arg(long, default_value = "10s")]
    pub decision_timeout: String,
    /// Time to connect to an upstream.
    #[arg(long, default_value = "5s")]
    pub connect_timeout: String,
    /// Time to an upstream's response head, and the longest silence inside a stream.
    #[arg(long, default_value = "60s")]
    pub first_byte_timeout: String,
    /// Longest an upstream call may take in all.
    #[arg(long, default_value = "300s")]
    pub upstream_timeout: String,
    /// Failed upstream calls in a row that open an endpoint's circuit breaker.
    #[arg(long, default_value_t = 5)]
    pub breaker_failures: u32,
    /// How long an open breaker keeps calls away from the endpoint before one probe.
    #[arg(long, default_value = "10s")]
    pub breaker_open: String,
    /// How often the contract path is checked for a new version.
    #[arg(long, default_value = "1s")]
    pub reload_interval: String,
    /// How long shutdown waits for requests in flight.
    #[arg(long, default_value = "10s")]
    pub drain_timeout: String,
    /// Logs as JSON lines (default: text).
    #[arg(long)]
    pub log_json: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct DriftArgs {
    /// From this time (inclusive): YYYY-MM-DD or RFC 3339 [default: the start of the UTC day
    /// 29 days before the last day, so 30 days].
    #[arg(long)]
    pub from: Option<String>,
    /// Up to this time (exclusive): YYYY-MM-DD or RFC 3339 [default: now].
    #[arg(long)]
    pub to: Option<String>,
    /// Only this deployment's decisions and approvals; repeatable [default: every deployment].
    #[arg(long = "deployment", value_name = "ID")]
    pub deployments: Vec<String>,
    /// The quiet window: a guard that fired earlier in the period and on none of its last N
    /// days is reported as quiet (with enough traffic; see docs/cli.md).
    #[arg(long, default_value_t = 7)]
    pub quiet_days: u32,
    /// Decisions each of those last days needs for a silent guard to count as quiet.
    #[arg(long, default_value_t = 10)]
    pub min_daily_decisions: u64,
    /// How long after an approval expires a new approval of the same binding still extends it.
    #[arg(long, default_value = "7d")]
    pub extension_gap: String,
    /// text or json.
    #[arg(long, default_value = "text")]
    pub format: String,
}
