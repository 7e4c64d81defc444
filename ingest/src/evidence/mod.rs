//! Evidence ingest: photos and videos from phones, assembled from chunks into write-once storage
//! with a signed receipt (DESIGN §3, §4).
//!
//! A phone publishes `ev/{evid}/meta`, then the chunks `ev/{evid}/c/{n}` at QoS 1 in any order;
//! this role holds the shared subscription `$share/ingest/jd/v1/dev/+/ev/#` with manual acks.
//! Each chunk is written at its offset into one staging file per upload (so a blob is never held
//! in memory; directly, past the page cache, where the filesystem allows it), in-order chunks are
//! hashed as they are written, and a batch of chunks is synced to disk and recorded in the database
//! (`evidence_chunks`) before its messages are acknowledged: whatever was acked survives
//! `kill -9`, and a phone that re-sends `meta` gets `receipt {status:"partial", missing:[…]}`.
//! A chunk already received is never written again, so duplicates are harmless.
//!
//! When the last chunk is in, the file is hashed (in-order chunks are hashed as they arrive, so
//! only the out-of-order tail is read back), checked against the announced size and SHA-256,
//! made read-only and committed to the object store under its content address without
//! overwriting (see `jiandu_store::Blobs`). One transaction then appends the `evidence.stored`
//! ledger entry, the evidence row with its Ed25519-signed receipt and the `jd/v1/events/evidence`
//! event; the phone gets `receipt {status:"stored",…}`. Anything refused (a bad `meta`, a chunk
//! of the wrong size or index, a limit, a full disk, bytes that do not match) gets
//! `receipt {status:"rejected", error}` naming the field or check, and the upload is discarded
//! whole: nothing half-stored remains.

mod assembly;

use std::path::PathBuf;
use std::time::Duration;

use jiandu_broker::BrokerEndpoint;
use jiandu_broker::client::{Ready, RoleSession};
use jiandu_schemas::topic::{self, Topic};
use jiandu_store::{PlatformKey, Store};
use rumqttc::QoS;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::IngestError;
use assembly::Assembly;

/// Largest number of chunks one item may have (keeps the per-upload chunk map small).
pub const MAX_CHUNKS: u32 = 1 << 20;
/// Most chunk indices listed in one `partial` receipt (the lowest ones); the phone re-sends
/// `meta` after sending those to learn the rest.
pub const MAX_MISSING_LISTED: usize = 4096;
/// Most messages handled (and chunks synced) per batch before their acks go out.
const BATCH: usize = 128;

/// Settings of evidence ingest (`[evidence]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Largest item accepted, bytes (default 2 GiB).
    pub max_item_bytes: u64,
    /// Most uploads one device may have open at once.
    pub max_open_per_device: usize,
    /// Most bytes all open uploads may announce together (the staging area's quota).
    pub staging_quota_bytes: u64,
    /// Most bytes the open uploads of one device may announce together, so one phone cannot
    /// fill the staging area for all (0: no per-device limit).
    pub device_staging_bytes: u64,
    /// Most bytes one device may upload in any 24 hours, stored and open together (0: no limit).
    pub device_daily_bytes: u64,
    /// Where staged chunks live: `local` (a file per upload in `staging_dir`; one ingest
    /// process) or `database` (chunk bytes in the database, so any number of ingest processes
    /// can take any chunk of an upload; DESIGN §4).
    pub staging: Staging,
    /// Where uploads are assembled [default: `staging/` under a `file://` object store, so a
    /// finished file is hard-linked into place; `{data_dir}/staging` for S3].
    pub staging_dir: Option<PathBuf>,
    /// An upload untouched for this long is discarded (hours).
    pub idle_upload_hours: u64,
    /// How often the ledger head is signed and published retained on
    /// `jd/v1/platform/checkpoint` when it moved (seconds; 0: never). This role holds the
    /// platform key, so it signs the checkpoints too.
    pub checkpoint_interval_s: u64,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        EvidenceConfig {
            max_item_bytes: 2 * 1024 * 1024 * 1024,
            max_open_per_device: 8,
            staging_quota_bytes: 32 * 1024 * 1024 * 1024,
            device_staging_bytes: 4 * 1024 * 1024 * 1024,
            device_daily_bytes: 16 * 1024 * 1024 * 1024,
            staging: Staging::Local,
            staging_dir: None,
            idle_upload_hours: 72,
            checkpoint_interval_s: 300,
        }
    }
}

/// Where an ingest process keeps the chunks of open uploads (`[evidence] staging`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Staging {
    /// One file per upload in `staging_dir`, written at each chunk's offset: fastest, but only
    /// for a single ingest process.
    #[default]
    Local,
    /// Chunk bytes in the database (`evidence_chunks.bytes`): shared by every ingest process.
    Database,
}

/// Signs the ledger head and publishes it retained on `jd/v1/platform/checkpoint`.
struct Checkpoints {
    store: Store,
    key: PlatformKey,
    client: rumqttc::AsyncClient,
}

impl Checkpoints {
    /// Publishes a checkpoint unless the head is still at `last` (the seq published before);
    /// returns the seq published, or `None` when nothing went out.
    async fn publish(&self, last: Option<i64>) -> Option<i64> {
        let cp = match self.store.ledger_checkpoint(&self.key).await {
            Ok(cp) => cp,
            Err(e) => {
                warn!(error = %e, "reading the ledger head for a checkpoint failed");
                return None;
            }
        };
        if last == Some(cp.seq) {
            return None;
        }
        let topic = Topic::PlatformCheckpoint.to_string();
        let body = serde_json::to_vec(&cp).unwrap_or_default();
        match self.client.publish(topic, QoS::AtLeastOnce, true, body).await {
            Ok(()) => {
                info!(seq = cp.seq, hash = %cp.hash, "ledger checkpoint published");
                Some(cp.seq)
            }
            Err(e) => {
                warn!(error = %e, "publishing the ledger checkpoint failed");
                None
            }
        }
    }
}

/// Runs evidence ingest until `shutdown`. `store` must have the object store attached
/// ([`Store::with_blobs`]); `key` signs the receipts and is published (retained) on
/// `jd/v1/platform/key`. `ready` is set once open uploads are resumed and the broker confirmed
/// the subscription.
pub async fn run(
    store: Store,
    broker: BrokerEndpoint,
    config: EvidenceConfig,
    key: PlatformKey,
    ready: Ready,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let blobs = store.blobs()?.clone();
    let staging = match (&config.staging_dir, blobs.local_root()) {
        (Some(dir), _) => dir.clone(),
        (None, Some(root)) => root.join("staging"),
        (None, None) => {
            return Err(IngestError::Config(
                "evidence.staging_dir must be set when the object store is not file://".into(),
            ));
        }
    };
    std::fs::create_dir_all(&staging).map_err(|e| IngestError::Staging { path: staging.clone(), source: e })?;
    let public = store.platform_key_register(&key).await?;
    let public_json = serde_json::to_vec(&public).unwrap_or_default();

    // The session outlives the loop so the last acks and receipts still go out.
    let session_stop = CancellationToken::new();
    let mut session =
        RoleSession::start(&broker, "evidence", vec![topic::SHARED_EVIDENCE.into()], true, 64, session_stop.clone());
    let checkpoints = Checkpoints { store: store.clone(), key: key.clone(), client: session.client.clone() };
    let every = Duration::from_secs(config.checkpoint_interval_s.max(1));
    let mut checkpoint_tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut published: Option<i64> = None;
    let checkpointing = config.checkpoint_interval_s > 0;
    let mut assembly = Assembly::start(store, blobs, key, config, staging, session.client.clone()).await?;
    let mut incoming = std::mem::replace(&mut session.incoming, tokio::sync::mpsc::channel(1).1);
    let mut connected = session.connected.clone();
    let mut expiry = tokio::time::interval(Duration::from_secs(600));
    info!(key_id = %public.key_id, "evidence ingest running");
    session.ready_when_subscribed(ready);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            done = assembly.finished() => assembly.on_finished(done),
            changed = connected.changed() => {
                if changed.is_err() {
                    break;
                }
                if *connected.borrow_and_update() {
                    // Retained messages live in the broker's memory only: publish on every connect.
                    let topic = Topic::PlatformKey.to_string();
                    if let Err(e) = session.client.publish(topic, QoS::AtLeastOnce, true, public_json.clone()).await {
                        warn!(error = %e, "publishing the platform key failed");
                    }
                    if checkpointing {
                        published = checkpoints.publish(None).await;
                    }
                }
            }
            _ = checkpoint_tick.tick(), if checkpointing => published = checkpoints.publish(published).await.or(published),
            p = incoming.recv() => {
                let Some(p) = p else { break };
                let mut batch = vec![p];
                while batch.len() < BATCH {
                    match incoming.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                assembly.handle(batch).await;
            }
            _ = expiry.tick() => assembly.expire_idle().await,
        }
    }
    assembly.shutdown().await;
    session_stop.cancel();
    session.stopped().await;
    info!("evidence ingest stopped");
    Ok(())
}
