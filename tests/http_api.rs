//! The HTTP surface over real connections: raw HTTP/1.1 requests as `curl`
//! sends them and HTTP/2 with prior knowledge, probes that follow the gRPC
//! probes through start-up, a failing critical check and shutdown, the
//! JSON health report and its tokens, and clear errors for what it does
//! not serve.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use support::{TestDb, TestServer, serve_args, wait_for_probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const READER: &str = "read-token-for-http-tests";

/// One answer: status code, headers (lower-case names) and body.
#[derive(Debug)]
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }
}

/// Sends `request` (a whole HTTP/1.1 request) as written and reads the
/// answer until the server closes.
async fn raw(addr: SocketAddr, request: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("an answer within 10 s")
        .expect("read answer");
    let text = String::from_utf8(bytes).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.lines();
    let status = lines.next().expect("status line");
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("status line {status:?}"));
    assert!(status.starts_with("HTTP/1.1 "), "{status:?}");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let body = if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        code,
        headers,
        body,
    }
}

/// The body of a chunked HTTP/1.1 answer.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// `GET path` as curl sends it, with an optional bearer token.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    raw(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n{authorization}Connection: close\r\n\r\n"
        ),
    )
    .await
}

/// `GET path` over HTTP/2 with prior knowledge (h2c), as gRPC clients and
/// `curl --http2-prior-knowledge` connect.
async fn get_h2(addr: SocketAddr, path: &str) -> (u16, String) {
    h2(addr, "GET", path, &[], "").await
}

/// Any request over HTTP/2 with prior knowledge: method, path, headers and
/// body; the status code and the body.
async fn h2(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = sender.send_request(request).await.expect("HTTP/2 answer");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    connection.abort();
    (code, String::from_utf8(body.to_vec()).expect("UTF-8"))
}

/// A peer that accepts connections and closes them at once: an HTTP check
/// against it fails on every attempt.
async fn slamming_peer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    addr
}

async fn start(db: &TestDb, edit: impl FnOnce(&mut readyd::settings::ServeArgs)) -> TestServer {
    let mut args = serve_args(&db.url);
    args.http_listen = "127.0.0.1:0".into();
    edit(&mut args);
    TestServer::start(args).await
}

#[tokio::test]
async fn probes_answer_like_the_grpc_probes_over_http1_and_http2() {
    let db = TestDb::new().await;
    let server = start(&db, |_| {}).await;
    let http = server.http_addr.expect("an HTTP address");
    wait_for_probe(server.channel().await, "readiness", ServingStatus::Serving).await;

    for path in ["/livez", "/readyz", "/startupz"] {
        let answer = get(http, path, None).await;
        assert_eq!((answer.code, answer.body.as_str()), (200, "ok\n"), "{path}");
        assert_eq!(
            answer.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert_eq!(get_h2(http, path).await, (200, "ok\n".to_owned()), "{path}");
    }
    let verbose = get(http, "/readyz?verbose", None).await;
    assert_eq!(verbose.code, 200);
    assert_eq!(
        verbose.body,
        "[+]startup ok\n[+]shutdown ok\n[+]database ok\nreadyz check passed\n"
    );
    assert_eq!(
        get(http, "/livez?verbose=1", None).await.body,
        "[+]ping ok\nlivez check passed\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_failing_critical_check_makes_readyz_503_naming_it_without_its_error() {
    let db = TestDb::new().await;
    let peer = slamming_peer().await;
    let server = start(&db, |args| {
        args.checks = vec![format!(
            "payments=http://user:hunter2@{peer}/healthz?interval=100ms&timeout=500ms&failures=1"
        )];
    })
    .await;
    let http = server.http_addr.expect("an HTTP address");
    let channel = server.channel().await;
    wait_for_probe(channel.clone(), "startup", ServingStatus::Serving).await;
    wait_for_probe(channel.clone(), "dep.payments", ServingStatus::NotServing).await;
    wait_for_probe(channel, "readiness", ServingStatus::NotServing).await;

    let ready = get(http, "/readyz", None).await;
    assert_eq!(ready.code, 503, "{ready:?}");
    assert_eq!(
        ready.body,
        "[-]payments failed: reason withheld\nreadyz check failed\n"
    );
    let verbose = get(http, "/readyz?verbose", None).await;
    assert_eq!(verbose.code, 503);
    assert!(verbose.body.contains("[+]database ok\n"), "{verbose:?}");
    for secret in ["hunter2", "user:", &peer.to_string()] {
        assert!(!verbose.body.contains(secret), "{verbose:?}");
    }
    // Alive and started all the same: the kubelet must not restart it.
    assert_eq!(get(http, "/livez", None).await.code, 200);
    assert_eq!(get(http, "/startupz", None).await.code, 200);

    // The full report is data, not an error: 503 because it is UNHEALTHY,
    // with the check, its target without the password, and its error.
    let health = get(http, "/api/health", None).await;
    assert_eq!(health.code, 503, "{health:?}");
    assert_eq!(health.header("content-type"), Some("application/json"));
    let report = health.json();
    assert_eq!(report["status"], "HEALTH_STATUS_UNHEALTHY", "{report}");
    let payments = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|check| check["name"] == "payments")
        .expect("the payments check");
    assert_eq!(payments["state"], "CHECK_STATE_FAILING", "{payments}");
    assert_eq!(payments["critical"], true);
    assert!(
        !payments["lastError"]
            .as_str()
            .expect("lastError")
            .is_empty()
    );
    assert!(!health.body.contains("hunter2"), "{}", health.body);
    server.stop().await;
}

#[tokio::test]
async fn api_health_is_the_grpc_report_in_the_protobuf_json_mapping() {
    let db = TestDb::new().await;
    let server = start(&db, |_| {}).await;
    let http = server.http_addr.expect("an HTTP address");
    wait_for_probe(server.channel().await, "readiness", ServingStatus::Serving).await;

    let answer = get(http, "/api/health", None).await;
    assert_eq!(answer.code, 200, "{answer:?}");
    let report = answer.json();
    assert_eq!(report["status"], "HEALTH_STATUS_HEALTHY", "{report}");
    assert_eq!(report["readydVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["environment"], "test");
    assert_eq!(report["instance"], "test-instance");
    assert_eq!(report["maintenanceMode"], false);
    let uptime = report["uptime"].as_str().expect("uptime is a string");
    assert!(uptime.ends_with('s'), "{uptime}");
    let timestamp = report["timestamp"].as_str().expect("timestamp");
    assert!(
        chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "{timestamp}"
    );
    let database = &report["checks"][0];
    assert_eq!(database["name"], "database", "{report}");
    assert_eq!(database["state"], "CHECK_STATE_PASSING");
    assert!(
        database["latency"]
            .as_str()
            .is_some_and(|l| l.ends_with('s')),
        "{database}"
    );
    let (code, body) = get_h2(http, "/api/health").await;
    assert_eq!(code, 200);
    let over_h2: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(over_h2["status"], "HEALTH_STATUS_HEALTHY");
    server.stop().await;
}

#[tokio::test]
async fn a_read_token_guards_api_health_but_never_the_probes() {
    let db = TestDb::new().await;
    let server = start(&db, |args| {
        args.read_token = Some(READER.into());
    })
    .await;
    let http = server.http_addr.expect("an HTTP address");
    wait_for_probe(server.channel().await, "readiness", ServingStatus::Serving).await;

    let refused = get(http, "/api/health", None).await;
    assert_eq!(refused.code, 401, "{refused:?}");
    assert_eq!(refused.json()["code"], "UNAUTHENTICATED");
    assert!(
        refused.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("Bearer")),
        "{refused:?}"
    );
    let wrong = get(http, "/api/health", Some("a-guess")).await;
    assert_eq!(wrong.code, 403, "{wrong:?}");
    assert_eq!(wrong.json()["code"], "PERMISSION_DENIED");
    assert!(!wrong.body.contains("a-guess"), "{wrong:?}");
    assert_eq!(get(http, "/api/health", Some(READER)).await.code, 200);
    assert_eq!(get(http, "/readyz", None).await.code, 200);
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_methods_and_garbage_get_clear_errors() {
    let db = TestDb::new().await;
    let server = start(&db, |_| {}).await;
    let http = server.http_addr.expect("an HTTP address");

    let missing = get(http, "/api/nothing-here", None).await;
    assert_eq!(missing.code, 404, "{missing:?}");
    assert_eq!(missing.json()["code"], "NOT_FOUND");
    assert!(
        missing.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("/api/nothing-here")),
        "{missing:?}"
    );
    let post = raw(
        http,
        "POST /livez HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert_eq!(post.code, 405, "{post:?}");
    assert_eq!(post.json()["code"], "METHOD_NOT_ALLOWED");
    let garbage = raw(http, "NOT HTTP AT ALL\r\n\r\n").await;
    assert_eq!(garbage.code, 400, "{garbage:?}");
    // Still serving after all of it.
    assert_eq!(get(http, "/livez", None).await.code, 200);
    server.stop().await;
}

#[tokio::test]
async fn while_leaving_readyz_is_503_and_livez_still_200() {
    let db = TestDb::new().await;
    let mut server = start(&db, |args| {
        // Long enough that the test never races it.
        args.drain_delay = "10m".into();
    })
    .await;
    let http = server.http_addr.expect("an HTTP address");
    let channel = server.channel().await;
    wait_for_probe(channel.clone(), "readiness", ServingStatus::Serving).await;
    server.begin_shutdown();
    wait_for_probe(channel, "readiness", ServingStatus::NotServing).await;

    let ready = get(http, "/readyz", None).await;
    assert_eq!(ready.code, 503, "{ready:?}");
    assert_eq!(
        ready.body,
        "[-]shutdown shutting down\nreadyz check failed\n"
    );
    assert_eq!(get(http, "/livez", None).await.code, 200);
    assert_eq!(get(http, "/startupz", None).await.code, 200);
}

#[tokio::test]
async fn a_taken_http_port_is_a_startup_error_naming_the_setting() {
    let db = TestDb::new().await;
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut args = serve_args(&db.url);
    args.http_listen = taken.local_addr().expect("addr").to_string();
    let report = match readyd::startup::prepare(&args).await {
        Ok(_) => panic!("start-up must fail on a taken --http-listen port"),
        Err(report) => report.to_string(),
    };
    assert!(
        report.contains("--http-listen (READYD_HTTP_LISTEN)"),
        "{report}"
    );
    assert!(report.contains("cannot listen on"), "{report}");
}

const ADMIN: &str = "admin-token-for-http-tests";

/// A three-variant string flag: Germany gets green, everyone else red.
async fn upsert_button_color(channel: tonic::transport::Channel) {
    use readyd::api::pb::readyd::v1 as pb;
    let variant = |name: &str| pb::FlagVariant {
        name: name.into(),
        value: Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(format!(
                "{name}-button"
            ))),
        }),
    };
    let serve = |name: &str| {
        Some(pb::Serve {
            serve: Some(pb::serve::Serve::Variant(name.into())),
        })
    };
    let mut request = tonic::Request::new(pb::UpsertFlagRequest {
        key: "button_color".into(),
        enabled: Some(true),
        value_type: pb::FlagValueType::String.into(),
        on_value: Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("on".into())),
        }),
        off_value: Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("off".into())),
        }),
        targeting: Some(pb::FlagTargeting {
            variants: vec![variant("red"), variant("green")],
            rules: vec![pb::TargetingRule {
                name: "germany".into(),
                constraints: vec![pb::Constraint {
                    attribute: "country".into(),
                    operator: "in".into(),
                    values: vec!["DE".into()],
                    ..Default::default()
                }],
                serve: serve("green"),
                ..Default::default()
            }],
            default_serve: serve("red"),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("header"),
    );
    readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient::new(channel)
        .upsert_flag(request)
        .await
        .expect("upsert button_color");
}

#[tokio::test]
async fn feature_flag_endpoints_answer_as_list_flags_and_evaluate_flag() {
    use readyd::api::pb::readyd::v1 as pb;
    let db = TestDb::new().await;
    let server = start(&db, |args| args.admin_token = Some(ADMIN.into())).await;
    let http = server.http_addr.expect("an HTTP address");
    let channel = server.channel().await;
    upsert_button_color(channel.clone()).await;

    let listed = get(http, "/api/feature-flags?prefix=button", None).await;
    assert_eq!(listed.code, 200, "{listed:?}");
    let listed = listed.json();
    let flags = listed["flags"].as_array().expect("flags");
    assert_eq!(flags.len(), 1, "{listed}");
    assert_eq!(flags[0]["key"], "button_color");
    assert_eq!(flags[0]["valueType"], "FLAG_VALUE_TYPE_STRING");
    assert!(
        flags[0]["version"].is_string(),
        "int64 is a string: {listed}"
    );
    assert_eq!(
        flags[0]["targeting"]["rules"][0]["constraints"][0]["values"][0],
        "DE"
    );
    let all = get(http, "/api/feature-flags", None).await.json();
    assert!(
        all["flags"].as_array().expect("flags").len() > 1,
        "the seeded flags too: {all}"
    );

    // Each answer equals EvaluateFlag's for the same context.
    let mut grpc = pb::flag_service_client::FlagServiceClient::new(channel);
    for (query, country) in [("user_id=u1&country=DE", Some("DE")), ("user_id=u2", None)] {
        let answer = get(
            http,
            &format!("/api/feature-flags/button_color?{query}"),
            None,
        )
        .await;
        assert_eq!(answer.code, 200, "{answer:?}");
        let answer = answer.json();
        let mut context = pb::EvaluationContext {
            user_id: query[8..10].to_owned(),
            ..Default::default()
        };
        if let Some(country) = country {
            context.attributes = Some(prost_types::Struct {
                fields: [(
                    "country".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(country.into())),
                    },
                )]
                .into(),
            });
        }
        let expected = grpc
            .evaluate_flag(pb::EvaluateFlagRequest {
                key: "button_color".into(),
                context: Some(context),
                explain: false,
            })
            .await
            .expect("EvaluateFlag")
            .into_inner();
        assert_eq!(answer["variant"], expected.variant, "{answer}");
        assert_eq!(answer["reason"], expected.reason().as_str_name());
        assert_eq!(
            answer["value"],
            format!("{}-button", expected.variant),
            "{answer}"
        );
    }
    let explained = get(
        http,
        "/api/feature-flags/button_color?user_id=u1&country=FR&explain=true",
        None,
    )
    .await
    .json();
    assert_eq!(explained["variant"], "red");
    assert!(
        !explained["explanation"]
            .as_array()
            .expect("explanation")
            .is_empty(),
        "{explained}"
    );

    let missing = get(http, "/api/feature-flags/no_such_flag", None).await;
    assert_eq!(missing.code, 404, "{missing:?}");
    assert_eq!(missing.json()["code"], "NOT_FOUND");
    let bad_key = get(http, "/api/feature-flags/Bad%20Key!", None).await;
    assert_eq!(bad_key.code, 400, "{bad_key:?}");
    assert_eq!(bad_key.json()["code"], "INVALID_ARGUMENT");
    let bad_size = get(http, "/api/feature-flags?page_size=many", None).await;
    assert_eq!(bad_size.code, 400, "{bad_size:?}");
    assert!(bad_size.body.contains("page_size"), "{bad_size:?}");
    server.stop().await;
}

#[tokio::test]
async fn api_config_redacts_sensitive_values_unless_the_admin_token_is_presented() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO app_config (key, environment, value, is_sensitive) VALUES \
         ('payments.timeout_ms', '*', '2500', false), \
         ('payments.api_key', 'test', '\"sk_live_very_secret\"', true)",
    )
    .execute(&db.pool)
    .await
    .expect("config rows");
    let server = start(&db, |args| args.admin_token = Some(ADMIN.into())).await;
    let http = server.http_addr.expect("an HTTP address");

    let public = get(http, "/api/config?prefix=payments.", None).await;
    assert_eq!(public.code, 200, "{public:?}");
    assert!(!public.body.contains("sk_live_very_secret"), "{public:?}");
    let entries = public.json()["entries"].clone();
    let entries = entries.as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{entries:?}");
    let timeout = entries
        .iter()
        .find(|e| e["key"] == "payments.timeout_ms")
        .expect("timeout row");
    assert_eq!(timeout["value"], 2500.0, "{timeout}");
    let admin = get(http, "/api/config?prefix=payments.", Some(ADMIN)).await;
    assert_eq!(admin.code, 200, "{admin:?}");
    assert!(admin.body.contains("sk_live_very_secret"), "{admin:?}");
    // Another environment's rows are the admin's to list.
    let other = get(http, "/api/config?environment=prod", None).await;
    assert_eq!(other.code, 403, "{other:?}");
    assert_eq!(other.json()["code"], "PERMISSION_DENIED");
    server.stop().await;
}

/// `POST path` with a JSON body, optional token and extra header lines.
async fn post(
    addr: SocketAddr,
    path: &str,
    body: &str,
    token: Option<&str>,
    extra: &str,
) -> Answer {
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

const JSON: &str = "Content-Type: application/json\r\n";

#[tokio::test]
async fn posts_change_flags_and_config_with_the_admin_token_only() {
    let db = TestDb::new().await;
    let server = start(&db, |args| args.admin_token = Some(ADMIN.into())).await;
    let http = server.http_addr.expect("an HTTP address");
    let flag = r#"{"key": "http_flag", "enabled": true, "valueType": "FLAG_VALUE_TYPE_BOOL", "rolloutPercentage": 100}"#;
    let before = (
        db.count("feature_flags").await,
        db.count("app_config").await,
    );

    // Refused before the body is read, and nothing changes.
    let refused = post(http, "/api/feature-flags", flag, None, JSON).await;
    assert_eq!(refused.code, 401, "{refused:?}");
    assert_eq!(refused.json()["code"], "UNAUTHENTICATED");
    let wrong = post(http, "/api/feature-flags", flag, Some("guess"), JSON).await;
    assert_eq!(wrong.code, 403, "{wrong:?}");
    for (body, extra, code) in [
        ("{not json", JSON, 400),
        (r#"{"key": 5}"#, JSON, 400),
        (r#"{"key": "x", "noSuchField": 1}"#, JSON, 400),
        (flag, "Content-Type: text/plain\r\n", 415),
        (r#"{"key": "Bad Key!", "enabled": true}"#, JSON, 400),
    ] {
        let answer = post(http, "/api/feature-flags", body, Some(ADMIN), extra).await;
        assert_eq!(answer.code, code, "{body}: {answer:?}");
        assert!(answer.json()["message"].is_string(), "{answer:?}");
    }
    let huge = format!(
        r#"{{"key": "big", "description": "{}"}}"#,
        "x".repeat(readyd::http::MAX_BODY_BYTES)
    );
    let too_large = post(http, "/api/feature-flags", &huge, Some(ADMIN), JSON).await;
    assert_eq!(too_large.code, 413, "{:?}", too_large.code);
    assert_eq!(
        (
            db.count("feature_flags").await,
            db.count("app_config").await
        ),
        before,
        "refused posts changed the database"
    );

    let created = post(
        http,
        "/api/feature-flags",
        flag,
        Some(ADMIN),
        "Content-Type: application/json\r\nX-Readyd-Actor: alice@http\r\n",
    )
    .await;
    assert_eq!(created.code, 200, "{created:?}");
    let created = created.json();
    assert_eq!(created["flag"]["key"], "http_flag", "{created}");
    assert_eq!(created["created"], true);
    let actor: String =
        sqlx::query_scalar("SELECT updated_by FROM feature_flags WHERE key = 'http_flag'")
            .fetch_one(&db.pool)
            .await
            .expect("the flag row");
    assert_eq!(actor, "alice@http");
    let evaluated = get(http, "/api/feature-flags/http_flag?user_id=u1", None)
        .await
        .json();
    assert_eq!(evaluated["value"], true, "{evaluated}");

    let set = post(
        http,
        "/api/config",
        r#"{"key": "http.limit", "value": 7}"#,
        Some(ADMIN),
        JSON,
    )
    .await;
    assert_eq!(set.code, 200, "{set:?}");
    let value: serde_json::Value =
        sqlx::query_scalar("SELECT value FROM app_config WHERE key = 'http.limit'")
            .fetch_one(&db.pool)
            .await
            .expect("the config row");
    assert_eq!(value, serde_json::json!(7));
    server.stop().await;
}

#[tokio::test]
async fn a_follower_serves_reads_and_answers_writes_503() {
    const REPLICATION: &str = "replication-token-for-http-tests";
    let db = TestDb::new().await;
    let upstream = start(&db, |args| {
        args.admin_token = Some(ADMIN.into());
        args.replication_token = Some(REPLICATION.into());
    })
    .await;
    let data_dir = std::env::temp_dir().join(format!(
        "readyd-http-follower-{}-{}",
        std::process::id(),
        upstream.addr.port()
    ));
    let mut args = serve_args("");
    args.database.database_url = None;
    args.database.data_dir = data_dir.clone();
    args.upstream = Some(upstream.url());
    args.replication_token = Some(REPLICATION.into());
    args.http_listen = "127.0.0.1:0".into();
    args.instance = Some("http-follower".into());
    let follower = TestServer::start(args).await;
    let http = follower.http_addr.expect("an HTTP address");
    wait_for_probe(
        follower.channel().await,
        "readiness",
        ServingStatus::Serving,
    )
    .await;

    let flags = get(http, "/api/feature-flags", None).await;
    assert_eq!(flags.code, 200, "{flags:?}");
    let rows = db.count("app_config").await;
    let write = post(
        http,
        "/api/config",
        r#"{"key": "from.follower", "value": 1}"#,
        Some(ADMIN),
        JSON,
    )
    .await;
    assert_eq!(write.code, 503, "{write:?}");
    assert_eq!(write.json()["code"], "UNAVAILABLE");
    assert_eq!(db.count("app_config").await, rows);
    follower.stop().await;
    upstream.stop().await;
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test]
async fn ofrep_evaluates_as_evaluate_flag_with_its_error_shapes_and_etags() {
    use readyd::api::pb::readyd::v1 as pb;
    let db = TestDb::new().await;
    let server = start(&db, |args| {
        args.admin_token = Some(ADMIN.into());
        args.read_token = Some(READER.into());
    })
    .await;
    let http = server.http_addr.expect("an HTTP address");
    let channel = server.channel().await;
    upsert_button_color(channel.clone()).await;
    let key = "X-API-Key: read-token-for-http-tests\r\n";
    let with_key = format!("{JSON}{key}");

    // Tokens: the read token, as a bearer token or an X-API-Key.
    let body = r#"{"context": {"targetingKey": "u1", "country": "DE"}}"#;
    let path = "/ofrep/v1/evaluate/flags/button_color";
    assert_eq!(post(http, path, body, None, JSON).await.code, 401);
    assert_eq!(post(http, path, body, Some("guess"), JSON).await.code, 403);
    let bearer = post(http, path, body, Some(READER), JSON).await;
    assert_eq!(bearer.code, 200, "{bearer:?}");
    let answer = post(http, path, body, None, &with_key).await;
    assert_eq!(answer.code, 200, "{answer:?}");
    let answer = answer.json();
    assert_eq!(answer, bearer.json());
    assert_eq!(answer["key"], "button_color");
    assert_eq!(answer["value"], "green-button", "{answer}");
    assert_eq!(answer["variant"], "green");
    assert_eq!(answer["reason"], "TARGETING_MATCH");
    assert_eq!(answer["metadata"]["provider"], "readyd");

    // The same as EvaluateFlag, for contexts on either side of the rule.
    let mut grpc = pb::flag_service_client::FlagServiceClient::new(channel.clone());
    for (user, country) in [("u1", "DE"), ("u2", "FR")] {
        let body =
            format!(r#"{{"context": {{"targetingKey": "{user}", "country": "{country}"}}}}"#);
        let ofrep = post(http, path, &body, None, &with_key).await.json();
        let mut request = tonic::Request::new(pb::EvaluateFlagRequest {
            key: "button_color".into(),
            context: Some(pb::EvaluationContext {
                user_id: user.into(),
                roles: Vec::new(),
                attributes: Some(prost_types::Struct {
                    fields: [(
                        "country".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(country.into())),
                        },
                    )]
                    .into(),
                }),
            }),
            explain: false,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {READER}").parse().expect("header"),
        );
        let expected = grpc
            .evaluate_flag(request)
            .await
            .expect("EvaluateFlag")
            .into_inner();
        assert_eq!(ofrep["variant"], expected.variant, "{ofrep}");
        assert_eq!(ofrep["value"], format!("{}-button", expected.variant));
    }

    // Errors in OFREP's shapes.
    let missing = post(http, "/ofrep/v1/evaluate/flags/nope", body, None, &with_key).await;
    assert_eq!(missing.code, 404, "{missing:?}");
    assert_eq!(missing.json()["errorCode"], "FLAG_NOT_FOUND");
    assert_eq!(missing.json()["key"], "nope");
    let parse = post(http, path, "{not json", None, &with_key).await;
    assert_eq!(parse.code, 400, "{parse:?}");
    assert_eq!(parse.json()["errorCode"], "PARSE_ERROR");
    let invalid = post(
        http,
        path,
        r#"{"context": {"targetingKey": 7}}"#,
        None,
        &with_key,
    )
    .await;
    assert_eq!(invalid.code, 400, "{invalid:?}");
    assert_eq!(invalid.json()["errorCode"], "INVALID_CONTEXT");
    assert_eq!(invalid.json()["key"], "button_color");

    // Bulk: an ETag; the same answers are 304; a change makes it 200.
    let bulk_path = "/ofrep/v1/evaluate/flags";
    let bulk = post(http, bulk_path, body, None, &with_key).await;
    assert_eq!(bulk.code, 200, "{bulk:?}");
    let etag = bulk.header("etag").expect("an ETag").to_owned();
    let flags = bulk.json()["flags"].clone();
    let button = flags
        .as_array()
        .expect("flags")
        .iter()
        .find(|flag| flag["key"] == "button_color")
        .expect("button_color in the bulk answer")
        .clone();
    assert_eq!(button, answer);
    let unchanged = post(
        http,
        bulk_path,
        body,
        None,
        &format!("{with_key}If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(unchanged.code, 304, "{unchanged:?}");
    assert!(unchanged.body.is_empty());
    // The body limit holds for the bulk evaluation too (answered before
    // the router), in OFREP's error shape.
    let huge = format!(
        r#"{{"context": {{"targetingKey": "{}"}}}}"#,
        "x".repeat(readyd::http::MAX_BODY_BYTES)
    );
    for path in [bulk_path, "/ofrep/v1/evaluate/flags/button_color"] {
        let too_large = post(http, path, &huge, None, &with_key).await;
        assert_eq!(too_large.code, 413, "{path}: {too_large:?}");
        assert_eq!(too_large.json()["errorCode"], "PARSE_ERROR", "{path}");
    }
    // Other methods on the bulk path are the router's.
    let wrong_method = get(http, bulk_path, None).await;
    assert_eq!(wrong_method.code, 405, "{wrong_method:?}");
    // Another context answers differently, so its tag differs.
    let other = post(
        http,
        bulk_path,
        r#"{"context": {"targetingKey": "u1", "country": "FR"}}"#,
        None,
        &format!("{with_key}If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(other.code, 200, "{other:?}");
    assert_ne!(other.header("etag"), Some(etag.as_str()));
    // A change to any flag: 200 and a new tag.
    sqlx::query("UPDATE feature_flags SET enabled = NOT enabled WHERE key = 'dark_mode'")
        .execute(&db.pool)
        .await
        .expect("change a flag");
    let mut changed = None;
    for _ in 0..400 {
        let answer = post(
            http,
            bulk_path,
            body,
            None,
            &format!("{with_key}If-None-Match: {etag}\r\n"),
        )
        .await;
        if answer.code == 200 {
            changed = Some(answer);
            break;
        }
        // The change reaches this server through the change feed.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let changed = changed.expect("a changed flag makes the bulk answer 200 within 20 s");
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    server.stop().await;
}

/// A bulk answer that depends on the clock is never answered from memory:
/// when a rule's time comes, a poll with the old ETag gets the new answer
/// though no flag changed (the snapshot's version is the same).
#[tokio::test]
async fn a_bulk_answer_that_reads_the_clock_is_evaluated_on_every_poll() {
    use readyd::api::pb::readyd::v1 as pb;
    let db = TestDb::new().await;
    let server = start(&db, |args| args.admin_token = Some(ADMIN.into())).await;
    let http = server.http_addr.expect("an HTTP address");
    // On from three seconds from now.
    let from = chrono::Utc::now() + chrono::Duration::seconds(3);
    let bool_value = |b: bool| {
        Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::BoolValue(b)),
        })
    };
    let serve = |name: &str| {
        Some(pb::Serve {
            serve: Some(pb::serve::Serve::Variant(name.into())),
        })
    };
    let mut request = tonic::Request::new(pb::UpsertFlagRequest {
        key: "launch_banner".into(),
        enabled: Some(true),
        value_type: pb::FlagValueType::Bool.into(),
        on_value: bool_value(true),
        off_value: bool_value(false),
        targeting: Some(pb::FlagTargeting {
            rules: vec![pb::TargetingRule {
                name: "launched".into(),
                constraints: vec![pb::Constraint {
                    attribute: "current_time".into(),
                    operator: "date_after".into(),
                    values: vec![from.to_rfc3339()],
                    ..Default::default()
                }],
                serve: serve("on"),
                ..Default::default()
            }],
            default_serve: serve("off"),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("header"),
    );
    pb::flag_service_client::FlagServiceClient::new(server.channel().await)
        .upsert_flag(request)
        .await
        .expect("upsert launch_banner");

    let bulk_path = "/ofrep/v1/evaluate/flags";
    let body = r#"{"context": {"targetingKey": "u1"}}"#;
    let first = post(http, bulk_path, body, None, JSON).await;
    assert_eq!(first.code, 200, "{first:?}");
    let banner = |answer: &Answer| {
        answer.json()["flags"]
            .as_array()
            .and_then(|flags| flags.iter().find(|f| f["key"] == "launch_banner"))
            .map(|flag| flag["variant"].clone())
    };
    let etag = first.header("etag").expect("an ETag").to_owned();
    let poll = format!("{JSON}If-None-Match: {etag}\r\n");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let changed = loop {
        let answer = post(http, bulk_path, body, None, &poll).await;
        if answer.code == 200 {
            break answer;
        }
        assert_eq!(answer.code, 304, "{answer:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rule's time came and went, and every poll was still 304"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if chrono::Utc::now() <= from {
        panic!("the answer changed before the rule's time: {changed:?}");
    }
    assert_eq!(banner(&first), Some(serde_json::json!("off")), "{first:?}");
    assert_eq!(
        banner(&changed),
        Some(serde_json::json!("on")),
        "{changed:?}"
    );
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    server.stop().await;
}

#[tokio::test]
async fn cors_answers_preflights_for_listed_origins_only() {
    let db = TestDb::new().await;
    let server = start(&db, |args| {
        args.cors_origin = vec!["https://app.example.com".into()];
    })
    .await;
    let http = server.http_addr.expect("an HTTP address");
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type, x-api-key, if-none-match\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let allowed = raw(http, &preflight("https://app.example.com")).await;
    assert_eq!(allowed.code, 200, "{allowed:?}");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let headers = allowed
        .header("access-control-allow-headers")
        .expect("allowed headers")
        .to_lowercase();
    for wanted in [
        "content-type",
        "x-api-key",
        "if-none-match",
        "authorization",
    ] {
        assert!(headers.contains(wanted), "{headers}");
    }
    let other = raw(http, &preflight("https://evil.example.net")).await;
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );

    // A real call from the listed origin may read the answer and its ETag.
    let bulk = post(
        http,
        "/ofrep/v1/evaluate/flags",
        "{}",
        None,
        "Content-Type: application/json\r\nOrigin: https://app.example.com\r\n",
    )
    .await;
    assert_eq!(bulk.code, 200, "{bulk:?}");
    assert_eq!(
        bulk.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        bulk.header("access-control-expose-headers")
            .is_some_and(|h| h.to_lowercase().contains("etag")),
        "{bulk:?}"
    );
    server.stop().await;

    // Without --cors-origin, no CORS headers at all.
    let plain = start(&db, |_| {}).await;
    let http = plain.http_addr.expect("an HTTP address");
    let refused = raw(http, &preflight("https://app.example.com")).await;
    assert_eq!(
        refused.header("access-control-allow-origin"),
        None,
        "{refused:?}"
    );
    plain.stop().await;
}

const CLIENT: &str = "client-token-for-http-tests";
const OTHER_CLIENT: &str = "second-client-token-for-http-tests";

#[tokio::test]
async fn client_tokens_evaluate_client_visible_flags_only_and_never_list_them() {
    use readyd::api::pb::readyd::v1 as pb;
    let db = TestDb::new().await;
    let server = start(&db, |args| {
        args.admin_token = Some(ADMIN.into());
        args.read_token = Some(READER.into());
        args.client_token = vec![CLIENT.into(), OTHER_CLIENT.into()];
    })
    .await;
    let http = server.http_addr.expect("an HTTP address");
    let channel = server.channel().await;
    let mut grpc = pb::flag_service_client::FlagServiceClient::new(channel.clone());
    let upsert = |key: &str, client_visible: Option<bool>| {
        let mut request = tonic::Request::new(pb::UpsertFlagRequest {
            key: key.into(),
            enabled: Some(true),
            client_visible,
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN}").parse().expect("header"),
        );
        request
    };
    let shown = grpc
        .upsert_flag(upsert("new_checkout", Some(true)))
        .await
        .expect("upsert a client-visible flag")
        .into_inner();
    assert!(shown.flag.expect("the flag").client_visible);
    let hidden = grpc
        .upsert_flag(upsert("internal_tool", None))
        .await
        .expect("upsert a flag without the mark")
        .into_inner();
    assert!(
        !hidden.flag.expect("the flag").client_visible,
        "off by default"
    );
    // A write that does not say keeps the mark.
    let kept = grpc
        .upsert_flag(upsert("new_checkout", None))
        .await
        .expect("rewrite without the mark")
        .into_inner();
    assert!(kept.flag.expect("the flag").client_visible, "kept");

    // OFREP: either client token evaluates the marked flag; the other one
    // does not exist for it, alone or in bulk.
    let body = r#"{"context": {"targetingKey": "u1"}}"#;
    for token in [CLIENT, OTHER_CLIENT] {
        let answer = post(
            http,
            "/ofrep/v1/evaluate/flags/new_checkout",
            body,
            Some(token),
            JSON,
        )
        .await;
        assert_eq!(answer.code, 200, "{answer:?}");
        assert_eq!(answer.json()["value"], true);
    }
    let hidden = post(
        http,
        "/ofrep/v1/evaluate/flags/internal_tool",
        body,
        Some(CLIENT),
        JSON,
    )
    .await;
    assert_eq!(hidden.code, 404, "{hidden:?}");
    assert_eq!(hidden.json()["errorCode"], "FLAG_NOT_FOUND");
    let keys = |answer: &Answer| -> Vec<String> {
        answer.json()["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .map(|flag| flag["key"].as_str().expect("key").to_owned())
            .collect()
    };
    let bulk = post(http, "/ofrep/v1/evaluate/flags", body, Some(CLIENT), JSON).await;
    assert_eq!(bulk.code, 200, "{bulk:?}");
    assert_eq!(keys(&bulk), ["new_checkout"]);
    let bulk = post(http, "/ofrep/v1/evaluate/flags", body, Some(READER), JSON).await;
    let all = keys(&bulk);
    assert!(
        all.len() > 2 && all.iter().any(|key| key == "internal_tool"),
        "the read token sees every flag: {all:?}"
    );
    let x_api_key = format!("{JSON}X-API-Key: {CLIENT}\r\n");
    let bulk = post(http, "/ofrep/v1/evaluate/flags", body, None, &x_api_key).await;
    assert_eq!(keys(&bulk), ["new_checkout"]);

    // The plain evaluation endpoint: the same rule, and no explain path.
    let answer = get(
        http,
        "/api/feature-flags/new_checkout?user_id=u1",
        Some(CLIENT),
    )
    .await;
    assert_eq!(answer.code, 200, "{answer:?}");
    assert_eq!(answer.json()["value"], true);
    let answer = get(
        http,
        "/api/feature-flags/internal_tool?user_id=u1",
        Some(CLIENT),
    )
    .await;
    assert_eq!(answer.code, 404, "{answer:?}");
    assert_eq!(
        answer.json()["message"],
        "flag \"internal_tool\" does not exist"
    );
    let answer = get(
        http,
        "/api/feature-flags/new_checkout?explain=true",
        Some(CLIENT),
    )
    .await;
    assert_eq!(answer.code, 403, "{answer:?}");

    // Never a definition: no list, no GetFlag, no gRPC evaluation.
    let list = get(http, "/api/feature-flags", Some(CLIENT)).await;
    assert_eq!(list.code, 403, "{list:?}");
    assert!(!list.body.contains("new_checkout"), "{list:?}");
    let mut request = tonic::Request::new(pb::GetFlagRequest {
        key: "new_checkout".into(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {CLIENT}").parse().expect("header"),
    );
    let refused = grpc.get_flag(request).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("client token"),
        "{}",
        refused.message()
    );
    let config = get(http, "/api/config", Some(CLIENT)).await;
    assert_eq!(config.code, 403, "{config:?}");
}

/// Opens `path` as a stream over HTTP/1.1 and returns the connection once
/// the head has arrived, with what was read so far.
async fn open_stream(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send request");
    let seen = read_until(&mut stream, String::new(), "\r\n\r\n").await;
    (stream, seen)
}

/// Reads from `stream` onto `seen` until it holds `needle` (10 s at most).
async fn read_until(stream: &mut TcpStream, mut seen: String, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        let mut buffer = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 10 s; got {seen:?}"))
            .expect("read");
        assert!(read > 0, "closed before {needle:?}; got {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    seen
}

#[tokio::test]
async fn the_bulk_answer_names_an_event_stream_that_says_refetch_when_a_flag_changes() {
    use readyd::api::pb::readyd::v1 as pb;
    let db = TestDb::new().await;
    let server = start(&db, |args| {
        args.admin_token = Some(ADMIN.into());
        args.read_token = Some(READER.into());
        args.client_token = vec![CLIENT.into()];
    })
    .await;
    let http = server.http_addr.expect("an HTTP address");
    let body = r#"{"context": {"targetingKey": "u1"}}"#;
    let bulk = post(http, "/ofrep/v1/evaluate/flags", body, Some(CLIENT), JSON).await;
    assert_eq!(bulk.code, 200, "{bulk:?}");
    let streams = &bulk.json()["eventStreams"];
    assert_eq!(streams[0]["type"], "sse", "{streams}");
    assert_eq!(streams[0]["inactivityDelaySec"], 120);
    let uri = streams[0]["endpoint"]["requestUri"]
        .as_str()
        .expect("a request URI")
        .to_owned();
    assert!(uri.starts_with("/ofrep/v1/events?ticket="), "{uri}");
    assert!(!uri.contains(CLIENT), "the token never travels in a URL");
    // The same ticket window: the same ETag, so a 304.
    let etag = bulk.header("etag").expect("an ETag").to_owned();
    let again = post(
        http,
        "/ofrep/v1/evaluate/flags",
        body,
        Some(CLIENT),
        &format!("{JSON}If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(again.code, 304, "{again:?}");

    // Without a ticket, or with a made-up one: refused.
    for path in [
        "/ofrep/v1/events",
        "/ofrep/v1/events?ticket=",
        "/ofrep/v1/events?ticket=99999999.00000000000000000000000000000000",
    ] {
        let refused = get(http, path, None).await;
        assert_eq!(refused.code, 401, "{path}: {refused:?}");
    }

    // With it: an event stream that says refetchEvaluation at once (what
    // changed before it opened) and on a change.
    let (mut stream, head) = open_stream(http, &uri).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let opened = read_until(&mut stream, head, "refetchEvaluation").await;
    assert_eq!(opened.matches("refetchEvaluation").count(), 1, "{opened}");
    let mut grpc = pb::flag_service_client::FlagServiceClient::new(server.channel().await);
    let mut request = tonic::Request::new(pb::UpsertFlagRequest {
        key: "banner".into(),
        enabled: Some(true),
        client_visible: Some(true),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("header"),
    );
    grpc.upsert_flag(request).await.expect("upsert");
    let seen = read_until(&mut stream, String::new(), "refetchEvaluation").await;
    let data = seen
        .lines()
        .find(|line| line.contains("refetchEvaluation"))
        .expect("the data line");
    assert!(
        seen.contains("event: message"),
        "OFREP's event name: {seen}"
    );
    let data: serde_json::Value = serde_json::from_str(data.trim_start_matches(|c: char| c != '{'))
        .unwrap_or_else(|err| panic!("{data:?}: {err}"));
    assert_eq!(data["type"], "refetchEvaluation");

    // And the refetch the provider then makes is a 200 with the new flag.
    let refetched = post(
        http,
        "/ofrep/v1/evaluate/flags",
        body,
        Some(CLIENT),
        &format!("{JSON}If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(refetched.code, 200, "{refetched:?}");
    assert!(refetched.body.contains("banner"), "{refetched:?}");
}

#[tokio::test]
async fn a_token_past_its_rate_limit_gets_429_with_retry_after_and_others_go_on() {
    let db = TestDb::new().await;
    let server = start(&db, |args| {
        args.read_token = Some(READER.into());
        args.client_token = vec![CLIENT.into(), OTHER_CLIENT.into()];
        args.client_rate_limit = 1;
    })
    .await;
    let http = server.http_addr.expect("an HTTP address");
    let body = r#"{"context": {"targetingKey": "u1"}}"#;
    // One a second: the second of a quick series is refused (a series of
    // twenty cannot take twenty seconds).
    let mut refused = None;
    for _ in 0..20 {
        let answer = post(http, "/ofrep/v1/evaluate/flags", body, Some(CLIENT), JSON).await;
        if answer.code == 429 {
            refused = Some(answer);
            break;
        }
        assert_eq!(answer.code, 200, "{answer:?}");
    }
    let refused = refused.expect("a 429 within twenty quick requests");
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=2).contains(&retry_after), "{refused:?}");
    assert_eq!(refused.json()["code"], "RESOURCE_EXHAUSTED");
    // The plain evaluation endpoint counts against the same token.
    let mut codes = Vec::new();
    for _ in 0..20 {
        let plain = get(
            http,
            "/api/feature-flags/dark_mode?user_id=u1",
            Some(CLIENT),
        )
        .await;
        codes.push(plain.code);
        if plain.code == 429 {
            break;
        }
    }
    assert_eq!(codes.last(), Some(&429), "{codes:?}");
    // Another token has its own budget; probes have none.
    let other = post(
        http,
        "/ofrep/v1/evaluate/flags",
        body,
        Some(OTHER_CLIENT),
        JSON,
    )
    .await;
    assert_eq!(other.code, 200, "{other:?}");
    assert_eq!(get(http, "/livez", None).await.code, 200);
    // A wrong token is refused before it counts, so guesses cannot fill
    // the table.
    assert_eq!(
        post(http, "/ofrep/v1/evaluate/flags", body, Some("guess"), JSON)
            .await
            .code,
        403
    );
}

#[tokio::test]
async fn oversized_or_too_many_headers_are_refused_before_any_handler() {
    let db = TestDb::new().await;
    let server = start(&db, |_| {}).await;
    let http = server.http_addr.expect("an HTTP address");
    let huge = "x".repeat(512 * 1024);
    let answer = raw_lossy(
        http,
        &format!(
            "GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Big: {huge}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{:?}",
        &answer[..answer.len().min(200)]
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_lossy(
        http,
        &format!("GET /livez HTTP/1.1\r\nHost: localhost\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{:?}",
        &answer[..answer.len().min(200)]
    );
    // The server is none the worse.
    assert_eq!(get(http, "/livez", None).await.code, 200);
}

/// Sends `request` and reads whatever comes back until the server closes
/// (or stops reading: a refused request may be cut short).
async fn raw_lossy(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn every_json_endpoint_answers_over_http2_as_over_http1() {
    let db = TestDb::new().await;
    let server = start(&db, |args| {
        args.admin_token = Some(ADMIN.into());
        args.read_token = Some(READER.into());
    })
    .await;
    let http = server.http_addr.expect("an HTTP address");
    let read = format!("Bearer {READER}");
    let admin = format!("Bearer {ADMIN}");
    let json = ("content-type", "application/json");
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("GET", "/api/feature-flags?page_size=5", read.as_str(), ""),
        (
            "GET",
            "/api/feature-flags/dark_mode?user_id=u1",
            read.as_str(),
            "",
        ),
        ("GET", "/api/config", read.as_str(), ""),
        ("GET", "/api/health", read.as_str(), ""),
        (
            "POST",
            "/api/feature-flags",
            admin.as_str(),
            r#"{"key": "over_h2", "enabled": true}"#,
        ),
        (
            "POST",
            "/api/config",
            admin.as_str(),
            r#"{"key": "over.h2", "value": 2}"#,
        ),
        (
            "POST",
            "/ofrep/v1/evaluate/flags/dark_mode",
            read.as_str(),
            r#"{"context": {"targetingKey": "u1"}}"#,
        ),
        (
            "POST",
            "/ofrep/v1/evaluate/flags",
            read.as_str(),
            r#"{"context": {"targetingKey": "u1"}}"#,
        ),
    ];
    for (method, path, token, body) in cases {
        let (code, answer) = h2(http, method, path, &[("authorization", token), json], body).await;
        assert_eq!(code, 200, "{method} {path}: {answer}");
        let answer: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|err| panic!("{path}: {err}"));
        // The same request over HTTP/1.1 answers the same (writes aside:
        // a second write makes a new version).
        if method == "GET" && path != "/api/health" {
            let again = get(http, path, Some(READER)).await;
            assert_eq!(again.json(), answer, "{path}");
        }
    }
    // And the refusals.
    let (code, _) = h2(http, "GET", "/api/feature-flags", &[], "").await;
    assert_eq!(code, 401);
    let (code, _) = h2(
        http,
        "POST",
        "/api/feature-flags",
        &[("authorization", read.as_str()), json],
        r#"{"key": "nope"}"#,
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = h2(
        http,
        "POST",
        "/api/config",
        &[("authorization", admin.as_str()), json],
        "{not json",
    )
    .await;
    assert_eq!(code, 400);
}
