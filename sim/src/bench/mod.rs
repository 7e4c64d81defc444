//! `jiandu bench …`: the shared harness behind every benchmark.
//!
//! One way to start the system under test ([`SystemUnderTest`]: this very binary as
//! `jiandu serve` on a temp data dir and ephemeral ports), one way to measure ([`measure`]:
//! warm-up, repetitions, median and spread) and one way to print ([`Report`]: an aligned table
//! with the reference beside our figure and the ratio, or `--json`). Each benchmark
//! (`bench/ingest.rs`, …) measures its figure and a reference run in the same process or script.

pub mod dispatch;
pub mod evidence;
pub mod ingest;

pub mod lookup;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

/// Options every benchmark takes.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
    /// Repetitions of each measurement (after one warm-up)
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Database for the system under test: "sqlite" (default) or a postgres:// URL
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Also write the JSON report to this file (beside the table on stdout)
    #[arg(long)]
    pub json_file: Option<PathBuf>,
}

/// Summary of repeated measurements of one quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    /// Median of the repetitions.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Every repetition, in order.
    pub runs: Vec<f64>,
}

impl Stat {
    /// Summarises the values (at least one).
    pub fn of(mut runs: Vec<f64>) -> Stat {
        let ordered = {
            let mut v = runs.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            v
        };
        let median = if ordered.is_empty() {
            f64::NAN
        } else if ordered.len() % 2 == 1 {
            ordered[ordered.len() / 2]
        } else {
            (ordered[ordered.len() / 2 - 1] + ordered[ordered.len() / 2]) / 2.0
        };
        runs.shrink_to_fit();
        Stat {
            median,
            min: ordered.first().copied().unwrap_or(f64::NAN),
            max: ordered.last().copied().unwrap_or(f64::NAN),
            runs,
        }
    }
}

/// Runs `f` once to warm up, then `repetitions` times, and summarises the values it returns.
pub async fn measure<F, Fut>(label: &str, repetitions: usize, mut f: F) -> Result<Stat>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    eprintln!("[bench] {label}: warm-up");
    f(0).await.with_context(|| format!("{label}: warm-up"))?;
    let mut runs = Vec::with_capacity(repetitions);
    for i in 1..=repetitions.max(1) {
        let v = f(i).await.with_context(|| format!("{label}: run {i}"))?;
        eprintln!("[bench] {label}: run {i}/{}: {v:.3}", repetitions.max(1));
        runs.push(v);
    }
    Ok(Stat::of(runs))
}

/// Percentile (0..=100) of a sample, by nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One line of a report: our figure, optionally beside a reference, and the goal.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub metric: String,
    /// Unit of the values.
    pub unit: String,
    /// Our figure.
    pub ours: Stat,
    /// The reference it is compared with.
    pub reference: Option<(String, Stat)>,
    /// The goal, in words (e.g. "≥ 100000").
    pub goal: Option<String>,
}

/// A benchmark's output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Benchmark name.
    pub bench: String,
    /// Conditions (devices, sizes, database…).
    pub setup: Value,
    /// Results.
    pub rows: Vec<Row>,
}

impl Report {
    /// Prints the report as a table (stdout) or as JSON, and writes the JSON to the file the
    /// `--json-file` option names, if any.
    pub fn print(&self, args: &BenchArgs) {
        if let Some(path) = &args.json_file
            && let Err(e) = std::fs::write(path, serde_json::to_string_pretty(self).unwrap_or_default())
        {
            eprintln!("[bench] cannot write {}: {e}", path.display());
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(self).unwrap_or_default());
            return;
        }
        println!("jiandu bench {}  {}", self.bench, self.setup);
        println!(
            "{:<44} {:>14} {:>22} {:>14} {:>8}  goal",
            "metric", "ours (median)", "reference", "ref (median)", "ratio"
        );
        for r in &self.rows {
            let (rname, rval, ratio) = match &r.reference {
                Some((name, s)) => {
                    (name.as_str(), format!("{:.2}", s.median), format!("{:.2}", r.ours.median / s.median))
                }
                None => ("", String::new(), String::new()),
            };
            println!(
                "{:<44} {:>14} {:>22} {:>14} {:>8}  {}",
                format!("{} [{}]", r.metric, r.unit),
                format!("{:.2}", r.ours.median),
                rname,
                rval,
                ratio,
                r.goal.as_deref().unwrap_or("")
            );
            println!("{:<44} {:>14}", "", format!("{:.2}..{:.2}", r.ours.min, r.ours.max));
        }
    }
}

/// A `jiandu serve` child process on a temp data dir and ephemeral ports.
pub struct SystemUnderTest {
    /// Its data dir (removed on drop).
    pub dir: tempfile::TempDir,
    /// Database URL.
    pub db: String,
    /// MQTT host and port.
    pub mqtt: (String, u16),
    /// HTTP base URL.
    pub http: String,
    child: Child,
}

impl SystemUnderTest {
    /// Initialises a data dir and starts `jiandu serve` with `roles` (e.g. "broker,ingest,web").
    /// `db` is "sqlite" or a PostgreSQL URL (an empty database is expected).
    pub fn start(db: &str, roles: &str, extra_env: &[(&str, &str)]) -> Result<SystemUnderTest> {
        let dir = tempfile::Builder::new().prefix("jiandu-bench-").tempdir()?;
        let db =
            if db == "sqlite" { format!("sqlite://{}", dir.path().join("jiandu.db").display()) } else { db.to_owned() };
        run_cli(dir.path(), &db, &["init"])?;
        let log = std::fs::File::create(dir.path().join("serve.log"))?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve", "--roles", roles, "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .env("JIANDU_DATA_DIR", dir.path())
            .env("JIANDU_DB", &db)
            .env("RUST_LOG", std::env::var("JIANDU_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting jiandu serve")?;
        let state = wait_for_json(&dir.path().join("serve.json"), Duration::from_secs(60))?;
        let mqtt = state["mqtt"].as_str().unwrap_or_default().trim_start_matches("mqtt://").to_owned();
        let (host, port) = mqtt.rsplit_once(':').context("serve.json has no MQTT address")?;
        Ok(SystemUnderTest {
            mqtt: (host.to_owned(), port.parse()?),
            http: state["http"].as_str().unwrap_or_default().to_owned(),
            db,
            dir,
            child,
        })
    }

    /// Runs a CLI command on the same data dir; returns the last stdout line as JSON.
    pub fn cli(&self, args: &[&str]) -> Result<Value> {
        run_cli(self.dir.path(), &self.db, args)
    }

    /// Resident set size of the server process in bytes (Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.child.id())
    }

    /// Process id of the server (for figures read from /proc).
    pub fn child_id(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }
}

impl Drop for SystemUnderTest {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        // The server's log outlives the temporary data dir when asked for (debugging a bench).
        if let Ok(keep) = std::env::var("JIANDU_BENCH_KEEP_LOG") {
            std::fs::copy(self.dir.path().join("serve.log"), keep).ok();
        }
    }
}

/// Resident set size of a process in bytes, from /proc (Linux).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system, every thread, living or ended) a process has used so far, in
/// seconds, from /proc (Linux); `None` when it cannot be read. A figure per unit of work (CPU
/// ms per MiB, µs per heartbeat) says what a rate on this machine cannot: how much of the
/// machine the server needs, apart from the load generator sharing its cores.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are the 12th and 13th after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// CPU used by the server's processes and by this process (the load generator) over a span of
/// work.
#[derive(Debug, Clone)]
pub struct CpuSpan {
    servers: Vec<u32>,
    start: (f64, f64),
}

impl CpuSpan {
    /// Starts counting for the server processes `servers` (and this process).
    pub fn start(servers: &[u32]) -> CpuSpan {
        let start = (Self::servers(servers), cpu_seconds(None).unwrap_or(0.0));
        CpuSpan { servers: servers.to_vec(), start }
    }

    fn servers(pids: &[u32]) -> f64 {
        pids.iter().map(|&p| cpu_seconds(Some(p)).unwrap_or(0.0)).sum()
    }

    /// CPU seconds used since [`CpuSpan::start`]: (the servers together, this process).
    pub fn used(&self) -> (f64, f64) {
        let server = Self::servers(&self.servers) - self.start.0;
        let own = cpu_seconds(None).unwrap_or(0.0) - self.start.1;
        (server.max(0.0), own.max(0.0))
    }
}

/// Runs `jiandu ARGS` (this binary) on a data dir and database; returns the last stdout line as
/// JSON.
pub(crate) fn run_cli(dir: &Path, db: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new(std::env::current_exe()?)
        .args(args)
        .env("JIANDU_DATA_DIR", dir)
        .env("JIANDU_DB", db)
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!("jiandu {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null))
}

/// Waits until `path` holds a JSON document (e.g. `serve.json`) and returns it.
pub(crate) fn wait_for_json(path: &PathBuf, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{} did not appear within {limit:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_percentiles() {
        let s = Stat::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(vec![1.0, 2.0, 3.0, 4.0]).median, 2.5);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
    }
}
