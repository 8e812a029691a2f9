//! The in-memory state every read is served from, and the broadcast of its
//! changes. No I/O: the change listener (in `store`) is its only writer.
//!
//! Readers load the current [`Snapshot`] from an `ArcSwap` without locking.
//! A writer builds a new snapshot and [`State::publish`]es it: one function
//! stores it, records the change in a short history (for resuming streams)
//! and notifies subscribers, so those three never disagree.

pub mod flag_map;
pub mod freshness;
pub mod snapshot;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::gauge;
use tokio::sync::{broadcast, watch};

use crate::config::{ConfigRow, resolve};
use crate::flags::segment::{CompiledSegment, Segment};
use crate::flags::{CompiledFlag, Flag, Reason};
use crate::telemetry::{SNAPSHOT_CONFIGS, SNAPSHOT_FLAGS, SNAPSHOT_LAST_CHANGE, SNAPSHOT_VERSION};
use crate::usage::counters::UsageRegistry;
pub use freshness::Freshness;
pub use snapshot::Snapshot;

/// Changes kept for subscribers that resume with `since_version`.
pub const HISTORY_LEN: usize = 4096;

/// Changes a subscriber may fall behind by before it is sent a fresh
/// snapshot instead.
pub const BROADCAST_CAPACITY: usize = 1024;

/// One change, as told to subscribers.
#[derive(Debug, Clone)]
pub enum Event {
    /// A flag was created or updated.
    FlagUpserted {
        /// Version of the change.
        version: i64,
        /// The flag as it is now.
        flag: Arc<CompiledFlag>,
        /// Whether the key is new (it was not in the previous snapshot).
        created: bool,
    },
    /// A flag was deleted.
    FlagDeleted {
        /// Version of the change.
        version: i64,
        /// The deleted key.
        key: String,
    },
    /// A configuration row was written or deleted.
    ConfigChanged {
        /// Version of the change.
        version: i64,
        /// The key.
        key: String,
        /// The row's environment (`*` or a name).
        environment: String,
        /// The row as it is now; `None`: deleted.
        row: Option<Arc<ConfigRow>>,
        /// What the key now resolves to in this instance's environment
        /// (`None`: nothing).
        resolved: Option<Arc<ConfigRow>>,
        /// Whether the change altered that resolution (a row of another
        /// environment, or one hidden by this environment's own row, does not).
        resolved_changed: bool,
    },
    /// A segment was written or deleted.
    SegmentChanged {
        /// Version of the change.
        version: i64,
        /// The segment's key.
        key: String,
        /// The segment as it is now; `None`: deleted.
        segment: Option<Arc<CompiledSegment>>,
        /// The flags whose rules name it: their answers may have changed.
        flags: Arc<[String]>,
    },
    /// The snapshot was replaced whole (a full reload): subscribers send a
    /// fresh snapshot if its version differs from what they sent.
    Resync {
        /// Version of the new snapshot.
        version: i64,
    },
    /// The version moved without a change anyone here serves (a change of a
    /// table this readyd does not serve, or one already superseded). Only
    /// replication tells it on, so a follower's versions stay those of its
    /// source.
    Progress {
        /// The version reached.
        version: i64,
    },
}

impl Event {
    /// The version the event brings the state to.
    pub fn version(&self) -> i64 {
        match self {
            Event::FlagUpserted { version, .. }
            | Event::FlagDeleted { version, .. }
            | Event::ConfigChanged { version, .. }
            | Event::SegmentChanged { version, .. }
            | Event::Resync { version }
            | Event::Progress { version } => *version,
        }
    }
}

/// Changes since some version, for resuming streams.
#[derive(Debug, Default)]
struct History {
    /// Every change after `floor`, oldest first.
    events: VecDeque<Arc<Event>>,
    /// The history covers every change after this version.
    floor: i64,
}

/// What a new subscriber starts from: the receiver first, then the snapshot,
/// so no change between the two is lost.
#[derive(Debug)]
pub struct Subscription {
    /// Changes after the subscription was made.
    pub events: broadcast::Receiver<Arc<Event>>,
    /// The state when the subscription was made.
    pub snapshot: Arc<Snapshot>,
}

/// The shared state.
#[derive(Debug)]
pub struct State {
    /// The current snapshot; readers never lock.
    current: ArcSwap<Snapshot>,
    /// Tells subscribers of each change.
    events: broadcast::Sender<Arc<Event>>,
    /// Recent changes, for `since_version`. A std mutex: it is held only to
    /// push or copy a few pointers, never across an await.
    history: Mutex<History>,
    /// The current version, for writers waiting to read their own write.
    version: watch::Sender<i64>,
    /// Whether the snapshot is known to be current.
    freshness: Arc<Freshness>,
    /// Evaluation counts of flags replaced snapshots held.
    usage: UsageRegistry,
}

impl State {
    /// State starting from `snapshot`, known to be current.
    pub fn new(snapshot: Snapshot) -> Self {
        Self::with_freshness(snapshot, Freshness::default())
    }

    /// State starting from `snapshot`, as current as `freshness` says.
    pub fn with_freshness(snapshot: Snapshot, freshness: Freshness) -> Self {
        let version = snapshot.version;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let state = Self {
            current: ArcSwap::from_pointee(snapshot),
            events,
            history: Mutex::new(History {
                events: VecDeque::new(),
                floor: version,
            }),
            version: watch::Sender::new(version),
            freshness: Arc::new(freshness),
            usage: UsageRegistry::default(),
        };
        record_snapshot(&state.current.load());
        state
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current snapshot, for a short read on this thread (one
    /// evaluation): no count is taken on the snapshot's `Arc`, whose count
    /// every core would otherwise write to on every request. Hold it
    /// briefly, never across an `.await`.
    pub fn snapshot_briefly(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Whether the snapshot is current; answers say `STALE` when not.
    pub fn freshness(&self) -> &Arc<Freshness> {
        &self.freshness
    }

    /// Subscribes to changes, then reads the snapshot.
    pub fn subscribe(&self) -> Subscription {
        let events = self.events.subscribe();
        Subscription {
            events,
            snapshot: self.snapshot(),
        }
    }

    /// A receiver that wakes whenever the version changes (any change or
    /// reload), for readers that only need to know "something changed".
    pub fn watch_version(&self) -> watch::Receiver<i64> {
        self.version.subscribe()
    }

    /// Stores `snapshot`, records `event` and tells subscribers: the only
    /// way the state changes.
    pub fn publish(&self, snapshot: Snapshot, event: Event) {
        let version = snapshot.version;
        let event = Arc::new(event);
        {
            let mut history = self
                .history
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let replaced = self.current.swap(Arc::new(snapshot));
            self.retire_usage(&replaced);
            if matches!(*event, Event::Resync { .. }) {
                // What a reload changed is not known change by change.
                history.events.clear();
                history.floor = version;
            } else {
                history.events.push_back(Arc::clone(&event));
                while history.events.len() > HISTORY_LEN {
                    if let Some(oldest) = history.events.pop_front() {
                        history.floor = oldest.version();
                    }
                }
            }
            // Under the same lock, so history and broadcast agree in order.
            let _ = self.events.send(event);
        }
        self.version.send_replace(version);
        record_snapshot(&self.current.load());
    }

    /// Hands the counters of `replaced`'s flags that the current snapshot
    /// does not share to the usage registry, so their counts are drained
    /// before they go.
    fn retire_usage(&self, replaced: &Snapshot) {
        let current = self.current.load();
        if Arc::ptr_eq(&replaced.flags, &current.flags) {
            return;
        }
        self.usage.retire(
            replaced
                .flags
                .not_shared_with(&current.flags)
                .filter(|flag| {
                    current
                        .flags
                        .get(flag.key())
                        .is_none_or(|now| !Arc::ptr_eq(now.usage(), flag.usage()))
                })
                .map(|flag| Arc::clone(flag.usage())),
        );
    }

    /// An answer counted in `marks`, to be counted again each time it is
    /// given again; its repeats are in the next [`Self::drain_usage`].
    pub fn repeatable_usage(
        &self,
        marks: crate::usage::counters::UsageMarks,
    ) -> Arc<crate::usage::counters::RepeatedAnswer> {
        self.usage.repeatable(marks)
    }

    /// Takes every evaluation count out of memory: the current snapshot's
    /// flags' and those of flags replaced since the last drain, as
    /// `take(flag, variant, reason, count)`.
    pub fn drain_usage(&self, mut take: impl FnMut(&str, &str, Reason, u64)) {
        self.usage.drain(&mut take);
        for flag in self.current.load().flags.values() {
            let key = flag.key();
            flag.usage()
                .drain(|variant, reason, count| take(key, variant, reason, count));
        }
    }

    /// Flag `key` changed at `version`: `Some` as it is now, `None` deleted.
    /// A flag that fails validation (bad data written by plain SQL) is left
    /// out, as a full load would: to a reader it is gone.
    pub fn flag_changed(&self, version: i64, key: &str, flag: Option<Flag>) {
        let current = self.snapshot();
        if version <= current.version {
            return;
        }
        let existed = current.flag(key).is_some();
        let snapshot = current.with_flag(version, key, flag);
        match snapshot.flag(key).cloned() {
            Some(flag) => self.publish(
                snapshot,
                Event::FlagUpserted {
                    version,
                    flag,
                    created: !existed,
                },
            ),
            None if existed => self.publish(
                snapshot,
                Event::FlagDeleted {
                    version,
                    key: key.to_owned(),
                },
            ),
            None => self.advance(version),
        }
    }

    /// Segment `key` changed at `version`: `Some` as it is now, `None`
    /// deleted. An invalid segment row is left out, as a flag row is.
    pub fn segment_changed(&self, version: i64, key: &str, segment: Option<Segment>) {
        let current = self.snapshot();
        if version <= current.version {
            return;
        }
        let existed = current.segment(key).is_some();
        let snapshot = current.with_segment(version, key, segment);
        let segment = snapshot.segment(key).cloned();
        if segment.is_none() && !existed {
            self.publish(snapshot, Event::Progress { version });
            return;
        }
        let flags = snapshot.flags_using_segment(key).into();
        self.publish(
            snapshot,
            Event::SegmentChanged {
                version,
                key: key.to_owned(),
                segment,
                flags,
            },
        );
    }

    /// Configuration row (`key`, `environment`) changed at `version`: `Some`
    /// as it is now, `None` deleted. `resolving_for` is the environment this
    /// instance serves, which subscribers see resolved.
    pub fn config_changed(
        &self,
        version: i64,
        key: String,
        environment: String,
        row: Option<ConfigRow>,
        resolving_for: &str,
    ) {
        let current = self.snapshot();
        if version <= current.version {
            return;
        }
        let before = resolve(&current.configs, &key, resolving_for).cloned();
        let snapshot = current.with_config(version, &key, &environment, row);
        let row = snapshot
            .configs
            .get(&(key.clone(), environment.clone()))
            .cloned();
        let resolved = resolve(&snapshot.configs, &key, resolving_for).cloned();
        let resolved_changed = before != resolved;
        self.publish(
            snapshot,
            Event::ConfigChanged {
                version,
                key,
                environment,
                row,
                resolved,
                resolved_changed,
            },
        );
    }

    /// Replaces the whole snapshot (a full reload, or a fresh snapshot from
    /// an upstream).
    pub fn resync(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        self.publish(snapshot, Event::Resync { version });
    }

    /// Moves the version forward without a change anyone here serves (see
    /// [`Event::Progress`]); never backwards.
    pub fn advance(&self, version: i64) {
        let current = self.snapshot();
        if version <= current.version {
            return;
        }
        self.publish(current.at_version(version), Event::Progress { version });
    }

    /// Every change after `since`, when the history still holds all of them;
    /// `None` when the caller must start from a snapshot instead.
    pub fn events_since(&self, since: i64) -> Option<Vec<Arc<Event>>> {
        let history = self
            .history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.current.load().version;
        if since < history.floor || since > current {
            return None;
        }
        Some(
            history
                .events
                .iter()
                .filter(|e| e.version() > since)
                .cloned()
                .collect(),
        )
    }

    /// Waits until the state includes `version` (read-your-writes). False
    /// when `timeout` passes first.
    pub async fn wait_for(&self, version: i64, timeout: Duration) -> bool {
        let mut rx = self.version.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|current| *current >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The snapshot's metrics: version, sizes and when it last changed.
fn record_snapshot(snapshot: &Snapshot) {
    gauge!(SNAPSHOT_VERSION).set(snapshot.version as f64);
    gauge!(SNAPSHOT_FLAGS).set(snapshot.flags.len() as f64);
    gauge!(SNAPSHOT_CONFIGS).set(snapshot.configs.len() as f64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    gauge!(SNAPSHOT_LAST_CHANGE).set(now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{Flag, ValueType};

    fn flag(key: &str, version: i64) -> Flag {
        Flag {
            key: key.into(),
            description: String::new(),
            enabled: true,
            value_type: ValueType::Bool,
            on_value: serde_json::json!(true),
            off_value: serde_json::json!(false),
            environments: vec![],
            target_users: vec![],
            target_roles: vec![],
            rollout_percentage: 100,
            version,
            updated_at: chrono::Utc::now(),
            updated_by: "test".into(),
            targeting: None,
            client_visible: false,
            permanent: false,
            created_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn upsert(state: &State, key: &str, version: i64) {
        let snapshot = state
            .snapshot()
            .with_flag(version, key, Some(flag(key, version)));
        let compiled = snapshot.flag(key).cloned().expect("valid flag");
        state.publish(
            snapshot,
            Event::FlagUpserted {
                version,
                flag: compiled,
                created: true,
            },
        );
    }

    #[test]
    fn a_subscriber_sees_every_change_after_its_snapshot() {
        let state = State::new(Snapshot::from_rows(10, vec![flag("a", 10)], vec![]));
        let mut sub = state.subscribe();
        assert_eq!(sub.snapshot.version, 10);
        upsert(&state, "b", 11);
        let event = sub.events.try_recv().expect("an event");
        assert_eq!(event.version(), 11);
        assert!(state.snapshot().flag("b").is_some());
    }

    #[test]
    fn history_serves_resumes_until_it_is_cleared_by_a_resync() {
        let state = State::new(Snapshot::from_rows(10, vec![], vec![]));
        upsert(&state, "a", 11);
        upsert(&state, "b", 12);
        let since_10: Vec<i64> = state
            .events_since(10)
            .unwrap()
            .iter()
            .map(|e| e.version())
            .collect();
        assert_eq!(since_10, [11, 12]);
        assert_eq!(state.events_since(12).map(|e| e.len()), Some(0));
        assert!(state.events_since(9).is_none(), "older than the history");
        assert!(state.events_since(13).is_none(), "from the future");
        state.publish(
            Snapshot::from_rows(20, vec![], vec![]),
            Event::Resync { version: 20 },
        );
        assert!(
            state.events_since(12).is_none(),
            "a resync forgets the changes"
        );
        assert_eq!(state.events_since(20).map(|e| e.len()), Some(0));
    }

    #[test]
    fn advancing_moves_the_version_with_a_progress_event_only() {
        let state = State::new(Snapshot::from_rows(10, vec![flag("a", 10)], vec![]));
        let mut sub = state.subscribe();
        state.advance(11);
        assert_eq!(state.snapshot().version, 11);
        assert!(state.snapshot().flag("a").is_some(), "nothing else changes");
        let event = sub.events.try_recv().expect("a progress event");
        assert!(
            matches!(*event, Event::Progress { version: 11 }),
            "{event:?}"
        );
        let since: Vec<i64> = state
            .events_since(10)
            .expect("held")
            .iter()
            .map(|e| e.version())
            .collect();
        assert_eq!(since, [11], "resumes see it too");
        state.advance(5);
        assert_eq!(state.snapshot().version, 11, "never backwards");
        assert!(sub.events.try_recv().is_err());
    }

    #[test]
    fn history_is_bounded() {
        let state = State::new(Snapshot::from_rows(0, vec![], vec![]));
        for version in 1..=(HISTORY_LEN as i64 + 10) {
            upsert(&state, "a", version);
        }
        assert!(state.events_since(5).is_none());
        let tail = state.events_since(HISTORY_LEN as i64).expect("recent");
        assert_eq!(tail.len(), 10);
    }

    #[test]
    fn an_invalid_row_is_left_out_of_the_snapshot() {
        let mut bad = flag("bad", 3);
        bad.on_value = serde_json::json!("not a bool");
        let snapshot = Snapshot::from_rows(3, vec![bad, flag("good", 2)], vec![]);
        assert!(snapshot.flag("bad").is_none());
        assert!(snapshot.flag("good").is_some());
    }

    #[tokio::test]
    async fn a_writer_waits_for_its_version() {
        let state = Arc::new(State::new(Snapshot::from_rows(1, vec![], vec![])));
        let waiter = {
            let state = Arc::clone(&state);
            tokio::spawn(async move { state.wait_for(2, Duration::from_secs(5)).await })
        };
        upsert(&state, "a", 2);
        assert!(waiter.await.unwrap());
        assert!(!state.wait_for(3, Duration::from_millis(10)).await);
    }
}
