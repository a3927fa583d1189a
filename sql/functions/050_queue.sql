-- Purpose: the queue's SQL interface, callable from a function's request (through ctx.queue.push) or psql.

-- Enqueue a job in the caller's transaction: the job belongs to the caller's tenant and remembers the request
-- that pushed it. A second push with the same idempotency key (per tenant and queue) returns the first job.
-- SECURITY DEFINER (owned by flux_recorder) because request roles have no rights on flux.jobs itself.
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
    SET search_path = ''
AS $$
#variable_conflict use_column
DECLARE
    tenant uuid := flux.tenant_id();
    parent uuid := nullif(pg_catalog.current_setting('flux.request_id', true), '')::uuid;
    job flux.jobs;
BEGIN
    IF function_name IS NULL OR function_name !~ '^[A-Za-z_][A-Za-z0-9_-]{0,62}$' THEN
        RAISE EXCEPTION 'job function % is not a function name', pg_catalog.quote_nullable(function_name)
            USING ERRCODE = 'FX401', HINT = 'name the function as in functions/<name>';
    END IF;
    IF queue_name IS NULL OR queue_name !~ '^[a-z][a-z0-9_-]{0,62}$' THEN
        RAISE EXCEPTION 'queue % is not a queue name', pg_catalog.quote_nullable(queue_name)
            USING ERRCODE = 'FX401', HINT = 'use lower-case letters, digits, _ and -';
    END IF;
    IF max_attempts IS NULL OR max_attempts NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'max_attempts % is out of range', max_attempts
            USING ERRCODE = 'FX401', HINT = 'give a number of attempts from 1 to 100';
    END IF;
    IF pg_catalog.octet_length(payload::text) > 1048576 THEN
        RAISE EXCEPTION 'the job payload is larger than 1 MiB'
            USING ERRCODE = 'FX401', HINT = 'store large data in a table and push its key';
    END IF;
    INSERT INTO flux.jobs AS j (tenant_id, queue, function, payload, priority, run_at, max_attempts,
                                idempotency_key, parent_request_id)
    VALUES (tenant, queue_name, function_name, coalesce(payload, 'null'), coalesce(priority, 0),
            coalesce(run_at, pg_catalog.now()), max_attempts, idempotency_key, parent)
    ON CONFLICT (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), queue, idempotency_key)
        WHERE idempotency_key IS NOT NULL
        DO NOTHING
    RETURNING * INTO job;
    IF job.id IS NULL THEN
        SELECT * INTO job FROM flux.jobs AS j
         WHERE coalesce(j.tenant_id, '00000000-0000-0000-0000-000000000000'::uuid)
               = coalesce(tenant, '00000000-0000-0000-0000-000000000000'::uuid)
           AND j.queue = queue_name AND j.idempotency_key = enqueue.idempotency_key;
    END IF;
    RETURN pg_catalog.to_jsonb(job);
END
$$;

-- A new owner needs CREATE on the schema, only for the moment of the change.
GRANT CREATE ON SCHEMA flux TO flux_recorder;
ALTER FUNCTION flux.enqueue(text, jsonb, timestamptz, integer, text, text, integer) OWNER TO flux_recorder;
REVOKE CREATE ON SCHEMA flux FROM flux_recorder;
REVOKE EXECUTE ON FUNCTION flux.enqueue(text, jsonb, timestamptz, integer, text, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.enqueue(text, jsonb, timestamptz, integer, text, text, integer)
    TO flux_anon, flux_user, flux_service;
