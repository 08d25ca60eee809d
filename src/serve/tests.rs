//! The router, driven without a socket (`oneshot`), and the trigger channel
//! read directly: a webhook either puts exactly one message on it or none.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::*;
use crate::model::CompositionId;
use crate::reconcile::{BranchReport, Row};
use crate::status::State;

const SECRET: &[u8] = b"It's a Secret to Everybody";
const PUSH_MAIN: &str = r#"{"ref":"refs/heads/main","after":"3f2a"}"#;

fn state(secret: Option<&[u8]>) -> (Arc<ServeState>, mpsc::Receiver<&'static str>) {
    let (tx, rx) = mpsc::channel(8);
    let st = ServeState::new(vec!["main".into()], secret.map(<[u8]>::to_vec), tx);
    (Arc::new(st), rx)
}

async fn call(st: &Arc<ServeState>, req: Request<Body>) -> (StatusCode, String) {
    let resp = app(st.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn hook(body: &str, headers: &[(&str, String)]) -> Request<Body> {
    let mut req = Request::post("/hooks/git").header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.body(Body::from(body.to_string())).expect("request")
}

fn hex_hmac(key: &[u8], body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn github_sig(key: &[u8], body: &str) -> (&'static str, String) {
    (
        "x-hub-signature-256",
        format!("sha256={}", hex_hmac(key, body)),
    )
}

fn outcome_row(name: &str, state: State, window: Option<&str>) -> Row {
    Row {
        id: CompositionId::new("shop", name),
        state,
        digest: None,
        window: window.map(str::to_string),
        note: String::new(),
        action: None,
        skipped: None,
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let (st, _rx) = state(None);
    assert_eq!(
        call(&st, get("/healthz")).await,
        (StatusCode::OK, "ok".into())
    );
}

#[tokio::test]
async fn readyz_is_503_until_the_first_pass_then_200() {
    let (st, _rx) = state(None);
    assert_eq!(
        call(&st, get("/readyz")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    st.observe(&PassOutcome {
        reports: &[],
        elapsed: Duration::from_millis(5),
        fetch_failed: false,
        artifact_bytes: 0,
        leading: true,
    });
    assert_eq!(call(&st, get("/readyz")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_reflect_the_last_full_pass_of_each_branch() {
    let (st, _rx) = state(None);
    let full = BranchReport {
        branch: "main".into(),
        rows: vec![
            outcome_row("a", State::Installed, None),
            outcome_row("b", State::Staged, Some("sat")),
            outcome_row("c", State::Staged, Some("sat")),
            outcome_row("d", State::Failed, Some("night")),
        ],
        windows: [("sat", false), ("night", true)]
            .map(|(name, open)| {
                let w = crate::report::WindowInfo {
                    zone: "UTC".into(),
                    open,
                    next_open: None,
                };
                (name.to_string(), w)
            })
            .into(),
        ..BranchReport::default()
    };
    st.observe(&PassOutcome {
        reports: std::slice::from_ref(&full),
        elapsed: Duration::from_millis(250),
        fetch_failed: true,
        artifact_bytes: 3000,
        leading: true,
    });
    // A settled branch reports no rows: the gauges keep the last full pass.
    let settled = BranchReport {
        branch: "main".into(),
        unchanged: true,
        ..BranchReport::default()
    };
    st.observe(&PassOutcome {
        reports: std::slice::from_ref(&settled),
        elapsed: Duration::from_millis(1),
        fetch_failed: false,
        artifact_bytes: 4096,
        leading: false,
    });

    let (status, text) = call(&st, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "fermata_passes_total 2",
        "fermata_fetch_errors_total 1",
        "fermata_pass_duration_seconds_count 2",
        "fermata_compositions{state=\"installed\"} 1",
        "fermata_compositions{state=\"staged\"} 2",
        "fermata_compositions{state=\"failed\"} 1",
        "fermata_compositions{state=\"removing\"} 0",
        "fermata_window_open{window=\"sat\"} 0",
        "fermata_window_open{window=\"night\"} 1",
        "fermata_artifact_bytes_total 4096",
        "fermata_leader 0",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
}

#[tokio::test]
async fn signed_push_to_a_watched_branch_triggers_exactly_one_pass() {
    let (st, mut rx) = state(Some(SECRET));
    let (status, body) = call(&st, hook(PUSH_MAIN, &[github_sig(SECRET, PUSH_MAIN)])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(rx.try_recv(), Ok("webhook"));
    assert!(rx.try_recv().is_err(), "exactly one trigger");
}

#[tokio::test]
async fn gitea_signature_is_accepted() {
    let (st, mut rx) = state(Some(SECRET));
    let sig = ("x-gitea-signature", hex_hmac(SECRET, PUSH_MAIN));
    let (status, body) = call(&st, hook(PUSH_MAIN, &[sig])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(rx.try_recv(), Ok("webhook"));
}

#[tokio::test]
async fn wrong_or_missing_signature_is_401_and_triggers_nothing() {
    let (st, mut rx) = state(Some(SECRET));
    let wrong_key = github_sig(b"guess", PUSH_MAIN);
    let other_body = github_sig(SECRET, r#"{"ref":"refs/heads/dev"}"#);
    let not_hex = ("x-hub-signature-256", "sha256=zz".to_string());
    let no_prefix = ("x-hub-signature-256", hex_hmac(SECRET, PUSH_MAIN));
    for headers in [
        vec![wrong_key],
        vec![other_body],
        vec![not_hex],
        vec![no_prefix],
        vec![],
    ] {
        let (status, _) = call(&st, hook(PUSH_MAIN, &headers)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
    }
    assert!(rx.try_recv().is_err(), "nothing triggered");
}

#[tokio::test]
async fn unwatched_branch_is_accepted_and_ignored() {
    let (st, mut rx) = state(Some(SECRET));
    let body = r#"{"ref":"refs/heads/feature"}"#;
    let (status, text) = call(&st, hook(body, &[github_sig(SECRET, body)])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(text.contains("ignored"), "{text}");
    assert!(rx.try_recv().is_err(), "nothing triggered");
}

#[tokio::test]
async fn signed_body_that_is_not_a_push_is_400() {
    let (st, mut rx) = state(Some(SECRET));
    for body in ["not json", r#"{"zen":"no ref"}"#] {
        let (status, _) = call(&st, hook(body, &[github_sig(SECRET, body)])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert!(rx.try_recv().is_err(), "nothing triggered");
}

#[tokio::test]
async fn no_secret_configured_means_no_webhook() {
    let (st, mut rx) = state(None);
    let (status, _) = call(&st, hook(PUSH_MAIN, &[github_sig(SECRET, PUSH_MAIN)])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(rx.try_recv().is_err(), "nothing triggered");
}

#[test]
fn secret_file_is_trimmed_and_never_empty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join("secret");
    std::fs::write(&p, "  s3cret\n").expect("write");
    assert_eq!(read_secret(&p, "webhook secret").expect("read"), b"s3cret");
    std::fs::write(&p, "\n").expect("write");
    assert!(matches!(
        read_secret(&p, "webhook secret"),
        Err(ServeError::SecretEmpty { .. })
    ));
    assert!(matches!(
        read_secret(&dir.path().join("absent"), "webhook secret"),
        Err(ServeError::SecretRead { .. })
    ));
    // Each file is named for what it is.
    let e = read_secret(&p, "artifact token").expect_err("empty");
    assert!(e.to_string().starts_with("artifact token "), "{e}");
}

#[tokio::test]
async fn readyz_turns_503_while_the_loop_is_stuck_in_a_pass() {
    let triggers = crate::reconcile::Triggers::new();
    let progress = triggers.progress();
    let st = Arc::new(
        ServeState::new(vec!["main".into()], None, triggers.sender())
            .watch_progress(progress.clone(), Duration::from_millis(300)),
    );
    let pass = PassOutcome {
        reports: &[],
        elapsed: Duration::from_millis(5),
        fetch_failed: false,
        artifact_bytes: 0,
        leading: true,
    };
    st.observe(&pass);
    assert_eq!(call(&st, get("/readyz")).await.0, StatusCode::OK);
    // Asleep until its interval, however long: ready.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(call(&st, get("/readyz")).await.0, StatusCode::OK);
    // A fetch and pass that do not end: unready once past the threshold.
    progress.set(true);
    assert_eq!(call(&st, get("/readyz")).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = call(&st, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no pass completed for"), "{body}");
    assert!(body.contains("--ready-stale"), "{body}");
    // It ends: ready again.
    st.observe(&pass);
    progress.set(false);
    assert_eq!(call(&st, get("/readyz")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_replayed_delivery_wakes_the_loop_once() {
    let (st, mut rx) = state(Some(SECRET));
    let delivery = (
        "x-github-delivery",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string(),
    );
    let mut wakeups = 0;
    for i in 0..1000 {
        let (status, body) = call(
            &st,
            hook(
                PUSH_MAIN,
                &[github_sig(SECRET, PUSH_MAIN), delivery.clone()],
            ),
        )
        .await;
        if i == 0 {
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        } else {
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body.contains("duplicate delivery"), "{body}");
        }
        // Drained each time, as a running loop would: only new deliveries wake it.
        while rx.try_recv().is_ok() {
            wakeups += 1;
        }
    }
    assert_eq!(wakeups, 1);
    // Gitea's header is remembered the same way.
    let gitea = ("x-gitea-delivery", "a1b2".to_string());
    let sig = ("x-gitea-signature", hex_hmac(SECRET, PUSH_MAIN));
    for _ in 0..3 {
        call(&st, hook(PUSH_MAIN, &[sig.clone(), gitea.clone()])).await;
    }
    assert_eq!(rx.try_recv(), Ok("webhook"));
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn an_unsigned_replay_cannot_push_a_delivery_out_of_memory() {
    let (st, mut rx) = state(Some(SECRET));
    let id = |i: usize| ("x-github-delivery", format!("d-{i}"));
    call(
        &st,
        hook(PUSH_MAIN, &[github_sig(SECRET, PUSH_MAIN), id(0)]),
    )
    .await;
    assert_eq!(rx.try_recv(), Ok("webhook"));
    // Unsigned requests with new ids are refused before they are remembered.
    for i in 1..=1500 {
        let (status, _) = call(&st, hook(PUSH_MAIN, &[id(i)])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = call(
        &st,
        hook(PUSH_MAIN, &[github_sig(SECRET, PUSH_MAIN), id(0)]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn a_burst_of_distinct_deliveries_is_at_most_one_pending_wakeup() {
    // The run loop's own channel: one pending wake-up at most.
    let triggers = crate::reconcile::Triggers::new();
    let st = Arc::new(ServeState::new(
        vec!["main".into()],
        Some(SECRET.to_vec()),
        triggers.sender(),
    ));
    for i in 0..200 {
        let (status, body) = call(
            &st,
            hook(
                PUSH_MAIN,
                &[
                    github_sig(SECRET, PUSH_MAIN),
                    ("x-github-delivery", format!("burst-{i}")),
                ],
            ),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let tx = triggers.sender();
    assert!(
        matches!(
            tx.try_send("probe"),
            Err(mpsc::error::TrySendError::Full(_))
        ),
        "exactly one wake-up pending"
    );
}

#[tokio::test]
async fn artifacts_are_served_only_to_bearers_of_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = b"weights";
    let digest = crate::model::Digest::of(content);
    std::fs::write(dir.path().join(digest.to_hex()), content).expect("write");
    let (st, _rx) = state(None);
    let uri = format!("/artifacts/sha256/{}", digest.to_hex());
    assert_eq!(
        call(&st, get(&uri)).await.0,
        StatusCode::NOT_FOUND,
        "no token configured"
    );

    let (tx, _rx) = mpsc::channel(8);
    let st = Arc::new(
        ServeState::new(vec!["main".into()], None, tx).serve_artifacts(ArtifactAccess {
            dir: dir.path().to_path_buf(),
            token: b"tok".to_vec(),
        }),
    );
    let with = |uri: &str, token: &str| {
        Request::get(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request")
    };
    assert_eq!(call(&st, get(&uri)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&st, with(&uri, "nope")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&st, with(&uri, "tok")).await,
        (StatusCode::OK, "weights".into())
    );
    let missing = format!(
        "/artifacts/sha256/{}",
        crate::model::Digest::of(b"x").to_hex()
    );
    assert_eq!(
        call(&st, with(&missing, "tok")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&st, with("/artifacts/sha256/..%2Fetc", "tok")).await.0,
        StatusCode::BAD_REQUEST
    );
}
