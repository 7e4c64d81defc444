//! Dispatch by hand against a real SQLite store: the rules the web's desk goes through
//! (`jiandu_dispatcher::hand`), each refusal naming its field, and the distance measured the
//! dispatcher's way.

use jiandu_dispatcher::DispatchError;
use jiandu_dispatcher::hand::{self, DEFAULT_RESPOND_WITHIN_S};
use jiandu_dispatcher::index::haversine_m;
use jiandu_store::{NewReport, PositionRow, ReportSource, Store, now_ms};

const SITE: (f64, f64) = (36.51, 118.54);

async fn store(dir: &tempfile::TempDir) -> Store {
    Store::connect(&format!("sqlite://{}", dir.path().join("jiandu.db").display())).await.unwrap()
}

fn report(id: &str) -> NewReport {
    NewReport {
        id: id.into(),
        source: ReportSource::Web,
        origin: "desk1".into(),
        kind: "banquet".into(),
        text: "宴请".into(),
        lat: Some(SITE.0),
        lon: Some(SITE.1),
        ts: now_ms(),
        plate: None,
        needs: 1,
    }
}

fn point(device: &str, lat: f64, lon: f64) -> PositionRow {
    PositionRow {
        device_id: device.into(),
        ts: now_ms(),
        lat,
        lon,
        acc: None,
        spd: None,
        hdg: None,
        alt: None,
        bat: None,
        duty: Some("on".into()),
    }
}

fn field_of(e: DispatchError) -> &'static str {
    match e {
        DispatchError::Invalid { field, .. } => field,
        other => panic!("expected a field error, got {other}"),
    }
}

#[tokio::test]
async fn a_hand_offer_follows_the_dispatchers_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir).await;
    s.insert_report(report("w-1")).await.unwrap();
    let (placed, _) = s.create_device("张三", Some("S001")).await.unwrap();
    let (unplaced, _) = s.create_device("李四", None).await.unwrap();
    let (revoked, _) = s.create_device("王五", None).await.unwrap();
    s.revoke_device(&revoked.id, "test").await.unwrap();
    let (lat, lon) = (36.52, 118.55);
    s.store_heartbeats(&[point(&placed.id, lat, lon), point(&revoked.id, lat, lon)], now_ms()).await.unwrap();

    // The answer window is bounded.
    for bad in [0, -5, 86_401] {
        let e = hand::plan_offer(&s, "w-1", &placed.id, Some(bad), "desk1").await.unwrap_err();
        assert_eq!(field_of(e), "respond_within_s", "{bad}");
    }
    // Unknown, revoked and unplaced devices are refused, naming the device.
    for device in ["dnosuchdevice", revoked.id.as_str(), unplaced.id.as_str()] {
        let e = hand::plan_offer(&s, "w-1", device, None, "desk1").await.unwrap_err();
        assert_eq!(field_of(e), "device", "{device}");
    }
    // An unknown report is the store's "not found".
    let e = hand::plan_offer(&s, "nope", &placed.id, None, "desk1").await.unwrap_err();
    assert!(matches!(e, DispatchError::Store(jiandu_store::StoreError::NotFound { .. })), "{e}");

    // A good one: measured with the dispatcher's great-circle distance, default window 60 s.
    let before = now_ms();
    let plan = hand::plan_offer(&s, "w-1", &placed.id, None, "desk1").await.unwrap();
    assert_eq!(plan.offer.distance_m, haversine_m(SITE.0, SITE.1, lat, lon));
    assert!((1_000.0..2_000.0).contains(&plan.offer.distance_m), "{}", plan.offer.distance_m);
    let window = plan.offer.respond_by - before;
    assert!((DEFAULT_RESPOND_WITHIN_S * 1000..=DEFAULT_RESPOND_WITHIN_S * 1000 + 5_000).contains(&window), "{window}");
    assert_eq!((plan.offer.actor.as_str(), plan.report.id.as_str()), ("desk1", "w-1"));
    s.close().await;
}
