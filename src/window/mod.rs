//! TEMPORARY STUB — replaced by the real window module.
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    warnings: Vec<String>,
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, ScheduleError> {
        let n = expr.split_whitespace().count();
        if n != 5 && n != 6 && n != 7 {
            return Err(ScheduleError::Invalid(format!(
                "expected 5 fields, got {n}"
            )));
        }
        Ok(Schedule {
            expr: expr.to_string(),
            warnings: vec![],
        })
    }
    pub fn expression(&self) -> &str {
        &self.expr
    }
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|e| ScheduleError::Invalid(e.to_string()))
}

#[derive(Debug, Clone)]
pub struct Window {
    pub name: String,
    pub schedule: Schedule,
    pub duration: std::time::Duration,
    pub tz: Tz,
}
