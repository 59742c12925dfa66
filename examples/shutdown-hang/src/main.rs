//! A counter server over TCP (`INCR` -> the new value, `PING` -> `PONG`) that shuts down
//! gracefully on SIGTERM: it stops accepting, tells its background tasks to stop, and
//! waits for them.
//!
//! The bug it reproduces (DESIGN.md, problem 3): the metrics flusher sleeps in a loop and
//! never looks at the stop signal, so the graceful shutdown waits forever. In CI the
//! server is SIGKILLed and the evidence dies with it; hangcheck writes the stacks and the
//! surviving task groups (the flusher, and how old it is) to disk before the SIGKILL.
//!
//! With `SHUTDOWN_HANG_FIXED=1` the flusher also watches the stop signal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[hangcheck_runtime::main(worker_threads = 2)]
async fn main() {
    let fixed = std::env::var("SHUTDOWN_HANG_FIXED").is_ok_and(|v| v == "1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    println!("shutdown-hang listening on {addr}");
    hangcheck_runtime::announce("counter", addr);

    let count = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let flusher = hangcheck_runtime::spawn("metrics-flusher", flush_metrics(Arc::clone(&count), stop_rx, fixed));
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                hangcheck_runtime::spawn("conn", serve(stream, Arc::clone(&count)));
            }
            _ = terminate.recv() => break,
        }
    }
    println!("SIGTERM: stopping background tasks");
    let _ = stop_tx.send(true);
    let _ = flusher.await;
    println!("stopped cleanly");
}

async fn serve(stream: TcpStream, count: Arc<AtomicU64>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match line.as_str() {
            "PING" => "PONG".to_owned(),
            "INCR" => (count.fetch_add(1, Ordering::Relaxed) + 1).to_string(),
            _ => format!("ERR unknown command: {line}"),
        };
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Writes the counter somewhere every second. The bug: the buggy loop never looks at
/// `stop`, so it never ends.
async fn flush_metrics(count: Arc<AtomicU64>, mut stop: watch::Receiver<bool>, fixed: bool) {
    loop {
        if fixed {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let _ = count.load(Ordering::Relaxed);
    }
}
