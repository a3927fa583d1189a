-- Purpose: the core execution record: roles, requests, spans (partitioned by day), mutations and their views.

-- Roles are cluster-wide, so another database on the same server may have created them already.
-- flux_anon, flux_user, flux_service: the roles a request runs as. flux_recorder: owns the mutation triggers,
-- so they run with no right but recording (never as the superuser who migrated).
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['flux_anon', 'flux_user', 'flux_service', 'flux_recorder'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- a concurrent migrate of another database created it first
            END;
        END IF;
    END LOOP;
    -- flux_recorder reads a table's rows only to record a TRUNCATE, and must see all of them.
    FOREACH role_name IN ARRAY ARRAY['flux_service', 'flux_recorder'] LOOP
        IF NOT (SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('ALTER ROLE %I BYPASSRLS', role_name);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE WARNING '% cannot bypass row-level security: migrate once as a superuser to set it', role_name;
            END;
        END IF;
    END LOOP;
    -- The connecting role switches to the request roles with SET LOCAL ROLE and hands the triggers to
    -- flux_recorder, so it must be a member of each.
    EXECUTE format('GRANT flux_anon, flux_user, flux_service, flux_recorder TO %I', current_user);
END
$$;

GRANT USAGE ON SCHEMA flux TO flux_anon, flux_user, flux_service, flux_recorder;

CREATE TABLE flux.requests (
    id                 uuid        NOT NULL,
    tenant_id          uuid,
    kind               text        NOT NULL DEFAULT 'http',
    method             text,
    path               text,
    route_id           bigint,
    function           text,
    deployment_id      bigint,
    code_sha           text,
    status             integer,
    ok                 boolean     NOT NULL,
    started_at         timestamptz NOT NULL DEFAULT now(),
    duration_us        bigint,
    input              jsonb,
    output             jsonb,
    error              jsonb,
    trace_id           text,
    parent_request_id  uuid,
    replay_of          uuid,
    CONSTRAINT requests_pkey PRIMARY KEY (id),
    CONSTRAINT requests_kind_check CHECK (kind IN ('http', 'job', 'cron', 'replay')),
    CONSTRAINT requests_duration_us_check CHECK (duration_us >= 0)
);

CREATE INDEX requests_started_at_idx ON flux.requests (started_at DESC);
CREATE INDEX requests_function_started_at_idx ON flux.requests (function, started_at DESC);
CREATE INDEX requests_failed_started_at_idx ON flux.requests (started_at DESC) WHERE NOT ok;
CREATE INDEX requests_parent_request_id_idx ON flux.requests (parent_request_id)
    WHERE parent_request_id IS NOT NULL;

COMMENT ON TABLE flux.requests IS
    'One row per execution (HTTP request, job attempt, cron tick, replay): its input, output and error.';

-- Spans are the bulk of the record; daily partitions make retention a DROP TABLE.
-- The partition key must be part of the primary key; (request_id, seq) is unique in practice.
CREATE TABLE flux.spans (
    request_id   uuid        NOT NULL,
    seq          integer     NOT NULL,
    span_id      text        NOT NULL,
    parent_seq   integer,
    tenant_id    uuid,
    module       text        NOT NULL,
    name         text        NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_us  bigint,
    ok           boolean     NOT NULL DEFAULT true,
    attributes   jsonb,
    input        jsonb,
    output       jsonb,
    error        jsonb,
    CONSTRAINT spans_pkey PRIMARY KEY (request_id, seq, started_at),
    CONSTRAINT spans_module_check CHECK (
        module IN ('gateway', 'runtime', 'data', 'queue', 'fetch', 'secrets', 'log', 'clock')
    ),
    CONSTRAINT spans_seq_check CHECK (seq >= 0)
) PARTITION BY RANGE (started_at);

-- Catches spans outside the days created ahead (a skewed clock); flux.create_span_partitions moves them out.
CREATE TABLE flux.spans_default PARTITION OF flux.spans DEFAULT;

COMMENT ON TABLE flux.spans IS
    'Every step of an execution in order (seq), with its full input and output. Partitioned by day (UTC).';

CREATE TABLE flux.mutations (
    id            bigint      GENERATED ALWAYS AS IDENTITY,
    request_id    uuid,
    actor         text        NOT NULL DEFAULT session_user,
    tenant_id     uuid,
    table_schema  text        NOT NULL,
    table_name    text        NOT NULL,
    op            text        NOT NULL,
    row_pk        jsonb       NOT NULL,
    old           jsonb,
    new           jsonb,
    changed       text[],
    txid          bigint      NOT NULL DEFAULT txid_current(),
    at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mutations_pkey PRIMARY KEY (id),
    CONSTRAINT mutations_op_check CHECK (op IN ('INSERT', 'UPDATE', 'DELETE'))
);

GRANT INSERT ON flux.mutations TO flux_recorder;

CREATE INDEX mutations_row_idx ON flux.mutations (table_schema, table_name, row_pk, id);
CREATE INDEX mutations_request_id_idx ON flux.mutations (request_id) WHERE request_id IS NOT NULL;

COMMENT ON TABLE flux.mutations IS
    'Every INSERT, UPDATE and DELETE on a tracked table, with old and new values and the request that made it '
    '(request_id is null for writes made outside Flux; actor is the database session user).';

CREATE VIEW flux.request_log AS
SELECT r.id AS request_id,
       r.started_at,
       r.kind,
       r.method,
       r.path,
       r.function,
       r.status,
       r.ok,
       round(r.duration_us / 1000.0, 3) AS duration_ms,
       r.error ->> 'code' AS error_code,
       r.error ->> 'message' AS error_message,
       r.code_sha,
       r.tenant_id,
       r.parent_request_id,
       (SELECT count(*) FROM flux.spans s WHERE s.request_id = r.id) AS spans
  FROM flux.requests r;

COMMENT ON VIEW flux.request_log IS 'Requests for people: durations in ms, the error code pulled out.';

CREATE VIEW flux.mutation_log AS
SELECT m.id,
       m.at,
       m.table_schema,
       m.table_name,
       m.op,
       m.row_pk,
       m.changed,
       m.old,
       m.new,
       m.request_id,
       r.method,
       r.path,
       r.function,
       r.code_sha,
       m.actor,
       m.tenant_id,
       m.txid
  FROM flux.mutations m
  LEFT JOIN flux.requests r ON r.id = m.request_id;

COMMENT ON VIEW flux.mutation_log IS 'Mutations with the request path, function and code version that made them.';

CREATE VIEW flux.tracked_tables AS
SELECT n.nspname AS table_schema,
       c.relname AS table_name,
       c.oid::regclass AS table_ref
  FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE t.tgname = 'flux_mutations' AND t.tgparentid = 0;  -- not the clones on partitions

COMMENT ON VIEW flux.tracked_tables IS 'Tables whose writes are recorded in flux.mutations (see flux.track).';
