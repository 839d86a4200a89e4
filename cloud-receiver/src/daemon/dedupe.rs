//! De-duplication by message id. A gateway re-publishes an image (same
//! message id) when its result is late, and a broker may deliver a message
//! twice: the receiver classifies each id once and answers repeats with the
//! result it already gave.
//!
//! An id is *in flight* from its first arrival until its result is
//! published; copies arriving meanwhile wait on it (their acknowledgement is
//! sent when the first copy's result is out), so a copy is never classified
//! twice nor mistaken for a replay.

use std::collections::{HashMap, VecDeque};

use medgate_shared::ids::MessageId;

/// What to do with an arriving message id.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin<R> {
    /// First sighting: classify it.
    New,
    /// Being classified now; the caller's waiter was queued on it.
    InFlight,
    /// Answered before: here is the result.
    Done(R),
}

#[derive(Debug)]
enum Entry<R, W> {
    InFlight(Vec<W>),
    Done(R),
}

/// Recent message ids with their results (`R`) or waiting copies (`W`).
/// Holds at most `capacity` answered ids; the oldest answers go first.
#[derive(Debug)]
pub struct Dedupe<R, W> {
    entries: HashMap<MessageId, Entry<R, W>>,
    answered: VecDeque<MessageId>,
    capacity: usize,
}

impl<R: Clone, W> Dedupe<R, W> {
    /// A cache of up to `capacity` answered ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            answered: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Registers an arrival. For an id in flight, `waiter` is queued and
    /// handed back later by [`finish`](Self::finish) or
    /// [`abandon`](Self::abandon); otherwise it comes straight back in the
    /// second element for the caller to handle.
    pub fn begin(&mut self, id: MessageId, waiter: W) -> (Begin<R>, Option<W>) {
        match self.entries.get_mut(&id) {
            None => {
                self.entries.insert(id, Entry::InFlight(Vec::new()));
                (Begin::New, Some(waiter))
            }
            Some(Entry::InFlight(waiters)) => {
                waiters.push(waiter);
                (Begin::InFlight, None)
            }
            Some(Entry::Done(result)) => (Begin::Done(result.clone()), Some(waiter)),
        }
    }

    /// Records the result of an id in flight; returns the copies that waited.
    pub fn finish(&mut self, id: MessageId, result: R) -> Vec<W> {
        let waiters = match self.entries.insert(id, Entry::Done(result)) {
            Some(Entry::InFlight(waiters)) => waiters,
            _ => Vec::new(),
        };
        self.answered.push_back(id);
        while self.answered.len() > self.capacity {
            if let Some(old) = self.answered.pop_front() {
                self.entries.remove(&old);
            }
        }
        waiters
    }

    /// Forgets an id in flight that could not be answered (so a later copy
    /// is classified afresh); returns the copies that waited.
    pub fn abandon(&mut self, id: MessageId) -> Vec<W> {
        match self.entries.remove(&id) {
            Some(Entry::InFlight(waiters)) => waiters,
            Some(done @ Entry::Done(_)) => {
                self.entries.insert(id, done);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Whether `id` is in flight or answered.
    pub fn knows(&self, id: &MessageId) -> bool {
        self.entries.contains_key(id)
    }

    /// Ids in flight now.
    pub fn in_flight(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e, Entry::InFlight(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    #[test]
    fn first_copy_is_new_later_copies_wait_then_get_the_answer() {
        let mut d: Dedupe<&str, u32> = Dedupe::new(10);
        assert_eq!(d.begin(id(1), 100), (Begin::New, Some(100)));
        assert_eq!(d.begin(id(1), 101), (Begin::InFlight, None));
        assert_eq!(d.begin(id(1), 102), (Begin::InFlight, None));
        assert_eq!(d.in_flight(), 1);
        assert_eq!(d.finish(id(1), "pneumonia"), vec![101, 102]);
        assert_eq!(d.begin(id(1), 103), (Begin::Done("pneumonia"), Some(103)));
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn abandoned_ids_start_over_and_answers_are_bounded() {
        let mut d: Dedupe<u8, u8> = Dedupe::new(2);
        d.begin(id(1), 0);
        d.begin(id(1), 1);
        assert_eq!(d.abandon(id(1)), vec![1]);
        assert_eq!(d.begin(id(1), 2).0, Begin::New);
        for n in 1..=3 {
            d.begin(id(n), 0);
            d.finish(id(n), n);
        }
        assert_eq!(d.begin(id(1), 0).0, Begin::New, "oldest answer evicted");
        assert_eq!(d.begin(id(3), 0).0, Begin::Done(3));
    }
}
