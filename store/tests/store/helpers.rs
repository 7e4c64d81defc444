//! Fresh databases for tests: a SQLite file in a temp dir, or a new PostgreSQL database on the
//! server named by `JIANDU_TEST_POSTGRES` (started by `scripts/services.sh`).

use jiandu_store::Store;
use rand::Rng;
use sqlx::{AnyConnection, Connection, Executor};

/// The server used when `JIANDU_TEST_POSTGRES` is not set.
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A migrated, empty store of one backend and the URL it was opened with.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

/// Runs each listed `async fn name(db: &TestDb)` once on SQLite and once on PostgreSQL, as the
/// tests `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = $crate::helpers::TestDb::sqlite().await;
                super::$name(&db).await;
                db.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let db = $crate::helpers::TestDb::postgres().await;
                super::$name(&db).await;
                db.cleanup().await;
            }
        }
    )*};
}

fn random_suffix() -> String {
    let mut rng = rand::rng();
    (0..12).map(|_| (b'a' + rng.random_range(0..26u8)) as char).collect()
}

impl TestDb {
    /// A store on a new SQLite file (the file does not exist beforehand).
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("jiandu.db").display());
        let store = Store::connect(&url).await.expect("open SQLite store");
        TestDb { store, url, cleanup: Cleanup::Sqlite(dir) }
    }

    /// A store on a new database `jd_test_<random>` on the test PostgreSQL server. Fails the
    /// test, never skips it, when the server cannot be reached.
    pub async fn postgres() -> TestDb {
        sqlx::any::install_default_drivers();
        let admin_url = std::env::var("JIANDU_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned());
        let mut admin = AnyConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {admin_url}: {e}\n\
                 Start it with:  eval \"$(scripts/services.sh)\"   (from the workspace root)\n\
                 or point JIANDU_TEST_POSTGRES at a server that trusts user postgres."
            )
        });
        let name = format!("jd_test_{}", random_suffix());
        admin.execute(sqlx::raw_sql(&format!("CREATE DATABASE {name}"))).await.expect("create test database");
        admin.close().await.ok();
        let url = database_url(&admin_url, &name);
        let store = Store::connect(&url).await.expect("open PostgreSQL store");
        TestDb { store, url, cleanup: Cleanup::Postgres { admin_url, name } }
    }

    /// Closes the store and removes its database.
    pub async fn cleanup(self) {
        self.store.close().await;
        match self.cleanup {
            Cleanup::Sqlite(dir) => drop(dir),
            Cleanup::Postgres { admin_url, name } => {
                let mut admin = AnyConnection::connect(&admin_url).await.expect("reconnect to the test PostgreSQL");
                admin
                    .execute(sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .await
                    .expect("drop test database");
                admin.close().await.ok();
            }
        }
    }
}

/// `base` with its database name replaced by `name` (query string kept).
fn database_url(base: &str, name: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (base, None),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let root = match without_query[scheme_end..].find('/') {
        Some(slash) => &without_query[..scheme_end + slash],
        None => without_query,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

#[test]
fn database_url_replaces_only_the_name() {
    assert_eq!(
        database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(database_url("postgres://u:p@h/db?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
    assert_eq!(database_url("postgres://h:1", "x"), "postgres://h:1/x");
}

/// The effects `oversight::cases::timer_effects` decides (the store only records them): a
/// reminder tells the handler and unit head; the alarm also escalates to `leaders` and records
/// the unit and the handler.
pub fn timer_effects(
    leaders: &[String],
) -> impl FnOnce(&jiandu_store::CaseTimer, &jiandu_store::Case) -> jiandu_store::TimerEffects + '_ {
    move |timer, case| {
        let mut to = vec![case.handler.clone()];
        to.extend(case.unit_head.clone());
        let overdue = timer.kind == jiandu_store::TimerKind::Overdue;
        let negative_records = if overdue {
            [("unit", &case.unit), ("handler", &case.handler)]
                .into_iter()
                .map(|(k, s)| jiandu_store::NewNegativeRecord { subject_kind: k.into(), subject: s.clone() })
                .collect()
        } else {
            vec![]
        };
        jiandu_store::TimerEffects {
            overdue,
            to,
            escalated_to: if overdue { leaders.to_vec() } else { vec![] },
            reason: overdue.then(|| format!("deadline of stage {} missed", case.stage)),
            negative_records,
        }
    }
}
