//! `type = "s3"`: any S3-compatible object store (AWS S3, Garage, MinIO, R2,
//! B2, Wasabi, ...), through the AWS SDK.
//!
//! - Uploads: a file up to one part long is a single `PutObject`; larger files
//!   are streamed as a multipart upload, `parts_in_flight` parts of
//!   `part_size_mib` at a time (memory: about part size x parts in flight,
//!   whatever the file size). Each request carries a CRC32 checksum the server
//!   verifies; a service that rejects checksums gets plain uploads (warned
//!   once). A failed multipart upload is aborted; uploads left behind by a
//!   crash are aborted by `cleanup_incomplete` (`sync`).
//! - An archive written before its name is known ([`Backend::upload`]) goes
//!   to a private staging file in the local staging directory given at open,
//!   and is uploaded as above on commit.
//! - Atomicity: S3 makes an object visible only once complete.
//! - Downloads stream; a connection reset surfaces as a read error.
//! - Retries: the SDK's standard mode (exponential backoff with jitter) for
//!   timeouts, 5xx, throttling and connection errors, up to `max_attempts`;
//!   connect and read timeouts make a dead endpoint fail in seconds.
//!   Errors are classified into [`StorageError`] with a hint on what to fix.
//!
//! What the objects mean is not this file's business (see [`crate::repo`]).

use super::{
    Backend, Capabilities, ObjectInfo, ObjectKey, ObjectReader, Prefix, Readiness, StorageError,
    StorageResult, TempFile, Upload,
};
use crate::config::S3TargetSpec;
use crate::error::ConfigError;
use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, StorageClass};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default multipart part size (MiB) and parts uploaded at once.
pub const DEFAULT_PART_SIZE_MIB: u64 = 16;
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 4;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No byte for this long on an open connection: the attempt fails (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An error and its causes, one line ("a: b: c"), without repeats or Debug dumps.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[derive(Clone)]
pub struct S3Backend {
    name: String,
    location: String,
    bucket: String,
    /// "" or ending in "/".
    prefix: String,
    endpoint: Option<String>,
    storage_class: Option<StorageClass>,
    part_size: u64,
    parts_in_flight: usize,
    /// Requests with checksums (WhenSupported).
    client: Client,
    /// Requests without checksums, for services that refuse them.
    plain_client: Client,
    checksums: Arc<AtomicBool>,
    /// Local directory for uploads whose name is not known yet (private).
    staging: PathBuf,
    /// Staging directories whose leftovers this instance already removed.
    cleaned: Arc<Mutex<HashSet<PathBuf>>>,
}

fn env_var(cfg_file: &Path, key: &str, var: &str) -> Result<String, ConfigError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(ConfigError::new(
            cfg_file.display(),
            key,
            format!("environment variable {var} is not set (or empty); export it before running backupctl"),
        )),
    }
}

/// The SDK configuration before credentials: rustls (ring), connect and
/// read timeouts, standard retries up to `max_attempts`, and the region
/// (`us-east-1` for a custom endpoint without one; else the AWS chain's).
fn sdk_loader(spec: &S3TargetSpec) -> aws_config::ConfigLoader {
    let region = match &spec.region {
        Some(r) => Some(Region::new(r.clone())),
        None if spec.endpoint.is_some() => Some(Region::new("us-east-1")),
        None => None,
    };
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let attempts = spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1);
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(500))
                .with_max_backoff(Duration::from_secs(10)),
        );
    if let Some(r) = region {
        loader = loader.region(r);
    }
    loader
}

/// The credentials in the variables named by `access_key_id_env` and
/// `secret_access_key_env` (both set, or None: the AWS chain decides).
fn env_credentials(
    cfg_file: &Path,
    key: &str,
    spec: &S3TargetSpec,
) -> Result<Option<Credentials>, ConfigError> {
    let (Some(id_var), Some(secret_var)) = (&spec.access_key_id_env, &spec.secret_access_key_env)
    else {
        return Ok(None);
    };
    let id = env_var(cfg_file, &format!("{key}.access_key_id_env"), id_var)?;
    let secret = env_var(
        cfg_file,
        &format!("{key}.secret_access_key_env"),
        secret_var,
    )?;
    Ok(Some(Credentials::new(
        id,
        secret,
        None,
        None,
        "backupctl-target-env",
    )))
}

/// The two clients: with request checksums (WhenSupported) and without
/// (WhenRequired), path-style by default for a custom endpoint.
fn clients(sdk: &aws_config::SdkConfig, spec: &S3TargetSpec) -> (Client, Client) {
    let mut b = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(spec.force_path_style.unwrap_or(spec.endpoint.is_some()));
    if let Some(ep) = &spec.endpoint {
        b = b.endpoint_url(ep);
    }
    let client = Client::from_conf(
        b.clone()
            .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
            .build(),
    );
    let plain_client = Client::from_conf(
        b.request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build(),
    );
    (client, plain_client)
}

/// The configured `prefix` as keys are built with it: no leading `/`, and
/// "" or ending in `/`.
fn key_prefix(prefix: &str) -> String {
    let mut prefix = prefix.trim_start_matches('/').to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    prefix
}

impl S3Backend {
    /// Start downloading `key`, or the byte range `range` (HTTP `bytes=a-b`) of it.
    async fn get_object(
        &self,
        key: &str,
        range: Option<String>,
    ) -> StorageResult<aws_sdk_s3::operation::get_object::GetObjectOutput> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_range(range)
            .send()
            .await
            .map_err(|e| self.classify("download", key, e))
    }

    /// Build the client. Credentials: the variables named by
    /// `access_key_id_env`/`secret_access_key_env`, else the standard AWS chain
    /// (environment, shared profiles, web identity, container and instance roles).
    /// `staging`: where [`Backend::upload`] stages archives (created when
    /// first used, mode 0700).
    pub async fn new(
        cfg_file: &Path,
        name: &str,
        spec: &S3TargetSpec,
        staging: &Path,
    ) -> Result<S3Backend, ConfigError> {
        let key = format!("targets.{name}");
        let mut loader = sdk_loader(spec);
        if let Some(creds) = env_credentials(cfg_file, &key, spec)? {
            loader = loader.credentials_provider(creds);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(ConfigError::new(
                cfg_file.display(),
                format!("{key}.region"),
                "no region: set region (e.g. \"eu-central-1\") or AWS_REGION",
            ));
        }
        let (client, plain_client) = clients(&sdk, spec);
        Ok(S3Backend {
            name: name.to_string(),
            location: spec.location.clone(),
            bucket: spec.bucket.clone(),
            prefix: key_prefix(&spec.prefix),
            endpoint: spec.endpoint.clone(),
            storage_class: spec.storage_class.as_deref().map(StorageClass::from),
            part_size: spec.part_size_mib.unwrap_or(DEFAULT_PART_SIZE_MIB) << 20,
            parts_in_flight: spec.parts_in_flight.unwrap_or(DEFAULT_PARTS_IN_FLIGHT),
            client,
            plain_client,
            checksums: Arc::new(AtomicBool::new(true)),
            staging: staging.to_path_buf(),
            cleaned: Arc::default(),
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn where_(&self) -> String {
        match &self.endpoint {
            Some(ep) => format!("bucket {} at {ep}", self.bucket),
            None => format!("bucket {}", self.bucket),
        }
    }

    /// Classify an SDK error; `what` names the operation and key.
    fn classify<E>(&self, what: &str, key: &str, err: SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if let Some(e) = self.transport_error(what, key, &err) {
            return e;
        }
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().unwrap_or_default().to_string();
        let detail = match err.message() {
            Some(m) if !code.is_empty() => format!("{code}: {m}"),
            Some(m) => m.to_string(),
            None if !code.is_empty() => code.clone(),
            None => chain(&err),
        };
        if let Some(message) = self.code_hint(&code, &detail) {
            return StorageError::Permanent {
                target: self.name.clone(),
                message,
            };
        }
        self.status_error(what, key, status, &code, &detail)
    }

    /// An error without an answer from the service (timeout, broken
    /// response, no connection, refused credentials, a request that could
    /// not be built); None when the service answered.
    fn transport_error<E>(&self, what: &str, key: &str, err: &SdkError<E>) -> Option<StorageError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let target = self.name.clone();
        Some(match err {
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => StorageError::Unavailable {
                target,
                message: format!("{what} {key}: {} ({})", chain(err), self.where_()),
            },
            SdkError::DispatchFailure(d) => {
                let text = chain(err);
                if d.is_user() || text.contains("credentials") || text.contains("identity") {
                    return Some(StorageError::Permanent {
                        target,
                        message: format!("{what} {key}: {text}; check the credentials (access_key_id_env / secret_access_key_env or the AWS credential chain)"),
                    });
                }
                StorageError::Unavailable {
                    target,
                    message: format!(
                        "{what} {key}: cannot reach {}: {text}",
                        self.endpoint.as_deref().unwrap_or("the S3 endpoint")
                    ),
                }
            }
            SdkError::ConstructionFailure(_) => StorageError::Permanent {
                target,
                message: format!("{what} {key}: {}", chain(err)),
            },
            _ => return None,
        })
    }

    /// What to fix, for the error codes whose cause is known (a missing
    /// bucket, refused credentials, access denied, the wrong region).
    fn code_hint(&self, code: &str, detail: &str) -> Option<String> {
        match code {
            "NoSuchBucket" => Some(format!(
                "bucket {:?} does not exist{}: create it or fix `bucket` in [targets.{}]",
                self.bucket,
                self.endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default(),
                self.name
            )),
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken"
            | "InvalidSecurity" => Some(format!(
                "the credentials were refused ({detail}): check the access key id and secret (access_key_id_env / secret_access_key_env or the AWS credential chain)"
            )),
            "AccessDenied" | "Forbidden" => Some(format!(
                "access denied to {} ({detail}): check the credentials and that the key may read and write the bucket",
                self.where_()
            )),
            "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException" => {
                Some(format!("wrong region for {} ({detail}): fix `region` in [targets.{}]", self.where_(), self.name))
            }
            _ => None,
        }
    }

    /// A service error by HTTP status and code: not found, access denied,
    /// unavailable (5xx and throttling, after the SDK's retries), else
    /// permanent.
    fn status_error(
        &self,
        what: &str,
        key: &str,
        status: Option<u16>,
        code: &str,
        detail: &str,
    ) -> StorageError {
        let target = self.name.clone();
        match (status, code) {
            (Some(404), _) | (_, "NoSuchKey") | (_, "NotFound") => StorageError::NotFound {
                target,
                key: key.to_string(),
            },
            (Some(403), _) => StorageError::Permanent {
                target,
                message: format!(
                    "{what} {key}: access denied by {} (HTTP 403{}): check the credentials and the key's permissions on the bucket",
                    self.where_(),
                    if detail.is_empty() { String::new() } else { format!(", {detail}") }
                ),
            },
            (Some(s), c)
                if s >= 500
                    || s == 429
                    || matches!(c, "SlowDown" | "Throttling" | "RequestTimeout") =>
            {
                StorageError::Unavailable {
                    target,
                    message: format!("{what} {key}: HTTP {s}: {detail} (after retries)"),
                }
            }
            (s, _) => StorageError::Permanent {
                target,
                message: format!(
                    "{what} {key}: {}{detail}",
                    s.map(|s| format!("HTTP {s}: ")).unwrap_or_default()
                ),
            },
        }
    }

    fn io(&self, context: String, source: std::io::Error) -> StorageError {
        StorageError::Io {
            target: self.name.clone(),
            context,
            source,
        }
    }

    /// Did the service refuse the request because of its checksum?
    fn checksum_refused(e: &StorageError) -> bool {
        match e {
            StorageError::Permanent { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("checksum") || m.contains("notimplemented")
            }
            _ => false,
        }
    }

    fn use_checksums(&self) -> bool {
        self.checksums.load(Ordering::Relaxed)
    }

    fn client(&self, checksums: bool) -> &Client {
        if checksums {
            &self.client
        } else {
            &self.plain_client
        }
    }

    /// Run an upload with checksums; if the service refuses them, warn once
    /// and run it again without.
    async fn with_checksum_fallback<F, Fut>(&self, f: F) -> StorageResult<()>
    where
        F: Fn(bool) -> Fut,
        Fut: std::future::Future<Output = StorageResult<()>>,
    {
        if !self.use_checksums() {
            return f(false).await;
        }
        match f(true).await {
            Err(e) if Self::checksum_refused(&e) => {
                if self.checksums.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "target {}: the service refused upload checksums ({e}); uploading without them (the BLAKE3 of every archive is still checked on download)",
                        self.name
                    );
                }
                f(false).await
            }
            r => r,
        }
    }

    async fn put_object(&self, key: &str, body: Bytes, checksums: bool) -> StorageResult<()> {
        let mut req = self
            .client(checksums)
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(body.len() as i64)
            .body(SdkStream::from(body));
        if checksums {
            req = req.checksum_algorithm(ChecksumAlgorithm::Crc32);
        }
        if let Some(sc) = &self.storage_class {
            req = req.storage_class(sc.clone());
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("upload", key, e))
    }

    /// The part size used for a file of `size` bytes (at most 10 000 parts).
    fn part_size_for(&self, size: u64) -> u64 {
        let min = size.div_ceil(MAX_PARTS);
        self.part_size.max(min.next_multiple_of(1 << 20))
    }

    async fn multipart(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        checksums: bool,
    ) -> StorageResult<()> {
        let client = self.client(checksums);
        let full = self.full_key(key);
        let mut create = client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full);
        if checksums {
            create = create.checksum_algorithm(ChecksumAlgorithm::Crc32);
        }
        if let Some(sc) = &self.storage_class {
            create = create.storage_class(sc.clone());
        }
        let created = create
            .send()
            .await
            .map_err(|e| self.classify("starting upload", key, e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(StorageError::Permanent {
                target: self.name.clone(),
                message: format!("starting upload {key}: the service returned no upload id"),
            });
        };
        let result = self
            .upload_parts(client, key, &full, &upload_id, path, size, checksums)
            .await;
        if result.is_err() {
            // Best effort: a dead endpoint leaves it for abort_stale_uploads.
            let abort = client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send();
            match tokio::time::timeout(Duration::from_secs(30), abort).await {
                Ok(Ok(_)) => tracing::debug!("target {}: aborted upload of {key}", self.name),
                _ => tracing::warn!(
                    "target {}: could not abort the failed upload of {key}; `backupctl sync` removes it later",
                    self.name
                ),
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_parts(
        &self,
        client: &Client,
        key: &str,
        full: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
        checksums: bool,
    ) -> StorageResult<()> {
        let part_size = self.part_size_for(size);
        let count = size.div_ceil(part_size);
        let file = std::sync::Arc::new(
            std::fs::File::open(path)
                .map_err(|e| self.io(format!("opening {}", path.display()), e))?,
        );
        let parts: Vec<CompletedPart> = futures::stream::iter(0..count)
            .map(|i| {
                let file = file.clone();
                async move {
                    let offset = i * part_size;
                    let len = part_size.min(size - offset) as usize;
                    let data = tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        let mut buf = vec![0u8; len];
                        file.read_exact_at(&mut buf, offset).map(|_| buf)
                    })
                    .await
                    .expect("read task panicked")
                    .map_err(|e| self.io(format!("reading {}", path.display()), e))?;
                    let data = Bytes::from(data);
                    let number = (i + 1) as i32;
                    let mut req = client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .part_number(number)
                        .content_length(len as i64)
                        .body(SdkStream::from(data));
                    if checksums {
                        req = req.checksum_algorithm(ChecksumAlgorithm::Crc32);
                    }
                    let out = req.send().await.map_err(|e| {
                        self.classify(&format!("uploading part {number} of"), key, e)
                    })?;
                    let mut part = CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string));
                    if checksums {
                        part = part.set_checksum_crc32(out.checksum_crc32().map(str::to_string));
                    }
                    Ok::<_, StorageError>(part.build())
                }
            })
            .buffered(self.parts_in_flight)
            .try_collect()
            .await?;
        client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.classify("completing upload", key, e))?;
        Ok(())
    }

    /// Abort multipart uploads under this target's prefix started more than
    /// `older_than` ago (left behind by a crash or an unreachable endpoint).
    pub async fn abort_stale(&self, older_than: Duration) -> StorageResult<usize> {
        let cutoff = std::time::SystemTime::now() - older_than;
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        let mut aborted = 0;
        loop {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.classify("listing uploads under", &self.prefix, e))?;
            for u in out.uploads() {
                let (Some(k), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let old = u
                    .initiated()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                    .is_none_or(|t| t <= cutoff);
                if !old {
                    continue;
                }
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(k)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| self.classify("aborting stale upload", k, e))?;
                tracing::info!("target {}: aborted stale upload of {k}", self.name);
                aborted += 1;
            }
            if out.is_truncated() != Some(true) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_string);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Err(StorageError::Unavailable {
                    target: self.name.clone(),
                    message: "listing uploads: truncated listing without a marker".into(),
                });
            }
        }
        Ok(aborted)
    }
}

/// An archive staged in a local file, uploaded on commit.
struct S3Upload {
    backend: S3Backend,
    staged: TempFile,
}

impl std::io::Write for S3Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.staged.file()?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn commit(self: Box<Self>, key: &ObjectKey) -> StorageResult<bool> {
        let (file, path) = self.staged.keep();
        let result = async {
            let len = file
                .metadata()
                .map_err(|e| self.backend.io(format!("stat {}", path.display()), e))?
                .len();
            drop(file);
            if self.backend.stat(key).await? == Some(len) {
                return Ok(false);
            }
            self.backend.put_file(key, &path).await?;
            Ok(true)
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        result
    }

    fn abort(self: Box<Self>) {}
}

impl S3Backend {
    /// Remove leftovers in the staging directory `dir` once (the caller holds
    /// the lock of its policy: files there were left by a killed run).
    fn clean_staging_once(&self, dir: &Path) {
        if !self
            .cleaned
            .lock()
            .expect("cleaned set")
            .insert(dir.to_path_buf())
        {
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            tracing::warn!(
                "removing {}, left by an interrupted run",
                e.path().display()
            );
            let _ = std::fs::remove_file(e.path());
        }
    }

    /// Staging files older than `older_than`, removed (a crash left them).
    fn remove_old_staging(&self, older_than: Duration) -> usize {
        let cutoff = std::time::SystemTime::now() - older_than;
        let mut removed = 0;
        for e in walkdir::WalkDir::new(&self.staging).into_iter().flatten() {
            let old = e.file_type().is_file()
                && e.metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .is_some_and(|t| t <= cutoff);
            if old && std::fs::remove_file(e.path()).is_ok() {
                tracing::info!(
                    "target {}: removed the staging file {}, left by an interrupted run",
                    self.name,
                    e.path().display()
                );
                removed += 1;
            }
        }
        removed
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn name(&self) -> &str {
        &self.name
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn describe(&self) -> String {
        format!(
            "s3 {}/{}{}",
            self.bucket,
            self.prefix,
            self.endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            local_files: false,
            multipart: true,
            ranged_reads: true,
            object_lock: false,
        }
    }

    async fn put_file(&self, key: &ObjectKey, path: &Path) -> StorageResult<()> {
        let key = key.as_str();
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| self.io(format!("stat {}", path.display()), e))?
            .len();
        if size <= self.part_size {
            let p: PathBuf = path.to_path_buf();
            let data = Bytes::from(
                tokio::fs::read(&p)
                    .await
                    .map_err(|e| self.io(format!("reading {}", p.display()), e))?,
            );
            return self
                .with_checksum_fallback(|c| self.put_object(key, data.clone(), c))
                .await;
        }
        self.with_checksum_fallback(|c| self.multipart(key, path, size, c))
            .await
    }

    async fn put_bytes(&self, key: &ObjectKey, data: Vec<u8>) -> StorageResult<()> {
        let data = Bytes::from(data);
        self.with_checksum_fallback(|c| self.put_object(key.as_str(), data.clone(), c))
            .await
    }

    async fn get(&self, key: &ObjectKey) -> StorageResult<ObjectReader> {
        let out = self.get_object(key.as_str(), None).await?;
        Ok(ObjectReader::stream(out.body.into_async_read()))
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> StorageResult<ObjectReader> {
        let outside = |size: u64| super::bad_range(&self.name, key, offset, len, size);
        let end = offset.checked_add(len).ok_or_else(|| outside(0))?;
        if len == 0 {
            // HTTP cannot ask for zero bytes: check the object is there and
            // long enough.
            return match self.stat(key).await? {
                None => Err(StorageError::NotFound {
                    target: self.name.clone(),
                    key: key.to_string(),
                }),
                Some(size) if offset > size => Err(outside(size)),
                Some(_) => Ok(ObjectReader::stream(tokio::io::empty())),
            };
        }
        let range = format!("bytes={offset}-{}", end - 1);
        let out = match self.get_object(key.as_str(), Some(range)).await {
            Ok(o) => o,
            Err(StorageError::Permanent { message, .. })
                if message.contains("InvalidRange") || message.contains("HTTP 416") =>
            {
                let size = self.stat(key).await?.unwrap_or(0);
                return Err(outside(size));
            }
            Err(e) => return Err(e),
        };
        // A range running past the end is served shortened: refuse it.
        if out
            .content_length()
            .is_none_or(|l| l < 0 || l as u64 != len)
        {
            let size = out
                .content_range()
                .and_then(|r| r.rsplit('/').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            return Err(outside(size));
        }
        Ok(ObjectReader::stream(out.body.into_async_read()))
    }

    async fn get_bytes(&self, key: &ObjectKey) -> StorageResult<Vec<u8>> {
        let out = self.get_object(key.as_str(), None).await?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Unavailable {
                target: self.name.clone(),
                message: format!("download {key}: {}", chain(&e)),
            })?;
        Ok(data.into_bytes().to_vec())
    }

    async fn stat(&self, key: &ObjectKey) -> StorageResult<Option<u64>> {
        let key = key.as_str();
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => match self.classify("stat", key, e) {
                StorageError::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    async fn list(&self, prefix: &Prefix) -> StorageResult<Vec<ObjectInfo>> {
        let full = self.full_key(prefix.as_str());
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify("listing", prefix.as_str(), e))?;
            for o in page.contents() {
                // Names that are not keys (planted by someone else) are left out.
                let Some(key) = o
                    .key()
                    .and_then(|k| k.strip_prefix(&self.prefix))
                    .and_then(|rel| ObjectKey::new(rel).ok())
                else {
                    continue;
                };
                out.push(ObjectInfo {
                    key,
                    size: o.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> StorageResult<()> {
        let key = key.as_str();
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map(|_| ())
            .or_else(|e| match self.classify("delete", key, e) {
                StorageError::NotFound { .. } => Ok(()),
                e => Err(e),
            })
    }

    async fn init(&self) -> StorageResult<bool> {
        let marker = super::marker_key();
        if self.stat(&marker).await?.is_some() {
            return Ok(false);
        }
        self.put_bytes(&marker, super::marker_bytes(&self.name))
            .await?;
        Ok(true)
    }

    async fn readiness(&self) -> StorageResult<Readiness> {
        Ok(Readiness::Ready)
    }

    async fn cleanup_incomplete(&self, older_than: Duration) -> StorageResult<usize> {
        let aborted = self.abort_stale(older_than).await?;
        let this = self.clone();
        let removed = tokio::task::spawn_blocking(move || this.remove_old_staging(older_than))
            .await
            .expect("cleanup task panicked");
        Ok(aborted + removed)
    }

    async fn upload(&self, dir: &ObjectKey) -> StorageResult<Box<dyn Upload>> {
        let local = self.staging.join(dir.as_str());
        let io = |e| self.io(format!("staging in {}", local.display()), e);
        crate::util::private_dir(&self.staging).map_err(io)?;
        crate::util::create_private_dir_all(&local).map_err(io)?;
        self.clean_staging_once(&local);
        let path = local.join(format!("incoming.tmp-{}", crate::util::random_hex(8)));
        Ok(Box::new(S3Upload {
            backend: self.clone(),
            staged: TempFile::create(path).map_err(io)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_lose_the_leading_slash_and_end_in_one() {
        assert_eq!(key_prefix(""), "");
        assert_eq!(key_prefix("/"), "");
        assert_eq!(key_prefix("a"), "a/");
        assert_eq!(key_prefix("/a/b/"), "a/b/");
    }

    /// A backend for target `t`, bucket `b` at a custom endpoint (nothing is
    /// contacted).
    async fn backend() -> S3Backend {
        let spec: S3TargetSpec = toml::from_str(
            "bucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\nlocation = \"l\"\nprefix = \"/p\"",
        )
        .unwrap();
        let b = S3Backend::new(Path::new("c.toml"), "t", &spec, Path::new("/nonexistent"))
            .await
            .unwrap();
        assert_eq!(b.full_key("k"), "p/k");
        b
    }

    #[tokio::test]
    async fn error_codes_with_a_known_cause_say_what_to_fix() {
        let b = backend().await;
        assert_eq!(
            b.code_hint("NoSuchBucket", "").as_deref(),
            Some("bucket \"b\" does not exist at http://127.0.0.1:9: create it or fix `bucket` in [targets.t]")
        );
        assert!(b
            .code_hint("PermanentRedirect", "PermanentRedirect: m")
            .unwrap()
            .starts_with("wrong region for bucket b at http://127.0.0.1:9 (PermanentRedirect: m)"));
        assert!(b
            .code_hint("ExpiredToken", "x")
            .unwrap()
            .starts_with("the credentials were refused (x)"));
        assert_eq!(b.code_hint("InternalError", "x"), None);
    }

    #[tokio::test]
    async fn statuses_decide_between_missing_busy_and_permanent() {
        let b = backend().await;
        let text = |s, c, d| b.status_error("download", "k", s, c, d).to_string();
        assert!(b
            .status_error("download", "k", Some(404), "", "")
            .is_not_found());
        assert!(b
            .status_error("download", "k", None, "NoSuchKey", "")
            .is_not_found());
        assert_eq!(
            text(Some(503), "", "busy"),
            "target t: unavailable: download k: HTTP 503: busy (after retries)"
        );
        assert_eq!(
            text(Some(400), "SlowDown", "SlowDown: m"),
            "target t: unavailable: download k: HTTP 400: SlowDown: m (after retries)"
        );
        assert_eq!(
            text(Some(403), "", ""),
            "target t: download k: access denied by bucket b at http://127.0.0.1:9 (HTTP 403): check the credentials and the key's permissions on the bucket"
        );
        assert_eq!(
            text(Some(400), "Bad", "Bad: m"),
            "target t: download k: HTTP 400: Bad: m"
        );
        assert_eq!(text(None, "Bad", "Bad: m"), "target t: download k: Bad: m");
    }
}
