//! A small key-value server over TCP, one command per line:
//!
//! ```text
//! PING          -> PONG
//! SET key value -> OK
//! GET key       -> VALUE value | NONE
//! WATCH key     -> WATCHING, later CHANGED key value when someone SETs key
//! ```
//!
//! The bug it reproduces (DESIGN.md, problem 2): `WATCH` spawns a waiter task that awaits
//! the key's next change. When the client disconnects before anyone sets the key, the
//! waiter waits forever: one leaked task per abandoned watch. Each test leaves a few
//! behind and nothing in the logs says so.
//!
//! With `WAITER_LEAK_FIXED=1` the waiter also watches its connection and ends with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

#[derive(Default)]
struct Store {
    values: Mutex<HashMap<String, String>>,
    /// One change signal per watched key.
    watchers: Mutex<HashMap<String, watch::Sender<()>>>,
}

impl Store {
    /// A receiver that sees every change of `key` from now on: subscribing in the
    /// request handler, before answering, means a SET right after the answer is not missed.
    fn subscribe(&self, key: &str) -> watch::Receiver<()> {
        let mut watchers = self.watchers.lock().unwrap();
        watchers.entry(key.to_owned()).or_insert_with(|| watch::channel(()).0).subscribe()
    }

    fn changed(&self, key: &str) {
        if let Some(sender) = self.watchers.lock().unwrap().get(key) {
            sender.send_replace(());
        }
    }
}

#[hangcheck_runtime::main(worker_threads = 2)]
async fn main() {
    let fixed = std::env::var("WAITER_LEAK_FIXED").is_ok_and(|v| v == "1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    println!("waiter-leak listening on {addr} (leak {})", if fixed { "fixed" } else { "on" });
    hangcheck_runtime::announce("kv", addr);

    let store = Arc::new(Store::default());
    let connects = hangcheck_runtime::counter("connects");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        connects.increment(1);
        let store = Arc::clone(&store);
        hangcheck_runtime::spawn("conn", serve(stream, store, fixed));
    }
}

async fn serve(stream: TcpStream, store: Arc<Store>, fixed: bool) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // Replies from this connection's waiters reach the client through the connection.
    let (push_tx, mut push_rx) = mpsc::unbounded_channel::<String>();
    // Dropped when the connection ends; a fixed waiter sees its sender close.
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(());
    loop {
        let reply = tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => handle(&line, &store, &push_tx, fixed.then(|| closed_rx.clone())),
                _ => break,
            },
            Some(pushed) = push_rx.recv() => pushed,
        };
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
    hangcheck_runtime::counter("disconnects").increment(1);
    drop(closed_tx);
    // Session teardown (flushing the connection's audit trail) outlives the client by a
    // moment: a snapshot taken the instant a test ends still sees this task. Settling
    // is what keeps it from being called a leak.
    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
}

fn handle(
    line: &str,
    store: &Arc<Store>,
    push: &mpsc::UnboundedSender<String>,
    closed: Option<tokio::sync::watch::Receiver<()>>,
) -> String {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("PING"), None, None) => "PONG".into(),
        (Some("SET"), Some(key), Some(value)) => {
            store.values.lock().unwrap().insert(key.into(), value.into());
            store.changed(key);
            "OK".into()
        }
        (Some("GET"), Some(key), None) => match store.values.lock().unwrap().get(key) {
            Some(v) => format!("VALUE {v}"),
            None => "NONE".into(),
        },
        (Some("WATCH"), Some(key), None) => {
            let mut watch = store.subscribe(key);
            let (store, push, key) = (Arc::clone(store), push.clone(), key.to_owned());
            hangcheck_runtime::spawn("waiter", async move {
                let changed = watch.changed();
                match closed {
                    // The bug: nothing but a SET of this key ever ends this task.
                    None => {
                        let _ = changed.await;
                    }
                    Some(mut closed) => tokio::select! {
                        _ = changed => {}
                        _ = closed.changed() => return,
                    },
                }
                let value = store.values.lock().unwrap().get(&key).cloned().unwrap_or_default();
                let _ = push.send(format!("CHANGED {key} {value}"));
            });
            "WATCHING".into()
        }
        _ => format!("ERR unknown command: {line}"),
    }
}
