//! `readyd health`: a grpc.health.v1 check that exits 0 iff SERVING, so it
//! can serve as an exec probe or a container HEALTHCHECK.

use std::process::ExitCode;

use tokio_stream::StreamExt;

use super::{Client, ClientArgs, ClientError};
use crate::api::pb::grpc_health_v1::HealthCheckRequest;
use crate::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use crate::api::pb::grpc_health_v1::health_client::HealthClient;

/// `readyd health`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  readyd health --service readiness\n  readyd health --watch --service dep.redis"
)]
pub struct HealthArgs {
    /// The name to check: "" (readyd itself), liveness, startup,
    /// readiness, or dep.<check>.
    #[arg(long, default_value = "")]
    pub service: String,

    /// Keep printing every change until the stream ends.
    #[arg(long)]
    pub watch: bool,

    #[command(flatten)]
    pub client: ClientArgs,
}

fn name(status: ServingStatus) -> &'static str {
    match status {
        ServingStatus::Unknown => "UNKNOWN",
        ServingStatus::Serving => "SERVING",
        ServingStatus::NotServing => "NOT_SERVING",
        ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
    }
}

fn show(client: &Client, service: &str, status: ServingStatus) {
    client.print(
        serde_json::json!({ "service": service, "status": name(status) }),
        || format!("{}\n", name(status)),
    );
}

/// Runs `readyd health`: exit 0 iff the (last) status is SERVING.
pub async fn run(args: HealthArgs) -> ExitCode {
    let result = async {
        let client = Client::connect(args.client).await?;
        let mut health = HealthClient::new(client.channel.clone());
        let request = HealthCheckRequest {
            service: args.service.clone(),
        };
        if !args.watch {
            let status = health
                .check(client.request(request)?)
                .await?
                .into_inner()
                .status();
            show(&client, &args.service, status);
            return Ok::<_, ClientError>(status);
        }
        // A watch has no deadline: it runs until readyd ends the stream.
        let mut stream = HealthClient::new(client.channel.clone())
            .watch(tonic::Request::new(request))
            .await?
            .into_inner();
        let mut last = ServingStatus::Unknown;
        while let Some(message) = stream.next().await {
            last = message?.status();
            show(&client, &args.service, last);
        }
        Ok(last)
    }
    .await;
    match result {
        Ok(ServingStatus::Serving) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
