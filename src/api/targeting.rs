//! Protobuf <-> model for a flag's v2 parts (`FlagTargeting`) and for the
//! explain path. Only shapes are translated here: the rules (names, limits,
//! constraint operands) are checked by `flags::Targeting::compile`.

use crate::api::convert::{from_pb_value, to_pb_value};
use crate::api::error::ApiError;
use crate::api::invalid;
use crate::api::pb::readyd::v1 as pb;
use crate::flags::rules::{Rule, Serve, Split, Weight};
use crate::flags::segment::Segment;
use crate::flags::{Constraint, NamedVariant, Prerequisite, Step, Targeting};

impl From<&Targeting> for pb::FlagTargeting {
    fn from(targeting: &Targeting) -> Self {
        pb::FlagTargeting {
            variants: targeting
                .variants
                .iter()
                .map(|variant| pb::FlagVariant {
                    name: variant.name.clone(),
                    value: Some(to_pb_value(&variant.value)),
                })
                .collect(),
            off_variant: targeting.off_variant.clone(),
            rules: targeting
                .rules
                .iter()
                .map(|rule| pb::TargetingRule {
                    name: rule.name.clone(),
                    constraints: rule.constraints.iter().map(pb_constraint).collect(),
                    segments: rule.segments.clone(),
                    serve: rule.serve.as_ref().map(pb_serve),
                })
                .collect(),
            default_serve: targeting.default_serve.as_ref().map(pb_serve),
            prerequisites: targeting
                .prerequisites
                .iter()
                .map(|p| pb::Prerequisite {
                    flag: p.flag.clone(),
                    variants: p.variants.clone(),
                })
                .collect(),
        }
    }
}

/// A constraint as written.
pub fn constraint(c: pb::Constraint) -> Constraint {
    Constraint {
        attribute: c.attribute,
        operator: c.operator,
        values: c.values,
        inverted: c.inverted,
        case_insensitive: c.case_insensitive,
    }
}

impl From<&Segment> for pb::Segment {
    fn from(segment: &Segment) -> Self {
        pb::Segment {
            key: segment.key.clone(),
            description: segment.description.clone(),
            constraints: segment.constraints.iter().map(pb_constraint).collect(),
            version: segment.version,
            updated_at: Some(crate::api::convert::to_timestamp(segment.updated_at)),
            updated_by: segment.updated_by.clone(),
        }
    }
}

/// A constraint as the API shows it.
pub fn pb_constraint(constraint: &Constraint) -> pb::Constraint {
    pb::Constraint {
        attribute: constraint.attribute.clone(),
        operator: constraint.operator.clone(),
        values: constraint.values.clone(),
        inverted: constraint.inverted,
        case_insensitive: constraint.case_insensitive,
    }
}

fn pb_serve(serve: &Serve) -> pb::Serve {
    pb::Serve {
        serve: Some(match serve {
            Serve::Variant(variant) => pb::serve::Serve::Variant(variant.clone()),
            Serve::Split(split) => pb::serve::Serve::Split(pb::WeightedSplit {
                weights: split
                    .weights
                    .iter()
                    .map(|w| pb::VariantWeight {
                        variant: w.variant.clone(),
                        weight: w.weight,
                    })
                    .collect(),
                stickiness: split.stickiness.clone(),
            }),
        }),
    }
}

/// A serve as written; an empty one serves nothing (refused when checked).
fn serve(serve: pb::Serve) -> Option<Serve> {
    serve.serve.map(|serve| match serve {
        pb::serve::Serve::Variant(variant) => Serve::Variant(variant),
        pb::serve::Serve::Split(split) => Serve::Split(Split {
            weights: split
                .weights
                .into_iter()
                .map(|w| Weight {
                    variant: w.variant,
                    weight: w.weight,
                })
                .collect(),
            stickiness: split.stickiness,
        }),
    })
}

impl TryFrom<pb::FlagTargeting> for Targeting {
    type Error = ApiError;

    fn try_from(targeting: pb::FlagTargeting) -> Result<Self, ApiError> {
        let variants = targeting
            .variants
            .into_iter()
            .enumerate()
            .map(|(i, variant)| {
                let value = variant
                    .value
                    .ok_or_else(|| format!("variant {} has no value", i + 1))
                    .and_then(from_pb_value)
                    .map_err(|m| invalid("targeting.variants", m))?;
                Ok(NamedVariant {
                    name: variant.name,
                    value,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(Targeting {
            variants,
            off_variant: targeting.off_variant,
            rules: targeting
                .rules
                .into_iter()
                .map(|rule| Rule {
                    name: rule.name,
                    constraints: rule.constraints.into_iter().map(constraint).collect(),
                    segments: rule.segments,
                    serve: rule.serve.and_then(serve),
                })
                .collect(),
            // An empty Serve message is no default serve.
            default_serve: targeting.default_serve.and_then(serve),
            prerequisites: targeting
                .prerequisites
                .into_iter()
                .map(|p| Prerequisite {
                    flag: p.flag,
                    variants: p.variants,
                })
                .collect(),
        })
    }
}

impl From<&Step> for pb::ExplainStep {
    fn from(step: &Step) -> Self {
        pb::ExplainStep {
            step: step.kind().to_owned(),
            rule: step
                .rule_number()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            detail: step.to_string(),
        }
    }
}
