//! The one duration grammar, for every flag and configuration key that takes
//! a duration (`--wait`, `--abort-uploads-older-than`, `jitter`, the
//! retention `within*` keys).
//!
//! Text: one or more `<integer><unit>` parts, without spaces (`"90s"`,
//! `"1h30m"`, `"1y6mo"`; surrounding whitespace is ignored). Units, long or
//! short:
//!
//! | unit | spellings |
//! |---|---|
//! | seconds | `s`, `sec`, `secs`, `second`, `seconds` |
//! | minutes | `m`, `min`, `mins`, `minute`, `minutes` |
//! | hours | `h`, `hr`, `hrs`, `hour`, `hours` |
//! | days | `d`, `day`, `days` |
//! | weeks | `w`, `week`, `weeks` (7 days) |
//! | months | `mo`, `month`, `months` |
//! | years | `y`, `year`, `years` |
//!
//! Elapsed times ([`parse_elapsed`]: waits, ages, jitter) have no calendar:
//! months and years are refused there. Retention windows ([`parse_span`]
//! with [`Minutes::AreMonths`]) are calendar spans counted in hours at the
//! finest, without weeks (write `7d`; "weekly" is a retention rule of its
//! own), and keep restic's and borg's meaning of the single letter `m`:
//! **months** (retention has no minutes), so `within = "1m14d"` means what it
//! means to a restic user; `mo` says the same unambiguously.

use std::fmt;

/// A parsed duration, part by part (calendar units kept apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub years: i64,
    pub months: i64,
    pub weeks: i64,
    pub days: i64,
    pub hours: i64,
    pub minutes: i64,
    pub seconds: i64,
}

/// What the single letter `m` means where the span is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Minutes {
    /// Elapsed times: `m` is minutes.
    AreMinutes,
    /// Retention windows: `m` is months (as in restic and borg).
    AreMonths,
}

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {problem}; expected {expected}")]
pub struct DurationError {
    pub input: String,
    pub problem: String,
    pub expected: &'static str,
}

const ELAPSED: &str =
    "<number><unit> parts such as \"90s\", \"10m\", \"1h30m\", \"2d\" (units s, m = minutes, h, d, w)";
const RETENTION: &str =
    "<number><unit> parts such as \"14d\", \"1y6m\", \"36h\" (units y, m or mo = months, d, h)";

enum Unit {
    Seconds,
    Minutes,
    Hours,
    Days,
    Weeks,
    Months,
    Years,
}

fn unit(word: &str, m: Minutes) -> Option<Unit> {
    Some(match word {
        "s" | "sec" | "secs" | "second" | "seconds" => Unit::Seconds,
        "m" if m == Minutes::AreMonths => Unit::Months,
        "m" | "min" | "mins" | "minute" | "minutes" => Unit::Minutes,
        "h" | "hr" | "hrs" | "hour" | "hours" => Unit::Hours,
        "d" | "day" | "days" => Unit::Days,
        "w" | "week" | "weeks" => Unit::Weeks,
        "mo" | "month" | "months" => Unit::Months,
        "y" | "year" | "years" => Unit::Years,
        _ => return None,
    })
}

/// Parse `text` into its parts. Negative parts (`-1d`) are accepted only
/// with `allow_negative` (retention parses them so that policy validation
/// can name them). A repeated unit: the later value wins.
pub fn parse_span(text: &str, m: Minutes, allow_negative: bool) -> Result<Span, DurationError> {
    let expected = if m == Minutes::AreMonths {
        RETENTION
    } else {
        ELAPSED
    };
    let err = |problem: String| DurationError {
        input: text.to_string(),
        problem,
        expected,
    };
    let mut span = Span::default();
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err("empty".into()));
    }
    while !rest.is_empty() {
        let (negative, unsigned) = match rest.strip_prefix('-') {
            Some(r) if allow_negative => (true, r),
            _ => (false, rest),
        };
        let digits = unsigned.len()
            - unsigned
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        if digits == 0 {
            return Err(err(format!("no number found at {unsigned:?}")));
        }
        let magnitude: i64 = unsigned[..digits]
            .parse()
            .ok()
            .filter(|n| *n <= i32::MAX as i64)
            .ok_or_else(|| err("number too large".into()))?;
        let value = if negative { -magnitude } else { magnitude };
        let after = &unsigned[digits..];
        let word_len = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let word = &after[..word_len];
        if word.is_empty() {
            return Err(err(format!("no unit after number {value}")));
        }
        match unit(word, m) {
            Some(Unit::Seconds) => span.seconds = value,
            Some(Unit::Minutes) => span.minutes = value,
            Some(Unit::Hours) => span.hours = value,
            Some(Unit::Days) => span.days = value,
            Some(Unit::Weeks) => span.weeks = value,
            Some(Unit::Months) => span.months = value,
            Some(Unit::Years) => span.years = value,
            None => return Err(err(format!("unknown unit {word:?} after number {value}"))),
        }
        rest = &after[word_len..];
    }
    Ok(span)
}

/// An elapsed time (`--wait`, `--abort-uploads-older-than`, `jitter`):
/// seconds to weeks; months and years are refused (they have no fixed length).
pub fn parse_elapsed(text: &str) -> Result<std::time::Duration, DurationError> {
    let s = parse_span(text, Minutes::AreMinutes, false)?;
    if s.years != 0 || s.months != 0 {
        return Err(DurationError {
            input: text.to_string(),
            problem: "months and years have no fixed length here; use days or weeks".into(),
            expected: ELAPSED,
        });
    }
    let secs = [
        (s.weeks, 7 * 86400),
        (s.days, 86400),
        (s.hours, 3600),
        (s.minutes, 60),
        (s.seconds, 1),
    ]
    .iter()
    .try_fold(0u64, |acc, &(n, unit)| {
        (n as u64)
            .checked_mul(unit)
            .and_then(|v| acc.checked_add(v))
    })
    .ok_or_else(|| DurationError {
        input: text.to_string(),
        problem: "number too large".into(),
        expected: ELAPSED,
    })?;
    Ok(std::time::Duration::from_secs(secs))
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (v, u) in [
            (self.years, "y"),
            (self.months, "mo"),
            (self.weeks, "w"),
            (self.days, "d"),
            (self.hours, "h"),
            (self.minutes, "min"),
            (self.seconds, "s"),
        ] {
            if v != 0 {
                write!(f, "{v}{u}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn elapsed_times() {
        for (t, secs) in [
            ("90s", 90),
            ("10m", 600),
            ("1h30m", 5400),
            ("1h30min", 5400),
            ("2d", 172_800),
            ("1w", 604_800),
            ("24h", 86_400),
            ("3days", 259_200),
            ("0s", 0),
        ] {
            assert_eq!(parse_elapsed(t), Ok(Duration::from_secs(secs)), "{t}");
        }
        for bad in [
            "",
            "10",
            "m",
            "5x",
            "1mo",
            "1y",
            "-5m",
            "99999999999s",
            "1h 30m",
        ] {
            assert!(parse_elapsed(bad).is_err(), "{bad}");
        }
        let e = parse_elapsed("1mo").unwrap_err().to_string();
        assert!(e.contains("days or weeks"), "{e}");
    }

    #[test]
    fn retention_spans_read_m_as_months() {
        let s = parse_span("1y6m", Minutes::AreMonths, false).unwrap();
        assert_eq!((s.years, s.months), (1, 6));
        let s = parse_span("1y6mo2w", Minutes::AreMonths, false).unwrap();
        assert_eq!((s.years, s.months, s.weeks), (1, 6, 2));
        let s = parse_span("1m14d2h", Minutes::AreMonths, false).unwrap();
        assert_eq!((s.months, s.days, s.hours), (1, 14, 2));
        let s = parse_span("-1d", Minutes::AreMonths, true).unwrap();
        assert_eq!(s.days, -1);
        assert!(parse_span("-1d", Minutes::AreMonths, false).is_err());
        assert_eq!(
            parse_span("1d1d2d", Minutes::AreMonths, false)
                .unwrap()
                .days,
            2,
            "the later value wins"
        );
    }
}
