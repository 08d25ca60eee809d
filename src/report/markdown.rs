//! The plan of a pull request as Markdown: one comment per pull request and
//! site (found again by its hidden marker), also written as a Git note for
//! hosts without an API. Pure: built from a dry-run pass's report.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::{ActionKind, BranchReport, PlanDetail, Row, WindowInfo};
use crate::status::State;

/// The hidden line that identifies a site's plan comment.
pub fn marker(site: &str) -> String {
    format!("<!-- fermata:plan:{site} -->")
}

/// What a plan is about.
#[derive(Debug, Clone)]
pub struct PlanHeader<'a> {
    pub site: &'a str,
    /// Full id of the planned (head) commit.
    pub head: &'a str,
    /// The watched branch whose applied state it is compared with.
    pub base: &'a str,
    /// Set when `command:` synthesizers were not run for this head.
    pub commands_blocked: bool,
    /// After merge: how the merged commit landed (`installed at …`).
    pub result: Option<String>,
}

/// The action a plan shows for one composition.
pub fn action_word(row: &Row) -> &'static str {
    if row.state == State::Failed {
        return "error";
    }
    match row.action {
        Some(ActionKind::Create) => "create",
        Some(ActionKind::Update) => "update",
        Some(ActionKind::Delete) => "delete",
        Some(ActionKind::Wait) | None => "unchanged",
    }
}

/// The Markdown body of a plan comment, marker first. Not truncated: see
/// [`truncate`].
pub fn plan_markdown(h: &PlanHeader, report: &BranchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", marker(h.site));
    let short = &h.head[..h.head.len().min(7)];
    let _ = writeln!(
        out,
        "### fermata plan for site `{}`: `{short}` against `{}`\n",
        h.site, h.base
    );
    if let Some(result) = &h.result {
        let _ = writeln!(out, "**{result}**\n");
    }
    let changed: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| action_word(r) != "unchanged")
        .collect();
    let unchanged = report.rows.len() - changed.len();
    let count = |w: &str| changed.iter().filter(|r| action_word(r) == w).count();
    let _ = writeln!(
        out,
        "{} to create, {} to update, {} to delete, {} unchanged, {} with errors.\n",
        count("create"),
        count("update"),
        count("delete"),
        unchanged,
        count("error") + report.errors.len(),
    );
    if h.commands_blocked {
        let _ = writeln!(
            out,
            "> [!WARNING]\n> `command:` synthesizers were **not run** for this head: it is not on a watched branch. Their compositions show `CommandNotRun`; fermata runs them once merged (or with `--trust-pr-commands`).\n"
        );
    }
    if !changed.is_empty() {
        out.push_str("| composition | action | applies | artifacts |\n|---|---|---|---|\n");
        for r in &changed {
            let plan = report.plans.get(&r.id);
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                r.id,
                action_word(r),
                applies(r, report),
                artifacts_cell(plan),
            );
        }
        out.push('\n');
    }
    let mut errors: Vec<String> = report.errors.clone();
    for r in &changed {
        if let Some(e) = report.plans.get(&r.id).and_then(|p| p.error.as_ref()) {
            errors.push(format!("{}: {e}", r.id));
        } else if r.state == State::Failed {
            errors.push(format!("{}: {}", r.id, r.note));
        }
    }
    if !errors.is_empty() {
        out.push_str("#### Errors\n\n```\n");
        for e in &errors {
            let _ = writeln!(out, "{e}");
        }
        out.push_str("```\n\n");
    }
    for r in &changed {
        let Some(diff) = report.plans.get(&r.id).and_then(|p| p.diff.as_ref()) else {
            continue;
        };
        let _ = writeln!(
            out,
            "<details><summary><code>{}</code>: {}</summary>\n\n```diff\n{}\n```\n\n</details>\n",
            r.id,
            action_word(r),
            diff.trim_end().replace("```", "` ` `"),
        );
    }
    out
}

/// When the composition's change will be applied, in words.
fn applies(row: &Row, report: &BranchReport) -> String {
    if row.action == Some(ActionKind::Delete) {
        return row
            .skipped
            .as_deref()
            .map(|s| format!("waits: {s}"))
            .unwrap_or_else(|| "at merge".to_string());
    }
    let Some(name) = &row.window else {
        return match row.skipped.as_deref() {
            Some(s) => format!("waits: {s}"),
            None => "at merge (no window)".to_string(),
        };
    };
    // Something else holds it first (a gate, a dependency, the rollout).
    let held = match row.skipped.as_deref() {
        Some(s) if s != "WindowClosed" => format!("waits: {s}; then "),
        _ => String::new(),
    };
    let when = match report.windows.get(name) {
        Some(WindowInfo { open: true, .. }) => format!("`{name}` (open now)"),
        Some(WindowInfo {
            zone,
            next_open: Some(next),
            ..
        }) => format!("`{name}`: next opening {}", opening(next, zone)),
        _ => format!("`{name}`"),
    };
    format!("{held}{when}")
}

/// `2026-11-28 02:00 Europe/Berlin (01:00 UTC)`.
pub fn opening(at: &DateTime<Utc>, zone: &str) -> String {
    let local = local_time(at, Some(zone));
    if crate::window::parse_timezone(zone).is_ok() {
        format!("{local} ({} UTC)", at.format("%H:%M"))
    } else {
        local
    }
}

/// `2026-11-28 02:00 Europe/Berlin`; in UTC without a (known) zone.
pub fn local_time(at: &DateTime<Utc>, zone: Option<&str>) -> String {
    match zone.map(|z| (z, crate::window::parse_timezone(z))) {
        Some((z, Ok(tz))) => format!("{} {z}", at.with_timezone(&tz).format("%Y-%m-%d %H:%M")),
        _ => format!("{} UTC", at.format("%Y-%m-%d %H:%M")),
    }
}

fn artifacts_cell(plan: Option<&PlanDetail>) -> String {
    let Some(plan) = plan.filter(|p| !p.artifacts.is_empty()) else {
        return "-".to_string();
    };
    plan.artifacts
        .iter()
        .map(|a| {
            let size = a
                .size
                .map(human_size)
                .unwrap_or_else(|| "size unknown".into());
            let what = if a.stored { "stored" } else { "to download" };
            format!("`{}` {size}, {what}", a.name)
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {} ({bytes} bytes)", UNITS[unit])
    }
}

/// Cuts `body` to at most `limit` characters, ending with a line that says
/// so (and closing an open code block and `<details>`, so the rest renders).
pub fn truncate(body: &str, limit: usize) -> String {
    if body.chars().count() <= limit {
        return body.to_string();
    }
    let note = |omitted: usize| {
        format!("\n```\n\n</details>\n\n**Plan truncated**: {omitted} more characters did not fit the forge's limit of {limit}; `fermata plan` shows all of it.\n")
    };
    // The note's length barely depends on the count: reserve its longest.
    let reserve = note(body.chars().count()).chars().count();
    let keep = limit.saturating_sub(reserve);
    let cut: String = body.chars().take(keep).collect();
    // Cut at a line end so no line is half shown.
    let cut = match cut.rfind('\n') {
        Some(i) => cut[..=i].to_string(),
        None => cut,
    };
    let omitted = body.chars().count() - cut.chars().count();
    let mut out = cut;
    let in_code = out.matches("```").count() % 2 == 1;
    let open_details = out.matches("<details>").count() > out.matches("</details>").count();
    let mut tail = String::new();
    if in_code {
        tail.push_str("```\n");
    }
    if open_details {
        tail.push_str("\n</details>\n");
    }
    let _ = write!(
        tail,
        "\n**Plan truncated**: {omitted} more characters did not fit the forge's limit of {limit}; `fermata plan` shows all of it.\n"
    );
    out.push_str(&tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CompositionId;
    use crate::report::PlannedArtifact;

    fn row(id: &str, action: Option<ActionKind>, window: Option<&str>) -> Row {
        Row {
            id: id.parse::<CompositionId>().expect("id"),
            state: State::Staged,
            digest: None,
            window: window.map(str::to_string),
            note: String::new(),
            action,
            skipped: window.map(|_| "WindowClosed".to_string()),
        }
    }

    fn report() -> BranchReport {
        let mut r = BranchReport {
            branch: "main".into(),
            ..BranchReport::default()
        };
        r.rows
            .push(row("app/a", Some(ActionKind::Update), Some("night")));
        r.rows.push(row("app/b", None, None));
        r.rows.push(row("app/c", Some(ActionKind::Create), None));
        r.windows.insert(
            "night".into(),
            WindowInfo {
                zone: "Europe/Berlin".into(),
                open: false,
                next_open: Some("2026-11-28T01:00:00Z".parse().expect("time")),
            },
        );
        let id: CompositionId = "app/a".parse().expect("id");
        r.plans.insert(
            id,
            PlanDetail {
                diff: Some("-replicas: 1\n+replicas: 2\n".into()),
                artifacts: vec![PlannedArtifact {
                    name: "model".into(),
                    url: "https://example.invalid/m".into(),
                    size: Some(3 * 1024 * 1024),
                    stored: false,
                }],
                error: None,
                error_code: None,
            },
        );
        r.errors
            .push("symphonies/x.yaml:4: spec.window: no MaintenanceWindow \"nite\"".into());
        r
    }

    fn header() -> PlanHeader<'static> {
        PlanHeader {
            site: "plant-a",
            head: "0123456789abcdef",
            base: "main",
            commands_blocked: false,
            result: None,
        }
    }

    #[test]
    fn plan_lists_actions_windows_artifacts_diffs_and_errors() {
        let md = plan_markdown(&header(), &report());
        assert!(md.starts_with("<!-- fermata:plan:plant-a -->\n"), "{md}");
        assert!(md.contains("1 to create, 1 to update, 0 to delete, 1 unchanged, 1 with errors"));
        assert!(
            md.contains("| `app/a` | update | `night`: next opening 2026-11-28 02:00 Europe/Berlin (01:00 UTC) | `model` 3.0 MiB (3145728 bytes), to download |"),
            "{md}"
        );
        assert!(
            md.contains("| `app/c` | create | at merge (no window) | - |"),
            "{md}"
        );
        assert!(
            !md.contains("`app/b`"),
            "unchanged compositions are counted, not listed"
        );
        assert!(md.contains("<details><summary><code>app/a</code>: update</summary>"));
        assert!(md.contains("```diff\n-replicas: 1\n+replicas: 2\n```"));
        assert!(md.contains("symphonies/x.yaml:4: spec.window: no MaintenanceWindow"));
    }

    #[test]
    fn blocked_commands_and_results_are_said() {
        let mut h = header();
        h.commands_blocked = true;
        h.result = Some("installed at 2026-11-28 02:00 Europe/Berlin".into());
        let md = plan_markdown(&h, &report());
        assert!(md.contains("**installed at 2026-11-28 02:00 Europe/Berlin**"));
        assert!(md.contains("synthesizers were **not run**"));
    }

    #[test]
    fn truncation_keeps_the_limit_and_says_so() {
        let mut r = report();
        let huge: String = (0..20_000).map(|i| format!("+line {i}\n")).collect();
        if let Some(p) = r.plans.values_mut().next() {
            p.diff = Some(huge);
        }
        let md = plan_markdown(&header(), &r);
        assert!(md.chars().count() > 65_536);
        let cut = truncate(&md, 65_536);
        assert!(cut.chars().count() <= 65_536, "{}", cut.chars().count());
        assert!(cut.starts_with(&marker("plant-a")), "the marker survives");
        assert!(cut.contains("**Plan truncated**"));
        assert_eq!(cut.matches("```").count() % 2, 0, "code blocks closed");
        assert_eq!(
            cut.matches("<details>").count(),
            cut.matches("</details>").count()
        );
        assert_eq!(truncate("short", 65_536), "short");
    }
}
