//! A process's memory and CPU time from Linux's `/proc`, for the
//! benchmarks that measure a daemon from outside (the gateway's footprint,
//! the simulator's load generator). Unreadable values read as zero.

/// A `kB` field of `/proc/{pid}/status`, such as `VmRSS:` or `VmHWM:`.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of the process so far, in clock ticks
/// (see [`clock_ticks`]).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat_cpu(&stat).1
}

/// One thread of a process: its id, its name (`comm`: at most 15 bytes)
/// and its user plus system CPU time so far, in clock ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCpu {
    /// The thread id.
    pub tid: u32,
    /// Its name.
    pub name: String,
    /// CPU time in clock ticks.
    pub ticks: u64,
}

/// Every thread of the process now (threads that have ended are not
/// listed; their time stays in [`cpu_ticks`]).
pub fn thread_cpu_ticks(pid: u32) -> Vec<ThreadCpu> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (name, ticks) = stat_cpu(&stat);
            Some(ThreadCpu {
                tid,
                name: name.to_owned(),
                ticks,
            })
        })
        .collect()
}

/// CPU time of the calling thread so far, in nanoseconds (the first field
/// of `/proc/thread-self/schedstat`; 0 when unreadable). The kernel brings
/// it up to date when the thread is switched out and at each scheduler
/// tick, so a running thread's figure lags by up to a tick: time a phase of
/// work long enough that a tick does not matter, or one that sleeps (an
/// fsync) at its end.
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The command name and utime + stime of a `stat` line.
fn stat_cpu(stat: &str) -> (&str, u64) {
    // The name is in parentheses and may hold anything, ')' included.
    let (head, rest) = stat.rsplit_once(')').unwrap_or(("", ""));
    let name = head.split_once('(').map_or("", |(_, n)| n);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    (name, field(11) + field(12))
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_even_with_parentheses_in_the_name() {
        let line = "42 (sensor-(x)-l) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(stat_cpu(line), ("sensor-(x)-l", 12));
        assert_eq!(stat_cpu(""), ("", 0));
    }

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = thread_cpu_ns();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 1u64;
        while thread_cpu_ns() <= before {
            assert!(std::time::Instant::now() < deadline, "no CPU time counted");
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
            }
        }
    }

    #[test]
    fn this_process_lists_its_threads_with_their_names() {
        let named = std::thread::Builder::new()
            .name("procstat-probe".into())
            .spawn(|| {
                let me = thread_cpu_ticks(std::process::id());
                me.iter().any(|t| t.name == "procstat-probe")
            })
            .map(|t| t.join());
        assert!(matches!(named, Ok(Ok(true))));
    }
}
