//! `medgate-sim sensor` as a process, driven by the gateway's embedded-hal
//! driver over the virtual SPI bus: frames come out of the register map,
//! FRAME_DONE releases them, and a RESULT written back is printed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use medgate_gateway::sources::spi::driver::SpiSensor;
use medgate_gateway::sources::spi::registers::ResultRecord;
use medgate_gateway::sources::spi::virtual_bus::VirtualBus;

const SIM: &str = env!("CARGO_BIN_EXE_medgate-sim");

fn connect(
    socket: &Path,
) -> SpiSensor<VirtualBus, medgate_gateway::sources::spi::virtual_bus::VirtualPin> {
    // The process creates the socket once it listens; wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bus) = VirtualBus::connect(socket) {
            let pin = VirtualBus::pin(socket).unwrap();
            return SpiSensor::new(bus, pin).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the simulated sensor never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_simulated_sensor_serves_folder_images_and_prints_results() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let picture = image::GrayImage::from_fn(40, 30, |x, y| image::Luma([(x * 3 + y) as u8]));
    picture.save(images.join("a.png")).unwrap();
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let socket = dir.path().join("xr-7.sock");
    let mut child = Command::new(SIM)
        .args(["sensor", "--socket", socket.to_str().unwrap(), "--images"])
        .arg(&images)
        .args(["--size", "32", "--rate", "50", "--results", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sensor = connect(&socket);
    let mut frames = Vec::new();
    while frames.len() < 2 {
        if !sensor.frame_ready().unwrap() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let frame = sensor.read_frame(u64::MAX).unwrap();
        assert_eq!((frame.pixels.width(), frame.pixels.height()), (32, 32));
        // Until FRAME_DONE the sensor keeps offering the same frame.
        assert!(sensor.frame_ready().unwrap());
        sensor.frame_done().unwrap();
        frames.push(frame.frame);
    }
    assert_eq!(frames, [1, 2]);
    for (frame, class) in [(1, 1u8), (2, 0u8)] {
        sensor
            .write_result(ResultRecord {
                frame,
                class,
                confidence: 9312,
                flags: 0,
            })
            .unwrap();
    }
    let out = BufReader::new(child.stdout.take().unwrap());
    let lines: Vec<String> = out.lines().map(Result::unwrap).collect();
    assert_eq!(
        lines,
        [
            "xr-7 frame 1: pneumonia (0.9312)",
            "xr-7 frame 2: normal (0.9312)"
        ]
    );
    assert!(child.wait().unwrap().success());
}
