//! Whether the served data is known to be current, and if not, how old it
//! may be (DESIGN "Staleness").
//!
//! Two things make data stale: readyd started from the snapshot on disk
//! because the database could not be reached (stale at once), or the change
//! listener lost the database while running (stale once that has lasted
//! longer than `--stale-after`: a brief reconnect is not worth alarming
//! anyone). A full reload after the database answers again makes the data
//! current.
//!
//! A connection that is cut without a word (a network partition, a
//! half-open TCP connection) leaves the listener waiting forever, so the
//! database check's failure also counts: it [`doubts`](Freshness::doubt_listener)
//! the listener, which then reconnects.
//!
//! Every evaluation asks [`Freshness::is_stale`], so the current case is one
//! relaxed atomic load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Default of `--stale-after`.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10);

/// Since when the data may be behind, and how old it already was then.
#[derive(Debug, Clone, Copy)]
struct Behind {
    since: Instant,
    age_then: Duration,
}

/// Whether the served data is current.
#[derive(Debug)]
pub struct Freshness {
    /// The clock `stale_from` counts from.
    origin: Instant,
    /// Nanoseconds after `origin` (plus one) from which answers are stale;
    /// 0 while the data is current.
    stale_from: AtomicU64,
    /// When the data fell behind; None while current.
    behind: Mutex<Option<Behind>>,
    /// How long the listener may be down before answers turn stale.
    stale_after: Duration,
    /// Counts the times the database check turned failing: the listener
    /// reconnects when it moves.
    doubts: watch::Sender<u64>,
    /// Counts the times data that was behind became current again.
    caught_up: watch::Sender<u64>,
    /// Counts every change of state (behind, stale at once, current), for
    /// streams that push the state to their clients.
    changes: watch::Sender<u64>,
}

impl Freshness {
    /// Current data; a lost listener makes it stale after `stale_after`.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            origin: Instant::now(),
            stale_from: AtomicU64::new(0),
            behind: Mutex::new(None),
            stale_after,
            doubts: watch::Sender::new(0),
            caught_up: watch::Sender::new(0),
            changes: watch::Sender::new(0),
        }
    }

    /// Whether answers must say `STALE` now.
    pub fn is_stale(&self) -> bool {
        let from = self.stale_from.load(Ordering::Relaxed);
        from != 0 && self.nanos_now() >= from
    }

    /// How old the served data may be, while answers are stale; None when
    /// they are not.
    pub fn stale_for(&self) -> Option<Duration> {
        if !self.is_stale() {
            return None;
        }
        self.behind()
            .map(|behind| behind.age_then + behind.since.elapsed())
    }

    /// The data was loaded from a snapshot saved `age` ago, not from the
    /// database: stale at once.
    pub fn loaded_from_disk(&self, age: Duration) {
        self.stale_now(age);
    }

    /// The source itself is behind by `age` (a follower's upstream answers
    /// STALE): stale at once, as old as the source's data.
    pub fn source_stale(&self, age: Duration) {
        self.stale_now(age);
    }

    fn stale_now(&self, age: Duration) {
        let now = Instant::now();
        *self.lock() = Some(Behind {
            since: now,
            age_then: age,
        });
        self.stale_from
            .store(self.nanos_at(now).max(1), Ordering::Relaxed);
        self.changes.send_modify(|changes| *changes += 1);
    }

    /// When answers turn (or turned) stale, while the data is behind.
    pub fn stale_at(&self) -> Option<Instant> {
        match self.stale_from.load(Ordering::Relaxed) {
            0 => None,
            from => Some(self.origin + Duration::from_nanos(from - 1)),
        }
    }

    /// A receiver that wakes on every change of state (fell behind, stale
    /// at once, current again); the moment a lost listener's grace runs
    /// out is [`Self::stale_at`].
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The change listener lost the database: changes may be missed from
    /// now on. Answers turn stale after `stale_after` unless [`Self::current`]
    /// comes first. Later calls before that keep the first moment.
    pub fn listener_lost(&self) {
        let now = Instant::now();
        let mut behind = self.lock();
        if behind.is_some() {
            return;
        }
        *behind = Some(Behind {
            since: now,
            age_then: Duration::ZERO,
        });
        self.stale_from
            .store(self.nanos_at(now + self.stale_after), Ordering::Relaxed);
        drop(behind);
        self.changes.send_modify(|changes| *changes += 1);
    }

    /// The source caught up (a full reload, or every change read): the data
    /// is current. Returns whether answers were stale until now.
    pub fn current(&self) -> bool {
        let was_stale = self.is_stale();
        let was_behind = {
            let mut behind = self.lock();
            self.stale_from.store(0, Ordering::Relaxed);
            behind.take().is_some()
        };
        if was_behind {
            self.caught_up.send_modify(|times| *times += 1);
            self.changes.send_modify(|changes| *changes += 1);
        }
        was_stale
    }

    /// A receiver that wakes each time data that was behind is current
    /// again (even if nothing had changed meanwhile).
    pub fn catch_ups(&self) -> watch::Receiver<u64> {
        self.caught_up.subscribe()
    }

    /// The database check turned failing: the listener's connection may be
    /// dead without it knowing.
    pub fn doubt_listener(&self) {
        self.doubts.send_modify(|doubts| *doubts += 1);
    }

    /// A receiver that wakes on every [`Self::doubt_listener`].
    pub fn listener_doubts(&self) -> watch::Receiver<u64> {
        self.doubts.subscribe()
    }

    /// How long the data may have been behind (zero while current), stale
    /// or not yet: how old it may be.
    pub fn behind_for(&self) -> Duration {
        self.behind().map_or(Duration::ZERO, |behind| {
            behind.age_then + behind.since.elapsed()
        })
    }

    /// Whether the data may be behind (stale, or about to be).
    pub fn is_behind(&self) -> bool {
        self.behind().is_some()
    }

    fn behind(&self) -> Option<Behind> {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Behind>> {
        self.behind
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn nanos_now(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    /// `at` as nanoseconds after `origin`, plus one so that 0 stays free
    /// for "current".
    fn nanos_at(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }
}

impl Default for Freshness {
    fn default() -> Self {
        Self::new(DEFAULT_STALE_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_until_told_otherwise() {
        let freshness = Freshness::default();
        assert!(!freshness.is_stale());
        assert_eq!(freshness.stale_for(), None);
        assert!(!freshness.is_behind());
    }

    #[test]
    fn a_snapshot_from_disk_is_stale_at_once_with_its_age() {
        let freshness = Freshness::default();
        freshness.loaded_from_disk(Duration::from_secs(3600));
        assert!(freshness.is_stale());
        let age = freshness.stale_for().expect("stale");
        assert!(age >= Duration::from_secs(3600), "{age:?}");
        assert!(freshness.current(), "was stale");
        assert!(!freshness.is_stale());
        assert_eq!(freshness.stale_for(), None);
    }

    #[test]
    fn catching_up_is_counted_and_ends_the_age() {
        let freshness = Freshness::new(Duration::from_secs(3600));
        let catch_ups = freshness.catch_ups();
        assert_eq!(freshness.behind_for(), Duration::ZERO);
        freshness.loaded_from_disk(Duration::from_secs(60));
        assert!(freshness.behind_for() >= Duration::from_secs(60));
        freshness.current();
        assert_eq!(*catch_ups.borrow(), 1);
        assert_eq!(freshness.behind_for(), Duration::ZERO);
        freshness.current();
        assert_eq!(*catch_ups.borrow(), 1, "already current: nothing caught up");
    }

    #[test]
    fn a_lost_listener_turns_stale_only_after_the_grace() {
        let freshness = Freshness::new(Duration::from_secs(3600));
        freshness.listener_lost();
        assert!(freshness.is_behind());
        assert!(!freshness.is_stale(), "within the grace");
        assert_eq!(freshness.stale_for(), None);
        assert!(!freshness.current(), "was not stale yet");
        assert!(!freshness.is_behind());
    }

    #[test]
    fn every_change_of_state_is_told_and_the_moment_it_turns_stale_is_known() {
        let freshness = Freshness::new(Duration::from_secs(3600));
        let mut changes = freshness.changes();
        assert_eq!(freshness.stale_at(), None);
        freshness.listener_lost();
        assert!(changes.has_changed().expect("open"));
        changes.borrow_and_update();
        let at = freshness.stale_at().expect("behind");
        assert!(
            at > Instant::now() + Duration::from_secs(3500),
            "after the grace"
        );
        freshness.listener_lost();
        assert!(!changes.has_changed().expect("open"), "already behind");
        freshness.current();
        assert!(changes.has_changed().expect("open"));
        changes.borrow_and_update();
        assert_eq!(freshness.stale_at(), None);
        freshness.source_stale(Duration::from_secs(5));
        assert!(changes.has_changed().expect("open"));
        assert!(freshness.is_stale());
        assert!(freshness.stale_for().expect("stale") >= Duration::from_secs(5));
    }

    #[test]
    fn a_lost_listener_past_the_grace_is_stale_since_it_was_lost() {
        let freshness = Freshness::new(Duration::ZERO);
        freshness.listener_lost();
        std::thread::sleep(Duration::from_millis(20));
        // A second loss report keeps the first moment.
        freshness.listener_lost();
        assert!(freshness.is_stale());
        assert!(freshness.stale_for().expect("stale") >= Duration::from_millis(20));
    }
}
