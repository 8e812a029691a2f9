//! The serving status of every grpc.health.v1 name, in memory.
//!
//! One `watch` channel holds the whole name → status map. A probe reads the
//! current map without waiting on anything; a Watch stream wakes on every
//! change, and because a watch channel keeps only the latest value a slow
//! watcher skips intermediate states instead of falling behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::watch;

/// Whether a name can serve. An unknown name has no entry at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingStatus {
    /// Can handle requests.
    Serving,
    /// Cannot handle requests.
    NotServing,
}

/// The server as a whole (the empty name).
pub const SERVER: &str = "";
/// The process is alive and responsive.
pub const LIVENESS: &str = "liveness";
/// Start-up has finished.
pub const STARTUP: &str = "startup";
/// The pod may receive traffic.
pub const READINESS: &str = "readiness";

/// Every name and its status.
pub type StatusMap = BTreeMap<String, ServingStatus>;

/// The probe states of one readyd.
#[derive(Debug)]
pub struct Probes {
    /// The current map; replaced whole on every change.
    statuses: watch::Sender<Arc<StatusMap>>,
    /// How far shutdown has gone: [`RUNNING`], [`LEAVING`] or [`DRAINING`].
    phase: AtomicU8,
}

/// Not shutting down.
const RUNNING: u8 = 0;
/// Shutting down, still serving: `readiness` stays NOT_SERVING.
const LEAVING: u8 = 1;
/// Shutting down, no longer accepting: every name stays NOT_SERVING.
const DRAINING: u8 = 2;

impl Default for Probes {
    fn default() -> Self {
        Self::new()
    }
}

impl Probes {
    /// The state before start-up has finished: the process answers (server
    /// and liveness SERVING) but is neither started nor ready.
    pub fn new() -> Self {
        let statuses = StatusMap::from([
            (SERVER.to_owned(), ServingStatus::Serving),
            (LIVENESS.to_owned(), ServingStatus::Serving),
            (STARTUP.to_owned(), ServingStatus::NotServing),
            (READINESS.to_owned(), ServingStatus::NotServing),
        ]);
        Self {
            statuses: watch::Sender::new(Arc::new(statuses)),
            phase: AtomicU8::new(RUNNING),
        }
    }

    /// Sets one name's status, adding the name if it is new. Watchers are
    /// woken only when something actually changed. While draining, every
    /// name is forced to NOT_SERVING; while leaving, `readiness` is.
    pub fn set(&self, name: &str, status: ServingStatus) {
        let held_off = match self.phase.load(Ordering::SeqCst) {
            RUNNING => false,
            LEAVING => name == READINESS,
            _ => true,
        };
        let status = if held_off {
            ServingStatus::NotServing
        } else {
            status
        };
        self.statuses.send_if_modified(|map| {
            if map.get(name) == Some(&status) {
                return false;
            }
            Arc::make_mut(map).insert(name.to_owned(), status);
            true
        });
    }

    /// Removes a name (its watchers then see SERVICE_UNKNOWN).
    pub fn remove(&self, name: &str) {
        self.statuses.send_if_modified(|map| {
            if !map.contains_key(name) {
                return false;
            }
            Arc::make_mut(map).remove(name);
            true
        });
    }

    /// One name's status; `None` when the name is unknown.
    pub fn get(&self, name: &str) -> Option<ServingStatus> {
        self.statuses.borrow().get(name).copied()
    }

    /// Every name and its status.
    pub fn all(&self) -> Arc<StatusMap> {
        Arc::clone(&self.statuses.borrow())
    }

    /// A receiver that wakes on every change of the map.
    pub fn subscribe(&self) -> watch::Receiver<Arc<StatusMap>> {
        self.statuses.subscribe()
    }

    /// Turns `readiness` NOT_SERVING for good while everything else keeps
    /// its status: the first step of shutdown, so load balancers and
    /// kube-proxy stop routing calls here while readyd still serves them
    /// (the drain delay). Liveness stays SERVING: the kubelet must not kill
    /// a process that is leaving on purpose.
    pub fn leave(&self) {
        let _ = self
            .phase
            .compare_exchange(RUNNING, LEAVING, Ordering::SeqCst, Ordering::SeqCst);
        self.set(READINESS, ServingStatus::NotServing);
    }

    /// Turns every name NOT_SERVING for good: the server stops accepting
    /// calls right after, so no probe may say it would take one.
    pub fn drain(&self) {
        self.phase.store(DRAINING, Ordering::SeqCst);
        self.statuses.send_if_modified(|map| {
            let mut changed = false;
            for status in Arc::make_mut(map).values_mut() {
                changed |= *status != ServingStatus::NotServing;
                *status = ServingStatus::NotServing;
            }
            changed
        });
    }

    /// Whether shutdown has begun (readiness is held NOT_SERVING).
    pub fn is_leaving(&self) -> bool {
        self.phase.load(Ordering::SeqCst) != RUNNING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_registry_is_alive_but_not_ready() {
        let probes = Probes::new();
        assert_eq!(probes.get(SERVER), Some(ServingStatus::Serving));
        assert_eq!(probes.get(LIVENESS), Some(ServingStatus::Serving));
        assert_eq!(probes.get(STARTUP), Some(ServingStatus::NotServing));
        assert_eq!(probes.get(READINESS), Some(ServingStatus::NotServing));
        assert_eq!(probes.get("dep.redis"), None);
    }

    #[test]
    fn setting_an_unchanged_status_wakes_nobody() {
        let probes = Probes::new();
        let mut rx = probes.subscribe();
        rx.borrow_and_update();
        probes.set(LIVENESS, ServingStatus::Serving);
        assert!(!rx.has_changed().unwrap_or(true));
        probes.set(READINESS, ServingStatus::Serving);
        assert!(rx.has_changed().unwrap_or(false));
    }

    #[test]
    fn leaving_holds_readiness_off_and_nothing_else() {
        let probes = Probes::new();
        probes.set(READINESS, ServingStatus::Serving);
        probes.set("dep.db", ServingStatus::Serving);
        probes.leave();
        assert!(probes.is_leaving());
        assert_eq!(probes.get(READINESS), Some(ServingStatus::NotServing));
        assert_eq!(probes.get(LIVENESS), Some(ServingStatus::Serving));
        assert_eq!(probes.get(SERVER), Some(ServingStatus::Serving));
        assert_eq!(probes.get("dep.db"), Some(ServingStatus::Serving));
        probes.set(READINESS, ServingStatus::Serving);
        assert_eq!(probes.get(READINESS), Some(ServingStatus::NotServing));
        probes.set("dep.db", ServingStatus::NotServing);
        assert_eq!(probes.get("dep.db"), Some(ServingStatus::NotServing));
        probes.drain();
        probes.leave();
        assert_eq!(
            probes.get(LIVENESS),
            Some(ServingStatus::NotServing),
            "leaving never undoes a drain"
        );
    }

    #[test]
    fn draining_is_final() {
        let probes = Probes::new();
        probes.set("dep.db", ServingStatus::Serving);
        probes.drain();
        assert!(
            probes
                .all()
                .values()
                .all(|s| *s == ServingStatus::NotServing)
        );
        probes.set(READINESS, ServingStatus::Serving);
        assert_eq!(probes.get(READINESS), Some(ServingStatus::NotServing));
    }
}
