//! MQTT over WebSocket (subprotocol `mqtt`, binary messages): how a browser, such as the field
//! app at `/app/`, reaches the same front as a TCP client, with the same authentication, topic
//! ACL, limits and connection permits.
//!
//! A WebSocket arrives through an HTTP server: the web role's `/mqtt` route (so a phone needs
//! only the HTTPS port) or the broker's own `--ws-listen` listener, both axum. Either hands the
//! upgrade to [`WebSocketEntry::upgrade`], which takes a connection permit, insists on the
//! `mqtt` subprotocol (MQTT 5 §6: the client must offer it), bounds frame and message sizes, and
//! serves the upgraded socket through [`WsBytes`], which turns WebSocket binary messages into the
//! byte stream the front reads (packets may span messages, a message may hold several packets).
//! The peer address is the TCP peer the HTTP server saw (a reverse proxy in front shows as
//! itself: lockouts and logs then name the proxy).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use jiandu_tls::ClientCert;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::front::Front;
use crate::tls::Transport;

/// The WebSocket subprotocol MQTT clients offer (MQTT 3.1.1 §6, MQTT 5 §6).
pub const SUBPROTOCOL: &str = "mqtt";

/// The door into the front for MQTT over WebSocket: cloned into every HTTP server that offers
/// `/mqtt`, so those connections share the TCP listeners' connection limit and shutdown.
#[derive(Clone)]
pub struct WebSocketEntry {
    front: Arc<Front>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    device_cert_required: bool,
    /// Largest WebSocket message (and frame) accepted from a client.
    max_message_bytes: usize,
}

impl std::fmt::Debug for WebSocketEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketEntry").field("max_message_bytes", &self.max_message_bytes).finish_non_exhaustive()
    }
}

impl WebSocketEntry {
    pub(crate) fn new(
        front: Arc<Front>,
        permits: Arc<Semaphore>,
        shutdown: CancellationToken,
        device_cert_required: bool,
    ) -> WebSocketEntry {
        // One message may carry a whole packet of the largest size and a few small ones behind it.
        let max_message_bytes = front.max_packet_bytes + 64 * 1024;
        WebSocketEntry { front, permits, shutdown, device_cert_required, max_message_bytes }
    }

    /// Answers an HTTP request on `/mqtt`: upgrades it to a WebSocket served by the front, or
    /// refuses it (400 without the `mqtt` subprotocol, 503 when the connection limit is reached).
    /// `tls` says whether the request came over HTTPS (for the logs and the `tls` span field).
    pub fn upgrade(&self, ws: WebSocketUpgrade, peer: SocketAddr, tls: bool) -> Response {
        let offered = ws.requested_protocols().any(|p| p.as_bytes().eq_ignore_ascii_case(SUBPROTOCOL.as_bytes()));
        if !offered {
            metrics::counter!("jiandu_broker_connections_total", "result" => "ws_no_subprotocol").increment(1);
            return (StatusCode::BAD_REQUEST, "MQTT over WebSocket needs the subprotocol \"mqtt\"\n").into_response();
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            warn!(%peer, "MQTT over WebSocket refused: connection limit reached");
            return (StatusCode::SERVICE_UNAVAILABLE, "too many MQTT connections\n").into_response();
        };
        let entry = self.clone();
        ws.protocols([SUBPROTOCOL])
            .max_message_size(self.max_message_bytes)
            .max_frame_size(self.max_message_bytes)
            .on_failed_upgrade(move |e| debug!(%peer, error = %e, "WebSocket upgrade failed"))
            .on_upgrade(move |socket| async move {
                let stop = entry.shutdown.child_token();
                let transport =
                    Transport { tls, cert: ClientCert::None, device_cert_required: entry.device_cert_required };
                tokio::select! {
                    _ = entry.front.clone().serve(WsBytes::new(socket), peer, transport) => {}
                    _ = stop.cancelled() => debug!(%peer, "WebSocket connection closed at shutdown"),
                }
                drop(permit);
            })
    }
}

/// `GET /mqtt` of the broker's own WebSocket listener (`--ws-listen`).
async fn mqtt_route(
    State(entry): State<WebSocketEntry>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    entry.upgrade(ws, peer, false)
}

/// Serves MQTT over plain WebSocket on `listener` (path `/mqtt`) until `shutdown`.
pub(crate) async fn serve_listener(listener: tokio::net::TcpListener, entry: WebSocketEntry) {
    let stop = entry.shutdown.clone();
    let app = axum::Router::new().route("/mqtt", axum::routing::get(mqtt_route)).with_state(entry);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await {
        warn!(error = %e, "MQTT WebSocket listener stopped");
    }
    info!("MQTT WebSocket listener stopped");
}

/// A WebSocket as the byte stream of one MQTT connection: binary messages read in order as
/// bytes, each write sent as one binary message (flushed before the write counts as done, as the
/// front writes whole packets and then waits for the client). Text messages are a protocol error
/// (MQTT over WebSocket is binary); pings are answered by the WebSocket layer.
pub struct WsBytes<W> {
    socket: W,
    /// The rest of the message being read.
    pending: Bytes,
    /// Bytes of the message handed to the socket and not yet flushed (the write in progress).
    unflushed: usize,
}

impl<W> WsBytes<W> {
    /// Wraps an upgraded WebSocket.
    pub fn new(socket: W) -> WsBytes<W> {
        WsBytes { socket, pending: Bytes::new(), unflushed: 0 }
    }
}

fn io_error(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(e)
}

impl<W> AsyncRead for WsBytes<W>
where
    W: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(out.remaining());
                out.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.socket).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // A close, or the end of the stream, is the end of the byte stream.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "a text message on an MQTT WebSocket (MQTT travels in binary messages)",
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<W> AsyncWrite for WsBytes<W>
where
    W: Sink<Message, Error = axum::Error> + Unpin,
{
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.unflushed == 0 {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            ready!(Pin::new(&mut self.socket).poll_ready(cx)).map_err(io_error)?;
            Pin::new(&mut self.socket).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(io_error)?;
            self.unflushed = buf.len();
        }
        // The message is queued: the write is done once it is flushed (a retry after Pending
        // passes the same bytes again, which are then not queued twice).
        ready!(Pin::new(&mut self.socket).poll_flush(cx)).map_err(io_error)?;
        Poll::Ready(Ok(std::mem::take(&mut self.unflushed)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_close(cx).map_err(io_error)
    }
}
