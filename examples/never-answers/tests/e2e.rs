//! End-to-end tests of the never-answers server, on hangcheck's harness, through
//! `harness::addr("pubsub")`. `next_on_a_quiet_topic` waits for an answer that never
//! comes: `cargo hangcheck test` takes the server's stacks at the timeout, stops this
//! harness process, and starts it again for the trials after it.
//!
//! The trials are async (`harness::async_test`): each runs on a runtime of its own.

use hangcheck_runtime::harness::{self, async_test, Failed};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn main() {
    harness::main(
        env!("CARGO_BIN_EXE_never-answers"),
        vec![
            async_test("next_after_publish_is_delivered", next_after_publish_is_delivered),
            async_test("next_on_a_quiet_topic", next_on_a_quiet_topic),
            async_test("ping", ping),
            async_test("then_ping_still_works", ping),
        ],
    );
}

async fn connect() -> Result<BufReader<TcpStream>, Failed> {
    Ok(BufReader::new(TcpStream::connect(harness::addr("pubsub")).await?))
}

async fn call(conn: &mut BufReader<TcpStream>, command: &str) -> Result<String, Failed> {
    conn.get_mut().write_all(format!("{command}\n").as_bytes()).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    Ok(line.trim_end().to_owned())
}

async fn next_after_publish_is_delivered() -> Result<(), Failed> {
    let mut subscriber = connect().await?;
    subscriber.get_mut().write_all(b"NEXT news\n").await?;
    let mut publisher = connect().await?;
    // The subscriber may not be registered yet; publish until it is.
    while call(&mut publisher, "PUBLISH news hello").await? == "DELIVERED 0" {
        tokio::task::yield_now().await;
    }
    let mut line = String::new();
    subscriber.read_line(&mut line).await?;
    if line.trim_end() == "MESSAGE hello" {
        Ok(())
    } else {
        Err(format!("expected the message, got {line:?}").into())
    }
}

async fn next_on_a_quiet_topic() -> Result<(), Failed> {
    // Nobody publishes to this topic: the reply never comes.
    let reply = call(&mut connect().await?, "NEXT quiet").await?;
    if reply.starts_with("MESSAGE") {
        Ok(())
    } else {
        Err(format!("expected a message, got {reply:?}").into())
    }
}

async fn ping() -> Result<(), Failed> {
    let reply = call(&mut connect().await?, "PING").await?;
    if reply == "PONG" {
        Ok(())
    } else {
        Err(format!("expected PONG, got {reply:?}").into())
    }
}
