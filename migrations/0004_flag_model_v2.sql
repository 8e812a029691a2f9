-- Flag model v2 (DESIGN.md, "Flag model v2"): a flag's named variants, off
-- variant, rules, default serve and prerequisites, as one jsonb document;
-- NULL for a flag that uses only the first model's fields.
--
-- A readyd from before this model leaves out (and logs) a row whose
-- value_type it does not know, so a flag with v2 parts is marked there:
-- 'string@2' is a string flag of model 2. Such a readyd then answers
-- NOT_FOUND for the flag instead of serving it by the first model's rules,
-- and readyd refuses a model newer than its own the same way.
ALTER TABLE feature_flags ADD COLUMN targeting jsonb;

ALTER TABLE feature_flags DROP CONSTRAINT feature_flags_value_type_check;
ALTER TABLE feature_flags ADD CONSTRAINT feature_flags_value_type_check
    CHECK (value_type ~ '^(bool|string|number|object)(@[0-9]+)?$');
ALTER TABLE feature_flags ADD CONSTRAINT feature_flags_targeting_marked
    CHECK ((targeting IS NULL) = (value_type !~ '@'));
