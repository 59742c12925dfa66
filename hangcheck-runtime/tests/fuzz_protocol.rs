//! Fuzz targets for both sides' protocol decoders, run by proptest inside `cargo test`.
//!
//! - `runner_side_decoder`: what the runner reads from the agent (`AgentMessage`, up to
//!   `MAX_AGENT_MESSAGE`), framed by `read_message`.
//! - `agent_side_decoder`: what the agent reads from the runner (`RunnerMessage`, up to
//!   `MAX_RUNNER_MESSAGE`).
//!
//! Inputs are valid messages of every type, mutated (bits flipped, bytes inserted,
//! deleted or replaced with NUL, quotes, braces, newlines, digits), cut and spliced, and
//! plain random bytes. The decoders must never panic; whatever they accept must encode
//! and decode back to the same message; framing must never buffer past its limit.
//!
//! A default run is a few thousand cases per target, seconds in all. Longer:
//! `PROPTEST_CASES=1000000 cargo test --release -p hangcheck-runtime --test fuzz_protocol`.

use std::io::{BufReader, Cursor};

use hangcheck_runtime::protocol::{
    decode, encode, read_message, AgentMessage, Announcement, Frame, Hello, Recorded, RecordedEvent, RecordedKind,
    RunnerMessage, Snapshot, StackSource, Stacks, StacksBudget, Stall, StallEnd, ThreadStack, MAX_AGENT_MESSAGE,
    MAX_RUNNER_MESSAGE,
};
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(3000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn thread() -> ThreadStack {
    ThreadStack {
        tid: 7,
        name: "tokio-rt-worker".into(),
        state: "S".into(),
        frames: vec![Frame { function: Some("app::handler".into()), file: Some("src/main.rs".into()), line: Some(3) }],
        note: None,
    }
}

fn recorded() -> Recorded {
    let spawn = RecordedEvent {
        at_us: 4000,
        event: RecordedKind::TaskSpawn,
        task: Some(5),
        group: Some("conn".into()),
        location: Some("src/main.rs:33".into()),
        epoch: Some(2),
        ..RecordedEvent::default()
    };
    let op = RecordedEvent {
        at_us: 4100,
        event: RecordedKind::OpStart,
        task: Some(5),
        op: Some("stream".into()),
        key: Some("#0123456789abcdef".into()),
        ..RecordedEvent::default()
    };
    Recorded { capacity: 4096, recorded: 2, now_us: 5000, events: vec![spawn, op] }
}

fn agent_seeds() -> Vec<Vec<u8>> {
    let hello = Hello {
        pid: 42,
        protocol: 1,
        runtime_version: "0.1.0".into(),
        capabilities: vec!["snapshot".into()],
        announced: vec![Announcement { name: "http".into(), addr: "127.0.0.1:8080".into() }],
    };
    let stacks = Stacks { source: StackSource::Agent, took_ms: 3, threads: vec![thread()], tasks: None };
    let stall = Stall {
        tid: 7,
        thread: "tokio-rt-worker".into(),
        stuck_ms: 300,
        threshold_ms: 250,
        epoch: 2,
        task: None,
        stack: thread(),
        recorded: Some(recorded()),
        seq: 1,
    };
    [
        AgentMessage::Hello(hello),
        AgentMessage::Announce(Announcement { name: "admin".into(), addr: "[::1]:9".into() }),
        AgentMessage::Snapshot { id: 1, snapshot: Snapshot::default() },
        AgentMessage::Stacks { id: 2, stacks },
        AgentMessage::Stall(stall),
        AgentMessage::StallEnd(StallEnd { seq: 1, total_ms: 1500 }),
        AgentMessage::Recorded { id: 4, recorded: recorded() },
        AgentMessage::Ack { id: 3 },
        AgentMessage::Error { id: None, message: "no".into() },
    ]
    .iter()
    .map(encode)
    .collect()
}

fn runner_seeds() -> Vec<Vec<u8>> {
    [
        RunnerMessage::Snapshot { id: 1 },
        RunnerMessage::Epoch { id: 2, epoch: 9 },
        RunnerMessage::Stacks { id: 3, budget: Some(StacksBudget::DEFAULT) },
        RunnerMessage::Stacks { id: 4, budget: None },
        RunnerMessage::Recorded { id: 5 },
    ]
    .iter()
    .map(encode)
    .collect()
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

const INTERESTING: &[u8] = b"\0\"{}[]:,\n\\-09eE.tfn ";

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), prop::sample::select(INTERESTING)).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len().max(1);
        match *e {
            Edit::Flip(i, mask) => {
                if let Some(b) = bytes.get_mut(i % len) {
                    *b ^= mask;
                }
            }
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Delete(i) => {
                if !bytes.is_empty() {
                    bytes.remove(i % len);
                }
            }
            Edit::Truncate(i) => bytes.truncate(i % len),
            Edit::Duplicate(i, n) => {
                let start = i % len;
                let chunk: Vec<u8> = bytes.iter().skip(start).take(n).copied().collect();
                let at = start.min(bytes.len());
                bytes.splice(at..at, chunk);
            }
        }
    }
    bytes
}

/// Mutated seeds and plain random bytes.
fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (prop::sample::select(seeds), prop::collection::vec(edit(), 0..8)).prop_map(|(s, e)| apply(s, &e)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Decoding never panics, and what is accepted round-trips.
fn decodes_safely<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8], limit: usize) {
    if let Ok(msg) = decode::<T>(bytes, limit) {
        let again: T = decode(&encode(&msg), limit).expect("an accepted message re-encodes to a valid one");
        assert_eq!(again, msg);
    }
}

/// Framing never panics, never holds more than the limit, and always ends.
fn frames_safely<T: DeserializeOwned>(bytes: &[u8], limit: usize) {
    let mut reader = BufReader::with_capacity(16, Cursor::new(bytes));
    let mut buf = Vec::new();
    // Each call consumes at least one byte or ends the input.
    for _ in 0..=bytes.len() + 1 {
        let result = read_message::<_, T>(&mut reader, &mut buf, limit);
        assert!(buf.len() <= limit + 1, "buffered {} bytes over a limit of {limit}", buf.len());
        if matches!(result, Err(hangcheck_runtime::protocol::ProtocolError::Closed)) {
            return;
        }
    }
    panic!("read_message did not reach the end of {} bytes", bytes.len());
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn runner_side_decoder(bytes in input(agent_seeds())) {
        decodes_safely::<AgentMessage>(&bytes, MAX_AGENT_MESSAGE);
        // A small limit exercises the size checks too.
        decodes_safely::<AgentMessage>(&bytes, 64);
        frames_safely::<AgentMessage>(&bytes, MAX_AGENT_MESSAGE);
        frames_safely::<AgentMessage>(&bytes, 64);
    }

    #[test]
    fn agent_side_decoder(bytes in input(runner_seeds())) {
        decodes_safely::<RunnerMessage>(&bytes, MAX_RUNNER_MESSAGE);
        decodes_safely::<RunnerMessage>(&bytes, 16);
        frames_safely::<RunnerMessage>(&bytes, MAX_RUNNER_MESSAGE);
        frames_safely::<RunnerMessage>(&bytes, 16);
    }
}
