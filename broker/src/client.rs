//! How the platform's own roles reach the broker as ordinary MQTT clients (rumqttc), whether it
//! is the embedded one or an external cluster, so any role can later run in its own process.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use jiandu_store::Store;
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter, Transport};
use tokio::sync::{mpsc, oneshot, watch};
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

/// A role's word to its supervisor that it does its work (subscribed, its state loaded): until
/// then `serve` shows the role as `starting` in `/healthz`, so an operator (or a test) never
/// takes a role that cannot yet receive a message for one that runs.
#[derive(Debug, Default)]
pub struct Ready(Option<oneshot::Sender<()>>);

impl Ready {
    /// A handle for one start of a role and the receiver its supervisor waits on.
    pub fn new() -> (Ready, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Ready(Some(tx)), rx)
    }

    /// Says the role is ready; later calls do nothing.
    pub fn set(&mut self) {
        if let Some(tx) = self.0.take() {
            tx.send(()).ok();
        }
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
    /// `true` once the broker confirmed the subscriptions of the current connection (at once
    /// for a session without filters); `false` again when the connection is lost.
    subscribed: watch::Receiver<bool>,
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
        // Requests (acks, publishes) get 64 times the room of incoming publishes, so a role can
        // always queue the acks of what it took. rumqttc hands out every publish it has already
        // read from the socket before it takes requests again, and a broker that streams (Mosquitto
        // sends on as each PUBACK arrives) can have thousands read at once: with four times the
        // room, heartbeat ingest on Mosquitto waited to queue a PUBACK while the session waited to
        // hand it the next message, and stalled for good (`jiandu bench ingest --broker
        // mosquitto`, 500 phones × 20 points). The channel only grows as far as it is used.
        let (client, mut events) = AsyncClient::new(options, capacity.max(16) * 64);
        // Role messages are small and interactive (look-up replies, acks, offers): send them at
        // once instead of letting Nagle's algorithm wait for the previous segment's ACK.
        let mut network = events.network_options();
        network.set_tcp_nodelay(true);
        events.set_network_options(network);
        let (tx, incoming) = mpsc::channel(capacity.max(16));
        let (up_tx, connected) = watch::channel(false);
        let (sub_tx, subscribed) = watch::channel(false);
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
                        if filters.is_empty() {
                            sub_tx.send_replace(true);
                        } else if let Err(e) = sub_client.subscribe_many(subs).await {
                            warn!(role = %role, error = %e, "subscribe failed");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            warn!(role = %role, codes = ?ack.return_codes, "broker refused a subscription");
                        } else {
                            sub_tx.send_replace(true);
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
                        sub_tx.send_replace(false);
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
            sub_tx.send_replace(false);
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
        RoleSession { client, incoming, connected, subscribed, task }
    }

    /// Sets `ready` once the broker has confirmed this session's subscriptions (waits on a task
    /// of its own; nothing is said if the session ends first). A role calls it when its own
    /// state is loaded.
    pub fn ready_when_subscribed(&self, mut ready: Ready) {
        let mut subscribed = self.subscribed.clone();
        tokio::spawn(async move {
            if subscribed.wait_for(|s| *s).await.is_ok() {
                ready.set();
            }
        });
    }

    /// Waits for the session task to end (after shutdown).
    pub async fn stopped(self) {
        self.task.await.ok();
    }
}

/// The two outboxes the relay drains: events (`jd/v1/events/{kind}`) and phone messages
/// (`jd/v1/dev/{device}/inbox/{kind}`). A PUBACK marks the row in the table it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbox {
    Events,
    Phones,
}

/// One outbox row on its way to the broker.
struct Relayed {
    outbox: Outbox,
    seq: i64,
    topic: String,
    payload: Vec<u8>,
}

/// The oldest unpublished rows of both outboxes, each in `seq` order (so a device's messages go
/// out in the order they were committed).
async fn unpublished(store: &Store, limit: i64) -> Result<Vec<Relayed>, jiandu_store::StoreError> {
    let events = store.unpublished_events(limit).await?;
    let phones = store.claim_phone_messages(limit).await?;
    let events = events.into_iter().map(|e| Relayed {
        outbox: Outbox::Events,
        seq: e.seq,
        topic: e.topic(),
        payload: e.payload(),
    });
    let phones = phones.into_iter().map(|m| Relayed {
        outbox: Outbox::Phones,
        seq: m.seq,
        topic: m.topic(),
        payload: m.body.into_bytes(),
    });
    Ok(events.chain(phones).collect())
}

/// Marks what the broker acknowledged; on failure the rows are sent again (at least once).
async fn mark_published(store: &Store, acked: &mut Vec<(Outbox, i64)>) {
    if acked.is_empty() {
        return;
    }
    let pick = |which: Outbox| acked.iter().filter(|(o, _)| *o == which).map(|(_, s)| *s).collect::<Vec<_>>();
    if let Err(e) = store.mark_events_published(&pick(Outbox::Events)).await {
        warn!(error = %e, "marking events published failed; they will be sent again");
    }
    if let Err(e) = store.mark_phone_messages_published(&pick(Outbox::Phones)).await {
        warn!(error = %e, "marking phone messages published failed; they will be sent again");
    }
    acked.clear();
}

/// Publishes both outboxes at QoS 1 — events (see `store::events`) on `jd/v1/events/{kind}`,
/// phone messages (see `store::phones`) on `jd/v1/dev/{device}/inbox/{kind}` — marking each row
/// published only after the broker's PUBACK: at-least-once, in order, surviving broker restarts
/// and crashes of this process. Idle, it polls every 50 ms (rows written by other processes)
/// and wakes at once when this process commits an outbox row ([`Store::outbox_written`]). Now
/// and then it prunes phone messages published long ago.
pub async fn run_outbox_relay(store: Store, endpoint: BrokerEndpoint, shutdown: CancellationToken) {
    const BATCH: i64 = 256;
    const PRUNE_EVERY: Duration = Duration::from_secs(60);
    let mut backoff = Duration::from_millis(100);
    let mut last_prune: Option<tokio::time::Instant> = None;
    'connection: loop {
        let (client, mut events) = AsyncClient::new(endpoint.options("outbox"), BATCH as usize * 4);
        let mut network = events.network_options();
        network.set_tcp_nodelay(true);
        events.set_network_options(network);
        let mut connected = false;
        let mut awaiting_pkid: VecDeque<(Outbox, i64)> = VecDeque::new();
        let mut in_flight: HashMap<u16, (Outbox, i64)> = HashMap::new();
        let mut acked: Vec<(Outbox, i64)> = Vec::new();
        loop {
            let idle = connected && awaiting_pkid.is_empty() && in_flight.is_empty();
            if idle {
                mark_published(&store, &mut acked).await;
                if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(tokio::time::Instant::now());
                    let before = jiandu_store::now_ms() - jiandu_store::PHONE_MESSAGE_RETENTION_MS;
                    match store.prune_phone_messages(before).await {
                        Ok(0) => {}
                        Ok(n) => debug!(pruned = n, "old phone messages pruned"),
                        Err(e) => warn!(error = %e, "pruning the phone outbox failed"),
                    }
                }
                match unpublished(&store, BATCH).await {
                    Ok(batch) if !batch.is_empty() => {
                        for r in batch {
                            if client.publish(r.topic, QoS::AtLeastOnce, false, r.payload).await.is_err() {
                                continue 'connection;
                            }
                            awaiting_pkid.push_back((r.outbox, r.seq));
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "reading the outbox failed"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    mark_published(&store, &mut acked).await;
                    client.disconnect().await.ok();
                    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(50)), if idle => {}
                _ = store.outbox_written().notified(), if idle => {}
                polled = events.poll() => match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff = Duration::from_millis(100);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                        if let Some(row) = awaiting_pkid.pop_front() {
                            in_flight.insert(pkid, row);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(row) = in_flight.remove(&ack.pkid) {
                            acked.push(row);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        mark_published(&store, &mut acked).await;
                        warn!(error = %e, "outbox relay lost the broker; reconnecting");
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

/// The one way a role sends something to a phone directly (`jd/v1/dev/{dev}/inbox/{kind}`, QoS 1,
/// not retained), so the topic, the QoS and the logging of a failure are decided once.
///
/// Each inbox kind has one path (DESIGN §3):
/// - through the phone outbox (`store::phones`, published by [`run_outbox_relay`]), written in
///   the same transaction as the change: `assignment` (offers) and `notice` when it withdraws,
///   cancels or expires an assignment. These must not be lost, and nothing makes a phone ask
///   for them again.
/// - direct, here: `ack`, `lookup` and `receipt` answer a message the phone repeats (or an
///   upload it resumes) when no answer comes, so a lost send is retried by the phone itself;
///   `error` says why a message was refused, when nothing was committed.
///
/// The phone's persistent session (clean session off) keeps QoS 1 messages while it is away.
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
