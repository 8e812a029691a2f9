//! `readyd config list|get|set|delete` and `readyd maintenance on|off|status`.

use clap::Subcommand;

use super::output::{self, cell, fields, table};
use super::{Client, ClientArgs, ClientError, json_arg};
use crate::api::convert::to_pb_value;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::config_service_client::ConfigServiceClient;

/// `readyd config`.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// The configuration commands.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// List the resolved configuration (or, as admin, an environment's or every row).
    #[command(
        after_help = "Examples:\n  readyd config list\n  readyd config list --all --token $READYD_ADMIN_TOKEN"
    )]
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Resolve for this environment instead of readyd's own (admin).
        #[arg(long, default_value = "")]
        environment: String,
        /// Every row of every environment (admin).
        #[arg(long)]
        all: bool,
    },
    /// Show one key as it resolves for readyd's environment.
    #[command(after_help = "Example:\n  readyd config get max_upload_mb")]
    Get {
        /// The key.
        key: String,
    },
    /// Set a key (needs the admin token). The description and whether the
    /// value is secret stay as they are unless given.
    #[command(
        after_help = "Examples:\n  readyd config set max_upload_mb 25\n  readyd config set smtp.password s3cret --sensitive --environment production\n  readyd config set smtp.password n3w-s3cret          # stays sensitive\n  readyd config set feature.banner '\"hello\"' --public  # a sensitive key made public"
    )]
    Set {
        /// The key.
        key: String,
        /// The value, as JSON (a bare word is a string).
        value: String,
        /// The environment; empty for every environment.
        #[arg(long, default_value = "")]
        environment: String,
        /// Free text; the key's description is kept when omitted.
        #[arg(long)]
        description: Option<String>,
        /// Mark the value as secret (it stays secret on later sets).
        #[arg(long, conflicts_with = "public")]
        sensitive: bool,
        /// Make a sensitive key public: its value then reaches every reader.
        /// Without it, readyd keeps a sensitive key sensitive.
        #[arg(long)]
        public: bool,
        /// Write only if the row is at this version (0: must not exist).
        #[arg(long)]
        expected_version: Option<i64>,
    },
    /// Delete a key's row (needs the admin token).
    #[command(after_help = "Example:\n  readyd config delete feature.banner --environment staging")]
    Delete {
        /// The key.
        key: String,
        /// The environment; empty for the every-environment row.
        #[arg(long, default_value = "")]
        environment: String,
        /// Delete only if the row is at this version.
        #[arg(long)]
        expected_version: Option<i64>,
    },
}

/// `readyd maintenance`.
#[derive(clap::Args, Debug)]
pub struct MaintenanceArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: MaintenanceCommand,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// The maintenance commands.
#[derive(Subcommand, Debug)]
pub enum MaintenanceCommand {
    /// Turn maintenance mode on for readyd's environment (needs the admin token).
    #[command(after_help = "Example:\n  readyd maintenance on --message \"Back at 14:00 UTC\"")]
    On {
        /// Message shown to users.
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Turn maintenance mode off (needs the admin token).
    #[command(after_help = "Example:\n  readyd maintenance off")]
    Off,
    /// Show whether maintenance mode is on.
    #[command(after_help = "Example:\n  readyd maintenance status --output json")]
    Status,
}

fn entry_fields(e: &pb::ConfigEntry) -> String {
    let json = output::config_entry(e);
    let value = if e.redacted {
        "<redacted>".to_owned()
    } else {
        cell(&json["value"])
    };
    fields(vec![
        ("key", e.key.clone()),
        ("value", value),
        ("environment", e.environment.clone()),
        ("description", e.description.clone()),
        ("sensitive", e.is_sensitive.to_string()),
        ("version", e.version.to_string()),
        (
            "updated",
            format!("{} by {}", cell(&json["updated_at"]), e.updated_by),
        ),
    ])
}

/// Runs a configuration command.
pub async fn run(args: ConfigArgs) -> Result<(), ClientError> {
    let client = Client::connect(args.client).await?;
    let mut config = ConfigServiceClient::new(client.channel.clone());
    match args.command {
        ConfigCommand::List {
            prefix,
            environment,
            all,
        } => {
            // Page by page: a long list does not fit in one message.
            let mut entries = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListConfigsRequest {
                    prefix: prefix.clone(),
                    environment: environment.clone(),
                    all_environments: all,
                    page_size: super::PAGE_SIZE,
                    page_token: page_token.clone(),
                };
                let page = config
                    .list_configs(client.request(request)?)
                    .await?
                    .into_inner();
                entries.extend(page.entries);
                if super::last_page(&page_token, &page.next_page_token)? {
                    break;
                }
                page_token = page.next_page_token;
            }
            client.print(
                serde_json::Value::Array(entries.iter().map(output::config_entry).collect()),
                || {
                    table(
                        &["KEY", "ENVIRONMENT", "VALUE", "VERSION"],
                        entries
                            .iter()
                            .map(|e| {
                                let value = if e.redacted {
                                    "<redacted>".to_owned()
                                } else {
                                    cell(&output::value(e.value.as_ref()))
                                };
                                vec![
                                    e.key.clone(),
                                    e.environment.clone(),
                                    value,
                                    e.version.to_string(),
                                ]
                            })
                            .collect(),
                    )
                },
            );
        }
        ConfigCommand::Get { key } => {
            let entry = config
                .get_config(client.request(pb::GetConfigRequest { key })?)
                .await?;
            let entry = entry.into_inner().entry.unwrap_or_default();
            client.print(output::config_entry(&entry), || entry_fields(&entry));
        }
        ConfigCommand::Set {
            key,
            value,
            environment,
            description,
            sensitive,
            public,
            expected_version,
        } => {
            // Sensitivity is sent only when asked for: an omitted flag
            // keeps the key as it is (never turns a secret public).
            let request = pb::SetConfigRequest {
                key,
                value: Some(to_pb_value(&json_arg(&value))),
                environment,
                description,
                is_sensitive: if sensitive {
                    Some(true)
                } else if public {
                    Some(false)
                } else {
                    None
                },
                expected_version,
                make_public: public,
            };
            let entry = config
                .set_config(client.request(request)?)
                .await?
                .into_inner()
                .entry;
            let entry = entry.unwrap_or_default();
            client.print(output::config_entry(&entry), || {
                format!(
                    "set {} for {} at version {}\n",
                    entry.key, entry.environment, entry.version
                )
            });
        }
        ConfigCommand::Delete {
            key,
            environment,
            expected_version,
        } => {
            let request = pb::DeleteConfigRequest {
                key: key.clone(),
                environment,
                expected_version,
            };
            let version = config
                .delete_config(client.request(request)?)
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

/// Runs a maintenance command.
pub async fn run_maintenance(args: MaintenanceArgs) -> Result<(), ClientError> {
    let client = Client::connect(args.client).await?;
    let mut config = ConfigServiceClient::new(client.channel.clone());
    let mode = match args.command {
        MaintenanceCommand::On { message } => {
            let request = pb::SetMaintenanceModeRequest {
                enabled: true,
                message,
            };
            config
                .set_maintenance_mode(client.request(request)?)
                .await?
        }
        MaintenanceCommand::Off => {
            let request = pb::SetMaintenanceModeRequest {
                enabled: false,
                message: String::new(),
            };
            config
                .set_maintenance_mode(client.request(request)?)
                .await?
        }
        MaintenanceCommand::Status => {
            config
                .get_maintenance_mode(client.request(pb::GetMaintenanceModeRequest {})?)
                .await?
        }
    }
    .into_inner();
    client.print(output::maintenance(&mode), || {
        if mode.enabled {
            format!("maintenance mode is on: {}\n", mode.message)
        } else {
            "maintenance mode is off\n".to_owned()
        }
    });
    Ok(())
}
