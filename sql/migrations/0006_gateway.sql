-- Purpose: what the gateway reads on every request: tenants, API keys (hashes only), routes (with a
-- notification to every process when they change) and the token buckets of the rate limit.

-- `rate_per_s`/`burst`: the tenant's token bucket across all its requests; null for no limit.
CREATE TABLE flux.tenants (
    id          uuid             NOT NULL DEFAULT gen_random_uuid(),
    name        text             NOT NULL,
    rate_per_s  double precision,
    burst       integer,
    created_at  timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_name_key UNIQUE (name),
    CONSTRAINT tenants_rate_check CHECK ((rate_per_s IS NULL) = (burst IS NULL) AND coalesce(rate_per_s, 1) > 0
                                         AND coalesce(burst, 1) >= 1)
);

-- A key is `flux_` + 32 random characters, shown once; Flux keeps its sha256 and its first 12 characters
-- (the prefix people recognise it by). It runs requests as `role`, for `tenant_id`, with `claims` added.
CREATE TABLE flux.api_keys (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    prefix      text        NOT NULL,
    key_hash    bytea       NOT NULL,
    name        text,
    tenant_id   uuid        REFERENCES flux.tenants ON DELETE CASCADE,
    role        text        NOT NULL DEFAULT 'user',
    claims      jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT api_keys_pkey PRIMARY KEY (id),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT api_keys_role_check CHECK (role IN ('anon', 'user', 'service')),
    CONSTRAINT api_keys_hash_check CHECK (octet_length(key_hash) = 32)
);

-- One row per method and path pattern (`/users/{id}`). `auth`: none (runs as flux_anon), key, jwt, or any
-- (a key or a JWT). `rate_per_s`/`burst`: a token bucket per tenant (or per caller without one) on this
-- route, in addition to the tenant's own; null for none.
CREATE TABLE flux.routes (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    method          text        NOT NULL,
    path            text        NOT NULL,
    function        text        NOT NULL,
    auth            text        NOT NULL DEFAULT 'any',
    rate_per_s      double precision,
    burst           integer,
    cors_origins    text[]      NOT NULL DEFAULT '{}',
    max_body_bytes  integer     NOT NULL DEFAULT 1048576,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT routes_pkey PRIMARY KEY (id),
    CONSTRAINT routes_method_path_key UNIQUE (method, path),
    CONSTRAINT routes_method_check CHECK (method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS')),
    CONSTRAINT routes_path_check CHECK (path ~ '^/'),
    CONSTRAINT routes_auth_check CHECK (auth IN ('none', 'key', 'jwt', 'any')),
    CONSTRAINT routes_rate_check CHECK ((rate_per_s IS NULL) = (burst IS NULL) AND coalesce(rate_per_s, 1) > 0
                                        AND coalesce(burst, 1) >= 1),
    CONSTRAINT routes_max_body_bytes_check CHECK (max_body_bytes > 0)
);

-- Every Flux process caches routes, keys and tenants, and drops its copy when the channel named by the
-- trigger's argument is notified: a change is live everywhere within a second.
CREATE FUNCTION flux.tg_gateway__notify() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify(TG_ARGV[0], TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER routes_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flux.routes
    FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_routes');
CREATE TRIGGER api_keys_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flux.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_callers');
CREATE TRIGGER tenants_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flux.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_gateway__notify('flux_callers');

-- Token buckets, shared by every process. UNLOGGED: a crash refills every bucket, which is harmless.
CREATE UNLOGGED TABLE flux.rate_buckets (
    bucket      text             NOT NULL,
    tokens      double precision NOT NULL,
    allowed     boolean          NOT NULL,
    updated_at  timestamptz      NOT NULL,
    CONSTRAINT rate_buckets_pkey PRIMARY KEY (bucket)
);

GRANT SELECT ON flux.tenants, flux.api_keys, flux.routes TO flux_authenticator;
GRANT SELECT, INSERT, UPDATE ON flux.rate_buckets TO flux_authenticator;

COMMENT ON TABLE flux.api_keys IS 'API keys: the sha256 of each key and its prefix, never the key itself.';
COMMENT ON TABLE flux.routes IS 'HTTP routes to functions; every Flux process reloads them on NOTIFY flux_routes.';
