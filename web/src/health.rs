//! The roles' health as `serve`'s supervisor sees it, shown by `GET /healthz`.
//!
//! The supervisor (in the binary) writes one [`RoleHealth`] per supervised role into a shared
//! [`RoleBoard`]; the web role only reads it. A board with no roles (e.g. the web role started
//! on its own in a test) adds nothing to the answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Where a supervised role is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleState {
    /// Started, not yet doing its work (e.g. waiting for the database or its subscriptions).
    Starting,
    /// Running.
    Up,
    /// It failed and waits for its next start (backoff).
    Restarting,
    /// It failed too often; `serve` is exiting.
    Failed,
    /// Ended by shutdown.
    Stopped,
}

/// One role's health: its state, how often it was restarted and why it last failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleHealth {
    /// Current state.
    pub state: RoleState,
    /// Restarts since `serve` started.
    pub restarts: u64,
    /// The last failure (error or panic message), if any.
    pub last_error: Option<String>,
    /// When the last failure happened (Unix ms).
    pub last_failure_ms: Option<i64>,
}

/// Shared, cheap-to-clone table of role health, written by the supervisor and read by `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct RoleBoard(Arc<Mutex<BTreeMap<String, RoleHealth>>>);

/// Longest failure message kept (the rest is cut), so a huge error cannot bloat `/healthz`.
const MAX_ERROR_CHARS: usize = 500;

impl RoleBoard {
    /// Marks `role` as started but not yet ready.
    pub fn starting(&self, role: &str) {
        self.update(role, |h| h.state = RoleState::Starting);
    }

    /// Marks `role` as running.
    pub fn up(&self, role: &str) {
        self.update(role, |h| h.state = RoleState::Up);
    }

    /// Records a failure of `role`: `state` is [`RoleState::Restarting`] or [`RoleState::Failed`].
    pub fn failed(&self, role: &str, error: &str, state: RoleState, restarts: u64, now_ms: i64) {
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        self.update(role, |h| {
            h.state = state;
            h.restarts = restarts;
            h.last_error = Some(error);
            h.last_failure_ms = Some(now_ms);
        });
    }

    /// Marks `role` as ended by shutdown.
    pub fn stopped(&self, role: &str) {
        self.update(role, |h| h.state = RoleState::Stopped);
    }

    /// A copy of every role's health, by role name.
    pub fn snapshot(&self) -> BTreeMap<String, RoleHealth> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Whether every role on the board is up (true for an empty board).
    pub fn all_up(&self) -> bool {
        self.snapshot().values().all(|h| h.state == RoleState::Up)
    }

    fn update(&self, role: &str, f: impl FnOnce(&mut RoleHealth)) {
        if let Ok(mut m) = self.0.lock() {
            let h = m.entry(role.to_owned()).or_insert(RoleHealth {
                state: RoleState::Starting,
                restarts: 0,
                last_error: None,
                last_failure_ms: None,
            });
            f(h);
        }
    }
}
