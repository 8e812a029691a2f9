//! Segments (DESIGN.md, "Flag model v2"): named, reusable sets of
//! constraints that rules name by key instead of repeating them ("beta
//! testers", "EU customers"). A rule matches only when its own constraints
//! and every constraint of each segment it names hold.
//!
//! This file is the pure part: the segment as stored, its checks (the same
//! constraint rules as a rule's, messages naming the constraint) and its
//! compiled form, which [`super::rules::SegmentLookup`] hands to rules.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::constraint::{CompiledConstraint, Constraint, number_attributes};
use super::rules::MAX_CONSTRAINTS;
use super::validate::{MAX_DESCRIPTION_BYTES, ValidationError, is_valid_key};
use crate::echo::truncate;

/// Most segments one database may hold.
pub const MAX_SEGMENTS: usize = 1_000;

/// A segment as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// `^[a-z0-9][a-z0-9_.-]{0,127}$`, like a flag key.
    pub key: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// All must hold for a context to be in the segment.
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Version of the last change.
    pub version: i64,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Who last changed it.
    pub updated_by: String,
}

/// A segment, checked and compiled.
#[derive(Clone, Debug)]
pub struct CompiledSegment {
    segment: Segment,
    constraints: Box<[CompiledConstraint]>,
}

/// Checks a segment's key, description and constraints (as written or as
/// stored), compiling the constraints; every problem, at most one per field.
pub fn check_segment(
    key: &str,
    description: &str,
    constraints: &[Constraint],
) -> Result<Box<[CompiledConstraint]>, Vec<ValidationError>> {
    let mut errors = Vec::new();
    if !is_valid_key(key) {
        errors.push(ValidationError::new(
            "key",
            format!(
                "{:?} is not a valid segment key: ^[a-z0-9][a-z0-9_.-]{{0,127}}$",
                truncate(key)
            ),
        ));
    }
    if description.len() > MAX_DESCRIPTION_BYTES {
        errors.push(ValidationError::new(
            "description",
            format!(
                "is {} bytes long, at most {MAX_DESCRIPTION_BYTES} are allowed",
                description.len()
            ),
        ));
    }
    let compiled = if constraints.is_empty() {
        errors.push(ValidationError::new(
            "constraints",
            "a segment needs at least one constraint (one without any would hold for everyone)",
        ));
        None
    } else if constraints.len() > MAX_CONSTRAINTS {
        errors.push(ValidationError::new(
            "constraints",
            format!(
                "{} constraints; at most {MAX_CONSTRAINTS}",
                constraints.len()
            ),
        ));
        None
    } else {
        match constraints
            .iter()
            .enumerate()
            .map(|(i, constraint)| {
                constraint
                    .compile()
                    .map_err(|err| format!("constraint {}: {err}", i + 1))
            })
            .collect::<Result<Box<[_]>, _>>()
        {
            Ok(mut compiled) => {
                number_attributes(compiled.iter_mut());
                Some(compiled)
            }
            Err(problem) => {
                errors.push(ValidationError::new("constraints", problem));
                None
            }
        }
    };
    match compiled {
        Some(compiled) if errors.is_empty() => Ok(compiled),
        _ => Err(errors),
    }
}

impl CompiledSegment {
    /// Checks and compiles a stored segment (rows written by plain SQL are
    /// checked as strictly as the API's writes).
    pub fn new(segment: Segment) -> Result<Self, Vec<ValidationError>> {
        let constraints = check_segment(&segment.key, &segment.description, &segment.constraints)?;
        Ok(CompiledSegment {
            segment,
            constraints,
        })
    }

    /// The segment as stored.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// Its compiled constraints.
    pub fn constraints(&self) -> &[CompiledConstraint] {
        &self.constraints
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constraint(attribute: &str, operator: &str, values: &[&str]) -> Constraint {
        Constraint {
            attribute: attribute.into(),
            operator: operator.into(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            ..Constraint::default()
        }
    }

    fn segment(constraints: Vec<Constraint>) -> Segment {
        Segment {
            key: "beta-testers".into(),
            description: "people who asked for early access".into(),
            constraints,
            version: 1,
            updated_at: DateTime::UNIX_EPOCH,
            updated_by: "test".into(),
        }
    }

    #[test]
    fn a_segment_compiles_its_constraints() {
        let compiled = CompiledSegment::new(segment(vec![
            constraint("plan", "in", &["beta"]),
            constraint("app_version", "semver_gte", &["2.0.0"]),
        ]))
        .expect("valid");
        assert_eq!(compiled.constraints().len(), 2);
        assert_eq!(compiled.segment().key, "beta-testers");
    }

    #[test]
    fn bad_segments_are_refused_naming_the_field_and_constraint() {
        let errors = CompiledSegment::new(segment(Vec::new())).unwrap_err();
        assert_eq!(errors[0].field, "constraints");
        let errors = CompiledSegment::new(segment(vec![
            constraint("plan", "in", &["beta"]),
            constraint("seats", "num_gt", &["many"]),
        ]))
        .unwrap_err();
        assert!(
            errors[0].message.starts_with("constraint 2:"),
            "{}",
            errors[0].message
        );
        let errors = CompiledSegment::new(Segment {
            key: "Bad Key".into(),
            ..segment(vec![constraint("plan", "exists", &[])])
        })
        .unwrap_err();
        assert_eq!(errors[0].field, "key");
        let too_many = vec![constraint("plan", "exists", &[]); MAX_CONSTRAINTS + 1];
        assert!(CompiledSegment::new(segment(too_many)).is_err());
    }
}
