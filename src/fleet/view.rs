//! The fleet view as a value: every site's statuses of one branch, reduced
//! to what an operator asks of a fleet (which sites run what, which reached
//! the newest commit, which lag and why). Pure: what was read and the time
//! in, the view out; its JSON is `fermata fleet status --format json` and
//! `fleet.json` on `fermata/fleet`.
//!
//! JSON (camelCase, keys stable; optional ones absent rather than null):
//!
//! ```text
//! { branch, head?,                       // the watched branch and its newest commit
//!   compositions: ["sym/var", ...],      // every composition any site reports, sorted
//!   totals: { sites, atHead, lagging, states: {state: count} },
//!   sites: [ { site, statusCommit?, reportedAt?, reconciled?, atHead,
//!              states: {state: count},
//!              symphonies: [ { name, states, digest?, compositions: [
//!                  { composition, deploymentId, state, digest?, applied?,
//!                    window?: {name, open, nextOpen?}, reason?, error?: {code, source, message} } ] } ],
//!              lagging: [ { reason, composition?, message, until? } ],
//!              error? } ] }
//! ```
//!
//! `atHead`: the site reconciled the branch's newest commit and every
//! composition there is `installed` (or `removed`). Any other site lags,
//! with every reason that applies: `behind` (it reconciled an older commit,
//! or none), `offline` (behind, and its newest status commit is older than
//! the stale limit: it stopped reporting), `failed`, `windowClosed` (staged,
//! waiting for its window, `until` its next opening), `waiting` (held by
//! something else: a gate, a dependency), `unreadable` (its branch could
//! not be read). A site at the newest commit is never offline: a settled
//! site has nothing to commit, however long ago it last did.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::Digest;
use crate::status::{DeploymentStatus, State, StatusErrorInfo, WindowStatus};

/// What was read of one site's status branch, for one source branch.
#[derive(Debug, Clone, Default)]
pub struct SiteReport {
    pub site: String,
    /// The tip of `fermata/sites/<site>`.
    pub status_commit: Option<String>,
    /// When that tip was committed: the site's last report.
    pub reported_at: Option<DateTime<Utc>>,
    /// The source commit of the newest status commit naming the branch
    /// (`Fermata-Source: <branch>@<commit>`): what the site reconciled last.
    pub reconciled: Option<String>,
    /// Its statuses of the branch.
    pub statuses: Vec<DeploymentStatus>,
    /// Why the branch could not be read, if it could not.
    pub error: Option<String>,
}

/// Everything the view is made of.
#[derive(Debug, Clone, Default)]
pub struct FleetInput {
    pub branch: String,
    /// The branch's newest commit; `None` when the branch is unknown.
    pub head: Option<String>,
    pub sites: Vec<SiteReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    pub branch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    pub compositions: Vec<String>,
    pub totals: Totals,
    pub sites: Vec<SiteView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub sites: usize,
    pub at_head: usize,
    pub lagging: usize,
    pub states: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteView {
    pub site: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciled: Option<String>,
    pub at_head: bool,
    pub states: BTreeMap<String, usize>,
    pub symphonies: Vec<SymphonyView>,
    pub lagging: Vec<Lag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SymphonyView {
    pub name: String,
    pub states: BTreeMap<String, usize>,
    /// The symphony's desired state at the site, as one value: the first 12
    /// hex digits of the SHA-256 of its `composition digest` lines, so two
    /// sites show the same one exactly when their compositions' digests
    /// are the same. Absent while no composition has a digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub compositions: Vec<CompositionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositionView {
    pub composition: String,
    pub deployment_id: String,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowStatus>,
    /// The Ready condition's reason while it is not True (`WindowClosed`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusErrorInfo>,
}

impl FleetView {
    /// `fleet main @ 3f2a1c0: 4 sites, 2 at the newest commit, 2 lagging`:
    /// the table's first line, the SVG's title, `fermata/fleet`'s subject.
    pub fn headline(&self) -> String {
        let head = self
            .head
            .as_deref()
            .map(short)
            .unwrap_or_else(|| "-".into());
        format!(
            "fleet {} @ {head}: {} sites, {} at the newest commit, {} lagging",
            self.branch, self.totals.sites, self.totals.at_head, self.totals.lagging
        )
    }
}

/// Why a site is not at the newest commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LagReason {
    Unreadable,
    Offline,
    Behind,
    Failed,
    WindowClosed,
    Waiting,
}

impl LagReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LagReason::Unreadable => "unreadable",
            LagReason::Offline => "offline",
            LagReason::Behind => "behind",
            LagReason::Failed => "failed",
            LagReason::WindowClosed => "windowClosed",
            LagReason::Waiting => "waiting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lag {
    pub reason: LagReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub composition: Option<String>,
    pub message: String,
    /// For `windowClosed`, the window's next opening, when the status says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

impl FleetView {
    /// Only the sites that lag (`--lagging`); totals stay the whole fleet's.
    pub fn lagging_only(mut self) -> FleetView {
        self.sites.retain(|s| !s.at_head);
        self
    }
}

/// The view of `input` at `now`; a lagging site whose last report is older
/// than `stale` is offline.
pub fn aggregate(input: &FleetInput, now: DateTime<Utc>, stale: Duration) -> FleetView {
    let mut sites: Vec<SiteView> = input
        .sites
        .iter()
        .map(|s| site_view(s, input.head.as_deref(), &input.branch, now, stale))
        .collect();
    sites.sort_by(|a, b| a.site.cmp(&b.site));
    let compositions: BTreeSet<String> = sites
        .iter()
        .flat_map(|s| &s.symphonies)
        .flat_map(|y| &y.compositions)
        .map(|c| c.composition.clone())
        .collect();
    let mut states = BTreeMap::new();
    for s in &sites {
        for (k, n) in &s.states {
            *states.entry(k.clone()).or_insert(0) += n;
        }
    }
    let at_head = sites.iter().filter(|s| s.at_head).count();
    FleetView {
        branch: input.branch.clone(),
        head: input.head.clone(),
        compositions: compositions.into_iter().collect(),
        totals: Totals {
            sites: sites.len(),
            at_head,
            lagging: sites.len() - at_head,
            states,
        },
        sites,
    }
}

fn site_view(
    r: &SiteReport,
    head: Option<&str>,
    branch: &str,
    now: DateTime<Utc>,
    stale: Duration,
) -> SiteView {
    let mut by_symphony: BTreeMap<String, Vec<CompositionView>> = BTreeMap::new();
    for s in &r.statuses {
        let c = composition_view(s);
        let sym = c
            .composition
            .split_once('/')
            .map(|(s, _)| s.to_string())
            .unwrap_or_else(|| c.composition.clone());
        by_symphony.entry(sym).or_default().push(c);
    }
    let symphonies: Vec<SymphonyView> = by_symphony
        .into_iter()
        .map(|(name, mut compositions)| {
            compositions.sort_by(|a, b| a.composition.cmp(&b.composition));
            SymphonyView {
                states: counts(compositions.iter().map(|c| c.state)),
                digest: symphony_digest(&compositions),
                name,
                compositions,
            }
        })
        .collect();
    let all = || symphonies.iter().flat_map(|y| &y.compositions);
    let states = counts(all().map(|c| c.state));
    let mut lagging = Vec::new();
    if let Some(e) = &r.error {
        lagging.push(Lag {
            reason: LagReason::Unreadable,
            composition: None,
            message: e.clone(),
            until: None,
        });
    }
    let behind = head.is_none() || r.reconciled.as_deref() != head;
    if behind {
        let stale_since = r.reported_at.filter(|t| {
            now.signed_duration_since(*t)
                .to_std()
                .is_ok_and(|age| age > stale)
        });
        let newest = head.map(short).unwrap_or_else(|| "unknown".to_string());
        let message = match &r.reconciled {
            Some(c) => format!("reconciled {branch}@{}, the newest is {newest}", short(c)),
            None => format!("no status of branch {branch} yet; the newest is {newest}"),
        };
        lagging.push(Lag {
            reason: LagReason::Behind,
            composition: None,
            message,
            until: None,
        });
        match (stale_since, r.reported_at) {
            (Some(t), _) => lagging.push(Lag {
                reason: LagReason::Offline,
                composition: None,
                // No "ago": the view is committed on change (`fermata/fleet`),
                // and a clock in it would change it every pass.
                message: format!(
                    "no status since {} (stale after {})",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    humantime::format_duration(stale)
                ),
                until: None,
            }),
            (None, None) if r.error.is_none() => lagging.push(Lag {
                reason: LagReason::Offline,
                composition: None,
                message: "never reported".to_string(),
                until: None,
            }),
            _ => {}
        }
    }
    for c in all() {
        if let Some(lag) = composition_lag(c) {
            lagging.push(lag);
        }
    }
    lagging.sort_by(|a, b| (a.reason, &a.composition).cmp(&(b.reason, &b.composition)));
    SiteView {
        site: r.site.clone(),
        status_commit: r.status_commit.clone(),
        reported_at: r.reported_at,
        reconciled: r.reconciled.clone(),
        at_head: lagging.is_empty(),
        states,
        symphonies,
        lagging,
        error: r.error.clone(),
    }
}

fn composition_view(s: &DeploymentStatus) -> CompositionView {
    let reason = s
        .status
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready" && c.status != "True")
        .map(|c| c.reason.clone());
    CompositionView {
        composition: s.composition().to_string(),
        deployment_id: s.metadata.deployment_id.clone(),
        state: s.status.state,
        digest: s.status.digest.clone(),
        applied: s.status.applied.clone(),
        window: s.status.window.clone(),
        reason,
        error: s.status.error.clone(),
    }
}

/// Why this composition keeps its site from the newest commit, if it does.
fn composition_lag(c: &CompositionView) -> Option<Lag> {
    let lag = |reason, message: String, until| Lag {
        reason,
        composition: Some(c.composition.clone()),
        message,
        until,
    };
    match c.state {
        State::Installed | State::Removed => None,
        State::Failed => {
            let message = match &c.error {
                Some(e) => format!("{}: {}: {}", c.composition, e.code, e.message),
                None => format!(
                    "{}: failed ({})",
                    c.composition,
                    c.reason.as_deref().unwrap_or("no reason given")
                ),
            };
            Some(lag(LagReason::Failed, message, None))
        }
        _ => match &c.window {
            Some(w) if !w.open => {
                let until = w
                    .next_open
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "no next opening".to_string());
                Some(lag(
                    LagReason::WindowClosed,
                    format!(
                        "{}: {} until window {} opens: {until}",
                        c.composition, c.state, w.name
                    ),
                    w.next_open,
                ))
            }
            _ => Some(lag(
                LagReason::Waiting,
                format!(
                    "{}: {} ({})",
                    c.composition,
                    c.state,
                    c.reason.as_deref().unwrap_or("in progress")
                ),
                None,
            )),
        },
    }
}

fn counts(states: impl Iterator<Item = State>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in states {
        *out.entry(s.as_str().to_string()).or_insert(0) += 1;
    }
    out
}

fn symphony_digest(compositions: &[CompositionView]) -> Option<String> {
    if compositions.iter().all(|c| c.digest.is_none()) {
        return None;
    }
    let mut text = String::new();
    for c in compositions {
        text.push_str(&c.composition);
        text.push(' ');
        text.push_str(c.digest.as_deref().unwrap_or("-"));
        text.push('\n');
    }
    Some(Digest::of(text.as_bytes()).to_hex()[..12].to_string())
}

/// Seven hex digits, as `git log --oneline` shows a commit.
pub fn short(commit: &str) -> String {
    commit.get(..7).unwrap_or(commit).to_string()
}

/// `3 installed, 1 failed`, least severe first (as status summaries).
pub fn state_counts(states: &BTreeMap<String, usize>) -> String {
    let mut v: Vec<(u8, String)> = states
        .iter()
        .map(|(k, n)| (severity(k), format!("{n} {k}")))
        .collect();
    v.sort();
    if v.is_empty() {
        return "-".to_string();
    }
    v.into_iter().map(|(_, s)| s).collect::<Vec<_>>().join(", ")
}

fn severity(name: &str) -> u8 {
    [
        State::Removed,
        State::Installed,
        State::Pending,
        State::Staged,
        State::Staging,
        State::Installing,
        State::Removing,
        State::Failed,
    ]
    .iter()
    .find(|s| s.as_str() == name)
    .map(|s| s.severity())
    .unwrap_or(u8::MAX)
}

/// The text table: one line per site and symphony.
pub fn table(view: &FleetView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}", view.headline());
    let _ = writeln!(
        out,
        "{:<16} {:<20} {:<28} {:<12} {:<8} {:<6} NOTE",
        "SITE", "SYMPHONY", "STATES", "DIGEST", "COMMIT", "NEWEST"
    );
    for s in &view.sites {
        let commit = s
            .reconciled
            .as_deref()
            .map(short)
            .unwrap_or_else(|| "-".into());
        let newest = if s.at_head { "yes" } else { "no" };
        let site_note = s
            .lagging
            .iter()
            .filter(|l| l.composition.is_none())
            .map(|l| format!("{}: {}", l.reason.as_str(), l.message))
            .collect::<Vec<_>>()
            .join("; ");
        if s.symphonies.is_empty() {
            let _ = writeln!(
                out,
                "{:<16} {:<20} {:<28} {:<12} {:<8} {:<6} {}",
                s.site, "-", "-", "-", commit, newest, site_note
            );
        }
        for (i, y) in s.symphonies.iter().enumerate() {
            let mut notes: Vec<String> = s
                .lagging
                .iter()
                .filter(|l| {
                    l.composition
                        .as_deref()
                        .and_then(|c| c.split_once('/'))
                        .is_some_and(|(sym, _)| sym == y.name)
                })
                .map(|l| format!("{}: {}", l.reason.as_str(), l.message))
                .collect();
            if i == 0 && !site_note.is_empty() {
                notes.insert(0, site_note.clone());
            }
            let _ = writeln!(
                out,
                "{:<16} {:<20} {:<28} {:<12} {:<8} {:<6} {}",
                s.site,
                y.name,
                state_counts(&y.states),
                y.digest.as_deref().unwrap_or("-"),
                commit,
                newest,
                notes.join("; ")
            );
        }
    }
    out
}

/// The `--lagging` table: one line per site and reason.
pub fn lagging_table(view: &FleetView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let head = view
        .head
        .as_deref()
        .map(short)
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "fleet {} @ {head}: {} of {} sites lagging",
        view.branch, view.totals.lagging, view.totals.sites
    );
    let _ = writeln!(out, "{:<16} {:<13} DETAIL", "SITE", "REASON");
    for s in view.sites.iter().filter(|s| !s.at_head) {
        for l in &s.lagging {
            let _ = writeln!(
                out,
                "{:<16} {:<13} {}",
                s.site,
                l.reason.as_str(),
                l.message
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CompositionId;
    use crate::source::SourceRef;
    use crate::status::{Condition, StatusBody, StatusMetadata};

    const HEAD: &str = "1111111111111111111111111111111111111111";
    const OLD: &str = "2222222222222222222222222222222222222222";

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn status(id: &str, state: State) -> DeploymentStatus {
        let (sym, var) = id.split_once('/').expect("sym/var");
        DeploymentStatus {
            api_version: "fermata.dev/v1alpha1".into(),
            kind: "DeploymentStatus".into(),
            metadata: StatusMetadata::new(
                &CompositionId::new(sym, var),
                None,
                t("2026-11-21T02:00:00Z"),
            ),
            source: SourceRef {
                branch: "main".into(),
                commit: HEAD.into(),
            },
            status: StatusBody {
                state,
                digest: Some(format!("{:0>64}", id.len())),
                applied: None,
                window: None,
                conditions: Vec::new(),
                error: None,
                r#override: None,
                symphony: None,
                ungated: Vec::new(),
                components: Vec::new(),
            },
        }
    }

    fn failed(id: &str, code: &str, message: &str) -> DeploymentStatus {
        let mut s = status(id, State::Failed);
        s.status.error = Some(StatusErrorInfo {
            code: code.into(),
            source: "x.yaml:3".into(),
            message: message.into(),
        });
        s
    }

    fn waiting_for_window(id: &str, next: &str) -> DeploymentStatus {
        let mut s = status(id, State::Staged);
        s.status.window = Some(WindowStatus {
            name: "sat".into(),
            open: false,
            next_open: Some(t(next)),
        });
        s.status.conditions.push(Condition {
            r#type: "Ready".into(),
            status: "False".into(),
            reason: "WindowClosed".into(),
            message: String::new(),
            last_transition_time: None,
        });
        s
    }

    fn site(
        name: &str,
        reconciled: Option<&str>,
        at: &str,
        statuses: Vec<DeploymentStatus>,
    ) -> SiteReport {
        SiteReport {
            site: name.into(),
            status_commit: Some(format!("{:0>40}", name.len())),
            reported_at: Some(t(at)),
            reconciled: reconciled.map(str::to_string),
            statuses,
            error: None,
        }
    }

    const NOW: &str = "2026-11-21T03:00:00Z";
    const HOUR: Duration = Duration::from_secs(3600);

    /// (case, site, expected lag reasons in order)
    #[test]
    fn why_each_site_lags() {
        let cases: Vec<(&str, SiteReport, Vec<LagReason>)> = vec![
            (
                "everything installed at the newest commit",
                site(
                    "a",
                    Some(HEAD),
                    "2026-11-21T02:59:00Z",
                    vec![status("shop/app", State::Installed)],
                ),
                vec![],
            ),
            (
                "settled long ago at the newest commit is not offline",
                site(
                    "a",
                    Some(HEAD),
                    "2026-11-01T00:00:00Z",
                    vec![status("shop/app", State::Installed)],
                ),
                vec![],
            ),
            (
                "a failure at the newest commit",
                site(
                    "a",
                    Some(HEAD),
                    "2026-11-21T02:59:00Z",
                    vec![
                        status("shop/app", State::Installed),
                        failed("shop/web", "RenderFailed", "boom"),
                    ],
                ),
                vec![LagReason::Failed],
            ),
            (
                "staged, its window closed",
                site(
                    "a",
                    Some(HEAD),
                    "2026-11-21T02:59:00Z",
                    vec![waiting_for_window("shop/app", "2026-11-28T02:00:00Z")],
                ),
                vec![LagReason::WindowClosed],
            ),
            (
                "pending for another reason",
                site(
                    "a",
                    Some(HEAD),
                    "2026-11-21T02:59:00Z",
                    vec![status("shop/app", State::Pending)],
                ),
                vec![LagReason::Waiting],
            ),
            (
                "an older commit, reported recently",
                site(
                    "a",
                    Some(OLD),
                    "2026-11-21T02:30:00Z",
                    vec![status("shop/app", State::Installed)],
                ),
                vec![LagReason::Behind],
            ),
            (
                "an older commit, last reported two hours ago",
                site(
                    "a",
                    Some(OLD),
                    "2026-11-21T01:00:00Z",
                    vec![status("shop/app", State::Installed)],
                ),
                vec![LagReason::Offline, LagReason::Behind],
            ),
            (
                "exactly at the stale limit is not offline yet",
                site("a", Some(OLD), "2026-11-21T02:00:00Z", vec![]),
                vec![LagReason::Behind],
            ),
            (
                "a branch never reported",
                SiteReport {
                    site: "a".into(),
                    ..SiteReport::default()
                },
                vec![LagReason::Offline, LagReason::Behind],
            ),
            (
                "an unreadable branch",
                SiteReport {
                    site: "a".into(),
                    error: Some("bad file".into()),
                    ..SiteReport::default()
                },
                vec![LagReason::Unreadable, LagReason::Behind],
            ),
        ];
        for (case, report, want) in cases {
            let input = FleetInput {
                branch: "main".into(),
                head: Some(HEAD.into()),
                sites: vec![report],
            };
            let view = aggregate(&input, t(NOW), HOUR);
            let got: Vec<_> = view.sites[0].lagging.iter().map(|l| l.reason).collect();
            assert_eq!(got, want, "{case}: {:#?}", view.sites[0].lagging);
            assert_eq!(view.sites[0].at_head, want.is_empty(), "{case}");
            assert_eq!(view.totals.lagging, usize::from(!want.is_empty()), "{case}");
        }
    }

    #[test]
    fn lag_messages_say_what_and_until_when() {
        let input = FleetInput {
            branch: "main".into(),
            head: Some(HEAD.into()),
            sites: vec![
                site(
                    "a",
                    Some(HEAD),
                    NOW,
                    vec![failed("shop/web", "RenderFailed", "boom")],
                ),
                site(
                    "b",
                    Some(HEAD),
                    NOW,
                    vec![waiting_for_window("shop/app", "2026-11-28T02:00:00Z")],
                ),
                site("c", Some(OLD), "2026-11-21T00:30:00Z", vec![]),
            ],
        };
        let view = aggregate(&input, t(NOW), HOUR);
        let messages: Vec<_> = view
            .sites
            .iter()
            .flat_map(|s| {
                s.lagging
                    .iter()
                    .map(move |l| (s.site.as_str(), l.message.as_str()))
            })
            .collect();
        assert_eq!(
            messages,
            [
                ("a", "shop/web: RenderFailed: boom"),
                (
                    "b",
                    "shop/app: staged until window sat opens: 2026-11-28T02:00:00Z"
                ),
                ("c", "no status since 2026-11-21T00:30:00Z (stale after 1h)"),
                ("c", "reconciled main@2222222, the newest is 1111111"),
            ]
        );
        assert_eq!(
            view.sites[1].lagging[0].until,
            Some(t("2026-11-28T02:00:00Z"))
        );
    }

    #[test]
    fn sites_sorted_compositions_unioned_counts_totalled() {
        let input = FleetInput {
            branch: "main".into(),
            head: Some(HEAD.into()),
            sites: vec![
                site(
                    "s2",
                    Some(HEAD),
                    NOW,
                    vec![
                        status("shop/web", State::Installed),
                        status("line/vision", State::Installed),
                    ],
                ),
                site(
                    "s1",
                    Some(HEAD),
                    NOW,
                    vec![
                        status("shop/app", State::Installed),
                        failed("shop/web", "X", "y"),
                    ],
                ),
            ],
        };
        let view = aggregate(&input, t(NOW), HOUR);
        assert_eq!(
            view.sites
                .iter()
                .map(|s| s.site.as_str())
                .collect::<Vec<_>>(),
            ["s1", "s2"]
        );
        assert_eq!(view.compositions, ["line/vision", "shop/app", "shop/web"]);
        assert_eq!(
            view.totals.states,
            BTreeMap::from([("failed".to_string(), 1), ("installed".to_string(), 3)])
        );
        assert_eq!((view.totals.at_head, view.totals.lagging), (1, 1));
        let s1 = &view.sites[0];
        assert_eq!(s1.symphonies.len(), 1);
        assert_eq!(
            state_counts(&s1.symphonies[0].states),
            "1 installed, 1 failed"
        );
        // One symphony digest for equal desired states, another for another.
        let web_only = |st| {
            aggregate(
                &FleetInput {
                    branch: "main".into(),
                    head: None,
                    sites: vec![site("x", None, NOW, vec![status("shop/web", st)])],
                },
                t(NOW),
                HOUR,
            )
            .sites[0]
                .symphonies[0]
                .digest
                .clone()
        };
        assert_eq!(web_only(State::Installed), web_only(State::Failed));
        assert_ne!(web_only(State::Installed), s1.symphonies[0].digest);
        assert_eq!(view.clone().lagging_only().sites.len(), 1);
    }

    #[test]
    fn json_keys_are_the_documented_ones() {
        let input = FleetInput {
            branch: "main".into(),
            head: Some(HEAD.into()),
            sites: vec![site(
                "s1",
                Some(HEAD),
                NOW,
                vec![failed("shop/web", "X", "y")],
            )],
        };
        let v = serde_json::to_value(aggregate(&input, t(NOW), HOUR)).expect("json");
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<_> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&v),
            ["branch", "compositions", "head", "sites", "totals"]
        );
        assert_eq!(keys(&v["totals"]), ["atHead", "lagging", "sites", "states"]);
        let s = &v["sites"][0];
        assert_eq!(
            keys(s),
            [
                "atHead",
                "lagging",
                "reconciled",
                "reportedAt",
                "site",
                "states",
                "statusCommit",
                "symphonies"
            ]
        );
        assert_eq!(
            keys(&s["symphonies"][0]),
            ["compositions", "digest", "name", "states"]
        );
        assert_eq!(
            keys(&s["symphonies"][0]["compositions"][0]),
            ["composition", "deploymentId", "digest", "error", "state"]
        );
        assert_eq!(s["lagging"][0]["reason"], "failed");
        assert_eq!(s["lagging"][0]["composition"], "shop/web");
    }
}
