//! Shutdown at the HTTP/2 level, with no timing in the assertions: a call
//! whose stream readyd took before SIGTERM finishes OK after the GOAWAY;
//! during `--drain-delay` readiness is NOT_SERVING while every call is
//! still served; after it readyd drains and exits 0.

mod support;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use nix::sys::signal::Signal;
use prost::Message;
use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use support::daemon::{Daemon, DaemonCommand};
use support::{TestDb, next, wait_for_probe};
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// A gRPC message as it travels in a DATA frame: uncompressed, its length,
/// the bytes.
fn grpc_frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(encoded.len()).expect("small message"));
    frame.put_slice(&encoded);
    frame.freeze()
}

async fn probe(channel: &Channel, name: &str) -> ServingStatus {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: name.to_owned(),
        })
        .await
        .expect("Check answers while readyd serves")
        .into_inner()
        .status()
}

async fn evaluate(channel: &Channel) -> pb::EvaluateFlagResponse {
    FlagServiceClient::new(channel.clone())
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: "dark_mode".into(),
            context: None,
        })
        .await
        .expect("EvaluateFlag is served")
        .into_inner()
}

async fn start(db: &TestDb, extra: &[&str]) -> Daemon {
    DaemonCommand::serve()
        .env("DATABASE_URL", &db.url)
        .args(extra)
        .start()
        .await
}

#[tokio::test]
async fn a_stream_taken_before_sigterm_finishes_ok_after_the_goaway() {
    let db = TestDb::new().await;
    let mut daemon = start(&db, &[]).await;
    wait_for_probe(daemon.channel().await, "readiness", ServingStatus::Serving).await;

    let tcp = TcpStream::connect(daemon.addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (mut client, mut connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
    let mut ping_pong = connection.ping_pong().expect("ping-pong");
    let connection = tokio::spawn(connection);

    // The call's HEADERS, without its body: readyd cannot answer it yet.
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/readyd.v1.FlagService/EvaluateFlag",
            daemon.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = client
        .send_request(request, false)
        .expect("open the stream");
    // The PONG comes after readyd has read every frame sent before the PING:
    // from here on the stream is readyd's.
    ping_pong
        .ping(h2::Ping::opaque())
        .await
        .expect("readyd answers the PING");

    daemon.signal(Signal::SIGTERM);
    daemon
        .wait_for_log("shutting down", Duration::from_secs(30))
        .await;
    // The client hears of the shutdown: it may not open another stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while futures_util::future::poll_fn(|cx| client.poll_ready(cx))
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no GOAWAY reached the client"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The rest of the call, after the GOAWAY: readyd still answers it.
    body.send_data(
        grpc_frame(&pb::EvaluateFlagRequest {
            explain: false,
            key: "dark_mode".into(),
            context: None,
        }),
        true,
    )
    .expect("send the body");
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("an answer in time")
        .expect("a response, not a reset");
    assert_eq!(response.status(), 200);
    let mut received = response.into_body();
    let mut message = BytesMut::new();
    while let Some(data) = received.data().await {
        let data = data.expect("body");
        let _ = received.flow_control().release_capacity(data.len());
        message.extend_from_slice(&data);
    }
    let trailers = received
        .trailers()
        .await
        .expect("trailers")
        .expect("gRPC trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..]),
        "{trailers:?}"
    );
    assert!(message.len() > 5, "a response message");
    let answer = pb::EvaluateFlagResponse::decode(&message[5..]).expect("an EvaluateFlagResponse");
    assert_eq!(answer.key, "dark_mode");

    // Its last stream done, the connection closes and readyd exits 0.
    let closed = tokio::time::timeout(Duration::from_secs(30), connection)
        .await
        .expect("readyd closes the connection")
        .expect("connection task");
    assert!(closed.is_ok(), "a clean close: {closed:?}");
    let status = daemon.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn during_the_drain_delay_readiness_is_not_serving_and_everything_is_still_served() {
    let db = TestDb::new().await;
    // Long enough that the test never races it: a second signal ends it.
    let mut daemon = start(
        &db,
        &["--drain-delay", "10m", "--http-listen", "127.0.0.1:0"],
    )
    .await;
    let before = daemon.channel().await;
    wait_for_probe(before.clone(), "readiness", ServingStatus::Serving).await;
    let http = daemon.http.expect("the HTTP surface");
    assert_eq!(http_get(http, "/readyz").await, (200, "ok\n".to_owned()));
    let mut stream = FlagServiceClient::new(before.clone())
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .expect("WatchFlags")
        .into_inner();
    next(&mut stream).await.expect("the snapshot");

    daemon.signal(Signal::SIGTERM);
    daemon
        .wait_for_log("leaving", Duration::from_secs(30))
        .await;
    wait_for_probe(before.clone(), "readiness", ServingStatus::NotServing).await;
    // The HTTP probes say the same.
    let (code, body) = http_get(http, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]shutdown"), "{body}");
    assert_eq!(http_get(http, "/livez").await.0, 200);

    // New connections are still accepted; liveness and the server still
    // serve, so the kubelet does not kill a pod that is leaving on purpose.
    let after = daemon.channel().await;
    assert_eq!(probe(&after, "readiness").await, ServingStatus::NotServing);
    assert_eq!(probe(&after, "liveness").await, ServingStatus::Serving);
    assert_eq!(probe(&after, "").await, ServingStatus::Serving);
    assert_eq!(probe(&after, "startup").await, ServingStatus::Serving);
    assert_eq!(evaluate(&after).await.key, "dark_mode");
    assert_eq!(evaluate(&before).await.key, "dark_mode");
    // Streams go on and changes still arrive.
    sqlx::query("UPDATE feature_flags SET enabled = true WHERE key = 'dark_mode'")
        .execute(&db.pool)
        .await
        .expect("change a flag");
    let change = next(&mut stream).await.expect("the change");
    let upserted = match change.event {
        Some(pb::watch_flags_response::Event::Change(pb::FlagChange {
            change: Some(pb::flag_change::Change::Upserted(flag)),
            ..
        })) => flag,
        other => panic!("a change of dark_mode, not {other:?}"),
    };
    assert_eq!(upserted.key, "dark_mode");

    // A second signal means now.
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(130), "{status:?}");
}

#[tokio::test]
async fn after_the_drain_delay_readyd_drains_and_exits_zero() {
    let db = TestDb::new().await;
    let mut daemon = start(&db, &["--drain-delay", "300ms"]).await;
    wait_for_probe(daemon.channel().await, "readiness", ServingStatus::Serving).await;
    daemon.signal(Signal::SIGTERM);
    daemon
        .wait_for_log("leaving", Duration::from_secs(30))
        .await;
    daemon
        .wait_for_log("shutting down", Duration::from_secs(30))
        .await;
    let status = daemon.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
}

/// `GET path` over HTTP/1.1: the status code and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (code, body.to_owned())
}
