-- Purpose: the gateway's rate limit: one token bucket per key, shared by every Flux process.

-- Take one token from `bucket` (holding at most `capacity`, refilled at `refill_per_s`), in one statement
-- (concurrent callers serialise on the row). Returns whether the request may go on, the tokens left, and, when
-- refused, the seconds until a token is back.
CREATE OR REPLACE FUNCTION flux.take_token(
    bucket_key   text,
    capacity     double precision,
    refill_per_s double precision,
    OUT allowed        boolean,
    OUT remaining      double precision,
    OUT retry_after_s  double precision
)
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
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

REVOKE EXECUTE ON FUNCTION flux.take_token(text, double precision, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.take_token(text, double precision, double precision) TO flux_authenticator;
