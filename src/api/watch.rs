//! The one implementation of Watch streams (WatchFlags, WatchConfigs):
//! subscribe first, then send a snapshot (or the changes after
//! `since_version`), then every change; versions only grow; a subscriber
//! that falls behind, or a full reload, gets a fresh snapshot; the stream
//! ends at shutdown or when the client goes away.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codegen::BoxStream;

use crate::state::{Event, Snapshot, State};
use crate::telemetry::OpenStream;

/// Messages a stream buffers for a slow client; past them the stream waits,
/// falls behind the broadcast and catches up with a fresh snapshot.
const STREAM_BUFFER: usize = 64;

/// Snapshot messages are cut at about this size, well under the 4 MiB
/// message limit that most clients enforce.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// What one kind of stream sends.
pub trait WatchKind: Send + Sync + 'static {
    /// The stream's message type.
    type Message: Send + 'static;

    /// The kind's label in the open-streams metric.
    const METRIC_KIND: &'static str;

    /// The messages of a full snapshot, in parts, first to last.
    fn snapshot(&self, snapshot: &Snapshot) -> Vec<Self::Message>;

    /// The message for one change, when this stream wants it.
    fn change(&self, event: &Event) -> Option<Self::Message>;
}

/// Starts a stream of `kind` over `state`.
pub fn watch<K: WatchKind>(
    kind: K,
    state: Arc<State>,
    since_version: Option<i64>,
    streams_end: CancellationToken,
) -> BoxStream<K::Message> {
    // Subscribe before reading anything, so no change slips between.
    let subscription = state.subscribe();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let watcher = Watcher {
        kind,
        _open: OpenStream::open(K::METRIC_KIND),
        tx,
        state,
        last_version: 0,
        started: false,
    };
    tokio::spawn(watcher.run(
        subscription.events,
        subscription.snapshot,
        since_version,
        streams_end,
    ));
    Box::pin(ReceiverStream::new(rx))
}

/// One running stream.
struct Watcher<K: WatchKind> {
    /// What to send.
    kind: K,
    /// Counts the stream as open while the watcher lives.
    _open: OpenStream,
    /// To the client.
    tx: mpsc::Sender<Result<K::Message, Status>>,
    /// For fresh snapshots after falling behind.
    state: Arc<State>,
    /// The version the client is consistent with; messages only go up.
    last_version: i64,
    /// Whether the first message (snapshot or resumed changes) went out.
    started: bool,
}

impl<K: WatchKind> Drop for Watcher<K> {
    fn drop(&mut self) {
        // A stream's buffers are freed now; after a burst of closing
        // streams that is worth giving back to the system.
        crate::memory::released();
    }
}

/// The client went away.
struct Gone;

impl<K: WatchKind> Watcher<K> {
    async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<Event>>,
        snapshot: Arc<Snapshot>,
        since_version: Option<i64>,
        streams_end: CancellationToken,
    ) {
        let resumed = since_version.and_then(|since| {
            self.state
                .events_since(since)
                .map(|history| (since, history))
        });
        let start = match resumed {
            Some((since, history)) => {
                self.last_version = since;
                self.started = true;
                self.send_events(&history).await
            }
            None => self.send_snapshot(&snapshot).await,
        };
        if start.is_err() {
            return;
        }
        loop {
            let received = tokio::select! {
                received = events.recv() => received,
                () = self.tx.closed() => return,
                () = streams_end.cancelled() => return,
            };
            let sent = match received {
                Ok(event) => self.send_events(std::slice::from_ref(&event)).await,
                // Fell behind: a fresh snapshot replaces the missed changes.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let snapshot = self.state.snapshot();
                    self.send_snapshot(&snapshot).await
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if sent.is_err() {
                return;
            }
        }
    }

    async fn send(&self, message: K::Message) -> Result<(), Gone> {
        self.tx.send(Ok(message)).await.map_err(|_| Gone)
    }

    async fn send_events(&mut self, events: &[Arc<Event>]) -> Result<(), Gone> {
        for event in events {
            if event.version() <= self.last_version {
                continue;
            }
            if let Event::Resync { .. } = **event {
                let snapshot = self.state.snapshot();
                self.send_snapshot(&snapshot).await?;
                continue;
            }
            self.last_version = event.version();
            if let Some(message) = self.kind.change(event) {
                self.send(message).await?;
            }
        }
        Ok(())
    }

    async fn send_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Gone> {
        if self.started && snapshot.version <= self.last_version {
            return Ok(());
        }
        self.last_version = snapshot.version;
        self.started = true;
        for message in self.kind.snapshot(snapshot) {
            self.send(message).await?;
        }
        Ok(())
    }
}

/// The messages of a snapshot: `items` split into parts of about
/// [`SNAPSHOT_CHUNK_BYTES`] each (at least one part, even when empty), each
/// made into a message by `part(items, first, last)`.
pub fn snapshot_parts<T: prost::Message, M>(
    items: Vec<T>,
    part: impl Fn(Vec<T>, bool, bool) -> M,
) -> Vec<M> {
    let mut parts = vec![Vec::new()];
    let mut size = 0;
    for item in items {
        let len = item.encoded_len();
        if size + len > SNAPSHOT_CHUNK_BYTES && size > 0 {
            parts.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = parts.last_mut() {
            last.push(item);
        }
    }
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, items)| part(items, i == 0, i + 1 == count))
        .collect()
}
