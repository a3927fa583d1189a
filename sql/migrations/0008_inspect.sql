-- Purpose: what inspecting requests needs. Each mutation names the span that caused it, so `flux trace` shows
-- a row change under the database call that made it (the request sets flux.span_seq before a call that may
-- write; the trigger copies it). New requests are announced on channel flux_requests while someone follows
-- them (`flux tail`).

ALTER TABLE flux.mutations ADD COLUMN span_seq integer;

COMMENT ON COLUMN flux.mutations.span_seq IS
    'The seq of the span (in flux.spans, with request_id) whose database call made this change; NULL for writes '
    'made outside a request, or by a statement Flux did not expect to write (a function called by a select).';

-- Who follows new requests now: each `flux tail` keeps a row here alive (expires_at) while it runs. With no
-- live row, recording a request sends no NOTIFY (a NOTIFY serialises committing transactions).
CREATE UNLOGGED TABLE flux.request_followers (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    expires_at  timestamptz NOT NULL,
    CONSTRAINT request_followers_pkey PRIMARY KEY (id)
);

COMMENT ON TABLE flux.request_followers IS
    'Sessions following new requests (flux tail): while one is live, new requests are NOTIFYed on flux_requests.';

-- Announces the ids of the requests one statement recorded, at most 200 per notification (a payload holds
-- under 8000 bytes), when someone follows them. SECURITY DEFINER: the roles that record requests need no
-- right on flux.request_followers.
CREATE FUNCTION flux.tg_requests__notify() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
BEGIN
    IF EXISTS (SELECT FROM flux.request_followers WHERE expires_at > pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify('flux_requests', pg_catalog.string_agg(r.id::text, ','))
           FROM (SELECT n.id, (pg_catalog.row_number() OVER () - 1) / 200 AS chunk FROM new_requests n) AS r
          GROUP BY r.chunk;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER requests_notify
    AFTER INSERT ON flux.requests REFERENCING NEW TABLE AS new_requests
    FOR EACH STATEMENT EXECUTE FUNCTION flux.tg_requests__notify();
