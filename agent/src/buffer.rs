//! The bounded buffer of reports the gateway has not acknowledged yet. It is the single source of
//! what gets (re)sent: live reports are pushed here and the session sends from it, so a reconnect
//! resends exactly what is unacknowledged. It must never grow past its limit.

use std::collections::VecDeque;

use meshfleet_agent_protocol::v1::{agent_message::Body, AgentMessage};

#[derive(Debug)]
pub struct ReportBuffer {
    limit: usize,
    next_seq: u64,
    entries: VecDeque<(u64, Body)>,
}

impl ReportBuffer {
    pub fn new(limit: usize) -> Self {
        ReportBuffer { limit: limit.max(1), next_seq: 1, entries: VecDeque::new() }
    }

    /// Appends a report with the next sequence number. Returns (seq, how many old reports were
    /// dropped to stay within the limit).
    pub fn push(&mut self, body: Body) -> (u64, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back((seq, body));
        (seq, self.enforce_limit())
    }

    /// Removes every report with seq <= `seq`; returns how many.
    pub fn ack(&mut self, seq: u64) -> usize {
        let n = self.entries.partition_point(|(s, _)| *s <= seq);
        self.entries.drain(..n);
        n
    }

    /// Prepares the buffer for a new session: buffered snapshots and deltas are superseded by
    /// `snapshot`, which goes first; the other reports follow with new, higher sequence numbers.
    /// Renumbering keeps seq strictly increasing on the wire, so an `Ack` is always cumulative
    /// over exactly what was sent before it. Returns how many reports overflowed.
    pub fn start_session(&mut self, snapshot: Option<Body>) -> u64 {
        let kept: Vec<Body> = self.entries.drain(..).map(|(_, b)| b).filter(|b| !matches!(b, Body::Snapshot(_) | Body::Delta(_))).collect();
        if let Some(s) = snapshot {
            self.push(s);
        }
        let mut dropped = 0;
        for body in kept {
            dropped += self.push(body).1;
        }
        dropped
    }

    /// The first report with seq > `after`, as a wire message.
    pub fn next_after(&self, after: u64) -> Option<AgentMessage> {
        let i = self.entries.partition_point(|(s, _)| *s <= after);
        self.entries.get(i).map(|(seq, body)| AgentMessage { seq: *seq, body: Some(body.clone()) })
    }

    pub fn has_after(&self, after: u64) -> bool {
        self.entries.back().is_some_and(|(s, _)| *s > after)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest sequence number handed out so far (0 before the first report).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Drops the oldest reports beyond the limit, but never the session's snapshot: without it
    /// the service has no inventory, and there is at most one in the buffer.
    fn enforce_limit(&mut self) -> u64 {
        let mut dropped = 0;
        while self.entries.len() > self.limit {
            let victim = match self.entries.front() {
                Some((_, Body::Snapshot(_))) if self.entries.len() > 1 => 1,
                _ => 0,
            };
            self.entries.remove(victim);
            dropped += 1;
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshfleet_agent_protocol::v1::{Delta, Events, Metrics, Snapshot};

    fn metrics(start: i64) -> Body {
        Body::Metrics(Metrics { window_start_unix_ms: start, ..Default::default() })
    }

    fn seqs(b: &ReportBuffer) -> Vec<u64> {
        let mut out = Vec::new();
        let mut after = 0;
        while let Some(m) = b.next_after(after) {
            out.push(m.seq);
            after = m.seq;
        }
        out
    }

    #[test]
    fn ack_is_cumulative() {
        let mut b = ReportBuffer::new(10);
        for i in 0..5 {
            b.push(metrics(i));
        }
        assert_eq!(b.ack(3), 3);
        assert_eq!(seqs(&b), [4, 5]);
        assert_eq!(b.ack(2), 0, "an old ack changes nothing");
        assert_eq!(b.ack(99), 2);
        assert!(b.is_empty());
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_them() {
        let mut b = ReportBuffer::new(3);
        let dropped: u64 = (0..5).map(|i| b.push(metrics(i)).1).sum();
        assert_eq!(dropped, 2);
        assert_eq!(seqs(&b), [3, 4, 5]);
    }

    #[test]
    fn new_session_puts_fresh_snapshot_first_and_drops_superseded_inventory() {
        let mut b = ReportBuffer::new(10);
        b.push(Body::Snapshot(Snapshot::default()));
        b.push(metrics(1));
        b.push(Body::Delta(Delta::default()));
        b.push(Body::Events(Events::default()));
        assert_eq!(b.start_session(Some(Body::Snapshot(Snapshot::default()))), 0);
        let first = b.next_after(0).unwrap();
        assert_eq!(first.seq, 5);
        assert!(matches!(first.body, Some(Body::Snapshot(_))));
        let kinds: Vec<_> = seqs(&b).into_iter().map(|s| b.next_after(s - 1).unwrap().body.unwrap()).collect();
        assert!(matches!(kinds.as_slice(), [Body::Snapshot(_), Body::Metrics(_), Body::Events(_)]), "{kinds:?}");
        assert_eq!(seqs(&b), [5, 6, 7]);
    }

    #[test]
    fn overflow_keeps_the_session_snapshot() {
        let mut b = ReportBuffer::new(2);
        b.start_session(Some(Body::Snapshot(Snapshot::default())));
        b.push(metrics(1));
        assert_eq!(b.push(metrics(2)).1, 1);
        assert!(matches!(b.next_after(0).unwrap().body, Some(Body::Snapshot(_))));
        assert_eq!(seqs(&b), [1, 3]);
    }
}
