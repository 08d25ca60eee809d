//! Campaigns driven in stepped mode, as a CI job would (DESIGN.md section
//! 10): `fermata campaign step` against a bare repository, with real site
//! agents (`fermata run --once --site S`, processes) reconciling what each
//! promote commits. Canary, approval, the fleet in batches, and a failed
//! canary rolled back by a revert commit; a promote proposed as a pull
//! request on the fake forge (`util/fake_forge.rs`) hosting the repository.

#[path = "util/fake_forge.rs"]
mod fake_forge;
mod util;

use std::path::PathBuf;
use std::process::Command;

use util::{bare_clone, minimal, Run, TestRepo};

const NOW: &str = "2026-12-01T10:00:00Z";

/// Four plants: s1 the canary, s2..s4 the main ring; each runs `line`,
/// rendered with its MODEL (a command synthesizer that fails on `broken`).
fn fleet() -> TestRepo {
    let repo = TestRepo::new();
    let mut sites = String::new();
    for (i, ring) in [(1, "canary"), (2, "main"), (3, "main"), (4, "main")] {
        sites.push_str(&format!(
            "apiVersion: fermata.dev/v1alpha1\nkind: Site\nmetadata: {{name: s{i}, labels: {{ring: {ring}}}}}\nspec:\n  # the model each plant runs\n  env:\n    - {{name: MODEL, value: \"v3\"}}\n---\n"
        ));
    }
    minimal(&repo)
        .remove("target.yaml")
        .write("sites.yaml", &sites)
        .write(
            "target.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: line}\nspec:\n  directory: {path: line}\n",
        )
        .write(
            "vision/synth.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {name: vision}\nspec:\n  command: [./render.sh]\n",
        )
        .write(
            "vision/render.sh",
            "#!/bin/sh\ncat >/dev/null\nif [ \"$MODEL\" = broken ]; then echo 'model broken' >&2; exit 1; fi\ncat <<EOF\napiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: vision, namespace: line}\n  data: {model: \"$MODEL\"}\nEOF\n",
        )
        .write(
            "symphony.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: line}\nspec:\n  target: line\n  variations:\n    - name: vision\n      synthesizer: {name: vision}\n",
        )
        .write("campaign.yaml", CAMPAIGN);
    std::fs::set_permissions(
        repo.path().join("vision/render.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    repo.commit("fleet and campaign");
    repo
}

const CAMPAIGN: &str = "apiVersion: fermata.dev/v1alpha1
kind: Campaign
metadata: {name: vision-rollout}
spec:
  firstStage: canary
  stages:
    - name: canary
      promote:
        sites: {matchLabels: {ring: canary}}
        set: {MODEL: \"${inputs.model}\"}
      await: {state: installed, timeout: 8h}
      next: [{when: \"outputs.failed == 0\", stage: approve}, {stage: rollback}]
    - name: approve
      approval: {approvers: 1}
      next: [{stage: fleet}]
    - name: fleet
      promote:
        sites: {matchLabels: {ring: main}}
        set: {MODEL: \"${inputs.model}\"}
      batch: {size: 50%, failureTolerance: 0}
      await: {state: installed, timeout: 8h}
    - name: rollback
      revert: {stage: canary}
";

fn activation(name: &str, model: &str) -> String {
    format!(
        "apiVersion: fermata.dev/v1alpha1\nkind: Activation\nmetadata: {{name: {name}}}\nspec:\n  campaign: vision-rollout\n  inputs: {{model: \"{model}\"}}\n"
    )
}

/// `fermata campaign ARGS` at `now`, as user `alice` unless `env` says.
fn campaign_cmd(args: &[&str], now: &str, env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .arg("campaign")
        .args(args)
        .env("FERMATA_NOW", now)
        .env("USER", "alice")
        .envs(env.iter().copied())
        .output()
        .expect("fermata runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The JSON a `step` printed (null when it printed none).
fn json_of(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or(serde_json::Value::Null)
}

struct Fleet {
    _work: TestRepo,
    _dir: tempfile::TempDir,
    bare: PathBuf,
    agents: Vec<tempfile::TempDir>,
}

impl Fleet {
    fn new(activations: &[(&str, &str)]) -> Fleet {
        Fleet::with(activations, None)
    }

    fn with(activations: &[(&str, &str)], concurrency: Option<u32>) -> Fleet {
        let campaign = match concurrency {
            Some(n) => CAMPAIGN.replace(
                "  firstStage: canary\n",
                &format!("  firstStage: canary\n  concurrency: {n}\n"),
            ),
            None => CAMPAIGN.to_string(),
        };
        Fleet::with_campaign(activations, &campaign)
    }

    fn with_campaign(activations: &[(&str, &str)], campaign: &str) -> Fleet {
        let work = fleet();
        work.write("campaign.yaml", campaign);
        for (name, model) in activations {
            work.write(
                &format!("activations/{name}.yaml"),
                &activation(name, model),
            );
        }
        work.commit("activations");
        let dir = tempfile::tempdir().unwrap();
        let bare = bare_clone(work.path(), dir.path(), "fleet.git");
        Fleet {
            _work: work,
            _dir: dir,
            bare,
            agents: (0..4).map(|_| tempfile::tempdir().unwrap()).collect(),
        }
    }

    fn campaign(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--repo", self.bare.to_str().unwrap()]);
        campaign_cmd(&all, NOW, &[])
    }

    fn step(&self, activation: &str) -> (i32, serde_json::Value, Run) {
        let run = self.campaign(&["step", activation]);
        let json = serde_json::from_str(&run.stdout).unwrap_or(serde_json::Value::Null);
        (run.code, json, run)
    }

    /// Site `i`'s agent reconciles once.
    fn agent(&self, i: usize) -> Run {
        util::fermata_at(
            self.agents[i - 1].path(),
            &[
                "run",
                "--once",
                "--repo",
                self.bare.to_str().unwrap(),
                "--branch",
                "main",
                "--site",
                &format!("s{i}"),
            ],
            NOW,
            &[],
        )
    }

    /// The model site `i` runs now.
    fn model(&self, i: usize) -> Option<String> {
        let current = self.agents[i - 1]
            .path()
            .join("targets/line/line/vision/current/manifest.yaml");
        let text = std::fs::read_to_string(current).ok()?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("model: "))
            .map(|m| m.trim_matches('"').to_string())
    }

    fn git(&self, args: &[&str]) -> String {
        util::git(&self.bare, args)
    }
}

fn assert_step(f: &Fleet, activation: &str, code: i32, stage: &str) -> serde_json::Value {
    let (got, json, run) = f.step(activation);
    assert_eq!(got, code, "{run:?}");
    assert_eq!(json["stage"], serde_json::json!(stage), "{run:?}");
    json
}

#[test]
fn canary_approval_and_the_fleet_in_batches() {
    let f = Fleet::new(&[("vision-v4", "v4")]);
    for i in 1..=4 {
        assert_eq!(f.agent(i).code, 0);
        assert_eq!(f.model(i).as_deref(), Some("v3"));
    }
    // Canary: one promote commit, then it waits for s1.
    assert_step(&f, "vision-v4", 3, "canary");
    let log = f.git(&["log", "-1", "--format=%s%n%b", "main"]);
    assert!(
        log.contains("campaign vision-v4 stage canary batch 1/1"),
        "{log}"
    );
    assert!(log.contains("Fermata-Activation: vision-v4"), "{log}");
    let diff = f.git(&["show", "--format=", "main", "--", "sites.yaml"]);
    assert_eq!(
        diff.lines()
            .filter(|l| l.starts_with('-') && !l.starts_with("---"))
            .count(),
        1,
        "one value changed, the rest byte for byte: {diff}"
    );
    // Stepping again while s1 has not reconciled: still waiting, no new commit.
    let head = f.git(&["rev-parse", "main"]);
    assert_step(&f, "vision-v4", 3, "canary");
    assert_eq!(f.git(&["rev-parse", "main"]), head, "no duplicate promote");
    assert_eq!(f.agent(1).code, 0);
    assert_eq!(f.model(1).as_deref(), Some("v4"));
    assert_eq!(f.model(2).as_deref(), Some("v3"), "only the canary moved");
    // Approval.
    assert_step(&f, "vision-v4", 0, "approve");
    let (code, json, run) = f.step("vision-v4");
    assert_eq!(code, 3, "{run:?}");
    assert!(
        json["why"].as_str().unwrap_or("").contains("approval"),
        "{run:?}"
    );
    let approved = f.campaign(&["approve", "vision-v4", "--reason", "canary looks good"]);
    assert_eq!(approved.code, 0, "{approved:?}");
    assert_step(&f, "vision-v4", 0, "fleet");
    // The fleet, in batches of 50% of three: s2, s3, then s4.
    assert_step(&f, "vision-v4", 3, "fleet");
    for i in [2, 3] {
        assert_eq!(f.agent(i).code, 0);
    }
    assert_eq!(
        f.model(4).as_deref(),
        Some("v3"),
        "the second batch is not promoted yet"
    );
    assert_step(&f, "vision-v4", 3, "fleet");
    assert_eq!(f.agent(4).code, 0);
    let json = f.step("vision-v4").1;
    assert_eq!(json["outcome"], "finished", "{json}");
    assert_eq!(json["outputs"]["fleet"]["succeeded"], 3, "{json}");
    for i in 1..=4 {
        assert_eq!(f.model(i).as_deref(), Some("v4"), "s{i}");
    }
    let show = f.campaign(&["show", "vision-v4"]);
    assert!(
        show.stdout.contains("approved approve by alice"),
        "{show:?}"
    );
    // Every transition is a commit on the status branch.
    let history = f.git(&[
        "log",
        "--format=%s",
        "fermata/status",
        "--",
        "campaigns/vision-v4.yaml",
    ]);
    assert!(history.lines().count() >= 6, "{history}");
}

#[test]
fn a_failed_canary_is_rolled_back_by_a_revert_commit() {
    let f = Fleet::new(&[("vision-broken", "broken")]);
    assert_eq!(f.agent(1).code, 0);
    assert_step(&f, "vision-broken", 3, "canary");
    assert_ne!(
        f.agent(1).code,
        0,
        "the canary fails to render the broken model"
    );
    assert_eq!(
        f.model(1).as_deref(),
        Some("v3"),
        "still the last applied state"
    );
    // failed == 1: rollback, which restores the value in one commit.
    assert_step(&f, "vision-broken", 0, "rollback");
    let json = f.step("vision-broken").1;
    assert_eq!(json["outcome"], "finished", "{json}");
    let sites = f.git(&["show", "main:sites.yaml"]);
    assert_eq!(sites.matches("value: \"v3\"").count(), 4, "{sites}");
    let log = f.git(&["log", "-1", "--format=%s", "main"]);
    assert!(log.contains("stage rollback"), "{log}");
    assert_eq!(f.agent(1).code, 0);
    assert_eq!(f.model(1).as_deref(), Some("v3"));
}

#[test]
fn concurrency_one_queues_the_second_activation() {
    let f = Fleet::with(&[("a-first", "v4"), ("b-second", "v5")], Some(1));
    assert_step(&f, "a-first", 3, "canary");
    let head = f.git(&["rev-parse", "main"]);
    let (code, json, run) = f.step("b-second");
    assert_eq!(code, 3, "{run:?}");
    assert!(
        json["why"]
            .as_str()
            .unwrap_or("")
            .contains("behind a-first"),
        "{run:?}"
    );
    assert_eq!(
        f.git(&["rev-parse", "main"]),
        head,
        "the queued one promotes nothing"
    );
}

/// A driver killed after its promote commit and before the state commit
/// that records it: the next step finds the promote by its trailers and
/// records it, without a second commit (invariant 12).
#[test]
fn a_step_interrupted_after_its_promote_resumes_without_a_duplicate() {
    let f = Fleet::new(&[("vision-v4", "v4")]);
    assert_step(&f, "vision-v4", 3, "canary");
    let promoted = f.git(&["rev-parse", "main"]);
    // Lose every state commit of that step, as a kill -9 before them would.
    f.git(&["update-ref", "-d", "refs/heads/fermata/status"]);
    let json = assert_step(&f, "vision-v4", 3, "canary");
    assert_eq!(
        f.git(&["rev-parse", "main"]),
        promoted,
        "no second promote: {json}"
    );
    let show = f.campaign(&["show", "vision-v4", "--format", "json"]);
    let state: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(
        state["stages"]["canary"]["batches"][0]["commit"],
        serde_json::json!(promoted.trim()),
        "{show:?}"
    );
    assert_eq!(
        state["stages"]["canary"]["batches"][0]["replaced"]["s1"]["values"]["MODEL"]["value"],
        serde_json::json!("v3"),
        "what it replaced, read off the promote's parent: {show:?}"
    );
}

/// Under `--trusted-keys`, an approval counts only when a listed key signed
/// it: an unsigned one (or one by another key) is refused, a signed one is
/// recorded with its signer.
#[test]
fn an_approval_must_be_signed_by_a_trusted_key() {
    let f = Fleet::new(&[("vision-v4", "v4")]);
    let keys = tempfile::tempdir().unwrap();
    let (alice, public) = util::ssh_key(keys.path(), "alice");
    let (mallory, _) = util::ssh_key(keys.path(), "mallory");
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("alice@plant {public}\n")).unwrap();
    let trusted = ["--trusted-keys", allowed.to_str().unwrap()];
    let step = |f: &Fleet| {
        let mut args = vec!["step", "vision-v4"];
        args.extend(trusted);
        let run = f.campaign(&args);
        let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
        (run.code, json, run)
    };
    assert_eq!(step(&f).0, 3);
    assert_eq!(f.agent(1).code, 0);
    assert_eq!(step(&f).1["stage"], "approve");
    for (what, key) in [
        ("unsigned", None),
        ("signed by another key", Some(&mallory)),
    ] {
        let mut args = vec!["approve", "vision-v4", "--reason", "looks fine"];
        if let Some(k) = key {
            args.extend(["--signing-key", k.to_str().unwrap()]);
        }
        assert_eq!(f.campaign(&args).code, 0, "{what}");
        let (code, json, run) = step(&f);
        assert_eq!(
            (code, json["stage"].clone()),
            (3, "approve".into()),
            "{what}: {run:?}"
        );
    }
    let signed = f.campaign(&[
        "approve",
        "vision-v4",
        "--reason",
        "canary fine",
        "--signing-key",
        alice.to_str().unwrap(),
    ]);
    assert_eq!(signed.code, 0, "{signed:?}");
    let (code, json, run) = step(&f);
    assert_eq!(
        (code, json["stage"].clone()),
        (0, "fleet".into()),
        "{run:?}"
    );
    let show = f.campaign(&["show", "vision-v4", "--format", "json"]);
    let state: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    let approvals = state["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1, "{show:?}");
    let by = approvals[0]["by"].as_str().unwrap();
    assert!(by.contains("alice@plant"), "the signer is recorded: {by}");
}

/// A self-driving campaign advances inside a central `fermata run`: the
/// pass reconciles every site, then the campaign steps on what they report.
#[test]
fn a_self_driving_campaign_advances_inside_fermata_run() {
    self_driving(false);
}

/// The same through a URL: `fermata run` drives the campaign in its mirror
/// and pushes every commit to the remote.
#[test]
fn a_self_driving_campaign_advances_inside_fermata_run_on_a_url() {
    self_driving(true);
}

fn self_driving(url: bool) {
    let work = fleet();
    work.write(
        "campaign.yaml",
        &CAMPAIGN.replace(
            "  firstStage: canary\n",
            "  firstStage: canary\n  selfDriving: true\n",
        ),
    );
    work.write("activations/v4.yaml", &activation("vision-v4", "v4"));
    work.commit("self-driving");
    let dir = tempfile::tempdir().unwrap();
    let bare = bare_clone(work.path(), dir.path(), "fleet.git");
    let state = tempfile::tempdir().unwrap();
    let repo = match url {
        true => format!("file://{}", bare.display()),
        false => bare.display().to_string(),
    };
    let once = || {
        util::fermata_at(
            state.path(),
            &["run", "--once", "--repo", &repo, "--branch", "main"],
            NOW,
            &[],
        )
    };
    let first = once();
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        first.stdout.contains("campaign vision-v4: Waiting"),
        "{first:?}"
    );
    // The canary's promote is on main; the next pass applies it at s1, and
    // the campaign moves on to its approval.
    let second = once();
    assert!(
        second.stdout.contains("campaign vision-v4: Waiting"),
        "{second:?}"
    );
    let model = std::fs::read_to_string(
        state
            .path()
            .join("targets/s1/line/line/vision/current/manifest.yaml"),
    )
    .unwrap();
    assert!(model.contains("v4"), "{model}");
    let status = util::git(&bare, &["show", "fermata/status:campaigns/vision-v4.yaml"]);
    assert!(status.contains("stage: approve"), "{status}");
}

/// The campaign with its canary proposed as a pull request.
fn pr_fleet(activation: &str, model: &str) -> Fleet {
    let campaign = CAMPAIGN.replacen(
        "        set: {MODEL: \"${inputs.model}\"}\n",
        "        set: {MODEL: \"${inputs.model}\"}\n        pullRequest: true\n",
        1,
    );
    assert!(campaign.contains("pullRequest: true"));
    Fleet::with_campaign(&[(activation, model)], &campaign)
}

/// A fake GitHub hosting the fleet's bare repository, on a runtime of its own.
fn forge_for(f: &Fleet) -> (tokio::runtime::Runtime, fake_forge::FakeForge) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let forge = rt.block_on(fake_forge::FakeForge::start(fake_forge::Flavour::GitHub));
    forge.host(&f.bare);
    (rt, forge)
}

/// `fermata campaign step` with the forge flags, as a CI job would run it.
fn step_on(
    f: &Fleet,
    forge: &fake_forge::FakeForge,
    activation: &str,
) -> (i32, serde_json::Value, Run) {
    let run = on_forge(f, forge, &["step", activation], &[]);
    (run.code, json_of(&run), run)
}

/// `fermata campaign ARGS` on `f`'s repository with the fake forge's flags.
fn on_forge(f: &Fleet, forge: &fake_forge::FakeForge, args: &[&str], env: &[(&str, &str)]) -> Run {
    let api = forge.api_url();
    let mut all = args.to_vec();
    all.extend(["--repo", f.bare.to_str().unwrap(), "--forge", "github"]);
    all.extend(["--forge-url", &api, "--forge-repo", forge.repo()]);
    all.extend(["--forge-token-env", "FAKE_FORGE_TOKEN"]);
    let mut env = env.to_vec();
    env.push(("FAKE_FORGE_TOKEN", fake_forge::TOKEN));
    campaign_cmd(&all, NOW, &env)
}

#[test]
fn a_promote_as_pull_request_waits_for_its_merge() {
    let f = pr_fleet("vision-v4", "v4");
    let (_rt, forge) = forge_for(&f);
    assert_eq!(f.agent(1).code, 0);
    let main = f.git(&["rev-parse", "main"]);
    let (code, json, run) = step_on(&f, &forge, "vision-v4");
    assert_eq!(code, 3, "{run:?}");
    assert!(
        json["why"]
            .as_str()
            .unwrap_or("")
            .contains("pull request #1 not merged yet"),
        "{run:?}"
    );
    assert_eq!(
        f.git(&["rev-parse", "main"]),
        main,
        "nothing committed to main"
    );
    let branch = "fermata/campaign/vision-v4/canary-1";
    let subject = f.git(&["log", "-1", "--format=%s", branch]);
    assert!(
        subject.contains("campaign vision-v4 stage canary batch 1/1: set MODEL=v4 on s1"),
        "{subject}"
    );
    assert_eq!(
        f.git(&["rev-parse", &format!("{branch}~1")]),
        main,
        "based on main's head"
    );
    let prs = forge.prs();
    assert_eq!(prs.len(), 1, "{prs:?}");
    assert_eq!(
        (prs[0].head_branch.as_str(), prs[0].base.as_str()),
        (branch, "main")
    );
    assert_eq!(prs[0].title, subject);
    // Stepping again while it is open: no second pull request, no commit.
    let (code, _, run) = step_on(&f, &forge, "vision-v4");
    assert_eq!(code, 3, "{run:?}");
    assert_eq!(forge.prs().len(), 1);
    assert_eq!(forge.count("POST", "/pulls"), 1, "{:?}", forge.requests());
    assert_eq!(f.git(&["rev-parse", "main"]), main);
    assert_eq!(f.agent(1).code, 0);
    assert_eq!(
        f.model(1).as_deref(),
        Some("v3"),
        "not merged: not rolled out"
    );
    // A reviewer merges it: then the canary rolls out and the stage goes on.
    let merge = forge.merge(1);
    let (code, json, run) = step_on(&f, &forge, "vision-v4");
    assert_eq!(code, 3, "{run:?}");
    assert!(
        json["why"]
            .as_str()
            .unwrap_or("")
            .contains("not installed yet"),
        "{run:?}"
    );
    let state = f.git(&["show", "fermata/status:campaigns/vision-v4.yaml"]);
    assert!(state.contains(&format!("commit: {merge}")), "{state}");
    assert!(state.contains("pullRequest: 1"), "{state}");
    assert_eq!(f.agent(1).code, 0);
    assert_eq!(f.model(1).as_deref(), Some("v4"));
    assert_eq!(f.model(2), None, "s2's agent never ran");
    let (code, json, run) = step_on(&f, &forge, "vision-v4");
    assert_eq!(code, 0, "{run:?}");
    assert_eq!(json["stage"], "approve", "{run:?}");
    assert_eq!(json["outputs"]["canary"]["succeeded"], 1, "{run:?}");
    assert_eq!(forge.prs().len(), 1);
}

#[test]
fn a_pull_request_closed_unmerged_fails_its_batch() {
    let f = pr_fleet("vision-v5", "v5");
    let (_rt, forge) = forge_for(&f);
    let (code, _, run) = step_on(&f, &forge, "vision-v5");
    assert_eq!(code, 3, "{run:?}");
    forge.update_pr(1, |p| p.fate = fake_forge::Fate::Closed);
    let (code, json, run) = step_on(&f, &forge, "vision-v5");
    assert_eq!(code, 0, "{run:?}");
    assert_eq!(
        json["stage"], "rollback",
        "failed == 1 picks rollback: {run:?}"
    );
    assert_eq!(json["outputs"]["canary"]["failed"], 1, "{run:?}");
    let state = f.git(&["show", "fermata/status:campaigns/vision-v5.yaml"]);
    assert!(
        state.contains("pull request #1 was closed without merging"),
        "{state}"
    );
    assert_eq!(forge.prs().len(), 1, "no second pull request");
}

#[test]
fn a_pull_request_promote_without_a_forge_fails_naming_the_flag() {
    let f = pr_fleet("vision-v6", "v6");
    let main = f.git(&["rev-parse", "main"]);
    let (code, json, run) = f.step("vision-v6");
    assert_eq!(code, 1, "{run:?}");
    assert!(
        json["why"].as_str().unwrap_or("").contains("--forge"),
        "{run:?}"
    );
    assert_eq!(f.git(&["rev-parse", "main"]), main);
}

/// Remote execution: a verify stage with `site: s2` is run by s2's agent
/// after its pass, which writes the result to its own branch; the driver
/// reads it there and the stage's outputs carry it.
#[test]
fn a_check_runs_at_its_site_and_the_driver_reads_the_result() {
    let work = fleet();
    let check = "apiVersion: fermata.dev/v1alpha1
kind: Campaign
metadata: {name: vision-rollout}
spec:
  firstStage: smoke
  stages:
    - name: smoke
      site: s2
      verify: {command: [\"true\"]}
      next: [{when: \"outputs.passed\", stage: soak}]
    - name: soak
      wait: {duration: 1m}
";
    work.write("campaign.yaml", check);
    work.write("activations/check.yaml", &activation("check", "v4"));
    work.commit("a check at s2");
    let dir = tempfile::tempdir().unwrap();
    let f = Fleet {
        bare: bare_clone(work.path(), dir.path(), "fleet.git"),
        _work: work,
        _dir: dir,
        agents: (0..4).map(|_| tempfile::tempdir().unwrap()).collect(),
    };
    let (code, json, run) = f.step("check");
    assert_eq!(code, 3, "{run:?}");
    assert!(
        json["why"]
            .as_str()
            .unwrap_or("")
            .contains("site s2's agent"),
        "{run:?}"
    );
    let other = f.agent(1);
    assert!(
        !other.stdout.contains("campaign check"),
        "not s1's to run: {other:?}"
    );
    let agent = f.agent(2);
    assert!(
        agent
            .stdout
            .contains("campaign check check/smoke: run at this site"),
        "{agent:?}"
    );
    let again = f.agent(2);
    assert!(
        !again.stdout.contains("campaign check"),
        "run once: {again:?}"
    );
    let (code, json, run) = f.step("check");
    assert_eq!(code, 0, "{run:?}");
    assert_eq!(json["stage"], "soak", "{run:?}");
    assert_eq!(json["outputs"]["smoke"]["passed"], true, "{run:?}");
    assert!(
        json["outputs"]["smoke"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("s2: "),
        "{run:?}"
    );
}

/// A fleet stage in batches of one site, no failure tolerated: the first
/// site fails to render the model, so the fan-out stops there and the
/// other sites are never promoted.
#[test]
fn a_batch_past_its_failure_tolerance_stops_the_fan_out() {
    let campaign = "apiVersion: fermata.dev/v1alpha1
kind: Campaign
metadata: {name: vision-rollout}
spec:
  firstStage: fleet
  stages:
    - name: fleet
      promote:
        sites: {matchLabels: {ring: main}}
        set: {MODEL: \"${inputs.model}\"}
      batch: {size: 1, failureTolerance: 0}
      await: {state: installed, timeout: 8h}
";
    let f = Fleet::with_campaign(&[("broken", "broken")], campaign);
    assert_step(&f, "broken", 3, "fleet");
    assert_ne!(f.agent(2).code, 0, "s2 cannot render the broken model");
    let json = f.step("broken").1;
    assert_eq!(json["outcome"], "finished", "{json}");
    assert_eq!(json["outputs"]["fleet"]["failed"], 1, "{json}");
    assert_eq!(json["outputs"]["fleet"]["stopped"], true, "{json}");
    let sites = f.git(&["show", "main:sites.yaml"]);
    assert_eq!(
        sites.matches("\"broken\"").count(),
        1,
        "only s2 promoted: {sites}"
    );
}

/// Two activations of two campaigns run side by side, each with its own
/// state and its own commits, neither waiting for the other.
#[test]
fn two_activations_of_two_campaigns_run_side_by_side() {
    let f = Fleet::new(&[("vision-v4", "v4")]);
    let tuning = "apiVersion: fermata.dev/v1alpha1
kind: Campaign
metadata: {name: tuning}
spec:
  firstStage: main
  stages:
    - name: main
      promote:
        sites: {matchLabels: {ring: main}}
        set: {LOG_LEVEL: debug}
      await: {state: installed, timeout: 8h}
---
apiVersion: fermata.dev/v1alpha1
kind: Activation
metadata: {name: debug-logs}
spec: {campaign: tuning}
";
    let work = tempfile::tempdir().unwrap();
    util::git(work.path(), &["clone", "-q", f.bare.to_str().unwrap(), "w"]);
    let w = work.path().join("w");
    std::fs::write(w.join("tuning.yaml"), tuning).unwrap();
    util::git(&w, &["add", "-A"]);
    util::git(
        &w,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "tuning",
        ],
    );
    util::git(&w, &["push", "-q", "origin", "main"]);
    assert_step(&f, "vision-v4", 3, "canary");
    assert_step(&f, "debug-logs", 3, "main");
    let subjects = f.git(&["log", "-2", "--format=%s", "main"]);
    assert!(
        subjects.contains("campaign debug-logs stage main batch 1/1"),
        "{subjects}"
    );
    assert!(
        subjects.contains("campaign vision-v4 stage canary batch 1/1"),
        "{subjects}"
    );
    for i in 1..=4 {
        assert_eq!(f.agent(i).code, 0, "s{i}");
    }
    assert_step(&f, "vision-v4", 0, "approve");
    let json = f.step("debug-logs").1;
    assert_eq!(json["outcome"], "finished", "{json}");
    let list = f.campaign(&["list"]);
    assert!(
        list.stdout.contains("vision-v4") && list.stdout.contains("debug-logs"),
        "{list:?}"
    );
}

/// Driven through a URL: the campaign commands keep a mirror under their
/// state directory, fetch it before each step and push each commit (and
/// each state) to the remote, as a CI job without a clone of its own would.
#[test]
fn a_campaign_is_driven_through_a_mirror_of_a_url() {
    let f = Fleet::new(&[("vision-v4", "v4")]);
    let state = tempfile::tempdir().unwrap();
    let url = format!("file://{}", f.bare.display());
    let state_dir = state.path().to_str().unwrap();
    let step = || {
        let args = [
            "step",
            "vision-v4",
            "--repo",
            &url,
            "--state-dir",
            state_dir,
        ];
        let run = campaign_cmd(&args, NOW, &[]);
        (Some(run.code), json_of(&run), run.stderr)
    };
    let (code, json, err) = step();
    assert_eq!(code, Some(3), "{json} {err}");
    let log = f.git(&["log", "-1", "--format=%s", "main"]);
    assert!(
        log.contains("campaign vision-v4 stage canary batch 1/1"),
        "pushed: {log}"
    );
    let saved = f.git(&["show", "fermata/status:campaigns/vision-v4.yaml"]);
    assert!(saved.contains("stage: canary"), "{saved}");
    assert_eq!(f.agent(1).code, 0);
    assert_eq!(f.model(1).as_deref(), Some("v4"));
    let (code, json, err) = step();
    assert_eq!(
        (code, json["stage"].clone()),
        (Some(0), "approve".into()),
        "{err}"
    );
}

/// An approval proposed as a pull request: stepping waits while it is
/// open; a reviewer merging it on the forge approves, and who merged it is
/// recorded beside who asked.
#[test]
fn an_approval_by_a_merged_pull_request() {
    let f = Fleet::new(&[("vision-v4", "v4")]);
    let (_rt, forge) = forge_for(&f);
    assert_eq!(f.step("vision-v4").0, 3);
    assert_eq!(f.agent(1).code, 0);
    assert_step(&f, "vision-v4", 0, "approve");
    let args = [
        "approve",
        "vision-v4",
        "--reason",
        "canary fine",
        "--pull-request",
    ];
    let proposed = on_forge(&f, &forge, &args, &[("USER", "bob")]);
    let out = &proposed.stdout;
    assert_eq!(proposed.code, 0, "{proposed:?}");
    assert!(out.contains("pull request #1"), "{out}");
    let (code, json, run) = step_on(&f, &forge, "vision-v4");
    assert_eq!(
        (code, json["stage"].clone()),
        (3, "approve".into()),
        "open: {run:?}"
    );
    forge.merge(1);
    let (code, json, run) = step_on(&f, &forge, "vision-v4");
    assert_eq!(
        (code, json["stage"].clone()),
        (0, "fleet".into()),
        "merged: {run:?}"
    );
    let by = json["outputs"]["approve"]["approvedBy"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        by.contains("bob") && by.contains("merged by Forge"),
        "{json}"
    );
}

/// The whole flow over a canary and nine plants whose line applies only in
/// its nightly window, driven by `--now`: by day a promote is staged at a
/// site but not installed, so the campaign waits; at night the sites
/// install it and the campaign moves on, batch after batch.
#[test]
fn canary_approval_and_nine_plants_in_their_windows() {
    const DAY: &str = "2026-12-01T10:00:00Z";
    const NIGHT: &str = "2026-12-02T02:30:00Z";
    let work = fleet();
    let mut sites = String::new();
    for i in 1..=10 {
        let ring = if i == 1 { "canary" } else { "main" };
        sites.push_str(&format!(
            "apiVersion: fermata.dev/v1alpha1\nkind: Site\nmetadata: {{name: s{i}, labels: {{ring: {ring}}}}}\nspec:\n  env:\n    - {{name: MODEL, value: \"v3\"}}\n---\n"
        ));
    }
    work.write("sites.yaml", &sites)
        .write(
            "window.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: MaintenanceWindow\nmetadata: {name: night}\nspec: {schedule: \"0 2 * * *\", duration: 2h, timezone: UTC}\n",
        )
        .write(
            "symphony.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: line}\nspec:\n  target: line\n  window: night\n  variations:\n    - name: vision\n      synthesizer: {name: vision}\n",
        )
        .write("campaign.yaml", &CAMPAIGN.replace("timeout: 8h", "timeout: 2d"))
        .write("activations/v4.yaml", &activation("vision-v4", "v4"));
    work.commit("ten plants, nightly windows");
    let dir = tempfile::tempdir().unwrap();
    let bare = bare_clone(work.path(), dir.path(), "fleet.git");
    let agents: Vec<tempfile::TempDir> = (0..10).map(|_| tempfile::tempdir().unwrap()).collect();
    let agent = |i: usize, now: &str| {
        let run = util::fermata_at(
            agents[i - 1].path(),
            &[
                "run",
                "--once",
                "--repo",
                bare.to_str().unwrap(),
                "--branch",
                "main",
                "--site",
                &format!("s{i}"),
            ],
            now,
            &[],
        );
        assert_eq!(run.code, 0, "s{i} at {now}: {run:?}");
    };
    let campaign = |args: &[&str], now: &str| {
        let mut all = args.to_vec();
        all.extend(["--repo", bare.to_str().unwrap()]);
        let run = campaign_cmd(&all, now, &[]);
        (run.code, json_of(&run))
    };
    let step = |now: &str| campaign(&["step", "vision-v4"], now);
    let f_git = |dir: &std::path::Path, args: &[&str]| util::git(dir, args);
    let installed = |i: usize| {
        let m = agents[i - 1]
            .path()
            .join("targets/line/line/vision/current/manifest.yaml");
        std::fs::read_to_string(m)
            .unwrap_or_default()
            .contains("v4")
    };
    // By day: the canary's promote is staged at s1, not installed: waiting.
    assert_eq!(step(DAY).0, 3);
    agent(1, DAY);
    assert!(!installed(1), "staged only, outside its window");
    let (code, json) = step(DAY);
    assert_eq!(
        (code, json["stage"].clone()),
        (3, "canary".into()),
        "{json}"
    );
    // At night s1 installs it; the campaign asks for its approval.
    agent(1, NIGHT);
    assert!(installed(1));
    assert_eq!(step(NIGHT).1["stage"], "approve");
    assert_eq!(
        campaign(&["approve", "vision-v4", "--reason", "canary ok"], NIGHT).0,
        0
    );
    assert_eq!(step(NIGHT).1["stage"], "fleet");
    // Nine plants in batches of half (5, then 4), each installing in its
    // window; every plant's agent runs as it would on its own schedule.
    for promoted in [5, 9] {
        let (code, json) = step(NIGHT);
        assert_eq!((code, json["stage"].clone()), (3, "fleet".into()), "{json}");
        let shown = f_git(&bare, &["show", "main:sites.yaml"]);
        assert_eq!(shown.matches("\"v4\"").count(), 1 + promoted, "{shown}");
        for i in 2..=10 {
            agent(i, NIGHT);
        }
    }
    let (code, json) = step(NIGHT);
    assert_eq!(
        (code, json["outcome"].clone()),
        (0, "finished".into()),
        "{json}"
    );
    assert_eq!(json["outputs"]["fleet"]["succeeded"], 9, "{json}");
    assert!((1..=10).all(installed));
}
