//! Synthesis through the real binary: digests, templates, KRM functions.

mod util;

use serde_json::Value;
use util::{fermata, minimal, TestRepo};

/// Renders HEAD of `repo` as JSON; panics unless it succeeds.
fn render(repo: &TestRepo) -> Value {
    let run = fermata(&[
        "render",
        "--repo",
        repo.path().to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).expect("json")
}

fn digest(repo: &TestRepo) -> String {
    render(repo)["compositions"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

#[test]
fn identical_input_gives_identical_digest_and_file_order_does_not_matter() {
    let repo = TestRepo::new();
    minimal(&repo).write(
        "synth/manifests/svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: default}\nspec: {ports: [{port: 80}]}\n",
    );
    repo.commit("two files");
    let first = digest(&repo);
    assert_eq!(digest(&repo), first, "same commit, same digest");

    // Same resources, other file names (so other order), other key order.
    repo.remove("synth/manifests");
    repo.write(
        "synth/manifests/0-svc.yaml",
        "kind: Service\napiVersion: v1\nspec: {ports: [{port: 80}]}\nmetadata: {namespace: default, name: app}\n",
    )
    .write("synth/manifests/1-cm.yaml", util::MANIFEST);
    repo.commit("reordered");
    assert_eq!(digest(&repo), first, "file and key order must not matter");
    // And both documents in one file.
    repo.remove("synth/manifests");
    repo.write(
        "synth/manifests/all.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n",
            util::MANIFEST
        ),
    );
    repo.commit("one file");
    assert_eq!(digest(&repo), first);
}

#[test]
fn digest_changes_with_env_annotations_labels_and_artifacts() {
    let repo = TestRepo::new();
    minimal(&repo);
    repo.commit("base");
    let base = digest(&repo);

    let mut seen = vec![base.clone()];
    let variants = [
        util::SYMPHONY.replace("value: v1", "value: v2"),
        format!("{}      annotations: {{a: \"true\"}}\n", util::SYMPHONY),
        format!("{}      labels: {{tier: edge}}\n", util::SYMPHONY),
    ];
    for v in &variants {
        repo.write("symphony.yaml", v);
        repo.commit("variant");
        let d = digest(&repo);
        assert!(!seen.contains(&d), "digest must change for:\n{v}");
        seen.push(d);
    }
    repo.write("symphony.yaml", util::SYMPHONY);
    repo.write(
        "synth/app.yaml",
        &format!(
            "{}  artifacts:\n    - {{name: m.bin, url: m.bin, sha256: {}}}\n",
            util::SYNTH,
            "ab".repeat(32)
        ),
    )
    .write("synth/m.bin", "model");
    repo.commit("artifact");
    let d = digest(&repo);
    assert!(
        !seen.contains(&d),
        "an artifact is part of the desired state"
    );
}

#[test]
fn templates_substitute_env_and_bindings() {
    let repo = TestRepo::new();
    minimal(&repo)
        .write(
            "inputs/cfg.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: plant}\ndata: {camera: rtsp://cam, list: [1, 2]}\n",
        )
        .write(
            "synth/manifests/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: default}\ndata:\n  tag: \"${TAG}\"\n  camera: ${binding.cfg.data.camera}\n  second: \"${binding.cfg.data.list.1}\"\n  literal: \"$${TAG}\"\n",
        )
        .write(
            "symphony.yaml",
            &format!(
                "{}      bindings: [{{key: cfg, resource: {{name: cfg, namespace: plant}}}}]\n",
                util::SYMPHONY
            ),
        );
    repo.commit("bindings");
    let out = render(&repo);
    let data = &out["compositions"][0]["resources"][0]["data"];
    assert_eq!(data["tag"], "v1");
    assert_eq!(data["camera"], "rtsp://cam");
    assert_eq!(data["second"], "2");
    assert_eq!(data["literal"], "${TAG}");
    let ann = &out["compositions"][0]["resources"][0]["metadata"]["annotations"];
    assert_eq!(ann["fermata.dev/composition"], "shop/app");
    assert_eq!(ann["fermata.dev/digest"], out["compositions"][0]["digest"]);
}

#[test]
fn an_undefined_variable_is_an_error_with_its_line_never_empty() {
    let repo = TestRepo::new();
    minimal(&repo).write(
        "synth/manifests/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: default}\ndata:\n  tag: \"${NOPE}\"\n",
    );
    repo.commit("undefined");
    let run = fermata(&["render", "--repo", repo.path().to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stdout, "",
        "nothing rendered for the broken composition"
    );
    assert_eq!(
        run.stderr.trim(),
        "synth/manifests/cm.yaml:5: shop/app: undefined variable ${NOPE}: not in the synthesisEnv of shop/app"
    );
}

/// A fleet whose synthesizer is a KRM function given as `command`.
fn command_repo(command: &str, timeout: &str) -> TestRepo {
    let repo = TestRepo::new();
    minimal(&repo).write(
        "synth/app.yaml",
        &format!(
            "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {{name: app}}\nspec:\n  command: {command}\n  timeout: {timeout}\n"
        ),
    );
    repo
}

#[test]
fn a_command_gets_bound_objects_as_items_and_env() {
    let repo = command_repo(r#"["./fn.sh"]"#, "30s");
    repo.write(
        "synth/fn.sh",
        "#!/bin/sh\n# Echo the input items back, plus a ConfigMap made from the environment.\necho 'kind: ResourceList'\necho 'items:'\necho \"- {apiVersion: v1, kind: ConfigMap, metadata: {name: env}, data: {tag: $TAG, id: $FERMATA_COMPOSITION}}\"\nsed -n '/^items:/,/^[a-z]/{/^items:/d;/^[a-z]/d;p;}'\n",
    )
    .write(
        "inputs/cfg.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b}\n",
    )
    .write(
        "symphony.yaml",
        &format!(
            "{}      bindings: [{{key: cfg, resource: {{name: cfg}}}}]\n",
            util::SYMPHONY
        ),
    );
    std::process::Command::new("chmod")
        .args(["+x", repo.path().join("synth/fn.sh").to_str().unwrap()])
        .status()
        .unwrap();
    repo.commit("krm");
    let out = render(&repo);
    let res = out["compositions"][0]["resources"].as_array().unwrap();
    let names: Vec<&str> = res
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cfg", "env"], "sorted by key: {res:?}");
    assert_eq!(res[0]["data"]["a"], "b");
    assert_eq!(
        res[0]["metadata"]["annotations"]["fermata.dev/binding"],
        "cfg"
    );
    assert_eq!(res[1]["data"]["tag"], "v1");
    assert_eq!(res[1]["data"]["id"], "shop/app");
}

#[test]
fn a_hanging_command_is_killed_at_its_timeout_with_its_children() {
    // The background sleep holds stdout open: only killing the whole
    // process group lets the render finish at all.
    let repo = command_repo(
        r#"["sh", "-c", "echo started >&2; sleep 300 & sleep 300"]"#,
        "1s",
    );
    repo.commit("hang");
    let run = fermata(&["render", "--repo", repo.path().to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("killed after its timeout of 1s; stderr: started"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .starts_with("synth/app.yaml:5: spec.command: shop/app: command"),
        "{run:?}"
    );
}

#[test]
fn garbage_output_and_failures_fail_cleanly_with_stderr() {
    let cases = [
        (
            r#"["sh", "-c", "echo '{{{ not yaml'"]"#,
            "printed no valid ResourceList",
        ),
        (
            r#"["sh", "-c", "echo 'kind: ConfigMap'"]"#,
            "printed kind \"ConfigMap\", expected ResourceList",
        ),
        (
            r#"["sh", "-c", "echo boom >&2; exit 3"]"#,
            "exited with exit status: 3; stderr: boom",
        ),
        (
            r#"["sh", "-c", "printf 'kind: ResourceList\nitems: [{kind: X}]\n'"]"#,
            "items[0]: missing apiVersion",
        ),
        (
            r#"["sh", "-c", "printf 'kind: ResourceList\nresults: [{severity: error, message: bad input}]\n'"]"#,
            "reported errors: bad input",
        ),
        (r#"["/nonexistent/fn"]"#, "cannot start"),
    ];
    for (command, want) in cases {
        let repo = command_repo(command, "10s");
        if command.contains("/nonexistent") {
            // An absolute command is refused at load time: it is outside the repository.
            repo.commit("case");
            let run = fermata(&["validate", "--repo", repo.path().to_str().unwrap()]);
            assert_eq!(run.code, 1, "{run:?}");
            assert!(run.stdout.contains("spec.command"), "{run:?}");
            continue;
        }
        repo.commit("case");
        let run = fermata(&["render", "--repo", repo.path().to_str().unwrap()]);
        assert_eq!(run.code, 1, "{command}: {run:?}");
        assert!(
            run.stderr.contains(want),
            "{command}: want {want:?} in {run:?}"
        );
        assert_eq!(run.stdout, "");
    }
}
