//! Flag usage end to end, with real child processes and a real PostgreSQL:
//!
//! - evaluations through every protocol (EvaluateFlag, flagd, OFREP single
//!   and bulk, a bulk `304` answered from memory, `GET
//!   /api/feature-flags/{key}`) on two servers add up, after periodic
//!   flushes and a SIGTERM, exactly to the counts in `flag_usage`;
//! - a database outage while flushing loses nothing: the counts wait in
//!   memory and are written when it is back;
//! - a follower flushes through its upstream;
//! - `add_usage` applies a flush id once however often it is retried
//!   (a property, through PostgreSQL);
//! - GetFlagUsage answers what the table holds.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use proptest::prelude::*;
use readyd::api::pb::flagd::evaluation_v1 as v1;
use readyd::api::pb::flagd::evaluation_v1::service_client::ServiceClient as FlagdV1;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::store::Store;
use readyd::store::usage::UsageAddition;
use support::TestDb;
use support::daemon::{Daemon, DaemonCommand};
use support::http1::request;
use support::usage::{Sums, add, table_sums};
use tonic::transport::Channel;

async fn start(db_url: &str, environment: &str) -> Daemon {
    DaemonCommand::serve()
        .env("DATABASE_URL", db_url)
        .args([
            "--environment",
            environment,
            "--http-listen",
            "127.0.0.1:0",
            "--usage-flush-interval",
            "300ms",
        ])
        .start()
        .await
}

async fn evaluate(channel: &Channel, key: &str) -> pb::EvaluateFlagResponse {
    FlagServiceClient::new(channel.clone())
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: key.into(),
            context: None,
        })
        .await
        .expect("EvaluateFlag answers")
        .into_inner()
}

/// SIGTERM, then waits for a clean exit.
async fn terminate(mut daemon: Daemon) {
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "readyd exits cleanly: {status:?}");
}

/// Waits until `flag_usage` holds `expected`, or fails after a deadline.
async fn wait_for_sums(db: &TestDb, expected: &Sums) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sums = table_sums(db).await;
        if &sums == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flag_usage never reached {expected:?}; it holds {sums:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every evaluation path, `n` times each, against `daemon`; adds what it
/// made to `expected` (every flag is on for everyone: `on`, `STATIC`).
async fn evaluate_everywhere(daemon: &Daemon, flags: &[&str], n: i64, expected: &mut Sums) {
    let channel = daemon.channel().await;
    let http = daemon.http.expect("an HTTP address");
    for _ in 0..n {
        let answer = evaluate(&channel, "dark_mode").await;
        assert_eq!(
            (answer.variant.as_str(), answer.reason()),
            ("on", pb::EvaluationReason::Static)
        );
        add(expected, "dark_mode", "on", "STATIC", 1);

        FlagdV1::new(channel.clone())
            .resolve_boolean(v1::ResolveBooleanRequest {
                flag_key: "beta_features".into(),
                context: None,
            })
            .await
            .expect("flagd answers");
        add(expected, "beta_features", "on", "STATIC", 1);

        let single = request(
            http,
            "POST",
            "/ofrep/v1/evaluate/flags/ai_insights",
            "Content-Type: application/json\r\n",
            r#"{"context":{"targetingKey":"u-1"}}"#,
        )
        .await;
        assert_eq!(single.code, 200, "{}", single.body);
        add(expected, "ai_insights", "on", "STATIC", 1);

        let seed = request(
            http,
            "GET",
            "/api/feature-flags/advanced_reporting?user_id=u-2",
            "",
            "",
        )
        .await;
        assert_eq!(seed.code, 200, "{}", seed.body);
        add(expected, "advanced_reporting", "on", "STATIC", 1);

        // A bulk evaluation, then the same one answered `304` from memory:
        // both count every flag.
        let bulk = request(
            http,
            "POST",
            "/ofrep/v1/evaluate/flags",
            "Content-Type: application/json\r\n",
            r#"{"context":{"targetingKey":"u-3"}}"#,
        )
        .await;
        assert_eq!(bulk.code, 200, "{}", bulk.body);
        let etag = bulk.header("etag").expect("an ETag").to_owned();
        let again = request(
            http,
            "POST",
            "/ofrep/v1/evaluate/flags",
            &format!("Content-Type: application/json\r\nIf-None-Match: {etag}\r\n"),
            r#"{"context":{"targetingKey":"u-3"}}"#,
        )
        .await;
        assert_eq!(again.code, 304, "{}", again.body);
        for flag in flags {
            add(expected, flag, "on", "STATIC", 2);
        }
    }
}

async fn all_flags_on(db: &TestDb) -> Vec<String> {
    sqlx::query("UPDATE feature_flags SET enabled = true, rollout_percentage = 100, environments = '{}', target_users = '{}', target_roles = '{}'")
        .execute(&db.pool)
        .await
        .expect("turn every flag on");
    sqlx::query_scalar("SELECT key FROM feature_flags ORDER BY key")
        .fetch_all(&db.pool)
        .await
        .expect("flag keys")
}

#[tokio::test]
async fn counts_through_every_protocol_on_two_servers_equal_the_table_after_sigterm() {
    let db = TestDb::new().await;
    let keys = all_flags_on(&db).await;
    let flags: Vec<&str> = keys.iter().map(String::as_str).collect();
    let a = start(&db.url, "prod").await;
    let b = start(&db.url, "staging").await;
    let mut expected = Sums::new();
    evaluate_everywhere(&a, &flags, 7, &mut expected).await;
    evaluate_everywhere(&b, &flags, 5, &mut expected).await;
    // Some counts are flushed while serving; the rest at SIGTERM.
    evaluate_everywhere(&a, &flags, 3, &mut expected).await;
    terminate(a).await;
    terminate(b).await;
    assert_eq!(table_sums(&db).await, expected);

    // Both environments have their own rows, and each row is one per hour:
    // however many flushes there were.
    let environments: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT environment FROM flag_usage ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .expect("environments");
    assert_eq!(environments, ["prod", "staging"]);
}

#[tokio::test]
async fn a_database_outage_while_flushing_loses_nothing() {
    let db = TestDb::new().await;
    let keys = all_flags_on(&db).await;
    let flags: Vec<&str> = keys.iter().map(String::as_str).collect();
    let proxy = support::proxy::TcpProxy::start(support::proxy::Target::of_url(&db.url)).await;
    let mut daemon = start(&db.proxied_url(&proxy), "prod").await;
    let mut expected = Sums::new();
    evaluate_everywhere(&daemon, &flags, 2, &mut expected).await;
    wait_for_sums(&db, &expected).await;

    proxy.cut();
    evaluate_everywhere(&daemon, &flags, 4, &mut expected).await;
    daemon
        .wait_for_log("could not write flag usage", Duration::from_secs(30))
        .await;
    evaluate_everywhere(&daemon, &flags, 1, &mut expected).await;
    proxy.heal();
    // Written by a periodic flush once the database is back, before any
    // shutdown.
    wait_for_sums(&db, &expected).await;

    evaluate_everywhere(&daemon, &flags, 2, &mut expected).await;
    terminate(daemon).await;
    assert_eq!(table_sums(&db).await, expected);
}

#[tokio::test]
async fn a_follower_flushes_through_its_upstream_and_get_flag_usage_reads_it() {
    let db = TestDb::new().await;
    let keys = all_flags_on(&db).await;
    let flags: Vec<&str> = keys.iter().map(String::as_str).collect();
    let dirs = [
        tempfile::tempdir().expect("a dir"),
        tempfile::tempdir().expect("a dir"),
    ];
    let upstream = support::daemon::upstream(&db.url, "prod", dirs[0].path())
        .start()
        .await;
    let follower = support::daemon::follower(&upstream.url(), "edge", "follower", dirs[1].path())
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--usage-flush-interval",
            "300ms",
        ])
        .start()
        .await;
    let mut expected = Sums::new();
    evaluate_everywhere(&follower, &flags, 3, &mut expected).await;
    wait_for_sums(&db, &expected).await;
    evaluate_everywhere(&follower, &flags, 2, &mut expected).await;
    let follower_channel = follower.channel().await;
    terminate(follower).await;
    drop(follower_channel);
    assert_eq!(table_sums(&db).await, expected);

    let usage = FlagServiceClient::new(upstream.channel().await)
        .get_flag_usage(pb::GetFlagUsageRequest {
            key: "dark_mode".into(),
            since: None,
            until: None,
        })
        .await
        .expect("GetFlagUsage answers")
        .into_inner();
    assert_eq!(usage.total, 5 + 2 * 5);
    assert!(
        usage
            .buckets
            .iter()
            .all(|b| b.environment == "edge" && b.variant == "on" && b.reason == "STATIC")
    );
    let refused = FlagServiceClient::new(upstream.channel().await)
        .get_flag_usage(pb::GetFlagUsageRequest {
            key: "dark_mode".into(),
            since: Some(prost_types::Timestamp {
                seconds: 2_000_000_000,
                nanos: 0,
            }),
            until: Some(prost_types::Timestamp {
                seconds: 1_000_000_000,
                nanos: 0,
            }),
        })
        .await
        .expect_err("a reversed range is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    terminate(upstream).await;
}

/// A flush as the property builds it: an id number, rows (flag, variant,
/// count) and how many times it is sent again.
type PlannedFlush = (u8, Vec<(u8, u8, i64)>, u8);

fn flushes() -> impl Strategy<Value = Vec<PlannedFlush>> {
    prop::collection::vec(
        (
            0u8..6,
            prop::collection::btree_map((0u8..3, 0u8..2), 1i64..1000, 1..5)
                .prop_map(|rows| rows.into_iter().map(|((f, v), c)| (f, v, c)).collect()),
            0u8..3,
        ),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// However often each flush is sent (a retry after an unknown outcome
    /// sends it again, same id and rows), the table holds each distinct
    /// flush's counts once.
    #[test]
    fn each_flush_id_is_applied_once_however_often_it_is_sent(plan in flushes()) {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            let db = TestDb::new().await;
            let store = Store::from_pool(db.pool.clone());
            let hour = chrono::DateTime::from_timestamp(1_800_000_000 / 3600 * 3600, 0).expect("an hour");
            let mut sent: BTreeMap<u8, Vec<(u8, u8, i64)>> = BTreeMap::new();
            let mut expected = Sums::new();
            for (id, rows, retries) in plan {
                // The same id always carries the same rows, as a retry does.
                let rows = sent.entry(id).or_insert_with(|| {
                    for (flag, variant, count) in &rows {
                        add(&mut expected, &format!("f{flag}"), &format!("v{variant}"), "SPLIT", *count);
                    }
                    rows
                }).clone();
                let additions: Vec<UsageAddition> = rows
                    .iter()
                    .map(|(flag, variant, count)| UsageAddition {
                        flag: format!("f{flag}"),
                        hour,
                        environment: "prod".into(),
                        variant: format!("v{variant}"),
                        reason: "SPLIT".into(),
                        count: *count,
                    })
                    .collect();
                let flush_id = format!("00000000-0000-4000-8000-0000000000{id:02}");
                for _ in 0..=retries {
                    store.add_usage(&flush_id, &additions).await.expect("add_usage");
                }
            }
            assert_eq!(table_sums(&db).await, expected);
        });
    }
}

/// Per (flag, variant), the value of every `readyd_flag_usage_evaluations_total`
/// series in a scrape of `daemon`'s `/metrics`.
async fn flag_label_series(daemon: &Daemon) -> BTreeMap<(String, String), f64> {
    let exposition = support::metrics::scrape(daemon.metrics_addr()).await;
    let all = support::metrics::samples(&exposition);
    assert!(
        all.keys()
            .any(|series| series.starts_with("readyd_flag_evaluations_total{")),
        "a real scrape, with the evaluation counters: {exposition}"
    );
    all.into_iter()
        .filter(|(series, _)| series.starts_with("readyd_flag_usage_evaluations_total{"))
        .map(|(series, value)| {
            let flag = support::metrics::label(&series, "flag").unwrap_or_default();
            let variant = support::metrics::label(&series, "variant").unwrap_or_default();
            ((flag.to_owned(), variant.to_owned()), value)
        })
        .collect()
}

/// Evaluates flag `key` for `user` (or no one); adds what it served to
/// `expected` and `per_variant`.
async fn evaluate_as(
    channel: &Channel,
    key: &str,
    user: &str,
    expected: &mut Sums,
    per_variant: &mut BTreeMap<(String, String), f64>,
) {
    let answer = FlagServiceClient::new(channel.clone())
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: key.into(),
            context: Some(pb::EvaluationContext {
                user_id: user.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("EvaluateFlag answers")
        .into_inner();
    let reason = answer.reason().as_str_name();
    let reason = reason.strip_prefix("EVALUATION_REASON_").unwrap_or(reason);
    add(expected, key, &answer.variant, reason, 1);
    *per_variant
        .entry((key.to_owned(), answer.variant))
        .or_default() += 1.0;
}

/// With `--metrics-flag-labels`, each flush adds every flag's evaluations
/// to `readyd_flag_usage_evaluations_total{flag, variant}`: after a known
/// number of evaluations and a flush, each series equals its count (and
/// the table's). Without it, there is no per-flag series at all.
#[tokio::test]
async fn metrics_flag_labels_count_each_flag_and_variant_and_only_when_asked() {
    let db = TestDb::new().await;
    // A flag that serves `on` to one targeted user and `off` to others.
    sqlx::query(
        "INSERT INTO feature_flags (key, enabled, rollout_percentage, target_users) \
         VALUES ('vip_banner', true, 0, '{vip}')",
    )
    .execute(&db.pool)
    .await
    .expect("a targeted flag");
    for labels in [true, false] {
        sqlx::query("DELETE FROM flag_usage")
            .execute(&db.pool)
            .await
            .expect("an empty table");
        let mut args = vec![
            "--environment",
            "prod",
            "--metrics-listen",
            "127.0.0.1:0",
            "--usage-flush-interval",
            "300ms",
        ];
        if labels {
            args.push("--metrics-flag-labels");
        }
        let daemon = DaemonCommand::serve()
            .env("DATABASE_URL", &db.url)
            .args(args)
            .start()
            .await;
        let channel = daemon.channel().await;
        let mut expected = Sums::new();
        let mut per_variant = BTreeMap::new();
        for _ in 0..3 {
            evaluate_as(
                &channel,
                "vip_banner",
                "vip",
                &mut expected,
                &mut per_variant,
            )
            .await;
        }
        for user in 0..5 {
            let user = format!("user-{user}");
            evaluate_as(
                &channel,
                "vip_banner",
                &user,
                &mut expected,
                &mut per_variant,
            )
            .await;
        }
        for _ in 0..4 {
            evaluate_as(&channel, "dark_mode", "", &mut expected, &mut per_variant).await;
        }
        let vip_variants: Vec<&String> = per_variant
            .keys()
            .filter(|(flag, _)| flag == "vip_banner")
            .map(|(_, variant)| variant)
            .collect();
        assert_eq!(vip_variants.len(), 2, "two variants: {per_variant:?}");
        // Flushed: the table holds every evaluation, so the counter (added
        // when the counts are taken out of memory, before the write) does.
        wait_for_sums(&db, &expected).await;
        let series = flag_label_series(&daemon).await;
        if labels {
            assert_eq!(series, per_variant, "one series per flag and variant");
            // And it keeps counting: two more, one more flush.
            for _ in 0..2 {
                evaluate_as(
                    &channel,
                    "vip_banner",
                    "vip",
                    &mut expected,
                    &mut per_variant,
                )
                .await;
            }
            wait_for_sums(&db, &expected).await;
            assert_eq!(flag_label_series(&daemon).await, per_variant);
        } else {
            assert!(series.is_empty(), "no per-flag series: {series:?}");
        }
        drop(channel);
        terminate(daemon).await;
    }
}
