//! A tiny pub/sub server over TCP, one command per line:
//!
//! ```text
//! PING              -> PONG
//! PUBLISH topic msg -> DELIVERED n
//! NEXT topic        -> MESSAGE msg, once someone publishes to topic
//! ```
//!
//! The bug it reproduces: `NEXT` parks the request until the next publish. A client that
//! asks for the next message of a quiet topic never gets an answer: its E2E test hangs
//! until CI kills the job, and the connection task stays behind, awaiting forever.
//! hangcheck stops the test at its timeout — after writing the server's stacks and a
//! snapshot to disk — and goes on with the next test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

type Waiting = Arc<Mutex<HashMap<String, Vec<oneshot::Sender<String>>>>>;

#[hangcheck_runtime::main(worker_threads = 2)]
async fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    println!("never-answers listening on {addr}");
    hangcheck_runtime::announce("pubsub", addr);
    let waiting: Waiting = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        hangcheck_runtime::spawn("conn", serve(stream, Arc::clone(&waiting)));
    }
}

async fn serve(stream: TcpStream, waiting: Waiting) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut parts = line.splitn(3, ' ');
        let reply = match (parts.next(), parts.next(), parts.next()) {
            (Some("PING"), None, None) => "PONG".to_owned(),
            (Some("PUBLISH"), Some(topic), Some(msg)) => {
                let senders = waiting.lock().unwrap().remove(topic).unwrap_or_default();
                let n = senders.into_iter().filter_map(|s| s.send(msg.to_owned()).ok()).count();
                format!("DELIVERED {n}")
            }
            (Some("NEXT"), Some(topic), None) => next_message(&waiting, topic).await,
            _ => format!("ERR unknown command: {line}"),
        };
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Waits for the next message on `topic`. Nothing bounds the wait, and the client's
/// departure is not noticed while it lasts.
async fn next_message(waiting: &Waiting, topic: &str) -> String {
    let (tx, rx) = oneshot::channel();
    waiting.lock().unwrap().entry(topic.to_owned()).or_default().push(tx);
    match rx.await {
        Ok(msg) => format!("MESSAGE {msg}"),
        Err(_) => "ERR topic closed".to_owned(),
    }
}
