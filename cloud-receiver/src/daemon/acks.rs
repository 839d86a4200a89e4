//! Acknowledgements in the order the broker delivered the images.
//!
//! MQTT (3.1.1 and 5, section 4.6) has a client acknowledge QoS 1 messages
//! in the order it received them, and some brokers (rumqttd) close a
//! connection that does not. Images finish in any order (batches, de-dupe,
//! refusals), so each gets a [`Ticket`] in arrival order; one task sends
//! the acknowledgements of finished tickets in ticket order. A ticket
//! dropped without [`Ticket::ack`] (an image left with the broker for
//! another try) lets later ones go by without an acknowledgement of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::mpsc;

/// Hands out tickets in arrival order.
pub struct Acks {
    next: AtomicU64,
    finished: mpsc::UnboundedSender<(u64, Option<Publish>)>,
}

/// One received image's place in the acknowledgement order.
pub struct Ticket {
    number: u64,
    done: AtomicBool,
    finished: mpsc::UnboundedSender<(u64, Option<Publish>)>,
}

impl Acks {
    /// Starts the task that acknowledges through `client`; it ends when
    /// every [`Acks`] and [`Ticket`] is gone.
    pub fn spawn(client: AsyncClient) -> Self {
        let (finished, inbox) = mpsc::unbounded_channel();
        tokio::spawn(acknowledge_in_order(client, inbox));
        Self {
            next: AtomicU64::new(0),
            finished,
        }
    }

    /// The next ticket; take it where messages arrive, in their order.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            number: self.next.fetch_add(1, Ordering::SeqCst),
            done: AtomicBool::new(false),
            finished: self.finished.clone(),
        }
    }
}

impl Ticket {
    /// Acknowledges `publish` once every earlier ticket is finished.
    pub fn ack(&self, publish: &Publish) {
        if !self.done.swap(true, Ordering::SeqCst) {
            let _ = self.finished.send((self.number, Some(publish.clone())));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done.swap(true, Ordering::SeqCst) {
            let _ = self.finished.send((self.number, None));
        }
    }
}

/// Finished tickets waiting for earlier ones.
struct InOrder<T> {
    head: u64,
    waiting: BTreeMap<u64, Option<T>>,
}

impl<T> InOrder<T> {
    fn new() -> Self {
        Self {
            head: 0,
            waiting: BTreeMap::new(),
        }
    }

    /// Records ticket `number` as finished (`None`: without an
    /// acknowledgement) and returns what may be acknowledged now, in order.
    fn finish(&mut self, number: u64, item: Option<T>) -> Vec<T> {
        self.waiting.insert(number, item);
        let mut ready = Vec::new();
        while let Some(item) = self.waiting.remove(&self.head) {
            self.head += 1;
            ready.extend(item);
        }
        ready
    }
}

async fn acknowledge_in_order(
    client: AsyncClient,
    mut inbox: mpsc::UnboundedReceiver<(u64, Option<Publish>)>,
) {
    let mut order = InOrder::new();
    while let Some((number, publish)) = inbox.recv().await {
        for publish in order.finish(number, publish) {
            if let Err(e) = client.ack(&publish).await {
                tracing::warn!(cause = %e, "acknowledgement not sent; the broker will send the image again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_leave_in_arrival_order_and_skipped_ones_do_not_block() {
        let mut order = InOrder::new();
        assert_eq!(order.finish(3, Some(13)), Vec::<u16>::new());
        assert_eq!(order.finish(1, Some(11)), Vec::<u16>::new());
        // 2 is left with the broker.
        assert_eq!(order.finish(2, None), Vec::<u16>::new());
        assert_eq!(order.finish(0, Some(10)), vec![10, 11, 13]);
        assert_eq!(order.finish(4, Some(14)), vec![14]);
        assert_eq!(order.finish(6, Some(16)), Vec::<u16>::new());
        assert_eq!(order.finish(5, None), vec![16]);
        assert!(order.waiting.is_empty());
    }
}
