-- A push claim is written before its push is sent and marked done once the push service
-- has answered (or the push was given up). A claim left undone is one whose hub died, or
-- lost the record's partition, while sending: whichever hub handles the record next sends
-- it again with the same `Topic` header, which a push service uses to replace a push it
-- still holds, so that no push is lost with a hub. Claims written before this were all
-- sent or given up.
ALTER TABLE push_sent ADD COLUMN done BOOLEAN NOT NULL DEFAULT TRUE;
