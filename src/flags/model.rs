//! The data types of the feature-flag model.
//!
//! [`Flag`] is the stored shape of one flag (what PostgreSQL holds and what
//! snapshots persist with serde); [`EvaluationContext`] describes who a flag
//! is evaluated for; [`Evaluation`] and [`Reason`] describe the
//! answer. Validation of input lives in `validate.rs`, the evaluation engine
//! in `evaluate.rs`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::targeting::Targeting;

/// The JSON type that a flag's `on_value` and `off_value` both have.
///
/// The serde and [`ValueType::as_str`] names (`bool`, `string`, `number`,
/// `object`) are the ones the `feature_flags.value_type` column accepts, so
/// the same spelling is used on disk, in the database and in snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// A JSON `true`/`false`; the default, because most flags are switches.
    #[default]
    Bool,
    /// A JSON string.
    String,
    /// A JSON number.
    Number,
    /// A JSON object.
    Object,
}

impl ValueType {
    /// Every value type, in declaration order (handy for tests and help texts).
    pub const ALL: [ValueType; 4] = [
        ValueType::Bool,
        ValueType::String,
        ValueType::Number,
        ValueType::Object,
    ];

    /// The lowercase name: `bool`, `string`, `number` or `object`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Number => "number",
            ValueType::Object => "object",
        }
    }

    /// Whether `value` is a JSON value of this type.
    ///
    /// JSON `null` and arrays match no type: a flag that can answer `null`
    /// would be indistinguishable from "no answer" for many clients.
    pub fn matches(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (ValueType::Bool, Value::Bool(_))
                | (ValueType::String, Value::String(_))
                | (ValueType::Number, Value::Number(_))
                | (ValueType::Object, Value::Object(_))
        )
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`ValueType`] from a string that names none.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown value type {0:?}: expected one of bool, string, number, object")]
pub struct UnknownValueType(pub String);

impl FromStr for ValueType {
    type Err = UnknownValueType;

    /// Parses the exact lowercase names; no case folding, because the
    /// database CHECK constraint does not fold either.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ValueType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownValueType(s.to_owned()))
    }
}

/// One feature flag as stored.
///
/// This is plain data: it is not validated on construction (rows read back
/// from the database were validated when written). Build it from user input
/// through `FlagDraft::validate`, and compile it with `CompiledFlag::new`
/// before evaluating it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    /// Unique key, `^[a-z0-9][a-z0-9_.-]{0,127}$`.
    pub key: String,
    /// Free text for people.
    pub description: String,
    /// A disabled flag is off for everyone.
    pub enabled: bool,
    /// The JSON type of `on_value` and `off_value`.
    pub value_type: ValueType,
    /// The value answered when the flag is on for a context.
    pub on_value: Value,
    /// The value answered when the flag is off for a context.
    pub off_value: Value,
    /// Environments where the flag may be on; empty means every environment.
    pub environments: Vec<String>,
    /// User ids for whom the flag is on (unless disabled).
    pub target_users: Vec<String>,
    /// Roles for which the flag is on (unless disabled).
    pub target_roles: Vec<String>,
    /// Share of users (0..=100) for whom the flag is on, by a stable bucket.
    pub rollout_percentage: u8,
    /// Version of the last change to this flag (grows with every change).
    pub version: i64,
    /// When the flag last changed.
    pub updated_at: DateTime<Utc>,
    /// Who last changed the flag.
    pub updated_by: String,
    /// The v2 parts (more variants, rules, default serve, prerequisites);
    /// `None` for a flag of today's model, which is serialized exactly as
    /// before. Boxed: most flags have none, and a flag stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting: Option<Box<Targeting>>,
    /// Whether client tokens (browsers, phones) may evaluate the flag; off
    /// unless marked, since a client sees whatever it evaluates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_visible: bool,
    /// When the flag was created (for flags older than the mark, their last
    /// change before it). Epoch in documents from before it existed.
    #[serde(default)]
    pub created_at: DateTime<Utc>,
    /// Kept off the stale list (kill switches, ops toggles).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

/// Who a flag is evaluated for.
///
/// Every field may be omitted (serde fills defaults), which describes an
/// anonymous caller: no user targeting, no role targeting and, for a partial
/// rollout, off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvaluationContext {
    /// The user's stable id; drives user targeting and the rollout bucket.
    /// `None` and `Some("")` both mean anonymous.
    pub user_id: Option<String>,
    /// The user's roles; drives role targeting.
    pub roles: Vec<String>,
    /// Any other attributes, kept for future rules; evaluation ignores them.
    pub attributes: Map<String, Value>,
}

impl EvaluationContext {
    /// A context for an identified user with no roles and no attributes.
    pub fn for_user(user_id: impl Into<String>) -> Self {
        EvaluationContext {
            user_id: Some(user_id.into()),
            ..EvaluationContext::default()
        }
    }

    /// This context with `roles` added to its roles.
    pub fn with_roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles.extend(roles.into_iter().map(Into::into));
        self
    }

    /// The user id if there is a usable one.
    ///
    /// An empty id is treated as no id: the gRPC API cannot tell an omitted
    /// string from an empty one, and bucketing every anonymous caller under
    /// the same "" id would put them all on or all off together.
    pub fn effective_user_id(&self) -> Option<&str> {
        self.user_id.as_deref().filter(|id| !id.is_empty())
    }
}

/// Why an evaluation gave its answer.
///
/// The names follow OpenFeature's resolution reasons so that clients using
/// an OpenFeature provider can pass them through unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The flag is fully rolled out and has no targeting: everyone is on.
    Static,
    /// The user id or one of the roles is targeted.
    TargetingMatch,
    /// A partial rollout decided by the user's bucket.
    Split,
    /// The fallback: a full rollout with targeting that did not match, a 0 %
    /// rollout, or a partial rollout without a user id.
    Default,
    /// The flag is disabled, or not enabled in the requested environment.
    Disabled,
    /// A prerequisite flag did not serve one of the variants it must: the
    /// flag served its off variant. Foreign protocols that have no such
    /// reason say `DEFAULT`.
    PrerequisiteFailed,
    /// The answer came from a snapshot known to be out of date. The engine
    /// never produces it: the caller that knows the snapshot's age sets it.
    Stale,
}

impl Reason {
    /// Every reason, in the order counters keep them (see [`Reason::index`]).
    pub const ALL: [Reason; 7] = [
        Reason::Static,
        Reason::TargetingMatch,
        Reason::Split,
        Reason::Default,
        Reason::Disabled,
        Reason::Stale,
        Reason::PrerequisiteFailed,
    ];

    /// Its place in [`Reason::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Reason::Static => 0,
            Reason::TargetingMatch => 1,
            Reason::Split => 2,
            Reason::Default => 3,
            Reason::Disabled => 4,
            Reason::Stale => 5,
            Reason::PrerequisiteFailed => 6,
        }
    }

    /// The upper-case name: `STATIC`, `TARGETING_MATCH`, `SPLIT`, `DEFAULT`,
    /// `DISABLED`, `PREREQUISITE_FAILED` or `STALE`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
            Reason::PrerequisiteFailed => "PREREQUISITE_FAILED",
            Reason::Stale => "STALE",
        }
    }
}

impl Reason {
    /// The nearest of OpenFeature's reasons, for protocols that know only
    /// those (flagd, OFREP): `PREREQUISITE_FAILED` reads `DEFAULT` (the
    /// flag served its fallback, the off variant); the others are the same.
    pub const fn open_feature_name(self) -> &'static str {
        match self {
            Reason::PrerequisiteFailed => "DEFAULT",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of evaluating one flag for one context.
///
/// `value` borrows from the evaluated flag so that the hot path copies no
/// JSON; clone it only when the answer has to outlive the snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation<'a> {
    /// The value of `variant`.
    pub value: &'a Value,
    /// The variant answered: `on`, `off` or one of the flag's named ones.
    pub variant: &'a str,
    /// Why.
    pub reason: Reason,
    /// Version of the flag that was evaluated.
    pub flag_version: i64,
    /// The variant's position in the flag (`on` 0, `off` 1, then the named
    /// ones): where the answer is counted.
    pub(crate) variant_index: usize,
}

impl Evaluation<'_> {
    /// The same answer, given from data that may be out of date: the value
    /// stands (it is the last known one), the reason becomes `STALE`.
    #[must_use]
    pub fn stale_if(self, stale: bool) -> Self {
        if stale {
            Evaluation {
                reason: Reason::Stale,
                ..self
            }
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn value_type_names_round_trip_through_as_str_from_str_and_serde() {
        for t in ValueType::ALL {
            assert_eq!(t.as_str().parse::<ValueType>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert!("Bool".parse::<ValueType>().is_err());
        assert!("".parse::<ValueType>().is_err());
    }

    #[test]
    fn value_type_matches_only_its_json_type() {
        let samples = [json!(true), json!("x"), json!(1.5), json!({"a": 1})];
        for (i, t) in ValueType::ALL.into_iter().enumerate() {
            for (j, v) in samples.iter().enumerate() {
                assert_eq!(t.matches(v), i == j, "{t} vs {v}");
            }
            assert!(!t.matches(&Value::Null));
            assert!(!t.matches(&json!([1])));
        }
    }

    #[test]
    fn reason_names_match_the_api() {
        let reasons = [
            (Reason::Static, "STATIC"),
            (Reason::TargetingMatch, "TARGETING_MATCH"),
            (Reason::Split, "SPLIT"),
            (Reason::Default, "DEFAULT"),
            (Reason::Disabled, "DISABLED"),
            (Reason::PrerequisiteFailed, "PREREQUISITE_FAILED"),
            (Reason::Stale, "STALE"),
        ];
        for (r, name) in reasons {
            assert_eq!(r.as_str(), name);
            assert_eq!(serde_json::to_value(r).unwrap(), json!(name));
        }
    }

    #[test]
    fn an_empty_user_id_is_anonymous() {
        assert_eq!(EvaluationContext::for_user("").effective_user_id(), None);
        assert_eq!(EvaluationContext::default().effective_user_id(), None);
        assert_eq!(
            EvaluationContext::for_user("u").effective_user_id(),
            Some("u")
        );
    }

    #[test]
    fn a_context_deserializes_with_every_field_omitted() {
        let ctx: EvaluationContext = serde_json::from_str("{}").unwrap();
        assert_eq!(ctx, EvaluationContext::default());
    }
}
