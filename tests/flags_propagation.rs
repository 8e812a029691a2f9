//! Flag changes reach every subscriber: across two servers on one database,
//! from plain SQL, a thousand in a row, through a killed listener connection
//! and through a database outage.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::api::pb::readyd::v1::watch_flags_response::Event;
use readyd::api::pb::readyd::v1::{
    EvaluateFlagRequest, EvaluationReason, Flag, UpsertFlagRequest, WatchFlagsRequest,
    WatchFlagsResponse, flag_change,
};
use support::proxy::{Target, TcpProxy};
use support::{TestDb, TestServer, admin, admin_serve_args, next};
use tonic::Streaming;
use tonic::transport::Channel;

/// What a WatchFlags subscriber knows, built only from its stream.
#[derive(Debug, Default)]
struct Watched {
    flags: BTreeMap<String, Flag>,
    /// Version of every message, in order.
    versions: Vec<i64>,
    /// Snapshot parts being received.
    pending: Option<BTreeMap<String, Flag>>,
    snapshots: usize,
}

impl Watched {
    fn apply(&mut self, message: WatchFlagsResponse) {
        match message.event.expect("every message has an event") {
            Event::Snapshot(part) => {
                if part.first {
                    self.pending = Some(BTreeMap::new());
                }
                let pending = self.pending.as_mut().expect("a part after a first part");
                pending.extend(part.flags.into_iter().map(|f| (f.key.clone(), f)));
                if part.last {
                    self.flags = self.pending.take().unwrap_or_default();
                    self.versions.push(part.version);
                    self.snapshots += 1;
                }
            }
            Event::Freshness(freshness) => {
                panic!("freshness {freshness:?} though not asked for")
            }
            Event::Change(change) => {
                self.versions.push(change.version);
                match change.change.expect("a change") {
                    flag_change::Change::Upserted(flag) => {
                        self.flags.insert(flag.key.clone(), flag);
                    }
                    flag_change::Change::DeletedKey(key) => {
                        self.flags.remove(&key);
                    }
                    // No segments in these tests.
                    flag_change::Change::SegmentUpserted(_)
                    | flag_change::Change::SegmentDeletedKey(_) => {}
                }
            }
        }
    }

    fn version(&self) -> i64 {
        self.versions.last().copied().unwrap_or(0)
    }

    /// Reads messages until the subscriber is at `version` or later.
    async fn catch_up(&mut self, stream: &mut Streaming<WatchFlagsResponse>, version: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.version() < version || self.pending.is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck at {}",
                self.version()
            );
            let message = next(stream).await.expect("stream open");
            self.apply(message);
        }
    }

    fn assert_versions_strictly_increase(&self) {
        for pair in self.versions.windows(2) {
            assert!(
                pair[0] < pair[1],
                "versions not increasing: {:?}",
                self.versions
            );
        }
    }
}

async fn watch(channel: Channel) -> (Streaming<WatchFlagsResponse>, Watched) {
    let mut client = FlagServiceClient::new(channel);
    let mut stream = client
        .watch_flags(WatchFlagsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let mut watched = Watched::default();
    watched.apply(next(&mut stream).await.expect("snapshot"));
    assert_eq!(
        watched.snapshots, 1,
        "the first message is a whole snapshot"
    );
    (stream, watched)
}

/// Every flag as the table holds it: key → (version, enabled, rollout).
async fn table(db: &TestDb) -> BTreeMap<String, (i64, bool, u32)> {
    let rows: Vec<(String, i64, bool, i32)> =
        sqlx::query_as("SELECT key, version, enabled, rollout_percentage FROM feature_flags")
            .fetch_all(&db.pool)
            .await
            .expect("flags");
    rows.into_iter()
        .map(|(k, v, e, r)| (k, (v, e, r as u32)))
        .collect()
}

fn as_table(watched: &Watched) -> BTreeMap<String, (i64, bool, u32)> {
    watched
        .flags
        .values()
        .map(|f| (f.key.clone(), (f.version, f.enabled, f.rollout_percentage)))
        .collect()
}

async fn max_version(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT last_value FROM readyd_change_version")
        .fetch_one(&db.pool)
        .await
        .expect("version")
}

async fn sql(db: &TestDb, statement: &'static str) {
    sqlx::query(statement)
        .execute(&db.pool)
        .await
        .expect(statement);
}

#[tokio::test]
async fn a_change_through_one_server_reaches_a_watcher_of_another() {
    let db = TestDb::new().await;
    let a = TestServer::start(admin_serve_args(&db.url)).await;
    let b = TestServer::start(admin_serve_args(&db.url)).await;
    let (mut stream, mut watched) = watch(b.channel().await).await;

    let mut client = FlagServiceClient::new(a.channel().await);
    let upserted = client
        .upsert_flag(admin(UpsertFlagRequest {
            key: "checkout.v2".into(),
            enabled: Some(true),
            rollout_percentage: Some(25),
            ..Default::default()
        }))
        .await
        .expect("upsert on A")
        .into_inner()
        .flag
        .expect("flag");
    watched.catch_up(&mut stream, upserted.version).await;
    assert_eq!(watched.flags.get("checkout.v2"), Some(&upserted));
    watched.assert_versions_strictly_increase();
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_plain_sql_update_reaches_both_servers() {
    let db = TestDb::new().await;
    let a = TestServer::start(admin_serve_args(&db.url)).await;
    let b = TestServer::start(admin_serve_args(&db.url)).await;
    let (mut stream_a, mut watched_a) = watch(a.channel().await).await;
    let (mut stream_b, mut watched_b) = watch(b.channel().await).await;

    sql(
        &db,
        "UPDATE feature_flags SET enabled = true WHERE key = 'dark_mode'",
    )
    .await;
    let version = max_version(&db).await;
    watched_a.catch_up(&mut stream_a, version).await;
    watched_b.catch_up(&mut stream_b, version).await;
    assert!(watched_a.flags["dark_mode"].enabled);
    assert!(watched_b.flags["dark_mode"].enabled);
    assert_eq!(as_table(&watched_a), table(&db).await);

    // Evaluation on both servers sees it too.
    for server in [&a, &b] {
        let mut client = FlagServiceClient::new(server.channel().await);
        let answer = client
            .evaluate_flag(EvaluateFlagRequest {
                explain: false,
                key: "dark_mode".into(),
                context: None,
            })
            .await
            .expect("evaluate")
            .into_inner();
        assert_eq!(answer.variant, "on");
        assert_eq!(answer.reason(), EvaluationReason::Static);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_thousand_sequential_writes_arrive_complete_in_order_and_once() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let (mut stream, mut watched) = watch(server.channel().await).await;
    let start = watched.version();

    let keys = ["ai_insights", "dark_mode", "beta_features"];
    for i in 0..1000 {
        sqlx::query("UPDATE feature_flags SET rollout_percentage = $1 WHERE key = $2")
            .bind(i % 101)
            .bind(keys[i as usize % keys.len()])
            .execute(&db.pool)
            .await
            .expect("update");
    }
    let end = max_version(&db).await;
    assert_eq!(end - start, 1000, "one version per write");
    watched.catch_up(&mut stream, end).await;
    assert_eq!(watched.snapshots, 1, "no resync was needed");
    assert_eq!(
        watched.versions.len(),
        1001,
        "the snapshot and one change per write"
    );
    assert_eq!(
        watched.versions[1..],
        (start + 1..=end).collect::<Vec<_>>()[..]
    );
    assert_eq!(as_table(&watched), table(&db).await);
    server.stop().await;
}

#[tokio::test]
async fn a_killed_listener_connection_is_replaced_and_nothing_is_missed() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let (mut stream, mut watched) = watch(server.channel().await).await;

    // A third of the writes, the kill, then the rest: the kill always lands
    // between writes, whatever the machine's speed.
    let (halfway_tx, halfway) = tokio::sync::oneshot::channel::<()>();
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut halfway_tx = Some(halfway_tx);
            let mut killed_rx = Some(killed_rx);
            for i in 0..300 {
                if i == 100
                    && let (Some(tx), Some(rx)) = (halfway_tx.take(), killed_rx.take())
                {
                    let _ = tx.send(());
                    let _ = rx.await;
                }
                sqlx::query("UPDATE feature_flags SET rollout_percentage = $1 WHERE key = $2")
                    .bind(i % 101)
                    .bind(if i % 2 == 0 {
                        "ai_insights"
                    } else {
                        "dark_mode"
                    })
                    .execute(&pool)
                    .await
                    .expect("update");
            }
        })
    };
    // Kill readyd's LISTEN connection while the writes go on.
    halfway.await.expect("the writer reached a third");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("terminate");
    assert_eq!(killed, [true], "exactly one listener connection");
    let _ = killed_tx.send(());
    writer.await.expect("writer");

    let end = max_version(&db).await;
    watched.catch_up(&mut stream, end).await;
    assert_eq!(as_table(&watched), table(&db).await);
    watched.assert_versions_strictly_increase();
    server.stop().await;
}

#[tokio::test]
async fn evaluation_survives_a_database_outage_and_changes_made_during_it_arrive_after() {
    let db = TestDb::new().await;
    let proxy = TcpProxy::start(Target::of_url(&db.url)).await;
    let server = TestServer::start(admin_serve_args(&db.proxied_url(&proxy))).await;
    let channel = server.channel().await;
    let (mut stream, mut watched) = watch(channel.clone()).await;
    let mut client = FlagServiceClient::new(channel);
    let evaluate = EvaluateFlagRequest {
        explain: false,
        key: "ai_insights".into(),
        context: None,
    };
    let before = client
        .evaluate_flag(evaluate.clone())
        .await
        .expect("evaluate")
        .into_inner();

    proxy.cut();
    // Reads keep answering from memory, the same answer as before.
    for _ in 0..20 {
        let during = client
            .evaluate_flag(evaluate.clone())
            .await
            .expect("evaluate while cut");
        assert_eq!(during.into_inner(), before);
    }
    // Writes need the database.
    let refused = client
        .upsert_flag(admin(UpsertFlagRequest {
            key: "new_flag".into(),
            ..Default::default()
        }))
        .await
        .expect_err("no database");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // Someone changes a flag while readyd cannot see the database.
    sql(
        &db,
        "UPDATE feature_flags SET enabled = true WHERE key = 'ai_insights'",
    )
    .await;

    proxy.heal();
    let version = max_version(&db).await;
    watched.catch_up(&mut stream, version).await;
    assert!(
        watched.flags["ai_insights"].enabled,
        "the change made during the outage arrived"
    );
    assert_eq!(as_table(&watched), table(&db).await);
    let after = client
        .evaluate_flag(evaluate)
        .await
        .expect("evaluate")
        .into_inner();
    assert_eq!(after.variant, "on");
    assert!(
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let table_has_it: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM feature_flags WHERE key = 'new_flag'")
                        .fetch_one(&db.pool)
                        .await
                        .expect("count");
                assert_eq!(table_has_it, 0, "the refused write changed nothing");
                if client
                    .upsert_flag(admin(UpsertFlagRequest {
                        key: "new_flag".into(),
                        ..Default::default()
                    }))
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .is_ok(),
        "writes work again after the outage"
    );
    server.stop().await;
}

/// Any role that can connect may NOTIFY: a forged notification (what the
/// listener once trusted: a payload naming a row and carrying it, with the
/// version the next real write will take) changes nothing, anywhere, and
/// the real write that follows still arrives.
#[tokio::test]
async fn a_forged_notification_changes_nothing() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let channel = server.channel().await;
    let (mut stream, mut watched) = watch(channel.clone()).await;
    assert!(!watched.flags["dark_mode"].enabled);

    let next_version: i64 = sqlx::query_scalar("SELECT last_value + 1 FROM readyd_change_version")
        .fetch_one(&db.pool)
        .await
        .expect("next version");
    for forged in [
        "SELECT pg_notify('readyd_changes', jsonb_build_object('table', 'feature_flags', \
           'key', 'dark_mode', 'version', $1::bigint, 'op', 'update', \
           'row', to_jsonb(f) || jsonb_build_object('enabled', true, 'version', $1::bigint))::text) \
           FROM feature_flags f WHERE key = 'dark_mode'",
        "SELECT pg_notify('readyd_changes', jsonb_build_object('table', 'app_config', \
           'key', 'maintenance_mode', 'environment', '*', 'version', $1::bigint + 1, 'op', 'update', \
           'row', to_jsonb(c) || jsonb_build_object('value', true, 'version', $1::bigint + 1))::text) \
           FROM app_config c WHERE key = 'maintenance_mode' AND environment = '*'",
        "SELECT pg_notify('readyd_changes', 'not json at all') WHERE $1::bigint > 0",
    ] {
        sqlx::query(forged)
            .bind(next_version)
            .execute(&db.pool)
            .await
            .expect("forge a notification");
    }
    // A real change after the forgeries, to wait on: it takes the version
    // the forged flag claimed.
    let real: i64 = sqlx::query_scalar(
        "UPDATE feature_flags SET rollout_percentage = 42 WHERE key = 'beta_features' RETURNING version",
    )
    .fetch_one(&db.pool)
    .await
    .expect("a real write");
    assert_eq!(
        real, next_version,
        "no other write took a version meanwhile"
    );
    watched.catch_up(&mut stream, real).await;

    assert_eq!(
        watched.flags["beta_features"].rollout_percentage, 42,
        "the real change arrived"
    );
    assert!(
        !watched.flags["dark_mode"].enabled,
        "the forged flag change did not"
    );
    assert_eq!(as_table(&watched), table(&db).await);
    let answer = FlagServiceClient::new(channel.clone())
        .evaluate_flag(EvaluateFlagRequest {
            explain: false,
            key: "dark_mode".into(),
            context: None,
        })
        .await
        .expect("evaluate")
        .into_inner();
    assert_eq!(answer.variant, "off");
    let maintenance =
        readyd::api::pb::readyd::v1::config_service_client::ConfigServiceClient::new(channel)
            .get_maintenance_mode(readyd::api::pb::readyd::v1::GetMaintenanceModeRequest {})
            .await
            .expect("maintenance")
            .into_inner();
    assert!(
        !maintenance.enabled,
        "the forged maintenance mode did not arrive"
    );
    server.stop().await;
}

/// A stream that asks for it is told when answers turn stale (the database
/// is cut off for longer than --stale-after) and when they are current
/// again; one that does not ask never sees such a message.
#[tokio::test]
async fn a_watch_stream_that_asks_is_told_when_answers_turn_stale_and_current_again() {
    let db = TestDb::new().await;
    let proxy = TcpProxy::start(Target::of_url(&db.url)).await;
    let mut args = admin_serve_args(&db.proxied_url(&proxy));
    args.stale_after = "1s".into();
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    let mut told = FlagServiceClient::new(channel.clone())
        .watch_flags(WatchFlagsRequest {
            with_freshness: true,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let (mut untold, _) = watch(channel).await;
    assert!(matches!(
        next(&mut told).await.expect("snapshot").event,
        Some(Event::Snapshot(_))
    ));

    proxy.cut();
    let stale = match next(&mut told).await.expect("open").event {
        Some(Event::Freshness(freshness)) => freshness,
        other => panic!("a freshness message, not {other:?}"),
    };
    assert!(stale.stale, "{stale:?}");
    assert!(stale.stale_for.is_some(), "{stale:?}");

    proxy.heal();
    // Back: current again (a resync may come first).
    loop {
        match next(&mut told).await.expect("open").event {
            Some(Event::Freshness(freshness)) => {
                assert!(!freshness.stale, "{freshness:?}");
                assert_eq!(freshness.stale_for, None);
                break;
            }
            Some(Event::Snapshot(_) | Event::Change(_)) => {}
            None => panic!("a message without an event"),
        }
    }
    // The other stream stayed quiet about it (a snapshot after the resync
    // at most).
    let quiet = tokio::time::timeout(Duration::from_millis(300), next(&mut untold)).await;
    if let Ok(Some(message)) = quiet {
        assert!(
            !matches!(message.event, Some(Event::Freshness(_))),
            "{message:?}"
        );
    }
    server.stop().await;
}
