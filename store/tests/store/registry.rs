use jiandu_store::{
    IdNumber, ImportPlan, NewLookupAudit, Person, RegistryName, RegistryRecord, StoreError, Vehicle,
    lookup_rows_sha256, now_ms,
};

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    imports_are_versions_and_history_stays_queryable,
    an_import_made_against_a_stale_version_is_refused,
    persons_are_found_by_name_or_code_with_masked_identity_numbers,
    lookups_are_audited_in_batches_committed_to_the_ledger,
);

fn car(plate: &str, driver: &str) -> RegistryRecord {
    RegistryRecord::Vehicle(Vehicle {
        plate: plate.into(),
        unit: "县财政局".into(),
        vehicle_type: "轿车".into(),
        use_category: "general".into(),
        driver: driver.into(),
        status: "in_service".into(),
        allowed: true,
    })
}

fn plan(base_version: i64, added: Vec<RegistryRecord>, changed: Vec<RegistryRecord>, retired: &[&str]) -> ImportPlan {
    ImportPlan {
        registry: RegistryName::Vehicles,
        base_version,
        actor: "cli:test".into(),
        source: "vehicles.csv".into(),
        sha256: "ab".repeat(32),
        records: (added.len() + changed.len()) as i64,
        added,
        changed,
        retired: retired.iter().map(|s| s.to_string()).collect(),
    }
}

async fn after(t: i64) {
    while now_ms() <= t {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

async fn imports_are_versions_and_history_stays_queryable(db: &TestDb) {
    let store = &db.store;
    assert_eq!(store.registry_version().await.unwrap(), 0);
    let v1 = store
        .registry_apply(&plan(0, vec![car("鲁G12345", "王强"), car("鲁G00001", "李娜")], vec![], &[]))
        .await
        .unwrap();
    assert_eq!((v1.added, v1.changed, v1.retired), (2, 0, 0));
    after(v1.imported_at).await;
    let between = now_ms();
    after(between).await;
    let (base, current) = store.registry_current(RegistryName::Vehicles).await.unwrap();
    assert_eq!(base, v1.version);
    assert_eq!(current.len(), 2);
    assert_eq!(current["鲁G12345"], car("鲁G12345", "王强").content_hash());

    let v2 = store
        .registry_apply(&plan(v1.version, vec![car("鲁GD12345", "赵敏")], vec![car("鲁G12345", "刘伟")], &["鲁G00001"]))
        .await
        .unwrap();
    assert!(v2.version > v1.version);
    assert_eq!((v2.added, v2.changed, v2.retired), (1, 1, 1));
    assert_eq!(store.registry_version().await.unwrap(), v2.version);

    // Who was the registered driver between the two imports, and who is it now?
    let plates = vec!["鲁G12345".to_owned(), "鲁G00001".to_owned(), "鲁GD12345".to_owned()];
    let then = store.vehicles_at(&plates, between).await.unwrap();
    let mut then: Vec<(String, String)> = then.into_iter().map(|v| (v.record.plate, v.record.driver)).collect();
    then.sort();
    assert_eq!(then, [("鲁G00001".to_owned(), "李娜".to_owned()), ("鲁G12345".to_owned(), "王强".to_owned())]);
    let now = store.vehicles_at(&plates, now_ms()).await.unwrap();
    let mut now: Vec<(String, String)> = now.into_iter().map(|v| (v.record.plate, v.record.driver)).collect();
    now.sort();
    assert_eq!(now, [("鲁G12345".to_owned(), "刘伟".to_owned()), ("鲁GD12345".to_owned(), "赵敏".to_owned())]);

    // Nothing was deleted: both versions of the car are kept, the old one closed by v2.
    let history = store.vehicle_history("鲁G12345").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].record.driver, "王强");
    assert_eq!((history[0].version_from, history[0].version_to), (v1.version, Some(v2.version)));
    assert_eq!(history[0].valid_to, Some(v2.imported_at));
    assert_eq!((history[1].valid_from, history[1].valid_to), (v2.imported_at, None));
    assert_eq!(store.vehicle_history("鲁G00001").await.unwrap()[0].valid_to, Some(v2.imported_at));

    // Each import is on the ledger.
    let imports = store.registry_imports(10).await.unwrap();
    assert_eq!(imports.iter().map(|i| i.version).collect::<Vec<_>>(), [v2.version, v1.version]);
    let entries = store.ledger_entries(0, 10).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].seq, v2.ledger_seq);
    assert_eq!(entries[1].kind, "registry.imported");
    assert_eq!(entries[1].body["changed"], 1);
    assert_eq!(entries[1].body["retired"], 1);
    assert_eq!(entries[1].body["version"], v2.version);
    assert!(store.ledger_verify(|_, _| {}).await.unwrap().is_empty());

    let snapshot = store.registry_snapshot().await.unwrap();
    assert_eq!(snapshot.version, v2.version);
    assert_eq!(snapshot.vehicles.len(), 2);
}

async fn an_import_made_against_a_stale_version_is_refused(db: &TestDb) {
    let store = &db.store;
    let v1 = store.registry_apply(&plan(0, vec![car("鲁G12345", "王强")], vec![], &[])).await.unwrap();
    let err = store.registry_apply(&plan(0, vec![car("鲁G54321", "李娜")], vec![], &[])).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { field: "registry", .. }), "{err}");
    assert!(err.to_string().contains("run the import again"), "{err}");
    // The refused import left nothing behind.
    assert_eq!(store.registry_version().await.unwrap(), v1.version);
    assert_eq!(store.registry_current(RegistryName::Vehicles).await.unwrap().1.len(), 1);
    assert_eq!(store.ledger_head().await.unwrap().0, 1);
    // A record of the wrong registry is refused before anything is written.
    let mut wrong = plan(v1.version, vec![], vec![], &[]);
    wrong.registry = RegistryName::Departments;
    wrong.added = vec![car("鲁G1", "x")];
    assert!(matches!(
        store.registry_apply(&wrong).await.unwrap_err(),
        StoreError::InvalidInput { field: "records", .. }
    ));
}

fn person(code: &str, name: &str, id: &str) -> RegistryRecord {
    RegistryRecord::Person(Person {
        code: code.into(),
        name: name.into(),
        id_number: IdNumber::new(id),
        unit: "县委".into(),
        post: "科员".into(),
        rank: "一级科员".into(),
        party_member: true,
        status: "active".into(),
    })
}

async fn persons_are_found_by_name_or_code_with_masked_identity_numbers(db: &TestDb) {
    let store = &db.store;
    let members = ImportPlan {
        registry: RegistryName::Members,
        base_version: 0,
        actor: "cli:test".into(),
        source: "members.csv".into(),
        sha256: "cd".repeat(32),
        records: 3,
        added: vec![
            person("M1", "张三", "11010519491231002X"),
            person("M2", "张三", "370724198001010011"),
            person("M3", "李四", "370724198001010022"),
        ],
        changed: vec![],
        retired: vec![],
    };
    store.registry_apply(&members).await.unwrap();
    // Staff is a registry of its own: the same code there is another person.
    let staff = ImportPlan {
        registry: RegistryName::Staff,
        source: "staff.csv".into(),
        records: 1,
        added: vec![person("M1", "王五", "370724198001010033")],
        ..members.clone()
    };
    store.registry_apply(&staff).await.unwrap();
    assert_eq!(store.registry_current(RegistryName::Members).await.unwrap().1.len(), 3);
    assert_eq!(store.registry_current(RegistryName::Staff).await.unwrap().1.len(), 1);

    let now = now_ms();
    assert_eq!(store.persons_at("张三", now, 10).await.unwrap().len(), 2);
    let by_code = store.persons_at("M3", now, 10).await.unwrap();
    assert_eq!(by_code.len(), 1);
    assert_eq!(by_code[0].record.name, "李四");
    assert_eq!(store.persons_at("M1", now, 10).await.unwrap().len(), 2);
    assert!(store.persons_at("M1", members_time_before(now), 10).await.unwrap().is_empty());

    let p = &by_code[0].record;
    assert_eq!(p.id_number.reveal(), "370724198001010022");
    let shown = serde_json::to_value(p).unwrap();
    assert_eq!(shown["id_number"], "370724********0022");
    assert!(!format!("{p:?}").contains("198001010022"));
}

fn members_time_before(t: i64) -> i64 {
    t - 3_600_000
}

fn audit(device: &str, q: &str, outcome: &str) -> NewLookupAudit {
    NewLookupAudit {
        ts: now_ms(),
        channel: "mqtt".into(),
        actor: "0042".into(),
        device: Some(device.into()),
        lat_e6: Some(36_700_000),
        lon_e6: Some(119_100_000),
        kind: "vehicle".into(),
        q: q.into(),
        at: None,
        outcome: outcome.into(),
        result: (outcome == "found").then(|| "鲁G12345".into()),
        candidates: 0,
    }
}

async fn lookups_are_audited_in_batches_committed_to_the_ledger(db: &TestDb) {
    let store = &db.store;
    let first =
        vec![audit("d1", "鲁G12345", "found"), audit("d2", "鲁G9", "not_found"), audit("d1", "x", "rate_limited")];
    let b1 = store.record_lookups("oversight", &first).await.unwrap();
    assert_eq!((b1.first_id, b1.last_id, b1.count), (1, 3, 3));
    let b2 = store.record_lookups("oversight", &[audit("d2", "鲁G1", "not_found")]).await.unwrap();
    assert_eq!((b2.first_id, b2.last_id), (4, 4));
    assert!(store.record_lookups("oversight", &[]).await.is_err());

    // The ledger entry commits to the rows: recompute the hash from what is stored.
    let entry = &store.ledger_entries(b1.ledger_seq - 1, 1).await.unwrap()[0];
    assert_eq!(entry.kind, "lookup.batch");
    assert_eq!(entry.body["count"], 3);
    assert_eq!(entry.body["first_id"], 1);
    assert_eq!(entry.body["last_id"], 3);
    let rows = store.lookup_audit_range(1, 3).await.unwrap();
    assert_eq!(rows.iter().map(|r| &r.lookup).cloned().collect::<Vec<_>>(), first);
    assert!(rows.iter().all(|r| r.ledger_seq == b1.ledger_seq));
    let rehash = lookup_rows_sha256(rows.iter().map(|r| (r.id, &r.lookup)));
    assert_eq!(entry.body["sha256"], rehash);
    assert_eq!(b1.sha256, rehash);
    // Altering any row would change the hash.
    let mut altered = rows.clone();
    altered[1].lookup.q = "鲁G8".into();
    assert_ne!(lookup_rows_sha256(altered.iter().map(|r| (r.id, &r.lookup))), rehash);

    let newest = store.lookup_audits(10, None, None).await.unwrap();
    assert_eq!(newest.iter().map(|r| r.id).collect::<Vec<_>>(), [4, 3, 2, 1]);
    let page = store.lookup_audits(2, Some(3), None).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 1]);
    let d1 = store.lookup_audits(10, None, Some("d1")).await.unwrap();
    assert_eq!(d1.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 1]);
    assert_eq!(store.lookup_audit_count().await.unwrap(), 4);
    assert_eq!(d1[1].lookup.lat_e6, Some(36_700_000));

    // One event per batch.
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].r#type, "lookup.audited");
    assert_eq!(events[0].data["last_id"], 3);
    assert!(store.ledger_verify(|_, _| {}).await.unwrap().is_empty());
}
