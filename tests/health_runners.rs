//! The dependency check runners against real services: PostgreSQL (the test
//! server), Redis, RabbitMQ and NATS (READYD_TEST_REDIS_URL,
//! READYD_TEST_AMQP_URL, READYD_TEST_NATS_URL, else private servers: see
//! `support::servers`), and HTTP, gRPC and "hung" servers the tests start
//! themselves.
//!
//! Every runner gets a passing case and its failing cases: nothing listening
//! (a port just freed), a wrong password where the service has one, and a
//! peer that accepts the connection and never answers. That last one must hit
//! the check's timeout, and the dropped run must close its connection.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use readyd::api::grpc_health::GrpcHealth;
use readyd::api::pb::grpc_health_v1::health_server::HealthServer;
use readyd::api::streams::StreamGate;
use readyd::health::Probes;
use readyd::health::runners::Runner;
use readyd::health::spec::{CheckSpec, Target, parse_entry};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::TestDb;
use support::proxy::Target as ProxyTarget;
use support::servers::{amqp_url, nats_url, redis_url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use url::Url;

/// The password of every failing URL: it must never show in a message.
const SECRET: &str = "Sup3rSecretPw";

/// How long a hung peer is given before the run is dropped.
const HUNG_TIMEOUT: &str = "300ms";

/// The basic credentials the test HTTP server accepts on /auth.
const HTTP_USER: &str = "readyd";
const HTTP_PASSWORD: &str = "Right-Pw";
/// base64("readyd:Right-Pw").
const HTTP_BASIC: &str = "cmVhZHlkOlJpZ2h0LVB3";

/// URL shapes for the cases that replace the port (closed, hung): they
/// need no server.
const REDIS_SHAPE: &str = "redis://127.0.0.1:6379";
const AMQP_SHAPE: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NATS_SHAPE: &str = "nats://127.0.0.1:4222";

/// `url` with `password` (and a user, if it had none).
fn with_password(url: &str, password: &str) -> String {
    let mut url = Url::parse(url).expect("service url");
    if url.username().is_empty() && url.scheme() != "redis" {
        url.set_username("readyd").expect("set user");
    }
    url.set_password(Some(password)).expect("set password");
    url.to_string()
}

/// `url` with its port replaced.
fn with_port(url: &str, port: u16) -> String {
    let mut url = Url::parse(url).expect("service url");
    url.set_port(Some(port)).expect("set port");
    url.to_string()
}

/// `url` with readyd's `timeout` parameter.
fn with_timeout(url: &str, timeout: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}timeout={timeout}")
}

/// A loopback port that refuses connections for as long as this lives: a
/// socket bound to it that never listens, so no other process can take the
/// port meanwhile (a port bound and freed again could be).
struct ClosedPort {
    socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        ClosedPort { socket }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().expect("addr").port()
    }
}

/// A pool that is never used (every target but Database ignores it).
fn unused_pool() -> PgPool {
    PgPoolOptions::new()
        .connect_lazy("postgres://unused@127.0.0.1:1/unused")
        .expect("lazy pool")
}

fn spec(url: &str) -> CheckSpec {
    parse_entry(&format!("dep={url}")).expect("check spec")
}

/// The result of one run of `spec`'s runner under its timeout, scrubbed as
/// readyd scrubs it.
async fn check(spec: &CheckSpec, pool: &PgPool) -> Result<(), String> {
    let runner = Runner::new(&spec.target, Some(pool), None).expect("runner");
    let debug = format!("{runner:?}");
    assert!(!debug.contains(SECRET), "Debug shows the password: {debug}");
    match tokio::time::timeout(spec.timeout, runner.run()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => {
            assert!(
                !message.contains(SECRET),
                "the runner's message holds the password: {message}"
            );
            let scrubbed = spec.redactor.scrub(&message);
            assert!(!scrubbed.contains(SECRET));
            Err(scrubbed)
        }
        Err(_) => Err("timed out".to_owned()),
    }
}

async fn passes(url: &str) {
    let spec = spec(url);
    if let Err(message) = check(&spec, &unused_pool()).await {
        panic!("{} failed: {message}", spec.display);
    }
}

/// Fails; returns the message.
async fn fails(url: &str) -> String {
    let spec = spec(url);
    match check(&spec, &unused_pool()).await {
        Ok(()) => panic!("{} passed", spec.display),
        Err(message) => {
            assert!(!message.is_empty());
            message
        }
    }
}

/// Fails with "connection refused" on a freed port of `url`.
async fn refused(url: &str) {
    let closed = ClosedPort::new();
    let url = with_port(url, closed.port());
    let message = fails(&url).await;
    assert!(
        message.contains("connection refused"),
        "{url}: unexpected message {message:?}"
    );
}

/// Connections a test server accepted, and how many of them the client has
/// closed since.
#[derive(Clone, Default)]
struct Connections {
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Connections {
    /// Waits until the client has closed every connection it opened (at
    /// least one).
    async fn wait_all_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let accepted = self.accepted.load(Ordering::SeqCst);
            let closed = self.closed.load(Ordering::SeqCst);
            if accepted > 0 && closed == accepted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {accepted} connections left open",
                accepted - closed
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A server that accepts connections and never answers. Every connection is
/// read (and discarded) until the client closes it.
struct HungPeer {
    port: u16,
    connections: Connections,
    stop: CancellationToken,
}

impl HungPeer {
    async fn start() -> HungPeer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Connections::default();
        let stop = CancellationToken::new();
        let (counts, stop_in) = (connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    () = stop_in.cancelled() => return,
                };
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                let closed = counts.closed.clone();
                let stop = stop_in.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        tokio::select! {
                            read = stream.read(&mut buf) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            },
                            () = stop.cancelled() => return,
                        }
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        HungPeer {
            port,
            connections,
            stop,
        }
    }
}

impl Drop for HungPeer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A TCP proxy in front of a real service that counts the connections
/// passing through and notices when the client closes them.
struct CountingProxy {
    port: u16,
    connections: Connections,
    stop: CancellationToken,
}

impl CountingProxy {
    async fn start(upstream: ProxyTarget) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Connections::default();
        let stop = CancellationToken::new();
        let (counts, stop_in) = (connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    () = stop_in.cancelled() => return,
                };
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                let closed = counts.closed.clone();
                let stop = stop_in.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // Ends when the client has closed its side and the
                    // server has answered by closing its own.
                    let piped = async {
                        match upstream {
                            ProxyTarget::Tcp(addr) => {
                                let mut server = TcpStream::connect(addr).await?;
                                tokio::io::copy_bidirectional(&mut client, &mut server).await
                            }
                            ProxyTarget::Unix(path) => {
                                let mut server = UnixStream::connect(path).await?;
                                tokio::io::copy_bidirectional(&mut client, &mut server).await
                            }
                        }
                    };
                    tokio::select! {
                        _ = piped => {}
                        () = stop.cancelled() => return,
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingProxy {
            port,
            connections,
            stop,
        }
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url_for(&self, url: &str) -> String {
        let mut url = Url::parse(url).expect("service url");
        url.set_host(Some("127.0.0.1")).expect("set host");
        url.set_port(Some(self.port)).expect("set port");
        url.to_string()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The TCP address `url` names.
fn tcp_target(url: &str) -> ProxyTarget {
    let url = Url::parse(url).expect("service url");
    let host = url.host_str().expect("host").trim_matches(['[', ']']);
    let port = url.port_or_known_default().expect("port");
    ProxyTarget::Tcp(format!("{host}:{port}"))
}

/// `url` (through a proxy to `upstream`) passes, and the run has closed
/// every connection it opened once it returns.
async fn passes_leaving_nothing_open(url: &str, upstream: ProxyTarget) {
    let proxy = CountingProxy::start(upstream).await;
    passes(&proxy.url_for(url)).await;
    proxy.connections.wait_all_closed().await;
}

/// `url` (any host and port) pointed at a hung peer: the run times out
/// within the check's timeout, and the dropped run closes its connection.
async fn hangs(url: &str) {
    let peer = HungPeer::start().await;
    let url = with_timeout(&with_port(url, peer.port), HUNG_TIMEOUT);
    let spec = spec(&url);
    assert_eq!(spec.timeout, Duration::from_millis(300));
    let runner = Runner::new(&spec.target, Some(&unused_pool()), None).expect("runner");
    let started = Instant::now();
    let result = tokio::time::timeout(spec.timeout, runner.run()).await;
    let elapsed = started.elapsed();
    assert!(
        result.is_err(),
        "{}: expected a timeout, got {result:?}",
        spec.display
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    peer.connections.wait_all_closed().await;
}

// ---------------------------------------------------------------- database

#[tokio::test(flavor = "multi_thread")]
async fn database_selects_through_the_pool() {
    let db = TestDb::empty().await;
    let runner = Runner::new(&Target::Database, Some(&db.pool), None).expect("runner");
    tokio::time::timeout(Duration::from_secs(5), runner.run())
        .await
        .expect("in time")
        .expect("SELECT 1 through the pool");
}

#[tokio::test(flavor = "multi_thread")]
async fn database_fails_when_the_pool_cannot_connect() {
    let closed = ClosedPort::new();
    let port = closed.port();
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .expect("lazy pool");
    let runner = Runner::new(&Target::Database, Some(&pool), None).expect("runner");
    let result = tokio::time::timeout(Duration::from_secs(5), runner.run())
        .await
        .expect("the pool gives up by itself");
    assert!(result.is_err(), "{result:?}");
}

// ---------------------------------------------------------------- postgres

/// A URL for the test database over TCP, through a proxy: check URLs need a
/// host, and the test server's URL may name a Unix socket. `user` and
/// `password` replace the URL's own when given.
fn pg_url(
    db: &TestDb,
    proxy: &CountingProxy,
    database: &str,
    login: Option<(&str, &str)>,
) -> String {
    let options: PgConnectOptions = db.url.parse().expect("database url");
    let original = Url::parse(&db.url).expect("database url");
    let (user, password) = match login {
        Some((user, password)) => (user.to_owned(), Some(password.to_owned())),
        None => (
            options.get_username().to_owned(),
            original.password().map(str::to_owned),
        ),
    };
    let mut url = Url::parse(&format!("postgres://127.0.0.1:{}/{database}", proxy.port))
        .expect("proxied url");
    url.set_username(&user).expect("user");
    url.set_password(password.as_deref()).expect("password");
    url.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_passes() {
    let db = TestDb::empty().await;
    let proxy = CountingProxy::start(ProxyTarget::of_url(&db.url)).await;
    passes(&pg_url(&db, &proxy, &db.name, None)).await;
    proxy.connections.wait_all_closed().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_fails_on_a_closed_port() {
    refused(&format!(
        "postgres://postgres:{SECRET}@127.0.0.1:5432/postgres"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_fails_for_an_unknown_role_or_database() {
    // The test server may trust every login, so a wrong password might be
    // accepted: a role that does not exist is the login failure every
    // server refuses. The password in the URL must still never show.
    let db = TestDb::empty().await;
    let proxy = CountingProxy::start(ProxyTarget::of_url(&db.url)).await;
    let url = pg_url(&db, &proxy, &db.name, Some(("readyd_no_such_role", SECRET)));
    let message = fails(&url).await;
    assert!(message.contains("readyd_no_such_role"), "{message}");

    let url = pg_url(&db, &proxy, "readyd_no_such_database", None);
    let message = fails(&url).await;
    assert!(message.contains("does not exist"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_times_out_on_a_hung_peer() {
    hangs(&format!(
        "postgres://postgres:{SECRET}@127.0.0.1:5432/postgres"
    ))
    .await;
}

// ---------------------------------------------------------------- redis

#[tokio::test(flavor = "multi_thread")]
async fn redis_passes() {
    passes(&redis_url()).await;
    passes_leaving_nothing_open(&redis_url(), tcp_target(&redis_url())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_fails_on_a_closed_port() {
    refused(&with_password(REDIS_SHAPE, SECRET)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_fails_with_a_wrong_password() {
    let message = fails(&with_password(&redis_url(), SECRET)).await;
    assert!(
        message.to_ascii_lowercase().contains("auth"),
        "unexpected message {message:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_times_out_on_a_hung_peer() {
    hangs(&with_password(REDIS_SHAPE, SECRET)).await;
}

#[test]
fn a_missing_server_package_is_named_in_one_line() {
    let line = support::servers::installed("readyd-no-such-server", "readyd-no-such-pkg")
        .expect_err("not installed");
    assert_eq!(
        line,
        "readyd-no-such-server is not installed: install the readyd-no-such-pkg package \
         (apt-get install readyd-no-such-pkg)"
    );
}

// ---------------------------------------------------------------- amqp

#[tokio::test(flavor = "multi_thread")]
async fn amqp_passes() {
    passes(&amqp_url()).await;
    passes_leaving_nothing_open(&amqp_url(), tcp_target(&amqp_url())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_fails_on_a_closed_port() {
    refused(&with_password(AMQP_SHAPE, SECRET)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_fails_with_a_wrong_password() {
    let message = fails(&with_password(&amqp_url(), SECRET)).await;
    assert!(message.contains("ACCESS"), "unexpected message {message:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_times_out_on_a_hung_peer() {
    hangs(&with_password(AMQP_SHAPE, SECRET)).await;
}

// ---------------------------------------------------------------- nats

#[tokio::test(flavor = "multi_thread")]
async fn nats_passes() {
    passes(&nats_url()).await;
    passes_leaving_nothing_open(&nats_url(), tcp_target(&nats_url())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_fails_on_a_closed_port() {
    // The test server needs no credentials; these must still never show.
    refused(&with_password(NATS_SHAPE, SECRET)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_times_out_on_a_hung_peer() {
    hangs(&with_password(NATS_SHAPE, SECRET)).await;
}

// ---------------------------------------------------------------- http

/// A tiny HTTP/1.1 server: `/ok` answers 200, `/down` 503, `/auth` 200 with
/// the right basic credentials and 401 otherwise.
async fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let authorized = request.contains(&format!(
                    "authorization: basic {}",
                    HTTP_BASIC.to_ascii_lowercase()
                ));
                let status = match path.as_str() {
                    "/ok" => "200 OK",
                    "/auth" if authorized => "200 OK",
                    "/auth" => "401 Unauthorized",
                    "/down" => "503 Service Unavailable",
                    _ => "404 Not Found",
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn http_passes_on_2xx() {
    let port = http_server().await;
    passes(&format!("http://127.0.0.1:{port}/ok")).await;
    passes(&format!(
        "http://{HTTP_USER}:{HTTP_PASSWORD}@127.0.0.1:{port}/auth"
    ))
    .await;
    let upstream = ProxyTarget::Tcp(format!("127.0.0.1:{port}"));
    passes_leaving_nothing_open("http://127.0.0.1:1/ok", upstream).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_fails_on_other_statuses() {
    let port = http_server().await;
    let message = fails(&format!("http://127.0.0.1:{port}/down")).await;
    assert_eq!(message, "HTTP 503 Service Unavailable");
    let message = fails(&format!(
        "http://{HTTP_USER}:{SECRET}@127.0.0.1:{port}/auth"
    ))
    .await;
    assert_eq!(message, "HTTP 401 Unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_fails_on_a_closed_port() {
    refused(&format!("http://{HTTP_USER}:{SECRET}@127.0.0.1:1/ok")).await;
    // https builds its TLS client (which needs the crypto provider) too.
    refused(&format!("https://{HTTP_USER}:{SECRET}@127.0.0.1:1/ok")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_times_out_on_a_hung_peer() {
    hangs(&format!("http://{HTTP_USER}:{SECRET}@127.0.0.1:1/ok")).await;
}

// ---------------------------------------------------------------- grpc

/// readyd's own grpc.health.v1 service on a loopback port, over fresh
/// probes: "" SERVING, readiness NOT_SERVING.
async fn grpc_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let service = HealthServer::new(GrpcHealth::new(
        Arc::new(Probes::new()),
        StreamGate::new("Watch", "--max-watch-streams", 100),
    ));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_passes_when_serving() {
    let port = grpc_server().await;
    passes(&format!("grpc://127.0.0.1:{port}/")).await;
    passes(&format!("grpc://127.0.0.1:{port}")).await;
    let upstream = ProxyTarget::Tcp(format!("127.0.0.1:{port}"));
    passes_leaving_nothing_open("grpc://127.0.0.1:1/", upstream).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_fails_when_not_serving_or_unknown() {
    let port = grpc_server().await;
    let message = fails(&format!("grpc://127.0.0.1:{port}/readiness")).await;
    assert_eq!(message, "grpc.health.v1 status NOT_SERVING");
    let message = fails(&format!("grpc://127.0.0.1:{port}/no.such.service")).await;
    assert!(message.contains("NOT_FOUND"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_fails_on_a_closed_port() {
    refused("grpc://127.0.0.1:1/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_times_out_on_a_hung_peer() {
    hangs("grpc://127.0.0.1:1/").await;
}

// ---------------------------------------------------------------- tcp

#[tokio::test(flavor = "multi_thread")]
async fn tcp_passes_when_accepted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    passes(&format!("tcp://127.0.0.1:{port}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_fails_on_a_closed_port() {
    refused("tcp://127.0.0.1:1").await;
}

// ---------------------------------------------------------------- file

fn file_url(path: &std::path::Path) -> String {
    Url::from_directory_path(path)
        .expect("absolute path")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn file_passes_for_a_writable_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    passes(&file_url(dir.path())).await;
    passes(&format!("{}?min_free=1KB", file_url(dir.path()))).await;
    // The probe file is gone again.
    assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn file_fails_for_a_missing_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let message = fails(&file_url(&missing)).await;
    assert!(message.ends_with("does not exist"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_fails_for_a_read_only_directory() {
    use std::os::unix::fs::PermissionsExt;
    if nix::unistd::geteuid().is_root() {
        eprintln!("skipped: root can write in a read-only directory");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let read_only = dir.path().join("read-only");
    std::fs::create_dir(&read_only).expect("mkdir");
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let message = fails(&file_url(&read_only)).await;
    assert!(message.contains("permission denied"), "{message}");
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_fails_without_enough_free_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let message = fails(&format!("{}?min_free=1000PB", file_url(dir.path()))).await;
    assert!(message.ends_with(" required"), "{message}");
}
