//! The public MQTT listener: every client connection is served here and linked straight into
//! rumqttd's router, with authentication and the topic ACL enforced on the way in.
//!
//! rumqttd 0.20 can authenticate but has no per-topic authorisation hook, and a refused login is
//! dropped without a CONNACK. So the socket is ours: CONNECT is authenticated against the store
//! (with the proper CONNACK code on refusal); the session is then an in-process link to the
//! router (`rumqttd::local::LinkBuilder`, the same mechanism rumqttd's own `RemoteLink` uses), so
//! a phone costs one socket. The router keeps subscriptions, retained messages, shared
//! subscriptions and saved sessions; delivery to the client as MQTT 5 requires (QoS, No Local,
//! expiry, Receive Maximum, …) is `delivery`'s, session lifetimes and delayed wills `session`'s.
//! Each packet from the client is decoded with rumqttd's own codecs and checked before it reaches
//! the router: a PUBLISH outside the account's topics is answered here (PUBACK/PUBREC, "not
//! authorised" on MQTT 5) and dropped, a SUBSCRIBE has its refused filters removed (their failure
//! codes merged back into the router's SUBACK in order). rumqttd's public API cannot ask the
//! router to fire a last will, so the front keeps the will itself: on a connection lost without
//! DISCONNECT it publishes the will (after the same ACL check made at CONNECT) and then tells the
//! router the session ended.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use jiandu_store::{Principal, Store};
use rumqttd::Notification;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAckProperties, Disconnect, DisconnectReasonCode, LastWill, LastWillProperties, Packet, Protocol, PubAck,
    PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, Publish, PublishProperties, QoS, RetainForwardRule,
    SubAck, SubscribeReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::acl::{self, Acl, Denied};
use crate::delivery::{Outbound, Stamp, Subscription, Subscriptions, Wire};
use crate::gate::{self, EvidenceGate};
use crate::saved::{Ending, PendingWill, SavedSessions};
use crate::sessions::{AccountKey, Registration, Sessions};
use crate::tls::Transport;
use crate::wire::{self, Refusal, Version, kind};

/// Message ids of [`Stamp`]s, unique per process.
static MESSAGE_IDS: AtomicU64 = AtomicU64::new(1);

/// Opens a link into the router for a client id: (client id, clean session, topic alias max).
pub(crate) type LinkFactory =
    Arc<dyn Fn(&str, bool, u16) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync>;

/// A client's byte stream: plain TCP, TLS or a WebSocket's binary messages all serve alike.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientStream for S {}

/// Most topic aliases a client may set up on one MQTT 5 connection (advertised in CONNACK; an
/// alias beyond it ends the connection with DISCONNECT 0x94). Aliases are resolved by the front,
/// stored only for permitted topics, and never reach the router.
pub const TOPIC_ALIAS_MAX: u16 = 32;

/// Frames larger than this get a read buffer of their own, sized exactly (evidence chunks).
const LARGE_FRAME: usize = 16 * 1024;

/// What every connection of the front shares.
pub(crate) struct Front {
    pub store: Store,
    pub links: LinkFactory,
    pub max_packet_bytes: usize,
    pub connect_timeout: Duration,
    /// Live sessions per account (connection caps, revocation).
    pub sessions: Arc<Sessions>,
    /// Most distinct client ids one device may hold connected at once.
    pub max_sessions_per_device: usize,
    /// Most distinct client ids one integration account may hold connected at once.
    pub max_sessions_per_integration: usize,
    /// The platform subscriptions still awaited since start; logins are held until it is empty.
    pub awaited: Arc<Awaited>,
    /// Until then, and at most until this moment, the CONNACK of a device or integration waits:
    /// rumqttd drops messages nobody subscribes to, so a phone that reconnects to a restarted
    /// server before ingest has subscribed would have its re-sent backlog dropped, and the next
    /// `inbox/ack` would then cover points never stored.
    pub hold_logins_until: Instant,
    /// Longest keep-alive accepted; MQTT 5 clients asking for more (or 0) are told this one.
    pub max_keep_alive: u16,
    /// Longest Session Expiry Interval granted, in seconds.
    pub max_session_expiry: u32,
    /// Session state the router does not keep (expiry, subscription options, delayed wills).
    pub saved: Arc<SavedSessions>,
    /// Clock of message arrival times (Message Expiry).
    pub epoch: Instant,
    /// The budget of evidence bytes between phones and ingest (flow control, see `gate`).
    pub evidence_gate: Arc<EvidenceGate>,
}

/// The service subscriptions a freshly started broker waits for before it lets devices and
/// integrations in (the local ingest role's shared filters).
pub(crate) struct Awaited {
    filters: std::sync::Mutex<HashSet<String>>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Awaited {
    /// Waits for `filters` (none: ready at once).
    pub fn new(filters: impl IntoIterator<Item = String>) -> Awaited {
        let filters: HashSet<String> = filters.into_iter().collect();
        let ready = tokio::sync::watch::channel(filters.is_empty()).0;
        Awaited { filters: std::sync::Mutex::new(filters), ready }
    }

    fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Whether any of `filters` is awaited.
    fn wants(&self, filters: &[String]) -> bool {
        let awaited = self.filters.lock().unwrap_or_else(|e| e.into_inner());
        filters.iter().any(|f| awaited.contains(f))
    }

    /// Marks `filters` as subscribed (they reached the router).
    fn arrived(&self, filters: &[String]) {
        let mut awaited = self.filters.lock().unwrap_or_else(|e| e.into_inner());
        for f in filters {
            awaited.remove(f);
        }
        if awaited.is_empty() && !self.is_ready() {
            info!("platform subscriptions in place: devices and integrations may log in");
            self.ready.send_replace(true);
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("malformed packet: {0:?}")]
    Codec(rumqttd::protocol::Error),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("refused: {0:?}")]
    Refused(Refusal),
    #[error("keep-alive expired")]
    KeepAlive,
    #[error("router link: {0}")]
    Link(String),
    #[error("session taken over by a new connection")]
    TakenOver,
    #[error("protocol error, DISCONNECT 0x{0:02x} sent")]
    Violation(u8),
    #[error("account revoked")]
    Revoked,
}

impl From<LinkError> for SessionEnd {
    fn from(e: LinkError) -> Self {
        // Kept as text: rumqttd's error carries a whole router event (hundreds of bytes).
        SessionEnd::Link(e.to_string())
    }
}

/// The codec of the connection's protocol level.
#[derive(Clone, Copy)]
enum Codec {
    V4,
    V5,
}

/// Encodes a packet for a client of protocol `version`.
pub(crate) fn encode(version: Version, packet: Packet, out: &mut BytesMut) {
    let codec = match version {
        Version::V4 => Codec::V4,
        Version::V5 => Codec::V5,
    };
    codec.write(packet, out);
}

impl Codec {
    fn read(self, buf: &mut BytesMut, max: usize) -> Result<Packet, rumqttd::protocol::Error> {
        match self {
            Codec::V4 => V4.read_mut(buf, max),
            Codec::V5 => V5.read_mut(buf, max),
        }
    }

    /// Encodes a packet; MQTT 3.1.1 has no properties, so they are dropped first (a v5
    /// publisher's properties must not reach a v4 subscriber's encoder).
    fn write(self, packet: Packet, out: &mut BytesMut) {
        let result = match self {
            Codec::V4 => V4.write(without_properties(packet), out),
            Codec::V5 => V5.write(packet, out),
        };
        if let Err(e) = result {
            warn!(error = ?e, "could not encode a packet for the client");
        }
    }
}

fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Connect(c, _, w, _, l) => Packet::Connect(c, None, w, None, l),
        Packet::ConnAck(a, _) => Packet::ConnAck(a, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::Subscribe(s, _) => Packet::Subscribe(s, None),
        Packet::SubAck(s, _) => Packet::SubAck(s, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::Unsubscribe(u, _) => Packet::Unsubscribe(u, None),
        Packet::UnsubAck(u, _) => Packet::UnsubAck(u, None),
        Packet::Disconnect(d, _) => Packet::Disconnect(d, None),
        other => other,
    }
}

impl Front {
    /// Serves one client connection until it closes.
    pub async fn serve<S: ClientStream>(self: Arc<Self>, stream: S, peer: SocketAddr, transport: Transport) {
        let span = info_span!("mqtt", %peer, tls = transport.tls, client = tracing::field::Empty);
        async move {
            match self.session(stream, &transport).await {
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

    async fn session<S: ClientStream>(&self, mut client: S, transport: &Transport) -> Result<(), SessionEnd> {
        // Buffers start small and grow on demand: most phones are idle most of the time.
        let mut buf = BytesMut::with_capacity(512);
        let first = tokio::time::timeout(self.connect_timeout, read_connect(&mut client, &mut buf))
            .await
            .map_err(|_| SessionEnd::ConnectTimeout(self.connect_timeout))??;
        let Some(mut first) = first else { return Ok(()) };
        let connect = match wire::parse_connect(&first) {
            Ok(c) => c,
            Err(e @ wire::WireError::Protocol(_)) => {
                // "Unacceptable protocol version" is the one answer every client version reads.
                client.write_all(&[0x20, 0x02, 0x00, 0x01]).await.ok();
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        tracing::Span::current().record("client", connect.client_id.as_str());
        let version = connect.version;
        let codec = match version {
            Version::V4 => Codec::V4,
            Version::V5 => Codec::V5,
        };

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
        if !acl::client_id_fits(acl::principal_name(&principal), &connect.client_id) {
            return refuse(&mut client, version, Refusal::BadClientId).await;
        }
        if let Err(why) = transport.admits(&principal) {
            warn!(reason = why, "client certificate does not fit the account");
            return refuse(&mut client, version, Refusal::NotAuthorized).await;
        }
        let acl = Acl::for_principal(&principal);
        let Packet::Connect(header, props, will, will_props, _login) =
            codec.read(&mut first, wire::MAX_CONNECT_BYTES).map_err(SessionEnd::Codec)?
        else {
            return Err(wire::WireError::Protocol("first packet is not CONNECT".into()).into());
        };
        if let Some(will) = &will {
            let topic = std::str::from_utf8(&will.topic).unwrap_or("");
            if let Err(denied) = acl.check_publish(topic, will.message.len(), will.retain) {
                warn!(will = %topic, reason = ?denied, "last will refused");
                return refuse(&mut client, version, Refusal::NotAuthorized).await;
            }
        }
        let (key, cap) = match &principal {
            Principal::Device { id } => (AccountKey::Device(id.clone()), Some(self.max_sessions_per_device)),
            Principal::Integration { name, .. } => {
                (AccountKey::Account(name.clone()), Some(self.max_sessions_per_integration))
            }
            Principal::Service { name } => (AccountKey::Account(name.clone()), None),
        };
        let Some(registration) = self.sessions.register(key, &connect.client_id, cap) else {
            metrics::counter!("jiandu_broker_denied_total", "what" => "session_cap").increment(1);
            warn!(user = %username, cap = ?cap, "too many sessions for one account");
            return refuse(&mut client, version, Refusal::QuotaExceeded).await;
        };
        let mut acked = ConnAckProperties::default();
        let keep_alive = match version {
            // Without keep-alive a dead phone would hold its session (and will) forever; 3.1.1
            // has no way to impose one.
            Version::V4 if header.keep_alive == 0 => {
                return refuse(&mut client, version, Refusal::Unavailable).await;
            }
            Version::V4 => header.keep_alive,
            // MQTT 5 §3.2.2.3.14: the server may impose its own keep-alive.
            Version::V5 if header.keep_alive == 0 || header.keep_alive > self.max_keep_alive => {
                acked.server_keep_alive = Some(self.max_keep_alive);
                self.max_keep_alive
            }
            Version::V5 => header.keep_alive,
        };
        // Session lifetime: 3.1.1 keeps a non-clean session until a clean connection; MQTT 5
        // keeps it for the Session Expiry Interval, which we may lower (and then say so).
        let expiry = match version {
            Version::V4 => (!header.clean_session).then_some(None),
            Version::V5 => {
                let asked = props.as_ref().and_then(|p| p.session_expiry_interval).unwrap_or(0);
                let granted = asked.min(self.max_session_expiry);
                if granted != asked {
                    acked.session_expiry_interval = Some(granted);
                }
                (granted > 0).then_some(Some(granted))
            }
        };
        let keep = expiry.is_some();
        let receive_max = props.as_ref().and_then(|p| p.receive_maximum).unwrap_or(u16::MAX);
        let client_max_packet = props.as_ref().and_then(|p| p.max_packet_size).map_or(usize::MAX, |m| m as usize);
        let begun = self.saved.begin(&connect.client_id, header.clean_session, keep).await;
        if !matches!(principal, Principal::Service { .. }) && !self.awaited.is_ready() {
            let mut ready = self.awaited.ready.subscribe();
            let until = self.hold_logins_until.into();
            let _ = tokio::time::timeout_at(until, ready.wait_for(|r| *r)).await;
        }
        let links = self.links.clone();
        let client_id = connect.client_id.clone();
        let router_clean = begun.router_clean;
        // Server-to-client topic aliases stay off: the router assigns them per filter, not per
        // topic, and the front rewrites every delivery anyway.
        let linked = tokio::task::spawn_blocking(move || links(&client_id, router_clean, 0))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (link_tx, link_rx, connack) = match linked {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "router refused the connection");
                return refuse(&mut client, version, Refusal::Unavailable).await;
            }
        };
        let mut session_present = false;
        let mut out = BytesMut::with_capacity(256);
        if let Some(Packet::ConnAck(ack, _)) = Option::<Packet>::from(connack) {
            session_present = ack.session_present;
            acked.topic_alias_max = Some(TOPIC_ALIAS_MAX);
            acked.max_packet_size = Some(self.max_packet_bytes as u32);
            codec.write(Packet::ConnAck(ack, Some(acked)), &mut out);
        }
        client.write_all(&out).await?;
        metrics::counter!("jiandu_broker_connections_total", "result" => "accepted").increment(1);
        debug!(user = %username, session_present, "authenticated");

        let subscriptions = if session_present { begun.restored.unwrap_or_default() } else { Subscriptions::new() };
        let mut session = Session {
            codec,
            version,
            client_id: connect.client_id.clone(),
            username: username.clone(),
            acl,
            keep_alive: Duration::from_secs(u64::from(keep_alive)),
            will,
            registration,
            awaited: (!self.awaited.is_ready()).then(|| self.awaited.clone()),
            subscribing: Vec::new(),
            will_props,
            expiry,
            expiry_cap: self.max_session_expiry,
            max_packet_bytes: self.max_packet_bytes,
            link_tx,
            link_rx,
            pending_subacks: HashMap::new(),
            subscriptions,
            outbound: Outbound::new(version, connect.client_id.clone(), receive_max, client_max_packet, self.epoch)
                .with_gate(self.evidence_gate.clone()),
            gate: self.evidence_gate.clone(),
            blocked: None,
            aliases: HashMap::new(),
            refused_qos2: HashSet::new(),
            last_notice: None,
            with_will: false,
        };
        let ended = session.run(client, buf).await;
        if matches!(ended, Err(SessionEnd::Revoked)) {
            // Nothing of a revoked account is published any more, its will included.
            session.will = None;
        }
        // A session taken over by a new connection of the same client was already ended by the
        // router, and the client is back: neither a will nor a DISCONNECT is due.
        let delayed_will = match ended {
            Err(SessionEnd::TakenOver) => None,
            Ok(true) if !session.with_will => None,
            _ => session.finish().await,
        };
        let ending =
            Ending { expiry: session.expiry.unwrap_or(Some(0)), subscriptions: session.subscriptions, delayed_will };
        self.saved.end(&connect.client_id, begun.generation, ending).await;
        ended.map(|_| ())
    }
}

/// Answers CONNECT with a refusing CONNACK and closes.
async fn refuse<S: ClientStream>(client: &mut S, version: Version, why: Refusal) -> Result<(), SessionEnd> {
    client.write_all(&wire::connack_refused(version, why)).await.ok();
    client.shutdown().await.ok();
    Err(SessionEnd::Refused(why))
}

/// Reads the unauthenticated first frame: it must be a CONNECT (anything else closes the
/// connection at its first byte) of at most [`wire::MAX_CONNECT_BYTES`]; `None` on a clean EOF
/// before any byte.
async fn read_connect<S: ClientStream>(stream: &mut S, buf: &mut BytesMut) -> Result<Option<BytesMut>, SessionEnd> {
    loop {
        if let Some(first) = buf.first()
            && first >> 4 != kind::CONNECT
        {
            return Err(wire::WireError::Protocol(format!("first packet is type {}, not CONNECT", first >> 4)).into());
        }
        if let Some(n) = wire::frame_len(buf, wire::MAX_CONNECT_BYTES)? {
            return Ok(Some(buf.split_to(n)));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// One linked client session.
struct Session {
    codec: Codec,
    version: Version,
    client_id: String,
    username: String,
    acl: Acl,
    keep_alive: Duration,
    will: Option<LastWill>,
    /// This session's place among the account's live sessions (ended on revocation).
    registration: Registration,
    /// The platform subscriptions awaited since start (for a service session, until they came).
    awaited: Option<Arc<Awaited>>,
    /// Awaited filters among the packets about to go to the router.
    subscribing: Vec<String>,
    will_props: Option<LastWillProperties>,
    /// Whether the session outlives the connection: `None` no, `Some(None)` until a clean
    /// connection (3.1.1), `Some(Some(s))` for `s` seconds (MQTT 5).
    expiry: Option<Option<u32>>,
    /// The server's longest Session Expiry Interval.
    expiry_cap: u32,
    max_packet_bytes: usize,
    link_tx: LinkTx,
    link_rx: LinkRx,
    /// SUBSCRIBE packet id → each filter with the options asked for, or `None` when refused.
    pending_subacks: HashMap<u16, Vec<Option<(String, Subscription)>>>,
    /// The client's subscriptions with their options (the router knows only filter and QoS).
    subscriptions: Subscriptions,
    /// Deliveries to the client (see `delivery`).
    outbound: Outbound,
    /// v5 topic aliases the client set up (at most [`TOPIC_ALIAS_MAX`]).
    aliases: HashMap<u16, Bytes>,
    /// QoS 2 packet ids of refused publishes, whose PUBREL we answer ourselves.
    refused_qos2: HashSet<u16>,
    last_notice: Option<Instant>,
    /// The client ended with DISCONNECT 0x04: publish the will anyway.
    with_will: bool,
    /// The evidence budget chunks are admitted against.
    gate: Arc<EvidenceGate>,
    /// An evidence chunk waiting for room in the budget (message id, bytes, the packet): the
    /// socket is not read until it is admitted.
    blocked: Option<(u64, usize, Packet)>,
}

impl Session {
    /// Pumps packets both ways; `Ok(true)` when the client ended with DISCONNECT.
    async fn run<S: ClientStream>(&mut self, client: S, mut buf: BytesMut) -> Result<bool, SessionEnd> {
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut out = Wire::default();
        let mut to_router: Vec<Packet> = Vec::new();
        // MQTT: the server may close a connection silent for 1.5 × keep-alive.
        let idle_limit = self.keep_alive + self.keep_alive / 2;
        let mut last_heard = Instant::now();
        loop {
            // Packets already buffered (e.g. sent right behind CONNECT) first; none while a chunk
            // waits for room in the evidence budget.
            let drained =
                if self.blocked.is_some() { Ok(false) } else { self.drain_client(&mut buf, &mut to_router, &mut out) };
            let disconnect = match drained {
                Ok(d) => d,
                Err(e) => {
                    // The packets before the offending one were fine and are passed on.
                    if let Some(last) = to_router.pop() {
                        self.link_tx.buffer().extend(to_router.drain(..));
                        self.link_tx.send(last).await.ok();
                    }
                    // Say why before closing (DISCONNECT 0x94, 0x95, …).
                    if !out.is_empty() {
                        out.write_to(&mut wr).await.ok();
                        wr.shutdown().await.ok();
                    }
                    return Err(e);
                }
            };
            if let Some(last) = to_router.pop() {
                // Queue all but the last directly; sending the last one wakes the router once.
                self.link_tx.buffer().extend(to_router.drain(..));
                self.link_tx.send(last).await?;
            }
            if !self.subscribing.is_empty()
                && let Some(awaited) = &self.awaited
            {
                // Logins held since start go on once all are in: their links reach the router
                // after these subscriptions.
                awaited.arrived(&std::mem::take(&mut self.subscribing));
            }
            if !out.is_empty() {
                out.write_to(&mut wr).await?;
                if out.capacity() > 256 * 1024 {
                    out = Wire::default();
                }
            }
            if disconnect {
                return Ok(true);
            }
            if buf.is_empty() && (buf.capacity() > 64 * 1024 || buf.capacity() < 512) {
                // Give back the room a burst needed (or make room after a frame that had a
                // buffer of its own).
                buf = BytesMut::with_capacity(512);
            } else if self.blocked.is_none()
                && let Ok(Some(total)) = wire::declared_len(&buf, self.max_packet_bytes)
                && total > LARGE_FRAME
                && buf.capacity() != total
            {
                // A large frame (an evidence chunk) is read into a buffer of exactly its size:
                // read in few calls, never regrown and copied, and it can go to the router's log
                // as it is, pinning nothing but itself (`drain_client`). Only a logged-in
                // client gets here, and never beyond its Maximum Packet Size.
                let mut exact = BytesMut::with_capacity(total);
                exact.extend_from_slice(&buf);
                buf = exact;
            }
            let waiting = self.blocked.as_ref().map(|(id, len, _)| (*id, *len));
            tokio::select! {
                read = rd.read_buf(&mut buf), if waiting.is_none() => {
                    if read? == 0 {
                        return Ok(false);
                    }
                    last_heard = Instant::now();
                }
                () = self.gate.admit(waiting.map_or(0, |w| w.0), waiting.map_or(0, |w| w.1)), if waiting.is_some() => {
                    if let Some((_, _, packet)) = self.blocked.take() {
                        to_router.push(packet);
                    }
                    // The socket went unread by our choice, not the client's silence.
                    last_heard = Instant::now();
                }
                notified = self.link_rx.next() => {
                    self.forward_to_client(notified?, &mut out, &mut to_router).await?;
                    // Take whatever else is ready without waiting, to write in one go.
                    while let Some(more) = self.link_rx.next().now_or_never() {
                        self.forward_to_client(more?, &mut out, &mut to_router).await?;
                        if out.len() > 256 * 1024 {
                            break;
                        }
                    }
                }
                _ = tokio::time::sleep_until((last_heard + idle_limit).into()) => return Err(SessionEnd::KeepAlive),
                _ = self.registration.ended.cancelled() => {
                    // Administrative action: the account was revoked.
                    if let Some(d) = wire::disconnect(self.version, 0x98) {
                        wr.write_all(&d).await.ok();
                    }
                    wr.shutdown().await.ok();
                    info!(user = %self.username, "session ended: account revoked");
                    return Err(SessionEnd::Revoked);
                }
            }
        }
    }

    /// Decodes every complete packet in `buf`, checking each against the ACL. Permitted packets
    /// go to `to_router`, our own answers to `out`. Returns whether DISCONNECT was seen.
    fn drain_client(
        &mut self,
        buf: &mut BytesMut,
        to_router: &mut Vec<Packet>,
        out: &mut Wire,
    ) -> Result<bool, SessionEnd> {
        loop {
            let n = match wire::frame_len(buf, self.max_packet_bytes) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(false),
                Err(e) => {
                    if let wire::WireError::TooLarge { .. } = e
                        && let Some(d) = wire::disconnect(self.version, 0x95)
                    {
                        out.extend_from_slice(&d);
                    }
                    warn!(error = %e, "closing connection");
                    return Err(e.into());
                }
            };
            // The frame is its buffer's whole allocation (see `run`): slices of it pin nothing else.
            let exact = n == buf.len() && buf.capacity() == n;
            let mut frame = buf.split_to(n);
            let kind = wire::packet_kind(&frame);
            if kind == kind::CONNECT {
                return Err(wire::WireError::Protocol("second CONNECT".into()).into());
            }
            if !wire::from_client(kind) {
                return Err(wire::WireError::Protocol(format!("packet type {kind} from a client")).into());
            }
            let head = if kind == kind::PUBLISH { Some(wire::parse_publish(&frame, self.version)?) } else { None };
            let (head_qos, head_pkid) = head.as_ref().map(|h| (h.qos, h.pkid)).unwrap_or((0, 0));
            let packet = self.codec.read(&mut frame, self.max_packet_bytes).map_err(SessionEnd::Codec)?;
            match packet {
                Packet::Publish(mut publish, mut props) => {
                    // Aliases are resolved here and never reach the router.
                    let alias = props.as_mut().and_then(|p| p.topic_alias.take());
                    if let Some(a) = alias
                        && (a == 0 || a > TOPIC_ALIAS_MAX)
                    {
                        metrics::counter!("jiandu_broker_denied_total", "what" => "topic_alias").increment(1);
                        if let Some(d) = wire::disconnect(self.version, 0x94) {
                            out.extend_from_slice(&d);
                        }
                        return Err(wire::WireError::Protocol(format!(
                            "topic alias {a} outside 1..={TOPIC_ALIAS_MAX}"
                        ))
                        .into());
                    }
                    if publish.topic.is_empty() {
                        match alias.and_then(|a| self.aliases.get(&a)) {
                            Some(t) => publish.topic = t.clone(),
                            None => {
                                if let Some(d) = wire::disconnect(self.version, 0x82) {
                                    out.extend_from_slice(&d);
                                }
                                return Err(wire::WireError::Protocol("unknown topic alias".into()).into());
                            }
                        }
                    }
                    let topic_str = std::str::from_utf8(&publish.topic).unwrap_or("");
                    match self.acl.check_publish(topic_str, publish.payload.len(), publish.retain) {
                        Ok(()) => {
                            let len = publish.payload.len();
                            // Cut from a shared read buffer, a large message would pin all of it.
                            let large = len > LARGE_FRAME && !exact;
                            // The topic is cut from the read buffer and a slice pins all of it:
                            // an alias keeps it for the connection's life, the router's log keeps
                            // a large message for a while. One exact copy serves both.
                            if alias.is_some() || large {
                                publish.topic = Bytes::copy_from_slice(&publish.topic);
                            }
                            if let Some(a) = alias {
                                self.aliases.insert(a, publish.topic.clone());
                            }
                            let stamp = Stamp {
                                qos: head_qos,
                                retain: publish.retain,
                                id: MESSAGE_IDS.fetch_add(1, Ordering::Relaxed),
                                at_ms: self.outbound.now_ms(),
                                origin: self.client_id.clone(),
                            };
                            stamp.attach(&mut props);
                            if large {
                                // The router's log keeps the message for a while: exact copies
                                // of its payload (and topic, above, and correlation data), all
                                // cut from the read buffer where any one pins all of it, let the
                                // read buffer be reused at once instead of being held, with its
                                // spare room, until the log moves on. Copying the payload alone
                                // left every logged chunk pinning a read buffer through its
                                // topic (74 MiB of a 128 MiB upload's peak heap, heaptrack).
                                publish.payload = Bytes::copy_from_slice(&publish.payload);
                                if let Some(data) = props.as_mut().and_then(|p| p.correlation_data.as_mut()) {
                                    *data = Bytes::copy_from_slice(data);
                                }
                            }
                            if head_qos > 0 && gate::is_chunk(&publish.topic) && !self.gate.try_admit(stamp.id, len) {
                                // No room: this chunk waits, and so does the rest of the stream.
                                self.blocked = Some((stamp.id, len, Packet::Publish(publish, props)));
                                return Ok(false);
                            }
                            to_router.push(Packet::Publish(publish, props));
                        }
                        Err(denied) => {
                            if let Some(a) = alias {
                                self.aliases.remove(&a);
                            }
                            let topic = topic_str.to_owned();
                            self.refuse_publish(&topic, &denied, head_qos, head_pkid, out);
                        }
                    }
                }
                Packet::Subscribe(mut sub, mut props) => {
                    let id = props.as_mut().and_then(|p| p.id.take());
                    if id == Some(0) {
                        return self.violation(0x82, out);
                    }
                    if let Some(awaited) = &self.awaited
                        && matches!(self.acl, Acl::Service)
                    {
                        let paths: Vec<String> = sub.filters.iter().map(|f| f.path.clone()).collect();
                        if awaited.wants(&paths) {
                            self.subscribing.extend(paths);
                        }
                    }
                    let keep: Vec<bool> = sub.filters.iter().map(|f| self.acl.may_subscribe(&f.path)).collect();
                    for (f, _) in sub.filters.iter().zip(&keep).filter(|(_, k)| !**k) {
                        metrics::counter!("jiandu_broker_denied_total", "what" => "subscribe").increment(1);
                        warn!(user = %self.username, filter = %f.path, "subscribe refused by ACL");
                    }
                    let asked: Vec<Option<(String, Subscription)>> = sub
                        .filters
                        .iter()
                        .zip(&keep)
                        .map(|(f, k)| {
                            k.then(|| {
                                let options = Subscription {
                                    id,
                                    qos: f.qos as u8,
                                    no_local: f.nolocal,
                                    retain_as_published: f.preserve_retain,
                                    no_retained: f.retain_forward_rule == RetainForwardRule::Never,
                                };
                                (f.path.clone(), options)
                            })
                        })
                        .collect();
                    if keep.iter().all(|k| !*k) {
                        let ack = SubAck { pkid: sub.pkid, return_codes: vec![self.refused_code(); keep.len()] };
                        self.codec.write(Packet::SubAck(ack, None), out);
                    } else {
                        let mut flags = keep.iter();
                        sub.filters.retain(|_| *flags.next().unwrap_or(&false));
                        // The router delivers at QoS 0 or 1; QoS 2 to the client is ours.
                        for f in &mut sub.filters {
                            if f.qos == QoS::ExactlyOnce {
                                f.qos = QoS::AtLeastOnce;
                            }
                        }
                        self.pending_subacks.insert(sub.pkid, asked);
                        to_router.push(Packet::Subscribe(sub, props));
                    }
                }
                Packet::Unsubscribe(unsub, props) => {
                    for f in &unsub.filters {
                        self.subscriptions.remove(f);
                    }
                    to_router.push(Packet::Unsubscribe(unsub, props));
                }
                Packet::PubRel(rel, props) => {
                    if self.refused_qos2.remove(&rel.pkid) {
                        let comp = PubComp { pkid: rel.pkid, reason: PubCompReason::Success };
                        self.codec.write(Packet::PubComp(comp, None), out);
                    } else {
                        to_router.push(Packet::PubRel(rel, props));
                    }
                }
                Packet::PubAck(ack, _) => self.outbound.client_puback(ack.pkid, out, to_router),
                Packet::PubRec(rec, _) => self.outbound.client_pubrec(rec.pkid, out, to_router),
                Packet::PubComp(comp, _) => self.outbound.client_pubcomp(comp.pkid, out, to_router),
                Packet::Disconnect(d, props) => {
                    if let Some(asked) = props.as_ref().and_then(|p| p.session_expiry_interval) {
                        // MQTT 5 §3.14.2.2.2: a session that expired at close cannot be extended.
                        if self.expiry.is_none() && asked > 0 {
                            return self.violation(0x82, out);
                        }
                        self.expiry = Some(Some(asked.min(self.max_session_expiry())));
                    }
                    self.with_will = d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                    if !self.with_will {
                        // With 0x04 the will goes first; `finish` then ends the router session.
                        to_router.push(Packet::Disconnect(d, props));
                    }
                    return Ok(true);
                }
                other => to_router.push(other),
            }
        }
    }

    /// Answers a protocol violation with DISCONNECT `reason` (MQTT 5) and ends the connection.
    fn violation(&mut self, reason: u8, out: &mut Wire) -> Result<bool, SessionEnd> {
        if let Some(d) = wire::disconnect(self.version, reason) {
            out.extend_from_slice(&d);
        }
        Err(SessionEnd::Violation(reason))
    }

    /// The most a DISCONNECT may ask to keep the session.
    fn max_session_expiry(&self) -> u32 {
        self.expiry_cap
    }

    fn refused_code(&self) -> SubscribeReasonCode {
        match self.version {
            Version::V4 => SubscribeReasonCode::Failure,
            Version::V5 => SubscribeReasonCode::NotAuthorized,
        }
    }

    /// Answers a refused PUBLISH and, for a device, says why on its `inbox/error`.
    fn refuse_publish(&mut self, topic: &str, denied: &Denied, qos: u8, pkid: u16, out: &mut Wire) {
        metrics::counter!("jiandu_broker_denied_total", "what" => "publish").increment(1);
        warn!(user = %self.username, topic = %topic, reason = ?denied, "publish refused by ACL");
        match qos {
            1 => {
                let reason = match self.version {
                    Version::V4 => PubAckReason::Success,
                    Version::V5 => PubAckReason::NotAuthorized,
                };
                self.codec.write(Packet::PubAck(PubAck { pkid, reason }, None), out);
            }
            2 => {
                let reason = match self.version {
                    Version::V4 => PubRecReason::Success,
                    Version::V5 => PubRecReason::NotAuthorized,
                };
                self.codec.write(Packet::PubRec(PubRec { pkid, reason }, None), out);
                if self.version == Version::V4 {
                    self.refused_qos2.insert(pkid);
                }
            }
            _ => {}
        }
        if let Acl::Device { id, .. } = &self.acl
            && self.last_notice.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_notice = Some(Instant::now());
            let body = serde_json::json!({ "topic": topic, "error": denied.explain() });
            out.extend_from_slice(&wire::publish_qos0(
                self.version,
                &format!("jd/v1/dev/{id}/inbox/error"),
                body.to_string().as_bytes(),
            ));
        }
    }

    /// Writes a router notification to the client: deliveries through [`Outbound`], SUBACKs with
    /// the refused filters' codes merged back in and the QoS the client asked for.
    async fn forward_to_client(
        &mut self,
        notification: Option<Notification>,
        out: &mut Wire,
        to_router: &mut Vec<Packet>,
    ) -> Result<(), SessionEnd> {
        let Some(notification) = notification else { return Ok(()) };
        if let Notification::Disconnect(d, props) = notification {
            self.codec.write(Packet::Disconnect(d, props), out);
            return Err(SessionEnd::TakenOver);
        }
        match Option::<Packet>::from(notification) {
            Some(Packet::SubAck(mut ack, props)) => {
                let asked = self.pending_subacks.remove(&ack.pkid).unwrap_or_default();
                let mut granted = std::mem::take(&mut ack.return_codes).into_iter();
                ack.return_codes = asked
                    .into_iter()
                    .map(|a| match a {
                        None => self.refused_code(),
                        Some((filter, options)) => match granted.next() {
                            Some(
                                SubscribeReasonCode::QoS0 | SubscribeReasonCode::QoS1 | SubscribeReasonCode::Success(_),
                            ) => {
                                let code = match options.qos {
                                    0 => SubscribeReasonCode::QoS0,
                                    1 => SubscribeReasonCode::QoS1,
                                    _ => SubscribeReasonCode::QoS2,
                                };
                                self.subscriptions.insert(filter, options);
                                code
                            }
                            Some(other) => other,
                            None => SubscribeReasonCode::Failure,
                        },
                    })
                    .collect();
                self.codec.write(Packet::SubAck(ack, props), out);
            }
            Some(Packet::Publish(publish, props)) => {
                self.outbound.deliver(publish, props, &self.subscriptions, out, to_router);
            }
            Some(packet) => self.codec.write(packet, out),
            // The router paused this link (e.g. flow control); ask to be scheduled again.
            None => self.link_rx.wake().await?,
        }
        Ok(())
    }

    /// Ends the router session of a client that vanished without DISCONNECT (or asked for its
    /// will with DISCONNECT 0x04): the will is published now, or returned when it has a delay.
    async fn finish(&mut self) -> Option<(PendingWill, u32)> {
        let mut delayed = None;
        if let Some(will) = self.will.take() {
            let props = self.will_props.take();
            let delay = props.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
            let kept = self.expiry.is_some_and(|e| e != Some(0));
            let pending = self.will_publish(will, props);
            if delay > 0 && kept {
                delayed = Some((pending, delay));
            } else if self.link_tx.send(Packet::Publish(pending.0, pending.1)).await.is_ok() {
                debug!("last will published");
            }
        }
        let bye = Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection };
        self.link_tx.send(Packet::Disconnect(bye, None)).await.ok();
        delayed
    }

    /// The will as a stamped PUBLISH for the router. It enters the router at QoS 0 (the router
    /// would hold a QoS 2 message for a PUBREL that never comes); the stamp keeps its QoS.
    fn will_publish(&self, will: LastWill, props: Option<LastWillProperties>) -> PendingWill {
        let mut publish = Publish::new(will.topic, will.message, will.retain);
        publish.retain = will.retain;
        let mut props = props.map(|w| PublishProperties {
            payload_format_indicator: w.payload_format_indicator,
            message_expiry_interval: w.message_expiry_interval,
            response_topic: w.response_topic,
            correlation_data: w.correlation_data,
            user_properties: w.user_properties,
            content_type: w.content_type,
            ..Default::default()
        });
        let stamp = Stamp {
            qos: will.qos as u8,
            retain: will.retain,
            id: MESSAGE_IDS.fetch_add(1, Ordering::Relaxed),
            at_ms: self.outbound.now_ms(),
            origin: self.client_id.clone(),
        };
        stamp.attach(&mut props);
        (publish, props)
    }
}
