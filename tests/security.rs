//! Attacks on the MQTT front (issue 15), each against a real `jiandu serve` over TCP: a phone or
//! integration tries it, is refused or contained, and a victim phone's heartbeats are still
//! stored and acknowledged with `inbox/ack` throughout.

mod common;

use std::time::{Duration, Instant};

use common::{Db, TestApp, connect, drive, until};
use rumqttc::{ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, Packet, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A fixed, plausible epoch-ms base time (2026-06-01).
const T0: i64 = 1_780_272_000_000;

fn hb(ts: i64) -> String {
    json!({"ts": ts, "lat": 36.5, "lon": 118.54, "acc": 8.0, "duty": "on"}).to_string()
}

/// A phone connected and subscribed to its inbox.
type Phone = common::InboxPhone;

async fn phone(app: &TestApp, name: &str) -> Phone {
    Phone::start(app, name, |_| {}).await
}

impl Phone {
    /// Sends a heartbeat at `ts` and waits until ingest has committed it (`inbox/ack`).
    async fn heartbeat_acked(&mut self, ts: i64) {
        self.client.publish(format!("jd/v1/dev/{}/hb", self.id), QoS::AtLeastOnce, false, hb(ts)).await.unwrap();
        until(&mut self.events, |p| match p {
            Packet::Publish(p) if p.topic.ends_with("/inbox/ack") => {
                let v: Value = serde_json::from_slice(&p.payload).ok()?;
                (v["hb_upto"].as_i64()? >= ts).then_some(())
            }
            _ => None,
        })
        .await;
    }
}

/// Stored heartbeat times of a device, read back through the REST API.
async fn stored_times(app: &TestApp, id: &str) -> Vec<i64> {
    let track = app.get_json(&format!("/api/v1/devices/{id}/track?from={}&to={}", T0 - 1, T0 + 86_400_000)).await;
    track["properties"]["times"].as_array().map(|t| t.iter().filter_map(Value::as_i64).collect()).unwrap_or_default()
}

fn suback_codes(p: &Packet) -> Option<Vec<rumqttc::SubscribeReasonCode>> {
    match p {
        Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn share_groups_are_refused_to_devices_and_foreign_integrations() {
    use rumqttc::SubscribeReasonCode::{Failure, Success};
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut victim = phone(&app, "victim").await;
    let mut attacker = phone(&app, "attacker").await;
    let a = attacker.id.clone();

    // The attack of issue 15: join the platform's heartbeat group (and the others) through a
    // filter inside the device's own inbox.
    let groups = [
        "ingest-hb",
        "ingest-presence",
        "ingest-evidence",
        "dispatch-report",
        "dispatch-asg",
        "oversight-lookup",
        "mine",
    ];
    for g in groups {
        attacker.client.subscribe(format!("$share/{g}/jd/v1/dev/{a}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
        let codes = until(&mut attacker.events, suback_codes).await;
        assert_eq!(codes, vec![Failure], "group {g}");
    }

    // An integration may share only under its own name, never in the platform's groups.
    let (name, token) = app.add_integration("city", &["jd/v1/reports", "jd/v1/events/#"], &[]);
    let (integ, mut integ_events) = connect(app.options(&name, Some((&name, &token)))).await.unwrap();
    for (filter, ok) in [
        ("$share/dispatch-tip/jd/v1/reports", false),
        ("$share/ingest-hb/jd/v1/events/#", false),
        ("$share/other/jd/v1/events/#", false),
        ("$share/city-workers/jd/v1/events/#", true),
        ("$share/city/jd/v1/reports", true),
    ] {
        integ.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let codes = until(&mut integ_events, suback_codes).await;
        let expected = if ok { Success(QoS::AtLeastOnce) } else { Failure };
        assert_eq!(codes, vec![expected], "{filter}");
    }
    let integ_task = drive(integ_events);

    // Ingest is not stalled: every one of the victim's heartbeats is stored and acknowledged.
    let attacker_task = drive(attacker.events);
    for i in 0..20 {
        victim.heartbeat_acked(T0 + i * 1000).await;
    }
    let times = stored_times(&app, &victim.id).await;
    assert_eq!(times.len(), 20, "stored: {times:?}");
    attacker_task.abort();
    integ_task.abort();
}

/// A raw MQTT 5 CONNECT frame with a login.
fn v5_connect(client_id: &str, user: &str, pass: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[5, 0xc2, 0, 30, 0]);
    put_str(&mut body, client_id.as_bytes());
    put_str(&mut body, user.as_bytes());
    put_str(&mut body, pass.as_bytes());
    frame(0x10, &body)
}

/// A raw MQTT 5 QoS 0 PUBLISH, with a topic alias property when given.
fn v5_publish(topic: &str, alias: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    match alias {
        Some(a) => body.extend_from_slice(&[3, 0x23, (a >> 8) as u8, a as u8]),
        None => body.push(0),
    }
    body.extend_from_slice(payload);
    frame(0x30, &body)
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut v = body.len();
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Reads one whole frame: its first byte, then the body (the remaining-length field left out).
async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head)).await.expect("answer in time").ok()?;
    let mut len = (head[1] & 0x7f) as usize;
    let mut shift = 7;
    let mut more = head[1] & 0x80 != 0;
    while more {
        let b = s.read_u8().await.ok()?;
        len |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        more = b & 0x80 != 0;
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    let mut out = vec![head[0]];
    out.extend_from_slice(&body);
    Some(out)
}

/// Reads frames until the server closes the connection; returns them.
async fn read_until_closed(s: &mut TcpStream) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(f) = read_frame(s).await {
            frames.push(f);
        }
    })
    .await
    .expect("the server closes the connection");
    frames
}

/// The Topic Alias Maximum property (0x22) of a v5 CONNACK frame.
fn connack_alias_max(f: &[u8]) -> Option<u16> {
    assert_eq!(f[0], 0x20);
    let props_len = f[3] as usize;
    let mut p = &f[4..4 + props_len];
    while let Some((&id, rest)) = p.split_first() {
        let (value, skip) = match id {
            0x22 | 0x21 | 0x13 => (Some(u16::from_be_bytes([rest[0], rest[1]])), 2),
            0x24 | 0x25 | 0x28 | 0x29 | 0x2a => (None, 1),
            0x11 | 0x27 => (None, 4),
            _ => panic!("unexpected CONNACK property 0x{id:02x}"),
        };
        if id == 0x22 {
            return value;
        }
        p = &rest[skip..];
    }
    None
}

#[tokio::test]
async fn topic_aliases_are_bounded_and_never_name_a_forbidden_topic() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut victim = phone(&app, "victim").await;
    let (id, token) = app.add_device("alias abuser");

    let mut s = TcpStream::connect((app.mqtt_host.as_str(), app.mqtt_port)).await.unwrap();
    s.write_all(&v5_connect(&id, &id, &token)).await.unwrap();
    let connack = read_frame(&mut s).await.expect("CONNACK");
    assert_eq!(connack[2], 0, "accepted");
    let max = connack_alias_max(&connack).expect("Topic Alias Maximum advertised");
    assert_eq!(max, jiandu_broker::TOPIC_ALIAS_MAX);

    // An alias set up on a refused topic is not stored: using it is a protocol error.
    s.write_all(&v5_publish(&format!("jd/v1/dev/{id}/inbox/ack"), Some(1), b"{}")).await.unwrap();
    s.write_all(&v5_publish("", Some(1), b"{}")).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert_eq!(frames.last().map(|f| (f[0], f[1])), Some((0xe0, 0x82)), "DISCONNECT protocol error: {frames:?}");

    // Aliases within the maximum work on permitted topics; one beyond it ends the connection.
    let mut s = TcpStream::connect((app.mqtt_host.as_str(), app.mqtt_port)).await.unwrap();
    s.write_all(&v5_connect(&id, &id, &token)).await.unwrap();
    read_frame(&mut s).await.expect("CONNACK");
    s.write_all(&v5_publish(&format!("jd/v1/dev/{id}/hb"), Some(max), hb(T0).as_bytes())).await.unwrap();
    s.write_all(&v5_publish("", Some(max), hb(T0 + 1).as_bytes())).await.unwrap();
    for a in 1..=200u16 {
        s.write_all(&v5_publish(&format!("jd/v1/dev/{id}/hb"), Some(max + a), b"[]")).await.unwrap();
    }
    let frames = read_until_closed(&mut s).await;
    assert_eq!(frames.last().map(|f| (f[0], f[1])), Some((0xe0, 0x94)), "DISCONNECT 0x94: {frames:?}");

    // Both aliased heartbeats were stored; the victim is unaffected.
    victim.heartbeat_acked(T0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_times(&app, &id).await != vec![T0, T0 + 1] {
        assert!(Instant::now() < deadline, "aliased heartbeats stored: {:?}", stored_times(&app, &id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_device_publishes_only_contract_topics_and_retains_only_presence() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::{AsyncClient as C5, Event as E5, MqttOptions as O5};
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut victim = phone(&app, "victim").await;
    let (id, token) = app.add_device("v5 attacker");
    let mut o = O5::new(&id, &app.mqtt_host, app.mqtt_port);
    o.set_credentials(&id, &token);
    o.set_max_packet_size(Some(1 << 20));
    let (c, mut events) = C5::new(o, 64);
    c.subscribe(format!("jd/v1/dev/{id}/inbox/#"), Q5::AtLeastOnce).await.unwrap();

    let p = |t: &str| format!("jd/v1/dev/{id}/{t}");
    let attempts: Vec<(String, bool, Vec<u8>, &str)> = vec![
        (p("junk"), false, b"{}".to_vec(), "wire contract"),
        (p("hb/extra"), false, b"{}".to_vec(), "wire contract"),
        (p("hb"), true, hb(T0).into_bytes(), "only presence may be retained"),
        (p("report"), true, b"{}".to_vec(), "only presence may be retained"),
        (p("presence"), true, vec![b' '; 8 * 1024], "larger than"),
        (p("lookup"), false, vec![b' '; 64 * 1024], "larger than"),
        (p("ev/e1/c/0"), false, vec![0u8; jiandu_broker::acl::MAX_CHUNK_PAYLOAD_BYTES + 1], "larger than"),
    ];
    let mut pending = std::collections::VecDeque::new();
    for (topic, retain, payload, why) in &attempts {
        c.publish(topic, Q5::AtLeastOnce, *retain, payload.clone()).await.unwrap();
        pending.push_back((topic.clone(), *why));
    }
    // Each refusal is a PUBACK 0x87 on the spot; the first is also explained on inbox/error.
    let mut refused = 0;
    let mut explained = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while refused < attempts.len() || explained.is_none() {
        assert!(Instant::now() < deadline, "refused {refused}, explained {explained:?}");
        match tokio::time::timeout(Duration::from_secs(15), events.poll()).await.unwrap().unwrap() {
            E5::Incoming(P5::PubAck(ack)) => {
                assert_eq!(ack.reason, PubAckReason::NotAuthorized, "{:?}", pending.front());
                refused += 1;
            }
            E5::Incoming(P5::Publish(m)) if m.topic.ends_with(b"/inbox/error") => {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                explained = Some(v);
            }
            _ => {}
        }
    }
    let explained = explained.unwrap();
    assert_eq!(explained["topic"], attempts[0].0.as_str());
    assert!(explained["error"].as_str().unwrap().contains(attempts[0].3), "{explained}");

    // A contract topic still goes through, presence may be retained.
    c.publish(p("presence"), Q5::AtLeastOnce, true, br#"{"online":true,"ts":1}"#.to_vec()).await.unwrap();
    let reason = loop {
        if let E5::Incoming(P5::PubAck(ack)) = events.poll().await.unwrap() {
            break ack.reason;
        }
    };
    assert_eq!(reason, PubAckReason::Success);

    // Nothing refused was retained: a fresh subscriber to the device's subtree gets only presence.
    let (obs, obs_token) = app.add_integration("observer", &["jd/v1/dev/#"], &[]);
    let (oc, mut oe) = connect(app.options(&obs, Some((&obs, &obs_token)))).await.unwrap();
    oc.subscribe(format!("jd/v1/dev/{id}/#"), QoS::AtLeastOnce).await.unwrap();
    let mut retained = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(m))) = oe.poll().await {
                retained.push(m.topic.clone());
            }
        }
    })
    .await;
    assert_eq!(retained, vec![p("presence")]);

    for i in 0..5 {
        victim.heartbeat_acked(T0 + i).await;
    }
    assert_eq!(stored_times(&app, &id).await, Vec::<i64>::new(), "the retained hb was refused, not stored");
}

fn refused(r: Result<impl Sized, ConnectionError>) -> ConnectReturnCode {
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusing CONNACK, got error {e}"),
        Ok(_) => panic!("expected a refusing CONNACK, got accepted"),
    }
}

#[tokio::test]
async fn one_account_holds_a_bounded_number_of_sessions() {
    let app = TestApp::spawn_with_config(Db::Sqlite, "max_sessions_per_device = 3").await;
    let mut victim = phone(&app, "victim").await;
    let (id, token) = app.add_device("stolen");
    let mut held = Vec::new();
    for suffix in ["", "-b", "-c"] {
        let cid = format!("{id}{suffix}");
        held.push(connect(app.options(&cid, Some((&id, &token)))).await.expect("within the cap"));
    }
    let code = refused(connect(app.options(&format!("{id}-d"), Some((&id, &token)))).await);
    assert_eq!(code, ConnectReturnCode::ServiceUnavailable, "3.1.1: 3 server unavailable");

    // MQTT 5 gets 0x97 quota exceeded.
    let mut s = TcpStream::connect((app.mqtt_host.as_str(), app.mqtt_port)).await.unwrap();
    s.write_all(&v5_connect(&format!("{id}-e"), &id, &token)).await.unwrap();
    let connack = read_frame(&mut s).await.expect("CONNACK");
    assert_eq!(connack[2], 0x97, "CONNACK 0x97 quota exceeded");

    // A phone reconnecting under its own client id (its old connection died silently) is let in.
    let again = connect(app.options(&id, Some((&id, &token)))).await.expect("reconnect under the same client id");
    // Closing one frees its place.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _d = connect(app.options(&format!("{id}-d"), Some((&id, &token)))).await.expect("room again");
    drop(again);

    for i in 0..3 {
        victim.heartbeat_acked(T0 + i).await;
    }
}

#[tokio::test]
async fn the_first_frame_must_be_a_small_connect() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut victim = phone(&app, "victim").await;
    let addr = (app.mqtt_host.as_str(), app.mqtt_port);

    // A PUBLISH before CONNECT: closed at once, nothing answered.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&frame(0x30, b"\x00\x03a/bhello")).await.unwrap();
    assert!(read_until_closed(&mut s).await.is_empty());

    // A CONNECT announcing 300 KiB is refused from its header, before 300 KiB are buffered.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x10, 0x80, 0xe0, 0x12]).await.unwrap();
    let started = Instant::now();
    assert!(read_until_closed(&mut s).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5), "closed at once, not at the CONNECT timeout");

    // A CONNECT of 5 KiB (a padded client id) is refused too; a normal one still works.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = v5_connect(&"x".repeat(5 * 1024), "u", "p");
    s.write_all(&big).await.ok();
    assert!(read_until_closed(&mut s).await.is_empty());

    for i in 0..3 {
        victim.heartbeat_acked(T0 + i).await;
    }
}

#[tokio::test]
async fn a_qos2_last_will_is_delivered() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut victim = phone(&app, "victim").await;
    let (obs, obs_token) = app.add_integration("observer", &["jd/v1/dev/+/presence"], &[]);
    let (oc, mut oe) = connect(app.options(&obs, Some((&obs, &obs_token)))).await.unwrap();
    oc.subscribe("jd/v1/dev/+/presence", QoS::ExactlyOnce).await.unwrap();
    until(&mut oe, suback_codes).await;

    for (name, qos) in [("qos2 phone", QoS::ExactlyOnce), ("qos1 phone", QoS::AtLeastOnce)] {
        let (id, token) = app.add_device(name);
        let topic = format!("jd/v1/dev/{id}/presence");
        let mut o = app.options(&id, Some((&id, &token)));
        o.set_last_will(LastWill::new(&topic, r#"{"online":false,"ts":1}"#, qos, false));
        let (c, events) = connect(o).await.unwrap();
        // The phone vanishes without DISCONNECT: its socket closes when the event loop goes.
        drop(events);
        drop(c);
        let will = until(&mut oe, |p| match p {
            Packet::Publish(m) if m.topic == topic => Some(m.clone()),
            _ => None,
        })
        .await;
        if qos == QoS::ExactlyOnce {
            // rumqttd delivers at the subscription's QoS; what matters is that it arrives.
            assert_eq!(will.qos, QoS::ExactlyOnce, "delivered exactly once");
        }
        assert_eq!(&will.payload[..], br#"{"online":false,"ts":1}"#);
    }
    victim.heartbeat_acked(T0).await;
}

/// Waits until the connection of `events` ends; returns how long that took.
async fn disconnected_within(events: &mut EventLoop, limit: Duration) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(limit, async {
        loop {
            if events.poll().await.is_err() {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still connected after {limit:?}"));
    started.elapsed()
}

async fn revocation_ends_sessions_and_refuses_queued_messages(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut victim = phone(&app, "victim").await;
    let mut stolen = phone(&app, "stolen").await;
    stolen.heartbeat_acked(T0).await;
    let (tool, _) = connect(app.options(&format!("{}-tool", stolen.id), Some((&stolen.id, &stolen.token))))
        .await
        .expect("a second session of the phone");
    drop(tool);

    // The CLI writes the revocation to the database only; the broker ends the session.
    app.cli(&["device", "revoke", &stolen.id]);
    // Heartbeats the phone sends after the revocation, before it is cut off, are refused.
    for i in 1..=20 {
        stolen
            .client
            .publish(format!("jd/v1/dev/{}/hb", stolen.id), QoS::AtLeastOnce, false, hb(T0 + i * 1000))
            .await
            .unwrap();
    }
    let took = disconnected_within(&mut stolen.events, Duration::from_secs(5)).await;
    eprintln!("revoked phone disconnected after {took:?}");
    let code = refused(connect(app.options(&stolen.id, Some((&stolen.id, &stolen.token)))).await);
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword, "a reconnect is refused");

    // The REST revocation does the same.
    let mut second = phone(&app, "second").await;
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/devices/{}/revoke", app.http, second.id))
        .basic_auth(&app.admin.0, Some(&app.admin.1))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    disconnected_within(&mut second.events, Duration::from_secs(5)).await;

    // The victim goes on; after its heartbeats are committed, nothing of the revoked phone's
    // after-revocation heartbeats is stored.
    for i in 0..5 {
        victim.heartbeat_acked(T0 + i).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored_times(&app, &stolen.id).await, vec![T0], "only the heartbeat before the revocation");
}

#[tokio::test]
async fn revocation_ends_sessions_and_refuses_queued_messages_sqlite() {
    revocation_ends_sessions_and_refuses_queued_messages(Db::Sqlite).await;
}

#[tokio::test]
async fn revocation_ends_sessions_and_refuses_queued_messages_postgres() {
    revocation_ends_sessions_and_refuses_queued_messages(Db::Postgres).await;
}

#[tokio::test]
async fn a_revoked_phone_is_never_offered_a_report() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut stolen = phone(&app, "stolen").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // On duty, fresh, right at the spot: the nearest inspector until it is revoked.
    stolen.heartbeat_acked(now).await;
    app.cli(&["device", "revoke", &stolen.id]);
    disconnected_within(&mut stolen.events, Duration::from_secs(5)).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/reports", app.http))
        .basic_auth(&app.admin.0, Some(&app.admin.1))
        .json(&json!({"kind": "tip", "text": "公车停在校门口", "lat": 36.5, "lon": 118.54}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["report"]["id"].as_str().unwrap().to_owned();
    // Nobody else is on duty, so the report is escalated at once instead of waiting on an offer
    // to a phone that can no longer receive it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = app.get_json(&format!("/api/v1/reports/{id}")).await;
        // `unassigned` is what escalation leaves: nobody left within the radius.
        if report["report"]["status"] == "unassigned" {
            assert_eq!(report["assignments"], json!([]), "{report}");
            assert!(!report.to_string().contains(&stolen.id), "the revoked phone appears in {report}");
            break;
        }
        assert!(Instant::now() < deadline, "not escalated: {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_disabled_integration_is_disconnected_and_refused() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut victim = phone(&app, "victim").await;
    let (name, token) = app.add_integration("leaky", &["jd/v1/events/#"], &["jd/v1/reports"]);
    let (_c, mut events) = connect(app.options(&name, Some((&name, &token)))).await.unwrap();
    app.cli(&["integration", "disable", &name]);
    disconnected_within(&mut events, Duration::from_secs(5)).await;
    let code = refused(connect(app.options(&name, Some((&name, &token)))).await);
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    let err = common::cli_err(app.dir.path(), &app.db, &["integration", "disable", &victim.id]);
    assert!(err.contains("no integration account"), "{err}");
    victim.heartbeat_acked(T0).await;
}

/// A large frame (an evidence chunk) gets a read buffer of its own sized from its header: sent
/// in pieces, the header itself cut in two, and followed in the same write by a small message,
/// both arrive intact and in order, and the connection goes on.
#[tokio::test]
async fn a_large_frame_trickled_in_pieces_arrives_whole() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, token) = app.add_device("trickler");
    let (sink_user, sink_pw) = app.add_integration("chunk-sink", &[&format!("jd/v1/dev/{id}/ev/#")], &[]);
    let (sink, mut sink_events) = connect(app.options("chunk-sink", Some((&sink_user, &sink_pw)))).await.unwrap();
    sink.subscribe(format!("jd/v1/dev/{id}/ev/#"), QoS::AtMostOnce).await.unwrap();
    until(&mut sink_events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

    let mut s = TcpStream::connect((app.mqtt_host.as_str(), app.mqtt_port)).await.unwrap();
    s.write_all(&v5_connect(&id, &id, &token)).await.unwrap();
    assert_eq!(read_frame(&mut s).await.expect("CONNACK")[2], 0, "accepted");
    let evid = "01JBENCHTRICKLE0000000000";
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut bytes = v5_publish(&format!("jd/v1/dev/{id}/ev/{evid}/c/0"), None, &big);
    let small = v5_publish(&format!("jd/v1/dev/{id}/ev/{evid}/c/1"), None, b"tail");
    bytes.extend_from_slice(&small);
    // The fixed header cut after its second byte, then the body in uneven pieces with pauses,
    // the small message riding on the last piece.
    for piece in [&bytes[..2], &bytes[2..70_000], &bytes[70_000..150_000], &bytes[150_000..]] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = until(&mut sink_events, |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        got.push((p.topic, p.payload.to_vec()));
    }
    assert_eq!(got[0], (format!("jd/v1/dev/{id}/ev/{evid}/c/0"), big));
    assert_eq!(got[1], (format!("jd/v1/dev/{id}/ev/{evid}/c/1"), b"tail".to_vec()));
    // Still connected: PINGREQ is answered.
    s.write_all(&[0xc0, 0x00]).await.unwrap();
    let mut frames = Vec::new();
    while let Some(f) = read_frame(&mut s).await {
        if f[0] == 0xd0 {
            break;
        }
        frames.push(f);
        assert!(frames.len() < 20, "no PINGRESP: {frames:?}");
    }
}
