//! What the benchmarks that are not criterion's share: settings from the environment, progress
//! lines, and the process's resident memory.
//!
//! Each bench includes this file as `mod common;` and uses the part it needs.

#![allow(dead_code)]

/// The value of the environment variable `name` (`_` allowed as a digit separator, as in
/// `20_000`), or `default` when it is unset or not a number.
pub(crate) fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Prints a progress line on stderr, prefixed with the bench's name, so that the report on
/// stdout stays clean.
pub(crate) fn progress(message: impl AsRef<str>) {
    eprintln!("[{} bench] {}", env!("CARGO_CRATE_NAME"), message.as_ref());
}

/// The process's resident memory (`VmRSS`) in KiB, or 0 where `/proc` is not there.
pub(crate) fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
