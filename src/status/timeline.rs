//! `timeline.svg`: a branch's deployment history as a picture, beside
//! `summary.md` on the status branch. Compositions down, time across (the
//! last [`DAYS`] days and the next day, so the coming opening shows), each
//! row's segments coloured by the state its status file had, its window's
//! openings shaded behind them, the reconciled commits marked along the
//! top, `now` as a red line. Plain SVG 1.1 with presentation attributes
//! only, as `fleet.svg`, so forges render it in `summary.md`.
//!
//! Each row is `<g class="row" data-composition="..">` with one
//! `<rect class="segment" data-state="..">` per stretch of one state (a
//! `<title>` says what and from when): tools and tests find them by those
//! attributes. The history is read from the status branch's own commits
//! ([`super::StatusRepo`]); this module only draws.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Duration, Utc};

use super::State;

/// How far back the picture looks.
pub const DAYS: i64 = 14;

/// Past this many compositions a branch gets no picture (a row each would
/// be unreadable, and reading the history would cost every publish).
pub const MAX_ROWS: usize = 300;

/// The file beside `summary.md`.
pub const FILE: &str = "timeline.svg";

/// Colours of the states (GitHub's Primer palette), shared with `fleet.svg`;
/// `absent` is a composition a site does not have.
pub const PALETTE: [(&str, &str); 9] = [
    ("installed", "#2da44e"),
    ("removed", "#d0d7de"),
    ("pending", "#bf8700"),
    ("staged", "#54aeff"),
    ("staging", "#218bff"),
    ("installing", "#0969da"),
    ("removing", "#fb8f44"),
    ("failed", "#cf222e"),
    ("absent", "#ffffff"),
];

/// The colour of a state's name; grey for one the palette lacks.
pub fn colour(state: &str) -> &'static str {
    PALETTE
        .iter()
        .find(|(s, _)| *s == state)
        .map(|(_, c)| *c)
        .unwrap_or("#8c959f")
}

/// By window name: its openings (start, end).
pub type Openings = BTreeMap<String, Vec<(DateTime<Utc>, DateTime<Utc>)>>;

/// The openings of `windows` over the span a picture at `now` shows, each
/// window's computed once however often it is named (a status update names
/// it once per status: ten thousand under one window computed its openings
/// ten thousand times).
pub fn openings<'a>(
    windows: impl IntoIterator<Item = (&'a String, &'a crate::window::Window)>,
    now: DateTime<Utc>,
) -> Openings {
    let span = Timeline {
        now,
        ..Timeline::default()
    };
    let mut out = Openings::new();
    for (name, w) in windows {
        if !out.contains_key(name) {
            out.insert(name.clone(), w.openings_between(span.from(), span.to()));
        }
    }
    out
}

/// One composition's history: from each instant on, its state (`None`:
/// its status file was removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub window: Option<String>,
    pub changes: Vec<(DateTime<Utc>, Option<State>)>,
}

/// What the picture shows.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub now: DateTime<Utc>,
    /// By composition id (`symphony/variation`).
    pub rows: BTreeMap<String, Row>,
    pub windows: Openings,
    /// Reconciled commits: when, and the short id.
    pub commits: Vec<(DateTime<Utc>, String)>,
}

impl Timeline {
    /// The first instant shown.
    pub fn from(&self) -> DateTime<Utc> {
        self.now - Duration::days(DAYS)
    }

    /// The last instant shown.
    pub fn to(&self) -> DateTime<Utc> {
        self.now + Duration::days(1)
    }

    /// Marks a reconciled commit at `at`, unless it is the one marked last.
    pub fn mark_commit(&mut self, at: DateTime<Utc>, short: String) {
        if self.commits.last().map(|(_, c)| c) != Some(&short) {
            self.commits.push((at, short));
        }
    }

    /// Leaves out the rows removed before the picture starts.
    pub fn drop_gone(&mut self) {
        let from = self.from();
        self.rows.retain(|_, r| {
            r.changes
                .last()
                .is_some_and(|(at, state)| state.is_some() || *at >= from)
        });
    }
}

const WIDTH: f64 = 840.0;
const ROW_H: usize = 20;
const CHAR_W: usize = 7;
const TOP: usize = 46;

/// The picture.
pub fn render(t: &Timeline) -> String {
    let label_w = (t.rows.keys().map(|k| k.chars().count()).max().unwrap_or(8) + 2) * CHAR_W;
    let (from, to) = (t.from(), t.to());
    let span = (to - from).num_seconds().max(1) as f64;
    let x = |at: DateTime<Utc>| -> f64 {
        let s = (at.clamp(from, to) - from).num_seconds() as f64;
        label_w as f64 + WIDTH * s / span
    };
    let height = TOP + ROW_H * t.rows.len().max(1) + 40;
    let width = label_w as f64 + WIDTH + 10.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height}" viewBox="0 0 {width:.0} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    // Days: a line and a date at each midnight (UTC).
    let mut day = from.date_naive().and_hms_opt(0, 0, 0).map(|d| d.and_utc());
    while let Some(d) = day.filter(|d| *d <= to) {
        if d >= from {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#eaeef2"/><text x="{3:.1}" y="{4}" fill="#57606a" font-size="10">{5}</text>"##,
                x(d),
                TOP - 4,
                height - 30,
                x(d) + 2.0,
                TOP - 8,
                d.format("%d %b")
            );
        }
        day = d.checked_add_signed(Duration::days(1));
    }
    // Reconciled commits along the top.
    for (at, short) in t.commits.iter().filter(|(at, _)| *at >= from && *at <= to) {
        let _ = writeln!(
            svg,
            r##"<g class="commit"><title>commit {0} reconciled {1}</title><line x1="{2:.1}" y1="14" x2="{2:.1}" y2="{3}" stroke="#6e7781" stroke-dasharray="2,2"/><circle cx="{2:.1}" cy="14" r="3" fill="#6e7781"/></g>"##,
            esc(short),
            at.format("%Y-%m-%d %H:%M UTC"),
            x(*at),
            height - 30
        );
    }
    for (i, (id, row)) in t.rows.iter().enumerate() {
        let y = TOP + i * ROW_H;
        let _ = writeln!(svg, r#"<g class="row" data-composition="{}">"#, esc(id));
        let _ = writeln!(
            svg,
            r##"<text x="4" y="{}" fill="#24292f">{}</text>"##,
            y + 14,
            esc(id)
        );
        let openings = row.window.as_ref().and_then(|w| t.windows.get(w));
        for (start, end) in openings.into_iter().flatten() {
            if *end < from || *start > to {
                continue;
            }
            let _ = writeln!(
                svg,
                r##"<rect class="window" x="{:.1}" y="{}" width="{:.1}" height="{}" fill="#fff8c5"><title>window {} open {} to {}</title></rect>"##,
                x(*start),
                y,
                (x(*end) - x(*start)).max(1.0),
                ROW_H - 2,
                esc(row.window.as_deref().unwrap_or("")),
                start.format("%a %d %b %H:%M UTC"),
                end.format("%H:%M UTC")
            );
        }
        for (k, (start, state)) in row.changes.iter().enumerate() {
            let Some(state) = state else { continue };
            let end = row.changes.get(k + 1).map_or(t.now, |(at, _)| *at);
            if end < from || *start > t.now {
                continue;
            }
            let _ = writeln!(
                svg,
                r##"<rect class="segment" data-state="{0}" x="{1:.1}" y="{2}" width="{3:.1}" height="{4}" fill="{5}"><title>{6}: {0} from {7}</title></rect>"##,
                state.as_str(),
                x(*start),
                y + 4,
                (x(end) - x(*start)).max(1.5),
                ROW_H - 10,
                colour(state.as_str()),
                esc(id),
                start.format("%Y-%m-%d %H:%M UTC")
            );
        }
        svg.push_str("</g>\n");
    }
    let _ = writeln!(
        svg,
        r##"<g class="now"><line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#cf222e" stroke-width="1.5"/><text x="{3:.1}" y="{1}" fill="#cf222e" font-size="10">now</text></g>"##,
        x(t.now),
        TOP - 4,
        height - 30,
        x(t.now) + 3.0
    );
    // Legend.
    let mut lx = 4.0;
    let ly = height - 14;
    for (state, c) in PALETTE.iter().filter(|(s, _)| *s != "absent") {
        let _ = writeln!(
            svg,
            r##"<rect x="{lx:.1}" y="{}" width="10" height="10" fill="{c}"/><text x="{:.1}" y="{ly}" fill="#57606a" font-size="10">{state}</text>"##,
            ly - 9,
            lx + 13.0
        );
        lx += 13.0 + (state.len() * 6 + 12) as f64;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{lx:.1}" y="{}" width="10" height="10" fill="#fff8c5" stroke="#d4a72c"/><text x="{:.1}" y="{ly}" fill="#57606a" font-size="10">window open</text>"##,
        ly - 9,
        lx + 13.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
    }

    #[test]
    fn one_row_per_composition_one_segment_per_state_stretch() {
        let mut t = Timeline {
            now: at(26, 12),
            ..Timeline::default()
        };
        t.rows.insert(
            "shop/a".into(),
            Row {
                window: Some("sat".into()),
                changes: vec![
                    (at(20, 10), Some(State::Staged)),
                    (at(21, 2), Some(State::Installed)),
                ],
            },
        );
        t.rows.insert(
            "shop/<b>".into(),
            Row {
                window: None,
                changes: vec![(at(1, 0), Some(State::Failed)), (at(22, 0), None)],
            },
        );
        t.windows.insert("sat".into(), vec![(at(21, 2), at(21, 5))]);
        t.commits.push((at(20, 10), "3f2a1c0".into()));
        let svg = render(&t);
        assert_eq!(svg.matches(r#"<g class="row""#).count(), 2);
        assert_eq!(svg.matches(r#"data-state="staged""#).count(), 1);
        assert_eq!(svg.matches(r#"data-state="installed""#).count(), 1);
        // Failed before the picture starts, until removed inside it.
        assert_eq!(svg.matches(r#"data-state="failed""#).count(), 1);
        assert_eq!(svg.matches(r#"class="window""#).count(), 1);
        assert!(svg.contains("commit 3f2a1c0 reconciled 2026-11-20 10:00 UTC"));
        assert!(svg.contains("shop/&lt;b&gt;"), "escaped");
        assert!(svg.contains(r#"<g class="now">"#));
    }
}
