//! Issue 15, the web, evidence and ledger half, against a real `jiandu serve`: failed Basic,
//! Bearer and form logins answered 429 without letting a stranger lock the real user out
//! (clients bind 127.0.0.x so the server sees different addresses), security headers on every
//! answer, the evidence type allow-list, safe content serving and per-device quotas, and the
//! ledger anchored by signed checkpoints that `jiandu verify --checkpoint` holds it to, with
//! deleted evidence records and altered look-up audit rows caught.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::{Db, TestApp, cli_err, connect, until};
use reqwest::StatusCode;
use rumqttc::{Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Row};

/// An HTTP client whose connections come from `127.0.0.{last}`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))).build().unwrap()
}

fn add_user(app: &TestApp, name: &str, role: &str) -> String {
    app.cli(&["user", "add", name, "--role", role])["password"].as_str().unwrap().to_owned()
}

async fn basic(c: &reqwest::Client, app: &TestApp, name: &str, pw: &str) -> reqwest::Response {
    c.get(format!("{}/api/v1/session", app.http)).basic_auth(name, Some(pw)).send().await.unwrap()
}

async fn form(c: &reqwest::Client, app: &TestApp, name: &str, pw: &str) -> reqwest::Response {
    c.post(format!("{}/api/v1/session", app.http)).json(&json!({"name": name, "password": pw})).send().await.unwrap()
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers().get("retry-after").expect("429 carries Retry-After").to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn guessing_is_answered_429_and_strangers_cannot_lock_the_user_out() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let pw = add_user(&app, "leader", "leader");
    let desk = client_from(3);
    assert_eq!(basic(&desk, &app, "leader", &pw).await.status(), StatusCode::OK, "the leader's own desk");

    // A stranger fires 30 wrong Basic passwords at the leader's name as fast as it can.
    let stranger = client_from(2);
    let mut statuses = Vec::new();
    for i in 0..30 {
        let resp = basic(&stranger, &app, "leader", &format!("guess-{i}")).await;
        statuses.push(resp.status().as_u16());
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(&resp);
            assert!((1..=300).contains(&wait), "Retry-After {wait}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..5], [401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // From the stranger's address even the right password is refused now, unchecked.
    assert_eq!(basic(&stranger, &app, "leader", &pw).await.status(), StatusCode::TOO_MANY_REQUESTS);
    // The leader, from their own address, is not locked out: Basic and the login form work.
    assert_eq!(basic(&desk, &app, "leader", &pw).await.status(), StatusCode::OK);
    assert_eq!(form(&desk, &app, "leader", &pw).await.status(), StatusCode::OK);

    // The login form counts the same way: five wrong from .4, then 429 there, not at the desk.
    let other = client_from(4);
    for i in 0..5 {
        assert_eq!(form(&other, &app, "leader", &format!("x{i}")).await.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = form(&other, &app, "leader", &pw).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&resp) >= 1);
    assert_eq!(form(&desk, &app, "leader", &pw).await.status(), StatusCode::OK);
    // Ten failures of the name from all addresses start its global back-off: a new address
    // waits, the leader's known address does not.
    let fresh = client_from(5);
    let resp = basic(&fresh, &app, "leader", &pw).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "a new address waits out the back-off");
    assert!(retry_after(&resp) >= 1);
    assert_eq!(basic(&desk, &app, "leader", &pw).await.status(), StatusCode::OK);

    // Bearer tokens (no name) are counted per address.
    let bot = client_from(6);
    let mut bearer = Vec::new();
    for i in 0..12 {
        let resp = bot
            .get(format!("{}/api/v1/session", app.http))
            .bearer_auth(format!("jdi_not-a-token-{i}"))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after(&resp) >= 1);
        }
        bearer.push(resp.status().as_u16());
    }
    assert_eq!(&bearer[..10], [401; 10], "{bearer:?}");
    assert_eq!(&bearer[10..], [429; 2], "{bearer:?}");
    assert!(app.log().contains("Basic login failed"), "failures are logged");
    assert!(!app.log().contains("guess-1"), "tried passwords never reach the log");
    assert!(app.stop().success());
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let app =
        TestApp::spawn_with_config(Db::Sqlite, "[web]\ntile_url = \"https://tiles.example:8443/{z}/{x}/{y}.png\"")
            .await;
    let c = reqwest::Client::new();
    for path in ["/", "/healthz", "/metrics", "/api/v1/reports", "/api/v1/nope", "/some/view/route"] {
        let resp = c.get(format!("{}{path}", app.http)).send().await.unwrap();
        let h = resp.headers();
        let get = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        assert_eq!(get("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(get("x-frame-options"), "DENY", "{path}");
        assert_eq!(get("referrer-policy"), "no-referrer", "{path}");
        let csp = get("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        let sources: Vec<&str> = csp.split([' ', ';']).collect();
        assert!(!sources.iter().any(|s| ["*", "http:", "https:", "'unsafe-eval'"].contains(s)), "{path}: {csp}");
        if get("content-type").starts_with("text/html") {
            assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
            assert!(csp.contains("connect-src 'self' https://tiles.example:8443;"), "{path}: {csp}");
        } else {
            assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        }
    }
    assert!(app.stop().success());
}

/// A phone subscribed to its inbox.
type Phone = common::InboxPhone;

async fn phone(app: &TestApp, name: &str) -> Phone {
    Phone::start(app, name, |_| {}).await
}

const CHUNK: usize = 64 * 1024;

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn meta(data: &[u8], mime: &str) -> Value {
    json!({"sha256": sha(data), "size": data.len(), "mime": mime, "captured_at": 1_780_272_000_000i64,
        "chunk_size": CHUNK, "chunks": data.len().div_ceil(CHUNK)})
}

impl Phone {
    /// Publishes `meta` and waits for the receipt about `evid` (partial, stored or rejected).
    async fn meta(&mut self, evid: &str, meta: &Value) -> Value {
        let topic = format!("jd/v1/dev/{}/ev/{evid}/meta", self.id);
        self.client.publish(topic, QoS::AtLeastOnce, false, meta.to_string()).await.unwrap();
        self.receipt(evid).await
    }

    async fn receipt(&mut self, evid: &str) -> Value {
        until(&mut self.events, |p| match p {
            Packet::Publish(p) if p.topic.ends_with("/inbox/receipt") => {
                serde_json::from_slice::<Value>(&p.payload).ok().filter(|v| v["evid"] == evid)
            }
            _ => None,
        })
        .await
    }

    /// Uploads a whole item: meta, the missing chunks, meta again until stored or rejected.
    async fn upload(&mut self, evid: &str, data: &[u8], mime: &str) -> Value {
        let m = meta(data, mime);
        let mut r = self.meta(evid, &m).await;
        for _ in 0..10 {
            if r["status"] != "partial" {
                return r;
            }
            for n in r["missing"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize) {
                let chunk = data[n * CHUNK..((n + 1) * CHUNK).min(data.len())].to_vec();
                let topic = format!("jd/v1/dev/{}/ev/{evid}/c/{n}", self.id);
                self.client.publish(topic, QoS::AtLeastOnce, false, chunk).await.unwrap();
            }
            r = self.meta(evid, &m).await;
            while r["status"] == "partial" && r["missing"].as_array().unwrap().is_empty() {
                r = self.receipt(evid).await;
            }
        }
        panic!("upload of {evid} did not finish: {r}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evidence_types_content_headers_and_device_quotas() {
    let app = TestApp::spawn_with_config(
        Db::Sqlite,
        "[evidence]\ndevice_staging_bytes = 150000\ndevice_daily_bytes = 250000",
    )
    .await;
    let mut p = phone(&app, "inspector").await;
    // Markup and documents are refused naming meta.mime, before anything is staged.
    for (evid, mime) in [("e-html", "text/html"), ("e-svg", "image/svg+xml"), ("e-pdf", "application/pdf")] {
        let r = p.meta(evid, &meta(b"<script>alert(document.cookie)</script>", mime)).await;
        assert_eq!(r["status"], "rejected", "{r}");
        assert!(r["error"].as_str().unwrap().starts_with("meta.mime:"), "{r}");
    }
    let photo = bytes(100_000, 1);
    let stored = p.upload("e-photo", &photo, "image/JPEG").await;
    assert_eq!(stored["status"], "stored", "{stored}");

    let get = |path: String| {
        let (n, pw) = app.admin.clone();
        async move { reqwest::Client::new().get(path).basic_auth(n, Some(pw)).send().await.unwrap() }
    };
    let resp = get(format!("{}/api/v1/evidence/e-photo/content", app.http)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "image/jpeg");
    assert_eq!(h["content-disposition"], "inline; filename=\"e-photo\"");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"].to_str().unwrap().starts_with("sandbox"), "{h:?}");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), photo.as_slice());
    // A record whose type is not allow-listed (stored before the list, or edited) is an
    // attachment of opaque bytes, never rendered.
    let mut conn = sqlx::SqliteConnection::connect(&app.db).await.unwrap();
    sqlx::query("UPDATE evidence SET mime = 'text/html' WHERE evid = 'e-photo'").execute(&mut conn).await.unwrap();
    let resp = get(format!("{}/api/v1/evidence/e-photo/content", app.http)).await;
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["content-disposition"], "attachment; filename=\"e-photo\"");
    assert!(resp.headers()["content-security-policy"].to_str().unwrap().starts_with("sandbox"));

    // Staging quota: one open 100 kB upload, a second does not fit in 150 kB.
    let second = bytes(100_000, 2);
    let r = p.meta("e-open", &meta(&second, "video/mp4")).await;
    assert_eq!(r["status"], "partial", "{r}");
    let r = p.meta("e-third", &meta(&bytes(100_000, 3), "audio/mp4")).await;
    assert_eq!(r["status"], "rejected", "{r}");
    assert!(r["error"].as_str().unwrap().contains("evidence.device_staging_bytes = 150000"), "{r}");
    assert_eq!(p.upload("e-open", &second, "video/mp4").await["status"], "stored");
    // Daily quota: 200 kB stored today, another 100 kB would pass 250 kB.
    let r = p.meta("e-fourth", &meta(&bytes(100_000, 4), "image/png")).await;
    assert_eq!(r["status"], "rejected", "{r}");
    assert!(r["error"].as_str().unwrap().contains("evidence.device_daily_bytes = 250000"), "{r}");
    // Another phone has its own quota.
    let mut q = phone(&app, "colleague").await;
    assert_eq!(q.upload("e-other", &bytes(100_000, 5), "image/png").await["status"], "stored");
    conn.close().await.unwrap();
    assert!(app.stop().success());
}

/// The ledger's entries as (seq, ts, kind, actor, subject, body) in order.
async fn ledger_rows(conn: &mut sqlx::SqliteConnection) -> Vec<(i64, i64, String, String, String, Value)> {
    sqlx::query("SELECT seq, ts, kind, actor, subject, body FROM ledger ORDER BY seq")
        .fetch_all(conn)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let body: String = r.get("body");
            (
                r.get("seq"),
                r.get("ts"),
                r.get("kind"),
                r.get("actor"),
                r.get("subject"),
                serde_json::from_str(&body).unwrap(),
            )
        })
        .collect()
}

/// What someone with database access does to hide a change: rewrite entries from `from` on,
/// recompute every hash per the documented recipe, and move the head.
async fn rewrite_chain(conn: &mut sqlx::SqliteConnection, from: i64) {
    let rows = ledger_rows(conn).await;
    let mut prev = jiandu_store::GENESIS_HASH.to_owned();
    for (seq, ts, kind, actor, subject, body) in rows {
        let actor = if seq == from { "nobody".to_owned() } else { actor };
        let entry = json!({"seq": seq, "ts": ts, "kind": kind, "actor": actor, "subject": subject, "body": body});
        let hash = hex::encode(Sha256::digest(format!("{prev}{}", jiandu_store::canonical_json(&entry))));
        if seq >= from {
            sqlx::query("UPDATE ledger SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?")
                .bind(&actor)
                .bind(&prev)
                .bind(&hash)
                .bind(seq)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        prev = hash;
    }
    sqlx::query("UPDATE ledger_head SET hash = ? WHERE id = 1").bind(&prev).execute(&mut *conn).await.unwrap();
}

/// Cuts the ledger after entry `keep` and moves the head there.
async fn truncate_chain(conn: &mut sqlx::SqliteConnection, keep: i64) {
    sqlx::query("DELETE FROM ledger WHERE seq > ?").bind(keep).execute(&mut *conn).await.unwrap();
    let hash: String =
        sqlx::query("SELECT hash FROM ledger WHERE seq = ?").bind(keep).fetch_one(&mut *conn).await.unwrap().get(0);
    sqlx::query("UPDATE ledger_head SET seq = ?, hash = ? WHERE id = 1")
        .bind(keep)
        .bind(hash)
        .execute(&mut *conn)
        .await
        .unwrap();
}

fn broken(app: &TestApp, args: &[&str]) -> Vec<String> {
    let err = cli_err(app.dir.path(), &app.db, args);
    err.lines().filter(|l| l.starts_with("BROKEN")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_holds_the_ledger_to_signed_checkpoints_and_its_records() {
    let app = TestApp::spawn_with_config(Db::Sqlite, "[evidence]\ncheckpoint_interval_s = 1").await;
    let admin = (app.admin.0.as_str(), app.admin.1.as_str());
    let http = reqwest::Client::new();
    let key: Value = http
        .get(format!("{}/api/v1/ledger/key", app.http))
        .basic_auth(admin.0, Some(admin.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_file = app.dir.path().join("../platform-key.json");
    std::fs::write(&key_file, key.to_string()).unwrap();
    let key_arg = key_file.to_str().unwrap();

    // Some history: an item stored, downloads of it, an audited look-up.
    let mut p = phone(&app, "inspector").await;
    assert_eq!(p.upload("e-1", &bytes(70_000, 7), "image/jpeg").await["status"], "stored");
    let csv = app.dir.path().join("vehicles.csv");
    std::fs::write(&csv, "plate,unit,type,category,driver,status\n鲁G12345,县财政局,轿车,general,刘伟,in_service\n")
        .unwrap();
    app.cli(&["import", "vehicles", csv.to_str().unwrap()]);
    let look = http.get(format!("{}/api/v1/lookup/vehicle?q=鲁G12345", app.http)).basic_auth(admin.0, Some(admin.1));
    assert!(look.send().await.unwrap().status().is_success());
    let content = format!("{}/api/v1/evidence/e-1/content", app.http);
    for _ in 0..4 {
        assert!(http.get(&content).basic_auth(admin.0, Some(admin.1)).send().await.unwrap().status().is_success());
    }

    // The platform publishes signed checkpoints, retained, for integrations allowed to read them.
    let (user, pw) = app.add_integration("archive", &["jd/v1/platform/#"], &[]);
    let (client, mut events) = connect(app.options("archive-1", Some((&user, &pw)))).await.unwrap();
    client.subscribe("jd/v1/platform/checkpoint", QoS::AtLeastOnce).await.unwrap();
    let published: Value = until(&mut events, |pk| match pk {
        Packet::Publish(m) if m.topic == "jd/v1/platform/checkpoint" => serde_json::from_slice(&m.payload).ok(),
        _ => None,
    })
    .await;
    assert_eq!(published["type"], "jiandu.ledger.checkpoint");
    assert_eq!(published["key_id"], key["key_id"]);
    let published_file = app.dir.path().join("../published.json");
    std::fs::write(&published_file, published.to_string()).unwrap();
    // A phone may not read them (it has no right to the platform's topics beyond its key).
    let (dev, token) = app.add_device("nosy");
    let (nosy, mut nosy_events) = connect(app.options(&dev, Some((&dev, &token)))).await.unwrap();
    nosy.subscribe("jd/v1/platform/checkpoint", QoS::AtLeastOnce).await.unwrap();
    let codes = until(&mut nosy_events, |pk| match pk {
        Packet::SubAck(a) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, [SubscribeReasonCode::Failure]);

    // An operator's export, kept away from the server.
    let cp_file = app.dir.path().join("../cp.json");
    let cp = app.cli(&["ledger", "checkpoint", "--out", cp_file.to_str().unwrap()]);
    let cp_seq = cp["seq"].as_i64().unwrap();
    assert!(cp_seq >= 7, "{cp}");
    let cp_arg = cp_file.to_str().unwrap();
    let ok = app.cli(&[
        "verify",
        "--checkpoint",
        cp_arg,
        "--checkpoint",
        published_file.to_str().unwrap(),
        "--public-key",
        key_arg,
    ]);
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["keys_from_database"], false);
    assert_eq!(ok["lookup_audits"], 1);
    // A checkpoint with a forged head fails its signature.
    let mut forged = cp.clone();
    forged["seq"] = json!(cp_seq - 1);
    let forged_file = app.dir.path().join("../forged.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let b = broken(&app, &["verify", "--checkpoint", forged_file.to_str().unwrap(), "--public-key", key_arg]);
    assert!(b.len() == 1 && b[0].contains("sig: does not match"), "{b:?}");

    // More history after the checkpoint still extends it.
    assert!(http.get(&content).basic_auth(admin.0, Some(admin.1)).send().await.unwrap().status().is_success());

    // Rewriting the chain (recomputed hashes) passes plain verify, not the checkpoint.
    let mut conn = sqlx::SqliteConnection::connect(&app.db).await.unwrap();
    rewrite_chain(&mut conn, cp_seq - 2).await;
    assert_eq!(app.cli(&["verify", "--public-key", key_arg])["ok"], true, "the chain alone holds after a rewrite");
    let b = broken(&app, &["verify", "--checkpoint", cp_arg, "--public-key", key_arg]);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].contains(&format!("ledger entry {cp_seq} has hash")) && b[0].contains("rewritten"), "{b:?}");

    // Cutting off the newest entries passes plain verify, not a checkpoint of the rewritten head.
    let cp2_file = app.dir.path().join("../cp2.json");
    let cp2 = app.cli(&["ledger", "checkpoint", "--out", cp2_file.to_str().unwrap()]);
    assert_eq!(cp2["seq"].as_i64().unwrap(), cp_seq + 1);
    truncate_chain(&mut conn, cp_seq - 1).await;
    assert_eq!(app.cli(&["verify", "--public-key", key_arg])["ok"], true, "the chain alone holds after a cut");
    let b = broken(&app, &["verify", "--checkpoint", cp2_file.to_str().unwrap(), "--public-key", key_arg]);
    assert!(b.iter().any(|l| l.contains(&format!("ends at entry {} ", cp_seq - 1))), "{b:?}");
    assert!(
        b.iter().any(|l| l.contains(&format!("ledger entry {} of the checkpoint is missing", cp_seq + 1))),
        "{b:?}"
    );

    // A deleted evidence record is noticed from its ledger entry.
    sqlx::query("DELETE FROM evidence WHERE evid = 'e-1'").execute(&mut conn).await.unwrap();
    let b = broken(&app, &["verify", "--public-key", key_arg]);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].contains("stored evidence e-1, whose record is gone"), "{b:?}");

    // An altered look-up audit row no longer hashes to its batch's ledger entry.
    sqlx::query("UPDATE lookup_audit SET q = '鲁G99999'").execute(&mut conn).await.unwrap();
    let b = broken(&app, &["verify", "--public-key", key_arg]);
    assert!(b.iter().any(|l| l.contains("look-up audit rows 1..=1") && l.contains("a row was altered")), "{b:?}");

    // Without --public-key, verify says it trusts the database's own key.
    let err = cli_err(app.dir.path(), &app.db, &["verify"]);
    assert!(err.contains("warning: trusting the platform key(s) stored in the database"), "{err}");
    // A key that did not sign anything here makes every receipt and checkpoint untrusted.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = jiandu_store::PlatformKey::load_or_create(&elsewhere.path().join("k")).unwrap().0.public_hex();
    let b = broken(&app, &["verify", "--checkpoint", cp_arg, "--public-key", &stranger]);
    assert!(b.iter().any(|l| l.contains("which is not trusted")), "{b:?}");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn behind_a_trusted_proxy_failures_count_per_forwarded_client_and_strangers_cannot_forge_it() {
    let app = TestApp::spawn_with_config(Db::Sqlite, "[web]\ntrusted_proxies = [\"127.0.0.9\"]").await;
    let pw = add_user(&app, "leader", "leader");
    let proxy = client_from(9);
    let via = |client: &'static str, password: String| {
        let proxy = proxy.clone();
        let url = format!("{}/api/v1/session", app.http);
        async move {
            proxy
                .get(url)
                .basic_auth("leader", Some(password))
                .header("x-forwarded-for", format!("203.0.113.66, {client}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // A guesser behind the proxy is locked out by its own address...
    let mut statuses = Vec::new();
    for i in 0..15 {
        statuses.push(via("198.51.100.7", format!("guess-{i}")).await.as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // ...while the leader behind the same proxy, from another address, still logs in.
    assert_eq!(via("198.51.100.8", pw.clone()).await, StatusCode::OK);
    // A client that is not a trusted proxy cannot pick its address with the header: its own
    // failures lock it, whatever it claims.
    let stranger = client_from(4);
    let mut statuses = Vec::new();
    for i in 0..15 {
        let resp = stranger
            .get(format!("{}/api/v1/session", app.http))
            .basic_auth("nobody", Some(format!("guess-{i}")))
            .header("x-forwarded-for", format!("192.0.2.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses.contains(&429), "forged X-Forwarded-For escaped the limit: {statuses:?}");
    assert_eq!(basic(&client_from(3), &app, "leader", &pw).await.status(), StatusCode::OK);
}
