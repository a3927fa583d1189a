-- Purpose: daily partitions (UTC days) of the record's time-partitioned tables, flux.spans (by started_at, named
-- spans_YYYYMMDD) and flux.job_history (by finished_at, job_history_YYYYMMDD): created ahead, dropped for
-- retention. Rows of days without a partition wait in <table>_default.

-- The partition key column of a table partitioned by range.
CREATE OR REPLACE FUNCTION flux.partition_column(parent regclass) RETURNS name
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.attname FROM pg_catalog.pg_partitioned_table p
      JOIN pg_catalog.pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
     WHERE p.partrelid = parent
$$;

-- Create the partitions of `parent` (a flux table partitioned by day) for every day from first_day to last_day
-- that has none; rows of those days that landed in its default partition are moved into the new one. Returns the
-- partitions created.
CREATE OR REPLACE FUNCTION flux.create_day_partitions(parent regclass, first_day date, last_day date)
    RETURNS SETOF regclass
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base text := (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = parent);
    time_column name := flux.partition_column(parent);
    day date;
    partition_name text;
    lower_bound timestamptz;
    upper_bound timestamptz;
BEGIN
    -- Two processes maintaining at once would race to create the same table.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(parent::text || ' partitions'));
    FOR day IN SELECT d::date FROM pg_catalog.generate_series(first_day, last_day, interval '1 day') AS d LOOP
        partition_name := base || '_' || pg_catalog.to_char(day, 'YYYYMMDD');
        CONTINUE WHEN pg_catalog.to_regclass(pg_catalog.format('flux.%I', partition_name)) IS NOT NULL;
        lower_bound := day::timestamp AT TIME ZONE 'UTC';
        upper_bound := (day + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE pg_catalog.format(
            'CREATE TABLE flux.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', partition_name, parent);
        EXECUTE pg_catalog.format(
            'WITH moved AS (DELETE FROM flux.%I WHERE %I >= %L AND %I < %L RETURNING *) '
            'INSERT INTO flux.%I SELECT * FROM moved',
            base || '_default', time_column, lower_bound, time_column, upper_bound, partition_name);
        EXECUTE pg_catalog.format(
            'ALTER TABLE %s ATTACH PARTITION flux.%I FOR VALUES FROM (%L) TO (%L)',
            parent, partition_name, lower_bound, upper_bound);
        RETURN NEXT pg_catalog.format('flux.%I', partition_name)::regclass;
    END LOOP;
END
$$;

-- Drop every daily partition of `parent` whose whole day ended more than `keep` ago, and delete such old rows
-- from its default partition. Returns the partitions dropped.
CREATE OR REPLACE FUNCTION flux.drop_day_partitions(parent regclass, keep interval) RETURNS SETOF text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base text := (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = parent);
    cutoff timestamptz := pg_catalog.now() - keep;
    partition_name text;
BEGIN
    IF keep <= interval '0' THEN
        RAISE EXCEPTION 'retention must be a positive period, not %', keep
            USING ERRCODE = 'FX502', HINT = 'give a period such as 30d or 12h';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(parent::text || ' partitions'));
    FOR partition_name IN
        SELECT c.relname
          FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = parent
           AND c.relname ~ ('^' || base || '_[0-9]{8}$')
           AND (pg_catalog.to_date(pg_catalog.right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp
               AT TIME ZONE 'UTC' <= cutoff
         ORDER BY c.relname
    LOOP
        EXECUTE pg_catalog.format('DROP TABLE flux.%I', partition_name);
        RETURN NEXT partition_name;
    END LOOP;
    EXECUTE pg_catalog.format('DELETE FROM flux.%I WHERE %I < %L',
                              base || '_default', flux.partition_column(parent), cutoff);
END
$$;

-- The span partitions for every day from first_day to last_day (see flux.create_day_partitions).
CREATE OR REPLACE FUNCTION flux.create_span_partitions(first_day date, last_day date) RETURNS SETOF regclass
    LANGUAGE sql
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT flux.create_day_partitions('flux.spans', first_day, last_day)
$$;

-- Drop the span partitions older than `keep`; requests and mutations are kept (see flux.drop_day_partitions).
CREATE OR REPLACE FUNCTION flux.drop_span_partitions(keep interval) RETURNS SETOF text
    LANGUAGE sql
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT flux.drop_day_partitions('flux.spans', keep)
$$;
