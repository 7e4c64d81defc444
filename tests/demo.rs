//! The demo and the phone simulator end to end: `jiandu demo` as a child process on ephemeral
//! ports, watched only from the outside (its printed login, `serve.json`, the REST API and
//! `jiandu verify`), and `jiandu sim` as a load generator against a separate `jiandu serve` on
//! PostgreSQL with credentials from `jiandu device add-bulk`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Db, TestApp, bin};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Safety net only: the demo normally shows everything well within this.
const PATIENCE: Duration = Duration::from_secs(240);

/// Reads a child's stdout lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Api {
    base: String,
    user: String,
    password: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        let resp =
            self.http.get(format!("{}{path}", self.base)).basic_auth(&self.user, Some(&self.password)).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    async fn bytes(&self, path: &str) -> Vec<u8> {
        let resp = self.http.get(format!("{}{path}", self.base)).basic_auth(&self.user, Some(&self.password));
        let resp = resp.send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.bytes().await.unwrap().to_vec()
    }

    /// Devices whose newest position is less than a minute old.
    async fn live_devices(&self) -> Vec<Value> {
        let now = jiandu_now();
        let devices = self.get("/api/v1/devices?limit=5000").await;
        devices["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["position"]["ts"].as_i64().is_some_and(|ts| now - ts < 60_000))
            .cloned()
            .collect()
    }
}

fn jiandu_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn demo_log(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("demo.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_runs_a_live_county_seen_through_rest() {
    common::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let mut child = Command::new(bin())
        .args(["demo", "--devices", "20", "--data-dir"])
        .arg(&data)
        .env("JIANDU_MQTT_LISTEN", "127.0.0.1:0")
        .env("JIANDU_HTTP_LISTEN", "127.0.0.1:0")
        .env("JIANDU_DEMO_SPEED", "30")
        .env("RUST_LOG", "info")
        .env_remove("JIANDU_DATA_DIR")
        .env_remove("JIANDU_DB")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let lines = lines_of(&mut child);

    // The banner tells a newcomer what to open and how to log in.
    let mut banner = Vec::new();
    let login = loop {
        let line =
            lines.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("no login printed; log:\n{}", demo_log(dir.path())));
        banner.push(line.clone());
        if let Some(rest) = line.trim_start().strip_prefix("login") {
            let (user, password) = rest.trim().split_once(" / ").expect("login NAME / PASSWORD");
            break (user.trim().to_owned(), password.trim().to_owned());
        }
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        let done = line.starts_with("Ctrl-C");
        banner.push(line);
        if done {
            break;
        }
    }
    let banner = banner.join("\n");
    let state: Value = serde_json::from_slice(&std::fs::read(data.join("serve.json")).unwrap()).unwrap();
    let http = state["http"].as_str().unwrap().to_owned();
    let mqtt = state["mqtt"].as_str().unwrap().to_owned();
    assert!(banner.contains(&format!("open      {http}/")), "the web view's URL is printed:\n{banner}");
    assert!(banner.contains(&format!("MQTT      {mqtt}")), "{banner}");
    assert!(banner.contains("mosquitto_sub -h 127.0.0.1") && banner.contains("mosquitto_pub -h 127.0.0.1"), "{banner}");
    assert!(banner.contains("(kept; phone credentials in demo.json)"), "{banner}");

    let api = Api { base: http, user: login.0, password: login.1, http: reqwest::Client::new() };
    let deadline = Instant::now() + PATIENCE;
    let (completed, photos) = loop {
        assert!(child.try_wait().unwrap().is_none(), "the demo exited early; log:\n{}", demo_log(dir.path()));
        let live = api.live_devices().await.len();
        let reports = api.get("/api/v1/reports?limit=200").await;
        let completed = reports["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "completed")
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        let photos = api.get("/api/v1/evidence?limit=200").await["items"].as_array().unwrap().clone();
        if live >= 15 && !completed.is_empty() && !photos.is_empty() {
            break (completed, photos);
        }
        assert!(
            Instant::now() < deadline,
            "after {PATIENCE:?}: {live} live devices, {} completed reports, {} photos; log:\n{}",
            completed.len(),
            photos.len(),
            demo_log(dir.path())
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // Phones move around Linqu with realistic fixes.
    let devices = api.live_devices().await;
    for d in &devices {
        let (lat, lon) = (d["position"]["lat"].as_f64().unwrap(), d["position"]["lon"].as_f64().unwrap());
        assert!((36.1..36.8).contains(&lat) && (118.2..118.9).contains(&lon), "{d}");
        assert!(d["position"]["spd"].as_f64().unwrap() <= 16.0 + 1e-9, "no faster than a car: {d}");
    }
    // A completed report went through the whole assignment life cycle on the phone.
    let detail = api.get(&format!("/api/v1/reports/{}", completed[0])).await;
    let statuses: Vec<&str> =
        detail["assignments"].as_array().unwrap().iter().filter_map(|a| a["status"].as_str()).collect();
    assert!(statuses.contains(&"completed"), "{detail}");
    let timeline = detail["timeline"].to_string();
    for step in ["accepted", "arrived", "completed"] {
        assert!(timeline.contains(step), "timeline lacks {step}: {timeline}");
    }
    // The photo is a real PNG whose bytes hash to what was recorded.
    let photo = &photos[0];
    assert_eq!(photo["mime"], "image/png", "{photo}");
    let bytes = api.bytes(&format!("/api/v1/evidence/{}/content", photo["id"].as_str().unwrap())).await;
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(hex::encode(Sha256::digest(&bytes)), photo["sha256"].as_str().unwrap());
    assert!(photo["report_id"].as_str().is_some(), "photos belong to a report: {photo}");

    // A living county: the integrity index shows units in at least four colours (from seeded
    // indicators and the overdue case's alarm and negative record), and the cases page has work,
    // one of it overdue.
    let deadline = Instant::now() + PATIENCE;
    let index = loop {
        let index = api.get("/api/v1/index").await;
        let colours = index["colours"].as_object().map(|c| c.len()).unwrap_or(0);
        if colours >= 4 && index["colours"]["red"].as_i64().unwrap_or(0) >= 1 {
            break index;
        }
        assert!(Instant::now() < deadline, "index after {PATIENCE:?}: {index}\nlog:\n{}", demo_log(dir.path()));
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let units = index["units"].as_array().unwrap();
    assert!(units.len() >= 50, "every department has an index row: {index}");
    let overdue = api.get("/api/v1/cases?overdue=true").await;
    let overdue = overdue["items"].as_array().unwrap_or_else(|| panic!("{overdue}")).clone();
    assert!(!overdue.is_empty(), "at least one overdue case");
    let all = api.get("/api/v1/cases?limit=100").await;
    assert!(all["items"].as_array().unwrap().len() >= 6, "a spread of cases: {all}");
    let negative = api.get("/api/v1/negative-records").await;
    assert!(negative.to_string().contains(overdue[0]["unit"].as_str().unwrap()), "{negative}");

    let status = sigterm(&mut child);
    assert!(status.success(), "demo exit {status}; log:\n{}", demo_log(dir.path()));
    // Everything stored verifies: the ledger chain, each record, receipt signature and blob.
    let out = Command::new(bin())
        .args(["verify", "--deep"])
        .env("JIANDU_DATA_DIR", &data)
        .env_remove("JIANDU_DB")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("demo.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn sim_drives_phones_from_a_credentials_file_against_serve() {
    let app = TestApp::spawn(Db::Postgres).await;
    let creds = app.dir.path().join("phones.jsonl");
    let out = app.cli(&["device", "add-bulk", "5", "--out", creds.to_str().unwrap()]);
    assert_eq!(out["devices"], 5, "{out}");
    // The tips' source goes in the same file, as `integration add` prints it.
    let hotline = app.cli(&["integration", "add", "sim-hotline", "--publish", "jd/v1/reports"]);
    let mut text = std::fs::read_to_string(&creds).unwrap();
    assert_eq!(text.lines().count(), 5);
    text.push_str(&format!("{hotline}\n"));
    std::fs::write(&creds, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let mut sim = Command::new(bin())
        .args(["sim", "--devices", "5", "--credentials"])
        .arg(&creds)
        .args(["--broker", &format!("mqtt://{}:{}", app.mqtt_host, app.mqtt_port), "--speed", "30", "--tip-every", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut sim);
    let api = Api {
        base: app.http.clone(),
        user: app.admin.0.clone(),
        password: app.admin.1.clone(),
        http: reqwest::Client::new(),
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(sim.try_wait().unwrap().is_none(), "sim exited early");
        let live = api.live_devices().await.len();
        let reports = api.get("/api/v1/reports?limit=200").await["items"].as_array().unwrap().len();
        if live == 5 && reports >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "after {PATIENCE:?}: {live} live devices, {reports} reports");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(sigterm(&mut sim).success());
    let summary: Value =
        serde_json::from_str(&lines.recv_timeout(Duration::from_secs(5)).expect("counters printed")).unwrap();
    assert!(summary["connects"].as_u64().unwrap() >= 5, "{summary}");
    // A phone that lost its connection (seen under load) sends what it measured meanwhile from
    // its backlog once back: count points however they went out.
    let sent = summary["heartbeats"].as_u64().unwrap() + summary["backlog_points"].as_u64().unwrap();
    assert!(sent >= 5, "{summary}");
    assert!(summary["heartbeats_acked"].as_u64().unwrap() >= 1, "hb_upto acks reach the phones: {summary}");
    // Refused input is named: too few phones in the file.
    let out = Command::new(bin()).args(["sim", "--devices", "9", "--credentials"]).arg(&creds).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--devices 9") && err.contains("only 5 phones"), "{err}");
    assert!(app.stop().success());
}
