//! `readyd segments list|get|set|delete`: named constraint sets that flag
//! rules share.

use clap::Subcommand;

use super::output::{self, fields, segment_audit, table};
use super::{Client, ClientArgs, ClientError};
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use crate::flags::Constraint;

/// `readyd segments`.
#[derive(clap::Args, Debug)]
pub struct SegmentsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SegmentsCommand,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// The segment commands.
#[derive(Subcommand, Debug)]
pub enum SegmentsCommand {
    /// List segments.
    #[command(after_help = "Example:\n  readyd segments list")]
    List,
    /// Show one segment.
    #[command(after_help = "Example:\n  readyd segments get beta-testers")]
    Get {
        /// The segment's key.
        key: String,
    },
    /// Create or replace a segment (needs the admin token).
    #[command(
        after_help = "Example:\n  readyd segments set beta-testers --constraints '[{\"attribute\": \"plan\", \"operator\": \"in\", \"values\": [\"beta\"]}]'"
    )]
    Set {
        /// The segment's key.
        key: String,
        /// The constraints as a JSON list, or @FILE holding it.
        #[arg(long)]
        constraints: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Write only if the segment is at this version (0: must not exist).
        #[arg(long)]
        expected_version: Option<i64>,
    },
    /// Who changed which segment, newest first.
    #[command(after_help = "Example:\n  readyd segments history beta-testers")]
    History {
        /// Only this segment; every segment when omitted.
        key: Option<String>,
        /// At most this many changes (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Delete a segment (needs the admin token); refused while a flag's
    /// rule names it.
    #[command(after_help = "Example:\n  readyd segments delete beta-testers")]
    Delete {
        /// The segment's key.
        key: String,
        /// Delete only if the segment is at this version.
        #[arg(long)]
        expected_version: Option<i64>,
    },
}

/// `--constraints`: JSON, or `@FILE` holding it.
fn constraints_arg(raw: &str) -> Result<Vec<Constraint>, ClientError> {
    let text = match raw.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|err| ClientError::Usage(format!("--constraints @{path}: {err}")))?,
        None => raw.to_owned(),
    };
    serde_json::from_str(&text).map_err(|err| {
        ClientError::Usage(format!(
            "--constraints: not a JSON list of constraints: {err}"
        ))
    })
}

/// Runs a segments command.
pub async fn run(args: SegmentsArgs) -> Result<(), ClientError> {
    let client = Client::connect(args.client).await?;
    let mut flags = FlagServiceClient::new(client.channel.clone());
    match args.command {
        SegmentsCommand::List => {
            let segments = flags
                .list_segments(client.request(pb::ListSegmentsRequest {})?)
                .await?
                .into_inner()
                .segments;
            client.print(
                serde_json::Value::Array(segments.iter().map(output::segment).collect()),
                || {
                    table(
                        &["KEY", "CONSTRAINTS", "VERSION", "DESCRIPTION"],
                        segments
                            .iter()
                            .map(|s| {
                                vec![
                                    s.key.clone(),
                                    s.constraints.len().to_string(),
                                    s.version.to_string(),
                                    s.description.clone(),
                                ]
                            })
                            .collect(),
                    )
                },
            );
        }
        SegmentsCommand::Get { key } => {
            let segment = flags
                .get_segment(client.request(pb::GetSegmentRequest { key })?)
                .await?
                .into_inner();
            let json = output::segment(&segment);
            client.print(json.clone(), || {
                fields(vec![
                    ("key", segment.key.clone()),
                    ("description", segment.description.clone()),
                    ("constraints", json["constraints"].to_string()),
                    ("version", segment.version.to_string()),
                    ("updated by", segment.updated_by.clone()),
                ])
            });
        }
        SegmentsCommand::Set {
            key,
            constraints,
            description,
            expected_version,
        } => {
            let constraints = constraints_arg(&constraints)?;
            let request = pb::UpsertSegmentRequest {
                key,
                description,
                constraints: constraints
                    .iter()
                    .map(crate::api::targeting::pb_constraint)
                    .collect(),
                expected_version,
            };
            let answer = flags
                .upsert_segment(client.request(request)?)
                .await?
                .into_inner();
            let segment = answer.segment.unwrap_or_default();
            client.print(output::segment(&segment), || {
                let verb = if answer.created { "created" } else { "updated" };
                format!("{verb} {} at version {}\n", segment.key, segment.version)
            });
        }
        SegmentsCommand::History { key, limit } => {
            let entries = flags
                .list_segment_audit(client.request(pb::ListFlagAuditRequest {
                    key: key.unwrap_or_default(),
                    page_size: limit,
                    ..Default::default()
                })?)
                .await?
                .into_inner()
                .entries;
            let rows: Vec<serde_json::Value> = entries.iter().map(segment_audit).collect();
            client.print(serde_json::Value::Array(rows.clone()), || {
                table(
                    &["VERSION", "CHANGED AT", "ACTOR", "KEY", "ACTION"],
                    rows.iter()
                        .map(|row| {
                            ["version", "changed_at", "actor", "key", "action"]
                                .iter()
                                .map(|field| super::output::cell(&row[*field]))
                                .collect()
                        })
                        .collect(),
                )
            });
        }
        SegmentsCommand::Delete {
            key,
            expected_version,
        } => {
            let version = flags
                .delete_segment(client.request(pb::DeleteSegmentRequest {
                    key: key.clone(),
                    expected_version,
                })?)
                .await?
                .into_inner()
                .version;
            client.print(
                serde_json::json!({ "key": key, "version": version }),
                || format!("deleted {key} at version {version}\n"),
            );
        }
    }
    Ok(())
}
