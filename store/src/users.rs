//! People who use the web view and the API: dispatch staff, leaders, administrators and
//! auditors. Passwords are kept as Argon2id hashes (PHC strings), never in clear.

use std::str::FromStr;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use sqlx::any::AnyRow;
use tracing::info;

use crate::ledger::NewLedgerEntry;
use crate::secret::{new_id, new_password};
use crate::{Secret, Store, StoreError, now_ms};

/// What a user may do; decides the views and actions offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The 24-hour desk: receives tips, dispatches inspectors.
    Dispatcher,
    /// Follows cases, deadlines, alarms and indices.
    Leader,
    /// Manages devices, users and integrations.
    Admin,
    /// Reads the ledger and verifies evidence; changes nothing.
    Auditor,
}

impl Role {
    /// Every role, in the order they are usually listed.
    pub const ALL: [Role; 4] = [Role::Dispatcher, Role::Leader, Role::Admin, Role::Auditor];

    /// The lowercase name used in the database, the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dispatcher => "dispatcher",
            Role::Leader => "leader",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Role, StoreError> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| StoreError::InvalidInput {
            field: "role",
            reason: format!("'{s}' is not one of dispatcher, leader, admin, auditor"),
        })
    }
}

/// A person who logs in to the web view or the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Generated id (`u` + 12 base32 characters).
    pub id: String,
    /// Unique login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// When the user was created (Unix ms).
    pub created_at: i64,
    /// When the user was disabled (Unix ms); a disabled user cannot log in.
    pub disabled_at: Option<i64>,
}

const USER_COLUMNS: &str = "id, name, role, created_at, disabled_at";

fn user_from_row(row: &AnyRow) -> Result<User, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role
            .parse()
            .map_err(|_| StoreError::Corrupt { what: "user role", reason: format!("unknown role '{role}'") })?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

/// Hashes a password with Argon2id (default parameters) on a blocking thread, as it takes tens
/// of milliseconds of CPU.
async fn hash_password(password: Secret) -> Result<String, StoreError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| StoreError::PasswordHash(e.to_string()))
    })
    .await
    .map_err(|e| StoreError::PasswordHash(e.to_string()))?
}

/// Checks a password against a stored PHC hash on a blocking thread; the final comparison in
/// `argon2` is constant-time.
async fn password_matches(password: String, phc: String) -> Result<bool, StoreError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&phc)
            .map_err(|e| StoreError::Corrupt { what: "password hash", reason: e.to_string() })?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(|e| StoreError::PasswordHash(e.to_string()))?
}

/// A valid Argon2id hash of a password nobody knows, checked when the user name is unknown so
/// that a wrong name costs as much time as a wrong password.
const DUMMY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Qp0jKYE5Yc9ZmMXMRkZ2vK2mWXh4dsSyqNKs2A5Z1Qc";

impl Store {
    /// Creates a user; with no password given, generates a 20-character one. The password is
    /// returned once and stored only as an Argon2id hash. `actor` (who created it: an admin's name,
    /// or `cli`) is recorded with the `user.created` ledger entry written in the same transaction.
    pub async fn create_user(
        &self,
        name: &str,
        role: Role,
        password: Option<&str>,
        actor: &str,
    ) -> Result<(User, Secret), StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StoreError::InvalidInput { field: "name", reason: "must be non-empty without spaces".into() });
        }
        let password = match password {
            Some(p) if p.chars().count() < 8 => {
                return Err(StoreError::InvalidInput {
                    field: "password",
                    reason: "must have at least 8 characters".into(),
                });
            }
            Some(p) => Secret::new(p),
            None => new_password(),
        };
        let password_hash = hash_password(password.clone()).await?;
        let user = User { id: new_id('u'), name: name.to_owned(), role, created_at: now_ms(), disabled_at: None };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, name, role, password_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&user.id)
        .bind(&user.name)
        .bind(role.as_str())
        .bind(&password_hash)
        .bind(user.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::from_insert(e, name))?;
        Store::ledger_append_in(&mut tx, user_entry("user.created", actor, &user, json!({"role": role.as_str()})))
            .await?;
        tx.commit().await?;
        info!(user = %user.id, name, %role, actor, "user created");
        Ok((user, password))
    }

    /// Checks a login: the user if the name exists, is not disabled and the password matches.
    pub async fn verify_user(&self, name: &str, password: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            password_matches(password.to_owned(), DUMMY_PHC.to_owned()).await?;
            return Ok(None);
        };
        let user = user_from_row(&row)?;
        let phc: String = row.try_get("password_hash")?;
        let matches = password_matches(password.to_owned(), phc).await?;
        Ok((matches && user.disabled_at.is_none()).then_some(user))
    }

    /// Every user, disabled ones included, by name.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name")).fetch_all(&self.pool).await?;
        rows.iter().map(user_from_row).collect()
    }

    /// The user with this id as stored now: how the web role re-checks, on every request, that
    /// a session's or cached login's user is still enabled and still has its role.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The user with this login name.
    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Disables a user: no login, and every web session and cached API login of theirs is refused
    /// from the next request on (the web role re-reads the user each time). Disabling twice keeps
    /// the first time and writes one `user.disabled` ledger entry. The last enabled admin cannot
    /// be disabled, so the office never locks itself out of its own administration.
    pub async fn disable_user(&self, name: &str, actor: &str) -> Result<User, StoreError> {
        let mut tx = self.pool.begin().await?;
        let user = locked_user(&mut tx, name).await?;
        if user.disabled_at.is_some() {
            return Ok(user);
        }
        if user.role == Role::Admin {
            refuse_last_admin(&mut tx, &user, "disable").await?;
        }
        let at = now_ms();
        sqlx::query("UPDATE users SET disabled_at = $1 WHERE id = $2")
            .bind(at)
            .bind(&user.id)
            .execute(&mut *tx)
            .await?;
        let user = User { disabled_at: Some(at), ..user };
        Store::ledger_append_in(&mut tx, user_entry("user.disabled", actor, &user, json!({}))).await?;
        tx.commit().await?;
        info!(user = %user.id, name = %user.name, actor, "user disabled");
        Ok(user)
    }

    /// Lets a disabled user log in again (a `user.enabled` ledger entry); enabling an enabled
    /// user changes nothing.
    pub async fn enable_user(&self, name: &str, actor: &str) -> Result<User, StoreError> {
        let mut tx = self.pool.begin().await?;
        let user = locked_user(&mut tx, name).await?;
        if user.disabled_at.is_none() {
            return Ok(user);
        }
        sqlx::query("UPDATE users SET disabled_at = NULL WHERE id = $1").bind(&user.id).execute(&mut *tx).await?;
        let user = User { disabled_at: None, ..user };
        Store::ledger_append_in(&mut tx, user_entry("user.enabled", actor, &user, json!({}))).await?;
        tx.commit().await?;
        info!(user = %user.id, name = %user.name, actor, "user enabled");
        Ok(user)
    }

    /// Changes what a user may do, effective from their next request (a `user.role` ledger entry
    /// with the old and new role). The last enabled admin keeps the admin role.
    pub async fn set_user_role(&self, name: &str, role: Role, actor: &str) -> Result<User, StoreError> {
        let mut tx = self.pool.begin().await?;
        let user = locked_user(&mut tx, name).await?;
        if user.role == role {
            return Ok(user);
        }
        if user.role == Role::Admin && user.disabled_at.is_none() {
            refuse_last_admin(&mut tx, &user, "take the admin role from").await?;
        }
        sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
            .bind(role.as_str())
            .bind(&user.id)
            .execute(&mut *tx)
            .await?;
        let from = user.role;
        let user = User { role, ..user };
        Store::ledger_append_in(
            &mut tx,
            user_entry("user.role", actor, &user, json!({"from": from.as_str(), "to": role.as_str()})),
        )
        .await?;
        tx.commit().await?;
        info!(user = %user.id, name = %user.name, %from, to = %role, actor, "user role changed");
        Ok(user)
    }
}

/// The ledger entry of a change to a user's account; the subject is the user's id, the body
/// names the user (names can be reused after a user is gone, ids cannot).
fn user_entry(kind: &str, actor: &str, user: &User, mut body: serde_json::Value) -> NewLedgerEntry {
    body["name"] = json!(user.name);
    NewLedgerEntry { kind: kind.into(), actor: actor.into(), subject: user.id.clone(), body }
}

/// Reads a user for a change inside `tx`. Writing the row first (a no-op update) takes its row
/// lock on PostgreSQL and the write lock on SQLite, so two admins changing users at once cannot
/// both pass the last-admin check.
async fn locked_user(tx: &mut sqlx::AnyConnection, name: &str) -> Result<User, StoreError> {
    sqlx::query("UPDATE users SET name = name WHERE name = $1").bind(name).execute(&mut *tx).await?;
    // Every admin's row too, for the last-admin check.
    sqlx::query("UPDATE users SET name = name WHERE role = 'admin'").execute(&mut *tx).await?;
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let row = row.ok_or_else(|| StoreError::NotFound { what: "user", id: name.to_owned() })?;
    user_from_row(&row)
}

/// Refuses a change that would leave no enabled admin.
async fn refuse_last_admin(tx: &mut sqlx::AnyConnection, user: &User, what: &str) -> Result<(), StoreError> {
    let others: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND disabled_at IS NULL AND id <> $1")
            .bind(&user.id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
    if others == 0 {
        return Err(StoreError::Conflict {
            reason: format!("'{}' is the last enabled admin; cannot {what} them (add another admin first)", user.name),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_in_lowercase() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        assert!("Admin".parse::<Role>().is_err());
    }

    #[test]
    fn the_dummy_hash_parses() {
        PasswordHash::new(DUMMY_PHC).unwrap();
    }
}
