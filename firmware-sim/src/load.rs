//! `medgate-sim load`: the load generator. Simulated sensors capture at a set
//! total rate through a real `medgate-gateway` process, a broker (embedded
//! rumqttd, or mosquitto with the shipped access rules; mutual TLS either
//! way) and in-process receivers; it reports the images answered
//! per second end to end, capture→result latency percentiles, the gateway
//! process's memory, the CPU of each process per answered image, and, in the
//! same run and through the same
//! broker, the ceiling: plain TLS QoS 1 publication of the same sealed
//! payloads from one client to another, with the ratio of the two.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use medgate_gateway::spool::Spool;
use medgate_medmnist::SplitName;
use medgate_receiver::model::backend::BackendChoice;
use medgate_shared::header::{ImageMeta, Modality};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::ids::{MessageId, Name};
use medgate_shared::keys::ReceiverPublicKey;
use medgate_shared::seal::{RotationPolicy, Sealer};
use medgate_testkit::{forge, procstat};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event};
use serde::Serialize;

use crate::broker::BrokerKind;
use crate::sensor::Feed;
use crate::stats::{Latencies, Percentiles};
use crate::system::{GatewayMode, JUNK_GATEWAY, Options, SITE, System};
use crate::tools;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Simulated sensors.
    pub sensors: usize,
    /// Images per second offered by all sensors together.
    pub rate: f64,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Unmeasured time first (connections, first batches).
    pub warm_up: Duration,
    /// Before that, how long the gateway's CPU is measured with every
    /// sensor attached and none capturing.
    pub idle: Duration,
    /// Image side in pixels.
    pub size: u32,
    /// Bits per pixel of the sensors' frames (8 or 16).
    pub depth: u8,
    /// The PneumoniaMNIST file, if not the default place.
    pub data: Option<PathBuf>,
    /// The receiver's backend.
    pub backend: BackendChoice,
    /// Receivers in the group.
    pub receivers: usize,
    /// The gateway program and its arguments before `run`.
    pub gateway: (PathBuf, Vec<String>),
    /// How long the ceiling is measured.
    pub ceiling_duration: Duration,
    /// The broker.
    pub broker: BrokerKind,
    /// Junk messages per second published during the measured time (0:
    /// none), as an enrolled gateway whose certificate and signing key were
    /// stolen would.
    pub junk_rate: f64,
}

/// The load report (`--json` prints it as one object).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The broker.
    pub broker: String,
    /// Simulated sensors.
    pub sensors: usize,
    /// Receivers.
    pub receivers: usize,
    /// The receivers' backend.
    pub backend: String,
    /// Image side.
    pub size: u32,
    /// Bits per pixel.
    pub depth: u8,
    /// Bytes of one sealed image.
    pub sealed_bytes: usize,
    /// Images per second offered.
    pub offered_per_s: f64,
    /// Measured seconds.
    pub seconds: f64,
    /// Frames captured in the measured time.
    pub captured: u64,
    /// Clock ticks without a capture because the previous frame still
    /// waited for the gateway (back-pressure).
    pub missed_ticks: u64,
    /// Results that reached their sensor in the measured time.
    pub answered: u64,
    /// Images answered per second, end to end.
    pub images_per_s: f64,
    /// Frames of the whole run (warm-up included) still without a result
    /// after capture stopped and the drain ended: lost by the broker, or a
    /// backlog longer than the drain when the offered rate is above what
    /// the system answers. The gateway's result timeout is longer than the
    /// drain, so its re-publication does not hide a loss.
    pub unanswered: u64,
    /// Capture→result latency of those results.
    pub latency_ms: Option<Percentiles>,
    /// The gateway process.
    pub gateway: GatewayFootprint,
    /// CPU over the measured time of every process of the run, and of
    /// this simulator's two halves: the gateway, the broker when it is a
    /// process of its own (mosquitto), the simulated sensors (this
    /// simulator's threads named `sensor-…`), and the rest of this
    /// simulator (the receivers, their runtime, an embedded broker).
    pub processes: Vec<ProcessCpu>,
    /// What the gateway's own work on an image costs, measured in this run
    /// on the same machine: sealing it and storing it durably.
    pub reference: Reference,
    /// The gateway's CPU per answered image ÷ the reference's seal plus
    /// spool write (the goal is at most 2).
    pub gateway_ratio_of_reference: f64,
    /// The same broker's plain TLS QoS 1 delivery of the same payloads.
    pub ceiling: Ceiling,
    /// `images_per_s / ceiling.messages_per_s`.
    pub ratio_of_ceiling: f64,
    /// Junk offered per second during the measured time.
    pub junk_offered_per_s: f64,
    /// Junk messages published.
    pub junk_sent: u64,
}

/// The gateway process's footprint during the measured time.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayFootprint {
    /// Its program.
    pub program: String,
    /// Median resident set, MB.
    pub rss_median_mb: f64,
    /// Peak resident set (VmHWM), MB.
    pub rss_peak_mb: f64,
    /// CPU time over wall time, percent of one core.
    pub cpu_percent: f64,
    /// Its CPU at rest, percent of one core: every sensor attached, no
    /// frame, before the load starts.
    pub idle_cpu_percent: f64,
    /// How long that was measured, s.
    pub idle_seconds: f64,
    /// Bus requests per second and sensor at rest (a host polling
    /// data-ready every 5 ms would make 200).
    pub idle_bus_requests_per_s: f64,
}

/// One process's CPU over the measured time.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    /// What runs in it.
    pub name: String,
    /// CPU time over wall time, percent of one core.
    pub cpu_percent: f64,
    /// CPU milliseconds per image answered in that time (0 if none was).
    pub cpu_ms_per_image: f64,
}

/// The gateway's unavoidable work on one image, as its own code does it:
/// [`Sealer::seal`] and [`Spool::put`] (write, fsync, rename, fsync of the
/// folder) into a spool on the same file system, on one thread of this
/// process, CPU time per image.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    /// Images sealed.
    pub images: usize,
    /// Of those, stored.
    pub stored: usize,
    /// CPU ms to seal one.
    pub seal_ms: f64,
    /// CPU ms to store one durably.
    pub spool_put_ms: f64,
    /// Wall ms to store one durably (the disk's fsync included).
    pub spool_put_wall_ms: f64,
}

/// Images the reference seals, at least.
const REFERENCE_IMAGES: usize = 16;
/// How long the reference seals, at least.
const REFERENCE_SEALING: Duration = Duration::from_secs(1);
/// Bytes of sealed images the reference keeps to store, at most.
const REFERENCE_BYTES: usize = 256 << 20;

/// The ceiling measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Messages published.
    pub messages: u64,
    /// Of those, never delivered (the embedded rumqttd drops QoS 1
    /// messages under load; medgate's gateway publishes again what gets no
    /// result, the raw ceiling does not).
    pub lost: u64,
    /// Messages delivered to the subscriber per second.
    pub messages_per_s: f64,
    /// Publish→delivery latency at that saturation, ms.
    pub latency_ms: Option<Percentiles>,
    /// Publications unacknowledged by the broker, at most (the gateway's
    /// `mqtt.max_inflight`).
    pub in_flight: u16,
    /// Messages published and not yet delivered, at most.
    pub window: usize,
}

/// The ceiling's messages published and not yet delivered, at most.
const CEILING_WINDOW: usize = 64;

/// How long the ceiling waits for a place in its window before it counts
/// one as lost and publishes anyway.
const LOST_AFTER: Duration = Duration::from_secs(1);

/// How often the gateway's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How long the gateway may take to attach to every sensor.
const ATTACH: Duration = Duration::from_secs(30);

/// How long results of frames captured before the end may still arrive.
const DRAIN: Duration = Duration::from_secs(10);

// A frame the broker lost must not be answered through the gateway's
// re-publication before the drain ends.
const _: () = assert!(crate::system::RESULT_TIMEOUT_SECS > DRAIN.as_secs());

/// Runs the load and returns the report.
///
/// # Errors
/// If the system does not start, a daemon fails, or the ceiling's clients
/// cannot connect.
pub fn run(options: &LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(options.sensors > 0, "--sensors must be at least 1");
    anyhow::ensure!(
        options.rate > 0.0 && options.rate <= 10_000.0,
        "--rate must be in (0, 10000] images/s"
    );
    anyhow::ensure!(
        (0.0..=100_000.0).contains(&options.junk_rate),
        "--junk-rate must be in [0, 100000] messages/s"
    );
    let feed = match tools::dataset_path(options.data.clone()) {
        Ok(path) if path.exists() => Feed::from_npz(&path, SplitName::Val, options.size, 64)?,
        _ => Feed::generated(options.size, 16),
    };
    let feed = match options.depth {
        8 => feed,
        16 => feed.widened()?,
        other => anyhow::bail!("--depth {other}: give 8 or 16"),
    };
    let (program, args) = options.gateway.clone();
    let mut system = System::start(&Options {
        sensors: options.sensors,
        rate: options.rate / options.sensors as f64,
        feed: feed.clone(),
        receivers: options.receivers,
        backend: options.backend,
        max_batch: 32,
        gateway: GatewayMode::Process {
            program: program.clone(),
            args,
        },
        broker: options.broker,
        junk_gateway: options.junk_rate > 0.0,
        paused: true,
    })?;
    let pid = system
        .gateway_pid()
        .context("the gateway runs as a process")?;

    // At rest: the gateway attached to every sensor, no frame.
    let attached = Instant::now() + ATTACH;
    while !system.sensors().iter().all(|s| s.watched()) {
        ensure_running(&mut system)?;
        anyhow::ensure!(
            Instant::now() < attached,
            "the gateway did not attach to every sensor within {} s",
            ATTACH.as_secs()
        );
        std::thread::sleep(SAMPLE_EVERY);
    }
    let requests = |system: &System| system.sensors().iter().map(|s| s.requests()).sum::<u64>();
    let (idle_from, idle_ticks, idle_requests) =
        (Instant::now(), procstat::cpu_ticks(pid), requests(&system));
    while idle_from.elapsed() < options.idle {
        ensure_running(&mut system)?;
        std::thread::sleep(SAMPLE_EVERY);
    }
    let idle_seconds = idle_from.elapsed().as_secs_f64();
    let idle_requests = requests(&system) - idle_requests;
    let idle_cpu_seconds =
        procstat::cpu_ticks(pid).saturating_sub(idle_ticks) as f64 / procstat::clock_ticks();
    for sensor in system.sensors() {
        sensor.start_capturing();
    }

    // Warm-up: connections, the first batches, page cache.
    let until = Instant::now() + options.warm_up;
    while Instant::now() < until {
        ensure_running(&mut system)?;
        std::thread::sleep(SAMPLE_EVERY);
    }

    let stop_junk = Arc::new(AtomicBool::new(false));
    let junk = if options.junk_rate > 0.0 {
        Some(junk(&system, options.junk_rate, stop_junk.clone())?)
    } else {
        None
    };
    let before: Vec<_> = system.sensors().iter().map(|s| s.log()).collect();
    let mut measured = vec![(
        format!("gateway ({})", program.display()),
        pid,
        procstat::cpu_ticks(pid),
    )];
    for (name, broker) in system.broker().processes() {
        measured.push((name, broker, procstat::cpu_ticks(broker)));
    }
    let me = std::process::id();
    let simulator = procstat::cpu_ticks(me);
    let threads = procstat::thread_cpu_ticks(me);
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < options.duration {
        ensure_running(&mut system)?;
        rss.push(procstat::status_kb(pid, "VmRSS:"));
        std::thread::sleep(SAMPLE_EVERY);
    }
    let seconds = started.elapsed().as_secs_f64();
    let after: Vec<_> = system.sensors().iter().map(|s| s.log()).collect();
    stop_junk.store(true, Ordering::SeqCst);
    let junk_sent = match junk {
        Some(thread) => thread
            .join()
            .map_err(|_| anyhow::anyhow!("the junk thread panicked"))??,
        None => 0,
    };
    let hz = procstat::clock_ticks();
    // Seconds of CPU over the measured time, by process and part.
    let mut cpu_seconds: Vec<(String, f64)> = measured
        .into_iter()
        .map(|(name, pid, before)| {
            let seconds = procstat::cpu_ticks(pid).saturating_sub(before) as f64 / hz;
            (name, seconds)
        })
        .collect();
    let gateway_cpu = cpu_seconds.first().map_or(0.0, |(_, s)| *s);
    // This simulator, split by thread: the sensors' threads, and the rest.
    let simulator = procstat::cpu_ticks(me).saturating_sub(simulator) as f64 / hz;
    let sensors = procstat::thread_cpu_ticks(me)
        .iter()
        .filter(|t| t.name.starts_with("sensor-"))
        .map(|t| {
            let before = threads
                .iter()
                .find(|b| b.tid == t.tid)
                .map_or(0, |b| b.ticks);
            t.ticks.saturating_sub(before)
        })
        .sum::<u64>() as f64
        / hz;
    cpu_seconds.push((
        "simulated sensors (the simulator's threads sensor-…)".to_owned(),
        sensors,
    ));
    cpu_seconds.push((
        if system.broker().processes().is_empty() {
            "receivers and embedded broker (the rest of the simulator)".to_owned()
        } else {
            "receivers (the rest of the simulator)".to_owned()
        },
        (simulator - sensors).max(0.0),
    ));
    let peak_kb = procstat::status_kb(pid, "VmHWM:");
    rss.sort_unstable();

    let mut latencies = Latencies::default();
    let (mut captured, mut missed, mut answered) = (0u64, 0u64, 0u64);
    for (then, now) in before.iter().zip(&after) {
        captured += u64::from(now.produced - then.produced);
        missed += u64::from(now.missed - then.missed);
        answered += (now.results.len() - then.results.len()) as u64;
        latencies.extend(now.latencies[then.latencies.len()..].iter().copied());
    }
    // No more frames; let what was captured be answered before the gateway
    // goes, so that what stays unanswered was lost (or, above what the
    // system answers, a backlog longer than the drain) and the ceiling runs
    // on a quiet broker.
    for sensor in system.sensors() {
        sensor.stop_capturing();
    }
    let drained = Instant::now() + DRAIN;
    while Instant::now() < drained
        && system
            .sensors()
            .iter()
            .map(|s| s.log())
            .any(|log| (log.results.len() as u32) < log.produced)
    {
        ensure_running(&mut system)?;
        std::thread::sleep(SAMPLE_EVERY);
    }
    let unanswered = system
        .sensors()
        .iter()
        .map(|s| s.log())
        .map(|log| u64::from(log.produced).saturating_sub(log.results.len() as u64))
        .sum();
    system.stop_gateway_process();

    let reference = reference(&system, &feed)?;
    let payloads = sealed_payloads(&system, &feed)?;
    let sealed_bytes = payloads.first().map_or(0, Vec::len);
    let ceiling = ceiling(&system, payloads, options.ceiling_duration)?;
    let images_per_s = answered as f64 / seconds;
    let gateway_ms_per_image = if answered > 0 {
        1000.0 * gateway_cpu / answered as f64
    } else {
        0.0
    };
    let reference_ms = reference.seal_ms + reference.spool_put_ms;
    let report = LoadReport {
        broker: system.broker().describe().to_owned(),
        sensors: options.sensors,
        receivers: options.receivers,
        backend: system.backend().to_owned(),
        size: options.size,
        depth: options.depth,
        sealed_bytes,
        offered_per_s: options.rate,
        seconds,
        captured,
        missed_ticks: missed,
        answered,
        images_per_s,
        unanswered,
        latency_ms: latencies.summary_ms(),
        gateway: GatewayFootprint {
            program: program.display().to_string(),
            rss_median_mb: rss.get(rss.len() / 2).copied().unwrap_or(0) as f64 / 1024.0,
            rss_peak_mb: peak_kb as f64 / 1024.0,
            cpu_percent: 100.0 * gateway_cpu / seconds,
            idle_cpu_percent: 100.0 * idle_cpu_seconds / idle_seconds,
            idle_seconds,
            idle_bus_requests_per_s: idle_requests as f64 / idle_seconds / options.sensors as f64,
        },
        processes: cpu_seconds
            .into_iter()
            .map(|(name, cpu)| ProcessCpu {
                name,
                cpu_percent: 100.0 * cpu / seconds,
                cpu_ms_per_image: if answered > 0 {
                    1000.0 * cpu / answered as f64
                } else {
                    0.0
                },
            })
            .collect(),
        junk_offered_per_s: options.junk_rate,
        junk_sent,
        gateway_ratio_of_reference: if reference_ms > 0.0 {
            gateway_ms_per_image / reference_ms
        } else {
            0.0
        },
        reference,
        ratio_of_ceiling: if ceiling.messages_per_s > 0.0 {
            images_per_s / ceiling.messages_per_s
        } else {
            0.0
        },
        ceiling,
    };
    system.shutdown()?;
    Ok(report)
}

fn ensure_running(system: &mut System) -> anyhow::Result<()> {
    if system.interrupted() {
        anyhow::bail!("interrupted");
    }
    match system.failed() {
        Some(failure) => Err(anyhow::anyhow!("{failure}")),
        None => Ok(()),
    }
}

/// Seals the feed's images for [`REFERENCE_SEALING`] (at least
/// [`REFERENCE_IMAGES`] of them), keeping the first up to
/// [`REFERENCE_BYTES`], then stores those in a spool beside the gateway's,
/// as the gateway does: the two phases timed apart, each by this thread's
/// CPU time (which lags by up to a scheduler tick while the thread runs:
/// nothing over a second of sealing, and nothing for the spool writes,
/// each of which ends asleep in an fsync).
fn reference(system: &System, feed: &Feed) -> anyhow::Result<Reference> {
    let public = ReceiverPublicKey::read(system.receiver_public_key())?;
    let mut sealer = Sealer::new(
        public,
        GatewayIdentity::generate(),
        RotationPolicy::default(),
    );
    let dir = tempfile::Builder::new()
        .prefix("medgate-reference-spool-")
        .tempdir()
        .context("the reference spool's folder")?;
    let (mut spool, _) = Spool::open(dir.path(), u64::MAX)?;
    let name = |text: &str| Name::new(text).map_err(anyhow::Error::from);
    let mut meta = ImageMeta {
        message_id: MessageId::random(),
        site: name("bench")?,
        gateway: name("reference")?,
        device: name("raw")?,
        epoch: 0,
        sequence: 0,
        captured_at_ms: 0,
        modality: Modality::Dx,
        model_hint: None,
        anatomy: Default::default(),
    };
    // The first seal draws and wraps the session key (once per rotation
    // in the gateway too): untimed.
    let first = feed.images().first().context("the feed has no image")?;
    sealer.seal(&meta, first)?;

    let (mut kept, mut kept_bytes, mut sealed) = (Vec::new(), 0usize, 0usize);
    let (wall, cpu) = (Instant::now(), procstat::thread_cpu_ns());
    for image in feed.images().iter().cycle() {
        if sealed >= REFERENCE_IMAGES && wall.elapsed() >= REFERENCE_SEALING {
            break;
        }
        meta.message_id = MessageId::random();
        meta.sequence += 1;
        let image = sealer.seal(&meta, image)?;
        sealed += 1;
        if kept_bytes + image.bytes.len() <= REFERENCE_BYTES || kept.is_empty() {
            kept_bytes += image.bytes.len();
            kept.push(image);
        }
    }
    let seal_ns = procstat::thread_cpu_ns().saturating_sub(cpu);

    let (wall, cpu) = (Instant::now(), procstat::thread_cpu_ns());
    for image in &kept {
        spool.put(image)?;
    }
    let put_ns = procstat::thread_cpu_ns().saturating_sub(cpu);
    let put_wall = wall.elapsed();
    let ms = |ns: u64, n: usize| ns as f64 / 1e6 / n as f64;
    Ok(Reference {
        images: sealed,
        stored: kept.len(),
        seal_ms: ms(seal_ns, sealed),
        spool_put_ms: ms(put_ns, kept.len()),
        spool_put_wall_ms: ms(put_wall.as_nanos() as u64, kept.len()),
    })
}

/// The feed's images sealed as the gateway seals them.
fn sealed_payloads(system: &System, feed: &Feed) -> anyhow::Result<Vec<Vec<u8>>> {
    let public = ReceiverPublicKey::read(system.receiver_public_key())?;
    // Outside the topic tree no receiver reads, so any identity will do.
    let mut sealer = Sealer::new(
        public,
        GatewayIdentity::generate(),
        RotationPolicy::default(),
    );
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let name = |text: &str| Name::new(text).map_err(anyhow::Error::from);
    let (site, gateway, device) = (name("bench")?, name("ceiling")?, name("raw")?);
    feed.images()
        .iter()
        .take(16)
        .enumerate()
        .map(|(k, image)| {
            let meta = ImageMeta {
                message_id: MessageId::random(),
                site: site.clone(),
                gateway: gateway.clone(),
                device: device.clone(),
                epoch: 0,
                sequence: k as u64,
                captured_at_ms: now_ms,
                modality: Modality::Dx,
                model_hint: None,
                anatomy: Default::default(),
            };
            Ok(sealer.seal(&meta, image)?.bytes)
        })
        .collect()
}

/// Starts publishing junk at `rate` messages/s as [`JUNK_GATEWAY`] (its
/// certificate, its enrolled signing key) on its own images topic until
/// `stop`, in turn: random bytes (`malformed`), an image signed by a key
/// nobody enrolled (`unknown_gateway`), and an image it signed itself whose
/// wrapped key is random, a new key id every time (`unknown_key`, or
/// `key_rate_limited` once its allowance of unwraps is spent: without that
/// allowance each would cost the receiver an RSA operation). QoS 0, from
/// its own thread and runtime. The thread returns how many it published.
fn junk(
    system: &System,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<u64>>> {
    use rand::RngCore;

    let identity_file = system
        .junk_identity()
        .context("the junk gateway is not enrolled")?;
    let enrolled = GatewayIdentity::read(identity_file)?;
    let public = ReceiverPublicKey::read(system.receiver_public_key())?;
    let name = |text: &str| Name::new(text).map_err(anyhow::Error::from);
    let meta = ImageMeta {
        message_id: MessageId::random(),
        site: name(SITE)?,
        gateway: name(JUNK_GATEWAY)?,
        device: name("junk")?,
        epoch: 1,
        sequence: 1,
        captured_at_ms: 0,
        modality: Modality::Dx,
        model_hint: None,
        anatomy: Default::default(),
    };
    let pixels = medgate_shared::pixels::Pixels::new(
        28,
        28,
        medgate_shared::pixels::PixelFormat::Gray8,
        vec![7; 28 * 28],
    )?;
    let stranger = Sealer::new(
        public.clone(),
        GatewayIdentity::generate(),
        RotationPolicy::default(),
    )
    .seal(&meta, &pixels)?
    .bytes;
    let own = Sealer::new(public, enrolled.clone(), RotationPolicy::default())
        .seal(&meta, &pixels)?
        .bytes;
    let wrapped_len = medgate_shared::envelope::parse(&own)?.wrapped_key.len();
    let (settings, tls) = system.client(JUNK_GATEWAY)?;
    let topic = format!("medgate/v1/{SITE}/{JUNK_GATEWAY}/images/junk");
    let thread = std::thread::Builder::new()
        .name("junk".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let (client, mut events) =
                    AsyncClient::new(settings.options(JUNK_GATEWAY, &tls), 4096);
                tokio::spawn(async move { while events.poll().await.is_ok() {} });
                let mut rng = rand::thread_rng();
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                let started = Instant::now();
                let mut sent = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let due = (started.elapsed().as_secs_f64() * rate) as u64;
                    while sent < due {
                        let payload = match sent % 3 {
                            0 => {
                                let mut noise = vec![0u8; 600];
                                rng.fill_bytes(&mut noise);
                                noise
                            }
                            1 => stranger.clone(),
                            _ => {
                                let mut wrapped = vec![0u8; wrapped_len];
                                rng.fill_bytes(&mut wrapped);
                                forge::with_wrapped_key(&own, &enrolled, &wrapped)?
                            }
                        };
                        // A full client queue drops this one: junk is junk.
                        let _ = client.try_publish(topic.clone(), QoS::AtMostOnce, false, payload);
                        sent += 1;
                    }
                }
                let _ = client.disconnect().await;
                Ok(sent)
            })
        })?;
    Ok(thread)
}

/// Publishes `payloads` round and round for `duration` from one client to
/// another through the system's broker, QoS 1 both ways, with as many
/// publications in flight as the gateway allows itself.
fn ceiling(system: &System, payloads: Vec<Vec<u8>>, duration: Duration) -> anyhow::Result<Ceiling> {
    anyhow::ensure!(!payloads.is_empty(), "no payloads for the ceiling");
    // Outside medgate's topic tree: no receiver subscribes to it.
    const TOPIC: &str = "medgate-bench/ceiling";
    let (pub_settings, pub_tls) = system.client("ceiling-pub")?;
    let (sub_settings, sub_tls) = system.client("ceiling-sub")?;
    let in_flight = pub_settings.max_inflight;
    system.runtime().block_on(async move {
        let mut sub_options = sub_settings.options("ceiling-sub", &sub_tls);
        sub_options.set_clean_start(true);
        sub_options.set_receive_maximum(Some(in_flight));
        let (subscriber, mut sub_loop) = AsyncClient::new(sub_options, 64);
        subscriber.subscribe(TOPIC, QoS::AtLeastOnce).await?;
        let delivered = Arc::new(AtomicU64::new(0));
        // Messages published but not yet delivered, at most: the broker
        // must not build a backlog, so the ceiling is a sustainable rate.
        // A lost message gives its place back after a while.
        let window = Arc::new(tokio::sync::Semaphore::new(CEILING_WINDOW));
        let returned = window.clone();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let (arrivals_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
        let counter = delivered.clone();
        let sub_task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match sub_loop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let index = publish
                            .payload
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map_or(u64::MAX, u64::from_le_bytes);
                        counter.fetch_add(1, Ordering::SeqCst);
                        returned.add_permits(1);
                        let _ = arrivals_tx.send((index, Instant::now()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return anyhow::Result::<()>::Err(anyhow::anyhow!(
                            "ceiling subscriber: {e}"
                        ));
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), subscribed_rx)
            .await
            .context("the ceiling's subscriber did not subscribe")??;

        let mut pub_options = pub_settings.options("ceiling-pub", &pub_tls);
        pub_options.set_clean_start(true);
        let (publisher, mut pub_loop) = AsyncClient::new(pub_options, 64);
        let pub_task = tokio::spawn(async move {
            loop {
                if let Err(e) = pub_loop.poll().await {
                    return anyhow::Result::<()>::Err(anyhow::anyhow!("ceiling publisher: {e}"));
                }
            }
        });
        let started = Instant::now();
        let mut sent_at = Vec::new();
        while started.elapsed() < duration {
            let index = sent_at.len() as u64;
            // The payload is the sealed image, its first 8 bytes replaced
            // by the publication's index (to pair it with its arrival).
            let mut payload = payloads[index as usize % payloads.len()].clone();
            if let Some(head) = payload.get_mut(..8) {
                head.copy_from_slice(&index.to_le_bytes());
            }
            // A lost message never gives its place back: wait a while only.
            if let Ok(permit) = tokio::time::timeout(LOST_AFTER, window.acquire()).await {
                permit?.forget();
            }
            sent_at.push(Instant::now());
            publisher
                .publish(TOPIC, QoS::AtLeastOnce, false, payload)
                .await?;
        }
        let sent = sent_at.len() as u64;
        let deadline = Instant::now() + DRAIN;
        while delivered.load(Ordering::SeqCst) < sent && Instant::now() < deadline {
            if sub_task.is_finished() || pub_task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut latencies = Latencies::default();
        let mut last = started;
        while let Ok((index, at)) = arrivals.try_recv() {
            if let Some(sent) = sent_at.get(index as usize) {
                latencies.push(at.duration_since(*sent));
            }
            last = last.max(at);
        }
        let _ = publisher.disconnect().await;
        let _ = subscriber.disconnect().await;
        pub_task.abort();
        sub_task.abort();
        let received = latencies.len() as u64;
        anyhow::ensure!(
            received > 0,
            "the ceiling's subscriber got none of {sent} messages"
        );
        Ok(Ceiling {
            messages: sent,
            lost: sent - received,
            messages_per_s: received as f64 / last.duration_since(started).as_secs_f64().max(1e-9),
            latency_ms: latencies.summary_ms(),
            in_flight,
            window: CEILING_WINDOW,
        })
    })
}

/// The report as text.
pub fn render_text(report: &LoadReport) -> String {
    let latency = |p: Option<Percentiles>| {
        p.map_or_else(
            || "none".to_owned(),
            |p| {
                format!(
                    "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    p.p50, p.p90, p.p99, p.max
                )
            },
        )
    };
    format!(
        "load: {} sensor(s), {:.1} images/s offered, {}×{} at {} bits ({} bytes sealed), {} receiver(s) on {}, broker {}\n\
         end to end:   {:.1} images/s answered ({} of {} captured in {:.1} s; {} missed clock ticks; {} unanswered after {} s of drain)\n\
         latency:      capture→result {}\n\
         gateway:      RSS median {:.1} MB, peak {:.1} MB, CPU {:.1}% of one core ({})\n\
         at rest:      gateway CPU {:.2}% of one core over {:.1} s, every sensor attached, no frame; {:.1} bus requests/s per sensor\n\
         {}\
         reference:    sealing {:.2} ms + spool write {:.2} ms CPU per image ({:.2} ms wall with fsync; {} sealed, {} stored, one thread of this process); the gateway's CPU per answered image is {:.1}× that\n\
         ceiling:      {:.1} messages/s (TLS QoS 1, {} in flight, at most {} undelivered, same broker, same payloads; {} of {} lost), {}\n\
         ratio:        {:.2} of the ceiling\n\
         junk:         {:.0} messages/s offered, {} published during the measured time\n",
        report.sensors,
        report.offered_per_s,
        report.size,
        report.size,
        report.depth,
        report.sealed_bytes,
        report.receivers,
        report.backend,
        report.broker,
        report.images_per_s,
        report.answered,
        report.captured,
        report.seconds,
        report.missed_ticks,
        report.unanswered,
        DRAIN.as_secs(),
        latency(report.latency_ms),
        report.gateway.rss_median_mb,
        report.gateway.rss_peak_mb,
        report.gateway.cpu_percent,
        report.gateway.program,
        report.gateway.idle_cpu_percent,
        report.gateway.idle_seconds,
        report.gateway.idle_bus_requests_per_s,
        report
            .processes
            .iter()
            .map(|p| format!(
                "cpu:          {:.1} ms per answered image, {:.1}% of one core: {}\n",
                p.cpu_ms_per_image, p.cpu_percent, p.name
            ))
            .collect::<String>(),
        report.reference.seal_ms,
        report.reference.spool_put_ms,
        report.reference.spool_put_wall_ms,
        report.reference.images,
        report.reference.stored,
        report.gateway_ratio_of_reference,
        report.ceiling.messages_per_s,
        report.ceiling.in_flight,
        report.ceiling.window,
        report.ceiling.lost,
        report.ceiling.messages,
        latency(report.ceiling.latency_ms),
        report.ratio_of_ceiling,
        report.junk_offered_per_s,
        report.junk_sent,
    )
}

/// The gateway the load generator starts: `--gateway-bin`, else the
/// `medgate-gateway` built beside this program, else this program's copy.
///
/// # Errors
/// If `explicit` is not a file, or this program's path is unknown.
pub fn gateway_program(explicit: Option<PathBuf>) -> anyhow::Result<(PathBuf, Vec<String>)> {
    if let Some(program) = explicit {
        anyhow::ensure!(
            program.is_file(),
            "--gateway-bin {}: no such file",
            program.display()
        );
        return Ok((program, Vec::new()));
    }
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("medgate-gateway");
    if beside.is_file() {
        Ok((beside, Vec::new()))
    } else {
        Ok((me, vec!["gateway".to_owned()]))
    }
}
