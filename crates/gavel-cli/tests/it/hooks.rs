//! Helpers for the monitoring tests: a webhook receiver, waiting for a condition, and reading
//! ledger records through the gateway.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::serve::Server;

/// A webhook receiver on loopback that keeps every JSON body it is sent.
pub fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let (url, received, _) = failing_webhook(false);
    (url, received)
}

/// As [`webhook`], answering 500 while the returned flag is set.
pub fn failing_webhook(failing: bool) -> (String, Arc<Mutex<Vec<Value>>>, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(failing));
    let fails = failing.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hook/secret-token",
        listener.local_addr().unwrap()
    );
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().unwrap().push(v);
                }
            }
            let answer: &[u8] = if fails.load(Ordering::SeqCst) {
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
            };
            let _ = stream.write_all(answer);
        }
    });
    (url, received, failing)
}

/// Polls `done` every 100 ms until it holds or `limit` has passed (a deadline for something
/// that happens in the background, generous for a loaded machine; not a speed measurement).
pub fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Every ledger record of `kind`, through the gateway's audit API.
pub fn records(s: &Server, key: &str, kind: &str) -> Vec<Value> {
    let r = s.request(
        "GET",
        &format!("/v1/audit/records?kind={kind}"),
        Some(key),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
