//! The gateway against a real mosquitto with mutual TLS: hot-folder images
//! reach the broker sealed, results come back to the right file, a full
//! spool refuses captures visibly, an unanswered image is published again
//! with the same id, and a gateway killed with SIGKILL mid-stream loses
//! nothing when it starts again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use medgate_shared::messages::ResultMessage;

mod support;

use support::{
    WAIT, World, answer, answer_not_classified, counter, eventually, files_in, metrics_text,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_medgate-gateway");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_no_model_takes_gets_a_not_classified_sidecar_and_leaves_the_spool() {
    let world = World::new(64 << 20, 60);
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_in_process();
    let started = gateway.started().await;
    world.drop_image("knee.png", 9, 64);
    let images = receiver
        .expect("medgate/v1/site-a/gw-1/images/", 1, WAIT)
        .await
        .unwrap();
    let mut opener = world.opener();
    let id = answer_not_classified(
        &receiver,
        &mut opener,
        &images[0].payload,
        "no_model",
        "no model for DX/KNEE",
    )
    .await;
    let done = world.done();
    eventually("the not-classified sidecar", || {
        files_in(&done, ".not-classified.json").len() == 1
    })
    .await;
    let sidecar = done.join(&files_in(&done, ".not-classified.json")[0]);
    let told: serde_json::Value = serde_json::from_slice(&std::fs::read(sidecar).unwrap()).unwrap();
    assert_eq!(told["message_id"], id);
    assert_eq!(told["reason"], "no_model");
    assert_eq!(told["detail"], "no model for DX/KNEE");
    assert!(files_in(&done, ".result.json").is_empty());
    let address = started.metrics.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter(
        &metrics_text(address).await,
        "medgate_gateway_spool_entries",
    ) != 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spool never let go of it"
        );
        tokio::task::yield_now().await;
    }
    let metrics = metrics_text(address).await;
    assert_eq!(
        counter(
            &metrics,
            "medgate_gateway_not_classified_total{reason=\"no_model\"}"
        ),
        1.0,
        "{metrics}"
    );
    let quarantine = world.dir.path().join("spool/quarantine");
    assert_eq!(
        std::fs::read_dir(&quarantine).map_or(0, |d| d.count()),
        0,
        "not quarantined"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_folder_images_reach_the_broker_sealed_and_results_come_back() {
    let world = World::new(64 << 20, 60);
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_in_process();
    let started = gateway.started().await;
    assert_eq!(started.recovered, 0);

    let mut originals = HashMap::new();
    for (i, name) in ["a.png", "b.png", "c.png"].iter().enumerate() {
        originals.insert(*name, world.drop_image(name, i as u8 + 3, 64));
    }
    // Not an image: refused with a reason, never silently dropped.
    std::fs::write(world.inbox.join("notes.png"), b"this is not a png").unwrap();

    let mut opener = world.opener();
    let images = receiver
        .expect("medgate/v1/site-a/gw-1/images/scanner-1", 3, WAIT)
        .await
        .unwrap();
    let mut answered = Vec::new();
    for image in &images {
        // Sealed on the wire: no image bytes in the clear.
        assert_eq!(&image.payload[..4], b"MGSI");
        let (id, device, pixels) = answer(&receiver, &mut opener, &image.payload).await;
        assert_eq!(device, "scanner-1");
        assert!(
            originals.values().any(|o| *o == pixels),
            "pixels arrive unchanged"
        );
        answered.push(id);
    }
    let done = world.done();
    eventually("three result sidecars", || {
        files_in(&done, ".result.json").len() == 3
    })
    .await;
    for id in &answered {
        let sidecars = files_in(&done, ".result.json");
        let sidecar = sidecars
            .iter()
            .find(|n| n.starts_with(id.as_str()))
            .expect("result beside its image");
        let result: ResultMessage =
            serde_json::from_slice(&std::fs::read(done.join(sidecar)).unwrap()).unwrap();
        assert_eq!(&result.message_id, id);
    }
    assert_eq!(
        files_in(&world.inbox, ".png"),
        Vec::<String>::new(),
        "inbox emptied"
    );
    assert_eq!(
        files_in(&world.inbox.join("rejected"), ".png"),
        ["notes.png"]
    );
    assert_eq!(
        files_in(&world.inbox.join("rejected"), ".reason.txt").len(),
        1
    );

    let metrics = metrics_text(started.metrics.unwrap()).await;
    assert_eq!(
        counter(&metrics, "medgate_gateway_sealed_total"),
        3.0,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "medgate_gateway_results_total"), 3.0);
    assert_eq!(counter(&metrics, "medgate_gateway_spool_entries"), 0.0);
    assert_eq!(
        counter(&metrics, "medgate_gateway_rejected_files_total"),
        1.0
    );
    assert!(counter(&metrics, "medgate_gateway_acknowledged_total") >= 3.0);
    gateway.stop().await;
    // The spool holds nothing once every result is in.
    assert_eq!(
        files_in(&world.dir.path().join("spool"), ".mgsi"),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_captures_visibly_and_loses_none() {
    // 1 MiB holds three 512x512 images and a bit (each ~262 KB sealed).
    let world = World::new(1 << 20, 60);
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_in_process();
    let started = gateway.started().await;
    for i in 0..6 {
        world.drop_image(&format!("img-{i}.png"), i + 1, 512);
    }
    let first = receiver
        .expect("medgate/v1/site-a/gw-1/images/", 3, WAIT)
        .await
        .unwrap();
    let address = started.metrics.unwrap();
    let mut refused = 0.0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while refused < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no refusal counted");
        refused = counter(
            &metrics_text(address).await,
            "medgate_gateway_refused_full_total",
        );
    }
    // The refused files wait in the inbox.
    assert_eq!(files_in(&world.inbox, ".png").len(), 3);
    let mut opener = world.opener();
    for image in &first {
        answer(&receiver, &mut opener, &image.payload).await;
    }
    // Room again: the rest are captured, published and answered.
    let rest = receiver
        .expect("medgate/v1/site-a/gw-1/images/", 3, WAIT)
        .await
        .unwrap();
    for image in &rest {
        answer(&receiver, &mut opener, &image.payload).await;
    }
    let done = world.done();
    eventually("six results", || files_in(&done, ".result.json").len() == 6).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_image_is_published_again_with_the_same_id() {
    let world = World::new(64 << 20, 1);
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_in_process();
    gateway.started().await;
    world.drop_image("x.png", 7, 32);
    let first = receiver
        .expect("medgate/v1/site-a/gw-1/images/", 1, WAIT)
        .await
        .unwrap();
    // No answer: after the 1 s result timeout it comes again, same bytes.
    let again = receiver
        .expect("medgate/v1/site-a/gw-1/images/", 1, WAIT)
        .await
        .unwrap();
    assert_eq!(first[0].payload, again[0].payload);
    let mut opener = world.opener();
    answer(&receiver, &mut opener, &again[0].payload).await;
    let done = world.done();
    eventually("the result", || files_in(&done, ".result.json").len() == 1).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_stream_loses_no_accepted_image() {
    let world = World::new(64 << 20, 60);
    let mut receiver = world.receiver().await;
    let mut gateway = world.start_process(Path::new(GATEWAY));
    for i in 0..20 {
        world.drop_image(&format!("k-{i:02}.png"), i + 1, 128);
    }
    // Let some be published, then SIGKILL while the rest are on their way.
    receiver
        .expect("medgate/v1/site-a/gw-1/images/", 5, WAIT)
        .await
        .unwrap();
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    // Every file that left the inbox is accepted, hence in the spool.
    let accepted: Vec<String> = files_in(&world.done(), ".png");
    let waiting = files_in(&world.inbox, ".png");
    assert_eq!(accepted.len() + waiting.len(), 20, "no file vanished");

    let mut gateway = world.start_process(Path::new(GATEWAY));
    let mut opener = world.opener();
    let mut answered = std::collections::HashSet::new();
    let spool = world.dir.path().join("spool");
    let done = world.done();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let settled = files_in(&world.inbox, ".png").is_empty()
            && files_in(&spool, ".mgsi").is_empty()
            && files_in(&done, ".png")
                .iter()
                .all(|n| answered.contains(&n[..32]));
        if settled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} answered; not settled",
            answered.len()
        );
        if let Ok(images) = receiver
            .expect(
                "medgate/v1/site-a/gw-1/images/",
                1,
                Duration::from_millis(200),
            )
            .await
        {
            for image in images {
                let (id, _, _) = answer(&receiver, &mut opener, &image.payload).await;
                answered.insert(id);
            }
        }
    }
    // Every accepted file, before the kill or after, got its result under
    // its own id, and every image file is accounted for.
    let accepted_now = files_in(&done, ".png");
    assert_eq!(accepted_now.len(), 20);
    for name in accepted.iter().chain(&accepted_now) {
        assert!(answered.contains(&name[..32]), "{name} was answered");
    }
    eventually("a result beside every image", || {
        files_in(&done, ".result.json").len() >= 20
    })
    .await;
    gateway.kill().unwrap();
    gateway.wait().unwrap();
}
