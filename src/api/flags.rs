//! readyd.v1.FlagService: flag definitions, evaluation and WatchFlags.
//! Reads and evaluation answer from the snapshot; writes go to the store and
//! answer once the change listener has applied them (read-your-writes).

use std::collections::HashSet;
use std::sync::Arc;

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::api::Database;
use crate::api::convert::{from_pb_struct, from_pb_value, to_pb_value, to_timestamp};
use crate::api::error::ApiError;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::flag_service_server::FlagService;
use crate::api::streams::StreamGate;
use crate::api::watch::{WatchKind, watch};
use crate::api::{
    ANSWER_BUDGET_BYTES, MAX_KEY_PAGE, audit_query, checked_version, framed_len, invalid,
    read_your_write, too_large_for_one_answer, written,
};
use crate::flags::{
    CompiledFlag, Evaluation, EvaluationContext, Flag, FlagDraft, Reason, Targeting, ValueType,
    is_valid_key,
};
use crate::paging::{fill_page, key_page_size, key_position, key_token, next_page_token};
use crate::state::{Event, Snapshot, State};
use crate::store::audit::{ObjectAuditRow, Trail};
use crate::store::flags::{FLAG_TRAIL, FlagAuditRow};
use crate::store::segments::{SEGMENT_TRAIL, SegmentDraft};
use crate::telemetry::{EvaluationCounters, Tally};

/// The FlagService handlers.
#[derive(Debug, Clone)]
pub struct FlagApi {
    /// What reads answer from.
    state: Arc<State>,
    /// Where writes go.
    store: Database,
    /// This instance's environment, for evaluation.
    environment: Arc<str>,
    /// Admits WatchFlags streams and ends them at shutdown.
    streams: Arc<StreamGate>,
    /// Evaluations by reason.
    evaluations: EvaluationCounters,
}

impl FlagApi {
    /// Handlers over `state` and `store` for `environment`.
    pub fn new(
        state: Arc<State>,
        store: Database,
        environment: &str,
        streams: Arc<StreamGate>,
    ) -> Self {
        Self {
            state,
            store,
            environment: environment.into(),
            streams,
            evaluations: EvaluationCounters::new(),
        }
    }
}

fn checked_key(key: &str) -> Result<(), ApiError> {
    if is_valid_key(key) {
        Ok(())
    } else {
        Err(invalid(
            "key",
            format!(
                "{:?} is not a valid flag key: ^[a-z0-9][a-z0-9_.-]{{0,127}}$",
                crate::echo::truncate(key)
            ),
        ))
    }
}

/// The flag key a page token of `listing` continues after.
fn flag_position(token: &str, listing: &str) -> Result<Option<String>, ApiError> {
    Ok(key_position(token, listing)
        .map_err(ApiError::from)?
        .and_then(|position| position.into_iter().next()))
}

/// The flags of `sorted` (ordered by key) whose key starts with `prefix`,
/// after `after` when set, in key order.
fn flags_after<'a>(
    sorted: &'a [Arc<CompiledFlag>],
    prefix: &'a str,
    after: Option<&str>,
) -> impl Iterator<Item = &'a Arc<CompiledFlag>> + 'a {
    let start = match after {
        Some(after) if after >= prefix => sorted.partition_point(|flag| flag.key() <= after),
        _ => sorted.partition_point(|flag| flag.key() < prefix),
    };
    sorted
        .get(start..)
        .unwrap_or_default()
        .iter()
        .take_while(move |flag| flag.key().starts_with(prefix))
}

fn unknown(key: &str) -> ApiError {
    ApiError::NotFound(format!(
        "flag {:?} does not exist",
        crate::echo::truncate(key)
    ))
}

impl From<ValueType> for pb::FlagValueType {
    fn from(value_type: ValueType) -> Self {
        match value_type {
            ValueType::Bool => pb::FlagValueType::Bool,
            ValueType::String => pb::FlagValueType::String,
            ValueType::Number => pb::FlagValueType::Number,
            ValueType::Object => pb::FlagValueType::Object,
        }
    }
}

impl From<Reason> for pb::EvaluationReason {
    fn from(reason: Reason) -> Self {
        match reason {
            Reason::Static => pb::EvaluationReason::Static,
            Reason::TargetingMatch => pb::EvaluationReason::TargetingMatch,
            Reason::Split => pb::EvaluationReason::Split,
            Reason::Default => pb::EvaluationReason::Default,
            Reason::Disabled => pb::EvaluationReason::Disabled,
            Reason::PrerequisiteFailed => pb::EvaluationReason::PrerequisiteFailed,
            Reason::Stale => pb::EvaluationReason::Stale,
        }
    }
}

impl From<&Flag> for pb::Flag {
    fn from(flag: &Flag) -> Self {
        pb::Flag {
            key: flag.key.clone(),
            description: flag.description.clone(),
            enabled: flag.enabled,
            value_type: pb::FlagValueType::from(flag.value_type).into(),
            on_value: Some(to_pb_value(&flag.on_value)),
            off_value: Some(to_pb_value(&flag.off_value)),
            environments: flag.environments.clone(),
            target_users: flag.target_users.clone(),
            target_roles: flag.target_roles.clone(),
            rollout_percentage: u32::from(flag.rollout_percentage),
            version: flag.version,
            updated_at: Some(to_timestamp(flag.updated_at)),
            updated_by: flag.updated_by.clone(),
            targeting: flag.targeting.as_deref().map(pb::FlagTargeting::from),
            client_visible: flag.client_visible,
            created_at: Some(to_timestamp(flag.created_at)),
            permanent: flag.permanent,
        }
    }
}

impl TryFrom<pb::UpsertFlagRequest> for FlagDraft {
    type Error = ApiError;

    /// Only the protobuf-level checks; the flag rules are in
    /// [`FlagDraft::validate`].
    fn try_from(request: pb::UpsertFlagRequest) -> Result<Self, ApiError> {
        let value_type = match pb::FlagValueType::try_from(request.value_type) {
            Ok(pb::FlagValueType::Unspecified) => None,
            Ok(pb::FlagValueType::Bool) => Some(ValueType::Bool),
            Ok(pb::FlagValueType::String) => Some(ValueType::String),
            Ok(pb::FlagValueType::Number) => Some(ValueType::Number),
            Ok(pb::FlagValueType::Object) => Some(ValueType::Object),
            Err(_) => {
                return Err(invalid(
                    "value_type",
                    format!("{} is not a value type", request.value_type),
                ));
            }
        };
        let on_value = request
            .on_value
            .map(from_pb_value)
            .transpose()
            .map_err(|m| invalid("on_value", m))?;
        let off_value = request
            .off_value
            .map(from_pb_value)
            .transpose()
            .map_err(|m| invalid("off_value", m))?;
        Ok(FlagDraft {
            key: request.key,
            description: request.description,
            enabled: request.enabled,
            value_type,
            on_value,
            off_value,
            environments: request.environments,
            target_users: request.target_users,
            target_roles: request.target_roles,
            rollout_percentage: request.rollout_percentage,
            targeting: request.targeting.map(Targeting::try_from).transpose()?,
            client_visible: request.client_visible,
            permanent: request.permanent,
        })
    }
}

impl TryFrom<Option<pb::EvaluationContext>> for EvaluationContext {
    type Error = ApiError;

    fn try_from(context: Option<pb::EvaluationContext>) -> Result<Self, ApiError> {
        let Some(context) = context else {
            return Ok(EvaluationContext::default());
        };
        let attributes = match context.attributes {
            Some(attributes) => {
                from_pb_struct(attributes).map_err(|m| invalid("context.attributes", m))?
            }
            None => serde_json::Map::new(),
        };
        Ok(EvaluationContext {
            user_id: Some(context.user_id).filter(|id| !id.is_empty()),
            roles: context.roles,
            attributes,
        })
    }
}

fn evaluation_response(key: &str, evaluation: &Evaluation<'_>) -> pb::EvaluateFlagResponse {
    pb::EvaluateFlagResponse {
        key: key.to_owned(),
        value: Some(to_pb_value(evaluation.value)),
        variant: evaluation.variant.to_owned(),
        reason: pb::EvaluationReason::from(evaluation.reason).into(),
        flag_version: evaluation.flag_version,
        explanation: Vec::new(),
    }
}

/// Most writes one `ApplyFlags` call may carry.
const MAX_APPLY_FLAGS: usize = 1000;

/// `status` about write `i` (flag `key`) of an `ApplyFlags` call, saying so.
fn in_write(i: usize, key: &str, status: Status) -> Status {
    Status::new(
        status.code(),
        format!(
            "flags[{i}] ({:?}): {}",
            crate::echo::truncate(key),
            status.message()
        ),
    )
}

/// `status` about segment write `i` (key `key`) of an `ApplyFlags` call.
fn in_segment_write(i: usize, key: &str, status: Status) -> Status {
    Status::new(
        status.code(),
        format!(
            "segments[{i}] ({:?}): {}",
            crate::echo::truncate(key),
            status.message()
        ),
    )
}

/// A segment write as the store takes it.
fn segment_draft(request: pb::UpsertSegmentRequest) -> SegmentDraft {
    SegmentDraft {
        key: request.key,
        description: request.description,
        constraints: request
            .constraints
            .into_iter()
            .map(crate::api::targeting::constraint)
            .collect(),
        expected_version: request.expected_version,
    }
}

/// An audit row's action as the API names it.
fn audit_action(action: &str) -> pb::FlagAuditAction {
    match action {
        "insert" => pb::FlagAuditAction::Insert,
        "update" => pb::FlagAuditAction::Update,
        "delete" => pb::FlagAuditAction::Delete,
        _ => pb::FlagAuditAction::Unspecified,
    }
}

/// One page of a flag or segment audit trail (`rpc` names the call in
/// errors about the request), and the token of the next.
async fn trail_page<T>(
    store: &Database,
    request: pb::ListFlagAuditRequest,
    rpc: &str,
    trail: &Trail<T>,
) -> Result<(Vec<ObjectAuditRow<T>>, String), Status> {
    let (query, page_size) = audit_query(
        request.key,
        request.since,
        request.until,
        request.page_size,
        &request.page_token,
        rpc,
    )?;
    let mut rows = store
        .get()?
        .trail_rows(trail, &query)
        .await
        .map_err(ApiError::from)?;
    let next_page_token = next_page_token(&mut rows, page_size, |row| row.id);
    Ok((rows, next_page_token))
}

/// One audit row as the API shows it.
fn audit_entry(row: &FlagAuditRow) -> pb::FlagAuditEntry {
    pb::FlagAuditEntry {
        id: row.id,
        key: row.key.clone(),
        action: audit_action(&row.action).into(),
        old_flag: row.old.as_ref().map(pb::Flag::from),
        new_flag: row.new.as_ref().map(pb::Flag::from),
        actor: row.actor.clone(),
        changed_at: Some(to_timestamp(row.changed_at)),
        version: row.version,
    }
}

impl FlagApi {
    /// Evaluates `flag`, counting the answer's reason in `tally`; `stale`:
    /// the snapshot is not known to be current.
    /// `snapshot` holds the other flags, for prerequisites.
    fn evaluate(
        &self,
        flag: &CompiledFlag,
        snapshot: &Snapshot,
        context: &EvaluationContext,
        stale: bool,
        tally: &mut Tally,
    ) -> pb::EvaluateFlagResponse {
        let evaluation = flag
            .evaluate(&self.environment, context, snapshot)
            .stale_if(stale);
        tally.add(evaluation.reason);
        evaluation_response(flag.key(), &evaluation)
    }

    /// [`Self::evaluate`], with the path that decided the answer.
    fn explain(
        &self,
        flag: &CompiledFlag,
        snapshot: &Snapshot,
        context: &EvaluationContext,
        stale: bool,
        tally: &mut Tally,
    ) -> pb::EvaluateFlagResponse {
        let (evaluation, path) = flag.explain(&self.environment, context, snapshot);
        let evaluation = evaluation.stale_if(stale);
        tally.add(evaluation.reason);
        pb::EvaluateFlagResponse {
            explanation: path.iter().map(pb::ExplainStep::from).collect(),
            ..evaluation_response(flag.key(), &evaluation)
        }
    }
}

#[tonic::async_trait]
impl FlagService for FlagApi {
    async fn get_flag(
        &self,
        request: Request<pb::GetFlagRequest>,
    ) -> Result<Response<pb::GetFlagResponse>, Status> {
        let key = &request.get_ref().key;
        checked_key(key)?;
        let snapshot = self.state.snapshot();
        let Some(flag) = snapshot.flag(key) else {
            return Err(unknown(key).into());
        };
        Ok(Response::new(pb::GetFlagResponse {
            flag: Some(flag.flag().into()),
        }))
    }

    async fn list_flags(
        &self,
        request: Request<pb::ListFlagsRequest>,
    ) -> Result<Response<pb::ListFlagsResponse>, Status> {
        let request = request.into_inner();
        let size = key_page_size(request.page_size, MAX_KEY_PAGE).map_err(ApiError::from)?;
        let after = flag_position(&request.page_token, "ListFlags")?;
        let snapshot = self.state.snapshot();
        let sorted = snapshot.flags_sorted();
        let (flags, more) = fill_page(
            flags_after(&sorted, &request.prefix, after.as_deref()),
            |flag| pb::Flag::from(flag.flag()),
            framed_len,
            size,
            ANSWER_BUDGET_BYTES,
        )
        .map_err(|_| too_large_for_one_answer("ListFlags", "the flags"))?;
        let next_page_token = match flags.last() {
            Some(last) if more => key_token(&[&last.key]),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFlagsResponse {
            flags,
            version: snapshot.version,
            next_page_token,
        }))
    }

    async fn upsert_flag(
        &self,
        request: Request<pb::UpsertFlagRequest>,
    ) -> Result<Response<pb::UpsertFlagResponse>, Status> {
        let actor = crate::api::actor(&request)?;
        let request = request.into_inner();
        let expected_version = request.expected_version;
        checked_version("expected_version", expected_version)?;
        let draft = FlagDraft::try_from(request)?
            .validate()
            .map_err(ApiError::from)?;
        let upserted = self
            .store
            .get()?
            .upsert_flag(&draft, expected_version, &actor)
            .await
            .map_err(ApiError::from)?;
        read_your_write(&self.state, upserted.flag.version).await;
        Ok(written(
            upserted.flag.version,
            pb::UpsertFlagResponse {
                flag: Some((&upserted.flag).into()),
                created: upserted.created,
            },
        ))
    }

    async fn apply_flags(
        &self,
        request: Request<pb::ApplyFlagsRequest>,
    ) -> Result<Response<pb::ApplyFlagsResponse>, Status> {
        let actor = crate::api::actor(&request)?;
        let request = request.into_inner();
        for (field, count) in [
            ("flags", request.flags.len()),
            ("segments", request.segments.len()),
        ] {
            if count > MAX_APPLY_FLAGS {
                return Err(invalid(
                    field,
                    format!("{count} {field} in one call; at most {MAX_APPLY_FLAGS}"),
                )
                .into());
            }
        }
        let mut segment_keys = HashSet::new();
        let mut segments = Vec::with_capacity(request.segments.len());
        for (i, segment) in request.segments.into_iter().enumerate() {
            if !segment_keys.insert(segment.key.clone()) {
                return Err(in_segment_write(
                    i,
                    &segment.key,
                    invalid("key", "is written twice").into(),
                ));
            }
            checked_version("expected_version", segment.expected_version)
                .map_err(|err| in_segment_write(i, &segment.key, err.into()))?;
            segments.push(segment_draft(segment));
        }
        let mut keys = HashSet::new();
        let mut drafts = Vec::with_capacity(request.flags.len());
        for (i, flag) in request.flags.into_iter().enumerate() {
            let key = flag.key.clone();
            if !keys.insert(key.clone()) {
                return Err(in_write(i, &key, invalid("key", "is written twice").into()));
            }
            let expected_version = flag.expected_version;
            checked_version("expected_version", expected_version)
                .map_err(|err| in_write(i, &key, err.into()))?;
            let draft = FlagDraft::try_from(flag)
                .and_then(|draft| draft.validate().map_err(ApiError::from))
                .map_err(|err| in_write(i, &key, err.into()))?;
            drafts.push((draft, expected_version));
        }
        let (segments, upserted) = self
            .store
            .get()?
            .apply_flags(&segments, &drafts, &actor)
            .await
            .map_err(ApiError::from)?;
        let version = upserted
            .iter()
            .map(|u| u.flag.version)
            .chain(segments.iter().map(|s| s.version))
            .max()
            .unwrap_or(0);
        if version > 0 {
            read_your_write(&self.state, version).await;
        }
        Ok(written(
            version,
            pb::ApplyFlagsResponse {
                flags: upserted.iter().map(|u| pb::Flag::from(&u.flag)).collect(),
                version,
                segments: segments.iter().map(pb::Segment::from).collect(),
            },
        ))
    }

    async fn get_segment(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        let key = &request.get_ref().key;
        checked_key(key)?;
        let snapshot = self.state.snapshot();
        let segment = snapshot.segment(key).ok_or_else(|| {
            Status::not_found(format!(
                "segment {:?} does not exist",
                crate::echo::truncate(key)
            ))
        })?;
        Ok(Response::new(segment.segment().into()))
    }

    async fn list_segments(
        &self,
        _request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let snapshot = self.state.snapshot();
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: snapshot
                .segments_sorted()
                .into_iter()
                .map(|segment| segment.segment().into())
                .collect(),
        }))
    }

    async fn upsert_segment(
        &self,
        request: Request<pb::UpsertSegmentRequest>,
    ) -> Result<Response<pb::UpsertSegmentResponse>, Status> {
        let actor = crate::api::actor(&request)?;
        let request = request.into_inner();
        checked_version("expected_version", request.expected_version)?;
        let (segment, created) = self
            .store
            .get()?
            .upsert_segment(&segment_draft(request), &actor)
            .await
            .map_err(ApiError::from)?;
        read_your_write(&self.state, segment.version).await;
        Ok(written(
            segment.version,
            pb::UpsertSegmentResponse {
                segment: Some((&segment).into()),
                created,
            },
        ))
    }

    async fn delete_segment(
        &self,
        request: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
        let actor = crate::api::actor(&request)?;
        let request = request.into_inner();
        checked_key(&request.key)?;
        checked_version("expected_version", request.expected_version)?;
        let version = self
            .store
            .get()?
            .delete_segment(&request.key, request.expected_version, &actor)
            .await
            .map_err(ApiError::from)?;
        read_your_write(&self.state, version).await;
        Ok(written(version, pb::DeleteSegmentResponse { version }))
    }

    async fn list_segment_audit(
        &self,
        request: Request<pb::ListFlagAuditRequest>,
    ) -> Result<Response<pb::ListSegmentAuditResponse>, Status> {
        let request = request.into_inner();
        let (rows, next_page_token) =
            trail_page(&self.store, request, "ListSegmentAudit", &SEGMENT_TRAIL).await?;
        Ok(Response::new(pb::ListSegmentAuditResponse {
            entries: rows
                .iter()
                .map(|row| pb::SegmentAuditEntry {
                    id: row.id,
                    key: row.key.clone(),
                    action: audit_action(&row.action).into(),
                    old_segment: row.old.as_ref().map(pb::Segment::from),
                    new_segment: row.new.as_ref().map(pb::Segment::from),
                    actor: row.actor.clone(),
                    changed_at: Some(to_timestamp(row.changed_at)),
                    version: row.version,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn list_flag_audit(
        &self,
        request: Request<pb::ListFlagAuditRequest>,
    ) -> Result<Response<pb::ListFlagAuditResponse>, Status> {
        let request = request.into_inner();
        let (rows, next_page_token) =
            trail_page(&self.store, request, "ListFlagAudit", &FLAG_TRAIL).await?;
        Ok(Response::new(pb::ListFlagAuditResponse {
            entries: rows.iter().map(audit_entry).collect(),
            next_page_token,
        }))
    }

    async fn get_flag_usage(
        &self,
        request: Request<pb::GetFlagUsageRequest>,
    ) -> Result<Response<pb::GetFlagUsageResponse>, Status> {
        let request = request.into_inner();
        checked_key(&request.key)?;
        crate::api::usage::get_flag_usage(
            &self.store,
            &request.key,
            request.since.as_ref(),
            request.until.as_ref(),
        )
        .await
        .map(Response::new)
    }

    async fn list_stale_flags(
        &self,
        request: Request<pb::ListStaleFlagsRequest>,
    ) -> Result<Response<pb::ListStaleFlagsResponse>, Status> {
        let request = request.into_inner();
        let snapshot = self.state.snapshot();
        crate::api::usage::list_stale_flags(&self.store, &snapshot, request.days)
            .await
            .map(Response::new)
    }

    async fn delete_flag(
        &self,
        request: Request<pb::DeleteFlagRequest>,
    ) -> Result<Response<pb::DeleteFlagResponse>, Status> {
        let actor = crate::api::actor(&request)?;
        let request = request.into_inner();
        checked_key(&request.key)?;
        checked_version("expected_version", request.expected_version)?;
        let version = self
            .store
            .get()?
            .delete_flag(&request.key, request.expected_version, &actor)
            .await
            .map_err(ApiError::from)?;
        read_your_write(&self.state, version).await;
        Ok(written(version, pb::DeleteFlagResponse { version }))
    }

    async fn evaluate_flag(
        &self,
        request: Request<pb::EvaluateFlagRequest>,
    ) -> Result<Response<pb::EvaluateFlagResponse>, Status> {
        let request = request.into_inner();
        checked_key(&request.key)?;
        let context = EvaluationContext::try_from(request.context)?;
        let snapshot = self.state.snapshot();
        let Some(flag) = snapshot.flag(&request.key) else {
            return Err(unknown(&request.key).into());
        };
        let mut tally = Tally::default();
        let stale = self.state.freshness().is_stale();
        let answer = if request.explain {
            self.explain(flag, &snapshot, &context, stale, &mut tally)
        } else {
            self.evaluate(flag, &snapshot, &context, stale, &mut tally)
        };
        self.evaluations.record_tally(&tally);
        Ok(Response::new(answer))
    }

    async fn evaluate_flags(
        &self,
        request: Request<pb::EvaluateFlagsRequest>,
    ) -> Result<Response<pb::EvaluateFlagsResponse>, Status> {
        let request = request.into_inner();
        let context = EvaluationContext::try_from(request.context)?;
        let snapshot = self.state.snapshot();
        let stale = self.state.freshness().is_stale();
        let mut tally = Tally::default();
        let (results, next_page_token) = if request.keys.is_empty() {
            let size = key_page_size(request.page_size, MAX_KEY_PAGE).map_err(ApiError::from)?;
            let after = flag_position(&request.page_token, "EvaluateFlags")?;
            let sorted = snapshot.flags_sorted();
            let (results, more) = fill_page(
                flags_after(&sorted, "", after.as_deref()),
                |flag| pb::FlagEvaluationResult {
                    key: flag.key().to_owned(),
                    outcome: Some(pb::flag_evaluation_result::Outcome::Evaluation(
                        self.evaluate(flag, &snapshot, &context, stale, &mut tally),
                    )),
                },
                framed_len,
                size,
                ANSWER_BUDGET_BYTES,
            )
            .map_err(|_| too_large_for_one_answer("EvaluateFlags", "the answers for every flag"))?;
            let next_page_token = match results.last() {
                Some(last) if more => key_token(&[&last.key]),
                _ => String::new(),
            };
            (results, next_page_token)
        } else {
            if request.page_size != 0 || !request.page_token.is_empty() {
                return Err(invalid(
                    "page_size",
                    "pages are for evaluating every flag (no keys); ask for fewer keys instead",
                )
                .into());
            }
            let count = request.keys.len();
            let (results, _) = fill_page(
                request.keys.into_iter(),
                |key| {
                    let outcome = match snapshot.flag(&key) {
                        Some(flag) => pb::flag_evaluation_result::Outcome::Evaluation(
                            self.evaluate(flag, &snapshot, &context, stale, &mut tally),
                        ),
                        None => pb::flag_evaluation_result::Outcome::Error(pb::EvaluationError {
                            code: "FLAG_NOT_FOUND".to_owned(),
                            message: format!(
                                "flag {:?} does not exist",
                                crate::echo::truncate(&key)
                            ),
                        }),
                    };
                    pb::FlagEvaluationResult {
                        key,
                        outcome: Some(outcome),
                    }
                },
                framed_len,
                None,
                ANSWER_BUDGET_BYTES,
            )
            .map_err(|_| {
                ApiError::ResourceExhausted(format!(
                    "EvaluateFlags: the answers for {count} keys do not fit in one answer; \
                     ask for fewer keys, or for every flag in pages with page_size"
                ))
            })?;
            (results, String::new())
        };
        self.evaluations.record_tally(&tally);
        Ok(Response::new(pb::EvaluateFlagsResponse {
            results,
            version: snapshot.version,
            next_page_token,
        }))
    }

    async fn watch_flags(
        &self,
        request: Request<pb::WatchFlagsRequest>,
    ) -> Result<Response<BoxStream<pb::WatchFlagsResponse>>, Status> {
        let request = request.into_inner();
        for key in &request.keys {
            checked_key(key)?;
        }
        checked_version("since_version", request.since_version)?;
        let ticket = self.streams.admit(FlagStream::METRIC_KIND)?;
        let filter =
            (!request.keys.is_empty()).then(|| Arc::new(request.keys.into_iter().collect()));
        let stream = watch(
            FlagStream { filter },
            Arc::clone(&self.state),
            request.since_version,
            request.with_freshness,
            ticket,
        );
        Ok(Response::new(stream))
    }
}

/// A Freshness message: stale for `stale_for`, or current.
pub fn freshness(stale_for: Option<std::time::Duration>) -> pb::Freshness {
    pb::Freshness {
        stale: stale_for.is_some(),
        stale_for: stale_for.map(crate::api::convert::to_duration),
    }
}

/// What a WatchFlags stream sends.
struct FlagStream {
    /// Only these keys, when set.
    filter: Option<Arc<HashSet<String>>>,
}

impl FlagStream {
    /// The label of the stream in the open-streams metric.
    const METRIC_KIND: &'static str = "flags";

    fn wanted(&self, key: &str) -> bool {
        wanted(self.filter.as_deref(), key)
    }
}

fn wanted(filter: Option<&HashSet<String>>, key: &str) -> bool {
    filter.is_none_or(|keys| keys.contains(key))
}

fn flag_change(version: i64, change: pb::flag_change::Change) -> pb::WatchFlagsResponse {
    pb::WatchFlagsResponse {
        event: Some(pb::watch_flags_response::Event::Change(pb::FlagChange {
            version,
            change: Some(change),
        })),
    }
}

impl WatchKind for FlagStream {
    type Message = pb::WatchFlagsResponse;
    type Item = pb::Flag;

    fn items(&self, snapshot: Arc<Snapshot>) -> Box<dyn Iterator<Item = pb::Flag> + Send> {
        let sorted = snapshot.flags_sorted();
        let filter = self.filter.clone();
        Box::new(
            (0..sorted.len())
                .filter_map(move |i| sorted.get(i).cloned())
                .filter(move |flag| wanted(filter.as_deref(), flag.key()))
                .map(|flag| flag.flag().into()),
        )
    }

    fn part(
        &self,
        snapshot: &Snapshot,
        version: i64,
        flags: Vec<pb::Flag>,
        first: bool,
        last: bool,
    ) -> pb::WatchFlagsResponse {
        let segments = if first {
            snapshot
                .segments_sorted()
                .into_iter()
                .map(|segment| pb::Segment::from(segment.segment()))
                .collect()
        } else {
            Vec::new()
        };
        pb::WatchFlagsResponse {
            event: Some(pb::watch_flags_response::Event::Snapshot(
                pb::FlagSnapshot {
                    version,
                    flags,
                    first,
                    last,
                    segments,
                },
            )),
        }
    }

    fn freshness(&self, stale_for: Option<std::time::Duration>) -> pb::WatchFlagsResponse {
        pb::WatchFlagsResponse {
            event: Some(pb::watch_flags_response::Event::Freshness(freshness(
                stale_for,
            ))),
        }
    }

    fn change(&self, event: &Event) -> Option<pb::WatchFlagsResponse> {
        match event {
            Event::FlagUpserted { version, flag, .. } if self.wanted(flag.key()) => {
                Some(flag_change(
                    *version,
                    pb::flag_change::Change::Upserted(flag.flag().into()),
                ))
            }
            Event::FlagDeleted { version, key } if self.wanted(key) => Some(flag_change(
                *version,
                pb::flag_change::Change::DeletedKey(key.clone()),
            )),
            Event::SegmentChanged {
                version,
                key,
                segment,
                ..
            } => Some(flag_change(
                *version,
                match segment {
                    Some(segment) => {
                        pb::flag_change::Change::SegmentUpserted(segment.segment().into())
                    }
                    None => pb::flag_change::Change::SegmentDeletedKey(key.clone()),
                },
            )),
            _ => None,
        }
    }
}
