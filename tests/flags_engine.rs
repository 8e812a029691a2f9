//! Tests of the feature-flag engine (`readyd::flags`) against independent
//! reference implementations written here: a plain `if` chain for the
//! evaluation order, a straightforward murmur3 x86_32 port for the bucket,
//! and character-level checks for keys and environments. The engine and the
//! references share no code, so a bug would have to be made twice, the same
//! way, to go unnoticed.

use chrono::DateTime;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use readyd::flags::{
    CompiledFlag, EvaluationContext, Flag, FlagDraft, NoFlags, Reason, ValueType, bucket, evaluate,
    is_valid_environment, is_valid_key,
};

/// The two variants of a flag of the first model, as the reference names
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    On,
    Off,
}

impl Variant {
    /// The variant the engine named.
    fn named(name: &str) -> Variant {
        match name {
            "on" => Variant::On,
            "off" => Variant::Off,
            other => panic!("a flag of the first model has no variant {other:?}"),
        }
    }
}
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Reference murmur3 x86_32 and bucket
// ---------------------------------------------------------------------------

/// MurmurHash3_x86_32, ported line by line from Austin Appleby's
/// MurmurHash3.cpp (public domain): 4-byte little-endian blocks, a 1..3-byte
/// tail, then the `fmix32` finalizer.
fn ref_murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h1 = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k1 = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k1 = k1.wrapping_mul(C1);
        k1 = k1.rotate_left(15);
        k1 = k1.wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1.rotate_left(13);
        h1 = h1.wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    let mut k1: u32 = 0;
    if tail.len() >= 3 {
        k1 ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        k1 ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        k1 ^= u32::from(tail[0]);
        k1 = k1.wrapping_mul(C1);
        k1 = k1.rotate_left(15);
        k1 = k1.wrapping_mul(C2);
        h1 ^= k1;
    }
    // The reference takes the length as a 32-bit int.
    h1 ^= data.len() as u32;
    h1 ^= h1 >> 16;
    h1 = h1.wrapping_mul(0x85eb_ca6b);
    h1 ^= h1 >> 13;
    h1 = h1.wrapping_mul(0xc2b2_ae35);
    h1 ^= h1 >> 16;
    h1
}

/// Unleash's normalized value, written the obvious way (with the joined
/// string the library avoids allocating).
fn ref_bucket(flag_key: &str, user_id: &str) -> u32 {
    ref_murmur3_x86_32(format!("{flag_key}:{user_id}").as_bytes(), 0) % 100 + 1
}

/// The bucket as yggdrasil computes it (`murmur3_32` over a `Cursor` of
/// the joined string), to show compatibility with Unleash's engine directly.
fn yggdrasil_bucket(flag_key: &str, user_id: &str) -> u32 {
    let joined = format!("{flag_key}:{user_id}");
    murmur3::murmur3_32(&mut std::io::Cursor::new(joined), 0).unwrap() % 100 + 1
}

#[test]
fn the_reference_murmur3_matches_published_vectors() {
    // Widely published MurmurHash3_x86_32 test vectors; they pin the
    // reference itself so that the comparisons below mean something.
    assert_eq!(ref_murmur3_x86_32(b"", 0), 0);
    assert_eq!(ref_murmur3_x86_32(b"", 1), 0x514e_28b7);
    assert_eq!(ref_murmur3_x86_32(b"", 0xffff_ffff), 0x81f1_6f39);
    assert_eq!(ref_murmur3_x86_32(b"hello", 0), 0x248b_fa47);
    assert_eq!(ref_murmur3_x86_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
    assert_eq!(
        ref_murmur3_x86_32(b"The quick brown fox jumps over the lazy dog", 0),
        0x2e4f_f723
    );
}

#[test]
fn golden_bucket_vectors() {
    let golden = [
        ("ai_insights", "user-1", 68),
        ("dark_mode", "alice@example.com", 46),
        ("checkout.v2", "42", 52),
    ];
    for (key, user, expected) in golden {
        assert_eq!(bucket(key, user), expected, "{key}/{user}");
        assert_eq!(ref_bucket(key, user), expected, "reference {key}/{user}");
        assert_eq!(
            yggdrasil_bucket(key, user),
            expected,
            "yggdrasil {key}/{user}"
        );
    }
}

#[test]
fn bucket_agrees_with_the_reference_on_fixed_vectors() {
    // Lengths 0..=8 after the join cover every tail length (0..3 bytes) and
    // the block/tail boundary, plus multi-byte UTF-8 and long inputs.
    let vectors = [
        ("", ""),
        ("a", ""),
        ("", "b"),
        ("a", "b"),
        ("ab", "c"),
        ("abc", "de"),
        ("new_checkout", "user-123"),
        ("search.v3", "bob@example.org"),
        ("beta-banner", "00000000-0000-0000-0000-000000000000"),
        ("pricing", "ユーザー"),
        ("émoji", "🚀🚀"),
        ("x", &"long-user-id-".repeat(40)),
    ];
    for (key, user) in vectors {
        assert_eq!(bucket(key, user), ref_bucket(key, user), "{key:?}/{user:?}");
        assert_eq!(
            bucket(key, user),
            yggdrasil_bucket(key, user),
            "{key:?}/{user:?}"
        );
    }
}

#[test]
fn bucket_is_uniform_over_100_000_users() {
    // One hash per user; the share on at p is the cumulative histogram.
    const N: u64 = 100_000;
    let mut per_bucket = [0u64; 101];
    for i in 0..N {
        per_bucket[bucket("uniformity", &format!("user-{i}")) as usize] += 1;
    }
    assert_eq!(per_bucket[0], 0, "buckets start at 1");
    let mut on = 0u64;
    for p in 1..=99u64 {
        on += per_bucket[p as usize];
        // With a good hash each user is on with probability q = p/100,
        // independently, so the count is Binomial(N, q): mean N·q, standard
        // deviation sqrt(N·q·(1−q)), at most 158 users (0.16 %) at q = 0.5.
        // Five sigma (≤ 791 users, 0.79 %) has a two-sided tail of 5.7e-7
        // per percentage, so across 99 percentages a sound hash would fail
        // with probability < 1e-4 — and since the ids and the hash are
        // fixed, the outcome is deterministic anyway: the test cannot flake,
        // it either always passes or always fails. A broken hash (constant,
        // truncated input, modulo bias from a tiny range) misses by far more.
        let q = p as f64 / 100.0;
        let mean = N as f64 * q;
        let tolerance = 5.0 * (N as f64 * q * (1.0 - q)).sqrt();
        let diff = (on as f64 - mean).abs();
        assert!(
            diff <= tolerance,
            "at {p} %: {on} users on, expected {mean} ± {tolerance:.0}"
        );
    }
}

// ---------------------------------------------------------------------------
// Reference evaluation
// ---------------------------------------------------------------------------

/// The priority list as a straightforward `if` chain over the plain flag's
/// `Vec`s, with the reference bucket.
fn ref_evaluate(flag: &Flag, environment: &str, ctx: &EvaluationContext) -> (Variant, Reason) {
    let user = match &ctx.user_id {
        Some(u) if !u.is_empty() => Some(u.clone()),
        _ => None,
    };
    if !flag.enabled {
        return (Variant::Off, Reason::Disabled);
    }
    if !flag.environments.is_empty() && !flag.environments.iter().any(|e| e == environment) {
        return (Variant::Off, Reason::Disabled);
    }
    if let Some(u) = &user
        && flag.target_users.contains(u)
    {
        return (Variant::On, Reason::TargetingMatch);
    }
    for role in &ctx.roles {
        if flag.target_roles.contains(role) {
            return (Variant::On, Reason::TargetingMatch);
        }
    }
    if flag.rollout_percentage == 100 {
        if flag.target_users.is_empty() && flag.target_roles.is_empty() {
            return (Variant::On, Reason::Static);
        }
        return (Variant::On, Reason::Default);
    }
    if flag.rollout_percentage == 0 {
        return (Variant::Off, Reason::Default);
    }
    match user {
        None => (Variant::Off, Reason::Default),
        Some(u) => {
            if ref_bucket(&flag.key, &u) <= u32::from(flag.rollout_percentage) {
                (Variant::On, Reason::Split)
            } else {
                (Variant::Off, Reason::Split)
            }
        }
    }
}

const ENVIRONMENTS: &[&str] = &["dev", "staging", "prod"];
const USERS: &[&str] = &["alice", "bob", "carol", "dave", "erin"];
const ROLES: &[&str] = &["admin", "beta", "staff", "support"];

/// A value type with a matching pair of (different) on/off values.
fn typed_values() -> impl Strategy<Value = (ValueType, Value, Value)> {
    prop_oneof![
        any::<bool>().prop_map(|b| (ValueType::Bool, json!(b), json!(!b))),
        ("[a-z]{0,8}", "[A-Z]{1,8}").prop_map(|(a, b)| (ValueType::String, json!(a), json!(b))),
        (any::<i64>(), -1e6f64..1e6).prop_map(|(a, b)| (ValueType::Number, json!(a), json!(b))),
        ("[a-z]{1,5}", any::<u8>()).prop_map(|(k, v)| (
            ValueType::Object,
            json!({ k.clone(): v }),
            json!({ "off": true, k: null })
        )),
    ]
}

fn rollout() -> impl Strategy<Value = u8> {
    prop_oneof![Just(0u8), 1..=99u8, Just(100u8)]
}

fn arb_flag() -> impl Strategy<Value = Flag> {
    (
        "[a-z][a-z0-9_.-]{0,20}",
        any::<bool>(),
        typed_values(),
        subsequence(ENVIRONMENTS, 0..=ENVIRONMENTS.len()),
        subsequence(USERS, 0..=3),
        subsequence(ROLES, 0..=2),
        rollout(),
        0..1_000_000i64,
    )
        .prop_map(
            |(key, enabled, (value_type, on_value, off_value), envs, users, roles, rollout, v)| {
                Flag {
                    targeting: None,
                    client_visible: false,
                    permanent: false,
                    created_at: chrono::DateTime::UNIX_EPOCH,
                    key,
                    description: String::new(),
                    enabled,
                    value_type,
                    on_value,
                    off_value,
                    environments: envs.iter().map(|s| s.to_string()).collect(),
                    target_users: users.iter().map(|s| s.to_string()).collect(),
                    target_roles: roles.iter().map(|s| s.to_string()).collect(),
                    rollout_percentage: rollout,
                    version: v,
                    updated_at: DateTime::UNIX_EPOCH,
                    updated_by: "proptest".to_owned(),
                }
            },
        )
}

fn arb_context() -> impl Strategy<Value = EvaluationContext> {
    let user = prop_oneof![
        Just(None),
        Just(Some(String::new())),
        select(USERS).prop_map(|u| Some(u.to_owned())),
        "[a-z0-9@.-]{1,16}".prop_map(Some),
    ];
    (user, subsequence(ROLES, 0..=ROLES.len())).prop_map(|(user_id, roles)| EvaluationContext {
        user_id,
        roles: roles.iter().map(|s| s.to_string()).collect(),
        attributes: Default::default(),
    })
}

fn arb_environment() -> impl Strategy<Value = String> {
    prop_oneof![
        select(ENVIRONMENTS).prop_map(str::to_owned),
        Just("other".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Property 8: the engine agrees with the reference priority list.
    #[test]
    fn engine_agrees_with_the_reference(
        flag in arb_flag(),
        environment in arb_environment(),
        ctx in arb_context(),
    ) {
        let (variant, reason) = ref_evaluate(&flag, &environment, &ctx);
        let compiled = CompiledFlag::new(flag.clone()).expect("a valid flag");
        let got = evaluate(&compiled, &environment, &ctx, &NoFlags);
        prop_assert_eq!((Variant::named(got.variant), got.reason), (variant, reason));
        let expected_value = match variant {
            Variant::On => &flag.on_value,
            Variant::Off => &flag.off_value,
        };
        prop_assert_eq!(got.value, expected_value);
        prop_assert_eq!(got.flag_version, flag.version);
    }

    /// A user is on exactly from the percentage equal to their bucket up.
    /// Random rollouts rarely land on that boundary, so it gets its own
    /// property (it catches `<` written for `<=`).
    #[test]
    fn a_user_is_on_from_their_bucket_up(
        key in "[a-z][a-z0-9_.-]{0,30}",
        user in "\\PC{1,24}",
    ) {
        let b = ref_bucket(&key, &user);
        let ctx = EvaluationContext::for_user(user.clone());
        let at = |p: u32| {
            let flag = CompiledFlag::new(plain_flag(&key, p as u8)).expect("a valid flag");
            let e = evaluate(&flag, "prod", &ctx, &NoFlags);
            (Variant::named(e.variant), e.reason)
        };
        if b < 100 {
            prop_assert_eq!(at(b), (Variant::On, Reason::Split));
        }
        if b > 1 {
            prop_assert_eq!(at(b - 1), (Variant::Off, Reason::Split));
        }
    }

    /// Raising the percentage never turns a user off.
    #[test]
    fn rollout_is_monotonic(
        key in "[a-z][a-z0-9_.-]{0,30}",
        user in "\\PC{1,24}",
        a in 0..=100u8,
        b in 0..=100u8,
    ) {
        let (low, high) = (a.min(b), a.max(b));
        let at = |p: u8| {
            let flag = CompiledFlag::new(plain_flag(&key, p)).expect("a valid flag");
            Variant::named(evaluate(&flag, "prod", &EvaluationContext::for_user(user.clone()), &NoFlags).variant)
        };
        if at(low) == Variant::On {
            prop_assert_eq!(at(high), Variant::On);
        }
    }

    /// Same inputs, same answer, across separately compiled copies.
    #[test]
    fn rollout_is_deterministic(
        key in "[a-z][a-z0-9_.-]{0,30}",
        user in "\\PC{1,24}",
        p in 0..=100u8,
    ) {
        let ctx = EvaluationContext::for_user(user.clone());
        let one = CompiledFlag::new(plain_flag(&key, p)).expect("a valid flag");
        let two = CompiledFlag::new(plain_flag(&key, p)).expect("a valid flag");
        prop_assert_eq!(evaluate(&one, "prod", &ctx, &NoFlags), evaluate(&two, "prod", &ctx, &NoFlags));
        prop_assert_eq!(bucket(&key, &user), bucket(&key, &user));
    }

    /// The library bucket equals the reference murmur3 bucket on arbitrary
    /// Unicode input, and the bucket yggdrasil (Unleash's Rust engine)
    /// computes with the `murmur3` crate over the joined string.
    #[test]
    fn bucket_matches_the_reference(key in any::<String>(), user in any::<String>()) {
        let expected = ref_bucket(&key, &user);
        prop_assert_eq!(bucket(&key, &user), expected);
        prop_assert_eq!(yggdrasil_bucket(&key, &user), expected);
    }
}

/// An enabled bool flag without targeting at `rollout` percent.
fn plain_flag(key: &str, rollout: u8) -> Flag {
    Flag {
        targeting: None,
        client_visible: false,
        permanent: false,
        created_at: chrono::DateTime::UNIX_EPOCH,
        key: key.to_owned(),
        description: String::new(),
        enabled: true,
        value_type: ValueType::Bool,
        on_value: json!(true),
        off_value: json!(false),
        environments: vec![],
        target_users: vec![],
        target_roles: vec![],
        rollout_percentage: rollout,
        version: 1,
        updated_at: DateTime::UNIX_EPOCH,
        updated_by: "test".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Evaluation table tests
// ---------------------------------------------------------------------------

fn eval(flag: Flag, environment: &str, ctx: &EvaluationContext) -> (Variant, Reason) {
    let compiled = CompiledFlag::new(flag).expect("a valid flag");
    let e = evaluate(&compiled, environment, ctx, &NoFlags);
    (Variant::named(e.variant), e.reason)
}

fn targeted(rollout: u8) -> Flag {
    Flag {
        target_users: vec!["alice".into()],
        target_roles: vec!["beta".into()],
        ..plain_flag("targeted", rollout)
    }
}

#[test]
fn a_disabled_flag_is_off_even_for_targeted_users() {
    let flag = Flag {
        enabled: false,
        ..targeted(100)
    };
    let ctx = EvaluationContext::for_user("alice").with_roles(["beta"]);
    assert_eq!(eval(flag, "prod", &ctx), (Variant::Off, Reason::Disabled));
}

#[test]
fn a_flag_outside_its_environments_is_disabled() {
    let flag = Flag {
        environments: vec!["staging".into()],
        ..targeted(100)
    };
    let ctx = EvaluationContext::for_user("alice");
    assert_eq!(
        eval(flag.clone(), "prod", &ctx),
        (Variant::Off, Reason::Disabled)
    );
    assert_eq!(
        eval(flag, "staging", &ctx),
        (Variant::On, Reason::TargetingMatch)
    );
}

#[test]
fn no_environments_means_every_environment() {
    let ctx = EvaluationContext::default();
    assert_eq!(
        eval(plain_flag("f", 100), "anything", &ctx),
        (Variant::On, Reason::Static)
    );
}

#[test]
fn targeted_users_win_over_rollout() {
    let ctx = EvaluationContext::for_user("alice");
    assert_eq!(
        eval(targeted(0), "prod", &ctx),
        (Variant::On, Reason::TargetingMatch)
    );
}

#[test]
fn targeted_roles_win_over_rollout() {
    let ctx = EvaluationContext::for_user("zed").with_roles(["viewer", "beta"]);
    assert_eq!(
        eval(targeted(0), "prod", &ctx),
        (Variant::On, Reason::TargetingMatch)
    );
    let anonymous = EvaluationContext::default().with_roles(["beta"]);
    assert_eq!(
        eval(targeted(0), "prod", &anonymous),
        (Variant::On, Reason::TargetingMatch)
    );
}

#[test]
fn full_rollout_without_targeting_is_static() {
    let ctx = EvaluationContext::for_user("anyone");
    assert_eq!(
        eval(plain_flag("f", 100), "prod", &ctx),
        (Variant::On, Reason::Static)
    );
}

#[test]
fn full_rollout_with_unmatched_targeting_is_default() {
    let ctx = EvaluationContext::for_user("zed");
    assert_eq!(
        eval(targeted(100), "prod", &ctx),
        (Variant::On, Reason::Default)
    );
}

#[test]
fn zero_rollout_is_off_by_default() {
    let ctx = EvaluationContext::for_user("zed");
    assert_eq!(
        eval(targeted(0), "prod", &ctx),
        (Variant::Off, Reason::Default)
    );
}

#[test]
fn partial_rollout_splits_by_bucket() {
    // bucket("ai_insights", "user-1") is 68: on at 68 %, off at 67 %.
    let ctx = EvaluationContext::for_user("user-1");
    assert_eq!(
        eval(plain_flag("ai_insights", 68), "prod", &ctx),
        (Variant::On, Reason::Split)
    );
    assert_eq!(
        eval(plain_flag("ai_insights", 67), "prod", &ctx),
        (Variant::Off, Reason::Split)
    );
}

#[test]
fn partial_rollout_without_a_user_id_is_off_by_default() {
    for ctx in [
        EvaluationContext::default(),
        EvaluationContext::for_user(""),
    ] {
        assert_eq!(
            eval(plain_flag("f", 99), "prod", &ctx),
            (Variant::Off, Reason::Default)
        );
    }
}

#[test]
fn on_and_off_return_the_flags_values() {
    let flag = CompiledFlag::new(Flag {
        value_type: ValueType::Object,
        on_value: json!({"color": "blue"}),
        off_value: json!({"color": "grey"}),
        ..targeted(0)
    })
    .expect("a valid flag");
    let on = evaluate(
        &flag,
        "prod",
        &EvaluationContext::for_user("alice"),
        &NoFlags,
    );
    assert_eq!(on.value, &json!({"color": "blue"}));
    let off = evaluate(&flag, "prod", &EvaluationContext::for_user("zed"), &NoFlags);
    assert_eq!(off.value, &json!({"color": "grey"}));
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// The key rule, character by character, as the regex reads.
fn ref_is_valid_key(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    !chars.is_empty()
        && chars.len() <= 128
        && (chars[0].is_ascii_lowercase() || chars[0].is_ascii_digit())
        && chars[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(*c))
}

/// The environment rule, character by character.
fn ref_is_valid_environment(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    !chars.is_empty()
        && chars.len() <= 64
        && (chars[0].is_ascii_lowercase() || chars[0].is_ascii_digit())
        && chars[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(*c))
}

/// Strings near the key alphabet (so that valid and invalid both occur
/// often), plus fully arbitrary ones.
fn key_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.A-Z -]{0,130}",
        "[a-z0-9][a-z0-9_.-]{120,130}",
        any::<String>(),
        "[a-z0-9]\\PC{0,3}",
    ]
}

/// A JSON value of a different type than `value_type`.
fn mismatched(value_type: ValueType) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(true)),
        Just(json!("text")),
        Just(json!(3.5)),
        Just(json!({"a": 1})),
        Just(json!(null)),
        Just(json!([1, 2])),
    ]
    .prop_filter("must not match the type", move |v| !value_type.matches(v))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn keys_from_the_regex_are_accepted(key in "[a-z0-9][a-z0-9_.-]{0,127}") {
        prop_assert!(is_valid_key(&key));
        prop_assert!(FlagDraft::new(key).validate().is_ok());
    }

    #[test]
    fn key_validation_agrees_with_the_reference(key in key_like()) {
        let valid = ref_is_valid_key(&key);
        prop_assert_eq!(is_valid_key(&key), valid);
        match FlagDraft::new(key).validate() {
            Ok(_) => prop_assert!(valid),
            Err(errors) => {
                prop_assert!(!valid);
                prop_assert_eq!(errors.fields().collect::<Vec<_>>(), vec!["key"]);
            }
        }
    }

    #[test]
    fn environment_validation_agrees_with_the_reference(
        env in prop_oneof!["[a-z0-9][a-z0-9_-]{0,63}", "[a-z0-9_.A-Z -]{0,70}", any::<String>()],
    ) {
        let valid = ref_is_valid_environment(&env);
        prop_assert_eq!(is_valid_environment(&env), valid);
        let result = FlagDraft { environments: vec!["prod".into(), env], ..FlagDraft::new("k") }
            .validate();
        prop_assert_eq!(result.is_ok(), valid);
        if let Err(errors) = result {
            prop_assert_eq!(errors.fields().collect::<Vec<_>>(), vec!["environments"]);
        }
    }

    #[test]
    fn a_type_mismatch_names_the_value(
        (value_type, on, off, wrong) in typed_values()
            .prop_flat_map(|(t, on, off)| (Just(t), Just(on), Just(off), mismatched(t))),
        bad in any::<bool>(),
    ) {
        let base = FlagDraft {
            value_type: Some(value_type),
            on_value: Some(on),
            off_value: Some(off),
            ..FlagDraft::new("k")
        };
        prop_assert!(base.clone().validate().is_ok());
        let (draft, field) = if bad {
            (FlagDraft { on_value: Some(wrong), ..base }, "on_value")
        } else {
            (FlagDraft { off_value: Some(wrong), ..base }, "off_value")
        };
        let errors = draft.validate().unwrap_err();
        prop_assert_eq!(errors.fields().collect::<Vec<_>>(), vec![field]);
    }

    #[test]
    fn rollout_in_range_is_accepted_and_above_is_rejected(p in prop_oneof![0..=100u32, 101..=u32::MAX]) {
        let result = FlagDraft { rollout_percentage: Some(p), ..FlagDraft::new("k") }.validate();
        if p <= 100 {
            prop_assert_eq!(result.unwrap().rollout_percentage(), p as u8);
        } else {
            let errors = result.unwrap_err();
            prop_assert_eq!(errors.fields().collect::<Vec<_>>(), vec!["rollout_percentage"]);
        }
    }

    #[test]
    fn target_entries_must_be_non_empty_and_short(
        entry in prop_oneof!["\\PC{0,3}", "[a-z]{250,260}", "é{127,129}"],
        roles in any::<bool>(),
    ) {
        let ok = !entry.is_empty() && entry.len() <= 256;
        let field = if roles { "target_roles" } else { "target_users" };
        let draft = if roles {
            FlagDraft { target_roles: vec![entry], ..FlagDraft::new("k") }
        } else {
            FlagDraft { target_users: vec![entry], ..FlagDraft::new("k") }
        };
        match draft.validate() {
            Ok(_) => prop_assert!(ok),
            Err(errors) => {
                prop_assert!(!ok);
                prop_assert_eq!(errors.fields().collect::<Vec<_>>(), vec![field]);
            }
        }
    }
}

#[test]
fn rollout_101_names_rollout_percentage() {
    let errors = FlagDraft {
        rollout_percentage: Some(101),
        ..FlagDraft::new("k")
    }
    .validate()
    .unwrap_err();
    assert_eq!(errors.errors().len(), 1);
    assert_eq!(errors.errors()[0].field, "rollout_percentage");
    assert!(errors.to_string().starts_with("rollout_percentage: "));
}

#[test]
fn too_many_targets_are_rejected() {
    let users = |n: usize| (0..n).map(|i| format!("user-{i}")).collect::<Vec<_>>();
    let ok = FlagDraft {
        target_users: users(10_000),
        target_roles: users(1_000),
        ..FlagDraft::new("k")
    };
    assert!(ok.validate().is_ok());

    let errors = FlagDraft {
        target_users: users(10_001),
        ..FlagDraft::new("k")
    }
    .validate()
    .unwrap_err();
    assert_eq!(errors.fields().collect::<Vec<_>>(), ["target_users"]);

    let errors = FlagDraft {
        target_roles: users(1_001),
        ..FlagDraft::new("k")
    }
    .validate()
    .unwrap_err();
    assert_eq!(errors.fields().collect::<Vec<_>>(), ["target_roles"]);
}

#[test]
fn defaults_apply_when_fields_are_omitted() {
    let valid = FlagDraft::new("fresh").validate().unwrap();
    assert_eq!(valid.key(), "fresh");
    assert_eq!(valid.description(), "");
    assert!(!valid.enabled());
    assert_eq!(valid.value_type(), ValueType::Bool);
    assert_eq!(valid.on_value(), &json!(true));
    assert_eq!(valid.off_value(), &json!(false));
    assert!(valid.environments().is_empty());
    assert!(valid.target_users().is_empty());
    assert!(valid.target_roles().is_empty());
    assert_eq!(valid.rollout_percentage(), 100);

    // The same from JSON with every optional field left out.
    let draft: FlagDraft = serde_json::from_value(json!({"key": "fresh"})).unwrap();
    assert_eq!(draft.validate().unwrap(), valid);
}

#[test]
fn non_bool_flags_require_both_values() {
    for value_type in [ValueType::String, ValueType::Number, ValueType::Object] {
        let errors = FlagDraft {
            value_type: Some(value_type),
            ..FlagDraft::new("k")
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            errors.fields().collect::<Vec<_>>(),
            ["on_value", "off_value"],
            "{value_type}"
        );
    }
}

#[test]
fn a_long_description_is_rejected() {
    let at_limit = FlagDraft {
        description: "d".repeat(1024),
        ..FlagDraft::new("k")
    };
    assert!(at_limit.validate().is_ok());
    let errors = FlagDraft {
        description: "é".repeat(513),
        ..FlagDraft::new("k")
    }
    .validate()
    .unwrap_err();
    assert_eq!(errors.fields().collect::<Vec<_>>(), ["description"]);
}

#[test]
fn every_broken_rule_is_reported_in_field_order() {
    let errors = FlagDraft {
        key: "Bad Key".into(),
        value_type: Some(ValueType::Number),
        on_value: Some(json!("one")),
        off_value: None,
        environments: vec!["prod".into(), "Prod".into()],
        target_users: vec![String::new()],
        target_roles: vec!["r".repeat(257)],
        rollout_percentage: Some(500),
        ..FlagDraft::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        errors.fields().collect::<Vec<_>>(),
        [
            "key",
            "on_value",
            "off_value",
            "environments",
            "target_users",
            "target_roles",
            "rollout_percentage"
        ]
    );
}
