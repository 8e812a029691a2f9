//! The last-known-good snapshot on disk: a running readyd saves it at
//! start, after changes (at once after a quiet spell, bursts coalesced) and
//! at shutdown, for its environment.

mod support;

use std::path::Path;
use std::time::Duration;

use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::snapshot_file::{DEBOUNCE, SavedSnapshot, path_for, read};
use support::daemon::DaemonCommand;
use support::{ADMIN_TOKEN, TestDb, TestServer, admin, serve_args};

/// Polls the saved snapshot until `done` holds, failing after 20 s.
async fn saved_until(
    path: &Path,
    what: &str,
    done: impl Fn(&SavedSnapshot) -> bool,
) -> SavedSnapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(saved) = read(path, "test")
            && done(&saved)
        {
            return saved;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not saved in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_running_readyd_keeps_its_snapshot_saved() {
    let db = TestDb::new().await;
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut args = serve_args(&db.url);
    args.database.data_dir = data_dir.path().to_owned();
    let server = TestServer::start(args).await;
    let path = path_for(data_dir.path(), "test");

    let at_start = saved_until(&path, "at start", |_| true).await;
    let flags_at_start = db.count("feature_flags").await as usize;
    assert_eq!(at_start.snapshot.flags.len(), flags_at_start);
    assert_eq!(
        at_start.snapshot.configs.len(),
        db.count("app_config").await as usize
    );

    // A burst of changes ends up saved, whole.
    for i in 0..20 {
        sqlx::query("INSERT INTO feature_flags (key, enabled) VALUES ($1, true)")
            .bind(format!("burst_{i}"))
            .execute(&db.pool)
            .await
            .expect("insert");
    }
    let newest: i64 = sqlx::query_scalar("SELECT max(version) FROM feature_flags")
        .fetch_one(&db.pool)
        .await
        .expect("version");
    let after_burst = saved_until(&path, "after the burst", |saved| {
        saved.snapshot.version >= newest
    })
    .await;
    assert_eq!(after_burst.snapshot.flags.len(), flags_at_start + 20);
    assert!(after_burst.snapshot.flag("burst_19").is_some());
    // Only this environment's file is there; nothing half-written is left.
    let names: Vec<String> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("list")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["test.snapshot"]);

    // A change just before shutdown is saved by the last write.
    sqlx::query("UPDATE feature_flags SET enabled = false WHERE key = 'burst_0'")
        .execute(&db.pool)
        .await
        .expect("update");
    let last: i64 = sqlx::query_scalar("SELECT version FROM feature_flags WHERE key = 'burst_0'")
        .fetch_one(&db.pool)
        .await
        .expect("version");
    // Wait until the server has the change in memory, then stop at once.
    let mut attempts = 0;
    while attempts < 200 {
        let channel = server.channel().await;
        let flag =
            readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient::new(channel)
                .get_flag(readyd::api::pb::readyd::v1::GetFlagRequest {
                    key: "burst_0".into(),
                })
                .await
                .expect("get")
                .into_inner();
        if flag.flag.is_some_and(|flag| !flag.enabled) {
            break;
        }
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server.stop().await;
    let at_stop = read(&path, "test").expect("saved at shutdown");
    assert!(at_stop.snapshot.version >= last);
    assert!(
        at_stop
            .snapshot
            .flag("burst_0")
            .is_some_and(|flag| !flag.flag().enabled)
    );
}

/// `readyd serve` as a child process on `database_url`, keeping its
/// snapshot in `data_dir`.
fn daemon(database_url: &str, data_dir: &Path) -> DaemonCommand {
    DaemonCommand::serve()
        .env("DATABASE_URL", database_url)
        .env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg_path("--data-dir", data_dir)
        .args(["--environment", "test"])
}

#[tokio::test]
async fn a_flag_written_just_before_a_crash_is_served_after_a_restart_without_the_database() {
    let db = TestDb::new().await;
    let data_dir = tempfile::tempdir().expect("temp dir");
    let path = path_for(data_dir.path(), "test");
    let running = daemon(&db.url, data_dir.path()).start().await;
    saved_until(&path, "at start", |_| true).await;

    let written = FlagServiceClient::new(running.channel().await)
        .upsert_flag(admin(pb::UpsertFlagRequest {
            key: "last.words".into(),
            enabled: Some(true),
            ..Default::default()
        }))
        .await
        .expect("upsert")
        .into_inner()
        .flag
        .expect("the flag");
    // An isolated change is saved on its leading edge: give the file a
    // moment to change (well under the coalescing time, which a debounced
    // save would wait out first), then crash whatever the file holds.
    let deadline = tokio::time::Instant::now() + DEBOUNCE * 3 / 4;
    while tokio::time::Instant::now() < deadline
        && !read(&path, "test").is_ok_and(|saved| saved.snapshot.version >= written.version)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.kill().await;

    // Started again with the database out of reach: the saved snapshot is
    // served, last write included.
    let restarted = daemon("postgres://postgres@127.0.0.1:1/readyd", data_dir.path())
        .args(["--db-wait", "200ms"])
        .start()
        .await;
    let answer = FlagServiceClient::new(restarted.channel().await)
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: "last.words".into(),
            context: None,
        })
        .await
        .expect("the flag written before the crash is served")
        .into_inner();
    assert_eq!(answer.variant, "on");
    assert_eq!(answer.reason(), pb::EvaluationReason::Stale);
    assert_eq!(answer.flag_version, written.version);
    restarted.stop().await;
}
