-- readyd schema: configuration, feature flags, deployment history, health
-- history, the database health function and the change feed.
-- See DESIGN.md, "Data model".

-- One sequence orders every change to app_config and feature_flags, so a
-- single version number describes the state of both.
CREATE SEQUENCE readyd_change_version AS bigint;

CREATE TABLE app_config (
    key          text        NOT NULL CHECK (key ~ '^[a-z0-9][a-z0-9_.-]{0,127}$'),
    environment  text        NOT NULL DEFAULT '*'
                             CHECK (environment = '*' OR environment ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    value        jsonb       NOT NULL,
    description  text        NOT NULL DEFAULT '',
    is_sensitive boolean     NOT NULL DEFAULT false,
    version      bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text        NOT NULL DEFAULT session_user,
    CONSTRAINT app_config_key_environment_key UNIQUE (key, environment)
);
CREATE INDEX app_config_key_idx ON app_config (key);
CREATE INDEX app_config_environment_idx ON app_config (environment);

CREATE TABLE config_audit (
    id          bigserial   PRIMARY KEY,
    key         text        NOT NULL,
    environment text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('insert', 'update', 'delete')),
    -- A sensitive value is stored only as its fingerprint, 'sha256:' + 12 hex.
    old_value   jsonb,
    new_value   jsonb,
    actor       text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint      NOT NULL
);
CREATE INDEX config_audit_key_idx ON config_audit (key, id DESC);
CREATE INDEX config_audit_changed_at_idx ON config_audit (changed_at DESC);

CREATE TABLE feature_flags (
    key                text        PRIMARY KEY CHECK (key ~ '^[a-z0-9][a-z0-9_.-]{0,127}$'),
    description        text        NOT NULL DEFAULT '',
    enabled            boolean     NOT NULL DEFAULT false,
    value_type         text        NOT NULL DEFAULT 'bool'
                                   CHECK (value_type IN ('bool', 'string', 'number', 'object')),
    on_value           jsonb       NOT NULL DEFAULT 'true',
    off_value          jsonb       NOT NULL DEFAULT 'false',
    environments       text[]      NOT NULL DEFAULT '{}',
    target_users       text[]      NOT NULL DEFAULT '{}',
    target_roles       text[]      NOT NULL DEFAULT '{}',
    rollout_percentage integer     NOT NULL DEFAULT 100 CHECK (rollout_percentage BETWEEN 0 AND 100),
    version            bigint      NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    updated_by         text        NOT NULL DEFAULT session_user
);

CREATE TABLE deployment_history (
    id               bigserial   PRIMARY KEY,
    version          text        NOT NULL,
    environment      text        NOT NULL,
    status           text        NOT NULL DEFAULT 'success'
                                 CHECK (status IN ('pending', 'in_progress', 'success', 'failed', 'rolled_back')),
    kind             text        NOT NULL DEFAULT 'deploy' CHECK (kind IN ('deploy', 'rollback')),
    deployed_by      text        NOT NULL,
    commit_sha       text,
    notes            text,
    previous_version text,
    rollback_of      bigint      REFERENCES deployment_history (id),
    deployed_at      timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
CREATE INDEX deployment_history_environment_idx ON deployment_history (environment);
CREATE INDEX deployment_history_deployed_at_idx ON deployment_history (deployed_at DESC);

CREATE TABLE system_health (
    id                  bigserial        PRIMARY KEY,
    recorded_at         timestamptz      NOT NULL DEFAULT now(),
    instance            text,
    status              text             NOT NULL CHECK (status IN ('healthy', 'degraded', 'unhealthy')),
    database_size_bytes bigint           NOT NULL,
    active_connections  integer          NOT NULL,
    max_connections     integer          NOT NULL,
    error_count         bigint           NOT NULL,
    response_time_ms    double precision NOT NULL,
    checks              jsonb            NOT NULL DEFAULT '{}',
    version             text
);
CREATE INDEX system_health_recorded_at_idx ON system_health (recorded_at);

-- Database health: size, connections, errors and a status from connection
-- utilisation (>= 75 % degraded, >= 90 % unhealthy). Records one
-- system_health row per call. p_environment picks which app_version is
-- recorded (that environment's row, else the '*' row).
CREATE FUNCTION check_system_health(
    p_instance    text  DEFAULT NULL,
    p_checks      jsonb DEFAULT '{}',
    p_environment text  DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    started     timestamptz := clock_timestamp();
    db_size     bigint;
    active      integer;
    max_conn    integer;
    errors      bigint;
    utilization numeric;
    health      text;
    app_version text;
    elapsed_ms  double precision;
    row_id      bigint;
    row_at      timestamptz;
BEGIN
    db_size := pg_database_size(current_database());
    SELECT count(*) INTO active FROM pg_stat_activity WHERE backend_type = 'client backend';
    max_conn := current_setting('max_connections')::integer;
    SELECT coalesce(deadlocks, 0) + coalesce(conflicts, 0) INTO errors
      FROM pg_stat_database WHERE datname = current_database();
    errors := coalesce(errors, 0);
    utilization := active::numeric / greatest(max_conn, 1);
    health := CASE WHEN utilization >= 0.90 THEN 'unhealthy'
                   WHEN utilization >= 0.75 THEN 'degraded'
                   ELSE 'healthy' END;
    SELECT value #>> '{}' INTO app_version FROM app_config
     WHERE key = 'app_version' AND environment IN (coalesce(p_environment, '*'), '*')
     ORDER BY environment = '*' LIMIT 1;
    elapsed_ms := extract(epoch FROM clock_timestamp() - started) * 1000;
    INSERT INTO system_health (instance, status, database_size_bytes, active_connections,
                               max_connections, error_count, response_time_ms, checks, version)
    VALUES (p_instance, health, db_size, active, max_conn, errors, elapsed_ms,
            coalesce(p_checks, '{}'), app_version)
    RETURNING id, recorded_at INTO row_id, row_at;
    RETURN jsonb_build_object(
        'id', row_id,
        'status', health,
        'database_size_bytes', db_size,
        'active_connections', active,
        'max_connections', max_conn,
        'connection_utilization', round(utilization, 4),
        'error_count', errors,
        'response_time_ms', elapsed_ms,
        'instance', p_instance,
        'version', app_version,
        'checks', coalesce(p_checks, '{}'),
        'checked_at', row_at);
END
$$;

-- Change feed. Every write takes the next version (BEFORE trigger) and, after
-- the row is written, announces {table, key, environment, version, op} on
-- channel readyd_changes (delivered at commit). The API and plain SQL go
-- through the same triggers, so both propagate and are audited alike. The
-- acting user comes from the transaction setting readyd.actor (set by
-- readyd), else the database user.
CREATE FUNCTION readyd_actor() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('readyd.actor', true), ''), session_user::text)
$$;

-- Versions in commit order. Sequence values are handed out in call order,
-- not commit order: A could take 5, B take 6 and commit first, and a listener
-- would see 6 before 5. Every writing statement therefore first takes one
-- transaction-level advisory lock, held until commit, so versions are taken
-- and committed one writer at a time. Taking it in a statement-level BEFORE
-- trigger, before the statement locks any row, keeps single statements free
-- of lock-order deadlocks. Writes to flags and config are rare; serialising
-- them costs little. A reader that takes the lock in shared mode sees no
-- writer half done (a consistent full reload).
CREATE FUNCTION readyd_serialize_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7246851021);
    RETURN NULL;
END
$$;

CREATE FUNCTION readyd_stamp_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('readyd_change_version');
    NEW.updated_at := now();
    -- Always the real actor: plain SQL cannot claim to be someone else.
    NEW.updated_by := readyd_actor();
    RETURN NEW;
END
$$;

-- A sensitive value as it may appear in the audit trail.
CREATE FUNCTION readyd_audit_value(r jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN r IS NULL THEN NULL
        WHEN (r ->> 'is_sensitive')::boolean THEN
            to_jsonb('sha256:' || left(encode(sha256(convert_to((r -> 'value')::text, 'UTF8')), 'hex'), 12))
        ELSE r -> 'value'
    END
$$;

-- The row itself rides along when it fits in a notification (PostgreSQL's
-- limit is 8,000 bytes) and is not secret (any database user may LISTEN), so
-- listeners see every version of a row without a query. Otherwise they read
-- the row themselves.
CREATE FUNCTION readyd_announce(tbl text, r jsonb, op text, v bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    base     jsonb := jsonb_build_object('table', tbl, 'key', r ->> 'key',
                                         'environment', r ->> 'environment', 'version', v, 'op', op);
    with_row text;
BEGIN
    IF op IN ('insert', 'update') AND NOT coalesce((r ->> 'is_sensitive')::boolean, false) THEN
        with_row := (base || jsonb_build_object('row', r))::text;
        IF octet_length(with_row) < 7900 THEN
            PERFORM pg_notify('readyd_changes', with_row);
            RETURN;
        END IF;
    END IF;
    PERFORM pg_notify('readyd_changes', base::text);
END
$$;

CREATE FUNCTION readyd_audit(r jsonb, action text, old_value jsonb, new_value jsonb, v bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO config_audit (key, environment, action, old_value, new_value, actor, version)
    VALUES (r ->> 'key', r ->> 'environment', action, old_value, new_value, readyd_actor(), v)
$$;

CREATE FUNCTION readyd_after_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_row  jsonb := CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END;
    new_row  jsonb := CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END;
    renamed  boolean := TG_OP = 'UPDATE' AND (old_row ->> 'key' IS DISTINCT FROM new_row ->> 'key'
                        OR old_row ->> 'environment' IS DISTINCT FROM new_row ->> 'environment');
    new_at   bigint := (new_row ->> 'version')::bigint;
    gone_at  bigint;
BEGIN
    -- The new row first: its version was taken in the BEFORE trigger, so it
    -- is announced (and audited) before the later version of a deletion.
    IF TG_OP = 'INSERT' OR renamed THEN
        IF TG_TABLE_NAME = 'app_config' THEN
            PERFORM readyd_audit(new_row, 'insert', NULL, readyd_audit_value(new_row), new_at);
        END IF;
        PERFORM readyd_announce(TG_TABLE_NAME, new_row, 'insert', new_at);
    ELSIF TG_OP = 'UPDATE' THEN
        IF TG_TABLE_NAME = 'app_config' THEN
            PERFORM readyd_audit(new_row, 'update', readyd_audit_value(old_row), readyd_audit_value(new_row), new_at);
        END IF;
        PERFORM readyd_announce(TG_TABLE_NAME, new_row, 'update', new_at);
    END IF;

    -- A delete (or the old identity of a renamed row) gets a version of its own.
    IF TG_OP = 'DELETE' OR renamed THEN
        gone_at := nextval('readyd_change_version');
        IF TG_TABLE_NAME = 'app_config' THEN
            PERFORM readyd_audit(old_row, 'delete', readyd_audit_value(old_row), NULL, gone_at);
        END IF;
        PERFORM readyd_announce(TG_TABLE_NAME, old_row, 'delete', gone_at);
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE removes rows without row triggers: audit each configuration row
-- as deleted first, so the trail stays complete.
CREATE FUNCTION readyd_before_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
BEGIN
    IF TG_TABLE_NAME = 'app_config' THEN
        FOR r IN SELECT to_jsonb(c) FROM app_config c ORDER BY key, environment LOOP
            PERFORM readyd_audit(r, 'delete', readyd_audit_value(r), NULL, nextval('readyd_change_version'));
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE bypasses row triggers: announce it so listeners reload everything.
CREATE FUNCTION readyd_after_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM readyd_announce(TG_TABLE_NAME, '{}'::jsonb, 'truncate', nextval('readyd_change_version'));
    RETURN NULL;
END
$$;

CREATE TRIGGER app_config_serialize BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON app_config
    FOR EACH STATEMENT EXECUTE FUNCTION readyd_serialize_changes();
CREATE TRIGGER app_config_stamp_version BEFORE INSERT OR UPDATE ON app_config
    FOR EACH ROW EXECUTE FUNCTION readyd_stamp_version();
CREATE TRIGGER app_config_changed AFTER INSERT OR UPDATE OR DELETE ON app_config
    FOR EACH ROW EXECUTE FUNCTION readyd_after_change();
CREATE TRIGGER app_config_truncating BEFORE TRUNCATE ON app_config
    FOR EACH STATEMENT EXECUTE FUNCTION readyd_before_truncate();
CREATE TRIGGER app_config_truncated AFTER TRUNCATE ON app_config
    FOR EACH STATEMENT EXECUTE FUNCTION readyd_after_truncate();

CREATE TRIGGER feature_flags_serialize BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON feature_flags
    FOR EACH STATEMENT EXECUTE FUNCTION readyd_serialize_changes();
CREATE TRIGGER feature_flags_stamp_version BEFORE INSERT OR UPDATE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION readyd_stamp_version();
CREATE TRIGGER feature_flags_changed AFTER INSERT OR UPDATE OR DELETE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION readyd_after_change();
CREATE TRIGGER feature_flags_truncated AFTER TRUNCATE ON feature_flags
    FOR EACH STATEMENT EXECUTE FUNCTION readyd_after_truncate();

-- Defaults, written through the triggers like any change (and so audited).
SELECT set_config('readyd.actor', 'readyd-migration', true);

INSERT INTO app_config (key, environment, value, description) VALUES
    ('app_name', '*', '"app"', 'Name of the application'),
    ('app_version', '*', '"0.0.0"', 'Version currently deployed; set by RecordDeployment'),
    ('maintenance_mode', '*', 'false', 'When true, the application shows the maintenance message'),
    ('maintenance_message', '*', '""', 'Message shown to users during maintenance'),
    ('log_level', '*', '"info"', 'Log level of the application'),
    ('max_upload_mb', '*', '10', 'Largest upload accepted, in MiB'),
    ('session_timeout_minutes', '*', '30', 'Idle time before a session ends, in minutes');

INSERT INTO feature_flags (key, description) VALUES
    ('ai_insights', 'AI-generated insights'),
    ('predictive_analytics', 'Predictive analytics'),
    ('advanced_reporting', 'Advanced reporting'),
    ('dark_mode', 'Dark colour scheme'),
    ('beta_features', 'Features in beta');
