//! A child process's output, read line by line by threads, so that a test
//! waits for what the process says ("listening", "subscribed") instead of
//! sleeping.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The awaited line did not come.
#[derive(Debug, thiserror::Error)]
#[error("{needle:?} was not logged within {timeout:?}; the log:\n{log}")]
pub struct LogTimeout {
    /// The awaited text.
    pub needle: String,
    /// The wait.
    pub timeout: Duration,
    /// Everything logged.
    pub log: String,
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    /// Both streams ended (the process is gone).
    closed: usize,
}

/// The lines a process wrote to stdout and stderr, in arrival order.
#[derive(Clone, Default)]
pub struct ProcessLog(Arc<(Mutex<Lines>, Condvar)>);

impl ProcessLog {
    /// Takes `child`'s piped stdout and stderr (whichever it has) and reads
    /// them until they end.
    pub fn attach(child: &mut Child) -> Self {
        let log = Self::default();
        let streams = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        let count = streams.iter().flatten().count();
        {
            let (lock, _) = &*log.0;
            // Streams the child does not pipe count as ended.
            lock.lock().unwrap_or_else(PoisonError::into_inner).closed = 2 - count;
        }
        for stream in streams.into_iter().flatten() {
            let shared = log.0.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let (lock, changed) = &*shared;
                    lock.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .lines
                        .push(line);
                    changed.notify_all();
                }
                let (lock, changed) = &*shared;
                lock.lock().unwrap_or_else(PoisonError::into_inner).closed += 1;
                changed.notify_all();
            });
        }
        log
    }

    /// Waits until a line after line `from` contains `needle`; returns its
    /// index.
    ///
    /// # Errors
    /// [`LogTimeout`] (with the whole log) when it did not come in time or
    /// the process ended first.
    pub fn wait_for(
        &self,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<usize, LogTimeout> {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.0;
        let mut lines = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(i) = lines
                .lines
                .iter()
                .skip(from)
                .position(|l| l.contains(needle))
            {
                return Ok(from + i);
            }
            let now = Instant::now();
            if now >= deadline || lines.closed >= 2 {
                return Err(LogTimeout {
                    needle: needle.to_owned(),
                    timeout,
                    log: lines.lines.join("\n"),
                });
            }
            lines = changed
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// How many lines so far (a start for [`wait_for`](Self::wait_for)).
    pub fn len(&self) -> usize {
        let (lock, _) = &*self.0;
        lock.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .len()
    }

    /// Whether nothing was logged yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything so far.
    pub fn text(&self) -> String {
        let (lock, _) = &*self.0;
        lock.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .join("\n")
    }
}
