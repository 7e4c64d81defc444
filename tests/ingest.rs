//! Heartbeat ingest end to end: real `jiandu serve`, phones as rumqttc clients over TCP, results
//! read back through the REST API (and thereby the real database).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Db, TestApp, connect, until};
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use serde_json::{Value, json};

/// A fixed, plausible epoch-ms base time (2026-06-01).
const T0: i64 = 1_780_272_000_000;

fn hb(ts: i64, lat: f64) -> Value {
    json!({"ts": ts, "lat": lat, "lon": 118.54, "acc": 8.0, "spd": 1.2, "hdg": 45.0, "bat": 77.0, "duty": "on"})
}

/// Waits for `inbox/ack` with `hb_upto >= upto`.
async fn acked_upto(events: &mut rumqttc::EventLoop, upto: i64) {
    until(events, |p| match p {
        Packet::Publish(p) if p.topic.ends_with("/inbox/ack") => {
            let v: Value = serde_json::from_slice(&p.payload).ok()?;
            (v["hb_upto"].as_i64()? >= upto).then_some(())
        }
        _ => None,
    })
    .await
}

async fn phone(app: &TestApp, name: &str) -> (String, AsyncClient, rumqttc::EventLoop) {
    let (id, token) = app.add_device(name);
    let (client, mut events) = connect(app.options(&id, Some((&id, &token)))).await.unwrap();
    client.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    (id, client, events)
}

async fn heartbeats_reach_live_history_and_rest(db: Db) {
    let app = TestApp::spawn(db).await;
    let (a, pa, mut ea) = phone(&app, "A").await;
    let (b, pb, mut eb) = phone(&app, "B").await;

    for i in 0..5 {
        pa.publish(
            format!("jd/v1/dev/{a}/hb"),
            QoS::AtLeastOnce,
            false,
            hb(T0 + i * 1000, 36.50 + i as f64 * 0.001).to_string(),
        )
        .await
        .unwrap();
    }
    acked_upto(&mut ea, T0 + 4000).await;

    // An offline backlog, out of order, newest in the middle; then one older straggler.
    let backlog: Vec<Value> = [3, 9, 1, 7, 5].iter().map(|k| hb(T0 + k * 60_000, 36.60 + *k as f64 * 0.001)).collect();
    pb.publish(format!("jd/v1/dev/{b}/hb"), QoS::AtLeastOnce, false, Value::Array(backlog).to_string()).await.unwrap();
    acked_upto(&mut eb, T0 + 9 * 60_000).await;
    pb.publish(format!("jd/v1/dev/{b}/hb"), QoS::AtLeastOnce, false, hb(T0, 10.0).to_string()).await.unwrap();
    acked_upto(&mut eb, T0).await;

    let devices = app.get_json("/api/v1/devices").await;
    let items = devices["items"].as_array().unwrap();
    let find = |id: &str| items.iter().find(|d| d["id"] == id).cloned().unwrap();
    let da = find(&a);
    assert_eq!(da["position"]["ts"], T0 + 4000);
    assert_eq!(da["position"]["lat"], 36.504);
    assert_eq!(da["duty"], "on");
    let db_ = find(&b);
    assert_eq!(db_["position"]["ts"], T0 + 9 * 60_000, "the newest point is live, not the last one sent");
    assert_eq!(db_["position"]["lat"], 36.609);

    let track = app.get_json(&format!("/api/v1/devices/{b}/track?from={}&to={}", T0 - 1, T0 + 3_600_000)).await;
    assert_eq!(track["type"], "Feature");
    assert_eq!(track["geometry"]["type"], "LineString");
    let times: Vec<i64> =
        track["properties"]["times"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    assert_eq!(times, vec![T0, T0 + 60_000, T0 + 180_000, T0 + 300_000, T0 + 420_000, T0 + 540_000]);
    assert_eq!(track["geometry"]["coordinates"][0], json!([118.54, 10.0]));
}

#[tokio::test]
async fn heartbeats_reach_live_history_and_rest_sqlite() {
    heartbeats_reach_live_history_and_rest(Db::Sqlite).await;
}

#[tokio::test]
async fn heartbeats_reach_live_history_and_rest_postgres() {
    heartbeats_reach_live_history_and_rest(Db::Postgres).await;
}

#[tokio::test]
async fn malformed_heartbeats_get_a_field_error_and_valid_ones_are_stored() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (a, pa, mut ea) = phone(&app, "A").await;
    let topic = format!("jd/v1/dev/{a}/hb");
    pa.publish(&topic, QoS::AtLeastOnce, false, hb(T0, 36.5).to_string()).await.unwrap();
    let bad = json!([hb(T0 + 1000, 36.5), hb(T0 + 2000, 36.5), hb(T0 + 3000, 36.5), {"ts": T0 + 4000, "lat": 123.4, "lon": 118.5}]);
    pa.publish(&topic, QoS::AtLeastOnce, false, bad.to_string()).await.unwrap();
    pa.publish(&topic, QoS::AtLeastOnce, false, "{not json").await.unwrap();
    pa.publish(&topic, QoS::AtLeastOnce, false, hb(T0 + 5000, 36.7).to_string()).await.unwrap();

    let error = until(&mut ea, |p| match p {
        Packet::Publish(p) if p.topic.ends_with("/inbox/error") => serde_json::from_slice::<Value>(&p.payload).ok(),
        _ => None,
    })
    .await;
    assert_eq!(error["topic"], topic);
    assert_eq!(error["error"], "hb[3].lat: must be within -90..=90, got 123.4");
    acked_upto(&mut ea, T0 + 5000).await;

    let track = app.get_json(&format!("/api/v1/devices/{a}/track?from={}&to={}", T0 - 1, T0 + 10_000)).await;
    let times: Vec<i64> =
        track["properties"]["times"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    assert_eq!(times, vec![T0, T0 + 5000], "the valid points around the bad messages are stored");

    let metrics = reqwest::get(format!("{}/metrics", app.http)).await.unwrap().text().await.unwrap();
    let rejected: f64 = metrics
        .lines()
        .find(|l| l.starts_with("jiandu_ingest_rejected_total") && l.contains("invalid"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert_eq!(rejected, 2.0, "both malformed messages counted:\n{metrics}");
}

#[tokio::test]
async fn an_owntracks_location_is_stored_with_converted_units() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (a, pa, mut ea) = phone(&app, "OwnTracks phone").await;
    let msg = json!({"_type": "location", "lat": 36.52, "lon": 118.55, "tst": T0 / 1000, "vel": 36, "acc": 12, "batt": 64, "tid": "zs"});
    pa.publish(format!("owntracks/{a}/phone"), QoS::AtLeastOnce, false, msg.to_string()).await.unwrap();
    acked_upto(&mut ea, T0).await;
    let devices = app.get_json("/api/v1/devices").await;
    let d = devices["items"].as_array().unwrap().iter().find(|d| d["id"] == a.as_str()).cloned().unwrap();
    assert_eq!(d["position"]["ts"], T0, "tst seconds became milliseconds");
    assert_eq!(d["position"]["spd"], 10.0, "36 km/h became 10 m/s");
    assert_eq!(d["position"]["bat"], 64.0);
}

#[tokio::test]
async fn presence_and_last_will_flip_online_state_with_events() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (obs, obs_token) = app.add_integration("watcher", &["jd/v1/events/#"], &["jd/v1/reports"]);
    let (observer, mut oe) = connect(app.options(&obs, Some((&obs, &obs_token)))).await.unwrap();
    observer.subscribe("jd/v1/events/device", QoS::AtLeastOnce).await.unwrap();
    until(&mut oe, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

    let (id, token) = app.add_device("will phone");
    let mut o = app.options(&id, Some((&id, &token)));
    let presence = format!("jd/v1/dev/{id}/presence");
    o.set_last_will(LastWill::new(&presence, json!({"online": false, "ts": T0}).to_string(), QoS::AtLeastOnce, true));
    let (client, mut events) = connect(o).await.unwrap();
    client.publish(&presence, QoS::AtLeastOnce, true, json!({"online": true, "ts": T0}).to_string()).await.unwrap();
    // Drive the phone until its PUBACK, then cut the connection without DISCONNECT.
    until(&mut events, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;

    let event = |want: &'static str| {
        let id = id.clone();
        move |p: &Packet| match p {
            Packet::Publish(p) => {
                let v: Value = serde_json::from_slice(&p.payload).ok()?;
                (v["type"] == want && v["data"]["device"] == id.as_str()).then_some(v)
            }
            _ => None,
        }
    };
    let online = until(&mut oe, event("device.online")).await;
    assert!(online["id"].as_str().is_some_and(|s| !s.is_empty()));
    drop(events);
    drop(client);
    until(&mut oe, event("device.offline")).await;
    let devices = app.get_json("/api/v1/devices").await;
    let d = devices["items"].as_array().unwrap().iter().find(|d| d["id"] == id.as_str()).cloned().unwrap();
    assert_eq!(d["state"], "offline");
}

/// A phone following DESIGN §3: every point is kept until `inbox/ack` covers it, and everything
/// unconfirmed is re-sent (as one backlog array) after each reconnect and whenever no ack came
/// for a while (a message the broker took but nobody stored, e.g. while the server restarts).
struct ProtocolPhone {
    id: String,
    pending: BTreeMap<i64, Value>,
    generated: Vec<i64>,
}

async fn run_phone(app_host: String, app_port: u16, id: String, token: String, points: usize) -> ProtocolPhone {
    let mut phone = ProtocolPhone { id: id.clone(), pending: BTreeMap::new(), generated: Vec::new() };
    let mut o = rumqttc::MqttOptions::new(&id, app_host, app_port);
    o.set_credentials(&id, &token);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, 2000);
    let topic = format!("jd/v1/dev/{id}/hb");
    let mut tick = tokio::time::interval(Duration::from_millis(4));
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    let mut last_ack = tokio::time::Instant::now();
    let mut connected = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        if phone.generated.len() == points && phone.pending.is_empty() {
            return phone;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "phone {id} never got all points confirmed: generated {}, unconfirmed {}, connected {connected}",
            phone.generated.len(),
            phone.pending.len()
        );
        tokio::select! {
            _ = tick.tick(), if connected && phone.generated.len() < points => {
                let ts = T0 + phone.generated.len() as i64 * 1000;
                let point = hb(ts, 36.5);
                phone.generated.push(ts);
                phone.pending.insert(ts, point.clone());
                client.try_publish(&topic, QoS::AtLeastOnce, false, point.to_string()).ok();
            }
            _ = retry.tick(), if connected && !phone.pending.is_empty() && last_ack.elapsed() > Duration::from_secs(2) => {
                let backlog: Vec<Value> = phone.pending.values().take(1000).cloned().collect();
                client.try_publish(&topic, QoS::AtLeastOnce, false, Value::Array(backlog).to_string()).ok();
            }
            e = events.poll() => match e {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    client.try_subscribe(format!("jd/v1/dev/{id}/inbox/ack"), QoS::AtLeastOnce).ok();
                    let backlog: Vec<Value> = phone.pending.values().take(1000).cloned().collect();
                    if !backlog.is_empty() {
                        client.try_publish(&topic, QoS::AtLeastOnce, false, Value::Array(backlog).to_string()).ok();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(upto) = serde_json::from_slice::<Value>(&p.payload).ok().and_then(|v| v["hb_upto"].as_i64()) {
                        last_ack = tokio::time::Instant::now();
                        phone.pending.retain(|ts, _| *ts > upto);
                        if phone.generated.len() == points && !phone.pending.is_empty() {
                            // Everything generated: re-send what is still unconfirmed.
                            let backlog: Vec<Value> = phone.pending.values().take(1000).cloned().collect();
                            client.try_publish(&topic, QoS::AtLeastOnce, false, Value::Array(backlog).to_string()).ok();
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    connected = false;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_dash_nine_mid_stream_loses_nothing_and_stores_nothing_twice_sqlite() {
    kill_dash_nine_mid_stream_loses_nothing_and_stores_nothing_twice(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_dash_nine_mid_stream_loses_nothing_and_stores_nothing_twice_postgres() {
    kill_dash_nine_mid_stream_loses_nothing_and_stores_nothing_twice(Db::Postgres).await;
}

async fn kill_dash_nine_mid_stream_loses_nothing_and_stores_nothing_twice(db: Db) {
    let mut app = TestApp::spawn(db).await;
    const PHONES: usize = 4;
    const POINTS: usize = 600;
    let mut tasks = Vec::new();
    for i in 0..PHONES {
        let (id, token) = app.add_device(&format!("phone {i}"));
        tasks.push(tokio::spawn(run_phone(app.mqtt_host.clone(), app.mqtt_port, id, token, POINTS)));
    }
    // Let some points through, then kill the whole server without warning, twice.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        app.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.restart();
    }
    let mut phones = Vec::new();
    for t in tasks {
        match t.await {
            Ok(p) => phones.push(p),
            Err(e) => panic!("{e}; server log:\n{}", app.log()),
        }
    }
    for phone in phones {
        let track =
            app.get_json(&format!("/api/v1/devices/{}/track?from={}&to={}", phone.id, T0 - 1, T0 + 10_000_000)).await;
        let times: Vec<i64> =
            track["properties"]["times"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
        assert_eq!(times.len(), POINTS, "phone {}: every generated point stored exactly once", phone.id);
        assert_eq!(times, phone.generated, "phone {}: the stored points are exactly the generated ones", phone.id);
    }
    let log = app.log();
    assert!(log.matches("jiandu running").count() >= 3, "the server really restarted twice:\n{log}");
}
