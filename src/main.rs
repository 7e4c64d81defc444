//! `jiandu`: the command line (DESIGN §5). Parses flags, resolves the configuration, and calls
//! into the role crates; nothing here knows MQTT packets or SQL.

mod accounts;
mod config;
mod demo;
mod serve;
mod telemetry;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{CommonArgs, Config};

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
    /// Everything embedded on a temporary data dir, with demo accounts; runs until Ctrl-C
    Demo {
        /// Number of demo devices to create
        #[arg(long, default_value_t = 3)]
        devices: usize,
    },
    /// Run the platform roles (all by default) until SIGINT/SIGTERM
    Serve {
        /// Roles to run, comma-separated: broker, web
        #[arg(long, value_delimiter = ',', default_value = "broker,web")]
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
    /// MQTT accounts of other systems, limited to the topic filters given
    Integration {
        #[command(subcommand)]
        action: IntegrationAction,
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
    /// List registered phones as JSON lines
    List,
    /// Revoke a phone: it can no longer log in
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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli.common)?;
    telemetry::init(config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli.command, config))
}

async fn run(command: Command, config: Config) -> Result<()> {
    match command {
        Command::Demo { devices } => demo::run(config, devices).await,
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
            DeviceAction::List => accounts::device_list(&config).await,
            DeviceAction::Revoke { id } => accounts::device_revoke(&config, &id).await,
        },
        Command::User { action } => match action {
            UserAction::Add { name, role, password_file } => {
                accounts::user_add(&config, &name, &role, password_file.as_deref()).await
            }
        },
        Command::Integration { action } => match action {
            IntegrationAction::Add { name, subscribe, publish } => {
                accounts::integration_add(&config, &name, &subscribe, &publish).await
            }
        },
    }
}
