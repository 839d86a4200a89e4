//! Inputs that must never stop the gateway, against a real mosquitto with
//! mutual TLS: a decompression bomb and an image the broker link cannot
//! carry are refused at capture (moved to `rejected/` with the reason,
//! counted, never spooled) while the images around them flow on, and a
//! broker that advertises a smaller packet limit than the gateway's own
//! keeps its connection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

mod support;

use medgate_shared::envelope;
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

/// The gauge of captured files stuck in the folder.
async fn stuck(address: std::net::SocketAddr) -> f64 {
    counter(
        &metrics_text(address).await,
        "medgate_gateway_hot_folder_stuck_files{device=\"scanner-1\"}",
    )
}

async fn sealed(address: std::net::SocketAddr) -> f64 {
    counter(&metrics_text(address).await, "medgate_gateway_sealed_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_leave_the_folder_is_captured_once_even_across_a_restart() {
    let world = World::new(64 << 20, 60);
    // done/ cannot take files: it is a plain file (permissions would not
    // stop a gateway running as root).
    std::fs::write(world.done(), b"not a folder").unwrap();
    let mut receiver = world.receiver().await;
    let settings = medgate_testkit::client::settings(&world.pki, &world.broker, "it-1").unwrap();
    let mut status = medgate_testkit::client::TestClient::connect(
        &settings,
        "it-1",
        &["medgate/v1/site-a/gw-1/status".to_owned()],
        WAIT,
    )
    .await
    .unwrap();
    let mut gateway = world.start_in_process();
    let address = gateway.started().await.metrics.unwrap();

    world.drop_image("a.png", 3, 64);
    let first = receiver.expect(IMAGES, 1, WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while stuck(address).await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "never reported");
        tokio::task::yield_now().await;
    }
    // b.png is captured by a scan that lists a.png again (oldest first).
    world.drop_image("b.png", 4, 64);
    let second = receiver.expect(IMAGES, 1, WAIT).await.unwrap();
    assert_ne!(first[0].payload, second[0].payload);
    while stuck(address).await != 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "b.png not reported");
        tokio::task::yield_now().await;
    }
    assert_eq!(sealed(address).await, 2.0, "each file captured once");
    // The retained status names the broken folder.
    loop {
        let got = status
            .expect("medgate/v1/site-a/gw-1/status", 1, WAIT)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&got[0].payload).into_owned();
        if text.contains("\"problems\"") && text.contains("cannot be moved to") {
            assert!(text.contains("scanner-1"), "{text}");
            break;
        }
    }
    gateway.stop().await;

    // A restart captures neither again; a new file still flows.
    let mut gateway = world.start_in_process();
    let address = gateway.started().await.metrics.unwrap();
    world.drop_image("c.png", 5, 64);
    let opener = world.opener();
    let (a_id, b_id) = (
        world
            .opener()
            .open(&first[0].payload)
            .unwrap()
            .header
            .meta
            .message_id,
        world
            .opener()
            .open(&second[0].payload)
            .unwrap()
            .header
            .meta
            .message_id,
    );
    loop {
        let got = receiver.expect(IMAGES, 1, WAIT).await.unwrap();
        let id = opener.open(&got[0].payload).unwrap().header.meta.message_id;
        // a and b come again from the spool, under their own ids.
        if id != a_id && id != b_id {
            break;
        }
    }
    assert_eq!(
        sealed(address).await,
        1.0,
        "only c.png sealed after the restart"
    );
    // c.png cannot leave either.
    let deadline = tokio::time::Instant::now() + WAIT;
    while stuck(address).await != 3.0 {
        assert!(tokio::time::Instant::now() < deadline, "c.png not reported");
        tokio::task::yield_now().await;
    }

    // The folder is repaired: the files move, a and b under their first ids.
    std::fs::remove_file(world.done()).unwrap();
    std::fs::create_dir(world.done()).unwrap();
    let done = world.done();
    eventually("a.png and b.png moved", || {
        files_in(&done, ".png").len() >= 2
    })
    .await;
    let moved = files_in(&done, ".png");
    for id in [a_id, b_id] {
        assert!(
            moved.iter().any(|n| n.starts_with(&id.to_string())),
            "{moved:?}"
        );
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while stuck(address).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still reported broken"
        );
        tokio::task::yield_now().await;
    }
    gateway.stop().await;
}

/// A tmpfs of `bytes` mounted at a folder while it lives. Mounting needs
/// root, as these tests (and CI) run.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_captures_at_their_source_and_recovers_by_itself() {
    // The spool's own bound (64 MiB) is far above the 1 MiB disk under it.
    let world = World::new(64 << 20, 60);
    let _disk = Tmpfs::mount(&world.dir.path().join("spool"), 1 << 20);
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_in_process();
    let address = gateway.started().await.metrics.unwrap();
    // 24 images of 64 KiB: the disk holds about 15.
    const COUNT: usize = 24;
    for i in 0..COUNT {
        world.drop_image(&format!("d-{i:02}.png"), i as u8 + 1, 256);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter(
        &metrics_text(address).await,
        "medgate_gateway_refused_disk_full_total",
    ) < 1.0
    {
        assert!(tokio::time::Instant::now() < deadline, "no refusal counted");
        tokio::task::yield_now().await;
    }
    assert!(
        !files_in(&world.inbox, ".png").is_empty(),
        "refused files wait in the folder"
    );
    // Answering frees the disk; the waiting files are captured by
    // themselves and every image gets its result.
    let mut opener = world.opener();
    let done = world.done();
    while files_in(&done, ".result.json").len() < COUNT {
        if let Ok(images) = receiver
            .expect(IMAGES, 1, std::time::Duration::from_millis(200))
            .await
        {
            answer(&receiver, &mut opener, &images[0].payload).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline + WAIT,
            "{} results",
            files_in(&done, ".result.json").len()
        );
    }
    assert_eq!(files_in(&done, ".png").len(), COUNT);
    assert!(files_in(&world.inbox, ".png").is_empty());
    let metrics = metrics_text(address).await;
    assert_eq!(
        counter(&metrics, "medgate_gateway_sealed_total"),
        COUNT as f64,
        "each image sealed once"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_configured_with_a_body_part_seals_it_in_the_header() {
    let world = World::with(64 << 20, 60, |config| {
        config.hot_folder[0].body_part = Some("chest".into());
        config.hot_folder[0].view_position = Some("PA".into());
    });
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_in_process();
    gateway.started().await;
    world.drop_file("a.png", &noise_png(16, 16));
    let images = receiver.expect(IMAGES, 1, WAIT).await.unwrap();
    let payload = &images[0].payload;
    assert_eq!(payload[4], envelope::VERSION, "the current format");
    let opened = world.opener().open(payload).unwrap();
    assert_eq!(opened.header.meta.anatomy.to_string(), "CHEST/PA");
    assert_eq!(opened.header.meta.modality.code(), "DX");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dicom_file_is_sealed_with_its_modality_and_pixels_only_and_colour_is_refused() {
    let world = World::new(64 << 20, 60);
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_in_process();
    gateway.started().await;
    // Any name: the DICM marker tells.
    world.drop_file("chest", &support::dicom_file(64, 48, "CR", "MONOCHROME2"));
    world.drop_file("photo.dcm", &support::dicom_file(8, 8, "XC", "RGB"));
    let images = receiver.expect(IMAGES, 1, WAIT).await.unwrap();
    let payload = &images[0].payload;
    for secret in [&b"Doe^Jane"[..], b"PID-1234567", b"1.2.826.0.1.3680043.9.7"] {
        assert!(
            !payload.windows(secret.len()).any(|w| w == secret),
            "nothing of the object but its pixels leaves the gateway"
        );
    }
    let opened = world.opener().open(payload).unwrap();
    assert_eq!(opened.header.meta.modality.code(), "CR", "its own modality");
    assert!(opened.header.meta.anatomy.is_unknown(), "none named");
    assert_eq!(payload[4], envelope::VERSION, "the current format");
    assert_eq!((opened.header.width, opened.header.height), (64, 48));
    let rejected = world.inbox.join("rejected");
    eventually("the colour object refused", || {
        files_in(&rejected, ".reason.txt").len() == 1
    })
    .await;
    let why = reason(&world, "photo.dcm");
    assert!(why.contains("MONOCHROME1/2"), "{why}");
    gateway.stop().await;
}
