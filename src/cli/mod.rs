//! The command line, in the binary only: clap definitions ([`args`]), the
//! per-policy loop every policy command goes through ([`each`]), the daemon's
//! jobs ([`daemon`]), how results are rendered ([`render`]) and how output
//! and logs reach people ([`output`]), and the files generated from the
//! definitions ([`contrib`]: completions, man pages, systemd units). The
//! library knows nothing of any of it.

pub mod args;
pub mod commands;
pub mod contrib;
pub mod daemon;
pub mod each;
pub mod output;
pub mod render;
