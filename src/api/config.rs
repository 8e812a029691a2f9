//! readyd.v1.ConfigService: resolved reads from the snapshot (sensitive
//! values for admins only), writes through the store with read-your-writes,
//! maintenance mode, the audit trail and WatchConfigs.

use std::collections::HashSet;
use std::sync::Arc;

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::api::Database;
use crate::api::auth::Caller;
use crate::api::convert::{from_pb_value, to_pb_value, to_timestamp};
use crate::api::error::ApiError;
use crate::api::flags::freshness;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::config_service_client::ConfigServiceClient;
use crate::api::pb::readyd::v1::config_service_server::ConfigService;
use crate::api::streams::StreamGate;
use crate::api::watch::{WatchKind, watch};
use crate::api::{
    ANSWER_BUDGET_BYTES, MAX_KEY_PAGE, audit_query, checked_version, framed_len, invalid,
    read_your_write, too_large_for_one_answer, written,
};
use crate::client::channel::RetryingChannel;
use crate::config::{
    self, ConfigDraft, ConfigRow, check_key, environment_of, resolve, resolve_after, resolve_all,
    rows_after, visible,
};
use crate::paging::{fill_page, key_page_size, key_position, key_token, next_page_token};
use crate::state::{Event, Snapshot, State};
use crate::store::config::AuditRow;

/// The ConfigService handlers.
#[derive(Debug, Clone)]
pub struct ConfigApi {
    /// What reads answer from.
    state: Arc<State>,
    /// Where writes go.
    store: Database,
    /// This instance's environment.
    environment: Arc<str>,
    /// Admits WatchConfigs streams and ends them at shutdown.
    streams: Arc<StreamGate>,
    /// A follower's upstream, which answers for the environments a
    /// follower does not hold.
    upstream: Option<RetryingChannel>,
}

impl ConfigApi {
    /// Handlers over `state` and `store` for `environment`.
    pub fn new(
        state: Arc<State>,
        store: Database,
        environment: &str,
        streams: Arc<StreamGate>,
        upstream: Option<RetryingChannel>,
    ) -> Self {
        Self {
            state,
            store,
            environment: environment.into(),
            streams,
            upstream,
        }
    }
}

/// `row` as the caller may see it.
pub fn entry(row: &ConfigRow, is_admin: bool) -> pb::ConfigEntry {
    let seen = visible(row, is_admin);
    pb::ConfigEntry {
        key: row.key.clone(),
        value: seen.value.map(to_pb_value),
        environment: row.environment.clone(),
        description: row.description.clone(),
        is_sensitive: row.is_sensitive,
        redacted: seen.redacted,
        version: row.version,
        updated_at: Some(to_timestamp(row.updated_at)),
        updated_by: row.updated_by.clone(),
    }
}

/// The maintenance mode of `environment` in the current snapshot.
fn maintenance(state: &State, environment: &str) -> pb::MaintenanceMode {
    let mode = config::maintenance(&state.snapshot().configs, environment);
    pb::MaintenanceMode {
        enabled: mode.enabled,
        message: mode.message,
        version: mode.version,
        stale: state.freshness().is_stale(),
    }
}

fn audit_action(action: &str) -> pb::ConfigAuditAction {
    match action {
        "insert" => pb::ConfigAuditAction::Insert,
        "update" => pb::ConfigAuditAction::Update,
        "delete" => pb::ConfigAuditAction::Delete,
        "reveal" => pb::ConfigAuditAction::Reveal,
        _ => pb::ConfigAuditAction::Unspecified,
    }
}

impl From<AuditRow> for pb::ConfigAuditEntry {
    fn from(row: AuditRow) -> Self {
        pb::ConfigAuditEntry {
            id: row.id,
            key: row.key,
            environment: row.environment,
            action: audit_action(&row.action).into(),
            old_value: row.old_value.as_ref().map(to_pb_value),
            new_value: row.new_value.as_ref().map(to_pb_value),
            actor: row.actor,
            changed_at: Some(to_timestamp(row.changed_at)),
            version: row.version,
        }
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        let caller = Caller::of(&request);
        let key = &request.get_ref().key;
        check_key(key).map_err(ApiError::from)?;
        let snapshot = self.state.snapshot();
        let Some(row) = resolve(&snapshot.configs, key, &self.environment) else {
            return Err(ApiError::NotFound(format!(
                "config {key:?} has no value for environment {:?}",
                &*self.environment
            ))
            .into());
        };
        Ok(Response::new(pb::GetConfigResponse {
            entry: Some(entry(row, caller.is_admin)),
            stale: self.state.freshness().is_stale(),
        }))
    }

    async fn list_configs(
        &self,
        request: Request<pb::ListConfigsRequest>,
    ) -> Result<Response<pb::ListConfigsResponse>, Status> {
        let caller = Caller::of(&request);
        let metadata = request.metadata().clone();
        let request = request.into_inner();
        let wants_other = request.all_environments || !request.environment.is_empty();
        if wants_other && !caller.is_admin {
            return Err(Status::permission_denied(
                "listing another environment or every row needs the admin token",
            ));
        }
        let not_held = request.all_environments
            || !(request.environment.is_empty() || *request.environment == *self.environment);
        if not_held && let Some(upstream) = &self.upstream {
            // A follower holds only its own environment's rows: its
            // upstream answers, deciding with the caller's own token.
            let mut forwarded = Request::new(request);
            *forwarded.metadata_mut() = metadata;
            return ConfigServiceClient::new(upstream.clone())
                .list_configs(forwarded)
                .await;
        }
        let size = key_page_size(request.page_size, MAX_KEY_PAGE).map_err(ApiError::from)?;
        let mut after = key_position(&request.page_token, "ListConfigs").map_err(ApiError::from)?;
        let snapshot = self.state.snapshot();
        let to_entry = |row: &Arc<ConfigRow>| entry(row, caller.is_admin);
        let page = if request.all_environments {
            // A row's position is its key and its environment.
            let after = after.take().and_then(|mut position| {
                let environment = position.get_mut(1).map(std::mem::take)?;
                let key = position.into_iter().next()?;
                Some((key, environment))
            });
            fill_page(
                rows_after(&snapshot.configs, &request.prefix, after),
                to_entry,
                framed_len,
                size,
                ANSWER_BUDGET_BYTES,
            )
        } else {
            let environment = if request.environment.is_empty() {
                self.environment.to_string()
            } else {
                environment_of(&request.environment).map_err(ApiError::from)?
            };
            let after = after.and_then(|position| position.into_iter().next());
            fill_page(
                resolve_after(
                    &snapshot.configs,
                    &request.prefix,
                    &environment,
                    after.as_deref(),
                ),
                to_entry,
                framed_len,
                size,
                ANSWER_BUDGET_BYTES,
            )
        };
        let (entries, more) =
            page.map_err(|_| too_large_for_one_answer("ListConfigs", "the entries"))?;
        let next_page_token = match entries.last() {
            Some(last) if more => key_token(&[&last.key, &last.environment]),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListConfigsResponse {
            entries,
            version: snapshot.version,
            stale: self.state.freshness().is_stale(),
            next_page_token,
        }))
    }

    async fn set_config(
        &self,
        request: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        let actor = crate::api::actor(&request)?;
        let request = request.into_inner();
        checked_version("expected_version", request.expected_version)?;
        let value = request
            .value
            .map(from_pb_value)
            .transpose()
            .map_err(|m| invalid("value", m))?;
        let draft = ConfigDraft {
            key: request.key,
            environment: request.environment,
            value,
            description: request.description,
            is_sensitive: request.is_sensitive,
            make_public: request.make_public,
        }
        .validate()
        .map_err(ApiError::from)?;
        let row = self
            .store
            .get()?
            .set_config(&draft, request.expected_version, &actor)
            .await
            .map_err(ApiError::from)?;
        read_your_write(&self.state, row.version).await;
        // The caller is admin (the auth layer let the write through).
        Ok(written(
            row.version,
            pb::SetConfigResponse {
                entry: Some(entry(&row, true)),
            },
        ))
    }

    async fn delete_config(
        &self,
        request: Request<pb::DeleteConfigRequest>,
    ) -> Result<Response<pb::DeleteConfigResponse>, Status> {
        let actor = crate::api::actor(&request)?;
        let request = request.into_inner();
        check_key(&request.key).map_err(ApiError::from)?;
        let environment = environment_of(&request.environment).map_err(ApiError::from)?;
        checked_version("expected_version", request.expected_version)?;
        let version = self
            .store
            .get()?
            .delete_config(&request.key, &environment, request.expected_version, &actor)
            .await
            .map_err(ApiError::from)?;
        read_your_write(&self.state, version).await;
        Ok(written(version, pb::DeleteConfigResponse { version }))
    }

    async fn get_maintenance_mode(
        &self,
        _request: Request<pb::GetMaintenanceModeRequest>,
    ) -> Result<Response<pb::MaintenanceMode>, Status> {
        Ok(Response::new(maintenance(&self.state, &self.environment)))
    }

    async fn set_maintenance_mode(
        &self,
        request: Request<pb::SetMaintenanceModeRequest>,
    ) -> Result<Response<pb::MaintenanceMode>, Status> {
        let actor = crate::api::actor(&request)?;
        let request = request.into_inner();
        if request.message.len() > crate::config::MAX_VALUE_BYTES {
            return Err(invalid("message", "is longer than 64 KiB").into());
        }
        if request.message.contains('\0') {
            return Err(ApiError::from(crate::flags::nul_error("message")).into());
        }
        let (mode, message) = self
            .store
            .get()?
            .set_maintenance(&self.environment, request.enabled, &request.message, &actor)
            .await
            .map_err(ApiError::from)?;
        let version = mode.version.max(message.version);
        read_your_write(&self.state, version).await;
        Ok(written(
            version,
            maintenance(&self.state, &self.environment),
        ))
    }

    async fn list_config_audit(
        &self,
        request: Request<pb::ListConfigAuditRequest>,
    ) -> Result<Response<pb::ListConfigAuditResponse>, Status> {
        let request = request.into_inner();
        let (query, page_size) = audit_query(
            request.key,
            request.since,
            request.until,
            request.page_size,
            &request.page_token,
            "ListConfigAudit",
        )?;
        let mut rows = self
            .store
            .get()?
            .audit_rows(&query)
            .await
            .map_err(ApiError::from)?;
        let next_page_token = next_page_token(&mut rows, page_size, |row| row.id);
        Ok(Response::new(pb::ListConfigAuditResponse {
            entries: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn watch_configs(
        &self,
        request: Request<pb::WatchConfigsRequest>,
    ) -> Result<Response<BoxStream<pb::WatchConfigsResponse>>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        for key in &request.keys {
            check_key(key).map_err(ApiError::from)?;
        }
        checked_version("since_version", request.since_version)?;
        let ticket = self.streams.admit("configs")?;
        let kind = ConfigStream {
            filter: (!request.keys.is_empty()).then(|| request.keys.into_iter().collect()),
            environment: self.environment.to_string(),
            is_admin: caller.is_admin,
        };
        Ok(Response::new(watch(
            kind,
            Arc::clone(&self.state),
            request.since_version,
            request.with_freshness,
            ticket,
        )))
    }
}

/// What a WatchConfigs stream sends: the resolved view of this instance's
/// environment.
struct ConfigStream {
    /// Only these keys, when set.
    filter: Option<HashSet<String>>,
    /// The environment resolved for.
    environment: String,
    /// Whether sensitive values may be sent.
    is_admin: bool,
}

impl ConfigStream {
    fn wanted(&self, key: &str) -> bool {
        self.filter.as_ref().is_none_or(|keys| keys.contains(key))
    }
}

impl WatchKind for ConfigStream {
    type Message = pb::WatchConfigsResponse;
    type Item = pb::ConfigEntry;

    fn items(&self, snapshot: Arc<Snapshot>) -> Box<dyn Iterator<Item = pb::ConfigEntry> + Send> {
        let rows: Vec<Arc<ConfigRow>> = resolve_all(&snapshot.configs, "", &self.environment)
            .into_iter()
            .filter(|row| self.wanted(&row.key))
            .cloned()
            .collect();
        let is_admin = self.is_admin;
        Box::new(rows.into_iter().map(move |row| entry(&row, is_admin)))
    }

    fn part(
        &self,
        _snapshot: &Snapshot,
        version: i64,
        entries: Vec<pb::ConfigEntry>,
        first: bool,
        last: bool,
    ) -> pb::WatchConfigsResponse {
        pb::WatchConfigsResponse {
            event: Some(pb::watch_configs_response::Event::Snapshot(
                pb::ConfigSnapshot {
                    version,
                    entries,
                    first,
                    last,
                },
            )),
        }
    }

    fn freshness(&self, stale_for: Option<std::time::Duration>) -> pb::WatchConfigsResponse {
        pb::WatchConfigsResponse {
            event: Some(pb::watch_configs_response::Event::Freshness(freshness(
                stale_for,
            ))),
        }
    }

    fn change(&self, event: &Event) -> Option<pb::WatchConfigsResponse> {
        let Event::ConfigChanged {
            version,
            key,
            resolved,
            resolved_changed: true,
            ..
        } = event
        else {
            return None;
        };
        if !self.wanted(key) {
            return None;
        }
        let change = match resolved {
            Some(row) => pb::config_change::Change::Upserted(entry(row, self.is_admin)),
            None => pb::config_change::Change::DeletedKey(key.clone()),
        };
        Some(pb::WatchConfigsResponse {
            event: Some(pb::watch_configs_response::Event::Change(
                pb::ConfigChange {
                    version: *version,
                    change: Some(change),
                },
            )),
        })
    }
}
