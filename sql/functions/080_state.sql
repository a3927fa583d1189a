-- Purpose: the history of one row, and who last set each of its columns, from flux.mutations (one index scan
-- on mutations_row_idx each); each row's last change in a table.

-- A table's schema and name as flux.mutations spells them. Called as a scalar subquery, it is worked out once
-- before the scan, so the scan can use mutations_row_idx (a join on pg_class made Postgres scan every row).
CREATE OR REPLACE FUNCTION flux.table_names(table_ref regclass) RETURNS TABLE (schema_name text, table_name text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.nspname::text, c.relname::text
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = table_ref
$$;

-- Every version of one row, oldest first: the operation, the changed columns with old and new values, and
-- the request, function and code that made it (or, for writes made outside Flux, the database user).
--   SELECT at, op, changed, request_id, function FROM flux.row_history('notes', '{"id": 1}');
CREATE OR REPLACE FUNCTION flux.row_history(table_ref regclass, pk jsonb)
    RETURNS TABLE (mutation_id bigint, at timestamptz, op text, changed text[], old jsonb, new jsonb,
                   request_id uuid, function text, code_sha text, deployment_id bigint, actor text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.id, m.at, m.op, m.changed, m.old, m.new, m.request_id, r.function, r.code_sha, r.deployment_id,
           m.actor
      FROM flux.mutations m
      LEFT JOIN flux.requests r ON r.id = m.request_id
     WHERE (m.table_schema, m.table_name) = (SELECT * FROM flux.table_names(table_ref)) AND m.row_pk = pk
     ORDER BY m.id
$$;

-- For each column of one row, the change that last set it: its value then, and who made the change.
--   SELECT column_name, value, op, function FROM flux.row_blame('notes', '{"id": 1}');
CREATE OR REPLACE FUNCTION flux.row_blame(table_ref regclass, pk jsonb)
    RETURNS TABLE (column_name text, value jsonb, mutation_id bigint, at timestamptz, op text,
                   request_id uuid, function text, code_sha text, deployment_id bigint, actor text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT ON (col) col, h.new -> col, h.mutation_id, h.at, h.op, h.request_id, h.function,
           h.code_sha, h.deployment_id, h.actor
      FROM flux.row_history(table_ref, pk) h
     CROSS JOIN LATERAL pg_catalog.unnest(h.changed) AS col
     ORDER BY col, h.mutation_id DESC
$$;

COMMENT ON FUNCTION flux.row_history(regclass, jsonb) IS 'Every version of one row, oldest first, with who made it.';
COMMENT ON FUNCTION flux.row_blame(regclass, jsonb) IS 'For each column of one row, the change that last set it.';

-- For each row of a tracked table that still exists, its last recorded change and who made it (rows whose
-- last change deleted them are left out). One pass over mutations_row_idx for the table.
--   SELECT row_pk, op, at, function FROM flux.table_blame('notes');
CREATE OR REPLACE FUNCTION flux.table_blame(table_ref regclass)
    RETURNS TABLE (row_pk jsonb, mutation_id bigint, at timestamptz, op text, changed text[],
                   request_id uuid, function text, code_sha text, deployment_id bigint, actor text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT last.row_pk, last.id, last.at, last.op, last.changed, last.request_id, r.function, r.code_sha,
           r.deployment_id, last.actor
      FROM (SELECT DISTINCT ON (m.row_pk) m.*
              FROM flux.mutations m
             WHERE (m.table_schema, m.table_name) = (SELECT * FROM flux.table_names(table_ref))
             ORDER BY m.row_pk, m.id DESC) AS last
      LEFT JOIN flux.requests r ON r.id = last.request_id
     WHERE last.op <> 'DELETE'
     ORDER BY last.row_pk
$$;

COMMENT ON FUNCTION flux.table_blame(regclass) IS 'For each row of a tracked table, its last change and who made it.';
