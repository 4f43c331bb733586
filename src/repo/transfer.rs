//! Copying packs and extent lists between targets: what `sync` and a run's
//! catch-up (a target that missed nights receives what the new snapshot
//! needs) both do. Each object is downloaded once from the first holder
//! that serves it intact (checked against its name by [`super::fetch`]),
//! then written to every target that lacks it. Packs are at most
//! [`crate::pack::format::PACK_MAX`] and lists small, so an object is held
//! in memory while it is written.

use super::fetch;
use super::layout::{Hash, Key, PolicyName};
use crate::storage::DynBackend;

/// An object to copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Object {
    Pack(Hash),
    /// An extent list, at most `size` bytes (what the signed manifest says).
    List {
        hash: Hash,
        size: u64,
    },
}

impl Object {
    fn key(&self, policy: &PolicyName) -> Key {
        match self {
            Object::Pack(name) => Key::Pack {
                policy: policy.clone(),
                name: name.clone(),
            },
            Object::List { hash, .. } => Key::List {
                policy: policy.clone(),
                hash: hash.clone(),
            },
        }
    }
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Pack(h) => write!(f, "pack {}", h.short()),
            Object::List { hash, .. } => write!(f, "extent list {}", hash.short()),
        }
    }
}

/// What one copy did.
pub struct Copied {
    /// The target it came from.
    pub from: String,
    pub bytes: u64,
    /// Per destination (in the order given): written, or why not.
    pub puts: Vec<Result<(), String>>,
}

/// Copy `obj` to each of `to` from the first of `from` that serves it
/// intact. Err: no holder served it intact (with why, per holder).
pub async fn copy(
    policy: &PolicyName,
    obj: &Object,
    from: &[&DynBackend],
    to: &[&DynBackend],
) -> Result<Copied, String> {
    let mut why = Vec::new();
    let mut got = None;
    for s in from {
        let r = match obj {
            Object::Pack(name) => fetch::pack(s, policy, name).await,
            Object::List { hash, size } => fetch::list_bytes(s, policy, hash, *size).await,
        };
        match r {
            Ok(b) => {
                got = Some((s.name().to_string(), b));
                break;
            }
            Err(e) => {
                tracing::warn!("target {}: {obj}: {e}; trying the next holder", s.name());
                why.push(format!("{}: {e}", s.name()));
            }
        }
    }
    let Some((from, bytes)) = got else {
        return Err(if why.is_empty() {
            format!("no target holds {obj}")
        } else {
            format!("no intact copy of {obj} ({})", why.join("; "))
        });
    };
    let key = obj.key(policy).object();
    let len = bytes.len() as u64;
    let puts = futures::future::join_all(to.iter().map(|t| {
        let (key, data) = (key.clone(), bytes.clone());
        async move { t.put_bytes(&key, data).await.map_err(|e| e.to_string()) }
    }))
    .await;
    Ok(Copied {
        from,
        bytes: len,
        puts,
    })
}

/// [`copy`] to one target: the bytes written, or why not.
pub async fn copy_to(
    policy: &PolicyName,
    obj: &Object,
    from: &[&DynBackend],
    to: &DynBackend,
) -> Result<u64, String> {
    let c = copy(policy, obj, from, &[to]).await?;
    c.puts
        .into_iter()
        .next()
        .unwrap_or(Ok(()))
        .map(|()| c.bytes)
}
