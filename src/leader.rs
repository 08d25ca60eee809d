//! Leader election on a coordination.k8s.io/v1 Lease, so two or more
//! replicas of fermata can run and only one reconciles.
//!
//! The algorithm is client-go's `leaderelection`: the holder renews the
//! Lease's `renewTime` every `retry` period; a candidate takes it over only
//! after the record has not changed for `lease_duration` *as measured on its
//! own monotonic clock* (so clock skew between nodes does not matter); every
//! write is a replace guarded by `resourceVersion`, so two candidates racing
//! for an expired lease cannot both win (the loser gets 409 Conflict). A
//! leader that cannot renew for `renew_deadline` gives up leading at once,
//! before the lease can expire for the others: it never writes at the same
//! time as a new leader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// How leadership is held.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in the lease (the pod name in a cluster).
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops leading.
    pub renew_deadline: Duration,
    /// How often the holder renews and candidates retry.
    pub retry: Duration,
}

impl LeaseSettings {
    /// client-go's defaults scaled by `lease_duration` (15 s / 10 s / 2 s).
    pub fn new(namespace: String, name: String, identity: String, lease: Duration) -> Self {
        LeaseSettings {
            namespace,
            name,
            identity,
            lease_duration: lease,
            renew_deadline: lease.mul_f64(2.0 / 3.0),
            retry: lease.mul_f64(2.0 / 15.0),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lease: {0}")]
    Config(String),
}

/// Whether this replica leads now. Shared between the elector task and the
/// reconciler, which checks it before every write.
#[derive(Debug, Clone, Default)]
pub struct Leadership {
    leading: Arc<AtomicBool>,
    /// When the lease was last renewed by us (monotonic).
    renewed: Arc<Mutex<Option<Instant>>>,
    deadline: Duration,
}

impl Leadership {
    /// Always leading: no election configured.
    pub fn always() -> Leadership {
        Leadership {
            leading: Arc::new(AtomicBool::new(true)),
            renewed: Arc::new(Mutex::new(None)),
            deadline: Duration::MAX,
        }
    }

    /// Stops leading at once, for every clone (a replica that must not write
    /// any more; tests).
    pub fn step_down(&self) {
        self.leading.store(false, Ordering::SeqCst);
    }

    /// True while we hold the lease and renewed it within the renew deadline:
    /// checked again right before each write, so a leader whose renewals
    /// stall stops writing even before its elector notices.
    pub fn is_leader(&self) -> bool {
        if !self.leading.load(Ordering::SeqCst) {
            return false;
        }
        if self.deadline == Duration::MAX {
            return true;
        }
        self.renewed
            .lock()
            .ok()
            .and_then(|r| *r)
            .is_some_and(|at| at.elapsed() < self.deadline)
    }

    fn set(&self, leading: bool, renewed: Option<Instant>) {
        if let Ok(mut r) = self.renewed.lock() {
            *r = renewed;
        }
        self.leading.store(leading, Ordering::SeqCst);
    }
}

/// One candidate for the lease.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The lease as last seen, and when it was first seen so (monotonic):
    /// expiry is judged from this, never from the other node's clock.
    observed: Option<(LeaseSpec, Instant)>,
    leadership: Leadership,
    /// Told when this replica becomes leader, so it reconciles at once.
    wake: Option<tokio::sync::mpsc::Sender<&'static str>>,
}

impl Elector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Elector {
        let api = Api::namespaced(client, &settings.namespace);
        let leadership = Leadership {
            leading: Arc::new(AtomicBool::new(false)),
            renewed: Arc::new(Mutex::new(None)),
            deadline: settings.renew_deadline,
        };
        Elector {
            api,
            settings,
            observed: None,
            leadership,
            wake: None,
        }
    }

    /// Wakes the run loop through `tx` whenever leadership is won.
    pub fn waking(mut self, tx: tokio::sync::mpsc::Sender<&'static str>) -> Elector {
        self.wake = Some(tx);
        self
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            source,
        }
    }

    /// One round: acquire the lease when free or expired, renew it when
    /// ours. Returns whether we lead after it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = Instant::now();
        let me = self.settings.identity.clone();
        let mut spec = LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(self.settings.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(Timestamp::now())),
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
        let current = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.err(e))?;
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec.clone()),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.observed = Some((spec, now));
                    self.won(now);
                    Ok(true)
                }
                // Another candidate created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(self.lost()),
                Err(e) => Err(self.err(e)),
            };
        };
        let theirs = current.spec.clone().unwrap_or_default();
        // Expiry runs from when *we* first saw this exact record.
        let seen_at = match &self.observed {
            Some((spec, at)) if *spec == theirs => *at,
            _ => now,
        };
        self.observed = Some((theirs.clone(), seen_at));
        let holder = theirs.holder_identity.clone().unwrap_or_default();
        let duration = theirs
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.settings.lease_duration);
        let ours = holder == me;
        let free = holder.is_empty() || now.duration_since(seen_at) >= duration;
        if !ours && !free {
            return Ok(self.lost());
        }
        if ours {
            spec.acquire_time = theirs.acquire_time.clone();
            spec.lease_transitions = theirs.lease_transitions;
        } else {
            spec.lease_transitions = Some(theirs.lease_transitions.unwrap_or(0) + 1);
        }
        let mut lease = current;
        lease.spec = Some(spec.clone());
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !ours {
                    tracing::info!(identity = %me, from = %holder, "lease acquired");
                }
                self.observed = Some((spec, now));
                self.won(now);
                Ok(true)
            }
            // Someone else wrote it since our read: they won this round.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(self.lost()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn won(&self, at: Instant) {
        let was = self.leadership.leading.load(Ordering::SeqCst);
        self.leadership.set(true, Some(at));
        if !was {
            tracing::info!(identity = %self.settings.identity, "leading");
            if let Some(tx) = &self.wake {
                let _ = tx.try_send("became leader");
            }
        }
    }

    fn lost(&self) -> bool {
        if self.leadership.leading.load(Ordering::SeqCst) {
            tracing::warn!(identity = %self.settings.identity, "lease lost: no longer leading");
        }
        self.leadership.set(false, None);
        false
    }

    /// Renews or campaigns every `retry` period until `stop` resolves; an
    /// API error is a failed round (leadership lapses at the renew deadline).
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            match self.try_acquire_or_renew().await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "lease round failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.retry) => {}
                _ = &mut stop => break,
            }
        }
        // Stepping down: let the next replica take over without waiting for
        // the lease to expire, as client-go's ReleaseOnCancel does.
        if self.leadership.is_leader() {
            self.release().await;
        }
        self.leadership.set(false, None);
    }

    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("lease released"),
            Err(e) => tracing::warn!(error = %e, "cannot release lease"),
        }
    }
}
