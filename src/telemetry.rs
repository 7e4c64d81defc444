//! Tracing set-up in one place: stderr, text or JSON, filtered by `RUST_LOG`
//! (default `info`, with rumqttd's own chatter at `warn`).
//!
//! Routine events that the embedded rumqttd logs at ERROR are dropped whatever `RUST_LOG` says
//! ([`routine`]), so a reconnecting phone does not fill the log with errors while real errors
//! from the same modules still show.

use tracing::Metadata;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Events of the pinned rumqttd (0.20) that are routine for us, by source file and line (the
/// only identity a tracing event has before its fields are formatted):
/// `router/routing.rs:288` "Duplicate client_id, dropping previous connection" is the takeover
/// of a session by a phone reconnecting with its own client id (MQTT 3.1.1 §3.1.4), logged at
/// ERROR by rumqttd for every reconnect after a coverage gap.
const ROUTINE: &[(&str, &str, u32)] = &[("rumqttd::router::routing", "router/routing.rs", 288)];

/// Whether an event is one of the [`ROUTINE`] ones.
pub fn routine(m: &Metadata<'_>) -> bool {
    ROUTINE.iter().any(|(target, file, line)| {
        m.target() == *target && m.line() == Some(*line) && m.file().is_some_and(|f| f.ends_with(file))
    })
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn,sqlx=warn"));
    let filter = env.and(filter_fn(|m| !routine(m)));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => tracing_subscriber::registry().with(layer.with_filter(filter)).init(),
        LogFormat::Json => {
            tracing_subscriber::registry().with(layer.json().flatten_event(true).with_filter(filter)).init()
        }
    }
}
