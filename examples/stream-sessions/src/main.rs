//! A token-streaming server over TCP, like a chat backend: `PROMPT session n` streams
//! `TOKEN session i` lines and then `END session`; one stream per session at a time.
//!
//! The bug it reproduces (DESIGN.md, problem 5): a second prompt in a session starts its
//! stream without cancelling the one still running, so two streams are in flight for one
//! session and their tokens interleave. It is brief, so counting tasks after the fact
//! rarely shows it; the stream is an operation (`hangcheck_runtime::op("stream",
//! session)`), and hangcheck flags the second one the moment it starts next to the first.
//!
//! With `STREAM_SESSIONS_FIXED=1` a new prompt cancels the running stream of its session,
//! and waits until it is gone, before it starts the next one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

/// The running stream of each session.
type Registry = Arc<Mutex<HashMap<String, JoinHandle<()>>>>;

#[hangcheck_runtime::main(worker_threads = 2)]
async fn main() {
    let fixed = std::env::var("STREAM_SESSIONS_FIXED").is_ok_and(|v| v == "1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    println!("stream-sessions listening on {addr}");
    hangcheck_runtime::announce("stream", addr);
    let registry: Registry = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        hangcheck_runtime::counter("connects").increment(1);
        tokio::spawn(serve(stream, Arc::clone(&registry), fixed));
    }
}

async fn serve(stream: TcpStream, registry: Registry, fixed: bool) {
    let (read, mut write) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(line) = out_rx.recv().await {
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut parts = line.split(' ');
        let (Some("PROMPT"), Some(session), Some(Ok(n))) =
            (parts.next(), parts.next(), parts.next().map(str::parse::<u32>))
        else {
            let _ = out_tx.send(format!("ERR unknown command: {line}\n"));
            continue;
        };
        hangcheck_runtime::counter("prompts").increment(1);
        let mut streams = registry.lock().await;
        if let Some(previous) = streams.remove(session) {
            if fixed {
                previous.abort();
                // Wait until the cancelled stream (and its operation) is really gone.
                let _ = previous.await;
                hangcheck_runtime::counter("streams_cancelled").increment(1);
            }
            // The bug: without `fixed`, the previous stream keeps running.
        }
        let op = hangcheck_runtime::op("stream", session);
        let (session, out) = (session.to_owned(), out_tx.clone());
        let handle = tokio::spawn(async move {
            let _op = op;
            for i in 0..n {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if out.send(format!("TOKEN {session} {i}\n")).is_err() {
                    return;
                }
            }
            let _ = out.send(format!("END {session}\n"));
        });
        streams.insert(line.split(' ').nth(1).unwrap_or_default().to_owned(), handle);
    }
    drop(out_tx);
    let _ = writer.await;
}
