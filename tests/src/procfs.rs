//! CPU time and memory of processes, read from `/proc`, for the benchmark.
//!
//! Times are in clock ticks of `/proc` (`USER_HZ`, 100 a second on every Linux architecture we
//! run on; `sysconf(_SC_CLK_TCK)` says the same), so one reading is good to 10 ms: the benchmark
//! takes differences over windows of tens of seconds.

use std::collections::HashMap;

/// Clock ticks per second in `/proc/*/stat` and `/proc/stat`.
const TICKS_PER_SEC: f64 = 100.0;

/// One process's CPU time, split as the kernel keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// User plus system time of the process itself, all its threads (live and ended), in seconds.
    pub own: f64,
    /// User plus system time of its children that it has reaped (`cutime` + `cstime`), seconds.
    pub reaped_children: f64,
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, before: CpuTimes) -> CpuTimes {
        CpuTimes {
            own: self.own - before.own,
            reaped_children: self.reaped_children - before.reaped_children,
        }
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, other: CpuTimes) -> CpuTimes {
        CpuTimes {
            own: self.own + other.own,
            reaped_children: self.reaped_children + other.reaped_children,
        }
    }
}

/// The fields of `/proc/PID/stat` after the command name, which may hold spaces and parentheses
/// (it ends at the last `)`): index 0 is the state (field 3 of proc(5)).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn ticks(fields: &[String], field: usize) -> f64 {
    // proc(5) numbers fields from 1, and `stat_fields` starts at field 3.
    fields
        .get(field - 3)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / TICKS_PER_SEC
}

/// The CPU times of process `pid` (`"self"` for this one), or `None` if it is gone.
///
/// `utime` + `stime` of a process are the sum over all its threads, and do not include its
/// children: a job's process, once reaped, lands in the parent's `cutime` + `cstime`.
pub fn cpu_times(pid: &str) -> Option<CpuTimes> {
    let f = stat_fields(pid)?;
    Some(CpuTimes {
        own: ticks(&f, 14) + ticks(&f, 15),
        reaped_children: ticks(&f, 16) + ticks(&f, 17),
    })
}

/// Every live process's parent, from `/proc/*/stat`.
fn parents() -> HashMap<u32, u32> {
    let mut parents = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return parents;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ppid) =
            stat_fields(&pid.to_string()).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
        {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// `root` and its live descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let parents = parents();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&(_, &p)| p == parent)
                .map(|(&pid, _)| pid),
        );
        i += 1;
    }
    tree
}

/// The CPU time of a whole process tree (a server and its workers, e.g. PostgreSQL's postmaster
/// and backends), in seconds: each live process's own time plus what each has reaped, so that a
/// backend that ends between two readings is still counted (in its parent's `cutime`), once.
pub fn tree_cpu(root: u32) -> f64 {
    process_tree(root)
        .into_iter()
        .filter_map(|pid| cpu_times(&pid.to_string()))
        .map(|t| t.own + t.reaped_children)
        .sum()
}

/// The pid of the process that listens on TCP port `port` (IPv4 or IPv6), if this user can see
/// its file descriptors (root sees all).
pub fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN; field 9 is the inode.
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && listening_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The whole machine's CPU time since boot, from the first line of `/proc/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// user + nice.
    pub user: f64,
    /// system + irq + softirq.
    pub system: f64,
    /// idle + iowait.
    pub idle: f64,
    /// Everything else (steal, guest).
    pub other: f64,
    /// Context switches since boot (the `ctxt` line).
    pub switches: u64,
}

impl MachineCpu {
    /// A reading now (zeros if `/proc/stat` cannot be read).
    pub fn now() -> MachineCpu {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let mut m = MachineCpu::default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("cpu") => {
                    let v: Vec<f64> = f
                        .map(|x| x.parse::<f64>().unwrap_or(0.0) / TICKS_PER_SEC)
                        .collect();
                    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
                    m.user = at(0) + at(1);
                    m.system = at(2) + at(5) + at(6);
                    m.idle = at(3) + at(4);
                    m.other = at(7) + at(8) + at(9);
                }
                Some("ctxt") => {
                    m.switches = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                }
                _ => {}
            }
        }
        m
    }

    /// `user% sys% idle%` of the machine between `before` and `self`, and context switches a
    /// second over `secs`.
    pub fn since(&self, before: &MachineCpu, secs: f64) -> String {
        let (u, s, i, o) = (
            self.user - before.user,
            self.system - before.system,
            self.idle - before.idle,
            self.other - before.other,
        );
        let total = (u + s + i + o).max(f64::MIN_POSITIVE);
        format!(
            "{:.0}% user, {:.0}% system, {:.0}% idle, {:.0} switches/s",
            100.0 * u / total,
            100.0 * s / total,
            100.0 * i / total,
            (self.switches - before.switches) as f64 / secs.max(1e-9)
        )
    }
}

/// The 1-minute load average of `/proc/loadavg`.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// A field of `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`), as MiB.
pub fn status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_times_are_read() {
        let t = cpu_times("self").expect("/proc/self/stat");
        assert!(t.own >= 0.0 && t.reaped_children >= 0.0);
        assert!(process_tree(std::process::id()).contains(&std::process::id()));
        assert!(status_mib("self", "VmRSS") > 0.0);
    }
}
