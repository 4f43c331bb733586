//! Where backupctl's data lives on a target: the one place that turns
//! typed names into object keys ([`Key::object`]) and listed keys back into
//! typed names ([`Key::parse`]).
//!
//! ```text
//! <root>/backupctl-target.json                the marker (see crate::storage)
//! <root>/RESTORE-README.txt                   how to restore by hand
//! <root>/<policy>/packs/<hh>/<name>.pack      chunks (zstd frames) and their index
//! <root>/<policy>/lists/<blake3>.extents      where a stream's chunks are (text)
//! <root>/<policy>/snapshots/<id>.sig          its signature (written just before)
//! <root>/<policy>/snapshots/<id>.json         the manifest, written last
//! ```
//!
//! The names in a key are validated newtypes ([`PolicyName`], [`SnapshotId`],
//! [`Hash`]), so a key cannot be built from a string a target served. What
//! the objects hold, and in which order they are written, is not this file's
//! business (see [`super::catalog`] and [`super::commit`]).

use crate::storage::{ObjectKey, Prefix};
use chrono::{DateTime, FixedOffset, Utc};
use std::fmt;

/// The restore instructions at every target's root (storage knows the name
/// too: an fs target adopts a directory holding them).
pub const RESTORE_FILE: &str = crate::storage::RESTORE_FILE;

/// A name that is not what it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $valid:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: &str) -> Result<$name, InvalidName> {
                let valid: fn(&str) -> bool = $valid;
                if valid(s) {
                    Ok($name(s.to_string()))
                } else {
                    Err(InvalidName {
                        what: $what,
                        value: crate::util::printable(s),
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

name_type!(
    /// A policy's name (see [`crate::config::is_valid_name`]).
    PolicyName,
    "policy name",
    crate::config::is_valid_name
);
name_type!(
    /// A snapshot id as `run` makes them (`YYYYMMDDTHHMMSSZ-xxxxxxxx`).
    SnapshotId,
    "snapshot id",
    is_snapshot_id
);
name_type!(
    /// A BLAKE3 digest in lowercase hex: what names a pack or a list.
    Hash,
    "BLAKE3 hash",
    crate::archive::manifest::is_hash
);

impl PolicyName {
    /// The name of a loaded policy (validated when the configuration loaded).
    pub fn of(policy: &crate::config::Policy) -> PolicyName {
        PolicyName::new(&policy.name).expect("policy names are validated when loaded")
    }
}

impl SnapshotId {
    /// A new id: the UTC time, then random hex (unique for equal times).
    pub fn generate(time: &DateTime<FixedOffset>) -> SnapshotId {
        SnapshotId(format!(
            "{}-{}",
            time.with_timezone(&Utc).format("%Y%m%dT%H%M%SZ"),
            crate::util::random_hex(8)
        ))
    }
}

impl Hash {
    pub fn of(h: &blake3::Hash) -> Hash {
        Hash(h.to_hex().to_string())
    }

    /// The first 16 hex digits, for log lines.
    pub fn short(&self) -> &str {
        &self.0[..16]
    }
}

/// Is `s` a snapshot id as `run` makes them (`YYYYMMDDTHHMMSSZ-xxxxxxxx`)?
pub fn is_snapshot_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 25
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Every object backupctl stores, by what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `backupctl-target.json`: the marker that the target is there.
    Marker,
    /// `RESTORE-README.txt`.
    RestoreReadme,
    Manifest {
        policy: PolicyName,
        id: SnapshotId,
    },
    Signature {
        policy: PolicyName,
        id: SnapshotId,
    },
    /// A pack, named by the BLAKE3 of its index (see [`crate::pack::format`]).
    Pack {
        policy: PolicyName,
        name: Hash,
    },
    /// An extent list, named by the BLAKE3 of its text.
    List {
        policy: PolicyName,
        hash: Hash,
    },
    /// `.backupctl-probe-<hex>`: what `check` writes, reads back and deletes.
    Probe(String),
}

impl Key {
    /// A new probe key (random).
    pub fn probe() -> Key {
        Key::Probe(crate::util::random_hex(12))
    }

    /// The object key. Infallible: every part is a validated name.
    pub fn object(&self) -> ObjectKey {
        let s = match self {
            Key::Marker => return crate::storage::marker_key(),
            Key::RestoreReadme => RESTORE_FILE.to_string(),
            Key::Manifest { policy, id } => format!("{policy}/snapshots/{id}.json"),
            Key::Signature { policy, id } => format!("{policy}/snapshots/{id}.sig"),
            Key::Pack { policy, name } => {
                format!("{policy}/{}", crate::pack::extents::pack_path(name))
            }
            Key::List { policy, hash } => format!("{policy}/lists/{hash}.extents"),
            Key::Probe(hex) => format!(".backupctl-probe-{hex}"),
        };
        ObjectKey::new(s).expect("layout keys are valid")
    }

    /// What a listed key is, when it is one of backupctl's.
    pub fn parse(key: &ObjectKey) -> Option<Key> {
        let s = key.as_str();
        if key == &crate::storage::marker_key() {
            return Some(Key::Marker);
        }
        if s == RESTORE_FILE {
            return Some(Key::RestoreReadme);
        }
        if let Some(hex) = s.strip_prefix(".backupctl-probe-") {
            return Some(Key::Probe(hex.to_string()));
        }
        let (policy, rest) = s.split_once('/')?;
        let policy = PolicyName::new(policy).ok()?;
        if rest.starts_with("packs/") {
            let name = crate::pack::extents::name_of_path(rest)?;
            return Some(Key::Pack {
                policy,
                name: Hash::new(name).ok()?,
            });
        }
        let (dir, file) = rest.split_once('/')?;
        let (stem, ext) = file.split_once('.')?;
        match (dir, ext) {
            ("snapshots", "json") => Some(Key::Manifest {
                policy,
                id: SnapshotId::new(stem).ok()?,
            }),
            ("snapshots", "sig") => Some(Key::Signature {
                policy,
                id: SnapshotId::new(stem).ok()?,
            }),
            ("lists", "extents") => Some(Key::List {
                policy,
                hash: Hash::new(stem).ok()?,
            }),
            _ => None,
        }
    }
}

/// Every key of `policy`'s data.
pub fn policy_prefix(policy: &PolicyName) -> Prefix {
    Prefix::new(format!("{policy}/")).expect("policy names are valid keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strangers_are_not_keys() {
        let p = PolicyName::new("shop").unwrap();
        let id = SnapshotId::new("20260101T000000Z-0123abcd").unwrap();
        let h = Hash::new(&"ab".repeat(32)).unwrap();
        for k in [
            Key::Marker,
            Key::RestoreReadme,
            Key::Manifest {
                policy: p.clone(),
                id: id.clone(),
            },
            Key::Signature {
                policy: p.clone(),
                id: id.clone(),
            },
            Key::Pack {
                policy: p.clone(),
                name: h.clone(),
            },
            Key::List {
                policy: p.clone(),
                hash: h.clone(),
            },
            Key::probe(),
        ] {
            assert_eq!(Key::parse(&k.object()), Some(k.clone()), "{k:?}");
        }
        assert_eq!(
            Key::Pack {
                policy: p.clone(),
                name: h.clone()
            }
            .object()
            .as_str(),
            format!("shop/packs/ab/{h}.pack")
        );
        for stranger in [
            "shop/snapshots/latest.json",
            "shop/snapshots/20260101T000000Z-0123abcd.json.bak",
            "shop/lists/ABAB.extents",
            "shop/packs/cd/ab.pack",
            "shop/other/x.json",
            ".shop/snapshots/20260101T000000Z-0123abcd.json",
            "shop/lists/x/y.extents",
        ] {
            assert_eq!(Key::parse(&ObjectKey::new(stranger).unwrap()), None);
        }
        assert!(SnapshotId::new("../x").is_err());
        assert!(Hash::new("xyz").is_err());
        assert!(PolicyName::new(".hidden").is_err());
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T01:00:00+01:00").unwrap();
        assert!(SnapshotId::generate(&t)
            .as_str()
            .starts_with("20260101T000000Z-"));
    }
}
