//! The harness on its own, under a plain `cargo test`: it starts the server and speaks to
//! its agent as a minimal runner would — readiness only.
//!
//! The server gets the `args` and `env` of the package's `[package.metadata.hangcheck.server]`
//! (see [`super::metadata`]), a socket in a fresh private directory (`HANGCHECK_SOCKET`) and the
//! stall watchdog off; its output goes to `server.log` in the same directory, whose tail
//! is shown if it never gets ready. Ready means: the agent said hello and the server
//! announced an address, within 30 s. After that a thread reads and drops whatever the
//! agent sends (so it never blocks on a full socket) for as long as the server lives.
//!
//! The server stays in the harness's process group, so a Ctrl-C at the terminal reaches
//! it too, and on Linux it is SIGKILLed by the kernel if the harness dies first
//! (`PR_SET_PDEATHSIG`): no way out of the harness leaves the server behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Trial};

use crate::protocol::{self, AgentMessage, ProtocolError, MAX_AGENT_MESSAGE, SOCKET_ENV, STALL_THRESHOLD_ENV};

/// How long the server may take to say hello and announce an address.
const STARTUP: Duration = Duration::from_secs(30);
/// Between SIGTERM and SIGKILL at the end.
const GRACE: Duration = Duration::from_secs(5);
/// How often the bounded waits look again.
const POLL: Duration = Duration::from_millis(10);

/// Starts the server (unless nothing will run), runs the trials with libtest's
/// arguments, stops the server, and exits with libtest's code.
pub(super) fn run(server_bin: &Path, args: &Arguments, trials: Vec<Trial>) -> ! {
    let runs_any = trials.iter().any(|t| !args.is_filtered_out(t) && !args.is_ignored(t));
    if args.list || !runs_any {
        libtest_mimic::run(args, trials).exit()
    }
    let server = match Server::start(server_bin) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: hangcheck harness: {e}");
            std::process::exit(101)
        }
    };
    let _ = super::ANNOUNCED.set(server.addrs.clone());
    let conclusion = libtest_mimic::run(args, trials);
    server.stop();
    conclusion.exit()
}

/// A server the harness started.
struct Server {
    child: Child,
    addrs: BTreeMap<String, String>,
    dir: PathBuf,
}

impl Server {
    fn start(bin: &Path) -> Result<Server, String> {
        let dir = private_dir().map_err(|e| format!("cannot create a directory for the server's socket: {e}"))?;
        // Listening before the server starts: its agent connects once, early.
        let listener =
            match UnixListener::bind(dir.join("agent.sock")).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(format!("cannot listen for the server's agent: {e}"));
                }
            };
        // From here on, dropping `server` removes the directory and kills the process.
        let mut server = Server::spawn(bin, dir)?;
        let ready = server.wait_until_ready(&listener);
        match ready {
            Ok(addrs) => {
                server.addrs = addrs;
                Ok(server)
            }
            Err(e) => Err(format!("{e}\n{}", server.log_tail())),
        }
    }

    fn spawn(bin: &Path, dir: PathBuf) -> Result<Server, String> {
        let fail = |what: &str, e: std::io::Error| {
            let _ = std::fs::remove_dir_all(&dir);
            format!("{what}: {e}")
        };
        let log = match File::create(dir.join("server.log")) {
            Ok(f) => f,
            Err(e) => return Err(fail("cannot create the server log", e)),
        };
        let log_err = match log.try_clone() {
            Ok(f) => f,
            Err(e) => return Err(fail("cannot share the server log", e)),
        };
        let setup = match super::metadata::server_setup() {
            Ok(setup) => setup,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut cmd = Command::new(bin);
        cmd.args(&setup.args)
            .envs(&setup.env)
            .env(SOCKET_ENV, dir.join("agent.sock"))
            .env(STALL_THRESHOLD_ENV, "0")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        die_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(child) => Ok(Server { child, addrs: BTreeMap::new(), dir }),
            Err(e) => Err(fail(&format!("cannot start the server {}", bin.display()), e)),
        }
    }

    /// Waits for the agent's hello and a first announced address, then leaves a thread
    /// draining the connection.
    fn wait_until_ready(&mut self, listener: &UnixListener) -> Result<BTreeMap<String, String>, String> {
        let deadline = Instant::now() + STARTUP;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("cannot accept the server's agent: {e}")),
            }
            self.check(deadline, "connect to the harness; does its main use #[hangcheck_runtime::main]")?;
            std::thread::sleep(POLL);
        };
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        stream.set_nonblocking(false).and_then(|()| stream.set_read_timeout(Some(POLL))).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut hello = false;
        let mut addrs = BTreeMap::new();
        while !hello || addrs.is_empty() {
            match protocol::read_message::<_, AgentMessage>(&mut reader, &mut buf, MAX_AGENT_MESSAGE) {
                Ok(AgentMessage::Hello(h)) => {
                    hello = true;
                    addrs.extend(h.announced.into_iter().map(|a| (a.name, a.addr)));
                }
                Ok(AgentMessage::Announce(a)) => {
                    addrs.insert(a.name, a.addr);
                }
                Ok(_) => {}
                Err(ProtocolError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("the server's agent: {e}")),
            }
            self.check(deadline, if hello { "announce an address" } else { "say hello" })?;
        }
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("hangcheck-harness-drain".into())
            .spawn(move || {
                let _keep_open = stream;
                // Until the server closes the connection: nothing it says matters here.
                while !matches!(
                    protocol::read_message::<_, AgentMessage>(&mut reader, &mut buf, MAX_AGENT_MESSAGE),
                    Err(ProtocolError::Closed | ProtocolError::Io(_))
                ) {}
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(addrs)
    }

    /// An error if the server has exited or the deadline has passed.
    fn check(&mut self, deadline: Instant, waiting_to: &str) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("the server exited during start-up with {status}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("the server did not {waiting_to} within {STARTUP:?}"));
        }
        Ok(())
    }

    /// The end of the server log, at most 4 KiB, for an error message.
    fn log_tail(&self) -> String {
        let path = self.dir.join("server.log");
        let mut text = String::new();
        if let Ok(mut file) = File::open(&path) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(4096)));
            let mut bytes = Vec::new();
            let _ = file.take(4096).read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        format!("--- the server's output (last 4 KiB):\n{text}")
    }

    /// SIGTERM, up to [`GRACE`] to exit, then SIGKILL.
    fn stop(mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: kill(2) has no memory effects. The pid is our child's, and the
                // child has not been reaped (try_wait just saw it running), so the pid
                // cannot have been reused by another process.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if let Ok(None) = self.child.try_wait() {
                eprintln!(
                    "warning: hangcheck harness: the server did not exit within {GRACE:?} of SIGTERM and was killed; \
                     `cargo hangcheck test` shows what it was waiting for"
                );
            }
        }
        // Drop kills (if still running) and reaps.
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory only this user can enter, short enough for a socket path (108
/// bytes at most).
fn private_dir() -> std::io::Result<PathBuf> {
    let mut base = std::env::temp_dir();
    if base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = base.join(format!("hc-harness-{}-{nanos:x}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Asks the kernel to SIGKILL the server when the harness dies, whatever kills it.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe syscalls (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The harness died between fork and prctl: nobody would kill us later.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}
