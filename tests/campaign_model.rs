//! `fermata validate` on repositories with Campaigns and Activations
//! (DESIGN.md section 10): a valid campaign counts, broken ones fail with
//! every error at `file:line: field: message`, warnings go to stderr.

mod util;

use util::{fermata, minimal, Run, TestRepo};

const SITES: &str = "apiVersion: fermata.dev/v1alpha1
kind: Site
metadata: {name: plant-a, labels: {ring: canary}}
spec: {}
---
apiVersion: fermata.dev/v1alpha1
kind: Site
metadata: {name: plant-b, labels: {ring: main}}
spec: {}
---
apiVersion: fermata.dev/v1alpha1
kind: Site
metadata: {name: plant-c, labels: {ring: main}}
spec: {}
";

/// The campaign of DESIGN.md section 10.
const CAMPAIGN: &str = r#"apiVersion: fermata.dev/v1alpha1
kind: Campaign
metadata: {name: vision-rollout}
spec:
  selfDriving: true
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
      promote: {sites: {matchLabels: {ring: main}}, set: {VISION_MODEL: "${inputs.model}"}}
      batch: {size: 10%, failureTolerance: 2%}
      await: {state: installed, timeout: 14d}
    - name: rollback
      revert: {stage: canary}
"#;

const ACTIVATION: &str = "apiVersion: fermata.dev/v1alpha1
kind: Activation
metadata: {name: vision-2026-12}
spec: {campaign: vision-rollout, inputs: {model: v4}}
";

/// The minimal fleet, three sites, the campaign and its activation, with
/// `files` written over them, committed.
fn repo_with(files: &[(&str, &str)]) -> TestRepo {
    let repo = TestRepo::new();
    minimal(&repo)
        .write("sites.yaml", SITES)
        .write("campaigns/vision.yaml", CAMPAIGN)
        .write("campaigns/vision-2026-12.yaml", ACTIVATION);
    for (path, content) in files {
        repo.write(path, content);
    }
    repo.commit("campaigns");
    repo
}

fn validate(repo: &TestRepo, extra: &[&str]) -> Run {
    let mut args = vec![
        "validate",
        "--repo",
        repo.path().to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    fermata(&args)
}

#[test]
fn a_valid_campaign_and_activation_validate_and_count() {
    let repo = repo_with(&[]);
    let run = validate(&repo, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.lines(),
        ["ok: 1 symphony, 1 composition, 0 windows, 1 target, 3 sites, 1 campaign, 1 activation"],
        "{run:?}"
    );
    assert_eq!(run.stderr, "", "no warnings: {run:?}");

    let run = validate(&repo, &["--output", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    assert_eq!(
        (v["campaigns"].as_u64(), v["activations"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn broken_campaigns_fail_each_error_at_its_line() {
    let bad_stages = CAMPAIGN
        .replace("name: vision-rollout", "name: bad-stages")
        .replace("firstStage: canary", "firstStage: canry")
        .replace("stage: approve}", "stage: aprove}")
        .replace(
            "approval: {approvers: 1}\n",
            "approval: {approvers: 1}\n      wait: {duration: 1h}\n",
        );
    let bad_values = CAMPAIGN
        .replace("name: vision-rollout", "name: bad-values")
        .replace("timeout: 8d", "timeout: soon")
        .replace("size: 10%", "size: 0%")
        .replace("outputs.failed == 0", "outputs.failed = 0")
        .replace("set: {VISION_MODEL:", "set: {VISION-MODEL:");
    let orphan = "apiVersion: fermata.dev/v1alpha1
kind: Activation
metadata: {name: orphan}
spec: {campaign: vision-rolout, inputs: {model: v5}}
";
    let lacking = "apiVersion: fermata.dev/v1alpha1
kind: Activation
metadata: {name: lacking}
spec:
  campaign: vision-rollout
  inputs: {tag: v5}
";
    let repo = repo_with(&[
        ("campaigns/bad-stages.yaml", &bad_stages),
        ("campaigns/bad-values.yaml", &bad_values),
        ("campaigns/orphan.yaml", orphan),
        ("campaigns/lacking.yaml", lacking),
    ]);
    let run = validate(&repo, &["--no-render"]);
    assert_eq!(
        run.lines(),
        [
            "campaigns/bad-stages.yaml:6: spec.firstStage: no stage named \"canry\" (did you mean \"canary\"?); stages: canary, approve, fleet, rollback",
            "campaigns/bad-stages.yaml:13: spec.stages[0].next[0].stage: no stage named \"aprove\" (did you mean \"approve\"?); stages: canary, approve, fleet, rollback",
            "campaigns/bad-stages.yaml:16: spec.stages[1].wait: stage \"approve\" has both approval and wait: a stage does exactly one of promote, approval, verify, wait, revert (chain stages with `next`)",
            "campaigns/bad-values.yaml:11: spec.stages[0].promote.set.VISION-MODEL: \"VISION-MODEL\" is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
            "campaigns/bad-values.yaml:12: spec.stages[0].await.timeout: duration \"soon\": expected number at 0; expected a positive duration such as \"90m\", \"3h\" or \"2days 4h\"",
            "campaigns/bad-values.yaml:13: spec.stages[0].next[0].when: CEL: Syntax error: token recognition error at: '= ' (at column 16 of \"outputs.failed = 0\")",
            "campaigns/bad-values.yaml:18: spec.stages[2].promote.set.VISION-MODEL: \"VISION-MODEL\" is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
            "campaigns/bad-values.yaml:19: spec.stages[2].batch.size: \"0%\" is not a share from 1% to 100% (`10%`) or a count of sites of at least 1 (`5`) for a batch size",
            "campaigns/lacking.yaml:6: spec.inputs: campaign \"vision-rollout\" needs input \"model\" (used at campaigns/vision.yaml:11)",
            "campaigns/orphan.yaml:4: spec.campaign: no Campaign named \"vision-rolout\" (did you mean \"vision-rollout\"?)",
        ],
        "{run:?}"
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "warning: campaigns/lacking.yaml:6: spec.inputs.tag: campaign \"vision-rollout\" never uses input \"tag\""
        ),
        "{run:?}"
    );
}

#[test]
fn campaign_warnings_do_not_fail_validation() {
    let unreachable = CAMPAIGN.replace("next: [{stage: fleet}]", "next: []");
    let repo = repo_with(&[("campaigns/vision.yaml", &unreachable)]);
    let run = validate(&repo, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        ["warning: campaigns/vision.yaml:17: spec.stages[2].name: stage \"fleet\" is never reached: no `next` from firstStage \"canary\" leads to it"],
        "{run:?}"
    );
}
