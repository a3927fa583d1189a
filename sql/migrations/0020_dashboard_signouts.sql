-- Purpose: signing out of the dashboard ends the session everywhere, not only in the browser that signs out.
-- A session lives in its sealed cookie (flux/dashboard/_session.py); one that signed out is listed here, by
-- the sha256 of its CSRF token (each session's own), until the cookie would have ended anyway.
CREATE TABLE flux.dashboard_signouts (
    session_sha256 bytea PRIMARY KEY,
    ends_at        timestamptz NOT NULL
);

COMMENT ON TABLE flux.dashboard_signouts IS 'Dashboard sessions that signed out, by the sha256 of their CSRF token, until their cookie would have ended; read on every dashboard request, written by sign-out.';
