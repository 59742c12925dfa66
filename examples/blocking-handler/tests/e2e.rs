//! End-to-end tests of the blocking-handler server, through `HANGCHECK_ADDR_AUDIT`.
//! `audit_during_backup` blocks a worker for as long as the backup holds the lock.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

fn call(stream: &mut TcpStream, command: &str) -> String {
    writeln!(stream, "{command}").unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).expect("a reply");
    line.trim_end().to_owned()
}

fn connect() -> TcpStream {
    let addr = std::env::var("HANGCHECK_ADDR_AUDIT")
        .expect("HANGCHECK_ADDR_AUDIT is not set: run with `cargo hangcheck test -p blocking-handler`");
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
}

#[test]
fn ping() {
    assert_eq!(call(&mut connect(), "PING"), "PONG");
}

#[test]
fn record_and_audit() {
    let mut c = connect();
    assert_eq!(call(&mut c, "RECORD login"), "OK");
    assert!(call(&mut c, "AUDIT").starts_with("ENTRIES "));
}

#[test]
fn audit_during_backup() {
    let mut c = connect();
    assert_eq!(call(&mut c, "BACKUP"), "BACKUP STARTED");
    // Answers, eventually: after the backup lets go of the lock.
    assert!(call(&mut c, "AUDIT").starts_with("ENTRIES "));
}
