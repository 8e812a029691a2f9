//! SIGTERM and SIGINT, listened for from start to exit.
//!
//! The streams are made once, before start-up, and kept: a signal that
//! arrives between two waits (e.g. right after start-up, before the server
//! waits for one) is remembered by the stream instead of being lost, which
//! a fresh `signal()` per wait would do once the first one has replaced the
//! default action.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The process's SIGTERM and SIGINT.
#[derive(Debug)]
pub struct Signals {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
}

impl Signals {
    /// Listens from now on.
    pub fn listen() -> Self {
        let terminate = signal(SignalKind::terminate())
            .map_err(|err| {
                tracing::error!(error = %err, "cannot listen for SIGTERM; only SIGINT stops readyd");
            })
            .ok();
        let interrupt = signal(SignalKind::interrupt())
            .map_err(|err| tracing::error!(error = %err, "cannot listen for SIGINT"))
            .ok();
        Self {
            terminate,
            interrupt,
        }
    }

    /// Completes on the next SIGTERM or SIGINT (logging which), including
    /// one that arrived since the last call.
    pub async fn next(&mut self) {
        let sigterm = recv(self.terminate.as_mut());
        let sigint = recv(self.interrupt.as_mut());
        tokio::select! {
            () = sigterm => tracing::info!(signal = "SIGTERM", "signal received"),
            () = sigint => tracing::info!(signal = "SIGINT", "signal received"),
        }
    }
}

/// The next signal of `stream`; never, without one.
async fn recv(stream: Option<&mut Signal>) {
    match stream {
        Some(stream) => {
            stream.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
