-- Purpose: daily partitions of flux.spans (UTC days, named spans_YYYYMMDD): created ahead, dropped for retention.

-- Create the partitions for every day from first_day to last_day that has none; spans of those days that
-- landed in flux.spans_default are moved into their new partition. Returns the partitions created.
CREATE OR REPLACE FUNCTION flux.create_span_partitions(first_day date, last_day date) RETURNS SETOF regclass
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
DECLARE
    day date;
    partition_name text;
    lower_bound timestamptz;
    upper_bound timestamptz;
BEGIN
    -- Two processes maintaining at once would race to create the same table.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('flux.spans partitions'));
    FOR day IN SELECT d::date FROM pg_catalog.generate_series(first_day, last_day, interval '1 day') AS d LOOP
        partition_name := 'spans_' || pg_catalog.to_char(day, 'YYYYMMDD');
        CONTINUE WHEN pg_catalog.to_regclass(pg_catalog.format('flux.%I', partition_name)) IS NOT NULL;
        lower_bound := day::timestamp AT TIME ZONE 'UTC';
        upper_bound := (day + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE pg_catalog.format(
            'CREATE TABLE flux.%I (LIKE flux.spans INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', partition_name);
        EXECUTE pg_catalog.format(
            'WITH moved AS (DELETE FROM flux.spans_default WHERE started_at >= %L AND started_at < %L RETURNING *) '
            'INSERT INTO flux.%I SELECT * FROM moved', lower_bound, upper_bound, partition_name);
        EXECUTE pg_catalog.format(
            'ALTER TABLE flux.spans ATTACH PARTITION flux.%I FOR VALUES FROM (%L) TO (%L)',
            partition_name, lower_bound, upper_bound);
        RETURN NEXT pg_catalog.format('flux.%I', partition_name)::regclass;
    END LOOP;
END
$$;

-- Drop every daily partition whose whole day ended more than `keep` ago, and delete such old spans from the
-- default partition. Requests and mutations are kept. Returns the partitions dropped.
CREATE OR REPLACE FUNCTION flux.drop_span_partitions(keep interval) RETURNS SETOF text
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
DECLARE
    cutoff timestamptz := pg_catalog.now() - keep;
    partition_name text;
BEGIN
    IF keep <= interval '0' THEN
        RAISE EXCEPTION 'retention must be a positive period, not %', keep
            USING ERRCODE = 'FX502', HINT = 'give a period such as 30d or 12h';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('flux.spans partitions'));
    FOR partition_name IN
        SELECT c.relname
          FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'flux.spans'::regclass
           AND c.relname ~ '^spans_[0-9]{8}$'
           AND (pg_catalog.to_date(pg_catalog.substr(c.relname, 7), 'YYYYMMDD') + 1)::timestamp
               AT TIME ZONE 'UTC' <= cutoff
         ORDER BY c.relname
    LOOP
        EXECUTE pg_catalog.format('DROP TABLE flux.%I', partition_name);
        RETURN NEXT partition_name;
    END LOOP;
    DELETE FROM flux.spans_default WHERE started_at < cutoff;
END
$$;
