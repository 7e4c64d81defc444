//! Registries and look-ups end to end: `jiandu import` (dry run, versions, GBK, bad rows),
//! point-in-time REST look-ups, phone look-ups over MQTT with plate normalisation and
//! candidates, need-to-know fields, the auditors' list, the rate limit and the audit flush on
//! shutdown, against a real `jiandu serve` on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::{Db, TestApp, cli_err, connect};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use serde_json::{Value, json};

const VEHICLES_V1: &str = "车牌号,使用单位,车辆类型,使用性质,驾驶员,状态\n\
鲁G·12345,县财政局,轿车,一般公务用车,王强,在用\n\
鲁G12340,县公安局,越野车,执法执勤用车,李娜,在用\n\
鲁GD12345,县交通运输局,轿车,一般公务用车,赵敏,在用\n\
鲁G55555,县水利局,皮卡,特种专业技术用车,孙杰,封存\n";

const VEHICLES_V2: &str = "plate,unit,type,category,driver,status\n\
鲁G12345,县财政局,轿车,general,刘伟,in_service\n\
鲁G12340,县公安局,越野车,law_enforcement,李娜,in_service\n\
鲁GD12345,县交通运输局,轿车,general,赵敏,in_service\n\
鲁G99999,县审计局,轿车,general,周明,in_service\n";

const MEMBERS: &str = "党员编号,姓名,身份证号,所在单位,职务,职级\n\
M0000001,张三丰,11010519491231002X,县财政局,科长,正科级\n\
M0000002,李四,370724198001010016,县公安局,科员,一级科员\n";

fn write(app: &TestApp, name: &str, bytes: &[u8]) -> String {
    let path = app.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

async fn get(app: &TestApp, path: &str, user: (&str, &str)) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", app.http))
        .basic_auth(user.0, Some(user.1))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A phone subscribed to its inbox.
async fn phone(app: &TestApp, name: &str) -> (String, AsyncClient, EventLoop) {
    let (id, pw) = app.add_device(name);
    let (client, mut events) = connect(app.options(&id, Some((&id, &pw)))).await.unwrap();
    client.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    common::until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    (id, client, events)
}

/// Publishes a look-up and waits for the message on `inbox/{kind}` about it.
async fn ask(id: &str, client: &AsyncClient, events: &mut EventLoop, body: Value, inbox: &str) -> Value {
    client.publish(format!("jd/v1/dev/{id}/lookup"), QoS::AtLeastOnce, false, body.to_string()).await.unwrap();
    let topic = format!("jd/v1/dev/{id}/inbox/{inbox}");
    common::until(events, |p| match p {
        Packet::Publish(m) if m.topic == topic => serde_json::from_slice(&m.payload).ok(),
        _ => None,
    })
    .await
}

/// Asks until the look-up role's index shows `plate` (it reloads shortly after an import).
async fn wait_for_plate(id: &str, client: &AsyncClient, events: &mut EventLoop, plate: &str) {
    for i in 0..100 {
        let r = ask(id, client, events, json!({"corr": format!("wait-{i}"), "kind": "vehicle", "q": plate}), "lookup")
            .await;
        if r["found"] == json!(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the look-up index never showed {plate}");
}

async fn registries_and_lookups(db: Db) {
    let app = TestApp::spawn_with_config(db, "[lookup]\nrate_per_minute = 6000\nburst = 200\nrefresh_ms = 50").await;
    let admin = (app.admin.0.clone(), app.admin.1.clone());
    let admin = (admin.0.as_str(), admin.1.as_str());

    // Dry run, import, re-import with changes.
    let v1 = write(&app, "vehicles-v1.csv", VEHICLES_V1.as_bytes());
    let dry = app.cli(&["import", "vehicles", &v1, "--dry-run"]);
    assert_eq!((dry["added"].clone(), dry["version"].clone()), (json!(4), Value::Null), "{dry}");
    let first = app.cli(&["import", "vehicles", &v1]);
    assert_eq!(first["added"], 4, "{first}");
    let first_version = first["version"].as_i64().unwrap();
    let again = app.cli(&["import", "vehicles", &v1]);
    assert_eq!((again["unchanged"].clone(), again["version"].clone()), (json!(4), Value::Null));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let v2 = write(&app, "vehicles-v2.csv", VEHICLES_V2.as_bytes());
    let diff = app.cli(&["import", "vehicles", &v2, "--dry-run"]);
    assert_eq!(
        diff["diff"],
        json!({"added": ["鲁G99999"], "changed": ["鲁G12345"], "retired": ["鲁G55555"]}),
        "{diff}"
    );
    assert_eq!(diff["unchanged"], 2);
    let second = app.cli(&["import", "vehicles", &v2]);
    assert!(second["version"].as_i64().unwrap() > first_version);
    assert_eq!(
        (second["added"].clone(), second["changed"].clone(), second["retired"].clone()),
        (json!(1), json!(1), json!(1))
    );

    // A bad row names its row and column and imports nothing.
    let bad =
        write(&app, "vehicles-bad.csv", format!("{VEHICLES_V2}鲁X1234,县委,轿车,general,钱七,in_service\n").as_bytes());
    let err = cli_err(app.dir.path(), &app.db, &["import", "vehicles", &bad]);
    assert!(err.contains("row 6, column plate: not a Chinese plate"), "{err}");
    assert!(err.contains("nothing imported"), "{err}");
    let still = app.cli(&["import", "vehicles", &v2, "--dry-run"]);
    assert_eq!(still["unchanged"], 4, "{still}");

    // A GBK-encoded file imports like UTF-8.
    let (gbk, _, unmappable) = encoding_rs::GBK.encode(MEMBERS);
    assert!(!unmappable && std::str::from_utf8(&gbk).is_err());
    let members = write(&app, "members-gbk.csv", &gbk);
    let imported = app.cli(&["import", "members", &members]);
    assert_eq!((imported["encoding"].clone(), imported["added"].clone()), (json!("gb18030"), json!(2)), "{imported}");

    // Point in time over REST: the old driver, then the current one.
    let (status, then) = get(&app, &format!("/api/v1/lookup/vehicle?q=鲁G·12345&at={between}"), admin).await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(then["result"]["driver"], "王强", "{then}");
    let (_, now) = get(&app, "/api/v1/lookup/vehicle?q=鲁g12345", admin).await;
    assert_eq!(now["result"]["driver"], "刘伟", "{now}");
    let (_, person) = get(&app, "/api/v1/lookup/person?q=张三丰", admin).await;
    assert_eq!(person["result"]["id_number"], "110105********002X", "{person}");
    let (status, e) = get(&app, "/api/v1/lookup/vehicle?q=", admin).await;
    assert_eq!((status, e["error"]["field"].clone()), (422, json!("q")));
    let (status, e) = get(&app, "/api/v1/lookup/vehicle?q=鲁G12345&at=tomorrow", admin).await;
    assert_eq!((status, e["error"]["field"].clone()), (422, json!("at")));

    // Phones: every spelling finds the same car; a misread plate gets candidates.
    let (id, client, mut events) = phone(&app, "巡查一号").await;
    wait_for_plate(&id, &client, &mut events, "鲁G99999").await;
    for (i, spelling) in ["鲁g 12345", "鲁Ｇ·12345", "鲁G12345"].into_iter().enumerate() {
        let corr = format!("c{i}");
        let body = json!({"corr": corr, "kind": "vehicle", "q": spelling, "lat": 36.7, "lon": 119.1});
        let r = ask(&id, &client, &mut events, body, "lookup").await;
        assert_eq!(r["corr"], corr.as_str());
        assert_eq!(r["found"], true, "{spelling}: {r}");
        assert_eq!(
            r["result"],
            json!({"kind": "vehicle", "plate": "鲁G12345", "unit": "县财政局", "vehicle_type": "轿车",
                   "use_category": "general", "status": "in_service", "allowed_use": true}),
            "{spelling}"
        );
    }
    let r = ask(&id, &client, &mut events, json!({"corr": "o", "kind": "vehicle", "q": "鲁G1234O"}), "lookup").await;
    assert_eq!(r["found"], false, "{r}");
    let candidates: Vec<&str> =
        r["candidates"].as_array().unwrap().iter().filter_map(|c| c["plate"].as_str()).collect();
    assert!(candidates.contains(&"鲁G12340"), "{r}");

    // Need to know: a person's name, unit, post and party membership, never the identity number.
    let r = ask(&id, &client, &mut events, json!({"corr": "p", "kind": "person", "q": "张三丰"}), "lookup").await;
    assert_eq!(
        r["result"],
        json!({"kind": "person", "name": "张三丰", "unit": "县财政局", "post": "科长", "party_member": true})
    );
    assert!(!r.to_string().contains("1949123"), "{r}");

    // A malformed look-up is answered on inbox/error, naming the field.
    let e = ask(&id, &client, &mut events, json!({"corr": "x", "kind": "vehicle"}), "error").await;
    assert!(e["error"].as_str().unwrap().contains("lookup.q"), "{e}");

    // Auditors see every look-up, the phone's and the office's.
    let aud = app.cli(&["user", "add", "shenji", "--role", "auditor"]);
    let aud = (aud["username"].as_str().unwrap().to_owned(), aud["password"].as_str().unwrap().to_owned());
    let mut found = false;
    for _ in 0..100 {
        let (status, list) = get(&app, &format!("/api/v1/lookups?device={id}&limit=500"), (&aud.0, &aud.1)).await;
        assert_eq!(status, 200, "{list}");
        let items = list["items"].as_array().unwrap();
        if let Some(row) = items.iter().find(|r| r["q"] == "鲁g 12345") {
            assert_eq!((row["outcome"].clone(), row["result"].clone()), (json!("found"), json!("鲁G12345")));
            assert_eq!((row["channel"].clone(), row["lat_e6"].clone()), (json!("mqtt"), json!(36_700_000)));
            assert!(row["ledger_seq"].as_i64().unwrap() > 0);
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "the phone's look-up never reached the audit list");
    let (_, rest) = get(&app, "/api/v1/lookups?limit=500", (&aud.0, &aud.1)).await;
    let rest_row = rest["items"].as_array().unwrap().iter().find(|r| r["channel"] == "rest" && r["q"] == "鲁G·12345");
    assert_eq!(rest_row.unwrap()["at"], between);
    let (status, _) = get(&app, "/api/v1/lookups", admin).await;
    assert_eq!(status, 403);
    assert_eq!(app.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registries_and_lookups_sqlite() {
    registries_and_lookups(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registries_and_lookups_postgres() {
    registries_and_lookups(Db::Postgres).await;
}

async fn rate_limit_answers_and_shutdown_flushes(db: Db) {
    let mut app = TestApp::spawn_with_config(db, "[lookup]\nrate_per_minute = 1\nburst = 3\nrefresh_ms = 50").await;
    let v1 = write(&app, "vehicles.csv", VEHICLES_V1.as_bytes());
    app.cli(&["import", "vehicles", &v1]);
    let (id, client, mut events) = phone(&app, "巡查二号").await;
    // The role subscribes shortly after start: the first look-up is repeated until answered.
    let mut first = Value::Null;
    for i in 0..50 {
        let body = json!({"corr": format!("first-{i}"), "kind": "department", "q": "无此部门"});
        client.publish(format!("jd/v1/dev/{id}/lookup"), QoS::AtLeastOnce, false, body.to_string()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                if let Ok(Event::Incoming(Packet::Publish(m))) = events.poll().await {
                    return serde_json::from_slice::<Value>(&m.payload).unwrap();
                }
            }
        })
        .await;
        if let Ok(v) = got {
            first = v;
            break;
        }
    }
    assert_eq!(first["found"], false, "no answer to the first look-up");
    // Burst of 3 (one used above); 8 more at once: every one is answered, most with an error.
    let mut asked = 1;
    for i in 0..8 {
        let body = json!({"corr": format!("burst-{i}"), "kind": "vehicle", "q": "鲁G12345"});
        client.publish(format!("jd/v1/dev/{id}/lookup"), QoS::AtLeastOnce, false, body.to_string()).await.unwrap();
        asked += 1;
    }
    let mut replies = Vec::new();
    while replies.len() < 8 {
        let v: Value = common::until(&mut events, |p| match p {
            Packet::Publish(m) => serde_json::from_slice(&m.payload).ok(),
            _ => None,
        })
        .await;
        if v["corr"].as_str().is_some_and(|c| c.starts_with("burst-")) {
            replies.push(v);
        }
    }
    let limited: Vec<&Value> = replies.iter().filter(|r| r["error"].is_string()).collect();
    assert!(limited.len() >= 5, "{replies:?}");
    assert!(limited.iter().all(|r| r["found"] == false && r["error"].as_str().unwrap().contains("rate limit")));
    assert!(replies.iter().filter(|r| r["found"] == true).count() <= 3, "{replies:?}");
    client.disconnect().await.ok();

    // Stopping the server writes every queued audit row.
    // Keep the data dir (and its SQLite file) past the app.
    let data = std::mem::replace(&mut app.dir, tempfile::tempdir().unwrap());
    let (dir, db) = (data.path().to_path_buf(), app.db.clone());
    assert_eq!(app.stop().code(), Some(0));
    let out = std::process::Command::new(common::bin())
        .args(["lookup", "audit", "--limit", "100", "--device", &id])
        .env("JIANDU_DATA_DIR", &dir)
        .env("JIANDU_DB", &db)
        .output()
        .unwrap();
    let rows: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(rows.len() >= asked, "{} audit rows for {asked} answered look-ups", rows.len());
    assert!(rows.iter().filter(|r| r["outcome"] == "rate_limited").count() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_answers_and_shutdown_flushes_sqlite() {
    rate_limit_answers_and_shutdown_flushes(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_answers_and_shutdown_flushes_postgres() {
    rate_limit_answers_and_shutdown_flushes(Db::Postgres).await;
}
