-- Purpose: mutation tracking: flux.track(regclass) installs one trigger that records every row write.

-- Records one row write in flux.mutations. Arguments: the tracked table's relkind ('r', or 'p' when the write
-- arrives through a partition and is recorded under the partitioned table's name), then its primary-key columns.
-- SECURITY DEFINER, owned by flux_recorder (see the end of this file), so a request role can record without any
-- right on flux.mutations, and code the trigger runs on a user's behalf (to_jsonb calls user-defined casts) has
-- no right but inserting mutations.
-- Every write of a request pays for this function, so it runs one statement (the insert) where it can: the
-- changed columns of an INSERT or DELETE, and the key, are computed in it, and the tenant is read from the
-- settings here rather than through flux.tenant_id() (a call of SQL functions that cannot be inlined, planned
-- anew at each statement: about half of what the trigger cost; bench/request_cost.py).
CREATE OR REPLACE FUNCTION flux.tg_mutations__record() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_row jsonb;
    new_row jsonb;
    changed_columns text[];
    schema_name text := TG_TABLE_SCHEMA;
    table_name text := TG_TABLE_NAME;
    tenant text := coalesce(nullif(pg_catalog.current_setting('flux.tenant_id', true), ''),
                            nullif(pg_catalog.current_setting('flux.claims', true), '')::jsonb ->> 'tenant_id');
BEGIN
    IF tenant !~* '^\{?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?$' THEN
        PERFORM flux.tenant_id();  -- not a uuid: raises FX010, as the function every other reader calls does
    END IF;
    IF TG_ARGV[0] = 'p' THEN
        SELECT n.nspname, c.relname INTO schema_name, table_name
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = pg_catalog.pg_partition_root(TG_RELID);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := pg_catalog.to_jsonb(OLD);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := pg_catalog.to_jsonb(NEW);
    END IF;
    IF TG_OP = 'UPDATE' THEN
        SELECT coalesce(pg_catalog.array_agg(n.key ORDER BY n.key), '{}')
          INTO changed_columns
          FROM pg_catalog.jsonb_each(new_row) AS n
         WHERE n.value IS DISTINCT FROM old_row -> n.key;
    END IF;

    INSERT INTO flux.mutations (request_id, span_seq, actor, tenant_id, table_schema, table_name, op, row_pk, old,
                                new, changed)
    SELECT nullif(pg_catalog.current_setting('flux.request_id', true), '')::uuid,
           nullif(pg_catalog.current_setting('flux.span_seq', true), '')::integer,
           session_user,
           tenant::uuid,
           schema_name,
           table_name,
           TG_OP,
           CASE WHEN pg_catalog.cardinality(TG_ARGV) = 2  -- a key of one column, the usual case: no aggregate
                THEN pg_catalog.jsonb_build_object(TG_ARGV[1], coalesce(new_row, old_row) -> TG_ARGV[1])
                ELSE (SELECT pg_catalog.jsonb_object_agg(k, coalesce(new_row, old_row) -> k)
                        FROM pg_catalog.unnest(TG_ARGV[1:]) AS k)
           END,
           old_row,
           new_row,
           coalesce(changed_columns,  -- an INSERT or DELETE changes every column
                    (SELECT pg_catalog.array_agg(k ORDER BY k)
                       FROM pg_catalog.jsonb_object_keys(coalesce(new_row, old_row)) AS k));
    RETURN NULL;
END
$$;

-- TRUNCATE fires no row triggers, so record every row it is about to remove as a DELETE (flux.track grants
-- flux_recorder SELECT on the table for this).
CREATE OR REPLACE FUNCTION flux.tg_mutations__record_truncate() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    schema_name text := TG_TABLE_SCHEMA;
    table_name text := TG_TABLE_NAME;
BEGIN
    IF TG_ARGV[0] = 'p' THEN  -- a partition of a tracked partitioned table: record under the table's name
        SELECT n.nspname, c.relname INTO schema_name, table_name
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = pg_catalog.pg_partition_root(TG_RELID);
    END IF;
    EXECUTE pg_catalog.format(
        'INSERT INTO flux.mutations (request_id, span_seq, actor, tenant_id, table_schema, table_name, op, row_pk,
                                     old, changed)
         SELECT $1, $6, session_user, $2, $3, $4, ''DELETE'',
                (SELECT pg_catalog.jsonb_object_agg(k, r.data -> k) FROM pg_catalog.unnest($5) AS k),
                r.data,
                (SELECT pg_catalog.array_agg(k ORDER BY k) FROM pg_catalog.jsonb_object_keys(r.data) AS k)
           FROM (SELECT pg_catalog.to_jsonb(t) AS data FROM %s AS t) AS r',
        TG_RELID::regclass)
    USING nullif(pg_catalog.current_setting('flux.request_id', true), '')::uuid,
          flux.tenant_id(), schema_name, table_name, TG_ARGV[1:],
          nullif(pg_catalog.current_setting('flux.span_seq', true), '')::integer;
    RETURN NULL;
END
$$;

-- The tables that hold a tracked table's rows: itself, or the leaf partitions of a partitioned table. TRUNCATE
-- triggers go on these (statement triggers are not inherited, and a TRUNCATE of the parent fires them all).
CREATE OR REPLACE FUNCTION flux.tracked_leaves(target regclass) RETURNS SETOF regclass
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT target WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree(target) AS p WHERE p.level > 0)
    UNION ALL
    SELECT p.relid FROM pg_catalog.pg_partition_tree(target) AS p WHERE p.isleaf AND p.level > 0
$$;

-- Refuses what flux.track and flux.untrack cannot work on: views, partitions, Flux's own tables.
CREATE OR REPLACE FUNCTION flux.check_trackable(target regclass) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind "char";
    schema_name name;
    is_partition boolean;
BEGIN
    SELECT c.relkind, n.nspname, c.relispartition INTO kind, schema_name, is_partition
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = target;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', target
            USING ERRCODE = 'FX501', HINT = 'only tables can be tracked; track the table behind the view';
    END IF;
    IF schema_name = 'flux' THEN
        RAISE EXCEPTION '% belongs to Flux itself', target
            USING ERRCODE = 'FX501', HINT = 'track your own tables; Flux''s own tables are not tracked';
    END IF;
    IF is_partition THEN
        RAISE EXCEPTION '% is a partition', target
            USING ERRCODE = 'FX501', HINT = 'track (or untrack) its partitioned table: that covers every partition';
    END IF;
END
$$;

-- Start recording every write to a table (again, with its current primary key, if already tracked).
CREATE OR REPLACE FUNCTION flux.track(target regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_columns text[];
    key_arguments text;
    leaf regclass;
BEGIN
    PERFORM flux.check_trackable(target);
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY key.position)
      INTO key_columns
      FROM pg_catalog.pg_constraint c
     CROSS JOIN LATERAL pg_catalog.unnest(c.conkey) WITH ORDINALITY AS key(attnum, position)
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = key.attnum
     WHERE c.conrelid = target AND c.contype = 'p';
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', target
            USING ERRCODE = 'FX501', HINT = 'add one (ALTER TABLE ... ADD PRIMARY KEY) and track the table again';
    END IF;

    SELECT pg_catalog.string_agg(pg_catalog.quote_literal(k), ', ') INTO key_arguments
      FROM pg_catalog.unnest(ARRAY[(SELECT c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = target)]
                             || key_columns) AS k;
    -- Every write is recorded but a replay's rewind putting rows back: flux.undo_mutations sets flux.replay_call
    -- to `@undo` or `@rewind` around the statements that do, as the role that owns Flux (they are rolled back
    -- with the replay). A request cannot pass for one: it may not set Flux's settings, and never runs as that
    -- role; nor can another role, whatever it sets. On any other write, one setting lookup decides.
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER flux_mutations AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW '
        'WHEN (coalesce(pg_catalog.current_setting(''flux.replay_call'', true), '''')'
        '      NOT IN (''@undo'', ''@rewind'') OR CURRENT_USER <> %L) '
        'EXECUTE FUNCTION flux.tg_mutations__record(%s)',
        target,
        (SELECT pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n WHERE n.nspname = 'flux'),
        key_arguments);
    -- A replay gives the rows it writes again their recorded generated values (sql/functions/025_replay.sql);
    -- named to fire after the table's own BEFORE triggers. A rewind's rows (`@rewind`) keep theirs.
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER zz_flux_replay_pin BEFORE INSERT OR UPDATE ON %s FOR EACH ROW '
        'WHEN (pg_catalog.current_setting(''flux.replay_call'', true) > '''''
        '      AND pg_catalog.current_setting(''flux.replay_call'', true) <> ''@rewind'') '
        'EXECUTE FUNCTION flux.tg_mutations__pin_replay(%s)', target, key_arguments);
    -- flux_recorder reads the rows a TRUNCATE removes; partitions added later need flux.track again.
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO flux_recorder',
                              (SELECT n.nspname FROM pg_catalog.pg_class c
                                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target));
    FOR leaf IN SELECT flux.tracked_leaves(target) LOOP
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE TRIGGER flux_mutations_truncate BEFORE TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_mutations__record_truncate(%s)', leaf, key_arguments);
        EXECUTE pg_catalog.format('GRANT SELECT ON %s TO flux_recorder', leaf);
    END LOOP;
END
$$;

-- Stop recording writes to a table; its recorded history stays.
CREATE OR REPLACE FUNCTION flux.untrack(target regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    leaf regclass;
BEGIN
    PERFORM flux.check_trackable(target);
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS flux_mutations ON %s', target);
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS zz_flux_replay_pin ON %s', target);
    FOR leaf IN SELECT flux.tracked_leaves(target) LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS flux_mutations_truncate ON %s', leaf);
        EXECUTE pg_catalog.format('REVOKE SELECT ON %s FROM flux_recorder', leaf);
    END LOOP;
END
$$;

-- The recording functions run as flux_recorder, and only a trigger installed by flux.track may call them. A new
-- owner needs CREATE on the schema at the moment of the change only, so the grant is taken back at once.
GRANT CREATE ON SCHEMA flux TO flux_recorder;
ALTER FUNCTION flux.tg_mutations__record() OWNER TO flux_recorder;
ALTER FUNCTION flux.tg_mutations__record_truncate() OWNER TO flux_recorder;
REVOKE CREATE ON SCHEMA flux FROM flux_recorder;
REVOKE EXECUTE ON FUNCTION flux.tg_mutations__record(), flux.tg_mutations__record_truncate() FROM PUBLIC;

-- Track every table of the given schemas that is not tracked yet: the migration runner calls it after a
-- project's migrations, so each table a project creates records its writes. A table opts out with a comment
-- that contains @flux:untracked; a table without a primary key is skipped with a warning. A tracked
-- partitioned table is tracked again, so partitions added since get their TRUNCATE trigger. Returns the
-- tables it started tracking.
CREATE OR REPLACE FUNCTION flux.track_all(schemas text[] DEFAULT ARRAY['public']) RETURNS SETOF regclass
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    candidate regclass;
BEGIN
    FOR candidate IN
        SELECT c.oid::regclass
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY(schemas) AND n.nspname <> 'flux'
           AND c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND coalesce(pg_catalog.obj_description(c.oid, 'pg_class'), '') NOT LIKE '%@flux:untracked%'
         ORDER BY n.nspname, c.relname
    LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = candidate AND t.tgname = 'flux_mutations')
        THEN
            IF (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = candidate) = 'p' THEN
                PERFORM flux.track(candidate);  -- covers partitions added since
            END IF;
            CONTINUE;
        END IF;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.conrelid = candidate AND k.contype = 'p') THEN
            RAISE WARNING 'table % has no primary key, so its writes are not recorded', candidate
                USING HINT = 'add a primary key, or opt out: COMMENT ON TABLE ... IS ''@flux:untracked''';
            CONTINUE;
        END IF;
        PERFORM flux.track(candidate);
        RETURN NEXT candidate;
    END LOOP;
END
$$;
