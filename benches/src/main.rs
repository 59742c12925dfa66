//! hangcheck's benchmarks, one subcommand each; every run prints one JSON line. The
//! variants that need another build (tokio_unstable, console-subscriber) are built by
//! `benches/run.sh`, which also turns the lines into the tables of docs/performance.md.
//!
//! Where hangcheck's agent must be active, this program plays the runner's part itself:
//! it listens on a unix socket, sets `HANGCHECK_SOCKET`, and answers the hello.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hangcheck_runtime::protocol::{self, AgentMessage, RunnerMessage, MAX_AGENT_MESSAGE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(about = "hangcheck's benchmarks; see benches/run.sh")]
enum Bench {
    /// Spawn and complete trivial tasks: plain, named (hangcheck_runtime::spawn, agent
    /// on), hooks (plain spawn with hangcheck's tokio hooks installed), empty-hooks (four
    /// hooks that do nothing), console (console-subscriber).
    Spawn {
        variant: String,
        #[arg(long, default_value_t = 1_000_000)]
        tasks: u64,
    },
    /// The PING server: plain, hangcheck (agent on when HANGCHECK_SOCKET is set), console.
    Serve { variant: String },
    /// Load the PING server from this process over loopback; medians of several runs.
    Load {
        variant: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2)]
        clients: usize,
    },
    /// Snapshot time, and how long workers are held up, with this many live tasks.
    Snapshot {
        #[arg(long)]
        tasks: u64,
    },
    /// Stack capture of this many threads: raw and symbolised, cold and warm.
    Stacks {
        #[arg(long)]
        threads: usize,
    },
    /// Stall detection latency: how long past the threshold a blocked worker is caught,
    /// and how long until the stall (with its symbolised stack) reaches the runner.
    Stall {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long, default_value_t = 250)]
        threshold_ms: u64,
    },
}

fn main() {
    match Bench::parse() {
        Bench::Spawn { variant, tasks } => spawn(&variant, tasks),
        Bench::Serve { variant } => serve(&variant),
        Bench::Load { variant, runs, seconds, clients } => {
            load(&variant, runs, Duration::from_secs_f64(seconds), clients)
        }
        Bench::Snapshot { tasks } => snapshot(tasks),
        Bench::Stacks { threads } => stacks(threads),
        Bench::Stall { runs, threshold_ms } => stall(runs, threshold_ms),
    }
}

/// The runner's side of the agent connection, for benchmarks that need the agent on.
struct FakeRunner {
    _dir: tempfile::TempDir,
    stream: std::sync::mpsc::Receiver<UnixStream>,
}

impl FakeRunner {
    /// Listens, and points `HANGCHECK_SOCKET` at the listener (for this process, or for
    /// a child given the returned path).
    fn start(set_env: bool) -> (FakeRunner, PathBuf) {
        let dir = tempfile::Builder::new().prefix("hcb-").tempdir_in("/tmp").expect("temp dir");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        if set_env {
            // Set before anything asks for the agent; the process is still single-threaded.
            std::env::set_var(protocol::SOCKET_ENV, &path);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                let _ = tx.send(stream);
            }
        });
        (FakeRunner { _dir: dir, stream: rx }, path)
    }

    /// Waits for the agent, reads its hello, and returns the connection.
    fn connect(&self) -> Link {
        let stream = self.stream.recv_timeout(Duration::from_secs(30)).expect("the agent connected");
        let mut link = Link { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream), buf: Vec::new() };
        match link.next() {
            AgentMessage::Hello(_) => link,
            other => panic!("expected hello, got {other:?}"),
        }
    }
}

struct Link {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    buf: Vec<u8>,
}

impl Link {
    fn next(&mut self) -> AgentMessage {
        protocol::read_message(&mut self.reader, &mut self.buf, MAX_AGENT_MESSAGE).expect("a message")
    }

    /// A snapshot's round trip: request, serialisation, transfer, parse.
    fn snapshot(&mut self, id: u64) -> Duration {
        let started = Instant::now();
        protocol::write_message(&mut self.writer, &RunnerMessage::Snapshot { id }).unwrap();
        loop {
            if let AgentMessage::Snapshot { id: got, .. } = self.next() {
                if got == id {
                    return started.elapsed();
                }
            }
        }
    }

    /// Keeps reading (and dropping) what the agent sends, so it never blocks on us.
    fn drain_in_background(mut self) {
        std::thread::spawn(move || loop {
            if protocol::read_message::<_, AgentMessage>(&mut self.reader, &mut self.buf, MAX_AGENT_MESSAGE).is_err() {
                return;
            }
        });
    }
}

fn runtime(instrumented: bool) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    if instrumented {
        hangcheck_runtime::instrument(&mut builder);
    }
    builder.build().expect("runtime")
}

/// tokio's own cost of calling the four task hooks hangcheck installs, with hooks that do
/// nothing: the floor under any hook-based instrumentation.
#[cfg(tokio_unstable)]
fn runtime_with_empty_hooks() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(2)
        .enable_all()
        .on_task_spawn(|_| {})
        .on_task_terminate(|_| {})
        .on_before_task_poll(|_| {})
        .on_after_task_poll(|_| {});
    builder.build().expect("runtime")
}

#[cfg(not(tokio_unstable))]
fn runtime_with_empty_hooks() -> tokio::runtime::Runtime {
    eprintln!("empty-hooks needs --cfg tokio_unstable (benches/run.sh builds it)");
    std::process::exit(2);
}

#[cfg(feature = "console")]
fn console_init() {
    console_subscriber::init();
}

#[cfg(not(feature = "console"))]
fn console_init() {
    eprintln!("this build has no console-subscriber: build with --features console (benches/run.sh does)");
    std::process::exit(2);
}

fn spawn(variant: &str, tasks: u64) {
    let runner = matches!(variant, "named" | "hooks").then(|| FakeRunner::start(true).0);
    let rt = if variant == "empty-hooks" { runtime_with_empty_hooks() } else { runtime(runner.is_some()) };
    if let Some(r) = &runner {
        r.connect().drain_in_background();
    }
    let named = variant == "named";
    let mut per_task: Vec<f64> = rt.block_on(async move {
        if variant == "console" {
            console_init();
        }
        const BATCH: u64 = 1000;
        let mut runs = Vec::new();
        // Three runs; the median is reported.
        for _ in 0..3 {
            let started = Instant::now();
            let mut handles = Vec::with_capacity(BATCH as usize);
            for _ in 0..tasks / BATCH {
                for i in 0..BATCH {
                    handles.push(if named {
                        hangcheck_runtime::spawn("bench", async move { i })
                    } else {
                        tokio::spawn(async move { i })
                    });
                }
                for h in handles.drain(..) {
                    let _ = h.await;
                }
            }
            runs.push(started.elapsed().as_nanos() as f64 / tasks as f64);
        }
        runs
    });
    println!(
        "{{\"bench\":\"spawn\",\"variant\":\"{variant}\",\"tasks\":{tasks},\"ns_per_task\":{:.1},\"tokio_unstable\":{}}}",
        median(&mut per_task),
        cfg!(tokio_unstable)
    );
}

fn serve(variant: &str) {
    let rt = runtime(variant == "hangcheck");
    rt.block_on(async {
        if variant == "console" {
            console_init();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        hangcheck_runtime::announce("ping", addr);
        println!("listening on {addr}");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if line == "PING" { b"PONG\n" } else { b"ERR\n" };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn load(variant: &str, runs: usize, seconds: Duration, clients: usize) {
    let (runner, socket) = if variant.starts_with("hangcheck") {
        let (r, path) = FakeRunner::start(false);
        (Some(r), Some(path))
    } else {
        (None, None)
    };
    let serve_variant = if variant.starts_with("hangcheck") { "hangcheck" } else { variant };
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["serve", serve_variant]).stdout(std::process::Stdio::piped()).env_remove(protocol::SOCKET_ENV);
    if let Some(path) = &socket {
        cmd.env(protocol::SOCKET_ENV, path);
    }
    let mut server = cmd.spawn().expect("start the server");
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr = first.trim().strip_prefix("listening on ").expect("an address").to_owned();
    if let Some(r) = &runner {
        r.connect().drain_in_background();
    }

    let mut rps = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for _ in 0..runs {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let (addr, stop) = (addr.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    stream.set_nodelay(true).unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut latencies = Vec::new();
                    let mut line = String::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        stream.write_all(b"PING\n").unwrap();
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        std::thread::sleep(seconds);
        stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        all.sort();
        rps.push(all.len() as f64 / seconds.as_secs_f64());
        p50.push(all[all.len() / 2].as_secs_f64() * 1e6);
        p99.push(all[all.len() * 99 / 100].as_secs_f64() * 1e6);
    }
    let _ = server.kill();
    let _ = server.wait();
    println!(
        "{{\"bench\":\"load\",\"variant\":\"{variant}\",\"runs\":{runs},\"rps\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"tokio_unstable\":{}}}",
        median(&mut rps),
        median(&mut p50),
        median(&mut p99),
        cfg!(tokio_unstable)
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn snapshot(tasks: u64) {
    let runner = FakeRunner::start(true).0;
    let rt = runtime(true);
    let mut link = runner.connect();
    // Live tasks in ten groups, each parked until the end.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    rt.block_on(async {
        for i in 0..tasks {
            let mut release = release_rx.clone();
            let group = ["g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9"][(i % 10) as usize];
            hangcheck_runtime::spawn(group, async move {
                let _ = release.changed().await;
            });
        }
    });
    // A probe on the workers: spawns into a busy group and waits for it, over and over,
    // recording the longest round; a snapshot that held the group's lock shows up here.
    let probing = Arc::new(AtomicBool::new(true));
    let worst_ns = Arc::new(AtomicU64::new(0));
    let probe = {
        let (probing, worst_ns) = (Arc::clone(&probing), Arc::clone(&worst_ns));
        rt.spawn(async move {
            while probing.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _ = hangcheck_runtime::spawn("g0", async {}).await;
                worst_ns.fetch_max(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let baseline_worst = worst_ns.swap(0, Ordering::Relaxed);
    let mut times: Vec<f64> = (1..=20).map(|id| link.snapshot(id).as_secs_f64() * 1e3).collect();
    let during_worst = worst_ns.load(Ordering::Relaxed);
    probing.store(false, Ordering::Relaxed);
    let _ = rt.block_on(probe);
    let _ = release_tx.send(true);
    let max = times.iter().copied().fold(0.0, f64::max);
    println!(
        "{{\"bench\":\"snapshot\",\"tasks\":{tasks},\"median_ms\":{:.2},\"max_ms\":{max:.2},\"worst_holdup_ms\":{:.3},\"baseline_holdup_ms\":{:.3},\"tokio_unstable\":{}}}",
        median(&mut times),
        during_worst as f64 / 1e6,
        baseline_worst as f64 / 1e6,
        cfg!(tokio_unstable)
    );
}

fn stacks(threads: usize) {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let stop_rx = Arc::new(std::sync::Mutex::new(stop_rx));
    // `threads` threads in all, this one included.
    let parked: Vec<_> = (1..threads)
        .map(|_| {
            let rx = Arc::clone(&stop_rx);
            std::thread::spawn(move || {
                let _ = rx.lock().map(|rx| rx.recv_timeout(Duration::from_secs(120)));
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let time = |symbolise: bool| {
        let t = Instant::now();
        let (n, _) = hangcheck_runtime::__private::bench_capture_stacks(symbolise);
        assert!(n >= threads, "captured {n} of {threads} threads");
        t.elapsed().as_secs_f64() * 1e3
    };
    let raw_cold = time(false);
    let mut raw_warm: Vec<f64> = (0..5).map(|_| time(false)).collect();
    let sym_cold = time(true);
    let mut sym_warm: Vec<f64> = (0..5).map(|_| time(true)).collect();
    drop(stop_tx);
    drop(parked);
    println!(
        "{{\"bench\":\"stacks\",\"threads\":{threads},\"raw_cold_ms\":{raw_cold:.2},\"raw_warm_ms\":{:.2},\"symbolised_cold_ms\":{sym_cold:.2},\"symbolised_warm_ms\":{:.2}}}",
        median(&mut raw_warm),
        median(&mut sym_warm)
    );
}

fn stall(runs: usize, threshold_ms: u64) {
    std::env::set_var(protocol::STALL_THRESHOLD_ENV, threshold_ms.to_string());
    let runner = FakeRunner::start(true).0;
    let rt = runtime(true);
    let mut link = runner.connect();
    let block = Duration::from_millis(threshold_ms + 400);
    let mut detected = Vec::new();
    let mut delivered = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        rt.spawn(async move { std::thread::sleep(block) });
        loop {
            if let AgentMessage::Stall(stall) = link.next() {
                detected.push(stall.stuck_ms.saturating_sub(threshold_ms) as f64);
                delivered.push(started.elapsed().as_millis().saturating_sub(u128::from(threshold_ms)) as f64);
                break;
            }
        }
        // Let the blocked worker go before the next round.
        std::thread::sleep(block.saturating_sub(started.elapsed()) + Duration::from_millis(50));
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "{{\"bench\":\"stall\",\"threshold_ms\":{threshold_ms},\"runs\":{runs},\"detected_past_threshold_median_ms\":{:.0},\"detected_past_threshold_max_ms\":{:.0},\"delivered_past_threshold_median_ms\":{:.0},\"delivered_past_threshold_max_ms\":{:.0},\"tokio_unstable\":{}}}",
        median(&mut detected.clone()),
        max(&detected),
        median(&mut delivered.clone()),
        max(&delivered),
        cfg!(tokio_unstable)
    );
}
