//! The last-known-good snapshot on disk: what readyd can serve when it
//! starts while PostgreSQL is down.
//!
//! One file per environment, `<data-dir>/snapshots/<environment>.snapshot`:
//! a header line (JSON: format, format version, environment, snapshot
//! version, time written, payload length, and a SHA-256 of environment,
//! version and payload), then the payload
//! (JSON: every flag and config row). Written atomically (temporary file,
//! fsync, rename, fsync of the directory) at once after a change that
//! follows a quiet second, once per second during a burst of changes, and
//! once more at shutdown, readable only by readyd's user: it
//! holds sensitive config values, as the database does. A file that is
//! truncated, corrupt, of another format or of another environment is
//! refused with a reason, never half-read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigRow;
use crate::flags::Flag;
use crate::flags::segment::Segment;
use crate::state::State;
use crate::state::snapshot::Snapshot;

/// The first field of every snapshot file.
pub const FORMAT: &str = "readyd-snapshot";
/// The newest file format this readyd writes and reads: 2 holds flags with
/// v2 parts (DESIGN.md, "Flag model v2"). A snapshot without such flags is
/// written as format 1, which releases from before flag model v2 also read;
/// one with them is format 2, which they refuse instead of serving those
/// flags without their targeting.
pub const FORMAT_VERSION: u32 = 2;
/// The format of a snapshot whose flags all use only the first model's
/// fields.
const FORMAT_VERSION_FIRST_MODEL: u32 = 1;
/// Least time between two writes after changes: a change within this time
/// of the last write waits for it to pass, with the rest of its burst.
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// The header line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    format: String,
    format_version: u32,
    environment: String,
    version: i64,
    written_at: DateTime<Utc>,
    payload_bytes: u64,
    payload_sha256: String,
}

/// Everything a snapshot holds, as rows.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    flags: Vec<Flag>,
    configs: Vec<ConfigRow>,
    /// Absent in files written before segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    segments: Vec<Segment>,
}

/// A snapshot read back from disk.
#[derive(Debug, Clone)]
pub struct SavedSnapshot {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// When it was written.
    pub written_at: DateTime<Utc>,
}

/// Why a snapshot file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a readyd snapshot (or its header is damaged).
    #[error("not a readyd snapshot file")]
    NotASnapshot,
    /// A format this readyd does not read.
    #[error("snapshot format version {0} is not supported (this readyd reads {FORMAT_VERSION})")]
    UnsupportedFormat(u32),
    /// The snapshot of another environment.
    #[error("the snapshot is of environment {0:?}")]
    OtherEnvironment(String),
    /// The payload is not what the header promises.
    #[error("the snapshot is truncated or corrupt (length or checksum does not match)")]
    Corrupt,
    /// The payload does not decode.
    #[error("the snapshot's payload does not decode: {0}")]
    Payload(String),
}

/// Where the snapshot of `environment` lives under `data_dir`.
pub fn path_for(data_dir: &Path, environment: &str) -> PathBuf {
    data_dir
        .join("snapshots")
        .join(format!("{environment}.snapshot"))
}

/// The checksum of a payload, bound to the environment and version the
/// header claims for it, so damage to either is caught too.
fn checksum(environment: &str, version: i64, payload: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{environment}\n{version}\n").as_bytes());
    hasher.update(payload);
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The file's bytes for `snapshot` of `environment`, written at `now`.
pub fn encode(
    snapshot: &Snapshot,
    environment: &str,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, SnapshotFileError> {
    let payload = Payload {
        flags: snapshot
            .flags_with_prefix("")
            .into_iter()
            .map(|flag| flag.flag().clone())
            .collect(),
        configs: snapshot
            .configs
            .values()
            .map(|row| ConfigRow::clone(row))
            .collect(),
        segments: snapshot
            .segments_sorted()
            .into_iter()
            .map(|segment| segment.segment().clone())
            .collect(),
    };
    let format_version = if !payload.segments.is_empty()
        || payload.flags.iter().any(|flag| flag.targeting.is_some())
    {
        FORMAT_VERSION
    } else {
        FORMAT_VERSION_FIRST_MODEL
    };
    let payload =
        serde_json::to_vec(&payload).map_err(|err| SnapshotFileError::Payload(err.to_string()))?;
    let header = Header {
        format: FORMAT.to_owned(),
        format_version,
        environment: environment.to_owned(),
        version: snapshot.version,
        written_at: now,
        payload_bytes: payload.len() as u64,
        payload_sha256: checksum(environment, snapshot.version, &payload),
    };
    let mut bytes =
        serde_json::to_vec(&header).map_err(|err| SnapshotFileError::Payload(err.to_string()))?;
    bytes.push(b'\n');
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// The snapshot in `bytes`, which must be of `environment`.
pub fn decode(bytes: &[u8], environment: &str) -> Result<SavedSnapshot, SnapshotFileError> {
    let newline = bytes
        .iter()
        .position(|&byte| byte == b'\n')
        .ok_or(SnapshotFileError::NotASnapshot)?;
    let (header, payload) = (&bytes[..newline], &bytes[newline + 1..]);
    let header: Header =
        serde_json::from_slice(header).map_err(|_| SnapshotFileError::NotASnapshot)?;
    if header.format != FORMAT {
        return Err(SnapshotFileError::NotASnapshot);
    }
    if !(FORMAT_VERSION_FIRST_MODEL..=FORMAT_VERSION).contains(&header.format_version) {
        return Err(SnapshotFileError::UnsupportedFormat(header.format_version));
    }
    if header.environment != environment {
        return Err(SnapshotFileError::OtherEnvironment(header.environment));
    }
    if payload.len() as u64 != header.payload_bytes
        || checksum(&header.environment, header.version, payload) != header.payload_sha256
    {
        return Err(SnapshotFileError::Corrupt);
    }
    let payload: Payload = serde_json::from_slice(payload)
        .map_err(|err| SnapshotFileError::Payload(err.to_string()))?;
    Ok(SavedSnapshot {
        snapshot: Snapshot::from_rows(header.version, payload.flags, payload.configs)
            .with_segments(payload.segments),
        written_at: header.written_at,
    })
}

/// Reads the snapshot of `environment` at `path`.
pub fn read(path: &Path, environment: &str) -> Result<SavedSnapshot, SnapshotFileError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode(&bytes, environment)
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new
/// one, never a mix, even across a crash.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SnapshotFileError> {
    let io = |source| SnapshotFileError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".snapshot-")
        .tempfile_in(dir)
        .map_err(io)?;
    temp.write_all(bytes).map_err(io)?;
    temp.as_file().sync_all().map_err(io)?;
    temp.persist(path).map_err(|err| io(err.error))?;
    // The rename itself must reach the disk too.
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io)?;
    Ok(())
}

/// Saves the current snapshot to `path`.
async fn save(state: &State, path: &Path, environment: &str) {
    let snapshot = state.snapshot();
    let (path, environment) = (path.to_owned(), environment.to_owned());
    let version = snapshot.version;
    // Stamped with when the data was last known current, so that saving
    // during an outage does not make old data look new.
    let behind = chrono::Duration::from_std(state.freshness().behind_for()).unwrap_or_default();
    let known_current_at = Utc::now() - behind;
    // On a thread of its own at the scheduler's lowest weight (SCHED_IDLE:
    // any other thread that wakes takes the core from it): encoding a
    // large snapshot takes milliseconds of CPU, and every follower of a
    // fleet saves within the same second after a change. At normal
    // priority those saves delayed the next change's delivery on a shared
    // core; at nice 19 a hundred of them together still outweighed one
    // normal thread.
    let (done, written) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("snapshot-save".to_owned())
        .spawn(move || {
            lower_this_threads_priority();
            let written = encode(&snapshot, &environment, known_current_at)
                .and_then(|bytes| write_atomically(&path, &bytes));
            // The snapshot goes back to be dropped at normal priority: if
            // it is the last reference, freeing it takes the allocator
            // locks of the threads that built it, which a thread that
            // may wait for long must not hold.
            let _ = done.send((written, snapshot));
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "saving the snapshot to disk failed: no thread for it");
        return;
    }
    let written = written.await.map(|(written, snapshot)| {
        drop(snapshot);
        // The encoding was freed into the saving thread's arena, which
        // glibc would keep resident: give it back. Here, not on that
        // thread, for the same reason as the drop.
        crate::memory::trim_now();
        written
    });
    match written {
        Ok(Ok(())) => tracing::debug!(version, "snapshot saved to disk"),
        Ok(Err(err)) => tracing::warn!(error = %err, "could not save the snapshot to disk"),
        Err(_) => {
            tracing::warn!("saving the snapshot to disk failed: the saving thread ended early")
        }
    }
}

/// Gives the calling thread the lowest scheduling priority, for work that
/// may wait while requests are served: `SCHED_IDLE`, the scheduler's
/// lowest weight (a fifth of nice 19's), which gives way at once to any
/// other thread that wakes (at nice 19 a hundred such threads together
/// outweighed one normal thread); nice 19 where `SCHED_IDLE` is refused.
/// Lowering a priority needs no privilege; where both fail, the work runs
/// at the usual priority.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler, setpriority and gettid have no
    // memory-safety preconditions (the parameter is a valid, initialised
    // struct); on Linux both apply to the thread named by its id (0: the
    // calling thread).
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let _ = libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
        }
    }
}

/// Keeps `path` holding the current snapshot: once at start (unless it was
/// read from there), after changes and when data that was behind is current
/// again, and a last time when `stop` fires. Each file carries the time its
/// data was last known current.
///
/// Saves happen on the leading edge: a change that follows a quiet period is
/// written at once, so an isolated change is on disk moments after it is
/// served (a crash right after it loses nothing); the changes of a burst
/// that arrive within [`DEBOUNCE`] of a save are coalesced into one more
/// save when that time is up.
pub async fn keep_saved(
    state: Arc<State>,
    path: PathBuf,
    environment: String,
    stop: CancellationToken,
) {
    let mut versions = state.watch_version();
    let mut catch_ups = state.freshness().catch_ups();
    let mut saved = *versions.borrow_and_update();
    // When the file was last written for a change; None until then (the
    // save at start begins no burst).
    let mut saved_at: Option<tokio::time::Instant> = None;
    // A snapshot read back from disk is there already, with its own age:
    // rewriting it would make it look newer than it is.
    if !state.freshness().is_behind() {
        save(&state, &path, &environment).await;
    }
    loop {
        // Data confirmed current again is worth saving even unchanged: the
        // file's time is what a start from disk reports as its age.
        let caught_up = tokio::select! {
            () = stop.cancelled() => break,
            changed = versions.changed() => if changed.is_err() { break } else { false },
            changed = catch_ups.changed() => if changed.is_err() { break } else { true },
        };
        // Within DEBOUNCE of the last save, let the burst settle into one
        // write at the end of that time; otherwise write now.
        if let Some(next_save) = saved_at.map(|at| at + DEBOUNCE)
            && next_save > tokio::time::Instant::now()
        {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(next_save) => {}
            }
        }
        let current = *versions.borrow_and_update();
        if current != saved || caught_up {
            saved_at = Some(tokio::time::Instant::now());
            save(&state, &path, &environment).await;
            saved = current;
        }
    }
    if state.snapshot().version != saved {
        save(&state, &path, &environment).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::ValueType;
    use proptest::prelude::*;
    use serde_json::json;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_saving_thread_runs_only_when_nothing_else_would_and_others_are_unchanged() {
        // SAFETY: sched_getscheduler has no preconditions (0: the calling
        // thread).
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let lowered = std::thread::spawn(move || {
            lower_this_threads_priority();
            policy()
        })
        .join()
        .expect("the thread");
        assert_eq!(lowered, libc::SCHED_IDLE);
        assert_eq!(policy(), before, "only the calling thread is lowered");
        assert_ne!(before, libc::SCHED_IDLE);
    }

    fn flag(key: String, enabled: bool, rollout: u8, users: Vec<String>) -> Flag {
        Flag {
            key,
            description: "a flag".to_owned(),
            enabled,
            value_type: ValueType::Bool,
            on_value: json!(true),
            off_value: json!(false),
            environments: Vec::new(),
            target_users: users,
            target_roles: vec!["staff".to_owned()],
            rollout_percentage: rollout,
            version: 7,
            updated_at: DateTime::UNIX_EPOCH,
            updated_by: "test".to_owned(),
            targeting: None,
            client_visible: false,
            permanent: false,
            created_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn config(
        key: String,
        environment: String,
        value: serde_json::Value,
        sensitive: bool,
    ) -> ConfigRow {
        ConfigRow {
            key,
            environment,
            value,
            description: String::new(),
            is_sensitive: sensitive,
            version: 9,
            updated_at: DateTime::UNIX_EPOCH,
            updated_by: "test".to_owned(),
        }
    }

    fn snapshot_strategy() -> impl Strategy<Value = Snapshot> {
        let flags = prop::collection::btree_map(
            "[a-z][a-z0-9_.-]{0,20}",
            (
                any::<bool>(),
                0u8..=100,
                prop::collection::vec("[a-z0-9@.]{1,12}", 0..4),
            ),
            0..8,
        );
        let configs = prop::collection::btree_map(
            (
                "[a-z][a-z0-9_.-]{0,20}",
                prop::sample::select(vec!["*", "production", "staging"]),
            ),
            (
                prop_oneof![
                    any::<i64>().prop_map(|n| json!(n)),
                    "[ -~]{0,20}".prop_map(|s| json!(s)),
                    any::<bool>().prop_map(|b| json!(b)),
                    (-1.0e9f64..1.0e9).prop_map(|n| json!(n)),
                ],
                any::<bool>(),
            ),
            0..8,
        );
        (1i64..i64::MAX / 2, flags, configs).prop_map(|(version, flags, configs)| {
            Snapshot::from_rows(
                version,
                flags
                    .into_iter()
                    .map(|(key, (enabled, rollout, users))| flag(key, enabled, rollout, users))
                    .collect(),
                configs
                    .into_iter()
                    .map(|((key, environment), (value, sensitive))| {
                        config(key, environment.to_owned(), value, sensitive)
                    })
                    .collect(),
            )
        })
    }

    fn same(a: &Snapshot, b: &Snapshot) -> bool {
        a.version == b.version
            && a.configs == b.configs
            && a.flags.len() == b.flags.len()
            && a.flags_with_prefix("").iter().all(|flag| {
                b.flag(flag.key())
                    .is_some_and(|other| other.flag() == flag.flag())
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        // What is written reads back equal, for its environment only.
        #[test]
        fn a_snapshot_round_trips(snapshot in snapshot_strategy()) {
            let now = Utc::now();
            let bytes = encode(&snapshot, "production", now).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let saved = decode(&bytes, "production").map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(same(&saved.snapshot, &snapshot));
            prop_assert_eq!(saved.written_at, now);
            prop_assert!(matches!(decode(&bytes, "staging"), Err(SnapshotFileError::OtherEnvironment(_))));
        }

        // Any damage is refused, never half-read: a flipped byte, or a cut.
        #[test]
        fn damage_is_always_refused(
            snapshot in snapshot_strategy(),
            position in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode(&snapshot, "production", Utc::now()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut flipped = bytes.clone();
            let at = position.index(flipped.len());
            flipped[at] ^= flip;
            // A flip inside a JSON string of the header can leave it valid
            // (e.g. the time written); the payload is then intact.
            if let Ok(saved) = decode(&flipped, "production") {
                prop_assert!(same(&saved.snapshot, &snapshot));
            }
            let truncated = &bytes[..cut.index(bytes.len())];
            prop_assert!(decode(truncated, "production").is_err());
        }
    }

    #[test]
    fn only_a_snapshot_with_v2_flags_is_written_as_format_2() {
        let plain = flag("plain".to_owned(), true, 100, Vec::new());
        let first = Snapshot::from_rows(3, vec![plain.clone()], Vec::new());
        let bytes = encode(&first, "p", Utc::now()).expect("encode");
        assert!(String::from_utf8_lossy(&bytes).contains("\"format_version\":1,"));
        let v2 = Flag {
            key: "v2".to_owned(),
            targeting: Some(Box::new(crate::flags::Targeting {
                off_variant: "on".to_owned(),
                ..crate::flags::Targeting::default()
            })),
            ..plain.clone()
        };
        let second = Snapshot::from_rows(4, vec![plain, v2.clone()], Vec::new());
        let bytes = encode(&second, "p", Utc::now()).expect("encode");
        assert!(String::from_utf8_lossy(&bytes).contains("\"format_version\":2,"));
        let saved = decode(&bytes, "p").expect("decode");
        assert_eq!(
            saved.snapshot.flag("v2").map(|f| f.flag().clone()),
            Some(v2)
        );
    }

    #[test]
    fn foreign_files_are_refused_with_a_reason() {
        assert!(matches!(
            decode(b"", "p"),
            Err(SnapshotFileError::NotASnapshot)
        ));
        assert!(matches!(
            decode(b"{}\n{}", "p"),
            Err(SnapshotFileError::NotASnapshot)
        ));
        let snapshot = Snapshot::from_rows(3, Vec::new(), Vec::new());
        let bytes = encode(&snapshot, "p", Utc::now()).expect("encode");
        let text = String::from_utf8(bytes).expect("utf-8");
        let future = text.replacen("\"format_version\":1", "\"format_version\":3", 1);
        assert!(matches!(
            decode(future.as_bytes(), "p"),
            Err(SnapshotFileError::UnsupportedFormat(3))
        ));
        let other = text.replacen(FORMAT, "other-format", 1);
        assert!(matches!(
            decode(other.as_bytes(), "p"),
            Err(SnapshotFileError::NotASnapshot)
        ));
    }

    #[test]
    fn writing_replaces_the_file_whole_and_keeps_it_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = path_for(dir.path(), "production");
        for version in [1, 2] {
            let snapshot = Snapshot::from_rows(version, Vec::new(), Vec::new());
            let bytes = encode(&snapshot, "production", Utc::now()).expect("encode");
            write_atomically(&path, &bytes).expect("write");
            let saved = read(&path, "production").expect("read");
            assert_eq!(saved.snapshot.version, version);
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name() != "production.snapshot")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
