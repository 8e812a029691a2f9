//! A follower's source: one long-lived Follow stream to its upstream,
//! feeding the same state the change listener feeds on a readyd with a
//! database.
//!
//! Versions are the upstream's (and so the database's), preserved: a change
//! is applied at its version, a progress marker moves the version, a
//! snapshot replaces the state whole. When the stream breaks the follower
//! keeps serving from memory, reconnects (backoff 100 ms doubling to 2 s)
//! and resumes after the version it holds; the upstream sends only the
//! changes since when it still holds them, else a snapshot. Data is STALE
//! after `--stale-after` without the upstream, and at once when the
//! upstream itself says its data is stale: a follower is never more
//! current than its upstream.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::metadata::MetadataValue;

use super::PROTOCOL;
use super::coverage::Coverage;
use super::verifiers::Verifiers;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::replication_service_client::ReplicationServiceClient;
use crate::client::channel::RetryingChannel;
use crate::config::ConfigRow;
use crate::flags::Flag;
use crate::flags::segment::Segment;
use crate::settings::Secret;
use crate::state::{Snapshot, State};

/// The parts of a snapshot received so far.
#[derive(Debug, Default)]
struct PartialSnapshot {
    version: i64,
    flags: Vec<Flag>,
    configs: Vec<ConfigRow>,
    segments: Vec<Segment>,
}

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why following failed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The upstream could not be reached, or went away: worth retrying, and
    /// at start-up a reason to serve the snapshot saved on disk.
    #[error("the upstream cannot be reached: {0}")]
    Unreachable(String),
    /// The upstream answered but refused (credential, protocol version,
    /// request): retrying as is will not help.
    #[error("the upstream refused to be followed: {0}")]
    Refused(String),
    /// The upstream sent something this readyd cannot use.
    #[error("the upstream sent something unusable: {0}")]
    Protocol(String),
}

impl FollowError {
    fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let message = format!(
            "{}: {}",
            crate::client::code_name(status.code()),
            status.message()
        );
        match status.code() {
            Code::Unauthenticated
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::Unimplemented => FollowError::Refused(message),
            _ => FollowError::Unreachable(message),
        }
    }
}

/// The follower's connection to its upstream.
#[derive(Debug)]
pub struct Follower {
    /// The upstream, for messages (no credentials in it).
    upstream: String,
    /// The connection (shared with forwarded calls and the upstream check).
    channel: RetryingChannel,
    /// Presented to the upstream.
    token: Secret,
    /// This instance's name.
    instance: String,
    /// This instance's environment, which subscribers see resolved.
    environment: String,
    /// The environments held and wanted.
    coverage: Arc<Coverage>,
    /// Where the upstream's token verifiers go.
    verifiers: watch::Sender<Arc<Verifiers>>,
}

/// A Follow stream that has delivered its first snapshot.
#[derive(Debug)]
pub struct Followed {
    /// The stream, to go on reading from.
    stream: Streaming<pb::FollowResponse>,
    /// The environments asked for.
    environments: BTreeSet<String>,
    /// The first snapshot.
    pub snapshot: Snapshot,
    /// How far behind the upstream's own data was, if it was.
    pub upstream_stale_for: Option<Duration>,
}

/// What reading a stream has found out so far.
#[derive(Debug, Default)]
struct Progress {
    /// The upstream's version when the stream began.
    target: Option<i64>,
    /// Whether the state has reached `target`.
    caught_up: bool,
    /// The upstream's data is stale, by this much.
    upstream_stale_for: Option<Duration>,
    /// Rows of a snapshot being received, and its version.
    partial: Option<PartialSnapshot>,
}

impl Follower {
    /// A follower of `upstream` over `channel`.
    pub fn new(
        upstream: String,
        channel: RetryingChannel,
        token: Secret,
        instance: String,
        environment: String,
        coverage: Arc<Coverage>,
        verifiers: watch::Sender<Arc<Verifiers>>,
    ) -> Self {
        Self {
            upstream,
            channel,
            token,
            instance,
            environment,
            coverage,
            verifiers,
        }
    }

    /// Opens a Follow stream, resuming after `since` when given.
    async fn open(
        &self,
        since: Option<i64>,
    ) -> Result<(Streaming<pb::FollowResponse>, BTreeSet<String>), FollowError> {
        let environments = self.coverage.wanted();
        let mut request = tonic::Request::new(pb::FollowRequest {
            protocol: PROTOCOL,
            environments: environments.iter().cloned().collect(),
            since_version: since,
            instance: self.instance.clone(),
        });
        let authorization = MetadataValue::try_from(format!("Bearer {}", self.token.expose()))
            .map_err(|_| {
                FollowError::Refused("the replication token cannot be sent in a header".into())
            })?;
        request
            .metadata_mut()
            .insert("authorization", authorization);
        let stream = ReplicationServiceClient::new(self.channel.clone())
            .max_decoding_message_size(crate::app::MAX_MESSAGE_BYTES)
            .follow(request)
            .await
            .map_err(|status| FollowError::from_status(&status))?
            .into_inner();
        Ok((stream, environments))
    }

    /// Start-up: follows and waits, at most `wait`, for the first whole
    /// snapshot.
    pub async fn first_snapshot(&self, wait: Duration) -> Result<Followed, FollowError> {
        let first = async {
            let (mut stream, environments) = self.open(None).await?;
            let mut progress = Progress::default();
            loop {
                let message = next_message(&mut stream).await?;
                if let Some(snapshot) = self.read(&mut progress, message)? {
                    self.coverage.now_holds(environments.clone());
                    return Ok(Followed {
                        stream,
                        environments,
                        snapshot,
                        upstream_stale_for: progress.upstream_stale_for,
                    });
                }
            }
        };
        match tokio::time::timeout(wait, first).await {
            Ok(result) => result,
            Err(_) => Err(FollowError::Unreachable(format!(
                "no snapshot from {} within {}",
                self.upstream,
                humantime::format_duration(wait)
            ))),
        }
    }

    /// Keeps `state` equal to the upstream's until `shutdown` fires,
    /// carrying on with `first` when start-up made one.
    pub async fn run(
        self,
        state: Arc<State>,
        first: Option<Followed>,
        shutdown: CancellationToken,
    ) {
        let freshness = Arc::clone(state.freshness());
        let mut doubts = freshness.listener_doubts();
        let mut wanted = self.coverage.wanted_changes();
        let mut backoff = Duration::from_millis(100);
        // A wider set of environments needs a whole snapshot, not changes.
        let mut need_snapshot = false;
        let mut current = first.map(|followed| {
            let progress = Progress {
                target: Some(followed.snapshot.version),
                caught_up: true,
                upstream_stale_for: followed.upstream_stale_for,
                partial: None,
            };
            (followed.stream, followed.environments, progress)
        });
        loop {
            let (mut stream, environments, mut progress) = match current.take() {
                Some(open) => open,
                None => {
                    let since = Some(state.snapshot().version)
                        .filter(|version| *version > 0 && !need_snapshot);
                    let opened = tokio::select! {
                        opened = self.open(since) => opened,
                        () = shutdown.cancelled() => return,
                    };
                    match opened {
                        Ok((stream, environments)) => {
                            need_snapshot = false;
                            match since {
                                Some(since) => tracing::info!(
                                    upstream = %self.upstream,
                                    since_version = since,
                                    "following the upstream again (resumed after the version held)"
                                ),
                                None => tracing::info!(
                                    upstream = %self.upstream,
                                    "following the upstream (from a snapshot)"
                                ),
                            }
                            (stream, environments, Progress::default())
                        }
                        Err(err) => {
                            if matches!(err, FollowError::Refused(_)) {
                                tracing::warn!(error = %err, "the upstream refuses this follower; still serving what it holds");
                            } else {
                                tracing::debug!(error = %err, "cannot follow the upstream yet");
                            }
                            freshness.listener_lost();
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                () = shutdown.cancelled() => return,
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue;
                        }
                    }
                }
            };
            doubts.borrow_and_update();
            wanted.borrow_and_update();
            let lost = loop {
                let message = tokio::select! {
                    message = next_message(&mut stream) => message,
                    () = shutdown.cancelled() => return,
                    _ = doubts.changed() => {
                        break Some(FollowError::Unreachable("the upstream check is failing".into()));
                    }
                    _ = wanted.changed() => {
                        if self.coverage.wanted().is_subset(&environments) {
                            continue;
                        }
                        // Followers of other environments follow this one:
                        // ask again, for the wider set.
                        tracing::info!(environments = ?self.coverage.wanted(), "following more environments");
                        need_snapshot = true;
                        break None;
                    }
                };
                match message.and_then(|message| self.apply(&state, &mut progress, message)) {
                    Ok(true) => self.coverage.now_holds(environments.clone()),
                    Ok(false) => {}
                    Err(err) => break Some(err),
                }
                if progress.caught_up {
                    backoff = Duration::from_millis(100);
                }
            };
            if let Some(err) = lost {
                tracing::warn!(error = %err, "lost the upstream; serving from memory and reconnecting");
                freshness.listener_lost();
            }
        }
    }

    /// Reads one message of a stream being opened: `Some` once a whole
    /// snapshot has arrived.
    fn read(
        &self,
        progress: &mut Progress,
        message: pb::FollowResponse,
    ) -> Result<Option<Snapshot>, FollowError> {
        use pb::follow_response::Event;
        match message.event {
            Some(Event::Hello(hello)) => {
                check_hello(&hello)?;
                progress.target = Some(hello.version);
            }
            Some(Event::Verifiers(verifiers)) => {
                let verifiers = Verifiers::try_from(verifiers).map_err(FollowError::Protocol)?;
                self.verifiers.send_if_modified(|current| {
                    if **current == verifiers {
                        return false;
                    }
                    *current = Arc::new(verifiers);
                    true
                });
            }
            Some(Event::Freshness(freshness)) => {
                progress.upstream_stale_for = freshness.stale.then(|| {
                    freshness
                        .stale_for
                        .and_then(|age| Duration::try_from(age).ok())
                        .unwrap_or_default()
                });
            }
            Some(Event::Snapshot(part)) => {
                let mut partial = match progress.partial.take() {
                    Some(partial) if !part.first => partial,
                    _ if part.first => PartialSnapshot {
                        version: part.version,
                        ..PartialSnapshot::default()
                    },
                    _ => {
                        return Err(FollowError::Protocol(
                            "a snapshot part without its first part".into(),
                        ));
                    }
                };
                if partial.version != part.version {
                    return Err(FollowError::Protocol(
                        "snapshot parts of different versions".into(),
                    ));
                }
                for row in part.rows {
                    match row.row {
                        Some(pb::replica_row::Row::FlagJson(json)) => {
                            partial.flags.push(decode(&json)?)
                        }
                        Some(pb::replica_row::Row::ConfigJson(json)) => {
                            partial.configs.push(decode(&json)?)
                        }
                        Some(pb::replica_row::Row::SegmentJson(json)) => {
                            partial.segments.push(decode(&json)?)
                        }
                        None => return Err(FollowError::Protocol("an empty row".into())),
                    }
                }
                if part.last {
                    return Ok(Some(
                        Snapshot::from_rows(partial.version, partial.flags, partial.configs)
                            .with_segments(partial.segments),
                    ));
                }
                progress.partial = Some(partial);
            }
            Some(Event::Change(_) | Event::Progress(_)) if progress.target.is_none() => {
                return Err(FollowError::Protocol("a change before the hello".into()));
            }
            Some(Event::Change(_) | Event::Progress(_)) => {
                return Err(FollowError::Protocol(
                    "a change before the first snapshot".into(),
                ));
            }
            None => return Err(FollowError::Protocol("a message without an event".into())),
        }
        Ok(None)
    }

    /// Applies one message to `state`; true when it completed a snapshot.
    fn apply(
        &self,
        state: &State,
        progress: &mut Progress,
        message: pb::FollowResponse,
    ) -> Result<bool, FollowError> {
        use pb::follow_response::Event;
        let freshness = state.freshness();
        let mut held = false;
        match message.event {
            Some(Event::Change(change)) => {
                let version = change.version;
                match change.change {
                    Some(pb::replica_change::Change::FlagUpsertedJson(json)) => {
                        let flag: Flag = decode(&json)?;
                        let key = flag.key.clone();
                        state.flag_changed(version, &key, Some(flag));
                    }
                    Some(pb::replica_change::Change::FlagDeleted(key)) => {
                        state.flag_changed(version, &key, None);
                    }
                    Some(pb::replica_change::Change::ConfigUpsertedJson(json)) => {
                        let row: ConfigRow = decode(&json)?;
                        let (key, environment) = (row.key.clone(), row.environment.clone());
                        state.config_changed(
                            version,
                            key,
                            environment,
                            Some(row),
                            &self.environment,
                        );
                    }
                    Some(pb::replica_change::Change::ConfigDeleted(row)) => {
                        state.config_changed(
                            version,
                            row.key,
                            row.environment,
                            None,
                            &self.environment,
                        );
                    }
                    Some(pb::replica_change::Change::SegmentUpsertedJson(json)) => {
                        let segment: Segment = decode(&json)?;
                        let key = segment.key.clone();
                        state.segment_changed(version, &key, Some(segment));
                    }
                    Some(pb::replica_change::Change::SegmentDeleted(key)) => {
                        state.segment_changed(version, &key, None);
                    }
                    None => return Err(FollowError::Protocol("a change without a change".into())),
                }
            }
            Some(Event::Progress(pb::Progress { version })) => state.advance(version),
            other => {
                if let Some(snapshot) = self.read(progress, pb::FollowResponse { event: other })? {
                    state.resync(snapshot);
                    held = true;
                }
            }
        }
        match progress.upstream_stale_for {
            Some(age) => freshness.source_stale(age),
            None => {
                let reached = progress
                    .target
                    .is_some_and(|target| state.snapshot().version >= target);
                if reached && !progress.caught_up {
                    progress.caught_up = true;
                }
                if progress.caught_up && freshness.is_behind() && freshness.current() {
                    tracing::info!(
                        version = state.snapshot().version,
                        "the data is current again (no longer STALE)"
                    );
                }
            }
        }
        Ok(held)
    }
}

/// The next message; the stream's end or failure is an error.
async fn next_message(
    stream: &mut Streaming<pb::FollowResponse>,
) -> Result<pb::FollowResponse, FollowError> {
    match stream.message().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(FollowError::Unreachable(
            "the upstream ended the stream".into(),
        )),
        Err(status) => Err(FollowError::from_status(&status)),
    }
}

fn check_hello(hello: &pb::FollowHello) -> Result<(), FollowError> {
    if hello.protocol != PROTOCOL {
        return Err(FollowError::Refused(format!(
            "the upstream speaks replication protocol {} and this readyd {PROTOCOL}: run the same readyd release on both",
            hello.protocol
        )));
    }
    Ok(())
}

fn decode<T: for<'de> serde::Deserialize<'de>>(json: &str) -> Result<T, FollowError> {
    serde_json::from_str(json)
        .map_err(|err| FollowError::Protocol(format!("a row that does not decode: {err}")))
}
