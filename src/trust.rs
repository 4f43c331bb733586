//! Who may write snapshots: Ed25519 host keys, the set of trusted public
//! keys, and the detached signature that authenticates every manifest.
//!
//! Every snapshot manifest `<policy>/snapshots/<id>.json` has a signature
//! `<policy>/snapshots/<id>.sig` beside it, written just before the manifest.
//! The signature covers a domain-separated message (format tag, policy, id,
//! the exact manifest bytes), so a genuine manifest cannot be replayed under
//! another id or policy. Nothing a target serves is parsed, listed, restored,
//! copied or counted by prune before its signature verifies against a
//! trusted key ([`Trust`]).
//!
//! The host key's one secret seed also derives the other secrets later
//! formats need (keyed chunk ids), so backing it up once is enough.
//!
//! Key file: two lines, `backupctl-ed25519-secret-v1` and the base64 seed,
//! mode 0600. Public keys are written `ed25519:<base64>` (what
//! `trusted_keys` pins and `backupctl key fingerprint` prints).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use std::fmt;
use std::path::{Path, PathBuf};

const KEY_FILE_TAG: &str = "backupctl-ed25519-secret-v1";
const SIG_FORMAT: &str = "backupctl-signature";
const MESSAGE_TAG: &[u8] = b"backupctl snapshot manifest v1\0";
/// Signature files are tiny; anything bigger is not one.
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// A public key, printed and pinned as `ed25519:<base64>` (kept as its 32
/// bytes, checked to be a valid point when parsed).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    fn verifying(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("checked when parsed")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<PublicKey, String> {
        let b64 = s
            .trim()
            .strip_prefix("ed25519:")
            .ok_or_else(|| format!("expected \"ed25519:<base64>\", got {s:?}"))?;
        let bytes = B64
            .decode(b64)
            .map_err(|e| format!("{s:?}: not base64: {e}"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{s:?}: an Ed25519 public key is 32 bytes"))?;
        VerifyingKey::from_bytes(&arr)
            .map(|k| PublicKey(k.to_bytes()))
            .map_err(|e| format!("{s:?}: not a valid Ed25519 public key: {e}"))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A host's signing key (the secret half).
pub struct HostKey {
    key: SigningKey,
    pub path: PathBuf,
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} already exists; refusing to overwrite it (it signs existing snapshots)"
    )]
    Exists { path: String },
}

impl HostKey {
    /// A new key from the operating system's randomness.
    pub fn generate(path: &Path) -> Result<HostKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom(&mut seed).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(HostKey {
            key: SigningKey::from_bytes(&seed),
            path: path.to_path_buf(),
        })
    }

    /// Create a new key file (0600 in a 0700 directory); never overwrites.
    pub fn create(path: &Path) -> Result<HostKey, KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::util::create_private_dir_all(dir).map_err(io)?;
        }
        let key = HostKey::generate(path)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists {
                        path: path.display().to_string(),
                    }
                } else {
                    io(e)
                }
            })?;
        let text = format!(
            "{KEY_FILE_TAG}\n{}\n",
            B64.encode(key.key.to_bytes().as_slice())
        );
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io)?;
        Ok(key)
    }

    /// Read a key file.
    pub fn load(path: &Path) -> Result<HostKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let invalid = |message: &str| KeyError::Invalid {
            path: path.display().to_string(),
            message: message.to_string(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_TAG) {
            return Err(invalid(&format!(
                "not a backupctl key file (first line must be {KEY_FILE_TAG})"
            )));
        }
        let seed = lines
            .next()
            .and_then(|l| B64.decode(l.trim()).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| invalid("the second line must be a base64 32-byte seed"))?;
        Ok(HostKey {
            key: SigningKey::from_bytes(&seed),
            path: path.to_path_buf(),
        })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// A secret for `purpose`, derived from the seed (never the seed itself).
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(
            &format!("backupctl {purpose} v1"),
            self.key.to_bytes().as_slice(),
        )
    }

    /// The signature file for `manifest` of snapshot `id` of `policy`.
    pub fn sign_manifest(&self, policy: &str, id: &str, manifest: &[u8]) -> Vec<u8> {
        self.sign_manifest_keeping(policy, id, manifest, None)
    }

    /// The signature file for `manifest` that also carries the signature of
    /// `previous` (a signature file), so that while a manifest is replaced
    /// (repacking rewrites a snapshot's extent lists) whichever manifest is
    /// in place authenticates. A `previous` that is not a signature file
    /// is dropped.
    pub fn sign_manifest_keeping(
        &self,
        policy: &str,
        id: &str,
        manifest: &[u8],
        previous: Option<&[u8]>,
    ) -> Vec<u8> {
        let sig = self.key.sign(&message(policy, id, manifest));
        let v = serde_json::json!({
            "format": SIG_FORMAT,
            "version": 1,
            "key": self.public().to_string(),
            "signature": B64.encode(sig.to_bytes()),
        });
        let mut b = serde_json::to_vec_pretty(&v).expect("signature serialises");
        b.push(b'\n');
        match previous {
            Some(p) => bridge(&b, p),
            None => b,
        }
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

fn message(policy: &str, id: &str, manifest: &[u8]) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(MESSAGE_TAG.len() + policy.len() + id.len() + manifest.len() + 2);
    m.extend_from_slice(MESSAGE_TAG);
    m.extend_from_slice(policy.as_bytes());
    m.push(0);
    m.extend_from_slice(id.as_bytes());
    m.push(0);
    m.extend_from_slice(manifest);
    m
}

/// Why a manifest is not authentic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not signed (no signature file)")]
    Unsigned,
    #[error("unreadable signature: {0}")]
    Malformed(String),
    #[error("signed by {0}, which is not a trusted key")]
    UnknownKey(PublicKey),
    #[error("signature by {0} does not match the manifest (altered)")]
    Altered(PublicKey),
}

impl AuthError {
    /// The key that signed, when the signature names one.
    pub fn signer(&self) -> Option<PublicKey> {
        match self {
            AuthError::UnknownKey(k) | AuthError::Altered(k) => Some(*k),
            _ => None,
        }
    }
}

/// The keys whose signatures are accepted.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<PublicKey>,
}

impl Trust {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Trust {
        let mut t = Trust::default();
        for k in keys {
            t.add(k);
        }
        t
    }

    pub fn add(&mut self, k: PublicKey) {
        if !self.keys.contains(&k) {
            self.keys.push(k);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Check the signature file `sig` for `manifest`; returns the signer.
    pub fn verify(
        &self,
        policy: &str,
        id: &str,
        manifest: &[u8],
        sig: Option<&[u8]>,
    ) -> Result<PublicKey, AuthError> {
        let sig = sig.ok_or(AuthError::Unsigned)?;
        if sig.len() > MAX_SIGNATURE_BYTES {
            return Err(AuthError::Malformed("too large".into()));
        }
        let f: SigFile = serde_json::from_slice(sig)
            .map_err(|e| AuthError::Malformed(format!("not a signature file: {e}")))?;
        if f.format != SIG_FORMAT || f.version != 1 {
            return Err(AuthError::Malformed(format!(
                "unknown signature format {:?} version {}",
                crate::util::printable(&f.format),
                f.version
            )));
        }
        let msg = message(policy, id, manifest);
        let first = self.check(&f.key, &f.signature, &msg);
        match &f.previous {
            Some(p) if first.is_err() => self.check(&p.key, &p.signature, &msg).or(first),
            _ => first,
        }
    }

    /// One signature (`key`, base64 `signature`) over `msg`.
    fn check(&self, key: &str, signature: &str, msg: &[u8]) -> Result<PublicKey, AuthError> {
        let key: PublicKey = key
            .parse()
            .map_err(|e: String| AuthError::Malformed(crate::util::printable(&e)))?;
        let bytes: [u8; 64] = B64
            .decode(signature.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| AuthError::Malformed("signature is not 64 base64 bytes".into()))?;
        if !self.keys.contains(&key) {
            return Err(AuthError::UnknownKey(key));
        }
        let sig = ed25519_dalek::Signature::from_bytes(&bytes);
        key.verifying()
            .verify(msg, &sig)
            .map_err(|_| AuthError::Altered(key))?;
        Ok(key)
    }
}

/// The signature file `new` that also carries the (first) signature of the
/// signature file `old`: written while a manifest is replaced, so that
/// whichever of the two manifests is in place authenticates. Needs no key
/// (`sync` replaces a manifest with another host's authentic copy). `new`
/// unchanged when either is not a signature file.
pub fn bridge(new: &[u8], old: &[u8]) -> Vec<u8> {
    let (Ok(mut v), Ok(prev)) = (
        serde_json::from_slice::<serde_json::Value>(new),
        serde_json::from_slice::<SigFile>(old),
    ) else {
        return new.to_vec();
    };
    if !v.is_object() {
        return new.to_vec();
    }
    v["previous"] = serde_json::json!({ "key": prev.key, "signature": prev.signature });
    let mut b = serde_json::to_vec_pretty(&v).expect("signature serialises");
    b.push(b'\n');
    b
}

/// A signature file: one signature, and during a manifest's replacement the
/// signature of the manifest it replaces.
#[derive(serde::Deserialize)]
struct SigFile {
    format: String,
    version: u32,
    key: String,
    signature: String,
    #[serde(default)]
    previous: Option<Signed>,
}

#[derive(serde::Deserialize)]
struct Signed {
    key: String,
    signature: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_every_way_to_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host.key");
        let k = HostKey::create(&path).unwrap();
        assert!(matches!(
            HostKey::create(&path),
            Err(KeyError::Exists { .. })
        ));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = HostKey::load(&path).unwrap();
        assert_eq!(again.public(), k.public());
        let pk: PublicKey = k.public().to_string().parse().unwrap();
        assert_eq!(pk, k.public());

        let m = b"{\"id\":\"x\"}\n";
        let sig = k.sign_manifest("shop", "20260101T000000Z-00000000", m);
        let trust = Trust::new([k.public()]);
        assert_eq!(
            trust.verify("shop", "20260101T000000Z-00000000", m, Some(&sig)),
            Ok(k.public())
        );
        // Altered bytes, another id, another policy: rejected.
        for (p, id, bytes) in [
            (
                "shop",
                "20260101T000000Z-00000000",
                &b"{\"id\":\"y\"}\n"[..],
            ),
            ("shop", "20260101T000000Z-00000001", &m[..]),
            ("blog", "20260101T000000Z-00000000", &m[..]),
        ] {
            assert_eq!(
                trust.verify(p, id, bytes, Some(&sig)),
                Err(AuthError::Altered(k.public()))
            );
        }
        assert_eq!(trust.verify("shop", "x", m, None), Err(AuthError::Unsigned));
        let other = HostKey::generate(&path).unwrap();
        let foreign = other.sign_manifest("shop", "x", m);
        assert_eq!(
            trust.verify("shop", "x", m, Some(&foreign)),
            Err(AuthError::UnknownKey(other.public()))
        );
        assert!(matches!(
            trust.verify("shop", "x", m, Some(b"garbage")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            Trust::default().verify("shop", "x", m, Some(&sig)),
            Err(AuthError::UnknownKey(_))
        ));
        assert_ne!(k.derive_secret("chunk id"), k.derive_secret("other"));
    }

    #[test]
    fn public_key_parsing_names_the_problem() {
        assert!("ed25519:".parse::<PublicKey>().is_err());
        assert!("rsa:AAAA".parse::<PublicKey>().is_err());
        assert!("ed25519:not-base64!".parse::<PublicKey>().is_err());
    }

    #[test]
    fn a_replacement_signature_also_covers_the_manifest_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let k = HostKey::create(&dir.path().join("host.key")).unwrap();
        let other = HostKey::create(&dir.path().join("other.key")).unwrap();
        let trust = Trust::new([k.public()]);
        let id = "20260101T000000Z-00000000";
        let (old, new) = (b"old manifest".as_slice(), b"new manifest".as_slice());
        let old_sig = k.sign_manifest("shop", id, old);
        let both = k.sign_manifest_keeping("shop", id, new, Some(&old_sig));
        assert_eq!(trust.verify("shop", id, new, Some(&both)), Ok(k.public()));
        assert_eq!(trust.verify("shop", id, old, Some(&both)), Ok(k.public()));
        assert!(trust.verify("shop", id, b"third", Some(&both)).is_err());
        assert!(trust
            .verify("shop", "20260101T000000Z-00000001", old, Some(&both))
            .is_err());
        // The carried signature is checked like any: an untrusted one counts for nothing.
        let foreign = other.sign_manifest("shop", id, old);
        let carried = k.sign_manifest_keeping("shop", id, new, Some(&foreign));
        assert!(matches!(
            trust.verify("shop", id, old, Some(&carried)),
            Err(AuthError::Altered(_))
        ));
        // Garbage as the previous file is dropped, not copied.
        let plain = k.sign_manifest_keeping("shop", id, new, Some(b"junk"));
        assert_eq!(plain, k.sign_manifest("shop", id, new));
        assert!(trust.verify("shop", id, old, Some(&plain)).is_err());
    }
}
