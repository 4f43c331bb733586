//! Cron schedules for policies: parsing standard (Vixie) cron expressions,
//! computing upcoming run times, and the catch-up rule ([`Schedule::is_due`]).
//!
//! Expressions have 5 fields (`min hour day-of-month month day-of-week`) or 6
//! with a leading seconds field, or one of the shortcuts `@hourly`, `@daily`
//! (`@midnight`), `@weekly`, `@monthly`, `@yearly` (`@annually`). Semantics
//! follow Vixie cron: day-of-week `0` and `7` are Sunday, `1` is Monday; when
//! both day-of-month and day-of-week are restricted (neither starts with `*`),
//! a day matches if *either* matches. Evaluation uses the wall clock of the
//! time zone of the `DateTime` passed in: production code passes
//! `DateTime<chrono::Local>`, tests pass a fixed offset. The `cron` crate does
//! the calendar search; this module translates the expression for it (that
//! crate numbers weekdays 1-7 from Sunday and always ANDs the two day fields).
//!
//! Daylight-saving changes are handled as Vixie cron does. A job at a fixed
//! time (neither the minute nor the hour field starts with `*`, e.g.
//! `30 2 * * *`) whose time is skipped when the clocks go forward runs at the
//! moment of the change (03:00 on a night that jumps from 02:00 to 03:00),
//! and runs once, not twice, when the clocks go back and its time comes
//! twice. Jobs with `*` in the minute or hour field (`15 * * * *`,
//! `*/5 * * * *`, `@hourly`) follow the clock: nothing for the skipped hour,
//! each occurrence of a repeated one.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, MappedLocalTime, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const EXPECTED: &str =
    "expected 5 fields (min hour day month weekday) or 6 with seconds, e.g. \"30 2 * * *\"";

/// A parsed cron schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    source: String,
    /// An instant matches the schedule if it matches any of these (two of them
    /// only for Vixie's "day-of-month OR day-of-week" case).
    parts: Vec<cron::Schedule>,
    /// Neither the minute nor the hour field starts with `*`: Vixie cron's
    /// "job at a particular time", whose skipped or repeated occurrences at a
    /// daylight-saving change run once.
    fixed_time: bool,
}

/// Error from parsing a [`Schedule`]; the message says what is expected and
/// includes the underlying problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule {input:?}: {EXPECTED} ({detail})")]
pub struct ScheduleError {
    pub input: String,
    pub detail: String,
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |detail: String| ScheduleError {
            input: input.to_string(),
            detail,
        };
        let trimmed = input.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => {
                return Err(err(format!(
                    "unsupported shortcut {trimmed:?}; supported: @hourly, @daily, @midnight, \
                     @weekly, @monthly, @yearly, @annually"
                )));
            }
            _ => trimmed,
        };
        let mut fields: Vec<&str> = expanded.split_whitespace().collect();
        match fields.len() {
            5 => fields.insert(0, "0"),
            6 => {}
            n => return Err(err(format!("got {n} fields"))),
        }
        let (dom, dow) = (fields[3], fields[5]);
        let dow_translated = translate_dow(dow).map_err(|e| err(format!("weekday field: {e}")))?;
        let is_star = |f: &str| f.starts_with('*') || f.starts_with('?');
        let build = |dom: &str, dow: &str| -> Result<cron::Schedule, ScheduleError> {
            let text = format!(
                "{} {} {} {} {} {}",
                fields[0], fields[1], fields[2], dom, fields[4], dow
            );
            cron::Schedule::from_str(&text).map_err(|e| err(cron_error_detail(&text, &e)))
        };
        let parts = if is_star(dom) || is_star(dow) {
            vec![build(dom, &dow_translated)?]
        } else {
            // Vixie cron: both day fields restricted -> either may match.
            vec![build(dom, "*")?, build("*", &dow_translated)?]
        };
        Ok(Schedule {
            source: trimmed.to_string(),
            parts,
            fixed_time: !is_star(fields[1]) && !is_star(fields[2]),
        })
    }
}

/// Condenses a `cron` crate error (which quotes the translated expression,
/// with a caret under the problem) into one line naming the field.
fn cron_error_detail(text: &str, e: &cron::error::Error) -> String {
    const NAMES: [&str; 6] = [
        "second",
        "minute",
        "hour",
        "day-of-month",
        "month",
        "weekday",
    ];
    let message = e.to_string();
    let lines: Vec<&str> = message.lines().collect();
    let field = lines
        .iter()
        .find_map(|l| l.trim_end().ends_with('^').then(|| l.trim_end().len() - 1))
        .and_then(|col| {
            let before = text.get(..col.min(text.len()))?;
            let index = before.split_whitespace().count();
            // A caret at a field's first character has not counted it yet.
            let index = if before.ends_with(char::is_whitespace) || before.is_empty() {
                index
            } else {
                index - 1
            };
            NAMES.get(index)
        });
    let reason = lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty() && !l.ends_with('^') && *l != text)
        .unwrap_or("syntax error");
    match field {
        Some(field) => format!("cron: {field} field: {reason}"),
        None => format!("cron: {reason}"),
    }
}

/// Weekday names accepted in the day-of-week field (Vixie numbering).
fn weekday_number(name: &str) -> Option<u32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "sun" | "sunday" => 0,
        "mon" | "monday" => 1,
        "tue" | "tues" | "tuesday" => 2,
        "wed" | "wednesday" => 3,
        "thu" | "thurs" | "thursday" => 4,
        "fri" | "friday" => 5,
        "sat" | "saturday" => 6,
        _ => return None,
    })
}

/// Rewrites a Vixie day-of-week field (0-7, 0 and 7 = Sunday, names, ranges,
/// lists, steps) as an explicit list in the `cron` crate's numbering (1-7,
/// 1 = Sunday). `*` and `?` are passed through.
fn translate_dow(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let value = |s: &str| -> Result<u32, String> {
        match s.parse::<u32>() {
            Ok(n) if n <= 7 => Ok(n),
            Ok(n) => Err(format!("{n} is out of range 0-7 (0 and 7 = Sunday)")),
            Err(_) => weekday_number(s).ok_or_else(|| format!("{s:?} is not a day of the week")),
        }
    };
    let mut days = BTreeSet::new();
    for element in field.split(',') {
        let (base, step) = match element.split_once('/') {
            Some((base, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|&s| s >= 1)
                    .ok_or_else(|| format!("invalid step {step:?} in {element:?}"))?;
                (base, step)
            }
            None => (element, 1),
        };
        let (start, end) = if base == "*" || base == "?" {
            (0, 7)
        } else if let Some((a, b)) = base.split_once('-') {
            (value(a)?, value(b)?)
        } else if element.contains('/') {
            // "N/step" means "from N to the end, every step".
            (value(base)?, 7)
        } else {
            let v = value(base)?;
            (v, v)
        };
        if start > end {
            return Err(format!("range {base:?} runs backwards"));
        }
        days.extend((start..=end).step_by(step as usize).map(|d| d % 7));
    }
    Ok(days
        .iter()
        .map(|d| (d + 1).to_string())
        .collect::<Vec<_>>()
        .join(","))
}

impl Schedule {
    /// The expression as written (trimmed).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first occurrence strictly after `t`, in `t`'s time zone (whose wall
    /// clock the expression is evaluated against). `None` if there is none.
    ///
    /// The expression is matched against wall-clock times, which are then
    /// mapped to instants (see the module documentation for daylight-saving
    /// changes): a wall-clock time that does not exist is, for a fixed-time
    /// job, the instant the clocks jump past it (otherwise skipped); one that
    /// exists twice is its first instant for a fixed-time job, both otherwise.
    pub fn next_after<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        // Occurrences more than this far apart in wall-clock time cannot swap
        // order when mapped to instants (clock changes are shorter).
        const MARGIN: TimeDelta = TimeDelta::hours(3);
        let tz = t.timezone();
        let local = t.naive_local();
        // In the first pass of a repeated hour, wall-clock times earlier than
        // `t`'s come again later (their second instants).
        let mut from = match tz.from_local_datetime(&local) {
            MappedLocalTime::Ambiguous(first, _) if first == *t && !self.fixed_time => {
                local - MARGIN
            }
            _ => local,
        };
        // The best instant so far, its wall-clock time, and whether it is
        // the second instant of a repeated time (later wall-clock times may
        // then still map to earlier instants).
        let mut best: Option<(DateTime<Tz>, NaiveDateTime, bool)> = None;
        while let Some(n) = self.next_wall_clock_after(&from) {
            if let Some((_, at, second)) = &best {
                if n > *at + if *second { MARGIN } else { TimeDelta::zero() } {
                    break;
                }
            }
            let mut candidates: Vec<(DateTime<Tz>, bool)> = Vec::new();
            match tz.from_local_datetime(&n) {
                MappedLocalTime::Single(x) => candidates.push((x, false)),
                MappedLocalTime::Ambiguous(first, second) => {
                    candidates.push((first, false));
                    if !self.fixed_time {
                        candidates.push((second, true));
                    }
                }
                MappedLocalTime::None if self.fixed_time => {
                    candidates.extend(gap_end(&tz, &n).map(|x| (x, false)));
                }
                MappedLocalTime::None => {}
            }
            for (c, second) in candidates {
                if c > *t && best.as_ref().is_none_or(|(b, _, _)| c < *b) {
                    best = Some((c, n, second));
                }
            }
            from = n;
        }
        best.map(|(b, _, _)| b)
    }

    /// The first wall-clock time strictly after `n` that the expression matches.
    fn next_wall_clock_after(&self, n: &NaiveDateTime) -> Option<NaiveDateTime> {
        let at = Utc.from_utc_datetime(n);
        self.parts
            .iter()
            .filter_map(|s| s.after(&at).next())
            .min()
            .map(|d| d.naive_utc())
    }

    /// The next `n` occurrences strictly after `t`, in increasing order.
    pub fn upcoming<Tz: TimeZone>(&self, t: &DateTime<Tz>, n: usize) -> Vec<DateTime<Tz>> {
        let mut out: Vec<DateTime<Tz>> = Vec::with_capacity(n);
        while out.len() < n {
            let from = out.last().unwrap_or(t);
            match self.next_after(from) {
                Some(next) => out.push(next),
                None => break,
            }
        }
        out
    }

    /// The catch-up rule: true iff the schedule has an occurrence in
    /// `(last_success, now]`. However many occurrences were missed (machine
    /// off for a night or a week), the answer is one `true`: the runner runs
    /// once, and after that run succeeds the policy is not due again until the
    /// next occurrence. With no recorded success (`None`) the policy is due.
    /// A `last_success` after `now` (clock stepped back) is not due. The wall
    /// clock of `now`'s time zone is used.
    pub fn is_due<Tz: TimeZone>(
        &self,
        last_success: Option<&DateTime<Tz>>,
        now: &DateTime<Tz>,
    ) -> bool {
        match last_success {
            None => true,
            Some(last) => self
                .next_after(&last.with_timezone(&now.timezone()))
                .is_some_and(|next| next <= *now),
        }
    }
}

/// The instant the clocks jump past `n`, a wall-clock time that does not
/// exist in `tz` (skipped when they went forward): one minute after the last
/// existing minute before it. None if there is none within three hours.
fn gap_end<Tz: TimeZone>(tz: &Tz, n: &NaiveDateTime) -> Option<DateTime<Tz>> {
    let minute = n.with_second(0)?.with_nanosecond(0)?;
    (1..=180).find_map(|k| {
        tz.from_local_datetime(&(minute - TimeDelta::minutes(k)))
            .latest()
            .map(|before| before + TimeDelta::minutes(1))
    })
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a jitter such as `"30s"`, `"10m"` (minutes) or `"1h"`; parts may be
/// combined (`"1h30m"`). Surrounding whitespace is ignored.
pub fn parse_jitter(text: &str) -> Result<Duration, String> {
    parse_duration(text, "jitter")
}

/// Parses an elapsed time in the one duration grammar
/// ([`crate::duration`]: `"30s"`, `"10m"`, `"1h30m"`, `"2d"`); `what` names
/// the value in the error message.
pub fn parse_duration(text: &str, what: &str) -> Result<Duration, String> {
    crate::duration::parse_elapsed(text).map_err(|e| format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, FixedOffset, Local, Utc, Weekday};

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn sched(s: &str) -> Schedule {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn next(expr: &str, after: &str) -> String {
        sched(expr).next_after(&t(after)).unwrap().to_rfc3339()
    }

    fn weekdays(expr: &str) -> Vec<Weekday> {
        // 2024-05-05 is a Sunday; two weeks of daily-or-less occurrences.
        let s = sched(expr);
        let mut out: Vec<Weekday> = s
            .upcoming(&t("2024-05-04T23:00:00+00:00"), 14)
            .iter()
            .map(|d| d.weekday())
            .collect();
        out.truncate(7);
        out
    }

    #[test]
    fn five_and_six_fields_in_the_given_zone() {
        assert_eq!(
            next("30 2 * * *", "2024-05-01T00:00:00+02:00"),
            "2024-05-01T02:30:00+02:00"
        );
        assert_eq!(
            next("30 2 * * *", "2024-05-01T02:30:00+02:00"),
            "2024-05-02T02:30:00+02:00"
        );
        assert_eq!(
            next("15 30 2 * * *", "2024-05-01T00:00:00-07:00"),
            "2024-05-01T02:30:15-07:00"
        );
        assert_eq!(
            next("*/15 * * * *", "2024-05-01T10:07:59+00:00"),
            "2024-05-01T10:15:00+00:00"
        );
        assert_eq!(
            next("0 0 1 */3 *", "2024-05-01T10:00:00+00:00"),
            "2024-07-01T00:00:00+00:00"
        );
        // Sub-second: strictly after.
        assert_eq!(
            next("30 2 * * *", "2024-05-01T02:29:59.5+00:00"),
            "2024-05-01T02:30:00+00:00"
        );
        assert_eq!(
            next("30 2 * * *", "2024-05-01T02:30:00.5+00:00"),
            "2024-05-02T02:30:00+00:00"
        );
        // The wall clock of the zone decides: 03:00 at +05:00 is 22:00Z the day before.
        let d = sched("0 3 * * *")
            .next_after(&t("2024-05-01T12:00:00+05:00"))
            .unwrap();
        assert_eq!(
            d.with_timezone(&Utc).to_rfc3339(),
            "2024-05-01T22:00:00+00:00"
        );
    }

    #[test]
    fn weekday_numbers_follow_vixie_cron() {
        use Weekday::*;
        // 2024-05-01 is a Wednesday; "1" is Monday.
        let d = sched("0 3 * * 1")
            .next_after(&t("2024-05-01T00:00:00+00:00"))
            .unwrap();
        assert_eq!(
            (d.weekday(), d.to_rfc3339().as_str()),
            (Mon, "2024-05-06T03:00:00+00:00")
        );
        assert_eq!(weekdays("0 3 * * 0"), vec![Sun; 7]);
        assert_eq!(weekdays("0 3 * * 7"), vec![Sun; 7]);
        assert_eq!(weekdays("0 3 * * 6"), vec![Sat; 7]);
        assert_eq!(
            weekdays("0 3 * * 1-5"),
            vec![Mon, Tue, Wed, Thu, Fri, Mon, Tue]
        );
        assert_eq!(
            weekdays("0 3 * * 0,6"),
            vec![Sun, Sat, Sun, Sat, Sun, Sat, Sun]
        );
        assert_eq!(
            weekdays("0 3 * * */2"),
            vec![Sun, Tue, Thu, Sat, Sun, Tue, Thu]
        );
        assert_eq!(
            weekdays("0 3 * * 1-5/2"),
            vec![Mon, Wed, Fri, Mon, Wed, Fri, Mon]
        );
        assert_eq!(
            weekdays("0 3 * * 5-7"),
            vec![Sun, Fri, Sat, Sun, Fri, Sat, Sun]
        );
        assert_eq!(
            weekdays("0 3 * * 4/2"),
            vec![Thu, Sat, Thu, Sat, Thu, Sat, Thu]
        );
        assert_eq!(weekdays("0 3 * * MON"), vec![Mon; 7]);
        assert_eq!(weekdays("0 3 * * tue"), vec![Tue; 7]);
        assert_eq!(
            weekdays("0 3 * * mon-fri"),
            vec![Mon, Tue, Wed, Thu, Fri, Mon, Tue]
        );
        assert_eq!(
            weekdays("0 3 * * sat,0"),
            vec![Sun, Sat, Sun, Sat, Sun, Sat, Sun]
        );
        assert_eq!(weekdays("0 0 3 * * 1"), vec![Mon; 7]); // 6-field form too
        assert_eq!(
            weekdays("0 3 * * ?"),
            vec![Sun, Mon, Tue, Wed, Thu, Fri, Sat]
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_restricted() {
        // "the 13th, or any Friday" (Vixie). 2024-05-13 is a Monday.
        let got: Vec<String> = sched("0 0 13 * 5")
            .upcoming(&t("2024-05-01T00:00:00+00:00"), 4)
            .iter()
            .map(|d| d.date_naive().to_string())
            .collect();
        assert_eq!(
            got,
            ["2024-05-03", "2024-05-10", "2024-05-13", "2024-05-17"]
        );
        // With a '*' day-of-week, only the day of month restricts.
        assert_eq!(
            next("0 0 13 * *", "2024-05-01T00:00:00+00:00"),
            "2024-05-13T00:00:00+00:00"
        );
        // A '*'-led day-of-month ANDs: every other day that is also a Friday.
        assert_eq!(
            next("0 0 */2 * 5", "2024-05-01T00:00:00+00:00"),
            "2024-05-03T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 */2 * 5", "2024-05-04T00:00:00+00:00"),
            "2024-05-17T00:00:00+00:00"
        );
    }

    #[test]
    fn shortcuts() {
        let from = "2024-05-01T10:30:00+00:00"; // a Wednesday
        assert_eq!(next("@hourly", from), "2024-05-01T11:00:00+00:00");
        assert_eq!(next("@daily", from), "2024-05-02T00:00:00+00:00");
        assert_eq!(next("@midnight", from), "2024-05-02T00:00:00+00:00");
        assert_eq!(next("@weekly", from), "2024-05-05T00:00:00+00:00"); // Sunday
        assert_eq!(next("@monthly", from), "2024-06-01T00:00:00+00:00");
        assert_eq!(next("@yearly", from), "2025-01-01T00:00:00+00:00");
        assert_eq!(next(" @ANNUALLY ", from), "2025-01-01T00:00:00+00:00");
    }

    #[test]
    fn parse_errors_say_what_is_expected() {
        for (bad, detail) in [
            ("", "got 0 fields"),
            ("* * * *", "got 4 fields"),
            ("0 0 3 * * * 2030", "got 7 fields"),
            ("61 * * * *", "cron: minute field: Minutes must be"),
            ("0 25 * * *", "cron: hour field: Hours must be"),
            ("0 3 1- * *", "cron: day-of-month field: syntax error"),
            (
                "0 3 * JANX *",
                "cron: month field: 'JANX' is not a valid month",
            ),
            ("0 3 * * 8", "out of range 0-7"),
            ("0 3 * * 5-1", "backwards"),
            ("0 3 * * */0", "invalid step"),
            ("0 3 * * funday", "not a day of the week"),
            ("@reboot", "unsupported shortcut"),
        ] {
            let e = bad.parse::<Schedule>().unwrap_err().to_string();
            assert!(
                e.contains("expected 5 fields (min hour day month weekday) or 6 with seconds, e.g. \"30 2 * * *\""),
                "{bad:?}: {e}"
            );
            assert!(e.contains(detail), "{bad:?}: {e}");
        }
    }

    #[test]
    fn upcoming_is_increasing_and_bounded() {
        let s = sched("0 */6 * * *");
        let got = s.upcoming(&t("2024-05-01T05:00:00+00:00"), 5);
        let got: Vec<String> = got.iter().map(|d| d.to_rfc3339()).collect();
        assert_eq!(
            got,
            [
                "2024-05-01T06:00:00+00:00",
                "2024-05-01T12:00:00+00:00",
                "2024-05-01T18:00:00+00:00",
                "2024-05-02T00:00:00+00:00",
                "2024-05-02T06:00:00+00:00",
            ]
        );
        assert!(s.upcoming(&t("2024-05-01T05:00:00+00:00"), 0).is_empty());
        // Feb 30 never happens: no occurrence at all.
        let never = sched("0 0 30 2 *");
        assert_eq!(never.next_after(&t("2024-01-01T00:00:00+00:00")), None);
        let start = t("2024-01-01T00:00:00+00:00");
        assert!(never.upcoming(&start, 3).is_empty());
        assert!(!never.is_due(
            Some(&t("2024-01-01T00:00:00+00:00")),
            &t("2030-01-01T00:00:00+00:00")
        ));
    }

    #[test]
    fn catch_up_rule() {
        let nightly = sched("0 3 * * *");
        let ran = t("2024-05-01T03:00:05+02:00"); // last success, just after 03:00
        let due = |now: &str| nightly.is_due(Some(&ran), &t(now));
        // Not due right after a successful run, nor later that day.
        assert!(!due("2024-05-01T03:00:06+02:00"));
        assert!(!due("2024-05-01T23:59:59+02:00"));
        assert!(!due("2024-05-02T02:59:59+02:00"));
        // Due at the next occurrence (inclusive).
        assert!(due("2024-05-02T03:00:00+02:00"));
        // A missed night (machine off at 03:00): due once on wake-up.
        assert!(due("2024-05-02T09:00:00+02:00"));
        // A missed week: still a single boolean "due"; once the catch-up run
        // succeeds, it is not due again until the next 03:00.
        assert!(due("2024-05-09T12:00:00+02:00"));
        let catch_up = t("2024-05-09T12:00:30+02:00");
        assert!(!nightly.is_due(Some(&catch_up), &t("2024-05-09T13:00:00+02:00")));
        assert!(!nightly.is_due(Some(&catch_up), &t("2024-05-10T02:59:00+02:00")));
        assert!(nightly.is_due(Some(&catch_up), &t("2024-05-10T03:00:00+02:00")));
        // Never succeeded: due.
        assert!(nightly.is_due(None, &t("2024-05-01T00:00:00+02:00")));
        // Clock stepped back behind the last success: not due.
        assert!(!nightly.is_due(Some(&ran), &t("2024-04-30T12:00:00+02:00")));
        // The wall clock of `now`'s zone is used, whatever the offset of
        // `last_success`: 03:00:05Z is 05:00:05+02:00, so the next run is at
        // 03:00+02:00 the following day.
        let ran_utc = t("2024-05-01T03:00:05+00:00");
        assert!(!nightly.is_due(Some(&ran_utc), &t("2024-05-02T02:59:59+02:00")));
        assert!(nightly.is_due(Some(&ran_utc), &t("2024-05-02T03:00:00+02:00")));
    }

    #[test]
    fn works_with_local_time() {
        let s = sched("*/5 * * * *");
        let now = Local::now();
        let n = s.next_after(&now).unwrap();
        assert!(n > now && n - now <= chrono::TimeDelta::minutes(5));
        assert!(s.is_due(None, &now));
    }

    #[test]
    fn display_and_serde() {
        let s = sched("  30 2 * * 1-5 ");
        assert_eq!(s.to_string(), "30 2 * * 1-5");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"30 2 * * 1-5\"");
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
        let e = serde_json::from_str::<Schedule>("\"* *\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 5 fields"), "{e}");
    }

    #[test]
    fn jitter() {
        assert_eq!(parse_jitter("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_jitter("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_jitter(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_jitter("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_jitter("0s"), Ok(Duration::ZERO));
        // One grammar for every duration: days are fine here too.
        assert_eq!(parse_jitter("5d"), Ok(Duration::from_secs(5 * 86400)));
        for bad in ["", "10", "m", "1.5h", "-1m", "1mo", "99999999999999999999s"] {
            let e = parse_jitter(bad).unwrap_err();
            assert!(e.contains("expected <number><unit> parts"), "{bad:?}: {e}");
        }
    }

    /// Central European time in 2026 (+01:00; +02:00 from 29 March 01:00 UTC
    /// to 25 October 01:00 UTC), for daylight-saving tests without tzdata.
    #[derive(Debug, Clone, Copy)]
    struct Cet2026;

    impl TimeZone for Cet2026 {
        type Offset = FixedOffset;
        fn from_offset(_: &FixedOffset) -> Self {
            Cet2026
        }
        fn offset_from_local_date(
            &self,
            local: &chrono::NaiveDate,
        ) -> MappedLocalTime<FixedOffset> {
            self.offset_from_local_datetime(&local.and_hms_opt(0, 0, 0).unwrap())
        }
        fn offset_from_local_datetime(
            &self,
            local: &NaiveDateTime,
        ) -> MappedLocalTime<FixedOffset> {
            let (winter, summer) = (
                FixedOffset::east_opt(3600).unwrap(),
                FixedOffset::east_opt(7200).unwrap(),
            );
            let fits = |o: FixedOffset| {
                self.offset_from_utc_datetime(
                    &(*local - TimeDelta::seconds(o.local_minus_utc() as i64)),
                ) == o
            };
            match (fits(summer), fits(winter)) {
                (true, true) => MappedLocalTime::Ambiguous(summer, winter),
                (true, false) => MappedLocalTime::Single(summer),
                (false, true) => MappedLocalTime::Single(winter),
                (false, false) => MappedLocalTime::None,
            }
        }
        fn offset_from_utc_date(&self, utc: &chrono::NaiveDate) -> FixedOffset {
            self.offset_from_utc_datetime(&utc.and_hms_opt(0, 0, 0).unwrap())
        }
        fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> FixedOffset {
            let at = |m, d| {
                chrono::NaiveDate::from_ymd_opt(2026, m, d)
                    .unwrap()
                    .and_hms_opt(1, 0, 0)
                    .unwrap()
            };
            let secs = if *utc >= at(3, 29) && *utc < at(10, 25) {
                7200
            } else {
                3600
            };
            FixedOffset::east_opt(secs).unwrap()
        }
    }

    fn cet_upcoming(expr: &str, after: &str, n: usize) -> Vec<String> {
        let after = Cet2026.from_utc_datetime(&t(after).naive_utc());
        sched(expr)
            .upcoming(&after, n)
            .iter()
            .map(|d| d.fixed_offset().to_rfc3339())
            .collect()
    }

    #[test]
    fn a_fixed_time_skipped_by_the_clocks_going_forward_runs_at_the_change() {
        // 29 March 2026: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        assert_eq!(
            cet_upcoming("30 2 * * *", "2026-03-28T04:20:00+01:00", 3),
            [
                "2026-03-29T03:00:00+02:00".to_string(),
                "2026-03-30T02:30:00+02:00".to_string(),
                "2026-03-31T02:30:00+02:00".to_string(),
            ]
        );
        // So a nightly backup is due on that night, not skipped.
        let s = sched("30 2 * * *");
        let last = Cet2026.from_utc_datetime(&t("2026-03-28T04:20:00+01:00").naive_utc());
        let now = Cet2026.from_utc_datetime(&t("2026-03-29T04:20:00+02:00").naive_utc());
        assert!(s.is_due(Some(&last), &now));
        // Several fixed times in the gap run once, at the change.
        assert_eq!(
            cet_upcoming("10,40 2 * * *", "2026-03-29T00:00:00+01:00", 2),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:10:00+02:00"]
        );
    }

    #[test]
    fn a_fixed_time_repeated_by_the_clocks_going_back_runs_once() {
        // 25 October 2026: 03:00 CEST becomes 02:00 CET; 02:30 comes twice.
        assert_eq!(
            cet_upcoming("30 2 * * *", "2026-10-24T05:00:00+02:00", 2),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
    }

    #[test]
    fn wildcard_hours_follow_the_clock_across_changes() {
        assert_eq!(
            cet_upcoming("15 * * * *", "2026-03-29T01:20:00+01:00", 2),
            ["2026-03-29T03:15:00+02:00", "2026-03-29T04:15:00+02:00"]
        );
        assert_eq!(
            cet_upcoming("15 * * * *", "2026-10-25T01:20:00+02:00", 3),
            [
                "2026-10-25T02:15:00+02:00",
                "2026-10-25T02:15:00+01:00",
                "2026-10-25T03:15:00+01:00"
            ]
        );
        assert_eq!(
            cet_upcoming("*/30 * * * *", "2026-10-25T02:20:00+02:00", 4),
            [
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T03:00:00+01:00"
            ]
        );
    }
}
