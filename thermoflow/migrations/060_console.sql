-- Issue 16: the operator console's own records.

-- The incidents page lists the newest first; opened_at never changes, so updates stay HOT.
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents (opened_at DESC);

-- Each dead letter sent back to the bridge's input (its MQTT topic), with who did it. A dead
-- letter (topic, partition, offset) is redriven at most once: if it fails again it comes back
-- as a new dead letter, with an offset of its own.
CREATE TABLE IF NOT EXISTS deadletter_redrives (
    deadletter_topic  text NOT NULL,
    deadletter_partition integer NOT NULL,
    deadletter_offset bigint NOT NULL,
    mqtt_topic        text NOT NULL,
    error             text NOT NULL,
    redriven_by       text NOT NULL,
    redriven_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deadletter_topic, deadletter_partition, deadletter_offset)
);
CREATE INDEX IF NOT EXISTS deadletter_redrives_at ON deadletter_redrives (redriven_at DESC);
