//! Dispatch end to end (issue 6 acceptance): a real `jiandu serve`, simulated phones and an
//! integration as rumqttc clients over TCP, results read back through MQTT, REST and the database.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Db, TestApp, connect};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The place of every report: a restaurant in the county seat.
const SITE: (f64, f64) = (36.5000, 118.5000);
/// Degrees of latitude per metre (mean sphere).
const DEG_PER_M: f64 = 1.0 / 111_195.0;

/// Short offer deadline so a test can wait for one; a radius of 5 km.
const CONFIG: &str = "[dispatch]\noffer_timeout_s = 2\nradius_m = 5000\ntwo_inspector_kinds = [\"banquet\"]";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A simulated work phone: its inbox messages arrive on a channel, PUBACKs on another.
struct Phone {
    id: String,
    client: AsyncClient,
    inbox: mpsc::UnboundedReceiver<(String, Value)>,
    pubacks: mpsc::UnboundedReceiver<()>,
}

impl Phone {
    /// Registers a device, connects it, subscribes to its inbox, announces it online and sends
    /// one heartbeat `metres` north of the site with `duty`, `age_ms` old; waits for ingest's ack.
    async fn start(app: &TestApp, name: &str, metres: f64, duty: &str, age_ms: i64) -> Phone {
        let (id, token) = app.add_device(name);
        let (client, mut events) = connect(app.options(&id, Some((&id, &token)))).await.unwrap();
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (ack_tx, pubacks) = mpsc::unbounded_channel();
        let (sub_tx, mut subacked) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(e) = events.poll().await {
                match e {
                    Event::Incoming(Packet::Publish(p)) => {
                        let kind = p.topic.rsplit('/').next().unwrap_or_default().to_owned();
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        inbox_tx.send((kind, v)).ok();
                    }
                    Event::Incoming(Packet::PubAck(_)) => {
                        ack_tx.send(()).ok();
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        sub_tx.send(()).ok();
                    }
                    _ => {}
                }
            }
        });
        client.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
        wait(subacked.recv()).await;
        let mut phone = Phone { id, client, inbox, pubacks };
        phone.send("presence", json!({"online": true, "ts": now()}), true).await;
        let ts = now() - age_ms;
        let hb = json!({"ts": ts, "lat": SITE.0 + metres * DEG_PER_M, "lon": SITE.1, "duty": duty});
        phone.send("hb", hb, false).await;
        // Ingest confirms the heartbeat once it is committed; by then dispatch has it too.
        let acked = phone.next_where("ack", |v| v["hb_upto"].as_i64().is_some_and(|t| t >= ts));
        if tokio::time::timeout(Duration::from_secs(20), acked).await.is_err() {
            panic!("no hb_upto ack for {name}; server log:\n{}", app.log());
        }
        phone
    }

    /// Publishes under the phone's own subtree at QoS 1 and waits for the PUBACK.
    async fn send(&mut self, suffix: &str, body: Value, retain: bool) {
        let topic = format!("jd/v1/dev/{}/{suffix}", self.id);
        self.client.publish(topic, QoS::AtLeastOnce, retain, body.to_string()).await.unwrap();
        wait(self.pubacks.recv()).await;
    }

    /// Answers an assignment and waits for its `inbox/ack`.
    async fn answer(&mut self, assignment: &str, status: &str) {
        self.send(&format!("asg/{assignment}"), json!({"status": status, "ts": now()}), false).await;
        let ack = self.next_where("ack", |v| v["asg"] == assignment).await;
        assert_eq!(ack["status"], status, "the ack names the stored status");
    }

    /// The next inbox message of `kind` satisfying `pred` (others are skipped).
    async fn next_where(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let (k, v) = wait(self.inbox.recv()).await;
            if k == kind && pred(&v) {
                return v;
            }
        }
    }

    /// The next offer on `inbox/assignment`.
    async fn offer(&mut self) -> Value {
        self.next_where("assignment", |_| true).await
    }

    /// Everything received so far, without waiting.
    fn drain(&mut self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while let Ok(m) = self.inbox.try_recv() {
            out.push(m);
        }
        out
    }
}

/// Awaits with a generous safety-net timeout.
async fn wait<T>(f: impl std::future::Future<Output = Option<T>>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("timed out waiting").expect("channel closed")
}

/// An integration that publishes tips and follows every event.
struct Integration {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Value>,
}

impl Integration {
    async fn start(app: &TestApp) -> Integration {
        let (name, token) = app.add_integration("hotline", &["jd/v1/events/#"], &["jd/v1/reports"]);
        let (client, mut loop_) = connect(app.options(&name, Some((&name, &token)))).await.unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let (sub_tx, mut subacked) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(e) = loop_.poll().await {
                match e {
                    Event::Incoming(Packet::Publish(p)) => {
                        let mut v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        v["topic"] = json!(p.topic);
                        tx.send(v).ok();
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        sub_tx.send(()).ok();
                    }
                    _ => {}
                }
            }
        });
        client.subscribe("jd/v1/events/#", QoS::AtLeastOnce).await.unwrap();
        wait(subacked.recv()).await;
        Integration { client, events }
    }

    async fn tip(&self, id: &str, kind: &str) {
        let body = json!({"id": id, "kind": kind, "text": "公车停在饭店门口", "lat": SITE.0, "lon": SITE.1,
            "ts": now(), "source": "12345-hotline"});
        self.client.publish("jd/v1/reports", QoS::AtLeastOnce, false, body.to_string()).await.unwrap();
    }

    /// The next event whose `type` is `ty` and whose data satisfies `pred`.
    async fn event(&mut self, ty: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let e = wait(self.events.recv()).await;
            if e["type"] == ty && pred(&e["data"]) {
                return e;
            }
        }
    }
}

/// The report as REST shows it, with assignments and timeline.
async fn view(app: &TestApp, id: &str) -> Value {
    app.get_json(&format!("/api/v1/reports/{id}")).await
}

/// (device, status) of every timeline line, resolving assignment ids to devices.
fn timeline(v: &Value) -> Vec<(String, String)> {
    let devices: HashMap<&str, &str> = v["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_str().unwrap(), a["device_id"].as_str().unwrap()))
        .collect();
    v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (devices[t["assignment_id"].as_str().unwrap()].to_owned(), t["status"].as_str().unwrap().to_owned()))
        .collect()
}

/// Ledger entries as (kind, actor, subject, body), straight from the database.
async fn ledger(app: &TestApp) -> Vec<(String, String, String, Value)> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.db).await.unwrap();
    let rows =
        sqlx::query("SELECT kind, actor, subject, body FROM ledger ORDER BY seq").fetch_all(&pool).await.unwrap();
    let out = rows
        .iter()
        .map(|r| {
            let body: String = r.get("body");
            (r.get("kind"), r.get("actor"), r.get("subject"), serde_json::from_str(&body).unwrap())
        })
        .collect();
    pool.close().await;
    out
}

/// The `data` of every stored event of `kind`, in order, straight from the outbox.
async fn stored_events(app: &TestApp, kind: &str) -> Vec<Value> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.db).await.unwrap();
    let rows =
        sqlx::query("SELECT data FROM events WHERE kind = $1 ORDER BY seq").bind(kind).fetch_all(&pool).await.unwrap();
    let out = rows.iter().map(|r| serde_json::from_str(&r.get::<String, _>("data")).unwrap()).collect();
    pool.close().await;
    out
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

async fn decline_then_timeout_then_accept(db: Db) {
    let app = TestApp::spawn_with_config(db, CONFIG).await;
    let mut hotline = Integration::start(&app).await;
    let mut near = Phone::start(&app, "近", 100.0, "on", 0).await;
    let mut mid = Phone::start(&app, "中", 300.0, "on", 0).await;
    let mut far = Phone::start(&app, "远", 600.0, "on", 0).await;

    hotline.tip("tip-1", "official-car").await;
    let created = hotline.event("report.created", |d| d["report"]["id"] == "tip-1").await;
    assert_eq!(created["data"]["source"], "integration");
    assert_eq!(created["data"]["origin"], "12345-hotline");

    let offer = near.offer().await;
    assert_eq!(offer["report"]["id"], "tip-1");
    assert_eq!(offer["report"]["kind"], "official-car");
    let d = offer["distance_m"].as_f64().unwrap();
    assert!((d - 100.0).abs() < 1.0, "distance to the nearest phone: {d}");
    assert!(offer["respond_by"].as_i64().unwrap() > now());
    near.answer(offer["assignment_id"].as_str().unwrap(), "declined").await;

    let offer = mid.offer().await;
    assert!((offer["distance_m"].as_f64().unwrap() - 300.0).abs() < 1.0);
    // The middle phone ignores it; after the timeout the far one is asked.
    let offer = far.offer().await;
    assert!((offer["distance_m"].as_f64().unwrap() - 600.0).abs() < 1.0);
    let asg = offer["assignment_id"].as_str().unwrap().to_owned();
    far.answer(&asg, "accepted").await;
    far.answer(&asg, "accepted").await; // a re-send is acknowledged again and changes nothing
    far.answer(&asg, "arrived").await;
    far.answer(&asg, "completed").await;
    hotline.event("report.updated", |d| d["id"] == "tip-1" && d["status"] == "completed").await;

    let v = view(&app, "tip-1").await;
    assert_eq!(v["report"]["status"], "completed");
    assert_eq!(v["report"]["source"], "integration");
    let expected = pairs(&[
        (&near.id, "offered"),
        (&near.id, "declined"),
        (&mid.id, "offered"),
        (&mid.id, "expired"),
        (&far.id, "offered"),
        (&far.id, "accepted"),
        (&far.id, "arrived"),
        (&far.id, "completed"),
    ]);
    assert_eq!(timeline(&v), expected);
    let actors: Vec<&str> = v["timeline"].as_array().unwrap().iter().map(|t| t["actor"].as_str().unwrap()).collect();
    assert_eq!(
        actors,
        ["dispatcher", near.id.as_str(), "dispatcher", "dispatcher", "dispatcher", &far.id, &far.id, &far.id]
    );

    // The same story in the events (outbox, published on jd/v1/events/assignment), in order…
    let events: Vec<(String, String)> = stored_events(&app, "assignment")
        .await
        .into_iter()
        .filter(|e| e["report"] == "tip-1")
        .map(|e| (e["device"].as_str().unwrap().to_owned(), e["status"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(events, expected);
    // …and in the ledger, hash-chained.
    let entries = ledger(&app).await;
    let changes: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e.0 == "assignment.changed" && e.3["report"] == "tip-1")
        .map(|e| (e.3["device"].as_str().unwrap().to_owned(), e.3["to"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(changes, expected);
    assert!(entries.iter().any(|e| e.0 == "report.received" && e.2 == "tip-1" && e.1 == "12345-hotline"));
    let status = app.stop();
    assert!(status.success());
    drop((near, mid, far));
}

#[tokio::test]
async fn decline_then_timeout_then_accept_sqlite() {
    decline_then_timeout_then_accept(Db::Sqlite).await;
}

#[tokio::test]
async fn decline_then_timeout_then_accept_postgres() {
    decline_then_timeout_then_accept(Db::Postgres).await;
}

async fn unavailable_devices_are_never_offered(db: Db) {
    let app = TestApp::spawn_with_config(db, CONFIG).await;
    let mut hotline = Integration::start(&app).await;
    // All nearer than the one that may be offered.
    let mut busy = Phone::start(&app, "busy", 50.0, "busy", 0).await;
    let mut off = Phone::start(&app, "off", 60.0, "off", 0).await;
    let mut stale = Phone::start(&app, "stale", 70.0, "on", 10 * 60_000).await;
    let mut offline = Phone::start(&app, "offline", 80.0, "on", 0).await;
    offline.send("presence", json!({"online": false, "ts": now()}), true).await;
    let mut outside = Phone::start(&app, "outside", 6000.0, "on", 0).await; // beyond the 5 km radius
    let mut ok = Phone::start(&app, "ok", 900.0, "on", 0).await;

    hotline.tip("tip-2", "official-car").await;
    let offer = ok.offer().await;
    assert_eq!(offer["report"]["id"], "tip-2");
    ok.answer(offer["assignment_id"].as_str().unwrap(), "accepted").await;

    // A second report while `ok` is busy with the first: nobody is left, so it is escalated.
    hotline.tip("tip-3", "official-car").await;
    let alarm = hotline.event("alarm.unassigned", |d| d["report"] == "tip-3").await;
    assert_eq!(alarm["topic"], "jd/v1/events/alarm");
    assert_eq!(alarm["data"]["radius_m"], 5000.0);
    let v = view(&app, "tip-3").await;
    assert_eq!(v["report"]["status"], "unassigned");
    assert!(v["assignments"].as_array().unwrap().is_empty());
    let unassigned = app.get_json("/api/v1/reports?status=unassigned").await;
    let ids: Vec<&str> = unassigned["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tip-3"]);

    for p in [&mut busy, &mut off, &mut stale, &mut offline, &mut outside] {
        let offers: Vec<_> = p.drain().into_iter().filter(|(k, _)| k == "assignment").collect();
        assert!(offers.is_empty(), "{} must not be offered anything: {offers:?}", p.id);
    }
    let v = view(&app, "tip-2").await;
    assert_eq!(timeline(&v), pairs(&[(&ok.id, "offered"), (&ok.id, "accepted")]));
    app.stop();
}

#[tokio::test]
async fn unavailable_devices_are_never_offered_sqlite() {
    unavailable_devices_are_never_offered(Db::Sqlite).await;
}

#[tokio::test]
async fn kill_and_restart_keeps_the_deadline() {
    let config = "[dispatch]\noffer_timeout_s = 4\nradius_m = 5000";
    let mut app = TestApp::spawn_with_config(Db::Sqlite, config).await;
    let hotline = Integration::start(&app).await;
    let mut first = Phone::start(&app, "first", 100.0, "on", 0).await;
    let second = Phone::start(&app, "second", 200.0, "on", 0).await;
    hotline.tip("tip-4", "official-car").await;
    let offer = first.offer().await;
    let asg = offer["assignment_id"].as_str().unwrap().to_owned();

    app.kill9();
    app.restart();

    // The stored deadline fires after the restart: `first` expires once, `second` is offered once.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let v = loop {
        let v = view(&app, "tip-4").await;
        if v["assignments"].as_array().unwrap().len() >= 2 {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no re-offer after restart: {v}\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(timeline(&v), pairs(&[(&first.id, "offered"), (&first.id, "expired"), (&second.id, "offered")]));
    assert_eq!(v["assignments"][0]["id"], asg.as_str());
    // Nothing more happens to it: give the restarted dispatcher a few sweeps, then check again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = view(&app, "tip-4").await;
    assert_eq!(timeline(&again), timeline(&v), "the deadline fired exactly once");
    let expiries = ledger(&app).await.into_iter().filter(|e| e.2 == asg && e.3["to"] == "expired").count();
    assert_eq!(expiries, 1);
    app.stop();
}

#[tokio::test]
async fn two_inspector_reports_get_two_devices() {
    let app = TestApp::spawn_with_config(Db::Sqlite, CONFIG).await;
    let mut hotline = Integration::start(&app).await;
    let mut a = Phone::start(&app, "A", 100.0, "on", 0).await;
    let mut b = Phone::start(&app, "B", 150.0, "on", 0).await;
    let mut c = Phone::start(&app, "C", 400.0, "on", 0).await;
    hotline.tip("tip-5", "banquet").await;
    let oa = a.offer().await;
    let ob = b.offer().await;
    assert_eq!((oa["report"]["id"].as_str(), ob["report"]["id"].as_str()), (Some("tip-5"), Some("tip-5")));
    assert_ne!(oa["assignment_id"], ob["assignment_id"]);
    // B declines: its slot goes to C, never to A again.
    b.answer(ob["assignment_id"].as_str().unwrap(), "declined").await;
    let oc = c.offer().await;
    a.answer(oa["assignment_id"].as_str().unwrap(), "accepted").await;
    c.answer(oc["assignment_id"].as_str().unwrap(), "accepted").await;
    hotline.event("report.updated", |d| d["id"] == "tip-5" && d["status"] == "assigned").await;
    let v = view(&app, "tip-5").await;
    assert_eq!(v["report"]["needs"], 2);
    let mut devices: Vec<&str> =
        v["assignments"].as_array().unwrap().iter().map(|x| x["device_id"].as_str().unwrap()).collect();
    devices.sort();
    let mut expected = vec![a.id.as_str(), b.id.as_str(), c.id.as_str()];
    expected.sort();
    assert_eq!(devices, expected);
    assert!(a.drain().iter().all(|(k, _)| k != "assignment"), "A got one offer only");
    app.stop();
}

#[tokio::test]
async fn malformed_reports_get_field_errors_and_staff_dispatch_by_hand() {
    let app = TestApp::spawn_with_config(Db::Sqlite, CONFIG).await;
    let mut phone = Phone::start(&app, "张三", 100.0, "on", 0).await;
    let mut other = Phone::start(&app, "李四", 200.0, "on", 0).await;

    // A phone's malformed report: inbox/error names the field.
    phone
        .send(
            "report",
            json!({"id": "r-bad", "kind": "gift", "text": "", "lat": 123.4, "lon": 118.5, "ts": now()}),
            false,
        )
        .await;
    let err = phone.next_where("error", |_| true).await;
    assert!(err["error"].as_str().unwrap().starts_with("report.lat:"), "{err}");
    assert_eq!(err["topic"], format!("jd/v1/dev/{}/report", phone.id));
    // A good one is acknowledged once stored, and offered to the nearest (the reporter).
    let report = json!({"id": "r-ok", "kind": "gift", "text": "送礼", "lat": SITE.0, "lon": SITE.1, "ts": now(), "plate": "鲁G·12345"});
    phone.send("report", report.clone(), false).await;
    // The offer comes through the phone outbox and the ack directly, on two connections, so
    // in either order.
    let (mut offer, mut acked) = (None, false);
    while offer.is_none() || !acked {
        match wait(phone.inbox.recv()).await {
            (k, v) if k == "assignment" => offer = Some(v),
            (k, v) if k == "ack" && v["report"] == "r-ok" => acked = true,
            _ => {}
        }
    }
    let offer = offer.unwrap();
    assert_eq!(offer["report"]["plate"], "鲁G·12345");
    phone.send("report", report, false).await; // re-sent: acked again, stored once
    phone.next_where("ack", |v| v["report"] == "r-ok").await;
    // An answer for an assignment that is not this phone's.
    phone.send("asg/nope", json!({"status": "accepted", "ts": now()}), false).await;
    let err = phone.next_where("error", |_| true).await;
    assert!(err["error"].as_str().unwrap().starts_with("asg:"), "{err}");

    let http = reqwest::Client::new();
    let (user, pass) = app.admin.clone();
    let post = |path: &str, body: Value| {
        http.post(format!("{}/api/v1{path}", app.http)).basic_auth(&user, Some(&pass)).json(&body).send()
    };
    // REST: 422 naming the field.
    let resp = post("/reports", json!({"kind": "gift", "text": "x", "lat": 91.0, "lon": 118.5})).await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["field"], "lat");
    let resp = post("/reports", json!({"kind": "gift", "text": "x", "lat": 36.5})).await.unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["field"], "lon");
    let resp = http
        .get(format!("{}/api/v1/reports?status=bogus", app.http))
        .basic_auth(&user, Some(&pass))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["field"], "status");
    let resp = http.get(format!("{}/api/v1/reports", app.http)).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // A web report is dispatched like any other: the phone is busy, so the other one is offered.
    let resp =
        post("/reports", json!({"id": "w-1", "kind": "banquet-lite", "text": "宴请", "lat": SITE.0, "lon": SITE.1}))
            .await
            .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["report"]["source"], "web");
    assert_eq!(created["report"]["origin"], user);
    let o = other.offer().await;
    assert_eq!(o["report"]["id"], "w-1");
    // Staff reassign it by hand to the first phone once it is free.
    phone.answer(offer["assignment_id"].as_str().unwrap(), "declined").await;
    let resp = post("/reports/w-1/reassign", json!({"device": phone.id, "note": "熟悉情况"})).await.unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let notice = other.next_where("notice", |_| true).await;
    assert!(notice["text"].as_str().unwrap().contains("withdrawn"), "{notice}");
    let manual = phone.offer().await;
    assert_eq!(manual["report"]["id"], "w-1");
    // The desk's offer went through the dispatcher's rules: measured with its great-circle
    // distance from the phone's heartbeat (100 m north of the site)…
    let expected = jiandu_dispatcher::index::haversine_m(SITE.0, SITE.1, SITE.0 + 100.0 * DEG_PER_M, SITE.1);
    let got = manual["distance_m"].as_f64().unwrap();
    assert!((got - expected).abs() < 1e-6, "{got} vs {expected}: {manual}");
    // …and refused by them, naming the field, for an answer window they do not allow.
    let resp = post("/reports/w-1/dispatch", json!({"device": other.id, "respond_within_s": 0})).await.unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["field"], "respond_within_s");
    // Busy device: 409.
    let resp = post("/reports/r-ok/dispatch", json!({"device": phone.id})).await.unwrap();
    assert_eq!(resp.status(), 409);
    let resp = post("/reports/w-1/dispatch", json!({"device": "dnosuchdevice"})).await.unwrap();
    assert_eq!(resp.status(), 422);
    // Cancel: the phone is told, the report is cancelled, the ledger knows who did it.
    let resp = post("/reports/w-1/cancel", json!({"note": "重复"})).await.unwrap();
    assert_eq!(resp.status(), 200);
    phone
        .next_where("notice", |v| {
            v["text"].as_str().unwrap_or_default().contains(manual["assignment_id"].as_str().unwrap())
        })
        .await;
    let v = view(&app, "w-1").await;
    assert_eq!(v["report"]["status"], "cancelled");
    let steps = timeline(&v);
    assert_eq!(
        steps,
        pairs(&[(&other.id, "offered"), (&other.id, "cancelled"), (&phone.id, "offered"), (&phone.id, "cancelled")])
    );
    let by: Vec<&str> = v["timeline"].as_array().unwrap().iter().map(|t| t["actor"].as_str().unwrap()).collect();
    assert_eq!(by, ["dispatcher", user.as_str(), user.as_str(), user.as_str()]);
    let entries = ledger(&app).await;
    assert!(entries.iter().any(|e| e.0 == "report.cancelled" && e.1 == user && e.2 == "w-1"));
    let list = app.get_json("/api/v1/reports?limit=1").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let next = list["next"].as_str().unwrap();
    let rest = app.get_json(&format!("/api/v1/reports?after={next}")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1, "two reports stored (r-bad was refused): {rest}");
    app.stop();
}

/// Offers go through the phone outbox (one row per offer, published and marked after the PUBACK)
/// and reach the phone as fast as before; the event stream never carries those rows.
#[tokio::test]
async fn offers_go_through_the_phone_outbox_and_never_into_the_event_stream() {
    use sqlx::Row;
    let app = TestApp::spawn_with_config(Db::Sqlite, CONFIG).await;
    let mut hotline = Integration::start(&app).await;
    let mut phone = Phone::start(&app, "赵六", 100.0, "on", 0).await;
    hotline.tip("tip-ob", "official-car").await;
    let offer = phone.offer().await;
    assert_eq!(offer["report"]["id"], "tip-ob");
    let asg = offer["assignment_id"].as_str().unwrap().to_owned();
    hotline.event("assignment.offered", |d| d["id"] == asg.as_str()).await;

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.db).await.unwrap();
    let mut rows = Vec::new();
    for _ in 0..200 {
        rows = sqlx::query("SELECT device, kind, body, published_at FROM phone_messages ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
        if rows.iter().all(|r| r.get::<Option<i64>, _>("published_at").is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rows.len(), 1, "one outbox row for the one offer");
    let row = &rows[0];
    assert_eq!((row.get::<String, _>("device"), row.get::<String, _>("kind")), (phone.id.clone(), "assignment".into()));
    assert_eq!(serde_json::from_str::<Value>(&row.get::<String, _>("body")).unwrap(), offer, "what the phone got");
    assert!(row.get::<Option<i64>, _>("published_at").is_some(), "marked after the PUBACK");

    // The phone answers; the withdrawal by the desk reaches it through the outbox too.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/api/v1/reports/tip-ob/cancel", app.http))
        .basic_auth(&app.admin.0, Some(&app.admin.1))
        .json(&json!({"note": "duplicate"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "cancel: {}", resp.status());
    let notice = phone.next_where("notice", |v| v["text"].as_str().is_some_and(|t| t.contains(&asg))).await;
    assert!(notice["text"].as_str().unwrap().contains("cancelled"));
    let kinds: Vec<String> = sqlx::query("SELECT kind FROM phone_messages ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("kind"))
        .collect();
    assert_eq!(kinds, ["assignment", "notice"]);

    // Neither the MQTT event stream nor the stored events (what Server-Sent Events read) show
    // a phone message: every one is an event envelope on jd/v1/events/.
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), hotline.events.recv()).await {
        seen.push(e);
    }
    let events: Vec<String> =
        sqlx::query("SELECT data FROM events").fetch_all(&pool).await.unwrap().iter().map(|r| r.get("data")).collect();
    pool.close().await;
    for e in &seen {
        assert!(e["topic"].as_str().unwrap().starts_with("jd/v1/events/"), "{e}");
        assert!(e["type"].is_string() && e["id"].is_string(), "an event envelope: {e}");
        assert_ne!(e["data"], offer);
        assert_ne!(e["data"], notice);
    }
    for data in &events {
        let v: Value = serde_json::from_str(data).unwrap();
        assert!(v != offer && v != notice, "a phone message leaked into the events: {v}");
    }
    app.stop();
}
