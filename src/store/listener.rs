//! The change listener: LISTEN on the change feed and keep the in-memory
//! state equal to the tables.
//!
//! A notification is only a wake-up (any role that can connect may send
//! one): after each burst the listener reads what changed from
//! `readyd_change_log`, every change after the version it holds with the
//! row as written, in one query, and applies them in version order (versions commit
//! in order, see the first migration). Anything that could mean a missed
//! change (a lost connection, an error, a TRUNCATE, a log pruned past the
//! version it holds) makes it catch up from the log again or, when the log
//! no longer reaches back, reload everything, so no change is ever lost. It
//! LISTENs before it loads, so a change between the load and the LISTEN
//! cannot slip through.

use metrics::counter;

use crate::telemetry::{LISTENER_RECONNECTS, LISTENER_RELOADS};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::change_log::{ChangedRow, LoggedChange};
use super::flags::decode_rows;
use super::segments::decode_segments;
use super::{CHANGE_CHANNEL, CHANGE_LOCK_KEY, Store, StoreError};
use crate::state::{Snapshot, State};

/// Changes read from the log per query; a longer backlog takes several.
const BATCH: i64 = 1000;

/// Longest wait between reconnection attempts: short, so that data is
/// current again within seconds of the database coming back.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Store {
    /// Everything, consistently: holds the change lock in shared mode so no
    /// writer is half done, and reads the version every row is included up to.
    pub async fn load_snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(CHANGE_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        let (last_value, is_called): (i64, bool) =
            sqlx::query_as("SELECT last_value, is_called FROM readyd_change_version")
                .fetch_one(&mut *tx)
                .await?;
        let flags = self.flag_rows(&mut *tx).await?;
        let configs = self.config_rows(&mut *tx).await?;
        let segments = self.segment_rows(&mut *tx).await?;
        tx.commit().await?;
        let version = if is_called { last_value } else { 0 };
        Ok(Snapshot::from_rows(version, decode_rows(flags), configs)
            .with_segments(decode_segments(segments)))
    }
}

/// A LISTEN connection on the change feed.
#[derive(Debug)]
pub struct ChangeListener {
    /// The database.
    store: Store,
    /// The LISTEN connection; None until the first connection of a start
    /// with the database down.
    listener: Option<PgListener>,
    /// This instance's environment, to resolve configuration for subscribers.
    environment: String,
    /// Set when readyd started without the database: the schema is
    /// checked (and migrated, when true) before the first load.
    unchecked_schema: Option<bool>,
}

/// What the listener must do next.
enum Next {
    /// Wait for the next notification.
    Listen,
    /// Apply every logged change after the state's version.
    CatchUp,
    /// Reload everything (the listener is connected).
    Reload,
    /// Reconnect, then catch up.
    Reconnect,
}

impl ChangeListener {
    /// Connects and LISTENs. Call before loading the first snapshot.
    pub async fn connect(store: &Store, environment: &str) -> Result<Self, StoreError> {
        let mut listener = PgListener::connect_with(store.listener_pool()).await?;
        listener.listen(CHANGE_CHANNEL).await?;
        Ok(Self {
            store: store.clone(),
            listener: Some(listener),
            environment: environment.to_owned(),
            unchecked_schema: None,
        })
    }

    /// A listener for a start with the database down: it connects, checks
    /// the schema (migrating first when `migrate`), and reloads everything
    /// as soon as the database answers.
    pub fn disconnected(store: &Store, environment: &str, migrate: bool) -> Self {
        Self {
            store: store.clone(),
            listener: None,
            environment: environment.to_owned(),
            unchecked_schema: Some(migrate),
        }
    }

    /// Migrates (when asked) and checks the schema of a database first met
    /// after start-up; an error says why it cannot be used yet.
    async fn check_schema(&self, migrate: bool) -> Result<(), String> {
        if migrate {
            self.store.migrate().await.map_err(|err| err.to_string())?;
        }
        let problems = self
            .store
            .schema_problems()
            .await
            .map_err(|err| err.to_string())?;
        if problems.is_empty() {
            Ok(())
        } else {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Err(problems.join("; "))
        }
    }

    /// Keeps `state` equal to the tables until `shutdown` fires.
    ///
    /// Whenever it may be missing changes (connection lost, a read failed),
    /// it tells the state's [`Freshness`](crate::state::Freshness); catching
    /// up again (from the log, or by a full reload) makes the data current.
    pub async fn run(mut self, state: Arc<State>, shutdown: CancellationToken) {
        let freshness = Arc::clone(state.freshness());
        let mut doubts = freshness.listener_doubts();
        // A start from the snapshot on disk reloads whole at its first
        // connection: the database may not be the one the file came from.
        let mut reload_on_connect = self.listener.is_none();
        let mut next = if self.listener.is_some() {
            Next::Listen
        } else {
            Next::Reconnect
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            if matches!(next, Next::Reload | Next::Reconnect) {
                freshness.listener_lost();
            }
            next = match next {
                Next::Listen => {
                    let Some(listener) = self.listener.as_mut() else {
                        next = Next::Reconnect;
                        continue;
                    };
                    doubts.borrow_and_update();
                    let received = tokio::select! {
                        received = listener.try_recv() => received,
                        () = shutdown.cancelled() => return,
                        _ = doubts.changed() => {
                            // The read was cut mid-way: this connection is
                            // done with either way.
                            tracing::warn!("the database check is failing; reconnecting the change listener in case its connection is dead");
                            self.listener = None;
                            next = Next::Reconnect;
                            continue;
                        }
                    };
                    match received {
                        Ok(Some(_wake_up)) => {
                            // The rest of a burst, already received, is
                            // covered by the one read that follows.
                            while listener.next_buffered().is_some() {}
                            Next::CatchUp
                        }
                        Ok(None) => {
                            // Reconnected already (eagerly), and LISTENing
                            // again: the log has what was sent meanwhile.
                            tracing::warn!("change listener connection lost; catching up");
                            counter!(LISTENER_RECONNECTS).increment(1);
                            freshness.listener_lost();
                            Next::CatchUp
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "change listener failed; reconnecting");
                            Next::Reconnect
                        }
                    }
                }
                Next::CatchUp => match self.catch_up(&state).await {
                    Ok(Some(next)) => next,
                    Ok(None) => {
                        backoff = Duration::from_millis(100);
                        if freshness.is_behind() && freshness.current() {
                            tracing::info!(
                                version = state.snapshot().version,
                                "the data is current again (no longer STALE)"
                            );
                        }
                        Next::Listen
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "reading the change log failed; reconnecting");
                        Next::Reconnect
                    }
                },
                Next::Reload => match self.store.load_snapshot().await {
                    Ok(snapshot) => {
                        counter!(LISTENER_RELOADS).increment(1);
                        backoff = Duration::from_millis(100);
                        let version = snapshot.version;
                        tracing::info!(
                            version,
                            flags = snapshot.flags.len(),
                            "reloaded everything"
                        );
                        state.resync(snapshot);
                        if freshness.current() {
                            tracing::info!(version, "the data is current again (no longer STALE)");
                        }
                        Next::Listen
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "reload failed; reconnecting");
                        Next::Reconnect
                    }
                },
                Next::Reconnect => {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if let Some(migrate) = self.unchecked_schema {
                        match self.check_schema(migrate).await {
                            Ok(()) => self.unchecked_schema = None,
                            Err(problem) => {
                                tracing::warn!(%problem, "the database is not usable yet; still serving the saved snapshot");
                                next = Next::Reconnect;
                                continue;
                            }
                        }
                    }
                    // The old listener holds the listener pool's only
                    // connection until dropped: connecting while it lives
                    // would wait for that slot forever.
                    self.listener = None;
                    match Self::connect(&self.store, &self.environment).await {
                        Ok(fresh) => {
                            counter!(LISTENER_RECONNECTS).increment(1);
                            self.listener = fresh.listener;
                            if std::mem::take(&mut reload_on_connect) {
                                Next::Reload
                            } else {
                                Next::CatchUp
                            }
                        }
                        Err(err) => {
                            tracing::debug!(error = %err, "change listener cannot reconnect yet");
                            Next::Reconnect
                        }
                    }
                }
            };
        }
    }

    /// Applies every logged change after the state's version, in order.
    /// `Ok(None)`: caught up; `Ok(Some(next))`: the log cannot tell, do
    /// `next` instead (a reload).
    async fn catch_up(&self, state: &State) -> Result<Option<Next>, StoreError> {
        loop {
            let from = state.snapshot().version;
            let batch = self.store.changes_since(from, BATCH).await?;
            if !batch.covers(from) {
                tracing::info!(
                    version = from,
                    log_starts_at = batch.floor,
                    "the change log no longer reaches back to this version; reloading everything"
                );
                return Ok(Some(Next::Reload));
            }
            let count = batch.changes.len();
            for change in batch.changes {
                if let Some(next) = self.apply(change, state) {
                    return Ok(Some(next));
                }
            }
            if count < BATCH as usize {
                if count > 0 && state.snapshot().version - batch.floor > 2 * super::change_log::KEEP
                {
                    // Any readyd may prune; a failure only leaves it longer.
                    if let Err(err) = self.store.prune_change_log().await {
                        tracing::debug!(error = %err, "pruning the change log failed");
                    }
                }
                return Ok(None);
            }
        }
    }

    /// Applies one logged change; `Some(next)` when it cannot be applied
    /// change by change.
    fn apply(&self, change: LoggedChange, state: &State) -> Option<Next> {
        let current = state.snapshot();
        let version = change.version;
        if version <= current.version {
            return None; // already included (e.g. by a reload)
        }
        match (change.table.as_str(), change.op.as_str(), change.key) {
            (_, "truncate", _) => {
                tracing::info!(table = %change.table, "table truncated; reloading everything");
                Some(Next::Reload)
            }
            ("feature_flags", "insert" | "update", Some(key)) => {
                // An unreadable row is gone to a reader, as a full load
                // would leave it out.
                let flag = match change.row {
                    Some(ChangedRow::Flag(flag)) if flag.version == version => Some(flag),
                    _ => None,
                };
                state.flag_changed(version, &key, flag);
                None
            }
            ("feature_flags", "delete", Some(key)) => {
                state.flag_changed(version, &key, None);
                None
            }
            ("flag_segments", op, Some(key)) => {
                let segment = match (op, change.row) {
                    ("insert" | "update", Some(ChangedRow::Segment(segment)))
                        if segment.version == version =>
                    {
                        Some(segment)
                    }
                    _ => None,
                };
                state.segment_changed(version, &key, segment);
                None
            }
            ("app_config", op, Some(key)) => {
                let Some(environment) = change.environment else {
                    return Some(Next::Reload);
                };
                let row = match (op, change.row) {
                    ("insert" | "update", Some(ChangedRow::Config(row)))
                        if row.version == version =>
                    {
                        Some(row)
                    }
                    // A delete, or an unreadable row: gone to a reader.
                    _ => None,
                };
                state.config_changed(version, key, environment, row, &self.environment);
                None
            }
            // A table this readyd does not serve (a newer one).
            _ => {
                state.advance(version);
                None
            }
        }
    }
}
