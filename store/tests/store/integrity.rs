//! The integrity index's rows: immutable formula versions, imported indicators (the newest
//! counts), the platform records that feed it (reports a case came from, reports, cases,
//! decisions, overdue alarms, negative records), runs that keep history and raise each warning and
//! alarm once per unit and period with their events and ledger entries, and circulation notices.

use jiandu_store::{
    AlertLevel, CaseOrigin, NewAlert, NewCase, NewCaseTimer, NewIndexRow, NewIndexRun, NewIndicator, NewNotice,
    NewReport, ReportSource, StageStart, StoreError,
};
use serde_json::json;

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    formula_versions_are_immutable_and_only_new_text_makes_one,
    the_newest_indicator_counts,
    platform_records_name_their_unit_and_record,
    a_crossing_alerts_once_per_unit_and_period,
    notices_are_recorded
);

async fn formula_versions_are_immutable_and_only_new_text_makes_one(db: &TestDb) {
    let s = &db.store;
    assert!(s.integrity_formula_current().await.unwrap().is_none());
    let (v1, new) = s.integrity_formula_load("weight = 2.0\n", "op").await.unwrap();
    assert!(new);
    let (again, new) = s.integrity_formula_load("weight = 2.0\n", "op").await.unwrap();
    assert_eq!((again.version, new), (v1.version, false));
    let (v2, new) = s.integrity_formula_load("weight = 3.0\n", "op").await.unwrap();
    assert!(new && v2.version > v1.version);
    assert_eq!(s.integrity_formula(v1.version).await.unwrap().source, "weight = 2.0\n");
    assert_eq!(s.integrity_formula_current().await.unwrap().unwrap().version, v2.version);
    // Going back to the first text is a third version: versions are a history, not a set.
    let (v3, new) = s.integrity_formula_load("weight = 2.0\n", "op").await.unwrap();
    assert!(new && v3.version > v2.version);
    assert_eq!(s.integrity_formulas().await.unwrap().len(), 3);
    let kinds: Vec<String> = s.ledger_entries(0, 100).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "index.formula").count(), 3);
}

async fn the_newest_indicator_counts(db: &TestDb) {
    let s = &db.store;
    let row = |unit: &str, key: &str, value: f64| NewIndicator {
        unit: unit.into(),
        period: "2026-Q4".into(),
        key: key.into(),
        value,
    };
    s.integrity_indicators_add(
        &[row("D001", "education_sessions", 1.0), row("D002", "education_sessions", 3.0)],
        "a.csv",
        "op",
    )
    .await
    .unwrap();
    s.integrity_indicators_add(&[row("D001", "education_sessions", 2.5)], "api", "lead").await.unwrap();
    let got = s.integrity_indicators("2026-Q4").await.unwrap();
    let values: Vec<(&str, f64, &str)> = got.iter().map(|i| (i.unit.as_str(), i.value, i.source.as_str())).collect();
    assert_eq!(values, [("D001", 2.5, "api"), ("D002", 3.0, "a.csv")]);
    assert!(s.integrity_indicators("2026-Q3").await.unwrap().is_empty());
    let e = s.integrity_indicators_add(&[], "x", "op").await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput { field: "indicators", .. }), "{e}");
}

fn report(id: &str, text: &str) -> NewReport {
    NewReport {
        id: id.into(),
        source: ReportSource::Integration,
        origin: "hotline".into(),
        kind: "tip".into(),
        text: text.into(),
        lat: Some(36.5),
        lon: Some(118.5),
        ts: 1_771_000_000_000,
        plate: None,
        needs: 1,
    }
}

async fn platform_records_name_their_unit_and_record(db: &TestDb) {
    let s = &db.store;
    s.insert_report(report("r1", "公车私用")).await.unwrap();
    s.insert_report(report("r2", "县财政局有人收礼")).await.unwrap();
    let now = jiandu_store::now_ms();
    let case = s
        .insert_case(NewCase {
            title: "公车私用".into(),
            origin: CaseOrigin::Report,
            origin_id: Some("r1".into()),
            parties: vec!["members:M1".into(), "members:M2".into()],
            evidence: vec![],
            handler: "h".into(),
            unit: "D016".into(),
            unit_head: None,
            template: json!([{"key": "decision"}, {"key": "execution_appeal"}]),
            first: StageStart {
                index: 0,
                key: "decision".into(),
                deadline_at: now - 10,
                timers: vec![NewCaseTimer { kind: jiandu_store::TimerKind::Overdue, working_days: 0, due_at: now - 9 }],
            },
            actor: "desk".into(),
            now,
        })
        .await
        .unwrap();
    for t in s.due_case_timers(now, 10).await.unwrap() {
        s.fire_case_timer(t.id, now, crate::helpers::timer_effects(&[])).await.unwrap();
    }
    let next = StageStart { index: 1, key: "execution_appeal".into(), deadline_at: now + 1_000_000, timers: vec![] };
    s.case_submit(&case.id, 0, "desk", None, 0, Some(next), now).await.unwrap();

    let got = s.integrity_platform_records(0, now + 1, "execution_appeal").await.unwrap();
    let mut seen: Vec<(String, String, String, i64)> =
        got.into_iter().map(|r| (r.source, r.unit, r.id, r.count)).collect();
    seen.sort();
    let nr = seen.iter().find(|r| r.0 == "negative_records").map(|r| r.2.clone()).unwrap();
    assert_eq!(
        seen,
        [
            ("cases".into(), "D016".into(), case.id.clone(), 1),
            ("disciplined".into(), "D016".into(), case.id.clone(), 2),
            ("negative_records".into(), "D016".into(), nr, 1),
            ("overdue_alarms".into(), "D016".into(), case.id.clone(), 1),
            ("reports".into(), "D016".into(), "r1".into(), 1),
        ]
    );
    // Outside the period nothing counts.
    assert!(s.integrity_platform_records(0, 1, "execution_appeal").await.unwrap().is_empty());
    let received = s.integrity_reports_received(0, now + 1_000_000).await.unwrap();
    assert_eq!(received.len(), 2);
    assert!(received.contains(&("r2".into(), "县财政局有人收礼".into())));
}

fn row(unit: &str, score: f64, colour: &str) -> NewIndexRow {
    NewIndexRow {
        unit: unit.into(),
        unit_name: format!("unit {unit}"),
        size: 100,
        size_source: "registry".into(),
        score,
        colour: jiandu_store::Colour::parse(colour).expect("one of the five colours"),
        inputs: json!({"raw": {"reports": 3}}),
        explanation: format!("{colour} ({score})"),
        alert: alert_for(colour, unit),
    }
}

/// The alert `oversight::integrity::alert_for` decides (the store only records it).
fn alert_for(colour: &str, unit: &str) -> Option<NewAlert> {
    match colour {
        "yellow" | "orange" => Some(NewAlert {
            level: AlertLevel::Warning,
            to: Some(json!({"unit": unit, "role": "unit_head"})),
            escalated_to: None,
            unless: vec![AlertLevel::Alarm],
        }),
        "red" => Some(NewAlert {
            level: AlertLevel::Alarm,
            to: None,
            escalated_to: Some(vec!["lead1".into()]),
            unless: vec![],
        }),
        _ => None,
    }
}

async fn a_crossing_alerts_once_per_unit_and_period(db: &TestDb) {
    let s = &db.store;
    let (v, _) = s.integrity_formula_load("f", "op").await.unwrap();
    let run = |rows: Vec<NewIndexRow>| NewIndexRun {
        period: "2026-Q4".into(),
        formula_version: v.version,
        actor: "scheduler".into(),
        rows,
    };
    let first = s
        .integrity_record_run(run(vec![row("A", 95.0, "green"), row("B", 72.5, "yellow"), row("C", 40.0, "red")]))
        .await
        .unwrap();
    let levels: Vec<(&str, &str)> = first.alerts.iter().map(|a| (a.unit.as_str(), a.level.as_str())).collect();
    assert_eq!(levels, [("B", "warning"), ("C", "alarm")]);
    // Recomputing the same colours raises nothing; B going red gets its alarm; C improving to
    // yellow gets no warning after its alarm.
    let second = s
        .integrity_record_run(run(vec![row("A", 95.0, "green"), row("B", 72.5, "yellow"), row("C", 40.0, "red")]))
        .await
        .unwrap();
    assert!(second.alerts.is_empty());
    let third = s
        .integrity_record_run(run(vec![row("A", 95.0, "green"), row("B", 50.0, "red"), row("C", 75.0, "yellow")]))
        .await
        .unwrap();
    let levels: Vec<(&str, &str)> = third.alerts.iter().map(|a| (a.unit.as_str(), a.level.as_str())).collect();
    assert_eq!(levels, [("B", "alarm")]);

    let latest = s.integrity_period("2026-Q4").await.unwrap();
    let got: Vec<(&str, f64, &str)> = latest.iter().map(|r| (r.unit.as_str(), r.score, r.colour.as_str())).collect();
    assert_eq!(got, [("A", 95.0, "green"), ("B", 50.0, "red"), ("C", 75.0, "yellow")]);
    assert_eq!(latest[0].inputs, json!({"raw": {"reports": 3}}));
    assert_eq!(s.integrity_history("B", 10).await.unwrap().len(), 3, "history is kept");
    assert_eq!(s.integrity_latest_period().await.unwrap().as_deref(), Some("2026-Q4"));

    let events = s.events_after(0, 100).await.unwrap();
    let typed: Vec<(String, String)> = events.iter().map(|e| (e.kind.clone(), e.r#type.clone())).collect();
    let count = |k: &str, t: &str| typed.iter().filter(|(a, b)| a == k && b == t).count();
    assert_eq!(count("index", "index.warning"), 1);
    assert_eq!(count("alarm", "index.alarm"), 2);
    assert_eq!(count("index", "index.alarm"), 2);
    assert_eq!(count("index", "index.computed"), 3);
    let alarm = events.iter().find(|e| e.kind == "alarm").unwrap();
    assert_eq!(alarm.data["index"]["unit"], "C");
    assert_eq!(alarm.data["escalated_to"], json!(["lead1"]));
    let warning = events.iter().find(|e| e.r#type == "index.warning").unwrap();
    assert_eq!(warning.data["to"], json!({"unit": "B", "role": "unit_head"}));

    // Rectification bookkeeping: alarms wait for their case, which is recorded once.
    let pending = s.integrity_alarms_without_case().await.unwrap();
    assert_eq!(pending.len(), 2);
    s.integrity_alert_set_case(pending[0].id, "CASE1").await.unwrap();
    s.integrity_alert_set_case(pending[0].id, "CASE2").await.unwrap();
    let c = s.integrity_alerts(Some("C"), Some("2026-Q4")).await.unwrap();
    assert_eq!(c.iter().map(|a| a.case_id.clone()).collect::<Vec<_>>(), [Some("CASE1".to_owned())]);
    assert_eq!(s.integrity_alarms_without_case().await.unwrap().len(), 1);

    assert!(s.ledger_verify(|_, _| {}).await.unwrap().is_empty(), "the ledger chain is intact");
}

async fn notices_are_recorded(db: &TestDb) {
    let s = &db.store;
    let n = s
        .integrity_notice_issue(NewNotice {
            period: "2026-Q4".into(),
            units: vec!["D016".into()],
            title: "关于2026年第四季度廉洁指数的通报".into(),
            body: "县财政局为红色".into(),
            issued_by: "lead1".into(),
        })
        .await
        .unwrap();
    assert!(n.ledger_seq > 0);
    let listed = s.integrity_notices(Some("2026-Q4")).await.unwrap();
    assert_eq!(listed, std::slice::from_ref(&n));
    let ev = s.events_after(0, 10).await.unwrap();
    assert_eq!(ev.iter().filter(|e| e.r#type == "index.notice").count(), 1);
    let e = s
        .integrity_notice_issue(NewNotice {
            period: "2026-Q4".into(),
            units: vec![],
            title: " ".into(),
            body: "x".into(),
            issued_by: "lead1".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput { field: "title", .. }), "{e}");
}
