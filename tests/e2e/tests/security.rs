//! Access control with the shipped `configs/mosquitto/medgate.conf` and the
//! shipped ACL (`medgate.acl`, written by `medgate-receiver broker-acl` from
//! `example-gateways.toml`) on a real mosquitto with mutual TLS: a gateway
//! cannot publish into another gateway's topics nor read its results; only
//! gateways publish images, each under its own site; no certificate takes
//! another client's id; a client without a certificate, or with one from
//! another CA, cannot connect. Every check waits on an
//! event (a later message that must arrive after the refused one would
//! have), never on a pause.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::path::Path;
use std::time::Duration;

use medgate_testkit::client::{self, TestClient};
use medgate_testkit::mosquitto::{BrokerOptions, Mosquitto, shipped_acl};
use medgate_testkit::pki::Pki;

const WAIT: Duration = Duration::from_secs(60);

/// mosquitto with the shipped config and ACL.
fn shipped_broker(pki: &Pki, dir: &Path) -> Mosquitto {
    let options = BrokerOptions {
        acl: Some(shipped_acl().unwrap()),
        shipped_config: true,
        ..BrokerOptions::default()
    };
    Mosquitto::start(pki, dir, &options).unwrap()
}

/// receiver-1 in the receivers' shared subscription (which the ACL allows).
async fn shared_receiver(pki: &Pki, broker: &Mosquitto) -> TestClient {
    connect(
        pki,
        broker,
        "receiver-1",
        &["$share/receivers/medgate/v1/+/+/images/+"],
    )
    .await
}

async fn connect(pki: &Pki, broker: &Mosquitto, name: &str, filters: &[&str]) -> TestClient {
    let settings = client::settings(pki, broker, name).unwrap();
    let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    TestClient::connect(&settings, name, &filters, WAIT)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_can_neither_publish_into_nor_read_another_gateways_topics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "site CA").unwrap();
    let broker = shipped_broker(&pki, dir.path());

    // The receiver's shared subscription is allowed by the ACL.
    let mut receiver = shared_receiver(&pki, &broker).await;
    let gw1 = connect(&pki, &broker, "gw-1", &["medgate/v1/site-a/gw-1/results/+"]).await;
    // gw-2 also asks for gw-1's results: the broker must refuse that filter.
    let mut gw2 = connect(
        &pki,
        &broker,
        "gw-2",
        &[
            "medgate/v1/site-a/gw-1/results/+",
            "medgate/v1/site-a/gw-2/results/+",
        ],
    )
    .await;

    // gw-2 forges an image into gw-1's subtree, then publishes its own.
    gw2.publish("medgate/v1/site-a/gw-1/images/cam-1", b"forged".to_vec())
        .await
        .unwrap();
    gw2.publish("medgate/v1/site-a/gw-2/images/cam-1", b"own".to_vec())
        .await
        .unwrap();
    // gw-1's own publication goes through as well.
    gw1.publish("medgate/v1/site-a/gw-1/images/cam-1", b"gw-1 own".to_vec())
        .await
        .unwrap();
    let mut got = receiver
        .expect("medgate/v1/site-a/", 2, WAIT)
        .await
        .unwrap();
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(got[0].topic, "medgate/v1/site-a/gw-1/images/cam-1");
    assert_eq!(
        got[0].payload, b"gw-1 own",
        "the forged image never arrived"
    );
    assert_eq!(got[1].payload, b"own");

    // A result for gw-1, then one for gw-2: gw-2 gets only its own.
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
    assert!(
        gw2.drain("medgate/v1/site-a/gw-1/").is_empty(),
        "gw-1's result was not readable"
    );

    // gw-2 cannot pose as a receiver either: results it writes for gw-1
    // never reach gw-1, whose next message is the receiver's.
    let mut gw1 = gw1;
    gw2.publish(
        "medgate/v1/site-a/gw-1/results/cam-1",
        b"forged result".to_vec(),
    )
    .await
    .unwrap();
    receiver
        .publish("medgate/v1/site-a/gw-1/results/cam-2", b"genuine".to_vec())
        .await
        .unwrap();
    let first = gw1
        .expect("medgate/v1/site-a/gw-1/results/", 2, WAIT)
        .await
        .unwrap();
    assert_eq!(first[0].payload, b"for gw-1");
    assert_eq!(
        first[1].payload, b"genuine",
        "the forged result never arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_gateways_publish_images_and_each_only_under_its_own_site() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "site CA").unwrap();
    let broker = shipped_broker(&pki, dir.path());
    let mut receiver = shared_receiver(&pki, &broker).await;
    // gw-1 also asks for the results of a same-named gateway elsewhere.
    let mut gw1 = connect(
        &pki,
        &broker,
        "gw-1",
        &[
            "medgate/v1/other/gw-1/results/+",
            "medgate/v1/site-a/gw-1/results/+",
        ],
    )
    .await;

    // Scenario 1: a clinician's, the security staff's and a receiver's
    // certificates each try to inject an image under their own name.
    // Each then disconnects: once the broker logs that, it has dealt with
    // the publication before it (delivered or denied).
    for name in ["clinician-radiology", "security", "receiver-2"] {
        let mark = broker.log_len();
        let client = connect(&pki, &broker, name, &[]).await;
        client
            .publish(
                format!("medgate/v1/site-a/{name}/images/x"),
                b"injected".to_vec(),
            )
            .await
            .unwrap();
        client.client.disconnect().await.unwrap();
        broker
            .wait_for_log(&format!("Client {name} disconnected"), mark, WAIT)
            .unwrap();
    }
    // Scenario 2: gw-1 publishes as another site.
    gw1.publish("medgate/v1/other/gw-1/images/x", b"other site".to_vec())
        .await
        .unwrap();
    // Then gw-1's own image, which must be the first and only one through.
    gw1.publish("medgate/v1/site-a/gw-1/images/x", b"own".to_vec())
        .await
        .unwrap();
    let got = receiver.expect("medgate/v1/", 1, WAIT).await.unwrap();
    assert_eq!(got[0].topic, "medgate/v1/site-a/gw-1/images/x");
    assert_eq!(got[0].payload, b"own", "no injected image arrived first");

    // (Client ids are certificate names now, so the clinician app connects
    // only after its injection attempt above has disconnected.)
    let mut clinician = connect(
        &pki,
        &broker,
        "clinician-radiology",
        &["medgate/v1/+/notify/radiology", "medgate/v1/+/+/images/+"],
    )
    .await;
    // Results of the other site's gw-1 never reach this gw-1; its own do.
    receiver
        .publish("medgate/v1/other/gw-1/results/x", b"elsewhere".to_vec())
        .await
        .unwrap();
    receiver
        .publish("medgate/v1/site-a/gw-1/results/x", b"mine".to_vec())
        .await
        .unwrap();
    let mine = gw1.expect("medgate/v1/", 1, WAIT).await.unwrap();
    assert_eq!(mine[0].payload, b"mine");
    // A clinician reads notifications, never images: an image goes out
    // (the receiver has it, so the broker dealt with it), then a note.
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
    assert!(receiver.drain("medgate/v1/").is_empty());
    assert!(gw1.drain("medgate/v1/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_takes_another_clients_id() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "site CA").unwrap();
    let broker = shipped_broker(&pki, dir.path());
    let mut receiver = shared_receiver(&pki, &broker).await;
    // Scenario 3: gw-2's certificate asks for the client id "receiver-1".
    let mark = broker.log_len();
    let settings = client::settings(&pki, &broker, "gw-2").unwrap();
    let impostor = TestClient::connect(&settings, "receiver-1", &[], WAIT)
        .await
        .unwrap();
    // The broker names it by its certificate instead.
    broker.wait_for_log(" as gw-2 (", mark, WAIT).unwrap();
    // The receiver still holds its connection and its share of the stream.
    impostor
        .publish("medgate/v1/site-a/gw-2/images/x", b"gw-2 own".to_vec())
        .await
        .unwrap();
    let got = receiver.expect("medgate/v1/", 1, WAIT).await.unwrap();
    assert_eq!(got[0].payload, b"gw-2 own");
    let log = broker.log_text();
    assert!(
        !log.contains("already connected"),
        "a client was taken over:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_of_the_site_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "site CA").unwrap();
    let broker = Mosquitto::start(&pki, dir.path(), &BrokerOptions::default()).unwrap();
    medgate_e2e::strangers_are_refused(&pki, dir.path(), "127.0.0.1", broker.port()).await;

    // A certificate of the site CA connects (the control case).
    let settings = client::settings(&pki, &broker, "gw-1").unwrap();
    let tls = settings.check(Path::new("<test>"), "mqtt").unwrap();
    assert!(
        medgate_e2e::connects(settings.options("gw-1", &tls)).await,
        "the site's own certificate works"
    );
}
