//! The crate's one error type, and a small `context` helper so failures name what was being done.

/// What went wrong while simulating or benchmarking, in the user's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option or input (credentials file, `--devices`, …) is not usable as given.
    #[error("{0}")]
    Invalid(String),
    /// The system under test, the broker or a reference run did not behave as the run needs.
    #[error("{0}")]
    Failed(String),
    /// A lower-level failure while doing `what` (the cause follows after the colon).
    #[error("{what}: {cause}")]
    During {
        /// What was being done, e.g. "writing /tmp/x".
        what: String,
        /// Why it failed.
        cause: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A file or process operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] jiandu_store::StoreError),
    /// A JSON document could not be read or written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A database statement of a benchmark's own set-up failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// An MQTT client request could not be queued.
    #[error(transparent)]
    Mqtt(Box<rumqttc::ClientError>),
    /// An MQTT connection failed or was refused.
    #[error(transparent)]
    Connection(Box<rumqttc::ConnectionError>),
    /// A registry generator or import of the oversight role failed.
    #[error(transparent)]
    Oversight(#[from] jiandu_oversight::OversightError),
    /// A worker task of a run panicked or was cancelled.
    #[error("a worker task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A worker task ended before it reported back.
    #[error("a worker task ended before it reported back")]
    Gone(#[from] tokio::sync::oneshot::error::RecvError),
    /// An address did not parse.
    #[error(transparent)]
    Address(#[from] std::net::AddrParseError),
    /// A number in a file or an answer did not parse.
    #[error(transparent)]
    Number(#[from] std::num::ParseIntError),
}

impl From<rumqttc::ClientError> for Error {
    fn from(e: rumqttc::ClientError) -> Self {
        Error::Mqtt(Box::new(e))
    }
}

impl From<rumqttc::ConnectionError> for Error {
    fn from(e: rumqttc::ConnectionError) -> Self {
        Error::Connection(Box::new(e))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches what was being done to a failure (or to a missing value).
pub(crate) trait Context<T> {
    /// Wraps the failure with `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// Wraps the failure with a description computed only on failure.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::During { what: what.into(), cause: Box::new(e) })
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::During { what: what().into(), cause: Box::new(e) })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| Error::Failed(what.into()))
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| Error::Failed(what().into()))
    }
}

/// Returns early with [`Error::Failed`] and a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Failed(format!($($arg)*)))
    };
}
pub(crate) use bail;
