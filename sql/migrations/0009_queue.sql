-- Purpose: the queue at work: who a job runs as, its attempts (flux.job_runs), finished jobs moved out of the hot
-- table into flux.job_history (partitioned by day, so claims never wade through history and retention is a
-- partition drop), schedules (flux.cron), and a NOTIFY on flux_jobs that wakes idle workers.

-- A job runs as the role and with the claims of whoever pushed it (a job is never a way to gain rights), and a
-- job made by a schedule names it. Its last attempt's request is kept for `flux queue ls` and `flux trace`.
ALTER TABLE flux.jobs
    ADD COLUMN role            text  NOT NULL DEFAULT 'service',
    ADD COLUMN claims          jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN cron_name       text,
    ADD COLUMN last_request_id uuid,
    ADD CONSTRAINT jobs_role_check CHECK (role IN ('anon', 'user', 'service'));

-- Due jobs in claim order: queued, or failed and waiting for their retry time (a worker of some queues filters).
DROP INDEX flux.jobs_due_idx;
CREATE INDEX jobs_due_idx ON flux.jobs (priority DESC, run_at, id) WHERE status IN ('queued', 'failed');
-- Leases to look at when a worker may have died.
CREATE INDEX jobs_locked_until_idx ON flux.jobs (locked_until) WHERE status = 'running';

COMMENT ON COLUMN flux.jobs.status IS
    'queued, running (locked_by holds a lease until locked_until), failed (an attempt failed; retried at run_at). '
    'Finished jobs (done, dead, cancelled) are moved to flux.job_history.';

-- Finished jobs, by the day they finished (UTC). Same columns as flux.jobs.
CREATE TABLE flux.job_history (LIKE flux.jobs INCLUDING DEFAULTS) PARTITION BY RANGE (finished_at);
ALTER TABLE flux.job_history
    ALTER COLUMN finished_at SET NOT NULL,
    ADD CONSTRAINT job_history_status_check CHECK (status IN ('done', 'dead', 'cancelled'));
CREATE TABLE flux.job_history_default PARTITION OF flux.job_history DEFAULT;
CREATE INDEX job_history_id_idx ON flux.job_history (id);
CREATE INDEX job_history_parent_request_idx ON flux.job_history (parent_request_id)
    WHERE parent_request_id IS NOT NULL;
CREATE INDEX job_history_idempotency_key_idx ON flux.job_history (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX job_history_dead_idx ON flux.job_history (finished_at DESC) WHERE status = 'dead';

COMMENT ON TABLE flux.job_history IS
    'Finished jobs (done, dead, cancelled), partitioned by the UTC day they finished; flux.all_jobs shows both.';

-- Every attempt of a job: the request that ran it (a request of kind job or cron), or why it has none. `run`
-- counts every attempt of the job; `attempt` starts again from 1 when a dead job is retried.
CREATE TABLE flux.job_runs (
    job_id      bigint      NOT NULL,
    run         integer     NOT NULL,
    attempt     integer     NOT NULL,
    request_id  uuid,
    worker      text        NOT NULL,
    ok          boolean     NOT NULL,
    error       jsonb,
    finished_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT job_runs_pkey PRIMARY KEY (job_id, run)
);
CREATE INDEX job_runs_request_id_idx ON flux.job_runs (request_id) WHERE request_id IS NOT NULL;

COMMENT ON TABLE flux.job_runs IS
    'One row per attempt of a job: its request (flux.requests, kind job or cron), ok, and the error of a failure; '
    'an attempt whose worker died has no request and the error FX404.';

-- Schedules: each tick enqueues one job, once across every process (see flux/queue/cron.py).
CREATE TABLE flux.cron (
    name         text        NOT NULL,
    schedule     text        NOT NULL,
    timezone     text        NOT NULL DEFAULT 'UTC',
    function     text        NOT NULL,
    payload      jsonb       NOT NULL DEFAULT 'null',
    queue        text        NOT NULL DEFAULT 'default',
    enabled      boolean     NOT NULL DEFAULT true,
    next_run_at  timestamptz NOT NULL,
    last_run_at  timestamptz,
    source       text        NOT NULL DEFAULT 'api',
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cron_pkey PRIMARY KEY (name),
    CONSTRAINT cron_name_check CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_-]{0,62}$'),
    CONSTRAINT cron_queue_check CHECK (queue ~ '^[a-z][a-z0-9_-]{0,62}$'),
    CONSTRAINT cron_source_check CHECK (source IN ('project', 'api'))
);
CREATE INDEX cron_next_run_at_idx ON flux.cron (next_run_at) WHERE enabled;

COMMENT ON TABLE flux.cron IS
    'Schedules (5-field cron in a time zone): from flux.toml [[cron]] (source project, synced by each deploy) or '
    'the management API (source api). A tick missed while no worker ran fires once on recovery.';

-- Wakes idle workers: one notification per statement and queue with a job due now (payload: the queue).
CREATE FUNCTION flux.tg_jobs__notify() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('flux_jobs', q.queue)
       FROM (SELECT DISTINCT n.queue FROM new_jobs n WHERE n.run_at <= pg_catalog.now()) AS q;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify AFTER INSERT ON flux.jobs
    REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_jobs__notify();

-- The queue's functions (sql/functions/050_queue.sql) run as flux_recorder; queue workers connect as
-- flux_authenticator and call them.
GRANT SELECT, INSERT, UPDATE, DELETE ON flux.jobs TO flux_recorder;
GRANT USAGE ON SEQUENCE flux.jobs_id_seq TO flux_recorder;
GRANT SELECT, INSERT ON flux.job_history, flux.job_runs TO flux_recorder;
GRANT DELETE ON flux.job_history TO flux_recorder;
GRANT SELECT, UPDATE ON flux.cron TO flux_recorder;
GRANT SELECT ON flux.deployments, flux.deployment_functions TO flux_recorder;
GRANT SELECT ON flux.jobs, flux.job_history, flux.job_runs, flux.cron TO flux_authenticator;
