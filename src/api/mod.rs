//! The gRPC edge: one file per proto service, the auth layer, and the error
//! mapping. Translates between protobuf and the cores; no rules live here.

pub mod auth;
pub mod config;
pub mod convert;
pub mod deployments;
pub mod error;
pub mod flagd;
pub mod flags;
pub mod grpc_health;
pub mod health;
pub mod json_context;
pub mod lazy;
pub mod observe;
pub mod pb;
pub mod streams;
pub mod targeting;
pub mod usage;
pub mod watch;

pub use convert::to_timestamp;

use std::time::Duration;

use error::ApiError;

use crate::state::State;
use crate::store::Store;

/// The database behind the API. A follower has none: its forward layer
/// sends every call that needs one to the upstream, so a handler that
/// reaches for it there is a mistake, answered UNAVAILABLE.
#[derive(Debug, Clone)]
pub struct Database(Option<Store>);

impl Database {
    /// `store`, or none on a follower.
    pub fn new(store: Option<Store>) -> Self {
        Self(store)
    }

    /// The store, or UNAVAILABLE.
    pub fn get(&self) -> Result<&Store, tonic::Status> {
        self.0.as_ref().ok_or_else(|| {
            tonic::Status::unavailable("this readyd follows an upstream and has no database")
        })
    }
}

/// The most an answer of a paged listing (ListFlags, ListConfigs,
/// EvaluateFlags) holds in items: the message limit, less room for the
/// rest of the message and its framing.
pub const ANSWER_BUDGET_BYTES: usize = crate::app::MAX_MESSAGE_BYTES - 64 * 1024;

/// Largest `page_size` of the listings paged by key.
pub const MAX_KEY_PAGE: u32 = 1000;

/// The bytes `message` takes as one element of a repeated field: tag,
/// length and body.
pub fn framed_len<M: prost::Message>(message: &M) -> usize {
    let len = message.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// RESOURCE_EXHAUSTED for a listing asked for whole that does not fit in
/// one answer: says how to ask for it in pages.
pub fn too_large_for_one_answer(listing: &str, what: &str) -> ApiError {
    ApiError::ResourceExhausted(format!(
        "{listing}: {what} do not fit in one answer ({} MiB at most); ask for pages with \
         page_size (1 to {MAX_KEY_PAGE}) and follow next_page_token",
        crate::app::MAX_MESSAGE_BYTES / (1024 * 1024)
    ))
}

/// How long a write waits for the change listener to apply it before
/// answering anyway.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until this instance's snapshot holds `version`, so the writer's
/// next read sees its own write. The write is committed either way: on a
/// timeout it answers anyway and says so in the log.
pub async fn read_your_write(state: &State, version: i64) {
    if !state.wait_for(version, READ_YOUR_WRITES_TIMEOUT).await {
        tracing::warn!(
            version,
            "a committed write is not in the snapshot yet; answering anyway"
        );
    }
}

/// `message` as the answer to a write that produced `version`, which it
/// names in a header: a follower that forwarded the write waits for that
/// version too before answering (read-your-writes through every tier).
pub fn written<T>(version: i64, message: T) -> tonic::Response<T> {
    let mut response = tonic::Response::new(message);
    response.metadata_mut().insert(
        crate::relay::VERSION_HEADER,
        tonic::metadata::MetadataValue::from(version),
    );
    response
}

/// An INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument {
        field,
        message: message.into(),
    }
}

/// Audit page size when the request names none.
const DEFAULT_AUDIT_PAGE: u32 = 100;
/// Largest audit page.
const MAX_AUDIT_PAGE: u32 = 1000;

/// The query of an audit listing (`ListConfigAudit`, `ListFlagAudit`) and
/// its page size; `listing` names it in errors about the page token.
pub fn audit_query(
    key: String,
    since: Option<prost_types::Timestamp>,
    until: Option<prost_types::Timestamp>,
    page_size: u32,
    page_token: &str,
    listing: &str,
) -> Result<(crate::store::audit::AuditQuery, u32), ApiError> {
    let key = if key.is_empty() {
        None
    } else {
        crate::config::check_key(&key)?;
        Some(key)
    };
    let time = |field: &'static str, t: Option<prost_types::Timestamp>| {
        t.map(|t| convert::from_timestamp(&t).ok_or_else(|| invalid(field, "is not a valid time")))
            .transpose()
    };
    let since = time("since", since)?;
    let until = time("until", until)?;
    let page_size = crate::paging::page_size(
        page_size,
        crate::paging::PageLimits {
            default: DEFAULT_AUDIT_PAGE,
            max: MAX_AUDIT_PAGE,
        },
    )?;
    let before_id = crate::paging::page_token(page_token, listing)?;
    Ok((
        crate::store::audit::AuditQuery {
            key,
            since,
            until,
            before_id,
            limit: i64::from(page_size) + 1,
        },
        page_size,
    ))
}

/// A version given by a client: never negative.
pub fn checked_version(field: &'static str, version: Option<i64>) -> Result<(), ApiError> {
    match version {
        Some(v) if v < 0 => Err(invalid(field, "must not be negative")),
        _ => Ok(()),
    }
}

/// The request header naming who makes a change, for the audit trail.
pub const ACTOR_HEADER: &str = "x-readyd-actor";

/// The actor of a mutation: the `x-readyd-actor` header, else `admin`.
pub fn actor<T>(request: &tonic::Request<T>) -> Result<String, ApiError> {
    let Some(value) = request.metadata().get(ACTOR_HEADER) else {
        return Ok("admin".to_owned());
    };
    let invalid = || ApiError::InvalidArgument {
        field: ACTOR_HEADER,
        message: "must be 1 to 128 printable characters".to_owned(),
    };
    let actor = value.to_str().map_err(|_| invalid())?.trim();
    if actor.is_empty() || actor.chars().count() > 128 || actor.chars().any(char::is_control) {
        return Err(invalid());
    }
    Ok(actor.to_owned())
}
