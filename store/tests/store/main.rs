//! Repository tests, each run on SQLite and on PostgreSQL (see `helpers::on_both!`).
//! PostgreSQL must be running: `eval "$(scripts/services.sh)"` from the workspace root.

mod helpers;

mod accounts;
mod cases;
mod connect;
mod devices;
mod dispatch;
mod events;
mod evidence;
mod integrity;
mod ledger;
mod positions;
mod registry;
mod users;
