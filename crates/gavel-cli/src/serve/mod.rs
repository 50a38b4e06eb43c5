//! `gavel serve`: the gateway. An OpenAI-compatible enforcement proxy, the decide API and the
//! admin API over the embedded default (the contract path, the SQLite file, the ledger).
//!
//! `gateway.rs` holds the shared state and the decide-and-record step; `proxy.rs` the OpenAI
//! routes; `api.rs` the decide API and health; `admin.rs` the admin API; `routes.rs` the route
//! table (router, authorisation and OpenAPI from one list); `upstream.rs` calls endpoints (and
//! the mock); `output.rs` scans answers; `reload.rs` watches the contract; `metrics.rs` names
//! the metrics. This file owns start-up, the listener and its limits, and shutdown.

mod admin;
mod api;
mod dashboard;
mod decider;
mod error;
mod gateway;
mod metrics;
mod monitor;
mod output;
mod proxy;
mod reload;
mod routes;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use gavel_contract::time::Span;
use gavel_ledger_sqlite::WalCheckpointer;
use gavel_scan::{ScanConfig, Scanners};
use gavel_store::{Durability, Role};

use crate::cli::ServeArgs;
use crate::context::{diag, Context};
use crate::failure::{Failure, Outcome};
use crate::ledger::{self, Ledger};
use gateway::{Gateway, Limits, UpstreamTimeouts};
use upstream::{Breakers, Upstreams};

pub fn run(ctx: &Context, args: &ServeArgs) -> Outcome {
    init_logs(args.log_json);
    let store = ctx.store()?;
    let operator = ctx.authenticate(&store, &[Role::Operator, Role::Admin], "serving")?;
    // Budget counters and idempotency keys are written on every request: they survive the
    // process being killed; the decisions that consumed them are in the ledger, fsynced.
    store.set_durability(Durability::ProcessCrash)?;
    // WAL checkpoints run on a connection of their own, every 200 ms (`checkpoint_wal`), not
    // inside a commit that a request is waiting on.
    store.hand_checkpoints_to_background()?;
    let checkpointer = WalCheckpointer::open(&ctx.db_path)
        .map_err(|e| Failure::storage(format!("cannot open the database for checkpoints: {e}")))?;
    // Commits then write over the WAL's blocks instead of growing it, which halves the fsync a
    // decision waits for on ext4 (docs/ledger.md section 7). Only a cost saved: serving goes
    // on without it, and a disk too full for it will refuse the ledger's records anyway.
    match checkpointer.preallocate() {
        Ok(bytes) => tracing::debug!(bytes, "WAL preallocated"),
        Err(e) => tracing::warn!(error = %e, "cannot preallocate the WAL; commits will grow it"),
    }
    let (loaded, snapshot) = gavel_contract::load_with_snapshot(&ctx.contract_path)
        .map_err(|errors| Failure::invalid(errors.to_string()))?;
    let metrics = metrics::install().map_err(Failure::storage)?;
    let ledger = Ledger::open_exclusive(&ctx.db_path, Some(Arc::new(metrics::ledger_batch)))?;
    let watched = reload::files_of(&ctx.contract_path, &snapshot);
    let (engine, applied) =
        reload::make_in_force(&store, &ledger, loaded.contract, &snapshot, &operator)?;
    if let Some(applied) = applied {
        diag!(
            "applied contract {} as {} (it was not the version in force){}",
            gavel_contract::short_hash(&engine.contract().version.0),
            operator.principal,
            if applied.loosening {
                "; it LOOSENS governance, see `gavel audit export --kind contract_loaded`"
            } else {
                ""
            }
        );
    }
    let duration = |flag: &str, text: &str| -> Result<Duration, Failure> {
        Span::parse(text)
            .map(|s| Duration::from_millis(s.millis()))
            .map_err(|why| Failure::usage(format!("--{flag}: {why}")))
    };
    let timeouts = UpstreamTimeouts {
        connect: duration("connect-timeout", &args.connect_timeout)?,
        first_byte: duration("first-byte-timeout", &args.first_byte_timeout)?,
        total: duration("upstream-timeout", &args.upstream_timeout)?,
    };
    let http = reqwest::Client::builder()
        // The approved endpoint is the only address a governed request may go to.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeouts.connect)
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| Failure::storage(format!("cannot build the HTTP client: {e}")))?;
    let output_scanners = Scanners::new(&ScanConfig::default())
        .map_err(|e| Failure::storage(format!("cannot build the output scanners: {e}")))?;
    let (monitor, alert_queue) = monitor::Monitor::new(&crate::monitoring::config_of(
        &engine.contract().policy.monitoring,
    ))?;
    for use_case in engine.contract().use_cases.values() {
        if let Err(why) = monitor::webhook_url(&use_case.oncall) {
            tracing::warn!(use_case = %use_case.id, "{why}: this use case's on-call alerts cannot be sent until a start with it set");
        }
    }
    let (decider, decisions) = decider::Decider::new();
    // Blocking threads run what writes or reads SQLite off the request path (admin actions,
    // withdrawn decisions, payload capture, monitoring, reload checks) and the scanning and
    // counting of texts over 16 KiB; the decider thread makes the decisions. 16 bound memory.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .map_err(|e| Failure::storage(format!("cannot start the runtime: {e}")))?;
    let gw = Arc::new(Gateway {
        runtime: runtime.handle().clone(),
        decider,
        monitor,
        engine: ArcSwap::from_pointee(engine),
        store,
        ledger,
        ledger_reader: Mutex::new(ledger::open_sink(&ctx.db_path)?),
        prover: gavel_ledger::Prover::new(ledger::load_key(&ctx.db_path)?.verifier()),
        output_scanners: Arc::new(output_scanners),
        upstreams: Upstreams {
            http,
            timeouts,
            breakers: Breakers::new(
                args.breaker_failures.max(1),
                duration("breaker-open", &args.breaker_open)?,
            ),
        },
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            body_timeout: duration("body-timeout", &args.body_timeout)?,
            decision_timeout: duration("decision-timeout", &args.decision_timeout)?,
        },
        open_calls: Mutex::new(Default::default()),
        abandoning: Mutex::new(Default::default()),
        operator: operator.clone(),
        contract_path: ctx.contract_path.clone(),
        db_path: ctx.db_path.clone(),
        metrics,
        ready: Default::default(),
        last_verification: Mutex::new(None),
        building_evidence: Mutex::new(()),
    });
    gw.decider.start(decisions, Arc::downgrade(&gw))?;
    let listen: SocketAddr = args.listen.parse().map_err(|_| {
        Failure::usage(format!(
            "--listen `{}` is not an address such as 127.0.0.1:8080",
            args.listen
        ))
    })?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let settings = Listening {
        tls,
        header_timeout: duration("header-timeout", &args.header_timeout)?,
        max_header_bytes: args.max_header_bytes.max(8192),
        max_connections: args.max_connections,
        drain: duration("drain-timeout", &args.drain_timeout)?,
        reload_every: duration("reload-interval", &args.reload_interval)?,
    };
    runtime.block_on(serve(
        gw.clone(),
        listen,
        settings,
        watched,
        alert_queue,
        checkpointer,
    ))?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    // No task runs any more: the calls cut meanwhile get their outcomes, then the decider
    // settles and records every last outcome, monitoring writes its last buckets (with those
    // outcomes counted), then the final checkpoint is signed.
    gw.decider.fence();
    gw.close_open_calls();
    gw.decider.stop();
    monitor::final_flush(&gw);
    match Arc::into_inner(gw) {
        Some(gw) => gw.ledger.close()?,
        None => diag!(
            "some work outlived the drain; the ledger signs its final checkpoint as it closes"
        ),
    }
    diag!("gavel serve: stopped; the ledger is flushed and checkpointed");
    Ok(())
}

struct Listening {
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    max_header_bytes: usize,
    max_connections: usize,
    drain: Duration,
    reload_every: Duration,
}

async fn serve(
    gw: Arc<Gateway>,
    listen: SocketAddr,
    settings: Listening,
    watched: Vec<std::path::PathBuf>,
    alert_queue: tokio::sync::mpsc::UnboundedReceiver<monitor::Alert>,
    checkpointer: WalCheckpointer,
) -> Outcome {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::storage(format!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::storage(format!("cannot read the listening address: {e}")))?;
    let router = routes::router(gw.clone()).layer(axum::middleware::from_fn_with_state(
        settings.max_header_bytes,
        refuse_large_heads,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(reload::watch(
        gw.clone(),
        settings.reload_every,
        stop_rx.clone(),
        watched,
    ));
    tokio::spawn(checkpoint_wal(checkpointer, stop_rx.clone()));
    tokio::spawn(report_a_stopped_ledger(gw.clone(), stop_rx.clone()));
    tokio::spawn(metrics::upkeep(gw.metrics.clone(), stop_rx.clone()));
    let monitoring = tokio::spawn(monitor::run(gw.clone(), stop_rx));
    tokio::spawn(monitor::deliver_alerts(gw.clone(), alert_queue));
    let pager = gw.clone();
    tokio::task::spawn_blocking(move || match pager.monitor.resend_undelivered(&pager) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            alerts = n,
            "paging again for breaches whose alert was not delivered"
        ),
        Err(e) => tracing::error!(error = %e.message, "could not look for undelivered alerts"),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_header_bytes);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    gw.ready.store(true, Ordering::Release);
    // The one line on standard output: where to send requests (tests read it for port 0).
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("gavel serve: listening on {scheme}://{local}");
    tracing::info!(%local, contract = %gavel_contract::short_hash(&gw.engine().contract().version.0), "serving");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (http, service, watcher) = (
            http.clone(),
            TowerToHyperService::new(router.clone()),
            graceful.watcher(),
        );
        let (tls, handshake_within) = (settings.tls.clone(), settings.header_timeout);
        tokio::spawn(async move {
            match tls {
                None => {
                    let _ = watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await;
                }
                // The handshake is part of the head: a client gets as long for it.
                Some(tls) => match tokio::time::timeout(handshake_within, tls.accept(stream)).await
                {
                    Ok(Ok(stream)) => {
                        let _ = watcher
                            .watch(http.serve_connection(TokioIo::new(stream), service))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
            drop(slot);
        });
    }
    gw.ready.store(false, Ordering::Release);
    drop(listener);
    tracing::info!("draining");
    let _ = stop_tx.send(true);
    let _ = watcher.await;
    if tokio::time::timeout(settings.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout were cut");
    }
    // The last buckets are written once the decider has settled the last outcomes (`run`).
    let _ = monitoring.await;
    Ok(())
}

/// A TLS acceptor (rustls, HTTP/1.1) for the certificate chain and key in PEM files.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, Failure> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            Failure::invalid(format!(
                "--tls-cert `{}`: not a PEM certificate chain ({e})",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Failure::invalid(format!(
            "--tls-cert `{}` holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Failure::invalid(format!(
            "--tls-key `{}`: not a PEM private key ({e})",
            key.display()
        ))
    })?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Failure::storage(format!("TLS setup failed: {e}")))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        Failure::invalid(format!(
            "the TLS certificate and key do not fit together: {e}"
        ))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Refuses a request whose head (target and headers) is larger than `--max-header-bytes`.
/// HTTP/1's read buffer is bounded by the same figure, but that bounds what is read at once,
/// not the head: heads nearly twice as large passed it.
async fn refuse_large_heads(
    axum::extract::State(limit): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // As sent: `name: value` and a line end per header, and the request line's target.
    let head: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request.uri().to_string().len();
    if head > limit {
        return error::ApiError::new(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's headers and target hold {head} bytes, more than the {limit} this gateway takes (--max-header-bytes)"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Checkpoints the WAL every 200 ms until `stop` (small, frequent copies delayed requests less
/// than one a second did, and far less than a checkpoint inside a commit). Failures are
/// logged, not fatal: the WAL grows meanwhile and the next checkpoint copies it.
async fn checkpoint_wal(
    mut checkpointer: WalCheckpointer,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => break,
        }
        // A connection cannot be shared between threads, so it travels to the blocking
        // thread and back.
        let running = tokio::task::spawn_blocking(move || {
            let result = checkpointer.run();
            (checkpointer, result)
        });
        match running.await {
            Ok((back, result)) => {
                checkpointer = back;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "the WAL checkpoint failed; will retry");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL checkpoints stopped unexpectedly");
                break;
            }
        }
    }
}

/// Logs once, as an error, that the ledger has stopped accepting records: from then on every
/// decision is a BLOCK, and `/readyz` says why.
async fn report_a_stopped_ledger(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
        if let Some(why) = gw.ledger.failure() {
            tracing::error!("{}", api::ledger_stopped(why));
            return;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GAVEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
