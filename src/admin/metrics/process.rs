//! The process's own figures under Prometheus's usual names (`process_*`, no
//! `masternode_` prefix, as every client library exports them), read from
//! `/proc/self` on Linux. Elsewhere nothing is exported.

/// What one scrape reads about the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// Unix time the process started, in seconds.
    pub start_time_seconds: f64,
    pub open_fds: u64,
}

/// The fields of `/proc/self/stat` this needs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    /// Since boot.
    starttime: u64,
}

/// Parses `/proc/self/stat`. The second field (the command name, in
/// parentheses) may itself hold spaces and parentheses: fields are counted from
/// the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state is field 3; utime 14, stime 15, starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat { utime: field(14)?, stime: field(15)?, starttime: field(22)? })
}

/// Resident and virtual pages from `/proc/self/statm` (its first two fields).
fn parse_statm(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let size = fields.next()??;
    let resident = fields.next()??;
    Some((resident, size))
}

/// Boot time in Unix seconds, the `btime` line of `/proc/stat`.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

#[cfg(target_os = "linux")]
pub(super) fn read() -> Option<ProcessStats> {
    extern "C" {
        fn sysconf(name: std::ffi::c_int) -> std::ffi::c_long;
    }
    const SC_CLK_TCK: std::ffi::c_int = 2;
    const SC_PAGESIZE: std::ffi::c_int = 30;
    // SAFETY: sysconf only reads a system constant; it takes and returns plain
    // integers.
    let (ticks, page) = unsafe { (sysconf(SC_CLK_TCK), sysconf(SC_PAGESIZE)) };
    if ticks <= 0 || page <= 0 {
        return None;
    }
    let (ticks, page) = (ticks as f64, page as u64);
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let (resident, size) = parse_statm(&std::fs::read_to_string("/proc/self/statm").ok()?)?;
    let btime = parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    Some(ProcessStats {
        resident_memory_bytes: resident * page,
        virtual_memory_bytes: size * page,
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        start_time_seconds: btime as f64 + stat.starttime as f64 / ticks,
        open_fds,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn read() -> Option<ProcessStats> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_even_with_a_name_full_of_parentheses() {
        let line = "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 2116 0 0 0 150 37 0 0 20 0 9 0 8123456 \
                    123456789 2345 18446744073709551615 1 1 0 0 0 0 0 4096 17642 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(line), Some(Stat { utime: 150, stime: 37, starttime: 8123456 }));
        assert_eq!(parse_stat("4242 (truncated"), None);
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
    }

    #[test]
    fn parses_statm_and_btime() {
        assert_eq!(parse_statm("30000 2048 512 100 0 4000 0\n"), Some((2048, 30000)));
        assert_eq!(parse_statm("30000"), None);
        assert_eq!(parse_btime("cpu  1 2 3\nintr 5\nbtime 1764000000\nprocesses 9\n"), Some(1_764_000_000));
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let p = read().expect("/proc/self is readable on Linux");
        assert!(p.resident_memory_bytes > 1024 * 1024, "{p:?}");
        assert!(p.virtual_memory_bytes >= p.resident_memory_bytes, "{p:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        // Boot time and start ticks are whole seconds and ticks: a few seconds of slack.
        assert!(p.start_time_seconds <= now + 2.0 && p.start_time_seconds > now - 86_400.0, "{p:?} vs {now}");
        assert!(p.open_fds >= 3, "{p:?}");
    }
}
