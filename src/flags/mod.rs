//! Feature flags: the pure model, validation and evaluation engine.
//!
//! Nothing here does I/O or knows about gRPC, SQL or async: the store loads
//! [`Flag`]s, compiles each into a [`CompiledFlag`] once per change, and the
//! service answers requests with [`evaluate`]. Keeping the rules pure makes
//! them cheap to test exhaustively (see `tests/flags_engine.rs`) and cheap to
//! run on every request.
//!
//! - `model`: the data types ([`Flag`], [`EvaluationContext`], [`Evaluation`]);
//! - `validate`: upsert input ([`FlagDraft`]) and its rules;
//! - `evaluate`: [`CompiledFlag`] and the priority list of [`evaluate`];
//! - `bucket`: the Unleash-compatible rollout [`bucket`];
//! - `constraint`: targeting constraints ([`Constraint`]), checked and
//!   compiled once, evaluated without parsing;
//! - `split`: the Unleash-compatible weighted split ([`split::choose`]);
//! - `rules`: targeting rules and serves of flag model v2;
//! - `targeting`: a flag's v2 parts ([`Targeting`]: variants, off variant,
//!   rules, default serve, prerequisites), checked and compiled;
//! - `explain`: the path an evaluation took ([`Step`]), for `explain`;
//! - `segment`: named constraint sets that rules share, checked and compiled.

// Evaluation runs inside request handling, where a panic would take a
// request (or a task) down; tests may unwrap freely.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod bucket;
pub mod constraint;
mod evaluate;
pub mod explain;
mod model;
pub mod rules;
pub mod segment;
pub mod split;
pub mod targeting;
mod validate;

pub use bucket::bucket;
pub use constraint::{CompiledConstraint, Constraint, ConstraintError, Operator, Surroundings};
pub use evaluate::{CompiledFlag, FlagLookup, NoFlags, evaluate};
pub use explain::Step;
pub use model::{Evaluation, EvaluationContext, Flag, Reason, UnknownValueType, ValueType};
pub use targeting::{NamedVariant, Prerequisite, Targeting};
pub use validate::{
    DEFAULT_ROLLOUT_PERCENTAGE, FlagDraft, MAX_DESCRIPTION_BYTES, MAX_ENVIRONMENT_LEN, MAX_KEY_LEN,
    MAX_TARGET_BYTES, MAX_TARGET_ROLES, MAX_TARGET_USERS, MAX_VALUE_BYTES, ValidFlagDraft,
    ValidationError, ValidationErrors, contains_nul, is_valid_environment, is_valid_key, nul_error,
};
