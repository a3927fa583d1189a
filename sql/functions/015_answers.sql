-- Purpose: flux.check_answer_size(): the data engine's bound on the bytes of one query's answer, checked row by
-- row inside the statement (a running sum over the rows' JSON), so that Postgres stops building an answer as soon
-- as it is too big, and the worker never receives it.

-- True while `answer_bytes` (the bytes of the rows so far) is within `max_bytes`; past it, raises FX114, which
-- Flux answers as AnswerTooLarge naming the limit.
CREATE OR REPLACE FUNCTION flux.check_answer_size(answer_bytes bigint, max_bytes bigint) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
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

GRANT EXECUTE ON FUNCTION flux.check_answer_size(bigint, bigint) TO flux_anon, flux_user, flux_service;
