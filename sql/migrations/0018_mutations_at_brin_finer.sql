-- Purpose: an as-of replay finds the writes made since its request through mutations_at_idx, and a BRIN index
-- reads every page of each range that may hold one: with 128 pages a range (Postgres's default), about 3,000
-- mutations, a millisecond, even when nothing was written since. Eight pages a range (about 200 mutations)
-- keep that read to a few pages; the index stays a few pages per 10,000 mutations, and an insert still costs
-- it next to nothing (autovacuum summarizes each range once it fills).
DROP INDEX flux.mutations_at_idx;
CREATE INDEX mutations_at_idx ON flux.mutations USING brin (at) WITH (autosummarize = on, pages_per_range = 8);
