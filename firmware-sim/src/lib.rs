//! medgate's simulator and tool box: simulated sensor firmware, cipher
//! reports and benchmarks, key and envelope tools. The load generator and
//! the one-command demo arrive with their own issue.
//!
//! # Layout
//! - [`imageio`]: image files in, PNG out, bounded decoding, atomic writes.
//! - [`report`]: `cipher-report` text and plot.
//! - [`bench`]: `bench-cipher`, Henon beside ChaCha20-Poly1305 and SHA-512.
//! - [`tools`]: `keygen`, `seal`, `open`, `xray`.
//! - [`sensor`]: the simulated SPI image sensor (`sensor`).
pub mod bench;
pub mod imageio;
pub mod report;
pub mod sensor;
pub mod tools;
