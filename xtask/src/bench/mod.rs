//! `cargo xtask bench`: the benchmarks of docs/benchmarks.md. Each part prints its results as
//! Markdown table rows and writes them to `target/bench/<part>.md`, so the results table in
//! docs/benchmarks.md is pasted from a run, never typed.
//!
//! - `host`: the daemon scraped over HTTP on generated hosts of N VMs (real QEMU for N <= 100,
//!   a generated fixture tree for 1000): wall time, CPU, RSS, series and bytes, cold and warm.
//! - `ebpf`: bpf_stats per program under an exit-heavy guest, and the guest's port writes per
//!   second with every program attached against none, alternating.
//! - `parsers`: the criterion micro-benchmarks (`cargo bench -p pve-exporter --bench parsers`).
//!
//! `--quick` (small N, few iterations) is what the test suite runs so that the benchmarks never
//! rot; it asserts nothing about time.

mod ebpf;
mod host;

pub use host::profile_workload;

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{run_cmd, workspace_root};

const USAGE: &str = "usage: cargo xtask bench [--quick] [host|ebpf|parsers|all]...";

/// What every part gets.
pub struct Bench {
    /// Small N, few iterations: the test suite's mode.
    pub quick: bool,
    /// The release binaries (pve-exporter, pve-test-guest).
    pub bin: PathBuf,
    /// Scratch space and results (`target/bench`).
    pub dir: PathBuf,
}

impl Bench {
    /// Print a part's results and keep them in `target/bench/<part>.md`.
    pub fn report(&self, part: &str, markdown: &str) -> Result<()> {
        println!("{markdown}");
        let path = self.dir.join(format!("{part}{}.md", if self.quick { "-quick" } else { "" }));
        fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
        println!("(kept in {})", path.display());
        Ok(())
    }
}

pub fn target_dir(ws: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| ws.join("target"))
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut parts: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    if parts.is_empty() || parts.contains(&"all") {
        parts = vec!["parsers", "host", "ebpf"];
    }
    if let Some(p) = parts.iter().find(|p| !matches!(**p, "host" | "ebpf" | "parsers")) {
        bail!("unknown bench part {p:?}\n{USAGE}");
    }
    let ws = workspace_root();
    // The release build that is shipped (`cargo xtask deb`): with the recorded profile. The
    // eBPF programs are embedded by the build script.
    let bin = crate::pgo::release_build(&["pve-exporter", "pve-test-guest"])?;
    let bench = Bench { quick, bin, dir: target_dir(&ws).join("bench") };
    fs::create_dir_all(&bench.dir)?;
    for part in parts {
        println!("==> bench {part}{}", if quick { " (quick)" } else { "" });
        match part {
            "host" => host::run(&bench)?,
            "ebpf" => ebpf::run(&bench)?,
            "parsers" => {
                let mut c = Command::new(crate::cargo_bin());
                c.current_dir(&ws).args(["bench", "-p", "pve-exporter", "--bench", "parsers"]);
                if quick {
                    // Criterion's test mode: each benchmark runs once (it still has to work).
                    c.args(["--", "--test"]);
                }
                run_cmd(&mut c)?;
            }
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}

/// The daemon under test, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    /// What the daemon logged as the time of its first collection (all caches empty).
    pub first_collection: Duration,
}

impl Daemon {
    /// Start `pve-exporter` with `args` (plus `--port 0`) and wait until it is ready: it has
    /// bound its port and finished its first collection.
    pub fn start(bench: &Bench, args: &[&str]) -> Result<Daemon> {
        let mut child = Command::new(bench.bin.join("pve-exporter"))
            .args(args)
            .args(["--port", "0", "--host", "127.0.0.1"])
            // Every timed scrape is a collection of its own, not the last one handed out again.
            .args(["--min-collection-interval", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting pve-exporter")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keep draining after start-up, so the daemon never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut port, mut first) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut log = Vec::new();
        while port.is_none() || first.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                bail!("pve-exporter did not get ready; its log:\n{}", log.join("\n"));
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                port = rest.split_whitespace().next().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok());
            }
            if let Some(rest) = line.split("ready: first collection took ").nth(1) {
                first = rest.split_whitespace().next().and_then(parse_debug_duration);
            }
            log.push(line);
        }
        let (Some(port), Some(first_collection)) = (port, first) else { unreachable!("loop ends when both are set") };
        Ok(Daemon { child, port, first_collection })
    }

    /// One scrape of /metrics: wall time and body.
    pub fn scrape(&self) -> Result<(Duration, String)> {
        http_get(self.port, "/metrics")
    }

    /// CPU time the daemon used so far (all threads, exited ones included), in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after = stat.rsplit_once(") ").map(|(_, r)| r).ok_or_else(|| anyhow!("bad stat"))?;
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime), counted from the state (field 3) here.
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| anyhow!("bad stat"));
        Ok(n(11)? + n(12)?)
    }

    /// `VmRSS`, `RssAnon`, `RssFile` in KiB.
    pub fn rss_kib(&self) -> Result<(u64, u64, u64)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let get = |k: &str| {
            status.lines().find_map(|l| l.strip_prefix(k)?.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0)
        };
        Ok((get("VmRSS:"), get("RssAnon:"), get("RssFile:")))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon detaches its programs and exits cleanly.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `12.3456ms`, `1.2s`, `850µs` (Rust's Debug of a Duration).
pub fn parse_debug_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match unit.trim_end_matches([')', ',']) {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" | "us" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(v * scale))
}

/// What Prometheus 2.x/3.x sends by default.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// A plain HTTP/1.1 GET on localhost (std only): wall time until the whole body is read.
pub fn http_get(port: u16, path: &str) -> Result<(Duration, String)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connecting to the daemon")?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    // Prometheus' own Accept header (scrape_protocols default): what a real scrape costs.
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {PROMETHEUS_ACCEPT}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let wall = t.elapsed();
    let text = String::from_utf8(raw).context("non-UTF-8 answer")?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((wall, body))
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or_else(|| anyhow!("bad chunk"))?;
        let n = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or_else(|| anyhow!("short chunk"))?);
        s = rest.get(n + 2..).ok_or_else(|| anyhow!("short chunk"))?;
    }
}

/// Median and 99th percentile (nearest rank) of `v`.
pub fn median_p99(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.5), rank(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_durations() {
        assert_eq!(parse_debug_duration("12.5ms"), Some(Duration::from_micros(12500)));
        assert_eq!(parse_debug_duration("850µs"), Some(Duration::from_micros(850)));
        assert_eq!(parse_debug_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_debug_duration("x"), None);
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(median_p99(&mut v), (50.0, 99.0));
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), "abcde");
    }
}
