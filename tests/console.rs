//! The web console's sign-in, session and CSRF rules over real HTTP
//! connections: tokens become an `HttpOnly`, `SameSite=Strict` session
//! cookie and never reach the page; changes need the session's CSRF
//! token; sign-in attempts are throttled.

mod support;

use std::net::SocketAddr;

use support::http1::{Answer, request};
use support::usage::{age_flag, flag_sums, insert_usage};
use support::{TestDb, TestServer, serve_args};

const ADMIN: &str = "admin-token-for-console-tests";
const READER: &str = "read-token-for-console-tests";

async fn sign_in(addr: SocketAddr, token: &str, name: &str) -> Answer {
    let body = serde_json::json!({ "token": token, "name": name }).to_string();
    request(
        addr,
        "POST",
        "/console/api/session",
        "Content-Type: application/json\r\n",
        &body,
    )
    .await
}

async fn start(db: &TestDb) -> TestServer {
    let mut args = serve_args(&db.url);
    args.http_listen = "127.0.0.1:0".into();
    args.admin_token = Some(ADMIN.into());
    args.read_token = Some(READER.into());
    args.console = true;
    TestServer::start(args).await
}

#[tokio::test]
async fn signing_in_makes_a_session_cookie_that_never_holds_the_token() {
    let db = TestDb::new().await;
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");

    // The page: embedded, locked down, no token anywhere.
    for path in ["/console", "/console/app.js", "/console/app.css"] {
        let page = request(http, "GET", path, "", "").await;
        assert_eq!(page.code, 200, "{path}: {page:?}");
        assert!(
            page.header("content-security-policy")
                .is_some_and(|csp| csp.contains("frame-ancestors 'none'")),
            "{page:?}"
        );
        assert!(!page.body.contains(ADMIN) && !page.body.contains(READER));
    }

    // Nothing without a session.
    assert_eq!(
        request(http, "GET", "/console/api/health", "", "")
            .await
            .code,
        401
    );
    let nobody = request(http, "GET", "/console/api/session", "", "").await;
    assert_eq!(nobody.code, 200, "{nobody:?}");
    assert_eq!(nobody.json(), serde_json::json!({"signedIn": false}));

    // The admin token: a session with full access.
    let signed = sign_in(http, ADMIN, "ana").await;
    assert_eq!(signed.code, 200, "{signed:?}");
    let cookie = signed.header("set-cookie").expect("a cookie").to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    assert!(!cookie.contains(ADMIN) && !signed.body.contains(ADMIN));
    let session = signed.json();
    assert_eq!(session["actor"], "ana");
    assert_eq!(session["access"], "admin");
    let csrf = session["csrf"].as_str().expect("a CSRF token").to_owned();
    let value = cookie.split(';').next().expect("name=value");
    let with_cookie = format!("Cookie: {value}\r\n");

    let health = request(http, "GET", "/console/api/health", &with_cookie, "").await;
    assert_eq!(health.code, 200, "{health:?}");
    assert!(health.json()["checks"].is_array(), "{health:?}");
    let who = request(http, "GET", "/console/api/session", &with_cookie, "").await;
    assert_eq!(who.json()["signedIn"], true);
    assert_eq!(who.json()["actor"], "ana");
    assert_eq!(who.json()["csrf"], csrf.as_str());

    // A forged or changed cookie is no session.
    let forged = with_cookie.replacen("admin.", "read.", 1);
    assert_eq!(
        request(http, "GET", "/console/api/health", &forged, "")
            .await
            .code,
        401
    );
    assert_eq!(
        request(http, "GET", "/console/api/session", &forged, "")
            .await
            .json(),
        serde_json::json!({"signedIn": false})
    );

    // Sign-out is a change: without the CSRF token it is refused.
    let refused = request(http, "POST", "/console/api/sign-out", &with_cookie, "{}").await;
    assert_eq!(refused.code, 403, "{refused:?}");
    let wrong = format!("{with_cookie}X-CSRF-Token: 00\r\n");
    assert_eq!(
        request(http, "POST", "/console/api/sign-out", &wrong, "{}")
            .await
            .code,
        403
    );
    let right = format!("{with_cookie}X-CSRF-Token: {csrf}\r\n");
    let out = request(http, "POST", "/console/api/sign-out", &right, "{}").await;
    assert_eq!(out.code, 200, "{out:?}");
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );

    // The read token: read-only.
    let read = sign_in(http, READER, "ben").await;
    assert_eq!(read.code, 200, "{read:?}");
    assert_eq!(read.json()["access"], "read");
}

#[tokio::test]
async fn bad_sign_ins_are_refused_clearly_and_throttled() {
    let db = TestDb::new().await;
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");
    let nameless = sign_in(http, ADMIN, " ").await;
    assert_eq!(nameless.code, 400, "{nameless:?}");
    assert!(
        nameless.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("name")
    );
    let mut codes = vec![nameless.code];
    // Five attempts in a burst, then one every six seconds: a series of
    // ten cannot all pass.
    for _ in 0..10 {
        let answer = sign_in(http, "a-guess", "eve").await;
        codes.push(answer.code);
        if answer.code == 429 {
            assert!(answer.header("retry-after").is_some(), "{answer:?}");
            break;
        }
        assert_eq!(answer.code, 403, "{answer:?}");
    }
    assert_eq!(codes.last(), Some(&429), "{codes:?}");
    // Throttled means throttled: even the right token waits.
    assert_eq!(sign_in(http, ADMIN, "ana").await.code, 429);
}

#[tokio::test]
async fn without_console_the_paths_do_not_exist() {
    let db = TestDb::new().await;
    let mut args = serve_args(&db.url);
    args.http_listen = "127.0.0.1:0".into();
    args.admin_token = Some(ADMIN.into());
    let server = TestServer::start(args).await;
    let http = server.http_addr.expect("an HTTP address");
    assert_eq!(request(http, "GET", "/console", "", "").await.code, 404);
    assert_eq!(sign_in(http, ADMIN, "ana").await.code, 404);
}

/// Signs in and returns the cookie header line and the CSRF header line.
async fn session(http: SocketAddr, token: &str, name: &str) -> (String, String) {
    let signed = sign_in(http, token, name).await;
    assert_eq!(signed.code, 200, "{signed:?}");
    let cookie = signed.header("set-cookie").expect("a cookie");
    let value = cookie.split(';').next().expect("name=value");
    let csrf = signed.json()["csrf"].as_str().expect("csrf").to_owned();
    (
        format!("Cookie: {value}\r\n"),
        format!("X-CSRF-Token: {csrf}\r\nContent-Type: application/json\r\n"),
    )
}

#[tokio::test]
async fn an_admin_session_changes_flags_as_its_name_and_a_read_session_cannot() {
    use readyd::api::pb::readyd::v1 as pb;
    let db = TestDb::new().await;
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");
    let (cookie, csrf) = session(http, ADMIN, "ana").await;

    let listed = request(http, "GET", "/console/api/flags", &cookie, "").await;
    assert_eq!(listed.code, 200, "{listed:?}");
    let flag = listed.json()["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .find(|flag| flag["key"] == "dark_mode")
        .cloned()
        .expect("the seeded dark_mode flag");
    let was = flag["enabled"].as_bool().expect("enabled");

    // What the page sends: the flag as listed, one field changed, at the
    // version it was listed at.
    let mut change = flag.clone();
    let object = change.as_object_mut().expect("an object");
    for field in [
        "version",
        "updatedAt",
        "updatedBy",
        "targeting",
        "clientVisible",
        "createdAt",
        "permanent",
    ] {
        object.remove(field);
    }
    object.insert("enabled".into(), serde_json::json!(!was));
    object.insert("rolloutPercentage".into(), serde_json::json!(100));
    object.insert("expectedVersion".into(), flag["version"].clone());
    let body = change.to_string();
    let headers = format!("{cookie}{csrf}");

    let no_csrf = request(http, "POST", "/console/api/flags", &cookie, &body).await;
    assert_eq!(no_csrf.code, 403, "{no_csrf:?}");
    let changed = request(http, "POST", "/console/api/flags", &headers, &body).await;
    assert_eq!(changed.code, 200, "{changed:?}");
    let stored = &changed.json()["flag"];
    assert_eq!(stored["enabled"], !was);
    assert_eq!(
        stored["updatedBy"], "ana",
        "the session's name is the actor"
    );

    // EvaluateFlag sees it.
    let mut grpc = pb::flag_service_client::FlagServiceClient::new(server.channel().await);
    let mut evaluate = tonic::Request::new(pb::EvaluateFlagRequest {
        key: "dark_mode".into(),
        context: Some(pb::EvaluationContext {
            user_id: "u1".into(),
            ..Default::default()
        }),
        explain: false,
    });
    evaluate.metadata_mut().insert(
        "authorization",
        format!("Bearer {READER}").parse().expect("header"),
    );
    let answer = grpc
        .evaluate_flag(evaluate)
        .await
        .expect("evaluate")
        .into_inner();
    let value = answer.value.and_then(|value| value.kind);
    assert_eq!(
        value,
        Some(prost_types::value::Kind::BoolValue(!was)),
        "the toggle reached evaluation"
    );

    // The same change again, from the old version: someone changed it.
    let conflict = request(http, "POST", "/console/api/flags", &headers, &body).await;
    assert_eq!(conflict.code, 409, "{conflict:?}");

    // Validation messages name their field, which the page shows beside
    // it: `field: message`.
    let mut bad = change.clone();
    bad["rolloutPercentage"] = serde_json::json!(150);
    bad["expectedVersion"] = changed.json()["flag"]["version"].clone();
    let refused = request(
        http,
        "POST",
        "/console/api/flags",
        &headers,
        &bad.to_string(),
    )
    .await;
    assert_eq!(refused.code, 400, "{refused:?}");
    let message = refused.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.starts_with("rollout_percentage: "), "{message}");

    // The try-it box explains.
    let tried = request(
        http,
        "POST",
        "/console/api/evaluate",
        &headers,
        r#"{"key": "dark_mode", "context": {"userId": "u1"}, "explain": true}"#,
    )
    .await;
    assert_eq!(tried.code, 200, "{tried:?}");
    assert!(tried.json()["explanation"].is_array(), "{tried:?}");

    // A read session sees flags and cannot change them.
    let (read_cookie, read_csrf) = session(http, READER, "ben").await;
    let listed = request(http, "GET", "/console/api/flags", &read_cookie, "").await;
    assert_eq!(listed.code, 200);
    let refused = request(
        http,
        "POST",
        "/console/api/flags",
        &format!("{read_cookie}{read_csrf}"),
        &body,
    )
    .await;
    assert_eq!(refused.code, 403, "{refused:?}");
}

#[tokio::test]
async fn deployments_are_recorded_and_rolled_back_by_the_sessions_name() {
    let db = TestDb::new().await;
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");
    let (cookie, csrf) = session(http, ADMIN, "ana").await;
    let headers = format!("{cookie}{csrf}");
    for version in ["1.0.0", "1.1.0"] {
        let body = serde_json::json!({
            "version": version,
            "environment": "staging",
            "deployedBy": "someone else",
            "status": "DEPLOYMENT_STATUS_SUCCESS",
        })
        .to_string();
        let recorded = request(http, "POST", "/console/api/deployments", &headers, &body).await;
        assert_eq!(recorded.code, 200, "{recorded:?}");
    }
    let listed = request(
        http,
        "GET",
        "/console/api/deployments?environment=staging",
        &cookie,
        "",
    )
    .await;
    assert_eq!(listed.code, 200, "{listed:?}");
    let deployments = listed.json()["deployments"].clone();
    let deployments = deployments.as_array().expect("deployments");
    assert_eq!(deployments.len(), 2, "{deployments:?}");
    assert!(
        deployments.iter().all(|d| d["deployedBy"] == "ana"),
        "the session's name, whatever the body says: {deployments:?}"
    );

    // The overview's current deployment per environment: the newest
    // success of each, for a read-only session too.
    let body = serde_json::json!({
        "version": "2.0.0",
        "environment": "prod",
        "status": "DEPLOYMENT_STATUS_SUCCESS",
    })
    .to_string();
    let recorded = request(http, "POST", "/console/api/deployments", &headers, &body).await;
    assert_eq!(recorded.code, 200, "{recorded:?}");
    let (read_cookie, _) = session(http, READER, "ben").await;
    let current = request(
        http,
        "GET",
        "/console/api/current-deployments",
        &read_cookie,
        "",
    )
    .await;
    assert_eq!(current.code, 200, "{current:?}");
    let current: Vec<(String, String)> = current.json()["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| {
            (
                d["environment"].as_str().unwrap_or_default().to_owned(),
                d["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        current,
        [
            ("prod".to_owned(), "2.0.0".to_owned()),
            ("staging".to_owned(), "1.1.0".to_owned())
        ]
    );

    let body = r#"{"environment": "staging", "reason": "bad release", "actor": "mallory"}"#;
    assert_eq!(
        request(http, "POST", "/console/api/rollback", &cookie, body)
            .await
            .code,
        403,
        "no CSRF token"
    );
    let rolled = request(http, "POST", "/console/api/rollback", &headers, body).await;
    assert_eq!(rolled.code, 200, "{rolled:?}");
    assert!(rolled.body.contains("ana"), "{rolled:?}");
    assert!(!rolled.body.contains("mallory"), "{rolled:?}");

    let (read_cookie, read_csrf) = session(http, READER, "ben").await;
    let refused = request(
        http,
        "POST",
        "/console/api/rollback",
        &format!("{read_cookie}{read_csrf}"),
        body,
    )
    .await;
    assert_eq!(refused.code, 403, "{refused:?}");
}

#[tokio::test]
async fn the_history_page_reads_the_recorded_rows_of_a_range() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO system_health (recorded_at, instance, status, database_size_bytes, \
         active_connections, max_connections, error_count, response_time_ms, checks) \
         VALUES (now() - interval '2 hours', 'other', 'unhealthy', 0, 0, 0, 0, 0, \
                 '{\"overall\": \"unhealthy\", \"checks\": {\"cache\": {\"latency_ms\": 12.5}}}'), \
                (now() - interval '30 hours', 'other', 'healthy', 0, 0, 0, 0, 0, '{}')",
    )
    .execute(&db.pool)
    .await
    .expect("history rows");
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");
    assert_eq!(
        request(http, "GET", "/console/api/health-history", "", "")
            .await
            .code,
        401
    );
    let (cookie, _) = session(http, READER, "ben").await;
    let day = request(
        http,
        "GET",
        "/console/api/health-history?hours=24",
        &cookie,
        "",
    )
    .await;
    assert_eq!(day.code, 200, "{day:?}");
    let records = day.json()["records"].clone();
    let records = records.as_array().expect("records");
    assert!(
        records
            .iter()
            .any(|r| r["checks"]["checks"]["cache"]["latency_ms"] == 12.5),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r["instance"] != "other" || r["status"] == "HEALTH_STATUS_UNHEALTHY"),
        "the 30-hour-old row is outside the range: {records:?}"
    );
    for bad in ["0", "169", "soon"] {
        let refused = request(
            http,
            "GET",
            &format!("/console/api/health-history?hours={bad}"),
            &cookie,
            "",
        )
        .await;
        assert_eq!(refused.code, 400, "{bad}: {refused:?}");
    }
}

#[tokio::test]
async fn the_timeline_puts_every_kind_of_change_on_one_axis_by_environment() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO system_health (recorded_at, instance, status, database_size_bytes, \
         active_connections, max_connections, error_count, response_time_ms, checks) \
         VALUES (now() - interval '3 minutes', 'pod-1', 'healthy', 0, 0, 0, 0, 0, '{\"overall\": \"healthy\"}'), \
                (now() - interval '2 minutes', 'pod-1', 'healthy', 0, 0, 0, 0, 0, '{\"overall\": \"unhealthy\"}'), \
                (now() - interval '1 minutes', 'pod-1', 'healthy', 0, 0, 0, 0, 0, '{\"overall\": \"unhealthy\"}')",
    )
    .execute(&db.pool)
    .await
    .expect("history rows");
    for (environment, version) in [("prod", "2.0.0"), ("staging", "2.1.0")] {
        sqlx::query(
            "INSERT INTO deployment_history (version, environment, deployed_by) VALUES ($1, $2, 'ci')",
        )
        .bind(version)
        .bind(environment)
        .execute(&db.pool)
        .await
        .expect("deployment");
    }
    sqlx::query("SET readyd.actor = 'dba'")
        .execute(&db.pool)
        .await
        .ok();
    sqlx::query(
        "INSERT INTO app_config (key, environment, value, is_sensitive) \
         VALUES ('db.password', 'prod', '\"hunter2\"', true)",
    )
    .execute(&db.pool)
    .await
    .expect("config row");
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");
    let (cookie, _) = session(http, READER, "ben").await;

    let all = request(http, "GET", "/console/api/timeline?hours=1", &cookie, "").await;
    assert_eq!(all.code, 200, "{all:?}");
    assert!(!all.body.contains("hunter2"), "never a value: {all:?}");
    let entries = all.json()["entries"].clone();
    let entries = entries.as_array().expect("entries");
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in ["deploy", "config", "health"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let transitions: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["kind"] == "health").collect();
    assert_eq!(
        transitions.len(),
        1,
        "one transition, not one per row: {transitions:?}"
    );
    assert_eq!(transitions[0]["what"], "healthy → unhealthy");
    let times: Vec<&str> = entries.iter().filter_map(|e| e["at"].as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");

    let staging = request(
        http,
        "GET",
        "/console/api/timeline?hours=1&environment=staging",
        &cookie,
        "",
    )
    .await;
    let staging = staging.json()["entries"].clone();
    let staging = staging.as_array().expect("entries");
    assert!(
        staging
            .iter()
            .any(|e| e["what"].as_str().is_some_and(|w| w.contains("2.1.0")))
    );
    assert!(
        !staging.iter().any(|e| e["environment"] == "prod"),
        "only staging's: {staging:?}"
    );
    let bad = request(
        http,
        "GET",
        "/console/api/timeline?environment=Not%20One",
        &cookie,
        "",
    )
    .await;
    assert_eq!(bad.code, 400, "{bad:?}");
}

#[tokio::test]
async fn sensitive_values_stay_masked_until_an_admin_reveals_one_and_that_is_audited() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO app_config (key, environment, value, is_sensitive) VALUES \
         ('db.password', 'test', '\"hunter2\"', true), \
         ('greeting', '*', '\"hello\"', false)",
    )
    .execute(&db.pool)
    .await
    .expect("config rows");
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");

    // A read session: masked, and no way to reveal.
    let (read_cookie, read_csrf) = session(http, READER, "ben").await;
    let listed = request(http, "GET", "/console/api/config", &read_cookie, "").await;
    assert_eq!(listed.code, 200, "{listed:?}");
    assert!(!listed.body.contains("hunter2"), "{listed:?}");
    let entries = listed.json()["entries"].clone();
    let greeting = entries
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["key"] == "greeting")
        .cloned()
        .expect("the inherited row");
    assert_eq!(greeting["environment"], "*", "where it comes from");
    assert_eq!(greeting["value"], "hello");
    let reveal = r#"{"key": "db.password", "environment": "test"}"#;
    let refused = request(
        http,
        "POST",
        "/console/api/config/reveal",
        &format!("{read_cookie}{read_csrf}"),
        reveal,
    )
    .await;
    assert_eq!(refused.code, 403, "{refused:?}");
    assert!(!refused.body.contains("hunter2"));
    assert_eq!(
        request(
            http,
            "GET",
            "/console/api/config/audit?key=db.password",
            &read_cookie,
            ""
        )
        .await
        .code,
        403
    );

    // An admin session: masked too, until revealed on purpose.
    let (cookie, csrf) = session(http, ADMIN, "ana").await;
    let headers = format!("{cookie}{csrf}");
    let listed = request(http, "GET", "/console/api/config", &cookie, "").await;
    assert!(!listed.body.contains("hunter2"), "{listed:?}");
    assert_eq!(
        request(http, "POST", "/console/api/config/reveal", &cookie, reveal)
            .await
            .code,
        403,
        "no CSRF token"
    );
    let revealed = request(http, "POST", "/console/api/config/reveal", &headers, reveal).await;
    assert_eq!(revealed.code, 200, "{revealed:?}");
    assert_eq!(revealed.json()["value"], "hunter2");
    let audit = request(
        http,
        "GET",
        "/console/api/config/audit?key=db.password",
        &cookie,
        "",
    )
    .await;
    assert_eq!(audit.code, 200, "{audit:?}");
    assert!(
        !audit.body.contains("hunter2"),
        "never the value: {audit:?}"
    );
    let trail = audit.json()["entries"].clone();
    let reveal_row = trail
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["action"] == "CONFIG_AUDIT_ACTION_REVEAL")
        .cloned()
        .unwrap_or_else(|| panic!("a reveal row: {trail}"));
    assert_eq!(reveal_row["actor"], "ana");
    let missing = request(
        http,
        "POST",
        "/console/api/config/reveal",
        &headers,
        r#"{"key": "nope", "environment": "test"}"#,
    )
    .await;
    assert_eq!(missing.code, 404, "{missing:?}");

    // An edit, as the session's name.
    let edited = request(
        http,
        "POST",
        "/console/api/config",
        &headers,
        r#"{"key": "greeting", "environment": "*", "value": "hi", "expectedVersion": "0"}"#,
    )
    .await;
    assert_eq!(edited.code, 409, "a stale version: {edited:?}");
    let edited = request(
        http,
        "POST",
        "/console/api/config",
        &headers,
        r#"{"key": "greeting", "environment": "*", "value": "hi"}"#,
    )
    .await;
    assert_eq!(edited.code, 200, "{edited:?}");
    assert!(edited.body.contains("\"ana\""), "{edited:?}");
}

#[tokio::test]
async fn every_console_api_route_but_the_session_question_needs_a_session_and_changes_need_an_admin_one()
 {
    let db = TestDb::new().await;
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");
    let json = "Content-Type: application/json\r\n";
    for (method, path) in [
        ("GET", "/console/api/health"),
        ("GET", "/console/api/health-history"),
        ("GET", "/console/api/timeline"),
        ("GET", "/console/api/flags"),
        ("POST", "/console/api/flags"),
        ("POST", "/console/api/evaluate"),
        ("GET", "/console/api/deployments"),
        ("POST", "/console/api/deployments"),
        ("POST", "/console/api/rollback"),
        ("GET", "/console/api/current-deployments"),
        ("GET", "/console/api/stale-flags"),
        ("GET", "/console/api/flag-usage?key=dark_mode"),
        ("GET", "/console/api/config"),
        ("POST", "/console/api/config"),
        ("POST", "/console/api/config/reveal"),
        ("GET", "/console/api/config/audit"),
        ("POST", "/console/api/sign-out"),
    ] {
        let refused = request(http, method, path, json, "{}").await;
        assert_eq!(refused.code, 401, "{method} {path}: {refused:?}");
    }
    let (cookie, csrf) = session(http, READER, "ben").await;
    let headers = format!("{cookie}{csrf}");
    for path in [
        "/console/api/flags",
        "/console/api/deployments",
        "/console/api/rollback",
        "/console/api/config",
        "/console/api/config/reveal",
    ] {
        let refused = request(http, "POST", path, &headers, "{}").await;
        assert_eq!(refused.code, 403, "a read session, {path}: {refused:?}");
    }
    let refused = request(http, "GET", "/console/api/config/audit", &cookie, "").await;
    assert_eq!(refused.code, 403, "{refused:?}");
}

/// `readyd serve --console` says in its log where to open the console, and
/// the page is there.
#[tokio::test]
async fn the_log_names_the_console_address_and_the_page_is_there() {
    use std::time::Duration;
    use support::daemon::DaemonCommand;
    let db = TestDb::new().await;
    let mut daemon = DaemonCommand::serve()
        .env("DATABASE_URL", &db.url)
        .env("READYD_ADMIN_TOKEN", ADMIN)
        .args(["--console", "--http-listen", "127.0.0.1:0"])
        .start()
        .await;
    let line = daemon
        .wait_for_log("the web console is open", Duration::from_secs(30))
        .await;
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let url = event
        .pointer("/fields/url")
        .or_else(|| event.get("url"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_else(|| panic!("no url in {line}"))
        .to_owned();
    assert!(!line.contains(ADMIN), "the token is not logged: {line}");
    let (addr, path) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .unwrap_or_else(|| panic!("not an http URL: {url}"));
    assert_eq!(path, "console");
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let page = request(addr, "GET", "/console", "", "").await;
    assert_eq!(page.code, 200, "{page:?}");
    assert!(page.body.contains("<html"), "{page:?}");
    assert!(!page.body.contains(ADMIN));
}

/// The flags list's "stale" filter reads ListStaleFlags: a flag created
/// long ago and never evaluated is listed with its reason.
#[tokio::test]
async fn stale_flags_are_listed_for_any_session() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO feature_flags (key, description, enabled, rollout_percentage) VALUES \
           ('old_banner', 'Forgotten', true, 100), ('new_banner', 'Fresh', true, 100)",
    )
    .execute(&db.pool)
    .await
    .expect("flags");
    age_flag(&db, "old_banner", 60).await;
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");
    let (cookie, _) = session(http, READER, "ben").await;
    let listed = request(http, "GET", "/console/api/stale-flags", &cookie, "").await;
    assert_eq!(listed.code, 200, "{listed:?}");
    let stale: Vec<(String, String)> = listed.json()["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| {
            (
                f["key"].as_str().unwrap_or_default().to_owned(),
                f["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .filter(|(key, _)| key.ends_with("_banner"))
        .collect();
    assert_eq!(
        stale,
        [("old_banner".to_owned(), "not_evaluated".to_owned())]
    );
}

/// A request made with `token`.
fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// Usage sums by (environment, variant, reason).
type UsageSums = std::collections::BTreeMap<(String, String, String), i64>;

/// A `GetFlagUsageResponse` as JSON, summed by (environment, variant,
/// reason); checks that its total is the buckets' sum.
fn console_sums(answer: &serde_json::Value) -> UsageSums {
    // uint64 is a string in JSON protobuf.
    let number = |value: &serde_json::Value| {
        value
            .as_str()
            .and_then(|text| text.parse::<i64>().ok())
            .or_else(|| value.as_i64())
            .unwrap_or_else(|| panic!("a count: {value}"))
    };
    let mut sums = UsageSums::new();
    for bucket in answer["buckets"].as_array().expect("buckets") {
        let key = (
            bucket["environment"]
                .as_str()
                .expect("environment")
                .to_owned(),
            bucket["variant"].as_str().expect("variant").to_owned(),
            bucket["reason"].as_str().expect("reason").to_owned(),
        );
        *sums.entry(key).or_default() += number(&bucket["count"]);
    }
    let total = if answer["total"].is_null() {
        0
    } else {
        number(&answer["total"])
    };
    assert_eq!(total, sums.values().sum::<i64>(), "the total: {answer}");
    sums
}

/// A flag's page reads its usage through GetFlagUsage: after a known
/// number of evaluations and a flush, the counts per environment, variant
/// and reason equal those made and the table's; a range leaves out the
/// hours before it; bad input is refused with `400`.
#[tokio::test]
async fn a_flags_usage_in_the_console_equals_the_table_after_evaluations_and_a_flush() {
    use readyd::api::pb::readyd::v1 as pb;
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO feature_flags (key, enabled, rollout_percentage, target_users) \
         VALUES ('vip_banner', true, 0, '{vip}')",
    )
    .execute(&db.pool)
    .await
    .expect("a targeted flag");
    // Evaluations of 30 hours ago, elsewhere: in the week, not in the day.
    insert_usage(&db, "vip_banner", 30, "off", 11).await;
    let mut args = serve_args(&db.url);
    args.http_listen = "127.0.0.1:0".into();
    args.admin_token = Some(ADMIN.into());
    args.read_token = Some(READER.into());
    args.console = true;
    args.usage_flush_interval = "300ms".into();
    let server = TestServer::start(args).await;
    let http = server.http_addr.expect("an HTTP address");

    let mut grpc = pb::flag_service_client::FlagServiceClient::new(server.channel().await);
    let mut made = UsageSums::new();
    for user in ["vip", "ann", "vip", "bob", "cem", "vip", "dia", "eve"] {
        let answer = grpc
            .evaluate_flag(with_token(
                pb::EvaluateFlagRequest {
                    key: "vip_banner".into(),
                    context: Some(pb::EvaluationContext {
                        user_id: user.into(),
                        ..Default::default()
                    }),
                    explain: false,
                },
                READER,
            ))
            .await
            .expect("evaluate")
            .into_inner();
        let reason = answer.reason().as_str_name();
        let reason = reason.strip_prefix("EVALUATION_REASON_").unwrap_or(reason);
        *made
            .entry(("test".into(), answer.variant.clone(), reason.into()))
            .or_default() += 1;
    }
    assert_eq!(made.len(), 2, "two variants: {made:?}");
    assert_eq!(made.values().sum::<i64>(), 8);

    // Flushed every 300 ms: wait for the table to hold them.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while flag_sums(&db, "vip_banner", 23).await != made {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never flushed: {:?}",
            flag_sums(&db, "vip_banner", 23).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // What the page asks: the day (since 23 hours before this hour began)
    // and, by default, the week.
    let (cookie, _) = session(http, READER, "ben").await;
    let hour = chrono::Utc::now().timestamp() / 3600 * 3600;
    let day_start = chrono::DateTime::from_timestamp(hour - 23 * 3600, 0)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let day = request(
        http,
        "GET",
        &format!("/console/api/flag-usage?key=vip_banner&since={day_start}"),
        &cookie,
        "",
    )
    .await;
    assert_eq!(day.code, 200, "{day:?}");
    assert_eq!(console_sums(&day.json()), made, "the day: what was made");
    assert_eq!(
        console_sums(&day.json()),
        flag_sums(&db, "vip_banner", 23).await,
        "the day: the table's"
    );
    let week = request(
        http,
        "GET",
        "/console/api/flag-usage?key=vip_banner",
        &cookie,
        "",
    )
    .await;
    assert_eq!(week.code, 200, "{week:?}");
    let mut with_older = made.clone();
    with_older.insert(("prod".into(), "off".into(), "STATIC".into()), 11);
    assert_eq!(console_sums(&week.json()), with_older, "the week");
    assert_eq!(
        console_sums(&week.json()),
        flag_sums(&db, "vip_banner", 7 * 24).await
    );
    // A flag nobody evaluated: no buckets, total 0.
    let unread = request(
        http,
        "GET",
        "/console/api/flag-usage?key=dark_mode",
        &cookie,
        "",
    )
    .await;
    assert_eq!(unread.code, 200, "{unread:?}");
    assert!(console_sums(&unread.json()).is_empty(), "{unread:?}");

    for bad in [
        "key=Not%20A%20Key".to_owned(),
        "key=".to_owned(),
        "key=vip_banner&since=yesterday".to_owned(),
        "key=vip_banner&until=2026-13-01T00:00:00Z".to_owned(),
        format!("key=vip_banner&since={day_start}&until=2001-01-01T00:00:00Z"),
        "key=vip_banner&since=2001-01-01T00:00:00Z".to_owned(),
    ] {
        let refused = request(
            http,
            "GET",
            &format!("/console/api/flag-usage?{bad}"),
            &cookie,
            "",
        )
        .await;
        assert_eq!(refused.code, 400, "{bad}: {refused:?}");
        assert!(
            !refused.json()["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{bad}: a message says why: {refused:?}"
        );
    }
    let nobody = request(
        http,
        "GET",
        "/console/api/flag-usage?key=vip_banner",
        "",
        "",
    )
    .await;
    assert_eq!(nobody.code, 401, "{nobody:?}");
}

/// The flag as the console lists it.
async fn listed_flag(http: SocketAddr, cookie: &str, key: &str) -> serde_json::Value {
    let listed = request(http, "GET", "/console/api/flags", cookie, "").await;
    assert_eq!(listed.code, 200, "{listed:?}");
    listed.json()["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .find(|flag| flag["key"] == key)
        .cloned()
        .unwrap_or_else(|| panic!("no flag {key}"))
}

/// The keys of the console's stale list.
async fn stale_keys(http: SocketAddr, cookie: &str) -> Vec<String> {
    let listed = request(http, "GET", "/console/api/stale-flags", cookie, "").await;
    assert_eq!(listed.code, 200, "{listed:?}");
    listed.json()["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f["key"].as_str().map(str::to_owned))
        .collect()
}

/// The latest audit row of flag `key`: actor, old and new permanent mark.
async fn last_audit(db: &TestDb, key: &str) -> (String, Option<String>, Option<String>) {
    sqlx::query_as(
        "SELECT actor, old_flag->>'permanent', new_flag->>'permanent' FROM flag_audit \
         WHERE key = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(key)
    .fetch_one(&db.pool)
    .await
    .expect("an audit row")
}

/// The flag page's permanent mark, as the page sets it: the flag as
/// listed with `permanent` changed, at the version listed, made as the
/// session's name (in the flag and its audit row), nothing else changed;
/// a read session is refused, bad input is a `400`, a stale version a
/// `409`, and none of these changes anything.
#[tokio::test]
async fn an_admin_session_marks_a_flag_permanent_as_its_name_and_nothing_else_changes() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO feature_flags (key, description, enabled, rollout_percentage, client_visible) \
         VALUES ('old_switch', 'Kill switch', true, 40, true)",
    )
    .execute(&db.pool)
    .await
    .expect("a flag");
    age_flag(&db, "old_switch", 60).await;
    let server = start(&db).await;
    let http = server.http_addr.expect("an HTTP address");
    let (cookie, csrf) = session(http, ADMIN, "ana").await;
    let headers = format!("{cookie}{csrf}");
    let (read_cookie, read_csrf) = session(http, READER, "ben").await;

    let before = listed_flag(http, &cookie, "old_switch").await;
    assert_eq!(before["permanent"], false, "{before}");
    assert!(
        stale_keys(http, &cookie)
            .await
            .contains(&"old_switch".to_owned()),
        "never evaluated for 60 days: stale"
    );
    let audit_rows = db.count("flag_audit").await;
    // What the page sends.
    let change = |permanent: serde_json::Value, version: &serde_json::Value| {
        let mut change = before.clone();
        let object = change.as_object_mut().expect("an object");
        for field in [
            "version",
            "updatedAt",
            "updatedBy",
            "targeting",
            "clientVisible",
            "createdAt",
        ] {
            object.remove(field);
        }
        object.insert("permanent".into(), permanent);
        object.insert("expectedVersion".into(), version.clone());
        change.to_string()
    };
    let version = before["version"].clone();
    let mark = change(serde_json::json!(true), &version);

    // Refused, and nothing changed: a read session, no CSRF token, bad
    // input, a version someone else has changed since.
    let refused = request(
        http,
        "POST",
        "/console/api/flags",
        &format!("{read_cookie}{read_csrf}"),
        &mark,
    )
    .await;
    assert_eq!(refused.code, 403, "a read session: {refused:?}");
    let refused = request(http, "POST", "/console/api/flags", &cookie, &mark).await;
    assert_eq!(refused.code, 403, "no CSRF token: {refused:?}");
    for bad in [
        change(serde_json::json!("yes"), &version),
        change(serde_json::json!(1), &version),
        change(serde_json::json!(true), &serde_json::json!("soon")),
        "{\"key\": \"old_switch\", \"permanent\": true".to_owned(),
    ] {
        let refused = request(http, "POST", "/console/api/flags", &headers, &bad).await;
        assert_eq!(refused.code, 400, "{bad}: {refused:?}");
    }
    let stale_version = change(serde_json::json!(true), &serde_json::json!("1"));
    let refused = request(http, "POST", "/console/api/flags", &headers, &stale_version).await;
    assert_eq!(refused.code, 409, "{refused:?}");
    assert_eq!(listed_flag(http, &cookie, "old_switch").await, before);
    assert_eq!(db.count("flag_audit").await, audit_rows, "no audit row");

    // The admin session marks it: only the mark changes.
    let marked = request(http, "POST", "/console/api/flags", &headers, &mark).await;
    assert_eq!(marked.code, 200, "{marked:?}");
    let after = listed_flag(http, &cookie, "old_switch").await;
    assert_eq!(after["permanent"], true, "{after}");
    assert_eq!(after["updatedBy"], "ana", "the session's name");
    for field in [
        "description",
        "enabled",
        "rolloutPercentage",
        "clientVisible",
        "createdAt",
        "valueType",
        "onValue",
        "offValue",
    ] {
        assert_eq!(after[field], before[field], "{field} stays");
    }
    assert_eq!(
        last_audit(&db, "old_switch").await,
        (
            "ana".to_owned(),
            Some("false".to_owned()),
            Some("true".to_owned())
        ),
        "the audit row names the session"
    );
    assert!(
        !stale_keys(http, &cookie)
            .await
            .contains(&"old_switch".to_owned()),
        "a permanent flag is never stale"
    );

    // And back, from the new version.
    let unmark = change(serde_json::json!(false), &after["version"]);
    let unmarked = request(http, "POST", "/console/api/flags", &headers, &unmark).await;
    assert_eq!(unmarked.code, 200, "{unmarked:?}");
    assert_eq!(
        listed_flag(http, &cookie, "old_switch").await["permanent"],
        false
    );
    assert_eq!(
        last_audit(&db, "old_switch").await,
        (
            "ana".to_owned(),
            Some("true".to_owned()),
            Some("false".to_owned())
        )
    );
    assert!(
        stale_keys(http, &cookie)
            .await
            .contains(&"old_switch".to_owned())
    );
}
