//! `fermata-bench`: how fast a pass is on a large fleet, against plain `git
//! fetch` of the same repository measured in the same run.
//!
//! Generates N symphonies x M variations (manifests synthesizers, ~5
//! resources each) in a bare repository served over file://, then times a
//! cold pass, a no-op pass next to `git fetch`, and a pass after a change to
//! one variation, and reports peak RSS. Run with `cargo run --release --bin
//! fermata-bench -- --symphonies 1000 --variations 10`.
//!
//! `fermata-bench fleet --sites 1000` is the fleet bench ([`fleet`]);
//! `fermata-bench kube --compositions 1000 --latency-ms 10` the window's
//! opening on Kubernetes, one write at a time against concurrent ([`kube`]).

mod fleet;
mod kube;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use fermata::reconcile::{Reconciler, Settings};
use fermata::window::SystemClock;

/// jemalloc: glibc's per-thread arenas fragment under tokio's blocking pool
/// (measured by fermata-bench: 226 MiB peak RSS on 10,000 compositions with
/// glibc, 118 MiB with a single arena).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    fleet: Option<Bench>,
    #[command(flatten)]
    pass: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Many site agents reporting one commit at once, against the shared
    /// status branch they used before.
    Fleet(fleet::FleetArgs),
    /// The pass at a window's opening over staged Kubernetes compositions,
    /// against the fake API server with latency: one at a time, then
    /// concurrent.
    Kube(kube::KubeArgs),
}

#[derive(Debug, clap::Args)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    symphonies: usize,
    #[arg(long, default_value_t = 10)]
    variations: usize,
    /// Distinct synthesizers the variations share.
    #[arg(long, default_value_t = 20)]
    synthesizers: usize,
    /// Repetitions of the no-op measurements (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Keep the generated repositories here instead of a temp dir.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("FERMATA_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.fleet {
        Some(Bench::Fleet(f)) => fleet::run(&f),
        Some(Bench::Kube(k)) => kube::run(&k),
        None => pass_bench(&cli.pass),
    }
}

fn pass_bench(a: &Args) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let work = root.join("work");
    let t = Instant::now();
    generate(&work, a.symphonies, a.variations, a.synthesizers)?;
    git(
        &root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap_or_default(),
            "remote.git",
        ],
    )?;
    let remote = root.join("remote.git");
    let url = format!("file://{}", remote.display());
    println!(
        "generated {} symphonies x {} variations ({} compositions) in {:.1?}",
        a.symphonies,
        a.variations,
        a.symphonies * a.variations,
        t.elapsed()
    );
    // The baseline: the git CLI keeping its own mirror of the same remote.
    git(&root, &["clone", "-q", "--mirror", &url, "git-mirror.git"])?;

    let rt = tokio::runtime::Runtime::new()?;
    let state = root.join("state");
    let settings = Settings::defaults(url.clone(), "main", &state);
    let mut r = Reconciler::new(settings, Arc::new(SystemClock))?;

    let cold = rt.block_on(async {
        let t = Instant::now();
        r.fetch().await?;
        let reports = r.pass().await;
        check(&reports, a.symphonies * a.variations)?;
        anyhow::Ok(t.elapsed())
    })?;
    println!("cold pass (render, stage, apply, status):   {cold:>10.2?}");

    let mut noop = Vec::new();
    let mut fetch = Vec::new();
    for _ in 0..a.repeat {
        let t = Instant::now();
        git(&root.join("git-mirror.git"), &["fetch", "-q", "origin"])?;
        fetch.push(t.elapsed());
        noop.push(rt.block_on(async {
            let t = Instant::now();
            r.fetch().await?;
            let reports = r.pass().await;
            if reports.iter().any(|b| b.status_commit.is_some()) {
                bail!("a no-op pass committed status");
            }
            anyhow::Ok(t.elapsed())
        })?);
    }
    let (noop, fetch) = (median(noop), median(fetch));
    println!("no-op pass:                                 {noop:>10.2?}");
    println!("plain `git fetch` (same remote):            {fetch:>10.2?}");
    println!(
        "  ratio no-op / git fetch:                  {:>10.2}   (target <= 1.5)",
        noop.as_secs_f64() / fetch.as_secs_f64()
    );

    // One variation changes.
    let file = work.join("symphonies/sym-0000.yaml");
    let text = std::fs::read_to_string(&file)?;
    std::fs::write(
        &file,
        text.replacen("value: tag-0", "value: tag-changed", 1),
    )?;
    git(&work, &["commit", "-qam", "change one variation"])?;
    git(
        &work,
        &["push", "-q", remote.to_str().unwrap_or_default(), "main"],
    )?;
    let one = rt.block_on(async {
        let t = Instant::now();
        r.fetch().await?;
        let fetched = t.elapsed();
        let reports = r.pass().await;
        println!(
            "  (of which fetch: {fetched:.2?}, pass: {:.2?})",
            t.elapsed() - fetched
        );
        if !reports.iter().any(|b| b.status_commit.is_some()) {
            bail!("the change did not produce a status commit");
        }
        anyhow::Ok(t.elapsed())
    })?;
    println!("one-variation-change pass:                  {one:>10.2?}");
    println!(
        "  ratio change / cold:                      {:>9.2}%   (target <= 5%)",
        100.0 * one.as_secs_f64() / cold.as_secs_f64()
    );
    let rss = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?.max_rss();
    println!(
        "peak RSS:                                   {:>7.1} MiB   (target < 200 MiB)",
        rss as f64 / 1024.0
    );
    Ok(())
}

fn check(reports: &[fermata::reconcile::BranchReport], want: usize) -> anyhow::Result<()> {
    let rows: usize = reports.iter().map(|b| b.rows.len()).sum();
    let errors: Vec<&String> = reports.iter().flat_map(|b| &b.errors).collect();
    if rows != want || !errors.is_empty() {
        bail!("expected {want} compositions, got {rows}; errors: {errors:?}");
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@fermata.invalid",
        ])
        .args(args)
        .output()
        .with_context(|| format!("git {args:?}"))?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Writes the fleet into a new repository at `dir` and commits it.
pub(crate) fn generate(
    dir: &Path,
    symphonies: usize,
    variations: usize,
    synthesizers: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("symphonies"))?;
    std::fs::write(
        dir.join("target.yaml"),
        "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: site}\nspec:\n  directory: {path: site}\n",
    )?;
    for s in 0..synthesizers {
        let sd = dir.join(format!("synth/s{s}"));
        std::fs::create_dir_all(sd.join("manifests"))?;
        std::fs::write(
            sd.join("synth.yaml"),
            format!("apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {{name: s{s}}}\nspec:\n  manifests: ./manifests\n"),
        )?;
        for (i, kind) in [
            "ConfigMap",
            "Service",
            "ServiceAccount",
            "Secret",
            "ConfigMap",
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(
                sd.join(format!("manifests/{i}.yaml")),
                format!(
                    "apiVersion: v1\nkind: {kind}\nmetadata:\n  name: ${{NAME}}-{i}\n  namespace: ${{NS}}\n  labels: {{app: ${{NAME}}, synth: s{s}}}\ndata:\n  tag: \"${{TAG}}\"\n  index: \"{i}\"\n"
                ),
            )?;
        }
    }
    for n in 0..symphonies {
        let mut y = format!(
            "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: sym-{n:04}}}\nspec:\n  rollout: {{strategy: Parallel, maxUnavailable: 100}}\n  synthesisEnv: [{{name: NS, value: ns-{n}}}]\n  variations:\n"
        );
        for v in 0..variations {
            y.push_str(&format!(
                "    - name: v{v}\n      synthesizer: {{name: s{}}}\n      synthesisEnv: [{{name: NAME, value: app-{v}}}, {{name: TAG, value: tag-{v}}}]\n",
                (n + v) % synthesizers
            ));
        }
        std::fs::write(dir.join(format!("symphonies/sym-{n:04}.yaml")), y)?;
    }
    git(dir, &["init", "-q", "-b", "main"])?;
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-qm", "generated fleet"])?;
    Ok(())
}
