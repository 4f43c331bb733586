//! Progress, as the library reports it: shared counters a long task updates
//! ([`Counters`]) and a [`Display`] the caller passes in that shows them (the
//! CLI draws progress bars on a terminal; the default shows nothing). The
//! library never draws anything itself and keeps no global display.

use std::sync::Arc;

pub use crate::archive::Progress as Counters;

/// Something that shows the progress of tasks.
pub trait Display: Send + Sync {
    /// Show `counters` under `label` (with `total` bytes when known) until
    /// the returned guard is dropped.
    fn task(&self, label: &str, total: Option<u64>, counters: Arc<Counters>) -> Box<dyn Send>;
    /// Whether anything is shown (then a total is worth computing first).
    fn visible(&self) -> bool;
}

/// Shows nothing (tests, cron, the library's default).
#[derive(Debug, Default, Clone, Copy)]
pub struct Hidden;

impl Display for Hidden {
    fn task(&self, _: &str, _: Option<u64>, _: Arc<Counters>) -> Box<dyn Send> {
        Box::new(())
    }
    fn visible(&self) -> bool {
        false
    }
}

/// A shared display handle, `Hidden` by default.
#[derive(Clone)]
pub struct Handle(pub Arc<dyn Display>);

impl Default for Handle {
    fn default() -> Self {
        Handle(Arc::new(Hidden))
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("progress::Handle")
    }
}

impl std::ops::Deref for Handle {
    type Target = dyn Display;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}
