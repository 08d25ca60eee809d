//! `fermata validate` on broken repositories: every class of error, located
//! as `file:line: field: message`, all of them in one pass.

mod util;

use serde_json::{json, Value};
use util::{fermata, minimal, Run, TestRepo};

/// Runs `fermata validate` on HEAD of `repo`, with extra arguments.
fn validate(repo: &TestRepo, extra: &[&str]) -> Run {
    let mut args = vec![
        "validate",
        "--repo",
        repo.path().to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    fermata(&args)
}

/// `validate --output json`; the exit code is the caller's to check.
fn validate_json(repo: &TestRepo) -> (i32, Value) {
    let run = validate(repo, &["--output", "json"]);
    let v = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    (run.code, v)
}

/// The minimal fleet with `files` written over it, committed.
fn fleet_with(files: &[(&str, &str)]) -> TestRepo {
    let repo = TestRepo::new();
    minimal(&repo);
    for (path, content) in files {
        repo.write(path, content);
    }
    repo.commit("broken");
    repo
}

/// Asserts that validation fails with exactly `expected` on stdout.
#[track_caller]
fn assert_errors(run: &Run, expected: &[&str]) {
    assert_eq!(run.lines(), expected, "{run:?}");
    assert_eq!(run.code, 1, "{run:?}");
}

/// One broken file next to the minimal fleet gives exactly `expected`.
#[track_caller]
fn check(path: &str, content: &str, expected: &[&str]) {
    let repo = fleet_with(&[(path, content)]);
    assert_errors(&validate(&repo, &[]), expected);
}

const NAME_RULE: &str =
    "is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit";

const VARIATION_FIELDS: &str = "`name`, `synthesizer`, `synthesisEnv`, `bindings`, `annotations`, `labels`, `target`, `window`, `schedulingGates`, `dependsOn`, `optional`";

#[test]
fn the_minimal_fleet_is_valid() {
    let repo = fleet_with(&[]);
    let run = validate(&repo, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.lines(),
        ["ok: 1 symphony, 1 composition, 0 windows, 1 target"]
    );
}

#[test]
fn yaml_syntax_error_has_the_line_of_the_parser() {
    check(
        "broken.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: x}\nspec: {directory: {path: x}\n",
        &["broken.yaml:5: did not find expected ',' or '}' at line 5 column 1, while parsing a flow mapping at line 4 column 7"],
    );
    check(
        "broken.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata:\n  name: x\n spec: {}\n",
        &["broken.yaml:5: did not find expected key at line 5 column 2, while parsing a block mapping"],
    );
}

#[test]
fn unknown_field_names_the_field_at_its_line() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: other}
spec:
  variations:
    - name: web
      synthesiser: {name: app}
",
            "broken.yaml:7: spec.variations[0].synthesiser: unknown field `synthesiser`, expected one of VARIATION_FIELDS",
        ),
        (
            "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata:
  name: other
  namespace: default
spec:
  directory: {path: other}
",
            "broken.yaml:5: metadata.namespace: unknown field `namespace`, expected one of `name`, `labels`, `annotations`",
        ),
        (
            "apiVersion: fermata.dev/v1alpha1
kind: MaintenanceWindow
metadata: {name: night}
spec:
  schedule: \"0 2 * * *\"
  duration: 3h
  timeZone: Europe/Berlin
",
            "broken.yaml:7: spec.timeZone: unknown field `timeZone`, expected one of `schedule`, `duration`, `timezone`",
        ),
        (
            "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: other}
specs:
  directory: {path: other}
",
            "broken.yaml:4: specs: unknown field `specs`, expected one of `apiVersion`, `kind`, `metadata`, `spec`",
        ),
    ];
    for (content, expected) in cases {
        check(
            "broken.yaml",
            content,
            &[&expected.replace("VARIATION_FIELDS", VARIATION_FIELDS)],
        );
    }
}

#[test]
fn missing_required_field_points_at_its_parent() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: other}
spec:
  target: site
",
            "broken.yaml:4: spec.variations: missing field `variations`",
        ),
        (
            "apiVersion: fermata.dev/v1alpha1
kind: MaintenanceWindow
metadata: {name: night}
spec:
  duration: 3h
",
            "broken.yaml:4: spec.schedule: missing field `schedule`",
        ),
        (
            "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: other}
spec:
  variations:
    - name: web
      target: site
",
            "broken.yaml:6: spec.variations[0].synthesizer: missing field `synthesizer`",
        ),
        (
            "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: other}
",
            "broken.yaml:1: spec: missing field `spec`",
        ),
        (
            "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {labels: {a: b}}
spec: {directory: {path: x}}
",
            "broken.yaml:3: metadata.name: missing field `name`",
        ),
    ];
    for (content, expected) in cases {
        check("broken.yaml", content, &[expected]);
    }
}

#[test]
fn duplicate_kind_and_name_names_both_files() {
    let repo = TestRepo::new();
    minimal(&repo).remove("symphony.yaml");
    repo.write("a.yaml", util::SYMPHONY)
        .write("b.yaml", util::SYMPHONY)
        // Same name, other kind: not a duplicate.
        .write(
            "synth/shop.yaml",
            &util::SYNTH.replace("name: app", "name: shop"),
        );
    repo.commit("twice");
    let run = validate(&repo, &[]);
    assert_errors(
        &run,
        &["b.yaml:3: metadata.name: duplicate Symphony \"shop\": also defined at a.yaml:3"],
    );
    // Which one is meant is unknowable: neither is used.
    let (_, v) = validate_json(&repo);
    assert_eq!(v["symphonies"], 0, "{v:#}");
}

/// A second synthesizer, `vision`, for did-you-mean.
const VISION: &str = "apiVersion: fermata.dev/v1alpha1
kind: Synthesizer
metadata: {name: vision}
spec:
  manifests: ./manifests
";

#[test]
fn dangling_references_suggest_a_close_name() {
    let repo = fleet_with(&[
        ("synth/vision.yaml", VISION),
        (
            "line.yaml",
            "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: line}
spec:
  target: sites
  window: nightly
  variations:
    - synthesizer: {name: app}
      synthesisEnv: [{name: TAG, value: v1}]
    - synthesizer: {name: vizion}
    - name: far
      synthesizer: {name: app}
      target: mars
      window: weekend
      bindings:
        - key: config
          resource: {name: plant-config}
",
        ),
    ]);
    assert_errors(
        &validate(&repo, &[]),
        &[
            "line.yaml:5: spec.target: no Target named \"sites\" (did you mean \"site\"?)",
            "line.yaml:6: spec.window: no MaintenanceWindow named \"nightly\"",
            "line.yaml:10: spec.variations[1].synthesizer.name: no Synthesizer named \"vizion\" (did you mean \"vision\"?)",
            "line.yaml:13: spec.variations[2].target: no Target named \"mars\"",
            "line.yaml:14: spec.variations[2].window: no MaintenanceWindow named \"weekend\"",
            "line.yaml:17: spec.variations[2].bindings[0].resource.name: no object named \"plant-config\" in namespace \"default\" in the repository",
        ],
    );
}

#[test]
fn invalid_names_of_objects_and_variations() {
    check(
        "broken.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: Plant_A}\nspec: {directory: {path: a}}\n",
        &[&format!("broken.yaml:3: metadata.name: \"Plant_A\" {NAME_RULE}")],
    );
    check(
        "symphony.yaml",
        "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: shop}
spec:
  variations:
    - name: web-
      synthesizer: {name: app}
      synthesisEnv: [{name: TAG, value: v1}]
",
        &[&format!(
            "symphony.yaml:6: spec.variations[0].name: \"web-\" {NAME_RULE}"
        )],
    );
}

#[test]
fn unquoted_number_as_name_is_not_reported_missing() {
    check(
        "broken.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: 2024}\nspec: {directory: {path: a}}\n",
        &["broken.yaml:3: metadata.name: must be a string; quote it: name: \"2024\""],
    );
}

#[test]
fn invalid_cron_duration_and_time_zone() {
    let repo = fleet_with(&[(
        "window.yaml",
        "apiVersion: fermata.dev/v1alpha1
kind: MaintenanceWindow
metadata: {name: night}
spec:
  schedule: \"0 2 * *\"
  duration: soon
  timezone: Mars/Olympus
",
    )]);
    let run = validate(&repo, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    let lines = run.lines();
    assert_eq!(lines.len(), 3, "{run:?}");
    assert_eq!(
        lines[1],
        "window.yaml:6: spec.duration: duration \"soon\": expected number at 0; expected a positive duration such as \"90m\", \"3h\" or \"2days 4h\"",
        "{run:?}"
    );
    assert_eq!(
        lines[0],
        "window.yaml:5: spec.schedule: cron expression \"0 2 * *\" has 4 fields; expected 5 (minute hour day-of-month month day-of-week), or 6/7 in the cron crate's form (second first, optional year last)",
        "{run:?}"
    );
    assert_eq!(
        lines[2],
        "window.yaml:7: spec.timezone: unknown time zone \"Mars/Olympus\": expected an IANA time zone name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\"",
        "{run:?}"
    );
}

/// The minimal symphony with `variations` in place of its own.
fn symphony(variations: &str) -> String {
    format!(
        "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {{name: shop}}
spec:
  synthesisEnv: [{{name: TAG, value: v1}}]
  variations:
{variations}"
    )
}

#[test]
fn depends_on_cycle_is_named_and_missing_dependency_found() {
    check(
        "symphony.yaml",
        &symphony(
            "    - name: a
      synthesizer: {name: app}
      dependsOn: [{variation: b}]
    - name: b
      synthesizer: {name: app}
      dependsOn:
        - variation: a
",
        ),
        &["symphony.yaml:9: spec.variations[0].dependsOn[0].variation: dependsOn cycle: shop/a -> shop/b -> shop/a"],
    );
    check(
        "symphony.yaml",
        &symphony(
            "    - name: web
      synthesizer: {name: app}
      dependsOn: [{variation: dbb}]
    - name: db
      synthesizer: {name: app}
",
        ),
        &["symphony.yaml:9: spec.variations[0].dependsOn[0].variation: no variation named \"dbb\" in symphony \"shop\" (did you mean \"db\"?)"],
    );
}

#[test]
fn dependency_on_another_symphony_is_checked_whatever_the_file_order() {
    // `a-shop.yaml` loads before `z-db.yaml`, and the other way round.
    let db = "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: db}
spec:
  synthesisEnv: [{name: TAG, value: v1}]
  variations:
    - name: main
      synthesizer: {name: app}
";
    let shop = symphony(
        "    - name: web
      synthesizer: {name: app}
      dependsOn:
        - variation: db/mian
        - variation: nosuch/main
",
    );
    for (shop_file, db_file) in [("a-shop.yaml", "z-db.yaml"), ("z-shop.yaml", "a-db.yaml")] {
        let repo = fleet_with(&[(db_file, db)]);
        repo.remove("symphony.yaml").write(shop_file, &shop);
        repo.commit("cross-symphony");
        assert_errors(
            &validate(&repo, &[]),
            &[
                &format!("{shop_file}:10: spec.variations[0].dependsOn[0].variation: no variation named \"mian\" in symphony \"db\" (did you mean \"main\"?)"),
                &format!("{shop_file}:11: spec.variations[0].dependsOn[1].variation: no symphony named \"nosuch\""),
            ],
        );
        let (_, v) = validate_json(&repo);
        assert_eq!(v["symphonies"], 1, "only db loads: {v:#}");
    }
}

#[test]
fn duplicate_variation_name() {
    check(
        "symphony.yaml",
        &symphony(
            "    - name: web
      synthesizer: {name: app}
    - name: web
      synthesizer: {name: app}
",
        ),
        &["symphony.yaml:9: spec.variations[1].name: duplicate variation name \"web\" (also at line 7)"],
    );
    // Unnamed variations take their synthesizer's name.
    check(
        "symphony.yaml",
        &symphony(
            "    - synthesizer: {name: app}
    - synthesizer: {name: app}
",
        ),
        &["symphony.yaml:8: spec.variations[1].synthesizer.name: duplicate variation name \"app\" (also at line 7); without `name`, a variation is named after its synthesizer"],
    );
}

#[test]
fn paths_that_leave_the_repository() {
    let cases = [
        ("../../outside", "\"../../outside\" leaves the repository"),
        (
            "/etc",
            "\"/etc\" is absolute; paths are relative to the file that names them",
        ),
    ];
    for (manifests, message) in cases {
        check(
            "synth/app.yaml",
            &util::SYNTH.replace("./manifests", manifests),
            &[&format!("synth/app.yaml:5: spec.manifests: {message}")],
        );
    }
    for target in ["../../..", "/tmp"] {
        let repo = TestRepo::new();
        minimal(&repo).remove("synth/manifests");
        std::os::unix::fs::symlink(target, repo.path().join("synth/manifests")).expect("symlink");
        repo.commit("symlink out");
        assert_errors(
            &validate(&repo, &[]),
            &[&format!("synth/app.yaml:5: spec.manifests: \"./manifests\" leaves the repository through the symlink \"synth/manifests\" -> \"{target}\"")],
        );
    }
    // A YAML file that is a symlink out of the repository is not read.
    let repo = TestRepo::new();
    minimal(&repo);
    std::os::unix::fs::symlink("/etc/hostname", repo.path().join("host.yaml")).expect("symlink");
    repo.commit("symlinked file");
    assert_errors(
        &validate(&repo, &[]),
        &["host.yaml: \"host.yaml\" leaves the repository through the symlink \"host.yaml\" -> \"/etc/hostname\""],
    );
}

#[test]
fn file_over_four_mib_is_refused() {
    let big = format!("# {}\n", "x".repeat(4 * 1024 * 1024));
    let size = big.len();
    let repo = fleet_with(&[("big.yaml", &big), ("model.bin", &big)]);
    assert_errors(
        &validate(&repo, &[]),
        // Only YAML is read: a large file of another type is not an error.
        &[&format!("big.yaml: file is {size} bytes, over the 4 MiB limit; large content belongs in an artifact")],
    );
}

#[test]
fn ten_broken_files_give_ten_errors_and_the_good_symphony_still_counts() {
    // Each file: its body after `apiVersion`, and its one error.
    let cases = [
        (
            "kind: Target\nmetadata: {name: a}\nspec: [\n",
            "5: did not find expected node content at line 5 column 1, while parsing a flow node",
        ),
        (
            "kind: Target\nmetadata: {name: b}\nspec: {directory: {path: b}, dir: b}\n",
            "4: spec.dir: unknown field `dir`, expected one of `directory`, `kubernetes`, `site`",
        ),
        (
            "kind: MaintenanceWindow\nmetadata: {name: c}\nspec: {duration: 3h}\n",
            "4: spec.schedule: missing field `schedule`",
        ),
        (
            "kind: Target\nmetadata: {name: D}\nspec: {directory: {path: d}}\n",
            &format!("3: metadata.name: \"D\" {NAME_RULE}"),
        ),
        (
            "kind: Symphonie\nmetadata: {name: e}\n",
            "2: kind: unknown kind \"Symphonie\" (did you mean \"Symphony\"?); one of Site, Target, MaintenanceWindow, Synthesizer, Symphony, Campaign, Activation",
        ),
        (
            "kind: Synthesizer\nmetadata: {name: f}\nspec: {manifests: ./m, command: [./r]}\n",
            "4: spec: set exactly one of `manifests` and `command`, not both",
        ),
        (
            "kind: MaintenanceWindow\nmetadata: {name: g}\nspec: {schedule: \"0 2 * * *\", duration: soon}\n",
            "4: spec.duration: duration \"soon\": expected number at 0; expected a positive duration such as \"90m\", \"3h\" or \"2days 4h\"",
        ),
        (
            "kind: Symphony\nmetadata: {name: h}\nspec:\n  synthesisEnv: [{name: 1TAG}]\n  variations: [{synthesizer: {name: app}}]\n",
            "5: spec.synthesisEnv[0].name: \"1TAG\" is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
        ),
        (
            "kind: Synthesizer\nmetadata: {name: i}\nspec: {timeout: 10s}\n",
            "4: spec: set one of `manifests` or `command`",
        ),
        (
            "kind: Symphony\nmetadata: {name: j}\nspec:\n  target: mars\n  variations: [{synthesizer: {name: app}}]\n",
            "5: spec.target: no Target named \"mars\"",
        ),
    ];
    let repo = TestRepo::new();
    minimal(&repo);
    let mut expected = Vec::new();
    for (i, (body, error)) in cases.iter().enumerate() {
        let file = format!("broken/{:02}.yaml", i + 1);
        repo.write(&file, &format!("apiVersion: fermata.dev/v1alpha1\n{body}"));
        expected.push(format!("{file}:{error}"));
    }
    repo.commit("ten broken files");
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    // Sorted by file and line: the syntax error, found apart, comes first.
    assert_errors(&validate(&repo, &[]), &expected);

    let (code, v) = validate_json(&repo);
    assert_eq!(code, 1);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(10), "{v:#}");
    assert_eq!(v["ok"], false);
    // The minimal fleet next to them still loads.
    assert_eq!(v["symphonies"], 1, "{v:#}");
    assert_eq!(v["compositions"], 1, "{v:#}");
}

#[test]
fn broken_synthesizer_fails_only_the_symphony_using_it() {
    let repo = fleet_with(&[
        (
            "synth/bad.yaml",
            &util::SYNTH
                .replace("name: app", "name: bad")
                .replace("./manifests", "./nowhere"),
        ),
        (
            "other.yaml",
            &util::SYMPHONY
                .replace("name: shop", "name: other")
                .replace("name: app", "name: bad"),
        ),
    ]);
    // Reported once, where the synthesizer is broken.
    assert_errors(
        &validate(&repo, &[]),
        &["synth/bad.yaml:5: spec.manifests: no folder \"synth/nowhere\" in the repository at this revision"],
    );
    let (code, v) = validate_json(&repo);
    assert_eq!(code, 1);
    assert_eq!(v["symphonies"], 1, "shop still loads: {v:#}");
    assert_eq!(v["compositions"], 1, "{v:#}");
}

#[test]
fn json_errors_are_objects() {
    let big = "#".repeat(4 * 1024 * 1024 + 1);
    let repo = fleet_with(&[
        ("big.yaml", &big),
        (
            "synth/app.yaml",
            &util::SYNTH.replace("./manifests", "/etc"),
        ),
    ]);
    let (code, v) = validate_json(&repo);
    assert_eq!(code, 1);
    assert_eq!(
        v["errors"],
        json!([
            {
                "file": "big.yaml",
                "line": null,
                "field": "",
                "message": "file is 4194305 bytes, over the 4 MiB limit; large content belongs in an artifact",
            },
            {
                "file": "synth/app.yaml",
                "line": 5,
                "field": "spec.manifests",
                "message": "\"/etc\" is absolute; paths are relative to the file that names them",
            },
        ]),
        "{v:#}"
    );
    assert_eq!(v["ok"], false);
    assert_eq!(v["symphonies"], 0, "shop uses the broken synthesizer");
}

#[test]
fn a_control_character_is_reported_at_its_line_and_column() {
    // The parser's own report says line 1 and a byte offset that is not
    // even the character's.
    check(
        "window.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: MaintenanceWindow\nmetadata: {name: w}\nspec:\n  schedule: \"0 2 * * SAT\"\n  duration: 3h\n  # the next line ends in a NUL byte\n  timezone: UTC\0\n",
        &["window.yaml:8: control character U+0000 at column 16: YAML allows no control characters but tab, line feed and carriage return"],
    );
    check(
        "window.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: \u{7}t}\nspec: {directory: {path: t}}\n",
        &["window.yaml:3: control character U+0007 at column 18: YAML allows no control characters but tab, line feed and carriage return"],
    );
}

#[test]
fn a_reference_to_an_object_whose_file_failed_to_load_names_that_file() {
    // The synthesizer's file does not parse, so its name is unknown: the
    // symphony must say which file probably meant to define it.
    let repo = fleet_with(&[(
        "synth/app.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {name: app}\nspec:\n  manifests: ./manifests\n  timeout: [30s\n",
    )]);
    let syntax = "did not find expected ',' or ']' at line 7 column 1, while parsing a flow sequence at line 6 column 12";
    assert_errors(
        &validate(&repo, &[]),
        &[
            &format!("symphony.yaml:6: spec.variations[0].synthesizer.name: no Synthesizer named \"app\" (synth/app.yaml:7 failed to load: {syntax})"),
            &format!("synth/app.yaml:7: {syntax}"),
        ],
    );
    // A file that is not UTF-8 counts too, when its name says what it holds.
    let repo = TestRepo::new();
    minimal(&repo).remove("synth/app.yaml");
    std::fs::write(
        repo.path().join("synth/app.yaml"),
        b"kind: Synthesizer\n\xff\n",
    )
    .unwrap();
    repo.commit("not UTF-8");
    assert_errors(
        &validate(&repo, &[]),
        &[
            "symphony.yaml:6: spec.variations[0].synthesizer.name: no Synthesizer named \"app\" (synth/app.yaml:2 failed to load: file is not UTF-8 (column 1))",
            "synth/app.yaml:2: file is not UTF-8 (column 1)",
        ],
    );
}

#[test]
fn a_submodule_is_named_as_one() {
    let sub = TestRepo::new();
    sub.write("cm.yaml", util::MANIFEST);
    sub.commit("sub");
    let repo = TestRepo::new();
    minimal(&repo);
    let url = format!("file://{}", sub.path().display());
    repo.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        &url,
        "subrepo",
    ]);
    repo.write(
        "synth/app.yaml",
        &util::SYNTH.replace("./manifests", "../subrepo"),
    );
    repo.commit("manifests in a submodule");
    assert_errors(
        &validate(&repo, &[]),
        &["synth/app.yaml:5: spec.manifests: \"subrepo\" is a git submodule: fermata reads only the repository's own files (submodules are not supported); copy the files into the repository"],
    );
    repo.write(
        "synth/app.yaml",
        &util::SYNTH.replace("./manifests", "../subrepo/inner"),
    );
    repo.commit("below a submodule");
    assert_errors(
        &validate(&repo, &[]),
        &["synth/app.yaml:5: spec.manifests: \"subrepo/inner\" is in the git submodule \"subrepo\": fermata reads only the repository's own files (submodules are not supported); copy the files into the repository"],
    );
    let run = validate(&repo, &["--path", "subrepo"]);
    assert_errors(
        &run,
        &["subrepo: \"subrepo\" is a git submodule: fermata reads only the repository's own files (submodules are not supported); copy the files into the repository"],
    );
}

#[test]
fn a_directory_target_path_with_dot_dot_is_refused() {
    for path in ["../elsewhere", "sites/../../etc", "/var/lib/../../etc"] {
        check(
            "target.yaml",
            &util::TARGET.replace("path: site", &format!("path: {path}")),
            &[&format!("target.yaml:5: spec.directory.path: {path:?} has a `..` component: a relative path is under --target-root, and a path must not climb out of it")],
        );
    }
}
