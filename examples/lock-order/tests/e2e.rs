//! End-to-end tests of the lock-order server, through `HANGCHECK_ADDR_BANK`.
//! `transfer_during_an_audit` deadlocks until `LOCK_ORDER_FIXED=1`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

fn connect() -> TcpStream {
    let addr = std::env::var("HANGCHECK_ADDR_BANK")
        .expect("HANGCHECK_ADDR_BANK is not set: run with `cargo hangcheck test -p lock-order`");
    TcpStream::connect(addr).unwrap()
}

fn reply(stream: &TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("a reply");
    line.trim_end().to_owned()
}

#[test]
fn ping() {
    let mut c = connect();
    writeln!(c, "PING").unwrap();
    assert_eq!(reply(&c), "PONG");
}

#[test]
fn transfer_during_an_audit() {
    let (mut teller, mut auditor) = (connect(), connect());
    writeln!(teller, "TRANSFER").unwrap();
    writeln!(auditor, "AUDIT").unwrap();
    assert_eq!(reply(&teller), "DONE");
    assert_eq!(reply(&auditor), "DONE");
}

#[test]
fn without_locks_the_server_still_answers() {
    let mut c = connect();
    writeln!(c, "PING").unwrap();
    assert_eq!(reply(&c), "PONG");
}
