//! `gavel`: definition and glue. Parse the command line, run one command from `cmd/`, map its
//! failure to an exit code. Logic lives in the library crates.

mod cli;
mod cmd;
mod context;
mod failure;
mod ledger;
mod monitoring;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use context::Context;
use failure::{Failure, EXIT_USAGE};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            // Printing help or a usage error cannot usefully fail.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure {
            exit_code, message, ..
        }) => {
            context::note(&format!("gavel: {message}"));
            ExitCode::from(exit_code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Context::new(&cli.global);
    match cli.command {
        Command::Init { dir } => cmd::init::run(&dir),
        Command::Check { path, json } => cmd::check::run(&ctx, path.as_deref(), json),
        Command::Apply => cmd::apply::run(&ctx),
        Command::Keys(command) => cmd::keys::run(&ctx, command),
        Command::Approve(args) => cmd::approve::approve(&ctx, args),
        Command::Revoke {
            approval_id,
            reason,
        } => cmd::approve::revoke(&ctx, &approval_id, &reason),
        Command::Approvals { deployment, json } => {
            cmd::approve::list(&ctx, deployment.as_deref(), json)
        }
        Command::Decide { file } => cmd::decide::decide(&ctx, file.as_deref()),
        Command::Replay {
            candidate,
            file,
            json,
            fail_on_change,
        } => cmd::replay::run(&ctx, &candidate, file.as_deref(), json, fail_on_change),
        Command::Outcome {
            decision,
            deployment,
            prompt_tokens,
            completion_tokens,
            tool_calls,
            report,
        } => cmd::decide::outcome(
            &ctx,
            &decision,
            &deployment,
            gavel_engine::Usage {
                prompt_tokens,
                completion_tokens,
                tool_calls,
            },
            report.as_deref(),
        ),
        Command::Feedback {
            decision,
            score,
            label,
            prediction,
            group,
            features,
        } => cmd::feedback::run(
            &ctx,
            &decision,
            cmd::feedback::FeedbackArgs {
                score,
                label,
                prediction,
                group,
                features,
            },
        ),
        Command::Baseline {
            deployment,
            file,
            from,
            to,
        } => cmd::baseline::run(
            &ctx,
            &deployment,
            file.as_deref(),
            from.as_deref(),
            to.as_deref(),
        ),
        Command::Status { json } => cmd::status::run(&ctx, json),
        Command::Serve(args) => serve::run(&ctx, &args),
        Command::Kill(args) => cmd::kill::kill(&ctx, &args),
        Command::Unkill(args) => cmd::kill::unkill(&ctx, &args),
        Command::Audit(command) => cmd::audit::run(&ctx, command),
        Command::Scan {
            input,
            role,
            threshold,
            format,
        } => cmd::scan::run(&input, &role, threshold, &format),
        Command::Explain { deployment, json } => cmd::explain::run(&ctx, &deployment, json),
        Command::Card { deployment, json } => cmd::card::run(&ctx, &deployment, json),
        Command::Evidence {
            deployment,
            out,
            from,
            to,
            url,
            pubkey,
        } => {
            let request = cmd::evidence::PackRequest {
                deployment,
                from,
                to,
            };
            match url {
                Some(url) => cmd::evidence::fetch(&ctx, &url, pubkey.as_deref(), &request, &out),
                None => cmd::evidence::run(&ctx, &request, &out),
            }
        }
        Command::Redteam {
            files,
            deployment,
            role,
            expect,
            require,
            show,
            json,
        } => cmd::redteam::run(
            &ctx,
            &cmd::redteam::RedteamArgs {
                files: &files,
                deployment: &deployment,
                role: &role,
                expect: &expect,
                require,
                as_json: json,
                show,
            },
        ),
        Command::Drift(args) => cmd::drift::run(&ctx, &args),
    }
}
