//! The event outbox: ordered, unique ids, published marks, resume by seq.

use jiandu_store::NewEvent;
use serde_json::json;

use crate::helpers::TestDb;
use crate::on_both;

on_both!(events_are_ordered_and_marked_published, events_commit_with_the_transaction);

async fn events_are_ordered_and_marked_published(db: &TestDb) {
    let s = &db.store;
    assert_eq!(s.last_event_seq().await.unwrap(), 0);
    let mut ids = Vec::new();
    for i in 0..5 {
        let e = s
            .append_event(NewEvent {
                kind: "device".into(),
                r#type: "device.online".into(),
                data: json!({"device": format!("d{i}")}),
            })
            .await
            .unwrap();
        ids.push((e.seq, e.id));
    }
    assert!(ids.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 != w[1].1));
    let pending = s.unpublished_events(3).await.unwrap();
    assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), ids[..3].iter().map(|x| x.0).collect::<Vec<_>>());
    assert_eq!(pending[1].topic(), "jd/v1/events/device");
    let wire: serde_json::Value = serde_json::from_slice(&pending[1].payload()).unwrap();
    assert_eq!(wire["type"], "device.online");
    assert_eq!(wire["data"]["device"], "d1");
    assert_eq!(wire["id"], ids[1].1.as_str());
    s.mark_events_published(&[ids[0].0, ids[1].0]).await.unwrap();
    let pending = s.unpublished_events(10).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[0].seq, ids[2].0);
    let after = s.events_after(ids[3].0, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].seq, ids[4].0);
    assert_eq!(s.last_event_seq().await.unwrap(), ids[4].0);
    let bad = s.append_event(NewEvent { kind: "a/b".into(), r#type: "x".into(), data: json!({}) }).await;
    assert!(bad.is_err());
}

async fn events_commit_with_the_transaction(db: &TestDb) {
    let s = &db.store;
    let mut tx = s.pool().begin().await.unwrap();
    jiandu_store::Store::append_event_in(
        &mut tx,
        NewEvent { kind: "report".into(), r#type: "report.created".into(), data: json!({"id": "r1"}) },
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert!(s.unpublished_events(10).await.unwrap().is_empty(), "a rolled-back event is not recorded");
}
