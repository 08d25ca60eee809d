//! fermata's network edges under hostile conditions (issue 11): a Git server
//! that accepts and then says nothing, a backlog that never accepts, a
//! stuck reconcile loop behind `/readyz`, slow-loris HTTP clients, and
//! replayed webhooks. Every server here listens on 127.0.0.1 only, every
//! client loop is bounded in count and time, and every process is killed
//! when its test ends.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use util::TestRepo;
use wait_timeout::ChildExt;

/// Kills the process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP server on 127.0.0.1 that accepts every connection and, while
/// stalled, never says a word; otherwise it forwards to `backend` (a git
/// daemon). Stops accepting after two minutes, or when dropped.
struct Stall {
    addr: SocketAddr,
    stalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stall {
    fn new(backend: Option<SocketAddr>) -> Stall {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(backend.is_none()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stalled.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let end = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && Instant::now() < end {
                match listener.accept() {
                    Ok((conn, _)) if s.load(Ordering::Relaxed) => held.push(conn),
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        if let Some(back) = backend.and_then(|b| TcpStream::connect(b).ok()) {
                            forward(conn, back);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Stall {
            addr,
            stalled,
            stop,
            thread: Some(thread),
        }
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::Relaxed);
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies bytes both ways until either side closes.
fn forward(a: TcpStream, b: TcpStream) {
    for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// `fermata ARGS` with a fresh state dir; panics if it runs past `limit`.
fn fermata_within(args: &[&str], limit: Duration) -> (util::Run, Duration) {
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args(args)
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("FERMATA_LOG")
        .env("GIT_SSL_NO_VERIFY", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fermata runs");
    let status = match child.wait_timeout(limit).unwrap() {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "fermata {args:?} still running after {limit:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let took = started.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let run = util::Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    };
    (run, took)
}

#[test]
fn a_silent_git_server_fails_the_fetch_within_the_timeout_on_every_transport() {
    let stall = Stall::new(None);
    let port = stall.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/fleet.git"),
        // TLS: the ClientHello is never answered.
        format!("https://127.0.0.1:{port}/fleet.git"),
        format!("git://127.0.0.1:{port}/fleet.git"),
        // SSH: no banner ever comes.
        format!("ssh://git@127.0.0.1:{port}/fleet.git"),
    ] {
        let (run, took) = fermata_within(
            &[
                "run",
                "--once",
                "--repo",
                &url,
                "--branch",
                "main",
                "--git-timeout",
                "2s",
                "--git-connect-timeout",
                "5s",
            ],
            Duration::from_secs(60),
        );
        assert_ne!(run.code, 0, "{url}: {run:?}");
        assert!(took < Duration::from_secs(20), "{url}: took {took:?}");
        assert!(
            run.stderr.contains(&format!("cannot fetch {url}")),
            "{url}: {run:?}"
        );
        assert!(
            run.stderr.contains("--git-timeout 2s"),
            "{url}: the timeout is not named: {run:?}"
        );
    }
}

#[tokio::test]
async fn a_server_that_never_accepts_fails_the_connect_within_its_timeout() {
    // A listen backlog of one, filled and never accepted: the kernel drops
    // further SYNs, so a connect hangs (on loopback, without any route trick).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        if let Ok(c) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fill.push(c);
        }
    }
    let url = format!("git://{addr}/fleet.git");
    let (run, took) = tokio::task::spawn_blocking(move || {
        fermata_within(
            &[
                "run",
                "--once",
                "--repo",
                &url,
                "--branch",
                "main",
                "--git-connect-timeout",
                "1s",
                "--git-timeout",
                "30s",
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    assert_ne!(run.code, 0, "{run:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        run.stderr.contains("--git-connect-timeout 1s"),
        "the timeout is not named: {run:?}"
    );
    drop(listener);
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `get(path)` on `addr` answers `want`, or panics after `within`.
fn wait_status(addr: &str, path: &str, want: u16, within: Duration, log: &Path) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((status, body)) = http_get(addr, path) {
            if status == want {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {want}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.1 GET on a new connection: (status, body).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, out.clone()))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// The value of `name` (a counter or gauge without labels) in `/metrics`.
fn metric(addr: &str, name: &str) -> Option<u64> {
    let (_, text) = http_get(addr, "/metrics").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn spawn_daemon(args: &[&str], state: &Path, env: &[(&str, &str)]) -> Running {
    let log = std::fs::File::create(state.join("stderr.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .arg("run")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .envs(env.iter().copied())
        .env_remove("FERMATA_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("fermata runs");
    Running(child)
}

/// The minimal fleet, committed, in a bare repository under `dir`; and the
/// working repository to push from.
fn fleet(dir: &Path) -> (PathBuf, TestRepo) {
    let work = TestRepo::new();
    util::minimal(&work);
    work.commit("v1");
    let bare = util::bare_clone(work.path(), dir, "fleet.git");
    work.git(&["remote", "add", "origin", bare.to_str().unwrap()]);
    (bare, work)
}

fn push_v2(work: &TestRepo) {
    work.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v2"),
    );
    work.commit("v2");
    work.git(&["push", "-q", "origin", "main"]);
}

fn wait_for_file(path: &Path, want: &str, within: Duration, log: &Path) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|m| m.contains(want)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} never contained {want:?}\n{}",
        path.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn the_daemon_keeps_passing_against_a_stalled_remote_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (_bare, work) = fleet(dir.path());
    let port = free_port();
    let _daemon = util::GitDaemon::start(dir.path(), port, true);
    let proxy = Stall::new(Some(([127, 0, 0, 1], port).into()));
    let url = format!("git://{}/fleet.git", proxy.addr);

    // The mirror is made while the server answers...
    let state = tempfile::tempdir().unwrap();
    let first = util::fermata_at(
        state.path(),
        &["run", "--once", "--repo", &url, "--branch", "main"],
        "2026-11-21T02:30:00Z",
        &[],
    );
    assert_eq!(first.code, 0, "{first:?}");
    let manifest = state
        .path()
        .join("targets/site/shop/app/current/manifest.yaml");
    assert!(std::fs::read_to_string(&manifest)
        .unwrap()
        .contains("tag: v1"));

    // ... then it accepts and says nothing.
    proxy.stall(true);
    let addr = format!("127.0.0.1:{}", free_port());
    let log = state.path().join("stderr.log");
    let run = spawn_daemon(
        &[
            "--repo",
            &url,
            "--branch",
            "main",
            "--interval",
            "1s",
            "--git-timeout",
            "1s",
            "--git-connect-timeout",
            "1s",
            "--listen",
            &addr,
            "--ready-stale",
            "1m",
        ],
        state.path(),
        &[],
    );
    wait_status(&addr, "/readyz", 200, Duration::from_secs(30), &log);
    // Fetches fail after 1 s each (with backoff: 1 s, 2 s, 4 s between them),
    // and every one is followed by a pass over the last good revision.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let errors = metric(&addr, "fermata_fetch_errors_total").unwrap_or(0);
        if errors >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fetch errors stay at {errors}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let passes = metric(&addr, "fermata_passes_total").unwrap();
    assert!(passes >= 3, "{passes} passes");
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&addr, "/readyz").unwrap().0, 200);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("fetch failed") && logged.contains("--git-timeout 1s"),
        "{logged}"
    );
    // Status pushes to the silent server end the same way.
    assert!(
        logged
            .lines()
            .any(|l| l.contains("cannot write status") && l.contains("--git-timeout 1s")),
        "{logged}"
    );

    // The server answers again: SIGHUP fetches at once and the new commit is applied.
    proxy.stall(false);
    push_v2(&work);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for_file(&manifest, "tag: v2", Duration::from_secs(30), &log);
}

#[test]
fn readyz_fails_while_the_loop_is_blocked_and_recovers_after() {
    let dir = tempfile::tempdir().unwrap();
    let (bare, work) = fleet(dir.path());
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("stderr.log");
    let block = dir.path().join("block");
    let addr = format!("127.0.0.1:{}", free_port());
    let _run = spawn_daemon(
        &[
            "--repo",
            bare.to_str().unwrap(),
            "--branch",
            "main",
            "--interval",
            "1h",
            "--listen",
            &addr,
            "--ready-stale",
            "2s",
        ],
        state.path(),
        &[],
    );
    wait_status(&addr, "/readyz", 200, Duration::from_secs(30), &log);
    // Asleep for its hour-long interval, longer than --ready-stale: not stuck.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(http_get(&addr, "/readyz").unwrap().0, 200);
    // A push starts a pass that blocks in a render (a command that waits
    // while `block` exists): not in a fetch, so no git timeout can end it.
    std::fs::write(&block, "").unwrap();
    work.write(
        "synth/app.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {name: app}\nspec:\n  command: [./render.sh]\n  timeout: 120s\n",
    );
    let script = work.path().join("synth/render.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >/dev/null\nn=0; while [ -e '{}' ] && [ $n -lt 900 ]; do sleep 0.1; n=$((n+1)); done\nprintf 'apiVersion: config.kubernetes.io/v1\\nkind: ResourceList\\nitems:\\n  - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: app, namespace: default}}, data: {{tag: v2}}}}\\n'\n",
            block.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    work.commit("a render that blocks");
    work.git(&["push", "-q", "origin", "main"]);
    let body = wait_status(&addr, "/readyz", 503, Duration::from_secs(30), &log);
    assert!(body.contains("no pass completed for"), "{body}");
    assert_eq!(
        http_get(&addr, "/healthz").unwrap().0,
        200,
        "liveness holds"
    );
    std::fs::remove_file(&block).unwrap();
    wait_status(&addr, "/readyz", 200, Duration::from_secs(30), &log);
}

/// One slow-loris connection: sends a request line, then a header byte now and then.
struct Loris {
    conn: Option<TcpStream>,
    opened: Instant,
}

impl Loris {
    fn open(addr: &SocketAddr) -> Loris {
        let conn = TcpStream::connect_timeout(addr, Duration::from_secs(1))
            .ok()
            .and_then(|mut c| {
                c.set_nonblocking(true).ok()?;
                c.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").ok()?;
                Some(c)
            });
        Loris {
            conn,
            opened: Instant::now(),
        }
    }

    /// Whether the server has closed it (EOF or reset).
    fn closed(&mut self) -> bool {
        let Some(c) = &mut self.conn else {
            return true;
        };
        let mut buf = [0u8; 256];
        let gone = match c.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        };
        if gone {
            self.conn = None;
        }
        gone
    }

    fn drip(&mut self) {
        if let Some(c) = &mut self.conn {
            if c.write_all(b"a").is_err() {
                self.conn = None;
            }
        }
    }
}

#[test]
fn slow_loris_clients_neither_starve_the_probes_nor_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let (bare, _work) = fleet(dir.path());
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("stderr.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let _run = spawn_daemon(
        &[
            "--repo",
            bare.to_str().unwrap(),
            "--branch",
            "main",
            "--interval",
            "1h",
            "--listen",
            &addr,
            "--http-header-timeout",
            "2s",
            "--http-max-connections",
            "16",
        ],
        state.path(),
        &[],
    );
    wait_status(&addr, "/readyz", 200, Duration::from_secs(30), &log);
    let sock: SocketAddr = addr.parse().unwrap();

    // 200 connections at once: only 16 can be open, the rest are closed
    // well before the header timeout.
    let mut loris: Vec<Loris> = (0..200).map(|_| Loris::open(&sock)).collect();
    std::thread::sleep(Duration::from_millis(700));
    let early: Vec<_> = loris
        .iter_mut()
        .filter(|l| l.opened.elapsed() < Duration::from_millis(1900))
        .map(|l| l.closed())
        .collect();
    let closed_early = early.iter().filter(|c| **c).count();
    assert!(
        closed_early >= 200 - 16,
        "{closed_early} of {} connections closed before the header timeout",
        early.len()
    );

    // For 12 s the attacker keeps 200 connections going (reconnecting the
    // closed ones, 20 per tick) and drips a header byte every 2 s; the
    // probes are answered all along.
    let probes = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (probes, stop, addr) = (probes.clone(), stop.clone(), addr.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let got = http_get(&addr, "/healthz");
                if !got.as_ref().is_ok_and(|(s, _)| *s == 200) {
                    eprintln!("probe: {got:?}");
                }
                let ok = got.is_ok_and(|(s, _)| s == 200);
                probes.lock().unwrap().push(ok);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let attack_end = Instant::now() + Duration::from_secs(12);
    let mut last_drip = Instant::now();
    let mut reconnects = 0;
    while Instant::now() < attack_end {
        let mut budget = 20;
        for l in loris.iter_mut() {
            if l.closed() && budget > 0 {
                *l = Loris::open(&sock);
                budget -= 1;
                reconnects += 1;
            }
        }
        if last_drip.elapsed() >= Duration::from_secs(2) {
            loris.iter_mut().for_each(Loris::drip);
            last_drip = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    let probes = probes.lock().unwrap().clone();
    let failed = probes.iter().filter(|ok| !**ok).count();
    let worst_run = probes.split(|ok| *ok).map(<[bool]>::len).max().unwrap_or(0);
    eprintln!(
        "{} probes, {failed} failed, {reconnects} reconnects, {closed_early} closed early",
        probes.len()
    );
    assert!(probes.len() >= 20, "{} probes", probes.len());
    assert!(
        failed * 10 <= probes.len() && worst_run < 3,
        "{failed} of {} probes failed ({worst_run} in a row) during the attack ({reconnects} reconnects)\n{}",
        probes.len(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The attacker stops reconnecting: every connection it holds is closed
    // within the header timeout, however it drips.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        loris.iter_mut().for_each(Loris::drip);
        std::thread::sleep(Duration::from_millis(500));
    }
    let open = loris.iter_mut().map(|l| !l.closed()).filter(|o| *o).count();
    assert_eq!(open, 0, "connections still open past the header timeout");
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
}

const SECRET: &str = "s3cret";

fn signed(body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn replayed_and_bursting_webhooks_cause_a_bounded_number_of_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (bare, _work) = fleet(dir.path());
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("stderr.log");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _run = spawn_daemon(
        &[
            "--repo",
            bare.to_str().unwrap(),
            "--branch",
            "main",
            "--interval",
            "1h",
            "--listen",
            &addr,
            "--webhook-secret-file",
            secret.to_str().unwrap(),
            "--min-pass-interval",
            "2s",
        ],
        state.path(),
        &[],
    );
    {
        let (a, l) = (addr.clone(), log.clone());
        tokio::task::spawn_blocking(move || {
            wait_status(&a, "/readyz", 200, Duration::from_secs(30), &l)
        })
        .await
        .unwrap();
    }
    let passes = |addr: String| async move {
        tokio::task::spawn_blocking(move || metric(&addr, "fermata_passes_total"))
            .await
            .unwrap()
            .unwrap()
    };
    // Let the start settle (the first pass may be followed by one woken by its own status commit).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = passes(addr.clone()).await;

    let http = reqwest::Client::new();
    let body = r#"{"ref":"refs/heads/main"}"#;
    let hook = |delivery: String| {
        http.post(format!("http://{addr}/hooks/git"))
            .header("x-hub-signature-256", signed(body))
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let started = Instant::now();
    let mut accepted = 0;
    let mut duplicates = 0;
    for _ in 0..1000 {
        let r = hook("replayed-delivery".into()).await.unwrap();
        match r.status().as_u16() {
            202 => accepted += 1,
            200 => duplicates += 1,
            s => panic!("status {s}"),
        }
    }
    assert_eq!((accepted, duplicates), (1, 999));
    // Distinct deliveries, one every 20 ms for 4 s: each would be worth a
    // pass, but they wake the loop at most every --min-pass-interval.
    for i in 0..200 {
        let r = hook(format!("distinct-{i}")).await.unwrap();
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    // Whatever is pending runs within the minimum interval.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = passes(addr.clone()).await;
    let allowed = 2 + (took + Duration::from_secs(5)).as_secs() / 2;
    eprintln!("{} passes in {took:?} + 5 s", after - before);
    assert!(
        after - before <= allowed,
        "{} passes in {:?} (at most {allowed})\n{}",
        after - before,
        took + Duration::from_secs(5),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(after > before, "the webhooks woke the loop");
}
