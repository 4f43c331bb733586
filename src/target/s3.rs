//! `type = "s3"`: any S3-compatible object store (AWS S3, Garage, MinIO, R2,
//! B2, Wasabi, ...), through the AWS SDK.
//!
//! - Uploads: a file up to one part long is a single `PutObject`; larger files
//!   are streamed as a multipart upload, `parts_in_flight` parts of
//!   `part_size_mib` at a time (memory: about part size x parts in flight,
//!   whatever the file size). Each request carries a CRC32 checksum the server
//!   verifies; a service that rejects checksums gets plain uploads (warned
//!   once). A failed multipart upload is aborted; uploads left behind by a
//!   crash are aborted by [`S3Target::abort_stale`] (`sync`, `check`).
//! - Atomicity: S3 makes an object visible only once complete.
//! - Downloads stream; a connection reset surfaces as a read error.
//! - Retries: the SDK's standard mode (exponential backoff with jitter) for
//!   timeouts, 5xx, throttling and connection errors, up to `max_attempts`;
//!   connect and read timeouts make a dead endpoint fail in seconds.
//!   Errors are classified into [`TargetError`] with a hint on what to fix.

use super::{ByteStream, ObjectInfo, Target, TargetError, TargetResult};
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

pub struct S3Target {
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
    checksums: AtomicBool,
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

impl S3Target {
    /// Start downloading `key`.
    async fn get_object(
        &self,
        key: &str,
    ) -> TargetResult<aws_sdk_s3::operation::get_object::GetObjectOutput> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.classify("download", key, e))
    }

    /// Build the client. Credentials: the variables named by
    /// `access_key_id_env`/`secret_access_key_env`, else the standard AWS chain
    /// (environment, shared profiles, web identity, container and instance roles).
    pub async fn new(
        cfg_file: &Path,
        name: &str,
        spec: &S3TargetSpec,
    ) -> Result<S3Target, ConfigError> {
        let key = format!("targets.{name}");
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
        if let (Some(id_var), Some(secret_var)) =
            (&spec.access_key_id_env, &spec.secret_access_key_env)
        {
            let id = env_var(cfg_file, &format!("{key}.access_key_id_env"), id_var)?;
            let secret = env_var(
                cfg_file,
                &format!("{key}.secret_access_key_env"),
                secret_var,
            )?;
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "backupctl-target-env",
            ));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(ConfigError::new(
                cfg_file.display(),
                format!("{key}.region"),
                "no region: set region (e.g. \"eu-central-1\") or AWS_REGION",
            ));
        }
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
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
        let mut prefix = spec.prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Target {
            name: name.to_string(),
            location: spec.location.clone(),
            bucket: spec.bucket.clone(),
            prefix,
            endpoint: spec.endpoint.clone(),
            storage_class: spec.storage_class.as_deref().map(StorageClass::from),
            part_size: spec.part_size_mib.unwrap_or(DEFAULT_PART_SIZE_MIB) << 20,
            parts_in_flight: spec.parts_in_flight.unwrap_or(DEFAULT_PARTS_IN_FLIGHT),
            client,
            plain_client,
            checksums: AtomicBool::new(true),
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
    fn classify<E>(&self, what: &str, key: &str, err: SdkError<E>) -> TargetError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let target = self.name.clone();
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().unwrap_or_default().to_string();
        let detail = match err.message() {
            Some(m) if !code.is_empty() => format!("{code}: {m}"),
            Some(m) => m.to_string(),
            None if !code.is_empty() => code.clone(),
            None => chain(&err),
        };
        match &err {
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
                return TargetError::Unavailable {
                    target,
                    message: format!("{what} {key}: {} ({})", chain(&err), self.where_()),
                }
            }
            SdkError::DispatchFailure(d) => {
                let text = chain(&err);
                if d.is_user() || text.contains("credentials") || text.contains("identity") {
                    return TargetError::Permanent {
                        target,
                        message: format!("{what} {key}: {text}; check the credentials (access_key_id_env / secret_access_key_env or the AWS credential chain)"),
                    };
                }
                return TargetError::Unavailable {
                    target,
                    message: format!(
                        "{what} {key}: cannot reach {}: {text}",
                        self.endpoint.as_deref().unwrap_or("the S3 endpoint")
                    ),
                };
            }
            SdkError::ConstructionFailure(_) => {
                return TargetError::Permanent {
                    target,
                    message: format!("{what} {key}: {}", chain(&err)),
                }
            }
            _ => {}
        }
        let hint = match code.as_str() {
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
        };
        if let Some(message) = hint {
            return TargetError::Permanent { target, message };
        }
        match (status, code.as_str()) {
            (Some(404), _) | (_, "NoSuchKey") | (_, "NotFound") => TargetError::NotFound {
                target,
                key: key.to_string(),
            },
            (Some(403), _) => TargetError::Permanent {
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
                TargetError::Unavailable {
                    target,
                    message: format!("{what} {key}: HTTP {s}: {detail} (after retries)"),
                }
            }
            (s, _) => TargetError::Permanent {
                target,
                message: format!(
                    "{what} {key}: {}{detail}",
                    s.map(|s| format!("HTTP {s}: ")).unwrap_or_default()
                ),
            },
        }
    }

    fn io(&self, context: String, source: std::io::Error) -> TargetError {
        TargetError::Io {
            target: self.name.clone(),
            context,
            source,
        }
    }

    /// Did the service refuse the request because of its checksum?
    fn checksum_refused(e: &TargetError) -> bool {
        match e {
            TargetError::Permanent { message, .. } => {
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
    async fn with_checksum_fallback<F, Fut>(&self, f: F) -> TargetResult<()>
    where
        F: Fn(bool) -> Fut,
        Fut: std::future::Future<Output = TargetResult<()>>,
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

    async fn put_object(&self, key: &str, body: Bytes, checksums: bool) -> TargetResult<()> {
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
    ) -> TargetResult<()> {
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
            return Err(TargetError::Permanent {
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
    ) -> TargetResult<()> {
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
                    Ok::<_, TargetError>(part.build())
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
    pub async fn abort_stale(&self, older_than: Duration) -> TargetResult<usize> {
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
                return Err(TargetError::Unavailable {
                    target: self.name.clone(),
                    message: "listing uploads: truncated listing without a marker".into(),
                });
            }
        }
        Ok(aborted)
    }
}

#[async_trait]
impl Target for S3Target {
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

    async fn put_file(&self, key: &str, path: &Path) -> TargetResult<()> {
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

    async fn put_bytes(&self, key: &str, data: Vec<u8>) -> TargetResult<()> {
        let data = Bytes::from(data);
        self.with_checksum_fallback(|c| self.put_object(key, data.clone(), c))
            .await
    }

    async fn get(&self, key: &str) -> TargetResult<ByteStream> {
        let out = self.get_object(key).await?;
        Ok(ByteStream::Async(Box::pin(out.body.into_async_read())))
    }

    async fn get_bytes(&self, key: &str) -> TargetResult<Vec<u8>> {
        let out = self.get_object(key).await?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| TargetError::Unavailable {
                target: self.name.clone(),
                message: format!("download {key}: {}", chain(&e)),
            })?;
        Ok(data.into_bytes().to_vec())
    }

    async fn stat(&self, key: &str) -> TargetResult<Option<u64>> {
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
                TargetError::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    async fn list(&self, prefix: &str) -> TargetResult<Vec<ObjectInfo>> {
        let full = self.full_key(prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify("listing", prefix, e))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let Some(rel) = k.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(ObjectInfo {
                    key: rel.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> TargetResult<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map(|_| ())
            .or_else(|e| match self.classify("delete", key, e) {
                TargetError::NotFound { .. } => Ok(()),
                e => Err(e),
            })
    }

    async fn abort_stale_uploads(&self, older_than: Duration) -> TargetResult<usize> {
        self.abort_stale(older_than).await
    }
}
