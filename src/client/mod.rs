//! The command-line client: `readyd health|flags|config|maintenance|deploy`
//! talk to a running readyd over gRPC and print tables for people or JSON
//! for scripts. Errors print one line (the gRPC status and message) and exit
//! non-zero.

pub mod channel;
pub mod config;
pub mod deploy;
pub mod flags;
pub mod flags_file;
pub mod health;
mod output;
pub mod segments;

use std::process::ExitCode;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

use channel::RetryingChannel;

pub use output::Output;

/// Flags every client command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Address of the readyd to talk to.
    #[arg(
        long,
        env = "READYD_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,

    /// Admin (or read) token, sent as `authorization: Bearer <token>`.
    #[arg(
        long,
        env = "READYD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,

    /// Who makes the change, for the audit trail (x-readyd-actor).
    #[arg(long, env = "READYD_ACTOR", global = true)]
    pub actor: Option<String>,

    /// table for people, json for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,

    /// How long to wait for an answer, e.g. 5s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not usable or nothing answers there.
    #[error("cannot reach readyd at {addr}: {reason}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// readyd answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    /// The command line is not usable as given.
    #[error("{0}")]
    Usage(String),
}

/// Items per page when a command lists flags or config rows.
const PAGE_SIZE: u32 = 500;

/// Whether a listing is complete after the page asked for with `token`
/// that answered `next`; a server that hands the same token back would
/// make the client ask forever, and is an error.
fn last_page(token: &str, next: &str) -> Result<bool, ClientError> {
    if next.is_empty() {
        Ok(true)
    } else if next == token {
        Err(ClientError::Status(tonic::Status::internal(
            "the server answered a page with the token that asked for it",
        )))
    } else {
        Ok(false)
    }
}

/// The status code as gRPC spells it, e.g. `PERMISSION_DENIED`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A connected client.
pub struct Client {
    /// The connection; calls the server never processed (it was shutting
    /// down) are sent again.
    pub channel: RetryingChannel,
    /// The flags.
    pub args: ClientArgs,
}

impl Client {
    /// Connects to `args.addr`.
    pub async fn connect(args: ClientArgs) -> Result<Client, ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            addr: args.addr.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(args.addr.clone())
            .map_err(|err| connect_error(err.to_string()))?
            .connect_timeout(args.timeout);
        let channel = channel::connect(endpoint).await.map_err(|err| {
            // The useful part ("Connection refused") is deep in the chain.
            let mut reasons = vec![err.to_string()];
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                reasons.push(cause.to_string());
                source = cause.source();
            }
            reasons.dedup();
            connect_error(reasons.join(": "))
        })?;
        Ok(Client { channel, args })
    }

    /// `message` as a request with the token and actor headers and the
    /// `--timeout` deadline.
    pub fn request<T>(&self, message: T) -> Result<tonic::Request<T>, ClientError> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.args.timeout);
        if let Some(token) = &self.args.token {
            let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                ClientError::Usage("the token has characters a header cannot carry".into())
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(actor) = &self.args.actor {
            let value = MetadataValue::try_from(actor.as_str()).map_err(|_| {
                ClientError::Usage("--actor has characters a header cannot carry".into())
            })?;
            request
                .metadata_mut()
                .insert(crate::api::ACTOR_HEADER, value);
        }
        Ok(request)
    }

    /// Prints `json` or `table` as the output flag asks.
    pub fn print(&self, json: serde_json::Value, table: impl FnOnce() -> String) {
        match self.args.output {
            Output::Json => println!("{json}"),
            Output::Table => print!("{}", table()),
        }
    }
}

/// Ends a client command: success, or one error line and exit code 1.
pub fn finish(result: Result<(), ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a JSON value given on the command line; a bare word that is not
/// JSON is taken as a string, so `readyd config set k hello` works.
pub fn json_arg(raw: &str) -> serde_json::Value {
    serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_owned()))
}
