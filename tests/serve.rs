//! `fermata run --listen`: the real binary serves its endpoints. It is a real
//! process, so readiness is polled with a deadline. That a webhook wakes the
//! loop is proven by the router tests (`src/serve/tests.rs`): here the bare
//! repository is also watched by notify, so a pass would not say which woke it.

mod util;

use sha2::Digest as _;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use util::TestRepo;

const SECRET: &str = "s3cret";

/// Kills the process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn spawn_run(repo: &Path, state: &Path, addr: &str, secret: &Path) -> Running {
    let log = std::fs::File::create(state.join("stderr.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args(["run", "--repo"])
        .arg(repo)
        .args(["--branch", "main", "--interval", "1h", "--listen", addr])
        .arg("--webhook-secret-file")
        .arg(secret)
        .arg("--state-dir")
        .arg(state)
        .env_remove("FERMATA_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("fermata runs");
    Running(child)
}

fn stderr_of(state: &Path) -> String {
    std::fs::read_to_string(state.join("stderr.log")).unwrap_or_default()
}

#[tokio::test]
async fn run_with_listen_serves_readiness_metrics_and_the_webhook() {
    let work = TestRepo::new();
    util::minimal(&work);
    // A 1000-byte artifact shipped in the repository: fermata_artifact_bytes_total counts it.
    let model = vec![b'm'; 1000];
    let sha = hex::encode(sha2::Sha256::digest(&model));
    std::fs::create_dir_all(work.path().join("synth")).unwrap();
    std::fs::write(work.path().join("synth/model.bin"), &model).unwrap();
    work.write(
        "synth/app.yaml",
        &format!("{}  artifacts:\n    - {{name: model.bin, url: model.bin, sha256: {sha}, size: 1000}}\n", util::SYNTH),
    );
    work.commit("v1");
    let dir = tempfile::tempdir().unwrap();
    let bare = util::bare_clone(work.path(), dir.path(), "r.git");
    let state = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _run = spawn_run(&bare, state.path(), &addr, &secret);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    // Ready once the first pass has completed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered 200\n{}",
            stderr_of(state.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    let passes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("fermata_passes_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fermata_passes_total in\n{text}"));
    assert!(passes >= 1, "{text}");
    assert!(
        text.contains("fermata_compositions{state=\"installed\"} 1"),
        "{text}"
    );
    assert!(text.contains("fermata_artifact_bytes_total 1000"), "{text}");
    assert!(text.contains("fermata_leader 1"), "{text}");

    let body = r#"{"ref":"refs/heads/main"}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let hook = http
        .post(format!("{base}/hooks/git"))
        .header("x-hub-signature-256", sig)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 202, "{}", stderr_of(state.path()));

    let unsigned = http
        .post(format!("{base}/hooks/git"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
}
