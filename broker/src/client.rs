//! How the platform's own roles reach the broker as ordinary MQTT clients (rumqttc), whether it
//! is the embedded one or an external cluster, so any role can later run in its own process.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use jiandu_store::Store;
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter, Transport};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Address and service credentials of the broker the roles connect to.
#[derive(Clone)]
pub struct BrokerEndpoint {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Service account name (also the client-id prefix).
    pub username: String,
    /// Service account token.
    pub password: String,
    /// TLS for the connection (`None`: plaintext TCP).
    pub tls: Option<std::sync::Arc<jiandu_tls::rustls::ClientConfig>>,
}

impl std::fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl BrokerEndpoint {
    /// MQTT 3.1.1 options for one role; the client id is `{username}-{role}-{random}` so several
    /// processes of the same role can share a subscription group.
    pub fn options(&self, role: &str) -> MqttOptions {
        let suffix: u32 = rand::rng().random();
        let mut o = MqttOptions::new(format!("{}-{role}-{suffix:08x}", self.username), &self.host, self.port);
        o.set_credentials(&self.username, &self.password);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        o.set_clean_session(true);
        o.set_transport(match &self.tls {
            Some(config) => Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config.clone())),
            None => Transport::Tcp,
        });
        o
    }
}

/// One role's MQTT session: stays connected (reconnecting with back-off), subscribes to its
/// filters on every CONNACK, and hands incoming publishes to the role through a bounded channel,
/// so a slow role slows the broker down instead of dropping messages.
pub struct RoleSession {
    /// For publishing and (with manual acks) acknowledging after the work is committed.
    pub client: AsyncClient,
    /// Incoming publishes on the role's filters.
    pub incoming: mpsc::Receiver<Publish>,
    /// `true` while connected.
    pub connected: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RoleSession {
    /// Connects as `{username}-{role}-…` and subscribes to `filters` at QoS 1. With
    /// `manual_acks`, a QoS 1 publish is acknowledged only when the role calls `client.ack`.
    pub fn start(
        endpoint: &BrokerEndpoint,
        role: &str,
        filters: Vec<String>,
        manual_acks: bool,
        capacity: usize,
        shutdown: CancellationToken,
    ) -> RoleSession {
        let mut options = endpoint.options(role);
        options.set_manual_acks(manual_acks);
        options.set_inflight(1000);
        // Requests (acks, publishes) get four times the room of incoming publishes: a role that
        // acks what it took while the session waits to hand it the next one can always queue
        // those acks, so the two never wait for each other.
        let (client, mut events) = AsyncClient::new(options, capacity.max(16) * 4);
        // Role messages are small and interactive (look-up replies, acks, offers): send them at
        // once instead of letting Nagle's algorithm wait for the previous segment's ACK.
        let mut network = events.network_options();
        network.set_tcp_nodelay(true);
        events.set_network_options(network);
        let (tx, incoming) = mpsc::channel(capacity.max(16));
        let (up_tx, connected) = watch::channel(false);
        let sub_client = client.clone();
        let role = role.to_owned();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let polled = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    e = events.poll() => e,
                };
                match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(100);
                        up_tx.send_replace(true);
                        debug!(role = %role, "connected to broker");
                        let subs = filters.iter().map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                        if !filters.is_empty()
                            && let Err(e) = sub_client.subscribe_many(subs).await
                        {
                            warn!(role = %role, error = %e, "subscribe failed");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            warn!(role = %role, codes = ?ack.return_codes, "broker refused a subscription");
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        up_tx.send_replace(false);
                        warn!(role = %role, error = %e, "broker connection lost; reconnecting");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            up_tx.send_replace(false);
            // Let queued acks and publishes go out before saying goodbye.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                sub_client.disconnect().await.ok();
                while let Ok(e) = events.poll().await {
                    if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        });
        RoleSession { client, incoming, connected, task }
    }

    /// Waits for the session task to end (after shutdown).
    pub async fn stopped(self) {
        self.task.await.ok();
    }
}

/// Publishes the event outbox (see `store::events`) on `jd/v1/events/{kind}` at QoS 1, marking
/// each event published only after the broker's PUBACK: at-least-once, in order, surviving
/// broker restarts and crashes of this process.
pub async fn run_outbox_relay(store: Store, endpoint: BrokerEndpoint, shutdown: CancellationToken) {
    const BATCH: i64 = 256;
    let mut backoff = Duration::from_millis(100);
    'connection: loop {
        let (client, mut events) = AsyncClient::new(endpoint.options("events"), BATCH as usize * 2);
        let mut network = events.network_options();
        network.set_tcp_nodelay(true);
        events.set_network_options(network);
        let mut connected = false;
        let mut awaiting_pkid: VecDeque<i64> = VecDeque::new();
        let mut in_flight: HashMap<u16, i64> = HashMap::new();
        let mut acked: Vec<i64> = Vec::new();
        loop {
            let idle = connected && awaiting_pkid.is_empty() && in_flight.is_empty();
            if idle {
                if !acked.is_empty() {
                    if let Err(e) = store.mark_events_published(&acked).await {
                        warn!(error = %e, "marking events published failed; they will be sent again");
                    }
                    acked.clear();
                }
                match store.unpublished_events(BATCH).await {
                    Ok(batch) if !batch.is_empty() => {
                        for e in batch {
                            if client.publish(e.topic(), QoS::AtLeastOnce, false, e.payload()).await.is_err() {
                                continue 'connection;
                            }
                            awaiting_pkid.push_back(e.seq);
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "reading the event outbox failed"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    if !acked.is_empty() {
                        store.mark_events_published(&acked).await.ok();
                    }
                    client.disconnect().await.ok();
                    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(50)), if idle => {}
                polled = events.poll() => match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff = Duration::from_millis(100);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                        if let Some(seq) = awaiting_pkid.pop_front() {
                            in_flight.insert(pkid, seq);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(seq) = in_flight.remove(&ack.pkid) {
                            acked.push(seq);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !acked.is_empty() {
                            store.mark_events_published(&acked).await.ok();
                        }
                        warn!(error = %e, "event relay lost the broker; reconnecting");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue 'connection;
                    }
                }
            }
        }
    }
}

/// The one way every role sends something to a phone (`jd/v1/dev/{dev}/inbox/{kind}`, QoS 1, not
/// retained): offers, notices, receipts, look-up replies and field errors all go through
/// [`PhoneInbox::send`], so the topic, the QoS and the logging of a failure are decided once.
///
/// What must not be lost is made durable before it is sent (the offer is an assignment row, a
/// receipt follows a committed evidence row); the phone's persistent session (clean session off)
/// keeps QoS 1 messages while it is away.
#[derive(Clone)]
pub struct PhoneInbox {
    client: AsyncClient,
}

impl PhoneInbox {
    /// Sends through a role's MQTT client.
    pub fn new(client: AsyncClient) -> PhoneInbox {
        PhoneInbox { client }
    }

    /// Queues `body` (JSON) for the device's inbox of `kind`; false (and a warning) when it
    /// cannot be encoded or queued.
    pub async fn send(&self, device: &str, kind: jiandu_schemas::InboxKind, body: &impl serde::Serialize) -> bool {
        let bytes = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(e) => {
                warn!(device, inbox = %kind, error = %e, "cannot encode a message to the phone");
                return false;
            }
        };
        let topic = jiandu_schemas::topic::inbox(device, kind);
        match self.client.publish(topic, QoS::AtLeastOnce, false, bytes).await {
            Ok(()) => true,
            Err(e) => {
                warn!(device, inbox = %kind, error = %e, "cannot queue a message to the phone");
                false
            }
        }
    }
}
