//! MQTT 5.0 conformance of the embedded broker (issue 20, DESIGN §3 "MQTT 5 conformance"), tested
//! with a third-party client: Eclipse Paho for Python (`paho-mqtt`, installed by
//! `scripts/services.sh`) runs one scenario of `tests/mqtt5/conformance.py` per test against a
//! real `jiandu serve`, as an integration account that may use the scenario's topics.

mod common;

use std::process::Command;

use common::{Db, TestApp};

/// Runs one scenario of `tests/mqtt5/conformance.py`; panics with its output when it fails.
async fn scenario(name: &str) {
    let probe = Command::new("python3").args(["-c", "import paho.mqtt"]).output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "python3 with paho-mqtt is needed for the MQTT 5 conformance tests; run `eval \"$(scripts/services.sh)\"`"
    );
    let app = TestApp::spawn(Db::Sqlite).await;
    let (user, pass) = app.add_integration("conformance", &["jd/v1/conf/#"], &["jd/v1/conf/#"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt5/conformance.py");
    let out = tokio::task::spawn_blocking({
        let (host, port) = (app.mqtt_host.clone(), app.mqtt_port.to_string());
        let name = name.to_owned();
        move || {
            Command::new("python3")
                .arg(script)
                .arg(&name)
                .env("JD_MQTT_HOST", host)
                .env("JD_MQTT_PORT", port)
                .env("JD_MQTT_USER", user)
                .env("JD_MQTT_PASS", pass)
                .output()
                .expect("python3 runs")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "scenario {name} failed ({}):\n{}\n{}\nserve log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        app.log()
    );
}

#[tokio::test]
async fn qos_is_the_lower_of_published_and_granted() {
    scenario("qos_is_the_lower_of_published_and_granted").await;
}

#[tokio::test]
async fn will_is_delivered_after_its_delay() {
    scenario("will_is_delivered_after_its_delay").await;
}

#[tokio::test]
async fn session_is_kept_for_its_expiry() {
    scenario("session_is_kept_for_its_expiry").await;
}

#[tokio::test]
async fn message_expiry_is_honoured() {
    scenario("message_expiry_is_honoured").await;
}

#[tokio::test]
async fn no_local_is_honoured() {
    scenario("no_local_is_honoured").await;
}

#[tokio::test]
async fn overlapping_subscriptions_arrive_once_with_every_identifier() {
    scenario("overlapping_subscriptions_arrive_once_with_every_identifier").await;
}

#[tokio::test]
async fn request_response_properties_pass_through() {
    scenario("request_response_properties_pass_through").await;
}

#[tokio::test]
async fn topic_alias_above_the_maximum_is_a_protocol_error() {
    scenario("topic_alias_above_the_maximum_is_a_protocol_error").await;
}

#[tokio::test]
async fn client_maximum_packet_size_is_respected() {
    scenario("client_maximum_packet_size_is_respected").await;
}

#[tokio::test]
async fn receive_maximum_is_respected() {
    scenario("receive_maximum_is_respected").await;
}

#[tokio::test]
async fn keep_alive_zero_is_accepted_with_server_keep_alive() {
    scenario("keep_alive_zero_is_accepted_with_server_keep_alive").await;
}
