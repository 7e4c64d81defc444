//! MQTT over WebSocket (issue 18): the web port's `/mqtt`, the broker's own `--ws-listen`
//! listener and `/mqtt` over HTTPS all lead into the same front as TCP, with the same login,
//! ACL and exact heartbeat acknowledgement. Clients: rumqttc's WebSocket transport here, and the
//! npm `mqtt` package (the field app's library) in `tests/browser/mqtt_ws.mjs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Db, TestApp, connect, until};
use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// MQTT 3.1.1 options for a WebSocket URL (`ws://…/mqtt` or `wss://…/mqtt`).
fn ws_options(url: &str, client_id: &str, user: (&str, &str), tls: Option<Arc<rustls::ClientConfig>>) -> MqttOptions {
    // rumqttc takes the whole URL as the address when the transport is a WebSocket.
    let mut o = MqttOptions::new(client_id, url, 0);
    o.set_credentials(user.0, user.1);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    match tls {
        None => o.set_transport(Transport::Ws),
        Some(c) => o.set_transport(Transport::Wss(TlsConfiguration::Rustls(c))),
    };
    o
}

/// The WebSocket URL of a web base URL (`http://h:p` → `ws://h:p/mqtt`).
fn mqtt_url(base: &str) -> String {
    format!("{}/mqtt", base.replacen("http", "ws", 1))
}

/// A phone over WebSocket: logs in, sends heartbeats with `seq`, gets exactly them acknowledged
/// (`hb_seq`), sees them stored; may not publish another phone's topics nor read its inbox.
async fn phone_round_trip(app: &TestApp, url: &str, tls: Option<Arc<rustls::ClientConfig>>) {
    let (id, token) = app.add_device("ws phone");
    let (other, _) = app.add_device("other phone");
    let (client, mut events) =
        connect(ws_options(url, &id, (&id, &token), tls.clone())).await.expect("login over WebSocket");
    client.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let ts = now_ms();
    let points: Vec<Value> = (0..3)
        .map(|i| json!({"seq": 1000 + i, "ts": ts + i, "lat": 36.5 + i as f64 * 1e-4, "lon": 118.54, "duty": "on"}))
        .collect();
    client.publish(format!("jd/v1/dev/{id}/hb"), QoS::AtLeastOnce, false, json!(points).to_string()).await.unwrap();
    let acked = until(&mut events, |p| match p {
        Packet::Publish(p) if p.topic == format!("jd/v1/dev/{id}/inbox/ack") => {
            let v: Value = serde_json::from_slice(&p.payload).ok()?;
            v.get("hb_seq").cloned()
        }
        _ => None,
    })
    .await;
    assert_eq!(acked, json!([[1000, 1002]]), "exactly the three points are confirmed");
    let devices = app.get_json("/api/v1/devices").await;
    let me = devices["items"].as_array().unwrap().iter().find(|d| d["id"] == id.as_str()).expect("listed");
    assert_eq!(me["position"]["ts"], ts + 2, "the newest point is the live position: {me}");

    // ACL: another phone's heartbeat topic is refused and reported on this phone's inbox/error.
    let forged = json!({"ts": now_ms(), "lat": 1.0, "lon": 1.0}).to_string();
    client.publish(format!("jd/v1/dev/{other}/hb"), QoS::AtLeastOnce, false, forged).await.unwrap();
    let refused = until(&mut events, |p| match p {
        Packet::Publish(p) if p.topic.ends_with("/inbox/error") => serde_json::from_slice::<Value>(&p.payload).ok(),
        _ => None,
    })
    .await;
    assert_eq!(refused["topic"], format!("jd/v1/dev/{other}/hb"), "{refused}");
    // … and its inbox cannot be read.
    client.subscribe(format!("jd/v1/dev/{other}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    let codes = until(&mut events, |p| match p {
        Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure], "another phone's inbox is refused");
    client.disconnect().await.ok();

    // A wrong token is refused with the CONNACK code, as on TCP.
    match connect(ws_options(url, &id, (&id, "not-the-token"), tls)).await {
        Err(ConnectionError::ConnectionRefused(code)) => assert_eq!(code, ConnectReturnCode::BadUserNamePassword),
        other => panic!("a wrong token must be refused with CONNACK 4, got {:?}", other.map(|_| ())),
    }
}

/// A WebSocket message beyond `max_packet_bytes` + 64 KiB ends the connection (here a 400 KiB
/// PUBLISH, which the client library sends as one message).
async fn oversized_message_ends_the_connection(app: &TestApp) {
    let (id, token) = app.add_device("big sender");
    let (client, mut events) =
        connect(ws_options(&mqtt_url(&app.http), &id, (&id, &token), None)).await.expect("login over WebSocket");
    let big = vec![b'x'; 400 * 1024];
    client.publish(format!("jd/v1/dev/{id}/report"), QoS::AtLeastOnce, false, big).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Err(e) = events.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("the oversized message must end the connection");
    assert!(!matches!(ended, ConnectionError::ConnectionRefused(_)), "{ended:?}");
}

/// Sends a WebSocket upgrade request for `/mqtt` without the `mqtt` subprotocol; the status line.
async fn upgrade_without_subprotocol(http: &str) -> String {
    let addr = http.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn mqtt_over_websocket_on_the_web_port_and_its_own_listener() {
    let app = TestApp::spawn_with_args(Db::Sqlite, "", &["--ws-listen", "127.0.0.1:0"]).await;
    phone_round_trip(&app, &mqtt_url(&app.http), None).await;
    let own = app.ws.clone().expect("serve.json names the --ws-listen address");
    assert!(own.starts_with("ws://127.0.0.1:") && own.ends_with("/mqtt"), "{own}");
    phone_round_trip(&app, &own, None).await;
    // Without the subprotocol MQTT over WebSocket is not spoken: 400, no upgrade.
    let status = upgrade_without_subprotocol(&app.http).await;
    assert!(status.contains(" 400 "), "expected 400 without Sec-WebSocket-Protocol: mqtt, got {status}");
    oversized_message_ends_the_connection(&app).await;

    // `device add` gives the field app's link: credentials in the fragment, on the web address.
    let added = app.cli(&["device", "add", "app phone"]);
    let (id, token) = (added["device"].as_str().unwrap(), added["password"].as_str().unwrap());
    let link = added["app_url"].as_str().expect("device add prints app_url");
    // (The CLI reads the configured HTTP address, not the port 0 this test's server bound.)
    assert!(
        link.starts_with("http://127.0.0.1:") && link.ends_with(&format!("/app/#d={id}&t={token}&i=10")),
        "{added}"
    );
    // The app's page, manifest and service worker are served (the page under any /app/ path).
    for (path, needle) in [
        ("/app/", "manifest.webmanifest"),
        ("/app/duty", "manifest.webmanifest"),
        ("/app/manifest.webmanifest", "\"scope\": \"/app/\""),
        ("/app/sw.js", "caches"),
    ] {
        let body = reqwest::get(format!("{}{path}", app.http)).await.unwrap().text().await.unwrap();
        assert!(body.contains(needle), "{path} does not contain {needle}: {body:.200}");
    }
    app.stop();
}

#[tokio::test]
async fn mqtt_over_websocket_works_over_https() {
    // Plaintext stays on for the test's own API calls; the phone uses only the HTTPS port.
    let opts = common::TlsOptions { plaintext: true, ..Default::default() };
    let app = TestApp::spawn_tls(Db::Sqlite, opts).await;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&app.ca_pem()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = app.https.clone().expect("HTTPS on");
    phone_round_trip(&app, &mqtt_url(&https), Some(Arc::new(tls))).await;
    app.stop();
}

/// WebSocket connections take their permits from the same `max_connections` as TCP: once it is
/// reached an upgrade is answered 503 instead of being served.
#[tokio::test]
async fn websocket_connections_share_the_connection_limit() {
    let app = TestApp::spawn_with_config(Db::Sqlite, "max_connections = 16").await;
    let addr = app.http.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
        let status = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned();
        if status.contains(" 101 ") {
            held.push(s);
        } else {
            refused = Some((i, status));
            break;
        }
    }
    let (i, status) = refused.expect("40 WebSocket connections on a limit of 16 (the roles hold some)");
    assert!(status.contains(" 503 "), "beyond the limit: {status}");
    assert!((1..16).contains(&i), "the limit counted the WebSockets ({i} were served)");
    drop(held);
    app.stop();
}

/// The npm `mqtt` package (what the field app uses) against `/mqtt`: MQTT 3.1.1 and 5 logins,
/// heartbeats acknowledged exactly, a wrong token and a foreign topic refused.
#[tokio::test]
async fn the_npm_mqtt_client_speaks_to_the_front() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/mqtt").exists(),
        "the npm mqtt package is not installed in tests/browser: run scripts/services.sh"
    );
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, token) = app.add_device("node phone");
    let (other, _) = app.add_device("other phone");
    let out = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/mqtt_ws.mjs"))
        .env("JD_WS_URL", mqtt_url(&app.http))
        .env("JD_DEVICE", &id)
        .env("JD_TOKEN", &token)
        .env("JD_OTHER", &other)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("node client hung").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mqtt_ws.mjs failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        app.log()
    );
    let stored = app.get_json("/api/v1/devices").await;
    let me = stored["items"].as_array().unwrap().iter().find(|d| d["id"] == id.as_str()).expect("listed");
    assert!(me["position"]["ts"].as_i64().is_some(), "the node client's heartbeat is stored: {me}");
    assert!(stdout.contains("ok v4") && stdout.contains("ok v5"), "{stdout}");
    app.stop();
}
