//! End-to-end tests of the waiter-leak server, on hangcheck's harness: under `cargo
//! hangcheck test` the trials run in one process against the server the runner started;
//! under a plain `cargo test` the harness starts the server itself. Either way
//! `harness::addr("kv")` is the address the server announced (`announce("kv", addr)`).
//!
//! `watch_and_leave` and `watch_three_keys_and_leave` abandon watches: with the leak on,
//! each leaves waiter tasks behind. The others are clean.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use hangcheck_runtime::harness::{self, Failed, Trial};

fn main() {
    harness::main(
        env!("CARGO_BIN_EXE_waiter-leak"),
        vec![
            Trial::test("ping", ping),
            Trial::test("set_then_get", set_then_get),
            Trial::test("get_missing_key", get_missing_key),
            Trial::test("watch_sees_the_change", watch_sees_the_change),
            Trial::test("watch_and_leave", watch_and_leave),
            Trial::test("many_clients", many_clients),
            Trial::test("watch_three_keys_and_leave", watch_three_keys_and_leave),
        ],
    );
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect() -> Result<Client, Failed> {
        let stream = TcpStream::connect(harness::addr("kv"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    fn call(&mut self, command: &str) -> Result<String, Failed> {
        writeln!(self.writer, "{command}")?;
        self.read_line()
    }

    fn read_line(&mut self) -> Result<String, Failed> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }
}

/// `assert_eq!` for trials: a mismatch is the trial's failure message.
fn expect(got: String, want: &str) -> Result<(), Failed> {
    if got == want {
        Ok(())
    } else {
        Err(format!("expected {want:?}, got {got:?}").into())
    }
}

fn ping() -> Result<(), Failed> {
    expect(Client::connect()?.call("PING")?, "PONG")
}

fn set_then_get() -> Result<(), Failed> {
    let mut c = Client::connect()?;
    expect(c.call("SET colour blue")?, "OK")?;
    expect(c.call("GET colour")?, "VALUE blue")
}

fn get_missing_key() -> Result<(), Failed> {
    expect(Client::connect()?.call("GET nothing-here")?, "NONE")
}

fn watch_sees_the_change() -> Result<(), Failed> {
    let mut watcher = Client::connect()?;
    expect(watcher.call("WATCH door")?, "WATCHING")?;
    expect(Client::connect()?.call("SET door open")?, "OK")?;
    expect(watcher.read_line()?, "CHANGED door open")
}

fn watch_and_leave() -> Result<(), Failed> {
    expect(Client::connect()?.call("WATCH never-set-1")?, "WATCHING")
}

fn many_clients() -> Result<(), Failed> {
    let mut clients = (0..10).map(|_| Client::connect()).collect::<Result<Vec<_>, _>>()?;
    for c in &mut clients {
        expect(c.call("PING")?, "PONG")?;
    }
    Ok(())
}

fn watch_three_keys_and_leave() -> Result<(), Failed> {
    let mut c = Client::connect()?;
    for key in ["never-set-2", "never-set-3", "never-set-4"] {
        expect(c.call(&format!("WATCH {key}"))?, "WATCHING")?;
    }
    Ok(())
}
