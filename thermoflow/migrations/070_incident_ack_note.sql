-- Issue 16: an acknowledgement says why. acknowledged_by and acknowledged_at were already here;
-- the operator's note goes beside them ('' when none was given, NULL before any ack). The length
-- limit is the one thermoflow.events.ACK_NOTE_MAX enforces before a note gets here.
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS ack_note text;
ALTER TABLE incidents DROP CONSTRAINT IF EXISTS incidents_ack_note_length;
ALTER TABLE incidents ADD CONSTRAINT incidents_ack_note_length CHECK (char_length(ack_note) <= 1000);
