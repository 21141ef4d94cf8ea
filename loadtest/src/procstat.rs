//! What the server processes cost: CPU-seconds and RSS read from `/proc`, and
//! the pids behind listening ports (so `--server-pids` is optional).

use std::collections::HashSet;

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProcSample {
    pub pid: u32,
    /// `comm` (the executable name).
    pub name: String,
    /// User + system CPU since the process started, seconds.
    pub cpu_s: f64,
    pub rss_kb: u64,
    /// Peak RSS (`VmHWM`).
    pub hwm_kb: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` when it is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (name, cpu_s) = parse_stat(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        pid,
        name,
        cpu_s,
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
    })
}

/// `(comm, utime + stime in seconds)` from a `/proc/<pid>/stat` line.
pub fn parse_stat(stat: &str) -> Option<(String, f64)> {
    // comm may hold spaces and parentheses: it ends at the LAST ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After comm: state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / TICKS_PER_SEC))
}

/// Inodes of sockets listening (TCP state 0A) or bound (UDP) on `ports`.
fn listening_inodes(ports: &HashSet<u16>) -> HashSet<u64> {
    let mut out = HashSet::new();
    for (file, need_listen) in [
        ("/proc/net/tcp", true),
        ("/proc/net/tcp6", true),
        ("/proc/net/udp", false),
        ("/proc/net/udp6", false),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || (need_listen && f[3] != "0A") {
                continue;
            }
            let port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port.is_some_and(|p| ports.contains(&p))
                && let Ok(inode) = f[9].parse::<u64>()
                && inode != 0
            {
                out.insert(inode);
            }
        }
    }
    out
}

/// Pids of the processes holding a socket listening on one of `ports`, sorted.
pub fn pids_listening_on(ports: &[u16]) -> Vec<u32> {
    let ports: HashSet<u16> = ports.iter().copied().collect();
    let inodes = listening_inodes(&ports);
    let mut pids = Vec::new();
    if inodes.is_empty() {
        return pids;
    }
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| {
                    l.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|i| inodes.contains(&i))
        });
        if holds {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// The port of a URL (`http://h:p/…`), if it has one.
pub fn url_port(url: &str) -> Option<u16> {
    url::Url::parse(url).ok()?.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "4242 (tokio (x) y) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 9 0 100 200 300";
        let (name, cpu) = parse_stat(line).unwrap();
        assert_eq!(name, "tokio (x) y");
        assert!((cpu - 4.0).abs() < 1e-9);
    }

    #[test]
    fn samples_this_process_and_finds_a_listener() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_kb > 0 && me.hwm_kb >= me.rss_kb / 2);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Our own pid is skipped on purpose (the harness is never the server).
        assert!(pids_listening_on(&[port]).is_empty());
        assert_eq!(url_port("http://127.0.0.1:7070/x"), Some(7070));
    }
}
