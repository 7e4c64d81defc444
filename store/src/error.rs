//! What can go wrong in the store, named for the person who has to act on it.

use std::path::PathBuf;

use crate::Backend;

/// Every failure of a [`Store`](crate::Store) operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The name is already taken (a user or account name must be unique).
    #[error("the name '{name}' is already taken; choose another")]
    DuplicateName {
        /// The name that clashed.
        name: String,
    },
    /// The thing asked for does not exist.
    #[error("no {what} with id '{id}'")]
    NotFound {
        /// What kind of thing was looked up ("device", "account", …).
        what: &'static str,
        /// The id or name that was not found.
        id: String,
    },
    /// The change conflicts with the current state (e.g. a busy device, a finished report).
    #[error("conflict: {reason}")]
    Conflict {
        /// What stands in the way, in words.
        reason: String,
    },
    /// An argument was refused before touching the database.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Which argument was wrong.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The database URL names a database we cannot use.
    #[error("unsupported database URL scheme '{scheme}:'; use sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    UnsupportedUrl {
        /// The URL's scheme (the rest is not repeated, as it may hold a password).
        scheme: String,
    },
    /// The database could not be opened or reached.
    #[error("cannot open the {backend} database (check the --db URL and that the server runs): {source}")]
    Connect {
        /// Which database we tried.
        backend: Backend,
        /// The driver's reason.
        #[source]
        source: sqlx::Error,
    },
    /// The directory for a SQLite file could not be created.
    #[error("cannot create directory {path} for the database: {source}")]
    CreateDir {
        /// The directory we tried to create.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A heartbeat batch failed on the SQLite connection that writes them (see
    /// `Store::store_heartbeats`).
    #[error("database error writing heartbeats: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed (is this database from a newer jiandu?): {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored row holds a value this version cannot read.
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt {
        /// Which value was unreadable.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A blob with this key is stored already; evidence is never overwritten.
    #[error("blob {key} exists already; evidence is write-once and is never overwritten")]
    BlobExists {
        /// The content-addressed key.
        key: String,
    },
    /// The object store failed (unreachable, refused, out of space…).
    #[error("object store failed on {key}: {reason} (check --object-store and the S3 settings)")]
    Blob {
        /// The key (or store URL) involved.
        key: String,
        /// The object store's reason.
        reason: String,
    },
    /// Reading or writing a local file failed.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// Hashing or checking a password failed.
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
}

impl StoreError {
    /// Maps a unique-key violation on insert to [`StoreError::DuplicateName`].
    pub(crate) fn from_insert(err: sqlx::Error, name: &str) -> StoreError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::DuplicateName { name: name.to_owned() }
            }
            _ => StoreError::Database(err),
        }
    }
}
