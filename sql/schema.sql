--
-- PostgreSQL database dump
--



SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: flux; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA flux;


--
-- Name: rewound_table; Type: TYPE; Schema: flux; Owner: -
--

CREATE TYPE flux.rewound_table AS (
	table_schema text,
	table_name text,
	some_key jsonb,
	made jsonb[],
	restored jsonb[],
	key_changed boolean,
	writes integer
);


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: jobs; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.jobs (
    id bigint NOT NULL,
    tenant_id uuid,
    queue text DEFAULT 'default'::text NOT NULL,
    function text NOT NULL,
    payload jsonb DEFAULT 'null'::jsonb NOT NULL,
    status text DEFAULT 'queued'::text NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    run_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 5 NOT NULL,
    idempotency_key text,
    locked_by text,
    locked_until timestamp with time zone,
    last_error jsonb,
    parent_request_id uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    role text DEFAULT 'service'::text NOT NULL,
    claims jsonb DEFAULT '{}'::jsonb NOT NULL,
    cron_name text,
    last_request_id uuid,
    CONSTRAINT jobs_max_attempts_check CHECK (((max_attempts >= 1) AND (max_attempts <= 100))),
    CONSTRAINT jobs_queue_check CHECK ((queue ~ '^[a-z][a-z0-9_-]{0,62}$'::text)),
    CONSTRAINT jobs_role_check CHECK ((role = ANY (ARRAY['anon'::text, 'user'::text, 'service'::text]))),
    CONSTRAINT jobs_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'running'::text, 'done'::text, 'failed'::text, 'dead'::text, 'cancelled'::text])))
);


--
-- Name: TABLE jobs; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.jobs IS 'Durable jobs: pushed by functions (in their request''s transaction), run by queue workers.';


--
-- Name: COLUMN jobs.status; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON COLUMN flux.jobs.status IS 'queued, running (locked_by holds a lease until locked_until), failed (an attempt failed; retried at run_at). Finished jobs (done, dead, cancelled) are moved to flux.job_history.';


--
-- Name: after_failure(flux.jobs, uuid, jsonb, interval); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.after_failure(job flux.jobs, request_id uuid, error jsonb, delay interval) RETURNS text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF job.attempts >= job.max_attempts THEN
        PERFORM flux.finish_job(job, 'dead', request_id, error);
        RETURN 'dead';
    END IF;
    UPDATE flux.jobs AS j
       SET status = 'failed', run_at = pg_catalog.now() + delay, locked_by = NULL, locked_until = NULL,
           last_error = error, last_request_id = coalesce(request_id, j.last_request_id)
     WHERE j.id = job.id;
    RETURN 'failed';
END
$$;


--
-- Name: announce_requests(uuid[]); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.announce_requests(ids uuid[]) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF EXISTS (SELECT FROM flux.request_followers WHERE expires_at > pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify('flux_requests', pg_catalog.string_agg(i.id::text, ',' ORDER BY i.ord))
           FROM pg_catalog.unnest(ids) WITH ORDINALITY AS i (id, ord)
          GROUP BY (i.ord - 1) / 200;
        INSERT INTO flux.request_follower_inbox (follower_id, request_id)
        SELECT f.id, i.id
          FROM flux.request_followers f CROSS JOIN pg_catalog.unnest(ids) AS i (id)
         WHERE f.keeps_inbox AND f.expires_at > pg_catalog.now();
    END IF;
END
$$;


--
-- Name: FUNCTION announce_requests(ids uuid[]); Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON FUNCTION flux.announce_requests(ids uuid[]) IS 'Announces newly recorded requests on channel flux_requests (and in follower inboxes) while a row of flux.request_followers is live; Flux calls it with each statement that records requests.';


--
-- Name: apply_column_policies(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.apply_column_policies() RETURNS SETOF text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    policy record;
    target record;
    relation oid;
    relation_kind "char";
    qualified_name text;
    table_columns text[];
    flux_role text;
    database_role text;
    role_oid oid;
    privilege_name text;
    denied text[];
    allowed text[];
    held_on_table boolean;
    held_columns text[];
    converted boolean;
    changed_columns text[];
    statement text;
BEGIN
    -- Two runs at once would both convert the same grants.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('flux.apply_column_policies'));

    -- Every policy must name an existing table and column before any privilege changes.
    FOR policy IN
        SELECT p.id, p.table_schema, p.table_name, p.column_name FROM flux.column_policies p ORDER BY p.id
    LOOP
        SELECT c.oid, c.relkind INTO relation, relation_kind
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = policy.table_schema AND c.relname = policy.table_name;
        qualified_name := pg_catalog.format('%I.%I', policy.table_schema, policy.table_name);
        IF relation IS NULL OR relation_kind NOT IN ('r', 'p', 'v', 'm', 'f') THEN
            RAISE EXCEPTION 'column policy % names table %, which does not exist', policy.id, qualified_name
                USING ERRCODE = 'FX101',
                      HINT = pg_catalog.format(
                          'create the table, or delete the policy: DELETE FROM flux.column_policies WHERE id = %s',
                          policy.id);
        END IF;
        IF NOT EXISTS (
            SELECT FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = relation AND a.attname = policy.column_name AND a.attnum > 0 AND NOT a.attisdropped
        ) THEN
            RAISE EXCEPTION 'column policy % names column %.%, which does not exist',
                    policy.id, qualified_name, pg_catalog.quote_ident(policy.column_name)
                USING ERRCODE = 'FX102',
                      HINT = pg_catalog.format(
                          '%s has columns %s; fix column_name, or delete the policy: '
                          'DELETE FROM flux.column_policies WHERE id = %s',
                          qualified_name,
                          (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
                             FROM pg_catalog.pg_attribute a
                            WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped),
                          policy.id);
        END IF;
    END LOOP;

    -- A dropped table took its grants with it.
    DELETE FROM flux.column_policy_grants g
     WHERE NOT EXISTS (
         SELECT FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = g.table_schema AND c.relname = g.table_name
     );

    -- Tables with policies, and tables whose last policy went (their table-level grants are given back).
    FOR target IN
        SELECT p.table_schema, p.table_name FROM flux.column_policies p
         UNION
        SELECT g.table_schema, g.table_name FROM flux.column_policy_grants g
         ORDER BY 1, 2
    LOOP
        relation := (
            SELECT c.oid
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = target.table_schema AND c.relname = target.table_name
        );
        qualified_name := pg_catalog.format('%I.%I', target.table_schema, target.table_name);
        table_columns := ARRAY(
            SELECT a.attname::text
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum
        );

        FOREACH flux_role IN ARRAY ARRAY['anon', 'user', 'service'] LOOP
            database_role := 'flux_' || flux_role;
            role_oid := (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = database_role);

            FOREACH privilege_name IN ARRAY ARRAY['SELECT', 'INSERT', 'UPDATE'] LOOP
                denied := ARRAY(
                    SELECT p.column_name
                      FROM flux.column_policies p
                     WHERE p.table_schema = target.table_schema
                       AND p.table_name = target.table_name
                       AND p.role = flux_role
                       AND CASE WHEN privilege_name = 'SELECT' THEN NOT p.readable OR p.mask IS NOT NULL
                                ELSE NOT p.writable END
                );
                allowed := ARRAY(
                    SELECT u.column_name
                      FROM pg_catalog.unnest(table_columns) WITH ORDINALITY AS u(column_name, position)
                     WHERE u.column_name <> ALL (denied)
                     ORDER BY u.position
                );
                -- Only grants made to the role itself count (not PUBLIC's, not those of roles it belongs to).
                held_on_table := EXISTS (
                    SELECT FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) AS x
                     WHERE c.oid = relation AND x.grantee = role_oid AND x.privilege_type = privilege_name
                );
                held_columns := ARRAY(
                    SELECT a.attname::text
                      FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped
                       AND EXISTS (
                           SELECT FROM pg_catalog.aclexplode(a.attacl) AS x
                            WHERE x.grantee = role_oid AND x.privilege_type = privilege_name
                       )
                     ORDER BY a.attnum
                );
                converted := EXISTS (
                    SELECT FROM flux.column_policy_grants g
                     WHERE g.table_schema = target.table_schema AND g.table_name = target.table_name
                       AND g.role = flux_role AND g.privilege = privilege_name
                );

                -- Apply always leaves a converted privilege on at least one column, so none at all means a
                -- REVOKE on the whole table since the last run: the role no longer holds it, so forget it
                -- instead of granting it again.
                IF converted AND NOT held_on_table AND pg_catalog.cardinality(held_columns) = 0 THEN
                    DELETE FROM flux.column_policy_grants g
                     WHERE g.table_schema = target.table_schema AND g.table_name = target.table_name
                       AND g.role = flux_role AND g.privilege = privilege_name;
                    converted := false;
                END IF;

                IF pg_catalog.cardinality(denied) = 0 THEN
                    -- No rule restricts this privilege any more: give the table-level grant back.
                    IF converted THEN
                        IF pg_catalog.cardinality(held_columns) > 0 THEN
                            -- On a table, REVOKE also drops every column grant.
                            statement := pg_catalog.format(
                                'REVOKE %s ON %s FROM %I', privilege_name, qualified_name, database_role);
                            EXECUTE statement;
                            RETURN NEXT statement;
                            held_on_table := false;
                        END IF;
                        IF NOT held_on_table THEN
                            statement := pg_catalog.format(
                                'GRANT %s ON %s TO %I', privilege_name, qualified_name, database_role);
                            EXECUTE statement;
                            RETURN NEXT statement;
                        END IF;
                        DELETE FROM flux.column_policy_grants g
                         WHERE g.table_schema = target.table_schema AND g.table_name = target.table_name
                           AND g.role = flux_role AND g.privilege = privilege_name;
                    END IF;
                    CONTINUE;
                END IF;

                IF held_on_table THEN
                    statement := pg_catalog.format(
                        'REVOKE %s ON %s FROM %I', privilege_name, qualified_name, database_role);
                    EXECUTE statement;
                    RETURN NEXT statement;
                    -- A superuser revokes as the owner, so a grant made by another grantor survives.
                    IF EXISTS (
                        SELECT FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) AS x
                         WHERE c.oid = relation AND x.grantee = role_oid AND x.privilege_type = privilege_name
                    ) THEN
                        RAISE EXCEPTION 'cannot take % on % away from %: another role granted it',
                                privilege_name, qualified_name, database_role
                            USING ERRCODE = 'insufficient_privilege',
                                  HINT = 'revoke it as the role that granted it (see \dp), grant it again as '
                                         'the table owner, and run flux.apply_column_policies() again';
                    END IF;
                    held_columns := '{}';
                    converted := true;
                END IF;

                IF converted AND pg_catalog.cardinality(allowed) = 0 THEN
                    -- Every column is denied: nothing stays granted, so a later REVOKE would leave no trace to
                    -- tell it apart. Forget the conversion rather than risk giving back what a DBA revoked.
                    DELETE FROM flux.column_policy_grants g
                     WHERE g.table_schema = target.table_schema AND g.table_name = target.table_name
                       AND g.role = flux_role AND g.privilege = privilege_name;
                    converted := false;
                    RAISE NOTICE '% keeps no column of % for %; deleting the policies will not give it back',
                            database_role, privilege_name, qualified_name
                        USING HINT = pg_catalog.format('GRANT %s ON %s TO %I again after deleting them',
                                                       privilege_name, qualified_name, database_role);
                END IF;

                IF converted THEN
                    changed_columns := ARRAY(
                        SELECT c FROM pg_catalog.unnest(allowed) AS c WHERE c <> ALL (held_columns)
                    );
                    IF pg_catalog.cardinality(changed_columns) > 0 THEN
                        statement := pg_catalog.format(
                            'GRANT %s (%s) ON %s TO %I',
                            privilege_name,
                            (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ')
                               FROM pg_catalog.unnest(changed_columns) AS c),
                            qualified_name,
                            database_role);
                        EXECUTE statement;
                        RETURN NEXT statement;
                    END IF;
                    INSERT INTO flux.column_policy_grants AS g
                           (table_schema, table_name, role, privilege, granted_columns)
                    VALUES (target.table_schema, target.table_name, flux_role, privilege_name, allowed)
                        ON CONFLICT ON CONSTRAINT column_policy_grants_pkey DO UPDATE
                       SET granted_columns = excluded.granted_columns
                     WHERE g.granted_columns IS DISTINCT FROM excluded.granted_columns;
                END IF;

                -- Denied columns lose their column grants, whoever made them.
                changed_columns := ARRAY(SELECT c FROM pg_catalog.unnest(held_columns) AS c WHERE c = ANY (denied));
                IF pg_catalog.cardinality(changed_columns) > 0 THEN
                    statement := pg_catalog.format(
                        'REVOKE %s (%s) ON %s FROM %I',
                        privilege_name,
                        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ')
                           FROM pg_catalog.unnest(changed_columns) AS c),
                        qualified_name,
                        database_role);
                    EXECUTE statement;
                    RETURN NEXT statement;
                END IF;
            END LOOP;
        END LOOP;
    END LOOP;

    -- Grants to PUBLIC, to a role the Flux role belongs to, or owning the table still let it through.
    FOR policy IN
        SELECT p.table_schema, p.table_name, p.column_name, 'flux_' || p.role AS database_role, v.privilege_name
          FROM flux.column_policies p
         CROSS JOIN LATERAL (
             SELECT 'SELECT' WHERE NOT p.readable OR p.mask IS NOT NULL
             UNION ALL SELECT 'INSERT' WHERE NOT p.writable
             UNION ALL SELECT 'UPDATE' WHERE NOT p.writable
         ) AS v(privilege_name)
         ORDER BY p.id
    LOOP
        qualified_name := pg_catalog.format('%I.%I', policy.table_schema, policy.table_name);
        IF pg_catalog.has_column_privilege(
               policy.database_role::name, qualified_name::regclass, policy.column_name, policy.privilege_name) THEN
            RAISE WARNING '% still has % on %.% despite its column policy',
                    policy.database_role, policy.privilege_name, qualified_name,
                    pg_catalog.quote_ident(policy.column_name)
                USING HINT = 'it holds the privilege through PUBLIC, through a role it is a member of, or by '
                             'owning the table; revoke that grant';
        END IF;
    END LOOP;
END
$$;


--
-- Name: FUNCTION apply_column_policies(); Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON FUNCTION flux.apply_column_policies() IS 'Turns flux.column_policies into column GRANTs for flux_anon, flux_user and flux_service; returns the statements it ran. Idempotent; run it after every migration or GRANT on a table with policies.';


--
-- Name: caller_role(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.caller_role() RETURNS text
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT CASE pg_catalog.current_setting('role', true)
        WHEN 'flux_anon' THEN 'anon'
        WHEN 'flux_user' THEN 'user'
        ELSE 'service'
    END
$$;


--
-- Name: cancel_job(bigint); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.cancel_job(job_id bigint) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    job flux.jobs := flux.find_job(job_id);
BEGIN
    PERFORM flux.lock_job_key(job.tenant_id, job.queue, job.idempotency_key);
    SELECT * INTO job FROM flux.jobs AS j WHERE j.id = job_id AND j.status IN ('queued', 'failed') FOR UPDATE;
    IF NOT FOUND THEN
        SELECT * INTO job FROM flux.all_jobs AS j WHERE j.id = job_id;
        RAISE EXCEPTION 'job % is % and cannot be cancelled', job_id, job.status
            USING ERRCODE = 'FX405', HINT = 'only queued or failed jobs waiting for a retry can be cancelled';
    END IF;
    PERFORM flux.finish_job(job, 'cancelled', NULL, NULL);
    RETURN (SELECT pg_catalog.to_jsonb(h) FROM flux.job_history AS h WHERE h.id = job_id);
END
$$;


--
-- Name: check_answer_size(bigint, bigint); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.check_answer_size(answer_bytes bigint, max_bytes bigint) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF answer_bytes > max_bytes THEN
        RAISE EXCEPTION 'the answer is over % bytes (max_answer_bytes)', max_bytes
            USING ERRCODE = 'FX114',
                  HINT = 'ask for fewer rows or columns (a limit on each relation), or page with after';
    END IF;
    RETURN true;
END
$$;


--
-- Name: check_job(text, text, text, integer, jsonb, text, bigint); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.check_job(which text, function_name text, queue_name text, max_attempts integer, payload jsonb, idempotency_key text, active bigint) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
BEGIN
    IF function_name IS NULL OR function_name !~ '^[A-Za-z_][A-Za-z0-9_-]{0,62}$' THEN
        RAISE EXCEPTION '% function % is not a function name', which, pg_catalog.quote_nullable(function_name)
            USING ERRCODE = 'FX401', HINT = 'name the function as in functions/<name>';
    ELSIF queue_name IS NULL OR queue_name !~ '^[a-z][a-z0-9_-]{0,62}$' THEN
        RAISE EXCEPTION '% queue % is not a queue name', which, pg_catalog.quote_nullable(queue_name)
            USING ERRCODE = 'FX401', HINT = 'use lower-case letters, digits, _ and -';
    ELSIF max_attempts IS NULL OR max_attempts NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION '% max_attempts % is out of range', which, max_attempts
            USING ERRCODE = 'FX401', HINT = 'give a number of attempts from 1 to 100';
    ELSIF idempotency_key = '' THEN
        RAISE EXCEPTION '% idempotency_key is empty', which
            USING ERRCODE = 'FX401', HINT = 'leave it out, or give a non-empty key';
    ELSIF pg_catalog.octet_length(payload::text) > 1048576 THEN
        RAISE EXCEPTION '% payload is larger than 1 MiB', which
            USING ERRCODE = 'FX401', HINT = 'store large data in a table and push its key';
    ELSIF active IS NOT NULL AND NOT EXISTS (SELECT FROM flux.deployment_functions AS f
                                               WHERE f.deployment_id = active AND f.name = function_name) THEN
        RAISE EXCEPTION '% function % is not in the active version', which, pg_catalog.quote_literal(function_name)
            USING ERRCODE = 'FX402', HINT = 'deploy it first, or check its name with `flux deployments ls`';
    END IF;
END
$_$;


--
-- Name: check_trackable(regclass); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.check_trackable(target regclass) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
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


--
-- Name: claim(text); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.claim(name text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT flux.claims() ->> name
$$;


--
-- Name: claim_jobs(text, text[], integer, double precision); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.claim_jobs(worker text, queues text[], batch integer, lease_s double precision) RETURNS SETOF flux.jobs
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_bitmapscan TO 'off'
    AS $$
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT j.id FROM flux.jobs AS j
         WHERE j.status IN ('queued', 'failed') AND j.run_at <= pg_catalog.now()
           AND (queues IS NULL OR j.queue = ANY (queues))
         ORDER BY j.priority DESC, j.run_at, j.id
         LIMIT batch
           FOR UPDATE SKIP LOCKED
    )
    UPDATE flux.jobs AS j
       SET status = 'running', attempts = j.attempts + 1, locked_by = worker,
           locked_until = pg_catalog.now() + pg_catalog.make_interval(secs => lease_s)
      FROM picked
     WHERE j.id = picked.id
    RETURNING j.*;
END
$$;


--
-- Name: claims(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.claims() RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT coalesce(nullif(pg_catalog.current_setting('flux.claims', true), ''), '{}')::jsonb
$$;


--
-- Name: complete_job(bigint, text, integer, uuid); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.complete_job(job_id bigint, worker text, attempt integer, request_id uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    job flux.jobs := flux.held_job(job_id, worker, attempt);
BEGIN
    IF job.id IS NULL THEN
        RAISE EXCEPTION 'job % attempt % lost its lease before it finished', job_id, attempt
            USING ERRCODE = 'FX404', HINT = 'the job runs again; keep functions shorter than the lease';
    END IF;
    PERFORM flux.record_run(job, request_id, worker, true, NULL);
    PERFORM flux.finish_job(job, 'done', request_id, NULL);
END
$$;


--
-- Name: create_day_partitions(regclass, date, date); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.create_day_partitions(parent regclass, first_day date, last_day date) RETURNS SETOF regclass
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    base text := (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = parent);
    time_column name := flux.partition_column(parent);
    day date;
    partition_name text;
    lower_bound timestamptz;
    upper_bound timestamptz;
BEGIN
    -- Two processes maintaining at once would race to create the same table.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(parent::text || ' partitions'));
    FOR day IN SELECT d::date FROM pg_catalog.generate_series(first_day, last_day, interval '1 day') AS d LOOP
        partition_name := base || '_' || pg_catalog.to_char(day, 'YYYYMMDD');
        CONTINUE WHEN pg_catalog.to_regclass(pg_catalog.format('flux.%I', partition_name)) IS NOT NULL;
        lower_bound := day::timestamp AT TIME ZONE 'UTC';
        upper_bound := (day + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE pg_catalog.format(
            'CREATE TABLE flux.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', partition_name, parent);
        EXECUTE pg_catalog.format(
            'WITH moved AS (DELETE FROM flux.%I WHERE %I >= %L AND %I < %L RETURNING *) '
            'INSERT INTO flux.%I SELECT * FROM moved',
            base || '_default', time_column, lower_bound, time_column, upper_bound, partition_name);
        EXECUTE pg_catalog.format(
            'ALTER TABLE %s ATTACH PARTITION flux.%I FOR VALUES FROM (%L) TO (%L)',
            parent, partition_name, lower_bound, upper_bound);
        RETURN NEXT pg_catalog.format('flux.%I', partition_name)::regclass;
    END LOOP;
END
$$;


--
-- Name: create_span_partitions(date, date); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.create_span_partitions(first_day date, last_day date) RETURNS SETOF regclass
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT flux.create_day_partitions('flux.spans', first_day, last_day)
$$;


--
-- Name: drop_day_partitions(regclass, interval); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.drop_day_partitions(parent regclass, keep interval) RETURNS SETOF text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    base text := (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = parent);
    cutoff timestamptz := pg_catalog.now() - keep;
    partition_name text;
BEGIN
    IF keep <= interval '0' THEN
        RAISE EXCEPTION 'retention must be a positive period, not %', keep
            USING ERRCODE = 'FX502', HINT = 'give a period such as 30d or 12h';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(parent::text || ' partitions'));
    FOR partition_name IN
        SELECT c.relname
          FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = parent
           AND c.relname ~ ('^' || base || '_[0-9]{8}$')
           AND (pg_catalog.to_date(pg_catalog.right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp
               AT TIME ZONE 'UTC' <= cutoff
         ORDER BY c.relname
    LOOP
        EXECUTE pg_catalog.format('DROP TABLE flux.%I', partition_name);
        RETURN NEXT partition_name;
    END LOOP;
    EXECUTE pg_catalog.format('DELETE FROM flux.%I WHERE %I < %L',
                              base || '_default', flux.partition_column(parent), cutoff);
END
$_$;


--
-- Name: drop_span_partitions(interval); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.drop_span_partitions(keep interval) RETURNS SETOF text
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT flux.drop_day_partitions('flux.spans', keep)
$$;


--
-- Name: enqueue(text, jsonb, timestamp with time zone, integer, text, text, integer); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.enqueue(function_name text, payload jsonb DEFAULT 'null'::jsonb, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, priority integer DEFAULT 0, queue_name text DEFAULT 'default'::text, idempotency_key text DEFAULT NULL::text, max_attempts integer DEFAULT 5) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_variable
DECLARE
    job flux.jobs;
    new_id bigint;
BEGIN
    IF idempotency_key IS NOT NULL THEN  -- the key's locks and lookups live in one place
        SELECT e.job_id INTO new_id FROM flux.enqueue_jobs(pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
            'function', function_name, 'payload', coalesce(payload, 'null'), 'run_at', run_at,
            'priority', priority, 'queue', queue_name, 'idempotency_key', idempotency_key,
            'max_attempts', max_attempts))) AS e;
        RETURN (SELECT pg_catalog.to_jsonb(j) FROM flux.all_jobs AS j WHERE j.id = new_id LIMIT 1);
    END IF;
    -- A job without a key (what most pushes are) takes one insert, not enqueue_jobs' statements (1 ms less).
    queue_name := coalesce(queue_name, 'default');
    max_attempts := coalesce(max_attempts, 5);
    PERFORM flux.check_job('job', function_name, queue_name, max_attempts, coalesce(payload, 'null'), NULL,
                           (SELECT d.id FROM flux.deployments AS d WHERE d.active));
    INSERT INTO flux.jobs (tenant_id, queue, function, payload, priority, run_at, max_attempts, parent_request_id,
                           role, claims)
    VALUES (flux.tenant_id(), queue_name, function_name, coalesce(payload, 'null'), coalesce(priority, 0),
            coalesce(run_at, pg_catalog.now()), max_attempts,
            nullif(pg_catalog.current_setting('flux.request_id', true), '')::uuid, flux.caller_role(), flux.claims())
    RETURNING * INTO job;
    RETURN pg_catalog.to_jsonb(job);
END
$$;


--
-- Name: enqueue_jobs(jsonb); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.enqueue_jobs(jobs jsonb) RETURNS TABLE(ord bigint, job_id bigint, created boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $_$
#variable_conflict use_column
DECLARE
    tenant uuid := flux.tenant_id();
    parent uuid := nullif(pg_catalog.current_setting('flux.request_id', true), '')::uuid;
    active bigint;
BEGIN
    -- One job without a key, what most pushes are: flux.enqueue's one insert, not the statements below (which
    -- cost a push of one job 1 to 1.5 ms, counted in how long it waits to start: bench/queue.py).
    IF pg_catalog.jsonb_typeof(jobs) = 'array' AND pg_catalog.jsonb_array_length(jobs) = 1
       AND pg_catalog.jsonb_typeof(jobs -> 0) = 'object' AND (jobs -> 0 ->> 'idempotency_key') IS NULL
    THEN
        RETURN QUERY
        SELECT 0::bigint,
               (flux.enqueue(j.function, coalesce(j.payload, 'null'),
                             coalesce(j.run_at, pg_catalog.now()
                                                + pg_catalog.make_interval(secs => coalesce(j.delay_ms, 0) / 1000.0)),
                             j.priority, j.queue, NULL, j.max_attempts) ->> 'id')::bigint,
               true
          FROM pg_catalog.jsonb_to_record(jobs -> 0)
               AS j(function text, payload jsonb, run_at timestamptz, delay_ms bigint, priority integer, queue text,
                    max_attempts integer);
        RETURN;
    END IF;
    IF pg_catalog.jsonb_typeof(jobs) IS DISTINCT FROM 'array'
       OR EXISTS (SELECT FROM pg_catalog.jsonb_array_elements(jobs) AS e WHERE pg_catalog.jsonb_typeof(e) <> 'object')
    THEN
        RAISE EXCEPTION 'jobs must be a JSON array of objects'
            USING ERRCODE = 'FX401', HINT = 'send [{"function": "name", "payload": {...}}, ...]';
    END IF;

    SELECT d.id INTO active FROM flux.deployments AS d WHERE d.active;
    PERFORM flux.check_job(CASE WHEN pg_catalog.jsonb_array_length(jobs) > 1 THEN 'job ' || j.ord ELSE 'job' END,
                           j.function, j.queue, j.max_attempts, j.payload, j.idempotency_key, active)
       FROM flux.job_inputs(jobs) AS j ORDER BY j.ord;

    IF pg_catalog.jsonb_path_exists(jobs, '$[*].idempotency_key ? (@ != null)') THEN
        PERFORM flux.lock_job_key(tenant, k.queue, k.idempotency_key)
           FROM (SELECT DISTINCT j.queue, j.idempotency_key FROM flux.job_inputs(jobs) AS j
                  WHERE j.idempotency_key IS NOT NULL ORDER BY 1, 2) AS k;
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT * FROM flux.job_inputs(jobs)
    ), finished AS (  -- a key whose job has finished keeps answering with that job
        SELECT DISTINCT ON (i.ord) i.ord, h.id
          FROM input AS i
          JOIN flux.job_history AS h
            ON h.queue = i.queue AND h.idempotency_key = i.idempotency_key AND h.tenant_id IS NOT DISTINCT FROM tenant
         ORDER BY i.ord, h.id
    ), fresh AS (
        SELECT i.*, pg_catalog.nextval('flux.jobs_id_seq') AS new_id
          FROM input AS i WHERE NOT EXISTS (SELECT FROM finished AS f WHERE f.ord = i.ord) ORDER BY i.ord
    ), inserted AS (
        INSERT INTO flux.jobs AS t (id, tenant_id, queue, function, payload, priority, run_at, max_attempts,
                                    idempotency_key, parent_request_id, role, claims)
        OVERRIDING SYSTEM VALUE
        SELECT f.new_id, tenant, f.queue, f.function, f.payload, f.priority, f.run_at, f.max_attempts,
               f.idempotency_key, parent, flux.caller_role(), flux.claims()
          FROM fresh AS f ORDER BY f.ord
        ON CONFLICT (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), queue, idempotency_key)
            WHERE idempotency_key IS NOT NULL
            DO NOTHING
        RETURNING t.id
    )
    SELECT i.ord,
           coalesce(
               done.id, mine.id,
               -- the key's job: pushed earlier (this statement cannot see its own rows), or earlier in this batch
               (SELECT t.id FROM flux.jobs AS t
                 WHERE t.queue = i.queue AND t.idempotency_key = i.idempotency_key
                   AND t.tenant_id IS NOT DISTINCT FROM tenant),
               (SELECT pg_catalog.min(o.new_id) FROM fresh AS o JOIN inserted AS x ON x.id = o.new_id
                 WHERE o.queue = i.queue AND o.idempotency_key = i.idempotency_key)),
           mine.id IS NOT NULL
      FROM input AS i
      LEFT JOIN finished AS done ON done.ord = i.ord
      LEFT JOIN fresh AS f ON f.ord = i.ord
      LEFT JOIN inserted AS mine ON mine.id = f.new_id
     ORDER BY i.ord;
END
$_$;


--
-- Name: extend_leases(text, bigint[], double precision); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.extend_leases(worker text, ids bigint[], lease_s double precision) RETURNS SETOF bigint
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    UPDATE flux.jobs AS j SET locked_until = pg_catalog.now() + pg_catalog.make_interval(secs => lease_s)
     WHERE j.id = ANY (ids) AND j.locked_by = worker AND j.status = 'running'
    RETURNING j.id
$$;


--
-- Name: fail_job(bigint, text, integer, uuid, jsonb, double precision); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.fail_job(job_id bigint, worker text, attempt integer, request_id uuid, error jsonb, retry_base_s double precision DEFAULT 1) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    job flux.jobs := flux.held_job(job_id, worker, attempt);
BEGIN
    IF job.id IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM flux.record_run(job, request_id, worker, false, error);
    RETURN flux.after_failure(job, request_id, error, flux.retry_delay(job.attempts, retry_base_s));
END
$$;


--
-- Name: find_job(bigint); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.find_job(job_id bigint) RETURNS flux.jobs
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    job flux.jobs;
BEGIN
    SELECT * INTO job FROM flux.all_jobs AS j WHERE j.id = job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no job %', job_id USING ERRCODE = 'FX403', HINT = 'list jobs with `flux queue ls`';
    END IF;
    RETURN job;
END
$$;


--
-- Name: finish_job(flux.jobs, text, uuid, jsonb); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.finish_job(job flux.jobs, final_status text, request_id uuid, error jsonb) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    DELETE FROM flux.jobs AS j WHERE j.id = job.id;
    job.status := final_status;
    job.finished_at := pg_catalog.now();
    job.locked_by := NULL;
    job.locked_until := NULL;
    job.last_request_id := coalesce(request_id, job.last_request_id);
    job.last_error := coalesce(error, job.last_error);
    INSERT INTO flux.job_history SELECT job.*;
END
$$;


--
-- Name: fire_cron(text, timestamp with time zone, timestamp with time zone); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.fire_cron(cron_name text, tick timestamp with time zone, next_run timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    entry flux.cron;
    new_id bigint;
BEGIN
    UPDATE flux.cron AS c SET next_run_at = next_run, last_run_at = pg_catalog.now()
     WHERE c.name = cron_name AND c.next_run_at = tick AND c.enabled
    RETURNING * INTO entry;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO flux.jobs (queue, function, payload, role, cron_name, idempotency_key)
    VALUES (entry.queue, entry.function, entry.payload, 'service', entry.name,
            'cron:' || entry.name || ':' || pg_catalog.to_char(tick AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
    ON CONFLICT DO NOTHING
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;


--
-- Name: grant_service_defaults(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.grant_service_defaults() RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
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


--
-- Name: FUNCTION grant_service_defaults(); Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON FUNCTION flux.grant_service_defaults() IS 'Default privileges for the calling role: flux_service may read and write every table and sequence it creates in schema public. The migration runner runs it before a project''s migrations.';


--
-- Name: held_job(bigint, text, integer); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.held_job(job_id bigint, worker text, attempt integer) RETURNS flux.jobs
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    job flux.jobs;
BEGIN
    SELECT * INTO job FROM flux.jobs AS j WHERE j.id = job_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM flux.lock_job_key(job.tenant_id, job.queue, job.idempotency_key);
    SELECT * INTO job FROM flux.jobs AS j
     WHERE j.id = job_id AND j.status = 'running' AND j.locked_by = worker AND j.attempts = attempt
       FOR UPDATE;
    RETURN CASE WHEN FOUND THEN job END;
END
$$;


--
-- Name: job_inputs(jsonb); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.job_inputs(jobs jsonb) RETURNS TABLE(ord bigint, function text, payload jsonb, run_at timestamp with time zone, priority integer, queue text, idempotency_key text, max_attempts integer)
    LANGUAGE sql STABLE ROWS 10
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT e.ord - 1, j.function, coalesce(j.payload, 'null'),
           coalesce(j.run_at, pg_catalog.now() + pg_catalog.make_interval(secs => coalesce(j.delay_ms, 0) / 1000.0)),
           coalesce(j.priority, 0), coalesce(j.queue, 'default'), j.idempotency_key, coalesce(j.max_attempts, 5)
      FROM pg_catalog.jsonb_array_elements(jobs) WITH ORDINALITY AS e(value, ord),
           LATERAL pg_catalog.jsonb_to_record(e.value)
               AS j(function text, payload jsonb, run_at timestamptz, delay_ms bigint, priority integer, queue text,
                    idempotency_key text, max_attempts integer)
$$;


--
-- Name: job_key_lock(uuid, text, text); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.job_key_lock(tenant uuid, queue_name text, key text) RETURNS bigint
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT pg_catalog.hashtextextended(coalesce(tenant::text, '') || '/' || queue_name || '/' || key, 0)
$$;


--
-- Name: lock_job_key(uuid, text, text); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.lock_job_key(tenant uuid, queue_name text, key text) RETURNS void
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(flux.job_key_lock(tenant, queue_name, key)) WHERE key IS NOT NULL
$$;


--
-- Name: maintain(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.maintain() RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    today date := (pg_catalog.now() AT TIME ZONE 'UTC')::date;
BEGIN
    PERFORM flux.create_day_partitions('flux.spans', today - 1, today + 7);
    PERFORM flux.create_day_partitions('flux.job_history', today - 1, today + 7);
END
$$;


--
-- Name: mutations_since(timestamp with time zone, bigint, uuid, text[], text[]); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.mutations_since(started timestamp with time zone, first_id bigint, request uuid, schemas text[], names text[]) RETURNS TABLE(id bigint, request_id uuid, table_schema text, table_name text, op text, row_pk jsonb, at timestamp with time zone, changed text[])
    LANGUAGE sql STABLE
    AS $$
    SELECT s.id, s.request_id, s.table_schema, s.table_name, s.op, s.row_pk, s.at, s.changed
      FROM (SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at, m.changed
              FROM flux.mutations m
             WHERE m.at >= started
            UNION ALL
            SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at, m.changed
              FROM flux.mutations m
             WHERE m.id >= first_id AND m.at < started
            OFFSET 0) AS s
     WHERE s.request_id IS DISTINCT FROM request
       AND s.table_name = ANY (names) AND s.table_schema = ANY (schemas)
$$;


--
-- Name: partition_column(regclass); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.partition_column(parent regclass) RETURNS name
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT a.attname FROM pg_catalog.pg_partitioned_table p
      JOIN pg_catalog.pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
     WHERE p.partrelid = parent
$$;


--
-- Name: reap_jobs(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.reap_jobs() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    job flux.jobs;
    error jsonb;
    reaped integer := 0;
BEGIN
    FOR job IN SELECT * FROM flux.jobs AS j
                WHERE j.status = 'running' AND j.locked_until < pg_catalog.now()
                  FOR UPDATE SKIP LOCKED LOOP
        CONTINUE WHEN NOT flux.try_lock_job_key(job.tenant_id, job.queue, job.idempotency_key);  -- next round
        error := pg_catalog.jsonb_build_object(
            'code', 'FX404', 'message',
            pg_catalog.format('worker %s stopped during attempt %s (its lease expired)', job.locked_by, job.attempts));
        PERFORM flux.record_run(job, NULL, job.locked_by, false, error);
        PERFORM flux.after_failure(job, NULL, error, interval '0');
        reaped := reaped + 1;
    END LOOP;
    RETURN reaped;
END
$$;


--
-- Name: record_run(flux.jobs, uuid, text, boolean, jsonb); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.record_run(job flux.jobs, request_id uuid, worker text, ok boolean, error jsonb) RETURNS void
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    INSERT INTO flux.job_runs (job_id, run, attempt, request_id, worker, ok, error)
    SELECT job.id, coalesce(pg_catalog.max(r.run), 0) + 1, job.attempts, record_run.request_id,
           record_run.worker, record_run.ok, record_run.error
      FROM flux.job_runs AS r WHERE r.job_id = job.id
$$;


--
-- Name: release_jobs(text, bigint[]); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.release_jobs(worker text, ids bigint[]) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    released integer;
BEGIN
    UPDATE flux.jobs AS j
       SET status = 'queued', attempts = j.attempts - 1, locked_by = NULL, locked_until = NULL,
           run_at = pg_catalog.now()
     WHERE j.id = ANY (ids) AND j.locked_by = worker AND j.status = 'running';
    GET DIAGNOSTICS released = ROW_COUNT;
    IF released > 0 THEN
        PERFORM pg_catalog.pg_notify('flux_jobs', '');
    END IF;
    RETURN released;
END
$$;


--
-- Name: replay_captured(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.replay_captured() RETURNS TABLE(id bigint, span_seq integer, table_schema text, table_name text, op text, row_pk jsonb, old jsonb, new jsonb, changed text[])
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
BEGIN
    RETURN QUERY
        SELECT m.id, m.span_seq, m.table_schema, m.table_name, m.op, m.row_pk, m.old, m.new, m.changed
          FROM flux.replay_grants AS g
          JOIN flux.mutations AS m ON m.request_id = g.replay_id
         WHERE g.txid = pg_catalog.txid_current()
         ORDER BY m.id;
END
$$;


--
-- Name: replay_prepare(bytea, uuid, jsonb, boolean, text[], text, text[], text[], timestamp with time zone, timestamp with time zone); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.replay_prepare(secret bytea, request uuid, pins jsonb, as_of boolean, named text[], caller_path text, written_schemas text[], written_names text[], started timestamp with time zone, ended timestamp with time zone) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    granted flux.replay_grants;
    tables regclass[] := '{}';
    spelled text;
BEGIN
    UPDATE flux.replay_grants AS g SET txid = pg_catalog.txid_current()
     WHERE g.secret_sha256 = pg_catalog.sha256(secret) AND g.txid IS NULL
       AND g.granted_at > pg_catalog.now() - interval '1 minute'
    RETURNING g.* INTO granted;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'only a replay sets its database up, once, with the grant its owner wrote'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO flux.replay_pins (replay_id, call, position, table_schema, table_name, op, row_pk, old, new)
    SELECT granted.replay_id, p->>0, (p->>1)::integer, p->>2, p->>3, p->>4, p->5, NULLIF(p->6, 'null'),
           NULLIF(p->7, 'null')
      FROM pg_catalog.jsonb_array_elements(pins) AS p;
    PERFORM pg_catalog.set_config('search_path', caller_path, true);  -- names only: no code runs meanwhile
    FOREACH spelled IN ARRAY coalesce(named, '{}') LOOP
        BEGIN
            tables := pg_catalog.array_append(tables, pg_catalog.to_regclass(spelled));
        EXCEPTION WHEN invalid_name OR feature_not_supported THEN
            NULL;  -- no table of this database's (another database's, or not a table's name): none to rewind
        END;
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    RETURN flux.rewind_tables(request, as_of, tables, written_schemas, written_names, started, ended);
END
$$;


--
-- Name: retry_delay(integer, double precision); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.retry_delay(attempts integer, base_s double precision) RETURNS interval
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT pg_catalog.make_interval(secs => least(base_s * 2 ^ least(attempts - 1, 30), 3600) * (0.5 + random() / 2))
$$;


--
-- Name: retry_job(bigint); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.retry_job(job_id bigint) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    job flux.jobs := flux.find_job(job_id);
BEGIN
    IF job.status IN ('queued', 'running', 'done') THEN
        RAISE EXCEPTION 'job % is %, not failed, dead or cancelled', job_id, job.status
            USING ERRCODE = 'FX405', HINT = CASE job.status WHEN 'done' THEN 'push a new job to run it again'
                                                            ELSE 'wait for it to run' END;
    END IF;
    IF job.status = 'failed' THEN
        UPDATE flux.jobs AS j SET run_at = pg_catalog.now() WHERE j.id = job_id AND j.status = 'failed'
        RETURNING * INTO job;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'job % changed while it was being retried', job_id
                USING ERRCODE = 'FX405', HINT = 'look at it again with `flux queue show`';
        END IF;
        PERFORM pg_catalog.pg_notify('flux_jobs', job.queue);
        RETURN pg_catalog.to_jsonb(job);
    END IF;
    PERFORM flux.lock_job_key(job.tenant_id, job.queue, job.idempotency_key);
    DELETE FROM flux.job_history AS h WHERE h.id = job_id;
    IF NOT FOUND THEN  -- another retry took it first
        RAISE EXCEPTION 'job % changed while it was being retried', job_id
            USING ERRCODE = 'FX405', HINT = 'look at it again with `flux queue show`';
    END IF;
    BEGIN
        INSERT INTO flux.jobs (id, tenant_id, queue, function, payload, status, priority, run_at, attempts,
                               max_attempts, idempotency_key, last_error, parent_request_id, created_at, role,
                               claims, cron_name, last_request_id)
        OVERRIDING SYSTEM VALUE
        VALUES (job.id, job.tenant_id, job.queue, job.function, job.payload, 'queued', job.priority,
                pg_catalog.now(), 0, job.max_attempts, job.idempotency_key, job.last_error, job.parent_request_id,
                job.created_at, job.role, job.claims, job.cron_name, job.last_request_id)
        RETURNING * INTO job;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'another job holds idempotency key % in queue %', job.idempotency_key, job.queue
            USING ERRCODE = 'FX405', HINT = 'cancel that job first, or let it finish';
    END;
    RETURN pg_catalog.to_jsonb(job);
END
$$;


--
-- Name: rewind_fires_own_triggers(regclass); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.rewind_fires_own_triggers(target regclass) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF pg_catalog.current_setting('session_replication_role') = 'replica' OR NOT EXISTS (
            SELECT FROM pg_catalog.pg_trigger t
             WHERE (t.tgrelid = target  -- and its partitions', if it has any
                    OR t.tgrelid IN (SELECT p.relid FROM pg_catalog.pg_partition_tree(target) AS p))
               AND NOT t.tgisinternal
               AND t.tgname NOT IN ('flux_mutations', 'flux_mutations_truncate', 'zz_flux_replay_pin')) THEN
        RETURN false;
    END IF;
    BEGIN
        PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        RETURN false;
    EXCEPTION WHEN insufficient_privilege THEN
        RETURN true;
    END;
END
$$;


--
-- Name: rewind_tables(uuid, boolean, regclass[], text[], text[], timestamp with time zone, timestamp with time zone); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.rewind_tables(request uuid, as_of boolean, named regclass[], written_schemas text[], written_names text[], started timestamp with time zone, ended timestamp with time zone) RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    touched_schemas text[];
    touched_names text[];
    own_first bigint;
    own_last bigint;
    own_began timestamptz;
    tables flux.rewound_table[];
    drift jsonb;
    undone integer;
    not_rewound text[];
    replication text := pg_catalog.current_setting('session_replication_role');
    waited text := pg_catalog.current_setting('lock_timeout');
    triggers_off boolean := false;
BEGIN
    -- the tables named or written, and whether Flux tracks each (a named one it does not, as-of cannot rewind)
    SELECT coalesce(pg_catalog.array_agg(t.nspname::text) FILTER (WHERE t.tracked), '{}'),
           coalesce(pg_catalog.array_agg(t.relname::text) FILTER (WHERE t.tracked), '{}'),
           coalesce(pg_catalog.array_agg(pg_catalog.format('%I.%I', t.nspname, t.relname))
                        FILTER (WHERE NOT t.tracked AND x.named AND as_of), '{}')
      INTO touched_schemas, touched_names, not_rewound
      FROM (SELECT x.oid, pg_catalog.bool_or(x.named) AS named
              FROM (SELECT r.oid, true AS named FROM pg_catalog.unnest(named) AS r (oid)
                    UNION ALL
                    SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', w.s, w.n)), false
                      FROM ROWS FROM (pg_catalog.unnest(written_schemas), pg_catalog.unnest(written_names)) AS w (s, n)
                   ) AS x
             GROUP BY x.oid) AS x
     CROSS JOIN LATERAL (  -- each by its oid (an index), not a pass over the catalog (OFFSET 0: not a join)
           SELECT n.nspname, c.relname,
                  EXISTS (SELECT FROM pg_catalog.pg_trigger g
                           WHERE g.tgrelid = c.oid AND g.tgname = 'flux_mutations' AND g.tgparentid = 0) AS tracked
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = x.oid AND c.relkind IN ('r', 'p')
           OFFSET 0) AS t;
    SELECT pg_catalog.min(m.id), pg_catalog.max(m.id), pg_catalog.min(m.at) INTO own_first, own_last, own_began
      FROM flux.mutations m WHERE m.request_id = request;
    IF own_began IS NOT NULL THEN  -- when its transaction began, by the database's clock (Flux's may differ)
        ended := own_began + (ended - started);
        started := own_began;
    END IF;
    IF own_first IS NOT NULL OR pg_catalog.cardinality(touched_names) > 0 THEN  -- else nothing to read
        IF as_of THEN
            -- The block ranges autovacuum has not summarized yet (up to a minute of writes, and the last,
            -- filling range) are read whole by the BRIN search: summarize them first, unless a vacuum (or
            -- another rewind) is at it. What is summarized stays summarized, whatever this transaction does.
            BEGIN
                LOCK TABLE flux.mutations IN SHARE UPDATE EXCLUSIVE MODE NOWAIT;
                PERFORM pg_catalog.brin_summarize_new_values('flux.mutations_at_idx'::regclass);
            EXCEPTION WHEN lock_not_available THEN
                NULL;
            END;
        END IF;
        SELECT w.tables, w.drift INTO tables, drift
          FROM flux.writes_to_rewind(request, as_of, started, ended, own_first, own_last, touched_schemas,
                                     touched_names) AS w;
    END IF;
    undone := coalesce((SELECT pg_catalog.sum(t.writes) FROM pg_catalog.unnest(tables) AS t), 0);
    IF undone > 0 THEN
        -- A row that another session is writing is not waited for long: the replay gives up (a replay holding
        -- the rows it took back while waiting would hold up that session's next write, or deadlock with it).
        PERFORM pg_catalog.set_config('lock_timeout', '500ms', true);
        BEGIN
            IF EXISTS (SELECT FROM pg_catalog.unnest(tables) AS t WHERE t.key_changed) THEN
                -- an UPDATE changed a key: a row's writes are not all under one key
                RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            not_rewound := not_rewound || flux.undo_mutations_by_table(tables);
        EXCEPTION WHEN integrity_constraint_violation THEN  -- the subtransaction took the partial work back
            not_rewound := not_rewound || flux.undo_mutations_one_by_one(flux.rewound_ids(
                request, as_of, started, own_first, touched_schemas, touched_names));
        END;
        not_rewound := ARRAY(SELECT DISTINCT x FROM pg_catalog.unnest(not_rewound) AS x ORDER BY x);
        PERFORM pg_catalog.set_config('lock_timeout', waited, true);
        triggers_off := pg_catalog.current_setting('session_replication_role') = 'replica';
        IF triggers_off THEN
            PERFORM pg_catalog.set_config('session_replication_role', replication, true);
        END IF;
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'undone', undone, 'drift', coalesce(drift, '[]'), 'not_rewound', not_rewound,
        'triggers_off', triggers_off);
END
$$;


--
-- Name: rewound_ids(uuid, boolean, timestamp with time zone, bigint, text[], text[]); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.rewound_ids(request uuid, as_of boolean, started timestamp with time zone, own_first bigint, schemas text[], names text[]) RETURNS bigint[]
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    AS $$
BEGIN
    RETURN ARRAY(
        SELECT w.id FROM flux.rewound_writes(request, as_of, started, own_first, schemas, names) AS w
         WHERE w.request_id = request
            OR (w.table_schema, w.table_name) IN (
                   SELECT * FROM ROWS FROM (pg_catalog.unnest(schemas), pg_catalog.unnest(names))));
END
$$;


--
-- Name: rewound_writes(uuid, boolean, timestamp with time zone, bigint, text[], text[]); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.rewound_writes(request uuid, as_of boolean, started timestamp with time zone, own_first bigint, schemas text[], names text[]) RETURNS TABLE(id bigint, request_id uuid, table_schema text, table_name text, op text, row_pk jsonb, at timestamp with time zone, changed text[])
    LANGUAGE sql STABLE
    AS $$
    SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at, m.changed
      FROM flux.mutations m
     WHERE m.request_id = request
       AND (as_of OR NOT EXISTS (SELECT FROM flux.mutations x
                                  WHERE (x.table_schema, x.table_name, x.row_pk)
                                        = (m.table_schema, m.table_name, m.row_pk)
                                    AND x.id > m.id AND x.request_id IS DISTINCT FROM request))
    UNION ALL
    SELECT s.id, s.request_id, s.table_schema, s.table_name, s.op, s.row_pk, s.at, s.changed
      FROM flux.mutations_since(started, own_first, request, schemas, names) AS s
     WHERE as_of
$$;


--
-- Name: role(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.role() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT CASE current_user
        WHEN 'flux_anon' THEN 'anon'
        WHEN 'flux_user' THEN 'user'
        WHEN 'flux_service' THEN 'service'
    END
$$;


--
-- Name: row_blame(regclass, jsonb); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.row_blame(table_ref regclass, pk jsonb) RETURNS TABLE(column_name text, value jsonb, mutation_id bigint, at timestamp with time zone, op text, request_id uuid, function text, code_sha text, deployment_id bigint, actor text)
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT DISTINCT ON (col) col, h.new -> col, h.mutation_id, h.at, h.op, h.request_id, h.function,
           h.code_sha, h.deployment_id, h.actor
      FROM flux.row_history(table_ref, pk) h
     CROSS JOIN LATERAL pg_catalog.unnest(h.changed) AS col
     ORDER BY col, h.mutation_id DESC
$$;


--
-- Name: FUNCTION row_blame(table_ref regclass, pk jsonb); Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON FUNCTION flux.row_blame(table_ref regclass, pk jsonb) IS 'For each column of one row, the change that last set it.';


--
-- Name: row_history(regclass, jsonb); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.row_history(table_ref regclass, pk jsonb) RETURNS TABLE(mutation_id bigint, at timestamp with time zone, op text, changed text[], old jsonb, new jsonb, request_id uuid, function text, code_sha text, deployment_id bigint, actor text)
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT m.id, m.at, m.op, m.changed, m.old, m.new, m.request_id, r.function, r.code_sha, r.deployment_id,
           m.actor
      FROM flux.mutations m
      LEFT JOIN flux.requests r ON r.id = m.request_id
     WHERE (m.table_schema, m.table_name) = (SELECT * FROM flux.table_names(table_ref)) AND m.row_pk = pk
     ORDER BY m.id
$$;


--
-- Name: FUNCTION row_history(table_ref regclass, pk jsonb); Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON FUNCTION flux.row_history(table_ref regclass, pk jsonb) IS 'Every version of one row, oldest first, with who made it.';


--
-- Name: table_blame(regclass); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.table_blame(table_ref regclass) RETURNS TABLE(row_pk jsonb, mutation_id bigint, at timestamp with time zone, op text, changed text[], request_id uuid, function text, code_sha text, deployment_id bigint, actor text)
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
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


--
-- Name: FUNCTION table_blame(table_ref regclass); Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON FUNCTION flux.table_blame(table_ref regclass) IS 'For each row of a tracked table, its last change and who made it.';


--
-- Name: table_names(regclass); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.table_names(table_ref regclass) RETURNS TABLE(schema_name text, table_name text)
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT n.nspname::text, c.relname::text
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = table_ref
$$;


--
-- Name: take_token(text, double precision, double precision); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.take_token(bucket_key text, capacity double precision, refill_per_s double precision, OUT allowed boolean, OUT remaining double precision, OUT retry_after_s double precision) RETURNS record
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    INSERT INTO flux.rate_buckets AS b (bucket, tokens, allowed, updated_at)
    VALUES (bucket_key, capacity - 1, true, pg_catalog.statement_timestamp())
    ON CONFLICT (bucket) DO UPDATE SET
        allowed = LEAST(capacity, b.tokens + EXTRACT(EPOCH FROM pg_catalog.statement_timestamp() - b.updated_at)
                                             * refill_per_s) >= 1,
        tokens = LEAST(capacity, b.tokens + EXTRACT(EPOCH FROM pg_catalog.statement_timestamp() - b.updated_at)
                                            * refill_per_s)
                 - CASE WHEN LEAST(capacity, b.tokens + EXTRACT(EPOCH FROM pg_catalog.statement_timestamp()
                                                                 - b.updated_at) * refill_per_s) >= 1
                        THEN 1 ELSE 0 END,
        updated_at = pg_catalog.statement_timestamp()
    RETURNING b.allowed, b.tokens, CASE WHEN b.allowed THEN 0 ELSE (1 - b.tokens) / refill_per_s END
$$;


--
-- Name: tenant_id(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.tenant_id() RETURNS uuid
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;


--
-- Name: tg_catalog__notify(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.tg_catalog__notify() RETURNS event_trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('flux_catalog', TG_TAG);
END
$$;


--
-- Name: tg_column_policies__notify(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.tg_column_policies__notify() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('flux_catalog', 'column_policies');
    RETURN NULL;
END
$$;


--
-- Name: tg_gateway__notify(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.tg_gateway__notify() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM pg_catalog.pg_notify(TG_ARGV[0], TG_TABLE_NAME);
    RETURN NULL;
END
$$;


--
-- Name: tg_jobs__notify(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.tg_jobs__notify() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('flux_jobs', q.queue)
       FROM (SELECT DISTINCT n.queue FROM new_jobs n WHERE n.run_at <= pg_catalog.now()) AS q;
    RETURN NULL;
END
$$;


--
-- Name: tg_mutations__pin_replay(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.tg_mutations__pin_replay() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    written_schema text := TG_TABLE_SCHEMA;
    written_table text := TG_TABLE_NAME;
    replay uuid := nullif(pg_catalog.current_setting('flux.request_id', true), '')::uuid;
    call_name text := pg_catalog.current_setting('flux.replay_call', true);
    old_row jsonb;
    pinned jsonb;
BEGIN
    IF TG_ARGV[0] = 'p' THEN
        SELECT n.nspname, c.relname INTO written_schema, written_table
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = pg_catalog.pg_partition_root(TG_RELID);
    END IF;
    IF call_name = '@undo' THEN  -- the pin of the row by its key (an UPDATE's old one, an INSERT's new one)
        old_row := pg_catalog.to_jsonb(CASE WHEN TG_OP = 'UPDATE' THEN OLD ELSE NEW END);
        UPDATE flux.replay_pins AS p SET used = true
         WHERE (p.replay_id, p.call, p.position) = (
               SELECT q.replay_id, q.call, q.position FROM flux.replay_pins AS q
                WHERE q.replay_id = '00000000-0000-0000-0000-000000000000' AND q.call = call_name
                  AND q.table_schema = written_schema AND q.table_name = written_table AND q.op = TG_OP
                  AND NOT q.used
                  AND q.row_pk = (SELECT pg_catalog.jsonb_object_agg(k, old_row -> k)
                                    FROM pg_catalog.unnest(TG_ARGV[1:]) AS k)
                LIMIT 1)
        RETURNING p.new INTO pinned;
        IF pinned IS NOT NULL THEN
            NEW := pg_catalog.jsonb_populate_record(NEW, pinned);
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        UPDATE flux.replay_pins AS p SET used = true
         WHERE (p.replay_id, p.call, p.position) = (
               SELECT q.replay_id, q.call, q.position FROM flux.replay_pins AS q
                WHERE q.replay_id = replay AND q.call = call_name AND q.table_schema = written_schema
                  AND q.table_name = written_table AND q.op = 'INSERT' AND NOT q.used
                ORDER BY q.position LIMIT 1)
        RETURNING p.new INTO pinned;
    ELSE
        -- the recorded UPDATE whose old row is this one; else, when the recording has no old rows (a failed
        -- run's writes were rolled back: it knows only the rows they returned), the next one in order
        old_row := pg_catalog.to_jsonb(OLD);
        UPDATE flux.replay_pins AS p SET used = true
         WHERE (p.replay_id, p.call, p.position) = (
               SELECT q.replay_id, q.call, q.position FROM flux.replay_pins AS q
                WHERE q.replay_id = replay AND q.call = call_name AND q.table_schema = written_schema
                  AND q.table_name = written_table AND q.op = 'UPDATE' AND NOT q.used
                  AND (q.old = old_row OR q.old IS NULL)
                ORDER BY q.old IS NULL, q.position LIMIT 1)
        RETURNING p.new INTO pinned;
    END IF;
    -- A query run with other arguments than the recorded one keeps the values it sets itself (they are the
    -- difference to report); the columns it leaves to the database get the recorded values all the same.
    IF pinned IS NOT NULL AND pg_catalog.current_setting('flux.replay_keep', true) > '' THEN
        pinned := pinned - ARRAY(SELECT pg_catalog.jsonb_array_elements_text(
                                            pg_catalog.current_setting('flux.replay_keep')::jsonb));
    END IF;
    IF pinned IS NOT NULL THEN
        NEW := pg_catalog.jsonb_populate_record(NEW, pinned);
    END IF;
    RETURN NEW;
END
$$;


--
-- Name: tg_mutations__record(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.tg_mutations__record() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;


--
-- Name: tg_mutations__record_truncate(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.tg_mutations__record_truncate() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;


--
-- Name: trace(uuid); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.trace(request_id uuid) RETURNS TABLE(seq integer, parent_seq integer, depth integer, span_id text, module text, name text, started_at timestamp with time zone, offset_us bigint, duration_us bigint, ok boolean, attributes jsonb, input jsonb, output jsonb, error jsonb)
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    WITH RECURSIVE request AS (
        SELECT r.started_at, r.duration_us FROM flux.requests r WHERE r.id = trace.request_id
    ), spans AS (
        -- Spans fall within their request's time; bounding started_at by it (with a day's margin for a clock
        -- that moved) lets Postgres probe only those days' partitions, however many are kept.
        SELECT s.* FROM flux.spans s
         WHERE s.request_id = trace.request_id
           AND s.started_at >= (SELECT r.started_at - interval '1 day' FROM request r)
           AND s.started_at <= (SELECT r.started_at + interval '1 day'
                                       + make_interval(secs => coalesce(r.duration_us, 0) / 1e6) FROM request r)
    ), tree AS (
        SELECT s.seq, 0 AS depth FROM spans s WHERE s.parent_seq IS NULL
        UNION ALL
        SELECT s.seq, t.depth + 1 FROM spans s JOIN tree t ON s.parent_seq = t.seq
    )
    SELECT s.seq, s.parent_seq, t.depth, s.span_id, s.module, s.name, s.started_at,
           (EXTRACT(EPOCH FROM s.started_at - r.started_at) * 1000000)::bigint, s.duration_us, s.ok,
           s.attributes, s.input, s.output, s.error
      FROM spans s
      JOIN tree t ON t.seq = s.seq
      LEFT JOIN flux.requests r ON r.id = trace.request_id
     ORDER BY s.seq
$$;


--
-- Name: FUNCTION trace(request_id uuid); Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON FUNCTION flux.trace(request_id uuid) IS 'A request''s spans in execution order, with their depth in the tree.';


--
-- Name: track(regclass); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.track(target regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
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


--
-- Name: track_all(text[]); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.track_all(schemas text[] DEFAULT ARRAY['public'::text]) RETURNS SETOF regclass
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
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


--
-- Name: tracked_leaves(regclass); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.tracked_leaves(target regclass) RETURNS SETOF regclass
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT target WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree(target) AS p WHERE p.level > 0)
    UNION ALL
    SELECT p.relid FROM pg_catalog.pg_partition_tree(target) AS p WHERE p.isleaf AND p.level > 0
$$;


--
-- Name: try_lock_job_key(uuid, text, text); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.try_lock_job_key(tenant uuid, queue_name text, key text) RETURNS boolean
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT key IS NULL OR pg_catalog.pg_try_advisory_xact_lock(flux.job_key_lock(tenant, queue_name, key))
$$;


--
-- Name: undo_mutations_by_table(flux.rewound_table[]); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.undo_mutations_by_table(tables flux.rewound_table[]) RETURNS text[]
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    t flux.rewound_table;
    target regclass;
    key_match text;
    key_typed text;  -- the key's columns read from a key's JSON by their types, when every one is a scalar's
    columns text;
    missing text[] := '{}';
    -- The table's own triggers fire: what they do to the rows put back is undone (flux.replay_pins, '@undo')
    triggers_on boolean;
    pinned integer := 0;
BEGIN
    FOREACH t IN ARRAY coalesce(tables, '{}') LOOP
        target := pg_catalog.to_regclass(pg_catalog.format('%I.%I', t.table_schema, t.table_name));
        IF target IS NULL THEN
            missing := missing || pg_catalog.format('%I.%I', t.table_schema, t.table_name);
            CONTINUE;
        END IF;
        triggers_on := flux.rewind_fires_own_triggers(target);
        SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = k.%1$I', key), ' AND '),
               CASE WHEN pg_catalog.count(a.attname) = pg_catalog.count(*)
                         AND pg_catalog.bool_and(a.typcategory NOT IN ('A', 'C'))
                    THEN pg_catalog.string_agg(pg_catalog.format('(k.k ->> %1$L)::%2$s AS %1$I', key,
                                               pg_catalog.format_type(a.atttypid, a.atttypmod)), ', ')
               END
          INTO key_match, key_typed
          FROM pg_catalog.jsonb_object_keys(t.some_key) AS key
          LEFT JOIN LATERAL (  -- each by its name (an index), not a pass over the catalog (OFFSET 0: not a join)
                SELECT a.attname, a.atttypid, a.atttypmod, y.typcategory
                  FROM pg_catalog.pg_attribute a
                  JOIN pg_catalog.pg_type y ON y.oid = a.atttypid
                 WHERE a.attrelid = target AND a.attname = key AND a.attnum > 0 AND NOT a.attisdropped
                OFFSET 0) AS a ON true;
        IF triggers_on AND t.restored IS NOT NULL THEN  -- each row put back, by an UPDATE or an INSERT
            INSERT INTO flux.replay_pins (replay_id, call, position, table_schema, table_name, op, row_pk, new)
            SELECT '00000000-0000-0000-0000-000000000000', '@undo', pinned + r.n * 2 + o.n, t.table_schema,
                   t.table_name, o.op, coalesce((SELECT pg_catalog.jsonb_object_agg(k, r.row -> k)
                                                   FROM pg_catalog.jsonb_object_keys(t.some_key) AS k), '{}'), r.row
              FROM pg_catalog.unnest(t.restored) WITH ORDINALITY AS r (row, n)
             CROSS JOIN (VALUES ('UPDATE', 0), ('INSERT', 1)) AS o (op, n);
            pinned := pinned + 2 * pg_catalog.cardinality(t.restored) + 2;
        END IF;
        -- Flux's recording trigger leaves the rows put back alone (flux.track), and the pin trigger pins
        -- them only where the table's own triggers fire (`@undo`; `@rewind` otherwise)
        PERFORM pg_catalog.set_config('flux.replay_call', CASE WHEN triggers_on THEN '@undo' ELSE '@rewind' END,
                                      true);
        IF t.made IS NOT NULL THEN
            -- by the keys read as their columns' types (cheaper than a whole row of the table for each key)
            EXECUTE pg_catalog.format(
                'DELETE FROM %1$s AS t USING %3$s AS k WHERE %2$s', target, key_match,
                coalesce('(SELECT ' || key_typed || ' FROM pg_catalog.unnest($1) AS k (k))',
                         pg_catalog.format('pg_catalog.jsonb_populate_recordset(NULL::%s, pg_catalog.to_jsonb($1))',
                                           target)))
                USING t.made;
        END IF;
        IF t.restored IS NOT NULL THEN
            -- Every column there was then (one added since keeps today's value), but the key (it matches) and
            -- what cannot be set (generated columns, GENERATED ALWAYS identities).
            SELECT pg_catalog.string_agg(pg_catalog.format(
                       '%1$I = CASE WHEN j.j ? %2$L THEN k.%1$I ELSE t.%1$I END', a.attname, a.attname), ', ')
              INTO columns
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
               AND a.attidentity <> 'a' AND NOT t.some_key ? a.attname;
            IF columns IS NOT NULL THEN
                EXECUTE pg_catalog.format(
                    'UPDATE %1$s AS t SET %2$s FROM pg_catalog.unnest($1) AS j (j)'
                    ' CROSS JOIN LATERAL pg_catalog.jsonb_populate_record(NULL::%1$s, j.j) AS k WHERE %3$s',
                    target, columns, key_match) USING t.restored;
            END IF;
        END IF;
        IF t.restored IS NOT NULL THEN  -- those deleted since (not there today)
            SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
              INTO columns
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
            EXECUTE pg_catalog.format(
                'INSERT INTO %1$s (%2$s) OVERRIDING SYSTEM VALUE SELECT %2$s'
                ' FROM pg_catalog.jsonb_populate_recordset(NULL::%1$s, pg_catalog.to_jsonb($1)) AS k'
                ' WHERE NOT EXISTS (SELECT FROM %1$s AS t WHERE %3$s)',
                target, columns, key_match) USING t.restored;
        END IF;
        PERFORM pg_catalog.set_config('flux.replay_call', '', true);
    END LOOP;
    RETURN missing;
END
$_$;


--
-- Name: undo_mutations_one_by_one(bigint[]); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.undo_mutations_one_by_one(ids bigint[]) RETURNS text[]
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    m record;
    target regclass;
    checked regclass[] := '{}';  -- the tables whose own triggers were looked at
    key_match text;
    columns text;
    missing text[] := '{}';
BEGIN
    PERFORM pg_catalog.set_config('flux.replay_call', '@rewind', true);  -- not recorded, not pinned
    FOR m IN SELECT * FROM flux.mutations WHERE id = ANY(ids) ORDER BY id DESC LOOP
        target := pg_catalog.to_regclass(pg_catalog.format('%I.%I', m.table_schema, m.table_name));
        IF target IS NULL THEN
            missing := missing || pg_catalog.format('%I.%I', m.table_schema, m.table_name);
            CONTINUE;
        END IF;
        IF target <> ALL(checked) THEN
            PERFORM flux.rewind_fires_own_triggers(target);
            checked := checked || target;
        END IF;
        SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = k.%1$I', key), ' AND ')
          INTO key_match FROM pg_catalog.jsonb_object_keys(m.row_pk) AS key;
        IF m.op = 'INSERT' THEN
            EXECUTE pg_catalog.format(
                'DELETE FROM %1$s AS t USING pg_catalog.jsonb_populate_record(NULL::%1$s, $1) AS k WHERE %2$s',
                target, key_match) USING m.row_pk;
        ELSIF m.op = 'UPDATE' THEN
            SELECT pg_catalog.string_agg(pg_catalog.format('%1$I = o.%1$I', a.attname), ', ')
              INTO columns
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
               AND a.attname = ANY(m.changed);
            IF columns IS NOT NULL THEN
                EXECUTE pg_catalog.format(
                    'UPDATE %1$s AS t SET %2$s FROM pg_catalog.jsonb_populate_record(NULL::%1$s, $1) AS o,'
                    ' pg_catalog.jsonb_populate_record(NULL::%1$s, $2) AS k WHERE %3$s',
                    target, columns, key_match) USING m.old, m.row_pk;
            END IF;
        ELSE
            SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
              INTO columns
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
            EXECUTE pg_catalog.format(
                'INSERT INTO %1$s (%2$s) OVERRIDING SYSTEM VALUE'
                ' SELECT %2$s FROM pg_catalog.jsonb_populate_record(NULL::%1$s, $1)',
                target, columns) USING m.old;
        END IF;
    END LOOP;
    PERFORM pg_catalog.set_config('flux.replay_call', '', true);
    RETURN missing;
END
$_$;


--
-- Name: untrack(regclass); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.untrack(target regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
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


--
-- Name: user_id(); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.user_id() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT flux.claim('sub')
$$;


--
-- Name: writes_to_rewind(uuid, boolean, timestamp with time zone, timestamp with time zone, bigint, bigint, text[], text[]); Type: FUNCTION; Schema: flux; Owner: -
--

CREATE FUNCTION flux.writes_to_rewind(request uuid, as_of boolean, started timestamp with time zone, ended timestamp with time zone, own_first bigint, own_last bigint, schemas text[], names text[], OUT tables flux.rewound_table[], OUT drift jsonb) RETURNS record
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET enable_sort TO 'off'
    SET jit TO 'off'
    AS $$
BEGIN
    WITH per_row AS (
        SELECT w.table_schema, w.table_name, w.row_pk,
               -- its first write, and whether that made the row (hashed: neither a sort nor a join)
               pg_catalog.min(w.id) AS first, pg_catalog.min(w.id) FILTER (WHERE w.op = 'INSERT') AS first_made,
               pg_catalog.count(*) AS writes,
               pg_catalog.bool_or(w.op = 'UPDATE' AND w.row_pk ?| w.changed) AS key_changed
          FROM flux.rewound_writes(request, as_of, started, own_first, schemas, names) AS w
         GROUP BY w.table_schema, w.table_name, w.row_pk
    )
    SELECT pg_catalog.array_agg(t::flux.rewound_table) INTO tables
      FROM (SELECT r.table_schema, r.table_name,
                   (SELECT f.row_pk FROM flux.mutations f WHERE f.id = pg_catalog.min(r.first)) AS some_key,
                   pg_catalog.array_agg(r.row_pk) FILTER (WHERE r.first = r.first_made) AS made,
                   pg_catalog.array_agg((SELECT f.old FROM flux.mutations f WHERE f.id = r.first))
                       FILTER (WHERE r.first_made IS DISTINCT FROM r.first) AS restored,
                   pg_catalog.bool_or(r.key_changed) AS key_changed, pg_catalog.sum(r.writes)::integer AS writes
              FROM per_row AS r
             GROUP BY r.table_schema, r.table_name
            HAVING (r.table_schema, r.table_name) IN (
                       SELECT * FROM ROWS FROM (pg_catalog.unnest(schemas), pg_catalog.unnest(names)))
                OR EXISTS (SELECT FROM flux.mutations o  -- a table the request wrote itself
                            WHERE o.request_id = request
                              AND (o.table_schema, o.table_name) = (r.table_schema, r.table_name))) AS t;
    IF as_of AND tables IS NULL THEN
        RETURN;  -- nothing to take back: no drift either (as-of's is among what it takes back)
    END IF;
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', d.id, 'request_id', d.request_id, 'table_schema', d.table_schema,
               'table_name', d.table_name, 'op', d.op, 'row_pk', d.row_pk, 'at', d.at) ORDER BY d.id)
      INTO drift
      FROM (SELECT s.id, s.request_id, s.table_schema, s.table_name, s.op, s.row_pk, s.at
              FROM (SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at
                      FROM flux.mutations m
                     WHERE as_of AND m.at >= started AND m.at < ended
                    UNION ALL
                    SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at
                      FROM flux.mutations m
                     WHERE as_of AND m.id >= own_first AND m.at < started
                    UNION ALL
                    SELECT l.id, l.request_id, l.table_schema, l.table_name, l.op, l.row_pk, l.at
                      FROM flux.mutations_since(started, own_last + 1, request, schemas, names) AS l
                     WHERE NOT as_of
                    OFFSET 0) AS s  -- the tables picked from what the indexes found, as in flux.mutations_since
             WHERE s.request_id IS DISTINCT FROM request
               AND (s.table_schema, s.table_name) IN (
                       SELECT * FROM ROWS FROM (pg_catalog.unnest(schemas), pg_catalog.unnest(names)))
             ORDER BY s.id LIMIT 100) AS d;
END
$$;


--
-- Name: admin_keys; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.admin_keys (
    id bigint NOT NULL,
    prefix text NOT NULL,
    key_hash bytea NOT NULL,
    name text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone,
    revoked_at timestamp with time zone,
    CONSTRAINT admin_keys_hash_check CHECK ((octet_length(key_hash) = 32))
);


--
-- Name: admin_keys_id_seq; Type: SEQUENCE; Schema: flux; Owner: -
--

ALTER TABLE flux.admin_keys ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME flux.admin_keys_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: job_history; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.job_history (
    id bigint NOT NULL,
    tenant_id uuid,
    queue text DEFAULT 'default'::text NOT NULL,
    function text NOT NULL,
    payload jsonb DEFAULT 'null'::jsonb NOT NULL,
    status text DEFAULT 'queued'::text NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    run_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 5 NOT NULL,
    idempotency_key text,
    locked_by text,
    locked_until timestamp with time zone,
    last_error jsonb,
    parent_request_id uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone NOT NULL,
    role text DEFAULT 'service'::text NOT NULL,
    claims jsonb DEFAULT '{}'::jsonb NOT NULL,
    cron_name text,
    last_request_id uuid,
    CONSTRAINT job_history_status_check CHECK ((status = ANY (ARRAY['done'::text, 'dead'::text, 'cancelled'::text])))
)
PARTITION BY RANGE (finished_at);


--
-- Name: TABLE job_history; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.job_history IS 'Finished jobs (done, dead, cancelled), partitioned by the UTC day they finished; flux.all_jobs shows both.';


--
-- Name: all_jobs; Type: VIEW; Schema: flux; Owner: -
--

CREATE VIEW flux.all_jobs AS
 SELECT jobs.id,
    jobs.tenant_id,
    jobs.queue,
    jobs.function,
    jobs.payload,
    jobs.status,
    jobs.priority,
    jobs.run_at,
    jobs.attempts,
    jobs.max_attempts,
    jobs.idempotency_key,
    jobs.locked_by,
    jobs.locked_until,
    jobs.last_error,
    jobs.parent_request_id,
    jobs.created_at,
    jobs.finished_at,
    jobs.role,
    jobs.claims,
    jobs.cron_name,
    jobs.last_request_id
   FROM flux.jobs
UNION ALL
 SELECT job_history.id,
    job_history.tenant_id,
    job_history.queue,
    job_history.function,
    job_history.payload,
    job_history.status,
    job_history.priority,
    job_history.run_at,
    job_history.attempts,
    job_history.max_attempts,
    job_history.idempotency_key,
    job_history.locked_by,
    job_history.locked_until,
    job_history.last_error,
    job_history.parent_request_id,
    job_history.created_at,
    job_history.finished_at,
    job_history.role,
    job_history.claims,
    job_history.cron_name,
    job_history.last_request_id
   FROM flux.job_history;


--
-- Name: VIEW all_jobs; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON VIEW flux.all_jobs IS 'Every job: those waiting or running (flux.jobs) and the finished (flux.job_history).';


--
-- Name: api_keys; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.api_keys (
    id bigint NOT NULL,
    prefix text NOT NULL,
    key_hash bytea NOT NULL,
    name text,
    tenant_id uuid,
    role text DEFAULT 'user'::text NOT NULL,
    claims jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone,
    CONSTRAINT api_keys_hash_check CHECK ((octet_length(key_hash) = 32)),
    CONSTRAINT api_keys_role_check CHECK ((role = ANY (ARRAY['anon'::text, 'user'::text, 'service'::text])))
);


--
-- Name: TABLE api_keys; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.api_keys IS 'API keys: the sha256 of each key and its prefix, never the key itself.';


--
-- Name: api_keys_id_seq; Type: SEQUENCE; Schema: flux; Owner: -
--

ALTER TABLE flux.api_keys ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME flux.api_keys_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: artifacts; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.artifacts (
    sha256 text NOT NULL,
    runtime text NOT NULL,
    code bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT artifacts_runtime_check CHECK ((runtime = ANY (ARRAY['wasm'::text, 'component'::text, 'typescript'::text, 'javascript'::text]))),
    CONSTRAINT artifacts_sha256_check CHECK ((sha256 ~ '^[0-9a-f]{64}$'::text))
);


--
-- Name: TABLE artifacts; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.artifacts IS 'Built function code by sha256 (Wasm, components, TypeScript/JavaScript source).';


--
-- Name: column_policies; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.column_policies (
    id bigint NOT NULL,
    table_schema text DEFAULT 'public'::text NOT NULL,
    table_name text NOT NULL,
    column_name text NOT NULL,
    role text NOT NULL,
    readable boolean DEFAULT true NOT NULL,
    writable boolean DEFAULT true NOT NULL,
    mask text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT column_policies_role_check CHECK ((role = ANY (ARRAY['anon'::text, 'user'::text, 'service'::text])))
);


--
-- Name: TABLE column_policies; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.column_policies IS 'Column rules per Flux role (anon, user, service): readable, writable, and a mask readers get instead of the value (a masked column is unreadable by raw SQL). Enforced by the query compiler and, as column GRANTs, by flux.apply_column_policies(). Policies only take privileges away, never grant them.';


--
-- Name: COLUMN column_policies.mask; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON COLUMN flux.column_policies.mask IS 'Null: no mask. Otherwise the text the compiler returns instead of the value; the role gets no SELECT on the column.';


--
-- Name: column_policies_id_seq; Type: SEQUENCE; Schema: flux; Owner: -
--

ALTER TABLE flux.column_policies ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME flux.column_policies_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: column_policy_grants; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.column_policy_grants (
    table_schema text NOT NULL,
    table_name text NOT NULL,
    role text NOT NULL,
    privilege text NOT NULL,
    granted_columns text[] NOT NULL,
    converted_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT column_policy_grants_privilege_check CHECK ((privilege = ANY (ARRAY['SELECT'::text, 'INSERT'::text, 'UPDATE'::text]))),
    CONSTRAINT column_policy_grants_role_check CHECK ((role = ANY (ARRAY['anon'::text, 'user'::text, 'service'::text])))
);


--
-- Name: TABLE column_policy_grants; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.column_policy_grants IS 'Table-level privileges of a Flux role that flux.apply_column_policies() turned into column grants (granted_columns: the columns it left granted). Bookkeeping of that function; do not edit by hand.';


--
-- Name: cron; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.cron (
    name text NOT NULL,
    schedule text NOT NULL,
    timezone text DEFAULT 'UTC'::text NOT NULL,
    function text NOT NULL,
    payload jsonb DEFAULT 'null'::jsonb NOT NULL,
    queue text DEFAULT 'default'::text NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    next_run_at timestamp with time zone NOT NULL,
    last_run_at timestamp with time zone,
    source text DEFAULT 'api'::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT cron_name_check CHECK ((name ~ '^[A-Za-z_][A-Za-z0-9_-]{0,62}$'::text)),
    CONSTRAINT cron_queue_check CHECK ((queue ~ '^[a-z][a-z0-9_-]{0,62}$'::text)),
    CONSTRAINT cron_source_check CHECK ((source = ANY (ARRAY['project'::text, 'api'::text])))
);


--
-- Name: TABLE cron; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.cron IS 'Schedules (5-field cron in a time zone): from flux.toml [[cron]] (source project, synced by each deploy) or the management API (source api). A tick missed while no worker ran fires once on recovery.';


--
-- Name: dashboard_signouts; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.dashboard_signouts (
    session_sha256 bytea NOT NULL,
    ends_at timestamp with time zone NOT NULL
);


--
-- Name: TABLE dashboard_signouts; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.dashboard_signouts IS 'Dashboard sessions that signed out, by the sha256 of their CSRF token, until their cookie would have ended; read on every dashboard request, written by sign-out.';


--
-- Name: deployment_functions; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.deployment_functions (
    deployment_id bigint NOT NULL,
    name text NOT NULL,
    runtime text NOT NULL,
    sha256 text NOT NULL,
    language text NOT NULL,
    limits jsonb DEFAULT '{}'::jsonb NOT NULL
);


--
-- Name: deployments; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.deployments (
    id bigint NOT NULL,
    project text NOT NULL,
    content_sha text NOT NULL,
    git_commit text,
    routes jsonb DEFAULT '[]'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    created_by text DEFAULT SESSION_USER NOT NULL,
    active boolean DEFAULT false NOT NULL,
    activated_at timestamp with time zone,
    gate jsonb
);


--
-- Name: TABLE deployments; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.deployments IS 'One version of the project: its functions, routes and limits; one is active.';


--
-- Name: COLUMN deployments.gate; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON COLUMN flux.deployments.gate IS 'The deploy gate''s verdict on this version (flux deploy --gate): {verdict: passed|accepted|refused, db, last, since_s, functions, summary {same, diverged, drift, error}, divergences (the first ones), took_ms}; NULL when deployed without the gate.';


--
-- Name: deployments_id_seq; Type: SEQUENCE; Schema: flux; Owner: -
--

ALTER TABLE flux.deployments ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME flux.deployments_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: job_history_default; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.job_history_default (
    id bigint NOT NULL,
    tenant_id uuid,
    queue text DEFAULT 'default'::text NOT NULL,
    function text NOT NULL,
    payload jsonb DEFAULT 'null'::jsonb NOT NULL,
    status text DEFAULT 'queued'::text NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    run_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 5 NOT NULL,
    idempotency_key text,
    locked_by text,
    locked_until timestamp with time zone,
    last_error jsonb,
    parent_request_id uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone NOT NULL,
    role text DEFAULT 'service'::text NOT NULL,
    claims jsonb DEFAULT '{}'::jsonb NOT NULL,
    cron_name text,
    last_request_id uuid,
    CONSTRAINT job_history_status_check CHECK ((status = ANY (ARRAY['done'::text, 'dead'::text, 'cancelled'::text])))
);


--
-- Name: job_runs; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.job_runs (
    job_id bigint NOT NULL,
    run integer NOT NULL,
    attempt integer NOT NULL,
    request_id uuid,
    worker text NOT NULL,
    ok boolean NOT NULL,
    error jsonb,
    finished_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: TABLE job_runs; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.job_runs IS 'One row per attempt of a job: its request (flux.requests, kind job or cron), ok, and the error of a failure; an attempt whose worker died has no request and the error FX404.';


--
-- Name: jobs_id_seq; Type: SEQUENCE; Schema: flux; Owner: -
--

ALTER TABLE flux.jobs ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME flux.jobs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: mutations; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.mutations (
    id bigint NOT NULL,
    request_id uuid,
    actor text DEFAULT SESSION_USER NOT NULL,
    tenant_id uuid,
    table_schema text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL,
    row_pk jsonb NOT NULL,
    old jsonb,
    new jsonb,
    changed text[],
    txid bigint DEFAULT txid_current() NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    span_seq integer,
    CONSTRAINT mutations_op_check CHECK ((op = ANY (ARRAY['INSERT'::text, 'UPDATE'::text, 'DELETE'::text])))
);


--
-- Name: TABLE mutations; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.mutations IS 'Every INSERT, UPDATE and DELETE on a tracked table, with old and new values and the request that made it (request_id is null for writes made outside Flux; actor is the database session user).';


--
-- Name: COLUMN mutations.span_seq; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON COLUMN flux.mutations.span_seq IS 'The seq of the span (in flux.spans, with request_id) whose database call made this change; NULL for writes made outside a request, or by a statement Flux did not expect to write (a function called by a select).';


--
-- Name: requests; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.requests (
    id uuid NOT NULL,
    tenant_id uuid,
    kind text DEFAULT 'http'::text NOT NULL,
    method text,
    path text,
    route_id bigint,
    function text,
    deployment_id bigint,
    code_sha text,
    status integer,
    ok boolean NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    duration_us bigint,
    input jsonb,
    output jsonb,
    error jsonb,
    trace_id text,
    parent_request_id uuid,
    replay_of uuid,
    CONSTRAINT requests_duration_us_check CHECK ((duration_us >= 0)),
    CONSTRAINT requests_kind_check CHECK ((kind = ANY (ARRAY['http'::text, 'job'::text, 'cron'::text, 'replay'::text])))
);


--
-- Name: TABLE requests; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.requests IS 'One row per execution (HTTP request, job attempt, cron tick, replay): its input, output and error.';


--
-- Name: mutation_log; Type: VIEW; Schema: flux; Owner: -
--

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
   FROM (flux.mutations m
     LEFT JOIN flux.requests r ON ((r.id = m.request_id)));


--
-- Name: VIEW mutation_log; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON VIEW flux.mutation_log IS 'Mutations with the request path, function and code version that made them.';


--
-- Name: mutations_id_seq; Type: SEQUENCE; Schema: flux; Owner: -
--

ALTER TABLE flux.mutations ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME flux.mutations_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: queue_stats; Type: VIEW; Schema: flux; Owner: -
--

CREATE VIEW flux.queue_stats AS
 WITH hot AS (
         SELECT j.queue,
            count(*) FILTER (WHERE ((j.status = 'queued'::text) AND (j.run_at <= now()))) AS queued,
            count(*) FILTER (WHERE ((j.status = 'queued'::text) AND (j.run_at > now()))) AS scheduled,
            count(*) FILTER (WHERE (j.status = 'running'::text)) AS running,
            count(*) FILTER (WHERE (j.status = 'failed'::text)) AS retrying,
            max((now() - j.run_at)) FILTER (WHERE ((j.status = ANY (ARRAY['queued'::text, 'failed'::text])) AND (j.run_at <= now()))) AS oldest_due
           FROM flux.jobs j
          GROUP BY j.queue
        ), finished AS (
         SELECT h.queue,
            count(*) FILTER (WHERE (h.status = 'dead'::text)) AS dead,
            count(*) FILTER (WHERE ((h.status = 'done'::text) AND (h.finished_at > (now() - '01:00:00'::interval)))) AS done_last_hour
           FROM flux.job_history h
          WHERE ((h.status = 'dead'::text) OR (h.finished_at > (now() - '01:00:00'::interval)))
          GROUP BY h.queue
        )
 SELECT COALESCE(hot.queue, finished.queue) AS queue,
    COALESCE(hot.queued, (0)::bigint) AS queued,
    COALESCE(hot.scheduled, (0)::bigint) AS scheduled,
    COALESCE(hot.running, (0)::bigint) AS running,
    COALESCE(hot.retrying, (0)::bigint) AS retrying,
    COALESCE(finished.dead, (0)::bigint) AS dead,
    COALESCE(finished.done_last_hour, (0)::bigint) AS done_last_hour,
    (EXTRACT(epoch FROM hot.oldest_due))::double precision AS oldest_due_s
   FROM (hot
     FULL JOIN finished ON ((finished.queue = hot.queue)));


--
-- Name: VIEW queue_stats; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON VIEW flux.queue_stats IS 'Per queue: jobs due, scheduled, running, retrying, dead, done in the last hour, and the oldest due job''s wait (s).';


--
-- Name: rate_buckets; Type: TABLE; Schema: flux; Owner: -
--

CREATE UNLOGGED TABLE flux.rate_buckets (
    bucket text NOT NULL,
    tokens double precision NOT NULL,
    allowed boolean NOT NULL,
    updated_at timestamp with time zone NOT NULL
);


--
-- Name: replay_grants; Type: TABLE; Schema: flux; Owner: -
--

CREATE UNLOGGED TABLE flux.replay_grants (
    secret_sha256 bytea NOT NULL,
    replay_id uuid NOT NULL,
    granted_at timestamp with time zone DEFAULT now() NOT NULL,
    txid bigint
);


--
-- Name: TABLE replay_grants; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.replay_grants IS 'The replays that may rewind and pin through flux.replay_prepare and read their mutations through flux.replay_captured, by the sha256 of a secret only the replaying process knows; written by the replaying owner, read only by those functions.';


--
-- Name: replay_pins; Type: TABLE; Schema: flux; Owner: -
--

CREATE UNLOGGED TABLE flux.replay_pins (
    replay_id uuid NOT NULL,
    call text NOT NULL,
    "position" integer NOT NULL,
    table_schema text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL,
    row_pk jsonb NOT NULL,
    old jsonb,
    new jsonb,
    used boolean DEFAULT false NOT NULL,
    CONSTRAINT replay_pins_op_check CHECK ((op = ANY (ARRAY['INSERT'::text, 'UPDATE'::text])))
);


--
-- Name: TABLE replay_pins; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.replay_pins IS 'The recorded values a replay gives back to the writes it runs again (only ever written inside a replay''s rolled-back transaction, so always empty to everyone else).';


--
-- Name: request_follower_inbox; Type: TABLE; Schema: flux; Owner: -
--

CREATE UNLOGGED TABLE flux.request_follower_inbox (
    follower_id bigint NOT NULL,
    request_id uuid NOT NULL
);


--
-- Name: TABLE request_follower_inbox; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.request_follower_inbox IS 'New request ids waiting for the next call of a follower that keeps an inbox (flux tail through FLUX_URL).';


--
-- Name: request_followers; Type: TABLE; Schema: flux; Owner: -
--

CREATE UNLOGGED TABLE flux.request_followers (
    id bigint NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    keeps_inbox boolean DEFAULT false NOT NULL
);


--
-- Name: TABLE request_followers; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.request_followers IS 'Sessions following new requests (flux tail): while one is live, new requests are NOTIFYed on flux_requests.';


--
-- Name: COLUMN request_followers.keeps_inbox; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON COLUMN flux.request_followers.keeps_inbox IS 'Whether the ids of new requests are also kept in flux.request_follower_inbox for this follower (a follower through the management API, which holds no LISTEN between its calls).';


--
-- Name: request_followers_id_seq; Type: SEQUENCE; Schema: flux; Owner: -
--

ALTER TABLE flux.request_followers ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME flux.request_followers_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: spans; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.spans (
    request_id uuid NOT NULL,
    seq integer NOT NULL,
    span_id text NOT NULL,
    parent_seq integer,
    tenant_id uuid,
    module text NOT NULL,
    name text NOT NULL,
    started_at timestamp with time zone NOT NULL,
    duration_us bigint,
    ok boolean DEFAULT true NOT NULL,
    attributes jsonb,
    input jsonb,
    output jsonb,
    error jsonb,
    CONSTRAINT spans_module_check CHECK ((module = ANY (ARRAY['gateway'::text, 'runtime'::text, 'data'::text, 'queue'::text, 'fetch'::text, 'secrets'::text, 'log'::text, 'clock'::text]))),
    CONSTRAINT spans_seq_check CHECK ((seq >= 0))
)
PARTITION BY RANGE (started_at);


--
-- Name: TABLE spans; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.spans IS 'Every step of an execution in order (seq), with its full input and output. Partitioned by day (UTC).';


--
-- Name: request_log; Type: VIEW; Schema: flux; Owner: -
--

CREATE VIEW flux.request_log AS
 SELECT r.id AS request_id,
    r.started_at,
    r.kind,
    r.method,
    r.path,
    r.function,
    r.status,
    r.ok,
    round(((r.duration_us)::numeric / 1000.0), 3) AS duration_ms,
    (r.error ->> 'code'::text) AS error_code,
    (r.error ->> 'message'::text) AS error_message,
    r.code_sha,
    r.tenant_id,
    r.parent_request_id,
    ( SELECT count(*) AS count
           FROM flux.spans s
          WHERE (s.request_id = r.id)) AS spans
   FROM flux.requests r;


--
-- Name: VIEW request_log; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON VIEW flux.request_log IS 'Requests for people: durations in ms, the error code pulled out.';


--
-- Name: routes; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.routes (
    id bigint NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    function text NOT NULL,
    auth text DEFAULT 'any'::text NOT NULL,
    rate_per_s double precision,
    burst integer,
    cors_origins text[] DEFAULT '{}'::text[] NOT NULL,
    max_body_bytes integer DEFAULT 1048576 NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT routes_auth_check CHECK ((auth = ANY (ARRAY['none'::text, 'key'::text, 'jwt'::text, 'any'::text]))),
    CONSTRAINT routes_max_body_bytes_check CHECK ((max_body_bytes > 0)),
    CONSTRAINT routes_method_check CHECK ((method = ANY (ARRAY['GET'::text, 'POST'::text, 'PUT'::text, 'PATCH'::text, 'DELETE'::text, 'HEAD'::text, 'OPTIONS'::text]))),
    CONSTRAINT routes_path_check CHECK ((path ~ '^/'::text)),
    CONSTRAINT routes_rate_check CHECK ((((rate_per_s IS NULL) = (burst IS NULL)) AND (COALESCE(rate_per_s, (1)::double precision) > (0)::double precision) AND (COALESCE(burst, 1) >= 1)))
);


--
-- Name: TABLE routes; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.routes IS 'HTTP routes to functions; every Flux process reloads them on NOTIFY flux_routes.';


--
-- Name: routes_id_seq; Type: SEQUENCE; Schema: flux; Owner: -
--

ALTER TABLE flux.routes ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME flux.routes_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: schema_migrations; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.schema_migrations (
    kind text NOT NULL,
    version text NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT schema_migrations_kind_check CHECK ((kind = ANY (ARRAY['flux'::text, 'function'::text, 'project'::text])))
);


--
-- Name: TABLE schema_migrations; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.schema_migrations IS 'Applied migrations: kind flux = sql/migrations, function = sql/functions (re-applied on change), project = a Flux project''s migrations/ folder.';


--
-- Name: secrets; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.secrets (
    name text NOT NULL,
    nonce bytea NOT NULL,
    ciphertext bytea NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT secrets_name_check CHECK ((name ~ '^[A-Za-z_][A-Za-z0-9_]{0,127}$'::text))
);


--
-- Name: TABLE secrets; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON TABLE flux.secrets IS 'Secrets, AES-GCM encrypted outside Postgres; values never appear in clear.';


--
-- Name: spans_default; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.spans_default (
    request_id uuid NOT NULL,
    seq integer NOT NULL,
    span_id text NOT NULL,
    parent_seq integer,
    tenant_id uuid,
    module text NOT NULL,
    name text NOT NULL,
    started_at timestamp with time zone NOT NULL,
    duration_us bigint,
    ok boolean DEFAULT true NOT NULL,
    attributes jsonb,
    input jsonb,
    output jsonb,
    error jsonb,
    CONSTRAINT spans_module_check CHECK ((module = ANY (ARRAY['gateway'::text, 'runtime'::text, 'data'::text, 'queue'::text, 'fetch'::text, 'secrets'::text, 'log'::text, 'clock'::text]))),
    CONSTRAINT spans_seq_check CHECK ((seq >= 0))
);


--
-- Name: tenants; Type: TABLE; Schema: flux; Owner: -
--

CREATE TABLE flux.tenants (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    rate_per_s double precision,
    burst integer,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT tenants_rate_check CHECK ((((rate_per_s IS NULL) = (burst IS NULL)) AND (COALESCE(rate_per_s, (1)::double precision) > (0)::double precision) AND (COALESCE(burst, 1) >= 1)))
);


--
-- Name: tracked_tables; Type: VIEW; Schema: flux; Owner: -
--

CREATE VIEW flux.tracked_tables AS
 SELECT n.nspname AS table_schema,
    c.relname AS table_name,
    (c.oid)::regclass AS table_ref
   FROM ((pg_trigger t
     JOIN pg_class c ON ((c.oid = t.tgrelid)))
     JOIN pg_namespace n ON ((n.oid = c.relnamespace)))
  WHERE ((t.tgname = 'flux_mutations'::name) AND (t.tgparentid = (0)::oid));


--
-- Name: VIEW tracked_tables; Type: COMMENT; Schema: flux; Owner: -
--

COMMENT ON VIEW flux.tracked_tables IS 'Tables whose writes are recorded in flux.mutations (see flux.track).';


--
-- Name: job_history_default; Type: TABLE ATTACH; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.job_history ATTACH PARTITION flux.job_history_default DEFAULT;


--
-- Name: spans_default; Type: TABLE ATTACH; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.spans ATTACH PARTITION flux.spans_default DEFAULT;


--
-- Name: admin_keys admin_keys_key_hash_key; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.admin_keys
    ADD CONSTRAINT admin_keys_key_hash_key UNIQUE (key_hash);


--
-- Name: admin_keys admin_keys_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.admin_keys
    ADD CONSTRAINT admin_keys_pkey PRIMARY KEY (id);


--
-- Name: api_keys api_keys_key_hash_key; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.api_keys
    ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash);


--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);


--
-- Name: artifacts artifacts_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.artifacts
    ADD CONSTRAINT artifacts_pkey PRIMARY KEY (sha256);


--
-- Name: column_policies column_policies_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.column_policies
    ADD CONSTRAINT column_policies_pkey PRIMARY KEY (id);


--
-- Name: column_policies column_policies_table_column_role_key; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.column_policies
    ADD CONSTRAINT column_policies_table_column_role_key UNIQUE (table_schema, table_name, column_name, role);


--
-- Name: column_policy_grants column_policy_grants_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.column_policy_grants
    ADD CONSTRAINT column_policy_grants_pkey PRIMARY KEY (table_schema, table_name, role, privilege);


--
-- Name: cron cron_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.cron
    ADD CONSTRAINT cron_pkey PRIMARY KEY (name);


--
-- Name: dashboard_signouts dashboard_signouts_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.dashboard_signouts
    ADD CONSTRAINT dashboard_signouts_pkey PRIMARY KEY (session_sha256);


--
-- Name: deployment_functions deployment_functions_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.deployment_functions
    ADD CONSTRAINT deployment_functions_pkey PRIMARY KEY (deployment_id, name);


--
-- Name: deployments deployments_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.deployments
    ADD CONSTRAINT deployments_pkey PRIMARY KEY (id);


--
-- Name: job_runs job_runs_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.job_runs
    ADD CONSTRAINT job_runs_pkey PRIMARY KEY (job_id, run);


--
-- Name: jobs jobs_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);


--
-- Name: mutations mutations_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.mutations
    ADD CONSTRAINT mutations_pkey PRIMARY KEY (id);


--
-- Name: rate_buckets rate_buckets_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.rate_buckets
    ADD CONSTRAINT rate_buckets_pkey PRIMARY KEY (bucket);


--
-- Name: replay_grants replay_grants_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.replay_grants
    ADD CONSTRAINT replay_grants_pkey PRIMARY KEY (secret_sha256);


--
-- Name: replay_pins replay_pins_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.replay_pins
    ADD CONSTRAINT replay_pins_pkey PRIMARY KEY (replay_id, call, "position");


--
-- Name: request_followers request_followers_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.request_followers
    ADD CONSTRAINT request_followers_pkey PRIMARY KEY (id);


--
-- Name: requests requests_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.requests
    ADD CONSTRAINT requests_pkey PRIMARY KEY (id);


--
-- Name: routes routes_method_path_key; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.routes
    ADD CONSTRAINT routes_method_path_key UNIQUE (method, path);


--
-- Name: routes routes_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.routes
    ADD CONSTRAINT routes_pkey PRIMARY KEY (id);


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (kind, version);


--
-- Name: secrets secrets_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.secrets
    ADD CONSTRAINT secrets_pkey PRIMARY KEY (name);


--
-- Name: spans spans_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.spans
    ADD CONSTRAINT spans_pkey PRIMARY KEY (request_id, seq, started_at);


--
-- Name: spans_default spans_default_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.spans_default
    ADD CONSTRAINT spans_default_pkey PRIMARY KEY (request_id, seq, started_at);


--
-- Name: tenants tenants_name_key; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.tenants
    ADD CONSTRAINT tenants_name_key UNIQUE (name);


--
-- Name: tenants tenants_pkey; Type: CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.tenants
    ADD CONSTRAINT tenants_pkey PRIMARY KEY (id);


--
-- Name: cron_next_run_at_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX cron_next_run_at_idx ON flux.cron USING btree (next_run_at) WHERE enabled;


--
-- Name: deployment_functions_sha256_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX deployment_functions_sha256_idx ON flux.deployment_functions USING btree (sha256);


--
-- Name: deployments_one_active_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE UNIQUE INDEX deployments_one_active_idx ON flux.deployments USING btree (active) WHERE active;


--
-- Name: job_history_dead_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX job_history_dead_idx ON ONLY flux.job_history USING btree (finished_at DESC) WHERE (status = 'dead'::text);


--
-- Name: job_history_default_finished_at_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX job_history_default_finished_at_idx ON flux.job_history_default USING btree (finished_at DESC) WHERE (status = 'dead'::text);


--
-- Name: job_history_id_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX job_history_id_idx ON ONLY flux.job_history USING btree (id);


--
-- Name: job_history_default_id_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX job_history_default_id_idx ON flux.job_history_default USING btree (id);


--
-- Name: job_history_parent_request_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX job_history_parent_request_idx ON ONLY flux.job_history USING btree (parent_request_id) WHERE (parent_request_id IS NOT NULL);


--
-- Name: job_history_default_parent_request_id_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX job_history_default_parent_request_id_idx ON flux.job_history_default USING btree (parent_request_id) WHERE (parent_request_id IS NOT NULL);


--
-- Name: job_history_idempotency_key_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX job_history_idempotency_key_idx ON ONLY flux.job_history USING btree (queue, idempotency_key) WHERE (idempotency_key IS NOT NULL);


--
-- Name: job_history_default_queue_idempotency_key_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX job_history_default_queue_idempotency_key_idx ON flux.job_history_default USING btree (queue, idempotency_key) WHERE (idempotency_key IS NOT NULL);


--
-- Name: job_runs_request_id_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX job_runs_request_id_idx ON flux.job_runs USING btree (request_id) WHERE (request_id IS NOT NULL);


--
-- Name: jobs_due_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX jobs_due_idx ON flux.jobs USING btree (priority DESC, run_at, id) WHERE (status = ANY (ARRAY['queued'::text, 'failed'::text]));


--
-- Name: jobs_idempotency_key_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE UNIQUE INDEX jobs_idempotency_key_idx ON flux.jobs USING btree (COALESCE(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), queue, idempotency_key) WHERE (idempotency_key IS NOT NULL);


--
-- Name: jobs_locked_until_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX jobs_locked_until_idx ON flux.jobs USING btree (locked_until) WHERE (status = 'running'::text);


--
-- Name: jobs_parent_request_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX jobs_parent_request_idx ON flux.jobs USING btree (parent_request_id) WHERE (parent_request_id IS NOT NULL);


--
-- Name: mutations_at_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX mutations_at_idx ON flux.mutations USING brin (at) WITH (autosummarize='on', pages_per_range='8');


--
-- Name: mutations_request_id_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX mutations_request_id_idx ON flux.mutations USING btree (request_id) WHERE (request_id IS NOT NULL);


--
-- Name: mutations_row_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX mutations_row_idx ON flux.mutations USING btree (table_schema, table_name, row_pk, id);


--
-- Name: replay_pins_row_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX replay_pins_row_idx ON flux.replay_pins USING btree (replay_id, call, table_schema, table_name, row_pk);


--
-- Name: request_follower_inbox_follower_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX request_follower_inbox_follower_idx ON flux.request_follower_inbox USING btree (follower_id);


--
-- Name: requests_failed_started_at_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX requests_failed_started_at_idx ON flux.requests USING btree (started_at) WHERE (NOT ok);


--
-- Name: requests_function_started_at_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX requests_function_started_at_idx ON flux.requests USING btree (function, started_at);


--
-- Name: requests_parent_request_id_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX requests_parent_request_id_idx ON flux.requests USING btree (parent_request_id) WHERE (parent_request_id IS NOT NULL);


--
-- Name: requests_replay_of_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX requests_replay_of_idx ON flux.requests USING btree (replay_of) WHERE (replay_of IS NOT NULL);


--
-- Name: requests_started_at_idx; Type: INDEX; Schema: flux; Owner: -
--

CREATE INDEX requests_started_at_idx ON flux.requests USING btree (started_at);


--
-- Name: job_history_default_finished_at_idx; Type: INDEX ATTACH; Schema: flux; Owner: -
--

ALTER INDEX flux.job_history_dead_idx ATTACH PARTITION flux.job_history_default_finished_at_idx;


--
-- Name: job_history_default_id_idx; Type: INDEX ATTACH; Schema: flux; Owner: -
--

ALTER INDEX flux.job_history_id_idx ATTACH PARTITION flux.job_history_default_id_idx;


--
-- Name: job_history_default_parent_request_id_idx; Type: INDEX ATTACH; Schema: flux; Owner: -
--

ALTER INDEX flux.job_history_parent_request_idx ATTACH PARTITION flux.job_history_default_parent_request_id_idx;


--
-- Name: job_history_default_queue_idempotency_key_idx; Type: INDEX ATTACH; Schema: flux; Owner: -
--

ALTER INDEX flux.job_history_idempotency_key_idx ATTACH PARTITION flux.job_history_default_queue_idempotency_key_idx;


--
-- Name: spans_default_pkey; Type: INDEX ATTACH; Schema: flux; Owner: -
--

ALTER INDEX flux.spans_pkey ATTACH PARTITION flux.spans_default_pkey;


--
-- Name: api_keys api_keys_notify; Type: TRIGGER; Schema: flux; Owner: -
--

CREATE TRIGGER api_keys_notify AFTER INSERT OR DELETE OR UPDATE OR TRUNCATE ON flux.api_keys FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_callers');


--
-- Name: column_policies column_policies_notify; Type: TRIGGER; Schema: flux; Owner: -
--

CREATE TRIGGER column_policies_notify AFTER INSERT OR DELETE OR UPDATE OR TRUNCATE ON flux.column_policies FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_column_policies__notify();


--
-- Name: deployments deployments_notify; Type: TRIGGER; Schema: flux; Owner: -
--

CREATE TRIGGER deployments_notify AFTER INSERT OR DELETE OR UPDATE OR TRUNCATE ON flux.deployments FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_deployments');


--
-- Name: jobs jobs_notify; Type: TRIGGER; Schema: flux; Owner: -
--

CREATE TRIGGER jobs_notify AFTER INSERT ON flux.jobs REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_jobs__notify();


--
-- Name: routes routes_notify; Type: TRIGGER; Schema: flux; Owner: -
--

CREATE TRIGGER routes_notify AFTER INSERT OR DELETE OR UPDATE OR TRUNCATE ON flux.routes FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_routes');


--
-- Name: secrets secrets_notify; Type: TRIGGER; Schema: flux; Owner: -
--

CREATE TRIGGER secrets_notify AFTER INSERT OR DELETE OR UPDATE OR TRUNCATE ON flux.secrets FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_secrets');


--
-- Name: tenants tenants_notify; Type: TRIGGER; Schema: flux; Owner: -
--

CREATE TRIGGER tenants_notify AFTER INSERT OR DELETE OR UPDATE OR TRUNCATE ON flux.tenants FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_callers');


--
-- Name: api_keys api_keys_tenant_id_fkey; Type: FK CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.api_keys
    ADD CONSTRAINT api_keys_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES flux.tenants(id) ON DELETE CASCADE;


--
-- Name: deployment_functions deployment_functions_deployment_id_fkey; Type: FK CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.deployment_functions
    ADD CONSTRAINT deployment_functions_deployment_id_fkey FOREIGN KEY (deployment_id) REFERENCES flux.deployments(id) ON DELETE CASCADE;


--
-- Name: deployment_functions deployment_functions_sha256_fkey; Type: FK CONSTRAINT; Schema: flux; Owner: -
--

ALTER TABLE ONLY flux.deployment_functions
    ADD CONSTRAINT deployment_functions_sha256_fkey FOREIGN KEY (sha256) REFERENCES flux.artifacts(sha256);


--
-- Name: SCHEMA flux; Type: ACL; Schema: -; Owner: -
--

GRANT USAGE ON SCHEMA flux TO flux_anon;
GRANT USAGE ON SCHEMA flux TO flux_user;
GRANT USAGE ON SCHEMA flux TO flux_service;
GRANT USAGE ON SCHEMA flux TO flux_recorder;
GRANT USAGE ON SCHEMA flux TO flux_authenticator;


--
-- Name: TABLE jobs; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE flux.jobs TO flux_recorder;
GRANT SELECT ON TABLE flux.jobs TO flux_authenticator;


--
-- Name: FUNCTION announce_requests(ids uuid[]); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.announce_requests(ids uuid[]) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.announce_requests(ids uuid[]) TO flux_authenticator;


--
-- Name: FUNCTION apply_column_policies(); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.apply_column_policies() FROM PUBLIC;


--
-- Name: FUNCTION cancel_job(job_id bigint); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.cancel_job(job_id bigint) FROM PUBLIC;


--
-- Name: FUNCTION check_answer_size(answer_bytes bigint, max_bytes bigint); Type: ACL; Schema: flux; Owner: -
--

GRANT ALL ON FUNCTION flux.check_answer_size(answer_bytes bigint, max_bytes bigint) TO flux_anon;
GRANT ALL ON FUNCTION flux.check_answer_size(answer_bytes bigint, max_bytes bigint) TO flux_user;
GRANT ALL ON FUNCTION flux.check_answer_size(answer_bytes bigint, max_bytes bigint) TO flux_service;


--
-- Name: FUNCTION claim(name text); Type: ACL; Schema: flux; Owner: -
--

GRANT ALL ON FUNCTION flux.claim(name text) TO flux_anon;
GRANT ALL ON FUNCTION flux.claim(name text) TO flux_user;
GRANT ALL ON FUNCTION flux.claim(name text) TO flux_service;


--
-- Name: FUNCTION claim_jobs(worker text, queues text[], batch integer, lease_s double precision); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.claim_jobs(worker text, queues text[], batch integer, lease_s double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.claim_jobs(worker text, queues text[], batch integer, lease_s double precision) TO flux_authenticator;


--
-- Name: FUNCTION claims(); Type: ACL; Schema: flux; Owner: -
--

GRANT ALL ON FUNCTION flux.claims() TO flux_anon;
GRANT ALL ON FUNCTION flux.claims() TO flux_user;
GRANT ALL ON FUNCTION flux.claims() TO flux_service;


--
-- Name: FUNCTION complete_job(job_id bigint, worker text, attempt integer, request_id uuid); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.complete_job(job_id bigint, worker text, attempt integer, request_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.complete_job(job_id bigint, worker text, attempt integer, request_id uuid) TO flux_authenticator;


--
-- Name: FUNCTION enqueue(function_name text, payload jsonb, run_at timestamp with time zone, priority integer, queue_name text, idempotency_key text, max_attempts integer); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.enqueue(function_name text, payload jsonb, run_at timestamp with time zone, priority integer, queue_name text, idempotency_key text, max_attempts integer) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.enqueue(function_name text, payload jsonb, run_at timestamp with time zone, priority integer, queue_name text, idempotency_key text, max_attempts integer) TO flux_anon;
GRANT ALL ON FUNCTION flux.enqueue(function_name text, payload jsonb, run_at timestamp with time zone, priority integer, queue_name text, idempotency_key text, max_attempts integer) TO flux_user;
GRANT ALL ON FUNCTION flux.enqueue(function_name text, payload jsonb, run_at timestamp with time zone, priority integer, queue_name text, idempotency_key text, max_attempts integer) TO flux_service;


--
-- Name: FUNCTION enqueue_jobs(jobs jsonb); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.enqueue_jobs(jobs jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.enqueue_jobs(jobs jsonb) TO flux_anon;
GRANT ALL ON FUNCTION flux.enqueue_jobs(jobs jsonb) TO flux_user;
GRANT ALL ON FUNCTION flux.enqueue_jobs(jobs jsonb) TO flux_service;


--
-- Name: FUNCTION extend_leases(worker text, ids bigint[], lease_s double precision); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.extend_leases(worker text, ids bigint[], lease_s double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.extend_leases(worker text, ids bigint[], lease_s double precision) TO flux_authenticator;


--
-- Name: FUNCTION fail_job(job_id bigint, worker text, attempt integer, request_id uuid, error jsonb, retry_base_s double precision); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.fail_job(job_id bigint, worker text, attempt integer, request_id uuid, error jsonb, retry_base_s double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.fail_job(job_id bigint, worker text, attempt integer, request_id uuid, error jsonb, retry_base_s double precision) TO flux_authenticator;


--
-- Name: FUNCTION fire_cron(cron_name text, tick timestamp with time zone, next_run timestamp with time zone); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.fire_cron(cron_name text, tick timestamp with time zone, next_run timestamp with time zone) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.fire_cron(cron_name text, tick timestamp with time zone, next_run timestamp with time zone) TO flux_authenticator;


--
-- Name: FUNCTION grant_service_defaults(); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.grant_service_defaults() FROM PUBLIC;


--
-- Name: FUNCTION mutations_since(started timestamp with time zone, first_id bigint, request uuid, schemas text[], names text[]); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.mutations_since(started timestamp with time zone, first_id bigint, request uuid, schemas text[], names text[]) FROM PUBLIC;


--
-- Name: FUNCTION reap_jobs(); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.reap_jobs() FROM PUBLIC;
GRANT ALL ON FUNCTION flux.reap_jobs() TO flux_authenticator;


--
-- Name: FUNCTION release_jobs(worker text, ids bigint[]); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.release_jobs(worker text, ids bigint[]) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.release_jobs(worker text, ids bigint[]) TO flux_authenticator;


--
-- Name: FUNCTION replay_captured(); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.replay_captured() FROM PUBLIC;
GRANT ALL ON FUNCTION flux.replay_captured() TO flux_authenticator;


--
-- Name: FUNCTION replay_prepare(secret bytea, request uuid, pins jsonb, as_of boolean, named text[], caller_path text, written_schemas text[], written_names text[], started timestamp with time zone, ended timestamp with time zone); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.replay_prepare(secret bytea, request uuid, pins jsonb, as_of boolean, named text[], caller_path text, written_schemas text[], written_names text[], started timestamp with time zone, ended timestamp with time zone) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.replay_prepare(secret bytea, request uuid, pins jsonb, as_of boolean, named text[], caller_path text, written_schemas text[], written_names text[], started timestamp with time zone, ended timestamp with time zone) TO flux_authenticator;


--
-- Name: FUNCTION retry_job(job_id bigint); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.retry_job(job_id bigint) FROM PUBLIC;


--
-- Name: FUNCTION rewind_fires_own_triggers(target regclass); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.rewind_fires_own_triggers(target regclass) FROM PUBLIC;


--
-- Name: FUNCTION rewind_tables(request uuid, as_of boolean, named regclass[], written_schemas text[], written_names text[], started timestamp with time zone, ended timestamp with time zone); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.rewind_tables(request uuid, as_of boolean, named regclass[], written_schemas text[], written_names text[], started timestamp with time zone, ended timestamp with time zone) FROM PUBLIC;


--
-- Name: FUNCTION rewound_ids(request uuid, as_of boolean, started timestamp with time zone, own_first bigint, schemas text[], names text[]); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.rewound_ids(request uuid, as_of boolean, started timestamp with time zone, own_first bigint, schemas text[], names text[]) FROM PUBLIC;


--
-- Name: FUNCTION rewound_writes(request uuid, as_of boolean, started timestamp with time zone, own_first bigint, schemas text[], names text[]); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.rewound_writes(request uuid, as_of boolean, started timestamp with time zone, own_first bigint, schemas text[], names text[]) FROM PUBLIC;


--
-- Name: FUNCTION role(); Type: ACL; Schema: flux; Owner: -
--

GRANT ALL ON FUNCTION flux.role() TO flux_anon;
GRANT ALL ON FUNCTION flux.role() TO flux_user;
GRANT ALL ON FUNCTION flux.role() TO flux_service;


--
-- Name: FUNCTION take_token(bucket_key text, capacity double precision, refill_per_s double precision, OUT allowed boolean, OUT remaining double precision, OUT retry_after_s double precision); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.take_token(bucket_key text, capacity double precision, refill_per_s double precision, OUT allowed boolean, OUT remaining double precision, OUT retry_after_s double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION flux.take_token(bucket_key text, capacity double precision, refill_per_s double precision, OUT allowed boolean, OUT remaining double precision, OUT retry_after_s double precision) TO flux_authenticator;


--
-- Name: FUNCTION tenant_id(); Type: ACL; Schema: flux; Owner: -
--

GRANT ALL ON FUNCTION flux.tenant_id() TO flux_anon;
GRANT ALL ON FUNCTION flux.tenant_id() TO flux_user;
GRANT ALL ON FUNCTION flux.tenant_id() TO flux_service;


--
-- Name: FUNCTION tg_mutations__pin_replay(); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.tg_mutations__pin_replay() FROM PUBLIC;


--
-- Name: FUNCTION tg_mutations__record(); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.tg_mutations__record() FROM PUBLIC;


--
-- Name: FUNCTION tg_mutations__record_truncate(); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.tg_mutations__record_truncate() FROM PUBLIC;


--
-- Name: FUNCTION undo_mutations_by_table(tables flux.rewound_table[]); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.undo_mutations_by_table(tables flux.rewound_table[]) FROM PUBLIC;


--
-- Name: FUNCTION undo_mutations_one_by_one(ids bigint[]); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.undo_mutations_one_by_one(ids bigint[]) FROM PUBLIC;


--
-- Name: FUNCTION user_id(); Type: ACL; Schema: flux; Owner: -
--

GRANT ALL ON FUNCTION flux.user_id() TO flux_anon;
GRANT ALL ON FUNCTION flux.user_id() TO flux_user;
GRANT ALL ON FUNCTION flux.user_id() TO flux_service;


--
-- Name: FUNCTION writes_to_rewind(request uuid, as_of boolean, started timestamp with time zone, ended timestamp with time zone, own_first bigint, own_last bigint, schemas text[], names text[], OUT tables flux.rewound_table[], OUT drift jsonb); Type: ACL; Schema: flux; Owner: -
--

REVOKE ALL ON FUNCTION flux.writes_to_rewind(request uuid, as_of boolean, started timestamp with time zone, ended timestamp with time zone, own_first bigint, own_last bigint, schemas text[], names text[], OUT tables flux.rewound_table[], OUT drift jsonb) FROM PUBLIC;


--
-- Name: TABLE job_history; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT,INSERT,DELETE ON TABLE flux.job_history TO flux_recorder;
GRANT SELECT ON TABLE flux.job_history TO flux_authenticator;


--
-- Name: TABLE all_jobs; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.all_jobs TO flux_authenticator;
GRANT SELECT ON TABLE flux.all_jobs TO flux_recorder;


--
-- Name: TABLE api_keys; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.api_keys TO flux_authenticator;


--
-- Name: TABLE artifacts; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.artifacts TO flux_authenticator;


--
-- Name: TABLE column_policies; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.column_policies TO flux_authenticator;


--
-- Name: TABLE cron; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT,UPDATE ON TABLE flux.cron TO flux_recorder;
GRANT SELECT ON TABLE flux.cron TO flux_authenticator;


--
-- Name: TABLE deployment_functions; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.deployment_functions TO flux_authenticator;
GRANT SELECT ON TABLE flux.deployment_functions TO flux_recorder;


--
-- Name: TABLE deployments; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.deployments TO flux_authenticator;
GRANT SELECT ON TABLE flux.deployments TO flux_recorder;


--
-- Name: TABLE job_runs; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT,INSERT ON TABLE flux.job_runs TO flux_recorder;
GRANT SELECT ON TABLE flux.job_runs TO flux_authenticator;


--
-- Name: SEQUENCE jobs_id_seq; Type: ACL; Schema: flux; Owner: -
--

GRANT USAGE ON SEQUENCE flux.jobs_id_seq TO flux_recorder;


--
-- Name: TABLE mutations; Type: ACL; Schema: flux; Owner: -
--

GRANT INSERT ON TABLE flux.mutations TO flux_recorder;


--
-- Name: TABLE requests; Type: ACL; Schema: flux; Owner: -
--

GRANT INSERT ON TABLE flux.requests TO flux_authenticator;


--
-- Name: TABLE queue_stats; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.queue_stats TO flux_authenticator;
GRANT SELECT ON TABLE flux.queue_stats TO flux_recorder;


--
-- Name: TABLE rate_buckets; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT,INSERT,UPDATE ON TABLE flux.rate_buckets TO flux_authenticator;


--
-- Name: TABLE replay_pins; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT,UPDATE ON TABLE flux.replay_pins TO flux_recorder;


--
-- Name: TABLE spans; Type: ACL; Schema: flux; Owner: -
--

GRANT INSERT ON TABLE flux.spans TO flux_authenticator;


--
-- Name: TABLE routes; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.routes TO flux_authenticator;


--
-- Name: TABLE schema_migrations; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.schema_migrations TO flux_authenticator;


--
-- Name: TABLE secrets; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.secrets TO flux_authenticator;


--
-- Name: TABLE tenants; Type: ACL; Schema: flux; Owner: -
--

GRANT SELECT ON TABLE flux.tenants TO flux_authenticator;


--
-- PostgreSQL database dump complete
--
