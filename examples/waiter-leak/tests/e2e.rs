//! End-to-end tests of the waiter-leak server. They reach the running server through
//! `HANGCHECK_ADDR_KV`, which `cargo hangcheck test` sets from the server's
//! `announce("kv", addr)`.
//!
//! `watch_and_leave` and `watch_three_keys_and_leave` abandon watches: with the leak on,
//! each leaves waiter tasks behind. The others are clean.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect() -> Client {
        let addr = std::env::var("HANGCHECK_ADDR_KV")
            .expect("HANGCHECK_ADDR_KV is not set: run these tests with `cargo hangcheck test -p waiter-leak`");
        let stream = TcpStream::connect(addr).expect("connect to the server");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }

    fn call(&mut self, command: &str) -> String {
        writeln!(self.writer, "{command}").unwrap();
        self.read_line()
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a reply");
        line.trim_end().to_owned()
    }
}

#[test]
fn ping() {
    assert_eq!(Client::connect().call("PING"), "PONG");
}

#[test]
fn set_then_get() {
    let mut c = Client::connect();
    assert_eq!(c.call("SET colour blue"), "OK");
    assert_eq!(c.call("GET colour"), "VALUE blue");
}

#[test]
fn get_missing_key() {
    assert_eq!(Client::connect().call("GET nothing-here"), "NONE");
}

#[test]
fn watch_sees_the_change() {
    let mut watcher = Client::connect();
    assert_eq!(watcher.call("WATCH door"), "WATCHING");
    assert_eq!(Client::connect().call("SET door open"), "OK");
    assert_eq!(watcher.read_line(), "CHANGED door open");
}

#[test]
fn watch_and_leave() {
    let mut c = Client::connect();
    assert_eq!(c.call("WATCH never-set-1"), "WATCHING");
}

#[test]
fn many_clients() {
    let mut clients: Vec<Client> = (0..10).map(|_| Client::connect()).collect();
    for c in &mut clients {
        assert_eq!(c.call("PING"), "PONG");
    }
}

#[test]
fn watch_three_keys_and_leave() {
    let mut c = Client::connect();
    for key in ["never-set-2", "never-set-3", "never-set-4"] {
        assert_eq!(c.call(&format!("WATCH {key}")), "WATCHING");
    }
}
