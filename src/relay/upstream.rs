//! Serving followers: the Follow stream, RecordHealth and RecordUsage.
//!
//! Every readyd can be followed, whether its source is a database or an
//! upstream of its own (tiers). A Follow stream is a Watch stream with a
//! third kind of message: after the hello, the token verifiers and the
//! upstream's freshness, it sends a snapshot (or the changes after
//! `since_version` while the history holds them), then every change, each
//! as a change for a follower that holds its environment or as a progress
//! marker for one that does not, so versions stay gap-free. Snapshots and
//! changes are encoded once and shared ([`super::encode`]); a follower
//! that falls behind gets a fresh snapshot, without slowing the others.
//!
//! The Follow method is served by hand: its response body hands the shared
//! frames to HTTP/2 as they are. tonic's server-streaming body copies every
//! message into an encode buffer of the stream's own, which stays as large
//! as the snapshot parts it held for the stream's life: most of what an
//! idle follower cost its upstream. The generated server answers the rest.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::Frame;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::codec::{BufferSettings, Streaming};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tower::Service;

use super::PROTOCOL;
use super::coverage::Coverage;
use super::encode::{self, Encodings};
use super::verifiers::Verifiers;
use crate::api::Database;
use crate::api::convert::from_pb_struct;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::replication_service_server::{
    ReplicationService, ReplicationServiceServer,
};
use crate::api::streams::{StreamGate, StreamTicket};
use crate::app::MAX_MESSAGE_BYTES;
use crate::flags::is_valid_environment;
use crate::state::{Event, Snapshot, State};

/// The Follow method's path.
pub const FOLLOW_PATH: &str = "/readyd.v1.ReplicationService/Follow";
/// Messages a Follow stream buffers: shared bytes, so cheap to hold.
const STREAM_BUFFER: usize = 16;
/// The gRPC content type of a Follow response.
const GRPC_CONTENT_TYPE: http::HeaderValue = http::HeaderValue::from_static("application/grpc");
/// Recordings one RecordHealth call may carry.
pub const MAX_RECORDINGS: usize = 100;
/// Longest instance name recorded.
const MAX_INSTANCE_LEN: usize = 128;

/// What the replication service serves from.
#[derive(Debug)]
pub struct Replication {
    /// The state followers replicate.
    pub state: Arc<State>,
    /// Admits Follow streams and ends them at shutdown.
    pub follows: Arc<StreamGate>,
    /// This instance's name, in the hello.
    pub instance: String,
    /// Which environments this readyd holds; `None`: all (a database).
    pub coverage: Option<Arc<Coverage>>,
    /// The verifiers followers get.
    pub verifiers: watch::Receiver<Arc<Verifiers>>,
    /// Shared encodings.
    pub encodings: Arc<Encodings>,
    /// Where RecordHealth writes (a follower forwards it instead).
    pub store: Database,
}

/// The ReplicationService, as added to the server.
#[derive(Debug, Clone)]
pub struct ReplicationServer {
    replication: Arc<Replication>,
    generated: ReplicationServiceServer<RecordHealthApi>,
}

impl ReplicationServer {
    /// The service over `replication`.
    pub fn new(replication: Replication) -> Self {
        let replication = Arc::new(replication);
        let generated = ReplicationServiceServer::new(RecordHealthApi(Arc::clone(&replication)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self {
            replication,
            generated,
        }
    }
}

impl NamedService for ReplicationServer {
    const NAME: &'static str = "readyd.v1.ReplicationService";
}

impl Service<http::Request<tonic::body::Body>> for ReplicationServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == FOLLOW_PATH {
            let replication = Arc::clone(&self.replication);
            Box::pin(async move { Ok(replication.serve_follow(request).await) })
        } else {
            let mut generated = self.generated.clone();
            Box::pin(async move { generated.call(request).await })
        }
    }
}

/// A Follow response's body: the stream's frames as they are (shared
/// bytes, each a whole gRPC frame), then the OK trailers.
struct FollowBody {
    frames: mpsc::Receiver<Bytes>,
    /// The trailers have been sent.
    ended: bool,
}

impl http_body::Body for FollowBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(self.frames.poll_recv(cx)) {
            Some(frame) if encode::message_len(&frame) <= MAX_MESSAGE_BYTES => {
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            // As tonic's encoder refuses a message over the limit.
            Some(frame) => Status::out_of_range(format!(
                "Error, encoded message length too large: found {} bytes, the limit is: {MAX_MESSAGE_BYTES} bytes",
                encode::message_len(&frame)
            )),
            // The stream ended (shutdown, or the follower went away).
            None => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = http::HeaderMap::with_capacity(3);
        Poll::Ready(Some(
            status
                .add_header(&mut trailers)
                .map(|()| Frame::trailers(trailers)),
        ))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

impl Replication {
    /// Answers a Follow call: the request read as tonic reads a unary one,
    /// the answer a gRPC response whose body is [`FollowBody`].
    async fn serve_follow(
        self: Arc<Self>,
        request: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let answer = async {
            let request = read_follow_request(request).await?;
            self.follow(request).await
        };
        match answer.await {
            Ok(frames) => {
                let body = FollowBody {
                    frames,
                    ended: false,
                };
                let mut response = http::Response::new(tonic::body::Body::new(body));
                *response.version_mut() = http::Version::HTTP_2;
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
                response
            }
            Err(status) => status.into_http(),
        }
    }

    async fn follow(
        self: Arc<Self>,
        request: pb::FollowRequest,
    ) -> Result<mpsc::Receiver<Bytes>, Status> {
        if request.protocol != PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "this readyd speaks replication protocol {PROTOCOL} and the follower {}: run the same readyd release on both",
                request.protocol
            )));
        }
        if request.environments.is_empty() {
            return Err(Status::invalid_argument(
                "environments: name at least the follower's own environment",
            ));
        }
        let mut environments = BTreeSet::new();
        for (i, environment) in request.environments.into_iter().enumerate() {
            if !is_valid_environment(&environment) {
                return Err(Status::invalid_argument(format!(
                    "environments[{i}]: not an environment name"
                )));
            }
            environments.insert(environment);
        }
        if request.since_version.is_some_and(|since| since < 0) {
            return Err(Status::invalid_argument(
                "since_version: must not be negative",
            ));
        }
        let ticket = self.follows.admit("follow")?;
        if let Some(coverage) = &self.coverage {
            coverage.hold(&environments).await?;
        }
        tracing::debug!(
            follower = %crate::echo::truncate(&request.instance),
            environments = ?environments,
            since_version = ?request.since_version,
            "a follower follows"
        );
        // Subscribe before anything is read, so no change slips between.
        let subscription = self.state.subscribe();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = FollowStream {
            replication: Arc::clone(&self),
            tx,
            environments,
            last_version: 0,
            told_stale: None,
        };
        tokio::spawn(stream.run(
            subscription.events,
            subscription.snapshot,
            request.since_version,
            ticket,
        ));
        Ok(rx)
    }
}

/// The one FollowRequest of a call. No request compression is accepted
/// (none is offered), as the generated servers do.
async fn read_follow_request(
    request: http::Request<tonic::body::Body>,
) -> Result<pb::FollowRequest, Status> {
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            encoding.to_str().unwrap_or("?")
        )));
    }
    let decoder = tonic_prost::ProstCodec::<pb::FollowResponse, pb::FollowRequest>::raw_decoder(
        BufferSettings::default(),
    );
    let mut messages =
        Streaming::new_request(decoder, request.into_body(), None, Some(MAX_MESSAGE_BYTES));
    let message = messages
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    // To the end of the request, as tonic reads a unary one.
    messages.trailers().await?;
    Ok(message)
}

/// One follower's stream.
struct FollowStream {
    replication: Arc<Replication>,
    tx: mpsc::Sender<Bytes>,
    /// The environments the follower holds.
    environments: BTreeSet<String>,
    /// The version the follower is consistent with.
    last_version: i64,
    /// The staleness last told.
    told_stale: Option<bool>,
}

/// The follower went away.
struct Gone;

impl FollowStream {
    async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<Event>>,
        snapshot: Arc<Snapshot>,
        since_version: Option<i64>,
        ticket: StreamTicket,
    ) {
        let state = Arc::clone(&self.replication.state);
        let mut verifiers = self.replication.verifiers.clone();
        let mut freshness = state.freshness().changes();
        let opening = async {
            self.send(encode::hello(&self.replication.instance, snapshot.version))
                .await?;
            let current = Arc::clone(&verifiers.borrow_and_update());
            self.send(encode::verifiers(&current)).await?;
            self.tell_freshness().await?;
            let resumed = since_version
                .and_then(|since| state.events_since(since).map(|history| (since, history)));
            match resumed {
                Some((since, history)) => {
                    self.last_version = since;
                    for event in &history {
                        self.send_event(event).await?;
                    }
                    Ok(())
                }
                None => self.send_snapshot(&snapshot).await,
            }
        };
        if opening.await.is_err() {
            return;
        }
        drop(snapshot);
        loop {
            let stale_at = state
                .freshness()
                .stale_at()
                .filter(|at| *at > std::time::Instant::now());
            let turns_stale = async {
                match stale_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let sent = tokio::select! {
                received = events.recv() => match received {
                    Ok(event) => self.send_event(&event).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let snapshot = state.snapshot();
                        self.send_snapshot(&snapshot).await
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                changed = verifiers.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = Arc::clone(&verifiers.borrow_and_update());
                    self.send(encode::verifiers(&current)).await
                }
                changed = freshness.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.tell_freshness().await
                }
                () = turns_stale => self.tell_freshness().await,
                () = self.tx.closed() => return,
                () = ticket.ended() => return,
            };
            if sent.is_err() {
                return;
            }
        }
    }

    async fn send(&self, message: Bytes) -> Result<(), Gone> {
        self.tx.send(message).await.map_err(|_| Gone)
    }

    async fn tell_freshness(&mut self) -> Result<(), Gone> {
        let stale_for = self.replication.state.freshness().stale_for();
        let stale = stale_for.is_some();
        if self.told_stale == Some(stale) {
            return Ok(());
        }
        self.told_stale = Some(stale);
        self.send(encode::freshness(stale_for)).await
    }

    async fn send_event(&mut self, event: &Arc<Event>) -> Result<(), Gone> {
        if event.version() <= self.last_version {
            return Ok(());
        }
        if let Event::Resync { .. } = **event {
            let snapshot = self.replication.state.snapshot();
            return self.send_snapshot(&snapshot).await;
        }
        self.last_version = event.version();
        let encoded = self.replication.encodings.event(event);
        let message = encoded.for_follower(&self.environments).clone();
        self.send(message).await
    }

    async fn send_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Gone> {
        if self.last_version > 0 && snapshot.version <= self.last_version {
            return Ok(());
        }
        self.last_version = snapshot.version;
        let parts = self
            .replication
            .encodings
            .snapshot(snapshot, &self.environments);
        for part in parts.iter() {
            self.send(part.clone()).await?;
        }
        Ok(())
    }
}

/// RecordHealth (and the stub of Follow, which is served by hand).
#[derive(Debug, Clone)]
pub struct RecordHealthApi(Arc<Replication>);

#[tonic::async_trait]
impl ReplicationService for RecordHealthApi {
    async fn record_health(
        &self,
        request: Request<pb::RecordHealthRequest>,
    ) -> Result<Response<pb::RecordHealthResponse>, Status> {
        let recordings = request.into_inner().recordings;
        if recordings.len() > MAX_RECORDINGS {
            return Err(Status::invalid_argument(format!(
                "recordings: at most {MAX_RECORDINGS} per call, not {}",
                recordings.len()
            )));
        }
        let mut rows = Vec::with_capacity(recordings.len());
        for (i, recording) in recordings.into_iter().enumerate() {
            let instance = recording.instance.trim();
            if instance.is_empty()
                || instance.chars().count() > MAX_INSTANCE_LEN
                || instance.chars().any(char::is_control)
            {
                return Err(Status::invalid_argument(format!(
                    "recordings[{i}].instance: 1 to {MAX_INSTANCE_LEN} printable characters"
                )));
            }
            if !is_valid_environment(&recording.environment) {
                return Err(Status::invalid_argument(format!(
                    "recordings[{i}].environment: not an environment name"
                )));
            }
            let checks = from_pb_struct(recording.checks.unwrap_or_default()).map_err(|err| {
                Status::invalid_argument(format!("recordings[{i}].checks: {err}"))
            })?;
            rows.push((instance.to_owned(), recording.environment, checks));
        }
        let store = self.0.store.get()?;
        let mut recorded = 0;
        for (instance, environment, checks) in rows {
            store
                .check_system_health(&instance, &serde_json::Value::Object(checks), &environment)
                .await
                .map_err(crate::api::error::ApiError::from)?;
            recorded += 1;
        }
        Ok(Response::new(pb::RecordHealthResponse { recorded }))
    }

    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        let (id, rows) = crate::usage::report::checked(request.into_inner(), chrono::Utc::now())?;
        let applied = self
            .0
            .store
            .get()?
            .add_usage(&id, &rows)
            .await
            .map_err(crate::api::error::ApiError::from)?;
        Ok(Response::new(pb::RecordUsageResponse { applied }))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn body_of(frames: Vec<Bytes>) -> FollowBody {
        let (tx, rx) = mpsc::channel(frames.len().max(1));
        for frame in frames {
            tx.try_send(frame).expect("room in the channel");
        }
        FollowBody {
            frames: rx,
            ended: false,
        }
    }

    #[tokio::test]
    async fn a_follow_body_sends_the_shared_frames_themselves_then_ok_trailers() {
        let hello = encode::hello("upstream", 7);
        let progress = encode::freshness(None);
        let mut body = body_of(vec![hello.clone(), progress.clone()]);
        for shared in [hello, progress] {
            let frame = body.frame().await.expect("a frame").expect("no error");
            let data = frame.into_data().expect("data");
            assert_eq!(
                data.as_ptr(),
                shared.as_ptr(),
                "the shared bytes, not a copy"
            );
            assert_eq!(data.len(), shared.len());
        }
        let trailers = body
            .frame()
            .await
            .expect("trailers")
            .expect("no error")
            .into_trailers()
            .expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(http_body::Body::is_end_stream(&body));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_follow_body_refuses_a_message_over_the_limit() {
        let too_large = Bytes::from(vec![0; encode::FRAME_HEADER + MAX_MESSAGE_BYTES + 1]);
        let mut body = body_of(vec![too_large]);
        let trailers = body
            .frame()
            .await
            .expect("trailers")
            .expect("no error")
            .into_trailers()
            .expect("trailers");
        assert_eq!(
            trailers["grpc-status"],
            (tonic::Code::OutOfRange as i32).to_string()
        );
        assert!(body.frame().await.is_none());
    }
}
