//! Who may call what: one tower layer in front of every service.
//!
//! The layer sees the gRPC method path before any handler runs, so the rule
//! lives in one table ([`access_for`]) instead of in each handler. It tells
//! handlers who the caller is through a [`Caller`] request extension (config
//! reads show sensitive values to admins only).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

use crate::settings::Secret;

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token ever (grpc.health.v1, reflection): kubelets cannot send one.
    Public,
    /// The read token when one is configured, else nothing.
    Read,
    /// The admin token.
    Admin,
    /// The replication token, or the admin token (Follow streams carry
    /// sensitive values).
    Replication,
}

/// A kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// READYD_ADMIN_TOKEN: mutations and sensitive values.
    Admin,
    /// READYD_READ_TOKEN: reads, when reads are guarded.
    Read,
    /// READYD_REPLICATION_TOKEN: following this readyd.
    Replication,
    /// READYD_CLIENT_TOKEN (several): browsers and phones evaluating the
    /// flags marked `client_visible`, over HTTP, and nothing else.
    Client,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Read, Role::Replication, Role::Client];

    /// The role's name, as in token verifiers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Read => "read",
            Role::Replication => "replication",
            Role::Client => "client",
        }
    }

    /// The role named `name`.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

/// What recognises tokens: the tokens themselves ([`Tokens`]), or on a
/// follower, verifiers of its upstream's tokens.
pub trait TokenCheck: Send + Sync + std::fmt::Debug {
    /// Whether a token of `role` exists at all.
    fn has(&self, role: Role) -> bool;
    /// Whether `presented` is the token of `role`. Never logs it.
    fn matches(&self, role: Role, presented: &str) -> bool;
    /// The key of tickets for what a browser cannot send a token to (the
    /// OFREP event stream): derived from the tokens, so every readyd with
    /// the same tokens derives the same key, and a new token voids old
    /// tickets.
    fn ticket_key(&self) -> [u8; 32];
}

/// A ticket key from secret parts, each given with its role.
pub fn derive_ticket_key<'a>(parts: impl Iterator<Item = (Role, &'a [u8])>) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(b"readyd ticket key v1");
    for (role, part) in parts {
        hash.update(role.as_str().as_bytes());
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// The HMAC-SHA256 of `parts` (fed in order, nothing between them) under
/// `key`, its first `bytes` bytes in lower-case hex: what the ticket and
/// session signatures are made of.
pub fn mac_hex(key: &[u8; 32], parts: &[&[u8]], bytes: usize) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut context = ring::hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    let tag = context.sign();
    hex(tag.as_ref().get(..bytes).unwrap_or(tag.as_ref()))
}

/// `bytes` in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Every method readyd serves, by full path, and what it needs. The table
/// fails closed: a path not listed here (a method added to a proto without
/// an entry, or a path no service has) needs the admin token, so a new RPC
/// can never become public or a read by omission. A test checks that every
/// method of every service in the compiled descriptor set is listed.
const METHODS: &[(&str, Access)] = &[
    // grpc.health.v1: kubelets cannot send a token.
    ("/grpc.health.v1.Health/Check", Access::Public),
    ("/grpc.health.v1.Health/Watch", Access::Public),
    ("/grpc.health.v1.Health/List", Access::Public),
    // Reflection describes the API, never data.
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Access::Public,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Access::Public,
    ),
    // Health reports answer from memory. CheckDatabase queries (and writes
    // a history row), but at most once per interval whoever calls (see
    // api::health), so a reader cannot make the database work.
    ("/readyd.v1.HealthService/GetHealth", Access::Read),
    ("/readyd.v1.HealthService/WatchHealth", Access::Read),
    ("/readyd.v1.HealthService/ListHealthHistory", Access::Read),
    ("/readyd.v1.HealthService/CheckDatabase", Access::Read),
    ("/readyd.v1.FlagService/GetFlag", Access::Read),
    ("/readyd.v1.FlagService/ListFlags", Access::Read),
    ("/readyd.v1.FlagService/EvaluateFlag", Access::Read),
    ("/readyd.v1.FlagService/EvaluateFlags", Access::Read),
    ("/readyd.v1.FlagService/WatchFlags", Access::Read),
    ("/readyd.v1.FlagService/UpsertFlag", Access::Admin),
    ("/readyd.v1.FlagService/DeleteFlag", Access::Admin),
    ("/readyd.v1.FlagService/ApplyFlags", Access::Admin),
    ("/readyd.v1.FlagService/GetSegment", Access::Read),
    ("/readyd.v1.FlagService/ListSegments", Access::Read),
    ("/readyd.v1.FlagService/UpsertSegment", Access::Admin),
    ("/readyd.v1.FlagService/DeleteSegment", Access::Admin),
    ("/readyd.v1.FlagService/ListSegmentAudit", Access::Read),
    // Flags hold no secrets: whoever may read them may read their history.
    ("/readyd.v1.FlagService/ListFlagAudit", Access::Read),
    // Usage counts say how flags are used, nothing secret, like the audit.
    ("/readyd.v1.FlagService/GetFlagUsage", Access::Read),
    ("/readyd.v1.FlagService/ListStaleFlags", Access::Read),
    // Config reads show sensitive values to admins only (handlers decide
    // from the Caller).
    ("/readyd.v1.ConfigService/GetConfig", Access::Read),
    ("/readyd.v1.ConfigService/ListConfigs", Access::Read),
    ("/readyd.v1.ConfigService/GetMaintenanceMode", Access::Read),
    ("/readyd.v1.ConfigService/WatchConfigs", Access::Read),
    ("/readyd.v1.ConfigService/SetConfig", Access::Admin),
    ("/readyd.v1.ConfigService/DeleteConfig", Access::Admin),
    ("/readyd.v1.ConfigService/SetMaintenanceMode", Access::Admin),
    ("/readyd.v1.ConfigService/ListConfigAudit", Access::Admin),
    ("/readyd.v1.DeploymentService/ListDeployments", Access::Read),
    (
        "/readyd.v1.DeploymentService/GetCurrentDeployment",
        Access::Read,
    ),
    (
        "/readyd.v1.DeploymentService/RecordDeployment",
        Access::Admin,
    ),
    ("/readyd.v1.DeploymentService/RecordRollback", Access::Admin),
    // Follow streams carry sensitive values.
    ("/readyd.v1.ReplicationService/Follow", Access::Replication),
    (
        "/readyd.v1.ReplicationService/RecordHealth",
        Access::Replication,
    ),
    // Only readyd instances report usage: a reader must not inflate it.
    (
        "/readyd.v1.ReplicationService/RecordUsage",
        Access::Replication,
    ),
    // The flagd evaluation protocol: reads, like EvaluateFlag.
    ("/flagd.evaluation.v1.Service/ResolveAll", Access::Read),
    ("/flagd.evaluation.v1.Service/ResolveBoolean", Access::Read),
    ("/flagd.evaluation.v1.Service/ResolveString", Access::Read),
    ("/flagd.evaluation.v1.Service/ResolveFloat", Access::Read),
    ("/flagd.evaluation.v1.Service/ResolveInt", Access::Read),
    ("/flagd.evaluation.v1.Service/ResolveObject", Access::Read),
    ("/flagd.evaluation.v1.Service/EventStream", Access::Read),
    ("/flagd.evaluation.v2.Service/ResolveAll", Access::Read),
    ("/flagd.evaluation.v2.Service/ResolveBoolean", Access::Read),
    ("/flagd.evaluation.v2.Service/ResolveString", Access::Read),
    ("/flagd.evaluation.v2.Service/ResolveFloat", Access::Read),
    ("/flagd.evaluation.v2.Service/ResolveInt", Access::Read),
    ("/flagd.evaluation.v2.Service/ResolveObject", Access::Read),
    ("/flagd.evaluation.v2.Service/EventStream", Access::Read),
];

/// The access the table lists for `path`, if it lists it.
pub fn listed_access(path: &str) -> Option<Access> {
    METHODS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, access)| *access)
}

/// The access a gRPC method path needs: its entry in the table, else admin
/// (fail closed; an unknown path then gets UNAUTHENTICATED or
/// PERMISSION_DENIED without the admin token, UNIMPLEMENTED with it).
pub fn access_for(path: &str) -> Access {
    listed_access(path).unwrap_or(Access::Admin)
}

/// Who is calling, as far as readyd can tell. Inserted into every request's
/// extensions by [`AuthLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The caller presented the admin token.
    pub is_admin: bool,
}

impl Caller {
    /// The caller of a request; not admin when the layer did not run.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .copied()
            .unwrap_or(Caller { is_admin: false })
    }
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Enables mutations.
    pub admin: Option<Secret>,
    /// Guards reads when set.
    pub read: Option<Secret>,
    /// Lets followers follow.
    pub replication: Option<Secret>,
    /// Let browsers and phones evaluate client-visible flags (several, so
    /// each app has its own and one can be replaced without the others).
    pub client: Vec<Secret>,
}

impl Tokens {
    /// The tokens of `role`.
    pub fn secrets(&self, role: Role) -> &[Secret] {
        match role {
            Role::Admin => self.admin.as_slice(),
            Role::Read => self.read.as_slice(),
            Role::Replication => self.replication.as_slice(),
            Role::Client => &self.client,
        }
    }
}

impl TokenCheck for Tokens {
    fn has(&self, role: Role) -> bool {
        !self.secrets(role).is_empty()
    }

    fn ticket_key(&self) -> [u8; 32] {
        derive_ticket_key(Role::ALL.into_iter().flat_map(|role| {
            self.secrets(role)
                .iter()
                .map(move |secret| (role, secret.expose().as_bytes()))
        }))
    }

    fn matches(&self, role: Role, presented: &str) -> bool {
        // Every token is compared, so the time taken does not tell which
        // one (or whether any) matched.
        self.secrets(role)
            .iter()
            .fold(false, |found, secret| matches(presented, secret) | found)
    }
}

/// Compares in constant time, so the time taken reveals nothing about how
/// much of a guess was right.
fn matches(presented: &str, expected: &Secret) -> bool {
    presented
        .as_bytes()
        .ct_eq(expected.expose().as_bytes())
        .into()
}

impl Tokens {
    /// Decides a call to `path` with the given `authorization` header value
    /// (see [`authorize`]).
    pub fn authorize(
        &self,
        path: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Caller, Status> {
        authorize(self, path, authorization)
    }
}

/// The token of an `authorization: Bearer <token>` header value; `None`
/// when it is not one.
fn bearer_token(value: &http::HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Decides a call to `path` with the given `authorization` header value,
/// by the tokens `tokens` recognises. Never logs or echoes the token.
pub fn authorize(
    tokens: &dyn TokenCheck,
    path: &str,
    authorization: Option<&http::HeaderValue>,
) -> Result<Caller, Status> {
    let access = access_for(path);
    if access == Access::Public {
        return Ok(Caller { is_admin: false });
    }
    if access == Access::Admin && !tokens.has(Role::Admin) {
        return Err(Status::permission_denied(
            "mutations are disabled on this readyd: set READYD_ADMIN_TOKEN to enable them",
        ));
    }
    if access == Access::Replication && !tokens.has(Role::Replication) && !tokens.has(Role::Admin) {
        return Err(Status::permission_denied(
            "replication is disabled on this readyd: set READYD_REPLICATION_TOKEN (or READYD_ADMIN_TOKEN) to let followers follow it",
        ));
    }
    let presented = match authorization {
        None => None,
        Some(value) => match bearer_token(value) {
            Some(token) => Some(token),
            None => {
                return Err(Status::unauthenticated(
                    "malformed authorization header; expected `authorization: Bearer <token>`",
                ));
            }
        },
    };
    let is = |role| presented.is_some_and(|token| tokens.matches(role, token));
    let is_admin = is(Role::Admin);
    let is_reader = is(Role::Read);
    let is_replicator = access == Access::Replication && is(Role::Replication);
    if presented.is_some() && !is_admin && !is_reader && !is_replicator {
        if tokens.has(Role::Client) && is(Role::Client) {
            return Err(Status::permission_denied(
                "a client token evaluates client-visible flags over HTTP only (OFREP, GET /api/feature-flags/{key})",
            ));
        }
        return Err(Status::permission_denied(
            "the presented token is not valid",
        ));
    }
    match access {
        Access::Public => Ok(Caller { is_admin: false }),
        Access::Admin if presented.is_none() => Err(Status::unauthenticated(
            "this call needs the admin token: send `authorization: Bearer <READYD_ADMIN_TOKEN>`",
        )),
        Access::Admin if !is_admin => {
            Err(Status::permission_denied("this call needs the admin token"))
        }
        Access::Replication if presented.is_none() => Err(Status::unauthenticated(
            "following needs the replication token: send `authorization: Bearer <READYD_REPLICATION_TOKEN>`",
        )),
        Access::Replication if !is_replicator && !is_admin => Err(Status::permission_denied(
            "following needs the replication token (or the admin token)",
        )),
        Access::Read if tokens.has(Role::Read) && presented.is_none() => {
            Err(Status::unauthenticated(
                "reads need a token: send `authorization: Bearer <READYD_READ_TOKEN>`",
            ))
        }
        Access::Admin | Access::Read | Access::Replication => Ok(Caller { is_admin }),
    }
}

/// Which flags a caller may evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every flag: a caller with the read or admin token, or anyone when
    /// reads are open.
    Everyone,
    /// Only flags marked `client_visible`: a caller with a client token.
    Clients,
}

impl Audience {
    /// Whether this audience may evaluate `flag`; to the others it does
    /// not exist.
    pub fn sees(self, flag: &crate::flags::Flag) -> bool {
        self == Audience::Everyone || flag.client_visible
    }
}

/// Decides an evaluation over HTTP (OFREP, `GET /api/feature-flags/{key}`):
/// a client token may make it, for client-visible flags; any other caller
/// as for `EvaluateFlag`.
pub fn authorize_evaluation(
    tokens: &dyn TokenCheck,
    authorization: Option<&http::HeaderValue>,
) -> Result<Audience, Status> {
    if let Some(token) = authorization.and_then(bearer_token)
        && tokens.has(Role::Client)
        && tokens.matches(Role::Client, token)
    {
        return Ok(Audience::Clients);
    }
    authorize(tokens, "/readyd.v1.FlagService/EvaluateFlag", authorization)
        .map(|_| Audience::Everyone)
}

/// Tower layer applying [`authorize`] to every request.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    /// Shared by every connection.
    tokens: Arc<dyn TokenCheck>,
}

impl AuthLayer {
    /// A layer enforcing `tokens`.
    pub fn new(tokens: Arc<dyn TokenCheck>) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            tokens: Arc::clone(&self.tokens),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    /// The services behind the check.
    inner: S,
    /// What recognises tokens.
    tokens: Arc<dyn TokenCheck>,
}

impl<S, B, ResBody> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        match authorize(
            &*self.tokens,
            path,
            request.headers().get(http::header::AUTHORIZATION),
        ) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(status) => {
                tracing::debug!(method = path, code = ?status.code(), "call refused");
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tonic::Code;

    const MUTATION: &str = "/readyd.v1.FlagService/UpsertFlag";
    const READ: &str = "/readyd.v1.FlagService/GetFlag";
    const PROBE: &str = "/grpc.health.v1.Health/Check";

    fn header(token: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    fn tokens(admin: Option<&str>, read: Option<&str>) -> Tokens {
        Tokens {
            admin: admin.map(Secret::new),
            read: read.map(Secret::new),
            replication: None,
            client: Vec::new(),
        }
    }

    fn code(result: Result<Caller, Status>) -> Code {
        result.err().map_or(Code::Ok, |s| s.code())
    }

    #[test]
    fn mutations_without_an_admin_token_configured_are_refused_with_a_hint() {
        let err = tokens(None, None)
            .authorize(MUTATION, Some(&header("x")))
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("READYD_ADMIN_TOKEN"));
    }

    #[test]
    fn the_admin_rules() {
        let t = tokens(Some("admin-secret"), None);
        assert_eq!(code(t.authorize(MUTATION, None)), Code::Unauthenticated);
        assert_eq!(
            code(t.authorize(MUTATION, Some(&header("wrong")))),
            Code::PermissionDenied
        );
        assert_eq!(
            t.authorize(MUTATION, Some(&header("admin-secret")))
                .unwrap(),
            Caller { is_admin: true }
        );
        let malformed = http::HeaderValue::from_static("Basic abc");
        assert_eq!(
            code(t.authorize(MUTATION, Some(&malformed))),
            Code::Unauthenticated
        );
    }

    #[test]
    fn a_read_token_guards_reads_but_never_probes() {
        let t = tokens(Some("admin-secret"), Some("read-secret"));
        assert_eq!(code(t.authorize(READ, None)), Code::Unauthenticated);
        assert_eq!(
            t.authorize(READ, Some(&header("read-secret"))).unwrap(),
            Caller { is_admin: false }
        );
        assert_eq!(
            t.authorize(READ, Some(&header("admin-secret"))).unwrap(),
            Caller { is_admin: true }
        );
        assert_eq!(
            code(t.authorize(MUTATION, Some(&header("read-secret")))),
            Code::PermissionDenied
        );
        assert_eq!(code(t.authorize(PROBE, None)), Code::Ok);
        assert_eq!(code(t.authorize(PROBE, Some(&header("junk")))), Code::Ok);
    }

    /// Every `/package.Service/Method` of every service in the compiled
    /// descriptor set (all of `proto/`).
    fn every_compiled_method() -> Vec<String> {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::api::pb::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        let mut methods = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        methods
    }

    #[test]
    fn every_method_of_every_service_has_an_explicit_class() {
        let methods = every_compiled_method();
        // Sanity: the set holds every service of proto/.
        assert!(methods.len() >= 40, "{methods:?}");
        let unlisted: Vec<&String> = methods
            .iter()
            .filter(|method| listed_access(method).is_none())
            .collect();
        assert!(
            unlisted.is_empty(),
            "methods without an entry in auth::METHODS (they would need the admin token): {unlisted:?}"
        );
        // And the table names no method that does not exist (a typo would
        // leave the real method admin-only and hide the mistake).
        for (path, _) in METHODS {
            assert!(
                methods.iter().any(|method| method == path) || path.contains(".reflection."),
                "{path} is in the table but in no service"
            );
        }
    }

    #[test]
    fn an_unknown_method_needs_the_admin_token() {
        let t = tokens(Some("admin-secret"), None);
        for path in [
            "/readyd.v1.FlagService/NewMethod",
            "/readyd.v1.Secret/Dump",
            "/grpc.health.v1.Health/Other",
            "/",
            "",
        ] {
            assert_eq!(access_for(path), Access::Admin, "{path}");
            assert_eq!(code(t.authorize(path, None)), Code::Unauthenticated);
            assert_eq!(
                code(t.authorize(path, Some(&header("admin-secret")))),
                Code::Ok
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The decision table, against a plain reference of DESIGN.md's rules.
        #[test]
        fn decisions_follow_the_rules(
            admin in proptest::option::of("[a-z]{1,4}"),
            read in proptest::option::of("[a-z]{1,4}"),
            presented in proptest::option::of("[a-z]{1,4}"),
            path in prop_oneof![Just(MUTATION), Just(READ), Just(PROBE)],
        ) {
            let t = tokens(admin.as_deref(), read.as_deref());
            let got = code(t.authorize(path, presented.as_deref().map(header).as_ref()));
            let is_admin = presented.is_some() && presented == admin;
            let is_reader = presented.is_some() && presented == read;
            let expected = if path == PROBE {
                Code::Ok
            } else if presented.is_some() && !is_admin && !is_reader {
                Code::PermissionDenied
            } else if path == MUTATION {
                if admin.is_none() { Code::PermissionDenied }
                else if presented.is_none() { Code::Unauthenticated }
                else if !is_admin { Code::PermissionDenied }
                else { Code::Ok }
            } else if read.is_some() && presented.is_none() {
                Code::Unauthenticated
            } else {
                Code::Ok
            };
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn client_tokens_evaluate_over_http_and_are_refused_everywhere_else() {
        let mut t = tokens(Some("admin-secret"), Some("read-secret"));
        t.client = vec![Secret::new("web-client"), Secret::new("ios-client")];
        for client in ["web-client", "ios-client"] {
            assert_eq!(
                authorize_evaluation(&t, Some(&header(client))).ok(),
                Some(Audience::Clients)
            );
            for path in [READ, MUTATION, "/readyd.v1.FlagService/EvaluateFlag"] {
                let refused = t.authorize(path, Some(&header(client))).unwrap_err();
                assert_eq!(refused.code(), Code::PermissionDenied, "{path}");
                assert!(refused.message().contains("client token"), "{path}");
            }
        }
        for everyone in ["read-secret", "admin-secret"] {
            assert_eq!(
                authorize_evaluation(&t, Some(&header(everyone))).ok(),
                Some(Audience::Everyone)
            );
        }
        assert_eq!(
            authorize_evaluation(&t, None).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            authorize_evaluation(&t, Some(&header("guess")))
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
    }

    proptest! {
        /// Whatever is presented, a client token never yields more than
        /// the client audience, and only the configured ones yield it.
        #[test]
        fn only_configured_client_tokens_are_clients(presented in "[a-z-]{1,20}") {
            let mut t = tokens(Some("admin-secret"), Some("read-secret"));
            t.client = vec![Secret::new("web-client")];
            let audience = authorize_evaluation(&t, Some(&header(&presented))).ok();
            let expected = match presented.as_str() {
                "web-client" => Some(Audience::Clients),
                "read-secret" | "admin-secret" => Some(Audience::Everyone),
                _ => None,
            };
            prop_assert_eq!(audience, expected);
        }
    }
}
