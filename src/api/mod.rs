//! The gRPC edge: one file per proto service, the auth layer, and the error
//! mapping. Translates between protobuf and the cores; no rules live here.

pub mod auth;
pub mod config;
pub mod convert;
pub mod error;
pub mod flags;
pub mod grpc_health;
pub mod health;
pub mod pb;
pub mod watch;

pub use convert::to_timestamp;

use error::ApiError;

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
