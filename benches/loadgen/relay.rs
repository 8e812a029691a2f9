//! The relay scenario: one upstream readyd on the database (pinned like
//! every server), a fleet of followers, and what relay mode promises:
//!
//! - PostgreSQL sessions on the bench database with no follower, with the
//!   real followers, and with every fleet size: the upstream's own;
//! - a flag updated by plain SQL, timed from the moment the UPDATE is sent
//!   (as the propagation scenario does) until a WatchFlags subscriber on
//!   every real follower and every lightweight follower stream has its
//!   version, next to subscribers on the upstream itself (the in-run
//!   baseline: one hop instead of two);
//! - the upstream's resident memory per Follow stream, and a follower's
//!   when idle;
//! - a follower restarted with the same data directory: time from exec to
//!   serving the upstream's current data.
//!
//! Real followers are `readyd serve --upstream` processes (started from
//! this program, so on its core when pinned); the rest of each fleet are
//! lightweight followers: Follow streams this program opens with the
//! replication token and reads to the end of every message, as a follower
//! does, many to an HTTP/2 connection.

use std::path::Path;
use std::time::{Duration, Instant};

use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::api::pb::readyd::v1::replication_service_client::ReplicationServiceClient;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::Channel;

use crate::load;
use crate::process::Server;
use crate::scenarios::{Bench, WATCHED_FLAG, readyd_address, wait_until_ready};
use crate::support::TestDb;

/// The fleet's replication token.
const REPLICATION_TOKEN: &str = "loadgen-replication-token";
/// The upstream's query pool (`--db-pool-size`, readyd's default): its
/// sessions are these and the change listener's.
pub const UPSTREAM_POOL: i64 = 4;
/// Lightweight Follow streams per HTTP/2 connection (readyd allows 1,000
/// by default: `--max-streams-per-connection`).
pub const FOLLOWS_PER_CONNECTION: usize = 500;
/// WatchFlags streams per connection on the upstream.
const WATCHES_PER_CONNECTION: usize = 100;
/// Real followers started at once.
const STARTING_AT_ONCE: usize = 8;
/// How long one update may take to reach everyone before it counts as lost.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// Memory set aside per real follower when deciding how many fit.
const MEMORY_PER_FOLLOWER: u64 = 64 * 1024 * 1024;

/// How big the relay scenario is.
#[derive(Debug, Clone)]
pub struct RelayPlan {
    /// Real follower processes (fewer when memory is short).
    pub followers: usize,
    /// Follower streams in all, per fleet size (real followers and
    /// lightweight streams), in increasing order.
    pub fleets: Vec<usize>,
    /// Updates timed per fleet size.
    pub updates: usize,
    /// Restarts of one follower timed.
    pub restarts: usize,
}

/// PostgreSQL sessions on the bench database at one moment.
pub struct Sessions {
    /// Follower streams open on the upstream then.
    pub followers: usize,
    /// Every row of `pg_stat_activity` for the database (this program's
    /// own connection included).
    pub all: i64,
    /// Those whose `application_name` is `readyd`.
    pub readyd: i64,
}

/// Deliveries of one kind of stream.
pub struct Deliveries {
    /// Streams of this kind.
    pub streams: usize,
    /// Deliveries seen (streams x updates when none was missed).
    pub received: u64,
    /// Time from sending the UPDATE to the stream's receipt, in µs.
    pub latency_us: hdrhistogram::Histogram<u64>,
}

impl Deliveries {
    fn new(streams: usize) -> Deliveries {
        Deliveries {
            streams,
            received: 0,
            latency_us: load::histogram(),
        }
    }

    /// Streams x updates.
    pub fn expected(&self, updates: usize) -> u64 {
        (self.streams * updates) as u64
    }
}

/// One fleet size.
pub struct Fleet {
    /// Follower streams on the upstream: real followers and lightweight.
    pub streams: usize,
    /// Of those, lightweight.
    pub lightweight: usize,
    /// HTTP/2 connections the lightweight streams share.
    pub connections: usize,
    /// Follower streams added since `rss_before`.
    pub added: usize,
    /// The upstream's resident set before they were added.
    pub rss_before: Option<u64>,
    /// And after, all of them with their snapshot.
    pub rss_after: Option<u64>,
    /// Updates timed.
    pub updates: usize,
    /// To WatchFlags subscribers on the upstream (the baseline).
    pub direct: Deliveries,
    /// To a WatchFlags subscriber on every real follower.
    pub subscribers: Deliveries,
    /// To every lightweight follower stream.
    pub lightweight_deliveries: Deliveries,
    /// The last two together: every follower.
    pub every_follower: Deliveries,
    /// The same deliveries timed from the UPDATE's commit acknowledged
    /// instead of from its sending (a delivery before it counts 0): the
    /// commit's own time, the disk's, left out.
    pub every_follower_after_commit_us: hdrhistogram::Histogram<u64>,
    /// Per update, until the last follower had it, in µs.
    pub whole_fleet_us: hdrhistogram::Histogram<u64>,
    /// Per update, the UPDATE's own round trip (until its commit was
    /// acknowledged), in µs.
    pub commit_us: hdrhistogram::Histogram<u64>,
}

impl Fleet {
    /// The per-stream growth of the upstream's resident set, in bytes.
    pub fn bytes_per_stream(&self) -> Option<f64> {
        let (before, after) = (self.rss_before?, self.rss_after?);
        (self.added > 0).then(|| (after as f64 - before as f64) / self.added as f64)
    }
}

/// The relay scenario's figures.
pub struct Relay {
    /// Real followers started.
    pub followers: usize,
    /// Why fewer than asked, when so.
    pub followers_note: Option<String>,
    /// The open-files limit, as found or raised.
    pub open_files: String,
    /// The upstream's resident set with no follower, 1 s after start.
    pub upstream_idle_bytes: Option<u64>,
    /// Each real follower's resident set, 1 s after all had started.
    pub follower_idle_bytes: Vec<u64>,
    /// The same, anonymous and file-backed.
    pub follower_idle_kinds: Vec<(u64, u64)>,
    /// Sessions with no follower, the real followers, and each fleet size.
    pub sessions: Vec<Sessions>,
    /// Each fleet size.
    pub fleets: Vec<Fleet>,
    /// A restarted follower: exec to its serving line.
    pub restart_serving: Vec<Duration>,
    /// The same: exec to a ListFlags at the upstream's version and an
    /// evaluation that is not STALE.
    pub restart_fresh: Vec<Duration>,
}

/// Which kind of stream saw a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// WatchFlags on the upstream.
    Direct = 0,
    /// WatchFlags on a real follower.
    Subscriber = 1,
    /// A lightweight Follow stream.
    Lightweight = 2,
}

/// One timed update, for the slowest ones' report.
struct SlowUpdate {
    update: usize,
    /// When it was done, from the first update sent.
    at: Duration,
    committed: Duration,
    /// The first and last of the upstream's own subscribers.
    direct: (Duration, Duration),
    /// The last of the real followers' subscribers.
    subscribers: Duration,
    /// The last lightweight stream.
    lightweight: Duration,
    /// The last of every follower.
    slowest: Duration,
}

impl std::fmt::Display for SlowUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "update {} done {:.1} s in: every follower {:.1} ms; commit {:.1} ms, the upstream's subscribers first/last {:.1}/{:.1} ms, followers' subscribers last {:.1} ms, lightweight last {:.1} ms",
            self.update,
            self.at.as_secs_f64(),
            ms(self.slowest),
            ms(self.committed),
            ms(self.direct.0),
            ms(self.direct.1),
            ms(self.subscribers),
            ms(self.lightweight),
        )
    }
}

/// A stream has received `version`.
struct Seen {
    kind: Kind,
    id: usize,
    version: i64,
    at: Instant,
}

/// What every stream has seen so far.
struct Tracker {
    seen: mpsc::UnboundedReceiver<Seen>,
    /// The newest version per stream, per kind (0: nothing yet).
    last: [Vec<i64>; 3],
}

impl Tracker {
    fn new(seen: mpsc::UnboundedReceiver<Seen>) -> Tracker {
        Tracker {
            seen,
            last: [Vec::new(), Vec::new(), Vec::new()],
        }
    }

    /// Notes `seen`; returns the version the stream held before.
    fn note(&mut self, seen: &Seen) -> i64 {
        let last = &mut self.last[seen.kind as usize];
        if last.len() <= seen.id {
            last.resize(seen.id + 1, 0);
        }
        let before = last[seen.id];
        last[seen.id] = before.max(seen.version);
        before
    }

    /// Waits until streams `ids` of `kind` have their first snapshot.
    async fn opened(&mut self, kind: Kind, ids: std::ops::Range<usize>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let has = |tracker: &Tracker, id: usize| {
            tracker.last[kind as usize]
                .get(id)
                .is_some_and(|&version| version > 0)
        };
        let mut missing = ids.clone().filter(|&id| !has(self, id)).count();
        while missing > 0 {
            match tokio::time::timeout_at(deadline.into(), self.seen.recv()).await {
                Ok(Some(seen)) => {
                    let before = self.note(&seen);
                    if seen.kind == kind && ids.contains(&seen.id) && before == 0 {
                        missing -= 1;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "{missing} of {} {kind:?} streams have no snapshot after 120 s",
                    ids.len()
                ),
            }
        }
    }

    /// Waits, at most [`DELIVERY_WAIT`], until `expected` streams of each
    /// kind hold `version`, sent at `sent`; returns each delivery's time.
    async fn deliveries(
        &mut self,
        version: i64,
        sent: Instant,
        expected: [usize; 3],
    ) -> [Vec<Duration>; 3] {
        let mut times: [Vec<Duration>; 3] = Default::default();
        let deadline = Instant::now() + DELIVERY_WAIT;
        let done =
            |times: &[Vec<Duration>; 3]| (0..3).all(|kind| times[kind].len() >= expected[kind]);
        while !done(&times) {
            match tokio::time::timeout_at(deadline.into(), self.seen.recv()).await {
                Ok(Some(seen)) => {
                    let before = self.note(&seen);
                    if before < version && seen.version >= version {
                        times[seen.kind as usize].push(seen.at.saturating_duration_since(sent));
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        times
    }
}

/// The resident set of each process in `servers`.
fn resident(servers: &[Server]) -> Vec<u64> {
    servers.iter().filter_map(Server::rss_bytes).collect()
}

/// Sessions on `db` now.
async fn sessions(db: &TestDb, followers: usize) -> Sessions {
    let (all, readyd): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE application_name = 'readyd') \
         FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .expect("read pg_stat_activity");
    Sessions {
        followers,
        all,
        readyd,
    }
}

/// Raises this process's soft limit of open files to `wanted` (at most the
/// hard limit) when it is lower; children inherit it. Says what it found.
fn raise_open_files(wanted: u64) -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return "open files: limit unknown".to_owned();
    }
    if limit.rlim_cur >= wanted {
        return format!("open files: soft limit {}, enough", limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        format!(
            "open files: soft limit raised from {} to {}",
            limit.rlim_cur, raised.rlim_cur
        )
    } else {
        format!(
            "open files: soft limit {}, could not be raised",
            limit.rlim_cur
        )
    }
}

/// Available memory, from `/proc/meminfo`.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A request with the replication token.
fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {REPLICATION_TOKEN}")
            .parse()
            .expect("the token makes a header value"),
    );
    request
}

/// One WatchFlags subscriber: reports every new version it sees (the first
/// whole snapshot, then each change).
async fn watch_versions(
    channel: Channel,
    kind: Kind,
    id: usize,
    seen: mpsc::UnboundedSender<Seen>,
) {
    use pb::watch_flags_response::Event;
    let Ok(response) = FlagServiceClient::new(channel)
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
    else {
        return;
    };
    let mut stream = response.into_inner();
    let mut last = 0;
    while let Ok(Some(message)) = stream.message().await {
        let at = Instant::now();
        let version = match message.event {
            Some(Event::Snapshot(snapshot)) if snapshot.last => snapshot.version,
            Some(Event::Change(change)) => change.version,
            _ => continue,
        };
        if version > last {
            last = version;
            if seen
                .send(Seen {
                    kind,
                    id,
                    version,
                    at,
                })
                .is_err()
            {
                return;
            }
        }
    }
}

/// One lightweight follower: a Follow stream read to the end of every
/// message (each is decoded whole, as a follower's is), reporting every new
/// version (the first whole snapshot, then each change or progress marker).
async fn follow_versions(channel: Channel, id: usize, seen: mpsc::UnboundedSender<Seen>) {
    use pb::follow_response::Event;
    let request = with_token(pb::FollowRequest {
        protocol: readyd::relay::PROTOCOL,
        environments: vec!["bench".to_owned()],
        since_version: None,
        instance: format!("loadgen-{id}"),
    });
    let Ok(response) = ReplicationServiceClient::new(channel)
        .max_decoding_message_size(readyd::app::MAX_MESSAGE_BYTES)
        .follow(request)
        .await
    else {
        return;
    };
    let mut stream = response.into_inner();
    let mut last = 0;
    while let Ok(Some(message)) = stream.message().await {
        let at = Instant::now();
        let version = match message.event {
            Some(Event::Snapshot(snapshot)) if snapshot.last => snapshot.version,
            Some(Event::Change(change)) => change.version,
            Some(Event::Progress(progress)) => progress.version,
            _ => continue,
        };
        if version > last {
            last = version;
            let kind = Kind::Lightweight;
            if seen
                .send(Seen {
                    kind,
                    id,
                    version,
                    at,
                })
                .is_err()
            {
                return;
            }
        }
    }
}

/// The version of `channel`'s flag list.
async fn list_version(channel: &Channel) -> Result<i64, tonic::Status> {
    Ok(FlagServiceClient::new(channel.clone())
        .list_flags(pb::ListFlagsRequest::default())
        .await?
        .into_inner()
        .version)
}

/// Whether `channel` serves `version` (or later), not STALE.
async fn serves_fresh(channel: &Channel, version: i64) -> bool {
    if !list_version(channel)
        .await
        .is_ok_and(|served| served >= version)
    {
        return false;
    }
    FlagServiceClient::new(channel.clone())
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: WATCHED_FLAG.to_owned(),
            context: None,
        })
        .await
        .is_ok_and(|answer| answer.get_ref().reason() != pb::EvaluationReason::Stale)
}

impl Bench {
    /// `readyd serve --upstream` of `upstream`, as instance `instance`.
    fn follower_command(&self, upstream: &Server, instance: &str, data_dir: &Path) -> Command {
        // Not under taskset: it inherits this program's core.
        let mut command = Command::new(&self.readyd);
        self.readyd_settings(&mut command, instance, data_dir);
        command
            .arg("--upstream")
            .arg(format!("http://{}", upstream.addr))
            .env("READYD_REPLICATION_TOKEN", REPLICATION_TOKEN);
        command
    }

    /// Runs the relay scenario on `db` (seeded).
    pub async fn relay(&self, db: &TestDb) -> Relay {
        let plan = &self.plan.relay;
        let largest = plan.fleets.iter().copied().max().unwrap_or(0);
        let open_files =
            raise_open_files((largest / FOLLOWS_PER_CONNECTION + plan.followers * 4 + 1024) as u64);
        let (followers_wanted, followers_note) = match available_memory() {
            Some(available) if (plan.followers as u64) * MEMORY_PER_FOLLOWER > available => {
                let fit = (available / MEMORY_PER_FOLLOWER) as usize;
                let note = format!(
                    "{fit} real followers instead of {}: {} MiB available, {} MiB set aside per follower",
                    plan.followers,
                    available >> 20,
                    MEMORY_PER_FOLLOWER >> 20
                );
                (fit.max(1), Some(note))
            }
            _ => (plan.followers, None),
        };
        let dirs = tempfile::tempdir().expect("a temporary directory");

        // The upstream, pinned like every server.
        let mut command = self.pinning.server_command(&self.readyd);
        self.readyd_settings(&mut command, "upstream", &dirs.path().join("upstream"));
        command
            .arg("--database-url")
            .arg(&db.url)
            .args(["--db-pool-size", &UPSTREAM_POOL.to_string()])
            .env("READYD_REPLICATION_TOKEN", REPLICATION_TOKEN);
        let (upstream, _) = Server::spawn(command, readyd_address).await;
        wait_until_ready(&upstream).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let upstream_idle_bytes = upstream.rss_bytes();
        let mut all_sessions = vec![sessions(db, 0).await];

        // The real followers.
        let mut starting = JoinSet::new();
        let mut followers: Vec<(usize, Server)> = Vec::with_capacity(followers_wanted);
        for index in 0..followers_wanted {
            while starting.len() >= STARTING_AT_ONCE {
                if let Some(started) = starting.join_next().await {
                    followers.push(started.expect("a follower start panicked"));
                }
            }
            let command = self.follower_command(
                &upstream,
                &format!("follower-{index}"),
                &dirs.path().join(format!("follower-{index}")),
            );
            starting.spawn(async move {
                let (follower, _) = Server::spawn(command, readyd_address).await;
                wait_until_ready(&follower).await;
                (index, follower)
            });
        }
        while let Some(started) = starting.join_next().await {
            followers.push(started.expect("a follower start panicked"));
        }
        followers.sort_by_key(|(index, _)| *index);
        let mut followers: Vec<Server> = followers.into_iter().map(|(_, server)| server).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let follower_idle_bytes = resident(&followers);
        let follower_idle_kinds = followers.iter().filter_map(Server::rss_kinds).collect();
        all_sessions.push(sessions(db, followers.len()).await);

        let (tx, rx) = mpsc::unbounded_channel();
        let mut tracker = Tracker::new(rx);
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        let mut lightweight = 0;
        let mut connections = 0;
        let mut subscribed = false;
        let mut fleets = Vec::with_capacity(plan.fleets.len());
        for (i, &total) in plan.fleets.iter().enumerate() {
            // The first fleet's growth counts the real followers' streams.
            let (rss_before, added_before) = if i == 0 {
                (upstream_idle_bytes, followers.len())
            } else {
                (upstream.rss_bytes(), 0)
            };
            let target = total.saturating_sub(followers.len());
            let added = added_before + target.saturating_sub(lightweight);
            // A connection's worth at a time, each with its snapshot
            // before the next (followers do not all start at once).
            while lightweight < target {
                let batch = (target - lightweight).min(FOLLOWS_PER_CONNECTION);
                let channel = load::connect(upstream.addr, 1).await.remove(0);
                connections += 1;
                for id in lightweight..lightweight + batch {
                    tasks.push(tokio::spawn(follow_versions(
                        channel.clone(),
                        id,
                        tx.clone(),
                    )));
                }
                tracker
                    .opened(Kind::Lightweight, lightweight..lightweight + batch)
                    .await;
                lightweight += batch;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss_after = upstream.rss_bytes();
            all_sessions.push(sessions(db, followers.len() + lightweight).await);

            if !subscribed {
                subscribed = true;
                // As many subscribers on the upstream as real followers.
                let direct = followers.len().max(1);
                let channels =
                    load::connect(upstream.addr, direct.div_ceil(WATCHES_PER_CONNECTION)).await;
                for id in 0..direct {
                    let channel = channels[id % channels.len()].clone();
                    tasks.push(tokio::spawn(watch_versions(
                        channel,
                        Kind::Direct,
                        id,
                        tx.clone(),
                    )));
                }
                for (id, follower) in followers.iter().enumerate() {
                    let channel = load::connect(follower.addr, 1).await.remove(0);
                    tasks.push(tokio::spawn(watch_versions(
                        channel,
                        Kind::Subscriber,
                        id,
                        tx.clone(),
                    )));
                }
                tracker.opened(Kind::Direct, 0..direct).await;
                tracker.opened(Kind::Subscriber, 0..followers.len()).await;
            }

            let expected = [followers.len().max(1), followers.len(), lightweight];
            let mut fleet = Fleet {
                streams: followers.len() + lightweight,
                lightweight,
                connections,
                added,
                rss_before,
                rss_after,
                updates: plan.updates,
                direct: Deliveries::new(expected[0]),
                subscribers: Deliveries::new(expected[1]),
                lightweight_deliveries: Deliveries::new(expected[2]),
                every_follower: Deliveries::new(expected[1] + expected[2]),
                every_follower_after_commit_us: load::histogram(),
                whole_fleet_us: load::histogram(),
                commit_us: load::histogram(),
            };
            // One untimed update first: the first change after the
            // snapshots touches code and memory none has touched yet.
            let updates_started = Instant::now();
            let mut slowest_updates = Vec::with_capacity(plan.updates);
            for update in 0..=plan.updates {
                let sent = Instant::now();
                let version: i64 = sqlx::query_scalar(
                    "UPDATE feature_flags SET description = $1 WHERE key = $2 RETURNING version",
                )
                .bind(format!("relay-{total}-{update}"))
                .bind(WATCHED_FLAG)
                .fetch_one(&db.pool)
                .await
                .expect("update the watched flag");
                let committed = sent.elapsed();
                let times = tracker.deliveries(version, sent, expected).await;
                if update == 0 {
                    continue;
                }
                load::record(&mut fleet.commit_us, committed);
                let [direct, subscribers, light] = times;
                for (deliveries, times) in [
                    (&mut fleet.direct, &direct),
                    (&mut fleet.subscribers, &subscribers),
                    (&mut fleet.lightweight_deliveries, &light),
                ] {
                    deliveries.received += times.len() as u64;
                    for &time in times {
                        load::record(&mut deliveries.latency_us, time);
                    }
                }
                let every: Vec<Duration> = subscribers.iter().chain(&light).copied().collect();
                fleet.every_follower.received += every.len() as u64;
                for &time in &every {
                    load::record(&mut fleet.every_follower.latency_us, time);
                    load::record(
                        &mut fleet.every_follower_after_commit_us,
                        time.saturating_sub(committed),
                    );
                }
                if let Some(&slowest) = every.iter().max() {
                    load::record(&mut fleet.whole_fleet_us, slowest);
                    slowest_updates.push(SlowUpdate {
                        update,
                        at: updates_started.elapsed(),
                        committed,
                        direct: (
                            direct.iter().min().copied().unwrap_or_default(),
                            direct.iter().max().copied().unwrap_or_default(),
                        ),
                        subscribers: subscribers.iter().max().copied().unwrap_or_default(),
                        lightweight: light.iter().max().copied().unwrap_or_default(),
                        slowest,
                    });
                }
            }
            // Which updates make the tail, and whether the hop that needs
            // no follower (the upstream's own subscribers) was as slow: on
            // stderr, for finding out why.
            slowest_updates.sort_by_key(|update| std::cmp::Reverse(update.slowest));
            for slow in slowest_updates.iter().take(5) {
                eprintln!("relay {total}: {slow}");
            }
            fleets.push(fleet);
        }
        for task in tasks {
            task.abort();
        }
        drop(tracker);

        // Restarts of one follower, with the others still following.
        let mut restart_serving = Vec::with_capacity(plan.restarts);
        let mut restart_fresh = Vec::with_capacity(plan.restarts);
        if !followers.is_empty() {
            let upstream_channel = load::connect(upstream.addr, 1).await.remove(0);
            let current = list_version(&upstream_channel)
                .await
                .expect("the upstream's flag list");
            let data_dir = dirs.path().join("follower-0");
            for _ in 0..plan.restarts {
                followers.remove(0).stop().await;
                let command = self.follower_command(&upstream, "follower-0", &data_dir);
                let exec = Instant::now();
                let (follower, to_serving) = Server::spawn(command, readyd_address).await;
                let channel = load::connect(follower.addr, 1).await.remove(0);
                let deadline = Instant::now() + Duration::from_secs(30);
                while !serves_fresh(&channel, current).await {
                    assert!(
                        Instant::now() < deadline,
                        "a restarted follower does not serve version {current} after 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                restart_fresh.push(exec.elapsed());
                restart_serving.push(to_serving);
                followers.insert(0, follower);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        // Every follower by its pid (SIGTERM, then SIGKILL after 30 s).
        let mut stopping = JoinSet::new();
        for follower in followers {
            stopping.spawn(follower.stop());
        }
        while stopping.join_next().await.is_some() {}
        upstream.stop().await;

        Relay {
            followers: followers_wanted,
            followers_note,
            open_files,
            upstream_idle_bytes,
            follower_idle_bytes,
            follower_idle_kinds,
            sessions: all_sessions,
            fleets,
            restart_serving,
            restart_fresh,
        }
    }
}
