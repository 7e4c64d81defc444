//! `jiandu bench evidence`: upload throughput and memory of evidence ingest, and `verify --deep`
//! throughput, each beside a reference on the same disk in the same run.
//!
//! A phone (a rumqttc client in this process) uploads one file of `JIANDU_BENCH_EVIDENCE_MB`
//! MiB (default 1024) over loopback MQTT in 256 KiB QoS 1 chunks, as the protocol says, and the
//! time runs until the signed `stored` receipt arrives. The reference is `cp` of the same bytes
//! to the same disk; a second reference is the transport alone, the same phone publishing the same
//! chunks through a broker-only server to a bare subscriber that only acknowledges them (how
//! much of the gap to `cp` is the MQTT path itself). The CPU the server and this process (the
//! phone) spend per MiB is reported for both, so a reader sees how much of the machine the
//! server itself needs, apart from the phone sharing its cores. The server's RSS is sampled every 20 ms; its peak growth over the idle server
//! before the first upload is reported for every run (goal: < 64 MiB, i.e. flat whatever the
//! size and however many uploads came before). Then `jiandu verify
//! --deep` re-hashes the stored blob, against `sha256sum` of the same file. Goals from issue 5:
//! upload ≥ 0.5 × `cp`, verify ≥ 0.8 × `sha256sum`. Repeated uploads carry the same bytes under
//! new ids (stored once, as in production), so every run does the full staging, hashing and
//! commit work.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{BenchArgs, CpuSpan, Report, Row, Stat, SystemUnderTest, measure};

const CHUNK: usize = 256 * 1024;
/// QoS 1 publishes the uploading client may have unacknowledged.
const INFLIGHT: u16 = 32;
const MIB: f64 = 1024.0 * 1024.0;

/// Writes `size` pseudo-random bytes to `path` and returns their SHA-256.
fn make_file(path: &Path, size: u64) -> Result<String> {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        hasher.update(&block[..n]);
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    f.get_ref().sync_all()?;
    Ok(hex::encode(hasher.finalize()))
}

/// Seconds a shell command takes.
fn time_command(program: &str, args: &[&str]) -> Result<f64> {
    let start = Instant::now();
    let status = Command::new(program).args(args).stdout(std::process::Stdio::null()).status()?;
    if !status.success() {
        bail!("{program} {args:?} failed");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Options of one bench client of `sut` logged in as `user`, taking chunk-sized packets.
fn client_options(sut: &SystemUnderTest, client_id: String, user: &str, password: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, &sut.mqtt.0, sut.mqtt.1);
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Uploads the file as one phone would; returns (seconds until the stored receipt, peak RSS of
/// the server in bytes).
async fn upload(
    sut: &SystemUnderTest,
    dev: &str,
    token: &str,
    file: &Path,
    sha: &str,
    size: u64,
    evid: &str,
) -> Result<(f64, f64)> {
    let mut o = client_options(sut, format!("{dev}-bench-{evid}"), dev, token);
    o.set_inflight(INFLIGHT);
    let (client, mut events) = AsyncClient::new(o, 256);
    client.subscribe(format!("jd/v1/dev/{dev}/inbox/receipt"), QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let chunks = size.div_ceil(CHUNK as u64);
    let meta = json!({"sha256": sha, "size": size, "mime": "video/mp4", "captured_at": 1_780_272_000_000i64,
        "chunk_size": CHUNK, "chunks": chunks});
    let start = Instant::now();
    let (c, f, dev_s, evid_s) = (client.clone(), Arc::new(std::fs::File::open(file)?), dev.to_owned(), evid.to_owned());
    // Rounds as the protocol has them: the chunks asked for, then meta again, whose `partial`
    // receipt lists what did not arrive (the broker may drop what a lagging subscriber missed).
    let (rounds, mut round_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u64>>();
    let publisher = tokio::spawn(async move {
        let meta_topic = format!("jd/v1/dev/{dev_s}/ev/{evid_s}/meta");
        c.publish(&meta_topic, QoS::AtLeastOnce, false, meta.to_string()).await?;
        while let Some(round) = round_rx.recv().await {
            for n in round {
                let buf = read_chunk(&f, n, size)?;
                c.publish(format!("jd/v1/dev/{dev_s}/ev/{evid_s}/c/{n}"), QoS::AtLeastOnce, false, buf).await?;
            }
            c.publish(&meta_topic, QoS::AtLeastOnce, false, meta.to_string()).await?;
        }
        Ok::<_, crate::Error>(())
    });
    // rumqttc's `EventLoop::poll` is not cancel-safe: dropped while it writes a publish (the
    // RSS tick below winning a select), the publish has its packet id in the client's state but
    // never reaches the socket, and 32 publishes later the client waits for that id forever
    // (CollisionTimeout; seen with 256 KiB chunks in release builds). So the event loop runs in
    // a task of its own and hands its events over a channel, which is safe to select on.
    let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        loop {
            let e = events.poll().await;
            let failed = e.is_err();
            if event_tx.send(e).is_err() || failed {
                return;
            }
        }
    });
    rounds.send((0..chunks).collect()).ok();
    let mut first_partial = true;
    let mut resent = 0usize;
    let mut peak = sut.rss_bytes().unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let deadline = Instant::now() + Duration::from_secs(3600);
    let elapsed = loop {
        tokio::select! {
            _ = tick.tick() => {
                peak = peak.max(sut.rss_bytes().unwrap_or(0));
                if Instant::now() > deadline {
                    bail!("no receipt within an hour");
                }
            }
            e = event_rx.recv() => {
                let e = e.context("the phone's event loop ended")?;
                let e = e.map_err(|e| crate::Error::Failed(format!("phone's MQTT connection: {e:?}")))?;
                if let Event::Incoming(Packet::Publish(p)) = e {
                    let v: Value = serde_json::from_slice(&p.payload)?;
                    if v["evid"] == evid && v["status"] == "stored" {
                        break start.elapsed().as_secs_f64();
                    }
                    if v["evid"] == evid && v["status"] == "rejected" {
                        bail!("upload rejected: {}", v["error"]);
                    }
                    if v["evid"] == evid && v["status"] == "partial" {
                        if std::mem::take(&mut first_partial) {
                            continue;
                        }
                        let missing: Vec<u64> =
                            v["missing"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
                        if !missing.is_empty() {
                            resent += missing.len();
                            rounds.send(missing).ok();
                        }
                    }
                }
            }
        }
    };
    drop(rounds);
    publisher.await??;
    if resent > 0 {
        eprintln!("[bench] {evid}: {resent} chunks were re-sent after the broker dropped them");
    }
    peak = peak.max(sut.rss_bytes().unwrap_or(0));
    client.disconnect().await.ok();
    pump.abort();
    Ok((elapsed, peak as f64))
}

/// Reads chunk `n` of `file` into fresh capacity (zeroing it first cost the phone as much as
/// reading).
fn read_chunk(file: &std::fs::File, n: u64, size: u64) -> Result<Vec<u8>> {
    let len = (size - n * CHUNK as u64).min(CHUNK as u64);
    let mut buf = Vec::with_capacity(len as usize);
    let mut reader = file;
    reader.seek(std::io::SeekFrom::Start(n * CHUNK as u64))?;
    reader.take(len).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        bail!("the source file is shorter than {size} bytes");
    }
    Ok(buf)
}

/// The transport alone: the same phone publishes the same chunks through a broker-only server
/// to a bare subscriber that only acknowledges them (no ingest, no staging, no hashing);
/// seconds until the subscriber has every byte.
async fn relay_upload(
    sut: &SystemUnderTest,
    phone: (&str, &str),
    sink: (&str, &str),
    file: &Path,
    size: u64,
    evid: &str,
) -> Result<f64> {
    let o = client_options(sut, format!("{}-sink-{evid}", sink.0), sink.0, sink.1);
    let (sink_client, mut sink_events) = AsyncClient::new(o, 256);
    sink_client.subscribe(format!("jd/v1/dev/{}/ev/{evid}/c/+", phone.0), QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sink_events.poll().await? {
            break;
        }
    }
    let (done_tx, done) = tokio::sync::oneshot::channel::<Result<()>>();
    let sink_task = tokio::spawn(async move {
        let mut got = 0u64;
        let outcome = loop {
            match sink_events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    got += p.payload.len() as u64;
                    if got >= size {
                        break Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => break Err(crate::Error::Failed(format!("bare subscriber's connection: {e:?}"))),
            }
        };
        done_tx.send(outcome).ok();
    });

    let mut o = client_options(sut, format!("{}-relay-{evid}", phone.0), phone.0, phone.1);
    o.set_inflight(INFLIGHT);
    let (client, mut events) = AsyncClient::new(o, 256);
    let pump = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let start = Instant::now();
    let (c, f, dev, evid_s) = (client.clone(), std::fs::File::open(file)?, phone.0.to_owned(), evid.to_owned());
    let publisher = tokio::spawn(async move {
        for n in 0..size.div_ceil(CHUNK as u64) {
            let buf = read_chunk(&f, n, size)?;
            c.publish(format!("jd/v1/dev/{dev}/ev/{evid_s}/c/{n}"), QoS::AtLeastOnce, false, buf).await?;
        }
        Ok::<_, crate::Error>(())
    });
    let outcome = tokio::time::timeout(Duration::from_secs(3600), done).await;
    let secs = start.elapsed().as_secs_f64();
    publisher.await??;
    client.disconnect().await.ok();
    sink_client.disconnect().await.ok();
    pump.abort();
    sink_task.abort();
    match outcome {
        Ok(Ok(r)) => r.map(|()| secs),
        Ok(Err(_)) => bail!("the bare subscriber ended early"),
        Err(_) => bail!("the bare subscriber did not get every chunk within an hour"),
    }
}

/// Runs the benchmark and prints the report.
pub async fn run(args: &BenchArgs) -> Result<()> {
    let mib: u64 = std::env::var("JIANDU_BENCH_EVIDENCE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let size = mib * 1024 * 1024;
    let sut = SystemUnderTest::start(&args.db, "broker,ingest", &[])?;
    let dev = sut.cli(&["device", "add", "bench-phone"])?;
    let (dev, token) = (
        dev["device"].as_str().context("device add printed no id")?.to_owned(),
        dev["password"].as_str().context("device add printed no password")?.to_owned(),
    );
    let src = sut.dir.path().join("bench-source.bin");
    eprintln!("[bench] writing {mib} MiB of test data");
    let sha = make_file(&src, size)?;
    let (src_s, dst_s) =
        (src.to_string_lossy().into_owned(), sut.dir.path().join("bench-copy.bin").to_string_lossy().into_owned());

    let cp = measure("cp", args.repetitions, |_| {
        let (s, d) = (src_s.clone(), dst_s.clone());
        async move {
            std::fs::remove_file(&d).ok();
            let secs = time_command("sh", &["-c", &format!("cp '{s}' '{d}' && sync '{d}'")])?;
            Ok(mib as f64 / secs)
        }
    })
    .await?;
    std::fs::remove_file(&dst_s).ok();

    // Growth over the idle server before the first upload: memory kept after an upload (the
    // broker's log, allocator retention) counts against every later run too.
    let idle = sut.rss_bytes().unwrap_or(0) as f64;
    let rss = std::cell::RefCell::new(Vec::new());
    // CPU ms per MiB of the server and of this process (the phone), per repetition.
    let upload_cpu = std::cell::RefCell::new(Vec::new());
    let ours = measure("upload over MQTT", args.repetitions, |i| {
        let evid = format!("bench-{i}");
        let (sut, dev, token, src, sha) = (&sut, dev.clone(), token.clone(), src.clone(), sha.clone());
        let (rss, upload_cpu) = (&rss, &upload_cpu);
        async move {
            let cpu = CpuSpan::start(&[sut.child_id()]);
            let (secs, peak) = upload(sut, &dev, &token, &src, &sha, size, &evid).await?;
            let (server, phone) = cpu.used();
            upload_cpu.borrow_mut().push((server * 1000.0 / mib as f64, phone * 1000.0 / mib as f64));
            rss.borrow_mut().push((peak - idle).max(0.0) / MIB);
            Ok(mib as f64 / secs)
        }
    })
    .await?;

    // Reference: the transport alone, the same chunks to a bare subscriber of a broker-only
    // server (the ceiling any ingest behind this broker could reach on this machine).
    let relay_sut = SystemUnderTest::start(&args.db, "broker", &[])?;
    let relay_dev = relay_sut.cli(&["device", "add", "bench-relay-phone"])?;
    let relay_phone = (
        relay_dev["device"].as_str().context("device add printed no id")?.to_owned(),
        relay_dev["password"].as_str().context("device add printed no password")?.to_owned(),
    );
    let sink = relay_sut.cli(&["integration", "add", "bench-sink", "--subscribe", "jd/v1/dev/+/ev/#"])?;
    let sink = (
        sink["username"].as_str().context("integration add printed no username")?.to_owned(),
        sink["password"].as_str().context("integration add printed no password")?.to_owned(),
    );
    let relay_cpu = std::cell::RefCell::new(Vec::new());
    let relay = measure("bare relay of the chunks", args.repetitions, |i| {
        let (sut, phone, sink, src) = (&relay_sut, relay_phone.clone(), sink.clone(), src.clone());
        let relay_cpu = &relay_cpu;
        async move {
            let cpu = CpuSpan::start(&[sut.child_id()]);
            let secs =
                relay_upload(sut, (&phone.0, &phone.1), (&sink.0, &sink.1), &src, size, &format!("relay-{i}")).await?;
            let (server, clients) = cpu.used();
            relay_cpu.borrow_mut().push((server * 1000.0 / mib as f64, clients * 1000.0 / mib as f64));
            Ok(mib as f64 / secs)
        }
    })
    .await?;
    drop(relay_sut);

    let blob = sut.dir.path().join("evidence").join("evidence").join(&sha[..2]).join(&sha);
    let blob_s = blob.to_string_lossy().into_owned();
    let sha256sum = measure("sha256sum", args.repetitions, |_| {
        let b = blob_s.clone();
        async move { Ok(mib as f64 / time_command("sha256sum", &[&b])?) }
    })
    .await?;
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let (data_dir, db) = (sut.dir.path().to_string_lossy().into_owned(), sut.db.clone());
    let verify = measure("jiandu verify --deep", args.repetitions, |_| {
        let (exe, data_dir, db) = (exe.clone(), data_dir.clone(), db.clone());
        async move {
            let start = Instant::now();
            let out = Command::new(&exe)
                .args(["verify", "--deep"])
                .env("JIANDU_DATA_DIR", &data_dir)
                .env("JIANDU_DB", &db)
                .env("RUST_LOG", "warn")
                .output()?;
            if !out.status.success() {
                bail!("verify --deep failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(mib as f64 / start.elapsed().as_secs_f64())
        }
    })
    .await?;

    // The warm-up's peak is not a repetition (its memory still counts in the runs after it).
    let rss_runs: Vec<f64> = rss.into_inner().into_iter().skip(1).collect();
    // CPU per MiB of the repetitions (the warm-up's left out, as for the rates).
    let per_mib = |runs: Vec<(f64, f64)>| {
        let runs: Vec<(f64, f64)> = runs.into_iter().skip(1).collect();
        (Stat::of(runs.iter().map(|r| r.0).collect()), Stat::of(runs.iter().map(|r| r.1).collect()))
    };
    let (upload_server, upload_phone) = per_mib(upload_cpu.into_inner());
    let (relay_server, relay_clients) = per_mib(relay_cpu.into_inner());
    Report {
        bench: "evidence".into(),
        setup: json!({"size_mib": mib, "chunk_kib": CHUNK / 1024, "db": args.db, "disk": "the bench data dir"}),
        rows: vec![
            Row {
                metric: "upload over MQTT loopback".into(),
                unit: "MiB/s".into(),
                ours: ours.clone(),
                reference: Some(("cp (same bytes, same disk)".into(), cp.clone())),
                goal: Some("≥ 0.5 × cp".into()),
            },
            Row {
                metric: "embedded broker bare relay of the same chunks".into(),
                unit: "MiB/s".into(),
                ours: relay.clone(),
                reference: Some(("cp (same bytes, same disk)".into(), cp)),
                goal: None,
            },
            Row {
                metric: "upload over MQTT vs the bare relay".into(),
                unit: "MiB/s".into(),
                ours,
                reference: Some(("embedded broker bare relay".into(), relay)),
                goal: None,
            },
            Row {
                metric: "server CPU per MiB uploaded".into(),
                unit: "ms".into(),
                ours: upload_server,
                reference: Some(("broker-only server, bare relay".into(), relay_server)),
                goal: None,
            },
            Row {
                metric: "bench process CPU per MiB (phone; relay: phone + subscriber)".into(),
                unit: "ms".into(),
                ours: upload_phone,
                reference: Some(("bare relay".into(), relay_clients)),
                goal: None,
            },
            Row {
                metric: "server RSS growth over idle, peak per upload".into(),
                unit: "MiB".into(),
                ours: Stat::of(rss_runs),
                reference: None,
                goal: Some("< 64".into()),
            },
            Row {
                metric: "verify --deep".into(),
                unit: "MiB/s".into(),
                ours: verify,
                reference: Some(("sha256sum".into(), sha256sum)),
                goal: Some("≥ 0.8 × sha256sum".into()),
            },
        ],
    }
    .print(args);
    Ok(())
}
