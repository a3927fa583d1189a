-- Purpose: flux_service may read and write every table, view and sequence of schema public, as Supabase's
-- service_role may: the project's code runs as it (`flux invoke`, queue jobs), and a project should not have to
-- GRANT it anything. This grants it what is there already; flux.grant_service_defaults() (run by the migration
-- runner before a project's migrations) covers what is made later. flux_anon and flux_user get nothing here:
-- each table still needs its own GRANT to them, and row-level security.
DO $$
BEGIN
    IF pg_catalog.to_regnamespace('public') IS NOT NULL THEN
        GRANT USAGE ON SCHEMA public TO flux_service;
        GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO flux_service;
        GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO flux_service;
    END IF;
END
$$;
