-- Keyed fingerprints of sensitive values in the audit trail.
--
-- Until this migration a sensitive value was audited as 'sha256:' + the
-- first 12 hex digits of the SHA-256 of its jsonb text. Anyone who could
-- read config_audit (a backup, a read-only role, an export) could test
-- guesses of a short secret (a PIN, a word, a small number) offline.
--
-- From now on it is 'hmac-sha256:' + the first 16 hex digits of
-- HMAC-SHA256(key, jsonb text of the value), with a random key made here,
-- one per database. Without the key a guess cannot be tested. Rows written
-- before keep their 'sha256:' form: both are plain strings in old_value and
-- new_value, and readers tell them apart by the prefix. Equal values still
-- have equal fingerprints within one database, so "did it change?" stays
-- answerable from the audit.

-- The key. One row; readable only by its owner (readyd's role) and
-- superusers. The trigger reaches it through readyd_fingerprint(), which
-- runs with its owner's rights, so plain SQL writers need no access to it.
CREATE TABLE readyd_audit_key (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    key        bytea       NOT NULL CHECK (octet_length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON readyd_audit_key FROM PUBLIC;

-- 32 bytes from PostgreSQL's strong random source: three random UUIDs
-- (122 random bits each) hashed together.
INSERT INTO readyd_audit_key (key)
SELECT sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                         || gen_random_uuid()::text, 'UTF8'));

-- HMAC-SHA256 (RFC 2104) from the built-in sha256(), so no extension
-- (pgcrypto) is needed: H((K xor opad) || H((K xor ipad) || message)), with
-- K padded with zeros to SHA-256's 64-byte block (hashed first if longer).
CREATE FUNCTION readyd_hmac_sha256(key bytea, message bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    k     bytea := CASE WHEN octet_length(key) > 64 THEN sha256(key) ELSE key END;
    ipad bytea;
    opad bytea;
BEGIN
    k := k || decode(repeat('00', 64 - octet_length(k)), 'hex');
    ipad := k;
    opad := k;
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(k, i) # 54);   -- 0x36
        opad := set_byte(opad, i, get_byte(k, i) # 92);   -- 0x5c
    END LOOP;
    RETURN sha256(opad || sha256(ipad || message));
END
$$;

-- The audit form of a sensitive value: 'hmac-sha256:' + 16 hex digits.
-- SECURITY DEFINER so any writer's trigger can use the key without being
-- able to read it; the search path is fixed to the one of this migration.
CREATE FUNCTION readyd_fingerprint(value jsonb) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    k bytea;
BEGIN
    SELECT a.key INTO k FROM readyd_audit_key a WHERE a.id;
    IF k IS NULL THEN
        -- Never fall back to an unkeyed hash: refuse the write instead.
        RAISE EXCEPTION 'readyd_audit_key is empty: sensitive values cannot be audited'
            USING HINT = 'restore the row from a backup, or insert a new random 32-byte key';
    END IF;
    RETURN 'hmac-sha256:' || left(encode(readyd_hmac_sha256(k, convert_to(value::text, 'UTF8')), 'hex'), 16);
END
$$;
-- Whoever may call it can test guesses, so only its owner may, and the
-- roles an operator lets write app_config by plain SQL (they can read the
-- values anyway): GRANT EXECUTE ON FUNCTION readyd_fingerprint(jsonb) TO …;
REVOKE ALL ON FUNCTION readyd_fingerprint(jsonb) FROM PUBLIC;

-- Replaces 0001's unkeyed form. STABLE now: it reads the key.
CREATE OR REPLACE FUNCTION readyd_audit_value(r jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN r IS NULL THEN NULL
        WHEN (r ->> 'is_sensitive')::boolean THEN to_jsonb(readyd_fingerprint(r -> 'value'))
        ELSE r -> 'value'
    END
$$;
