//! `TestApp`: a real `jiandu serve` process on ephemeral ports with a fresh data dir and database,
//! administered through the real CLI, plus MQTT clients talking to it over TCP.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet};
use serde_json::Value;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_jiandu")
}

/// Which database a test app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// SQLite file in the data dir.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

/// Base URL of the test PostgreSQL server; fails loudly when it is not reachable.
pub fn postgres_base() -> String {
    std::env::var("JIANDU_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres_db() -> String {
    use sqlx::Connection;
    let base = postgres_base();
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {base} is not reachable ({e}); run `eval \"$(scripts/services.sh)\"` first")
    });
    let name = format!("jd_e2e_{:016x}", rand_u64());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("postgres URL has a database part");
    format!("{prefix}/{name}")
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}

/// A running jiandu with its data dir.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub db: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub http: String,
    /// The admin user `init` created: (name, password).
    pub admin: (String, String),
    /// MQTTS address (`127.0.0.1:port`), when started with TLS.
    pub mqtts: Option<String>,
    /// HTTPS base URL, when started with TLS.
    pub https: Option<String>,
    /// MQTT-over-WebSocket URL of `--ws-listen` (`ws://127.0.0.1:port/mqtt`), when on.
    pub ws: Option<String>,
    child: Child,
}

/// How [`TestApp::spawn_tls`] sets up TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Extra arguments for `jiandu tls init` (e.g. `--client-certs`).
    pub init_args: Vec<String>,
    /// Keep the plaintext MQTT and HTTP listeners (on port 0) beside the TLS ones.
    pub plaintext: bool,
    /// Appended to `jiandu.toml` after `tls init` (e.g. `reload_s` under `[tls]`).
    pub toml: String,
}

impl TestApp {
    /// Initialises a data dir and starts `jiandu serve` on port 0.
    pub async fn spawn(db: Db) -> TestApp {
        TestApp::spawn_with_config(db, "").await
    }

    /// Like [`TestApp::spawn`], with `toml` appended to the data dir's `jiandu.toml` (kept for
    /// [`TestApp::restart`]), e.g. a `[dispatch]` section.
    pub async fn spawn_with_config(db: Db, toml: &str) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let db = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("jiandu.db").display()),
            Db::Postgres => fresh_postgres_db().await,
        };
        TestApp::spawn_in(dir, db, toml)
    }

    /// Like [`TestApp::spawn_with_config`] on a database the test provides (an empty one), e.g.
    /// on a [`PrivatePostgres`] the test stops and starts.
    pub async fn spawn_on_url(db: &str, toml: &str) -> TestApp {
        TestApp::spawn_in(tempfile::tempdir().unwrap(), db.to_owned(), toml)
    }

    fn spawn_in(dir: tempfile::TempDir, db: String, toml: &str) -> TestApp {
        let out = cli(dir.path(), &db, &["init"]);
        if !toml.is_empty() {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("jiandu.toml")).unwrap();
            writeln!(f, "\n{toml}").unwrap();
        }
        let admin = (
            out["username"].as_str().expect("init prints the admin credentials").to_owned(),
            out["password"].as_str().expect("init prints the admin password").to_owned(),
        );
        let child = serve(dir.path(), &db, "127.0.0.1:0", "127.0.0.1:0");
        TestApp::started(dir, db, admin, child)
    }

    /// Like [`TestApp::spawn_with_config`], with extra `serve` flags (e.g. `--ws-listen`).
    pub async fn spawn_with_args(db: Db, toml: &str, args: &[&str]) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let db = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("jiandu.db").display()),
            Db::Postgres => fresh_postgres_db().await,
        };
        let out = cli(dir.path(), &db, &["init"]);
        if !toml.is_empty() {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("jiandu.toml")).unwrap();
            writeln!(f, "\n{toml}").unwrap();
        }
        let admin = (
            out["username"].as_str().expect("init prints the admin credentials").to_owned(),
            out["password"].as_str().expect("init prints the admin password").to_owned(),
        );
        let mut all = vec!["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let child = serve_args(dir.path(), &db, &all);
        TestApp::started(dir, db, admin, child)
    }

    /// Initialises a data dir, runs `jiandu tls init` (private CA and server certificate for
    /// 127.0.0.1) and starts `jiandu serve` with MQTTS and HTTPS on port 0; plaintext is off
    /// unless `opts.plaintext`.
    pub async fn spawn_tls(db: Db, opts: TlsOptions) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let db = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("jiandu.db").display()),
            Db::Postgres => fresh_postgres_db().await,
        };
        let out = cli(dir.path(), &db, &["init"]);
        let admin = (
            out["username"].as_str().expect("init prints the admin credentials").to_owned(),
            out["password"].as_str().expect("init prints the admin password").to_owned(),
        );
        let mut init = vec!["tls", "init"];
        init.extend(opts.init_args.iter().map(String::as_str));
        cli(dir.path(), &db, &init);
        if !opts.toml.is_empty() {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("jiandu.toml")).unwrap();
            writeln!(f, "\n{}", opts.toml).unwrap();
        }
        let plain = if opts.plaintext { "127.0.0.1:0" } else { "off" };
        let args = [
            "--mqtt-listen",
            plain,
            "--http-listen",
            plain,
            "--mqtts-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ];
        let child = serve_args(dir.path(), &db, &args);
        TestApp::started(dir, db, admin, child)
    }

    fn started(dir: tempfile::TempDir, db: String, admin: (String, String), child: Child) -> TestApp {
        install_crypto_provider();
        let state = wait_for_file(&dir.path().join("serve.json"), Duration::from_secs(60));
        let (host, port) = match state["mqtt"].as_str() {
            Some(mqtt) => {
                let (h, p) = mqtt.trim_start_matches("mqtt://").rsplit_once(':').unwrap();
                (h.to_owned(), p.parse().unwrap())
            }
            None => (String::new(), 0),
        };
        TestApp {
            mqtt_host: host,
            mqtt_port: port,
            http: state["http"].as_str().unwrap_or_default().to_owned(),
            mqtts: state["mqtts"].as_str().map(|a| a.trim_start_matches("mqtts://").to_owned()),
            https: state["https"].as_str().map(str::to_owned),
            ws: state["ws"].as_str().map(str::to_owned),
            admin,
            db,
            dir,
            child,
        }
    }

    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The private CA `jiandu tls init` made (PEM).
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("tls/ca.pem")).expect("tls init wrote ca.pem")
    }

    /// Kills the server with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the server again on the same data dir, database and ports (after [`kill9`]).
    pub fn restart(&mut self) {
        std::fs::remove_file(self.dir.path().join("serve.json")).ok();
        let http = self.http.trim_start_matches("http://").to_owned();
        self.child = serve(self.dir.path(), &self.db, &format!("{}:{}", self.mqtt_host, self.mqtt_port), &http);
        wait_for_file(&self.dir.path().join("serve.json"), Duration::from_secs(60));
    }

    /// GET a JSON API path as the admin (HTTP Basic).
    pub async fn get_json(&self, path: &str) -> Value {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.http))
            .basic_auth(&self.admin.0, Some(&self.admin.1))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    /// Runs a CLI command against this app's data dir; returns its stdout JSON (last line).
    pub fn cli(&self, args: &[&str]) -> Value {
        cli(self.dir.path(), &self.db, args)
    }

    /// Adds a device through the CLI: (id, password).
    pub fn add_device(&self, name: &str) -> (String, String) {
        let v = self.cli(&["device", "add", name]);
        (v["device"].as_str().unwrap().to_owned(), v["password"].as_str().unwrap().to_owned())
    }

    /// Adds an integration account: (name, password).
    pub fn add_integration(&self, name: &str, subscribe: &[&str], publish: &[&str]) -> (String, String) {
        let mut args = vec!["integration", "add", name];
        for f in subscribe {
            args.extend(["--subscribe", f]);
        }
        for f in publish {
            args.extend(["--publish", f]);
        }
        let v = self.cli(&args);
        (v["username"].as_str().unwrap().to_owned(), v["password"].as_str().unwrap().to_owned())
    }

    /// MQTT 3.1.1 options for this app's broker.
    pub fn options(&self, client_id: &str, user: Option<(&str, &str)>) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, &self.mqtt_host, self.mqtt_port);
        if let Some((u, p)) = user {
            o.set_credentials(u, p);
        }
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o
    }

    /// The serve log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Makes aws-lc-rs the process's rustls provider, which reqwest (built without one of its own,
/// so that tests can hand it a client configuration trusting only a private CA) uses for
/// `reqwest::Client::new()`. Idempotent.
pub fn install_crypto_provider() {
    rustls::crypto::aws_lc_rs::default_provider().install_default().ok();
}

/// Spawns `jiandu serve` on a data dir, appending its log to `serve.log`.
fn serve(dir: &Path, db: &str, mqtt: &str, http: &str) -> Child {
    serve_args(dir, db, &["--mqtt-listen", mqtt, "--http-listen", http])
}

/// Spawns `jiandu serve ARGS` on a data dir, appending its log to `serve.log`.
pub fn serve_args(dir: &Path, db: &str, args: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log")).unwrap();
    Command::new(bin())
        .arg("serve")
        .args(args)
        .env("JIANDU_DATA_DIR", dir)
        .env("JIANDU_DB", db)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Runs `jiandu ARGS` on a data dir and database; panics with stderr on failure.
pub fn cli(dir: &Path, db: &str, args: &[&str]) -> Value {
    let out = Command::new(bin()).args(args).env("JIANDU_DATA_DIR", dir).env("JIANDU_DB", db).output().unwrap();
    assert!(out.status.success(), "jiandu {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or("null");
    serde_json::from_str(last).unwrap_or(Value::Null)
}

/// Runs `jiandu ARGS` expecting failure; returns stderr.
pub fn cli_err(dir: &Path, db: &str, args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).env("JIANDU_DATA_DIR", dir).env("JIANDU_DB", db).output().unwrap();
    assert!(!out.status.success(), "jiandu {args:?} unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn wait_for_file(path: &PathBuf, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until CONNACK or a connection error.
pub async fn connect(o: MqttOptions) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut events) = AsyncClient::new(o, 64);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await.expect("no answer to CONNECT") {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((client, events)),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Polls the event loop until `pred` returns Some for an incoming packet.
pub async fn until<T>(events: &mut EventLoop, mut pred: impl FnMut(&Packet) -> Option<T>) -> T {
    let deadline = Duration::from_secs(15);
    tokio::time::timeout(deadline, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p)) => {
                    if let Some(t) = pred(&p) {
                        return t;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("connection error while waiting: {e}"),
            }
        }
    })
    .await
    .expect("expected packet did not arrive")
}

/// Drives an event loop in the background (so a publisher's packets go out).
pub fn drive(mut events: EventLoop) -> tokio::task::JoinHandle<Vec<Packet>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(e) = events.poll().await {
            if let Event::Incoming(p) = e {
                seen.push(p);
            }
        }
        seen
    })
}

/// A simulated phone for the browser tests: subscribes to its inbox, announces presence, sends a
/// heartbeat every 300 ms walking up to 300 m north and back, and accepts every assignment it is
/// offered. `options` says how it connects (plain TCP or MQTTS).
pub async fn walking_phone(id: &str, options: MqttOptions, lat: f64, lon: f64) -> tokio::task::JoinHandle<()> {
    use rumqttc::QoS;
    use serde_json::json;
    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    }
    let (client, mut events) = connect(options).await.unwrap();
    client.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    let dev = id.to_owned();
    tokio::spawn(async move {
        let topic = |s: &str| format!("jd/v1/dev/{dev}/{s}");
        let presence = json!({"online": true, "ts": now()}).to_string();
        client.publish(topic("presence"), QoS::AtLeastOnce, true, presence).await.ok();
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        let mut step = 0.0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    step += 1.0;
                    let hb = json!({"ts": now(), "lat": lat + (step % 10.0) * 0.0003, "lon": lon, "duty": "on", "bat": 80});
                    client.publish(topic("hb"), QoS::AtLeastOnce, false, hb.to_string()).await.ok();
                }
                e = events.poll() => match e {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/inbox/assignment") => {
                        let offer: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                        if let Some(a) = offer["assignment_id"].as_str() {
                            let body = json!({"status": "accepted", "ts": now()}).to_string();
                            client.publish(topic(&format!("asg/{a}")), QoS::AtLeastOnce, false, body).await.ok();
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                },
            }
        }
    })
}

/// A phone connected and subscribed to its own inbox; each test file adds the exchanges it needs.
pub struct InboxPhone {
    pub id: String,
    pub token: String,
    pub client: AsyncClient,
    pub events: EventLoop,
}

impl InboxPhone {
    /// Adds a device, connects it (`tune` adjusts its options first) and waits for the SUBACK
    /// of its `inbox/#`.
    pub async fn start(app: &TestApp, name: &str, tune: impl FnOnce(&mut MqttOptions)) -> InboxPhone {
        let (id, token) = app.add_device(name);
        let mut o = app.options(&id, Some((&id, &token)));
        tune(&mut o);
        let (client, mut events) = connect(o).await.unwrap();
        client.subscribe(format!("jd/v1/dev/{id}/inbox/#"), rumqttc::QoS::AtLeastOnce).await.unwrap();
        until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
        InboxPhone { id, token, client, events }
    }
}

/// A PostgreSQL cluster of the test's own (Debian's `initdb` and `pg_ctl`, data and socket dir in
/// a tempdir, 127.0.0.1 on a free port), for tests that stop the database: the shared test
/// server must stay up for the tests running beside them. Stopped (immediately) on drop.
pub struct PrivatePostgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates and starts the cluster. `None` (with a note on stderr) when the PostgreSQL server
    /// binaries are not installed, except with `CI=true`, where that fails the test:
    /// `scripts/services.sh` installs them.
    pub fn start() -> Option<PrivatePostgres> {
        let Some(bin) = postgres_bin_dir() else {
            let msg = "initdb/pg_ctl not found under /usr/lib/postgresql/*/bin (scripts/services.sh installs them)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("skipped: {msg}");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("jiandu-pg-").tempdir().unwrap();
        let data = dir.path().join("data");
        // The server refuses to run as root: the cluster then belongs to `postgres`.
        if is_root() {
            let uid = owner_id("-u");
            let gid = owner_id("-g");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let initdb = bin.join("initdb");
        let out =
            as_cluster_owner(&initdb, &["-D", &data.to_string_lossy(), "-U", "postgres", "-A", "trust", "--no-sync"]);
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg =
            PrivatePostgres { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), bin, data, port, dir };
        pg.start_server();
        Some(pg)
    }

    /// Starts the stopped server again (same data, same port) and waits until it accepts.
    pub fn start_server(&self) {
        let opts = format!("-c listen_addresses=127.0.0.1 -p {} -k {} -F", self.port, self.dir.path().display());
        let log = self.dir.path().join("postgres.log");
        let out = as_cluster_owner(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data.to_string_lossy(), "-l", &log.to_string_lossy(), "-o", &opts, "-w", "-t", "60", "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: open connections are cut, as in a
    /// crash).
    pub fn stop_immediately(&self) {
        let out = as_cluster_owner(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data.to_string_lossy(), "-m", "immediate", "-w", "stop"],
        );
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        as_cluster_owner(&self.bin.join("pg_ctl"), &["-D", &self.data.to_string_lossy(), "-m", "immediate", "stop"]);
    }
}

/// The newest installed PostgreSQL server binaries (the directory holding `initdb` and `pg_ctl`).
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `id -u postgres` / `id -g postgres`.
fn owner_id(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, "postgres"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a `postgres` system user (Debian's postgresql package)")
}

/// Runs a PostgreSQL tool as the cluster's owner: `postgres` when we are root.
fn as_cluster_owner(program: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).stdin(Stdio::null()).output().unwrap()
}

/// A private Mosquitto 2 with its dynamic-security plugin, on an ephemeral loopback port, its
/// configuration and `dynsec.json` in a temporary directory (`mosquitto_ctrl dynsec init`).
pub struct Mosquitto {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The dynsec admin (`admin`) password.
    pub admin_password: String,
    child: Child,
}

/// The Debian mosquitto binary; panics (naming `scripts/services.sh`) when it is not installed.
pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto is not installed; run scripts/services.sh (Debian package mosquitto)");
}

impl Mosquitto {
    /// Starts it and waits until it accepts connections.
    pub fn start_dynsec() -> Mosquitto {
        let plugin = [
            "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
            "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto_dynamic_security.so missing; run scripts/services.sh (Debian package mosquitto)");
        let bin = mosquitto_bin();
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to the `mosquitto` user: it must be able to read and
        // write its dynsec file.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let admin_password = format!("adm-{:016x}", rand_u64());
        let dynsec = dir.path().join("dynsec.json");
        let out = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args(["admin", &admin_password])
            .output()
            .expect("mosquitto_ctrl (Debian package mosquitto-clients or mosquitto) is not installed");
        assert!(dynsec.exists(), "mosquitto_ctrl dynsec init failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::set_permissions(&dynsec, std::fs::Permissions::from_mode(0o666)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\nlog_dest stderr\n\
                 plugin {plugin}\nplugin_opt_config_file {}\n",
                dynsec.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto { dir, port, admin_password, child }
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// `target/test-artifacts/{name}` (created), where browser tests leave their screenshots.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a browser acceptance script (`tests/browser/{script}`, Playwright driving Debian's
/// headless Chromium) with node against a live server at `url`: checks that Chromium
/// (`JIANDU_TEST_CHROMIUM`) and the npm `packages` are installed, hands the script `JD_URL`,
/// `JD_CHROMIUM`, `JD_ADMIN` and `JD_ARTIFACTS` (`target/test-artifacts/{artifacts}`) besides
/// `env`, and fails with the script's output and the server log unless it succeeds within
/// `limit`. Returns the script's stdout.
pub async fn run_browser_script(
    app: &TestApp,
    script: &str,
    url: &str,
    artifacts: &str,
    packages: &[&str],
    env: &[(&str, String)],
    limit: Duration,
) -> String {
    let chromium = std::env::var("JIANDU_TEST_CHROMIUM")
        .expect("JIANDU_TEST_CHROMIUM is not set: run eval \"$(scripts/services.sh)\" (installs Chromium)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for package in ["playwright-core"].iter().chain(packages) {
        assert!(
            root.join("tests/browser/node_modules").join(package).exists(),
            "{package} is not installed in tests/browser: run scripts/services.sh"
        );
    }
    let artifacts = artifacts_dir(artifacts);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(root.join("tests/browser").join(script))
        .env("JD_URL", url)
        .env("JD_CHROMIUM", &chromium)
        .env("JD_ADMIN", format!("{}:{}", app.admin.0, app.admin.1))
        .env("JD_ARTIFACTS", &artifacts);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output()).await.expect("browser test hung").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser test {script} failed:\n{stdout}\n{stderr}\nserver log:\n{}", app.log());
    stdout
}
