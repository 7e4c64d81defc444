//! Cases: opening, the approval rule (distinct approvers), moving through stages to closing,
//! extensions, and deadline timers that fire exactly once even when two schedulers race, with
//! their events, ledger entries and negative records.

use jiandu_store::{CaseOrigin, NewCase, NewCaseTimer, StageStart, StoreError};
use serde_json::json;

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    a_case_moves_through_its_stages_with_approvals,
    extensions_move_the_deadline_until_it_passes,
    timers_fire_exactly_once_under_racing_schedulers,
    calendars_and_templates_are_versioned
);

const T0: i64 = 1_771_000_000_000;
const DAY: i64 = 86_400_000;

fn start(index: i64, key: &str, deadline_at: i64) -> StageStart {
    StageStart {
        index,
        key: key.into(),
        deadline_at,
        timers: vec![
            NewCaseTimer { kind: jiandu_store::TimerKind::Reminder, working_days: 3, due_at: deadline_at - 3 * DAY },
            NewCaseTimer { kind: jiandu_store::TimerKind::Reminder, working_days: 1, due_at: deadline_at - DAY },
            NewCaseTimer { kind: jiandu_store::TimerKind::Overdue, working_days: 0, due_at: deadline_at + 1 },
        ],
    }
}

fn new_case() -> NewCase {
    NewCase {
        title: "公车私用".into(),
        origin: CaseOrigin::Manual,
        origin_id: None,
        parties: vec!["members:M0001".into()],
        evidence: vec![],
        handler: "handler1".into(),
        unit: "D017".into(),
        unit_head: Some("head1".into()),
        template: json!([{"key": "clue"}, {"key": "trial"}]),
        first: start(0, "clue", T0 + 10 * DAY),
        actor: "desk".into(),
        now: T0,
    }
}

async fn a_case_moves_through_its_stages_with_approvals(db: &TestDb) {
    let s = &db.store;
    let case = s.insert_case(new_case()).await.unwrap();
    assert_eq!((case.stage_index, case.stage.as_str(), case.status.as_str()), (0, "clue", "open"));
    assert_eq!(case.parties, ["members:M0001"]);
    let e = s.case_approve(&case.id, 0, "lead1", None, 1, None, T0).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "nothing submitted yet: {e}");

    s.case_submit(&case.id, 0, "desk", Some("线索属实"), 1, Some(start(1, "trial", T0 + 40 * DAY)), T0 + DAY)
        .await
        .unwrap();
    let a =
        s.case_approve(&case.id, 0, "lead1", None, 1, Some(start(1, "trial", T0 + 40 * DAY)), T0 + DAY).await.unwrap();
    assert!(a.moved);
    assert_eq!((a.case.stage_index, a.case.stage.as_str(), a.case.deadline_at), (1, "trial", T0 + 40 * DAY));
    let stale = s.case_submit(&case.id, 0, "desk", None, 1, None, T0 + DAY).await.unwrap_err();
    assert!(matches!(stale, StoreError::Conflict { .. }), "stage 0 is over: {stale}");

    // Two-person rule: the same leader twice does not count twice.
    s.case_submit(&case.id, 1, "desk", None, 2, None, T0 + 2 * DAY).await.unwrap();
    let first = s.case_approve(&case.id, 1, "lead1", None, 2, None, T0 + 2 * DAY).await.unwrap();
    assert_eq!((first.approvals, first.moved), (1, false));
    let again = s.case_approve(&case.id, 1, "lead1", None, 2, None, T0 + 2 * DAY).await.unwrap_err();
    assert!(matches!(again, StoreError::Conflict { ref reason } if reason.contains("another person")), "{again}");
    let second = s.case_approve(&case.id, 1, "lead2", Some("同意"), 2, None, T0 + 2 * DAY).await.unwrap();
    assert_eq!((second.approvals, second.moved, second.case.status.as_str()), (2, true, "closed"));

    let kinds: Vec<String> = s.case_timeline(&case.id).await.unwrap().into_iter().map(|l| l.kind).collect();
    assert_eq!(kinds, ["opened", "submitted", "approved", "advanced", "submitted", "approved", "approved", "closed"]);
    assert_eq!(s.case_approvals(&case.id).await.unwrap().len(), 3);
    let timers = s.case_timers(&case.id).await.unwrap();
    assert_eq!(timers.len(), 6);
    assert!(
        timers.iter().all(|t| t.state == jiandu_store::TimerState::Cancelled),
        "a closed case has no pending timers"
    );
    let ledger = s.ledger_entries(0, 100).await.unwrap();
    let case_entries: Vec<&str> = ledger.iter().filter(|e| e.subject == case.id).map(|e| e.kind.as_str()).collect();
    assert_eq!(case_entries.len(), 8);
    assert_eq!(case_entries[3], "case.advanced");
    let events = s.events_after(0, 100).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "case").count(), 8);
    assert!(s.ledger_verify(|_, _| {}).await.unwrap().is_empty());
}

async fn extensions_move_the_deadline_until_it_passes(db: &TestDb) {
    let s = &db.store;
    let case = s.insert_case(new_case()).await.unwrap();
    let e = s.case_extend(&case.id, start(0, "clue", T0 + 20 * DAY), "lead1", " ", 1, T0).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput { field: "reason", .. }));
    let extended =
        s.case_extend(&case.id, start(0, "clue", T0 + 20 * DAY), "lead1", "证人出差", 1, T0 + DAY).await.unwrap();
    assert_eq!((extended.deadline_at, extended.extensions), (T0 + 20 * DAY, 1));
    let timers = s.case_timers(&case.id).await.unwrap();
    let pending: Vec<i64> =
        timers.iter().filter(|t| t.state == jiandu_store::TimerState::Pending).map(|t| t.due_at).collect();
    assert_eq!(pending, [T0 + 17 * DAY, T0 + 19 * DAY, T0 + 20 * DAY + 1], "timers follow the new deadline");
    let more =
        s.case_extend(&case.id, start(0, "clue", T0 + 30 * DAY), "lead1", "再延", 1, T0 + DAY).await.unwrap_err();
    assert!(matches!(more, StoreError::Conflict { ref reason } if reason.contains("all granted")), "{more}");
    let late =
        s.case_extend(&case.id, start(0, "clue", T0 + 30 * DAY), "lead1", "迟", 5, T0 + 21 * DAY).await.unwrap_err();
    assert!(matches!(late, StoreError::Conflict { ref reason } if reason.contains("passed")), "{late}");
    let line = s.case_timeline(&case.id).await.unwrap().pop().unwrap();
    assert_eq!((line.kind.as_str(), line.note.as_deref()), ("extended", Some("证人出差")));
    assert_eq!(line.data["to"], json!(T0 + 20 * DAY));
}

async fn timers_fire_exactly_once_under_racing_schedulers(db: &TestDb) {
    let s = &db.store;
    let case = s.insert_case(new_case()).await.unwrap();
    let deadline = case.deadline_at;
    assert!(s.due_case_timers(T0, 10).await.unwrap().is_empty());
    assert_eq!(s.next_case_timer().await.unwrap(), Some(deadline - 3 * DAY));

    // Two schedulers race for every timer, well after the deadline.
    let now = deadline + DAY;
    let due = s.due_case_timers(now, 10).await.unwrap();
    assert_eq!(due.len(), 3);
    let leaders = vec!["lead1".to_owned(), "lead2".to_owned()];
    let mut fired = 0;
    for t in &due {
        let (a, b) = tokio::join!(
            s.fire_case_timer(t.id, now, crate::helpers::timer_effects(&leaders)),
            s.fire_case_timer(t.id, now, crate::helpers::timer_effects(&leaders))
        );
        fired += a.unwrap().is_some() as usize + b.unwrap().is_some() as usize;
    }
    assert_eq!(fired, 3, "each timer fired by exactly one scheduler");
    assert!(s.due_case_timers(now, 10).await.unwrap().is_empty());
    assert!(
        s.fire_case_timer(due[2].id, now, crate::helpers::timer_effects(&leaders)).await.unwrap().is_none(),
        "a restart finds nothing to do"
    );

    let events = s.events_after(0, 100).await.unwrap();
    let reminders: Vec<_> = events.iter().filter(|e| e.r#type == "case.reminder").collect();
    assert_eq!(reminders.len(), 2);
    assert_eq!(reminders[0].data["details"]["to"], json!(["handler1", "head1"]));
    let alarms: Vec<_> = events.iter().filter(|e| e.kind == "alarm").collect();
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].r#type, "case.overdue");
    assert_eq!(alarms[0].data["details"]["escalated_to"], json!(["lead1", "lead2"]));

    let unit = s.negative_records(Some("unit"), Some("D017"), 10).await.unwrap();
    assert_eq!(unit.len(), 1);
    assert_eq!((unit[0].case_id.as_str(), unit[0].deadline_at), (case.id.as_str(), deadline));
    let handler = s.negative_records(Some("handler"), Some("handler1"), 10).await.unwrap();
    assert_eq!(handler.len(), 1);
    assert_eq!(s.negative_records(None, None, 10).await.unwrap().len(), 2);

    let overdue = s.cases(None, true, 10, None).await.unwrap();
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0].overdue_at, Some(now));
    let overview = s.case_overview().await.unwrap();
    assert_eq!(overview.len(), 1);
    assert_eq!((overview[0].unit.as_str(), overview[0].open, overview[0].overdue), ("D017", 1, 1));
    let kinds: Vec<String> = s.ledger_entries(0, 100).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "case.reminder").count(), 2);
    assert_eq!(kinds.iter().filter(|k| *k == "case.overdue").count(), 1);
}

async fn calendars_and_templates_are_versioned(db: &TestDb) {
    let s = &db.store;
    assert!(s.calendars().await.unwrap().is_empty());
    assert_eq!(s.stage_template().await.unwrap(), None);
    s.calendar_load(2028, "year = 2028 # v1", "op").await.unwrap();
    s.calendar_load(2028, "year = 2028 # v2", "op").await.unwrap();
    s.calendar_load(2029, "year = 2029", "op").await.unwrap();
    assert_eq!(
        s.calendars().await.unwrap(),
        [(2028, "year = 2028 # v2".to_owned()), (2029, "year = 2029".to_owned())],
        "the newest load of a year is in force"
    );
    s.stage_template_load("[[stage]]", "op").await.unwrap();
    assert_eq!(s.stage_template().await.unwrap().as_deref(), Some("[[stage]]"));
    let kinds: Vec<String> = s.ledger_entries(0, 100).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["calendar.loaded", "calendar.loaded", "calendar.loaded", "case_template.loaded"]);
}
