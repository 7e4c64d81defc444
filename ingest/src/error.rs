//! What can go wrong in ingest, in the operator's terms.

/// Every failure of the ingest role (heartbeats and evidence).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The database refused or failed.
    #[error(transparent)]
    Store(#[from] jiandu_store::StoreError),
    /// The broker could not be reached or refused us.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// A setting is missing or contradicts another.
    #[error("configuration: {0}")]
    Config(String),
    /// Heartbeats could not be committed for longer than `ingest.commit_give_up_s`; the role
    /// stops so its supervisor restarts it (the broker redelivers what was not acknowledged).
    #[error("committing heartbeats failed for {seconds} s: {last}")]
    CommitsFailing {
        /// How long commits kept failing.
        seconds: u64,
        /// The last database error.
        last: String,
    },
    /// The evidence staging directory cannot be used.
    #[error("evidence staging directory {path}: {source} (set evidence.staging_dir to a writable directory)")]
    Staging {
        /// The directory.
        path: std::path::PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
}
