//! Error kinds that reach the command line, and the exit codes they map to.
//!
//! Exit codes (documented in the README): 0 success, 1 the operation failed
//! (integrity problems included), 2 usage or configuration error, 3 partial:
//! done on some targets but not all, or some source files could not be read.

use std::fmt;

/// The documented process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCode {
    Success = 0,
    Failure = 1,
    Usage = 2,
    Partial = 3,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A configuration problem: which file, which key, and what was expected.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

impl ConfigError {
    pub fn new(
        file: impl fmt::Display,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// An error carrying an explicit exit code (for `anyhow` chains that must not
/// collapse into the generic failure code).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    pub code: ExitCode,
    pub message: String,
}

impl CodedError {
    pub fn usage(message: impl Into<String>) -> Self {
        CodedError {
            code: ExitCode::Usage,
            message: message.into(),
        }
    }
    pub fn failure(message: impl Into<String>) -> Self {
        CodedError {
            code: ExitCode::Failure,
            message: message.into(),
        }
    }
}

/// The exit code an error chain should produce.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return ExitCode::Usage;
        }
        if let Some(c) = cause.downcast_ref::<CodedError>() {
            return c.code;
        }
    }
    ExitCode::Failure
}
