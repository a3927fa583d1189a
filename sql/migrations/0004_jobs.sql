-- Purpose: the job queue's table: a request's `ctx.queue.push` inserts here in the request's own transaction
-- (a rolled-back request enqueues nothing). Workers, retries and cron build on it.

CREATE TABLE flux.jobs (
    id                 bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id          uuid,
    queue              text        NOT NULL DEFAULT 'default',
    function           text        NOT NULL,
    payload            jsonb       NOT NULL DEFAULT 'null',
    status             text        NOT NULL DEFAULT 'queued',
    priority           integer     NOT NULL DEFAULT 0,
    run_at             timestamptz NOT NULL DEFAULT now(),
    attempts           integer     NOT NULL DEFAULT 0,
    max_attempts       integer     NOT NULL DEFAULT 5,
    idempotency_key    text,
    locked_by          text,
    locked_until       timestamptz,
    last_error         jsonb,
    parent_request_id  uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    CONSTRAINT jobs_pkey PRIMARY KEY (id),
    CONSTRAINT jobs_status_check CHECK (status IN ('queued', 'running', 'done', 'failed', 'dead', 'cancelled')),
    CONSTRAINT jobs_max_attempts_check CHECK (max_attempts BETWEEN 1 AND 100),
    CONSTRAINT jobs_queue_check CHECK (queue ~ '^[a-z][a-z0-9_-]{0,62}$')
);

-- One job per idempotency key within a tenant's queue; NULLS NOT DISTINCT would need Postgres 15.
CREATE UNIQUE INDEX jobs_idempotency_key_idx
    ON flux.jobs (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- What a worker claims next: due, queued jobs by priority.
CREATE INDEX jobs_due_idx ON flux.jobs (queue, priority DESC, run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_parent_request_idx ON flux.jobs (parent_request_id) WHERE parent_request_id IS NOT NULL;

GRANT SELECT, INSERT ON flux.jobs TO flux_recorder;

COMMENT ON TABLE flux.jobs IS
    'Durable jobs: pushed by functions (in their request''s transaction), run by queue workers.';
