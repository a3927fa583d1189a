-- Purpose: what replays need from the database: pinning generated values (flux.tg_mutations__pin_replay) and
-- rewinding tracked tables (flux.undo_mutations).

-- Gives a row that a replay writes again the values the original write got: a BEFORE INSERT OR UPDATE trigger
-- on every tracked table, installed by flux.track, that fires only while a replay names its current write in
-- flux.replay_call (its WHEN clause; on any other write it costs one setting lookup). An INSERT takes the next
-- unused recorded INSERT of the same table; an UPDATE the recorded UPDATE of the same key whose old row is
-- this one (so a row whose data changed since is written as the replay computes it, and shows as a
-- difference). Named to fire after the table's own BEFORE triggers (they fire by name), so that a trigger
-- setting updated_at = now() is pinned too. Arguments: as flux.tg_mutations__record's.
CREATE OR REPLACE FUNCTION flux.tg_mutations__pin_replay() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
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
    IF TG_OP = 'INSERT' THEN
        UPDATE flux.replay_pins AS p SET used = true
         WHERE (p.replay_id, p.call, p.position) = (
               SELECT q.replay_id, q.call, q.position FROM flux.replay_pins AS q
                WHERE q.replay_id = replay AND q.call = call_name AND q.table_schema = written_schema
                  AND q.table_name = written_table AND q.op = 'INSERT' AND NOT q.used
                ORDER BY q.position LIMIT 1)
        RETURNING p.new INTO pinned;
    ELSE
        old_row := pg_catalog.to_jsonb(OLD);
        UPDATE flux.replay_pins AS p SET used = true
         WHERE (p.replay_id, p.call, p.position) = (
               SELECT q.replay_id, q.call, q.position FROM flux.replay_pins AS q
                WHERE q.replay_id = replay AND q.call = call_name AND q.table_schema = written_schema
                  AND q.table_name = written_table AND q.op = 'UPDATE' AND NOT q.used AND q.old = old_row
                ORDER BY q.position LIMIT 1)
        RETURNING p.new INTO pinned;
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

-- Undoes the given mutations, newest first (a row's mutations are numbered in the order their transactions
-- committed: a second writer of a row waits for the first to commit), to put tracked tables back as they
-- were: an INSERT is deleted, an UPDATE's changed columns get their old values, a DELETE is inserted again.
-- Only a replay calls it, inside a transaction it rolls back. Run it with session_replication_role = replica
-- where the role may, so the tables' triggers (and foreign-key checks) leave the old values alone. Returns
-- the tables it could not rewind because they no longer exist.
CREATE OR REPLACE FUNCTION flux.undo_mutations(ids bigint[]) RETURNS text[]
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
DECLARE
    m record;
    target regclass;
    key_match text;
    columns text;
    missing text[] := '{}';
BEGIN
    FOR m IN SELECT * FROM flux.mutations WHERE id = ANY(ids) ORDER BY id DESC LOOP
        target := pg_catalog.to_regclass(pg_catalog.format('%I.%I', m.table_schema, m.table_name));
        IF target IS NULL THEN
            missing := missing || pg_catalog.format('%I.%I', m.table_schema, m.table_name);
            CONTINUE;
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
    RETURN missing;
END
$$;

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
