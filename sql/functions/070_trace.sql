-- Purpose: reading a request's record in psql: its span tree in execution order.

-- Every span of `request_id`, in execution order, with its depth in the tree, its W3C span id, and when it
-- started relative to the request (`offset_us`).
--   SELECT depth, name, duration_us, ok FROM flux.trace('3f2a9c1e-...');
DROP FUNCTION IF EXISTS flux.trace(uuid);  -- its columns changed (span_id): OR REPLACE cannot do that
CREATE FUNCTION flux.trace(request_id uuid)
    RETURNS TABLE (seq integer, parent_seq integer, depth integer, span_id text, module text, name text,
                   started_at timestamptz, offset_us bigint, duration_us bigint, ok boolean,
                   attributes jsonb, input jsonb, output jsonb, error jsonb)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
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

COMMENT ON FUNCTION flux.trace(uuid) IS 'A request''s spans in execution order, with their depth in the tree.';
