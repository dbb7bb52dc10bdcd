-- Rollouts that run themselves (fleet/rollout): when the rollout assigned
-- each host its image, and the image it ran then (what a revert goes back
-- to).
ALTER TABLE rollout_hosts ADD COLUMN moved_ns BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rollout_hosts ADD COLUMN from_digest TEXT NOT NULL DEFAULT '';
-- The inventory: each host's facts as its agent last reported them (kept
-- apart from the check-ins, which agents send every minute without them).
CREATE TABLE host_facts (
	mac     TEXT PRIMARY KEY,
	time_ns BIGINT NOT NULL,
	body    TEXT NOT NULL
);
