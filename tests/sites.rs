//! Sites through the real binary (DESIGN.md section 9): placement by labels,
//! expressions and names, targets bound to a site, site values in synthesis,
//! and `validate`/`render --site`.

mod util;

use serde_json::Value;
use util::{fermata, minimal, TestRepo};

const SITES: &str = "apiVersion: fermata.dev/v1alpha1
kind: Site
metadata: {name: plant-a, labels: {ring: canary, region: eu}}
spec:
  env: [{name: LINES, value: \"4\"}]
---
apiVersion: fermata.dev/v1alpha1
kind: Site
metadata: {name: plant-b, labels: {ring: stable, region: eu}}
spec:
  env: [{name: LINES, value: \"2\"}]
---
apiVersion: fermata.dev/v1alpha1
kind: Site
metadata: {name: plant-c, labels: {ring: stable, region: us}}
spec: {env: [{name: LINES, value: \"1\"}]}
";

const TARGETS: &str = "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: line}
spec:
  directory: {path: line}
---
apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: a-camera}
spec:
  site: plant-a
  directory: {path: camera}
";

const SITED_SYNTH: &str = "apiVersion: fermata.dev/v1alpha1
kind: Synthesizer
metadata: {name: sited}
spec:
  manifests: ./manifests
";

const SITED_MANIFEST: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: sited, namespace: default}
data:
  site: ${site.name}
  ring: ${site.labels.ring}
  lines: \"${site.env.LINES}\"
  plain: \"${LINES}\"
";

fn symphony(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: {name}}}\nspec:\n  target: line\n{spec}  variations:\n    - synthesizer: {{name: app}}\n      synthesisEnv: [{{name: TAG, value: v1}}]\n"
    )
}

/// Three sites, two targets (one bound to plant-a), a symphony per way of
/// placing one.
fn fleet() -> TestRepo {
    let repo = TestRepo::new();
    minimal(&repo)
        .remove("target.yaml")
        .write("sites.yaml", SITES)
        .write("targets.yaml", TARGETS)
        .write("sited/synth.yaml", SITED_SYNTH)
        .write("sited/manifests/cm.yaml", SITED_MANIFEST)
        .write("symphony.yaml", &symphony("everywhere", ""))
        .write(
            "canary.yaml",
            &symphony("canary", "  sites: {matchLabels: {ring: canary}}\n"),
        )
        .write(
            "not-us.yaml",
            &symphony(
                "not-us",
                "  sites:\n    matchExpressions:\n      - {key: region, operator: NotIn, values: [us]}\n      - {key: ring, operator: Exists}\n",
            ),
        )
        .write(
            "named.yaml",
            &symphony("named", "  sites: {names: [plant-c]}\n"),
        )
        .write(
            "pinned.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: pinned}\nspec:\n  sites: {names: [plant-a]}\n  variations:\n    - synthesizer: {name: sited}\n      target: a-camera\n",
        );
    repo.commit("fleet");
    repo
}

fn path(repo: &TestRepo) -> &str {
    repo.path().to_str().expect("utf-8 path")
}

/// `render --output json` with `extra` flags; panics unless it succeeds.
fn render(repo: &TestRepo, extra: &[&str]) -> Value {
    let mut args = vec!["render", "--repo", path(repo), "--output", "json"];
    args.extend(extra);
    let run = fermata(&args);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).expect("json")
}

/// `(site, composition)` of every rendered composition.
fn placed(out: &Value) -> Vec<(String, String)> {
    out["compositions"]
        .as_array()
        .expect("compositions")
        .iter()
        .map(|c| {
            (
                c["site"].as_str().unwrap_or("").to_string(),
                c["composition"].as_str().expect("id").to_string(),
            )
        })
        .collect()
}

#[test]
fn render_site_places_by_labels_expressions_names_and_bound_targets() {
    let repo = fleet();
    let cases = [
        (
            "plant-a",
            vec!["canary/app", "everywhere/app", "not-us/app", "pinned/sited"],
        ),
        ("plant-b", vec!["everywhere/app", "not-us/app"]),
        ("plant-c", vec!["everywhere/app", "named/app"]),
    ];
    for (site, want) in cases {
        let out = render(&repo, &["--site", site]);
        let got: Vec<(String, String)> = placed(&out);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|c| (site.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want, "site {site}");
    }
    // Without --site: every site's view in turn.
    let all = placed(&render(&repo, &[]));
    assert_eq!(all.len(), 8, "{all:?}");
}

#[test]
fn render_site_substitutes_site_values_and_annotates_the_site() {
    let repo = fleet();
    let out = render(
        &repo,
        &["--site", "plant-a", "--composition", "pinned/sited"],
    );
    let res = &out["compositions"][0]["resources"][0];
    assert_eq!(res["data"]["site"], "plant-a");
    assert_eq!(res["data"]["ring"], "canary");
    assert_eq!(res["data"]["lines"], "4");
    assert_eq!(
        res["data"]["plain"], "4",
        "a site's env is a plain ${{VAR}} too"
    );
    assert_eq!(
        res["metadata"]["annotations"]["fermata.dev/site"],
        "plant-a"
    );

    // The text output shows the same view.
    let run = fermata(&["render", "--repo", path(&repo), "--site", "plant-a"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("site: plant-a\n"), "{}", run.stdout);
    assert!(
        run.stdout.contains("fermata.dev/site: plant-a\n"),
        "{}",
        run.stdout
    );

    // A composition not placed at the site is refused, naming where it is.
    let run = fermata(&[
        "render",
        "--repo",
        path(&repo),
        "--site",
        "plant-b",
        "--composition",
        "pinned/sited",
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("composition pinned/sited is not placed at site plant-b (it is at: plant-a)"),
        "{run:?}"
    );
}

#[test]
fn validate_renders_every_site_and_names_the_site_that_fails() {
    let repo = fleet();
    // `sited` placed everywhere: plant-b and plant-c have no `camera` label.
    repo.write(
        "sited/manifests/cm.yaml",
        &SITED_MANIFEST.replace("${site.labels.ring}", "${site.labels.camera}"),
    )
    .write(
        "pinned.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: pinned}\nspec:\n  variations:\n    - synthesizer: {name: sited}\n      target: line\n",
    )
    .write(
        "sites.yaml",
        &SITES.replace("ring: canary, region: eu}", "ring: canary, region: eu, camera: \"yes\"}"),
    );
    repo.commit("camera label everywhere");
    let run = fermata(&["validate", "--repo", path(&repo)]);
    assert_eq!(run.code, 1, "{run:?}");
    let line = |site: &str| {
        format!("sited/manifests/cm.yaml:6: pinned/sited at site {site}: ${{site.labels.camera}}: site \"{site}\" (at sites.yaml:{}) has no label \"camera\"",
            if site == "plant-b" { 7 } else { 13 })
    };
    assert_eq!(run.lines(), [line("plant-b"), line("plant-c")], "{run:?}");
    // One site's view has no such error.
    let run = fermata(&["validate", "--repo", path(&repo), "--site", "plant-a"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "ok: site plant-a: 5 symphonies, 4 compositions, 0 windows, 2 targets\n"
    );
}

#[test]
fn a_command_synthesizer_gets_the_site_in_its_env_and_function_config() {
    let repo = fleet();
    repo.write(
        "sited/synth.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {name: sited}\nspec:\n  command: [./fn.sh]\n",
    )
    .write(
        "sited/fn.sh",
        "#!/bin/sh\nin=$(cat)\nann=no\ncase \"$in\" in *'fermata.dev/site: plant-a'*'fermata.dev/site-labels:'*) ann=yes ;; esac\nlines=$(printf '%s\\n' \"$in\" | sed -n 's/^ *LINES: *//p' | tr -d \"'\\\"\")\necho 'kind: ResourceList'\necho 'items:'\necho \"- {apiVersion: v1, kind: ConfigMap, metadata: {name: env}, data: {site: $FERMATA_SITE, lines: \\\"$LINES\\\", config: \\\"$lines\\\", annotated: $ann}}\"\n",
    )
    .remove("sited/manifests");
    std::process::Command::new("chmod")
        .args(["+x", repo.path().join("sited/fn.sh").to_str().unwrap()])
        .status()
        .unwrap();
    repo.commit("krm");
    let out = render(
        &repo,
        &["--site", "plant-a", "--composition", "pinned/sited"],
    );
    let data = &out["compositions"][0]["resources"][0]["data"];
    assert_eq!(data["site"], "plant-a", "{out}");
    assert_eq!(
        data["lines"], "4",
        "the site's env as environment variables"
    );
    assert_eq!(data["config"], "4", "and in functionConfig.data");
    assert_eq!(data["annotated"], "yes", "name and labels as annotations");

    // The variation's own value wins over the site's.
    repo.write(
        "pinned.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: pinned}\nspec:\n  variations:\n    - synthesizer: {name: sited}\n      target: a-camera\n      synthesisEnv: [{name: LINES, value: \"9\"}]\n",
    );
    repo.commit("own LINES");
    let out = render(
        &repo,
        &["--site", "plant-a", "--composition", "pinned/sited"],
    );
    let data = &out["compositions"][0]["resources"][0]["data"];
    assert_eq!(data["lines"], "9");
    assert_eq!(data["config"], "9");
}

#[test]
fn validate_reports_selector_and_site_errors_at_file_and_line() {
    let repo = fleet();
    repo.write(
        "canary.yaml",
        &symphony(
            "canary",
            "  sites:\n    matchExpressions: [{key: ring, operator: Inn, values: [canary]}]\n",
        ),
    )
    .write(
        "targets.yaml",
        &TARGETS.replace("site: plant-a", "site: plant-x"),
    );
    repo.commit("typos");
    let run = fermata(&["validate", "--repo", path(&repo), "--no-render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.lines(),
        [
            "canary.yaml:7: spec.sites.matchExpressions[0].operator: unknown operator \"Inn\" (did you mean \"In\"?); one of In, NotIn, Exists, DoesNotExist",
            "targets.yaml:11: spec.site: no Site named \"plant-x\" (did you mean \"plant-a\"?)",
        ],
        "{run:?}"
    );
    // The symphony on the broken target fails with it, where it uses it.
    let run = fermata(&[
        "validate",
        "--repo",
        path(&repo),
        "--no-render",
        "--output",
        "json",
    ]);
    let out: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(out["ok"], false);
    assert_eq!(out["sites"], 3);
}

#[test]
fn validate_warns_about_a_symphony_that_selects_no_site() {
    let repo = fleet();
    repo.write(
        "canary.yaml",
        &symphony("canary", "  sites: {matchLabels: {ring: beta}}\n"),
    );
    repo.commit("no beta site");
    let run = fermata(&["validate", "--repo", path(&repo)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stderr,
        "warning: canary.yaml:6: spec.sites: selects no site (of 3): symphony \"canary\" runs nowhere\n"
    );
    assert_eq!(
        run.stdout,
        "ok: 5 symphonies, 5 compositions, 0 windows, 2 targets, 3 sites\n"
    );
}

#[test]
fn an_unknown_site_is_an_error_with_did_you_mean() {
    let repo = fleet();
    for cmd in ["validate", "render"] {
        let run = fermata(&[cmd, "--repo", path(&repo), "--site", "plant-d"]);
        assert_eq!(run.code, 2, "{cmd}: {run:?}");
        assert!(
            run.stderr
                .contains("--site plant-d: no Site named \"plant-d\" (did you mean \"plant-a\"?)"),
            "{cmd}: {run:?}"
        );
    }
}

#[test]
fn a_repository_without_sites_is_unchanged_and_refuses_site() {
    let repo = TestRepo::new();
    minimal(&repo);
    repo.commit("no sites");
    let out = render(&repo, &[]);
    let comp = &out["compositions"][0];
    assert!(comp.get("site").is_none(), "{out}");
    let ann = &comp["resources"][0]["metadata"]["annotations"];
    assert!(ann.get("fermata.dev/site").is_none(), "{out}");
    let run = fermata(&["validate", "--repo", path(&repo)]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            0,
            "ok: 1 symphony, 1 composition, 0 windows, 1 target\n",
            ""
        )
    );
    for cmd in ["validate", "render"] {
        let run = fermata(&[cmd, "--repo", path(&repo), "--site", "plant-a"]);
        assert_eq!(run.code, 2, "{cmd}: {run:?}");
        assert!(
            run.stderr.contains(
                "--site plant-a: no site \"plant-a\": the repository defines no Site objects"
            ),
            "{cmd}: {run:?}"
        );
    }
    // ${site.*} without a site is a render error at the template.
    repo.write(
        "synth/manifests/cm.yaml",
        &util::MANIFEST.replace("${TAG}", "${site.name}"),
    );
    repo.commit("site value, no site");
    let run = fermata(&["validate", "--repo", path(&repo)]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.lines(),
        ["synth/manifests/cm.yaml:4: shop/app: ${site.name}: shop/app is rendered for no site (site values exist only in a site's view: Site objects in the repository, and --site or a site agent)"]
    );
}

#[test]
fn a_digest_depends_on_site_values_only_through_the_output() {
    let repo = fleet();
    let digest = |site: &str, id: &str| {
        render(&repo, &["--site", site, "--composition", id])["compositions"][0]["digest"]
            .as_str()
            .expect("digest")
            .to_string()
    };
    // everywhere/app does not read site values: the same at every site.
    assert_eq!(
        digest("plant-b", "everywhere/app"),
        digest("plant-c", "everywhere/app")
    );
    // And the same as in a repository without sites.
    let plain = TestRepo::new();
    minimal(&plain).write(
        "symphony.yaml",
        &util::SYMPHONY.replace("name: shop", "name: everywhere"),
    );
    plain.commit("no sites");
    let without = render(&plain, &[])["compositions"][0]["digest"].clone();
    assert_eq!(without, digest("plant-b", "everywhere/app"));
}
