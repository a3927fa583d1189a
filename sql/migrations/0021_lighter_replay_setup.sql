-- Purpose: a lighter set-up for live and as-of replays.
-- What flux.writes_to_rewind hands flux.undo_mutations_by_table for each table it takes writes back from,
-- netted by each row's first write since (what the row was before): the keys of the rows made since, the rows
-- as they were before for the others (changed or deleted since: put back by an UPDATE where the row is there
-- today, by an INSERT where it is not), whether a write changed a key, and how many writes it takes back.
-- Replaces 0018's shape, which also needed each row's last write; the functions that took it are made again
-- from sql/functions.
DROP TYPE flux.rewound_table CASCADE;
CREATE TYPE flux.rewound_table AS (
    table_schema text, table_name text, some_key jsonb, made jsonb[], restored jsonb[], key_changed boolean,
    writes integer
);

-- A grant no longer names the request its replay rewinds (flux.replay_prepare is given it, by the process
-- that holds the grant's secret), so that a replay can write the next one's grant ahead, with its own record.
DROP FUNCTION IF EXISTS flux.replay_prepare(bytea, jsonb, boolean, text[], text, text[], text[], timestamptz,
                                            timestamptz);
ALTER TABLE flux.replay_grants DROP COLUMN request_id;
