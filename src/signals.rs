//! SIGTERM and SIGINT as a future.

use tokio::signal::unix::{SignalKind, signal};

/// Completes on the next SIGTERM or SIGINT (logging which).
pub async fn first() {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => Some(stream),
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only SIGINT stops readyd");
            None
        }
    };
    let sigterm = async {
        match terminate.as_mut() {
            Some(stream) => {
                stream.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = sigterm => tracing::info!(signal = "SIGTERM", "signal received"),
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => tracing::info!(signal = "SIGINT", "signal received"),
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        },
    }
}
