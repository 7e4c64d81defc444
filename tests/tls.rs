//! TLS end to end (issue 15): a real `jiandu serve` with a private CA from `jiandu tls init`,
//! phones as rumqttc clients over MQTTS (rustls), the REST API over HTTPS with reqwest (rustls)
//! trusting only ca.pem, client certificates (mTLS), plaintext listeners turned off, and a
//! renewed certificate served without a restart. The desk browser test over HTTPS is at the end.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Db, TestApp, TlsOptions, connect, until};
use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls client trusting exactly the CA in `ca_pem` (none: an empty trust store), optionally
/// with a client certificate (PEM files).
fn client_config(ca_pem: Option<&[u8]>, identity: Option<(&[u8], &[u8])>) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for c in CertificateDer::pem_slice_iter(pem) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert).map(Result::unwrap).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// MQTT options for the app's MQTTS port with this TLS client configuration.
fn mqtts_options(app: &TestApp, user: (&str, &str), tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let (host, port) = app.mqtts.as_deref().expect("started with MQTTS").rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(user.0, host, port.parse().unwrap());
    o.set_credentials(user.0, user.1);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o
}

/// Connects as a phone, sends one heartbeat and waits until the platform acknowledges it stored.
async fn heartbeat_acknowledged(o: MqttOptions, id: &str, ts: i64) {
    let (client, mut events) = connect(o).await.expect("the phone connects over TLS");
    client.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let hb = json!({"ts": ts, "lat": 36.5, "lon": 118.54, "acc": 8.0, "duty": "on"});
    client.publish(format!("jd/v1/dev/{id}/hb"), QoS::AtLeastOnce, false, hb.to_string()).await.unwrap();
    until(&mut events, |p| match p {
        Packet::Publish(p) if p.topic.ends_with("/inbox/ack") => {
            let v: Value = serde_json::from_slice(&p.payload).ok()?;
            (v["hb_upto"].as_i64()? >= ts).then_some(())
        }
        _ => None,
    })
    .await;
    client.disconnect().await.ok();
}

/// The refusal a connection attempt ends with (CONNACK code), or `None` for a transport/TLS error.
async fn refusal(o: MqttOptions) -> Option<ConnectReturnCode> {
    match connect(o).await {
        Ok(_) => panic!("the connection was accepted"),
        Err(ConnectionError::ConnectionRefused(code)) => Some(code),
        Err(_) => None,
    }
}

/// reqwest over rustls trusting exactly ca.pem.
fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder().use_preconfigured_tls((*client_config(Some(ca_pem), None)).clone()).build().unwrap()
}

/// TCP ports the process listens on (from /proc: its socket inodes in LISTEN state).
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(fd.path())
            && let Some(inode) = target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT, st 0A is LISTEN, inode is the tenth column.
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit_once(':').unwrap().1;
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

fn port_of(url: &str) -> u16 {
    url.trim_end_matches('/').rsplit_once(':').unwrap().1.parse().unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn phone_over_tls_with_plaintext_off(db: Db) {
    let app = TestApp::spawn_tls(db, TlsOptions::default()).await;
    let ca = app.ca_pem();
    let (id, token) = app.add_device("TLS phone");

    // Only the TLS listeners exist: serve.json has no plaintext address, the process no socket.
    let state: Value = serde_json::from_slice(&std::fs::read(app.dir.path().join("serve.json")).unwrap()).unwrap();
    assert!(state["mqtt"].is_null() && state["http"].is_null(), "{state}");
    let https = app.https.clone().unwrap();
    let expected = BTreeSet::from([port_of(app.mqtts.as_deref().unwrap()), port_of(&https)]);
    assert_eq!(listening_ports(app.pid()), expected, "only MQTTS and HTTPS listen");

    // A phone trusting the private CA: its heartbeat is stored (the platform's own roles reach
    // the broker over TLS too, since plaintext is off).
    let ts = now_ms();
    heartbeat_acknowledged(mqtts_options(&app, (&id, &token), client_config(Some(&ca), None)), &id, ts).await;

    // HTTPS with reqwest trusting ca.pem: health, an anonymous call refused, the admin's answered.
    let web = https_client(&ca);
    let health = web.get(format!("{https}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["mqtt"], "connected");
    let anon = web.get(format!("{https}/api/v1/devices")).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let devices: Value = web
        .get(format!("{https}/api/v1/devices"))
        .basic_auth(&app.admin.0, Some(&app.admin.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mine = devices["items"].as_array().unwrap().iter().find(|d| d["id"] == id.as_str()).cloned().unwrap();
    assert_eq!(mine["position"]["ts"], ts, "the heartbeat sent over TLS is stored");

    // Clients that do not trust the CA get nowhere.
    let untrusting = mqtts_options(&app, (&id, &token), client_config(None, None));
    assert_eq!(refusal(untrusting).await, None, "a client without the CA fails the handshake");
    let other_ca = jiandu_tls::issue::authority("Another office").unwrap();
    let wrong_ca = mqtts_options(&app, (&id, &token), client_config(Some(other_ca.cert_pem.as_bytes()), None));
    assert_eq!(refusal(wrong_ca).await, None, "a client trusting another CA fails the handshake");
    let plain_on_tls_port = {
        let (host, port) = app.mqtts.as_deref().unwrap().rsplit_once(':').unwrap();
        let mut o = MqttOptions::new(&id, host, port.parse().unwrap());
        o.set_credentials(&id, &token);
        o
    };
    assert_eq!(refusal(plain_on_tls_port).await, None, "plaintext MQTT on the TLS port is not served");
    let stranger = reqwest::Client::builder()
        .use_preconfigured_tls((*client_config(Some(other_ca.cert_pem.as_bytes()), None)).clone())
        .build()
        .unwrap();
    assert!(stranger.get(format!("{https}/healthz")).send().await.is_err(), "HTTPS without the CA fails");
    assert!(app.log().contains("MQTTS handshake failed"), "handshake failures are logged");
    assert!(app.stop().success());
}

#[tokio::test]
async fn a_phone_over_tls_is_stored_and_plaintext_off_has_no_listener_sqlite() {
    phone_over_tls_with_plaintext_off(Db::Sqlite).await;
}

#[tokio::test]
async fn a_phone_over_tls_is_stored_and_plaintext_off_has_no_listener_postgres() {
    phone_over_tls_with_plaintext_off(Db::Postgres).await;
}

#[tokio::test]
async fn client_certificates_are_required_and_tied_to_the_device() {
    // Plaintext kept on (loopback), to show it is no way around the certificate requirement.
    let opts = TlsOptions { init_args: vec!["--client-certs".into()], plaintext: true, ..Default::default() };
    let app = TestApp::spawn_tls(Db::Sqlite, opts).await;
    let ca = app.ca_pem();
    let (a, token_a) = app.add_device("with certificate");
    let (b, token_b) = app.add_device("without certificate");
    let issued = app.cli(&["tls", "device", &a]);
    let cert_a = std::fs::read(issued["cert"].as_str().unwrap()).unwrap();
    let key_a = std::fs::read(issued["key"].as_str().unwrap()).unwrap();
    let key_mode = std::fs::metadata(issued["key"].as_str().unwrap()).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777, 0o600);

    // Its own certificate: accepted, heartbeat stored.
    let with_cert = client_config(Some(&ca), Some((&cert_a, &key_a)));
    heartbeat_acknowledged(mqtts_options(&app, (&a, &token_a), with_cert.clone()), &a, now_ms()).await;

    // No certificate: refused at CONNECT, over TLS and over the plaintext port alike.
    let none = mqtts_options(&app, (&b, &token_b), client_config(Some(&ca), None));
    assert_eq!(refusal(none).await, Some(ConnectReturnCode::NotAuthorized));
    let plain = app.options(&b, Some((&b, &token_b)));
    assert_eq!(refusal(plain).await, Some(ConnectReturnCode::NotAuthorized));
    // Another device's certificate: refused (its CN is not this account).
    let borrowed = mqtts_options(&app, (&b, &token_b), with_cert);
    assert_eq!(refusal(borrowed).await, Some(ConnectReturnCode::NotAuthorized));
    // A certificate from another CA with the right name: the handshake fails.
    let other_ca = jiandu_tls::issue::authority("Another office").unwrap();
    let forged = jiandu_tls::issue::device(&other_ca, &b).unwrap();
    let forged = client_config(Some(&ca), Some((forged.cert_pem.as_bytes(), forged.key_pem.as_bytes())));
    assert_eq!(refusal(mqtts_options(&app, (&b, &token_b), forged)).await, None);
    // A device certificate is never given for an unknown device.
    let err = common::cli_err(app.dir.path(), &app.db, &["tls", "device", "dNOSUCHDEVICE"]);
    assert!(err.contains("no device"), "{err}");
    // The platform's own service account needs no certificate: the web role is connected.
    let health: Value = https_client(&ca)
        .get(format!("{}/healthz", app.https.as_deref().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["mqtt"], "connected");
    assert!(app.log().contains("client certificate does not fit the account"), "refusals are logged");
    assert!(app.stop().success());
}

/// The end-entity certificate the MQTTS port presents now.
async fn served_certificate(app: &TestApp, ca: &[u8]) -> Vec<u8> {
    let addr = app.mqtts.as_deref().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(Some(ca), None));
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let tls = connector.connect(name, tcp).await.expect("handshake with the CA's certificate");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let opts = TlsOptions { toml: "reload_s = 1".into(), ..Default::default() };
    let app = TestApp::spawn_tls(Db::Sqlite, opts).await;
    let ca = app.ca_pem();
    let before = served_certificate(&app, &ca).await;
    let on_disk = |app: &TestApp| {
        let pem = std::fs::read(app.dir.path().join("tls/server.pem")).unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
    };
    assert_eq!(before, on_disk(&app));

    // Renewal from the same CA, with another host name.
    let renewed = app.cli(&["tls", "init", "--hosts", "jiandu.renewed.example"]);
    assert!(renewed["hosts"].as_array().unwrap().iter().any(|h| h == "jiandu.renewed.example"));
    let expected = on_disk(&app);
    assert_ne!(before, expected);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = served_certificate(&app, &ca).await;
        if now == expected {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not served; log:\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(app.log().contains("TLS certificate reloaded"));

    // Same process, new certificate: phones (and the roles, over TLS) carry on.
    let (id, token) = app.add_device("after renewal");
    heartbeat_acknowledged(mqtts_options(&app, (&id, &token), client_config(Some(&ca), None)), &id, now_ms()).await;

    // A broken renewal (key of another certificate) is refused; the renewed one stays.
    let other = jiandu_tls::issue::server(&jiandu_tls::issue::authority("x").unwrap(), &["x.example".into()]).unwrap();
    std::fs::write(app.dir.path().join("tls/server.key"), other.key_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app.log().contains("TLS certificate not reloaded") {
        assert!(Instant::now() < deadline, "a mismatched key was not reported; log:\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served_certificate(&app, &ca).await, expected);
    assert!(app.stop().success());
}

/// A simulated phone for the browser test ([`common::walking_phone`]) over MQTTS.
async fn tls_phone(app: &TestApp, name: &str, lat: f64, lon: f64) -> (String, tokio::task::JoinHandle<()>) {
    let (id, token) = app.add_device(name);
    let o = mqtts_options(app, (&id, &token), client_config(Some(&app.ca_pem()), None));
    let task = common::walking_phone(&id, o, lat, lon).await;
    (id, task)
}

/// The desk browser test (tests/browser/desk.mjs) over HTTPS, plaintext off, phones over MQTTS:
/// Chromium trusts the server only through the SPKI pin of its key (and refuses it without),
/// and the session cookie is `Secure`.
#[tokio::test]
async fn the_desk_works_over_https_in_headless_chromium() {
    let toml = "[ingest]\nposition_event_interval_s = 0\n[dispatch]\nradius_m = 2000".to_owned();
    let app = TestApp::spawn_tls(Db::Sqlite, TlsOptions { toml, ..Default::default() }).await;
    let server_pem = std::fs::read_to_string(app.dir.path().join("tls/server.pem")).unwrap();
    let pin = jiandu_tls::issue::spki_sha256(&server_pem).unwrap();
    let desk = app.cli(&["user", "add", "desk", "--role", "dispatcher"]);
    let desk_pw = desk["password"].as_str().unwrap().to_owned();
    let mut phones = Vec::new();
    for (i, (lat, lon)) in [(36.5010, 118.5000), (36.5200, 118.5300), (36.4700, 118.4600)].into_iter().enumerate() {
        phones.push(tls_phone(&app, &format!("patrol {i}"), lat, lon).await);
    }
    let https = app.https.clone().unwrap();
    common::run_browser_script(
        &app,
        "desk.mjs",
        &https,
        "tls",
        &[],
        &[
            ("JD_SPKI", pin.to_string()),
            ("JD_DESK", format!("desk:{desk_pw}")),
            ("JD_NEAREST", phones[0].0.to_string()),
        ],
        Duration::from_secs(300),
    )
    .await;
    // What the browser did over HTTPS is in the database: the nearest phone accepted the report.
    let web = https_client(&app.ca_pem());
    let get = |path: String| {
        let req = web.get(format!("{https}{path}")).basic_auth(&app.admin.0, Some(&app.admin.1));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let reports = get("/api/v1/reports".into()).await;
    let r = &reports["items"][0];
    assert_eq!(r["source"], "web");
    let view = get(format!("/api/v1/reports/{}", r["id"].as_str().unwrap())).await;
    let accepted = view["assignments"].as_array().unwrap().iter().find(|a| a["status"] == "accepted");
    assert_eq!(accepted.expect("an accepted assignment")["device_id"], phones[0].0.as_str());
    for (_, task) in phones {
        task.abort();
    }
    app.stop();
}
