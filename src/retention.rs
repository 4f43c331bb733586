//! Retention selection: which snapshots a `forget --keep-*` style policy keeps.
//!
//! This module owns the policy type ([`RetentionPolicy`]), the restic duration
//! syntax ([`KeepDuration`], e.g. `1y6m`) and the pure selection function
//! [`apply`], which reproduces restic's `forget` selection exactly (see
//! `shared/retention-spec.md`): stable newest-first sorting by instant, calendar
//! buckets taken from each snapshot's own UTC offset, ISO week-years for weekly
//! buckets, independently counted rules, the "keep the oldest snapshot" rule,
//! `-1` = unlimited, and keep-within windows anchored at the newest non-future
//! snapshot. It performs no I/O and never reads the clock itself.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeDelta, TimeZone, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A retention policy, in restic's terms.
///
/// Counts: `0` = rule off, `N > 0` = keep at most N, `-1` = unlimited. Any
/// other negative count is rejected by [`RetentionPolicy::validate`] and
/// treated as "off" by [`apply`]. A `None` or all-zero duration is off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    pub last: i64,
    pub hourly: i64,
    pub daily: i64,
    pub weekly: i64,
    pub monthly: i64,
    pub yearly: i64,
    /// Keep every snapshot within this duration of the newest one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within: Option<KeepDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_hourly: Option<KeepDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_daily: Option<KeepDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_weekly: Option<KeepDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_monthly: Option<KeepDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_yearly: Option<KeepDuration>,
}

impl RetentionPolicy {
    fn counts(&self) -> [(&'static str, i64); 6] {
        [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]
    }

    fn durations(&self) -> [(&'static str, Option<KeepDuration>); 6] {
        [
            ("within", self.within),
            ("within_hourly", self.within_hourly),
            ("within_daily", self.within_daily),
            ("within_weekly", self.within_weekly),
            ("within_monthly", self.within_monthly),
            ("within_yearly", self.within_yearly),
        ]
    }

    /// True when no rule is set: such a policy keeps nothing, so callers
    /// must refuse to run it (as restic does) rather than delete everything.
    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(|&(_, n)| n == 0)
            && self
                .durations()
                .iter()
                .all(|(_, d)| d.is_none_or(|d| d.is_zero()))
    }

    /// Checks that every count is `>= -1` and no duration has a negative part.
    pub fn validate(&self) -> Result<(), String> {
        for (name, n) in self.counts() {
            if n < -1 {
                return Err(format!(
                    "retention: {name} = {n} is invalid: expected a count >= 0, or -1 for unlimited"
                ));
            }
        }
        for (name, d) in self.durations() {
            if let Some(d) = d.filter(KeepDuration::is_negative) {
                return Err(format!(
                    "retention: {name} = \"{d}\" is invalid: durations must not be negative"
                ));
            }
        }
        Ok(())
    }
}

/// A restic keep-within duration: years, months, days and hours.
///
/// Text form: `<integer><unit>` parts with units `y`, `m` (months), `d`, `h`,
/// in any order (a repeated unit: the later value wins), surrounding
/// whitespace ignored; `""` is zero (= off). [`fmt::Display`] gives the
/// canonical text (non-zero parts in the order y, m, d, h), used in reasons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KeepDuration {
    pub years: i32,
    pub months: i32,
    pub days: i32,
    pub hours: i32,
}

impl KeepDuration {
    /// All parts zero: the option is off.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Any part negative (parses, but the policy validation rejects it).
    pub fn is_negative(&self) -> bool {
        self.years < 0 || self.months < 0 || self.days < 0 || self.hours < 0
    }
}

/// Error from parsing a [`KeepDuration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {problem}; expected <number><unit> parts with units \
     y (years), m or mo (months), d (days), h (hours), e.g. \"1y6m\", \"7d\" or \"12h\""
)]
pub struct DurationParseError {
    pub input: String,
    pub problem: String,
}

impl FromStr for KeepDuration {
    type Err = DurationParseError;

    /// The one duration grammar ([`crate::duration`]) read as a calendar
    /// span: `m` is months, as in restic; weeks, minutes and seconds are
    /// refused (write `7d`; retention counts hours at the finest). `""` is
    /// zero (= off).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |problem: String| DurationParseError {
            input: input.to_string(),
            problem,
        };
        if input.trim().is_empty() {
            return Ok(KeepDuration::default());
        }
        let s = crate::duration::parse_span(input, crate::duration::Minutes::AreMonths, true)
            .map_err(|e| err(e.problem))?;
        if s.minutes != 0 || s.seconds != 0 {
            return Err(err("retention counts hours at the finest".into()));
        }
        if s.weeks != 0 {
            return Err(err("no week unit in retention windows: write 7d".into()));
        }
        let int = |v: i64| i32::try_from(v).map_err(|_| err("number too large".to_string()));
        Ok(KeepDuration {
            years: int(s.years)?,
            months: int(s.months)?,
            days: int(s.days)?,
            hours: int(s.hours)?,
        })
    }
}

impl fmt::Display for KeepDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (value, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if value != 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for KeepDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeepDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KeepDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"1y6m\", \"7d\" or \"12h\" (units y, m = months, d, h)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeepDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Result of [`apply`]: every input index is in exactly one of the two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Kept snapshots, newest first (restic's processing order).
    pub keep: Vec<Kept>,
    /// Indices (into the input slice) of snapshots to remove, newest first.
    pub remove: Vec<usize>,
}

/// One kept snapshot and why it was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Index into the input slice.
    pub index: usize,
    /// Labels of every rule that fired, in restic's order, e.g.
    /// `["within 7d", "daily snapshot", "oldest yearly snapshot"]`.
    pub reasons: Vec<String>,
    /// Slots each counted rule had left after this snapshot (`-1` = unlimited,
    /// `0` = finished or off).
    pub counters: Counters,
}

/// Remaining slots of the counted rules, as restic reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub last: i64,
    pub hourly: i64,
    pub daily: i64,
    pub weekly: i64,
    pub monthly: i64,
    pub yearly: i64,
}

/// The calendar period a rule buckets by.
#[derive(Debug, Clone, Copy)]
enum Period {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Period::Last => "last",
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    /// Bucket key from the snapshot's own wall clock (its own offset).
    /// `pos` is the position in the sorted list (only used by `last`).
    /// Keys are only ever compared within one period.
    fn key(self, t: &DateTime<FixedOffset>, pos: usize) -> (i64, u32, u32, u32) {
        let year = i64::from(t.year());
        match self {
            Period::Last => (pos as i64, 0, 0, 0),
            Period::Hourly => (year, t.month(), t.day(), t.hour()),
            Period::Daily => (year, t.month(), t.day(), 0),
            Period::Weekly => {
                let w = t.iso_week();
                (i64::from(w.year()), w.week(), 0, 0)
            }
            Period::Monthly => (year, t.month(), 0, 0),
            Period::Yearly => (year, 0, 0, 0),
        }
    }
}

/// Start of a keep-within window: A's wall clock minus (Y, M, D) with Go-style
/// overflow (not clamping), in A's own offset, then minus H hours of elapsed
/// time. `None` means the window has no lower bound (covers everything); this
/// is also the answer when the arithmetic leaves chrono's range.
fn window_start(anchor: &DateTime<FixedOffset>, d: &KeepDuration) -> Option<DateTime<FixedOffset>> {
    let local = anchor.naive_local();
    let months = i64::from(local.year()) * 12 + i64::from(local.month0())
        - i64::from(d.years) * 12
        - i64::from(d.months);
    let year = i32::try_from(months.div_euclid(12)).ok()?;
    let month = u32::try_from(months.rem_euclid(12)).ok()? + 1;
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let day_offset = i64::from(local.day()) - 1 - i64::from(d.days);
    let date = first.checked_add_signed(TimeDelta::try_days(day_offset)?)?;
    let shifted = anchor
        .offset()
        .from_local_datetime(&date.and_time(local.time()))
        .single()?;
    shifted.checked_sub_signed(TimeDelta::try_hours(i64::from(d.hours))?)
}

/// Is `t` strictly after the window start (`None` = unbounded: always inside)?
fn inside(t: &DateTime<FixedOffset>, start: Option<&DateTime<FixedOffset>>) -> bool {
    start.is_none_or(|s| t > s)
}

/// A counted rule (`last`, `hourly` ... `yearly`) while the snapshots are
/// walked: how many it may still keep, and the period of the last kept.
struct Counted {
    period: Period,
    left: i64,
    prev: Option<(i64, u32, u32, u32)>,
}

/// A `within_*` rule: its window's start and the period of the last kept.
struct WithinRule {
    period: Period,
    label: String,
    start: Option<DateTime<FixedOffset>>,
    prev: Option<(i64, u32, u32, u32)>,
}

/// The counted rules in the order `Counters` reports them.
fn counted_rules(policy: &RetentionPolicy) -> Vec<Counted> {
    [
        (Period::Last, policy.last),
        (Period::Hourly, policy.hourly),
        (Period::Daily, policy.daily),
        (Period::Weekly, policy.weekly),
        (Period::Monthly, policy.monthly),
        (Period::Yearly, policy.yearly),
    ]
    .into_iter()
    .map(|(period, n)| Counted {
        period,
        // Invalid negatives (< -1) are treated as off.
        left: if n >= -1 { n } else { 0 },
        prev: None,
    })
    .collect()
}

/// A rule's window: `None` when the rule is off, else its start (`None`
/// inside: no anchor, the window covers everything).
type WindowOf<'a> = &'a dyn Fn(&Option<KeepDuration>) -> Option<Option<DateTime<FixedOffset>>>;

/// The `within_*` rules that are set, with their windows (`start_of`).
fn within_rules(policy: &RetentionPolicy, start_of: WindowOf<'_>) -> Vec<WithinRule> {
    [
        (Period::Hourly, &policy.within_hourly),
        (Period::Daily, &policy.within_daily),
        (Period::Weekly, &policy.within_weekly),
        (Period::Monthly, &policy.within_monthly),
        (Period::Yearly, &policy.within_yearly),
    ]
    .into_iter()
    .filter_map(|(period, d)| {
        let start = start_of(d)?;
        Some(WithinRule {
            period,
            label: d.map(|d| d.to_string()).unwrap_or_default(),
            start,
            prev: None,
        })
    })
    .collect()
}

/// Selects the snapshots to keep, exactly as restic's `forget` does for one
/// group of snapshots.
///
/// `times` are the snapshot timestamps with the UTC offset they were written
/// with (buckets use that wall clock). `now` is used only to skip future
/// snapshots when choosing the keep-within anchor. Indices in the result refer
/// to `times`. An empty policy keeps nothing.
pub fn apply(
    times: &[DateTime<FixedOffset>],
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Decision {
    // Stable sort, newest first, by instant.
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]));

    // Anchor: newest snapshot strictly before now. No anchor: every window
    // covers everything.
    let anchor = order.iter().map(|&i| times[i]).find(|t| *t < now);
    let start_of = |d: &Option<KeepDuration>| -> Option<Option<DateTime<FixedOffset>>> {
        let d = d.as_ref().filter(|d| !d.is_zero())?;
        Some(anchor.as_ref().and_then(|a| window_start(a, d)))
    };

    // keep-within: (duration, window start).
    let within = policy.within.zip(start_of(&policy.within));

    let mut counted = counted_rules(policy);
    let mut within_rules = within_rules(policy, &start_of);

    let mut decision = Decision::default();
    let n = order.len();
    for (pos, &index) in order.iter().enumerate() {
        let t = &times[index];
        let is_oldest = pos + 1 == n;
        let mut reasons = Vec::new();

        if let Some((d, _)) = within.filter(|(_, start)| inside(t, start.as_ref())) {
            reasons.push(format!("within {d}"));
        }

        for rule in counted.iter_mut() {
            if !(rule.left > 0 || rule.left == -1) {
                continue;
            }
            let key = rule.period.key(t, pos);
            let repeat = rule.prev == Some(key);
            if !repeat || is_oldest {
                let prefix = if repeat { "oldest " } else { "" };
                reasons.push(format!("{prefix}{} snapshot", rule.period.name()));
                rule.prev = Some(key);
                if rule.left > 0 {
                    rule.left -= 1;
                }
            }
        }

        for rule in within_rules.iter_mut() {
            if !inside(t, rule.start.as_ref()) {
                continue;
            }
            let key = rule.period.key(t, pos);
            let repeat = rule.prev == Some(key);
            if !repeat || is_oldest {
                let prefix = if repeat { "oldest " } else { "" };
                reasons.push(format!(
                    "{prefix}{} within {}",
                    rule.period.name(),
                    rule.label
                ));
                rule.prev = Some(key);
            }
        }

        if reasons.is_empty() {
            decision.remove.push(index);
        } else {
            let c = |i: usize| counted[i].left;
            decision.keep.push(Kept {
                index,
                reasons,
                counters: Counters {
                    last: c(0),
                    hourly: c(1),
                    daily: c(2),
                    weekly: c(3),
                    monthly: c(4),
                    yearly: c(5),
                },
            });
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("bad test time {s:?}: {e}"))
    }

    fn now() -> DateTime<Utc> {
        ts("2030-01-01T00:00:00Z").with_timezone(&Utc)
    }

    fn dur(s: &str) -> Option<KeepDuration> {
        Some(s.parse().unwrap())
    }

    /// Kept timestamps (as given in the input) with their reasons, newest first.
    fn run(
        input: &[&str],
        policy: &RetentionPolicy,
        now: DateTime<Utc>,
    ) -> Vec<(String, Vec<String>)> {
        let times: Vec<_> = input.iter().map(|s| ts(s)).collect();
        let d = apply(&times, policy, now);
        let mut all: Vec<usize> = d
            .keep
            .iter()
            .map(|k| k.index)
            .chain(d.remove.iter().copied())
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..input.len()).collect::<Vec<_>>(),
            "keep+remove must partition input"
        );
        d.keep
            .iter()
            .map(|k| (input[k.index].to_string(), k.reasons.clone()))
            .collect()
    }

    fn kept(input: &[&str], policy: &RetentionPolicy) -> Vec<String> {
        run(input, policy, now())
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    struct Case {
        name: &'static str,
        input: &'static [&'static str],
        policy: RetentionPolicy,
        now: &'static str,
        /// (timestamp as in input, reasons joined with ", ")
        want: &'static [(&'static str, &'static str)],
    }

    fn p() -> RetentionPolicy {
        RetentionPolicy::default()
    }

    #[test]
    fn table() {
        let cases = vec![
            Case {
                name: "empty input",
                input: &[],
                policy: RetentionPolicy {
                    last: 3,
                    within: dur("1d"),
                    ..p()
                },
                now: "2030-01-01T00:00:00Z",
                want: &[],
            },
            Case {
                name: "empty policy keeps nothing",
                input: &["2021-01-01T00:00:00Z", "2021-01-02T00:00:00Z"],
                policy: p(),
                now: "2030-01-01T00:00:00Z",
                want: &[],
            },
            Case {
                name: "ISO week 2015-W53 spans New Year; yearly uses calendar year",
                input: &[
                    "2015-12-28T10:00:00Z",
                    "2015-12-31T10:00:00Z",
                    "2016-01-01T10:00:00Z",
                    "2016-01-03T10:00:00Z",
                    "2016-01-04T10:00:00Z",
                ],
                policy: RetentionPolicy {
                    weekly: 3,
                    yearly: 5,
                    ..p()
                },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2016-01-04T10:00:00Z", "weekly snapshot, yearly snapshot"),
                    ("2016-01-03T10:00:00Z", "weekly snapshot"),
                    ("2015-12-31T10:00:00Z", "yearly snapshot"),
                    (
                        "2015-12-28T10:00:00Z",
                        "oldest weekly snapshot, oldest yearly snapshot",
                    ),
                ],
            },
            Case {
                name: "2018-12-31 is ISO 2019-W01 but calendar year 2018",
                input: &[
                    "2018-12-30T12:00:00Z",
                    "2018-12-31T12:00:00Z",
                    "2019-01-02T12:00:00Z",
                ],
                policy: RetentionPolicy {
                    weekly: 5,
                    yearly: 5,
                    monthly: 5,
                    ..p()
                },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    (
                        "2019-01-02T12:00:00Z",
                        "weekly snapshot, monthly snapshot, yearly snapshot",
                    ),
                    ("2018-12-31T12:00:00Z", "monthly snapshot, yearly snapshot"),
                    (
                        "2018-12-30T12:00:00Z",
                        "weekly snapshot, oldest monthly snapshot, oldest yearly snapshot",
                    ),
                ],
            },
            Case {
                name: "ISO week from the own offset across New Year (2015-W53 vs 2016-W01)",
                input: &[
                    "2016-01-04T01:00:00Z",      // Monday: 2016-W01
                    "2016-01-03T23:30:00-05:00", // 01-04T04:30Z (newest), Sunday: 2015-W53
                    "2015-12-28T10:00:00Z",      // 2015-W53
                ],
                policy: RetentionPolicy { weekly: 2, ..p() },
                now: "2030-01-01T00:00:00Z",
                // In UTC the first two would share 2016-W01 and the 2015 one
                // would be kept instead.
                want: &[
                    ("2016-01-03T23:30:00-05:00", "weekly snapshot"),
                    ("2016-01-04T01:00:00Z", "weekly snapshot"),
                ],
            },
            Case {
                name: "own offset decides the calendar year",
                input: &[
                    "2021-12-31T23:30:00-05:00", // 2022-01-01T04:30Z, a 2021 snapshot
                    "2022-01-01T08:00:00+09:00", // 2021-12-31T23:00Z, a 2022 snapshot
                    "2022-01-01T12:00:00Z",
                ],
                policy: RetentionPolicy { yearly: 2, ..p() },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    // Sorted by instant: 12:00Z (2022), 04:30Z (2021), 23:00Z (2022).
                    ("2022-01-01T12:00:00Z", "yearly snapshot"),
                    ("2021-12-31T23:30:00-05:00", "yearly snapshot"),
                ],
            },
            Case {
                name: "own offset: daily keys and hours",
                input: &[
                    "2021-06-01T10:15:00+05:30",
                    "2021-06-01T10:45:00+05:30",
                    "2021-06-01T23:30:00-05:00", // 06-02T04:30Z, still daily 06-01
                ],
                policy: RetentionPolicy { hourly: 10, ..p() },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-06-01T23:30:00-05:00", "hourly snapshot"),
                    ("2021-06-01T10:45:00+05:30", "hourly snapshot"),
                    ("2021-06-01T10:15:00+05:30", "oldest hourly snapshot"),
                ],
            },
            Case {
                name: "several per day: newest of each day",
                input: &[
                    "2021-03-01T08:00:00Z",
                    "2021-03-01T20:00:00Z",
                    "2021-03-02T08:00:00Z",
                    "2021-03-02T20:00:00Z",
                    "2021-03-03T08:00:00Z",
                    "2021-03-03T20:00:00Z",
                ],
                policy: RetentionPolicy { daily: 2, ..p() },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-03-03T20:00:00Z", "daily snapshot"),
                    ("2021-03-02T20:00:00Z", "daily snapshot"),
                ],
            },
            Case {
                name: "oldest rule: counter left keeps the oldest, without 'oldest' when bucket is new",
                input: &[
                    "2021-03-01T08:00:00Z",
                    "2021-03-02T20:00:00Z",
                    "2021-03-03T08:00:00Z",
                ],
                policy: RetentionPolicy { daily: 10, ..p() },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-03-03T08:00:00Z", "daily snapshot"),
                    ("2021-03-02T20:00:00Z", "daily snapshot"),
                    ("2021-03-01T08:00:00Z", "daily snapshot"),
                ],
            },
            Case {
                name: "oldest rule uses a slot, and a finished rule does not keep it",
                input: &[
                    "2021-03-01T08:00:00Z",
                    "2021-03-01T09:00:00Z",
                    "2021-03-01T10:00:00Z",
                ],
                policy: RetentionPolicy {
                    daily: 2,
                    monthly: 1,
                    ..p()
                },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-03-01T10:00:00Z", "daily snapshot, monthly snapshot"),
                    ("2021-03-01T08:00:00Z", "oldest daily snapshot"),
                ],
            },
            Case {
                name: "identical timestamps: last=2 keeps two of three",
                input: &[
                    "2021-05-05T05:05:05Z",
                    "2021-05-05T05:05:05Z",
                    "2021-05-05T05:05:05Z",
                ],
                policy: RetentionPolicy { last: 2, ..p() },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-05-05T05:05:05Z", "last snapshot"),
                    ("2021-05-05T05:05:05Z", "last snapshot"),
                ],
            },
            Case {
                name: "gaps of months: only buckets with snapshots count",
                input: &[
                    "2020-01-15T00:00:00Z",
                    "2020-06-15T00:00:00Z",
                    "2020-06-20T00:00:00Z",
                    "2021-02-01T00:00:00Z",
                ],
                policy: RetentionPolicy { monthly: 2, ..p() },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-02-01T00:00:00Z", "monthly snapshot"),
                    ("2020-06-20T00:00:00Z", "monthly snapshot"),
                ],
            },
            Case {
                name: "unlimited hourly keeps one per hour plus the oldest",
                input: &[
                    "2021-01-01T10:05:00Z",
                    "2021-01-01T10:10:00Z",
                    "2021-01-01T11:00:00Z",
                    "2021-01-01T11:30:00Z",
                    "2021-01-01T14:00:00Z",
                ],
                policy: RetentionPolicy { hourly: -1, ..p() },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-01-01T14:00:00Z", "hourly snapshot"),
                    ("2021-01-01T11:30:00Z", "hourly snapshot"),
                    ("2021-01-01T10:10:00Z", "hourly snapshot"),
                    ("2021-01-01T10:05:00Z", "oldest hourly snapshot"),
                ],
            },
            Case {
                name: "mixed-offset bucket comebacks: daily keys 10,9,10,9,1 all kept",
                input: &[
                    "2021-01-09T11:00:00Z",      // 01-09T11:00Z, key 9
                    "2021-01-10T02:00:00+14:00", // 01-09T12:00Z, key 10
                    "2021-01-09T13:00:00Z",      // 01-09T13:00Z, key 9
                    "2021-01-10T04:00:00+14:00", // 01-09T14:00Z, key 10
                    "2021-01-01T00:00:00Z",
                ],
                policy: RetentionPolicy { daily: -1, ..p() },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-01-10T04:00:00+14:00", "daily snapshot"),
                    ("2021-01-09T13:00:00Z", "daily snapshot"),
                    ("2021-01-10T02:00:00+14:00", "daily snapshot"),
                    ("2021-01-09T11:00:00Z", "daily snapshot"),
                    ("2021-01-01T00:00:00Z", "daily snapshot"),
                ],
            },
            Case {
                name: "reason label order: within, counted rules, within_<period>",
                input: &["2021-01-01T00:00:00Z", "2021-06-01T00:00:00Z"],
                policy: RetentionPolicy {
                    last: 1,
                    hourly: 1,
                    daily: 1,
                    weekly: 1,
                    monthly: 1,
                    yearly: 1,
                    within: dur("1d1m1y"),
                    within_hourly: dur("1h"),
                    within_daily: dur("1d"),
                    within_weekly: dur("7d"),
                    within_monthly: dur("1m"),
                    within_yearly: dur("1y"),
                },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    (
                        "2021-06-01T00:00:00Z",
                        "within 1y1m1d, last snapshot, hourly snapshot, daily snapshot, \
                         weekly snapshot, monthly snapshot, yearly snapshot, hourly within 1h, \
                         daily within 1d, weekly within 7d, monthly within 1m, yearly within 1y",
                    ),
                    (
                        "2021-01-01T00:00:00Z",
                        "within 1y1m1d, oldest yearly within 1y",
                    ),
                ],
            },
            Case {
                name: "within anchors at the newest snapshot, not now; exact cutoff is outside",
                input: &[
                    "2021-01-08T12:00:00Z",
                    "2021-01-01T12:00:00Z",
                    "2021-01-01T12:00:01Z",
                ],
                policy: RetentionPolicy {
                    within: dur("7d"),
                    ..p()
                },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-01-08T12:00:00Z", "within 7d"),
                    ("2021-01-01T12:00:01Z", "within 7d"),
                ],
            },
            Case {
                name: "future snapshots: skipped for the anchor, inside the window, counted",
                input: &[
                    "2021-01-10T00:00:00Z",
                    "2021-01-05T00:00:00Z",
                    "2021-01-02T00:00:00Z",
                    "2021-02-01T00:00:00Z", // future
                    "2021-01-15T12:00:00Z", // exactly now: also future
                ],
                policy: RetentionPolicy {
                    within: dur("5d"),
                    last: 1,
                    ..p()
                },
                now: "2021-01-15T12:00:00Z",
                want: &[
                    ("2021-02-01T00:00:00Z", "within 5d, last snapshot"),
                    ("2021-01-15T12:00:00Z", "within 5d"),
                    ("2021-01-10T00:00:00Z", "within 5d"),
                ],
            },
            Case {
                name: "only future snapshots: no anchor, everything inside",
                input: &["2031-01-01T00:00:00Z", "2032-01-01T00:00:00Z"],
                policy: RetentionPolicy {
                    within: dur("1h"),
                    within_yearly: dur("1d"),
                    ..p()
                },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2032-01-01T00:00:00Z", "within 1h, yearly within 1d"),
                    ("2031-01-01T00:00:00Z", "within 1h, yearly within 1d"),
                ],
            },
            Case {
                name: "within_<period>: oldest clause only when the oldest is inside the window",
                input: &[
                    "2021-01-01T00:00:00Z",
                    "2021-03-10T00:00:00Z",
                    "2021-03-20T00:00:00Z",
                    "2021-03-31T00:00:00Z",
                ],
                policy: RetentionPolicy {
                    within_monthly: dur("1m"),
                    ..p()
                },
                now: "2030-01-01T00:00:00Z",
                // cutoff: 2021-02-31 = 2021-03-03 00:00 -> only the March ones are inside.
                want: &[("2021-03-31T00:00:00Z", "monthly within 1m")],
            },
            Case {
                name: "within_<period>: oldest inside the window gets the oldest label",
                input: &[
                    "2021-03-10T00:00:00Z",
                    "2021-03-20T00:00:00Z",
                    "2021-03-31T00:00:00Z",
                ],
                policy: RetentionPolicy {
                    within_monthly: dur("1m"),
                    ..p()
                },
                now: "2030-01-01T00:00:00Z",
                want: &[
                    ("2021-03-31T00:00:00Z", "monthly within 1m"),
                    ("2021-03-10T00:00:00Z", "oldest monthly within 1m"),
                ],
            },
            Case {
                name: "invalid negative count is off; zero duration is off",
                input: &["2021-01-01T00:00:00Z", "2021-01-02T00:00:00Z"],
                policy: RetentionPolicy {
                    last: -5,
                    within: dur(""),
                    daily: 1,
                    ..p()
                },
                now: "2030-01-01T00:00:00Z",
                want: &[("2021-01-02T00:00:00Z", "daily snapshot")],
            },
        ];

        for c in cases {
            let got = run(c.input, &c.policy, ts(c.now).with_timezone(&Utc));
            let got: Vec<(String, String)> =
                got.into_iter().map(|(t, r)| (t, r.join(", "))).collect();
            let want: Vec<(String, String)> = c
                .want
                .iter()
                .map(|(t, r)| (t.to_string(), r.to_string()))
                .collect();
            assert_eq!(got, want, "case: {}", c.name);
        }
    }

    #[test]
    fn stable_order_for_ties_and_oldest_is_last_in_input() {
        // Same instant, different offsets: stable input order is kept, and the
        // oldest snapshot is the tied one that came last in the input.
        let times = [
            ts("2021-01-01T12:00:00Z"),
            ts("2021-01-01T14:00:00+02:00"),
            ts("2021-01-01T07:00:00-05:00"),
        ];
        let d = apply(&times, &RetentionPolicy { last: -1, ..p() }, now());
        let order: Vec<usize> = d.keep.iter().map(|k| k.index).collect();
        assert_eq!(order, vec![0, 1, 2]);

        let d = apply(&times, &RetentionPolicy { yearly: 5, ..p() }, now());
        let kept: Vec<(usize, Vec<String>)> = d
            .keep
            .iter()
            .map(|k| (k.index, k.reasons.clone()))
            .collect();
        assert_eq!(
            kept,
            vec![
                (0, vec!["yearly snapshot".to_string()]),
                (2, vec!["oldest yearly snapshot".to_string()]),
            ]
        );
        assert_eq!(d.remove, vec![1]);
    }

    #[test]
    fn sort_is_by_instant_with_nanoseconds() {
        // "...30.1Z" sorts after "...30Z" by instant (but before it as text).
        let input = [
            "2021-01-01T10:20:30Z",
            "2021-01-01T10:20:30.1Z",
            "2021-01-01T10:20:29.999999999Z",
        ];
        assert_eq!(
            kept(&input, &RetentionPolicy { last: 1, ..p() }),
            vec!["2021-01-01T10:20:30.1Z"]
        );
        assert_eq!(
            kept(&input, &RetentionPolicy { last: 2, ..p() }),
            vec!["2021-01-01T10:20:30.1Z", "2021-01-01T10:20:30Z"]
        );
    }

    #[test]
    fn last_unlimited_keeps_everything_and_reports_counters() {
        let input = [
            "2021-01-01T00:00:00Z",
            "2021-01-01T00:00:00Z",
            "2020-05-01T00:00:00Z",
        ];
        let times: Vec<_> = input.iter().map(|s| ts(s)).collect();
        let d = apply(
            &times,
            &RetentionPolicy {
                last: -1,
                daily: 2,
                ..p()
            },
            now(),
        );
        assert_eq!(d.keep.len(), 3);
        assert!(d.remove.is_empty());
        let counters: Vec<(i64, i64)> = d
            .keep
            .iter()
            .map(|k| (k.counters.last, k.counters.daily))
            .collect();
        assert_eq!(counters, vec![(-1, 1), (-1, 1), (-1, 0)]);
    }

    #[test]
    fn newest_is_always_kept_by_any_counted_rule() {
        let input = [
            "2019-01-01T00:00:00Z",
            "2020-01-01T00:00:00Z",
            "2018-01-01T00:00:00Z",
        ];
        for policy in [
            RetentionPolicy { last: 1, ..p() },
            RetentionPolicy { hourly: 1, ..p() },
            RetentionPolicy { weekly: 1, ..p() },
            RetentionPolicy { yearly: 1, ..p() },
        ] {
            assert_eq!(kept(&input, &policy), vec!["2020-01-01T00:00:00Z"]);
        }
    }

    fn cutoff(anchor: &str, d: &str) -> Option<DateTime<FixedOffset>> {
        window_start(&ts(anchor), &d.parse().unwrap())
    }

    #[test]
    fn window_start_worked_examples_from_spec() {
        let cases = [
            ("2022-03-31T12:00:00Z", "1m", "2022-03-03T12:00:00Z"),
            ("2024-02-29T06:00:00Z", "1y", "2023-03-01T06:00:00Z"),
            ("2022-03-01T01:00:00Z", "1m1d2h", "2022-01-30T23:00:00Z"),
            ("2016-01-18T12:02:03Z", "1y2m3d3h", "2014-11-15T09:02:03Z"),
            (
                "2022-04-01T01:00:00+03:00",
                "1m",
                "2022-03-01T01:00:00+03:00",
            ),
            ("2022-01-15T00:00:00Z", "13m", "2020-12-15T00:00:00Z"),
            ("2022-01-05T00:00:00Z", "10d", "2021-12-26T00:00:00Z"),
            ("2022-01-01T00:30:00Z", "1h", "2021-12-31T23:30:00Z"),
        ];
        for (anchor, d, want) in cases {
            let got = cutoff(anchor, d).unwrap();
            assert_eq!(got, ts(want), "{anchor} - {d}");
            // The offset is the anchor's own.
            assert_eq!(got.offset(), ts(anchor).offset(), "{anchor} - {d}");
        }
        // Instant check of the offset example: not 03-03T22:00Z as in UTC.
        assert_eq!(
            cutoff("2022-04-01T01:00:00+03:00", "1m").unwrap(),
            ts("2022-02-28T22:00:00Z")
        );
        // Enormous durations cover everything.
        assert!(cutoff("2022-01-01T00:00:00Z", "2147483647y").is_none());
        assert!(cutoff("2016-01-18T12:02:03Z", "9999y").unwrap() < ts("0001-01-01T00:00:00Z"));
    }

    #[test]
    fn within_month_overflow_in_apply() {
        // A = 2022-03-31T12:00Z, "1m" -> cutoff 2022-03-03T12:00Z (not 02-28).
        let input = [
            "2022-03-31T12:00:00Z",
            "2022-03-03T12:00:01Z",
            "2022-03-03T12:00:00Z",
            "2022-03-01T00:00:00Z",
        ];
        assert_eq!(
            kept(
                &input,
                &RetentionPolicy {
                    within: dur("1m"),
                    ..p()
                }
            ),
            vec!["2022-03-31T12:00:00Z", "2022-03-03T12:00:01Z"]
        );
        // Leap day: A = 2024-02-29T06:00Z, "1y" -> 2023-03-01T06:00Z.
        let input = [
            "2024-02-29T06:00:00Z",
            "2023-03-01T06:00:01Z",
            "2023-03-01T06:00:00Z",
            "2023-02-28T07:00:00Z",
        ];
        assert_eq!(
            kept(
                &input,
                &RetentionPolicy {
                    within: dur("1y"),
                    ..p()
                }
            ),
            vec!["2024-02-29T06:00:00Z", "2023-03-01T06:00:01Z"]
        );
        // Anchor with its own offset: cutoff 2022-02-28T22:00Z.
        let input = [
            "2022-04-01T01:00:00+03:00",
            "2022-02-28T22:00:01Z",
            "2022-02-28T22:00:00Z",
        ];
        assert_eq!(
            kept(
                &input,
                &RetentionPolicy {
                    within: dur("1m"),
                    ..p()
                }
            ),
            vec!["2022-04-01T01:00:00+03:00", "2022-02-28T22:00:01Z"]
        );
        // Hours are elapsed time after the calendar step.
        let input = [
            "2022-03-01T01:00:00Z",
            "2022-01-30T23:00:01Z",
            "2022-01-30T23:00:00Z",
        ];
        assert_eq!(
            kept(
                &input,
                &RetentionPolicy {
                    within: dur("1m1d2h"),
                    ..p()
                }
            ),
            vec!["2022-03-01T01:00:00Z", "2022-01-30T23:00:01Z"]
        );
    }

    #[test]
    fn duration_parsing_and_canonical_text() {
        let ok = [
            ("1y1d1m", (1, 1, 1, 0), "1y1m1d"),
            ("", (0, 0, 0, 0), ""),
            ("  7d ", (0, 0, 7, 0), "7d"),
            ("1d2d", (0, 0, 2, 0), "2d"),
            ("13d23h", (0, 0, 13, 23), "13d23h"),
            ("2m2h", (0, 2, 0, 2), "2m2h"),
            ("-1d", (0, 0, -1, 0), "-1d"),
            ("0y5h", (0, 0, 0, 5), "5h"),
            ("9999y", (9999, 0, 0, 0), "9999y"),
        ];
        for (text, (years, months, days, hours), canonical) in ok {
            let d: KeepDuration = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(
                d,
                KeepDuration {
                    years,
                    months,
                    days,
                    hours
                },
                "{text:?}"
            );
            assert_eq!(d.to_string(), canonical, "{text:?}");
        }
        for bad in [
            "5",
            "1w",
            "1y 2m",
            "d",
            "-",
            "+1d",
            "1.5d",
            "99999999999d",
            "1Y",
        ] {
            let e = bad.parse::<KeepDuration>().unwrap_err();
            assert!(
                e.to_string().contains("expected <number><unit>"),
                "{bad:?}: {e}"
            );
        }
        assert!("".parse::<KeepDuration>().unwrap().is_zero());
    }

    #[test]
    fn policy_serde_validate_and_is_empty() {
        let policy: RetentionPolicy =
            serde_json::from_str(r#"{"daily": 7, "yearly": -1, "within": "1y1d1m"}"#).unwrap();
        assert_eq!(
            policy,
            RetentionPolicy {
                daily: 7,
                yearly: -1,
                within: Some(KeepDuration {
                    years: 1,
                    months: 1,
                    days: 1,
                    hours: 0
                }),
                ..p()
            }
        );
        assert!(policy.validate().is_ok());
        assert!(!policy.is_empty());
        let text = serde_json::to_string(&policy).unwrap();
        assert!(text.contains(r#""within":"1y1m1d""#), "{text}");
        assert_eq!(
            serde_json::from_str::<RetentionPolicy>(&text).unwrap(),
            policy
        );

        let err = serde_json::from_str::<RetentionPolicy>(r#"{"within": "1w"}"#).unwrap_err();
        assert!(
            err.to_string().contains("expected <number><unit> parts"),
            "{err}"
        );
        let err = serde_json::from_str::<RetentionPolicy>(r#"{"within": 5}"#).unwrap_err();
        assert!(
            err.to_string().contains("a duration string such as"),
            "{err}"
        );
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"keep_daily": 1}"#).is_err());

        assert!(p().is_empty());
        let zero_within = RetentionPolicy {
            within: dur(""),
            ..p()
        };
        assert!(zero_within.is_empty());
        let weekly_within = RetentionPolicy {
            within_weekly: dur("1d"),
            ..p()
        };
        assert!(!weekly_within.is_empty());
        assert!(!RetentionPolicy { last: -1, ..p() }.is_empty());

        let e = RetentionPolicy { hourly: -2, ..p() }
            .validate()
            .unwrap_err();
        assert!(
            e.contains("hourly") && e.contains("-1 for unlimited"),
            "{e}"
        );
        let e = RetentionPolicy {
            within_daily: dur("-3d"),
            ..p()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("within_daily") && e.contains("negative"), "{e}");
        let unlimited = RetentionPolicy {
            last: -1,
            monthly: 0,
            ..p()
        };
        assert!(unlimited.validate().is_ok());
    }

    // ---- Golden cases ported from restic ----
    //
    // Input: `testExpireSnapshots` in restic/restic
    // internal/data/snapshot_policy_test.go (all UTC). Expected keep lists,
    // reasons and counters: restic/restic internal/data/testdata/
    // policy_keep_snapshots_{15,16,24,32,39} and
    // internal/restic/testdata/policy_keep_snapshots_35 (the policies are the
    // entries with those indices in the test's `tests` table).

    const RESTIC_INPUT: &[&str] = &[
        "2014-09-01 10:20:30",
        "2014-09-02 10:20:30",
        "2014-09-05 10:20:30",
        "2014-09-06 10:20:30",
        "2014-09-08 10:20:30",
        "2014-09-09 10:20:30",
        "2014-09-10 10:20:30",
        "2014-09-11 10:20:30",
        "2014-09-20 10:20:30",
        "2014-09-22 10:20:30",
        "2014-08-08 10:20:30",
        "2014-08-10 10:20:30",
        "2014-08-12 10:20:30",
        "2014-08-13 10:20:30",
        "2014-08-13 10:20:30.1",
        "2014-08-15 10:20:30",
        "2014-08-18 10:20:30",
        "2014-08-20 10:20:30",
        "2014-08-21 10:20:30",
        "2014-08-22 10:20:30",
        "2014-10-01 10:20:30",
        "2014-10-02 10:20:30",
        "2014-10-05 10:20:30",
        "2014-10-06 10:20:30",
        "2014-10-08 10:20:30",
        "2014-10-09 10:20:30",
        "2014-10-10 10:20:30",
        "2014-10-11 10:20:30",
        "2014-10-20 10:20:30",
        "2014-10-22 10:20:30",
        "2014-11-08 10:20:30",
        "2014-11-10 10:20:30",
        "2014-11-12 10:20:30",
        "2014-11-13 10:20:30",
        "2014-11-13 10:20:30.1",
        "2014-11-15 10:20:30",
        "2014-11-18 10:20:30",
        "2014-11-20 10:20:30",
        "2014-11-21 10:20:30",
        "2014-11-22 10:20:30",
        "2015-09-01 10:20:30",
        "2015-09-02 10:20:30",
        "2015-09-05 10:20:30",
        "2015-09-06 10:20:30",
        "2015-09-08 10:20:30",
        "2015-09-09 10:20:30",
        "2015-09-10 10:20:30",
        "2015-09-11 10:20:30",
        "2015-09-20 10:20:30",
        "2015-09-22 10:20:30",
        "2015-08-08 10:20:30",
        "2015-08-10 10:20:30",
        "2015-08-12 10:20:30",
        "2015-08-13 10:20:30",
        "2015-08-13 10:20:30.1",
        "2015-08-15 10:20:30",
        "2015-08-18 10:20:30",
        "2015-08-20 10:20:30",
        "2015-08-21 10:20:30",
        "2015-08-22 10:20:30",
        "2015-10-01 10:20:30",
        "2015-10-02 10:20:30",
        "2015-10-05 10:20:30",
        "2015-10-06 10:20:30",
        "2015-10-08 10:20:30",
        "2015-10-09 10:20:30",
        "2015-10-10 10:20:30",
        "2015-10-11 10:20:30",
        "2015-10-20 10:20:30",
        "2015-10-22 10:20:30",
        "2015-10-22 10:20:30",
        "2015-10-22 10:20:30",
        "2015-10-22 10:20:30",
        "2015-10-22 10:20:30",
        "2015-11-08 10:20:30",
        "2015-11-10 10:20:30",
        "2015-11-12 10:20:30",
        "2015-11-13 10:20:30",
        "2015-11-13 10:20:30.1",
        "2015-11-15 10:20:30",
        "2015-11-18 10:20:30",
        "2015-11-20 10:20:30",
        "2015-11-21 10:20:30",
        "2015-11-22 10:20:30",
        "2016-01-01 01:02:03",
        "2016-01-01 01:03:03",
        "2016-01-01 07:08:03",
        "2016-01-03 07:02:03",
        "2016-01-04 10:23:03",
        "2016-01-04 11:23:03",
        "2016-01-04 12:23:03",
        "2016-01-04 12:24:03",
        "2016-01-04 12:28:03",
        "2016-01-04 12:30:03",
        "2016-01-04 16:23:03",
        "2016-01-05 09:02:03",
        "2016-01-06 08:02:03",
        "2016-01-07 10:02:03",
        "2016-01-08 20:02:03",
        "2016-01-09 21:02:03",
        "2016-01-12 21:02:03",
        "2016-01-12 21:08:03",
        "2016-01-18 12:02:03",
    ];

    fn restic_times() -> Vec<DateTime<FixedOffset>> {
        RESTIC_INPUT
            .iter()
            .map(|s| {
                chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                    .unwrap()
                    .and_utc()
                    .fixed_offset()
            })
            .collect()
    }

    /// (time as restic's golden file prints it, reasons, counters as
    /// [last, hourly, daily, weekly, monthly, yearly]).
    type Golden = &'static [(&'static str, &'static [&'static str], [i64; 6])];

    fn check_golden(name: &str, policy: RetentionPolicy, want: Golden) {
        let times = restic_times();
        // restic's golden run used time.Now(): every snapshot is in the past.
        let d = apply(&times, &policy, now());
        let got: Vec<(String, Vec<String>, [i64; 6])> = d
            .keep
            .iter()
            .map(|k| {
                let c = k.counters;
                (
                    times[k.index].to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    k.reasons.clone(),
                    [c.last, c.hourly, c.daily, c.weekly, c.monthly, c.yearly],
                )
            })
            .collect();
        let want: Vec<(String, Vec<String>, [i64; 6])> = want
            .iter()
            .map(|(t, r, c)| (t.to_string(), r.iter().map(|s| s.to_string()).collect(), *c))
            .collect();
        assert_eq!(got, want, "golden {name}");
        assert_eq!(d.keep.len() + d.remove.len(), times.len());
    }

    #[test]
    fn golden_restic_15_daily2_weekly2_monthly6() {
        check_golden(
            "policy_keep_snapshots_15",
            RetentionPolicy {
                daily: 2,
                weekly: 2,
                monthly: 6,
                ..p()
            },
            &[
                (
                    "2016-01-18T12:02:03Z",
                    &["daily snapshot", "weekly snapshot", "monthly snapshot"],
                    [0, 0, 1, 1, 5, 0],
                ),
                (
                    "2016-01-12T21:08:03Z",
                    &["daily snapshot", "weekly snapshot"],
                    [0, 0, 0, 0, 5, 0],
                ),
                (
                    "2015-11-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, 4, 0],
                ),
                (
                    "2015-10-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, 3, 0],
                ),
                (
                    "2015-09-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, 2, 0],
                ),
                (
                    "2015-08-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, 1, 0],
                ),
                (
                    "2014-11-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, 0, 0],
                ),
            ],
        );
    }

    #[test]
    fn golden_restic_16_yearly10() {
        check_golden(
            "policy_keep_snapshots_16",
            RetentionPolicy { yearly: 10, ..p() },
            &[
                (
                    "2016-01-18T12:02:03Z",
                    &["yearly snapshot"],
                    [0, 0, 0, 0, 0, 9],
                ),
                (
                    "2015-11-22T10:20:30Z",
                    &["yearly snapshot"],
                    [0, 0, 0, 0, 0, 8],
                ),
                (
                    "2014-11-22T10:20:30Z",
                    &["yearly snapshot"],
                    [0, 0, 0, 0, 0, 7],
                ),
                (
                    "2014-08-08T10:20:30Z",
                    &["oldest yearly snapshot"],
                    [0, 0, 0, 0, 0, 6],
                ),
            ],
        );
    }

    #[test]
    fn golden_restic_24_within_1m() {
        const W: &[&str] = &["within 1m"];
        check_golden(
            "policy_keep_snapshots_24",
            RetentionPolicy {
                within: dur("1m"),
                ..p()
            },
            &[
                ("2016-01-18T12:02:03Z", W, [0; 6]),
                ("2016-01-12T21:08:03Z", W, [0; 6]),
                ("2016-01-12T21:02:03Z", W, [0; 6]),
                ("2016-01-09T21:02:03Z", W, [0; 6]),
                ("2016-01-08T20:02:03Z", W, [0; 6]),
                ("2016-01-07T10:02:03Z", W, [0; 6]),
                ("2016-01-06T08:02:03Z", W, [0; 6]),
                ("2016-01-05T09:02:03Z", W, [0; 6]),
                ("2016-01-04T16:23:03Z", W, [0; 6]),
                ("2016-01-04T12:30:03Z", W, [0; 6]),
                ("2016-01-04T12:28:03Z", W, [0; 6]),
                ("2016-01-04T12:24:03Z", W, [0; 6]),
                ("2016-01-04T12:23:03Z", W, [0; 6]),
                ("2016-01-04T11:23:03Z", W, [0; 6]),
                ("2016-01-04T10:23:03Z", W, [0; 6]),
                ("2016-01-03T07:02:03Z", W, [0; 6]),
                ("2016-01-01T07:08:03Z", W, [0; 6]),
                ("2016-01-01T01:03:03Z", W, [0; 6]),
                ("2016-01-01T01:02:03Z", W, [0; 6]),
            ],
        );
    }

    #[test]
    fn golden_restic_26_within_1y1d1m_keeps_everything_after_cutoff() {
        // policy_keep_snapshots_26: every snapshot after 2014-12-17T12:02:03Z
        // (63 of them, including the five identical 2015-10-22 ones), each
        // with the single reason "within 1y1m1d".
        let times = restic_times();
        let d = apply(
            &times,
            &RetentionPolicy {
                within: dur("1y1d1m"),
                ..p()
            },
            now(),
        );
        assert_eq!(d.keep.len(), 63);
        let cutoff = ts("2014-12-17T12:02:03Z");
        for k in &d.keep {
            assert!(times[k.index] > cutoff);
            assert_eq!(k.reasons, vec!["within 1y1m1d".to_string()]);
        }
        for &i in &d.remove {
            assert!(times[i] <= cutoff);
        }
    }

    #[test]
    fn golden_restic_32_within_weekly() {
        const W: &[&str] = &["weekly within 1y2m3d3h"];
        check_golden(
            "policy_keep_snapshots_32",
            RetentionPolicy {
                within_weekly: dur("1y2m3d3h"),
                ..p()
            },
            &[
                ("2016-01-18T12:02:03Z", W, [0; 6]),
                ("2016-01-12T21:08:03Z", W, [0; 6]),
                ("2016-01-09T21:02:03Z", W, [0; 6]),
                ("2016-01-03T07:02:03Z", W, [0; 6]),
                ("2015-11-22T10:20:30Z", W, [0; 6]),
                ("2015-11-15T10:20:30Z", W, [0; 6]),
                ("2015-11-08T10:20:30Z", W, [0; 6]),
                ("2015-10-22T10:20:30Z", W, [0; 6]),
                ("2015-10-11T10:20:30Z", W, [0; 6]),
                ("2015-10-02T10:20:30Z", W, [0; 6]),
                ("2015-09-22T10:20:30Z", W, [0; 6]),
                ("2015-09-20T10:20:30Z", W, [0; 6]),
                ("2015-09-11T10:20:30Z", W, [0; 6]),
                ("2015-09-06T10:20:30Z", W, [0; 6]),
                ("2015-08-22T10:20:30Z", W, [0; 6]),
                ("2015-08-15T10:20:30Z", W, [0; 6]),
                ("2015-08-08T10:20:30Z", W, [0; 6]),
                ("2014-11-22T10:20:30Z", W, [0; 6]),
                ("2014-11-15T10:20:30Z", W, [0; 6]),
            ],
        );
    }

    #[test]
    fn golden_restic_35_all_within_rules() {
        check_golden(
            "policy_keep_snapshots_35",
            RetentionPolicy {
                within: dur("1h"),
                within_hourly: dur("1d"),
                within_daily: dur("7d"),
                within_weekly: dur("1m"),
                within_monthly: dur("1y"),
                within_yearly: dur("9999y"),
                ..p()
            },
            &[
                (
                    "2016-01-18T12:02:03Z",
                    &[
                        "within 1h",
                        "hourly within 1d",
                        "daily within 7d",
                        "weekly within 1m",
                        "monthly within 1y",
                        "yearly within 9999y",
                    ],
                    [0; 6],
                ),
                (
                    "2016-01-12T21:08:03Z",
                    &["daily within 7d", "weekly within 1m"],
                    [0; 6],
                ),
                ("2016-01-09T21:02:03Z", &["weekly within 1m"], [0; 6]),
                ("2016-01-03T07:02:03Z", &["weekly within 1m"], [0; 6]),
                (
                    "2015-11-22T10:20:30Z",
                    &["monthly within 1y", "yearly within 9999y"],
                    [0; 6],
                ),
                ("2015-10-22T10:20:30Z", &["monthly within 1y"], [0; 6]),
                ("2015-09-22T10:20:30Z", &["monthly within 1y"], [0; 6]),
                ("2015-08-22T10:20:30Z", &["monthly within 1y"], [0; 6]),
                ("2014-11-22T10:20:30Z", &["yearly within 9999y"], [0; 6]),
                (
                    "2014-08-08T10:20:30Z",
                    &["oldest yearly within 9999y"],
                    [0; 6],
                ),
            ],
        );
    }

    #[test]
    fn golden_restic_39_daily3_weekly2_monthly_yearly_unlimited() {
        check_golden(
            "policy_keep_snapshots_39",
            RetentionPolicy {
                daily: 3,
                weekly: 2,
                monthly: -1,
                yearly: -1,
                ..p()
            },
            &[
                (
                    "2016-01-18T12:02:03Z",
                    &[
                        "daily snapshot",
                        "weekly snapshot",
                        "monthly snapshot",
                        "yearly snapshot",
                    ],
                    [0, 0, 2, 1, -1, -1],
                ),
                (
                    "2016-01-12T21:08:03Z",
                    &["daily snapshot", "weekly snapshot"],
                    [0, 0, 1, 0, -1, -1],
                ),
                (
                    "2016-01-09T21:02:03Z",
                    &["daily snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
                (
                    "2015-11-22T10:20:30Z",
                    &["monthly snapshot", "yearly snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
                (
                    "2015-10-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
                (
                    "2015-09-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
                (
                    "2015-08-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
                (
                    "2014-11-22T10:20:30Z",
                    &["monthly snapshot", "yearly snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
                (
                    "2014-10-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
                (
                    "2014-09-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
                (
                    "2014-08-22T10:20:30Z",
                    &["monthly snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
                (
                    "2014-08-08T10:20:30Z",
                    &["oldest monthly snapshot", "oldest yearly snapshot"],
                    [0, 0, 0, 0, -1, -1],
                ),
            ],
        );
    }
}
