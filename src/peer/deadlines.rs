//! Timers for every socket in one task: the grace period of unauthenticated sockets and the
//! expiry of tokens. One ordered map and one task that sleeps until the earliest deadline,
//! instead of a sleeping task per socket, which would cost a task's memory for every connection.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::PeerId as Sid;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The socket must have authenticated by now.
    AuthGrace,
    /// The socket's token expires now unless it was refreshed.
    TokenExpiry,
}

/// Deadlines keyed by `(when, sequence)`: the sequence keeps entries for one instant apart.
type Queue = BTreeMap<(Instant, u64), (Sid, Deadline)>;

/// Pending deadlines, ordered by time.
#[derive(Default)]
pub struct Deadlines {
    /// The queue and the last sequence number handed out.
    queue: Mutex<(Queue, u64)>,
    /// Woken when a deadline earlier than all others is scheduled.
    earlier: tokio::sync::Notify,
}

impl Deadlines {
    /// Schedules `what` for socket `sid` at `when`.
    pub fn schedule(&self, when: Instant, sid: Sid, what: Deadline) {
        let mut q = self.queue.lock();
        q.1 += 1;
        let seq = q.1;
        let first = q.0.first_key_value().is_none_or(|(&(at, _), _)| when < at);
        q.0.insert((when, seq), (sid, what));
        drop(q);
        if first {
            self.earlier.notify_one();
        }
    }

    /// Waits until a deadline is due (or an earlier one is scheduled), then returns the due
    /// ones (possibly none).
    pub async fn next_due(&self) -> Vec<(Sid, Deadline)> {
        let next = {
            let q = self.queue.lock();
            q.0.first_key_value().map(|(&(at, _), _)| at)
        };
        // A day stands for "nothing scheduled"; a schedule wakes the wait.
        let next = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = self.earlier.notified() => {}
        }
        self.take_due(Instant::now())
    }

    /// Removes and returns every deadline due at `now`.
    pub fn take_due(&self, now: Instant) -> Vec<(Sid, Deadline)> {
        let mut q = self.queue.lock();
        let later = q.0.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut q.0, later);
        due.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_order() {
        let d = Deadlines::default();
        let now = Instant::now();
        let (a, b): (Sid, Sid) = (1, 2);
        d.schedule(now + Duration::from_secs(5), a, Deadline::TokenExpiry);
        d.schedule(now, b, Deadline::AuthGrace);
        d.schedule(now, a, Deadline::AuthGrace);
        assert_eq!(
            d.take_due(now),
            vec![(b, Deadline::AuthGrace), (a, Deadline::AuthGrace)]
        );
        assert!(d.take_due(now).is_empty());
        assert_eq!(
            d.take_due(now + Duration::from_secs(6)),
            vec![(a, Deadline::TokenExpiry)]
        );
    }
}
