//! Typed, layered configuration: command-line flags, then `JIANDU_*` environment variables
//! (clap reads both), then the TOML file, then built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Flags shared by every command; each also reads `JIANDU_<NAME>` from the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file [default: {data-dir}/jiandu.toml when it exists]
    #[arg(long, env = "JIANDU_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (database, evidence, keys) [default: ./jiandu-data]
    #[arg(long, env = "JIANDU_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Plaintext address of the embedded MQTT broker (3.1.1 and 5), or "off" [default: 127.0.0.1:1883]
    #[arg(long, env = "JIANDU_MQTT_LISTEN", global = true, value_name = "ADDR|off")]
    pub mqtt_listen: Option<Listen>,
    /// Plaintext address of the web view and REST API, or "off" [default: 127.0.0.1:8080]
    #[arg(long, env = "JIANDU_HTTP_LISTEN", global = true, value_name = "ADDR|off")]
    pub http_listen: Option<Listen>,
    /// MQTT over TLS, or "off" [default with a TLS certificate: 127.0.0.1:8883]
    #[arg(long, env = "JIANDU_MQTTS_LISTEN", global = true, value_name = "ADDR|off")]
    pub mqtts_listen: Option<Listen>,
    /// HTTPS for the web view and REST API, or "off" [default with a TLS certificate: 127.0.0.1:8443]
    #[arg(long, env = "JIANDU_HTTPS_LISTEN", global = true, value_name = "ADDR|off")]
    pub https_listen: Option<Listen>,
    /// MQTT over plain WebSocket on its own port (path /mqtt), or "off"; the web ports always
    /// offer /mqtt too [default: off]
    #[arg(long, env = "JIANDU_WS_LISTEN", global = true, value_name = "ADDR|off")]
    pub ws_listen: Option<Listen>,
    /// Server certificate chain, PEM ([tls] cert)
    #[arg(long, env = "JIANDU_TLS_CERT", global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the server certificate, PEM ([tls] key)
    #[arg(long, env = "JIANDU_TLS_KEY", global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA of phones' client certificates on the MQTTS port, PEM ([tls] client_ca)
    #[arg(long, env = "JIANDU_TLS_CLIENT_CA", global = true, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://… [default: sqlite://{data-dir}/jiandu.db]
    #[arg(long, env = "JIANDU_DB", global = true, value_name = "URL")]
    pub db: Option<String>,
    /// Evidence object store: file://DIR or s3://BUCKET [default: file://{data-dir}/evidence]
    #[arg(long, env = "JIANDU_OBJECT_STORE", global = true, value_name = "URL")]
    pub object_store: Option<String>,
    /// Use an external MQTT broker (mqtt://host:port) instead of the embedded one
    #[arg(long, env = "JIANDU_BROKER", global = true, value_name = "URL")]
    pub broker: Option<String>,
    /// Log format
    #[arg(long, env = "JIANDU_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// A listener address, or `off` for no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" => Ok(Listen(None)),
            a => a.parse().map(|a| Listen(Some(a))).map_err(|_| format!("expected HOST:PORT or \"off\", got {a:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

fn listen_json<S: serde::Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(a) => s.collect_str(a),
        None => s.serialize_str("off"),
    }
}

/// `[tls]` in the TOML file; `--tls-cert`, `--tls-key`, `--tls-client-ca` and
/// `JIANDU_TLS_CLIENT_AUTH` override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_auth: Option<String>,
    reload_s: Option<u64>,
    handshake_timeout_s: Option<u64>,
}

/// The resolved `[tls]` settings (certificate paths, never key material).
#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA of phones' client certificates on the MQTTS port; none: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// "required": device accounts must present a client certificate; "optional": checked when shown.
    #[serde(serialize_with = "display_json")]
    pub client_auth: jiandu_tls::ClientAuth,
    /// Seconds between checks of the certificate files for a renewal (SIGHUP reloads at once).
    pub reload_s: u64,
    /// Seconds a new connection has to finish the TLS handshake.
    pub handshake_timeout_s: u64,
}

fn display_json<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl TlsConfig {
    /// The settings the listeners are built from.
    pub fn settings(&self) -> jiandu_tls::TlsSettings {
        jiandu_tls::TlsSettings {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
            client_auth: self.client_auth,
            reload_interval: std::time::Duration::from_secs(self.reload_s),
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout_s),
        }
    }
}

/// Resolves `[tls]` under the flags; `None` when no certificate is configured.
fn tls_config(args: &CommonArgs, file: TlsFile) -> Result<Option<TlsConfig>> {
    let cert = args.tls_cert.clone().or(file.cert);
    let key = args.tls_key.clone().or(file.key);
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => return Ok(None),
        (Some(_), None) => bail!("[tls] cert is set but key is not (--tls-key)"),
        (None, Some(_)) => bail!("[tls] key is set but cert is not (--tls-cert)"),
    };
    let client_auth = match std::env::var("JIANDU_TLS_CLIENT_AUTH").ok().or(file.client_auth) {
        Some(v) => v.parse().map_err(|e: String| anyhow::anyhow!("[tls] {e}"))?,
        None => jiandu_tls::ClientAuth::default(),
    };
    let reload_s = file.reload_s.unwrap_or(60);
    let handshake_timeout_s = file.handshake_timeout_s.unwrap_or(10);
    if reload_s == 0 || handshake_timeout_s == 0 {
        bail!("[tls] reload_s and handshake_timeout_s must be at least 1");
    }
    Ok(Some(TlsConfig {
        cert: absolute(&cert),
        key: absolute(&key),
        client_ca: args.tls_client_ca.clone().or(file.client_ca).map(|p| absolute(&p)),
        client_auth,
        reload_s,
        handshake_timeout_s,
    }))
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The TOML file: every key optional, same names as the flags (with `_`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    mqtt_listen: Option<Listen>,
    http_listen: Option<Listen>,
    mqtts_listen: Option<Listen>,
    https_listen: Option<Listen>,
    ws_listen: Option<Listen>,
    db: Option<String>,
    object_store: Option<String>,
    broker: Option<String>,
    broker_username: Option<String>,
    broker_password: Option<String>,
    mqtt_hook_secret: Option<String>,
    mosquitto_dynsec: Option<bool>,
    mosquitto_admin_username: Option<String>,
    mosquitto_admin_password: Option<String>,
    log_format: Option<LogFormat>,
    max_packet_bytes: Option<usize>,
    max_connections: Option<usize>,
    heartbeat_log_bytes: Option<usize>,
    evidence_inflight_bytes: Option<usize>,
    max_sessions_per_device: Option<usize>,
    max_sessions_per_integration: Option<usize>,
    #[serde(default)]
    ingest: jiandu_ingest::heartbeat::HeartbeatConfig,
    #[serde(default)]
    evidence: jiandu_ingest::evidence::EvidenceConfig,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    #[serde(default)]
    dispatch: jiandu_dispatcher::DispatchConfig,
    #[serde(default)]
    lookup: LookupFile,
    #[serde(default)]
    cases: CasesFile,
    #[serde(default)]
    index: IndexFile,
    #[serde(default)]
    web: WebFile,
    #[serde(default)]
    public: PublicFile,
    #[serde(default)]
    tls: TlsFile,
    #[serde(default)]
    supervise: crate::serve::SuperviseConfig,
}

/// `[web]` in the TOML file: the browser view's map. `JIANDU_WEB_TILE_URL` and
/// `JIANDU_WEB_GCJ02` override the keys.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebFile {
    /// Raster tile URL template, e.g. `http://tiles.intranet/{z}/{x}/{y}.png`; none: plain background.
    pub tile_url: Option<String>,
    /// Attribution text shown for the tiles.
    pub tile_attribution: Option<String>,
    /// The tiles are GCJ-02 (most Chinese tile sets): points are shifted for display only.
    #[serde(default)]
    pub gcj02: bool,
    /// The address phones open the field app at (`https://jiandu.example:8443`), for the
    /// `app_url` links of new devices; unset: the HTTPS (else HTTP) listener, or for links made
    /// in the browser the address the admin's browser used.
    pub public_url: Option<String>,
    /// Seconds between the field app's heartbeats (carried in its provisioning link; default 10).
    pub app_heartbeat_s: Option<u32>,
    /// Addresses of reverse proxies in front of the web port (e.g. `["127.0.0.1"]` for nginx on
    /// the same host): for requests from these, the client is taken from `X-Forwarded-For`, so
    /// failed-login counting and rate limits see the real client, not the proxy.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl WebFile {
    /// The field app's heartbeat interval, 1..=3600 s.
    pub fn app_heartbeat_s(&self) -> u32 {
        self.app_heartbeat_s.unwrap_or(10).clamp(1, 3600)
    }
}

/// `[public]` in the TOML file: abuse limits of the public tip endpoints (issue 19); every key
/// optional, defaults in `jiandu_web::abuse::TipLimits`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicFile {
    /// Tips one address may send per window (10).
    pub per_address: Option<usize>,
    /// The per-address window, seconds (600).
    pub window_s: Option<u64>,
    /// Tips a minute from everyone together (120).
    pub global_per_minute: Option<usize>,
    /// From this attempt of an address within the window on, a proof of work is due (4).
    pub challenge_after: Option<usize>,
    /// Leading zero bits of the proof of work (15).
    pub difficulty: Option<u32>,
    /// Failed follow-ups (wrong code or secret) per address per window (10).
    pub lookups_failed: Option<usize>,
}

impl PublicFile {
    /// The limits these keys give, over the defaults.
    pub fn limits(&self) -> jiandu_web::abuse::TipLimits {
        let d = jiandu_web::abuse::TipLimits::default();
        jiandu_web::abuse::TipLimits {
            per_address: self.per_address.unwrap_or(d.per_address),
            window: self.window_s.map(std::time::Duration::from_secs).unwrap_or(d.window),
            global_per_minute: self.global_per_minute.unwrap_or(d.global_per_minute),
            challenge_after: self.challenge_after.unwrap_or(d.challenge_after),
            difficulty: self.difficulty.unwrap_or(d.difficulty).min(24),
            lookups_failed: self.lookups_failed.unwrap_or(d.lookups_failed),
        }
    }
}

/// `[lookup]` in the TOML file; `JIANDU_LOOKUP_<KEY>` overrides each key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupFile {
    rate_per_minute: Option<u32>,
    burst: Option<u32>,
    audit_batch: Option<usize>,
    refresh_ms: Option<u64>,
}

/// The look-up role's settings: `JIANDU_LOOKUP_RATE_PER_MINUTE`, `…_BURST`, `…_AUDIT_BATCH` and
/// `…_REFRESH_MS` over `[lookup]` over the defaults.
fn lookup_config(file: LookupFile) -> Result<jiandu_oversight::LookupConfig> {
    fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
        match std::env::var(name) {
            Ok(v) => v.trim().parse().map(Some).map_err(|_| anyhow::anyhow!("{name}: cannot parse {v:?}")),
            Err(_) => Ok(None),
        }
    }
    let d = jiandu_oversight::LookupConfig::default();
    let refresh_ms = var("JIANDU_LOOKUP_REFRESH_MS")?.or(file.refresh_ms);
    Ok(jiandu_oversight::LookupConfig {
        rate_per_minute: var("JIANDU_LOOKUP_RATE_PER_MINUTE")?.or(file.rate_per_minute).unwrap_or(d.rate_per_minute),
        burst: var("JIANDU_LOOKUP_BURST")?.or(file.burst).unwrap_or(d.burst),
        audit_batch: var("JIANDU_LOOKUP_AUDIT_BATCH")?.or(file.audit_batch).unwrap_or(d.audit_batch),
        refresh: refresh_ms.map(std::time::Duration::from_millis).unwrap_or(d.refresh),
    })
}

/// `[cases]` in the TOML file; `JIANDU_CASES_TICK_MS` and `JIANDU_CASES_CLOCK_OFFSET_MS` override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    tick_ms: Option<u64>,
    clock_offset_ms: Option<i64>,
    stages_file: Option<PathBuf>,
}

/// The case scheduler's settings; the stage template defaults to `{data_dir}/stages.toml` when
/// that file exists.
fn cases_config(file: CasesFile, data_dir: &Path) -> Result<jiandu_oversight::cases::CaseConfig> {
    fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
        match std::env::var(name) {
            Ok(v) => v.trim().parse().map(Some).map_err(|_| anyhow::anyhow!("{name}: cannot parse {v:?}")),
            Err(_) => Ok(None),
        }
    }
    let d = jiandu_oversight::cases::CaseConfig::default();
    let tick_ms = var("JIANDU_CASES_TICK_MS")?.or(file.tick_ms);
    let in_data_dir = data_dir.join("stages.toml");
    Ok(jiandu_oversight::cases::CaseConfig {
        tick: tick_ms.map(std::time::Duration::from_millis).unwrap_or(d.tick),
        clock_offset_ms: var("JIANDU_CASES_CLOCK_OFFSET_MS")?.or(file.clock_offset_ms).unwrap_or(0),
        stages_file: file.stages_file.or_else(|| in_data_dir.exists().then_some(in_data_dir)),
    })
}

/// `[index]` in the TOML file; `JIANDU_INDEX_INTERVAL_S` and `JIANDU_INDEX_CLOCK_OFFSET_MS` override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    interval_s: Option<u64>,
    clock_offset_ms: Option<i64>,
    formula_file: Option<PathBuf>,
}

/// The index scheduler's settings; the formula defaults to `{data_dir}/index.toml` when that
/// file exists (else the embedded one).
fn index_config(file: IndexFile, data_dir: &Path) -> Result<jiandu_oversight::integrity::IndexConfig> {
    fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
        match std::env::var(name) {
            Ok(v) => v.trim().parse().map(Some).map_err(|_| anyhow::anyhow!("{name}: cannot parse {v:?}")),
            Err(_) => Ok(None),
        }
    }
    let d = jiandu_oversight::integrity::IndexConfig::default();
    let interval_s: Option<u64> = var("JIANDU_INDEX_INTERVAL_S")?.or(file.interval_s);
    if interval_s == Some(0) {
        bail!("[index] interval_s: must be at least 1");
    }
    let in_data_dir = data_dir.join("index.toml");
    Ok(jiandu_oversight::integrity::IndexConfig {
        interval: interval_s.map(std::time::Duration::from_secs).unwrap_or(d.interval),
        clock_offset_ms: var("JIANDU_INDEX_CLOCK_OFFSET_MS")?.or(file.clock_offset_ms).unwrap_or(0),
        formula_file: file.formula_file.or_else(|| in_data_dir.exists().then_some(in_data_dir)),
    })
}

fn index_json<S: serde::Serializer>(c: &jiandu_oversight::integrity::IndexConfig, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({
        "interval_s": c.interval.as_secs(), "clock_offset_ms": c.clock_offset_ms, "formula_file": c.formula_file,
    })
    .serialize(s)
}

fn cases_json<S: serde::Serializer>(c: &jiandu_oversight::cases::CaseConfig, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({
        "tick_ms": c.tick.as_millis() as u64, "clock_offset_ms": c.clock_offset_ms, "stages_file": c.stages_file,
    })
    .serialize(s)
}

/// The resolved configuration every role is started with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Public plaintext MQTT address of the embedded broker (`None`: off).
    #[serde(serialize_with = "listen_json")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Plaintext HTTP address (`None`: off).
    #[serde(serialize_with = "listen_json")]
    pub http_listen: Option<SocketAddr>,
    /// MQTT over TLS (`None`: off; needs `tls`).
    #[serde(serialize_with = "listen_json")]
    pub mqtts_listen: Option<SocketAddr>,
    /// HTTPS (`None`: off; needs `tls`).
    #[serde(serialize_with = "listen_json")]
    pub https_listen: Option<SocketAddr>,
    /// MQTT over plain WebSocket on its own port (`None`: off; the web ports offer `/mqtt`).
    #[serde(serialize_with = "listen_json")]
    pub ws_listen: Option<SocketAddr>,
    /// Certificates of the TLS listeners (`[tls]`).
    pub tls: Option<TlsConfig>,
    /// Database URL.
    pub db: String,
    /// Object store URL.
    pub object_store: String,
    /// External broker URL, if any.
    pub broker: Option<String>,
    /// Username the roles use on an external broker.
    pub broker_username: Option<String>,
    /// Password the roles use on an external broker (never printed).
    #[serde(serialize_with = "redact")]
    pub broker_password: Option<String>,
    /// Secret an external broker (EMQX, rmqtt) presents to the web role's `/api/v1/mqtt/auth`
    /// and `/acl` hooks (never printed); unset: the hooks answer 503.
    #[serde(serialize_with = "redact")]
    pub mqtt_hook_secret: Option<String>,
    /// The external broker (`--broker`) is Mosquitto 2 with its dynamic-security plugin: `serve`
    /// keeps its clients, roles and ACLs in step (`JIANDU_MOSQUITTO_DYNSEC`).
    pub mosquitto_dynsec: bool,
    /// The dynsec admin client (`mosquitto_ctrl dynsec init FILE USER`) [default: admin].
    pub mosquitto_admin_username: String,
    /// Its password (never printed; prefer `JIANDU_MOSQUITTO_ADMIN_PASSWORD`).
    #[serde(serialize_with = "redact")]
    pub mosquitto_admin_password: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest MQTT packet accepted from a client.
    pub max_packet_bytes: usize,
    /// Most MQTT client connections at once.
    pub max_connections: usize,
    /// Heartbeat bytes the embedded broker keeps for a lagging ingest before dropping the oldest.
    pub heartbeat_log_bytes: usize,
    /// Evidence bytes admitted from phones and not yet staged by ingest (flow control).
    pub evidence_inflight_bytes: usize,
    /// Most distinct MQTT client ids one device may hold connected at once.
    pub max_sessions_per_device: usize,
    /// Most distinct MQTT client ids one integration account may hold connected at once.
    pub max_sessions_per_integration: usize,
    /// Heartbeat ingest (`[ingest]`).
    pub ingest: jiandu_ingest::heartbeat::HeartbeatConfig,
    /// Evidence uploads (`[evidence]`): limits and the staging directory.
    pub evidence: jiandu_ingest::evidence::EvidenceConfig,
    /// S3 endpoint for an `s3://` object store (`JIANDU_S3_ENDPOINT`); credentials come from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub s3_endpoint: Option<String>,
    /// S3 region (`JIANDU_S3_REGION`, else `AWS_REGION`, else us-east-1).
    pub s3_region: Option<String>,
    /// Dispatch (`[dispatch]`); `JIANDU_DISPATCH_<KEY>` overrides each key.
    pub dispatch: jiandu_dispatcher::DispatchConfig,
    /// Registry look-ups (`[lookup]`); `JIANDU_LOOKUP_<KEY>` overrides each key.
    #[serde(serialize_with = "lookup_json")]
    pub lookup: jiandu_oversight::LookupConfig,
    /// The case scheduler (`[cases]`).
    #[serde(serialize_with = "cases_json")]
    pub cases: jiandu_oversight::cases::CaseConfig,
    /// The integrity index scheduler (`[index]`).
    #[serde(serialize_with = "index_json")]
    pub index: jiandu_oversight::integrity::IndexConfig,
    /// The browser view (`[web]`).
    pub web: WebFile,
    /// Abuse limits of the public tip endpoints (`[public]`).
    pub public: PublicFile,
    /// How `serve` restarts failing roles (`[supervise]`).
    pub supervise: crate::serve::SuperviseConfig,
}

fn lookup_json<S: serde::Serializer>(l: &jiandu_oversight::LookupConfig, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({
        "rate_per_minute": l.rate_per_minute, "burst": l.burst, "audit_batch": l.audit_batch,
        "refresh_ms": l.refresh.as_millis() as u64,
    })
    .serialize(s)
}

fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

/// Name of the config file `jiandu init` writes into the data directory.
pub const CONFIG_FILE: &str = "jiandu.toml";

impl Config {
    /// Resolves flags/env over the TOML file over defaults.
    pub fn load(args: &CommonArgs) -> Result<Config> {
        let broker_defaults = jiandu_broker::BrokerConfig::default();
        let default_dir = PathBuf::from("./jiandu-data");
        let file_path = match &args.config {
            Some(p) => Some(p.clone()),
            None => {
                let dir = args.data_dir.clone().unwrap_or_else(|| default_dir.clone());
                let p = dir.join(CONFIG_FILE);
                p.exists().then_some(p)
            }
        };
        let file = match &file_path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("reading config file {}", p.display()))?;
                toml::from_str::<FileConfig>(&text).with_context(|| format!("config file {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = args.data_dir.clone().or(file.data_dir).unwrap_or(default_dir);
        let db =
            args.db.clone().or(file.db).unwrap_or_else(|| format!("sqlite://{}", data_dir.join("jiandu.db").display()));
        let object_store = args
            .object_store
            .clone()
            .or(file.object_store)
            .unwrap_or_else(|| format!("file://{}", absolute(&data_dir.join("evidence")).display()));
        let broker = args.broker.clone().or(file.broker);
        if let Some(url) = &broker {
            parse_mqtt_url(url).with_context(|| "--broker")?;
        }
        // A file:// store stages under its own root (finished files are hard-linked into place).
        let staging_default = (!object_store.starts_with("file://")).then(|| absolute(&data_dir.join("staging")));
        let staging = match std::env::var("JIANDU_EVIDENCE_STAGING").ok().as_deref() {
            None => file.evidence.staging,
            Some("local") => jiandu_ingest::evidence::Staging::Local,
            Some("database") => jiandu_ingest::evidence::Staging::Database,
            Some(other) => bail!("JIANDU_EVIDENCE_STAGING: expected \"local\" or \"database\", got {other:?}"),
        };
        let evidence = jiandu_ingest::evidence::EvidenceConfig {
            staging,
            staging_dir: file.evidence.staging_dir.clone().or(staging_default),
            ..file.evidence
        };
        let tls = tls_config(args, file.tls)?;
        let tls_listen = |flag: Option<Listen>, key: Option<Listen>, name: &str, port: u16| -> Result<_> {
            match (flag.or(key), &tls) {
                (Some(Listen(Some(_))), None) => {
                    bail!("--{name}-listen needs a certificate: set [tls] cert and key (see `jiandu tls init`)")
                }
                (Some(Listen(a)), _) => Ok(a),
                (None, Some(_)) => Ok(Some(SocketAddr::from(([127, 0, 0, 1], port)))),
                (None, None) => Ok(None),
            }
        };
        let mqtts_listen = tls_listen(args.mqtts_listen, file.mqtts_listen, "mqtts", 8883)?;
        let https_listen = tls_listen(args.https_listen, file.https_listen, "https", 8443)?;
        Ok(Config {
            mqtt_listen: args.mqtt_listen.or(file.mqtt_listen).map_or(Some(([127, 0, 0, 1], 1883).into()), |l| l.0),
            http_listen: args.http_listen.or(file.http_listen).map_or(Some(([127, 0, 0, 1], 8080).into()), |l| l.0),
            mqtts_listen,
            https_listen,
            ws_listen: args.ws_listen.or(file.ws_listen).and_then(|l| l.0),
            tls,
            db,
            object_store,
            broker,
            broker_username: std::env::var("JIANDU_BROKER_USERNAME").ok().or(file.broker_username),
            broker_password: std::env::var("JIANDU_BROKER_PASSWORD").ok().or(file.broker_password),
            mqtt_hook_secret: std::env::var("JIANDU_MQTT_HOOK_SECRET").ok().or(file.mqtt_hook_secret),
            mosquitto_dynsec: match std::env::var("JIANDU_MOSQUITTO_DYNSEC") {
                Ok(v) => matches!(v.trim(), "1" | "true" | "yes"),
                Err(_) => file.mosquitto_dynsec.unwrap_or(false),
            },
            mosquitto_admin_username: std::env::var("JIANDU_MOSQUITTO_ADMIN_USERNAME")
                .ok()
                .or(file.mosquitto_admin_username)
                .unwrap_or_else(|| "admin".into()),
            mosquitto_admin_password: std::env::var("JIANDU_MOSQUITTO_ADMIN_PASSWORD")
                .ok()
                .or(file.mosquitto_admin_password),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            // The broker's own defaults, so they are written once (in `BrokerConfig::default`).
            max_packet_bytes: file.max_packet_bytes.unwrap_or(broker_defaults.max_packet_bytes),
            max_connections: file.max_connections.unwrap_or(broker_defaults.max_connections),
            heartbeat_log_bytes: file.heartbeat_log_bytes.unwrap_or(broker_defaults.heartbeat_log_bytes),
            evidence_inflight_bytes: file.evidence_inflight_bytes.unwrap_or(broker_defaults.evidence_inflight_bytes),
            max_sessions_per_device: file
                .max_sessions_per_device
                .unwrap_or(broker_defaults.max_sessions_per_device)
                .max(1),
            max_sessions_per_integration: file
                .max_sessions_per_integration
                .unwrap_or(broker_defaults.max_sessions_per_integration)
                .max(1),
            ingest: file.ingest,
            evidence,
            s3_endpoint: std::env::var("JIANDU_S3_ENDPOINT").ok().or(file.s3_endpoint),
            s3_region: std::env::var("JIANDU_S3_REGION").ok().or(file.s3_region),
            dispatch: dispatch_from_env(file.dispatch)?,
            lookup: lookup_config(file.lookup)?,
            cases: cases_config(file.cases, &data_dir)?,
            index: index_config(file.index, &data_dir)?,
            web: WebFile {
                tile_url: std::env::var("JIANDU_WEB_TILE_URL").ok().filter(|v| !v.is_empty()).or(file.web.tile_url),
                gcj02: match std::env::var("JIANDU_WEB_GCJ02") {
                    Ok(v) => matches!(v.trim(), "1" | "true" | "yes"),
                    Err(_) => file.web.gcj02,
                },
                tile_attribution: file.web.tile_attribution,
                public_url: file.web.public_url.map(|u| u.trim_end_matches('/').to_owned()),
                app_heartbeat_s: file.web.app_heartbeat_s,
                trusted_proxies: file.web.trusted_proxies,
            },
            public: file.public,
            supervise: file.supervise,
            data_dir,
        })
    }

    /// The evidence object store settings for [`jiandu_store::Blobs::open`].
    pub fn s3_settings(&self) -> jiandu_store::S3Settings {
        jiandu_store::S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            ..Default::default()
        }
    }

    /// Where the broker credential key lives (tokens an external Mosquitto can be given are
    /// derived from it; `jiandu broker sync` or `serve` with `mosquitto_dynsec` creates it).
    pub fn broker_key_path(&self) -> PathBuf {
        self.data_dir.join("broker.key")
    }

    /// The Mosquitto dynamic-security settings, when `--broker` and `mosquitto_dynsec` are set.
    pub fn dynsec(&self) -> Result<Option<jiandu_broker::dynsec::DynsecConfig>> {
        let Some(url) = self.broker.as_deref().filter(|_| self.mosquitto_dynsec) else { return Ok(None) };
        let (host, port) = parse_mqtt_url(url)?;
        let Some(admin_password) = self.mosquitto_admin_password.clone() else {
            bail!("mosquitto_dynsec needs the dynsec admin's password: set JIANDU_MOSQUITTO_ADMIN_PASSWORD");
        };
        Ok(Some(jiandu_broker::dynsec::DynsecConfig {
            host,
            port,
            admin_username: self.mosquitto_admin_username.clone(),
            admin_password,
            service: self.broker_username.clone().zip(self.broker_password.clone()),
            interval: std::time::Duration::from_secs(2),
        }))
    }

    /// Where the platform's receipt-signing key lives (`jiandu init` creates it, mode 0600).
    pub fn platform_key_path(&self) -> PathBuf {
        self.data_dir.join("platform.key")
    }

    /// The MQTT URL phones should use, as printed by `device add` (TLS when it is on).
    pub fn public_mqtt_url(&self) -> String {
        match (&self.broker, self.mqtts_listen, self.mqtt_listen) {
            (Some(url), _, _) => url.clone(),
            (None, Some(tls), _) => format!("mqtts://{tls}"),
            (None, None, Some(plain)) => format!("mqtt://{plain}"),
            (None, None, None) => String::new(),
        }
    }

    /// The base URL of the field app's links (`[web] public_url`, else the HTTPS or HTTP
    /// listener; an unspecified address becomes 127.0.0.1, so set `public_url` for phones).
    pub fn public_web_url(&self) -> Option<String> {
        if let Some(url) = &self.web.public_url {
            return Some(url.clone());
        }
        let shown = |a: SocketAddr| {
            if a.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], a.port())) } else { a }
        };
        match (self.https_listen, self.http_listen) {
            (Some(a), _) => Some(format!("https://{}", shown(a))),
            (None, Some(a)) => Some(format!("http://{}", shown(a))),
            (None, None) => None,
        }
    }

    /// Where `jiandu tls init` keeps the private CA and the server certificate.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }
}

/// Applies `JIANDU_DISPATCH_OFFER_TIMEOUT_S`, `…_RADIUS_M`, `…_FRESHNESS_S` and
/// `…_TWO_INSPECTOR_KINDS` (comma-separated) over the `[dispatch]` section.
fn dispatch_from_env(mut d: jiandu_dispatcher::DispatchConfig) -> Result<jiandu_dispatcher::DispatchConfig> {
    fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
        match std::env::var(name) {
            Ok(v) => v.trim().parse().map(Some).map_err(|_| anyhow::anyhow!("{name}: cannot parse {v:?}")),
            Err(_) => Ok(None),
        }
    }
    if let Some(v) = var("JIANDU_DISPATCH_OFFER_TIMEOUT_S")? {
        d.offer_timeout_s = v;
    }
    if let Some(v) = var("JIANDU_DISPATCH_RADIUS_M")? {
        d.radius_m = v;
    }
    if let Some(v) = var("JIANDU_DISPATCH_FRESHNESS_S")? {
        d.freshness_s = v;
    }
    if let Ok(v) = std::env::var("JIANDU_DISPATCH_TWO_INSPECTOR_KINDS") {
        d.two_inspector_kinds = v.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect();
    }
    jiandu_dispatcher::validate(&d).context("[dispatch]")?;
    Ok(d)
}

/// Makes a path absolute without requiring it to exist.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Splits `mqtt://host:port` into host and port (port defaults to 1883).
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16)> {
    let Some(rest) = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")) else {
        bail!("broker URL must look like mqtt://host:port, got {url:?}");
    };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            let port = port.parse().with_context(|| format!("port in {url:?} is not a number"))?;
            Ok((host.trim_matches(['[', ']']).to_owned(), port))
        }
        _ if !rest.is_empty() => Ok((rest.to_owned(), 1883)),
        _ => bail!("broker URL {url:?} has no host"),
    }
}

/// The commented config file `jiandu init` writes.
pub fn default_file(data_dir: &Path) -> String {
    format!(
        r#"# jiandu configuration. Flags and JIANDU_* environment variables override these keys.
data_dir = "{dir}"
mqtt_listen = "127.0.0.1:1883"
http_listen = "127.0.0.1:8080"
# db = "postgres://user@host/jiandu"         # default: sqlite://{{data_dir}}/jiandu.db
# object_store = "s3://bucket"                # default: file://{{data_dir}}/evidence
# broker = "mqtt://broker.example:1883"       # use an external broker instead of the embedded one
# broker_username = "jiandu"                  # service account on the external broker
# broker_password = "…"                       # prefer JIANDU_BROKER_PASSWORD in the environment
# mosquitto_dynsec = true                    # --broker is Mosquitto 2 + dynamic security: serve keeps its clients in step
# mosquitto_admin_username = "admin"          # the dynsec admin; password in JIANDU_MOSQUITTO_ADMIN_PASSWORD
# mqtt_hook_secret = "…"                      # EMQX/rmqtt HTTP auth hooks (/api/v1/mqtt/auth, /acl); or JIANDU_MQTT_HOOK_SECRET
# log_format = "json"
# max_packet_bytes = 307200                   # largest MQTT packet from a client
# max_connections = 100000
# heartbeat_log_bytes = 67108864              # heartbeats the broker holds for a lagging ingest
# evidence_inflight_bytes = 12582912          # evidence chunks in flight to ingest, all phones (flow control)
# max_sessions_per_device = 3                 # client ids one phone may hold connected (CONNACK 0x97 beyond)
# max_sessions_per_integration = 16           # the same for an integration account
# s3_endpoint = "http://127.0.0.1:9000"       # for object_store = "s3://…"; or JIANDU_S3_ENDPOINT, AWS_* for keys
# mqtts_listen = "0.0.0.0:8883"               # MQTT over TLS (needs [tls]); "off" turns a listener off
# https_listen = "0.0.0.0:8443"               # HTTPS (needs [tls]); mqtt_listen/http_listen = "off" too
# ws_listen = "0.0.0.0:8083"                  # MQTT over WebSocket on its own port (/mqtt; the web ports have it too)
#
# [tls]                                       # `jiandu tls init` makes a private CA and fills this in
# cert = "/var/lib/jiandu/tls/server.pem"     # server certificate chain (PEM), reloaded when renewed
# key = "/var/lib/jiandu/tls/server.key"      # its private key (PEM, mode 0600)
# client_ca = "/var/lib/jiandu/tls/ca.pem"    # phones must show a certificate from this CA (mTLS)
# client_auth = "required"                    # or "optional": checked only when a phone shows one
# reload_s = 60                               # how often the files are checked (SIGHUP: at once)
# handshake_timeout_s = 10
#
# [evidence]
# max_item_bytes = 2147483648                 # largest photo/video accepted (2 GiB)
# max_open_per_device = 8                     # uploads one phone may have open at once
# staging_quota_bytes = 34359738368           # bytes all open uploads may announce together
# device_staging_bytes = 4294967296           # bytes one phone's open uploads may announce together
# device_daily_bytes = 17179869184            # bytes one phone may upload in any 24 hours
# staging = "local"                           # or "database": chunks in the database, for several ingest processes (JIANDU_EVIDENCE_STAGING)
# staging_dir = "/var/lib/jiandu/staging"     # default: staging/ under a file:// object store
# idle_upload_hours = 72                      # untouched uploads are discarded after this
# checkpoint_interval_s = 300                 # sign the ledger head and publish it on jd/v1/platform/checkpoint (0: off)
#
# [dispatch]
# offer_timeout_s = 60                        # seconds to accept or decline before the next one is asked
# radius_m = 30000                            # farthest inspector to offer to; beyond, escalate
# freshness_s = 300                           # positions older than this are stale: not offered
# two_inspector_kinds = ["banquet"]           # report kinds that need two inspectors
#
# [lookup]
# rate_per_minute = 120                       # sustained look-ups per phone and minute (0: no limit)
# burst = 30                                  # look-ups a phone may make at once
# audit_batch = 5000                          # most audit rows per transaction and ledger entry
# refresh_ms = 1000                           # how often to check for a new registry import
#
# [cases]
# tick_ms = 5000                              # how often the case scheduler looks for due reminders/alarms
# stages_file = "/etc/jiandu/stages.toml"     # stage template; default {{data_dir}}/stages.toml if present
#
# [index]
# interval_s = 3600                           # how often the integrity index of the current period is recomputed
# formula_file = "/etc/jiandu/index.toml"     # index formula; default {{data_dir}}/index.toml if present
#
# [web]
# tile_url = "http://tiles.intranet/{{z}}/{{x}}/{{y}}.png"   # raster map tiles; default: plain background
# tile_attribution = "© county survey office"
# gcj02 = true                                # the tiles are GCJ-02 (most Chinese tile sets)
# trusted_proxies = ["127.0.0.1"]             # reverse proxies whose X-Forwarded-For names the client
# public_url = "https://jiandu.example:8443"  # where phones open the field app (device app_url links)
# app_heartbeat_s = 10                        # the field app's heartbeat interval (set by its link)
"#,
        dir = data_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "http_listen = \"127.0.0.1:9000\"\nmqtt_listen = \"127.0.0.1:9001\"\n").unwrap();
        let args = CommonArgs {
            config: Some(file),
            data_dir: Some(dir.path().to_path_buf()),
            http_listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.http_listen, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(c.mqtt_listen, Some("127.0.0.1:9001".parse().unwrap()));
        assert_eq!(c.mqtts_listen, None, "no TLS listener without a certificate");
        assert!(c.db.starts_with("sqlite://") && c.db.ends_with("jiandu.db"));
    }

    #[test]
    fn unknown_keys_in_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "http_lisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = Config::load(&CommonArgs { config: Some(file), ..Default::default() }).unwrap_err();
        assert!(format!("{err:#}").contains("http_lisen"), "{err:#}");
    }

    #[test]
    fn listeners_can_be_off_and_tls_needs_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "mqtt_listen = \"off\"\n[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_auth = \"optional\"\n",
        )
        .unwrap();
        let args = CommonArgs {
            config: Some(file.clone()),
            http_listen: Some("off".parse().unwrap()),
            https_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!((c.mqtt_listen, c.http_listen), (None, None));
        assert_eq!(c.mqtts_listen, Some("127.0.0.1:8883".parse().unwrap()));
        assert_eq!(c.https_listen, Some("127.0.0.1:0".parse().unwrap()));
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.client_auth, jiandu_tls::ClientAuth::Optional);
        assert!(tls.cert.is_absolute());
        let printed = serde_json::to_value(&c).unwrap();
        assert_eq!(printed["mqtt_listen"], "off");
        assert_eq!(printed["tls"]["client_auth"], "optional");

        std::fs::write(&file, "mqtts_listen = \"0.0.0.0:8883\"\n").unwrap();
        let err = Config::load(&CommonArgs { config: Some(file.clone()), ..Default::default() }).unwrap_err();
        assert!(format!("{err:#}").contains("needs a certificate"), "{err:#}");
        std::fs::write(&file, "[tls]\ncert = \"s.pem\"\n").unwrap();
        let err = Config::load(&CommonArgs { config: Some(file.clone()), ..Default::default() }).unwrap_err();
        assert!(format!("{err:#}").contains("key is not"), "{err:#}");
        assert!("nonsense".parse::<Listen>().is_err());
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(parse_mqtt_url("mqtt://10.0.0.1:1884").unwrap(), ("10.0.0.1".into(), 1884));
        assert_eq!(parse_mqtt_url("mqtt://broker").unwrap(), ("broker".into(), 1883));
        assert!(parse_mqtt_url("http://x").is_err());
        assert!(parse_mqtt_url("mqtt://x:notaport").is_err());
    }
}
