-- How far each cluster's clock is from the service's (ms; positive: the cluster's is ahead), as
-- its agent's last Hello or Heartbeat showed; NULL until an agent that tells has connected.
ALTER TABLE clusters ADD COLUMN clock_skew_ms BIGINT;
