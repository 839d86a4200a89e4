//! Per-device replay protection: a sliding window over sequence numbers, as
//! IPsec does (RFC 4303 §3.4.3), one window per (site, gateway, device,
//! epoch): a gateway whose state was wiped counts again from 0 under a new
//! random epoch, which is a new window, not a replay of the old one.
//!
//! Only messages with a new message id reach this check (a re-publication
//! of a message already seen is answered from the de-duplication cache), so
//! a sequence number seen before here means a new message reusing an old
//! number: a replay or a forgery.

use std::collections::{HashMap, VecDeque};

use medgate_shared::ids::Name;

/// Who a sequence number belongs to: site, gateway, device and the
/// gateway installation's epoch.
pub type DeviceKey = (Name, Name, Name, u64);

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This device's sequence number was already used by another message.
    #[error("sequence {sequence} of this device was already used")]
    Reused {
        /// The sequence number.
        sequence: u64,
    },
    /// The sequence number is older than the window still remembers.
    #[error(
        "sequence {sequence} is older than the replay window (newest {newest}, window {window})"
    )]
    TooOld {
        /// The sequence number.
        sequence: u64,
        /// The newest sequence seen for this device.
        newest: u64,
        /// The window size.
        window: u64,
    },
    /// The sequence number is further ahead of the newest than any gateway
    /// counts within one epoch (a crash skips at most a block of numbers):
    /// taking it would push every real number out of the window.
    #[error("sequence {sequence} is implausibly far ahead of the newest ({newest})")]
    TooFarAhead {
        /// The sequence number.
        sequence: u64,
        /// The newest sequence seen for this device.
        newest: u64,
    },
}

/// How far ahead of a device's newest sequence number a new one may be.
pub const MAX_AHEAD: u64 = 1 << 32;

#[derive(Debug, Clone)]
struct Window {
    newest: u64,
    /// Bit `i` set: sequence `newest − i` was seen.
    seen: Vec<u64>,
}

impl Window {
    fn new(sequence: u64, words: usize) -> Self {
        let mut seen = vec![0u64; words];
        seen[0] = 1;
        Self {
            newest: sequence,
            seen,
        }
    }

    fn bit(&self, age: u64) -> bool {
        let (word, bit) = ((age / 64) as usize, age % 64);
        self.seen[word] >> bit & 1 == 1
    }

    fn set(&mut self, age: u64) {
        let (word, bit) = ((age / 64) as usize, age % 64);
        self.seen[word] |= 1 << bit;
    }

    /// Moves the window forward by `by` positions.
    fn clear(&mut self, age: u64) {
        let (word, bit) = ((age / 64) as usize, age % 64);
        self.seen[word] &= !(1 << bit);
    }

    fn advance(&mut self, by: u64) {
        let size = self.seen.len() as u64 * 64;
        if by >= size {
            self.seen.fill(0);
            return;
        }
        let (words, bits) = ((by / 64) as usize, by % 64);
        for i in (0..self.seen.len()).rev() {
            let from = i.checked_sub(words);
            let high = from.map_or(0, |f| self.seen[f] << bits);
            let low = match (from.and_then(|f| f.checked_sub(1)), bits) {
                (Some(f), b) if b > 0 => self.seen[f] >> (64 - b),
                _ => 0,
            };
            self.seen[i] = high | low;
        }
    }
}

/// Replay windows for many devices, bounded in memory.
#[derive(Debug)]
pub struct ReplayGuard {
    words: usize,
    windows: HashMap<DeviceKey, Window>,
    order: VecDeque<DeviceKey>,
    max_devices: usize,
    /// Windows per (site, gateway), and their bound: one gateway inventing
    /// device names or epochs evicts its own windows, never another's.
    per_gateway: HashMap<(Name, Name), usize>,
    max_per_gateway: usize,
}

impl ReplayGuard {
    /// Windows of `window` sequence numbers (rounded up to a multiple of 64)
    /// for up to `max_devices` devices (the longest unseen is forgotten first).
    pub fn new(window: u64, max_devices: usize) -> Self {
        Self {
            words: window.div_ceil(64).max(1) as usize,
            windows: HashMap::new(),
            order: VecDeque::new(),
            max_devices: max_devices.max(1),
            per_gateway: HashMap::new(),
            max_per_gateway: max_devices.max(1),
        }
    }

    /// Bounds the windows one gateway may hold (at most `max_devices`).
    pub fn per_gateway(mut self, limit: usize) -> Self {
        self.max_per_gateway = limit.clamp(1, self.max_devices);
        self
    }

    fn evict(&mut self, at: usize) {
        if let Some(key) = self.order.remove(at) {
            self.windows.remove(&key);
            let gateway = (key.0, key.1);
            if let Some(count) = self.per_gateway.get_mut(&gateway) {
                *count -= 1;
                if *count == 0 {
                    self.per_gateway.remove(&gateway);
                }
            }
        }
    }

    /// The window size in sequence numbers.
    pub fn window(&self) -> u64 {
        self.words as u64 * 64
    }

    /// Checks `sequence` for `device` and records it when fresh.
    ///
    /// # Errors
    /// [`ReplayError`] when the number was used or is too old.
    pub fn check(&mut self, device: &DeviceKey, sequence: u64) -> Result<(), ReplayError> {
        let size = self.window();
        let Some(window) = self.windows.get_mut(device) else {
            let gateway = (device.0.clone(), device.1.clone());
            let held = self.per_gateway.get(&gateway).copied().unwrap_or(0);
            if held >= self.max_per_gateway {
                // This gateway's own oldest window goes.
                if let Some(at) = self
                    .order
                    .iter()
                    .position(|k| (&k.0, &k.1) == (&gateway.0, &gateway.1))
                {
                    self.evict(at);
                }
            } else if self.windows.len() >= self.max_devices {
                self.evict(0);
            }
            self.windows
                .insert(device.clone(), Window::new(sequence, self.words));
            self.order.push_back(device.clone());
            *self.per_gateway.entry(gateway).or_insert(0) += 1;
            return Ok(());
        };
        if sequence > window.newest.saturating_add(MAX_AHEAD) {
            return Err(ReplayError::TooFarAhead {
                sequence,
                newest: window.newest,
            });
        }
        if sequence > window.newest {
            window.advance(sequence - window.newest);
            window.newest = sequence;
            window.set(0);
            return Ok(());
        }
        let age = window.newest - sequence;
        if age >= size {
            return Err(ReplayError::TooOld {
                sequence,
                newest: window.newest,
                window: size,
            });
        }
        if window.bit(age) {
            return Err(ReplayError::Reused { sequence });
        }
        window.set(age);
        Ok(())
    }
}

impl ReplayGuard {
    /// Forgets a sequence number recorded by [`check`](Self::check) whose
    /// message was then not answered (shutdown, inference failure), so that
    /// the gateway's re-publication of it is not taken for a replay.
    pub fn forget(&mut self, device: &DeviceKey, sequence: u64) {
        let size = self.window();
        if let Some(window) = self.windows.get_mut(device)
            && sequence <= window.newest
            && window.newest - sequence < size
        {
            window.clear(window.newest - sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: &str) -> DeviceKey {
        (
            "s".parse().unwrap(),
            "g".parse().unwrap(),
            d.parse().unwrap(),
            1,
        )
    }

    fn key_of(gateway: &str, d: &str) -> DeviceKey {
        (
            "s".parse().unwrap(),
            gateway.parse().unwrap(),
            d.parse().unwrap(),
            1,
        )
    }

    #[test]
    fn a_gateway_inventing_devices_evicts_only_its_own_windows() {
        let mut guard = ReplayGuard::new(64, 100).per_gateway(3);
        guard.check(&key_of("honest", "cam"), 5).unwrap();
        for k in 0..50 {
            guard.check(&key_of("noisy", &format!("d{k}")), 1).unwrap();
        }
        // The honest gateway's window survived the flood.
        assert!(matches!(
            guard.check(&key_of("honest", "cam"), 5),
            Err(ReplayError::Reused { .. })
        ));
        assert_eq!(
            guard.per_gateway[&("s".parse().unwrap(), "noisy".parse().unwrap())],
            3
        );
    }

    #[test]
    fn a_huge_jump_is_refused_and_does_not_move_the_window() {
        let mut guard = ReplayGuard::new(64, 10);
        guard.check(&key("a"), 100).unwrap();
        assert!(matches!(
            guard.check(&key("a"), u64::MAX),
            Err(ReplayError::TooFarAhead { .. })
        ));
        guard.check(&key("a"), 101).unwrap();
        guard.check(&key("a"), 100 + MAX_AHEAD).unwrap();
    }

    #[test]
    fn fresh_out_of_order_and_reused() {
        let mut guard = ReplayGuard::new(128, 10);
        let d = key("d1");
        for s in [5, 7, 6, 100, 90, 200] {
            assert_eq!(guard.check(&d, s), Ok(()), "{s}");
        }
        assert_eq!(
            guard.check(&d, 90),
            Err(ReplayError::Reused { sequence: 90 })
        );
        assert_eq!(
            guard.check(&d, 200),
            Err(ReplayError::Reused { sequence: 200 })
        );
        assert!(matches!(
            guard.check(&d, 7),
            Err(ReplayError::TooOld { .. })
        ));
        assert_eq!(guard.check(&d, 199), Ok(()));
        // Other devices have their own windows.
        assert_eq!(guard.check(&key("d2"), 90), Ok(()));
    }

    #[test]
    fn window_matches_a_set_model() {
        // Against a plain set of seen numbers, restricted to the window.
        let mut guard = ReplayGuard::new(256, 1);
        let d = key("d");
        let mut seen = std::collections::BTreeSet::new();
        let mut newest = 0u64;
        let mut x = 12345u64;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let s = (x >> 40) % 3000;
            let expected = if seen.is_empty() || s > newest {
                Ok(())
            } else if newest - s >= 256 {
                Err("old")
            } else if seen.contains(&s) {
                Err("reused")
            } else {
                Ok(())
            };
            let got = guard.check(&d, s).map_err(|e| match e {
                ReplayError::Reused { .. } => "reused",
                ReplayError::TooOld { .. } => "old",
                ReplayError::TooFarAhead { .. } => "ahead",
            });
            assert_eq!(got, expected, "sequence {s}, newest {newest}");
            if got.is_ok() {
                seen.insert(s);
                newest = newest.max(s);
            }
        }
    }

    #[test]
    fn a_forgotten_sequence_can_come_again() {
        let mut guard = ReplayGuard::new(64, 4);
        let d = key("d");
        guard.check(&d, 10).unwrap();
        guard.check(&d, 11).unwrap();
        guard.forget(&d, 10);
        assert_eq!(guard.check(&d, 10), Ok(()));
        assert!(guard.check(&d, 11).is_err());
        guard.forget(&d, 5_000);
        guard.forget(&key("unknown"), 1);
    }

    #[test]
    fn devices_are_bounded() {
        let mut guard = ReplayGuard::new(64, 2);
        guard.check(&key("a"), 1).unwrap();
        guard.check(&key("b"), 1).unwrap();
        guard.check(&key("c"), 1).unwrap();
        assert_eq!(guard.windows.len(), 2);
        // "a" was forgotten: its number is accepted again.
        assert_eq!(guard.check(&key("a"), 1), Ok(()));
    }
}
