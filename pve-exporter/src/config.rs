//! Command-line flags. Every flag can also be set from the environment
//! (`PVE_EXPORTER_<FLAG>`), which is how the systemd unit's environment file sets them.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EbpfMode {
    /// Use eBPF when the kernel has BTF and the programs load; else procfs mode.
    Auto,
    /// eBPF or nothing: the daemon refuses to start when the programs cannot be loaded.
    On,
    /// procfs mode only.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    #[value(name = "DEBUG", alias = "debug")]
    Debug,
    #[value(name = "INFO", alias = "info")]
    Info,
    #[value(name = "WARNING", alias = "warning", alias = "WARN", alias = "warn")]
    Warning,
    #[value(name = "ERROR", alias = "error")]
    Error,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Warning => log::LevelFilter::Warn,
            LogLevel::Error => log::LevelFilter::Error,
        }
    }
}

/// The kvm tracepoints counted per VM by default (those missing on a kernel are skipped).
pub const DEFAULT_TRACE_EVENTS: &str = "kvm:kvm_exit,kvm:kvm_entry,kvm:kvm_pio,kvm:kvm_mmio,\
kvm:kvm_userspace_exit,kvm:kvm_emulate_insn,kvm:kvm_fpu,kvm:kvm_msr,kvm:kvm_inj_virq,\
kvm:kvm_vcpu_wakeup,kvm:kvm_halt_poll_ns";

#[derive(Debug, Clone, Parser)]
#[command(name = "pve-exporter", version, about = "Prometheus exporter for Proxmox VE and KVM hosts")]
pub struct Config {
    /// HTTP listen port.
    #[arg(long, env = "PVE_EXPORTER_PORT", default_value_t = 9116)]
    pub port: u16,

    /// Bind address.
    #[arg(long, env = "PVE_EXPORTER_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Collect per-VM metrics of running QEMU/KVM VMs.
    #[arg(long, env = "PVE_EXPORTER_COLLECT_RUNNING_VMS", default_value_t = true, action = clap::ArgAction::Set)]
    pub collect_running_vms: bool,

    /// Collect storage metrics from storage.cfg (the storage collector).
    #[arg(long, env = "PVE_EXPORTER_COLLECT_STORAGE", default_value_t = true, action = clap::ArgAction::Set)]
    pub collect_storage: bool,

    /// Prefix of every metric name.
    #[arg(long, env = "PVE_EXPORTER_METRICS_PREFIX", default_value = "pve", value_parser = parse_prefix)]
    pub metrics_prefix: String,

    /// Log level.
    #[arg(long, env = "PVE_EXPORTER_LOGLEVEL", value_enum, default_value = "INFO", ignore_case = true)]
    pub loglevel: LogLevel,

    /// Time limit of each step of a qm monitor / QMP exchange.
    #[arg(long, env = "PVE_EXPORTER_QM_TERMINAL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub qm_terminal_timeout: Duration,

    /// How long qm monitor / QMP topology results (NICs, disks) are cached.
    #[arg(long, env = "PVE_EXPORTER_QM_MAX_TTL", default_value = "600s", value_parser = parse_duration)]
    pub qm_max_ttl: Duration,

    /// Random jitter subtracted from the cache TTL, drawn once per entry, so entries do not expire together.
    #[arg(long, env = "PVE_EXPORTER_QM_RAND", default_value = "60s", value_parser = parse_duration)]
    pub qm_rand: Duration,

    /// Close an unresponsive qm monitor session later instead of blocking the scrape on it.
    #[arg(long, env = "PVE_EXPORTER_QM_MONITOR_DEFER_CLOSE", default_value_t = true, action = clap::ArgAction::Set)]
    pub qm_monitor_defer_close: bool,

    /// Root of the host file system: every host path (/proc, /sys, /etc/pve, ...) is read below it.
    #[arg(long, env = "PVE_EXPORTER_ROOT", default_value = "/")]
    pub root: PathBuf,

    /// eBPF mode.
    #[arg(long, env = "PVE_EXPORTER_EBPF", value_enum, default_value = "auto")]
    pub ebpf: EbpfMode,

    /// Tracepoints counted per VM in eBPF mode (`category:name`, comma-separated). Missing ones are skipped.
    #[arg(long, env = "PVE_EXPORTER_EBPF_EVENTS", value_delimiter = ',', default_value = DEFAULT_TRACE_EVENTS)]
    pub ebpf_events: Vec<String>,

    /// Time limit of reads from /etc/pve (pmxcfs, a FUSE file system that can hang).
    #[arg(long, env = "PVE_EXPORTER_PMXCFS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub pmxcfs_timeout: Duration,
}

impl Config {
    /// Parse flags from an iterator (tests) with no environment fallback surprises beyond clap's.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a valid metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*)"))
    }
}

/// Parse a Go-style duration as the spec's flags use them: `10s`, `500ms`, `10m`, `1h`, `1m30s`;
/// a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: missing unit (ms, s, m, h)"))?;
        if num_end == 0 {
            return Err(format!("{s:?}: expected a number"));
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| format!("{s:?}: bad number"))?;
        let unit_end =
            rest[num_end..].find(|c: char| c.is_ascii_digit() || c == '.').map_or(rest.len(), |i| num_end + i);
        let scale = match &rest[num_end..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("{s:?}: unknown unit {u:?}")),
        };
        total += Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))?;
        rest = &rest[unit_end..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("600").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "10x", "-1s", "1s2", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::from_args(["pve-exporter"]).unwrap();
        assert_eq!(c.port, 9116);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert!(c.collect_running_vms && c.collect_storage && c.qm_monitor_defer_close);
        assert_eq!(c.metrics_prefix, "pve");
        assert_eq!(c.loglevel, LogLevel::Info);
        assert_eq!(c.qm_terminal_timeout, Duration::from_secs(10));
        assert_eq!(c.qm_max_ttl, Duration::from_secs(600));
        assert_eq!(c.qm_rand, Duration::from_secs(60));
        assert_eq!(c.root, PathBuf::from("/"));
        assert_eq!(c.ebpf, EbpfMode::Auto);
        assert!(c.ebpf_events.iter().any(|e| e == "kvm:kvm_pio"));
    }

    #[test]
    fn flags_parse() {
        let c = Config::from_args([
            "pve-exporter",
            "--port",
            "9200",
            "--collect-storage",
            "false",
            "--loglevel",
            "debug",
            "--metrics-prefix",
            "pvex",
            "--ebpf",
            "off",
            "--ebpf-events",
            "kvm:kvm_pio,kvm:kvm_mmio",
        ])
        .unwrap();
        assert_eq!(c.port, 9200);
        assert!(!c.collect_storage);
        assert_eq!(c.loglevel, LogLevel::Debug);
        assert_eq!(c.metrics_prefix, "pvex");
        assert_eq!(c.ebpf, EbpfMode::Off);
        assert_eq!(c.ebpf_events, vec!["kvm:kvm_pio", "kvm:kvm_mmio"]);
        assert!(Config::from_args(["pve-exporter", "--metrics-prefix", "9bad"]).is_err());
        assert!(Config::from_args(["pve-exporter", "--qm-max-ttl", "soon"]).is_err());
    }
}
