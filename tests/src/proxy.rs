//! A TCP proxy on loopback between a client and a server, for network faults: `cut` drops
//! every connection and refuses new ones (a gate's uplink down, a database stopped or cut
//! off), `blackhole_responses` forwards requests but never returns the answers (the server
//! commits, the client hears nothing), `restore` heals it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const OPEN: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    generation: watch::Sender<u64>,
    pub connections: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free loopback port (panics if it cannot bind: a
    /// test helper).
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(OPEN));
        let (generation, _) = watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let (accept_mode, accept_generation, accept_connections) =
            (mode.clone(), generation.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if accept_mode.load(Ordering::SeqCst) == CUT {
                    drop(client);
                    continue;
                }
                accept_connections.fetch_add(1, Ordering::SeqCst);
                let (mode, mut cut) = (accept_mode.clone(), accept_generation.subscribe());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = async {
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let n = match client_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = async {
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let n = match server_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if mode.load(Ordering::SeqCst) == BLACKHOLE {
                                continue;
                            }
                            if client_write.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        () = up => {},
                        () = down => {},
                        _ = cut.changed() => {},
                    }
                });
            }
        });
        Proxy {
            addr,
            mode,
            generation,
            connections,
        }
    }

    /// `http://` and the proxy's address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The link is down: existing connections drop, new ones are closed at once.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Requests reach the central; answers never come back.
    pub fn blackhole_responses(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The link is up again.
    pub fn restore(&self) {
        self.mode.store(OPEN, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }
}
