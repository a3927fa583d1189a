-- Purpose: a small table whose every write Flux records, to try `flux.mutation_log` in psql.
CREATE TABLE notes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

SELECT flux.track('notes');
