use jiandu_store::{AccountKind, Principal, StoreError};

use crate::helpers::TestDb;
use crate::on_both;

on_both!(integration_accounts_keep_their_filters, mqtt_logins_are_checked, service_accounts_are_created_or_rotated,);

fn filters(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn integration_accounts_keep_their_filters(db: &TestDb) {
    let store = &db.store;
    let sub = filters(&["jd/v1/events/#", "jd/v1/events/+"]);
    let publ = filters(&["jd/v1/reports"]);
    let (account, token) = store.create_account("city-hotline", AccountKind::Integration, &sub, &publ).await.unwrap();
    assert_eq!(account.subscribe, sub);
    assert_eq!(account.publish, publ);
    assert_eq!(token.expose().len(), 64);
    assert_eq!(store.account("city-hotline").await.unwrap(), Some(account));
    assert_eq!(store.account("nobody").await.unwrap(), None);

    let err = store.create_account("city-hotline", AccountKind::Integration, &sub, &publ).await.unwrap_err();
    assert!(matches!(err, StoreError::DuplicateName { .. }), "{err:?}");
    let err = store.create_account("bad", AccountKind::Integration, &filters(&["a/#/b"]), &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { field: "subscribe", .. }), "{err:?}");
    assert_eq!(store.list_accounts().await.unwrap().len(), 1);
}

async fn mqtt_logins_are_checked(db: &TestDb) {
    let store = &db.store;
    let (device, device_token) = store.create_device("phone", None).await.unwrap();
    let sub = filters(&["jd/v1/events/#"]);
    let publ = filters(&["jd/v1/reports"]);
    let (_, int_token) = store.create_account("hotline", AccountKind::Integration, &sub, &publ).await.unwrap();
    let svc_token = store.ensure_service_account("ingest").await.unwrap();

    let auth = |user: &'static str, pass: Vec<u8>| async move { store.authenticate_mqtt(user, &pass).await.unwrap() };
    assert_eq!(
        store.authenticate_mqtt(&device.id, device_token.expose().as_bytes()).await.unwrap(),
        Some(Principal::Device { id: device.id.clone() })
    );
    assert_eq!(
        store.authenticate_mqtt(&device.id, int_token.expose().as_bytes()).await.unwrap(),
        None,
        "another principal's token"
    );
    assert_eq!(
        auth("hotline", int_token.expose().into()).await,
        Some(Principal::Integration { name: "hotline".into(), subscribe: sub, publish: publ })
    );
    assert_eq!(auth("ingest", svc_token.expose().into()).await, Some(Principal::Service { name: "ingest".into() }));
    assert_eq!(auth("hotline", b"wrong".to_vec()).await, None);
    assert_eq!(auth("hotline", vec![]).await, None);
    assert_eq!(auth("hotline", vec![0xff, 0xfe]).await, None);
    assert_eq!(auth("nobody", int_token.expose().into()).await, None);

    let revoked = store.revoke_account("hotline", "test").await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(auth("hotline", int_token.expose().into()).await, None);
    let err = store.revoke_account("nobody", "test").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { what: "account", .. }));
}

async fn service_accounts_are_created_or_rotated(db: &TestDb) {
    let store = &db.store;
    let first = store.ensure_service_account("dispatcher").await.unwrap();
    let account = store.account("dispatcher").await.unwrap().unwrap();
    assert_eq!(account.kind, AccountKind::Service);
    assert_eq!(account.subscribe, ["#"]);
    assert_eq!(account.publish, ["#"]);

    store.revoke_account("dispatcher", "test").await.unwrap();
    let second = store.ensure_service_account("dispatcher").await.unwrap();
    assert_ne!(first, second);
    let service = Some(Principal::Service { name: "dispatcher".into() });
    assert_eq!(
        store.authenticate_mqtt("dispatcher", first.expose().as_bytes()).await.unwrap(),
        None,
        "the old token stops working"
    );
    assert_eq!(
        store.authenticate_mqtt("dispatcher", second.expose().as_bytes()).await.unwrap(),
        service,
        "the new token works and the revocation is lifted"
    );
    let rotated = store.account("dispatcher").await.unwrap().unwrap();
    assert_eq!(rotated.created_at, account.created_at);
    assert_eq!(rotated.revoked_at, None);

    store.create_account("partner", AccountKind::Integration, &filters(&["jd/v1/events/#"]), &[]).await.unwrap();
    let err = store.ensure_service_account("partner").await.unwrap_err();
    assert!(matches!(err, StoreError::DuplicateName { .. }), "{err:?}");
    assert_eq!(store.account("partner").await.unwrap().unwrap().kind, AccountKind::Integration);
}
