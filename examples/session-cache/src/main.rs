//! A session server over TCP, one command per line:
//!
//! ```text
//! OPEN id       -> OPENED   (a session: a heartbeat task and a buffered pricing service)
//! PRICE id n    -> PRICE p  (through the session's tower Buffer)
//! CLOSE id      -> CLOSED   (drops the session; its tasks end)
//! PING          -> PONG
//! ```
//!
//! The bug it reproduces: a client that disconnects without `CLOSE` leaves its sessions
//! in the registry for good, and with each session two tasks nobody named: a heartbeat
//! spawned with plain `tokio::spawn` in this file, and the worker task that
//! `tower::buffer::Buffer::new` spawns inside tower. The only hangcheck code here is the
//! `#[hangcheck_runtime::main]` line and the `announce` that tells the tests the address;
//! with `--cfg tokio_unstable` hangcheck counts both tasks by spawn location, and names
//! tower's own source line for the second.
//!
//! With `SESSION_CACHE_FIXED=1` a connection closes the sessions it opened when it ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::buffer::Buffer;
use tower::{service_fn, Service, ServiceExt};

type Pricing = Buffer<u64, <PricingFn as Service<u64>>::Future>;
type PricingFn = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, Infallible>>>;

/// A session: its pricing service and the sender whose drop stops its heartbeat.
struct Session {
    pricing: Pricing,
    _alive: watch::Sender<()>,
}

type Sessions = Arc<Mutex<HashMap<String, Session>>>;

#[hangcheck_runtime::main(worker_threads = 2)]
async fn main() {
    let fixed = std::env::var("SESSION_CACHE_FIXED").is_ok_and(|v| v == "1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    println!("session-cache listening on {addr}");
    hangcheck_runtime::announce("sessions", addr);
    let sessions: Sessions = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(serve(stream, Arc::clone(&sessions), fixed));
    }
}

fn price(n: u64) -> std::future::Ready<Result<u64, Infallible>> {
    std::future::ready(Ok(n * 3 + 1))
}

fn open(id: &str) -> Session {
    let (alive_tx, mut alive_rx) = watch::channel(());
    let session = id.to_owned();
    tokio::spawn(async move {
        // Keeps the session warm until it is dropped.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = alive_rx.changed() => {
                    let _ = &session;
                    return;
                }
            }
        }
    });
    let pricing = Buffer::new(service_fn(price as fn(u64) -> _), 16);
    Session { pricing, _alive: alive_tx }
}

async fn serve(stream: TcpStream, sessions: Sessions, fixed: bool) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut mine = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut parts = line.split(' ');
        let reply = match (parts.next(), parts.next(), parts.next()) {
            (Some("PING"), None, None) => "PONG".to_owned(),
            (Some("OPEN"), Some(id), None) => {
                sessions.lock().unwrap().insert(id.to_owned(), open(id));
                mine.push(id.to_owned());
                "OPENED".to_owned()
            }
            (Some("PRICE"), Some(id), Some(n)) => {
                let pricing = sessions.lock().unwrap().get(id).map(|s| s.pricing.clone());
                match (pricing, n.parse::<u64>()) {
                    (Some(pricing), Ok(n)) => match pricing.oneshot(n).await {
                        Ok(p) => format!("PRICE {p}"),
                        Err(e) => format!("ERR {e}"),
                    },
                    (None, _) => "ERR no such session".to_owned(),
                    (_, Err(e)) => format!("ERR {e}"),
                }
            }
            (Some("CLOSE"), Some(id), None) => {
                sessions.lock().unwrap().remove(id);
                mine.retain(|m| m != id);
                "CLOSED".to_owned()
            }
            _ => format!("ERR unknown command: {line}"),
        };
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
    if fixed {
        let mut sessions = sessions.lock().unwrap();
        for id in mine {
            sessions.remove(&id);
        }
    }
}
