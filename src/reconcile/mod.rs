//! The reconciler: `fermata run`. Polls branches (on an interval with jitter,
//! at once when the refs of a local repository change, and on SIGHUP),
//! stages every new commit, applies inside maintenance windows, and writes
//! status back to Git.
//!
//! A pass is a plain async function of the current state; the loop here only
//! decides when to run it, so every pass must be (and is) idempotent.

mod ahead;
pub mod annotations;
mod central;
mod context;
pub mod outcome;
mod pass;
pub mod plan;
pub mod pulls;
pub mod requests;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;

pub use crate::report::{ActionKind, BranchReport, PlanDetail, PlannedArtifact, Row, WindowInfo};
pub use context::{Context, SetupError};
pub use pass::{Mode, Reconciler};

use crate::window::Clock;

/// What `fermata run` was told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub repo: String,
    pub branches: Vec<String>,
    pub path: String,
    pub interval: Duration,
    pub state_dir: PathBuf,
    /// Where relative directory targets live.
    pub target_root: PathBuf,
    pub status_branch: String,
    pub site: Option<String>,
    /// Which commits may be loaded at all (`--verify-signatures`).
    pub signatures: crate::source::SignaturePolicy,
    /// How long a Kubernetes target's resources may stay unhealthy after an
    /// apply before the composition is failed (`--health-timeout`).
    pub health_timeout: Duration,
    /// What a render may cost (`--max-render-output`).
    pub synth_limits: crate::synth::Limits,
    /// The only folders `file://` artifacts may come from (`--artifact-root`).
    pub artifact_roots: Vec<PathBuf>,
    /// Target writes in flight at once (`--apply-concurrency`): the next N
    /// compositions rendered and staged ahead of the roll out, and up to N
    /// applies of different symphonies; also a Kubernetes target's reads
    /// at a pass's start (a directory target reads on every core, see
    /// [`crate::target::Target::read_all`]). 1 reads and writes one
    /// composition at a time.
    pub apply_concurrency: usize,
    /// How long a removed variation's status stays on the status branch,
    /// `removed`, after its delete (`--removed-retention`).
    pub removed_retention: Duration,
}

/// `--removed-retention` by default: a week.
pub const DEFAULT_REMOVED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `--apply-concurrency` by default.
pub const DEFAULT_APPLY_CONCURRENCY: usize = 16;

impl Settings {
    /// `fermata run`'s defaults for branch `branch` of `repo`, everything
    /// kept under `state_dir` (targets in `targets/`): what the bench and
    /// in-process tests start from.
    pub fn defaults(
        repo: impl Into<String>,
        branch: &str,
        state_dir: &std::path::Path,
    ) -> Settings {
        Settings {
            repo: repo.into(),
            branches: vec![branch.to_string()],
            path: String::new(),
            interval: Duration::from_secs(30),
            state_dir: state_dir.to_path_buf(),
            target_root: state_dir.join("targets"),
            status_branch: "fermata/status".into(),
            site: None,
            signatures: crate::source::SignaturePolicy::None,
            health_timeout: Duration::from_secs(600),
            synth_limits: crate::synth::Limits::default(),
            artifact_roots: Vec::new(),
            apply_concurrency: DEFAULT_APPLY_CONCURRENCY,
            removed_retention: DEFAULT_REMOVED_RETENTION,
        }
    }
}

/// Longest wait after repeated fetch failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The run loop's wake-up channel, made before the loop so that other
/// sources of "fetch now" (the webhook) can hold a sender. A message names
/// why the loop woke; a burst of them is coalesced into one fetch and pass.
pub struct Triggers {
    tx: mpsc::Sender<&'static str>,
    rx: mpsc::Receiver<&'static str>,
    /// A pass woken by a trigger starts at least this long after the
    /// previous one started (`--min-pass-interval`).
    min_interval: Duration,
    progress: Arc<Progress>,
}

/// Whether the loop is working (fetching, passing) and since when, for
/// `/readyz`: a loop stuck anywhere shows as one working for too long.
#[derive(Debug, Default)]
pub struct Progress(std::sync::Mutex<Option<std::time::Instant>>);

impl Progress {
    pub(crate) fn set(&self, busy: bool) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = busy.then(std::time::Instant::now);
    }

    /// How long the fetch and pass in progress have run; `None` while asleep.
    pub fn busy_for(&self) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }
}

impl Triggers {
    pub fn new() -> Triggers {
        // One pending wake-up at most: a burst of webhooks or ref changes
        // while a pass runs is one more pass, however long the burst.
        let (tx, rx) = mpsc::channel(1);
        Triggers {
            tx,
            rx,
            min_interval: Duration::ZERO,
            progress: Arc::default(),
        }
    }

    /// What the loop is doing, as it goes.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Passes woken by triggers are at least `d` apart.
    pub fn min_interval(mut self, d: Duration) -> Triggers {
        self.min_interval = d;
        self
    }

    /// Sending on it wakes the loop for an immediate fetch and pass.
    pub fn sender(&self) -> mpsc::Sender<&'static str> {
        self.tx.clone()
    }
}

impl Default for Triggers {
    fn default() -> Triggers {
        Triggers::new()
    }
}

/// What one iteration of the loop did, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct PassOutcome<'a> {
    pub reports: &'a [BranchReport],
    /// Fetch and pass together: what a user waits for after a push.
    pub elapsed: Duration,
    /// The fetch before this pass failed (the last good revision was used).
    pub fetch_failed: bool,
    /// Artifact bytes downloaded by this process so far (a running total).
    pub artifact_bytes: u64,
    /// Whether this replica leads (always, without `--leader-elect`).
    pub leading: bool,
}

/// Runs passes until SIGINT/SIGTERM, waking early on any message sent to
/// `triggers`. `report` sees every pass's outcome.
pub async fn run(
    mut r: Reconciler,
    clock: Arc<dyn Clock>,
    triggers: Triggers,
    mut report: impl FnMut(&PassOutcome<'_>),
) -> std::io::Result<()> {
    let Triggers {
        tx,
        mut rx,
        min_interval,
        progress,
    } = triggers;
    // Drift a restart's background check finds is repaired now, not at
    // the next interval.
    r.wake_on_drift(tx.clone());
    let _watcher = watch_refs(&r, tx);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut failures: u32 = 0;
    loop {
        let started = std::time::Instant::now();
        progress.set(true);
        let fetched = r.fetch().await;
        let fetch_failed = fetched.is_err();
        match fetched {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %crate::errors::chain(&e), failures, "fetch failed; keeping the last good revision");
            }
        }
        let reports = r.pass().await;
        report(&PassOutcome {
            reports: &reports,
            elapsed: started.elapsed(),
            fetch_failed,
            artifact_bytes: r.artifact_bytes(),
            leading: r.leadership.is_leader(),
        });
        progress.set(false);
        let mut wait = if failures > 0 {
            backoff(r.ctx.settings.interval, failures)
        } else {
            jitter(r.ctx.settings.interval)
        };
        // Wake when a window some staged composition waits for opens.
        if let Some(next) = reports.iter().filter_map(|b| b.next_window).min() {
            let until =
                (next - clock.now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(10);
            wait = wait.min(until);
        }
        tracing::debug!(?wait, "sleeping");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Some(why) = rx.recv() => {
                tracing::info!(trigger = why, "woken");
                // Rate-limited: what arrives meanwhile is this same pass.
                let rest = min_interval.saturating_sub(started.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(rest) => {}
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                }
                // Coalesce a burst of ref updates into one pass.
                while rx.try_recv().is_ok() {}
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: fetching now");
                r.unsettle();
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!(at = %Utc::now(), "stopping");
    Ok(())
}

/// 1x, 2x, 4x ... the interval after repeated fetch failures, capped (at the
/// interval itself when that is longer): a flapping remote is not hammered,
/// and a recovered one is seen soon.
fn backoff(interval: Duration, failures: u32) -> Duration {
    interval
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF.max(interval))
}

/// Up to +10% of the interval, so a fleet started at once does not poll in step.
fn jitter(interval: Duration) -> Duration {
    let extra = interval.as_millis() as u64 / 10;
    interval
        + Duration::from_millis(if extra == 0 {
            0
        } else {
            rand::random_range(0..extra)
        })
}

/// Watches the refs of a local repository (read in place, or the path of a
/// `file://` remote) so a push is reconciled without waiting for the interval.
fn watch_refs(
    r: &Reconciler,
    tx: mpsc::Sender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = match r.ctx.source.remote() {
        None => r.ctx.source.git_dir().to_path_buf(),
        Some(url) => {
            let path = PathBuf::from(url.strip_prefix("file://")?);
            let dotgit = path.join(".git");
            if dotgit.is_dir() {
                dotgit
            } else {
                path
            }
        }
    };
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|ev| is_ref_update(&ev)) {
            let _ = tx.try_send("refs changed");
        }
    })
    .ok()?;
    let mut watching = false;
    for p in [dir.join("refs"), dir.clone()] {
        let mode = if p.ends_with("refs") {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        match w.watch(&p, mode) {
            Ok(()) => watching = true,
            Err(e) => tracing::debug!(path = %p.display(), error = %e, "cannot watch"),
        }
    }
    if watching {
        tracing::info!(path = %dir.display(), "watching refs for pushes");
    }
    watching.then_some(w)
}

/// A branch ref was created, changed or deleted. Reads are not: inotify
/// reports every open, and each pass opens the refs it resolves, so counting
/// them woke the loop after every pass, forever.
fn is_ref_update(ev: &notify::Event) -> bool {
    !ev.kind.is_access()
        && ev.paths.iter().any(|p| {
            let s = p.to_string_lossy();
            (s.contains("/refs/heads/") || s.ends_with("packed-refs")) && !s.ends_with(".lock")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs;
        let waits: Vec<_> = (1..=6).map(|f| backoff(s(30), f)).collect();
        assert_eq!(waits, [s(30), s(60), s(120), s(240), s(300), s(300)]);
        assert_eq!(
            backoff(s(600), 3),
            s(600),
            "never shorter than the interval"
        );
        assert_eq!(backoff(s(30), 1000), s(300), "no overflow");
    }

    #[test]
    fn only_writes_to_branch_refs_wake_the_loop() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        use notify::{Event, EventKind};
        let ev = |kind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        let main = "/r.git/refs/heads/main";
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(is_ref_update(&ev(renamed, main)), "a push renames the lock");
        assert!(is_ref_update(&ev(
            EventKind::Create(CreateKind::File),
            main
        )));
        assert!(is_ref_update(&ev(renamed, "/r.git/packed-refs")));
        assert!(!is_ref_update(&ev(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            main
        )));
        assert!(!is_ref_update(&ev(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            main
        )));
        assert!(!is_ref_update(&ev(renamed, "/r.git/refs/heads/main.lock")));
        assert!(!is_ref_update(&ev(renamed, "/r.git/refs/tags/v1")));
    }

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        let i = Duration::from_secs(30);
        for _ in 0..100 {
            let j = jitter(i);
            assert!(j >= i && j < i + Duration::from_secs(3), "{j:?}");
        }
    }
}
