//! Follow messages, encoded once and shared by every follower.
//!
//! An upstream with thousands of followers must not serialise its snapshot
//! thousands of times: the parts of a snapshot are encoded once per version
//! and set of environments, each change once, and every Follow stream sends
//! the same bytes (a reference count, not a copy, until the transport
//! writes them). Rows travel as readyd's own JSON (as in the snapshot
//! file), so a follower rebuilds exactly the rows its upstream holds.
//!
//! Each message is kept as a whole gRPC frame (the 5-byte prefix, then the
//! message), so a stream hands the shared bytes to HTTP/2 as they are: no
//! stream copies them into an encode buffer of its own.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use prost::Message;

use crate::api::pb::readyd::v1 as pb;
use crate::config::ConfigRow;
use crate::flags::Flag;
use crate::flags::segment::Segment;
use crate::state::{Event, Snapshot};

/// Snapshot messages are cut at about this size: one HTTP/2 frame, and a
/// follower decodes a part at a time.
pub const PART_BYTES: usize = 16 * 1024;
/// A gRPC frame's prefix: a compressed flag and the message's length.
pub const FRAME_HEADER: usize = 5;
/// Encoded snapshots kept (a few versions, a few sets of environments).
const SNAPSHOTS_KEPT: usize = 8;
/// Encoded changes kept: as many as the state's history, so every follower
/// resuming from it finds them.
const EVENTS_KEPT: usize = crate::state::HISTORY_LEN;

/// One change, encoded for the followers that get it and as a progress
/// marker for those that do not.
#[derive(Debug)]
pub struct EncodedEvent {
    /// The change's version.
    pub version: i64,
    /// The change message; `None` for a change no follower gets (progress).
    pub change: Option<Bytes>,
    /// The environment of a configuration row; a follower gets the change
    /// only when it holds that environment (`*` rows go to everyone).
    pub environment: Option<String>,
    /// The progress marker.
    pub progress: Bytes,
}

impl EncodedEvent {
    /// The message for a follower holding `environments`.
    pub fn for_follower(&self, environments: &BTreeSet<String>) -> &Bytes {
        let wanted = match &self.environment {
            None => true,
            Some(environment) => environment == "*" || environments.contains(environment),
        };
        match &self.change {
            Some(change) if wanted => change,
            _ => &self.progress,
        }
    }
}

/// Which snapshot encoding: a version for a set of environments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotKey {
    version: i64,
    environments: BTreeSet<String>,
}

/// The encodings shared by every Follow stream of one readyd.
#[derive(Debug, Default)]
pub struct Encodings {
    /// Newest last.
    snapshots: Mutex<VecDeque<(SnapshotKey, Arc<[Bytes]>)>>,
    /// By version, newest last.
    events: Mutex<VecDeque<Arc<EncodedEvent>>>,
}

impl Encodings {
    /// The parts of `snapshot` for followers holding `environments`,
    /// encoded by the first stream that needs them.
    pub fn snapshot(&self, snapshot: &Snapshot, environments: &BTreeSet<String>) -> Arc<[Bytes]> {
        let key = SnapshotKey {
            version: snapshot.version,
            environments: environments.clone(),
        };
        // Held while encoding: a second stream for the same snapshot waits
        // and takes the same bytes instead of encoding them again.
        let mut kept = self
            .snapshots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, parts)) = kept.iter().find(|(kept_key, _)| *kept_key == key) {
            return Arc::clone(parts);
        }
        let parts: Arc<[Bytes]> = snapshot_parts(snapshot, environments).into();
        kept.push_back((key, Arc::clone(&parts)));
        while kept.len() > SNAPSHOTS_KEPT {
            kept.pop_front();
        }
        parts
    }

    /// `event`, encoded by the first stream that needs it.
    pub fn event(&self, event: &Event) -> Arc<EncodedEvent> {
        let version = event.version();
        let mut kept = self
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(encoded) = kept.iter().rev().find(|encoded| encoded.version == version) {
            return Arc::clone(encoded);
        }
        let encoded = Arc::new(encode_event(event));
        kept.push_back(Arc::clone(&encoded));
        while kept.len() > EVENTS_KEPT {
            kept.pop_front();
        }
        encoded
    }
}

/// `event` as a gRPC frame: uncompressed, its length, the message.
fn encoded(event: pb::follow_response::Event) -> Bytes {
    let message = pb::FollowResponse { event: Some(event) };
    let len = message.encoded_len();
    let mut frame = Vec::with_capacity(FRAME_HEADER + len);
    frame.put_u8(0);
    // Only a message of 4 GiB or more saturates; a stream refuses any
    // message over the message limit, far below that.
    frame.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut frame);
    frame.into()
}

/// The message of a frame made by [`encoded`].
pub fn message_len(frame: &Bytes) -> usize {
    frame.len().saturating_sub(FRAME_HEADER)
}

fn flag_json(flag: &Flag) -> String {
    // A row always serialises: plain data, string keys.
    serde_json::to_string(flag).unwrap_or_default()
}

fn config_json(row: &ConfigRow) -> String {
    serde_json::to_string(row).unwrap_or_default()
}

fn segment_json(segment: &Segment) -> String {
    serde_json::to_string(segment).unwrap_or_default()
}

/// Every flag, and the configuration rows of `environments` and `*`, in
/// parts of about [`PART_BYTES`] (at least one, even when empty).
fn snapshot_parts(snapshot: &Snapshot, environments: &BTreeSet<String>) -> Vec<Bytes> {
    let flags = snapshot.flags_sorted();
    // Segments first, so a follower never holds a rule whose segment has
    // not arrived yet.
    let rows = snapshot
        .segments_sorted()
        .into_iter()
        .map(|segment| pb::replica_row::Row::SegmentJson(segment_json(segment.segment())))
        .chain(
            flags
                .iter()
                .map(|flag| pb::replica_row::Row::FlagJson(flag_json(flag.flag()))),
        )
        .chain(
            snapshot
                .configs
                .values()
                .filter(|row| row.environment == "*" || environments.contains(&row.environment))
                .map(|row| pb::replica_row::Row::ConfigJson(config_json(row))),
        )
        .map(|row| pb::ReplicaRow { row: Some(row) });
    let mut parts: Vec<Vec<pb::ReplicaRow>> = vec![Vec::new()];
    let mut size = 0;
    for row in rows {
        let len = row.encoded_len();
        if size > 0 && size + len > PART_BYTES {
            parts.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(part) = parts.last_mut() {
            part.push(row);
        }
    }
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, rows)| {
            encoded(pb::follow_response::Event::Snapshot(pb::ReplicaSnapshot {
                version: snapshot.version,
                rows,
                first: i == 0,
                last: i + 1 == count,
            }))
        })
        .collect()
}

fn encode_event(event: &Event) -> EncodedEvent {
    let version = event.version();
    let progress = encoded(pb::follow_response::Event::Progress(pb::Progress {
        version,
    }));
    let change = |change| {
        Some(encoded(pb::follow_response::Event::Change(
            pb::ReplicaChange {
                version,
                change: Some(change),
            },
        )))
    };
    let (change, environment) = match event {
        Event::FlagUpserted { flag, .. } => (
            change(pb::replica_change::Change::FlagUpsertedJson(flag_json(
                flag.flag(),
            ))),
            None,
        ),
        Event::FlagDeleted { key, .. } => (
            change(pb::replica_change::Change::FlagDeleted(key.clone())),
            None,
        ),
        Event::ConfigChanged {
            key,
            environment,
            row,
            ..
        } => {
            let message = match row {
                Some(row) => pb::replica_change::Change::ConfigUpsertedJson(config_json(row)),
                None => pb::replica_change::Change::ConfigDeleted(pb::ConfigRowKey {
                    key: key.clone(),
                    environment: environment.clone(),
                }),
            };
            (change(message), Some(environment.clone()))
        }
        Event::SegmentChanged { key, segment, .. } => (
            change(match segment {
                Some(segment) => {
                    pb::replica_change::Change::SegmentUpsertedJson(segment_json(segment.segment()))
                }
                None => pb::replica_change::Change::SegmentDeleted(key.clone()),
            }),
            None,
        ),
        // A resync is sent as a snapshot, never through here.
        Event::Resync { .. } | Event::Progress { .. } => (None, None),
    };
    EncodedEvent {
        version,
        change,
        environment,
        progress,
    }
}

/// The first message of a Follow stream.
pub fn hello(instance: &str, version: i64) -> Bytes {
    encoded(pb::follow_response::Event::Hello(pb::FollowHello {
        protocol: super::PROTOCOL,
        readyd_version: env!("CARGO_PKG_VERSION").to_owned(),
        instance: instance.to_owned(),
        version,
    }))
}

/// The verifiers message.
pub fn verifiers(verifiers: &super::verifiers::Verifiers) -> Bytes {
    encoded(pb::follow_response::Event::Verifiers(verifiers.into()))
}

/// The freshness message: stale for `stale_for`, or current.
pub fn freshness(stale_for: Option<Duration>) -> Bytes {
    encoded(pb::follow_response::Event::Freshness(
        crate::api::flags::freshness(stale_for),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::ValueType;

    fn flag(key: &str, version: i64) -> Flag {
        Flag {
            key: key.into(),
            description: "d".repeat(300),
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

    fn row(key: &str, environment: &str) -> ConfigRow {
        ConfigRow {
            key: key.into(),
            environment: environment.into(),
            value: serde_json::json!(1),
            description: String::new(),
            is_sensitive: false,
            version: 1,
            updated_at: chrono::Utc::now(),
            updated_by: "test".into(),
        }
    }

    /// The message of a frame, after checking its prefix.
    fn unframe(frame: &Bytes) -> pb::FollowResponse {
        assert_eq!(frame[0], 0, "not compressed");
        let len = u32::from_be_bytes(frame[1..FRAME_HEADER].try_into().expect("4 bytes"));
        assert_eq!(
            len as usize,
            message_len(frame),
            "the prefix holds the length"
        );
        pb::FollowResponse::decode(frame.slice(FRAME_HEADER..)).expect("decodes")
    }

    fn decode(parts: &[Bytes]) -> (Vec<String>, Vec<(String, String)>) {
        let mut flags = Vec::new();
        let mut configs = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let message = unframe(part);
            let Some(pb::follow_response::Event::Snapshot(snapshot)) = message.event else {
                panic!("a snapshot part");
            };
            assert_eq!(snapshot.first, i == 0);
            assert_eq!(snapshot.last, i + 1 == parts.len());
            for row in snapshot.rows {
                match row.row.expect("a row") {
                    pb::replica_row::Row::FlagJson(json) => {
                        let flag: Flag = serde_json::from_str(&json).expect("a flag");
                        flags.push(flag.key);
                    }
                    pb::replica_row::Row::ConfigJson(json) => {
                        let row: ConfigRow = serde_json::from_str(&json).expect("a row");
                        configs.push((row.key, row.environment));
                    }
                    pb::replica_row::Row::SegmentJson(json) => {
                        panic!("no segments in these snapshots: {json}")
                    }
                }
            }
        }
        (flags, configs)
    }

    #[test]
    fn a_snapshot_is_encoded_once_and_holds_every_flag_and_the_wanted_rows() {
        let flags: Vec<Flag> = (0..200).map(|i| flag(&format!("f{i:03}"), i)).collect();
        let configs = vec![row("a", "*"), row("a", "prod"), row("b", "staging")];
        let snapshot = Snapshot::from_rows(300, flags, configs);
        let encodings = Encodings::default();
        let prod = BTreeSet::from(["prod".to_owned()]);
        let parts = encodings.snapshot(&snapshot, &prod);
        assert!(parts.len() > 1, "200 flags of 300 bytes make several parts");
        assert!(parts.iter().all(|part| part.len() <= PART_BYTES + 1024));
        let again = encodings.snapshot(&snapshot, &prod);
        assert!(Arc::ptr_eq(&parts, &again), "shared, not encoded twice");
        let (flag_keys, config_keys) = decode(&parts);
        assert_eq!(flag_keys.len(), 200);
        assert_eq!(
            config_keys,
            [
                ("a".to_owned(), "*".to_owned()),
                ("a".to_owned(), "prod".to_owned())
            ]
        );
        let empty = Snapshot::from_rows(1, vec![], vec![]);
        assert_eq!(
            encodings.snapshot(&empty, &prod).len(),
            1,
            "one part even when empty"
        );
    }

    #[test]
    fn a_config_change_of_another_environment_is_progress() {
        let event = Event::ConfigChanged {
            version: 7,
            key: "k".into(),
            environment: "staging".into(),
            row: Some(Arc::new(row("k", "staging"))),
            resolved: None,
            resolved_changed: false,
        };
        let encoded = Encodings::default().event(&event);
        let prod = BTreeSet::from(["prod".to_owned()]);
        let staging = BTreeSet::from(["staging".to_owned()]);
        let to_prod = unframe(encoded.for_follower(&prod));
        assert!(matches!(
            to_prod.event,
            Some(pb::follow_response::Event::Progress(pb::Progress {
                version: 7
            }))
        ));
        let to_staging = unframe(encoded.for_follower(&staging));
        assert!(matches!(
            to_staging.event,
            Some(pb::follow_response::Event::Change(pb::ReplicaChange {
                version: 7,
                ..
            }))
        ));
    }
}
