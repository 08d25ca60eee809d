//! A restart on an unchanged commit: the directory target's applied files
//! are trusted by their `stat` (as git's index does) instead of being read,
//! so drift that moved a file's times is still seen at once; what `stat`
//! cannot see is left to the full read of every resync (unit-tested in
//! `src/target/dir/tests.rs`).

mod util;

use std::path::{Path, PathBuf};

use util::{run_once, TestRepo, MANIFEST, SYNTH, TARGET};

const NOW: &str = "2026-11-21T03:00:00Z";

const SYMPHONY: &str = "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: shop}
spec:
  variations:
    - name: eu
      synthesizer: {name: app}
      synthesisEnv: [{name: TAG, value: v1}]
";

fn fleet() -> TestRepo {
    let repo = TestRepo::new();
    repo.write("target.yaml", TARGET)
        .write("synth/app.yaml", SYNTH)
        .write("synth/manifests/cm.yaml", MANIFEST)
        .write("symphony.yaml", SYMPHONY)
        .commit("fleet");
    repo
}

fn applied_manifest(state: &Path) -> PathBuf {
    state.join("targets/site/shop/eu/current/manifest.yaml")
}

/// The manifest's content changed, its size kept (`v1` becomes `v2`).
fn rewrite_same_size(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let drifted = text.replace("v1", "v2");
    assert_ne!(drifted, text);
    std::fs::write(path, &drifted).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len() as usize, text.len());
}

/// The row of `shop/eu` in a pass's table.
fn row(out: &util::Run) -> String {
    out.stdout
        .lines()
        .find(|l| l.contains("shop/eu"))
        .unwrap_or_else(|| panic!("no row for shop/eu: {out:?}"))
        .to_string()
}

fn applied_and_settled() -> (TestRepo, tempfile::TempDir) {
    let repo = fleet();
    let state = tempfile::tempdir().unwrap();
    let first = run_once(state.path(), &repo, NOW);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(row(&first).contains("installed"), "{first:?}");
    // Unchanged, in a new process: trusted by stat, nothing written.
    let again = run_once(state.path(), &repo, NOW);
    assert_eq!(again.code, 0, "{again:?}");
    (repo, state)
}

#[test]
fn a_restart_sees_a_same_size_rewrite_by_its_times() {
    let (repo, state) = applied_and_settled();
    rewrite_same_size(&applied_manifest(state.path()));
    let out = run_once(state.path(), &repo, NOW);
    let row = row(&out);
    assert!(!row.contains("installed"), "drift not seen: {out:?}");
    assert!(out.stdout.contains("manifest.yaml"), "{out:?}");
}

#[test]
fn a_restart_sees_a_rewrite_that_kept_its_mtime() {
    let (repo, state) = applied_and_settled();
    let manifest = applied_manifest(state.path());
    let mtime = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    rewrite_same_size(&manifest);
    // `touch -r`: the modification time set back; the change time moves.
    std::fs::File::options()
        .write(true)
        .open(&manifest)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().modified().unwrap(),
        mtime
    );
    let out = run_once(state.path(), &repo, NOW);
    assert!(!row(&out).contains("installed"), "drift not seen: {out:?}");
}
