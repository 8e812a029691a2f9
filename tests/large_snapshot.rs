//! A snapshot larger than one gRPC message: 20,000 flags with 50 target
//! users each. WatchFlags sends it in parts, each under the 4 MiB limit that
//! clients enforce by default, marked first and last, which together hold
//! every flag once with all its targets. ListFlags, ListConfigs and
//! EvaluateFlags answer it in pages (by count and by size); a client that
//! asks for everything at once gets it when it fits and a clear refusal
//! naming page_size when it does not, never a cut list.

mod support;

use std::collections::HashSet;

use prost::Message;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::config_service_client::ConfigServiceClient;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use support::daemon::binary;
use support::{ADMIN_TOKEN, TestDb, TestServer, admin, admin_serve_args, next, serve_args};
use tonic::Code;

const FLAGS: i64 = 20_000;
const TARGETS: i64 = 50;
const LIMIT: usize = 4 * 1024 * 1024;

/// 20,000 flags with 50 target users each (about 30 MB as protobuf).
async fn seed_twenty_thousand_flags(db: &TestDb) {
    sqlx::query(
        "INSERT INTO feature_flags (key, enabled, rollout_percentage, target_users) \
         SELECT 'flag.number_' || i, true, 50, \
                ARRAY(SELECT 'user-' || i || '-' || j || '@example.com' FROM generate_series(1, $2) j) \
           FROM generate_series(1, $1) i",
    )
    .bind(FLAGS)
    .bind(TARGETS)
    .execute(&db.pool)
    .await
    .expect("20,000 flags");
}

#[tokio::test]
async fn twenty_thousand_flags_stream_in_parts_under_the_message_limit() {
    let db = TestDb::new().await;
    seed_twenty_thousand_flags(&db).await;
    let total = db.count("feature_flags").await as usize;
    let server = TestServer::start(serve_args(&db.url)).await;
    let mut client = FlagServiceClient::new(server.channel().await);
    let mut stream = client
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let mut keys = HashSet::new();
    let mut parts = 0;
    let mut version = None;
    loop {
        let message = next(&mut stream).await.expect("a snapshot part");
        assert!(
            message.encoded_len() < LIMIT,
            "part of {} bytes",
            message.encoded_len()
        );
        let Some(pb::watch_flags_response::Event::Snapshot(part)) = message.event else {
            panic!("expected snapshot parts first");
        };
        assert_eq!(part.first, parts == 0, "only the first part is first");
        assert_eq!(
            *version.get_or_insert(part.version),
            part.version,
            "one version"
        );
        parts += 1;
        for flag in part.flags {
            assert_eq!(
                flag.target_users.len() as i64,
                TARGETS.min(flag.target_users.len() as i64)
            );
            assert!(keys.insert(flag.key), "a flag sent twice");
        }
        if part.last {
            break;
        }
    }
    assert!(parts > 1, "20,000 flags need more than one message");
    assert_eq!(keys.len(), total);
    server.stop().await;
}

/// Asserts a refusal of a whole listing: RESOURCE_EXHAUSTED naming page_size.
fn assert_asks_for_pages(refused: tonic::Status) {
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("page_size"), "{refused:?}");
}

/// Every page of ListFlags with `page_size`, each checked under the limit.
async fn list_flags_in_pages(
    client: &mut FlagServiceClient<tonic::transport::Channel>,
    prefix: &str,
    page_size: u32,
) -> (Vec<pb::Flag>, usize) {
    let mut flags = Vec::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .list_flags(pb::ListFlagsRequest {
                prefix: prefix.into(),
                page_size,
                page_token: page_token.clone(),
            })
            .await
            .expect("a page of flags")
            .into_inner();
        assert!(
            page.encoded_len() < LIMIT,
            "page of {} bytes",
            page.encoded_len()
        );
        assert!(page.flags.len() <= page_size as usize);
        assert!(!page.flags.is_empty(), "an empty page");
        pages += 1;
        flags.extend(page.flags);
        if page.next_page_token.is_empty() {
            return (flags, pages);
        }
        page_token = page.next_page_token;
    }
}

/// Every page of EvaluateFlags (all flags) with `page_size`.
async fn evaluate_in_pages(
    client: &mut FlagServiceClient<tonic::transport::Channel>,
    page_size: u32,
) -> (Vec<pb::FlagEvaluationResult>, usize) {
    let mut results = Vec::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .evaluate_flags(pb::EvaluateFlagsRequest {
                page_size,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("a page of evaluations")
            .into_inner();
        assert!(
            page.encoded_len() < LIMIT,
            "page of {} bytes",
            page.encoded_len()
        );
        assert!(page.results.len() <= page_size as usize);
        pages += 1;
        results.extend(page.results);
        if page.next_page_token.is_empty() {
            return (results, pages);
        }
        page_token = page.next_page_token;
    }
}

fn keys_of<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
    keys.cloned().collect()
}

/// Keys in order, each once.
fn assert_sorted_and_unique(keys: &[String]) {
    assert!(
        keys.windows(2).all(|pair| pair[0] < pair[1]),
        "keys out of order or repeated"
    );
}

#[tokio::test]
async fn twenty_thousand_flags_list_and_evaluate_in_pages_and_a_whole_ask_is_refused_clearly() {
    let db = TestDb::new().await;
    seed_twenty_thousand_flags(&db).await;
    let total = db.count("feature_flags").await as usize;
    let server = TestServer::start(serve_args(&db.url)).await;
    let mut client = FlagServiceClient::new(server.channel().await);

    // An older client, which does not page: a refusal that says what to do,
    // never an opaque failure nor a cut list.
    assert_asks_for_pages(
        client
            .list_flags(pb::ListFlagsRequest::default())
            .await
            .expect_err("30 MB do not fit in one answer"),
    );
    // A listing that fits still comes whole to such a client.
    let few = client
        .list_flags(pb::ListFlagsRequest {
            prefix: "flag.number_1999".into(),
            ..Default::default()
        })
        .await
        .expect("a short list")
        .into_inner();
    assert_eq!(few.flags.len(), 11);
    assert!(few.next_page_token.is_empty());

    // In pages: every flag once, in key order, each answer under the limit.
    let (flags, pages) = list_flags_in_pages(&mut client, "", 1000).await;
    assert_eq!(pages, total.div_ceil(1000));
    assert_eq!(flags.len(), total);
    let keys = keys_of(flags.iter().map(|flag| &flag.key));
    assert_sorted_and_unique(&keys);
    assert!(
        flags
            .iter()
            .filter(|f| f.key.starts_with("flag."))
            .all(|f| f.target_users.len() == 50)
    );
    // With a prefix, pages stay within it.
    let (prefixed, _) = list_flags_in_pages(&mut client, "flag.number_1", 400).await;
    assert_eq!(prefixed.len(), 11_111);
    assert!(
        prefixed
            .iter()
            .all(|flag| flag.key.starts_with("flag.number_1"))
    );

    // Evaluating every flag: in pages, the same keys; whole, as it fits
    // (answers are small), in one answer.
    let (results, _) = evaluate_in_pages(&mut client, 1000).await;
    assert_eq!(keys_of(results.iter().map(|r| &r.key)), keys);
    let whole = client
        .evaluate_flags(pb::EvaluateFlagsRequest::default())
        .await
        .expect("every answer fits in one message")
        .into_inner();
    assert_eq!(whole.results.len(), total);
    assert!(whole.next_page_token.is_empty());

    // Page tokens are checked.
    for (page_size, page_token, field) in [(1001, "", "page_size"), (10, "garbage", "page_token")] {
        let refused = client
            .list_flags(pb::ListFlagsRequest {
                page_size,
                page_token: page_token.into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with(field), "{refused:?}");
    }

    // The command line pages through it.
    let listed = tokio::process::Command::new(binary())
        .args(["flags", "list", "--output", "json", "--addr", &server.url()])
        .env_remove("READYD_ADMIN_TOKEN")
        .env_remove("READYD_ADDR")
        .output()
        .await
        .expect("run readyd flags list");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(total));
    server.stop().await;
}

#[tokio::test]
async fn large_values_are_paged_by_size_and_flag_values_are_capped() {
    let db = TestDb::new().await;
    // 80 flags and 80 config rows of about 60 KB each: about 4.8 MB each.
    sqlx::query(
        "INSERT INTO feature_flags (key, enabled, value_type, on_value, off_value) \
         SELECT 'big.' || lpad(i::text, 3, '0'), true, 'string', to_jsonb(repeat('x', 60000)), '\"\"' \
           FROM generate_series(1, 80) i",
    )
    .execute(&db.pool)
    .await
    .expect("big flags");
    sqlx::query(
        "INSERT INTO app_config (key, environment, value) \
         SELECT 'big.' || lpad(i::text, 3, '0'), env, to_jsonb(repeat('y', 60000)) \
           FROM generate_series(1, 80) i, (VALUES ('*'), ('test')) envs(env)",
    )
    .execute(&db.pool)
    .await
    .expect("big config rows");
    let flags_total = db.count("feature_flags").await as usize;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let mut flags = FlagServiceClient::new(server.channel().await);
    let mut config = ConfigServiceClient::new(server.channel().await);

    // Whole: refused, naming page_size (or asking for fewer keys).
    assert_asks_for_pages(
        flags
            .evaluate_flags(pb::EvaluateFlagsRequest::default())
            .await
            .expect_err("4.8 MB of answers"),
    );
    let by_keys = flags
        .evaluate_flags(pb::EvaluateFlagsRequest {
            keys: (1..=80).map(|i| format!("big.{i:03}")).collect(),
            ..Default::default()
        })
        .await
        .expect_err("4.8 MB of answers");
    assert_eq!(by_keys.code(), Code::ResourceExhausted, "{by_keys:?}");
    assert!(by_keys.message().contains("fewer keys"), "{by_keys:?}");
    assert_asks_for_pages(
        config
            .list_configs(pb::ListConfigsRequest::default())
            .await
            .expect_err("4.8 MB of entries"),
    );

    // In pages: cut by size, well before the page size, every item once.
    let (listed, pages) = list_flags_in_pages(&mut flags, "", 1000).await;
    assert!(pages >= 2, "{pages} pages");
    assert_eq!(listed.len(), flags_total);
    assert_sorted_and_unique(&keys_of(listed.iter().map(|flag| &flag.key)));
    let (results, pages) = evaluate_in_pages(&mut flags, 1000).await;
    assert!(pages >= 2, "{pages} pages");
    assert_eq!(results.len(), flags_total);

    let mut resolved = Vec::new();
    let mut all_rows = Vec::new();
    for all_environments in [false, true] {
        let mut page_token = String::new();
        loop {
            let page = config
                .list_configs(admin(pb::ListConfigsRequest {
                    all_environments,
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                }))
                .await
                .expect("a page of config")
                .into_inner();
            assert!(
                page.encoded_len() < LIMIT,
                "page of {} bytes",
                page.encoded_len()
            );
            let into = if all_environments {
                &mut all_rows
            } else {
                &mut resolved
            };
            into.extend(
                page.entries
                    .into_iter()
                    .map(|entry| (entry.key, entry.environment)),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    let big_resolved: Vec<_> = resolved
        .iter()
        .filter(|(key, _)| key.starts_with("big."))
        .collect();
    assert_eq!(big_resolved.len(), 80);
    assert!(
        big_resolved
            .iter()
            .all(|(_, environment)| environment == "test")
    );
    assert_eq!(all_rows.len(), db.count("app_config").await as usize);
    assert!(all_rows.windows(2).all(|pair| pair[0] < pair[1]));

    // The command line pages through config too.
    let listed = tokio::process::Command::new(binary())
        .args([
            "config",
            "list",
            "--all",
            "--output",
            "json",
            "--addr",
            &server.url(),
        ])
        .env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("READYD_ADDR")
        .output()
        .await
        .expect("run readyd config list");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(all_rows.len()));

    // A flag value is capped at 64 KiB, as a config value is.
    let refused = flags
        .upsert_flag(admin(pb::UpsertFlagRequest {
            key: "too.big".into(),
            value_type: pb::FlagValueType::String.into(),
            on_value: Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("z".repeat(70_000))),
            }),
            off_value: Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(String::new())),
            }),
            ..Default::default()
        }))
        .await
        .expect_err("over 64 KiB");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("on_value"), "{refused:?}");
    server.stop().await;
}
