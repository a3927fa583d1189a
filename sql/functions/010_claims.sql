-- Purpose: helpers for row-level security policies: who is calling, as set by the gateway per transaction.

-- The JWT or API-key claims of the current request ({} outside a request).
CREATE OR REPLACE FUNCTION flux.claims() RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(nullif(pg_catalog.current_setting('flux.claims', true), ''), '{}')::jsonb
$$;

-- One claim as text, or null when absent.
CREATE OR REPLACE FUNCTION flux.claim(name text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT flux.claims() ->> name
$$;

-- The caller's user id: the `sub` claim.
CREATE OR REPLACE FUNCTION flux.user_id() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT flux.claim('sub')
$$;

-- The caller's tenant: the `flux.tenant_id` setting, else the `tenant_id` claim; an invalid uuid is an error,
-- never a silent null, because a policy that compares with it must not quietly change meaning.
-- No exception block: it would open a subtransaction, which a parallel query (an RLS policy on a big table)
-- cannot do.
CREATE OR REPLACE FUNCTION flux.tenant_id() RETURNS uuid
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- flux.claim('tenant_id'), read here directly: a call of it (SQL functions that cannot be inlined) is
    -- planned anew at each statement that calls this function, a row trigger's or a policy's.
    raw text := coalesce(nullif(pg_catalog.current_setting('flux.tenant_id', true), ''),
                         nullif(pg_catalog.current_setting('flux.claims', true), '')::jsonb ->> 'tenant_id');
BEGIN
    IF raw IS NOT NULL
       AND raw !~* '^\{?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?$' THEN
        RAISE EXCEPTION 'tenant id % is not a uuid', pg_catalog.quote_literal(raw)
            USING ERRCODE = 'FX010', HINT = 'issue the token with a tenant_id claim that is a uuid';
    END IF;
    RETURN raw::uuid;
END
$$;

-- The Flux role of the current transaction: anon, user or service, from the role the gateway switched to;
-- null for a session that is not acting for a Flux request (a DBA in psql).
CREATE OR REPLACE FUNCTION flux.role() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE current_user
        WHEN 'flux_anon' THEN 'anon'
        WHEN 'flux_user' THEN 'user'
        WHEN 'flux_service' THEN 'service'
    END
$$;

GRANT EXECUTE ON FUNCTION flux.claims(), flux.claim(text), flux.user_id(), flux.tenant_id(), flux.role()
    TO flux_anon, flux_user, flux_service;
