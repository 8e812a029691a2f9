//! TLS with real processes on loopback: readyd serving TLS with
//! `--tls-cert`/`--tls-key` (and plaintext probes on `--probe-listen`), a
//! follower of it over `https://` verifying against `--upstream-ca`, a
//! rotated certificate served without a restart, and files that do not go
//! together refused at start.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::grpc_health_v1::{HealthCheckRequest, health_check_response::ServingStatus};
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use support::{ADMIN_TOKEN, TestDb};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A certificate authority and a server certificate it issued for
/// 127.0.0.1 and localhost, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn issue() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("cert");
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// Writes `content` to `path` the way cert-manager's volume does: a whole
/// new file in place of the old one.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn files(pki: &Pki) -> Files {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        ca: dir.path().join("ca.crt"),
        _dir: dir,
    };
    replace(&files.cert, &pki.cert);
    replace(&files.key, &pki.key);
    replace(&files.ca, &pki.ca);
    files
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &str,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .expect("tls config")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn list_flags(channel: Channel) -> Result<pb::ListFlagsResponse, tonic::Status> {
    FlagServiceClient::new(channel)
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn tls_serves_grpc_probes_stay_plaintext_followers_verify_and_rotation_needs_no_restart() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO feature_flags (key, enabled) \
         VALUES ('over-tls', true)",
    )
    .execute(&db.pool)
    .await
    .expect("seed flag");
    let first = issue();
    let files = files(&first);
    let data = tempfile::tempdir().expect("data dir");
    let mut upstream = support::daemon::upstream(&db.url, "prod", &data.path().join("upstream"))
        .env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg_path("--tls-cert", &files.cert)
        .arg_path("--tls-key", &files.key)
        .args(["--probe-listen", "127.0.0.1:0"])
        .start()
        .await;

    // gRPC over TLS, verified against the CA.
    let channel = tls_channel(upstream.addr, &first.ca)
        .await
        .expect("TLS connection");
    let flags = list_flags(channel).await.expect("list flags over TLS");
    assert!(flags.flags.iter().any(|flag| flag.key == "over-tls"));

    // Plaintext to the TLS port is no gRPC at all.
    let plaintext = Endpoint::from_shared(format!("http://{}", upstream.addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5));
    let plaintext_answer = match plaintext.connect().await {
        Ok(channel) => list_flags(channel)
            .await
            .map(drop)
            .map_err(|s| s.to_string()),
        Err(err) => Err(err.to_string()),
    };
    assert!(
        plaintext_answer.is_err(),
        "a plaintext call to the TLS port must fail"
    );

    // The kubelet's plaintext gRPC probe, on the probe port.
    let probe = upstream
        .probe
        .expect("the serving line names the probe port");
    let probe_channel = Endpoint::from_shared(format!("http://{probe}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("plaintext probe connection");
    let status = HealthClient::new(probe_channel.clone())
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .expect("probe")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    // Only probes there.
    let not_there = list_flags(probe_channel)
        .await
        .expect_err("flags are not on the probe port");
    assert_eq!(not_there.code(), tonic::Code::Unimplemented);

    // A follower of an https:// upstream verifies it against --upstream-ca.
    let follower = support::daemon::follower(
        &format!("https://{}", upstream.addr),
        "prod",
        "follower",
        &data.path().join("follower"),
    )
    .arg_path("--upstream-ca", &files.ca)
    .start()
    .await;
    let followed = list_flags(follower.channel().await)
        .await
        .expect("list flags on the follower");
    assert!(followed.flags.iter().any(|flag| flag.key == "over-tls"));
    assert_eq!(followed.version, flags.version);

    // Rotation: a certificate from another CA replaces the files; new
    // connections get it without a restart, verified against the new CA.
    let second = issue();
    replace(&files.key, &second.key);
    replace(&files.cert, &second.cert);
    upstream
        .wait_for_log("TLS certificate reloaded", Duration::from_secs(30))
        .await;
    let rotated = tls_channel(upstream.addr, &second.ca)
        .await
        .expect("TLS connection with the rotated certificate");
    list_flags(rotated)
        .await
        .expect("list flags after rotation");
    let old_ca = match tls_channel(upstream.addr, &first.ca).await {
        Ok(channel) => list_flags(channel)
            .await
            .map(drop)
            .map_err(|s| s.to_string()),
        Err(err) => Err(err.to_string()),
    };
    assert!(old_ca.is_err(), "the old CA no longer verifies the server");

    // A half-rotated pair (new key, old certificate) keeps the served one.
    let third = issue();
    replace(&files.key, &third.key);
    upstream
        .wait_for_log("does not load", Duration::from_secs(30))
        .await;
    let still = tls_channel(upstream.addr, &second.ca)
        .await
        .expect("still the rotated certificate");
    list_flags(still)
        .await
        .expect("list flags while half rotated");

    follower.stop().await;
    let lines = upstream.stop().await;
    let private_key_line = third.key.lines().nth(1).expect("key body");
    assert!(
        lines.iter().all(|line| !line.contains(private_key_line)),
        "the private key never reaches the log"
    );
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_refused_at_start() {
    let first = issue();
    let other = issue();
    let files = files(&first);
    replace(&files.key, &other.key);
    let output = tokio::process::Command::new(support::daemon::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key)
        .env("DATABASE_URL", support::base_url())
        .env_remove("READYD_ADMIN_TOKEN")
        .output()
        .await
        .expect("run readyd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = format!("{stdout}{stderr}");
    assert!(
        said.contains("--tls-cert") && said.contains("does not belong"),
        "the refusal names the setting and the problem: {said}"
    );

    // And one without the other is refused too.
    let output = tokio::process::Command::new(support::daemon::binary())
        .args(["check"])
        .arg("--tls-cert")
        .arg(&files.cert)
        .env("DATABASE_URL", support::base_url())
        .output()
        .await
        .expect("run readyd check");
    assert!(!output.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("--tls-key"), "{said}");
}
