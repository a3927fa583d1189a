-- Purpose: flux.replay_grants, the replays that may set their database up and read back what they wrote.
-- A replay in live or as-of mode runs the function on a request connection (flux_authenticator), as the
-- gateway does, so that the function's SQL can never run as the role that owns Flux, even if it leaves the
-- request's role. What only that owner may do (put rows back, pin generated values, read the replay's own
-- mutations) is done by SECURITY DEFINER functions (flux.replay_prepare, flux.replay_captured) that work only
-- for a replay the owner granted here: the owner's connection writes a grant under the sha256 of a secret only
-- the replaying process knows, and flux.replay_prepare, given that secret first thing in the replay's
-- transaction, takes the grant up for that transaction alone (`txid`, set inside it, so no other transaction
-- sees it taken) and only once. The owner deletes the grant when the replay ends; one left behind (the
-- replaying process died) cannot be taken up after a minute.
CREATE UNLOGGED TABLE flux.replay_grants (
    secret_sha256  bytea       NOT NULL,
    replay_id      uuid        NOT NULL,
    request_id     uuid        NOT NULL,
    granted_at     timestamptz NOT NULL DEFAULT now(),
    txid           bigint,
    CONSTRAINT replay_grants_pkey PRIMARY KEY (secret_sha256)
);

COMMENT ON TABLE flux.replay_grants IS 'The replays that may rewind and pin through flux.replay_prepare and read their mutations through flux.replay_captured, by the sha256 of a secret only the replaying process knows; written by the replaying owner, read only by those functions.';
