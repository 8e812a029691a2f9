//! The change listener: LISTEN on the change feed and keep the in-memory
//! state equal to the tables.
//!
//! Each notification names a changed row and its version. Versions are
//! committed in order (see the first migration), so the listener applies
//! them one after the other by reading the changed row. Anything that could
//! mean a missed change (a gap in versions, a lost connection, an error, an
//! unreadable payload, a TRUNCATE) makes it reload everything instead, so no
//! change is ever lost. It LISTENs before it loads, so a change between the
//! load and the LISTEN cannot slip through.

use metrics::counter;

use crate::telemetry::{LISTENER_RECONNECTS, LISTENER_RELOADS};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::flags::decode_rows;
use super::{CHANGE_CHANNEL, CHANGE_LOCK_KEY, Store, StoreError};
use crate::config::{ConfigRow, resolve};
use crate::flags::Flag;
use crate::state::{Event, Snapshot, State};

/// One notification of the change feed.
#[derive(Debug, Deserialize)]
struct Announcement {
    /// `app_config` or `feature_flags`.
    table: String,
    /// The changed key (absent for a TRUNCATE).
    key: Option<String>,
    /// The changed row's environment (configuration only).
    environment: Option<String>,
    /// Version of the change.
    version: i64,
    /// insert, update, delete or truncate.
    op: String,
    /// The row as written, when it fit in the notification.
    row: Option<serde_json::Value>,
}

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
        tx.commit().await?;
        let version = if is_called { last_value } else { 0 };
        Ok(Snapshot::from_rows(version, decode_rows(flags), configs))
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
    /// Reload everything (the listener is connected).
    Reload,
    /// Reconnect, then reload.
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
    /// Whenever it may be missing changes (connection lost, reload failed),
    /// it tells the state's [`Freshness`](crate::state::Freshness); a
    /// successful full reload makes the data current again.
    pub async fn run(mut self, state: Arc<State>, shutdown: CancellationToken) {
        let freshness = Arc::clone(state.freshness());
        let mut doubts = freshness.listener_doubts();
        let mut next = if self.listener.is_some() {
            Next::Listen
        } else {
            Next::Reconnect
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            if !matches!(next, Next::Listen) {
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
                        Ok(Some(notification)) => self.apply(notification.payload(), &state).await,
                        Ok(None) => {
                            // Reconnected already (eagerly), and LISTENing again:
                            // what was sent meanwhile is lost.
                            tracing::warn!("change listener connection lost; reloading everything");
                            counter!(LISTENER_RECONNECTS).increment(1);
                            Next::Reload
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "change listener failed; reconnecting");
                            Next::Reconnect
                        }
                    }
                }
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
                        state.publish(snapshot, Event::Resync { version });
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
                            Next::Reload
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

    /// Applies one notification; says what to do next.
    async fn apply(&self, payload: &str, state: &State) -> Next {
        let Ok(announcement) = serde_json::from_str::<Announcement>(payload) else {
            tracing::warn!(
                payload,
                "unreadable change notification; reloading everything"
            );
            return Next::Reload;
        };
        let current = state.snapshot();
        let version = announcement.version;
        if version <= current.version {
            return Next::Listen; // already included (e.g. by a reload)
        }
        if version > current.version + 1 {
            // A rolled-back writer leaves a gap that never fills; a missed
            // notification leaves one too. Only a reload tells them apart.
            tracing::debug!(
                from = current.version,
                to = version,
                "version gap; reloading everything"
            );
            return Next::Reload;
        }
        let (carried, carried_config) = match (announcement.table.as_str(), announcement.row) {
            ("feature_flags", Some(row)) => (serde_json::from_value::<Flag>(row).ok(), None),
            ("app_config", Some(row)) => (None, serde_json::from_value::<ConfigRow>(row).ok()),
            _ => (None, None),
        };
        let carried_config = carried_config.filter(|row| row.version == version);
        if let Some(flag) = carried.filter(|flag| flag.version == version) {
            let key = flag.key.clone();
            publish_flag(
                state,
                current.with_flag(version, &key, Some(flag)),
                version,
                key,
            );
            return Next::Listen;
        }
        match (
            announcement.table.as_str(),
            announcement.op.as_str(),
            announcement.key,
        ) {
            ("feature_flags", "insert" | "update" | "delete", Some(key)) => {
                match self.store.flag(&key).await {
                    Ok(Some(flag)) if flag.version == version => {
                        publish_flag(
                            state,
                            current.with_flag(version, &key, Some(flag)),
                            version,
                            key,
                        );
                        Next::Listen
                    }
                    // Changed again since: its own notification follows.
                    Ok(Some(flag)) if flag.version > version => {
                        state.advance(version);
                        Next::Listen
                    }
                    Ok(None) if current.flag(&key).is_some() => {
                        state.publish(
                            current.with_flag(version, &key, None),
                            Event::FlagDeleted { version, key },
                        );
                        Next::Listen
                    }
                    Ok(None) => {
                        state.advance(version);
                        Next::Listen
                    }
                    Ok(Some(_)) => Next::Reload,
                    Err(err) => {
                        tracing::warn!(error = %err, "reading a changed flag failed; reconnecting");
                        Next::Reconnect
                    }
                }
            }
            ("feature_flags", _, _) => Next::Reload,
            ("app_config", "insert" | "update" | "delete", Some(key)) => {
                let Some(environment) = announcement.environment else {
                    return Next::Reload;
                };
                let row = match carried_config {
                    Some(row) => Ok(Some(row)),
                    None => self.store.config_row(&key, &environment).await,
                };
                match row {
                    Ok(Some(row)) if row.version == version => {
                        self.publish_config(state, &current, version, key, environment, Some(row));
                        Next::Listen
                    }
                    // Changed again since: its own notification follows.
                    Ok(Some(row)) if row.version > version => {
                        state.advance(version);
                        Next::Listen
                    }
                    Ok(None) => {
                        self.publish_config(state, &current, version, key, environment, None);
                        Next::Listen
                    }
                    Ok(Some(_)) => Next::Reload,
                    Err(err) => {
                        tracing::warn!(error = %err, "reading a changed config row failed; reconnecting");
                        Next::Reconnect
                    }
                }
            }
            ("app_config", _, _) => Next::Reload,
            _ => {
                state.advance(version);
                Next::Listen
            }
        }
    }

    /// Publishes a change of configuration row (`key`, `environment`).
    fn publish_config(
        &self,
        state: &State,
        current: &Snapshot,
        version: i64,
        key: String,
        environment: String,
        row: Option<ConfigRow>,
    ) {
        let before = resolve(&current.configs, &key, &self.environment).cloned();
        let snapshot = current.with_config(version, &key, &environment, row);
        let resolved = resolve(&snapshot.configs, &key, &self.environment).cloned();
        let resolved_changed = before != resolved;
        state.publish(
            snapshot,
            Event::ConfigChanged {
                version,
                key,
                resolved,
                resolved_changed,
            },
        );
    }
}

/// Publishes `snapshot`, in which flag `key` changed at `version`.
fn publish_flag(state: &State, snapshot: Snapshot, version: i64, key: String) {
    match snapshot.flag(&key).cloned() {
        Some(flag) => {
            let created = state.snapshot().flag(&key).is_none();
            state.publish(
                snapshot,
                Event::FlagUpserted {
                    version,
                    flag,
                    created,
                },
            );
        }
        // The row was invalid and is left out: to a reader it is gone.
        None => state.publish(snapshot, Event::FlagDeleted { version, key }),
    }
}
