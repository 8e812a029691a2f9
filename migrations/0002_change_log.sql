-- The change log: NOTIFY becomes a wake-up, never data.
--
-- Any role that can connect may NOTIFY on readyd_changes, so a payload
-- cannot be trusted: a forged one could flip a flag on every instance
-- without an audit row. From this migration on, every change of a served
-- table is written to readyd_change_log by the change triggers, in the
-- change's own transaction, so the log holds exactly the committed changes
-- (versions commit in order: see the first migration), each with the row as
-- that change wrote it. The notification carries nothing; listeners read
-- the log after the version they hold, in one query per burst. The log is
-- readable by whoever can read the tables (it holds the same values) and
-- is pruned to its newest entries.

CREATE TABLE readyd_change_log (
    version     bigint      PRIMARY KEY,
    table_name  text        NOT NULL,
    key         text,
    environment text,
    op          text        NOT NULL CHECK (op IN ('insert', 'update', 'delete', 'truncate')),
    -- The row as written, for inserts and updates.
    row         jsonb,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

-- Every committed change at or above `below` is in the log; older entries
-- have been pruned (or predate it). A listener holding an older version
-- than below - 1 cannot catch up from the log and reloads everything.
CREATE TABLE readyd_change_log_floor (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    below    bigint  NOT NULL
);
INSERT INTO readyd_change_log_floor (below)
SELECT CASE WHEN is_called THEN last_value + 1 ELSE 1 END FROM readyd_change_version;

-- Logs one change and wakes the listeners. The payload is empty, so the
-- notifications of one transaction fold into one (PostgreSQL delivers
-- identical payloads of a transaction once).
CREATE OR REPLACE FUNCTION readyd_announce(tbl text, r jsonb, op text, v bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO readyd_change_log (version, table_name, key, environment, op, row)
    VALUES (v, tbl, r ->> 'key', r ->> 'environment', op,
            CASE WHEN op IN ('insert', 'update') THEN r END);
    PERFORM pg_notify('readyd_changes', '');
END
$$;

-- Drops entries older than the newest `keep`, moving the floor with them in
-- the same transaction. Any readyd may call it; calls serialise on the
-- floor row.
CREATE FUNCTION readyd_prune_change_log(keep bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    newest bigint;
    floor  bigint;
BEGIN
    SELECT below INTO floor FROM readyd_change_log_floor FOR UPDATE;
    SELECT max(version) INTO newest FROM readyd_change_log;
    IF newest IS NULL OR newest - keep <= floor THEN
        RETURN;
    END IF;
    UPDATE readyd_change_log_floor SET below = newest - keep;
    DELETE FROM readyd_change_log WHERE version < newest - keep;
END
$$;
