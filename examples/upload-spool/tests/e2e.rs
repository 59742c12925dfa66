//! End-to-end tests of the upload-spool server, through `HANGCHECK_ADDR_UPLOAD`.
//! `abandoned_upload` and `two_abandoned_uploads` disconnect mid-upload.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

fn connect() -> TcpStream {
    let addr = std::env::var("HANGCHECK_ADDR_UPLOAD")
        .expect("HANGCHECK_ADDR_UPLOAD is not set: run with `cargo hangcheck test -p upload-spool`");
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

fn reply(stream: &TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

/// Starts an upload, sends half of it once the server is ready, and disconnects.
fn abandon(name: &str) {
    let mut stream = connect();
    writeln!(stream, "UPLOAD {name} 1000").unwrap();
    assert_eq!(reply(&stream), "READY");
    stream.write_all(&[7u8; 500]).unwrap();
}

#[test]
fn ping() {
    let mut s = connect();
    writeln!(s, "PING").unwrap();
    assert_eq!(reply(&s), "PONG");
}

#[test]
fn complete_upload() {
    let mut s = connect();
    writeln!(s, "UPLOAD report.csv 5000").unwrap();
    let mut replies = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    replies.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "READY");
    s.write_all(&[1u8; 5000]).unwrap();
    line.clear();
    replies.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "STORED report.csv 5000");
}

#[test]
fn abandoned_upload() {
    abandon("photo.jpg");
}

#[test]
fn two_abandoned_uploads() {
    abandon("a.bin");
    abandon("b.bin");
}
