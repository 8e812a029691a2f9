//! Wiring: the started database and settings in, a running gRPC server out,
//! and an orderly shutdown: readiness NOT_SERVING while calls are still
//! served for the drain delay, then every probe NOT_SERVING, streams end,
//! the server stops accepting (HTTP/2 GOAWAY, in two steps, so calls already
//! sent are still taken) and drains within the shutdown timeout, then the
//! private PostgreSQL stops.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::api::Database;
use crate::api::auth::{AuthLayer, Tokens};
use crate::api::config::ConfigApi;
use crate::api::deployments::DeploymentApi;
use crate::api::flagd::{FlagdCore, FlagdV1, FlagdV2};
use crate::api::flags::FlagApi;
use crate::api::grpc_health::GrpcHealth;
use crate::api::health::HealthApi;
use crate::api::lazy::Lazy;
use crate::api::observe::{KnownMethods, ObserveLayer};
use crate::api::pb;
use crate::api::streams::StreamGate;
use crate::health::Probes;
use crate::health::history::{self, HistorySettings, HistorySink, UpstreamHistory};
use crate::health::monitor::HealthMonitor;
use crate::health::redact::redact_url;
use crate::http::HttpSurface;
use crate::relay::forward::ForwardLayer;
use crate::relay::upstream::{Replication, ReplicationServer};
use crate::relay::verifiers;
use crate::snapshot_file;
use crate::source::{Parts, Source};
use crate::startup::Started;
use crate::telemetry;
use crate::tls;
use crate::usage;
use crate::usage::flush::{Flusher, UsageSettings, UsageSink};

/// Largest message readyd accepts or sends. gRPC's usual 4 MiB, stated
/// explicitly: most clients refuse larger messages by default, so large
/// snapshots are split into several messages instead of raising this.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Server-side HTTP/2 pings detect dead clients of long-lived streams.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// A client that does not answer a ping within this is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure of the running server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server task ended abnormally.
    #[error("gRPC server task ended abnormally: {0}")]
    Crashed(String),
}

/// Runs readyd until `shutdown` completes, then shuts down in order.
pub async fn serve(started: Started, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let Started {
        settings,
        source,
        listener,
        flagd_listener,
        http_listener,
        probe_listener,
        tls,
        metrics_addr,
        state,
        source_check,
        checks,
    } = started;
    let is_follower = matches!(source, Source::Upstream(_));
    let Parts {
        store,
        private_pg,
        feed,
        tokens,
        verifiers,
        verifiers_source,
        coverage,
        upstream,
    } = source.into_parts(Tokens {
        admin: settings.admin_token.clone(),
        read: settings.read_token.clone(),
        replication: settings.replication_token.clone(),
        client: settings.client_tokens.clone(),
    });
    let database = Database::new(store.clone());
    let local_addr: Option<SocketAddr> = listener.local_addr().ok();
    let probes = Arc::new(Probes::new());
    let streams = StreamGate::new(
        "Watch",
        "--max-watch-streams (READYD_MAX_WATCH_STREAMS)",
        settings.limits.watch,
    );

    // Checks start before the server, so their first round overlaps its
    // start; `startup` turns SERVING when that round has finished.
    let monitor = HealthMonitor::new(
        source_check,
        checks,
        Arc::clone(&probes),
        Arc::clone(state.freshness()),
    );
    monitor.snapshot_loaded();
    let checks_end = CancellationToken::new();
    let mut check_tasks = monitor.start(checks_end.clone());
    let history_sink = match (&store, &upstream) {
        (Some(store), _) => Some(HistorySink::Database(store.clone())),
        (None, Some((channel, token))) => {
            UpstreamHistory::new(channel.clone(), token).map(HistorySink::Upstream)
        }
        (None, None) => None,
    };
    let history_task = history_sink.map(|sink| {
        tokio::spawn(history::record(
            Arc::clone(&monitor),
            sink,
            HistorySettings {
                instance: settings.instance.clone(),
                environment: settings.environment.clone(),
                interval: settings.history_interval,
                retention: settings.history_retention,
            },
            checks_end.clone(),
        ))
    });

    // Flag usage: flushed every interval, and a last time once the servers
    // have drained (so the last evaluations are in), before the store closes.
    let usage_sink = match (&store, &upstream) {
        (Some(store), _) => Some(UsageSink::Database(store.clone())),
        (None, Some((channel, token))) => UsageSink::upstream(channel.clone(), token),
        (None, None) => None,
    };
    let usage_end = CancellationToken::new();
    let usage_task = usage_sink.map(|sink| {
        tokio::spawn(usage::flush::run(
            Flusher::new(
                Arc::clone(&state),
                sink,
                UsageSettings {
                    environment: settings.environment.clone(),
                    interval: settings.usage_flush_interval,
                    retention: settings.usage_retention,
                    flag_labels: settings.metrics_flag_labels,
                },
            ),
            usage_end.clone(),
        ))
    });

    // Built on the first reflection call: their tables hold 0.25 MiB.
    let reflection_v1 = Lazy::new(|| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .inspect_err(|err| tracing::error!(error = %err, "reflection service"))
            .ok()
    });
    let reflection_v1alpha = Lazy::new(|| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .inspect_err(|err| tracing::error!(error = %err, "reflection service"))
            .ok()
    });
    let grpc_health = || {
        pb::grpc_health_v1::health_server::HealthServer::new(GrpcHealth::new(
            Arc::clone(&probes),
            Arc::clone(&streams),
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    };
    let health_api = HealthApi::new(
        database.clone(),
        Arc::clone(&monitor),
        Arc::clone(&state),
        settings.instance.clone(),
        settings.environment.clone(),
        Arc::clone(&streams),
    );
    let health =
        pb::readyd::v1::health_service_server::HealthServiceServer::new(health_api.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let flag_api = FlagApi::new(
        Arc::clone(&state),
        database.clone(),
        &settings.environment,
        Arc::clone(&streams),
    );
    let flags = pb::readyd::v1::flag_service_server::FlagServiceServer::new(flag_api.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let config_api = ConfigApi::new(
        Arc::clone(&state),
        database.clone(),
        &settings.environment,
        Arc::clone(&streams),
        upstream.as_ref().map(|(channel, _)| channel.clone()),
    );
    let config =
        pb::readyd::v1::config_service_server::ConfigServiceServer::new(config_api.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let deployment_api = DeploymentApi::new(Arc::clone(&state), database.clone());
    let deployments = pb::readyd::v1::deployment_service_server::DeploymentServiceServer::new(
        deployment_api.clone(),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);

    // The last-known-good snapshot on disk, for a start with the database
    // down; saved a last time after the drain.
    let snapshot_end = CancellationToken::new();
    let snapshot_saver = tokio::spawn(snapshot_file::keep_saved(
        Arc::clone(&state),
        snapshot_file::path_for(&settings.database.data_dir, &settings.environment),
        settings.environment.clone(),
        snapshot_end.clone(),
    ));

    // A follower keeps its upstream's token verifiers beside the snapshot,
    // for a start from disk.
    let verifiers_saver = is_follower.then(|| {
        tokio::spawn(verifiers::keep_saved(
            verifiers.clone(),
            verifiers::path_for(&settings.database.data_dir, &settings.environment),
            snapshot_end.clone(),
        ))
    });

    // The source outlives the drain: writes still in flight wait for it.
    let listener_end = CancellationToken::new();
    let listener_task = tokio::spawn(feed.run(Arc::clone(&state), listener_end.clone()));

    let sampler = tokio::spawn(telemetry::sample(
        store.clone(),
        settings.database.pool_size,
        checks_end.clone(),
    ));
    let follows = StreamGate::new(
        "Follow",
        "--max-follow-streams (READYD_MAX_FOLLOW_STREAMS)",
        settings.limits.follow,
    );
    let replication = ReplicationServer::new(Replication {
        state: Arc::clone(&state),
        follows: Arc::clone(&follows),
        instance: settings.instance.clone(),
        coverage,
        verifiers,
        encodings: Arc::default(),
        store: database.clone(),
    });
    let forward = match &upstream {
        Some((channel, _)) => ForwardLayer::to(channel.clone(), Arc::clone(&state)),
        None => ForwardLayer::none(),
    };
    let known = KnownMethods::from_descriptors(&[
        pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    let known = Arc::new(known);
    let flagd = FlagdCore::new(
        Arc::clone(&state),
        &settings.environment,
        Arc::clone(&streams),
    );
    let flagd_v1 = || {
        pb::flagd::evaluation_v1::service_server::ServiceServer::new(FlagdV1(flagd.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    };
    let flagd_v2 = || {
        pb::flagd::evaluation_v2::service_server::ServiceServer::new(FlagdV2(flagd.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    };

    // The flagd-only port, for providers that expect flagd's own: the same
    // layers, only the flagd services; it stops accepting with the main one,
    // as does the probe port.
    let flagd_stop = CancellationToken::new();
    let flagd_server = flagd_listener.map(|listener| {
        let addr = listener.local_addr().ok();
        let router = Server::builder()
            .max_concurrent_streams(Some(settings.limits.per_connection))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .layer(ObserveLayer::shared(Arc::clone(&known)))
            .layer(AuthLayer::new(Arc::clone(&tokens)))
            .add_service(flagd_v1())
            .add_service(flagd_v2());
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = flagd_stop.clone();
        tracing::info!(listen = ?addr, "serving the flagd evaluation protocol");
        tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
        )
    });

    // The plaintext probe port, for kubelet gRPC probes when the main port
    // speaks TLS: grpc.health.v1 only.
    let probe_addr = probe_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    let probe_server = probe_listener.map(|listener| {
        let router = Server::builder()
            .max_concurrent_streams(Some(settings.limits.per_connection))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .layer(ObserveLayer::shared(Arc::clone(&known)))
            .layer(AuthLayer::new(Arc::clone(&tokens)))
            .add_service(grpc_health());
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = flagd_stop.clone();
        tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
        )
    });

    // The HTTP surface: it keeps answering (probes 503) while the gRPC
    // port drains, and stops after it.
    let http_stop = CancellationToken::new();
    let http_addr = http_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    let http_server = http_listener.map(|listener| {
        let surface = Arc::new(HttpSurface {
            probes: Arc::clone(&probes),
            monitor: Arc::clone(&monitor),
            health: health_api.clone(),
            flags: flag_api.clone(),
            config: config_api.clone(),
            deployments: deployment_api.clone(),
            flagd: flagd.clone(),
            tokens: Arc::clone(&tokens),
            cors_origins: settings.cors_origins.clone(),
            client_limit: crate::http::limit::RateLimit::new(settings.client_rate_limit),
            console: settings.console.then(crate::console::Console::default),
            store: store.clone(),
            bulk_cache: crate::http::BulkCache::default(),
        });
        let stop = http_stop.clone();
        tokio::spawn(crate::http::serve(listener, surface, async move {
            stop.cancelled().await;
        }))
    });

    let router = Server::builder()
        .max_concurrent_streams(Some(settings.limits.per_connection))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(ObserveLayer::shared(known))
        .layer(forward)
        .layer(AuthLayer::new(tokens))
        .add_service(flagd_v1())
        .add_service(flagd_v2())
        .add_service(grpc_health())
        .add_service(health)
        .add_service(flags)
        .add_service(config)
        .add_service(deployments)
        .add_service(replication)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    // Stop accepting only after the probes have turned NOT_SERVING.
    let (stop_accepting, stop_accepting_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped_accepting = async move {
        let _ = stop_accepting_rx.await;
    };
    let tls_end = CancellationToken::new();
    let is_tls = tls.is_some();
    let mut server = match tls {
        Some(tls) => {
            tokio::spawn(tls::keep_reloaded(tls.files, tls.served, tls_end.clone()));
            let incoming = tls::incoming(listener, tls.acceptor, tls_end.clone());
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped_accepting))
        }
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped_accepting))
        }
    };

    tracing::info!(
        listen = %local_addr.map_or_else(|| "?".to_owned(), |addr| addr.to_string()),
        tls = is_tls,
        probe = %probe_addr.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
        http = %http_addr.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
        metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
        environment = %settings.environment,
        instance = %settings.instance,
        private_database = private_pg.is_some(),
        upstream = %settings.upstream.as_ref().map_or_else(|| "none".to_owned(), |upstream| redact_url(&upstream.url.to_string())),
        stale = state.freshness().is_stale(),
        checks = monitor.checks().len(),
        "readyd is serving"
    );
    // What start-up decoded and dropped stays resident unless returned.
    crate::memory::trim_now();
    if settings.console
        && let Some(addr) = http_addr
    {
        tracing::info!(url = %console_url(addr), "the web console is open: sign in with the admin or read token");
    }

    let mut early_exit = tokio::select! {
        result = &mut server => Some(result),
        () = shutdown => None,
    };
    if early_exit.is_none() && !settings.drain_delay.is_zero() {
        // Load balancers and kube-proxy take a while to stop routing here:
        // until then, calls are served as usual.
        tracing::info!(delay = ?settings.drain_delay, "leaving: readiness NOT_SERVING, still serving for the drain delay");
        probes.leave();
        early_exit = tokio::select! {
            result = &mut server => Some(result),
            () = tokio::time::sleep(settings.drain_delay) => None,
        };
    }
    let result = match early_exit {
        Some(result) => flatten(result),
        None => {
            tracing::info!(timeout = ?settings.shutdown_timeout, "shutting down: probes NOT_SERVING, draining calls");
            probes.drain();
            streams.end_all();
            follows.end_all();
            let _ = stop_accepting.send(());
            tls_end.cancel();
            flagd_stop.cancel();
            match tokio::time::timeout(settings.shutdown_timeout, &mut server).await {
                Ok(result) => flatten(result),
                Err(_) => {
                    tracing::warn!("shutdown timeout passed with calls still open; closing them");
                    server.abort();
                    Ok(())
                }
            }
        }
    };

    flagd_stop.cancel();
    tls_end.cancel();
    http_stop.cancel();
    if let Some(mut http_server) = http_server
        && tokio::time::timeout(Duration::from_secs(1), &mut http_server)
            .await
            .is_err()
    {
        http_server.abort();
    }
    if let Some(mut probe_server) = probe_server
        && tokio::time::timeout(Duration::from_secs(1), &mut probe_server)
            .await
            .is_err()
    {
        probe_server.abort();
    }
    if let Some(mut flagd_server) = flagd_server {
        // The main server's drain has had the shutdown timeout: whatever
        // the flagd port still holds is cut short.
        if tokio::time::timeout(Duration::from_secs(1), &mut flagd_server)
            .await
            .is_err()
        {
            flagd_server.abort();
        }
    }
    usage_end.cancel();
    if let Some(usage_task) = usage_task {
        let _ = usage_task.await;
    }
    checks_end.cancel();
    if let Some(history_task) = history_task {
        let _ = history_task.await;
    }
    let _ = sampler.await;
    while check_tasks.join_next().await.is_some() {}
    listener_end.cancel();
    let _ = listener_task.await;
    snapshot_end.cancel();
    let _ = snapshot_saver.await;
    if let Some(verifiers_saver) = verifiers_saver {
        let _ = verifiers_saver.await;
    }
    drop(verifiers_source);
    if let Some(store) = store {
        store.close().await;
    }
    if let Some(pg) = private_pg {
        pg.stop_or_warn().await;
    }
    tracing::info!("readyd stopped");
    result
}

fn flatten(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match joined {
        Ok(result) => result.map_err(ServeError::from),
        Err(join_error) => Err(ServeError::Crashed(join_error.to_string())),
    }
}

/// Where a person opens the console served on `addr`: a wildcard address
/// (`0.0.0.0`, `[::]`) is opened as `localhost` on the same machine.
fn console_url(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://localhost:{}/console", addr.port())
    } else {
        format!("http://{addr}/console")
    }
}
