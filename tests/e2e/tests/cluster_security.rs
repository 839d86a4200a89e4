//! Access control on the three-node rmqtt cluster, with the shipped
//! `configs/rmqtt/` files and rules (`plugins/rmqtt-acl.toml`, written by
//! `medgate-receiver broker-acl --broker rmqtt` from
//! `configs/mosquitto/example-gateways.toml`), each client on another node
//! than the one it attacks: a gateway cannot publish into another gateway's
//! topics nor read its results; only gateways publish images, each under its
//! own site; no certificate connects under another client's id; a client
//! without a certificate of the CA cannot connect. rmqtt closes the
//! connection of a client whose publication it refuses, and each check waits
//! on that or on a later message that must arrive after a refused one would
//! have, never on a pause.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::path::Path;
use std::time::Duration;

use medgate_testkit::client::{self, TestClient};
use medgate_testkit::pki::Pki;
use medgate_testkit::rmqtt::{self, RmqttCluster};

const WAIT: Duration = Duration::from_secs(60);

/// Three nodes with the shipped configuration and rules.
fn shipped_cluster(pki: &Pki, dir: &Path) -> RmqttCluster {
    assert!(
        rmqtt::installed(),
        "rmqttd is missing at {}: run scripts/install-rmqtt (scripts/test does)",
        rmqtt::binary().display()
    );
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/rmqtt/plugins/rmqtt-acl.toml");
    let rules = std::fs::read_to_string(rules).unwrap();
    RmqttCluster::start(pki, dir, 3, &rules).unwrap()
}

/// `name` connected to node `node` (0, 1 or 2), subscribed to `filters`.
async fn connect(
    pki: &Pki,
    cluster: &RmqttCluster,
    node: usize,
    name: &str,
    filters: &[&str],
) -> TestClient {
    let settings = client::settings_at(
        pki,
        &cluster.host(node).to_string(),
        cluster.port(node),
        name,
    )
    .unwrap();
    let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    TestClient::connect(&settings, name, &filters, WAIT)
        .await
        .unwrap()
}

/// receiver-1 on node 3, in the receivers' shared subscription.
async fn shared_receiver(pki: &Pki, cluster: &RmqttCluster) -> TestClient {
    connect(
        pki,
        cluster,
        2,
        "receiver-1",
        &["$share/receivers/medgate/v1/+/+/images/+"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_cluster_a_gateway_can_neither_publish_into_nor_read_another_gateways_topics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "site CA").unwrap();
    let cluster = shipped_cluster(&pki, dir.path());
    let mut receiver = shared_receiver(&pki, &cluster).await;
    let mut gw1 = connect(
        &pki,
        &cluster,
        0,
        "gw-1",
        &["medgate/v1/site-a/gw-1/results/+"],
    )
    .await;
    // gw-2, on another node, also asks for gw-1's results: refused.
    let mut gw2 = connect(
        &pki,
        &cluster,
        1,
        "gw-2",
        &[
            "medgate/v1/site-a/gw-1/results/+",
            "medgate/v1/site-a/gw-2/results/+",
        ],
    )
    .await;

    // A result for gw-1, then one for gw-2: each gets only its own.
    receiver
        .publish("medgate/v1/site-a/gw-1/results/cam-1", b"for gw-1".to_vec())
        .await
        .unwrap();
    receiver
        .publish("medgate/v1/site-a/gw-2/results/cam-1", b"for gw-2".to_vec())
        .await
        .unwrap();
    let mine = gw2.expect("medgate/v1/site-a/", 1, WAIT).await.unwrap();
    assert_eq!(mine[0].topic, "medgate/v1/site-a/gw-2/results/cam-1");
    let theirs = gw1.expect("medgate/v1/site-a/", 1, WAIT).await.unwrap();
    assert_eq!(theirs[0].payload, b"for gw-1");
    assert!(
        gw2.drain("medgate/v1/site-a/gw-1/").is_empty(),
        "gw-1's result was not readable"
    );

    // gw-2 forges an image into gw-1's subtree: refused, and its
    // connection closed; then gw-1's own image is the first to arrive.
    gw2.publish("medgate/v1/site-a/gw-1/images/cam-1", b"forged".to_vec())
        .await
        .unwrap();
    gw2.wait_for_drops(1, WAIT).await.unwrap();
    gw1.publish("medgate/v1/site-a/gw-1/images/cam-1", b"gw-1 own".to_vec())
        .await
        .unwrap();
    let got = receiver.expect("medgate/v1/", 1, WAIT).await.unwrap();
    assert_eq!(
        got[0].payload, b"gw-1 own",
        "the forged image never arrived"
    );

    // Nor can gw-2 pose as a receiver: a result it writes for gw-1 is
    // refused, and gw-1's next message is the receiver's.
    gw2.publish(
        "medgate/v1/site-a/gw-1/results/cam-1",
        b"forged result".to_vec(),
    )
    .await
    .unwrap();
    gw2.wait_for_drops(2, WAIT).await.unwrap();
    receiver
        .publish("medgate/v1/site-a/gw-1/results/cam-2", b"genuine".to_vec())
        .await
        .unwrap();
    let next = gw1.expect("medgate/v1/", 1, WAIT).await.unwrap();
    assert_eq!(
        next[0].payload, b"genuine",
        "the forged result never arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_cluster_only_gateways_publish_images_each_under_its_own_site() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "site CA").unwrap();
    let cluster = shipped_cluster(&pki, dir.path());
    let mut receiver = shared_receiver(&pki, &cluster).await;

    // A clinician's, the security staff's and another receiver's
    // certificates each try to inject an image, each on another node:
    // refused, and their connections closed.
    for (node, name) in [
        (0, "clinician-radiology"),
        (1, "security"),
        (0, "receiver-2"),
    ] {
        let mut client = connect(&pki, &cluster, node, name, &[]).await;
        client
            .publish(
                format!("medgate/v1/site-a/{name}/images/x"),
                b"injected".to_vec(),
            )
            .await
            .unwrap();
        client.wait_for_drops(1, WAIT).await.unwrap();
        client.client.disconnect().await.unwrap();
    }
    // gw-1 publishes as another site: refused likewise.
    let mut gw1 = connect(
        &pki,
        &cluster,
        1,
        "gw-1",
        &["medgate/v1/site-a/gw-1/results/+"],
    )
    .await;
    gw1.publish("medgate/v1/other/gw-1/images/x", b"other site".to_vec())
        .await
        .unwrap();
    gw1.wait_for_drops(1, WAIT).await.unwrap();
    // Its own image is the first and only one through.
    gw1.publish("medgate/v1/site-a/gw-1/images/x", b"own".to_vec())
        .await
        .unwrap();
    let got = receiver.expect("medgate/v1/", 1, WAIT).await.unwrap();
    assert_eq!(got[0].topic, "medgate/v1/site-a/gw-1/images/x");
    assert_eq!(got[0].payload, b"own", "no injected image arrived first");

    // A clinician app reads its ward's notifications, never images: an
    // image goes out (the receiver has it, so the cluster dealt with it),
    // then a notification; the clinician sees the notification only.
    let mut clinician = connect(
        &pki,
        &cluster,
        0,
        "clinician-radiology",
        &["medgate/v1/+/+/images/+", "medgate/v1/+/notify/radiology"],
    )
    .await;
    gw1.publish("medgate/v1/site-a/gw-1/images/y", b"second".to_vec())
        .await
        .unwrap();
    let second = receiver.expect("medgate/v1/", 1, WAIT).await.unwrap();
    assert_eq!(second[0].payload, b"second");
    receiver
        .publish("medgate/v1/site-a/notify/radiology", b"note".to_vec())
        .await
        .unwrap();
    let seen = clinician.expect("medgate/v1/", 1, WAIT).await.unwrap();
    assert_eq!(seen[0].topic, "medgate/v1/site-a/notify/radiology");
    assert!(clinician.drain("medgate/v1/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_cluster_no_certificate_takes_another_clients_id_and_strangers_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "site CA").unwrap();
    let cluster = shipped_cluster(&pki, dir.path());
    let mut receiver = shared_receiver(&pki, &cluster).await;
    let host = cluster.host(0).to_string();
    let port = cluster.port(0);

    // gw-2's certificate asks for the client id "receiver-1" (whose
    // session is on node 3): refused at CONNECT.
    let settings = client::settings_at(&pki, &host, port, "gw-2").unwrap();
    let tls = settings.check(Path::new("<test>"), "mqtt").unwrap();
    assert!(
        !medgate_e2e::connects(settings.options("receiver-1", &tls)).await,
        "gw-2's certificate connected as receiver-1"
    );
    // Under its own name it connects (the control case).
    assert!(medgate_e2e::connects(settings.options("gw-2", &tls)).await);
    // receiver-1 still holds its session and its share of the stream.
    let gw2 = connect(&pki, &cluster, 0, "gw-2", &[]).await;
    gw2.publish("medgate/v1/site-a/gw-2/images/x", b"gw-2 own".to_vec())
        .await
        .unwrap();
    let got = receiver.expect("medgate/v1/", 1, WAIT).await.unwrap();
    assert_eq!(got[0].payload, b"gw-2 own");

    // Strangers: no certificate, or one of another CA.
    medgate_e2e::strangers_are_refused(&pki, dir.path(), &host, port).await;
}
