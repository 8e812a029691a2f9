//! Output for people (aligned tables) and for scripts (JSON), and the JSON
//! forms of the API's messages.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::api::convert::{from_pb_value, from_timestamp};
use crate::api::pb::readyd::v1 as pb;

/// How results are printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document per result, for scripts.
    Json,
}

/// Rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                format!(
                    "{cell:<width$}",
                    width = widths.get(i).copied().unwrap_or(0)
                )
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// `key: value` lines.
pub fn fields(pairs: Vec<(&str, String)>) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// A protobuf value as JSON (null when absent or not representable).
pub fn value(value: Option<&prost_types::Value>) -> Value {
    value
        .cloned()
        .and_then(|v| from_pb_value(v).ok())
        .unwrap_or(Value::Null)
}

/// A protobuf time as RFC 3339 (null when absent).
pub fn time(timestamp: Option<&prost_types::Timestamp>) -> Value {
    timestamp
        .and_then(from_timestamp)
        .map_or(Value::Null, |t: DateTime<Utc>| {
            Value::String(t.to_rfc3339())
        })
}

/// A JSON value as a table cell.
pub fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A flag as JSON; `targeting` only for a flag that has it, in the shape
/// `readyd flags set --targeting` takes.
pub fn flag(flag: &pb::Flag) -> Value {
    let mut json = json!({
        "key": flag.key,
        "description": flag.description,
        "enabled": flag.enabled,
        "value_type": value_type(flag.value_type()),
        "on_value": value(flag.on_value.as_ref()),
        "off_value": value(flag.off_value.as_ref()),
        "environments": flag.environments,
        "target_users": flag.target_users,
        "target_roles": flag.target_roles,
        "rollout_percentage": flag.rollout_percentage,
        "client_visible": flag.client_visible,
        "permanent": flag.permanent,
        "created_at": time(flag.created_at.as_ref()),
        "version": flag.version,
        "updated_at": time(flag.updated_at.as_ref()),
        "updated_by": flag.updated_by,
    });
    if let Some(targeting) = &flag.targeting
        && let Ok(targeting) = crate::flags::Targeting::try_from(targeting.clone())
        && let Ok(targeting) = serde_json::to_value(targeting)
    {
        json["targeting"] = targeting;
    }
    json
}

/// The name of a recorded change's action.
fn audit_action(action: pb::FlagAuditAction) -> &'static str {
    match action {
        pb::FlagAuditAction::Insert => "insert",
        pb::FlagAuditAction::Update => "update",
        pb::FlagAuditAction::Delete => "delete",
        pb::FlagAuditAction::Unspecified => "unspecified",
    }
}

/// A recorded flag change as JSON.
pub fn flag_audit(entry: &pb::FlagAuditEntry) -> Value {
    json!({
        "id": entry.id,
        "key": entry.key,
        "action": audit_action(entry.action()),
        "old_flag": entry.old_flag.as_ref().map(flag),
        "new_flag": entry.new_flag.as_ref().map(flag),
        "actor": entry.actor,
        "changed_at": time(entry.changed_at.as_ref()),
        "version": entry.version,
    })
}

/// A segment as JSON, constraints in the shape `readyd segments set
/// --constraints` takes.
pub fn segment(segment: &pb::Segment) -> Value {
    let constraints: Vec<crate::flags::Constraint> = segment
        .constraints
        .iter()
        .cloned()
        .map(crate::api::targeting::constraint)
        .collect();
    json!({
        "key": segment.key,
        "description": segment.description,
        "constraints": constraints,
        "version": segment.version,
        "updated_by": segment.updated_by,
    })
}

/// A recorded segment change as JSON.
pub fn segment_audit(entry: &pb::SegmentAuditEntry) -> Value {
    json!({
        "id": entry.id,
        "key": entry.key,
        "action": audit_action(entry.action()),
        "old_segment": entry.old_segment.as_ref().map(segment),
        "new_segment": entry.new_segment.as_ref().map(segment),
        "actor": entry.actor,
        "changed_at": time(entry.changed_at.as_ref()),
        "version": entry.version,
    })
}

/// The name of a value type.
pub fn value_type(value_type: pb::FlagValueType) -> &'static str {
    match value_type {
        pb::FlagValueType::Bool | pb::FlagValueType::Unspecified => "bool",
        pb::FlagValueType::String => "string",
        pb::FlagValueType::Number => "number",
        pb::FlagValueType::Object => "object",
    }
}

/// The name of an evaluation reason, as OpenFeature spells it.
pub fn reason(reason: pb::EvaluationReason) -> &'static str {
    match reason {
        pb::EvaluationReason::Unspecified => "UNSPECIFIED",
        pb::EvaluationReason::Static => "STATIC",
        pb::EvaluationReason::TargetingMatch => "TARGETING_MATCH",
        pb::EvaluationReason::Split => "SPLIT",
        pb::EvaluationReason::Default => "DEFAULT",
        pb::EvaluationReason::Disabled => "DISABLED",
        pb::EvaluationReason::Stale => "STALE",
        pb::EvaluationReason::PrerequisiteFailed => "PREREQUISITE_FAILED",
    }
}

/// An evaluation as JSON.
pub fn evaluation(answer: &pb::EvaluateFlagResponse) -> Value {
    json!({
        "key": answer.key,
        "value": value(answer.value.as_ref()),
        "variant": answer.variant,
        "reason": reason(answer.reason()),
        "flag_version": answer.flag_version,
        "explanation": answer
            .explanation
            .iter()
            .map(|step| json!({"step": step.step, "rule": step.rule, "detail": step.detail}))
            .collect::<Vec<_>>(),
    })
}

/// A configuration entry as JSON.
pub fn config_entry(entry: &pb::ConfigEntry) -> Value {
    json!({
        "key": entry.key,
        "value": value(entry.value.as_ref()),
        "environment": entry.environment,
        "description": entry.description,
        "is_sensitive": entry.is_sensitive,
        "redacted": entry.redacted,
        "version": entry.version,
        "updated_at": time(entry.updated_at.as_ref()),
        "updated_by": entry.updated_by,
    })
}

/// Maintenance mode as JSON.
pub fn maintenance(mode: &pb::MaintenanceMode) -> Value {
    json!({ "enabled": mode.enabled, "message": mode.message, "version": mode.version })
}

/// The name of a deployment status.
pub fn status(status: pb::DeploymentStatus) -> &'static str {
    match status {
        pb::DeploymentStatus::Unspecified => "unspecified",
        pb::DeploymentStatus::Pending => "pending",
        pb::DeploymentStatus::InProgress => "in_progress",
        pb::DeploymentStatus::Success => "success",
        pb::DeploymentStatus::Failed => "failed",
        pb::DeploymentStatus::RolledBack => "rolled_back",
    }
}

/// A deployment as JSON.
pub fn deployment(d: &pb::Deployment) -> Value {
    json!({
        "id": d.id,
        "version": d.version,
        "environment": d.environment,
        "status": status(d.status()),
        "kind": match d.kind() {
            pb::DeploymentKind::Rollback => "rollback",
            _ => "deploy",
        },
        "deployed_by": d.deployed_by,
        "commit_sha": d.commit_sha,
        "notes": d.notes,
        "previous_version": d.previous_version,
        "rollback_of": d.rollback_of,
        "deployed_at": time(d.deployed_at.as_ref()),
        "completed_at": time(d.completed_at.as_ref()),
    })
}
