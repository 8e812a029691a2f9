//! Targeting rules and weighted serves of flag model v2 (DESIGN.md, "Flag
//! model v2"): the parts after target users and roles.
//!
//! Rules are tried in order; the first whose constraints and segments all
//! hold serves one variant (`TARGETING_MATCH`) or a weighted split
//! (`SPLIT`). A split whose stickiness attribute the context lacks is
//! skipped: evaluation goes on with the next rule, then the default serve.
//! Everything is checked and compiled when written ([`Rule::compile`]);
//! evaluation reads the compiled form only, and records the path it took
//! when asked to explain.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::constraint::{
    CompiledConstraint, Constraint, ContextReader, Surroundings, number_attributes,
};
use super::explain::Step;
use super::model::EvaluationContext;
use super::split;
use super::validate::is_valid_key;
use crate::echo::truncate;

/// Most rules one flag may have.
pub const MAX_RULES: usize = 100;
/// Most constraints one rule (or segment) may have.
pub const MAX_CONSTRAINTS: usize = 50;
/// Most segments one rule may name.
pub const MAX_RULE_SEGMENTS: usize = 20;
/// Most variants one flag may have.
pub const MAX_VARIANTS: usize = 50;
/// Largest weight of one variant in a split, and of a split's total.
pub const MAX_TOTAL_WEIGHT: u32 = 1_000_000;

/// What a rule or the default serve answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Serve {
    /// Always this variant.
    Variant(String),
    /// One of these variants, by the context's bucket.
    Split(Split),
}

/// A weighted split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Split {
    /// Variants and their weights, in order (the order decides who gets
    /// which: see `split.rs`).
    pub weights: Vec<Weight>,
    /// The attribute whose value keeps a context in its variant; `user_id`
    /// when empty.
    pub stickiness: String,
}

/// One variant's share of a split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Weight {
    /// The variant.
    pub variant: String,
    /// Its weight; shares are weight / total.
    pub weight: u32,
}

/// A targeting rule as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rule {
    /// A name for people and for the explain answer (optional).
    pub name: String,
    /// All must hold.
    pub constraints: Vec<Constraint>,
    /// Segments whose constraints must all hold too, by key.
    pub segments: Vec<String>,
    /// What the rule serves when it matches.
    pub serve: Option<Serve>,
}

/// Why a rule or serve cannot be used; the message names the rule and the
/// constraint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

/// A segment's constraints, compiled, as a rule sees them.
pub trait SegmentLookup {
    /// The compiled constraints of segment `key`, if it exists.
    fn constraints(&self, key: &str) -> Option<&[CompiledConstraint]>;
}

/// A compiled serve: variant indexes into the flag's variants.
#[derive(Clone, Debug)]
pub enum CompiledServe {
    /// Always this variant.
    Variant(usize),
    /// By bucket.
    Split {
        /// Variant indexes, in order.
        variants: Box<[usize]>,
        /// Their weights.
        weights: Box<[u32]>,
        /// None: the user id.
        stickiness: Option<String>,
    },
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    name: String,
    constraints: Box<[CompiledConstraint]>,
    segments: Box<[String]>,
    serve: CompiledServe,
}

/// Which step of the rules decided, for the caller and the explain answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// A rule's single variant.
    Matched { rule: usize, variant: usize },
    /// A rule's or the default's split.
    Split { rule: Option<usize>, variant: usize },
    /// The default serve's single variant.
    Default { variant: usize },
}

impl Serve {
    /// Compiles against the flag's variant names; `what` names the place
    /// for errors ("rule 2", "the default serve").
    pub fn compile(&self, variants: &[String], what: &str) -> Result<CompiledServe, RuleError> {
        let index = |name: &str| {
            variants.iter().position(|v| v == name).ok_or_else(|| {
                RuleError(format!(
                    "{what}: variant {:?} is not one of the flag's variants ({})",
                    truncate(name),
                    variants.join(", ")
                ))
            })
        };
        match self {
            Serve::Variant(name) => Ok(CompiledServe::Variant(index(name)?)),
            Serve::Split(split) => {
                if split.weights.is_empty() {
                    return Err(RuleError(format!("{what}: the split has no variants")));
                }
                let mut indexes = Vec::with_capacity(split.weights.len());
                let mut total: u32 = 0;
                for weight in &split.weights {
                    let at = index(&weight.variant)?;
                    if indexes.contains(&at) {
                        return Err(RuleError(format!(
                            "{what}: variant {:?} appears twice in the split",
                            truncate(&weight.variant)
                        )));
                    }
                    indexes.push(at);
                    total = total
                        .checked_add(weight.weight)
                        .filter(|total| *total <= MAX_TOTAL_WEIGHT)
                        .ok_or_else(|| {
                            RuleError(format!(
                                "{what}: the weights add up to more than {MAX_TOTAL_WEIGHT}"
                            ))
                        })?;
                }
                if total == 0 {
                    return Err(RuleError(format!(
                        "{what}: the weights add up to 0; give at least one variant weight"
                    )));
                }
                let stickiness = match split.stickiness.trim() {
                    "" | "user_id" => None,
                    attribute => Some(attribute.to_owned()),
                };
                Ok(CompiledServe::Split {
                    variants: indexes.into(),
                    weights: split.weights.iter().map(|w| w.weight).collect(),
                    stickiness,
                })
            }
        }
    }
}

impl Rule {
    /// Checks and compiles rule number `number` (1-based, for messages).
    /// Segment keys are checked for form only: whether they exist is for
    /// the writer to check against the database (a rule whose segment is
    /// gone matches nobody).
    pub fn compile(&self, number: usize, variants: &[String]) -> Result<CompiledRule, RuleError> {
        let what = if self.name.is_empty() {
            format!("rule {number}")
        } else {
            format!("rule {number} ({:?})", truncate(&self.name))
        };
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(RuleError(format!(
                "{what}: {} constraints; at most {MAX_CONSTRAINTS}",
                self.constraints.len()
            )));
        }
        if self.segments.len() > MAX_RULE_SEGMENTS {
            return Err(RuleError(format!(
                "{what}: {} segments; at most {MAX_RULE_SEGMENTS}",
                self.segments.len()
            )));
        }
        let constraints = self
            .constraints
            .iter()
            .enumerate()
            .map(|(i, constraint)| {
                constraint
                    .compile()
                    .map_err(|err| RuleError(format!("{what}, constraint {}: {err}", i + 1)))
            })
            .collect::<Result<Box<[_]>, _>>()?;
        if let Some(bad) = self.segments.iter().find(|s| !is_valid_key(s)) {
            return Err(RuleError(format!(
                "{what}: {:?} is not a valid segment key",
                truncate(bad)
            )));
        }
        let serve = self
            .serve
            .as_ref()
            .ok_or_else(|| RuleError(format!("{what}: serves nothing; set a variant or a split")))?
            .compile(variants, &what)?;
        Ok(CompiledRule {
            name: self.name.clone(),
            constraints,
            segments: self.segments.clone().into(),
            serve,
        })
    }
}

/// Numbers the attributes all of `rules`' constraints read, so that one
/// evaluation looks each up once (see [`ContextReader`]).
pub fn number_rule_attributes(rules: &mut [CompiledRule]) {
    number_attributes(
        rules
            .iter_mut()
            .flat_map(|rule| rule.constraints.iter_mut()),
    );
}

impl CompiledRule {
    /// Whether a constraint reads the clock.
    pub fn reads_time(&self) -> bool {
        self.constraints.iter().any(CompiledConstraint::reads_time)
    }

    /// Whether every constraint and segment holds; the first failure is
    /// recorded when `path` is given.
    fn matches(
        &self,
        number: usize,
        reader: &ContextReader<'_>,
        around: &Surroundings<'_>,
        segments: &dyn SegmentLookup,
        path: Option<&mut Vec<Step>>,
    ) -> bool {
        if let Some(failed) = self
            .constraints
            .iter()
            .position(|c| !c.holds_for(reader, around))
        {
            if let Some(path) = path {
                path.push(Step::ConstraintFailed {
                    rule: number,
                    constraint: failed,
                    described: self.constraints[failed].describe(),
                });
            }
            return false;
        }
        for segment in &*self.segments {
            // A segment deleted since the rule was compiled matches nobody.
            let failed = match segments.constraints(segment) {
                None => Some(None),
                Some(constraints) => {
                    // A segment numbers its attributes on its own.
                    let reader = ContextReader::new(reader.context());
                    constraints
                        .iter()
                        .find(|c| !c.holds_for(&reader, around))
                        .map(Some)
                }
            };
            if let Some(failed) = failed {
                if let Some(path) = path {
                    path.push(Step::SegmentFailed {
                        rule: number,
                        segment: segment.clone(),
                        described: failed.map_or_else(
                            || "the segment no longer exists".to_owned(),
                            CompiledConstraint::describe,
                        ),
                    });
                }
                return false;
            }
        }
        true
    }
}

/// The stickiness value of `ctx` for a split: the user id, or the named
/// attribute as text. `None` when the context lacks it.
fn stickiness_value<'a>(
    ctx: &'a EvaluationContext,
    stickiness: Option<&str>,
) -> Option<std::borrow::Cow<'a, str>> {
    match stickiness {
        None => ctx.effective_user_id().map(std::borrow::Cow::Borrowed),
        Some(attribute) => match ctx.attributes.get(attribute)? {
            Value::String(text) if !text.is_empty() => Some(std::borrow::Cow::Borrowed(text)),
            Value::Number(number) => Some(std::borrow::Cow::Owned(number.to_string())),
            Value::Bool(flag) => Some(std::borrow::Cow::Borrowed(if *flag {
                "true"
            } else {
                "false"
            })),
            _ => None,
        },
    }
}

impl CompiledServe {
    /// The variant index it serves for `ctx` in flag `key`; `None` for a
    /// split the context has no stickiness value for.
    pub fn choose(&self, key: &str, ctx: &EvaluationContext) -> Option<usize> {
        match self {
            CompiledServe::Variant(index) => Some(*index),
            CompiledServe::Split {
                variants,
                weights,
                stickiness,
            } => {
                let value = stickiness_value(ctx, stickiness.as_deref())?;
                split::choose(key, &value, weights).map(|at| variants[at])
            }
        }
    }

    fn stickiness(&self) -> String {
        match self {
            CompiledServe::Split {
                stickiness: Some(attribute),
                ..
            } => attribute.clone(),
            _ => "user_id".to_owned(),
        }
    }
}

/// Tries `rules` in order, then `default`; `None` when nothing served
/// (the caller falls back to the legacy rollout). Records the path when
/// `path` is given.
pub fn decide(
    key: &str,
    rules: &[CompiledRule],
    default: Option<&CompiledServe>,
    ctx: &EvaluationContext,
    around: &Surroundings<'_>,
    segments: &dyn SegmentLookup,
    mut path: Option<&mut Vec<Step>>,
) -> Option<Served> {
    let reader = ContextReader::new(ctx);
    for (number, rule) in rules.iter().enumerate() {
        if !rule.matches(number, &reader, around, segments, path.as_deref_mut()) {
            continue;
        }
        if let Some(path) = path.as_deref_mut() {
            path.push(Step::RuleMatched {
                rule: number,
                name: rule.name.clone(),
            });
        }
        match (&rule.serve, rule.serve.choose(key, ctx)) {
            (CompiledServe::Variant(_), Some(variant)) => {
                return Some(Served::Matched {
                    rule: number,
                    variant,
                });
            }
            (CompiledServe::Split { .. }, Some(variant)) => {
                return Some(Served::Split {
                    rule: Some(number),
                    variant,
                });
            }
            (_, None) => {
                if let Some(path) = path.as_deref_mut() {
                    path.push(Step::SplitSkipped {
                        rule: Some(number),
                        stickiness: rule.serve.stickiness(),
                    });
                }
            }
        }
    }
    let default = default?;
    match (default, default.choose(key, ctx)) {
        (CompiledServe::Variant(_), Some(variant)) => Some(Served::Default { variant }),
        (CompiledServe::Split { .. }, Some(variant)) => Some(Served::Split {
            rule: None,
            variant,
        }),
        (_, None) => {
            if let Some(path) = path {
                path.push(Step::SplitSkipped {
                    rule: None,
                    stickiness: default.stickiness(),
                });
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Segments(HashMap<String, Vec<CompiledConstraint>>);

    impl SegmentLookup for Segments {
        fn constraints(&self, key: &str) -> Option<&[CompiledConstraint]> {
            self.0.get(key).map(Vec::as_slice)
        }
    }

    fn variants() -> Vec<String> {
        ["on", "off", "red", "green", "blue"]
            .map(String::from)
            .to_vec()
    }

    fn around() -> Surroundings<'static> {
        Surroundings::at(
            "production",
            Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0)
                .single()
                .expect("time"),
        )
    }

    fn c(attribute: &str, operator: &str, values: &[&str]) -> Constraint {
        Constraint {
            attribute: attribute.into(),
            operator: operator.into(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            ..Constraint::default()
        }
    }

    fn rgb() -> Serve {
        Serve::Split(Split {
            weights: vec![
                Weight {
                    variant: "red".into(),
                    weight: 500,
                },
                Weight {
                    variant: "green".into(),
                    weight: 300,
                },
                Weight {
                    variant: "blue".into(),
                    weight: 200,
                },
            ],
            stickiness: String::new(),
        })
    }

    fn ctx(user: Option<&str>, attributes: Value) -> EvaluationContext {
        EvaluationContext {
            user_id: user.map(String::from),
            roles: vec![],
            attributes: match attributes {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
        }
    }

    #[test]
    fn first_matching_rule_serves_and_the_path_says_why() {
        let segments = Segments::default();
        let rules = [
            Rule {
                name: "germany".into(),
                constraints: vec![c("country", "in", &["DE"]), c("plan", "in", &["pro"])],
                serve: Some(Serve::Variant("red".into())),
                ..Rule::default()
            },
            Rule {
                name: "pro".into(),
                constraints: vec![c("plan", "in", &["pro"])],
                serve: Some(rgb()),
                ..Rule::default()
            },
        ];
        let compiled: Vec<_> = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| rule.compile(i + 1, &variants()).expect("compiles"))
            .collect();
        let mut path = Vec::new();
        let served = decide(
            "checkout.v2",
            &compiled,
            None,
            &ctx(Some("42"), json!({"country": "FR", "plan": "pro"})),
            &around(),
            &segments,
            Some(&mut path),
        );
        // Rule 1 fails on its first constraint; rule 2's split puts user 42
        // on red (bucket 146 of 1000).
        assert_eq!(
            served,
            Some(Served::Split {
                rule: Some(1),
                variant: 2
            })
        );
        assert_eq!(
            path[0],
            Step::ConstraintFailed {
                rule: 0,
                constraint: 0,
                described: "country in [\"DE\"]".into()
            }
        );
        assert_eq!(
            path[1],
            Step::RuleMatched {
                rule: 1,
                name: "pro".into()
            }
        );
        let served = decide(
            "checkout.v2",
            &compiled,
            None,
            &ctx(Some("42"), json!({"country": "DE", "plan": "pro"})),
            &around(),
            &segments,
            None,
        );
        assert_eq!(
            served,
            Some(Served::Matched {
                rule: 0,
                variant: 2
            })
        );
        // Nothing matches and there is no default: the caller decides.
        let served = decide(
            "checkout.v2",
            &compiled,
            None,
            &ctx(Some("42"), json!({})),
            &around(),
            &segments,
            None,
        );
        assert_eq!(served, None);
    }

    #[test]
    fn a_split_without_its_stickiness_value_falls_through() {
        let segments = Segments::default();
        let rule = Rule {
            serve: Some(Serve::Split(Split {
                stickiness: "tenant".into(),
                ..match rgb() {
                    Serve::Split(split) => split,
                    Serve::Variant(_) => unreachable!(),
                }
            })),
            ..Rule::default()
        }
        .compile(1, &variants())
        .expect("compiles");
        let default = Serve::Variant("off".into())
            .compile(&variants(), "default")
            .expect("compiles");
        let mut path = Vec::new();
        let served = decide(
            "k",
            std::slice::from_ref(&rule),
            Some(&default),
            &ctx(Some("u"), json!({})),
            &around(),
            &segments,
            Some(&mut path),
        );
        assert_eq!(served, Some(Served::Default { variant: 1 }));
        assert!(path.contains(&Step::SplitSkipped {
            rule: Some(0),
            stickiness: "tenant".into()
        }));
        let served = decide(
            "k",
            &[rule],
            Some(&default),
            &ctx(None, json!({"tenant": "acme"})),
            &around(),
            &segments,
            None,
        );
        assert!(matches!(served, Some(Served::Split { rule: Some(0), .. })));
    }

    #[test]
    fn segments_must_hold_too() {
        let mut segments = Segments::default();
        segments.0.insert(
            "beta-testers".into(),
            vec![
                c("email", "str_ends_with", &["@example.com"])
                    .compile()
                    .expect("compiles"),
            ],
        );
        let rule = Rule {
            segments: vec!["beta-testers".into()],
            serve: Some(Serve::Variant("on".into())),
            ..Rule::default()
        }
        .compile(1, &variants())
        .expect("compiles");
        let inside = ctx(Some("u"), json!({"email": "a@example.com"}));
        let outside = ctx(Some("u"), json!({"email": "a@other.com"}));
        assert!(
            decide(
                "k",
                std::slice::from_ref(&rule),
                None,
                &inside,
                &around(),
                &segments,
                None
            )
            .is_some()
        );
        let mut path = Vec::new();
        assert!(
            decide(
                "k",
                std::slice::from_ref(&rule),
                None,
                &outside,
                &around(),
                &segments,
                Some(&mut path)
            )
            .is_none()
        );
        assert!(
            matches!(&path[0], Step::SegmentFailed { segment, .. } if segment == "beta-testers")
        );
        // Deleted since: matches nobody.
        let empty = Segments::default();
        assert!(decide("k", &[rule], None, &inside, &around(), &empty, None).is_none());
    }

    #[test]
    fn bad_rules_name_the_rule_and_constraint() {
        let cases: Vec<(Rule, &str)> = vec![
            (
                Rule {
                    name: "eu".into(),
                    constraints: vec![c("a", "in", &["x"]), c("v", "semver_gt", &["one"])],
                    serve: Some(Serve::Variant("on".into())),
                    ..Rule::default()
                },
                "rule 3 (\"eu\"), constraint 2: \"one\" is not a semantic version",
            ),
            (
                Rule {
                    serve: Some(Serve::Variant("purple".into())),
                    ..Rule::default()
                },
                "rule 3: variant \"purple\" is not one of the flag's variants",
            ),
            (Rule::default(), "rule 3: serves nothing"),
            (
                Rule {
                    segments: vec!["No Segment".into()],
                    serve: Some(Serve::Variant("on".into())),
                    ..Rule::default()
                },
                "rule 3: \"No Segment\" is not a valid segment key",
            ),
            (
                Rule {
                    serve: Some(Serve::Split(Split {
                        weights: vec![Weight {
                            variant: "red".into(),
                            weight: 0,
                        }],
                        stickiness: String::new(),
                    })),
                    ..Rule::default()
                },
                "add up to 0",
            ),
            (
                Rule {
                    serve: Some(Serve::Split(Split {
                        weights: vec![
                            Weight {
                                variant: "red".into(),
                                weight: 1,
                            },
                            Weight {
                                variant: "red".into(),
                                weight: 1,
                            },
                        ],
                        stickiness: String::new(),
                    })),
                    ..Rule::default()
                },
                "appears twice",
            ),
        ];
        for (rule, expected) in cases {
            let err = rule.compile(3, &variants()).expect_err("refused");
            assert!(err.0.contains(expected), "{err} lacks {expected:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A rule with no constraints and one variant serves that variant to
        /// everyone; the rules before it decide only for those they match.
        #[test]
        fn a_catch_all_rule_serves_everyone_the_earlier_rules_left(
            country in "[A-Z]{2}",
            user in prop::option::of("[a-z0-9]{1,8}"),
        ) {
            let segments = Segments::default();
            let rules = [
                Rule {
                    constraints: vec![c("country", "in", &["DE"])],
                    serve: Some(Serve::Variant("red".into())),
                    ..Rule::default()
                },
                Rule { serve: Some(Serve::Variant("blue".into())), ..Rule::default() },
            ];
            let compiled: Vec<_> = rules
                .iter()
                .enumerate()
                .map(|(i, rule)| rule.compile(i + 1, &variants()).expect("compiles"))
                .collect();
            let served = decide(
                "k",
                &compiled,
                None,
                &ctx(user.as_deref(), json!({"country": country.clone()})),
                &around(),
                &segments,
                None,
            );
            let expected = if country == "DE" {
                Served::Matched { rule: 0, variant: 2 }
            } else {
                Served::Matched { rule: 1, variant: 4 }
            };
            prop_assert_eq!(served, Some(expected));
        }

        /// Explaining changes no answer.
        #[test]
        fn explaining_changes_nothing(
            plan in prop::sample::select(vec!["free", "pro", "team"]),
            user in prop::option::of("[a-z0-9]{1,8}"),
        ) {
            let segments = Segments::default();
            let compiled = [
                Rule {
                    constraints: vec![c("plan", "in", &["pro", "team"])],
                    serve: Some(rgb()),
                    ..Rule::default()
                }
                .compile(1, &variants())
                .expect("compiles"),
            ];
            let default = Serve::Variant("off".into()).compile(&variants(), "default").expect("compiles");
            let context = ctx(user.as_deref(), json!({"plan": plan}));
            let mut path = Vec::new();
            prop_assert_eq!(
                decide("k", &compiled, Some(&default), &context, &around(), &segments, None),
                decide("k", &compiled, Some(&default), &context, &around(), &segments, Some(&mut path))
            );
        }
    }
}
