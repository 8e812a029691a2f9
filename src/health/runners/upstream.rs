//! A follower's upstream: grpc.health.v1 Check of the server (the empty
//! name) over the follower's own connection, the one its Follow stream and
//! forwarded calls use, so a dead connection shows here too.

use std::fmt;

use super::grpc::describe_status;
use crate::api::pb::grpc_health_v1::HealthCheckRequest;
use crate::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use crate::api::pb::grpc_health_v1::health_client::HealthClient;
use crate::client::channel::RetryingChannel;

/// Asks the upstream whether it serves.
pub struct UpstreamRunner {
    /// The follower's connection.
    channel: RetryingChannel,
}

impl fmt::Debug for UpstreamRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UpstreamRunner")
    }
}

impl UpstreamRunner {
    /// A runner over `channel`.
    pub fn new(channel: RetryingChannel) -> Self {
        Self { channel }
    }

    /// One Check.
    pub async fn run(&self) -> Result<(), String> {
        let answer = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|status| describe_status(&status))?;
        match answer.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("the upstream answers {}", other.as_str_name())),
        }
    }
}
