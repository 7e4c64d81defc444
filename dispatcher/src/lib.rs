//! Dispatcher: sends the nearest available inspector to every report (DESIGN §2).
//!
//! Reports reach the dispatcher three ways, all ending in the store's `reports` table: phones
//! publish on `jd/v1/dev/{dev}/report` and integrations on `jd/v1/reports` (both through the
//! dispatcher's shared subscriptions), and the web stores REST reports itself and announces them
//! with a `report.created` event. The dispatcher keeps a live [`index::SpatialIndex`] of the
//! inspectors, fed by its own subscriptions to heartbeats and presence and rebuilt from the
//! database when it starts, so choosing whom to send never waits on a query. Every decision is
//! then made durable through the store (assignment row, outbox event, timeline, ledger) before
//! the offer goes to the phone's `inbox/assignment`, and every phone message is confirmed on
//! `inbox/ack` only after its commit.
//!
//! Offers carry a deadline (`respond_by`) stored with them; the dispatcher keeps the deadlines in
//! a timer heap, reloads them after a restart and double-checks the database periodically, and
//! expiring is a conditional update, so each deadline fires exactly once. A decline or an expiry
//! offers the report to the next nearest device not tried yet; when nobody is left within the
//! radius the report is escalated (`jd/v1/events/alarm`).
//!
//! Only one dispatcher may decide at a time: on PostgreSQL the processes compete for an
//! advisory lock and the others wait on standby (not even subscribing), taking over when the
//! holder's connection dies; on SQLite a single process owns the database anyway.

mod engine;
pub mod hand;
pub mod index;

use std::time::Duration;

use jiandu_broker::BrokerEndpoint;
use jiandu_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use engine::{ACTOR, notice_message, offer_message, offer_payload};

/// Settings of the `[dispatch]` section of `jiandu.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Seconds an inspector has to accept or decline an offer before it goes to the next one.
    pub offer_timeout_s: u64,
    /// Farthest an inspector may be from a report to be offered it, metres; beyond it, escalate.
    pub radius_m: f64,
    /// A position older than this many seconds is stale: that device is not offered anything.
    pub freshness_s: u64,
    /// Report kinds that need two inspectors (e.g. `banquet`); all others need one.
    pub two_inspector_kinds: Vec<String>,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig { offer_timeout_s: 60, radius_m: 30_000.0, freshness_s: 300, two_inspector_kinds: Vec::new() }
    }
}

impl DispatchConfig {
    /// How many inspectors a report of `kind` needs.
    pub fn needs(&self, kind: &str) -> i64 {
        if self.two_inspector_kinds.iter().any(|k| k == kind) { 2 } else { 1 }
    }

    /// The offer timeout as a duration.
    pub fn offer_timeout(&self) -> Duration {
        Duration::from_secs(self.offer_timeout_s)
    }
}

/// What can stop the dispatcher.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The database failed (or refused a change) while the dispatcher was working.
    #[error("dispatcher cannot use the database: {0}")]
    Store(#[from] StoreError),
    /// A request to dispatch by hand names something unusable (field, why).
    #[error("{field}: {reason}")]
    Invalid {
        /// Which field of the request.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A request to dispatch by hand does not fit the report's state.
    #[error("{reason}")]
    Conflict {
        /// What stands in the way.
        reason: String,
    },
    /// The configuration makes no sense.
    #[error("invalid [dispatch] setting {field}: {reason}")]
    Config {
        /// Which key.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Where a dispatcher process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchState {
    /// Starting: not yet known whether this process will be the active one.
    Starting,
    /// Another process holds the dispatch lock; this one waits to take over.
    Standby,
    /// Holds the lock, has rebuilt its index and its subscriptions are live.
    Active,
    /// Stopped.
    Stopped,
}

/// A dispatcher running in the background.
pub struct RunningDispatcher {
    /// Follows the dispatcher's state (e.g. to wait until it is active or on standby).
    pub state: watch::Receiver<DispatchState>,
    task: tokio::task::JoinHandle<Result<(), DispatchError>>,
}

impl RunningDispatcher {
    /// Waits until the dispatcher is active or on standby (or stopped), at most `limit`.
    pub async fn settled(&mut self, limit: Duration) -> DispatchState {
        let wait = self.state.wait_for(|s| *s != DispatchState::Starting);
        let settled = match tokio::time::timeout(limit, wait).await {
            Ok(Ok(s)) => Some(*s),
            _ => None,
        };
        settled.unwrap_or_else(|| *self.state.borrow())
    }

    /// Waits for the dispatcher to end after shutdown.
    pub async fn stopped(self) -> Result<(), DispatchError> {
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Starts the dispatcher in the background; see [`run`].
pub fn spawn(
    store: Store,
    broker: BrokerEndpoint,
    config: DispatchConfig,
    shutdown: CancellationToken,
) -> RunningDispatcher {
    let (tx, state) = watch::channel(DispatchState::Starting);
    let task = tokio::spawn(engine::run(store, broker, config, shutdown, tx));
    RunningDispatcher { state, task }
}

/// Runs the dispatcher until `shutdown`: waits for the dispatch lock, then dispatches.
pub async fn run(
    store: Store,
    broker: BrokerEndpoint,
    config: DispatchConfig,
    shutdown: CancellationToken,
) -> Result<(), DispatchError> {
    spawn(store, broker, config, shutdown).stopped().await
}

/// Checks the settings before starting.
pub fn validate(config: &DispatchConfig) -> Result<(), DispatchError> {
    if config.offer_timeout_s == 0 {
        return Err(DispatchError::Config { field: "offer_timeout_s", reason: "must be at least 1 second".into() });
    }
    if !(config.radius_m.is_finite() && config.radius_m > 0.0) {
        return Err(DispatchError::Config {
            field: "radius_m",
            reason: format!("must be a positive number of metres, got {}", config.radius_m),
        });
    }
    if config.freshness_s == 0 {
        return Err(DispatchError::Config { field: "freshness_s", reason: "must be at least 1 second".into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_needs() {
        let c: DispatchConfig = toml_like(r#"{"two_inspector_kinds":["banquet"],"offer_timeout_s":5}"#);
        assert_eq!(c.offer_timeout(), Duration::from_secs(5));
        assert_eq!(c.radius_m, 30_000.0);
        assert_eq!(c.freshness_s, 300);
        assert_eq!(c.needs("banquet"), 2);
        assert_eq!(c.needs("official-car"), 1);
        assert!(validate(&c).is_ok());
        let bad = DispatchConfig { radius_m: -1.0, ..DispatchConfig::default() };
        assert!(matches!(validate(&bad), Err(DispatchError::Config { field: "radius_m", .. })));
        assert!(serde_json::from_str::<DispatchConfig>(r#"{"radius":1}"#).is_err(), "unknown keys are refused");
    }

    fn toml_like(json: &str) -> DispatchConfig {
        serde_json::from_str(json).unwrap()
    }
}
