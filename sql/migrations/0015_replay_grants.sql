-- Purpose: flux.replay_grants, the transactions in which a replay may set its database up and read back what
-- it wrote.
-- A replay in live or as-of mode runs the function on a request connection (flux_authenticator), as the
-- gateway does, so that the function's SQL can never run as the role that owns Flux, even if it leaves the
-- request's role. What only that owner may do (put rows back, pin generated values, read the replay's own
-- mutations) is done by SECURITY DEFINER functions (flux.replay_prepare, flux.replay_captured) that work only
-- inside a transaction the owner named here: the replaying process begins the transaction on the request
-- connection, and the owner's connection writes its id (txid_current(), never reused) before the replay goes
-- on. A request's own transaction is never named, so no request can use them.
CREATE UNLOGGED TABLE flux.replay_grants (
    txid        bigint      NOT NULL,
    replay_id   uuid        NOT NULL,
    request_id  uuid        NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    prepared    boolean     NOT NULL DEFAULT false,
    CONSTRAINT replay_grants_pkey PRIMARY KEY (txid)
);

COMMENT ON TABLE flux.replay_grants IS 'The transactions (by txid) in which a replay may rewind and pin through flux.replay_prepare, and read its mutations through flux.replay_captured; written by the replaying owner, read only by those functions.';
