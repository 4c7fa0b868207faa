//! CPU, memory and open descriptors of a process, read from /proc.

/// One process's resource use; `None` fields could not be read (it exited).
#[derive(Clone, Debug, Default)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

/// Reads /proc/PID/{stat,status,fd}. Cheap: three small reads.
pub fn read(pid: u32) -> ProcessStats {
    ProcessStats {
        cpu_seconds: cpu_seconds(pid),
        rss_bytes: rss_bytes(pid),
        open_fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()
            .map(|d| d.count() as u64),
    }
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after "state".
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = crate::sys::clock_ticks();
    Some((utime + stime) / ticks)
}

/// Resident memory in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_itself() {
        let s = super::read(std::process::id());
        assert!(s.cpu_seconds.is_some());
        assert!(s.rss_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() >= 3);
    }
}
