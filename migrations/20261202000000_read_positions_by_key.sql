-- Read positions per key: a room (a key of a keyed topic) is read apart from the other rooms
-- of its topic. '' stands for the whole topic, which is where every earlier position was.
CREATE TABLE read_positions_by_key (
    sub TEXT NOT NULL,
    topic TEXT NOT NULL,
    record_key TEXT NOT NULL,
    kafka_partition BIGINT NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (sub, topic, record_key, kafka_partition)
);
INSERT INTO read_positions_by_key (sub, topic, record_key, kafka_partition, next_offset, updated_at)
    SELECT sub, topic, '', kafka_partition, next_offset, updated_at FROM read_positions;
DROP TABLE read_positions;
ALTER TABLE read_positions_by_key RENAME TO read_positions;
