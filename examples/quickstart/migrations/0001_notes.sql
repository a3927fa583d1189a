-- Purpose: a small table to try `flux.mutation_log` in psql; Flux tracks every table a project creates.
CREATE TABLE notes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
