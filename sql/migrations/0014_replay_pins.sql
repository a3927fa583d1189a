-- Purpose: flux.replay_pins, the database-generated values a replay gives back to the writes it runs again;
-- flux.mutations_at_idx, to find the writes made since a request began.
-- A replay in live or as-of mode runs a recorded request's writes again inside a transaction that is always
-- rolled back. Before it runs, it copies here the recorded mutations of each write it will run again with
-- the same arguments; a BEFORE trigger (flux.tg_mutations__pin_replay) then gives each such row the values
-- the original got (its serial id, its now() default, its random uuid), so the replay matches the recording
-- without any value being ignored. Rows here exist only inside a replay's transaction: nobody ever sees one.
-- Request roles have no right on the table, so a function cannot pin anything.
CREATE UNLOGGED TABLE flux.replay_pins (
    replay_id     uuid    NOT NULL,
    call          text    NOT NULL,
    position      integer NOT NULL,
    table_schema  text    NOT NULL,
    table_name    text    NOT NULL,
    op            text    NOT NULL,
    row_pk        jsonb   NOT NULL,
    old           jsonb,
    new           jsonb,
    used          boolean NOT NULL DEFAULT false,
    CONSTRAINT replay_pins_pkey PRIMARY KEY (replay_id, call, position),
    CONSTRAINT replay_pins_op_check CHECK (op IN ('INSERT', 'UPDATE'))
);

-- A rewind with the tables' triggers on finds the value each row is put back to by its key.
CREATE INDEX replay_pins_row_idx ON flux.replay_pins (replay_id, call, table_schema, table_name, row_pk);

COMMENT ON TABLE flux.replay_pins IS 'The recorded values a replay gives back to the writes it runs again (only ever written inside a replay''s rolled-back transaction, so always empty to everyone else).';

GRANT SELECT, UPDATE ON flux.replay_pins TO flux_recorder;

-- An as-of replay takes back the writes made since its request began: this finds them by when their
-- transaction began without reading the whole history (a BRIN index is a few pages, and costs an insert next
-- to nothing, since `at` grows with the table; autovacuum summarizes each range of pages once it fills).
CREATE INDEX mutations_at_idx ON flux.mutations USING brin (at) WITH (autosummarize = on);
