//! The real `gavel` binary, driven the way an operator would: init, keys, apply, approve,
//! decide, kill, explain; and every refusal with its exit code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly by design"
)]

mod approvals;
mod audit;
mod bad_input;
mod drift;
mod fairness;
mod hooks;
mod monitoring;
mod review;
mod roles;
mod serve;
mod tour;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub struct Gavel {
    pub dir: tempfile::TempDir,
    pub admin: String,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails(self, code: i32, stderr_has: &str) -> Run {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(stderr_has),
            "stderr lacks `{stderr_has}`: {}",
            self.stderr
        );
        assert_eq!(
            self.stderr.trim().lines().count(),
            1,
            "one sentence: {}",
            self.stderr
        );
        self
    }

    /// Each stdout line as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn output(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn gavel_command(dir: &Path, key: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gavel"));
    cmd.current_dir(dir)
        .env_remove("GAVEL_CONTRACT")
        .env_remove("GAVEL_DB")
        .env_remove("GAVEL_KEY");
    if let Some(key) = key {
        cmd.env("GAVEL_KEY", key);
    }
    cmd
}

impl Gavel {
    /// `gavel init` in a fresh folder.
    pub fn init() -> Gavel {
        let dir = tempfile::tempdir().unwrap();
        let run = output(
            gavel_command(dir.path(), None)
                .args(["init", "."])
                .output()
                .unwrap(),
        )
        .ok();
        let admin = run.stdout.trim().to_string();
        assert!(admin.starts_with("gvl_") && admin.len() == 68, "{admin}");
        Gavel { dir, admin }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn run(&self, key: Option<&str>, args: &[&str]) -> Run {
        output(
            gavel_command(self.dir.path(), key)
                .args(args)
                .output()
                .unwrap(),
        )
    }

    pub fn run_stdin(&self, key: Option<&str>, args: &[&str], stdin: &[u8]) -> Run {
        let mut child = gavel_command(self.dir.path(), key)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The child may exit before reading everything (e.g. on an auth failure).
        let _ = child.stdin.take().unwrap().write_all(stdin);
        output(child.wait_with_output().unwrap())
    }

    /// Creates a key with the admin key and returns it.
    pub fn key(&self, principal: &str, role: &str, approver_role: Option<&str>) -> String {
        let mut args = vec!["keys", "create", "--principal", principal, "--role", role];
        if let Some(r) = approver_role {
            args.extend(["--approver-role", r]);
        }
        let key = self
            .run(Some(&self.admin), &args)
            .ok()
            .stdout
            .trim()
            .to_string();
        assert!(key.starts_with("gvl_"));
        key
    }

    pub fn decide(&self, key: &str, request: &Value) -> Value {
        let run = self
            .run_stdin(Some(key), &["decide"], request.to_string().as_bytes())
            .ok();
        run.json_lines().remove(0)
    }
}

/// A folder with keys for every role, the contract applied by the operator, and
/// kb-search-v1 approved.
pub struct Ready {
    pub g: Gavel,
    pub operator: String,
    pub risk: String,
    pub engineering: String,
    pub service: String,
    pub auditor: String,
}

impl Ready {
    pub fn start() -> Ready {
        Ready::start_with(str::to_string)
    }

    /// As `start`, with the contract edited by `edit` before it is applied.
    pub fn start_with(edit: impl FnOnce(&str) -> String) -> Ready {
        Ready::start_approving(edit, &approve_kb("cooldown:15m"))
    }

    /// As `start_with`, with the approval `approve` (the arguments of `gavel approve`, run
    /// with the risk approver's key) instead of the default one.
    pub fn start_approving(edit: impl FnOnce(&str) -> String, approve: &[&str]) -> Ready {
        let g = Gavel::init();
        let yaml = std::fs::read_to_string(g.path("gavel.yaml")).unwrap();
        std::fs::write(g.path("gavel.yaml"), edit(&yaml)).unwrap();
        let operator = g.key("olga", "operator", None);
        let risk = g.key("rita", "approver", Some("risk"));
        let engineering = g.key("emil", "approver", Some("engineering"));
        let service = g.key("svc-wiki", "service", None);
        let auditor = g.key("audrey", "auditor", None);
        g.run(Some(&operator), &["apply"]).ok();
        g.run(Some(&risk), approve).ok();
        Ready {
            g,
            operator,
            risk,
            engineering,
            service,
            auditor,
        }
    }
}

pub fn kb_prompt() -> String {
    gavel_contract::example::FILES
        .iter()
        .find(|(p, _)| *p == "prompts/kb.txt")
        .unwrap()
        .1
        .to_string()
}

pub fn kb_request() -> Value {
    serde_json::json!({
        "deployment": "kb-search-v1",
        "messages": [{"role": "system", "content": kb_prompt()}, {"role": "user", "content": "Where is the VPN guide?"}]
    })
}

/// `gavel approve kb-search-v1` for Acme employees, 30 days, with `on_breach`; callers append
/// thresholds or evidence.
pub fn approve_kb(on_breach: &str) -> Vec<&str> {
    vec![
        "approve",
        "kb-search-v1",
        "--population",
        "Acme employees",
        "--expires",
        "30d",
        "--on-breach",
        on_breach,
    ]
}
