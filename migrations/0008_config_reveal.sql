-- The console shows sensitive values masked; an admin may reveal one, and
-- that is audited like a change: who saw which row, and when (the value
-- is never recorded). The row's version is the one that was seen.
ALTER TABLE config_audit DROP CONSTRAINT config_audit_action_check;
ALTER TABLE config_audit ADD CONSTRAINT config_audit_action_check
    CHECK (action IN ('insert', 'update', 'delete', 'reveal'));
