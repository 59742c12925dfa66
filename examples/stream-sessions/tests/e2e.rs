//! End-to-end tests of the stream-sessions server, through `HANGCHECK_ADDR_STREAM`.
//! `rapid_prompts_in_one_session` sends a second prompt while the first streams.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

fn connect() -> (BufReader<TcpStream>, TcpStream) {
    let addr = std::env::var("HANGCHECK_ADDR_STREAM")
        .expect("HANGCHECK_ADDR_STREAM is not set: run with `cargo hangcheck test -p stream-sessions`");
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (BufReader::new(stream.try_clone().unwrap()), stream)
}

/// Reads lines until `END session`, returning them.
fn until_end(reader: &mut BufReader<TcpStream>, session: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a line");
        let line = line.trim_end().to_owned();
        let done = line == format!("END {session}");
        seen.push(line);
        if done {
            return seen;
        }
    }
}

#[test]
fn one_prompt_streams_to_the_end() {
    let (mut r, mut w) = connect();
    writeln!(w, "PROMPT solo 3").unwrap();
    let lines = until_end(&mut r, "solo");
    assert_eq!(lines, vec!["TOKEN solo 0", "TOKEN solo 1", "TOKEN solo 2", "END solo"]);
}

#[test]
fn rapid_prompts_in_one_session() {
    let (mut r, mut w) = connect();
    writeln!(w, "PROMPT chat 10").unwrap();
    writeln!(w, "PROMPT chat 3").unwrap();
    // The second answer arrives in full; what else arrives depends on the server.
    let lines = until_end(&mut r, "chat");
    assert!(lines.iter().filter(|l| l.starts_with("TOKEN chat")).count() >= 3, "{lines:?}");
}

#[test]
fn independent_sessions() {
    let (mut r, mut w) = connect();
    writeln!(w, "PROMPT left 3").unwrap();
    writeln!(w, "PROMPT right 3").unwrap();
    let mut ends = 0;
    while ends < 2 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.starts_with("END ") {
            ends += 1;
        }
    }
}
