-- Purpose: tell every Flux process to reload its catalog (channel flux_catalog) when DDL runs or policies change.

CREATE FUNCTION flux.tg_catalog__notify() RETURNS event_trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('flux_catalog', TG_TAG);
END
$$;

-- Column policies change what the compiler allows, so a change to them reloads the catalog too.
CREATE FUNCTION flux.tg_column_policies__notify() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('flux_catalog', 'column_policies');
    RETURN NULL;
END
$$;

CREATE TRIGGER column_policies_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flux.column_policies
    FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_column_policies__notify();

-- Event triggers need a superuser; without one, processes reload their catalog only when restarted.
DO $$
BEGIN
    CREATE EVENT TRIGGER flux_catalog_changed ON ddl_command_end EXECUTE FUNCTION flux.tg_catalog__notify();
    CREATE EVENT TRIGGER flux_catalog_dropped ON sql_drop EXECUTE FUNCTION flux.tg_catalog__notify();
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'no event trigger for catalog changes (needs a superuser): restart Flux after DDL';
END
$$;
