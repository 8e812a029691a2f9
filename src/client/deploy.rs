//! `readyd deploy record|rollback|list|current`.

use clap::Subcommand;

use super::output::{self, cell, table};
use super::{Client, ClientArgs, ClientError};
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::deployment_service_client::DeploymentServiceClient;

/// `readyd deploy`.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DeployCommand,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// The deployment commands.
#[derive(Subcommand, Debug)]
pub enum DeployCommand {
    /// Record a deployment; sets app_version of its environment (needs the admin token).
    #[command(
        after_help = "Example:\n  readyd deploy record 2.4.1 --environment production --by ci --commit 3f2a9c1"
    )]
    Record {
        /// The version deployed.
        #[arg(value_name = "VERSION")]
        deploy_version: String,
        /// The environment deployed to.
        #[arg(long)]
        environment: String,
        /// Who deployed.
        #[arg(long = "by")]
        deployed_by: String,
        /// The commit deployed (7 to 40 hex digits).
        #[arg(long = "commit", default_value = "")]
        commit_sha: String,
        /// Free text.
        #[arg(long, default_value = "")]
        notes: String,
        /// pending, in_progress, success (default) or failed.
        #[arg(long)]
        status: Option<String>,
    },
    /// Roll an environment back (needs the admin token).
    #[command(
        after_help = "Example:\n  readyd deploy rollback --environment production --by alice --reason \"error rate\""
    )]
    Rollback {
        /// The environment.
        #[arg(long)]
        environment: String,
        /// Who rolls back.
        #[arg(long = "by")]
        actor: String,
        /// Deployment id to return to (default: the previous successful one).
        #[arg(long = "to")]
        target: Option<i64>,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List deployments, newest first.
    #[command(after_help = "Example:\n  readyd deploy list --environment production --limit 10")]
    List {
        /// Only this environment.
        #[arg(long, default_value = "")]
        environment: String,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show an environment's current deployment.
    #[command(after_help = "Example:\n  readyd deploy current --environment production")]
    Current {
        /// The environment.
        #[arg(long)]
        environment: String,
    },
}

fn status(raw: Option<&str>) -> Result<i32, ClientError> {
    Ok(match raw {
        None => pb::DeploymentStatus::Unspecified,
        Some("pending") => pb::DeploymentStatus::Pending,
        Some("in_progress") => pb::DeploymentStatus::InProgress,
        Some("success") => pb::DeploymentStatus::Success,
        Some("failed") => pb::DeploymentStatus::Failed,
        Some("rolled_back") => pb::DeploymentStatus::RolledBack,
        Some(other) => {
            return Err(ClientError::Usage(format!(
                "--status {other:?}: expected pending, in_progress, success, failed or rolled_back"
            )));
        }
    }
    .into())
}

fn deployment_table(rows: &[pb::Deployment]) -> String {
    table(
        &["ID", "VERSION", "ENVIRONMENT", "STATUS", "KIND", "BY", "AT"],
        rows.iter()
            .map(|d| {
                let json = output::deployment(d);
                vec![
                    d.id.to_string(),
                    d.version.clone(),
                    d.environment.clone(),
                    cell(&json["status"]),
                    cell(&json["kind"]),
                    d.deployed_by.clone(),
                    cell(&json["deployed_at"]),
                ]
            })
            .collect(),
    )
}

/// Runs a deployment command.
pub async fn run(args: DeployArgs) -> Result<(), ClientError> {
    let client = Client::connect(args.client).await?;
    let mut deployments = DeploymentServiceClient::new(client.channel.clone());
    match args.command {
        DeployCommand::Record {
            deploy_version,
            environment,
            deployed_by,
            commit_sha,
            notes,
            status: raw,
        } => {
            let request = pb::RecordDeploymentRequest {
                version: deploy_version,
                environment,
                deployed_by,
                commit_sha,
                notes,
                status: status(raw.as_deref())?,
            };
            let recorded = deployments
                .record_deployment(client.request(request)?)
                .await?
                .into_inner();
            let d = recorded.deployment.unwrap_or_default();
            client.print(output::deployment(&d), || {
                format!(
                    "recorded {} to {} (id {}, was {})\n",
                    d.version, d.environment, d.id, d.previous_version
                )
            });
        }
        DeployCommand::Rollback {
            environment,
            actor,
            target,
            reason,
        } => {
            let request = pb::RecordRollbackRequest {
                environment,
                target_deployment_id: target,
                reason,
                actor,
            };
            let answer = deployments
                .record_rollback(client.request(request)?)
                .await?
                .into_inner();
            let rollback = answer.rollback.unwrap_or_default();
            let rolled_back = answer.rolled_back.unwrap_or_default();
            client.print(
                serde_json::json!({
                    "rollback": output::deployment(&rollback),
                    "rolled_back": output::deployment(&rolled_back),
                }),
                || {
                    format!(
                        "rolled {} back from {} to {} (id {})\n",
                        rollback.environment, rolled_back.version, rollback.version, rollback.id
                    )
                },
            );
        }
        DeployCommand::List {
            environment,
            status: raw,
            limit,
        } => {
            let request = pb::ListDeploymentsRequest {
                environment,
                status: status(raw.as_deref())?,
                page_size: limit,
                page_token: String::new(),
            };
            let list = deployments
                .list_deployments(client.request(request)?)
                .await?
                .into_inner();
            client.print(
                serde_json::Value::Array(list.deployments.iter().map(output::deployment).collect()),
                || deployment_table(&list.deployments),
            );
        }
        DeployCommand::Current { environment } => {
            let request = pb::GetCurrentDeploymentRequest { environment };
            let current = deployments
                .get_current_deployment(client.request(request)?)
                .await?
                .into_inner();
            let d = current.deployment.unwrap_or_default();
            client.print(output::deployment(&d), || {
                deployment_table(std::slice::from_ref(&d))
            });
        }
    }
    Ok(())
}
