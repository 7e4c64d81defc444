//! `jiandu demo`: everything embedded on a fresh data dir, with demo accounts, so a newcomer sees
//! a running platform with one command. (The synthetic county and phone simulator come with the
//! demo issue; today it starts the broker and web roles and hands out working credentials.)

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};
use jiandu_store::{AccountKind, Role as UserRole};
use tokio_util::sync::CancellationToken;

use crate::accounts::open_store;
use crate::config::{CONFIG_FILE, Config};
use crate::serve::{self, Role};

/// Runs the demo until Ctrl-C.
pub async fn run(mut config: Config, devices: usize) -> Result<()> {
    // A data dir given explicitly is kept; otherwise a temporary one is removed on exit.
    let given = std::env::var_os("JIANDU_DATA_DIR").is_some() || config.data_dir.join(CONFIG_FILE).exists();
    let _temp = if given {
        None
    } else {
        let t = tempfile::Builder::new().prefix("jiandu-demo-").tempdir().context("creating a temporary data dir")?;
        config.data_dir = t.path().to_path_buf();
        config.db = format!("sqlite://{}", t.path().join("jiandu.db").display());
        config.object_store = format!("file://{}", t.path().join("evidence").display());
        Some(t)
    };
    for (addr, flag) in [(&mut config.mqtt_listen, "--mqtt-listen"), (&mut config.http_listen, "--http-listen")] {
        if TcpListener::bind(*addr).is_err() {
            let taken = *addr;
            *addr = SocketAddr::new(addr.ip(), 0);
            eprintln!("{taken} is in use; the demo picks a free port instead (set {flag} to choose)");
        }
    }

    let store = open_store(&config).await?;
    let (admin, admin_password) =
        store.create_user(&format!("demo-admin-{}", short_id()), UserRole::Admin, None).await?;
    let mut phones = Vec::new();
    for i in 1..=devices {
        phones.push(store.create_device(&format!("演示手机 {i}"), Some(&format!("demo-{i:03}"))).await?);
    }
    let (observer, observer_token) = store
        .create_account(
            &format!("demo-observer-{}", short_id()),
            AccountKind::Integration,
            &["jd/v1/#".to_owned()],
            &["jd/v1/reports".to_owned()],
        )
        .await?;
    store.close().await;

    let shutdown = CancellationToken::new();
    let running = serve::start(&config, &[Role::Broker, Role::Web], shutdown.clone()).await?;
    let mqtt = running.bound.mqtt.clone();
    let (host, port) = crate::config::parse_mqtt_url(&mqtt)?;
    let http = running.bound.http.map(|a| format!("http://{a}")).unwrap_or_default();

    println!("jiandu demo is running (data dir {})", config.data_dir.display());
    println!();
    println!("  web       {http}/healthz   (metrics at {http}/metrics)");
    println!("  login     {} / {}", admin.name, admin_password.expose());
    println!("  MQTT      {mqtt}");
    println!();
    if let Some((device, token)) = phones.first() {
        let token = token.expose();
        let id = &device.id;
        println!("  a phone   device {id}  password {token}");
        println!("    watch its inbox:");
        println!("      mosquitto_sub -h {host} -p {port} -i {id} -u {id} -P '{token}' -t 'jd/v1/dev/{id}/inbox/#' -v");
        println!("    send a heartbeat:");
        println!(
            "      mosquitto_pub -h {host} -p {port} -i {id}-pub -u {id} -P '{token}' -t 'jd/v1/dev/{id}/hb' \
             -m '{{\"ts\":'$(date +%s%3N)',\"lat\":36.51,\"lon\":118.54,\"duty\":\"on\"}}'"
        );
    }
    println!("  observer  {} / {}  (subscribes to jd/v1/#)", observer.name, observer_token.expose());
    println!(
        "      mosquitto_sub -h {host} -p {port} -i {} -u {} -P '{}' -t 'jd/v1/#' -v",
        observer.name,
        observer.name,
        observer_token.expose()
    );
    for (device, token) in phones.iter().skip(1) {
        println!("  phone     {}  password {}", device.id, token.expose());
    }
    println!();
    println!("Ctrl-C to stop.");

    serve::wait_for_signal().await;
    shutdown.cancel();
    running.stopped().await;
    Ok(())
}

fn short_id() -> String {
    format!("{:04x}", std::process::id() & 0xffff)
}
