//! Choosing where the model runs, once, at start.
//!
//! - `wgpu`: Burn's wgpu backend on whatever adapter wgpu offers, a real GPU
//!   or, without one, Mesa's software Vulkan (lavapipe).
//! - `cpu`: Burn's Flex backend, pure Rust.
//! - `auto`: wgpu when a hardware adapter (discrete, integrated or virtual
//!   GPU) exists, else the CPU backend: a software adapter is slower than
//!   Flex, so it is never picked automatically.

use std::fmt;

use burn::tensor::{Device, DeviceKind, Tensor};
use serde::{Deserialize, Serialize};

/// The backend asked for on the command line or in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// wgpu on a hardware GPU if there is one, else the CPU.
    Auto,
    /// wgpu on any adapter, software included.
    Wgpu,
    /// The pure-Rust CPU backend (Flex).
    Cpu,
}

/// The backend actually used.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The device tensors are created on.
    pub device: Device,
    /// `"wgpu"` or `"cpu"`, as reported in results.
    pub name: &'static str,
    /// The wgpu adapter, when known: name and type.
    pub adapter: Option<String>,
}

impl fmt::Display for Selected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.adapter {
            Some(adapter) => write!(f, "{} ({adapter})", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// Why a backend could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// wgpu was asked for and found no adapter at all.
    #[error(
        "no wgpu adapter found (install a GPU driver, or Mesa's software Vulkan: mesa-vulkan-drivers libvulkan1); use --backend cpu to run on the CPU"
    )]
    NoAdapter,
    /// The backend failed its first operation.
    #[error("the {0} backend failed to run a test operation")]
    Broken(&'static str),
}

/// A wgpu adapter as seen by a probe.
#[derive(Debug, Clone)]
struct Adapter {
    name: String,
    hardware: bool,
    kind: String,
}

/// Lists wgpu adapters without creating a device.
fn adapters() -> Vec<Adapter> {
    let instance = wgpu::Instance::default();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            Adapter {
                name: info.name,
                hardware: info.device_type != wgpu::DeviceType::Cpu,
                kind: format!("{:?}", info.device_type),
            }
        })
        .collect()
}

/// Starts the chosen backend and checks it with one small operation.
///
/// # Errors
/// [`BackendError`] when wgpu has no adapter or a backend cannot compute.
pub fn select(choice: BackendChoice) -> Result<Selected, BackendError> {
    let selected = match choice {
        BackendChoice::Cpu => cpu(),
        BackendChoice::Wgpu => {
            let found = adapters();
            let best = found.iter().find(|a| a.hardware).or(found.first());
            let Some(best) = best else {
                return Err(BackendError::NoAdapter);
            };
            wgpu_on(best)
        }
        BackendChoice::Auto => match adapters().into_iter().find(|a| a.hardware) {
            Some(gpu) => wgpu_on(&gpu),
            None => cpu(),
        },
    };
    smoke_test(&selected)?;
    Ok(selected)
}

fn cpu() -> Selected {
    Selected {
        device: Device::flex(),
        name: "cpu",
        adapter: None,
    }
}

fn wgpu_on(adapter: &Adapter) -> Selected {
    // wgpu's default choice prefers high-power hardware, which is what the
    // probe found; a software adapter is chosen only when it is all there is.
    Selected {
        device: Device::wgpu(DeviceKind::DefaultDevice),
        name: "wgpu",
        adapter: Some(format!("{}, {}", adapter.name, adapter.kind)),
    }
}

/// One tiny computation, so that a broken backend fails at start with a
/// clear error instead of at the first image.
fn smoke_test(selected: &Selected) -> Result<(), BackendError> {
    let device = selected.device.clone();
    let result = std::panic::catch_unwind(move || {
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
        x.sum().into_scalar::<f32>()
    });
    match result {
        Ok(sum) if (sum - 6.0).abs() < 1e-5 => Ok(()),
        _ => Err(BackendError::Broken(selected.name)),
    }
}
