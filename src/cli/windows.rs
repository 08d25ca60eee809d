//! `fermata windows`: every maintenance window, whether it is open, and its
//! next openings in UTC and in its own zone.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::run::ClockArgs;
use super::{Output, RepoArgs};

#[derive(Debug, Args)]
pub struct WindowsArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub clock: ClockArgs,
    /// How many openings to list.
    #[arg(long, default_value_t = 3)]
    pub next: usize,
}

pub fn run(a: &WindowsArgs) -> anyhow::Result<ExitCode> {
    let (_, loaded) = a.repo.load()?;
    let now = a.clock.clock().now();
    let mut out = Vec::new();
    for mw in loaded.fleet.windows.values() {
        let w = &mw.window;
        let st = w.state_at(now);
        let next: Vec<_> = w.next_openings(now, a.next);
        match a.repo.output {
            super::Output::Text => {
                outln!(
                    "{}: {} ({} for {}, {}){}",
                    w.name,
                    if st.open { "OPEN" } else { "closed" },
                    w.schedule.expression(),
                    humantime::format_duration(w.duration),
                    w.tz,
                    st.closes_at
                        .filter(|_| st.open)
                        .map(|c| format!(", closes {}", c.to_rfc3339()))
                        .unwrap_or_default()
                );
                for t in &next {
                    outln!("  next: {}  ({})", t.to_rfc3339(), t.with_timezone(&w.tz).to_rfc3339());
                }
                for warning in w.schedule.warnings() {
                    outln!("  warning: {warning}");
                }
            }
            Output::Json => out.push(json!({
                "name": w.name,
                "schedule": w.schedule.expression(),
                "duration": humantime::format_duration(w.duration).to_string(),
                "timezone": w.tz.name(),
                "open": st.open,
                "closesAt": st.closes_at.filter(|_| st.open),
                "next": next.iter().map(|t| json!({"utc": t.to_rfc3339(), "local": t.with_timezone(&w.tz).to_rfc3339()})).collect::<Vec<_>>(),
                "warnings": w.schedule.warnings(),
            })),
        }
    }
    if a.repo.output == Output::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"now": now, "windows": out}))?
        );
    }
    for e in &loaded.errors {
        errln!("{e}");
    }
    Ok(if loaded.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
