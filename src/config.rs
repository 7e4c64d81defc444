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
    /// Address of the embedded MQTT broker (3.1.1 and 5) [default: 127.0.0.1:1883]
    #[arg(long, env = "JIANDU_MQTT_LISTEN", global = true, value_name = "ADDR")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Address of the web view and REST API [default: 127.0.0.1:8080]
    #[arg(long, env = "JIANDU_HTTP_LISTEN", global = true, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
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
    mqtt_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    db: Option<String>,
    object_store: Option<String>,
    broker: Option<String>,
    broker_username: Option<String>,
    broker_password: Option<String>,
    log_format: Option<LogFormat>,
    max_packet_bytes: Option<usize>,
    max_connections: Option<usize>,
}

/// The resolved configuration every role is started with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Public MQTT address of the embedded broker.
    pub mqtt_listen: SocketAddr,
    /// HTTP address.
    pub http_listen: SocketAddr,
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
    /// Log format.
    pub log_format: LogFormat,
    /// Largest MQTT packet accepted from a client.
    pub max_packet_bytes: usize,
    /// Most MQTT client connections at once.
    pub max_connections: usize,
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
        Ok(Config {
            mqtt_listen: args.mqtt_listen.or(file.mqtt_listen).unwrap_or(([127, 0, 0, 1], 1883).into()),
            http_listen: args.http_listen.or(file.http_listen).unwrap_or(([127, 0, 0, 1], 8080).into()),
            db,
            object_store,
            broker,
            broker_username: std::env::var("JIANDU_BROKER_USERNAME").ok().or(file.broker_username),
            broker_password: std::env::var("JIANDU_BROKER_PASSWORD").ok().or(file.broker_password),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            max_packet_bytes: file.max_packet_bytes.unwrap_or(300 * 1024),
            max_connections: file.max_connections.unwrap_or(100_000),
            data_dir,
        })
    }

    /// The MQTT URL phones should use, as printed by `device add`.
    pub fn public_mqtt_url(&self) -> String {
        match &self.broker {
            Some(url) => url.clone(),
            None => format!("mqtt://{}", self.mqtt_listen),
        }
    }
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
# log_format = "json"
# max_packet_bytes = 307200                   # largest MQTT packet from a client
# max_connections = 100000
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
        assert_eq!(c.http_listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.mqtt_listen, "127.0.0.1:9001".parse().unwrap());
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
    fn mqtt_urls() {
        assert_eq!(parse_mqtt_url("mqtt://10.0.0.1:1884").unwrap(), ("10.0.0.1".into(), 1884));
        assert_eq!(parse_mqtt_url("mqtt://broker").unwrap(), ("broker".into(), 1883));
        assert!(parse_mqtt_url("http://x").is_err());
        assert!(parse_mqtt_url("mqtt://x:notaport").is_err());
    }
}
