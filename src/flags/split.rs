//! Weighted splits: which variant of a split a context gets.
//!
//! The formula is Unleash's variant selection, so a user gets the same
//! variant here as in an Unleash flag with the same weights:
//! `murmur3_x86_32("{group}:{stickiness value}", seed 86028157) %
//! total_weight + 1`, and the first variant whose running weight reaches
//! that number. The group is the flag key; the stickiness value is the
//! user id unless the split names another attribute.
//!
//! Consequences worth knowing (and documented in the README): with the
//! total weight unchanged, moving weight to a variant from the others never
//! moves a user away from it only when the variants keep their order and
//! the weight moves from the variants after it; changing the total weight
//! reshuffles users, as in Unleash.

use std::hash::Hasher;

use mur3::Hasher32;

/// Unleash's seed for variant selection.
pub const VARIANT_SEED: u32 = 86_028_157;

/// The number in `1..=total_weight` that picks a variant for
/// `stickiness_value` in `group`; `None` when the total weight is 0.
pub fn variant_hash(group: &str, stickiness_value: &str, total_weight: u32) -> Option<u32> {
    if total_weight == 0 {
        return None;
    }
    let mut hasher = Hasher32::with_seed(VARIANT_SEED);
    hasher.write(group.as_bytes());
    hasher.write(b":");
    hasher.write(stickiness_value.as_bytes());
    Some(hasher.finish32() % total_weight + 1)
}

/// The index of the variant whose running weight first reaches `target`
/// (from [`variant_hash`]); `None` when the weights never reach it.
pub fn pick(weights: impl IntoIterator<Item = u32>, target: u32) -> Option<usize> {
    let mut running: u64 = 0;
    for (index, weight) in weights.into_iter().enumerate() {
        running += u64::from(weight);
        if running >= u64::from(target) {
            return Some(index);
        }
    }
    None
}

/// The index of the variant `stickiness_value` gets in `group` among
/// variants of these `weights`; `None` when all weights are 0.
pub fn choose(group: &str, stickiness_value: &str, weights: &[u32]) -> Option<usize> {
    let total = weights
        .iter()
        .try_fold(0u32, |sum, weight| sum.checked_add(*weight))?;
    let target = variant_hash(group, stickiness_value, total)?;
    pick(weights.iter().copied(), target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RGB: [u32; 3] = [500, 300, 200];

    #[test]
    fn unleash_vectors() {
        // The examples of issue "Flags that real teams need", checked
        // against Unleash's engine: red 500, green 300, blue 200.
        assert_eq!(variant_hash("checkout.v2", "42", 1000), Some(146));
        assert_eq!(choose("checkout.v2", "42", &RGB), Some(0));
        assert_eq!(variant_hash("button_color", "user-1", 1000), Some(541));
        assert_eq!(choose("button_color", "user-1", &RGB), Some(1));
    }

    #[test]
    fn no_weight_no_variant() {
        assert_eq!(choose("k", "u", &[]), None);
        assert_eq!(choose("k", "u", &[0, 0]), None);
        assert_eq!(variant_hash("k", "u", 0), None);
    }

    #[test]
    fn the_hash_is_the_hash_of_the_joined_string() {
        let mut hasher = Hasher32::with_seed(VARIANT_SEED);
        hasher.write(b"checkout.v2:42");
        assert_eq!(hasher.finish32() % 1000 + 1, 146);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every context gets a variant with weight, and only one of those.
        #[test]
        fn a_variant_with_weight_is_always_chosen(
            weights in prop::collection::vec(0u32..1000, 1..8),
            user in "[a-z0-9-]{0,16}",
        ) {
            let total: u32 = weights.iter().sum();
            let chosen = choose("flag", &user, &weights);
            if total == 0 {
                prop_assert_eq!(chosen, None);
            } else {
                let index = chosen.expect("a variant");
                prop_assert!(weights[index] > 0);
            }
        }

        /// With the total unchanged, giving a variant weight taken from any
        /// of the others (before it, after it, or both) never moves a user
        /// away from it: its range of buckets only grows.
        #[test]
        fn growing_a_variant_from_the_others_keeps_its_users(
            weights in prop::collection::vec(1u32..500, 2..6),
            grow_index in 0usize..6,
            taken in prop::collection::vec(0u32..400, 6),
            user in "[a-z0-9-]{1,16}",
        ) {
            let grow = grow_index % weights.len();
            let mut after = weights.clone();
            let mut moved = 0;
            for (i, weight) in after.iter_mut().enumerate() {
                if i != grow {
                    let take = taken[i].min(*weight);
                    *weight -= take;
                    moved += take;
                }
            }
            after[grow] += moved;
            prop_assert_eq!(weights.iter().sum::<u32>(), after.iter().sum::<u32>());
            if choose("flag", &user, &weights) == Some(grow) {
                prop_assert_eq!(choose("flag", &user, &after), Some(grow));
            }
        }

        /// The same user always gets the same variant.
        #[test]
        fn sticky(weights in prop::collection::vec(1u32..100, 1..6), user in ".{0,20}") {
            prop_assert_eq!(choose("k", &user, &weights), choose("k", &user, &weights));
        }
    }

    #[test]
    fn shares_follow_the_weights() {
        let mut counts = [0u32; 3];
        for user in 0..20_000 {
            let index = choose("share-check", &format!("user-{user}"), &RGB).expect("variant");
            counts[index] += 1;
        }
        // 50 / 30 / 20 % of 20,000, within 1.5 points (about 4 standard
        // deviations of a binomial at n = 20,000).
        for (count, expected) in counts.iter().zip([10_000.0, 6_000.0, 4_000.0]) {
            let share = f64::from(*count);
            assert!(
                (share - expected).abs() < 300.0,
                "counts {counts:?} far from 50/30/20"
            );
        }
    }
}
