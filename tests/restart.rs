//! A restart on an unchanged commit (a fresh reconciler on the same state
//! directory): the directory target's applied files are trusted by their
//! `stat` (as git's index does) instead of being read, so the first pass
//! costs stats, not reads; drift that moved a file's times is still seen
//! at once. What `stat` cannot see is left to the full read of every
//! resync (unit-tested in `src/target/dir/tests.rs`).
//!
//! The first pass after the restart reports the branch unchanged at once
//! and checks the targets' `stat` in the background
//! ([`Reconciler::settle_background`]); drift found there is seen, and
//! repaired where it can be, by the next pass (at once under `fermata run`,
//! which the check wakes).

mod util;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fermata::reconcile::{BranchReport, Reconciler, Settings};
use fermata::status::State;
use fermata::window::SystemClock;
use util::{TestRepo, MANIFEST, SYNTH, TARGET};

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

/// A restart: a fresh reconciler on `state`, its first pass, and what its
/// background stat check found (`Some(true)`: the targets stat unchanged;
/// `None`: no check, the pass ran in full).
struct Restarted {
    r: Reconciler,
    rt: tokio::runtime::Runtime,
    reports: Vec<BranchReport>,
    unchanged: Option<bool>,
}

impl Restarted {
    /// The next pass of the same process.
    fn pass(&mut self) -> Vec<BranchReport> {
        self.rt.block_on(self.r.pass())
    }
}

fn restart(repo: &TestRepo, state: &Path) -> Restarted {
    restart_with(repo, state, |_| {})
}

fn restart_with(repo: &TestRepo, state: &Path, setup: impl FnOnce(&mut Reconciler)) -> Restarted {
    let settings = Settings::defaults(repo.path().to_str().unwrap(), "main", state);
    let mut r = Reconciler::new(settings, Arc::new(SystemClock)).unwrap();
    setup(&mut r);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (reports, unchanged) = rt.block_on(async {
        r.fetch().await.unwrap();
        let reports = r.pass().await;
        (reports, r.settle_background().await)
    });
    Restarted {
        r,
        rt,
        reports,
        unchanged,
    }
}

/// What the pass said of `shop/eu`: its state and whether it is Ready
/// (an applied state found damaged stays `installed`, not Ready); `None`
/// when the pass skipped the branch.
fn state_of(reports: &[BranchReport]) -> Option<(State, bool)> {
    let rows: Vec<_> = reports.iter().flat_map(|b| &b.rows).collect();
    if rows.is_empty() {
        assert!(reports.iter().all(|b| b.unchanged), "{reports:?}");
        return None;
    }
    let ready = reports
        .iter()
        .flat_map(|b| &b.symphonies)
        .any(|(name, ready, _)| name == "shop" && *ready == 1);
    Some((rows[0].state, ready))
}

const READY: Option<(State, bool)> = Some((State::Installed, true));

/// The manifest's content changed, its size kept (`v1` becomes `v2`).
fn rewrite_same_size(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let drifted = text.replace("v1", "v2");
    assert_ne!(drifted, text);
    std::fs::write(path, &drifted).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len() as usize, text.len());
}

/// Applied, then restarted on the unchanged commit: the first pass is
/// skipped on the strength of the targets' stat alone.
fn applied_and_restarted() -> (TestRepo, tempfile::TempDir) {
    let repo = fleet();
    let state = tempfile::tempdir().unwrap();
    let first = restart(&repo, state.path());
    assert_eq!(state_of(&first.reports), READY);
    assert_eq!(first.unchanged, None, "nothing settled before: a full pass");
    let again = restart(&repo, state.path());
    assert_eq!(
        state_of(&again.reports),
        None,
        "a settled commit is not passed again"
    );
    assert_eq!(again.unchanged, Some(true), "the targets stat unchanged");
    (repo, state)
}

/// A restart on drift: the first pass is skipped at once, the background
/// check finds the drift, and the next pass sees it.
fn drift_seen(repo: &TestRepo, state: &Path) -> Vec<BranchReport> {
    let mut restarted = restart(repo, state);
    assert_eq!(state_of(&restarted.reports), None, "reported at once");
    assert_eq!(restarted.unchanged, Some(false), "drift not seen by stat");
    restarted.pass()
}

#[test]
fn a_restart_sees_a_same_size_rewrite_by_its_times() {
    let (repo, state) = applied_and_restarted();
    rewrite_same_size(&applied_manifest(state.path()));
    let reports = drift_seen(&repo, state.path());
    // Drift makes the target report it unhealthy; it was healthy before,
    // so it stays `installed`, not Ready (not `installing`: nothing installs).
    assert_eq!(
        state_of(&reports),
        Some((State::Installed, false)),
        "drift not seen: {reports:?}"
    );
}

#[test]
fn a_restart_sees_a_rewrite_that_kept_its_mtime() {
    let (repo, state) = applied_and_restarted();
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
    let reports = drift_seen(&repo, state.path());
    // Drift makes the target report it unhealthy; it was healthy before,
    // so it stays `installed`, not Ready (not `installing`: nothing installs).
    assert_eq!(
        state_of(&reports),
        Some((State::Installed, false)),
        "drift not seen: {reports:?}"
    );
}

/// An applied state taken away while no fermata ran (its `current` link
/// removed): the restart's background check finds it, and the next pass
/// applies it again.
#[test]
fn a_target_changed_while_no_process_ran_is_repaired_after_a_restart() {
    let (repo, state) = applied_and_restarted();
    let manifest = applied_manifest(state.path());
    let current = manifest.parent().unwrap();
    assert!(std::fs::symlink_metadata(current).unwrap().is_symlink());
    std::fs::remove_file(current).unwrap();
    let reports = drift_seen(&repo, state.path());
    assert_eq!(state_of(&reports), READY, "not repaired: {reports:?}");
    assert!(
        std::fs::read_to_string(&manifest).unwrap().contains("v1"),
        "applied again"
    );
    let again = restart(&repo, state.path());
    assert_eq!(
        again.unchanged,
        Some(true),
        "settled again after the repair"
    );
}

/// Drift found in the background wakes the loop that passes on it
/// (`fermata run`), which then runs its full pass at once; none found, no
/// wake-up.
#[test]
fn drift_found_in_the_background_wakes_the_loop() {
    let (repo, state) = applied_and_restarted();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let quiet = restart_with(&repo, state.path(), |r| r.wake_on_drift(tx.clone()));
    assert_eq!(quiet.unchanged, Some(true));
    assert!(rx.try_recv().is_err(), "woken without drift");
    rewrite_same_size(&applied_manifest(state.path()));
    let drifted = restart_with(&repo, state.path(), |r| r.wake_on_drift(tx.clone()));
    assert_eq!(drifted.unchanged, Some(false));
    assert!(rx.try_recv().is_ok(), "drift found, the loop not woken");
}

/// After a skipped first pass, the next one reads every target in full.
#[test]
fn the_pass_after_a_restart_reads_in_full() {
    let (repo, state) = applied_and_restarted();
    let mut restarted = restart(&repo, state.path());
    let reports = restarted.pass();
    assert_eq!(state_of(&reports), READY);
}
