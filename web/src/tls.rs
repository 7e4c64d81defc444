//! HTTPS for the web role: an axum [`Listener`] whose connections are TLS streams. A background
//! loop accepts TCP connections and runs each handshake in its own task under the handshake
//! deadline (a slow or silent client never holds up the accept loop); finished streams are handed
//! to axum. Answers over HTTPS mark the session cookie `Secure`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::serve::Listener;
use jiandu_tls::ServerTls;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// Accepted, handshaken HTTPS connections.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` until `shutdown`.
    pub fn new(listener: TcpListener, tls: ServerTls, shutdown: CancellationToken) -> std::io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                };
                let (tcp, peer) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(error = %e, "HTTPS accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                tcp.set_nodelay(true).ok();
                let (tls, ready) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tls.accept_https(tcp).await {
                        Ok(stream) => {
                            drop(permit);
                            ready.send((stream, peer)).await.ok();
                        }
                        Err(e) => debug!(%peer, error = %e, "HTTPS handshake failed"),
                    }
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsListener { ready, local_addr })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ended (shutdown): axum's graceful shutdown stops asking.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Marks requests that came over HTTPS (a request extension set on the HTTPS server only).
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Adds `Secure` to cookies set over HTTPS, so a browser never sends the session in the clear.
pub async fn secure_cookies(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let mut resp = next.run(req).await;
    let cookies: Vec<HeaderValue> = resp.headers_mut().get_all(header::SET_COOKIE).iter().cloned().collect();
    if cookies.is_empty() {
        return resp;
    }
    resp.headers_mut().remove(header::SET_COOKIE);
    for c in cookies {
        let secured = match c.to_str() {
            Ok(text) if !text.to_ascii_lowercase().contains("; secure") => {
                HeaderValue::from_str(&format!("{text}; Secure")).unwrap_or(c)
            }
            _ => c,
        };
        resp.headers_mut().append(header::SET_COOKIE, secured);
    }
    resp
}
