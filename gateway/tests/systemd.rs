//! The gateway as systemd runs it: `Type=notify` messages on
//! `NOTIFY_SOCKET` (READY, WATCHDOG while alive, STOPPING on SIGTERM) and a
//! clean exit on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::World;

const GATEWAY: &str = env!("CARGO_BIN_EXE_medgate-gateway");

fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification before the deadline");
    String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
}

#[test]
fn tells_systemd_ready_feeds_the_watchdog_and_stops_cleanly_on_sigterm() {
    let world = World::new(64 << 20, 60);
    let notify_path = world.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut gateway = Command::new(Path::new(GATEWAY))
        .args(["run", "--config", world.config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // READY comes first, once the spool is open and the sources run.
    assert_eq!(next_message(&socket), "READY=1");
    // Then watchdog pings at half the 200 ms interval.
    for _ in 0..3 {
        assert_eq!(next_message(&socket), "WATCHDOG=1");
    }
    let killed = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut stopping = false;
    while !stopping {
        stopping = next_message(&socket) == "STOPPING=1";
    }
    let status = gateway.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
