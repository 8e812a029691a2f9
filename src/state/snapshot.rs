//! The immutable snapshot of everything readyd serves from memory, built by
//! pure functions from database rows. No I/O, no async.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::config::{ConfigRow, ConfigRows};
use crate::flags::segment::{CompiledSegment, Segment};
use crate::flags::{CompiledConstraint, CompiledFlag, Flag, FlagLookup};

pub use super::flag_map::FlagMap;

/// Segments by key.
pub type SegmentMap = HashMap<String, Arc<CompiledSegment>, foldhash::fast::RandomState>;

/// Every flag and configuration row at one version. Readers hold an `Arc` to it; a change builds
/// a new snapshot and swaps it in whole, so no reader sees half a change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The version of the last change the snapshot includes: every change
    /// with a version at or below it is in, none above it.
    pub version: i64,
    /// Flags by key, compiled for evaluation. Behind an `Arc` so that a
    /// change that touches no flag shares the map instead of copying it.
    pub flags: Arc<FlagMap>,
    /// Configuration rows of every environment, by (key, environment).
    pub configs: Arc<ConfigRows>,
    /// Segments by key, compiled for the rules that name them.
    pub segments: Arc<SegmentMap>,
    /// The flags ordered by key, made once when first asked for and shared
    /// by every stream that sends this snapshot.
    sorted_flags: OnceLock<Arc<[Arc<CompiledFlag>]>>,
    /// Whether a flag's or a segment's constraint reads the clock, found
    /// once when first asked for.
    reads_time: OnceLock<bool>,
}

impl Snapshot {
    /// Builds a snapshot from rows as read from the database. A row that
    /// fails validation (bad data written by plain SQL) is left out with a
    /// warning: one bad row must never take every flag down with it.
    pub fn from_rows(version: i64, flags: Vec<Flag>, configs: Vec<ConfigRow>) -> Snapshot {
        let flags = flags
            .into_iter()
            .filter_map(|flag| match compiled(flag) {
                Ok(flag) => Some(Arc::new(flag)),
                Err((key, problem)) => {
                    tracing::warn!(flag = %key, %problem, "flag row is invalid; it is left out of the snapshot");
                    None
                }
            })
            .collect();
        let configs = configs
            .into_iter()
            .map(|row| ((row.key.clone(), row.environment.clone()), Arc::new(row)))
            .collect();
        Snapshot {
            version,
            flags: Arc::new(flags),
            configs: Arc::new(configs),
            segments: Arc::default(),
            sorted_flags: OnceLock::new(),
            reads_time: OnceLock::new(),
        }
    }

    /// This snapshot with `segments` (rows as read from the database; an
    /// invalid one is left out with a warning, as a flag row is).
    #[must_use]
    pub fn with_segments(mut self, segments: Vec<Segment>) -> Snapshot {
        self.segments = Arc::new(
            segments
                .into_iter()
                .filter_map(|segment| {
                    compiled_segment(segment).map(|s| (s.segment().key.clone(), Arc::new(s)))
                })
                .collect(),
        );
        self.reads_time = OnceLock::new();
        self
    }

    /// A snapshot at `version` with these flags and rows and this
    /// snapshot's segments.
    fn derived(&self, version: i64, flags: Arc<FlagMap>, configs: Arc<ConfigRows>) -> Snapshot {
        Snapshot {
            version,
            flags,
            configs,
            segments: Arc::clone(&self.segments),
            sorted_flags: OnceLock::new(),
            reads_time: OnceLock::new(),
        }
    }

    /// One segment by key.
    pub fn segment(&self, key: &str) -> Option<&Arc<CompiledSegment>> {
        self.segments.get(key)
    }

    /// Every segment, ordered by key.
    pub fn segments_sorted(&self) -> Vec<&Arc<CompiledSegment>> {
        let mut segments: Vec<_> = self.segments.values().collect();
        segments.sort_unstable_by(|a, b| a.segment().key.cmp(&b.segment().key));
        segments
    }

    /// The keys of the flags whose rules name segment `key`, ordered.
    pub fn flags_using_segment(&self, key: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .flags
            .values()
            .filter(|flag| {
                flag.flag().targeting.as_ref().is_some_and(|t| {
                    t.rules
                        .iter()
                        .any(|rule| rule.segments.iter().any(|s| s == key))
                })
            })
            .map(|flag| flag.key().to_owned())
            .collect();
        keys.sort_unstable();
        keys
    }

    /// This snapshot with one segment changed: `Some` upserts it, `None`
    /// deletes `key`. An invalid segment row is treated like a deleted one.
    pub fn with_segment(&self, version: i64, key: &str, segment: Option<Segment>) -> Snapshot {
        let mut segments = SegmentMap::clone(&self.segments);
        match segment.and_then(compiled_segment) {
            Some(segment) => {
                segments.insert(segment.segment().key.clone(), Arc::new(segment));
            }
            None => {
                segments.remove(key);
            }
        }
        Snapshot {
            segments: Arc::new(segments),
            ..self.derived(version, Arc::clone(&self.flags), Arc::clone(&self.configs))
        }
    }

    /// Every flag, ordered by key; shared, made once per snapshot.
    pub fn flags_sorted(&self) -> Arc<[Arc<CompiledFlag>]> {
        Arc::clone(self.sorted_flags.get_or_init(|| {
            let mut flags: Vec<Arc<CompiledFlag>> = self.flags.values().cloned().collect();
            flags.sort_unstable_by(|a, b| a.key().cmp(b.key()));
            flags.into()
        }))
    }

    /// Whether an evaluation may read the clock (a `current_time`
    /// constraint in some flag's rule or some segment): if not, the
    /// snapshot's version, the context and the staleness alone decide every
    /// answer, and an answer may be remembered for as long as they hold.
    pub fn reads_time(&self) -> bool {
        *self.reads_time.get_or_init(|| {
            self.flags.values().any(|flag| flag.reads_time())
                || self.segments.values().any(|segment| {
                    segment
                        .constraints()
                        .iter()
                        .any(CompiledConstraint::reads_time)
                })
        })
    }

    /// One flag by key.
    pub fn flag(&self, key: &str) -> Option<&Arc<CompiledFlag>> {
        self.flags.get(key)
    }

    /// Flags whose key starts with `prefix`, ordered by key.
    pub fn flags_with_prefix(&self, prefix: &str) -> Vec<&Arc<CompiledFlag>> {
        let mut flags: Vec<_> = self
            .flags
            .values()
            .filter(|f| f.key().starts_with(prefix))
            .collect();
        flags.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        flags
    }

    /// This snapshot at a later version with nothing else changed.
    pub fn at_version(&self, version: i64) -> Snapshot {
        Snapshot {
            sorted_flags: self.sorted_flags.clone(),
            reads_time: self.reads_time.clone(),
            ..self.derived(version, Arc::clone(&self.flags), Arc::clone(&self.configs))
        }
    }

    /// This snapshot with one flag changed: `Some` upserts it, `None` deletes
    /// `key`. The snapshot's version becomes `version`. An invalid flag row
    /// is treated like a deleted one (and logged), as in [`Self::from_rows`].
    pub fn with_flag(&self, version: i64, key: &str, flag: Option<Flag>) -> Snapshot {
        let mut flags = FlagMap::clone(&self.flags);
        match flag.map(compiled) {
            Some(Ok(flag)) => flags.insert(Arc::new(flag)),
            Some(Err((key, problem))) => {
                tracing::warn!(flag = %key, %problem, "flag row is invalid; it is left out of the snapshot");
                flags.remove(key.as_str());
            }
            None => {
                flags.remove(key);
            }
        }
        self.derived(version, Arc::new(flags), Arc::clone(&self.configs))
    }

    /// This snapshot with one configuration row changed: `Some` upserts
    /// it, `None` deletes the row (`key`, `environment`).
    pub fn with_config(
        &self,
        version: i64,
        key: &str,
        environment: &str,
        row: Option<ConfigRow>,
    ) -> Snapshot {
        let mut configs = ConfigRows::clone(&self.configs);
        let id = (key.to_owned(), environment.to_owned());
        match row {
            Some(row) => configs.insert(id, Arc::new(row)),
            None => configs.remove(&id),
        };
        Snapshot {
            sorted_flags: self.sorted_flags.clone(),
            reads_time: self.reads_time.clone(),
            ..self.derived(version, Arc::clone(&self.flags), Arc::new(configs))
        }
    }
}

/// Validates a stored flag with the rules of a write, and compiles it.
fn compiled(flag: Flag) -> Result<CompiledFlag, (String, String)> {
    let key = flag.key.clone();
    CompiledFlag::new(flag).map_err(|errors| (key, errors.to_string()))
}

/// A stored segment, checked and compiled; `None` (logged) when invalid.
fn compiled_segment(segment: Segment) -> Option<CompiledSegment> {
    let key = segment.key.clone();
    match CompiledSegment::new(segment) {
        Ok(segment) => Some(segment),
        Err(errors) => {
            let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
            tracing::warn!(segment = %key, problem = %problems.join("; "), "segment row is invalid; it is left out of the snapshot");
            None
        }
    }
}

impl FlagLookup for Snapshot {
    fn compiled_flag(&self, key: &str) -> Option<&CompiledFlag> {
        self.flags.get(key).map(|flag| &**flag)
    }

    fn segment_constraints(&self, key: &str) -> Option<&[CompiledConstraint]> {
        self.segments.get(key).map(|segment| segment.constraints())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flag(key: &str, targeting: serde_json::Value) -> Flag {
        let mut flag = json!({
            "key": key, "description": "", "enabled": true, "value_type": "bool",
            "on_value": true, "off_value": false, "environments": [], "target_users": [],
            "target_roles": [], "rollout_percentage": 100, "version": 1,
            "updated_at": "2026-12-06T00:00:00Z", "updated_by": "test"
        });
        if !targeting.is_null() {
            flag["targeting"] = targeting;
        }
        serde_json::from_value(flag).expect("a flag")
    }

    fn segment(key: &str, attribute: &str) -> Segment {
        serde_json::from_value(json!({
            "key": key, "constraints": [
                {"attribute": attribute, "operator": "date_after", "values": ["2026-01-01T00:00:00Z"]}
            ], "version": 1, "updated_at": "2026-12-06T00:00:00Z", "updated_by": "test"
        }))
        .expect("a segment")
    }

    #[test]
    fn a_snapshot_knows_whether_a_flag_or_a_segment_reads_the_clock() {
        let timed = json!({"rules": [{"name": "r", "constraints": [
            {"attribute": "current_time", "operator": "date_after", "values": ["2026-01-01T00:00:00Z"]}
        ], "serve": {"variant": "on"}}]});
        let plain = Snapshot::from_rows(1, vec![flag("a", serde_json::Value::Null)], vec![]);
        assert!(!plain.reads_time());
        let with_rule = Snapshot::from_rows(1, vec![flag("a", timed)], vec![]);
        assert!(with_rule.reads_time());
        assert!(with_rule.at_version(2).reads_time());
        let with_segment = Snapshot::from_rows(1, vec![flag("a", serde_json::Value::Null)], vec![])
            .with_segments(vec![segment("launched", "current_time")]);
        assert!(with_segment.reads_time());
        let other_segment =
            with_segment.with_segment(2, "launched", Some(segment("launched", "signup")));
        assert!(
            !other_segment.reads_time(),
            "the segment no longer reads the clock"
        );
    }
}
