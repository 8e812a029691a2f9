//! Evaluation counts in memory: per flag, per variant, per reason, hung off
//! each compiled flag, so counting an evaluation is one relaxed atomic add
//! on a slot found by arithmetic (no lock, no allocation, no look-up).
//!
//! Each flag's counters are striped over a few shards, one per thread
//! (modulo the shard count), each on its own cache lines: two threads
//! evaluating the same flag would otherwise fight over one cache line, and
//! a contended atomic add costs several times an uncontended one.
//!
//! Counts are taken out with [`UsageCounters::drain`] (an atomic swap with
//! zero per slot), so a count is read exactly once however drains and adds
//! interleave. When a snapshot is replaced, the counters of every flag it
//! held that the new one does not share are handed to a [`UsageRegistry`],
//! which keeps them until they have been drained with no snapshot (and no
//! remembered answer) left that could add to them: nothing is lost, nothing
//! is counted twice.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::flags::Reason;

/// Counters on one cache line pair: 128 bytes, because adjacent-line
/// prefetching makes neighbouring 64-byte lines contend too.
const LINE_SLOTS: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Line([AtomicU64; LINE_SLOTS]);

/// The number of shards: twice the CPUs (threads are given shards in turn,
/// so a few more than the workers keeps them apart), a power of two, at
/// most 16.
fn shard_count() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        (cpus * 2).next_power_of_two().clamp(2, 16)
    })
}

/// Shards are handed to threads in turn, on their first count.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's shard number (before the modulo).
#[inline]
fn this_threads_shard() -> usize {
    SHARD.with(|shard| {
        let mine = shard.get();
        if mine != usize::MAX {
            return mine;
        }
        let mine = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
        shard.set(mine);
        mine
    })
}

/// The evaluation counts of one compiled flag.
pub struct UsageCounters {
    /// The flag's key.
    key: String,
    /// Its variants, in the engine's order (`on`, `off`, then named ones).
    variants: Box<[String]>,
    /// Lines of one shard: enough for every variant times every reason.
    lines_per_shard: usize,
    /// Shard count minus one (a power of two minus one).
    shard_mask: usize,
    /// `shards * lines_per_shard` lines.
    lines: Box<[Line]>,
}

impl std::fmt::Debug for UsageCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageCounters")
            .field("key", &self.key)
            .field("variants", &self.variants)
            .finish_non_exhaustive()
    }
}

impl UsageCounters {
    /// Zeroed counters for flag `key` with `variants`.
    pub fn new(key: &str, variants: impl IntoIterator<Item = String>) -> Self {
        let variants: Box<[String]> = variants.into_iter().collect();
        let slots = variants.len().max(1) * Reason::ALL.len();
        let lines_per_shard = slots.div_ceil(LINE_SLOTS);
        let shards = shard_count();
        Self {
            key: key.to_owned(),
            variants,
            lines_per_shard,
            shard_mask: shards - 1,
            lines: (0..shards * lines_per_shard)
                .map(|_| Line::default())
                .collect(),
        }
    }

    /// The flag's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The slot of variant number `variant` answered for `reason`.
    #[inline]
    pub fn slot(variant: usize, reason: Reason) -> usize {
        variant * Reason::ALL.len() + reason.index()
    }

    /// Counts one evaluation in `slot` (see [`Self::slot`]); a slot out of
    /// range is ignored rather than trusted.
    #[inline]
    pub fn add_slot(&self, slot: usize) {
        self.add_slot_times(slot, 1);
    }

    /// Counts `times` evaluations in `slot`.
    #[inline]
    fn add_slot_times(&self, slot: usize, times: u64) {
        let line =
            (this_threads_shard() & self.shard_mask) * self.lines_per_shard + slot / LINE_SLOTS;
        if slot < self.variants.len() * Reason::ALL.len()
            && let Some(line) = self.lines.get(line)
        {
            line.0[slot % LINE_SLOTS].fetch_add(times, Ordering::Relaxed);
        }
    }

    /// Counts one evaluation that answered variant number `variant` for
    /// `reason`.
    #[inline]
    pub fn add(&self, variant: usize, reason: Reason) {
        self.add_slot(Self::slot(variant, reason));
    }

    /// Takes every count out, calling `take(variant, reason, count)` for
    /// each one that is not zero.
    pub fn drain(&self, mut take: impl FnMut(&str, Reason, u64)) {
        for (v, variant) in self.variants.iter().enumerate() {
            for reason in Reason::ALL {
                let slot = Self::slot(v, reason);
                let mut count = 0u64;
                for shard in 0..=self.shard_mask {
                    let line = shard * self.lines_per_shard + slot / LINE_SLOTS;
                    if let Some(line) = self.lines.get(line) {
                        let cell = &line.0[slot % LINE_SLOTS];
                        // Reading first leaves idle lines clean in the
                        // evaluating threads' caches.
                        if cell.load(Ordering::Relaxed) != 0 {
                            count = count.saturating_add(cell.swap(0, Ordering::Relaxed));
                        }
                    }
                }
                if count > 0 {
                    take(variant, reason, count);
                }
            }
        }
    }
}

/// Where an evaluation's answer is counted: the engine calls it once per
/// flag evaluated, prerequisites included.
pub trait Tap {
    /// Flag `counters` answered variant number `variant` for `reason`.
    fn count(&mut self, counters: &Arc<UsageCounters>, variant: usize, reason: Reason);
}

/// Counts each answer in its flag's counters.
pub struct Count;

impl Tap for Count {
    #[inline]
    fn count(&mut self, counters: &Arc<UsageCounters>, variant: usize, reason: Reason) {
        counters.add(variant, reason);
    }
}

/// Counts nothing (a preview, not an answer served).
pub struct Uncounted;

impl Tap for Uncounted {
    #[inline]
    fn count(&mut self, _: &Arc<UsageCounters>, _: usize, _: Reason) {}
}

/// The slots an answer was counted in, to count them again when the same
/// answer is given without evaluating (a remembered bulk answer: see
/// [`RepeatedAnswer`]).
#[derive(Debug, Default, Clone)]
pub struct UsageMarks(Vec<(Arc<UsageCounters>, usize)>);

/// An answer given again without evaluating (a remembered bulk answer of
/// 50 flags, say), counted as if evaluated each time. Giving it again adds
/// one to `repeats`, one atomic add where counting every mark would be one
/// per flag; the repeats are added to the marks' slots when usage is
/// drained ([`UsageRegistry::drain`] settles every live one first) and when
/// the answer is dropped, so no repeat is lost or counted twice.
#[derive(Debug)]
pub struct RepeatedAnswer {
    marks: UsageMarks,
    repeats: AtomicU64,
}

impl RepeatedAnswer {
    /// Counts the answer once more.
    #[inline]
    pub fn count_again(&self) {
        self.repeats.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the repeats so far to every mark's slot.
    fn settle(&self) {
        let times = self.repeats.swap(0, Ordering::Relaxed);
        if times > 0 {
            for (counters, slot) in &self.marks.0 {
                counters.add_slot_times(*slot, times);
            }
        }
    }
}

impl Drop for RepeatedAnswer {
    fn drop(&mut self) {
        // While the marks still hold their counters: a retired counter is
        // forgotten only once nothing holds it, after a drain.
        self.settle();
    }
}

/// The repeated answers that may still be alive, held weakly: an answer
/// dropped has settled itself.
#[derive(Debug, Default)]
struct Repeated {
    answers: Vec<std::sync::Weak<RepeatedAnswer>>,
    /// How many were alive at the last pruning: the list is pruned when it
    /// has grown to twice that, so it stays within twice the live answers
    /// however many come and go between drains.
    alive_when_pruned: usize,
}

impl Repeated {
    fn prune(&mut self) {
        self.answers.retain(|answer| answer.strong_count() > 0);
        self.alive_when_pruned = self.answers.len();
    }
}

/// Counts each answer and remembers where.
pub struct Recording<'a>(pub &'a mut UsageMarks);

impl Tap for Recording<'_> {
    fn count(&mut self, counters: &Arc<UsageCounters>, variant: usize, reason: Reason) {
        let slot = UsageCounters::slot(variant, reason);
        counters.add_slot(slot);
        self.0.0.push((Arc::clone(counters), slot));
    }
}

/// Counters no longer in the current snapshot, kept until they are
/// drained with nothing left that could add to them.
#[derive(Debug, Default)]
pub struct UsageRegistry {
    /// A std mutex: held to push or swap a vector, never across an await,
    /// and never on an evaluation.
    retired: Mutex<Vec<Arc<UsageCounters>>>,
    /// Answers given again without evaluating, settled before each drain.
    /// Locked when one is made (after an evaluation) and to drain.
    repeated: Mutex<Repeated>,
}

impl UsageRegistry {
    /// Keeps `counters` (of a flag a new snapshot replaced or removed).
    pub fn retire(&self, counters: impl IntoIterator<Item = Arc<UsageCounters>>) {
        let mut retired = self
            .retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        retired.extend(counters);
    }

    /// An answer counted in `marks`, to be given (and counted) again; see
    /// [`RepeatedAnswer`].
    pub fn repeatable(&self, marks: UsageMarks) -> Arc<RepeatedAnswer> {
        let answer = Arc::new(RepeatedAnswer {
            marks,
            repeats: AtomicU64::new(0),
        });
        let mut repeated = self
            .repeated
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if repeated.answers.len() >= (2 * repeated.alive_when_pruned).max(64) {
            repeated.prune();
        }
        repeated.answers.push(Arc::downgrade(&answer));
        answer
    }

    /// Adds every live repeated answer's repeats to its counters.
    fn settle_repeated(&self) {
        let live: Vec<Arc<RepeatedAnswer>> = {
            let mut repeated = self
                .repeated
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            repeated.prune();
            repeated
                .answers
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .collect()
        };
        // Outside the lock, which a bulk evaluation takes to remember
        // its answer.
        for answer in &live {
            answer.settle();
        }
    }

    /// Settles the repeated answers, then drains every retired counter into
    /// `take(key, variant, reason, count)`, and forgets those nobody else
    /// holds any more. A counter is forgotten only after a drain that came
    /// after the last holder let go, so a count added just before cannot be
    /// lost. The caller drains the current counters after this.
    pub fn drain(&self, take: &mut impl FnMut(&str, &str, Reason, u64)) {
        self.settle_repeated();
        let mut retired = std::mem::take(
            &mut *self
                .retired
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        retired.retain(|counters| {
            // Read before draining: if only we hold it now, nobody can add
            // after the drain below.
            let alone = Arc::strong_count(counters) == 1;
            counters.drain(|variant, reason, count| take(&counters.key, variant, reason, count));
            !alone
        });
        self.retire(retired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn drained(counters: &UsageCounters) -> BTreeMap<(String, &'static str), u64> {
        let mut out = BTreeMap::new();
        counters.drain(|variant, reason, count| {
            *out.entry((variant.to_owned(), reason.as_str()))
                .or_default() += count;
        });
        out
    }

    #[test]
    fn counts_from_many_threads_are_drained_exactly_once() {
        let counters = Arc::new(UsageCounters::new("f", ["on".into(), "off".into()]));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let counters = Arc::clone(&counters);
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        counters.add((i + t) % 2, Reason::Split);
                    }
                })
            })
            .collect();
        let mut total = 0;
        for thread in threads {
            total += drained(&counters).values().sum::<u64>();
            let _ = thread.join();
        }
        total += drained(&counters).values().sum::<u64>();
        assert_eq!(total, 40_000);
        assert!(drained(&counters).is_empty());
    }

    #[test]
    fn a_slot_out_of_range_is_ignored() {
        let counters = UsageCounters::new("f", ["on".into(), "off".into()]);
        counters.add(2, Reason::Static);
        counters.add_slot(usize::MAX);
        assert!(drained(&counters).is_empty());
        counters.add(1, Reason::PrerequisiteFailed);
        assert_eq!(
            drained(&counters),
            BTreeMap::from([(("off".to_owned(), "PREREQUISITE_FAILED"), 1)])
        );
    }

    #[test]
    fn repeated_answers_are_counted_once_each_at_drains_and_when_dropped() {
        let registry = Arc::new(UsageRegistry::default());
        let counters = Arc::new(UsageCounters::new("f", ["on".into(), "off".into()]));
        let mut marks = UsageMarks::default();
        Recording(&mut marks).count(&counters, 1, Reason::Split);
        Recording(&mut marks).count(&counters, 0, Reason::Static);
        let answer = registry.repeatable(marks);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let answer = Arc::clone(&answer);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        answer.count_again();
                    }
                })
            })
            .collect();
        let mut total = BTreeMap::<(String, &'static str), u64>::new();
        let drain = |total: &mut BTreeMap<(String, &'static str), u64>| {
            registry.drain(&mut |_, _, _, _| {});
            for (key, count) in drained(&counters) {
                *total.entry(key).or_default() += count;
            }
        };
        for thread in threads {
            drain(&mut total);
            let _ = thread.join();
        }
        drain(&mut total);
        answer.count_again();
        answer.count_again();
        // The last two are settled by the drop.
        drop(answer);
        drain(&mut total);
        assert_eq!(
            total,
            BTreeMap::from([
                (("off".to_owned(), "SPLIT"), 40_003),
                (("on".to_owned(), "STATIC"), 40_003),
            ])
        );
    }

    #[test]
    fn the_list_of_repeated_answers_stays_within_twice_the_live_ones() {
        let registry = UsageRegistry::default();
        let held: Vec<_> = (0..100)
            .map(|_| registry.repeatable(UsageMarks::default()))
            .collect();
        for _ in 0..10_000 {
            drop(registry.repeatable(UsageMarks::default()));
        }
        let listed = registry
            .repeated
            .lock()
            .expect("not poisoned")
            .answers
            .len();
        assert!(
            listed <= 2 * held.len(),
            "{listed} listed for {} alive",
            held.len()
        );
    }

    #[test]
    fn retired_counters_are_kept_while_held_and_drained_to_the_last_count() {
        let registry = UsageRegistry::default();
        let counters = Arc::new(UsageCounters::new("f", ["on".into(), "off".into()]));
        let held = Arc::clone(&counters);
        registry.retire([counters]);
        held.add(0, Reason::Static);
        let mut seen = 0;
        registry.drain(&mut |_, _, _, count| seen += count);
        held.add(0, Reason::Static);
        drop(held);
        registry.drain(&mut |_, _, _, count| seen += count);
        assert_eq!(seen, 2);
        assert!(registry.retired.lock().expect("not poisoned").is_empty());
    }
}
