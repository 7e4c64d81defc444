use std::collections::BTreeSet;

use jiandu_store::{NewLedgerEntry, Store, canonical_json};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    entries_chain_by_the_documented_recipe,
    entries_page_in_ascending_order,
    concurrent_appends_stay_contiguous,
    appends_from_two_processes_interleave_safely,
    tampering_is_reported_at_the_altered_entry,
    missing_entries_are_reported,
);

fn entry(n: usize) -> NewLedgerEntry {
    NewLedgerEntry {
        kind: "evidence.stored".into(),
        actor: format!("d{n:012}"),
        subject: format!("ev-{n}"),
        body: json!({"size": n, "sha256": "ab".repeat(32), "note": "现场 \"quoted\"\n"}),
    }
}

async fn entries_chain_by_the_documented_recipe(db: &TestDb) {
    let store = &db.store;
    let first = store.ledger_append(entry(1)).await.unwrap();
    let second = store.ledger_append(entry(2)).await.unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(first.prev_hash, "0".repeat(64));
    assert_eq!(second.seq, 2);
    assert_eq!(second.prev_hash, first.hash);

    // Recompute as an outside verifier would, from what ledger_entries returns.
    for e in store.ledger_entries(0, 10).await.unwrap() {
        let canonical = canonical_json(&json!({
            "seq": e.seq, "ts": e.ts, "kind": e.kind, "actor": e.actor,
            "subject": e.subject, "body": e.body,
        }));
        assert!(canonical.starts_with(r#"{"actor":"#), "{canonical}");
        let hash = hex::encode(Sha256::digest(format!("{}{canonical}", e.prev_hash)));
        assert_eq!(hash, e.hash);
    }
    assert_eq!(store.ledger_head().await.unwrap(), (2, second.hash.clone()));
    assert!(store.ledger_verify(|_, _| {}).await.unwrap().is_empty());
}

async fn entries_page_in_ascending_order(db: &TestDb) {
    let store = &db.store;
    for n in 1..=7 {
        store.ledger_append(entry(n)).await.unwrap();
    }
    let page = store.ledger_entries(2, 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(page[0], store.ledger_entries(2, 1).await.unwrap()[0]);
    assert_eq!(page[0].body, entry(3).body);
    assert!(store.ledger_entries(7, 10).await.unwrap().is_empty());
    assert!(store.ledger_entries(0, 0).await.unwrap().is_empty());
}

/// Runs `tasks` × `each` appends spread over the given stores, all at once.
async fn append_concurrently(stores: &[Store], tasks: usize, each: usize) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = stores[t % stores.len()].clone();
        handles.push(tokio::spawn(async move {
            for i in 0..each {
                store.ledger_append(entry(t * 1000 + i)).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

async fn assert_contiguous(store: &Store, count: i64) {
    let entries = store.ledger_entries(0, 10_000).await.unwrap();
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=count).collect::<Vec<_>>());
    let subjects: BTreeSet<_> = entries.iter().map(|e| e.subject.clone()).collect();
    assert_eq!(subjects.len() as i64, count, "every append is stored once");
    let mut calls = Vec::new();
    let breaks = store.ledger_verify(|done, total| calls.push((done, total))).await.unwrap();
    assert!(breaks.is_empty(), "{breaks:?}");
    assert_eq!(calls.last(), Some(&(count, count)));
}

async fn concurrent_appends_stay_contiguous(db: &TestDb) {
    append_concurrently(std::slice::from_ref(&db.store), 8, 25).await;
    assert_contiguous(&db.store, 200).await;
}

async fn appends_from_two_processes_interleave_safely(db: &TestDb) {
    // A second pool on the same database behaves like a second process.
    let other = Store::connect(&db.url).await.unwrap();
    append_concurrently(&[db.store.clone(), other.clone()], 6, 20).await;
    other.close().await;
    assert_contiguous(&db.store, 120).await;
}

async fn tampering_is_reported_at_the_altered_entry(db: &TestDb) {
    let store = &db.store;
    // More than one verification page (1000 entries).
    for n in 1..=1010 {
        store.ledger_append(entry(n)).await.unwrap();
    }
    for seq in [9i64, 1005] {
        sqlx::query("UPDATE ledger SET body = $1 WHERE seq = $2")
            .bind(r#"{"note":"nothing happened"}"#)
            .bind(seq)
            .execute(store.pool())
            .await
            .unwrap();
    }
    let mut pages = Vec::new();
    let breaks = store.ledger_verify(|done, total| pages.push((done, total))).await.unwrap();
    assert_eq!(breaks.iter().map(|b| b.seq).collect::<Vec<_>>(), [9, 1005], "{breaks:?}");
    assert!(breaks[0].reason.contains("altered"), "{}", breaks[0].reason);
    assert_eq!(pages.first(), Some(&(1000, 1010)));
    assert_eq!(pages.last(), Some(&(1010, 1010)));

    // Re-hashing the altered entry moves the break to the next link.
    sqlx::query("UPDATE ledger SET hash = $1 WHERE seq = $2")
        .bind("f".repeat(64))
        .bind(9i64)
        .execute(store.pool())
        .await
        .unwrap();
    let seqs: Vec<i64> = store.ledger_verify(|_, _| {}).await.unwrap().iter().map(|b| b.seq).collect();
    assert_eq!(seqs, [9, 10, 1005]);

    // A body that is no longer JSON is a break, not an error.
    sqlx::query("UPDATE ledger SET body = $1 WHERE seq = $2")
        .bind("{not json")
        .bind(3i64)
        .execute(store.pool())
        .await
        .unwrap();
    let breaks = store.ledger_verify(|_, _| {}).await.unwrap();
    assert_eq!(breaks.iter().map(|b| b.seq).collect::<Vec<_>>(), [3, 9, 10, 1005]);
}

async fn missing_entries_are_reported(db: &TestDb) {
    let store = &db.store;
    for n in 1..=6 {
        store.ledger_append(entry(n)).await.unwrap();
    }
    sqlx::query("DELETE FROM ledger WHERE seq IN (3, 6)").execute(store.pool()).await.unwrap();
    let breaks = store.ledger_verify(|_, _| {}).await.unwrap();
    assert_eq!(breaks.iter().map(|b| b.seq).collect::<Vec<_>>(), [3, 6], "{breaks:?}");
}
