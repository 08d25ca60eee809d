//! `fermata run`'s settings from FERMATA_* environment variables (what the
//! Helm chart's ConfigMap sets), and flags winning over them.

mod util;

use std::process::Command;

use util::{git, TestRepo};

/// `fermata ARGS` with exactly these FERMATA_* variables (none inherited).
fn fermata_env(args: &[&str], env: &[(&str, &str)]) -> util::Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fermata"));
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("FERMATA_")) {
            c.env_remove(k);
        }
    }
    let out = c
        .args(args)
        .env("FERMATA_NOW", "2026-11-21T02:30:00Z")
        .envs(env.iter().copied())
        .output()
        .expect("fermata runs");
    util::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn settings_come_from_the_environment_and_flags_override_them() {
    let repo = TestRepo::new();
    util::minimal(&repo);
    repo.commit("one");
    // Its own target: two branches never deploy one composition on one target.
    repo.git(&["checkout", "-q", "-b", "release"]);
    repo.write(
        "target.yaml",
        &util::TARGET.replace("path: site", "path: site-release"),
    );
    repo.commit("release target");
    repo.git(&["checkout", "-q", "main"]);
    let state = tempfile::tempdir().unwrap();
    let p = repo.path().to_str().unwrap();
    let s = state.path().to_str().unwrap();
    let env = [
        ("FERMATA_REPO", p),
        ("FERMATA_BRANCHES", "main,release"),
        ("FERMATA_STATUS_BRANCH", "release"),
        ("FERMATA_STATE_DIR", s),
    ];

    // No --repo, --branch or --status-branch on the command line: all from the
    // environment, and the comma-separated list is two branches.
    let run = fermata_env(&["run", "--once"], &env);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("--status-branch release is also a watched --branch"),
        "{run:?}"
    );

    // A flag wins over its variable.
    let run = fermata_env(
        &["run", "--once", "--status-branch", "fermata/elsewhere"],
        &env,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("branch main @"), "{run:?}");
    assert!(run.stdout.contains("branch release @"), "{run:?}");
    assert!(run.stdout.contains("to fermata/elsewhere"), "{run:?}");
    let tree = git(
        repo.path(),
        &["ls-tree", "-r", "--name-only", "fermata/elsewhere"],
    );
    assert!(tree.contains("main/shop/app.yaml"), "{tree}");
    assert!(tree.contains("release/shop/app.yaml"), "{tree}");

    // FERMATA_SITE: the site's own branch; another status branch beside it is refused.
    let site = [("FERMATA_SITE", "plant-a"), env[0], env[1], env[3]];
    let run = fermata_env(&["run", "--once"], &site);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("to fermata/sites/plant-a"), "{run:?}");
    let run = fermata_env(&["run", "--once"], &[site[0], env[2], env[0]]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("a site's status goes to its own branch fermata/sites/plant-a"),
        "{run:?}"
    );

    // --branch replaces the whole list, not one element of it.
    let run = fermata_env(
        &[
            "run",
            "--once",
            "--branch",
            "main",
            "--status-branch",
            "fermata/elsewhere",
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("branch main @"), "{run:?}");
    assert!(!run.stdout.contains("branch release"), "{run:?}");

    // Typed settings are parsed (and refused) like their flags.
    let run = fermata_env(&["run", "--once"], &[("FERMATA_INTERVAL", "soon"), env[0]]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--interval"), "{run:?}");
    let run = fermata_env(
        &["run", "--once"],
        &[
            ("FERMATA_FORGE", "github"),
            ("FERMATA_FORGE_TOKEN_ENV", "T"),
            env[0],
        ],
    );
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("--forge github needs --forge-repo"),
        "{run:?}"
    );
}
