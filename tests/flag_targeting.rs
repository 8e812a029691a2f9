//! Flag model v2 end to end (DESIGN.md, "Flag model v2"), over real gRPC and
//! a real PostgreSQL: named variants, rules, weighted splits, prerequisites
//! and explain through `EvaluateFlag` and the flagd protocol; an old
//! client's write that keeps the v2 parts; refusals that name the rule and
//! constraint and change nothing; the model mark that keeps binaries of the
//! first model from serving v2 rows; and a v2 flag reaching a second server
//! through the change feed.

mod support;

use std::collections::BTreeMap;

use prost_types::value::Kind;
use readyd::api::convert::{from_pb_value, to_pb_value};
use readyd::api::pb::flagd::evaluation_v2 as flagd;
use readyd::api::pb::readyd::v1 as pb;
use serde_json::{Value, json};
use support::{TestDb, TestServer, admin, admin_serve_args, next};
use tonic::Code;
use tonic::transport::Channel;

use pb::flag_service_client::FlagServiceClient;
use pb::watch_flags_response::Event as WatchEvent;
use pb::{EvaluationReason as Why, FlagValueType};

type Client = FlagServiceClient<Channel>;

async fn start() -> (TestDb, TestServer, Client) {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let client = FlagServiceClient::new(server.channel().await);
    (db, server, client)
}

fn pb_json(value: Value) -> Option<prost_types::Value> {
    Some(to_pb_value(&value))
}

fn json_of(value: &Option<prost_types::Value>) -> Value {
    from_pb_value(value.clone().expect("a value")).expect("a JSON value")
}

fn constraint(attribute: &str, operator: &str, values: &[&str]) -> pb::Constraint {
    pb::Constraint {
        attribute: attribute.into(),
        operator: operator.into(),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

fn serve_variant(name: &str) -> Option<pb::Serve> {
    Some(pb::Serve {
        serve: Some(pb::serve::Serve::Variant(name.into())),
    })
}

/// The README's A/B example: red/green/blue, Germany gets green, everyone
/// else a 50/30/20 split by user id.
fn checkout_targeting() -> pb::FlagTargeting {
    pb::FlagTargeting {
        variants: ["red", "green", "blue"]
            .iter()
            .map(|name| pb::FlagVariant {
                name: (*name).into(),
                value: pb_json(json!(format!("{name}-button"))),
            })
            .collect(),
        off_variant: "blue".into(),
        rules: vec![pb::TargetingRule {
            segments: Vec::new(),
            name: "germany".into(),
            constraints: vec![constraint("country", "in", &["DE"])],
            serve: serve_variant("green"),
        }],
        default_serve: Some(pb::Serve {
            serve: Some(pb::serve::Serve::Split(pb::WeightedSplit {
                weights: [("red", 500), ("green", 300), ("blue", 200)]
                    .iter()
                    .map(|(variant, weight)| pb::VariantWeight {
                        variant: (*variant).into(),
                        weight: *weight,
                    })
                    .collect(),
                stickiness: String::new(),
            })),
        }),
        prerequisites: Vec::new(),
    }
}

fn checkout_request() -> pb::UpsertFlagRequest {
    pb::UpsertFlagRequest {
        key: "checkout.v2".into(),
        enabled: Some(true),
        value_type: FlagValueType::String.into(),
        on_value: pb_json(json!("on-button")),
        off_value: pb_json(json!("off-button")),
        targeting: Some(checkout_targeting()),
        ..Default::default()
    }
}

async fn upsert(client: &mut Client, request: pb::UpsertFlagRequest) -> pb::Flag {
    let key = request.key.clone();
    client
        .upsert_flag(admin(request))
        .await
        .unwrap_or_else(|status| panic!("upsert {key:?}: {status:?}"))
        .into_inner()
        .flag
        .expect("a flag")
}

fn context(user: &str, attributes: Value) -> Option<pb::EvaluationContext> {
    let Value::Object(map) = attributes else {
        panic!("attributes are an object");
    };
    Some(pb::EvaluationContext {
        user_id: user.into(),
        roles: Vec::new(),
        attributes: Some(readyd::api::convert::to_pb_struct(&map)),
    })
}

async fn evaluate(
    client: &mut Client,
    key: &str,
    context: Option<pb::EvaluationContext>,
    explain: bool,
) -> pb::EvaluateFlagResponse {
    client
        .evaluate_flag(pb::EvaluateFlagRequest {
            key: key.into(),
            context,
            explain,
        })
        .await
        .expect("evaluate")
        .into_inner()
}

#[tokio::test]
async fn a_three_variant_flag_serves_by_rule_and_split_and_explains_why() {
    let (_db, _server, mut client) = start().await;
    let flag = upsert(&mut client, checkout_request()).await;
    assert_eq!(flag.targeting, Some(checkout_targeting()));

    // Germany: the rule.
    let answer = evaluate(
        &mut client,
        "checkout.v2",
        context("42", json!({"country": "DE"})),
        false,
    )
    .await;
    assert_eq!(
        (
            answer.variant.as_str(),
            json_of(&answer.value),
            answer.reason()
        ),
        ("green", json!("green-button"), Why::TargetingMatch)
    );
    assert!(answer.explanation.is_empty(), "only when asked for");

    // Elsewhere: user 42 is in bucket 146 of 1000, red (Unleash's formula).
    let answer = evaluate(
        &mut client,
        "checkout.v2",
        context("42", json!({"country": "FR"})),
        true,
    )
    .await;
    assert_eq!(
        (
            answer.variant.as_str(),
            json_of(&answer.value),
            answer.reason()
        ),
        ("red", json!("red-button"), Why::Split)
    );
    let steps: Vec<(&str, u32)> = answer
        .explanation
        .iter()
        .map(|step| (step.step.as_str(), step.rule))
        .collect();
    assert_eq!(steps, [("rule", 1), ("default_serve", 0)]);
    assert!(
        answer.explanation[0].detail.contains("country in [\"DE\"]"),
        "{:?}",
        answer.explanation
    );

    // Shares of the split over many users, within a wide tolerance.
    let mut counts = BTreeMap::<String, u32>::new();
    for user in 0..600 {
        let answer = evaluate(
            &mut client,
            "checkout.v2",
            context(&format!("user-{user}"), json!({})),
            false,
        )
        .await;
        *counts.entry(answer.variant).or_default() += 1;
    }
    let share = |variant: &str| f64::from(counts.get(variant).copied().unwrap_or(0)) / 600.0;
    assert!((share("red") - 0.5).abs() < 0.08, "{counts:?}");
    assert!((share("green") - 0.3).abs() < 0.08, "{counts:?}");
    assert!((share("blue") - 0.2).abs() < 0.08, "{counts:?}");

    // Disabled: the off variant, not "off".
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(false),
            ..checkout_request()
        },
    )
    .await;
    let answer = evaluate(&mut client, "checkout.v2", context("42", json!({})), false).await;
    assert_eq!(
        (answer.variant.as_str(), answer.reason()),
        ("blue", Why::Disabled)
    );
}

#[tokio::test]
async fn an_old_clients_write_keeps_the_targeting_and_an_empty_one_removes_it() {
    let (db, _server, mut client) = start().await;
    upsert(&mut client, checkout_request()).await;

    // Today's request shape: no targeting field at all.
    let toggled = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            client_visible: None,
            permanent: None,
            targeting: None,
            enabled: Some(false),
            ..checkout_request()
        },
    )
    .await;
    assert!(!toggled.enabled);
    assert_eq!(toggled.targeting, Some(checkout_targeting()));
    let marked: String =
        sqlx::query_scalar("SELECT value_type FROM feature_flags WHERE key = 'checkout.v2'")
            .fetch_one(&db.pool)
            .await
            .expect("read the row");
    assert_eq!(marked, "string@2", "v2 rows are marked for older binaries");

    // A kept part that the new write breaks is refused, naming why.
    let status = client
        .upsert_flag(admin(pb::UpsertFlagRequest {
            client_visible: None,
            permanent: None,
            targeting: None,
            value_type: FlagValueType::Number.into(),
            on_value: pb_json(json!(1)),
            off_value: pb_json(json!(0)),
            ..checkout_request()
        }))
        .await
        .expect_err("kept variants are strings");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("kept from the stored flag"),
        "{status:?}"
    );

    // An empty targeting removes it: a flag of the first model again.
    let plain = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            client_visible: None,
            permanent: None,
            targeting: Some(pb::FlagTargeting::default()),
            ..checkout_request()
        },
    )
    .await;
    assert_eq!(plain.targeting, None);
    let (value_type, targeting): (String, Option<Value>) =
        sqlx::query_as("SELECT value_type, targeting FROM feature_flags WHERE key = 'checkout.v2'")
            .fetch_one(&db.pool)
            .await
            .expect("read the row");
    assert_eq!((value_type.as_str(), targeting), ("string", None));
}

#[tokio::test]
async fn bad_targeting_is_refused_naming_the_rule_and_constraint_and_changes_nothing() {
    let (_db, _server, mut client) = start().await;
    let before = upsert(&mut client, checkout_request()).await;

    let mut targeting = checkout_targeting();
    targeting.rules.push(pb::TargetingRule {
        segments: Vec::new(),
        name: "new app".into(),
        constraints: vec![
            constraint("plan", "in", &["pro"]),
            constraint("app_version", "semver_gte", &["2.x"]),
        ],
        serve: serve_variant("red"),
    });
    let cases: Vec<(pb::FlagTargeting, &str)> = vec![
        (
            targeting,
            "rule 2 (\"new app\"), constraint 2: \"2.x\" is not a semantic version",
        ),
        (
            pb::FlagTargeting {
                default_serve: serve_variant("purple"),
                ..checkout_targeting()
            },
            "variant \"purple\" is not one of the flag's variants",
        ),
        (
            pb::FlagTargeting {
                rules: vec![pb::TargetingRule {
                    constraints: vec![constraint("email", "regex", &["(unclosed"])],
                    serve: serve_variant("red"),
                    ..Default::default()
                }],
                ..checkout_targeting()
            },
            "rule 1, constraint 1:",
        ),
        (
            pb::FlagTargeting {
                prerequisites: vec![pb::Prerequisite {
                    flag: "checkout.v2".into(),
                    variants: vec!["on".into()],
                }],
                ..checkout_targeting()
            },
            "a flag cannot require itself",
        ),
    ];
    for (targeting, wanted) in cases {
        let status = client
            .upsert_flag(admin(pb::UpsertFlagRequest {
                client_visible: None,
                permanent: None,
                targeting: Some(targeting),
                ..checkout_request()
            }))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(wanted), "{wanted}: {status:?}");
    }
    let after = client
        .get_flag(pb::GetFlagRequest {
            key: "checkout.v2".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .flag
        .expect("a flag");
    assert_eq!(after, before, "nothing changed");
}

#[tokio::test]
async fn prerequisites_gate_a_flag_and_cycles_are_refused() {
    let (_db, _server, mut client) = start().await;
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            key: "new-checkout".into(),
            enabled: Some(true),
            ..Default::default()
        },
    )
    .await;
    let dependent = pb::UpsertFlagRequest {
        key: "express-pay".into(),
        enabled: Some(true),
        targeting: Some(pb::FlagTargeting {
            prerequisites: vec![pb::Prerequisite {
                flag: "new-checkout".into(),
                variants: vec!["on".into()],
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    upsert(&mut client, dependent.clone()).await;
    let answer = evaluate(&mut client, "express-pay", None, false).await;
    assert_eq!(
        (answer.variant.as_str(), answer.reason()),
        ("on", Why::Default)
    );

    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            key: "new-checkout".into(),
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await;
    let answer = evaluate(&mut client, "express-pay", None, true).await;
    assert_eq!(
        (answer.variant.as_str(), answer.reason()),
        ("off", Why::PrerequisiteFailed)
    );
    assert_eq!(answer.explanation[0].step, "prerequisites");

    // new-checkout requiring express-pay would close a cycle.
    let status = client
        .upsert_flag(admin(pb::UpsertFlagRequest {
            key: "new-checkout".into(),
            enabled: Some(true),
            targeting: Some(pb::FlagTargeting {
                prerequisites: vec![pb::Prerequisite {
                    flag: "express-pay".into(),
                    variants: vec!["on".into()],
                }],
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect_err("a cycle");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("cycle: new-checkout -> express-pay -> new-checkout"),
        "{status:?}"
    );
}

#[tokio::test]
async fn rows_of_a_newer_flag_model_are_left_out_not_misread() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO feature_flags (key, enabled, value_type, targeting) \
         VALUES ('from-the-future', true, 'bool@3', '{}'), ('today', true, 'bool', NULL)",
    )
    .execute(&db.pool)
    .await
    .expect("insert rows");
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let mut client = FlagServiceClient::new(server.channel().await);
    let status = client
        .get_flag(pb::GetFlagRequest {
            key: "from-the-future".into(),
        })
        .await
        .expect_err("left out");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        client
            .get_flag(pb::GetFlagRequest {
                key: "today".into()
            })
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_v2_flag_reaches_a_second_server_and_flagd_clients() {
    let (db, _a, mut client) = start().await;
    let b = TestServer::start(admin_serve_args(&db.url)).await;
    let channel_b = b.channel().await;
    let mut client_b = FlagServiceClient::new(channel_b.clone());
    let mut watch = client_b
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    // The (empty) snapshot first.
    assert!(matches!(
        next(&mut watch).await.and_then(|m| m.event),
        Some(WatchEvent::Snapshot(_))
    ));

    upsert(&mut client, checkout_request()).await;
    loop {
        match next(&mut watch).await.and_then(|m| m.event) {
            Some(WatchEvent::Change(change)) => {
                if let Some(pb::flag_change::Change::Upserted(flag)) = change.change {
                    assert_eq!(flag.targeting, Some(checkout_targeting()));
                    break;
                }
            }
            Some(_) => {}
            None => panic!("the stream ended"),
        }
    }
    let answer = evaluate(
        &mut client_b,
        "checkout.v2",
        context("42", json!({"country": "DE"})),
        false,
    )
    .await;
    assert_eq!(answer.variant, "green");

    // flagd: the variant's name and value of a three-variant string flag.
    let mut flagd = flagd::service_client::ServiceClient::new(channel_b);
    let mut fields = BTreeMap::new();
    fields.insert(
        "targetingKey".to_owned(),
        prost_types::Value {
            kind: Some(Kind::StringValue("42".into())),
        },
    );
    let resolved = flagd
        .resolve_string(flagd::ResolveStringRequest {
            flag_key: "checkout.v2".into(),
            context: Some(prost_types::Struct { fields }),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.value.as_deref(), Some("red-button"));
    assert_eq!(resolved.variant.as_deref(), Some("red"));
    assert_eq!(resolved.reason, "SPLIT");
}

// ---------------------------------------------------------------------------
// Property: the server answers as the engine does for the flag it reports
// ---------------------------------------------------------------------------

mod property {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
    use readyd::flags::{CompiledFlag, EvaluationContext, Flag, NoFlags};

    const VARIANTS: [&str; 3] = ["red", "green", "blue"];

    fn arb_constraint() -> impl Strategy<Value = pb::Constraint> {
        prop_oneof![
            (select(vec!["DE", "FR", "US"]), any::<bool>(), any::<bool>()).prop_map(
                |(country, inverted, case_insensitive)| pb::Constraint {
                    inverted,
                    case_insensitive,
                    ..constraint("country", "in", &[country])
                }
            ),
            (0u32..50).prop_map(|seats| constraint("seats", "num_gt", &[&seats.to_string()])),
            select(vec!["1.2.0", "2.0.0"]).prop_map(|v| constraint(
                "app_version",
                "semver_gte",
                &[v]
            )),
            Just(constraint("plan", "exists", &[])),
            Just(constraint("email", "regex", &["@example\\.com$"])),
        ]
    }

    fn arb_serve() -> impl Strategy<Value = Option<pb::Serve>> {
        prop_oneof![
            select(VARIANTS.to_vec()).prop_map(serve_variant),
            (
                prop::collection::vec(0u32..100, 3),
                select(vec!["", "tenant"])
            )
                .prop_map(|(weights, stickiness)| {
                    let mut weights = weights;
                    weights[0] += 1; // never all zero
                    Some(pb::Serve {
                        serve: Some(pb::serve::Serve::Split(pb::WeightedSplit {
                            weights: VARIANTS
                                .iter()
                                .zip(weights)
                                .map(|(variant, weight)| pb::VariantWeight {
                                    variant: (*variant).into(),
                                    weight,
                                })
                                .collect(),
                            stickiness: stickiness.into(),
                        })),
                    })
                }),
        ]
    }

    fn arb_targeting() -> impl Strategy<Value = pb::FlagTargeting> {
        (
            prop::collection::vec(
                (prop::collection::vec(arb_constraint(), 1..4), arb_serve()),
                0..4,
            ),
            prop::option::of(arb_serve()),
            select(vec!["", "blue", "on"]),
        )
            .prop_map(|(rules, default_serve, off_variant)| pb::FlagTargeting {
                rules: rules
                    .into_iter()
                    .enumerate()
                    .map(|(i, (constraints, serve))| pb::TargetingRule {
                        segments: Vec::new(),
                        name: format!("rule-{i}"),
                        constraints,
                        serve,
                    })
                    .collect(),
                default_serve: default_serve.flatten(),
                off_variant: off_variant.into(),
                ..checkout_targeting()
            })
    }

    fn arb_context() -> impl Strategy<Value = Value> {
        (
            prop::option::of(select(vec!["DE", "fr", "US"])),
            prop::option::of(0u32..60),
            prop::option::of(select(vec!["1.1.9", "2.0.0", "10.0.0"])),
            prop::option::of(select(vec!["pro", "free"])),
            prop::option::of(select(vec!["a@example.com", "b@corp.io"])),
            prop::option::of(select(vec!["acme", "globex"])),
        )
            .prop_map(|(country, seats, version, plan, email, tenant)| {
                let mut map = serde_json::Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        map.insert(k.to_owned(), v);
                    }
                };
                put("country", country.map(|c| json!(c)));
                put("seats", seats.map(|s| json!(s)));
                put("app_version", version.map(|v| json!(v)));
                put("plan", plan.map(|p| json!(p)));
                put("email", email.map(|e| json!(e)));
                put("tenant", tenant.map(|t| json!(t)));
                Value::Object(map)
            })
    }

    async fn check(
        mut client: Client,
        targeting: pb::FlagTargeting,
        enabled: bool,
        contexts: Vec<(String, Value)>,
    ) -> Result<(), TestCaseError> {
        let stored = upsert(
            &mut client,
            pb::UpsertFlagRequest {
                enabled: Some(enabled),
                targeting: Some(targeting),
                ..checkout_request()
            },
        )
        .await;
        let flag = Flag {
            key: stored.key.clone(),
            description: stored.description.clone(),
            enabled: stored.enabled,
            value_type: readyd::flags::ValueType::String,
            on_value: json_of(&stored.on_value),
            off_value: json_of(&stored.off_value),
            environments: stored.environments.clone(),
            target_users: stored.target_users.clone(),
            target_roles: stored.target_roles.clone(),
            rollout_percentage: u8::try_from(stored.rollout_percentage).expect("0..=100"),
            version: stored.version,
            updated_at: chrono::DateTime::UNIX_EPOCH,
            updated_by: stored.updated_by.clone(),
            targeting: stored
                .targeting
                .clone()
                .map(|t| Box::new(readyd::flags::Targeting::try_from(t).expect("targeting"))),
            client_visible: stored.client_visible,
            permanent: stored.permanent,
            created_at: chrono::DateTime::UNIX_EPOCH,
        };
        let compiled = CompiledFlag::new(flag).expect("the stored flag is valid");
        for (user, attributes) in contexts {
            let answer = evaluate(
                &mut client,
                "checkout.v2",
                context(&user, attributes.clone()),
                false,
            )
            .await;
            let Value::Object(map) = attributes else {
                unreachable!("contexts are objects")
            };
            let ctx = EvaluationContext {
                user_id: Some(user.clone()).filter(|u| !u.is_empty()),
                roles: Vec::new(),
                attributes: map,
            };
            let expected = compiled.evaluate("test", &ctx, &NoFlags);
            prop_assert_eq!(
                answer.variant.as_str(),
                expected.variant,
                "{} {:?}",
                user,
                ctx
            );
            prop_assert_eq!(
                answer
                    .reason()
                    .as_str_name()
                    .trim_start_matches("EVALUATION_REASON_"),
                expected.reason.as_str()
            );
            prop_assert_eq!(&json_of(&answer.value), expected.value);
        }
        Ok(())
    }

    #[test]
    fn evaluate_flag_answers_as_the_engine_for_random_rules() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (db, server, client) = runtime.block_on(start());
        let mut runner = TestRunner::new(Config {
            cases: 32,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
                "tests/flag_targeting.proptest-regressions",
            ))),
            ..Config::default()
        });
        let strategy = (
            arb_targeting(),
            any::<bool>(),
            prop::collection::vec(
                (
                    select(vec!["", "42", "user-7", "u9"]).prop_map(String::from),
                    arb_context(),
                ),
                1..10,
            ),
        );
        let result = runner.run(&strategy, |(targeting, enabled, contexts)| {
            runtime.block_on(check(client.clone(), targeting, enabled, contexts))
        });
        runtime.block_on(server.stop());
        drop(db);
        if let Err(err) = result {
            panic!("{err}");
        }
    }
}
