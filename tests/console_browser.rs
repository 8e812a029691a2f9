//! The web console in a real headless Chromium, driven through chromedriver
//! by `tests/interop/console_web/driver.py` (`support::browser`), against a
//! readyd on a loopback port with a real PostgreSQL: signing in, a toggle
//! that changes gRPC `EvaluateFlag`, a rollout and a config value edited in
//! the page, a change made by plain SQL reaching the open page, a read-only
//! session that sees no sensitive value in the DOM or in any response, a
//! change without the CSRF token refused; a flag's page showing its
//! creation time and usage (equal to the evaluations made, after a flush)
//! and marking it permanent; and on every page, at 1280 and
//! 360 px wide: no horizontal scroll, no serious or critical axe-core
//! violation (axe-core pinned in `tests/interop/console_web/package.json`),
//! no browser console error; keyboard focus reaching the controls and
//! showing; under 200 KiB for the sign-in page; no layout shift on the
//! overview (its cumulative layout shift under 0.1).
//!
//! Screenshots of every page at both widths are saved under
//! `target/test-artifacts/console/` (`PAGE-WIDTH.png`), and smaller ones
//! of the pages the README shows under its `readme/` (copied by hand to
//! `docs/screenshots/` when the console's look changes). Chromium and
//! chromedriver must be installed (`apt-get install chromium
//! chromium-driver`).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use readyd::api::convert::from_pb_value;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::config_service_client::ConfigServiceClient;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use serde_json::{Value, json};
use support::browser::{Driver, require_browser};
use support::http1::request;
use support::interop::{root, setup};
use support::usage::{flag_sums, insert_usage};
use support::{TestDb, TestServer, admin, admin_serve_args};
use tonic::transport::Channel;

const READER: &str = "read-token-for-the-console-browser-test";
/// A sensitive config value: no read-only session may ever receive it.
const SECRET: &str = "s3cret-only-admins-may-reveal";
/// The flag the test toggles and rolls out.
const FLAG: &str = "checkout_v2";
/// The config key the test edits, and changes by SQL.
const KEY: &str = "greeting";
/// The pages, as the console's tabs name them, with what shows one is
/// loaded ("flag" is a flag's own page, opened from the flags list).
const PAGES: [(&str, &str); 7] = [
    (
        "overview",
        "document.querySelectorAll('#checks tr').length > 0",
    ),
    (
        "flags",
        "document.querySelectorAll('#flag-rows tr').length > 0",
    ),
    (
        "flag",
        "!document.getElementById('flag-detail').hidden && \
         document.querySelectorAll('#usage-rows tr').length > 0",
    ),
    (
        "config",
        "document.querySelectorAll('#config-rows tr').length > 0",
    ),
    (
        "deployments",
        "document.querySelectorAll('#deploy-rows tr').length > 0",
    ),
    (
        "history",
        "document.querySelectorAll('#history-chart polyline, #history-chart rect.band').length > 0",
    ),
    (
        "timeline",
        "document.querySelectorAll('#timeline-entries li').length > 0",
    ),
];
/// The pages the README shows, photographed smaller (1280 px wide at
/// 0.75) for `docs/screenshots/`.
const README_SCREENSHOTS: [&str; 3] = ["overview", "flag", "timeline"];
/// The widths every page is checked and photographed at.
const WIDTHS: [u32; 2] = [1280, 360];

/// Rows the pages show besides the migrations' own: flags, config (one
/// sensitive), deployments and a day of recorded health with a degraded
/// and an unhealthy stretch.
async fn seed(db: &TestDb) {
    // One connection, so that the actor set first names every change.
    let mut connection = db.pool.acquire().await.expect("a connection");
    for statement in [
        "SET readyd.actor = 'seed'",
        "INSERT INTO feature_flags (key, description, enabled, rollout_percentage, environments) VALUES \
           ('checkout_v2', 'The new checkout flow', false, 100, '{}'), \
           ('search_suggestions', 'Suggestions while typing', true, 50, '{prod}')",
        "INSERT INTO app_config (key, environment, value, is_sensitive, description) VALUES \
           ('greeting', '*', '\"hello\"', false, 'Shown on the home page'), \
           ('max_items', 'test', '25', false, ''), \
           ('payment.api_key', 'test', '\"s3cret-only-admins-may-reveal\"', true, '')",
        "INSERT INTO deployment_history (version, environment, deployed_by, deployed_at) VALUES \
           ('1.4.0', 'test', 'ci', now() - interval '5 hours'), \
           ('1.5.0', 'test', 'ci', now() - interval '2 hours'), \
           ('1.5.0', 'prod', 'ci', now() - interval '90 minutes')",
        "INSERT INTO system_health (recorded_at, instance, status, database_size_bytes, \
           active_connections, max_connections, error_count, response_time_ms, checks) \
         SELECT now() - make_interval(mins => m), 'pod-1', \
                CASE WHEN m BETWEEN 300 AND 340 THEN 'unhealthy' \
                     WHEN m BETWEEN 120 AND 150 THEN 'degraded' ELSE 'healthy' END, \
                0, 0, 0, 0, 0, \
                jsonb_build_object('overall', CASE WHEN m BETWEEN 300 AND 340 THEN 'unhealthy' \
                     WHEN m BETWEEN 120 AND 150 THEN 'degraded' ELSE 'healthy' END, \
                  'checks', jsonb_build_object( \
                    'database', jsonb_build_object('latency_ms', round((3 + 1.5 * sin(m / 60.0))::numeric, 2)), \
                    'cache', jsonb_build_object('latency_ms', round((8 + 4 * sin(m / 150.0) \
                      + CASE WHEN m BETWEEN 300 AND 340 THEN 40 ELSE 0 END)::numeric, 2)))) \
         FROM generate_series(10, 1430, 10) AS m",
    ] {
        sqlx::query(statement)
            .execute(&mut *connection)
            .await
            .unwrap_or_else(|err| panic!("{statement}: {err}"));
    }
}

/// Where the screenshots go.
fn artefacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts/console")
}

/// The browser, through the driver, on readyd's console.
struct Console {
    driver: Driver,
    /// readyd's HTTP surface.
    http: SocketAddr,
}

impl Console {
    async fn start(http: SocketAddr) -> Console {
        let mut driver = Driver::start(
            &root().join("tests/interop/console_web/driver.py"),
            &json!({ "deadline": 150 }),
            true,
        );
        driver.next("started", 30).await;
        driver.next("ready", 60).await;
        Console { driver, http }
    }

    async fn call(&mut self, command: Value) -> Value {
        self.driver.call(command, 60).await
    }

    /// The value of `js` (a function body) in the page.
    async fn script(&mut self, js: &str) -> Value {
        self.call(json!({"do": "script", "js": js})).await
    }

    /// Waits until `js` is truthy in the page (10 s at most), naming `what`
    /// when it is not.
    async fn wait(&mut self, what: &str, js: &str) -> Value {
        self.call(json!({"do": "wait", "what": what, "js": format!("return {js};"), "seconds": 10}))
            .await
    }

    /// Waits for the change confirmation to show and returns its text.
    async fn confirmation(&mut self) -> Value {
        self.wait(
            "the confirmation",
            "!document.getElementById('confirm').hidden",
        )
        .await;
        self.script("return document.getElementById('confirm-text').textContent;")
            .await
    }

    async fn click(&mut self, css: &str) {
        self.call(json!({"do": "click", "css": css})).await;
    }

    async fn type_into(&mut self, css: &str, text: &str) {
        self.call(json!({"do": "type", "css": css, "text": text}))
            .await;
    }

    async fn open(&mut self, path: &str) {
        let url = format!("http://{}{path}", self.http);
        self.call(json!({"do": "open", "url": url})).await;
    }

    async fn viewport(&mut self, width: u32) {
        let inner = self
            .call(json!({"do": "viewport", "width": width, "height": 800}))
            .await;
        assert_eq!(inner, json!(width), "the page's width");
    }

    async fn sign_in(&mut self, token: &str, name: &str) {
        self.wait(
            "the sign-in form",
            "!document.getElementById('sign-in').hidden",
        )
        .await;
        self.type_into("#token", token).await;
        self.type_into("#name", name).await;
        self.click("#sign-in-form button[type=submit]").await;
        self.wait(
            "the overview after signing in",
            "!document.getElementById('overview').hidden && \
             document.querySelectorAll('#checks tr').length > 0",
        )
        .await;
    }

    /// Shows `page` (see [`PAGES`]) and waits until it has loaded.
    async fn show(&mut self, page: &str) {
        if page == "flag" {
            self.click("#tabs button[data-tab='flags']").await;
            self.wait("the flags list", PAGES[1].1).await;
            self.click(&format!("tr[data-key='{FLAG}'] button.link"))
                .await;
        } else {
            self.click(&format!("#tabs button[data-tab='{page}']"))
                .await;
        }
        let (_, loaded) = PAGES
            .iter()
            .find(|(name, _)| *name == page)
            .expect("a known page");
        self.wait(&format!("the {page} page"), loaded).await;
    }

    /// axe-core's serious and critical violations on the page as it is.
    async fn serious_violations(&mut self) -> Vec<Value> {
        let source = root().join("target/interop/console/node_modules/axe-core/axe.min.js");
        let violations = self.call(json!({"do": "axe", "source": source})).await;
        violations
            .as_array()
            .expect("violations")
            .iter()
            .filter(|violation| {
                violation["impact"] == "serious" || violation["impact"] == "critical"
            })
            .cloned()
            .collect()
    }

    /// Fails on any error or warning in the browser's console since the
    /// last look.
    async fn no_console_errors(&mut self, when: &str) {
        let log = self.call(json!({"do": "log"})).await;
        let severe: Vec<&Value> = log
            .as_array()
            .expect("browser log")
            .iter()
            .filter(|entry| entry["level"] != "INFO" && entry["level"] != "DEBUG")
            .collect();
        assert!(
            severe.is_empty(),
            "the browser's console {when}: {severe:#?}"
        );
    }

    /// The session cookie, as a `Cookie:` header line.
    async fn cookie_header(&mut self) -> String {
        let cookies = self.call(json!({"do": "cookies"})).await;
        let session = cookies
            .as_array()
            .expect("cookies")
            .iter()
            .find(|cookie| cookie["name"] == readyd::console::COOKIE)
            .unwrap_or_else(|| panic!("no session cookie: {cookies}"));
        assert_eq!(session["httpOnly"], true, "{session}");
        format!(
            "Cookie: {}={}\r\n",
            readyd::console::COOKIE,
            session["value"].as_str().expect("a value")
        )
    }

    /// Walks `presses` Tab presses from the top of the page; what got the
    /// focus, each time (every focus must show).
    async fn tab_walk(&mut self, presses: u32) -> Vec<String> {
        // Tab moves on from where focus last was: start it at the title.
        self.script(
            "const top = document.querySelector('header h1'); top.tabIndex = -1; top.focus(); \
             top.blur(); top.removeAttribute('tabindex'); window.scrollTo(0, 0); return true;",
        )
        .await;
        let seen = self.call(json!({"do": "tab", "presses": presses})).await;
        let mut reached = Vec::new();
        for focused in seen.as_array().expect("focused elements") {
            if focused.is_null() {
                continue;
            }
            assert!(
                focused["focusVisible"] == true
                    && (focused["outline"] == true || focused["ring"] == true),
                "keyboard focus does not show on {focused}"
            );
            let id = focused["id"].as_str().unwrap_or_default();
            let name = if id.is_empty() {
                format!(
                    "{}:{}",
                    focused["tag"].as_str().unwrap_or_default(),
                    focused["label"].as_str().unwrap_or_default()
                )
            } else {
                format!("#{id}")
            };
            reached.push(name);
        }
        reached
    }
}

/// `EvaluateFlag` of FLAG for a user, as any application sees it.
async fn evaluate(grpc: &mut FlagServiceClient<Channel>) -> Value {
    let answer = grpc
        .evaluate_flag(admin(pb::EvaluateFlagRequest {
            key: FLAG.into(),
            context: Some(pb::EvaluationContext {
                user_id: "user-7".into(),
                ..Default::default()
            }),
            explain: false,
        }))
        .await
        .expect("EvaluateFlag")
        .into_inner();
    answer
        .value
        .map(|value| from_pb_value(value).expect("a value"))
        .unwrap_or(Value::Null)
}

/// `EvaluateFlag` of flag `key` for `user`: (variant, reason) as the
/// usage table names them.
async fn served(grpc: &mut FlagServiceClient<Channel>, key: &str, user: &str) -> (String, String) {
    let answer = grpc
        .evaluate_flag(admin(pb::EvaluateFlagRequest {
            key: key.into(),
            context: Some(pb::EvaluationContext {
                user_id: user.into(),
                ..Default::default()
            }),
            explain: false,
        }))
        .await
        .expect("EvaluateFlag")
        .into_inner();
    let reason = answer.reason().as_str_name();
    let reason = reason.strip_prefix("EVALUATION_REASON_").unwrap_or(reason);
    (answer.variant, reason.to_owned())
}

async fn flag(grpc: &mut FlagServiceClient<Channel>) -> pb::Flag {
    flag_named(grpc, FLAG).await
}

async fn flag_named(grpc: &mut FlagServiceClient<Channel>, key: &str) -> pb::Flag {
    grpc.get_flag(admin(pb::GetFlagRequest { key: key.into() }))
        .await
        .expect("GetFlag")
        .into_inner()
        .flag
        .expect("the flag")
}

async fn config_value(grpc: &mut ConfigServiceClient<Channel>) -> Value {
    let entry = grpc
        .get_config(admin(pb::GetConfigRequest { key: KEY.into() }))
        .await
        .expect("GetConfig")
        .into_inner()
        .entry
        .expect("the entry");
    from_pb_value(entry.value.expect("a value")).expect("a value")
}

/// Polls `check` until it holds, for 10 s at most.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The overview's cumulative layout shift at `width`, opened afresh with
/// the session and given three refreshes; fails from 0.1 on.
async fn overview_layout_shift(console: &mut Console, width: u32) -> f64 {
    console.viewport(width).await;
    console.open("/console").await;
    console
        .wait(
            "three refreshes of the overview",
            "!document.getElementById('overview').hidden && \
             performance.getEntriesByType('resource') \
               .filter((e) => e.name.endsWith('/console/api/health')).length >= 3",
        )
        .await;
    let shifts = console
        .script(
            "if (!PerformanceObserver.supportedEntryTypes.includes('layout-shift')) { return null; } \
             const observer = new PerformanceObserver(() => {}); \
             observer.observe({ type: 'layout-shift', buffered: true }); \
             const entries = observer.takeRecords(); \
             observer.disconnect(); \
             return entries.filter((e) => !e.hadRecentInput).map((e) => e.value);",
        )
        .await;
    let cls: f64 = shifts
        .as_array()
        .expect("layout shifts measured")
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    assert!(
        cls < 0.1,
        "cumulative layout shift {cls} at {width} px: {shifts}"
    );
    cls
}

#[tokio::test]
async fn the_console_in_chromium_signs_in_changes_follows_sql_and_stays_accessible() {
    require_browser();
    setup().await;
    let db = TestDb::new().await;
    seed(&db).await;
    let mut args = admin_serve_args(&db.url);
    args.http_listen = "127.0.0.1:0".into();
    args.read_token = Some(READER.into());
    args.console = true;
    // Usage counts reach the table (and the flag's page) within a second.
    args.usage_flush_interval = "300ms".into();
    // Checks besides the database's for the overview to show: one that
    // passes, and one that fails (nothing listens on port 1), not critical.
    args.checks = vec![
        format!(
            "uploads=file://{}?min_free=1MiB",
            std::env::temp_dir().display()
        ),
        "cache=redis://127.0.0.1:1?critical=false&interval=1s".into(),
    ];
    let server = TestServer::start(args).await;
    let http = server.http_addr.expect("an HTTP address");
    let mut flags = FlagServiceClient::new(server.channel().await);
    let config = ConfigServiceClient::new(server.channel().await);
    let admin_token = support::ADMIN_TOKEN;
    let mut console = Console::start(http).await;

    // The sign-in page: light, keyboard-reachable, accessible.
    console.viewport(1280).await;
    console.open("/console").await;
    console
        .wait(
            "the sign-in form",
            "!document.getElementById('sign-in').hidden",
        )
        .await;
    let weight = console
        .script(
            "const entries = [...performance.getEntriesByType('navigation'), \
               ...performance.getEntriesByType('resource')]; \
             return entries.map((e) => ({ name: e.name, bytes: e.transferSize }));",
        )
        .await;
    let entries = weight.as_array().expect("entries");
    let origin = format!("http://{http}/console");
    for entry in entries {
        let name = entry["name"].as_str().expect("a name");
        assert!(name.starts_with(&origin), "loaded from elsewhere: {name}");
        assert!(
            entry["bytes"].as_u64().is_some_and(|bytes| bytes > 0),
            "{entry}"
        );
    }
    for asset in ["", "/app.js", "/app.css"] {
        assert!(
            entries
                .iter()
                .any(|entry| entry["name"].as_str() == Some(&format!("{origin}{asset}")[..])),
            "{origin}{asset} is not among the page's loads: {weight}"
        );
    }
    let total: u64 = entries.iter().filter_map(|e| e["bytes"].as_u64()).sum();
    assert!(
        total < 200 * 1024,
        "the sign-in page weighs {total} bytes: {weight}"
    );
    let reached = console.tab_walk(4).await;
    for control in ["#token", "#name", "button:Sign in"] {
        assert!(
            reached.iter().any(|name| name == control),
            "Tab does not reach {control}: {reached:?}"
        );
    }
    let violations = console.serious_violations().await;
    assert!(violations.is_empty(), "sign-in: {violations:#?}");
    console
        .call(json!({"do": "screenshot", "path": artefacts().join("sign-in-1280.png")}))
        .await;
    console.no_console_errors("on the sign-in page").await;

    // Signed in as an admin, the main controls are reachable by keyboard.
    console.sign_in(admin_token, "ana").await;
    console.show("flags").await;
    let reached = console.tab_walk(16).await;
    // The tabs, sign-out, the filters, and a flag's link, toggle and
    // rollout (the first flag's).
    for control in [
        "button:Overview",
        "button:Deployments",
        "#sign-out",
        "#flag-search",
        "#flag-filter",
        "input:enable ",
        "input:rollout of ",
    ] {
        assert!(
            reached.iter().any(|name| name.starts_with(control)),
            "Tab does not reach {control}: {reached:?}"
        );
    }

    // The environment filter: a flag of prod only is not one of test's;
    // a flag without environments is everyone's.
    console.type_into("#flag-environment", "test").await;
    console
        .wait(
            "the flags of environment test",
            "document.querySelector(\"tr[data-key='search_suggestions']\") === null \
               && document.querySelector(\"tr[data-key='checkout_v2']\") !== null",
        )
        .await;
    console
        .script(
            "const field = document.getElementById('flag-environment'); field.value = ''; \
             field.dispatchEvent(new Event('input')); return true;",
        )
        .await;
    console
        .wait(
            "every flag again",
            "document.querySelector(\"tr[data-key='search_suggestions']\") !== null",
        )
        .await;

    // The stale filter: every flag here is new, so none is stale.
    let pick = |value: &str| {
        format!(
            "const filter = document.getElementById('flag-filter'); filter.value = '{value}'; \
             filter.dispatchEvent(new Event('change')); return true;"
        )
    };
    console.script(&pick("stale")).await;
    console
        .wait(
            "no stale flag",
            "document.querySelectorAll('#flag-rows tr').length === 0",
        )
        .await;
    console.script(&pick("all")).await;
    console
        .wait(
            "every flag again",
            "document.querySelector(\"tr[data-key='search_suggestions']\") !== null",
        )
        .await;

    // A toggle in the page turns the flag on for every application.
    assert_eq!(evaluate(&mut flags).await, false);
    console
        .click(&format!("tr[data-key='{FLAG}'] input.toggle"))
        .await;
    let text = console.confirmation().await;
    assert!(
        text.as_str()
            .is_some_and(|t| t.contains("enabled: false → true")),
        "{text}"
    );
    assert_eq!(
        evaluate(&mut flags).await,
        false,
        "not before it is confirmed"
    );
    console.click("#confirm-yes").await;
    eventually("EvaluateFlag turns true", || {
        let mut flags = flags.clone();
        async move { evaluate(&mut flags).await == true }
    })
    .await;
    assert_eq!(flag(&mut flags).await.updated_by, "ana");
    console
        .wait(
            "the list showing the flag on",
            &format!("document.querySelector(\"tr[data-key='{FLAG}'] input.toggle\").checked"),
        )
        .await;

    // A rollout edited in the list.
    console
        .type_into(
            &format!("tr[data-key='{FLAG}'] input.rollout"),
            "25\u{e007}",
        )
        .await;
    console.confirmation().await;
    console.click("#confirm-yes").await;
    eventually("the rollout at 25 %", || {
        let mut flags = flags.clone();
        async move { flag(&mut flags).await.rollout_percentage == 25 }
    })
    .await;

    // A flag's page: its creation time, its usage per environment,
    // variant and reason over the last day and week (equal to the
    // evaluations made, once flushed; a hand-built row of 30 hours ago
    // counts in the week only), and its permanent mark, set by keyboard
    // reach and a confirmation.
    const USED: &str = "search_suggestions";
    insert_usage(&db, USED, 30, "on", 9).await;
    let mut made: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for user in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        let (variant, reason) = served(&mut flags, USED, user).await;
        *made.entry(("test".into(), variant, reason)).or_default() += 1;
    }
    eventually("the evaluations flushed to the table", || {
        let (db, made) = (&db, made.clone());
        async move { flag_sums(db, USED, 23).await == made }
    })
    .await;
    console.show("flags").await;
    console
        .click(&format!("tr[data-key='{USED}'] button.link"))
        .await;
    console
        .wait(
            "the usage table",
            "document.querySelector('#usage-rows tr[data-variant]') !== null",
        )
        .await;
    let shown = console
        .script(
            "const n = (el) => Number(el.textContent.replace(/,/g, ''));              return [...document.querySelectorAll('#usage-rows tr')].map((tr) =>                [tr.dataset.environment, tr.dataset.variant, tr.dataset.reason,                 n(tr.querySelector('.day')), n(tr.querySelector('.week'))])                .concat([[n(document.getElementById('usage-day')),                  n(document.getElementById('usage-week'))]]);",
        )
        .await;
    let mut expected: Vec<Value> = made
        .iter()
        .map(|((environment, variant, reason), n)| json!([environment, variant, reason, n, n]))
        .collect();
    expected.push(json!(["prod", "on", "STATIC", 0, 9]));
    expected.sort_by_key(|row| row.to_string());
    let evaluations: i64 = made.values().sum();
    expected.push(json!([evaluations, evaluations + 9]));
    assert_eq!(shown, Value::Array(expected), "the usage table");
    let facts = console
        .script("return document.getElementById('flag-facts').textContent;")
        .await;
    let created = flag_named(&mut flags, USED)
        .await
        .created_at
        .expect("created_at");
    let created = chrono::DateTime::from_timestamp(created.seconds, 0)
        .expect("a time")
        .format("Created %Y-%m-%d %H:%M:%S")
        .to_string();
    assert!(
        facts
            .as_str()
            .is_some_and(|f| f.starts_with(&created) && f.contains("not permanent")),
        "{facts} (created {created})"
    );
    let reached = console.tab_walk(12).await;
    assert!(
        reached.iter().any(|name| name == "#flag-permanent"),
        "Tab does not reach the permanent mark: {reached:?}"
    );
    assert!(!flag_named(&mut flags, USED).await.permanent);
    console.click("#flag-permanent").await;
    let text = console.confirmation().await;
    assert!(
        text.as_str()
            .is_some_and(|t| t.contains("permanent: false → true")),
        "{text}"
    );
    assert!(
        !flag_named(&mut flags, USED).await.permanent,
        "not before it is confirmed"
    );
    console.click("#confirm-yes").await;
    eventually("the flag marked permanent", || {
        let mut flags = flags.clone();
        async move { flag_named(&mut flags, USED).await.permanent }
    })
    .await;
    let marked = flag_named(&mut flags, USED).await;
    assert_eq!(marked.updated_by, "ana");
    assert!(
        marked.enabled && marked.rollout_percentage == 50,
        "nothing else changed: {marked:?}"
    );
    console
        .wait(
            "the page showing the mark",
            "document.getElementById('flag-permanent').checked && \
             document.getElementById('flag-facts').textContent.includes('permanent: never listed as stale')",
        )
        .await;
    console.click("#flag-close").await;

    // A config value edited inline: a value that is not JSON is refused
    // beside the field, a JSON one is saved after the confirmation.
    console.show("config").await;
    let row = format!("#config-rows tr[data-key='{KEY}']");
    let editable =
        "return document.querySelectorAll('#config-rows button.edit:not([disabled])').length;";
    let editable_rows = console.script(editable).await;
    assert!(
        editable_rows.as_u64().is_some_and(|rows| rows > 1),
        "several rows to edit: {editable_rows}"
    );
    console.click(&format!("{row} button.edit")).await;
    assert_eq!(
        console.script(editable).await,
        json!(0),
        "one editor at a time: no other row's Edit while one is open"
    );
    console
        .type_into(&format!("{row} input.value-input"), "hallo")
        .await;
    console.click(&format!("{row} button.save")).await;
    let problem = console
        .wait(
            "the validation message",
            &format!("document.querySelector(\"{row} .field-error\").textContent"),
        )
        .await;
    assert!(
        problem.as_str().is_some_and(|p| p.contains("JSON")),
        "{problem}"
    );
    console
        .type_into(&format!("{row} input.value-input"), "\"hallo\"")
        .await;
    console.click(&format!("{row} button.save")).await;
    console
        .wait(
            "the confirmation",
            "!document.getElementById('config-confirm').hidden",
        )
        .await;
    console.click("#config-confirm-yes").await;
    eventually("the config value saved", || {
        let mut config = config.clone();
        async move { config_value(&mut config).await == "hallo" }
    })
    .await;
    console
        .wait(
            "the row showing the new value",
            &format!("document.querySelector(\"{row} td.value\").textContent === '\"hallo\"'"),
        )
        .await;
    assert_eq!(
        console.script(editable).await,
        editable_rows,
        "every row editable again once saved"
    );

    // A change made by plain SQL reaches the open page without a reload.
    console
        .script("window.readydSamePage = true; return true;")
        .await;
    sqlx::query("UPDATE app_config SET value = '\"servus\"' WHERE key = $1")
        .bind(KEY)
        .execute(&db.pool)
        .await
        .expect("change the row by SQL");
    console
        .wait(
            "the SQL change on the page",
            &format!("document.querySelector(\"{row} td.value\").textContent === '\"servus\"'"),
        )
        .await;
    assert_eq!(
        console
            .script(
                "return [window.readydSamePage === true, \
                  performance.getEntriesByType('navigation').length];"
            )
            .await,
        json!([true, 1]),
        "the same page, not a reload"
    );

    // A change without the session's CSRF token is refused, as it would
    // be from another site; with it, the same request passes (the flag as
    // the page sends it, unchanged).
    let cookie = console.cookie_header().await;
    let before = flag(&mut flags).await;
    let listed = request(http, "GET", "/console/api/flags", &cookie, "").await;
    let mut change = listed.json()["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .find(|listed| listed["key"] == FLAG)
        .cloned()
        .expect("the flag");
    for field in [
        "version",
        "updatedAt",
        "updatedBy",
        "clientVisible",
        "createdAt",
        "permanent",
    ] {
        change.as_object_mut().expect("an object").remove(field);
    }
    change["expectedVersion"] = json!(before.version);
    let change = change.to_string();
    let json_header = "Content-Type: application/json\r\n";
    let refused = request(
        http,
        "POST",
        "/console/api/flags",
        &format!("{cookie}{json_header}"),
        &change,
    )
    .await;
    assert_eq!(refused.code, 403, "{refused:?}");
    assert_eq!(
        flag(&mut flags).await.version,
        before.version,
        "nothing changed"
    );
    let csrf = request(http, "GET", "/console/api/session", &cookie, "")
        .await
        .json()["csrf"]
        .as_str()
        .expect("the CSRF token")
        .to_owned();
    let passed = request(
        http,
        "POST",
        "/console/api/flags",
        &format!("{cookie}{json_header}X-CSRF-Token: {csrf}\r\n"),
        &change,
    )
    .await;
    assert_eq!(passed.code, 200, "{passed:?}");

    // Every page at both widths: no horizontal scroll, no serious
    // violation, a screenshot.
    for width in WIDTHS {
        console.viewport(width).await;
        for (page, _) in PAGES {
            console.show(page).await;
            let fits = console
                .script("return [document.documentElement.scrollWidth, window.innerWidth];")
                .await;
            assert!(
                fits[0].as_u64() <= fits[1].as_u64(),
                "{page} at {width} px scrolls sideways: {fits}"
            );
            let violations = console.serious_violations().await;
            assert!(
                violations.is_empty(),
                "{page} at {width} px: {violations:#?}"
            );
            console
                .call(json!({
                    "do": "screenshot",
                    "path": artefacts().join(format!("{page}-{width}.png")),
                }))
                .await;
            if width == 1280 && README_SCREENSHOTS.contains(&page) {
                console
                    .call(json!({
                        "do": "screenshot",
                        "path": artefacts().join(format!("readme/{page}.png")),
                        "scale": 0.75,
                    }))
                    .await;
            }
        }
    }
    console.no_console_errors("on the admin's pages").await;

    // The overview, opened afresh with the session: it settles without
    // shifting (a few refreshes included), at both widths.
    let mut cls = Vec::new();
    for width in WIDTHS {
        cls.push(overview_layout_shift(&mut console, width).await);
    }
    console.no_console_errors("on the overview").await;

    // A read-only session: the sensitive value reaches neither the page
    // nor any answer, on any page; nothing of the admin's session stays
    // in the page either.
    console.click("#sign-out").await;
    console
        .wait(
            "a page emptied by signing out",
            "!document.getElementById('sign-in').hidden && \
             document.querySelectorAll('#checks tr, #flag-rows tr, #config-rows tr').length === 0",
        )
        .await;
    console.call(json!({"do": "forget_responses"})).await;
    console.sign_in(READER, "ben").await;
    for (page, _) in PAGES {
        console.show(page).await;
        let dom = console
            .script(
                "return document.documentElement.outerHTML + \
                 [...document.querySelectorAll('input, textarea')].map((e) => e.value).join('\\n');",
            )
            .await;
        let dom = dom.as_str().expect("the DOM");
        assert!(
            !dom.contains(SECRET),
            "the sensitive value is in the {page} page"
        );
        if page == "flag" {
            assert_eq!(
                console
                    .script("return document.getElementById('flag-permanent').disabled;")
                    .await,
                json!(true),
                "a read-only session cannot change the permanent mark"
            );
        }
    }
    console.show("config").await;
    console
        .wait(
            "the sensitive row, masked",
            "document.querySelector(\"#config-rows tr[data-key='payment.api_key'] td.value\") \
               .textContent.includes('sensitive')",
        )
        .await;
    let responses = console
        .call(json!({"do": "responses", "prefix": format!("http://{http}/")}))
        .await;
    let responses = responses.as_array().expect("responses");
    assert!(
        responses.iter().any(|r| r["url"]
            .as_str()
            .is_some_and(|u| u.contains("/console/api/config"))),
        "the config answers were seen: {responses:#?}"
    );
    for response in responses {
        let body = response["body"]
            .as_str()
            .unwrap_or_else(|| panic!("an answer whose body cannot be read: {response}"));
        assert!(!body.contains(SECRET), "the sensitive value in {response}");
    }
    console.no_console_errors("in the read-only session").await;
    console.driver.wait().await;

    eprintln!(
        "sign-in page {total} bytes; overview CLS {}; screenshots in {}",
        cls.iter()
            .zip(WIDTHS)
            .map(|(cls, width)| format!("{cls:.4} at {width} px"))
            .collect::<Vec<_>>()
            .join(", "),
        artefacts().display()
    );
    server.stop().await;
}
