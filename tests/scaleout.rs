//! Issue 17's acceptance: jiandu scaled out on existing engines, every role its own process, all
//! on loopback. PostgreSQL (a fresh database), moto S3 (a bucket with Object Lock and a default
//! COMPLIANCE retention) and Mosquitto 2 with dynamic security (kept in step by `jiandu broker
//! sync` and the continuous sync of the oversight+web process); two `serve --roles ingest`
//! processes sharing the heartbeat and evidence groups with evidence staged in the database, two
//! `serve --roles dispatcher` (one active by the PostgreSQL advisory lock), oversight+web in a
//! fifth process.
//!
//! Phones (rumqttc clients following DESIGN §3: `seq` on every point, kept until an `hb_seq`
//! range names it, re-sent when unconfirmed; evidence as meta, chunks, meta, re-sending what a
//! `partial` lists or `meta` when nothing answers) publish heartbeats and upload evidence while a
//! hotline tip is being offered to them in turn (they let every offer lapse). Mid-load one
//! ingest process and the active dispatcher are killed with SIGKILL. Afterwards: every heartbeat
//! is stored exactly once (rows counted per device and `seq`) and none was confirmed but
//! missing; every upload is stored with a receipt whose signature verifies; the chunks of one
//! upload were staged by both ingest processes; every offer's deadline fired exactly once; the
//! standby dispatcher took over.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Mosquitto, bin, cli, wait_for_file};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Phones driven through the cluster; the first [`NEAR`] are within the dispatch radius of the
/// tip, the others 20 km away (never offered anything).
const PHONES: usize = 12;
const NEAR: usize = 4;
/// Where the tip is.
const SITE: (f64, f64) = (36.5, 118.5);
/// Evidence: each phone uploads one item of this many chunks of this size, a chunk every
/// [`CHUNK_EVERY`], so uploads are in flight when the ingest process is killed.
const CHUNKS: usize = 24;
const CHUNK_BYTES: usize = 16 * 1024;
const CHUNK_EVERY: Duration = Duration::from_millis(40);
/// A heartbeat every this long per phone.
const HB_EVERY: Duration = Duration::from_millis(100);
/// Offer window (s) of the dispatchers.
const OFFER_TIMEOUT_S: u64 = 3;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A `jiandu serve` process of the cluster; killed on drop.
struct Role {
    name: &'static str,
    dir: tempfile::TempDir,
    child: Child,
}

impl Role {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits until the log contains `what`; returns how long that took.
    async fn wait_for_log(&self, what: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        while !self.log().contains(what) {
            assert!(start.elapsed() < limit, "{}: no '{what}' within {limit:?}; log:\n{}", self.name, self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Everything the processes share: database, broker, object store.
struct Cluster {
    db: String,
    /// `jiandu.toml` lines every role process gets (top-level keys, then sections).
    toml: String,
    /// The data dir of `init`, holding `platform.key` and `broker.key`.
    core_dir: std::path::PathBuf,
}

impl Cluster {
    /// Starts `jiandu serve --roles ROLES` on a data dir of its own holding the shared settings
    /// and copies of the platform and broker keys.
    fn spawn(&self, name: &'static str, roles: &str, extra: &[&str], rust_log: &str) -> Role {
        let dir = tempfile::Builder::new().prefix(&format!("jiandu-{name}-")).tempdir().unwrap();
        std::fs::write(dir.path().join("jiandu.toml"), &self.toml).unwrap();
        for key in ["platform.key", "broker.key"] {
            std::fs::copy(self.core_dir.join(key), dir.path().join(key)).unwrap();
        }
        let child = self.command(dir.path(), roles, extra, rust_log);
        Role { name, dir, child }
    }

    fn command(&self, dir: &Path, roles: &str, extra: &[&str], rust_log: &str) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log")).unwrap();
        Command::new(bin())
            .args(["serve", "--roles", roles])
            .args(extra)
            .env("JIANDU_DATA_DIR", dir)
            .env("JIANDU_DB", &self.db)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

/// A fresh bucket on the test S3 server (moto, `scripts/services.sh`) with Object Lock and a
/// default COMPLIANCE retention, as docs/deploy.md tells operators to make theirs.
async fn locked_bucket() -> (String, String) {
    let endpoint = std::env::var("JIANDU_TEST_S3").unwrap_or_else(|_| {
        panic!("JIANDU_TEST_S3 is not set; start the test S3 server with: eval \"$(scripts/services.sh)\"")
    });
    let bucket = format!("jd-scaleout-{}", ulid::Ulid::new().to_string().to_lowercase());
    let http = reqwest::Client::new();
    let made = http
        .put(format!("{endpoint}/{bucket}"))
        .header("x-amz-bucket-object-lock-enabled", "true")
        .send()
        .await
        .unwrap_or_else(|e| panic!("S3 at {endpoint} is not reachable ({e}); run scripts/services.sh"));
    assert!(made.status().is_success(), "creating bucket {bucket}: {}", made.status());
    let rule = "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
        <ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode>\
        <Days>1</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
    let locked = http
        .put(format!("{endpoint}/{bucket}?object-lock"))
        .header("content-type", "application/xml")
        .body(rule)
        .send()
        .await
        .unwrap();
    assert!(locked.status().is_success(), "object lock on {bucket}: {}", locked.status());
    (endpoint, bucket)
}

/// What one phone did and still holds at the end.
#[derive(Debug, Default)]
struct PhoneOutcome {
    id: String,
    /// Every point made: `seq → ts`.
    generated: BTreeMap<u64, i64>,
    /// Points not confirmed yet.
    pending: BTreeMap<u64, Instant>,
    /// Every `seq` ever confirmed.
    confirmed: BTreeSet<u64>,
    /// Points re-sent because unconfirmed after the timeout or after a reconnect.
    resent: u64,
    /// The evidence item: (evid, sha256, size).
    upload: (String, String, usize),
    /// Its final receipt (`stored` or `rejected`), if any.
    receipt: Option<Value>,
    /// Times `meta` was sent.
    metas: u64,
    /// Assignment ids offered to this phone (each counted once, however often delivered).
    offers: BTreeSet<String>,
}

/// Shared between the phones and the test: when to start and stop.
#[derive(Default)]
struct Load {
    /// Phones with at least one confirmed point.
    warm: AtomicUsize,
    /// Offers received by all phones (deliveries).
    offers: AtomicUsize,
    /// No new points from now on; finish what is pending.
    stop: AtomicBool,
    /// Phones that stopped with every point confirmed and their upload answered.
    settled: AtomicUsize,
    /// Disconnect and report.
    done: AtomicBool,
}

/// Deterministic pseudo-random bytes (xorshift).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hb_body(seq: u64, ts: i64, lat: f64, lon: f64) -> Value {
    json!({"seq": seq, "ts": ts, "lat": lat, "lon": lon, "acc": 8.0, "bat": 80.0, "duty": "on"})
}

/// One phone: a point every [`HB_EVERY`] while the load runs, the exact-ack protocol, one
/// evidence upload started `upload_after` after its first confirmed point, and every offer
/// left to lapse. Counts itself settled once the load is stopped and everything is confirmed
/// and answered, and stays connected (listening for offers) until told it is done, or
/// `give_up`.
async fn run_phone(
    port: u16,
    (id, token): (String, String),
    index: usize,
    load: Arc<Load>,
    upload_after: Duration,
    give_up: Instant,
) -> PhoneOutcome {
    let metres = if index < NEAR { 100.0 + 100.0 * index as f64 } else { 20_000.0 + 50.0 * index as f64 };
    let (lat, lon) = (SITE.0 + metres / 111_195.0, SITE.1);
    let data = bytes(CHUNKS * CHUNK_BYTES - 1000, index as u64 + 7);
    let sha = hex::encode(Sha256::digest(&data));
    let evid = ulid::Ulid::new().to_string().to_lowercase();
    let meta = json!({"sha256": sha, "size": data.len(), "mime": "image/jpeg", "captured_at": now_ms(),
        "lat": lat, "lon": lon, "chunk_size": CHUNK_BYTES, "chunks": CHUNKS})
    .to_string();
    let mut out = PhoneOutcome { id: id.clone(), upload: (evid.clone(), sha, data.len()), ..Default::default() };

    let mut o = MqttOptions::new(&id, "127.0.0.1", port);
    o.set_credentials(&id, &token);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(100);
    let (client, mut events) = AsyncClient::new(o, 2000);
    let topic = |s: &str| format!("jd/v1/dev/{id}/{s}");
    let (hb_topic, meta_topic) = (topic("hb"), topic(&format!("ev/{evid}/meta")));
    let mut hb_tick = tokio::time::interval(HB_EVERY);
    let mut chunk_tick = tokio::time::interval(CHUNK_EVERY);
    let mut resend_tick = tokio::time::interval(Duration::from_millis(500));
    let resend_after = Duration::from_secs(3);
    let mut connected = false;
    let mut last_ts = 0i64;
    let mut warm_at: Option<Instant> = None;
    // Evidence: next chunk of the first pass; when meta was last sent; when chunks were re-sent.
    let mut next_chunk: Option<usize> = None;
    let mut meta_at = Instant::now();
    let mut resent_chunks_at = Instant::now() - Duration::from_secs(60);
    let mut settled = false;

    let send_chunk = |client: &AsyncClient, n: usize| {
        let end = ((n + 1) * CHUNK_BYTES).min(data.len());
        let chunk = data[n * CHUNK_BYTES..end].to_vec();
        client.try_publish(topic(&format!("ev/{evid}/c/{n}")), QoS::AtLeastOnce, false, chunk).is_ok()
    };
    loop {
        let now = Instant::now();
        if !settled && out.receipt.is_some() && out.pending.is_empty() && load.stop.load(Ordering::Relaxed) {
            settled = true;
            load.settled.fetch_add(1, Ordering::Relaxed);
        }
        if load.done.load(Ordering::Relaxed) || now > give_up {
            client.try_disconnect().ok();
            return out;
        }
        tokio::select! {
            _ = hb_tick.tick(), if connected && !load.stop.load(Ordering::Relaxed) => {
                let seq = out.generated.len() as u64 + 1;
                let ts = now_ms().max(last_ts + 1);
                last_ts = ts;
                out.generated.insert(seq, ts);
                out.pending.insert(seq, Instant::now());
                client.try_publish(&hb_topic, QoS::AtLeastOnce, false, hb_body(seq, ts, lat, lon).to_string()).ok();
            }
            _ = resend_tick.tick(), if connected => {
                // Heartbeats unconfirmed for too long go again, as backlog arrays.
                let due: Vec<u64> =
                    out.pending.iter().filter(|(_, at)| now.duration_since(**at) >= resend_after).map(|(s, _)| *s).collect();
                for part in due.chunks(1000) {
                    let body: Vec<Value> =
                        part.iter().map(|s| hb_body(*s, out.generated[s], lat, lon)).collect();
                    if client.try_publish(&hb_topic, QoS::AtLeastOnce, false, Value::Array(body).to_string()).is_ok() {
                        out.resent += part.len() as u64;
                        for s in part {
                            out.pending.insert(*s, now);
                        }
                    }
                }
                // An upload nobody answered (its meta or chunks went to a killed process): ask again.
                if next_chunk == Some(CHUNKS) && out.receipt.is_none() && now.duration_since(meta_at) > Duration::from_secs(4) {
                    client.try_publish(&meta_topic, QoS::AtLeastOnce, false, meta.clone()).ok();
                    out.metas += 1;
                    meta_at = now;
                }
                // Start the upload a while after warming up.
                if next_chunk.is_none() && warm_at.is_some_and(|w| now.duration_since(w) >= upload_after) {
                    client.try_publish(&meta_topic, QoS::AtLeastOnce, false, meta.clone()).ok();
                    out.metas += 1;
                    meta_at = now;
                    next_chunk = Some(0);
                }
            }
            _ = chunk_tick.tick(), if connected && next_chunk.is_some_and(|n| n < CHUNKS) => {
                let n = next_chunk.unwrap();
                if send_chunk(&client, n) {
                    next_chunk = Some(n + 1);
                    if n + 1 == CHUNKS {
                        client.try_publish(&meta_topic, QoS::AtLeastOnce, false, meta.clone()).ok();
                        out.metas += 1;
                        meta_at = Instant::now();
                    }
                }
            }
            e = events.poll() => match e {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    client.try_subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).ok();
                    let presence = json!({"online": true, "ts": now_ms()}).to_string();
                    client.try_publish(topic("presence"), QoS::AtLeastOnce, true, presence).ok();
                    // Everything unconfirmed goes again after a reconnect.
                    for p in out.pending.values_mut() {
                        *p = Instant::now() - resend_after;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let body: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    match p.topic.rsplit('/').next() {
                        Some("ack") => {
                            for r in body["hb_seq"].as_array().into_iter().flatten() {
                                let (from, to) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
                                let named: Vec<u64> = out.pending.range(from..=to).map(|(s, _)| *s).collect();
                                for s in named {
                                    out.pending.remove(&s);
                                }
                                out.confirmed.extend(out.generated.range(from..=to).map(|(s, _)| *s));
                            }
                            if warm_at.is_none() && !out.confirmed.is_empty() {
                                warm_at = Some(Instant::now());
                                load.warm.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some("assignment") => {
                            if let Some(a) = body["assignment_id"].as_str() {
                                out.offers.insert(a.to_owned());
                                load.offers.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some("receipt") if body["evid"] == evid.as_str() => match body["status"].as_str() {
                            Some("stored" | "rejected") => out.receipt = Some(body),
                            Some("partial") if next_chunk == Some(CHUNKS) => {
                                let missing: Vec<usize> = body["missing"]
                                    .as_array()
                                    .map(|m| m.iter().filter_map(|n| n.as_u64()).map(|n| n as usize).collect())
                                    .unwrap_or_default();
                                // What did not arrive (or is still being staged elsewhere) goes
                                // again, then meta; duplicates are harmless.
                                if !missing.is_empty() && resent_chunks_at.elapsed() > Duration::from_secs(1) {
                                    for n in missing.into_iter().filter(|n| *n < CHUNKS) {
                                        send_chunk(&client, n);
                                    }
                                    client.try_publish(&meta_topic, QoS::AtLeastOnce, false, meta.clone()).ok();
                                    out.metas += 1;
                                    meta_at = Instant::now();
                                    resent_chunks_at = Instant::now();
                                }
                            }
                            _ => {}
                        },
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    // Refused before the sync made its client, or cut: rumqttc reconnects.
                    connected = false;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_survives_kill_9_of_an_ingest_and_the_active_dispatcher() {
    common::install_crypto_provider();
    let started = Instant::now();
    let mq = Mosquitto::start_dynsec();
    let db = common::fresh_postgres_db().await;
    let (s3_endpoint, bucket) = locked_bucket().await;

    // One data dir for the operator's commands (init, broker sync, phones, the hotline); the
    // oversight+web process runs on it and keeps Mosquitto in step.
    let core_dir = tempfile::Builder::new().prefix("jiandu-core-").tempdir().unwrap();
    let out = cli(core_dir.path(), &db, &["init"]);
    let admin = (out["username"].as_str().unwrap().to_owned(), out["password"].as_str().unwrap().to_owned());
    let shared = format!(
        "broker = \"{}\"\nbroker_username = \"jiandu-svc\"\nbroker_password = \"svc-3f9a61c0d2\"\n\
         object_store = \"s3://{bucket}\"\ns3_endpoint = \"{s3_endpoint}\"\n",
        mq.url()
    );
    let sections = format!(
        "[evidence]\nstaging = \"database\"\n[dispatch]\noffer_timeout_s = {OFFER_TIMEOUT_S}\nradius_m = 5000\n"
    );
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(core_dir.path().join("jiandu.toml")).unwrap();
        writeln!(
            f,
            "\n{shared}mosquitto_dynsec = true\nmosquitto_admin_password = \"{}\"\n{sections}",
            mq.admin_password
        )
        .unwrap();
    }
    cli(core_dir.path(), &db, &["broker", "sync"]);
    let creds_file = core_dir.path().join("phones.jsonl");
    cli(core_dir.path(), &db, &["device", "add-bulk", &PHONES.to_string(), "--out", creds_file.to_str().unwrap()]);
    let hotline = cli(core_dir.path(), &db, &["integration", "add", "hotline", "--publish", "jd/v1/reports"]);
    let synced = cli(core_dir.path(), &db, &["broker", "sync"]);
    assert_eq!(synced["created"].as_array().unwrap().len(), PHONES + 1, "{synced}");
    let phones: Vec<(String, String)> = std::fs::read_to_string(&creds_file)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["device"].as_str().unwrap().to_owned(), v["password"].as_str().unwrap().to_owned())
        })
        .collect();

    let cluster = Cluster { db: db.clone(), toml: format!("{shared}{sections}"), core_dir: core_dir.path().to_owned() };
    let core = Role {
        name: "oversight+web",
        child: cluster.command(core_dir.path(), "oversight,web", &["--http-listen", "127.0.0.1:0"], "info"),
        dir: core_dir,
    };
    let ingest_log = "info,jiandu_ingest=debug";
    // JSON logs, so the test can read which uploads each one staged chunks of.
    let json_off = ["--http-listen", "off", "--log-format", "json"];
    let mut ingest_a = cluster.spawn("ingest-a", "ingest", &json_off, ingest_log);
    let ingest_b = cluster.spawn("ingest-b", "ingest", &json_off, ingest_log);
    let mut dispatcher_1 = cluster.spawn("dispatcher-1", "dispatcher", &["--http-listen", "off"], "info");
    let http = wait_for_file(&core.dir.path().join("serve.json"), Duration::from_secs(90))["http"]
        .as_str()
        .unwrap()
        .to_owned();
    ingest_a.wait_for_log("evidence ingest running", Duration::from_secs(90)).await;
    ingest_b.wait_for_log("evidence ingest running", Duration::from_secs(90)).await;
    dispatcher_1.wait_for_log("dispatcher active", Duration::from_secs(90)).await;
    let dispatcher_2 = cluster.spawn("dispatcher-2", "dispatcher", &["--http-listen", "off"], "info");
    dispatcher_2.wait_for_log("standing by", Duration::from_secs(90)).await;
    eprintln!("scaleout: 5 processes up after {:.1} s", started.elapsed().as_secs_f64());

    // The phones, their uploads staggered over the first seconds of load.
    let load = Arc::new(Load::default());
    let give_up = Instant::now() + Duration::from_secs(90);
    let tasks: Vec<_> = phones
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, cred)| {
            let upload_after = Duration::from_millis(300 * i as u64);
            tokio::spawn(run_phone(mq.port, cred, i, load.clone(), upload_after, give_up))
        })
        .collect();
    let warm_by = Instant::now() + Duration::from_secs(45);
    while load.warm.load(Ordering::Relaxed) < PHONES {
        assert!(
            Instant::now() < warm_by,
            "only {} phones confirmed a point; ingest-a log:\n{}",
            load.warm.load(Ordering::Relaxed),
            ingest_a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The hotline's tip: offered to the nearest phone, then the next as each offer lapses.
    let mut ho = MqttOptions::new(hotline["username"].as_str().unwrap(), "127.0.0.1", mq.port);
    ho.set_credentials(hotline["username"].as_str().unwrap(), hotline["password"].as_str().unwrap());
    let (h_client, mut h_events) = AsyncClient::new(ho, 16);
    tokio::spawn(async move { while h_events.poll().await.is_ok() {} });
    let tip = json!({"id": "tip-so", "kind": "official-car", "text": "公车停在饭店门口", "lat": SITE.0, "lon": SITE.1,
        "ts": now_ms(), "source": "12345-hotline"});
    h_client.publish("jd/v1/reports", QoS::AtLeastOnce, false, tip.to_string()).await.unwrap();
    let offer_by = Instant::now() + Duration::from_secs(20);
    while load.offers.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < offer_by, "no offer; dispatcher log:\n{}", dispatcher_1.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Mid-load, an offer open and uploads in flight: kill -9 one ingest and the active dispatcher.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ingest_a.kill9();
    dispatcher_1.kill9();
    let killed_at = Instant::now();
    let took = dispatcher_2.wait_for_log("dispatcher active", Duration::from_secs(30)).await;
    assert!(took < Duration::from_secs(15), "the standby took {took:?} to take over");
    eprintln!("scaleout: standby dispatcher active {:.1} s after kill -9", took.as_secs_f64());

    // More load on the survivors, then the phones finish what they hold.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(killed_at.elapsed())).await;
    load.stop.store(true, Ordering::Relaxed);
    while load.settled.load(Ordering::Relaxed) < PHONES && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Offers: each near phone offered once in turn; every deadline fired exactly once, the
    // ones due while no dispatcher was active included.
    let http_client = reqwest::Client::new();
    let report = |http_client: reqwest::Client| {
        let (url, admin) = (format!("{http}/api/v1/reports/tip-so"), admin.clone());
        async move {
            let v: Value =
                http_client.get(url).basic_auth(&admin.0, Some(&admin.1)).send().await.unwrap().json().await.unwrap();
            v
        }
    };
    let lapsed_by = Instant::now() + Duration::from_secs(OFFER_TIMEOUT_S * NEAR as u64 + 20);
    loop {
        let v = report(http_client.clone()).await;
        let expired = v["timeline"].as_array().map_or(0, |t| t.iter().filter(|e| e["status"] == "expired").count());
        if expired >= NEAR {
            break;
        }
        assert!(Instant::now() < lapsed_by, "offers did not all lapse: {v}\nstandby log:\n{}", dispatcher_2.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(OFFER_TIMEOUT_S + 1)).await;
    load.done.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    // Heartbeats: rows per device and seq (ts ↔ seq is one-to-one per phone).
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT device_id, ts, COUNT(*)::BIGINT FROM position_history GROUP BY device_id, ts")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut stored: HashMap<&str, HashMap<i64, i64>> = HashMap::new();
    for (device, ts, n) in &rows {
        stored.entry(device.as_str()).or_default().insert(*ts, *n);
    }
    let (mut points, mut resent) = (0usize, 0u64);
    for p in &outcomes {
        let mine = stored.get(p.id.as_str()).cloned().unwrap_or_default();
        assert!(p.pending.is_empty(), "phone {}: {} points never confirmed", p.id, p.pending.len());
        for (seq, ts) in &p.generated {
            let n = mine.get(ts).copied().unwrap_or(0);
            assert_eq!(n, 1, "phone {}: seq {seq} stored {n} times (confirmed: {})", p.id, p.confirmed.contains(seq));
        }
        let generated: BTreeSet<i64> = p.generated.values().copied().collect();
        assert!(mine.keys().all(|ts| generated.contains(ts)), "phone {}: a row no point of it made", p.id);
        assert_eq!(p.confirmed.len(), p.generated.len(), "phone {}: every point confirmed", p.id);
        points += p.generated.len();
        resent += p.resent;
    }

    // Evidence: a stored receipt per upload, signed by the platform key, the blob in the locked bucket.
    let key: Value = http_client
        .get(format!("{http}/api/v1/ledger/key"))
        .basic_auth(&admin.0, Some(&admin.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = key["public_key"].as_str().unwrap();
    for p in &outcomes {
        let r = p.receipt.as_ref().unwrap_or_else(|| panic!("phone {}: upload never answered", p.id));
        assert_eq!(r["status"], "stored", "phone {}: {r}", p.id);
        assert_eq!(
            (r["sha256"].as_str().unwrap(), r["size"].as_u64().unwrap() as usize),
            (p.upload.1.as_str(), p.upload.2)
        );
        let fields = jiandu_store::ReceiptFields {
            evid: r["evid"].as_str().unwrap().to_owned(),
            sha256: r["sha256"].as_str().unwrap().to_owned(),
            size: r["size"].as_i64().unwrap(),
            ledger_seq: r["ledger_seq"].as_i64().unwrap(),
            ledger_hash: r["ledger_hash"].as_str().unwrap().to_owned(),
            received_at: r["received_at"].as_i64().unwrap(),
        };
        jiandu_store::verify_receipt(public, &fields, r["sig"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("phone {}: receipt does not verify: {e}", p.id));
        let head = http_client
            .head(format!("{s3_endpoint}/{bucket}/{}", jiandu_store::blob_key(&p.upload.1)))
            .send()
            .await
            .unwrap();
        assert!(head.status().is_success(), "blob of {} not in the bucket: {}", p.upload.0, head.status());
    }
    let evidence_rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*)::BIGINT FROM evidence").fetch_one(&pool).await.unwrap();
    assert_eq!(evidence_rows, PHONES as i64, "one evidence record per upload");
    // The chunks of at least one upload were staged by both ingest processes.
    let staged_by = |log: &str| -> BTreeSet<String> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "shared chunks staged in the database")
            .filter_map(|v| v["evid"].as_str().map(str::to_owned))
            .collect()
    };
    let (by_a, by_b) = (staged_by(&ingest_a.log()), staged_by(&ingest_b.log()));
    let both: Vec<&String> = by_a.intersection(&by_b).collect();
    assert!(!both.is_empty(), "no upload had chunks staged by both ingest processes: a {by_a:?}, b {by_b:?}");
    assert!(ingest_a.log().contains("heartbeats committed") && ingest_b.log().contains("heartbeats committed"));

    let v = report(http_client.clone()).await;
    let by_asg: HashMap<String, String> = v["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_str().unwrap().to_owned(), a["device_id"].as_str().unwrap().to_owned()))
        .collect();
    let near: BTreeSet<&str> = phones[..NEAR].iter().map(|(id, _)| id.as_str()).collect();
    let offered: BTreeSet<&str> = by_asg.values().map(String::as_str).collect();
    assert_eq!(offered, near, "every near phone offered, nobody else: {v}");
    assert_eq!(by_asg.len(), NEAR, "one assignment per near phone: {v}");
    for (asg, device) in &by_asg {
        let count = |s: &str| {
            v["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["assignment_id"] == asg.as_str() && e["status"] == s)
                .count()
        };
        assert_eq!((count("offered"), count("expired")), (1, 1), "assignment {asg} of {device}: {v}");
    }
    for p in &outcomes {
        let expected: BTreeSet<String> = by_asg.iter().filter(|(_, d)| **d == p.id).map(|(a, _)| a.clone()).collect();
        assert_eq!(p.offers, expected, "phone {} was offered exactly its assignments", p.id);
    }
    eprintln!(
        "scaleout: {PHONES} phones, {points} points stored once each ({resent} re-sent), {PHONES} uploads stored \
         ({} with chunks on both ingest processes), {} offers each lapsing once; {:.1} s in all",
        both.len(),
        by_asg.len(),
        started.elapsed().as_secs_f64()
    );
    pool.close().await;
    drop((core, ingest_a, ingest_b, dispatcher_1, dispatcher_2, mq));
}

/// `scripts/cluster.sh` (the operator's way to run the same cluster by hand) starts everything,
/// drives `jiandu sim` phones through it with a kill -9 of an ingest process and the active
/// dispatcher mid-run, prints a summary and stops everything it started.
#[tokio::test]
async fn cluster_script_runs_phones_through_every_role_and_stops_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::Builder::new().prefix("jiandu-cluster-test-").tempdir().unwrap();
    let work = dir.path().join("jiandu-cluster");
    let phones = 8;
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("bash")
            .arg(root.join("scripts/cluster.sh"))
            .args(["--seconds", "15", "--kill-after", "6", "--phones", &phones.to_string(), "--bin", bin()])
            .arg("--dir")
            .arg(&work)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("cluster.sh hung")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cluster.sh failed:\n{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("last line is not the JSON summary ({e}):\n{stdout}\n{stderr}"));
    eprintln!("cluster.sh summary: {summary}");
    assert_eq!(summary["phones"], phones);
    assert_eq!(summary["devices_with_position"], phones, "{summary}");
    assert!(summary["heartbeats_stored"].as_u64().unwrap() >= phones as u64 * 10, "{summary}");
    assert!(summary["sim"]["heartbeats_acked"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["reports"].as_u64().unwrap() >= 1 && summary["offers"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!((summary["killed"].as_bool(), summary["standby_took_over"].as_bool()), (Some(true), Some(true)));
    assert!(stderr.contains("web (oversight+web)") && stderr.contains("dispatcher-1, -2"), "{stderr}");
    // Everything it started is gone, and so is its directory.
    assert!(!work.exists(), "cluster.sh left {}", work.display());
    let marker = format!("JIANDU_DATA_DIR={}", work.display());
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v.starts_with(marker.as_bytes())))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
}
