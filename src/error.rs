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

/// An error carrying an explicit exit code, for [`Error::from`] (kept so
/// call sites read `CodedError::usage(..)`; [`Error::usage`] is the same).
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

/// The library's one error type: what went wrong, as a chain of messages
/// (outermost context first, the root cause last), and the exit code it
/// maps to. The code is decided where the error is made (a [`ConfigError`]
/// is a usage error, a [`CodedError`] carries its own, anything else is a
/// failure) and survives every [`Context`] added on the way out.
///
/// `{}` shows the outermost message, `{:#}` the whole chain joined by `": "`.
/// Like `anyhow::Error` it deliberately does not implement
/// `std::error::Error`, so any error converts into it with `?`.
pub struct Error {
    code: ExitCode,
    /// Outermost first; never empty.
    chain: Vec<String>,
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure (exit 1) with this message.
    pub fn msg(message: impl fmt::Display) -> Error {
        Error::coded(ExitCode::Failure, message)
    }
    /// A usage or configuration error (exit 2).
    pub fn usage(message: impl fmt::Display) -> Error {
        Error::coded(ExitCode::Usage, message)
    }
    /// A failure (exit 1).
    pub fn failure(message: impl fmt::Display) -> Error {
        Error::coded(ExitCode::Failure, message)
    }
    /// An error with an explicit exit code.
    pub fn coded(code: ExitCode, message: impl fmt::Display) -> Error {
        Error {
            code,
            chain: vec![message.to_string()],
        }
    }
    /// The exit code this error produces.
    pub fn exit_code(&self) -> ExitCode {
        self.code
    }
    /// Wrap in one more message (shown first); the exit code is kept.
    pub fn context(mut self, c: impl fmt::Display) -> Error {
        self.chain.insert(0, c.to_string());
        self
    }
    /// The messages, outermost first.
    pub fn chain(&self) -> impl Iterator<Item = &str> {
        self.chain.iter().map(String::as_str)
    }
}

impl<E> From<E> for Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Error {
        let mut chain = Vec::new();
        let mut code = ExitCode::Failure;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = cur {
            if err.downcast_ref::<ConfigError>().is_some() {
                code = ExitCode::Usage;
            } else if let Some(c) = err.downcast_ref::<CodedError>() {
                code = c.code;
            }
            chain.push(err.to_string());
            cur = err.source();
        }
        Error { code, chain }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.write_str(&self.chain.join(": "))
        } else {
            f.write_str(&self.chain[0])
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (exit {})", self.chain.join(": "), self.code.code())
    }
}

/// Add a message to an error on its way out (`anyhow::Context`'s shape).
pub trait Context<T> {
    fn context<C: fmt::Display>(self, c: C) -> Result<T>;
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context<C: fmt::Display>(self, c: C) -> Result<T> {
        self.map_err(|e| e.into().context(c))
    }
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C: fmt::Display>(self, c: C) -> Result<T> {
        self.ok_or_else(|| Error::msg(c))
    }
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.ok_or_else(|| Error::msg(f()))
    }
}

/// A failure [`Error`] from a format string, or from one displayable value
/// (`anyhow!`'s shape).
#[macro_export]
macro_rules! err {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {
        $crate::error::Error::msg(format!($fmt $(, $arg)*))
    };
    ($e:expr $(,)?) => {
        $crate::error::Error::msg($e)
    };
}

/// Return early with a failure [`Error`] (arguments as [`err!`]).
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::err!($($t)*))
    };
}

/// Return early with a failure unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($t:tt)*) => {
        if !$cond {
            $crate::bail!($($t)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_survive_context_and_chains_read_like_anyhow() {
        let e: Error = ConfigError::new("backupctl.toml", "targets", "expected a table").into();
        let e = e.context("loading the configuration");
        assert_eq!(e.exit_code(), ExitCode::Usage);
        assert_eq!(e.to_string(), "loading the configuration");
        assert_eq!(
            format!("{e:#}"),
            "loading the configuration: backupctl.toml: targets: expected a table"
        );
        let io: Result<()> = Err(std::io::Error::other("disk on fire")).context("writing x");
        let io = io.unwrap_err();
        assert_eq!(io.exit_code(), ExitCode::Failure);
        assert_eq!(format!("{io:#}"), "writing x: disk on fire");
        let c: Error = CodedError::usage("no such snapshot").into();
        assert_eq!(c.context("restore").exit_code(), ExitCode::Usage);
        let none: Result<u8> = None.context("missing");
        assert_eq!(none.unwrap_err().to_string(), "missing");
    }

    #[test]
    fn macros_make_failures() {
        fn f(x: u8) -> Result<u8> {
            ensure!(x < 10, "{x} is too big");
            if x == 5 {
                bail!("five");
            }
            Err(err!("got {x}"))
        }
        assert_eq!(f(12).unwrap_err().to_string(), "12 is too big");
        assert_eq!(f(5).unwrap_err().exit_code(), ExitCode::Failure);
        assert_eq!(f(1).unwrap_err().to_string(), "got 1");
    }
}
