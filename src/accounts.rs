//! `init`, `device`, `user` and `integration` commands: the operator's account administration.
//! Credentials are printed once, as one JSON object on stdout; only hashes are stored.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use jiandu_store::{AccountKind, CredentialKey, Role, Store};
use serde_json::json;

use crate::config::{self, Config};

/// Opens (and migrates) the configured database, creating the data dir for SQLite.
pub async fn open_store(config: &Config) -> Result<Store> {
    if config.db.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    }
    let store =
        Store::connect(&config.db).await.with_context(|| format!("opening database {}", redact_url(&config.db)))?;
    let key_path = config.broker_key_path();
    match std::fs::read_to_string(&key_path) {
        Ok(text) => Ok(store.with_credential_key(
            CredentialKey::from_hex(&text).with_context(|| format!("reading {}", key_path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(store),
        Err(e) => Err(e).with_context(|| format!("reading {}", key_path.display())),
    }
}

/// Makes the broker credential key (0600) unless it exists; true when it was made now.
pub fn ensure_broker_key(config: &Config) -> Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config.broker_key_path();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(mut f) => {
            writeln!(f, "{}", CredentialKey::generate().to_hex().expose())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// `jiandu broker service-account NAME`: a service account (every topic) for the roles on an
/// external broker that asks jiandu's HTTP hooks; its token is printed once.
pub async fn service_account(config: &Config, name: &str) -> Result<()> {
    if name == crate::serve::SERVICE_ACCOUNT {
        bail!("'{name}' is the embedded broker's own account, whose token serve rotates; choose another name");
    }
    let store = open_store(config).await?;
    let token = store.ensure_service_account(name).await.with_context(|| format!("service account {name}"))?;
    println!("{}", json!({"username": name, "password": token.expose()}));
    Ok(())
}

/// `jiandu broker sync`: makes Mosquitto's dynamic security hold every live device and account
/// (and the roles' service account) and no revoked one; prints what it did as JSON.
pub async fn broker_sync(config: &Config) -> Result<()> {
    let Some(dynsec) = config.dynsec()? else {
        bail!("broker sync needs --broker mqtt://HOST:PORT and mosquitto_dynsec = true (JIANDU_MOSQUITTO_DYNSEC=1)");
    };
    if ensure_broker_key(config)? {
        eprintln!(
            "made the broker credential key {}: phones registered from now on can be given to Mosquitto; \
             copy it (mode 0600) to every host that registers phones or runs serve",
            config.broker_key_path().display()
        );
    }
    let store = open_store(config).await?;
    let report = jiandu_broker::dynsec::sync(&store, &dynsec).await?;
    if !report.not_derivable.is_empty() {
        eprintln!(
            "{} login(s) have tokens made before the broker credential key and cannot be given to Mosquitto; \
             register them again: {}",
            report.not_derivable.len(),
            report.not_derivable.join(", ")
        );
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Who the ledger names for changes made on the command line: `cli:` and the operating-system
/// user running it (the web view names the logged-in admin instead).
fn cli_actor() -> String {
    let who = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_default();
    let who: String = who.chars().filter(|c| c.is_alphanumeric() || "._-".contains(*c)).take(64).collect();
    if who.is_empty() { "cli".to_owned() } else { format!("cli:{who}") }
}

/// Hides a password in a database URL for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// `jiandu init`: data dir, config file, database, first admin.
pub async fn init(config: &Config, admin: &str) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let file = config.data_dir.join(config::CONFIG_FILE);
    if !file.exists() {
        std::fs::write(&file, config::default_file(&config::absolute(&config.data_dir)))
            .with_context(|| format!("writing {}", file.display()))?;
        eprintln!("wrote {}", file.display());
    }
    let store = open_store(config).await?;
    crate::evidence_cli::init_platform_key(config, &store).await?;
    let admin_json = if store.list_users().await?.iter().any(|u| u.role == Role::Admin) {
        eprintln!("an admin user exists already; none created");
        None
    } else {
        let (user, password) = store.create_user(admin, Role::Admin, None, &cli_actor()).await?;
        Some(json!({"username": user.name, "password": password.expose(), "role": "admin"}))
    };
    store.close().await;
    if let Some(j) = admin_json {
        println!("{j}");
        eprintln!("the admin password above is shown only once");
    }
    Ok(())
}

/// `jiandu device add`.
pub async fn device_add(config: &Config, name: &str, staff: Option<&str>) -> Result<()> {
    let store = open_store(config).await?;
    let (device, token) = store.create_device(name, staff).await?;
    store.close().await;
    let app_url = config
        .public_web_url()
        .map(|base| jiandu_web::app_url(&base, &device.id, token.expose(), config.web.app_heartbeat_s()));
    println!(
        "{}",
        json!({"device": device.id, "username": device.id, "password": token.expose(), "mqtt": config.public_mqtt_url(),
               "app_url": app_url})
    );
    Ok(())
}

/// `jiandu device list`: one JSON object per line.
pub async fn device_list(config: &Config) -> Result<()> {
    let store = open_store(config).await?;
    for d in store.list_devices().await? {
        println!(
            "{}",
            json!({"device": d.id, "name": d.name, "staff": d.staff_id, "created_at": d.created_at, "revoked_at": d.revoked_at})
        );
    }
    store.close().await;
    Ok(())
}

/// `jiandu device revoke`.
pub async fn device_revoke(config: &Config, id: &str) -> Result<()> {
    let store = open_store(config).await?;
    let d = store.revoke_device(id, &cli_actor()).await.with_context(|| format!("revoking device {id}"))?;
    store.close().await;
    eprintln!("device {} ({}) revoked; it can no longer log in", d.id, d.name);
    Ok(())
}

/// `jiandu integration disable`: writes the revocation; a running broker ends the account's
/// sessions within a second of seeing it.
pub async fn integration_disable(config: &Config, name: &str) -> Result<()> {
    let store = open_store(config).await?;
    let account = store.account(name).await?.with_context(|| format!("no integration account named {name:?}"))?;
    if account.kind != jiandu_store::AccountKind::Integration {
        bail!("{name:?} is not an integration account");
    }
    let a = store.revoke_account(name, &cli_actor()).await.with_context(|| format!("disabling integration {name}"))?;
    store.close().await;
    eprintln!("integration {} disabled; it can no longer log in", a.name);
    Ok(())
}

/// `jiandu user add`.
pub async fn user_add(config: &Config, name: &str, role: &str, password_file: Option<&Path>) -> Result<()> {
    let role: Role = role.parse().map_err(|e| anyhow::anyhow!("--role: {e}"))?;
    let given = match password_file {
        None => None,
        Some(p) => {
            let mut s = String::new();
            if p == Path::new("-") {
                std::io::stdin().read_to_string(&mut s)?;
            } else {
                s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            }
            let s = s.trim_end_matches(['\r', '\n']).to_owned();
            if s.chars().count() < 12 {
                bail!("--password-file: the password must be at least 12 characters");
            }
            Some(s)
        }
    };
    let store = open_store(config).await?;
    let (user, password) = store.create_user(name, role, given.as_deref(), &cli_actor()).await?;
    store.close().await;
    let mut out = json!({"username": user.name, "role": user.role.to_string()});
    if given.is_none() {
        out["password"] = json!(password.expose());
    }
    println!("{out}");
    Ok(())
}

/// `jiandu integration add`.
pub async fn integration_add(config: &Config, name: &str, subscribe: &[String], publish: &[String]) -> Result<()> {
    if !jiandu_schemas::topic::valid_id(name) {
        bail!("NAME: use 1-64 letters, digits, '-', '_' or '.', got {name:?}");
    }
    if subscribe.is_empty() && publish.is_empty() {
        bail!("give at least one --subscribe or --publish filter");
    }
    for f in publish {
        if f.starts_with("jd/v1/dev/") || f.starts_with("owntracks/") || f == "#" || f.starts_with('+') {
            eprintln!(
                "note: --publish {f:?} covers device topics; integrations can never publish as a device, \
                 so those topics stay refused"
            );
        }
    }
    let store = open_store(config).await?;
    let (account, token) = store.create_account(name, AccountKind::Integration, subscribe, publish).await?;
    store.close().await;
    println!(
        "{}",
        json!({"username": account.name, "password": token.expose(), "mqtt": config.public_mqtt_url(),
               "subscribe": account.subscribe, "publish": account.publish})
    );
    Ok(())
}

/// `jiandu user disable|enable|role`: one change to a web user, written with its ledger entry.
/// A running web role refuses the user's sessions and cached API logins from the next request.
pub async fn user_change(config: &Config, name: &str, change: UserChange) -> Result<()> {
    let store = open_store(config).await?;
    let actor = cli_actor();
    let user = match change {
        UserChange::Disable => store.disable_user(name, &actor).await,
        UserChange::Enable => store.enable_user(name, &actor).await,
        UserChange::Role(role) => {
            let role: Role = role.parse().map_err(|e| anyhow::anyhow!("role: {e}"))?;
            store.set_user_role(name, role, &actor).await
        }
    }
    .with_context(|| format!("changing user {name}"))?;
    store.close().await;
    println!("{}", json!({"username": user.name, "role": user.role.to_string(), "disabled_at": user.disabled_at}));
    Ok(())
}

/// What `jiandu user …` changes.
pub enum UserChange {
    /// No more logins; live sessions end.
    Disable,
    /// Logins allowed again.
    Enable,
    /// A new role (its name).
    Role(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
