-- Flag usage (README, "Flag usage"): evaluations counted by every readyd
-- and added here once a minute, one row per flag, hour, environment,
-- variant and reason, however many instances counted them.
CREATE TABLE flag_usage (
    flag_key    text        NOT NULL,
    hour        timestamptz NOT NULL,
    environment text        NOT NULL,
    variant     text        NOT NULL,
    reason      text        NOT NULL,
    count       bigint      NOT NULL CHECK (count >= 0),
    PRIMARY KEY (flag_key, hour, environment, variant, reason)
);
-- Pruning by age, and stale-flag scans over a window of hours.
CREATE INDEX flag_usage_hour ON flag_usage (hour);

-- One row per flush applied, written in the same transaction as its
-- counts: a flush retried after an unknown outcome finds its id here and
-- adds nothing twice. Pruned after a few days.
CREATE TABLE flag_usage_flushes (
    id uuid        PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX flag_usage_flushes_at ON flag_usage_flushes (at);
