//! Cron schedules evaluated in wall-clock time of an IANA zone.

use std::fmt;
use std::iter::Peekable;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;

use super::error::ScheduleError;
use super::local::{resolve, wall_clock};
use super::unix;

/// Longest stretch of wall-clock time searched for the next firing. Every 5-field schedule that
/// fires at all fires within 4 years (Feb 29); without a bound, `0 0 30 2 *` would be searched
/// to the crate's last year on every call.
const SEARCH_HORIZON: TimeDelta = TimeDelta::days(5 * 366);

/// The crate only knows the years 1970-2100; instants outside (plus a margin for zone offsets)
/// are clamped or yield nothing, which also keeps date arithmetic far from chrono's limits.
const EARLIEST: DateTime<Utc> = instant(-172_800); // 1969-12-30T00:00:00Z
const LATEST: DateTime<Utc> = instant(4_134_067_200); // 2101-01-02T00:00:00Z

const fn instant(secs: i64) -> DateTime<Utc> {
    match DateTime::from_timestamp(secs, 0) {
        Some(t) => t,
        None => panic!("constant instant is in range"),
    }
}

/// A parsed cron expression.
///
/// Two forms are accepted:
/// - **5 fields** `minute hour day-of-month month day-of-week`, and the macros `@yearly`,
///   `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`: exactly Unix cron
///   (Vixie, Kubernetes CronJob, Argo CD), so a line copied from there behaves the same. Day of
///   week is 0-7 with 0 and 7 = Sunday, names are `SUN`-`SAT` and `JAN`-`DEC` (any case),
///   `N/step` means `N-max/step` and `?` means `*` in the day fields (as in robfig/cron).
///   `FRI-SUN` is read as Friday to Sunday.
/// - **6 or 7 fields** `second minute hour day-of-month month day-of-week [year]`: the `cron`
///   crate's own syntax, passed through unchanged, *including its numbering* (day of week 1 =
///   Sunday ... 7 = Saturday).
///
/// Both forms get the Unix day rule (when day-of-month and day-of-week are both restricted, a day
/// matching either fires) and the DST rules of [`Schedule::firings_from`].
#[derive(Clone, Debug)]
pub struct Schedule {
    expression: String,
    warnings: Vec<String>,
    /// One crate schedule, or two (day-of-month only, day-of-week only) whose firings are merged
    /// to get the Unix OR rule the crate lacks. They iterate over wall-clock time posing as UTC.
    parts: Vec<cron::Schedule>,
}

impl Schedule {
    /// Parse a 5-field Unix or 6/7-field crate expression (see the type docs).
    pub fn parse(expr: &str) -> Result<Schedule, ScheduleError> {
        let trimmed = expr.trim();
        let expanded = match trimmed.strip_prefix('@') {
            Some(name) => unix::expand_macro(expr, name)?,
            None => trimmed,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (crate_fields, mut warnings) = match *fields.as_slice() {
            [minute, hour, dom, month, dow] => {
                let t = unix::translate(expr, [minute, hour, dom, month, dow])?;
                (t.crate_fields, t.warnings)
            }
            [_, _, _, _, _, dow] | [_, _, _, _, _, dow, _] => {
                // Validate as written so errors refer to what the user typed.
                cron::Schedule::from_str(expanded).map_err(|e| extended_error(expr, e))?;
                let mut warnings = Vec::new();
                if dow.bytes().any(|b| b.is_ascii_digit()) {
                    warnings.push(format!(
                        "day-of-week \"{dow}\" is in the 6/7-field form, which numbers days like \
                         the cron crate: 1 = Sunday ... 7 = Saturday (Unix cron: 0 and 7 = \
                         Sunday, 6 = Saturday); use names (SUN-SAT) or the 5-field form to avoid \
                         confusion"
                    ));
                }
                (fields.iter().map(|f| f.to_string()).collect(), warnings)
            }
            _ => {
                return Err(ScheduleError::FieldCount {
                    expr: expr.into(),
                    count: fields.len(),
                })
            }
        };

        // As the user wrote them; in `crate_fields` they are always at 3 and 5.
        let (dom, dow) = if fields.len() == 5 {
            (fields[2], fields[4])
        } else {
            (fields[3], fields[5])
        };
        let variants = if unix::is_star(dom) || unix::is_star(dow) {
            vec![crate_fields]
        } else {
            warnings.insert(
                0,
                format!(
                    "day-of-month \"{dom}\" and day-of-week \"{dow}\" are both restricted: like \
                     Unix cron, the schedule fires on days matching either (day-of-month {dom}, or \
                     day-of-week {dow}), not only on days matching both"
                ),
            );
            let mut dom_only = crate_fields.clone();
            dom_only[5] = "*".into();
            let mut dow_only = crate_fields;
            dow_only[3] = "*".into();
            vec![dom_only, dow_only]
        };
        let parts = variants
            .iter()
            .map(|f| cron::Schedule::from_str(&f.join(" ")).map_err(|e| extended_error(expr, e)))
            .collect::<Result<_, _>>()?;
        Ok(Schedule {
            expression: expr.into(),
            warnings,
            parts,
        })
    }

    /// The expression as the user wrote it.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Things that parse but may not mean what the author expects; `validate` shows them.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Firings at or after `from`, ascending and strictly increasing, with the schedule evaluated
    /// in wall-clock time of `tz`.
    ///
    /// A firing inside a spring-forward gap fires at the end of the gap (the transition instant);
    /// a wall-clock time that occurs twice at fall-back fires once, at its first occurrence;
    /// several wall-clock firings landing on one instant are emitted once. Ends when no firing
    /// exists within about five years of the previous one.
    pub fn firings_from(
        &self,
        from: DateTime<Utc>,
        tz: Tz,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let from = from.max(EARLIEST);
        let start = search_start(from.min(LATEST), tz);
        let parts = if from > LATEST {
            Vec::new()
        } else {
            let after = start.and_utc();
            self.parts
                .iter()
                .map(|p| p.after(&after).peekable())
                .collect()
        };
        Firings {
            parts,
            tz,
            from,
            last_local: start,
            last: None,
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(expr: &str) -> Result<Self, Self::Err> {
        Schedule::parse(expr)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

/// Fields of the 6/7-field form and what the crate accepts in each.
const EXTENDED_FIELDS: [(&str, &str); 7] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "1-7 (1 = Sunday) or SUN-SAT"),
    ("year", "1970-2100"),
];

/// The crate reports errors as the expression, a caret under the failing field and an
/// explanation (sometimes empty); turn that into one line naming the field.
fn extended_error(expr: &str, e: cron::error::Error) -> ScheduleError {
    let message = e.to_string();
    let lines: Vec<&str> = message.lines().collect();
    let caret = lines.get(1).and_then(|l| l.find('^'));
    let explanation = lines.get(2..).unwrap_or_default().join(" ");
    let trimmed = expr.trim();
    let mut starts = Vec::new();
    let mut previous = ' ';
    for (i, c) in trimmed.char_indices() {
        if !c.is_whitespace() && previous.is_whitespace() {
            starts.push(i);
        }
        previous = c;
    }
    let field = caret.and_then(|col| starts.iter().rposition(|&start| start <= col));
    let reason = match field.and_then(|i| Some((i, EXTENDED_FIELDS.get(i)?))) {
        Some((i, (name, allowed))) => {
            let text = trimmed.split_whitespace().nth(i).unwrap_or_default();
            let mut reason = format!("{name} field {text:?} is invalid; allowed: {allowed}");
            if !explanation.trim().is_empty() {
                reason += &format!(" ({})", explanation.trim());
            }
            reason
        }
        _ => message.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    ScheduleError::Extended {
        expr: expr.into(),
        reason,
    }
}

/// A wall-clock time before every firing at or after `from`: since [`resolve`] is monotonic,
/// any local time at or below one that resolves before `from` is irrelevant.
fn search_start(from: DateTime<Utc>, tz: Tz) -> NaiveDateTime {
    let mut start = wall_clock(tz, from);
    start = start.with_nanosecond(0).unwrap_or(start);
    // Usually one step; more only where the offset jumped by over an hour (date-line changes).
    for _ in 0..48 {
        match start.checked_sub_signed(TimeDelta::hours(1)) {
            Some(earlier) => start = earlier,
            None => break,
        }
        if resolve(tz, start) < from {
            break;
        }
    }
    start
}

/// Merges the crate's wall-clock firings of every part, maps them to instants, and drops those
/// before `from` and repeats.
struct Firings<'a> {
    parts: Vec<Peekable<cron::ScheduleIterator<'a, Utc>>>,
    tz: Tz,
    from: DateTime<Utc>,
    last_local: NaiveDateTime,
    last: Option<DateTime<Utc>>,
}

impl Iterator for Firings<'_> {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        loop {
            let local = self
                .parts
                .iter_mut()
                .filter_map(|p| p.peek().map(DateTime::naive_utc))
                .min()?;
            for part in &mut self.parts {
                part.next_if(|t| t.naive_utc() == local);
            }
            if local - self.last_local > SEARCH_HORIZON {
                self.parts.clear();
                return None;
            }
            self.last_local = local;
            let t = resolve(self.tz, local);
            if t >= self.from && self.last.is_none_or(|last| t > last) {
                self.last = Some(t);
                return Some(t);
            }
        }
    }
}
