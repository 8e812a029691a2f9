//! The one place where errors become gRPC statuses.

use tonic::Status;

use crate::flags::{ValidationError, ValidationErrors};
use crate::store::StoreError;

/// An error of any API handler.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the request is invalid; nothing was changed.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An expected version did not match.
    #[error("{0}")]
    Aborted(String),
    /// The request is valid but the state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The answer would be too large (the message tells how to ask for less).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        ApiError::InvalidArgument {
            field: err.field,
            message: err.message,
        }
    }
}

impl From<ValidationErrors> for ApiError {
    /// Every broken rule in one INVALID_ARGUMENT, reading
    /// `field: what; field: what` (the first error's field leads).
    fn from(errors: ValidationErrors) -> Self {
        let mut errors = errors.into_vec().into_iter();
        let Some(first) = errors.next() else {
            // ValidationErrors is never empty; stay sensible if it were.
            return ApiError::InvalidArgument {
                field: "request",
                message: "is invalid".to_owned(),
            };
        };
        let mut message = first.message;
        for other in errors {
            message.push_str("; ");
            message.push_str(&other.to_string());
        }
        ApiError::InvalidArgument {
            field: first.field,
            message,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let err = match err {
            ApiError::Store(StoreError::Invalid(errors)) => ApiError::from(errors),
            other => other,
        };
        match err {
            ApiError::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::Aborted(message) => Status::aborted(message),
            ApiError::FailedPrecondition(message) => Status::failed_precondition(message),
            ApiError::ResourceExhausted(message) => Status::resource_exhausted(message),
            ApiError::Store(StoreError::NotFound(message)) => Status::not_found(message),
            ApiError::Store(StoreError::FailedPrecondition(message)) => {
                Status::failed_precondition(message)
            }
            ApiError::Store(err @ StoreError::VersionConflict { .. }) => {
                Status::aborted(err.to_string())
            }
            ApiError::Store(StoreError::Unavailable(source)) => {
                tracing::warn!(error = %source, "database unavailable");
                Status::unavailable(
                    "the database is unreachable: reads are served from memory, changes need the database",
                )
            }
            ApiError::Store(StoreError::TimedOut(source)) => {
                // Not ABORTED: that means a version conflict, and the
                // caller would re-read and retry at once.
                tracing::warn!(error = %source, "a database statement timed out");
                Status::unavailable(
                    "the database did not answer in time (a lock held by another session, or an \
                     overloaded database); nothing was changed, try again later",
                )
            }
            ApiError::Store(other) => {
                // Details go to the log; the caller gets no internals.
                tracing::error!(error = %other, "database error");
                Status::internal("internal database error; see readyd's log")
            }
        }
    }
}
