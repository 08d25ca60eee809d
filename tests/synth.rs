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

/// `fermata ARGS` that fails the test (after killing fermata) if it runs
/// longer than `bound`: a hang must fail, never block the suite. Output goes
/// to files, so a leftover process holding a pipe cannot block the test.
fn fermata_within(bound: std::time::Duration, args: &[&str]) -> util::Run {
    fermata_env_within(bound, args, &[])
}

/// [`fermata_within`] with environment variables.
fn fermata_env_within(
    bound: std::time::Duration,
    args: &[&str],
    env: &[(&str, &str)],
) -> util::Run {
    use wait_timeout::ChildExt;
    let state = tempfile::tempdir().expect("state dir");
    let out = tempfile::NamedTempFile::new().expect("stdout file");
    let err = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args(args)
        .env("FERMATA_STATE_DIR", state.path())
        .env_remove("FERMATA_LOG")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(out.reopen().expect("stdout"))
        .stderr(err.reopen().expect("stderr"))
        .spawn()
        .expect("fermata runs");
    let status = child.wait_timeout(bound).expect("wait");
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut stderr = std::fs::read_to_string(err.path()).unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!("\n(the test killed fermata after {bound:?})"));
    }
    util::Run {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: std::fs::read_to_string(out.path()).unwrap_or_default(),
        stderr,
    }
}

/// Processes whose command line is exactly `argv`, e.g. `sleep 77777`.
fn processes(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// Kills every process running `argv` and returns their pids: called before
/// any assertion, so a failing test leaves nothing behind.
fn kill_leftovers(argv: &[&str]) -> Vec<i32> {
    let left = processes(argv);
    for pid in &left {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    left
}

#[test]
fn a_command_that_escapes_its_process_group_is_still_killed_at_its_timeout() {
    // setsid: a new session and process group, holding stdout open. Killing
    // the group alone leaves it running, and reading stdout to its end hangs.
    let repo = command_repo(
        r#"["sh", "-c", "echo started >&2; setsid sleep 77777 & sleep 300"]"#,
        "1s",
    );
    repo.commit("escape");
    let p = repo.path().to_str().unwrap();
    let run = fermata_within(std::time::Duration::from_secs(30), &["render", "--repo", p]);
    let left = kill_leftovers(&["sleep", "77777"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("killed after its timeout of 1s; stderr: started"),
        "{run:?}"
    );
    assert!(
        left.is_empty(),
        "the escaped sleep outlived the render: {left:?}"
    );
}

#[test]
fn a_command_that_exits_leaving_an_escaped_child_holding_stdout_finishes() {
    // The command itself is done at once; its escaped child must not keep
    // the render waiting (until the timeout or forever).
    let repo = command_repo(
        r#"["sh", "-c", "setsid sleep 77778 & echo 'kind: ResourceList'; echo 'items: [{apiVersion: v1, kind: ConfigMap, metadata: {name: x}}]'"]"#,
        "20s",
    );
    repo.commit("daemon");
    let p = repo.path().to_str().unwrap();
    let run = fermata_within(
        std::time::Duration::from_secs(60),
        &["render", "--repo", p, "--output", "json"],
    );
    let left = kill_leftovers(&["sleep", "77778"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        left.is_empty(),
        "the escaped sleep outlived the render: {left:?}"
    );
    let out: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(
        out["compositions"][0]["resources"][0]["metadata"]["name"],
        "x"
    );
}

#[test]
fn a_command_printing_more_than_the_output_limit_is_killed_with_the_limit_named() {
    // 200 MB of stdout: past the default limit of 64 MiB. The background
    // sleep shows the whole process group is killed, not only the writer.
    let repo = command_repo(
        r#"["sh", "-c", "sleep 77779 & head -c 200000000 /dev/zero"]"#,
        "60s",
    );
    repo.commit("flood");
    let p = repo.path().to_str().unwrap();
    let run = fermata_within(
        std::time::Duration::from_secs(120),
        &["render", "--repo", p],
    );
    let left = kill_leftovers(&["sleep", "77779"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("printed more than 64.0 MiB on stdout (--max-render-output)"),
        "{run:?}"
    );
    assert!(left.is_empty(), "the group outlived the render: {left:?}");

    // A smaller limit from the flag, and from the environment.
    let repo = command_repo(r#"["sh", "-c", "head -c 2000000 /dev/zero"]"#, "60s");
    repo.commit("2 MB");
    let p = repo.path().to_str().unwrap();
    let bound = std::time::Duration::from_secs(60);
    let run = fermata_within(
        bound,
        &["render", "--repo", p, "--max-render-output", "1MiB"],
    );
    assert!(
        run.stderr
            .contains("printed more than 1.0 MiB on stdout (--max-render-output)"),
        "{run:?}"
    );
    let run = fermata_within(
        bound,
        &["validate", "--repo", p, "--max-render-output", "1MiB"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("printed more than 1.0 MiB"), "{run:?}");
    let env = [("FERMATA_MAX_RENDER_OUTPUT", "1500KiB")];
    let run = fermata_env_within(bound, &["validate", "--repo", p], &env);
    assert!(run.stdout.contains("printed more than 1.5 MiB"), "{run:?}");

    // Under the limit but not YAML: the parse error quotes a bounded part.
    let repo = command_repo(
        r#"["sh", "-c", "head -c 10000000 /dev/zero | tr '\\0' x"]"#,
        "60s",
    );
    repo.commit("one long scalar");
    let p = repo.path().to_str().unwrap();
    let run = fermata_within(bound, &["render", "--repo", p]);
    assert!(
        run.stderr.contains("printed no valid ResourceList"),
        "{run:?}"
    );
    assert!(
        run.stderr.len() < 8 * 1024,
        "{} bytes of stderr",
        run.stderr.len()
    );
}

#[test]
fn a_flood_on_stderr_is_kept_as_a_bounded_tail() {
    // 200 MB on stderr, then a marker and a failure: the error carries the
    // end of stderr, bounded, never the flood.
    let repo = command_repo(
        r#"["sh", "-c", "head -c 200000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo the-end >&2; exit 3"]"#,
        "60s",
    );
    repo.commit("stderr flood");
    let p = repo.path().to_str().unwrap();
    let run = fermata_within(
        std::time::Duration::from_secs(120),
        &["render", "--repo", p],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("exited with exit status: 3; stderr:"),
        "{run:?}"
    );
    assert!(run.stderr.trim_end().ends_with("the-end"), "{run:?}");
    assert!(
        run.stderr.len() < 8 * 1024,
        "{} bytes of stderr",
        run.stderr.len()
    );

    // And a command that floods stderr but prints a valid list succeeds.
    let repo = command_repo(
        r#"["sh", "-c", "head -c 200000000 /dev/zero >&2; echo 'kind: ResourceList'; echo 'items: []'"]"#,
        "60s",
    );
    repo.commit("stderr flood, then output");
    let p = repo.path().to_str().unwrap();
    let run = fermata_within(
        std::time::Duration::from_secs(120),
        &["render", "--repo", p],
    );
    assert_eq!(run.code, 0, "{run:?}");
}
