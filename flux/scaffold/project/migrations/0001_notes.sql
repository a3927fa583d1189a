-- The project's first table. Flux records every change to it in flux.mutations (`flux state history notes 1`).
CREATE TABLE notes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The routes run without a key (auth = "none"), as flux_anon; flux_anon and flux_user get only what is granted.
-- flux_service (`flux invoke`, queue jobs) may use every table in schema public with no GRANT (docs/sql.md).
GRANT SELECT, INSERT ON notes TO flux_anon, flux_user;
