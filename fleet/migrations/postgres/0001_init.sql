-- The fleet's observed state (see fleet/store.go). JSON bodies are what the
-- API speaks; the columns beside them are what queries need. Times are Unix
-- nanoseconds.
CREATE TABLE observed (
	mac     TEXT PRIMARY KEY,
	time_ns BIGINT NOT NULL,
	body    TEXT NOT NULL
);
CREATE TABLE boots (
	mac        TEXT NOT NULL,
	start_ns   BIGINT NOT NULL,
	checked_in BIGINT NOT NULL,
	body       TEXT NOT NULL,
	PRIMARY KEY (mac, start_ns)
);
CREATE TABLE overrides (
	kind TEXT NOT NULL,
	name TEXT NOT NULL,
	body TEXT NOT NULL,
	PRIMARY KEY (kind, name)
);
CREATE TABLE reverts (
	mac  TEXT PRIMARY KEY,
	id   TEXT NOT NULL,
	body TEXT NOT NULL
);
CREATE TABLE rollouts (
	name TEXT PRIMARY KEY,
	body TEXT NOT NULL
);
CREATE TABLE rollout_progress (
	name       TEXT PRIMARY KEY,
	state      TEXT NOT NULL,
	wave       BIGINT NOT NULL,
	data       TEXT NOT NULL,
	updated_ns BIGINT NOT NULL,
	version    BIGINT NOT NULL
);
CREATE TABLE rollout_hosts (
	rollout    TEXT NOT NULL,
	mac        TEXT NOT NULL,
	wave       BIGINT NOT NULL,
	state      TEXT NOT NULL,
	reason     TEXT NOT NULL,
	updated_ns BIGINT NOT NULL,
	PRIMARY KEY (rollout, mac)
);
CREATE TABLE audit (
	id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	time_ns BIGINT NOT NULL,
	who     TEXT NOT NULL,
	action  TEXT NOT NULL,
	target  TEXT NOT NULL,
	host    TEXT NOT NULL,
	mac     TEXT NOT NULL,
	detail  TEXT NOT NULL,
	remote  TEXT NOT NULL
);
CREATE INDEX audit_time ON audit (time_ns);
CREATE INDEX audit_who ON audit (who, time_ns);
CREATE INDEX audit_action ON audit (action, time_ns);
CREATE INDEX audit_host ON audit (host, time_ns);
CREATE INDEX audit_mac ON audit (mac, time_ns);
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
