//! `medgate-receiver print-default-config`, `check-config` and `run` with a
//! bad config, as a field technician meets them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::path::Path;
use std::process::{Command, Output};

use medgate_testkit::pki::Pki;

const RECEIVER: &str = env!("CARGO_BIN_EXE_medgate-receiver");
const EX_CONFIG: i32 = 78;

fn receiver(args: &[&str]) -> Output {
    Command::new(RECEIVER)
        .args(args)
        .env_remove("MEDGATE_MQTT__HOST")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A config whose files all exist: keys, certificates, CA.
fn valid_config(dir: &Path) -> String {
    let pki = Pki::new(dir, "test CA").unwrap();
    let tls = pki.client("receiver-1").unwrap();
    let keys = dir.join("keys");
    let out = receiver(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let trust = dir.join("gateways.toml");
    std::fs::write(&trust, "# no gateway enrolled yet\n").unwrap();
    format!(
        "[receiver]\nname = \"receiver-1\"\nprivate_key = \"{}\"\ntrusted_gateways = \"{}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        keys.join("receiver.pem").display(),
        trust.display(),
        pki.ca_file().display(),
        tls.cert.display(),
        tls.key.display()
    )
}

#[test]
fn the_default_config_is_the_shipped_file() {
    let out = receiver(&["print-default-config"]);
    assert!(out.status.success());
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/receiver.toml"),
    )
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), shipped);
}

#[test]
fn check_config_accepts_a_good_file_and_names_file_key_and_reason_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_config(dir.path());
    // A model folder whose card names a modality that does not exist.
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("model/model.json"))
            .unwrap();
    std::fs::write(
        model.join("model.json"),
        shipped.replace("\"DX\"", "\"XRAY\""),
    )
    .unwrap();
    let model = model.display();
    let path = dir.path().join("receiver.toml");
    std::fs::write(&path, &good).unwrap();
    let out = receiver(&["check-config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let cases: &[(&str, String, &str)] = &[
        ("unknown key", format!("{good}prot = 1\n"), "prot"),
        (
            "bad port",
            good.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nport = 70000"),
            "mqtt.port",
        ),
        (
            "missing certificate",
            good.replace("receiver-1.pem", "absent.pem"),
            "mqtt.cert_file",
        ),
        (
            "bad name",
            good.replace("name = \"receiver-1\"", "name = \"receiver 1/x\""),
            "receiver.name",
        ),
        (
            "unknown label",
            format!(
                "{good}\n[[notify]]\nlabel = \"fracture\"\nmin_probability = 0.5\nward = \"icu\"\npriority = \"urgent\"\n"
            ),
            "notify[0]",
        ),
        (
            "bad metrics address",
            format!("{good}\n[metrics]\nlisten = \"localhost\"\n"),
            "metrics.listen",
        ),
        (
            "not a key",
            good.replace("keys/receiver.pem", "keys/receiver.pub.pem"),
            "receiver.private_key",
        ),
        (
            "missing trust list",
            good.replace("gateways.toml", "absent.toml"),
            "receiver.trusted_gateways",
        ),
        (
            "trust list that is not one",
            good.replace("gateways.toml", "keys/receiver.pub.pem"),
            "receiver.trusted_gateways",
        ),
        (
            "one model and several",
            format!("{good}\n[model]\ndir = \"{model}\"\ndirs = [\"{model}\"]\n"),
            "model.dirs",
        ),
        (
            "a card accepting an unknown modality",
            format!("{good}\n[model]\ndirs = [\"{model}\"]\n"),
            "key `model.dirs[0]`: ",
        ),
        ("toml syntax", format!("{good}[model\n"), ""),
    ];
    for (what, text, key) in cases {
        std::fs::write(&path, text).unwrap();
        let out = receiver(&["check-config", path.to_str().unwrap()]);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{what}: {message}");
        assert!(
            message.contains(path.to_str().unwrap()),
            "{what}: names the file: {message}"
        );
        assert!(message.contains(key), "{what}: names {key}: {message}");
    }
    std::fs::write(&path, format!("{good}\n[model]\ndirs = [\"{model}\"]\n")).unwrap();
    let message = stderr(&receiver(&["check-config", path.to_str().unwrap()]));
    assert!(
        message.contains("accepts.modalities: \"XRAY\" is not a DICOM modality code"),
        "the card's own key and reason: {message}"
    );

    // The service refuses to start on the same errors, with the same code.
    std::fs::write(&path, format!("{good}prot = 1\n")).unwrap();
    let out = receiver(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{}", stderr(&out));
}

#[test]
fn environment_overrides_apply_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receiver.toml");
    std::fs::write(&path, valid_config(dir.path())).unwrap();
    let out = Command::new(RECEIVER)
        .args(["check-config", path.to_str().unwrap()])
        .env("MEDGATE_MQTT__PORT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    assert!(stderr(&out).contains("mqtt.port"), "{}", stderr(&out));
}

#[test]
fn the_shipped_broker_rules_are_what_broker_acl_writes_from_the_example_trust_list() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let trust = configs.join("mosquitto/example-gateways.toml");
    // The cloud cluster also takes site-a's broker as a bridge.
    for (broker, shipped, more) in [
        ("mosquitto", "mosquitto/medgate.acl", &[][..]),
        ("emqx", "emqx/medgate-acl.conf", &[]),
        (
            "rmqtt",
            "rmqtt/plugins/rmqtt-acl.toml",
            &["--bridged-sites", "site-a"],
        ),
    ] {
        let mut args = vec![
            "broker-acl",
            "--trust",
            trust.to_str().unwrap(),
            "--receivers",
            "receiver-1,receiver-2",
            "--clinician-wards",
            "radiology",
            "--security",
            "security",
            "--broker",
            broker,
        ];
        args.extend_from_slice(more);
        let out = receiver(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let expected = std::fs::read_to_string(configs.join(shipped)).unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            expected,
            "configs/{shipped} is out of date: write it again with broker-acl"
        );
    }
    // A certificate name with two roles is refused, naming it.
    let out = receiver(&[
        "broker-acl",
        "--trust",
        trust.to_str().unwrap(),
        "--receivers",
        "gw-1",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("gw-1"), "{}", stderr(&out));
}
