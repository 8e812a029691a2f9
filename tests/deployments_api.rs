//! readyd.v1.DeploymentService end to end, over real gRPC on loopback and a
//! real PostgreSQL: recording a deployment sets the environment's
//! `app_version` and the current deployment together (property 9, against a
//! model of the history), concurrent deployments from two servers form one
//! line, every `app_version` change is audited with the deployer as actor,
//! rollbacks walk back and refuse when there is nothing to return to,
//! paging and filters, and bad input that changes nothing.

mod support;

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use readyd::api::convert::from_pb_value;
use readyd::api::pb::readyd::v1 as pb;
use serde_json::Value;
use support::{TestDb, TestServer, admin, admin_serve_args, serve_args};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use pb::config_service_client::ConfigServiceClient;
use pb::deployment_service_client::DeploymentServiceClient;
use pb::{DeploymentKind as Kind, DeploymentStatus as St};

type Client = DeploymentServiceClient<Channel>;
type ConfigClient = ConfigServiceClient<Channel>;

/// The file the property tests keep their failing seeds in.
const REGRESSIONS: &str = "tests/deployments_api.proptest-regressions";

/// The `app_version` every environment starts with (the `*` row seeded by
/// the migration).
const SEEDED_VERSION: &str = "0.0.0";

// ---------------------------------------------------------------------------
// Helpers.

/// A fresh database and a server (environment `test`) with the admin token.
async fn start() -> (TestDb, TestServer, Client, ConfigClient) {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let channel = server.channel().await;
    (
        db,
        server,
        DeploymentServiceClient::new(channel.clone()),
        ConfigServiceClient::new(channel),
    )
}

/// A server on `db` for `environment`, with the admin token.
async fn server_for(db: &TestDb, environment: &str) -> (TestServer, Client, ConfigClient) {
    let mut args = admin_serve_args(&db.url);
    args.environment = environment.into();
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    (
        server,
        DeploymentServiceClient::new(channel.clone()),
        ConfigServiceClient::new(channel),
    )
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..Config::default()
    })
}

fn deployment(version: &str, environment: &str, by: &str) -> pb::RecordDeploymentRequest {
    pb::RecordDeploymentRequest {
        version: version.into(),
        environment: environment.into(),
        deployed_by: by.into(),
        ..Default::default()
    }
}

async fn deploy(client: &mut Client, request: pb::RecordDeploymentRequest) -> pb::Deployment {
    let what = format!("{}@{}", request.version, request.environment);
    client
        .record_deployment(admin(request))
        .await
        .unwrap_or_else(|status| panic!("deploy {what}: {status:?}"))
        .into_inner()
        .deployment
        .expect("a deployment")
}

fn rollback_request(environment: &str, target: Option<i64>) -> pb::RecordRollbackRequest {
    pb::RecordRollbackRequest {
        environment: environment.into(),
        target_deployment_id: target,
        reason: String::new(),
        actor: "oncall".into(),
    }
}

async fn rollback(
    client: &mut Client,
    request: pb::RecordRollbackRequest,
) -> Result<(pb::Deployment, pb::Deployment), Status> {
    let response = client.record_rollback(admin(request)).await?.into_inner();
    Ok((
        response.rollback.expect("a rollback row"),
        response.rolled_back.expect("a rolled back row"),
    ))
}

async fn current(client: &mut Client, environment: &str) -> Result<pb::Deployment, Status> {
    Ok(client
        .get_current_deployment(pb::GetCurrentDeploymentRequest {
            environment: environment.into(),
        })
        .await?
        .into_inner()
        .deployment
        .expect("a deployment"))
}

/// Every row of `environment` (all when empty), newest first, following
/// page tokens with pages of `page_size`.
async fn list_all(client: &mut Client, environment: &str, page_size: u32) -> Vec<pb::Deployment> {
    let mut rows = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_deployments(pb::ListDeploymentsRequest {
                environment: environment.into(),
                status: 0,
                page_size,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        rows.extend(page.deployments);
        if page.next_page_token.is_empty() {
            return rows;
        }
        token = page.next_page_token;
    }
}

/// `app_version` as this server's environment resolves it (GetConfig).
async fn app_version(config: &mut ConfigClient) -> String {
    let entry = config
        .get_config(pb::GetConfigRequest {
            key: "app_version".into(),
        })
        .await
        .expect("app_version")
        .into_inner()
        .entry
        .expect("an entry");
    match from_pb_value(entry.value.expect("a value")).expect("JSON") {
        Value::String(s) => s,
        other => panic!("app_version is {other}"),
    }
}

/// The `app_version` row of `environment`, read from the table.
async fn app_version_row(db: &TestDb, environment: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT value #>> '{}' FROM app_config WHERE key = 'app_version' AND environment = $1",
    )
    .bind(environment)
    .fetch_optional(&db.pool)
    .await
    .expect("app_version row")
}

/// Every row of the three tables a deployment writes, as text: equal dumps
/// mean nothing changed.
async fn dump(db: &TestDb) -> [String; 3] {
    let mut out: [String; 3] = Default::default();
    for (i, sql) in [
        "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY id), '') FROM deployment_history t",
        "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY key, environment), '') FROM app_config t",
        "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY id), '') FROM config_audit t",
    ]
    .into_iter()
    .enumerate()
    {
        out[i] = sqlx::query_scalar(sql)
            .fetch_one(&db.pool)
            .await
            .expect("dump");
    }
    out
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = result.expect_err("an error");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// Asserts INVALID_ARGUMENT whose message names `field`.
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = assert_code(result, Code::InvalidArgument);
    assert!(
        status.message().contains(field),
        "the message names {field:?}: {status:?}"
    );
}

// ---------------------------------------------------------------------------
// Property 9: recording a deployment or a rollback moves app_version and
// the current deployment together, and nothing else.

const P9_ENVIRONMENTS: [&str; 3] = ["prod", "staging", "dev"];
const P9_VERSIONS: [&str; 4] = ["1.0.0", "1.1.0", "2.0.0-rc.1", "2.0.0+b7"];

/// One step of a property 9 run.
#[derive(Debug, Clone)]
enum Op {
    /// RecordDeployment of a version with a status (0: unspecified).
    Deploy {
        environment: usize,
        version: usize,
        status: i32,
    },
    /// RecordRollback: default target, a row picked from the environment's
    /// history (any row, so also refused ones), or an id that does not exist.
    Rollback { environment: usize, target: Target },
}

#[derive(Debug, Clone)]
enum Target {
    Default,
    Pick(prop::sample::Index),
    Missing,
}

fn p9_op(environments: usize) -> impl Strategy<Value = Op> {
    let deploy = (
        0..environments,
        0..P9_VERSIONS.len(),
        prop::sample::select(vec![0, 0, 0, 3, 3, 1, 2, 4]),
    )
        .prop_map(|(environment, version, status)| Op::Deploy {
            environment,
            version,
            status,
        });
    let target = prop_oneof![
        3 => Just(Target::Default),
        2 => any::<prop::sample::Index>().prop_map(Target::Pick),
        1 => Just(Target::Missing),
    ];
    let rollback = (0..environments, target).prop_map(|(environment, target)| Op::Rollback {
        environment,
        target,
    });
    prop_oneof![3 => deploy, 2 => rollback]
}

/// The test's own model of a history row.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: i64,
    version: String,
    environment: String,
    status: i32,
    kind: i32,
    deployed_by: String,
    previous_version: String,
    rollback_of: Option<i64>,
}

impl From<&pb::Deployment> for Row {
    fn from(d: &pb::Deployment) -> Self {
        Row {
            id: d.id,
            version: d.version.clone(),
            environment: d.environment.clone(),
            status: d.status,
            kind: d.kind,
            deployed_by: d.deployed_by.clone(),
            previous_version: d.previous_version.clone(),
            rollback_of: d.rollback_of,
        }
    }
}

/// The reference rules, stated independently of the server: the current
/// row is the newest success; a rollback returns to a named earlier row of
/// the environment that ran, or by default to the newest success of another
/// version older than the current row (for a rollback row: older than the
/// row it restored).
struct Model {
    rows: Vec<Row>,
    app_version: BTreeMap<String, String>,
}

impl Model {
    fn current(&self, environment: &str) -> Option<&Row> {
        self.rows
            .iter()
            .rev()
            .find(|r| r.environment == environment && r.status == St::Success as i32)
    }

    fn rollback_target(&self, environment: &str, target: &Target) -> Option<(Row, Row)> {
        let current = self.current(environment)?.clone();
        // Walking back: a rollback row counts from the row it restored.
        let start = if current.kind == Kind::Rollback as i32 {
            current.rollback_of.expect("a rollback restores a row")
        } else {
            current.id
        };
        let chosen = match target {
            Target::Missing => None,
            Target::Default => self
                .rows
                .iter()
                .rev()
                .find(|r| {
                    r.environment == environment
                        && r.id < start
                        && r.status == St::Success as i32
                        && r.version != current.version
                })
                .cloned(),
            Target::Pick(index) => {
                let own: Vec<&Row> = self
                    .rows
                    .iter()
                    .filter(|r| r.environment == environment)
                    .collect();
                let row = (*index.get(&own)).clone();
                let ran = row.status == St::Success as i32 || row.status == St::RolledBack as i32;
                (row.id < current.id && ran).then_some(row)
            }
        }?;
        Some((current, chosen))
    }
}

#[test]
fn property_9_deployments_move_app_version_and_the_current_deployment_together() {
    let runtime = multi_thread_runtime();
    let environments = 3;
    let db = runtime.block_on(TestDb::new());
    // One server per environment, so GetConfig shows each environment's
    // resolved app_version, and each write goes to the server of its
    // environment (read-your-writes: visible there at once).
    let servers: Vec<(TestServer, Client, ConfigClient)> = runtime.block_on(async {
        let mut servers = Vec::new();
        for environment in &P9_ENVIRONMENTS[..environments] {
            servers.push(server_for(&db, environment).await);
        }
        servers
    });
    let clients: Vec<(Client, ConfigClient)> = servers
        .iter()
        .map(|(_, d, c)| (d.clone(), c.clone()))
        .collect();
    let mut runner = runner(16);
    let ops = prop::collection::vec(p9_op(environments), 1..14);
    let result = runner.run(&ops, |ops| {
        let mut clients = clients.clone();
        let db = &db;
        runtime.block_on(async move {
            // The database outlives cases (and shrinking reruns them), so
            // the model starts from what is there.
            let mut model = Model {
                rows: list_all(&mut clients[0].0, "", 500)
                    .await
                    .iter()
                    .rev()
                    .map(Row::from)
                    .collect(),
                app_version: BTreeMap::new(),
            };
            for (i, environment) in P9_ENVIRONMENTS[..environments].iter().enumerate() {
                let version = app_version(&mut clients[i].1).await;
                model.app_version.insert((*environment).to_owned(), version);
            }
            for (step, op) in ops.into_iter().enumerate() {
                let e = match op {
                    Op::Deploy {
                        environment: e,
                        version,
                        status,
                    } => {
                        let environment = P9_ENVIRONMENTS[e];
                        let by = format!("deployer-{step}");
                        let request = pb::RecordDeploymentRequest {
                            status,
                            ..deployment(P9_VERSIONS[version], environment, &by)
                        };
                        let previous = model.current(environment).map_or_else(
                            || model.app_version[environment].clone(),
                            |r| r.version.clone(),
                        );
                        let got = deploy(&mut clients[e].0, request).await;
                        let status = if status == 0 {
                            St::Success as i32
                        } else {
                            status
                        };
                        let expected = Row {
                            id: got.id,
                            version: P9_VERSIONS[version].into(),
                            environment: environment.into(),
                            status,
                            kind: Kind::Deploy as i32,
                            deployed_by: by,
                            previous_version: previous,
                            rollback_of: None,
                        };
                        prop_assert_eq!(Row::from(&got), expected.clone());
                        prop_assert!(model.rows.last().is_none_or(|r| r.id < got.id));
                        prop_assert_eq!(
                            got.completed_at.is_some(),
                            status == St::Success as i32 || status == St::Failed as i32
                        );
                        if status == St::Success as i32 {
                            model
                                .app_version
                                .insert(environment.into(), P9_VERSIONS[version].into());
                        }
                        model.rows.push(expected);
                        e
                    }
                    Op::Rollback {
                        environment: e,
                        target,
                    } => {
                        let environment = P9_ENVIRONMENTS[e];
                        let own: Vec<&Row> = model
                            .rows
                            .iter()
                            .filter(|r| r.environment == environment)
                            .collect();
                        let target_id = match &target {
                            Target::Default => None,
                            Target::Missing => Some(i64::MAX),
                            Target::Pick(_) if own.is_empty() => None,
                            Target::Pick(index) => Some(index.get(&own).id),
                        };
                        // A pick from an empty history is the default.
                        let target = match (&target, target_id) {
                            (Target::Pick(_), None) => Target::Default,
                            _ => target,
                        };
                        let before = dump(db).await;
                        let expected = model.rollback_target(environment, &target);
                        let got =
                            rollback(&mut clients[e].0, rollback_request(environment, target_id))
                                .await;
                        match (got, expected) {
                            (Err(status), None) => {
                                prop_assert_eq!(status.code(), Code::FailedPrecondition);
                                prop_assert_eq!(dump(db).await, before, "a refusal changed rows");
                                e
                            }
                            (Ok((new_row, rolled_back)), Some((current, chosen))) => {
                                let expected = Row {
                                    id: new_row.id,
                                    version: chosen.version.clone(),
                                    environment: environment.into(),
                                    status: St::Success as i32,
                                    kind: Kind::Rollback as i32,
                                    deployed_by: "oncall".into(),
                                    previous_version: current.version.clone(),
                                    rollback_of: Some(chosen.id),
                                };
                                prop_assert_eq!(Row::from(&new_row), expected.clone());
                                let mut was = current.clone();
                                was.status = St::RolledBack as i32;
                                prop_assert_eq!(Row::from(&rolled_back), was.clone());
                                for row in &mut model.rows {
                                    if row.id == was.id {
                                        *row = was.clone();
                                    }
                                }
                                model.rows.push(expected);
                                model
                                    .app_version
                                    .insert(environment.into(), chosen.version.clone());
                                e
                            }
                            (got, expected) => {
                                return Err(TestCaseError::fail(format!(
                                    "rollback of {environment} to {target:?}: got {got:?}, \
                                     expected {expected:?}"
                                )));
                            }
                        }
                    }
                };
                // Every environment: app_version (through its own server,
                // and the row) equals the model, and equals the current
                // deployment's version when there is one.
                for (i, environment) in P9_ENVIRONMENTS[..environments].iter().enumerate() {
                    let (deployments, config) = &mut clients[i];
                    let shown = if i == e {
                        // Read-your-writes on the server that wrote.
                        app_version(config).await
                    } else {
                        app_version_row(db, environment)
                            .await
                            .unwrap_or_else(|| SEEDED_VERSION.to_owned())
                    };
                    prop_assert_eq!(&shown, &model.app_version[*environment], "{}", environment);
                    match (
                        current(deployments, environment).await,
                        model.current(environment),
                    ) {
                        (Ok(got), Some(expected)) => {
                            prop_assert_eq!(Row::from(&got), expected.clone());
                            prop_assert_eq!(&got.version, &shown);
                        }
                        (Err(status), None) => {
                            prop_assert_eq!(status.code(), Code::NotFound);
                            prop_assert_eq!(shown.as_str(), SEEDED_VERSION);
                        }
                        (got, expected) => {
                            return Err(TestCaseError::fail(format!(
                                "current of {environment}: got {got:?}, expected {expected:?}"
                            )));
                        }
                    }
                }
                // The whole history, newest first: exactly the model's rows
                // (so it grew by exactly the rows written, and other
                // environments' rows are untouched).
                let listed: Vec<Row> = list_all(&mut clients[0].0, "", 500)
                    .await
                    .iter()
                    .map(Row::from)
                    .collect();
                let expected: Vec<Row> = model.rows.iter().rev().cloned().collect();
                prop_assert_eq!(listed, expected);
            }
            Ok::<(), TestCaseError>(())
        })
    });
    runtime.block_on(async {
        for (server, _, _) in servers {
            server.stop().await;
        }
    });
    drop(db);
    if let Err(err) = result {
        panic!("{err}");
    }
}

// ---------------------------------------------------------------------------
// Concurrency, audit, rollbacks, paging.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deployments_from_two_servers_form_one_line() {
    let db = TestDb::new().await;
    let (a, client_a, _) = server_for(&db, "prod").await;
    let (b, client_b, _) = server_for(&db, "prod").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        for (name, client) in [("a", &client_a), ("b", &client_b)] {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                deploy(
                    &mut client,
                    deployment(&format!("{name}.{i}"), "prod", &format!("ci-{name}")),
                )
                .await
            }));
        }
    }
    let mut answered = Vec::new();
    for task in tasks {
        answered.push(task.await.expect("task"));
    }
    let mut client = client_a.clone();
    let mut rows = list_all(&mut client, "prod", 7).await;
    rows.reverse();
    assert_eq!(rows.len(), 40);
    let mut answered_ids: Vec<i64> = answered.iter().map(|d| d.id).collect();
    answered_ids.sort_unstable();
    assert_eq!(answered_ids, rows.iter().map(|r| r.id).collect::<Vec<_>>());
    assert_eq!(rows[0].previous_version, SEEDED_VERSION);
    for pair in rows.windows(2) {
        assert_eq!(
            pair[1].previous_version, pair[0].version,
            "row {} follows row {}",
            pair[1].id, pair[0].id
        );
    }
    let last = rows.last().expect("rows");
    assert_eq!(
        app_version_row(&db, "prod").await.as_deref(),
        Some(last.version.as_str())
    );
    assert_eq!(
        current(&mut client, "prod").await.expect("current").id,
        last.id
    );
    a.stop().await;
    b.stop().await;
}

/// A `config_audit` row: environment, action, old value, new value, actor.
type AuditLine = (String, String, Option<Value>, Option<Value>, String);

#[tokio::test]
async fn every_app_version_change_is_audited_with_the_deployer_as_actor() {
    let (db, server, mut client, mut config) = start().await;
    deploy(&mut client, deployment("1.0.0", "test", "alice")).await;
    deploy(&mut client, deployment("1.0.0", "test", "bob")).await;
    deploy(
        &mut client,
        pb::RecordDeploymentRequest {
            status: St::Failed as i32,
            ..deployment("1.1.0", "test", "carol")
        },
    )
    .await;
    deploy(&mut client, deployment("1.2.0", "test", "dave")).await;
    deploy(&mut client, deployment("9.9.9", "other", "erin")).await;
    let (back, _) = rollback(
        &mut client,
        pb::RecordRollbackRequest {
            actor: "frank".into(),
            ..rollback_request("test", None)
        },
    )
    .await
    .expect("rollback");
    assert_eq!(back.version, "1.0.0");
    assert_eq!(app_version(&mut config).await, "1.0.0");

    let audit: Vec<AuditLine> = sqlx::query_as(
        "SELECT environment, action, old_value, new_value, actor FROM config_audit \
         WHERE key = 'app_version' AND environment <> '*' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("audit");
    let s = |v: &str| Some(Value::String(v.into()));
    assert_eq!(
        audit,
        vec![
            (
                "test".into(),
                "insert".into(),
                None,
                s("1.0.0"),
                "alice".into()
            ),
            (
                "test".into(),
                "update".into(),
                s("1.0.0"),
                s("1.0.0"),
                "bob".into()
            ),
            (
                "test".into(),
                "update".into(),
                s("1.0.0"),
                s("1.2.0"),
                "dave".into()
            ),
            (
                "other".into(),
                "insert".into(),
                None,
                s("9.9.9"),
                "erin".into()
            ),
            (
                "test".into(),
                "update".into(),
                s("1.2.0"),
                s("1.0.0"),
                "frank".into()
            ),
        ]
    );
    let updated_by: String = sqlx::query_scalar(
        "SELECT updated_by FROM app_config WHERE key = 'app_version' AND environment = 'test'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("row");
    assert_eq!(updated_by, "frank");
    server.stop().await;
}

#[tokio::test]
async fn rollbacks_walk_back_through_versions_and_then_refuse() {
    let (db, server, mut client, mut config) = start().await;
    let v1 = deploy(
        &mut client,
        pb::RecordDeploymentRequest {
            commit_sha: "ABCDEF1234".into(),
            notes: "first".into(),
            ..deployment("v1", "test", "ci")
        },
    )
    .await;
    assert_eq!(v1.commit_sha, "abcdef1234");
    assert_eq!(v1.previous_version, SEEDED_VERSION);
    assert_eq!(v1.kind, Kind::Deploy as i32);
    assert!(v1.deployed_at.is_some() && v1.completed_at.is_some());
    let v2 = deploy(&mut client, deployment("v2", "test", "ci")).await;
    let pending = deploy(
        &mut client,
        pb::RecordDeploymentRequest {
            status: St::Pending as i32,
            ..deployment("v9", "test", "ci")
        },
    )
    .await;
    assert!(pending.completed_at.is_none());
    assert_eq!(pending.previous_version, "v2");
    let v3 = deploy(&mut client, deployment("v3", "test", "ci")).await;
    assert_eq!(
        v3.previous_version, "v2",
        "a pending deployment is not current"
    );
    assert_eq!(app_version(&mut config).await, "v3");

    let (back, gone) = rollback(
        &mut client,
        pb::RecordRollbackRequest {
            reason: "errors up".into(),
            actor: "oncall".into(),
            ..rollback_request("test", None)
        },
    )
    .await
    .expect("first rollback");
    assert_eq!(gone.id, v3.id);
    assert_eq!(gone.status, St::RolledBack as i32);
    assert_eq!(back.version, "v2");
    assert_eq!(back.kind, Kind::Rollback as i32);
    assert_eq!(back.status, St::Success as i32);
    assert_eq!(back.previous_version, "v3");
    assert_eq!(back.rollback_of, Some(v2.id));
    assert_eq!(back.notes, "errors up");
    assert_eq!(back.deployed_by, "oncall");
    assert_eq!(app_version(&mut config).await, "v2", "read-your-writes");
    assert_eq!(
        current(&mut client, "test").await.expect("current").id,
        back.id
    );

    let (back2, gone2) = rollback(&mut client, rollback_request("test", None))
        .await
        .expect("second rollback");
    assert_eq!(gone2.id, back.id);
    assert_eq!(back2.version, "v1", "repeated rollbacks walk back");
    assert_eq!(back2.commit_sha, "abcdef1234", "the target's commit");
    assert_eq!(back2.rollback_of, Some(v1.id));
    assert_eq!(app_version(&mut config).await, "v1");

    // Nothing older of another version: refused, nothing changed.
    let before = dump(&db).await;
    let status = assert_code(
        rollback(&mut client, rollback_request("test", None)).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("test"), "{status:?}");
    assert_eq!(dump(&db).await, before);

    // A rolled-back version may be returned to explicitly.
    let (forward, _) = rollback(&mut client, rollback_request("test", Some(v3.id)))
        .await
        .expect("back to v3");
    assert_eq!(forward.version, "v3");
    assert_eq!(app_version(&mut config).await, "v3");
    server.stop().await;
}

#[tokio::test]
async fn refused_rollbacks_get_failed_precondition_and_change_nothing() {
    let (db, server, mut client, _) = start().await;
    // No deployment at all.
    let before = dump(&db).await;
    assert_code(
        rollback(&mut client, rollback_request("test", None)).await,
        Code::FailedPrecondition,
    );
    assert_eq!(dump(&db).await, before);

    let failed = deploy(
        &mut client,
        pb::RecordDeploymentRequest {
            status: St::Failed as i32,
            ..deployment("v0", "test", "ci")
        },
    )
    .await;
    let first = deploy(&mut client, deployment("v1", "test", "ci")).await;
    let elsewhere = deploy(&mut client, deployment("v1", "prod", "ci")).await;
    let latest = deploy(&mut client, deployment("v2", "test", "ci")).await;
    let before = dump(&db).await;
    for target in [
        Some(failed.id),     // never ran
        Some(elsewhere.id),  // another environment
        Some(latest.id),     // the current one
        Some(latest.id + 1), // does not exist
        Some(i64::MAX),
    ] {
        assert_code(
            rollback(&mut client, rollback_request("test", target)).await,
            Code::FailedPrecondition,
        );
        assert_eq!(dump(&db).await, before, "target {target:?}");
    }
    // Only one success in prod: nothing earlier.
    assert_code(
        rollback(&mut client, rollback_request("prod", None)).await,
        Code::FailedPrecondition,
    );
    // An environment never deployed to.
    assert_code(
        rollback(&mut client, rollback_request("nowhere", None)).await,
        Code::FailedPrecondition,
    );
    assert_eq!(dump(&db).await, before);
    let (back, _) = rollback(&mut client, rollback_request("test", Some(first.id)))
        .await
        .expect("a good target still works");
    assert_eq!(back.version, "v1");
    server.stop().await;
}

#[tokio::test]
async fn list_deployments_pages_newest_first_and_filters() {
    let (_db, server, mut client, _) = start().await;
    let mut written = Vec::new();
    for (i, (environment, status)) in [
        ("test", St::Success),
        ("prod", St::Success),
        ("test", St::Failed),
        ("test", St::InProgress),
        ("prod", St::Pending),
        ("test", St::Success),
        ("test", St::Success),
    ]
    .into_iter()
    .enumerate()
    {
        written.push(
            deploy(
                &mut client,
                pb::RecordDeploymentRequest {
                    status: status as i32,
                    ..deployment(&format!("1.0.{i}"), environment, "ci")
                },
            )
            .await,
        );
    }
    let ids = |rows: &[pb::Deployment]| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    let newest_first: Vec<i64> = written.iter().rev().map(|r| r.id).collect();

    // Default page holds everything; no token.
    let page = client
        .list_deployments(pb::ListDeploymentsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ids(&page.deployments), newest_first);
    assert_eq!(page.next_page_token, "");

    // Pages of 3: 3, 3, 1, tokens are the last ids, the last page has none.
    let mut token = String::new();
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = client
            .list_deployments(pb::ListDeploymentsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        sizes.push(page.deployments.len());
        seen.extend(ids(&page.deployments));
        if page.next_page_token.is_empty() {
            break;
        }
        assert_eq!(
            page.next_page_token,
            page.deployments.last().expect("rows").id.to_string()
        );
        token = page.next_page_token;
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(seen, newest_first);

    // A page that ends exactly at the last row has no token.
    let page = client
        .list_deployments(pb::ListDeploymentsRequest {
            page_size: 7,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.deployments.len(), 7);
    assert_eq!(page.next_page_token, "");

    // Filters.
    let prod = list_all(&mut client, "prod", 0).await;
    assert_eq!(ids(&prod), [written[4].id, written[1].id]);
    let successes = client
        .list_deployments(pb::ListDeploymentsRequest {
            environment: "test".into(),
            status: St::Success as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .deployments;
    assert_eq!(
        ids(&successes),
        [written[6].id, written[5].id, written[0].id]
    );
    assert!(list_all(&mut client, "nowhere", 0).await.is_empty());

    // GetCurrentDeployment: the newest success; NOT_FOUND when none.
    assert_eq!(
        current(&mut client, "test").await.expect("test").id,
        written[6].id
    );
    assert_eq!(
        current(&mut client, "prod").await.expect("prod").id,
        written[1].id
    );
    assert_code(current(&mut client, "nowhere").await, Code::NotFound);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Bad input and tokens.

#[tokio::test]
async fn bad_input_gets_invalid_argument_naming_the_field_and_changes_nothing() {
    let (db, server, mut client, _) = start().await;
    deploy(&mut client, deployment("1.0.0", "test", "ci")).await;
    deploy(&mut client, deployment("1.1.0", "test", "ci")).await;
    let before = dump(&db).await;

    let good = || deployment("2.0.0", "test", "ci");
    let long = |n: usize| "a".repeat(n);
    let bad_deployments: Vec<(pb::RecordDeploymentRequest, &str)> = vec![
        (
            pb::RecordDeploymentRequest {
                version: String::new(),
                ..good()
            },
            "version",
        ),
        (
            pb::RecordDeploymentRequest {
                version: "-1.0".into(),
                ..good()
            },
            "version",
        ),
        (
            pb::RecordDeploymentRequest {
                version: ".1".into(),
                ..good()
            },
            "version",
        ),
        (
            pb::RecordDeploymentRequest {
                version: "1.0 beta".into(),
                ..good()
            },
            "version",
        ),
        (
            pb::RecordDeploymentRequest {
                version: "1/2".into(),
                ..good()
            },
            "version",
        ),
        (
            pb::RecordDeploymentRequest {
                version: "é1".into(),
                ..good()
            },
            "version",
        ),
        (
            pb::RecordDeploymentRequest {
                version: "1.0\n".into(),
                ..good()
            },
            "version",
        ),
        (
            pb::RecordDeploymentRequest {
                version: long(65),
                ..good()
            },
            "version",
        ),
        (
            pb::RecordDeploymentRequest {
                environment: String::new(),
                ..good()
            },
            "environment",
        ),
        (
            pb::RecordDeploymentRequest {
                environment: "*".into(),
                ..good()
            },
            "environment",
        ),
        (
            pb::RecordDeploymentRequest {
                environment: "Prod".into(),
                ..good()
            },
            "environment",
        ),
        (
            pb::RecordDeploymentRequest {
                environment: "-prod".into(),
                ..good()
            },
            "environment",
        ),
        (
            pb::RecordDeploymentRequest {
                environment: "a.b".into(),
                ..good()
            },
            "environment",
        ),
        (
            pb::RecordDeploymentRequest {
                environment: long(65),
                ..good()
            },
            "environment",
        ),
        (
            pb::RecordDeploymentRequest {
                deployed_by: String::new(),
                ..good()
            },
            "deployed_by",
        ),
        (
            pb::RecordDeploymentRequest {
                deployed_by: "   ".into(),
                ..good()
            },
            "deployed_by",
        ),
        (
            pb::RecordDeploymentRequest {
                deployed_by: "a\nb".into(),
                ..good()
            },
            "deployed_by",
        ),
        (
            pb::RecordDeploymentRequest {
                deployed_by: "a\0b".into(),
                ..good()
            },
            "deployed_by",
        ),
        (
            pb::RecordDeploymentRequest {
                deployed_by: "é".repeat(129),
                ..good()
            },
            "deployed_by",
        ),
        (
            pb::RecordDeploymentRequest {
                commit_sha: "abc12".into(),
                ..good()
            },
            "commit_sha",
        ),
        (
            pb::RecordDeploymentRequest {
                commit_sha: "g".repeat(7),
                ..good()
            },
            "commit_sha",
        ),
        (
            pb::RecordDeploymentRequest {
                commit_sha: "a".repeat(41),
                ..good()
            },
            "commit_sha",
        ),
        (
            pb::RecordDeploymentRequest {
                notes: "x\0y".into(),
                ..good()
            },
            "notes",
        ),
        (
            pb::RecordDeploymentRequest {
                notes: long(4097),
                ..good()
            },
            "notes",
        ),
        (
            pb::RecordDeploymentRequest {
                status: St::RolledBack as i32,
                ..good()
            },
            "status",
        ),
        (
            pb::RecordDeploymentRequest {
                status: 99,
                ..good()
            },
            "status",
        ),
        (
            pb::RecordDeploymentRequest {
                status: -1,
                ..good()
            },
            "status",
        ),
    ];
    for (request, field) in bad_deployments {
        let what = format!("{request:?}");
        let result = client.record_deployment(admin(request)).await;
        assert!(result.is_err(), "{what} was accepted");
        assert_invalid(result, field);
        assert_eq!(dump(&db).await, before, "{what} changed rows");
    }
    // Every broken rule is named at once.
    let status = assert_code(
        client
            .record_deployment(admin(pb::RecordDeploymentRequest {
                version: "!".into(),
                environment: "*".into(),
                deployed_by: String::new(),
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
    );
    for field in ["version", "environment", "deployed_by"] {
        assert!(status.message().contains(field), "{status:?}");
    }

    let good = || rollback_request("test", None);
    let bad_rollbacks: Vec<(pb::RecordRollbackRequest, &str)> = vec![
        (
            pb::RecordRollbackRequest {
                environment: String::new(),
                ..good()
            },
            "environment",
        ),
        (
            pb::RecordRollbackRequest {
                environment: "*".into(),
                ..good()
            },
            "environment",
        ),
        (
            pb::RecordRollbackRequest {
                environment: "TEST".into(),
                ..good()
            },
            "environment",
        ),
        (
            pb::RecordRollbackRequest {
                target_deployment_id: Some(0),
                ..good()
            },
            "target_deployment_id",
        ),
        (
            pb::RecordRollbackRequest {
                target_deployment_id: Some(-5),
                ..good()
            },
            "target_deployment_id",
        ),
        (
            pb::RecordRollbackRequest {
                reason: "a\0".into(),
                ..good()
            },
            "reason",
        ),
        (
            pb::RecordRollbackRequest {
                reason: long(4097),
                ..good()
            },
            "reason",
        ),
        (
            pb::RecordRollbackRequest {
                actor: String::new(),
                ..good()
            },
            "actor",
        ),
        (
            pb::RecordRollbackRequest {
                actor: " \t".into(),
                ..good()
            },
            "actor",
        ),
        (
            pb::RecordRollbackRequest {
                actor: "x\u{1b}[2J".into(),
                ..good()
            },
            "actor",
        ),
        (
            pb::RecordRollbackRequest {
                actor: long(129),
                ..good()
            },
            "actor",
        ),
    ];
    for (request, field) in bad_rollbacks {
        let what = format!("{request:?}");
        assert_invalid(client.record_rollback(admin(request)).await, field);
        assert_eq!(dump(&db).await, before, "{what} changed rows");
    }

    let bad_lists: Vec<(pb::ListDeploymentsRequest, &str)> = vec![
        (
            pb::ListDeploymentsRequest {
                environment: "*".into(),
                ..Default::default()
            },
            "environment",
        ),
        (
            pb::ListDeploymentsRequest {
                environment: "A".into(),
                ..Default::default()
            },
            "environment",
        ),
        (
            pb::ListDeploymentsRequest {
                status: 42,
                ..Default::default()
            },
            "status",
        ),
        (
            pb::ListDeploymentsRequest {
                page_size: 501,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListDeploymentsRequest {
                page_size: u32::MAX,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListDeploymentsRequest {
                page_token: "abc".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListDeploymentsRequest {
                page_token: "-1".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListDeploymentsRequest {
                page_token: "0".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListDeploymentsRequest {
                page_token: "1.5".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListDeploymentsRequest {
                page_token: " 3".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListDeploymentsRequest {
                page_token: "99999999999999999999".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ];
    for (request, field) in bad_lists {
        assert_invalid(client.list_deployments(request).await, field);
    }
    for environment in ["", "*", "Test", "a b"] {
        assert_invalid(
            client
                .get_current_deployment(pb::GetCurrentDeploymentRequest {
                    environment: environment.into(),
                })
                .await,
            "environment",
        );
    }
    // The largest page is fine.
    client
        .list_deployments(pb::ListDeploymentsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("500 rows a page");
    assert_eq!(dump(&db).await, before);
    server.stop().await;
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    request
}

#[tokio::test]
async fn writes_need_the_admin_token_and_change_nothing_without_it() {
    let (db, server, mut client, _) = start().await;
    deploy(&mut client, deployment("1.0.0", "test", "ci")).await;
    deploy(&mut client, deployment("1.1.0", "test", "ci")).await;
    let before = dump(&db).await;
    for (token, code) in [
        (None, Code::Unauthenticated),
        (Some("wrong-token"), Code::PermissionDenied),
    ] {
        assert_code(
            client
                .record_deployment(with_token(deployment("2.0.0", "test", "ci"), token))
                .await,
            code,
        );
        assert_code(
            client
                .record_rollback(with_token(rollback_request("test", None), token))
                .await,
            code,
        );
    }
    // Reads need no token when no read token is configured.
    client
        .list_deployments(pb::ListDeploymentsRequest::default())
        .await
        .expect("list");
    assert_eq!(dump(&db).await, before);
    server.stop().await;

    // A readyd without an admin token refuses every write.
    let server = TestServer::start(serve_args(&db.url)).await;
    let mut client = DeploymentServiceClient::new(server.channel().await);
    let status = assert_code(
        client
            .record_deployment(admin(deployment("2.0.0", "test", "ci")))
            .await,
        Code::PermissionDenied,
    );
    assert!(
        status.message().contains("READYD_ADMIN_TOKEN"),
        "{status:?}"
    );
    assert_code(
        client
            .record_rollback(admin(rollback_request("test", None)))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(dump(&db).await, before);
    server.stop().await;
}
