//! Issue 15, account administration against a real `jiandu serve`: disabling a web user (REST
//! and CLI) ends their browser session, cached Basic login and open event stream at once; a
//! role change takes effect at the next request; the last admin cannot be locked out; an
//! integration disabled over REST is cut off on MQTT and HTTP; and every one of these changes,
//! with user creation and device revocation, is a ledger entry naming who made it. Each
//! endpoint is also tried by callers without the right.

mod common;

use std::time::{Duration, Instant};

use common::{Db, TestApp, connect};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A logged-in browser: its cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn login(app: &TestApp, name: &str, password: &str) -> Browser {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/session", app.http))
        .json(&json!({"name": name, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "login of {name}");
    let set = resp.headers()["set-cookie"].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    Browser { cookie, csrf: body["csrf"].as_str().unwrap().to_owned() }
}

impl Browser {
    async fn get(&self, app: &TestApp, path: &str) -> reqwest::Response {
        reqwest::Client::new().get(format!("{}{path}", app.http)).header("cookie", &self.cookie).send().await.unwrap()
    }

    async fn post(&self, app: &TestApp, path: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", app.http))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

async fn basic_get(app: &TestApp, name: &str, password: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new().get(format!("{}{path}", app.http)).basic_auth(name, Some(password)).send().await.unwrap()
}

async fn admin_post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", app.http))
        .basic_auth(&app.admin.0, Some(&app.admin.1))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The ledger's entries of `kind`, oldest first.
async fn ledger_of(app: &TestApp, kind: &str) -> Vec<Value> {
    let page = app.get_json("/api/v1/ledger?limit=500").await;
    let mut items: Vec<Value> =
        page["items"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).cloned().collect();
    items.reverse();
    items
}

async fn disabling_a_user_ends_every_way_in(db: Db) {
    let app = TestApp::spawn(db).await;
    // The admin creates a desk user in the web view: a ledger entry naming the admin.
    let resp = admin_post(&app, "/api/v1/users", json!({"name": "desk.wang", "role": "dispatcher"})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    let password = created["password"].as_str().unwrap().to_owned();
    let user_id = created["user"]["id"].as_str().unwrap().to_owned();
    let entries = ledger_of(&app, "user.created").await;
    let entry = entries.iter().find(|e| e["subject"] == user_id).expect("user.created in the ledger");
    assert_eq!(entry["actor"], app.admin.0.as_str());
    assert_eq!(entry["body"]["role"], "dispatcher");
    assert_eq!(entry["body"]["name"], "desk.wang");

    // The desk user is logged in twice: a browser (with an open event stream) and Basic (cached).
    let browser = login(&app, "desk.wang", &password).await;
    assert_eq!(browser.get(&app, "/api/v1/reports").await.status(), StatusCode::OK);
    assert_eq!(basic_get(&app, "desk.wang", &password, "/api/v1/reports").await.status(), StatusCode::OK);
    let stream = browser.get(&app, "/api/v1/events").await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream;

    // Without the right: the desk user cannot disable anyone, an integration neither.
    let resp = browser.post(&app, &format!("/api/v1/users/{}/disable", app.admin.0), json!({})).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (_, token) = app.add_integration("hotline", &["jd/v1/events/#"], &["jd/v1/reports"]);
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/users/desk.wang/disable", app.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp =
        reqwest::Client::new().post(format!("{}/api/v1/users/desk.wang/disable", app.http)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // The admin disables the desk user in the web view.
    let resp = admin_post(&app, "/api/v1/users/desk.wang/disable", json!({})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let user: Value = resp.json().await.unwrap();
    assert!(user["user"]["disabled_at"].is_i64(), "{user}");
    assert_eq!(browser.get(&app, "/api/v1/reports").await.status(), StatusCode::UNAUTHORIZED, "the session ended");
    assert_eq!(
        basic_get(&app, "desk.wang", &password, "/api/v1/reports").await.status(),
        StatusCode::UNAUTHORIZED,
        "the cached Basic login ended"
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/session", app.http))
        .json(&json!({"name": "desk.wang", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no new login");
    // The open event stream ends within seconds.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), async { while let Ok(Some(_)) = stream.chunk().await {} })
        .await
        .expect("the event stream of a disabled user ends");
    eprintln!("event stream ended {:?} after the disable", started.elapsed());
    let disabled = ledger_of(&app, "user.disabled").await;
    assert_eq!(disabled.len(), 1, "{disabled:?}");
    assert_eq!(disabled[0]["subject"], user_id.as_str());
    assert_eq!(disabled[0]["actor"], app.admin.0.as_str());
    // Disabling again changes nothing and writes nothing.
    assert_eq!(admin_post(&app, "/api/v1/users/desk.wang/disable", json!({})).await.status(), StatusCode::OK);
    assert_eq!(ledger_of(&app, "user.disabled").await.len(), 1);

    // Enabled again, the user logs in again.
    assert_eq!(admin_post(&app, "/api/v1/users/desk.wang/enable", json!({})).await.status(), StatusCode::OK);
    let browser = login(&app, "desk.wang", &password).await;
    assert_eq!(browser.get(&app, "/api/v1/reports").await.status(), StatusCode::OK);

    // The CLI, another process writing only to the database, ends that session too.
    app.cli(&["user", "disable", "desk.wang"]);
    assert_eq!(browser.get(&app, "/api/v1/reports").await.status(), StatusCode::UNAUTHORIZED);
    let disabled = ledger_of(&app, "user.disabled").await;
    assert_eq!(disabled.len(), 2);
    assert!(disabled[1]["actor"].as_str().unwrap().starts_with("cli"), "{}", disabled[1]);
    assert_eq!(ledger_of(&app, "user.enabled").await.len(), 1);
}

#[tokio::test]
async fn disabling_a_user_ends_every_way_in_sqlite() {
    disabling_a_user_ends_every_way_in(Db::Sqlite).await;
}

#[tokio::test]
async fn disabling_a_user_ends_every_way_in_postgres() {
    disabling_a_user_ends_every_way_in(Db::Postgres).await;
}

#[tokio::test]
async fn a_role_change_applies_at_the_next_request_and_the_last_admin_stays() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let password = app.cli(&["user", "add", "zhao", "--role", "dispatcher"])["password"].as_str().unwrap().to_owned();
    let browser = login(&app, "zhao", &password).await;
    // A dispatcher may not list users.
    assert_eq!(browser.get(&app, "/api/v1/users").await.status(), StatusCode::FORBIDDEN);
    // Nor change roles, its own included.
    let resp = browser.post(&app, "/api/v1/users/zhao/role", json!({"role": "admin"})).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let resp = admin_post(&app, "/api/v1/users/zhao/role", json!({"role": "admin"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The same session now has the new role.
    assert_eq!(browser.get(&app, "/api/v1/users").await.status(), StatusCode::OK);
    let me: Value = browser.get(&app, "/api/v1/session").await.json().await.unwrap();
    assert_eq!(me["user"]["role"], "admin");
    let roles = ledger_of(&app, "user.role").await;
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["body"], json!({"from": "dispatcher", "to": "admin", "name": "zhao"}));
    assert_eq!(roles[0]["actor"], app.admin.0.as_str());

    // Field-level errors.
    let resp = admin_post(&app, "/api/v1/users/zhao/role", json!({"role": "king"})).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["field"], "role");
    let resp = admin_post(&app, "/api/v1/users/zhao/role", json!({"rank": "admin"})).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(admin_post(&app, "/api/v1/users/nobody/disable", json!({})).await.status(), StatusCode::NOT_FOUND);

    // Two admins: zhao may disable the first, but then not themself, nor drop their own role.
    let resp = browser.post(&app, &format!("/api/v1/users/{}/disable", app.admin.0), json!({})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = browser.post(&app, "/api/v1/users/zhao/disable", json!({})).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT, "the last admin cannot be disabled");
    let resp = browser.post(&app, "/api/v1/users/zhao/role", json!({"role": "leader"})).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT, "the last admin keeps the role");
    assert_eq!(browser.get(&app, "/api/v1/users").await.status(), StatusCode::OK, "and can still administer");
    let err = common::cli_err(app.dir.path(), &app.db, &["user", "disable", "zhao"]);
    assert!(err.contains("last enabled admin"), "{err}");
}

#[tokio::test]
async fn an_integration_disabled_over_rest_is_cut_off_and_ledgered() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (name, token) = app.add_integration("hotline", &["jd/v1/events/#"], &["jd/v1/reports"]);
    let (device, _) = app.add_device("phone");
    let list = app.get_json("/api/v1/integrations").await;
    assert_eq!(list["items"][0]["name"], "hotline");
    assert!(!list.to_string().contains(&token), "tokens are never listed");
    let (_c, mut events) = connect(app.options(&name, Some((&name, &token)))).await.unwrap();
    let bearer = |path: &str| reqwest::Client::new().get(format!("{}{path}", app.http)).bearer_auth(&token).send();
    assert_eq!(bearer("/api/v1/reports").await.unwrap().status(), StatusCode::OK);
    // An integration cannot list or disable integrations, its own included.
    assert_eq!(bearer("/api/v1/integrations").await.unwrap().status(), StatusCode::FORBIDDEN);
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/integrations/hotline/disable", app.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A device id is not an integration.
    assert_eq!(
        admin_post(&app, &format!("/api/v1/integrations/{device}/disable"), json!({})).await.status(),
        StatusCode::NOT_FOUND
    );

    let resp = admin_post(&app, "/api/v1/integrations/hotline/disable", json!({})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(5), async { while events.poll().await.is_ok() {} })
        .await
        .expect("the MQTT session ends within 5 s");
    assert_eq!(bearer("/api/v1/reports").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let revoked = ledger_of(&app, "account.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["subject"], "hotline");
    assert_eq!(revoked[0]["actor"], app.admin.0.as_str());

    // Device revocations are in the ledger too, naming who revoked.
    let resp = admin_post(&app, &format!("/api/v1/devices/{device}/revoke"), json!({})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let revoked = ledger_of(&app, "device.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["subject"], device.as_str());
    assert_eq!(revoked[0]["actor"], app.admin.0.as_str());
    // And `jiandu verify` still passes over the new kinds of entry.
    app.cli(&["verify"]);
}
