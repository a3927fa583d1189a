-- Purpose: the time indexes of flux.requests in ascending order. Scanned backwards they serve "the latest first"
-- as well, and a new request then goes to the right edge of each, where a full page splits unevenly and stays
-- full. In descending order every new request went to the left edge, where each split left two half-empty
-- pages: these indexes were twice their size, and recording a request cost more (docs/performance.md).
--
-- Rebuilding them here locks flux.requests (reads and writes) until the three are built. On a large store,
-- build each by hand first, without locking, and this migration leaves the ascending ones as they are:
--   CREATE INDEX CONCURRENTLY requests_started_at_asc ON flux.requests (started_at);
--   DROP INDEX CONCURRENTLY flux.requests_started_at_idx;
--   ALTER INDEX flux.requests_started_at_asc RENAME TO requests_started_at_idx;
-- (and the same for requests_function_started_at_idx and requests_failed_started_at_idx, as defined below).

DO $$
DECLARE
    wanted record;
BEGIN
    FOR wanted IN
        SELECT w.name, w.definition
          FROM (VALUES
              ('requests_started_at_idx', 'CREATE INDEX requests_started_at_idx ON flux.requests (started_at)'),
              ('requests_function_started_at_idx',
               'CREATE INDEX requests_function_started_at_idx ON flux.requests (function, started_at)'),
              ('requests_failed_started_at_idx',
               'CREATE INDEX requests_failed_started_at_idx ON flux.requests (started_at) WHERE NOT ok')
          ) AS w (name, definition)
    LOOP
        -- A key column sorted descending has bit 1 set in pg_index.indoption.
        IF EXISTS (SELECT FROM pg_catalog.pg_index i
                     JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                    CROSS JOIN LATERAL pg_catalog.unnest(i.indoption::pg_catalog.int2[]) AS o (flags)
                    WHERE n.nspname = 'flux' AND c.relname = wanted.name AND o.flags & 1 = 1) THEN
            EXECUTE pg_catalog.format('DROP INDEX flux.%I', wanted.name);
            EXECUTE wanted.definition;
        END IF;
    END LOOP;
END
$$;
