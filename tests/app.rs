//! The field app at `/app/` end to end (issue 18 acceptance): `tests/browser/app.mjs` drives
//! Debian's headless Chromium as a phone (390×844, touch, emulated geolocation, the network
//! switched off and on through the DevTools protocol) against a real `jiandu serve`; this side
//! sets the server up and then checks in the database, through the API, what the app did.

mod common;

use std::time::Duration;

use common::{Db, TestApp};
use serde_json::Value;

/// Points the phone makes offline while moving. The issue asks for a minute; the app's heartbeat
/// interval is 1 s here (`[web] app_heartbeat_s`), so the script stays offline until the app has
/// made 60 points (counted, not timed: a loaded machine throttles the page's timers).
const OFFLINE_S: u64 = 60;

const VEHICLES: &str =
    "车牌号,使用单位,车辆类型,使用性质,驾驶员,状态\n鲁G12340,县公安局,越野车,执法执勤用车,李娜,在用\n";
const MEMBERS: &str =
    "党员编号,姓名,身份证号,所在单位,职务,职级\nM0000001,张三丰,11010519491231002X,县财政局,科长,正科级\n";
const DEPARTMENTS: &str =
    "部门代码,部门名称,权力清单,责任清单\nD001,县财政局,预算编制；资金拨付；政府采购监管,财政监督\n";

#[tokio::test]
async fn the_field_app_works_in_headless_chromium() {
    let config = "[web]\napp_heartbeat_s = 1\n[dispatch]\noffer_timeout_s = 300\n[lookup]\nrefresh_ms = 50";
    let app = TestApp::spawn_with_config(Db::Sqlite, config).await;
    // Registries for the look-ups: a plate to misread, a party member, a department's powers.
    for (registry, csv) in [("vehicles", VEHICLES), ("members", MEMBERS), ("departments", DEPARTMENTS)] {
        let path = app.dir.path().join(format!("{registry}.csv"));
        std::fs::write(&path, csv).unwrap();
        app.cli(&["import", registry, path.to_str().unwrap()]);
    }
    let (tip_user, tip_pw) = app.add_integration("hotline", &[], &["jd/v1/reports"]);
    let stdout = common::run_browser_script(
        &app,
        "app.mjs",
        &app.http,
        "app",
        &["mqtt"],
        &[("JD_TIP", format!("{tip_user}:{tip_pw}")), ("JD_OFFLINE_S", OFFLINE_S.to_string())],
        Duration::from_secs(600),
    )
    .await;
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    let device = summary["device"].as_str().expect("the device the admin added");

    // Every point the app made is stored exactly once: the offline minute's backlog included,
    // re-sent points de-duplicated by (device, ts).
    let generated = summary["generated"].as_u64().expect("the app's point count");
    assert!(generated >= OFFLINE_S, "the app made {generated} points");
    let track = app.get_json(&format!("/api/v1/devices/{device}/track")).await;
    let times = track["properties"]["times"].as_array().unwrap();
    let mut distinct: Vec<i64> = times.iter().map(|t| t.as_i64().unwrap()).collect();
    distinct.dedup();
    assert_eq!(times.len() as u64, generated, "stored points = points made in the app");
    assert_eq!(distinct.len(), times.len(), "no point stored twice");

    // The tip's timeline: offered to the app's device, accepted, arrived, completed there.
    let tip = summary["tip"].as_str().unwrap();
    let view = app.get_json(&format!("/api/v1/reports/{tip}")).await;
    let asg = view["assignments"].as_array().unwrap().iter().find(|a| a["device_id"] == device);
    let asg = asg.unwrap_or_else(|| panic!("no assignment of {device}: {view}"));
    assert_eq!(asg["status"], "completed", "{view}");
    let timeline = view["timeline"].to_string();
    for status in ["accepted", "arrived", "completed"] {
        assert!(timeline.contains(status), "the timeline shows {status}: {timeline}");
    }

    // The photo is stored evidence with the size the app sent.
    let evid = summary["evid"].as_str().unwrap();
    let item = app.get_json(&format!("/api/v1/evidence/{evid}")).await;
    assert_eq!(item["evidence"]["size"].as_u64(), summary["photo_bytes"].as_u64(), "{item}");
    assert_eq!(item["evidence"]["device"], device, "{item}");
    assert_eq!(item["custody"][0]["kind"], "evidence.stored", "{item}");

    // The field report is stored, from this device.
    let report = summary["field_report"].as_str().unwrap();
    let view = app.get_json(&format!("/api/v1/reports/{report}")).await;
    assert_eq!(view["report"]["kind"], "official-car", "{view}");

    for screen in ["duty", "offer", "job", "report", "lookup", "evidence", "settings", "setup"] {
        for lang in ["zh", "en"] {
            let name = format!("{screen}-{lang}.png");
            let len = std::fs::metadata(common::artifacts_dir("app").join(&name)).map(|m| m.len()).unwrap_or(0);
            assert!(len > 5_000, "screenshot {name} missing or empty ({len} bytes)");
        }
    }
    app.stop();
}
