//! `jiandu bench ingest`: heartbeats persisted per second end to end, beside three references
//! measured in the same run — the embedded broker relaying the same load to a bare subscriber,
//! Mosquitto doing the same, and raw batched inserts into the same database — plus the server's
//! memory per connected idle phone.
//!
//! Load: `--phones` MQTT connections (QoS 1), each publishing `--points` single-point heartbeats
//! with `seq` as fast as the broker takes them; the ingest figure counts rows in
//! `position_history`, once with one ingest process and once with a second one in the group.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};
use jiandu_store::{PositionRow, Store};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BenchArgs, Report, Row, Stat, SystemUnderTest, measure};

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
    let relay =
        relay_rate(&relay_sut.mqtt, Some(sink_creds), &phones, args.points, reps, "embedded broker: bare relay msg/s")
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
                relay_rate(&addr, None, &phones, args.points, reps, "mosquitto: bare relay msg/s"),
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
        ours: ours.clone(),
        reference: Some(("embedded broker bare relay".into(), relay.clone())),
        goal: Some("≥ 100000 and ≥ 0.5 × relay".into()),
    });
    if let Some(m) = &mosquitto {
        rows.push(Row {
            metric: "heartbeats persisted/s vs Mosquitto relay".into(),
            unit: "points/s".into(),
            ours: ours.clone(),
            reference: Some(("mosquitto bare relay".into(), m.clone())),
            goal: None,
        });
        rows.push(Row {
            metric: "embedded broker relay vs Mosquitto relay".into(),
            unit: "msg/s".into(),
            ours: relay.clone(),
            reference: Some(("mosquitto bare relay".into(), m.clone())),
            goal: None,
        });
    }
    rows.push(Row {
        metric: "heartbeats persisted/s, two ingest processes".into(),
        unit: "points/s".into(),
        ours: two,
        reference: Some(("one ingest process".into(), ours.clone())),
        goal: None,
    });
    rows.push(Row {
        metric: "heartbeats persisted/s vs raw inserts".into(),
        unit: "points/s".into(),
        ours: ours.clone(),
        reference: Some(("raw batched inserts".into(), raw)),
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
async fn persisted_rate(args: &IngestBenchArgs, second_ingest: bool) -> Result<Stat> {
    let total = (args.phones * args.points) as f64;
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
        second = Some(SecondIngest { child, _dir: dir });
    }
    let creds = register(&store, args.phones).await?;
    let phones = connect_phones(&sut.mqtt, &creds).await?;
    let label =
        if second_ingest { "two ingest processes: persisted heartbeats/s" } else { "ingest: persisted heartbeats/s" };
    let rate = measure(label, args.common.repetitions, |rep| {
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
    .await?;
    drop(phones);
    store.close().await;
    drop(second);
    drop(sut);
    Ok(rate)
}

/// The extra `serve --roles ingest` process of the two-process row; killed on drop.
struct SecondIngest {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for SecondIngest {
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
) -> Result<Stat> {
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
    measure(label, reps, |rep| {
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

/// Server RSS growth per connected idle phone, with raw MQTT connections from several
/// 127.0.0.x source addresses (past the ephemeral-port range of one address).
async fn idle_rss_per_phone(n: usize) -> Result<f64> {
    if n == 0 {
        return Ok(f64::NAN);
    }
    let sut = SystemUnderTest::start("sqlite", "broker", &[])?;
    let store = Store::connect(&sut.db).await?;
    let creds = register(&store, n).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sut.rss_bytes().context("no RSS for the server")? as f64;
    let server = SocketAddr::new(sut.mqtt.0.parse()?, sut.mqtt.1);
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
    let after = sut.rss_bytes().context("no RSS for the server")? as f64;
    eprintln!("[bench] server RSS {:.1} MiB → {:.1} MiB with {n} idle phones", before / 1048576.0, after / 1048576.0);
    drop(sockets);
    store.close().await;
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

/// A private Mosquitto on a free loopback port, anonymous, no connection limit.
struct Mosquitto {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Result<Mosquitto> {
        let bin = ["mosquitto", "/usr/sbin/mosquitto"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("-h").output().is_ok())
            .context("mosquitto is not installed (scripts/services.sh installs it)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\nmax_inflight_messages 1000\nmax_queued_messages 0\n"
            ),
        )?;
        let child = std::process::Command::new(bin)
            .args(["-c", &conf.display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Mosquitto { port, child, _dir: dir });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("mosquitto did not start on port {port}")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
