//! The change feed and the configuration audit, driven by plain SQL: every
//! insert, update and delete on `app_config` and `feature_flags` takes a new
//! version and is announced at commit (and only then): logged in
//! `readyd_change_log` and woken up on `readyd_changes` with an empty
//! payload (a notification carries nothing a listener trusts). Renames and
//! TRUNCATE are announced too, and every change to `app_config` leaves
//! exactly one `config_audit` row in the same transaction, with the acting
//! user and with sensitive values only as fingerprints.

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use support::TestDb;

const CHANNEL: &str = "readyd_changes";

/// One announced change: an entry of `readyd_change_log`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Change {
    #[sqlx(rename = "table_name")]
    table: String,
    key: Option<String>,
    environment: Option<String>,
    version: i64,
    op: String,
}

impl Change {
    /// The announcement's identity without its version.
    fn what(&self) -> (&str, Option<&str>, Option<&str>, &str) {
        (
            &self.table,
            self.key.as_deref(),
            self.environment.as_deref(),
            &self.op,
        )
    }
}

/// The change feed of one database as a listener sees it: wake-ups on the
/// channel, and the log entries read after each.
struct Feed {
    listener: PgListener,
    pool: PgPool,
    /// Entries read, not yet taken.
    queued: VecDeque<Change>,
    /// The newest version read from the log.
    last: i64,
}

/// A listener on the change channel of `db`, from the newest logged change.
async fn listen(db: &TestDb) -> Feed {
    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener.listen(CHANNEL).await.expect("LISTEN");
    let last = sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM readyd_change_log")
        .fetch_one(&db.pool)
        .await
        .expect("newest logged version");
    Feed {
        listener,
        pool: db.pool.clone(),
        queued: VecDeque::new(),
        last,
    }
}

/// Log entries after `feed.last`, queued.
async fn read_log(feed: &mut Feed) {
    let changes: Vec<Change> = sqlx::query_as(
        "SELECT table_name, key, environment, version, op FROM readyd_change_log \
          WHERE version > $1 ORDER BY version",
    )
    .bind(feed.last)
    .fetch_all(&feed.pool)
    .await
    .expect("read the change log");
    if let Some(newest) = changes.last() {
        feed.last = newest.version;
    }
    feed.queued.extend(changes);
}

/// The next wake-up, failing the test after 5 s. Its payload is empty.
async fn wake_up(feed: &mut Feed) {
    let notification = tokio::time::timeout(Duration::from_secs(5), feed.listener.recv())
        .await
        .expect("no notification within 5 s")
        .expect("recv");
    assert_eq!(notification.channel(), CHANNEL);
    assert_eq!(notification.payload(), "", "a wake-up carries nothing");
}

/// The next announced change: woken up, then read from the log.
async fn next_change(feed: &mut Feed) -> Change {
    loop {
        if let Some(change) = feed.queued.pop_front() {
            return change;
        }
        wake_up(feed).await;
        read_log(feed).await;
    }
}

/// Asserts nothing is announced within `wait`: no new entry in the log. (A
/// wake-up of a transaction whose entries were already read brings none.)
async fn expect_silence(feed: &mut Feed, wait: Duration) {
    let until = tokio::time::Instant::now() + wait;
    loop {
        read_log(feed).await;
        assert!(
            feed.queued.is_empty(),
            "unexpected changes: {:?}",
            feed.queued
        );
        match tokio::time::timeout_at(until, feed.listener.recv()).await {
            Ok(received) => {
                let notification = received.expect("recv");
                assert_eq!(notification.payload(), "", "a wake-up carries nothing");
            }
            Err(_) => break,
        }
    }
    read_log(feed).await;
    assert!(
        feed.queued.is_empty(),
        "unexpected changes: {:?}",
        feed.queued
    );
}

/// The highest version stored in either table.
async fn max_version(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT greatest((SELECT max(version) FROM app_config),
                         (SELECT max(version) FROM feature_flags))",
    )
    .fetch_one(pool)
    .await
    .expect("max version")
}

async fn config_version(pool: &PgPool, key: &str, environment: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT version FROM app_config WHERE key = $1 AND environment = $2")
        .bind(key)
        .bind(environment)
        .fetch_optional(pool)
        .await
        .expect("config version")
}

async fn flag_version(pool: &PgPool, key: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT version FROM feature_flags WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
        .expect("flag version")
}

async fn exec(pool: &PgPool, sql: &'static str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

async fn session_user(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT session_user::text")
        .fetch_one(pool)
        .await
        .expect("session_user")
}

/// One `config_audit` row: action, key, environment, old, new, actor, version.
type Audit = (
    String,
    String,
    String,
    Option<Value>,
    Option<Value>,
    String,
    i64,
);

async fn audit_after(pool: &PgPool, id: i64) -> Vec<Audit> {
    sqlx::query_as(
        "SELECT action, key, environment, old_value, new_value, actor, version
           FROM config_audit WHERE id > $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("config_audit")
}

async fn last_audit_id(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM config_audit")
        .fetch_one(pool)
        .await
        .expect("audit id")
}

#[tokio::test]
async fn plain_sql_writes_bump_the_version_and_are_announced_in_order() {
    let db = TestDb::new().await;
    let mut listener = listen(&db).await;
    let mut seen = max_version(&db.pool).await;
    assert!(seen > 0);

    exec(
        &db.pool,
        "INSERT INTO app_config (key, environment, value) VALUES ('feed_key', 'prod', '1')",
    )
    .await;
    let inserted = config_version(&db.pool, "feed_key", "prod").await.unwrap();
    assert!(inserted > seen, "{inserted} <= {seen}");
    seen = inserted;
    exec(
        &db.pool,
        "UPDATE app_config SET value = '2' WHERE key = 'feed_key' AND environment = 'prod'",
    )
    .await;
    let updated = config_version(&db.pool, "feed_key", "prod").await.unwrap();
    assert!(updated > seen, "{updated} <= {seen}");
    seen = updated;
    exec(
        &db.pool,
        "DELETE FROM app_config WHERE key = 'feed_key' AND environment = 'prod'",
    )
    .await;
    assert_eq!(config_version(&db.pool, "feed_key", "prod").await, None);

    exec(
        &db.pool,
        "INSERT INTO feature_flags (key) VALUES ('feed_flag')",
    )
    .await;
    let flag_inserted = flag_version(&db.pool, "feed_flag").await.unwrap();
    assert!(flag_inserted > seen, "{flag_inserted} <= {seen}");
    seen = flag_inserted;
    exec(
        &db.pool,
        "UPDATE feature_flags SET enabled = true WHERE key = 'feed_flag'",
    )
    .await;
    let flag_updated = flag_version(&db.pool, "feed_flag").await.unwrap();
    assert!(flag_updated > seen, "{flag_updated} <= {seen}");
    exec(
        &db.pool,
        "DELETE FROM feature_flags WHERE key = 'feed_flag'",
    )
    .await;

    let expected = [
        ("app_config", Some("prod"), "insert", Some(inserted)),
        ("app_config", Some("prod"), "update", Some(updated)),
        ("app_config", Some("prod"), "delete", None),
        ("feature_flags", None, "insert", Some(flag_inserted)),
        ("feature_flags", None, "update", Some(flag_updated)),
        ("feature_flags", None, "delete", None),
    ];
    let mut last = 0;
    for (table, environment, op, version) in expected {
        let change = next_change(&mut listener).await;
        let key = if table == "app_config" {
            "feed_key"
        } else {
            "feed_flag"
        };
        assert_eq!(change.what(), (table, Some(key), environment, op));
        match version {
            Some(version) => assert_eq!(change.version, version, "{change:?}"),
            None => assert!(change.version > last, "{change:?} after {last}"),
        }
        assert!(change.version > last, "{change:?} after {last}");
        last = change.version;
    }
    expect_silence(&mut listener, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_change_is_announced_at_commit_and_never_if_rolled_back() {
    let db = TestDb::new().await;
    let mut listener = listen(&db).await;

    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO app_config (key, value) VALUES ('pending_key', '\"x\"')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    sqlx::query("UPDATE feature_flags SET enabled = true WHERE key = 'dark_mode'")
        .execute(&mut *tx)
        .await
        .expect("update");
    expect_silence(&mut listener, Duration::from_millis(500)).await;
    tx.commit().await.expect("commit");
    let first = next_change(&mut listener).await;
    assert_eq!(
        first.what(),
        ("app_config", Some("pending_key"), Some("*"), "insert")
    );
    let second = next_change(&mut listener).await;
    assert_eq!(
        second.what(),
        ("feature_flags", Some("dark_mode"), None, "update")
    );
    assert!(second.version > first.version);

    let audit_before = last_audit_id(&db.pool).await;
    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO app_config (key, value) VALUES ('doomed_key', '1')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    sqlx::query("DELETE FROM feature_flags WHERE key = 'beta_features'")
        .execute(&mut *tx)
        .await
        .expect("delete");
    sqlx::query("TRUNCATE app_config")
        .execute(&mut *tx)
        .await
        .expect("truncate");
    tx.rollback().await.expect("rollback");
    // A committed marker: whatever comes before it was leaked by the rollback.
    exec(
        &db.pool,
        "UPDATE app_config SET value = '\"marker\"' WHERE key = 'app_name'",
    )
    .await;
    let marker = next_change(&mut listener).await;
    assert_eq!(
        marker.what(),
        ("app_config", Some("app_name"), Some("*"), "update")
    );
    assert_eq!(db.count("app_config").await, 8);
    assert_eq!(db.count("feature_flags").await, 5);
    let audit = audit_after(&db.pool, audit_before).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        (audit[0].0.as_str(), audit[0].1.as_str()),
        ("update", "app_name")
    );
}

#[tokio::test]
async fn a_writer_waits_for_an_open_change_so_versions_follow_commit_order() {
    let db = TestDb::new().await;
    let mut listener = listen(&db).await;
    let mut early = db.pool.begin().await.expect("begin");
    sqlx::query("UPDATE app_config SET value = '\"debug\"' WHERE key = 'log_level'")
        .execute(&mut *early)
        .await
        .expect("first update");
    // A second writer, on another table, while the first is open.
    let pool = db.pool.clone();
    let mut late = tokio::spawn(async move {
        sqlx::query("UPDATE feature_flags SET enabled = true WHERE key = 'ai_insights'")
            .execute(&pool)
            .await
            .expect("second update");
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(400), &mut late)
            .await
            .is_err(),
        "the second writer did not wait for the open change"
    );
    expect_silence(&mut listener, Duration::from_millis(100)).await;
    early.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_secs(5), late)
        .await
        .expect("the second writer finishes after the commit")
        .expect("second writer task");
    let first = next_change(&mut listener).await;
    let second = next_change(&mut listener).await;
    assert_eq!(
        first.what(),
        ("app_config", Some("log_level"), Some("*"), "update")
    );
    assert_eq!(
        second.what(),
        ("feature_flags", Some("ai_insights"), None, "update")
    );
    assert!(second.version > first.version, "{first:?} then {second:?}");
    assert_eq!(
        Some(second.version),
        flag_version(&db.pool, "ai_insights").await
    );
}

#[tokio::test]
async fn renaming_a_key_announces_a_delete_of_the_old_key_and_an_insert_of_the_new() {
    let db = TestDb::new().await;
    let mut listener = listen(&db).await;
    let old_version = config_version(&db.pool, "log_level", "*").await.unwrap();
    let audit_before = last_audit_id(&db.pool).await;
    exec(
        &db.pool,
        "UPDATE app_config SET key = 'log_verbosity' WHERE key = 'log_level'",
    )
    .await;
    let new_version = config_version(&db.pool, "log_verbosity", "*")
        .await
        .unwrap();
    assert!(new_version > old_version);
    // The new identity first (its version was taken before the row was
    // written), then the old one's deletion at a later version.
    let inserted = next_change(&mut listener).await;
    assert_eq!(
        inserted.what(),
        ("app_config", Some("log_verbosity"), Some("*"), "insert")
    );
    assert_eq!(inserted.version, new_version);
    let deleted = next_change(&mut listener).await;
    assert_eq!(
        deleted.what(),
        ("app_config", Some("log_level"), Some("*"), "delete")
    );
    assert!(deleted.version > inserted.version, "{deleted:?}");
    let user = session_user(&db.pool).await;
    let audit = audit_after(&db.pool, audit_before).await;
    assert_eq!(
        audit,
        vec![
            (
                "insert".to_string(),
                "log_verbosity".to_string(),
                "*".to_string(),
                None,
                Some(json!("info")),
                user.clone(),
                inserted.version,
            ),
            (
                "delete".to_string(),
                "log_level".to_string(),
                "*".to_string(),
                Some(json!("info")),
                None,
                user,
                deleted.version,
            ),
        ]
    );

    let flag_version_before = flag_version(&db.pool, "dark_mode").await.unwrap();
    exec(
        &db.pool,
        "UPDATE feature_flags SET key = 'night_mode' WHERE key = 'dark_mode'",
    )
    .await;
    let inserted = next_change(&mut listener).await;
    assert_eq!(
        inserted.what(),
        ("feature_flags", Some("night_mode"), None, "insert")
    );
    assert!(inserted.version > flag_version_before);
    assert_eq!(
        Some(inserted.version),
        flag_version(&db.pool, "night_mode").await
    );
    let deleted = next_change(&mut listener).await;
    assert_eq!(
        deleted.what(),
        ("feature_flags", Some("dark_mode"), None, "delete")
    );
    assert!(deleted.version > inserted.version);
}

/// A listener that skips versions it has already passed must see both halves
/// of a rename, so they are announced in version order.
#[tokio::test]
async fn a_rename_announces_strictly_increasing_versions() {
    let db = TestDb::new().await;
    let mut listener = listen(&db).await;
    exec(
        &db.pool,
        "UPDATE app_config SET key = 'log_verbosity' WHERE key = 'log_level'",
    )
    .await;
    let first = next_change(&mut listener).await;
    let second = next_change(&mut listener).await;
    assert_eq!(
        (first.op.as_str(), second.op.as_str()),
        ("insert", "delete")
    );
    assert!(
        second.version > first.version,
        "{} announced after {}",
        second.version,
        first.version
    );
}

#[tokio::test]
async fn truncating_feature_flags_is_announced_as_truncate() {
    let db = TestDb::new().await;
    let mut listener = listen(&db).await;
    let seen = max_version(&db.pool).await;
    exec(&db.pool, "TRUNCATE feature_flags").await;
    assert_eq!(db.count("feature_flags").await, 0);
    let change = next_change(&mut listener).await;
    assert_eq!(change.what(), ("feature_flags", None, None, "truncate"));
    assert!(change.version > seen, "{change:?} after {seen}");
    // Exactly one announcement for the statement, not one per row.
    expect_silence(&mut listener, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn every_plain_sql_change_to_app_config_is_audited_in_its_transaction() {
    let db = TestDb::new().await;
    let mut listener = listen(&db).await;
    let user = session_user(&db.pool).await;
    let start = last_audit_id(&db.pool).await;

    // Insert: the audit row is there inside the transaction, before commit.
    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO app_config (key, environment, value) VALUES ('audited', 'prod', '{\"a\": 1}')",
    )
    .execute(&mut *tx)
    .await
    .expect("insert");
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM config_audit WHERE id > $1")
        .bind(start)
        .fetch_one(&mut *tx)
        .await
        .expect("audit in transaction");
    assert_eq!(inside, 1);
    tx.commit().await.expect("commit");
    let inserted = next_change(&mut listener).await;

    // An aborted change leaves no audit row.
    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("UPDATE app_config SET value = '\"lost\"' WHERE key = 'audited'")
        .execute(&mut *tx)
        .await
        .expect("update");
    tx.rollback().await.expect("rollback");

    exec(
        &db.pool,
        "UPDATE app_config SET value = '[true, null]' WHERE key = 'audited'",
    )
    .await;
    let updated = next_change(&mut listener).await;
    exec(&db.pool, "DELETE FROM app_config WHERE key = 'audited'").await;
    let deleted = next_change(&mut listener).await;
    assert_eq!(
        [
            inserted.op.as_str(),
            updated.op.as_str(),
            deleted.op.as_str()
        ],
        ["insert", "update", "delete"]
    );

    let row = |action: &str, old: Option<Value>, new: Option<Value>, version: i64| -> Audit {
        (
            action.to_string(),
            "audited".to_string(),
            "prod".to_string(),
            old,
            new,
            user.clone(),
            version,
        )
    };
    assert_eq!(
        audit_after(&db.pool, start).await,
        vec![
            row("insert", None, Some(json!({"a": 1})), inserted.version),
            row(
                "update",
                Some(json!({"a": 1})),
                Some(json!([true, null])),
                updated.version
            ),
            row("delete", Some(json!([true, null])), None, deleted.version),
        ]
    );
}

#[tokio::test]
async fn the_readyd_actor_setting_names_the_actor_and_the_updater() {
    let db = TestDb::new().await;
    let user = session_user(&db.pool).await;
    assert_ne!(user, "alice");
    let start = last_audit_id(&db.pool).await;
    let mut conn = db.pool.acquire().await.expect("connection");

    let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
    sqlx::query("SELECT set_config('readyd.actor', 'alice', true)")
        .execute(&mut *tx)
        .await
        .expect("set actor");
    sqlx::query("INSERT INTO app_config (key, value) VALUES ('by_alice', '1')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    sqlx::query("UPDATE app_config SET value = '2' WHERE key = 'max_upload_mb'")
        .execute(&mut *tx)
        .await
        .expect("update");
    sqlx::query("DELETE FROM app_config WHERE key = 'maintenance_message'")
        .execute(&mut *tx)
        .await
        .expect("delete");
    tx.commit().await.expect("commit");

    let updaters: Vec<(String, String)> = sqlx::query_as(
        "SELECT key, updated_by FROM app_config WHERE key IN ('by_alice', 'max_upload_mb') ORDER BY key",
    )
    .fetch_all(&db.pool)
    .await
    .expect("updated_by");
    assert_eq!(
        updaters,
        [
            ("by_alice".to_string(), "alice".to_string()),
            ("max_upload_mb".to_string(), "alice".to_string()),
        ]
    );

    // The setting was local to that transaction: the same session is itself
    // again afterwards.
    sqlx::query("UPDATE app_config SET value = '3' WHERE key = 'max_upload_mb'")
        .execute(&mut *conn)
        .await
        .expect("update without actor");
    let updated_by: String =
        sqlx::query_scalar("SELECT updated_by FROM app_config WHERE key = 'max_upload_mb'")
            .fetch_one(&db.pool)
            .await
            .expect("updated_by");
    assert_eq!(updated_by, user);

    let audit: Vec<(String, String, String)> = audit_after(&db.pool, start)
        .await
        .into_iter()
        .map(|(action, key, _, _, _, actor, _)| (action, key, actor))
        .collect();
    let expect = |action: &str, key: &str, actor: &str| {
        (action.to_string(), key.to_string(), actor.to_string())
    };
    assert_eq!(
        audit,
        [
            expect("insert", "by_alice", "alice"),
            expect("update", "max_upload_mb", "alice"),
            expect("delete", "maintenance_message", "alice"),
            expect("update", "max_upload_mb", &user),
        ]
    );
}

/// The audit names the real actor (the `readyd.actor` setting, else the
/// database user), whatever `updated_by` a plain SQL writer puts in the row.
#[tokio::test]
async fn plain_sql_cannot_choose_the_audited_actor() {
    let db = TestDb::new().await;
    let user = session_user(&db.pool).await;
    let start = last_audit_id(&db.pool).await;
    exec(
        &db.pool,
        "INSERT INTO app_config (key, value, updated_by) VALUES ('forged', '1', 'mallory')",
    )
    .await;
    exec(
        &db.pool,
        "UPDATE app_config SET value = '2', updated_by = 'mallory' WHERE key = 'app_name'",
    )
    .await;
    let actors: Vec<String> = audit_after(&db.pool, start)
        .await
        .into_iter()
        .map(|row| row.5)
        .collect();
    assert_eq!(actors, [user.clone(), user]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This database's audit key.
async fn audit_key(pool: &PgPool) -> Vec<u8> {
    sqlx::query_scalar("SELECT key FROM readyd_audit_key")
        .fetch_one(pool)
        .await
        .expect("the audit key")
}

/// HMAC-SHA256 by ring, independent of the SQL implementation.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, message).as_ref().to_vec()
}

/// The audit fingerprint, under `key`, of a jsonb value whose text is
/// `text`: "hmac-sha256:" + the first 16 hex digits of HMAC-SHA256.
fn fingerprint(key: &[u8], text: &str) -> Value {
    Value::from(format!(
        "hmac-sha256:{}",
        &hex(&hmac_sha256(key, text.as_bytes()))[..16]
    ))
}

/// `readyd_hmac_sha256` in the database.
async fn sql_hmac(pool: &PgPool, key: &[u8], message: &[u8]) -> Vec<u8> {
    sqlx::query_scalar("SELECT readyd_hmac_sha256($1, $2)")
        .bind(key)
        .bind(message)
        .fetch_one(pool)
        .await
        .expect("readyd_hmac_sha256")
}

#[tokio::test]
async fn the_sql_hmac_matches_rfc_4231_and_ring() {
    let db = TestDb::new().await;
    // RFC 4231, test cases 1, 2 and 6 (a key longer than a block).
    let vectors: [(&[u8], &[u8], &str); 3] = [
        (
            &[0x0b; 20],
            b"Hi There",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    ];
    for (key, message, expected) in vectors {
        assert_eq!(hex(&sql_hmac(&db.pool, key, message).await), expected);
        assert_eq!(hex(&hmac_sha256(key, message)), expected);
    }
    // Keys and messages of every length around the block size.
    let mut rng = support::rng::Rng(0x5eed_4231);
    for case in 0..200u64 {
        let key: Vec<u8> = (0..case % 80).map(|_| rng.next() as u8).collect();
        let message: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
        assert_eq!(
            sql_hmac(&db.pool, &key, &message).await,
            hmac_sha256(&key, &message),
            "key {key:?}, message {message:?}"
        );
    }
}

#[tokio::test]
async fn every_database_has_its_own_audit_key() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let (key_a, key_b) = (audit_key(&a.pool).await, audit_key(&b.pool).await);
    assert_eq!(key_a.len(), 32);
    assert_ne!(key_a, key_b);
    // So the same secret has unrelated fingerprints in two databases, and
    // neither is the unkeyed hash of old rows.
    let print = |pool: &PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT readyd_fingerprint('\"1234\"'::jsonb)")
                .fetch_one(&pool)
                .await
                .expect("fingerprint")
        }
    };
    let (print_a, print_b) = (print(&a.pool).await, print(&b.pool).await);
    assert_ne!(print_a, print_b);
    assert_eq!(Value::from(print_a), fingerprint(&key_a, "\"1234\""));
}

#[tokio::test]
async fn a_sensitive_value_is_audited_only_as_its_fingerprint() {
    let db = TestDb::new().await;
    let start = last_audit_id(&db.pool).await;
    exec(
        &db.pool,
        "INSERT INTO app_config (key, value, is_sensitive) VALUES ('api_secret', '\"s3cret-value\"', true)",
    )
    .await;
    // jsonb renders objects with sorted keys and ", "/": " separators.
    exec(
        &db.pool,
        "UPDATE app_config SET value = '{\"token\":\"hunter2\",\"n\":1}' WHERE key = 'api_secret'",
    )
    .await;
    let stored: String =
        sqlx::query_scalar("SELECT value::text FROM app_config WHERE key = 'api_secret'")
            .fetch_one(&db.pool)
            .await
            .expect("stored text");
    assert_eq!(stored, r#"{"n": 1, "token": "hunter2"}"#);
    exec(&db.pool, "DELETE FROM app_config WHERE key = 'api_secret'").await;

    let key = audit_key(&db.pool).await;
    let first = fingerprint(&key, r#""s3cret-value""#);
    let second = fingerprint(&key, r#"{"n": 1, "token": "hunter2"}"#);
    assert_ne!(first, second);
    let audit: Vec<(String, Option<Value>, Option<Value>)> = audit_after(&db.pool, start)
        .await
        .into_iter()
        .map(|(action, _, _, old, new, _, _)| (action, old, new))
        .collect();
    assert_eq!(
        audit,
        [
            ("insert".to_string(), None, Some(first.clone())),
            ("update".to_string(), Some(first), Some(second.clone())),
            ("delete".to_string(), Some(second), None),
        ]
    );
    for (_, old, new) in &audit {
        for value in [old, new].into_iter().flatten() {
            let text = value.as_str().expect("a fingerprint string");
            let digits = text
                .strip_prefix("hmac-sha256:")
                .expect("hmac-sha256: prefix");
            assert_eq!(digits.len(), 16, "{text}");
            assert!(
                digits
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{text}"
            );
        }
    }
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM config_audit
          WHERE coalesce(old_value::text, '') || coalesce(new_value::text, '') ~ '(s3cret|hunter2)'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("leak check");
    assert_eq!(leaked, 0);

    // A value that is not sensitive is audited in clear.
    exec(
        &db.pool,
        "UPDATE app_config SET value = '\"warn\"' WHERE key = 'log_level'",
    )
    .await;
    let last = audit_after(&db.pool, start).await.pop().expect("audit row");
    assert_eq!((last.3, last.4), (Some(json!("info")), Some(json!("warn"))));
}

/// One plain-SQL operation of the property below.
#[derive(Debug, Clone)]
enum Op {
    Insert(usize, usize, Value),
    Update(usize, usize, Value),
    Delete(usize, usize),
}

const ENVIRONMENTS: [&str; 2] = ["*", "prod"];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "\\PC{0,6}".prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..2usize, scalar()).prop_map(|(k, e, v)| Op::Insert(k, e, v)),
        (0..3usize, 0..2usize, scalar()).prop_map(|(k, e, v)| Op::Update(k, e, v)),
        (0..3usize, 0..2usize).prop_map(|(k, e)| Op::Delete(k, e)),
    ]
}

/// What one effective operation must announce and audit.
struct Expected {
    action: &'static str,
    key: String,
    environment: &'static str,
    old: Option<Value>,
    new: Option<Value>,
    /// The row's version after an insert or update.
    version: Option<i64>,
}

async fn run_ops(db: &TestDb, user: &str, case: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut listener = listen(db).await;
    let start = last_audit_id(&db.pool).await;
    let mut model: HashMap<(usize, usize), Value> = HashMap::new();
    let mut expected = Vec::new();
    let key_of = |k: usize| format!("case{case}_k{k}");
    for op in &ops {
        match op {
            Op::Insert(k, e, value) => {
                let result = sqlx::query(
                    "INSERT INTO app_config (key, environment, value) VALUES ($1, $2, $3::jsonb)",
                )
                .bind(key_of(*k))
                .bind(ENVIRONMENTS[*e])
                .bind(value.to_string())
                .execute(&db.pool)
                .await;
                if model.contains_key(&(*k, *e)) {
                    let err = result.expect_err("a duplicate insert");
                    let code = err
                        .as_database_error()
                        .and_then(|e| e.code().map(|c| c.into_owned()));
                    prop_assert_eq!(code.as_deref(), Some("23505"), "{}", err);
                    continue;
                }
                result.map_err(|err| TestCaseError::fail(format!("insert: {err}")))?;
                expected.push(Expected {
                    action: "insert",
                    key: key_of(*k),
                    environment: ENVIRONMENTS[*e],
                    old: None,
                    new: Some(value.clone()),
                    version: config_version(&db.pool, &key_of(*k), ENVIRONMENTS[*e]).await,
                });
                model.insert((*k, *e), value.clone());
            }
            Op::Update(k, e, value) => {
                let done = sqlx::query(
                    "UPDATE app_config SET value = $3::jsonb WHERE key = $1 AND environment = $2",
                )
                .bind(key_of(*k))
                .bind(ENVIRONMENTS[*e])
                .bind(value.to_string())
                .execute(&db.pool)
                .await
                .map_err(|err| TestCaseError::fail(format!("update: {err}")))?;
                let old = model.get(&(*k, *e)).cloned();
                prop_assert_eq!(done.rows_affected(), u64::from(old.is_some()));
                if old.is_some() {
                    expected.push(Expected {
                        action: "update",
                        key: key_of(*k),
                        environment: ENVIRONMENTS[*e],
                        old,
                        new: Some(value.clone()),
                        version: config_version(&db.pool, &key_of(*k), ENVIRONMENTS[*e]).await,
                    });
                    model.insert((*k, *e), value.clone());
                }
            }
            Op::Delete(k, e) => {
                let done =
                    sqlx::query("DELETE FROM app_config WHERE key = $1 AND environment = $2")
                        .bind(key_of(*k))
                        .bind(ENVIRONMENTS[*e])
                        .execute(&db.pool)
                        .await
                        .map_err(|err| TestCaseError::fail(format!("delete: {err}")))?;
                let old = model.remove(&(*k, *e));
                prop_assert_eq!(done.rows_affected(), u64::from(old.is_some()));
                if old.is_some() {
                    expected.push(Expected {
                        action: "delete",
                        key: key_of(*k),
                        environment: ENVIRONMENTS[*e],
                        old,
                        new: None,
                        version: None,
                    });
                }
            }
        }
    }

    // Announcements: one per effective operation, in order, versions rising.
    let mut announced = Vec::new();
    let mut last = 0;
    for want in &expected {
        let change = next_change(&mut listener).await;
        prop_assert_eq!(
            change.what(),
            (
                "app_config",
                Some(want.key.as_str()),
                Some(want.environment),
                want.action
            )
        );
        prop_assert!(change.version > last, "{:?} after {}", change, last);
        if let Some(version) = want.version {
            prop_assert_eq!(change.version, version);
        }
        last = change.version;
        announced.push(change.version);
    }

    // Audit: one row per effective operation, in the same order.
    let audit = audit_after(&db.pool, start).await;
    prop_assert_eq!(audit.len(), expected.len(), "{:?}", audit);
    for ((row, want), version) in audit.iter().zip(&expected).zip(&announced) {
        let (action, key, environment, old, new, actor, audit_version) = row;
        prop_assert_eq!(action.as_str(), want.action);
        prop_assert_eq!(key, &want.key);
        prop_assert_eq!(environment.as_str(), want.environment);
        prop_assert_eq!(old, &want.old);
        prop_assert_eq!(new, &want.new);
        prop_assert_eq!(actor.as_str(), user);
        prop_assert_eq!(audit_version, version);
    }

    // Nothing else was announced: the next one is a marker of our own.
    sqlx::query("UPDATE app_config SET value = to_jsonb($1::int) WHERE key = 'max_upload_mb'")
        .bind(i32::try_from(case).unwrap_or(0))
        .execute(&db.pool)
        .await
        .map_err(|err| TestCaseError::fail(format!("marker: {err}")))?;
    let marker = next_change(&mut listener).await;
    prop_assert_eq!(marker.key.as_deref(), Some("max_upload_mb"));
    prop_assert!(marker.version > last);
    Ok(())
}

#[test]
fn random_plain_sql_changes_are_announced_and_audited_one_to_one() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDb::new());
    let user = runtime.block_on(session_user(&db.pool));
    let cases = AtomicU32::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/change_feed.txt",
        ))),
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..12), |ops| {
        // Fresh keys for every case (shrinking included): the database is
        // shared by all of them.
        let case = cases.fetch_add(1, Ordering::SeqCst);
        runtime.block_on(run_ops(&db, &user, case, ops))
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

#[tokio::test]
async fn truncating_app_config_audits_every_row_as_deleted() {
    let db = TestDb::new().await;
    let rows = db.count("app_config").await;
    let start = last_audit_id(&db.pool).await;
    exec(&db.pool, "TRUNCATE app_config").await;
    let deleted: Vec<(String, Option<serde_json::Value>)> =
        sqlx::query_as("SELECT action, new_value FROM config_audit WHERE id > $1 ORDER BY id")
            .bind(start)
            .fetch_all(&db.pool)
            .await
            .expect("audit rows");
    assert_eq!(deleted.len() as i64, rows);
    assert!(
        deleted
            .iter()
            .all(|(action, new)| action == "delete" && new.is_none())
    );
}
