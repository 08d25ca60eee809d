//! `fermata-bench kube --compositions 1000 --latency-ms 10`: the pass at a
//! window's opening over N staged Kubernetes compositions, against the FAKE
//! API server of the tests (`tests/util/kube_fake.rs`) with a latency
//! injected into every request, writing one composition at a time
//! (`--apply-concurrency 1`) and with concurrent writes
//! (`--apply-concurrency`, 16 by default). Each mode gets its own fake and
//! state, staged while the window is closed; only the opening pass is timed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use fermata::reconcile::{Reconciler, Settings};
use fermata::window::FixedClock;

#[path = "../../../tests/util/kube_fake.rs"]
#[allow(clippy::all)]
mod kube_fake;

#[derive(Debug, clap::Args)]
pub struct KubeArgs {
    /// Symphonies of one variation each, a ConfigMap apiece.
    #[arg(long, default_value_t = 1000)]
    compositions: usize,
    /// Latency of every request to the fake API server.
    #[arg(long, default_value_t = 10)]
    latency_ms: u64,
    /// Writes in flight at once in the concurrent mode.
    #[arg(long, default_value_t = fermata::reconcile::DEFAULT_APPLY_CONCURRENCY)]
    concurrency: usize,
}

/// Saturday 2026-11-21 02:30 UTC, inside the `sat` window; and a Friday.
const OPEN: &str = "2026-11-21T02:30:00Z";
const CLOSED: &str = "2026-11-20T12:00:00Z";

pub fn run(a: &KubeArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut times = Vec::new();
    for (mode, concurrency) in [("one at a time", 1), ("concurrent", a.concurrency)] {
        let fake = kube_fake::FakeKube::start();
        let dir = tmp.path().join(concurrency.to_string());
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        fake.kubeconfig(&kubeconfig, "fake", "default");
        let work = dir.join("repo");
        generate(&work, &kubeconfig, a.compositions)?;
        let clock = Arc::new(FixedClock::new(CLOSED.parse()?));
        let mut settings =
            Settings::defaults(work.display().to_string(), "main", &dir.join("state"));
        settings.apply_concurrency = concurrency;
        let mut r = Reconciler::new(settings, clock.clone())?;
        let t = Instant::now();
        rt.block_on(async {
            r.fetch().await?;
            let reports = r.pass().await;
            super::check(&reports, a.compositions)
        })?;
        let staged = t.elapsed();
        fake.set_latency(Duration::from_millis(a.latency_ms));
        clock.set(OPEN.parse()?);
        let before = fake.writes();
        let t = Instant::now();
        rt.block_on(async {
            let reports = r.pass().await;
            super::check(&reports, a.compositions)
        })?;
        let took = t.elapsed();
        let configmaps = fake
            .objects()
            .keys()
            .filter(|k| k.starts_with("/configmaps/default/cm-"))
            .count();
        if configmaps != a.compositions {
            bail!(
                "{mode}: {configmaps} of {} ConfigMaps applied",
                a.compositions
            );
        }
        println!(
            "{mode:<14} (--apply-concurrency {concurrency:>2}): staged (no latency) in {staged:>8.2?}, window opening pass {took:>9.2?}, {} writes",
            fake.writes() - before
        );
        times.push(took);
    }
    println!(
        "{} Kubernetes compositions at a window's opening, {} ms per request: concurrent / one at a time = {:.3} ({:.1}x faster)",
        a.compositions,
        a.latency_ms,
        times[1].as_secs_f64() / times[0].as_secs_f64(),
        times[0].as_secs_f64() / times[1].as_secs_f64()
    );
    Ok(())
}

/// A repository of `n` symphonies, each one ConfigMap on the fake, all in
/// the `sat` window.
fn generate(dir: &Path, kubeconfig: &Path, n: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("symphonies"))?;
    std::fs::create_dir_all(dir.join("synth/manifests"))?;
    std::fs::write(
        dir.join("target.yaml"),
        format!(
            "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {{name: site}}\nspec:\n  kubernetes: {{kubeconfig: {}, context: fake, namespace: default}}\n",
            kubeconfig.display()
        ),
    )?;
    std::fs::write(
        dir.join("window.yaml"),
        "apiVersion: fermata.dev/v1alpha1\nkind: MaintenanceWindow\nmetadata: {name: sat}\nspec: {schedule: \"0 2 * * SAT\", duration: 3h, timezone: UTC}\n",
    )?;
    std::fs::write(
        dir.join("synth/synth.yaml"),
        "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {name: cm}\nspec:\n  manifests: ./manifests\n",
    )?;
    std::fs::write(
        dir.join("synth/manifests/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: \"cm-${N}\"}\ndata: {n: \"${N}\"}\n",
    )?;
    for i in 0..n {
        std::fs::write(
            dir.join(format!("symphonies/s{i:05}.yaml")),
            format!("apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: s{i:05}}}\nspec:\n  window: sat\n  synthesisEnv: [{{name: N, value: \"{i:05}\"}}]\n  variations:\n    - synthesizer: {{name: cm}}\n"),
        )?;
    }
    super::git(dir, &["init", "-q", "-b", "main"])?;
    super::git(dir, &["add", "-A"])?;
    super::git(dir, &["commit", "-qm", "generated kubernetes fleet"])?;
    Ok(())
}
