use jiandu_store::{Principal, StoreError, hash_token};
use sqlx::Row;

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    devices_are_created_listed_and_found,
    tokens_are_stored_only_as_hashes,
    revoking_is_idempotent_and_ends_logins,
    devices_are_created_in_bulk,
);

async fn devices_are_created_in_bulk(db: &TestDb) {
    let store = &db.store;
    let phones: Vec<(String, Option<String>)> =
        (0..300).map(|i| (format!("phone {i}"), Some(format!("S{i:04}")))).collect();
    let created = store.create_devices(&phones).await.unwrap();
    assert_eq!(created.len(), 300);
    assert_eq!(store.list_devices().await.unwrap().len(), 300);
    let (d, token) = &created[123];
    assert_eq!(d.name, "phone 123");
    let p = store.authenticate_mqtt(&d.id, token.expose().as_bytes()).await.unwrap();
    assert_eq!(p, Some(Principal::Device { id: d.id.clone() }));
    let ids: std::collections::HashSet<_> = created.iter().map(|(d, _)| d.id.clone()).collect();
    assert_eq!(ids.len(), 300, "ids are distinct");
}

async fn devices_are_created_listed_and_found(db: &TestDb) {
    let store = &db.store;
    let (a, token_a) = store.create_device("Phone A", Some("S-0001")).await.unwrap();
    let (b, token_b) = store.create_device("  Phone B ", None).await.unwrap();
    assert_ne!(a.id, b.id);
    assert_ne!(token_a, token_b);
    for d in [&a, &b] {
        assert_eq!(d.id.len(), 13);
        assert!(d.id.starts_with('d'));
        assert!(d.id[1..].bytes().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert!(d.revoked_at.is_none());
    }
    assert_eq!(a.staff_id.as_deref(), Some("S-0001"));
    assert_eq!(b.name, "Phone B");
    assert_eq!(b.staff_id, None);
    assert_eq!(format!("{token_a:?}"), "[redacted]");
    assert_eq!(token_a.expose().len(), 64);

    assert_eq!(store.device(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.device("dnothere").await.unwrap(), None);
    let all = store.list_devices().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.contains(&a) && all.contains(&b));

    let err = store.create_device("   ", None).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { field: "name", .. }));
}

async fn tokens_are_stored_only_as_hashes(db: &TestDb) {
    let (device, token) = db.store.create_device("phone", None).await.unwrap();
    let row = sqlx::query("SELECT token_hash FROM devices WHERE id = $1")
        .bind(&device.id)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let stored: String = row.get("token_hash");
    assert_eq!(stored, hash_token(token.expose()));
    assert_ne!(stored, token.expose());
}

async fn revoking_is_idempotent_and_ends_logins(db: &TestDb) {
    let store = &db.store;
    let (device, token) = store.create_device("phone", None).await.unwrap();
    assert_eq!(
        store.authenticate_mqtt(&device.id, token.expose().as_bytes()).await.unwrap(),
        Some(Principal::Device { id: device.id.clone() })
    );

    let revoked = store.revoke_device(&device.id, "test").await.unwrap();
    let first = revoked.revoked_at.expect("revoked_at set");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let again = store.revoke_device(&device.id, "test").await.unwrap();
    assert_eq!(again.revoked_at, Some(first));
    assert_eq!(store.device(&device.id).await.unwrap().unwrap().revoked_at, Some(first));
    assert_eq!(store.authenticate_mqtt(&device.id, token.expose().as_bytes()).await.unwrap(), None);

    let err = store.revoke_device("dunknown", "test").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { what: "device", .. }), "{err:?}");
}
