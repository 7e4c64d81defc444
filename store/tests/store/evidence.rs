use bytes::Bytes;
use futures::StreamExt;
use jiandu_store::{
    Access, Blobs, Committed, PlatformKey, S3Settings, StoreError, UploadSpec, UploadState, blob_key, verify_receipt,
};
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    uploads_resume_then_record_once_with_a_signed_receipt,
    same_bytes_twice_make_two_records_and_two_ledger_entries,
    evidence_ids_are_not_shared_between_devices,
    lists_filter_and_page_newest_first,
    custody_log_records_every_view_and_download,
    an_edited_ledger_row_is_found,
);

fn spec(bytes: &[u8], chunk_size: i64) -> UploadSpec {
    UploadSpec {
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as i64,
        mime: "image/jpeg".into(),
        captured_at: 1_700_000_000_000,
        lat: Some(36.51),
        lon: Some(118.54),
        report_id: Some("r1".into()),
        chunk_size,
        chunks: (bytes.len() as i64 + chunk_size - 1) / chunk_size,
    }
}

fn key() -> (tempfile::TempDir, PlatformKey) {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = PlatformKey::load_or_create(&dir.path().join("platform.key")).unwrap();
    (dir, key)
}

async fn uploads_resume_then_record_once_with_a_signed_receipt(db: &TestDb) {
    let store = &db.store;
    let (_dir, key) = key();
    assert_eq!(store.platform_key(None).await.unwrap(), None);
    let info = store.platform_key_register(&key).await.unwrap();
    assert_eq!(info.public_key, key.public_hex());
    assert_eq!(store.platform_key_register(&key).await.unwrap(), info);

    assert_eq!(store.evidence_upload_state("e1").await.unwrap(), UploadState::Unknown);
    let s = spec(b"0123456789", 4);
    let up = store.evidence_upload_open("e1", "d1", &s, "/tmp/staging/e1").await.unwrap();
    assert_eq!(up.spec.chunks, 3);
    store.evidence_chunks_staged(&[("e1".into(), 2), ("e1".into(), 0), ("e1".into(), 2)]).await.unwrap();
    store.evidence_chunks_staged(&[("e1".into(), 0)]).await.unwrap();
    match store.evidence_upload_state("e1").await.unwrap() {
        UploadState::Open { upload, received } => {
            assert_eq!(upload.spec, s);
            assert_eq!(upload.device, "d1");
            assert_eq!(received, [0, 2]);
        }
        other => panic!("expected open, got {other:?}"),
    }
    assert_eq!(store.evidence_uploads().await.unwrap().len(), 1);

    let e = store.evidence_record(&up, &key).await.unwrap();
    assert_eq!((e.sha256.as_str(), e.size, e.ledger_seq), (s.sha256.as_str(), 10, 1));
    assert_eq!(e.report_id.as_deref(), Some("r1"));
    assert_eq!(e.lat, Some(36.51));
    verify_receipt(&key.public_hex(), &e.receipt_fields(), &e.sig).unwrap();
    assert_eq!(e.receipt()["status"], "stored");
    assert_eq!(e.receipt()["ledger_hash"], json!(e.ledger_hash));

    // Recording again (a crash after commit, a retry) changes nothing.
    assert_eq!(store.evidence_record(&up, &key).await.unwrap(), e);
    assert_eq!(store.evidence_upload_state("e1").await.unwrap(), UploadState::Stored(e.clone()));
    assert!(store.evidence_uploads().await.unwrap().is_empty());
    assert_eq!(store.ledger_head().await.unwrap().0, 1);
    let entry = &store.ledger_entries(0, 10).await.unwrap()[0];
    assert_eq!((entry.kind.as_str(), entry.actor.as_str(), entry.subject.as_str()), ("evidence.stored", "d1", "e1"));
    assert_eq!(entry.body["sha256"], json!(s.sha256));
    assert_eq!(entry.hash, e.ledger_hash);
    assert!(store.evidence_check(&e).await.unwrap().is_empty());

    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].kind.as_str(), events[0].r#type.as_str()), ("evidence", "evidence.stored"));
    assert_eq!(events[0].data["evid"], "e1");
    assert_eq!(events[0].data["ledger_seq"], 1);
}

async fn same_bytes_twice_make_two_records_and_two_ledger_entries(db: &TestDb) {
    let store = &db.store;
    let (_dir, key) = key();
    let s = spec(b"same bytes", 256);
    let a = store.evidence_upload_open("a", "d1", &s, "x").await.unwrap();
    let b = store.evidence_upload_open("b", "d2", &s, "y").await.unwrap();
    let ea = store.evidence_record(&a, &key).await.unwrap();
    let eb = store.evidence_record(&b, &key).await.unwrap();
    assert_eq!(ea.sha256, eb.sha256);
    assert_eq!((ea.ledger_seq, eb.ledger_seq), (1, 2));
    assert_ne!(ea.sig, eb.sig);
    assert_eq!(store.evidence_count().await.unwrap(), 2);
    assert!(store.ledger_verify(|_, _| {}).await.unwrap().is_empty());
}

async fn evidence_ids_are_not_shared_between_devices(db: &TestDb) {
    let store = &db.store;
    let (_dir, key) = key();
    let s = spec(b"abc", 2);
    let up = store.evidence_upload_open("e1", "d1", &s, "x").await.unwrap();
    let err = store.evidence_upload_open("e1", "d2", &s, "x").await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    store.evidence_record(&up, &key).await.unwrap();
    let err = store.evidence_upload_open("e1", "d1", &s, "x").await.unwrap_err();
    assert!(err.to_string().contains("taken"), "{err}");

    // A discarded upload frees its id and forgets its chunks.
    let up = store.evidence_upload_open("e2", "d1", &s, "x").await.unwrap();
    store.evidence_chunks_staged(&[("e2".into(), 1)]).await.unwrap();
    store.evidence_upload_discard(&up.evid).await.unwrap();
    assert_eq!(store.evidence_upload_state("e2").await.unwrap(), UploadState::Unknown);
    store.evidence_upload_open("e2", "d2", &s, "x").await.unwrap();
    match store.evidence_upload_state("e2").await.unwrap() {
        UploadState::Open { received, .. } => assert!(received.is_empty()),
        other => panic!("{other:?}"),
    }
}

async fn lists_filter_and_page_newest_first(db: &TestDb) {
    let store = &db.store;
    let (_dir, key) = key();
    for (i, (dev, report)) in [("d1", "r1"), ("d2", "r1"), ("d1", "r2"), ("d1", "r1")].into_iter().enumerate() {
        let mut s = spec(format!("item {i}").as_bytes(), 64);
        s.report_id = Some(report.into());
        let up = store.evidence_upload_open(&format!("e{i}"), dev, &s, "x").await.unwrap();
        store.evidence_record(&up, &key).await.unwrap();
    }
    let ids = |v: Vec<jiandu_store::Evidence>| v.into_iter().map(|e| e.evid).collect::<Vec<_>>();
    assert_eq!(ids(store.evidence_list(None, None, None, 10).await.unwrap()), ["e3", "e2", "e1", "e0"]);
    assert_eq!(ids(store.evidence_list(Some("r1"), None, None, 10).await.unwrap()), ["e3", "e1", "e0"]);
    assert_eq!(ids(store.evidence_list(Some("r1"), Some("d1"), None, 10).await.unwrap()), ["e3", "e0"]);
    assert_eq!(ids(store.evidence_list(None, Some("d1"), None, 2).await.unwrap()), ["e3", "e2"]);
    assert_eq!(ids(store.evidence_list(None, Some("d1"), Some("e2"), 2).await.unwrap()), ["e0"]);
    assert!(matches!(
        store.evidence_list(None, None, Some("nope"), 2).await.unwrap_err(),
        StoreError::InvalidInput { field: "after", .. }
    ));
    assert_eq!(ids(store.evidence_page("e1", 10).await.unwrap()), ["e2", "e3"]);
}

async fn custody_log_records_every_view_and_download(db: &TestDb) {
    let store = &db.store;
    let (_dir, key) = key();
    let up = store.evidence_upload_open("e1", "d1", &spec(b"video", 2), "x").await.unwrap();
    store.evidence_record(&up, &key).await.unwrap();
    store.evidence_access("e1", "alice", Access::Viewed, json!({})).await.unwrap();
    store.evidence_access("e1", "bob", Access::Downloaded, json!({"range": "bytes=0-1"})).await.unwrap();
    store.evidence_access("other", "bob", Access::Viewed, json!({})).await.unwrap();
    let log = store.evidence_custody("e1").await.unwrap();
    let summary: Vec<_> = log.iter().map(|e| (e.kind.as_str(), e.actor.as_str())).collect();
    assert_eq!(summary, [("evidence.stored", "d1"), ("evidence.viewed", "alice"), ("evidence.downloaded", "bob")]);
    assert_eq!(log[2].body["range"], "bytes=0-1");
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
}

async fn an_edited_ledger_row_is_found(db: &TestDb) {
    let store = &db.store;
    let (_dir, key) = key();
    let mut stored = Vec::new();
    for i in 0..3 {
        let up = store.evidence_upload_open(&format!("e{i}"), "d1", &spec(&[i as u8; 9], 4), "x").await.unwrap();
        stored.push(store.evidence_record(&up, &key).await.unwrap());
    }
    let forged = "f".repeat(64);
    sqlx::query("UPDATE ledger SET body = $1 WHERE seq = 2")
        .bind(format!(r#"{{"captured_at":1700000000000,"mime":"image/jpeg","sha256":"{forged}","size":9}}"#))
        .execute(store.pool())
        .await
        .unwrap();
    let breaks = store.ledger_verify(|_, _| {}).await.unwrap();
    assert_eq!(breaks.iter().map(|b| b.seq).collect::<Vec<_>>(), [2]);
    assert!(store.evidence_check(&stored[0]).await.unwrap().is_empty());
    let faults = store.evidence_check(&stored[1]).await.unwrap();
    assert_eq!(faults, ["sha256 differs from ledger entry 2"]);
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill(&mut v[..]);
    v
}

/// Write-once behaviour every backend must show.
async fn write_once(blobs: &Blobs, staging_dir: &std::path::Path) {
    // put_new: PutMode::Create refuses an existing key.
    let small = random_bytes(1000);
    let sha = hex::encode(Sha256::digest(&small));
    blobs.put_new(&blob_key(&sha), Bytes::from(small.clone())).await.unwrap();
    let err = blobs.put_new(&blob_key(&sha), Bytes::from_static(b"other bytes")).await.unwrap_err();
    assert!(matches!(err, StoreError::BlobExists { ref key } if *key == blob_key(&sha)), "{err}");
    assert_eq!(blobs.size(&sha).await.unwrap(), 1000);
    assert_eq!(blobs.rehash(&sha, |_| {}).await.unwrap(), (sha.clone(), 1000));

    // A staged file larger than one multipart part goes in once; the second commit finds it.
    let big = random_bytes(9 * 1024 * 1024 + 17);
    let sha = hex::encode(Sha256::digest(&big));
    let file = staging_dir.join("upload-1");
    std::fs::write(&file, &big).unwrap();
    assert_eq!(blobs.commit_staged(&file, &sha).await.unwrap(), Committed::Stored);
    let again = staging_dir.join("upload-2");
    std::fs::write(&again, &big).unwrap();
    assert_eq!(blobs.commit_staged(&again, &sha).await.unwrap(), Committed::AlreadyStored);
    let err = blobs.put_new(&blob_key(&sha), Bytes::from_static(b"replacement")).await.unwrap_err();
    assert!(matches!(err, StoreError::BlobExists { .. }), "{err}");
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = seen.clone();
    let (rehashed, size) = blobs
        .rehash(&sha, move |n| {
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    assert_eq!((rehashed.as_str(), size), (sha.as_str(), big.len() as u64));
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), big.len() as u64);

    let mut range = Vec::new();
    let mut stream = blobs.read_range(&sha, 100..5_000_100).await.unwrap();
    while let Some(chunk) = stream.next().await {
        range.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(range, big[100..5_000_100]);
    let missing = "0".repeat(64);
    assert!(matches!(blobs.size(&missing).await.unwrap_err(), StoreError::NotFound { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_blobs_are_write_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("evidence");
    let blobs = Blobs::open(&format!("file://{}", root.display()), &S3Settings::default()).unwrap();
    // Staging under the root: committed with a hard link.
    let staging = blobs.local_root().unwrap().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    write_once(&blobs, &staging).await;
    // Staging elsewhere: streamed into a staging key, then copied if not exists.
    let outside = tempfile::tempdir().unwrap();
    write_once(&blobs, outside.path()).await;
}

/// The moto S3 server started by `scripts/services.sh`; fails (never skips) without it.
pub fn test_s3() -> (String, S3Settings) {
    let endpoint = std::env::var("JIANDU_TEST_S3").unwrap_or_else(|_| {
        panic!("JIANDU_TEST_S3 is not set; start the test S3 server with: eval \"$(scripts/services.sh)\"")
    });
    let bucket = std::env::var("JIANDU_TEST_S3_BUCKET").unwrap_or_else(|_| "jiandu-test".into());
    let settings = S3Settings {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    };
    (format!("s3://{bucket}"), settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blobs_are_write_once() {
    let (url, settings) = test_s3();
    let blobs = Blobs::open(&url, &settings).unwrap();
    assert!(blobs.local_root().is_none());
    let staging = tempfile::tempdir().unwrap();
    write_once(&blobs, staging.path()).await;
}
