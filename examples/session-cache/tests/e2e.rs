//! End-to-end tests of the session-cache server, through `HANGCHECK_ADDR_SESSIONS`.
//! `open_and_leave` and `two_sessions_and_leave` disconnect without closing.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Client(BufReader<TcpStream>, TcpStream);

impl Client {
    fn connect() -> Client {
        let addr = std::env::var("HANGCHECK_ADDR_SESSIONS")
            .expect("HANGCHECK_ADDR_SESSIONS is not set: run with `cargo hangcheck test -p session-cache`");
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client(BufReader::new(stream.try_clone().unwrap()), stream)
    }

    fn call(&mut self, command: &str) -> String {
        writeln!(self.1, "{command}").unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }
}

#[test]
fn ping() {
    assert_eq!(Client::connect().call("PING"), "PONG");
}

#[test]
fn open_price_close() {
    let mut c = Client::connect();
    assert_eq!(c.call("OPEN alice"), "OPENED");
    assert_eq!(c.call("PRICE alice 2"), "PRICE 7");
    assert_eq!(c.call("CLOSE alice"), "CLOSED");
}

#[test]
fn open_and_leave() {
    let mut c = Client::connect();
    assert_eq!(c.call("OPEN bob"), "OPENED");
    assert_eq!(c.call("PRICE bob 1"), "PRICE 4");
}

#[test]
fn two_sessions_and_leave() {
    let mut c = Client::connect();
    assert_eq!(c.call("OPEN carol"), "OPENED");
    assert_eq!(c.call("OPEN dave"), "OPENED");
}
