//! A TCP forwarder between one invsync instance and one PostgreSQL node, that the suite
//! can cut: a network partition between the instance and the database. While cut,
//! nothing crosses in either direction and nothing is closed — packets simply stop
//! arriving, as in a real partition (no FIN, no RST): the instance must notice by its
//! own timeouts. New connections are accepted and left waiting. When healed, what
//! waited is delivered late, as a network that comes back would.

use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    cut: watch::Sender<bool>,
}

impl Proxy {
    /// Forwards a free local port to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(false);
        let links = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = links.subscribe();
                tokio::spawn(link(client, target, cut));
            }
        });
        Ok(Self { port, cut })
    }

    /// Nothing crosses from now on.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

async fn link(client: TcpStream, target: u16, mut cut: watch::Receiver<bool>) {
    if cut.wait_for(|c| !*c).await.is_err() {
        return;
    }
    let Ok(server) = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", target)),
    )
    .await
    else {
        return;
    };
    let Ok(server) = server else { return };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, cut.clone()),
        pump(server_read, client_write, cut),
    );
}

/// Copies `from` to `to`, holding everything while the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Cut while waiting to read: stop reading (what the peer sends piles up).
            _ = cut.wait_for(|c| *c) => continue,
        };
        // What was read before the cut is held until it heals.
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
