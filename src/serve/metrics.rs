//! The Prometheus metrics of the run loop, encoded by prometheus-client.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::reconcile::PassOutcome;
use crate::status::State;

/// prometheus-client writes OpenMetrics text (counters typed without their
/// `_total` suffix, a final `# EOF`), so it must be announced as such.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every state, so a scrape shows 0 rather than no series for an absent one.
const STATES: [State; 8] = [
    State::Pending,
    State::Staging,
    State::Staged,
    State::Installing,
    State::Installed,
    State::Failed,
    State::Removing,
    State::Removed,
];

type Label = [(&'static str, String); 1];

pub struct Metrics {
    registry: Registry,
    passes: Counter,
    pass_duration: Histogram,
    fetch_errors: Counter,
    compositions: Family<Label, Gauge>,
    windows: Family<Label, Gauge>,
    artifact_bytes: Counter,
    leader: Gauge,
    /// Per branch, the last pass that looked at it: an unchanged (settled)
    /// branch reports no rows, and must not read as "no compositions".
    /// Held while encoding, so a scrape never sees half an update.
    last: Mutex<BTreeMap<String, Seen>>,
}

/// What the gauges need of one branch's last full pass.
#[derive(Default)]
struct Seen {
    states: BTreeMap<&'static str, i64>,
    windows: BTreeMap<String, bool>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let passes = Counter::default();
        registry.register(
            "fermata_passes",
            "Reconcile passes completed",
            passes.clone(),
        );
        // 10 ms .. ~80 s: a no-op pass to a cold pass over a large fleet.
        let pass_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register_with_unit(
            "fermata_pass_duration",
            "Duration of a fetch and pass",
            Unit::Seconds,
            pass_duration.clone(),
        );
        let fetch_errors = Counter::default();
        registry.register(
            "fermata_fetch_errors",
            "Fetches that failed (the last good revision was reconciled)",
            fetch_errors.clone(),
        );
        let compositions = Family::<Label, Gauge>::default();
        registry.register(
            "fermata_compositions",
            "Compositions by state, as of each branch's last full pass",
            compositions.clone(),
        );
        let windows = Family::<Label, Gauge>::default();
        registry.register(
            "fermata_window_open",
            "1 if the maintenance window was open at the last full pass that used it",
            windows.clone(),
        );
        let artifact_bytes = Counter::default();
        registry.register_with_unit(
            "fermata_artifact",
            "Artifact bytes written into the store (downloaded, copied, or read from the repository)",
            Unit::Bytes,
            artifact_bytes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "fermata_leader",
            "1 while this replica holds the lease and reconciles (always 1 without --leader-elect)",
            leader.clone(),
        );
        for s in STATES {
            compositions
                .get_or_create(&[("state", s.as_str().to_string())])
                .set(0);
        }
        Metrics {
            registry,
            passes,
            pass_duration,
            fetch_errors,
            compositions,
            windows,
            artifact_bytes,
            leader,
            last: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, outcome: &PassOutcome<'_>) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.passes.inc();
        self.pass_duration.observe(outcome.elapsed.as_secs_f64());
        if outcome.fetch_failed {
            self.fetch_errors.inc();
        }
        // The outcome carries a running total; the counter follows it.
        let total = self.artifact_bytes.get();
        if outcome.artifact_bytes > total {
            self.artifact_bytes.inc_by(outcome.artifact_bytes - total);
        }
        self.leader.set(i64::from(outcome.leading));
        let watched: Vec<&str> = outcome.reports.iter().map(|b| b.branch.as_str()).collect();
        last.retain(|b, _| watched.contains(&b.as_str()));
        for b in outcome.reports.iter().filter(|b| !b.unchanged) {
            let mut seen = Seen {
                windows: b.windows.iter().map(|(n, w)| (n.clone(), w.open)).collect(),
                ..Seen::default()
            };
            for r in &b.rows {
                *seen.states.entry(r.state.as_str()).or_default() += 1;
            }
            last.insert(b.branch.clone(), seen);
        }
        for s in STATES {
            let n = last
                .values()
                .filter_map(|seen| seen.states.get(s.as_str()))
                .sum();
            self.compositions
                .get_or_create(&[("state", s.as_str().to_string())])
                .set(n);
        }
        // A window of several branches is open if any of them saw it open.
        let mut open: BTreeMap<&str, bool> = BTreeMap::new();
        for (name, is_open) in last.values().flat_map(|seen| &seen.windows) {
            *open.entry(name).or_default() |= *is_open;
        }
        self.windows.clear();
        for (name, is_open) in open {
            self.windows
                .get_or_create(&[("window", name.to_string())])
                .set(i64::from(is_open));
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let _consistent = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
