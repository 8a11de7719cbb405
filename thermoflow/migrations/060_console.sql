-- Issue 16: the operator console's own records.

-- The incidents page lists the newest first; opened_at never changes, so updates stay HOT.
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents (opened_at DESC);

-- Each acknowledgement made in the console, with the operator's note. The incident row keeps
-- who and when (as `thermoflow alerts ack` sets them); the note has nowhere else to go. One row
-- per acknowledgement: a double click (the incident already acknowledged) adds none.
CREATE TABLE IF NOT EXISTS incident_acks (
    incident_id      text NOT NULL,
    acknowledged_at  timestamptz NOT NULL DEFAULT now(),
    acknowledged_by  text NOT NULL,
    note             text NOT NULL DEFAULT '',
    PRIMARY KEY (incident_id, acknowledged_at)
);

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
