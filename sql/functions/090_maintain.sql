-- Purpose: flux.maintain(), the periodic upkeep every migrate (and later the scheduler) runs.

-- Keeps the partitions of spans and finished jobs ready from yesterday to a week ahead, so no row lands in a
-- default partition.
CREATE OR REPLACE FUNCTION flux.maintain() RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    today date := (pg_catalog.now() AT TIME ZONE 'UTC')::date;
BEGIN
    PERFORM flux.create_day_partitions('flux.spans', today - 1, today + 7);
    PERFORM flux.create_day_partitions('flux.job_history', today - 1, today + 7);
END
$$;
