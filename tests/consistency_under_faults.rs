//! Consistency under faults: two readyd servers follow one private
//! PostgreSQL cluster while a plain-SQL writer makes 10,000 changes, the
//! database is restarted twice and readyd's LISTEN connections are killed at
//! random moments. Every WatchFlags subscriber on both servers must end with
//! exactly the table's state, having seen versions strictly increase and no
//! change twice, on streams that stayed open throughout.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::api::pb::readyd::v1::watch_flags_response::Event;
use readyd::api::pb::readyd::v1::{
    Flag, ListFlagsRequest, WatchFlagsRequest, WatchFlagsResponse, flag_change,
};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use support::cluster::Cluster;
use support::daemon::{Daemon, DaemonCommand};
use support::rng::Rng;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Changes the writer makes.
const WRITES: u64 = 10_000;
/// Keys the writer spreads its changes over.
const KEYS: usize = 200;
/// Database restarts during the writes.
const RESTARTS: usize = 2;
/// How long the database stays down at each restart.
const DOWN_FOR: Duration = Duration::from_millis(1500);
/// Times readyd's LISTEN connections are killed during the writes.
const LISTENER_KILLS: usize = 12;
/// How long a kill waits for a LISTEN connection to appear: after a restart
/// the listeners reconnect with a backoff of up to 2 s, and a busy machine
/// (the whole suite on two cores) can take several times that.
const KILL_PATIENCE: Duration = Duration::from_secs(30);
/// How long the subscribers may take to agree with the table after the last write.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
/// How long one write may keep failing (the database down) before the test gives up.
const WRITE_RETRY_LIMIT: Duration = Duration::from_secs(60);

/// What the comparison looks at for one flag: enabled, rollout, version.
type FlagState = (bool, u32, i64);

/// key -> state.
type Flags = BTreeMap<String, FlagState>;

fn flag_state(flag: &Flag) -> FlagState {
    (flag.enabled, flag.rollout_percentage, flag.version)
}

impl Rng {
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low)
    }
}

// ---------------------------------------------------------------------------
// The private cluster
// ---------------------------------------------------------------------------

/// A connection of the test's own, named so that it is never mistaken for readyd's.
async fn connect(url: &str, application_name: &str) -> Result<PgConnection, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    options.application_name(application_name).connect().await
}

// ---------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------

/// What one WatchFlags subscriber knows, built only from its stream, and
/// what it found wrong with it.
#[derive(Debug, Default)]
struct View {
    /// The flags as the stream has told them.
    flags: Flags,
    /// Version of the last complete snapshot or change.
    last_version: i64,
    /// Whether a first snapshot (or a resumed start) has arrived.
    started: bool,
    /// The snapshot being received in parts: its version and flags so far.
    partial: Option<(i64, Flags)>,
    /// Complete snapshots received.
    snapshots: u64,
    /// Changes received.
    changes: u64,
    /// Everything that broke the stream's promises.
    problems: Vec<String>,
    /// How the stream ended, if it did.
    ended: Option<String>,
    /// The version it asked to resume after, if it did.
    resumed_from: Option<i64>,
}

impl View {
    fn problem(&mut self, problem: String) {
        // The first few say what went wrong; thousands would only bury them.
        if self.problems.len() < 20 {
            self.problems.push(problem);
        }
    }

    fn apply(&mut self, message: WatchFlagsResponse) {
        match message.event {
            Some(Event::Snapshot(part)) => {
                if part.first {
                    if self.partial.is_some() {
                        self.problem(format!("snapshot {} began inside another", part.version));
                    }
                    if self.started && part.version < self.last_version {
                        self.problem(format!(
                            "snapshot {} after version {}",
                            part.version, self.last_version
                        ));
                    }
                    self.partial = Some((part.version, Flags::new()));
                }
                let Some((version, mut flags)) = self.partial.take() else {
                    self.problem(format!(
                        "snapshot part {} without a first part",
                        part.version
                    ));
                    return;
                };
                if part.version != version {
                    self.problem(format!(
                        "snapshot parts of versions {version} and {}",
                        part.version
                    ));
                }
                for flag in &part.flags {
                    if flags.insert(flag.key.clone(), flag_state(flag)).is_some() {
                        self.problem(format!("{} twice in snapshot {version}", flag.key));
                    }
                }
                if part.last {
                    self.flags = flags;
                    self.last_version = version;
                    self.started = true;
                    self.snapshots += 1;
                } else {
                    self.partial = Some((version, flags));
                }
            }
            Some(Event::Change(change)) => {
                let version = change.version;
                if self.partial.is_some() {
                    self.problem(format!("change {version} inside a snapshot"));
                }
                if !self.started {
                    self.problem(format!("change {version} before any snapshot"));
                }
                if version <= self.last_version {
                    self.problem(format!(
                        "change {version} after version {} (repeated or backwards)",
                        self.last_version
                    ));
                }
                self.last_version = version;
                self.changes += 1;
                match change.change {
                    Some(flag_change::Change::Upserted(flag)) => {
                        if flag.version != version {
                            self.problem(format!(
                                "change {version} carries {} at version {}",
                                flag.key, flag.version
                            ));
                        }
                        self.flags.insert(flag.key.clone(), flag_state(&flag));
                    }
                    Some(flag_change::Change::DeletedKey(key)) => {
                        if self.flags.remove(&key).is_none() {
                            self.problem(format!("change {version} deletes unknown {key}"));
                        }
                    }
                    Some(
                        flag_change::Change::SegmentUpserted(_)
                        | flag_change::Change::SegmentDeletedKey(_),
                    ) => self.problem(format!("change {version} is a segment's; none are written")),
                    None => self.problem(format!("change {version} without a change")),
                }
            }
            Some(Event::Freshness(freshness)) => {
                self.problem(format!("freshness {freshness:?} though not asked for"));
            }
            None => self.problem("a message without an event".to_owned()),
        }
    }
}

/// One subscriber: its name and its view, shared with the task reading its stream.
struct Subscriber {
    name: String,
    view: Arc<Mutex<View>>,
}

impl Subscriber {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Opens a WatchFlags stream on `daemon` and applies it to a view in the
/// background. With `resume_from`, the stream resumes after that
/// subscriber's current version, starting from a copy of its view.
async fn subscribe(channel: Channel, name: String, resume_from: Option<&Subscriber>) -> Subscriber {
    let mut view = View::default();
    let mut since_version = None;
    if let Some(other) = resume_from {
        let other = other.view();
        if other.started && other.partial.is_none() {
            view.flags = other.flags.clone();
            view.last_version = other.last_version;
            view.started = true;
            since_version = Some(other.last_version);
            view.resumed_from = since_version;
        }
    }
    let view = Arc::new(Mutex::new(view));
    let mut stream = FlagServiceClient::new(channel)
        .watch_flags(WatchFlagsRequest {
            keys: vec![],
            since_version,
            with_freshness: false,
        })
        .await
        .expect("watch flags")
        .into_inner();
    let shared = Arc::clone(&view);
    tokio::spawn(async move {
        let ended = loop {
            match stream.next().await {
                Some(Ok(message)) => shared
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .apply(message),
                Some(Err(status)) => break format!("failed: {status:?}"),
                None => break "ended by the server".to_owned(),
            }
        };
        shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .ended = Some(ended);
    });
    Subscriber { name, view }
}

// ---------------------------------------------------------------------------
// The writer and the faults
// ---------------------------------------------------------------------------

/// What the writer did.
#[derive(Debug, Default)]
struct WriterReport {
    inserts: u64,
    updates: u64,
    deletes: u64,
    /// Statements that changed no row (the writer's belief was out of date
    /// after a commit with an unknown outcome).
    no_ops: u64,
    /// Failed attempts that were retried.
    retries: u64,
    /// When the last write committed.
    finished: Option<Instant>,
}

/// Runs one statement, reconnecting and retrying while the database is down.
/// Returns the rows it changed.
async fn execute_with_retry(
    conn: &mut Option<PgConnection>,
    url: &str,
    report: &mut WriterReport,
    statement: impl Fn() -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> u64 {
    let started = Instant::now();
    loop {
        let result = match conn.as_mut() {
            Some(connection) => statement()
                .execute(connection)
                .await
                .map(|done| done.rows_affected()),
            None => match connect(url, "readyd-test-writer").await {
                Ok(fresh) => {
                    *conn = Some(fresh);
                    continue;
                }
                Err(err) => Err(err),
            },
        };
        match result {
            Ok(rows) => return rows,
            Err(err) => {
                assert!(
                    started.elapsed() < WRITE_RETRY_LIMIT,
                    "a write kept failing for {WRITE_RETRY_LIMIT:?}: {err}"
                );
                report.retries += 1;
                // Whatever broke, a fresh connection is the way back.
                *conn = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Makes `WRITES` changes by plain SQL over its own connection, counting
/// them in `progress`. Statements are chosen so that none consumes a version
/// without writing a row (no ON CONFLICT), and a retried one that already
/// committed is harmless: the final comparison is against the table.
async fn write(url: String, seed: u64, progress: Arc<AtomicU64>) -> WriterReport {
    let mut rng = Rng(seed);
    let mut report = WriterReport::default();
    let mut conn = None;
    // What the writer believes exists; corrected by rows_affected.
    let mut exists = [true; KEYS];
    for _ in 0..WRITES {
        let index = rng.below(KEYS as u64) as usize;
        let key = key_name(index);
        let enabled = rng.below(2) == 1;
        let rollout = rng.below(101) as i32;
        if !exists[index] {
            let rows = execute_with_retry(&mut conn, &url, &mut report, || {
                sqlx::query(
                    "INSERT INTO feature_flags (key, enabled, rollout_percentage) \
                     SELECT $1, $2, $3 \
                     WHERE NOT EXISTS (SELECT 1 FROM feature_flags WHERE key = $1)",
                )
                .bind(key.clone())
                .bind(enabled)
                .bind(rollout)
            })
            .await;
            if rows == 1 {
                report.inserts += 1;
            } else {
                report.no_ops += 1;
            }
            exists[index] = true;
        } else if rng.below(10) == 0 {
            let rows = execute_with_retry(&mut conn, &url, &mut report, || {
                sqlx::query("DELETE FROM feature_flags WHERE key = $1").bind(key.clone())
            })
            .await;
            if rows == 1 {
                report.deletes += 1;
            } else {
                report.no_ops += 1;
            }
            exists[index] = false;
        } else {
            let rows = execute_with_retry(&mut conn, &url, &mut report, || {
                sqlx::query(
                    "UPDATE feature_flags SET enabled = $2, rollout_percentage = $3 WHERE key = $1",
                )
                .bind(key.clone())
                .bind(enabled)
                .bind(rollout)
            })
            .await;
            if rows == 1 {
                report.updates += 1;
            } else {
                report.no_ops += 1;
            }
            exists[index] = rows == 1;
        }
        progress.fetch_add(1, Ordering::SeqCst);
    }
    report.finished = Some(Instant::now());
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
    report
}

fn key_name(index: usize) -> String {
    format!("cf-{index:03}")
}

/// One fault, due when the writer has made `at` writes.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Restart,
    KillListeners,
}

/// What the faults did.
#[derive(Debug, Default)]
struct FaultReport {
    restarts: usize,
    /// Kills that terminated at least one LISTEN connection.
    kills: usize,
    /// LISTEN connections terminated, over all kills.
    listeners_killed: u64,
    /// Kills that found no LISTEN connection for `KILL_PATIENCE`.
    kills_without_victim: usize,
    /// Kills skipped because the database could not be reached.
    kills_skipped: usize,
    /// readyd's sessions each time a kill found no LISTEN connection, to
    /// say what the listeners were doing instead.
    sessions_without_victim: Vec<String>,
}

/// One row of `pg_stat_activity`: pid, state, query, ages.
type SessionRow = (i32, Option<String>, Option<String>, Option<String>);

/// readyd's sessions as `pg_stat_activity` shows them, one per line.
async fn readyd_sessions(url: &str) -> String {
    let Ok(mut admin) = connect(url, "readyd-test-faults").await else {
        return "(database unreachable)".to_owned();
    };
    let rows: Result<Vec<SessionRow>, _> = sqlx::query_as(
        "SELECT pid, state, left(query, 80), \
                (now() - backend_start)::text || ' since start, ' || (now() - state_change)::text || ' in state' \
         FROM pg_stat_activity WHERE application_name = 'readyd' ORDER BY pid",
    )
    .fetch_all(&mut admin)
    .await;
    let _ = admin.close().await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|(pid, state, query, ages)| format!("{pid} {state:?} {query:?} {ages:?}"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(err) => format!("(pg_stat_activity: {err})"),
    }
}

/// Terminates readyd's LISTEN connections; how many, or None when the
/// database cannot be reached.
async fn kill_listeners(url: &str) -> Option<u64> {
    let mut admin = connect(url, "readyd-test-faults").await.ok()?;
    let killed: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
         FROM pg_stat_activity \
         WHERE application_name = 'readyd' AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&mut admin)
    .await;
    let _ = admin.close().await;
    killed.ok().map(|n| n as u64)
}

/// Runs `schedule` (sorted by write count) against the cluster as the
/// writer progresses; returns the running cluster's handle at the end.
async fn inflict(
    mut cluster: Cluster,
    schedule: Vec<(u64, Fault)>,
    progress: Arc<AtomicU64>,
) -> (Cluster, FaultReport) {
    let mut report = FaultReport::default();
    for (at, fault) in schedule {
        while progress.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        match fault {
            Fault::Restart => {
                cluster.stop().await;
                tokio::time::sleep(DOWN_FOR).await;
                cluster.restart().await;
                report.restarts += 1;
            }
            Fault::KillListeners => {
                // Right after a restart the listeners may still be in their
                // reconnection backoff: try again briefly until one is there.
                let until = Instant::now() + KILL_PATIENCE;
                loop {
                    match kill_listeners(cluster.url()).await {
                        Some(0) if Instant::now() < until => {}
                        Some(0) => {
                            report.kills_without_victim += 1;
                            report
                                .sessions_without_victim
                                .push(readyd_sessions(cluster.url()).await);
                            break;
                        }
                        Some(killed) => {
                            report.listeners_killed += killed;
                            report.kills += 1;
                            break;
                        }
                        None => {
                            report.kills_skipped += 1;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    (cluster, report)
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

async fn table_flags(conn: &mut PgConnection) -> Result<Flags, sqlx::Error> {
    let rows: Vec<(String, bool, i32, i64)> = sqlx::query_as(
        "SELECT key, enabled, rollout_percentage, version FROM feature_flags ORDER BY key",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, enabled, rollout, version)| (key, (enabled, rollout as u32, version)))
        .collect())
}

async fn listed_flags(daemon: &Daemon) -> Flags {
    FlagServiceClient::new(daemon.channel().await)
        .list_flags(ListFlagsRequest {
            prefix: String::new(),
            ..Default::default()
        })
        .await
        .expect("list flags")
        .into_inner()
        .flags
        .iter()
        .map(|flag| (flag.key.clone(), flag_state(flag)))
        .collect()
}

/// A few lines saying how `seen` differs from `want`.
fn difference(want: &Flags, seen: &Flags) -> String {
    let mut lines = Vec::new();
    for (key, state) in want {
        match seen.get(key) {
            None => lines.push(format!("  missing {key} {state:?}")),
            Some(other) if other != state => {
                lines.push(format!("  {key}: table {state:?}, seen {other:?}"));
            }
            Some(_) => {}
        }
    }
    for (key, state) in seen {
        if !want.contains_key(key) {
            lines.push(format!("  extra {key} {state:?}"));
        }
    }
    let total = lines.len();
    lines.truncate(10);
    format!("{total} difference(s):\n{}", lines.join("\n"))
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_ends_with_the_table_through_restarts_and_killed_listeners() {
    let seed = std::env::var("CONSISTENCY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("seed {seed} (repeat with CONSISTENCY_SEED={seed})");
    let mut rng = Rng(seed);

    let cluster = Cluster::start().await;
    let url = cluster.url().to_owned();

    // Both servers at once: each migrates at start, so this also runs two
    // migrations concurrently on an empty database.
    let server_dirs = [
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    ];
    let start = |dir: &Path| {
        DaemonCommand::serve()
            .env("DATABASE_URL", &url)
            .args(["--db-wait", "20s", "--shutdown-timeout", "5s"])
            // The listener's reconnection attempts, should a kill find none.
            .args(["--log", "info,readyd::store=debug"])
            .arg_path("--data-dir", dir)
            .start()
    };
    let (a, b) = tokio::join!(start(server_dirs[0].path()), start(server_dirs[1].path()));
    let mut daemons = [a, b];

    let mut writer_conn = connect(&url, "readyd-test-writer").await.expect("connect");
    let listening: Vec<(String, String)> = sqlx::query_as(
        "SELECT application_name, query FROM pg_stat_activity WHERE query ILIKE 'LISTEN%'",
    )
    .fetch_all(&mut writer_conn)
    .await
    .expect("read pg_stat_activity");
    println!("LISTEN connections: {listening:?}");
    assert_eq!(
        listening.iter().filter(|(app, _)| app == "readyd").count(),
        2,
        "one LISTEN connection per server, named readyd"
    );
    // Every key exists at the start, in one statement.
    sqlx::query(
        "INSERT INTO feature_flags (key, enabled, rollout_percentage) \
         SELECT format('cf-%s', lpad(i::text, 3, '0')), false, 0 FROM generate_series(0, $1 - 1) AS i",
    )
    .bind(KEYS as i32)
    .execute(&mut writer_conn)
    .await
    .expect("insert the keys");

    // Two subscribers per server before the writes.
    let mut subscribers = Vec::new();
    for (server, daemon) in daemons.iter().enumerate() {
        for n in 0..2 {
            subscribers.push(
                subscribe(
                    daemon.channel().await,
                    format!("server {server} stream {n}"),
                    None,
                )
                .await,
            );
        }
    }

    let mut schedule: Vec<(u64, Fault)> = vec![
        (rng.between(2_000, 4_500), Fault::Restart),
        (rng.between(5_500, 8_500), Fault::Restart),
    ];
    for _ in 0..LISTENER_KILLS {
        schedule.push((rng.between(200, WRITES - 200), Fault::KillListeners));
    }
    schedule.sort_by_key(|(at, _)| *at);
    assert_eq!(
        schedule
            .iter()
            .filter(|(_, f)| matches!(f, Fault::Restart))
            .count(),
        RESTARTS
    );
    println!("faults at writes: {schedule:?}");

    let progress = Arc::new(AtomicU64::new(0));
    let writes_started = Instant::now();
    let writer = tokio::spawn(write(url.clone(), rng.next() | 1, Arc::clone(&progress)));
    let faults = tokio::spawn(inflict(cluster, schedule, Arc::clone(&progress)));

    // More subscribers in the middle: a fresh one at a third, and at two
    // thirds one resuming after the first stream's version.
    for (stream, at, resume) in [(2, WRITES / 3, false), (3, 2 * WRITES / 3, true)] {
        while progress.load(Ordering::SeqCst) < at && !writer.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (server, daemon) in daemons.iter().enumerate() {
            let name = format!("server {server} stream {stream}");
            let resume_from = resume.then(|| &subscribers[server * 2]);
            let subscriber = subscribe(daemon.channel().await, name, resume_from).await;
            subscribers.push(subscriber);
        }
    }

    let writer = writer.await.expect("writer");
    let (mut cluster, faults) = faults.await.expect("faults");
    let finished = writer.finished.unwrap_or_else(Instant::now);
    let writing = finished - writes_started;
    println!(
        "{WRITES} writes in {writing:?} ({:.0}/s): {} inserts, {} updates, {} deletes, \
         {} without effect, {} retried attempts",
        WRITES as f64 / writing.as_secs_f64(),
        writer.inserts,
        writer.updates,
        writer.deletes,
        writer.no_ops,
        writer.retries,
    );
    println!(
        "faults: {} restarts, {} kills terminating {} LISTEN connections, {} kills found none, \
         {} kills skipped (database down)",
        faults.restarts,
        faults.kills,
        faults.listeners_killed,
        faults.kills_without_victim,
        faults.kills_skipped,
    );
    assert_eq!(faults.restarts, RESTARTS);
    if faults.kills != LISTENER_KILLS {
        let mut logs = String::new();
        for (server, daemon) in daemons.iter_mut().enumerate() {
            logs.push_str(&format!("--- server {server}:\n"));
            for line in daemon.log_lines().await {
                if line.contains("listener") || line.contains("database") || line.contains("reload")
                {
                    logs.push_str(&line);
                    logs.push('\n');
                }
            }
        }
        panic!(
            "every kill finds a LISTEN connection within {KILL_PATIENCE:?}, but {} of {LISTENER_KILLS} did not; \
             readyd's sessions when one did not:\n{}\nreadyd's listener logs:\n{logs}",
            LISTENER_KILLS - faults.kills,
            faults.sessions_without_victim.join("\n--\n")
        );
    }

    // Wait until everyone agrees with the table.
    let mut writer_conn = connect(&url, "readyd-test-writer")
        .await
        .expect("reconnect");
    let table = table_flags(&mut writer_conn).await.expect("read the table");
    let deadline = Instant::now() + CONVERGE_WITHIN;
    let converged = loop {
        let streams_agree = subscribers.iter().all(|s| s.view().flags == table);
        let mut lists_agree = true;
        if streams_agree {
            for daemon in &daemons {
                lists_agree &= listed_flags(daemon).await == table;
            }
        }
        if streams_agree && lists_agree {
            break Some(finished.elapsed());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut failures = Vec::new();
    for subscriber in &subscribers {
        let view = subscriber.view();
        let resumed = view
            .resumed_from
            .map_or(String::new(), |since| format!(" (resumed after {since})"));
        println!(
            "{}{resumed}: {} snapshots, {} changes, last version {}",
            subscriber.name, view.snapshots, view.changes, view.last_version
        );
        if !view.problems.is_empty() {
            failures.push(format!("{}: {}", subscriber.name, view.problems.join("; ")));
        }
        if let Some(ended) = &view.ended {
            failures.push(format!("{}: stream {ended}", subscriber.name));
        }
        if view.flags != table {
            failures.push(format!(
                "{}: {}",
                subscriber.name,
                difference(&table, &view.flags)
            ));
        }
    }
    for (server, daemon) in daemons.iter().enumerate() {
        let listed = listed_flags(daemon).await;
        if listed != table {
            failures.push(format!(
                "server {server} ListFlags: {}",
                difference(&table, &listed)
            ));
        }
    }
    match converged {
        Some(after) => println!(
            "{} flags in the table; every subscriber and list agreed {after:?} after the last write",
            table.len()
        ),
        None => println!("no convergence within {CONVERGE_WITHIN:?} of the last write"),
    }

    let mut reloads = Vec::new();
    for (server, daemon) in daemons.into_iter().enumerate() {
        let lines = daemon.stop().await;
        reloads.push(
            lines
                .iter()
                .filter(|l| l.contains("reloaded everything"))
                .count(),
        );
        if !failures.is_empty() {
            // What the listener said is the first place to look.
            for line in lines
                .iter()
                .filter(|l| l.contains("WARN") || l.contains("reload"))
            {
                println!("server {server}: {line}");
            }
        }
    }
    println!("full reloads per server: {reloads:?}");
    let _ = writer_conn.close().await;
    cluster.stop().await;

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        converged.is_some(),
        "no convergence within {CONVERGE_WITHIN:?}"
    );
}

/// Catching up that fails just after the listener lost its connection
/// sends the listener back to reconnecting while it still holds its old
/// connection, the only one of its pool: it must let go of it, or it waits
/// for that slot forever and never sees another change.
#[tokio::test]
async fn a_listener_whose_catch_up_fails_reconnects_and_catches_up() {
    let db = support::TestDb::new().await;
    // A child process, so the test can wait for its log line saying the
    // reload failed instead of guessing how long that takes.
    let mut daemon = DaemonCommand::serve()
        .env("DATABASE_URL", &db.url)
        .start()
        .await;
    let subscriber = subscribe(daemon.channel().await, "stream".into(), None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !subscriber.view().started {
        assert!(Instant::now() < deadline, "no snapshot within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Until the log has its name back, every catch-up fails.
    sqlx::query("ALTER TABLE readyd_change_log RENAME TO readyd_change_log_away")
        .execute(&db.pool)
        .await
        .expect("rename the change log");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'readyd' \
         AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("terminate the listener connection");
    assert_eq!(killed, [true], "exactly one listener connection");
    daemon
        .wait_for_log("reading the change log failed", Duration::from_secs(30))
        .await;
    sqlx::query("ALTER TABLE readyd_change_log_away RENAME TO readyd_change_log")
        .execute(&db.pool)
        .await
        .expect("restore the change log");

    let version: i64 = sqlx::query_scalar(
        "UPDATE feature_flags SET enabled = NOT enabled WHERE key = 'dark_mode' RETURNING version",
    )
    .fetch_one(&db.pool)
    .await
    .expect("change a flag");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = subscriber
            .view()
            .flags
            .get("dark_mode")
            .map(|state| state.2);
        if seen == Some(version) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change at version {version} never arrived (dark_mode at {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let view = subscriber.view();
        assert!(view.problems.is_empty(), "{:?}", view.problems);
        assert_eq!(view.ended, None);
    }
    daemon.stop().await;
}
