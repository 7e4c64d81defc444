//! Positions: idempotent history, live position never moving backwards, presence, stale, prune.

use jiandu_store::PositionRow;

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    history_is_idempotent_and_live_follows_the_newest_point,
    presence_transitions_are_recorded_once_with_events,
    silent_online_devices_become_stale_until_they_report,
    history_is_pruned_oldest_first_in_chunks,
    devices_are_listed_with_their_live_state,
    a_batch_is_stored_exactly_whatever_its_size_and_content,
);

fn point(dev: &str, ts: i64, lat: f64) -> PositionRow {
    PositionRow {
        device_id: dev.into(),
        ts,
        lat,
        lon: 118.5,
        acc: Some(5.0),
        spd: None,
        hdg: Some(90.0),
        alt: None,
        bat: Some(80.0),
        duty: Some("on".into()),
    }
}

async fn history_is_idempotent_and_live_follows_the_newest_point(db: &TestDb) {
    let s = &db.store;
    let t0 = 1_780_000_000_000;
    let batch: Vec<_> = (0..1200).map(|i| point("da", t0 + i * 1000, 36.0 + i as f64 * 1e-5)).collect();
    assert_eq!(s.store_heartbeats(&batch, t0 + 2_000_000).await.unwrap(), 1200);
    // The same points again (a phone re-sending after a lost ack) are stored once.
    assert_eq!(s.store_heartbeats(&batch[1000..], t0 + 2_000_001).await.unwrap(), 0);
    assert_eq!(s.history_count(Some("da")).await.unwrap(), 1200);
    let live = s.live_position("da").await.unwrap().unwrap();
    assert_eq!(live.position.as_ref().unwrap().ts, t0 + 1199 * 1000);

    // A late, out-of-order backlog is stored but never moves the live position backwards.
    let backlog = vec![point("da", t0 - 5000, 10.0), point("da", t0 - 9000, 11.0), point("db", t0, 12.0)];
    assert_eq!(s.store_heartbeats(&backlog, t0 + 3_000_000).await.unwrap(), 3);
    let live = s.live_position("da").await.unwrap().unwrap();
    assert_eq!(live.position.as_ref().unwrap().ts, t0 + 1199 * 1000);
    assert_eq!(live.last_seen, Some(t0 + 3_000_000), "last_seen follows arrival, not fix time");
    let newer = vec![point("da", t0 + 5_000_000, 37.5)];
    s.store_heartbeats(&newer, t0 + 5_000_001).await.unwrap();
    let live = s.live_position("da").await.unwrap().unwrap();
    assert_eq!(live.position.as_ref().unwrap().lat, 37.5);
    assert_eq!(live.position.as_ref().unwrap().duty.as_deref(), Some("on"));

    let track = s.track("da", t0 - 10_000, t0 + 10_000, 100).await.unwrap();
    assert_eq!(
        track.iter().map(|p| p.ts).collect::<Vec<_>>(),
        vec![
            t0 - 9000,
            t0 - 5000,
            t0,
            t0 + 1000,
            t0 + 2000,
            t0 + 3000,
            t0 + 4000,
            t0 + 5000,
            t0 + 6000,
            t0 + 7000,
            t0 + 8000,
            t0 + 9000,
            t0 + 10000
        ]
    );
    let all = s.live_positions().await.unwrap();
    assert_eq!(all.iter().map(|l| l.device_id.as_str()).collect::<Vec<_>>(), vec!["da", "db"]);
}

async fn presence_transitions_are_recorded_once_with_events(db: &TestDb) {
    let s = &db.store;
    assert!(s.set_presence("dp", true, 1000).await.unwrap().is_some());
    assert!(s.set_presence("dp", true, 2000).await.unwrap().is_none(), "no change, no event");
    let change = s.set_presence("dp", false, 3000).await.unwrap().unwrap();
    assert!(!change.online);
    let live = s.live_position("dp").await.unwrap().unwrap();
    assert!(!live.online);
    assert!(live.position.is_none());
    let events = s.events_after(0, 10).await.unwrap();
    let types: Vec<_> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, vec!["device.online", "device.offline"]);
    assert_eq!(events[1].data["device"], "dp");
}

async fn silent_online_devices_become_stale_until_they_report(db: &TestDb) {
    let s = &db.store;
    s.set_presence("ds", true, 1000).await.unwrap();
    s.store_heartbeats(&[point("ds", 1_780_000_000_000, 36.5)], 5000).await.unwrap();
    assert!(s.mark_stale(4000).await.unwrap().is_empty(), "seen after the cut-off");
    assert_eq!(s.mark_stale(6000).await.unwrap(), vec!["ds".to_owned()]);
    assert!(s.mark_stale(7000).await.unwrap().is_empty(), "reported once");
    assert!(s.live_position("ds").await.unwrap().unwrap().stale);
    s.store_heartbeats(&[point("ds", 1_780_000_001_000, 36.5)], 8000).await.unwrap();
    assert!(!s.live_position("ds").await.unwrap().unwrap().stale, "a heartbeat clears stale");
    assert!(s.events_after(0, 10).await.unwrap().iter().any(|e| e.r#type == "device.stale"));
}

async fn history_is_pruned_oldest_first_in_chunks(db: &TestDb) {
    let s = &db.store;
    for dev in ["p1", "p2", "p3"] {
        let pts: Vec<_> = (0..10).map(|i| point(dev, 1_000_000 + i * 1000, 36.0)).collect();
        s.store_heartbeats(&pts, 2_000_000).await.unwrap();
    }
    // 15 points are older than 1_005_000 (ts 1_000_000..=1_004_000 of each device).
    assert_eq!(s.prune_history(1_005_000, 10).await.unwrap(), 10);
    assert_eq!(s.history_count(None).await.unwrap(), 20);
    // The oldest went first: every device lost its points up to 1_002_000 and one more device
    // its 1_003_000 point.
    for dev in ["p1", "p2", "p3"] {
        assert!(s.track(dev, 0, 1_002_000, 10).await.unwrap().is_empty(), "{dev}");
    }
    assert_eq!(s.prune_history(1_005_000, 10).await.unwrap(), 5);
    assert_eq!(s.prune_history(1_005_000, 10).await.unwrap(), 0);
    assert_eq!(s.history_count(None).await.unwrap(), 15);
    for dev in ["p1", "p2", "p3"] {
        let left: Vec<i64> = s.track(dev, 0, i64::MAX, 100).await.unwrap().iter().map(|p| p.ts).collect();
        assert_eq!(left, (5..10).map(|i| 1_000_000 + i * 1000).collect::<Vec<_>>(), "{dev}");
    }
}

async fn devices_are_listed_with_their_live_state(db: &TestDb) {
    let s = &db.store;
    let (a, _) = s.create_device("A", None).await.unwrap();
    let (b, _) = s.create_device("B", None).await.unwrap();
    s.store_heartbeats(&[point(&a.id, 1_780_000_000_000, 36.6)], 1_780_000_000_500).await.unwrap();
    s.set_presence(&a.id, true, 1_780_000_000_100).await.unwrap();
    let all = s.devices_with_live("", 10).await.unwrap();
    let mut ids = vec![a.id.clone(), b.id.clone()];
    ids.sort();
    assert_eq!(all.iter().map(|(d, _)| d.id.clone()).collect::<Vec<_>>(), ids);
    let (_, live_a) = all.iter().find(|(d, _)| d.id == a.id).unwrap();
    let live_a = live_a.as_ref().unwrap();
    assert!(live_a.online);
    assert_eq!(live_a.position.as_ref().unwrap().lat, 36.6);
    let (_, live_b) = all.iter().find(|(d, _)| d.id == b.id).unwrap();
    assert!(live_b.is_none(), "a device that never reported has no live row");
    let page = s.devices_with_live(&ids[0], 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].0.id, ids[1]);
}

/// Values must come back bit for bit (absent fields absent, awkward floats exact, text that
/// means something in PostgreSQL's array literals or SQL), duplicates inside one batch are
/// stored once, and size is no limit.
async fn a_batch_is_stored_exactly_whatever_its_size_and_content(db: &TestDb) {
    let s = &db.store;
    let t0 = 1_780_000_000_000;
    let odd = PositionRow {
        device_id: "dev.odd-name_1".into(),
        ts: t0,
        lat: -89.999_999_999_9,
        lon: 179.123_456_789_012_3,
        acc: Some(1e-7),
        spd: Some(0.1 + 0.2),
        hdg: None,
        alt: Some(-999.5),
        bat: None,
        duty: None,
    };
    let awkward = PositionRow {
        device_id: r#"q"u\o,t{e}d NULL 'x'"#.into(),
        ts: t0,
        duty: Some(r#"NULL"#.into()),
        ..odd.clone()
    };
    let empty_text = PositionRow { device_id: "e".into(), duty: Some(String::new()), ..odd.clone() };
    let mut batch = vec![odd.clone(), odd.clone(), awkward.clone(), empty_text.clone()];
    batch.extend((0..20_000).map(|i| point(&format!("bulk{}", i % 50), t0 + i, 36.0 + i as f64 * 1e-6)));
    assert_eq!(s.store_heartbeats(&batch, t0 + 1).await.unwrap(), 20_003, "the duplicate is stored once");
    assert_eq!(s.track(&awkward.device_id, t0, t0, 10).await.unwrap(), vec![awkward.clone()]);
    assert_eq!(s.track("e", t0, t0, 10).await.unwrap(), vec![empty_text]);
    assert_eq!(s.track("dev.odd-name_1", t0, t0, 10).await.unwrap(), vec![odd.clone()]);
    let live = s.live_position("dev.odd-name_1").await.unwrap().unwrap();
    assert_eq!(live.position, Some(odd));
    assert_eq!(s.history_count(None).await.unwrap(), 20_003);
    let last = s.track("bulk49", t0, t0 + 20_000, 1000).await.unwrap();
    assert_eq!(last.len(), 400);
    assert_eq!(last[399], point("bulk49", t0 + 19_999, 36.0 + 19_999.0 * 1e-6));
}
