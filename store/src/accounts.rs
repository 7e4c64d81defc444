//! MQTT accounts that are not phones: integration accounts for other systems (limited to the
//! topic filters they were created with) and service accounts for jiandu's own roles (ingest,
//! dispatcher, web…) when they connect to the broker as clients. Also the broker's login check.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use tracing::{debug, info};

use crate::ledger::NewLedgerEntry;
use crate::secret::{new_token, token_matches};
use crate::{Secret, Store, StoreError, hash_token, now_ms};

/// Whether an account belongs to another system or to one of jiandu's own roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// Another system: may use only the filters it was created with.
    Integration,
    /// An internal role of jiandu: may use every topic.
    Service,
}

impl AccountKind {
    /// The lowercase name used in the database and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Integration => "integration",
            AccountKind::Service => "service",
        }
    }
}

impl std::fmt::Display for AccountKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AccountKind {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<AccountKind, StoreError> {
        match s {
            "integration" => Ok(AccountKind::Integration),
            "service" => Ok(AccountKind::Service),
            _ => Err(StoreError::InvalidInput {
                field: "kind",
                reason: format!("'{s}' is not one of integration, service"),
            }),
        }
    }
}

/// An MQTT login that is not a phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Unique name; also the MQTT username.
    pub name: String,
    /// Integration or service.
    pub kind: AccountKind,
    /// MQTT filters it may subscribe to.
    pub subscribe: Vec<String>,
    /// MQTT filters it may publish under.
    pub publish: Vec<String>,
    /// When it was created (Unix ms).
    pub created_at: i64,
    /// When it was revoked (Unix ms); a revoked account can no longer log in.
    pub revoked_at: Option<i64>,
}

/// Who an MQTT login turned out to be, with what the broker needs for its ACL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// A field phone; publishes under `jd/v1/dev/{id}/`, subscribes to its own inbox.
    Device {
        /// The device id (= MQTT username = client id).
        id: String,
    },
    /// Another system, limited to its filters.
    Integration {
        /// The account name.
        name: String,
        /// Filters it may subscribe to.
        subscribe: Vec<String>,
        /// Filters it may publish to.
        publish: Vec<String>,
    },
    /// One of jiandu's own roles; unrestricted.
    Service {
        /// The account name.
        name: String,
    },
}

const ACCOUNT_COLUMNS: &str = "name, kind, subscribe, publish, created_at, revoked_at";

fn filters_from_json(what: &'static str, json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt { what, reason: e.to_string() })
}

fn account_from_row(row: &AnyRow) -> Result<Account, StoreError> {
    let kind: String = row.try_get("kind")?;
    let subscribe: String = row.try_get("subscribe")?;
    let publish: String = row.try_get("publish")?;
    Ok(Account {
        name: row.try_get("name")?,
        kind: kind
            .parse()
            .map_err(|_| StoreError::Corrupt { what: "account kind", reason: format!("unknown kind '{kind}'") })?,
        subscribe: filters_from_json("account subscribe filters", &subscribe)?,
        publish: filters_from_json("account publish filters", &publish)?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Refuses names that cannot serve as an MQTT username.
fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 128 {
        return Err(StoreError::InvalidInput { field: "name", reason: "must have 1 to 128 characters".into() });
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::InvalidInput {
            field: "name",
            reason: "must not contain spaces or control characters".into(),
        });
    }
    Ok(())
}

/// Refuses strings that are not valid MQTT topic filters (1–512 characters, `+` and `#` only as
/// whole levels, `#` only last).
fn check_filters(field: &'static str, filters: &[String]) -> Result<(), StoreError> {
    for filter in filters {
        let levels: Vec<&str> = filter.split('/').collect();
        let bad_level = levels.iter().enumerate().any(|(i, level)| {
            (level.contains('+') && *level != "+") || (level.contains('#') && (*level != "#" || i + 1 != levels.len()))
        });
        if filter.is_empty() || filter.len() > 512 || filter.contains('\0') || bad_level {
            return Err(StoreError::InvalidInput {
                field,
                reason: format!("'{filter}' is not a valid MQTT topic filter"),
            });
        }
    }
    Ok(())
}

fn to_json(filters: &[String]) -> String {
    serde_json::to_string(filters).expect("a list of strings always serialises")
}

impl Store {
    /// Creates an MQTT account with its topic filters; returns it with its token, shown once.
    pub async fn create_account(
        &self,
        name: &str,
        kind: AccountKind,
        subscribe: &[String],
        publish: &[String],
    ) -> Result<(Account, Secret), StoreError> {
        check_name(name)?;
        check_filters("subscribe", subscribe)?;
        check_filters("publish", publish)?;
        let token = self.token_for("account", name);
        let account = Account {
            name: name.to_owned(),
            kind,
            subscribe: subscribe.to_vec(),
            publish: publish.to_vec(),
            created_at: now_ms(),
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO accounts (name, kind, token_hash, subscribe, publish, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(name)
        .bind(kind.as_str())
        .bind(hash_token(token.expose()))
        .bind(to_json(subscribe))
        .bind(to_json(publish))
        .bind(account.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_insert(e, name))?;
        info!(account = name, %kind, "MQTT account created");
        Ok((account, token))
    }

    /// Creates the internal service account `name` (all topics), or gives an existing one a new
    /// token (and lifts a revocation); returns the new token. Fails with
    /// [`StoreError::DuplicateName`] if `name` belongs to an integration account.
    pub async fn ensure_service_account(&self, name: &str) -> Result<Secret, StoreError> {
        check_name(name)?;
        let token = new_token();
        let all = to_json(&["#".to_owned()]);
        let written = sqlx::query(
            "INSERT INTO accounts (name, kind, token_hash, subscribe, publish, created_at) \
             VALUES ($1, 'service', $2, $3, $3, $4) \
             ON CONFLICT (name) DO UPDATE \
             SET token_hash = excluded.token_hash, revoked_at = NULL, \
                 subscribe = excluded.subscribe, publish = excluded.publish \
             WHERE accounts.kind = 'service'",
        )
        .bind(name)
        .bind(hash_token(token.expose()))
        .bind(&all)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if written.rows_affected() == 0 {
            return Err(StoreError::DuplicateName { name: name.to_owned() });
        }
        info!(account = name, "service account token issued");
        Ok(token)
    }

    /// Looks an account up by name.
    pub async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// Every account, revoked ones included, by name.
    pub async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name")).fetch_all(&self.pool).await?;
        rows.iter().map(account_from_row).collect()
    }

    /// Stops an account from logging in (MQTT and HTTP Bearer); revoking twice keeps the first
    /// revocation time and writes one `account.revoked` ledger entry naming `actor`.
    pub async fn revoke_account(&self, name: &str, actor: &str) -> Result<Account, StoreError> {
        let mut tx = self.pool.begin().await?;
        let at = now_ms();
        let updated = sqlx::query("UPDATE accounts SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
            .bind(at)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() > 0 {
            let entry = NewLedgerEntry {
                kind: "account.revoked".into(),
                actor: actor.into(),
                subject: name.into(),
                body: serde_json::json!({"revoked_at": at}),
            };
            Store::ledger_append_in(&mut tx, entry).await?;
        }
        tx.commit().await?;
        let account =
            self.account(name).await?.ok_or_else(|| StoreError::NotFound { what: "account", id: name.to_owned() })?;
        if updated.rows_affected() > 0 {
            info!(account = name, actor, "MQTT account revoked");
        }
        Ok(account)
    }

    /// The MQTT login check used by the broker: device id + token, or account name + token.
    /// `None` for an unknown name, a wrong token, or a revoked device or account.
    pub async fn authenticate_mqtt(&self, username: &str, password: &[u8]) -> Result<Option<Principal>, StoreError> {
        let Ok(token) = std::str::from_utf8(password) else {
            debug!(username, "MQTT login refused: password is not UTF-8");
            return Ok(None);
        };
        let device = sqlx::query("SELECT token_hash, revoked_at FROM devices WHERE id = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = device {
            let token_hash: String = row.try_get("token_hash")?;
            let revoked_at: Option<i64> = row.try_get("revoked_at")?;
            let ok = token_matches(token, &token_hash) && revoked_at.is_none();
            debug!(device = username, ok, "MQTT device login checked");
            return Ok(ok.then(|| Principal::Device { id: username.to_owned() }));
        }
        let row = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS}, token_hash FROM accounts WHERE name = $1"))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            // Spend the same hashing work as for a known name.
            let _ = token_matches(token, &hash_token(""));
            debug!(username, "MQTT login refused: unknown username");
            return Ok(None);
        };
        let token_hash: String = row.try_get("token_hash")?;
        let account = account_from_row(&row)?;
        let ok = token_matches(token, &token_hash) && account.revoked_at.is_none();
        debug!(account = username, ok, "MQTT account login checked");
        if !ok {
            return Ok(None);
        }
        Ok(Some(match account.kind {
            AccountKind::Integration => {
                Principal::Integration { name: account.name, subscribe: account.subscribe, publish: account.publish }
            }
            AccountKind::Service => Principal::Service { name: account.name },
        }))
    }
}

impl Store {
    /// Who `username` is, without a password: what an external broker's authorisation hook
    /// needs for its topic decision (the login itself was checked by
    /// [`Store::authenticate_mqtt`]). `None` for an unknown name or a revoked device or account.
    pub async fn mqtt_principal(&self, username: &str) -> Result<Option<Principal>, StoreError> {
        let device = sqlx::query("SELECT revoked_at FROM devices WHERE id = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = device {
            let revoked_at: Option<i64> = row.try_get("revoked_at")?;
            return Ok(revoked_at.is_none().then(|| Principal::Device { id: username.to_owned() }));
        }
        let Some(account) = self.account(username).await? else { return Ok(None) };
        if account.revoked_at.is_some() {
            return Ok(None);
        }
        Ok(Some(match account.kind {
            AccountKind::Integration => {
                Principal::Integration { name: account.name, subscribe: account.subscribe, publish: account.publish }
            }
            AccountKind::Service => Principal::Service { name: account.name },
        }))
    }
}

/// One MQTT login as an external broker must know it (see [`Store::mqtt_logins`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttLogin {
    /// Who it is, with its topic filters.
    pub principal: Principal,
    /// SHA-256 (hex) of its token, to tell whether a derived token is really its token.
    pub token_hash: String,
    /// Revoked: the broker must refuse it.
    pub revoked: bool,
}

impl Store {
    /// Every device and account with its token hash, revoked ones included: what the Mosquitto
    /// dynamic-security sync keeps the broker's clients in step with.
    pub async fn mqtt_logins(&self) -> Result<Vec<MqttLogin>, StoreError> {
        let mut out = Vec::new();
        for row in
            sqlx::query("SELECT id, token_hash, revoked_at FROM devices ORDER BY id").fetch_all(&self.pool).await?
        {
            out.push(MqttLogin {
                principal: Principal::Device { id: row.try_get("id")? },
                token_hash: row.try_get("token_hash")?,
                revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            });
        }
        let rows = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS}, token_hash FROM accounts ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let account = account_from_row(&row)?;
            out.push(MqttLogin {
                token_hash: row.try_get("token_hash")?,
                revoked: account.revoked_at.is_some(),
                principal: match account.kind {
                    AccountKind::Integration => Principal::Integration {
                        name: account.name,
                        subscribe: account.subscribe,
                        publish: account.publish,
                    },
                    AccountKind::Service => Principal::Service { name: account.name },
                },
            });
        }
        Ok(out)
    }
}

/// Devices and accounts revoked since some moment (see [`Store::revoked_since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    /// Device ids.
    pub devices: Vec<String>,
    /// Integration and service account names.
    pub accounts: Vec<String>,
}

/// How far each look at revocations goes back beyond the previous one: clock skew between the
/// process that revoked (CLI, web role, another host) and the reader.
pub const REVOCATION_LOOKBACK_MS: i64 = 10_000;

/// What a role knows of revoked devices, so it can refuse their messages already queued at the
/// broker (dispatch's reports and assignment updates, oversight's look-ups): every question
/// first reads the revocations since the last one (an indexed range scan, usually empty).
#[derive(Debug)]
pub struct RevokedDevices {
    seen: i64,
    devices: std::collections::HashSet<String>,
}

impl Default for RevokedDevices {
    fn default() -> Self {
        // The first look reads every revocation ever made.
        RevokedDevices { seen: i64::MIN / 2, devices: Default::default() }
    }
}

impl RevokedDevices {
    /// Whether `device` is revoked, as of now; when the database cannot be read, as of the last
    /// successful read (the broker's login check still holds).
    pub async fn is_revoked(&mut self, store: &Store, device: &str) -> bool {
        let now = crate::now_ms();
        match store.revoked_since(self.seen - REVOCATION_LOOKBACK_MS).await {
            Ok(r) => {
                self.devices.extend(r.devices);
                self.seen = now;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read revocations"),
        }
        self.devices.contains(device)
    }
}

impl Store {
    /// Devices and accounts whose revocation time is at or after `since_ms`: how the broker and
    /// the roles learn, within a second, of a revocation another process (the CLI, the web
    /// role) wrote. Callers look back a few seconds more than they last looked, so clock skew
    /// between the writer and the reader cannot hide one.
    pub async fn revoked_since(&self, since_ms: i64) -> Result<Revoked, StoreError> {
        let devices = sqlx::query("SELECT id FROM devices WHERE revoked_at >= $1")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?;
        let accounts = sqlx::query("SELECT name FROM accounts WHERE revoked_at >= $1")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("name"))
            .collect::<Result<_, _>>()?;
        Ok(Revoked { devices, accounts })
    }
}

impl Store {
    /// The integration or service account whose token is `token` (HTTP `Authorization: Bearer`),
    /// if it exists and is not revoked.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE token_hash = $1"))
            .bind(hash_token(token))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let account = account_from_row(&row)?;
        Ok(account.revoked_at.is_none().then_some(account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked_for_mqtt_syntax() {
        let ok = ["jd/v1/events/#", "#", "+/x/+", "jd/v1/reports"].map(String::from);
        check_filters("subscribe", &ok).unwrap();
        let too_long = "a/".repeat(300);
        for bad in ["", "a/#/b", "a/b#", "a+/b", "x\0y", "jd/v1/ev#", "jd/v1+/x", too_long.as_str()] {
            assert!(check_filters("subscribe", &[bad.to_owned()]).is_err(), "{bad:?} accepted");
        }
    }
}
