//! Public tips (issue 19) end to end against a real `jiandu serve`: a citizen's tip with a
//! photo becomes a dispatched report of source `public` that integrations see, its photo is
//! ledgered evidence, the desk answers and the citizen reads the answer with code and secret
//! (a wrong secret gets what an unknown code gets); contacts are for leaders only and audited;
//! a script is refused with 429 long before its 200th tip; malformed tips are 422s naming the
//! field. A tip that names its place only in words has no coordinates: it goes to the desk, which
//! places it, and then to the nearest phone. Photos lose their metadata (EXIF GPS, camera serial)
//! before they are hashed and stored. On SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::{Db, TestApp};
use reqwest::StatusCode;
use rumqttc::{Event, Packet, QoS};
use serde_json::{Value, json};

/// An 8×8 JPEG as a camera library writes it (JFIF, tables, one scan), 327 bytes.
const JPEG_8X8: &str = "ffd8ffe000104a46494600010100000100010000ffdb0043000a07070807060a0808080b0a0a0b0e18100e0d0d0e1d15161118231f2524221f2221262b372f26293429212230413134393b3e3e3e252e4449433c48373d3e3bffdb0043010a0b0b0e0d0e1c10101c3b2822283b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3bffc00011080008000803012200021101031101ffc4001500010100000000000000000000000000000005ffc4001b10000104030000000000000000000000000031337173b1b2e1ffc4001501010100000000000000000000000000000506ffc4001e110001040203010000000000000000000001020304110061213141f0ffda000c03010002110311003f0086ed9b7732a00116a2934329664c722381b6c0aabe7cd0d7dd50cfffd9";
/// A 4×4 PNG.
const PNG_4X4: &str = "89504e470d0a1a0a0000000d494844520000000400000004080200000026930929000000144944415478da63e4aa38c100034c0c480037070040ba01527700d3400000000049454e44ae426082";
/// What the camera wrote into the EXIF block of [`jpeg_with_exif`]: where the citizen stood and
/// the camera's serial number.
const EXIF_SECRETS: [&str; 2] = ["GPSLatitude 36.5012N", "BodySerialNumber JD-CAM-0042"];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A small real JPEG.
fn jpeg() -> Vec<u8> {
    unhex(JPEG_8X8)
}

/// The same JPEG as a phone camera hands it over: an APP1 EXIF block (a big-endian TIFF header,
/// a GPS position, the camera's serial) and a comment in front of the image.
fn jpeg_with_exif() -> Vec<u8> {
    let clean = jpeg();
    let mut exif = b"Exif\0\0MM\0*\0\0\0\x08".to_vec();
    exif.extend(EXIF_SECRETS.join(" ").bytes());
    let mut b = clean[..2].to_vec();
    for (marker, contents) in [(0xE1u8, exif), (0xFE, b"Owner: Zhang San".to_vec())] {
        b.extend([0xFF, marker]);
        b.extend(((contents.len() + 2) as u16).to_be_bytes());
        b.extend(contents);
    }
    b.extend_from_slice(&clean[2..]);
    b
}

/// `jiandu receipt verify` on a receipt, against this app's platform key.
fn verify_receipt(app: &TestApp, receipt: &Value) -> Result<(), String> {
    let file = app.dir.path().join("public-receipt.json");
    std::fs::write(&file, receipt.to_string()).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["receipt", "verify", file.to_str().unwrap()])
        .env("JIANDU_DATA_DIR", app.dir.path())
        .env("JIANDU_DB", &app.db)
        .output()
        .unwrap();
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// A multipart/form-data body by hand: text fields, then files `(field, filename, type, bytes)`.
fn form(fields: &[(&str, &str)], files: &[(&str, &str, &str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "----jiandu-test-boundary-7c1f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
        );
    }
    for (name, filename, mime, bytes) in files {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                 Content-Type: {mime}\r\n\r\n"
            )
            .bytes(),
        );
        body.extend(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_form(
    app: &TestApp,
    fields: &[(&str, &str)],
    files: &[(&str, &str, &str, Vec<u8>)],
) -> (StatusCode, Value) {
    let (ct, body) = form(fields, files);
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/public/tips", app.http))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post_json(app: &TestApp, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{}/api/v1/public/tips", app.http)).json(body).send().await.unwrap()
}

/// `GET /api/v1/public/tips/{code}` with the secret header.
async fn follow(app: &TestApp, code: &str, secret: Option<&str>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().get(format!("{}/api/v1/public/tips/{code}", app.http));
    if let Some(s) = secret {
        req = req.header("x-tip-secret", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A staff request with HTTP Basic.
async fn staff(
    app: &TestApp,
    user: &(String, String),
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req =
        reqwest::Client::new().request(method, format!("{}/api/v1{path}", app.http)).basic_auth(&user.0, Some(&user.1));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn add_user(app: &TestApp, name: &str, role: &str) -> (String, String) {
    (name.to_owned(), app.cli(&["user", "add", name, "--role", role])["password"].as_str().unwrap().to_owned())
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CONTACT: &str = "13912345678";

async fn a_citizens_tip_is_dispatched_answered_and_protected(db: Db) {
    let app = TestApp::spawn(db).await;
    let desk = add_user(&app, "desk", "dispatcher");
    let leader = add_user(&app, "leader", "leader");
    let auditor = add_user(&app, "auditor", "auditor");

    // An integration listening to report events.
    let (integ, token) = app.add_integration("hotline", &["jd/v1/events/report"], &[]);
    let (client, mut events) = common::connect(app.options(&integ, Some((&integ, &token)))).await.unwrap();
    client.subscribe("jd/v1/events/report", QoS::AtLeastOnce).await.unwrap();
    common::until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

    // Two phones on duty: one 100 m from the school gate, one 4 km away.
    let (near_id, near_token) = app.add_device("near");
    let near =
        common::walking_phone(&near_id, app.options(&near_id, Some((&near_id, &near_token))), 36.5010, 118.5000).await;
    let (far_id, far_token) = app.add_device("far");
    let far =
        common::walking_phone(&far_id, app.options(&far_id, Some((&far_id, &far_token))), 36.5360, 118.5000).await;
    eventually(20, "both phones on the map", || async {
        let d = app.get_json("/api/v1/devices").await;
        let placed = d["items"].as_array().map(|a| a.iter().filter(|x| !x["position"].is_null()).count()).unwrap_or(0);
        (placed == 2).then_some(())
    })
    .await;

    // The citizen: a photo, a plate and a contact.
    let (status, receipt) = post_form(
        &app,
        &[
            ("kind", "official-car"),
            ("text", "一辆公务车在学校门口接孩子"),
            ("lat", "36.5000"),
            ("lon", "118.5000"),
            ("place", "实验小学南门"),
            ("plate", "鲁G 12345"),
            ("contact", CONTACT),
        ],
        &[("photo", "gate.jpg", "image/jpeg", jpeg_with_exif())],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    let code = receipt["code"].as_str().unwrap().to_owned();
    let secret = receipt["secret"].as_str().unwrap().to_owned();
    assert!(code.starts_with('T') && code.len() == 11, "{code}");
    assert_eq!(secret.len(), 23, "four groups of five: {secret}");
    assert_eq!(receipt["photos"], 1);
    assert_eq!(receipt["status"], "received");

    // Integrations see it like any other report, without the contact.
    let created = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                let v: Value = serde_json::from_slice(&p.payload).unwrap();
                if v["type"] == "report.created" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("report.created on jd/v1/events/report");
    assert_eq!(created["data"]["source"], "public");
    assert_eq!(created["data"]["report"]["plate"], "鲁G12345");
    assert!(!created.to_string().contains(CONTACT), "no contact in events: {created}");
    let report_id = created["data"]["report"]["id"].as_str().unwrap().to_owned();

    // Dispatched to the nearest phone, which accepts.
    let view = eventually(30, "the nearest phone accepting", || async {
        let v = app.get_json(&format!("/api/v1/reports/{report_id}")).await;
        let ok = v["assignments"].as_array().unwrap().iter().any(|a| a["status"] == "accepted");
        ok.then_some(v)
    })
    .await;
    let accepted: Vec<&Value> =
        view["assignments"].as_array().unwrap().iter().filter(|a| a["status"] == "accepted").collect();
    assert_eq!(accepted[0]["device_id"], near_id.as_str(), "{view}");
    assert_eq!(accepted[0]["actor"], "dispatcher");
    assert_eq!(view["report"]["source"], "public");

    // The photo is evidence of the report, ledgered and signed like a phone's.
    let ev = app.get_json(&format!("/api/v1/evidence?report={report_id}")).await;
    let items = ev["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{ev}");
    assert_eq!(items[0]["device"], "public");
    assert_eq!(items[0]["mime"], "image/jpeg");
    let evid = items[0]["id"].as_str().or(items[0]["evid"].as_str()).unwrap().to_owned();
    let one = app.get_json(&format!("/api/v1/evidence/{evid}")).await;
    assert!(one["custody"].as_array().unwrap().iter().any(|c| c["kind"] == "evidence.stored"), "{one}");
    assert!(one["receipt"]["sig"].as_str().is_some_and(|s| s.len() == 128), "{one}");

    // Its metadata went before it was hashed: the stored bytes are the camera library's JPEG
    // without the EXIF block and the comment, the receipt covers exactly them, and the custody
    // log says what was removed.
    let stored = reqwest::Client::new()
        .get(format!("{}/api/v1/evidence/{evid}/content", app.http))
        .basic_auth(&app.admin.0, Some(&app.admin.1))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    assert_eq!(stored, jpeg(), "exactly the image without its metadata segments");
    assert!(!stored.windows(4).any(|w| w == b"Exif"), "an Exif segment was stored");
    for secret in EXIF_SECRETS.iter().chain(&["Zhang San"]) {
        assert!(!stored.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} was stored");
    }
    use sha2::Digest;
    assert_eq!(one["receipt"]["sha256"], hex::encode(sha2::Sha256::digest(&stored)));
    assert_eq!(one["receipt"]["size"], stored.len());
    verify_receipt(&app, &one["receipt"]).unwrap();
    let stored_entry = one["custody"].as_array().unwrap().iter().find(|c| c["kind"] == "evidence.stored").unwrap();
    assert_eq!(stored_entry["detail"]["metadata_removed"], true, "{stored_entry}");
    assert_eq!(stored_entry["detail"]["removed"], json!(["exif", "comment"]), "{stored_entry}");

    // The desk sees that a contact is on file, never the contact; the contacts are not theirs.
    let (s, desk_view) = staff(&app, &desk, "GET", &format!("/reports/{report_id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(desk_view["public"]["tips"][0]["contact_on_file"], true, "{desk_view}");
    assert_eq!(desk_view["public"]["place"], "实验小学南门");
    assert!(!desk_view.to_string().contains(CONTACT), "desk view holds the contact: {desk_view}");
    let (s, _) = staff(&app, &desk, "GET", &format!("/reports/{report_id}/contacts"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a dispatcher may not read contacts");
    let (s, _) = follow(&app, &code, Some(&secret)).await;
    assert_eq!(s, StatusCode::OK);

    // A leader may, and that view is in the audit (and the ledger).
    let (s, contacts) = staff(&app, &leader, "GET", &format!("/reports/{report_id}/contacts"), None).await;
    assert_eq!(s, StatusCode::OK, "{contacts}");
    assert_eq!(contacts["public"]["tips"][0]["contact"], CONTACT);
    let (s, audit) = staff(&app, &auditor, "GET", "/lookups", None).await;
    assert_eq!(s, StatusCode::OK, "{audit}");
    let row = audit["items"].as_array().unwrap().iter().find(|r| r["kind"] == "tip-contact").cloned();
    let row = row.unwrap_or_else(|| panic!("contact view audited: {audit}"));
    assert_eq!(row["actor"], "leader");
    assert_eq!(row["q"], report_id.as_str());
    assert_eq!(row["id"], contacts["audit"]["id"]);

    // The desk answers; the citizen reads it with code and secret, and nothing internal.
    let (s, fb) = staff(
        &app,
        &desk,
        "POST",
        &format!("/reports/{report_id}/feedback"),
        Some(json!({"text": "已核实：为私家车。"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{fb}");
    assert!(fb["feedback"]["ledger_seq"].as_i64().unwrap() > 0);
    let (s, _) =
        staff(&app, &desk, "POST", &format!("/reports/{report_id}/feedback"), Some(json!({"text": "  "}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) =
        staff(&app, &auditor, "POST", &format!("/reports/{report_id}/feedback"), Some(json!({"text": "x"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an auditor writes no feedback");
    let (s, seen) = follow(&app, &code.to_lowercase(), Some(&secret.replace('-', " "))).await;
    assert_eq!(s, StatusCode::OK, "{seen}");
    assert_eq!(seen["status"], "being_handled");
    assert_eq!(seen["feedback"][0]["text"], "已核实：为私家车。");
    let mut keys: Vec<&str> = seen.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["code", "feedback", "status", "submitted_at"], "nothing internal: {seen}");
    assert_eq!(seen["feedback"][0].as_object().unwrap().len(), 2, "text and ts only: {seen}");
    for internal in [near_id.as_str(), "desk", report_id.as_str()] {
        assert!(!seen.to_string().contains(internal), "{internal} leaked: {seen}");
    }

    // A wrong secret gets exactly what an unknown code gets; no secret is a 422.
    let wrong = follow(&app, &code, Some("AAAAA-BBBBB-CCCCC-DDDDD")).await;
    let unknown = follow(&app, "T0000000000", Some(&secret)).await;
    assert_eq!(wrong.0, StatusCode::NOT_FOUND);
    assert_eq!(wrong, unknown);
    let (s, e) = follow(&app, &code, None).await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("X-Tip-Secret")));

    // The same text and place again: folded into the report, with a code of its own.
    let again = post_json(
        &app,
        &json!({"kind": "official-car", "text": "一辆公务车在学校门口接孩子 ", "lat": 36.50001, "lon": 118.50002,
            "anonymous": true}),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.unwrap();
    assert_ne!(again["code"], code.as_str());
    let (_, v) = staff(&app, &desk, "GET", &format!("/reports/{report_id}"), None).await;
    assert_eq!(v["public"]["count"], 2, "{v}");
    assert_eq!(v["public"]["tips"][1]["anonymous"], true);
    assert_eq!(v["public"]["tips"][1]["contact_on_file"], false);
    let (s, seen) = follow(&app, again["code"].as_str().unwrap(), again["secret"].as_str()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(seen["feedback"][0]["text"], "已核实：为私家车。", "every reporter of the report sees the answer");
    let reports = app.get_json("/api/v1/reports").await;
    let public = reports["items"].as_array().unwrap().iter().filter(|r| r["source"] == "public").count();
    assert_eq!(public, 1, "folded, not a second report");

    // The log holds neither the contact nor anything of the citizen's request.
    let log = app.log();
    assert!(!log.contains(CONTACT), "contact in the log");
    assert!(!log.contains(&secret), "secret in the log");

    // The ledger verifies with the public evidence in it.
    let out = std::process::Command::new(common::bin())
        .arg("verify")
        .env("JIANDU_DATA_DIR", app.dir.path())
        .env("JIANDU_DB", &app.db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    near.abort();
    far.abort();
    app.stop();
}

#[tokio::test]
async fn a_citizens_tip_is_dispatched_answered_and_protected_sqlite() {
    a_citizens_tip_is_dispatched_answered_and_protected(Db::Sqlite).await;
}

#[tokio::test]
async fn a_citizens_tip_is_dispatched_answered_and_protected_postgres() {
    a_citizens_tip_is_dispatched_answered_and_protected(Db::Postgres).await;
}

/// Collects the events an integration receives on `jd/v1/events/#` until `done` holds for the
/// list, for at most `secs`.
async fn events_until(
    events: &mut rumqttc::EventLoop,
    secs: u64,
    seen: &mut Vec<Value>,
    done: impl Fn(&[Value]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done(seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "timed out; events so far: {seen:?}");
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) = tokio::time::timeout(left, events.poll()).await {
            seen.push(serde_json::from_slice(&p.payload).unwrap());
        }
    }
}

/// A tip that names its place only in words (issue 19: location optional): stored with null
/// coordinates (so integrations see null `lat`/`lon`), never offered, escalated to the desk with
/// an alarm of reason `no_location`; the same text and place fold into it. Only the desk's
/// dispatching roles may place it (anonymous 401; integration, leader, auditor 403); placing is
/// ledgered, answered 409 the second time, and the nearest phone gets the offer.
async fn a_tip_naming_only_its_place_waits_for_the_desk_to_place_it(db: Db) {
    let app = TestApp::spawn(db).await;
    let desk = add_user(&app, "desk", "dispatcher");
    let leader = add_user(&app, "leader", "leader");
    let auditor = add_user(&app, "auditor", "auditor");
    let (integ, token) = app.add_integration("hotline", &["jd/v1/events/#"], &[]);
    let (client, mut events) = common::connect(app.options(&integ, Some((&integ, &token)))).await.unwrap();
    client.subscribe("jd/v1/events/#", QoS::AtLeastOnce).await.unwrap();
    common::until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let (near_id, near_token) = app.add_device("near");
    let near =
        common::walking_phone(&near_id, app.options(&near_id, Some((&near_id, &near_token))), 36.5010, 118.5000).await;
    let (far_id, far_token) = app.add_device("far");
    let far =
        common::walking_phone(&far_id, app.options(&far_id, Some((&far_id, &far_token))), 36.5360, 118.5000).await;
    eventually(20, "both phones on the map", || async {
        let d = app.get_json("/api/v1/devices").await;
        let placed = d["items"].as_array().map(|a| a.iter().filter(|x| !x["position"].is_null()).count()).unwrap_or(0);
        (placed == 2).then_some(())
    })
    .await;

    let text = "幸福饭店二楼包间有人用公款宴请";
    let resp = post_json(&app, &json!({"kind": "banquet", "text": text, "place": "城关镇 幸福饭店"})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let first: Value = resp.json().await.unwrap();

    // Integrations: the report with null coordinates, then the alarm that sends it to the desk.
    let mut seen = Vec::new();
    events_until(&mut events, 20, &mut seen, |s| s.iter().any(|e| e["type"] == "alarm.unassigned")).await;
    let created = seen.iter().find(|e| e["type"] == "report.created").expect("report.created");
    assert_eq!(created["data"]["source"], "public");
    let wire = &created["data"]["report"];
    assert!(wire["lat"].is_null() && wire["lon"].is_null(), "{created}");
    let report_id = wire["id"].as_str().unwrap().to_owned();
    let alarm = seen.iter().find(|e| e["type"] == "alarm.unassigned").unwrap();
    assert_eq!(
        (alarm["data"]["report"].as_str(), alarm["data"]["reason"].as_str()),
        (Some(report_id.as_str()), Some("no_location"))
    );

    // The desk sees it escalated, without a point, with the place in words; no phone was offered it.
    let (_, v) = staff(&app, &desk, "GET", &format!("/reports/{report_id}"), None).await;
    assert_eq!(v["report"]["status"], "unassigned", "{v}");
    assert!(v["report"]["lat"].is_null() && v["report"]["lon"].is_null(), "{v}");
    assert_eq!(v["public"]["place"], "城关镇 幸福饭店");
    tokio::time::sleep(Duration::from_millis(2500)).await; // a dispatcher sweep or two
    let v = app.get_json(&format!("/api/v1/reports/{report_id}")).await;
    assert_eq!(v["assignments"], json!([]), "nobody is sent to a place without a point: {v}");
    let (s, e) = staff(&app, &desk, "POST", &format!("/reports/{report_id}/dispatch"), Some(json!({}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "nearest of nowhere: {e}");
    let (s, e) =
        staff(&app, &desk, "POST", &format!("/reports/{report_id}/dispatch"), Some(json!({"device": near_id}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "a hand offer of nowhere: {e}");

    // The same text at the same place in words folds into it; another place does not.
    let again =
        post_json(&app, &json!({"kind": "banquet", "text": format!(" {text} "), "place": "城关镇   幸福饭店"})).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let (_, v) = staff(&app, &desk, "GET", &format!("/reports/{report_id}"), None).await;
    assert_eq!(v["public"]["count"], 2, "folded: {v}");
    let elsewhere = post_json(&app, &json!({"kind": "banquet", "text": text, "place": "城关镇 快乐酒家"})).await;
    assert_eq!(elsewhere.status(), StatusCode::CREATED);
    let reports = app.get_json("/api/v1/reports").await;
    assert_eq!(reports["items"].as_array().unwrap().iter().filter(|r| r["source"] == "public").count(), 2);

    // Who may place it.
    let url = format!("{}/api/v1/reports/{report_id}/location", app.http);
    let at = json!({"lat": 36.5, "lon": 118.5});
    let http = reqwest::Client::new();
    assert_eq!(http.post(&url).json(&at).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(http.post(&url).bearer_auth(&token).json(&at).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    for who in [&leader, &auditor] {
        let (s, _) = staff(&app, who, "POST", &format!("/reports/{report_id}/location"), Some(at.clone())).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{} may not place reports", who.0);
    }
    for (body, field) in [
        (json!({"lat": 36.5}), "lon"),
        (json!({"lat": 95.0, "lon": 118.5}), "lat"),
        (json!({"lat": "north", "lon": 1}), "lat"),
    ] {
        let (s, e) = staff(&app, &desk, "POST", &format!("/reports/{report_id}/location"), Some(body)).await;
        assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(field)), "{e}");
    }
    let (s, _) = staff(&app, &desk, "POST", "/reports/nope/location", Some(at.clone())).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The desk places it 100 m south of the near phone: dispatched to that phone, which accepts.
    let (s, v) = staff(&app, &desk, "POST", &format!("/reports/{report_id}/location"), Some(at.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["report"]["lat"].as_f64(), v["report"]["lon"].as_f64()), (Some(36.5), Some(118.5)));
    let view = eventually(30, "the nearest phone accepting the placed tip", || async {
        let v = app.get_json(&format!("/api/v1/reports/{report_id}")).await;
        v["assignments"].as_array().unwrap().iter().any(|a| a["status"] == "accepted").then_some(v)
    })
    .await;
    let offered: Vec<&str> =
        view["assignments"].as_array().unwrap().iter().filter_map(|a| a["device_id"].as_str()).collect();
    assert_eq!(offered, [near_id.as_str()], "{view}");
    let (s, e) =
        staff(&app, &desk, "POST", &format!("/reports/{report_id}/location"), Some(json!({"lat": 36.6, "lon": 118.6})))
            .await;
    assert_eq!(s, StatusCode::CONFLICT, "placed once: {e}");
    events_until(&mut events, 10, &mut seen, |s| s.iter().any(|e| e["type"] == "report.located")).await;

    // A report that came with a point cannot be placed again either.
    let (s, web) =
        staff(&app, &desk, "POST", "/reports", Some(json!({"kind": "gift", "text": "t", "lat": 36.5, "lon": 118.5})))
            .await;
    let web_id = web["report"]["id"].as_str().unwrap_or_else(|| panic!("creating a report: {s} {web}\n{}", app.log()));
    let (s, _) = staff(&app, &desk, "POST", &format!("/reports/{web_id}/location"), Some(at)).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Ledgered with who placed it; the citizen sees it being handled.
    let ledger = app.get_json("/api/v1/ledger?limit=200").await;
    let located = ledger["items"].as_array().unwrap().iter().find(|e| e["kind"] == "report.located").cloned();
    let located = located.unwrap_or_else(|| panic!("report.located not in the ledger: {ledger}"));
    assert_eq!((located["actor"].as_str(), located["subject"].as_str()), (Some("desk"), Some(report_id.as_str())));
    let (s, seen) = follow(&app, first["code"].as_str().unwrap(), first["secret"].as_str()).await;
    assert_eq!((s, seen["status"].as_str()), (StatusCode::OK, Some("being_handled")));
    near.abort();
    far.abort();
    app.stop();
}

#[tokio::test]
async fn a_tip_naming_only_its_place_waits_for_the_desk_to_place_it_sqlite() {
    a_tip_naming_only_its_place_waits_for_the_desk_to_place_it(Db::Sqlite).await;
}

#[tokio::test]
async fn a_tip_naming_only_its_place_waits_for_the_desk_to_place_it_postgres() {
    a_tip_naming_only_its_place_waits_for_the_desk_to_place_it(Db::Postgres).await;
}

/// With the default limits, a script sending 200 tips from one address is challenged from its
/// fourth and refused with 429 and `Retry-After` from its eleventh; a solved challenge passes
/// once. Guessing follow-ups is limited the same way.
#[tokio::test]
async fn a_script_is_stopped_long_before_its_200th_tip() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let tip = |i: usize| json!({"kind": "other", "text": format!("script tip number {i}"), "lat": 36.5, "lon": 118.5});
    let mut first_429 = None;
    let mut challenged = 0;
    let mut passed = 0;
    for i in 0..200 {
        let resp = post_json(&app, &tip(i)).await;
        match resp.status() {
            StatusCode::CREATED => passed += 1,
            StatusCode::PRECONDITION_REQUIRED => {
                let header = resp.headers().get("x-tip-challenge").map(|v| v.to_str().unwrap().to_owned());
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"]["field"], "X-Tip-Proof");
                assert_eq!(header.as_deref(), body["challenge"]["token"].as_str());
                challenged += 1;
                if challenged == 1 {
                    // A family's fourth tip: the page solves the challenge and it goes through.
                    let token = body["challenge"]["token"].as_str().unwrap();
                    let bits = body["challenge"]["difficulty"].as_u64().unwrap() as u32;
                    let proof = format!("{token}:{}", jiandu_web::abuse::solve(token, bits));
                    let resp = reqwest::Client::new()
                        .post(format!("{}/api/v1/public/tips", app.http))
                        .header("x-tip-proof", &proof)
                        .json(&tip(1000))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::CREATED, "a solved challenge passes");
                    passed += 1;
                    let resp = reqwest::Client::new()
                        .post(format!("{}/api/v1/public/tips", app.http))
                        .header("x-tip-proof", &proof)
                        .json(&tip(1001))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::PRECONDITION_REQUIRED, "a proof is taken once");
                }
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=600).contains(&wait), "Retry-After {wait}");
                first_429.get_or_insert(i);
            }
            other => panic!("tip {i}: unexpected {other}"),
        }
    }
    let metrics = reqwest::get(format!("{}/metrics", app.http)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("jiandu_public_tips_total{result=\"rate_limited\"}"), "{metrics}");
    let first = first_429.expect("the script is refused");
    assert!(first < 20, "refused only at tip {first}");
    assert_eq!(passed, 4, "three, and one with a solved challenge");

    // Walking codes: wrong secrets are limited per address too.
    let mut refused = None;
    for i in 0..30 {
        let (s, _) = follow(&app, &format!("T{:010}", i), Some("AAAAA-BBBBB-CCCCC-DDDDD")).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(i);
            break;
        }
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    assert_eq!(refused, Some(10), "the eleventh guess is refused");
    app.stop();
}

/// Behind a trusted reverse proxy each citizen has a limit of their own (the forwarded client
/// address), and a forged `X-Forwarded-For` from anyone else changes nothing.
#[tokio::test]
async fn behind_a_trusted_proxy_each_citizen_has_their_own_limit() {
    let app = TestApp::spawn_with_config(
        Db::Sqlite,
        "[web]\ntrusted_proxies = [\"127.0.0.1\"]\n[public]\nper_address = 2\nchallenge_after = 100",
    )
    .await;
    let send = |client: &'static str, i: usize| {
        let url = format!("{}/api/v1/public/tips", app.http);
        async move {
            let body = json!({"kind": "other", "text": format!("tip {client} {i}"), "lat": 36.5, "lon": 118.5});
            reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", client)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for i in 0..2 {
        assert_eq!(send("198.51.100.1", i).await, StatusCode::CREATED);
    }
    assert_eq!(send("198.51.100.1", 2).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send("198.51.100.2", 0).await, StatusCode::CREATED, "a neighbour behind the same proxy is not affected");
    app.stop();

    // Without the proxy setting, the header is the client's own word and ignored.
    let app = TestApp::spawn_with_config(Db::Sqlite, "[public]\nper_address = 2\nchallenge_after = 100").await;
    let send = |client: String, i: usize| {
        let url = format!("{}/api/v1/public/tips", app.http);
        async move {
            let body = json!({"kind": "other", "text": format!("tip {client} {i}"), "lat": 36.5, "lon": 118.5});
            reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", client)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(send("203.0.113.1".into(), 0).await, StatusCode::CREATED);
    assert_eq!(send("203.0.113.2".into(), 0).await, StatusCode::CREATED);
    assert_eq!(
        send("203.0.113.3".into(), 0).await,
        StatusCode::TOO_MANY_REQUESTS,
        "forged addresses share the real one"
    );
    app.stop();
}

/// Staff endpoints of public tips refuse callers without the right: no login, the wrong role, an
/// integration.
#[tokio::test]
async fn feedback_and_contacts_refuse_callers_without_the_right() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let body = json!({"kind": "gift", "text": "单位发放购物卡", "lat": 36.5, "lon": 118.5, "contact": CONTACT});
    assert_eq!(post_json(&app, &body).await.status(), StatusCode::CREATED);
    let id = app.get_json("/api/v1/reports").await["items"][0]["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let feedback = format!("{}/api/v1/reports/{id}/feedback", app.http);
    let contacts = format!("{}/api/v1/reports/{id}/contacts", app.http);
    let r = http.post(&feedback).json(&json!({"text": "x"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http.get(&contacts).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (_, token) = app.add_integration("hotline", &["jd/v1/events/report"], &[]);
    let r = http.get(&contacts).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "integrations never see contacts");
    let r = http.post(&feedback).bearer_auth(&token).json(&json!({"text": "x"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let auditor = add_user(&app, "auditor", "auditor");
    let (s, _) = staff(&app, &auditor, "GET", &format!("/reports/{id}/contacts"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "auditors read the audit, not the contacts");
    // A report that did not come from the public has nobody to answer.
    let desk = add_user(&app, "desk", "dispatcher");
    let (s, r) = staff(
        &app,
        &desk,
        "POST",
        "/reports",
        Some(json!({"kind": "banquet", "text": "t", "lat": 36.5, "lon": 118.5})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let web_id = r["report"]["id"].as_str().unwrap();
    let (s, _) = staff(&app, &desk, "POST", &format!("/reports/{web_id}/feedback"), Some(json!({"text": "x"}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = staff(&app, &desk, "POST", "/reports/nope/feedback", Some(json!({"text": "x"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.stop();
}

/// Malformed tips: each is a 422 naming the field (limits raised so none is refused for rate).
#[tokio::test]
async fn malformed_tips_are_refused_naming_the_field() {
    let app = TestApp::spawn_with_config(Db::Sqlite, "[public]\nper_address = 1000\nchallenge_after = 1000").await;
    let good = json!({"kind": "banquet", "text": "饭店包间里有公款宴请", "lat": 36.5, "lon": 118.5});
    let with = |k: &str, v: Value| {
        let mut g = good.clone();
        g[k] = v;
        g
    };
    let without = |k: &str| {
        let mut g = good.clone();
        g.as_object_mut().unwrap().remove(k);
        g
    };
    let cases = [
        (without("kind"), "kind"),
        (with("kind", json!("<script>")), "kind"),
        (with("text", json!("")), "text"),
        (with("text", json!("长".repeat(2001))), "text"),
        (without("lat"), "lat"),
        (without("lon"), "lon"),
        (with("lat", json!(91.0)), "lat"),
        (with("lon", json!("east")), "lon"),
        (with("plate", json!("鲁G<12345>")), "plate"),
        (with("place", json!("x".repeat(201))), "place"),
        (with("contact", json!("c".repeat(101))), "contact"),
        (with("anonymous", json!("maybe")), "anonymous"),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let resp = post_json(&app, &body).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    // Where: neither a point nor a place (or a blank one) is refused naming `place`.
    let mut nowhere = good.clone();
    nowhere.as_object_mut().unwrap().retain(|k, _| k != "lat" && k != "lon");
    for place in [None, Some("   ")] {
        let mut body = nowhere.clone();
        if let Some(p) = place {
            body["place"] = json!(p);
        }
        let e: Value = post_json(&app, &body).await.json().await.unwrap();
        assert_eq!(e["error"]["field"], "place", "{e}");
    }
    // An anonymous tip keeps no contact.
    let resp = post_json(&app, &with("anonymous", json!(true)).tap(|v| v["contact"] = json!(CONTACT))).await;
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["field"], "contact");
    // Not JSON, another content type, an oversized JSON body.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/public/tips", app.http))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["field"], "body");
    let resp =
        reqwest::Client::new().post(format!("{}/api/v1/public/tips", app.http)).body("kind=x").send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["field"], "Content-Type");
    let resp = post_json(&app, &with("text", json!("x".repeat(40_000)))).await;
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["field"], "body");

    // Forms: photos of the wrong type or content, too many, an unknown field, a bad number.
    let fields = [("kind", "gift"), ("text", "收到购物卡一叠"), ("lat", "36.5"), ("lon", "118.5")];
    let (s, e) =
        post_form(&app, &fields, &[("photo", "x.html", "text/html", b"<html><script>alert(1)</script>".to_vec())])
            .await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("photos[0]")), "{e}");
    let (s, e) = post_form(&app, &fields, &[("photo", "x.svg", "image/svg+xml", b"<svg/>".to_vec())]).await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("photos[0]")), "{e}");
    let (s, e) =
        post_form(&app, &fields, &[("photo", "x.jpg", "image/jpeg", b"<html>not a jpeg</html>".to_vec())]).await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("photos[0]")), "{e}");
    let four: Vec<_> = (0..4).map(|_| ("photo", "p.jpg", "image/jpeg", jpeg())).collect();
    let (s, e) = post_form(&app, &fields, &four).await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("photos")), "{e}");
    let (s, e) = post_form(&app, &[("kind", "gift"), ("secret_admin", "1")], &[]).await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("secret_admin")), "{e}");
    let (s, e) =
        post_form(&app, &[("kind", "gift"), ("text", "收到购物卡一叠"), ("lat", "north"), ("lon", "118.5")], &[]).await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("lat")), "{e}");
    // Types whose metadata cannot be removed, and photos that do not parse as what they claim
    // (cut short, garbage after the magic number): refused, never stored, never a crash.
    let (s, e) = post_form(&app, &fields, &[("photo", "x.gif", "image/gif", b"GIF89a\x01\0\x01\0".to_vec())]).await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("photos[0]")), "{e}");
    let exif = jpeg_with_exif();
    let cut = [exif[..exif.len() / 2].to_vec(), exif[..40].to_vec(), exif[..exif.len() - 2].to_vec()];
    for (i, bytes) in cut.into_iter().enumerate() {
        let (s, e) = post_form(&app, &fields, &[("photo", "cut.jpg", "image/jpeg", bytes)]).await;
        assert_eq!(
            (s, e["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("photos[0]")),
            "{i}: {e}"
        );
    }
    let png = unhex(PNG_4X4);
    let (s, e) = post_form(&app, &fields, &[("photo", "cut.png", "image/png", png[..png.len() - 5].to_vec())]).await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("photos[0]")), "{e}");
    let big = vec![0xFFu8; 9 * 1024 * 1024];
    let (s, e) = post_form(&app, &fields, &[("photo", "big.jpg", "image/jpeg", big)]).await;
    assert_eq!((s, e["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("photos[0]")), "{e}");
    // Nothing of it became a report.
    assert_eq!(app.get_json("/api/v1/reports").await["items"].as_array().unwrap().len(), 0);
    // And a good form still works.
    let (s, r) = post_form(&app, &fields, &[("photo", "p.png", "image/png", unhex(PNG_4X4))]).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    app.stop();
}

/// `tap` for building a value inline.
trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
impl<T> Tap for T {}

/// The acceptance run in headless Chromium on a phone-sized screen (tests/browser/tip.mjs): the
/// public page, dispatch to the nearest simulated phone, the desk's feedback, the leader's
/// audited view of the contact, the citizen's follow-up. The page must solve a proof of work
/// (`challenge_after = 1`).
#[tokio::test]
async fn a_citizen_reports_from_a_phone_browser_and_reads_the_answer() {
    let app = TestApp::spawn_with_config(Db::Sqlite, "[public]\nchallenge_after = 1\ndifficulty = 12").await;
    let desk = add_user(&app, "desk", "dispatcher");
    let leader = add_user(&app, "leader", "leader");
    let auditor = add_user(&app, "auditor", "auditor");
    let mut phones = Vec::new();
    let mut nearest = String::new();
    for (i, lat) in [36.5010, 36.5200, 36.4700].into_iter().enumerate() {
        let (id, token) = app.add_device(&format!("patrol {i}"));
        phones.push(common::walking_phone(&id, app.options(&id, Some((&id, &token))), lat, 118.5).await);
        if i == 0 {
            nearest = id;
        }
    }
    let stdout = common::run_browser_script(
        &app,
        "tip.mjs",
        &app.http,
        "tip",
        &[],
        &[
            ("JD_DESK", format!("{}:{}", desk.0, desk.1)),
            ("JD_LEADER", format!("{}:{}", leader.0, leader.1)),
            ("JD_NEAREST", nearest.to_string()),
        ],
        Duration::from_secs(300),
    )
    .await;
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or_else(|| panic!("no result line:\n{stdout}"));
    let report_id = result["report"].as_str().unwrap();

    // What the browsers did is in the database: the photo as evidence, the feedback in the
    // ledger, the leader's view of the contact in the audit.
    let ev = app.get_json(&format!("/api/v1/evidence?report={report_id}")).await;
    assert_eq!(ev["items"].as_array().unwrap().len(), 1, "{ev}");
    let view = app.get_json(&format!("/api/v1/reports/{report_id}")).await;
    assert_eq!(view["report"]["plate"], "鲁G12345");
    assert_eq!(view["feedback"][0]["author"], "desk");
    let (_, audit) = staff(&app, &auditor, "GET", "/lookups", None).await;
    let row = audit["items"].as_array().unwrap().iter().find(|r| r["kind"] == "tip-contact").cloned();
    assert_eq!(row.unwrap_or_else(|| panic!("{audit}"))["actor"], "leader");
    let ledger = app.get_json("/api/v1/ledger?limit=100").await;
    let kinds: Vec<&str> = ledger["items"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in ["tip.received", "report.received", "evidence.stored", "report.feedback", "lookup.batch"] {
        assert!(kinds.contains(&kind), "{kind} not in the ledger: {kinds:?}");
    }
    assert!(!app.log().contains(CONTACT), "the contact is in the log");
    let placed = app.get_json(&format!("/api/v1/reports/{}", result["place_only"].as_str().unwrap())).await;
    assert_eq!(placed["report"]["lat"], 36.5, "placed by the desk in the browser: {placed}");
    for name in
        ["tip-form-390.png", "tip-receipt-390.png", "tip-desk-390.png", "tip-follow-390.png", "tip-desk-place-390.png"]
    {
        let len = std::fs::metadata(common::artifacts_dir("tip").join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "screenshot {name} missing or empty ({len} bytes)");
    }
    for p in phones {
        p.abort();
    }
    app.stop();
}
