//! The path an evaluation took, for `explain` ("why does this user see
//! B?"): every step that was checked and did not decide, then the one that
//! did, in order.

use std::fmt;

/// One step of the path. Rule numbers are 0-based here; the text and the
/// API count from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The flag is disabled.
    Disabled,
    /// The flag lists environments, and not this one.
    EnvironmentNotListed { environment: String },
    /// A prerequisite is not met: the other flag served `served` (None: it
    /// does not exist, or the chain is too deep).
    PrerequisiteUnmet {
        flag: String,
        served: Option<String>,
        wanted: Vec<String>,
    },
    /// Every prerequisite is met.
    PrerequisitesMet,
    /// The user id is a target user.
    TargetUser,
    /// A role is a target role.
    TargetRole { role: String },
    /// Rule `rule` did not match: constraint `constraint` failed.
    ConstraintFailed {
        rule: usize,
        constraint: usize,
        described: String,
    },
    /// Rule `rule` did not match: a constraint of segment `segment` failed.
    SegmentFailed {
        rule: usize,
        segment: String,
        described: String,
    },
    /// Rule `rule` (None: the default serve) matched but its split was
    /// skipped: the context has no value for its stickiness attribute.
    SplitSkipped {
        rule: Option<usize>,
        stickiness: String,
    },
    /// Rule `rule` matched.
    RuleMatched { rule: usize, name: String },
    /// The default serve decided.
    DefaultServe,
    /// The rollout percentage decided; `bucket` is the context's bucket
    /// (None without a user id, or at 0 % and 100 %).
    Rollout { percentage: u8, bucket: Option<u32> },
}

impl Step {
    /// The step's kind, as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Disabled => "disabled",
            Step::EnvironmentNotListed { .. } => "environment",
            Step::PrerequisiteUnmet { .. } | Step::PrerequisitesMet => "prerequisites",
            Step::TargetUser => "target_users",
            Step::TargetRole { .. } => "target_roles",
            Step::ConstraintFailed { .. }
            | Step::SegmentFailed { .. }
            | Step::SplitSkipped { rule: Some(_), .. }
            | Step::RuleMatched { .. } => "rule",
            Step::SplitSkipped { rule: None, .. } | Step::DefaultServe => "default_serve",
            Step::Rollout { .. } => "rollout",
        }
    }

    /// The rule it is about, counted from 1; None for other steps.
    pub fn rule_number(&self) -> Option<usize> {
        match self {
            Step::ConstraintFailed { rule, .. }
            | Step::SegmentFailed { rule, .. }
            | Step::RuleMatched { rule, .. }
            | Step::SplitSkipped {
                rule: Some(rule), ..
            } => Some(rule + 1),
            _ => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Disabled => f.write_str("the flag is disabled"),
            Step::EnvironmentNotListed { environment } => {
                write!(f, "the flag is not enabled in environment {environment:?}")
            }
            Step::PrerequisiteUnmet {
                flag,
                served: Some(served),
                wanted,
            } => write!(
                f,
                "prerequisite {flag:?} served {served:?}, not one of {wanted:?}"
            ),
            Step::PrerequisiteUnmet {
                flag, served: None, ..
            } => write!(
                f,
                "prerequisite {flag:?} does not exist (or its chain is too deep)"
            ),
            Step::PrerequisitesMet => f.write_str("every prerequisite is met"),
            Step::TargetUser => f.write_str("the user id is a target user"),
            Step::TargetRole { role } => write!(f, "role {role:?} is a target role"),
            Step::ConstraintFailed {
                rule,
                constraint,
                described,
            } => write!(
                f,
                "rule {} did not match: constraint {} ({described}) does not hold",
                rule + 1,
                constraint + 1
            ),
            Step::SegmentFailed {
                rule,
                segment,
                described,
            } => write!(
                f,
                "rule {} did not match: segment {segment:?}: {described}",
                rule + 1
            ),
            Step::SplitSkipped {
                rule: Some(rule),
                stickiness,
            } => write!(
                f,
                "rule {} matched, but its split was skipped: the context has no {stickiness}",
                rule + 1
            ),
            Step::SplitSkipped {
                rule: None,
                stickiness,
            } => write!(
                f,
                "the default split was skipped: the context has no {stickiness}"
            ),
            Step::RuleMatched { rule, name } if name.is_empty() => {
                write!(f, "rule {} matched", rule + 1)
            }
            Step::RuleMatched { rule, name } => write!(f, "rule {} ({name:?}) matched", rule + 1),
            Step::DefaultServe => f.write_str("no rule matched: the default serve"),
            Step::Rollout {
                percentage,
                bucket: Some(bucket),
            } => write!(
                f,
                "rollout {percentage}%: the user's bucket is {bucket} of 100"
            ),
            Step::Rollout {
                percentage,
                bucket: None,
            } => write!(f, "rollout {percentage}%"),
        }
    }
}
