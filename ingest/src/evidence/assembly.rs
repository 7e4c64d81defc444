//! The uploads one ingest process is assembling: staging files, which chunks are in, the
//! running hash, and the hand-over of a complete file to storage (see the parent module).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jiandu_broker::client::PhoneInbox;
use jiandu_schemas::topic::{InboxKind, Topic};
use jiandu_schemas::{EvidenceMeta, Receipt, check_chunk, parse_evidence_meta};
use jiandu_store::{
    Blobs, Committed, Evidence, OpenUpload, PlatformKey, Store, StoreError, UploadSpec, UploadState, now_ms,
};
use rumqttc::{AsyncClient, Publish};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{EvidenceConfig, MAX_CHUNKS, MAX_MISSING_LISTED, Staging};

/// The window of `device_daily_bytes`.
const DAY_MS: i64 = 24 * 3600 * 1000;
use crate::IngestError;

/// Which chunks of an upload are staged, one bit each.
struct ChunkSet {
    bits: Vec<u64>,
    len: u32,
    count: u32,
}

impl ChunkSet {
    fn new(chunks: u32) -> ChunkSet {
        ChunkSet { bits: vec![0; (chunks as usize).div_ceil(64)], len: chunks, count: 0 }
    }
    fn contains(&self, n: u32) -> bool {
        self.bits.get(n as usize / 64).is_some_and(|w| w & (1 << (n % 64)) != 0)
    }
    fn insert(&mut self, n: u32) {
        if n < self.len
            && let Some(w) = self.bits.get_mut(n as usize / 64)
            && *w & (1 << (n % 64)) == 0
        {
            *w |= 1 << (n % 64);
            self.count += 1;
        }
    }
    fn remove(&mut self, n: u32) {
        if let Some(w) = self.bits.get_mut(n as usize / 64)
            && *w & (1 << (n % 64)) != 0
        {
            *w &= !(1 << (n % 64));
            self.count -= 1;
        }
    }
}

/// One upload being assembled.
struct Upload {
    record: OpenUpload,
    meta: EvidenceMeta,
    /// The staging file (local staging); `None` when the chunks are in the database.
    file: Option<Arc<File>>,
    /// The staging file, or (shared staging) where this process assembles the upload.
    path: PathBuf,
    received: ChunkSet,
    /// SHA-256 state over chunks `0..hashed`, fed as in-order chunks are staged.
    hash: RunningHash,
    hashed: u32,
    finalizing: bool,
    touched: i64,
}

impl Upload {
    fn missing(&self) -> Vec<u32> {
        (0..self.meta.chunks).filter(|n| !self.received.contains(*n)).take(MAX_MISSING_LISTED).collect()
    }
    fn complete(&self) -> bool {
        self.received.count == self.meta.chunks
    }
}

/// How a hand-over to storage ended.
pub(super) enum Outcome {
    Stored(Box<Evidence>),
    Rejected(String),
    Failed(String),
}

/// A finished hand-over, reported back to the assembly loop.
pub(super) struct Finished {
    evid: String,
    outcome: Outcome,
}

/// Everything needed to hand a complete upload over to storage, off the assembly loop.
struct Handover {
    store: Store,
    blobs: Blobs,
    key: PlatformKey,
    client: AsyncClient,
    record: OpenUpload,
    path: PathBuf,
    /// The hash of the in-order chunks (`hashed_bytes` of them).
    hash: RunningHash,
    hashed_bytes: u64,
    /// The chunks are in the database: assemble them into `path` first.
    shared: bool,
}

/// SHA-256 state of one upload, fed by the staging writes of its in-order chunks (one batch is
/// staged at a time, its writes in arrival order).
type RunningHash = Arc<std::sync::Mutex<Sha256>>;

fn spec_of(m: &EvidenceMeta) -> UploadSpec {
    UploadSpec {
        sha256: m.sha256.clone(),
        size: m.size as i64,
        mime: m.mime.clone(),
        captured_at: m.captured_at,
        lat: m.lat,
        lon: m.lon,
        report_id: m.report_id.clone(),
        chunk_size: i64::from(m.chunk_size),
        chunks: i64::from(m.chunks),
    }
}

fn meta_of(s: &UploadSpec) -> EvidenceMeta {
    EvidenceMeta {
        sha256: s.sha256.clone(),
        size: s.size.max(0) as u64,
        mime: s.mime.clone(),
        captured_at: s.captured_at,
        lat: s.lat,
        lon: s.lon,
        report_id: s.report_id.clone(),
        chunk_size: u32::try_from(s.chunk_size).unwrap_or(0),
        chunks: u32::try_from(s.chunks).unwrap_or(0),
    }
}

/// The first field in which a re-sent `meta` differs from the open upload's, if any.
fn differing_field(a: &EvidenceMeta, b: &EvidenceMeta) -> Option<&'static str> {
    [
        ("sha256", a.sha256 != b.sha256),
        ("size", a.size != b.size),
        ("chunk_size", a.chunk_size != b.chunk_size),
        ("chunks", a.chunks != b.chunks),
        ("mime", a.mime != b.mime),
        ("captured_at", a.captured_at != b.captured_at),
        ("report_id", a.report_id != b.report_id),
        ("lat", a.lat != b.lat),
        ("lon", a.lon != b.lon),
    ]
    .into_iter()
    .find_map(|(field, differs)| differs.then_some(field))
}

/// A new chunk's bytes and where they go in its upload's staging file.
struct StagedWrite {
    evid: String,
    file: Arc<File>,
    offset: u64,
    bytes: Bytes,
    /// The upload's running hash when this is its next in-order chunk.
    hash: Option<RunningHash>,
}

/// Writes chunks into their staging files and syncs each file written to (blocking); returns the
/// uploads that failed, with the reason (their other chunks are not written). Two threads
/// share the work: this one copies each chunk into an aligned buffer and hashes it there while
/// it is in the CPU's cache ([`prepare`]), a second one writes the buffers ([`WRITE_AHEAD`] of
/// them ahead) and syncs, so the hashing overlaps the disk instead of adding to it.
fn write_and_sync(writes: Vec<StagedWrite>) -> Vec<(String, std::io::Error)> {
    let writes = &writes;
    let mut failed = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Option<Bounce>)>(WRITE_AHEAD);
        let writer = scope.spawn(move || {
            let mut failed: Vec<(String, std::io::Error)> = Vec::new();
            for (i, bounce) in rx {
                let w = &writes[i];
                if !failed.iter().any(|(evid, _)| *evid == w.evid)
                    && let Err(e) = write_prepared(w, bounce.as_ref())
                {
                    failed.push((w.evid.clone(), e));
                }
                if let Some(b) = bounce {
                    b.give_back();
                }
            }
            failed
        });
        for (i, w) in writes.iter().enumerate() {
            if tx.send((i, prepare(w))).is_err() {
                break;
            }
        }
        drop(tx);
        writer.join().unwrap_or_else(|_| {
            let broken = || std::io::Error::other("the staging writer thread panicked");
            writes.iter().map(|w| (w.evid.clone(), broken())).collect()
        })
    });
    let mut synced: Vec<&str> = Vec::new();
    for w in writes {
        if synced.contains(&w.evid.as_str()) || failed.iter().any(|(e, _)| *e == w.evid) {
            continue;
        }
        synced.push(&w.evid);
        if let Err(e) = w.file.sync_data() {
            failed.push((w.evid.clone(), e));
        }
    }
    failed
}

/// Words for an I/O failure on the staging disk, for the phone.
fn storage_error(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull {
        "storage: the platform's staging disk is full; nothing of this upload was kept, send it again later".into()
    } else {
        format!("storage: the platform could not stage the upload ({e}); nothing of it was kept, send it again")
    }
}

/// Alignment of direct staging writes (offset, length and buffer address).
const DIRECT_ALIGN: usize = 4096;

/// Opens an upload's staging file for writing (read-only when an interrupted hand-over already
/// made it so). Uploads whose chunk size is a multiple of [`DIRECT_ALIGN`] bypass the page
/// cache (`O_DIRECT`) where the filesystem allows it: staged evidence is written once and read
/// back at most for an out-of-order tail, so caching it only evicts the database's pages, and
/// copying every byte into fresh page-cache memory cost more than hashing it.
fn open_staging(path: &Path, chunk_size: u32, create: bool) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    if create {
        options.create(true).truncate(true);
    }
    let opened = if (chunk_size as usize).is_multiple_of(DIRECT_ALIGN) {
        let mut direct = options.clone();
        direct.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
        match direct.open(path) {
            // The filesystem has no direct I/O (tmpfs, some FUSE): buffered.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => options.open(path),
            other => other,
        }
    } else {
        options.open(path)
    };
    if create { opened } else { opened.or_else(|_| File::open(path)) }
}

/// Cuts the zero padding of a last chunk written directly off a complete staging file of `size`
/// announced bytes; returns the file's length.
fn cut_padding(path: &Path, size: u64) -> std::io::Result<u64> {
    let len = std::fs::metadata(path)?.len();
    if len > size && len == size.next_multiple_of(DIRECT_ALIGN as u64) {
        std::fs::OpenOptions::new().write(true).open(path)?.set_len(size)?;
        return Ok(size);
    }
    Ok(len)
}

/// Chunks copied and hashed ahead of the one being written (each holds an aligned buffer).
const WRITE_AHEAD: usize = 2;

/// Aligned buffers of direct writes, reused from batch to batch (a fresh 256 KiB buffer is a
/// fresh mapping whose pages fault in one by one).
static BOUNCE_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// An aligned, zero-padded copy of a chunk for a direct write.
struct Bounce {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Bounce {
    /// The aligned bytes to write (the chunk and its padding).
    fn aligned(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Returns the buffer to the pool (which keeps as many as can be in flight).
    fn give_back(self) {
        let mut pool = BOUNCE_POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < WRITE_AHEAD + 2 {
            pool.push(self.buf);
        }
    }
}

/// Whether a staging file was opened with `O_DIRECT` (and still is).
fn is_direct(file: &File) -> bool {
    rustix::fs::fcntl_getfl(file).is_ok_and(|f| f.contains(rustix::fs::OFlags::DIRECT))
}

/// Readies one chunk for its write and feeds it to its upload's hash if it is the next in order.
/// A file opened with `O_DIRECT` takes the bytes from an aligned buffer, the last chunk
/// zero-padded to [`DIRECT_ALIGN`] (cut off again at the hand-over), and the hash reads that
/// copy while it is still in the CPU's cache: SHA-256 of bytes just copied runs at about
/// 1,650 MiB/s on the 2-core machine, of bytes from memory at 1,100, and hashing the chunks on a
/// thread of their own cost a third of the server's CPU per MiB uploaded.
fn prepare(w: &StagedWrite) -> Option<Bounce> {
    let feed = |b: &[u8]| {
        if let Some(h) = &w.hash {
            h.lock().unwrap_or_else(|e| e.into_inner()).update(b);
        }
    };
    if !is_direct(&w.file) {
        feed(&w.bytes);
        return None;
    }
    let len = w.bytes.len().next_multiple_of(DIRECT_ALIGN);
    let mut buf = BOUNCE_POOL.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
    if buf.len() < len + DIRECT_ALIGN {
        buf.resize(len + DIRECT_ALIGN, 0);
    }
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let aligned = &mut buf[start..start + len];
    aligned[..w.bytes.len()].copy_from_slice(&w.bytes);
    aligned[w.bytes.len()..].fill(0);
    feed(&aligned[..w.bytes.len()]);
    Some(Bounce { buf, start, len })
}

/// Writes one prepared chunk at its offset: from its aligned copy when it has one; a filesystem
/// that took `O_DIRECT` but refuses the write gets the file switched to buffered writes.
fn write_prepared(w: &StagedWrite, bounce: Option<&Bounce>) -> std::io::Result<()> {
    let Some(bounce) = bounce else {
        return w.file.write_all_at(&w.bytes, w.offset);
    };
    match w.file.write_all_at(bounce.aligned(), w.offset) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            let flags = rustix::fs::fcntl_getfl(&*w.file)?;
            rustix::fs::fcntl_setfl(&*w.file, flags - rustix::fs::OFlags::DIRECT)?;
            warn!("the staging filesystem refused a direct write; writing through the page cache");
            w.file.write_all_at(&w.bytes, w.offset)
        }
        other => other,
    }
}

/// What `evidence_uploads.staging` says for an upload whose chunks are in the database.
const SHARED: &str = "database";
/// Chunks read from the database at a time while assembling.
const ASSEMBLY_PAGE: i64 = 16;
/// Shared staging: how long a chunk whose upload is not open yet waits for another process to
/// open it (its `meta` went to that process a moment before).
const EARLY_CHUNK_WAIT: Duration = Duration::from_millis(500);
/// How long an upload that did not open in time is remembered, so its other chunks do not
/// wait again.
const UNOPENED_MEMORY: Duration = Duration::from_secs(10);

/// The state of one ingest process's uploads.
pub(super) struct Assembly {
    store: Store,
    blobs: Blobs,
    key: PlatformKey,
    config: EvidenceConfig,
    staging: PathBuf,
    client: AsyncClient,
    /// Chunks are staged in the database (`[evidence] staging = "database"`); the uploads held
    /// here are then only a cache of the database's state.
    shared: bool,
    uploads: HashMap<String, Upload>,
    /// Shared staging: uploads a chunk arrived for that no process had opened even after
    /// waiting [`EARLY_CHUNK_WAIT`], and when; their further chunks are dropped at once.
    unopened: HashMap<String, std::time::Instant>,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
    handovers: JoinSet<()>,
}

impl Assembly {
    /// Loads the open uploads from the database (after a restart or crash), removes staging
    /// files nobody owns, and resumes any upload that was complete when the process stopped.
    pub(super) async fn start(
        store: Store,
        blobs: Blobs,
        key: PlatformKey,
        config: EvidenceConfig,
        staging: PathBuf,
        client: AsyncClient,
    ) -> Result<Assembly, IngestError> {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut a = Assembly {
            shared: matches!(config.staging, Staging::Database),
            store,
            blobs,
            key,
            config,
            staging,
            client,
            uploads: HashMap::new(),
            unopened: HashMap::new(),
            done_tx,
            done_rx,
            handovers: JoinSet::new(),
        };
        for record in a.store.evidence_uploads().await? {
            if let UploadState::Open { upload, received } = a.store.evidence_upload_state(&record.evid).await? {
                a.adopt(upload, &received).await;
            }
        }
        a.sweep_staging();
        let complete: Vec<String> =
            a.uploads.iter().filter(|(_, u)| u.complete()).map(|(evid, _)| evid.clone()).collect();
        for evid in complete {
            a.hand_over(&evid);
        }
        info!(open = a.uploads.len(), staging = %a.staging.display(), "evidence uploads resumed");
        Ok(a)
    }

    /// Takes an open upload from the database into memory; one whose staging file is gone is
    /// discarded (its phone will be told what is missing when it re-sends `meta`).
    async fn adopt(&mut self, record: OpenUpload, received: &[i64]) {
        let (path, file) = if record.staging == SHARED {
            (self.assembly_path(&record.device, &record.evid), None)
        } else {
            let path = PathBuf::from(&record.staging);
            match open_staging(&path, u32::try_from(record.spec.chunk_size).unwrap_or(0), false) {
                Ok(f) => (path, Some(Arc::new(f))),
                Err(e) => {
                    warn!(evid = %record.evid, path = %path.display(), error = %e, "staging file lost; upload discarded");
                    self.store.evidence_upload_discard(&record.evid).await.ok();
                    return;
                }
            }
        };
        let meta = meta_of(&record.spec);
        let mut set = ChunkSet::new(meta.chunks);
        for n in received {
            set.insert(u32::try_from(*n).unwrap_or(u32::MAX));
        }
        let touched = record.touched_at;
        self.uploads.insert(
            record.evid.clone(),
            Upload {
                record,
                meta,
                file,
                path,
                received: set,
                hash: RunningHash::default(),
                hashed: 0,
                finalizing: false,
                touched,
            },
        );
    }

    /// Where this process assembles a database-staged upload (unique per process, so two
    /// processes sharing a directory never write the same file).
    fn assembly_path(&self, device: &str, evid: &str) -> PathBuf {
        self.staging.join(device).join(format!("{evid}.{}", std::process::id()))
    }

    /// Re-reads which chunks of a database-staged upload are in, from every ingest process.
    async fn refresh(&mut self, evid: &str) {
        match self.store.evidence_upload_state(evid).await {
            Ok(UploadState::Open { received, .. }) => {
                if let Some(up) = self.uploads.get_mut(evid) {
                    let mut set = ChunkSet::new(up.meta.chunks);
                    for n in received {
                        set.insert(u32::try_from(n).unwrap_or(u32::MAX));
                    }
                    up.received = set;
                    up.touched = now_ms();
                }
            }
            // Stored or discarded by another process: forget the cached copy.
            Ok(_) => {
                if self.uploads.get(evid).is_some_and(|u| !u.finalizing) {
                    self.uploads.remove(evid);
                }
            }
            Err(e) => warn!(evid, error = %e, "reading a shared upload's chunks failed"),
        }
    }

    /// Removes staging files that belong to no open upload (left by a crash mid-discard).
    fn sweep_staging(&self) {
        let owned: std::collections::HashSet<&Path> = self.uploads.values().map(|u| u.path.as_path()).collect();
        let Ok(devices) = std::fs::read_dir(&self.staging) else { return };
        for dir in devices.flatten() {
            let Ok(files) = std::fs::read_dir(dir.path()) else { continue };
            for f in files.flatten() {
                let p = f.path();
                if !owned.contains(p.as_path()) {
                    debug!(path = %p.display(), "removing orphaned staging file");
                    std::fs::remove_file(&p).ok();
                }
            }
        }
    }

    /// Waits for the next finished hand-over.
    pub(super) async fn finished(&mut self) -> Finished {
        match self.done_rx.recv().await {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }

    /// Applies a finished hand-over to the in-memory state.
    pub(super) fn on_finished(&mut self, done: Finished) {
        match done.outcome {
            Outcome::Stored(_) | Outcome::Rejected(_) => {
                self.uploads.remove(&done.evid);
            }
            Outcome::Failed(_) => {
                if let Some(u) = self.uploads.get_mut(&done.evid) {
                    u.finalizing = false;
                }
            }
        }
    }

    /// Handles a batch of messages: metadata at once, chunks written to their staging files;
    /// then the new chunks are synced and recorded, and only then acknowledged. Acks go out in
    /// the order the messages came (the broker refuses out-of-order acks), so a message that
    /// needs no staging waits for the chunks before it.
    pub(super) async fn handle(&mut self, batch: Vec<Publish>) {
        let mut pending: Vec<(Publish, Option<(String, u32)>)> = Vec::new();
        for p in batch {
            match Topic::parse(&p.topic) {
                Ok(Topic::EvidenceMeta { device, evid }) => {
                    self.flush(&mut pending).await;
                    self.on_meta(&device, &evid, &p.payload).await;
                    self.ack(&p).await;
                }
                Ok(Topic::EvidenceChunk { device, evid, n }) => {
                    let staged = self.on_chunk(&device, &evid, n, &p.payload).await;
                    pending.push((p, staged.then_some((evid, n))));
                }
                other => {
                    warn!(topic = %p.topic, parsed = ?other.map(|t| t.to_string()), "not an evidence topic; ignored");
                    pending.push((p, None));
                }
            }
        }
        self.flush(&mut pending).await;
    }

    async fn ack(&self, p: &Publish) {
        if let Err(e) = self.client.ack(p).await {
            warn!(error = %e, "acknowledging an evidence message failed");
        }
    }

    async fn send(&self, device: &str, receipt: &Receipt) {
        PhoneInbox::new(self.client.clone()).send(device, InboxKind::Receipt, receipt).await;
    }

    async fn reject(&self, device: &str, evid: &str, error: String) {
        metrics::counter!("jiandu_evidence_rejected_total").increment(1);
        info!(device, evid, error = %error, "evidence upload rejected");
        self.send(device, &Receipt::Rejected { evid: evid.to_owned(), error }).await;
    }

    /// Forgets an upload: memory, database and staging file.
    async fn discard(&mut self, evid: &str) {
        if let Some(u) = self.uploads.remove(evid)
            && u.file.is_some()
        {
            std::fs::remove_file(&u.path).ok();
        }
        if let Err(e) = self.store.evidence_upload_discard(evid).await {
            warn!(evid, error = %e, "forgetting an upload failed");
        }
    }

    async fn on_meta(&mut self, device: &str, evid: &str, payload: &[u8]) {
        let meta = match parse_evidence_meta(payload) {
            Ok(m) => m,
            Err(e) => return self.reject(device, evid, e.to_string()).await,
        };
        if meta.size > self.config.max_item_bytes {
            let error = format!(
                "meta.size: larger than the largest item accepted ({} bytes), got {}",
                self.config.max_item_bytes, meta.size
            );
            return self.reject(device, evid, error).await;
        }
        if meta.chunks > MAX_CHUNKS {
            let error = format!(
                "meta.chunks: at most {MAX_CHUNKS} chunks per item, got {}; use a larger chunk_size",
                meta.chunks
            );
            return self.reject(device, evid, error).await;
        }
        if self.shared && self.uploads.get(evid).is_some_and(|u| !u.finalizing) {
            // Another process may have staged chunks or stored it: ask the database.
            self.uploads.remove(evid);
        }
        if !self.uploads.contains_key(evid) {
            match self.store.evidence_upload_state(evid).await {
                Ok(UploadState::Stored(e)) if e.device == device => {
                    return self.send(device, &stored_receipt(&e)).await;
                }
                Ok(UploadState::Stored(_)) => {
                    return self.reject(device, evid, taken(evid)).await;
                }
                Ok(UploadState::Open { upload, received }) => self.adopt(upload, &received).await,
                Ok(UploadState::Unknown) => return self.open(device, evid, meta).await,
                Err(e) => {
                    // No receipt: the phone re-sends meta until it gets one.
                    return warn!(evid, error = %e, "looking up an upload failed");
                }
            }
        }
        let Some(up) = self.uploads.get(evid) else { return };
        if up.record.device != device {
            return self.reject(device, evid, taken(evid)).await;
        }
        if let Some(field) = differing_field(&up.meta, &meta) {
            self.discard(evid).await;
            let error = format!(
                "meta.{field}: differs from the open upload of {evid}; nothing of that upload was kept, send meta again to start over"
            );
            return self.reject(device, evid, error).await;
        }
        let missing = up.missing();
        let complete = up.complete() && !up.finalizing;
        self.send(device, &Receipt::Partial { evid: evid.to_owned(), missing }).await;
        if complete {
            self.hand_over(evid);
        }
    }

    /// Answers a `meta` from the database's state of the upload: `partial` for one this device
    /// has open (adopted here), its `stored` receipt, else `rejected` (another device's id).
    async fn answer_from_database(&mut self, device: &str, evid: &str) {
        match self.store.evidence_upload_state(evid).await {
            Ok(UploadState::Open { upload, received }) if upload.device == device => {
                self.adopt(upload, &received).await;
                if let Some(up) = self.uploads.get(evid) {
                    let missing = up.missing();
                    self.send(device, &Receipt::Partial { evid: evid.to_owned(), missing }).await;
                }
            }
            Ok(UploadState::Stored(e)) if e.device == device => self.send(device, &stored_receipt(&e)).await,
            Ok(UploadState::Unknown) => warn!(evid, "an upload vanished while being opened; the phone re-sends meta"),
            Ok(_) => self.reject(device, evid, taken(evid)).await,
            Err(e) => warn!(evid, error = %e, "looking up an upload failed"),
        }
    }

    /// Opens a new upload within the limits.
    async fn open(&mut self, device: &str, evid: &str, meta: EvidenceMeta) {
        let (open, mine, used) = if self.shared {
            match self.store.evidence_open_totals(device).await {
                Ok((n, mine, all)) => (n.max(0) as usize, mine.max(0).unsigned_abs(), all.max(0).unsigned_abs()),
                Err(e) => return warn!(evid, error = %e, "reading the open uploads' totals failed"),
            }
        } else {
            let mine = self.uploads.values().filter(|u| u.record.device == device);
            (
                mine.clone().count(),
                mine.map(|u| u.meta.size).sum::<u64>(),
                self.uploads.values().map(|u| u.meta.size).sum::<u64>(),
            )
        };
        if open >= self.config.max_open_per_device {
            let error = format!(
                "meta: this device has {open} uploads open, the most allowed; finish (or re-send meta for) one of those first"
            );
            return self.reject(device, evid, error).await;
        }
        let limit = self.config.device_staging_bytes;
        if limit > 0 && mine.saturating_add(meta.size) > limit {
            let error = format!(
                "meta.size: over this device's staging quota (evidence.device_staging_bytes = {limit}): its open uploads hold {mine} bytes; finish one first"
            );
            return self.reject(device, evid, error).await;
        }
        let limit = self.config.device_daily_bytes;
        if limit > 0 {
            let since = jiandu_store::now_ms() - DAY_MS;
            let stored = match self.store.evidence_bytes_since(device, since).await {
                Ok(n) => n.max(0).unsigned_abs(),
                Err(e) => return warn!(evid, error = %e, "reading the device's daily evidence bytes failed"),
            };
            let today = stored.saturating_add(mine);
            if today.saturating_add(meta.size) > limit {
                let error = format!(
                    "meta.size: over this device's daily quota (evidence.device_daily_bytes = {limit}): {today} bytes uploaded or open in the last 24 hours; send it later or ask the office to raise the quota"
                );
                return self.reject(device, evid, error).await;
            }
        }
        if used + meta.size > self.config.staging_quota_bytes {
            let error = format!(
                "meta.size: the platform's staging area is full ({used} of {} bytes held by open uploads); send it again later",
                self.config.staging_quota_bytes
            );
            return self.reject(device, evid, error).await;
        }
        let (path, file, staging) = if self.shared {
            (self.assembly_path(device, evid), None, SHARED.to_owned())
        } else {
            let dir = self.staging.join(device);
            let path = dir.join(evid);
            let file = std::fs::create_dir_all(&dir).and_then(|()| open_staging(&path, meta.chunk_size, true));
            match file {
                Ok(f) => {
                    let staging = path.to_string_lossy().into_owned();
                    (path, Some(Arc::new(f)), staging)
                }
                Err(e) => return self.reject(device, evid, storage_error(&e)).await,
            }
        };
        let record = match self.store.evidence_upload_open(evid, device, &spec_of(&meta), &staging).await {
            Ok(r) => r,
            Err(e) => {
                if file.is_some() {
                    std::fs::remove_file(&path).ok();
                }
                return match e {
                    // Shared staging: the phone's meta reached two processes at once (its first
                    // and its repeat), and the other one opened the upload first.
                    StoreError::Conflict { .. } if self.shared => self.answer_from_database(device, evid).await,
                    StoreError::Conflict { .. } => self.reject(device, evid, taken(evid)).await,
                    other => warn!(evid, error = %other, "opening an upload failed"),
                };
            }
        };
        debug!(device, evid, size = meta.size, chunks = meta.chunks, "upload opened");
        let up = Upload {
            touched: record.touched_at,
            record,
            received: ChunkSet::new(meta.chunks),
            meta,
            file,
            path,
            hash: RunningHash::default(),
            hashed: 0,
            finalizing: false,
        };
        let missing = up.missing();
        self.uploads.insert(evid.to_owned(), up);
        self.send(device, &Receipt::Partial { evid: evid.to_owned(), missing }).await;
    }

    /// Shared staging: takes an upload another ingest process opened from the database for a
    /// chunk of it. The shared group may hand `meta` to one process and the chunks right behind
    /// it to another, so a chunk can arrive before its upload is open anywhere: the database is
    /// asked again for up to [`EARLY_CHUNK_WAIT`] (once per upload; the batch waits, acks keep
    /// their order). False when the chunk must be dropped: no upload to put it in (nothing is
    /// answered, as the meta may only be late or lost with a killed process; the phone's next
    /// `meta` lists the chunk as missing) or the database failed.
    async fn adopt_shared(&mut self, device: &str, evid: &str, n: u32) -> bool {
        let started = std::time::Instant::now();
        self.unopened.retain(|_, at| at.elapsed() < UNOPENED_MEMORY);
        let mut pause = Duration::from_millis(10);
        loop {
            match self.store.evidence_upload_state(evid).await {
                Ok(UploadState::Open { upload, received }) => {
                    self.unopened.remove(evid);
                    self.adopt(upload, &received).await;
                    return true;
                }
                Ok(UploadState::Unknown)
                    if !self.unopened.contains_key(evid) && started.elapsed() < EARLY_CHUNK_WAIT =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Ok(UploadState::Unknown) => {
                    self.unopened.entry(evid.to_owned()).or_insert_with(std::time::Instant::now);
                    debug!(device, evid, chunk = n, "chunk of an upload no ingest process has opened; dropped");
                    return false;
                }
                // Stored (a late duplicate) or another device's: answered below.
                Ok(_) => return true,
                Err(e) => {
                    warn!(evid, error = %e, "looking up an upload failed");
                    return false;
                }
            }
        }
    }

    /// Takes a chunk in: true when it is new, and must then be written to its staging file (or
    /// the database), synced and recorded before it is acknowledged ([`Assembly::flush`]).
    async fn on_chunk(&mut self, device: &str, evid: &str, n: u32, bytes: &Bytes) -> bool {
        if self.shared && !self.uploads.contains_key(evid) && !self.adopt_shared(device, evid, n).await {
            return false;
        }
        let Some(up) = self.uploads.get_mut(evid) else {
            match self.store.evidence_upload_state(evid).await {
                // A late duplicate of a finished upload.
                Ok(UploadState::Stored(e)) if e.device == device => {}
                Ok(_) => {
                    let error = format!("chunk[{n}]: no upload of evidence {evid} is open; publish meta first");
                    self.reject(device, evid, error).await;
                }
                Err(e) => warn!(evid, error = %e, "looking up an upload failed"),
            }
            return false;
        };
        if up.record.device != device {
            self.reject(device, evid, taken(evid)).await;
            return false;
        }
        if let Err(e) = check_chunk(&up.meta, n, bytes.len()) {
            self.discard(evid).await;
            self.reject(device, evid, format!("{e}; nothing of this upload was kept")).await;
            return false;
        }
        if up.received.contains(n) {
            return false;
        }
        up.received.insert(n);
        up.touched = now_ms();
        true
    }

    /// Syncs the staging files of new chunks, records the chunks, acknowledges their messages,
    /// and hands complete uploads over to storage.
    async fn flush(&mut self, pending: &mut Vec<(Publish, Option<(String, u32)>)>) {
        if pending.is_empty() {
            return;
        }
        let messages = std::mem::take(pending);
        let batch: Vec<(&Publish, &String, u32)> =
            messages.iter().filter_map(|(p, s)| s.as_ref().map(|(evid, n)| (p, evid, *n))).collect();
        // Written and synced off the runtime: a worker blocked on the disk would stall the
        // broker sessions scheduled on it.
        // An upload's next in-order chunk is hashed as it is written (the writes go in this order).
        let mut writes: Vec<StagedWrite> = Vec::new();
        for &(p, evid, n) in &batch {
            if let Some(up) = self.uploads.get_mut(evid)
                && let Some(file) = &up.file
            {
                let offset = u64::from(n) * u64::from(up.meta.chunk_size);
                let hash = (n == up.hashed).then(|| up.hash.clone());
                up.hashed += u32::from(hash.is_some());
                let (file, bytes) = (file.clone(), p.payload.clone());
                writes.push(StagedWrite { evid: evid.clone(), file, offset, bytes, hash });
            }
        }
        let mut written: Vec<String> = writes.iter().map(|w| w.evid.clone()).collect();
        written.sort_unstable();
        written.dedup();
        let staging = tokio::task::spawn_blocking(move || write_and_sync(writes));
        let failed = match staging.await {
            Ok(failed) => failed,
            Err(e) => written.into_iter().map(|evid| (evid, std::io::Error::other(e.to_string()))).collect(),
        };
        for (evid, e) in failed {
            let device = self.uploads.get(&evid).map(|u| u.record.device.clone()).unwrap_or_default();
            self.discard(&evid).await;
            self.reject(&device, &evid, storage_error(&e)).await;
        }
        let rows: Vec<(String, i64)> = batch
            .iter()
            .filter(|(_, evid, _)| self.uploads.get(*evid).is_some_and(|u| u.file.is_some()))
            .map(|(_, evid, n)| ((*evid).clone(), i64::from(*n)))
            .collect();
        let shared: Vec<(String, i64, &[u8])> = batch
            .iter()
            .filter(|(_, evid, _)| self.uploads.get(*evid).is_some_and(|u| u.file.is_none()))
            .map(|(p, evid, n)| ((*evid).clone(), i64::from(*n), &p.payload[..]))
            .collect();
        let bytes: usize = batch.iter().map(|(p, _, _)| p.payload.len()).sum();
        let recorded = match self.store.evidence_chunks_staged(&rows).await {
            Ok(()) => self.store.evidence_chunks_put(&shared).await,
            Err(e) => Err(e),
        };
        let rows: Vec<(String, i64)> =
            rows.into_iter().chain(shared.iter().map(|(evid, n, _)| (evid.clone(), *n))).collect();
        if let Err(e) = recorded {
            // Not recorded, so not received: the phone learns they are missing from its next meta.
            warn!(chunks = rows.len(), error = %e, "recording staged chunks failed");
            for (evid, n) in &rows {
                if let Some(u) = self.uploads.get_mut(evid) {
                    u.received.remove(*n as u32);
                    u.hash = RunningHash::default();
                    u.hashed = 0;
                }
            }
        } else {
            metrics::counter!("jiandu_evidence_chunks_total").increment(rows.len() as u64);
            metrics::counter!("jiandu_evidence_chunk_bytes_total").increment(bytes as u64);
            // Which uploads this process took chunks of: with several ingest processes, the
            // chunks of one upload show up in more than one log (tests/scaleout.rs).
            let mut per_upload: Vec<(&str, usize)> = Vec::new();
            for (evid, _, _) in &shared {
                match per_upload.iter_mut().find(|(e, _)| *e == evid.as_str()) {
                    Some((_, k)) => *k += 1,
                    None => per_upload.push((evid.as_str(), 1)),
                }
            }
            for (evid, chunks) in per_upload {
                debug!(evid, chunks, "shared chunks staged in the database");
            }
        }
        let mut touched: Vec<String> = Vec::new();
        for (_, evid, _) in &batch {
            if !touched.contains(evid) {
                touched.push((*evid).clone());
            }
        }
        for (p, _) in &messages {
            self.ack(p).await;
        }
        for evid in &touched {
            if self.shared && self.uploads.get(evid).is_some_and(|u| !u.finalizing) {
                self.refresh(evid).await;
            }
        }
        for evid in touched {
            if self.uploads.get(&evid).is_some_and(|u| u.complete() && !u.finalizing) {
                self.hand_over(&evid);
            }
        }
    }

    /// Starts verifying and storing a complete upload in the background.
    fn hand_over(&mut self, evid: &str) {
        let Some(up) = self.uploads.get_mut(evid) else { return };
        up.finalizing = true;
        let h = Handover {
            store: self.store.clone(),
            blobs: self.blobs.clone(),
            key: self.key.clone(),
            client: self.client.clone(),
            record: up.record.clone(),
            path: up.path.clone(),
            hash: up.hash.clone(),
            hashed_bytes: (u64::from(up.hashed) * u64::from(up.meta.chunk_size)).min(up.meta.size),
            shared: up.file.is_none(),
        };
        let done = self.done_tx.clone();
        let evid = evid.to_owned();
        let span = info_span!("evidence", evid = %evid, device = %h.record.device);
        self.handovers.spawn(
            async move {
                let outcome = h.run().await;
                done.send(Finished { evid, outcome }).ok();
            }
            .instrument(span),
        );
    }

    /// Discards uploads nobody has touched for `idle_upload_hours`.
    pub(super) async fn expire_idle(&mut self) {
        let cutoff = now_ms() - (self.config.idle_upload_hours as i64).saturating_mul(3_600_000);
        if self.shared {
            // Other processes touch these uploads too: the database's time decides.
            let open = match self.store.evidence_uploads().await {
                Ok(open) => open,
                Err(e) => return warn!(error = %e, "listing open uploads failed"),
            };
            let open_ids: std::collections::HashSet<&str> = open.iter().map(|u| u.evid.as_str()).collect();
            self.uploads.retain(|evid, u| u.finalizing || open_ids.contains(evid.as_str()));
            for u in open.iter().filter(|u| u.staging == SHARED && u.touched_at < cutoff) {
                if self.uploads.get(&u.evid).is_some_and(|u| u.finalizing) {
                    continue;
                }
                info!(evid = %u.evid, "idle upload discarded");
                self.discard(&u.evid).await;
            }
            return;
        }
        let idle: Vec<String> = self
            .uploads
            .iter()
            .filter(|(_, u)| !u.finalizing && u.touched < cutoff)
            .map(|(evid, _)| evid.clone())
            .collect();
        for evid in idle {
            info!(evid = %evid, "idle upload discarded");
            self.discard(&evid).await;
        }
    }

    /// Lets running hand-overs finish (bounded), so a stored item also gets its receipt.
    pub(super) async fn shutdown(&mut self) {
        let wait = async { while self.handovers.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), wait).await.is_err() {
            warn!("evidence hand-overs still running at shutdown; they resume at the next start");
        }
    }
}

fn taken(evid: &str) -> String {
    format!("meta: evidence id {evid} is taken; generate a new ULID for this item")
}

fn stored_receipt(e: &Evidence) -> Receipt {
    Receipt::Stored {
        evid: e.evid.clone(),
        sha256: e.sha256.clone(),
        size: e.size.max(0) as u64,
        ledger_seq: e.ledger_seq.max(0) as u64,
        ledger_hash: e.ledger_hash.clone(),
        received_at: e.received_at,
        sig: e.sig.clone(),
    }
}

impl Handover {
    /// Verifies, commits and records the upload, then tells the phone.
    async fn run(self) -> Outcome {
        let device = self.record.device.clone();
        let evid = self.record.evid.clone();
        let outcome = self.store_it().await;
        match &outcome {
            Outcome::Stored(e) => {
                std::fs::remove_file(&self.path).ok();
                metrics::counter!("jiandu_evidence_stored_total").increment(1);
                metrics::counter!("jiandu_evidence_stored_bytes_total").increment(e.size.max(0) as u64);
                self.publish(&device, &stored_receipt(e)).await;
            }
            Outcome::Rejected(error) => {
                std::fs::remove_file(&self.path).ok();
                if let Err(e) = self.store.evidence_upload_discard(&evid).await {
                    warn!(error = %e, "forgetting a rejected upload failed");
                }
                metrics::counter!("jiandu_evidence_rejected_total").increment(1);
                info!(error = %error, "evidence upload rejected");
                self.publish(&device, &Receipt::Rejected { evid, error: error.clone() }).await;
            }
            Outcome::Failed(error) => {
                if self.shared {
                    std::fs::remove_file(&self.path).ok();
                }
                warn!(error = %error, "storing evidence failed; it is retried when the phone re-sends meta");
            }
        }
        outcome
    }

    async fn publish(&self, device: &str, receipt: &Receipt) {
        PhoneInbox::new(self.client.clone()).send(device, InboxKind::Receipt, receipt).await;
    }

    /// Writes the database-staged chunks of the upload into `path`, page by page.
    async fn assemble(&self) -> Result<(), Outcome> {
        let evid = &self.record.evid;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Outcome::Failed(e.to_string()))?;
        }
        // A file left read-only by an earlier attempt is replaced.
        std::fs::remove_file(&self.path).ok();
        let file = std::fs::File::create(&self.path).map_err(|e| Outcome::Failed(e.to_string()))?;
        let chunk_size = u64::try_from(self.record.spec.chunk_size).unwrap_or(0);
        let mut next = 0i64;
        loop {
            let page = self
                .store
                .evidence_chunk_bytes(evid, next, ASSEMBLY_PAGE)
                .await
                .map_err(|e| Outcome::Failed(e.to_string()))?;
            let Some(&(last, _)) = page.last() else { break };
            for (n, bytes) in &page {
                file.write_all_at(bytes, n.max(&0).unsigned_abs() * chunk_size)
                    .map_err(|e| Outcome::Rejected(storage_error(&e)))?;
            }
            next = last + 1;
        }
        Ok(())
    }

    async fn store_it(&self) -> Outcome {
        if self.shared
            && let Err(outcome) = self.assemble().await
        {
            return outcome;
        }
        let spec = &self.record.spec;
        let mut hasher = match self.hashed_bytes {
            0 => Sha256::new(),
            _ => self.hash.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let (path, offset) = (self.path.clone(), self.hashed_bytes);
        let size = spec.size.max(0) as u64;
        let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
            let len = cut_padding(&path, size)?;
            let mut f = File::open(&path)?;
            f.sync_all()?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok((hex::encode(hasher.finalize()), len))
        })
        .await;
        let (sha, len) = match hashed {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Outcome::Rejected(storage_error(&e)),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        if len != spec.size as u64 {
            return Outcome::Rejected(format!(
                "meta.size: received {len} bytes but meta announced {}; nothing was stored",
                spec.size
            ));
        }
        if sha != spec.sha256 {
            return Outcome::Rejected(format!(
                "meta.sha256: the received bytes hash to {sha}, not the announced {}; nothing was stored",
                spec.sha256
            ));
        }
        // Read-only before it becomes the stored blob (on a file store it is the same inode).
        if let Ok(meta) = std::fs::metadata(&self.path) {
            let mut perms = meta.permissions();
            perms.set_readonly(true);
            std::fs::set_permissions(&self.path, perms).ok();
        }
        match self.blobs.commit_staged(&self.path, &sha).await {
            Ok(Committed::Stored) => debug!(sha256 = %sha, "blob stored"),
            Ok(Committed::AlreadyStored) => debug!(sha256 = %sha, "same bytes stored before; blob shared"),
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        match self.store.evidence_record(&self.record, &self.key).await {
            Ok(e) => Outcome::Stored(Box::new(e)),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_writes_land_at_their_offsets_and_padding_is_cut() {
        let dir = std::env::temp_dir().join(format!("jiandu-staging-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..(3 * 8192 + 100u32)).map(|i| (i % 251) as u8).collect();
        let want_sha = Sha256::digest(&data);
        // 8 KiB chunks may go direct (aligned), 5000-byte chunks never do; both must end equal.
        for chunk_size in [8192usize, 5000] {
            let chunks: Vec<Bytes> = data.chunks(chunk_size).map(Bytes::copy_from_slice).collect();
            // In order, every chunk hashed as it is written; then the last chunk first, as a
            // phone re-sending out of order may.
            for reverse in [false, true] {
                let path = dir.join(format!("upload-{chunk_size}-{reverse}"));
                let file = Arc::new(open_staging(&path, chunk_size as u32, true).unwrap());
                let hash = RunningHash::default();
                let mut order: Vec<usize> = (0..chunks.len()).collect();
                if reverse {
                    order.reverse();
                }
                let writes = order
                    .iter()
                    .map(|&n| StagedWrite {
                        evid: "e".into(),
                        file: file.clone(),
                        offset: (n * chunk_size) as u64,
                        bytes: chunks[n].clone(),
                        hash: (!reverse).then(|| hash.clone()),
                    })
                    .collect();
                assert!(write_and_sync(writes).is_empty());
                assert!(
                    !is_direct(&file) || chunk_size == 8192,
                    "an unaligned chunk size must not be written directly"
                );
                if is_direct(&file) {
                    let padded = (data.len() as u64).next_multiple_of(DIRECT_ALIGN as u64);
                    assert_eq!(std::fs::metadata(&path).unwrap().len(), padded);
                }
                assert_eq!(
                    cut_padding(&path, data.len() as u64).unwrap(),
                    data.len() as u64,
                    "chunk size {chunk_size}"
                );
                assert_eq!(std::fs::read(&path).unwrap(), data, "chunk size {chunk_size}");
                if !reverse {
                    assert_eq!(hash.lock().unwrap().clone().finalize(), want_sha, "chunk size {chunk_size}");
                }
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn chunk_sets_count_each_chunk_once() {
        let mut s = ChunkSet::new(130);
        for n in [0, 64, 129, 64, 0] {
            s.insert(n);
        }
        assert_eq!(s.count, 3);
        assert!(s.contains(129) && s.contains(64) && !s.contains(1));
        s.insert(130);
        assert_eq!(s.count, 3, "out of range is ignored");
        s.remove(64);
        s.remove(64);
        assert_eq!(s.count, 2);
    }

    #[test]
    fn differing_meta_names_the_field() {
        let m = EvidenceMeta {
            sha256: "a".repeat(64),
            size: 10,
            mime: "image/jpeg".into(),
            captured_at: 1_700_000_000_000,
            lat: None,
            lon: None,
            report_id: None,
            chunk_size: 4,
            chunks: 3,
        };
        assert_eq!(differing_field(&m, &m.clone()), None);
        let mut other = m.clone();
        other.mime = "video/mp4".into();
        assert_eq!(differing_field(&m, &other), Some("mime"));
        assert_eq!(meta_of(&spec_of(&m)), m);
    }
}
