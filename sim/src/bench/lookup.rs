//! `jiandu bench lookup`: registry look-ups as a phone sees them.
//!
//! Generates the seed county's registries (50,689 members, 5,801 staff, 951 vehicles, 61
//! departments), imports them through the real `jiandu import` into a `jiandu serve` with the
//! look-up role, then measures MQTT round trips from phone clients: latency (p50/p99) with a
//! few phones asking one at a time, and throughput with many phones keeping several look-ups
//! in flight. The reference is the bare broker round trip: the same phones against a broker-only
//! `serve` where an echo client answers every look-up at once without looking anything up or
//! auditing, so the ratio shows what the look-up role adds. Import time is set beside a dry run
//! of the same files (read, check and diff, nothing written).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};
use jiandu_oversight::generate::{Scale, generate};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{BenchArgs, Report, Row, Stat, SystemUnderTest, measure, percentile};

/// Phones asking one look-up at a time for the latency figures.
const LATENCY_PHONES: usize = 4;
/// Look-ups per phone per latency run.
const LATENCY_PER_PHONE: usize = 1500;
/// Phones for the throughput figure.
const LOAD_PHONES: usize = 20;
/// Look-ups each load phone keeps in flight.
const LOAD_WINDOW: usize = 64;
/// Look-ups per load phone per throughput run.
const LOAD_PER_PHONE: usize = 3000;

/// Runs the benchmark and prints the report.
pub async fn run(args: &BenchArgs) -> Result<()> {
    let data = tempfile::Builder::new().prefix("jiandu-bench-registries-").tempdir()?;
    let files = generate(data.path(), 1, Scale::COUNTY)?;
    let queries = Arc::new(query_mix(&files.vehicles, &files.members, &files.departments)?);
    let no_limit = [("JIANDU_LOOKUP_RATE_PER_MINUTE", "0"), ("JIANDU_LOOKUP_REFRESH_MS", "100")];

    // Import all four files into a fresh system; repeat on fresh systems.
    let order = [
        ("members", &files.members),
        ("staff", &files.staff),
        ("vehicles", &files.vehicles),
        ("departments", &files.departments),
    ];
    let import = measure("import all four registries", args.repetitions, |_| {
        let db = args.db.clone();
        async move {
            let sut = SystemUnderTest::start(&db, "broker", &[])?;
            let t = Instant::now();
            for (registry, file) in order {
                sut.cli(&["import", registry, &file.display().to_string()])?;
            }
            Ok(t.elapsed().as_secs_f64())
        }
    })
    .await?;

    // The system under test: broker + look-up role with the full registries.
    let sut = SystemUnderTest::start(&args.db, "broker,oversight", &no_limit)?;
    for (registry, file) in order {
        let out = sut.cli(&["import", registry, &file.display().to_string()])?;
        eprintln!("[bench] imported {registry}: {out}");
    }
    let dry = measure("dry run of all four (reference)", args.repetitions, |_| {
        let sut = &sut;
        async move {
            let t = Instant::now();
            for (registry, file) in order {
                sut.cli(&["import", registry, &file.display().to_string(), "--dry-run"])?;
            }
            Ok(t.elapsed().as_secs_f64())
        }
    })
    .await?;
    let phones = add_phones(&sut, LOAD_PHONES.max(LATENCY_PHONES))?;
    wait_until_answered(&sut, &phones[0], &queries[0]).await?;
    let ours = phone_runs(&sut, &phones, &queries, args.repetitions).await?;
    let audited = audited_count(&sut);

    // Reference: the same phones against a bare broker with an echo service.
    let bare = SystemUnderTest::start(&args.db, "broker", &[])?;
    let ref_phones = add_phones(&bare, LOAD_PHONES.max(LATENCY_PHONES))?;
    let echo = start_echo(&bare).await?;
    wait_until_answered(&bare, &ref_phones[0], &queries[0]).await?;
    let reference = phone_runs(&bare, &ref_phones, &queries, args.repetitions).await?;
    echo.abort();

    let rows = vec![
        Row {
            metric: "look-up round trip p50".into(),
            unit: "ms".into(),
            ours: ours.p50,
            reference: Some(("bare broker echo".into(), reference.p50)),
            goal: None,
        },
        Row {
            metric: "look-up round trip p99".into(),
            unit: "ms".into(),
            ours: ours.p99,
            reference: Some(("bare broker echo".into(), reference.p99)),
            goal: Some("≤ 5".into()),
        },
        Row {
            metric: "look-up throughput".into(),
            unit: "look-ups/s".into(),
            ours: ours.throughput,
            reference: Some(("bare broker echo".into(), reference.throughput)),
            goal: Some("≥ 20000".into()),
        },
        Row {
            metric: "import of all four files".into(),
            unit: "s".into(),
            ours: import,
            reference: Some(("dry run (no writes)".into(), dry)),
            goal: Some("≤ 10".into()),
        },
    ];
    Report {
        bench: "lookup".into(),
        setup: json!({
            "db": if args.db == "sqlite" { "sqlite" } else { "postgres" },
            "members": Scale::COUNTY.members, "staff": Scale::COUNTY.staff,
            "vehicles": Scale::COUNTY.vehicles, "departments": Scale::COUNTY.departments,
            "latency_phones": LATENCY_PHONES, "load_phones": LOAD_PHONES, "in_flight_per_phone": LOAD_WINDOW,
            "audited_lookups": audited,
        }),
        rows,
    }
    .print(args);
    Ok(())
}

/// Latency and throughput of one system, over the repetitions.
struct PhoneStats {
    p50: Stat,
    p99: Stat,
    throughput: Stat,
}

async fn phone_runs(
    sut: &SystemUnderTest,
    phones: &[(String, String)],
    queries: &Arc<Vec<Value>>,
    repetitions: usize,
) -> Result<PhoneStats> {
    let samples = std::cell::RefCell::new((Vec::new(), Vec::new()));
    let cell = &samples;
    measure("round trips, one at a time", repetitions, |i| async move {
        let (mut rtts, _) = drive(sut, &phones[..LATENCY_PHONES], queries, LATENCY_PER_PHONE, 1).await?;
        rtts.sort_by(f64::total_cmp);
        // The warm-up's figures are not kept.
        if i > 0 {
            let mut s = cell.borrow_mut();
            s.0.push(percentile(&rtts, 50.0));
            s.1.push(percentile(&rtts, 99.0));
        }
        Ok(percentile(&rtts, 99.0))
    })
    .await?;
    let (p50, p99) = samples.into_inner();
    let throughput = measure("throughput, many in flight", repetitions, |_| async {
        let (rtts, elapsed) = drive(sut, &phones[..LOAD_PHONES], queries, LOAD_PER_PHONE, LOAD_WINDOW).await?;
        Ok(rtts.len() as f64 / elapsed)
    })
    .await?;
    Ok(PhoneStats { p50: Stat::of(p50), p99: Stat::of(p99), throughput })
}

fn add_phones(sut: &SystemUnderTest, n: usize) -> Result<Vec<(String, String)>> {
    (0..n)
        .map(|i| {
            let v = sut.cli(&["device", "add", &format!("bench-phone-{i}")])?;
            match (v["device"].as_str(), v["password"].as_str()) {
                (Some(d), Some(p)) => Ok((d.to_owned(), p.to_owned())),
                _ => bail!("device add printed {v}"),
            }
        })
        .collect()
}

fn audited_count(sut: &SystemUnderTest) -> Value {
    sut.cli(&["lookup", "audit", "--limit", "1"]).map(|v| v["id"].clone()).unwrap_or(Value::Null)
}

/// Look-ups from the generated files: mostly plates (in the spellings phones send, a few
/// misread), then names and departments.
fn query_mix(
    vehicles: &std::path::Path,
    members: &std::path::Path,
    departments: &std::path::Path,
) -> Result<Vec<Value>> {
    let first_column = |path: &std::path::Path, col: usize| -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path)?;
        Ok(text.lines().skip(1).filter_map(|l| l.split(',').nth(col).map(str::to_owned)).collect())
    };
    let plates = first_column(vehicles, 0)?;
    let names = first_column(members, 1)?;
    let depts = first_column(departments, 1)?;
    let mut out = Vec::new();
    for i in 0..2000 {
        let q = match i % 20 {
            0..=13 => {
                let p = &plates[i % plates.len()];
                let spelled = match i % 3 {
                    0 => p.clone(),
                    1 => p.to_lowercase().replacen('g', "g·", 1),
                    _ => format!(
                        "{} {}",
                        &p[..p.char_indices().nth(2).map(|c| c.0).unwrap_or(0)],
                        &p[p.char_indices().nth(2).map(|c| c.0).unwrap_or(0)..]
                    ),
                };
                json!({"kind": "vehicle", "q": spelled})
            }
            14 => json!({"kind": "vehicle", "q": plates[i % plates.len()].replace('0', "O")}),
            15..=18 => json!({"kind": "person", "q": names[(i * 7919) % names.len()]}),
            _ => json!({"kind": "department", "q": depts[i % depts.len()]}),
        };
        out.push(q);
    }
    Ok(out)
}

fn phone_options(sut: &SystemUnderTest, id: &str, password: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, &sut.mqtt.0, sut.mqtt.1);
    o.set_credentials(id, password);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    o
}

/// Phone apps send small interactive messages: no Nagle delay (rumqttc's default keeps it on).
fn nodelay(events: &mut rumqttc::EventLoop) {
    let mut network = events.network_options();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
}

/// Connects a phone and subscribes to its look-up inbox; replies arrive on the channel.
async fn connect_phone(
    sut: &SystemUnderTest,
    id: &str,
    password: &str,
) -> Result<(AsyncClient, mpsc::Receiver<Value>)> {
    let (client, mut events) = AsyncClient::new(phone_options(sut, id, password), 4096);
    nodelay(&mut events);
    let (tx, rx) = mpsc::channel(8192);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let inbox = format!("jd/v1/dev/{id}/inbox/lookup");
    let sub = client.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    sub.subscribe(inbox.clone(), QoS::AtLeastOnce).await.ok();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        r.send(()).ok();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&p.payload)
                        && tx.send(v).await.is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx).await.context("phone did not connect")??;
    Ok((client, rx))
}

/// Each phone sends `per_phone` look-ups keeping `window` in flight; returns every round trip
/// (ms) and the wall time (s).
async fn drive(
    sut: &SystemUnderTest,
    phones: &[(String, String)],
    queries: &Arc<Vec<Value>>,
    per_phone: usize,
    window: usize,
) -> Result<(Vec<f64>, f64)> {
    let mut connected = Vec::new();
    for (id, pw) in phones {
        connected.push((id.clone(), connect_phone(sut, id, pw).await?));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (n, (id, (client, mut replies))) in connected.into_iter().enumerate() {
        let queries = queries.clone();
        tasks.push(tokio::spawn(async move {
            let topic = format!("jd/v1/dev/{id}/lookup");
            let mut sent_at: HashMap<String, Instant> = HashMap::new();
            let mut rtts = Vec::with_capacity(per_phone);
            let mut next = 0;
            while rtts.len() < per_phone {
                while next < per_phone && sent_at.len() < window {
                    let corr = format!("{n}-{next}");
                    let mut q = queries[(n * 131 + next) % queries.len()].clone();
                    q["corr"] = json!(corr);
                    sent_at.insert(corr, Instant::now());
                    client.publish(&topic, QoS::AtLeastOnce, false, q.to_string()).await?;
                    next += 1;
                }
                let reply = tokio::time::timeout(Duration::from_secs(30), replies.recv())
                    .await
                    .context("no look-up reply within 30 s")?
                    .context("phone disconnected")?;
                if let Some(t) = reply["corr"].as_str().and_then(|c| sent_at.remove(c)) {
                    if reply.get("error").is_some() {
                        bail!("look-up refused: {reply}");
                    }
                    rtts.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            client.disconnect().await.ok();
            Ok::<_, crate::Error>(rtts)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed().as_secs_f64()))
}

/// Sends one look-up until an answer comes back (the role subscribes shortly after start).
async fn wait_until_answered(sut: &SystemUnderTest, phone: &(String, String), query: &Value) -> Result<()> {
    let (client, mut replies) = connect_phone(sut, &phone.0, &phone.1).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut q = query.clone();
    q["corr"] = json!("ready");
    while Instant::now() < deadline {
        client.publish(format!("jd/v1/dev/{}/lookup", phone.0), QoS::AtLeastOnce, false, q.to_string()).await?;
        if let Ok(Some(v)) = tokio::time::timeout(Duration::from_millis(500), replies.recv()).await
            && (v["found"] == json!(true) || v.get("echo").is_some())
        {
            client.disconnect().await.ok();
            return Ok(());
        }
    }
    bail!("no look-up answer within 60 s; server log:\n{}", sut.log())
}

/// The reference service: a service account (created in the system's database, as `serve`
/// does for its own roles) that answers every look-up at once without looking anything up.
async fn start_echo(sut: &SystemUnderTest) -> Result<tokio::task::JoinHandle<()>> {
    let store = jiandu_store::Store::connect(&sut.db).await?;
    let token = store.ensure_service_account("bench-echo").await?;
    store.close().await;
    let mut o = MqttOptions::new("bench-echo-1", &sut.mqtt.0, sut.mqtt.1);
    o.set_credentials("bench-echo", token.expose());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(o, 8192);
    nodelay(&mut events);
    Ok(tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe("$share/echo/jd/v1/dev/+/lookup", QoS::AtLeastOnce).await.ok();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let corr =
                        serde_json::from_slice::<Value>(&p.payload).map(|v| v["corr"].clone()).unwrap_or_default();
                    let topic = p.topic.replacen("/lookup", "/inbox/lookup", 1);
                    let reply = json!({"corr": corr, "found": false, "echo": true}).to_string();
                    let c = client.clone();
                    tokio::spawn(async move { c.publish(topic, QoS::AtLeastOnce, false, reply).await.ok() });
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("[bench] echo service: {e}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}
