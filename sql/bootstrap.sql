-- Purpose: the migration runner's own bookkeeping, created before any migration runs (idempotent).
CREATE SCHEMA IF NOT EXISTS flux;

CREATE TABLE IF NOT EXISTS flux.schema_migrations (
    kind        text        NOT NULL,
    version     text        NOT NULL,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (kind, version),
    CONSTRAINT schema_migrations_kind_check CHECK (kind IN ('flux', 'function', 'project'))
);

COMMENT ON TABLE flux.schema_migrations IS
    'Applied migrations: kind flux = sql/migrations, function = sql/functions (re-applied on change), '
    'project = a Flux project''s migrations/ folder.';
