//! `/api/v1/index`: the integrity index per township and department (issue 11) for the leaders'
//! dashboard.
//!
//! Everything here goes through `oversight::integrity` (the formula in force, the computation,
//! the checks on imported indicators, the assessment) and `store`; the web crate only renders.
//! `GET /index` colours every unit of a period, `GET /index/{unit}` gives the trend and the
//! explanation down to the underlying records, the assessment comes as CSV or printable HTML,
//! and leaders and admins recompute on demand, enter indicators and issue circulation notices.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiandu_oversight::OversightError;
use jiandu_oversight::integrity::{self, Period, assessment};
use jiandu_store::{IndexRow, NewIndicator, NewNotice, Role, now_ms};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Caller, json_body, json_body_or_default, non_blank};
use crate::AppState;

/// Body of `POST /api/v1/index/compute`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComputeBody {
    /// e.g. `2026-Q4`; default the current period.
    period: Option<String>,
}

/// Body of `POST /api/v1/index/indicators` with several rows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndicatorsBody {
    rows: Vec<IndicatorBody>,
}

/// One imported indicator value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndicatorBody {
    unit: String,
    period: String,
    indicator: String,
    value: f64,
}

/// Body of `POST /api/v1/index/notices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticeBody {
    period: String,
    #[serde(default)]
    units: Vec<String>,
    title: Option<String>,
    body: Option<String>,
}

/// Roles that may read the index.
const READERS: &[Role] = &[Role::Dispatcher, Role::Leader, Role::Admin, Role::Auditor];
/// Roles that may recompute, enter indicators and issue notices.
const WRITERS: &[Role] = &[Role::Leader, Role::Admin];

/// The index routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/index", get(period_view))
        .route("/index/compute", post(compute))
        .route("/index/indicators", post(indicators))
        .route("/index/formula", get(formulas))
        .route("/index/notices", get(notices).post(issue_notice))
        .route("/index/assessment.csv", get(assessment_csv))
        .route("/index/assessment.html", get(assessment_html))
        .route("/index/{unit}", get(unit_view))
}

/// Domain refusals as HTTP answers: a field error is a 422 naming the field (a bad import row
/// names `rows[i].column`), a refused role a 403, a store error as the store says.
impl From<OversightError> for ApiError {
    fn from(e: OversightError) -> ApiError {
        match e {
            OversightError::Invalid { field, reason } => ApiError::invalid(field, reason),
            OversightError::Forbidden { reason } => ApiError::forbidden(reason),
            OversightError::Rows { errors, .. } => match errors.first() {
                Some(first) => ApiError::invalid(
                    format!("rows[{}].{}", first.row.saturating_sub(2), first.column),
                    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "),
                ),
                None => ApiError::invalid("rows", "invalid"),
            },
            OversightError::Store(e) => ApiError::from(e),
            other => ApiError::internal(other),
        }
    }
}

/// A row as the dashboard shows it (no inputs).
fn summary(r: &IndexRow) -> Value {
    json!({
        "unit": r.unit, "unit_name": r.unit_name, "period": r.period, "score": r.score, "colour": r.colour,
        "formula_version": r.formula_version, "size": r.size, "size_source": r.size_source,
        "explanation": r.explanation, "computed_at": r.computed_at, "index_id": r.id,
    })
}

#[derive(Deserialize)]
struct PeriodQuery {
    period: Option<String>,
}

/// `GET /api/v1/index[?period=2026-Q4]`: every unit of a period with its colour (default: the
/// most recently computed period).
async fn period_view(
    caller: Caller,
    State(s): State<AppState>,
    Query(q): Query<PeriodQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, true)?;
    let period = match q.period {
        Some(p) => Period::parse(&p).map_err(ApiError::from)?.label,
        None => match s.store.integrity_latest_period().await? {
            Some(p) => p,
            None => {
                let (_, f) = integrity::formula_in_force(&s.store).await.map_err(ApiError::from)?;
                Period::containing(f.period, now_ms()).label
            }
        },
    };
    let rows = s.store.integrity_period(&period).await?;
    let colours = jiandu_store::Colour::counts(rows.iter().map(|r| r.colour));
    Ok(Json(json!({"period": period, "colours": colours, "units": rows.iter().map(summary).collect::<Vec<_>>()})))
}

/// `GET /api/v1/index/{unit}`: the unit's trend (latest row per period), its latest explanation
/// with the inputs, terms and underlying record ids, the full computation history, alerts and
/// rectification cases.
async fn unit_view(
    caller: Caller,
    State(s): State<AppState>,
    Path(unit): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, true)?;
    let history = s.store.integrity_history(&unit, 1000).await?;
    let Some(latest) = history.first() else { return Err(ApiError::not_found("index of unit", &unit)) };
    let mut trend: Vec<&IndexRow> = Vec::new();
    for r in &history {
        if !trend.iter().any(|t| t.period == r.period) {
            trend.push(r);
        }
    }
    trend.sort_by(|a, b| a.period.cmp(&b.period));
    let alerts = s.store.integrity_alerts(Some(&unit), None).await?;
    Ok(Json(json!({
        "unit": unit,
        "unit_name": latest.unit_name,
        "latest": {"row": summary(latest), "inputs": latest.inputs},
        "explanation": latest.explanation,
        "records": latest.inputs.get("records"),
        "trend": trend.iter().map(|r| json!({"period": r.period, "score": r.score, "colour": r.colour,
            "formula_version": r.formula_version, "computed_at": r.computed_at})).collect::<Vec<_>>(),
        "history": history.iter().map(|r| json!({"row": summary(r), "inputs": r.inputs})).collect::<Vec<_>>(),
        "alerts": alerts,
    })))
}

/// `POST /api/v1/index/compute` `{period?}`: recomputes a period now (leaders, admins); 201 with
/// the rows stored and the alerts raised.
async fn compute(caller: Caller, State(s): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    caller.require(WRITERS, false)?;
    let b: ComputeBody = json_body_or_default(&body)?;
    let run = integrity::compute(&s.store, b.period.as_deref(), caller.name(), now_ms(), false)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::internal("a forced computation stored nothing"))?;
    let alerts = s.store.integrity_alerts(None, run.rows.first().map(|r| r.period.as_str())).await?;
    let raised: Vec<&jiandu_store::IndexAlert> =
        alerts.iter().filter(|a| run.alerts.iter().any(|r| r.id == a.id)).collect();
    let body = json!({
        "run_id": run.run_id, "ledger_seq": run.ledger_seq,
        "period": run.rows.first().map(|r| r.period.clone()),
        "units": run.rows.iter().map(summary).collect::<Vec<_>>(),
        "alerts": raised,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /api/v1/index/indicators` `{rows:[{unit,period,indicator,value}]}` or one such object:
/// imported indicators (education, organisation checks), checked against the formula.
async fn indicators(caller: Caller, State(s): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    caller.require(WRITERS, false)?;
    // `{rows:[…]}`, or one row on its own.
    let many = serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.get("rows").is_some());
    let (items, prefix): (Vec<IndicatorBody>, &str) = if many {
        (json_body::<IndicatorsBody>(&body)?.rows, "rows")
    } else {
        (vec![json_body::<IndicatorBody>(&body)?], "")
    };
    let mut rows = Vec::with_capacity(items.len());
    for (i, r) in items.into_iter().enumerate() {
        let at = |f: &str| if prefix.is_empty() { f.to_owned() } else { format!("{prefix}[{i}].{f}") };
        rows.push(NewIndicator {
            unit: non_blank(&at("unit"), r.unit)?,
            period: non_blank(&at("period"), r.period)?,
            key: non_blank(&at("indicator"), r.indicator)?,
            value: r.value,
        });
    }
    let n = integrity::import_indicators(&s.store, rows, "api", caller.name()).await.map_err(ApiError::from)?;
    Ok((StatusCode::CREATED, Json(json!({"stored": n}))).into_response())
}

/// `GET /api/v1/index/formula`: every formula version (the last is in force).
async fn formulas(caller: Caller, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, true)?;
    integrity::formula_in_force(&s.store).await.map_err(ApiError::from)?;
    let versions = s.store.integrity_formulas().await?;
    Ok(Json(json!({"in_force": versions.last().map(|v| v.version), "versions": versions})))
}

/// `GET /api/v1/index/notices[?period=]`: circulation notices, newest first.
async fn notices(
    caller: Caller,
    State(s): State<AppState>,
    Query(q): Query<PeriodQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, true)?;
    Ok(Json(json!({"notices": s.store.integrity_notices(q.period.as_deref()).await?})))
}

/// `POST /api/v1/index/notices` `{period, units?, title, body}`: issues a circulation notice
/// (通报), recorded in the ledger and on `jd/v1/events/index`.
async fn issue_notice(
    caller: Caller,
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(WRITERS, false)?;
    let b: NoticeBody = json_body(&body)?;
    let period = Period::parse(&b.period).map_err(ApiError::from)?.label;
    let notice = s
        .store
        .integrity_notice_issue(NewNotice {
            period,
            units: b.units,
            title: b.title.unwrap_or_default(),
            body: b.body.unwrap_or_default(),
            issued_by: caller.name().to_owned(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!(notice))).into_response())
}

#[derive(Deserialize)]
struct YearQuery {
    year: Option<String>,
}

async fn build_assessment(s: &AppState, q: YearQuery) -> Result<assessment::Assessment, ApiError> {
    let year = match q.year {
        None => jiandu_oversight::cases::Day::of_ms(now_ms()).ymd().0,
        Some(y) => y.trim().parse().map_err(|_| ApiError::invalid("year", format!("must be a year, got {y:?}")))?,
    };
    assessment::assessment(&s.store, year).await.map_err(ApiError::from)
}

/// `GET /api/v1/index/assessment.csv?year=`: one row per unit with its colour per period.
async fn assessment_csv(
    caller: Caller,
    State(s): State<AppState>,
    Query(q): Query<YearQuery>,
) -> Result<Response, ApiError> {
    caller.require(READERS, true)?;
    let a = build_assessment(&s, q).await?;
    let disposition = format!("attachment; filename=\"integrity-assessment-{}.csv\"", a.year);
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        assessment::to_csv(&a),
    )
        .into_response())
}

/// `GET /api/v1/index/assessment.html?year=`: the same as a printable page.
async fn assessment_html(
    caller: Caller,
    State(s): State<AppState>,
    Query(q): Query<YearQuery>,
) -> Result<Response, ApiError> {
    caller.require(READERS, true)?;
    let a = build_assessment(&s, q).await?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], assessment::to_html(&a)).into_response())
}
