//! `medgate-gateway print-default-config`, `check-config` and `run` with a
//! bad config, as a field technician meets them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::path::Path;
use std::process::{Command, Output};

use medgate_shared::keys::ReceiverPrivateKey;
use medgate_testkit::pki::Pki;

const GATEWAY: &str = env!("CARGO_BIN_EXE_medgate-gateway");
const EX_CONFIG: i32 = 78;

fn gateway(args: &[&str]) -> Output {
    Command::new(GATEWAY).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `medgate-gateway keygen` for gw-1 of site-a, writing `out`.
fn keygen(out: &Path) -> Output {
    gateway(&[
        "keygen",
        "--out",
        out.to_str().unwrap(),
        "--site",
        "site-a",
        "--name",
        "gw-1",
    ])
}

/// A config whose files and folders all exist.
fn valid_config(dir: &Path) -> String {
    let pki = Pki::new(dir, "test CA").unwrap();
    let tls = pki.client("gw-1").unwrap();
    let public = dir.join("receiver.pub.pem");
    let key = ReceiverPrivateKey::generate(3072).unwrap();
    std::fs::write(&public, key.public().to_pem().unwrap()).unwrap();
    let identity = dir.join("identity.pem");
    let made = keygen(&identity);
    assert!(made.status.success(), "{}", stderr(&made));
    let entry = String::from_utf8(made.stdout).unwrap();
    assert!(
        entry.starts_with("[[gateway]]\nsite = \"site-a\"\nname = \"gw-1\"\npublic_key = \""),
        "{entry}"
    );
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    format!(
        "[gateway]\nsite = \"site-a\"\nname = \"gw-1\"\nreceiver_public_key = \"{}\"\nidentity_key = \"{}\"\nstate_dir = \"{}\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n\
         [spool]\ndir = \"{}\"\n\n\
         [[hot_folder]]\ndevice = \"scanner-1\"\npath = \"{}\"\n",
        public.display(),
        identity.display(),
        dir.join("state").display(),
        pki.ca_file().display(),
        tls.cert.display(),
        tls.key.display(),
        dir.join("spool").display(),
        inbox.display()
    )
}

#[test]
fn the_default_config_is_the_shipped_file() {
    let out = gateway(&["print-default-config"]);
    assert!(out.status.success());
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/gateway.toml"),
    )
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), shipped);
}

#[test]
fn check_config_accepts_a_good_file_and_names_file_key_and_reason_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_config(dir.path());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &good).unwrap();
    let out = gateway(&["check-config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // An identity is never overwritten.
    let identity = dir.path().join("identity.pem");
    let again = keygen(&identity);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let cases: &[(&str, String, &str)] = &[
        (
            "unknown key",
            good.replace("[spool]\n", "[spool]\nmax_megabytes = 3\n"),
            "spool.max_megabytes",
        ),
        (
            "bad port",
            good.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nport = 0"),
            "mqtt.port",
        ),
        (
            "port out of range",
            good.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nport = 65536"),
            "mqtt.port",
        ),
        (
            "missing certificate",
            good.replace("gw-1.pem", "absent.pem"),
            "mqtt.cert_file",
        ),
        (
            "missing CA",
            good.replace("ca.pem", "nope.pem"),
            "mqtt.ca_file",
        ),
        (
            "bad site name",
            good.replace("site = \"site-a\"", "site = \"site a/b\""),
            "gateway.site",
        ),
        (
            "missing receiver key",
            good.replace("receiver.pub.pem", "none.pem"),
            "gateway.receiver_public_key",
        ),
        (
            "identity that is not an Ed25519 key",
            good.replace("identity.pem", "receiver.pub.pem"),
            "gateway.identity_key",
        ),
        (
            "bad modality",
            format!("{good}modality = \"XX\"\n"),
            "hot_folder[0].modality",
        ),
        (
            "a body part no DICOM code string holds",
            format!("{good}body_part = \"CHEST/PA\"\n"),
            "hot_folder[0].body_part",
        ),
        (
            "an empty view position",
            format!("{good}view_position = \" \"\n"),
            "hot_folder[0].view_position",
        ),
        (
            "a sensor body part with a character no code holds",
            format!(
                "{good}\n[[spi_sensor]]\ndevice = \"xr-1\"\nbus = \"unix:/tmp/x.sock\"\nbody_part = \"CHEST+\"\n"
            ),
            "spi_sensor[0].body_part",
        ),
        (
            "missing folder",
            good.replace("inbox", "no-such-inbox"),
            "hot_folder[0].path",
        ),
        (
            "bad depth",
            format!("{good}\n[preprocess]\nbit_depth = 12\n"),
            "preprocess.bit_depth",
        ),
        (
            "a resize no packet can carry",
            format!("{good}\n[preprocess]\nbit_depth = 16\nresize = [4096, 4096]\n"),
            "preprocess.resize",
        ),
        (
            "unknown too_large policy",
            format!("{good}\n[preprocess]\ntoo_large = \"crop\"\n"),
            "preprocess.too_large",
        ),
        (
            "decode budget too small",
            format!("{good}\n[preprocess]\nmax_decoded_bytes = 1000\n"),
            "preprocess.max_decoded_bytes",
        ),
        (
            "tiny spool",
            good.replace("[spool]\n", "[spool]\nmax_bytes = 10\n"),
            "spool.max_bytes",
        ),
        (
            "missing section",
            good.replace("[spool]\n", "[spool_]\n"),
            "spool",
        ),
        (
            "bad sensor bus",
            format!("{good}\n[[spi_sensor]]\ndevice = \"xr-1\"\nbus = \"i2c:/dev/i2c-1\"\n"),
            "spi_sensor[0].bus",
        ),
        (
            "sensor device twice",
            format!("{good}\n[[spi_sensor]]\ndevice = \"scanner-1\"\nbus = \"unix:/tmp/x.sock\"\n"),
            "spi_sensor[0].device",
        ),
    ];
    for (what, text, key) in cases {
        std::fs::write(&path, text).unwrap();
        let out = gateway(&["check-config", path.to_str().unwrap()]);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{what}: {message}");
        assert!(
            message.contains(path.to_str().unwrap()),
            "{what}: names the file: {message}"
        );
        assert!(message.contains(key), "{what}: names {key}: {message}");
    }

    std::fs::write(
        &path,
        good.replace("[spool]\n", "[spool]\nmax_megabytes = 3\n"),
    )
    .unwrap();
    let out = gateway(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{}", stderr(&out));
}

#[test]
fn check_config_warns_when_large_images_would_be_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_config(dir.path());
    let path = dir.path().join("gateway.toml");
    // 16 bits without a resize: 16 MiB packets carry about 2896 x 2896.
    std::fs::write(&path, format!("{good}\n[preprocess]\nbit_depth = 16\n")).unwrap();
    let out = gateway(&["check-config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("warning") && message.contains("2896x2896 at 16 bits"),
        "{message}"
    );
    // Down-scaling what does not fit, or 8 bits: nothing to warn about.
    for preprocess in ["bit_depth = 16\ntoo_large = \"downscale\"", "bit_depth = 8"] {
        std::fs::write(&path, format!("{good}\n[preprocess]\n{preprocess}\n")).unwrap();
        let out = gateway(&["check-config", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    }
}

#[test]
fn environment_overrides_apply_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, valid_config(dir.path())).unwrap();
    let out = Command::new(GATEWAY)
        .args(["check-config", path.to_str().unwrap()])
        .env("MEDGATE_PREPROCESS__BIT_DEPTH", "9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    assert!(
        stderr(&out).contains("preprocess.bit_depth"),
        "{}",
        stderr(&out)
    );
}
