//! Translation of 5-field Unix cron (Vixie cron, Kubernetes CronJob, Argo CD sync windows) into
//! the 6-field form of the `cron` crate.
//!
//! The crate differs from Unix in ways that silently move a schedule (day of week 1 = Sunday, so
//! `6` is Friday there; a seconds field first). Each field is therefore expanded here to the set of
//! values it matches and re-emitted as an explicit list of the crate's numbers, never re-used as
//! text.

use std::collections::BTreeSet;
use std::fmt;

use super::error::{FieldProblem, ScheduleError};

/// A field of a 5-field cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl CronField {
    fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (0, 7),
        }
    }

    /// Largest value `*` and `N/step` expand to. Day of week stops at 6 so that `*/2` or `1/2`
    /// never add 7 (a second Sunday), as in Vixie cron and robfig/cron.
    fn star_max(self) -> u32 {
        match self {
            CronField::DayOfWeek => 6,
            other => other.bounds().1,
        }
    }

    /// Names accepted for this field and the number of the first one.
    fn names(self) -> Option<(&'static [&'static str], u32)> {
        match self {
            CronField::Month => Some((&MONTHS, 1)),
            CronField::DayOfWeek => Some((&DAYS, 0)),
            _ => None,
        }
    }

    /// What the field accepts, for error messages.
    pub fn allowed(self) -> &'static str {
        match self {
            CronField::Minute => "0-59",
            CronField::Hour => "0-23",
            CronField::DayOfMonth => "1-31, or * or ?",
            CronField::Month => "1-12 or JAN-DEC",
            CronField::DayOfWeek => "0-7 (0 and 7 are Sunday) or SUN-SAT, or * or ?",
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// A 5-field expression in the crate's 6-field form.
#[derive(Debug)]
pub(super) struct Translated {
    /// second minute hour day-of-month month day-of-week, in the crate's syntax and numbering.
    pub crate_fields: Vec<String>,
    pub warnings: Vec<String>,
}

/// Expand the macros Unix cron knows into their 5-field meaning.
pub(super) fn expand_macro(expr: &str, name: &str) -> Result<&'static str, ScheduleError> {
    match name.to_ascii_lowercase().as_str() {
        "yearly" | "annually" => Ok("0 0 1 1 *"),
        "monthly" => Ok("0 0 1 * *"),
        "weekly" => Ok("0 0 * * 0"),
        "daily" | "midnight" => Ok("0 0 * * *"),
        "hourly" => Ok("0 * * * *"),
        "reboot" => Err(ScheduleError::Reboot { expr: expr.into() }),
        _ => Err(ScheduleError::UnknownMacro { expr: expr.into() }),
    }
}

/// Translate `minute hour day-of-month month day-of-week` for the crate.
pub(super) fn translate(expr: &str, fields: [&str; 5]) -> Result<Translated, ScheduleError> {
    let parse = |field: CronField, text: &str| {
        parse_field(field, text).map_err(|problem| ScheduleError::Field {
            expr: expr.into(),
            field,
            text: text.into(),
            problem,
        })
    };
    let minutes = parse(CronField::Minute, fields[0])?;
    let hours = parse(CronField::Hour, fields[1])?;
    let days = parse(CronField::DayOfMonth, fields[2])?;
    let months = parse(CronField::Month, fields[3])?;
    let weekdays = parse(CronField::DayOfWeek, fields[4])?;

    let mut warnings = Vec::new();
    let (dom_star, dow_star) = (is_star(fields[2]), is_star(fields[4]));
    if dow_star && !dom_star && never_in_months(&days, &months) {
        warnings.push(format!(
            "day-of-month \"{}\" never occurs in month \"{}\": the schedule never fires",
            fields[2], fields[3]
        ));
    }

    // Unix 0..=7 (0 and 7 = Sunday) -> crate 1..=7 (1 = Sunday).
    let crate_weekdays: BTreeSet<u32> = weekdays.iter().map(|d| d % 7 + 1).collect();
    let crate_fields = vec![
        "0".to_owned(),
        render(&minutes, CronField::Minute),
        render(&hours, CronField::Hour),
        if dom_star { "*".into() } else { join(&days) },
        render(&months, CronField::Month),
        if dow_star {
            "*".into()
        } else {
            join(&crate_weekdays)
        },
    ];
    Ok(Translated {
        crate_fields,
        warnings,
    })
}

/// Whether a day field leaves the day unrestricted, which turns the OR of the two day fields
/// into an AND. This follows robfig/cron (Kubernetes, Argo CD): any list item `*`, `?` or `*/1`.
/// Vixie cron also counts `*/2`, a corner where the two disagree.
pub(super) fn is_star(text: &str) -> bool {
    text.split(',')
        .any(|item| matches!(item, "*" | "?" | "*/1" | "?/1"))
}

fn never_in_months(days: &BTreeSet<u32>, months: &BTreeSet<u32>) -> bool {
    let longest = months
        .iter()
        .map(|m| match m {
            2 => 29,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        })
        .max()
        .unwrap_or(31);
    days.first().is_none_or(|&d| d > longest)
}

fn render(set: &BTreeSet<u32>, field: CronField) -> String {
    let (min, max) = field.bounds();
    if set.len() as u32 == max - min + 1 {
        "*".into()
    } else {
        join(set)
    }
}

fn join(set: &BTreeSet<u32>) -> String {
    set.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn parse_field(field: CronField, text: &str) -> Result<BTreeSet<u32>, FieldProblem> {
    let mut set = BTreeSet::new();
    for item in text.split(',') {
        if item == "?" && matches!(field, CronField::DayOfMonth | CronField::DayOfWeek) {
            set.extend(field.bounds().0..=field.star_max());
            continue;
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(parse_step(step)?)),
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            (field.bounds().0, field.star_max())
        } else if let Some((a, b)) = range.split_once('-') {
            let start = parse_value(field, a, item)?;
            let mut end = parse_value(field, b, item)?;
            // FRI-SUN: SUN is 0, but a range ending on Sunday means the Sunday after (7).
            if field == CronField::DayOfWeek && end == 0 && start > 0 {
                end = 7;
            }
            if start > end {
                return Err(FieldProblem::Reversed { start, end });
            }
            (start, end)
        } else {
            let value = parse_value(field, range, item)?;
            // `N/step` means N through the maximum (robfig/cron, cronie).
            (
                value,
                if step.is_some() {
                    field.star_max()
                } else {
                    value
                },
            )
        };
        set.extend((start..=end).step_by(step.unwrap_or(1)));
    }
    Ok(set)
}

fn parse_step(step: &str) -> Result<usize, FieldProblem> {
    match step.parse::<usize>() {
        Ok(n) if n >= 1 && step.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(FieldProblem::BadStep { step: step.into() }),
    }
}

fn parse_value(field: CronField, text: &str, item: &str) -> Result<u32, FieldProblem> {
    let (min, max) = field.bounds();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(value) if (min..=max).contains(&value) => Ok(value),
            Ok(value) => Err(FieldProblem::OutOfRange { value }),
            Err(_) => Err(FieldProblem::Syntax { item: item.into() }),
        };
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(FieldProblem::Syntax { item: item.into() });
    }
    field
        .names()
        .and_then(|(names, first)| {
            names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(text))
                .map(|i| first + i as u32)
        })
        .ok_or_else(|| FieldProblem::UnknownName { name: text.into() })
}
