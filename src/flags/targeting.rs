//! The v2 parts of a flag (DESIGN.md, "Flag model v2"): more variants than
//! `on` and `off`, the variant a flag serves when it is off, targeting rules,
//! the default serve and prerequisites.
//!
//! A flag without them ([`Flag::targeting`] is `None`) is a flag of today's
//! model and evaluates exactly as before. The variants `on` and `off` always
//! exist (they are `on_value` and `off_value`); [`Targeting::variants`] adds
//! named ones. [`Targeting::compile`] checks everything once, when the flag is
//! written or loaded, so that evaluation never parses.
//!
//! [`Flag::targeting`]: super::Flag::targeting

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::ValueType;
use super::rules::{
    CompiledRule, CompiledServe, MAX_RULES, MAX_VARIANTS, Rule, Serve, number_rule_attributes,
};
use super::validate::{
    MAX_VALUE_BYTES, ValidationError, contains_nul, is_valid_key, json_len, json_type_name,
    nul_error,
};
use crate::echo::truncate;

/// Most prerequisites one flag may have.
pub const MAX_PREREQUISITES: usize = 10;
/// Longest chain of prerequisites: a flag, the flags it requires, theirs,
/// and so on, this many flags deep at most (a write that would make a
/// longer chain, or a cycle, is refused).
pub const MAX_PREREQUISITE_DEPTH: usize = 5;
/// Longest variant name, in bytes.
pub const MAX_VARIANT_NAME: usize = 64;
/// The variant of `on_value`.
pub const ON: &str = "on";
/// The variant of `off_value`.
pub const OFF: &str = "off";

/// The v2 parts of a flag, as written and stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Targeting {
    /// Variants besides `on` and `off`, in order.
    pub variants: Vec<NamedVariant>,
    /// What a disabled flag, an environment that is not listed or an unmet
    /// prerequisite serves; `off` when empty.
    pub off_variant: String,
    /// Tried in order after target users and roles.
    pub rules: Vec<Rule>,
    /// What the flag serves when no rule matched; the flag's
    /// `rollout_percentage` (on/off) when absent.
    pub default_serve: Option<Serve>,
    /// Flags that must evaluate, for the same context, to one of the listed
    /// variants; otherwise the flag serves its off variant.
    pub prerequisites: Vec<Prerequisite>,
}

/// A named variant and its value (of the flag's type).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedVariant {
    /// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`, neither `on` nor `off`.
    pub name: String,
    /// Its value.
    pub value: Value,
}

/// Another flag this one requires.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prerequisite {
    /// The other flag's key.
    pub flag: String,
    /// Variants of that flag that satisfy this prerequisite.
    pub variants: Vec<String>,
}

/// A prerequisite, compiled.
#[derive(Clone, Debug)]
pub struct CompiledPrerequisite {
    /// The other flag's key.
    pub flag: String,
    /// Its variants that satisfy the prerequisite.
    pub variants: Box<[String]>,
}

/// The v2 parts, checked and compiled.
#[derive(Clone, Debug)]
pub struct CompiledTargeting {
    /// Every variant name: `on`, `off`, then the named ones.
    pub(super) names: Box<[String]>,
    /// The named variants' values (index 2 and up of `names`).
    pub(super) values: Box<[Value]>,
    /// Index of the off variant.
    pub(super) off_variant: usize,
    pub(super) rules: Box<[CompiledRule]>,
    pub(super) default_serve: Option<CompiledServe>,
    pub(super) prerequisites: Box<[CompiledPrerequisite]>,
    /// Whether a rule's own constraint reads the clock (a segment's are
    /// the segment's).
    pub(super) reads_time: bool,
}

/// Whether `name` can name a variant: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`.
pub fn is_valid_variant_name(name: &str) -> bool {
    match name.as_bytes().split_first() {
        Some((first, rest)) => {
            name.len() <= MAX_VARIANT_NAME
                && first.is_ascii_alphanumeric()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        }
        None => false,
    }
}

impl Targeting {
    /// Whether it says nothing today's model does not: such a flag is stored
    /// as a flag of today's model.
    pub fn is_legacy(&self) -> bool {
        self.variants.is_empty()
            && matches!(self.off_variant.as_str(), "" | OFF)
            && self.rules.is_empty()
            && self.default_serve.is_none()
            && self.prerequisites.is_empty()
    }

    /// The keys of the segments its rules name, each once.
    pub fn named_segments(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .rules
            .iter()
            .flat_map(|rule| rule.segments.iter().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The keys of the flags it requires.
    pub fn required_flags(&self) -> impl Iterator<Item = &str> {
        self.prerequisites.iter().map(|p| p.flag.as_str())
    }

    /// Checks and compiles it for flag `key` of type `value_type`; every
    /// problem, at most one per field, each naming the rule and constraint.
    /// Whether named segments and prerequisite flags exist is the writer's
    /// to check, against the database.
    pub fn compile(
        &self,
        key: &str,
        value_type: ValueType,
    ) -> Result<CompiledTargeting, Vec<ValidationError>> {
        let mut errors = Vec::new();

        let mut names = vec![ON.to_owned(), OFF.to_owned()];
        let mut values = Vec::with_capacity(self.variants.len());
        if self.variants.len() > MAX_VARIANTS - 2 {
            errors.push(ValidationError::new(
                "targeting.variants",
                format!(
                    "has {} variants; at most {} besides on and off",
                    self.variants.len(),
                    MAX_VARIANTS - 2
                ),
            ));
        } else {
            for (i, variant) in self.variants.iter().enumerate() {
                if let Err(error) = check_variant(i, variant, value_type, &names) {
                    errors.push(error);
                    break;
                }
                names.push(variant.name.clone());
                values.push(variant.value.clone());
            }
        }

        let off_variant = match self.off_variant.as_str() {
            "" => Some(1),
            name => {
                let at = names.iter().position(|n| n == name);
                if at.is_none() {
                    errors.push(ValidationError::new(
                        "targeting.off_variant",
                        format!(
                            "{:?} is not one of the flag's variants ({})",
                            truncate(name),
                            names.join(", ")
                        ),
                    ));
                }
                at
            }
        };

        let mut rules = Vec::with_capacity(self.rules.len());
        if self.rules.len() > MAX_RULES {
            errors.push(ValidationError::new(
                "targeting.rules",
                format!("has {} rules; at most {MAX_RULES}", self.rules.len()),
            ));
        } else {
            for (i, rule) in self.rules.iter().enumerate() {
                match rule.compile(i + 1, &names) {
                    Ok(rule) => rules.push(rule),
                    Err(err) => {
                        errors.push(ValidationError::new("targeting.rules", err.0));
                        break;
                    }
                }
            }
        }

        let default_serve = match &self.default_serve {
            None => None,
            Some(serve) => match serve.compile(&names, "the default serve") {
                Ok(serve) => Some(serve),
                Err(err) => {
                    errors.push(ValidationError::new("targeting.default_serve", err.0));
                    None
                }
            },
        };

        if let Some(error) = check_prerequisites(key, &self.prerequisites) {
            errors.push(error);
        }

        match off_variant {
            Some(off_variant) if errors.is_empty() => {
                number_rule_attributes(&mut rules);
                let reads_time = rules.iter().any(CompiledRule::reads_time);
                Ok(CompiledTargeting {
                    names: names.into(),
                    values: values.into(),
                    off_variant,
                    rules: rules.into(),
                    default_serve,
                    prerequisites: self
                        .prerequisites
                        .iter()
                        .map(|p| CompiledPrerequisite {
                            flag: p.flag.clone(),
                            variants: p.variants.clone().into(),
                        })
                        .collect(),
                    reads_time,
                })
            }
            _ => Err(errors),
        }
    }
}

/// Checks named variant number `i` against the names before it.
fn check_variant(
    i: usize,
    variant: &NamedVariant,
    value_type: ValueType,
    earlier: &[String],
) -> Result<(), ValidationError> {
    let field = "targeting.variants";
    let name = &variant.name;
    if !is_valid_variant_name(name) {
        return Err(ValidationError::new(
            field,
            format!(
                "variant {} ({:?}): a name is 1 to {MAX_VARIANT_NAME} characters of A-Z, a-z, \
                 0-9, '_', '.', '-', starting with a letter or digit",
                i + 1,
                truncate(name)
            ),
        ));
    }
    if earlier.iter().any(|n| n == name) {
        return Err(ValidationError::new(
            field,
            if name == ON || name == OFF {
                format!(
                    "variant {} ({name:?}): on and off are the flag's on_value and off_value; \
                     set those instead",
                    i + 1
                )
            } else {
                format!("variant {} ({name:?}) appears twice", i + 1)
            },
        ));
    }
    if contains_nul(&variant.value) {
        return Err(nul_error(field));
    }
    if json_len(&variant.value) > MAX_VALUE_BYTES {
        return Err(ValidationError::new(
            field,
            format!(
                "variant {name:?}: the value is {} bytes as JSON; the limit is {MAX_VALUE_BYTES}",
                json_len(&variant.value)
            ),
        ));
    }
    if !value_type.matches(&variant.value) {
        return Err(ValidationError::new(
            field,
            format!(
                "variant {name:?}: expected a {value_type} value for a {value_type} flag, got {}",
                json_type_name(&variant.value)
            ),
        ));
    }
    Ok(())
}

/// Checks the prerequisites of flag `key` by themselves (the chain through
/// other flags is checked where they are: see [`check_prerequisite_chain`]).
fn check_prerequisites(key: &str, prerequisites: &[Prerequisite]) -> Option<ValidationError> {
    let field = "targeting.prerequisites";
    if prerequisites.len() > MAX_PREREQUISITES {
        return Some(ValidationError::new(
            field,
            format!(
                "has {} prerequisites; at most {MAX_PREREQUISITES}",
                prerequisites.len()
            ),
        ));
    }
    prerequisites.iter().enumerate().find_map(|(i, p)| {
        let problem = if !is_valid_key(&p.flag) {
            format!("{:?} is not a valid flag key", truncate(&p.flag))
        } else if p.flag == key {
            "a flag cannot require itself".to_owned()
        } else if prerequisites[..i].iter().any(|q| q.flag == p.flag) {
            format!("flag {:?} is listed twice", p.flag)
        } else if p.variants.is_empty() {
            "lists no variants; name the variants of the other flag that satisfy it".to_owned()
        } else if p.variants.len() > MAX_VARIANTS {
            format!(
                "lists {} variants; at most {MAX_VARIANTS}",
                p.variants.len()
            )
        } else if let Some(bad) = p.variants.iter().find(|v| !is_valid_variant_name(v)) {
            format!("{:?} is not a valid variant name", truncate(bad))
        } else {
            return None;
        };
        Some(ValidationError::new(
            field,
            format!("prerequisite {}: {problem}", i + 1),
        ))
    })
}

/// Checks that flag `key`, requiring `required`, makes no cycle and no chain
/// of more than [`MAX_PREREQUISITE_DEPTH`] flags through it, given what every
/// other flag requires (`others`: key to required keys).
pub fn check_prerequisite_chain(
    key: &str,
    required: &[String],
    others: &HashMap<String, Vec<String>>,
) -> Result<(), ValidationError> {
    let field = "targeting.prerequisites";
    let down = |flag: &str| -> Vec<String> {
        if flag == key {
            required.to_vec()
        } else {
            others.get(flag).cloned().unwrap_or_default()
        }
    };
    let mut requiring: HashMap<&str, Vec<String>> = HashMap::new();
    for (flag, needs) in others.iter().filter(|(flag, _)| flag.as_str() != key) {
        for need in needs {
            requiring
                .entry(need.as_str())
                .or_default()
                .push(flag.clone());
        }
    }
    let up = |flag: &str| -> Vec<String> { requiring.get(flag).cloned().unwrap_or_default() };

    let below =
        longest_chain(key, &down, &mut Vec::new(), &mut HashMap::new()).map_err(|cycle| {
            ValidationError::new(field, format!("would make a cycle: {}", cycle.join(" -> ")))
        })?;
    let above = longest_chain(key, &up, &mut Vec::new(), &mut HashMap::new()).map_err(|cycle| {
        let mut cycle = cycle;
        cycle.reverse();
        ValidationError::new(field, format!("would make a cycle: {}", cycle.join(" -> ")))
    })?;
    let length = above.len() + below.len() - 1;
    if length > MAX_PREREQUISITE_DEPTH {
        let chain: Vec<&str> = above
            .iter()
            .rev()
            .chain(below.iter().skip(1))
            .map(String::as_str)
            .collect();
        return Err(ValidationError::new(
            field,
            format!(
                "would make a chain of {length} flags ({}); at most {MAX_PREREQUISITE_DEPTH}",
                chain.join(" -> ")
            ),
        ));
    }
    Ok(())
}

/// The longest chain of flags from `from` along `edges` (`from` first), or
/// the cycle met on the way. `done` remembers finished flags, so a graph
/// with many paths costs its size, not its number of paths.
fn longest_chain(
    from: &str,
    edges: &dyn Fn(&str) -> Vec<String>,
    path: &mut Vec<String>,
    done: &mut HashMap<String, Vec<String>>,
) -> Result<Vec<String>, Vec<String>> {
    if let Some(chain) = done.get(from) {
        return Ok(chain.clone());
    }
    path.push(from.to_owned());
    let mut best: Vec<String> = Vec::new();
    for next in edges(from) {
        if path.contains(&next) {
            let mut cycle = path.clone();
            cycle.push(next);
            return Err(cycle);
        }
        let chain = longest_chain(&next, edges, path, done)?;
        if chain.len() > best.len() {
            best = chain;
        }
    }
    path.pop();
    best.insert(0, from.to_owned());
    done.insert(from.to_owned(), best.clone());
    Ok(best)
}

/// Warnings for a change from `old` to `new` that reshuffles users of a
/// split: the same split (a rule's, by position, or the default one) with
/// another total weight puts users in new buckets, as in Unleash. Moving
/// weight with the total unchanged does not (a variant that gains keeps
/// its users).
pub fn reshuffle_warnings(old: Option<&Targeting>, new: Option<&Targeting>) -> Vec<String> {
    fn total(serve: Option<&Serve>) -> Option<u64> {
        match serve? {
            Serve::Split(split) => Some(split.weights.iter().map(|w| u64::from(w.weight)).sum()),
            Serve::Variant(_) => None,
        }
    }
    let (Some(old), Some(new)) = (old, new) else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    let mut compare = |what: String, before: Option<u64>, after: Option<u64>| {
        if let (Some(before), Some(after)) = (before, after)
            && before != after
        {
            warnings.push(format!(
                "{what}: the total weight changes from {before} to {after}, which moves users \
                 between variants; keep the total and move weight instead to keep them"
            ));
        }
    };
    for (i, (before, after)) in old.rules.iter().zip(&new.rules).enumerate() {
        compare(
            format!("rule {}'s split", i + 1),
            total(before.serve.as_ref()),
            total(after.serve.as_ref()),
        );
    }
    compare(
        "the default split".to_owned(),
        total(old.default_serve.as_ref()),
        total(new.default_serve.as_ref()),
    );
    warnings
}

impl CompiledTargeting {
    /// The name of variant `index`.
    pub fn name(&self, index: usize) -> &str {
        self.names.get(index).map_or(OFF, String::as_str)
    }

    /// Every variant name: `on`, `off`, then the named ones.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The value of named variant `index` (2 and up), if it is one.
    pub fn named_value(&self, index: usize) -> Option<&Value> {
        index.checked_sub(2).and_then(|at| self.values.get(at))
    }

    /// Whether it targets anyone (rules or prerequisites): a flag that does
    /// serves `DEFAULT` rather than `STATIC` from its default serve.
    pub fn targets(&self) -> bool {
        !self.rules.is_empty() || !self.prerequisites.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn variant(name: &str, value: Value) -> NamedVariant {
        NamedVariant {
            name: name.into(),
            value,
        }
    }

    #[test]
    fn variant_names_are_checked() {
        for good in ["red", "A", "v1.2", "x_y-z", &"a".repeat(64)] {
            assert!(is_valid_variant_name(good), "{good}");
        }
        for bad in ["", "-a", "a b", "é", &"a".repeat(65), "a/b"] {
            assert!(!is_valid_variant_name(bad), "{bad}");
        }
    }

    #[test]
    fn variants_must_have_the_flags_type_and_new_names() {
        let compile = |variants: Vec<NamedVariant>| {
            Targeting {
                variants,
                ..Targeting::default()
            }
            .compile("f", ValueType::String)
        };
        assert!(
            compile(vec![
                variant("red", json!("r")),
                variant("blue", json!("b"))
            ])
            .is_ok()
        );
        let errors = compile(vec![variant("red", json!(1))]).unwrap_err();
        assert!(
            errors[0].message.contains("expected a string value"),
            "{errors:?}"
        );
        let errors = compile(vec![variant("on", json!("x"))]).unwrap_err();
        assert!(errors[0].message.contains("on_value"), "{errors:?}");
        let errors =
            compile(vec![variant("red", json!("r")), variant("red", json!("s"))]).unwrap_err();
        assert!(errors[0].message.contains("appears twice"), "{errors:?}");
    }

    #[test]
    fn the_off_variant_must_exist() {
        let targeting = Targeting {
            variants: vec![variant("control", json!("c"))],
            off_variant: "control".into(),
            ..Targeting::default()
        };
        let compiled = targeting.compile("f", ValueType::String).expect("compiles");
        assert_eq!(compiled.name(compiled.off_variant), "control");
        let bad = Targeting {
            off_variant: "nope".into(),
            ..Targeting::default()
        };
        let errors = bad.compile("f", ValueType::Bool).unwrap_err();
        assert_eq!(errors[0].field, "targeting.off_variant");
    }

    #[test]
    fn a_bad_constraint_names_the_rule_and_the_constraint() {
        let targeting: Targeting = serde_json::from_value(json!({
            "rules": [
                {"name": "ok", "constraints": [{"attribute": "plan", "operator": "in", "values": ["pro"]}],
                 "serve": {"variant": "on"}},
                {"name": "app", "constraints": [
                    {"attribute": "plan", "operator": "in", "values": ["pro"]},
                    {"attribute": "version", "operator": "semver_gt", "values": ["1.x"]}
                ], "serve": {"variant": "on"}}
            ]
        }))
        .expect("json");
        let errors = targeting.compile("f", ValueType::Bool).unwrap_err();
        assert_eq!(errors[0].field, "targeting.rules");
        assert!(
            errors[0]
                .message
                .starts_with("rule 2 (\"app\"), constraint 2:"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn prerequisites_refuse_themselves_duplicates_and_empty_lists() {
        let check = |prerequisites: Vec<Prerequisite>| check_prerequisites("f", &prerequisites);
        let p = |flag: &str, variants: &[&str]| Prerequisite {
            flag: flag.into(),
            variants: variants.iter().map(|v| (*v).to_owned()).collect(),
        };
        assert!(check(vec![p("g", &["on"])]).is_none());
        assert!(check(vec![p("f", &["on"])]).is_some());
        assert!(check(vec![p("g", &["on"]), p("g", &["off"])]).is_some());
        assert!(check(vec![p("g", &[])]).is_some());
        assert!(check(vec![p("G!", &["on"])]).is_some());
    }

    #[test]
    fn chains_refuse_cycles_and_depth() {
        let graph = |edges: &[(&str, &[&str])]| -> HashMap<String, Vec<String>> {
            edges
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect()
        };
        let needs =
            |keys: &[&str]| -> Vec<String> { keys.iter().map(|s| (*s).to_owned()).collect() };
        let others = graph(&[("b", &["c"]), ("c", &["d"]), ("d", &[]), ("x", &["a"])]);
        // x -> a -> b -> c -> d: five flags, the most allowed.
        assert!(check_prerequisite_chain("a", &needs(&["b"]), &others).is_ok());
        let cycle = check_prerequisite_chain("a", &needs(&["x"]), &others).unwrap_err();
        assert!(
            cycle.message.contains("cycle: a -> x -> a"),
            "{}",
            cycle.message
        );
        // One more flag below, or above, is refused.
        let deeper = graph(&[("b", &["c"]), ("c", &["d"]), ("d", &["e"]), ("x", &["a"])]);
        let error = check_prerequisite_chain("a", &needs(&["b"]), &deeper).unwrap_err();
        assert!(
            error
                .message
                .contains("chain of 6 flags (x -> a -> b -> c -> d -> e)"),
            "{}",
            error.message
        );
        let higher = graph(&[("b", &["c"]), ("c", &["d"]), ("x", &["a"]), ("y", &["x"])]);
        assert!(check_prerequisite_chain("a", &needs(&["b"]), &higher).is_err());
        // A flag's own old edges do not count: only the new ones.
        let own = graph(&[("a", &["x"]), ("x", &[])]);
        assert!(check_prerequisite_chain("a", &needs(&["b"]), &own).is_ok());
    }

    #[test]
    fn a_new_total_weight_warns_and_moved_weight_does_not() {
        let split = |weights: &[u32]| -> Targeting {
            serde_json::from_value(json!({
                "variants": [{"name": "a", "value": true}, {"name": "b", "value": false}],
                "default_serve": {"split": {"weights": [
                    {"variant": "a", "weight": weights[0]},
                    {"variant": "b", "weight": weights[1]}
                ]}}
            }))
            .expect("targeting")
        };
        let before = split(&[50, 50]);
        assert!(reshuffle_warnings(Some(&before), Some(&split(&[70, 30]))).is_empty());
        let warnings = reshuffle_warnings(Some(&before), Some(&split(&[50, 25])));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("the default split: the total weight changes from 100 to 75")
        );
        assert!(reshuffle_warnings(None, Some(&before)).is_empty());
    }
}
