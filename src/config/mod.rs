//! Configuration rules: the model, validation of writes, environment
//! resolution and redaction of sensitive values. Pure: no I/O, no async.
//!
//! A read of key K for environment E returns the row (K, E) if there is
//! one, else the row (K, "*"), never another environment's row. A
//! sensitive value is shown only to admin callers; everyone else sees the
//! key with `redacted = true` and no value.

// Rules run inside request handling, where a panic would take a request
// down; tests may unwrap freely.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flags::{
    ValidationError, ValidationErrors, contains_nul, is_valid_environment, is_valid_key, nul_error,
};

/// The environment name of rows that apply to every environment.
pub const ANY_ENVIRONMENT: &str = "*";

/// Largest value accepted, as encoded JSON.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Longest description accepted, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;

/// One configuration row as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigRow {
    /// Key: `^[a-z0-9][a-z0-9_.-]{0,127}$`.
    pub key: String,
    /// An environment name, or `*` for every environment.
    pub environment: String,
    /// Any JSON value.
    pub value: Value,
    /// Free text for people.
    pub description: String,
    /// Whether the value is a secret.
    pub is_sensitive: bool,
    /// Version of the last change to this row.
    pub version: i64,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
    /// Who last changed the row.
    pub updated_by: String,
}

/// Rows by (key, environment); ordered, so a key's rows sit together and a
/// prefix is a range.
pub type ConfigRows = BTreeMap<(String, String), Arc<ConfigRow>>;

/// The row that answers `key` in `environment`: its own, else `*`'s.
pub fn resolve<'a>(
    rows: &'a ConfigRows,
    key: &str,
    environment: &str,
) -> Option<&'a Arc<ConfigRow>> {
    rows.get(&(key.to_owned(), environment.to_owned()))
        .or_else(|| rows.get(&(key.to_owned(), ANY_ENVIRONMENT.to_owned())))
}

/// Maintenance mode of one environment, from the `maintenance_mode` (JSON
/// `true` turns it on) and `maintenance_message` keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Whether maintenance mode is on.
    pub enabled: bool,
    /// The message for users (empty when none is set).
    pub message: String,
    /// The larger version of the two rows (0 when neither exists).
    pub version: i64,
}

/// The maintenance mode of `environment`.
pub fn maintenance(rows: &ConfigRows, environment: &str) -> Maintenance {
    let mode = resolve(rows, "maintenance_mode", environment);
    let message = resolve(rows, "maintenance_message", environment);
    Maintenance {
        enabled: mode.is_some_and(|row| row.value == Value::Bool(true)),
        message: message
            .and_then(|row| row.value.as_str().map(str::to_owned))
            .unwrap_or_default(),
        version: mode
            .map(|row| row.version)
            .max(message.map(|row| row.version))
            .unwrap_or(0),
    }
}

/// The application's version in `environment`: the `app_version` key, a
/// string shown as is, any other JSON value as JSON text; empty when unset.
pub fn app_version(rows: &ConfigRows, environment: &str) -> String {
    match resolve(rows, "app_version", environment).map(|row| &row.value) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(version)) => version.clone(),
        Some(other) => other.to_string(),
    }
}

/// The resolved row of every key starting with `prefix`, ordered by key.
pub fn resolve_all<'a>(
    rows: &'a ConfigRows,
    prefix: &str,
    environment: &str,
) -> Vec<&'a Arc<ConfigRow>> {
    resolve_after(rows, prefix, environment, None).collect()
}

/// The resolved row of every key starting with `prefix` and, when `after`
/// is set, ordered after it, in key order (a page of a listing).
pub fn resolve_after<'a: 'b, 'b>(
    rows: &'a ConfigRows,
    prefix: &'b str,
    environment: &'b str,
    after: Option<&str>,
) -> impl Iterator<Item = &'a Arc<ConfigRow>> + 'b {
    let after = after.filter(|after| *after >= prefix).map(str::to_owned);
    let start = (
        after.clone().unwrap_or_else(|| prefix.to_owned()),
        String::new(),
    );
    let mut previous: Option<&'a str> = None;
    rows.range(start..)
        .map(|((key, _), _)| key.as_str())
        .take_while(move |key| key.starts_with(prefix))
        .filter(move |key| after.as_deref() != Some(*key))
        .filter(move |key| {
            // One answer per key, whatever its number of environments.
            let first = previous != Some(*key);
            previous = Some(key);
            first
        })
        .filter_map(move |key| resolve(rows, key, environment))
}

/// Every row (of every environment) whose key starts with `prefix`, ordered
/// by key then environment, after the row `(key, environment)` of `after`
/// when set (a page of a listing).
pub fn rows_after<'a>(
    rows: &'a ConfigRows,
    prefix: &'a str,
    after: Option<(String, String)>,
) -> impl Iterator<Item = &'a Arc<ConfigRow>> + 'a {
    use std::ops::Bound;
    let start = match after {
        Some(after) if after.0.as_str() >= prefix => Bound::Excluded(after),
        _ => Bound::Included((prefix.to_owned(), String::new())),
    };
    rows.range((start, Bound::Unbounded))
        .take_while(move |((key, _), _)| key.starts_with(prefix))
        .map(|(_, row)| row)
}

/// A row as a caller may see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Visible<'a> {
    /// The row.
    pub row: &'a ConfigRow,
    /// The value, unless withheld.
    pub value: Option<&'a Value>,
    /// Whether the value was withheld.
    pub redacted: bool,
}

/// `row` as seen by a caller: sensitive values only for admins.
pub fn visible(row: &ConfigRow, is_admin: bool) -> Visible<'_> {
    let redacted = row.is_sensitive && !is_admin;
    Visible {
        row,
        value: (!redacted).then_some(&row.value),
        redacted,
    }
}

/// A write of one row, as the API receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigDraft {
    /// Key.
    pub key: String,
    /// Environment; empty means `*`.
    pub environment: String,
    /// The value; required.
    pub value: Option<Value>,
    /// Free text; `None` keeps the row's (a new row gets "").
    pub description: Option<String>,
    /// Whether the value is a secret; `None` keeps the row's (a new row is
    /// not sensitive). `Some(false)` on a sensitive row needs `make_public`.
    pub is_sensitive: Option<bool>,
    /// Confirms that a sensitive row becomes public.
    pub make_public: bool,
}

/// A draft that passed every rule.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidConfigDraft {
    /// Key.
    pub key: String,
    /// Environment name or `*`.
    pub environment: String,
    /// The value.
    pub value: Value,
    /// Free text; `None` keeps the row's.
    pub description: Option<String>,
    /// Whether the value is a secret; `None` keeps the row's. `Some(false)`
    /// with `make_public` unset must not turn a sensitive row public (the
    /// store checks against the row, under the change lock).
    pub is_sensitive: Option<bool>,
    /// The writer confirmed that a sensitive row may become public (then
    /// `is_sensitive` is `Some(false)`).
    pub make_public: bool,
}

/// The environment a request names: empty means `*`.
pub fn environment_of(raw: &str) -> Result<String, ValidationError> {
    match raw {
        "" | ANY_ENVIRONMENT => Ok(ANY_ENVIRONMENT.to_owned()),
        name if is_valid_environment(name) => Ok(name.to_owned()),
        name => Err(ValidationError::new(
            "environment",
            format!(
                "{:?} is not an environment name: lower case letters, digits, '_' and '-', \
                 at most 64, or \"*\" (or empty) for every environment",
                crate::echo::truncate(name)
            ),
        )),
    }
}

/// Checks a key.
pub fn check_key(key: &str) -> Result<(), ValidationError> {
    if is_valid_key(key) {
        Ok(())
    } else {
        Err(ValidationError::new(
            "key",
            format!(
                "{:?} is not a valid key: ^[a-z0-9][a-z0-9_.-]{{0,127}}$",
                crate::echo::truncate(key)
            ),
        ))
    }
}

impl ConfigDraft {
    /// Checks every rule, reporting every broken one.
    pub fn validate(self) -> Result<ValidConfigDraft, ValidationErrors> {
        let mut errors = Vec::new();
        if let Err(err) = check_key(&self.key) {
            errors.push(err);
        }
        let environment = environment_of(&self.environment)
            .map_err(|err| errors.push(err))
            .ok();
        match &self.value {
            None => errors.push(ValidationError::new("value", "is required")),
            Some(value) if contains_nul(value) => errors.push(nul_error("value")),
            Some(value) => {
                let size = serde_json::to_string(value)
                    .map(|s| s.len())
                    .unwrap_or(usize::MAX);
                if size > MAX_VALUE_BYTES {
                    errors.push(ValidationError::new(
                        "value",
                        format!("is {size} bytes as JSON; the limit is {MAX_VALUE_BYTES}"),
                    ));
                }
            }
        }
        if let Some(description) = &self.description {
            if description.len() > MAX_DESCRIPTION_BYTES {
                errors.push(ValidationError::new(
                    "description",
                    format!(
                        "is {} bytes; the limit is {MAX_DESCRIPTION_BYTES}",
                        description.len()
                    ),
                ));
            } else if description.contains('\0') {
                errors.push(nul_error("description"));
            }
        }
        if self.make_public && self.is_sensitive == Some(true) {
            errors.push(ValidationError::new(
                "make_public",
                "contradicts is_sensitive = true; send one or the other",
            ));
        }
        let is_sensitive = if self.make_public {
            Some(false)
        } else {
            self.is_sensitive
        };
        match (ValidationErrors::from_vec(errors), environment, self.value) {
            (None, Some(environment), Some(value)) => Ok(ValidConfigDraft {
                key: self.key,
                environment,
                value,
                description: self.description,
                is_sensitive,
                make_public: self.make_public,
            }),
            (Some(errors), _, _) => Err(errors),
            // A missing part always comes with its error above.
            (None, _, _) => Err(ValidationErrors::single(ValidationError::new(
                "value",
                "is required",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn row(key: &str, environment: &str, value: Value, is_sensitive: bool) -> Arc<ConfigRow> {
        Arc::new(ConfigRow {
            key: key.into(),
            environment: environment.into(),
            value,
            description: String::new(),
            is_sensitive,
            version: 1,
            updated_at: Utc::now(),
            updated_by: "test".into(),
        })
    }

    fn rows(list: &[Arc<ConfigRow>]) -> ConfigRows {
        list.iter()
            .map(|r| ((r.key.clone(), r.environment.clone()), Arc::clone(r)))
            .collect()
    }

    #[test]
    fn the_own_environment_wins_over_every_environment() {
        let rows = rows(&[
            row("a", "*", json!(1), false),
            row("a", "prod", json!(2), false),
            row("b", "*", json!(3), false),
            row("c", "staging", json!(4), false),
        ]);
        assert_eq!(
            resolve(&rows, "a", "prod").map(|r| &r.value),
            Some(&json!(2))
        );
        assert_eq!(
            resolve(&rows, "a", "dev").map(|r| &r.value),
            Some(&json!(1))
        );
        assert_eq!(
            resolve(&rows, "b", "prod").map(|r| &r.value),
            Some(&json!(3))
        );
        assert!(
            resolve(&rows, "c", "prod").is_none(),
            "never another environment's row"
        );
        let keys: Vec<_> = resolve_all(&rows, "", "prod")
            .iter()
            .map(|r| r.key.clone())
            .collect();
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn sensitive_values_are_shown_to_admins_only() {
        let secret = row("db.password", "*", json!("hunter2"), true);
        let plain = visible(&secret, false);
        assert!(plain.redacted && plain.value.is_none());
        let admin = visible(&secret, true);
        assert!(!admin.redacted && admin.value == Some(&json!("hunter2")));
        let open = row("x", "*", json!(1), false);
        assert!(!visible(&open, false).redacted);
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let errors = ConfigDraft {
            key: "Bad Key".into(),
            environment: "Prod".into(),
            value: None,
            description: Some("x".repeat(2000)),
            is_sensitive: None,
            make_public: false,
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            errors.fields().collect::<Vec<_>>(),
            ["key", "environment", "value", "description"]
        );
        let too_big = ConfigDraft {
            key: "k".into(),
            environment: String::new(),
            value: Some(json!("x".repeat(MAX_VALUE_BYTES))),
            description: None,
            is_sensitive: None,
            make_public: false,
        };
        assert!(too_big.validate().unwrap_err().has_field("value"));
    }

    #[test]
    fn make_public_confirms_public_and_contradicts_sensitive() {
        let draft = |is_sensitive, make_public| ConfigDraft {
            key: "k".into(),
            environment: String::new(),
            value: Some(json!(1)),
            description: None,
            is_sensitive,
            make_public,
        };
        assert_eq!(
            draft(None, true).validate().unwrap().is_sensitive,
            Some(false)
        );
        assert_eq!(
            draft(Some(false), true).validate().unwrap().is_sensitive,
            Some(false)
        );
        assert_eq!(draft(None, false).validate().unwrap().is_sensitive, None);
        assert!(
            draft(Some(true), true)
                .validate()
                .unwrap_err()
                .has_field("make_public")
        );
    }

    #[test]
    fn an_empty_environment_means_every_environment() {
        assert_eq!(environment_of("").unwrap(), "*");
        assert_eq!(environment_of("*").unwrap(), "*");
        assert_eq!(environment_of("prod").unwrap(), "prod");
        assert!(environment_of("PROD").is_err());
    }

    fn environments() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            Just("dev".to_owned()),
            Just("prod".to_owned()),
            Just("qa".to_owned())
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Property 5: every read is the resolution rule's answer, and never
        /// a row of another environment.
        #[test]
        fn reads_follow_the_resolution_rule(
            list in prop::collection::vec(("[a-d]", environments(), any::<i32>()), 0..16),
            environment in prop_oneof![Just("dev".to_owned()), Just("prod".to_owned()), Just("qa".to_owned())],
        ) {
            let rows = rows(&list.iter().map(|(k, e, v)| row(k, e, json!(v), false)).collect::<Vec<_>>());
            for key in ["a", "b", "c", "d"] {
                let own = list.iter().rev().find(|(k, e, _)| k == key && *e == environment);
                let any = list.iter().rev().find(|(k, e, _)| k == key && e == "*");
                let expected = own.or(any).map(|(_, e, v)| (e.clone(), json!(v)));
                let got = resolve(&rows, key, &environment).map(|r| (r.environment.clone(), r.value.clone()));
                prop_assert_eq!(&got, &expected);
                if let Some((env, _)) = got {
                    prop_assert!(env == environment || env == "*");
                }
            }
            let all: Vec<_> = resolve_all(&rows, "", &environment).iter().map(|r| r.key.clone()).collect();
            let mut expected_keys: Vec<String> = list
                .iter()
                .filter(|(_, e, _)| *e == environment || e == "*")
                .map(|(k, _, _)| k.clone())
                .collect();
            expected_keys.sort();
            expected_keys.dedup();
            prop_assert_eq!(all, expected_keys);
        }

        /// Property 6 (pure part): a non-admin view never holds a sensitive value.
        #[test]
        fn non_admin_views_never_hold_sensitive_values(value in "\\PC{1,32}", sensitive in any::<bool>()) {
            let r = row("k", "*", json!(value), sensitive);
            let seen = visible(&r, false);
            prop_assert_eq!(seen.redacted, sensitive);
            prop_assert_eq!(seen.value.is_none(), sensitive);
        }

        /// Validation accepts exactly the valid keys and environments.
        #[test]
        fn validation_matches_the_key_and_environment_rules(key in "\\PC{0,10}|[a-z0-9_.-]{1,10}", env in "\\PC{0,6}|[a-z0-9_-]{1,6}|\\*") {
            let result = ConfigDraft {
                key: key.clone(),
                environment: env.clone(),
                value: Some(json!(1)),
                description: None,
                is_sensitive: None,
                make_public: false,
            }
            .validate();
            let key_ok = is_valid_key(&key);
            let env_ok = env.is_empty() || env == "*" || is_valid_environment(&env);
            prop_assert_eq!(result.is_ok(), key_ok && env_ok);
        }
    }
}
