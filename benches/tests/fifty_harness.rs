//! The same fifty tests as `fifty.rs`, on hangcheck's harness: one process runs them all,
//! for the runner benchmark's single-process figure (`benches/run.sh runner`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use hangcheck_runtime::harness::{self, Failed, Trial};

fn round_trips() -> Result<(), Failed> {
    let mut stream = TcpStream::connect(harness::addr("ping"))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    for _ in 0..10 {
        stream.write_all(b"PING\n")?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line != "PONG\n" {
            return Err(format!("expected PONG, got {line:?}").into());
        }
    }
    Ok(())
}

fn main() {
    let trials = (1..=50).map(|i| Trial::test(format!("t{i:02}"), round_trips)).collect();
    harness::main(env!("CARGO_BIN_EXE_hangcheck-bench"), trials);
}
