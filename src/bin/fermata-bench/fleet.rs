//! `fermata-bench fleet`: N site agents reconcile one commit at once and
//! report to one repository served by `git daemon` on 127.0.0.1, each on
//! its own branch; then the same run with the layout sites had before (one
//! shared status branch, `<site>/` directories, one notes ref) as the
//! baseline; then what the fleet view costs over N site branches.
//!
//! Agents are in-process tasks, each a `Reconciler` with its own state
//! directory, mirror, directory target and site name: N processes on a
//! 2-core machine would measure process and runtime start-up, not the
//! status protocol, and a task pushes through the same git2 code a process
//! does. Pushes are counted by the server: a `pre-receive` hook logs every
//! push with the site its commit names (`Fermata-Site:`), so retries
//! inside fermata cannot hide.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fermata::fleet::{aggregate, read, DEFAULT_STALE};
use fermata::reconcile::{Reconciler, Settings};
use fermata::status::StatusRepo;
use fermata::window::SystemClock;

use super::{generate, git};

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Site agents reconciling at once.
    #[arg(long, default_value_t = 1000)]
    sites: usize,
    /// Site agents of the baseline run (one shared status branch); 0
    /// skips it. Default: as many as `--sites`.
    #[arg(long)]
    baseline_sites: Option<usize>,
    /// The repository's symphonies x variations (every site runs them all).
    #[arg(long, default_value_t = 2)]
    symphonies: usize,
    #[arg(long, default_value_t = 2)]
    variations: usize,
    /// Mirrors opened at once while the agents are set up (not timed).
    #[arg(long, default_value_t = 16)]
    setup_parallel: usize,
    /// Port of the `git daemon` started on 127.0.0.1.
    #[arg(long, default_value_t = 19418)]
    port: u16,
    /// Keep the repositories and state here instead of a temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Where a run's sites report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `fermata/sites/<site>` and the site's own notes ref (now).
    PerSite,
    /// `<site>/` on `fermata/status` and `refs/notes/fermata` (before).
    Shared,
}

/// What one run measured.
struct Measured {
    sites: usize,
    landed: usize,
    pushes: BTreeMap<String, usize>,
    /// From the start of every pass until the last one ended.
    elapsed: Duration,
    errors: Vec<String>,
}

impl Measured {
    fn total_pushes(&self) -> usize {
        self.pushes.values().sum()
    }

    fn print(&self, name: &str) {
        let total = self.total_pushes();
        println!("{name}:");
        println!(
            "  statuses landed:                {:>6} of {}",
            self.landed, self.sites
        );
        println!(
            "  pushes:                         {total:>6}   ({:.2} per site, at most {} for one site)",
            total as f64 / self.sites.max(1) as f64,
            self.pushes.values().max().copied().unwrap_or(0)
        );
        println!("  all passes done after:          {:>9.2?}", self.elapsed);
        if !self.errors.is_empty() {
            println!(
                "  sites reporting errors:         {:>6}   (first: {})",
                self.errors.len(),
                self.errors[0]
            );
        }
    }
}

pub fn run(a: &FleetArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let work = root.join("work");
    generate(&work, a.symphonies, a.variations, 2, None)?;
    let serve = root.join("serve");
    std::fs::create_dir_all(&serve)?;
    let pushes_log = root.join("pushes.log");
    for name in ["per-site.git", "shared.git"] {
        git(
            &serve,
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap_or_default(),
                name,
            ],
        )?;
        install_hook(&serve.join(name), &pushes_log)?;
    }
    let _daemon = Daemon::start(&serve, a.port)?;
    let url = |name: &str| format!("git://127.0.0.1:{}/{name}", a.port);
    println!(
        "{} sites, each {} symphonies x {} variations, reporting to git://127.0.0.1:{} (git daemon)",
        a.sites, a.symphonies, a.variations, a.port
    );
    let rt = tokio::runtime::Runtime::new()?;

    let now = agents(
        &rt,
        &root.join("per-site"),
        &url("per-site.git"),
        &serve.join("per-site.git"),
        a,
        a.sites,
        Layout::PerSite,
        &pushes_log,
    )?;
    now.print("per-site branches (fermata/sites/<site>)");

    // The fleet view, as `fermata fleet status` reads it: one fetch of
    // every site branch into a cache, then the aggregate.
    let viewer = root.join("viewer");
    let mut views = Vec::new();
    for _ in 0..2 {
        let t = Instant::now();
        let (dir, branch) = read::open(&url("per-site.git"), &viewer, Some("main"))?;
        let input = read::read(&dir, &branch)?;
        let view = aggregate(&input, chrono::Utc::now(), DEFAULT_STALE);
        views.push((t.elapsed(), view.totals.sites, view.totals.at_head));
    }
    let (cold, sites, at_head) = views[0];
    println!(
        "  fleet view shows {sites} sites, {at_head} at the newest commit: {:.2?} after the passes started",
        now.elapsed + cold
    );
    println!(
        "fleet status over {sites} site branches: {cold:>9.2?} cold (fetch into a new cache), {:.2?} warm",
        views[1].0
    );
    if sites != a.sites || at_head != a.sites {
        bail!(
            "the fleet view shows {sites} sites, {at_head} at head; expected {}",
            a.sites
        );
    }

    let baseline_sites = a.baseline_sites.unwrap_or(a.sites);
    if baseline_sites > 0 {
        let before = agents(
            &rt,
            &root.join("shared"),
            &url("shared.git"),
            &serve.join("shared.git"),
            a,
            baseline_sites,
            Layout::Shared,
            &pushes_log,
        )?;
        before.print("baseline: one shared status branch (the layout before)");
        let per = |m: &Measured| m.total_pushes() as f64 / m.sites.max(1) as f64;
        println!(
            "  ratio pushes per site, shared / per-site: {:>6.2}",
            per(&before) / per(&now)
        );
        println!(
            "  ratio statuses landed, per-site / shared: {:>6.2}",
            (now.landed as f64 / now.sites as f64)
                / (before.landed as f64 / before.sites as f64).max(f64::EPSILON)
        );
        println!(
            "  ratio time, shared / per-site:            {:>6.2}",
            before.elapsed.as_secs_f64() / now.elapsed.as_secs_f64()
        );
    }
    if now.landed != a.sites {
        bail!("{} of {} statuses landed", now.landed, a.sites);
    }
    Ok(())
}

/// Sets up `n` site agents (not timed), then runs one pass of each, all at
/// once, and counts what landed on the remote and the pushes it took.
#[allow(clippy::too_many_arguments)]
fn agents(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    url: &str,
    bare: &Path,
    a: &FleetArgs,
    n: usize,
    layout: Layout,
    pushes_log: &Path,
) -> anyhow::Result<Measured> {
    let site = |i: usize| format!("site-{i:04}");
    let mut agents = Vec::with_capacity(n);
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(a.setup_parallel.max(1)) {
        let built: Vec<anyhow::Result<Reconciler>> = rt.block_on(async {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let state = dir.join(site(i));
                    let (url, name) = (url.to_string(), site(i));
                    tokio::task::spawn_blocking(move || {
                        let mut settings = Settings::defaults(url, "main", &state);
                        settings.site = Some(name.clone());
                        let mut r = Reconciler::new(settings, Arc::new(SystemClock))?;
                        if layout == Layout::Shared {
                            r.ctx.status = Arc::new(StatusRepo::shared_layout(
                                r.ctx.source.git_dir().to_path_buf(),
                                r.ctx.source.remote().map(str::to_string),
                                "fermata/status",
                                &name,
                            ));
                        }
                        anyhow::Ok(r)
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.map_err(anyhow::Error::from).and_then(|r| r));
            }
            out
        });
        for r in built {
            agents.push(r?);
        }
    }
    println!(
        "  ({n} agents set up, mirrors cloned, in {:.1?})",
        t.elapsed()
    );
    let logged_before = read_log(pushes_log)?.len();

    let t = Instant::now();
    // A pass is not `Send` (pull-request planning recurses into a pass),
    // so the agents share one thread for their async work, as a process's
    // run loop does; everything blocking (git2, files) runs on the pool.
    let local = tokio::task::LocalSet::new();
    let reports = local.block_on(rt, async {
        let tasks: Vec<_> = agents
            .into_iter()
            .map(|mut r| tokio::task::spawn_local(async move { r.pass().await }))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    let elapsed = t.elapsed();
    let mut errors = Vec::new();
    for (i, r) in reports.into_iter().enumerate() {
        let r = r.context("an agent's pass panicked")?;
        if let Some(e) = r.iter().flat_map(|b| &b.errors).next() {
            errors.push(format!("{}: {e}", site(i)));
        }
    }
    let mut pushes = BTreeMap::new();
    for line in read_log(pushes_log)?.into_iter().skip(logged_before) {
        *pushes.entry(line).or_default() += 1;
    }
    let landed = landed(bare, n, layout)?;
    Ok(Measured {
        sites: n,
        landed,
        pushes,
        elapsed,
        errors,
    })
}

/// How many sites' statuses of `main` are on the remote.
fn landed(bare: &Path, n: usize, layout: Layout) -> anyhow::Result<usize> {
    let repo = git2::Repository::open_bare(bare)?;
    let mut count = 0;
    for i in 0..n {
        let site = format!("site-{i:04}");
        let found = match layout {
            Layout::PerSite => repo
                .find_reference(&format!(
                    "refs/heads/{}",
                    fermata::status::site_branch(&site)
                ))
                .ok()
                .and_then(|r| r.peel_to_tree().ok())
                .is_some_and(|t| t.get_path(Path::new("main")).is_ok()),
            Layout::Shared => repo
                .find_reference("refs/heads/fermata/status")
                .ok()
                .and_then(|r| r.peel_to_tree().ok())
                .is_some_and(|t| t.get_path(&Path::new(&site).join("main")).is_ok()),
        };
        count += usize::from(found);
    }
    Ok(count)
}

fn read_log(path: &Path) -> anyhow::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// A `pre-receive` hook that logs one line per push: the site the pushed
/// commit names. It runs for every push that reaches the server, also for
/// one rejected afterwards because the ref moved.
fn install_hook(bare: &Path, log: &Path) -> anyhow::Result<()> {
    let hook = bare.join("hooks/pre-receive");
    let script = format!(
        "#!/bin/sh\nsite=''\nwhile read old new ref; do\n  case \"$ref\" in refs/heads/*)\n    s=$(git show -s --format=%B \"$new\" | sed -n 's/^Fermata-Site: //p' | head -n1)\n    [ -n \"$s\" ] && site=\"$s\";;\n  esac\n  case \"$ref\" in refs/notes/fermata-sites/*) [ -z \"$site\" ] && site=\"${{ref#refs/notes/fermata-sites/}}\";; esac\ndone\necho \"${{site:-unknown}}\" >> '{}'\n",
        log.display()
    );
    std::fs::write(&hook, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `git daemon` serving `base` with pushes enabled and no connection
/// limit, killed when dropped. Started as the daemon binary itself: killing
/// a `git` wrapper would leave it running.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(base: &Path, port: u16) -> anyhow::Result<Daemon> {
        let out = std::process::Command::new("git")
            .arg("--exec-path")
            .output()?;
        let exec = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let child = std::process::Command::new(exec.join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                "--enable=receive-pack",
                "--max-connections=0",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("git daemon")?;
        let daemon = Daemon(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("git daemon did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
