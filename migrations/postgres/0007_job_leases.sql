-- Background jobs that must run on one replica at a time: who holds each job's lease, and
-- until when (milliseconds since the epoch). A holder renews before it expires; once expired,
-- any replica may take it.
CREATE TABLE job_leases (
    job         TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
