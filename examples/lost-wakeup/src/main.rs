//! A job server over TCP, one command per line:
//!
//! ```text
//! PING -> PONG
//! JOB  -> DONE, once a worker has done the job
//! ```
//!
//! The bug it reproduces, a lost wakeup: `JOB` hands the job to a worker, prepares its
//! reply, and only then waits for the worker's `notify_waiters()`. When the worker is
//! quicker than the preparation (about one call in five), the notification goes to
//! nobody and the request waits forever. Run once, the suite usually passes;
//! `cargo hangcheck test -p lost-wakeup --repeat 30` catches it, and names the wait.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[hangcheck_runtime::main(worker_threads = 2)]
async fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    println!("lost-wakeup listening on {addr}");
    hangcheck_runtime::announce("jobs", addr);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        hangcheck_runtime::spawn("conn", serve(stream));
    }
}

async fn serve(stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match line.as_str() {
            "PING" => "PONG".to_owned(),
            "JOB" => job().await,
            _ => format!("ERR unknown command: {line}"),
        };
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Hands a job to a worker and waits until it is done.
async fn job() -> String {
    let done = Arc::new(Notify::new());
    let worker = Arc::clone(&done);
    // The job is 0-5 ms of computation, on a thread of its own.
    let work = random_micros(5_000);
    std::thread::spawn(move || {
        compute(work);
        worker.notify_waiters();
    });
    // Preparing the reply is 0-2 ms of computation (LOST_WAKEUP_PREPARE_US sets the
    // most), then a turn for other tasks; the wait begins only after it. BUG: a worker
    // that finished meanwhile notified nobody (notify_waiters keeps no permit).
    compute(random_micros(prepare_us()));
    tokio::task::yield_now().await;
    wait_for_worker(&done).await;
    "DONE".to_owned()
}

/// Waits for the worker's notification.
async fn wait_for_worker(done: &Notify) {
    done.notified().await;
}

/// The longest preparation, in microseconds: the smaller, the rarer the race.
fn prepare_us() -> u64 {
    std::env::var("LOST_WAKEUP_PREPARE_US").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000).max(1)
}

/// Stands for a few milliseconds of CPU work (far below the stall threshold).
fn compute(how_long: Duration) {
    std::thread::sleep(how_long);
}

/// A duration of up to `max` microseconds, uniformly.
fn random_micros(max: u64) -> Duration {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = RandomState::new().hash_one(CALLS.fetch_add(1, Ordering::Relaxed));
    Duration::from_micros(n % max)
}
