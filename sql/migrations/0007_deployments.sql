-- Purpose: deployed code and secrets. A deployment is one version of a project: its functions (built code,
-- stored once per sha256), routes and limits. Exactly one is active; requests record which one served them.

-- Built code, by the sha256 of its bytes: a Wasm module or component, or TypeScript/JavaScript source.
CREATE TABLE flux.artifacts (
    sha256      text        NOT NULL,
    runtime     text        NOT NULL,
    code        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT artifacts_pkey PRIMARY KEY (sha256),
    CONSTRAINT artifacts_runtime_check CHECK (runtime IN ('wasm', 'component', 'typescript', 'javascript')),
    CONSTRAINT artifacts_sha256_check CHECK (sha256 ~ '^[0-9a-f]{64}$')
);

-- `id` is the version people name (`flux rollback 3`). `content_sha` identifies what was deployed (code,
-- limits, routes, migrations), so deploying the same project twice makes no new version.
CREATE TABLE flux.deployments (
    id            bigint      GENERATED ALWAYS AS IDENTITY,
    project       text        NOT NULL,
    content_sha   text        NOT NULL,
    git_commit    text,
    routes        jsonb       NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL DEFAULT session_user,
    active        boolean     NOT NULL DEFAULT false,
    activated_at  timestamptz,
    CONSTRAINT deployments_pkey PRIMARY KEY (id)
);

CREATE UNIQUE INDEX deployments_one_active_idx ON flux.deployments (active) WHERE active;

CREATE TABLE flux.deployment_functions (
    deployment_id  bigint NOT NULL REFERENCES flux.deployments ON DELETE CASCADE,
    name           text   NOT NULL,
    runtime        text   NOT NULL,
    sha256         text   NOT NULL REFERENCES flux.artifacts,
    language       text   NOT NULL,
    limits         jsonb  NOT NULL DEFAULT '{}',
    CONSTRAINT deployment_functions_pkey PRIMARY KEY (deployment_id, name)
);

CREATE INDEX deployment_functions_sha256_idx ON flux.deployment_functions (sha256);

-- Secrets, encrypted with AES-GCM under a key Postgres never sees (FLUX_SECRET_KEY or the server's key
-- file); the name is the authenticated data, so a ciphertext cannot be moved to another name.
CREATE TABLE flux.secrets (
    name        text        NOT NULL,
    nonce       bytea       NOT NULL,
    ciphertext  bytea       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT secrets_pkey PRIMARY KEY (name),
    CONSTRAINT secrets_name_check CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,127}$')
);

-- Keys for the management API (`flux_admin_` + random, shown once; sha256 kept). They run no function.
CREATE TABLE flux.admin_keys (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    prefix      text        NOT NULL,
    key_hash    bytea       NOT NULL,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    CONSTRAINT admin_keys_pkey PRIMARY KEY (id),
    CONSTRAINT admin_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT admin_keys_hash_check CHECK (octet_length(key_hash) = 32)
);

-- Workers reload the active deployment's functions, and secrets, when these change.
CREATE TRIGGER deployments_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flux.deployments
    FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_deployments');
CREATE TRIGGER secrets_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flux.secrets
    FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_secrets');

-- Request connections (flux_authenticator) read the active code and the (encrypted) secrets.
GRANT SELECT ON flux.artifacts, flux.deployments, flux.deployment_functions, flux.secrets TO flux_authenticator;

COMMENT ON TABLE flux.deployments IS 'One version of the project: its functions, routes and limits; one is active.';
COMMENT ON TABLE flux.artifacts IS 'Built function code by sha256 (Wasm, components, TypeScript/JavaScript source).';
COMMENT ON TABLE flux.secrets IS 'Secrets, AES-GCM encrypted outside Postgres; values never appear in clear.';
