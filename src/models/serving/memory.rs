//! What the cache measures and frees: the process's resident set, and heap handed back to the
//! operating system after an eviction.

/// The process's resident set size in bytes, from `/proc/self/statm` (0 where that does not
/// exist), in the system's own page size.
pub(crate) fn resident_set_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// Returns free heap pages to the OS, so the next load's RSS growth is its own and an idle
/// process does not keep a burst's peak.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn release_free_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the OS; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

/// The size of the file at `path`, 0 if it cannot be read.
pub(crate) fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_resident_set_is_measured_in_whole_pages() {
        let rss = super::resident_set_bytes();
        assert!(rss > 0, "a running process has a resident set");
        assert_eq!(rss % super::page_size(), 0);
    }
}
