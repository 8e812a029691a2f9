//! The evaluation engine: a [`Flag`] compiled once into a [`CompiledFlag`],
//! then evaluated many times with [`evaluate`].
//!
//! Compiling turns the target lists into hash sets, compiles the v2 parts
//! (rules, serves, prerequisites: `targeting.rs`) and precomputes whether
//! the flag has any targeting, so one evaluation of a flag of today's model
//! costs a few set look-ups and at most one murmur3 hash, and allocates
//! nothing (the answer borrows the flag's value). This is yggdrasil's
//! "compile once, evaluate many": a snapshot is compiled when it changes,
//! which is rare, and evaluated on every request, which is not.

use std::collections::HashSet;
use std::sync::Arc;

use foldhash::fast::RandomState;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::bucket::bucket;
use super::constraint::CompiledConstraint;
use super::constraint::Surroundings;
use super::explain::Step;
use super::model::{Evaluation, EvaluationContext, Flag, Reason};
use super::rules::SegmentLookup;
use super::rules::{Served, decide};
use super::targeting::{CompiledTargeting, MAX_PREREQUISITE_DEPTH, OFF, ON};
use super::validate::{FlagDraft, ValidationErrors};
use crate::usage::counters::{Count, Recording, Tap, Uncounted, UsageCounters, UsageMarks};

/// Index of the `on` variant.
const ON_INDEX: usize = 0;
/// Index of the `off` variant.
const OFF_INDEX: usize = 1;

/// A flag prepared for fast evaluation.
///
/// Holds the [`Flag`] unchanged (so it can be listed and serialized exactly
/// as stored, target order included) plus hash sets of its environments,
/// target users and target roles, and its v2 parts compiled. The sets
/// duplicate the strings; at the validated limits (10,000 users of at most
/// 256 bytes) that is a bounded cost paid once per flag change, in exchange
/// for O(1) look-ups per request.
///
/// Serializes as, and deserializes from, the plain [`Flag`], so a persisted
/// snapshot does not depend on this in-memory layout.
#[derive(Clone, Debug)]
pub struct CompiledFlag {
    flag: Flag,
    environments: StringSet,
    target_users: StringSet,
    target_roles: StringSet,
    has_targeting: bool,
    /// Behind a pointer: most flags have none, and the common flag stays
    /// small.
    targeting: Option<Arc<CompiledTargeting>>,
    /// Its evaluation counts; a clone shares them.
    usage: Arc<UsageCounters>,
}

impl PartialEq for CompiledFlag {
    /// Two compiled flags are equal when their flags are: the rest is
    /// derived from the flag.
    fn eq(&self, other: &Self) -> bool {
        self.flag == other.flag
    }
}

/// A set of strings hashed with foldhash instead of SipHash: a look-up of a
/// short id costs about 8 ns instead of 35 ns on the benchmark machine, and
/// an evaluation does up to a few of them. SipHash's protection against
/// hash flooding is not needed: the sets are built from flag definitions
/// written by operators, so a client can only look keys up, never insert
/// colliding ones; foldhash is still seeded per process.
type StringSet = HashSet<String, RandomState>;

/// The other flags (for prerequisites) and the segments (for rules) an
/// evaluation may read: the snapshot, in readyd.
pub trait FlagLookup {
    /// Flag `key`, compiled, if it exists.
    fn compiled_flag(&self, key: &str) -> Option<&CompiledFlag>;

    /// The compiled constraints of segment `key`, if it exists.
    fn segment_constraints(&self, _key: &str) -> Option<&[CompiledConstraint]> {
        None
    }
}

/// The segments of a [`FlagLookup`], as rules look them up.
struct SegmentsOf<'a>(&'a dyn FlagLookup);

impl SegmentLookup for SegmentsOf<'_> {
    fn constraints(&self, key: &str) -> Option<&[CompiledConstraint]> {
        self.0.segment_constraints(key)
    }
}

/// No other flags and no segments: every prerequisite is unmet, and a
/// rule naming a segment matches nobody.
pub struct NoFlags;

impl FlagLookup for NoFlags {
    fn compiled_flag(&self, _key: &str) -> Option<&CompiledFlag> {
        None
    }
}

impl<S: std::hash::BuildHasher> FlagLookup
    for std::collections::HashMap<String, Arc<CompiledFlag>, S>
{
    fn compiled_flag(&self, key: &str) -> Option<&CompiledFlag> {
        self.get(key).map(|flag| &**flag)
    }
}

impl CompiledFlag {
    /// Checks `flag` with the rules of a write (rows written by plain SQL
    /// are checked as strictly as the API's) and compiles it.
    ///
    /// # Errors
    ///
    /// Every rule the flag breaks; such a flag is left out of a snapshot.
    pub fn new(flag: Flag) -> Result<Self, ValidationErrors> {
        let draft = FlagDraft::from_flag(&flag).validate()?;
        let targeting = draft.shared_compiled_targeting();
        let environments = flag.environments.iter().cloned().collect();
        let target_users: StringSet = flag.target_users.iter().cloned().collect();
        let target_roles: StringSet = flag.target_roles.iter().cloned().collect();
        let has_targeting = !target_users.is_empty()
            || !target_roles.is_empty()
            || targeting.as_ref().is_some_and(|t| t.targets());
        let usage = Arc::new(UsageCounters::new(
            &flag.key,
            match &targeting {
                Some(targeting) => targeting.names().to_vec(),
                None => vec![ON.to_owned(), OFF.to_owned()],
            },
        ));
        Ok(CompiledFlag {
            flag,
            environments,
            target_users,
            target_roles,
            has_targeting,
            targeting,
            usage,
        })
    }

    /// The flag as stored.
    pub fn flag(&self) -> &Flag {
        &self.flag
    }

    /// Gives back the flag as stored, dropping the look-up sets.
    pub fn into_flag(self) -> Flag {
        self.flag
    }

    /// The flag's key.
    pub fn key(&self) -> &str {
        &self.flag.key
    }

    /// The flag's version.
    pub fn version(&self) -> i64 {
        self.flag.version
    }

    /// Whether one of its rules' own constraints reads the clock
    /// (`current_time`); segments it names say so themselves.
    pub fn reads_time(&self) -> bool {
        self.targeting.as_ref().is_some_and(|t| t.reads_time)
    }

    /// Whether the flag targets anyone (users, roles, rules or
    /// prerequisites). A full rollout of a flag with targeting answers
    /// [`Reason::Default`] rather than [`Reason::Static`], because the
    /// targets could have mattered.
    pub fn has_targeting(&self) -> bool {
        self.has_targeting
    }

    /// Every variant's name: `on`, `off`, then the flag's named variants.
    pub fn variant_names(&self) -> Vec<&str> {
        match &self.targeting {
            Some(targeting) => targeting.names().iter().map(String::as_str).collect(),
            None => vec![ON, OFF],
        }
    }

    /// The value of variant `name`, if the flag has it.
    pub fn variant_value(&self, name: &str) -> Option<&Value> {
        match (name, &self.targeting) {
            (ON, _) => Some(&self.flag.on_value),
            (OFF, _) => Some(&self.flag.off_value),
            (_, Some(targeting)) => {
                let at = targeting.names().iter().position(|n| n == name)?;
                targeting.named_value(at)
            }
            (_, None) => None,
        }
    }

    /// The variant it serves when off (disabled, environment not listed,
    /// prerequisite unmet).
    pub fn off_variant(&self) -> &str {
        self.targeting
            .as_ref()
            .map_or(OFF, |t| t.name(t.off_variant))
    }

    /// This flag's evaluation counts.
    pub fn usage(&self) -> &Arc<UsageCounters> {
        &self.usage
    }

    /// Evaluates this flag, counting the answer (and any prerequisite's) in
    /// the flags' usage; the same as [`evaluate`].
    pub fn evaluate<'a>(
        &'a self,
        environment: &str,
        ctx: &EvaluationContext,
        flags: &dyn FlagLookup,
    ) -> Evaluation<'a> {
        counted(self, environment, ctx, flags, 0, None, &mut Count)
    }

    /// [`Self::evaluate`], also noting in `marks` where each answer was
    /// counted, so a remembered answer can be counted again.
    pub fn evaluate_marked<'a>(
        &'a self,
        environment: &str,
        ctx: &EvaluationContext,
        flags: &dyn FlagLookup,
        marks: &mut UsageMarks,
    ) -> Evaluation<'a> {
        counted(
            self,
            environment,
            ctx,
            flags,
            0,
            None,
            &mut Recording(marks),
        )
    }

    /// [`Self::evaluate`] without counting anything: a preview, not an
    /// answer served.
    pub fn evaluate_uncounted<'a>(
        &'a self,
        environment: &str,
        ctx: &EvaluationContext,
        flags: &dyn FlagLookup,
    ) -> Evaluation<'a> {
        counted(self, environment, ctx, flags, 0, None, &mut Uncounted)
    }

    /// Evaluates this flag and says why: every step checked, in order.
    pub fn explain<'a>(
        &'a self,
        environment: &str,
        ctx: &EvaluationContext,
        flags: &dyn FlagLookup,
    ) -> (Evaluation<'a>, Vec<Step>) {
        let mut path = Vec::new();
        let evaluation = counted(
            self,
            environment,
            ctx,
            flags,
            0,
            Some(&mut path),
            &mut Count,
        );
        (evaluation, path)
    }

    /// An answer of variant `index` for `reason`, borrowing its value.
    fn answer(&self, index: usize, reason: Reason) -> Evaluation<'_> {
        let (variant_index, variant, value) = match (index, &self.targeting) {
            (ON_INDEX, _) => (ON_INDEX, ON, &self.flag.on_value),
            (OFF_INDEX, _) => (OFF_INDEX, OFF, &self.flag.off_value),
            (_, Some(targeting)) => match targeting.named_value(index) {
                Some(value) => (index, targeting.name(index), value),
                None => (OFF_INDEX, OFF, &self.flag.off_value),
            },
            (_, None) => (OFF_INDEX, OFF, &self.flag.off_value),
        };
        Evaluation {
            value,
            variant,
            reason,
            flag_version: self.flag.version,
            variant_index,
        }
    }
}

impl Serialize for CompiledFlag {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.flag.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CompiledFlag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let flag = Flag::deserialize(deserializer)?;
        CompiledFlag::new(flag).map_err(serde::de::Error::custom)
    }
}

/// Evaluates `flag` in `environment` for `ctx`; `flags` are the other flags
/// (for prerequisites).
///
/// The steps apply in this order, and the first that decides wins
/// (DESIGN.md, "Flag model v2"):
///
/// 1. a disabled flag serves its off variant, [`Reason::Disabled`];
/// 2. so does a flag limited to environments that do not include
///    `environment`;
/// 3. an unmet prerequisite serves the off variant,
///    [`Reason::PrerequisiteFailed`];
/// 4. a targeted user id serves `on`, [`Reason::TargetingMatch`];
/// 5. so does any targeted role;
/// 6. the first rule whose constraints hold serves its variant
///    ([`Reason::TargetingMatch`]) or its split ([`Reason::Split`]); a split
///    the context has no stickiness value for is skipped;
/// 7. the default serve: a variant ([`Reason::Static`] without any
///    targeting, [`Reason::Default`] with it) or a split ([`Reason::Split`];
///    skipped, it serves the off variant, [`Reason::Default`]); without a
///    default serve, the rollout: 100 % is on ([`Reason::Static`] without
///    targeting, [`Reason::Default`] with it); 0 % is off,
///    [`Reason::Default`]; a partial rollout is on exactly when the user's
///    [`bucket`] is at most the percentage, [`Reason::Split`], and off,
///    [`Reason::Default`], for an anonymous context.
///
/// A flag of today's model (no v2 parts) has no steps 3, 6 and 7's serve,
/// so it evaluates exactly as before. Targeting comes before the rollout so
/// that a percentage never takes a flag away from someone it was explicitly
/// given to. An empty user id counts as anonymous (see
/// [`EvaluationContext::effective_user_id`]). Looking the flag up (and
/// answering NOT_FOUND) is the caller's job.
pub fn evaluate<'a>(
    flag: &'a CompiledFlag,
    environment: &str,
    ctx: &EvaluationContext,
    flags: &dyn FlagLookup,
) -> Evaluation<'a> {
    counted(flag, environment, ctx, flags, 0, None, &mut Count)
}

/// [`run`], then the answer counted in `tap`.
#[inline]
fn counted<'a, T: Tap>(
    flag: &'a CompiledFlag,
    environment: &str,
    ctx: &EvaluationContext,
    flags: &dyn FlagLookup,
    depth: usize,
    path: Option<&mut Vec<Step>>,
    tap: &mut T,
) -> Evaluation<'a> {
    let evaluation = run(flag, environment, ctx, flags, depth, path, tap);
    tap.count(&flag.usage, evaluation.variant_index, evaluation.reason);
    evaluation
}

/// Records `step` when explaining.
#[inline]
fn note(path: &mut Option<&mut Vec<Step>>, step: impl FnOnce() -> Step) {
    if let Some(path) = path {
        path.push(step());
    }
}

/// [`evaluate`], `depth` prerequisites down, recording the path when given;
/// a prerequisite's answer is counted in `tap` (it was evaluated).
fn run<'a, T: Tap>(
    flag: &'a CompiledFlag,
    environment: &str,
    ctx: &EvaluationContext,
    flags: &dyn FlagLookup,
    depth: usize,
    mut path: Option<&mut Vec<Step>>,
    tap: &mut T,
) -> Evaluation<'a> {
    let targeting = flag.targeting.as_deref();
    let off = targeting.map_or(OFF_INDEX, |t| t.off_variant);
    if !flag.flag.enabled {
        note(&mut path, || Step::Disabled);
        return flag.answer(off, Reason::Disabled);
    }
    if !flag.environments.is_empty() && !flag.environments.contains(environment) {
        note(&mut path, || Step::EnvironmentNotListed {
            environment: environment.to_owned(),
        });
        return flag.answer(off, Reason::Disabled);
    }

    if let Some(targeting) = targeting
        && !targeting.prerequisites.is_empty()
    {
        for prerequisite in &*targeting.prerequisites {
            // A chain deeper than writes allow (plain SQL can make one, even a
            // cycle) is unmet rather than endless.
            let other = flags
                .compiled_flag(&prerequisite.flag)
                .filter(|_| depth + 1 < MAX_PREREQUISITE_DEPTH);
            let served = other
                .map(|other| counted(other, environment, ctx, flags, depth + 1, None, &mut *tap));
            let met = served.is_some_and(|served| {
                prerequisite
                    .variants
                    .iter()
                    .any(|v| v.as_str() == served.variant)
            });
            if !met {
                note(&mut path, || Step::PrerequisiteUnmet {
                    flag: prerequisite.flag.clone(),
                    served: served.map(|s| s.variant.to_owned()),
                    wanted: prerequisite.variants.to_vec(),
                });
                return flag.answer(off, Reason::PrerequisiteFailed);
            }
        }
        note(&mut path, || Step::PrerequisitesMet);
    }

    let user_id = ctx.effective_user_id();
    if let Some(user_id) = user_id
        && flag.target_users.contains(user_id)
    {
        note(&mut path, || Step::TargetUser);
        return flag.answer(ON_INDEX, Reason::TargetingMatch);
    }
    // Checking emptiness first skips hashing every role of the context for
    // the common flag that targets no role.
    if !flag.target_roles.is_empty()
        && let Some(role) = ctx
            .roles
            .iter()
            .find(|role| flag.target_roles.contains(role.as_str()))
    {
        note(&mut path, || Step::TargetRole { role: role.clone() });
        return flag.answer(ON_INDEX, Reason::TargetingMatch);
    }

    if let Some(targeting) = targeting
        && (!targeting.rules.is_empty() || targeting.default_serve.is_some())
    {
        // The clock is read only if a constraint asks, a segment's too.
        let around = Surroundings::new(environment);
        match decide(
            &flag.flag.key,
            &targeting.rules,
            targeting.default_serve.as_ref(),
            ctx,
            &around,
            &SegmentsOf(flags),
            path.as_deref_mut(),
        ) {
            Some(Served::Matched { variant, .. }) => {
                return flag.answer(variant, Reason::TargetingMatch);
            }
            Some(Served::Split { rule, variant }) => {
                if rule.is_none() {
                    note(&mut path, || Step::DefaultServe);
                }
                return flag.answer(variant, Reason::Split);
            }
            Some(Served::Default { variant }) => {
                note(&mut path, || Step::DefaultServe);
                let reason = if flag.has_targeting {
                    Reason::Default
                } else {
                    Reason::Static
                };
                return flag.answer(variant, reason);
            }
            // The default split was skipped: nothing else is left.
            None if targeting.default_serve.is_some() => {
                return flag.answer(off, Reason::Default);
            }
            None => {}
        }
    }

    let percentage = flag.flag.rollout_percentage;
    match percentage {
        0 => {
            note(&mut path, || Step::Rollout {
                percentage,
                bucket: None,
            });
            flag.answer(OFF_INDEX, Reason::Default)
        }
        // Values above 100 cannot pass validation; treating them as 100
        // keeps an unvalidated flag from behaving as a strange partial split.
        percentage if percentage >= 100 => {
            note(&mut path, || Step::Rollout {
                percentage,
                bucket: None,
            });
            let reason = if flag.has_targeting {
                Reason::Default
            } else {
                Reason::Static
            };
            flag.answer(ON_INDEX, reason)
        }
        percentage => match user_id {
            Some(user_id) => {
                let bucket = bucket(&flag.flag.key, user_id);
                note(&mut path, || Step::Rollout {
                    percentage,
                    bucket: Some(bucket),
                });
                if bucket <= u32::from(percentage) {
                    flag.answer(ON_INDEX, Reason::Split)
                } else {
                    flag.answer(OFF_INDEX, Reason::Split)
                }
            }
            None => {
                note(&mut path, || Step::Rollout {
                    percentage,
                    bucket: None,
                });
                flag.answer(OFF_INDEX, Reason::Default)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::model::ValueType;
    use crate::flags::targeting::Targeting;
    use chrono::DateTime;
    use serde_json::json;
    use std::collections::HashMap;

    fn flag() -> Flag {
        Flag {
            key: "f".to_owned(),
            description: String::new(),
            enabled: true,
            value_type: ValueType::String,
            on_value: json!("yes"),
            off_value: json!("no"),
            environments: vec![],
            target_users: vec![],
            target_roles: vec![],
            rollout_percentage: 100,
            version: 7,
            updated_at: DateTime::UNIX_EPOCH,
            updated_by: "test".to_owned(),
            targeting: None,
            client_visible: false,
            permanent: false,
            created_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn compiled(flag: Flag) -> CompiledFlag {
        CompiledFlag::new(flag).expect("a valid flag")
    }

    fn with_targeting(targeting: serde_json::Value) -> Flag {
        Flag {
            targeting: Some(Box::new(
                serde_json::from_value::<Targeting>(targeting).expect("targeting"),
            )),
            ..flag()
        }
    }

    fn ctx(user: &str, attributes: serde_json::Value) -> EvaluationContext {
        EvaluationContext {
            user_id: Some(user.to_owned()),
            roles: vec![],
            attributes: match attributes {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
        }
    }

    #[test]
    fn answers_borrow_the_matching_value_and_carry_the_version() {
        let on = compiled(flag());
        let e = on.evaluate("prod", &EvaluationContext::default(), &NoFlags);
        assert_eq!(e.value, &json!("yes"));
        assert_eq!(
            (e.variant, e.reason, e.flag_version),
            ("on", Reason::Static, 7)
        );

        let off = compiled(Flag {
            enabled: false,
            ..flag()
        });
        let e = off.evaluate("prod", &EvaluationContext::default(), &NoFlags);
        assert_eq!(e.value, &json!("no"));
        assert_eq!(e.variant, "off");
    }

    #[test]
    fn has_targeting_is_precomputed() {
        assert!(!compiled(flag()).has_targeting());
        let users = Flag {
            target_users: vec!["u".into()],
            ..flag()
        };
        assert!(compiled(users).has_targeting());
        let roles = Flag {
            target_roles: vec!["r".into()],
            ..flag()
        };
        assert!(compiled(roles).has_targeting());
        let rules = with_targeting(json!({"rules": [
            {"constraints": [{"attribute": "plan", "operator": "exists"}], "serve": {"variant": "on"}}
        ]}));
        assert!(compiled(rules).has_targeting());
    }

    #[test]
    fn an_invalid_flag_does_not_compile() {
        let bad = Flag {
            rollout_percentage: 200,
            ..flag()
        };
        assert!(CompiledFlag::new(bad).is_err());
        let bad = with_targeting(json!({"default_serve": {"variant": "purple"}}));
        let errors = CompiledFlag::new(bad).unwrap_err();
        assert!(errors.to_string().contains("purple"), "{errors}");
    }

    #[test]
    fn a_compiled_flag_serializes_as_the_plain_flag() {
        let f = Flag {
            target_users: vec!["b".into(), "a".into()],
            ..flag()
        };
        let compiled_flag = compiled(f.clone());
        let text = serde_json::to_string(&compiled_flag).unwrap();
        assert_eq!(text, serde_json::to_string(&f).unwrap());
        assert!(
            !text.contains("targeting"),
            "a flag of today's model serializes as before"
        );
        let back: CompiledFlag = serde_json::from_str(&text).unwrap();
        assert_eq!(back, compiled_flag);
        assert_eq!(back.into_flag(), f);

        let v2 = with_targeting(json!({"variants": [{"name": "red", "value": "r"}]}));
        let text = serde_json::to_string(&compiled(v2.clone())).unwrap();
        let back: CompiledFlag = serde_json::from_str(&text).unwrap();
        assert_eq!(back.into_flag(), v2);
    }

    /// The A/B example of the README: three variants, a rule for one
    /// country, a weighted split for everyone else.
    fn checkout() -> CompiledFlag {
        compiled(Flag {
            key: "checkout.v2".into(),
            ..with_targeting(json!({
                "variants": [
                    {"name": "red", "value": "r"},
                    {"name": "green", "value": "g"},
                    {"name": "blue", "value": "b"}
                ],
                "off_variant": "blue",
                "rules": [
                    {"name": "germany", "constraints": [
                        {"attribute": "country", "operator": "in", "values": ["DE"]}
                    ], "serve": {"variant": "green"}}
                ],
                "default_serve": {"split": {"weights": [
                    {"variant": "red", "weight": 500},
                    {"variant": "green", "weight": 300},
                    {"variant": "blue", "weight": 200}
                ]}}
            }))
        })
    }

    #[test]
    fn rules_then_the_default_split_serve_named_variants() {
        let flag = checkout();
        let e = flag.evaluate("prod", &ctx("42", json!({"country": "DE"})), &NoFlags);
        assert_eq!(
            (e.variant, e.value, e.reason),
            ("green", &json!("g"), Reason::TargetingMatch)
        );
        // User 42 lands in bucket 146 of 1000: red (Unleash's formula).
        let e = flag.evaluate("prod", &ctx("42", json!({"country": "FR"})), &NoFlags);
        assert_eq!(
            (e.variant, e.value, e.reason),
            ("red", &json!("r"), Reason::Split)
        );
        // No user id: the default split is skipped, the flag serves its off
        // variant.
        let e = flag.evaluate("prod", &EvaluationContext::default(), &NoFlags);
        assert_eq!((e.variant, e.reason), ("blue", Reason::Default));
    }

    #[test]
    fn a_disabled_v2_flag_serves_its_off_variant() {
        let mut flag = checkout().into_flag();
        flag.enabled = false;
        let flag = compiled(flag);
        let e = flag.evaluate("prod", &ctx("42", json!({})), &NoFlags);
        assert_eq!(
            (e.variant, e.value, e.reason),
            ("blue", &json!("b"), Reason::Disabled)
        );
    }

    #[test]
    fn explain_lists_every_step_checked() {
        let ab = checkout();
        let (e, path) = ab.explain("prod", &ctx("42", json!({"country": "FR"})), &NoFlags);
        assert_eq!(e.variant, "red");
        let text: Vec<String> = path.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "rule 1 did not match: constraint 1 (country in [\"DE\"]) does not hold",
                "no rule matched: the default serve",
            ]
        );
        assert_eq!(path[0].kind(), "rule");
        assert_eq!(path[0].rule_number(), Some(1));

        let plain = compiled(flag());
        let (_, path) = plain.explain("prod", &EvaluationContext::default(), &NoFlags);
        assert_eq!(
            path,
            [Step::Rollout {
                percentage: 100,
                bucket: None
            }]
        );
    }

    #[test]
    fn prerequisites_gate_the_flag() {
        let mut flags: HashMap<String, Arc<CompiledFlag>> = HashMap::new();
        flags.insert(
            "base".into(),
            Arc::new(compiled(Flag {
                key: "base".into(),
                ..flag()
            })),
        );
        let dependent = compiled(Flag {
            key: "dependent".into(),
            ..with_targeting(json!({"prerequisites": [{"flag": "base", "variants": ["on"]}]}))
        });
        let e = dependent.evaluate("prod", &EvaluationContext::default(), &flags);
        assert_eq!((e.variant, e.reason), ("on", Reason::Default));

        flags.insert(
            "base".into(),
            Arc::new(compiled(Flag {
                key: "base".into(),
                enabled: false,
                ..flag()
            })),
        );
        let (e, path) = dependent.explain("prod", &EvaluationContext::default(), &flags);
        assert_eq!((e.variant, e.reason), ("off", Reason::PrerequisiteFailed));
        assert_eq!(
            path[0].to_string(),
            "prerequisite \"base\" served \"off\", not one of [\"on\"]"
        );

        // A missing prerequisite is unmet.
        let e = dependent.evaluate("prod", &EvaluationContext::default(), &NoFlags);
        assert_eq!(e.reason, Reason::PrerequisiteFailed);
    }

    #[test]
    fn a_flag_evaluated_as_a_prerequisite_is_counted_and_a_preview_is_not() {
        let drained = |flag: &CompiledFlag| {
            let mut seen = Vec::new();
            flag.usage().drain(|variant, reason, count| {
                seen.push((variant.to_owned(), reason, count));
            });
            seen
        };
        let mut flags: HashMap<String, Arc<CompiledFlag>> = HashMap::new();
        flags.insert(
            "base".into(),
            Arc::new(compiled(Flag {
                key: "base".into(),
                ..flag()
            })),
        );
        let dependent = compiled(Flag {
            key: "dependent".into(),
            ..with_targeting(json!({"prerequisites": [{"flag": "base", "variants": ["on"]}]}))
        });
        for _ in 0..3 {
            dependent.evaluate("prod", &EvaluationContext::default(), &flags);
        }
        dependent.evaluate_uncounted("prod", &EvaluationContext::default(), &flags);
        let mut marks = UsageMarks::default();
        dependent.evaluate_marked("prod", &EvaluationContext::default(), &flags, &mut marks);
        // Given again: counted when the repeats are settled, before a drain.
        let registry = crate::usage::counters::UsageRegistry::default();
        let again = registry.repeatable(marks);
        again.count_again();
        registry.drain(&mut |_, _, _, _| {});
        assert_eq!(drained(&dependent), [("on".to_owned(), Reason::Default, 5)]);
        assert_eq!(
            drained(&flags["base"]),
            [("on".to_owned(), Reason::Static, 5)]
        );
    }

    #[test]
    fn a_prerequisite_cycle_written_by_sql_ends() {
        let mut flags: HashMap<String, Arc<CompiledFlag>> = HashMap::new();
        for (key, other) in [("a", "b"), ("b", "a")] {
            flags.insert(
                key.into(),
                Arc::new(compiled(Flag {
                    key: key.into(),
                    ..with_targeting(
                        json!({"prerequisites": [{"flag": other, "variants": ["on"]}]}),
                    )
                })),
            );
        }
        let e = flags["a"].evaluate("prod", &EvaluationContext::default(), &flags);
        assert_eq!(e.reason, Reason::PrerequisiteFailed);
    }

    /// Flags and segments for a test.
    struct WithSegments(HashMap<String, Box<[CompiledConstraint]>>);

    impl FlagLookup for WithSegments {
        fn compiled_flag(&self, _key: &str) -> Option<&CompiledFlag> {
            None
        }

        fn segment_constraints(&self, key: &str) -> Option<&[CompiledConstraint]> {
            self.0.get(key).map(|constraints| &**constraints)
        }
    }

    #[test]
    fn a_segment_reading_the_clock_sees_the_time_even_when_the_rule_does_not() {
        let since = |date: &str| {
            crate::flags::segment::check_segment(
                "launched",
                "",
                &[serde_json::from_value(json!(
                    {"attribute": "current_time", "operator": "date_after", "values": [date]}
                ))
                .expect("a constraint")],
            )
            .expect("a valid segment")
        };
        let flag = compiled(with_targeting(json!({
            "rules": [{"name": "after launch", "segments": ["launched"], "serve": {"variant": "on"}}],
            "default_serve": {"variant": "off"}
        })));
        let past = WithSegments(HashMap::from([(
            "launched".to_owned(),
            since("2020-01-01T00:00:00Z"),
        )]));
        let e = flag.evaluate("prod", &ctx("42", json!({})), &past);
        assert_eq!((e.variant, e.reason), ("on", Reason::TargetingMatch));
        let future = WithSegments(HashMap::from([(
            "launched".to_owned(),
            since("2999-01-01T00:00:00Z"),
        )]));
        let e = flag.evaluate("prod", &ctx("42", json!({})), &future);
        assert_eq!((e.variant, e.reason), ("off", Reason::Default));
    }
}
