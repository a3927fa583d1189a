-- Purpose: mutation tracking: flux.track(regclass) installs one trigger that records every row write.

-- Records one row write in flux.mutations. Arguments: the table's primary-key columns, in key order.
-- SECURITY DEFINER so a request role (flux_user) can record without any right on flux.mutations.
CREATE OR REPLACE FUNCTION flux.tg_mutations__record() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    old_row jsonb;
    new_row jsonb;
    key_source jsonb;
    changed_columns text[];
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_row := pg_catalog.to_jsonb(OLD);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := pg_catalog.to_jsonb(NEW);
    END IF;
    key_source := coalesce(new_row, old_row);

    IF TG_OP = 'UPDATE' THEN
        SELECT coalesce(pg_catalog.array_agg(n.key ORDER BY n.key), '{}')
          INTO changed_columns
          FROM pg_catalog.jsonb_each(new_row) AS n
         WHERE n.value IS DISTINCT FROM old_row -> n.key;
    ELSE
        SELECT pg_catalog.array_agg(k ORDER BY k)
          INTO changed_columns
          FROM pg_catalog.jsonb_object_keys(key_source) AS k;
    END IF;

    INSERT INTO flux.mutations (request_id, actor, tenant_id, table_schema, table_name, op, row_pk, old, new, changed)
    VALUES (
        nullif(pg_catalog.current_setting('flux.request_id', true), '')::uuid,
        session_user,
        flux.tenant_id(),
        TG_TABLE_SCHEMA,
        TG_TABLE_NAME,
        TG_OP,
        (SELECT pg_catalog.jsonb_object_agg(k, key_source -> k) FROM pg_catalog.unnest(TG_ARGV) AS k),
        old_row,
        new_row,
        changed_columns
    );
    RETURN NULL;
END
$$;

-- TRUNCATE fires no row triggers, so record every row it is about to remove as a DELETE.
CREATE OR REPLACE FUNCTION flux.tg_mutations__record_truncate() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
BEGIN
    EXECUTE pg_catalog.format(
        'INSERT INTO flux.mutations (request_id, actor, tenant_id, table_schema, table_name, op, row_pk, old, changed)
         SELECT $1, session_user, $2, $3, $4, ''DELETE'',
                (SELECT pg_catalog.jsonb_object_agg(k, r.data -> k) FROM pg_catalog.unnest($5) AS k),
                r.data,
                (SELECT pg_catalog.array_agg(k ORDER BY k) FROM pg_catalog.jsonb_object_keys(r.data) AS k)
           FROM (SELECT pg_catalog.to_jsonb(t) AS data FROM %s AS t) AS r',
        TG_RELID::regclass)
    USING nullif(pg_catalog.current_setting('flux.request_id', true), '')::uuid,
          flux.tenant_id(), TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV;
    RETURN NULL;
END
$$;

-- Start recording every write to a table (again, with its current primary key, if already tracked).
CREATE OR REPLACE FUNCTION flux.track(target regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
DECLARE
    kind "char";
    schema_name name;
    key_columns text[];
    key_arguments text;
BEGIN
    SELECT c.relkind, n.nspname INTO kind, schema_name
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = target;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', target
            USING ERRCODE = 'FX501', HINT = 'only tables can be tracked; track the table behind the view';
    END IF;
    IF schema_name = 'flux' THEN
        RAISE EXCEPTION '% belongs to Flux itself', target
            USING ERRCODE = 'FX501', HINT = 'track your own tables; Flux records its own tables already';
    END IF;

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
      FROM pg_catalog.unnest(key_columns) AS k;
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER flux_mutations AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION flux.tg_mutations__record(%s)', target, key_arguments);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER flux_mutations_truncate BEFORE TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_mutations__record_truncate(%s)', target, key_arguments);
END
$$;

-- Stop recording writes to a table; its recorded history stays.
CREATE OR REPLACE FUNCTION flux.untrack(target regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS flux_mutations ON %s', target);
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS flux_mutations_truncate ON %s', target);
END
$$;
