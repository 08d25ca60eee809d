//! `fermata run`: the reconciler, the product's main job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;

use super::default_state_dir;
use crate::leader::{Elector, LeaseSettings};
use crate::reconcile::pulls::PullSettings;
use crate::reconcile::state::{LockError, StateLock};
use crate::reconcile::{self, BranchReport, PassOutcome, Reconciler, Settings, Triggers};
use crate::serve::{self, ServeState};
use crate::source::SignaturePolicy;
use crate::status::State;
use crate::window::{Clock, FixedClock, SystemClock};

/// What every command that builds a reconciler needs (`run`, `plan`,
/// `apply-now`, `ungate`, `rollback`): where the fleet is, where state and
/// targets live, what to trust. Daemon flags live on [`RunArgs`] only, so
/// `plan --help` lists no `--listen`.
#[derive(Debug, Clone, Args)]
pub struct ReconcilerArgs {
    /// A local repository (read in place) or a URL (mirrored under the state directory).
    #[arg(long, env = "FERMATA_REPO")]
    pub repo: String,
    /// Branches to watch (repeatable, or comma-separated); the repository's default branch when absent.
    #[arg(long = "branch", env = "FERMATA_BRANCHES", value_delimiter = ',')]
    pub branches: Vec<String>,
    /// Load objects only below this folder of the repository.
    #[arg(long, env = "FERMATA_PATH", default_value = "")]
    pub path: String,
    /// Mirrors, the artifact store, caches and relative directory targets live here.
    #[arg(long, env = "FERMATA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where relative `directory` targets are created; `<state-dir>/targets` by default.
    #[arg(long, env = "FERMATA_TARGET_ROOT")]
    pub target_root: Option<PathBuf>,
    /// The branch status is committed to (default fermata/status); never one
    /// of the watched branches. With --site, the site's own fermata/sites/SITE.
    #[arg(long, env = "FERMATA_STATUS_BRANCH", value_parser = crate::status::branch_name)]
    pub status_branch: Option<String>,
    /// Run as this site's agent: status goes to its own branch
    /// fermata/sites/SITE and notes ref refs/notes/fermata-sites/SITE.
    #[arg(long, env = "FERMATA_SITE")]
    pub site: Option<String>,
    /// Stage and apply only commits signed this way (`ssh` or `gpg`), by a key of --trusted-keys.
    #[arg(
        long,
        env = "FERMATA_VERIFY_SIGNATURES",
        value_enum,
        value_name = "FORMAT",
        requires = "trusted_keys"
    )]
    pub verify_signatures: Option<SignatureFormat>,
    /// The keys that may sign commits: an OpenSSH `allowed_signers` file (`ssh`), or an
    /// OpenPGP keyring exported by `gpg --export` or `gpg --armor --export` (`gpg`).
    #[arg(
        long,
        env = "FERMATA_TRUSTED_KEYS",
        value_name = "FILE",
        requires = "verify_signatures"
    )]
    pub trusted_keys: Option<PathBuf>,
    /// How long a Kubernetes target's resources may stay unhealthy after an
    /// apply before the composition is failed (`HealthTimeout`).
    #[arg(
        long,
        env = "FERMATA_HEALTH_TIMEOUT",
        default_value = "10m",
        value_parser = parse_interval
    )]
    pub health_timeout: Duration,
    /// How long a removed variation's status file stays on the status
    /// branch, in state `removed`, once its target confirmed the delete.
    #[arg(
        long,
        env = "FERMATA_REMOVED_RETENTION",
        default_value = "7d",
        value_parser = parse_interval
    )]
    pub removed_retention: Duration,
    /// A folder `file://` artifacts may come from (repeatable, or comma-separated);
    /// none by default: only repository paths and http(s) URLs. Resolved with
    /// symlinks, so a link under a root to a file outside is refused.
    #[arg(
        long = "artifact-root",
        env = "FERMATA_ARTIFACT_ROOTS",
        value_delimiter = ',',
        value_name = "DIR"
    )]
    pub artifact_roots: Vec<PathBuf>,
    #[command(flatten)]
    pub limits: super::LimitArgs,
    /// How long a Git server may stay silent (any one read or write, TLS
    /// and SSH handshakes included) before a fetch or push fails.
    #[arg(long, env = "FERMATA_GIT_TIMEOUT", default_value = "30s", value_parser = parse_interval)]
    pub git_timeout: Duration,
    /// How long connecting to a Git server may take before a fetch or push fails.
    #[arg(long, env = "FERMATA_GIT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_interval)]
    pub git_connect_timeout: Duration,
    /// Target writes in flight at once: the next N compositions render and stage ahead of the roll out, and up to N applies of different symphonies overlap; also a Kubernetes target's reads at a pass's start (a directory target reads on every core). 1 for one at a time.
    #[arg(
        long,
        env = "FERMATA_APPLY_CONCURRENCY",
        value_name = "N",
        default_value_t = crate::reconcile::DEFAULT_APPLY_CONCURRENCY
    )]
    pub apply_concurrency: usize,
    #[command(flatten)]
    pub clock: ClockArgs,
}

/// `fermata run`: the reconciler's flags and the daemon's own.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub base: ReconcilerArgs,
    /// How often each branch is fetched (plus up to 10% jitter).
    #[arg(long, env = "FERMATA_INTERVAL", default_value = "30s", value_parser = parse_interval)]
    pub interval: Duration,
    /// After each pass, commit the fleet view of every site's status branch
    /// (summary.md, fleet.svg, fleet.json) to fermata/fleet; central mode only.
    #[arg(long, env = "FERMATA_PUBLISH_FLEET", conflicts_with = "site")]
    pub publish_fleet: bool,
    /// Sign the commits self-driving campaigns make with this key, for sites
    /// under a signature policy: an OpenSSH private key (`ssh-keygen -Y
    /// sign`) or an armored OpenPGP secret key, without a passphrase.
    #[arg(long, env = "FERMATA_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// One pass, then exit: 1 if anything failed.
    #[arg(long)]
    pub once: bool,
    /// Serve /healthz, /readyz, /metrics and /hooks/git on this address (e.g. 127.0.0.1:8080).
    #[arg(
        long,
        env = "FERMATA_LISTEN",
        value_name = "ADDR",
        conflicts_with = "once"
    )]
    pub listen: Option<SocketAddr>,
    /// Enables /hooks/git: pushes signed (HMAC-SHA256) with the key in this file trigger a fetch.
    #[arg(
        long,
        env = "FERMATA_WEBHOOK_SECRET_FILE",
        value_name = "PATH",
        requires = "listen"
    )]
    pub webhook_secret_file: Option<PathBuf>,
    /// Enables GET /artifacts/sha256/DIGEST for bearers of the token in this file (Kubernetes artifact Jobs).
    #[arg(
        long,
        env = "FERMATA_ARTIFACT_TOKEN_FILE",
        value_name = "PATH",
        requires = "listen"
    )]
    pub artifact_token_file: Option<PathBuf>,
    /// Branches matching this glob (e.g. `preview/*`) get a plan of their
    /// head against the first watched branch, as a note under
    /// `refs/notes/fermata-plan` (pushed): plans for hosts without a forge API.
    #[arg(long, env = "FERMATA_PLAN_BRANCHES", value_name = "GLOB", value_parser = parse_glob)]
    pub plan_branches: Option<glob::Pattern>,
    /// Run `command:` synthesizers when planning commits that are not on a
    /// watched branch (pull request heads, forks included). Off by default:
    /// a plan must not execute code nobody merged.
    #[arg(long)]
    pub trust_pr_commands: bool,
    /// Reconcile only while holding a coordination.k8s.io/v1 Lease, so 2+
    /// replicas are safe (Kubernetes config from KUBECONFIG or in-cluster).
    #[arg(long, conflicts_with = "once")]
    pub leader_elect: bool,
    /// The Lease's name.
    #[arg(long, env = "FERMATA_LEASE_NAME", default_value = "fermata")]
    pub lease_name: String,
    /// The Lease's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// How long a lease holds without renewal; the leader gives up after 2/3
    /// of it without a successful renewal and renews every 2/15 of it.
    #[arg(long, env = "FERMATA_LEASE_DURATION", default_value = "15s", value_parser = parse_interval)]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease: the pod name, or host name and pid.
    #[arg(long, env = "POD_NAME")]
    pub lease_identity: Option<String>,
    /// `/readyz` answers 503 while a fetch and pass have run for longer than
    /// this: the loop is stuck, no pass has completed while one was due.
    #[arg(long, env = "FERMATA_READY_STALE", default_value = "15m", value_parser = parse_interval)]
    pub ready_stale: Duration,
    /// How long an HTTP client may take to send a request's headers, and
    /// how long an idle keep-alive connection stays open.
    #[arg(long, env = "FERMATA_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_interval)]
    pub http_header_timeout: Duration,
    /// At most this many HTTP connections at once (and at most half the
    /// file descriptor limit); at the limit, the longest idle one is closed
    /// for a new one, or the new one when all are busy.
    #[arg(long, env = "FERMATA_HTTP_MAX_CONNECTIONS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// Passes woken by webhooks or ref changes start at least this long
    /// after the previous one; a burst of wake-ups is one pass.
    #[arg(long, env = "FERMATA_MIN_PASS_INTERVAL", default_value = "2s", value_parser = parse_interval)]
    pub min_pass_interval: Duration,
    #[command(flatten)]
    pub forge: crate::forge::ForgeArgs,
    /// Send each changed Margo DeploymentStatusManifest to this workload
    /// orchestration server (its base URL), in the background.
    #[arg(
        long,
        env = "FERMATA_MARGO_WOS",
        value_name = "URL",
        requires_all = ["margo_client_id", "margo_token_file"]
    )]
    pub margo_wos: Option<String>,
    /// This device's id at the WOS (Margo's `deviceId` in the status path).
    #[arg(
        long,
        env = "FERMATA_MARGO_CLIENT_ID",
        value_name = "ID",
        requires = "margo_wos"
    )]
    pub margo_client_id: Option<String>,
    /// The bearer token for the WOS, from this file (surrounding whitespace trimmed).
    #[arg(
        long,
        env = "FERMATA_MARGO_TOKEN_FILE",
        value_name = "PATH",
        requires = "margo_wos"
    )]
    pub margo_token_file: Option<PathBuf>,
}

impl RunArgs {
    /// With `--margo-wos`: the status sink wrapped so each published status
    /// is also offered to the WOS. Must run inside the runtime.
    fn margo(
        &self,
        r: &mut Reconciler,
    ) -> anyhow::Result<Option<crate::status::northbound::Northbound>> {
        let (Some(wos), Some(id), Some(path)) = (
            &self.margo_wos,
            &self.margo_client_id,
            &self.margo_token_file,
        ) else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("--margo-token-file {}: cannot read", path.display()))?;
        let token = token.trim();
        if token.is_empty() {
            bail!("--margo-token-file {}: the file is empty", path.display());
        }
        let cfg = crate::status::northbound::NorthboundConfig::new(
            wos,
            id,
            token,
            &r.ctx.settings.state_dir,
        );
        let northbound = crate::status::northbound::Northbound::start(cfg)?;
        r.ctx.status = Arc::new(crate::status::northbound::NorthboundSink {
            inner: r.ctx.status.clone(),
            northbound: northbound.clone(),
            site: r.ctx.settings.site.clone(),
        });
        Ok(Some(northbound))
    }
}

/// How long `run --once` waits for the WOS to accept what the pass changed.
const MARGO_FLUSH: Duration = Duration::from_secs(20);

fn parse_glob(s: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(s).map_err(|e| format!("{s:?}: {e}"))
}

/// The commit signatures `--verify-signatures` can check (X.509 is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignatureFormat {
    /// `gpg.format=ssh` signatures, checked against an `allowed_signers` file.
    Ssh,
    /// OpenPGP signatures (git's default, `gpg.format=openpgp`), checked against a keyring.
    #[value(alias = "openpgp")]
    Gpg,
}

/// A fixed "now" for tests and demos; the system clock otherwise.
#[derive(Debug, Clone, Args)]
pub struct ClockArgs {
    /// Pretend it is this instant (RFC 3339), e.g. to see what a window would do.
    #[arg(long, env = "FERMATA_NOW")]
    pub now: Option<DateTime<Utc>>,
}

impl ClockArgs {
    pub fn clock(&self) -> Arc<dyn Clock> {
        match self.now {
            Some(t) => Arc::new(FixedClock::new(t)),
            None => Arc::new(SystemClock),
        }
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    crate::window::parse_duration(s).map_err(|e| e.to_string())
}

impl ReconcilerArgs {
    /// Validated settings: the status branch is never a watched one.
    pub fn reconciler(&self) -> anyhow::Result<Reconciler> {
        // Before the first remote call (opening a mirror fetches).
        crate::source::set_timeouts(crate::source::GitTimeouts {
            connect: self.git_connect_timeout,
            read: self.git_timeout,
        })
        .context("--git-timeout, --git-connect-timeout")?;
        let state_dir = default_state_dir(self.state_dir.clone());
        let signatures = match (self.verify_signatures, &self.trusted_keys) {
            (Some(SignatureFormat::Ssh), Some(file)) => {
                SignaturePolicy::ssh_from_file(file).context("--trusted-keys")?
            }
            (Some(SignatureFormat::Gpg), Some(file)) => {
                SignaturePolicy::gpg_from_file(file).context("--trusted-keys")?
            }
            (Some(_), None) => bail!("--verify-signatures needs --trusted-keys FILE"),
            (None, _) => SignaturePolicy::None,
        };
        let mut settings = Settings {
            repo: self.repo.clone(),
            branches: self.branches.clone(),
            path: self.path.clone(),
            interval: Duration::from_secs(30),
            target_root: self
                .target_root
                .clone()
                .unwrap_or_else(|| state_dir.join("targets")),
            state_dir,
            status_branch: super::status_branch(
                self.status_branch.as_deref(),
                self.site.as_deref(),
            )?,
            site: self.site.clone(),
            signatures,
            health_timeout: self.health_timeout,
            synth_limits: self.limits.limits(),
            artifact_roots: self.artifact_roots.clone(),
            apply_concurrency: self.apply_concurrency.max(1),
            removed_retention: self.removed_retention,
        };
        if let Some(site) = &settings.site {
            crate::model::load::check_name(site).map_err(|m| anyhow::anyhow!("--site: {m}"))?;
        }
        let mut r = Reconciler::new(settings.clone(), self.clock.clock())?;
        settings.branches = r.ctx.settings.branches.clone();
        if settings.branches.contains(&settings.status_branch) {
            bail!(
                "--status-branch {} is also a watched --branch: status commits must never land on a watched branch",
                settings.status_branch
            );
        }
        r.ctx.settings = settings;
        Ok(r)
    }
}

impl RunArgs {
    /// The reconciler with the daemon's poll interval and pull request planning.
    pub fn reconciler(&self) -> anyhow::Result<Reconciler> {
        let mut r = self.base.reconciler()?;
        r.ctx.settings.interval = self.interval;
        let forge = self.forge.build().context("--forge")?;
        if self.plan_branches.is_some() || forge.is_some() {
            r.pulls = Some(Arc::new(PullSettings {
                forge,
                plan_branches: self.plan_branches.clone(),
                trust_pr_commands: self.trust_pr_commands,
            }));
        }
        Ok(r)
    }
}

pub fn run(a: &RunArgs) -> anyhow::Result<ExitCode> {
    // Before anything opens files: HTTP clients, mirrors and targets share it.
    let fd_limit = serve::raise_fd_limit();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut r = a.reconciler()?;
        // One reconciler per state directory, for as long as this one runs.
        let _lock = StateLock::acquire(&r.ctx.settings.state_dir)?;
        let margo = a.margo(&mut r)?;
        let fleet = a.publish_fleet.then(|| FleetPublisher::of(&r));
        let campaigns = CampaignDriver::of(&r, a)?;
        let checks = SiteChecks::of(&r);
        fetch_or_warn(&mut r).await;
        check_site(&r).await?;
        if a.once {
            r.no_restart_shortcut();
            let reports = r.pass().await;
            print_reports(&reports, &r.ctx.settings.status_branch);
            // The sender runs in the background: one pass gives it a
            // bounded while to deliver before the process ends.
            if let Some(margo) = &margo {
                let left = margo.flush(MARGO_FLUSH).await;
                if left > 0 {
                    errln!("margo: {left} status(es) not accepted by the WOS within {MARGO_FLUSH:?}; a later run sends them");
                }
            }
            if let Some(Some(c)) = fleet.as_ref().map(|f| f.publish(r.ctx.clock.now())) {
                outln!(
                    "fleet: committed {} to {}",
                    &c.to_string()[..7],
                    crate::fleet::FLEET_BRANCH
                );
            }
            if let Some(c) = &campaigns {
                for (name, outcome) in c.drive(r.ctx.clock.now()) {
                    outln!("campaign {name}: {outcome:?}");
                }
            }
            if let Some(c) = &checks {
                for ran in c.run() {
                    outln!("campaign check {ran}: run at this site");
                }
            }
            return Ok(exit_code(&reports));
        }
        let clock = r.ctx.clock.clone();
        let triggers = Triggers::new().min_interval(a.min_pass_interval);
        let elector = if a.leader_elect {
            Some(a.elector(&mut r, &triggers).await?)
        } else {
            None
        };
        // Bound before the first pass, so a taken port fails at once.
        let server = match a.listen {
            None => None,
            Some(addr) => {
                let secret = a
                    .webhook_secret_file
                    .as_deref()
                    .map(|p| serve::read_secret(p, "webhook secret"))
                    .transpose()?;
                let token = a
                    .artifact_token_file
                    .as_deref()
                    .map(|p| serve::read_secret(p, "artifact token"))
                    .transpose()?;
                let mut state =
                    ServeState::new(r.ctx.settings.branches.clone(), secret, triggers.sender())
                        .watch_progress(triggers.progress(), a.ready_stale);
                if let Some(token) = token {
                    state = state.serve_artifacts(serve::ArtifactAccess {
                        dir: r.ctx.settings.state_dir.join("artifacts").join("sha256"),
                        token,
                    });
                }
                let state = Arc::new(state);
                let limits = serve::ServeLimits {
                    header_timeout: a.http_header_timeout,
                    max_connections: a.http_max_connections as usize,
                    ..serve::ServeLimits::default()
                }
                .within_fd_limit(fd_limit);
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--listen {addr}"))?;
                tracing::info!(%addr, "serving /healthz, /readyz, /metrics, /hooks/git");
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(serve::serve(listener, state.clone(), limits, async {
                    let _ = stopped.await;
                }));
                Some((state, stop, task))
            }
        };
        let observer = server.as_ref().map(|(state, _, _)| state.clone());
        let clock_now = clock.clone();
        let timer = CampaignTimer::new(triggers.sender());
        let result = reconcile::run(r, clock, triggers, |outcome: &PassOutcome<'_>| {
            for b in outcome.reports.iter().filter(|b| !b.unchanged) {
                tracing::info!(branch = %b.branch, rev = ?b.revision, commit = ?b.status_commit, "pass done");
                for e in &b.errors {
                    tracing::warn!(branch = %b.branch, "{e}");
                }
            }
            if let Some(state) = &observer {
                state.observe(outcome);
            }
            if let Some(f) = fleet.as_ref().filter(|_| outcome.leading) {
                tokio::task::block_in_place(|| f.publish(clock_now.now()));
            }
            if let Some(c) = campaigns.as_ref().filter(|_| outcome.leading) {
                let now = clock_now.now();
                let outcomes = tokio::task::block_in_place(|| c.drive(now));
                timer.arm(&outcomes, now);
            }
            if let Some(c) = &checks {
                tokio::task::block_in_place(|| c.run());
            }
        })
        .await;
        // The server and the elector live exactly as long as the loop.
        if let Some((_, stop, task)) = server {
            let _ = stop.send(());
            task.await??;
        }
        if let Some((stop, task)) = elector {
            let _ = stop.send(());
            let _ = task.await;
        }
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

impl RunArgs {
    /// Starts campaigning for the Lease; `r` writes only while it leads.
    async fn elector(
        &self,
        r: &mut Reconciler,
        triggers: &Triggers,
    ) -> anyhow::Result<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )> {
        let client = kube::Client::try_default().await.context(
            "--leader-elect needs a Kubernetes configuration (KUBECONFIG or in-cluster)",
        )?;
        let identity = match &self.lease_identity {
            Some(id) => id.clone(),
            None => format!(
                "{}-{}",
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| "fermata".into()),
                std::process::id()
            ),
        };
        let settings = LeaseSettings::new(
            self.lease_namespace.clone(),
            self.lease_name.clone(),
            identity,
            self.lease_duration,
        );
        tracing::info!(lease = %format!("{}/{}", settings.namespace, settings.name), identity = %settings.identity, "campaigning for leadership");
        let elector = Elector::new(client, settings).waking(triggers.sender());
        r.leadership = elector.leadership();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(elector.run(async {
            let _ = stopped.await;
        }));
        Ok((stop, task))
    }
}

/// `--publish-fleet`: after a pass, the fleet view of the first watched
/// branch, read from the repository the pass fetched (site branches
/// included), committed to `fermata/fleet`.
struct FleetPublisher {
    git_dir: PathBuf,
    remote: Option<String>,
    branch: String,
}

impl FleetPublisher {
    fn of(r: &Reconciler) -> FleetPublisher {
        FleetPublisher {
            git_dir: r.ctx.source.git_dir().to_path_buf(),
            remote: r.ctx.source.remote().map(str::to_string),
            branch: r.ctx.settings.branches.first().cloned().unwrap_or_default(),
        }
    }

    /// The new commit, if any; a failure is logged and retried next pass.
    fn publish(&self, now: DateTime<Utc>) -> Option<git2::Oid> {
        let stale = crate::fleet::DEFAULT_STALE;
        match crate::fleet::publish(&self.git_dir, self.remote.clone(), &self.branch, now, stale) {
            Ok(commit) => {
                if let Some(c) = commit {
                    tracing::info!(commit = %c, branch = crate::fleet::FLEET_BRANCH, "fleet view committed");
                }
                commit
            }
            Err(e) => {
                tracing::error!(error = %crate::errors::chain(&e), "cannot publish the fleet view");
                None
            }
        }
    }
}

/// Self-driving campaigns (DESIGN.md section 10), advanced after every
/// pass of a central `fermata run` on a repository it writes in place:
/// sites' status branches moving, an approval merged, a window opening and
/// the interval are the events that wake it.
struct CampaignDriver(crate::campaign::drive::Driver);

impl CampaignDriver {
    /// `None` where campaigns are not driven (a site agent); a
    /// `--signing-key` that cannot sign fails at start, not at the first step.
    fn of(r: &Reconciler, a: &RunArgs) -> anyhow::Result<Option<CampaignDriver>> {
        let s = &r.ctx.settings;
        let signing = a
            .signing_key
            .as_deref()
            .map(crate::campaign::commit::Signing::from_key_file)
            .transpose()
            .context("--signing-key")?;
        let Some(branch) = s.branches.first() else {
            return Ok(None);
        };
        if s.site.is_some() {
            return Ok(None);
        }
        // A URL: the same mirror the reconciler reads, pushed to.
        let mirror = match r.ctx.source.remote() {
            Some(_) => Some(crate::source::GitSource::open(&s.repo, &s.state_dir)?),
            None => None,
        };
        Ok(Some(CampaignDriver(crate::campaign::drive::Driver {
            mirror,
            repo: r.ctx.source.git_dir().to_path_buf(),
            branch: branch.clone(),
            status_branch: s.status_branch.clone(),
            signing,
            trust: s.signatures.clone(),
            forge: r.pulls.as_ref().and_then(|p| p.forge.clone()),
        })))
    }

    /// Each activation stepped; failures are logged, never the pass's.
    fn drive(&self, now: DateTime<Utc>) -> Vec<(String, crate::campaign::drive::Outcome)> {
        match self.0.drive_all(now) {
            Ok(outcomes) => {
                for (name, o) in &outcomes {
                    tracing::info!(activation = %name, outcome = ?o, "campaign stepped");
                }
                outcomes
            }
            Err(e) => {
                tracing::warn!(error = %crate::errors::chain(&e), "cannot drive campaigns");
                Vec::new()
            }
        }
    }
}

/// Wakes the run loop when a campaign's wait ends or an await times out,
/// so that does not wait for the next interval. One timer at a time: the
/// earliest still ahead.
struct CampaignTimer {
    wake: tokio::sync::mpsc::Sender<&'static str>,
    armed: std::sync::Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
}

impl CampaignTimer {
    fn new(wake: tokio::sync::mpsc::Sender<&'static str>) -> CampaignTimer {
        CampaignTimer {
            wake,
            armed: Default::default(),
        }
    }

    fn arm(&self, outcomes: &[(String, crate::campaign::drive::Outcome)], now: DateTime<Utc>) {
        use crate::campaign::drive::Outcome;
        let Some(at) = outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Waiting(_, until) => *until,
                _ => None,
            })
            .filter(|t| *t > now)
            .min()
        else {
            return;
        };
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        if armed.is_some_and(|a| a > now && a <= at) {
            return;
        }
        *armed = Some(at);
        let (wake, delay) = (self.wake.clone(), (at - now).to_std().unwrap_or_default());
        tokio::spawn(async move {
            tokio::time::sleep(delay + std::time::Duration::from_millis(10)).await;
            let _ = wake.try_send("campaign timer");
        });
    }
}

/// A site agent's part in campaigns: the checks a stage asks this site to
/// run (remote execution), after every pass.
struct SiteChecks {
    git_dir: PathBuf,
    branch: String,
    status_branch: String,
    site: String,
    sink: crate::status::StatusRepo,
    /// The watched head and activation states last looked at: unchanged,
    /// nothing is loaded again.
    seen: std::sync::Mutex<Option<(git2::Oid, git2::Oid)>>,
}

impl SiteChecks {
    fn of(r: &Reconciler) -> Option<SiteChecks> {
        let s = &r.ctx.settings;
        let site = s.site.clone()?;
        let git_dir = r.ctx.source.git_dir().to_path_buf();
        Some(SiteChecks {
            sink: crate::status::StatusRepo::new(
                git_dir.clone(),
                r.ctx.source.remote().map(str::to_string),
                "fermata/status",
                Some(site.clone()),
            ),
            git_dir,
            branch: s.branches.first()?.clone(),
            // Where drivers keep activation states (a site's own status
            // branch is its `fermata/sites/<site>`).
            status_branch: "fermata/status".into(),
            site,
            seen: Default::default(),
        })
    }

    /// The checks run; failures are logged, never the pass's. Costs one
    /// ref lookup while no activation state exists or nothing moved.
    fn run(&self) -> Vec<String> {
        let Ok(repo) = git2::Repository::open(&self.git_dir) else {
            return Vec::new();
        };
        let id = |spec: String| repo.revparse_single(&spec).ok().map(|o| o.id());
        let Some(states) = id(format!("refs/heads/{}:campaigns", self.status_branch)) else {
            return Vec::new();
        };
        let Some(head) = id(format!("refs/heads/{}", self.branch)) else {
            return Vec::new();
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == Some((head, states)) {
            return Vec::new();
        }
        let fleet = match crate::source::GitSource::open(
            &self.git_dir.display().to_string(),
            std::path::Path::new("."),
        )
        .and_then(|g| {
            let rev = g.resolve(&format!("refs/heads/{}", self.branch))?;
            g.snapshot(rev)
        }) {
            Ok(snap) => crate::model::load(&snap, "").fleet,
            Err(e) => {
                tracing::warn!(error = %crate::errors::chain(&e), "cannot read campaigns");
                return Vec::new();
            }
        };
        if fleet.campaigns.is_empty() {
            *seen = Some((head, states));
            return Vec::new();
        }
        match crate::campaign::remote::run_for_site(
            &self.git_dir,
            &fleet,
            &self.status_branch,
            &self.sink,
            &self.site,
        ) {
            // Looked at: until something moves, nothing to do (a failure
            // is tried again next pass).
            Ok(ran) => {
                *seen = Some((head, states));
                ran
            }
            Err(e) => {
                tracing::warn!(error = %crate::errors::chain(&e), "cannot report campaign checks");
                Vec::new()
            }
        }
    }
}

/// Who writes the state directory for a short command (`ungate`,
/// `apply-now`): this process, holding the lock, runs the passes itself; or
/// a running `fermata run` holds it, and the command only records and wakes it.
pub enum StateWriter {
    This(StateLock),
    Daemon(Option<u32>),
}

impl StateWriter {
    pub fn take(state_dir: &std::path::Path) -> anyhow::Result<StateWriter> {
        match StateLock::acquire(state_dir) {
            Ok(lock) => Ok(StateWriter::This(lock)),
            Err(LockError::Held { pid, .. }) => Ok(StateWriter::Daemon(pid)),
            Err(e) => Err(e.into()),
        }
    }

    /// Wakes the daemon (SIGHUP: fetch and a full pass at once) and says so.
    pub fn wake(pid: Option<u32>, what: &str) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let woken = pid
            .and_then(|p| i32::try_from(p).ok())
            .is_some_and(|p| kill(Pid::from_raw(p), Signal::SIGHUP).is_ok());
        match (pid, woken) {
            (Some(p), true) => outln!("{what}: recorded; fermata run (pid {p}) acts on it now"),
            _ => outln!("{what}: recorded; the running fermata run acts on it at its next pass"),
        }
    }
}

/// Fetches for a one-shot command; a failure is a warning, since the last
/// good revision in the mirror is still reconciled.
pub async fn fetch_or_warn(r: &mut Reconciler) {
    if let Err(e) = r.fetch().await {
        errln!("warning: {:#}", anyhow::Error::from(e));
    }
}

/// A site agent for a site the repository does not define is a mistake to
/// stop at, not an empty fleet to reconcile (DESIGN.md section 9). Checked
/// on the first watched branch's head; a repository without Site objects
/// is one implicit site, which `--site` only names.
pub async fn check_site(r: &Reconciler) -> anyhow::Result<()> {
    let (Some(site), Some(branch)) = (&r.ctx.settings.site, r.ctx.settings.branches.first()) else {
        return Ok(());
    };
    let Ok(rev) = r.ctx.source.resolve(&format!("refs/heads/{branch}")).await else {
        return Ok(()); // the pass reports a missing branch
    };
    let snap = r.ctx.source.snapshot(rev).await?;
    let fleet = crate::model::load(&snap, &r.ctx.settings.path).fleet;
    if fleet.has_sites() {
        fleet
            .site(site)
            .with_context(|| format!("--site: on {branch}@{}", rev.short()))?;
    }
    Ok(())
}

pub fn exit_code(reports: &[BranchReport]) -> ExitCode {
    let failed = reports
        .iter()
        .any(|b| !b.errors.is_empty() || b.rows.iter().any(|r| r.state == State::Failed));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A table a person can read, one line per composition.
pub fn print_reports(reports: &[BranchReport], status_branch: &str) {
    for b in reports {
        let rev = b.revision.map(|r| r.short()).unwrap_or_else(|| "-".into());
        let site = b
            .site
            .as_deref()
            .map(|s| format!("site {s}: "))
            .unwrap_or_default();
        outln!(
            "{site}branch {} @ {rev}{}",
            b.branch,
            if b.unchanged { " (unchanged)" } else { "" }
        );
        if !b.rows.is_empty() {
            outln!(
                "  {:<32} {:<10} {:<12} {:<16} NOTE",
                "COMPOSITION",
                "STATE",
                "DIGEST",
                "WINDOW"
            );
        }
        for r in &b.rows {
            outln!(
                "  {:<32} {:<10} {:<12} {:<16} {}",
                r.id.to_string(),
                r.state.as_str(),
                r.digest.map(|d| d.short()).unwrap_or_else(|| "-".into()),
                r.window.as_deref().unwrap_or("-"),
                r.note
            );
        }
        for e in &b.errors {
            outln!("  error: {e}");
        }
        if let Some(c) = b.status_commit {
            let to = match &b.site {
                Some(site) => crate::status::site_branch(site),
                None => status_branch.to_string(),
            };
            outln!("  status: committed {} to {to}", &c.to_string()[..7]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::drive::Outcome;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The loop is woken when the earliest wait ends, once per timer: a
    /// later wait does not re-arm it, an earlier one does.
    #[tokio::test(start_paused = true)]
    async fn a_campaign_timer_wakes_the_loop_at_the_earliest_wait() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let timer = CampaignTimer::new(tx);
        let now = at("2026-12-01T10:00:00Z");
        let waiting = |until: &str| {
            let o = Outcome::Waiting("wait".into(), Some(at(until)));
            vec![("a".to_string(), o), ("b".to_string(), Outcome::Finished)]
        };
        timer.arm(&waiting("2026-12-01T11:00:00Z"), now);
        timer.arm(&waiting("2026-12-01T12:00:00Z"), now);
        let started = tokio::time::Instant::now();
        assert_eq!(rx.recv().await, Some("campaign timer"));
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_secs(3600)
                && waited < std::time::Duration::from_secs(3601),
            "{waited:?}"
        );
        assert!(
            rx.try_recv().is_err(),
            "the later wait did not arm a second timer"
        );
        // Nothing ahead (a wait already over): no timer.
        timer.arm(&waiting("2026-12-01T09:00:00Z"), now);
        tokio::time::sleep(std::time::Duration::from_secs(7200)).await;
        assert!(rx.try_recv().is_err());
    }
}
