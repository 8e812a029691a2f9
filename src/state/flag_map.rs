//! The flags of a snapshot by key, split over shards that a change copies
//! alone.
//!
//! A change to one flag makes a new snapshot, and the snapshot before it
//! stays whole for the readers still holding it, so the change copies what
//! it touches. With one map that was every flag: with 1,000 flags the copy
//! (a reference count per flag, and as many again when the old map went)
//! was the largest cost of a change in a follower, and a fleet of
//! followers sharing a core pays it once per follower. Here the flags are
//! spread over [`SHARDS`] tables by their key's hash; a change copies the
//! list of shards (a reference count each) and the one shard its key is in.
//!
//! A look-up hashes the key once: the hash picks the shard (bits the
//! table itself does not use) and then finds the key in it.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::flags::CompiledFlag;

/// How many shards the flags are split over: with 1,000 flags a change
/// copies about 16 entries and 64 shard pointers instead of 1,000 entries.
pub const SHARDS: usize = 64;

/// The hash bits that pick a shard: above the bits a table of fewer than
/// 2^32 buckets indexes with, and below the top seven it tags entries with.
const SHARD_SHIFT: u32 = 32;

/// One shard's flags, found by their key's hash.
type Shard = HashTable<Arc<CompiledFlag>>;

/// Flags by key. Hashed with foldhash rather than SipHash: a look-up is on
/// every evaluation, and clients can only look keys up, never insert them,
/// so SipHash's flooding protection buys nothing here.
#[derive(Clone)]
pub struct FlagMap {
    shards: [Arc<Shard>; SHARDS],
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl Default for FlagMap {
    fn default() -> Self {
        FlagMap {
            shards: std::array::from_fn(|_| Arc::default()),
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl std::fmt::Debug for FlagMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.values().map(|flag| (flag.key(), flag)))
            .finish()
    }
}

impl FlagMap {
    /// The hash of `key` and the index of its shard.
    fn locate(&self, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, (hash >> SHARD_SHIFT) as usize % SHARDS)
    }

    /// The flag `key`.
    pub fn get(&self, key: &str) -> Option<&Arc<CompiledFlag>> {
        let (hash, shard) = self.locate(key);
        self.shards[shard].find(hash, |flag| flag.key() == key)
    }

    /// How many flags.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no flag.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every flag, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<CompiledFlag>> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    /// Adds `flag` under its key, or replaces the flag of that key. Copies
    /// the key's shard if another map shares it.
    pub fn insert(&mut self, flag: Arc<CompiledFlag>) {
        let (hash, shard) = self.locate(flag.key());
        let hasher = &self.hasher;
        let table = Arc::make_mut(&mut self.shards[shard]);
        match table.entry(
            hash,
            |held| held.key() == flag.key(),
            |held| hasher.hash_one(held.key()),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut held) => *held.get_mut() = flag,
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(flag);
                self.len += 1;
            }
        }
    }

    /// Takes flag `key` out, if it is here. Copies the key's shard only
    /// when the key is in it.
    pub fn remove(&mut self, key: &str) -> Option<Arc<CompiledFlag>> {
        let (hash, shard) = self.locate(key);
        self.shards[shard].find(hash, |flag| flag.key() == key)?;
        let table = Arc::make_mut(&mut self.shards[shard]);
        let removed = table
            .find_entry(hash, |flag| flag.key() == key)
            .ok()
            .map(|held| held.remove().0);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The flags this map holds that `other` does not hold as the same
    /// `Arc` (replaced, or gone). Shards the two maps share are skipped
    /// without a look at their flags, so after one change this looks at one
    /// shard.
    pub fn not_shared_with<'a>(
        &'a self,
        other: &'a FlagMap,
    ) -> impl Iterator<Item = &'a Arc<CompiledFlag>> {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(mine, theirs)| !Arc::ptr_eq(mine, theirs))
            .flat_map(move |(mine, _)| {
                mine.iter().filter(move |flag| {
                    other
                        .get(flag.key())
                        .is_none_or(|now| !Arc::ptr_eq(now, flag))
                })
            })
    }
}

impl FromIterator<Arc<CompiledFlag>> for FlagMap {
    fn from_iter<I: IntoIterator<Item = Arc<CompiledFlag>>>(flags: I) -> Self {
        let mut map = FlagMap::default();
        for flag in flags {
            map.insert(flag);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::Flag;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn flag(key: &str, version: i64) -> Arc<CompiledFlag> {
        let flag: Flag = serde_json::from_value(serde_json::json!({
            "key": key, "description": "", "enabled": true, "value_type": "bool",
            "on_value": true, "off_value": false, "environments": [], "target_users": [],
            "target_roles": [], "rollout_percentage": 100, "version": version,
            "updated_at": "2026-12-06T00:00:00Z", "updated_by": "test"
        }))
        .expect("a flag");
        Arc::new(CompiledFlag::new(flag).expect("a valid flag"))
    }

    /// One step of a sequence of changes: upsert `key` at a version, or
    /// remove it.
    #[derive(Debug, Clone)]
    enum Step {
        Upsert(String, i64),
        Remove(String),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        // Few distinct keys, so steps hit the same keys and shards often.
        let key = "[a-e]{1,3}";
        prop::collection::vec(
            prop_oneof![
                (key, 1i64..1000).prop_map(|(k, v)| Step::Upsert(k, v)),
                key.prop_map(Step::Remove),
            ],
            0..80,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// After any sequence of changes, each made on a copy of the map
        /// before it, the map holds what an ordinary map would, and every
        /// earlier copy still holds what it held.
        #[test]
        fn behaves_as_a_map_and_copies_never_change(steps in steps()) {
            let mut map = FlagMap::default();
            let mut model: BTreeMap<String, i64> = BTreeMap::new();
            let mut history: Vec<(FlagMap, BTreeMap<String, i64>)> = Vec::new();
            for step in steps {
                let before = map.clone();
                history.push((map.clone(), model.clone()));
                let mut next = map.clone();
                match step {
                    Step::Upsert(key, version) => {
                        next.insert(flag(&key, version));
                        model.insert(key, version);
                    }
                    Step::Remove(key) => {
                        let removed = next.remove(&key);
                        prop_assert_eq!(removed.map(|f| f.flag().version), model.remove(&key));
                    }
                }
                // What changed between the two copies is exactly what
                // `not_shared_with` names.
                let mut replaced: Vec<&str> =
                    before.not_shared_with(&next).map(|f| f.key()).collect();
                replaced.sort_unstable();
                let mut expected: Vec<&str> = before
                    .values()
                    .filter(|f| next.get(f.key()).is_none_or(|now| !Arc::ptr_eq(now, f)))
                    .map(|f| f.key())
                    .collect();
                expected.sort_unstable();
                prop_assert_eq!(replaced, expected);
                map = next;
                let held: BTreeMap<String, i64> = map
                    .values()
                    .map(|f| (f.key().to_owned(), f.flag().version))
                    .collect();
                prop_assert_eq!(&held, &model);
                prop_assert_eq!(map.len(), model.len());
                for (key, version) in &model {
                    prop_assert_eq!(map.get(key).map(|f| f.flag().version), Some(*version));
                }
            }
            // Earlier copies are untouched by later changes.
            for (copy, model) in &history {
                let held: BTreeMap<String, i64> = copy
                    .values()
                    .map(|f| (f.key().to_owned(), f.flag().version))
                    .collect();
                prop_assert_eq!(&held, model);
                prop_assert_eq!(copy.len(), model.len());
            }
        }
    }

    #[test]
    fn a_change_copies_one_shard() {
        let map: FlagMap = (0..1000).map(|i| flag(&format!("flag-{i}"), 1)).collect();
        assert_eq!(map.len(), 1000);
        let mut changed = map.clone();
        changed.insert(flag("flag-7", 2));
        let copied = map
            .shards
            .iter()
            .zip(changed.shards.iter())
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert_eq!(copied, 1);
        assert_eq!(map.get("flag-7").map(|f| f.flag().version), Some(1));
        assert_eq!(changed.get("flag-7").map(|f| f.flag().version), Some(2));
        // The keys spread over the shards.
        let used = map.shards.iter().filter(|shard| !shard.is_empty()).count();
        assert!(used > SHARDS / 2, "1,000 keys in {used} shards");
    }
}
