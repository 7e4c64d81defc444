//! The public MQTT listener: authentication and topic ACL in front of rumqttd.
//!
//! rumqttd 0.20 can authenticate (an async `Fn(client, user, pass) -> bool`) but has no per-topic
//! authorisation hook. So the public port is ours: each accepted connection is read packet by
//! packet; CONNECT is authenticated against the store (with the proper CONNACK code on refusal,
//! which rumqttd itself does not send), then the connection is spliced to rumqttd's loopback
//! listener with the client's password swapped for a per-process internal secret, so nobody can
//! reach rumqttd without passing here. From then on every PUBLISH, last will and SUBSCRIBE from
//! the client is checked against its [`Acl`]; permitted frames are forwarded unchanged, refused
//! ones are answered here (SUBACK failure codes merged into rumqttd's SUBACK, PUBACK/PUBREC with
//! "not authorised" on MQTT 5) and never reach the router. Frames from rumqttd to the client are
//! passed through, except SUBACKs that need refused codes merged back in.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use jiandu_store::{Principal, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::acl::Acl;
use crate::wire::{self, Refusal, Version, kind};

/// Largest frame rumqttd may send to a client (its own payload limit applies before that).
const DOWNSTREAM_FRAME_LIMIT: usize = 64 * 1024 * 1024;

/// What every connection of the front shares.
pub(crate) struct Front {
    pub store: Store,
    pub internal_v4: SocketAddr,
    pub internal_v5: SocketAddr,
    pub internal_secret: String,
    pub max_packet_bytes: usize,
    pub connect_timeout: Duration,
}

/// Per-connection state shared by the two directions.
struct Session {
    version: Version,
    username: String,
    acl: Acl,
    /// SUBSCRIBE packet id → which filters were forwarded (true) or refused (false).
    pending_subacks: Mutex<HashMap<u16, Vec<bool>>>,
    client_tx: tokio::sync::Mutex<OwnedWriteHalf>,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("refused: {0:?}")]
    Refused(Refusal),
}

impl Front {
    /// Serves one client connection until either side closes.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let span = info_span!("mqtt", %peer, client = tracing::field::Empty);
        async move {
            match self.session(stream).await {
                Ok(()) => debug!("connection closed"),
                Err(SessionEnd::Refused(why)) => {
                    metrics::counter!("jiandu_broker_connections_total", "result" => "refused").increment(1);
                    info!(reason = ?why, "connection refused")
                }
                Err(e) => debug!(error = %e, "connection ended"),
            }
        }
        .instrument(span)
        .await
    }

    async fn session(&self, mut client: TcpStream) -> Result<(), SessionEnd> {
        client.set_nodelay(true)?;
        let mut buf = BytesMut::with_capacity(4096);
        let first =
            tokio::time::timeout(self.connect_timeout, read_frame(&mut client, &mut buf, self.max_packet_bytes))
                .await
                .map_err(|_| SessionEnd::ConnectTimeout(self.connect_timeout))??;
        let Some(first) = first else { return Ok(()) };
        let connect = match wire::parse_connect(&first) {
            Ok(c) => c,
            Err(e @ wire::WireError::Protocol(_)) => {
                // Unacceptable protocol version (3.1.1 code 1) is the only answer every client reads.
                client.write_all(&[0x20, 0x02, 0x00, 0x01]).await.ok();
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        tracing::Span::current().record("client", connect.client_id.as_str());
        let version = connect.version;

        let (Some(username), Some(password)) = (&connect.username, &connect.password) else {
            return refuse(&mut client, version, Refusal::NotAuthorized).await;
        };
        let principal = match self.store.authenticate_mqtt(username, password).await {
            Ok(Some(p)) => p,
            Ok(None) => return refuse(&mut client, version, Refusal::BadCredentials).await,
            Err(e) => {
                warn!(error = %e, "credential check failed");
                return refuse(&mut client, version, Refusal::Unavailable).await;
            }
        };
        // The client id is the account's name, or the name plus "-suffix" (a second tool on the
        // same account, or several processes of one role); never another account's name.
        let name = match &principal {
            Principal::Device { id } => id,
            Principal::Integration { name, .. } | Principal::Service { name } => name,
        };
        let client_id_ok = connect.client_id == *name
            || connect.client_id.strip_prefix(name.as_str()).is_some_and(|r| r.len() > 1 && r.starts_with('-'));
        if !client_id_ok {
            return refuse(&mut client, version, Refusal::BadClientId).await;
        }
        let acl = Acl::for_principal(&principal);
        if let Some(will) = &connect.will_topic
            && !acl.may_publish(will)
        {
            warn!(will = %will, "last will outside the account's topics");
            return refuse(&mut client, version, Refusal::NotAuthorized).await;
        }

        let internal = match version {
            Version::V4 => self.internal_v4,
            Version::V5 => self.internal_v5,
        };
        let mut upstream = match TcpStream::connect(internal).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "embedded broker unreachable");
                return refuse(&mut client, version, Refusal::Unavailable).await;
            }
        };
        upstream.set_nodelay(true)?;
        upstream.write_all(&connect.with_password(&first, self.internal_secret.as_bytes())).await?;
        metrics::counter!("jiandu_broker_connections_total", "result" => "accepted").increment(1);
        debug!(user = %username, "authenticated");

        let (client_rx, client_tx) = client.into_split();
        let (up_rx, up_tx) = upstream.into_split();
        let session = Arc::new(Session {
            version,
            username: username.clone(),
            acl,
            pending_subacks: Mutex::new(HashMap::new()),
            client_tx: tokio::sync::Mutex::new(client_tx),
        });
        let mut down = tokio::spawn(downstream(session.clone(), up_rx));
        let result = tokio::select! {
            r = upstream_loop(&session, client_rx, up_tx, buf, self.max_packet_bytes) => r,
            r = &mut down => r.unwrap_or(Ok(())),
        };
        // Whichever side ended first, dropping both halves makes rumqttd see the disconnect
        // (and publish the will unless the client sent DISCONNECT) and closes the client.
        down.abort();
        result
    }
}

/// Answers CONNECT with a refusing CONNACK and closes.
async fn refuse(client: &mut TcpStream, version: Version, why: Refusal) -> Result<(), SessionEnd> {
    client.write_all(&wire::connack_refused(version, why)).await.ok();
    client.shutdown().await.ok();
    Err(SessionEnd::Refused(why))
}

/// Reads until one complete frame is buffered; `None` on a clean EOF before any byte.
async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, SessionEnd> {
    loop {
        if let Some(n) = wire::frame_len(buf, limit)? {
            return Ok(Some(buf.split_to(n).freeze()));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Client → rumqttd: checks every frame against the ACL, forwards what is permitted.
async fn upstream_loop(
    s: &Session,
    mut client_rx: OwnedReadHalf,
    mut up_tx: OwnedWriteHalf,
    mut buf: BytesMut,
    limit: usize,
) -> Result<(), SessionEnd> {
    let mut out = BytesMut::with_capacity(8192);
    let mut replies = BytesMut::new();
    let mut aliases: HashMap<u16, String> = HashMap::new();
    let mut refused_qos2: HashSet<u16> = HashSet::new();
    let mut last_notice: Option<Instant> = None;
    loop {
        loop {
            let n = match wire::frame_len(&buf, limit) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    if let wire::WireError::TooLarge { .. } = e
                        && let Some(d) = wire::disconnect(s.version, 0x95)
                    {
                        s.client_tx.lock().await.write_all(&d).await.ok();
                    }
                    warn!(error = %e, "closing connection");
                    return Err(e.into());
                }
            };
            let frame = buf.split_to(n).freeze();
            match wire::packet_kind(&frame) {
                kind::PUBLISH => {
                    let head = wire::parse_publish(&frame, s.version)?;
                    let topic = if head.topic.is_empty() {
                        head.topic_alias.and_then(|a| aliases.get(&a)).cloned().unwrap_or_default()
                    } else {
                        if let Some(a) = head.topic_alias {
                            aliases.insert(a, head.topic.to_owned());
                        }
                        head.topic.to_owned()
                    };
                    if s.acl.may_publish(&topic) {
                        out.extend_from_slice(&frame);
                    } else {
                        metrics::counter!("jiandu_broker_denied_total", "what" => "publish").increment(1);
                        warn!(user = %s.username, topic = %topic, "publish refused by ACL");
                        if let Some(ack) = wire::refused_publish_ack(s.version, head.qos, head.pkid) {
                            replies.extend_from_slice(&ack);
                        }
                        if head.qos == 2 {
                            refused_qos2.insert(head.pkid);
                        }
                        if let Acl::Device { inbox, .. } = &s.acl
                            && last_notice.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                        {
                            last_notice = Some(Instant::now());
                            let body = serde_json::json!({
                                "topic": topic,
                                "error": "not authorised: a device publishes only under its own jd/v1/dev/{id}/ (never inbox/) or owntracks/{id}/{device}",
                            });
                            replies.extend_from_slice(&wire::publish_qos0(
                                s.version,
                                &format!("{inbox}error"),
                                body.to_string().as_bytes(),
                            ));
                        }
                    }
                }
                kind::SUBSCRIBE => {
                    let sub = wire::parse_subscribe(&frame, s.version)?;
                    let keep: Vec<bool> = sub.filters.iter().map(|f| s.acl.may_subscribe(&f.filter)).collect();
                    for (f, _) in sub.filters.iter().zip(&keep).filter(|(_, k)| !**k) {
                        metrics::counter!("jiandu_broker_denied_total", "what" => "subscribe").increment(1);
                        warn!(user = %s.username, filter = %f.filter, "subscribe refused by ACL");
                    }
                    if keep.iter().all(|k| *k) {
                        out.extend_from_slice(&frame);
                    } else if keep.iter().all(|k| !*k) {
                        let ack = wire::SubAck {
                            pkid: sub.pkid,
                            properties: Vec::new(),
                            codes: vec![wire::suback_refused_code(s.version); keep.len()],
                        };
                        replies.extend_from_slice(&wire::encode_suback(s.version, &ack));
                    } else {
                        out.extend_from_slice(&sub.encode_subset(s.version, &keep));
                        lock(&s.pending_subacks).insert(sub.pkid, keep);
                    }
                }
                kind::PUBREL => {
                    let pkid = wire::pubrel_pkid(&frame)?;
                    if refused_qos2.remove(&pkid) {
                        replies.extend_from_slice(&wire::pubcomp(pkid));
                    } else {
                        out.extend_from_slice(&frame);
                    }
                }
                kind::CONNECT => return Err(wire::WireError::Protocol("second CONNECT".into()).into()),
                _ => out.extend_from_slice(&frame),
            }
        }
        if !out.is_empty() {
            up_tx.write_all(&out).await?;
            out.clear();
        }
        if !replies.is_empty() {
            s.client_tx.lock().await.write_all(&replies).await?;
            replies.clear();
        }
        if client_rx.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// rumqttd → client: passes frames through, merging refused codes into pending SUBACKs.
async fn downstream(s: Arc<Session>, mut up_rx: OwnedReadHalf) -> Result<(), SessionEnd> {
    let mut buf = BytesMut::with_capacity(8192);
    let mut out = BytesMut::with_capacity(8192);
    let result = async {
        loop {
            if up_rx.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
            while let Some(n) = wire::frame_len(&buf, DOWNSTREAM_FRAME_LIMIT)? {
                let frame = buf.split_to(n);
                if wire::packet_kind(&frame) == kind::SUBACK {
                    let mut ack = wire::parse_suback(&frame, s.version)?;
                    let pending = lock(&s.pending_subacks).remove(&ack.pkid);
                    if let Some(keep) = pending {
                        let mut granted = ack.codes.into_iter();
                        ack.codes =
                            keep.iter()
                                .map(|k| {
                                    if *k {
                                        granted.next().unwrap_or(0x80)
                                    } else {
                                        wire::suback_refused_code(s.version)
                                    }
                                })
                                .collect();
                        out.extend_from_slice(&wire::encode_suback(s.version, &ack));
                        continue;
                    }
                }
                out.extend_from_slice(&frame);
            }
            if !out.is_empty() {
                s.client_tx.lock().await.write_all(&out).await?;
                out.clear();
            }
        }
    }
    .await;
    // rumqttd closed the connection (keep-alive, takeover, error): close the client too.
    s.client_tx.lock().await.shutdown().await.ok();
    result
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
