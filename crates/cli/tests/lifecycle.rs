//! The server process's lifecycle against real clients and raw sockets: one process
//! per data directory, private files, a bounded SIGTERM that ends event streams, and
//! connections that cannot starve each other.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, BIN};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Waits for the child to exit (30 s at most) and returns its exit code.
fn exit_code(server: &mut Server) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            return exit.code();
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(server: &Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_exits_2_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data, &[]);
    common::adjust(&common::client(), &first.url, "S1", "A", 1).await;

    let second = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "names the holder: {stderr}"
    );
    assert!(stderr.contains("data-dir"), "{stderr}");

    // The data directory is private, and so is every file in it (ledger, WAL, stores).
    assert_eq!(mode(&data), 0o700);
    let files: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert!(files.iter().any(|p| p.ends_with("ledger.db")), "{files:?}");
    assert!(
        files.iter().any(|p| p.ends_with("ledger.db-wal")),
        "{files:?}"
    );
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }

    // The lock goes with its holder, however it ends.
    drop(first); // SIGKILL
    let third = Server::start(&data, &[]);
    common::adjust(&common::client(), &third.url, "S1", "A", 1).await;
}

#[tokio::test]
async fn sigterm_ends_open_event_streams_and_exits_zero() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shutdown-grace", "60s"]);
    let http = common::client();
    // Two clients hold the stream open and never disconnect.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let resp = http
            .get(format!("{}/v1/events/stream?after=0", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(resp.bytes_stream());
    }
    common::adjust(&http, &server.url, "S1", "A", 1).await;
    let first = streams[0].next().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("id: 1"),
        "the stream works"
    );

    sigterm(&server);
    // Well before the 60 s grace: the streams end because the server ends them.
    for mut stream in streams {
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "the server ended the stream");
    }
    assert_eq!(exit_code(&mut server), Some(0));
}

#[tokio::test]
async fn a_request_that_outlives_the_grace_does_not_hold_the_server() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &["--shutdown-grace", "1s", "--body-timeout", "1h"],
    );
    // A request whose body never finishes arriving: in flight until the grace ends.
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!("POST /v1/adjustments HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{").as_bytes(),
    )
    .await
    .unwrap();
    common::adjust(&common::client(), &server.url, "S1", "A", 1).await;
    sigterm(&server);
    assert_eq!(exit_code(&mut server), Some(0));
    drop(slow);
}

/// Thousands of connections that send nothing, or half a request head, while a normal
/// client keeps being served; the server closes the idle ones after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_cannot_starve_a_normal_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--header-timeout", "2s"]);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    let mut stalled = 0;
    for i in 0..3000 {
        let connect = tokio::net::TcpStream::connect(&addr);
        let Ok(Ok(mut socket)) = tokio::time::timeout(Duration::from_secs(2), connect).await else {
            // The accept queue is full for now (the server accepts as fast as the
            // machine lets it): try a little longer, then go on with what is open.
            stalled += 1;
            if stalled == 5 {
                break;
            }
            continue;
        };
        stalled = 0;
        if i % 2 == 0 {
            // Half a request head, never finished (slowloris).
            let _ = socket
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await;
        }
        idle.push(socket);
    }
    assert!(idle.len() >= 2000, "only {} connections opened", idle.len());
    eprintln!("{} idle or half-open connections open", idle.len());

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for i in 0..20 {
        let answer = http
            .get(format!("{}/v1/stock/S1/A", server.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} while {} sockets idle: {e}", idle.len()));
        assert_eq!(answer.status(), 404, "served");
    }
    common::adjust(&http, &server.url, "S1", "A", 1).await;

    // The first idle connections were accepted; the server closes them (EOF) once the
    // header timeout passes, instead of holding them forever.
    for socket in idle.iter_mut().take(50) {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 answer, then EOF
                }
            }
        })
        .await;
        assert!(read.is_ok(), "an idle connection was closed by the server");
    }
}
