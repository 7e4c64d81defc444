//! Repository tests, each run on SQLite and on PostgreSQL (see `helpers::on_both!`).
//! PostgreSQL must be running: `eval "$(scripts/services.sh)"` from the workspace root.

mod helpers;

mod accounts;
mod connect;
mod devices;
mod events;
mod ledger;
mod positions;
mod users;
