-- Purpose: column policies (who may read or write which column) and what flux.apply_column_policies() converted.

-- One row per (column, role) rule. A mask hides the value from readers: the compiler returns the mask text in
-- its place, and flux.apply_column_policies() treats a masked column as unreadable (no column SELECT), so raw
-- SQL never sees the real value either.
CREATE TABLE flux.column_policies (
    id            bigint      GENERATED ALWAYS AS IDENTITY,
    table_schema  text        NOT NULL DEFAULT 'public',
    table_name    text        NOT NULL,
    column_name   text        NOT NULL,
    role          text        NOT NULL,
    readable      boolean     NOT NULL DEFAULT true,
    writable      boolean     NOT NULL DEFAULT true,
    mask          text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT column_policies_pkey PRIMARY KEY (id),
    CONSTRAINT column_policies_table_column_role_key UNIQUE (table_schema, table_name, column_name, role),
    CONSTRAINT column_policies_role_check CHECK (role IN ('anon', 'user', 'service'))
);

COMMENT ON TABLE flux.column_policies IS
    'Column rules per Flux role (anon, user, service): readable, writable, and a mask readers get instead of '
    'the value (a masked column is unreadable by raw SQL). Enforced by the query compiler and, as column '
    'GRANTs, by flux.apply_column_policies(). Policies only take privileges away, never grant them.';
COMMENT ON COLUMN flux.column_policies.mask IS
    'Null: no mask. Otherwise the text the compiler returns instead of the value; the role gets no SELECT on '
    'the column.';

-- Postgres cannot deny one column of a table-level grant, so flux.apply_column_policies() replaces a role's
-- table-level SELECT, INSERT or UPDATE by column grants on every allowed column. Once converted, the catalog
-- no longer says the role held the privilege on the whole table; this table remembers it, so a column whose
-- policy is deleted (or a column added later) is granted again and a table with no policy left gets its
-- table-level grant back. A row exists exactly while such a conversion is in effect and leaves at least one
-- column granted; a role holding none of its columns any more means a DBA revoked it, and the row is dropped.
CREATE TABLE flux.column_policy_grants (
    table_schema     text        NOT NULL,
    table_name       text        NOT NULL,
    role             text        NOT NULL,
    privilege        text        NOT NULL,
    granted_columns  text[]      NOT NULL,
    converted_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT column_policy_grants_pkey PRIMARY KEY (table_schema, table_name, role, privilege),
    CONSTRAINT column_policy_grants_role_check CHECK (role IN ('anon', 'user', 'service')),
    CONSTRAINT column_policy_grants_privilege_check CHECK (privilege IN ('SELECT', 'INSERT', 'UPDATE'))
);

COMMENT ON TABLE flux.column_policy_grants IS
    'Table-level privileges of a Flux role that flux.apply_column_policies() turned into column grants '
    '(granted_columns: the columns it left granted). Bookkeeping of that function; do not edit by hand.';
