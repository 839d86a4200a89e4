//! medgate's simulator and tool box: cipher reports and benchmarks, key and
//! envelope tools. Simulated sensor firmware, the load generator and the
//! one-command demo arrive with their own issues.
//!
//! # Layout
//! - [`imageio`]: image files in, PNG out, bounded decoding, atomic writes.
//! - [`report`]: `cipher-report` text and plot.
//! - [`bench`]: `bench-cipher`, Henon beside ChaCha20-Poly1305 and SHA-512.
//! - [`tools`]: `keygen`, `seal`, `open`, `xray`.
pub mod bench;
pub mod imageio;
pub mod report;
pub mod tools;
