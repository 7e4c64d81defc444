//! An external Mosquitto 2 with its dynamic-security plugin kept in step by jiandu
//! (`jiandu broker sync`, and `serve`'s continuous sync): Mosquitto itself refuses a wrong
//! password, a revoked phone, and a phone publishing into another device's subtree, while a valid
//! phone's heartbeat is stored by `jiandu serve --broker mqtt://…` (all real processes on
//! loopback).

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{Mosquitto, cli, connect, serve_args, wait_for_file};
use rumqttc::{ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};

struct Platform {
    dir: tempfile::TempDir,
    db: String,
    http: String,
    admin: (String, String),
    serve: Child,
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.serve.kill().ok();
        self.serve.wait().ok();
    }
}

fn phone(mq: &Mosquitto, id: &str, password: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", mq.port);
    o.set_credentials(id, password);
    o.set_keep_alive(Duration::from_secs(5));
    o
}

/// Connects, retrying while the continuous sync has not created the client yet.
async fn connect_when_synced(o: MqttOptions) -> (rumqttc::AsyncClient, EventLoop) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match connect(o.clone()).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "phone never admitted by Mosquitto: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn devices(p: &Platform) -> Vec<Value> {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/devices", p.http))
        .basic_auth(&p.admin.0, Some(&p.admin.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn hb(seq: u64) -> Vec<u8> {
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    serde_json::to_vec(&json!({"seq": seq, "ts": ts, "lat": 36.65 + seq as f64 * 1e-4, "lon": 117.0, "duty": "on"}))
        .unwrap()
}

/// Waits for an `inbox/ack` whose `hb_seq` covers `seq`.
async fn acked(events: &mut EventLoop, seq: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("no ack within 20 s")
            .expect("phone connection");
        if let Event::Incoming(Packet::Publish(p)) = e
            && p.topic.ends_with("/inbox/ack")
        {
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            let covers = v["hb_seq"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r[0].as_u64() <= Some(seq) && Some(seq) <= r[1].as_u64()));
            if covers {
                return;
            }
        }
    }
}

#[tokio::test]
async fn mosquitto_enforces_jiandu_accounts_through_dynamic_security() {
    common::install_crypto_provider();
    let mq = Mosquitto::start_dynsec();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("jiandu.db").display());
    let out = cli(dir.path(), &db, &["init"]);
    let admin = (out["username"].as_str().unwrap().to_owned(), out["password"].as_str().unwrap().to_owned());
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("jiandu.toml")).unwrap();
        writeln!(
            f,
            "\nbroker = \"{}\"\nbroker_username = \"jiandu-svc\"\nbroker_password = \"svc-7d1e0c9b44\"\n\
             mosquitto_dynsec = true\nmosquitto_admin_password = \"{}\"",
            mq.url(),
            mq.admin_password
        )
        .unwrap();
    }
    // The one-shot sync makes the credential key and the roles' service account.
    let report = cli(dir.path(), &db, &["broker", "sync"]);
    assert!(report["created"].as_array().unwrap().iter().any(|c| c == "jiandu-svc"), "{report}");
    assert!(dir.path().join("broker.key").exists());
    let dev = |name: &str| {
        let v = cli(dir.path(), &db, &["device", "add", name]);
        (v["device"].as_str().unwrap().to_owned(), v["password"].as_str().unwrap().to_owned())
    };
    let (a, pa) = dev("phone a");
    let (b, _pb) = dev("phone b");
    let (c, pc) = dev("phone c");
    // A second one-shot run creates the phones and is idempotent.
    let report = cli(dir.path(), &db, &["broker", "sync"]);
    assert_eq!(report["created"].as_array().unwrap().len(), 3, "{report}");
    let again = cli(dir.path(), &db, &["broker", "sync"]);
    assert!(again["created"].as_array().unwrap().is_empty(), "{again}");

    let serve =
        serve_args(dir.path(), &db, &["--roles", "ingest,dispatcher,oversight,web", "--http-listen", "127.0.0.1:0"]);
    let state = wait_for_file(&dir.path().join("serve.json"), Duration::from_secs(60));
    let p = Platform { http: state["http"].as_str().unwrap().to_owned(), dir, db, admin, serve };

    // A wrong password: refused by Mosquitto at CONNECT.
    match connect(phone(&mq, &a, "not-the-token")).await {
        Err(ConnectionError::ConnectionRefused(code)) => assert!(
            format!("{code:?}").contains("BadUserNamePassword") || format!("{code:?}").contains("NotAuthorized"),
            "{code:?}"
        ),
        Err(e) => panic!("expected a refused CONNECT, got {e}"),
        Ok(_) => panic!("Mosquitto accepted a wrong password"),
    }

    // A valid phone: its heartbeat is stored and acknowledged.
    let (pa_client, mut pa_events) = connect_when_synced(phone(&mq, &a, &pa)).await;
    pa_client.subscribe(format!("jd/v1/dev/{a}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    pa_client.subscribe(format!("jd/v1/dev/{b}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    let mut subacks = Vec::new();
    while subacks.len() < 2 {
        if let Event::Incoming(Packet::SubAck(s)) = pa_events.poll().await.unwrap() {
            subacks.push(s.return_codes[0]);
        }
    }
    assert!(matches!(subacks[0], SubscribeReasonCode::Success(_)), "own inbox: {subacks:?}");
    assert_eq!(subacks[1], SubscribeReasonCode::Failure, "another device's inbox must be refused");
    // The ingest role may still be subscribing: re-send until acknowledged, as a phone does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        pa_client.publish(format!("jd/v1/dev/{a}/hb"), QoS::AtLeastOnce, false, hb(1)).await.unwrap();
        if tokio::time::timeout(Duration::from_secs(3), acked(&mut pa_events, 1)).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeat never acknowledged; serve log:\n{}",
            std::fs::read_to_string(p.dir.path().join("serve.log")).unwrap_or_default()
        );
    }

    // Into another device's subtree: Mosquitto drops it; the next own point is stored, b has none.
    pa_client.publish(format!("jd/v1/dev/{b}/hb"), QoS::AtLeastOnce, false, hb(2)).await.unwrap();
    pa_client.publish(format!("jd/v1/dev/{a}/hb"), QoS::AtLeastOnce, false, hb(3)).await.unwrap();
    acked(&mut pa_events, 3).await;
    let list = devices(&p).await;
    let by_id = |id: &str| list.iter().find(|d| d["id"] == id).cloned().unwrap();
    assert!(by_id(&a)["position"].is_object(), "{list:?}");
    assert!(by_id(&b)["position"].is_null(), "b got a position from a's publish: {list:?}");

    // A revoked phone: disconnected by Mosquitto and refused at its next CONNECT.
    let (_pc_client, mut pc_events) = connect_when_synced(phone(&mq, &c, &pc)).await;
    cli(p.dir.path(), &p.db, &["device", "revoke", &c]);
    let cut = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if pc_events.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "revoked phone still connected after 15 s; mosquitto log:\n{}", mq.log());
    match connect(phone(&mq, &c, &pc)).await {
        Err(ConnectionError::ConnectionRefused(_)) => {}
        Err(e) => panic!("expected a refused CONNECT for the revoked phone, got {e}"),
        Ok(_) => panic!("Mosquitto admitted a revoked phone"),
    }
    drop(p);
}

/// A phone on Mosquitto whose inbox messages arrive on a channel as (kind, body).
struct InboxPhone {
    client: rumqttc::AsyncClient,
    inbox: tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
}

impl InboxPhone {
    /// Connects (once the sync made its client), subscribes to its inbox, announces itself
    /// online and on duty `metres` north of the site, and waits for the heartbeat's exact ack.
    async fn start(mq: &Mosquitto, id: &str, password: &str, metres: f64) -> InboxPhone {
        let (client, mut events) = connect_when_synced(phone(mq, id, password)).await;
        let (tx, inbox) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(e) = events.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = e {
                    let kind = p.topic.rsplit('/').next().unwrap_or_default().to_owned();
                    tx.send((kind, serde_json::from_slice(&p.payload).unwrap_or(Value::Null))).ok();
                }
            }
        });
        client.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
        let mut me = InboxPhone { client, inbox };
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let presence = json!({"online": true, "ts": ts}).to_string();
        me.client.publish(format!("jd/v1/dev/{id}/presence"), QoS::AtLeastOnce, true, presence).await.unwrap();
        let hb =
            json!({"seq": 1, "ts": ts, "lat": SITE.0 + metres / 111_195.0, "lon": SITE.1, "duty": "on"}).to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            me.client.publish(format!("jd/v1/dev/{id}/hb"), QoS::AtLeastOnce, false, hb.clone()).await.unwrap();
            let acked = tokio::time::timeout(Duration::from_secs(3), me.next("ack", |v| v["hb_seq"].is_array())).await;
            if acked.is_ok() {
                return me;
            }
            assert!(Instant::now() < deadline, "heartbeat of {id} never acknowledged");
        }
    }

    async fn next(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let (k, v) = self.inbox.recv().await.expect("phone connection ended");
            if k == kind && pred(&v) {
                return v;
            }
        }
    }
}

const SITE: (f64, f64) = (36.5, 118.5);

fn log_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

fn wait_for_log(dir: &std::path::Path, what: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while !log_of(dir).contains(what) {
        assert!(start.elapsed() < limit, "no '{what}' within {limit:?}; log:\n{}", log_of(dir));
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Two dispatchers as separate `jiandu serve --roles dispatcher` processes on PostgreSQL and
/// Mosquitto: kill -9 of the active one while an offer is open; the standby takes over within
/// seconds and the open offer's deadline fires exactly once (the next inspector is offered).
#[tokio::test]
async fn the_standby_dispatcher_takes_over_after_kill_9() {
    common::install_crypto_provider();
    let mq = Mosquitto::start_dynsec();
    let db = common::fresh_postgres_db().await;
    let dir = tempfile::tempdir().unwrap();
    let out = cli(dir.path(), &db, &["init"]);
    let admin = (out["username"].as_str().unwrap().to_owned(), out["password"].as_str().unwrap().to_owned());
    let broker =
        format!("broker = \"{}\"\nbroker_username = \"jiandu-svc\"\nbroker_password = \"svc-5b2f0e71c3\"\n", mq.url());
    let dispatch = "[dispatch]\noffer_timeout_s = 3\nradius_m = 5000\n";
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("jiandu.toml")).unwrap();
        writeln!(
            f,
            "\n{broker}mosquitto_dynsec = true\nmosquitto_admin_password = \"{}\"\n{dispatch}",
            mq.admin_password
        )
        .unwrap();
    }
    cli(dir.path(), &db, &["broker", "sync"]);
    let dev = |name: &str| {
        let v = cli(dir.path(), &db, &["device", "add", name]);
        (v["device"].as_str().unwrap().to_owned(), v["password"].as_str().unwrap().to_owned())
    };
    let (near, p_near) = dev("near");
    let (far, p_far) = dev("far");
    let hotline = cli(
        dir.path(),
        &db,
        &["integration", "add", "hotline", "--subscribe", "jd/v1/events/#", "--publish", "jd/v1/reports"],
    );

    // Ingest, oversight and web (with the continuous dynsec sync) in one process, each
    // dispatcher in its own, with its own data dir and the same database and broker.
    let core = serve_args(dir.path(), &db, &["--roles", "ingest,oversight,web", "--http-listen", "127.0.0.1:0"]);
    let state = wait_for_file(&dir.path().join("serve.json"), Duration::from_secs(60));
    let p = Platform { http: state["http"].as_str().unwrap().to_owned(), dir, db, admin, serve: core };
    let spawn_dispatcher = || {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("jiandu.toml"), format!("{broker}{dispatch}")).unwrap();
        let child = serve_args(d.path(), &p.db, &["--roles", "dispatcher", "--http-listen", "off"]);
        (d, child)
    };
    let (d1, mut c1) = spawn_dispatcher();
    wait_for_log(d1.path(), "dispatcher active", Duration::from_secs(60));
    let (d2, mut c2) = spawn_dispatcher();
    wait_for_log(d2.path(), "standing by", Duration::from_secs(60));

    let mut near_phone = InboxPhone::start(&mq, &near, &p_near, 100.0).await;
    let mut far_phone = InboxPhone::start(&mq, &far, &p_far, 300.0).await;
    let (h_client, mut h_events) =
        connect_when_synced(phone(&mq, hotline["username"].as_str().unwrap(), hotline["password"].as_str().unwrap()))
            .await;
    tokio::spawn(async move { while h_events.poll().await.is_ok() {} });
    let tip = json!({"id": "tip-fo", "kind": "official-car", "text": "公车停在饭店门口", "lat": SITE.0, "lon": SITE.1,
        "ts": 1_700_000_000_000i64, "source": "12345-hotline"});
    h_client.publish("jd/v1/reports", QoS::AtLeastOnce, false, tip.to_string()).await.unwrap();
    let offer = tokio::time::timeout(Duration::from_secs(20), near_phone.next("assignment", |_| true))
        .await
        .unwrap_or_else(|_| panic!("no offer; dispatcher log:\n{}", log_of(d1.path())));
    let first_asg = offer["assignment_id"].as_str().unwrap().to_owned();

    // kill -9 the active dispatcher while the offer is open.
    c1.kill().unwrap();
    c1.wait().unwrap();
    let took = wait_for_log(d2.path(), "dispatcher active", Duration::from_secs(30));
    assert!(took < Duration::from_secs(15), "standby took {took:?} to take over");

    // The open offer's deadline fires (once) on the new active dispatcher: `far` is offered.
    let second = tokio::time::timeout(Duration::from_secs(30), far_phone.next("assignment", |_| true))
        .await
        .unwrap_or_else(|_| panic!("no re-offer after failover; standby log:\n{}", log_of(d2.path())));
    assert_ne!(second["assignment_id"].as_str(), Some(first_asg.as_str()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let v: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/reports/tip-fo", p.http))
        .basic_auth(&p.admin.0, Some(&p.admin.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by_asg: std::collections::HashMap<String, String> = v["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_str().unwrap().to_owned(), a["device_id"].as_str().unwrap().to_owned()))
        .collect();
    let timeline: Vec<(String, String)> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (by_asg[t["assignment_id"].as_str().unwrap()].clone(), t["status"].as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(String, String)> = [(&near, "offered"), (&near, "expired"), (&far, "offered")]
        .iter()
        .map(|(d, s)| ((*d).clone(), (*s).to_owned()))
        .collect();
    // `far` may expire too by now (3 s): only the first three lines are fixed, each exactly once.
    assert_eq!(timeline[..3], expected[..], "timeline {timeline:?}");
    assert_eq!(timeline.iter().filter(|(d, s)| d == &near && s == "expired").count(), 1, "{timeline:?}");
    assert!(near_phone.inbox.try_recv().map(|(k, _)| k != "assignment").unwrap_or(true));
    c2.kill().ok();
    c2.wait().ok();
    drop((p, d1, d2));
}
