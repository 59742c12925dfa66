//! The runner's end of the agent connection: a listener in a private directory, the
//! hello handshake, and requests that always come back within a bound.
//!
//! A reader thread owns the read half and sorts what arrives: answers (they carry the
//! request's `id`) go to the waiting request, events (announcements, protocol errors,
//! the end of the connection) to an event queue. A request never waits longer than its
//! timeout, whatever the server does.

use std::io::{BufReader, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::{
    self, AgentMessage, Announcement, Hello, ProtocolError, Recorded, RunnerMessage, Snapshot, Stacks, StacksBudget,
    Stall, StallEnd, MAX_AGENT_MESSAGE,
};

/// Something the agent said (or that happened to the connection) outside an answer.
#[derive(Debug)]
pub enum LinkEvent {
    /// The server announced an address.
    Announce(Announcement),
    /// A worker stalled; the stall was written to `file` (durably) as it arrived.
    Stall {
        /// What the agent reported.
        stall: Box<Stall>,
        /// Where it was written, if writing worked.
        file: Option<PathBuf>,
        /// When it arrived: the agent pushes a stall the moment it catches it, so this
        /// places it on the run's timeline.
        at: Instant,
    },
    /// A stall reported before is over.
    StallEnd(StallEnd),
    /// The agent sent something that was not a valid message.
    ProtocolError(String),
    /// The server announced an address no test can be given (see
    /// [`Announcement::check`]): the server's fault, fatal to the run.
    BadAnnouncement(String),
    /// The connection ended.
    Closed,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No answer within the timeout.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection is gone.
    #[error("the connection to the agent is closed")]
    Closed,
    /// The agent answered with an error, or with the wrong kind of answer.
    #[error("the agent answered: {0}")]
    Agent(String),
    /// Writing the request failed.
    #[error("cannot send to the agent: {0}")]
    Send(#[from] ProtocolError),
}

/// The longest a request may take to be written to the socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the wait for hello looks at the deadline and at Ctrl-C.
const HELLO_POLL: Duration = Duration::from_millis(50);

/// A listening socket in a fresh private directory, removed when dropped.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Listener {
    /// Creates `hc-XXXXXX/agent.sock` under the temp dir, mode 0700. Unix socket paths
    /// are limited to 108 bytes, so a long `TMPDIR` falls back to `/tmp`.
    pub fn bind() -> std::io::Result<Listener> {
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() > 60 {
            base = PathBuf::from("/tmp");
        }
        let dir = tempfile::Builder::new().prefix("hc-").tempdir_in(base)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Listener { listener, path, _dir: dir })
    }

    /// The socket path, for `HANGCHECK_SOCKET`.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Accepts one connection if there is one waiting, with the peer's credentials
    /// (`SO_PEERCRED`: pid and uid of the process that connected).
    pub fn try_accept(&self) -> std::io::Result<Option<(UnixStream, Peer)>> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                    .map_err(std::io::Error::from)?;
                Ok(Some((stream, Peer { pid: cred.pid() as u32, uid: cred.uid() })))
            }
            // Interrupted by a signal (EINTR): nothing was accepted; the caller polls again.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Who connected to the socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The connecting process.
    pub pid: u32,
    /// Its user.
    pub uid: u32,
}

impl Peer {
    /// Why this peer is not the server's agent, if it is not: only the server process or
    /// one of its descendants, of the runner's own user, may speak for the server.
    pub fn refusal(&self, server: u32) -> Option<String> {
        let me = nix::unistd::getuid().as_raw();
        let command = std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        let who = format!("pid {} ({}), uid {}", self.pid, command.trim(), self.uid);
        if self.uid != me {
            Some(format!("refused a connection to the agent socket from {who}: not the runner's user (uid {me})"))
        } else if !descends_from(self.pid, server) {
            Some(format!("refused a connection to the agent socket from {who}: not the server (pid {server}) nor one of its descendants"))
        } else {
            None
        }
    }
}

/// Whether `pid` is `ancestor` or one of its descendants, by the parent chain in /proc.
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut pid = pid;
    // Bounded: a chain of parents is short, and a loop in a racing /proc cannot trap us.
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        match parent {
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// A connection to the agent after a successful hello.
pub struct AgentLink {
    writer: UnixStream,
    answers: Receiver<AgentMessage>,
    events: Receiver<LinkEvent>,
    next_id: u64,
    stacks_budget: StacksBudget,
}

impl AgentLink {
    /// Reads the hello from a freshly accepted stream, within `deadline`, and starts the
    /// reader thread. `on_stall` runs on the reader thread as each stall arrives, so that
    /// the stall is on disk at once, whatever happens to the server next.
    pub fn handshake(
        stream: UnixStream,
        deadline: Instant,
        interrupted: impl Fn() -> bool,
        mut on_stall: impl FnMut(&Stall) -> Option<PathBuf> + Send + 'static,
    ) -> Result<(AgentLink, Hello), String> {
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        // Short reads, so that a Ctrl-C while the hello is awaited is seen at once; a
        // partial line stays in `buf` across them.
        stream.set_read_timeout(Some(HELLO_POLL)).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut buf = Vec::new();
        let hello = loop {
            match protocol::read_message::<_, AgentMessage>(&mut reader, &mut buf, MAX_AGENT_MESSAGE) {
                Ok(AgentMessage::Hello(hello)) => break hello,
                Ok(other) => return Err(format!("the agent's first message was not hello: {other:?}")),
                Err(ProtocolError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if interrupted() {
                        return Err("interrupted while waiting for the agent's hello".into());
                    }
                    if Instant::now() >= deadline {
                        return Err("the agent connected but never said hello".into());
                    }
                }
                Err(e) => return Err(format!("bad hello from the agent: {e}")),
            }
        };
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        // A request is small, but a server that stopped reading fills the socket buffer:
        // then the write fails after this long instead of blocking the run.
        stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| e.to_string())?;
        let (answer_tx, answers) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        std::thread::Builder::new()
            .name("agent-link".into())
            .spawn(move || loop {
                match protocol::read_message::<_, AgentMessage>(&mut reader, &mut buf, MAX_AGENT_MESSAGE) {
                    Ok(AgentMessage::Announce(a)) => {
                        let _ = event_tx.send(match a.check() {
                            Ok(()) => LinkEvent::Announce(a),
                            Err(why) => LinkEvent::BadAnnouncement(why),
                        });
                    }
                    Ok(AgentMessage::Stall(stall)) => {
                        let at = Instant::now();
                        let file = on_stall(&stall);
                        let _ = event_tx.send(LinkEvent::Stall { stall: Box::new(stall), file, at });
                    }
                    Ok(AgentMessage::StallEnd(end)) => {
                        let _ = event_tx.send(LinkEvent::StallEnd(end));
                    }
                    Ok(msg) => {
                        let _ = answer_tx.send(msg);
                    }
                    Err(ProtocolError::Closed | ProtocolError::Io(_)) => {
                        let _ = event_tx.send(LinkEvent::Closed);
                        return;
                    }
                    Err(e) => {
                        let _ = event_tx.send(LinkEvent::ProtocolError(e.to_string()));
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let link = AgentLink { writer: stream, answers, events, next_id: 1, stacks_budget: StacksBudget::DEFAULT };
        Ok((link, hello))
    }

    /// Sends a request and waits up to `timeout` for its answer.
    fn request(
        &mut self,
        make: impl FnOnce(u64) -> RunnerMessage,
        timeout: Duration,
    ) -> Result<AgentMessage, LinkError> {
        let id = self.next_id;
        self.next_id += 1;
        protocol::write_message(&mut self.writer, &make(id))?;
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(remaining) {
                Ok(msg) if answer_id(&msg) == Some(id) => return Ok(msg),
                Ok(AgentMessage::Error { id: None, message }) => return Err(LinkError::Agent(message)),
                // An answer to an earlier request that timed out: drop it.
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(LinkError::Timeout(timeout)),
                Err(RecvTimeoutError::Disconnected) => return Err(LinkError::Closed),
            }
        }
    }

    /// Asks for a snapshot.
    pub fn snapshot(&mut self, timeout: Duration) -> Result<Snapshot, LinkError> {
        match self.request(|id| RunnerMessage::Snapshot { id }, timeout)? {
            // Folded again here: an agent of before the caps sends everything.
            AgentMessage::Snapshot { mut snapshot, .. } => {
                snapshot.fold();
                Ok(snapshot)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Sets what each stacks request may cost the server.
    pub fn set_stacks_budget(&mut self, budget: StacksBudget) {
        self.stacks_budget = budget;
    }

    /// Asks for every thread's stack and the async task stacks within the budget, and
    /// waits as long as that budget says.
    pub fn stacks(&mut self) -> Result<Stacks, LinkError> {
        let budget = self.stacks_budget;
        match self.request(|id| RunnerMessage::Stacks { id, budget: Some(budget) }, budget.runner_wait())? {
            AgentMessage::Stacks { stacks, .. } => Ok(stacks),
            other => Err(unexpected(other)),
        }
    }

    /// Asks for the flight recorder's events.
    pub fn recorded(&mut self, timeout: Duration) -> Result<Recorded, LinkError> {
        match self.request(|id| RunnerMessage::Recorded { id }, timeout)? {
            AgentMessage::Recorded { recorded, .. } => Ok(recorded),
            other => Err(unexpected(other)),
        }
    }

    /// Starts a new epoch in the server.
    pub fn set_epoch(&mut self, epoch: u64, timeout: Duration) -> Result<(), LinkError> {
        match self.request(|id| RunnerMessage::Epoch { id, epoch }, timeout)? {
            AgentMessage::Ack { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Waits up to `timeout` for the next event.
    pub fn next_event(&self, timeout: Duration) -> Option<LinkEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Every event that has already arrived.
    pub fn drain_events(&self) -> Vec<LinkEvent> {
        self.events.try_iter().collect()
    }
}

impl Drop for AgentLink {
    fn drop(&mut self) {
        // Ends the reader thread's blocking read.
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }
}

fn answer_id(msg: &AgentMessage) -> Option<u64> {
    match msg {
        AgentMessage::Snapshot { id, .. }
        | AgentMessage::Stacks { id, .. }
        | AgentMessage::Recorded { id, .. }
        | AgentMessage::Ack { id } => Some(*id),
        AgentMessage::Error { id, .. } => *id,
        _ => None,
    }
}

fn unexpected(msg: AgentMessage) -> LinkError {
    match msg {
        AgentMessage::Error { message, .. } => LinkError::Agent(message),
        other => LinkError::Agent(format!("unexpected answer {other:?}")),
    }
}
