-- Purpose: flux.grant_service_defaults(): flux_service gets its rights on every table a project makes.

-- Default privileges, for the role that runs it, on what it creates in schema public from now on: SELECT, INSERT,
-- UPDATE, DELETE and TRUNCATE on tables and views, USAGE, SELECT and UPDATE on sequences (a serial column's
-- nextval), all to flux_service. The migration runner runs it before a project's migrations, so the tables they
-- create (and those the same role makes later in psql) are the service role's at once, with no GRANT in the
-- project. Not REFERENCES nor TRIGGER: a trigger the service role attached would run as whoever writes next.
-- flux_anon and flux_user get no default: each table needs its own GRANT to them, and row-level security.
-- A REVOKE on one table stays; a default revoked with ALTER DEFAULT PRIVILEGES comes back on the next migrate.
-- Returns true when it changed the defaults (false when they were in place, or there is no schema public).
CREATE OR REPLACE FUNCTION flux.grant_service_defaults() RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regnamespace('public') IS NULL THEN
        RETURN false;
    END IF;
    IF (SELECT pg_catalog.count(DISTINCT (d.defaclobjtype, x.privilege_type))
          FROM pg_catalog.pg_default_acl d, pg_catalog.aclexplode(d.defaclacl) AS x
         WHERE d.defaclrole = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
           AND d.defaclnamespace = pg_catalog.to_regnamespace('public')
           AND x.grantee = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = 'flux_service')
           AND (d.defaclobjtype, x.privilege_type) IN (('r', 'SELECT'), ('r', 'INSERT'), ('r', 'UPDATE'),
                                                       ('r', 'DELETE'), ('r', 'TRUNCATE'), ('S', 'USAGE'),
                                                       ('S', 'SELECT'), ('S', 'UPDATE'))) = 8 THEN
        RETURN false;
    END IF;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public
        GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO flux_service;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO flux_service;
    RETURN true;
END
$$;

COMMENT ON FUNCTION flux.grant_service_defaults() IS
    'Default privileges for the calling role: flux_service may read and write every table and sequence it '
    'creates in schema public. The migration runner runs it before a project''s migrations.';

-- It changes the caller's default privileges; only the DBA who migrates runs it.
REVOKE EXECUTE ON FUNCTION flux.grant_service_defaults() FROM PUBLIC;
