-- Purpose: the replays of a request (`flux trace ls --replay-of ID`, the dashboard's trace page) are found
-- through an index instead of a scan of every request. Partial: most requests are no replay's.
CREATE INDEX requests_replay_of_idx ON flux.requests (replay_of) WHERE replay_of IS NOT NULL;
