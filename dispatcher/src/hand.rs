//! Dispatch by hand: what staff at the desk may do to a report (send a chosen device, withdraw
//! assignments, cancel), decided here with the same rules and the same offer payload the
//! automatic dispatcher uses, so the web only routes the request.
//!
//! A hand-made offer is recorded through the store like any other (assignment row, outbox event,
//! timeline, ledger, and the phone's offer in the phone outbox, all in one transaction; the store
//! refuses a final report, filled slots, a device already tried or busy); withdrawal notices go
//! the same way. The running dispatcher arms its deadline from the `assignment.offered` event,
//! exactly as for its own offers.

use jiandu_store::{Assignment, AssignmentState, NewOffer, PhoneMessage, Store, StoreError, StoredReport, now_ms};
use tracing::info;

use crate::DispatchError;
use crate::engine::{notice_message, offer_message};
use crate::index::haversine_m;

/// Seconds a hand-made offer waits for an answer unless the desk says otherwise (the same as the
/// automatic dispatcher's default `offer_timeout_s`).
pub const DEFAULT_RESPOND_WITHIN_S: i64 = 60;
/// Longest answer window the desk may give (a day).
pub const MAX_RESPOND_WITHIN_S: i64 = 86_400;

fn invalid(field: &'static str, reason: String) -> DispatchError {
    DispatchError::Invalid { field, reason }
}

/// A device the desk wants to send, checked and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct HandOffer {
    /// The report.
    pub report: StoredReport,
    /// The offer to record.
    pub offer: NewOffer,
}

/// Decides a hand-made offer of `report_id` to `device` (nothing is stored yet): the answer
/// window must be 1..=86400 s (default 60), the device registered and not revoked, its position
/// known; the distance is the dispatcher's great-circle distance from that position.
pub async fn plan_offer(
    store: &Store,
    report_id: &str,
    device: &str,
    respond_within_s: Option<i64>,
    actor: &str,
) -> Result<HandOffer, DispatchError> {
    let within = respond_within_s.unwrap_or(DEFAULT_RESPOND_WITHIN_S);
    if !(1..=MAX_RESPOND_WITHIN_S).contains(&within) {
        return Err(invalid("respond_within_s", format!("must be 1..={MAX_RESPOND_WITHIN_S} seconds, got {within}")));
    }
    if store.device(device).await?.is_none_or(|d| d.revoked_at.is_some()) {
        return Err(invalid("device", format!("no active device '{device}'")));
    }
    let report = store.report(report_id).await?;
    let Some((lat, lon)) = report.point() else {
        return Err(DispatchError::Conflict {
            reason: format!("report '{report_id}' has no location yet; place it first (POST …/location)"),
        });
    };
    let Some(pos) = store.live_position(device).await?.and_then(|p| p.position) else {
        return Err(invalid("device", format!("no position is known for device '{device}'")));
    };
    let offer = NewOffer {
        report_id: report_id.to_owned(),
        device_id: device.to_owned(),
        distance_m: haversine_m(lat, lon, pos.lat, pos.lon),
        respond_by: now_ms() + within * 1000,
        actor: actor.to_owned(),
    };
    Ok(HandOffer { report, offer })
}

/// Offers `report_id` to `device` by hand: [`plan_offer`], recorded with the phone's offer.
pub async fn offer(
    store: &Store,
    report_id: &str,
    device: &str,
    respond_within_s: Option<i64>,
    actor: &str,
) -> Result<Assignment, DispatchError> {
    let plan = plan_offer(store, report_id, device, respond_within_s, actor).await?;
    let (a, _) = store.offer(plan.offer, offer_message).await?;
    info!(report = %report_id, device, by = actor, "offered by hand");
    Ok(a)
}

/// Withdraws the open assignments of a report the desk names (`assignment`, or every open one
/// when `None`) and tells each phone; refused for a final report or an assignment that is not
/// open. Returns the withdrawn assignments.
pub async fn withdraw(
    store: &Store,
    report_id: &str,
    assignment: Option<&str>,
    actor: &str,
    note: &str,
) -> Result<Vec<Assignment>, DispatchError> {
    let report = store.report(report_id).await?;
    if report.status.is_final() {
        return Err(DispatchError::Conflict { reason: format!("report '{report_id}' is {}", report.status.as_str()) });
    }
    let open: Vec<Assignment> =
        store.report_assignments(report_id).await?.into_iter().filter(|a| a.status.is_open()).collect();
    let targets: Vec<&Assignment> = match assignment {
        Some(aid) => vec![open.iter().find(|a| a.id == aid).ok_or_else(|| {
            invalid("assignment", format!("'{aid}' is not an open assignment of report '{report_id}'"))
        })?],
        None => open.iter().collect(),
    };
    let mut withdrawn = Vec::with_capacity(targets.len());
    for a in targets {
        let tell = withdrawn_notice(a, "it was reassigned")?;
        let t = store.transition(&a.id, None, AssignmentState::Cancelled, actor, Some(note), Some(tell)).await?;
        withdrawn.push(t.assignment);
    }
    Ok(withdrawn)
}

/// Cancels a report by hand: every open assignment is withdrawn and its phone told.
pub async fn cancel(
    store: &Store,
    report_id: &str,
    actor: &str,
    note: Option<&str>,
) -> Result<Vec<Assignment>, DispatchError> {
    let (_, withdrawn) =
        store.cancel_report(report_id, actor, note, |a| withdrawn_notice(a, "the report was cancelled")).await?;
    info!(report = %report_id, by = actor, withdrawn = withdrawn.len(), "report cancelled");
    Ok(withdrawn)
}

/// Asks the dispatcher to offer the report to the nearest available device not tried yet.
pub async fn redispatch(store: &Store, report_id: &str, actor: &str) -> Result<StoredReport, DispatchError> {
    let report = store.redispatch(report_id, actor).await?;
    info!(report = %report_id, by = actor, "nearest inspector requested");
    Ok(report)
}

/// The notice telling a phone that an assignment it held was withdrawn.
fn withdrawn_notice(a: &Assignment, why: &str) -> Result<PhoneMessage, StoreError> {
    notice_message(&a.device_id, format!("assignment {} withdrawn: {why}", a.id))
}
