//! The one implementation of Watch streams (WatchFlags, WatchConfigs):
//! subscribe first, then send a snapshot (or the changes after
//! `since_version`), then every change; versions only grow; a subscriber
//! that falls behind, or a full reload, gets a fresh snapshot; the stream
//! ends at shutdown or when the client goes away.
//!
//! Memory: a stream never copies the snapshot. It holds the shared
//! snapshot only while sending it, and builds one part of at most
//! [`SNAPSHOT_CHUNK_BYTES`] at a time, once the client has taken the
//! previous ones, so a slow client costs a few parts, whatever the size of
//! the snapshot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch as latest};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codegen::BoxStream;

use super::streams::StreamTicket;
use crate::state::{Event, Snapshot, State};

/// Messages a stream buffers for a slow client; past them the stream waits,
/// falls behind the broadcast and catches up with a fresh snapshot. Few, as
/// each may be a snapshot part: with HTTP/2 flow control holding the rest
/// back, a client that stops reading costs about this many parts plus the
/// one being written, whatever the size of the snapshot.
const STREAM_BUFFER: usize = 2;

/// Snapshot messages are cut at about this size: far under the 4 MiB
/// message limit most clients enforce, and small enough that what a stalled
/// client holds up stays small.
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

/// What one kind of stream sends.
pub trait WatchKind: Send + Sync + 'static {
    /// The stream's message type.
    type Message: Send + 'static;
    /// One item of a snapshot (a flag, a configuration entry).
    type Item: prost::Message + Send + 'static;

    /// The items of `snapshot`, in the order they are sent, made one at a
    /// time as the stream sends them.
    fn items(&self, snapshot: Arc<Snapshot>) -> Box<dyn Iterator<Item = Self::Item> + Send>;

    /// One part of `snapshot` (at `version`).
    fn part(
        &self,
        snapshot: &Snapshot,
        version: i64,
        items: Vec<Self::Item>,
        first: bool,
        last: bool,
    ) -> Self::Message;

    /// The message for one change, when this stream wants it.
    fn change(&self, event: &Event) -> Option<Self::Message>;

    /// The message saying whether answers are stale (`Some(age)`) or
    /// current (`None`), for streams that asked for it.
    fn freshness(&self, stale_for: Option<Duration>) -> Self::Message;
}

/// Starts a stream of `kind` over `state`, admitted by `ticket`. With
/// `with_freshness` it also tells the client whenever answers turn stale
/// or current again.
pub fn watch<K: WatchKind>(
    kind: K,
    state: Arc<State>,
    since_version: Option<i64>,
    with_freshness: bool,
    ticket: StreamTicket,
) -> BoxStream<K::Message> {
    // Subscribe before reading anything, so no change slips between.
    let subscription = state.subscribe();
    let freshness = with_freshness.then(|| state.freshness().changes());
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let watcher = Watcher {
        kind,
        tx,
        state,
        last_version: 0,
        started: false,
        told_stale: false,
    };
    tokio::spawn(watcher.run(
        subscription.events,
        subscription.snapshot,
        since_version,
        freshness,
        ticket,
    ));
    Box::pin(ReceiverStream::new(rx))
}

/// One running stream.
struct Watcher<K: WatchKind> {
    /// What to send.
    kind: K,
    /// To the client.
    tx: mpsc::Sender<Result<K::Message, Status>>,
    /// For fresh snapshots after falling behind.
    state: Arc<State>,
    /// The version the client is consistent with; messages only go up.
    last_version: i64,
    /// Whether the first message (snapshot or resumed changes) went out.
    started: bool,
    /// Staleness last told (a stream starts out current), when the client
    /// asked for it.
    told_stale: bool,
}

/// The client went away.
struct Gone;

impl<K: WatchKind> Watcher<K> {
    async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<Event>>,
        snapshot: Arc<Snapshot>,
        since_version: Option<i64>,
        mut freshness: Option<latest::Receiver<u64>>,
        ticket: StreamTicket,
    ) {
        let resumed = since_version.and_then(|since| {
            self.state
                .events_since(since)
                .map(|history| (since, history))
        });
        let start = match resumed {
            Some((since, history)) => {
                drop(snapshot);
                self.last_version = since;
                self.started = true;
                self.send_events(&history).await
            }
            None => self.send_snapshot(snapshot).await,
        };
        if start.is_err() {
            return;
        }
        loop {
            if freshness.is_some() && self.tell_freshness().await.is_err() {
                return;
            }
            // Wakes the stream when a lost source's grace runs out.
            let stale_at = freshness
                .as_ref()
                .and_then(|_| self.state.freshness().stale_at())
                .filter(|at| *at > std::time::Instant::now());
            let turns_stale = async {
                match stale_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let freshness_changed = async {
                match freshness.as_mut() {
                    Some(changes) => changes.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                received = events.recv() => received,
                () = self.tx.closed() => return,
                () = ticket.ended() => return,
                () = turns_stale => continue,
                open = freshness_changed => {
                    if !open {
                        freshness = None;
                    }
                    continue;
                }
            };
            let sent = match received {
                Ok(event) => self.send_events(std::slice::from_ref(&event)).await,
                // Fell behind: a fresh snapshot replaces the missed changes.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let snapshot = self.state.snapshot();
                    self.send_snapshot(snapshot).await
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

    /// Tells the client when answers turned stale or current again.
    async fn tell_freshness(&mut self) -> Result<(), Gone> {
        let stale_for = self.state.freshness().stale_for();
        let stale = stale_for.is_some();
        if stale == self.told_stale {
            return Ok(());
        }
        self.told_stale = stale;
        self.send(self.kind.freshness(stale_for)).await
    }

    async fn send_events(&mut self, events: &[Arc<Event>]) -> Result<(), Gone> {
        for event in events {
            if event.version() <= self.last_version {
                continue;
            }
            if let Event::Resync { .. } = **event {
                let snapshot = self.state.snapshot();
                self.send_snapshot(snapshot).await?;
                continue;
            }
            self.last_version = event.version();
            if let Some(message) = self.kind.change(event) {
                self.send(message).await?;
            }
        }
        Ok(())
    }

    /// Sends `snapshot` in parts, each made only once the client has room
    /// for it; the snapshot is let go of when done.
    async fn send_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Result<(), Gone> {
        if self.started && snapshot.version <= self.last_version {
            return Ok(());
        }
        let version = snapshot.version;
        self.last_version = version;
        self.started = true;
        let mut items = self.kind.items(Arc::clone(&snapshot)).peekable();
        let mut first = true;
        loop {
            let room = self.tx.reserve().await.map_err(|_| Gone)?;
            let part = next_part(&mut items);
            let last = items.peek().is_none();
            room.send(Ok(self.kind.part(&snapshot, version, part, first, last)));
            if last {
                return Ok(());
            }
            first = false;
        }
    }
}

/// The next items up to about [`SNAPSHOT_CHUNK_BYTES`] (at least one, when
/// there is one).
fn next_part<T: prost::Message>(
    items: &mut std::iter::Peekable<impl Iterator<Item = T>>,
) -> Vec<T> {
    let mut part = Vec::new();
    let mut size = 0;
    while let Some(item) = items.peek() {
        let len = item.encoded_len();
        if size > 0 && size + len > SNAPSHOT_CHUNK_BYTES {
            break;
        }
        size += len;
        if let Some(item) = items.next() {
            part.push(item);
        }
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Parts keep every item once, in order, each part within the chunk
        // size unless a single item is larger.
        #[test]
        fn parts_keep_every_item_in_order_within_the_chunk_size(
            sizes in prop::collection::vec(0usize..(SNAPSHOT_CHUNK_BYTES / 3), 0..40),
        ) {
            let items: Vec<String> = sizes.iter().map(|n| "x".repeat(*n)).collect();
            let mut iter = items.clone().into_iter().peekable();
            let mut seen = Vec::new();
            loop {
                let part = next_part(&mut iter);
                let size: usize = part.iter().map(prost::Message::encoded_len).sum();
                prop_assert!(part.len() == 1 || size <= SNAPSHOT_CHUNK_BYTES);
                seen.extend(part);
                if iter.peek().is_none() {
                    break;
                }
            }
            prop_assert_eq!(seen, items);
        }
    }
}
