//! `fermata-bench`: how fast a pass is on a large fleet, against plain `git
//! fetch` of the same repository measured in the same run.
//!
//! Generates N symphonies x M variations (manifests synthesizers, ~5
//! resources each) in a bare repository served over file://, then times a
//! cold pass, a no-op pass next to `git fetch`, and a pass after a change to
//! one variation, and reports peak RSS; then the same fleet under one
//! maintenance window on a clock it moves: staging with the window closed,
//! the pass at its opening (switching only), a fresh reconciler on the
//! unchanged commit; and, as the cold pass's floor, the same files written
//! plainly, as the opening's, its switches and status commit done plainly
//! ([`floor`]). Run with `cargo run --release --bin
//! fermata-bench -- --symphonies 1000 --variations 10`.
//!
//! `fermata-bench fleet --sites 1000` is the fleet bench ([`fleet`]);
//! `fermata-bench kube --compositions 1000 --latency-ms 10` the window's
//! opening on Kubernetes, one write at a time against concurrent ([`kube`]).

mod fleet;
mod floor;
mod kube;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use fermata::reconcile::{BranchReport, Reconciler, Settings};
use fermata::status::State;
use fermata::window::{FixedClock, SystemClock};

/// jemalloc: glibc's per-thread arenas fragment under tokio's blocking pool
/// (measured by fermata-bench: 226 MiB peak RSS on 10,000 compositions with
/// glibc, 118 MiB with a single arena).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The same settings as fermata's own binary (`fermata::JEMALLOC_CONF`).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Option<&'static std::ffi::c_char> = Some(&fermata::JEMALLOC_CONF[0]);

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
    /// Only the window bench (staging, opening, restart): for a profiler.
    #[arg(long)]
    window_only: bool,
    /// Only the restart, on what an earlier `--window-only --dir DIR` left
    /// in DIR: repeatable, for a profiler (the window bench runs it so, in
    /// a fresh process).
    #[arg(long, requires = "dir")]
    restart_only: bool,
}

/// `SSL_CERT_FILE` and `SSL_CERT_DIR` as this process was given them:
/// libgit2's start (through git2's probe) sets both, so they are read first.
static SHELL_CERT_VARS: std::sync::OnceLock<[(&str, Option<std::ffi::OsString>); 2]> =
    std::sync::OnceLock::new();

fn main() -> anyhow::Result<()> {
    SHELL_CERT_VARS.get_or_init(|| {
        [openssl_probe::ENV_CERT_FILE, openssl_probe::ENV_CERT_DIR]
            .map(|v| (v, std::env::var_os(v)))
    });
    let cli = Cli::parse();
    if !cli.pass.restart_only {
        // As fermata's main does; the restart times it as part of its start.
        fermata::libgit2::start();
    }
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
    if a.window_only || a.restart_only {
        let rt = tokio::runtime::Runtime::new()?;
        return window_bench(a, &root, &rt);
    }
    let work = root.join("work");
    let t = Instant::now();
    generate(&work, a.symphonies, a.variations, a.synthesizers, None)?;
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
    settle();
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
    settle();
    let plain = plain_write(&state.join("targets/site"), &root.join("plain"))?;
    println!("the same files written plainly (no sync):   {plain:>10.2?}");
    println!(
        "  ratio cold / plain write:                 {:>10.2}   (target <= 3)",
        cold.as_secs_f64() / plain.as_secs_f64()
    );

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
    drop(r);
    window_bench(a, &root, &rt)
}

/// The same fleet under one maintenance window, on a clock the bench
/// moves: staging while the window is closed, then the pass at its opening
/// (switching only), then a fresh reconciler on the unchanged commit.
fn window_bench(a: &Args, root: &Path, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let url = format!("file://{}", root.join("window-remote.git").display());
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 20).context("date")?;
    let at = |h, m| {
        day.and_hms_opt(h, m, 0)
            .map(|t| t.and_utc())
            .context("time")
    };
    let settings = Settings::defaults(url.clone(), "main", &root.join("window-state"));
    let want = a.symphonies * a.variations;
    if a.restart_only {
        return restart_bench(a, root, rt, settings, Arc::new(FixedClock::new(at(2, 30)?)));
    }
    let work = root.join("window-work");
    generate(
        &work,
        a.symphonies,
        a.variations,
        a.synthesizers,
        Some("nightly"),
    )?;
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap_or_default(),
            "window-remote.git",
        ],
    )?;
    git(
        root,
        &["clone", "-q", "--mirror", &url, "window-mirror.git"],
    )?;
    let clock = Arc::new(FixedClock::new(at(0, 0)?));
    let mut r = Reconciler::new(settings.clone(), clock.clone())?;
    settle();
    let (staging, _) = timed_pass(rt, &mut r, State::Staged, want)?;
    println!("window closed: staging pass:                {staging:>10.2?}");
    // Staging writes without syncing; the kernel writes the files back
    // within about 30 s (dirty_expire_centisecs), long before a window
    // hours away opens. Here it opens at once, and the switch's first
    // syncfs would pay that writeback: it is done first, untimed, and shown.
    let writeback = settle();
    println!(
        "  (the kernel's writeback of the staged files, before the window: {writeback:.2?}, untimed)"
    );
    let remote = root.join("window-remote.git");
    floor::copy_remote(&remote, &root.join("floor-status.git"))?;
    settle();
    clock.set(at(2, 0)?);
    let (opening, _) = timed_pass(rt, &mut r, State::Installed, want)?;
    println!("window opens: apply of {want} staged:      {opening:>10.2?}");
    let percent = |d: Duration| 100.0 * d.as_secs_f64() / staging.as_secs_f64();
    println!(
        "  ratio opening / staging:                  {:>9.2}%   (target <= 10%)",
        percent(opening)
    );
    drop(r);
    // What the opening cannot do without, by plain calls and plain git.
    let ids: Vec<String> = (0..a.symphonies)
        .flat_map(|n| (0..a.variations).map(move |v| format!("sym-{n:04}/v{v}")))
        .collect();
    let switches = floor::switches(&root.join("floor-switches"), &ids)?;
    settle();
    let status = floor::status_commit(
        &remote,
        &root.join("floor-status.git"),
        "refs/heads/fermata/status",
    )?;
    let floor = switches + status;
    println!("  floor: the switches by a plain loop:      {switches:>10.2?}   (rename, history line; one syncfs)");
    println!("  floor: its status commit by git fast-import: {status:>7.2?}");
    println!(
        "  floor / staging:                          {:>9.2}%   ratio opening / floor: {:.2}",
        percent(floor),
        opening.as_secs_f64() / floor.as_secs_f64()
    );
    // The restart in a fresh process: libgit2's start (its TLS setup) is
    // part of a restart, and this process paid it already. A user's
    // SSL_CERT_FILE makes that start read the whole bundle
    // (`fermata::libgit2`); a service's environment has none, so the restart
    // is measured both ways when this shell sets one.
    let vars = SHELL_CERT_VARS
        .get()
        .context("the shell's certificate variables")?;
    let set = vars.iter().any(|(_, value)| value.is_some());
    let modes: &[(bool, &str)] = if set {
        &[
            (
                false,
                "restart with this shell's SSL_CERT_FILE/SSL_CERT_DIR:",
            ),
            (
                true,
                "restart without SSL_CERT_FILE/SSL_CERT_DIR (as a service starts):",
            ),
        ]
    } else {
        &[(false, "")]
    };
    for &(clear, title) in modes {
        if !title.is_empty() {
            println!("{title}");
        }
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["--restart-only", "--dir"])
            .arg(root)
            .args(["--symphonies", &a.symphonies.to_string()])
            .args(["--variations", &a.variations.to_string()])
            .args(["--repeat", &a.repeat.to_string()]);
        // The shell's values (this process's own start set them), or none.
        for (v, value) in vars {
            match value.as_ref().filter(|_| !clear) {
                Some(value) => cmd.env(v, value),
                None => cmd.env_remove(v),
            };
        }
        let out = cmd.output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!("restart: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// One timed fetch and pass. `state`: what every composition must be,
/// unless the pass found the branch settled (then it reports none).
fn timed_pass(
    rt: &tokio::runtime::Runtime,
    r: &mut Reconciler,
    state: State,
    want: usize,
) -> anyhow::Result<(Duration, Vec<BranchReport>)> {
    rt.block_on(async {
        let t = Instant::now();
        r.fetch().await?;
        let reports = r.pass().await;
        let elapsed = t.elapsed();
        if !reports.iter().all(|b| b.unchanged) {
            check(&reports, want)?;
        }
        let wrong = reports
            .iter()
            .flat_map(|b| &b.rows)
            .filter(|row| row.state != state)
            .count();
        if wrong > 0 {
            bail!("{wrong} compositions not {state:?}");
        }
        anyhow::Ok((elapsed, reports))
    })
}

/// A restart: a fresh reconciler (nothing cached but state.json) on the
/// unchanged commit, next to plain `git fetch` of the same remote.
fn restart_bench(
    a: &Args,
    root: &Path,
    rt: &tokio::runtime::Runtime,
    settings: Settings,
    clock: Arc<FixedClock>,
) -> anyhow::Result<()> {
    let want = a.symphonies * a.variations;
    let mut fetch = Vec::new();
    for _ in 0..a.repeat {
        let t = Instant::now();
        git(&root.join("window-mirror.git"), &["fetch", "-q", "origin"])?;
        fetch.push(t.elapsed());
    }
    let fetch = median(fetch);
    // The process's start counts: loading what the last one saved is part
    // of a restart, as `git fetch` pays its own start.
    let t = Instant::now();
    fermata::libgit2::start();
    let mut r = Reconciler::new(settings, clock)?;
    let started = t.elapsed();
    let (first, reports) = timed_pass(rt, &mut r, State::Installed, want)?;
    let restart = started + first;
    // What the pass left to the background: nothing hidden.
    let t = Instant::now();
    let unchanged = rt.block_on(r.settle_background());
    let settled = t.elapsed();
    if unchanged == Some(false) {
        bail!("the targets changed on an unchanged commit");
    }
    if reports.iter().any(|b| b.status_commit.is_some()) {
        bail!("a restart on an unchanged commit committed status");
    }
    let skipped = reports.iter().all(|b| b.unchanged);
    println!(
        "restart on the unchanged commit:            {restart:>10.2?}   (pass skipped: {skipped})"
    );
    println!("  (of which start: {started:.2?}, fetch and first pass: {first:.2?})");
    println!(
        "  background stat check, done after the pass: {settled:>8.2?}   (unchanged: {unchanged:?})"
    );
    println!("plain `git fetch` (same remote):            {fetch:>10.2?}");
    println!(
        "  ratio restart / git fetch:                {:>10.2}   (target <= 3)",
        restart.as_secs_f64() / fetch.as_secs_f64()
    );
    let (verify, _) = timed_pass(rt, &mut r, State::Installed, want)?;
    println!("  next pass (full verify of the targets):   {verify:>10.2?}");
    Ok(())
}

/// What a directory target holds, read into memory.
enum Node {
    Dir(std::path::PathBuf),
    File(std::path::PathBuf, Vec<u8>),
    Link(std::path::PathBuf, std::path::PathBuf),
}

/// Writes the tree under `from` again under `to` with plain writes (no
/// sync, no rename): the floor a directory target's write can get near.
/// Only the writing is timed. The copy stays until the bench's directory
/// goes: on ext4 without a journal (this machine's), the inode allocator
/// steps over every inode freed in the last 30 s (`recently_deleted`), and
/// deleting these 50,000 made the staging pass after them 2-3x slower.
fn plain_write(from: &Path, to: &Path) -> anyhow::Result<Duration> {
    fn read(base: &Path, dir: &Path, out: &mut Vec<Node>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(base)?.to_path_buf();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_symlink() {
                out.push(Node::Link(rel, std::fs::read_link(&path)?));
            } else if meta.is_dir() {
                out.push(Node::Dir(rel));
                read(base, &path, out)?;
            } else {
                out.push(Node::File(rel, std::fs::read(&path)?));
            }
        }
        Ok(())
    }
    let mut nodes = Vec::new();
    read(from, from, &mut nodes)?;
    let t = Instant::now();
    std::fs::create_dir_all(to)?;
    for node in &nodes {
        match node {
            Node::Dir(p) => std::fs::create_dir(to.join(p))?,
            Node::File(p, bytes) => std::fs::write(to.join(p), bytes)?,
            Node::Link(p, target) => std::os::unix::fs::symlink(target, to.join(p))?,
        }
    }
    Ok(t.elapsed())
}

/// Writes back what earlier steps left dirty, outside the timed steps, so
/// that one does not pay for the step before it. How long it took.
fn settle() -> Duration {
    let t = Instant::now();
    nix::unistd::sync();
    t.elapsed()
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
/// With `window`, one MaintenanceWindow of that name (02:00 UTC for 3
/// hours, daily) governs every symphony.
pub(crate) fn generate(
    dir: &Path,
    symphonies: usize,
    variations: usize,
    synthesizers: usize,
    window: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("symphonies"))?;
    if let Some(w) = window {
        std::fs::write(
            dir.join("window.yaml"),
            format!("apiVersion: fermata.dev/v1alpha1\nkind: MaintenanceWindow\nmetadata: {{name: {w}}}\nspec: {{schedule: \"0 2 * * *\", duration: 3h, timezone: UTC}}\n"),
        )?;
    }
    let window_line = window.map_or(String::new(), |w| format!("  window: {w}\n"));
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
            "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: sym-{n:04}}}\nspec:\n{window_line}  rollout: {{strategy: Parallel, maxUnavailable: 100}}\n  synthesisEnv: [{{name: NS, value: ns-{n}}}]\n  variations:\n"
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
