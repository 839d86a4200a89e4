//! The link: owns the rumqttc event loop and only polls it, forwarding what
//! the core needs (connection up or down, publications sent and
//! acknowledged, results) as [`Event`]s. Polling again after an error is
//! how rumqttc reconnects; the link waits with a growing backoff in between.
//! The backoff starts again from its first pause only after a connection
//! has stayed up for [`STABLE`]: a connection the broker accepts and then
//! drops at once (a refused packet, an ACL that kicks the client) backs
//! off to the longest pause instead of reconnecting ten times a second.

use std::time::Duration;

use medgate_daemon::mqtt::Backoff;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Event as MqttEvent, EventLoop};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::messages::Event;
use crate::metrics::Metrics;

/// How long a connection must last before a failure counts as a new one.
pub const STABLE: Duration = Duration::from_secs(30);

/// Polls the event loop until `stop`, forwarding events to the core.
pub async fn link(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
    metrics: Metrics,
) {
    let mut backoff = Backoff::new();
    let mut up_since: Option<Instant> = None;
    loop {
        let polled = tokio::select! {
            polled = eventloop.poll() => polled,
            () = stop.cancelled() => return,
        };
        let event = match polled {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                up_since = Some(Instant::now());
                Event::Connected {
                    session_present: ack.session_present,
                    max_packet_bytes: ack.properties.and_then(|p| p.max_packet_size),
                }
            }
            Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => Event::Acked {
                pkid: ack.pkid,
                reason: ack.reason,
            },
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => Event::Result {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
            },
            Ok(MqttEvent::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(reason = ?d.reason_code, "the broker closed the connection");
                Event::Disconnected
            }
            Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => Event::Sent(pkid),
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                connection_failed(&mut backoff, up_since.take());
                metrics.error("connection");
                tracing::warn!(cause = %e, retry_in_ms = backoff.delay().as_millis() as u64, "broker connection failed");
                let _ = events.send(Event::Disconnected).await;
                if !backoff.wait(&stop).await {
                    return;
                }
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// A failure after a connection that came up at `up_since` (if it did):
/// the back-off starts again only when that connection was stable.
fn connection_failed(backoff: &mut Backoff, up_since: Option<Instant>) {
    if up_since.is_some_and(|at| at.elapsed() >= STABLE) {
        backoff.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_dropped_at_once_backs_off_further_and_a_stable_one_starts_again() {
        let stop = CancellationToken::new();
        let mut backoff = Backoff::new();
        // Accepted, then dropped within a second, five times over.
        for _ in 0..5 {
            let up = Instant::now();
            tokio::time::advance(Duration::from_secs(1)).await;
            connection_failed(&mut backoff, Some(up));
            assert!(backoff.wait(&stop).await);
        }
        assert_eq!(backoff.delay(), Backoff::FIRST * 32, "growing, not reset");
        // Up for longer than STABLE: the next failure waits the first pause.
        let up = Instant::now();
        tokio::time::advance(STABLE).await;
        connection_failed(&mut backoff, Some(up));
        assert_eq!(backoff.delay(), Backoff::FIRST);
        // A failure before any connection keeps growing.
        assert!(backoff.wait(&stop).await);
        connection_failed(&mut backoff, None);
        assert_eq!(backoff.delay(), Backoff::FIRST * 2);
    }
}
