//! A snapshot larger than one gRPC message: 20,000 flags with 50 target
//! users each. WatchFlags sends it in parts, each under the 4 MiB limit that
//! clients enforce by default, marked first and last, which together hold
//! every flag once with all its targets.

mod support;

use std::collections::HashSet;

use prost::Message;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use support::{TestDb, TestServer, next, serve_args};

const FLAGS: i64 = 20_000;
const TARGETS: i64 = 50;
const LIMIT: usize = 4 * 1024 * 1024;

#[tokio::test]
async fn twenty_thousand_flags_stream_in_parts_under_the_message_limit() {
    let db = TestDb::new().await;
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
