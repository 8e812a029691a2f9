//! The command-line client, run as the real binary against a real server:
//! output, JSON, exit codes, and a refused mutation without a token.

mod support;

use std::process::Output;

use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus::Serving;
use support::daemon::binary;
use support::{ADMIN_TOKEN, TestDb, TestServer, admin_serve_args, wait_for_probe};

/// Runs `readyd ARGS --addr <server>` with no token in the environment
/// unless `token` is given.
async fn readyd(server: &TestServer, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(binary());
    command
        .args(args)
        .arg("--addr")
        .arg(server.url())
        .env_remove("READYD_ADMIN_TOKEN")
        .env_remove("READYD_ADDR")
        .env_remove("READYD_ACTOR");
    if let Some(token) = token {
        command.env("READYD_ADMIN_TOKEN", token);
    }
    command.output().await.expect("run readyd")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "failed: {}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

#[tokio::test]
async fn health_report_shows_every_check() {
    let db = TestDb::new().await;
    let mut args = admin_serve_args(&db.url);
    // Nothing listens on port 1: a failing non-critical check.
    args.checks = vec!["nowhere=tcp://127.0.0.1:1?critical=false&failures=1".into()];
    let server = TestServer::start(args).await;
    wait_for_probe(server.channel().await, "startup", Serving).await;
    let report = json(&readyd(&server, None, &["health", "--report", "--output", "json"]).await);
    assert_eq!(report["status"], "DEGRADED", "{report}");
    assert_eq!(report["instance"], "test-instance");
    assert_eq!(report["checks"][0]["name"], "database");
    assert_eq!(report["checks"][0]["state"], "PASSING");
    assert_eq!(report["checks"][1]["name"], "nowhere");
    assert_eq!(report["checks"][1]["state"], "FAILING");
    assert_eq!(report["checks"][1]["critical"], false);
    let table = readyd(&server, None, &["health", "--report"]).await;
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.starts_with("status"), "{text}");
    assert!(
        text.contains("nowhere") && text.contains("FAILING"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn health_exits_zero_only_when_serving() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    wait_for_probe(server.channel().await, "readiness", Serving).await;
    let ok = readyd(&server, None, &["health", "--service", "readiness"]).await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "SERVING\n");
    let unknown = readyd(&server, None, &["health", "--service", "dep.nothing"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).starts_with("error: NOT_FOUND: "),
        "{}",
        stderr(&unknown)
    );
    let as_json = json(&readyd(&server, None, &["health", "--output", "json"]).await);
    assert_eq!(
        as_json,
        serde_json::json!({"service": "", "status": "SERVING"})
    );
    server.stop().await;
}

#[tokio::test]
async fn nothing_listening_is_one_clear_line_and_exit_one() {
    let output = tokio::process::Command::new(binary())
        .args([
            "flags",
            "list",
            "--addr",
            "http://127.0.0.1:1",
            "--timeout",
            "2s",
        ])
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot reach readyd at http://127.0.0.1:1"),
        "{err}"
    );
}

#[tokio::test]
async fn flags_can_be_set_read_evaluated_listed_and_deleted() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let token = Some(ADMIN_TOKEN);

    let set = readyd(
        &server,
        token,
        &[
            "flags",
            "set",
            "checkout.v2",
            "--enabled",
            "true",
            "--rollout",
            "0",
            "--role",
            "staff",
        ],
    )
    .await;
    assert!(set.status.success(), "{}", stderr(&set));
    assert!(
        stdout(&set).starts_with("created checkout.v2 at version "),
        "{}",
        stdout(&set)
    );

    let got = json(
        &readyd(
            &server,
            None,
            &["flags", "get", "checkout.v2", "--output", "json"],
        )
        .await,
    );
    assert_eq!(got["enabled"], true);
    assert_eq!(got["rollout_percentage"], 0);
    assert_eq!(got["target_roles"], serde_json::json!(["staff"]));

    let staff = json(
        &readyd(
            &server,
            None,
            &[
                "flags",
                "eval",
                "checkout.v2",
                "--user",
                "7",
                "--role",
                "staff",
                "--output",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(
        (staff["value"].clone(), staff["reason"].clone()),
        (true.into(), "TARGETING_MATCH".into())
    );
    let other = json(
        &readyd(
            &server,
            None,
            &[
                "flags",
                "eval",
                "checkout.v2",
                "--user",
                "7",
                "--output",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(
        (other["value"].clone(), other["reason"].clone()),
        (false.into(), "DEFAULT".into())
    );

    let table = stdout(&readyd(&server, None, &["flags", "list", "--prefix", "checkout"]).await);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("KEY"), "{table}");
    assert!(lines[1].starts_with("checkout.v2  true"), "{table}");

    let deleted = readyd(&server, token, &["flags", "delete", "checkout.v2"]).await;
    assert!(
        stdout(&deleted).starts_with("deleted checkout.v2 at version "),
        "{}",
        stderr(&deleted)
    );
    let gone = readyd(&server, None, &["flags", "get", "checkout.v2"]).await;
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).starts_with("error: NOT_FOUND: "),
        "{}",
        stderr(&gone)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_mutation_without_a_token_is_refused_and_changes_nothing() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let before = db.count("feature_flags").await;
    let refused = readyd(
        &server,
        None,
        &["flags", "set", "sneaky", "--enabled", "true"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: UNAUTHENTICATED: "), "{err}");
    let wrong = readyd(&server, Some("wrong"), &["config", "set", "k", "1"]).await;
    assert!(
        stderr(&wrong).starts_with("error: PERMISSION_DENIED: "),
        "{}",
        stderr(&wrong)
    );
    let bad = readyd(&server, Some(ADMIN_TOKEN), &["flags", "set", "Bad Key"]).await;
    assert!(
        stderr(&bad).starts_with("error: INVALID_ARGUMENT: key"),
        "{}",
        stderr(&bad)
    );
    assert_eq!(db.count("feature_flags").await, before);
    server.stop().await;
}

#[tokio::test]
async fn config_and_maintenance_round_trip() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let token = Some(ADMIN_TOKEN);
    let set = readyd(
        &server,
        token,
        &[
            "config",
            "set",
            "max_upload_mb",
            "25",
            "--environment",
            "test",
        ],
    )
    .await;
    assert!(
        stdout(&set).starts_with("set max_upload_mb for test at version "),
        "{}",
        stderr(&set)
    );
    let got = json(
        &readyd(
            &server,
            None,
            &["config", "get", "max_upload_mb", "--output", "json"],
        )
        .await,
    );
    assert_eq!(
        (got["value"].clone(), got["environment"].clone()),
        (25.into(), "test".into())
    );

    readyd(
        &server,
        token,
        &["config", "set", "smtp.password", "hunter2", "--sensitive"],
    )
    .await;
    let hidden = stdout(&readyd(&server, None, &["config", "get", "smtp.password"]).await);
    assert!(
        hidden.contains("<redacted>") && !hidden.contains("hunter2"),
        "{hidden}"
    );
    let shown = stdout(&readyd(&server, token, &["config", "get", "smtp.password"]).await);
    assert!(shown.contains("hunter2"), "{shown}");

    let on = readyd(
        &server,
        token,
        &["maintenance", "on", "--message", "back soon"],
    )
    .await;
    assert_eq!(
        stdout(&on),
        "maintenance mode is on: back soon\n",
        "{}",
        stderr(&on)
    );
    let status = json(
        &readyd(
            &server,
            None,
            &["maintenance", "status", "--output", "json"],
        )
        .await,
    );
    assert_eq!(
        (status["enabled"].clone(), status["message"].clone()),
        (true.into(), "back soon".into())
    );
    let off = readyd(&server, token, &["maintenance", "off"]).await;
    assert_eq!(stdout(&off), "maintenance mode is off\n");

    let deleted = readyd(
        &server,
        token,
        &["config", "delete", "max_upload_mb", "--environment", "test"],
    )
    .await;
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let fallback = json(
        &readyd(
            &server,
            None,
            &["config", "get", "max_upload_mb", "--output", "json"],
        )
        .await,
    );
    assert_eq!(fallback["environment"], "*");
    server.stop().await;
}

#[tokio::test]
async fn every_command_shows_an_example_in_its_help() {
    let commands: &[&[&str]] = &[
        &["health"],
        &["flags", "list"],
        &["flags", "get"],
        &["flags", "set"],
        &["flags", "mark"],
        &["flags", "usage"],
        &["flags", "stale"],
        &["flags", "delete"],
        &["flags", "eval"],
        &["flags", "export"],
        &["flags", "apply"],
        &["flags", "history"],
        &["segments", "list"],
        &["segments", "get"],
        &["segments", "set"],
        &["segments", "delete"],
        &["segments", "history"],
        &["config", "list"],
        &["config", "get"],
        &["config", "set"],
        &["config", "delete"],
        &["maintenance", "on"],
        &["maintenance", "off"],
        &["maintenance", "status"],
        &["deploy", "record"],
        &["deploy", "rollback"],
        &["deploy", "list"],
        &["deploy", "current"],
        &["serve"],
        &["check"],
        &["migrate"],
    ];
    for command in commands {
        let output = tokio::process::Command::new(binary())
            .args(*command)
            .arg("--help")
            .output()
            .await
            .expect("run");
        let help = stdout(&output);
        assert!(output.status.success(), "{command:?}");
        assert!(
            help.contains("Example"),
            "{command:?} has no example:\n{help}"
        );
    }
}

#[tokio::test]
async fn deployments_are_recorded_listed_and_rolled_back() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let token = Some(ADMIN_TOKEN);
    for version in ["1.0.0", "1.1.0"] {
        let recorded = readyd(
            &server,
            token,
            &[
                "deploy",
                "record",
                version,
                "--environment",
                "test",
                "--by",
                "ci",
            ],
        )
        .await;
        assert!(
            stdout(&recorded).starts_with(&format!("recorded {version} to test")),
            "{}",
            stderr(&recorded)
        );
    }
    let current = json(
        &readyd(
            &server,
            None,
            &[
                "deploy",
                "current",
                "--environment",
                "test",
                "--output",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(current["version"], "1.1.0");
    assert_eq!(current["previous_version"], "1.0.0");
    let app_version = json(
        &readyd(
            &server,
            None,
            &["config", "get", "app_version", "--output", "json"],
        )
        .await,
    );
    assert_eq!(app_version["value"], "1.1.0");

    let rolled = readyd(
        &server,
        token,
        &[
            "deploy",
            "rollback",
            "--environment",
            "test",
            "--by",
            "alice",
        ],
    )
    .await;
    assert!(
        stdout(&rolled).starts_with("rolled test back from 1.1.0 to 1.0.0"),
        "{}",
        stderr(&rolled)
    );
    let list = json(
        &readyd(
            &server,
            None,
            &[
                "deploy",
                "list",
                "--environment",
                "test",
                "--output",
                "json",
            ],
        )
        .await,
    );
    let rows: Vec<(String, String)> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|d| {
            (
                d["version"].as_str().unwrap_or("").to_owned(),
                d["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("1.0.0".to_owned(), "success".to_owned()),
            ("1.1.0".to_owned(), "rolled_back".to_owned()),
            ("1.0.0".to_owned(), "success".to_owned()),
        ]
    );
    let nothing_left = readyd(
        &server,
        token,
        &[
            "deploy",
            "rollback",
            "--environment",
            "test",
            "--by",
            "alice",
        ],
    )
    .await;
    assert!(
        stderr(&nothing_left).starts_with("error: FAILED_PRECONDITION: "),
        "{}",
        stderr(&nothing_left)
    );
    server.stop().await;
}

#[tokio::test]
async fn config_set_keeps_a_secret_secret_unless_public_is_given() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let token = Some(ADMIN_TOKEN);
    let created = readyd(
        &server,
        token,
        &[
            "config",
            "set",
            "smtp.password",
            "hunter2",
            "--sensitive",
            "--description",
            "mail relay",
        ],
    )
    .await;
    assert!(created.status.success(), "{}", stderr(&created));
    // A later set without --sensitive: the value stays secret, the
    // description stays.
    let updated = readyd(
        &server,
        token,
        &["config", "set", "smtp.password", "hunter3"],
    )
    .await;
    assert!(updated.status.success(), "{}", stderr(&updated));
    let hidden = stdout(&readyd(&server, None, &["config", "get", "smtp.password"]).await);
    assert!(
        hidden.contains("<redacted>") && !hidden.contains("hunter3"),
        "{hidden}"
    );
    let shown = json(
        &readyd(
            &server,
            token,
            &["config", "get", "smtp.password", "--output", "json"],
        )
        .await,
    );
    assert_eq!(shown["value"], "hunter3");
    assert_eq!(shown["is_sensitive"], true, "{shown}");
    assert_eq!(shown["description"], "mail relay", "{shown}");

    // --sensitive and --public together make no sense.
    let both = readyd(
        &server,
        token,
        &[
            "config",
            "set",
            "smtp.password",
            "x",
            "--sensitive",
            "--public",
        ],
    )
    .await;
    assert!(!both.status.success());

    // --public makes it public, on purpose.
    let public = readyd(
        &server,
        token,
        &["config", "set", "smtp.password", "hunter4", "--public"],
    )
    .await;
    assert!(public.status.success(), "{}", stderr(&public));
    let open = json(
        &readyd(
            &server,
            None,
            &["config", "get", "smtp.password", "--output", "json"],
        )
        .await,
    );
    assert_eq!(open["value"], "hunter4", "{open}");
    assert_eq!(open["is_sensitive"], false, "{open}");
    server.stop().await;
}

/// The README's worked A/B example, as written there: `--targeting @FILE`,
/// `eval --attr … --explain`, and the targeting shown back by `get`.
#[tokio::test]
async fn the_readme_ab_example_sets_targeting_from_a_file_and_explains() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("checkout.json");
    let document = serde_json::json!({
        "variants": [{"name": "red", "value": "#d33"}, {"name": "green", "value": "#3a3"},
                     {"name": "blue", "value": "#33d"}],
        "off_variant": "blue",
        "rules": [{"name": "germany",
                   "constraints": [{"attribute": "country", "operator": "in", "values": ["DE"]}],
                   "serve": {"variant": "green"}}],
        "default_serve": {"split": {"weights": [{"variant": "red", "weight": 500},
                                                {"variant": "green", "weight": 300},
                                                {"variant": "blue", "weight": 200}]}}
    });
    std::fs::write(&file, document.to_string()).expect("write the file");
    let targeting = format!("@{}", file.display());
    let set = readyd(
        &server,
        Some(ADMIN_TOKEN),
        &[
            "flags",
            "set",
            "checkout.v2",
            "--enabled",
            "true",
            "--type",
            "string",
            "--on",
            "#d33",
            "--off",
            "#33d",
            "--targeting",
            &targeting,
        ],
    )
    .await;
    assert!(set.status.success(), "{}", stderr(&set));

    let got = json(
        &readyd(
            &server,
            None,
            &["flags", "get", "checkout.v2", "--output", "json"],
        )
        .await,
    );
    assert_eq!(got["targeting"]["off_variant"], "blue");
    assert_eq!(got["targeting"]["rules"][0]["name"], "germany");

    let eval = readyd(
        &server,
        None,
        &[
            "flags",
            "eval",
            "checkout.v2",
            "--user",
            "42",
            "--attr",
            "country=FR",
            "--explain",
        ],
    )
    .await;
    assert!(eval.status.success(), "{}", stderr(&eval));
    let text = stdout(&eval);
    assert!(text.contains("red"), "{text}");
    assert!(text.contains("SPLIT"), "{text}");
    assert!(
        text.contains("1. rule 1 did not match: constraint 1 (country in [\"DE\"]) does not hold"),
        "{text}"
    );
    assert!(
        text.contains("2. no rule matched: the default serve"),
        "{text}"
    );

    let germany = json(
        &readyd(
            &server,
            None,
            &[
                "flags",
                "eval",
                "checkout.v2",
                "--user",
                "42",
                "--attr",
                "country=DE",
                "--output",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(germany["variant"], "green");
    assert_eq!(germany["value"], "#3a3");

    // A new total weight reshuffles users: the CLI says so.
    let mut reweighted = document.clone();
    reweighted["default_serve"]["split"]["weights"][2]["weight"] = serde_json::json!(100);
    let reweighted = reweighted.to_string();
    let set = readyd(
        &server,
        Some(ADMIN_TOKEN),
        &[
            "flags",
            "set",
            "checkout.v2",
            "--enabled",
            "true",
            "--type",
            "string",
            "--on",
            "#d33",
            "--off",
            "#33d",
            "--targeting",
            &reweighted,
        ],
    )
    .await;
    assert!(set.status.success(), "{}", stderr(&set));
    assert!(
        stderr(&set)
            .contains("warning: the default split: the total weight changes from 1000 to 900"),
        "{}",
        stderr(&set)
    );

    let bad = readyd(
        &server,
        Some(ADMIN_TOKEN),
        &["flags", "set", "checkout.v2", "--targeting", "{not json"],
    )
    .await;
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).starts_with("error: --targeting: the argument is not targeting JSON"),
        "{}",
        stderr(&bad)
    );
}

#[tokio::test]
async fn flags_mark_changes_the_marks_and_nothing_else() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let targeting = serde_json::json!({
        "variants": [{"name": "red", "value": "#d33"}, {"name": "blue", "value": "#33d"}],
        "off_variant": "blue",
        "rules": [{"name": "germany",
                   "constraints": [{"attribute": "country", "operator": "in", "values": ["DE"]}],
                   "serve": {"variant": "red"}}],
        "default_serve": {"split": {"weights": [{"variant": "red", "weight": 600},
                                                {"variant": "blue", "weight": 400}]}}
    })
    .to_string();
    let set = readyd(
        &server,
        Some(ADMIN_TOKEN),
        &[
            "flags",
            "set",
            "kill.payments",
            "--enabled",
            "true",
            "--type",
            "string",
            "--on",
            "#d33",
            "--off",
            "#33d",
            "--rollout",
            "40",
            "--role",
            "staff",
            "--user",
            "ana@example.com",
            "--env",
            "prod",
            "--description",
            "stops card payments",
            "--targeting",
            &targeting,
        ],
    )
    .await;
    assert!(set.status.success(), "{}", stderr(&set));
    let get = || async {
        json(
            &readyd(
                &server,
                None,
                &["flags", "get", "kill.payments", "--output", "json"],
            )
            .await,
        )
    };
    let before = get().await;
    assert_eq!(before["permanent"], false);

    let marked = readyd(
        &server,
        Some(ADMIN_TOKEN),
        &["flags", "mark", "kill.payments", "--permanent", "true"],
    )
    .await;
    assert!(marked.status.success(), "{}", stderr(&marked));
    assert!(
        stdout(&marked).starts_with("marked kill.payments at version "),
        "{}",
        stdout(&marked)
    );
    let after = get().await;
    assert_eq!(after["permanent"], true);
    assert_eq!(after["client_visible"], false, "an unnamed mark is kept");
    assert_eq!(
        after["version"].as_i64(),
        before["version"].as_i64().map(|v| v + 1)
    );
    // Every other field as it was.
    let rest = |flag: &serde_json::Value| {
        let mut flag = flag.clone();
        if let Some(fields) = flag.as_object_mut() {
            for changed in ["permanent", "version", "updated_at", "updated_by"] {
                fields.remove(changed);
            }
        }
        flag
    };
    assert_eq!(rest(&after), rest(&before));

    let visible = readyd(
        &server,
        Some(ADMIN_TOKEN),
        &["flags", "mark", "kill.payments", "--client-visible", "true"],
    )
    .await;
    assert!(visible.status.success(), "{}", stderr(&visible));
    let visible = get().await;
    assert_eq!(
        (
            visible["client_visible"].clone(),
            visible["permanent"].clone()
        ),
        (true.into(), true.into()),
        "the permanent mark is kept"
    );

    // Refused, changing nothing: no mark named, no token, no such flag.
    let nothing = readyd(
        &server,
        Some(ADMIN_TOKEN),
        &["flags", "mark", "kill.payments"],
    )
    .await;
    assert!(!nothing.status.success());
    assert!(
        stderr(&nothing).contains("nothing to mark"),
        "{}",
        stderr(&nothing)
    );
    let no_token = readyd(
        &server,
        None,
        &["flags", "mark", "kill.payments", "--permanent", "false"],
    )
    .await;
    assert!(!no_token.status.success());
    let missing = readyd(
        &server,
        Some(ADMIN_TOKEN),
        &["flags", "mark", "no.such.flag", "--permanent", "true"],
    )
    .await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).starts_with("error: NOT_FOUND: "),
        "{}",
        stderr(&missing)
    );
    assert_eq!(get().await, visible, "refused marks changed nothing");
    server.stop().await;
}
