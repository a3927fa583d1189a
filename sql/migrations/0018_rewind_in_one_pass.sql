-- Purpose: what an as-of replay's rewind needs to be quick. It finds the writes made since its request through
-- mutations_at_idx, and a BRIN index reads every page of each range that may hold one: with 128 pages a range (Postgres's default), about 3,000
-- mutations, a millisecond, even when nothing was written since. Eight pages a range (about 200 mutations)
-- keep that read to a few pages; the index stays a few pages per 10,000 mutations, and an insert still costs
-- it next to nothing (autovacuum summarizes each range once it fills).
DROP INDEX flux.mutations_at_idx;
CREATE INDEX mutations_at_idx ON flux.mutations USING brin (at) WITH (autosummarize = on, pages_per_range = 8);

-- What flux.rewind_tables hands flux.undo_mutations for each table it takes writes back from, read in one pass
-- over those writes: a key of one of its rows (for the key's columns), the keys of the rows made since, the
-- rows as they were before for those changed since and for those deleted since, and whether a write changed
-- a key.
CREATE TYPE flux.rewound_table AS (
    table_schema text, table_name text, some_key jsonb, made jsonb[], changed jsonb[], deleted jsonb[],
    key_changed boolean
);
