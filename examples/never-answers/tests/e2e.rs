//! End-to-end tests of the never-answers server, through `HANGCHECK_ADDR_PUBSUB`.
//! `next_on_a_quiet_topic` waits for an answer that never comes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

fn call(stream: &mut TcpStream, command: &str) -> String {
    writeln!(stream, "{command}").unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).expect("a reply");
    line.trim_end().to_owned()
}

fn connect() -> TcpStream {
    let addr = std::env::var("HANGCHECK_ADDR_PUBSUB")
        .expect("HANGCHECK_ADDR_PUBSUB is not set: run with `cargo hangcheck test -p never-answers`");
    TcpStream::connect(addr).unwrap()
}

#[test]
fn next_after_publish_is_delivered() {
    let mut subscriber = connect();
    writeln!(subscriber, "NEXT news").unwrap();
    let mut publisher = connect();
    // The subscriber may not be registered yet; publish until it is.
    while call(&mut publisher, "PUBLISH news hello") == "DELIVERED 0" {
        std::thread::yield_now();
    }
    let mut line = String::new();
    BufReader::new(subscriber).read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "MESSAGE hello");
}

#[test]
fn next_on_a_quiet_topic() {
    // Nobody publishes to this topic: the reply never comes.
    assert!(call(&mut connect(), "NEXT quiet").starts_with("MESSAGE"));
}

#[test]
fn ping() {
    assert_eq!(call(&mut connect(), "PING"), "PONG");
}

#[test]
fn then_ping_still_works() {
    assert_eq!(call(&mut connect(), "PING"), "PONG");
}
