//! Deployment history rules: the model of a `deployment_history` row, the
//! validation of RecordDeployment, RecordRollback and ListDeployments input,
//! and the choice of what a rollback may return to. Pure: no I/O, no async.
//!
//! The store runs these rules inside its transaction (so the answer is
//! about the rows as they are under the change lock); the API runs the
//! input rules before anything reaches the database, so bad input changes
//! nothing and is refused with a message naming the field.

// Rules run inside request handling, where a panic would take a request
// down; tests may unwrap freely.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::echo::truncate;
use crate::flags::{ValidationError, ValidationErrors, is_valid_environment, nul_error};

/// Longest version string, in bytes (all its bytes are ASCII).
pub const MAX_VERSION_LEN: usize = 64;
/// Longest `deployed_by` or rollback `actor`, in characters.
pub const MAX_ACTOR_CHARS: usize = 128;
/// Shortest commit hash accepted (git's shortest abbreviation).
pub const MIN_COMMIT_SHA_LEN: usize = 7;
/// Longest commit hash accepted (a full SHA-1).
pub const MAX_COMMIT_SHA_LEN: usize = 40;
/// Longest notes (or rollback reason), in bytes of UTF-8.
pub const MAX_NOTES_BYTES: usize = 4 * 1024;
/// ListDeployments page size when the request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest ListDeployments page.
pub const MAX_PAGE_SIZE: u32 = 500;

/// The state of a deployment, as stored in `deployment_history.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Announced, not started.
    Pending,
    /// Under way.
    InProgress,
    /// Finished well; the newest such row of an environment is its current
    /// deployment.
    Success,
    /// Finished badly.
    Failed,
    /// Replaced by a rollback. Only a rollback sets it, never a writer.
    RolledBack,
}

impl DeploymentStatus {
    /// Every status, in the order of the proto enum.
    pub const ALL: [DeploymentStatus; 5] = [
        DeploymentStatus::Pending,
        DeploymentStatus::InProgress,
        DeploymentStatus::Success,
        DeploymentStatus::Failed,
        DeploymentStatus::RolledBack,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Pending => "pending",
            DeploymentStatus::InProgress => "in_progress",
            DeploymentStatus::Success => "success",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::RolledBack => "rolled_back",
        }
    }

    /// The status stored as `name`; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the deployment has finished, so it gets a `completed_at`.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Success | DeploymentStatus::Failed | DeploymentStatus::RolledBack
        )
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a row is a deployment or a rollback (`deployment_history.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// A new version.
    Deploy,
    /// A return to an earlier version.
    Rollback,
}

impl DeploymentKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Deploy => "deploy",
            DeploymentKind::Rollback => "rollback",
        }
    }

    /// The kind stored as `name`; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "deploy" => Some(DeploymentKind::Deploy),
            "rollback" => Some(DeploymentKind::Rollback),
            _ => None,
        }
    }
}

/// One `deployment_history` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Row id; grows with every row, in the order rows were recorded.
    pub id: i64,
    /// The version deployed.
    pub version: String,
    /// The environment deployed to.
    pub environment: String,
    /// Its state.
    pub status: DeploymentStatus,
    /// Deployment or rollback.
    pub kind: DeploymentKind,
    /// Who deployed (or rolled back).
    pub deployed_by: String,
    /// The commit deployed, if known.
    pub commit_sha: Option<String>,
    /// Free text.
    pub notes: Option<String>,
    /// The version that was current before this row.
    pub previous_version: Option<String>,
    /// For a rollback: the row whose version it restored.
    pub rollback_of: Option<i64>,
    /// When the row was recorded.
    pub deployed_at: DateTime<Utc>,
    /// When the deployment finished, if it has.
    pub completed_at: Option<DateTime<Utc>>,
}

/// Whether `version` is a valid deployment version:
/// `^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$` (semver, with build metadata, fits).
///
/// Over bytes rather than a regex, like the key checks: exact, and any
/// non-ASCII byte fails it, so bytes and characters count the same.
pub fn is_valid_version(version: &str) -> bool {
    match version.as_bytes().split_first() {
        Some((&first, rest)) => {
            version.len() <= MAX_VERSION_LEN
                && first.is_ascii_alphanumeric()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
        }
        None => false,
    }
}

/// Whether `sha` is a commit hash: 7 to 40 hexadecimal digits, either case.
pub fn is_valid_commit_sha(sha: &str) -> bool {
    (MIN_COMMIT_SHA_LEN..=MAX_COMMIT_SHA_LEN).contains(&sha.len())
        && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `actor` may name who deployed or rolled back: 1 to 128
/// characters, none of them a control character, not only white space.
///
/// The name goes into the audit trail and logs, where a line break or an
/// escape sequence could forge or hide entries.
pub fn is_valid_actor(actor: &str) -> bool {
    !actor.trim().is_empty()
        && actor.chars().count() <= MAX_ACTOR_CHARS
        && !actor.chars().any(char::is_control)
}

/// Checks free text (`notes`, a rollback `reason`): at most 4 KiB, no NUL
/// (PostgreSQL cannot store one in `text`).
pub fn check_notes(field: &'static str, notes: &str) -> Result<(), ValidationError> {
    if notes.len() > MAX_NOTES_BYTES {
        Err(ValidationError::new(
            field,
            format!(
                "is {} bytes long, at most {MAX_NOTES_BYTES} are allowed",
                notes.len()
            ),
        ))
    } else if notes.contains('\0') {
        Err(nul_error(field))
    } else {
        Ok(())
    }
}

/// Checks an environment a deployment names: a real environment, never
/// `*` or empty (a deployment happens somewhere).
pub fn check_environment(field: &'static str, environment: &str) -> Result<(), ValidationError> {
    if is_valid_environment(environment) {
        Ok(())
    } else if environment.is_empty() {
        Err(ValidationError::new(field, "is required"))
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "{:?} is not an environment name: ^[a-z0-9][a-z0-9_-]{{0,63}}$",
                truncate(environment)
            ),
        ))
    }
}

fn check_actor(field: &'static str, actor: &str) -> Result<(), ValidationError> {
    if actor.is_empty() {
        Err(ValidationError::new(field, "is required"))
    } else if is_valid_actor(actor) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("must be 1 to {MAX_ACTOR_CHARS} printable characters, not only white space"),
        ))
    }
}

/// RecordDeployment's input, as the API receives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentDraft {
    /// The version deployed.
    pub version: String,
    /// The environment deployed to.
    pub environment: String,
    /// Who deployed.
    pub deployed_by: String,
    /// The commit, or empty.
    pub commit_sha: String,
    /// Free text, or empty.
    pub notes: String,
    /// The state; `None` (unspecified) means success.
    pub status: Option<DeploymentStatus>,
}

/// A deployment that passed validation, ready to be recorded.
///
/// The fields are private so that the only way to get one is
/// [`DeploymentDraft::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidDeployment {
    version: String,
    environment: String,
    deployed_by: String,
    commit_sha: Option<String>,
    notes: Option<String>,
    status: DeploymentStatus,
}

impl DeploymentDraft {
    /// Checks every rule, reporting every broken one (in field order).
    pub fn validate(self) -> Result<ValidDeployment, ValidationErrors> {
        let mut errors = Vec::new();
        if self.version.is_empty() {
            errors.push(ValidationError::new("version", "is required"));
        } else if !is_valid_version(&self.version) {
            errors.push(ValidationError::new(
                "version",
                format!(
                    "{:?} is not a version: ^[A-Za-z0-9][A-Za-z0-9._+-]{{0,63}}$",
                    truncate(&self.version)
                ),
            ));
        }
        if let Err(err) = check_environment("environment", &self.environment) {
            errors.push(err);
        }
        if let Err(err) = check_actor("deployed_by", &self.deployed_by) {
            errors.push(err);
        }
        if !self.commit_sha.is_empty() && !is_valid_commit_sha(&self.commit_sha) {
            errors.push(ValidationError::new(
                "commit_sha",
                format!("must be {MIN_COMMIT_SHA_LEN} to {MAX_COMMIT_SHA_LEN} hexadecimal digits"),
            ));
        }
        if let Err(err) = check_notes("notes", &self.notes) {
            errors.push(err);
        }
        let status = match self.status {
            None => DeploymentStatus::Success,
            // Only a rollback marks a deployment rolled back: a writer
            // claiming it would leave a row no rollback row explains.
            Some(DeploymentStatus::RolledBack) => {
                errors.push(ValidationError::new(
                    "status",
                    "rolled_back is set by RecordRollback, not on write",
                ));
                DeploymentStatus::RolledBack
            }
            Some(status) => status,
        };
        if let Some(errors) = ValidationErrors::from_vec(errors) {
            return Err(errors);
        }
        Ok(ValidDeployment {
            version: self.version,
            environment: self.environment,
            deployed_by: self.deployed_by,
            // Git prints hashes in lower case; one spelling per commit
            // keeps the history searchable.
            commit_sha: Some(self.commit_sha.to_ascii_lowercase()).filter(|s| !s.is_empty()),
            notes: Some(self.notes).filter(|n| !n.is_empty()),
            status,
        })
    }
}

impl ValidDeployment {
    /// The version deployed.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The environment deployed to.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// Who deployed.
    pub fn deployed_by(&self) -> &str {
        &self.deployed_by
    }

    /// The commit (lower case), if given.
    pub fn commit_sha(&self) -> Option<&str> {
        self.commit_sha.as_deref()
    }

    /// The notes, if given.
    pub fn notes(&self) -> Option<&str> {
        self.notes.as_deref()
    }

    /// The state; never [`DeploymentStatus::RolledBack`].
    pub fn status(&self) -> DeploymentStatus {
        self.status
    }

    /// Whether recording it makes it the environment's current deployment
    /// (and so sets its `app_version`).
    pub fn becomes_current(&self) -> bool {
        self.status == DeploymentStatus::Success
    }
}

/// RecordRollback's input, as the API receives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollbackDraft {
    /// The environment to roll back.
    pub environment: String,
    /// The row to return to; `None` for the default.
    pub target_deployment_id: Option<i64>,
    /// Why, or empty.
    pub reason: String,
    /// Who rolls back.
    pub actor: String,
}

/// A rollback that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidRollback {
    environment: String,
    target_deployment_id: Option<i64>,
    reason: Option<String>,
    actor: String,
}

impl RollbackDraft {
    /// Checks every rule, reporting every broken one (in field order).
    pub fn validate(self) -> Result<ValidRollback, ValidationErrors> {
        let mut errors = Vec::new();
        if let Err(err) = check_environment("environment", &self.environment) {
            errors.push(err);
        }
        if let Some(id) = self.target_deployment_id.filter(|id| *id <= 0) {
            errors.push(ValidationError::new(
                "target_deployment_id",
                format!("{id} is not a deployment id (ids are positive)"),
            ));
        }
        if let Err(err) = check_notes("reason", &self.reason) {
            errors.push(err);
        }
        if let Err(err) = check_actor("actor", &self.actor) {
            errors.push(err);
        }
        if let Some(errors) = ValidationErrors::from_vec(errors) {
            return Err(errors);
        }
        Ok(ValidRollback {
            environment: self.environment,
            target_deployment_id: self.target_deployment_id,
            reason: Some(self.reason).filter(|r| !r.is_empty()),
            actor: self.actor,
        })
    }
}

impl ValidRollback {
    /// The environment to roll back.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// The row asked for, if any.
    pub fn target_deployment_id(&self) -> Option<i64> {
        self.target_deployment_id
    }

    /// Why, if given.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Who rolls back.
    pub fn actor(&self) -> &str {
        &self.actor
    }
}

/// Why a rollback cannot happen. Valid input, but the history does not
/// allow it: the API answers FAILED_PRECONDITION and nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RollbackRefused {
    /// The environment has no successful deployment.
    #[error("environment {0:?} has no current deployment to roll back")]
    NoCurrent(String),
    /// No earlier successful deployment with another version exists.
    #[error(
        "environment {environment:?} has nothing to roll back to: no successful deployment of a \
         version other than {version:?} before deployment {before}"
    )]
    NoEarlier {
        /// The environment.
        environment: String,
        /// Where the search started ([`rollback_anchor`]).
        before: i64,
        /// The current deployment's version.
        version: String,
    },
    /// The requested target does not exist.
    #[error("deployment {0} does not exist")]
    UnknownTarget(i64),
    /// The requested target is not an earlier deployment of the environment
    /// that ran.
    #[error("deployment {id} cannot be rolled back to: {why}")]
    BadTarget {
        /// The requested id.
        id: i64,
        /// What is wrong with it.
        why: String,
    },
}

/// Whether `target` may be returned to from `current` (the environment's
/// current deployment), when the caller names it explicitly.
///
/// It must be an earlier row (smaller id) of the same environment whose
/// version actually ran there: status success, or rolled back (an operator
/// may undo a rollback by returning to the version it replaced). Pending,
/// in-progress and failed deployments never ran, so there is nothing to
/// return to.
pub fn check_target(current: &Deployment, target: &Deployment) -> Result<(), RollbackRefused> {
    let refuse = |why: String| Err(RollbackRefused::BadTarget { id: target.id, why });
    if target.environment != current.environment {
        return refuse(format!(
            "it belongs to environment {:?}, not {:?}",
            target.environment, current.environment
        ));
    }
    if target.id >= current.id {
        return refuse(format!(
            "it is not earlier than the current deployment (id {})",
            current.id
        ));
    }
    match target.status {
        DeploymentStatus::Success | DeploymentStatus::RolledBack => Ok(()),
        other => refuse(format!("its status is {other}; it never ran")),
    }
}

/// The default target of a rollback from `current`, among `rows` (any
/// order, any environment): the newest successful row of the environment
/// that is older than [`rollback_anchor`] and has another version.
///
/// Together the two rules make repeated rollbacks walk back through history
/// and stop at its start: after v1, v2, v3, a rollback returns to v2 (row
/// 2), the next one, counting from row 2, to v1, and the next one finds
/// nothing and is refused. Counting from the rollback row itself would pick
/// row 2 (still a success) again and again, and a row of the current
/// version would "roll back" to what already runs. The store asks
/// PostgreSQL for the same row with one query; this is the rule it
/// implements, stated once and tested.
pub fn default_target<'a>(
    current: &Deployment,
    rows: impl IntoIterator<Item = &'a Deployment>,
) -> Option<&'a Deployment> {
    let anchor = rollback_anchor(current);
    rows.into_iter()
        .filter(|row| {
            row.environment == current.environment
                && row.id < anchor
                && row.status == DeploymentStatus::Success
                && row.version != current.version
        })
        .max_by_key(|row| row.id)
}

/// Where in history the current deployment stands: its own id, or for a
/// rollback the id of the row it restored (what runs came from there).
pub fn rollback_anchor(current: &Deployment) -> i64 {
    match (current.kind, current.rollback_of) {
        (DeploymentKind::Rollback, Some(restored)) => restored.min(current.id),
        _ => current.id,
    }
}

/// The page size of a ListDeployments request (see [`crate::paging`]).
pub fn page_size(requested: u32) -> Result<u32, ValidationError> {
    crate::paging::page_size(
        requested,
        crate::paging::PageLimits {
            default: DEFAULT_PAGE_SIZE,
            max: MAX_PAGE_SIZE,
        },
    )
}

/// The row id a ListDeployments page token stands for (see [`crate::paging`]).
pub fn page_token(token: &str) -> Result<Option<i64>, ValidationError> {
    crate::paging::page_token(token, "ListDeployments")
}

/// The environment filter of ListDeployments: empty means every
/// environment.
pub fn environment_filter(environment: &str) -> Result<Option<&str>, ValidationError> {
    if environment.is_empty() {
        Ok(None)
    } else {
        check_environment("environment", environment).map(|()| Some(environment))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, version: &str, status: DeploymentStatus) -> Deployment {
        Deployment {
            id,
            version: version.into(),
            environment: "prod".into(),
            status,
            kind: DeploymentKind::Deploy,
            deployed_by: "ci".into(),
            commit_sha: None,
            notes: None,
            previous_version: None,
            rollback_of: None,
            deployed_at: Utc::now(),
            completed_at: None,
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in DeploymentStatus::ALL {
            assert_eq!(DeploymentStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(DeploymentStatus::parse("done"), None);
        for kind in [DeploymentKind::Deploy, DeploymentKind::Rollback] {
            assert_eq!(DeploymentKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn a_draft_defaults_to_success_and_drops_empty_optionals() {
        let valid = DeploymentDraft {
            version: "1.2.3+build.4".into(),
            environment: "prod".into(),
            deployed_by: "ci bot".into(),
            commit_sha: "ABCDEF1".into(),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(valid.status(), DeploymentStatus::Success);
        assert!(valid.becomes_current());
        assert_eq!(valid.commit_sha(), Some("abcdef1"));
        assert_eq!(valid.notes(), None);
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let errors = DeploymentDraft {
            version: "-1".into(),
            environment: "*".into(),
            deployed_by: " ".into(),
            commit_sha: "xyz".into(),
            notes: "a\0b".into(),
            status: Some(DeploymentStatus::RolledBack),
        }
        .validate()
        .unwrap_err();
        let fields: Vec<_> = errors.fields().collect();
        assert_eq!(
            fields,
            [
                "version",
                "environment",
                "deployed_by",
                "commit_sha",
                "notes",
                "status"
            ]
        );
    }

    #[test]
    fn repeated_rollbacks_walk_back_through_versions() {
        let rollback = |id, version, status, of| Deployment {
            kind: DeploymentKind::Rollback,
            rollback_of: Some(of),
            ..row(id, version, status)
        };
        let v1 = row(1, "v1", DeploymentStatus::Success);
        let v2 = row(2, "v2", DeploymentStatus::Success);
        let v3 = row(3, "v3", DeploymentStatus::Success);
        let rows = [v1.clone(), v2.clone(), v3.clone()];
        assert_eq!(default_target(&v3, &rows), Some(&v2));
        let v3 = row(3, "v3", DeploymentStatus::RolledBack);
        let to_v2 = rollback(4, "v2", DeploymentStatus::Success, 2);
        let rows = [v1.clone(), v2.clone(), v3.clone(), to_v2.clone()];
        assert_eq!(default_target(&to_v2, &rows), Some(&v1));
        let to_v2 = rollback(4, "v2", DeploymentStatus::RolledBack, 2);
        let to_v1 = rollback(5, "v1", DeploymentStatus::Success, 1);
        let rows = [v1.clone(), v2.clone(), v3, to_v2, to_v1.clone()];
        assert_eq!(default_target(&to_v1, &rows), None, "history starts at v1");
        assert_eq!(default_target(&v1, &rows), None);
        // A redeploy of the running version is not something to return to.
        let again = row(6, "v1", DeploymentStatus::Success);
        assert_eq!(default_target(&again, [&v1]), None);
    }

    #[test]
    fn explicit_targets_must_be_earlier_rows_that_ran() {
        let current = row(5, "v5", DeploymentStatus::Success);
        assert!(check_target(&current, &row(4, "v4", DeploymentStatus::RolledBack)).is_ok());
        assert!(check_target(&current, &row(3, "v3", DeploymentStatus::Success)).is_ok());
        assert!(check_target(&current, &row(2, "v2", DeploymentStatus::Failed)).is_err());
        assert!(check_target(&current, &row(5, "v5", DeploymentStatus::Success)).is_err());
        assert!(check_target(&current, &row(6, "v6", DeploymentStatus::Success)).is_err());
        let mut elsewhere = row(1, "v1", DeploymentStatus::Success);
        elsewhere.environment = "staging".into();
        assert!(check_target(&current, &elsewhere).is_err());
    }

    #[test]
    fn page_tokens_are_canonical_positive_decimals() {
        assert_eq!(page_token(""), Ok(None));
        assert_eq!(page_token("42"), Ok(Some(42)));
        for bad in [
            "0",
            "-1",
            "+1",
            "042",
            " 1",
            "1 ",
            "x",
            "99999999999999999999",
        ] {
            assert!(page_token(bad).is_err(), "{bad:?}");
        }
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(MAX_PAGE_SIZE), Ok(MAX_PAGE_SIZE));
        assert!(page_size(MAX_PAGE_SIZE + 1).is_err());
    }

    /// Reference rules, written differently from the module's on purpose
    /// (character sets spelled out, counted in characters) so a shared
    /// mistake is unlikely.
    mod reference {
        const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        const LOWER: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
        const HEX: &str = "0123456789abcdefABCDEF";

        pub fn version(s: &str) -> bool {
            let chars: Vec<char> = s.chars().collect();
            (1..=64).contains(&chars.len())
                && ALNUM.contains(chars[0])
                && chars[1..]
                    .iter()
                    .all(|c| ALNUM.contains(*c) || "._+-".contains(*c))
        }

        pub fn environment(s: &str) -> bool {
            let chars: Vec<char> = s.chars().collect();
            (1..=64).contains(&chars.len())
                && LOWER.contains(chars[0])
                && chars[1..]
                    .iter()
                    .all(|c| LOWER.contains(*c) || "_-".contains(*c))
        }

        pub fn commit_sha(s: &str) -> bool {
            let n = s.chars().count();
            (7..=40).contains(&n) && s.chars().all(|c| HEX.contains(c))
        }

        pub fn actor(s: &str) -> bool {
            let n = s.chars().count();
            (1..=128).contains(&n)
                && s.chars().any(|c| !c.is_whitespace())
                && s.chars().all(|c| !c.is_control())
        }

        pub fn notes(s: &str) -> bool {
            s.len() <= 4096 && !s.contains('\u{0}')
        }
    }

    use proptest::prelude::*;

    /// Strings near the edges of every rule: valid characters mixed with
    /// characters each rule refuses, at lengths around each limit.
    fn near_miss(alphabet: &'static str, max_len: usize) -> impl Strategy<Value = String> {
        let chars: Vec<char> = alphabet.chars().collect();
        prop::collection::vec(prop::sample::select(chars), 0..=max_len)
            .prop_map(|chars| chars.into_iter().collect())
    }

    /// Valid characters of every rule plus their usual neighbours.
    const MIXED: &str = "aZ09._+-fF \t\n\0/:*é\u{7f}\u{85}\u{2028}";

    fn any_text(max_len: usize) -> impl Strategy<Value = String> {
        prop_oneof![
            near_miss(MIXED, max_len),
            near_miss("abcdef0123456789ABCDEF", max_len),
            "[A-Za-z0-9][A-Za-z0-9._+-]{0,70}",
            "[a-z0-9][a-z0-9_-]{0,70}",
            "\\PC{0,140}",
            any::<String>(),
        ]
    }

    fn any_status() -> impl Strategy<Value = Option<DeploymentStatus>> {
        prop::option::of(prop::sample::select(DeploymentStatus::ALL.to_vec()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        #[test]
        fn the_version_rule_matches_the_reference(s in any_text(70)) {
            prop_assert_eq!(is_valid_version(&s), reference::version(&s));
        }

        #[test]
        fn the_environment_rule_matches_the_reference(s in any_text(70)) {
            prop_assert_eq!(check_environment("environment", &s).is_ok(), reference::environment(&s));
            prop_assert_eq!(
                environment_filter(&s).is_ok(),
                s.is_empty() || reference::environment(&s)
            );
        }

        #[test]
        fn the_commit_rule_matches_the_reference(s in any_text(44)) {
            prop_assert_eq!(is_valid_commit_sha(&s), reference::commit_sha(&s));
        }

        #[test]
        fn the_actor_rule_matches_the_reference(s in any_text(140)) {
            prop_assert_eq!(is_valid_actor(&s), reference::actor(&s));
        }

        #[test]
        fn the_notes_rule_matches_the_reference(
            s in prop_oneof![any_text(64), "[a\u{0}é]{4090,4100}".prop_map(String::from)]
        ) {
            prop_assert_eq!(check_notes("notes", &s).is_ok(), reference::notes(&s));
        }

        /// A draft is accepted exactly when every field passes its rule, and
        /// the refusal names exactly the fields that broke one.
        #[test]
        fn a_deployment_draft_is_judged_field_by_field(
            version in any_text(70),
            environment in any_text(70),
            deployed_by in any_text(140),
            commit_sha in prop_oneof![Just(String::new()), any_text(44)],
            notes in any_text(64),
            status in any_status(),
        ) {
            let draft = DeploymentDraft {
                version: version.clone(),
                environment: environment.clone(),
                deployed_by: deployed_by.clone(),
                commit_sha: commit_sha.clone(),
                notes: notes.clone(),
                status,
            };
            let mut expected = Vec::new();
            if !reference::version(&version) { expected.push("version"); }
            if !reference::environment(&environment) { expected.push("environment"); }
            if !reference::actor(&deployed_by) { expected.push("deployed_by"); }
            if !commit_sha.is_empty() && !reference::commit_sha(&commit_sha) {
                expected.push("commit_sha");
            }
            if !reference::notes(&notes) { expected.push("notes"); }
            if status == Some(DeploymentStatus::RolledBack) { expected.push("status"); }
            match draft.validate() {
                Ok(valid) => {
                    prop_assert!(expected.is_empty(), "accepted, but {:?} are bad", expected);
                    prop_assert_eq!(valid.version(), version.as_str());
                    prop_assert_eq!(valid.environment(), environment.as_str());
                    prop_assert_eq!(valid.deployed_by(), deployed_by.as_str());
                    let sha = commit_sha.to_ascii_lowercase();
                    prop_assert_eq!(valid.commit_sha(), Some(sha.as_str()).filter(|s| !s.is_empty()));
                    prop_assert_eq!(valid.notes(), Some(notes.as_str()).filter(|n| !n.is_empty()));
                    prop_assert_eq!(valid.status(), status.unwrap_or(DeploymentStatus::Success));
                    prop_assert_ne!(valid.status(), DeploymentStatus::RolledBack);
                }
                Err(errors) => {
                    let fields: Vec<_> = errors.fields().collect();
                    prop_assert_eq!(fields, expected);
                }
            }
        }

        #[test]
        fn a_rollback_draft_is_judged_field_by_field(
            environment in any_text(70),
            target in prop::option::of(prop_oneof![Just(0i64), Just(-1i64), any::<i64>(), 1..100i64]),
            reason in prop_oneof![any_text(64), "[a\u{0}]{4095,4097}".prop_map(String::from)],
            actor in any_text(140),
        ) {
            let draft = RollbackDraft {
                environment: environment.clone(),
                target_deployment_id: target,
                reason: reason.clone(),
                actor: actor.clone(),
            };
            let mut expected = Vec::new();
            if !reference::environment(&environment) { expected.push("environment"); }
            if target.is_some_and(|id| id < 1) { expected.push("target_deployment_id"); }
            if !reference::notes(&reason) { expected.push("reason"); }
            if !reference::actor(&actor) { expected.push("actor"); }
            match draft.validate() {
                Ok(valid) => {
                    prop_assert!(expected.is_empty(), "accepted, but {:?} are bad", expected);
                    prop_assert_eq!(valid.environment(), environment.as_str());
                    prop_assert_eq!(valid.target_deployment_id(), target);
                    prop_assert_eq!(valid.reason(), Some(reason.as_str()).filter(|r| !r.is_empty()));
                    prop_assert_eq!(valid.actor(), actor.as_str());
                }
                Err(errors) => {
                    let fields: Vec<_> = errors.fields().collect();
                    prop_assert_eq!(fields, expected);
                }
            }
        }

        /// Tokens: exactly the canonical decimal spelling of a positive id.
        #[test]
        fn page_tokens_match_the_reference(
            token in prop_oneof![
                (1..i64::MAX).prop_map(|id| id.to_string()),
                "[-+0-9 ]{0,21}",
                any_text(24),
            ]
        ) {
            let expected = match token.parse::<i64>() {
                Ok(id) if id > 0 && id.to_string() == token => Ok(Some(id)),
                _ if token.is_empty() => Ok(None),
                _ => Err(()),
            };
            prop_assert_eq!(page_token(&token).map_err(|_| ()), expected);
        }

        #[test]
        fn page_sizes_match_the_reference(n in prop_oneof![0..=600u32, any::<u32>()]) {
            let expected = if n == 0 { Ok(50) } else if n <= 500 { Ok(n) } else { Err(()) };
            prop_assert_eq!(page_size(n).map_err(|_| ()), expected);
        }

        /// The default target, by a brute-force reference over random
        /// histories with rollback rows.
        #[test]
        fn the_default_target_matches_the_reference(
            history in prop::collection::vec(
                (prop::sample::select(vec!["v1", "v2", "v3"]),
                 prop::sample::select(DeploymentStatus::ALL.to_vec()),
                 prop::bool::weighted(0.8),
                 prop::option::weighted(0.3, any::<prop::sample::Index>())),
                1..12,
            ),
            pick in any::<prop::sample::Index>(),
        ) {
            let rows: Vec<Deployment> = history
                .iter()
                .enumerate()
                .map(|(i, (version, status, here, restored))| {
                    let id = i as i64 + 1;
                    let mut r = row(id, version, *status);
                    if !here { r.environment = "staging".into(); }
                    // A rollback restores some earlier row.
                    if let Some(restored) = restored.filter(|_| i > 0) {
                        r.kind = DeploymentKind::Rollback;
                        r.rollback_of = Some(restored.index(i) as i64 + 1);
                    }
                    r
                })
                .collect();
            let current = pick.get(&rows);
            let start = if current.kind == DeploymentKind::Rollback {
                current.rollback_of.unwrap()
            } else {
                current.id
            };
            let mut expected = None;
            for candidate in &rows {
                if candidate.id < start
                    && candidate.environment == current.environment
                    && candidate.status == DeploymentStatus::Success
                    && candidate.version != current.version
                {
                    expected = Some(candidate);
                }
            }
            prop_assert_eq!(default_target(current, &rows), expected);
            if let Some(target) = expected {
                prop_assert!(check_target(current, target).is_ok());
            }
        }
    }
}
