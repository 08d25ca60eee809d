//! Kill -9 at any point, then restart: the reconciler converges, `current`
//! is always one complete state, and the artifact store never holds a file
//! under a digest it does not hash to (DESIGN.md invariants 4 and 7).
//!
//! The artifact is served slowly by a real HTTP server on 127.0.0.1 (with
//! Range support), so kills land while downloading, while staging and while
//! applying; each run is killed a little later than the one before.

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use sha2::{Digest, Sha256};
use util::TestRepo;

const SIZE: usize = 1 << 20;

fn payload() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 31 % 251) as u8).collect()
}

/// Serves `payload()` in 32 KiB chunks, 5 ms apart, honouring `Range: bytes=N-`.
fn serve(requests: Arc<AtomicUsize>) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/model.bin",
                axum::routing::get(move |headers: HeaderMap| {
                    let requests = requests.clone();
                    async move {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let start = headers
                            .get("range")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("bytes="))
                            .and_then(|v| v.trim_end_matches('-').parse::<usize>().ok())
                            .unwrap_or(0)
                            .min(SIZE);
                        let data = payload()[start..].to_vec();
                        let stream = futures_util::stream::unfold(data, |mut rest| async move {
                            if rest.is_empty() {
                                return None;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            let tail = rest.split_off(rest.len().min(32 * 1024));
                            Some((Ok::<_, std::io::Error>(rest), tail))
                        });
                        let mut response = Response::builder();
                        if start > 0 {
                            response = response.status(StatusCode::PARTIAL_CONTENT).header(
                                "content-range",
                                format!("bytes {start}-{}/{SIZE}", SIZE - 1),
                            );
                        }
                        response
                            .header("content-length", (SIZE - start).to_string())
                            .body(Body::from_stream(stream))
                            .unwrap()
                    }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (format!("http://{addr}/model.bin"), handle)
}

fn fleet(repo: &TestRepo, url: &str) {
    let sha = hex::encode(Sha256::digest(payload()));
    util::minimal(repo)
        .write(
            "synth/app.yaml",
            &format!(
                "{}  artifacts:\n    - {{name: model.bin, url: \"{url}\", sha256: {sha}, size: {SIZE}}}\n",
                util::SYNTH
            ),
        )
        .write(
            "more.yaml",
            &util::SYMPHONY
                .replace("name: shop", "name: more")
                .replace("variations:\n", "variations:\n    - {name: one, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: one}]}\n    - {name: two, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: two}]}\n"),
        );
}

/// Invariants that must hold at every instant, in particular right after a kill.
fn check_invariants(state: &Path) {
    let store = state.join("artifacts/sha256");
    if let Ok(rd) = std::fs::read_dir(&store) {
        for e in rd.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                e.file_name().to_string_lossy(),
                "store holds a file under a digest it does not hash to"
            );
        }
    }
    for comp in ["shop/app", "more/app", "more/one", "more/two"] {
        let current = state.join("targets/site").join(comp).join("current");
        if std::fs::symlink_metadata(&current).is_ok() {
            let manifest = std::fs::read_to_string(current.join("manifest.yaml"))
                .unwrap_or_else(|e| panic!("{comp}: current is not complete: {e}"));
            assert!(manifest.contains("kind: ConfigMap"), "{comp}: {manifest}");
            assert!(
                current.join("composition.yaml").exists(),
                "{comp}: no composition.yaml"
            );
        }
    }
}

#[test]
fn kill_minus_nine_at_any_point_then_restart_converges() {
    let requests = Arc::new(AtomicUsize::new(0));
    let (url, _server) = serve(requests.clone());
    let repo = TestRepo::new();
    fleet(&repo, &url);
    repo.commit("fleet with an artifact");
    let state = tempfile::tempdir().unwrap();
    let command = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fermata"));
        c.args(["run", "--once", "--repo", repo.path().to_str().unwrap()])
            .args(["--branch", "main", "--state-dir"])
            .arg(state.path());
        c
    };
    let mut interrupted = 0;
    for i in 0..12u64 {
        let mut child = command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fermata runs");
        std::thread::sleep(Duration::from_millis(40 + 35 * i));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if status.code().is_none() {
            interrupted += 1;
        }
        check_invariants(state.path());
    }
    // The kills must have landed while work was under way, not after it.
    assert!(
        interrupted >= 3,
        "only {interrupted} runs were killed before finishing"
    );
    let out = command().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_invariants(state.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("installed").count(), 4, "{stdout}");
    for (comp, tag) in [
        ("shop/app", "v1"),
        ("more/app", "v1"),
        ("more/one", "one"),
        ("more/two", "two"),
    ] {
        let dir = state.path().join("targets/site").join(comp).join("current");
        let m = std::fs::read_to_string(dir.join("manifest.yaml")).unwrap();
        assert!(m.contains(&format!("tag: {tag}")), "{comp}: {m}");
        assert_eq!(
            std::fs::read(dir.join("artifacts/model.bin")).unwrap(),
            payload()
        );
    }
    // One artifact shared by four compositions, fetched by digest: the
    // restarts resumed it, and the final run found it in the store.
    let n = requests.load(Ordering::SeqCst);
    assert!(n <= 13, "at most one request per run, got {n}");
}
