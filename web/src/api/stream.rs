//! `GET /api/v1/events`: the event outbox as Server-Sent Events, for the web view's live map and
//! queues and for integrations that prefer HTTP to MQTT.
//!
//! Events are read from the database by `seq` (the SSE `id:`), so a browser that reconnects with
//! `Last-Event-ID` gets exactly what it missed, however long it was away. What wakes a stream is
//! the web role's own MQTT subscription to `jd/v1/events/#` (each event the relay publishes bumps
//! [`crate::AppState::events`]); a slow re-read every half minute covers a broker outage.
//!
//! Sampled positions (`jd/v1/events/position`) are not in the outbox: ingest publishes them
//! best-effort at QoS 0. They are passed on as they arrive as SSE events named `position`
//! without an `id:` (a missed one is superseded by the next; `/devices` has the latest).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use jiandu_store::Role;
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use super::{ApiError, Caller};
use crate::AppState;

/// Events read from the outbox per query.
const PAGE: i64 = 500;
/// Re-read the outbox this often even without a wake-up (broker down, missed message).
const SAFETY_NET: Duration = Duration::from_secs(30);
/// Check this often that the caller is still enabled (not disabled or revoked since it opened
/// the stream); the stream ends when not.
const RECHECK: Duration = Duration::from_secs(5);

/// The stream route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

/// `?after=SEQ`: where to start when there is no `Last-Event-ID` (default: only new events).
#[derive(Debug, Deserialize)]
struct StreamQuery {
    after: Option<i64>,
}

/// The starting point: `Last-Event-ID`, else `?after=`, else the newest event.
fn resume_from(headers: &HeaderMap, q: &StreamQuery) -> Result<Option<i64>, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let text = v.to_str().unwrap_or("");
        return match text.trim().parse::<i64>() {
            Ok(seq) if seq >= 0 => Ok(Some(seq)),
            _ => Err(ApiError::invalid("Last-Event-ID", format!("must be an event seq (integer >= 0), got {text:?}"))),
        };
    }
    match q.after {
        Some(a) if a < 0 => Err(ApiError::invalid("after", format!("must be >= 0, got {a}"))),
        other => Ok(other),
    }
}

async fn events(
    caller: Caller,
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(&Role::ALL, true)?;
    let start = match resume_from(&headers, &q)? {
        Some(seq) => seq,
        None => s.store.last_event_seq().await?,
    };
    debug!(caller = caller.name(), from = start, "event stream opened");
    let mut wake = s.events.clone();
    wake.mark_unchanged();
    let positions = s.positions.subscribe();
    let recheck = tokio::time::Instant::now() + RECHECK;
    let state = (s, wake, positions, start, Vec::<Event>::new().into_iter(), caller, recheck);
    let stream = futures::stream::unfold(
        state,
        |(s, mut wake, mut positions, mut seq, mut pending, caller, mut recheck)| async move {
            loop {
                if tokio::time::Instant::now() >= recheck {
                    if !caller.still_allowed(&s.store).await {
                        debug!(caller = caller.name(), "event stream ended: caller disabled or revoked");
                        return None;
                    }
                    recheck = tokio::time::Instant::now() + RECHECK;
                }
                if let Some(ev) = pending.next() {
                    return Some((Ok(ev), (s, wake, positions, seq, pending, caller, recheck)));
                }
                match s.store.events_after(seq, PAGE).await {
                    Ok(rows) if !rows.is_empty() => {
                        seq = rows.last().map_or(seq, |r| r.seq);
                        let batch: Vec<Event> = rows
                            .iter()
                            .map(|r| {
                                let data = json!({"seq": r.seq, "kind": r.kind, "type": r.r#type, "id": r.id,
                                              "ts": r.ts, "data": r.data});
                                Event::default().id(r.seq.to_string()).data(data.to_string())
                            })
                            .collect();
                        pending = batch.into_iter();
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "event stream cannot read the outbox"),
                }
                tokio::select! {
                    _ = s.shutdown.cancelled() => return None,
                    changed = wake.changed() => if changed.is_err() { return None },
                    p = positions.recv() => match p {
                        Ok(text) => {
                            let ev = Event::default().event("position").data(&*text);
                            return Some((Ok(ev), (s, wake, positions, seq, pending, caller, recheck)));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            debug!(skipped = n, "event stream skipped position samples");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = tokio::time::sleep(SAFETY_NET) => {}
                    _ = tokio::time::sleep_until(recheck) => {}
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_wins_and_bad_values_name_the_field() {
        let mut h = HeaderMap::new();
        assert_eq!(resume_from(&h, &StreamQuery { after: None }).unwrap(), None);
        assert_eq!(resume_from(&h, &StreamQuery { after: Some(7) }).unwrap(), Some(7));
        h.insert("last-event-id", "42".parse().unwrap());
        assert_eq!(resume_from(&h, &StreamQuery { after: Some(7) }).unwrap(), Some(42));
        h.insert("last-event-id", "x".parse().unwrap());
        assert_eq!(resume_from(&h, &StreamQuery { after: None }).unwrap_err().field.as_deref(), Some("Last-Event-ID"));
    }
}
