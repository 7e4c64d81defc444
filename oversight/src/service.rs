//! The look-up role: answers phones' registry look-ups over MQTT.
//!
//! It subscribes to [`SHARED_LOOKUPS`] (so several instances can share the load), answers each
//! `jd/v1/dev/{dev}/lookup` on `jd/v1/dev/{dev}/inbox/lookup` from the in-memory
//! [`RegistryIndex`], and queues the audit row for the [`AuditWriter`]. A malformed request gets
//! `inbox/error` naming the field; a phone over its rate limit gets a reply with `error` set,
//! never silence. The index is rebuilt in the background when a new import version lands.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiandu_broker::BrokerEndpoint;
use jiandu_broker::client::{PhoneInbox, Ready, RoleSession};
use jiandu_schemas::topic::{InboxKind, SHARED_LOOKUPS};
use jiandu_schemas::{ErrorNotice, LookupReply, LookupRequest, Topic, parse_lookup};
use jiandu_store::{NewLookupAudit, RevokedDevices, Store, now_ms};
use rumqttc::{AsyncClient, Publish};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::audit::{AuditSender, AuditWriter};
use crate::index::RegistryIndex;
use crate::ratelimit::RateLimit;
use crate::{LookupConfig, OversightError};

/// Name the role's MQTT client and ledger entries carry.
const ROLE: &str = "oversight";

/// Runs the look-up role until `shutdown`, then writes the audit rows still queued. `ready` is
/// set once the index is loaded and the broker confirmed the subscription.
pub async fn run(
    store: Store,
    endpoint: BrokerEndpoint,
    config: LookupConfig,
    ready: Ready,
    shutdown: CancellationToken,
) -> Result<(), OversightError> {
    let mut index = Arc::new(RegistryIndex::load(&store).await?);
    let (persons, vehicles, departments) = index.counts();
    info!(version = index.version(), persons, vehicles, departments, "look-up index loaded");
    let mut session =
        RoleSession::start(&endpoint, ROLE, vec![SHARED_LOOKUPS.to_owned()], false, 4096, shutdown.clone());
    let writer = AuditWriter::start(store.clone(), ROLE.to_owned(), config.audit_batch);
    let mut responder = Responder {
        client: session.client.clone(),
        audit: writer.sender(),
        limit: RateLimit::new(config.rate_per_minute, config.burst),
        actors: HashMap::new(),
        store: store.clone(),
        revoked: RevokedDevices::default(),
    };
    let mut refresh = tokio::time::interval(config.refresh.max(Duration::from_millis(10)));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reloading: Option<oneshot::Receiver<Result<RegistryIndex, OversightError>>> = None;
    session.ready_when_subscribed(ready);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            p = session.incoming.recv() => match p {
                Some(p) => responder.handle(&index, p).await,
                None => break,
            },
            _ = refresh.tick(), if reloading.is_none() => {
                match store.registry_version().await {
                    Ok(v) if v != index.version() => {
                        let (tx, rx) = oneshot::channel();
                        let store = store.clone();
                        tokio::spawn(async move { tx.send(RegistryIndex::load(&store).await).ok() });
                        reloading = Some(rx);
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "checking the registry version failed"),
                }
            }
            loaded = async { reloading.as_mut().expect("guarded").await }, if reloading.is_some() => {
                reloading = None;
                match loaded {
                    Ok(Ok(new)) => {
                        let (persons, vehicles, departments) = new.counts();
                        info!(version = new.version(), persons, vehicles, departments, "look-up index reloaded");
                        index = Arc::new(new);
                    }
                    Ok(Err(e)) => warn!(error = %e, "reloading the look-up index failed; keeping the old one"),
                    Err(_) => warn!("look-up index reload task ended without a result"),
                }
            }
        }
    }
    drop(responder);
    writer.close().await;
    session.stopped().await;
    info!("look-up role stopped");
    Ok(())
}

/// Answers one request at a time; owns the rate limiter and the device → inspector cache.
struct Responder {
    client: AsyncClient,
    audit: AuditSender,
    limit: RateLimit,
    actors: HashMap<String, String>,
    store: Store,
    /// Revoked devices: their look-ups still queued at the broker are neither answered nor run.
    revoked: RevokedDevices,
}

impl Responder {
    async fn handle(&mut self, index: &RegistryIndex, p: Publish) {
        let device = match Topic::parse(&p.topic) {
            Ok(Topic::Lookup { device }) => device,
            _ => {
                debug!(topic = %p.topic, "not a look-up topic");
                return;
            }
        };
        let req = match parse_lookup(&p.payload) {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("jiandu_lookups_total", "outcome" => "invalid").increment(1);
                let notice = ErrorNotice { topic: p.topic.clone(), error: e.to_string() };
                self.publish(&device, InboxKind::Error, &notice).await;
                return;
            }
        };
        let actor = self.actor(&device).await;
        if self.revoked.is_revoked(&self.store, &device).await {
            // Queued before the phone was cut off: not run, not answered, but audited.
            metrics::counter!("jiandu_lookups_total", "outcome" => "revoked").increment(1);
            info!(device = %device, "look-up of a revoked device refused");
            self.audit.record(audit_row(&req, &device, actor, "revoked", None, 0)).await;
            return;
        }
        let (reply, row) = match self.limit.check(&device, Instant::now()) {
            Err(wait) => {
                let error = format!(
                    "rate limit: too many look-ups from this device; retry in {:.1} s",
                    wait.as_secs_f64().max(0.1)
                );
                let reply = LookupReply {
                    corr: req.corr.clone(),
                    found: false,
                    result: None,
                    candidates: None,
                    error: Some(error),
                };
                (reply, audit_row(&req, &device, actor, "rate_limited", None, 0))
            }
            Ok(()) => {
                let answer = index.lookup(req.kind, &req.q);
                let outcome = answer.outcome();
                let result_key = answer.found.as_ref().map(|h| h.key());
                let reply = LookupReply {
                    corr: req.corr.clone(),
                    found: answer.found.is_some(),
                    result: answer.found.as_ref().map(|h| h.phone_view()),
                    candidates: (!answer.candidates.is_empty())
                        .then(|| answer.candidates.iter().map(|h| h.phone_view()).collect()),
                    error: None,
                };
                let n = answer.candidates.len() as i64;
                (reply, audit_row(&req, &device, actor, outcome, result_key, n))
            }
        };
        metrics::counter!("jiandu_lookups_total", "outcome" => row.outcome.clone()).increment(1);
        self.publish(&device, InboxKind::Lookup, &reply).await;
        self.audit.record(row).await;
    }

    async fn publish(&self, device: &str, kind: InboxKind, body: &impl serde::Serialize) {
        PhoneInbox::new(self.client.clone()).send(device, kind, body).await;
    }

    /// Who carries the device: its staff id when registered with one, else the device id.
    async fn actor(&mut self, device: &str) -> String {
        if let Some(a) = self.actors.get(device) {
            return a.clone();
        }
        let actor = match self.store.device(device).await {
            Ok(Some(d)) => d.staff_id.unwrap_or_else(|| device.to_owned()),
            Ok(None) => device.to_owned(),
            Err(e) => {
                warn!(device, error = %e, "reading the device failed; auditing under its id");
                return device.to_owned();
            }
        };
        if self.actors.len() > 100_000 {
            self.actors.clear();
        }
        self.actors.insert(device.to_owned(), actor.clone());
        actor
    }
}

fn audit_row(
    req: &LookupRequest,
    device: &str,
    actor: String,
    outcome: &str,
    result: Option<String>,
    candidates: i64,
) -> NewLookupAudit {
    NewLookupAudit {
        ts: now_ms(),
        channel: "mqtt".into(),
        actor,
        device: Some(device.to_owned()),
        lat_e6: req.lat.map(|v| (v * 1e6).round() as i64),
        lon_e6: req.lon.map(|v| (v * 1e6).round() as i64),
        kind: req.kind.as_str().into(),
        q: req.q.clone(),
        at: None,
        outcome: outcome.into(),
        result,
        candidates,
    }
}
