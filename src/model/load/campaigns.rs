//! Loading Campaigns and Activations (DESIGN.md section 10): every stage
//! does exactly one thing, every stage name it refers to exists, every
//! duration and amount parses, every `next[].when` compiles as CEL, and an
//! activation gives exactly the inputs its campaign's templates use.
//!
//! A broken campaign fails only itself and its activations; both are kept in
//! `Fleet::failed_campaigns` / `failed_activations`, so a broken file never
//! reads as a finished or deleted rollout.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::{check_name, did_you_mean, is_identifier, position, site_selector, Doc, Loader};
use crate::model::campaign::{
    is_input_name, template_inputs, Action, Activation, Amount, Await, Batch, Campaign, Expr, Next,
    Stage, Verify,
};
use crate::model::fleet::Fleet;
use crate::model::types::{
    ActivationSpec, BatchSpec, CampaignSpec, Object, PromoteSpec, StageSpec, VerifySpec,
};
use crate::model::Diagnostic;
use crate::status::State;
use crate::window::parse_duration;

/// The stage kinds, as users write them: a stage sets exactly one.
const STAGE_KINDS: [&str; 5] = ["promote", "approval", "verify", "wait", "revert"];

/// What an `await` may wait for: the end states of a rollout.
const AWAIT_STATES: [(&str, State); 3] = [
    ("installed", State::Installed),
    ("staged", State::Staged),
    ("removed", State::Removed),
];

/// A verify with no `timeout`: as long as a synthesizer may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a loaded campaign uses its inputs: what its activations are
/// checked against.
#[derive(Default)]
struct Uses {
    /// `${inputs.NAME}` in promote values, each with its first use.
    templates: BTreeMap<String, Diagnostic>,
    /// `inputs.NAME` in a `when`: giving such an input is not pointless,
    /// though a condition may also test for it with `has()`.
    conditions: BTreeSet<String>,
}

impl Loader {
    /// Campaigns, then their activations, then what only both together
    /// tell: template inputs no activation gives.
    pub(super) fn resolve_campaigns(
        &mut self,
        campaigns: Vec<(Doc, Object<CampaignSpec>)>,
        activations: Vec<(Doc, Object<ActivationSpec>)>,
        fleet: &mut Fleet,
    ) {
        let mut uses: BTreeMap<String, Uses> = BTreeMap::new();
        for (doc, o) in campaigns {
            let name = o.metadata.name;
            let mut r = CampaignResolver {
                doc: &doc,
                fleet,
                loader: self,
                errors: Vec::new(),
                warnings: Vec::new(),
                uses: Uses::default(),
            };
            let campaign = r.campaign(&name, &o.spec);
            let CampaignResolver {
                errors,
                warnings,
                uses: used,
                ..
            } = r;
            self.warnings.extend(warnings);
            if self.fail_all("Campaign", &name, errors) {
                continue;
            }
            if let Some(campaign) = campaign {
                uses.insert(name.clone(), used);
                fleet.campaigns.insert(name, campaign);
            }
        }
        for ((kind, name), why) in &self.broken {
            if kind == "Campaign" {
                fleet.failed_campaigns.insert(name.clone(), why.clone());
            }
        }

        let mut given: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (doc, o) in activations {
            let name = o.metadata.name;
            let spec = o.spec;
            let mut errs = Vec::new();
            let campaign = spec.campaign.as_str();
            if let Some(why) = fleet.failed_campaigns.get(campaign) {
                // Reported where the campaign is; the activation waits for it.
                fleet.failed_activations.insert(name, why.clone());
                continue;
            }
            match uses.get(campaign) {
                None => errs.push(doc.diag(
                    "spec.campaign",
                    format!(
                        "no Campaign named {campaign:?}{}{}",
                        did_you_mean(campaign, fleet.campaigns.keys().map(String::as_str)),
                        self.failed_to_load("Campaign", campaign)
                    ),
                )),
                Some(used) => {
                    for input in spec.inputs.keys() {
                        let field = position::join("spec.inputs", input);
                        if !is_input_name(input) {
                            errs.push(doc.diag(
                                &field,
                                format!("{input:?} is not an input name ([A-Za-z_][A-Za-z0-9_]*, so that `inputs.{input}` works in a condition)"),
                            ));
                        } else if !used.templates.contains_key(input)
                            && !used.conditions.contains(input)
                        {
                            self.warnings.push(doc.diag(
                                &field,
                                format!(
                                    "campaign {campaign:?} never uses input {input:?}{}",
                                    did_you_mean(input, used.templates.keys().map(String::as_str))
                                ),
                            ));
                        }
                    }
                    let missing: Vec<&str> = used
                        .templates
                        .keys()
                        .filter(|k| !spec.inputs.contains_key(*k))
                        .map(String::as_str)
                        .collect();
                    if !missing.is_empty() {
                        let list = missing
                            .iter()
                            .map(|m| format!("{m:?}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        let first = &used.templates[missing[0]];
                        errs.push(doc.diag(
                            "spec.inputs",
                            format!(
                                "campaign {campaign:?} needs input {list} (used at {}:{})",
                                first.file,
                                first.line.unwrap_or(0)
                            ),
                        ));
                    }
                }
            }
            if !errs.is_empty() {
                fleet.failed_activations.insert(name.clone(), errs.clone());
                self.fail_all("Activation", &name, errs);
                continue;
            }
            if let Some((k, _)) = fleet.campaigns.get_key_value(campaign) {
                given
                    .entry(k.as_str())
                    .or_default()
                    .extend(spec.inputs.keys().cloned());
            }
            fleet.activations.insert(
                name.clone(),
                Activation {
                    name,
                    origin: doc.origin(""),
                    campaign: spec.campaign,
                    inputs: spec.inputs,
                },
            );
        }
        for ((kind, name), why) in &self.broken {
            if kind == "Activation" {
                fleet
                    .failed_activations
                    .entry(name.clone())
                    .or_insert_with(|| why.clone());
            }
        }

        // Said once per input, where it is first used: an activation lacking
        // it is an error of its own, so this is for campaigns not yet run.
        for (campaign, used) in &uses {
            let given = given.get(campaign.as_str());
            for (input, first) in &used.templates {
                if given.is_some_and(|g| g.contains(input)) {
                    continue;
                }
                let mut w = first.clone();
                w.message = format!(
                    "no Activation of campaign {campaign:?} gives input {input:?}: activate it with `--input {input}=VALUE`"
                );
                self.warnings.push(w);
            }
        }
    }
}

/// Resolves one campaign, collecting its errors and warnings.
struct CampaignResolver<'a> {
    doc: &'a Doc,
    fleet: &'a Fleet,
    loader: &'a Loader,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    uses: Uses,
}

impl CampaignResolver<'_> {
    fn err(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(self.doc.diag(field, message));
    }

    fn warn(&mut self, field: &str, message: impl Into<String>) {
        self.warnings.push(self.doc.diag(field, message));
    }

    /// `None` when there were errors.
    fn campaign(&mut self, name: &str, spec: &CampaignSpec) -> Option<Campaign> {
        if spec.concurrency == Some(0) {
            self.err(
                "spec.concurrency",
                "must be at least 1 (1 queues activations one after another; absent: no limit)",
            );
        }
        if spec.stages.is_empty() {
            self.err("spec.stages", "a campaign needs at least one stage");
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        // In file order: messages list them as written.
        let mut names: Vec<&str> = Vec::new();
        for (i, s) in spec.stages.iter().enumerate() {
            let field = format!("spec.stages[{i}].name");
            if let Err(m) = check_name(&s.name) {
                self.err(&field, m);
            } else if let Some(first) = seen.get(s.name.as_str()) {
                let line = self
                    .doc
                    .lines
                    .line(&format!("spec.stages[{first}].name"))
                    .unwrap_or(0);
                self.err(
                    &field,
                    format!("duplicate stage {:?} (also at line {line})", s.name),
                );
            } else {
                seen.insert(&s.name, i);
                names.push(&s.name);
            }
        }
        let first_ok = self.stage_ref(&spec.first_stage, "spec.firstStage", &names);
        let promotes: BTreeSet<&str> = spec
            .stages
            .iter()
            .filter(|s| s.promote.is_some())
            .map(|s| s.name.as_str())
            .collect();
        let mut stages = Vec::new();
        for (i, s) in spec.stages.iter().enumerate() {
            if let Some(stage) = self.stage(i, s, &names, &promotes) {
                stages.push(stage);
            }
        }
        if first_ok && self.errors.is_empty() {
            self.unreachable(spec, &stages);
        }
        if !self.errors.is_empty() {
            return None;
        }
        Some(Campaign {
            name: name.to_string(),
            origin: self.doc.origin(""),
            self_driving: spec.self_driving,
            first_stage: spec.first_stage.clone(),
            concurrency: spec.concurrency,
            stages,
        })
    }

    /// Checks that `stage` (written at `field`) names a stage of this campaign.
    fn stage_ref(&mut self, stage: &str, field: &str, names: &[&str]) -> bool {
        if names.contains(&stage) {
            return true;
        }
        self.err(
            field,
            format!(
                "no stage named {stage:?}{}; stages: {}",
                did_you_mean(stage, names.iter().copied()),
                names.join(", ")
            ),
        );
        false
    }

    /// `None` when the stage has errors (already recorded).
    fn stage(
        &mut self,
        i: usize,
        s: &StageSpec,
        names: &[&str],
        promotes: &BTreeSet<&str>,
    ) -> Option<Stage> {
        let before = self.errors.len();
        let at = format!("spec.stages[{i}]");
        let f = |field: &str| position::join(&at, field);
        let present: Vec<&str> = [
            s.promote.is_some(),
            s.approval.is_some(),
            s.verify.is_some(),
            s.wait.is_some(),
            s.revert.is_some(),
        ]
        .iter()
        .zip(STAGE_KINDS)
        .filter(|(p, _)| **p)
        .map(|(_, k)| k)
        .collect();
        match present.as_slice() {
            [] => self.err(
                &at,
                format!(
                    "stage {:?} does nothing: set one of {}",
                    s.name,
                    STAGE_KINDS.join(", ")
                ),
            ),
            [_] => {}
            [first, second, ..] => self.err(
                &f(second),
                format!(
                    "stage {:?} has both {first} and {second}: a stage does exactly one of {} (chain stages with `next`)",
                    s.name,
                    STAGE_KINDS.join(", ")
                ),
            ),
        }
        if s.promote.is_none() {
            if s.await_.is_some() {
                self.err(
                    &f("await"),
                    "`await` waits for what a `promote` of the same stage set, and this stage has none",
                );
            }
            if s.batch.is_some() {
                self.err(
                    &f("batch"),
                    "`batch` fans out a `promote` of the same stage, and this stage has none",
                );
            }
        }
        if let Some(site) = &s.site {
            if let Err(d) = self.loader.site_ref(self.doc, self.fleet, site, &f("site")) {
                self.errors.push(d);
            }
        }
        let batch = s.batch.as_ref().and_then(|b| self.batch(b, &f("batch")));
        let await_ = s.await_.as_ref().and_then(|a| {
            let state = match a.state.as_deref() {
                None => Some(State::Installed),
                Some(text) => match AWAIT_STATES.iter().find(|(n, _)| *n == text) {
                    Some((_, state)) => Some(*state),
                    None => {
                        let known = AWAIT_STATES.map(|(n, _)| n);
                        self.err(
                            &f("await.state"),
                            format!(
                                "{text:?} is not a state to await{}; one of {}",
                                did_you_mean(text, known),
                                known.join(", ")
                            ),
                        );
                        None
                    }
                },
            };
            let timeout = self.duration(&a.timeout, &f("await.timeout"));
            Some(Await {
                state: state?,
                timeout: timeout?,
            })
        });
        let action = if let Some(p) = &s.promote {
            self.promote(p, &f("promote"))
                .map(|(sites, set)| Action::Promote {
                    sites,
                    set,
                    pull_request: p.pull_request,
                    await_,
                })
        } else if let Some(a) = &s.approval {
            match a.approvers {
                Some(0) => {
                    self.err(&f("approval.approvers"), "must be at least 1");
                    None
                }
                n => Some(Action::Approval {
                    approvers: n.unwrap_or(1),
                }),
            }
        } else if let Some(v) = &s.verify {
            self.verify(v, &f("verify")).map(Action::Verify)
        } else if let Some(w) = &s.wait {
            self.duration(&w.duration, &f("wait.duration"))
                .map(|duration| Action::Wait { duration })
        } else if let Some(r) = &s.revert {
            let field = f("revert.stage");
            if self.stage_ref(&r.stage, &field, names) && !promotes.contains(r.stage.as_str()) {
                self.err(
                    &field,
                    format!(
                        "stage {:?} is not a promote: revert restores the values a promote set",
                        r.stage
                    ),
                );
            }
            Some(Action::Revert {
                stage: r.stage.clone(),
            })
        } else {
            None
        };
        let mut next = Vec::new();
        let mut always: Option<usize> = None;
        for (j, n) in s.next.iter().enumerate() {
            let nf = f(&format!("next[{j}]"));
            if let Some(k) = always {
                self.warn(
                    &nf,
                    format!("never considered: next[{k}] has no `when`, so it is always taken"),
                );
            }
            self.stage_ref(&n.stage, &position::join(&nf, "stage"), names);
            let when = match &n.when {
                None => {
                    always.get_or_insert(j);
                    None
                }
                Some(source) => match Expr::compile(source) {
                    Ok(expr) => {
                        self.uses.conditions.extend(condition_inputs(source));
                        Some(expr)
                    }
                    Err(m) => {
                        self.err(&position::join(&nf, "when"), format!("CEL: {m}"));
                        None
                    }
                },
            };
            next.push(Next {
                when,
                stage: n.stage.clone(),
            });
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Stage {
            name: s.name.clone(),
            origin: self.doc.origin(&at),
            action: action?,
            batch,
            site: s.site.clone(),
            next,
        })
    }

    fn duration(&mut self, text: &str, field: &str) -> Option<Duration> {
        parse_duration(text)
            .map_err(|e| self.err(field, e.to_string()))
            .ok()
    }

    fn promote(
        &mut self,
        p: &PromoteSpec,
        at: &str,
    ) -> Option<(crate::model::SiteSelector, BTreeMap<String, String>)> {
        let before = self.errors.len();
        let sites_at = position::join(at, "sites");
        let sites = site_selector(
            self.doc,
            self.fleet,
            self.loader,
            &p.sites,
            &sites_at,
            &mut self.errors,
        );
        if self.errors.len() == before && sites.select(&self.fleet.sites).is_empty() {
            let message = if self.fleet.has_sites() {
                format!(
                    "selects no Site (of {}): this promote changes nothing",
                    self.fleet.sites.len()
                )
            } else {
                "selects no Site: the repository defines no Site objects, so this promote changes nothing".to_string()
            };
            self.warn(&sites_at, message);
        }
        let set_at = position::join(at, "set");
        if p.set.is_empty() {
            self.err(&set_at, "sets nothing: name at least one site value");
        }
        for (k, v) in &p.set {
            let field = position::join(&set_at, k);
            if !is_identifier(k) {
                self.err(
                    &field,
                    format!("{k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                );
            }
            for input in template_inputs(v) {
                if !self.uses.templates.contains_key(input) {
                    let d = self.doc.diag(&field, String::new());
                    self.uses.templates.insert(input.to_string(), d);
                }
            }
        }
        (self.errors.len() == before).then(|| (sites, p.set.clone()))
    }

    fn verify(&mut self, v: &VerifySpec, at: &str) -> Option<Verify> {
        let timeout = match &v.timeout {
            None => Some(VERIFY_TIMEOUT),
            Some(t) => self.duration(t, &position::join(at, "timeout")),
        };
        match (&v.http, &v.command) {
            (Some(h), None) => {
                let status = h.status.unwrap_or(200);
                let mut ok = true;
                if !(100..=599).contains(&status) {
                    self.err(
                        &position::join(at, "http.status"),
                        format!("{status} is not an HTTP status code (100-599)"),
                    );
                    ok = false;
                }
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    self.err(
                        &position::join(at, "http.url"),
                        format!("{:?}: an http:// or https:// URL", h.url),
                    );
                    ok = false;
                }
                ok.then_some(Verify::Http {
                    url: h.url.clone(),
                    status,
                    body: h.body.clone(),
                    timeout: timeout?,
                })
            }
            (None, Some(argv)) => {
                if argv.first().is_none_or(|c| c.is_empty()) {
                    self.err(&position::join(at, "command"), "must name a program");
                    return None;
                }
                Some(Verify::Command {
                    argv: argv.clone(),
                    timeout: timeout?,
                })
            }
            (Some(_), Some(_)) => {
                self.err(at, "set exactly one of `http` and `command`, not both");
                None
            }
            (None, None) => {
                self.err(at, "set one of `http` or `command`");
                None
            }
        }
    }

    fn batch(&mut self, b: &BatchSpec, at: &str) -> Option<Batch> {
        let size = amount(&b.size, 1)
            .map_err(|m| self.err(&position::join(at, "size"), format!("{m} for a batch size")))
            .ok();
        let failure_tolerance = match &b.failure_tolerance {
            None => Some(Amount::Count(0)),
            Some(t) => amount(t, 0)
                .map_err(|m| {
                    self.err(
                        &position::join(at, "failureTolerance"),
                        format!("{m} for a failure tolerance"),
                    )
                })
                .ok(),
        };
        Some(Batch {
            size: size?,
            failure_tolerance: failure_tolerance?,
        })
    }

    /// Warns about stages no path from `firstStage` reaches (following
    /// `next` and revert targets): probably a typo in a `next`.
    fn unreachable(&mut self, spec: &CampaignSpec, stages: &[Stage]) {
        let mut reached: BTreeSet<&str> = BTreeSet::new();
        let mut queue = VecDeque::from([spec.first_stage.as_str()]);
        while let Some(name) = queue.pop_front() {
            if !reached.insert(name) {
                continue;
            }
            let Some(stage) = stages.iter().find(|s| s.name == name) else {
                continue;
            };
            queue.extend(stage.next.iter().map(|n| n.stage.as_str()));
            if let Action::Revert { stage } = &stage.action {
                queue.push_back(stage);
            }
        }
        for (i, s) in spec.stages.iter().enumerate() {
            if !reached.contains(s.name.as_str()) {
                self.warn(
                    &format!("spec.stages[{i}].name"),
                    format!(
                        "stage {:?} is never reached: no `next` from firstStage {:?} leads to it",
                        s.name, spec.first_stage
                    ),
                );
            }
        }
    }
}

/// `N%` of the selected sites, from `min`% to 100%, or a count of at least
/// `min`.
fn amount(text: &str, min: u32) -> Result<Amount, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a share from {min}% to 100% (`10%`) or a count of sites of at least {min} (`5`)"
        )
    };
    match t.strip_suffix('%') {
        Some(p) => match p.trim().parse::<u32>() {
            Ok(p) if (min..=100).contains(&p) => Ok(Amount::Percent(p)),
            _ => Err(bad()),
        },
        None => match t.parse::<usize>() {
            Ok(n) if n >= min as usize => Ok(Amount::Count(n)),
            _ => Err(bad()),
        },
    }
}

/// The `NAME`s of `inputs.NAME` in a CEL source (a textual scan: enough to
/// know an activation's input is not pointless).
fn condition_inputs(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("inputs.") {
        let word_start = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        rest = &rest[i + "inputs.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if word_start && !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::model::load::load;
    use crate::model::Loaded;
    use crate::source::{Entry, Revision, Snapshot};

    const SITES: &str = "apiVersion: fermata.dev/v1alpha1\nkind: Site\nmetadata: {name: plant-a, labels: {ring: canary}}\nspec: {}\n---\napiVersion: fermata.dev/v1alpha1\nkind: Site\nmetadata: {name: plant-b, labels: {ring: stable}}\nspec: {}\n";

    /// The campaign of DESIGN.md section 10; cases edit it.
    const CAMPAIGN: &str = r#"apiVersion: fermata.dev/v1alpha1
kind: Campaign
metadata: {name: vision-rollout}
spec:
  firstStage: canary
  stages:
    - name: canary
      promote:
        sites: {matchLabels: {ring: canary}}
        set: {VISION_MODEL: "${inputs.model}"}
      await: {state: installed, timeout: 8d}
      next: [{when: "outputs.failed == 0", stage: approve}, {stage: rollback}]
    - name: approve
      approval: {approvers: 1}
      next: [{stage: fleet}]
    - name: fleet
      promote: {sites: {matchLabels: {ring: stable}}, set: {VISION_MODEL: "${inputs.model}"}}
      batch: {size: 10%, failureTolerance: 2%}
      await: {state: installed, timeout: 14d}
    - name: rollback
      revert: {stage: canary}
"#;

    const ACTIVATION: &str = "apiVersion: fermata.dev/v1alpha1\nkind: Activation\nmetadata: {name: vision-v4}\nspec: {campaign: vision-rollout, inputs: {model: v4}}\n";

    fn load_files(files: &[(&str, &str)]) -> Loaded {
        let entries = files
            .iter()
            .map(|(p, c)| {
                let e = Entry::File {
                    data: Arc::from(c.as_bytes()),
                    executable: false,
                };
                (p.to_string(), e)
            })
            .collect();
        load(&Snapshot::new(Revision(git2::Oid::ZERO_SHA1), entries), "")
    }

    /// `(from, to)` pairs: what a case changes in [`CAMPAIGN`].
    type Edits = &'static [(&'static str, &'static str)];

    /// The campaign with each `(from, to)` replaced once (a missing `from`
    /// is a broken test, not a passing one).
    fn edited(edits: &[(&str, &str)]) -> String {
        let mut c = CAMPAIGN.to_string();
        for (from, to) in edits {
            assert!(c.contains(from), "{from:?} not in the campaign");
            c = c.replacen(from, to, 1);
        }
        c
    }

    /// Errors and warnings as `file:line: field: message`.
    fn check(campaign: &str, activation: &str) -> (Vec<String>, Vec<String>) {
        let mut files = vec![("sites.yaml", SITES), ("c.yaml", campaign)];
        if !activation.is_empty() {
            files.push(("a.yaml", activation));
        }
        let l = load_files(&files);
        let show = |d: &Vec<crate::model::Diagnostic>| d.iter().map(ToString::to_string).collect();
        (show(&l.errors), show(&l.warnings))
    }

    #[test]
    fn the_design_campaign_loads() {
        let l = load_files(&[
            ("sites.yaml", SITES),
            ("c.yaml", CAMPAIGN),
            ("a.yaml", ACTIVATION),
        ]);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let c = &l.fleet.campaigns["vision-rollout"];
        let kinds: Vec<&str> = c.stages.iter().map(|s| s.action.kind()).collect();
        assert_eq!(kinds, ["promote", "approval", "promote", "revert"]);
        assert_eq!(c.first_stage, "canary");
        assert_eq!(
            (c.origin.file.as_str(), c.stages[1].origin.line),
            ("c.yaml", 13)
        );
        let crate::model::campaign::Action::Promote {
            sites, set, await_, ..
        } = &c.stages[0].action
        else {
            panic!("canary promotes");
        };
        assert_eq!(sites.select(&l.fleet.sites), ["plant-a"]);
        assert_eq!(set["VISION_MODEL"], "${inputs.model}");
        let a = await_.as_ref().expect("an await");
        assert_eq!(a.state, crate::status::State::Installed);
        assert_eq!(a.timeout, std::time::Duration::from_secs(8 * 86400));
        let batch = c.stages[2].batch.expect("a batch");
        use crate::model::campaign::Amount;
        assert_eq!(
            (batch.size, batch.failure_tolerance),
            (Amount::Percent(10), Amount::Percent(2))
        );
        let next = &c.stages[0].next;
        assert_eq!(
            next[0].when.as_ref().map(|e| e.source.as_str()),
            Some("outputs.failed == 0")
        );
        assert!(next[1].when.is_none());
        assert_eq!(c.inputs_used().into_iter().collect::<Vec<_>>(), ["model"]);
        let a = &l.fleet.activations["vision-v4"];
        assert_eq!(
            (a.campaign.as_str(), a.inputs["model"].as_str()),
            ("vision-rollout", "v4")
        );
    }

    #[test]
    fn campaign_errors_point_at_the_field() {
        let cases: &[(&str, Edits, &[&str])] = &[
            (
                "unknown firstStage",
                &[("firstStage: canary", "firstStage: canry")],
                &["c.yaml:5: spec.firstStage: no stage named \"canry\" (did you mean \"canary\"?); stages: canary, approve, fleet, rollback"],
            ),
            (
                "unknown next stage",
                &[("stage: approve}", "stage: aprove}")],
                &["c.yaml:12: spec.stages[0].next[0].stage: no stage named \"aprove\" (did you mean \"approve\"?); stages: canary, approve, fleet, rollback"],
            ),
            (
                "unknown revert stage",
                &[("revert: {stage: canary}", "revert: {stage: canery}")],
                &["c.yaml:21: spec.stages[3].revert.stage: no stage named \"canery\" (did you mean \"canary\"?); stages: canary, approve, fleet, rollback"],
            ),
            (
                "revert of a stage that is not a promote",
                &[("revert: {stage: canary}", "revert: {stage: approve}")],
                &["c.yaml:21: spec.stages[3].revert.stage: stage \"approve\" is not a promote: revert restores the values a promote set"],
            ),
            (
                "duplicate stage names",
                &[("- name: fleet", "- name: approve"), ("[{stage: fleet}]", "[]")],
                &["c.yaml:16: spec.stages[2].name: duplicate stage \"approve\" (also at line 13)"],
            ),
            (
                "invalid stage name",
                &[("- name: rollback", "- name: Roll_Back"), ("{stage: rollback}", "{stage: Roll_Back}")],
                &[
                    "c.yaml:12: spec.stages[0].next[1].stage: no stage named \"Roll_Back\"; stages: canary, approve, fleet",
                    "c.yaml:20: spec.stages[3].name: \"Roll_Back\" is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit",
                ],
            ),
            (
                "two stage kinds",
                &[("approval: {approvers: 1}\n", "approval: {approvers: 1}\n      wait: {duration: 1h}\n")],
                &["c.yaml:15: spec.stages[1].wait: stage \"approve\" has both approval and wait: a stage does exactly one of promote, approval, verify, wait, revert (chain stages with `next`)"],
            ),
            (
                "no stage kind",
                &[("      approval: {approvers: 1}\n", "")],
                &["c.yaml:13: spec.stages[1]: stage \"approve\" does nothing: set one of promote, approval, verify, wait, revert"],
            ),
            (
                "await without promote",
                &[("approval: {approvers: 1}\n", "approval: {approvers: 1}\n      await: {timeout: 1h}\n")],
                &["c.yaml:15: spec.stages[1].await: `await` waits for what a `promote` of the same stage set, and this stage has none"],
            ),
            (
                "batch without promote",
                &[("approval: {approvers: 1}\n", "approval: {approvers: 1}\n      batch: {size: 1}\n")],
                &["c.yaml:15: spec.stages[1].batch: `batch` fans out a `promote` of the same stage, and this stage has none"],
            ),
            (
                "approvers 0",
                &[("approvers: 1", "approvers: 0")],
                &["c.yaml:14: spec.stages[1].approval.approvers: must be at least 1"],
            ),
            (
                "verify with neither http nor command",
                &[("approval: {approvers: 1}", "verify: {timeout: 5m}")],
                &["c.yaml:14: spec.stages[1].verify: set one of `http` or `command`"],
            ),
            (
                "verify with both",
                &[("approval: {approvers: 1}", "verify: {http: {url: \"https://a/\"}, command: [\"true\"]}")],
                &["c.yaml:14: spec.stages[1].verify: set exactly one of `http` and `command`, not both"],
            ),
            (
                "verify http status",
                &[("approval: {approvers: 1}", "verify:\n        http: {url: \"https://a/\", status: 42}")],
                &["c.yaml:15: spec.stages[1].verify.http.status: 42 is not an HTTP status code (100-599)"],
            ),
            (
                "a duration that does not parse",
                &[("timeout: 8d", "timeout: soon")],
                &["c.yaml:11: spec.stages[0].await.timeout: duration \"soon\": expected number at 0; expected a positive duration such as \"90m\", \"3h\" or \"2days 4h\""],
            ),
            (
                "wait duration zero",
                &[("approval: {approvers: 1}", "wait: {duration: 0s}")],
                &["c.yaml:14: spec.stages[1].wait.duration: duration \"0s\": must be longer than zero; expected a positive duration such as \"90m\", \"3h\" or \"2days 4h\""],
            ),
            (
                "unknown await state",
                &[("state: installed, timeout: 8d", "state: instaled, timeout: 8d")],
                &["c.yaml:11: spec.stages[0].await.state: \"instaled\" is not a state to await (did you mean \"installed\"?); one of installed, staged, removed"],
            ),
            (
                "batch size 0%",
                &[("size: 10%", "size: 0%")],
                &["c.yaml:18: spec.stages[2].batch.size: \"0%\" is not a share from 1% to 100% (`10%`) or a count of sites of at least 1 (`5`) for a batch size"],
            ),
            (
                "batch size 0 and tolerance over 100%",
                &[("size: 10%, failureTolerance: 2%", "size: 0, failureTolerance: 120%")],
                &[
                    "c.yaml:18: spec.stages[2].batch.failureTolerance: \"120%\" is not a share from 0% to 100% (`10%`) or a count of sites of at least 0 (`5`) for a failure tolerance",
                    "c.yaml:18: spec.stages[2].batch.size: \"0\" is not a share from 1% to 100% (`10%`) or a count of sites of at least 1 (`5`) for a batch size",
                ],
            ),
            (
                "selector as a Symphony's",
                &[("{matchLabels: {ring: canary}}", "{matchExpressions: [{key: ring, operator: Inn, values: [canary]}]}")],
                &["c.yaml:9: spec.stages[0].promote.sites.matchExpressions[0].operator: unknown operator \"Inn\" (did you mean \"In\"?); one of In, NotIn, Exists, DoesNotExist"],
            ),
            (
                "selector names an unknown site",
                &[("{matchLabels: {ring: canary}}", "{names: [plant-c]}")],
                &["c.yaml:9: spec.stages[0].promote.sites.names[0]: no Site named \"plant-c\" (did you mean \"plant-a\"?)"],
            ),
            (
                "set key not an env name",
                &[("set: {VISION_MODEL:", "set: {VISION-MODEL:")],
                &["c.yaml:10: spec.stages[0].promote.set.VISION-MODEL: \"VISION-MODEL\" is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"],
            ),
            (
                "stage site unknown",
                &[("approval: {approvers: 1}\n", "approval: {approvers: 1}\n      site: plant-x\n")],
                &["c.yaml:15: spec.stages[1].site: no Site named \"plant-x\" (did you mean \"plant-a\"?)"],
            ),
            (
                "concurrency 0",
                &[("firstStage: canary", "concurrency: 0\n  firstStage: canary")],
                &["c.yaml:5: spec.concurrency: must be at least 1 (1 queues activations one after another; absent: no limit)"],
            ),
            (
                "CEL that does not compile",
                &[("when: \"outputs.failed == 0\"", "when: \"outputs.failed = 0\"")],
                &["c.yaml:12: spec.stages[0].next[0].when: CEL: Syntax error: token recognition error at: '= ' (at column 16 of \"outputs.failed = 0\")"],
            ),
            (
                "an unknown field",
                &[("approvers: 1", "approver: 1")],
                &["c.yaml:14: spec.stages[1].approval.approver: unknown field `approver`, expected `approvers`"],
            ),
        ];
        for (name, edits, want) in cases {
            let (errors, _) = check(&edited(edits), ACTIVATION);
            assert_eq!(errors, *want, "{name}");
        }
    }

    #[test]
    fn campaign_warnings() {
        let cases: &[(&str, Edits, &str, &[&str])] = &[
            (
                "an unreachable stage",
                &[("next: [{stage: fleet}]", "next: []")],
                ACTIVATION,
                &["c.yaml:16: spec.stages[2].name: stage \"fleet\" is never reached: no `next` from firstStage \"canary\" leads to it"],
            ),
            (
                "a promote selecting no site",
                &[("{ring: canary}", "{ring: beta}")],
                ACTIVATION,
                &["c.yaml:9: spec.stages[0].promote.sites: selects no Site (of 2): this promote changes nothing"],
            ),
            (
                "an entry after an unconditional next",
                &[("[{when: \"outputs.failed == 0\", stage: approve}, {stage: rollback}]", "[{stage: approve}, {stage: rollback}]")],
                ACTIVATION,
                &["c.yaml:12: spec.stages[0].next[1]: never considered: next[0] has no `when`, so it is always taken"],
            ),
            (
                "an input no activation gives",
                &[],
                "",
                &["c.yaml:10: spec.stages[0].promote.set.VISION_MODEL: no Activation of campaign \"vision-rollout\" gives input \"model\": activate it with `--input model=VALUE`"],
            ),
            (
                "an input the campaign never uses",
                &[],
                "apiVersion: fermata.dev/v1alpha1\nkind: Activation\nmetadata: {name: vision-v4}\nspec:\n  campaign: vision-rollout\n  inputs: {model: v4, modle: v5}\n",
                &["a.yaml:6: spec.inputs.modle: campaign \"vision-rollout\" never uses input \"modle\" (did you mean \"model\"?)"],
            ),
            (
                "an input used only in a condition is used",
                &[("outputs.failed == 0", "outputs.failed == 0 && inputs.fast != 'no'")],
                "apiVersion: fermata.dev/v1alpha1\nkind: Activation\nmetadata: {name: vision-v4}\nspec: {campaign: vision-rollout, inputs: {model: v4, fast: 'yes'}}\n",
                &[],
            ),
        ];
        for (name, edits, activation, want) in cases {
            let (errors, warnings) = check(&edited(edits), activation);
            assert!(errors.is_empty(), "{name}: {errors:#?}");
            assert_eq!(warnings, *want, "{name}");
        }
    }

    #[test]
    fn activation_errors() {
        let activation = |spec: &str| {
            format!("apiVersion: fermata.dev/v1alpha1\nkind: Activation\nmetadata: {{name: vision-v4}}\nspec:\n{spec}")
        };
        let cases: &[(&str, String, &[&str])] = &[
            (
                "unknown campaign",
                activation("  campaign: vision-rolout\n  inputs: {model: v4}\n"),
                &["a.yaml:5: spec.campaign: no Campaign named \"vision-rolout\" (did you mean \"vision-rollout\"?)"],
            ),
            (
                "an input a template uses is missing",
                activation("  campaign: vision-rollout\n  inputs: {}\n"),
                &["a.yaml:6: spec.inputs: campaign \"vision-rollout\" needs input \"model\" (used at c.yaml:10)"],
            ),
            (
                "no inputs at all",
                activation("  campaign: vision-rollout\n"),
                &["a.yaml:4: spec.inputs: campaign \"vision-rollout\" needs input \"model\" (used at c.yaml:10)"],
            ),
            (
                "an input name that is not an identifier",
                activation("  campaign: vision-rollout\n  inputs: {model: v4, my-tag: x}\n"),
                &["a.yaml:6: spec.inputs.my-tag: \"my-tag\" is not an input name ([A-Za-z_][A-Za-z0-9_]*, so that `inputs.my-tag` works in a condition)"],
            ),
        ];
        for (name, file, want) in cases {
            let (errors, _) = check(CAMPAIGN, file);
            assert_eq!(errors, *want, "{name}");
        }
        // Its campaign's file did not load: say so, not just "no Campaign".
        let unparsable = "apiVersion: fermata.dev/v1alpha1\nkind: Campaign\nmetadata: {name: vision-rollout}\nspec: [\n";
        let (errors, _) = check(unparsable, ACTIVATION);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].starts_with("a.yaml:4: spec.campaign: no Campaign named \"vision-rollout\" (c.yaml:5 failed to load: "),
            "{errors:#?}"
        );
    }

    #[test]
    fn a_broken_campaign_fails_itself_and_its_activations_only() {
        let broken = edited(&[("firstStage: canary", "firstStage: canry")]);
        let other = CAMPAIGN
            .replace("vision-rollout", "other")
            .replace("${inputs.model}", "v1");
        let other_activation = ACTIVATION
            .replace("vision-rollout", "other")
            .replace("vision-v4", "other-1")
            .replace("{model: v4}", "{}");
        let l = load_files(&[
            ("sites.yaml", SITES),
            ("c.yaml", &broken),
            ("o.yaml", &other),
            ("a.yaml", ACTIVATION),
            ("oa.yaml", &other_activation),
        ]);
        let errors: Vec<String> = l.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors.len(),
            1,
            "only the campaign's own error: {errors:#?}"
        );
        assert!(l.fleet.failed_campaigns.contains_key("vision-rollout"));
        assert_eq!(
            l.fleet.failed_activations["vision-v4"][0].to_string(),
            errors[0],
            "its activation fails with the campaign's error"
        );
        assert!(l.fleet.campaigns.contains_key("other"));
        assert!(l.fleet.activations.contains_key("other-1"));
        assert!(!l.fleet.activations.contains_key("vision-v4"));
    }
}
