//! Bad input at volume against the real binary: 100,000 calls with random
//! and invalid fields, junk message bodies, broken frames, junk and
//! oversized metadata and every kind of token, spread over every method of
//! every service. The daemon must answer each call with a gRPC status (or
//! refuse connection-level junk, after which a fresh connection works),
//! never panic, keep serving, and change no row: every mutation sent is one
//! that must be refused.
//!
//! Calls go over raw HTTP/2 so that bodies and headers can be anything; each
//! call's input comes from its own seed (`SEED` and its index), so a failure
//! names the call that reproduces it.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use h2::client::SendRequest;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use prost::bytes::Bytes;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use readyd::api::pb::flagd::{evaluation_v1 as fv1, evaluation_v2 as fv2};
use readyd::api::pb::grpc_health_v1 as gh;
use readyd::api::pb::readyd::v1 as pb;
use support::daemon::{Daemon, DaemonCommand};
use support::rng::Rng;
use support::{ADMIN_TOKEN, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Calls in the loop.
const CALLS: u64 = 100_000;
/// Calls in flight at once.
const IN_FLIGHT: usize = 32;
/// HTTP/2 connections the calls share (connection-level junk gets its own).
const CONNECTIONS: usize = 8;
/// The seed of every call's input; change it to explore other inputs.
const SEED: u64 = 0x0bad_1dea_5eed_0001;
/// The read token the daemon is given.
const READ_TOKEN: &str = "test-read-token";
/// Longest wait for one call's answer: past it, the call counts as a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an open stream may stay silent before the call counts as a
/// quiet stream (dropping it then resets it: the client went away).
const QUIET_STREAM: Duration = Duration::from_secs(2);
/// gRPC's OK.
const OK: i32 = 0;

/// Keys the migrations seed, so some calls aim at rows that exist.
const SEEDED_FLAGS: &[&str] = &[
    "ai_insights",
    "predictive_analytics",
    "advanced_reporting",
    "dark_mode",
    "beta_features",
];
const SEEDED_CONFIGS: &[&str] = &[
    "app_name",
    "app_version",
    "maintenance_mode",
    "maintenance_message",
    "log_level",
    "max_upload_mb",
    "session_timeout_minutes",
];

/// Input picking on top of the shared generator.
impl Rng {
    /// The generator of call number `index`.
    fn for_call(index: u64) -> Rng {
        // splitmix64 of the seed and index, so neighbouring calls differ.
        let mut z = SEED.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn upto(&mut self, n: usize) -> usize {
        self.below(n as u64 + 1) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// `min` plus up to `max` random bytes.
    fn bytes_upto(&mut self, max: usize, min: usize) -> Vec<u8> {
        let len = min + self.upto(max);
        self.bytes(len)
    }
}

// ---------------------------------------------------------------------------
// Field values

/// Text of up to `max` characters drawn from every awkward class: control
/// characters and NUL, upper case, punctuation, combining marks, emoji, BiDi
/// overrides, a byte-order mark.
fn text(rng: &mut Rng, max: usize) -> String {
    const POOL: &[char] = &[
        'a',
        'z',
        '0',
        '9',
        '_',
        '.',
        '-',
        'A',
        'Z',
        ' ',
        '\0',
        '\u{1}',
        '\n',
        '\t',
        '\u{7f}',
        '/',
        '\\',
        '"',
        '\'',
        '$',
        '%',
        '{',
        '}',
        '*',
        'é',
        'ß',
        '\u{301}',
        '\u{202e}',
        '\u{feff}',
        '🚩',
        '中',
        '\u{10ffff}',
    ];
    let len = rng.upto(max);
    (0..len).map(|_| *rng.pick(POOL)).collect()
}

/// A string that is never a valid key, environment or deployment version.
fn invalid_name(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => String::new(),
        1 => "a".repeat(129 + rng.upto(4000)),
        2 => "has space".into(),
        3 => "a\0b".into(),
        4 => "flägg".into(),
        5 => "🚩".into(),
        6 => "\u{202e}evil".into(),
        7 => "../../etc/passwd".into(),
        8 => "-leading-dash".into(),
        9 => "line\nbreak".into(),
        10 if rng.percent(10) => "x".repeat(64 * 1024),
        10 => "x".repeat(129),
        // Random text behind a character no name may hold.
        _ => format!("${}", text(rng, 40)),
    }
}

/// A key: often invalid, sometimes a valid unknown one, sometimes a seeded one.
fn any_key(rng: &mut Rng, seeded: &[&str]) -> String {
    match rng.below(10) {
        0..=2 => format!("k{}", rng.below(1000)),
        3 | 4 => (*rng.pick(seeded)).to_owned(),
        _ => invalid_name(rng),
    }
}

/// A key that is refused, either as invalid or as valid and unknown.
fn refused_key(rng: &mut Rng) -> String {
    if rng.percent(30) {
        format!("unknown-key-{}", rng.below(1_000_000))
    } else {
        invalid_name(rng)
    }
}

/// An environment name of any sort.
fn environment(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => String::new(),
        1 => "*".into(),
        2 => "test".into(),
        3 => "production".into(),
        _ => invalid_name(rng),
    }
}

/// A deployment version that is never valid.
fn invalid_version(rng: &mut Rng) -> String {
    (*rng.pick(&[
        "",
        " 1.0",
        "1.0 beta",
        "v1\0",
        "ü1",
        "-1",
        "1/2",
        "🚩",
        "1.0\n",
        "$(reboot)",
    ]))
    .to_owned()
}

fn number(rng: &mut Rng) -> f64 {
    match rng.below(12) {
        0 => 0.0,
        1 => -0.0,
        2 => 1e308,
        3 => f64::MIN,
        4 => f64::MIN_POSITIVE,
        5 => f64::NAN,
        6 => f64::INFINITY,
        7 => f64::NEG_INFINITY,
        8 => 9_007_199_254_740_993.0,
        9 => 5e-324,
        10 => (rng.below(201) as f64) - 100.0,
        _ => f64::from_bits(rng.next()),
    }
}

fn i64_field(rng: &mut Rng) -> i64 {
    match rng.below(6) {
        0 => 0,
        1 => -1,
        2 => i64::MIN,
        3 => i64::MAX,
        4 => rng.below(100) as i64,
        _ => rng.next() as i64,
    }
}

fn u32_field(rng: &mut Rng) -> u32 {
    let random = rng.next() as u32;
    *rng.pick(&[0, 1, 100, 101, 500, 501, 1000, 1001, u32::MAX, random])
}

/// Any enum number, known or not.
fn enum_field(rng: &mut Rng) -> i32 {
    match rng.below(4) {
        0 => rng.below(7) as i32,
        1 => -1,
        2 => i32::MAX,
        _ => rng.next() as i32,
    }
}

fn timestamp(rng: &mut Rng) -> Option<Timestamp> {
    rng.percent(60).then(|| Timestamp {
        seconds: i64_field(rng),
        nanos: *rng.pick(&[0, -1, 999_999_999, 1_000_000_000, i32::MAX, i32::MIN]),
    })
}

fn page_token(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 => "-1".into(),
        2 => "0".into(),
        3 => i64::MAX.to_string(),
        4 => "AAAA////====".into(),
        5 => "x".repeat(10_000),
        // The key-order listings' form: a position, valid or damaged.
        6 => format!("k1.{}", text(rng, 12)),
        _ => text(rng, 40),
    }
}

fn strings(rng: &mut Rng) -> Vec<String> {
    if rng.below(1000) < 3 {
        // Over every list limit.
        return vec!["u".to_owned(); 10_001];
    }
    let len = rng.upto(4);
    (0..len)
        .map(|_| match rng.below(3) {
            0 => "x".repeat(300),
            _ => text(rng, 20),
        })
        .collect()
}

fn value(rng: &mut Rng, depth: u32) -> Value {
    let kinds = if depth > 3 { 5 } else { 7 };
    let kind = match rng.below(kinds) {
        0 => None,
        // NullValue has one member; other numbers are out of range.
        1 => Some(Kind::NullValue(rng.below(3) as i32)),
        2 => Some(Kind::NumberValue(number(rng))),
        3 => Some(Kind::StringValue(text(rng, 30))),
        4 => Some(Kind::BoolValue(rng.percent(50))),
        5 => Some(Kind::StructValue(structure(rng, depth + 1))),
        _ => Some(Kind::ListValue(ListValue {
            values: (0..rng.upto(4)).map(|_| value(rng, depth + 1)).collect(),
        })),
    };
    Value { kind }
}

/// Lists nested `levels` deep (past the decoder's recursion limit of 100
/// when `levels` is large).
fn deep_value(levels: usize) -> Value {
    let mut value = Value {
        kind: Some(Kind::BoolValue(true)),
    };
    for _ in 0..levels {
        value = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![value],
            })),
        };
    }
    value
}

fn optional_value(rng: &mut Rng) -> Option<Value> {
    match rng.below(100) {
        0..=9 => None,
        10 => Some(deep_value(40 + rng.upto(100))),
        11 => Some(Value {
            // Over the 64 KiB value limit.
            kind: Some(Kind::StringValue("v".repeat(70 * 1024))),
        }),
        _ => Some(value(rng, 0)),
    }
}

fn structure(rng: &mut Rng, depth: u32) -> Struct {
    const NAMES: &[&str] = &[
        "",
        "targetingKey",
        "role",
        "roles",
        "userId",
        "user_id",
        "email",
        "a\0b",
        "🚩",
    ];
    let len = rng.upto(4);
    let mut fields = BTreeMap::new();
    for _ in 0..len {
        let name = if rng.percent(70) {
            (*rng.pick(NAMES)).to_owned()
        } else {
            text(rng, 12)
        };
        fields.insert(name, value(rng, depth + 1));
    }
    Struct { fields }
}

fn optional_struct(rng: &mut Rng) -> Option<Struct> {
    rng.percent(80).then(|| structure(rng, 0))
}

fn context(rng: &mut Rng) -> Option<pb::EvaluationContext> {
    rng.percent(80).then(|| pb::EvaluationContext {
        user_id: if rng.percent(50) {
            format!("user-{}", rng.below(100))
        } else {
            text(rng, 40)
        },
        roles: strings(rng),
        attributes: optional_struct(rng),
    })
}

// ---------------------------------------------------------------------------
// Methods

/// Encodes a message for `method`. `refused` asks for a mutation that must
/// be refused whatever the token (an admin token may be on the call).
type Encode = fn(&mut Rng, bool) -> Vec<u8>;

/// One method of one service.
struct Method {
    /// The gRPC path.
    path: &'static str,
    /// Whether it changes rows when it succeeds.
    mutation: bool,
    /// Whether the answer is a stream.
    streaming: bool,
    /// A random request.
    encode: Encode,
}

const fn method(path: &'static str, mutation: bool, streaming: bool, encode: Encode) -> Method {
    Method {
        path,
        mutation,
        streaming,
        encode,
    }
}

fn encode_flagd_key(rng: &mut Rng) -> String {
    any_key(rng, SEEDED_FLAGS)
}

/// Every method in `proto/`.
const METHODS: &[Method] = &[
    // readyd.v1.FlagService
    method("/readyd.v1.FlagService/GetFlag", false, false, |rng, _| {
        pb::GetFlagRequest {
            key: any_key(rng, SEEDED_FLAGS),
        }
        .encode_to_vec()
    }),
    method(
        "/readyd.v1.FlagService/ListFlags",
        false,
        false,
        |rng, _| {
            pb::ListFlagsRequest {
                prefix: text(rng, 200),
                page_size: u32_field(rng),
                page_token: page_token(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.FlagService/UpsertFlag",
        true,
        false,
        |rng, refused| {
            pb::UpsertFlagRequest {
                targeting: None,
                client_visible: rng.percent(50).then(|| rng.percent(50)),
                permanent: None,
                key: if refused {
                    invalid_name(rng)
                } else {
                    any_key(rng, SEEDED_FLAGS)
                },
                description: text(rng, 1100),
                enabled: rng.percent(70).then(|| rng.percent(50)),
                value_type: enum_field(rng),
                on_value: optional_value(rng),
                off_value: optional_value(rng),
                environments: strings(rng),
                target_users: strings(rng),
                target_roles: strings(rng),
                rollout_percentage: rng.percent(70).then(|| u32_field(rng)),
                expected_version: rng.percent(50).then(|| i64_field(rng)),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.FlagService/DeleteFlag",
        true,
        false,
        |rng, refused| {
            pb::DeleteFlagRequest {
                key: if refused {
                    refused_key(rng)
                } else {
                    any_key(rng, SEEDED_FLAGS)
                },
                expected_version: rng.percent(50).then(|| i64_field(rng)),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.FlagService/EvaluateFlag",
        false,
        false,
        |rng, _| {
            pb::EvaluateFlagRequest {
                explain: false,
                key: any_key(rng, SEEDED_FLAGS),
                context: context(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.FlagService/EvaluateFlags",
        false,
        false,
        |rng, _| {
            pb::EvaluateFlagsRequest {
                keys: (0..rng.upto(5))
                    .map(|_| any_key(rng, SEEDED_FLAGS))
                    .collect(),
                context: context(rng),
                page_size: u32_field(rng),
                page_token: page_token(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.FlagService/WatchFlags",
        false,
        true,
        |rng, _| {
            pb::WatchFlagsRequest {
                keys: (0..rng.upto(3))
                    .map(|_| any_key(rng, SEEDED_FLAGS))
                    .collect(),
                since_version: rng.percent(50).then(|| i64_field(rng)),
                with_freshness: rng.percent(50),
            }
            .encode_to_vec()
        },
    ),
    // readyd.v1.ConfigService
    method(
        "/readyd.v1.ConfigService/GetConfig",
        false,
        false,
        |rng, _| {
            pb::GetConfigRequest {
                key: any_key(rng, SEEDED_CONFIGS),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.ConfigService/ListConfigs",
        false,
        false,
        |rng, _| {
            pb::ListConfigsRequest {
                prefix: text(rng, 200),
                environment: environment(rng),
                all_environments: rng.percent(50),
                page_size: u32_field(rng),
                page_token: page_token(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.ConfigService/SetConfig",
        true,
        false,
        |rng, refused| {
            pb::SetConfigRequest {
                key: if refused {
                    invalid_name(rng)
                } else {
                    any_key(rng, SEEDED_CONFIGS)
                },
                value: optional_value(rng),
                environment: environment(rng),
                description: rng.percent(80).then(|| text(rng, 1100)),
                is_sensitive: rng.percent(50).then(|| rng.percent(50)),
                expected_version: rng.percent(50).then(|| i64_field(rng)),
                make_public: rng.percent(10),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.ConfigService/DeleteConfig",
        true,
        false,
        |rng, refused| {
            pb::DeleteConfigRequest {
                key: if refused {
                    refused_key(rng)
                } else {
                    any_key(rng, SEEDED_CONFIGS)
                },
                environment: environment(rng),
                expected_version: rng.percent(50).then(|| i64_field(rng)),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.ConfigService/GetMaintenanceMode",
        false,
        false,
        |_, _| pb::GetMaintenanceModeRequest {}.encode_to_vec(),
    ),
    method(
        "/readyd.v1.ConfigService/SetMaintenanceMode",
        true,
        false,
        |rng, refused| {
            let message = if refused {
                if rng.percent(5) {
                    "m".repeat(65 * 1024)
                } else {
                    format!("{}\0{}", text(rng, 20), text(rng, 20))
                }
            } else {
                text(rng, 100)
            };
            pb::SetMaintenanceModeRequest {
                enabled: rng.percent(50),
                message,
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.ConfigService/ListConfigAudit",
        false,
        false,
        |rng, _| {
            pb::ListConfigAuditRequest {
                key: any_key(rng, SEEDED_CONFIGS),
                since: timestamp(rng),
                until: timestamp(rng),
                page_size: u32_field(rng),
                page_token: page_token(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.ConfigService/WatchConfigs",
        false,
        true,
        |rng, _| {
            pb::WatchConfigsRequest {
                keys: (0..rng.upto(3))
                    .map(|_| any_key(rng, SEEDED_CONFIGS))
                    .collect(),
                since_version: rng.percent(50).then(|| i64_field(rng)),
                with_freshness: rng.percent(50),
            }
            .encode_to_vec()
        },
    ),
    // readyd.v1.DeploymentService
    method(
        "/readyd.v1.DeploymentService/RecordDeployment",
        true,
        false,
        |rng, refused| {
            pb::RecordDeploymentRequest {
                version: if refused || rng.percent(50) {
                    invalid_version(rng)
                } else {
                    format!("1.{}.0", rng.below(10))
                },
                environment: environment(rng),
                deployed_by: text(rng, 140),
                commit_sha: if rng.percent(50) {
                    "abcdef1".into()
                } else {
                    text(rng, 50)
                },
                notes: if rng.percent(5) {
                    "n".repeat(5000)
                } else {
                    text(rng, 100)
                },
                status: enum_field(rng),
            }
            .encode_to_vec()
        },
    ),
    // With no deployment recorded (checked before the loop), no rollback
    // can succeed.
    method(
        "/readyd.v1.DeploymentService/RecordRollback",
        true,
        false,
        |rng, _| {
            pb::RecordRollbackRequest {
                environment: environment(rng),
                target_deployment_id: rng.percent(50).then(|| i64_field(rng)),
                reason: text(rng, 100),
                actor: text(rng, 140),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.DeploymentService/ListDeployments",
        false,
        false,
        |rng, _| {
            pb::ListDeploymentsRequest {
                environment: environment(rng),
                status: enum_field(rng),
                page_size: u32_field(rng),
                page_token: page_token(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.DeploymentService/GetCurrentDeployment",
        false,
        false,
        |rng, _| {
            pb::GetCurrentDeploymentRequest {
                environment: environment(rng),
            }
            .encode_to_vec()
        },
    ),
    // readyd.v1.HealthService
    method(
        "/readyd.v1.HealthService/GetHealth",
        false,
        false,
        |_, _| pb::GetHealthRequest {}.encode_to_vec(),
    ),
    method(
        "/readyd.v1.HealthService/WatchHealth",
        false,
        true,
        |_, _| pb::WatchHealthRequest {}.encode_to_vec(),
    ),
    method(
        "/readyd.v1.HealthService/ListHealthHistory",
        false,
        false,
        |rng, _| {
            pb::ListHealthHistoryRequest {
                since: timestamp(rng),
                until: timestamp(rng),
                limit: u32_field(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/readyd.v1.HealthService/CheckDatabase",
        false,
        false,
        |_, _| pb::CheckDatabaseRequest {}.encode_to_vec(),
    ),
    // grpc.health.v1.Health
    method("/grpc.health.v1.Health/Check", false, false, |rng, _| {
        gh::HealthCheckRequest {
            service: probe_name(rng),
        }
        .encode_to_vec()
    }),
    method("/grpc.health.v1.Health/List", false, false, |_, _| {
        gh::HealthListRequest {}.encode_to_vec()
    }),
    method("/grpc.health.v1.Health/Watch", false, true, |rng, _| {
        gh::HealthCheckRequest {
            service: probe_name(rng),
        }
        .encode_to_vec()
    }),
    // flagd.evaluation.v1.Service
    method(
        "/flagd.evaluation.v1.Service/ResolveAll",
        false,
        false,
        |rng, _| {
            fv1::ResolveAllRequest {
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v1.Service/ResolveBoolean",
        false,
        false,
        |rng, _| {
            fv1::ResolveBooleanRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v1.Service/ResolveString",
        false,
        false,
        |rng, _| {
            fv1::ResolveStringRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v1.Service/ResolveFloat",
        false,
        false,
        |rng, _| {
            fv1::ResolveFloatRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v1.Service/ResolveInt",
        false,
        false,
        |rng, _| {
            fv1::ResolveIntRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v1.Service/ResolveObject",
        false,
        false,
        |rng, _| {
            fv1::ResolveObjectRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v1.Service/EventStream",
        false,
        true,
        |_, _| fv1::EventStreamRequest {}.encode_to_vec(),
    ),
    // flagd.evaluation.v2.Service
    method(
        "/flagd.evaluation.v2.Service/ResolveAll",
        false,
        false,
        |rng, _| {
            fv2::ResolveAllRequest {
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v2.Service/ResolveBoolean",
        false,
        false,
        |rng, _| {
            fv2::ResolveBooleanRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v2.Service/ResolveString",
        false,
        false,
        |rng, _| {
            fv2::ResolveStringRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v2.Service/ResolveFloat",
        false,
        false,
        |rng, _| {
            fv2::ResolveFloatRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v2.Service/ResolveInt",
        false,
        false,
        |rng, _| {
            fv2::ResolveIntRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v2.Service/ResolveObject",
        false,
        false,
        |rng, _| {
            fv2::ResolveObjectRequest {
                flag_key: encode_flagd_key(rng),
                context: optional_struct(rng),
            }
            .encode_to_vec()
        },
    ),
    method(
        "/flagd.evaluation.v2.Service/EventStream",
        false,
        true,
        |_, _| fv2::EventStreamRequest {}.encode_to_vec(),
    ),
];

/// Paths no service has.
const UNKNOWN_PATHS: &[&str] = &[
    "/readyd.v1.FlagService/Nope",
    "/readyd.v9.FlagService/GetFlag",
    "/",
    "/junk",
    "/readyd.v1.FlagService/",
    "//",
    "/readyd.v1.FlagService/GetFlag/extra",
];

fn probe_name(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => (*rng.pick(&["", "liveness", "startup", "readiness", "dep.database"])).to_owned(),
        _ => text(rng, 300),
    }
}

// ---------------------------------------------------------------------------
// Calls

/// What the body of a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum BodyKind {
    /// One well-formed frame holding a random request.
    Typed,
    /// One well-formed frame holding random bytes.
    JunkMessage,
    /// A string field holding bytes that are not UTF-8.
    NotUtf8,
    /// A length prefix larger than the body.
    Truncated,
    /// A length prefix over the message limit.
    HugeLength,
    /// The compressed flag without a grpc-encoding.
    Compressed,
    /// A flag byte that is neither 0 nor 1.
    BadFlag,
    /// Fewer than the five bytes of a frame header.
    ShortHeader,
    /// No message at all.
    Empty,
    /// An empty message (every field at its default).
    ZeroLength,
    /// Two messages for a method that takes one.
    TwoMessages,
    /// Random bytes, no frame structure.
    RandomBytes,
}

/// What the headers of a call carry besides the usual.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MetadataKind {
    Plain,
    JunkAuthorization,
    JunkActor,
    JunkTimeout,
    JunkEncoding,
    JunkBinary,
    ManyHeaders,
    /// Past the server's header list limit: needs a connection of its own.
    HugeHeader,
    /// Thousands of headers: needs a connection of its own.
    ThousandsOfHeaders,
}

/// One call to make.
struct Call {
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    streaming: bool,
    /// Headers the server may refuse at the connection level.
    own_connection: bool,
    body_kind: BodyKind,
    metadata_kind: MetadataKind,
}

/// How a call ended.
#[derive(Debug)]
enum Outcome {
    /// A gRPC status (from trailers, or trailers-only).
    Status(i32),
    /// A stream that sent its first message.
    Streamed,
    /// A stream that was accepted and had nothing to send yet (a resumed
    /// stream with no change after its `since_version`).
    StreamQuiet,
    /// Refused below gRPC (HTTP status, reset, closed connection): allowed
    /// only for connection-level junk.
    Refused(String),
}

fn header(name: &str, value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_bytes(value).ok()?,
    ))
}

/// Authorization header values, and whether the value is the admin token
/// (any spelling the server accepts as admin counts, to be safe).
fn authorization(rng: &mut Rng) -> Vec<Vec<u8>> {
    let one = |value: String| vec![value.into_bytes()];
    match rng.below(16) {
        0..=4 => one(format!("Bearer {ADMIN_TOKEN}")),
        5 => one(format!("bearer  {ADMIN_TOKEN} ")),
        6 | 7 => one(format!("Bearer {READ_TOKEN}")),
        8 => one("Bearer".into()),
        9 => one("Bearer ".into()),
        10 => one("Basic dXNlcjpwYXNz".into()),
        11 => one(format!("Bearer {ADMIN_TOKEN}x")),
        12 => one(format!("BEARER {ADMIN_TOKEN}")),
        13 => one(format!("Bearer {}", "t".repeat(8192))),
        // Bytes past ASCII (allowed in a header value, not in a token).
        14 => vec![b"Bearer \xff\xfe\x80token".to_vec()],
        // Two values: the server reads one of them.
        _ => vec![
            b"Bearer wrong".to_vec(),
            format!("Bearer {ADMIN_TOKEN}").into_bytes(),
        ],
    }
}

/// A length-prefixed gRPC frame.
fn frame(flag: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flag);
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn message_frame(payload: &[u8]) -> Vec<u8> {
    frame(0, payload.len() as u32, payload)
}

/// Builds call number `index`.
fn build_call(index: u64) -> Call {
    let mut rng = Rng::for_call(index);
    let rng = &mut rng;

    let (path, mutation, streaming, encode): (String, bool, bool, Option<Encode>) =
        if rng.percent(1) {
            ((*rng.pick(UNKNOWN_PATHS)).to_owned(), false, false, None)
        } else {
            let m = rng.pick(METHODS);
            (m.path.to_owned(), m.mutation, m.streaming, Some(m.encode))
        };

    let metadata_kind = match rng.below(100) {
        0..=39 => MetadataKind::Plain,
        40..=69 => MetadataKind::JunkAuthorization,
        70..=77 => MetadataKind::JunkActor,
        78..=82 => MetadataKind::JunkTimeout,
        83..=86 => MetadataKind::JunkEncoding,
        87..=91 => MetadataKind::JunkBinary,
        92..=97 => MetadataKind::ManyHeaders,
        98 => MetadataKind::HugeHeader,
        _ => MetadataKind::ThousandsOfHeaders,
    };
    // Other calls carry the admin token half the time and the read token a
    // quarter, so most reach validation instead of stopping at the token
    // check (reads need a token: the daemon has a read token set).
    let auth = match metadata_kind {
        MetadataKind::JunkAuthorization => authorization(rng),
        _ => match rng.below(4) {
            0 | 1 => vec![format!("Bearer {ADMIN_TOKEN}").into_bytes()],
            2 => vec![format!("Bearer {READ_TOKEN}").into_bytes()],
            _ => Vec::new(),
        },
    };
    let admin_possible = auth.iter().any(|value| {
        value
            .windows(ADMIN_TOKEN.len())
            .any(|w| w == ADMIN_TOKEN.as_bytes())
    });
    // A mutation that might be authorised must be one that is refused.
    let refused = mutation && admin_possible;

    let mut headers: Vec<(HeaderName, HeaderValue)> = auth
        .iter()
        .filter_map(|value| header("authorization", value))
        .collect();
    let mut own_connection = false;
    match metadata_kind {
        MetadataKind::Plain | MetadataKind::JunkAuthorization => {}
        MetadataKind::JunkActor => {
            let actor: Vec<u8> = match rng.below(5) {
                0 => Vec::new(),
                1 => b"   ".to_vec(),
                2 => "a".repeat(200).into_bytes(),
                3 => b"\xff\xfe actor".to_vec(),
                _ => b"tab\there".to_vec(),
            };
            headers.extend(header("x-readyd-actor", &actor));
        }
        MetadataKind::JunkTimeout => {
            let timeout = *rng.pick(&["1n", "0S", "-1S", "99999999H", "abc", "1", "", "5m5m"]);
            headers.extend(header("grpc-timeout", timeout.as_bytes()));
        }
        MetadataKind::JunkEncoding => {
            let encoding = *rng.pick(&["gzip", "br", "zstd", "identity", "x-junk", ""]);
            headers.extend(header("grpc-encoding", encoding.as_bytes()));
            headers.extend(header("grpc-accept-encoding", b"gzip, x-junk"));
        }
        MetadataKind::JunkBinary => {
            let value = rng.bytes_upto(64, 0);
            let printable: Vec<u8> = value.iter().map(|b| b'!' + b % 90).collect();
            headers.extend(header("x-junk-bin", &printable));
            headers.extend(header("grpc-status", b"0"));
            headers.extend(header("grpc-message", b"%zz%"));
        }
        MetadataKind::ManyHeaders => {
            for i in 0..100 {
                headers.extend(header(&format!("x-many-{i}"), b"value"));
            }
        }
        MetadataKind::HugeHeader => {
            own_connection = true;
            let size = *rng.pick(&[17 * 1024, 64 * 1024, 256 * 1024]);
            headers.extend(header("x-huge", &vec![b'h'; size]));
        }
        MetadataKind::ThousandsOfHeaders => {
            own_connection = true;
            for i in 0..1000 {
                headers.extend(header(&format!("x-header-{i}"), b"0123456789"));
            }
        }
    }

    let body_kind = match rng.below(100) {
        0..=59 => BodyKind::Typed,
        60..=71 => BodyKind::JunkMessage,
        72..=74 => BodyKind::NotUtf8,
        75..=77 => BodyKind::Truncated,
        78..=80 => BodyKind::HugeLength,
        81..=83 => BodyKind::Compressed,
        84..=85 => BodyKind::BadFlag,
        86..=87 => BodyKind::ShortHeader,
        88..=89 => BodyKind::Empty,
        90..=92 => BodyKind::ZeroLength,
        93..=95 => BodyKind::TwoMessages,
        _ => BodyKind::RandomBytes,
    };
    // Bodies that could decode into a message that passes validation (an
    // empty SetMaintenanceModeRequest is valid) are sent as a typed, refused
    // request instead when the call may be authorised.
    let body_kind = match body_kind {
        BodyKind::ZeroLength | BodyKind::TwoMessages if refused => BodyKind::Typed,
        kind => kind,
    };
    let typed = |rng: &mut Rng| match encode {
        Some(encode) => encode(rng, refused),
        None => rng.bytes(20),
    };
    let body = match body_kind {
        BodyKind::Typed => message_frame(&typed(rng)),
        BodyKind::JunkMessage => {
            let mut junk = rng.bytes_upto(2048, 1);
            if refused {
                // Field number 0 or wire types 6 and 7 never decode, so the
                // junk cannot turn into a valid request.
                junk[0] = *rng.pick(&[0x00, 0x06, 0x07, 0x0e, 0x0f]);
            }
            message_frame(&junk)
        }
        BodyKind::NotUtf8 => {
            // Field 1, length 4, four bytes that are not UTF-8.
            message_frame(&[0x0a, 4, 0xff, 0xfe, 0xc0, 0x80])
        }
        BodyKind::Truncated => {
            let payload = typed(rng);
            let declared = payload.len() as u32 + 1 + rng.below(1000) as u32;
            frame(0, declared, &payload)
        }
        BodyKind::HugeLength => {
            let declared = *rng.pick(&[u32::MAX, 4 * 1024 * 1024 + 1, 1 << 31]);
            frame(0, declared, &rng.bytes_upto(64, 0))
        }
        BodyKind::Compressed => {
            let payload = typed(rng);
            frame(1, payload.len() as u32, &payload)
        }
        BodyKind::BadFlag => {
            let payload = typed(rng);
            frame(2 + rng.below(254) as u8, payload.len() as u32, &payload)
        }
        BodyKind::ShortHeader => {
            let len = 1 + rng.upto(3);
            let mut bytes = rng.bytes(len);
            bytes[0] = 0;
            bytes
        }
        BodyKind::Empty => Vec::new(),
        BodyKind::ZeroLength => frame(0, 0, &[]),
        BodyKind::TwoMessages => {
            let mut bytes = message_frame(&typed(rng));
            bytes.extend(message_frame(&typed(rng)));
            bytes
        }
        BodyKind::RandomBytes => {
            let mut bytes = rng.bytes_upto(500, 5);
            if refused {
                // Never the "uncompressed message" flag.
                bytes[0] = 1 + (bytes[0] % 255);
            }
            bytes
        }
    };
    Call {
        path,
        headers,
        body: Bytes::from(body),
        streaming,
        own_connection,
        body_kind,
        metadata_kind,
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Bytes>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    tcp.set_nodelay(true)
        .map_err(|err| format!("nodelay: {err}"))?;
    let (sender, connection) = h2::client::handshake(tcp)
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Makes `call` on `sender`; `Err` is a transport failure.
async fn make_call(
    sender: &SendRequest<Bytes>,
    addr: SocketAddr,
    call: &Call,
) -> Result<Outcome, String> {
    let mut sender = sender
        .clone()
        .ready()
        .await
        .map_err(|err| format!("ready: {err}"))?;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{}", call.path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|err| format!("request: {err}"))?;
    for (name, value) in &call.headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let (response, mut body_tx) = sender
        .send_request(request, false)
        .map_err(|err| format!("send headers: {err}"))?;
    // The server may answer (and reset the stream) before reading the
    // body; its answer is what counts.
    let _ = body_tx.send_data(call.body.clone(), true);
    let response = response.await.map_err(|err| format!("response: {err}"))?;
    let (parts, mut body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        return Ok(Outcome::Refused(format!("HTTP {}", parts.status)));
    }
    if let Some(code) = grpc_status(&parts.headers) {
        return Ok(Outcome::Status(code));
    }
    if call.streaming {
        // Headers without a status: the stream is open.
        return match tokio::time::timeout(QUIET_STREAM, body.data()).await {
            Err(_) => Ok(Outcome::StreamQuiet),
            Ok(Some(Ok(_))) => Ok(Outcome::Streamed),
            Ok(Some(Err(err))) => Err(format!("stream: {err}")),
            Ok(None) => match body.trailers().await {
                Ok(trailers) => trailers
                    .as_ref()
                    .and_then(grpc_status)
                    .map(Outcome::Status)
                    .ok_or_else(|| "a stream ended without grpc-status".to_owned()),
                Err(err) => Err(format!("trailers: {err}")),
            },
        };
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|err| format!("body: {err}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|err| format!("trailers: {err}"))?;
    match trailers.as_ref().and_then(grpc_status) {
        Some(code) => Ok(Outcome::Status(code)),
        None => Err("no grpc-status in the trailers".into()),
    }
}

/// A grpc.health.v1 Check of `""` on a new connection: the daemon still
/// accepts and serves.
async fn fresh_connection_serves(addr: SocketAddr) -> Result<(), String> {
    let sender = connect(addr).await?;
    let call = Call {
        path: "/grpc.health.v1.Health/Check".into(),
        headers: Vec::new(),
        body: Bytes::from(message_frame(
            &gh::HealthCheckRequest::default().encode_to_vec(),
        )),
        streaming: false,
        own_connection: true,
        body_kind: BodyKind::Typed,
        metadata_kind: MetadataKind::Plain,
    };
    match tokio::time::timeout(CALL_TIMEOUT, make_call(&sender, addr, &call)).await {
        Ok(Ok(Outcome::Status(OK))) => Ok(()),
        other => Err(format!("a fresh connection's health check: {other:?}")),
    }
}

/// Tallies, and the first failures with the call index that reproduces them.
#[derive(Default)]
struct Tally {
    by_code: BTreeMap<String, u64>,
    by_body: BTreeMap<String, u64>,
    by_metadata: BTreeMap<String, u64>,
    refused_connection_level: u64,
    calls: u64,
    failures: Vec<String>,
    failure_count: u64,
}

impl Tally {
    fn fail(&mut self, message: String) {
        self.failure_count += 1;
        if self.failures.len() < 20 {
            self.failures.push(message);
        }
    }
}

/// One of the in-flight callers: takes the next call index until none are
/// left, makes the call, checks how it ended.
async fn caller(
    addr: SocketAddr,
    mut sender: SendRequest<Bytes>,
    next_index: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
) {
    loop {
        let index = next_index.fetch_add(1, Ordering::Relaxed);
        if index >= CALLS {
            return;
        }
        let call = build_call(index);
        let own;
        let on = if call.own_connection {
            own = match connect(addr).await {
                Ok(own) => own,
                Err(err) => {
                    tally
                        .lock()
                        .expect("tally")
                        .fail(format!("call {index}: {err}"));
                    continue;
                }
            };
            &own
        } else {
            &sender
        };
        let outcome = tokio::time::timeout(CALL_TIMEOUT, make_call(on, addr, &call)).await;
        let after_refusal = match &outcome {
            Ok(Err(_)) | Ok(Ok(Outcome::Refused(_))) if call.own_connection => {
                Some(fresh_connection_serves(addr).await)
            }
            _ => None,
        };
        // The lock is held in this block only, never across an await.
        let reconnect = {
            let mut reconnect = false;
            let mut tally = tally.lock().expect("tally");
            tally.calls += 1;
            *tally
                .by_body
                .entry(format!("{:?}", call.body_kind))
                .or_default() += 1;
            *tally
                .by_metadata
                .entry(format!("{:?}", call.metadata_kind))
                .or_default() += 1;
            let describe = || {
                format!(
                    "call {index} ({} body {:?}, metadata {:?})",
                    call.path, call.body_kind, call.metadata_kind
                )
            };
            match outcome {
                Ok(Ok(Outcome::Status(code))) => {
                    *tally.by_code.entry(code_name(code)).or_default() += 1;
                }
                Ok(Ok(Outcome::Streamed)) => {
                    *tally.by_code.entry("OK (stream)".into()).or_default() += 1;
                }
                Ok(Ok(Outcome::StreamQuiet)) => {
                    *tally.by_code.entry("OK (quiet stream)".into()).or_default() += 1;
                }
                Ok(Ok(Outcome::Refused(why))) | Ok(Err(why)) if call.own_connection => {
                    tally.refused_connection_level += 1;
                    *tally.by_code.entry("refused".into()).or_default() += 1;
                    if let Some(Err(err)) = after_refusal {
                        tally.fail(format!("{} refused ({why}), then {err}", describe()));
                    }
                }
                Ok(Ok(Outcome::Refused(why))) => {
                    tally.fail(format!("{}: not a gRPC answer: {why}", describe()));
                }
                Ok(Err(err)) => {
                    tally.fail(format!("{}: transport error: {err}", describe()));
                    reconnect = true;
                }
                Err(_) => tally.fail(format!("{}: no answer within {CALL_TIMEOUT:?}", describe())),
            }
            reconnect
        };
        if reconnect {
            // Carry on over a new connection; the failure is recorded.
            if let Ok(new) = connect(addr).await {
                sender = new;
            }
        }
    }
}

/// User plus system CPU time of a process, from its `stat` file.
fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the file, in clock ticks of
    // 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn code_name(code: i32) -> String {
    format!("{:?}", tonic::Code::from(code))
}

/// Junk below HTTP/2 on connections of their own: the daemon closes them
/// and keeps serving.
async fn connection_junk(addr: SocketAddr) -> Vec<String> {
    let mut rng = Rng::for_call(u64::MAX);
    let mut failures = Vec::new();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut payloads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: readyd\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        preface.clone(),
        // A frame header announcing 16 MiB of SETTINGS.
        [
            preface.clone(),
            b"\xff\xff\xff\x04\x00\x00\x00\x00\x00".to_vec(),
        ]
        .concat(),
        // HEADERS on stream 0.
        [
            preface.clone(),
            b"\x00\x00\x01\x01\x05\x00\x00\x00\x00\x82".to_vec(),
        ]
        .concat(),
    ];
    for _ in 0..40 {
        payloads.push(rng.bytes_upto(4096, 1));
        payloads.push([preface.clone(), rng.bytes_upto(512, 1)].concat());
    }
    for payload in &payloads {
        let result = tokio::time::timeout(Duration::from_secs(15), async {
            let mut tcp = TcpStream::connect(addr).await?;
            let _ = tcp.write_all(payload).await;
            let _ = tcp.shutdown().await;
            let mut sink = Vec::new();
            let _ = tcp.read_to_end(&mut sink).await;
            Ok::<(), std::io::Error>(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failures.push(format!("junk connection: {err}")),
            Err(_) => failures.push(format!(
                "the daemon kept a junk connection ({} bytes) open for 15 s",
                payload.len()
            )),
        }
    }
    if let Err(err) = fresh_connection_serves(addr).await {
        failures.push(format!("after connection junk: {err}"));
    }
    failures
}

/// Every row of the tables that refused mutations must leave alone, as
/// JSON text in a stable order.
async fn rows(db: &TestDb) -> BTreeMap<&'static str, Vec<String>> {
    let mut all = BTreeMap::new();
    for table in [
        "feature_flags",
        "app_config",
        "config_audit",
        "deployment_history",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT to_jsonb(t)::text FROM {table} t ORDER BY 1"
        )))
        .fetch_all(&db.pool)
        .await
        .expect("rows");
        all.insert(table, rows);
    }
    all
}

async fn start(db: &TestDb) -> Daemon {
    DaemonCommand::serve()
        .env("DATABASE_URL", &db.url)
        .env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("READYD_READ_TOKEN", READ_TOKEN)
        // No span per call (in a debug build it costs about as much as the
        // call); the per-call warnings and every other line stay.
        .env("READYD_LOG", "info,readyd::api::observe=warn")
        .args(["--environment", "test", "--shutdown-timeout", "5s"])
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_bad_calls_get_statuses_and_change_nothing() {
    let db = TestDb::new().await;
    let daemon = start(&db).await;
    let before = rows(&db).await;
    assert!(
        before["deployment_history"].is_empty(),
        "no deployment recorded, so no rollback can succeed"
    );

    let started = Instant::now();
    let next_index = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(connect(daemon.addr).await.expect("connect"));
    }
    let mut callers = tokio::task::JoinSet::new();
    for i in 0..IN_FLIGHT {
        callers.spawn(caller(
            daemon.addr,
            connections[i % CONNECTIONS].clone(),
            Arc::clone(&next_index),
            Arc::clone(&tally),
        ));
    }
    let junk_failures = connection_junk(daemon.addr).await;
    while let Some(joined) = callers.join_next().await {
        joined.expect("caller task");
    }
    let elapsed = started.elapsed();
    drop(connections);

    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    assert_eq!(tally.calls, CALLS, "every call was made");
    println!(
        "{CALLS} calls in {elapsed:.1?} ({:.0}/s), {IN_FLIGHT} in flight \
         over {CONNECTIONS} connections, seed {SEED:#x}",
        CALLS as f64 / elapsed.as_secs_f64()
    );
    println!(
        "CPU: daemon {:.1} s, test process {:.1} s",
        cpu_seconds(&format!("/proc/{}/stat", daemon.pid())),
        cpu_seconds("/proc/self/stat")
    );
    println!("answers: {:?}", tally.by_code);
    println!("bodies: {:?}", tally.by_body);
    println!("metadata: {:?}", tally.by_metadata);
    println!(
        "refused at the connection level: {}",
        tally.refused_connection_level
    );

    // Still alive and serving valid calls.
    let channel = daemon.channel().await;
    let evaluated =
        readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient::new(channel.clone())
            .evaluate_flag(support::admin(pb::EvaluateFlagRequest {
                explain: false,
                key: "dark_mode".into(),
                context: None,
            }))
            .await
            .expect("EvaluateFlag after the loop")
            .into_inner();
    assert_eq!(evaluated.key, "dark_mode");
    let health = gh::health_client::HealthClient::new(channel)
        .check(gh::HealthCheckRequest::default())
        .await
        .expect("grpc health Check after the loop")
        .into_inner();
    assert_eq!(
        health.status(),
        gh::health_check_response::ServingStatus::Serving
    );

    let after = rows(&db).await;
    let lines = daemon.stop().await;
    let panics: Vec<&String> = lines.iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "the daemon panicked:\n{panics:#?}");
    assert!(
        tally.failures.is_empty() && junk_failures.is_empty(),
        "{} calls failed; first ones:\n{}\nconnection junk: {junk_failures:#?}",
        tally.failure_count,
        tally.failures.join("\n")
    );
    for (table, rows_before) in &before {
        assert_eq!(
            rows_before, &after[table],
            "{table} changed although every mutation sent must be refused"
        );
    }
}
