//! Registries from real exports: a party-member export keyed by 公民身份号码 with no code
//! column imports through the real CLI, and the person is then found by a phone over MQTT
//! (without the identity number) and by office staff over REST (with it masked).

mod common;

use std::time::Duration;

use common::{Db, TestApp, connect, until};
use rumqttc::{Packet, QoS};
use serde_json::{Value, json};

/// A typical 党员信息 export: no 编号, identity number as the key, branch as the unit.
const MEMBERS: &str = "姓名,公民身份号码,所在党支部\n\
                       赵建国,11010519491231002X,城关街道第一党支部\n\
                       钱秀英,370724198001010016,县财政局机关党支部\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_export_keyed_by_identity_number_is_looked_up_masked() {
    let app = TestApp::spawn_with_config(Db::Sqlite, "[lookup]\nrefresh_ms = 50").await;
    let path = app.dir.path().join("党员信息.csv");
    std::fs::write(&path, MEMBERS).unwrap();
    let out = app.cli(&["import", "members", &path.display().to_string()]);
    assert_eq!(out["added"], 2, "{out}");
    // Importing the same export again changes nothing: the key is stable.
    let again = app.cli(&["import", "members", &path.display().to_string()]);
    assert_eq!(again["unchanged"], 2, "{again}");
    assert!(!again.to_string().contains("11010519491231002X"), "{again}");

    let (id, token) = app.add_device("巡查三号");
    let (phone, mut events) = connect(app.options(&id, Some((&id, &token)))).await.unwrap();
    phone.subscribe(format!("jd/v1/dev/{id}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let topic = format!("jd/v1/dev/{id}/inbox/lookup");
    let mut answer = Value::Null;
    for i in 0..100 {
        let ask = json!({"corr": format!("p{i}"), "kind": "person", "q": "赵建国"});
        phone.publish(format!("jd/v1/dev/{id}/lookup"), QoS::AtLeastOnce, false, ask.to_string()).await.unwrap();
        answer = until(&mut events, |p| match p {
            Packet::Publish(m) if m.topic == topic => serde_json::from_slice::<Value>(&m.payload).ok(),
            _ => None,
        })
        .await;
        if answer["found"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer["found"], true, "{answer}");
    assert_eq!(answer["result"]["name"], "赵建国", "{answer}");
    assert_eq!(answer["result"]["unit"], "城关街道第一党支部", "{answer}");
    assert_eq!(answer["result"]["party_member"], true, "{answer}");
    assert!(!answer.to_string().contains("1949123"), "a phone never sees the identity number: {answer}");

    // Office staff see the record with the number masked, and the key does not carry it.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/lookup/person?q=赵建国", app.http))
        .basic_auth(&app.admin.0, Some(&app.admin.1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let office: Value = resp.json().await.unwrap();
    assert_eq!(office["result"]["id_number"], "110105********002X", "{office}");
    assert!(!office.to_string().contains("11010519491231002X"), "{office}");
    assert!(office["result"]["code"].as_str().is_some_and(|c| c.starts_with("sfz-")), "{office}");

    // A phone is not an office user: the REST look-up refuses its credentials.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/lookup/person?q=赵建国", app.http))
        .basic_auth(&id, Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "a phone's token is no web login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_choose_units_from_the_departments_registry() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let path = app.dir.path().join("departments.csv");
    std::fs::write(&path, "部门代码,部门名称\nD001,县财政局\nD002,城关街道办事处\n").unwrap();
    app.cli(&["import", "departments", &path.display().to_string()]);

    let list = app.get_json("/api/v1/departments").await;
    assert_eq!(
        list["items"],
        json!([{"code": "D001", "name": "县财政局"}, {"code": "D002", "name": "城关街道办事处"}]),
        "{list}"
    );
    // Nobody without a staff login reads it: no credentials, a phone's token, an integration.
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/departments", app.http);
    assert_eq!(http.get(&url).send().await.unwrap().status().as_u16(), 401);
    let (id, token) = app.add_device("巡查四号");
    assert_eq!(http.get(&url).basic_auth(&id, Some(&token)).send().await.unwrap().status().as_u16(), 401);
    let (name, password) = app.add_integration("hotline", &[], &["jd/v1/reports"]);
    let resp = http.get(&url).bearer_auth(&password).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403, "integration {name} is no office user");
}
