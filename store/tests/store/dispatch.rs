//! Reports and assignments: de-duplication, the assignment state machine, the rules the schema
//! enforces (never the same device twice per report, one open assignment per device), escalation,
//! cancellation, and the events, timeline and ledger every change leaves behind.

use jiandu_store::{
    Assignment, AssignmentState, Escalation, NewOffer, NewReport, PhoneMessage, ReportSource, ReportStatus, StoreError,
    StoredReport, now_ms,
};
use serde_json::{Value, json};

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    reports_with_and_without_a_point_alternate_on_every_connection,
    reports_are_stored_once_and_listed,
    assignments_follow_the_state_machine,
    escalation_and_cancellation,
    an_unlocated_public_report_waits_for_the_desk_to_place_it,
    one_dispatcher_holds_the_lock,
    phone_messages_commit_with_the_change_and_only_with_it
);

fn report(id: &str, needs: i64) -> NewReport {
    NewReport {
        id: id.into(),
        source: ReportSource::Device,
        origin: "dphone".into(),
        kind: "official-car".into(),
        text: "公车停在饭店门口".into(),
        lat: Some(36.51),
        lon: Some(118.54),
        ts: 1_750_000_000_000,
        plate: Some("鲁G·12345".into()),
        needs,
    }
}

/// Reports without a point and with one, alternating, more times than the pool has
/// connections: on PostgreSQL a NULL coordinate once cached the insert with a `float4`
/// parameter on its connection, and the next report with a point failed there ("incorrect
/// binary data format in bind parameter 6", seen under load in the place-only tip test).
async fn reports_with_and_without_a_point_alternate_on_every_connection(db: &TestDb) {
    let s = &db.store;
    for i in 0..40 {
        let id = format!("alt-{i}");
        let r = if i % 2 == 0 {
            NewReport { source: ReportSource::Public, lat: None, lon: None, ..report(&id, 1) }
        } else {
            NewReport { source: ReportSource::Public, lat: Some(36.5 + i as f64 * 1e-3), ..report(&id, 1) }
        };
        s.insert_report(r).await.unwrap_or_else(|e| panic!("report {i}: {e}"));
    }
    for i in 0..40 {
        let stored = s.report(&format!("alt-{i}")).await.unwrap();
        let want = (i % 2 == 1).then_some((36.5 + i as f64 * 1e-3, 118.54));
        assert_eq!(stored.point(), want, "report {i}");
    }
}

fn offer(report: &str, device: &str) -> NewOffer {
    NewOffer {
        report_id: report.into(),
        device_id: device.into(),
        distance_m: 412.6,
        respond_by: now_ms() + 60_000,
        actor: "dispatcher".into(),
    }
}

/// The offer's phone message, as the dispatcher builds it (stand-in body naming the assignment).
fn tell(r: &StoredReport, a: &Assignment) -> Result<PhoneMessage, StoreError> {
    PhoneMessage::new(&a.device_id, "assignment", &json!({"assignment_id": a.id, "report": {"id": r.id}}))
}

fn notice(a: &Assignment) -> Result<PhoneMessage, StoreError> {
    PhoneMessage::new(&a.device_id, "notice", &json!({"text": format!("assignment {} withdrawn", a.id)}))
}

async fn reports_are_stored_once_and_listed(db: &TestDb) {
    let s = &db.store;
    let (r, created) = s.insert_report(report("r1", 1)).await.unwrap();
    assert!(created);
    assert_eq!((r.status, r.source, r.plate.as_deref()), (ReportStatus::New, ReportSource::Device, Some("鲁G·12345")));
    let mut again = report("r1", 1);
    again.text = "re-sent".into();
    let (r2, created) = s.insert_report(again).await.unwrap();
    assert!(!created, "same id is a re-send");
    assert_eq!(r2.text, "公车停在饭店门口", "the first copy is kept");
    for i in 2..=5 {
        s.insert_report(report(&format!("r{i}"), 1)).await.unwrap();
    }
    let page = s.reports(None, 2, None).await.unwrap();
    assert_eq!(page.len(), 2);
    let rest = s.reports(None, 10, Some(&page[1].id)).await.unwrap();
    assert_eq!(rest.len(), 3);
    let mut all: Vec<String> = page.iter().chain(rest.iter()).map(|r| r.id.clone()).collect();
    all.sort();
    assert_eq!(all, ["r1", "r2", "r3", "r4", "r5"]);
    assert_eq!(s.reports(Some(ReportStatus::New), 10, None).await.unwrap().len(), 5);
    assert!(s.reports(Some(ReportStatus::Assigned), 10, None).await.unwrap().is_empty());
    let events = s.events_after(0, 100).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.r#type == "report.created").count(), 5, "one event per new report");
    assert_eq!(events[0].data["report"]["plate"], "鲁G·12345");
    let ledger = s.ledger_entries(0, 100).await.unwrap();
    assert_eq!(ledger.iter().filter(|e| e.kind == "report.received").count(), 5);
    assert!(matches!(s.insert_report(report("r9", 3)).await, Err(StoreError::InvalidInput { field: "needs", .. })));
    assert!(matches!(s.report("nope").await, Err(StoreError::NotFound { .. })));
}

async fn assignments_follow_the_state_machine(db: &TestDb) {
    let s = &db.store;
    s.insert_report(report("r1", 1)).await.unwrap();
    s.insert_report(report("r2", 1)).await.unwrap();
    let (a, r) = s.offer(offer("r1", "dA"), tell).await.unwrap();
    assert_eq!((a.status, r.status), (AssignmentState::Offered, ReportStatus::Dispatching));
    assert_eq!(s.open_offers().await.unwrap().len(), 1);
    assert_eq!(s.busy_devices().await.unwrap(), ["dA"]);
    // Busy: dA cannot be offered r2 while it holds r1.
    let busy = s.offer(offer("r2", "dA"), tell).await.unwrap_err();
    assert!(matches!(&busy, StoreError::Conflict { reason } if reason.contains("busy")), "{busy}");
    // Declined: dA is free, r1 goes back to new, and dA is never offered r1 again.
    let t = s.transition(&a.id, Some("dA"), AssignmentState::Declined, "dA", Some("在开会"), None).await.unwrap();
    assert!(t.changed);
    assert_eq!(t.report.status, ReportStatus::New);
    let again = s.transition(&a.id, Some("dA"), AssignmentState::Declined, "dA", None, None).await.unwrap();
    assert!(!again.changed, "a re-sent answer changes nothing");
    let twice = s.offer(offer("r1", "dA"), tell).await.unwrap_err();
    assert!(matches!(&twice, StoreError::Conflict { reason } if reason.contains("already offered")), "{twice}");
    let (b, _) = s.offer(offer("r1", "dB"), tell).await.unwrap();
    // Another device cannot answer dB's assignment.
    assert!(matches!(
        s.transition(&b.id, Some("dA"), AssignmentState::Accepted, "dA", None, None).await,
        Err(StoreError::NotFound { .. })
    ));
    let t = s.transition(&b.id, Some("dB"), AssignmentState::Accepted, "dB", None, None).await.unwrap();
    assert_eq!(t.report.status, ReportStatus::Assigned);
    let full = s.offer(offer("r1", "dC"), tell).await.unwrap_err();
    assert!(matches!(full, StoreError::Conflict { .. }), "a one-inspector report that is assigned takes no more");
    let bad = s.transition(&b.id, Some("dB"), AssignmentState::Declined, "dB", None, None).await.unwrap_err();
    assert!(matches!(&bad, StoreError::Conflict { reason } if reason.contains("accepted")), "{bad}");
    s.transition(&b.id, Some("dB"), AssignmentState::Arrived, "dB", None, None).await.unwrap();
    let t = s.transition(&b.id, Some("dB"), AssignmentState::Completed, "dB", None, None).await.unwrap();
    assert_eq!(t.report.status, ReportStatus::Completed);
    assert!(s.busy_devices().await.unwrap().is_empty(), "completed frees the device");

    let timeline = s.report_timeline("r1").await.unwrap();
    let steps: Vec<(&str, AssignmentState)> = timeline.iter().map(|t| (t.actor.as_str(), t.status)).collect();
    assert_eq!(
        steps,
        [
            ("dispatcher", AssignmentState::Offered),
            ("dA", AssignmentState::Declined),
            ("dispatcher", AssignmentState::Offered),
            ("dB", AssignmentState::Accepted),
            ("dB", AssignmentState::Arrived),
            ("dB", AssignmentState::Completed),
        ]
    );
    assert_eq!(timeline[1].note.as_deref(), Some("在开会"));
    let events = s.events_after(0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().filter(|e| e.kind == "assignment").map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "assignment.offered",
            "assignment.declined",
            "assignment.offered",
            "assignment.accepted",
            "assignment.arrived",
            "assignment.completed"
        ]
    );
    let ledger = s.ledger_entries(0, 100).await.unwrap();
    let changes: Vec<_> = ledger.iter().filter(|e| e.kind == "assignment.changed").collect();
    assert_eq!(changes.len(), 6);
    assert_eq!(changes[1].body["from"], "offered");
    assert_eq!(changes[1].body["to"], "declined");
    assert_eq!(changes[0].body["distance_m"], 413);
    assert!(s.ledger_verify(|_, _| {}).await.unwrap().is_empty(), "the chain holds");
}

async fn escalation_and_cancellation(db: &TestDb) {
    let s = &db.store;
    s.insert_report(report("two", 2)).await.unwrap();
    let (a, _) = s.offer(offer("two", "dA"), tell).await.unwrap();
    s.transition(&a.id, None, AssignmentState::Accepted, "dA", None, None).await.unwrap();
    assert!(
        s.escalate("two", Escalation::NobodyWithin { radius_m: 5000.0 }, "dispatcher").await.unwrap(),
        "one of two slots is empty: escalate"
    );
    assert!(
        !s.escalate("two", Escalation::NobodyWithin { radius_m: 5000.0 }, "dispatcher").await.unwrap(),
        "an escalation alarms once"
    );
    assert_eq!(s.report("two").await.unwrap().status, ReportStatus::Unassigned);
    let alarms: Vec<_> = s.events_after(0, 100).await.unwrap().into_iter().filter(|e| e.kind == "alarm").collect();
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].data["report"], "two");
    assert_eq!(alarms[0].data["filled"], 1);
    // Staff ask for the nearest again, then cancel.
    assert_eq!(s.redispatch("two", "desk").await.unwrap().status, ReportStatus::New);
    assert_eq!(s.reports_waiting(now_ms() + 1).await.unwrap().len(), 1);
    let (b, _) = s.offer(offer("two", "dB"), tell).await.unwrap();
    let (r, withdrawn) = s.cancel_report("two", "desk", Some("duplicate tip"), notice).await.unwrap();
    assert_eq!(r.status, ReportStatus::Cancelled);
    let mut ids: Vec<_> = withdrawn.iter().map(|a| a.id.clone()).collect();
    ids.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(s.busy_devices().await.unwrap().is_empty());
    assert!(matches!(s.offer(offer("two", "dC"), tell).await, Err(StoreError::Conflict { .. })));
    assert!(matches!(s.cancel_report("two", "desk", None, notice).await, Err(StoreError::Conflict { .. })));
    let ledger = s.ledger_entries(0, 100).await.unwrap();
    let cancel = ledger.iter().find(|e| e.kind == "report.cancelled").unwrap();
    assert_eq!((cancel.actor.as_str(), cancel.body["reason"].as_str()), ("desk", Some("duplicate tip")));
    assert_eq!(s.report_timeline("two").await.unwrap().last().unwrap().actor, "desk");
}

/// A public tip that names its place in words only: stored without a point (no other source may
/// be), never offered, escalated with reason `no_location`, placed once by the desk (ledgered,
/// back to `new` with `report.dispatch_requested`), then offered like any other.
async fn an_unlocated_public_report_waits_for_the_desk_to_place_it(db: &TestDb) {
    let s = &db.store;
    let unplaced = |id: &str, source| NewReport { id: id.into(), source, lat: None, lon: None, ..report(id, 1) };
    let e = s.insert_report(unplaced("web-nowhere", ReportSource::Web)).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput { field: "lat", .. }), "{e:?}");
    let half = NewReport { lon: None, ..report("half", 1) };
    assert!(matches!(s.insert_report(half).await, Err(StoreError::InvalidInput { field: "lon", .. })));
    let (r, _) = s.insert_report(unplaced("tip", ReportSource::Public)).await.unwrap();
    assert_eq!((r.lat, r.lon, r.point()), (None, None, None));
    let created = s.events_after(0, 100).await.unwrap().into_iter().find(|e| e.r#type == "report.created").unwrap();
    assert!(created.data["report"]["lat"].is_null() && created.data["report"]["lon"].is_null(), "{created:?}");
    assert!(matches!(s.offer(offer("tip", "dA"), tell).await, Err(StoreError::Conflict { .. })), "no point, no offer");
    assert!(matches!(s.redispatch("tip", "desk").await, Err(StoreError::Conflict { .. })));

    assert!(s.escalate("tip", Escalation::NoLocation, "dispatcher").await.unwrap());
    assert_eq!(s.report("tip").await.unwrap().status, ReportStatus::Unassigned);
    let alarm = s.events_after(0, 100).await.unwrap().into_iter().find(|e| e.kind == "alarm").unwrap();
    assert_eq!((alarm.data["report"].as_str(), alarm.data["reason"].as_str()), (Some("tip"), Some("no_location")));

    assert!(matches!(
        s.place_report("tip", 91.0, 118.5, "desk").await,
        Err(StoreError::InvalidInput { field: "lat", .. })
    ));
    let placed = s.place_report("tip", 36.5, 118.5, "desk").await.unwrap();
    assert_eq!((placed.point(), placed.status), (Some((36.5, 118.5)), ReportStatus::New));
    assert_eq!(s.report("tip").await.unwrap().point(), Some((36.5, 118.5)));
    let again = s.place_report("tip", 36.6, 118.6, "desk").await.unwrap_err();
    assert!(matches!(again, StoreError::Conflict { .. }), "placed once: {again:?}");
    assert!(matches!(s.place_report("r-none", 36.6, 118.6, "desk").await, Err(StoreError::NotFound { .. })));
    let types: Vec<String> = s.events_after(0, 100).await.unwrap().into_iter().map(|e| e.r#type).collect();
    assert!(
        types.ends_with(&["report.located".into(), "report.updated".into(), "report.dispatch_requested".into()]),
        "{types:?}"
    );
    let ledger = s.ledger_entries(0, 100).await.unwrap();
    let located = ledger.iter().find(|e| e.kind == "report.located").unwrap();
    assert_eq!((located.actor.as_str(), located.body["lat_e6"].as_i64()), ("desk", Some(36_500_000)));
    let escalated = ledger.iter().find(|e| e.kind == "report.escalated").unwrap();
    assert_eq!(escalated.body["reason"], "no_location");
    s.offer(offer("tip", "dA"), tell).await.unwrap();
    assert!(s.ledger_verify(|_, _| {}).await.unwrap().is_empty(), "the chain holds");
}

async fn one_dispatcher_holds_the_lock(db: &TestDb) {
    let first = db.store.try_dispatch_lock().await.unwrap().expect("the first process becomes the dispatcher");
    // A second process on the same database.
    let other = jiandu_store::Store::connect(&db.url).await.unwrap();
    match db.store.backend() {
        jiandu_store::Backend::Postgres => {
            assert!(other.try_dispatch_lock().await.unwrap().is_none(), "only one holds the lock");
            let mut first = first;
            first.check().await.unwrap();
            drop(first); // the holder dies: its connection closes and the lock is free
            let mut taken = None;
            for _ in 0..100 {
                taken = other.try_dispatch_lock().await.unwrap();
                if taken.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            assert!(taken.is_some(), "the standby takes over");
        }
        jiandu_store::Backend::Sqlite => {
            // One process owns a SQLite file; the lock is only a formality there.
            assert!(other.try_dispatch_lock().await.unwrap().is_some());
            drop(first);
        }
    }
    other.close().await;
}

async fn phone_messages_commit_with_the_change_and_only_with_it(db: &TestDb) {
    let s = &db.store;
    let body = |m: &jiandu_store::OutboxPhoneMessage| serde_json::from_str::<Value>(&m.body).unwrap();
    s.insert_report(report("p1", 1)).await.unwrap();
    let (a, _) = s.offer(offer("p1", "dA"), tell).await.unwrap();
    let queued = s.unpublished_phone_messages(10).await.unwrap();
    assert_eq!(queued.len(), 1, "the offer wrote its phone message");
    assert_eq!(queued[0].topic(), "jd/v1/dev/dA/inbox/assignment");
    assert_eq!(body(&queued[0])["assignment_id"], a.id.as_str());
    assert_eq!(body(&queued[0])["report"]["id"], "p1");

    // A refused offer (device busy) and a failing message builder leave nothing behind.
    s.insert_report(report("p2", 1)).await.unwrap();
    assert!(matches!(s.offer(offer("p2", "dA"), tell).await, Err(StoreError::Conflict { .. })));
    let bad = |_: &StoredReport, _: &Assignment| PhoneMessage::new("d/B", "assignment", &json!({}));
    assert!(matches!(s.offer(offer("p2", "dB"), bad).await, Err(StoreError::InvalidInput { field: "device", .. })));
    assert!(s.report_assignments("p2").await.unwrap().is_empty(), "the offer rolled back with its message");
    assert_eq!(s.unpublished_phone_messages(10).await.unwrap().len(), 1);
    let huge = "x".repeat(jiandu_store::MAX_PHONE_MESSAGE_BYTES);
    assert!(matches!(PhoneMessage::new("dA", "notice", &huge), Err(StoreError::InvalidInput { field: "body", .. })));

    // A withdrawal tells the phone once; asking for the same state again tells nobody.
    let note = notice(&a).unwrap();
    let t = s.transition(&a.id, None, AssignmentState::Cancelled, "desk", None, Some(note.clone())).await.unwrap();
    assert!(t.changed);
    let again = s.transition(&a.id, None, AssignmentState::Cancelled, "desk", None, Some(note)).await.unwrap();
    assert!(!again.changed);
    let queued = s.unpublished_phone_messages(10).await.unwrap();
    assert_eq!(queued.iter().map(|m| m.kind.as_str()).collect::<Vec<_>>(), ["assignment", "notice"], "in order");
    assert!(queued[0].seq < queued[1].seq);

    // Cancelling a report tells each withdrawn phone.
    let (b, _) = s.offer(offer("p2", "dB"), tell).await.unwrap();
    s.cancel_report("p2", "desk", None, notice).await.unwrap();
    let queued = s.unpublished_phone_messages(10).await.unwrap();
    assert_eq!(queued.len(), 4);
    assert_eq!((queued[3].device.as_str(), queued[3].kind.as_str()), ("dB", "notice"));
    assert_eq!(body(&queued[3])["text"], format!("assignment {} withdrawn", b.id));

    // Phone messages are not events: the event stream never carries them.
    let events = s.events_after(0, 1000).await.unwrap();
    assert!(events.iter().all(|e| !e.topic().contains("/inbox/")));
    assert!(events.iter().all(|e| e.data.get("assignment_id").is_none() && e.data.get("text").is_none()));

    // Marked after the broker's PUBACK; pruned only once published and old enough.
    let seqs: Vec<i64> = queued.iter().take(3).map(|m| m.seq).collect();
    s.mark_phone_messages_published(&seqs).await.unwrap();
    let left = s.unpublished_phone_messages(10).await.unwrap();
    assert_eq!(left.iter().map(|m| m.seq).collect::<Vec<_>>(), [queued[3].seq]);
    assert_eq!(s.prune_phone_messages(now_ms() - 60_000).await.unwrap(), 0, "published just now: kept");
    assert_eq!(s.prune_phone_messages(now_ms() + 1).await.unwrap(), 3, "old published rows go");
    assert_eq!(s.unpublished_phone_messages(10).await.unwrap().len(), 1, "unpublished rows are never pruned");

    // Relays of two processes sharing the database: a claimed row goes to one of them only,
    // rows claimed by nobody to whoever asks, and the claim lapses for a relay that died.
    s.offer(offer("p1", "dC"), tell).await.unwrap();
    let (first, second) = tokio::join!(s.claim_phone_messages(10), s.claim_phone_messages(10));
    let (first, second) = (first.unwrap(), second.unwrap());
    let mut all: Vec<i64> = first.iter().chain(&second).map(|m| m.seq).collect();
    all.sort();
    assert_eq!(all.len(), 2, "each unpublished row claimed once: {first:?} {second:?}");
    all.dedup();
    assert_eq!(all.len(), 2, "no row claimed twice");
    assert!(s.claim_phone_messages(10).await.unwrap().is_empty(), "claimed rows are not handed out again");
    // The claiming relay died: once its claim lapses, another relay takes the rows over.
    sqlx::query("UPDATE phone_messages SET claimed_until = 1").execute(s.pool()).await.unwrap();
    assert_eq!(s.claim_phone_messages(10).await.unwrap().len(), 2);
}
