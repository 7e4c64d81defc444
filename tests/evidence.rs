//! Evidence end to end: a real `jiandu serve`, phones as rumqttc clients uploading chunked
//! photos and videos over TCP, receipts checked with the real CLI, the REST API reading the real
//! database and object store, and `jiandu verify --deep` catching tampering.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Db, TestApp, connect, until};
use rumqttc::{EventLoop, Packet, QoS};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A plausible capture time (2026-06-01).
const T0: i64 = 1_780_272_000_000;
const CHUNK: usize = 256 * 1024;

/// Deterministic pseudo-random bytes (xorshift), fast enough for 50 MB in a debug build.
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

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `0..n` shuffled, with every fifth index sent twice.
fn shuffled_with_duplicates(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let dups: Vec<usize> = order.iter().copied().filter(|k| k % 5 == 0).collect();
    order.extend(dups);
    order
}

type Phone = common::InboxPhone;

async fn phone(app: &TestApp, name: &str) -> Phone {
    Phone::start(app, name, |o| {
        o.set_inflight(64);
    })
    .await
}

fn meta(data: &[u8], mime: &str, chunk_size: usize) -> Value {
    json!({
        "sha256": sha(data), "size": data.len(), "mime": mime, "captured_at": T0,
        "lat": 36.51, "lon": 118.54, "report_id": "r-1",
        "chunk_size": chunk_size, "chunks": data.len().div_ceil(chunk_size),
    })
}

/// Publishes `meta`, the chunks in `order`, then `meta` again (asking what is still missing),
/// from a background task (so the event loop keeps being polled here).
fn send(
    p: &Phone,
    evid: &str,
    meta: &Value,
    data: &[u8],
    chunk_size: usize,
    order: Vec<usize>,
) -> tokio::task::JoinHandle<()> {
    let (client, dev, evid, meta, data) =
        (p.client.clone(), p.id.clone(), evid.to_owned(), meta.to_string(), data.to_vec());
    tokio::spawn(async move {
        let meta_topic = format!("jd/v1/dev/{dev}/ev/{evid}/meta");
        client.publish(&meta_topic, QoS::AtLeastOnce, false, meta.clone()).await.unwrap();
        for n in order {
            let end = ((n + 1) * chunk_size).min(data.len());
            let chunk = data[(n * chunk_size).min(end)..end].to_vec();
            client.publish(format!("jd/v1/dev/{dev}/ev/{evid}/c/{n}"), QoS::AtLeastOnce, false, chunk).await.unwrap();
        }
        client.publish(&meta_topic, QoS::AtLeastOnce, false, meta).await.unwrap();
    })
}

/// Uploads as a phone following the protocol does: meta, chunks, meta again; re-sends whatever
/// the answering `partial` receipt lists (a broker may drop QoS 1 messages it already
/// acknowledged when a subscriber lags), until the item is `stored` or `rejected`. Each `send`
/// yields two `partial` receipts (one per meta), the second one after every chunk before it
/// was handled, so no timing is involved.
async fn deliver(p: &mut Phone, evid: &str, meta: &Value, data: &[u8], chunk_size: usize, order: Vec<usize>) -> Value {
    let mut task = send(p, evid, meta, data, chunk_size, order);
    let mut partials = 0;
    for _ in 0..50 {
        let r = receipt(&mut p.events, evid, &["stored", "rejected", "partial"]).await;
        if r["status"] != "partial" {
            task.await.unwrap();
            return r;
        }
        partials += 1;
        if partials == 2 {
            task.await.unwrap();
            let missing: Vec<usize> =
                r["missing"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            partials = 0;
            if missing.is_empty() {
                return receipt(&mut p.events, evid, &["stored", "rejected"]).await;
            }
            task = send(p, evid, meta, data, chunk_size, missing);
        }
    }
    panic!("upload of {evid} did not finish after 50 rounds")
}

/// Waits for a receipt about `evid` whose status is in `statuses` (the `partial` receipts that
/// answer every meta are skipped unless asked for).
async fn receipt(events: &mut EventLoop, evid: &str, statuses: &[&str]) -> Value {
    let wait = async {
        loop {
            if let Ok(rumqttc::Event::Incoming(Packet::Publish(p))) = events.poll().await
                && p.topic.ends_with("/inbox/receipt")
            {
                let v: Value = serde_json::from_slice(&p.payload).unwrap();
                if v["evid"] == evid && statuses.iter().any(|s| v["status"] == *s) {
                    return v;
                }
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(120), wait).await {
        Ok(v) => v,
        Err(_) => {
            let logs: Vec<PathBuf> =
                walk(&std::env::temp_dir()).into_iter().filter(|p| p.ends_with("serve.log")).collect();
            for l in logs {
                eprintln!(
                    "==== {}\n{}",
                    l.display(),
                    std::fs::read_to_string(&l)
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("rror"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            panic!("no receipt arrived")
        }
    }
}

async fn upload(p: &mut Phone, evid: &str, data: &[u8], mime: &str, order: Vec<usize>) -> Value {
    deliver(p, evid, &meta(data, mime, CHUNK), data, CHUNK, order).await
}

fn blob_path(app: &TestApp, sha: &str) -> PathBuf {
    app.dir.path().join("evidence").join("evidence").join(&sha[..2]).join(sha)
}

async fn http_get(app: &TestApp, path: &str, range: Option<&str>) -> reqwest::Response {
    let mut req =
        reqwest::Client::new().get(format!("{}{path}", app.http)).basic_auth(&app.admin.0, Some(&app.admin.1));
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    req.send().await.unwrap()
}

fn verify_receipt_cli(app: &TestApp, receipt: &Value) -> Result<Value, String> {
    let file = app.dir.path().join(format!("receipt-{}.json", ulid_like()));
    std::fs::write(&file, receipt.to_string()).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["receipt", "verify", file.to_str().unwrap()])
        .env("JIANDU_DATA_DIR", app.dir.path())
        .env("JIANDU_DB", &app.db)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ulid_like() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

async fn photo_and_video_arrive_in_shuffled_duplicated_chunks(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut p = phone(&app, "inspector").await;
    let (watcher, wtoken) = app.add_integration("watch", &["jd/v1/events/#", "jd/v1/platform/key"], &[]);
    let (wc, mut we) = connect(app.options(&watcher, Some((&watcher, &wtoken)))).await.unwrap();
    wc.subscribe("jd/v1/events/evidence", QoS::AtLeastOnce).await.unwrap();
    wc.subscribe("jd/v1/platform/key", QoS::AtLeastOnce).await.unwrap();
    let retained_key = until(&mut we, |p| match p {
        Packet::Publish(p) if p.topic == "jd/v1/platform/key" => serde_json::from_slice::<Value>(&p.payload).ok(),
        _ => None,
    })
    .await;

    let photo = bytes(300_000, 1);
    let video = bytes(50 * 1024 * 1024 + 12_345, 2);
    let r_photo = upload(&mut p, "01PHOTO", &photo, "image/jpeg", shuffled_with_duplicates(2, 7)).await;
    assert_eq!(r_photo["status"], "stored", "{r_photo}");
    let r_video =
        upload(&mut p, "01VIDEO", &video, "video/mp4", shuffled_with_duplicates(video.len().div_ceil(CHUNK), 11)).await;
    assert_eq!(r_video["status"], "stored", "{r_video}\n{}", app.log());
    assert_eq!((r_photo["sha256"].as_str().unwrap(), r_photo["size"].as_u64()), (sha(&photo).as_str(), Some(300_000)));
    assert_eq!(r_video["sha256"], sha(&video));
    assert_eq!(r_video["ledger_seq"].as_i64().unwrap(), r_photo["ledger_seq"].as_i64().unwrap() + 1);

    // The stored blobs are exactly the bytes sent.
    assert_eq!(std::fs::read(blob_path(&app, &sha(&video))).unwrap(), video);
    assert_eq!(std::fs::read(blob_path(&app, &sha(&photo))).unwrap(), photo);

    // Receipts verify offline; an altered one does not.
    let ok = verify_receipt_cli(&app, &r_video).unwrap();
    assert_eq!(ok["valid"], true);
    verify_receipt_cli(&app, &r_photo).unwrap();
    let mut forged = r_video.clone();
    forged["size"] = json!(1);
    assert!(verify_receipt_cli(&app, &forged).unwrap_err().contains("NOT valid"));

    // The public key from REST and the retained topic is the one that signed.
    let key = app.get_json("/api/v1/ledger/key").await;
    assert_eq!(key["alg"], "Ed25519");
    assert_eq!(key, retained_key);
    let key_file = app.dir.path().join("key.json");
    std::fs::write(&key_file, key.to_string()).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["receipt", "verify", "--public-key", key_file.to_str().unwrap(), "/dev/stdin"])
        .env("JIANDU_DATA_DIR", "/nonexistent")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(r_photo.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "offline verify with --public-key failed");

    // The same bytes again: stored once, but a second record and ledger entry.
    let r_again = upload(&mut p, "01PHOTO-AGAIN", &photo, "image/jpeg", vec![1, 0]).await;
    assert_eq!(r_again["status"], "stored");
    assert_ne!(r_again["ledger_seq"], r_photo["ledger_seq"]);
    let stored: Vec<_> = std::fs::read_dir(blob_path(&app, &sha(&photo)).parent().unwrap()).unwrap().collect();
    assert_eq!(stored.len(), 1);

    // Re-sending meta for a stored item answers its receipt again.
    p.client
        .publish(
            format!("jd/v1/dev/{}/ev/01PHOTO/meta", p.id),
            QoS::AtLeastOnce,
            false,
            meta(&photo, "image/jpeg", CHUNK).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(receipt(&mut p.events, "01PHOTO", &["stored"]).await, r_photo);

    // Events: one evidence.stored per item.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let v = until(&mut we, |p| match p {
            Packet::Publish(p) if p.topic == "jd/v1/events/evidence" => {
                serde_json::from_slice::<Value>(&p.payload).ok()
            }
            _ => None,
        })
        .await;
        assert_eq!(v["type"], "evidence.stored");
        if !seen.contains(&v["data"]["evid"]) {
            seen.push(v["data"]["evid"].clone());
        }
    }

    // REST: list, detail with receipt and custody, ranged content with the right type.
    let list = app.get_json(&format!("/api/v1/evidence?device={}", p.id)).await;
    let ids: Vec<&str> = list["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["01PHOTO-AGAIN", "01VIDEO", "01PHOTO"]);
    assert_eq!(app.get_json("/api/v1/evidence?report=r-1&limit=1").await["next"], "01PHOTO-AGAIN");
    let resp = http_get(&app, "/api/v1/evidence/01VIDEO/content", Some("bytes=1000-1999")).await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert_eq!(resp.headers()["content-range"], format!("bytes 1000-1999/{}", video.len()).as_str());
    assert_eq!(resp.bytes().await.unwrap(), video[1000..2000]);
    let resp = http_get(&app, "/api/v1/evidence/01PHOTO/content", None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert_eq!(resp.bytes().await.unwrap(), photo);
    let resp = http_get(&app, "/api/v1/evidence/01PHOTO/content", Some("bytes=400000-")).await;
    assert_eq!(resp.status(), 416);
    let detail = app.get_json("/api/v1/evidence/01VIDEO").await;
    assert_eq!(detail["receipt"], r_video);
    assert_eq!(detail["evidence"]["mime"], "video/mp4");
    let custody: Vec<(String, String)> = detail["custody"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap().to_owned(), c["actor"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        custody,
        [
            ("evidence.stored".into(), p.id.clone()),
            ("evidence.downloaded".into(), app.admin.0.clone()),
            ("evidence.viewed".into(), app.admin.0.clone()),
        ]
    );
    assert_eq!(detail["custody"][1]["detail"]["range"], "bytes=1000-1999");
    let missing = http_get(&app, "/api/v1/evidence/nope", None).await;
    assert_eq!(missing.status(), 404);

    let v = app.cli(&["verify", "--deep"]);
    assert_eq!((v["ok"].as_bool(), v["evidence"].as_i64(), v["blobs"].as_i64()), (Some(true), Some(3), Some(2)));
    assert_eq!(v["bytes_hashed"].as_u64(), Some((photo.len() + video.len()) as u64));
    assert!(app.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn photo_and_video_arrive_in_shuffled_duplicated_chunks_sqlite() {
    photo_and_video_arrive_in_shuffled_duplicated_chunks(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn photo_and_video_arrive_in_shuffled_duplicated_chunks_postgres() {
    photo_and_video_arrive_in_shuffled_duplicated_chunks(Db::Postgres).await;
}

async fn an_upload_resumes_after_disconnect_and_kill9(db: Db, toml: &str) {
    let mut app = TestApp::spawn_with_config(db, toml).await;
    let mut p = phone(&app, "inspector").await;
    let data = bytes(20 * CHUNK + 999, 3);
    let n = data.len().div_ceil(CHUNK);
    let m = meta(&data, "video/mp4", CHUNK);
    // The first half (even chunks), then meta again: its partial receipt says what is staged.
    let half: Vec<usize> = (0..n).step_by(2).collect();
    let task = send(&p, "01RESUME", &m, &data, CHUNK, half.clone());
    receipt(&mut p.events, "01RESUME", &["partial"]).await;
    let before = receipt(&mut p.events, "01RESUME", &["partial"]).await;
    task.await.unwrap();
    let before_missing: Vec<usize> =
        before["missing"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert!((1..n).step_by(2).all(|k| before_missing.contains(&k)), "{before}");
    assert!(before_missing.len() < n, "some chunks were staged: {before}");
    let (id, token) = (p.id.clone(), p.token.clone());
    drop(p);

    app.kill9();
    app.restart();

    let mut p = reconnect(&app, &id, &token).await;
    p.client.publish(format!("jd/v1/dev/{id}/ev/01RESUME/meta"), QoS::AtLeastOnce, false, m.to_string()).await.unwrap();
    let partial = receipt(&mut p.events, "01RESUME", &["partial"]).await;
    let missing: Vec<usize> =
        partial["missing"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(missing, before_missing, "what was staged before kill -9 is still staged: {partial}");

    let stored = deliver(&mut p, "01RESUME", &m, &data, CHUNK, missing).await;
    assert_eq!(stored["status"], "stored", "{stored}");
    assert_eq!(stored["sha256"], sha(&data));
    let list = app.get_json("/api/v1/evidence").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(std::fs::read(blob_path(&app, &sha(&data))).unwrap(), data);
    verify_receipt_cli(&app, &stored).unwrap();
    assert!(app.stop().success());
}

/// Logs in again as an existing device (after a restart of the platform).
async fn reconnect(app: &TestApp, id: &str, token: &str) -> Phone {
    let mut o = app.options(id, Some((id, token)));
    o.set_inflight(64);
    let (client, mut events) = connect(o).await.unwrap();
    client.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    Phone { id: id.to_owned(), token: token.to_owned(), client, events }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_resumes_after_disconnect_and_kill9_sqlite() {
    an_upload_resumes_after_disconnect_and_kill9(Db::Sqlite, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_resumes_after_disconnect_and_kill9_postgres() {
    an_upload_resumes_after_disconnect_and_kill9(Db::Postgres, "").await;
}

/// Shared staging (chunk bytes in the database, issue 17): what was acked survives kill -9 in
/// the database itself, and the upload is assembled from there into the same blob and receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_staged_in_the_database_resumes_after_kill9_sqlite() {
    an_upload_resumes_after_disconnect_and_kill9(Db::Sqlite, "[evidence]\nstaging = \"database\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_staged_in_the_database_resumes_after_kill9_postgres() {
    an_upload_resumes_after_disconnect_and_kill9(Db::Postgres, "[evidence]\nstaging = \"database\"\n").await;
}

async fn expect_rejected(p: &mut Phone, evid: &str, meta: &Value, chunks: Vec<(usize, Vec<u8>)>) -> String {
    let (client, dev, evid_s, meta_s) = (p.client.clone(), p.id.clone(), evid.to_owned(), meta.to_string());
    let task = tokio::spawn(async move {
        client
            .publish(format!("jd/v1/dev/{dev}/ev/{evid_s}/meta"), QoS::AtLeastOnce, false, meta_s.clone())
            .await
            .unwrap();
        for (n, c) in chunks {
            client.publish(format!("jd/v1/dev/{dev}/ev/{evid_s}/c/{n}"), QoS::AtLeastOnce, false, c).await.unwrap();
        }
    });
    let r = receipt(&mut p.events, evid, &["stored", "rejected"]).await;
    task.await.unwrap();
    assert_eq!(r["status"], "rejected", "{r}");
    r["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_uploads_get_precise_rejections_and_nothing_is_stored() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut p = phone(&app, "inspector").await;
    let data = bytes(1000, 4);
    // The ledger before any upload (the admin's creation is an entry).
    let before = app.cli(&["verify"])["ledger_entries"].as_i64();

    // Wrong SHA-256: every chunk arrives, the bytes do not match.
    let mut m = meta(&data, "image/jpeg", 256);
    m["sha256"] = json!("0".repeat(64));
    let chunks: Vec<(usize, Vec<u8>)> =
        (0..4).map(|n| (n, data[n * 256..((n + 1) * 256).min(1000)].to_vec())).collect();
    let e = expect_rejected(&mut p, "e-sha", &m, chunks.clone()).await;
    assert_eq!(
        e,
        format!(
            "meta.sha256: the received bytes hash to {}, not the announced {}; nothing was stored",
            sha(&data),
            "0".repeat(64)
        )
    );

    // Wrong size: the last chunk is longer than meta's size allows.
    let mut long_last = chunks.clone();
    long_last[3].1 = vec![7; 256];
    let e = expect_rejected(&mut p, "e-size", &meta(&data, "image/jpeg", 256), long_last).await;
    assert_eq!(
        e,
        "chunk[3]: is 256 bytes, expected 232 (size 1000, chunk_size 256, 4 chunks); nothing of this upload was kept"
    );
    let mut m = meta(&data, "image/jpeg", 256);
    m["chunks"] = json!(5);
    let e = expect_rejected(&mut p, "e-chunks", &m, vec![]).await;
    assert_eq!(e, "meta.chunks: must be ceil(size / chunk_size) = ceil(1000 / 256) = 4, got 5");

    // Chunk index out of range.
    let e = expect_rejected(
        &mut p,
        "e-index",
        &meta(&data, "image/jpeg", 256),
        vec![(0, chunks[0].1.clone()), (4, vec![1; 10])],
    )
    .await;
    assert_eq!(e, "chunk[4]: index out of range; meta declares 4 chunks (0..=3); nothing of this upload was kept");

    // A chunk larger than allowed, and a chunk_size above the 256 KiB limit.
    let big = bytes(CHUNK * 2, 5);
    let e = expect_rejected(&mut p, "e-big", &meta(&big, "video/mp4", CHUNK), vec![(0, vec![0; CHUNK + 1])]).await;
    assert_eq!(
        e,
        "chunk[0]: is 262145 bytes, expected 262144 (size 524288, chunk_size 262144, 2 chunks); nothing of this upload was kept"
    );
    let e = expect_rejected(&mut p, "e-chunk-size", &meta(&big, "video/mp4", CHUNK * 2), vec![]).await;
    assert!(e.starts_with("meta.chunk_size: must be within 1..=262144"), "{e}");

    // Larger than the largest item (2 GiB by default).
    let mut m = meta(&data, "video/mp4", CHUNK);
    let size: u64 = 3 << 30;
    m["size"] = json!(size);
    m["chunks"] = json!(size.div_ceil(CHUNK as u64));
    let e = expect_rejected(&mut p, "e-huge", &m, vec![]).await;
    assert_eq!(e, format!("meta.size: larger than the largest item accepted (2147483648 bytes), got {size}"));

    // Chunks without meta; a meta that is not JSON.
    let (client, dev) = (p.client.clone(), p.id.clone());
    client.publish(format!("jd/v1/dev/{dev}/ev/e-none/c/0"), QoS::AtLeastOnce, false, vec![1u8; 5]).await.unwrap();
    let r = receipt(&mut p.events, "e-none", &["rejected"]).await;
    assert_eq!(r["error"], "chunk[0]: no upload of evidence e-none is open; publish meta first");
    client.publish(format!("jd/v1/dev/{dev}/ev/e-json/meta"), QoS::AtLeastOnce, false, "{nope").await.unwrap();
    let r = receipt(&mut p.events, "e-json", &["rejected"]).await;
    assert!(r["error"].as_str().unwrap().starts_with("meta"), "{r}");

    // Nothing half-stored: no evidence, no ledger entry, no blob, no staging file.
    assert!(app.get_json("/api/v1/evidence").await["items"].as_array().unwrap().is_empty());
    let root = app.dir.path().join("evidence");
    let files: Vec<PathBuf> = walk(&root);
    assert!(files.is_empty(), "left behind: {files:?}");
    let v = app.cli(&["verify", "--deep"]);
    assert_eq!((v["ledger_entries"].as_i64(), v["evidence"].as_i64()), (before, Some(0)), "no ledger entry added");

    // A rejected id is free again: sent properly, it is stored.
    let r = upload(&mut p, "e-sha", &data, "image/jpeg", vec![0]).await;
    assert_eq!(r["status"], "stored", "{r}");
    assert!(app.stop().success());
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_deep_names_exactly_the_flipped_blob_or_the_edited_ledger_row() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut p = phone(&app, "inspector").await;
    let a = bytes(700_000, 8);
    let b = bytes(90_000, 9);
    assert_eq!(upload(&mut p, "e-a", &a, "image/jpeg", vec![2, 0, 1]).await["status"], "stored");
    let rb = upload(&mut p, "e-b", &b, "image/png", vec![0]).await;
    assert_eq!(rb["status"], "stored");
    assert_eq!(app.cli(&["verify", "--deep"])["ok"], true);

    // Flip one byte of a's blob.
    let path = blob_path(&app, &sha(&a));
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    assert!(perms.readonly(), "stored blobs are read-only");
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    let mut content = std::fs::read(&path).unwrap();
    content[123_456] ^= 0x01;
    std::fs::write(&path, &content).unwrap();
    let err = common::cli_err(app.dir.path(), &app.db, &["verify", "--deep"]);
    let broken: Vec<&str> = err.lines().filter(|l| l.starts_with("BROKEN")).collect();
    assert_eq!(broken.len(), 1, "{err}");
    assert!(
        broken[0].starts_with(&format!(
            "BROKEN blob evidence/{}/{} (evidence e-a): content hashes to ",
            &sha(&a)[..2],
            sha(&a)
        )),
        "{err}"
    );
    // Without --deep the size still matches: the flip needs the re-hash to be found.
    assert_eq!(app.cli(&["verify"])["ok"], true);
    content[123_456] ^= 0x01;
    std::fs::write(&path, &content).unwrap();
    assert_eq!(app.cli(&["verify", "--deep"])["ok"], true);

    // Edit b's ledger row in the database.
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&app.db).await.unwrap();
    let seq = rb["ledger_seq"].as_i64().unwrap();
    sqlx::query("UPDATE ledger SET actor = 'someone-else' WHERE seq = ?").bind(seq).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let err = common::cli_err(app.dir.path(), &app.db, &["verify", "--deep"]);
    let broken: Vec<&str> = err.lines().filter(|l| l.starts_with("BROKEN")).collect();
    assert_eq!(
        broken,
        [format!("BROKEN ledger entry {seq}: content does not match its hash (entry altered)").as_str()],
        "{err}"
    );
    assert!(app.stop().success());
}
