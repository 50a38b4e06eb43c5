//! `gavel evidence DEPLOYMENT --out DIR`: an evidence pack for one deployment, for the EU AI
//! Act's technical documentation (Annex IV) and the NIST AI RMF's functions, written from the
//! system of record: the model card, the contract files it was approved under (their exact
//! bytes), the approval records with inclusion proofs a third party can check, the contract's
//! history with its loosening flags, incidents, the decisions over a period by verdict and
//! reason, the ledger's signed checkpoints and a verification run. `MANIFEST.sha256` lists
//! every file's digest, and the manifest's digest is recorded in the ledger, so the pack can be
//! shown to be the one gavel wrote, and when.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use gavel_contract::time::Timestamp;
use gavel_contract::{load_with_snapshot, short_hash, Contract, Snapshot};
use gavel_ledger::NoteSigner;
use gavel_ledger::{RecordKind, VerifyOptions};
use gavel_ledger_sqlite::{ExportFilter, SqliteLedgerSink};
use gavel_store::Store;

use super::audit::export_filter;
use super::card::card;
use super::status::READERS;
use crate::cli::ExportArgs;
use crate::context::out;
use crate::context::{deployment_and_use_case, now, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger;
use crate::ledger::EachLine;
use base64::Engine as _;

/// The approval kinds of the ledger, in a deployment's lifecycle order.
const APPROVAL_KINDS: [RecordKind; 5] = [
    RecordKind::ApprovalRequested,
    RecordKind::ApprovalPending,
    RecordKind::ApprovalGranted,
    RecordKind::ApprovalCompleted,
    RecordKind::ApprovalRevoked,
];

/// What happened to a deployment in operation.
const INCIDENT_KINDS: [RecordKind; 6] = [
    RecordKind::Breach,
    RecordKind::Recovery,
    RecordKind::Kill,
    RecordKind::Unkill,
    RecordKind::CooldownStarted,
    RecordKind::CooldownEnded,
];

pub fn run(ctx: &Context, request: &PackRequest, out_dir: &Path) -> Outcome {
    let (loaded, snapshot) = load_with_snapshot(&ctx.contract_path)
        .map_err(|errors| Failure::invalid(errors.to_string()))?;
    let contract = loaded.contract;
    let store = ctx.store()?;
    let who = ctx.authenticate(&store, READERS, "exporting evidence")?;
    if let Some(why) = ctx.not_in_force(&store, &contract.version.0)? {
        return Err(Failure::invalid(format!(
            "{why}; evidence is exported under the contract in force"
        )));
    }
    // The pack is anchored by a ledger record: the ledger is taken before anything is
    // written, so a pack is not left behind unrecorded.
    let ledger = ledger::Ledger::open_unserved(
        &ctx.db_path,
        "ask it for the pack instead (`POST /v1/admin/evidence`), or stop it",
    )?;
    new_folder(out_dir)?;
    let sink = ledger::open_sink(&ctx.db_path)?;
    let signer = ledger::load_key(&ctx.db_path)?;
    let pack = Pack::build(&contract, &snapshot, &store, &sink, &signer, request)?;
    // Recorded before it is written: a pack on disk is always one the ledger holds.
    let (_, receipt) = pack.record(&ledger, &who.principal, request)?;
    ledger.close()?;
    pack.write_to(out_dir)?;
    out!(
        "wrote {} files to {}; MANIFEST.sha256 (sha256 {}) is recorded in the ledger at leaf {}",
        pack.files.len(),
        out_dir.display(),
        pack.manifest_sha256(),
        receipt.index
    );
    Ok(())
}

/// `gavel evidence --url URL`: asks a running gateway for the pack, checks every file against
/// the manifest it came with, and writes them into `out_dir`.
pub fn fetch(
    ctx: &Context,
    url: &str,
    pubkey: Option<&str>,
    request: &PackRequest,
    out_dir: &Path,
) -> Outcome {
    let key = ctx.key().ok_or_else(|| {
        Failure::auth("asking a gateway for evidence needs an API key: set GAVEL_KEY")
    })?;
    // Asked for, the pack is recorded: the folder it goes to is made first (beside the one
    // named, renamed into place at the end), so that a pack is not recorded that could not be
    // written, and a write that fails half-way leaves no pack that looks whole.
    if out_dir.exists() {
        return Err(Failure::invalid(format!(
            "`{}` exists; name a folder that does not exist yet",
            out_dir.display()
        )));
    }
    let partial = out_dir.with_file_name(format!(
        ".{}.partial-{}",
        out_dir
            .file_name()
            .map_or_else(|| "evidence".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    new_folder(&partial)?;
    let written = fetch_into(key, url, request, pubkey, &partial).and_then(|(pack, record)| {
        std::fs::rename(&partial, out_dir).map_err(|e| {
            Failure::storage(format!(
                "cannot move the pack into `{}` ({e})",
                out_dir.display()
            ))
        })?;
        Ok((pack, record))
    });
    let (pack, record) = written.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&partial);
    })?;
    out!(
        "wrote {} files to {}; MANIFEST.sha256 (sha256 {}) is in the ledger: {record}",
        pack.files.len(),
        out_dir.display(),
        pack.manifest_sha256()
    );
    Ok(())
}

/// Asks the gateway at `url` for the pack, checks it (paths, every file against the manifest,
/// and the manifest against the ledger record the gateway made of it, proven by a signed
/// checkpoint under `pubkey`, or the key the pack carries), and writes it into `dir`; the pack
/// and a sentence on its record.
fn fetch_into(
    key: &str,
    url: &str,
    request: &PackRequest,
    pubkey: Option<&str>,
    dir: &Path,
) -> Result<(Pack, String), Failure> {
    let base = url.trim_end_matches('/');
    let endpoint = format!("{base}/v1/admin/evidence");
    let body = json!({ "deployment": request.deployment, "from": request.from, "to": request.to });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::storage(format!("cannot start the HTTP client ({e})")))?;
    // Bounded: a gateway that stops answering must not hold the command for ever. A pack over
    // millions of decisions takes the gateway a while to count, hence the long total.
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| Failure::storage(format!("cannot start the HTTP client ({e})")))?;
    let (status, answer) = runtime.block_on(call(
        client.post(&endpoint).body(body.to_string()),
        key,
        &endpoint,
    ))?;
    if !status.is_success() {
        return Err(refused(&endpoint, status, &answer));
    }
    let pack = Pack::from_answer(&answer)?;
    if pack.manifest_sha256() != answer["manifest_sha256"].as_str().unwrap_or_default() {
        return Err(Failure::invalid(
            "the pack's manifest does not match the digest the gateway says it recorded; nothing was written",
        ));
    }
    pack.check_manifest()?;

    // The record the gateway made of it, proven against a signed checkpoint (signed within a
    // second or so of the record).
    let record_id = answer["record_id"].as_str().unwrap_or_default();
    let proof_url = format!("{base}/v1/audit/proof/{record_id}");
    let deadline = std::time::Instant::now() + PROOF_PATIENCE;
    let proof = loop {
        let (status, proof) = runtime.block_on(call(client.get(&proof_url), key, &proof_url))?;
        if status.is_success() {
            break proof;
        }
        if std::time::Instant::now() >= deadline {
            return Err(refused(&proof_url, status, &proof));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let (key_used, verifier_key) = match pubkey {
        Some(pinned) => ("the key you pinned", pinned.to_string()),
        None => (
            "the key in ledger/pubkey.txt",
            String::from_utf8_lossy(
                pack.files
                    .get("ledger/pubkey.txt")
                    .map_or(&[][..], Vec::as_slice),
            )
            .trim()
            .to_string(),
        ),
    };
    let checked =
        gavel_ledger::check_proof_json(&proof.to_string(), &verifier_key).map_err(|e| {
            Failure::invalid(format!(
                "the pack's ledger record does not prove: {}; nothing was written",
                e.0
            ))
        })?;
    let body = &checked.record.body;
    if body["action"] != "evidence_exported"
        || body["manifest_sha256"] != pack.manifest_sha256().as_str()
    {
        return Err(Failure::invalid(
            "the ledger record the gateway named is not this pack's; nothing was written",
        ));
    }
    pack.write_to(dir)?;
    Ok((
        pack,
        format!(
            "record `{record_id}` at leaf {}, proven by signed checkpoint #{} under {key_used}",
            checked.index, checked.checkpoint.seq
        ),
    ))
}

/// How long to wait for a signed checkpoint that covers a record just made.
const PROOF_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends `request` with the key; its status and JSON answer.
async fn call(
    request: reqwest::RequestBuilder,
    key: &str,
    url: &str,
) -> Result<(reqwest::StatusCode, Value), Failure> {
    let reply = request
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .send()
        .await
        .map_err(|e| Failure::storage(format!("cannot reach `{url}` ({e})")))?;
    let status = reply.status();
    let bytes = reply
        .bytes()
        .await
        .map_err(|e| Failure::storage(format!("`{url}` broke off its answer ({e})")))?;
    let answer = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::storage(format!("`{url}` answered {status} with no JSON ({e})")))?;
    Ok((status, answer))
}

/// What a gateway's refusal says, without control characters.
fn refused(url: &str, status: reqwest::StatusCode, answer: &Value) -> Failure {
    let reason: String = answer["error"]["message"]
        .as_str()
        .unwrap_or("no reason given")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    Failure::invalid(format!("`{url}` answered {status}: {reason}"))
}

fn new_folder(dir: &Path) -> Outcome {
    std::fs::create_dir(dir).map_err(|e| {
        Failure::invalid(format!(
            "cannot create `{}` ({e}); name a folder that does not exist yet",
            dir.display()
        ))
    })
}

/// Which pack to build: a deployment, and the period its decisions are counted over.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackRequest {
    pub deployment: String,
    /// From this time (inclusive): YYYY-MM-DD or RFC 3339.
    #[serde(default)]
    pub from: Option<String>,
    /// Up to this time (exclusive).
    #[serde(default)]
    pub to: Option<String>,
}

/// An evidence pack: its files by path inside it, `MANIFEST.sha256` among them.
pub struct Pack {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Pack {
    /// Reads the pack of `request` from the contract in force (and the bytes it was built
    /// from), the store and the ledger.
    pub fn build(
        contract: &Contract,
        snapshot: &Snapshot,
        store: &dyn Store,
        sink: &SqliteLedgerSink,
        signer: &NoteSigner,
        request: &PackRequest,
    ) -> Result<Pack, Failure> {
        let (d, use_case) = deployment_and_use_case(contract, &request.deployment)?;
        let period = export_filter(&ExportArgs {
            deployment: Some(d.id.clone()),
            kind: Some(RecordKind::Decision.as_str().to_string()),
            from: request.from.clone(),
            to: request.to.clone(),
            ..ExportArgs::default()
        })?;
        let concerns = |body: &Value| {
            let scope = body["scope"].as_str().unwrap_or_default();
            body["deployment"] == d.id.as_str()
                || body["approval"]["deployment"] == d.id.as_str()
                || scope == format!("deployment:{}", d.id)
                || scope == format!("use_case:{}", use_case.id)
                || scope == "all"
        };
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        files.insert(
            "model-card.md".into(),
            card(contract, store, sink, &d.id)?.into_bytes(),
        );
        for (name, bytes) in &snapshot.files {
            files.insert(format!("contract/{}", inside(name)), bytes.clone());
        }
        let approvals = records(sink, &APPROVAL_KINDS, &concerns)?;
        files.insert("approvals.jsonl".into(), jsonl(&approvals));
        // One prover for every proof: the checkpoint's signature is checked once.
        let prover = gavel_ledger::Prover::new(signer.verifier());
        for (_, record) in &approvals {
            let id = record["id"].as_str().unwrap_or_default();
            let proof = sink
                .prove(id, &prover)
                .map_err(|e| Failure::storage(format!("cannot prove `{id}`: {e}")))?;
            let proof = serde_json::to_vec_pretty(&proof)
                .map_err(|e| Failure::storage(format!("cannot encode a proof: {e}")))?;
            files.insert(format!("proofs/{}.json", inside(id)), proof);
        }
        let changes = records(sink, &[RecordKind::ContractLoaded], &|_| true)?;
        files.insert("contract-history.jsonl".into(), jsonl(&changes));
        let incidents = records(sink, &INCIDENT_KINDS, &concerns)?;
        files.insert("incidents.jsonl".into(), jsonl(&incidents));
        let tally = tally_decisions(sink, &period)?;
        files.insert(
            "decisions.json".into(),
            serde_json::to_vec_pretty(&json!({
                "deployment": d.id, "from": request.from, "to": request.to,
                "decisions": tally.decisions, "by_verdict": tally.by_verdict,
                "by_reason": tally.by_reason, "first_at": tally.first_at, "last_at": tally.last_at,
            }))
            .map_err(|e| Failure::storage(format!("cannot encode the tally: {e}")))?,
        );
        let mut checkpoints = Vec::new();
        sink.export_checkpoints_jsonl(&mut checkpoints)
            .map_err(Failure::storage)?;
        files.insert("ledger/checkpoints.jsonl".into(), checkpoints);
        files.insert(
            "ledger/pubkey.txt".into(),
            format!("{}\n", gavel_ledger_sqlite::public_key(signer)).into_bytes(),
        );
        let verification = match sink.verify(prover.verifier(), VerifyOptions::default()) {
            Ok(report) => format!(
                "ledger OK at {}: {} records, {} signed checkpoints, {} record(s) after the newest checkpoint\n",
                now(),
                report.records,
                report.checkpoints,
                report.unsigned_tail
            ),
            Err(gavel_ledger::VerifyError::Failed(failure)) => {
                format!("ledger FAILED verification at {}: {failure}\n", now())
            }
            Err(e) => return Err(Failure::storage(e)),
        };
        let readme = readme(
            &d.id,
            &contract.version.0,
            &tally,
            approvals.len(),
            incidents.len(),
            &verification,
        );
        files.insert("ledger/verification.txt".into(), verification.into_bytes());
        files.insert("README.md".into(), readme.into_bytes());
        let mut manifest = String::new();
        for (path, bytes) in &files {
            manifest.push_str(&format!("{}  {path}\n", hex::encode(Sha256::digest(bytes))));
        }
        files.insert(MANIFEST.to_string(), manifest.into_bytes());
        Ok(Pack { files })
    }

    /// The pack a gateway answered with (`files`: path to `{"text"}` or `{"base64"}`); paths
    /// must be the pack's own (relative, no `..`).
    fn from_answer(answer: &Value) -> Result<Pack, Failure> {
        let bad = |why: String| Failure::invalid(format!("the gateway's pack is unusable: {why}"));
        let mut files = BTreeMap::new();
        for (path, content) in answer["files"]
            .as_object()
            .ok_or_else(|| bad("it has no files".into()))?
        {
            if !pack_path(path) {
                return Err(bad(format!("`{path}` is not a path inside a pack")));
            }
            let bytes = match (content["text"].as_str(), content["base64"].as_str()) {
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| bad(format!("`{path}` is not base64 ({e})")))?,
                _ => return Err(bad(format!("`{path}` has neither text nor base64"))),
            };
            files.insert(path.clone(), bytes);
        }
        // A file and a folder of one name cannot both be written.
        for path in files.keys() {
            let mut folder = path.as_str();
            while let Some((parent, _)) = folder.rsplit_once('/') {
                if files.contains_key(parent) {
                    return Err(bad(format!("`{parent}` is both a file and a folder")));
                }
                folder = parent;
            }
        }
        Ok(Pack { files })
    }

    /// Checks every file against `MANIFEST.sha256`, which must list each of them.
    fn check_manifest(&self) -> Outcome {
        let manifest = self.files.get(MANIFEST).map_or(&[][..], Vec::as_slice);
        let listed: BTreeMap<&str, &str> = std::str::from_utf8(manifest)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once("  ").map(|(digest, path)| (path, digest)))
            .collect();
        for (path, bytes) in &self.files {
            if path == MANIFEST {
                continue;
            }
            let digest = hex::encode(Sha256::digest(bytes));
            if listed.get(path.as_str()) != Some(&digest.as_str()) {
                return Err(Failure::invalid(format!(
                    "`{path}` does not match the pack's manifest; nothing was written"
                )));
            }
        }
        if listed.len() + 1 != self.files.len() {
            return Err(Failure::invalid(
                "the pack's manifest lists files the pack lacks; nothing was written",
            ));
        }
        Ok(())
    }

    /// The SHA-256 of `MANIFEST.sha256`: what the ledger records.
    pub fn manifest_sha256(&self) -> String {
        hex::encode(Sha256::digest(
            self.files.get(MANIFEST).map_or(&[][..], Vec::as_slice),
        ))
    }

    /// Records the pack (its manifest's digest) in the ledger, as `principal`'s: the record's
    /// id and receipt.
    pub fn record(
        &self,
        ledger: &ledger::Ledger,
        principal: &str,
        request: &PackRequest,
    ) -> Result<(String, gavel_ledger::Receipt), Failure> {
        ledger.record_change_named(
            RecordKind::Admin,
            now(),
            principal,
            "evidence_exported",
            json!({ "deployment": request.deployment, "manifest_sha256": self.manifest_sha256(), "files": self.files.len(), "from": request.from, "to": request.to }),
        )
    }

    /// Writes every file into `dir` (which exists), each new and synced.
    pub fn write_to(&self, dir: &Path) -> Outcome {
        for (relative, bytes) in &self.files {
            let path = dir.join(relative);
            let failed = |e: std::io::Error| {
                Failure::storage(format!("cannot write `{}` ({e})", path.display()))
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(failed)?;
            }
            std::fs::File::create_new(&path)
                .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
                .map_err(failed)?;
        }
        Ok(())
    }
}

/// The file listing every other file's SHA-256.
const MANIFEST: &str = "MANIFEST.sha256";

/// Whether `path` names a file inside a pack: segments that are names (not empty, `.` or
/// `..`), with no character a file name or the manifest's lines cannot hold (control
/// characters, `\\`, `:`). What [`inside`] makes passes.
fn pack_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|segment| {
            !matches!(segment, "" | "." | "..")
                && !segment
                    .chars()
                    .any(|c| c.is_control() || c == '\\' || c == ':')
        })
}

/// `name` as a path inside the pack, one to one: its components joined by `/`, each escaped
/// so that it stays one file name (`%` as `%25`, `\\` as `%5C`, `:` as `%3A`), and the ones that
/// would leave the pack (a contract may read files outside its folder) written as `%2E%2E`
/// (`..`) or `%2F` (a root).
fn inside(name: &str) -> String {
    let parts: Vec<String> = Path::new(name)
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(
                part.to_string_lossy()
                    .replace('%', "%25")
                    .replace('\\', "%5C")
                    .replace(':', "%3A"),
            ),
            Component::CurDir => None,
            Component::ParentDir => Some("%2E%2E".to_string()),
            Component::RootDir | Component::Prefix(_) => Some("%2F".to_string()),
        })
        .collect();
    if parts.is_empty() {
        "%2E".to_string()
    } else {
        parts.join("/")
    }
}

/// Records of `kinds` whose body `concerns` says is about the deployment, in ledger order,
/// with their leaf index.
fn records(
    sink: &SqliteLedgerSink,
    kinds: &[RecordKind],
    concerns: &dyn Fn(&Value) -> bool,
) -> Result<Vec<(u64, Value)>, Failure> {
    let mut found = Vec::new();
    for kind in kinds {
        let filter = ExportFilter {
            kind: Some(*kind),
            ..ExportFilter::default()
        };
        for entry in sink
            .query(&filter)
            .map_err(|e| Failure::storage(format!("cannot read the ledger: {e}")))?
        {
            if concerns(&entry.record.body) {
                let record = serde_json::to_value(&entry.record)
                    .map_err(|e| Failure::storage(format!("cannot encode a record: {e}")))?;
                found.push((entry.index, record));
            }
        }
    }
    found.sort_by_key(|(index, _)| *index);
    Ok(found)
}

fn jsonl(records: &[(u64, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, record) in records {
        out.extend_from_slice(
            json!({ "index": index, "record": record })
                .to_string()
                .as_bytes(),
        );
        out.push(b'\n');
    }
    out
}

#[derive(Default)]
struct Tally {
    decisions: u64,
    by_verdict: BTreeMap<String, u64>,
    by_reason: BTreeMap<String, u64>,
    first_at: Option<String>,
    last_at: Option<String>,
}

impl Tally {
    /// Counts one decision record (its canonical JSON).
    fn add(&mut self, record: &Value) {
        let body = &record["body"];
        self.decisions += 1;
        *self
            .by_verdict
            .entry(body["verdict"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        for code in body["reason_codes"].as_array().into_iter().flatten() {
            *self
                .by_reason
                .entry(code.as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        let at = record["at_ms"].as_i64().map(|ms| Timestamp(ms).to_string());
        if self.first_at.is_none() {
            self.first_at = at.clone();
        }
        self.last_at = at;
    }
}

/// Counts the decisions `filter` selects, a record at a time (a period can hold millions).
fn tally_decisions(sink: &SqliteLedgerSink, filter: &ExportFilter) -> Result<Tally, Failure> {
    let mut tally = Tally::default();
    let mut lines = EachLine::new(|line: &[u8]| {
        let record: Value = serde_json::from_slice(line).map_err(|e| {
            Failure::storage(format!(
                "a decision record in the ledger is not JSON ({e}); check the ledger with `gavel audit verify`"
            ))
        })?;
        tally.add(&record);
        Ok(())
    });
    let exported = sink.export_jsonl(filter, &mut lines);
    lines.finish(exported)?;
    Ok(tally)
}

fn readme(
    deployment: &str,
    version: &str,
    tally: &Tally,
    approvals: usize,
    incidents: usize,
    verification: &str,
) -> String {
    format!(
        "# Evidence pack: {deployment}

Written by gavel at {at} under the contract in force (version {version_short}). Every file is
read from the system of record; `MANIFEST.sha256` lists their SHA-256 (`sha256sum -c
MANIFEST.sha256`), and the manifest's own SHA-256 is a ledger record (`evidence_exported`), so
this pack can be shown to be the one gavel wrote.

| file | what it holds |
|---|---|
| `model-card.md` | what is deployed, intended use, risk tier, the approval, live signals against its thresholds, incidents |
| `contract/` | the exact bytes of the contract version in force ({version}) and of every file it binds |
| `approvals.jsonl` | the {approvals} approval record(s) of this deployment, as the ledger holds them (leaf index and record) |
| `proofs/` | an inclusion proof of each approval record against a signed checkpoint: `gavel audit check-proof proofs/ID.json --pubkey \"$(cat ledger/pubkey.txt)\"` needs nothing else |
| `contract-history.jsonl` | every contract version loaded, with its changes and loosening flag |
| `incidents.jsonl` | the {incidents} breach, recovery, kill, unkill and cooldown record(s) that concern it |
| `decisions.json` | its {decisions} decision(s) over the period, by verdict and by reason code |
| `ledger/` | the signed checkpoints, the public key, and a verification run at export: {verification_line} |

## EU AI Act, Annex IV (technical documentation)

| Annex IV item | where |
|---|---|
| 1. general description (intended purpose, provider's system, versions) | `model-card.md` (what is deployed, intended use), `contract/` |
| 2. detailed description of the elements and the development process | `contract/` (prompt, tools, parameters, eval set, by digest); the design choices behind them are not gavel's to record |
| 3. monitoring, functioning and control (capabilities, limitations, human oversight) | `model-card.md` (approval, signers and evidence, on-breach action), `incidents.jsonl` |
| 4. appropriateness of the performance metrics | `model-card.md` (thresholds approved and live values), `approvals.jsonl` |
| 5. risk management system (Article 9) | `contract/` (risk taxonomy, tier, approval requirements), `contract-history.jsonl` |
| 6. changes made through the lifecycle | `contract-history.jsonl`, `approvals.jsonl` |
| 7. harmonised standards applied | not recorded by gavel |
| 8. EU declaration of conformity | not recorded by gavel |
| 9. post-market monitoring (Article 72) | `decisions.json`, `incidents.jsonl`, `model-card.md` (signals), `ledger/` |

## NIST AI RMF 1.0

| function | where |
|---|---|
| GOVERN (policies, accountability, roles) | `contract/`, `approvals.jsonl` (who approved, with which role), `proofs/` |
| MAP (context, intended use, risk tier) | `model-card.md` (intended use), `contract/` |
| MEASURE (metrics, monitoring, tracking) | `model-card.md` (signals against thresholds), `decisions.json` |
| MANAGE (responses, incidents, change) | `incidents.jsonl`, `contract-history.jsonl` |
",
        at = now(),
        version_short = short_hash(version),
        decisions = tally.decisions,
        verification_line = verification.trim(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway's answer becomes a pack only if every path is a pack's and every file is the
    /// one the manifest lists.
    #[test]
    fn a_fetched_pack_is_checked_before_anything_is_written() {
        let digest = |text: &str| hex::encode(Sha256::digest(text.as_bytes()));
        let answer = |files: Value| json!({ "files": files });
        let manifest = format!(
            "{}  README.md\n{}  contract/%2E%2E/x.txt\n",
            digest("hi"),
            digest("x")
        );
        let good = Pack::from_answer(&answer(json!({
            "README.md": { "text": "hi" },
            "contract/%2E%2E/x.txt": { "base64": "eA==" },
            "MANIFEST.sha256": { "text": manifest },
        })))
        .unwrap();
        good.check_manifest().unwrap();
        for hostile in [
            json!({ "../escape": { "text": "x" } }),
            json!({ "a": { "text": "x" }, "a/b": { "text": "y" } }),
            json!({ "a": { "neither": "x" } }),
        ] {
            assert!(
                Pack::from_answer(&answer(hostile.clone())).is_err(),
                "{hostile}"
            );
        }
        let tampered = Pack::from_answer(&answer(json!({
            "README.md": { "text": "changed" },
            "contract/%2E%2E/x.txt": { "base64": "eA==" },
            "MANIFEST.sha256": { "text": manifest },
        })))
        .unwrap();
        assert!(tampered.check_manifest().is_err());
        let unlisted = Pack::from_answer(&answer(json!({
            "README.md": { "text": "hi" },
            "MANIFEST.sha256": { "text": manifest },
        })))
        .unwrap();
        assert!(unlisted.check_manifest().is_err());
    }

    #[test]
    fn pack_paths_stay_inside_the_pack_one_to_one() {
        assert_eq!(inside("prompts/kb.txt"), "prompts/kb.txt");
        assert_eq!(inside("../shared/x.txt"), "%2E%2E/shared/x.txt");
        assert_eq!(inside("/etc/passwd"), "%2F/etc/passwd");
        assert_eq!(inside("a/./b"), "a/b");
        assert_eq!(inside(""), "%2E");
        assert_eq!(inside("apr_01:x"), "apr_01%3Ax");
        // Names that looked alike before are told apart.
        assert_ne!(inside("../x"), inside("%2E%2E/x"));
        assert_eq!(inside("%2E%2E/x"), "%252E%252E/x");
        assert_ne!(inside("_/x"), inside("../x"));
        // What `inside` makes is a pack path; a hostile answer's paths are not.
        for name in ["../x", "/etc/passwd", "a:b", "%2E%2E/x", "prompts/kb.txt"] {
            assert!(pack_path(&format!("contract/{}", inside(name))), "{name}");
        }
        for hostile in [
            "../x", "a/../b", "/abs", "a//b", "a\nb", "c:\\x", "", "a/./b",
        ] {
            assert!(!pack_path(hostile), "{hostile:?}");
        }
    }
}
