//! The `medgate-sim` tools as a user runs them: real processes, real files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{GrayImage, ImageBuffer, Luma};

const SIM: &str = env!("CARGO_BIN_EXE_medgate-sim");

fn sim(args: &[&str]) -> Output {
    Command::new(SIM).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = sim(args);
    assert!(
        out.status.success(),
        "medgate-sim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The folder holding pneumoniamnist.npz: `MEDGATE_DATA_DIR`, else the
/// project's `../shared/data`.
fn data_dir() -> PathBuf {
    let dir = std::env::var_os("MEDGATE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    assert!(
        dir.join("pneumoniamnist.npz").exists(),
        "real X-ray data not found in {}: set MEDGATE_DATA_DIR (scripts/test does)",
        dir.display()
    );
    dir
}

struct Keys {
    _dir: tempfile::TempDir,
    private: PathBuf,
    public: PathBuf,
    /// The signing key of gateway sim-site/sim-gateway (the tools' default).
    identity: PathBuf,
    /// A trust list naming it.
    trust: PathBuf,
}

fn keygen() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    ok(&["keygen", "--out", s(&out)]);
    let (identity, enrolled) =
        medgate_testkit::identity::gateway_identity(dir.path(), "sim-site", "sim-gateway").unwrap();
    let trust = dir.path().join("gateways.toml");
    medgate_testkit::identity::write_trust_list(&trust, [enrolled]).unwrap();
    Keys {
        private: out.join("receiver.pem"),
        public: out.join("receiver.pub.pem"),
        identity,
        trust,
        _dir: dir,
    }
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_reads_and_never_overwrites() {
    let keys = keygen();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys.private)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = sim(&["keygen", "--out", s(keys.private.parent().unwrap())]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn seal_then_open_gives_back_the_image_in_both_depths() {
    let keys = keygen();
    let dir = tempfile::tempdir().unwrap();
    let eight: GrayImage = ImageBuffer::from_fn(61, 47, |x, y| Luma([(x * 4 + y) as u8]));
    let sixteen: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(33, 20, |x, y| Luma([(x * 1000 + y * 7) as u16]));
    let paths = [dir.path().join("eight.png"), dir.path().join("sixteen.png")];
    eight.save(&paths[0]).unwrap();
    sixteen.save(&paths[1]).unwrap();
    for original in &paths {
        let sealed = original.with_extension("mge");
        let opened = original.with_extension("out.png");
        ok(&[
            "seal",
            "--image",
            s(original),
            "--receiver-key",
            s(&keys.public),
            "--identity",
            s(&keys.identity),
            "--device",
            "xr-7",
            "--out",
            s(&sealed),
        ]);
        let raw = std::fs::read(&sealed).unwrap();
        assert_eq!(&raw[..4], b"MGSI");
        let said = ok(&[
            "open",
            "--key",
            s(&keys.private),
            "--trust",
            s(&keys.trust),
            "--in",
            s(&sealed),
            "--out",
            s(&opened),
        ]);
        assert!(said.contains("sim-site/sim-gateway/xr-7"), "{said}");
        let before = image::open(original).unwrap();
        let after = image::open(&opened).unwrap();
        assert_eq!(before.color(), after.color());
        assert_eq!(before.as_bytes(), after.as_bytes());
    }
}

#[test]
fn open_refuses_tampered_truncated_and_foreign_inputs_and_writes_nothing() {
    let keys = keygen();
    let other = keygen();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("in.png");
    GrayImage::from_fn(40, 30, |x, y| Luma([(x ^ y) as u8]))
        .save(&png)
        .unwrap();
    let sealed = dir.path().join("in.mge");
    ok(&[
        "seal",
        "--image",
        s(&png),
        "--receiver-key",
        s(&keys.public),
        "--identity",
        s(&keys.identity),
        "--device",
        "d1",
        "--out",
        s(&sealed),
    ]);
    let good = std::fs::read(&sealed).unwrap();

    let mut tampered = good.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0x10;
    let cases: Vec<(&str, Vec<u8>, &Path, &str)> = vec![
        ("tampered", tampered, &keys.private, "aead"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            &keys.private,
            "malformed",
        ),
        ("empty", Vec::new(), &keys.private, "malformed"),
        ("foreign", good.clone(), &other.private, "unknown_recipient"),
    ];
    let mut cases: Vec<(&str, Vec<u8>, &Path, &Path, &str)> = cases
        .into_iter()
        .map(|(name, bytes, key, reason)| (name, bytes, key, keys.trust.as_path(), reason))
        .collect();
    // Sealed by a gateway the trust list does not name.
    cases.push((
        "stranger",
        good.clone(),
        &keys.private,
        &other.trust,
        "unknown_gateway",
    ));
    for (name, bytes, key, trust, reason) in cases {
        let input = dir.path().join(format!("{name}.mge"));
        std::fs::write(&input, bytes).unwrap();
        let out = dir.path().join(format!("{name}.png"));
        let result = sim(&[
            "open",
            "--key",
            s(key),
            "--trust",
            s(trust),
            "--in",
            s(&input),
            "--out",
            s(&out),
        ]);
        assert_eq!(result.status.code(), Some(65), "{name}");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(
            stderr.contains(reason) && stderr.contains("nothing was written"),
            "{name}: {stderr}"
        );
        assert!(!out.exists(), "{name}: an output file was written");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn cipher_report_on_a_real_xray_meets_the_targets() {
    let dir = tempfile::tempdir().unwrap();
    let xray = dir.path().join("xray.png");
    let data = data_dir().join("pneumoniamnist.npz");
    ok(&[
        "xray",
        "--data",
        s(&data),
        "--index",
        "3",
        "--size",
        "512",
        "--out",
        s(&xray),
    ]);
    let plot = dir.path().join("plot.png");
    let json = ok(&[
        "cipher-report",
        "--image",
        s(&xray),
        "--json",
        "--plot",
        s(&plot),
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "depth",
        "ideal",
        "width",
        "height",
        "npcr_pixel",
        "uaci_pixel",
        "npcr_key",
        "uaci_key",
        "entropy_plain",
        "entropy_cipher",
        "corr_plain",
        "corr_cipher",
        "psnr_cipher_db",
        "mse_cipher",
        "mse_decrypted",
        "decrypt_exact",
    ];
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected);
    let f = |k: &str| report[k].as_f64().unwrap();
    assert_eq!((f("width"), f("height"), f("depth")), (512.0, 512.0, 8.0));
    assert_eq!(
        report["ideal"]["npcr"].as_f64().unwrap(),
        100.0 * 255.0 / 256.0
    );
    // An ideal cipher gives NPCR 99.6094 % with a standard deviation of
    // 0.012 % at 512²: 99.55 is five deviations below.
    for k in ["npcr_pixel", "npcr_key"] {
        assert!(f(k) > 99.55, "{k} = {}", f(k));
    }
    for k in ["uaci_pixel", "uaci_key"] {
        assert!((f(k) - 33.4635).abs() < 0.25, "{k} = {}", f(k));
    }
    assert!(
        f("entropy_cipher") > 7.999,
        "entropy {}",
        f("entropy_cipher")
    );
    for d in ["h", "v", "d"] {
        assert!(report["corr_cipher"][d].as_f64().unwrap().abs() < 0.01);
        assert!(report["corr_plain"][d].as_f64().unwrap() > 0.9);
    }
    assert_eq!(f("mse_decrypted"), 0.0);
    assert_eq!(report["decrypt_exact"], serde_json::Value::Bool(true));
    let drawn = image::open(&plot).unwrap();
    assert!(drawn.width() > 1000);
}

#[test]
fn bench_cipher_reports_every_figure() {
    let json = ok(&["bench-cipher", "--size", "64", "--json"]);
    let figures: serde_json::Value = serde_json::from_str(&json).unwrap();
    for k in [
        "henon_encrypt_mbps",
        "henon_encrypt_new_buffer_mbps",
        "henon_decrypt_mbps",
        "chacha20poly1305_mbps",
        "sha512_mbps",
        "seal_us",
        "open_us",
        "rsa_unwrap_us",
        "henon_to_chacha20poly1305",
        "henon_decrypt_to_chacha20poly1305",
    ] {
        assert!(figures[k].as_f64().unwrap() > 0.0, "{k}");
    }
    assert_eq!(
        (figures["depth"].as_u64(), figures["variant"].as_str()),
        (Some(8), Some("whitened"))
    );
    let json = ok(&[
        "bench-cipher",
        "--size",
        "32",
        "--depth",
        "16",
        "--variant",
        "original",
        "--json",
    ]);
    let figures: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (figures["depth"].as_u64(), figures["variant"].as_str()),
        (Some(16), Some("original"))
    );
    let out = sim(&["bench-cipher", "--depth", "12"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("give 8 or 16"));
}

#[test]
fn cipher_report_measures_a_16_bit_file_at_16_bits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.png");
    let image: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(128, 96, |x, y| Luma([((x * 16 + y * 8) * 16) as u16]));
    image.save(&path).unwrap();
    let json = ok(&["cipher-report", "--image", s(&path), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let f = |k: &str| report[k].as_f64().unwrap();
    assert_eq!(f("depth"), 16.0);
    assert!(report["decrypt_exact"].as_bool().unwrap());
    // Ideal 99.9985 % with 12 288 pixels: one unchanged pixel is 0.008 %.
    for k in ["npcr_pixel", "npcr_key"] {
        assert!(f(k) > 99.97, "{k} = {}", f(k));
    }
    for k in ["uaci_pixel", "uaci_key"] {
        assert!((f(k) - 33.33).abs() < 1.0, "{k} = {}", f(k));
    }
}

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn keystream_writes_the_raw_bytes_of_a_key_and_measures_their_bias() {
    let first = sim(&["keystream", "--key", KEY, "--bytes", "100000"]).stdout;
    assert_eq!(first.len(), 100_000);
    // Deterministic per key and variant; another key or variant, other bytes.
    assert_eq!(
        sim(&["keystream", "--key", KEY, "--bytes", "64"]).stdout,
        first[..64]
    );
    let other_key = KEY.replace("1f", "1e");
    let other = sim(&["keystream", "--key", &other_key, "--bytes", "64"]).stdout;
    let original = sim(&[
        "keystream",
        "--key",
        KEY,
        "--bytes",
        "64",
        "--variant",
        "original",
    ])
    .stdout;
    for different in [other, original] {
        let same = first.iter().zip(&different).filter(|(a, b)| a == b).count();
        assert!(same < 8, "{same} of 64 bytes equal");
    }

    let json = ok(&["keystream", "--key", KEY, "--bytes", "16777216", "--bias"]);
    let bias: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(bias["bytes"].as_u64(), Some(16 << 20));
    assert_eq!(bias["bit_z"].as_array().unwrap().len(), 64);
    assert!(bias["max_abs_z"].as_f64().unwrap() < 4.0, "{json}");

    let out = sim(&["keystream", "--key", "abc"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));
}

#[test]
fn keystream_without_a_length_stops_quietly_when_its_reader_does() {
    use std::io::Read;
    let mut child = Command::new(SIM)
        .args(["keystream", "--key", KEY])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 1 << 20];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // The read end is closed now, as when dieharder has read enough.
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unreadable_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not an image").unwrap();
    let out = sim(&["cipher-report", "--image", s(&junk)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.png"));
    let out = sim(&[
        "xray",
        "--data",
        s(&junk),
        "--out",
        s(&dir.path().join("x.png")),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a readable .npz"));
    let data = data_dir().join("pneumoniamnist.npz");
    let out = sim(&[
        "xray",
        "--data",
        s(&data),
        "--split",
        "test",
        "--out",
        s(&dir.path().join("x.png")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("test_images") && stderr.contains("train_images"),
        "{stderr}"
    );
}
