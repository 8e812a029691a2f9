//! readyd's HTTP surface, on `--http-listen` (HTTP/1.1 and HTTP/2 over
//! cleartext, both on one port): plain HTTP probes, and JSON endpoints for
//! clients that cannot speak gRPC. Each JSON endpoint is a gRPC call made
//! in-process: the same handler, the same token rules (decided by the
//! call's gRPC path), the answer in the protobuf JSON mapping
//! (`/api/health` is `HealthService/GetHealth`).
//!
//! It has its own port rather than sharing the gRPC one: the gRPC server's
//! HTTP/2 settings, limits and two-step GOAWAY shutdown stay as they are,
//! and a pod can expose the probes without exposing the API.

mod bulk_cache;
mod bulk_first;
mod events;
pub(crate) mod json;
pub mod limit;
mod observe;
mod ofrep;
pub mod probes;

pub use bulk_cache::BulkCache;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::api::auth::{Audience, Caller, TokenCheck, authorize, authorize_evaluation};
use crate::api::config::ConfigApi;
use crate::api::flagd::FlagdCore;
use crate::api::flags::FlagApi;
use crate::api::health::HealthApi;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::HealthStatus;
use crate::api::pb::readyd::v1::config_service_server::ConfigService;
use crate::api::pb::readyd::v1::flag_service_server::FlagService;
use crate::health::monitor::HealthMonitor;
use crate::health::probes::{Probes, ServingStatus};
use probes::Probe;

/// The largest request body: a flag with every rule and variant the
/// limits allow fits well within it.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the HTTP handlers answer from.
pub struct HttpSurface {
    /// The probe states (the gRPC probes').
    pub probes: Arc<Probes>,
    /// The checks.
    pub monitor: Arc<HealthMonitor>,
    /// The health report, as `GetHealth` builds it.
    pub health: HealthApi,
    /// The FlagService handlers.
    pub flags: FlagApi,
    /// The ConfigService handlers.
    pub config: ConfigApi,
    /// The DeploymentService handlers (the console's deployments page).
    pub deployments: crate::api::deployments::DeploymentApi,
    /// Evaluation in OpenFeature's terms (flagd's, and OFREP's).
    pub flagd: FlagdCore,
    /// The tokens, as the gRPC API checks them.
    pub tokens: Arc<dyn TokenCheck>,
    /// Origins whose pages may call from a browser (`*`: any); none: no
    /// CORS headers at all, so browsers refuse cross-origin calls.
    pub cors_origins: Vec<String>,
    /// Requests per second per token on the client-facing endpoints;
    /// `None`: no limit.
    pub client_limit: Option<limit::RateLimit>,
    /// The web console, when `--console` is on.
    pub console: Option<crate::console::Console>,
    /// The database, when there is one (the console's timeline reads it).
    pub store: Option<crate::store::Store>,
    /// Recent OFREP bulk answers' ETags, for `304`s without evaluating.
    pub bulk_cache: BulkCache,
}

/// Every route of the surface, each observed (see [`observe`]) by
/// `observe`.
fn router(surface: Arc<HttpSurface>, observe: observe::ObserveLayer) -> Router {
    let console = if surface.console.is_some() {
        crate::console::routes()
    } else {
        Router::new()
    };
    let router = Router::new()
        .merge(console)
        .route("/livez", get(|s, uri| probe(s, uri, Probe::Live)))
        .route("/readyz", get(|s, uri| probe(s, uri, Probe::Ready)))
        .route("/startupz", get(|s, uri| probe(s, uri, Probe::Started)))
        .route("/api/health", get(api_health))
        .route("/api/feature-flags", get(list_flags).post(upsert_flag))
        .route("/api/feature-flags/{key}", get(evaluate_flag))
        .route("/api/config", get(list_configs).post(set_config))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep_evaluate))
        // POST is answered before the router (see [`bulk_first`]); the
        // route stays so that other methods get the router's 405.
        .route(BULK_PATH, post(ofrep_evaluate_all))
        .route(events::PATH, get(ofrep_events))
        .fallback(|uri: Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("no such path: {}", crate::echo::truncate(uri.path())),
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this path does not take that method",
            )
        });
    // Inside the router, where each request's route is known; after the
    // fallbacks, so requests to no route are observed too.
    router.layer(observe).with_state(surface)
}

/// The path of a bulk evaluation.
const BULK_PATH: &str = "/ofrep/v1/evaluate/flags";

/// The surface as served: [`router`] inside the layers every request
/// passes whatever its route, CORS (when origins are configured) and the
/// body limit. They wrap the router once, not each route: a layer given to
/// `Router::layer` boxes every route's service again, which each request
/// then pays for in clones and allocations.
///
/// A bulk evaluation (`POST /ofrep/v1/evaluate/flags`) is answered before
/// the router, observed as its route (see [`bulk_first`]).
pub fn service(
    surface: Arc<HttpSurface>,
) -> impl tower::Service<
    axum::extract::Request,
    Response = Response,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let cors = cors(&surface.cors_origins);
    let observe = observe::ObserveLayer::default();
    let bulk = observe.with_route(BULK_PATH, bulk_first::BulkEvaluation::new(&surface));
    tower::ServiceBuilder::new()
        .option_layer(cors)
        .layer_fn(|router| bulk_first::BulkFirst::new(bulk.clone(), router))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .service(router(surface, observe))
}

/// The CORS answers for `origins`: preflights answered, the headers a
/// browser client sends allowed (tokens, OFREP's `X-API-Key` and
/// `If-None-Match`), `ETag` readable. `None` without origins.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_NONE_MATCH,
                header::HeaderName::from_static("x-api-key"),
                header::HeaderName::from_static(crate::api::ACTOR_HEADER),
            ])
            .expose_headers([header::ETAG, header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Serves `surface` on `listener` until `stop` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    surface: Arc<HttpSurface>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::ServiceExt;
    // No Nagle delay: h2c frames and event-stream messages go out at once.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        service(surface).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
}

/// `/livez`, `/readyz`, `/startupz` (see [`probes`]).
async fn probe(State(surface): State<Arc<HttpSurface>>, uri: Uri, probe: Probe) -> Response {
    let serving = surface.probes.get(probe.service()) == Some(ServingStatus::Serving);
    let lines = probes::lines(
        probe,
        &surface.monitor.checks(),
        surface.monitor.startup_finished(),
        surface.probes.is_leaving(),
    );
    let verbose = uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("verbose"))
    });
    let (code, body) = probes::answer(probe, serving, &lines, verbose);
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (code, plain_headers("text/plain; charset=utf-8"), body).into_response()
}

/// `GET /api/health`: the full report, as `GetHealth` answers it. A failing
/// check is data, not an error: the code is 200, or 503 when the report
/// is UNHEALTHY, so a plain HTTP check can read the code alone.
async fn api_health(State(surface): State<Arc<HttpSurface>>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(
        &*surface.tokens,
        "/readyd.v1.HealthService/GetHealth",
        headers.get(header::AUTHORIZATION),
    ) {
        return status_error(&refused);
    }
    health_report(&surface)
}

/// The health report as JSON: `200`, or `503` when it is UNHEALTHY.
pub(crate) fn health_report(surface: &HttpSurface) -> Response {
    let report = surface.health.report();
    let code = if report.status() == HealthStatus::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    match json::to_json("readyd.v1.HealthReport", &report) {
        Ok(body) => json_response(code, &body),
        Err(problem) => {
            tracing::error!(%problem, "an HTTP answer could not be written");
            status_error(&tonic::Status::internal(problem.to_string()))
        }
    }
}

/// The query string's pairs, percent-decoded.
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

/// A query parameter that must be a number (0 when absent); the error says
/// which and why.
fn number_param(pairs: &[(String, String)], name: &str) -> Result<u32, String> {
    match pairs.iter().rev().find(|(n, _)| n == name) {
        None => Ok(0),
        Some((_, value)) => value.parse().map_err(|_| {
            format!(
                "{name}: {:?} is not a whole number",
                crate::echo::truncate(value)
            )
        }),
    }
}

/// A 400 answer for a bad query parameter.
fn bad_param(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

/// The last value of query parameter `name` of `uri`, if it has one.
pub(crate) fn query_param(uri: &Uri, name: &str) -> Option<String> {
    query_pairs(uri)
        .into_iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value)
}

/// The last value of query parameter `name`, or empty.
fn text_param(pairs: &[(String, String)], name: &str) -> String {
    pairs
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}

/// The full name of the request or response message (`kind`: `Request` or
/// `Response`) of the gRPC call `path`, by the API's naming:
/// `/readyd.v1.FlagService/ListFlags` → `readyd.v1.ListFlagsResponse`.
pub(crate) fn message_name(path: &str, kind: &str) -> String {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let package = service.rsplit_once('.').map_or("", |(package, _)| package);
    format!("{package}.{method}{kind}")
}

/// Makes the gRPC call `path` in-process with `message`: the token rules
/// of `path` decide first, then `handler` answers, and its response is
/// written as JSON.
async fn call<Req, Resp, Fut>(
    surface: &HttpSurface,
    headers: &HeaderMap,
    path: &str,
    message: Req,
    handler: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Response
where
    Resp: prost::Message,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    match authorize(&*surface.tokens, path, headers.get(header::AUTHORIZATION)) {
        Ok(caller) => call_as(caller, headers, path, message, handler).await,
        Err(refused) => status_error(&refused),
    }
}

/// [`call`] for a caller already decided.
pub(crate) async fn call_as<Req, Resp, Fut>(
    caller: Caller,
    headers: &HeaderMap,
    path: &str,
    message: Req,
    handler: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Response
where
    Resp: prost::Message,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(caller);
    // Handlers that ask an upstream pass the caller's own token on; a
    // change names its actor as over gRPC.
    for name in [header::AUTHORIZATION.as_str(), crate::api::ACTOR_HEADER] {
        if let Some(value) = headers.get(name).and_then(|value| value.to_str().ok())
            && let Ok(value) = value.parse()
        {
            request.metadata_mut().insert(name, value);
        }
    }
    match handler(request).await {
        Ok(answer) => match json::to_json(&message_name(path, "Response"), answer.get_ref()) {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(problem) => {
                tracing::error!(%problem, "an HTTP answer could not be written");
                status_error(&tonic::Status::internal(problem.to_string()))
            }
        },
        Err(status) => status_error(&status),
    }
}

/// `GET /api/feature-flags[?prefix=…&page_size=…&page_token=…]`: one page of
/// flag definitions, as `ListFlags` answers (`nextPageToken` names the next).
async fn list_flags(
    State(surface): State<Arc<HttpSurface>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let pairs = query_pairs(&uri);
    let page_size = match number_param(&pairs, "page_size") {
        Ok(size) => size,
        Err(problem) => return bad_param(&problem),
    };
    let message = pb::ListFlagsRequest {
        prefix: text_param(&pairs, "prefix"),
        page_size,
        page_token: text_param(&pairs, "page_token"),
    };
    let flags = surface.flags.clone();
    call(
        &surface,
        &headers,
        "/readyd.v1.FlagService/ListFlags",
        message,
        |request| async move { flags.list_flags(request).await },
    )
    .await
}

/// `GET /api/feature-flags/{key}?user_id=…&role=…&<attribute>=…`: the flag
/// evaluated for that context, as `EvaluateFlag` answers. `role` may repeat;
/// every other parameter is a context attribute, as a string; `explain`
/// (`true`) adds the path that decided.
async fn evaluate_flag(
    State(surface): State<Arc<HttpSurface>>,
    axum::extract::Path(key): axum::extract::Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut context = pb::EvaluationContext::default();
    let mut attributes = prost_types::Struct::default();
    let mut explain = false;
    for (name, value) in query_pairs(&uri) {
        match name.as_str() {
            "user_id" => context.user_id = value,
            "role" => context.roles.push(value),
            "explain" => explain = matches!(value.as_str(), "" | "true" | "1"),
            _ => {
                attributes.fields.insert(
                    name,
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(value)),
                    },
                );
            }
        }
    }
    if !attributes.fields.is_empty() {
        context.attributes = Some(attributes);
    }
    let audience = match evaluation_caller(&surface, headers.get(header::AUTHORIZATION)) {
        Ok(audience) => audience,
        Err(refused) => return *refused,
    };
    if audience == Audience::Clients {
        // A client sees answers only: the path that decided can name
        // targeted users and rules.
        if explain {
            return status_error(&tonic::Status::permission_denied(
                "explain needs the read or admin token, not a client token",
            ));
        }
        if !surface.flagd.client_visible(&key) {
            return status_error(&tonic::Status::not_found(format!(
                "flag {:?} does not exist",
                crate::echo::truncate(&key)
            )));
        }
    }
    let message = pb::EvaluateFlagRequest {
        key,
        context: Some(context),
        explain,
    };
    let flags = surface.flags.clone();
    call_as(
        Caller { is_admin: false },
        &headers,
        "/readyd.v1.FlagService/EvaluateFlag",
        message,
        |request| async move { flags.evaluate_flag(request).await },
    )
    .await
}

/// `GET /api/config[?prefix=…&environment=…&all_environments=true&page_size=…&page_token=…]`:
/// the configuration as `ListConfigs` answers: this instance's environment
/// resolved, sensitive values redacted unless the admin token is presented.
async fn list_configs(
    State(surface): State<Arc<HttpSurface>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let pairs = query_pairs(&uri);
    let page_size = match number_param(&pairs, "page_size") {
        Ok(size) => size,
        Err(problem) => return bad_param(&problem),
    };
    let message = pb::ListConfigsRequest {
        prefix: text_param(&pairs, "prefix"),
        environment: text_param(&pairs, "environment"),
        all_environments: text_param(&pairs, "all_environments") == "true",
        page_size,
        page_token: text_param(&pairs, "page_token"),
    };
    let config = surface.config.clone();
    call(
        &surface,
        &headers,
        "/readyd.v1.ConfigService/ListConfigs",
        message,
        |request| async move { config.list_configs(request).await },
    )
    .await
}

/// The JSON request body of the gRPC call `path` as its request message,
/// or the 4xx that says why not. The token comes first: a refused caller
/// learns nothing about the body.
fn body_message<M: prost::Message + Default>(
    surface: &HttpSurface,
    path: &str,
    headers: &HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<M, Box<Response>> {
    authorize(&*surface.tokens, path, headers.get(header::AUTHORIZATION))
        .map_err(|refused| Box::new(status_error(&refused)))?;
    let body = body.map_err(|rejected| {
        Box::new(error(
            rejected.status(),
            if rejected.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "RESOURCE_EXHAUSTED"
            } else {
                "INVALID_ARGUMENT"
            },
            &format!("the body could not be read: {rejected} (at most {MAX_BODY_BYTES} bytes)"),
        ))
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json");
    if !content_type.starts_with("application/json") {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "INVALID_ARGUMENT",
            "the body must be JSON (Content-Type: application/json)",
        )));
    }
    json::from_json(&message_name(path, "Request"), &body)
        .map_err(|problem| Box::new(bad_param(&problem)))
}

/// `POST /api/feature-flags` with an `UpsertFlagRequest` in JSON: creates or
/// replaces a flag, as `UpsertFlag` does (admin token).
async fn upsert_flag(
    State(surface): State<Arc<HttpSurface>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    const PATH: &str = "/readyd.v1.FlagService/UpsertFlag";
    let message: pb::UpsertFlagRequest = match body_message(&surface, PATH, &headers, body) {
        Ok(message) => message,
        Err(refused) => return *refused,
    };
    let flags = surface.flags.clone();
    call(&surface, &headers, PATH, message, |request| async move {
        flags.upsert_flag(request).await
    })
    .await
}

/// `POST /api/config` with a `SetConfigRequest` in JSON: sets one row, as
/// `SetConfig` does (admin token).
async fn set_config(
    State(surface): State<Arc<HttpSurface>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    const PATH: &str = "/readyd.v1.ConfigService/SetConfig";
    let message: pb::SetConfigRequest = match body_message(&surface, PATH, &headers, body) {
        Ok(message) => message,
        Err(refused) => return *refused,
    };
    let config = surface.config.clone();
    call(&surface, &headers, PATH, message, |request| async move {
        config.set_config(request).await
    })
    .await
}

/// Decides an evaluation request (see [`authorize_evaluation`]) and
/// counts it against its token's rate limit: `429` with `Retry-After` past
/// it.
fn evaluation_caller(
    surface: &HttpSurface,
    authorization: Option<&HeaderValue>,
) -> Result<Audience, Box<Response>> {
    let audience = authorize_evaluation(&*surface.tokens, authorization)
        .map_err(|refused| Box::new(status_error(&refused)))?;
    if let Some(limit) = &surface.client_limit
        && let Err(wait) = limit.admit(authorization.map(HeaderValue::as_bytes))
    {
        let mut refused = error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "this token is past its rate limit (--client-rate-limit); retry after the time Retry-After gives",
        );
        refused.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(limit::retry_after_secs(wait)),
        );
        return Err(Box::new(refused));
    }
    Ok(audience)
}

/// An OFREP request as the handlers need it: the caller's audience, its
/// `If-None-Match`, and its body; or the error answer, in OFREP's shape
/// (`{"errorDetails": …}`) when the body cannot be read. Reads the headers
/// in place (axum's `HeaderMap` extractor copies them all).
async fn ofrep_request(
    surface: &HttpSurface,
    request: axum::extract::Request,
) -> Result<(Audience, Option<HeaderValue>, axum::body::Bytes), Box<Response>> {
    let authorization = ofrep::authorization(request.headers());
    let audience = evaluation_caller(surface, authorization.as_ref())?;
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
    // The limit is applied here, not by DefaultBodyLimit: a bulk
    // evaluation is answered before the router and that layer.
    let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
        request.into_body(),
        MAX_BODY_BYTES,
    ))
    .await
    .map(http_body_util::Collected::to_bytes)
    .map_err(|error| {
        let (code, why) = if error.is::<http_body_util::LengthLimitError>() {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("it is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            (StatusCode::BAD_REQUEST, error.to_string())
        };
        Box::new(json_response(
            code,
            &serde_json::json!({
                "errorCode": "PARSE_ERROR",
                "errorDetails": format!("the body could not be read: {why}"),
            }),
        ))
    })?;
    Ok((audience, if_none_match, body))
}

/// `POST /ofrep/v1/evaluate/flags/{key}` (see [`ofrep`]).
async fn ofrep_evaluate(
    State(surface): State<Arc<HttpSurface>>,
    axum::extract::Path(key): axum::extract::Path<String>,
    request: axum::extract::Request,
) -> Response {
    match ofrep_request(&surface, request).await {
        Ok((audience, _, body)) => ofrep::evaluate(&surface.flagd, audience, &key, &body),
        Err(refused) => *refused,
    }
}

/// `POST /ofrep/v1/evaluate/flags` (see [`ofrep`]).
async fn ofrep_evaluate_all(
    State(surface): State<Arc<HttpSurface>>,
    request: axum::extract::Request,
) -> Response {
    match ofrep_request(&surface, request).await {
        Ok((audience, if_none_match, body)) => {
            let window = events::window_at(std::time::SystemTime::now());
            let request = ofrep::BulkRequest {
                audience,
                if_none_match: if_none_match.as_ref().and_then(|value| value.to_str().ok()),
                body: &body,
                window,
            };
            ofrep::evaluate_all(&surface.flagd, &surface.bulk_cache, &request, || {
                events::ticket(&surface.tokens.ticket_key(), window)
            })
        }
        Err(refused) => *refused,
    }
}

/// `GET /ofrep/v1/events?ticket=…` (see [`events`]): the ticket from a
/// bulk evaluation instead of a token, which `EventSource` cannot send.
async fn ofrep_events(State(surface): State<Arc<HttpSurface>>, uri: Uri) -> Response {
    let now = events::window_at(std::time::SystemTime::now());
    let admitted = events::ticket_of(uri.query())
        .is_some_and(|ticket| events::admits(&surface.tokens.ticket_key(), &ticket, now));
    if !admitted {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "the event stream needs the ticket of a recent bulk evaluation (POST /ofrep/v1/evaluate/flags names the stream with it)",
        );
    }
    match events::stream(&surface.flagd) {
        Ok(stream) => stream,
        Err(refused) => status_error(&refused),
    }
}

/// `Cache-Control` of every answer.
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// `X-Content-Type-Options` of every answer.
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
/// `Content-Type` of the JSON answers.
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Headers every answer carries: answers are live state, never cached.
fn plain_headers(content_type: &'static str) -> [(header::HeaderName, HeaderValue); 3] {
    typed_headers(HeaderValue::from_static(content_type))
}

/// [`plain_headers`] for a content type already made (the values are
/// constants: nothing is checked per answer).
fn typed_headers(content_type: HeaderValue) -> [(header::HeaderName, HeaderValue); 3] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, NO_STORE),
        (header::X_CONTENT_TYPE_OPTIONS, NOSNIFF),
    ]
}

/// A JSON answer of `body`.
pub(crate) fn json_response(code: StatusCode, body: &serde_json::Value) -> Response {
    typed_json_response(code, body)
}

/// Answers up to this size are written into a buffer kept by the thread,
/// then copied out at their exact size; larger ones are written into a
/// buffer of their own.
const SMALL_ANSWER: usize = 4096;

thread_local! {
    /// Where small answers are written: one allocation per answer (its
    /// exact-size copy, which the body then owns as is) instead of a
    /// growing buffer and the shared header `Bytes` adds to a buffer
    /// that is not full.
    static ANSWER_BUFFER: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(SMALL_ANSWER));
}

/// `body` as JSON: the bytes of its answer.
fn json_bytes(body: &impl serde::Serialize) -> serde_json::Result<axum::body::Bytes> {
    let written = ANSWER_BUFFER.try_with(|kept| {
        // Taken, not borrowed: a body's `Serialize` that answered again on
        // this thread would find an empty buffer, never a borrowed one.
        let mut buffer = kept.take();
        buffer.clear();
        let written = serde_json::to_writer(&mut buffer, body).map(|()| {
            if buffer.len() <= SMALL_ANSWER {
                axum::body::Bytes::from(buffer.as_slice().to_vec())
            } else {
                axum::body::Bytes::from(std::mem::take(&mut buffer))
            }
        });
        if buffer.capacity() <= SMALL_ANSWER {
            kept.replace(buffer);
        }
        written
    });
    match written {
        Ok(written) => written,
        // The thread is ending: no buffer to keep.
        Err(_) => serde_json::to_vec(body).map(axum::body::Bytes::from),
    }
}

/// A JSON answer of a body of a type that serialises itself (no
/// `serde_json::Value` tree built first).
pub(crate) fn typed_json_response(code: StatusCode, body: &impl serde::Serialize) -> Response {
    match json_bytes(body) {
        Ok(bytes) => (code, typed_headers(APPLICATION_JSON), bytes).into_response(),
        // Only a map with non-string keys fails, which no answer has.
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            &format!("the answer could not be written: {err}"),
        ),
    }
}

/// An error answer: `{"code": "NOT_FOUND", "message": "…"}`, `code` being
/// the gRPC code's name the same failure has over gRPC.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        &serde_json::json!({ "code": code, "message": message }),
    )
}

/// A gRPC status as an HTTP error.
pub(crate) fn status_error(status: &tonic::Status) -> Response {
    use tonic::Code;
    let (http, name) = match status.code() {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        Code::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "CANCELLED"),
        // Internal details never reach a body.
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error; see readyd's log",
            );
        }
    };
    error(http, name, status.message())
}

#[cfg(test)]
mod tests {
    #[test]
    fn message_names_follow_the_call() {
        assert_eq!(
            super::message_name("/readyd.v1.FlagService/ListFlags", "Response"),
            "readyd.v1.ListFlagsResponse"
        );
        assert_eq!(
            super::message_name("/readyd.v1.ConfigService/SetConfig", "Request"),
            "readyd.v1.SetConfigRequest"
        );
    }
}
