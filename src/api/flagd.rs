//! The flagd evaluation protocol (`flagd.evaluation.v1` and `.v2`), so
//! OpenFeature's flagd providers evaluate readyd's flags unchanged.
//!
//! One core ([`FlagdCore`]) maps the OpenFeature context to readyd's,
//! evaluates from the in-memory snapshot exactly as `EvaluateFlag` does,
//! checks the type asked for, and feeds EventStream from the same change
//! broadcast as WatchFlags. The two versions differ only in their messages:
//! v2 leaves value and variant unset for a disabled flag, as flagd does.
//!
//! Errors as flagd's clients expect them: NOT_FOUND (FLAG_NOT_FOUND),
//! INVALID_ARGUMENT (TYPE_MISMATCH, a bad context), INTERNAL for anything
//! else, never UNAVAILABLE or UNKNOWN, which clients retry until their
//! deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use serde_json::Map;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::api::auth::Audience;
use crate::api::convert::{from_pb_value, to_pb_struct};
use crate::api::json_context::JsonField;
use crate::api::pb::flagd::{evaluation_v1 as v1, evaluation_v2 as v2};
use crate::api::streams::StreamGate;
use crate::flags::{CompiledFlag, EvaluationContext, Reason, ValueType};
use crate::state::{Event, Snapshot, State};
use crate::telemetry::{EvaluationCounters, Tally};
use crate::usage::counters::{RepeatedAnswer, UsageMarks};

/// How often EventStream sends `keep_alive`.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// The type a Resolve call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// ResolveBoolean.
    Bool,
    /// ResolveString.
    String,
    /// ResolveFloat: any number.
    Float,
    /// ResolveInt: a whole number.
    Int,
    /// ResolveObject.
    Object,
    /// Any type (OFREP, whose answer carries the value's own type).
    Any,
}

/// One flag's answer in flagd's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The value (the flag's on or off value).
    pub value: serde_json::Value,
    /// The variant: `on`, `off` or one of the flag's named ones.
    pub variant: String,
    /// The reason's name, as flagd spells it.
    pub reason: &'static str,
    /// Whether the flag is disabled (v2 then leaves value and variant unset).
    pub disabled: bool,
    /// The evaluated flag's version: with the variant and the reason, it
    /// says what the answer is (a value is its flag version's variant).
    /// The answers' metadata (`{"flag_version": …, "provider": "readyd"}`)
    /// is made from it only when an answer is written.
    pub flag_version: i64,
}

/// [`Resolved`] borrowed from the flag evaluated, to be written out
/// without copies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResolvedRef<'a> {
    /// The value (the flag's on or off value).
    pub value: &'a serde_json::Value,
    /// The variant: `on`, `off` or one of the flag's named ones.
    pub variant: &'a str,
    /// The reason's name, as flagd spells it.
    pub reason: &'static str,
    /// Whether the flag is disabled.
    pub disabled: bool,
    /// The evaluated flag's version.
    pub flag_version: i64,
}

impl ResolvedRef<'_> {
    /// The answer, owned.
    pub fn into_owned(self) -> Resolved {
        Resolved {
            value: self.value.clone(),
            variant: self.variant.to_owned(),
            reason: self.reason,
            disabled: self.disabled,
            flag_version: self.flag_version,
        }
    }
}

impl Resolved {
    /// The answer, borrowed.
    pub fn view(&self) -> ResolvedRef<'_> {
        ResolvedRef {
            value: &self.value,
            variant: &self.variant,
            reason: self.reason,
            disabled: self.disabled,
            flag_version: self.flag_version,
        }
    }
}

fn string_value(text: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.to_owned())),
    }
}

fn metadata(version: i64) -> Struct {
    Struct {
        fields: BTreeMap::from([
            (
                "flag_version".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(version as f64)),
                },
            ),
            ("provider".to_owned(), string_value("readyd")),
        ]),
    }
}

/// The OpenFeature evaluation context as readyd's: `targetingKey` is the
/// user id, `roles` (a list of strings) or `role` (a string) the roles, every
/// other field an attribute.
pub fn context_of(context: Option<Struct>) -> Result<EvaluationContext, Status> {
    context.map_or_else(
        || Ok(EvaluationContext::default()),
        |context| context_from(context.fields),
    )
}

/// [`context_of`] for a context sent as JSON (OFREP): the same fields, the
/// same errors, the same values (numbers as they would read through
/// `google.protobuf.Struct`), without building the protobuf message.
pub fn context_of_json(
    context: Map<String, serde_json::Value>,
) -> Result<EvaluationContext, Status> {
    context_from(context)
}

/// [`context_of_json`] for a context read straight from a body's bytes
/// (see [`crate::api::json_context`]): the fields as sent, a field sent
/// twice counting once, with its last value, as in a JSON object.
pub fn context_of_json_fields(
    fields: Vec<(std::borrow::Cow<'_, str>, JsonField<'_>)>,
) -> Result<EvaluationContext, Status> {
    context_from(crate::api::json_context::fields_in_order(fields))
}

/// A context field's value, as far as the fields readyd reads need to know.
enum Shape<V> {
    String(String),
    Null,
    List(Vec<V>),
    Other,
}

/// A value of a context, in protobuf (`google.protobuf.Value`) or JSON.
trait ContextValue: Sized {
    /// What it is: a string, null, a list, or something else.
    fn shape(self) -> Shape<Self>;
    /// It as an attribute's value.
    fn into_attribute(self) -> Result<serde_json::Value, String>;
}

impl ContextValue for Value {
    fn shape(self) -> Shape<Self> {
        match self.kind {
            Some(Kind::StringValue(text)) => Shape::String(text),
            Some(Kind::NullValue(_)) | None => Shape::Null,
            Some(Kind::ListValue(list)) => Shape::List(list.values),
            Some(_) => Shape::Other,
        }
    }

    fn into_attribute(self) -> Result<serde_json::Value, String> {
        from_pb_value(self)
    }
}

impl ContextValue for JsonField<'_> {
    fn shape(self) -> Shape<Self> {
        match self {
            JsonField::String(text) => Shape::String(text.into_owned()),
            JsonField::Null => Shape::Null,
            JsonField::List(list) => Shape::List(list),
            _ => Shape::Other,
        }
    }

    fn into_attribute(self) -> Result<serde_json::Value, String> {
        crate::api::convert::through_pb(self.into_value())
    }
}

impl ContextValue for serde_json::Value {
    fn shape(self) -> Shape<Self> {
        match self {
            serde_json::Value::String(text) => Shape::String(text),
            serde_json::Value::Null => Shape::Null,
            serde_json::Value::Array(list) => Shape::List(list),
            _ => Shape::Other,
        }
    }

    fn into_attribute(self) -> Result<serde_json::Value, String> {
        crate::api::convert::through_pb(self)
    }
}

/// The context of `fields`, whatever their encoding: one set of rules and
/// errors for every protocol.
fn context_from<K, V>(fields: impl IntoIterator<Item = (K, V)>) -> Result<EvaluationContext, Status>
where
    K: AsRef<str> + Into<String>,
    V: ContextValue,
{
    let mut user_id = None;
    let mut roles = Vec::new();
    let mut attributes = Map::new();
    for (name, value) in fields {
        match name.as_ref() {
            "targetingKey" => match value.shape() {
                Shape::String(id) => user_id = Some(id),
                Shape::Null => {}
                _ => {
                    return Err(Status::invalid_argument(
                        "context.targetingKey: must be a string",
                    ));
                }
            },
            "role" => match value.shape() {
                Shape::String(role) => roles.push(role),
                _ => return Err(Status::invalid_argument("context.role: must be a string")),
            },
            "roles" => {
                let not_strings =
                    || Status::invalid_argument("context.roles: must be a list of strings");
                let Shape::List(list) = value.shape() else {
                    return Err(not_strings());
                };
                for item in list {
                    let Shape::String(role) = item.shape() else {
                        return Err(not_strings());
                    };
                    roles.push(role);
                }
            }
            _ => {
                let value = value.into_attribute().map_err(|message| {
                    Status::invalid_argument(format!(
                        "context.{}: {message}",
                        crate::echo::truncate(name.as_ref())
                    ))
                })?;
                attributes.insert(name.into(), value);
            }
        }
    }
    Ok(EvaluationContext {
        user_id: user_id.filter(|id| !id.is_empty()),
        roles,
        attributes,
    })
}

/// Whether `value`, of a flag of `value_type`, can answer a call for
/// `wanted`.
fn type_matches(wanted: Wanted, value_type: ValueType, value: &serde_json::Value) -> bool {
    match (wanted, value_type) {
        (Wanted::Bool, ValueType::Bool)
        | (Wanted::String, ValueType::String)
        | (Wanted::Float, ValueType::Number)
        | (Wanted::Object, ValueType::Object)
        | (Wanted::Any, _) => true,
        (Wanted::Int, ValueType::Number) => {
            value.is_i64()
                || value
                    .as_f64()
                    .is_some_and(|n| n.fract() == 0.0 && n.abs() < 9.0e15)
        }
        _ => false,
    }
}

fn type_name(value_type: ValueType) -> &'static str {
    match value_type {
        ValueType::Bool => "boolean",
        ValueType::String => "string",
        ValueType::Number => "number",
        ValueType::Object => "object",
    }
}

/// A bulk evaluation: every answer, and what decided them besides the
/// context.
pub struct Every {
    /// Every flag's answer, in key order.
    pub answers: Vec<(String, Resolved)>,
    /// The snapshot's version.
    pub version: i64,
    /// Whether the snapshot was stale (every answer says so).
    pub stale: bool,
    /// Whether an answer may have read the clock.
    pub reads_time: bool,
    /// The evaluations, by reason (already counted).
    pub tally: Tally,
    /// Where each evaluation was counted in its flag's usage (already
    /// counted), to count a remembered answer again.
    pub usage: UsageMarks,
}

/// What both protocol versions share.
#[derive(Debug, Clone)]
pub struct FlagdCore {
    state: Arc<State>,
    environment: Arc<str>,
    evaluations: EvaluationCounters,
    streams: Arc<StreamGate>,
}

impl FlagdCore {
    /// Evaluations of `environment` over `state`; `streams` admits event
    /// streams and ends them.
    pub fn new(state: Arc<State>, environment: &str, streams: Arc<StreamGate>) -> Self {
        Self {
            state,
            environment: environment.into(),
            evaluations: EvaluationCounters::new(),
            streams,
        }
    }

    /// Evaluates `flag`; `stale`: the snapshot is not known to be current.
    /// With `marks`, notes where the evaluations were counted.
    fn answer(
        &self,
        flag: &CompiledFlag,
        snapshot: &Snapshot,
        context: &EvaluationContext,
        stale: bool,
        tally: &mut Tally,
        marks: Option<&mut UsageMarks>,
    ) -> Resolved {
        self.answer_ref(flag, snapshot, context, stale, tally, marks)
            .into_owned()
    }

    /// [`FlagdCore::answer`], borrowed from the flag.
    fn answer_ref<'a>(
        &self,
        flag: &'a CompiledFlag,
        snapshot: &Snapshot,
        context: &EvaluationContext,
        stale: bool,
        tally: &mut Tally,
        marks: Option<&mut UsageMarks>,
    ) -> ResolvedRef<'a> {
        let evaluation = match marks {
            Some(marks) => flag.evaluate_marked(&self.environment, context, snapshot, marks),
            None => flag.evaluate(&self.environment, context, snapshot),
        };
        // Disabled stays disabled (no value in v2) even when stale.
        let disabled = evaluation.reason == Reason::Disabled;
        let evaluation = evaluation.stale_if(stale);
        tally.add(evaluation.reason);
        ResolvedRef {
            value: evaluation.value,
            variant: evaluation.variant,
            reason: evaluation.reason.open_feature_name(),
            disabled,
            flag_version: evaluation.flag_version,
        }
    }

    /// Evaluates `key` for `context`, which must be a flag of the `wanted`
    /// type.
    pub fn resolve(
        &self,
        key: &str,
        context: Option<Struct>,
        wanted: Wanted,
    ) -> Result<Resolved, Status> {
        let context = context_of(context)?;
        self.resolve_context(key, &context, wanted, Audience::Everyone)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "flag {:?} does not exist",
                    crate::echo::truncate(key)
                ))
            })
    }

    /// [`FlagdCore::resolve`] for a context already read; `None` when the
    /// flag does not exist.
    pub fn resolve_context(
        &self,
        key: &str,
        context: &EvaluationContext,
        wanted: Wanted,
        audience: Audience,
    ) -> Result<Option<Resolved>, Status> {
        self.resolve_context_with(key, context, wanted, audience, |answer| answer.into_owned())
    }

    /// [`FlagdCore::resolve_context`] handing the answer, borrowed from the
    /// snapshot, to `write` (which writes it out without copying its value
    /// and variant); `None` when the flag does not exist.
    pub fn resolve_context_with<T>(
        &self,
        key: &str,
        context: &EvaluationContext,
        wanted: Wanted,
        audience: Audience,
        write: impl FnOnce(ResolvedRef<'_>) -> T,
    ) -> Result<Option<T>, Status> {
        let snapshot = self.state.snapshot_briefly();
        let Some(flag) = snapshot.flag(key).filter(|flag| audience.sees(flag.flag())) else {
            return Ok(None);
        };
        let value_type = flag.flag().value_type;
        let mut tally = Tally::default();
        let stale = self.state.freshness().is_stale();
        let resolved = self.answer_ref(flag, &snapshot, context, stale, &mut tally, None);
        self.evaluations.record_tally(&tally);
        if !type_matches(wanted, value_type, resolved.value) {
            return Err(Status::invalid_argument(format!(
                "flag {:?} is a {} flag{}",
                crate::echo::truncate(key),
                type_name(value_type),
                if wanted == Wanted::Int && value_type == ValueType::Number {
                    " whose value is not a whole number"
                } else {
                    ""
                }
            )));
        }
        Ok(Some(write(resolved)))
    }

    /// Whether flag `key` exists and client tokens may evaluate it.
    pub fn client_visible(&self, key: &str) -> bool {
        self.state
            .snapshot()
            .flag(key)
            .is_some_and(|flag| flag.flag().client_visible)
    }

    /// Evaluates every flag for `context`, with the snapshot's version.
    pub fn resolve_all(
        &self,
        context: Option<Struct>,
    ) -> Result<(Vec<(String, Resolved)>, i64), Status> {
        let context = context_of(context)?;
        Ok(self.resolve_all_context(&context, Audience::Everyone))
    }

    /// [`FlagdCore::resolve_all`] for a context already read: every flag in
    /// key order, with the snapshot's version.
    pub fn resolve_all_context(
        &self,
        context: &EvaluationContext,
        audience: Audience,
    ) -> (Vec<(String, Resolved)>, i64) {
        let all = self.resolve_every(context, audience);
        (all.answers, all.version)
    }

    /// Every flag `audience` sees, evaluated for `context`, in key order,
    /// with what decided the answers besides the context.
    pub fn resolve_every(&self, context: &EvaluationContext, audience: Audience) -> Every {
        let snapshot = self.state.snapshot();
        let stale = self.state.freshness().is_stale();
        let mut tally = Tally::default();
        let mut usage = UsageMarks::default();
        // The snapshot's own sorted list, made once per snapshot: sorting
        // a thousand keys per request was most of a bulk evaluation.
        let answers = snapshot
            .flags_sorted()
            .iter()
            .filter(|flag| audience.sees(flag.flag()))
            .map(|flag| {
                (
                    flag.key().to_owned(),
                    self.answer(
                        flag,
                        &snapshot,
                        context,
                        stale,
                        &mut tally,
                        Some(&mut usage),
                    ),
                )
            })
            .collect();
        self.evaluations.record_tally(&tally);
        Every {
            answers,
            version: snapshot.version,
            stale,
            reads_time: snapshot.reads_time(),
            tally,
            usage,
        }
    }

    /// What, besides a context, decides a bulk evaluation now: the
    /// snapshot's version, whether it is stale, and whether an answer may
    /// read the clock.
    pub fn inputs(&self) -> (i64, bool, bool) {
        let snapshot = self.state.snapshot_briefly();
        (
            snapshot.version,
            self.state.freshness().is_stale(),
            snapshot.reads_time(),
        )
    }

    /// An answer of evaluations counted in `usage`, to be given again
    /// without evaluating (see [`Self::count`]).
    pub fn repeatable(&self, usage: UsageMarks) -> Arc<RepeatedAnswer> {
        self.state.repeatable_usage(usage)
    }

    /// Counts evaluations answered without being made again (a remembered
    /// bulk answer), as if made: in the metrics and in the flags' usage.
    pub fn count(&self, tally: &Tally, usage: &RepeatedAnswer) {
        self.evaluations.record_tally(tally);
        usage.count_again();
    }

    /// EventStream: `provider_ready` at once, `configuration_change` on
    /// every flag change, `keep_alive` every 20 s, `provider_shutdown` when
    /// readyd drains. `event` builds the version's message.
    pub fn events<M: Send + 'static>(
        &self,
        event: fn(&str, Option<Struct>) -> M,
    ) -> Result<BoxStream<M>, Status> {
        let ticket = self.streams.admit("flagd")?;
        // Subscribe first, so no change falls before provider_ready.
        let subscription = self.state.subscribe();
        let mut events = subscription.events;
        // The snapshot last compared whole, and the version told so far.
        // A full reload is compared with `known`: flags changed since then
        // may be named again, which is harmless; none is missed.
        let mut known = subscription.snapshot;
        let mut told = known.version;
        let state = Arc::clone(&self.state);
        let (tx, rx) = mpsc::channel::<Result<M, Status>>(16);
        tokio::spawn(async move {
            if tx.send(Ok(event("provider_ready", None))).await.is_err() {
                return;
            }
            let mut keep_alive = tokio::time::interval(KEEP_ALIVE_INTERVAL);
            keep_alive.reset();
            loop {
                let changed: Vec<(String, &'static str)> = tokio::select! {
                    () = ticket.ended() => {
                        let _ = tx.send(Ok(event("provider_shutdown", None))).await;
                        return;
                    }
                    () = tx.closed() => return,
                    _ = keep_alive.tick() => {
                        if tx.send(Ok(event("keep_alive", None))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    received = events.recv() => match received {
                        Ok(change) if change.version() <= told => Vec::new(),
                        Ok(change) => {
                            told = change.version();
                            match &*change {
                                Event::FlagUpserted { flag, created, .. } => {
                                    let kind = if *created { "write" } else { "update" };
                                    vec![(flag.key().to_owned(), kind)]
                                }
                                Event::FlagDeleted { key, .. } => vec![(key.clone(), "delete")],
                                // The flags that name the segment may answer
                                // differently now.
                                Event::SegmentChanged { flags, .. } => {
                                    flags.iter().map(|key| (key.clone(), "update")).collect()
                                }
                                Event::Resync { .. } => resync(&state, &mut known, &mut told),
                                Event::ConfigChanged { .. } | Event::Progress { .. } => Vec::new(),
                            }
                        }
                        // Fell behind: tell what may differ.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            resync(&state, &mut known, &mut told)
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                // Caught up: compare later resyncs with the current snapshot,
                // shared with every other stream, rather than pin an old one.
                let current = state.snapshot();
                if current.version == told {
                    known = current;
                }
                if changed.is_empty() {
                    continue;
                }
                let flags: BTreeMap<String, Value> = changed
                    .into_iter()
                    .map(|(key, kind)| {
                        let detail = Struct {
                            fields: BTreeMap::from([("type".to_owned(), string_value(kind))]),
                        };
                        (
                            key,
                            Value {
                                kind: Some(Kind::StructValue(detail)),
                            },
                        )
                    })
                    .collect();
                let data = Struct {
                    fields: BTreeMap::from([(
                        "flags".to_owned(),
                        Value {
                            kind: Some(Kind::StructValue(Struct { fields: flags })),
                        },
                    )]),
                };
                if tx
                    .send(Ok(event("configuration_change", Some(data))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// After a reload or falling behind: the flags that may have changed since
/// `known`, which becomes the current snapshot.
fn resync(
    state: &State,
    known: &mut Arc<crate::state::Snapshot>,
    told: &mut i64,
) -> Vec<(String, &'static str)> {
    let current = state.snapshot();
    let changed = difference(known, &current);
    *told = (*told).max(current.version);
    *known = current;
    changed
}

/// Which flags differ between two snapshots, and how.
fn difference(
    before: &crate::state::Snapshot,
    after: &crate::state::Snapshot,
) -> Vec<(String, &'static str)> {
    // Only the flags the two maps do not share can differ: after one
    // change that is one shard's, not every flag.
    let mut changed: Vec<(String, &'static str)> = after
        .flags
        .not_shared_with(&before.flags)
        .filter_map(|flag| match before.flag(flag.key()) {
            None => Some((flag.key().to_owned(), "write")),
            Some(old) if old.version() != flag.version() => Some((flag.key().to_owned(), "update")),
            Some(_) => None,
        })
        .collect();
    changed.sort_unstable();
    let mut deleted: Vec<(String, &'static str)> = before
        .flags
        .not_shared_with(&after.flags)
        .filter(|flag| after.flag(flag.key()).is_none())
        .map(|flag| (flag.key().to_owned(), "delete"))
        .collect();
    deleted.sort_unstable();
    changed.append(&mut deleted);
    changed
}

fn json_struct(value: &serde_json::Value) -> Struct {
    match value {
        serde_json::Value::Object(map) => to_pb_struct(map),
        _ => Struct::default(),
    }
}

fn as_i64(value: &serde_json::Value) -> i64 {
    value
        .as_i64()
        .or_else(|| value.as_f64().map(|n| n as i64))
        .unwrap_or_default()
}

/// `flagd.evaluation.v1.Service`.
#[derive(Debug, Clone)]
pub struct FlagdV1(pub FlagdCore);

/// `flagd.evaluation.v2.Service`.
#[derive(Debug, Clone)]
pub struct FlagdV2(pub FlagdCore);

fn v1_any(resolved: Resolved) -> v1::AnyFlag {
    use v1::any_flag::Value as V;
    let value = match &resolved.value {
        serde_json::Value::Bool(b) => Some(V::BoolValue(*b)),
        serde_json::Value::String(s) => Some(V::StringValue(s.clone())),
        serde_json::Value::Number(n) => n.as_f64().map(V::DoubleValue),
        serde_json::Value::Object(map) => Some(V::ObjectValue(to_pb_struct(map))),
        _ => None,
    };
    v1::AnyFlag {
        reason: resolved.reason.to_owned(),
        variant: resolved.variant.clone(),
        value,
        metadata: Some(metadata(resolved.flag_version)),
    }
}

fn v2_any(resolved: Resolved) -> v2::AnyFlag {
    use v2::any_flag::Value as V;
    let value = match &resolved.value {
        _ if resolved.disabled => None,
        serde_json::Value::Bool(b) => Some(V::BoolValue(*b)),
        serde_json::Value::String(s) => Some(V::StringValue(s.clone())),
        serde_json::Value::Number(n) => n.as_f64().map(V::DoubleValue),
        serde_json::Value::Object(map) => Some(V::ObjectValue(to_pb_struct(map))),
        _ => None,
    };
    v2::AnyFlag {
        reason: resolved.reason.to_owned(),
        variant: (!resolved.disabled).then(|| resolved.variant.clone()),
        value,
        metadata: Some(metadata(resolved.flag_version)),
    }
}

fn metadata_of_all(version: i64) -> Struct {
    Struct {
        fields: BTreeMap::from([(
            "snapshot_version".to_owned(),
            Value {
                kind: Some(Kind::NumberValue(version as f64)),
            },
        )]),
    }
}

#[tonic::async_trait]
impl v1::service_server::Service for FlagdV1 {
    async fn resolve_all(
        &self,
        request: Request<v1::ResolveAllRequest>,
    ) -> Result<Response<v1::ResolveAllResponse>, Status> {
        let (answers, version) = self.0.resolve_all(request.into_inner().context)?;
        Ok(Response::new(v1::ResolveAllResponse {
            flags: answers
                .into_iter()
                .map(|(key, answer)| (key, v1_any(answer)))
                .collect(),
            metadata: Some(metadata_of_all(version)),
        }))
    }

    async fn resolve_boolean(
        &self,
        request: Request<v1::ResolveBooleanRequest>,
    ) -> Result<Response<v1::ResolveBooleanResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::Bool)?;
        Ok(Response::new(v1::ResolveBooleanResponse {
            value: resolved.value.as_bool().unwrap_or_default(),
            reason: resolved.reason.to_owned(),
            variant: resolved.variant.clone(),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn resolve_string(
        &self,
        request: Request<v1::ResolveStringRequest>,
    ) -> Result<Response<v1::ResolveStringResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::String)?;
        Ok(Response::new(v1::ResolveStringResponse {
            value: resolved.value.as_str().unwrap_or_default().to_owned(),
            reason: resolved.reason.to_owned(),
            variant: resolved.variant.clone(),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn resolve_float(
        &self,
        request: Request<v1::ResolveFloatRequest>,
    ) -> Result<Response<v1::ResolveFloatResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::Float)?;
        Ok(Response::new(v1::ResolveFloatResponse {
            value: resolved.value.as_f64().unwrap_or_default(),
            reason: resolved.reason.to_owned(),
            variant: resolved.variant.clone(),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn resolve_int(
        &self,
        request: Request<v1::ResolveIntRequest>,
    ) -> Result<Response<v1::ResolveIntResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::Int)?;
        Ok(Response::new(v1::ResolveIntResponse {
            value: as_i64(&resolved.value),
            reason: resolved.reason.to_owned(),
            variant: resolved.variant.clone(),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn resolve_object(
        &self,
        request: Request<v1::ResolveObjectRequest>,
    ) -> Result<Response<v1::ResolveObjectResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::Object)?;
        Ok(Response::new(v1::ResolveObjectResponse {
            value: Some(json_struct(&resolved.value)),
            reason: resolved.reason.to_owned(),
            variant: resolved.variant.clone(),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn event_stream(
        &self,
        _request: Request<v1::EventStreamRequest>,
    ) -> Result<Response<BoxStream<v1::EventStreamResponse>>, Status> {
        Ok(Response::new(self.0.events(|kind, data| {
            v1::EventStreamResponse {
                r#type: kind.to_owned(),
                data,
            }
        })?))
    }
}

#[tonic::async_trait]
impl v2::service_server::Service for FlagdV2 {
    async fn resolve_all(
        &self,
        request: Request<v2::ResolveAllRequest>,
    ) -> Result<Response<v2::ResolveAllResponse>, Status> {
        let (answers, version) = self.0.resolve_all(request.into_inner().context)?;
        Ok(Response::new(v2::ResolveAllResponse {
            flags: answers
                .into_iter()
                .map(|(key, answer)| (key, v2_any(answer)))
                .collect(),
            metadata: Some(metadata_of_all(version)),
        }))
    }

    async fn resolve_boolean(
        &self,
        request: Request<v2::ResolveBooleanRequest>,
    ) -> Result<Response<v2::ResolveBooleanResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::Bool)?;
        let on = !resolved.disabled;
        Ok(Response::new(v2::ResolveBooleanResponse {
            value: on.then(|| resolved.value.as_bool()).flatten(),
            reason: resolved.reason.to_owned(),
            variant: on.then(|| resolved.variant.clone()),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn resolve_string(
        &self,
        request: Request<v2::ResolveStringRequest>,
    ) -> Result<Response<v2::ResolveStringResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::String)?;
        let on = !resolved.disabled;
        Ok(Response::new(v2::ResolveStringResponse {
            value: on
                .then(|| resolved.value.as_str().map(str::to_owned))
                .flatten(),
            reason: resolved.reason.to_owned(),
            variant: on.then(|| resolved.variant.clone()),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn resolve_float(
        &self,
        request: Request<v2::ResolveFloatRequest>,
    ) -> Result<Response<v2::ResolveFloatResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::Float)?;
        let on = !resolved.disabled;
        Ok(Response::new(v2::ResolveFloatResponse {
            value: on.then(|| resolved.value.as_f64()).flatten(),
            reason: resolved.reason.to_owned(),
            variant: on.then(|| resolved.variant.clone()),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn resolve_int(
        &self,
        request: Request<v2::ResolveIntRequest>,
    ) -> Result<Response<v2::ResolveIntResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::Int)?;
        let on = !resolved.disabled;
        Ok(Response::new(v2::ResolveIntResponse {
            value: on.then(|| as_i64(&resolved.value)),
            reason: resolved.reason.to_owned(),
            variant: on.then(|| resolved.variant.clone()),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn resolve_object(
        &self,
        request: Request<v2::ResolveObjectRequest>,
    ) -> Result<Response<v2::ResolveObjectResponse>, Status> {
        let request = request.into_inner();
        let resolved = self
            .0
            .resolve(&request.flag_key, request.context, Wanted::Object)?;
        let on = !resolved.disabled;
        Ok(Response::new(v2::ResolveObjectResponse {
            value: on.then(|| json_struct(&resolved.value)),
            reason: resolved.reason.to_owned(),
            variant: on.then(|| resolved.variant.clone()),
            metadata: Some(metadata(resolved.flag_version)),
        }))
    }

    async fn event_stream(
        &self,
        _request: Request<v2::EventStreamRequest>,
    ) -> Result<Response<BoxStream<v2::EventStreamResponse>>, Status> {
        Ok(Response::new(self.0.events(|kind, data| {
            v2::EventStreamResponse {
                r#type: kind.to_owned(),
                data,
            }
        })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Any JSON value, nested a little.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// A context: the three fields readyd reads (sometimes of a wrong
    /// type) and others.
    fn context() -> impl Strategy<Value = Map<String, serde_json::Value>> {
        let name = prop_oneof![
            Just("targetingKey".to_owned()),
            Just("role".to_owned()),
            Just("roles".to_owned()),
            "[a-z]{1,6}",
        ];
        let value = prop_oneof![
            json_value(),
            prop::collection::vec("[a-z]{0,4}", 0..3).prop_map(serde_json::Value::from),
        ];
        prop::collection::btree_map(name, value, 0..6).prop_map(|map| map.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// A context sent as JSON reads exactly as the same context sent as
        /// a `google.protobuf.Struct`: same fields, values and errors.
        #[test]
        fn json_contexts_read_as_protobuf_ones(context in context()) {
            let through_struct = context_of(Some(to_pb_struct(&context)))
                .map_err(|status| status.message().to_owned());
            let direct = context_of_json(context).map_err(|status| status.message().to_owned());
            prop_assert_eq!(direct, through_struct);
        }

        /// The changes told to an EventStream are those a comparison of
        /// every flag of the two snapshots finds, whether the later one
        /// was made from the earlier by changes or loaded whole.
        #[test]
        fn the_difference_is_that_of_every_flag(
            start in prop::collection::btree_map("[a-h]{1,2}", 1i64..4, 0..40),
            changes in prop::collection::vec(("[a-h]{1,2}", prop::option::of(1i64..4)), 0..12),
            reloaded in any::<bool>(),
        ) {
            let flag = |key: &str, version: i64| -> crate::flags::Flag {
                serde_json::from_value(json!({
                    "key": key, "description": "", "enabled": true, "value_type": "bool",
                    "on_value": true, "off_value": false, "environments": [], "target_users": [],
                    "target_roles": [], "rollout_percentage": 100, "version": version,
                    "updated_at": "2026-12-06T00:00:00Z", "updated_by": "test"
                }))
                .expect("a flag")
            };
            let before = crate::state::Snapshot::from_rows(
                1,
                start.iter().map(|(key, version)| flag(key, *version)).collect(),
                vec![],
            );
            let mut after = before.clone();
            for (i, (key, version)) in changes.iter().enumerate() {
                after = after.with_flag(2 + i as i64, key, version.map(|v| flag(key, v)));
            }
            if reloaded {
                let rows = after.flags.values().map(|f| f.flag().clone()).collect();
                after = crate::state::Snapshot::from_rows(after.version, rows, vec![]);
            }
            let mut expected = Vec::new();
            for flag in after.flags_with_prefix("") {
                match before.flag(flag.key()) {
                    None => expected.push((flag.key().to_owned(), "write")),
                    Some(old) if old.version() != flag.version() => {
                        expected.push((flag.key().to_owned(), "update"));
                    }
                    Some(_) => {}
                }
            }
            for flag in before.flags_with_prefix("") {
                if after.flag(flag.key()).is_none() {
                    expected.push((flag.key().to_owned(), "delete"));
                }
            }
            prop_assert_eq!(difference(&before, &after), expected);
        }
    }
}
