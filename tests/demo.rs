//! `fermata demo`: the embedded example's story, from any directory and
//! from an installed copy of the binary.

mod util;

use std::process::Command;

fn demo(exe: &std::path::Path, cwd: &std::path::Path, dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(exe)
        .args(["demo", "--dir", dir.to_str().expect("utf-8")])
        .current_dir(cwd)
        .env_remove("FERMATA_NOW")
        .output()
        .expect("fermata runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

#[test]
fn the_story_plays_from_any_directory_with_hints_for_cargo() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, out) = demo(
        std::path::Path::new(env!("CARGO_BIN_EXE_fermata")),
        cwd.path(),
        &dir.path().join("demo"),
    );
    // Each scene, in order.
    let scenes = [
        "== 1. Thu 26 Nov 10:00 UTC | commit A",
        "== 2. Sat 28 Nov 01:05 UTC | the window weekend-night opens",
        "== 3. Sat 28 Nov 01:15 UTC | commit B",
        "== 4. Sat 28 Nov 01:25 UTC | a gate lifted",
    ];
    let mut at = 0;
    for s in scenes {
        let i = out[at..]
            .find(s)
            .unwrap_or_else(|| panic!("{s:?} after byte {at}:\n{out}"));
        at += i + s.len();
    }
    // 1: staged while closed; 2: installed at the opening.
    assert!(
        out.contains("line-control/db                  staged"),
        "{out}"
    );
    assert!(
        out.contains("line-control/db                  installed"),
        "{out}"
    );
    // 3: the plan holds line-control for phase 1; the key moved.
    assert!(out.contains("waits: WaitingForPrune"), "{out}");
    assert!(
        out.contains("pass 1: vision {}                           db {migrate.example/owner=true}"),
        "{out}"
    );
    // 4: the gate lifted at every site, installed when nightly opens.
    assert!(
        out.contains("dashboards/grafana               installed"),
        "{out}"
    );
    assert!(out.contains("3 sites, 3 at the newest commit"), "{out}");
    // The history, and hints for the way it was run.
    assert!(out.contains("The deployment history (git log --oneline fermata/sites/plant-a):"));
    assert!(
        out.contains("dashboards/grafana staged -> installed"),
        "{out}"
    );
    assert!(out.contains("  cargo run -- windows --repo "), "{out}");
    assert!(
        out.contains(":main/timeline.svg > timeline.svg"),
        "where the picture is: {out}"
    );
}

#[test]
fn an_installed_copy_needs_no_source_checkout_and_names_itself() {
    let bin = tempfile::tempdir().expect("temp dir");
    let exe = bin.path().join("fermata");
    std::fs::copy(env!("CARGO_BIN_EXE_fermata"), &exe).expect("copy the binary");
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, out) = demo(&exe, bin.path(), &dir.path().join("demo"));
    assert!(out.contains("  fermata windows --repo "), "{out}");
    assert!(!out.contains("cargo run"), "{out}");
    // The embedded example's command synthesizer ran: it is executable.
    assert!(
        out.contains("telemetry/collector              installed"),
        "{out}"
    );
}
