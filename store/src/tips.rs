//! Public tips and the office's feedback to reporters (issue 19, DESIGN §4).
//!
//! A citizen's tip becomes an ordinary report of source `public` (so the dispatcher offers it
//! like any other) plus one `public_tips` row per submission: its follow-up code, the SHA-256 of
//! its secret and, unless anonymous, the reporter's contact. Submissions with the same fold key
//! (text and place, computed by the web role) within the folding window are folded into the open
//! report that has it: one report, a count, a code for each reporter. The office writes feedback
//! per report ([`Store::report_feedback_add`], ledgered); every code of the report sees it.
//!
//! The secret is high-entropy (100 random bits), so a fast hash is enough: nobody can guess it
//! from a dictionary, and an unhurried hash would only make the public status endpoint a lever
//! for exhausting the CPU.

use serde::Serialize;
use serde_json::json;
use sqlx::Row;
use tracing::info;

use crate::{NewEvent, NewLedgerEntry, NewReport, ReportSource, ReportStatus, Store, StoreError, new_id, now_ms};

/// A checked submission to store (see [`Store::public_tip_submit`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewPublicTip {
    /// Follow-up code shown to the reporter.
    pub code: String,
    /// Lowercase hex SHA-256 of the secret shown to the reporter.
    pub secret_sha256: String,
    /// Category.
    pub kind: String,
    /// What the citizen saw.
    pub text: String,
    /// Latitude, WGS-84; `None` (with `lon`) when the citizen named the place in words only.
    pub lat: Option<f64>,
    /// Longitude, WGS-84; `None` exactly when `lat` is.
    pub lon: Option<f64>,
    /// The place in words (always there when the point is not).
    pub place: Option<String>,
    /// Licence plate.
    pub plate: Option<String>,
    /// Contact; `None` for anonymous tips.
    pub contact: Option<String>,
    /// The reporter asked not to be identifiable.
    pub anonymous: bool,
    /// Photos that come with it (stored as evidence right after).
    pub photos: i64,
    /// Same text and place, as the web role normalises them.
    pub fold_key: String,
    /// Fold into an open report with the same key seen within this many milliseconds.
    pub fold_window_ms: i64,
}

/// What a submission became.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublicTipStored {
    /// The follow-up code.
    pub code: String,
    /// The report it belongs to.
    pub report_id: String,
    /// It joined an open report with the same text and place.
    pub folded: bool,
    /// Submissions the report holds now.
    pub count: i64,
}

/// A submission as the office sees it; `contact` is filled only by [`Store::public_tip_contacts`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublicTipRecord {
    /// Follow-up code.
    pub code: String,
    /// The reporter asked not to be identifiable.
    pub anonymous: bool,
    /// Whether a contact is on file.
    pub contact_on_file: bool,
    /// The contact, only for leaders and admins (audited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// Photos sent with it.
    pub photos: i64,
    /// When (Unix ms).
    pub created_at: i64,
}

/// The public side of a report: where, how many reporters, their submissions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublicReport {
    /// The place in words, from the first submission.
    pub place: Option<String>,
    /// Submissions folded into it.
    pub count: i64,
    /// Each submission.
    pub tips: Vec<PublicTipRecord>,
}

/// One line of the office's answer to the reporters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Feedback {
    /// Its id.
    pub id: String,
    /// The report.
    pub report_id: String,
    /// What the office says.
    pub text: String,
    /// The staff member who wrote it (never shown to the public).
    pub author: String,
    /// When (Unix ms).
    pub ts: i64,
    /// Its ledger entry.
    pub ledger_seq: i64,
}

/// What the public status endpoint needs: the secret's hash to compare, the report's status
/// and the feedback (author left out by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct PublicTipStatus {
    /// Lowercase hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// The report's status.
    pub status: ReportStatus,
    /// When the tip was submitted (Unix ms).
    pub created_at: i64,
    /// The office's feedback, oldest first.
    pub feedback: Vec<Feedback>,
}

/// Most feedback lines a report keeps (each one is a ledger entry).
pub const MAX_FEEDBACK_PER_REPORT: i64 = 50;

impl Store {
    /// Stores a public tip: folds it into the open public report with the same `fold_key` seen
    /// within the window, or stores a new report of source `public` (its `report.created` event
    /// and ledger entry, so the dispatcher picks it up); then the submission with a `tip.received`
    /// ledger entry, all in one transaction.
    pub async fn public_tip_submit(&self, t: NewPublicTip) -> Result<PublicTipStored, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // The first statement writes, so SQLite's write lock is taken at once.
        let folded = sqlx::query(
            "UPDATE public_reports SET count = count + 1, last_at = $1 WHERE report_id = (\
               SELECT p.report_id FROM public_reports p JOIN reports r ON r.id = p.report_id \
               WHERE p.fold_key = $2 AND p.last_at >= $3 AND r.status NOT IN ('completed', 'cancelled') \
               ORDER BY p.last_at DESC LIMIT 1) RETURNING report_id, count",
        )
        .bind(now)
        .bind(&t.fold_key)
        .bind(now - t.fold_window_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let (report_id, count, was_folded) = match folded {
            Some(row) => (row.try_get::<String, _>("report_id")?, row.try_get::<i64, _>("count")?, true),
            None => {
                let new = NewReport {
                    id: new_id(),
                    source: ReportSource::Public,
                    origin: "public".into(),
                    kind: t.kind.clone(),
                    text: t.text.clone(),
                    lat: t.lat,
                    lon: t.lon,
                    ts: now,
                    plate: t.plate.clone(),
                    needs: 1,
                };
                let (report, _) = Store::insert_report_in(&mut tx, new).await?;
                sqlx::query(
                    "INSERT INTO public_reports (report_id, place, fold_key, count, first_at, last_at) \
                     VALUES ($1, $2, $3, 1, $4, $4)",
                )
                .bind(&report.id)
                .bind(&t.place)
                .bind(&t.fold_key)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                (report.id, 1, false)
            }
        };
        let contact = if t.anonymous { None } else { t.contact.clone() };
        sqlx::query(
            "INSERT INTO public_tips (code, report_id, secret_sha256, contact, anonymous, photos, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.code)
        .bind(&report_id)
        .bind(&t.secret_sha256)
        .bind(&contact)
        .bind(i64::from(t.anonymous))
        .bind(t.photos)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "tip.received".into(),
                actor: "public".into(),
                subject: report_id.clone(),
                body: json!({"code": t.code, "folded": i64::from(was_folded), "count": count, "photos": t.photos,
                    "anonymous": i64::from(t.anonymous), "contact_on_file": i64::from(contact.is_some())}),
            },
        )
        .await?;
        if was_folded {
            Store::append_event_in(
                &mut tx,
                NewEvent {
                    kind: "report".into(),
                    r#type: "report.folded".into(),
                    data: json!({"report_id": report_id, "count": count}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        info!(report = %report_id, code = %t.code, folded = was_folded, count, "public tip stored");
        Ok(PublicTipStored { code: t.code, report_id, folded: was_folded, count })
    }

    /// The status behind a follow-up code (`None` for an unknown code).
    pub async fn public_tip_status(&self, code: &str) -> Result<Option<PublicTipStatus>, StoreError> {
        let row = sqlx::query(
            "SELECT t.secret_sha256, t.created_at, t.report_id, r.status FROM public_tips t \
             JOIN reports r ON r.id = t.report_id WHERE t.code = $1",
        )
        .bind(code)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let status: String = row.try_get("status")?;
        let report_id: String = row.try_get("report_id")?;
        Ok(Some(PublicTipStatus {
            secret_sha256: row.try_get("secret_sha256")?,
            status: ReportStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
                what: "report status",
                reason: format!("unknown value {status:?}"),
            })?,
            created_at: row.try_get("created_at")?,
            feedback: self.report_feedback(&report_id).await?,
        }))
    }

    /// The public side of a report, contacts left out (`None` when the report is not public).
    pub async fn public_report(&self, report_id: &str) -> Result<Option<PublicReport>, StoreError> {
        self.public_report_with(report_id, false).await
    }

    /// The public side of a report with the reporters' contacts: for leaders and admins, whose
    /// every call the web role audits.
    pub async fn public_tip_contacts(&self, report_id: &str) -> Result<Option<PublicReport>, StoreError> {
        self.public_report_with(report_id, true).await
    }

    async fn public_report_with(&self, report_id: &str, contacts: bool) -> Result<Option<PublicReport>, StoreError> {
        let Some(head) = sqlx::query("SELECT place, count FROM public_reports WHERE report_id = $1")
            .bind(report_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT code, anonymous, contact, photos, created_at FROM public_tips WHERE report_id = $1 \
             ORDER BY created_at, code",
        )
        .bind(report_id)
        .fetch_all(&self.pool)
        .await?;
        let mut tips = Vec::with_capacity(rows.len());
        for row in &rows {
            let contact: Option<String> = row.try_get("contact")?;
            tips.push(PublicTipRecord {
                code: row.try_get("code")?,
                anonymous: row.try_get::<i64, _>("anonymous")? != 0,
                contact_on_file: contact.is_some(),
                contact: if contacts { contact } else { None },
                photos: row.try_get("photos")?,
                created_at: row.try_get("created_at")?,
            });
        }
        Ok(Some(PublicReport { place: head.try_get("place")?, count: head.try_get("count")?, tips }))
    }

    /// Records the office's answer to the reporters of a public report: the feedback row, a
    /// `report.feedback` ledger entry (with the text's SHA-256) and event, in one transaction.
    pub async fn report_feedback_add(&self, report_id: &str, text: &str, author: &str) -> Result<Feedback, StoreError> {
        use sha2::{Digest, Sha256};
        let mut tx = self.pool.begin().await?;
        // Lock the report's row first (the write lock on SQLite) so the count below holds.
        let touched = sqlx::query("UPDATE reports SET updated_at = updated_at WHERE id = $1")
            .bind(report_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if touched == 0 {
            return Err(StoreError::NotFound { what: "report", id: report_id.to_owned() });
        }
        let public = sqlx::query("SELECT count FROM public_reports WHERE report_id = $1")
            .bind(report_id)
            .fetch_optional(&mut *tx)
            .await?;
        if public.is_none() {
            return Err(StoreError::Conflict {
                reason: format!("report '{report_id}' did not come from the public; there is nobody to answer"),
            });
        }
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM report_feedback WHERE report_id = $1")
            .bind(report_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if n >= MAX_FEEDBACK_PER_REPORT {
            return Err(StoreError::Conflict {
                reason: format!("report '{report_id}' has {n} feedback lines already, the most it keeps"),
            });
        }
        let id = new_id();
        let entry = Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "report.feedback".into(),
                actor: author.to_owned(),
                subject: report_id.to_owned(),
                body: json!({"feedback": id, "text_sha256": hex::encode(Sha256::digest(text.as_bytes()))}),
            },
        )
        .await?;
        let fb = Feedback {
            id,
            report_id: report_id.to_owned(),
            text: text.to_owned(),
            author: author.to_owned(),
            ts: entry.ts,
            ledger_seq: entry.seq,
        };
        sqlx::query(
            "INSERT INTO report_feedback (id, report_id, text, author, ts, ledger_seq) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&fb.id)
        .bind(&fb.report_id)
        .bind(&fb.text)
        .bind(&fb.author)
        .bind(fb.ts)
        .bind(fb.ledger_seq)
        .execute(&mut *tx)
        .await?;
        Store::append_event_in(
            &mut tx,
            NewEvent {
                kind: "report".into(),
                r#type: "report.feedback".into(),
                data: json!({"report_id": fb.report_id, "feedback": fb.id, "author": fb.author, "ts": fb.ts}),
            },
        )
        .await?;
        tx.commit().await?;
        info!(report = %report_id, author = %author, ledger_seq = fb.ledger_seq, "feedback to reporters recorded");
        Ok(fb)
    }

    /// The office's feedback on a report, oldest first.
    pub async fn report_feedback(&self, report_id: &str) -> Result<Vec<Feedback>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, report_id, text, author, ts, ledger_seq FROM report_feedback WHERE report_id = $1 \
             ORDER BY ts, id LIMIT 100",
        )
        .bind(report_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Feedback {
                    id: row.try_get("id")?,
                    report_id: row.try_get("report_id")?,
                    text: row.try_get("text")?,
                    author: row.try_get("author")?,
                    ts: row.try_get("ts")?,
                    ledger_seq: row.try_get("ledger_seq")?,
                })
            })
            .collect()
    }
}
