-- Purpose: `flux tail` through the management API. A follower on the database LISTENs on flux_requests; one
-- through the API makes a call now and then and holds no connection in between, so the ids announced for it
-- wait in an inbox until its next call takes them: nothing recorded between two calls is missed.

ALTER TABLE flux.request_followers ADD COLUMN keeps_inbox boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN flux.request_followers.keeps_inbox IS
    'Whether the ids of new requests are also kept in flux.request_follower_inbox for this follower (a follower '
    'through the management API, which holds no LISTEN between its calls).';

-- No foreign key to the follower: a request recorded while its follower is being removed would fail on it (the
-- trigger sees the follower in its snapshot). Removing a follower removes its inbox; rows a concurrent insert
-- left behind go when the next follower starts.
CREATE UNLOGGED TABLE flux.request_follower_inbox (
    follower_id bigint NOT NULL,
    request_id  uuid   NOT NULL
);

CREATE INDEX request_follower_inbox_follower_idx ON flux.request_follower_inbox (follower_id);

COMMENT ON TABLE flux.request_follower_inbox IS
    'New request ids waiting for the next call of a follower that keeps an inbox (flux tail through FLUX_URL).';

-- As before (0008), and the ids go into the inbox of each live follower that keeps one.
CREATE OR REPLACE FUNCTION flux.tg_requests__notify() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
BEGIN
    IF EXISTS (SELECT FROM flux.request_followers WHERE expires_at > pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify('flux_requests', pg_catalog.string_agg(r.id::text, ','))
           FROM (SELECT n.id, (pg_catalog.row_number() OVER () - 1) / 200 AS chunk FROM new_requests n) AS r
          GROUP BY r.chunk;
        INSERT INTO flux.request_follower_inbox (follower_id, request_id)
        SELECT f.id, n.id
          FROM flux.request_followers f CROSS JOIN new_requests n
         WHERE f.keeps_inbox AND f.expires_at > pg_catalog.now();
    END IF;
    RETURN NULL;
END
$$;
