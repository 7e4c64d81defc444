//! `jiandu demo`: a whole synthetic county on one machine with one command, so a newcomer sees
//! the platform working within a minute. It seeds a data dir (temporary unless `--data-dir` is
//! given) with the county's registries through the real import, demo users, a hotline
//! integration and N phones, starts every role embedded (`serve::start`), and runs the phone
//! simulator (`jiandu_sim`) against the embedded broker until Ctrl-C. What was seeded is kept in
//! `{data_dir}/demo.json` (mode 0600), so a kept data dir can be demoed again.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jiandu_oversight::generate::{Generated, Scale, generate};
use jiandu_oversight::{Encoding, ImportOptions, cases, import_csv, integrity};
use jiandu_store::{AccountKind, CaseOrigin, RegistryName, Role as UserRole, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::accounts::open_store;
use crate::config::{Config, parse_mqtt_url};
use crate::serve::{self, Role};
use jiandu_sim::{self as sim, Credential, Hotline, SimOptions, Simulator};

/// The data dir `Config` falls back to; the demo never seeds it (it may be a real deployment).
const DEFAULT_DATA_DIR: &str = "./jiandu-data";
/// The demo's login names and roles; they share one generated password.
const USERS: &[(&str, UserRole)] = &[
    ("demo", UserRole::Admin),
    ("desk", UserRole::Dispatcher),
    ("leader", UserRole::Leader),
    ("auditor", UserRole::Auditor),
];
/// The integration account that sends hotline tips and may watch every event.
const HOTLINE: &str = "demo-hotline";

/// What the demo seeded into a data dir (`demo.json`).
#[derive(Debug, Serialize, Deserialize)]
struct Seeded {
    password: String,
    hotline_password: String,
    phones: Vec<(String, String)>,
    registries_imported: bool,
    /// Indicators and cases seeded (older demo.json files lack the key).
    #[serde(default)]
    county_seeded: bool,
}

/// Runs the demo until Ctrl-C.
pub async fn run(mut config: Config, devices: usize) -> Result<()> {
    if devices == 0 {
        bail!("--devices: must be at least 1");
    }
    let speed = demo_speed()?;
    // A data dir given explicitly (flag, environment or config file) is kept; otherwise a
    // temporary one is removed on exit.
    let given = config.data_dir != Path::new(DEFAULT_DATA_DIR);
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
        let Some(addr) = addr else { continue };
        if addr.port() != 0 && TcpListener::bind(*addr).is_err() {
            let taken = *addr;
            *addr = SocketAddr::new(addr.ip(), 0);
            eprintln!("{taken} is in use; the demo picks a free port instead (set {flag} to choose)");
        }
    }
    if speed > 1.0 && std::env::var_os("JIANDU_DISPATCH_OFFER_TIMEOUT_S").is_none() {
        // Fast-forwarded inspectors answer faster; so does the desk's patience.
        config.dispatch.offer_timeout_s = ((config.dispatch.offer_timeout_s as f64 / speed).ceil() as u64).max(5);
    }

    let store = open_store(&config).await?;
    let seeded = seed(&store, &config.data_dir, devices).await;
    store.close().await;
    let mut seeded = seeded?;
    let registries = config.data_dir.join("registries");
    let files = generate(&registries, 1, Scale::COUNTY).context("generating the county's registries")?;
    let plates = read_plates(&files.vehicles);

    if !seeded.registries_imported {
        // Before the roles start, so the import's long write transaction does not hold up
        // live traffic on SQLite, and the look-up role starts with the registries loaded.
        eprintln!("importing the county's registries (~57,000 records) through the real import…");
        import_registries(&config, &files).await?;
        seeded.registries_imported = true;
    }

    if !seeded.county_seeded {
        // Before the roles start too: the index scheduler's first run then sees the indicators,
        // and the case scheduler's first tick raises the overdue alarm.
        let store = open_store(&config).await?;
        let result = seed_county(&store, &config.data_dir, &files.departments).await;
        store.close().await;
        result.context("seeding the county's indicators and cases")?;
        seeded.county_seeded = true;
        save(&config.data_dir, &seeded)?;
    }
    if std::env::var_os("JIANDU_INDEX_INTERVAL_S").is_none() {
        // Recompute often, so the overdue case's alarm and negative record show in the index.
        config.index.interval = config.index.interval.min(Duration::from_secs(30));
    }

    let shutdown = CancellationToken::new();
    let all = [Role::Broker, Role::Ingest, Role::Dispatcher, Role::Oversight, Role::Web];
    let mut running = serve::start(&config, &all, shutdown.clone()).await?;
    let mqtt = running.bound.mqtt.clone();
    let (host, port) = parse_mqtt_url(&mqtt)?;
    let http = running.bound.http.map(|a| format!("http://{a}")).unwrap_or_default();
    print_banner(&config, given, &seeded, devices, &http, &mqtt, &host, port);

    let sim = Simulator::start(
        SimOptions {
            host,
            port,
            phones: seeded
                .phones
                .iter()
                .take(devices)
                .map(|(d, p)| Credential { device: d.clone(), password: p.clone() })
                .collect(),
            hotline: Some(Hotline { username: HOTLINE.into(), password: seeded.hotline_password.clone() }),
            rate_hz: 1.0,
            speed,
            // Every few seconds, but not more than half the inspectors can keep up with.
            tip_every: Duration::from_secs_f64((5.0f64.max(1200.0 / devices as f64) / speed).max(0.5)),
            mean_coverage_s: 900.0 / speed,
            plates,
            seed: 1,
        },
        shutdown.clone(),
    );

    let failure = tokio::select! {
        _ = serve::wait_for_signal() => None,
        f = running.failure() => Some(f),
    };
    info!("stopping the demo");
    shutdown.cancel();
    let stats = sim.stats.clone();
    sim.stopped().await;
    running.stopped().await;
    eprintln!("simulated: {}", stats.snapshot());
    match failure {
        None => Ok(()),
        Some(f) => bail!("role {} keeps failing ({} failures), last: {}", f.role, f.failures, f.reason),
    }
}

/// `JIANDU_DEMO_SPEED`: simulated seconds per real second (default 1).
fn demo_speed() -> Result<f64> {
    match std::env::var("JIANDU_DEMO_SPEED") {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s <= 1000.0 => Ok(s),
            _ => bail!("JIANDU_DEMO_SPEED: must be a number within (0, 1000], got {v:?}"),
        },
        Err(_) => Ok(1.0),
    }
}

/// Creates the demo users, hotline and phones, or reads them back from `demo.json` (adding
/// phones if more are asked for now).
async fn seed(store: &Store, data_dir: &Path, devices: usize) -> Result<Seeded> {
    let path = data_dir.join("demo.json");
    let mut seeded = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Seeded>(&bytes).with_context(|| format!("reading {}", path.display()))?,
        Err(_) => {
            let (_, password) =
                store.create_user(USERS[0].0, USERS[0].1, None, "demo").await.context("creating demo users")?;
            let password = password.expose().to_owned();
            for (name, role) in &USERS[1..] {
                store.create_user(name, *role, Some(&password), "demo").await.context("creating demo users")?;
            }
            let (_, hotline) = store
                .create_account(
                    HOTLINE,
                    AccountKind::Integration,
                    &["jd/v1/events/#".into()],
                    &["jd/v1/reports".into()],
                )
                .await
                .context("creating the hotline integration")?;
            Seeded {
                password,
                hotline_password: hotline.expose().to_owned(),
                phones: Vec::new(),
                registries_imported: false,
                county_seeded: false,
            }
        }
    };
    if seeded.phones.len() < devices {
        let from = seeded.phones.len() + 1;
        let names: Vec<(String, Option<String>)> =
            (from..=devices).map(|i| (format!("巡查手机 {i:03}"), Some(format!("LQ{i:04}")))).collect();
        let created = store.create_devices(&names).await.context("registering the demo phones")?;
        seeded.phones.extend(created.into_iter().map(|(d, t)| (d.id, t.expose().to_owned())));
    }
    save(data_dir, &seeded)?;
    Ok(seeded)
}

fn save(data_dir: &Path, seeded: &Seeded) -> Result<()> {
    Ok(sim::write_private(&data_dir.join("demo.json"), &serde_json::to_vec_pretty(seeded)?)?)
}

/// Loads the generated registries through the real import (departments first), then records
/// that it is done.
async fn import_registries(config: &Config, files: &Generated) -> Result<()> {
    let store = open_store(config).await?;
    let order = [
        (RegistryName::Departments, &files.departments),
        (RegistryName::Members, &files.members),
        (RegistryName::Staff, &files.staff),
        (RegistryName::Vehicles, &files.vehicles),
    ];
    let result: Result<()> = async {
        for (registry, path) in order {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let options = ImportOptions {
                encoding: Encoding::Auto,
                dry_run: false,
                actor: "demo".into(),
                source: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            };
            let outcome = import_csv(&store, registry, &bytes, &options, &mut |_, _| {}).await?;
            info!(%registry, records = outcome.records, "registry imported");
        }
        let path = config.data_dir.join("demo.json");
        let mut seeded: Seeded = serde_json::from_slice(&std::fs::read(&path)?)?;
        seeded.registries_imported = true;
        save(&config.data_dir, &seeded)
    }
    .await;
    store.close().await;
    result.context("importing the demo registries")
}

/// How well a unit did this period, as its imported indicators: (education sessions held of 3,
/// attendance % of 95, organisation-building check score of 100). Each tier lands in one colour
/// of the embedded formula; the last tier is the unit that also gets the overdue case.
const TIERS: &[(&str, f64, f64, f64)] = &[
    ("green", 3.0, 97.0, 98.0),
    ("blue", 1.0, 92.0, 95.0),
    ("yellow", 1.0, 80.0, 80.0),
    ("orange", 0.0, 70.0, 75.0),
    ("red", 0.0, 50.0, 60.0),
];

/// Which tier unit `i` of `n` is in: most units do well, some warn, one is red; every tenth has
/// no data this period (nothing was reported yet).
fn tier_of(i: usize, n: usize) -> Option<usize> {
    if i + 1 == n {
        return Some(4);
    }
    match i % 10 {
        0..=3 => Some(0),
        4..=5 => Some(1),
        6 => Some(2),
        7..=8 => Some(3),
        _ => None,
    }
}

/// Seeds what makes the county look lived in: this period's indicators for most units through
/// the real indicator import (`{data_dir}/registries/indicators.csv`, as an operator would run
/// `jiandu index import-indicators`), and cases through the real workflow, opened at different
/// past dates so some are near their deadline and one is overdue (the case scheduler raises its
/// alarm and negative record at its first tick).
async fn seed_county(store: &Store, data_dir: &Path, departments: &Path) -> Result<()> {
    let text = std::fs::read_to_string(departments).with_context(|| format!("reading {}", departments.display()))?;
    let units: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cells = l.split(',');
            Some((cells.next()?.to_owned(), cells.next()?.to_owned()))
        })
        .collect();
    if units.is_empty() {
        bail!("{} lists no departments", departments.display());
    }
    let now = jiandu_store::now_ms();
    let (_, formula) = integrity::formula_in_force(store).await?;
    let period = integrity::Period::containing(formula.period, now).label;
    let mut csv = String::from("unit,period,indicator,value\n");
    for (i, (code, _)) in units.iter().enumerate() {
        let Some(t) = tier_of(i, units.len()) else { continue };
        let (_, sessions, attendance, org) = TIERS[t];
        for (key, value) in
            [("education_sessions", sessions), ("education_attendance", attendance), ("org_building", org)]
        {
            csv.push_str(&format!("{code},{period},{key},{value}\n"));
        }
    }
    let path = data_dir.join("registries").join("indicators.csv");
    std::fs::write(&path, &csv).with_context(|| format!("writing {}", path.display()))?;
    let rows = integrity::parse_indicators_csv(&csv)?;
    let stored = integrity::import_indicators(store, rows, "indicators.csv", "demo").await?;
    info!(indicators = stored, %period, "demo indicators imported");

    // Cases: (days ago opened, title, unit index). The first stage allows 15 working days.
    let red = units.len() - 1;
    let cases: &[(i64, &str, usize)] = &[
        (40, "反映某站所负责人违规收受礼金问题线索", red),
        (20, "反映公车私用问题线索（车牌见附件）", 7),
        (19, "反映工作日午间饮酒问题线索", 17),
        (12, "反映便民服务窗口脱岗问题线索", 27),
        (5, "反映违规收取办证费用问题线索", 37),
        (1, "反映节前收受购物卡问题线索", 47),
    ];
    let workflow = cases::Workflow::load(store).await?;
    for (days, title, unit) in cases {
        let (code, name) = &units[(*unit).min(units.len() - 1)];
        let opened = now - days * 86_400_000;
        let case = workflow
            .open(
                store,
                cases::OpenCase {
                    title: format!("{name}：{title}"),
                    origin: CaseOrigin::Manual,
                    origin_id: None,
                    parties: Vec::new(),
                    evidence: Vec::new(),
                    handler: USERS[1].0.to_owned(),
                    unit: code.clone(),
                    unit_head: None,
                },
                USERS[1].0,
                UserRole::Dispatcher,
                opened,
            )
            .await?;
        info!(case = %case.id, unit = %code, opened_days_ago = days, "demo case opened");
    }
    Ok(())
}

/// The plates of the generated vehicle registry (first column), for tips about official cars.
fn read_plates(vehicles: &Path) -> Vec<String> {
    std::fs::read_to_string(vehicles)
        .map(|t| t.lines().skip(1).filter_map(|l| l.split(',').next()).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn print_banner(
    config: &Config,
    given: bool,
    seeded: &Seeded,
    devices: usize,
    http: &str,
    mqtt: &str,
    host: &str,
    port: u16,
) {
    let pw = &seeded.password;
    println!("jiandu demo: a synthetic county modelled on 临朐 (Linqu), {devices} simulated phones");
    println!();
    println!("  open      {http}/   (the live map of inspectors, tips and evidence)");
    println!("  login     {} / {pw}", USERS[0].0);
    println!("            also desk (dispatcher), leader, auditor with the same password");
    println!("  REST      {http}/api/v1/devices  /api/v1/reports  /api/v1/evidence  (HTTP Basic, same login)");
    println!("            e.g. curl -u '{}:{pw}' {http}/api/v1/reports", USERS[0].0);
    println!("  health    {http}/healthz   metrics {http}/metrics");
    println!("  MQTT      {mqtt}");
    println!();
    if let Some((id, token)) = seeded.phones.first() {
        println!("  a phone   device {id}  password {token}  (simulated; add tools as {id}-<anything>)");
        println!("    watch its inbox:");
        println!(
            "      mosquitto_sub -h {host} -p {port} -i {id}-sub -u {id} -P '{token}' -t 'jd/v1/dev/{id}/inbox/#' -v"
        );
        println!("    send a heartbeat:");
        println!(
            "      mosquitto_pub -h {host} -p {port} -i {id}-pub -u {id} -P '{token}' -t 'jd/v1/dev/{id}/hb' \
             -m '{{\"ts\":'$(date +%s%3N)',\"lat\":36.51,\"lon\":118.54,\"duty\":\"on\"}}'"
        );
    }
    let hp = &seeded.hotline_password;
    println!("  events    integration {HOTLINE} / {hp}  (sends the hotline tips)");
    println!("      mosquitto_sub -h {host} -p {port} -i {HOTLINE}-sub -u {HOTLINE} -P '{hp}' -t 'jd/v1/events/#' -v");
    println!();
    if given {
        println!("  data dir  {} (kept; phone credentials in demo.json)", config.data_dir.display());
    } else {
        println!("  data dir  {} (temporary, removed on exit; --data-dir DIR keeps one)", config.data_dir.display());
    }
    println!();
    println!("Ctrl-C to stop.");
}
