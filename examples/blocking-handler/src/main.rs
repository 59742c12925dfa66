//! An audit-log server over TCP, one command per line:
//!
//! ```text
//! PING          -> PONG
//! RECORD event  -> OK
//! AUDIT         -> ENTRIES n
//! BACKUP        -> BACKUP STARTED (a backup thread copies the log, holding its lock)
//! ```
//!
//! The bug it reproduces (DESIGN.md, problem 1): the log sits behind a
//! `std::sync::Mutex`, and the async `AUDIT` handler locks it directly. While the backup
//! thread holds the lock, the handler blocks its tokio worker: every task on that worker
//! waits, tests time out, and nothing in the logs says where. hangcheck's stall watchdog
//! catches the worker while it is still blocked and takes its stack.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How long a backup holds the log's lock.
const BACKUP_TAKES: Duration = Duration::from_millis(1500);

type Log = Arc<Mutex<Vec<String>>>;

#[hangcheck_runtime::main(worker_threads = 2)]
async fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    println!("blocking-handler listening on {addr}");
    hangcheck_runtime::announce("audit", addr);
    let log: Log = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        hangcheck_runtime::spawn("conn", serve(stream, Arc::clone(&log)));
    }
}

async fn serve(stream: TcpStream, log: Log) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match line.split_once(' ').map_or((line.as_str(), ""), |(c, a)| (c, a)) {
            ("PING", _) => "PONG".to_owned(),
            ("RECORD", event) => {
                log.lock().unwrap().push(event.to_owned());
                "OK".to_owned()
            }
            ("AUDIT", _) => format!("ENTRIES {}", audit_entries(&log)),
            ("BACKUP", _) => {
                start_backup(Arc::clone(&log));
                "BACKUP STARTED".to_owned()
            }
            _ => format!("ERR unknown command: {line}"),
        };
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Counts the log's entries. The bug: a synchronous lock inside async code. While a
/// backup holds the lock, this blocks the worker thread it runs on.
#[inline(never)]
fn audit_entries(log: &Log) -> usize {
    let entries = log.lock().unwrap();
    entries.len()
}

/// Starts a backup on its own OS thread and returns once it holds the log's lock.
fn start_backup(log: Log) {
    let (locked_tx, locked_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let entries = log.lock().unwrap();
        let _ = locked_tx.send(());
        // Copying the log somewhere slow.
        std::thread::sleep(BACKUP_TAKES);
        drop(entries);
    });
    let _ = locked_rx.recv();
}
