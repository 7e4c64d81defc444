//! `serve` supervises its roles: a role whose database goes away fails, is restarted with
//! backoff and shows in `/healthz` and `/metrics` until it runs again; a role that cannot start
//! ends `serve` with a non-zero exit and the reason on stderr.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Db, TestApp, bin, cli, connect, postgres_base, until};
use rumqttc::{Event, Packet, QoS};
use serde_json::{Value, json};
use sqlx::Connection;

/// `GET /healthz` (no login needed): status code and body.
async fn healthz(app: &TestApp) -> (u16, Value) {
    let resp = reqwest::get(format!("{}/healthz", app.http)).await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// Polls `/healthz` until `pred` holds; panics with the last answer and the log after `limit`.
async fn healthz_until(app: &TestApp, limit: Duration, pred: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (code, body) = healthz(app).await;
        if pred(code, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "healthz never matched; last {code} {body}\nlog:\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Renames a PostgreSQL database, first ending every session on it (the server refuses to
/// rename a database in use, and the app's pool keeps reconnecting).
async fn rename_database(from: &str, to: &str) {
    let mut admin = sqlx::PgConnection::connect(&postgres_base()).await.unwrap();
    for _ in 0..200 {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(from)
        .execute(&mut admin)
        .await
        .unwrap();
        if sqlx::query(&format!("ALTER DATABASE {from} RENAME TO {to}")).execute(&mut admin).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not rename {from} to {to}: it stayed in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_whose_database_goes_away_is_restarted_and_reported_postgres() {
    let app = TestApp::spawn_with_config(
        Db::Postgres,
        "[ingest]\ncommit_give_up_s = 1\n\n[supervise]\nmax_failures = 1000\nwindow_s = 60\nbackoff_initial_ms = 1500\nbackoff_max_ms = 1500\n",
    )
    .await;
    let body = healthz_until(&app, Duration::from_secs(10), |c, b| {
        c == 200 && b["roles"]["ingest.heartbeat"]["state"] == "up"
    })
    .await;
    for role in
        ["ingest.heartbeat", "ingest.evidence", "dispatcher", "oversight.lookup", "oversight.cases", "oversight.index"]
    {
        assert_eq!(body["roles"][role]["restarts"], 0, "{role}: {body}");
    }

    let (id, token) = app.add_device("外勤一号");
    let (phone, mut events) = connect(app.options(&id, Some((&id, &token)))).await.unwrap();
    phone.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

    // Cut the database away under the running roles: every session ended, the name gone.
    let name = app.db.rsplit_once('/').unwrap().1.to_owned();
    let away = format!("{name}_away");
    rename_database(&name, &away).await;
    let now = jiandu_now_ms();
    let hb =
        json!({"ts": now, "lat": 36.51, "lon": 118.54, "acc": 8.0, "spd": 1.2, "hdg": 45.0, "bat": 77.0, "duty": "on"});
    phone.publish(format!("jd/v1/dev/{id}/hb"), QoS::AtLeastOnce, false, hb.to_string()).await.unwrap();

    // The heartbeat ingest cannot commit, gives up, and is restarted (and fails again while the
    // database stays away): failing in /healthz with the database's reason, counted in /metrics.
    // Keep the phone's connection served while the test watches the server.
    let (stop_polling, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let poll = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                r = events.poll() => if let Err(e) = r { panic!("the phone lost its connection: {e}") },
            }
        }
        events
    });
    let body = healthz_until(&app, Duration::from_secs(30), |c, b| {
        c == 503 && b["roles"]["ingest.heartbeat"]["restarts"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let role = &body["roles"]["ingest.heartbeat"];
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(["restarting", "starting"].contains(&role["state"].as_str().unwrap_or("")), "{body}");
    let reason = role["last_error"].as_str().unwrap_or("");
    assert!(reason.contains("heartbeats") || reason.contains("database"), "the reason names the fault: {body}");
    let metrics = reqwest::get(format!("{}/metrics", app.http)).await.unwrap().text().await.unwrap();
    let restarts = metrics
        .lines()
        .find(|l| l.starts_with("jiandu_role_restarts_total{role=\"ingest.heartbeat\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no restart counter in /metrics:\n{metrics}"));
    assert!(restarts >= 1.0, "{metrics}");
    assert!(metrics.contains("jiandu_role_up{role=\"oversight.lookup\"}"), "{metrics}");
    // A restarted role that cannot reach the database never shows as up: it cannot take a
    // heartbeat, so /healthz must not say it can.
    for _ in 0..20 {
        let (code, body) = healthz(&app).await;
        assert_eq!(code, 503, "{body}");
        assert_ne!(body["roles"]["ingest.heartbeat"]["state"], "up", "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The database comes back: the role runs again, healthz is ok (every role subscribed), and
    // heartbeats are stored and acknowledged by the restarted role.
    rename_database(&away, &name).await;
    let body = healthz_until(&app, Duration::from_secs(30), |c, b| {
        c == 200 && b["roles"].as_object().is_some_and(|r| r.values().all(|h| h["state"] == "up"))
    })
    .await;
    assert!(body["roles"]["ingest.heartbeat"]["restarts"].as_u64().unwrap() >= 1, "{body}");
    stop_polling.send(()).unwrap();
    let mut events = poll.await.unwrap_or_else(|e| panic!("phone poller: {e}"));
    // The phone follows the exact protocol (DESIGN §2): the point carries `seq` and is re-sent
    // every few seconds until an `hb_seq` range names it. A point the failed role had taken
    // but not committed is never confirmed, so only re-sending brings it in.
    let later = jiandu_now_ms();
    let hb = json!({"seq": 2, "ts": later, "lat": 36.52, "lon": 118.55, "acc": 8.0, "spd": 1.2, "hdg": 45.0, "bat": 77.0, "duty": "on"});
    let confirms = |v: &Value| {
        v["hb_seq"].as_array().is_some_and(|r| {
            r.iter().any(|r| r[0].as_u64().is_some_and(|a| a <= 2) && r[1].as_u64().is_some_and(|b| b >= 2))
        })
    };
    let acked = tokio::time::timeout(Duration::from_secs(75), async {
        loop {
            phone.publish(format!("jd/v1/dev/{id}/hb"), QoS::AtLeastOnce, false, hb.to_string()).await.unwrap();
            let resend = tokio::time::sleep(Duration::from_secs(5));
            tokio::pin!(resend);
            loop {
                tokio::select! {
                    _ = &mut resend => break,
                    e = events.poll() => if let Ok(Event::Incoming(Packet::Publish(p))) = e
                        && p.topic.ends_with("/inbox/ack")
                        && serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| confirms(&v))
                    {
                        return;
                    },
                }
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "the restarted ingest did not acknowledge; log:\n{}", compact(&app.log()));
    assert!(app.stop().success());
}

/// The log without rumqttd's routine connection and subscription lines, so a failure shows
/// what the roles did.
fn compact(log: &str) -> String {
    log.lines()
        .filter(|l| !l.contains("rumqttd::router::routing") && !l.contains("rumqttd::router::logs"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn jiandu_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Runs `jiandu serve` on an initialised data dir and waits for it to exit: (success, stderr).
fn serve_until_exit(dir: &std::path::Path, db: &str, http: &str) -> (bool, String) {
    let mut child = Command::new(bin())
        .args(["serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", http])
        .env("JIANDU_DATA_DIR", dir)
        .env("JIANDU_DB", db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("serve kept running although a role cannot start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn serve_exits_non_zero_naming_a_role_that_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("jiandu.db").display());
    cli(dir.path(), &db, &["init"]);

    // The web role's port is taken by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, stderr) = serve_until_exit(dir.path(), &db, &addr);
    assert!(!ok, "serve succeeded on a taken port: {stderr}");
    assert!(stderr.contains("web role") && stderr.contains(&addr), "the reason names the role and port: {stderr}");
    drop(taken);

    // The case scheduler's stage template is missing: it fails at every start, and after
    // `max_failures` serve stops with the role and the reason.
    use std::io::Write;
    let missing = dir.path().join("no-such-stages.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("jiandu.toml")).unwrap();
    writeln!(
        f,
        "\n[cases]\nstages_file = {:?}\n\n[supervise]\nmax_failures = 3\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n",
        missing.display().to_string()
    )
    .unwrap();
    let (ok, stderr) = serve_until_exit(dir.path(), &db, "127.0.0.1:0");
    assert!(!ok, "serve succeeded with a role that cannot start: {stderr}");
    assert!(
        stderr.contains("role oversight.cases failed 3 times") && stderr.contains("no-such-stages.toml"),
        "the reason names the role and the missing file: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_reconnecting_does_not_fill_the_log_with_errors() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, token) = app.add_device("外勤二号");
    // The same phone logs in again while its old connection is still open (a coverage gap the
    // phone noticed first): the router takes the session over, which is routine.
    let (_old, mut old_events) = connect(app.options(&id, Some((&id, &token)))).await.unwrap();
    let (new, mut events) = connect(app.options(&id, Some((&id, &token)))).await.unwrap();
    new.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let dropped = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if old_events.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(dropped.is_ok(), "the old connection was not taken over");
    let log = app.log();
    assert!(log.contains("Client connection registered"), "the log is the broker's: {log}");
    assert!(!log.contains("Duplicate client_id"), "a routine takeover logged as an error:\n{log}");
    assert!(!log.contains("ERROR"), "no errors for routine events:\n{log}");
}
