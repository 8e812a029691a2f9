//! Long-lived streams: how many may be open at once, and when they end.
//!
//! Every Watch-style stream (WatchFlags, WatchConfigs, WatchHealth,
//! grpc.health.v1 Watch, flagd EventStream) is admitted by one
//! [`StreamGate`] and holds a [`StreamTicket`] while it runs. Past the
//! gate's limit a new stream is refused with `RESOURCE_EXHAUSTED`, so no
//! client, authenticated or not, can make readyd hold unbounded streams.
//! (HTTP/2's own limit of concurrent streams per connection is set on the
//! server.) Replication (Follow) streams have a gate of their own. At
//! shutdown the gate ends every stream it admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::counter;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tonic::Status;

use crate::telemetry::{OpenStream, STREAMS_REFUSED};

/// Admits streams up to a limit and ends them at shutdown.
#[derive(Debug)]
pub struct StreamGate {
    /// What the gate admits, for messages ("Watch", "Follow").
    what: &'static str,
    /// The setting that raises the limit, named in the refusal.
    setting: &'static str,
    /// Streams open now.
    open: AtomicUsize,
    /// Streams allowed at once.
    limit: usize,
    /// Fires at shutdown.
    end: CancellationToken,
}

impl StreamGate {
    /// A gate for `limit` streams of `what`, raised by `setting`.
    pub fn new(what: &'static str, setting: &'static str, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            what,
            setting,
            open: AtomicUsize::new(0),
            limit,
            end: CancellationToken::new(),
        })
    }

    /// Admits one stream of `kind` (the label of the open-streams metric),
    /// or refuses it when the limit is reached or shutdown has begun.
    pub fn admit(self: &Arc<Self>, kind: &'static str) -> Result<StreamTicket, Status> {
        if self.end.is_cancelled() {
            return Err(Status::unavailable("readyd is shutting down"));
        }
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.limit).then_some(open + 1)
            })
            .is_ok();
        if !admitted {
            counter!(STREAMS_REFUSED, "kind" => kind).increment(1);
            return Err(Status::resource_exhausted(format!(
                "too many open {} streams ({}); close some, or raise {}",
                self.what, self.limit, self.setting
            )));
        }
        Ok(StreamTicket {
            gate: Arc::clone(self),
            _open: OpenStream::open(kind),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Ends every stream (at shutdown) and refuses new ones.
    pub fn end_all(&self) {
        self.end.cancel();
    }

    /// Completes when streams must end.
    pub fn ended(&self) -> WaitForCancellationFuture<'_> {
        self.end.cancelled()
    }

    /// The shutdown signal itself, for tasks that outlive a borrow.
    pub fn end_token(&self) -> CancellationToken {
        self.end.clone()
    }
}

/// One admitted stream; dropping it frees its place.
#[derive(Debug)]
pub struct StreamTicket {
    gate: Arc<StreamGate>,
    _open: OpenStream,
}

impl StreamTicket {
    /// Completes when the stream must end (shutdown).
    pub fn ended(&self) -> WaitForCancellationFuture<'_> {
        self.gate.end.cancelled()
    }
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        // A stream's buffers are freed now; after a burst of closing
        // streams that is worth giving back to the system.
        crate::memory::released();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_admits_up_to_its_limit_and_frees_places_on_drop() {
        let gate = StreamGate::new("Watch", "--max-watch-streams", 2);
        let first = gate.admit("flags").expect("first");
        let second = gate.admit("flags").expect("second");
        let refused = gate.admit("flags").expect_err("third");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("--max-watch-streams"),
            "{refused:?}"
        );
        assert_eq!(gate.open(), 2);
        drop(first);
        let third = gate.admit("configs").expect("a place is free again");
        drop((second, third));
        assert_eq!(gate.open(), 0);
    }

    #[tokio::test]
    async fn after_the_end_every_stream_is_told_and_none_is_admitted() {
        let gate = StreamGate::new("Watch", "--max-watch-streams", 10);
        let ticket = gate.admit("flags").expect("admitted");
        gate.end_all();
        ticket.ended().await;
        let refused = gate.admit("flags").expect_err("shutting down");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
    }
}
