//! CPU time and memory of other processes, from `/proc/<pid>/stat` and `/proc/<pid>/status`.

use serde_json::{json, Value};

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident set size now (KiB).
    pub rss_kb: u64,
    /// Peak resident set size (KiB).
    pub hwm_kb: u64,
    /// Whether the process could be read at all.
    pub alive: bool,
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Reads `pid` now; a process that is gone gives `alive: false`.
pub fn sample(pid: u32) -> Sample {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Sample::default();
    };
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_s = (ticks(11) + ticks(12)) as f64 / ticks_per_sec();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Sample {
        cpu_s,
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
        alive: true,
    }
}

/// Readings of every watched process at one moment.
pub fn sample_all(pids: &[u32]) -> Vec<Sample> {
    pids.iter().map(|p| sample(*p)).collect()
}

/// What each process did between `start` and `end`, plus totals.
pub fn delta_json(pids: &[u32], start: &[Sample], end: &[Sample]) -> Value {
    let mut total_cpu = 0.0;
    let mut total_rss_start = 0;
    let mut total_rss_end = 0;
    let mut total_hwm = 0;
    let per: Vec<Value> = pids
        .iter()
        .zip(start.iter().zip(end))
        .map(|(pid, (a, b))| {
            let cpu = if b.alive { b.cpu_s - a.cpu_s } else { 0.0 };
            total_cpu += cpu;
            total_rss_start += a.rss_kb;
            total_rss_end += b.rss_kb;
            total_hwm += b.hwm_kb.max(a.hwm_kb);
            json!({
                "pid": pid,
                "alive": b.alive,
                "cpu_s": round3(cpu),
                "rss_start_kb": a.rss_kb,
                "rss_end_kb": b.rss_kb,
                "peak_rss_kb": b.hwm_kb.max(a.hwm_kb),
            })
        })
        .collect();
    json!({
        "per_process": per,
        "cpu_s": round3(total_cpu),
        "rss_start_kb": total_rss_start,
        "rss_end_kb": total_rss_end,
        "peak_rss_kb": total_hwm,
    })
}

/// This process's own CPU seconds (user + system) and peak RSS (KiB).
pub fn own_usage() -> (f64, u64) {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss as u64)
}

/// Rounds to three decimals (for readable JSON).
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself() {
        let s = sample(std::process::id());
        assert!(s.alive);
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
        assert!(!sample(u32::MAX - 1).alive);
    }
}
