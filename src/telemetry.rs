//! Tracing set-up in one place: stderr, text or JSON, filtered by `RUST_LOG`
//! (default `info`, with rumqttd's own chatter at `warn`).
//!
//! Routine events that the embedded rumqttd logs at ERROR are dropped whatever `RUST_LOG` says
//! ([`routine`]), so a reconnecting phone does not fill the log with errors while real errors
//! from the same modules still show. rumqttd's per-message spans are dropped too
//! ([`rumqttd_span`]).

use tracing::Metadata;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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

/// Whether a callsite is one of rumqttd's spans. Its router opens ERROR-level spans for every
/// message it routes (`incoming_payload`, `publish` with the topic formatted by `Debug`), which
/// pass any level filter and cost 8% of the server's CPU under `jiandu bench ingest` (perf), for
/// context we never show: the front logs each connection with its own fields. rumqttd's events
/// still pass.
pub fn rumqttd_span(m: &Metadata<'_>) -> bool {
    m.is_span() && m.target().starts_with("rumqttd")
}

/// The global filter on top of `RUST_LOG`'s: everything but the [`ROUTINE`] events and
/// rumqttd's spans.
fn keep(m: &Metadata<'_>) -> bool {
    !routine(m) && !rumqttd_span(m)
}

/// Installs the global subscriber: `RUST_LOG`'s filter inside the formatter (so the global
/// maximum level stays RUST_LOG's and disabled callsites cost nothing), with the [`ROUTINE`]
/// events and rumqttd's spans ([`rumqttd_span`]) dropped by a global filter on top.
pub fn init(format: LogFormat) {
    let env = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn,sqlx=warn"));
    let quiet = || filter_fn(keep);
    let builder = tracing_subscriber::fmt().with_env_filter(env()).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.finish().with(quiet()).init(),
        LogFormat::Json => builder.json().flatten_event(true).finish().with(quiet()).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rumqttds_spans_are_dropped_and_ours_and_its_events_kept() {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_writer(std::io::sink)
            .finish()
            .with(filter_fn(keep));
        tracing::subscriber::with_default(subscriber, || {
            let theirs = tracing::error_span!(target: "rumqttd::router::routing", "publish", pkid = 1);
            assert!(theirs.is_disabled(), "rumqttd's per-message span must cost nothing");
            let ours = tracing::error_span!(target: "jiandu_broker::front", "session", client = "d1");
            assert!(!ours.is_disabled(), "our spans pass");
            assert!(tracing::enabled!(target: "rumqttd::router::routing", tracing::Level::ERROR));
        });
    }
}
