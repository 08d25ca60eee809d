//! The artifact store against a real HTTP server on 127.0.0.1 that supports
//! ranges, counts requests and can cut a transfer short.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use fermata::model::{Artifact, Digest};
use fermata::source::{Entry, Revision, Snapshot};
use fermata::stage::{ArtifactStore, StageError};
use futures_util::StreamExt;

mod util;

/// What the server saw: path and `Range` header of every request.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct Server {
    files: Mutex<HashMap<String, Vec<u8>>>,
    /// Cut the next response after this many body bytes (once).
    cut_after: Mutex<Option<usize>>,
    ignore_range: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

struct TestServer {
    state: Arc<Server>,
    base: String,
}

impl TestServer {
    async fn start() -> TestServer {
        let state = Arc::new(Server::default());
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestServer { state, base }
    }

    fn put(&self, path: &str, data: &[u8]) -> String {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), data.to_vec());
        format!("{}{path}", self.base)
    }

    fn cut_next_after(&self, k: usize) {
        *self.state.cut_after.lock().unwrap() = Some(k);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        self.seen().len()
    }
}

/// `/status/NNN` answers NNN; other paths serve their file, honouring
/// `Range: bytes=N-` unless told to ignore it.
async fn serve(State(s): State<Arc<Server>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_string();
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap().to_string());
    s.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let respond = |status: StatusCode| Response::builder().status(status);
    if let Some(code) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return respond(status).body(Body::from("nope")).unwrap();
    }
    let Some(data) = s.files.lock().unwrap().get(&path).cloned() else {
        return respond(StatusCode::NOT_FOUND).body(Body::empty()).unwrap();
    };
    let len = data.len();
    let start = match range.filter(|_| !s.ignore_range.load(Ordering::SeqCst)) {
        None => None,
        Some(r) => {
            let n: usize = r
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .unwrap()
                .parse()
                .unwrap();
            if n >= len {
                return respond(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .body(Body::empty())
                    .unwrap();
            }
            Some(n)
        }
    };
    let builder = match start {
        Some(n) => respond(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {n}-{}/{len}", len - 1),
        ),
        None => respond(StatusCode::OK),
    };
    let body = data[start.unwrap_or(0)..].to_vec();
    let builder = builder.header(header::CONTENT_LENGTH, body.len());
    match s.cut_after.lock().unwrap().take() {
        // Announce the whole length, send K bytes, then fail the stream: the
        // connection is aborted mid-body, as when a link drops. The stream is
        // pending once in between, so hyper flushes the K bytes before it sees
        // the error (not a delay: the task is woken at once).
        Some(k) => {
            let first = Bytes::copy_from_slice(&body[..k]);
            let chunks =
                futures_util::stream::iter([Ok(first)]).chain(futures_util::stream::once(async {
                    tokio::task::yield_now().await;
                    Err(std::io::Error::other("cut"))
                }));
            builder.body(Body::from_stream(chunks)).unwrap()
        }
        None => builder.body(Body::from(body)).unwrap(),
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn artifact(name: &str, url: &str, content: &[u8]) -> Artifact {
    Artifact {
        name: name.to_string(),
        url: url.to_string(),
        repo_path: None,
        sha256: Digest::of(content),
        size: Some(content.len() as u64),
    }
}

fn empty_snapshot() -> Snapshot {
    Snapshot::new(Revision(git2::Oid::ZERO_SHA1), BTreeMap::new())
}

fn partial_of(state: &tempfile::TempDir, d: &Digest) -> PathBuf {
    state.path().join("artifacts/partial").join(d.to_hex())
}

/// Fetches one artifact and returns its result.
async fn fetch_one(store: &ArtifactStore, a: &Artifact) -> Result<PathBuf, StageError> {
    let mut results = store
        .fetch_all(std::slice::from_ref(a), &empty_snapshot())
        .await;
    assert_eq!(results.len(), 1);
    results.remove(&a.sha256).unwrap()
}

#[tokio::test]
async fn downloads_verifies_and_stores_under_the_digest() {
    let server = TestServer::start().await;
    let content = data(100_000, 1);
    let a = artifact("model.onnx", &server.put("/m.onnx", &content), &content);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();

    let path = fetch_one(&store, &a).await.unwrap();

    assert_eq!(path, store.path_of(&a.sha256));
    assert_eq!(
        path,
        state
            .path()
            .join("artifacts/sha256")
            .join(a.sha256.to_hex())
    );
    assert_eq!(std::fs::read(&path).unwrap(), content);
    assert!(store.contains(&a.sha256));
    assert!(store.verify(&a.sha256).unwrap());
    assert!(!partial_of(&state, &a.sha256).exists());
    assert_eq!(
        server.seen(),
        vec![Seen {
            path: "/m.onnx".into(),
            range: None
        }]
    );
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let server = TestServer::start().await;
    let content = data(200_000, 2);
    let a = artifact("model.onnx", &server.put("/m.onnx", &content), &content);
    server.cut_next_after(70_000);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();

    let path = fetch_one(&store, &a).await.unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), content);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some("bytes=70000-"));
    assert!(!partial_of(&state, &a.sha256).exists());
}

#[tokio::test]
async fn a_partial_left_by_a_killed_process_is_resumed() {
    let server = TestServer::start().await;
    let content = data(50_000, 3);
    let a = artifact("model.onnx", &server.put("/m.onnx", &content), &content);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();
    std::fs::write(partial_of(&state, &a.sha256), &content[..12_345]).unwrap();

    let path = fetch_one(&store, &a).await.unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), content);
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, vec![Some("bytes=12345-".to_string())]);
}

#[tokio::test]
async fn a_complete_partial_is_installed_without_a_request() {
    // The process died after the download, before the rename.
    let server = TestServer::start().await;
    let content = data(5_000, 4);
    let a = artifact("model.onnx", &server.put("/m.onnx", &content), &content);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();
    std::fs::write(partial_of(&state, &a.sha256), &content).unwrap();

    let path = fetch_one(&store, &a).await.unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), content);
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn a_server_ignoring_the_range_is_downloaded_from_the_start() {
    let server = TestServer::start().await;
    let content = data(50_000, 5);
    let a = artifact("model.onnx", &server.put("/m.onnx", &content), &content);
    server.state.ignore_range.store(true, Ordering::SeqCst);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();
    std::fs::write(partial_of(&state, &a.sha256), &content[..10_000]).unwrap();

    let path = fetch_one(&store, &a).await.unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), content);
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, vec![Some("bytes=10000-".to_string())]);
}

#[tokio::test]
async fn a_wrong_prefix_is_dropped_and_the_download_restarted() {
    // A partial that does not belong to the file (changed on the server, or
    // damaged): the resumed file does not verify, so it is fetched again whole.
    let server = TestServer::start().await;
    let content = data(50_000, 6);
    let a = artifact("model.onnx", &server.put("/m.onnx", &content), &content);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();
    std::fs::write(partial_of(&state, &a.sha256), vec![0u8; 10_000]).unwrap();

    let path = fetch_one(&store, &a).await.unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), content);
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, vec![Some("bytes=10000-".to_string()), None]);
}

#[tokio::test]
async fn range_not_satisfiable_restarts_the_download() {
    // Size not declared, and a partial longer than the file: the server answers 416.
    let server = TestServer::start().await;
    let content = data(10_000, 7);
    let mut a = artifact("model.onnx", &server.put("/m.onnx", &content), &content);
    a.size = None;
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();
    std::fs::write(partial_of(&state, &a.sha256), vec![0u8; 20_000]).unwrap();

    let path = fetch_one(&store, &a).await.unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), content);
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, vec![Some("bytes=20000-".to_string()), None]);
}

#[tokio::test]
async fn a_wrong_sha256_is_rejected_and_leaves_nothing_behind() {
    let server = TestServer::start().await;
    let content = data(30_000, 8);
    let url = server.put("/m.onnx", &content);
    let mut a = artifact("model.onnx", &url, &content);
    let served = a.sha256;
    a.sha256 = Digest::of(b"something else");
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();

    let err = fetch_one(&store, &a).await.unwrap_err();

    assert!(
        matches!(&err, StageError::Sha256Mismatch { expected, .. } if *expected == a.sha256),
        "{err:?}"
    );
    // The declared value only: what the source hashes to is not for status.
    assert_eq!(
        err.to_string(),
        format!(
            "artifact \"model.onnx\" ({url}): does not match the declared sha256 {}",
            a.sha256
        )
    );
    assert!(!store.path_of(&a.sha256).exists());
    assert!(!store.path_of(&served).exists());
    assert!(!partial_of(&state, &a.sha256).exists());
    assert!(!store.verify(&a.sha256).unwrap());

    // Nothing was kept to be trusted later: the next pass downloads again and fails again.
    assert!(matches!(
        fetch_one(&store, &a).await,
        Err(StageError::Sha256Mismatch { .. })
    ));
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, vec![None, None]);
    assert!(!store.path_of(&a.sha256).exists());
}

#[tokio::test]
async fn a_wrong_size_is_rejected() {
    let server = TestServer::start().await;
    let content = data(30_000, 9);
    let url = server.put("/m.onnx", &content);
    let mut a = artifact("model.onnx", &url, &content);
    a.size = Some(30_001);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();

    let err = fetch_one(&store, &a).await.unwrap_err();

    assert!(
        matches!(
            err,
            StageError::SizeMismatch {
                expected: 30_001,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("artifact \"model.onnx\" ({url}): does not match the declared size of 30001 bytes")
    );
    assert!(!store.path_of(&a.sha256).exists());
    assert!(!partial_of(&state, &a.sha256).exists());
}

#[tokio::test]
async fn one_digest_used_by_two_compositions_is_fetched_once() {
    let server = TestServer::start().await;
    let content = data(40_000, 10);
    let url = server.put("/m.onnx", &content);
    let vision = artifact("model", &url, &content);
    let inspect = artifact("inspection-model", &url, &content);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();

    let results = store
        .fetch_all(&[vision.clone(), inspect], &empty_snapshot())
        .await;

    assert_eq!(results.len(), 1);
    assert!(results[&vision.sha256].is_ok());
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn concurrent_passes_share_one_download() {
    let server = TestServer::start().await;
    let content = data(40_000, 11);
    let url = server.put("/m.onnx", &content);
    let a = artifact("model", &url, &content);
    let b = artifact("other-name", &url, &content);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();
    let other = store.clone();
    let snap = empty_snapshot();

    let (ra, rb) = tokio::join!(
        store.fetch_all(std::slice::from_ref(&a), &snap),
        other.fetch_all(std::slice::from_ref(&b), &snap)
    );

    assert!(ra[&a.sha256].is_ok());
    assert!(rb[&b.sha256].is_ok());
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn distinct_digests_are_all_fetched() {
    let server = TestServer::start().await;
    let artifacts: Vec<_> = (0..7u8)
        .map(|i| {
            let content = data(10_000 + i as usize, i);
            artifact(
                &format!("a{i}"),
                &server.put(&format!("/a{i}"), &content),
                &content,
            )
        })
        .collect();
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();

    let results = store.fetch_all(&artifacts, &empty_snapshot()).await;

    assert_eq!(results.len(), 7);
    for a in &artifacts {
        assert_eq!(
            results[&a.sha256].as_ref().unwrap(),
            &store.path_of(&a.sha256)
        );
    }
    assert_eq!(server.requests(), 7);
}

#[tokio::test]
async fn an_artifact_already_stored_costs_no_request() {
    let server = TestServer::start().await;
    let content = data(20_000, 12);
    let a = artifact("model", &server.put("/m.onnx", &content), &content);
    let state = tempfile::tempdir().unwrap();
    fetch_one(&ArtifactStore::new(state.path()).unwrap(), &a)
        .await
        .unwrap();
    assert_eq!(server.requests(), 1);

    // A restart: a new store on the same state directory.
    let store = ArtifactStore::new(state.path()).unwrap();
    let path = fetch_one(&store, &a).await.unwrap();

    assert_eq!(path, store.path_of(&a.sha256));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn file_urls_are_copied_and_verified() {
    let src = tempfile::tempdir().unwrap();
    let content = data(70_000, 13);
    let file = src.path().join("model.onnx");
    std::fs::write(&file, &content).unwrap();
    let url = reqwest::Url::from_file_path(&file).unwrap().to_string();
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path())
        .unwrap()
        .with_file_roots(&[src.path().to_path_buf()])
        .unwrap();

    let a = artifact("model", &url, &content);
    let path = fetch_one(&store, &a).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), content);

    let mut wrong_size = artifact("model", &url, &data(1, 0));
    wrong_size.size = Some(5);
    assert!(matches!(
        fetch_one(&store, &wrong_size).await,
        Err(StageError::SizeMismatch { expected: 5, .. })
    ));
    let mut wrong_hash = wrong_size.clone();
    wrong_hash.size = None;
    assert!(matches!(
        fetch_one(&store, &wrong_hash).await,
        Err(StageError::Sha256Mismatch { .. })
    ));
    assert!(!store.path_of(&wrong_hash.sha256).exists());
    assert!(!partial_of(&state, &wrong_hash.sha256).exists());

    let missing_url = reqwest::Url::from_file_path(src.path().join("missing"))
        .unwrap()
        .to_string();
    let missing = artifact("gone", &missing_url, &content[..10]);
    let err = fetch_one(&store, &missing).await.unwrap_err();
    assert!(matches!(err, StageError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("artifact \"gone\" ({missing_url}): file not found")
    );
}

#[tokio::test]
async fn repository_files_are_stored_and_verified() {
    let content = b"calibration: 42\n".to_vec();
    let entries = BTreeMap::from([(
        "synth/files/cal.yaml".to_string(),
        Entry::File {
            data: Arc::from(&content[..]),
            executable: false,
        },
    )]);
    let snap = Snapshot::new(Revision(git2::Oid::ZERO_SHA1), entries);
    let mut a = artifact("calibration", "./files/cal.yaml", &content);
    a.repo_path = Some("synth/files/cal.yaml".into());
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();

    let results = store.fetch_all(std::slice::from_ref(&a), &snap).await;
    let path = results[&a.sha256].as_ref().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), content);

    let mut wrong = a.clone();
    wrong.sha256 = Digest::of(b"other");
    wrong.size = None;
    let results = store.fetch_all(std::slice::from_ref(&wrong), &snap).await;
    assert!(matches!(
        results[&wrong.sha256],
        Err(StageError::Sha256Mismatch { .. })
    ));
    assert!(!store.path_of(&wrong.sha256).exists());

    let mut missing = artifact("gone", "./files/gone.bin", b"x");
    missing.repo_path = Some("synth/files/gone.bin".into());
    let results = store.fetch_all(std::slice::from_ref(&missing), &snap).await;
    let err = results[&missing.sha256].as_ref().unwrap_err();
    assert_eq!(
        err.to_string(),
        "artifact \"gone\" (./files/gone.bin): file not found in the repository at 0000000: synth/files/gone.bin"
    );
}

#[tokio::test]
async fn http_errors_are_reported_clearly() {
    let server = TestServer::start().await;
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();

    for (code, text) in [(404, "404 Not Found"), (500, "500 Internal Server Error")] {
        let url = format!("{}/status/{code}", server.base);
        let a = artifact("model.onnx", &url, b"anything");
        let err = fetch_one(&store, &a).await.unwrap_err();
        assert!(
            matches!(err, StageError::HttpStatus { status, .. } if status.as_u16() == code),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("artifact \"model.onnx\" ({url}): HTTP {text}")
        );
        assert!(!store.path_of(&a.sha256).exists());
    }
    assert_eq!(server.requests(), 2);

    // Nobody listening: the connection error carries its cause.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/m.onnx", closed.local_addr().unwrap());
    drop(closed);
    let a = artifact("model.onnx", &url, b"anything");
    let err = fetch_one(&store, &a).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StageError::Fetch { .. }), "{err:?}");
    assert!(
        msg.starts_with(&format!(
            "artifact \"model.onnx\" ({url}): request failed: "
        )),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("connect"), "{msg}");

    let a = artifact("model.onnx", "ftp://example.invalid/m", b"anything");
    let err = fetch_one(&store, &a).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot fetch ftp:// URLs"),
        "{err}"
    );
}

#[tokio::test]
async fn verify_removes_a_corrupted_file() {
    let server = TestServer::start().await;
    let content = data(10_000, 14);
    let a = artifact("model", &server.put("/m.onnx", &content), &content);
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();
    let path = fetch_one(&store, &a).await.unwrap();
    assert!(store.verify(&a.sha256).unwrap());

    std::fs::write(&path, b"bit rot").unwrap();
    assert!(!store.verify(&a.sha256).unwrap());
    assert!(!path.exists());

    // The next pass downloads it again.
    fetch_one(&store, &a).await.unwrap();
    assert!(store.verify(&a.sha256).unwrap());
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn old_partials_can_be_cleaned() {
    let state = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(state.path()).unwrap();
    let d = Digest::of(b"abandoned");
    std::fs::write(partial_of(&state, &d), b"half").unwrap();

    assert_eq!(
        store
            .clean_partials_older_than(std::time::Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert!(partial_of(&state, &d).exists());
    assert_eq!(
        store
            .clean_partials_older_than(std::time::Duration::ZERO)
            .unwrap(),
        1
    );
    assert!(!partial_of(&state, &d).exists());
}

/// A store whose only `file://` root is `root`.
fn store_with_root(state: &tempfile::TempDir, root: &std::path::Path) -> ArtifactStore {
    ArtifactStore::new(state.path())
        .unwrap()
        .with_file_roots(&[root.to_path_buf()])
        .unwrap()
}

/// Asserts `err` says nothing of what `content` hashes to or how long it is.
fn assert_reveals_nothing(err: &StageError, content: &[u8]) {
    let msg = err.to_string();
    let real = Digest::of(content).to_string();
    assert!(!msg.contains(&real), "{msg}");
    assert!(!msg.contains(&real[..12]), "{msg}");
    assert!(!msg.contains(&content.len().to_string()), "{msg}");
}

#[tokio::test]
async fn file_urls_outside_every_root_are_refused_without_being_read() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let content = data(12_345, 21);
    let secret = outside.path().join("secret");
    std::fs::write(&secret, &content).unwrap();
    let url = reqwest::Url::from_file_path(&secret).unwrap().to_string();
    // Declared wrong, as someone probing for the real digest would.
    let mut a = artifact("probe", &url, b"a guess");
    a.size = None;

    for (store, state, why) in [
        {
            let state = tempfile::tempdir().unwrap();
            (
                ArtifactStore::new(state.path()).unwrap(),
                state,
                "no --artifact-root is configured",
            )
        },
        {
            let state = tempfile::tempdir().unwrap();
            (
                store_with_root(&state, root.path()),
                state,
                "it is not under any --artifact-root",
            )
        },
    ] {
        let err = fetch_one(&store, &a).await.unwrap_err();
        assert!(matches!(err, StageError::Refused { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("artifact \"probe\" ({url}): refused: ")),
            "{err}"
        );
        assert!(err.to_string().contains(why), "{err}");
        assert_reveals_nothing(&err, &content);
        assert!(!partial_of(&state, &a.sha256).exists(), "nothing written");
        assert_eq!(
            std::fs::read_dir(state.path().join("artifacts/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    // /etc/passwd, and a way out of the root with `..`.
    let state = tempfile::tempdir().unwrap();
    let store = store_with_root(&state, root.path());
    let passwd = artifact("passwd", "file:///etc/passwd", b"a guess");
    let err = fetch_one(&store, &passwd).await.unwrap_err();
    assert!(matches!(err, StageError::Refused { .. }), "{err:?}");
    assert_reveals_nothing(&err, &std::fs::read("/etc/passwd").unwrap());
    let dotdot = format!(
        "file://{}/../{}/secret",
        root.path().display(),
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    let err = fetch_one(&store, &artifact("up", &dotdot, b"a guess"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StageError::Refused { .. }),
        "{dotdot}: {err:?}"
    );
}

#[tokio::test]
async fn a_symlink_under_a_root_to_a_file_outside_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let content = data(5_000, 22);
    std::fs::write(outside.path().join("secret"), &content).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("dir")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let store = store_with_root(&state, root.path());

    for name in ["link", "dir/secret"] {
        let url = reqwest::Url::from_file_path(root.path().join(name))
            .unwrap()
            .to_string();
        // Even with the right digest: the file is outside.
        let a = artifact("escape", &url, &content);
        let err = fetch_one(&store, &a).await.unwrap_err();
        assert!(matches!(err, StageError::Refused { .. }), "{name}: {err:?}");
        assert!(
            err.to_string().contains("outside every --artifact-root"),
            "{err}"
        );
        assert!(!store.contains(&a.sha256), "{name}");
    }

    // A symlink inside the root to a file inside it is fine; so is a root
    // given through a symlink.
    std::fs::write(root.path().join("real"), &content).unwrap();
    std::os::unix::fs::symlink(root.path().join("real"), root.path().join("alias")).unwrap();
    let url = reqwest::Url::from_file_path(root.path().join("alias"))
        .unwrap()
        .to_string();
    let linked_root = outside.path().join("root-link");
    std::os::unix::fs::symlink(root.path(), &linked_root).unwrap();
    let state = tempfile::tempdir().unwrap();
    let store = store_with_root(&state, &linked_root);
    let path = fetch_one(&store, &artifact("inside", &url, &content))
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), content);
}

#[test]
fn a_root_that_does_not_exist_is_an_error_naming_it() {
    let state = tempfile::tempdir().unwrap();
    let err = ArtifactStore::new(state.path())
        .unwrap()
        .with_file_roots(&[PathBuf::from("/nonexistent/fermata-root")])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "artifact root /nonexistent/fermata-root: No such file or directory (os error 2)"
    );
}

/// Every file under `dir` whose content is `content`.
fn copies_of(dir: &std::path::Path, content: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && std::fs::read(e.path()).is_ok_and(|c| c == content) {
                found.push(e.path());
            }
        }
    }
    found
}

#[test]
fn status_never_holds_the_digest_of_a_refused_file() {
    let outside = tempfile::tempdir().unwrap();
    let content = data(4_321, 23);
    let secret = outside.path().join("secret");
    std::fs::write(&secret, &content).unwrap();
    let real = Digest::of(&content).to_string();
    let url = reqwest::Url::from_file_path(&secret).unwrap().to_string();
    let repo = util::TestRepo::new();
    let with = |sha: &str| {
        format!(
            "{}  artifacts:\n    - {{name: probe, url: \"{url}\", sha256: {sha}}}\n",
            util::SYNTH
        )
    };
    util::minimal(&repo).write("synth/app.yaml", &with(&"ab".repeat(32)));
    repo.commit("probe with a wrong digest");
    let state = tempfile::tempdir().unwrap();
    let now = "2026-11-21T02:30:00Z";

    let run = util::run_once(state.path(), &repo, now);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("refused: file:// artifacts are read only under an --artifact-root, and no --artifact-root is configured"),
        "{run:?}"
    );
    // The digest a second commit would need is nowhere: not in the output,
    // not on the status branch or its notes, not in the state.
    let history = repo.git(&["log", "--all", "-p", "--format=%H %B"]);
    assert!(history.contains("refused"), "status was written: {history}");
    for text in [&run.stdout, &run.stderr, &history] {
        assert!(!text.contains(&real), "{text}");
        assert!(!text.contains(&real[..12]), "{text}");
    }
    assert_eq!(copies_of(state.path(), &content), Vec::<PathBuf>::new());

    // Under a configured root, with the right digest, it is fetched.
    repo.write("synth/app.yaml", &with(&real));
    repo.commit("right digest");
    let p = repo.path().to_str().unwrap();
    let root = outside.path().to_str().unwrap();
    let args = [
        "run",
        "--once",
        "--repo",
        p,
        "--branch",
        "main",
        "--artifact-root",
        root,
    ];
    let run = util::fermata_at(state.path(), &args, now, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(state
        .path()
        .join("artifacts/sha256")
        .join(Digest::of(&content).to_hex())
        .is_file());
    // And from the environment, as the chart sets it.
    let state2 = tempfile::tempdir().unwrap();
    let run = util::fermata_at(
        state2.path(),
        &["run", "--once", "--repo", p, "--branch", "main"],
        now,
        &[(
            "FERMATA_ARTIFACT_ROOTS",
            &format!("/nonexistent/fermata-root,{root}"),
        )],
    );
    assert_eq!(
        run.code, 2,
        "a root that does not exist is refused at start: {run:?}"
    );
    assert!(
        run.stderr
            .contains("artifact root /nonexistent/fermata-root"),
        "{run:?}"
    );
    let run = util::fermata_at(
        state2.path(),
        &["run", "--once", "--repo", p, "--branch", "main"],
        now,
        &[("FERMATA_ARTIFACT_ROOTS", &format!("/tmp,{root}"))],
    );
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_fifo_under_a_root_is_refused_without_waiting_for_a_writer() {
    let root = tempfile::tempdir().unwrap();
    let fifo = root.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let state = tempfile::tempdir().unwrap();
    let store = store_with_root(&state, root.path());
    let url = reqwest::Url::from_file_path(&fifo).unwrap().to_string();
    let a = artifact("fifo", &url, b"x");
    // Opening a FIFO to read waits for a writer: bounded here, and on a
    // hang the test writes once so the runtime can stop, then fails.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bound = std::time::Duration::from_secs(20);
    let result = rt.block_on(async { tokio::time::timeout(bound, fetch_one(&store, &a)).await });
    let Ok(result) = result else {
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        rt.shutdown_timeout(std::time::Duration::from_secs(5));
        panic!("fetching a FIFO still waited after {bound:?}");
    };
    let err = result.unwrap_err();
    assert!(err.to_string().ends_with("is not a file"), "{err}");
}
