//! Validation of flag input: [`FlagDraft`] (an upsert as the API receives
//! it, with optional fields) becomes a [`ValidFlagDraft`] (every default
//! filled in, every rule checked) or a list of [`ValidationError`]s.
//!
//! The rules mirror the CHECK constraints of the `feature_flags` table and
//! add the limits the database does not enforce (list sizes, string
//! lengths), so that bad input is refused with a message naming the field
//! instead of surfacing as a database error. The key and environment checks
//! are small functions over bytes, shared with configuration.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::sync::Arc;

use super::model::{Flag, ValueType};
use super::targeting::{CompiledTargeting, Targeting};

/// Longest flag key, in bytes (all key bytes are ASCII).
pub const MAX_KEY_LEN: usize = 128;
/// Longest environment name, in bytes (all its bytes are ASCII).
pub const MAX_ENVIRONMENT_LEN: usize = 64;
/// Longest description, in bytes of UTF-8.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most target users one flag may have.
pub const MAX_TARGET_USERS: usize = 10_000;
/// Most target roles one flag may have.
pub const MAX_TARGET_ROLES: usize = 1_000;
/// Longest target user id or role, in bytes of UTF-8.
pub const MAX_TARGET_BYTES: usize = 256;
/// Longest `on_value` / `off_value`, as JSON (the limit of a config value):
/// a flag, like a config row, must fit many times over in one message.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The rollout when none is given: everyone (who passes targeting).
pub const DEFAULT_ROLLOUT_PERCENTAGE: u8 = 100;

/// `a-z` or `0-9`: the bytes a key or environment may start with.
fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `key` is a valid flag or configuration key:
/// `^[a-z0-9][a-z0-9_.-]{0,127}$`.
///
/// Hand-written over bytes rather than with a regex so the check is exact
/// (no `$`-before-newline surprises) and needs no dependency. Any non-ASCII
/// byte fails it, so the length in bytes is the length in characters.
pub fn is_valid_key(key: &str) -> bool {
    match key.as_bytes().split_first() {
        Some((&first, rest)) => {
            key.len() <= MAX_KEY_LEN
                && is_lower_alnum(first)
                && rest
                    .iter()
                    .all(|&b| is_lower_alnum(b) || matches!(b, b'_' | b'.' | b'-'))
        }
        None => false,
    }
}

/// Whether `environment` is a valid environment name:
/// `^[a-z0-9][a-z0-9_-]{0,63}$` (like a key, without dots and shorter).
pub fn is_valid_environment(environment: &str) -> bool {
    match environment.as_bytes().split_first() {
        Some((&first, rest)) => {
            environment.len() <= MAX_ENVIRONMENT_LEN
                && is_lower_alnum(first)
                && rest
                    .iter()
                    .all(|&b| is_lower_alnum(b) || matches!(b, b'_' | b'-'))
        }
        None => false,
    }
}

/// One broken rule: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field's name as the API spells it, e.g. `key`, `on_value`,
    /// `rollout_percentage`, `target_users`.
    pub field: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl ValidationError {
    /// An error of `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        ValidationError {
            field,
            message: message.into(),
        }
    }
}

/// Every rule a draft broke, in field order; never empty.
///
/// Reporting all of them at once saves an operator a round trip per
/// mistake. At most one error is reported per field (the first bad entry of
/// a list), so a list of 10,000 bad ids does not make a huge message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(Vec<ValidationError>);

impl ValidationErrors {
    /// The errors, or `None` when there are none.
    pub fn from_vec(errors: Vec<ValidationError>) -> Option<Self> {
        if errors.is_empty() {
            None
        } else {
            Some(ValidationErrors(errors))
        }
    }

    /// Just one error.
    pub fn single(error: ValidationError) -> Self {
        ValidationErrors(vec![error])
    }

    /// The errors, in field order.
    pub fn errors(&self) -> &[ValidationError] {
        &self.0
    }

    /// The names of the fields that broke a rule, in field order.
    pub fn fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|e| e.field)
    }

    /// Whether `field` broke a rule.
    pub fn has_field(&self, field: &str) -> bool {
        self.fields().any(|f| f == field)
    }

    /// The errors, by value.
    pub fn into_vec(self) -> Vec<ValidationError> {
        self.0
    }
}

impl fmt::Display for ValidationErrors {
    /// `field: message; field: message`, fit for a gRPC status message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl IntoIterator for ValidationErrors {
    type Item = ValidationError;
    type IntoIter = std::vec::IntoIter<ValidationError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The input of an upsert, as the API receives it.
///
/// `None` (or an empty list or string) means "omitted": [`FlagDraft::validate`]
/// fills in the defaults, which match the database column defaults. The
/// write precondition (`expected_version`) is not part of the flag and is
/// handled by the store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlagDraft {
    /// Key of the flag to create or replace.
    pub key: String,
    /// Free text for people; empty when omitted.
    pub description: String,
    /// Whether the flag can be on; false when omitted, so a new flag is
    /// created dark and switched on deliberately.
    pub enabled: Option<bool>,
    /// Type of the values; bool when omitted.
    pub value_type: Option<ValueType>,
    /// Value when on; `true` when omitted for a bool flag, required otherwise.
    pub on_value: Option<Value>,
    /// Value when off; `false` when omitted for a bool flag, required otherwise.
    pub off_value: Option<Value>,
    /// Environments where the flag may be on; empty means every environment.
    pub environments: Vec<String>,
    /// Targeted user ids, at most [`MAX_TARGET_USERS`].
    pub target_users: Vec<String>,
    /// Targeted roles, at most [`MAX_TARGET_ROLES`].
    pub target_roles: Vec<String>,
    /// 0..=100; 100 when omitted. Wider than `u8` so that an out-of-range
    /// request value reaches validation instead of being truncated.
    pub rollout_percentage: Option<u32>,
    /// The v2 parts. `None`: not given, so a write keeps the stored ones (an
    /// old client never wipes what it does not know); `Some` of an empty
    /// [`Targeting`]: none, the flag is of today's model again.
    pub targeting: Option<Targeting>,
    /// Whether client tokens may evaluate the flag. `None`: not given, so a
    /// write keeps the stored mark (off for a new flag).
    pub client_visible: Option<bool>,
    /// Whether the flag is kept off the stale list. `None`: not given, so a
    /// write keeps the stored mark (off for a new flag).
    pub permanent: Option<bool>,
}

impl FlagDraft {
    /// A draft with only the key set: every other field takes its default.
    pub fn new(key: impl Into<String>) -> Self {
        FlagDraft {
            key: key.into(),
            ..FlagDraft::default()
        }
    }

    /// The draft that would store `flag` as it is: used to check rows
    /// written by plain SQL with the same rules as the API.
    pub fn from_flag(flag: &Flag) -> Self {
        FlagDraft {
            key: flag.key.clone(),
            description: flag.description.clone(),
            enabled: Some(flag.enabled),
            value_type: Some(flag.value_type),
            on_value: Some(flag.on_value.clone()),
            off_value: Some(flag.off_value.clone()),
            environments: flag.environments.clone(),
            target_users: flag.target_users.clone(),
            target_roles: flag.target_roles.clone(),
            rollout_percentage: Some(u32::from(flag.rollout_percentage)),
            targeting: Some(flag.targeting.as_deref().cloned().unwrap_or_default()),
            client_visible: Some(flag.client_visible),
            permanent: Some(flag.permanent),
        }
    }

    /// Checks every rule and fills in the defaults.
    ///
    /// # Errors
    ///
    /// Every broken rule, at most one per field, in field order.
    pub fn validate(self) -> Result<ValidFlagDraft, ValidationErrors> {
        let mut errors = Vec::new();

        if !is_valid_key(&self.key) {
            errors.push(ValidationError::new(
                "key",
                format!(
                    "{:?} is not a valid key: expected 1 to {MAX_KEY_LEN} characters of \
                     a-z, 0-9, '_', '.', '-', starting with a-z or 0-9",
                    crate::echo::truncate(&self.key)
                ),
            ));
        }
        if self.description.len() > MAX_DESCRIPTION_BYTES {
            errors.push(ValidationError::new(
                "description",
                format!(
                    "is {} bytes long, at most {MAX_DESCRIPTION_BYTES} are allowed",
                    self.description.len()
                ),
            ));
        } else if self.description.contains('\0') {
            errors.push(nul_error("description"));
        }

        let value_type = self.value_type.unwrap_or_default();
        let on_value = check_value("on_value", value_type, self.on_value, Value::Bool(true));
        let off_value = check_value("off_value", value_type, self.off_value, Value::Bool(false));
        let on_value = on_value.map_err(|e| errors.push(e)).ok();
        let off_value = off_value.map_err(|e| errors.push(e)).ok();

        if let Some((i, env)) = self
            .environments
            .iter()
            .enumerate()
            .find(|(_, env)| !is_valid_environment(env))
        {
            errors.push(ValidationError::new(
                "environments",
                format!(
                    "entry {i} ({:?}) is not a valid environment: expected 1 to \
                     {MAX_ENVIRONMENT_LEN} characters of a-z, 0-9, '_', '-', starting \
                     with a-z or 0-9",
                    crate::echo::truncate(env)
                ),
            ));
        }
        if let Some(error) = check_targets("target_users", &self.target_users, MAX_TARGET_USERS) {
            errors.push(error);
        }
        if let Some(error) = check_targets("target_roles", &self.target_roles, MAX_TARGET_ROLES) {
            errors.push(error);
        }

        let rollout_percentage = match self.rollout_percentage {
            None => Some(DEFAULT_ROLLOUT_PERCENTAGE),
            Some(p) => match u8::try_from(p) {
                Ok(p) if p <= 100 => Some(p),
                _ => {
                    errors.push(ValidationError::new(
                        "rollout_percentage",
                        format!("{p} is out of range: expected 0 to 100"),
                    ));
                    None
                }
            },
        };

        let targeting_given = self.targeting.is_some();
        let targeting = self.targeting.filter(|t| !t.is_legacy());
        let compiled = match &targeting {
            Some(targeting) => match targeting.compile(&self.key, value_type) {
                Ok(compiled) => Some(Arc::new(compiled)),
                Err(problems) => {
                    errors.extend(problems);
                    None
                }
            },
            None => None,
        };

        match (on_value, off_value, rollout_percentage) {
            (Some(on_value), Some(off_value), Some(rollout_percentage)) if errors.is_empty() => {
                Ok(ValidFlagDraft {
                    key: self.key,
                    description: self.description,
                    enabled: self.enabled.unwrap_or(false),
                    value_type,
                    on_value,
                    off_value,
                    environments: self.environments,
                    target_users: self.target_users,
                    target_roles: self.target_roles,
                    rollout_percentage,
                    targeting_given,
                    targeting,
                    compiled,
                    client_visible: self.client_visible,
                    permanent: self.permanent,
                })
            }
            // Every `None` above pushed an error, so `errors` is not empty.
            _ => Err(ValidationErrors(errors)),
        }
    }
}

/// Checks one of the two values against the flag's type, applying the bool
/// default when it is omitted.
fn check_value(
    field: &'static str,
    value_type: ValueType,
    value: Option<Value>,
    bool_default: Value,
) -> Result<Value, ValidationError> {
    match value {
        Some(value) if contains_nul(&value) => Err(nul_error(field)),
        Some(value) if json_len(&value) > MAX_VALUE_BYTES => Err(ValidationError::new(
            field,
            format!(
                "is {} bytes as JSON; the limit is {MAX_VALUE_BYTES}",
                json_len(&value)
            ),
        )),
        Some(value) if value_type.matches(&value) => Ok(value),
        Some(value) => Err(ValidationError::new(
            field,
            format!(
                "expected a {value_type} value for a {value_type} flag, got {}",
                json_type_name(&value)
            ),
        )),
        // Only a bool flag has obvious values to default to; guessing a
        // string or an object would silently ship something nobody chose.
        None if value_type == ValueType::Bool => Ok(bool_default),
        None => Err(ValidationError::new(
            field,
            format!("is required for a {value_type} flag"),
        )),
    }
}

/// The length of `value` written as compact JSON.
pub(super) fn json_len(value: &Value) -> usize {
    serde_json::to_string(value).map_or(usize::MAX, |json| json.len())
}

/// Whether a JSON value holds a NUL character (in a string or an object
/// key): PostgreSQL cannot store one in `jsonb` or `text`.
pub fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The error for a NUL character in `field`.
pub fn nul_error(field: &'static str) -> ValidationError {
    ValidationError::new(
        field,
        "contains a NUL character (U+0000), which cannot be stored",
    )
}

/// Checks a target list's size and entries; the first problem found.
fn check_targets(field: &'static str, targets: &[String], max: usize) -> Option<ValidationError> {
    if targets.len() > max {
        return Some(ValidationError::new(
            field,
            format!("has {} entries, at most {max} are allowed", targets.len()),
        ));
    }
    targets.iter().enumerate().find_map(|(i, target)| {
        if target.is_empty() {
            Some(ValidationError::new(field, format!("entry {i} is empty")))
        } else if target.contains('\0') {
            Some(nul_error(field))
        } else if target.len() > MAX_TARGET_BYTES {
            Some(ValidationError::new(
                field,
                format!(
                    "entry {i} is {} bytes long, at most {MAX_TARGET_BYTES} are allowed",
                    target.len()
                ),
            ))
        } else {
            None
        }
    })
}

/// The JSON type of `value`, for messages.
pub(super) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A draft that passed validation, with every default filled in.
///
/// The fields are private so that the only way to get one is
/// [`FlagDraft::validate`]: holding a `ValidFlagDraft` proves the rules hold.
#[derive(Clone, Debug)]
pub struct ValidFlagDraft {
    key: String,
    description: String,
    enabled: bool,
    value_type: ValueType,
    on_value: Value,
    off_value: Value,
    environments: Vec<String>,
    target_users: Vec<String>,
    target_roles: Vec<String>,
    rollout_percentage: u8,
    /// Whether the draft said what its v2 parts are (else a write keeps
    /// the stored ones).
    targeting_given: bool,
    /// The v2 parts; `None` for today's model.
    targeting: Option<Targeting>,
    /// `targeting`, compiled while checking it.
    compiled: Option<Arc<CompiledTargeting>>,
    /// Whether client tokens may evaluate it; `None`: keep the stored mark.
    client_visible: Option<bool>,
    /// Kept off the stale list; `None`: keep the stored mark.
    permanent: Option<bool>,
}

impl PartialEq for ValidFlagDraft {
    /// Compares what was written; the compiled form follows from it.
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.description == other.description
            && self.enabled == other.enabled
            && self.value_type == other.value_type
            && self.on_value == other.on_value
            && self.off_value == other.off_value
            && self.environments == other.environments
            && self.target_users == other.target_users
            && self.target_roles == other.target_roles
            && self.rollout_percentage == other.rollout_percentage
            && self.targeting_given == other.targeting_given
            && self.targeting == other.targeting
            && self.client_visible == other.client_visible
            && self.permanent == other.permanent
    }
}

impl ValidFlagDraft {
    /// The flag's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The description (empty when omitted).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether the flag can be on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The type of both values.
    pub fn value_type(&self) -> ValueType {
        self.value_type
    }

    /// The value when on.
    pub fn on_value(&self) -> &Value {
        &self.on_value
    }

    /// The value when off.
    pub fn off_value(&self) -> &Value {
        &self.off_value
    }

    /// Environments where the flag may be on; empty means every environment.
    pub fn environments(&self) -> &[String] {
        &self.environments
    }

    /// Targeted user ids.
    pub fn target_users(&self) -> &[String] {
        &self.target_users
    }

    /// Targeted roles.
    pub fn target_roles(&self) -> &[String] {
        &self.target_roles
    }

    /// The rollout, 0..=100.
    pub fn rollout_percentage(&self) -> u8 {
        self.rollout_percentage
    }

    /// Whether the draft said what its v2 parts are; when not, a write
    /// keeps the stored ones (see [`ValidFlagDraft::keeping`]).
    pub fn targeting_given(&self) -> bool {
        self.targeting_given
    }

    /// The v2 parts; `None` for a flag of today's model.
    pub fn targeting(&self) -> Option<&Targeting> {
        self.targeting.as_ref()
    }

    /// Whether client tokens may evaluate the flag; `None` when the draft
    /// did not say (a write keeps the stored mark).
    pub fn client_visible(&self) -> Option<bool> {
        self.client_visible
    }

    /// Whether the flag is kept off the stale list; `None` when the draft
    /// did not say (a write keeps the stored mark).
    pub fn permanent(&self) -> Option<bool> {
        self.permanent
    }

    /// The v2 parts, compiled.
    pub fn compiled_targeting(&self) -> Option<&CompiledTargeting> {
        self.compiled.as_deref()
    }

    /// The v2 parts, compiled, shared (a compiled flag keeps them).
    pub(super) fn shared_compiled_targeting(&self) -> Option<Arc<CompiledTargeting>> {
        self.compiled.clone()
    }

    /// This draft with the stored flag's v2 parts, for a write that did not
    /// say what they are; checked again, since the draft may have changed
    /// what they depend on (the value type).
    ///
    /// # Errors
    ///
    /// What no longer holds, saying the parts were kept from the stored flag.
    pub fn keeping(mut self, stored: Option<Targeting>) -> Result<Self, ValidationErrors> {
        if self.targeting_given {
            return Ok(self);
        }
        self.targeting_given = true;
        let Some(stored) = stored.filter(|t| !t.is_legacy()) else {
            return Ok(self);
        };
        match stored.compile(&self.key, self.value_type) {
            Ok(compiled) => {
                self.targeting = Some(stored);
                self.compiled = Some(Arc::new(compiled));
                Ok(self)
            }
            Err(problems) => Err(ValidationErrors(
                problems
                    .into_iter()
                    .map(|problem| {
                        ValidationError::new(
                            problem.field,
                            format!(
                                "{} (kept from the stored flag, since the request did not set \
                                 targeting; set it too)",
                                problem.message
                            ),
                        )
                    })
                    .collect(),
            )),
        }
    }

    /// The stored flag, with the metadata the store assigns when writing.
    pub fn into_flag(
        self,
        version: i64,
        updated_at: DateTime<Utc>,
        updated_by: impl Into<String>,
    ) -> Flag {
        Flag {
            key: self.key,
            description: self.description,
            enabled: self.enabled,
            value_type: self.value_type,
            on_value: self.on_value,
            off_value: self.off_value,
            environments: self.environments,
            target_users: self.target_users,
            target_roles: self.target_roles,
            rollout_percentage: self.rollout_percentage,
            version,
            updated_at,
            updated_by: updated_by.into(),
            targeting: self.targeting.map(Box::new),
            client_visible: self.client_visible.unwrap_or(false),
            permanent: self.permanent.unwrap_or(false),
            created_at: updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_examples() {
        for ok in [
            "a",
            "0",
            "checkout.v2",
            "dark_mode",
            "a-b",
            &"a".repeat(128),
        ] {
            assert!(is_valid_key(ok), "{ok:?}");
        }
        for bad in [
            "",
            "_a",
            ".a",
            "-a",
            "A",
            "a b",
            "a\n",
            "é",
            "a/b",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn environment_examples() {
        for ok in ["prod", "eu-west_1", "0", &"e".repeat(64)] {
            assert!(is_valid_environment(ok), "{ok:?}");
        }
        for bad in ["", "a.b", "-prod", "Prod", "*", &"e".repeat(65)] {
            assert!(!is_valid_environment(bad), "{bad:?}");
        }
    }

    #[test]
    fn errors_display_as_field_colon_message() {
        let errors = FlagDraft {
            rollout_percentage: Some(101),
            ..FlagDraft::new("")
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            errors.fields().collect::<Vec<_>>(),
            ["key", "rollout_percentage"]
        );
        let text = errors.to_string();
        assert!(text.starts_with("key: "), "{text}");
        assert!(
            text.contains("; rollout_percentage: 101 is out of range"),
            "{text}"
        );
    }

    #[test]
    fn a_draft_becomes_a_flag_with_the_store_metadata() {
        let valid = FlagDraft {
            value_type: Some(ValueType::Number),
            on_value: Some(json!(2)),
            off_value: Some(json!(1)),
            ..FlagDraft::new("n")
        }
        .validate()
        .unwrap();
        let flag = valid.into_flag(3, DateTime::UNIX_EPOCH, "me");
        assert_eq!(flag.key, "n");
        assert_eq!(flag.on_value, json!(2));
        assert_eq!((flag.version, flag.updated_by.as_str()), (3, "me"));
    }

    #[test]
    fn long_bad_input_is_truncated_in_messages() {
        let errors = FlagDraft::new("X".repeat(10_000)).validate().unwrap_err();
        assert!(errors.to_string().len() < 300);
    }

    #[test]
    fn a_nul_character_is_refused_wherever_it_would_reach_the_database() {
        let mut draft = FlagDraft::new("k");
        draft.value_type = Some(ValueType::Object);
        draft.on_value = Some(json!({"a\u{0}": 1}));
        draft.off_value = Some(json!({"b": ["x\u{0}"]}));
        draft.description = "d\u{0}".into();
        draft.target_users = vec!["u\u{0}".into()];
        draft.target_roles = vec!["r\u{0}".into()];
        let errors = draft.validate().unwrap_err();
        for field in [
            "description",
            "on_value",
            "off_value",
            "target_users",
            "target_roles",
        ] {
            assert!(errors.has_field(field), "{field} in {errors}");
        }
    }
}
