//! What an activation does next, decided from its state and what was
//! observed: pure (no I/O, no clock: `now` is an input), so replaying a
//! state with the same observations gives the same decision (invariant 12),
//! and every rule is table-tested. The driver ([`super::drive`]) carries a
//! decision out and records it as the next state.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::state::{ActivationState, Approval, BatchRecord, Phase, SiteResult, StageRecord};
use crate::forge::PrState;
use crate::model::campaign::{Action, Campaign, Stage};
use crate::model::Site;

/// Per site, what a promote replaced there.
pub type Replaced = BTreeMap<String, super::edit::Replaced>;

/// What one promoted site shows, as the driver read it from the site's
/// status branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteProgress {
    /// Reconciled a commit that has its promote, and every composition
    /// there is in the awaited state.
    Reached,
    NotYet,
    Failed(String),
}

/// What the driver observed for a decision.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Every Site of the watched branch's head.
    pub sites: BTreeMap<String, Site>,
    /// Per promoted site of the running stage.
    pub progress: BTreeMap<String, SiteProgress>,
    /// Approvals found (signed commits, merged pull requests) for this
    /// activation, any stage.
    pub approvals: Vec<Approval>,
    /// Results of checks site agents ran for this activation, by stage.
    pub remote: BTreeMap<String, RemoteResult>,
    /// The state of each pull request of the running stage's batches not
    /// recorded as merged yet (`pullRequest: true`), as the forge says.
    pub pull_requests: BTreeMap<u64, PrState>,
}

/// A check a site's agent ran for a stage (remote execution), as it wrote
/// it on its own status branch: for the stage run that started at
/// `started` (a later run of the same stage needs a new result).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteResult {
    pub started: DateTime<Utc>,
    pub passed: bool,
    pub detail: String,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Commit `set` into the env of `sites` (batch `batch` of the stage).
    Promote {
        batch: usize,
        of: usize,
        sites: Vec<String>,
        set: BTreeMap<String, String>,
    },
    /// Commit these values back (per site, key: value before; `None`: remove).
    Revert {
        sites: Replaced,
    },
    /// Record these approvals (found, not recorded yet).
    Approve(Vec<Approval>),
    /// The pull request of batch `batch` (from 1) was merged: from now on
    /// its promote is `commit`, the merge commit, which the await reads.
    Merged {
        batch: usize,
        pull_request: u64,
        commit: String,
    },
    /// Run this check; its result becomes the stage's outputs (`passed`,
    /// `detail`), which `next` reads.
    Verify(crate::model::campaign::Verify),
    /// What the check found (made by the driver from [`Decision::Verify`]).
    Verified {
        passed: bool,
        detail: String,
    },
    /// The stage is done: its outputs, and the stage `next` picked (`None`:
    /// the activation is finished).
    Advance {
        outputs: BTreeMap<String, serde_json::Value>,
        sites: BTreeMap<String, SiteResult>,
        next: Option<String>,
    },
    /// Nothing to do until something changes; by `until` at the latest.
    Wait {
        until: Option<DateTime<Utc>>,
        why: String,
    },
    Fail(String),
}

/// The next step of `state` (which must be running) of `campaign`.
pub fn decide(
    campaign: &Campaign,
    state: &ActivationState,
    world: &World,
    now: DateTime<Utc>,
) -> Decision {
    if state.phase != Phase::Running {
        return Decision::Wait {
            until: None,
            why: format!("the activation is {:?}", state.phase),
        };
    }
    let Some(stage) = state.stage.as_deref().and_then(|s| campaign.stage(s)) else {
        return Decision::Fail(format!(
            "stage {:?} is not in campaign {}",
            state.stage, campaign.name
        ));
    };
    let empty = StageRecord::default();
    let rec = state.stages.get(&stage.name).unwrap_or(&empty);
    let started = rec.started.unwrap_or(now);
    let done = |outputs, sites| advance(campaign, stage, state, outputs, sites);
    match &stage.action {
        Action::Promote {
            sites, set, await_, ..
        } => {
            let selected: Vec<String> = sites
                .select(&world.sites)
                .into_iter()
                .map(str::to_string)
                .collect();
            let set = match resolve(set, &state.inputs) {
                Ok(set) => set,
                Err(e) => return Decision::Fail(format!("stage {}: {e}", stage.name)),
            };
            promote(
                stage,
                rec,
                &selected,
                set,
                await_.as_ref(),
                world,
                started,
                now,
                done,
            )
        }
        Action::Wait { duration } => {
            let until = started + chrono::Duration::from_std(*duration).unwrap_or_default();
            if now >= until {
                done(BTreeMap::new(), BTreeMap::new())
            } else {
                Decision::Wait {
                    until: Some(until),
                    why: format!("stage {} waits until {}", stage.name, until.to_rfc3339()),
                }
            }
        }
        Action::Approval { approvers } => {
            let recorded: Vec<&Approval> = state
                .approvals
                .iter()
                .filter(|a| a.stage == stage.name)
                .collect();
            let new: Vec<Approval> = world
                .approvals
                .iter()
                .filter(|a| a.stage == stage.name)
                .filter(|a| !recorded.iter().any(|r| r.by == a.by))
                .cloned()
                .collect();
            if !new.is_empty() {
                return Decision::Approve(new);
            }
            let mut by: Vec<&str> = recorded.iter().map(|a| a.by.as_str()).collect();
            by.dedup();
            if by.len() >= *approvers as usize {
                let outputs = BTreeMap::from([("approvedBy".to_string(), serde_json::json!(by))]);
                done(outputs, BTreeMap::new())
            } else {
                Decision::Wait {
                    until: None,
                    why: format!(
                        "stage {} needs {approvers} approval(s), has {}: fermata campaign approve {}",
                        stage.name,
                        by.len(),
                        state.activation
                    ),
                }
            }
        }
        Action::Revert { stage: of } => {
            if !rec.batches.is_empty() {
                return done(BTreeMap::new(), BTreeMap::new());
            }
            let mut sites: Replaced = BTreeMap::new();
            // Each site is in one batch of a stage: no overlap to order.
            for b in state.stages.get(of).map(|r| &r.batches[..]).unwrap_or(&[]) {
                sites.extend(b.replaced.clone());
            }
            if sites.is_empty() {
                done(BTreeMap::new(), BTreeMap::new())
            } else {
                Decision::Revert { sites }
            }
        }
        Action::Verify(v) => match (rec.outputs.get("passed"), &stage.site) {
            (Some(_), _) => done(rec.outputs.clone(), BTreeMap::new()),
            (None, None) => Decision::Verify(v.clone()),
            // Remote execution: the site's agent runs it and reports.
            (None, Some(site)) => match world.remote.get(&stage.name) {
                Some(r) if rec.started.is_some_and(|t| t == r.started) => Decision::Verified {
                    passed: r.passed,
                    detail: format!("{site}: {}", r.detail),
                },
                _ => Decision::Wait {
                    until: None,
                    why: format!(
                        "stage {}: waiting for site {site}'s agent to run the check",
                        stage.name
                    ),
                },
            },
        },
    }
}

/// Map: promote batch after batch, each awaited before the next;
/// reduce: per-site results into `succeeded`, `failed`, `pending`.
#[allow(clippy::too_many_arguments)]
fn promote(
    stage: &Stage,
    rec: &StageRecord,
    selected: &[String],
    set: BTreeMap<String, String>,
    await_: Option<&crate::model::campaign::Await>,
    world: &World,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
    done: impl FnOnce(BTreeMap<String, serde_json::Value>, BTreeMap<String, SiteResult>) -> Decision,
) -> Decision {
    let size = stage
        .batch
        .map(|b| b.size.of(selected.len()).max(1))
        .unwrap_or(selected.len().max(1));
    let tolerance = stage
        .batch
        .map(|b| b.failure_tolerance.of(selected.len()))
        .unwrap_or(0);
    let batches: Vec<&[String]> = selected.chunks(size).collect();
    let deadline =
        await_.map(|a| started + chrono::Duration::from_std(a.timeout).unwrap_or_default());
    let mut results: BTreeMap<String, SiteResult> = BTreeMap::new();
    // A pull request not merged yet holds its batch's sites: pending while
    // it is open, failed once closed unmerged.
    let mut unmerged: Option<u64> = None;
    for (i, b) in rec.batches.iter().enumerate() {
        let Some(n) = b.pull_request.filter(|_| !b.merged) else {
            continue;
        };
        let r = match world.pull_requests.get(&n) {
            Some(PrState::Merged { merge_commit }) => {
                return Decision::Merged {
                    batch: i + 1,
                    pull_request: n,
                    // A fast-forward merge: the branch's commit is on the base.
                    commit: merge_commit.clone().unwrap_or_else(|| b.commit.clone()),
                };
            }
            Some(PrState::Closed) => SiteResult::Failed {
                reason: format!("pull request #{n} was closed without merging"),
            },
            Some(PrState::Open) | None => {
                unmerged = Some(n);
                SiteResult::Pending
            }
        };
        for site in &b.sites {
            results.insert(site.clone(), r.clone());
        }
    }
    for site in rec.batches.iter().flat_map(|b| &b.sites) {
        if results.contains_key(site) {
            continue;
        }
        let r = match (await_, world.progress.get(site)) {
            (None, _) | (Some(_), Some(SiteProgress::Reached)) => SiteResult::Succeeded,
            (Some(_), Some(SiteProgress::Failed(why))) => SiteResult::Failed {
                reason: why.clone(),
            },
            (Some(a), _) if deadline.is_some_and(|d| now >= d) => SiteResult::Failed {
                reason: format!("not {} within {:?}", a.state.as_str(), a.timeout),
            },
            _ => SiteResult::Pending,
        };
        results.insert(site.clone(), r);
    }
    let count = |f: fn(&SiteResult) -> bool| results.values().filter(|r| f(r)).count();
    let failed = count(|r| matches!(r, SiteResult::Failed { .. }));
    let pending = count(|r| matches!(r, SiteResult::Pending));
    let outputs = |stopped: bool| {
        let mut o = BTreeMap::new();
        o.insert(
            "succeeded".into(),
            serde_json::json!(results.len() - failed - pending),
        );
        o.insert("failed".into(), serde_json::json!(failed));
        o.insert("pending".into(), serde_json::json!(pending));
        o.insert("sites".into(), serde_json::json!(selected.len()));
        o.insert("stopped".into(), serde_json::json!(stopped));
        o
    };
    if failed > tolerance {
        // Past the tolerance: no more batches; `next` decides.
        return done(outputs(true), results);
    }
    if let Some(n) = unmerged {
        return Decision::Wait {
            until: None,
            why: format!("stage {}: pull request #{n} not merged yet", stage.name),
        };
    }
    if pending > 0 {
        return Decision::Wait {
            until: deadline,
            why: format!(
                "stage {}: {pending} site(s) not {} yet",
                stage.name,
                await_.map(|a| a.state.as_str()).unwrap_or("installed")
            ),
        };
    }
    match batches.get(rec.batches.len()) {
        Some(sites) => Decision::Promote {
            batch: rec.batches.len() + 1,
            of: batches.len(),
            sites: sites.to_vec(),
            set,
        },
        None => done(outputs(false), results),
    }
}

/// The stage is done: pick the next one with its `next` conditions.
fn advance(
    campaign: &Campaign,
    stage: &Stage,
    state: &ActivationState,
    outputs: BTreeMap<String, serde_json::Value>,
    sites: BTreeMap<String, SiteResult>,
) -> Decision {
    let vars = serde_json::json!({
        "inputs": state.inputs,
        "outputs": outputs,
        "sites": sites.keys().collect::<Vec<_>>(),
    });
    for n in &stage.next {
        let pick = match &n.when {
            None => true,
            Some(expr) => match expr.eval_bool(&vars) {
                Ok(b) => b,
                Err(e) => {
                    return Decision::Fail(format!(
                        "stage {}: next {:?}: {e}",
                        stage.name, expr.source
                    ))
                }
            },
        };
        if pick {
            if campaign.stage(&n.stage).is_none() {
                return Decision::Fail(format!("stage {}: no stage {}", stage.name, n.stage));
            }
            return Decision::Advance {
                outputs,
                sites,
                next: Some(n.stage.clone()),
            };
        }
    }
    Decision::Advance {
        outputs,
        sites,
        next: None,
    }
}

/// `${inputs.NAME}` in each value, from the activation's inputs: the
/// loader's expansion, so what `validate` checked is what is committed.
pub fn resolve(
    set: &BTreeMap<String, String>,
    inputs: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    set.iter()
        .map(|(k, v)| {
            let value = crate::model::campaign::expand_inputs(v, inputs)
                .map_err(|e| format!("{k}: {e}"))?;
            Ok((k.clone(), value))
        })
        .collect()
}

/// `state` with `decision` carried out (`commit`: the promote or revert
/// commit, `replaced`: what it replaced): the next state to record.
pub fn record(
    mut state: ActivationState,
    decision: &Decision,
    commit: Option<(String, Replaced)>,
    now: DateTime<Utc>,
) -> ActivationState {
    state.generation += 1;
    state.updated = now;
    match decision {
        Decision::Promote { .. } | Decision::Revert { .. } => {
            let (commit, replaced) = commit.unwrap_or_default();
            let sites = match decision {
                Decision::Promote { sites, .. } => sites.clone(),
                _ => replaced.keys().cloned().collect(),
            };
            if let Some(rec) = state.current(now) {
                rec.batches.push(BatchRecord {
                    commit,
                    sites,
                    replaced,
                    pull_request: None,
                    merged: false,
                });
            }
        }
        Decision::Merged { batch, commit, .. } => {
            if let Some(b) = state
                .current(now)
                .and_then(|rec| rec.batches.get_mut(batch.saturating_sub(1)))
            {
                b.commit = commit.clone();
                b.merged = true;
            }
        }
        Decision::Approve(found) => {
            state.current(now);
            state.approvals.extend(found.iter().cloned());
        }
        Decision::Advance {
            outputs,
            sites,
            next,
        } => {
            if let Some(rec) = state.current(now) {
                rec.finished = Some(now);
                rec.outputs = outputs.clone();
                rec.sites = sites.clone();
            }
            state.stage = next.clone();
            if next.is_none() {
                state.phase = Phase::Succeeded;
            } else {
                state.current(now);
            }
        }
        Decision::Fail(why) => {
            state.phase = Phase::Failed;
            state.error = Some(why.clone());
        }
        Decision::Verified { passed, detail } => {
            if let Some(rec) = state.current(now) {
                rec.outputs
                    .insert("passed".into(), serde_json::json!(passed));
                rec.outputs
                    .insert("detail".into(), serde_json::json!(detail));
            }
        }
        Decision::Wait { .. } | Decision::Verify(_) => {
            state.current(now);
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::model::campaign::{Amount, Await, Batch, Next};
    use crate::model::{Origin, SiteSelector};
    use crate::status::State;

    fn at(h: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::hours(h)
    }

    fn sites(n: usize) -> BTreeMap<String, Site> {
        (0..n)
            .map(|i| {
                let ring = if i == 0 { "canary" } else { "main" };
                let site = Site {
                    name: format!("s{i:02}"),
                    origin: Origin::default(),
                    labels: BTreeMap::from([("ring".to_string(), ring.to_string())]),
                    env: BTreeMap::new(),
                };
                (site.name.clone(), site)
            })
            .collect()
    }

    fn ring(r: &str) -> SiteSelector {
        SiteSelector {
            match_labels: BTreeMap::from([("ring".to_string(), r.to_string())]),
            ..SiteSelector::default()
        }
    }

    fn stage(name: &str, action: Action, next: &[&str]) -> Stage {
        Stage {
            name: name.into(),
            origin: Origin::default(),
            action,
            batch: None,
            site: None,
            next: next
                .iter()
                .map(|s| Next {
                    when: None,
                    stage: s.to_string(),
                })
                .collect(),
        }
    }

    fn promote(sel: SiteSelector, hours: u64) -> Action {
        Action::Promote {
            sites: sel,
            set: BTreeMap::from([("MODEL".to_string(), "${inputs.model}".to_string())]),
            pull_request: false,
            await_: Some(Await {
                state: State::Installed,
                timeout: Duration::from_secs(hours * 3600),
            }),
        }
    }

    /// canary -> approve -> fleet (batches of 30%, 1 failure tolerated);
    /// `rollback` reverts the canary.
    fn campaign() -> Campaign {
        let mut fleet = stage("fleet", promote(ring("main"), 24), &[]);
        fleet.batch = Some(Batch {
            size: Amount::Percent(30),
            failure_tolerance: Amount::Count(1),
        });
        Campaign {
            name: "vision".into(),
            origin: Origin::default(),
            self_driving: false,
            first_stage: "canary".into(),
            concurrency: None,
            stages: vec![
                stage("canary", promote(ring("canary"), 8), &["approve"]),
                stage("approve", Action::Approval { approvers: 1 }, &["fleet"]),
                fleet,
                stage(
                    "rollback",
                    Action::Revert {
                        stage: "canary".into(),
                    },
                    &[],
                ),
                stage(
                    "soak",
                    Action::Wait {
                        duration: Duration::from_secs(3600),
                    },
                    &[],
                ),
            ],
        }
    }

    fn state(stage: &str) -> ActivationState {
        let inputs = BTreeMap::from([("model".to_string(), "v4".to_string())]);
        ActivationState::new("vision-12", "vision", stage, inputs, at(0))
    }

    fn world(n: usize, progress: &[(&str, SiteProgress)]) -> World {
        World {
            sites: sites(n),
            progress: progress
                .iter()
                .map(|(s, p)| (s.to_string(), p.clone()))
                .collect(),
            approvals: Vec::new(),
            remote: BTreeMap::new(),
            pull_requests: BTreeMap::new(),
        }
    }

    fn was_v3() -> super::super::edit::Replaced {
        let previous = super::super::edit::Previous {
            value: "v3".into(),
            source: "\"v3\"".into(),
        };
        super::super::edit::Replaced {
            values: BTreeMap::from([("MODEL".to_string(), Some(previous))]),
            added: None,
        }
    }

    fn promoted(s: ActivationState, sites: &[&str], now: DateTime<Utc>) -> ActivationState {
        let d = Decision::Promote {
            batch: 1,
            of: 1,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            set: BTreeMap::new(),
        };
        let replaced = sites.iter().map(|s| (s.to_string(), was_v3())).collect();
        record(s, &d, Some(("c0ffee".into(), replaced)), now)
    }

    #[test]
    fn canary_promote_await_and_advance() {
        let c = campaign();
        let s = state("canary");
        let set = BTreeMap::from([("MODEL".to_string(), "v4".to_string())]);
        assert_eq!(
            decide(&c, &s, &world(5, &[]), at(0)),
            Decision::Promote {
                batch: 1,
                of: 1,
                sites: vec!["s00".into()],
                set
            },
            "the canary ring is s00"
        );
        let s = promoted(s, &["s00"], at(0));
        let cases = [
            ("not yet", SiteProgress::NotYet, at(1), "wait"),
            ("reached", SiteProgress::Reached, at(1), "approve"),
            (
                "failed",
                SiteProgress::Failed("ApplyFailed".into()),
                at(1),
                "approve-failed",
            ),
            ("timed out", SiteProgress::NotYet, at(9), "approve-failed"),
        ];
        for (name, p, now, want) in cases {
            let d = decide(&c, &s, &world(5, &[("s00", p)]), now);
            match (want, &d) {
                ("wait", Decision::Wait { until, .. }) => assert_eq!(*until, Some(at(8)), "{name}"),
                ("approve", Decision::Advance { outputs, next, .. }) => {
                    assert_eq!(next.as_deref(), Some("approve"), "{name}");
                    assert_eq!(outputs["failed"], 0, "{name}");
                    assert_eq!(outputs["succeeded"], 1, "{name}");
                }
                ("approve-failed", Decision::Advance { outputs, sites, .. }) => {
                    assert_eq!(outputs["failed"], 1, "{name}");
                    assert_eq!(outputs["stopped"], true, "{name}");
                    assert!(matches!(sites["s00"], SiteResult::Failed { .. }), "{name}");
                }
                _ => panic!("{name}: {d:?}"),
            }
        }
    }

    #[test]
    fn a_pull_request_batch_waits_for_its_merge_or_fails_when_closed() {
        let c = campaign();
        let mut s = promoted(state("canary"), &["s00"], at(0));
        s.stages.get_mut("canary").unwrap().batches[0].pull_request = Some(7);
        let with = |pr: Option<PrState>| {
            let mut w = world(5, &[("s00", SiteProgress::Reached)]);
            w.pull_requests.extend(pr.map(|p| (7, p)));
            w
        };
        let merged = |m: Option<&str>| PrState::Merged {
            merge_commit: m.map(str::to_string),
        };
        for (name, pr) in [("unknown", None), ("open", Some(PrState::Open))] {
            match decide(&c, &s, &with(pr), at(9)) {
                Decision::Wait { until: None, why } => {
                    assert!(
                        why.contains("pull request #7 not merged yet"),
                        "{name}: {why}"
                    )
                }
                d => panic!("{name}: {d:?}"),
            }
        }
        for (m, want) in [(Some("m1"), "m1"), (None, "c0ffee")] {
            let d = decide(&c, &s, &with(Some(merged(m))), at(1));
            let expected = Decision::Merged {
                batch: 1,
                pull_request: 7,
                commit: want.into(),
            };
            assert_eq!(d, expected, "merge commit {m:?}");
        }
        let d = decide(&c, &s, &with(Some(merged(Some("m1")))), at(1));
        let s2 = record(s.clone(), &d, None, at(1));
        let b = &s2.stages["canary"].batches[0];
        assert_eq!((b.commit.as_str(), b.merged), ("m1", true));
        match decide(&c, &s2, &with(Some(PrState::Closed)), at(2)) {
            Decision::Advance { outputs, next, .. } => {
                assert_eq!(outputs["succeeded"], 1, "merged: the await reads the site");
                assert_eq!(next.as_deref(), Some("approve"));
            }
            d => panic!("{d:?}"),
        }
        match decide(&c, &s, &with(Some(PrState::Closed)), at(1)) {
            Decision::Advance { outputs, sites, .. } => {
                assert_eq!(outputs["failed"], 1);
                let want = SiteResult::Failed {
                    reason: "pull request #7 was closed without merging".into(),
                };
                assert_eq!(sites["s00"], want);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn approval_waits_records_and_advances() {
        let c = campaign();
        let s = state("approve");
        assert!(matches!(
            decide(&c, &s, &world(3, &[]), at(1)),
            Decision::Wait { until: None, .. }
        ));
        let mut w = world(3, &[]);
        let a = Approval {
            stage: "approve".into(),
            by: "alice".into(),
            reason: "canary fine".into(),
            via: "abc1234".into(),
            at: at(1),
        };
        w.approvals = vec![a.clone()];
        let d = decide(&c, &s, &w, at(1));
        assert_eq!(d, Decision::Approve(vec![a]));
        let s = record(s, &d, None, at(1));
        match decide(&c, &s, &w, at(2)) {
            Decision::Advance { outputs, next, .. } => {
                assert_eq!(next.as_deref(), Some("fleet"));
                assert_eq!(outputs["approvedBy"], serde_json::json!(["alice"]));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn revert_restores_what_the_stage_replaced_once() {
        let c = campaign();
        let mut s = promoted(state("canary"), &["s00"], at(0));
        s.stage = Some("rollback".into());
        let d = decide(&c, &s, &world(3, &[]), at(1));
        let want = BTreeMap::from([("s00".to_string(), was_v3())]);
        assert_eq!(
            d,
            Decision::Revert {
                sites: want.clone()
            }
        );
        let s = record(s, &d, Some(("revert1".into(), want)), at(1));
        match decide(&c, &s, &world(3, &[]), at(1)) {
            Decision::Advance { next: None, .. } => {}
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn wait_stage_and_a_missing_input() {
        let c = campaign();
        let s = record(
            state("soak"),
            &Decision::Wait {
                until: None,
                why: String::new(),
            },
            None,
            at(0),
        );
        assert!(matches!(
            decide(&c, &s, &world(1, &[]), at(0)),
            Decision::Wait { .. }
        ));
        assert!(matches!(
            decide(&c, &s, &world(1, &[]), at(1)),
            Decision::Advance { next: None, .. }
        ));
        let mut s = state("canary");
        s.inputs.clear();
        match decide(&c, &s, &world(1, &[]), at(0)) {
            Decision::Fail(why) => assert!(why.contains("no input \"model\""), "{why}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn verify_runs_once_and_its_result_picks_next() {
        let mut c = campaign();
        let check = crate::model::campaign::Verify::Command {
            argv: vec!["true".into()],
            timeout: Duration::from_secs(5),
        };
        c.stages
            .push(stage("smoke", Action::Verify(check.clone()), &[]));
        let s = state("smoke");
        assert_eq!(
            decide(&c, &s, &world(1, &[]), at(0)),
            Decision::Verify(check)
        );
        let verified = Decision::Verified {
            passed: false,
            detail: "true: exit 1".into(),
        };
        let s = record(s, &verified, None, at(0));
        match decide(&c, &s, &world(1, &[]), at(0)) {
            Decision::Advance { outputs, .. } => {
                assert_eq!(outputs["passed"], false);
                assert_eq!(outputs["detail"], "true: exit 1");
            }
            d => panic!("{d:?}"),
        }
        // Run by s00's agent: wait for its result of this run of the stage.
        c.stages.last_mut().unwrap().site = Some("s00".into());
        let waiting = Decision::Wait {
            until: None,
            why: String::new(),
        };
        let s = record(state("smoke"), &waiting, None, at(0));
        assert!(matches!(
            decide(&c, &s, &world(1, &[]), at(0)),
            Decision::Wait { .. }
        ));
        let mut w = world(1, &[]);
        let stale = RemoteResult {
            started: at(-5),
            passed: true,
            detail: "an earlier run".into(),
        };
        w.remote.insert("smoke".into(), stale);
        assert!(
            matches!(decide(&c, &s, &w, at(0)), Decision::Wait { .. }),
            "a stale result"
        );
        let fresh = RemoteResult {
            started: at(0),
            passed: true,
            detail: "exit 0".into(),
        };
        w.remote.insert("smoke".into(), fresh);
        assert_eq!(
            decide(&c, &s, &w, at(1)),
            Decision::Verified {
                passed: true,
                detail: "s00: exit 0".into()
            }
        );
    }

    /// Drives the fleet stage to its end, purely: each promoted site reports
    /// `ok` or not an hour after its promote.
    fn drive(
        n: usize,
        size: u32,
        tolerance: usize,
        ok: &[bool],
    ) -> (ActivationState, Vec<Vec<String>>) {
        let mut c = campaign();
        c.stages[2].batch = Some(Batch {
            size: Amount::Percent(size),
            failure_tolerance: Amount::Count(tolerance),
        });
        let mut s = state("fleet");
        let mut promotes = Vec::new();
        let mut progress = BTreeMap::new();
        for hour in 0..200 {
            let w = World {
                sites: sites(n),
                progress: progress.clone(),
                ..World::default()
            };
            let d = decide(&c, &s, &w, at(hour));
            match &d {
                Decision::Promote { sites, .. } => {
                    promotes.push(sites.clone());
                    for site in sites {
                        let i: usize = site[1..].parse().unwrap();
                        let p = if ok[i % ok.len()] {
                            SiteProgress::Reached
                        } else {
                            SiteProgress::Failed("HealthTimeout".into())
                        };
                        progress.insert(site.clone(), p);
                    }
                    s = record(s, &d, Some((format!("c{hour}"), BTreeMap::new())), at(hour));
                }
                Decision::Advance { .. } => return (record(s, &d, None, at(hour)), promotes),
                Decision::Wait { .. } => s = record(s, &d, None, at(hour)),
                d => panic!("{d:?}"),
            }
        }
        panic!("did not finish")
    }

    proptest! {
        /// Invariant 12 and the fan-out: every site of the ring is promoted
        /// at most once, in order, one batch at a time; once more sites
        /// failed than tolerated nothing more is promoted; and the same
        /// observations replayed give the same states.
        #[test]
        fn fan_out_is_ordered_bounded_and_replayable(
            n in 2usize..30,
            size in 1u32..=100,
            tolerance in 0usize..4,
            ok in proptest::collection::vec(proptest::bool::weighted(0.8), 1..8),
        ) {
            let (end, promotes) = drive(n, size, tolerance, &ok);
            let (again, promotes_again) = drive(n, size, tolerance, &ok);
            prop_assert_eq!(&end, &again);
            prop_assert_eq!(&promotes, &promotes_again);
            let flat: Vec<&String> = promotes.iter().flatten().collect();
            let mut sorted = flat.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), flat.len(), "a site promoted twice");
            prop_assert_eq!(&sorted, &flat, "batches out of order");
            let outputs = &end.stages["fleet"].outputs;
            let failed = outputs["failed"].as_u64().unwrap() as usize;
            if failed > tolerance {
                prop_assert_eq!(outputs["stopped"].clone(), serde_json::json!(true));
                // The batch that crossed the tolerance was the last one.
                let before_last: usize = promotes[..promotes.len() - 1]
                    .iter()
                    .flatten()
                    .filter(|s| !ok[s[1..].parse::<usize>().unwrap() % ok.len()])
                    .count();
                prop_assert!(before_last <= tolerance);
            } else {
                prop_assert_eq!(flat.len(), n - 1, "every main site promoted");
            }
        }
    }
}
