//! The runtime side, driven as a real server process: inert without the runner, and an
//! agent that survives malformed and oversized requests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hangcheck_runtime::protocol::{self, AgentMessage, RunnerMessage, MAX_AGENT_MESSAGE};

use crate::util::built_binary;

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the waiter-leak server and waits for its "listening on" line.
fn start(socket: Option<&std::path::Path>) -> Server {
    let mut cmd = Command::new(built_binary("waiter-leak"));
    cmd.env_remove("HANGCHECK_SOCKET").stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null());
    if let Some(path) = socket {
        cmd.env("HANGCHECK_SOCKET", path);
    }
    let mut server = Server(cmd.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "unexpected first line {line:?}");
    server
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_owned())
        .collect()
}

#[test]
fn without_the_runner_the_server_starts_no_extra_thread() {
    let server = start(None);
    let names = thread_names(server.0.id());
    assert!(!names.iter().any(|n| n == "hangcheck-agent"), "{names:?}");
    // main + the two workers of `worker_threads = 2`, nothing else.
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn with_the_runner_the_agent_answers_and_survives_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = start(Some(&path));
    let (stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut next = || -> AgentMessage { protocol::read_message(&mut reader, &mut buf, MAX_AGENT_MESSAGE).unwrap() };

    let AgentMessage::Hello(hello) = next() else { panic!("the first message is not hello") };
    assert_eq!(hello.pid, server.0.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !thread_names(server.0.id()).iter().any(|n| n == "hangcheck-agent") {
        assert!(Instant::now() < deadline, "no hangcheck-agent thread");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Not JSON, an unknown type, an oversized line: each answered with an error.
    writer.write_all(b"not json\n").unwrap();
    writer.write_all(b"{\"v\":1,\"type\":\"launch\",\"id\":1}\n").unwrap();
    let mut huge = vec![b'x'; 200 * 1024];
    huge.push(b'\n');
    writer.write_all(&huge).unwrap();
    let mut errors = 0;
    writer.write_all(&protocol::encode(&RunnerMessage::Snapshot { id: 42 })).unwrap();
    loop {
        match next() {
            AgentMessage::Error { .. } => errors += 1,
            AgentMessage::Snapshot { id, snapshot } => {
                assert_eq!(id, 42);
                assert!(snapshot.process.threads >= 3, "main and two workers: {:?}", snapshot.process);
                assert!(snapshot.runtime.is_some(), "the runtime's metrics are reported");
                break;
            }
            AgentMessage::Announce(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(errors >= 3, "one error per bad request, got {errors}");
    // Still alive and still answering.
    writer.write_all(&protocol::encode(&RunnerMessage::Epoch { id: 43, epoch: 1 })).unwrap();
    loop {
        match next() {
            AgentMessage::Ack { id } => {
                assert_eq!(id, 43);
                break;
            }
            AgentMessage::Announce(_) | AgentMessage::Error { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
