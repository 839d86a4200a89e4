//! Simulated SPI sensors → gateway (embedded-hal driver over the virtual
//! bus) → a real mosquitto with mutual TLS → a stand-in receiver, and the
//! results back into each sensor's RESULT register.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

#[path = "../../gateway/tests/support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use medgate_gateway::config::SpiSensorSection;
use medgate_shared::envelope;
use medgate_sim::sensor::{Feed, Sensor};
use support::{WAIT, World, answer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_images_reach_the_broker_sealed_and_results_reach_the_right_sensor() {
    let sockets = tempfile::tempdir().unwrap();
    let period = Duration::from_millis(20);
    let mut sensors = HashMap::new();
    let mut sections = Vec::new();
    for name in ["xr-1", "xr-2"] {
        let socket = sockets.path().join(format!("{name}.sock"));
        let sensor = Sensor::start(name, &socket, Feed::generated(64, 4), period).unwrap();
        // Never re-read on a timer within the test: each frame's edge
        // must wake the gateway (as must each verdict, in the tests below).
        sections.push(SpiSensorSection {
            poll_ms: 60_000,
            ..SpiSensorSection::new(name, &format!("unix:{}", socket.display()))
        });
        sensors.insert(name.to_owned(), sensor);
    }
    let world = World::with(64 << 20, 60, |config| config.spi_sensor = sections);
    let mut receiver = world.receiver().await;
    let mut opener = world.opener();
    let mut gateway = world.start_in_process();
    gateway.started().await;

    // Answer the first three images of each sensor.
    let mut answered: HashMap<String, BTreeSet<u64>> = HashMap::new();
    while answered.values().map(BTreeSet::len).sum::<usize>() < 6 {
        let images = receiver
            .expect("medgate/v1/site-a/gw-1/images/", 1, WAIT)
            .await
            .unwrap();
        let image = &images[0];
        assert_eq!(&image.payload[..4], b"MGSI", "sealed on the wire");
        let header = envelope::parse(&image.payload).unwrap().header;
        let device = header.meta.device.to_string();
        assert!(
            image.topic.ends_with(&device),
            "published under its own device"
        );
        assert_eq!((header.width, header.height), (64, 64));
        let taken = answered.entry(device.clone()).or_default();
        if taken.len() < 3 {
            answer(&receiver, &mut opener, &image.payload).await;
            taken.insert(header.meta.sequence);
        }
    }

    for (name, sequences) in &answered {
        let sensor = sensors[name].clone();
        let results = tokio::task::spawn_blocking(move || sensor.wait_for_results(3, WAIT))
            .await
            .unwrap();
        assert_eq!(results.len(), 3, "{name}: {results:?}");
        // The gateway numbers a device's images from 0 in frame order, and
        // the sensor's frames count from 1: each result names its frame.
        let frames: BTreeSet<u32> = results.iter().map(|r| r.frame).collect();
        let expected: BTreeSet<u32> = sequences.iter().map(|s| *s as u32 + 1).collect();
        assert_eq!(frames, expected, "{name}");
        for r in &results {
            assert_eq!(
                (r.class, r.confidence),
                (0, 9000),
                "normal at 0.9, as answered"
            );
        }
        assert!(sensors[name].log().released >= 3);
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_for_a_frame_from_before_a_sensor_restart_is_never_written_into_a_new_frame() {
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("xr-1.sock");
    // One frame per power-up, so that each boot has a frame 1.
    let sensor = Sensor::start_limited(
        "xr-1",
        &socket,
        Feed::generated(64, 4),
        Duration::from_millis(20),
        Some(1),
    )
    .unwrap();
    let section = SpiSensorSection {
        poll_ms: 60_000,
        ..SpiSensorSection::new("xr-1", &format!("unix:{}", socket.display()))
    };
    let world = World::with(64 << 20, 60, |config| config.spi_sensor = vec![section]);
    let mut receiver = world.receiver().await;
    let mut opener = world.opener();
    let mut gateway = world.start_in_process();
    gateway.started().await;

    // Frame 1 of the first boot is spooled and published, not answered.
    let before = receiver
        .expect("medgate/v1/site-a/gw-1/images/", 1, WAIT)
        .await
        .unwrap();
    let log = sensor.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + WAIT;
        while log.log().released < 1 {
            assert!(std::time::Instant::now() < deadline, "frame 1 released");
            std::thread::yield_now();
        }
    })
    .await
    .unwrap();
    // The sensor restarts: its next frame is frame 1 again, another frame.
    sensor.power_cycle();
    let after = receiver
        .expect("medgate/v1/site-a/gw-1/images/", 1, WAIT)
        .await
        .unwrap();
    let old = envelope::parse(&before[0].payload).unwrap().header.meta;
    let new = envelope::parse(&after[0].payload).unwrap().header.meta;
    assert_ne!(old.message_id, new.message_id, "the new frame is spooled");

    // The old frame's result arrives: kept in a file, not written.
    let (old_id, _, _) = answer(&receiver, &mut opener, &before[0].payload).await;
    let orphaned = world
        .dir
        .path()
        .join("state/frames/xr-1/orphaned")
        .join(format!("{old_id}.json"));
    support::eventually("the old verdict kept", || orphaned.exists()).await;
    assert_eq!(
        sensor.log().results,
        [],
        "nothing written into the new frame 1"
    );

    // The new frame's own result is written into it.
    answer(&receiver, &mut opener, &after[0].payload).await;
    let probe = sensor.clone();
    let results = tokio::task::spawn_blocking(move || probe.wait_for_results(1, WAIT))
        .await
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].frame, 1);
    assert_eq!(sensor.log().boots, 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_sensor_with_pending_results_stops_no_other_device_and_gets_them_back() {
    let sockets = tempfile::tempdir().unwrap();
    // More frames than the gateway queues for one device (64).
    const PENDING: usize = 70;
    let start = |name: &str, frames: u32, period_ms: u64| {
        let socket = sockets.path().join(format!("{name}.sock"));
        let sensor = Sensor::start_limited(
            name,
            &socket,
            Feed::generated(32, 4),
            Duration::from_millis(period_ms),
            Some(frames),
        )
        .unwrap();
        let section = SpiSensorSection {
            poll_ms: 60_000,
            ..SpiSensorSection::new(name, &format!("unix:{}", socket.display()))
        };
        (sensor, section)
    };
    let (xr1, one) = start("xr-1", PENDING as u32, 2);
    let (xr2, two) = start("xr-2", 10_000, 50);
    let world = World::with(64 << 20, 60, |config| config.spi_sensor = vec![one, two]);
    let mut receiver = world.receiver().await;
    let mut opener = world.opener();
    let mut gateway = world.start_in_process();
    gateway.started().await;

    let mut pending = Vec::new();
    while pending.len() < PENDING {
        let got = receiver
            .expect("medgate/v1/site-a/gw-1/images/xr-1", 1, WAIT)
            .await
            .unwrap();
        pending.push(got[0].payload.clone());
    }
    // xr-1 is pulled off its bus; then every one of its results arrives.
    xr1.plug(false);
    for payload in &pending {
        answer(&receiver, &mut opener, payload).await;
    }
    // xr-2 still flows: three new images answered reach its register.
    let mut answered = 0;
    while answered < 3 {
        let got = receiver
            .expect("medgate/v1/site-a/gw-1/images/", 1, WAIT)
            .await
            .unwrap();
        if got[0].topic.ends_with("xr-2") {
            answer(&receiver, &mut opener, &got[0].payload).await;
            answered += 1;
        }
    }
    let probe = xr2.clone();
    let results = tokio::task::spawn_blocking(move || probe.wait_for_results(3, WAIT))
        .await
        .unwrap();
    assert!(results.len() >= 3, "xr-2 got {} results", results.len());
    assert!(
        xr1.log().results.is_empty(),
        "nothing reached the unplugged xr-1"
    );

    // Plugged back: every pending result reaches xr-1, each frame once.
    xr1.plug(true);
    let probe = xr1.clone();
    let results = tokio::task::spawn_blocking(move || probe.wait_for_results(PENDING, WAIT))
        .await
        .unwrap();
    let frames: BTreeSet<u32> = results.iter().map(|r| r.frame).collect();
    assert_eq!(frames.len(), PENDING, "{} results", results.len());
    gateway.stop().await;
}
