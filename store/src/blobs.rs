//! Write-once blob storage for evidence (DESIGN §4), on `object_store`: a local directory by
//! default (`file://DIR`), any S3-compatible server (`s3://BUCKET`) when one machine is outgrown.
//!
//! Keys are content-addressed, `evidence/{sha256[0..2]}/{sha256}`, and nothing here overwrites
//! or deletes one: small items go in with a single `PutMode::Create` put, large ones are staged
//! under `staging/…` and then moved into place with `copy_if_not_exists` (a hard link on the
//! filesystem; on S3 a multipart copy completed with `If-None-Match: *`,
//! `S3CopyIfNotExists::Multipart`), because a multipart upload to the final key would complete
//! as an overwrite. An existing key is reported as [`StoreError::BlobExists`], or, when
//! committing staged bytes, as "already stored" (the same bytes uploaded twice are kept once).

use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, S3CopyIfNotExists};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    WriteMultipart,
};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::StoreError;

/// Bytes read per step when streaming a file into or out of the store.
const IO_BUFFER: usize = 8 * 1024 * 1024;

/// How to reach an S3-compatible server; anything unset comes from the `AWS_*` environment.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000` (unset: AWS itself, or `AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Region (unset: `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Access key id (unset: `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Secret access key (unset: `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
}

/// The evidence object store: write-once, content-addressed; cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    inner: Arc<dyn ObjectStore>,
    url: String,
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").field("url", &self.url).finish()
    }
}

/// What [`Blobs::commit_staged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The bytes are now stored under their key.
    Stored,
    /// The key existed already (same bytes uploaded before); nothing was written.
    AlreadyStored,
}

/// The content-addressed key of a blob: `evidence/{sha256[0..2]}/{sha256}`.
pub fn blob_key(sha256: &str) -> String {
    format!("evidence/{}/{sha256}", sha256.get(..2).unwrap_or("xx"))
}

fn check_sha(sha256: &str) -> Result<(), StoreError> {
    if sha256.len() == 64 && sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(StoreError::InvalidInput { field: "sha256", reason: "must be 64 lowercase hex characters".into() })
    }
}

fn blob_error(key: &str, e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::AlreadyExists { .. } => StoreError::BlobExists { key: key.to_owned() },
        object_store::Error::NotFound { .. } => StoreError::NotFound { what: "blob", id: key.to_owned() },
        other => StoreError::Blob { key: key.to_owned(), reason: other.to_string() },
    }
}

impl Blobs {
    /// Opens the store named by `url`: `file://DIR` (created if missing) or `s3://BUCKET`.
    pub fn open(url: &str, s3: &S3Settings) -> Result<Blobs, StoreError> {
        if let Some(dir) = url.strip_prefix("file://") {
            let root = PathBuf::from(dir);
            std::fs::create_dir_all(&root).map_err(|source| StoreError::CreateDir { path: root.clone(), source })?;
            let root = std::fs::canonicalize(&root).map_err(|source| StoreError::CreateDir { path: root, source })?;
            let fs = LocalFileSystem::new_with_prefix(&root)
                .map_err(|e| StoreError::Blob { key: url.to_owned(), reason: e.to_string() })?;
            debug!(root = %root.display(), "evidence store on the local filesystem");
            return Ok(Blobs { inner: Arc::new(fs), url: url.to_owned(), local_root: Some(root) });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let bucket = rest.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(StoreError::InvalidInput {
                    field: "object_store",
                    reason: format!("use s3://BUCKET (no path), got {url:?}"),
                });
            }
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
            if let Some(e) = &s3.endpoint {
                b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
            }
            b = b.with_region(
                s3.region.clone().or_else(|| std::env::var("AWS_REGION").ok()).unwrap_or_else(|| "us-east-1".into()),
            );
            if let Some(k) = &s3.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &s3.secret_access_key {
                b = b.with_secret_access_key(k);
            }
            let s3 = b.build().map_err(|e| StoreError::Blob { key: url.to_owned(), reason: e.to_string() })?;
            info!(bucket, "evidence store on S3");
            return Ok(Blobs { inner: Arc::new(s3), url: url.to_owned(), local_root: None });
        }
        let scheme = url.split("://").next().unwrap_or_default();
        Err(StoreError::InvalidInput {
            field: "object_store",
            reason: format!("unsupported scheme {scheme:?}; use file://DIR or s3://BUCKET"),
        })
    }

    /// The URL the store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// For a `file://` store, its directory: staging files placed under it are moved into place
    /// with a hard link instead of being copied.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// Stores `bytes` under `key` only if the key is new ([`StoreError::BlobExists`] otherwise).
    /// Holds the whole payload in memory: for small items and tests; evidence goes through
    /// [`Blobs::commit_staged`].
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        self.inner.put_opts(&Path::from(key), PutPayload::from(bytes), opts).await.map_err(|e| blob_error(key, e))?;
        Ok(())
    }

    /// Moves a fully staged, already verified file into its content-addressed key without
    /// overwriting: a hard link for a file under [`Blobs::local_root`], otherwise a streamed
    /// multipart upload to a staging key followed by `copy_if_not_exists`. The staging copy in the
    /// store is removed afterwards; the local file is left to the caller.
    pub async fn commit_staged(&self, file: &FsPath, sha256: &str) -> Result<Committed, StoreError> {
        check_sha(sha256)?;
        let key = blob_key(sha256);
        let target = Path::from(key.as_str());
        let (staging, uploaded) = match self.local_root.as_deref().and_then(|root| file.strip_prefix(root).ok()) {
            Some(rel) => {
                let rel = rel.to_str().ok_or_else(|| StoreError::InvalidInput {
                    field: "staging",
                    reason: format!("path {} is not UTF-8", file.display()),
                })?;
                (Path::from(rel), false)
            }
            None => {
                let staging = Path::from(format!("staging/{sha256}.{}", ulid::Ulid::new()));
                self.upload_file(file, &staging).await?;
                (staging, true)
            }
        };
        let outcome = match self.inner.copy_if_not_exists(&staging, &target).await {
            Ok(()) => Ok(Committed::Stored),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Committed::AlreadyStored),
            Err(e) => Err(blob_error(&key, e)),
        };
        if uploaded {
            self.inner.delete(&staging).await.ok();
        }
        let outcome = outcome?;
        debug!(key, ?outcome, "blob committed");
        Ok(outcome)
    }

    /// Streams a local file to `key` as a multipart upload (never the final key: see module docs).
    async fn upload_file(&self, file: &FsPath, key: &Path) -> Result<(), StoreError> {
        let name = key.to_string();
        let upload = self.inner.put_multipart(key).await.map_err(|e| blob_error(&name, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, IO_BUFFER);
        let mut f = std::fs::File::open(file).map_err(|e| io_error(file, e))?;
        loop {
            writer.wait_for_capacity(4).await.map_err(|e| blob_error(&name, e))?;
            let (f2, buf) = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; IO_BUFFER];
                let n = read_full(&mut f, &mut buf);
                (
                    f,
                    n.map(|n| {
                        buf.truncate(n);
                        buf
                    }),
                )
            })
            .await
            .map_err(|e| StoreError::Blob { key: name.clone(), reason: e.to_string() })?;
            f = f2;
            let buf = buf.map_err(|e| io_error(file, e))?;
            if buf.is_empty() {
                break;
            }
            writer.put(Bytes::from(buf));
        }
        writer.finish().await.map_err(|e| blob_error(&name, e))?;
        Ok(())
    }

    /// Size of the blob with this SHA-256, or [`StoreError::NotFound`].
    pub async fn size(&self, sha256: &str) -> Result<u64, StoreError> {
        check_sha(sha256)?;
        let key = blob_key(sha256);
        Ok(self.inner.head(&Path::from(key.as_str())).await.map_err(|e| blob_error(&key, e))?.size)
    }

    /// Bytes `range` (end exclusive) of the blob, as a stream of chunks for HTTP responses.
    pub async fn read_range(
        &self,
        sha256: &str,
        range: std::ops::Range<u64>,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        check_sha(sha256)?;
        let key = blob_key(sha256);
        let opts = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
        let got = self.inner.get_opts(&Path::from(key.as_str()), opts).await.map_err(|e| blob_error(&key, e))?;
        Ok(got.into_stream().map(move |r| r.map_err(|e| blob_error(&key, e))).boxed())
    }

    /// Re-reads the blob and returns the SHA-256 of what is actually stored and its size,
    /// calling `progress(bytes)` as it goes (for `jiandu verify --deep`).
    pub async fn rehash(
        &self,
        sha256: &str,
        progress: impl Fn(u64) + Send + 'static,
    ) -> Result<(String, u64), StoreError> {
        check_sha(sha256)?;
        let key = blob_key(sha256);
        let got = self.inner.get(&Path::from(key.as_str())).await.map_err(|e| blob_error(&key, e))?;
        match got.payload {
            GetResultPayload::File(mut f, path) => tokio::task::spawn_blocking(move || {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; IO_BUFFER];
                let mut total = 0u64;
                loop {
                    let n = f.read(&mut buf).map_err(|e| io_error(&path, e))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    total += n as u64;
                    progress(n as u64);
                }
                Ok((hex::encode(hasher.finalize()), total))
            })
            .await
            .map_err(|e| StoreError::Blob { key, reason: e.to_string() })?,
            GetResultPayload::Stream(mut stream) => {
                let mut hasher = Sha256::new();
                let mut total = 0u64;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| blob_error(&key, e))?;
                    hasher.update(&chunk);
                    total += chunk.len() as u64;
                    progress(chunk.len() as u64);
                }
                Ok((hex::encode(hasher.finalize()), total))
            }
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn io_error(path: &FsPath, e: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_path_buf(), source: e }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_content_addressed() {
        let sha = "ab".repeat(32);
        assert_eq!(blob_key(&sha), format!("evidence/ab/{sha}"));
        assert!(check_sha(&sha).is_ok());
        assert!(check_sha("AB").is_err());
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let err = Blobs::open("ftp://x", &S3Settings::default()).unwrap_err();
        assert!(err.to_string().contains("file://DIR or s3://BUCKET"), "{err}");
        assert!(Blobs::open("s3://bucket/path", &S3Settings::default()).is_err());
    }
}
