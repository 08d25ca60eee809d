//! Margo northbound (`run --margo-wos`, issue 16 point 8): changed
//! statuses go to a FAKE WOS (`util/fake_wos.rs`) that validates each body
//! against Margo's schema as vendored in `tests/margo/`; the status sink the
//! pass publishes through never waits for the WOS.

#[path = "util/fake_wos.rs"]
mod fake_wos;
mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fake_wos::{Answer, FakeWos, Received};
use fermata::status::northbound::{Northbound, NorthboundConfig, NorthboundSink};
use fermata::status::{
    ComponentStatus, DeploymentStatus, State, StatusBody, StatusError, StatusErrorInfo,
    StatusMetadata, StatusSink, StatusUpdate,
};
use fermata::target::SourceRef;

const TOKEN: &str = "wos-token-1";

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
}

fn status(id: &str, state: State, component: State) -> DeploymentStatus {
    DeploymentStatus {
        api_version: "fermata.dev/v1alpha1".into(),
        kind: "DeploymentStatus".into(),
        metadata: StatusMetadata {
            deployment_id: id.into(),
            composition: None,
            device_id: None,
            time_stamp: now(),
        },
        source: SourceRef {
            branch: "main".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
        },
        status: StatusBody {
            state,
            digest: Some("sha256:abc".into()),
            applied: None,
            window: None,
            conditions: Vec::new(),
            error: (state == State::Failed).then(|| StatusErrorInfo {
                code: "ApplyFailed".into(),
                source: "cluster".into(),
                message: "apps/v1/Deployment/line/db: denied".into(),
            }),
            r#override: None,
            symphony: None,
            ungated: Vec::new(),
            components: vec![ComponentStatus {
                name: "apps/v1/Deployment/line/db".into(),
                state: component,
                skipped: None,
                error: None,
            }],
        },
    }
}

fn update(statuses: Vec<DeploymentStatus>) -> StatusUpdate {
    StatusUpdate {
        source: SourceRef {
            branch: "main".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
        },
        statuses,
        summary: String::new(),
        table: String::new(),
        now: now(),
        windows: Default::default(),
    }
}

/// The status branch, recorded: how many publishes reached it.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<usize>>);

#[async_trait::async_trait]
impl StatusSink for Recorded {
    async fn publish(&self, _: StatusUpdate) -> Result<Option<git2::Oid>, StatusError> {
        *self.0.lock().unwrap() += 1;
        Ok(None)
    }
    async fn publish_plan_note(&self, _: git2::Oid, _: &str, _: &str) -> Result<bool, StatusError> {
        Ok(false)
    }
    fn for_site(&self, _: &str) -> Arc<dyn StatusSink> {
        Arc::new(self.clone())
    }
}

fn make_sink(wos: &FakeWos, state: &std::path::Path) -> (NorthboundSink, Recorded) {
    let mut cfg = NorthboundConfig::new(&wos.url, "device-7", TOKEN, state);
    cfg.backoff = Duration::from_millis(5);
    cfg.max_backoff = Duration::from_millis(20);
    let inner = Recorded::default();
    let nb = Northbound::start(cfg).expect("northbound");
    (
        NorthboundSink {
            inner: Arc::new(inner.clone()),
            northbound: nb,
            site: None,
        },
        inner,
    )
}

async fn next(wos: &mut FakeWos) -> Received {
    let got = wos.arrivals.recv().await.expect("a request");
    assert!(
        got.schema_errors.is_empty(),
        "{:?}: {:?}",
        got.body,
        got.schema_errors
    );
    got
}

#[tokio::test]
async fn a_changed_status_is_sent_once_with_the_token() {
    let mut wos = FakeWos::start().await;
    let state = tempfile::tempdir().unwrap();
    let (sink, _) = make_sink(&wos, state.path());

    let a = status("dep-a", State::Installing, State::Installing);
    sink.publish(update(vec![a.clone()]))
        .await
        .expect("publish");
    let got = next(&mut wos).await;
    assert_eq!(got.device, "device-7");
    assert_eq!(got.deployment, "dep-a");
    assert_eq!(got.authorization.as_deref(), Some("Bearer wos-token-1"));
    assert_eq!(got.body["status"]["state"], "installing");
    assert_eq!(got.body["components"][0]["state"], "installing");

    // Unchanged (a later time stamp aside): nothing. Then a failure of b
    // with its component's error: only b is sent.
    let mut later = a.clone();
    later.metadata.time_stamp = now() + chrono::TimeDelta::minutes(1);
    sink.publish(update(vec![later.clone()]))
        .await
        .expect("publish");
    let mut b = status("dep-b", State::Failed, State::Failed);
    b.status.components[0].error = b.status.error.clone();
    sink.publish(update(vec![later, b])).await.expect("publish");
    let got = next(&mut wos).await;
    assert_eq!(got.deployment, "dep-b");
    assert_eq!(got.body["status"]["error"]["code"], "ApplyFailed");
    assert_eq!(got.body["components"][0]["error"]["code"], "ApplyFailed");
    assert_eq!(wos.received().len(), 2, "dep-a sent once");

    // A restart remembers what was sent (in the state directory).
    drop(sink);
    let (sink, _) = make_sink(&wos, state.path());
    let c = status("dep-c", State::Pending, State::Pending);
    sink.publish(update(vec![a, c])).await.expect("publish");
    assert_eq!(next(&mut wos).await.deployment, "dep-c");
    assert_eq!(wos.received().len(), 3, "dep-a not sent again");
}

#[tokio::test]
async fn a_wos_answering_503_gets_the_retry() {
    let mut wos = FakeWos::start().await;
    wos.script([Answer::Status(503)]);
    let state = tempfile::tempdir().unwrap();
    let (sink, _) = make_sink(&wos, state.path());
    sink.publish(update(vec![status(
        "dep-a",
        State::Installed,
        State::Installed,
    )]))
    .await
    .expect("publish");
    let first = next(&mut wos).await;
    let second = next(&mut wos).await;
    assert_eq!(first.body, second.body, "the same manifest again");
    assert_eq!(second.deployment, "dep-a");
}

#[tokio::test]
async fn a_hanging_wos_does_not_delay_the_pass() {
    let mut wos = FakeWos::start().await;
    let (release, hang) = tokio::sync::oneshot::channel();
    wos.script([Answer::Hang(hang)]);
    let state = tempfile::tempdir().unwrap();
    let (sink, recorded) = make_sink(&wos, state.path());
    sink.publish(update(vec![status(
        "dep-a",
        State::Pending,
        State::Pending,
    )]))
    .await
    .expect("publish");
    // The request is at the WOS and not answered...
    let first = next(&mut wos).await;
    assert_eq!(first.body["status"]["state"], "pending");
    // ...and the next passes publish all the same, their statuses queued
    // (the latest per deployment wins).
    for state in [State::Installing, State::Installed] {
        sink.publish(update(vec![status("dep-a", state, state)]))
            .await
            .expect("publish");
    }
    assert_eq!(*recorded.0.lock().unwrap(), 3, "every pass published");
    assert_eq!(wos.received().len(), 1, "still the hanging request only");
    release.send(()).expect("the request still hangs");
    let got = next(&mut wos).await;
    assert_eq!(got.body["status"]["state"], "installed", "latest wins");
}

#[test]
fn the_margo_flags_are_checked_at_start() {
    let repo = util::TestRepo::new();
    util::minimal(&repo);
    repo.commit("one");
    let state = tempfile::tempdir().unwrap();
    let p = repo.path().to_str().unwrap();
    let base = ["run", "--once", "--repo", p, "--branch", "main"];
    let now = "2026-11-21T02:30:00Z";

    let mut args = base.to_vec();
    args.extend(["--margo-wos", "http://127.0.0.1:9"]);
    let run = util::fermata_at(state.path(), &args, now, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--margo-client-id"), "{run:?}");

    let token = state.path().join("token");
    std::fs::write(&token, "  \n").unwrap();
    let token = token.to_string_lossy().to_string();
    let mut args = base.to_vec();
    args.extend([
        "--margo-wos",
        "http://127.0.0.1:9",
        "--margo-client-id",
        "d1",
    ]);
    args.extend(["--margo-token-file", &token]);
    let run = util::fermata_at(state.path(), &args, now, &[]);
    assert_eq!(run.code, 2, "refused at start: {run:?}");
    assert!(
        run.stderr.contains("--margo-token-file") && run.stderr.contains("empty"),
        "{run:?}"
    );

    let mut args = base.to_vec();
    args.extend(["--margo-wos", "ftp://wos", "--margo-client-id", "d1"]);
    std::fs::write(&token, "t0k\n").unwrap();
    args.extend(["--margo-token-file", &token]);
    let run = util::fermata_at(state.path(), &args, now, &[]);
    assert_eq!(run.code, 2, "refused at start: {run:?}");
    assert!(run.stderr.contains("not an http(s) URL"), "{run:?}");
}

/// `run --once` ends only after the WOS accepted what its pass changed
/// (the sender runs in the background, which the process would otherwise
/// end before it sent anything).
#[test]
fn run_once_delivers_before_it_exits() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wos = rt.block_on(FakeWos::start());
    let repo = util::TestRepo::new();
    util::minimal(&repo);
    repo.commit("one");
    let state = tempfile::tempdir().unwrap();
    let token = state.path().join("token");
    std::fs::write(&token, "t0k\n").unwrap();
    let p = repo.path().to_str().unwrap();
    let token = token.to_string_lossy().to_string();
    let args = [
        "run",
        "--once",
        "--repo",
        p,
        "--branch",
        "main",
        "--margo-wos",
        &wos.url,
        "--margo-client-id",
        "d1",
        "--margo-token-file",
        &token,
    ];
    let run = util::fermata_at(state.path(), &args, "2026-11-21T02:30:00Z", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let got = wos.received();
    assert_eq!(got.len(), 1, "sent before the process ended: {run:?}");
    assert_eq!(got[0].body["status"]["state"], "installed");
}
