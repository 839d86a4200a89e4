//! medgate's end-to-end tests live in `tests/` of this crate; they start a
//! real mosquitto with the shipped configuration's access rules
//! (`configs/mosquitto/medgate.acl`) and real clients. This library is empty.
//!
//! # Layout
//! - `tests/security.rs`: who may publish and read what, and who may connect.
//! - `tests/system.rs`: sensors → gateway → mosquitto → two receivers → sensors and
//!   clinicians, with a receiver killed mid-stream.
