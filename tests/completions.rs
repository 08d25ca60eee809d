//! `fermata completions SHELL` and `fermata man`, generated from the
//! command definitions: every subcommand is in them.

mod util;

use util::fermata;

const SUBCOMMANDS: [&str; 6] = ["run", "plan", "validate", "fleet", "campaign", "ungate"];

#[test]
fn completions_know_every_subcommand_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let run = fermata(&["completions", shell]);
        assert_eq!(run.code, 0, "{shell}: {run:?}");
        for sub in SUBCOMMANDS {
            assert!(run.stdout.contains(sub), "{shell} completes {sub}");
        }
    }
    let run = fermata(&["completions", "tcsh"]);
    assert_eq!(run.code, 2, "an unknown shell is a usage error: {run:?}");
}

#[test]
fn the_man_page_is_roff_naming_every_subcommand() {
    let run = fermata(&["man"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(".TH fermata 1"),
        "{}",
        &run.stdout[..200]
    );
    for sub in SUBCOMMANDS {
        assert!(run.stdout.contains(sub), "the man page names {sub}");
    }
}

/// The daemon's flags belong to `run` alone: `plan --help` listing
/// `--listen` told users a plan could serve HTTP.
#[test]
fn each_subcommand_help_lists_only_its_own_flags() {
    const DAEMON: [&str; 6] = [
        "--once",
        "--listen",
        "--leader-elect",
        "--interval",
        "--webhook-secret-file",
        "--publish-fleet",
    ];
    let run = fermata(&["run", "--help"]);
    for flag in DAEMON {
        assert!(run.stdout.contains(flag), "run --help lists {flag}");
    }
    for sub in [
        "plan",
        "apply-now",
        "ungate",
        "validate",
        "render",
        "status",
    ] {
        let help = fermata(&[sub, "--help"]);
        assert_eq!(help.code, 0, "{sub}: {help:?}");
        assert!(help.stdout.contains("--repo"), "{sub} --help lists --repo");
        for flag in DAEMON {
            assert!(
                !help.stdout.contains(flag),
                "{sub} --help lists {flag}, a flag of run:\n{}",
                help.stdout
            );
        }
    }
}
