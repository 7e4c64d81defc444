use jiandu_store::{Backend, Store, StoreError};
use sqlx::Row;

use crate::helpers::TestDb;
use crate::on_both;

on_both!(dollar_placeholders_work, schema_is_migrated_and_reopening_is_harmless, backend_matches_the_url,);

async fn dollar_placeholders_work(db: &TestDb) {
    // `$N` is positional on both databases, may repeat, and need not appear in order.
    let row = sqlx::query("SELECT $2 AS a, $1 AS b, $2 AS c")
        .bind("first")
        .bind("second")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let (a, b, c): (String, String, String) = (row.get("a"), row.get("b"), row.get("c"));
    assert_eq!((a.as_str(), b.as_str(), c.as_str()), ("second", "first", "second"));

    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE created_at > $1")
        .bind(0i64)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

async fn schema_is_migrated_and_reopening_is_harmless(db: &TestDb) {
    let (seq, hash) = db.store.ledger_head().await.unwrap();
    assert_eq!(seq, 0);
    assert_eq!(hash, "0".repeat(64));
    db.store.create_device("phone", None).await.unwrap();

    // A second store on the same database (another process, or a restart) finds the schema
    // in place and the data intact.
    let again = Store::connect(&db.url).await.unwrap();
    assert_eq!(again.list_devices().await.unwrap().len(), 1);
    let migrations: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations").fetch_one(again.pool()).await.unwrap();
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap().count();
    assert_eq!(migrations, shipped as i64, "every shipped migration applied once");
    again.close().await;

    // The schema refuses what the code never writes.
    let bad_role =
        sqlx::query("INSERT INTO users (id, name, role, password_hash, created_at) VALUES ('u1', 'x', 'king', 'h', 0)")
            .execute(db.store.pool())
            .await;
    assert!(bad_role.is_err());
    let second_head =
        sqlx::query("INSERT INTO ledger_head (id, seq, hash) VALUES (2, 0, 'x')").execute(db.store.pool()).await;
    assert!(second_head.is_err());
}

async fn backend_matches_the_url(db: &TestDb) {
    let expected = if db.url.starts_with("sqlite") { Backend::Sqlite } else { Backend::Postgres };
    assert_eq!(db.store.backend(), expected);
}

#[tokio::test]
async fn sqlite_connections_use_wal_normal_sync_busy_timeout_and_foreign_keys() {
    let db = TestDb::sqlite().await;
    // Check several connections of the pool, not only the first.
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(db.store.pool().acquire().await.unwrap());
    }
    for conn in &mut conns {
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(journal, "wal");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(synchronous, 1, "synchronous=NORMAL");
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(busy, 5000);
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(fk, 1);
    }
    drop(conns);
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_file_and_directories_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/sub/jiandu.db");
    let store = Store::connect(&format!("sqlite:{}", path.display())).await.unwrap();
    assert!(path.is_file());
    assert_eq!(store.backend(), Backend::Sqlite);
    store.close().await;
}

#[tokio::test]
async fn unsupported_urls_are_refused_without_echoing_secrets() {
    let err = Store::connect("mysql://root:hunter2@db/jiandu").await.unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("mysql") && !message.contains("hunter2"), "{message}");
}
