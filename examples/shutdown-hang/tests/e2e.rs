//! End-to-end tests of the shutdown-hang server, through `HANGCHECK_ADDR_COUNTER`. They
//! all pass; the hang comes after them, when the server is asked to stop.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

fn call(command: &str) -> String {
    let addr = std::env::var("HANGCHECK_ADDR_COUNTER")
        .expect("HANGCHECK_ADDR_COUNTER is not set: run with `cargo hangcheck test -p shutdown-hang`");
    let mut stream = TcpStream::connect(addr).unwrap();
    writeln!(stream, "{command}").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

#[test]
fn ping() {
    assert_eq!(call("PING"), "PONG");
}

#[test]
fn incr_counts_up() {
    let a: u64 = call("INCR").parse().unwrap();
    let b: u64 = call("INCR").parse().unwrap();
    assert!(b > a);
}
