//! Errors a user can act on: each names the part of the input that is wrong and what is allowed.

use super::unix::CronField;

/// Why a schedule, time zone or duration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "cron expression {expr:?} has {count} fields; expected 5 (minute hour day-of-month month \
         day-of-week), or 6/7 in the cron crate's form (second first, optional year last)"
    )]
    FieldCount { expr: String, count: usize },

    #[error("cron expression {expr:?}: {field} field {text:?}: {problem}; allowed: {allowed}",
        allowed = .field.allowed())]
    Field {
        expr: String,
        field: CronField,
        text: String,
        problem: FieldProblem,
    },

    #[error(
        "cron expression {expr:?}: @reboot is not supported: a maintenance window needs a \
         recurring time, not a start-up event"
    )]
    Reboot { expr: String },

    #[error(
        "cron expression {expr:?}: unknown macro; supported: @yearly, @annually, @monthly, \
         @weekly, @daily, @midnight, @hourly"
    )]
    UnknownMacro { expr: String },

    #[error(
        "cron expression {expr:?} (6/7-field form: second minute hour day-of-month month \
         day-of-week [year]): {reason}"
    )]
    Extended { expr: String, reason: String },

    #[error(
        "unknown time zone {name:?}: expected an IANA time zone name such as \"Europe/Berlin\", \
         \"America/New_York\" or \"UTC\"{hint}",
        hint = did_you_mean(.suggestion)
    )]
    UnknownTimeZone {
        name: String,
        suggestion: Option<String>,
    },

    #[error(
        "duration {text:?}: {reason}; expected a positive duration such as \"90m\", \"3h\" or \
         \"2days 4h\""
    )]
    Duration { text: String, reason: String },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default()
}

/// What is wrong inside one field of a 5-field expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error("{value} is out of range")]
    OutOfRange { value: u32 },
    #[error("unknown name {name:?}")]
    UnknownName { name: String },
    #[error("step {step:?} is not a whole number of at least 1")]
    BadStep { step: String },
    #[error("range {start}-{end} runs backwards (the start must not exceed the end)")]
    Reversed { start: u32, end: u32 },
    #[error(
        "cannot read {item:?} (expected a number, a range like 1-5, a list like 1,3,5, a step \
         like */15 or 1-30/5, or *)"
    )]
    Syntax { item: String },
}
