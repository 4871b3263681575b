-- One schema for SQLite and PostgreSQL: only types and statements both understand.

-- How far each user has read, per topic partition: the next offset to read (Kafka's
-- convention for committed offsets).
CREATE TABLE read_positions (
    sub TEXT NOT NULL,
    topic TEXT NOT NULL,
    kafka_partition BIGINT NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (sub, topic, kafka_partition)
);

-- Revoked tokens: kind 'jti' refuses one token; kind 'sub' refuses every token of that
-- user issued (`iat`) at or before revoked_at, in seconds since the epoch.
CREATE TABLE revocations (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);

-- Hubs that write presence events, with their last heartbeat (ms since the epoch).
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    last_seen BIGINT NOT NULL
);

-- Open sockets whose `disconnect` presence event is not in Kafka yet. A hub that dies leaves
-- its rows here, and whichever hub notices writes their `disconnect` events.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    sub TEXT NOT NULL,
    connected_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_instance ON sessions (instance);
