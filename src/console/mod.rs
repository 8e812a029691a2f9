//! The web console, served on the HTTP surface under `/console` when
//! `--console` is on: sign-in with the admin or read token and a name,
//! then pages over the same state the API serves. Assets are embedded in
//! the binary (no build step, nothing to install).
//!
//! The page never holds a token: signing in turns one into a session
//! cookie (`HttpOnly`, `SameSite=Strict`, see [`session`]), every change
//! also needs the session's CSRF token in `X-CSRF-Token`, and sign-in
//! attempts are throttled per peer address. Handlers take their session
//! as an argument, through the extractors of [`extract`].

pub mod extract;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::api::auth::{Caller, Role};
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::config_service_server::ConfigService;
use crate::api::pb::readyd::v1::deployment_service_server::DeploymentService;
use crate::api::pb::readyd::v1::flag_service_server::FlagService;
use crate::api::pb::readyd::v1::health_service_server::HealthService;
use crate::http::limit::{RateLimit, retry_after_secs};
use crate::http::{HttpSurface, call_as, error, json, json_response, message_name, query_param};
use extract::{AdminChange, CsrfChecked, SignedIn};
use session::{Access, Session};

/// The session cookie's name.
pub const COOKIE: &str = "readyd_console";
/// The header changes carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Sign-in attempts per peer address: a burst of this many, then one
/// every [`SIGN_IN_INTERVAL`].
const SIGN_IN_BURST: u32 = 5;
const SIGN_IN_INTERVAL: Duration = Duration::from_secs(6);

/// The console's own state.
#[derive(Debug)]
pub struct Console {
    /// Sign-in attempts per peer address.
    sign_ins: RateLimit,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            sign_ins: RateLimit::every(SIGN_IN_INTERVAL, SIGN_IN_BURST),
        }
    }
}

/// The console's routes, for the surface's router.
pub fn routes() -> Router<Arc<HttpSurface>> {
    Router::new()
        .route("/console", get(page))
        .route("/console/", get(page))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
        .route("/console/favicon.svg", get(icon))
        .route("/console/api/session", get(who).post(sign_in))
        .route("/console/api/sign-out", post(sign_out))
        .route("/console/api/health", get(health))
        .route("/console/api/health-history", get(health_history))
        .route("/console/api/timeline", get(timeline))
        .route("/console/api/config", get(list_config).post(set_config))
        .route("/console/api/config/reveal", post(reveal_config))
        .route("/console/api/config/audit", get(config_audit))
        .route("/console/api/flags", get(list_flags).post(upsert_flag))
        .route("/console/api/evaluate", post(evaluate_flag))
        .route(
            "/console/api/deployments",
            get(list_deployments).post(record_deployment),
        )
        .route("/console/api/rollback", post(record_rollback))
        .route("/console/api/current-deployments", get(current_deployments))
        .route("/console/api/stale-flags", get(stale_flags))
        .route("/console/api/flag-usage", get(flag_usage))
}

/// Headers of every console answer: never cached, never framed, nothing
/// loaded from elsewhere.
fn page_headers(content_type: &'static str) -> [(header::HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
    ]
}

async fn page() -> Response {
    (
        page_headers("text/html; charset=utf-8"),
        include_str!("assets/index.html"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        page_headers("text/javascript; charset=utf-8"),
        include_str!("assets/app.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        page_headers("text/css; charset=utf-8"),
        include_str!("assets/app.css"),
    )
        .into_response()
}

/// The page's icon, so that the browser does not ask for `/favicon.ico`
/// outside the console.
async fn icon() -> Response {
    (
        page_headers("image/svg+xml"),
        include_str!("assets/favicon.svg"),
    )
        .into_response()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What the page learns of its session.
fn session_json(surface: &HttpSurface, session: &Session) -> serde_json::Value {
    json!({
        "signedIn": true,
        "actor": session.actor,
        "access": match session.access { Access::Admin => "admin", Access::Read => "read" },
        "expires": session.expires,
        "csrf": session::csrf_token(&surface.tokens.ticket_key(), session),
    })
}

/// `GET /console/api/session`: who is signed in, and the CSRF token; or
/// `{"signedIn": false}`. Not a `401`: asking is how the page learns to
/// show the sign-in form, and a refused request would be an error in the
/// browser's console on every visit.
async fn who(State(surface): State<Arc<HttpSurface>>, session: Option<SignedIn>) -> Response {
    match session {
        Some(SignedIn(session)) => json_response(StatusCode::OK, &session_json(&surface, &session)),
        None => json_response(StatusCode::OK, &json!({ "signedIn": false })),
    }
}

/// The cookie that holds `value` for `max_age` seconds. `Secure` is left
/// out: the HTTP surface is cleartext (behind TLS termination, the proxy
/// may add it).
fn cookie(value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("readyd_console=; Path=/console; Max-Age=0"))
}

/// `POST /console/api/session` with `{"token": …, "name": …}`: signs in
/// with the admin or the read token. Attempts are throttled per peer
/// address, good or bad.
async fn sign_in(
    State(surface): State<Arc<HttpSurface>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let Some(console) = &surface.console else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "the console is off");
    };
    if let Err(wait) = console
        .sign_ins
        .admit(Some(peer.ip().to_string().as_bytes()))
    {
        let mut refused = error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "too many sign-in attempts from this address; wait and try again",
        );
        refused.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(wait)),
        );
        return refused;
    }
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "the body must be JSON: {\"token\": …, \"name\": …}",
        );
    };
    let token = request["token"].as_str().unwrap_or_default();
    let actor = request["name"].as_str().unwrap_or_default().trim();
    if let Some(problem) = session::actor_problem(actor) {
        return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", problem);
    }
    let access = if surface.tokens.matches(Role::Admin, token) {
        Access::Admin
    } else if surface.tokens.matches(Role::Read, token) {
        Access::Read
    } else {
        tracing::info!(%peer, "a console sign-in was refused");
        return error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "that is neither the admin token nor the read token",
        );
    };
    let mut nonce = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; see readyd's log",
        );
    }
    let session = Session {
        access,
        actor: actor.to_owned(),
        expires: now_secs() + SESSION_LIFETIME.as_secs(),
        nonce,
    };
    tracing::info!(%peer, actor = %session.actor, access = ?session.access, "signed in to the console");
    let sealed = session::seal(&surface.tokens.ticket_key(), &session);
    let mut answer = json_response(StatusCode::OK, &session_json(&surface, &session));
    answer.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&sealed, SESSION_LIFETIME.as_secs()),
    );
    answer
}

/// `POST /console/api/sign-out`: the cookie is cleared.
async fn sign_out(_: CsrfChecked) -> Response {
    let mut answer = json_response(StatusCode::OK, &json!({}));
    answer
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0));
    answer
}

/// `GET /console/api/health`: the health report, as `/api/health` gives it.
async fn health(State(surface): State<Arc<HttpSurface>>, _: SignedIn) -> Response {
    crate::http::health_report(&surface)
}

/// Makes the gRPC call `path` as the session: an admin session is the
/// admin, and its name is the actor of a change.
async fn call_as_session<Req, Resp, Fut>(
    session: &Session,
    path: &str,
    message: Req,
    handler: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Response
where
    Resp: prost::Message,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut headers = HeaderMap::new();
    if let Ok(actor) = HeaderValue::from_str(&session.actor) {
        headers.insert(crate::api::ACTOR_HEADER, actor);
    }
    let caller = Caller {
        is_admin: session.access == Access::Admin,
    };
    call_as(caller, &headers, path, message, handler).await
}

/// The request message of `path` from a JSON body, or `400`.
fn body_message<M: prost::Message + Default>(path: &str, body: &[u8]) -> Result<M, Box<Response>> {
    json::from_json(&message_name(path, "Request"), body)
        .map_err(|problem| Box::new(error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &problem)))
}

/// `GET /console/api/flags[?page_token=…]`: flag definitions, 1,000 a page.
async fn list_flags(
    State(surface): State<Arc<HttpSurface>>,
    SignedIn(session): SignedIn,
    uri: axum::http::Uri,
) -> Response {
    let page_token = query_param(&uri, "page_token").unwrap_or_default();
    let message = pb::ListFlagsRequest {
        prefix: String::new(),
        page_size: 1000,
        page_token,
    };
    let flags = surface.flags.clone();
    call_as_session(
        &session,
        "/readyd.v1.FlagService/ListFlags",
        message,
        |request| async move { flags.list_flags(request).await },
    )
    .await
}

/// `GET /console/api/stale-flags`: `ListStaleFlags` over the default
/// window (the flags list's "stale" filter).
async fn stale_flags(
    State(surface): State<Arc<HttpSurface>>,
    SignedIn(session): SignedIn,
) -> Response {
    let flags = surface.flags.clone();
    call_as_session(
        &session,
        "/readyd.v1.FlagService/ListStaleFlags",
        pb::ListStaleFlagsRequest::default(),
        |request| async move { flags.list_stale_flags(request).await },
    )
    .await
}

/// `GET /console/api/flag-usage?key=K[&since=T][&until=T]`: flag K's
/// evaluation counts per hour, environment, variant and reason, as
/// `GetFlagUsage` answers them (`since` and `until` in RFC 3339; by
/// default the 7 days to now), for any session.
async fn flag_usage(
    State(surface): State<Arc<HttpSurface>>,
    SignedIn(session): SignedIn,
    uri: axum::http::Uri,
) -> Response {
    let mut message = pb::GetFlagUsageRequest {
        key: query_param(&uri, "key").unwrap_or_default(),
        since: None,
        until: None,
    };
    for (name, field) in [("since", &mut message.since), ("until", &mut message.until)] {
        let Some(raw) = query_param(&uri, name).filter(|raw| !raw.is_empty()) else {
            continue;
        };
        match chrono::DateTime::parse_from_rfc3339(&raw) {
            Ok(time) => {
                *field = Some(crate::api::convert::to_timestamp(
                    time.with_timezone(&chrono::Utc),
                ));
            }
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    &format!("{name}: a time in RFC 3339, e.g. 2026-01-31T12:00:00Z"),
                );
            }
        }
    }
    let flags = surface.flags.clone();
    call_as_session(
        &session,
        "/readyd.v1.FlagService/GetFlagUsage",
        message,
        |request| async move { flags.get_flag_usage(request).await },
    )
    .await
}

/// `POST /console/api/flags` with an `UpsertFlagRequest`: an admin
/// session's change, its name the actor; `expectedVersion` makes a change
/// made meanwhile by someone else a `409`.
async fn upsert_flag(
    State(surface): State<Arc<HttpSurface>>,
    AdminChange(session): AdminChange,
    body: axum::body::Bytes,
) -> Response {
    let flags = surface.flags.clone();
    admin_change(
        &session,
        &body,
        "/readyd.v1.FlagService/UpsertFlag",
        |_: &mut pb::UpsertFlagRequest, _| {},
        |request| async move { flags.upsert_flag(request).await },
    )
    .await
}

/// An admin session's change (the session and its CSRF token checked by
/// [`AdminChange`]): the JSON body read as the request of the gRPC call
/// `path`, `stamp` naming the session in messages that carry their own
/// actor field, then the call made as the session (its name the actor).
async fn admin_change<Req, Resp, Fut>(
    session: &Session,
    body: &[u8],
    path: &str,
    stamp: impl FnOnce(&mut Req, &Session),
    handler: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Response
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut message: Req = match body_message(path, body) {
        Ok(message) => message,
        Err(refused) => return *refused,
    };
    stamp(&mut message, session);
    call_as_session(session, path, message, handler).await
}

/// `POST /console/api/evaluate` with an `EvaluateFlagRequest`: the "try
/// it" box, with the path that decided when `explain` is set.
async fn evaluate_flag(
    State(surface): State<Arc<HttpSurface>>,
    // Not a change, but a POST: the CSRF token keeps other sites from
    // making the session evaluate.
    CsrfChecked(session): CsrfChecked,
    body: axum::body::Bytes,
) -> Response {
    const PATH: &str = "/readyd.v1.FlagService/EvaluateFlag";
    let message: pb::EvaluateFlagRequest = match body_message(PATH, &body) {
        Ok(message) => message,
        Err(refused) => return *refused,
    };
    let flags = surface.flags.clone();
    call_as_session(&session, PATH, message, |request| async move {
        flags.evaluate_flag(request).await
    })
    .await
}

/// `GET /console/api/deployments[?environment=…]`: the latest 50.
async fn list_deployments(
    State(surface): State<Arc<HttpSurface>>,
    SignedIn(session): SignedIn,
    uri: axum::http::Uri,
) -> Response {
    let environment = query_param(&uri, "environment").unwrap_or_default();
    let message = pb::ListDeploymentsRequest {
        environment,
        page_size: 50,
        ..Default::default()
    };
    let deployments = surface.deployments.clone();
    call_as_session(
        &session,
        "/readyd.v1.DeploymentService/ListDeployments",
        message,
        |request| async move { deployments.list_deployments(request).await },
    )
    .await
}

/// Most environments the overview lists.
const MAX_ENVIRONMENTS: i64 = 100;

/// `GET /console/api/current-deployments`: the current deployment of every
/// environment (the overview's), as a `ListDeploymentsResponse`.
async fn current_deployments(State(surface): State<Arc<HttpSurface>>, _: SignedIn) -> Response {
    let Some(store) = &surface.store else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "deployments are read from the database, and this readyd has none",
        );
    };
    let deployments = match store.current_deployments(MAX_ENVIRONMENTS).await {
        Ok(deployments) => deployments,
        Err(problem) => {
            tracing::warn!(error = %problem, "the console's current deployments could not be read");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the deployments could not be read from the database; try again",
            );
        }
    };
    let answer = pb::ListDeploymentsResponse {
        deployments: deployments.into_iter().map(pb::Deployment::from).collect(),
        ..Default::default()
    };
    match json::to_json("readyd.v1.ListDeploymentsResponse", &answer) {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(problem) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            &format!("the answer could not be written: {problem}"),
        ),
    }
}

/// `POST /console/api/deployments` with a `RecordDeploymentRequest`; the
/// session's name is who deployed.
async fn record_deployment(
    State(surface): State<Arc<HttpSurface>>,
    AdminChange(session): AdminChange,
    body: axum::body::Bytes,
) -> Response {
    let deployments = surface.deployments.clone();
    admin_change(
        &session,
        &body,
        "/readyd.v1.DeploymentService/RecordDeployment",
        |message: &mut pb::RecordDeploymentRequest, session| {
            message.deployed_by = session.actor.clone();
        },
        |request| async move { deployments.record_deployment(request).await },
    )
    .await
}

/// `POST /console/api/rollback` with a `RecordRollbackRequest`; the
/// session's name is who rolled back.
async fn record_rollback(
    State(surface): State<Arc<HttpSurface>>,
    AdminChange(session): AdminChange,
    body: axum::body::Bytes,
) -> Response {
    let deployments = surface.deployments.clone();
    admin_change(
        &session,
        &body,
        "/readyd.v1.DeploymentService/RecordRollback",
        |message: &mut pb::RecordRollbackRequest, session| {
            message.actor = session.actor.clone();
        },
        |request| async move { deployments.record_rollback(request).await },
    )
    .await
}

/// Longest range of the history page.
const MAX_HISTORY_HOURS: u64 = 7 * 24;

/// `GET /console/api/health-history?hours=N` (1 to 168, default 24): the
/// recorded rows of that range, newest first, at most 1,000.
async fn health_history(
    State(surface): State<Arc<HttpSurface>>,
    SignedIn(session): SignedIn,
    uri: axum::http::Uri,
) -> Response {
    let hours = match hours_param(&uri) {
        Ok(hours) => hours,
        Err(refused) => return *refused,
    };
    let since = SystemTime::now() - Duration::from_secs(hours * 3600);
    let message = pb::ListHealthHistoryRequest {
        since: Some(prost_types::Timestamp::from(since)),
        until: None,
        limit: 1000,
    };
    let health = surface.health.clone();
    call_as_session(
        &session,
        "/readyd.v1.HealthService/ListHealthHistory",
        message,
        |request| async move { health.list_health_history(request).await },
    )
    .await
}

/// The hours of a range parameter (1 to 168, default 24), or `400`.
fn hours_param(uri: &axum::http::Uri) -> Result<u64, Box<Response>> {
    match query_param(uri, "hours").map(|value| value.parse::<u64>()) {
        None => Ok(24),
        Some(Ok(hours)) if (1..=MAX_HISTORY_HOURS).contains(&hours) => Ok(hours),
        Some(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "hours: a whole number from 1 to 168",
        ))),
    }
}

/// `GET /console/api/timeline?hours=N&environment=E`: deployments,
/// rollbacks, flag, segment and config changes and health transitions of
/// that range, newest first (see [`crate::store::timeline`]).
async fn timeline(
    State(surface): State<Arc<HttpSurface>>,
    _: SignedIn,
    uri: axum::http::Uri,
) -> Response {
    let hours = match hours_param(&uri) {
        Ok(hours) => hours,
        Err(refused) => return *refused,
    };
    let environment = query_param(&uri, "environment").filter(|env| !env.is_empty());
    if let Some(env) = &environment
        && !crate::flags::is_valid_environment(env)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "environment: lower-case letters, digits, '_' and '-'",
        );
    }
    let Some(store) = &surface.store else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the timeline is read from the database, and this readyd has none",
        );
    };
    let until = chrono::Utc::now();
    let since = until - chrono::Duration::hours(i64::try_from(hours).unwrap_or(24));
    match crate::store::timeline::timeline(
        store,
        since,
        until,
        environment.as_deref(),
        crate::store::timeline::MAX_ENTRIES,
    )
    .await
    {
        Ok(entries) => json_response(StatusCode::OK, &json!({ "entries": entries })),
        Err(problem) => {
            tracing::warn!(error = %problem, "the console's timeline could not be read");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the timeline could not be read from the database; try again",
            )
        }
    }
}

/// `GET /console/api/config[?environment=E]`: the rows that apply to E
/// (this readyd's environment by default; another needs an admin session),
/// each with where it comes from (`*` or E). Sensitive values are masked
/// for every session, admins included: an admin reveals one on purpose
/// ([`reveal_config`]), and that is audited.
async fn list_config(
    State(surface): State<Arc<HttpSurface>>,
    SignedIn(session): SignedIn,
    uri: axum::http::Uri,
) -> Response {
    const PATH: &str = "/readyd.v1.ConfigService/ListConfigs";
    let message = pb::ListConfigsRequest {
        environment: query_param(&uri, "environment").unwrap_or_default(),
        page_size: 1000,
        page_token: query_param(&uri, "page_token").unwrap_or_default(),
        ..Default::default()
    };
    let config = surface.config.clone();
    let request = match session_request(&session, message) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let mut page = match config.list_configs(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => return crate::http::status_error(&status),
    };
    for entry in &mut page.entries {
        if entry.is_sensitive {
            entry.value = None;
            entry.redacted = true;
        }
    }
    match json::to_json(&message_name(PATH, "Response"), &page) {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(problem) => {
            tracing::error!(%problem, "a console answer could not be written");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error; see readyd's log",
            )
        }
    }
}

/// A request made as the session (see [`call_as_session`]), for handlers
/// whose answer the console changes before sending it.
fn session_request<T>(session: &Session, message: T) -> Result<tonic::Request<T>, Box<Response>> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(Caller {
        is_admin: session.access == Access::Admin,
    });
    let actor = session.actor.parse().map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "the session's name cannot be an actor",
        ))
    })?;
    request
        .metadata_mut()
        .insert(crate::api::ACTOR_HEADER, actor);
    Ok(request)
}

/// `POST /console/api/config` with a `SetConfigRequest`: an admin
/// session's change, its name the actor.
async fn set_config(
    State(surface): State<Arc<HttpSurface>>,
    AdminChange(session): AdminChange,
    body: axum::body::Bytes,
) -> Response {
    let config = surface.config.clone();
    admin_change(
        &session,
        &body,
        "/readyd.v1.ConfigService/SetConfig",
        |_: &mut pb::SetConfigRequest, _| {},
        |request| async move { config.set_config(request).await },
    )
    .await
}

/// `POST /console/api/config/reveal` with `{"key", "environment"}`: one
/// row's value for an admin session, recorded in the audit trail first
/// (action `reveal`, who, the version seen).
async fn reveal_config(
    State(surface): State<Arc<HttpSurface>>,
    AdminChange(session): AdminChange,
    body: axum::body::Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "the body must be JSON: {\"key\": …, \"environment\": …}",
        );
    };
    let key = request["key"].as_str().unwrap_or_default();
    let environment = request["environment"].as_str().unwrap_or_default();
    let Some(store) = &surface.store else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "revealing is recorded in the database, and this readyd has none",
        );
    };
    match store.reveal_config(key, environment, &session.actor).await {
        Ok(Some(row)) => {
            tracing::info!(actor = %session.actor, key = %crate::echo::truncate(key), environment = %crate::echo::truncate(environment), "a configuration value was revealed in the console");
            json_response(
                StatusCode::OK,
                &json!({ "key": row.key, "environment": row.environment, "value": row.value, "version": row.version }),
            )
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!(
                "no row {:?} in environment {:?}",
                crate::echo::truncate(key),
                crate::echo::truncate(environment)
            ),
        ),
        Err(problem) => {
            tracing::warn!(error = %problem, "a reveal could not be recorded; nothing was shown");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the reveal could not be recorded, so nothing is shown; try again",
            )
        }
    }
}

/// `GET /console/api/config/audit?key=K`: the key's audit trail, newest
/// first (admin sessions, as `ListConfigAudit`).
async fn config_audit(
    State(surface): State<Arc<HttpSurface>>,
    SignedIn(session): SignedIn,
    uri: axum::http::Uri,
) -> Response {
    if session.access != Access::Admin {
        return error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "the audit trail needs an admin session",
        );
    }
    let message = pb::ListConfigAuditRequest {
        key: query_param(&uri, "key").unwrap_or_default(),
        page_size: 100,
        ..Default::default()
    };
    let config = surface.config.clone();
    call_as_session(
        &session,
        "/readyd.v1.ConfigService/ListConfigAudit",
        message,
        |request| async move { config.list_config_audit(request).await },
    )
    .await
}
