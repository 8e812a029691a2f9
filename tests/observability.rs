//! Metrics and logs of a real readyd process: `/metrics` after traffic
//! holds the named series with sensible values, and no secret (tokens,
//! sensitive config values, passwords in URLs) ever reaches the logs, in
//! text or JSON.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::config_service_client::ConfigServiceClient;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::api::pb::readyd::v1::health_service_client::HealthServiceClient;
use support::daemon::{Daemon, DaemonCommand, binary};
use support::metrics::{samples, scrape};
use support::{TestDb, wait_for_probe};
use tokio::process::Command;

const ADMIN_TOKEN: &str = "adm-TOKEN-7f3k2q9";
const READ_TOKEN: &str = "rd-TOKEN-p0x8v1";
const WRONG_TOKEN: &str = "guess-TOKEN-z9y8";
const SENSITIVE_VALUE: &str = "cfg-SENSITIVE-4m2n";
const REDIS_PASSWORD: &str = "rds-PASSWORD-8h6j";
const DB_PASSWORD: &str = "pg-PASSWORD-3c5v";

/// The database URL with a password added where the URL form allows one
/// (trust authentication ignores it): a secret that must not be logged.
fn with_password(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    match parsed.set_password(Some(DB_PASSWORD)) {
        Ok(()) => parsed.to_string(),
        Err(()) => url.to_owned(),
    }
}

/// Starts readyd on `database_url` with the test tokens and debug logs.
async fn start_daemon(database_url: &str, extra: &[&str], json: bool) -> Daemon {
    let command = DaemonCommand::serve()
        .args(["--environment", "test"])
        .args(extra)
        .env("DATABASE_URL", database_url)
        .env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("READYD_READ_TOKEN", READ_TOKEN)
        .env("READYD_LOG", "readyd=debug,info");
    if json { command } else { command.text_logs() }
        .start()
        .await
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// The value of the one series of `name` whose labels include every pair.
#[track_caller]
fn value(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<(&String, &f64)> = samples
        .iter()
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{name}{labels:?}: {matching:?}\nall series: {:?}",
        samples
            .keys()
            .filter(|k| k.starts_with("readyd"))
            .collect::<Vec<_>>()
    );
    *matching[0].1
}

#[tokio::test]
async fn metrics_hold_the_named_series_after_traffic() {
    let db = TestDb::new().await;
    sqlx::query("INSERT INTO feature_flags (key, enabled, rollout_percentage) VALUES ('checkout', true, 50)")
        .execute(&db.pool)
        .await
        .expect("flag");
    let daemon = start_daemon(
        &db.url,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--database-check",
            "interval=200ms",
        ],
        true,
    )
    .await;
    // HTTP requests: two probes, one to no route, and a bulk evaluation
    // without a token (answered before the router, observed as its route
    // all the same).
    let http = daemon.http.expect("the HTTP surface's address");
    for (method, path) in [
        ("GET", "/livez"),
        ("GET", "/livez"),
        ("GET", "/no/such/path"),
        ("POST", "/ofrep/v1/evaluate/flags"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(
            &mut stream,
            format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            )
            .as_bytes(),
        )
        .await
        .expect("send");
        let mut answer = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
            .await
            .expect("answer");
    }
    let metrics_addr = daemon.metrics_addr();
    let channel = daemon.channel().await;
    wait_for_probe(channel.clone(), "startup", ServingStatus::Serving).await;

    let mut flags = FlagServiceClient::new(channel.clone());
    for user in 0..20 {
        flags
            .evaluate_flag(with_token(
                pb::EvaluateFlagRequest {
                    explain: false,
                    key: "checkout".into(),
                    context: Some(pb::EvaluationContext {
                        user_id: format!("user-{user}"),
                        ..Default::default()
                    }),
                },
                READ_TOKEN,
            ))
            .await
            .expect("evaluate");
    }
    let missing = flags
        .evaluate_flag(with_token(
            pb::EvaluateFlagRequest {
                explain: false,
                key: "missing".into(),
                context: None,
            },
            READ_TOKEN,
        ))
        .await
        .expect_err("unknown flag");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut probes = HealthClient::new(channel.clone());
    for _ in 0..3 {
        probes
            .check(HealthCheckRequest {
                service: "readiness".into(),
            })
            .await
            .expect("probe");
    }
    HealthServiceClient::new(channel.clone())
        .get_health(with_token(pb::GetHealthRequest {}, READ_TOKEN))
        .await
        .expect("report");
    let mut watch = flags
        .watch_flags(with_token(pb::WatchFlagsRequest::default(), READ_TOKEN))
        .await
        .expect("watch")
        .into_inner();
    support::next(&mut watch).await.expect("snapshot");

    // The sampler and the checks report within a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let scraped = loop {
        let scraped = samples(&scrape(metrics_addr).await);
        let ready = scraped
            .keys()
            .any(|k| k.starts_with("process_resident_memory_bytes"))
            && scraped
                .keys()
                .any(|k| k.starts_with("readyd_db_pool_acquire_wait_seconds"));
        if ready {
            break scraped;
        }
        assert!(tokio::time::Instant::now() < deadline, "{scraped:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        value(
            &scraped,
            "readyd_http_requests_total",
            &[("route", "/livez"), ("method", "GET"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scraped,
            "readyd_http_requests_total",
            &[("route", "unknown"), ("method", "GET"), ("status", "404")]
        ),
        1.0,
        "the raw path never becomes a label"
    );
    assert_eq!(
        value(
            &scraped,
            "readyd_http_request_duration_seconds_count",
            &[("route", "/livez")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scraped,
            "readyd_http_requests_total",
            &[
                ("route", "/ofrep/v1/evaluate/flags"),
                ("method", "POST"),
                ("status", "401")
            ]
        ),
        1.0,
        "refused (this daemon has a read token), and observed as its route"
    );
    let flag_service = ("service", "readyd.v1.FlagService");
    assert_eq!(
        value(
            &scraped,
            "readyd_rpc_requests_total",
            &[flag_service, ("method", "EvaluateFlag"), ("code", "OK")]
        ),
        20.0
    );
    assert_eq!(
        value(
            &scraped,
            "readyd_rpc_requests_total",
            &[
                flag_service,
                ("method", "EvaluateFlag"),
                ("code", "NOT_FOUND")
            ]
        ),
        1.0
    );
    assert!(
        value(
            &scraped,
            "readyd_rpc_requests_total",
            &[
                ("service", "grpc.health.v1.Health"),
                ("method", "Check"),
                ("code", "OK")
            ]
        ) >= 3.0
    );
    assert_eq!(
        value(
            &scraped,
            "readyd_rpc_duration_seconds_count",
            &[flag_service, ("method", "EvaluateFlag")]
        ),
        21.0
    );
    assert!(
        value(
            &scraped,
            "readyd_rpc_duration_seconds_sum",
            &[flag_service, ("method", "EvaluateFlag")]
        ) > 0.0
    );
    let split = value(
        &scraped,
        "readyd_flag_evaluations_total",
        &[("reason", "SPLIT")],
    );
    let default = value(
        &scraped,
        "readyd_flag_evaluations_total",
        &[("reason", "DEFAULT")],
    );
    assert_eq!(split + default, 20.0, "every evaluation is counted once");
    assert_eq!(
        value(&scraped, "readyd_check_up", &[("check", "database")]),
        1.0
    );
    assert_eq!(
        value(
            &scraped,
            "readyd_check_consecutive_failures",
            &[("check", "database")]
        ),
        0.0
    );
    let latency = value(
        &scraped,
        "readyd_check_latency_seconds",
        &[("check", "database")],
    );
    assert!(latency > 0.0 && latency < 2.0, "{latency}");
    assert_eq!(
        value(&scraped, "readyd_health_status", &[("status", "healthy")]),
        1.0
    );
    assert_eq!(
        value(&scraped, "readyd_health_status", &[("status", "unhealthy")]),
        0.0
    );
    assert!(value(&scraped, "readyd_snapshot_version", &[]) > 0.0);
    assert_eq!(
        value(&scraped, "readyd_snapshot_flags", &[]),
        db.count("feature_flags").await as f64
    );
    assert!(
        value(
            &scraped,
            "readyd_snapshot_last_change_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    assert_eq!(
        value(&scraped, "readyd_listener_reconnects_total", &[]),
        0.0
    );
    assert_eq!(value(&scraped, "readyd_listener_reloads_total", &[]), 0.0);
    assert_eq!(
        value(&scraped, "readyd_watch_streams", &[("kind", "flags")]),
        1.0
    );
    assert_eq!(value(&scraped, "readyd_db_pool_max_connections", &[]), 4.0);
    let in_use = value(
        &scraped,
        "readyd_db_pool_connections",
        &[("state", "in_use")],
    );
    let idle = value(&scraped, "readyd_db_pool_connections", &[("state", "idle")]);
    assert!((0.0..=4.0).contains(&(in_use + idle)), "{in_use} {idle}");
    assert!(value(&scraped, "readyd_db_pool_acquire_wait_seconds_count", &[]) >= 1.0);
    let rss = value(&scraped, "process_resident_memory_bytes", &[]);
    assert!(rss > 1e6 && rss < 1e9, "{rss}");

    // A client that goes away closes its stream: the gauge returns to 0.
    drop(watch);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = samples(&scrape(metrics_addr).await);
        if value(&scraped, "readyd_watch_streams", &[("kind", "flags")]) == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stream gauge stuck");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_taken_metrics_port_is_a_startup_error() {
    let db = TestDb::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = Command::new(binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &addr,
        ])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--metrics-listen"), "{stderr}");
    let bad = Command::new(binary())
        .args(["check", "--metrics-listen", "nowhere"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .expect("run");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--metrics-listen"));
}

/// An admin SetConfig of the sensitive value under `key`.
fn sensitive_write(key: &str) -> tonic::Request<pb::SetConfigRequest> {
    with_token(
        pb::SetConfigRequest {
            key: key.into(),
            value: Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(
                    SENSITIVE_VALUE.into(),
                )),
            }),
            is_sensitive: Some(true),
            ..Default::default()
        },
        ADMIN_TOKEN,
    )
}

/// A GetConfig of `key` with `token`.
fn read(key: &str, token: &str) -> tonic::Request<pb::GetConfigRequest> {
    with_token(pb::GetConfigRequest { key: key.into() }, token)
}

/// Traffic that handles every kind of secret: tokens (right and wrong), a
/// sensitive config value written, read and watched, a check URL with a
/// password that fails, a database URL with a password.
async fn secret_traffic(daemon: &Daemon) {
    let channel = daemon.channel().await;
    wait_for_probe(channel.clone(), "startup", ServingStatus::Serving).await;
    let mut config = ConfigServiceClient::new(channel.clone());
    let mut stream = config
        .watch_configs(with_token(pb::WatchConfigsRequest::default(), ADMIN_TOKEN))
        .await
        .expect("watch")
        .into_inner();
    support::next(&mut stream).await.expect("snapshot");
    config
        .set_config(sensitive_write("payments.api_key"))
        .await
        .expect("set sensitive");
    support::next(&mut stream).await.expect("change");
    for token in [ADMIN_TOKEN, READ_TOKEN] {
        config
            .get_config(read("payments.api_key", token))
            .await
            .expect("get");
    }
    let refused = config
        .get_config(read("payments.api_key", WRONG_TOKEN))
        .await
        .expect_err("wrong token");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // A bad write echoing nothing secret back either.
    let bad = config
        .set_config(sensitive_write("Bad Key"))
        .await
        .expect_err("bad key");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // The failing check has logged its error by now.
    let report = HealthServiceClient::new(channel)
        .get_health(with_token(pb::GetHealthRequest {}, READ_TOKEN))
        .await
        .expect("report")
        .into_inner();
    let cache = report
        .checks
        .iter()
        .find(|check| check.name == "cache")
        .expect("cache check");
    assert!(!cache.target.contains(REDIS_PASSWORD), "{cache:?}");
    assert!(!cache.last_error.contains(REDIS_PASSWORD), "{cache:?}");
}

#[track_caller]
fn assert_no_secret(lines: &[String]) {
    let log = lines.join("\n");
    for secret in [
        ADMIN_TOKEN,
        READ_TOKEN,
        WRONG_TOKEN,
        SENSITIVE_VALUE,
        REDIS_PASSWORD,
        DB_PASSWORD,
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log:\n{log}");
    }
}

#[tokio::test]
async fn no_secret_reaches_text_or_json_logs() {
    let db = TestDb::new().await;
    // A real Redis, so the error logged is the server's answer to a wrong
    // password (the private one has none, which fails AUTH too).
    let mut redis = url::Url::parse(&support::servers::redis_url()).expect("redis url");
    redis
        .set_password(Some(REDIS_PASSWORD))
        .expect("set password");
    let check = format!("cache={redis}?failures=1&interval=200ms&critical=false");
    for json in [false, true] {
        let daemon = start_daemon(
            &with_password(&db.url),
            &["--check", &check, "--metrics-listen", "off"],
            json,
        )
        .await;
        secret_traffic(&daemon).await;
        let lines = daemon.stop().await;
        assert_no_secret(&lines);
        // The logs are not empty: one span per call, with its method, code
        // and duration.
        let calls: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains("call finished"))
            .collect();
        assert!(
            calls.iter().any(|line| line.contains("SetConfig")
                && line.contains("INVALID_ARGUMENT")
                && line.contains("duration_ms")
                && line.contains("peer")),
            "{}",
            lines.join("\n")
        );
        assert!(lines.iter().any(|line| line.contains("cache")));
        if json {
            for line in &lines {
                let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
                assert!(parsed.is_ok(), "not JSON: {line}");
            }
        }
    }
}
