//! End to end: the integrity index (issue 11) through the real `jiandu serve` on SQLite and
//! PostgreSQL. Registries come in through `jiandu import`, tips through the REST API, education
//! and organisation indicators through `jiandu index import-indicators` and the API; the index is
//! computed on demand and three units get exact, explained scores and colours (yellow, green,
//! red). Yellow raises one warning and red one alarm (delivered on `jd/v1/events/alarm`) plus a
//! rectification case with a deadline and timers, however often the index is recomputed. A new
//! formula version (a changed weight) changes results only from that version on, the old rows
//! keep theirs. A circulation notice is recorded; the yearly assessment has one row per unit.
//! The scheduler's clock is shifted a year back (`[index] clock_offset_ms`) so its runs never
//! touch the period under test.

mod common;

use common::{Db, TestApp, connect, until};
use jiandu_oversight::import::id_check_char;
use jiandu_oversight::integrity::DEFAULT_FORMULA;
use jiandu_store::Store;
use rumqttc::{Packet, QoS};
use serde_json::{Value, json};

struct Http {
    base: String,
    client: reqwest::Client,
    user: (String, String),
}

impl Http {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let url = format!("{}/api/v1{path}", self.base);
        let req = match method {
            "GET" => self.client.get(url),
            _ => self.client.post(url).json(&body.unwrap_or(json!({}))),
        };
        let resp = req.basic_auth(&self.user.0, Some(&self.user.1)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }
}

fn id_number(seq: u32) -> String {
    let first = format!("370724198001{:02}{:03}", seq % 28 + 1, seq);
    format!("{first}{}", id_check_char(&first))
}

/// Departments D001 县财政局 (20 members), D002 城关镇人民政府 (10 members of its village
/// branches, 2 retired ones who do not count) and D003 县审计局 (nobody in the registries).
fn import_registries(app: &TestApp) {
    let dir = app.dir.path();
    let depts = dir.join("departments.csv");
    std::fs::write(
        &depts,
        "部门代码,部门名称,权力清单,责任清单\nD001,县财政局,财政拨款,预算管理\nD002,城关镇人民政府,行政许可,乡村振兴\n\
         D003,县审计局,审计监督,审计报告\n",
    )
    .unwrap();
    let mut members = String::from("党员编号,姓名,身份证号,所在单位,职务,职级,状态\n");
    for i in 0..32u32 {
        let (unit, status) = match i {
            0..20 => ("县财政局", "在职"),
            20..30 => ("城关镇东村党支部", "在职"),
            _ => ("城关镇西村党支部", "退休"),
        };
        members.push_str(&format!("M{i:05},张{i},{},{unit},科员,,{status}\n", id_number(i + 1)));
    }
    let members_file = dir.join("members.csv");
    std::fs::write(&members_file, members).unwrap();
    app.cli(&["import", "departments", depts.to_str().unwrap()]);
    app.cli(&["import", "members", members_file.to_str().unwrap()]);
}

fn scores(v: &Value) -> Vec<(String, f64, String, i64)> {
    v["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["unit"].as_str().unwrap().to_owned(),
                u["score"].as_f64().unwrap(),
                u["colour"].as_str().unwrap().to_owned(),
                u["formula_version"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn the_index_colours_explains_alerts_and_versions(db: Db) {
    let app = TestApp::spawn_with_config(db, "[index]\nclock_offset_ms = -31536000000\n").await;
    let http = Http { base: app.http.clone(), client: reqwest::Client::new(), user: app.admin.clone() };
    let leader = app.cli(&["user", "add", "lead1", "--role", "leader"]);
    let leader = ("lead1".to_owned(), leader["password"].as_str().unwrap().to_owned());
    let desk = app.cli(&["user", "add", "desk1", "--role", "dispatcher"]);
    let desk = Http {
        base: app.http.clone(),
        client: reqwest::Client::new(),
        user: ("desk1".into(), desk["password"].as_str().unwrap().to_owned()),
    };
    let lead = Http { base: app.http.clone(), client: reqwest::Client::new(), user: leader };
    import_registries(&app);

    // Tips naming the units: two about 县财政局, one about 县审计局, one about nobody.
    for text in ["县财政局有人收礼", "县财政局公车私用", "县审计局违规吃喝", "路边有人钓鱼"]
    {
        desk.ok("POST", "/reports", Some(json!({"kind": "tip", "text": text, "lat": 36.5, "lon": 118.5}))).await;
    }
    // The period under test is the current one; find its label from the formula's periods.
    let now = jiandu_store::now_ms();
    let period = jiandu_oversight::integrity::Period::containing(jiandu_oversight::integrity::PeriodKind::Quarter, now);
    let csv = app.dir.path().join("indicators.csv");
    std::fs::write(
        &csv,
        format!(
            "unit,period,indicator,value\nD001,{p},education_sessions,1.5\nD001,{p},education_attendance,95\n\
             D002,{p},education_sessions,3\nD002,{p},education_attendance,98\nD002,{p},org_building,100\n",
            p = period.label
        ),
    )
    .unwrap();
    let imported = app.cli(&["index", "import-indicators", csv.to_str().unwrap()]);
    assert_eq!(imported["stored"], 5);
    // One more through the API; a bad value names its field and stores nothing.
    let (status, body) = lead
        .call(
            "POST",
            "/index/indicators",
            Some(json!({"rows": [{"unit": "D001", "period": period.label,
            "indicator": "org_building", "value": -1}]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["field"], "rows[0].value", "{body}");
    let (status, body) = lead
        .call(
            "POST",
            "/index/indicators",
            Some(json!({"unit": "D001", "period": period.label,
            "indicator": "smiles", "value": 1})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("indicator"), "{body}");
    lead.ok(
        "POST",
        "/index/indicators",
        Some(json!({"unit": "D001", "period": period.label,
        "indicator": "org_building", "value": 100})),
    )
    .await;
    // D003 reports zero education sessions, attendance and organisation checks: imported zeros
    // are data (the worst value), unlike figures never imported, which read as "no data".
    lead.ok(
        "POST",
        "/index/indicators",
        Some(json!({"rows": [
            {"unit": "D003", "period": period.label, "indicator": "education_sessions", "value": 0},
            {"unit": "D003", "period": period.label, "indicator": "education_attendance", "value": 0},
            {"unit": "D003", "period": period.label, "indicator": "org_building", "value": 0}]})),
    )
    .await;
    let (status, _) = desk.call("POST", "/index/compute", Some(json!({}))).await;
    assert_eq!(status, 403, "dispatchers may read the index but not recompute it");

    // Subscribe to alarms before computing.
    let (user, pw) = app.add_integration("watch", &["jd/v1/events/#"], &[]);
    let (client, mut events) = connect(app.options("watch", Some((&user, &pw)))).await.unwrap();
    client.subscribe("jd/v1/events/alarm", QoS::AtLeastOnce).await.unwrap();
    until(&mut events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

    // D001: 2 tips per 20 people = 10 per 100 (-20), education 50 % below target (-10): 70 yellow.
    // D002: everything met, 10 active people: 100 green.
    // D003: nobody in the registries, so the default size 100: 1 per 100 (-2), zero education
    //       and organisation figures (-20, -10, -10): 58 red.
    let run = lead.ok("POST", "/index/compute", Some(json!({"period": period.label}))).await;
    assert_eq!(run["period"], period.label.as_str());
    let v1 = run["units"][0]["formula_version"].as_i64().unwrap();
    assert_eq!(
        scores(&run),
        [
            ("D001".into(), 70.0, "yellow".into(), v1),
            ("D002".into(), 100.0, "green".into(), v1),
            ("D003".into(), 58.0, "red".into(), v1),
        ]
    );
    assert_eq!(
        run["units"][0]["explanation"],
        "yellow (70) because: 10 reports and tips per 100 staff (-20), integrity education sessions 50 % below \
         target (1.5 of 3) (-10)"
    );
    assert_eq!(run["units"][1]["size"], 10);
    let d003 = run["units"][2]["explanation"].as_str().unwrap();
    assert!(
        d003.starts_with("red (58) because: integrity education sessions 100 % below target (0 of 3) (-20)"),
        "{d003}"
    );
    assert!(d003.contains("1 reports and tips per 100 staff (-2)"), "{d003}");
    assert!(d003.ends_with("no registry people are recorded for this unit"), "{d003}");

    // The alarm reaches MQTT subscribers.
    let alarm: Value = until(&mut events, |p| match p {
        Packet::Publish(p) if p.topic == "jd/v1/events/alarm" => {
            serde_json::from_slice::<Value>(&p.payload).ok().filter(|v| v["type"] == "index.alarm")
        }
        _ => None,
    })
    .await;
    assert_eq!(alarm["type"], "index.alarm");
    assert_eq!(alarm["data"]["index"]["unit"], "D003");
    assert_eq!(alarm["data"]["escalated_to"], json!(["lead1"]));

    // Recomputing changes nothing and raises nothing again.
    let again = lead.ok("POST", "/index/compute", Some(json!({"period": period.label}))).await;
    assert_eq!(scores(&again), scores(&run));
    assert_eq!(again["alerts"], json!([]));
    let store = Store::connect(&app.db).await.unwrap();
    let all = store.events_after(0, 10_000).await.unwrap();
    let count = |kind: &str, t: &str| all.iter().filter(|e| e.kind == kind && e.r#type == t).count();
    assert_eq!(count("index", "index.warning"), 1, "one warning (D001)");
    assert_eq!(count("alarm", "index.alarm"), 1, "one alarm (D003)");
    let warning = all.iter().find(|e| e.r#type == "index.warning").unwrap();
    assert_eq!(warning.data["index"]["unit"], "D001");
    assert_eq!(warning.data["to"]["role"], "unit_head");

    // D003's rectification task: a case of the rectification stage with a deadline and timers.
    let unit = http.ok("GET", "/index/D003", None).await;
    let alerts = unit["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["level"], "alarm");
    let case_id = alerts[0]["case_id"].as_str().expect("the alarm has its rectification case").to_owned();
    let case = http.ok("GET", &format!("/cases/{case_id}"), None).await;
    assert_eq!(case["unit"], "D003");
    assert_eq!(case["stage"]["key"], "rectification");
    assert!(case["deadline_at"].as_i64().unwrap() > now, "{case}");
    let timers = case["timers"].as_array().unwrap();
    assert!(timers.iter().any(|t| t["kind"] == "overdue" && t["state"] == "pending"), "{case}");
    assert!(timers.iter().any(|t| t["kind"] == "reminder"), "{case}");
    assert_eq!(unit["records"]["reports"].as_array().unwrap().len(), 1);
    assert_eq!(unit["latest"]["inputs"]["size_source"], "default");

    // The explanation of D001 lists its records: the two tips that named it.
    let d001 = http.ok("GET", "/index/D001", None).await;
    assert_eq!(d001["records"]["reports"].as_array().unwrap().len(), 2);
    assert_eq!(d001["trend"].as_array().unwrap().len(), 1);

    // A new weight is a new formula version; results change only from it on.
    let f2 = app.dir.path().join("formula-v2.toml");
    std::fs::write(&f2, DEFAULT_FORMULA.replacen("weight = 2.0", "weight = 3.0", 1)).unwrap();
    let loaded = app.cli(&["index", "formula", "load", f2.to_str().unwrap()]);
    let v2 = loaded["version"].as_i64().unwrap();
    assert!(v2 > v1 && loaded["new"] == true, "{loaded}");
    let same = app.cli(&["index", "formula", "load", f2.to_str().unwrap()]);
    assert_eq!((same["version"].as_i64().unwrap(), same["new"].as_bool().unwrap()), (v2, false));
    let run2 = lead.ok("POST", "/index/compute", Some(json!({"period": period.label}))).await;
    // D001: 10 per 100 × 3 = 30 (the cap), -10: 60 orange. D003: -3 - 40 = 57 red.
    assert_eq!(
        scores(&run2),
        [
            ("D001".into(), 60.0, "orange".into(), v2),
            ("D002".into(), 100.0, "green".into(), v2),
            ("D003".into(), 57.0, "red".into(), v2),
        ]
    );
    let history = http.ok("GET", "/index/D001", None).await["history"].clone();
    let rows: Vec<(f64, i64)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["row"]["score"].as_f64().unwrap(), h["row"]["formula_version"].as_i64().unwrap()))
        .collect();
    assert_eq!(rows, [(60.0, v2), (70.0, v1), (70.0, v1)], "old rows keep their version and score");
    let formulas = http.ok("GET", "/index/formula", None).await;
    assert_eq!(formulas["in_force"], v2);
    let all = store.events_after(0, 10_000).await.unwrap();
    assert_eq!(all.iter().filter(|e| e.r#type == "index.warning").count(), 1, "orange after yellow: no new warning");
    assert_eq!(all.iter().filter(|e| e.kind == "alarm" && e.r#type == "index.alarm").count(), 1);

    // The period view colours every unit.
    let grid = http.ok("GET", &format!("/index?period={}", period.label), None).await;
    assert_eq!(grid["colours"], json!({"orange": 1, "green": 1, "red": 1}));
    let (status, body) = http.call("GET", "/index?period=2026-Q9", None).await;
    assert_eq!(status, 422, "{body}");

    // A circulation notice is recorded in the ledger and announced.
    let notice = lead
        .ok(
            "POST",
            "/index/notices",
            Some(json!({"period": period.label, "units": ["D003"],
            "title": "关于县审计局廉洁指数为红色的通报", "body": "限期整改。"})),
        )
        .await;
    assert!(notice["ledger_seq"].as_i64().unwrap() > 0);
    let listed = http.ok("GET", "/index/notices", None).await;
    assert_eq!(listed["notices"].as_array().unwrap().len(), 1);
    let ledger = store.ledger_entries(0, 10_000).await.unwrap();
    assert_eq!(ledger.iter().filter(|e| e.kind == "index.notice").count(), 1);
    assert_eq!(ledger.iter().filter(|e| e.kind == "index.alarm").count(), 1);

    // The yearly assessment: one row per unit with its colour in each quarter.
    let year = &period.label[..4];
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/index/assessment.csv?year={year}", app.http))
        .basic_auth(&app.admin.0, Some(&app.admin.1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with(&format!("unit,unit_name,{year}-Q1 colour,{year}-Q1 score,")), "{csv}");
    let q = period.label.as_bytes()[6] - b'1';
    let d003: Vec<&str> = lines[3].split(',').collect();
    assert_eq!((d003[0], d003[1]), ("D003", "县审计局"));
    assert_eq!((d003[2 + 2 * q as usize], d003[3 + 2 * q as usize]), ("red", "57"), "{csv}");
    assert!(lines[3].ends_with(&format!(",57,red,0,1,{case_id}")), "{csv}");
    let html = http.call("GET", &format!("/index/assessment.html?year={year}"), None).await;
    assert_eq!(html.0, 200);
    assert!(html.1.contains("县审计局") && html.1.contains("class=\"red\""), "{}", html.1);
    let (status, _) = http.call("GET", "/index/assessment.csv?year=abc", None).await;
    assert_eq!(status, 422);
    let cli_csv = std::process::Command::new(common::bin())
        .args(["index", "assessment", "--year", year, "--data-dir"])
        .arg(app.dir.path())
        .args(["--db", &app.db])
        .output()
        .unwrap();
    assert!(cli_csv.status.success());
    assert_eq!(String::from_utf8(cli_csv.stdout).unwrap(), csv);

    // A period (next year's first quarter) with no imported figures at all: every unit's education and organisation inputs
    // read as "no data" (nothing deducted, named in the explanation), not as the worst value.
    let quiet = format!("{}-Q1", year.parse::<i64>().unwrap() + 1);
    let run3 = lead.ok("POST", "/index/compute", Some(json!({"period": quiet}))).await;
    assert_eq!(
        scores(&run3),
        [
            ("D001".into(), 100.0, "green".into(), v2),
            ("D002".into(), 100.0, "green".into(), v2),
            ("D003".into(), 100.0, "green".into(), v2),
        ]
    );
    assert_eq!(run3["alerts"], json!([]));
    let d003 = run3["units"][2]["explanation"].as_str().unwrap();
    assert!(
        d003.starts_with(
            "green (100): nothing deducted; no data (nothing deducted) for: integrity education sessions, \
             education attendance, organisation-building check score"
        ),
        "{d003}"
    );
    let latest = http.ok("GET", "/index/D003", None).await["latest"].clone();
    assert_eq!(latest["row"]["period"], quiet.as_str());
    let terms = latest["inputs"]["terms"].as_array().unwrap();
    let no_data: Vec<&str> =
        terms.iter().filter(|t| t["no_data"] == true).map(|t| t["key"].as_str().unwrap()).collect();
    assert_eq!(no_data, ["education_sessions", "education_attendance", "org_building"]);

    store.close().await;
    assert!(app.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_on_sqlite() {
    the_index_colours_explains_alerts_and_versions(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_on_postgres() {
    the_index_colours_explains_alerts_and_versions(Db::Postgres).await;
}
