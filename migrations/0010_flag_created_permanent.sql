-- Stale flags (README, "Stale flags"): a flag's creation time, so a new
-- flag is not "not evaluated for 30 days", and a mark that keeps kill
-- switches and ops toggles off the list.
ALTER TABLE feature_flags ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE feature_flags ADD COLUMN permanent boolean NOT NULL DEFAULT false;

-- A flag that existed before this migration has no known creation time;
-- its last change is the latest it can have been created, and the choice
-- that never calls a flag changed last week unread for a month. Triggers
-- are off for the copy: it is no change to the flags (no version, no audit
-- row, no notification).
ALTER TABLE feature_flags DISABLE TRIGGER USER;
UPDATE feature_flags SET created_at = updated_at;
ALTER TABLE feature_flags ENABLE TRIGGER USER;
