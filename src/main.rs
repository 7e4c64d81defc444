//! `jiandu`: the command line (DESIGN §5). Parses flags, resolves the configuration, and calls
//! into the role crates; nothing here knows MQTT packets or SQL.

mod accounts;
mod cases_cli;
mod config;
mod demo;
mod evidence_cli;
mod import;
mod index_cli;
mod serve;
mod sim_cli;
mod telemetry;
mod tls_cli;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{CommonArgs, Config};

/// mimalloc instead of glibc's allocator: under `jiandu bench ingest` glibc spent a fifth of
/// the server's CPU in its arena locks, in consolidating free chunks and in faulting in the
/// pages of a heap it had just trimmed (persisted heartbeats/s 44,600 with glibc, 69,800 with
/// mimalloc, same run conditions).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its place in `mi_option_e` of mimalloc 3, which libmimalloc-sys
/// 0.1.49 builds (both pinned in Cargo.toml; a test checks the option's documented default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system at once (mimalloc 3 keeps it 1 s by default): with the
/// delay, an evidence upload's chunk buffers piled up to 65–80 MiB of server RSS against the
/// 64 MiB goal, at once 49–54 MiB, and the throughput stayed (`jiandu bench evidence`).
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists (the option
        // setter is not thread-safe).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// jiandu (监督): MQTT-driven field supervision for a county discipline-inspection office.
#[derive(Debug, Parser)]
#[command(name = "jiandu", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A live synthetic county: every role embedded, registries, simulated phones; runs until Ctrl-C
    Demo {
        /// Number of simulated phones
        #[arg(long, default_value_t = 200)]
        devices: usize,
    },
    /// Phone simulator and load generator: N phones from a credentials file against a broker
    Sim(sim_cli::SimArgs),
    /// Run the platform roles (all by default) until SIGINT/SIGTERM
    Serve {
        /// Roles to run, comma-separated: broker, ingest, dispatcher, oversight, web
        #[arg(long, value_delimiter = ',', default_value = "broker,ingest,dispatcher,oversight,web")]
        roles: Vec<serve::Role>,
        /// Print the resolved configuration (secrets redacted) and exit
        #[arg(long)]
        print_config: bool,
    },
    /// Create the data dir, its config file and database, and the first admin user
    Init {
        /// Name of the first admin user
        #[arg(long, default_value = "admin")]
        admin: String,
    },
    /// Work phones: add (prints credentials once), list, revoke
    Device {
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// Web users
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// An external broker: keep Mosquitto's dynamic security in step with the accounts
    Broker {
        #[command(subcommand)]
        action: BrokerAction,
    },
    /// MQTT accounts of other systems, limited to the topic filters given
    Integration {
        #[command(subcommand)]
        action: IntegrationAction,
    },
    /// Evidence receipts: check one offline against the platform's public key
    Receipt {
        #[command(subcommand)]
        action: ReceiptAction,
    },
    /// Re-walk the ledger's hash chain, check every evidence record and look-up audit batch
    /// against it, and that the ledger extends the checkpoints given (--deep: re-hash blobs)
    Verify {
        /// Also re-read and re-hash every stored blob
        #[arg(long)]
        deep: bool,
        /// A signed checkpoint (`jiandu ledger checkpoint`, or the retained
        /// jd/v1/platform/checkpoint) the ledger must still extend; repeatable
        #[arg(long, value_name = "FILE")]
        checkpoint: Vec<PathBuf>,
        /// Trusted platform public key: hex, or a file with the hex or the JSON of
        /// GET /api/v1/ledger/key; repeatable [default: the keys in the database, with a warning]
        #[arg(long, value_name = "HEX|FILE")]
        public_key: Vec<String>,
    },
    /// The ledger: export a signed checkpoint of its head
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// Import a registry CSV (UTF-8 or GBK) as a new version; --dry-run shows the diff only
    Import {
        /// Which registry the file holds
        #[arg(value_enum)]
        registry: RegistryArg,
        /// The CSV file (Chinese or English headers)
        file: PathBuf,
        /// Check and diff against the current version without writing anything
        #[arg(long)]
        dry_run: bool,
        /// Text encoding of the file: auto, utf-8 or gbk (GB18030)
        #[arg(long, default_value = "auto")]
        encoding: jiandu_oversight::Encoding,
    },
    /// Registries: generate the synthetic seed-county files
    Registry {
        #[command(subcommand)]
        action: RegistryAction,
    },
    /// Registry look-ups: the audit trail (for auditors)
    Lookup {
        #[command(subcommand)]
        action: LookupAction,
    },
    /// The official working-day calendar used for case deadlines
    Calendar {
        #[command(subcommand)]
        action: CalendarAction,
    },
    /// Disciplinary cases
    Case {
        #[command(subcommand)]
        action: CaseAction,
    },
    /// The integrity index per township and department
    Index {
        #[command(subcommand)]
        action: IndexAction,
    },
    /// TLS: a private CA and server certificate for an office without a public CA; phone certificates
    Tls {
        #[command(subcommand)]
        action: TlsAction,
    },
    /// Benchmarks; each prints our figure beside a reference run
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

/// The registries `jiandu import` accepts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RegistryArg {
    /// Party members
    Members,
    /// Public-institution staff
    Staff,
    /// Official vehicles
    Vehicles,
    /// Departments with power and responsibility lists
    Departments,
}

impl From<RegistryArg> for jiandu_store::RegistryName {
    fn from(r: RegistryArg) -> Self {
        match r {
            RegistryArg::Members => jiandu_store::RegistryName::Members,
            RegistryArg::Staff => jiandu_store::RegistryName::Staff,
            RegistryArg::Vehicles => jiandu_store::RegistryName::Vehicles,
            RegistryArg::Departments => jiandu_store::RegistryName::Departments,
        }
    }
}

#[derive(Debug, Subcommand)]
enum RegistryAction {
    /// Write members.csv, staff.csv, vehicles.csv and departments.csv at the seed county's scale
    Generate {
        /// Output directory
        dir: PathBuf,
        /// Random seed (the same seed gives the same files)
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Debug, Subcommand)]
enum CalendarAction {
    /// Check a year's calendar file (holidays, worked weekend days) and put it in force
    Load {
        /// TOML file, shaped like oversight/calendar/2026.toml
        file: PathBuf,
    },
    /// Print the years in force as JSON lines
    Show,
}

#[derive(Debug, Subcommand)]
enum IndexAction {
    /// Recompute a period now and print one JSON line per unit
    Compute {
        /// Period: 2026-Q4, 2026-11 or 2026 [default: the current one]
        #[arg(long)]
        period: Option<String>,
    },
    /// Import indicators the platform cannot see (CSV: unit,period,indicator,value)
    ImportIndicators {
        /// CSV file
        file: PathBuf,
    },
    /// The index formula
    Formula {
        #[command(subcommand)]
        action: FormulaAction,
    },
    /// Print the yearly assessment as CSV (one row per unit)
    Assessment {
        /// Year [default: this year]
        #[arg(long)]
        year: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum FormulaAction {
    /// Store a formula file (shaped like oversight/index.toml) as the version in force
    Load {
        /// TOML file
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CaseAction {
    /// Print cases as JSON lines, newest first
    List {
        /// Only cases of this unit
        #[arg(long)]
        unit: Option<String>,
        /// Only open cases past a deadline
        #[arg(long)]
        overdue: bool,
        /// Most cases to print
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
enum LookupAction {
    /// Print audited look-ups as JSON lines, newest first
    Audit {
        /// Most rows to print
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only rows with an id below this (paging)
        #[arg(long)]
        before: Option<i64>,
        /// Only look-ups by this device
        #[arg(long)]
        device: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Heartbeats persisted/s end to end with many phones, beside the bare broker relay,
    /// Mosquitto and raw inserts; server memory per idle phone. With --broker mosquitto (a
    /// private Mosquitto 2 with dynamic security) or --broker mqtt://HOST:PORT (a running one;
    /// --broker-pid for its memory): persisted heartbeats/s and broker memory per idle phone
    /// through that broker, beside the embedded broker's
    Ingest(jiandu_sim::bench::ingest::IngestBenchArgs),
    /// Registry look-ups over MQTT at the phone (p50/p99, throughput) and import time
    Lookup(jiandu_sim::bench::BenchArgs),
    /// Dispatch: report → offer at the phone with 100,000 live devices (p50/p99/max), and the
    /// nearest-device query at 1,000,000 devices against a linear scan
    Dispatch(jiandu_sim::bench::dispatch::DispatchArgs),
    /// Evidence: 1 GiB over MQTT against `cp` and against a bare relay of the same chunks
    /// (MiB/s, server RSS growth), and `verify --deep` against `sha256sum` (size:
    /// JIANDU_BENCH_EVIDENCE_MB)
    Evidence(jiandu_sim::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum LedgerAction {
    /// Sign the ledger head with the platform key; prints the checkpoint JSON
    Checkpoint {
        /// Also write it to this file (keep it away from the server)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TlsAction {
    /// Make a private CA and a server certificate in {data-dir}/tls, set [tls] in jiandu.toml and
    /// print how to install the CA on phones; run again to renew the server certificate
    Init {
        /// Host names phones and browsers reach the server by, comma-separated
        #[arg(long, value_delimiter = ',', value_name = "H1,H2")]
        hosts: Vec<String>,
        /// IP addresses they reach it by, comma-separated
        #[arg(long, value_delimiter = ',', value_name = "IP1,IP2")]
        ip: Vec<IpAddr>,
        /// Office name written into the CA certificate
        #[arg(long, default_value = "jiandu")]
        office: String,
        /// Also require phones to show a client certificate from the CA (mTLS; see `tls device`)
        #[arg(long)]
        client_certs: bool,
        /// Make a new CA even if one exists (every phone must then install the new one)
        #[arg(long)]
        new_ca: bool,
    },
    /// Issue a phone's client certificate (CN = device id) from the private CA
    Device {
        /// Device id
        id: String,
        /// Directory for {id}.pem and {id}.key [default: {data-dir}/tls/devices]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum BrokerAction {
    /// Make Mosquitto 2's dynamic-security clients, roles and ACLs match the devices,
    /// integrations, the service account and revocations (needs --broker and mosquitto_dynsec)
    Sync,
    /// Issue (or re-issue) the token of a service account the roles log in with on an external
    /// broker whose HTTP hooks ask jiandu (EMQX, rmqtt); prints {"username","password"} once
    ServiceAccount {
        /// Account name (not `jiandu`, whose token an embedded-broker `serve` rotates)
        #[arg(default_value = "jiandu-svc")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ReceiptAction {
    /// Check a stored receipt (the JSON received on inbox/receipt); exits non-zero if invalid
    Verify {
        /// The receipt file
        file: PathBuf,
        /// Public key: hex, or a file with the hex or the JSON of GET /api/v1/ledger/key
        /// [default: the platform key in the configured database]
        #[arg(long, value_name = "HEX|FILE")]
        public_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceAction {
    /// Register a phone; prints {"device","username","password","mqtt"} once on stdout
    Add {
        /// Human name, e.g. the inspector's name or the phone's label
        name: String,
        /// Staff id of the inspector who carries it
        #[arg(long)]
        staff: Option<String>,
    },
    /// Register N phones at once; writes their credentials (JSON lines, mode 0600) for `jiandu sim`
    AddBulk {
        /// How many phones
        count: usize,
        /// Credentials file to write
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Name prefix (phones are named "{prefix} 1", "{prefix} 2", …)
        #[arg(long, default_value = "模拟手机")]
        prefix: String,
    },
    /// List registered phones as JSON lines
    List,
    /// Revoke a phone: it can no longer log in, and its live MQTT sessions end within seconds
    Revoke {
        /// Device id
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Add a web user; prints {"username","password"} once on stdout
    Add {
        /// Login name
        name: String,
        /// Role
        #[arg(long, value_parser = ["dispatcher", "leader", "admin", "auditor"])]
        role: String,
        /// Read the password from this file ("-" for stdin) instead of generating one
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Disable a web user: no more logins, and their open web sessions and API logins are
    /// refused from their next request (a ledger entry); the last enabled admin cannot be disabled
    Disable {
        /// Login name
        name: String,
    },
    /// Let a disabled web user log in again (a ledger entry)
    Enable {
        /// Login name
        name: String,
    },
    /// Change a web user's role, effective from their next request (a ledger entry)
    Role {
        /// Login name
        name: String,
        /// New role
        #[arg(value_parser = ["dispatcher", "leader", "admin", "auditor"])]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum IntegrationAction {
    /// Add an integration account; prints {"username","password","mqtt"} once on stdout
    Add {
        /// Account name (also its MQTT username and client-id prefix)
        name: String,
        /// Topic filter it may subscribe to (repeatable), e.g. 'jd/v1/events/#'
        #[arg(long = "subscribe", value_name = "FILTER", num_args = 1..)]
        subscribe: Vec<String>,
        /// Topic filter it may publish to (repeatable), e.g. 'jd/v1/reports'
        #[arg(long = "publish", value_name = "FILTER", num_args = 1..)]
        publish: Vec<String>,
    },
    /// Disable an integration account: it can no longer log in (MQTT or HTTP Bearer), and its
    /// live MQTT sessions end within seconds
    Disable {
        /// Account name
        name: String,
    },
}

fn main() -> Result<()> {
    tune_allocator();
    let mut cli = Cli::parse();
    // `bench ingest --broker` names the broker to benchmark (possibly "mosquitto", one the
    // bench starts itself), not a broker for this process's roles.
    if let Command::Bench { which: BenchCommand::Ingest(args) } = &mut cli.command {
        args.broker = cli.common.broker.take();
    }
    let config = Config::load(&cli.common)?;
    telemetry::init(config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli.command, config, cli.common))
}

async fn run(command: Command, config: Config, common: CommonArgs) -> Result<()> {
    match command {
        Command::Demo { devices } => demo::run(config, devices).await,
        Command::Sim(args) => sim_cli::run_cli(&config, args).await,
        Command::Serve { roles, print_config } => {
            if print_config {
                println!("{}", serde_json::to_string_pretty(&config)?);
                return Ok(());
            }
            serve::run(config, &roles).await
        }
        Command::Init { admin } => accounts::init(&config, &admin).await,
        Command::Device { action } => match action {
            DeviceAction::Add { name, staff } => accounts::device_add(&config, &name, staff.as_deref()).await,
            DeviceAction::AddBulk { count, out, prefix } => sim_cli::add_bulk(&config, count, &prefix, &out).await,
            DeviceAction::List => accounts::device_list(&config).await,
            DeviceAction::Revoke { id } => accounts::device_revoke(&config, &id).await,
        },
        Command::User { action } => match action {
            UserAction::Add { name, role, password_file } => {
                accounts::user_add(&config, &name, &role, password_file.as_deref()).await
            }
            UserAction::Disable { name } => accounts::user_change(&config, &name, accounts::UserChange::Disable).await,
            UserAction::Enable { name } => accounts::user_change(&config, &name, accounts::UserChange::Enable).await,
            UserAction::Role { name, role } => {
                accounts::user_change(&config, &name, accounts::UserChange::Role(role)).await
            }
        },
        Command::Broker { action: BrokerAction::Sync } => accounts::broker_sync(&config).await,
        Command::Broker { action: BrokerAction::ServiceAccount { name } } => {
            accounts::service_account(&config, &name).await
        }
        Command::Integration { action } => match action {
            IntegrationAction::Add { name, subscribe, publish } => {
                accounts::integration_add(&config, &name, &subscribe, &publish).await
            }
            IntegrationAction::Disable { name } => accounts::integration_disable(&config, &name).await,
        },
        Command::Receipt { action } => match action {
            ReceiptAction::Verify { file, public_key } => {
                evidence_cli::receipt_verify(&config, &file, public_key.as_deref()).await
            }
        },
        Command::Verify { deep, checkpoint, public_key } => {
            evidence_cli::verify(&config, deep, &checkpoint, &public_key).await
        }
        Command::Ledger { action } => match action {
            LedgerAction::Checkpoint { out } => evidence_cli::ledger_checkpoint(&config, out.as_deref()).await,
        },
        Command::Import { registry, file, dry_run, encoding } => {
            import::import(&config, registry.into(), &file, dry_run, encoding).await
        }
        Command::Registry { action } => match action {
            RegistryAction::Generate { dir, seed } => import::generate_files(&dir, seed),
        },
        Command::Lookup { action } => match action {
            LookupAction::Audit { limit, before, device } => {
                import::audit(&config, limit, before, device.as_deref()).await
            }
        },
        Command::Calendar { action } => match action {
            CalendarAction::Load { file } => cases_cli::calendar_load(&config, &file).await,
            CalendarAction::Show => cases_cli::calendar_show(&config).await,
        },
        Command::Case { action } => match action {
            CaseAction::List { unit, overdue, limit } => {
                cases_cli::case_list(&config, unit.as_deref(), overdue, limit).await
            }
        },
        Command::Index { action } => match action {
            IndexAction::Compute { period } => index_cli::compute(&config, period.as_deref()).await,
            IndexAction::ImportIndicators { file } => index_cli::import_indicators(&config, &file).await,
            IndexAction::Formula { action: FormulaAction::Load { file } } => {
                index_cli::formula_load(&config, &file).await
            }
            IndexAction::Assessment { year } => index_cli::assessment(&config, year).await,
        },
        Command::Tls { action } => match action {
            TlsAction::Init { hosts, ip, office, client_certs, new_ca } => {
                tls_cli::init(&config, common.config.as_deref(), &hosts, &ip, &office, client_certs, new_ca)
            }
            TlsAction::Device { id, out } => tls_cli::device(&config, &id, out.as_deref()).await,
        },
        Command::Bench { which } => match which {
            BenchCommand::Ingest(args) => Ok(jiandu_sim::bench::ingest::run(args).await?),
            BenchCommand::Lookup(args) => Ok(jiandu_sim::bench::lookup::run(&args).await?),
            BenchCommand::Dispatch(args) => Ok(jiandu_sim::bench::dispatch::run(args).await?),
            BenchCommand::Evidence(args) => Ok(jiandu_sim::bench::evidence::run(&args).await?),
        },
    }
}

#[cfg(test)]
mod tests {
    /// The option index is mimalloc's purge delay: it reads its default in mimalloc 3 (1,000 ms) and
    /// takes a new value (the test binary runs on mimalloc too, without `tune_allocator`).
    #[test]
    fn the_purge_delay_option_is_mimallocs() {
        // SAFETY: reading and setting an option; no other test touches mimalloc's options.
        unsafe {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY), 1000);
            }
            libmimalloc_sys::mi_option_set(super::MI_OPTION_PURGE_DELAY, 0);
            assert_eq!(libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY), 0);
        }
    }
}
