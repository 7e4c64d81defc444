use jiandu_store::{Role, StoreError};
use sqlx::Row;

use crate::helpers::TestDb;
use crate::on_both;

on_both!(
    users_log_in_with_their_password_only,
    generated_passwords_work_once_shown,
    names_are_unique_and_lists_are_sorted,
    disabled_users_cannot_log_in,
);

async fn users_log_in_with_their_password_only(db: &TestDb) {
    let store = &db.store;
    let (user, password) =
        store.create_user("wang.li", Role::Dispatcher, Some("correct horse battery"), "test").await.unwrap();
    assert_eq!(password.expose(), "correct horse battery");
    assert_eq!(user.role, Role::Dispatcher);
    assert!(user.id.starts_with('u'));

    assert_eq!(store.verify_user("wang.li", "correct horse battery").await.unwrap(), Some(user.clone()));
    assert_eq!(store.verify_user("wang.li", "correct horse batterY").await.unwrap(), None);
    assert_eq!(store.verify_user("nobody", "correct horse battery").await.unwrap(), None);

    let row = sqlx::query("SELECT password_hash FROM users WHERE id = $1")
        .bind(&user.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    let phc: String = row.get("password_hash");
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    assert!(!phc.contains("correct horse"));

    let err = store.create_user("x", Role::Admin, Some("short"), "test").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { field: "password", .. }));
}

async fn generated_passwords_work_once_shown(db: &TestDb) {
    let (user, password) = db.store.create_user("admin", Role::Admin, None, "test").await.unwrap();
    assert_eq!(password.expose().chars().count(), 20);
    assert!(password.expose().chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(db.store.verify_user("admin", password.expose()).await.unwrap(), Some(user));
}

async fn names_are_unique_and_lists_are_sorted(db: &TestDb) {
    let store = &db.store;
    store.create_user("zhao", Role::Leader, Some("password-1"), "test").await.unwrap();
    store.create_user("audit", Role::Auditor, Some("password-2"), "test").await.unwrap();
    let err = store.create_user("zhao", Role::Admin, Some("password-3"), "test").await.unwrap_err();
    assert!(matches!(err, StoreError::DuplicateName { ref name } if name == "zhao"), "{err:?}");

    let users = store.list_users().await.unwrap();
    let names: Vec<_> = users.iter().map(|u| (u.name.as_str(), u.role)).collect();
    assert_eq!(names, [("audit", Role::Auditor), ("zhao", Role::Leader)]);
}

async fn disabled_users_cannot_log_in(db: &TestDb) {
    let store = &db.store;
    let (user, password) = store.create_user("li", Role::Leader, None, "test").await.unwrap();
    sqlx::query("UPDATE users SET disabled_at = $1 WHERE id = $2")
        .bind(1i64)
        .bind(&user.id)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.verify_user("li", password.expose()).await.unwrap(), None);
    assert_eq!(store.list_users().await.unwrap()[0].disabled_at, Some(1));
}
