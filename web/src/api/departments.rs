//! `/api/v1/departments`: the units of the departments registry in force, so forms offer units
//! to choose from (codes the index, cases and indicators use) instead of free text.

use axum::Router;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use jiandu_store::Role;
use serde_json::{Value, json};

use super::{ApiError, Caller};
use crate::AppState;

/// Office staff who fill in forms naming units.
const READERS: &[Role] = &[Role::Dispatcher, Role::Leader, Role::Admin, Role::Auditor];

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/departments", get(list))
}

/// `GET /api/v1/departments`: `{"items":[{"code","name"}]}`, by code, as registered now.
async fn list(caller: Caller, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, false)?;
    let units = s.store.integrity_units(jiandu_store::now_ms()).await?;
    let items: Vec<Value> = units.iter().map(|u| json!({"code": u.code, "name": u.name})).collect();
    Ok(Json(json!({ "items": items })))
}
