//! The link: owns the rumqttc event loop and only polls it, forwarding what
//! the core needs (connection up or down, publications sent and
//! acknowledged, results) as [`Event`]s. Polling again after an error is
//! how rumqttc reconnects; the link waits with a growing backoff in between.

use medgate_daemon::mqtt::Backoff;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Event as MqttEvent, EventLoop};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::messages::Event;
use crate::metrics::Metrics;

/// Polls the event loop until `stop`, forwarding events to the core.
pub async fn link(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
    metrics: Metrics,
) {
    let mut backoff = Backoff::new();
    loop {
        let polled = tokio::select! {
            polled = eventloop.poll() => polled,
            () = stop.cancelled() => return,
        };
        let event = match polled {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                Event::Connected {
                    session_present: ack.session_present,
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
