//! Flags as code: the file `readyd flags export` writes and `readyd flags
//! apply` reads, and the plan that turns a file into writes.
//!
//! The file is YAML or JSON: `{"flags": [...]}`, each flag with the fields of the
//! API (targeting in the shape `flags set --targeting` takes) and the
//! `version` it was exported at. Exporting and applying the same file
//! changes nothing; applying a file whose flag changed on the server since
//! it was exported is refused, for every flag, before anything is written.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::convert::{from_pb_value, to_pb_value};
use crate::api::pb::readyd::v1 as pb;
use crate::flags::targeting::reshuffle_warnings;
use crate::flags::{Constraint, Targeting};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsFile {
    /// The segments, by key (written before the flags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<FileSegment>,
    /// The flags, by key.
    #[serde(default)]
    pub flags: Vec<FileFlag>,
}

/// One segment in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSegment {
    /// The key.
    pub key: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// All must hold.
    pub constraints: Vec<Constraint>,
    /// The version it was exported at (absent: no check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

impl FileSegment {
    /// The segment as the server holds it.
    pub fn from_pb(segment: &pb::Segment) -> Self {
        FileSegment {
            key: segment.key.clone(),
            description: segment.description.clone(),
            constraints: segment
                .constraints
                .iter()
                .cloned()
                .map(crate::api::targeting::constraint)
                .collect(),
            version: Some(segment.version),
        }
    }

    /// The write that makes the server hold it, at `expected_version`.
    fn to_request(&self, expected_version: i64) -> pb::UpsertSegmentRequest {
        pb::UpsertSegmentRequest {
            key: self.key.clone(),
            description: self.description.clone(),
            constraints: self
                .constraints
                .iter()
                .map(crate::api::targeting::pb_constraint)
                .collect(),
            expected_version: Some(expected_version),
        }
    }

    /// The fields that differ from `other`, version aside.
    fn differences(&self, other: &FileSegment) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if self.description != other.description {
            fields.push("description");
        }
        if self.constraints != other.constraints {
            fields.push("constraints");
        }
        fields
    }
}

/// One flag in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFlag {
    /// The key.
    pub key: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Whether the flag can be on.
    #[serde(default)]
    pub enabled: bool,
    /// bool, string, number or object.
    #[serde(default = "bool_type")]
    pub value_type: String,
    /// The value when on.
    #[serde(default = "on")]
    pub on_value: Value,
    /// The value when off.
    #[serde(default = "off")]
    pub off_value: Value,
    /// Environments where the flag may be on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// Targeted user ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_users: Vec<String>,
    /// Targeted roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_roles: Vec<String>,
    /// 0..=100.
    #[serde(default = "everyone")]
    pub rollout_percentage: u32,
    /// Variants, rules, default serve, prerequisites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting: Option<Targeting>,
    /// Whether client tokens may evaluate the flag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_visible: bool,
    /// Kept off the stale list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
    /// The version the flag was exported at: applying refuses when the
    /// server's differs. Absent in a hand-written file: no check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

fn bool_type() -> String {
    "bool".to_owned()
}
fn on() -> Value {
    Value::Bool(true)
}
fn off() -> Value {
    Value::Bool(false)
}
fn everyone() -> u32 {
    100
}

fn type_name(value_type: pb::FlagValueType) -> &'static str {
    super::output::value_type(value_type)
}

impl FileFlag {
    /// The flag as the server holds it.
    pub fn from_pb(flag: &pb::Flag) -> Self {
        let value = |v: &Option<prost_types::Value>| {
            v.clone()
                .and_then(|v| from_pb_value(v).ok())
                .unwrap_or(Value::Null)
        };
        FileFlag {
            key: flag.key.clone(),
            description: flag.description.clone(),
            enabled: flag.enabled,
            value_type: type_name(flag.value_type()).to_owned(),
            on_value: value(&flag.on_value),
            off_value: value(&flag.off_value),
            environments: flag.environments.clone(),
            target_users: flag.target_users.clone(),
            target_roles: flag.target_roles.clone(),
            rollout_percentage: flag.rollout_percentage,
            targeting: flag
                .targeting
                .clone()
                .and_then(|t| Targeting::try_from(t).ok()),
            client_visible: flag.client_visible,
            permanent: flag.permanent,
            version: Some(flag.version),
        }
    }

    /// The write that makes the server hold this flag, at `expected_version`.
    pub fn to_request(&self, expected_version: i64) -> Result<pb::UpsertFlagRequest, String> {
        let value_type = match self.value_type.as_str() {
            "bool" => pb::FlagValueType::Bool,
            "string" => pb::FlagValueType::String,
            "number" => pb::FlagValueType::Number,
            "object" => pb::FlagValueType::Object,
            other => {
                return Err(format!(
                    "flag {:?}: value_type {other:?}: expected bool, string, number or object",
                    self.key
                ));
            }
        };
        Ok(pb::UpsertFlagRequest {
            key: self.key.clone(),
            description: self.description.clone(),
            enabled: Some(self.enabled),
            value_type: value_type.into(),
            on_value: Some(to_pb_value(&self.on_value)),
            off_value: Some(to_pb_value(&self.off_value)),
            environments: self.environments.clone(),
            target_users: self.target_users.clone(),
            target_roles: self.target_roles.clone(),
            rollout_percentage: Some(self.rollout_percentage),
            expected_version: Some(expected_version),
            // Always said: the file is the whole flag, so no targeting in
            // the file means none.
            targeting: Some(
                self.targeting
                    .as_ref()
                    .map(pb::FlagTargeting::from)
                    .unwrap_or_default(),
            ),
            client_visible: Some(self.client_visible),
            permanent: Some(self.permanent),
        })
    }

    /// The fields that differ from `other`, version aside.
    pub fn differences(&self, other: &FileFlag) -> Vec<&'static str> {
        let mut fields = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                fields.push(name);
            }
        };
        check("description", self.description == other.description);
        check("enabled", self.enabled == other.enabled);
        check("value_type", self.value_type == other.value_type);
        check("on_value", self.on_value == other.on_value);
        check("off_value", self.off_value == other.off_value);
        check("environments", self.environments == other.environments);
        check("target_users", self.target_users == other.target_users);
        check("target_roles", self.target_roles == other.target_roles);
        check(
            "rollout_percentage",
            self.rollout_percentage == other.rollout_percentage,
        );
        let targeting = |t: &Option<Targeting>| t.clone().filter(|t| !t.is_legacy());
        check(
            "targeting",
            targeting(&self.targeting) == targeting(&other.targeting),
        );
        check(
            "client_visible",
            self.client_visible == other.client_visible,
        );
        check("permanent", self.permanent == other.permanent);
        fields
    }
}

/// How a flags file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Pretty JSON.
    Json,
    /// YAML.
    Yaml,
}

impl FileFormat {
    /// `named` (json or yaml), else by the file's extension (yaml for
    /// *.yaml and *.yml), else JSON.
    pub fn choose(named: Option<&str>, file: Option<&std::path::Path>) -> Result<Self, String> {
        match named {
            Some("json") => Ok(FileFormat::Json),
            Some("yaml") => Ok(FileFormat::Yaml),
            Some(other) => Err(format!("--format {other:?}: expected json or yaml")),
            None => Ok(
                match file.and_then(|f| f.extension()).and_then(|e| e.to_str()) {
                    Some("yaml" | "yml") => FileFormat::Yaml,
                    _ => FileFormat::Json,
                },
            ),
        }
    }

    /// `file` as text.
    pub fn write(self, file: &FlagsFile) -> Result<String, String> {
        match self {
            FileFormat::Json => serde_json::to_string_pretty(file)
                .map(|mut text| {
                    text.push('\n');
                    text
                })
                .map_err(|err| err.to_string()),
            // Through JSON's data model, so a serve reads `variant: red`
            // as in JSON, not a YAML tag.
            FileFormat::Yaml => serde_json::to_value(file)
                .map_err(|err| err.to_string())
                .and_then(|value| yaml_serde::to_string(&value).map_err(|err| err.to_string())),
        }
    }

    /// The file in `text`. YAML reads JSON too.
    pub fn read(self, text: &str) -> Result<FlagsFile, String> {
        match self {
            FileFormat::Json => serde_json::from_str(text).map_err(|err| err.to_string()),
            FileFormat::Yaml => yaml_serde::from_str::<Value>(text)
                .map_err(|err| err.to_string())
                .and_then(|value| serde_json::from_value(value).map_err(|err| err.to_string())),
        }
    }
}

/// What applying a file does to one flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create it.
    Create { key: String },
    /// Change these fields; `warnings` about the change (a split whose
    /// total weight changes reshuffles its users).
    Update {
        key: String,
        fields: Vec<&'static str>,
        warnings: Vec<String>,
    },
    /// Nothing: the server holds it as the file says.
    Unchanged { key: String },
    /// Refused: it changed on the server since the file was exported.
    Stale {
        key: String,
        exported: i64,
        current: Option<i64>,
    },
}

/// What applying a file writes: segments first, then flags.
#[derive(Debug, Default)]
pub struct Writes {
    /// Segment writes, each with the version it expects.
    pub segments: Vec<pb::UpsertSegmentRequest>,
    /// Flag writes, each with the version it expects.
    pub flags: Vec<pb::UpsertFlagRequest>,
}

impl Writes {
    /// How many writes.
    pub fn len(&self) -> usize {
        self.segments.len() + self.flags.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The plan for `file` against the server's segments and flags: one step
/// per segment and flag of the file, and the writes (each with the version
/// it expects).
pub fn plan(
    file: &FlagsFile,
    server_segments: &[pb::Segment],
    server: &[pb::Flag],
) -> Result<(Vec<Step>, Writes), String> {
    let mut steps = Vec::new();
    let mut writes = Writes::default();
    let mut seen = std::collections::HashSet::new();
    for segment in &file.segments {
        if !seen.insert(segment.key.as_str()) {
            return Err(format!(
                "segment {:?} appears twice in the file",
                segment.key
            ));
        }
        let current = server_segments.iter().find(|s| s.key == segment.key);
        let key = format!("segment {}", segment.key);
        if let Some(exported) = segment.version
            && current.map_or(0, |s| s.version) != exported
        {
            steps.push(Step::Stale {
                key,
                exported,
                current: current.map(|s| s.version),
            });
            continue;
        }
        match current {
            None => {
                steps.push(Step::Create { key });
                writes.segments.push(segment.to_request(0));
            }
            Some(current) => {
                let fields = segment.differences(&FileSegment::from_pb(current));
                if fields.is_empty() {
                    steps.push(Step::Unchanged { key });
                } else {
                    steps.push(Step::Update {
                        key,
                        fields,
                        warnings: Vec::new(),
                    });
                    writes.segments.push(segment.to_request(current.version));
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for flag in &file.flags {
        if !seen.insert(flag.key.as_str()) {
            return Err(format!("flag {:?} appears twice in the file", flag.key));
        }
        let current = server.iter().find(|f| f.key == flag.key);
        let current_version = current.map(|f| f.version);
        match (flag.version, current_version) {
            (Some(exported), now) if now.unwrap_or(0) != exported => {
                steps.push(Step::Stale {
                    key: flag.key.clone(),
                    exported,
                    current: now,
                });
                continue;
            }
            _ => {}
        }
        match current {
            None => {
                steps.push(Step::Create {
                    key: flag.key.clone(),
                });
                writes.flags.push(flag.to_request(0)?);
            }
            Some(current) => {
                let stored = FileFlag::from_pb(current);
                let fields = flag.differences(&stored);
                if fields.is_empty() {
                    steps.push(Step::Unchanged {
                        key: flag.key.clone(),
                    });
                } else {
                    steps.push(Step::Update {
                        key: flag.key.clone(),
                        fields,
                        warnings: reshuffle_warnings(
                            stored.targeting.as_ref(),
                            flag.targeting.as_ref(),
                        ),
                    });
                    writes.flags.push(flag.to_request(current.version)?);
                }
            }
        }
    }
    Ok((steps, writes))
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Create { key } => write!(f, "+ {key} (new)"),
            Step::Update {
                key,
                fields,
                warnings,
            } => {
                write!(f, "~ {key}: {}", fields.join(", "))?;
                for warning in warnings {
                    write!(f, "\n  warning: {warning}")?;
                }
                Ok(())
            }
            Step::Unchanged { key } => write!(f, "= {key}"),
            Step::Stale {
                key,
                exported,
                current: Some(current),
            } => write!(
                f,
                "! {key}: exported at version {exported}, now at {current}; export again"
            ),
            Step::Stale { key, exported, .. } => write!(
                f,
                "! {key}: exported at version {exported}, deleted since; export again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server_flag(key: &str, version: i64) -> pb::Flag {
        pb::Flag {
            key: key.into(),
            enabled: true,
            value_type: pb::FlagValueType::Bool.into(),
            on_value: Some(to_pb_value(&json!(true))),
            off_value: Some(to_pb_value(&json!(false))),
            rollout_percentage: 100,
            version,
            ..Default::default()
        }
    }

    #[test]
    fn an_exported_file_plans_nothing() {
        let server = vec![server_flag("a", 3), server_flag("b", 7)];
        let file = FlagsFile {
            flags: server.iter().map(FileFlag::from_pb).collect(),
            ..FlagsFile::default()
        };
        let text = serde_json::to_string_pretty(&file).expect("json");
        let back: FlagsFile = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, file);
        let (steps, writes) = plan(&back, &[], &server).expect("plan");
        assert!(writes.is_empty());
        assert!(steps.iter().all(|s| matches!(s, Step::Unchanged { .. })));
    }

    #[test]
    fn changes_new_flags_and_stale_ones_are_told_apart() {
        let server = vec![server_flag("a", 3), server_flag("b", 7)];
        let mut file = FlagsFile {
            flags: server.iter().map(FileFlag::from_pb).collect(),
            ..FlagsFile::default()
        };
        file.flags[0].rollout_percentage = 25;
        file.flags[1].version = Some(6);
        file.flags.push(FileFlag {
            version: None,
            key: "c".into(),
            ..file.flags[0].clone()
        });
        let (steps, writes) = plan(&file, &[], &server).expect("plan");
        assert_eq!(
            steps,
            [
                Step::Update {
                    key: "a".into(),
                    fields: vec!["rollout_percentage"],
                    warnings: Vec::new(),
                },
                Step::Stale {
                    key: "b".into(),
                    exported: 6,
                    current: Some(7)
                },
                Step::Create { key: "c".into() },
            ]
        );
        assert_eq!(writes.flags[0].expected_version, Some(3));
        assert_eq!(writes.flags[1].expected_version, Some(0));
    }

    #[test]
    fn a_hand_written_file_needs_only_keys() {
        let file: FlagsFile =
            serde_json::from_value(json!({"flags": [{"key": "x"}]})).expect("parse");
        assert_eq!(file.flags[0].value_type, "bool");
        assert_eq!(file.flags[0].rollout_percentage, 100);
        assert!(
            serde_json::from_value::<FlagsFile>(json!({"flags": [{"key": "x", "enabeld": true}]}))
                .is_err()
        );
    }

    #[test]
    fn yaml_and_json_files_round_trip_to_the_same_flags() {
        let mut flag = FileFlag::from_pb(&server_flag("a", 3));
        flag.targeting = Some(
            serde_json::from_value(json!({
                "variants": [{"name": "red", "value": true}],
                "rules": [{"name": "pro", "constraints": [
                    {"attribute": "plan", "operator": "in", "values": ["pro"]}
                ], "serve": {"variant": "red"}}],
                "default_serve": {"split": {"weights": [
                    {"variant": "on", "weight": 1}, {"variant": "red", "weight": 3}
                ]}}
            }))
            .expect("targeting"),
        );
        let file = FlagsFile {
            flags: vec![flag],
            ..FlagsFile::default()
        };
        for format in [FileFormat::Json, FileFormat::Yaml] {
            let text = format.write(&file).expect("write");
            assert_eq!(format.read(&text).expect("read"), file, "{text}");
        }
        let json = FileFormat::Json.write(&file).expect("write");
        assert_eq!(FileFormat::Yaml.read(&json).expect("YAML reads JSON"), file);
        assert_eq!(
            FileFormat::choose(None, Some(std::path::Path::new("f.yml"))),
            Ok(FileFormat::Yaml)
        );
        assert!(FileFormat::choose(Some("toml"), None).is_err());
    }
}
