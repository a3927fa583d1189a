-- Purpose: what replays need from the database: pinning generated values (flux.tg_mutations__pin_replay) and
-- rewinding tracked tables (flux.rewind_tables).

-- Gives a row that a replay writes again the values the original write got: a BEFORE INSERT OR UPDATE trigger
-- on every tracked table, installed by flux.track, that fires only while a replay names its current write in
-- flux.replay_call (its WHEN clause; on any other write it costs one setting lookup). An INSERT takes the next
-- unused recorded INSERT of the same table; an UPDATE the recorded UPDATE of the same key whose old row is
-- this one (so a row whose data changed since is written as the replay computes it, and shows as a
-- difference), or, for a recording without old rows (a failed run's: only what its writes returned is
-- known), the next recorded UPDATE of the table in order. A query run with other arguments than the recorded
-- one names the columns it sets in flux.replay_keep: those keep its values. Named to fire after the table's
-- own BEFORE triggers (they fire by name), so that a trigger setting updated_at = now() is pinned too.
-- Arguments: as flux.tg_mutations__record's.
-- While flux.undo_mutations_by_table puts rows back with the tables' triggers on (flux.replay_call is
-- '@undo'), a row it puts back gets exactly the values it is put back to, whatever the table's own triggers
-- did to them: those pinned to its key.
CREATE OR REPLACE FUNCTION flux.tg_mutations__pin_replay() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    written_schema text := TG_TABLE_SCHEMA;
    written_table text := TG_TABLE_NAME;
    replay uuid := nullif(pg_catalog.current_setting('flux.request_id', true), '')::uuid;
    call_name text := pg_catalog.current_setting('flux.replay_call', true);
    old_row jsonb;
    pinned jsonb;
BEGIN
    IF TG_ARGV[0] = 'p' THEN
        SELECT n.nspname, c.relname INTO written_schema, written_table
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = pg_catalog.pg_partition_root(TG_RELID);
    END IF;
    IF call_name = '@undo' THEN  -- the pin of the row by its key (an UPDATE's old one, an INSERT's new one)
        old_row := pg_catalog.to_jsonb(CASE WHEN TG_OP = 'UPDATE' THEN OLD ELSE NEW END);
        UPDATE flux.replay_pins AS p SET used = true
         WHERE (p.replay_id, p.call, p.position) = (
               SELECT q.replay_id, q.call, q.position FROM flux.replay_pins AS q
                WHERE q.replay_id = '00000000-0000-0000-0000-000000000000' AND q.call = call_name
                  AND q.table_schema = written_schema AND q.table_name = written_table AND q.op = TG_OP
                  AND NOT q.used
                  AND q.row_pk = (SELECT pg_catalog.jsonb_object_agg(k, old_row -> k)
                                    FROM pg_catalog.unnest(TG_ARGV[1:]) AS k)
                LIMIT 1)
        RETURNING p.new INTO pinned;
        IF pinned IS NOT NULL THEN
            NEW := pg_catalog.jsonb_populate_record(NEW, pinned);
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        UPDATE flux.replay_pins AS p SET used = true
         WHERE (p.replay_id, p.call, p.position) = (
               SELECT q.replay_id, q.call, q.position FROM flux.replay_pins AS q
                WHERE q.replay_id = replay AND q.call = call_name AND q.table_schema = written_schema
                  AND q.table_name = written_table AND q.op = 'INSERT' AND NOT q.used
                ORDER BY q.position LIMIT 1)
        RETURNING p.new INTO pinned;
    ELSE
        -- the recorded UPDATE whose old row is this one; else, when the recording has no old rows (a failed
        -- run's writes were rolled back: it knows only the rows they returned), the next one in order
        old_row := pg_catalog.to_jsonb(OLD);
        UPDATE flux.replay_pins AS p SET used = true
         WHERE (p.replay_id, p.call, p.position) = (
               SELECT q.replay_id, q.call, q.position FROM flux.replay_pins AS q
                WHERE q.replay_id = replay AND q.call = call_name AND q.table_schema = written_schema
                  AND q.table_name = written_table AND q.op = 'UPDATE' AND NOT q.used
                  AND (q.old = old_row OR q.old IS NULL)
                ORDER BY q.old IS NULL, q.position LIMIT 1)
        RETURNING p.new INTO pinned;
    END IF;
    -- A query run with other arguments than the recorded one keeps the values it sets itself (they are the
    -- difference to report); the columns it leaves to the database get the recorded values all the same.
    IF pinned IS NOT NULL AND pg_catalog.current_setting('flux.replay_keep', true) > '' THEN
        pinned := pinned - ARRAY(SELECT pg_catalog.jsonb_array_elements_text(
                                            pg_catalog.current_setting('flux.replay_keep')::jsonb));
    END IF;
    IF pinned IS NOT NULL THEN
        NEW := pg_catalog.jsonb_populate_record(NEW, pinned);
    END IF;
    RETURN NEW;
END
$$;

GRANT CREATE ON SCHEMA flux TO flux_recorder;
ALTER FUNCTION flux.tg_mutations__pin_replay() OWNER TO flux_recorder;
REVOKE CREATE ON SCHEMA flux FROM flux_recorder;
REVOKE EXECUTE ON FUNCTION flux.tg_mutations__pin_replay() FROM PUBLIC;

-- The owner's side of a live or as-of replay, called on the request connection the function runs on, first thing
-- in the replay's transaction, with the secret of a grant the owner wrote in flux.replay_grants (less than a
-- minute ago): it takes the grant up for this transaction, once (the function the replay runs next cannot
-- call it again, and no other transaction can take it up while this one holds it). It copies `pins` (the
-- recorded mutations of the writes the replay runs again: [call, position, schema, table, op, key, old, new])
-- into flux.replay_pins under the grant's replay id, and rewinds (flux.rewind_tables) the tables of the
-- recorded `request`: those it wrote and those its queries `named`, resolved on `caller_path`, the search
-- path the request's queries resolved names on.
CREATE OR REPLACE FUNCTION flux.replay_prepare(
    secret bytea, request uuid, pins jsonb, as_of boolean, named text[], caller_path text,
    written_schemas text[], written_names text[], started timestamptz, ended timestamptz
) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan  -- planned once a session (the plans suit any values)
AS $$
DECLARE
    granted flux.replay_grants;
    tables regclass[] := '{}';
    spelled text;
BEGIN
    UPDATE flux.replay_grants AS g SET txid = pg_catalog.txid_current()
     WHERE g.secret_sha256 = pg_catalog.sha256(secret) AND g.txid IS NULL
       AND g.granted_at > pg_catalog.now() - interval '1 minute'
    RETURNING g.* INTO granted;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'only a replay sets its database up, once, with the grant its owner wrote'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO flux.replay_pins (replay_id, call, position, table_schema, table_name, op, row_pk, old, new)
    SELECT granted.replay_id, p->>0, (p->>1)::integer, p->>2, p->>3, p->>4, p->5, NULLIF(p->6, 'null'),
           NULLIF(p->7, 'null')
      FROM pg_catalog.jsonb_array_elements(pins) AS p;
    PERFORM pg_catalog.set_config('search_path', caller_path, true);  -- names only: no code runs meanwhile
    FOREACH spelled IN ARRAY coalesce(named, '{}') LOOP
        BEGIN
            tables := pg_catalog.array_append(tables, pg_catalog.to_regclass(spelled));
        EXCEPTION WHEN invalid_name OR feature_not_supported THEN
            NULL;  -- no table of this database's (another database's, or not a table's name): none to rewind
        END;
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    RETURN flux.rewind_tables(request, as_of, tables, written_schemas, written_names, started, ended);
END
$$;

-- The mutations the replay that took its grant up in this transaction made (its request id is the replay's),
-- read back before the transaction is rolled back; nothing in any other transaction. (PL/pgSQL, so that its
-- plan is made once a session: Postgres plans a SQL function's statement at every call.)
DROP FUNCTION IF EXISTS flux.replay_captured();
CREATE FUNCTION flux.replay_captured()
RETURNS TABLE (id bigint, span_seq integer, table_schema text, table_name text, op text, row_pk jsonb,
               old jsonb, new jsonb, changed text[])
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
        SELECT m.id, m.span_seq, m.table_schema, m.table_name, m.op, m.row_pk, m.old, m.new, m.changed
          FROM flux.replay_grants AS g
          JOIN flux.mutations AS m ON m.request_id = g.replay_id
         WHERE g.txid = pg_catalog.txid_current()
         ORDER BY m.id;
END
$$;

-- Request connections call these two; the grant decides whether they do anything.
REVOKE EXECUTE ON FUNCTION flux.replay_prepare(bytea, uuid, jsonb, boolean, text[], text, text[], text[],
    timestamptz, timestamptz), flux.replay_captured() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.replay_prepare(bytea, uuid, jsonb, boolean, text[], text, text[], text[],
    timestamptz, timestamptz), flux.replay_captured() TO flux_authenticator;

-- The mutations of others (not `request`'s) made since a request began, to tables whose schema is one of
-- `schemas` and whose name is one of `names` (any pairing of the two: a caller naming several tables keeps
-- the pairs it means): those in a transaction that began at or after `started`, and those numbered from
-- `first_id` on (none when it is null). Each part is found through an index, whatever the tables' history
-- before: `mutations_at_idx` (BRIN on `at`, as the rows are appended in about that order) and the primary
-- key; the tables are picked from what those find (the `OFFSET 0` keeps the planner from taking
-- `mutations_row_idx`, which holds each table's whole history, for the cheaper way when its statistics end
-- before the newest rows). A SQL function Postgres inlines into the statement that calls it: that statement
-- is planned once a session, with sequential scans off (a generic plan would otherwise scan the table).
DROP FUNCTION IF EXISTS flux.mutations_since(timestamptz, bigint, uuid, text[], text[]);
CREATE FUNCTION flux.mutations_since(
    started timestamptz, first_id bigint, request uuid, schemas text[], names text[]
) RETURNS TABLE (id bigint, request_id uuid, table_schema text, table_name text, op text, row_pk jsonb,
                 at timestamptz, changed text[])
    LANGUAGE sql STABLE
AS $$
    SELECT s.id, s.request_id, s.table_schema, s.table_name, s.op, s.row_pk, s.at, s.changed
      FROM (SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at, m.changed
              FROM flux.mutations m
             WHERE m.at >= started
            UNION ALL
            SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at, m.changed
              FROM flux.mutations m
             WHERE m.id >= first_id AND m.at < started
            OFFSET 0) AS s
     WHERE s.request_id IS DISTINCT FROM request
       AND s.table_name = ANY (names) AND s.table_schema = ANY (schemas)
$$;

-- The writes a rewind takes back (`live`: the request's own, but on rows others wrote since, which stay as
-- they are today; `as-of`: every write to the tables `schemas`/`names` since the request began, as
-- flux.mutations_since finds them, and the request's own); inlined as flux.mutations_since is.
CREATE OR REPLACE FUNCTION flux.rewound_writes(
    request uuid, as_of boolean, started timestamptz, own_first bigint, schemas text[], names text[]
) RETURNS TABLE (id bigint, request_id uuid, table_schema text, table_name text, op text, row_pk jsonb,
                 at timestamptz, changed text[])
    LANGUAGE sql STABLE
AS $$
    SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at, m.changed
      FROM flux.mutations m
     WHERE m.request_id = request
       AND (as_of OR NOT EXISTS (SELECT FROM flux.mutations x
                                  WHERE (x.table_schema, x.table_name, x.row_pk)
                                        = (m.table_schema, m.table_name, m.row_pk)
                                    AND x.id > m.id AND x.request_id IS DISTINCT FROM request))
    UNION ALL
    SELECT s.id, s.request_id, s.table_schema, s.table_name, s.op, s.row_pk, s.at, s.changed
      FROM flux.mutations_since(started, own_first, request, schemas, names) AS s
     WHERE as_of
$$;

-- What a rewind takes back, read in one pass over flux.rewound_writes and netted to one change a row (a row
-- is its table and key; its writes are numbered in the order their transactions committed, since a second
-- writer of a row waits for the first to commit): its first write since says what it was before (none, when
-- that was an INSERT). One flux.rewound_table a table (of `schemas`/`names`, or one the request wrote): the
-- keys of the rows made since (`made`), the rows as they were before for the others (`restored`: changed or
-- deleted since), whether a write changed a key, and how many writes it takes back.
-- `drift` lists the writes of others that may explain a difference in what the request read, the first 100:
-- as-of, those it takes back that began before the request `ended` (found apart, through the BRIN index on
-- `at`, which keeps that read to the request's own time); live, every write of others since the request's
-- last. Planned once a session, with sequential scans and sorts off (a generic plan's guesses of how many
-- rows come back would otherwise scan the table, and sort where hashing does).
CREATE OR REPLACE FUNCTION flux.writes_to_rewind(
    request uuid, as_of boolean, started timestamptz, ended timestamptz, own_first bigint, own_last bigint,
    schemas text[], names text[], OUT tables flux.rewound_table[], OUT drift jsonb
)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off
    SET enable_sort = off
    SET jit = off  -- what those make cost past jit_above_cost is no reason to compile it
AS $$
BEGIN
    WITH per_row AS (
        SELECT w.table_schema, w.table_name, w.row_pk,
               -- its first write, and whether that made the row (hashed: neither a sort nor a join)
               pg_catalog.min(w.id) AS first, pg_catalog.min(w.id) FILTER (WHERE w.op = 'INSERT') AS first_made,
               pg_catalog.count(*) AS writes,
               pg_catalog.bool_or(w.op = 'UPDATE' AND w.row_pk ?| w.changed) AS key_changed
          FROM flux.rewound_writes(request, as_of, started, own_first, schemas, names) AS w
         GROUP BY w.table_schema, w.table_name, w.row_pk
    )
    SELECT pg_catalog.array_agg(t::flux.rewound_table) INTO tables
      FROM (SELECT r.table_schema, r.table_name,
                   (SELECT f.row_pk FROM flux.mutations f WHERE f.id = pg_catalog.min(r.first)) AS some_key,
                   pg_catalog.array_agg(r.row_pk) FILTER (WHERE r.first = r.first_made) AS made,
                   pg_catalog.array_agg((SELECT f.old FROM flux.mutations f WHERE f.id = r.first))
                       FILTER (WHERE r.first_made IS DISTINCT FROM r.first) AS restored,
                   pg_catalog.bool_or(r.key_changed) AS key_changed, pg_catalog.sum(r.writes)::integer AS writes
              FROM per_row AS r
             GROUP BY r.table_schema, r.table_name
            HAVING (r.table_schema, r.table_name) IN (
                       SELECT * FROM ROWS FROM (pg_catalog.unnest(schemas), pg_catalog.unnest(names)))
                OR EXISTS (SELECT FROM flux.mutations o  -- a table the request wrote itself
                            WHERE o.request_id = request
                              AND (o.table_schema, o.table_name) = (r.table_schema, r.table_name))) AS t;
    IF as_of AND tables IS NULL THEN
        RETURN;  -- nothing to take back: no drift either (as-of's is among what it takes back)
    END IF;
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', d.id, 'request_id', d.request_id, 'table_schema', d.table_schema,
               'table_name', d.table_name, 'op', d.op, 'row_pk', d.row_pk, 'at', d.at) ORDER BY d.id)
      INTO drift
      FROM (SELECT s.id, s.request_id, s.table_schema, s.table_name, s.op, s.row_pk, s.at
              FROM (SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at
                      FROM flux.mutations m
                     WHERE as_of AND m.at >= started AND m.at < ended
                    UNION ALL
                    SELECT m.id, m.request_id, m.table_schema, m.table_name, m.op, m.row_pk, m.at
                      FROM flux.mutations m
                     WHERE as_of AND m.id >= own_first AND m.at < started
                    UNION ALL
                    SELECT l.id, l.request_id, l.table_schema, l.table_name, l.op, l.row_pk, l.at
                      FROM flux.mutations_since(started, own_last + 1, request, schemas, names) AS l
                     WHERE NOT as_of
                    OFFSET 0) AS s  -- the tables picked from what the indexes found, as in flux.mutations_since
             WHERE s.request_id IS DISTINCT FROM request
               AND (s.table_schema, s.table_name) IN (
                       SELECT * FROM ROWS FROM (pg_catalog.unnest(schemas), pg_catalog.unnest(names)))
             ORDER BY s.id LIMIT 100) AS d;
END
$$;

-- The ids of flux.rewound_writes (of the tables `schemas`/`names`, pairwise, and the request's own), for
-- taking them back one at a time (flux.undo_mutations_one_by_one). Sequential scans off, as above.
CREATE OR REPLACE FUNCTION flux.rewound_ids(
    request uuid, as_of boolean, started timestamptz, own_first bigint, schemas text[], names text[]
) RETURNS bigint[]
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off
    SET jit = off
AS $$
BEGIN
    RETURN ARRAY(
        SELECT w.id FROM flux.rewound_writes(request, as_of, started, own_first, schemas, names) AS w
         WHERE w.request_id = request
            OR (w.table_schema, w.table_name) IN (
                   SELECT * FROM ROWS FROM (pg_catalog.unnest(schemas), pg_catalog.unnest(names))));
END
$$;

-- Sets up the database of a replay in live or as-of mode, inside the replay's transaction (which it always
-- rolls back), in one call (by flux.replay_prepare). The tables it works on are the tracked tables the request
-- wrote (written_*) or named in a query (named). `live` takes back the request's own writes; `as-of`
-- every write to those tables since the request began (its own, and those of later or concurrent writers:
-- `at`, when their transaction began, at or after the request's, or numbered after the request's first
-- write; `started` and `ended` are Flux's clock, so the request's own writes, when it made any, give its
-- beginning by the database's clock). Set-based (flux.undo_mutations_by_table); one write at a time, newest
-- first (flux.undo_mutations_one_by_one), where a write changed a primary key, or where putting rows back
-- table by table breaks a constraint (a unique value moved between rows, a foreign key with triggers on).
-- The tables' triggers are off while it does when flux.rewind_fires_own_triggers says so. Answers
-- {"undone": n, "drift": [...], "not_rewound": [...], "triggers_off": bool}: drift is the writes of others
-- that may explain a difference in what the request read (flux.writes_to_rewind), not_rewound the tables
-- as-of cannot take back (schema-qualified: untracked, or gone).
DROP FUNCTION IF EXISTS flux.rewind_tables(uuid, boolean, text[], text[], text[], timestamptz, timestamptz);
CREATE OR REPLACE FUNCTION flux.rewind_tables(
    request uuid, as_of boolean, named regclass[], written_schemas text[], written_names text[],
    started timestamptz, ended timestamptz
) RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan  -- its statements' plans suit any values: made once a session
AS $$
DECLARE
    touched_schemas text[];
    touched_names text[];
    own_first bigint;
    own_last bigint;
    own_began timestamptz;
    tables flux.rewound_table[];
    drift jsonb;
    undone integer;
    not_rewound text[];
    replication text := pg_catalog.current_setting('session_replication_role');
    waited text := pg_catalog.current_setting('lock_timeout');
    triggers_off boolean := false;
BEGIN
    -- the tables named or written, and whether Flux tracks each (a named one it does not, as-of cannot rewind)
    SELECT coalesce(pg_catalog.array_agg(t.nspname::text) FILTER (WHERE t.tracked), '{}'),
           coalesce(pg_catalog.array_agg(t.relname::text) FILTER (WHERE t.tracked), '{}'),
           coalesce(pg_catalog.array_agg(pg_catalog.format('%I.%I', t.nspname, t.relname))
                        FILTER (WHERE NOT t.tracked AND x.named AND as_of), '{}')
      INTO touched_schemas, touched_names, not_rewound
      FROM (SELECT x.oid, pg_catalog.bool_or(x.named) AS named
              FROM (SELECT r.oid, true AS named FROM pg_catalog.unnest(named) AS r (oid)
                    UNION ALL
                    SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', w.s, w.n)), false
                      FROM ROWS FROM (pg_catalog.unnest(written_schemas), pg_catalog.unnest(written_names)) AS w (s, n)
                   ) AS x
             GROUP BY x.oid) AS x
     CROSS JOIN LATERAL (  -- each by its oid (an index), not a pass over the catalog (OFFSET 0: not a join)
           SELECT n.nspname, c.relname,
                  EXISTS (SELECT FROM pg_catalog.pg_trigger g
                           WHERE g.tgrelid = c.oid AND g.tgname = 'flux_mutations' AND g.tgparentid = 0) AS tracked
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = x.oid AND c.relkind IN ('r', 'p')
           OFFSET 0) AS t;
    SELECT pg_catalog.min(m.id), pg_catalog.max(m.id), pg_catalog.min(m.at) INTO own_first, own_last, own_began
      FROM flux.mutations m WHERE m.request_id = request;
    IF own_began IS NOT NULL THEN  -- when its transaction began, by the database's clock (Flux's may differ)
        ended := own_began + (ended - started);
        started := own_began;
    END IF;
    IF own_first IS NOT NULL OR pg_catalog.cardinality(touched_names) > 0 THEN  -- else nothing to read
        IF as_of THEN
            -- The block ranges autovacuum has not summarized yet (up to a minute of writes, and the last,
            -- filling range) are read whole by the BRIN search: summarize them first, unless a vacuum (or
            -- another rewind) is at it. What is summarized stays summarized, whatever this transaction does.
            BEGIN
                LOCK TABLE flux.mutations IN SHARE UPDATE EXCLUSIVE MODE NOWAIT;
                PERFORM pg_catalog.brin_summarize_new_values('flux.mutations_at_idx'::regclass);
            EXCEPTION WHEN lock_not_available THEN
                NULL;
            END;
        END IF;
        SELECT w.tables, w.drift INTO tables, drift
          FROM flux.writes_to_rewind(request, as_of, started, ended, own_first, own_last, touched_schemas,
                                     touched_names) AS w;
    END IF;
    undone := coalesce((SELECT pg_catalog.sum(t.writes) FROM pg_catalog.unnest(tables) AS t), 0);
    IF undone > 0 THEN
        -- A row that another session is writing is not waited for long: the replay gives up (a replay holding
        -- the rows it took back while waiting would hold up that session's next write, or deadlock with it).
        PERFORM pg_catalog.set_config('lock_timeout', '500ms', true);
        BEGIN
            IF EXISTS (SELECT FROM pg_catalog.unnest(tables) AS t WHERE t.key_changed) THEN
                -- an UPDATE changed a key: a row's writes are not all under one key
                RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            not_rewound := not_rewound || flux.undo_mutations_by_table(tables);
        EXCEPTION WHEN integrity_constraint_violation THEN  -- the subtransaction took the partial work back
            not_rewound := not_rewound || flux.undo_mutations_one_by_one(flux.rewound_ids(
                request, as_of, started, own_first, touched_schemas, touched_names));
        END;
        not_rewound := ARRAY(SELECT DISTINCT x FROM pg_catalog.unnest(not_rewound) AS x ORDER BY x);
        PERFORM pg_catalog.set_config('lock_timeout', waited, true);
        triggers_off := pg_catalog.current_setting('session_replication_role') = 'replica';
        IF triggers_off THEN
            PERFORM pg_catalog.set_config('session_replication_role', replication, true);
        END IF;
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'undone', undone, 'drift', coalesce(drift, '[]'), 'not_rewound', not_rewound,
        'triggers_off', triggers_off);
END
$$;

-- Whether `target`'s own triggers (a user's: neither Flux's nor a constraint's) fire on the rows a rewind puts
-- back. When it has some, which might change or refuse those rows, they are turned off for the rest of the
-- rewind (session_replication_role = replica, which the rewind resets when it ends) where the role may (a
-- superuser, or a role granted SET on it, Postgres 15+); where it may not, they fire, and the rows get pinned
-- values. A table with none keeps its triggers on: only Flux's and its foreign keys' fire, and Flux's leave
-- the rows put back alone (flux.track says how). Turning them off costs a millisecond or more: the session plans
-- each of its statements again.
DROP FUNCTION IF EXISTS flux.rewind_fires_own_triggers(regclass, integer);
CREATE OR REPLACE FUNCTION flux.rewind_fires_own_triggers(target regclass) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.current_setting('session_replication_role') = 'replica' OR NOT EXISTS (
            SELECT FROM pg_catalog.pg_trigger t
             WHERE (t.tgrelid = target  -- and its partitions', if it has any
                    OR t.tgrelid IN (SELECT p.relid FROM pg_catalog.pg_partition_tree(target) AS p))
               AND NOT t.tgisinternal
               AND t.tgname NOT IN ('flux_mutations', 'flux_mutations_truncate', 'zz_flux_replay_pin')) THEN
        RETURN false;
    END IF;
    BEGIN
        PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        RETURN false;
    EXCEPTION WHEN insufficient_privilege THEN
        RETURN true;
    END;
END
$$;

-- Puts the tables of `tables` (flux.writes_to_rewind's) back as they were before their first write taken back:
-- each table takes one DELETE (rows made since), one UPDATE (rows changed or deleted since that are there
-- today: every column gets its value from before) and one INSERT (those that are not). Only flux.rewind_tables
-- calls it, in a replay's transaction, which is rolled back; it turns a table's triggers off where
-- flux.rewind_fires_own_triggers says (so that they, and foreign-key checks, leave the old values alone). Returns the tables it could not rewind because they no longer exist.
DROP FUNCTION IF EXISTS flux.undo_mutations(bigint[]);  -- before migration 0018 (which made it take tables)
DROP FUNCTION IF EXISTS flux.undo_mutations_by_table(bigint[]);
CREATE OR REPLACE FUNCTION flux.undo_mutations_by_table(tables flux.rewound_table[]) RETURNS text[]
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t flux.rewound_table;
    target regclass;
    key_match text;
    key_typed text;  -- the key's columns read from a key's JSON by their types, when every one is a scalar's
    columns text;
    missing text[] := '{}';
    -- The table's own triggers fire: what they do to the rows put back is undone (flux.replay_pins, '@undo')
    triggers_on boolean;
    pinned integer := 0;
BEGIN
    FOREACH t IN ARRAY coalesce(tables, '{}') LOOP
        target := pg_catalog.to_regclass(pg_catalog.format('%I.%I', t.table_schema, t.table_name));
        IF target IS NULL THEN
            missing := missing || pg_catalog.format('%I.%I', t.table_schema, t.table_name);
            CONTINUE;
        END IF;
        triggers_on := flux.rewind_fires_own_triggers(target);
        SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = k.%1$I', key), ' AND '),
               CASE WHEN pg_catalog.count(a.attname) = pg_catalog.count(*)
                         AND pg_catalog.bool_and(a.typcategory NOT IN ('A', 'C'))
                    THEN pg_catalog.string_agg(pg_catalog.format('(k.k ->> %1$L)::%2$s AS %1$I', key,
                                               pg_catalog.format_type(a.atttypid, a.atttypmod)), ', ')
               END
          INTO key_match, key_typed
          FROM pg_catalog.jsonb_object_keys(t.some_key) AS key
          LEFT JOIN LATERAL (  -- each by its name (an index), not a pass over the catalog (OFFSET 0: not a join)
                SELECT a.attname, a.atttypid, a.atttypmod, y.typcategory
                  FROM pg_catalog.pg_attribute a
                  JOIN pg_catalog.pg_type y ON y.oid = a.atttypid
                 WHERE a.attrelid = target AND a.attname = key AND a.attnum > 0 AND NOT a.attisdropped
                OFFSET 0) AS a ON true;
        IF triggers_on AND t.restored IS NOT NULL THEN  -- each row put back, by an UPDATE or an INSERT
            INSERT INTO flux.replay_pins (replay_id, call, position, table_schema, table_name, op, row_pk, new)
            SELECT '00000000-0000-0000-0000-000000000000', '@undo', pinned + r.n * 2 + o.n, t.table_schema,
                   t.table_name, o.op, coalesce((SELECT pg_catalog.jsonb_object_agg(k, r.row -> k)
                                                   FROM pg_catalog.jsonb_object_keys(t.some_key) AS k), '{}'), r.row
              FROM pg_catalog.unnest(t.restored) WITH ORDINALITY AS r (row, n)
             CROSS JOIN (VALUES ('UPDATE', 0), ('INSERT', 1)) AS o (op, n);
            pinned := pinned + 2 * pg_catalog.cardinality(t.restored) + 2;
        END IF;
        -- Flux's recording trigger leaves the rows put back alone (flux.track), and the pin trigger pins
        -- them only where the table's own triggers fire (`@undo`; `@rewind` otherwise)
        PERFORM pg_catalog.set_config('flux.replay_call', CASE WHEN triggers_on THEN '@undo' ELSE '@rewind' END,
                                      true);
        IF t.made IS NOT NULL THEN
            -- by the keys read as their columns' types (cheaper than a whole row of the table for each key)
            EXECUTE pg_catalog.format(
                'DELETE FROM %1$s AS t USING %3$s AS k WHERE %2$s', target, key_match,
                coalesce('(SELECT ' || key_typed || ' FROM pg_catalog.unnest($1) AS k (k))',
                         pg_catalog.format('pg_catalog.jsonb_populate_recordset(NULL::%s, pg_catalog.to_jsonb($1))',
                                           target)))
                USING t.made;
        END IF;
        IF t.restored IS NOT NULL THEN
            -- Every column there was then (one added since keeps today's value), but the key (it matches) and
            -- what cannot be set (generated columns, GENERATED ALWAYS identities).
            SELECT pg_catalog.string_agg(pg_catalog.format(
                       '%1$I = CASE WHEN j.j ? %2$L THEN k.%1$I ELSE t.%1$I END', a.attname, a.attname), ', ')
              INTO columns
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
               AND a.attidentity <> 'a' AND NOT t.some_key ? a.attname;
            IF columns IS NOT NULL THEN
                EXECUTE pg_catalog.format(
                    'UPDATE %1$s AS t SET %2$s FROM pg_catalog.unnest($1) AS j (j)'
                    ' CROSS JOIN LATERAL pg_catalog.jsonb_populate_record(NULL::%1$s, j.j) AS k WHERE %3$s',
                    target, columns, key_match) USING t.restored;
            END IF;
        END IF;
        IF t.restored IS NOT NULL THEN  -- those deleted since (not there today)
            SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
              INTO columns
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
            EXECUTE pg_catalog.format(
                'INSERT INTO %1$s (%2$s) OVERRIDING SYSTEM VALUE SELECT %2$s'
                ' FROM pg_catalog.jsonb_populate_recordset(NULL::%1$s, pg_catalog.to_jsonb($1)) AS k'
                ' WHERE NOT EXISTS (SELECT FROM %1$s AS t WHERE %3$s)',
                target, columns, key_match) USING t.restored;
        END IF;
        PERFORM pg_catalog.set_config('flux.replay_call', '', true);
    END LOOP;
    RETURN missing;
END
$$;

-- flux.undo_mutations one mutation at a time, newest first: an INSERT is deleted, an UPDATE's changed columns
-- get their old values, a DELETE is inserted again.
CREATE OR REPLACE FUNCTION flux.undo_mutations_one_by_one(ids bigint[]) RETURNS text[]
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m record;
    target regclass;
    checked regclass[] := '{}';  -- the tables whose own triggers were looked at
    key_match text;
    columns text;
    missing text[] := '{}';
BEGIN
    PERFORM pg_catalog.set_config('flux.replay_call', '@rewind', true);  -- not recorded, not pinned
    FOR m IN SELECT * FROM flux.mutations WHERE id = ANY(ids) ORDER BY id DESC LOOP
        target := pg_catalog.to_regclass(pg_catalog.format('%I.%I', m.table_schema, m.table_name));
        IF target IS NULL THEN
            missing := missing || pg_catalog.format('%I.%I', m.table_schema, m.table_name);
            CONTINUE;
        END IF;
        IF target <> ALL(checked) THEN
            PERFORM flux.rewind_fires_own_triggers(target);
            checked := checked || target;
        END IF;
        SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = k.%1$I', key), ' AND ')
          INTO key_match FROM pg_catalog.jsonb_object_keys(m.row_pk) AS key;
        IF m.op = 'INSERT' THEN
            EXECUTE pg_catalog.format(
                'DELETE FROM %1$s AS t USING pg_catalog.jsonb_populate_record(NULL::%1$s, $1) AS k WHERE %2$s',
                target, key_match) USING m.row_pk;
        ELSIF m.op = 'UPDATE' THEN
            SELECT pg_catalog.string_agg(pg_catalog.format('%1$I = o.%1$I', a.attname), ', ')
              INTO columns
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
               AND a.attname = ANY(m.changed);
            IF columns IS NOT NULL THEN
                EXECUTE pg_catalog.format(
                    'UPDATE %1$s AS t SET %2$s FROM pg_catalog.jsonb_populate_record(NULL::%1$s, $1) AS o,'
                    ' pg_catalog.jsonb_populate_record(NULL::%1$s, $2) AS k WHERE %3$s',
                    target, columns, key_match) USING m.old, m.row_pk;
            END IF;
        ELSE
            SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
              INTO columns
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
            EXECUTE pg_catalog.format(
                'INSERT INTO %1$s (%2$s) OVERRIDING SYSTEM VALUE'
                ' SELECT %2$s FROM pg_catalog.jsonb_populate_record(NULL::%1$s, $1)',
                target, columns) USING m.old;
        END IF;
    END LOOP;
    PERFORM pg_catalog.set_config('flux.replay_call', '', true);
    RETURN missing;
END
$$;

-- Only the role that owns Flux rewinds (through flux.replay_prepare, in a granted transaction): never a request,
-- whose transaction would commit what it took back.
REVOKE EXECUTE ON FUNCTION flux.rewind_tables(uuid, boolean, regclass[], text[], text[], timestamptz, timestamptz),
    flux.mutations_since(timestamptz, bigint, uuid, text[], text[]),
    flux.rewound_writes(uuid, boolean, timestamptz, bigint, text[], text[]),
    flux.writes_to_rewind(uuid, boolean, timestamptz, timestamptz, bigint, bigint, text[], text[]),
    flux.rewound_ids(uuid, boolean, timestamptz, bigint, text[], text[]),
    flux.rewind_fires_own_triggers(regclass), flux.undo_mutations_by_table(flux.rewound_table[]),
    flux.undo_mutations_one_by_one(bigint[])
    FROM PUBLIC;

-- Tables tracked before replays existed get the pin trigger too (flux.track installs it from now on).
DO $$
DECLARE
    tracked regclass;
BEGIN
    FOR tracked IN
        SELECT t.tgrelid::regclass FROM pg_catalog.pg_trigger t
         WHERE t.tgname = 'flux_mutations' AND t.tgparentid = 0
    LOOP
        PERFORM flux.track(tracked);
    END LOOP;
END
$$;
