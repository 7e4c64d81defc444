//! `jiandu bench ingest`: heartbeats persisted per second end to end, beside three references
//! measured in the same run — the embedded broker relaying the same load to a bare subscriber,
//! Mosquitto doing the same, and raw batched inserts into the same database — plus the server's
//! memory per connected idle phone.
//!
//! Load: `--phones` MQTT connections (QoS 1), each publishing `--points` single-point heartbeats
//! with `seq` as fast as the broker takes them; the ingest figure counts rows in
//! `position_history`, once with one ingest process and once with a second one in the group.
//! Each rate comes with the CPU behind it (from /proc): microseconds per message of the server
//! processes (broker and ingest; the broker alone, or Mosquitto, for a relay) and of this
//! process (the phones), because on one machine the phones share the server's cores.
//!
//! With `--broker` the run compares an external broker with the embedded one instead (issue
//! 17): heartbeats persisted per second by a `serve --roles ingest` process logged in to the
//! external broker as a service account, with the phones connected there too, beside the same
//! load through the embedded broker; and the external broker's memory per idle connected phone
//! (RSS of its process before and after `--idle` phones log in, from `/proc/PID/status`) beside
//! the embedded broker's, measured the same way. `--broker mosquitto` starts a private Mosquitto
//! 2 with its dynamic-security plugin (Debian's package) and lets jiandu keep its clients in
//! step (`jiandu broker sync`); `--broker mqtt://HOST:PORT` uses a running Mosquitto with
//! dynamic security (admin password in `JIANDU_MOSQUITTO_ADMIN_PASSWORD`; `--broker-pid` for
//! the memory row).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};
use jiandu_store::{PositionRow, Store};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BenchArgs, CpuSpan, Report, Row, Stat, SystemUnderTest, measure};

/// Options of `jiandu bench ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestBenchArgs {
    #[command(flatten)]
    common: BenchArgs,
    /// Simulated phones (MQTT connections)
    #[arg(long, default_value_t = 10_000)]
    phones: usize,
    /// Heartbeats each phone publishes per repetition
    #[arg(long, default_value_t = 20)]
    points: usize,
    /// Idle connections for the memory-per-phone figure (capped by the open-files limit)
    #[arg(long, default_value_t = 50_000)]
    idle: usize,
    /// The external broker to compare with the embedded one: the global `--broker` option
    /// (`JIANDU_BROKER`), handed over by the command line, where it may also be "mosquitto" (a
    /// private Mosquitto 2 with dynamic security, started here) besides mqtt://HOST:PORT of a
    /// running Mosquitto with dynamic security (admin password in
    /// JIANDU_MOSQUITTO_ADMIN_PASSWORD).
    #[arg(skip)]
    pub broker: Option<String>,
    /// With --broker mqtt://…: process id of that broker, for its memory per idle phone
    /// (/proc/PID/status); --broker mosquitto measures its own
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
}

/// Points per raw insert batch: heartbeat ingest's default `batch_points`, the most it commits
/// at once under full load.
const RAW_BATCH: usize = 16_000;

/// A base time for generated points (2026-06-01).
const T0: i64 = 1_780_272_000_000;

/// Runs the benchmark and prints the report.
pub async fn run(args: IngestBenchArgs) -> Result<()> {
    let fd_limit = raise_open_files_limit();
    eprintln!("[bench] open-files limit: {fd_limit}");
    if let Some(broker) = args.broker.clone() {
        return run_external(&args, &broker, fd_limit).await;
    }
    if args.broker_pid.is_some() {
        bail!("--broker-pid: only with --broker mqtt://HOST:PORT");
    }
    let mut rows = Vec::new();
    let reps = args.common.repetitions;

    // Ours: broker + ingest, counted in the database; then the same with a second ingest
    // process sharing the heartbeat group.
    let ours = persisted_rate(&args, false).await?;
    let two = persisted_rate(&args, true).await?;

    // Reference 1: the embedded broker relaying the same load to a bare subscriber.
    let relay_sut = SystemUnderTest::start("sqlite", "broker", &[])?;
    let relay_store = Store::connect(&relay_sut.db).await?;
    let creds = register(&relay_store, args.phones).await?;
    let sub = relay_sut.cli(&["integration", "add", "bench-sink", "--subscribe", "jd/v1/dev/+/hb"])?;
    let sink_creds = (
        sub["username"].as_str().unwrap_or_default().to_owned(),
        sub["password"].as_str().unwrap_or_default().to_owned(),
    );
    let phones = connect_phones(&relay_sut.mqtt, &creds).await?;
    let relay = relay_rate(
        &relay_sut.mqtt,
        Some(sink_creds),
        &phones,
        args.points,
        reps,
        "embedded broker: bare relay msg/s",
        &[relay_sut.child_id()],
    )
    .await?;
    drop(phones);
    relay_store.close().await;
    drop(relay_sut);

    // Reference 2: Mosquitto relaying the same load.
    let mosquitto = match Mosquitto::start() {
        Ok(m) => {
            let anon: Vec<(String, String)> = (0..args.phones).map(|i| (format!("bench-{i}"), String::new())).collect();
            let addr = ("127.0.0.1".to_owned(), m.port);
            let phones = connect_phones(&addr, &anon).await?;
            // A reference, not our figure: a Mosquitto that stops acknowledging (seen on the
            // loaded 2-core machine) costs two minutes, not the whole benchmark.
            let r = tokio::time::timeout(
                Duration::from_secs(120),
                relay_rate(&addr, None, &phones, args.points, reps, "mosquitto: bare relay msg/s", &[m.child.id()]),
            )
            .await
            .unwrap_or_else(|_| Err(crate::Error::Failed("no result within 120 s".into())));
            drop(phones);
            match r {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("[bench] mosquitto reference failed: {e:#}");
                    None
                }
            }
        }
        Err(e) => {
            eprintln!("[bench] mosquitto reference skipped: {e:#}");
            None
        }
    };

    // Reference 3: raw batched inserts into the same kind of database.
    let raw_db = bench_database(&args.common.db).await?;
    let raw_dir = tempfile::tempdir()?;
    let raw_url =
        if raw_db == "sqlite" { format!("sqlite://{}", raw_dir.path().join("raw.db").display()) } else { raw_db };
    let raw_store = Store::connect(&raw_url).await?;
    let raw = measure("raw batched inserts rows/s", reps, |rep| {
        let raw_store = raw_store.clone();
        let n = args.phones * args.points;
        async move {
            let rows: Vec<PositionRow> = (0..n)
                .map(|i| PositionRow {
                    device_id: format!("d{:012}", i % 10_000),
                    ts: T0 + (rep * n + i) as i64,
                    lat: 36.5,
                    lon: 118.5,
                    acc: Some(5.0),
                    spd: Some(1.0),
                    hdg: Some(90.0),
                    alt: None,
                    bat: Some(80.0),
                    duty: Some("on".into()),
                })
                .collect();
            let started = Instant::now();
            for chunk in rows.chunks(RAW_BATCH) {
                raw_store.store_heartbeats(chunk, T0).await?;
            }
            Ok(n as f64 / started.elapsed().as_secs_f64())
        }
    })
    .await?;
    raw_store.close().await;

    rows.push(Row {
        metric: "heartbeats persisted/s, end to end".into(),
        unit: "points/s".into(),
        ours: ours.rate.clone(),
        reference: Some(("embedded broker bare relay".into(), relay.rate.clone())),
        goal: Some("≥ 100000 and ≥ 0.5 × relay".into()),
    });
    if let Some(m) = &mosquitto {
        rows.push(Row {
            metric: "heartbeats persisted/s vs Mosquitto relay".into(),
            unit: "points/s".into(),
            ours: ours.rate.clone(),
            reference: Some(("mosquitto bare relay".into(), m.rate.clone())),
            goal: None,
        });
        rows.push(Row {
            metric: "embedded broker relay vs Mosquitto relay".into(),
            unit: "msg/s".into(),
            ours: relay.rate.clone(),
            reference: Some(("mosquitto bare relay".into(), m.rate.clone())),
            goal: None,
        });
    }
    rows.push(Row {
        metric: "heartbeats persisted/s, two ingest processes".into(),
        unit: "points/s".into(),
        ours: two.rate.clone(),
        reference: Some(("one ingest process".into(), ours.rate.clone())),
        goal: None,
    });
    rows.push(Row {
        metric: "heartbeats persisted/s vs raw inserts".into(),
        unit: "points/s".into(),
        ours: ours.rate.clone(),
        reference: Some(("raw batched inserts".into(), raw)),
        goal: None,
    });
    // What each figure costs in CPU, apart from the phones sharing the machine's cores.
    rows.push(Row {
        metric: "server CPU per heartbeat persisted (broker + ingest)".into(),
        unit: "µs".into(),
        ours: ours.server_us.clone(),
        reference: Some(("embedded broker, bare relay".into(), relay.server_us.clone())),
        goal: None,
    });
    rows.push(Row {
        metric: "server CPU per heartbeat, two ingest processes".into(),
        unit: "µs".into(),
        ours: two.server_us,
        reference: Some(("one ingest process".into(), ours.server_us.clone())),
        goal: None,
    });
    if let Some(m) = &mosquitto {
        rows.push(Row {
            metric: "embedded broker CPU per relayed message".into(),
            unit: "µs".into(),
            ours: relay.server_us.clone(),
            reference: Some(("mosquitto".into(), m.server_us.clone())),
            goal: None,
        });
    }
    rows.push(Row {
        metric: "bench process CPU per heartbeat (phones; relay: phones + subscriber)".into(),
        unit: "µs".into(),
        ours: ours.load_us,
        reference: Some(("embedded broker, bare relay".into(), relay.load_us)),
        goal: None,
    });

    // Memory per idle phone.
    let idle = args.idle.min(fd_limit.saturating_sub(2_000) as usize);
    if idle < args.idle {
        eprintln!(
            "[bench] idle connections capped at {idle} (asked {}): this process and the server may open only {fd_limit} files",
            args.idle
        );
    }
    if idle > 0 {
        let per_phone = idle_rss_per_phone(idle).await?;
        rows.push(Row {
            metric: format!("server RSS per idle connected phone ({idle} phones)"),
            unit: "KiB".into(),
            ours: Stat::of(vec![per_phone / 1024.0]),
            reference: None,
            goal: Some("≤ 20 KiB".into()),
        });
    }

    Report {
        bench: "ingest".into(),
        setup: json!({"phones": args.phones, "points_per_phone": args.points, "db": args.common.db,
                      "repetitions": reps, "idle_phones": idle, "open_files_limit": fd_limit}),
        rows,
    }
    .print(&args.common);
    Ok(())
}

/// Heartbeats persisted per second through `broker,ingest` (and, with `second_ingest`, one more
/// `serve --roles ingest` process in the same group, logged in as its own service account).
async fn persisted_rate(args: &IngestBenchArgs, second_ingest: bool) -> Result<Measured> {
    let db = bench_database(&args.common.db).await?;
    let sut = SystemUnderTest::start(&db, "broker,ingest", &[])?;
    let store = Store::connect(&sut.db).await?;
    let mut second = None;
    if second_ingest {
        let token = store.ensure_service_account("bench-ingest-2").await?.into_inner();
        let dir = tempfile::Builder::new().prefix("jiandu-bench-ingest-").tempdir()?;
        let log = std::fs::File::create(dir.path().join("ingest.log"))?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["serve", "--roles", "ingest", "--broker", &format!("mqtt://{}:{}", sut.mqtt.0, sut.mqtt.1)])
            .env("JIANDU_DATA_DIR", dir.path())
            .env("JIANDU_DB", &sut.db)
            .env("JIANDU_BROKER_USERNAME", "bench-ingest-2")
            .env("JIANDU_BROKER_PASSWORD", token)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the second ingest process")?;
        wait_for_file(&dir.path().join("serve.json"), Duration::from_secs(60)).await?;
        second = Some(IngestProcess { child, _dir: Some(dir) });
    }
    let creds = register(&store, args.phones).await?;
    let phones = connect_phones(&sut.mqtt, &creds).await?;
    let label =
        if second_ingest { "two ingest processes: persisted heartbeats/s" } else { "ingest: persisted heartbeats/s" };
    let mut servers = vec![sut.child_id()];
    servers.extend(second.as_ref().map(|p| p.child.id()));
    let rate = measure_persisted(label, &store, &phones, args, &servers).await?;
    drop(phones);
    store.close().await;
    drop(second);
    drop(sut);
    Ok(rate)
}

/// A rate and the CPU behind it: microseconds per message of the server processes and of this
/// process (the phones, and the bare subscriber of a relay run), per repetition.
struct Measured {
    rate: Stat,
    server_us: Stat,
    load_us: Stat,
}

impl Measured {
    /// Runs `f` as [`measure`] does, counting the CPU of `servers` and of this process around
    /// each repetition, per message of `messages`.
    async fn of<F, Fut>(label: &str, reps: usize, servers: &[u32], messages: f64, mut f: F) -> Result<Measured>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Result<f64>>,
    {
        let cpu = std::cell::RefCell::new(Vec::new());
        let rate = measure(label, reps, |rep| {
            let span = CpuSpan::start(servers);
            let run = f(rep);
            let cpu = &cpu;
            async move {
                let rate = run.await?;
                let (server, load) = span.used();
                cpu.borrow_mut().push((server * 1e6 / messages, load * 1e6 / messages));
                Ok(rate)
            }
        })
        .await?;
        // The warm-up is not a repetition.
        let runs: Vec<(f64, f64)> = cpu.into_inner().into_iter().skip(1).collect();
        Ok(Measured {
            rate,
            server_us: Stat::of(runs.iter().map(|r| r.0).collect()),
            load_us: Stat::of(runs.iter().map(|r| r.1).collect()),
        })
    }
}

/// Heartbeats persisted per second: every phone publishes `--points` points, timed until the
/// database holds them all (a warm-up, then `--repetitions` runs), with the CPU of `servers`.
async fn measure_persisted(
    label: &str,
    store: &Store,
    phones: &Arc<Vec<Phone>>,
    args: &IngestBenchArgs,
    servers: &[u32],
) -> Result<Measured> {
    let total = (phones.len() * args.points) as f64;
    Measured::of(label, args.common.repetitions, servers, total, |rep| {
        let phones = phones.clone();
        let store = store.clone();
        let points = args.points;
        async move {
            let before = store.history_count(None).await? as f64;
            let started = Instant::now();
            publish_all(&phones, rep, points).await?;
            wait_until(
                || async { Ok(store.history_count(None).await? as f64 >= before + total) },
                Duration::from_secs(600),
            )
            .await
            .context("not every heartbeat was persisted")?;
            Ok(total / started.elapsed().as_secs_f64())
        }
    })
    .await
}

/// A `serve --roles ingest` process of its own (the two-process row, the external broker's
/// run) and its data dir, if it has one of its own; killed on drop.
struct IngestProcess {
    child: std::process::Child,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for IngestProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn wait_for_file(path: &std::path::Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {limit:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// "sqlite", or a fresh database on the PostgreSQL server named by the URL.
async fn bench_database(db: &str) -> Result<String> {
    if db == "sqlite" {
        return Ok("sqlite".into());
    }
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db).await.with_context(|| format!("connecting to {db}"))?;
    let name = format!("jd_bench_{}", ulid::Ulid::new().to_string().to_lowercase());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let (prefix, _) = db.rsplit_once('/').context("postgres URL needs a database part")?;
    Ok(format!("{prefix}/{name}"))
}

async fn register(store: &Store, n: usize) -> Result<Vec<(String, String)>> {
    let names: Vec<(String, Option<String>)> = (0..n).map(|i| (format!("bench phone {i}"), None)).collect();
    let created = store.create_devices(&names).await?;
    Ok(created.into_iter().map(|(d, t)| (d.id, t.into_inner())).collect())
}

/// A connected simulated phone: its id and client (its event loop runs in a task).
#[derive(Clone)]
struct Phone {
    id: String,
    client: AsyncClient,
    acked: Arc<AtomicU64>,
}

/// Connects every phone (username = client id = device id; empty password means anonymous).
async fn connect_phones(addr: &(String, u16), creds: &[(String, String)]) -> Result<Arc<Vec<Phone>>> {
    let started = Instant::now();
    let mut phones = Vec::with_capacity(creds.len());
    let mut ready = Vec::with_capacity(creds.len());
    for (id, token) in creds {
        let mut o = MqttOptions::new(id, &addr.0, addr.1);
        if !token.is_empty() {
            o.set_credentials(id, token);
        }
        o.set_keep_alive(Duration::from_secs(120));
        o.set_inflight(200);
        let (client, mut events) = AsyncClient::new(o, 256);
        let acked = Arc::new(AtomicU64::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let counter = acked.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = tx.take() {
                            tx.send(()).ok();
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) if tx.is_some() => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(_) => return,
                }
            }
        });
        ready.push(rx);
        phones.push(Phone { id: id.clone(), client, acked });
        if phones.len() % 500 == 0 {
            // Pace connection set-up so the accept backlog never overflows.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (i, rx) in ready.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(120), rx)
            .await
            .with_context(|| format!("phone {i} did not connect"))?
            .ok();
    }
    eprintln!("[bench] {} phones connected in {:.1}s", phones.len(), started.elapsed().as_secs_f64());
    Ok(Arc::new(phones))
}

/// Every phone publishes `points` heartbeats (QoS 1); returns when all are PUBACKed.
async fn publish_all(phones: &Arc<Vec<Phone>>, rep: usize, points: usize) -> Result<()> {
    let start_acked: u64 = phones.iter().map(|p| p.acked.load(Ordering::Relaxed)).sum();
    let mut tasks = Vec::new();
    for chunk in phones.chunks(256) {
        let chunk: Vec<Phone> = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for k in 0..points {
                for p in &chunk {
                    let n = rep * points + k;
                    let ts = T0 + (n as i64) * 1000;
                    // With `seq`, as the phones of DESIGN §3: ingest acknowledges on receipt.
                    let body = json!({"seq": n + 1, "ts": ts, "lat": 36.5, "lon": 118.5, "acc": 5.0, "spd": 1.0, "duty": "on"});
                    p.client
                        .publish(format!("jd/v1/dev/{}/hb", p.id), QoS::AtLeastOnce, false, body.to_string())
                        .await?;
                }
            }
            Ok::<_, rumqttc::ClientError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let want = start_acked + (phones.len() * points) as u64;
    let phones2 = phones.clone();
    wait_until(
        move || {
            let phones = phones2.clone();
            async move { Ok(phones.iter().map(|p| p.acked.load(Ordering::Relaxed)).sum::<u64>() >= want) }
        },
        Duration::from_secs(600),
    )
    .await
    .context("the broker did not acknowledge every publish")
}

/// Relay rate to one bare subscriber of `jd/v1/dev/+/hb`.
async fn relay_rate(
    addr: &(String, u16),
    sink: Option<(String, String)>,
    phones: &Arc<Vec<Phone>>,
    points: usize,
    reps: usize,
    label: &str,
    servers: &[u32],
) -> Result<Measured> {
    let received = Arc::new(AtomicU64::new(0));
    let id = sink.as_ref().map(|(u, _)| format!("{u}-sink")).unwrap_or_else(|| "bench-sink".into());
    let mut o = MqttOptions::new(id, &addr.0, addr.1);
    if let Some((u, p)) = &sink {
        o.set_credentials(u, p);
    }
    o.set_keep_alive(Duration::from_secs(120));
    o.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(o, 4096);
    client.subscribe("jd/v1/dev/+/hb", QoS::AtLeastOnce).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let counter = received.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(e) = events.poll().await {
            match e {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = tx.take() {
                        tx.send(()).ok();
                    }
                }
                Event::Incoming(Packet::Publish(_)) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), rx).await.context("sink did not subscribe")?.ok();
    let total = (phones.len() * points) as u64;
    Measured::of(label, reps, servers, total as f64, |rep| {
        let phones = phones.clone();
        let received = received.clone();
        async move {
            let before = received.load(Ordering::Relaxed);
            let started = Instant::now();
            publish_all(&phones, rep, points).await?;
            let r = received.clone();
            wait_until(
                move || {
                    let r = r.clone();
                    async move { Ok(r.load(Ordering::Relaxed) >= before + total) }
                },
                Duration::from_secs(300),
            )
            .await
            .context("the sink did not receive every message")?;
            Ok(total as f64 / started.elapsed().as_secs_f64())
        }
    })
    .await
}

async fn wait_until<F, Fut>(mut check: F, limit: Duration) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    while !check().await? {
        if Instant::now() > deadline {
            bail!("gave up after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Embedded broker RSS growth per connected idle phone: a fresh `serve --roles broker` with `n`
/// phones registered, measured by [`idle_rss`].
async fn idle_rss_per_phone(n: usize) -> Result<f64> {
    if n == 0 {
        return Ok(f64::NAN);
    }
    let sut = SystemUnderTest::start("sqlite", "broker", &[])?;
    let store = Store::connect(&sut.db).await?;
    let creds = register(&store, n).await?;
    let server = SocketAddr::new(sut.mqtt.0.parse()?, sut.mqtt.1);
    let per_phone = idle_rss(server, sut.child_id(), &creds).await;
    store.close().await;
    per_phone
}

/// RSS growth of the broker process `pid` per connected idle phone: its RSS (from /proc) before
/// and one second after every login in `creds` is connected, with raw MQTT 3.1.1 connections
/// from several 127.0.0.x source addresses (past the ephemeral-port range of one address).
async fn idle_rss(server: SocketAddr, pid: u32, creds: &[(String, String)]) -> Result<f64> {
    let n = creds.len();
    if n == 0 {
        return Ok(f64::NAN);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = super::rss_of(pid).context("no RSS for the broker process")? as f64;
    let mut sockets = Vec::with_capacity(n);
    for (i, (id, token)) in creds.iter().enumerate() {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i / 20_000) as u8));
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(server).await?;
        stream.write_all(&connect_packet(id, token)).await?;
        let mut ack = [0u8; 4];
        stream.read_exact(&mut ack).await?;
        if ack[3] != 0 {
            bail!("idle phone {id} refused with code {}", ack[3]);
        }
        sockets.push(stream);
        if i % 5000 == 4999 {
            eprintln!("[bench] {} idle phones connected", i + 1);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = super::rss_of(pid).context("no RSS for the broker process")? as f64;
    eprintln!(
        "[bench] broker (pid {pid}) RSS {:.1} MiB → {:.1} MiB with {n} idle phones",
        before / 1048576.0,
        after / 1048576.0
    );
    drop(sockets);
    Ok((after - before) / n as f64)
}

/// A minimal MQTT 3.1.1 CONNECT (clean session, keep-alive 600 s, username + password).
fn connect_packet(id: &str, token: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let put = |b: &mut Vec<u8>, s: &[u8]| {
        b.extend_from_slice(&(s.len() as u16).to_be_bytes());
        b.extend_from_slice(s);
    };
    put(&mut body, b"MQTT");
    body.push(4);
    body.push(0xc2);
    body.extend_from_slice(&600u16.to_be_bytes());
    put(&mut body, id.as_bytes());
    put(&mut body, id.as_bytes());
    put(&mut body, token.as_bytes());
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

/// `--broker`: persisted heartbeats/s and memory per idle phone on the external broker, each
/// beside the same figure of the embedded broker measured in this run.
async fn run_external(args: &IngestBenchArgs, broker: &str, fd_limit: u64) -> Result<()> {
    let reps = args.common.repetitions;
    let idle = args.idle.min(fd_limit.saturating_sub(2_000) as usize);
    if idle < args.idle {
        eprintln!("[bench] idle connections capped at {idle} (asked {}) by the open-files limit {fd_limit}", args.idle);
    }
    let mut external = ExternalBroker::open(broker, args.broker_pid)?;
    let name = external.name.clone();

    // Ours: the external broker, phones and ingest both logged in to it.
    let (ext_rate, ext_rss) = external_run(args, &mut external, idle).await?;
    drop(external);
    // The reference: the same load and the same memory measurement on the embedded broker.
    let embedded = persisted_rate(args, false).await?;
    let embedded_rss = if idle > 0 { Some(idle_rss_per_phone(idle).await?) } else { None };

    let mut rows = vec![Row {
        metric: format!("heartbeats persisted/s through {name}"),
        unit: "points/s".into(),
        ours: ext_rate,
        reference: Some(("embedded broker".into(), embedded.rate)),
        goal: None,
    }];
    match (ext_rss, embedded_rss) {
        (Some(ext), Some(emb)) => rows.push(Row {
            metric: format!("broker RSS per idle connected phone, {name} ({idle} phones)"),
            unit: "KiB".into(),
            ours: Stat::of(vec![ext / 1024.0]),
            reference: Some(("embedded broker".into(), Stat::of(vec![emb / 1024.0]))),
            goal: None,
        }),
        (None, Some(emb)) => {
            eprintln!("[bench] no --broker-pid: the external broker's memory per phone is not measured");
            rows.push(Row {
                metric: format!("embedded broker RSS per idle connected phone ({idle} phones)"),
                unit: "KiB".into(),
                ours: Stat::of(vec![emb / 1024.0]),
                reference: None,
                goal: Some("≤ 20 KiB".into()),
            });
        }
        _ => {}
    }
    Report {
        bench: "ingest".into(),
        setup: json!({"broker": name, "phones": args.phones, "points_per_phone": args.points, "db": args.common.db,
                      "repetitions": reps, "idle_phones": idle, "open_files_limit": fd_limit}),
        rows,
    }
    .print(&args.common);
    Ok(())
}

/// The external broker of `--broker`: a private Mosquitto with dynamic security started for
/// the run, or a running one named by URL.
struct ExternalBroker {
    /// How the report names it.
    name: String,
    host: String,
    port: u16,
    /// Its process, for the memory figure.
    pid: Option<u32>,
    /// The dynsec admin password, when the bench started the broker (else from the environment).
    admin_password: Option<String>,
    own: Option<Mosquitto>,
}

impl ExternalBroker {
    fn open(broker: &str, pid: Option<u32>) -> Result<ExternalBroker> {
        if broker == "mosquitto" {
            let m = Mosquitto::start_dynsec()?;
            return Ok(ExternalBroker {
                name: format!("Mosquitto {} + dynsec", m.version),
                host: "127.0.0.1".into(),
                port: m.port,
                pid: Some(m.child.id()),
                admin_password: m.admin_password.clone(),
                own: Some(m),
            });
        }
        let Some(rest) = broker.strip_prefix("mqtt://") else {
            return Err(crate::Error::Invalid(format!(
                "--broker: \"mosquitto\" or mqtt://HOST:PORT (plain MQTT), got {broker:?}"
            )));
        };
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or_else(|| crate::Error::Invalid(format!("--broker: mqtt://HOST:PORT needs a port, got {broker:?}")))?;
        if std::env::var("JIANDU_MOSQUITTO_ADMIN_PASSWORD").is_err() {
            return Err(crate::Error::Invalid(
                "--broker URL: set JIANDU_MOSQUITTO_ADMIN_PASSWORD to the broker's dynsec admin password \
                 (the bench registers its phones there)"
                    .into(),
            ));
        }
        if let Some(pid) = pid
            && super::rss_of(pid).is_none()
        {
            return Err(crate::Error::Invalid(format!("--broker-pid {pid}: no such process (or /proc unreadable)")));
        }
        Ok(ExternalBroker {
            name: broker.to_owned(),
            host: host.to_owned(),
            port: port.parse()?,
            pid,
            admin_password: None,
            own: None,
        })
    }

    fn url(&self) -> String {
        format!("mqtt://{}:{}", self.host, self.port)
    }

    /// A broker this bench started is restarted (same clients, fresh process) so its RSS
    /// before the idle phones holds none of the memory the sync used and freed; a running one
    /// named by URL cannot be, and its figure may read low for that reason.
    fn fresh(&mut self) -> Result<()> {
        if let Some(m) = self.own.as_mut() {
            m.restart()?;
            self.pid = Some(m.child.id());
        }
        Ok(())
    }
}

/// One run against the external broker: a data dir whose config points at it, `jiandu broker
/// sync` (service account and phones become Mosquitto clients), the idle-memory figure on the
/// broker before anything else connects, then `serve --roles ingest` and the persisted rate.
async fn external_run(args: &IngestBenchArgs, broker: &mut ExternalBroker, idle: usize) -> Result<(Stat, Option<f64>)> {
    let dir = tempfile::Builder::new().prefix("jiandu-bench-ext-").tempdir()?;
    let db = match bench_database(&args.common.db).await?.as_str() {
        "sqlite" => format!("sqlite://{}", dir.path().join("jiandu.db").display()),
        url => url.to_owned(),
    };
    super::run_cli(dir.path(), &db, &["init"])?;
    {
        use std::io::Write;
        let password = hex::encode(rand::random::<[u8; 16]>());
        let mut toml = format!(
            "\nbroker = \"{}\"\nbroker_username = \"bench-svc\"\nbroker_password = \"{password}\"\nmosquitto_dynsec = true\n",
            broker.url()
        );
        if let Some(admin) = &broker.admin_password {
            toml.push_str(&format!("mosquitto_admin_password = \"{admin}\"\n"));
        }
        std::fs::OpenOptions::new().append(true).open(dir.path().join("jiandu.toml"))?.write_all(toml.as_bytes())?;
    }
    super::run_cli(dir.path(), &db, &["broker", "sync"])?;
    let n = args.phones.max(idle);
    let file = dir.path().join("phones.jsonl");
    let started = Instant::now();
    super::run_cli(dir.path(), &db, &["device", "add-bulk", &n.to_string(), "--out", &file.display().to_string()])?;
    let synced = super::run_cli(dir.path(), &db, &["broker", "sync"])?;
    eprintln!(
        "[bench] {n} phones registered and made {} clients in {:.1}s",
        synced["created"].as_array().map_or(0, Vec::len),
        started.elapsed().as_secs_f64()
    );
    let creds: Vec<(String, String)> = std::fs::read_to_string(&file)?
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok((
                v["device"].as_str().unwrap_or_default().to_owned(),
                v["password"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect::<Result<_>>()?;

    // Memory first, while nothing else is connected to the broker.
    broker.fresh()?;
    let rss = match broker.pid {
        Some(pid) if idle > 0 => {
            let server = SocketAddr::new(broker.host.parse()?, broker.port);
            Some(idle_rss(server, pid, &creds[..idle]).await?)
        }
        _ => None,
    };

    // Ingest logged in to the broker as the service account; the phones connect there too.
    let log = std::fs::File::create(dir.path().join("serve.log"))?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--roles", "ingest", "--http-listen", "off"])
        .env("JIANDU_DATA_DIR", dir.path())
        .env("JIANDU_DB", &db)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting serve --roles ingest against the external broker")?;
    let ingest = IngestProcess { child, _dir: None };
    super::wait_for_json(&dir.path().join("serve.json"), Duration::from_secs(60))?;
    let store = Store::connect(&db).await?;
    let phones = connect_phones(&(broker.host.clone(), broker.port), &creds[..args.phones]).await?;
    // Ingest may still be subscribing: a probe point is re-sent until it is stored.
    let probe = &phones[0];
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.history_count(None).await? == 0 {
        if Instant::now() > deadline {
            bail!(
                "ingest on {} stored nothing within 60 s; see {}",
                broker.name,
                dir.path().join("serve.log").display()
            );
        }
        let body = json!({"seq": 1, "ts": T0 - 1000, "lat": 36.5, "lon": 118.5, "duty": "on"});
        probe.client.publish(format!("jd/v1/dev/{}/hb", probe.id), QoS::AtLeastOnce, false, body.to_string()).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let label = format!("{}: persisted heartbeats/s", broker.name);
    let mut servers = vec![ingest.child.id()];
    servers.extend(broker.pid);
    let rate = measure_persisted(&label, &store, &phones, args, &servers).await?.rate;
    drop(phones);
    store.close().await;
    drop(ingest);
    Ok((rate, rss))
}

/// Raises this process's soft open-files limit to the hard limit; returns the new limit.
fn raise_open_files_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// A private Mosquitto on a free loopback port, no connection limit: anonymous (the relay
/// reference) or with its dynamic-security plugin (`--broker mosquitto`).
struct Mosquitto {
    port: u16,
    child: std::process::Child,
    bin: &'static str,
    conf: std::path::PathBuf,
    /// `mosquitto -h`'s version, e.g. "2.0.11".
    version: String,
    /// The dynsec admin's password, with dynamic security.
    admin_password: Option<String>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Result<Mosquitto> {
        Mosquitto::spawn(None)
    }

    /// With the dynamic-security plugin (`mosquitto_ctrl dynsec init`, admin `admin`); every
    /// client must log in, and jiandu's sync makes the clients and their ACLs.
    fn start_dynsec() -> Result<Mosquitto> {
        let plugin = [
            "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
            "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context(
            "mosquitto_dynamic_security.so not found (Debian package mosquitto; scripts/services.sh installs it)",
        )?;
        Mosquitto::spawn(Some(plugin))
    }

    fn spawn(dynsec_plugin: Option<&str>) -> Result<Mosquitto> {
        let bin = ["mosquitto", "/usr/sbin/mosquitto"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("-h").output().is_ok())
            .context("mosquitto is not installed (scripts/services.sh installs it)")?;
        let help = std::process::Command::new(bin).arg("-h").output()?;
        let version = String::from_utf8_lossy(&help.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)
            .unwrap_or("2")
            .to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        // Started as root, Mosquitto drops to its own user, which must reach its dynsec file.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let conf = dir.path().join("mosquitto.conf");
        // No queue limit: a QoS 1 subscriber (ingest) that lags must not lose messages here.
        // The relay reference lets 1,000 messages be in flight to its bare subscriber; with
        // jiandu's ingest as the subscriber the default (20) stays: with 1,000 ingest's session
        // stalled on a 10,000-message burst (docs/deploy.md).
        let mut text = format!("listener {port} 127.0.0.1\nmax_connections -1\nmax_queued_messages 0\n");
        if dynsec_plugin.is_none() {
            text.push_str("max_inflight_messages 1000\n");
        }
        let mut admin_password = None;
        match dynsec_plugin {
            None => text.push_str("allow_anonymous true\n"),
            Some(plugin) => {
                let password = hex::encode(rand::random::<[u8; 12]>());
                let file = dir.path().join("dynsec.json");
                let out = std::process::Command::new("mosquitto_ctrl")
                    .args(["dynsec", "init", &file.display().to_string(), "admin", &password])
                    .output()
                    .context("running mosquitto_ctrl dynsec init (Debian package mosquitto-clients)")?;
                if !file.exists() {
                    bail!("mosquitto_ctrl dynsec init failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
                text.push_str(&format!(
                    "allow_anonymous false\nplugin {plugin}\nplugin_opt_config_file {}\n",
                    file.display()
                ));
                admin_password = Some(password);
            }
        }
        std::fs::write(&conf, text)?;
        let child = Mosquitto::run(bin, &conf, port)?;
        Ok(Mosquitto { port, child, bin, conf, version, admin_password, _dir: dir })
    }

    fn run(bin: &str, conf: &std::path::Path, port: u16) -> Result<std::process::Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(conf.with_file_name("mosquitto.log"))?;
        let child = std::process::Command::new(bin)
            .args(["-c", &conf.display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("mosquitto did not start on port {port}")
    }

    /// Stops it and starts it again on the same port and configuration (the dynsec clients are
    /// in its file): a fresh process whose RSS holds no memory freed by earlier work.
    fn restart(&mut self) -> Result<()> {
        self.child.kill().ok();
        self.child.wait().ok();
        self.child = Mosquitto::run(self.bin, &self.conf, self.port)?;
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
