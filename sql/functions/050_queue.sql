-- Purpose: the queue's SQL interface: enqueue (from a function's request through ctx.queue.push, the API, the CLI
-- or psql), claim, lease, complete, fail and retry, cancel, and the firing of schedules. Workers call these too:
-- a DBA can do by hand anything a worker does. Every function runs as flux_recorder (SECURITY DEFINER), because
-- request roles and flux_authenticator have no rights of their own on flux.jobs.

-- The caller's Flux role: the request's (SET LOCAL ROLE flux_anon|flux_user|flux_service); anyone else (psql, the
-- management API) is trusted as service. current_user names the definer here, so the role setting is read.
CREATE OR REPLACE FUNCTION flux.caller_role() RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE pg_catalog.current_setting('role', true)
        WHEN 'flux_anon' THEN 'anon'
        WHEN 'flux_user' THEN 'user'
        ELSE 'service'
    END
$$;

-- The advisory lock of one idempotency key.
CREATE OR REPLACE FUNCTION flux.job_key_lock(tenant uuid, queue_name text, key text) RETURNS bigint
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.hashtextextended(coalesce(tenant::text, '') || '/' || queue_name || '/' || key, 0)
$$;

-- Serialises everything that creates or finishes a job with one idempotency key, so a key pushed again while
-- its job moves to flux.job_history still finds that job. The key's lock is taken before the job's row.
CREATE OR REPLACE FUNCTION flux.lock_job_key(tenant uuid, queue_name text, key text) RETURNS void
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(flux.job_key_lock(tenant, queue_name, key)) WHERE key IS NOT NULL
$$;

-- The same lock for one holding the job's row already (the reaper): taken only if free, or it could deadlock.
CREATE OR REPLACE FUNCTION flux.try_lock_job_key(tenant uuid, queue_name text, key text) RETURNS boolean
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT key IS NULL OR pg_catalog.pg_try_advisory_xact_lock(flux.job_key_lock(tenant, queue_name, key))
$$;

-- Enqueue jobs in the caller's transaction (a rolled-back request enqueues nothing). `jobs` is a JSON array of
-- {function, payload?, run_at?, delay_ms?, priority?, queue?, idempotency_key?, max_attempts?}. Each job belongs
-- to the caller's tenant, runs as the caller's role with its claims, and remembers the request that pushed it.
-- A job whose idempotency key (per tenant and queue) is taken returns the job that holds it, finished or not.
-- Returns one row per input job, in order: its id and whether it was created now.
-- JIT is off: the statements are cheap, but their estimated cost (a set-returning function, subplans) passes
-- the JIT thresholds, and compiling them cost 630 ms a push.
CREATE OR REPLACE FUNCTION flux.enqueue_jobs(jobs jsonb)
    RETURNS TABLE (ord bigint, job_id bigint, created boolean)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $$
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
$$;

-- Refuse a job to be pushed: a bad function or queue name, attempts, payload or key (FX401), or, once a version
-- is `active`, a function it lacks (FX402; before the first deploy any name goes). `which` names the job.
CREATE OR REPLACE FUNCTION flux.check_job(
    which text, function_name text, queue_name text, max_attempts integer, payload jsonb, idempotency_key text,
    active bigint
) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- The jobs of an enqueue_jobs() array as rows, with their defaults; `ord` counts from 0.
CREATE OR REPLACE FUNCTION flux.job_inputs(jobs jsonb)
    RETURNS TABLE (ord bigint, function text, payload jsonb, run_at timestamptz, priority integer, queue text,
                   idempotency_key text, max_attempts integer)
    LANGUAGE sql STABLE ROWS 10
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.ord - 1, j.function, coalesce(j.payload, 'null'),
           coalesce(j.run_at, pg_catalog.now() + pg_catalog.make_interval(secs => coalesce(j.delay_ms, 0) / 1000.0)),
           coalesce(j.priority, 0), coalesce(j.queue, 'default'), j.idempotency_key, coalesce(j.max_attempts, 5)
      FROM pg_catalog.jsonb_array_elements(jobs) WITH ORDINALITY AS e(value, ord),
           LATERAL pg_catalog.jsonb_to_record(e.value)
               AS j(function text, payload jsonb, run_at timestamptz, delay_ms bigint, priority integer, queue text,
                    idempotency_key text, max_attempts integer)
$$;

-- One job, as ctx.queue.push sends it: the job as JSON (a taken idempotency key returns the job that holds it).
CREATE OR REPLACE FUNCTION flux.enqueue(
    function_name   text,
    payload         jsonb DEFAULT 'null',
    run_at          timestamptz DEFAULT NULL,
    priority        integer DEFAULT 0,
    queue_name      text DEFAULT 'default',
    idempotency_key text DEFAULT NULL,
    max_attempts    integer DEFAULT 5
) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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

-- Claim up to `batch` due jobs for `worker` (any queue when `queues` is null), holding each for `lease_s`
-- seconds: the worker extends the lease while it runs them (flux.extend_leases), or another worker may take the
-- job over once it expires (flux.reap_jobs). Highest priority first, then the longest due. PL/pgSQL, not SQL:
-- it keeps the statement's plan (a claim went from 2 ms to 0.4 ms). No bitmap scan: every job leaves dead
-- entries in jobs_due_idx (queued, then running, then moved to flux.job_history), and a bitmap scan visits them
-- all at every claim until a vacuum (thousands after a burst: 1 to 2 ms a claim), where an index scan in the
-- index's order stops at the first job it can take and marks the dead entries it passed, which later claims skip.
CREATE OR REPLACE FUNCTION flux.claim_jobs(worker text, queues text[], batch integer, lease_s double precision)
    RETURNS SETOF flux.jobs
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET enable_bitmapscan = off
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

-- Extend the leases of jobs `worker` still holds; returns those it holds (a job missing here was taken over).
CREATE OR REPLACE FUNCTION flux.extend_leases(worker text, ids bigint[], lease_s double precision)
    RETURNS SETOF bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE flux.jobs AS j SET locked_until = pg_catalog.now() + pg_catalog.make_interval(secs => lease_s)
     WHERE j.id = ANY (ids) AND j.locked_by = worker AND j.status = 'running'
    RETURNING j.id
$$;

-- Move a job out of the hot table into flux.job_history as finished (`done`, `dead` or `cancelled`).
CREATE OR REPLACE FUNCTION flux.finish_job(job flux.jobs, final_status text, request_id uuid, error jsonb)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
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

-- One attempt of `job` in flux.job_runs (the job's row is locked, so its runs are counted alone).
CREATE OR REPLACE FUNCTION flux.record_run(job flux.jobs, request_id uuid, worker text, ok boolean, error jsonb)
    RETURNS void
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO flux.job_runs (job_id, run, attempt, request_id, worker, ok, error)
    SELECT job.id, coalesce(pg_catalog.max(r.run), 0) + 1, job.attempts, record_run.request_id,
           record_run.worker, record_run.ok, record_run.error
      FROM flux.job_runs AS r WHERE r.job_id = job.id
$$;

-- The job `worker` holds as attempt `attempt`, locked for this transaction; NULL when it holds it no more.
CREATE OR REPLACE FUNCTION flux.held_job(job_id bigint, worker text, attempt integer) RETURNS flux.jobs
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
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

-- Attempt `attempt` of a job succeeded: called in the attempt's own request transaction, so the job is done
-- exactly when the function's writes commit. Refused (FX404) when the worker no longer holds the job.
CREATE OR REPLACE FUNCTION flux.complete_job(job_id bigint, worker text, attempt integer, request_id uuid)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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

-- The delay before retry `attempts` + 1: exponential from `base_s`, at most an hour, with jitter (50-100 %).
CREATE OR REPLACE FUNCTION flux.retry_delay(attempts integer, base_s double precision) RETURNS interval
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.make_interval(secs => least(base_s * 2 ^ least(attempts - 1, 30), 3600) * (0.5 + random() / 2))
$$;

-- Attempt `attempt` of a job failed with `error`: it is retried after a backoff, or is `dead` after its last
-- attempt (kept in flux.job_history with its error, never dropped). Returns the job's status, or NULL when the
-- worker no longer held it (the attempt was already counted as lost).
CREATE OR REPLACE FUNCTION flux.fail_job(
    job_id bigint, worker text, attempt integer, request_id uuid, error jsonb, retry_base_s double precision DEFAULT 1
) RETURNS text
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION flux.after_failure(job flux.jobs, request_id uuid, error jsonb, delay interval)
    RETURNS text
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
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

-- Jobs whose worker stopped renewing the lease (it died, or lost its database): each attempt is counted as
-- failed with FX404 and the job is due again at once (or dead after its last attempt). Returns how many.
CREATE OR REPLACE FUNCTION flux.reap_jobs() RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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

-- A stopping worker gives back the jobs it claimed but will not finish: due again at once, the attempt not
-- counted.
CREATE OR REPLACE FUNCTION flux.release_jobs(worker text, ids bigint[]) RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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

-- Job `job_id`, waiting or finished, else FX403.
CREATE OR REPLACE FUNCTION flux.find_job(job_id bigint) RETURNS flux.jobs
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
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

-- Run a job again now: a failed one at once, a dead or cancelled one from the start (attempts from 0).
CREATE OR REPLACE FUNCTION flux.retry_job(job_id bigint) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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

-- Cancel a job that has not started (queued, or failed and waiting for a retry).
CREATE OR REPLACE FUNCTION flux.cancel_job(job_id bigint) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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

-- Fire schedule `cron_name` for its tick `tick` (its next_run_at) and move it on to `next_run`: one job, once,
-- however many processes try (the first moves next_run_at; the others find it moved). Returns the job's id, or
-- NULL when another process fired this tick.
CREATE OR REPLACE FUNCTION flux.fire_cron(cron_name text, tick timestamptz, next_run timestamptz) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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

-- Every job, waiting or finished.
CREATE OR REPLACE VIEW flux.all_jobs AS
SELECT * FROM flux.jobs
UNION ALL
SELECT * FROM flux.job_history;

COMMENT ON VIEW flux.all_jobs IS 'Every job: those waiting or running (flux.jobs) and the finished (flux.job_history).';

-- Per queue: jobs due now, scheduled later, running, waiting for a retry, dead, done in the last hour, and how
-- long the oldest due job has waited, in seconds.
DROP VIEW IF EXISTS flux.queue_stats;  -- its last column changed (an interval became seconds)
CREATE VIEW flux.queue_stats AS
WITH hot AS (
    SELECT j.queue,
           pg_catalog.count(*) FILTER (WHERE j.status = 'queued' AND j.run_at <= pg_catalog.now()) AS queued,
           pg_catalog.count(*) FILTER (WHERE j.status = 'queued' AND j.run_at > pg_catalog.now()) AS scheduled,
           pg_catalog.count(*) FILTER (WHERE j.status = 'running') AS running,
           pg_catalog.count(*) FILTER (WHERE j.status = 'failed') AS retrying,
           pg_catalog.max(pg_catalog.now() - j.run_at) FILTER (WHERE j.status IN ('queued', 'failed')
                                                                AND j.run_at <= pg_catalog.now()) AS oldest_due
      FROM flux.jobs AS j GROUP BY j.queue
), finished AS (
    SELECT h.queue,
           pg_catalog.count(*) FILTER (WHERE h.status = 'dead') AS dead,
           pg_catalog.count(*) FILTER (WHERE h.status = 'done'
                                         AND h.finished_at > pg_catalog.now() - interval '1 hour') AS done_last_hour
      FROM flux.job_history AS h
     WHERE h.status = 'dead' OR h.finished_at > pg_catalog.now() - interval '1 hour'
     GROUP BY h.queue
)
SELECT coalesce(hot.queue, finished.queue) AS queue,
       coalesce(hot.queued, 0) AS queued, coalesce(hot.scheduled, 0) AS scheduled,
       coalesce(hot.running, 0) AS running, coalesce(hot.retrying, 0) AS retrying,
       coalesce(finished.dead, 0) AS dead, coalesce(finished.done_last_hour, 0) AS done_last_hour,
       EXTRACT(epoch FROM hot.oldest_due)::double precision AS oldest_due_s
  FROM hot FULL JOIN finished ON finished.queue = hot.queue;

COMMENT ON VIEW flux.queue_stats IS
    'Per queue: jobs due, scheduled, running, retrying, dead, done in the last hour, and the oldest due job''s wait (s).';

-- Owned by flux_recorder, which needs CREATE on the schema only for the moment of the change.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    GRANT CREATE ON SCHEMA flux TO flux_recorder;
    FOREACH fn IN ARRAY ARRAY[
        'flux.enqueue_jobs(jsonb)', 'flux.enqueue(text, jsonb, timestamptz, integer, text, text, integer)',
        'flux.claim_jobs(text, text[], integer, double precision)',
        'flux.extend_leases(text, bigint[], double precision)',
        'flux.complete_job(bigint, text, integer, uuid)',
        'flux.fail_job(bigint, text, integer, uuid, jsonb, double precision)', 'flux.reap_jobs()',
        'flux.release_jobs(text, bigint[])', 'flux.retry_job(bigint)', 'flux.cancel_job(bigint)',
        'flux.fire_cron(text, timestamptz, timestamptz)'
    ]::regprocedure[] LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO flux_recorder', fn);
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
    REVOKE CREATE ON SCHEMA flux FROM flux_recorder;
END
$$;

-- Functions push jobs; queue workers (connected as flux_authenticator) do the rest.
GRANT EXECUTE ON FUNCTION flux.enqueue_jobs(jsonb), flux.enqueue(text, jsonb, timestamptz, integer, text, text, integer)
    TO flux_anon, flux_user, flux_service;
GRANT EXECUTE ON FUNCTION
    flux.claim_jobs(text, text[], integer, double precision), flux.extend_leases(text, bigint[], double precision),
    flux.complete_job(bigint, text, integer, uuid), flux.fail_job(bigint, text, integer, uuid, jsonb, double precision),
    flux.reap_jobs(), flux.release_jobs(text, bigint[]), flux.fire_cron(text, timestamptz, timestamptz)
    TO flux_authenticator;
GRANT SELECT ON flux.all_jobs, flux.queue_stats TO flux_authenticator, flux_recorder;
