//! The embedded broker over real TCP: who may log in, and what each account may publish and
//! subscribe (DESIGN §3 ACL), against a real `jiandu serve` process.

mod common;

use std::time::Duration;

use common::{Db, TestApp, connect, drive, until};
use rumqttc::{ConnectReturnCode, ConnectionError, Packet, QoS, SubscribeReasonCode};

fn refused(r: Result<impl Sized, ConnectionError>) -> ConnectReturnCode {
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusing CONNACK, got error {e}"),
        Ok(_) => panic!("expected a refusing CONNACK, got accepted"),
    }
}

async fn logins_are_checked(db: Db) {
    let app = TestApp::spawn(db).await;
    let (id, token) = app.add_device("张三的手机");
    let (other, _) = app.add_device("李四的手机");

    let (_c, _e) = connect(app.options(&id, Some((&id, &token)))).await.expect("right credentials accepted");
    let (_c2, _e2) = connect(app.options(&format!("{id}-tool"), Some((&id, &token))))
        .await
        .expect("a suffixed client id of the same device is accepted");

    let code = refused(connect(app.options(&id, Some((&id, "wrong-token")))).await);
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword, "wrong password");
    let code = refused(connect(app.options("dnosuchdevice", Some(("dnosuchdevice", &token)))).await);
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword, "unknown device");
    let code = refused(connect(app.options("anon", None)).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized, "anonymous");
    let code = refused(connect(app.options(&other, Some((&id, &token)))).await);
    assert_eq!(code, ConnectReturnCode::BadClientId, "client id of another device");

    app.cli(&["device", "revoke", &id]);
    let code = refused(connect(app.options(&id, Some((&id, &token)))).await);
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword, "revoked device");
    let status = app.stop();
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status:?}");
}

#[tokio::test]
async fn logins_are_checked_sqlite() {
    logins_are_checked(Db::Sqlite).await;
}

#[tokio::test]
async fn logins_are_checked_postgres() {
    logins_are_checked(Db::Postgres).await;
}

#[tokio::test]
async fn mqtt5_logins_are_checked() {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, Packet as V5Packet};
    use rumqttc::v5::{AsyncClient, ConnectionError as V5Error, Event, MqttOptions};
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, token) = app.add_device("v5 phone");
    let attempt = |pass: &str| {
        let mut o = MqttOptions::new(&id, &app.mqtt_host, app.mqtt_port);
        o.set_credentials(&id, pass);
        let (_c, mut events) = AsyncClient::new(o, 10);
        async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), events.poll()).await.expect("answer") {
                    Ok(Event::Incoming(V5Packet::ConnAck(a))) => return Ok(a.code),
                    Ok(_) => {}
                    Err(V5Error::ConnectionRefused(code)) => return Err(code),
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }
    };
    assert_eq!(attempt(&token).await, Ok(V5Code::Success));
    assert_eq!(attempt("nope").await, Err(V5Code::BadUserNamePassword));
}

#[tokio::test]
async fn a_device_publishes_only_into_its_own_subtree() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (a, a_token) = app.add_device("A");
    let (b, _) = app.add_device("B");
    let (obs, obs_token) = app.add_integration("observer", &["#"], &["jd/v1/reports"]);

    let (observer, mut obs_events) = connect(app.options(&obs, Some((&obs, &obs_token)))).await.unwrap();
    observer.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let codes = until(&mut obs_events, |p| match p {
        Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);

    let (phone, mut phone_events) = connect(app.options(&a, Some((&a, &a_token)))).await.unwrap();
    phone.subscribe(format!("jd/v1/dev/{a}/inbox/#"), QoS::AtLeastOnce).await.unwrap();
    until(&mut phone_events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

    let forbidden = [
        format!("jd/v1/dev/{b}/hb"),
        format!("jd/v1/dev/{b}/inbox/assignment"),
        format!("jd/v1/dev/{a}/inbox/ack"),
        "jd/v1/events/report".to_owned(),
        "jd/v1/reports".to_owned(),
    ];
    for t in &forbidden {
        phone.publish(t, QoS::AtLeastOnce, false, br#"{"forged":true}"#.to_vec()).await.unwrap();
    }
    let marker = format!("jd/v1/dev/{a}/hb");
    phone.publish(&marker, QoS::AtLeastOnce, false, br#"{"marker":true}"#.to_vec()).await.unwrap();

    // The phone is told why, on its own inbox.
    let notice = until(&mut phone_events, |p| match p {
        Packet::Publish(p) if p.topic.ends_with("/inbox/error") => Some(p.payload.clone()),
        _ => None,
    })
    .await;
    let notice: serde_json::Value = serde_json::from_slice(&notice).unwrap();
    assert_eq!(notice["topic"], forbidden[0].as_str());
    assert!(notice["error"].as_str().unwrap().contains("not authorised"));
    let phone_task = drive(phone_events);

    // The observer, subscribed to everything, sees the marker and nothing forged before it.
    let mut seen = Vec::new();
    until(&mut obs_events, |p| match p {
        Packet::Publish(p) => {
            seen.push(p.topic.clone());
            (p.topic == marker).then_some(())
        }
        _ => None,
    })
    .await;
    for t in &forbidden {
        assert!(!seen.contains(t), "forged publish to {t} reached a subscriber; seen {seen:?}");
    }
    phone_task.abort();
}

#[tokio::test]
async fn a_device_subscribes_only_to_its_own_inbox() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (a, a_token) = app.add_device("A");
    let (b, _) = app.add_device("B");
    let (phone, mut events) = connect(app.options(&a, Some((&a, &a_token)))).await.unwrap();

    for filter in [
        "#".to_owned(),
        format!("jd/v1/dev/{b}/inbox/#"),
        "jd/v1/dev/+/inbox/#".to_owned(),
        format!("$share/g/jd/v1/dev/{b}/inbox/#"),
    ] {
        phone.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
        let codes = until(&mut events, |p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
        assert_eq!(codes, vec![SubscribeReasonCode::Failure], "subscribe {filter}");
    }

    // A mixed SUBSCRIBE is granted filter by filter, in order.
    phone
        .subscribe_many([
            rumqttc::SubscribeFilter::new(format!("jd/v1/dev/{b}/inbox/#"), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(format!("jd/v1/dev/{a}/inbox/#"), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("jd/v1/platform/key".to_owned(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    let codes = until(&mut events, |p| match p {
        Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtMostOnce)
        ]
    );
}

#[tokio::test]
async fn an_integration_is_held_to_its_filters() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (a, _) = app.add_device("A");
    let (obs, obs_token) = app.add_integration("observer", &["#"], &["jd/v1/reports"]);
    let (hot, hot_token) = app.add_integration("hotline", &["jd/v1/events/#"], &["jd/v1/reports"]);

    let (observer, mut obs_events) = connect(app.options(&obs, Some((&obs, &obs_token)))).await.unwrap();
    observer.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    until(&mut obs_events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

    let (client, mut events) = connect(app.options(&hot, Some((&hot, &hot_token)))).await.unwrap();
    client.subscribe("jd/v1/dev/#", QoS::AtLeastOnce).await.unwrap();
    let codes = until(&mut events, |p| match p {
        Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, vec![SubscribeReasonCode::Failure]);
    client.subscribe("jd/v1/events/report", QoS::AtLeastOnce).await.unwrap();
    let codes = until(&mut events, |p| match p {
        Packet::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);

    let forged = format!("jd/v1/dev/{a}/hb");
    client.publish(&forged, QoS::AtLeastOnce, false, b"{}".to_vec()).await.unwrap();
    client.publish("jd/v1/events/alarm", QoS::AtLeastOnce, false, b"{}".to_vec()).await.unwrap();
    client.publish("jd/v1/reports", QoS::AtLeastOnce, false, br#"{"marker":1}"#.to_vec()).await.unwrap();
    let task = drive(events);
    let mut seen = Vec::new();
    until(&mut obs_events, |p| match p {
        Packet::Publish(p) => {
            seen.push(p.topic.clone());
            (p.topic == "jd/v1/reports").then_some(())
        }
        _ => None,
    })
    .await;
    assert!(!seen.contains(&forged), "integration published as a device: {seen:?}");
    assert!(!seen.iter().any(|t| t == "jd/v1/events/alarm"), "integration published outside its filters: {seen:?}");
    task.abort();
}

#[tokio::test]
async fn a_last_will_outside_the_device_subtree_is_refused() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (a, a_token) = app.add_device("A");
    let (b, _) = app.add_device("B");
    let mut o = app.options(&a, Some((&a, &a_token)));
    o.set_last_will(rumqttc::LastWill::new(
        format!("jd/v1/dev/{b}/presence"),
        r#"{"online":false}"#,
        QoS::AtLeastOnce,
        true,
    ));
    assert_eq!(refused(connect(o).await), ConnectReturnCode::NotAuthorized);

    let mut o = app.options(&a, Some((&a, &a_token)));
    o.set_last_will(rumqttc::LastWill::new(
        format!("jd/v1/dev/{a}/presence"),
        r#"{"online":false}"#,
        QoS::AtLeastOnce,
        true,
    ));
    connect(o).await.expect("a will on its own presence topic is fine");
}

#[tokio::test]
async fn garbage_on_the_mqtt_port_does_not_hurt_the_broker() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn(Db::Sqlite).await;
    let addr = format!("{}:{}", app.mqtt_host, app.mqtt_port);
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f], &[0x10, 0x02, 0x00, 0x04]] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(12), s.read(&mut buf)).await;
    }
    let (id, token) = app.add_device("still works");
    connect(app.options(&id, Some((&id, &token)))).await.expect("broker still accepts logins");
}
