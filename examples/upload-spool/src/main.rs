//! An upload server over TCP: `UPLOAD name size`; the server opens a spool file and
//! answers `READY`, the client sends `size` raw bytes, the server answers `STORED name
//! size`. `PING` answers `PONG`.
//!
//! The bug it reproduces: when a client disconnects mid-upload, the server keeps the
//! half-written spool file open in its table of resumable uploads, and nothing ever
//! resumes or expires it. No task leaks; a file descriptor does, one per abandoned
//! upload, until the process hits its limit. hangcheck counts open descriptors by kind in
//! every snapshot and judges their growth like task groups.
//!
//! With `UPLOAD_SPOOL_FIXED=1` an abandoned upload's spool file is closed and removed.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Uploads that did not finish, kept "for resuming".
type Resumable = Arc<Mutex<HashMap<String, File>>>;

#[hangcheck_runtime::main(worker_threads = 2)]
async fn main() {
    let fixed = std::env::var("UPLOAD_SPOOL_FIXED").is_ok_and(|v| v == "1");
    let spool = std::env::temp_dir().join(format!("upload-spool-{}", std::process::id()));
    std::fs::create_dir_all(&spool).expect("spool directory");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    println!("upload-spool listening on {addr}, spooling to {}", spool.display());
    hangcheck_runtime::announce("upload", addr);
    let resumable: Resumable = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(serve(stream, spool.clone(), Arc::clone(&resumable), fixed));
    }
}

async fn serve(stream: TcpStream, spool: PathBuf, resumable: Resumable, fixed: bool) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    while reader.read_line(&mut line).await.is_ok_and(|n| n > 0) {
        let command: Vec<&str> = line.split_whitespace().collect();
        let reply = match command.as_slice() {
            ["PING"] => "PONG".to_owned(),
            ["UPLOAD", name, size] => match size.parse::<usize>() {
                Ok(size) => match receive(&mut reader, &mut write, &spool, name, size).await {
                    Ok(()) => format!("STORED {name} {size}"),
                    Err(file) => {
                        // The client went away mid-upload.
                        let path = spool.join(name);
                        if fixed {
                            drop(file);
                            let _ = std::fs::remove_file(path);
                        } else {
                            resumable.lock().unwrap().insert(name.to_string(), file);
                        }
                        return;
                    }
                },
                Err(e) => format!("ERR {e}"),
            },
            _ => format!("ERR unknown command: {}", line.trim_end()),
        };
        line.clear();
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Spools `size` bytes to `spool/name`; on a short read hands back the open file.
async fn receive(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    spool: &std::path::Path,
    name: &str,
    size: usize,
) -> Result<(), File> {
    let mut file = File::create(spool.join(name)).expect("create spool file");
    if write.write_all(b"READY\n").await.is_err() {
        return Err(file);
    }
    let mut left = size;
    let mut buf = [0u8; 4096];
    while left > 0 {
        let want = left.min(buf.len());
        match reader.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return Err(file),
            Ok(n) => {
                file.write_all(&buf[..n]).expect("write spool file");
                left -= n;
            }
        }
    }
    drop(file);
    let _ = std::fs::remove_file(spool.join(name));
    Ok(())
}
