//! A network link a test can cut: a TCP relay on a free port of 127.0.0.1
//! that forwards every connection to one upstream address, byte for byte
//! (TLS passes through untouched). [`Link::cut`] closes every connection
//! and refuses new ones, as a failed WAN link or firewall would, until
//! [`Link::restore`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A relay to one upstream address; stops accepting when dropped.
pub struct Link {
    address: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    cut: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every live connection, by its number, to close them
    /// on a cut; a connection leaves when its relay ends.
    live: Mutex<HashMap<u64, [TcpStream; 2]>>,
    /// Connections relayed so far.
    accepted: AtomicU64,
}

impl Shared {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, [TcpStream; 2]>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Link {
    /// Listens on a free port of 127.0.0.1 and relays to `upstream`.
    ///
    /// # Errors
    /// If no socket can be bound.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            accepted: AtomicU64::new(0),
        });
        let relay = shared.clone();
        std::thread::Builder::new()
            .name("link-accept".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if relay.stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if relay.cut.load(Ordering::SeqCst) {
                        // Cut: the connection is closed at once.
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let number = relay.accepted.fetch_add(1, Ordering::SeqCst);
                    if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                        relay.live().insert(number, [c, s]);
                    }
                    pump(&client, &server, number, &relay);
                    pump(&server, &client, number, &relay);
                }
            })?;
        Ok(Self { address, shared })
    }

    /// Where clients connect instead of the upstream address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections relayed so far (a reconnection after a cut counts anew).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Closes every live connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for stream in self.shared.live().drain().flat_map(|(_, ends)| ends) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts and relays connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(self.address);
    }
}

/// Copies `from` to `to` on a thread until either side closes, then
/// closes both and forgets connection `number`.
fn pump(from: &TcpStream, to: &TcpStream, number: u64, shared: &Arc<Shared>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let shared = shared.clone();
    let _ = std::thread::Builder::new()
        .name("link-pump".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            shared.live().remove(&number);
        });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_closed_connection_leaves_the_live_list() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let link = Link::start(upstream.local_addr().unwrap()).unwrap();
        for round in 1..=3u64 {
            let mut client = TcpStream::connect(link.address()).unwrap();
            let (mut server, _) = upstream.accept().unwrap();
            client.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).unwrap();
            assert_eq!(&byte, b"x");
            assert_eq!(link.connections(), round);
            drop(client);
            // The relay closes the upstream end once the client has gone.
            assert_eq!(server.read(&mut byte).unwrap(), 0);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !link.shared.live().is_empty() {
                assert!(Instant::now() < deadline, "connection {round} still listed");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
