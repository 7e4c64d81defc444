//! Field phones known to the platform. A device logs in to the broker with its id as MQTT
//! username and a random token as password; only the token's SHA-256 is kept.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use tracing::info;

use crate::ledger::NewLedgerEntry;
use crate::secret::new_id;
use crate::{Secret, Store, StoreError, hash_token, now_ms};

/// A registered field phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Generated id (`d` + 12 base32 characters); also its MQTT username and client id.
    pub id: String,
    /// Human-readable name given by the operator.
    pub name: String,
    /// The staff member who carries it, if known.
    pub staff_id: Option<String>,
    /// When it was registered (Unix ms).
    pub created_at: i64,
    /// When it was revoked (Unix ms); a revoked device can no longer log in.
    pub revoked_at: Option<i64>,
}

pub(crate) const DEVICE_COLUMNS: &str = "id, name, staff_id, created_at, revoked_at";

pub(crate) fn device_from_row(row: &AnyRow) -> Result<Device, sqlx::Error> {
    Ok(Device {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        staff_id: row.try_get("staff_id")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// Registers a phone and returns it with its token, which is shown once and never stored.
    pub async fn create_device(&self, name: &str, staff_id: Option<&str>) -> Result<(Device, Secret), StoreError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(StoreError::InvalidInput { field: "name", reason: "must not be empty".into() });
        }
        let created_at = now_ms();
        // 60 random bits make a clash practically impossible; retry anyway rather than fail.
        let mut attempts = 0;
        let (id, token) = loop {
            attempts += 1;
            let id = new_id('d');
            let token = self.token_for("device", &id);
            let token_hash = hash_token(token.expose());
            let inserted = sqlx::query(
                "INSERT INTO devices (id, name, staff_id, token_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&id)
            .bind(name)
            .bind(staff_id)
            .bind(&token_hash)
            .bind(created_at)
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(_) => break (id, token),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempts < 5 => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        info!(device = %id, name, "device registered");
        let device =
            Device { id, name: name.to_owned(), staff_id: staff_id.map(str::to_owned), created_at, revoked_at: None };
        Ok((device, token))
    }

    /// Registers many phones in one transaction (the demo's county, simulators, benchmarks);
    /// each `(name, staff_id)` gets a device and a token shown once.
    pub async fn create_devices(
        &self,
        phones: &[(String, Option<String>)],
    ) -> Result<Vec<(Device, Secret)>, StoreError> {
        let created_at = now_ms();
        let mut out = Vec::with_capacity(phones.len());
        let mut tx = self.pool.begin().await?;
        for (name, staff_id) in phones {
            let name = name.trim();
            if name.is_empty() {
                return Err(StoreError::InvalidInput { field: "name", reason: "must not be empty".into() });
            }
            let id = new_id('d');
            let token = self.token_for("device", &id);
            sqlx::query("INSERT INTO devices (id, name, staff_id, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&id)
                .bind(name)
                .bind(staff_id.as_deref())
                .bind(hash_token(token.expose()))
                .bind(created_at)
                .execute(&mut *tx)
                .await?;
            out.push((
                Device { id, name: name.to_owned(), staff_id: staff_id.clone(), created_at, revoked_at: None },
                token,
            ));
        }
        tx.commit().await?;
        info!(devices = out.len(), "devices registered in bulk");
        Ok(out)
    }

    /// Looks a device up by id.
    pub async fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(device_from_row).transpose()?)
    }

    /// Every device, revoked ones included, oldest first.
    pub async fn list_devices(&self) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(device_from_row).collect::<Result<_, _>>()?)
    }

    /// Stops a device from logging in again; revoking twice keeps the first revocation time and
    /// writes one `device.revoked` ledger entry naming `actor` (an admin's name or `cli`). The
    /// broker ends the device's live sessions and every role refuses its queued messages once
    /// they read the revocation (within a second or two).
    pub async fn revoke_device(&self, id: &str, actor: &str) -> Result<Device, StoreError> {
        let mut tx = self.pool.begin().await?;
        let at = now_ms();
        let updated = sqlx::query("UPDATE devices SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() > 0 {
            let entry = NewLedgerEntry {
                kind: "device.revoked".into(),
                actor: actor.into(),
                subject: id.into(),
                body: serde_json::json!({"revoked_at": at}),
            };
            Store::ledger_append_in(&mut tx, entry).await?;
        }
        tx.commit().await?;
        let device =
            self.device(id).await?.ok_or_else(|| StoreError::NotFound { what: "device", id: id.to_owned() })?;
        if updated.rows_affected() > 0 {
            info!(device = %id, actor, "device revoked");
        }
        Ok(device)
    }
}
