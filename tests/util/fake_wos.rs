//! A FAKE Margo workload orchestration server (WOS): no real one can run on
//! this machine. An in-process axum server on `127.0.0.1:0` that serves the
//! device status endpoint (`POST /device/{deviceId}/deployment/{deploymentId}/status`,
//! see `tests/margo/README.md`), validates every body against the vendored
//! schema `tests/margo/deployment-status.schema.json`, records each request
//! and tells the test through a channel when one arrives. Its answers are
//! scripted: a status code, or a hang that lasts until the test releases it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio::sync::{mpsc, oneshot};

/// One request as the FAKE received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub device: String,
    pub deployment: String,
    pub authorization: Option<String>,
    pub body: serde_json::Value,
    /// Where the body breaks the schema; empty when it is valid.
    pub schema_errors: Vec<String>,
}

/// How the FAKE answers the next request.
pub enum Answer {
    Status(u16),
    /// No answer until the sender is dropped or sent to; then 201.
    Hang(oneshot::Receiver<()>),
}

struct Inner {
    script: Mutex<VecDeque<Answer>>,
    received: Mutex<Vec<Received>>,
    arrived: mpsc::UnboundedSender<Received>,
    schema: jsonschema::Validator,
}

pub struct FakeWos {
    pub url: String,
    inner: Arc<Inner>,
    /// One message per request, as it arrives (before it is answered).
    pub arrivals: mpsc::UnboundedReceiver<Received>,
}

impl FakeWos {
    /// Starts the FAKE on the current runtime; unscripted requests get 201.
    pub async fn start() -> FakeWos {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/margo/deployment-status.schema.json"
        ))
        .expect("vendored schema");
        let schema_json: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
        let schema = jsonschema::validator_for(&schema_json).expect("schema compiles");
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            script: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            arrived: tx,
            schema,
        });
        let app = Router::new()
            .route(
                "/device/{device}/deployment/{deployment}/status",
                post(status),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeWos {
            url: format!("http://{addr}"),
            inner,
            arrivals: rx,
        }
    }

    /// Answers the next requests in this order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.inner.script.lock().unwrap().extend(answers);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }
}

async fn status(
    State(inner): State<Arc<Inner>>,
    Path((device, deployment)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let body: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => serde_json::Value::Null,
    };
    let schema_errors = inner
        .schema
        .iter_errors(&body)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    let got = Received {
        device,
        deployment,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
        schema_errors,
    };
    inner.received.lock().unwrap().push(got.clone());
    let _ = inner.arrived.send(got);
    let answer = inner.script.lock().unwrap().pop_front();
    match answer {
        None => StatusCode::CREATED,
        Some(Answer::Status(code)) => StatusCode::from_u16(code).unwrap_or(StatusCode::CREATED),
        Some(Answer::Hang(release)) => {
            let _ = release.await;
            StatusCode::CREATED
        }
    }
}
