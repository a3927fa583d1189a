-- Purpose: flux_authenticator, the login role request connections use. It can become flux_anon, flux_user or
-- flux_service (SET LOCAL ROLE) and write a request's record, and nothing else: a function that leaves its
-- request role (set_config('role', 'none')) lands here, not on the role that migrated the database.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'flux_authenticator') THEN
        BEGIN
            CREATE ROLE flux_authenticator LOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- a concurrent migrate of another database created it first
        END;
    END IF;
END
$$;

GRANT flux_anon, flux_user, flux_service TO flux_authenticator;
GRANT USAGE ON SCHEMA flux TO flux_authenticator;
-- The request's record, written after the function ran (see flux/trace/recorder.py).
GRANT INSERT ON flux.requests, flux.spans TO flux_authenticator;
-- What a worker reads besides the user's tables: /ready's migration check and the column rules of the catalog.
GRANT SELECT ON flux.schema_migrations, flux.column_policies TO flux_authenticator;
