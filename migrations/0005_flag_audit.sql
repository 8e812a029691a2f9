-- The audit trail of flags, as config's: who changed which flag, the flag
-- before and after, in the same transaction as the change, for writes
-- through readyd and by plain SQL alike (the actor is then the database
-- user, unless the session sets readyd.actor).

CREATE TABLE flag_audit (
    id         bigserial   PRIMARY KEY,
    key        text        NOT NULL,
    action     text        NOT NULL CHECK (action IN ('insert', 'update', 'delete')),
    -- The whole row before and after (NULL for an insert / a delete).
    old_flag   jsonb,
    new_flag   jsonb,
    actor      text        NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    version    bigint      NOT NULL
);
CREATE INDEX flag_audit_key_idx ON flag_audit (key, id DESC);
CREATE INDEX flag_audit_changed_at_idx ON flag_audit (changed_at DESC);

-- After feature_flags_changed (triggers of one event fire in name order),
-- so a deletion's version, taken there, is current here.
CREATE FUNCTION readyd_audit_flag() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO flag_audit (key, action, old_flag, new_flag, actor, version)
        VALUES (NEW.key, 'insert', NULL, to_jsonb(NEW), readyd_actor(), NEW.version);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO flag_audit (key, action, old_flag, new_flag, actor, version)
        VALUES (NEW.key, 'update', to_jsonb(OLD), to_jsonb(NEW), readyd_actor(), NEW.version);
    ELSE
        INSERT INTO flag_audit (key, action, old_flag, new_flag, actor, version)
        VALUES (OLD.key, 'delete', to_jsonb(OLD), NULL, readyd_actor(),
                currval('readyd_change_version'));
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE bypasses row triggers: record every flag as deleted first.
CREATE FUNCTION readyd_audit_flag_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO flag_audit (key, action, old_flag, new_flag, actor, version)
    SELECT f.key, 'delete', to_jsonb(f), NULL, readyd_actor(), nextval('readyd_change_version')
      FROM feature_flags f ORDER BY f.key;
    RETURN NULL;
END
$$;

CREATE TRIGGER feature_flags_recorded AFTER INSERT OR UPDATE OR DELETE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION readyd_audit_flag();
CREATE TRIGGER feature_flags_truncating BEFORE TRUNCATE ON feature_flags
    FOR EACH STATEMENT EXECUTE FUNCTION readyd_audit_flag_truncate();
