//! End-to-end tests of the lost-wakeup server, on hangcheck's harness. `one_job` hangs
//! about one run in five, when the server loses the worker's wakeup.

use hangcheck_runtime::harness::{self, async_test, Failed};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn main() {
    harness::main(env!("CARGO_BIN_EXE_lost-wakeup"), vec![async_test("ping", ping), async_test("one_job", one_job)]);
}

async fn call(command: &str) -> Result<String, Failed> {
    let mut conn = BufReader::new(TcpStream::connect(harness::addr("jobs")).await?);
    conn.get_mut().write_all(format!("{command}\n").as_bytes()).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    Ok(line.trim_end().to_owned())
}

async fn ping() -> Result<(), Failed> {
    match call("PING").await?.as_str() {
        "PONG" => Ok(()),
        other => Err(format!("expected PONG, got {other:?}").into()),
    }
}

async fn one_job() -> Result<(), Failed> {
    match call("JOB").await?.as_str() {
        "DONE" => Ok(()),
        other => Err(format!("expected DONE, got {other:?}").into()),
    }
}
