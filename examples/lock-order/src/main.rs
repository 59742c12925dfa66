//! A tiny bank over TCP, one command per line:
//!
//! ```text
//! PING     -> PONG
//! TRANSFER -> DONE   moves money: locks the ledger, then the accounts
//! AUDIT    -> DONE   checks the books: locks the accounts, then the ledger
//! ```
//!
//! The bug it reproduces: `transfer` and `audit` take the same two `tokio::sync::Mutex`es
//! in opposite orders. When they run at once, each holds the lock the other waits for,
//! and both requests hang forever. Nothing is blocked in the OS sense (the workers are
//! idle, parked), so thread stacks show nothing; only the async stacks say where each
//! task waits. With `LOCK_ORDER_FIXED=1` the audit takes the locks in the transfer's
//! order, and both requests finish.
//!
//! In production this deadlock needs two requests to interleave within a few
//! microseconds. The example makes that interleaving certain: each function, holding its
//! first lock, waits (at most a second) for the other to hold its own first lock.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Mutex};

struct Bank {
    ledger: Mutex<Vec<String>>,
    accounts: Mutex<[i64; 2]>,
    /// Stands in for the timing that makes the deadlock rare: both first locks are held
    /// before either second lock is asked for.
    interleave: Barrier,
}

#[hangcheck_runtime::main(worker_threads = 2)]
async fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    hangcheck_runtime::announce("bank", listener.local_addr().expect("local addr"));
    let bank = Arc::new(Bank {
        ledger: Mutex::new(Vec::new()),
        accounts: Mutex::new([100, 100]),
        interleave: Barrier::new(2),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        hangcheck_runtime::spawn("conn", serve(stream, Arc::clone(&bank)));
    }
}

async fn serve(stream: TcpStream, bank: Arc<Bank>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match line.trim() {
            "PING" => "PONG",
            "TRANSFER" => transfer(&bank).await,
            "AUDIT" => audit(&bank).await,
            _ => "ERR unknown command",
        };
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Ledger first, then accounts.
async fn transfer(bank: &Bank) -> &'static str {
    let mut ledger = bank.ledger.lock().await;
    meet(bank).await;
    let mut accounts = bank.accounts.lock().await;
    accounts[0] -= 10;
    accounts[1] += 10;
    ledger.push("transfer 10".to_owned());
    "DONE"
}

/// Accounts first, then the ledger: the opposite order, unless fixed.
async fn audit(bank: &Bank) -> &'static str {
    if std::env::var_os("LOCK_ORDER_FIXED").is_some() {
        let ledger = bank.ledger.lock().await;
        let accounts = bank.accounts.lock().await;
        return if accounts.iter().sum::<i64>() == 200 && ledger.len() < usize::MAX { "DONE" } else { "ERR books" };
    }
    let accounts = bank.accounts.lock().await;
    meet(bank).await;
    let ledger = bank.ledger.lock().await;
    if accounts.iter().sum::<i64>() == 200 && ledger.len() < usize::MAX {
        "DONE"
    } else {
        "ERR books"
    }
}

/// Waits, at most a second, for the other request to hold its first lock.
async fn meet(bank: &Bank) {
    let _ = tokio::time::timeout(Duration::from_secs(1), bank.interleave.wait()).await;
}
