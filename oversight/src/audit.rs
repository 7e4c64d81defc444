//! The look-up audit, written behind the answers.
//!
//! A phone's answer must not wait for a database commit, and 20,000 look-ups a second cannot
//! each be a transaction and a ledger entry. So the look-up role hands each audit row to an
//! [`AuditWriter`], whose task writes whatever has queued up as one batch
//! ([`Store::record_lookups`]: one transaction, one `lookup.batch` ledger entry committing to
//! the rows by hash). Batches grow with load by themselves: while one commits, the next
//! queues. The queue is bounded, so a database that falls behind slows the answers down rather
//! than losing records, and [`AuditWriter::close`] writes everything still queued.

use std::time::Duration;

use jiandu_store::{NewLookupAudit, Store};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

/// Rows waiting to be written before senders have to wait.
const QUEUE: usize = 100_000;
/// Attempts to write one batch before giving up on it (with back-off up to 2 s, about a minute).
const ATTEMPTS: u32 = 40;

/// Queues audit rows and writes them in batches on its own task.
pub struct AuditWriter {
    tx: mpsc::Sender<NewLookupAudit>,
    task: tokio::task::JoinHandle<()>,
}

impl AuditWriter {
    /// Starts the writer; `actor` signs the ledger entries, `max_batch` caps a batch.
    pub fn start(store: Store, actor: String, max_batch: usize) -> AuditWriter {
        let (tx, mut rx) = mpsc::channel::<NewLookupAudit>(QUEUE);
        let max_batch = max_batch.max(1);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut batch, max_batch).await > 0 {
                write(&store, &actor, &batch).await;
                batch.clear();
            }
        });
        AuditWriter { tx, task }
    }

    /// A handle for queueing rows from other tasks.
    pub fn sender(&self) -> AuditSender {
        AuditSender(self.tx.clone())
    }

    /// Writes everything queued and stops. Other [`AuditSender`]s must be dropped first.
    pub async fn close(self) {
        drop(self.tx);
        self.task.await.ok();
    }
}

/// Queues rows for an [`AuditWriter`]; cheap to clone.
#[derive(Clone)]
pub struct AuditSender(mpsc::Sender<NewLookupAudit>);

impl AuditSender {
    /// Queues one row, waiting when the queue is full.
    pub async fn record(&self, row: NewLookupAudit) {
        if self.0.send(row).await.is_err() {
            error!("look-up audit writer is gone; a look-up went unrecorded");
        }
    }
}

async fn write(store: &Store, actor: &str, batch: &[NewLookupAudit]) {
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=ATTEMPTS {
        match store.record_lookups(actor, batch).await {
            Ok(b) => {
                debug!(count = b.count, first_id = b.first_id, ledger_seq = b.ledger_seq, "look-ups audited");
                metrics::counter!("jiandu_lookup_audit_rows_total").increment(batch.len() as u64);
                return;
            }
            Err(e) => {
                warn!(error = %e, attempt, rows = batch.len(), "writing the look-up audit failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    error!(rows = batch.len(), "look-up audit rows could not be written and are lost");
}
