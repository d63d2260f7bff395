-- Each channel's pending notifications in the order they are due: the delivery job's claim
-- walks it per channel (PostgreSQL) and the rest of the outbox, delivered or failed, is not in
-- it at all.
CREATE INDEX notifications_pending ON notifications(channel_id, next_attempt_at, id) WHERE status = 'pending';
