//! Serving TLS: the certificate and key files of `--tls-cert`/`--tls-key`,
//! read again whenever they change (cert-manager rotates them in place), and
//! the accepted connections, each handshaken off the accept loop so a slow
//! or silent client cannot hold up the others.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How often the files are looked at for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake within this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// The certificate chain and private key files, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The certificate currently served; swapped when the files change.
#[derive(Debug)]
pub struct ServedCertificate {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reads and checks the files: the chain parses, the key parses and
/// belongs to the leaf certificate.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|err| format!("cannot read {}: {err}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            format!(
                "{} is not a PEM certificate chain: {err}",
                files.cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| {
        // Never the file's content: it is the private key.
        format!("{} is not a PEM private key: {err}", files.key.display())
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| format!("{}: unsupported private key: {err}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|err| {
        format!(
            "{} does not belong to the certificate in {}: {err}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(certified)
}

/// A TLS acceptor for gRPC (ALPN `h2`) serving `first`, and the certificate
/// it serves, for [`keep_reloaded`].
pub fn acceptor(first: CertifiedKey) -> Result<(TlsAcceptor, Arc<ServedCertificate>), String> {
    let served = Arc::new(ServedCertificate {
        current: ArcSwap::from_pointee(first),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| format!("TLS setup: {err}"))?
    .with_no_client_auth()
    .with_cert_resolver(Arc::clone(&served) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), served))
}

/// What serving TLS needs: the acceptor, and the files with the
/// certificate they are served through, to reload.
pub struct ServingTls {
    /// Accepts connections with the current certificate.
    pub acceptor: TlsAcceptor,
    /// The certificate served now.
    pub served: Arc<ServedCertificate>,
    /// Where it came from.
    pub files: TlsFiles,
}

impl std::fmt::Debug for ServingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServingTls {
    /// Loads the files; a problem is a start-up problem.
    pub fn load(files: &TlsFiles) -> Result<ServingTls, String> {
        let (acceptor, served) = acceptor(load(files)?)?;
        Ok(ServingTls {
            acceptor,
            served,
            files: files.clone(),
        })
    }
}

/// Serves the files' new content whenever they change, until `end`. A
/// change that does not load (half written, key and certificate not yet
/// both replaced) keeps the previous certificate and is tried again.
pub async fn keep_reloaded(
    files: TlsFiles,
    served: Arc<ServedCertificate>,
    end: CancellationToken,
) {
    let mut seen = modified(&files);
    let mut failing = false;
    loop {
        tokio::select! {
            () = end.cancelled() => return,
            () = tokio::time::sleep(RELOAD_EVERY) => {}
        }
        let now = modified(&files);
        if now == seen && !failing {
            continue;
        }
        match load(&files) {
            Ok(certified) => {
                served.current.store(Arc::new(certified));
                seen = now;
                failing = false;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(problem) => {
                if !failing || now != seen {
                    tracing::warn!(%problem, "TLS certificate changed but does not load; still serving the previous one");
                }
                seen = now;
                failing = true;
            }
        }
    }
}

fn modified(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let at = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
    };
    (at(&files.cert), at(&files.key))
}

/// The connections of `listener`, TLS done, for the gRPC server; ends when
/// `stop` is cancelled.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
