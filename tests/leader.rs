//! Leader election on a Lease of the faithful fake API server
//! (`util/kube_fake.rs`): one leader at a time, a hand-off when the leader
//! dies, a leader that cannot renew stops leading, and two real `fermata
//! run --leader-elect` processes on one repository where only the leader
//! applies. Lease expiry runs on real time (it is the point of a lease), so
//! these wait with deadlines, using short leases (long enough that a loaded
//! machine does not starve a healthy leader past its renew deadline).

#[path = "util/kube_fake.rs"]
mod kube_fake;
mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fermata::leader::{Elector, LeaseSettings};
use kube_fake::FakeKube;
use util::TestRepo;

fn client(fake: &FakeKube, dir: &Path) -> kube::Client {
    let path = dir.join("kubeconfig");
    fake.kubeconfig(&path, "fake", "default");
    let config = kube::config::Kubeconfig::read_from(&path).unwrap();
    let rt = tokio::runtime::Handle::current();
    let cfg = tokio::task::block_in_place(|| {
        rt.block_on(kube::Config::from_custom_kubeconfig(
            config,
            &kube::config::KubeConfigOptions::default(),
        ))
    })
    .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn settings(identity: &str, lease: Duration) -> LeaseSettings {
    LeaseSettings::new("default".into(), "fermata".into(), identity.into(), lease)
}

fn holder(fake: &FakeKube) -> Option<String> {
    fake.object(
        "coordination.k8s.io/v1",
        "Lease",
        Some("default"),
        "fermata",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_hand_off_after_expiry() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let lease = Duration::from_secs(2);
    let mut a = Elector::new(client(&fake, dir.path()), settings("a", lease));
    let mut b = Elector::new(client(&fake, dir.path()), settings("b", lease));
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a free lease is taken"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "a held lease is not"
    );
    assert!(a.leadership().is_leader() && !b.leadership().is_leader());
    assert_eq!(holder(&fake).as_deref(), Some("a"));
    // a keeps renewing: b never gets it, however long it tries.
    let started = Instant::now();
    let mut renewed = Instant::now();
    while started.elapsed() < lease + Duration::from_millis(500) {
        assert!(a.try_acquire_or_renew().await.unwrap());
        renewed = Instant::now();
        assert!(!b.try_acquire_or_renew().await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // a stops renewing (it died): b takes over once the record did not
    // change for a lease duration on b's own clock, and not before.
    let died = Instant::now();
    loop {
        if b.try_acquire_or_renew().await.unwrap() {
            break;
        }
        assert!(
            died.elapsed() < Duration::from_secs(20),
            "b never took over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        renewed.elapsed() >= lease,
        "taken over {:?} after the last renewal, before the lease expired",
        renewed.elapsed()
    );
    assert_eq!(holder(&fake).as_deref(), Some("b"));
    let l = fake
        .object(
            "coordination.k8s.io/v1",
            "Lease",
            Some("default"),
            "fermata",
        )
        .unwrap();
    assert_eq!(l["spec"]["leaseTransitions"], 1, "{l}");
    // a, back from the dead, sees b's lease and does not lead any more.
    assert!(!a.try_acquire_or_renew().await.unwrap());
    assert!(!a.leadership().is_leader());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_candidates_cannot_both_win() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let name = format!("race-{round}");
        let mk = |id: &str| {
            let mut s = settings(id, Duration::from_secs(10));
            s.name = name.clone();
            Elector::new(client(&fake, dir.path()), s)
        };
        let (mut a, mut b) = (mk("a"), mk("b"));
        let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(ra ^ rb, "round {round}: a={ra} b={rb}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_leading_within_the_deadline() {
    let fake = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let lease = Duration::from_secs(3);
    let mut a = Elector::new(client(&fake, dir.path()), settings("a", lease));
    assert!(a.try_acquire_or_renew().await.unwrap());
    let leadership = a.leadership();
    let cut = Instant::now();
    drop(fake); // the API server is gone: no renewal can succeed
    assert!(a.try_acquire_or_renew().await.is_err());
    while leadership.is_leader() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lapsed = cut.elapsed();
    assert!(
        lapsed < lease,
        "stopped leading after {lapsed:?}, not within the lease duration {lease:?}"
    );
}

/// Kills the process when the test ends, however it ends.
struct Running(Child, PathBuf);

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(repo: &Path, state: &Path, targets: &Path, kubeconfig: &Path, id: &str) -> Running {
    let log = state.with_extension("log");
    let child = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args([
            "run",
            "--branch",
            "main",
            "--interval",
            "1h",
            "--leader-elect",
        ])
        .args(["--lease-duration", "6s", "--lease-identity", id, "--repo"])
        .arg(repo)
        .arg("--state-dir")
        .arg(state)
        .arg("--target-root")
        .arg(targets)
        .env("KUBECONFIG", kubeconfig)
        .env("FERMATA_LOG", "fermata=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("fermata runs");
    Running(child, log)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

fn manifest(targets: &Path) -> String {
    std::fs::read_to_string(targets.join("site/shop/app/current/manifest.yaml")).unwrap_or_default()
}

#[test]
fn two_replicas_only_the_leader_applies_and_the_other_takes_over() {
    let fake = FakeKube::start();
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    fake.kubeconfig(&kubeconfig, "fake", "default");
    let work = TestRepo::new();
    util::minimal(&work);
    work.commit("v1");
    let bare = util::bare_clone(work.path(), tmp.path(), "r.git");
    work.git(&["remote", "add", "origin", bare.to_str().unwrap()]);
    let targets = tmp.path().join("targets");

    let a = spawn(&bare, &tmp.path().join("a"), &targets, &kubeconfig, "a");
    wait_until("a leads and applied v1", || {
        holder(&fake).as_deref() == Some("a") && manifest(&targets).contains("v1")
    });
    let b = spawn(&bare, &tmp.path().join("b"), &targets, &kubeconfig, "b");
    wait_until("b campaigns", || {
        b.log().contains("campaigning for leadership")
    });

    let push = |v: &str| {
        work.write(
            "symphony.yaml",
            &util::SYMPHONY.replace("value: v1", &format!("value: {v}")),
        );
        work.commit(v);
        work.git(&["push", "-q", "origin", "main"]);
    };
    push("v2");
    wait_until("a applied v2", || manifest(&targets).contains("v2"));
    assert_eq!(holder(&fake).as_deref(), Some("a"));
    assert!(
        !b.log().contains("applied"),
        "b wrote while a led:\n{}",
        b.log()
    );
    assert!(!b.log().contains("leading"), "{}", b.log());

    // a dies without releasing: b takes over after the lease expires.
    drop(a);
    wait_until("b leads", || holder(&fake).as_deref() == Some("b"));
    push("v3");
    wait_until("b applied v3", || manifest(&targets).contains("v3"));
    // The log line follows the switch of `current`: wait for it too.
    wait_until("b logged the apply", || b.log().contains("applied"));
    // b stops cleanly (SIGTERM) and releases the lease for the next replica.
    let pid = nix::unistd::Pid::from_raw(b.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_until("b released the lease", || holder(&fake).is_none());
}
