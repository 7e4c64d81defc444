//! Flow control for evidence: at most a fixed number of evidence bytes travel between the phones'
//! sockets and the ingest role at once.
//!
//! rumqttd acknowledges a publish as soon as it is in the router's log, and drops the oldest
//! entries of a log whose subscriber lags behind (DESIGN §3). A phone on a fast link uploading a
//! video would outrun evidence ingest: its chunks would be dropped and re-sent, and the log would
//! hold its full size in memory after every burst. So the front admits an evidence chunk into the
//! router only against permits of one process-wide budget (`[broker] evidence_inflight_bytes`),
//! and gives the permits back when a service session (the ingest role, which acknowledges a chunk
//! only after it is staged and synced) acknowledges the delivery. A session whose chunk finds no
//! room stops reading its socket until there is room, so TCP pushes back on the phone and memory
//! stays flat however many phones upload. A chunk that no one acknowledges (no ingest running,
//! or dropped by the router) gives its permits back after [`EvidenceGate::LAPSE`]; the phone's
//! own protocol (meta → `partial` → re-send) recovers what was lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Whether `topic` is an evidence chunk's (`jd/v1/dev/{device}/ev/{evid}/c/{n}`).
pub(crate) fn is_chunk(topic: &[u8]) -> bool {
    let Some(rest) = topic.strip_prefix(b"jd/v1/dev/") else { return false };
    let mut levels = rest.split(|b| *b == b'/');
    let (_, ev, _, c, _, more) =
        (levels.next(), levels.next(), levels.next(), levels.next(), levels.next(), levels.next());
    ev == Some(b"ev") && c == Some(b"c") && more.is_none()
}

/// The process-wide budget of evidence bytes admitted into the router and not yet staged.
pub(crate) struct EvidenceGate {
    budget: Arc<Semaphore>,
    /// Admitted chunks by message id (the front's stamp): their permits and when they came.
    admitted: Mutex<HashMap<u64, (OwnedSemaphorePermit, Instant)>>,
    /// Permits one chunk takes at most (the whole budget: a chunk larger than it still passes).
    max_permits: u32,
}

impl EvidenceGate {
    /// How long an admitted chunk may go unacknowledged before its permits return.
    pub const LAPSE: Duration = Duration::from_secs(5);

    /// A gate of `bytes` (at least one 256 KiB chunk).
    pub fn new(bytes: usize) -> Arc<EvidenceGate> {
        let bytes = bytes.clamp(256 * 1024, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Arc::new(EvidenceGate {
            budget: Arc::new(Semaphore::new(bytes)),
            admitted: Mutex::new(HashMap::new()),
            max_permits: bytes as u32,
        })
    }

    fn permits_for(&self, len: usize) -> u32 {
        (len.max(1) as u64).min(u64::from(self.max_permits)) as u32
    }

    /// Admits a chunk of `len` bytes under message id `id` if the budget has room now.
    pub fn try_admit(&self, id: u64, len: usize) -> bool {
        match self.budget.clone().try_acquire_many_owned(self.permits_for(len)) {
            Ok(permit) => {
                self.record(id, permit);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits until the budget has room for a chunk of `len` bytes, then admits it.
    pub async fn admit(&self, id: u64, len: usize) {
        // The semaphore is never closed.
        if let Ok(permit) = self.budget.clone().acquire_many_owned(self.permits_for(len)).await {
            self.record(id, permit);
        }
    }

    fn record(&self, id: u64, permit: OwnedSemaphorePermit) {
        let now = Instant::now();
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        admitted.insert(id, (permit, now));
        metrics::gauge!("jiandu_broker_evidence_inflight_bytes").set(self.in_flight() as f64);
    }

    /// A delivery of message `id` was acknowledged by its subscriber: its permits return.
    pub fn done(&self, id: u64) {
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        admitted.remove(&id);
    }

    /// Returns the permits of chunks unacknowledged for longer than [`Self::LAPSE`]; returns how
    /// many lapsed.
    pub fn sweep(&self) -> usize {
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let before = admitted.len();
        admitted.retain(|_, (_, at)| at.elapsed() < Self::LAPSE);
        let lapsed = before - admitted.len();
        if lapsed > 0 {
            metrics::counter!("jiandu_broker_evidence_lapsed_total").increment(lapsed as u64);
        }
        lapsed
    }

    /// Bytes admitted and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.max_permits as usize - self.budget.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_waits_for_an_acknowledgement() {
        let gate = EvidenceGate::new(512 * 1024);
        assert!(gate.try_admit(1, 256 * 1024));
        assert!(gate.try_admit(2, 256 * 1024));
        assert!(!gate.try_admit(3, 256 * 1024), "the budget is spent");
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.admit(3, 256 * 1024).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        gate.done(1);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        assert_eq!(gate.in_flight(), 512 * 1024);
        // An acknowledgement for a message never admitted changes nothing.
        gate.done(99);
        assert_eq!(gate.in_flight(), 512 * 1024);
    }

    #[test]
    fn chunk_topics() {
        assert!(is_chunk(b"jd/v1/dev/d1/ev/e1/c/0"));
        assert!(!is_chunk(b"jd/v1/dev/d1/ev/e1/meta"));
        assert!(!is_chunk(b"jd/v1/dev/d1/hb"));
        assert!(!is_chunk(b"jd/v1/dev/d1/ev/e1/c/0/x"));
        assert!(!is_chunk(b"other/d1/ev/e1/c/0"));
    }

    #[tokio::test]
    async fn a_chunk_larger_than_the_budget_still_passes_alone() {
        let gate = EvidenceGate::new(256 * 1024);
        assert!(gate.try_admit(1, 1024 * 1024));
        assert!(!gate.try_admit(2, 10));
        gate.done(1);
        assert!(gate.try_admit(2, 10));
    }

    #[test]
    fn unacknowledged_chunks_lapse() {
        let gate = EvidenceGate::new(256 * 1024);
        assert!(gate.try_admit(1, 256 * 1024));
        assert_eq!(gate.sweep(), 0);
        // As if admitted longer ago than the lapse.
        {
            let mut admitted = gate.admitted.lock().unwrap();
            let (_, at) = admitted.get_mut(&1).unwrap();
            *at = Instant::now() - EvidenceGate::LAPSE - Duration::from_millis(1);
        }
        assert_eq!(gate.sweep(), 1);
        assert_eq!(gate.in_flight(), 0);
    }
}
