//! `readyd flags`: list, get, set, mark, delete, eval, usage, stale, export,
//! apply, history.

use clap::Subcommand;

use super::flags_file::{FileFlag, FileFormat, FileSegment, FlagsFile, Step, plan};
use super::output::{self, cell, fields, table};
use super::{Client, ClientArgs, ClientError, json_arg};
use crate::api::convert::{to_pb_struct, to_pb_value};
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use crate::flags::Targeting;
use crate::flags::targeting::reshuffle_warnings;

/// `readyd flags`.
#[derive(clap::Args, Debug)]
pub struct FlagsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FlagsCommand,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// The flag commands.
#[derive(Subcommand, Debug)]
pub enum FlagsCommand {
    /// List flags.
    #[command(after_help = "Example:\n  readyd flags list --prefix checkout.")]
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Show one flag.
    #[command(after_help = "Example:\n  readyd flags get dark_mode")]
    Get {
        /// The flag's key.
        key: String,
    },
    /// How often a flag was evaluated across the fleet, per hour,
    /// environment, variant and reason.
    #[command(after_help = "Example:\n  readyd flags usage dark_mode --since 24h")]
    Usage {
        /// The flag's key.
        key: String,
        /// How far back to start (e.g. 24h, 7d).
        #[arg(long, default_value = "7d")]
        since: String,
    },
    /// Flags that are candidates for removal (not evaluated, one variant
    /// to everyone, broken references), each with the reason and the
    /// evidence. Flags marked permanent are left out.
    #[command(after_help = "Example:\n  readyd flags stale --days 60")]
    Stale {
        /// The window, in days (1 to 365).
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Create or replace a flag (needs the admin token).
    #[command(
        after_help = "Example:\n  readyd flags set checkout.v2 --enabled true --rollout 25 --role staff"
    )]
    Set {
        /// The flag's key.
        key: String,
        /// Whether the flag can be on (default false).
        #[arg(long)]
        enabled: Option<bool>,
        /// Value type: bool, string, number or object (default bool).
        #[arg(long = "type")]
        value_type: Option<String>,
        /// Value when on, as JSON (a bare word is a string).
        #[arg(long = "on")]
        on_value: Option<String>,
        /// Value when off, as JSON (a bare word is a string).
        #[arg(long = "off")]
        off_value: Option<String>,
        /// An environment where the flag may be on (repeat for more).
        #[arg(long = "env")]
        environments: Vec<String>,
        /// A targeted user id (repeat for more).
        #[arg(long = "user")]
        users: Vec<String>,
        /// A targeted role (repeat for more).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Percentage of users for whom the flag is on, 0 to 100 (default 100).
        #[arg(long)]
        rollout: Option<u32>,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Write only if the flag is at this version (0: must not exist).
        #[arg(long)]
        expected_version: Option<i64>,
        /// Variants, rules, default serve and prerequisites as JSON, or
        /// @FILE to read it from a file (README, "Variants, rules and
        /// prerequisites"); `{}` removes them. Without it the flag keeps
        /// the ones it has.
        #[arg(long)]
        targeting: Option<String>,
        /// Whether client tokens (browsers, phones, over OFREP) may
        /// evaluate the flag. Without it the flag keeps its mark (off for a
        /// new flag).
        #[arg(long)]
        client_visible: Option<bool>,
        /// Keep the flag off the stale list (`flags stale`): kill switches,
        /// ops toggles. Without it the flag keeps its mark (off for a new
        /// flag).
        #[arg(long)]
        permanent: Option<bool>,
    },
    /// Set or clear a flag's marks and change nothing else (needs the admin
    /// token): reads the flag and writes it back at the version read, so a
    /// change made in between is refused, not overwritten.
    #[command(after_help = "Example:\n  readyd flags mark kill_switch.payments --permanent true")]
    Mark {
        /// The flag's key.
        key: String,
        /// Keep the flag off the stale list (`flags stale`).
        #[arg(long)]
        permanent: Option<bool>,
        /// Whether client tokens (browsers, phones, over OFREP) may
        /// evaluate the flag.
        #[arg(long)]
        client_visible: Option<bool>,
    },
    /// Write every flag (or those with a prefix) to a file that `apply` reads.
    #[command(after_help = "Example:\n  readyd flags export --file flags.json")]
    Export {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Where to write; standard output when omitted.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// json or yaml; by default yaml for a file named *.yaml or *.yml,
        /// json otherwise.
        #[arg(long)]
        format: Option<String>,
    },
    /// Make the server's flags what a file says, in one transaction (needs
    /// the admin token). Shows what changes; refuses, changing nothing, when
    /// a flag changed on the server since the file was exported. Flags that
    /// are not in the file are left alone.
    #[command(after_help = "Example:\n  readyd flags apply -f flags.json --dry-run")]
    Apply {
        /// The file (YAML or JSON, as `export` writes it).
        #[arg(short = 'f', long)]
        file: std::path::PathBuf,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Who changed which flag, and what changed, newest first.
    #[command(after_help = "Example:\n  readyd flags history checkout.v2 --limit 20")]
    History {
        /// Only this flag; every flag when omitted.
        key: Option<String>,
        /// At most this many changes (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Delete a flag (needs the admin token).
    #[command(after_help = "Example:\n  readyd flags delete old_banner")]
    Delete {
        /// The flag's key.
        key: String,
        /// Delete only if the flag is at this version.
        #[arg(long)]
        expected_version: Option<i64>,
    },
    /// Evaluate a flag for a user.
    #[command(
        after_help = "Example:\n  readyd flags eval checkout.v2 --user 42 --role customer --attr country=DE --explain"
    )]
    Eval {
        /// The flag's key.
        key: String,
        /// The user id.
        #[arg(long)]
        user: Option<String>,
        /// A role of the user (repeat for more).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A context attribute, NAME=VALUE; the value is JSON, or else a
        /// string (repeat for more).
        #[arg(long = "attr")]
        attributes: Vec<String>,
        /// Also print the path that decided the answer.
        #[arg(long)]
        explain: bool,
    },
}

/// Every flag whose key starts with `prefix`, page by page.
async fn all_flags(
    flags: &mut FlagServiceClient<crate::client::channel::RetryingChannel>,
    client: &Client,
    prefix: &str,
) -> Result<Vec<pb::Flag>, ClientError> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = flags
            .list_flags(client.request(pb::ListFlagsRequest {
                prefix: prefix.to_owned(),
                page_size: super::PAGE_SIZE,
                page_token: page_token.clone(),
            })?)
            .await?
            .into_inner();
        all.extend(page.flags);
        if super::last_page(&page_token, &page.next_page_token)? {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// `--targeting`: JSON, or `@FILE` holding it.
fn targeting_arg(raw: &str) -> Result<Targeting, ClientError> {
    let (text, source) = match raw.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|err| ClientError::Usage(format!("--targeting @{path}: {err}")))?,
            path,
        ),
        None => (raw.to_owned(), "the argument"),
    };
    serde_json::from_str(&text).map_err(|err| {
        ClientError::Usage(format!(
            "--targeting: {source} is not targeting JSON: {err}"
        ))
    })
}

/// `--attr NAME=VALUE`s as a JSON object.
fn attributes_arg(
    raw: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, ClientError> {
    raw.iter()
        .map(|pair| {
            let (name, value) = pair.split_once('=').ok_or_else(|| {
                ClientError::Usage(format!("--attr {pair:?}: expected NAME=VALUE"))
            })?;
            Ok((name.to_owned(), json_arg(value)))
        })
        .collect()
}

fn value_type(raw: Option<&str>) -> Result<i32, ClientError> {
    Ok(match raw {
        None => pb::FlagValueType::Unspecified,
        Some("bool") => pb::FlagValueType::Bool,
        Some("string") => pb::FlagValueType::String,
        Some("number") => pb::FlagValueType::Number,
        Some("object") => pb::FlagValueType::Object,
        Some(other) => {
            return Err(ClientError::Usage(format!(
                "--type {other:?}: expected bool, string, number or object"
            )));
        }
    }
    .into())
}

fn flag_table(flags: &[pb::Flag]) -> String {
    table(
        &["KEY", "ENABLED", "TYPE", "ROLLOUT", "TARGETS", "VERSION"],
        flags
            .iter()
            .map(|f| {
                vec![
                    f.key.clone(),
                    f.enabled.to_string(),
                    output::value_type(f.value_type()).to_owned(),
                    format!("{}%", f.rollout_percentage),
                    format!(
                        "{} users, {} roles",
                        f.target_users.len(),
                        f.target_roles.len()
                    ),
                    f.version.to_string(),
                ]
            })
            .collect(),
    )
}

/// A flag's usage as JSON.
fn usage_json(usage: &pb::GetFlagUsageResponse) -> serde_json::Value {
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(ToString::to_string);
    serde_json::json!({
        "key": usage.key,
        "since": time(&usage.since),
        "until": time(&usage.until),
        "total": usage.total,
        "buckets": usage.buckets.iter().map(|b| serde_json::json!({
            "hour": time(&b.hour),
            "environment": b.environment,
            "variant": b.variant,
            "reason": b.reason,
            "count": b.count,
        })).collect::<Vec<_>>(),
    })
}

/// The stale list as JSON: one object per flag and reason, with only the
/// evidence of that reason.
fn stale_json(stale: &pb::ListStaleFlagsResponse) -> serde_json::Value {
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(ToString::to_string);
    serde_json::json!({
        "days": stale.days,
        "since": time(&stale.since),
        "flags": stale.flags.iter().map(|f| match f.reason.as_str() {
            "not_evaluated" => serde_json::json!({
                "key": f.key,
                "reason": f.reason,
                "last_evaluated": time(&f.last_evaluated),
            }),
            "one_variant" => serde_json::json!({
                "key": f.key,
                "reason": f.reason,
                "variant": f.variant,
                "share_percent": f.share_percent,
                "evaluations": f.evaluations,
            }),
            _ => serde_json::json!({
                "key": f.key,
                "reason": f.reason,
                "missing_flags": f.missing_flags,
                "missing_segments": f.missing_segments,
            }),
        }).collect::<Vec<_>>(),
    })
}

/// The stale list as a table: the evidence in words.
fn stale_table(stale: &pb::ListStaleFlagsResponse) -> String {
    let rows = stale
        .flags
        .iter()
        .map(|f| {
            let evidence = match f.reason.as_str() {
                "not_evaluated" => match &f.last_evaluated {
                    Some(hour) => format!("last evaluated in the hour of {hour}"),
                    None => "never evaluated".to_owned(),
                },
                "one_variant" => format!(
                    "{} to {}% of {} evaluations",
                    f.variant, f.share_percent, f.evaluations
                ),
                _ => {
                    let mut missing = Vec::new();
                    if !f.missing_flags.is_empty() {
                        missing.push(format!("flags {}", f.missing_flags.join(", ")));
                    }
                    if !f.missing_segments.is_empty() {
                        missing.push(format!("segments {}", f.missing_segments.join(", ")));
                    }
                    format!("missing {}", missing.join("; "))
                }
            };
            vec![f.key.clone(), f.reason.clone(), evidence]
        })
        .collect();
    table(&["KEY", "REASON", "EVIDENCE"], rows)
}

/// A flag's usage as a table, with the total last.
fn usage_table(usage: &pb::GetFlagUsageResponse) -> String {
    let mut rows: Vec<Vec<String>> = usage
        .buckets
        .iter()
        .map(|b| {
            vec![
                b.hour.as_ref().map(ToString::to_string).unwrap_or_default(),
                b.environment.clone(),
                b.variant.clone(),
                b.reason.clone(),
                b.count.to_string(),
            ]
        })
        .collect();
    rows.push(vec![
        "total".to_owned(),
        String::new(),
        String::new(),
        String::new(),
        usage.total.to_string(),
    ]);
    table(&["HOUR", "ENVIRONMENT", "VARIANT", "REASON", "COUNT"], rows)
}

/// The changes as a table; CHANGED names the fields that differ.
fn history_table(entries: &[pb::FlagAuditEntry], json: &[serde_json::Value]) -> String {
    table(
        &["VERSION", "CHANGED AT", "ACTOR", "KEY", "ACTION", "CHANGED"],
        entries
            .iter()
            .zip(json)
            .map(|(entry, json)| {
                vec![
                    entry.version.to_string(),
                    cell(&json["changed_at"]),
                    entry.actor.clone(),
                    entry.key.clone(),
                    cell(&json["action"]),
                    changed_fields(&json["old_flag"], &json["new_flag"]).join(", "),
                ]
            })
            .collect(),
    )
}

/// The fields a change set, changed or cleared (metadata aside).
fn changed_fields(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| !matches!(name.as_str(), "version" | "updated_at" | "updated_by"))
        .filter(|name| old.get(*name) != new.get(*name))
        .cloned()
        .collect()
}

fn flag_fields(f: &pb::Flag) -> String {
    let json = output::flag(f);
    fields(vec![
        ("key", f.key.clone()),
        ("description", f.description.clone()),
        ("enabled", f.enabled.to_string()),
        ("type", output::value_type(f.value_type()).to_owned()),
        ("on", cell(&json["on_value"])),
        ("off", cell(&json["off_value"])),
        ("environments", f.environments.join(", ")),
        ("target users", f.target_users.join(", ")),
        ("target roles", f.target_roles.join(", ")),
        ("rollout", format!("{}%", f.rollout_percentage)),
        ("client visible", f.client_visible.to_string()),
        ("permanent", f.permanent.to_string()),
        ("created", cell(&json["created_at"])),
        ("version", f.version.to_string()),
        (
            "updated",
            format!("{} by {}", cell(&json["updated_at"]), f.updated_by),
        ),
    ])
}

/// Runs a flag command.
pub async fn run(args: FlagsArgs) -> Result<(), ClientError> {
    let client = Client::connect(args.client).await?;
    let mut flags = FlagServiceClient::new(client.channel.clone());
    match args.command {
        FlagsCommand::List { prefix } => {
            // Page by page: a long list does not fit in one message.
            let all = all_flags(&mut flags, &client, &prefix).await?;
            client.print(
                serde_json::Value::Array(all.iter().map(output::flag).collect()),
                || flag_table(&all),
            );
        }
        FlagsCommand::Get { key } => {
            let flag = flags
                .get_flag(client.request(pb::GetFlagRequest { key })?)
                .await?
                .into_inner()
                .flag;
            let flag = flag.unwrap_or_default();
            client.print(output::flag(&flag), || flag_fields(&flag));
        }
        FlagsCommand::Stale { days } => {
            let stale = flags
                .list_stale_flags(client.request(pb::ListStaleFlagsRequest { days })?)
                .await?
                .into_inner();
            client.print(stale_json(&stale), || stale_table(&stale));
        }
        FlagsCommand::Usage { key, since } => {
            let back = humantime::parse_duration(&since)
                .map_err(|err| ClientError::Usage(format!("--since {since:?}: {err}")))?;
            let since = std::time::SystemTime::now()
                .checked_sub(back)
                .ok_or_else(|| ClientError::Usage(format!("--since {since:?}: too far back")))?;
            let usage = flags
                .get_flag_usage(client.request(pb::GetFlagUsageRequest {
                    key,
                    since: Some(since.into()),
                    until: None,
                })?)
                .await?
                .into_inner();
            client.print(usage_json(&usage), || usage_table(&usage));
        }
        FlagsCommand::Set {
            key,
            enabled,
            value_type: raw_type,
            on_value,
            off_value,
            environments,
            users,
            roles,
            rollout,
            description,
            expected_version,
            targeting,
            client_visible,
            permanent,
        } => {
            let targeting = targeting.as_deref().map(targeting_arg).transpose()?;
            if let Some(new) = &targeting {
                // A split whose total weight changes reshuffles its users:
                // say so (the write goes ahead; it may be what is wanted).
                let stored = flags
                    .get_flag(client.request(pb::GetFlagRequest { key: key.clone() })?)
                    .await
                    .ok()
                    .and_then(|answer| answer.into_inner().flag)
                    .and_then(|flag| flag.targeting)
                    .and_then(|t| Targeting::try_from(t).ok());
                for warning in reshuffle_warnings(stored.as_ref(), Some(new)) {
                    eprintln!("warning: {warning}");
                }
            }
            let request = pb::UpsertFlagRequest {
                key,
                description,
                enabled,
                value_type: value_type(raw_type.as_deref())?,
                on_value: on_value.as_deref().map(|raw| to_pb_value(&json_arg(raw))),
                off_value: off_value.as_deref().map(|raw| to_pb_value(&json_arg(raw))),
                environments,
                target_users: users,
                target_roles: roles,
                rollout_percentage: rollout,
                expected_version,
                targeting: targeting.as_ref().map(pb::FlagTargeting::from),
                client_visible,
                permanent,
            };
            let answer = flags
                .upsert_flag(client.request(request)?)
                .await?
                .into_inner();
            let flag = answer.flag.unwrap_or_default();
            client.print(output::flag(&flag), || {
                let verb = if answer.created { "created" } else { "updated" };
                format!("{verb} {} at version {}\n", flag.key, flag.version)
            });
        }
        FlagsCommand::Mark {
            key,
            permanent,
            client_visible,
        } => {
            if permanent.is_none() && client_visible.is_none() {
                return Err(ClientError::Usage(
                    "nothing to mark: give --permanent true|false or --client-visible true|false"
                        .to_owned(),
                ));
            }
            let stored = flags
                .get_flag(client.request(pb::GetFlagRequest { key: key.clone() })?)
                .await?
                .into_inner()
                .flag
                .ok_or_else(|| {
                    ClientError::Usage(format!("flag {key:?}: no flag in the answer"))
                })?;
            // The stored flag as it is, in its own protobuf form (no
            // conversion that could lose a part of it), marks aside.
            let request = pb::UpsertFlagRequest {
                permanent: Some(permanent.unwrap_or(stored.permanent)),
                client_visible: Some(client_visible.unwrap_or(stored.client_visible)),
                expected_version: Some(stored.version),
                key: stored.key,
                description: stored.description,
                enabled: Some(stored.enabled),
                value_type: stored.value_type,
                on_value: stored.on_value,
                off_value: stored.off_value,
                environments: stored.environments,
                target_users: stored.target_users,
                target_roles: stored.target_roles,
                rollout_percentage: Some(stored.rollout_percentage),
                targeting: Some(stored.targeting.unwrap_or_default()),
            };
            let flag = flags
                .upsert_flag(client.request(request)?)
                .await?
                .into_inner()
                .flag
                .unwrap_or_default();
            client.print(output::flag(&flag), || {
                format!(
                    "marked {} at version {}: permanent {}, client_visible {}\n",
                    flag.key, flag.version, flag.permanent, flag.client_visible
                )
            });
        }
        FlagsCommand::Export {
            prefix,
            file,
            format,
        } => {
            let format = FileFormat::choose(format.as_deref(), file.as_deref())
                .map_err(ClientError::Usage)?;
            let all = all_flags(&mut flags, &client, &prefix).await?;
            let segments = flags
                .list_segments(client.request(pb::ListSegmentsRequest {})?)
                .await?
                .into_inner()
                .segments;
            let document = FlagsFile {
                segments: segments.iter().map(FileSegment::from_pb).collect(),
                flags: all.iter().map(FileFlag::from_pb).collect(),
            };
            let text = format.write(&document).map_err(ClientError::Usage)?;
            match file {
                Some(path) => {
                    std::fs::write(&path, text).map_err(|err| {
                        ClientError::Usage(format!("cannot write {}: {err}", path.display()))
                    })?;
                    eprintln!("exported {} flags to {}", all.len(), path.display());
                }
                None => print!("{text}"),
            }
        }
        FlagsCommand::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file).map_err(|err| {
                ClientError::Usage(format!("cannot read {}: {err}", file.display()))
            })?;
            let document = FileFormat::choose(None, Some(&file))
                .and_then(|format| format.read(&text))
                .map_err(|err| {
                    ClientError::Usage(format!(
                        "{} is not a flags file (as `readyd flags export` writes): {err}",
                        file.display()
                    ))
                })?;
            let server = all_flags(&mut flags, &client, "").await?;
            let server_segments = flags
                .list_segments(client.request(pb::ListSegmentsRequest {})?)
                .await?
                .into_inner()
                .segments;
            let (steps, writes) =
                plan(&document, &server_segments, &server).map_err(ClientError::Usage)?;
            let stale = steps.iter().any(|s| matches!(s, Step::Stale { .. }));
            for step in &steps {
                if !matches!(step, Step::Unchanged { .. }) {
                    eprintln!("{step}");
                }
            }
            let unchanged = steps
                .iter()
                .filter(|s| matches!(s, Step::Unchanged { .. }))
                .count();
            eprintln!("{} to write, {unchanged} unchanged", writes.len());
            if stale {
                return Err(ClientError::Usage(
                    "flags changed on the server since the file was exported; nothing was applied"
                        .into(),
                ));
            }
            if dry_run || writes.is_empty() {
                client.print(
                    serde_json::json!({"applied": 0, "dry_run": dry_run}),
                    String::new,
                );
                return Ok(());
            }
            let count = writes.len();
            let answer = flags
                .apply_flags(client.request(pb::ApplyFlagsRequest {
                    flags: writes.flags,
                    segments: writes.segments,
                })?)
                .await?
                .into_inner();
            client.print(
                serde_json::json!({"applied": count, "version": answer.version}),
                || format!("applied {count} flags at version {}\n", answer.version),
            );
        }
        FlagsCommand::History { key, limit } => {
            let request = pb::ListFlagAuditRequest {
                key: key.unwrap_or_default(),
                page_size: limit,
                ..Default::default()
            };
            let entries = flags
                .list_flag_audit(client.request(request)?)
                .await?
                .into_inner()
                .entries;
            let json: Vec<serde_json::Value> = entries.iter().map(output::flag_audit).collect();
            client.print(serde_json::Value::Array(json.clone()), || {
                history_table(&entries, &json)
            });
        }
        FlagsCommand::Delete {
            key,
            expected_version,
        } => {
            let request = pb::DeleteFlagRequest {
                key: key.clone(),
                expected_version,
            };
            let version = flags
                .delete_flag(client.request(request)?)
                .await?
                .into_inner()
                .version;
            client.print(
                serde_json::json!({ "key": key, "version": version }),
                || format!("deleted {key} at version {version}\n"),
            );
        }
        FlagsCommand::Eval {
            key,
            user,
            roles,
            attributes,
            explain,
        } => {
            let attributes = attributes_arg(&attributes)?;
            let request = pb::EvaluateFlagRequest {
                key,
                context: Some(pb::EvaluationContext {
                    user_id: user.unwrap_or_default(),
                    roles,
                    attributes: (!attributes.is_empty()).then(|| to_pb_struct(&attributes)),
                }),
                explain,
            };
            let answer = flags
                .evaluate_flag(client.request(request)?)
                .await?
                .into_inner();
            let json = output::evaluation(&answer);
            client.print(json.clone(), || {
                let mut text = fields(vec![
                    ("key", answer.key.clone()),
                    ("value", cell(&json["value"])),
                    ("variant", answer.variant.clone()),
                    ("reason", output::reason(answer.reason()).to_owned()),
                    ("version", answer.flag_version.to_string()),
                ]);
                for (i, step) in answer.explanation.iter().enumerate() {
                    text.push_str(&format!("  {}. {}\n", i + 1, step.detail));
                }
                text
            });
        }
    }
    Ok(())
}
