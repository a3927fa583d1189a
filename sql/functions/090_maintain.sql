-- Purpose: flux.maintain(), the periodic upkeep every migrate (and later the scheduler) runs.

-- Keeps span partitions ready from yesterday to a week ahead, so no span lands in the default partition.
CREATE OR REPLACE FUNCTION flux.maintain() RETURNS void
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
DECLARE
    today date := (pg_catalog.now() AT TIME ZONE 'UTC')::date;
BEGIN
    PERFORM flux.create_span_partitions(today - 1, today + 7);
END
$$;
