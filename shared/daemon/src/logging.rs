//! Logging set-up for every medgate binary: `tracing` to stderr (systemd's
//! journal picks it up), filtered by `RUST_LOG` or the given default.

/// Installs the global subscriber. Logs go to stderr so that a program's
/// stdout stays free for its output (reports, JSON, demo lines).
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // A second call (tests running programs in one process) keeps the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Makes a panic in any thread or task end the process (after the usual
/// report), so that systemd restarts a clean daemon instead of leaving a
/// half-alive one whose failed task nobody awaits.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}
