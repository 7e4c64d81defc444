//! The HTTP authentication and ACL hooks an EMQX 5 (or rmqtt) cluster calls
//! (`POST /api/v1/mqtt/auth`, `/acl`), called exactly as the broker would, against a real
//! `jiandu serve` on SQLite and PostgreSQL: every account kind, refusals, revocation, malformed
//! requests and callers without the secret.

mod common;

use std::time::{Duration, Instant};

use common::{Db, TestApp};
use serde_json::{Value, json};

const SECRET: &str = "hook-secret-4f0c1b0e9a";

async fn hook(app: &TestApp, path: &str, auth: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{}/api/v1/mqtt/{path}", app.http)).json(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The broker's login question (EMQX's placeholders, sent as strings): the `result`.
async fn login(app: &TestApp, client: &str, user: &str, password: &str) -> String {
    let body = json!({"clientid": client, "username": user, "password": password, "peerhost": "10.1.2.3"});
    let (status, v) = hook(app, "auth", Some(&format!("Bearer {SECRET}")), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["is_superuser"], json!(false), "{v}");
    v["result"].as_str().unwrap().to_owned()
}

/// The broker's ACL question: the `result`.
async fn acl(app: &TestApp, client: &str, user: &str, action: &str, topic: &str, retain: bool) -> String {
    let body = json!({"clientid": client, "username": user, "action": action, "topic": topic,
        "qos": "1", "retain": retain.to_string(), "peerhost": "10.1.2.3"});
    let (status, v) = hook(app, "acl", Some(&format!("Bearer {SECRET}")), &body).await;
    assert_eq!(status, 200, "{v}");
    v["result"].as_str().unwrap().to_owned()
}

async fn every_account_kind(db: Db) {
    let app = TestApp::spawn_with_config(db, &format!("mqtt_hook_secret = \"{SECRET}\"")).await;
    let (da, pa) = app.add_device("phone a");
    let (db_, _) = app.add_device("phone b");
    let (city, pcity) = app.add_integration("city", &["jd/v1/events/#"], &["jd/v1/reports"]);

    // Logins: the token, not revoked, client id the name or name-suffix.
    assert_eq!(login(&app, &da, &da, &pa).await, "allow");
    assert_eq!(login(&app, &format!("{da}-sub"), &da, &pa).await, "allow");
    assert_eq!(login(&app, &db_, &da, &pa).await, "deny", "another device's client id");
    assert_eq!(login(&app, &da, &da, "wrong").await, "deny");
    assert_eq!(login(&app, &da, &da, "").await, "deny");
    assert_eq!(login(&app, &db_, &db_, &pa).await, "deny", "a's token for b");
    assert_eq!(login(&app, "nobody", "nobody", &pa).await, "deny");
    assert_eq!(login(&app, "", "", "").await, "deny");
    assert_eq!(login(&app, &city, &city, &pcity).await, "allow");
    assert_eq!(login(&app, &city, &city, &pa).await, "deny");

    // A device: its own contract topics, presence alone retained, its inbox alone to read.
    let hb = format!("jd/v1/dev/{da}/hb");
    assert_eq!(acl(&app, &da, &da, "publish", &hb, false).await, "allow");
    assert_eq!(acl(&app, &da, &da, "publish", &hb, true).await, "deny", "only presence is retained");
    assert_eq!(acl(&app, &da, &da, "publish", &format!("jd/v1/dev/{da}/presence"), true).await, "allow");
    assert_eq!(acl(&app, &da, &da, "publish", &format!("jd/v1/dev/{da}/ev/e1/c/0"), false).await, "allow");
    assert_eq!(acl(&app, &da, &da, "publish", &format!("owntracks/{da}/phone"), false).await, "allow");
    assert_eq!(acl(&app, &da, &da, "publish", &format!("jd/v1/dev/{db_}/hb"), false).await, "deny");
    assert_eq!(acl(&app, &da, &da, "publish", &format!("jd/v1/dev/{da}/inbox/ack"), false).await, "deny");
    assert_eq!(acl(&app, &da, &da, "publish", &format!("jd/v1/dev/{da}/junk"), false).await, "deny");
    assert_eq!(acl(&app, &da, &da, "publish", "jd/v1/reports", false).await, "deny");
    assert_eq!(acl(&app, &da, &da, "subscribe", &format!("jd/v1/dev/{da}/inbox/#"), false).await, "allow");
    assert_eq!(acl(&app, &da, &da, "subscribe", "jd/v1/platform/key", false).await, "allow");
    assert_eq!(acl(&app, &da, &da, "subscribe", &format!("jd/v1/dev/{db_}/inbox/#"), false).await, "deny");
    assert_eq!(acl(&app, &da, &da, "subscribe", "jd/v1/dev/+/inbox/#", false).await, "deny");
    assert_eq!(acl(&app, &da, &da, "subscribe", "#", false).await, "deny");
    assert_eq!(acl(&app, &da, &da, "subscribe", &format!("$share/{da}/jd/v1/dev/{da}/inbox/#"), false).await, "deny");
    assert_eq!(acl(&app, &db_, &da, "publish", &hb, false).await, "deny", "a's topic under b's client id");

    // An integration: its filters, shared groups under its own name only.
    assert_eq!(acl(&app, &city, &city, "subscribe", "jd/v1/events/report", false).await, "allow");
    assert_eq!(acl(&app, &city, &city, "subscribe", "$share/city/jd/v1/events/#", false).await, "allow");
    assert_eq!(acl(&app, "city-2", &city, "subscribe", "$share/city-workers/jd/v1/events/#", false).await, "allow");
    assert_eq!(acl(&app, &city, &city, "subscribe", "$share/dispatch-tip/jd/v1/reports", false).await, "deny");
    assert_eq!(acl(&app, &city, &city, "subscribe", "$share/other/jd/v1/events/#", false).await, "deny");
    assert_eq!(acl(&app, &city, &city, "subscribe", "jd/v1/dev/+/hb", false).await, "deny");
    assert_eq!(acl(&app, &city, &city, "publish", "jd/v1/reports", false).await, "allow");
    assert_eq!(acl(&app, &city, &city, "publish", &hb, false).await, "deny");

    // The platform's service account: the platform's shared groups and every topic.
    let svc = app.cli(&["broker", "service-account", "jiandu-svc"]);
    let (svc_name, svc_pw) = (svc["username"].as_str().unwrap(), svc["password"].as_str().unwrap());
    assert_eq!(login(&app, "jiandu-svc-ingest-1f", svc_name, svc_pw).await, "allow");
    assert_eq!(login(&app, "jiandu-svc", svc_name, &pa).await, "deny");
    assert_eq!(
        acl(&app, "jiandu-svc-ingest-1f", svc_name, "subscribe", "$share/ingest-hb/jd/v1/dev/+/hb", false).await,
        "allow"
    );
    assert!(
        common::cli_err(app.dir.path(), &app.db, &["broker", "service-account", "jiandu"]).contains("rotates"),
        "the embedded broker's own account must not be handed out"
    );
    assert_eq!(
        acl(&app, "jiandu-ingest-1", "jiandu", "subscribe", "$share/ingest-hb/jd/v1/dev/+/hb", false).await,
        "allow"
    );
    assert_eq!(acl(&app, "jiandu", "jiandu", "publish", &format!("jd/v1/dev/{da}/inbox/ack"), false).await, "allow");
    assert_eq!(acl(&app, "x", "stranger", "subscribe", "jd/v1/events/#", false).await, "deny");

    // rmqtt / EMQX 4 style: `access` 1 = subscribe, 2 = publish.
    let (status, v) = hook(
        &app,
        "acl",
        Some(&format!("Bearer {SECRET}")),
        &json!({"clientid": da, "username": da, "access": "2", "topic": hb}),
    )
    .await;
    assert_eq!((status, v["result"].as_str()), (200, Some("allow")), "{v}");

    // Revocation: a cached login and the topic rights end within seconds.
    app.cli(&["device", "revoke", &da]);
    app.cli(&["integration", "disable", &city]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = login(&app, &da, &da, &pa).await == "deny"
            && acl(&app, &da, &da, "publish", &hb, false).await == "deny"
            && login(&app, &city, &city, &pcity).await == "deny"
            && acl(&app, &city, &city, "publish", "jd/v1/reports", false).await == "deny";
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "revoked accounts still allowed after 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Malformed questions: 422 naming the field; an oversized body: 413.
    let auth = format!("Bearer {SECRET}");
    let (status, v) =
        hook(&app, "acl", Some(&auth), &json!({"clientid": da, "username": da, "action": "publish"})).await;
    assert_eq!((status, v["error"]["field"].as_str()), (422, Some("topic")), "{v}");
    let (status, v) =
        hook(&app, "acl", Some(&auth), &json!({"clientid": da, "username": da, "action": "delete", "topic": hb})).await;
    assert_eq!((status, v["error"]["field"].as_str()), (422, Some("action")), "{v}");
    let (status, v) = hook(&app, "auth", Some(&auth), &json!({"clientid": da, "username": 7, "password": "x"})).await;
    assert_eq!((status, v["error"]["field"].as_str()), (422, Some("username")), "{v}");
    let (status, v) = hook(&app, "auth", Some(&auth), &json!(["not", "an", "object"])).await;
    assert_eq!((status, v["error"]["field"].as_str()), (422, Some("body")), "{v}");
    let huge = json!({"clientid": da, "username": da, "password": "x".repeat(20_000)});
    let (status, _) = hook(&app, "auth", Some(&auth), &huge).await;
    assert_eq!(status, 413);

    // Only the broker may ask: no secret, a wrong one, a device's own token.
    let body = json!({"clientid": db_, "username": db_, "password": "x"});
    for auth in
        [None, Some("Bearer nope".to_owned()), Some(format!("Bearer {pa}")), Some("Basic ZW1xeDpub3Bl".to_owned())]
    {
        for path in ["auth", "acl"] {
            let (status, v) = hook(&app, path, auth.as_deref(), &body).await;
            assert_eq!(status, 401, "{path} with {auth:?}: {v}");
            assert!(v.get("result").is_none(), "{v}");
        }
    }
    // Basic with the secret as password is how some brokers send a credential.
    let basic = "Basic ZW1xeDpob29rLXNlY3JldC00ZjBjMWIwZTlh"; // base64 of "emqx:{SECRET}"
    let (status, v) =
        hook(&app, "auth", Some(basic), &json!({"clientid": db_, "username": db_, "password": "x"})).await;
    assert_eq!((status, v["result"].as_str()), (200, Some("deny")), "{v}");
    app.stop();
}

#[tokio::test]
async fn hooks_answer_every_account_kind_on_sqlite() {
    every_account_kind(Db::Sqlite).await;
}

#[tokio::test]
async fn hooks_answer_every_account_kind_on_postgres() {
    every_account_kind(Db::Postgres).await;
}

#[tokio::test]
async fn hooks_are_off_without_a_secret() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (d, p) = app.add_device("phone");
    let body = json!({"clientid": d, "username": d, "password": p});
    for auth in [None, Some("Bearer ")] {
        let (status, v) = hook(&app, "auth", auth, &body).await;
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["error"]["code"], "hooks_disabled", "{v}");
    }
    app.stop();
}
