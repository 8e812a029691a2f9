//! The ETags of recent OFREP bulk answers, so that a client polling with
//! `If-None-Match` (every OFREP provider does) gets its `304` without the
//! flags being evaluated again.
//!
//! A bulk answer is decided by the request's body (the context), the
//! caller's audience, the snapshot's version, whether the snapshot is stale
//! and the ticket window (the `ETag` covers it) — and by the clock, when a
//! constraint reads `current_time`: then nothing is remembered. An entry
//! holds all of these and its `ETag`; an entry is used only when every one
//! of them is the same now, so a cached `304` is exactly the `304` an
//! evaluation would have answered. The evaluations it stands for are
//! counted again on every use, as if made: in the metrics at once, in the
//! flags' usage as one repeat of the answer, spread over its flags when
//! usage is drained (see [`crate::usage::counters::RepeatedAnswer`]).
//!
//! Bounded: a fixed number of slots, a request's body hashed to one (a
//! newer entry replaces an older one), and bodies above [`MAX_BODY`] are
//! never remembered.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Mutex, OnceLock};

use axum::body::Bytes;
use axum::http::HeaderValue;

use crate::api::auth::Audience;
use std::sync::Arc;

use crate::telemetry::Tally;
use crate::usage::counters::RepeatedAnswer;

/// Slots: enough for the pages of a few thousand users polling one
/// instance; at most `SLOTS * MAX_BODY` of bodies (8 MiB), typically far
/// less (a context is a few hundred bytes).
const SLOTS: usize = 4096;

/// The largest body remembered.
pub const MAX_BODY: usize = 2048;

/// What decided an answer, besides the body and the audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    /// The snapshot's version.
    pub version: i64,
    /// Whether the answers said `STALE`.
    pub stale: bool,
    /// The ticket window.
    pub window: u64,
}

/// One remembered answer.
struct Entry {
    audience: Audience,
    body: Bytes,
    inputs: Inputs,
    etag: HeaderValue,
    /// The evaluations the answer was made of, by reason.
    tally: Tally,
    /// Where they were counted in the flags' usage, to count again.
    usage: Arc<RepeatedAnswer>,
}

/// One slot: boxed, so an empty one is a pointer's size.
type Slot = Mutex<Option<Box<Entry>>>;

/// The cache. Its slots are made on first use: an instance that serves no
/// bulk evaluation (most sidecars) spends no memory on them.
#[derive(Default)]
pub struct BulkCache {
    slots: OnceLock<Box<[Slot]>>,
    hasher: foldhash::fast::RandomState,
}

impl BulkCache {
    /// The slot of `body` for `audience`.
    fn slot(&self, audience: Audience, body: &[u8]) -> &Slot {
        let slots = self
            .slots
            .get_or_init(|| (0..SLOTS).map(|_| Mutex::new(None)).collect());
        let mut hasher = self.hasher.build_hasher();
        (audience == Audience::Clients).hash(&mut hasher);
        body.hash(&mut hasher);
        // SLOTS is far below u64::MAX, so the remainder fits any usize.
        let index = usize::try_from(hasher.finish() % SLOTS as u64).unwrap_or_default();
        &slots[index]
    }

    /// The `ETag` of the answer remembered for `body` and `audience` with
    /// exactly `inputs`, if there is one and `wanted(etag)`; then also
    /// `count(tally, usage)` with the evaluations it stands for (while the
    /// entry is held, so nothing is cloned for it).
    pub fn answer(
        &self,
        audience: Audience,
        body: &[u8],
        inputs: Inputs,
        wanted: impl FnOnce(&HeaderValue) -> bool,
        count: impl FnOnce(&Tally, &RepeatedAnswer),
    ) -> Option<HeaderValue> {
        if body.len() > MAX_BODY {
            return None;
        }
        // A poisoned slot (a panic while it was held) is only a cache miss.
        let slot = self.slot(audience, body).lock().ok()?;
        let entry = slot.as_ref()?;
        if entry.audience == audience
            && entry.inputs == inputs
            && entry.body == body
            && wanted(&entry.etag)
        {
            count(&entry.tally, &entry.usage);
            Some(entry.etag.clone())
        } else {
            None
        }
    }

    /// Remembers the answer `etag`, made of `tally` (counted in the flags'
    /// usage at `usage`), for `body`, `audience` and `inputs`.
    pub fn put(
        &self,
        audience: Audience,
        body: &[u8],
        inputs: Inputs,
        etag: HeaderValue,
        tally: Tally,
        usage: Arc<RepeatedAnswer>,
    ) {
        if body.len() > MAX_BODY {
            return;
        }
        if let Ok(mut slot) = self.slot(audience, body).lock() {
            *slot = Some(Box::new(Entry {
                audience,
                // A copy: the request's own buffer may be far larger.
                body: Bytes::copy_from_slice(body),
                inputs,
                etag,
                tally,
                usage,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::counters::{UsageMarks, UsageRegistry};
    use proptest::prelude::*;

    fn no_usage() -> Arc<RepeatedAnswer> {
        UsageRegistry::default().repeatable(UsageMarks::default())
    }

    /// The ETag remembered for the request, whatever it is.
    fn get(
        cache: &BulkCache,
        audience: Audience,
        body: &[u8],
        inputs: Inputs,
    ) -> Option<HeaderValue> {
        cache.answer(audience, body, inputs, |_| true, |_, _| {})
    }

    fn inputs(version: i64) -> Inputs {
        Inputs {
            version,
            stale: false,
            window: 7,
        }
    }

    fn etag(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).expect("an ETag")
    }

    #[test]
    fn an_answer_is_found_only_with_everything_that_decided_it() {
        let cache = BulkCache::default();
        let body = br#"{"context":{"targetingKey":"u1"}}"#;
        cache.put(
            Audience::Clients,
            body,
            inputs(3),
            etag("\"a\""),
            Tally::default(),
            no_usage(),
        );
        let found = get(&cache, Audience::Clients, body, inputs(3));
        assert_eq!(found, Some(etag("\"a\"")));
        assert!(
            get(&cache, Audience::Everyone, body, inputs(3)).is_none(),
            "another audience"
        );
        assert!(
            get(&cache, Audience::Clients, body, inputs(4)).is_none(),
            "another version"
        );
        let stale = Inputs {
            stale: true,
            ..inputs(3)
        };
        assert!(
            get(&cache, Audience::Clients, body, stale).is_none(),
            "stale now"
        );
        let later = Inputs {
            window: 8,
            ..inputs(3)
        };
        assert!(
            get(&cache, Audience::Clients, body, later).is_none(),
            "a new window"
        );
        assert!(
            get(
                &cache,
                Audience::Clients,
                br#"{"context":{"targetingKey":"u2"}}"#,
                inputs(3)
            )
            .is_none(),
            "another context"
        );
    }

    #[test]
    fn a_hit_counts_its_evaluations_only_when_its_tag_is_wanted() {
        let cache = BulkCache::default();
        let body = b"{}";
        cache.put(
            Audience::Clients,
            body,
            inputs(1),
            etag("\"a\""),
            Tally::default(),
            no_usage(),
        );
        let mut counted = 0;
        let answer = |tag: &'static str, counted: &mut i32| {
            cache.answer(
                Audience::Clients,
                body,
                inputs(1),
                |etag| *etag == tag,
                |_, _| *counted += 1,
            )
        };
        assert!(answer("\"b\"", &mut counted).is_none());
        assert_eq!(counted, 0);
        assert_eq!(answer("\"a\"", &mut counted), Some(etag("\"a\"")));
        assert_eq!(counted, 1);
    }

    #[test]
    fn large_bodies_are_never_remembered() {
        let cache = BulkCache::default();
        let body = vec![b' '; MAX_BODY + 1];
        cache.put(
            Audience::Everyone,
            &body,
            inputs(1),
            etag("\"a\""),
            Tally::default(),
            no_usage(),
        );
        assert!(get(&cache, Audience::Everyone, &body, inputs(1)).is_none());
    }

    proptest! {
        /// Whatever was put, a hit is always the last answer put for
        /// exactly that body, audience and inputs: never another's.
        #[test]
        fn a_hit_is_the_answer_put_for_exactly_that_request(
            puts in prop::collection::vec((0u8..4, any::<bool>(), 0i64..3, 0u32..1000), 1..64),
            ask in (0u8..4, any::<bool>(), 0i64..3),
        ) {
            let cache = BulkCache::default();
            let audience = |clients: bool| if clients { Audience::Clients } else { Audience::Everyone };
            let mut last = std::collections::HashMap::new();
            for (body, clients, version, tag) in &puts {
                let tag = etag(&format!("\"{tag}\""));
                cache.put(audience(*clients), &[*body], inputs(*version), tag.clone(), Tally::default(), no_usage());
                // A put replaces whatever its slot held, this request's or another's.
                last.insert((*body, *clients), (*version, tag));
            }
            let (body, clients, version) = ask;
            if let Some(tag) = get(&cache, audience(clients), &[body], inputs(version)) {
                prop_assert_eq!(last.get(&(body, clients)), Some(&(version, tag)));
            }
        }
    }
}
