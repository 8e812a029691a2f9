//! OpenFeature's own SDKs, unmodified, against readyd: the Python SDK with
//! `openfeature-provider-flagd` and `openfeature-provider-ofrep`, and the
//! Node.js server SDK with `@openfeature/flagd-provider` and
//! `@openfeature/ofrep-provider` (pinned in `tests/interop/`, installed under
//! `target/interop` by `tests/interop/setup.sh`). Each resolves the cases of
//! `tests/interop/cases.json` (targeted and untargeted users, a rollout, a
//! string and an object flag, an unknown flag, a type mismatch) and must
//! give readyd's own EvaluateFlag answers, then must see a configuration
//! change after a flag is updated.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use support::interop::{root, setup};

use readyd::api::convert::from_pb_value;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use serde_json::{Value, json};
use support::{TestDb, TestServer, serve_args};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// A database with the cases' flags and a readyd on it; `http`: with its
/// HTTP surface on.
async fn seeded(http: bool) -> (TestDb, TestServer) {
    let db = TestDb::new().await;
    support::insert_typed_flags(&db).await;
    // A three-variant string flag of flag model v2: a 50/30/20 split.
    sqlx::query(
        "INSERT INTO feature_flags (key, enabled, value_type, on_value, off_value, targeting) \
         VALUES ('button_color', true, 'string@2', '\"none\"', '\"grey\"', $1)",
    )
    .bind(json!({
        "variants": [{"name": "red", "value": "#d33"}, {"name": "green", "value": "#3a3"},
                     {"name": "blue", "value": "#33d"}],
        "default_serve": {"split": {"weights": [{"variant": "red", "weight": 500},
                                                {"variant": "green", "weight": 300},
                                                {"variant": "blue", "weight": 200}]}}
    }))
    .execute(&db.pool)
    .await
    .expect("a three-variant flag");
    let mut args = serve_args(&db.url);
    if http {
        args.http_listen = "127.0.0.1:0".into();
    }
    let server = TestServer::start(args).await;
    (db, server)
}

/// `value` with every number as f64, as the SDKs carry them.
fn numbers_as_f64(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What an SDK must answer for `case`: readyd's own EvaluateFlag, or the
/// default value with the error code flagd's clients give.
async fn expected(server: &TestServer, case: &Value) -> Value {
    let key = case["key"].as_str().expect("key");
    let mut client = FlagServiceClient::new(server.channel().await);
    let answer = client
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: key.to_owned(),
            context: Some(pb::EvaluationContext {
                user_id: case["user"].as_str().unwrap_or_default().to_owned(),
                roles: case["roles"]
                    .as_array()
                    .map(|roles| {
                        roles
                            .iter()
                            .filter_map(|r| r.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                attributes: None,
            }),
        })
        .await;
    let error = |code: &str| json!({"value": numbers_as_f64(&case["default"]), "variant": null, "reason": "ERROR", "error_code": code});
    match answer {
        Err(status) if status.code() == tonic::Code::NotFound => error("FLAG_NOT_FOUND"),
        Err(status) => panic!("EvaluateFlag {key}: {status:?}"),
        Ok(answer) => {
            let answer = answer.into_inner();
            let value = answer
                .value
                .clone()
                .map(|v| from_pb_value(v).expect("value"))
                .unwrap_or(Value::Null);
            let type_matches = match case["kind"].as_str() {
                Some("boolean") => value.is_boolean(),
                Some("string") => value.is_string(),
                Some("object") => value.is_object(),
                Some("number") => value.is_number(),
                _ => false,
            };
            if !type_matches {
                return error("TYPE_MISMATCH");
            }
            json!({
                "value": numbers_as_f64(&value),
                "variant": answer.variant,
                "reason": answer.reason().as_str_name().trim_start_matches("EVALUATION_REASON_"),
                "error_code": null,
            })
        }
    }
}

/// The client's next line of output, within 60 s.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the SDK client answers within 60 s")
        .expect("read")
        .expect("the SDK client ended early")
}

/// Which protocol a client speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// The flagd protocol on readyd's gRPC port; it then waits for a change.
    Flagd,
    /// OFREP on the HTTP surface; it evaluates and exits.
    Ofrep,
}

/// Runs one SDK's client against readyd and checks every answer and, over
/// the flagd protocol, the change event.
async fn check_sdk(
    program: &Path,
    args: &[PathBuf],
    node_path: Option<PathBuf>,
    protocol: Protocol,
) {
    let (db, server) = seeded(protocol == Protocol::Ofrep).await;
    let cases_path = root().join("tests/interop/cases.json");
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&cases_path).expect("cases")).expect("json");
    let mut command = Command::new(program);
    command
        .args(args)
        .arg(match protocol {
            Protocol::Flagd => server.addr.port().to_string(),
            Protocol::Ofrep => format!("http://{}", server.http_addr.expect("an HTTP address")),
        })
        .arg(&cases_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(node_path) = node_path {
        command.env("NODE_PATH", node_path);
    }
    let mut child = command.spawn().expect("start the SDK client");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let answers: Value = serde_json::from_str(&next_line(&mut lines).await).expect("answers");
    let answers = answers["answers"].as_array().expect("answers").clone();
    assert_eq!(answers.len(), cases.len());
    for (case, answer) in cases.iter().zip(&answers) {
        let mut answer = answer.clone();
        answer["value"] = numbers_as_f64(&answer["value"]);
        assert_eq!(answer, expected(&server, case).await, "case {case}");
    }
    // Some untargeted users fall in the 30 % rollout and some do not, so
    // the buckets themselves were compared.
    let split: Vec<&str> = answers
        .iter()
        .filter_map(|a| {
            (a["reason"] == "SPLIT")
                .then(|| a["variant"].as_str())
                .flatten()
        })
        .collect();
    assert!(
        split.contains(&"on") || split.contains(&"off"),
        "{answers:?}"
    );

    if protocol == Protocol::Ofrep {
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the SDK client exits")
            .expect("wait");
        assert!(status.success(), "{status:?}");
        server.stop().await;
        return;
    }
    assert_eq!(next_line(&mut lines).await, "waiting for a change");
    sqlx::query("UPDATE feature_flags SET rollout_percentage = 80 WHERE key = 'beta'")
        .execute(&db.pool)
        .await
        .expect("update");
    let changed: Value = serde_json::from_str(&next_line(&mut lines).await).expect("change line");
    assert!(
        changed["changed"]
            .as_array()
            .is_some_and(|keys| keys.iter().any(|k| k == "beta")),
        "{changed}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the SDK client exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn python_sdk_with_the_flagd_provider_resolves_readyd_flags() {
    setup().await;
    check_sdk(
        &root().join("target/interop/venv/bin/python"),
        &[root().join("tests/interop/openfeature_client.py")],
        None,
        Protocol::Flagd,
    )
    .await;
}

#[tokio::test]
async fn node_sdk_with_the_flagd_provider_resolves_readyd_flags() {
    setup().await;
    check_sdk(
        Path::new("node"),
        &[root().join("tests/interop/openfeature_client.js")],
        Some(root().join("target/interop/node/node_modules")),
        Protocol::Flagd,
    )
    .await;
}

#[tokio::test]
async fn python_sdk_with_the_ofrep_provider_resolves_readyd_flags() {
    setup().await;
    check_sdk(
        &root().join("target/interop/venv/bin/python"),
        &[root().join("tests/interop/ofrep_client.py")],
        None,
        Protocol::Ofrep,
    )
    .await;
}

#[tokio::test]
async fn node_sdk_with_the_ofrep_provider_resolves_readyd_flags() {
    setup().await;
    check_sdk(
        Path::new("node"),
        &[root().join("tests/interop/ofrep_client.js")],
        Some(root().join("target/interop/node/node_modules")),
        Protocol::Ofrep,
    )
    .await;
}
