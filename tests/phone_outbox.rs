//! The phone outbox (issue 14): an offer committed while no relay runs (the process that made it
//! died, or the broker was away) still reaches the phone, exactly once, when a relay starts; a
//! relay started again afterwards sends nothing twice. A real `jiandu serve` is the broker, the
//! phone a rumqttc client over TCP, the outbox a real SQLite or PostgreSQL database.

mod common;

use std::time::Duration;

use common::{Db, InboxPhone, TestApp};
use jiandu_broker::BrokerEndpoint;
use jiandu_store::{NewOffer, NewReport, ReportSource, Store, now_ms};
use rumqttc::{Event, Packet};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Inbox messages (topic, JSON) the phone receives, from a task driving its connection.
fn inbox(phone: InboxPhone) -> mpsc::UnboundedReceiver<(String, Value)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (client, mut events) = (phone.client, phone.events);
    tokio::spawn(async move {
        let _connection_stays_open = client;
        while let Ok(e) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                tx.send((p.topic.clone(), serde_json::from_slice(&p.payload).unwrap_or(Value::Null))).ok();
            }
        }
    });
    rx
}

/// Everything that arrives within `quiet`.
async fn arrivals(rx: &mut mpsc::UnboundedReceiver<(String, Value)>, quiet: Duration) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, rx.recv()).await {
        out.push(m);
    }
    out
}

async fn an_offer_committed_without_a_relay_arrives_once_when_one_starts(outbox_db: String) {
    let app = TestApp::spawn(Db::Sqlite).await;
    let phone = InboxPhone::start(&app, "王五", |_| {}).await;
    let device = phone.id.clone();
    let mut rx = inbox(phone);
    let svc = app.cli(&["broker", "service-account", "outbox-test"]);
    let endpoint = BrokerEndpoint {
        host: app.mqtt_host.clone(),
        port: app.mqtt_port,
        username: svc["username"].as_str().unwrap().to_owned(),
        password: svc["password"].as_str().unwrap().to_owned(),
        tls: None,
    };

    // The dispatcher's process commits an offer, then dies before anything is published.
    let store = Store::connect(&outbox_db).await.unwrap();
    let report = NewReport {
        id: "tip-outbox".into(),
        source: ReportSource::Integration,
        origin: "12345-hotline".into(),
        kind: "official-car".into(),
        text: "公车停在饭店门口".into(),
        lat: Some(36.5),
        lon: Some(118.5),
        ts: now_ms(),
        plate: None,
        needs: 1,
    };
    store.insert_report(report).await.unwrap();
    let offer = NewOffer {
        report_id: "tip-outbox".into(),
        device_id: device.clone(),
        distance_m: 120.0,
        respond_by: now_ms() + 60_000,
        actor: "dispatcher".into(),
    };
    let (a, stored) = store.offer(offer, jiandu_dispatcher::offer_message).await.unwrap();
    let expected = serde_json::to_value(jiandu_dispatcher::offer_payload(&stored, &a).unwrap()).unwrap();
    assert_eq!(store.unpublished_phone_messages(10).await.unwrap().len(), 1, "the offer waits in the outbox");
    assert!(arrivals(&mut rx, Duration::from_millis(300)).await.is_empty(), "nothing is sent without a relay");

    // A relay starts (the restarted process, or another one): the phone gets the offer.
    let stop = CancellationToken::new();
    let relay = tokio::spawn(jiandu_broker::client::run_outbox_relay(store.clone(), endpoint.clone(), stop.clone()));
    let (topic, body) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("the offer never arrived; server log:\n{}", app.log()))
        .unwrap();
    assert_eq!(topic, format!("jd/v1/dev/{device}/inbox/assignment"));
    assert_eq!(body, expected, "the payload the dispatcher built, byte for byte");
    assert_eq!(body["assignment_id"], a.id.as_str());
    // Marked only after the PUBACK.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store.unpublished_phone_messages(10).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the row was never marked published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    relay.await.unwrap();

    // Another relay on the same outbox later: nothing is sent twice.
    let stop = CancellationToken::new();
    let relay = tokio::spawn(jiandu_broker::client::run_outbox_relay(store.clone(), endpoint, stop.clone()));
    let later = arrivals(&mut rx, Duration::from_millis(800)).await;
    assert!(later.is_empty(), "delivered exactly once, got again: {later:?}");
    stop.cancel();
    relay.await.unwrap();
    app.stop();
}

#[tokio::test]
async fn an_offer_committed_without_a_relay_arrives_once_when_one_starts_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    an_offer_committed_without_a_relay_arrives_once_when_one_starts(url).await;
}

#[tokio::test]
async fn an_offer_committed_without_a_relay_arrives_once_when_one_starts_postgres() {
    an_offer_committed_without_a_relay_arrives_once_when_one_starts(common::fresh_postgres_db().await).await;
}
