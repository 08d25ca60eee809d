//! Maintenance windows: when staged changes may be applied (DESIGN.md §3).
//!
//! A window is open at instant `t` iff some firing `s` of its cron schedule, evaluated in
//! wall-clock time of its IANA zone, has `s <= t < s + duration`. Every computation takes the
//! instant (or a [`Clock`]) explicitly, so tests move time instead of sleeping.

mod clock;
mod error;
mod local;
mod schedule;
mod unix;

#[cfg(test)]
mod tests;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

pub use clock::{Clock, FixedClock, SystemClock};
pub use error::{FieldProblem, ScheduleError};
pub use schedule::Schedule;
pub use unix::CronField;

/// Longest duration honoured: a window open longer than this is treated as open this long. It
/// keeps the backward look of [`Window::state_at`] within the schedule's search horizon.
const MAX_DURATION: TimeDelta = TimeDelta::days(366);

/// At most this many overlapping firings are merged to find when an open window closes; a
/// window that is (nearly) always open would otherwise be followed for years.
const MAX_MERGED_FIRINGS: usize = 4096;

/// Parse an IANA time zone name (`Europe/Berlin`, `UTC`). Abbreviations and fixed offsets are
/// not zones: they carry no DST rules.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>().map_err(|_| {
        let wanted = name.trim();
        let city = |zone: &str| zone.rsplit('/').next().unwrap_or(zone).to_owned();
        let suggestion = chrono_tz::TZ_VARIANTS
            .iter()
            .map(|tz| tz.name())
            .find(|zone| zone.eq_ignore_ascii_case(wanted))
            .or_else(|| {
                let wanted = wanted.replace(' ', "_");
                chrono_tz::TZ_VARIANTS
                    .iter()
                    .map(|tz| tz.name())
                    .find(|zone| zone.contains('/') && city(zone).eq_ignore_ascii_case(&wanted))
            })
            .map(str::to_owned);
        ScheduleError::UnknownTimeZone {
            name: name.into(),
            suggestion,
        }
    })
}

/// Parse a duration such as `3h`, `90m` or `2days 4h` (window lengths and
/// timeouts alike); zero is refused, since neither can mean anything then.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, ScheduleError> {
    let error = |reason: String| ScheduleError::Duration {
        text: text.into(),
        reason,
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err(error("must be longer than zero".into())),
        Ok(d) => Ok(d),
        Err(e) => Err(error(e.to_string())),
    }
}

/// A named maintenance window (the `MaintenanceWindow` object).
#[derive(Clone, Debug)]
pub struct Window {
    pub name: String,
    pub schedule: Schedule,
    pub duration: std::time::Duration,
    pub tz: Tz,
}

/// Whether a window is open at an instant, and the instants status reports around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowState {
    pub open: bool,
    /// The earliest firing still covering the instant (when open).
    pub opened_at: Option<DateTime<Utc>>,
    /// End of the union of the overlapping firings covering the instant (when open). Merging
    /// stops after a few thousand firings, which makes it an early, safe estimate for a window
    /// that is practically always open.
    pub closes_at: Option<DateTime<Utc>>,
    /// The first firing strictly after the instant; `None` if the schedule never fires again.
    pub next_open: Option<DateTime<Utc>>,
}

impl Window {
    /// Build a window from the fields of a `MaintenanceWindow` spec.
    pub fn from_spec(
        name: impl Into<String>,
        schedule: &str,
        duration: &str,
        timezone: &str,
    ) -> Result<Window, ScheduleError> {
        Ok(Window {
            name: name.into(),
            schedule: Schedule::parse(schedule)?,
            duration: parse_duration(duration)?,
            tz: parse_timezone(timezone)?,
        })
    }

    /// Whether the window is open at `t`, and when it opened, closes and next opens.
    pub fn state_at(&self, t: DateTime<Utc>) -> WindowState {
        let span = self.span();
        let next_open = self.next_openings(t, 1).first().copied();
        let Some(opened) = self.first_covering(t) else {
            return WindowState {
                open: false,
                opened_at: None,
                closes_at: None,
                next_open,
            };
        };
        // Firings that start before (or exactly when) the union so far ends keep it open.
        let mut closes = add(opened, span);
        for s in self
            .schedule
            .firings_from(opened, self.tz)
            .skip(1)
            .take(MAX_MERGED_FIRINGS)
        {
            if s > closes {
                break;
            }
            closes = closes.max(add(s, span));
        }
        WindowState {
            open: true,
            opened_at: Some(opened),
            closes_at: Some(closes),
            next_open,
        }
    }

    /// Cheaper than [`Window::state_at`]: looks at a single firing.
    pub fn is_open(&self, t: DateTime<Utc>) -> bool {
        self.first_covering(t).is_some()
    }

    /// The next `n` firings strictly after `t`.
    pub fn next_openings(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.schedule
            .firings_from(t, self.tz)
            .skip_while(|&s| s <= t)
            .take(n)
            .collect()
    }

    /// The openings (start, end) that overlap `[from, to]`, at most 1,000:
    /// what a picture of the window over a span shades.
    pub fn openings_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let Ok(len) = chrono::TimeDelta::from_std(self.duration) else {
            return Vec::new();
        };
        let Some(start) = from.checked_sub_signed(len) else {
            return Vec::new();
        };
        self.schedule
            .firings_from(start, self.tz)
            .take_while(|&s| s <= to)
            .map(|s| (s, s + len))
            .filter(|&(_, end)| end >= from)
            .take(1000)
            .collect()
    }

    /// [`Window::state_at`] the clock's current instant.
    pub fn state(&self, clock: &dyn Clock) -> WindowState {
        self.state_at(clock.now())
    }

    /// The earliest firing `s` with `t - duration < s <= t`.
    fn first_covering(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let since = t
            .checked_sub_signed(self.span())
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.schedule
            .firings_from(since, self.tz)
            .find(|&s| s > since)
            .filter(|&s| s <= t)
    }

    fn span(&self) -> TimeDelta {
        TimeDelta::from_std(self.duration)
            .unwrap_or(MAX_DURATION)
            .min(MAX_DURATION)
    }
}

fn add(t: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
