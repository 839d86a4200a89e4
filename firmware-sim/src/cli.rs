//! The `medgate-sim` command line: parses it, sets up logging and calls the
//! tools, the demo, the load generator or the gateway.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use medgate_daemon::logging;
use medgate_medmnist::SplitName;
use medgate_receiver::model::backend::BackendChoice;
use medgate_shared::header::Modality;
use medgate_shared::henon::{HenonKey, Variant};
use medgate_shared::ids::Name;
use medgate_shared::keys::DEFAULT_RSA_BITS;
use medgate_shared::pixels::MAX_DIMENSION;
use medgate_shared::quality;

use crate::broker::BrokerKind;
use crate::imageio::{self, Depth};
use crate::tools::{self, OpenFileError, SealRequest};
use crate::{bench, demo, fleet, load, report, sensor};

/// Exit status for a sealed image that was rejected (EX_DATAERR).
const EXIT_REJECTED: u8 = 65;

#[derive(Parser)]
#[command(
    name = "medgate-sim",
    version,
    about = "medgate simulator, cipher tools and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole system in one process: embedded broker (mutual TLS), receiver, gateway and
    /// simulated sensors streaming chest X-rays; one line per result, then a summary.
    Demo {
        /// Stop after this many results (default: run until Ctrl-C).
        #[arg(long)]
        images: Option<usize>,
        /// Simulated sensors.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
        sensors: u16,
        /// Frames per second of each sensor.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..=4096))]
        size: u32,
        /// The PneumoniaMNIST file (default: $MEDGATE_DATA_DIR/pneumoniamnist.npz, else what
        /// scripts/fetch-data downloaded; generated images without one).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The receiver's backend: auto, cpu or wgpu.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
    },
    /// Load benchmark: sensors → a real gateway process → broker → receivers; images/s,
    /// latency, gateway memory and CPU, and the broker's raw TLS QoS 1 ceiling in the same run.
    Load {
        /// Simulated sensors.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        sensors: u16,
        /// Images per second offered by all sensors together.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Measured seconds (after a warm-up of --warm-up seconds).
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Unmeasured seconds first.
        #[arg(long, default_value_t = 3)]
        warm_up: u64,
        /// Seconds before those in which the gateway's CPU at rest is measured: every sensor
        /// attached, none capturing.
        #[arg(long, default_value_t = 5)]
        idle: u64,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..=4096))]
        size: u32,
        /// Bits per pixel of the frames: 8, or 16 (the same X-rays widened).
        #[arg(long, default_value_t = 8, value_parser = parse_depth)]
        depth: u8,
        /// Receivers in the shared subscription group (in this process).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        receivers: u16,
        /// The receivers' backend: auto, cpu or wgpu.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// The PneumoniaMNIST file (generated images without one).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The gateway program (default: medgate-gateway beside this program, else this
        /// program's copy of the gateway).
        #[arg(long)]
        gateway_bin: Option<PathBuf>,
        /// Seconds of the ceiling measurement.
        #[arg(long, default_value_t = 10)]
        ceiling_seconds: u64,
        /// The broker: a mosquitto process (on PATH, /usr/sbin or $MOSQUITTO) with the shipped
        /// access rules and TCP_NODELAY, as a site runs it; the embedded rumqttd (no install,
        /// but no TCP_NODELAY: ~40 ms more latency); rmqtt-cluster: three rmqtt nodes
        /// (scripts/install-rmqtt, or $RMQTTD) with the shipped configs/rmqtt, the gateway on
        /// node 1 and the receivers on the others; auto: mosquitto when installed.
        #[arg(long, value_enum, default_value_t = BrokerKind::Auto)]
        broker: BrokerKind,
        /// Junk messages per second during the measured time, published with a second
        /// enrolled gateway's certificate and signing key (random bytes, images signed by
        /// a stranger, images with random wrapped keys); 0: none.
        #[arg(long, default_value_t = 0.0)]
        junk_rate: f64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The gateway's own command line (`medgate-sim gateway run --config FILE`), for the load
    /// generator when no medgate-gateway binary is at hand.
    #[command(hide = true)]
    Gateway {
        /// Arguments of medgate-gateway.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Measure the Henon cipher on an image: NPCR, UACI, entropy, correlation, PSNR.
    CipherReport {
        /// Any image the `image` crate reads (PNG, JPEG, TIFF), as gray: a
        /// 16-bit file is measured at 16 bits, anything else at 8.
        #[arg(long)]
        image: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also draw histograms and correlation scatter into this PNG.
        #[arg(long, value_name = "OUT.png")]
        plot: Option<PathBuf>,
        /// Henon key as 64 hex digits (default: bytes 00 01 … 1f).
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
    },
    /// Create a receiver key pair: DIR/receiver.pem (0600) and DIR/receiver.pub.pem.
    Keygen {
        /// Folder for the two files (created if missing; existing keys are never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// RSA modulus size.
        #[arg(long, default_value_t = DEFAULT_RSA_BITS)]
        bits: usize,
    },
    /// Seal an image file for a receiver, as a gateway would.
    Seal {
        /// The image (PNG, JPEG, TIFF; 16-bit files stay 16-bit).
        #[arg(long)]
        image: PathBuf,
        /// The receiver's public key (receiver.pub.pem).
        #[arg(long, value_name = "PUB.pem")]
        receiver_key: PathBuf,
        /// The sealing gateway's signing key (`medgate-gateway keygen`).
        #[arg(long, value_name = "IDENTITY.pem")]
        identity: PathBuf,
        /// Device name put in the header.
        #[arg(long)]
        device: Name,
        /// Where to write the sealed image.
        #[arg(long, value_name = "FILE.mge")]
        out: PathBuf,
        /// Site name.
        #[arg(long, default_value = "sim-site")]
        site: Name,
        /// Gateway name.
        #[arg(long, default_value = "sim-gateway")]
        gateway: Name,
        /// DICOM modality code.
        #[arg(long, default_value = "OT", value_parser = parse_modality)]
        modality: Modality,
        /// Per-device sequence number.
        #[arg(long, default_value_t = 1)]
        sequence: u64,
    },
    /// Verify and open a sealed image, writing it as PNG (nothing is written if it fails).
    Open {
        /// The receiver's private key (receiver.pem).
        #[arg(long, value_name = "PRIV.pem")]
        key: PathBuf,
        /// The trust list naming the sealing gateway.
        #[arg(long, value_name = "GATEWAYS.toml")]
        trust: PathBuf,
        /// The sealed image.
        #[arg(long = "in", value_name = "FILE.mge")]
        input: PathBuf,
        /// Where to write the PNG.
        #[arg(long, value_name = "FILE.png")]
        out: PathBuf,
    },
    /// Measure Henon, ChaCha20-Poly1305 and SHA-512 speed in one run, one thread.
    BenchCipher {
        /// Image side in pixels.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=i64::from(MAX_DIMENSION)))]
        size: u32,
        /// Bits per pixel: 8 or 16.
        #[arg(long, default_value_t = 8, value_parser = parse_depth)]
        depth: u8,
        /// The Henon variant: whitened (format 4, what gateways seal with)
        /// or original (formats 2 and 3, still read).
        #[arg(long, value_enum, default_value_t = VariantArg::Whitened)]
        variant: VariantArg,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write the raw Henon keystream of a key to standard output, for
    /// statistical test suites (e.g. `| dieharder -g 200 -a`).
    Keystream {
        /// Henon key as 64 hex digits.
        #[arg(long, value_name = "HEX")]
        key: String,
        /// Bytes to write; without it, until the reader closes the pipe.
        #[arg(long)]
        bytes: Option<u64>,
        /// The Henon variant.
        #[arg(long, value_enum, default_value_t = VariantArg::Whitened)]
        variant: VariantArg,
        /// Instead of the bytes, print their bias as JSON: z-scores of the
        /// share of ones per bit position, the mean per byte position and
        /// per 32-bit half (default length 1 GiB).
        #[arg(long)]
        bias: bool,
    },
    /// Export a real chest X-ray from PneumoniaMNIST as an upscaled PNG.
    Xray {
        /// The .npz file (default: $MEDGATE_DATA_DIR/pneumoniamnist.npz).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Which split: train, val or test.
        #[arg(long, default_value = "train")]
        split: SplitName,
        /// Image index within the split.
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Output side in pixels.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DIMENSION)))]
        size: u32,
        /// Where to write the PNG.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run simulated SPI image sensors serving real chest X-rays; print the results written back.
    Sensor {
        /// Socket of a sensor, for the gateway's `bus = "unix:PATH"`; repeat for more sensors.
        #[arg(long, required = true)]
        socket: Vec<PathBuf>,
        /// The .npz file (default: $MEDGATE_DATA_DIR/pneumoniamnist.npz; generated images without it).
        #[arg(long, conflicts_with = "images")]
        data: Option<PathBuf>,
        /// A folder of image files (PNG, JPEG, TIFF) to serve instead.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Frames per second per sensor (a frame waits until the gateway has it).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Image side in pixels.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65_535))]
        size: u32,
        /// Exit after this many results in total.
        #[arg(long)]
        results: Option<usize>,
    },
}

fn parse_modality(code: &str) -> Result<Modality, String> {
    Modality::from_code(code)
        .ok_or_else(|| format!("unknown modality {code:?} (e.g. DX, CR, CT, MR, US, MG, SC, OT)"))
}

/// The Henon variant on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VariantArg {
    /// Format 4: whitened keystream, runs of a row permuted.
    Whitened,
    /// Formats 2 and 3: raw mantissa bits, single pixels permuted.
    Original,
}

impl From<VariantArg> for Variant {
    fn from(arg: VariantArg) -> Self {
        match arg {
            VariantArg::Whitened => Self::Whitened,
            VariantArg::Original => Self::Original,
        }
    }
}

fn parse_depth(value: &str) -> Result<u8, String> {
    match value {
        "8" => Ok(8),
        "16" => Ok(16),
        _ => Err(format!("{value:?} is not a pixel depth: give 8 or 16")),
    }
}

fn parse_key(hex_key: &str) -> anyhow::Result<HenonKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("--key must be 64 hex digits"))?;
    Ok(HenonKey::from_bytes(bytes))
}

/// Runs the command line `args` (the program's name first) and returns the
/// process's exit status.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Gateway { args } => {
            return medgate_gateway::cli::main(
                std::iter::once(OsString::from("medgate-gateway")).chain(args),
            );
        }
        // The demo speaks on stdout; daemons only warn (RUST_LOG for more).
        Command::Demo { .. } | Command::Load { .. } => {
            logging::exit_on_panic();
            logging::init("warn,rumqttd=off");
        }
        _ => logging::init("info"),
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medgate-sim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Gateway { .. } => {
            anyhow::bail!("internal: the gateway command runs before logging starts")
        }
        Command::Demo {
            images,
            sensors,
            rate,
            size,
            data,
            backend,
        } => {
            anyhow::ensure!(rate > 0.0 && rate <= 100.0, "--rate must be in (0, 100]");
            demo::run(&demo::DemoOptions {
                sensors: usize::from(sensors),
                rate,
                size,
                images,
                data,
                backend,
            })?;
        }
        Command::Load {
            sensors,
            rate,
            duration,
            warm_up,
            idle,
            size,
            depth,
            receivers,
            backend,
            data,
            gateway_bin,
            ceiling_seconds,
            broker,
            junk_rate,
            json,
        } => {
            let report = load::run(&load::LoadOptions {
                sensors: usize::from(sensors),
                rate,
                duration: std::time::Duration::from_secs(duration.max(1)),
                warm_up: std::time::Duration::from_secs(warm_up),
                idle: std::time::Duration::from_secs(idle),
                size,
                depth,
                data,
                backend,
                receivers: usize::from(receivers),
                gateway: load::gateway_program(gateway_bin)?,
                ceiling_duration: std::time::Duration::from_secs(ceiling_seconds.max(1)),
                broker,
                junk_rate,
            })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", load::render_text(&report));
            }
        }
        Command::CipherReport {
            image,
            json,
            plot,
            key,
        } => {
            let key = match key {
                Some(hex_key) => parse_key(&hex_key)?,
                None => HenonKey::from_bytes(report::DEFAULT_KEY),
            };
            let pixels = imageio::read_gray(&image, Depth::Native)?;
            let (measured, images) = quality::report(&pixels, &key)?;
            if json {
                println!("{}", serde_json::to_string(&measured)?);
            } else {
                print!("{}", report::render_text(&measured));
            }
            if let Some(out) = plot {
                report::plot(&images, &measured, &out)
                    .map_err(|e| anyhow::anyhow!("drawing {}: {e}", out.display()))?;
                eprintln!("plot written to {}", out.display());
            }
        }
        Command::Keygen { out, bits } => {
            let (private, public) = tools::keygen(&out, bits)?;
            println!(
                "private key: {} (keep it on the receiver, mode 0600)",
                private.display()
            );
            println!("public key:  {} (give it to gateways)", public.display());
        }
        Command::Seal {
            image,
            receiver_key,
            identity,
            device,
            out,
            site,
            gateway,
            modality,
            sequence,
        } => {
            let id = tools::seal(&SealRequest {
                image,
                receiver_key,
                identity,
                site,
                gateway,
                device,
                modality,
                sequence,
                out: out.clone(),
            })?;
            println!("sealed {} as message {id}", out.display());
        }
        Command::Open {
            key,
            trust,
            input,
            out,
        } => match tools::open(&key, &trust, &input, &out) {
            Ok(header) => println!(
                "opened message {} from {}/{}/{} ({}x{} {:?}) into {}",
                header.meta.message_id,
                header.meta.site,
                header.meta.gateway,
                header.meta.device,
                header.width,
                header.height,
                header.pixel_format,
                out.display()
            ),
            Err(e @ OpenFileError::Rejected { .. }) => {
                eprintln!("medgate-sim: {e}; nothing was written");
                return Ok(ExitCode::from(EXIT_REJECTED));
            }
            Err(OpenFileError::Other(e)) => return Err(e),
        },
        Command::Keystream {
            key,
            bytes,
            variant,
            bias,
        } => {
            let key = parse_key(&key)?;
            if bias {
                let report = tools::keystream_bias(&key, variant.into(), bytes.unwrap_or(1 << 30));
                println!("{}", serde_json::to_string(&report)?);
            } else {
                tools::write_keystream(&key, variant.into(), bytes, &mut std::io::stdout().lock())?;
            }
        }
        Command::BenchCipher {
            size,
            depth,
            variant,
            json,
        } => {
            let figures = bench::run(size, depth, variant.into())?;
            if json {
                println!("{}", serde_json::to_string(&figures)?);
            } else {
                print!("{}", bench::render_text(&figures));
            }
        }
        Command::Xray {
            data,
            split,
            index,
            size,
            out,
        } => {
            let data = tools::dataset_path(data)?;
            let label = tools::export_xray(&data, split, index, size, &out)?;
            let class = if label == 1 { "pneumonia" } else { "normal" };
            println!(
                "wrote {} ({} #{index}, label {label} = {class})",
                out.display(),
                split.as_str()
            );
        }
        Command::Sensor {
            socket,
            data,
            images,
            rate,
            size,
            results,
        } => {
            let feed = match images {
                Some(dir) => sensor::Feed::from_folder(&dir, size)?,
                None => match tools::dataset_path(data) {
                    Ok(path) if path.exists() => {
                        sensor::Feed::from_npz(&path, SplitName::Train, size, 256)?
                    }
                    _ => {
                        eprintln!(
                            "no PneumoniaMNIST file found (set MEDGATE_DATA_DIR or --data): serving generated test images"
                        );
                        sensor::Feed::generated(size, 16)
                    }
                },
            };
            fleet::run(&socket, feed, rate, results)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
