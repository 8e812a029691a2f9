-- Segments (DESIGN.md, "Flag model v2"): named, reusable constraint sets that
-- flag rules name by key. On the same change feed as flags and config: a
-- segment change reaches every instance and stream like a flag change.

CREATE TABLE flag_segments (
    key         text        PRIMARY KEY CHECK (key ~ '^[a-z0-9][a-z0-9_.-]{0,127}$'),
    description text        NOT NULL DEFAULT '',
    constraints jsonb       NOT NULL DEFAULT '[]',
    version     bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL DEFAULT session_user
);

CREATE TRIGGER flag_segments_serialize BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON flag_segments
    FOR EACH STATEMENT EXECUTE FUNCTION readyd_serialize_changes();
CREATE TRIGGER flag_segments_stamp_version BEFORE INSERT OR UPDATE ON flag_segments
    FOR EACH ROW EXECUTE FUNCTION readyd_stamp_version();
CREATE TRIGGER flag_segments_changed AFTER INSERT OR UPDATE OR DELETE ON flag_segments
    FOR EACH ROW EXECUTE FUNCTION readyd_after_change();
CREATE TRIGGER flag_segments_truncated AFTER TRUNCATE ON flag_segments
    FOR EACH STATEMENT EXECUTE FUNCTION readyd_after_truncate();

-- Who changed which segment, before and after, as flag_audit does for flags.
CREATE TABLE segment_audit (
    id          bigserial   PRIMARY KEY,
    key         text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('insert', 'update', 'delete')),
    old_segment jsonb,
    new_segment jsonb,
    actor       text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint      NOT NULL
);
CREATE INDEX segment_audit_key_idx ON segment_audit (key, id DESC);

-- After flag_segments_changed (name order), so a deletion's version is current.
CREATE FUNCTION readyd_audit_segment() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO segment_audit (key, action, old_segment, new_segment, actor, version)
        VALUES (NEW.key, 'insert', NULL, to_jsonb(NEW), readyd_actor(), NEW.version);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO segment_audit (key, action, old_segment, new_segment, actor, version)
        VALUES (NEW.key, 'update', to_jsonb(OLD), to_jsonb(NEW), readyd_actor(), NEW.version);
    ELSE
        INSERT INTO segment_audit (key, action, old_segment, new_segment, actor, version)
        VALUES (OLD.key, 'delete', to_jsonb(OLD), NULL, readyd_actor(),
                currval('readyd_change_version'));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER flag_segments_recorded AFTER INSERT OR UPDATE OR DELETE ON flag_segments
    FOR EACH ROW EXECUTE FUNCTION readyd_audit_segment();
