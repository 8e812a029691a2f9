//! Constraints of targeting rules and segments: one attribute of the
//! context, an operator and its values.
//!
//! A constraint is checked when it is written ([`Constraint::compile`]:
//! numbers, dates, versions and regular expressions parsed once, errors
//! naming what is wrong) and evaluated from the compiled form only, without
//! parsing again and, for the usual operators, without allocating.
//!
//! Semantics (README, "Targeting rules"):
//! - the attribute is `user_id`, `roles` (the constraint holds when it holds
//!   for any of the roles), `environment` (this instance's), `current_time`,
//!   or a field of the context's `attributes` (a JSON array counts as any of
//!   its elements; a number or a bool also reads as its text);
//! - an operator on a missing attribute, or on a value of the wrong kind (a
//!   number operator on `"abc"`), is false; `inverted` flips the result, so
//!   an inverted constraint on a missing attribute is true;
//! - `case_insensitive` applies to `in`, `not_in`, the `str_*` operators and
//!   `regex`.

use std::cell::{Cell, OnceCell};
use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::EvaluationContext;
use crate::echo::truncate;

/// Most values one constraint may list.
pub const MAX_VALUES: usize = 1_000;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1_024;
/// Longest regular expression, in bytes.
pub const MAX_REGEX_BYTES: usize = 1_024;
/// Largest compiled regular expression, in bytes (the engine's own size
/// limit): a pattern whose automaton would grow past it is refused.
pub const MAX_REGEX_COMPILED_BYTES: usize = 256 * 1024;

/// What a constraint compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// The value is one of `values`.
    In,
    /// The value is none of `values` (the attribute must be present).
    NotIn,
    /// The value contains one of `values`.
    StrContains,
    /// The value starts with one of `values`.
    StrStartsWith,
    /// The value ends with one of `values`.
    StrEndsWith,
    /// As numbers, equal to the one value.
    NumEq,
    /// Greater than.
    NumGt,
    /// Greater than or equal.
    NumGte,
    /// Less than.
    NumLt,
    /// Less than or equal.
    NumLte,
    /// As RFC 3339 times, after the one value.
    DateAfter,
    /// Before the one value.
    DateBefore,
    /// As semantic versions, equal to the one value.
    SemverEq,
    /// Greater than.
    SemverGt,
    /// Greater than or equal.
    SemverGte,
    /// Less than.
    SemverLt,
    /// Less than or equal.
    SemverLte,
    /// Matches the one regular expression (linear-time engine), anywhere in
    /// the value unless anchored.
    Regex,
    /// The attribute is present (no values).
    Exists,
}

impl Operator {
    /// Every operator, for validation messages and property tests.
    pub const ALL: [Operator; 19] = [
        Operator::In,
        Operator::NotIn,
        Operator::StrContains,
        Operator::StrStartsWith,
        Operator::StrEndsWith,
        Operator::NumEq,
        Operator::NumGt,
        Operator::NumGte,
        Operator::NumLt,
        Operator::NumLte,
        Operator::DateAfter,
        Operator::DateBefore,
        Operator::SemverEq,
        Operator::SemverGt,
        Operator::SemverGte,
        Operator::SemverLt,
        Operator::SemverLte,
        Operator::Regex,
        Operator::Exists,
    ];

    /// The snake_case name the API uses.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operator::In => "in",
            Operator::NotIn => "not_in",
            Operator::StrContains => "str_contains",
            Operator::StrStartsWith => "str_starts_with",
            Operator::StrEndsWith => "str_ends_with",
            Operator::NumEq => "num_eq",
            Operator::NumGt => "num_gt",
            Operator::NumGte => "num_gte",
            Operator::NumLt => "num_lt",
            Operator::NumLte => "num_lte",
            Operator::DateAfter => "date_after",
            Operator::DateBefore => "date_before",
            Operator::SemverEq => "semver_eq",
            Operator::SemverGt => "semver_gt",
            Operator::SemverGte => "semver_gte",
            Operator::SemverLt => "semver_lt",
            Operator::SemverLte => "semver_lte",
            Operator::Regex => "regex",
            Operator::Exists => "exists",
        }
    }

    /// The operator named `name`.
    pub fn from_name(name: &str) -> Option<Operator> {
        Operator::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// Whether `case_insensitive` means something for it.
    pub const fn compares_text(self) -> bool {
        matches!(
            self,
            Operator::In
                | Operator::NotIn
                | Operator::StrContains
                | Operator::StrStartsWith
                | Operator::StrEndsWith
                | Operator::Regex
        )
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A constraint as written: plain data, checked by [`Constraint::compile`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Constraint {
    /// `user_id`, `roles`, `environment`, `current_time`, or a field of the
    /// context's attributes.
    pub attribute: String,
    /// What to compare, by name (`in`, `num_gt`, …).
    pub operator: String,
    /// The operand(s).
    pub values: Vec<String>,
    /// Flip the result.
    pub inverted: bool,
    /// Compare text without regard to case.
    pub case_insensitive: bool,
}

/// Why a constraint cannot be used; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConstraintError(pub String);

fn refuse(message: impl Into<String>) -> ConstraintError {
    ConstraintError(message.into())
}

/// Which part of the context a constraint reads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attribute {
    UserId,
    Roles,
    Environment,
    CurrentTime,
    /// A field of the context's attributes; `slot` is where a
    /// [`ContextReader`] keeps its look-up (numbered per flag or segment by
    /// [`number_attributes`]; `None`: looked up each time).
    Field {
        name: String,
        slot: Option<u8>,
    },
}

/// The operand, parsed once.
#[derive(Clone, Debug)]
enum Test {
    // The text operators, each with its values (lower case when
    // case-insensitive); one variant per operator so that evaluation
    // dispatches once.
    In(Box<[String]>),
    NotIn(Box<[String]>),
    Contains(Box<[String]>),
    StartsWith(Box<[String]>),
    EndsWith(Box<[String]>),
    Number(f64),
    Date(DateTime<Utc>),
    Semver(semver::Version),
    Regex(regex::Regex),
    Exists,
}

/// How many distinct attributes of one flag (or one segment) a
/// [`ContextReader`] remembers; constraints on attributes past these look
/// theirs up each time.
pub const REMEMBERED_ATTRIBUTES: usize = 16;

/// What a [`ContextReader`] knows of one attribute.
#[derive(Clone, Copy, Debug)]
enum Looked<'a> {
    NotYet,
    Absent,
    Found(&'a Value),
}

/// The context as one evaluation reads it: each attribute the constraints
/// name is looked up in the context's map once, however many constraints
/// read it. A flag's rules typically name a handful of attributes in
/// dozens of constraints, and the look-up (string comparisons in an
/// ordered map) was most of a rule's cost.
pub struct ContextReader<'a> {
    ctx: &'a EvaluationContext,
    looked: [Cell<Looked<'a>>; REMEMBERED_ATTRIBUTES],
}

impl<'a> ContextReader<'a> {
    /// A reader that has looked nothing up yet.
    pub fn new(ctx: &'a EvaluationContext) -> Self {
        ContextReader {
            ctx,
            looked: std::array::from_fn(|_| Cell::new(Looked::NotYet)),
        }
    }

    /// The context read.
    pub fn context(&self) -> &'a EvaluationContext {
        self.ctx
    }

    /// Attribute `name`, remembered in `slot`.
    fn field(&self, name: &str, slot: Option<u8>) -> Option<&'a Value> {
        let Some(cell) = slot.and_then(|slot| self.looked.get(usize::from(slot))) else {
            return self.ctx.attributes.get(name);
        };
        match cell.get() {
            Looked::Found(value) => Some(value),
            Looked::Absent => None,
            Looked::NotYet => {
                let value = self.ctx.attributes.get(name);
                cell.set(value.map_or(Looked::Absent, Looked::Found));
                value
            }
        }
    }
}

/// Numbers the attributes `constraints` read, one slot per distinct name
/// (the first [`REMEMBERED_ATTRIBUTES`] of them), for constraints that are
/// evaluated together through one [`ContextReader`].
pub fn number_attributes<'c>(constraints: impl IntoIterator<Item = &'c mut CompiledConstraint>) {
    let mut names: Vec<String> = Vec::new();
    for constraint in constraints {
        if let Attribute::Field { name, slot } = &mut constraint.attribute {
            let at = match names.iter().position(|seen| seen == name) {
                Some(at) => at,
                None => {
                    names.push(name.clone());
                    names.len() - 1
                }
            };
            *slot = u8::try_from(at)
                .ok()
                .filter(|&at| usize::from(at) < REMEMBERED_ATTRIBUTES);
        }
    }
}

/// A constraint ready to evaluate.
#[derive(Clone, Debug)]
pub struct CompiledConstraint {
    attribute: Attribute,
    operator: Operator,
    test: Test,
    /// For the comparing operators: whether the attribute being less than,
    /// equal to and greater than the operand satisfies it.
    accepts: [bool; 3],
    inverted: bool,
    case_insensitive: bool,
}

/// What an evaluation knows besides the context.
#[derive(Clone, Debug)]
pub struct Surroundings<'a> {
    /// This instance's environment.
    pub environment: &'a str,
    /// The time of the evaluation, read from the clock the first time a
    /// constraint asks (most evaluations never do), then the same for every
    /// constraint of the evaluation, whether a flag's own or a segment's.
    now: OnceCell<DateTime<Utc>>,
}

impl<'a> Surroundings<'a> {
    /// An evaluation in `environment`, now.
    pub fn new(environment: &'a str) -> Self {
        Surroundings {
            environment,
            now: OnceCell::new(),
        }
    }

    /// An evaluation in `environment` at `now` (tests, explanations of a
    /// past moment).
    pub fn at(environment: &'a str, now: DateTime<Utc>) -> Self {
        Surroundings {
            environment,
            now: OnceCell::from(now),
        }
    }

    /// The time of the evaluation.
    pub fn now(&self) -> DateTime<Utc> {
        *self.now.get_or_init(Utc::now)
    }
}

impl Constraint {
    /// Checks and compiles it. Errors say what is wrong in terms of the
    /// fields (the caller adds which rule and constraint).
    pub fn compile(&self) -> Result<CompiledConstraint, ConstraintError> {
        let operator = Operator::from_name(self.operator.trim()).ok_or_else(|| {
            refuse(format!(
                "operator {:?} is unknown; expected one of {}",
                truncate(&self.operator),
                Operator::ALL.map(Operator::as_str).join(", ")
            ))
        })?;
        let attribute = match self.attribute.trim() {
            "" => return Err(refuse("attribute is empty")),
            "user_id" => Attribute::UserId,
            "roles" => Attribute::Roles,
            "environment" => Attribute::Environment,
            "current_time" => Attribute::CurrentTime,
            name if name.len() > 128 => {
                return Err(refuse(format!(
                    "attribute {:?}… is longer than 128 bytes",
                    truncate(name)
                )));
            }
            name => Attribute::Field {
                name: name.to_owned(),
                slot: None,
            },
        };
        if self.case_insensitive && !operator.compares_text() {
            return Err(refuse(format!(
                "case_insensitive does not apply to {operator}"
            )));
        }
        if self.values.len() > MAX_VALUES {
            return Err(refuse(format!(
                "{} values; at most {MAX_VALUES}",
                self.values.len()
            )));
        }
        if let Some(long) = self
            .values
            .iter()
            .find(|value| value.len() > MAX_VALUE_BYTES)
        {
            return Err(refuse(format!(
                "value {:?}… is longer than {MAX_VALUE_BYTES} bytes",
                truncate(long)
            )));
        }
        let one = || -> Result<&str, ConstraintError> {
            match self.values.as_slice() {
                [value] => Ok(value.as_str()),
                values => Err(refuse(format!(
                    "{operator} takes exactly one value, not {}",
                    values.len()
                ))),
            }
        };
        let test = match operator {
            Operator::In
            | Operator::NotIn
            | Operator::StrContains
            | Operator::StrStartsWith
            | Operator::StrEndsWith => {
                if self.values.is_empty() {
                    return Err(refuse(format!("{operator} needs at least one value")));
                }
                let values = self
                    .values
                    .iter()
                    .map(|value| {
                        if self.case_insensitive {
                            value.to_lowercase()
                        } else {
                            value.clone()
                        }
                    })
                    .collect();
                match operator {
                    Operator::In => Test::In(values),
                    Operator::NotIn => Test::NotIn(values),
                    Operator::StrContains => Test::Contains(values),
                    Operator::StrStartsWith => Test::StartsWith(values),
                    _ => Test::EndsWith(values),
                }
            }
            Operator::NumEq
            | Operator::NumGt
            | Operator::NumGte
            | Operator::NumLt
            | Operator::NumLte => {
                let raw = one()?;
                let number = parse_number(raw)
                    .ok_or_else(|| refuse(format!("{:?} is not a number", truncate(raw))))?;
                Test::Number(number)
            }
            Operator::DateAfter | Operator::DateBefore => {
                let raw = one()?;
                let date = parse_date(raw).ok_or_else(|| {
                    refuse(format!(
                        "{:?} is not an RFC 3339 time, e.g. 2026-12-31T23:00:00Z",
                        truncate(raw)
                    ))
                })?;
                Test::Date(date)
            }
            Operator::SemverEq
            | Operator::SemverGt
            | Operator::SemverGte
            | Operator::SemverLt
            | Operator::SemverLte => {
                let raw = one()?;
                let version = semver::Version::parse(raw.trim()).map_err(|err| {
                    refuse(format!(
                        "{:?} is not a semantic version (e.g. 1.4.0-beta.2): {err}",
                        truncate(raw)
                    ))
                })?;
                Test::Semver(version)
            }
            Operator::Regex => {
                let raw = one()?;
                if raw.len() > MAX_REGEX_BYTES {
                    return Err(refuse(format!(
                        "the regular expression is longer than {MAX_REGEX_BYTES} bytes"
                    )));
                }
                let regex = regex::RegexBuilder::new(raw)
                    .case_insensitive(self.case_insensitive)
                    .size_limit(MAX_REGEX_COMPILED_BYTES)
                    .dfa_size_limit(MAX_REGEX_COMPILED_BYTES)
                    .build()
                    .map_err(|err| {
                        refuse(format!(
                            "{:?} is not a usable regular expression: {}",
                            truncate(raw),
                            last_line(&err.to_string())
                        ))
                    })?;
                Test::Regex(regex)
            }
            Operator::Exists => {
                if !self.values.is_empty() {
                    return Err(refuse("exists takes no values"));
                }
                Test::Exists
            }
        };
        let accepts =
            [Ordering::Less, Ordering::Equal, Ordering::Greater].map(|ordering| match operator {
                Operator::NumEq | Operator::SemverEq => ordering == Ordering::Equal,
                Operator::NumGt | Operator::SemverGt | Operator::DateAfter => {
                    ordering == Ordering::Greater
                }
                Operator::NumGte | Operator::SemverGte => ordering != Ordering::Less,
                Operator::NumLt | Operator::SemverLt | Operator::DateBefore => {
                    ordering == Ordering::Less
                }
                Operator::NumLte | Operator::SemverLte => ordering != Ordering::Greater,
                _ => false,
            });
        Ok(CompiledConstraint {
            attribute,
            operator,
            test,
            accepts,
            inverted: self.inverted,
            case_insensitive: self.case_insensitive,
        })
    }
}

impl CompiledConstraint {
    /// Whether it reads the clock (`current_time`): evaluation reads the
    /// clock only for flags that need it.
    pub fn reads_time(&self) -> bool {
        matches!(self.attribute, Attribute::CurrentTime)
    }

    /// Whether it holds for `ctx`, on its own (evaluation reads through one
    /// [`ContextReader`] for all of a flag's constraints).
    pub fn holds(&self, ctx: &EvaluationContext, around: &Surroundings<'_>) -> bool {
        self.holds_for(&ContextReader::new(ctx), around)
    }

    /// Whether it holds for the context `reader` reads.
    pub fn holds_for(&self, reader: &ContextReader<'_>, around: &Surroundings<'_>) -> bool {
        self.check(reader, around) != self.inverted
    }

    /// The operator's own answer, before `inverted`.
    fn check(&self, reader: &ContextReader<'_>, around: &Surroundings<'_>) -> bool {
        let ctx = reader.ctx;
        match &self.attribute {
            Attribute::UserId => ctx.effective_user_id().is_some_and(|id| self.test_text(id)),
            Attribute::Roles => ctx.roles.iter().any(|role| self.test_text(role)),
            Attribute::Environment => self.test_text(around.environment),
            Attribute::CurrentTime => match &self.test {
                Test::Exists => true,
                Test::Date(date) => self.compare(around.now().cmp(date)),
                // Other operators on the time read its RFC 3339 text.
                _ => self.test_text(&around.now().to_rfc3339()),
            },
            Attribute::Field { name, slot } => match reader.field(name, *slot) {
                None | Some(Value::Null) => false,
                Some(Value::Array(items)) => items.iter().any(|item| self.test_value(item)),
                Some(value) => self.test_value(value),
            },
        }
    }

    /// One attribute value (not an array).
    #[inline]
    fn test_value(&self, value: &Value) -> bool {
        match value {
            Value::String(text) => self.test_text(text),
            Value::Number(number) => match &self.test {
                Test::Number(operand) => number
                    .as_f64()
                    .is_some_and(|n| self.compare_numbers(n, *operand)),
                Test::Exists => true,
                _ => self.test_text(&number.to_string()),
            },
            Value::Bool(flag) => self.test_text(if *flag { "true" } else { "false" }),
            Value::Null => false,
            Value::Array(_) | Value::Object(_) => matches!(self.test, Test::Exists),
        }
    }

    /// One value as text.
    #[inline]
    fn test_text(&self, text: &str) -> bool {
        match &self.test {
            Test::Exists => true,
            Test::In(values) => values.iter().any(|value| self.text_eq(text, value)),
            Test::NotIn(values) => !values.iter().any(|value| self.text_eq(text, value)),
            Test::Contains(values) => self.with_case(text, |text| {
                values.iter().any(|value| text.contains(value.as_str()))
            }),
            Test::StartsWith(values) => self.with_case(text, |text| {
                values.iter().any(|value| text.starts_with(value.as_str()))
            }),
            Test::EndsWith(values) => self.with_case(text, |text| {
                values.iter().any(|value| text.ends_with(value.as_str()))
            }),
            Test::Number(operand) => {
                parse_number(text).is_some_and(|n| self.compare_numbers(n, *operand))
            }
            Test::Date(operand) => {
                parse_date(text).is_some_and(|date| self.compare(date.cmp(operand)))
            }
            Test::Semver(operand) => semver::Version::parse(text.trim())
                .is_ok_and(|version| self.compare(version.cmp_precedence(operand))),
            Test::Regex(regex) => regex.is_match(text),
        }
    }

    fn text_eq(&self, text: &str, value: &str) -> bool {
        if self.case_insensitive {
            // `value` is lower case already; no allocation for `text`.
            text.chars().flat_map(char::to_lowercase).eq(value.chars())
        } else {
            text == value
        }
    }

    /// Runs `check` on `text`, lower-cased first when case-insensitive (the
    /// one place a case-insensitive substring test allocates).
    fn with_case(&self, text: &str, check: impl Fn(&str) -> bool) -> bool {
        if self.case_insensitive && text.chars().any(char::is_uppercase) {
            check(&text.to_lowercase())
        } else {
            check(text)
        }
    }

    fn compare_numbers(&self, value: f64, operand: f64) -> bool {
        match value.partial_cmp(&operand) {
            Some(ordering) => self.compare(ordering),
            None => false,
        }
    }

    /// Whether `ordering` (the attribute against the operand) satisfies
    /// the operator.
    #[inline]
    fn compare(&self, ordering: Ordering) -> bool {
        self.accepts[(ordering as i8 + 1) as usize]
    }

    /// Why it did not hold for `ctx`, for the explain answer.
    pub fn describe(&self) -> String {
        let values = match &self.test {
            Test::In(values)
            | Test::NotIn(values)
            | Test::Contains(values)
            | Test::StartsWith(values)
            | Test::EndsWith(values) => format!("{values:?}"),
            Test::Number(number) => number.to_string(),
            Test::Date(date) => date.to_rfc3339(),
            Test::Semver(version) => version.to_string(),
            Test::Regex(regex) => format!("{:?}", regex.as_str()),
            Test::Exists => String::new(),
        };
        let attribute = match &self.attribute {
            Attribute::UserId => "user_id",
            Attribute::Roles => "roles",
            Attribute::Environment => "environment",
            Attribute::CurrentTime => "current_time",
            Attribute::Field { name, .. } => name.as_str(),
        };
        let not = if self.inverted { "not " } else { "" };
        let case = if self.case_insensitive {
            " (case-insensitive)"
        } else {
            ""
        };
        format!("{not}{attribute} {} {values}{case}", self.operator)
            .trim_end()
            .to_owned()
    }
}

/// A number as JSON writes it (no `NaN`, no infinity).
fn parse_number(raw: &str) -> Option<f64> {
    raw.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

fn parse_date(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw.trim())
        .ok()
        .map(|date| date.with_timezone(&Utc))
}

/// The last line of a multi-line message (the regex engine puts the cause there).
fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn constraint(attribute: &str, operator: &str, values: &[&str]) -> Constraint {
        Constraint {
            attribute: attribute.into(),
            operator: operator.into(),
            values: values.iter().map(|value| (*value).to_owned()).collect(),
            inverted: false,
            case_insensitive: false,
        }
    }

    fn around() -> Surroundings<'static> {
        Surroundings::at(
            "production",
            parse_date("2026-12-06T12:00:00Z").expect("date"),
        )
    }

    fn ctx(attributes: Value) -> EvaluationContext {
        EvaluationContext {
            user_id: Some("user-1".into()),
            roles: vec!["beta".into(), "staff".into()],
            attributes: match attributes {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
        }
    }

    fn holds(c: &Constraint, attributes: Value) -> bool {
        c.compile()
            .unwrap_or_else(|err| panic!("{c:?}: {err}"))
            .holds(&ctx(attributes), &around())
    }

    #[test]
    fn each_operator_on_a_matching_and_a_failing_value() {
        let cases: &[(&str, &[&str], Value, Value)] = &[
            ("in", &["DE", "FR"], json!("FR"), json!("US")),
            ("not_in", &["DE", "FR"], json!("US"), json!("DE")),
            (
                "str_contains",
                &["@example"],
                json!("a@example.com"),
                json!("a@other.com"),
            ),
            (
                "str_starts_with",
                &["team-"],
                json!("team-a"),
                json!("a-team"),
            ),
            ("str_ends_with", &[".com"], json!("a.com"), json!("a.org")),
            ("num_eq", &["3"], json!(3), json!(4)),
            ("num_gt", &["3"], json!(3.5), json!(3)),
            ("num_gte", &["3"], json!(3), json!(2.99)),
            ("num_lt", &["3"], json!("2"), json!("3")),
            ("num_lte", &["3"], json!(3), json!(3.01)),
            (
                "date_after",
                &["2026-01-01T00:00:00Z"],
                json!("2026-06-01T00:00:00+02:00"),
                json!("2025-12-31T23:59:59Z"),
            ),
            (
                "date_before",
                &["2026-01-01T00:00:00Z"],
                json!("2025-12-31T23:59:59Z"),
                json!("2026-01-01T00:00:00Z"),
            ),
            ("semver_eq", &["1.2.3"], json!("1.2.3"), json!("1.2.4")),
            (
                "semver_gt",
                &["1.2.3"],
                json!("1.10.0"),
                json!("1.2.3-rc.1"),
            ),
            (
                "semver_gte",
                &["1.2.3"],
                json!("1.2.3"),
                json!("1.2.3-rc.1"),
            ),
            (
                "semver_lt",
                &["2.0.0"],
                json!("2.0.0-beta.1"),
                json!("2.0.0"),
            ),
            ("semver_lte", &["2.0.0"], json!("2.0.0"), json!("2.0.1")),
            ("regex", &["^v[0-9]+$"], json!("v12"), json!("v12a")),
        ];
        for (operator, values, matching, failing) in cases {
            let c = constraint("field", operator, values);
            assert!(
                holds(&c, json!({ "field": matching })),
                "{operator} {values:?} on {matching}"
            );
            assert!(
                !holds(&c, json!({ "field": failing })),
                "{operator} {values:?} on {failing}"
            );
            // Missing: false, and true inverted.
            assert!(!holds(&c, json!({})), "{operator} on a missing attribute");
            assert!(!holds(&c, json!({ "field": null })), "{operator} on null");
            let inverted = Constraint {
                inverted: true,
                ..c.clone()
            };
            assert!(
                holds(&inverted, json!({})),
                "inverted {operator} on a missing attribute"
            );
            assert!(!holds(&inverted, json!({ "field": matching })));
            assert!(holds(&inverted, json!({ "field": failing })));
        }
    }

    #[test]
    fn exists() {
        let c = constraint("plan", "exists", &[]);
        assert!(holds(&c, json!({ "plan": "pro" })));
        assert!(holds(&c, json!({ "plan": {"tier": 1} })));
        assert!(!holds(&c, json!({})));
        assert!(!holds(&c, json!({ "plan": null })));
    }

    #[test]
    fn wrong_kinds_are_false() {
        assert!(!holds(
            &constraint("n", "num_gt", &["1"]),
            json!({ "n": "abc" })
        ));
        assert!(!holds(
            &constraint("n", "semver_gt", &["1.0.0"]),
            json!({ "n": "1.0" })
        ));
        assert!(!holds(
            &constraint("n", "date_after", &["2026-01-01T00:00:00Z"]),
            json!({ "n": 5 })
        ));
        assert!(!holds(
            &constraint("n", "in", &["x"]),
            json!({ "n": {"x": 1} })
        ));
    }

    #[test]
    fn case_insensitive_text() {
        let c = Constraint {
            case_insensitive: true,
            ..constraint("country", "in", &["de"])
        };
        assert!(holds(&c, json!({ "country": "DE" })));
        let c = Constraint {
            case_insensitive: true,
            ..constraint("email", "str_ends_with", &["@Example.COM"])
        };
        assert!(holds(&c, json!({ "email": "Ann@EXAMPLE.com" })));
        let c = Constraint {
            case_insensitive: true,
            ..constraint("name", "regex", &["^ann"])
        };
        assert!(holds(&c, json!({ "name": "ANNA" })));
        // Case matters by default.
        assert!(!holds(
            &constraint("country", "in", &["de"]),
            json!({ "country": "DE" })
        ));
    }

    #[test]
    fn built_in_attributes() {
        assert!(holds(&constraint("user_id", "in", &["user-1"]), json!({})));
        assert!(holds(&constraint("roles", "in", &["staff"]), json!({})));
        assert!(!holds(&constraint("roles", "in", &["admin"]), json!({})));
        assert!(holds(
            &constraint("environment", "in", &["production"]),
            json!({})
        ));
        assert!(holds(
            &constraint("current_time", "date_after", &["2026-12-01T00:00:00Z"]),
            json!({})
        ));
        assert!(!holds(
            &constraint("current_time", "date_before", &["2026-12-01T00:00:00Z"]),
            json!({})
        ));
        // An anonymous user has no user_id.
        let anonymous = EvaluationContext::default();
        let c = constraint("user_id", "exists", &[])
            .compile()
            .expect("compiles");
        assert!(!c.holds(&anonymous, &around()));
    }

    #[test]
    fn arrays_are_any_of() {
        let c = constraint("tags", "in", &["vip"]);
        assert!(holds(&c, json!({ "tags": ["a", "vip"] })));
        assert!(!holds(&c, json!({ "tags": ["a"] })));
        assert!(!holds(&c, json!({ "tags": [] })));
    }

    #[test]
    fn bad_constraints_are_refused_naming_the_problem() {
        let cases: &[(Constraint, &str)] = &[
            (
                constraint("a", "between", &["1"]),
                "operator \"between\" is unknown",
            ),
            (constraint("", "in", &["1"]), "attribute is empty"),
            (
                constraint("a", "num_gt", &["ten"]),
                "\"ten\" is not a number",
            ),
            (constraint("a", "num_gt", &["1", "2"]), "exactly one value"),
            (
                constraint("a", "date_after", &["yesterday"]),
                "not an RFC 3339 time",
            ),
            (
                constraint("a", "semver_gt", &["1.2"]),
                "not a semantic version",
            ),
            (
                constraint("a", "regex", &["(unclosed"]),
                "not a usable regular expression",
            ),
            (
                constraint("a", "regex", &["a{1000}{1000}"]),
                "not a usable regular expression",
            ),
            (constraint("a", "in", &[]), "at least one value"),
            (constraint("a", "exists", &["x"]), "takes no values"),
            (
                Constraint {
                    case_insensitive: true,
                    ..constraint("a", "num_gt", &["1"])
                },
                "case_insensitive does not apply",
            ),
        ];
        for (c, expected) in cases {
            let err = c.compile().expect_err("refused");
            assert!(err.0.contains(expected), "{c:?}: {err} lacks {expected:?}");
        }
        let long = "x".repeat(MAX_REGEX_BYTES + 1);
        assert!(constraint("a", "regex", &[&long]).compile().is_err());
    }

    #[test]
    fn describe_names_attribute_operator_and_values() {
        let c = Constraint {
            inverted: true,
            ..constraint("country", "in", &["DE"])
        };
        assert_eq!(
            c.compile().expect("compiles").describe(),
            "not country in [\"DE\"]"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Inverting flips every answer, for any operator, value and context.
        #[test]
        fn inverted_is_the_negation(
            operator in prop::sample::select(Operator::ALL.to_vec()),
            value in prop_oneof![
                Just("1.2.3".to_owned()),
                Just("2026-01-01T00:00:00Z".to_owned()),
                Just("5".to_owned()),
                "[a-z]{1,6}",
            ],
            attribute in prop_oneof![
                Just(json!(null)),
                Just(json!("1.2.4")),
                Just(json!(7)),
                Just(json!("2027-01-01T00:00:00Z")),
                "[a-zA-Z]{0,6}".prop_map(Value::String),
                Just(json!(["abc", 3])),
            ],
        ) {
            let values = if operator == Operator::Exists { vec![] } else { vec![value] };
            let plain = Constraint {
                attribute: "a".into(),
                operator: operator.as_str().into(),
                values,
                inverted: false,
                case_insensitive: false,
            };
            if let Ok(compiled) = plain.compile() {
                let inverted = Constraint { inverted: true, ..plain.clone() }
                    .compile()
                    .expect("the same constraint inverted compiles");
                let context = ctx(json!({ "a": attribute }));
                prop_assert_ne!(
                    compiled.holds(&context, &around()),
                    inverted.holds(&context, &around())
                );
            }
        }

        /// `in` and `not_in` are each other's negation on a present value.
        #[test]
        fn in_and_not_in_partition_present_values(
            values in prop::collection::vec("[a-c]{1,2}", 1..4),
            attribute in "[a-c]{1,2}",
            case_insensitive in any::<bool>(),
        ) {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let within = Constraint { case_insensitive, ..constraint("a", "in", &values) };
            let outside = Constraint { case_insensitive, ..constraint("a", "not_in", &values) };
            let context = json!({ "a": attribute });
            prop_assert_ne!(holds(&within, context.clone()), holds(&outside, context));
        }

        /// Case-insensitive comparison agrees with lower-casing both sides.
        #[test]
        fn case_insensitive_is_lower_casing(
            value in "[a-zA-ZäÄ]{1,4}",
            attribute in "[a-zA-ZäÄ]{1,4}",
            operator in prop::sample::select(vec!["in", "str_contains", "str_starts_with", "str_ends_with"]),
        ) {
            let folded = Constraint {
                case_insensitive: true,
                ..constraint("a", operator, &[&value])
            };
            let lowered = constraint("a", operator, &[&value.to_lowercase()]);
            prop_assert_eq!(
                holds(&folded, json!({ "a": attribute.clone() })),
                holds(&lowered, json!({ "a": attribute.to_lowercase() }))
            );
        }

        /// Numbers compare as numbers whether sent as JSON numbers or text.
        #[test]
        fn numbers_as_numbers_or_text(a in -1e6f64..1e6, b in -1e6f64..1e6) {
            for operator in ["num_eq", "num_gt", "num_gte", "num_lt", "num_lte"] {
                let c = constraint("n", operator, &[&b.to_string()]);
                prop_assert_eq!(
                    holds(&c, json!({ "n": a })),
                    holds(&c, json!({ "n": a.to_string() }))
                );
            }
        }

        /// Semantic versions follow precedence (pre-releases before the
        /// release; build metadata ignored).
        #[test]
        fn semver_precedence(
            major in 0u64..3, minor in 0u64..3, patch in 0u64..3,
            pre in prop::option::of("(alpha|beta|rc)\\.[0-9]"),
        ) {
            let version = match &pre {
                Some(pre) => format!("{major}.{minor}.{patch}-{pre}"),
                None => format!("{major}.{minor}.{patch}"),
            };
            let release = format!("{major}.{minor}.{patch}");
            let lt = constraint("v", "semver_lt", &[&release]);
            prop_assert_eq!(holds(&lt, json!({ "v": version })), pre.is_some());
            let eq = constraint("v", "semver_eq", &[&format!("{version}+build.7")]);
            let equal = holds(&eq, json!({ "v": version }));
            prop_assert!(equal, "{} equals itself with build metadata", version);
        }

        /// Reading through one shared reader (attributes numbered, the
        /// first 16 remembered) answers exactly as each constraint alone,
        /// in any order and with more distinct attributes than remembered.
        #[test]
        fn a_shared_reader_answers_as_each_constraint_alone(
            picks in prop::collection::vec(
                (0usize..24, prop::sample::select(vec!["in", "not_in", "exists", "num_gt", "str_starts_with"]), "[a-c]"),
                1..60,
            ),
            present in prop::collection::vec(prop::option::of(prop_oneof![
                "[a-c]{1,2}".prop_map(Value::String),
                (0i64..5).prop_map(|n| json!(n)),
            ]), 24),
            order in prop::collection::vec(any::<prop::sample::Index>(), 1..120),
        ) {
            let mut compiled: Vec<CompiledConstraint> = picks
                .iter()
                .map(|(attribute, operator, value)| {
                    let values: &[&str] = match *operator {
                        "exists" => &[],
                        "num_gt" => &["2"],
                        _ => &[value.as_str()],
                    };
                    constraint(&format!("attr{attribute}"), operator, values)
                        .compile()
                        .expect("compiles")
                })
                .collect();
            number_attributes(compiled.iter_mut());
            let mut attributes = serde_json::Map::new();
            for (i, value) in present.iter().enumerate() {
                if let Some(value) = value {
                    attributes.insert(format!("attr{i}"), value.clone());
                }
            }
            let context = ctx(Value::Object(attributes));
            let reader = ContextReader::new(&context);
            for index in order {
                let c = index.get(&compiled);
                prop_assert_eq!(c.holds_for(&reader, &around()), c.holds(&context, &around()));
            }
        }
    }
}
