//! The HTTP server's connections, bounded so that no client can starve the
//! probes or the reconciler (issue 11.4): a client has `header_timeout` to
//! send a request's headers (and an idle keep-alive connection is closed
//! after as long), a request (its body included) gets `request_timeout`,
//! and at most `max_connections` are open at once, never more than half the
//! file descriptor limit, so git, targets and artifacts always have
//! descriptors left.
//!
//! At the limit, a new connection takes the place of the one that has been
//! idle longest (between requests, or still sending its first headers: a
//! slow-loris client), which is closed; only when every connection is in
//! the middle of a request is the new one closed instead. So a probe or a
//! scrape, whose request is complete as soon as it is sent, is served even
//! while slow clients hold every slot.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// The bounds of the HTTP server (`--http-header-timeout`,
/// `--http-max-connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// To send a request's headers; also how long an idle keep-alive
    /// connection is kept (hyper times the wait for every request head).
    pub header_timeout: Duration,
    /// For a request once its headers are in: its body and the answer.
    pub request_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 128,
        }
    }
}

impl ServeLimits {
    /// `max_connections`, but at most half of `fd_limit` (the soft limit of
    /// open files, when known): the other half is for everything else.
    pub fn within_fd_limit(mut self, fd_limit: Option<u64>) -> ServeLimits {
        if let Some(limit) = fd_limit {
            let half = usize::try_from(limit / 2).unwrap_or(usize::MAX).max(1);
            if half < self.max_connections {
                tracing::warn!(
                    max_connections = self.max_connections,
                    fd_limit = limit,
                    used = half,
                    "--http-max-connections is more than half the open file limit: using half"
                );
                self.max_connections = half;
            }
        }
        self
    }
}

/// Raises the soft limit of open files to the hard limit (allowed without
/// privileges); returns the soft limit in force afterwards, if known. The
/// default soft limit (often 1024, or 256) is easily exhausted by HTTP
/// clients, mirrors' pack files and targets together.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open file limit");
                return Some(hard);
            }
            Err(e) => tracing::debug!(error = %e, "cannot raise the open file limit"),
        }
    }
    Some(soft)
}

/// Serves `router` on `listener` until `shutdown`, then gives requests in
/// flight up to `request_timeout` to finish.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Slots::new(limits.max_connections));
    let (closing, closed) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut refused_warned: Option<Instant> = None;
    let mut accept_warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    'serve: loop {
        // Connections told to close for newer ones still hold their
        // descriptors until their tasks run: wait for them before taking
        // more, so a flood cannot outrun the limit.
        while slots.closing() >= MAX_CLOSING {
            tokio::select! {
                _ = &mut shutdown => break 'serve,
                _ = slots.closed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if accept_warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        accept_failed(&e);
                        accept_warned = Some(Instant::now());
                    }
                    // EMFILE and the like last until something closes:
                    // do not spin on them.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let Some(slot) = slots.admit() else {
            if refused_warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "HTTP connection limit reached with every connection busy: closing new connections"
                );
                refused_warned = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        tasks.spawn(connection(
            stream,
            router.clone(),
            slot,
            limits,
            closed.clone(),
        ));
    }
    let _ = closing.send(true);
    let drained = tokio::time::timeout(limits.request_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("HTTP connections still open at shutdown: closed");
    }
}

/// An accept error, named: EMFILE is the descriptor limit, not a network fault.
fn accept_failed(e: &std::io::Error) {
    use nix::errno::Errno;
    let code = e.raw_os_error();
    if code == Some(Errno::EMFILE as i32) || code == Some(Errno::ENFILE as i32) {
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft.to_string())
            .unwrap_or_else(|_| "unknown".into());
        tracing::error!(error = %e, fd_limit = %limit, "HTTP accept failed: too many open files (the open file limit is exhausted; lower --http-max-connections or raise the limit)");
    } else {
        tracing::warn!(error = %e, "HTTP accept failed");
    }
}

/// One connection, until it ends, is evicted, or the server drains.
async fn connection(
    stream: TcpStream,
    router: Router,
    mut slot: Slot,
    limits: ServeLimits,
    mut closing: watch::Receiver<bool>,
) {
    let inner = TowerToHyperService::new(router);
    let (slots, id) = (slot.slots.clone(), slot.id);
    let request_timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let busy = Busy::new(&slots, id);
        let answer = inner.call(req);
        async move {
            let _busy = busy;
            match tokio::time::timeout(request_timeout, answer).await {
                Ok(answer) => answer,
                Err(_) => Ok(too_slow(request_timeout)),
            }
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "HTTP connection closed");
                }
                return;
            }
            _ = &mut slot.evicted => {
                tracing::debug!("HTTP connection limit: closed the longest idle connection for a new one");
                return;
            }
            _ = closing.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn too_slow(limit: Duration) -> Response<Body> {
    let mut resp = Response::new(Body::from(format!(
        "request not complete within {}\n",
        humantime::format_duration(limit)
    )));
    *resp.status_mut() = StatusCode::REQUEST_TIMEOUT;
    resp
}

/// How many evicted connections may still be closing when another is accepted.
const MAX_CLOSING: usize = 4;

/// The open connections, and which of them are idle.
struct Slots {
    max: usize,
    open: Mutex<(u64, HashMap<u64, Open>)>,
    /// Told whenever a connection's task has ended (its descriptor closed).
    closed: tokio::sync::Notify,
}

struct Open {
    /// Requests being answered on it.
    busy: usize,
    /// Since when it has answered nothing: its accept, or its last answer.
    idle_since: Instant,
    /// Closes it; `None` once used (it is closing).
    evict: Option<oneshot::Sender<()>>,
}

/// A connection's place among [`Slots`], given up when it ends.
struct Slot {
    id: u64,
    slots: Arc<Slots>,
    /// Resolves when a newer connection took this one's place.
    evicted: oneshot::Receiver<()>,
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            open: Mutex::new((0, HashMap::new())),
            closed: tokio::sync::Notify::new(),
        }
    }

    /// Connections told to close whose tasks have not ended yet.
    fn closing(&self) -> usize {
        self.lock().1.values().filter(|o| o.evict.is_none()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Open>)> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection: a free one, else the one of the
    /// longest idle connection (closed); `None` when every one is busy.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut guard = self.lock();
        let (next, open) = &mut *guard;
        // Closing ones keep their entry (and count) until their task ends.
        let live = open.values().filter(|o| o.evict.is_some()).count();
        if live >= self.max {
            let idlest = open
                .values_mut()
                .filter(|o| o.busy == 0 && o.evict.is_some())
                .min_by_key(|o| o.idle_since)?;
            if let Some(evict) = idlest.evict.take() {
                let _ = evict.send(());
            }
        }
        let (evict, evicted) = oneshot::channel();
        *next += 1;
        let id = *next;
        open.insert(
            id,
            Open {
                busy: 0,
                idle_since: Instant::now(),
                evict: Some(evict),
            },
        );
        Some(Slot {
            id,
            slots: self.clone(),
            evicted,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().1.remove(&self.id);
        self.slots.closed.notify_one();
    }
}

/// Marks a connection busy while one of its requests is answered.
struct Busy {
    id: u64,
    slots: Arc<Slots>,
}

impl Busy {
    fn new(slots: &Arc<Slots>, id: u64) -> Busy {
        if let Some(o) = slots.lock().1.get_mut(&id) {
            o.busy += 1;
        }
        Busy {
            id,
            slots: slots.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(o) = self.slots.lock().1.get_mut(&self.id) {
            o.busy = o.busy.saturating_sub(1);
            o.idle_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_longest_idle_connection_makes_room() {
        let slots = Arc::new(Slots::new(2));
        let mut a = slots.admit().expect("free");
        std::thread::sleep(Duration::from_millis(2));
        let b = slots.admit().expect("free");
        // Both idle: the older, a, is closed for c.
        let c = slots.admit().expect("a makes room");
        assert!(a.evicted.try_recv().is_ok(), "a was told to close");
        assert_eq!(slots.closing(), 1, "a still holds its descriptor");
        drop(a);
        assert_eq!(slots.closing(), 0);
        // b busy, c busy: nothing makes room.
        let _busy_b = Busy::new(&slots, b.id);
        let busy_c = Busy::new(&slots, c.id);
        assert!(slots.admit().is_none(), "every connection is busy");
        // c's request ends: it is idle again and makes room.
        drop(busy_c);
        let mut c = c;
        let _d = slots.admit().expect("c makes room");
        assert!(c.evicted.try_recv().is_ok());
        assert_eq!(slots.lock().1.len(), 3, "c is closing");
        drop(c);
        assert_eq!(slots.lock().1.len(), 2);
    }

    #[test]
    fn the_connection_limit_is_at_most_half_the_fd_limit() {
        let l = ServeLimits {
            max_connections: 128,
            ..ServeLimits::default()
        };
        assert_eq!(l.within_fd_limit(Some(256)).max_connections, 128);
        assert_eq!(l.within_fd_limit(Some(100)).max_connections, 50);
        assert_eq!(l.within_fd_limit(Some(1)).max_connections, 1);
        assert_eq!(l.within_fd_limit(None).max_connections, 128);
    }
}
