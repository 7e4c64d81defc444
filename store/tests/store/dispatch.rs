//! Reports and assignments: de-duplication, the assignment state machine, the rules the schema
//! enforces (never the same device twice per report, one open assignment per device), escalation,
//! cancellation, and the events, timeline and ledger every change leaves behind.

use jiandu_store::{AssignmentState, NewOffer, NewReport, ReportSource, ReportStatus, StoreError, now_ms};

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    reports_are_stored_once_and_listed,
    assignments_follow_the_state_machine,
    escalation_and_cancellation,
    one_dispatcher_holds_the_lock
);

fn report(id: &str, needs: i64) -> NewReport {
    NewReport {
        id: id.into(),
        source: ReportSource::Device,
        origin: "dphone".into(),
        kind: "official-car".into(),
        text: "公车停在饭店门口".into(),
        lat: 36.51,
        lon: 118.54,
        ts: 1_750_000_000_000,
        plate: Some("鲁G·12345".into()),
        needs,
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
    let (a, r) = s.offer(offer("r1", "dA")).await.unwrap();
    assert_eq!((a.status, r.status), (AssignmentState::Offered, ReportStatus::Dispatching));
    assert_eq!(s.open_offers().await.unwrap().len(), 1);
    assert_eq!(s.busy_devices().await.unwrap(), ["dA"]);
    // Busy: dA cannot be offered r2 while it holds r1.
    let busy = s.offer(offer("r2", "dA")).await.unwrap_err();
    assert!(matches!(&busy, StoreError::Conflict { reason } if reason.contains("busy")), "{busy}");
    // Declined: dA is free, r1 goes back to new, and dA is never offered r1 again.
    let t = s.transition(&a.id, Some("dA"), AssignmentState::Declined, "dA", Some("在开会")).await.unwrap();
    assert!(t.changed);
    assert_eq!(t.report.status, ReportStatus::New);
    let again = s.transition(&a.id, Some("dA"), AssignmentState::Declined, "dA", None).await.unwrap();
    assert!(!again.changed, "a re-sent answer changes nothing");
    let twice = s.offer(offer("r1", "dA")).await.unwrap_err();
    assert!(matches!(&twice, StoreError::Conflict { reason } if reason.contains("already offered")), "{twice}");
    let (b, _) = s.offer(offer("r1", "dB")).await.unwrap();
    // Another device cannot answer dB's assignment.
    assert!(matches!(
        s.transition(&b.id, Some("dA"), AssignmentState::Accepted, "dA", None).await,
        Err(StoreError::NotFound { .. })
    ));
    let t = s.transition(&b.id, Some("dB"), AssignmentState::Accepted, "dB", None).await.unwrap();
    assert_eq!(t.report.status, ReportStatus::Assigned);
    let full = s.offer(offer("r1", "dC")).await.unwrap_err();
    assert!(matches!(full, StoreError::Conflict { .. }), "a one-inspector report that is assigned takes no more");
    let bad = s.transition(&b.id, Some("dB"), AssignmentState::Declined, "dB", None).await.unwrap_err();
    assert!(matches!(&bad, StoreError::Conflict { reason } if reason.contains("accepted")), "{bad}");
    s.transition(&b.id, Some("dB"), AssignmentState::Arrived, "dB", None).await.unwrap();
    let t = s.transition(&b.id, Some("dB"), AssignmentState::Completed, "dB", None).await.unwrap();
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
    let (a, _) = s.offer(offer("two", "dA")).await.unwrap();
    s.transition(&a.id, None, AssignmentState::Accepted, "dA", None).await.unwrap();
    assert!(s.escalate("two", 5000.0, "dispatcher").await.unwrap(), "one of two slots is empty: escalate");
    assert!(!s.escalate("two", 5000.0, "dispatcher").await.unwrap(), "an escalation alarms once");
    assert_eq!(s.report("two").await.unwrap().status, ReportStatus::Unassigned);
    let alarms: Vec<_> = s.events_after(0, 100).await.unwrap().into_iter().filter(|e| e.kind == "alarm").collect();
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].data["report"], "two");
    assert_eq!(alarms[0].data["filled"], 1);
    // Staff ask for the nearest again, then cancel.
    assert_eq!(s.redispatch("two", "desk").await.unwrap().status, ReportStatus::New);
    assert_eq!(s.reports_waiting(now_ms() + 1).await.unwrap().len(), 1);
    let (b, _) = s.offer(offer("two", "dB")).await.unwrap();
    let (r, withdrawn) = s.cancel_report("two", "desk", Some("duplicate tip")).await.unwrap();
    assert_eq!(r.status, ReportStatus::Cancelled);
    let mut ids: Vec<_> = withdrawn.iter().map(|a| a.id.clone()).collect();
    ids.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(s.busy_devices().await.unwrap().is_empty());
    assert!(matches!(s.offer(offer("two", "dC")).await, Err(StoreError::Conflict { .. })));
    assert!(matches!(s.cancel_report("two", "desk", None).await, Err(StoreError::Conflict { .. })));
    let ledger = s.ledger_entries(0, 100).await.unwrap();
    let cancel = ledger.iter().find(|e| e.kind == "report.cancelled").unwrap();
    assert_eq!((cancel.actor.as_str(), cancel.body["reason"].as_str()), ("desk", Some("duplicate tip")));
    assert_eq!(s.report_timeline("two").await.unwrap().last().unwrap().actor, "desk");
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
