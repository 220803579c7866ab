//! `tcp-forward LISTEN=TARGET ...`: forwards every connection accepted on each `LISTEN` address to its
//! `TARGET`, byte for byte, both ways. An address is `host:port`, or `unix:<path>` for a Unix socket (which
//! no network namespace separates). The chaos suite runs one inside a network namespace, so that the
//! service there reaches Kafka and the database at their usual loopback addresses (Kafka through a veth
//! pair, the database through a Unix socket), and one on the host side. Prints `ready` once every listener
//! is bound; runs until killed.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A bound listener of either kind.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A connection of either kind.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Listener {
    async fn bind(address: &str) -> std::io::Result<Self> {
        match address.strip_prefix("unix:") {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                Ok(Self::Unix(UnixListener::bind(path)?))
            }
            None => Ok(Self::Tcp(TcpListener::bind(address).await?)),
        }
    }

    async fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        match self {
            Self::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
            Self::Unix(listener) => Ok(Box::new(listener.accept().await?.0)),
        }
    }
}

async fn connect(address: &str) -> std::io::Result<Box<dyn Stream>> {
    match address.strip_prefix("unix:") {
        Some(path) => Ok(Box::new(UnixStream::connect(path).await?)),
        None => {
            let stream = TcpStream::connect(address).await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
#[allow(clippy::print_stdout, reason = "the ready line on stdout is how the caller learns the listeners are bound")]
async fn main() -> std::io::Result<()> {
    let mut listeners = Vec::new();
    for pair in std::env::args().skip(1) {
        let Some((listen, target)) = pair.split_once('=') else {
            eprintln!("tcp-forward: {pair:?} is not LISTEN=TARGET");
            std::process::exit(2);
        };
        listeners.push((Listener::bind(listen).await?, target.to_owned()));
    }
    if listeners.is_empty() {
        eprintln!("usage: tcp-forward LISTEN=TARGET ...");
        std::process::exit(2);
    }
    println!("ready");
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, target) in listeners {
        tasks.spawn(accept(listener, target));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn accept(listener: Listener, target: String) {
    loop {
        let Ok(mut inbound) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(Ok(mut outbound)) = tokio::time::timeout(Duration::from_secs(5), connect(&target)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
