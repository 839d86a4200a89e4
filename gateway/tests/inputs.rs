//! Inputs that must never stop the gateway, against a real mosquitto with
//! mutual TLS: a decompression bomb and an image the broker link cannot
//! carry are refused at capture (moved to `rejected/` with the reason,
//! counted, never spooled) while the images around them flow on, and a
//! broker that advertises a smaller packet limit than the gateway's own
//! keeps its connection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

mod support;

use medgate_testkit::mosquitto::BrokerOptions;
use support::{
    WAIT, World, answer, bomb_png, counter, eventually, files_in, metrics_text, noise_png,
};

const IMAGES: &str = "medgate/v1/site-a/gw-1/images/";

fn reason(world: &World, name: &str) -> String {
    std::fs::read_to_string(
        world
            .inbox
            .join("rejected")
            .join(format!("{name}.reason.txt")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_refused_before_decoding_and_the_next_image_flows() {
    let world = World::new(256 << 20, 60);
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_in_process();
    let started = gateway.started().await;

    let bomb = bomb_png(8192);
    assert!(bomb.len() < 128 << 10, "a small file: {} bytes", bomb.len());
    world.drop_file("bomb.png", &bomb);
    let rejected = world.inbox.join("rejected");
    eventually("the bomb refused", || {
        files_in(&rejected, ".reason.txt").len() == 1
    })
    .await;
    let why = reason(&world, "bomb.png");
    assert!(
        why.contains("8192x8192") && why.contains("67108864") && why.contains("max_decoded_bytes"),
        "{why}"
    );
    assert_eq!(files_in(&rejected, ".png"), ["bomb.png"]);

    // The gateway goes on: the next image is sealed, published, answered.
    world.drop_image("after.png", 3, 64);
    let images = receiver.expect(IMAGES, 1, WAIT).await.unwrap();
    let mut opener = world.opener();
    answer(&receiver, &mut opener, &images[0].payload).await;
    let done = world.done();
    eventually("its result", || files_in(&done, ".result.json").len() == 1).await;

    let metrics = metrics_text(started.metrics.unwrap()).await;
    assert_eq!(
        counter(
            &metrics,
            "medgate_gateway_rejected_files_total{reason=\"decoded_too_large\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "medgate_gateway_sealed_total"), 1.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_broker_cannot_carry_is_refused_at_capture_and_the_link_stays_up() {
    // The broker takes 1 MiB packets; the gateway's own limit is the
    // default 16 MiB, so only the broker's CONNACK tells it.
    let options = BrokerOptions {
        max_packet_bytes: 1 << 20,
        ..BrokerOptions::default()
    };
    let world = World::with_broker(&options, 256 << 20, 60, |config| {
        config.preprocess.bit_depth = 16;
    });
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_in_process();
    let started = gateway.started().await;
    let address = started.metrics.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter(&metrics_text(address).await, "medgate_gateway_connected") != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::task::yield_now().await;
    }

    // 1024 x 1024 at 16 bits: 2 MiB of pixels, twice what the broker takes.
    world.drop_file("large.png", &noise_png(1024, 1024));
    world.drop_image("small.png", 5, 64);
    let rejected = world.inbox.join("rejected");
    eventually("the large image refused", || {
        files_in(&rejected, ".reason.txt").len() == 1
    })
    .await;
    let why = reason(&world, "large.png");
    assert!(
        why.contains("1024x1024 at 16 bits") && why.contains("1048576-byte packet"),
        "{why}"
    );

    let images = receiver.expect(IMAGES, 1, WAIT).await.unwrap();
    let mut opener = world.opener();
    answer(&receiver, &mut opener, &images[0].payload).await;
    let done = world.done();
    eventually("the small image's result", || {
        files_in(&done, ".result.json").len() == 1
    })
    .await;

    let metrics = metrics_text(address).await;
    assert_eq!(
        counter(
            &metrics,
            "medgate_gateway_rejected_files_total{reason=\"too_large_for_link\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "medgate_gateway_sealed_total"), 1.0);
    // Never a dropped connection: nothing too large was ever sent.
    assert!(
        !metrics.contains("medgate_gateway_errors_total{kind=\"connection\"}"),
        "{metrics}"
    );
    assert_eq!(
        files_in(&world.dir.path().join("spool"), ".mgsi"),
        Vec::<String>::new()
    );
    gateway.stop().await;
}
