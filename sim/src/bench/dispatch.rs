//! `jiandu bench dispatch`: how fast the nearest free inspector gets the assignment.
//!
//! End to end, at the phone: a real `jiandu serve` (broker, ingest, dispatcher) with 100,000
//! live simulated devices in a county-sized area (60 × 60 km), their heartbeats flowing through
//! the broker at a steady rate from a few multiplexed clients (a service account may publish for
//! any device), and reports published one after another as phones would; the latency is from just
//! before a report is published to the moment the chosen device's `inbox/assignment` arrives at
//! the simulated phone. The reference beside it is the bare broker: publish → subscriber on the
//! same connections, i.e. the two MQTT hops every offer needs anyway.
//!
//! In process: the nearest-device query alone on an index of 1,000,000 devices, against a linear
//! scan over the same devices in the same run (and checked to give the same answers).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};
use jiandu_dispatcher::index::SpatialIndex;
use jiandu_schemas::Duty;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::mpsc;

use super::{BenchArgs, Report, Row, Stat, SystemUnderTest, measure, percentile};

/// Options of `jiandu bench dispatch`.
#[derive(Debug, Clone, clap::Args)]
pub struct DispatchArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    /// Live simulated devices for the end-to-end run
    #[arg(long, default_value_t = 100_000)]
    pub devices: usize,
    /// Reports measured end to end (after 200 warm-up reports)
    #[arg(long, default_value_t = 10_000)]
    pub reports: usize,
    /// Devices in the index for the nearest-device query alone
    #[arg(long, default_value_t = 1_000_000)]
    pub knn_devices: usize,
    /// Background heartbeats per second while measuring (100,000 devices every 30 s ≈ 3,333)
    #[arg(long, default_value_t = 3_333)]
    pub hb_rate: u64,
    /// Roles of the system under test
    #[arg(long, default_value = "broker,ingest,dispatcher")]
    pub roles: String,
}

/// South-west corner and size of the simulated county (degrees).
const AREA: (f64, f64, f64, f64) = (36.20, 118.20, 0.54, 0.67);

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn point(&mut self) -> (f64, f64) {
        (AREA.0 + self.next_f64() * AREA.2, AREA.1 + self.next_f64() * AREA.3)
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.next_f64() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

fn now_ms() -> i64 {
    jiandu_store::now_ms()
}

/// Runs both measurements and prints the report.
pub async fn run(args: DispatchArgs) -> Result<()> {
    let knn = knn(&args).await?;
    let e2e = end_to_end(&args).await?;
    let mut rows = e2e.rows;
    rows.extend(knn);
    Report {
        bench: "dispatch".into(),
        setup: json!({
            "devices": args.devices, "reports": args.reports, "knn_devices": args.knn_devices,
            "hb_rate_per_s": args.hb_rate, "roles": args.roles, "db": args.common.db,
            "offered": e2e.offered, "area_km": "60x60",
        }),
        rows,
    }
    .print(&args.common);
    Ok(())
}

/// The nearest-device query on `knn_devices` devices: R*-tree against a linear scan.
async fn knn(args: &DispatchArgs) -> Result<Vec<Row>> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let now = now_ms();
    eprintln!("[bench] building an index of {} devices", args.knn_devices);
    let index = SpatialIndex::bulk((0..args.knn_devices).map(|i| {
        let (lat, lon) = rng.point();
        (format!("d{i:07}"), SpatialIndex::state(lat, lon, now, true, Some(Duty::On), false))
    }));
    let queries: Vec<(f64, f64)> = (0..20_000).map(|_| rng.point()).collect();
    let none = HashSet::new();
    let fresh_since = now - 300_000;
    // Same answers on a sample.
    for &(lat, lon) in queries.iter().take(20) {
        let a = index.nearest(lat, lon, fresh_since, 30_000.0, &none).context("tree found nobody")?;
        let b = index.nearest_by_scan(lat, lon, fresh_since, 30_000.0, &none).context("scan found nobody")?;
        if a.device != b.device {
            bail!("tree and scan disagree at {lat},{lon}: {} vs {}", a.device, b.device);
        }
    }
    let tree = measure("kNN (R*-tree)", args.common.repetitions, |_| {
        let (index, queries, none) = (&index, &queries, &none);
        async move {
            let start = Instant::now();
            let mut found = 0usize;
            for &(lat, lon) in queries {
                found += usize::from(index.nearest(lat, lon, fresh_since, 30_000.0, none).is_some());
            }
            let per = start.elapsed().as_secs_f64() * 1e6 / queries.len() as f64;
            if found != queries.len() {
                bail!("{} of {} queries found nobody", queries.len() - found, queries.len());
            }
            Ok(per)
        }
    })
    .await?;
    let scan = measure("kNN (linear scan)", args.common.repetitions, |_| {
        let (index, queries, none) = (&index, &queries, &none);
        async move {
            let start = Instant::now();
            let sample = &queries[..20];
            for &(lat, lon) in sample {
                std::hint::black_box(index.nearest_by_scan(lat, lon, fresh_since, 30_000.0, none));
            }
            Ok(start.elapsed().as_secs_f64() * 1e6 / sample.len() as f64)
        }
    })
    .await?;
    Ok(vec![Row {
        metric: format!("nearest device among {}", args.knn_devices),
        unit: "µs/query".into(),
        ours: tree,
        reference: Some(("linear scan".into(), scan)),
        goal: Some("≤ 10".into()),
    }])
}

/// What the end-to-end run produced.
struct EndToEnd {
    rows: Vec<Row>,
    offered: usize,
}

/// Connects one bench client as the service account.
async fn client(sut: &SystemUnderTest, token: &str, name: &str, capacity: usize) -> Result<(AsyncClient, EventLoop)> {
    let mut o = MqttOptions::new(format!("bench-{name}"), &sut.mqtt.0, sut.mqtt.1);
    o.set_credentials("bench", token);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(1000);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut events) = AsyncClient::new(o, capacity);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await.context("no CONNACK")? {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((c, events)),
            Ok(_) => {}
            Err(e) => bail!("bench client {name} cannot connect: {e}"),
        }
    }
}

/// Drives an event loop in the background; incoming publishes go to `tx` with their arrival time.
fn drive(mut events: EventLoop, tx: Option<mpsc::UnboundedSender<(String, Vec<u8>, Instant)>>) {
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    if let Some(tx) = &tx {
                        tx.send((p.topic.clone(), p.payload.to_vec(), at)).ok();
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
}

fn heartbeat(lat: f64, lon: f64) -> Vec<u8> {
    json!({"ts": now_ms(), "lat": lat, "lon": lon, "duty": "on"}).to_string().into_bytes()
}

async fn end_to_end(args: &DispatchArgs) -> Result<EndToEnd> {
    let env = [("JIANDU_DISPATCH_OFFER_TIMEOUT_S", "3600"), ("JIANDU_DISPATCH_RADIUS_M", "100000")];
    let sut = SystemUnderTest::start(&args.common.db, &args.roles, &env)?;
    let store = jiandu_store::Store::connect(&sut.db).await?;
    let token = store.ensure_service_account("bench").await?.expose().to_owned();
    store.close().await;

    // Phones' side: one connection receiving every offer.
    let (phones, phone_events) = client(&sut, &token, "phones", 1024).await?;
    phones.subscribe("jd/v1/dev/+/inbox/assignment", QoS::AtLeastOnce).await?;
    phones.subscribe("bench/echo", QoS::AtLeastOnce).await?;
    let (offers_tx, mut offers) = mpsc::unbounded_channel();
    drive(phone_events, Some(offers_tx));
    let (feeder, feeder_events) = client(&sut, &token, "feeder", 4096).await?;
    drive(feeder_events, None);
    let (reporter, reporter_events) = client(&sut, &token, "reporter", 1024).await?;
    drive(reporter_events, None);
    tokio::time::sleep(Duration::from_millis(300)).await; // let the SUBACKs land

    // Initial positions: every device once, on one connection, then a sentinel far away; when the
    // sentinel is offered a report at its own spot, every heartbeat before it has been indexed.
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let mut positions: Vec<(f64, f64)> = (0..args.devices).map(|_| rng.point()).collect();
    let ids: Vec<String> = (0..args.devices).map(|i| format!("b{i:07}")).collect();
    let start = Instant::now();
    for (id, &(lat, lon)) in ids.iter().zip(&positions) {
        feeder.publish(format!("jd/v1/dev/{id}/hb"), QoS::AtLeastOnce, false, heartbeat(lat, lon)).await?;
    }
    feeder.publish("jd/v1/dev/bsentinel/hb", QoS::AtLeastOnce, false, heartbeat(30.0, 110.0)).await?;
    // Reports travel on another filter than heartbeats, so ask until the sentinel is offered one.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let id = format!("sentinel-{attempt}");
        let body = json!({"id": id, "kind": "bench", "text": "", "lat": 30.0, "lon": 110.0, "ts": now_ms()});
        reporter.publish("jd/v1/dev/bsentinel/report", QoS::AtLeastOnce, false, body.to_string()).await?;
        if wait_offer(&mut offers, &id, Duration::from_secs(2)).await.is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("the index never caught up with {} devices", args.devices);
        }
    }
    eprintln!("[bench] {} devices indexed in {:.1} s", args.devices, start.elapsed().as_secs_f64());

    // Heartbeats keep flowing in the background: devices wander up to ~100 m at a time.
    let stop = tokio_util::sync::CancellationToken::new();
    let hb_task = {
        let (feeder, stop, ids) = (feeder.clone(), stop.clone(), ids.clone());
        let rate = args.hb_rate.max(1);
        let mut rng = Rng(0xfeed_beef_1234_5678);
        tokio::spawn(async move {
            let tick = Duration::from_millis(10);
            let per_tick = (rate as f64 / 100.0).ceil() as usize;
            let mut sent = 0u64;
            let mut interval = tokio::time::interval(tick);
            while !stop.is_cancelled() {
                interval.tick().await;
                for _ in 0..per_tick {
                    let i = rng.below(ids.len());
                    let (lat, lon) = &mut positions[i];
                    *lat = (*lat + (rng.next_f64() - 0.5) * 0.001).clamp(AREA.0, AREA.0 + AREA.2);
                    *lon = (*lon + (rng.next_f64() - 0.5) * 0.001).clamp(AREA.1, AREA.1 + AREA.3);
                    let topic = format!("jd/v1/dev/{}/hb", ids[i]);
                    if feeder.try_publish(topic, QoS::AtMostOnce, false, heartbeat(*lat, *lon)).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent
        })
    };

    // Reference: the bare broker, publish → subscriber, on the same connections.
    let mut echo = Vec::with_capacity(2000);
    for i in 0..2200 {
        let t0 = Instant::now();
        reporter.publish("bench/echo", QoS::AtLeastOnce, false, i.to_string()).await?;
        let t1 = wait_topic(&mut offers, "bench/echo", Duration::from_secs(10)).await.context("echo lost")?;
        if i >= 200 {
            echo.push((t1 - t0).as_secs_f64() * 1e3);
        }
    }

    // Reports, one after another, each from a random device at a random place.
    let mut latencies = Vec::with_capacity(args.reports);
    let mut missed = 0usize;
    let started = Instant::now();
    for n in 0..(200 + args.reports) {
        let (lat, lon) = rng.point();
        let from = &ids[rng.below(ids.len())];
        let id = format!("bench-{n}");
        let body =
            json!({"id": id, "kind": "official-car", "text": "公车私用", "lat": lat, "lon": lon, "ts": now_ms()});
        let t0 = Instant::now();
        reporter.publish(format!("jd/v1/dev/{from}/report"), QoS::AtLeastOnce, false, body.to_string()).await?;
        match wait_offer(&mut offers, &id, Duration::from_secs(10)).await {
            Some(t1) if n >= 200 => latencies.push((t1 - t0).as_secs_f64() * 1e3),
            Some(_) => {}
            None => missed += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    let hb_sent = hb_task.await.unwrap_or(0);
    eprintln!(
        "[bench] {} reports in {elapsed:.1} s, {missed} without an offer; {hb_sent} background heartbeats",
        latencies.len()
    );
    if latencies.len() < args.reports * 9 / 10 {
        bail!("only {} of {} reports were offered; see {}", latencies.len(), args.reports, sut.dir.path().display());
    }
    latencies.sort_by(f64::total_cmp);
    echo.sort_by(f64::total_cmp);
    let row = |metric: &str, p: f64, goal: Option<&str>| Row {
        metric: format!("report → offer at phone {metric}"),
        unit: "ms".into(),
        ours: Stat::of(vec![percentile(&latencies, p)]),
        reference: Some(("broker hop (pub→sub)".into(), Stat::of(vec![percentile(&echo, p)]))),
        goal: goal.map(str::to_owned),
    };
    Ok(EndToEnd {
        rows: vec![row("p50", 50.0, None), row("p99", 99.0, Some("≤ 20")), row("max", 100.0, None)],
        offered: latencies.len(),
    })
}

/// Waits for the offer of `report`, returning when it arrived.
async fn wait_offer(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>, Instant)>,
    report: &str,
    limit: Duration,
) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (topic, payload, at) = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if !topic.ends_with("/inbox/assignment") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&payload).ok()?;
        let id = v["report"]["id"].as_str().unwrap_or_default();
        if id == report {
            return Some(at);
        }
    }
}

/// Waits for the next message on `topic`.
async fn wait_topic(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>, Instant)>,
    topic: &str,
    limit: Duration,
) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (t, _, at) = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if t == topic {
            return Some(at);
        }
    }
}
