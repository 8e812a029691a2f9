//! Bounded database waits: a session that holds the change lock (someone's
//! `psql` left in a transaction after changing a flag) makes readyd's writes
//! fail with UNAVAILABLE after `--db-lock-timeout` instead of waiting
//! forever with a pool connection, and everything works again once that
//! session ends.

mod support;

use std::time::Duration;

use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::config_service_client::ConfigServiceClient;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::store::{CHANGE_LOCK_KEY, DbTimeouts, Store};
use sqlx::{Connection, PgConnection};
use support::{TestDb, TestServer, admin, admin_serve_args};
use tonic::Code;

/// Far longer than any bound readyd sets: a call still waiting by then
/// waits unbounded.
const HANG: Duration = Duration::from_secs(60);

fn upsert(key: &str, description: &str) -> pb::UpsertFlagRequest {
    pb::UpsertFlagRequest {
        key: key.into(),
        description: description.into(),
        enabled: Some(true),
        ..Default::default()
    }
}

/// A session left idle in a transaction after an `UPDATE feature_flags`:
/// it holds the change lock and the row's lock until it ends.
async fn idle_in_transaction_after_an_update(url: &str) -> PgConnection {
    let mut blocker = PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql("BEGIN; UPDATE feature_flags SET description = 'held' WHERE key = 'dark_mode'")
        .execute(&mut blocker)
        .await
        .expect("begin and update");
    blocker
}

#[tokio::test]
async fn a_write_blocked_by_an_idle_transaction_fails_unavailable_and_works_after_it_ends() {
    let db = TestDb::new().await;
    let mut args = admin_serve_args(&db.url);
    args.database.db_lock_timeout = "1s".into();
    let server = TestServer::start(args).await;
    let mut flags = FlagServiceClient::new(server.channel().await);
    let mut config = ConfigServiceClient::new(server.channel().await);

    let mut blocker = idle_in_transaction_after_an_update(&db.url).await;
    // More writes than the pool has connections: none may keep one.
    for i in 0..6 {
        let refused = tokio::time::timeout(
            HANG,
            flags.upsert_flag(admin(upsert(&format!("blocked.{i}"), ""))),
        )
        .await
        .expect("the write gives up within its lock timeout")
        .expect_err("the change lock is held");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("did not answer in time"),
            "{refused:?}"
        );
    }
    let refused = tokio::time::timeout(
        HANG,
        config.set_config(admin(pb::SetConfigRequest {
            key: "max_upload_mb".into(),
            value: Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(30.0)),
            }),
            ..Default::default()
        })),
    )
    .await
    .expect("the config write gives up within its lock timeout")
    .expect_err("the change lock is held");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Nothing of the refused writes reached the database.
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feature_flags WHERE key LIKE 'blocked.%'")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(written, 0);

    // The session commits: its change arrives, and writes work again.
    sqlx::raw_sql("COMMIT")
        .execute(&mut blocker)
        .await
        .expect("commit");
    let written = tokio::time::timeout(HANG, flags.upsert_flag(admin(upsert("after.it", "ok"))))
        .await
        .expect("answers")
        .expect("the write succeeds once the lock is free")
        .into_inner();
    assert_eq!(written.flag.expect("flag").description, "ok");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let flag = flags
            .get_flag(pb::GetFlagRequest {
                key: "dark_mode".into(),
            })
            .await
            .expect("get")
            .into_inner()
            .flag
            .expect("flag");
        if flag.description == "held" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the blocking session's change never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_start_while_the_change_lock_is_held_waits_for_it_in_bounded_steps() {
    let db = TestDb::new().await;
    let mut holder = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(CHANGE_LOCK_KEY)
        .execute(&mut holder)
        .await
        .expect("take the change lock");
    let mut args = admin_serve_args(&db.url);
    args.database.db_lock_timeout = "200ms".into();
    args.database.db_wait = "60s".into();
    let start = tokio::spawn(TestServer::start(args));

    // readyd's load waits for the lock, gives up after its lock timeout and
    // tries again: a waiting session of readyd's appears, goes, and comes
    // back under another process id or with a later query start.
    let waiting = "SELECT query_start FROM pg_stat_activity \
                   WHERE datname = current_database() AND application_name = 'readyd' \
                     AND wait_event_type = 'Lock'";
    let mut starts = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while starts.len() < 2 {
        let seen: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(waiting)
            .fetch_all(&db.pool)
            .await
            .expect("activity");
        starts.extend(seen);
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyd never retried its load: {starts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !start.is_finished(),
        "readyd cannot load while the lock is held"
    );

    holder.close().await.expect("release the lock");
    let server = tokio::time::timeout(HANG, start)
        .await
        .expect("starts once the lock is free")
        .expect("start task");
    let flags = FlagServiceClient::new(server.channel().await)
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(!flags.flags.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn every_session_of_readyd_carries_the_bounds() {
    let db = TestDb::new().await;
    let options: sqlx::postgres::PgConnectOptions = db.url.parse().expect("url");
    let store = Store::lazy(
        options,
        2,
        DbTimeouts {
            statement: Duration::from_millis(4500),
            lock: Duration::from_millis(1500),
        },
    );
    let settings: (String, String, String, Option<String>) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), \
                current_setting('idle_in_transaction_session_timeout'), \
                current_setting('jit', true)",
    )
    .fetch_one(store.pool())
    .await
    .expect("settings");
    assert_eq!(
        settings,
        (
            "4500ms".to_owned(),
            "1500ms".to_owned(),
            "4500ms".to_owned(),
            // JIT compilation off (the server's default is on).
            Some("off".to_owned())
        )
    );
    // A statement that runs longer is cancelled, and says so.
    let err = sqlx::query("SELECT pg_sleep(10)")
        .execute(store.pool())
        .await
        .expect_err("cancelled");
    let err = readyd::store::StoreError::from(err);
    assert!(
        matches!(err, readyd::store::StoreError::TimedOut(_)),
        "{err:?}"
    );
    store.close().await;
}
