//! A Prometheus text endpoint (`GET /metrics`) on a local address. Small on
//! purpose: one request per connection, a bounded request head, no other
//! routes; Prometheus scrapes it every few seconds at most. Bounded too: at
//! most [`MAX_CONNECTIONS`] at once (more are closed at once) and each one
//! gets [`CONNECTION_DEADLINE`] for its request and the answer, so a client
//! that connects and says nothing costs one task for a few seconds.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longest request head read before answering.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 16;
/// How long one connection may take, request and answer together.
pub const CONNECTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `registry` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "metrics endpoint busy: connection closed");
                        drop(stream);
                        continue;
                    };
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        match tokio::time::timeout(CONNECTION_DEADLINE, answer(stream, &registry)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(%peer, cause = %e, "metrics request failed"),
                            Err(_) => tracing::debug!(%peer, "metrics request too slow: closed"),
                        }
                    });
                }
                Err(e) => tracing::warn!(cause = %e, "metrics endpoint cannot accept"),
            },
        }
    }
}

/// Binds the endpoint's address (port 0 picks a free one).
///
/// # Errors
/// If the address cannot be bound.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Binds `address` and serves `registry` there in a new task until
/// `shutdown` completes; returns the bound address (useful with port 0).
///
/// # Errors
/// If the address cannot be bound.
pub async fn spawn(
    address: SocketAddr,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, Arc::new(registry), shutdown));
    tracing::info!(address = %bound, "metrics endpoint listening");
    Ok(bound)
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint {address}: {source}")]
pub struct EndpointError {
    /// The configured address.
    pub address: SocketAddr,
    /// Why it could not be bound.
    pub source: std::io::Error,
}

/// Starts the endpoint of a daemon whose config enables it (`address`),
/// serving until `stop` is cancelled; returns the bound address.
///
/// # Errors
/// [`EndpointError`] if the address cannot be bound.
pub async fn start(
    address: Option<SocketAddr>,
    registry: Registry,
    stop: CancellationToken,
) -> Result<Option<SocketAddr>, EndpointError> {
    let Some(address) = address else {
        return Ok(None);
    };
    let shutdown = async move { stop.cancelled().await };
    spawn(address, registry, shutdown)
        .await
        .map(Some)
        .map_err(|source| EndpointError { address, source })
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ") {
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, registry) {
            Ok(()) => ("200 OK", text),
            Err(_) => (
                "500 Internal Server Error",
                String::from("encoding failed\n"),
            ),
        }
    } else {
        ("404 Not Found", String::from("try /metrics\n"))
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn serves_the_registry_as_prometheus_text() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("medgate_things", "Things seen", counter.clone());
        counter.inc_by(3);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(registry), async {
            let _ = stopped.await;
        }));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("medgate_things_total 3"), "{response}");
        stop.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_clients_are_bounded_in_number_and_time() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(Registry::default()), async {
            let _ = stopped.await;
        }));
        // Connections that never send a request fill every slot...
        let mut silent = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // ...so one more is closed at once, its request unanswered.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
        let mut got = Vec::new();
        let _ = extra.read_to_end(&mut got).await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        // After the deadline the silent ones are closed and a scrape works.
        tokio::time::sleep(CONNECTION_DEADLINE + std::time::Duration::from_millis(10)).await;
        for mut stream in silent {
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "closed without an answer");
        }
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        stop.send(()).unwrap();
        server.await.unwrap();
    }
}
