//! Command-line flags. Every flag can also be set from the environment
//! (`PVE_EXPORTER_<FLAG>`), which is how the systemd unit's environment file sets them.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

pub use crate::sources::kernel::ebpf::EbpfMode;

pub use crate::sources::qemu::monitor::QmMode;

/// When to read the KVM debugfs stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvmDebugfsMode {
    /// In procfs mode only: eBPF mode counts the same events, without reading ~60 files per VM.
    Auto,
    /// Always, also in eBPF mode.
    On,
    /// Never.
    Off,
}

/// Which kind of host the VMs are found on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmSourceMode {
    /// `pve` when /etc/pve/qemu-server exists, else `libvirt` when /run/libvirt/qemu exists, else `qemu`.
    Auto,
    /// Proxmox VE: QEMU processes with `-id <vmid>` and a config in /etc/pve/qemu-server.
    Pve,
    /// libvirt: domains of /run/libvirt/qemu (pid file and status XML); other QEMU processes as plain QEMU.
    Libvirt,
    /// Every QEMU process, named by its `-name` (else its pid).
    Qemu,
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
/// Not kvm:kvm_fpu (still accepted): it fires twice per KVM_RUN round trip (FPU load and put),
/// which the user-space exit counts carry already, and would cost two program runs per exit.
pub const DEFAULT_TRACE_EVENTS: &str = "kvm:kvm_exit,kvm:kvm_entry,kvm:kvm_pio,kvm:kvm_mmio,\
kvm:kvm_userspace_exit,kvm:kvm_emulate_insn,kvm:kvm_msr,kvm:kvm_inj_virq,\
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

    /// Web configuration file (exporter-toolkit format): TLS and basic auth. Re-read on SIGHUP.
    #[arg(long = "web.config.file", env = "PVE_EXPORTER_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Environment file whose reloadable settings (log level, web config file) SIGHUP applies.
    #[arg(long, env = "PVE_EXPORTER_ENV_FILE")]
    pub env_file: Option<PathBuf>,

    /// On SIGTERM, how long scrapes in flight may still finish before connections are cut.
    #[arg(long, env = "PVE_EXPORTER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Deadline of a scrape that does not say its own (no `X-Prometheus-Scrape-Timeout-Seconds`
    /// header): the answer goes out within this, whatever hangs.
    #[arg(long, env = "PVE_EXPORTER_SCRAPE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub scrape_timeout: Duration,

    /// Subtracted from Prometheus's scrape timeout (the header) to leave time for the answer
    /// to travel.
    #[arg(long, env = "PVE_EXPORTER_SCRAPE_TIMEOUT_OFFSET", default_value = "500ms", value_parser = parse_duration)]
    pub scrape_timeout_offset: Duration,

    /// A request this soon after the last collection finished gets that collection instead of a
    /// new one (the second server of a Prometheus HA pair, a flood of requests). 0 turns it off.
    #[arg(long, env = "PVE_EXPORTER_MIN_COLLECTION_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub min_collection_interval: Duration,

    /// A collector group that did not answer by the deadline contributes its last good values
    /// only while they are at most this old (else nothing).
    #[arg(long, env = "PVE_EXPORTER_STALE_MAX_AGE", default_value = "120s", value_parser = parse_duration)]
    pub stale_max_age: Duration,

    /// Deprecated: `--no-collector.<name>` for the per-VM collectors (false turns off
    /// pve_config, kvm, qm, nic, disk, balloon, vcpu, kvm_debugfs and ebpf).
    #[arg(long, env = "PVE_EXPORTER_COLLECT_RUNNING_VMS", action = clap::ArgAction::Set, hide_short_help = true)]
    pub collect_running_vms: Option<bool>,

    /// Where VMs are found: `pve`, `libvirt`, `qemu`, or `auto` (by what the host has below --root).
    #[arg(long, env = "PVE_EXPORTER_VM_SOURCE", value_enum, default_value = "auto")]
    pub vm_source: VmSourceMode,

    /// Owners (user names or uids, comma-separated) whose QEMU processes are reported as plain
    /// QEMU VMs (`--vm-source qemu`, and QEMU processes libvirt did not start), when their
    /// executable is a QEMU binary. PVE VMs must be root's; libvirt's domains are named by its
    /// root-owned files.
    #[arg(long, env = "PVE_EXPORTER_QEMU_ALLOWED_USERS", value_delimiter = ',', default_value = "root",
          value_parser = crate::sources::proc::trust::parse_user)]
    pub qemu_allowed_users: Vec<u32>,

    /// Deprecated: `--no-collector.<name>` for the storage collectors (false turns off
    /// storage, storage_zfs and storage_lvm).
    #[arg(long, env = "PVE_EXPORTER_COLLECT_STORAGE", action = clap::ArgAction::Set, hide_short_help = true)]
    pub collect_storage: Option<bool>,

    /// Each collector of the registry switched on or off (`--collector.<name>`,
    /// `--no-collector.<name>`; made from the registry, see [`Config::parse_with_collectors`]).
    #[arg(skip)]
    pub collectors: std::collections::BTreeMap<&'static str, bool>,

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

    /// How VM monitors are reached for NIC and disk metrics.
    #[arg(long, env = "PVE_EXPORTER_QM_MODE", value_enum, default_value = "auto")]
    pub qm_mode: QmMode,

    /// The `qm` program (a host command, not read below --root).
    #[arg(long, env = "PVE_EXPORTER_QM_PATH", default_value = "/usr/sbin/qm")]
    pub qm_path: PathBuf,

    /// Monitor sessions (QMP connections or qm processes) open at once, over all VMs and scrapes.
    #[arg(long, env = "PVE_EXPORTER_QM_MAX_CONCURRENT", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub qm_max_concurrent: u16,

    /// Time limit of one guest agent query (connect, handshake and answers together).
    #[arg(long, env = "PVE_EXPORTER_AGENT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub agent_timeout: Duration,

    /// How often a VM's guest agent is asked for its file systems (the answer, or the failure,
    /// is reported in between).
    #[arg(long, env = "PVE_EXPORTER_AGENT_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub agent_interval: Duration,

    /// Guest agent queries running at once, over all VMs and scrapes.
    #[arg(long, env = "PVE_EXPORTER_AGENT_MAX_CONCURRENT", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub agent_max_concurrent: u16,

    /// Root of the host file system: every host path (/proc, /sys, /etc/pve, ...) is read below it.
    #[arg(long, env = "PVE_EXPORTER_ROOT", default_value = "/")]
    pub root: PathBuf,

    /// eBPF mode.
    #[arg(long, env = "PVE_EXPORTER_EBPF", value_enum, default_value = "auto")]
    pub ebpf: EbpfMode,

    /// Tracepoints counted per VM in eBPF mode (`category:name`, comma-separated). Missing ones are skipped.
    #[arg(long, env = "PVE_EXPORTER_EBPF_EVENTS", value_delimiter = ',', default_value = DEFAULT_TRACE_EVENTS)]
    pub ebpf_events: Vec<String>,

    /// Where `--ebpf auto` looks for the kernel's BTF (below --root); without it: procfs mode.
    #[arg(long, env = "PVE_EXPORTER_BTF_PATH", default_value = "/sys/kernel/btf/vmlinux")]
    pub btf_path: PathBuf,

    /// Turn the kernel's BPF run-time statistics on while the daemon runs, and export each
    /// program's run count and run time (costs some tens of ns per event).
    #[arg(long, env = "PVE_EXPORTER_EBPF_STATS", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub ebpf_stats: bool,

    /// Time limit of reads from /etc/pve (pmxcfs, a FUSE file system that can hang).
    #[arg(long, env = "PVE_EXPORTER_PMXCFS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub pmxcfs_timeout: Duration,

    /// Time limit of each storage size query: statvfs of a storage path, and each zfs, zpool, vgs, lvs run.
    #[arg(long, env = "PVE_EXPORTER_STORAGE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub storage_timeout: Duration,

    /// Directory searched first for the host tools the storage collectors run (zfs, zpool, lvs, vgs); then PATH.
    #[arg(long, env = "PVE_EXPORTER_COMMAND_PATH")]
    pub command_path: Option<PathBuf>,

    /// KVM debugfs stats per VM (/sys/kernel/debug/kvm): `auto` reads them in procfs mode only.
    #[arg(long, env = "PVE_EXPORTER_KVM_DEBUGFS", value_enum, default_value = "auto")]
    pub kvm_debugfs: KvmDebugfsMode,

    /// Also export the KVM debugfs stats of every vCPU (stats x vCPUs x VMs series).
    #[arg(long, env = "PVE_EXPORTER_KVM_DEBUGFS_PER_VCPU", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub kvm_debugfs_per_vcpu: bool,

    // ---- PVE collectors: node_status, vm_pressure, ha_status, physical_disk (collector/pve/) ----
    /// Where node_status, vm_pressure and ha_status read from: `local` files (no credentials),
    /// the PVE `api`, or `auto` (the API when a token is configured, else local files).
    #[arg(long, env = "PVE_EXPORTER_PVE_SOURCE", value_enum, default_value = "auto")]
    pub pve_source: PveSource,

    /// Which nodes: `local` (this node) or `cluster` (every node of the cluster, through the
    /// API: one central exporter). Default: local on a PVE node (/etc/pve exists), else cluster.
    #[arg(long, env = "PVE_EXPORTER_PVE_SCOPE", value_enum)]
    pub pve_scope: Option<PveScope>,

    /// Base URL of the PVE API.
    #[arg(long, env = "PVE_EXPORTER_PVE_API_URL", default_value = "https://localhost:8006")]
    pub pve_api_url: String,

    /// File holding the API token `user@realm!tokenid=secret` (read as given, not below --root).
    /// The token can also come from the environment variable PVE_EXPORTER_API_TOKEN; never
    /// from the command line.
    #[arg(long, env = "PVE_EXPORTER_PVE_API_TOKEN_FILE")]
    pub pve_api_token_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) to verify the API's TLS certificate with. Default:
    /// /etc/pve/pve-root-ca.pem (below --root) when present, else Mozilla's roots.
    #[arg(long, env = "PVE_EXPORTER_PVE_API_CA_FILE")]
    pub pve_api_ca_file: Option<PathBuf>,

    /// Do not verify the API's TLS certificate (logs a warning).
    #[arg(long, env = "PVE_EXPORTER_PVE_API_INSECURE", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub pve_api_insecure: bool,

    /// Time budget of each API request, retries included.
    #[arg(long, env = "PVE_EXPORTER_PVE_API_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub pve_api_timeout: Duration,

    /// API requests in flight at once (the per-node fan-out of every scrape).
    #[arg(long, env = "PVE_EXPORTER_PVE_API_MAX_CONCURRENT", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub pve_api_max_concurrent: u16,

    /// Emit the cluster-wide HA families also when this node is not the CRM master (local scope).
    #[arg(long, env = "PVE_EXPORTER_HA_ALWAYS_EMIT", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub ha_always_emit: bool,

    // ---- HTTP limits (http_limits.rs; docs/operations.md, section HTTP limits) ----
    /// Connections open at once. At the cap, a connection without a complete request (oldest
    /// first), a response stuck on a client that does not read, or the longest idle one is
    /// closed for the new one; when all handle requests the new one is closed at once.
    #[arg(long = "web.max-connections", env = "PVE_EXPORTER_WEB_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub web_max_connections: u32,

    /// Time a client has from connecting (or from the first byte of its next request) to a
    /// complete request head, TLS handshake included.
    #[arg(long = "web.read-header-timeout", env = "PVE_EXPORTER_WEB_READ_HEADER_TIMEOUT", default_value = "10s",
          value_parser = parse_positive_duration)]
    pub web_read_header_timeout: Duration,

    /// A kept-alive connection without a request is closed after this.
    #[arg(long = "web.idle-timeout", env = "PVE_EXPORTER_WEB_IDLE_TIMEOUT", default_value = "2m",
          value_parser = parse_positive_duration)]
    pub web_idle_timeout: Duration,

    /// Time to write one response, from its first byte to its last; a client that does not take
    /// it in time is cut off.
    #[arg(long = "web.write-timeout", env = "PVE_EXPORTER_WEB_WRITE_TIMEOUT", default_value = "10s",
          value_parser = parse_positive_duration)]
    pub web_write_timeout: Duration,

    /// Basic-auth checks that may wait for a bcrypt slot (a quarter of the CPUs, one or two; a password not
    /// verified before); further ones are answered 503 at once.
    #[arg(long = "web.max-auth-waiting", env = "PVE_EXPORTER_WEB_MAX_AUTH_WAITING", default_value_t = 16)]
    pub web_max_auth_waiting: u32,

    /// The API token taken out of the environment at start-up ([`take_api_token_from_env`]);
    /// None: read the environment when needed (library use).
    #[arg(skip)]
    pub api_token: Option<Result<crate::sources::pve::api::Token, crate::sources::pve::api::ApiError>>,
}

/// Take the API token (`PVE_EXPORTER_API_TOKEN`) out of the daemon's environment: no process
/// the daemon starts (`qm`, `zfs`, `zpool`, `vgs`, `lvs`) inherits it, whatever spawns it.
/// (The kernel's copy of the initial environment, `/proc/<pid>/environ`, stays readable by
/// root, who can read the environment file anyway.)
///
/// # Safety
///
/// Changes the environment: call before the process starts threads (first thing in `main`).
pub unsafe fn take_api_token_from_env()
-> Option<Result<crate::sources::pve::api::Token, crate::sources::pve::api::ApiError>> {
    let token = crate::sources::pve::api::token_from_env();
    // SAFETY: the caller guarantees that no other thread reads or writes the environment.
    unsafe { std::env::remove_var(crate::sources::pve::api::TOKEN_ENV) };
    token
}

pub use crate::sources::pve::secret::secret_file_warning;

/// The monitor settings of the flags.
pub fn monitor_options(c: &Config) -> crate::sources::qemu::monitor::MonitorOptions {
    crate::sources::qemu::monitor::MonitorOptions {
        mode: c.qm_mode,
        qm_path: c.qm_path.clone(),
        step_timeout: c.qm_terminal_timeout,
        max_ttl: c.qm_max_ttl,
        rand: c.qm_rand,
        defer_close: c.qm_monitor_defer_close,
        max_concurrent: usize::from(c.qm_max_concurrent).max(1),
    }
}

// ---- Collector switches (made from the collector registry) --------------------------------

/// One `--collector.<name>` switch: a line of the collector registry (`collector::REGISTRY`).
#[derive(Debug, Clone, Copy)]
pub struct CollectorSwitch {
    pub name: &'static str,
    pub help: &'static str,
    pub default_on: bool,
}

/// The collectors the deprecated `--collect-running-vms false` turns off.
pub const RUNNING_VM_COLLECTORS: &[&str] =
    &["pve_config", "kvm", "qm", "nic", "disk", "balloon", "vcpu", "kvm_debugfs", "ebpf"];
/// The collectors the deprecated `--collect-storage false` turns off.
pub const STORAGE_COLLECTORS: &[&str] = &["storage", "storage_zfs", "storage_lvm"];

impl Config {
    /// The command line with a `--collector.<name>` / `--no-collector.<name>` pair for each of
    /// `switches` (env `PVE_EXPORTER_COLLECTOR_<NAME>`; the last one given wins).
    pub fn command_with_collectors(switches: &[CollectorSwitch]) -> clap::Command {
        use clap::{Arg, ArgAction, CommandFactory};
        let mut cmd = Config::command();
        for s in switches {
            let on = format!("collector.{}", s.name);
            let off = format!("no-collector.{}", s.name);
            let env = format!("PVE_EXPORTER_COLLECTOR_{}", s.name.to_ascii_uppercase());
            let help =
                format!("{} (default {}; --{off} turns it off)", s.help, if s.default_on { "on" } else { "off" });
            cmd = cmd
                .arg(
                    Arg::new(on.clone())
                        .long(on.clone())
                        .env(env)
                        .help(help)
                        .action(ArgAction::Set)
                        .num_args(0..=1)
                        .default_missing_value("true")
                        .value_parser(clap::builder::BoolishValueParser::new())
                        .overrides_with(off.clone())
                        .help_heading("Collectors"),
                )
                .arg(Arg::new(off.clone()).long(off).action(ArgAction::SetTrue).overrides_with(on).hide(true));
        }
        cmd
    }

    /// Parse flags from an iterator (tests, and main through the registry's switches).
    pub fn parse_with_collectors<I, T>(args: I, switches: &[CollectorSwitch]) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command_with_collectors(switches).try_get_matches_from(args)?;
        Self::from_matches_with_collectors(&matches, switches)
    }

    /// The configuration of parsed `matches` (of [`Config::command_with_collectors`]).
    pub fn from_matches_with_collectors(
        matches: &clap::ArgMatches,
        switches: &[CollectorSwitch],
    ) -> Result<Self, clap::Error> {
        use clap::FromArgMatches;
        let mut c = Self::from_arg_matches(matches)?;
        for s in switches {
            let on = matches.get_one::<bool>(&format!("collector.{}", s.name)).copied();
            let off = matches.get_flag(&format!("no-collector.{}", s.name));
            let mut enabled = if off { false } else { on.unwrap_or(s.default_on) };
            // The deprecated switches, where no --collector flag of the collector says otherwise.
            let given = off
                || matches
                    .value_source(&format!("collector.{}", s.name))
                    .is_some_and(|v| v != clap::parser::ValueSource::DefaultValue);
            if !given {
                if c.collect_running_vms == Some(false) && RUNNING_VM_COLLECTORS.contains(&s.name) {
                    enabled = false;
                }
                if c.collect_storage == Some(false) && STORAGE_COLLECTORS.contains(&s.name) {
                    enabled = false;
                }
            }
            c.collectors.insert(s.name, enabled);
        }
        Ok(c)
    }

    /// Whether the registry line `name` is switched on (an unknown name is off).
    pub fn collector_enabled(&self, name: &str) -> bool {
        self.collectors.get(name).copied().unwrap_or(false)
    }

    /// What to say once at start of deprecated flags in use.
    pub fn deprecations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = self.collect_running_vms {
            out.push(format!(
                "--collect-running-vms {v} (PVE_EXPORTER_COLLECT_RUNNING_VMS) is deprecated: use --no-collector.<name> \
                 for {}",
                RUNNING_VM_COLLECTORS.join(", ")
            ));
        }
        if let Some(v) = self.collect_storage {
            out.push(format!(
                "--collect-storage {v} (PVE_EXPORTER_COLLECT_STORAGE) is deprecated: use --no-collector.<name> for {}",
                STORAGE_COLLECTORS.join(", ")
            ));
        }
        out
    }
}

// ---- PVE collectors (collector/pve/) ----------------------------------------------------------

/// Where the PVE collectors that have both sources read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PveSource {
    /// The API when a token is configured, else local files.
    Auto,
    /// The node's own files (/proc, /sys, pmxcfs): no credentials.
    Local,
    /// The PVE API (needs a token).
    Api,
}

/// Which nodes the PVE collectors report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PveScope {
    /// This node only (every node runs an exporter); cluster-wide HA families only on the CRM master.
    Local,
    /// Every node of the cluster, through the API (one central exporter).
    Cluster,
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

/// A duration above zero (a zero time limit would close every connection at once).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?}: must be above zero")),
        d => Ok(d),
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
        assert!(c.collect_running_vms.is_none() && c.collect_storage.is_none() && c.qm_monitor_defer_close);
        assert!(c.collector_enabled("kvm") && c.collector_enabled("storage") && c.deprecations().is_empty());
        assert_eq!(c.metrics_prefix, "pve");
        assert_eq!(c.loglevel, LogLevel::Info);
        assert_eq!(c.qm_terminal_timeout, Duration::from_secs(10));
        assert_eq!(c.qm_max_ttl, Duration::from_secs(600));
        assert_eq!(c.qm_rand, Duration::from_secs(60));
        assert_eq!((c.qm_mode, c.qm_max_concurrent), (QmMode::Auto, 16));
        assert_eq!(c.qm_path, PathBuf::from("/usr/sbin/qm"));
        assert_eq!(c.root, PathBuf::from("/"));
        assert_eq!(c.ebpf, EbpfMode::Auto);
        assert!(c.ebpf_events.iter().any(|e| e == "kvm:kvm_pio"));
        // kvm_fpu only when asked for: its count is twice the user-space round trips.
        assert!(!c.ebpf_events.iter().any(|e| e == "kvm:kvm_fpu"));
        assert_eq!((c.kvm_debugfs, c.kvm_debugfs_per_vcpu), (KvmDebugfsMode::Auto, false));
    }

    #[test]
    fn qemu_allowed_users() {
        let c = Config::from_args(["pve-exporter"]).unwrap();
        assert_eq!(c.qemu_allowed_users, [0], "root only by default");
        let c = Config::from_args(["pve-exporter", "--qemu-allowed-users", "root,nobody,64055"]).unwrap();
        assert_eq!(c.qemu_allowed_users, [0, 65534, 64055]);
        let e = Config::from_args(["pve-exporter", "--qemu-allowed-users", "root,no-such-user-here"]).unwrap_err();
        assert!(e.to_string().contains("no such user"), "{e}");
    }

    #[test]
    fn secret_file_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pve-exporter");
        std::fs::write(&p, "PVE_EXPORTER_API_TOKEN=a@pve!t=s\n").unwrap();
        let warn = |mode| {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            secret_file_warning(&p, &std::fs::metadata(&p).unwrap())
        };
        assert_eq!(warn(0o600), None);
        assert_eq!(warn(0o400), None);
        let w = warn(0o644).unwrap();
        assert!(w.contains("readable by group or others (mode 0644)") && w.contains("chmod 600"), "{w}");
        assert!(warn(0o640).unwrap().contains("readable by"));
        assert!(warn(0o620).unwrap().contains("writable by"));
        assert!(warn(0o666).unwrap().contains("readable and writable"));
    }

    #[test]
    fn kvm_debugfs_flags() {
        let c = Config::from_args(["pve-exporter", "--kvm-debugfs", "on", "--kvm-debugfs-per-vcpu"]).unwrap();
        assert_eq!((c.kvm_debugfs, c.kvm_debugfs_per_vcpu), (KvmDebugfsMode::On, true));
        let c = Config::from_args(["pve-exporter", "--kvm-debugfs-per-vcpu", "false", "--kvm-debugfs", "off"]).unwrap();
        assert_eq!((c.kvm_debugfs, c.kvm_debugfs_per_vcpu), (KvmDebugfsMode::Off, false));
        assert!(Config::from_args(["pve-exporter", "--kvm-debugfs", "sometimes"]).is_err());
    }

    #[test]
    fn service_and_web_flags() {
        let c = Config::from_args(["pve-exporter"]).unwrap();
        assert_eq!((c.web_config_file, c.env_file), (None, None));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        let c = Config::from_args([
            "pve-exporter",
            "--web.config.file",
            "/etc/pve-exporter/web.yml",
            "--env-file=/etc/default/pve-exporter",
            "--shutdown-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(c.web_config_file, Some(PathBuf::from("/etc/pve-exporter/web.yml")));
        assert_eq!(c.env_file, Some(PathBuf::from("/etc/default/pve-exporter")));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(2));
        assert!(Config::from_args(["pve-exporter", "--shutdown-timeout", "soon"]).is_err());
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
        assert_eq!(c.collect_storage, Some(false));
        assert!(!c.collector_enabled("storage") && !c.collector_enabled("storage_lvm") && c.collector_enabled("kvm"));
        assert_eq!(c.deprecations().len(), 1);
        assert_eq!(c.loglevel, LogLevel::Debug);
        assert_eq!(c.metrics_prefix, "pvex");
        assert_eq!(c.ebpf, EbpfMode::Off);
        assert_eq!(c.ebpf_events, vec!["kvm:kvm_pio", "kvm:kvm_mmio"]);
        assert!(Config::from_args(["pve-exporter", "--metrics-prefix", "9bad"]).is_err());
        assert!(Config::from_args(["pve-exporter", "--qm-max-ttl", "soon"]).is_err());
        let c =
            Config::from_args(["pve-exporter", "--qm-mode", "qm", "--qm-max-concurrent", "4", "--qm-path", "/x/qm"])
                .unwrap();
        assert_eq!((c.qm_mode, c.qm_max_concurrent, c.qm_path), (QmMode::Qm, 4, PathBuf::from("/x/qm")));
        assert!(Config::from_args(["pve-exporter", "--qm-max-concurrent", "0"]).is_err());
        assert!(Config::from_args(["pve-exporter", "--qm-mode", "ssh"]).is_err());
    }
}

#[cfg(test)]
mod pve_tests {
    use super::*;

    #[test]
    fn pve_defaults() {
        let c = Config::from_args(["pve-exporter"]).unwrap();
        assert_eq!((c.pve_source, c.pve_scope), (PveSource::Auto, None));
        assert_eq!(c.pve_api_url, "https://localhost:8006");
        assert_eq!((&c.pve_api_token_file, &c.pve_api_ca_file), (&None, &None));
        assert!(!c.pve_api_insecure && !c.ha_always_emit);
        assert_eq!((c.pve_api_timeout, c.pve_api_max_concurrent), (Duration::from_secs(5), 5));
        for name in ["node_status", "vm_pressure", "ha_status", "physical_disk"] {
            assert!(c.collector_enabled(name), "{name}");
        }
        assert!(!c.collector_enabled("nonexistent"));
    }

    #[test]
    fn collector_switches_last_one_wins() {
        let on = |args: &[&str], name: &str| {
            let mut all = vec!["pve-exporter"];
            all.extend_from_slice(args);
            Config::from_args(all).unwrap().collector_enabled(name)
        };
        assert!(!on(&["--no-collector.physical_disk"], "physical_disk"));
        assert!(on(&["--no-collector.physical_disk"], "node_status"));
        assert!(on(&["--no-collector.ha_status", "--collector.ha_status"], "ha_status"));
        assert!(!on(&["--collector.ha_status", "--no-collector.ha_status"], "ha_status"));
        assert!(!on(&["--collector.vm_pressure=false"], "vm_pressure"));
        assert!(!on(&["--collector.node_status", "false"], "node_status"));
        assert!(on(&["--collector.node_status"], "node_status"));
        assert!(Config::from_args(["pve-exporter", "--collector.nonexistent"]).is_err());
    }

    #[test]
    fn pve_flags_parse() {
        let c = Config::from_args([
            "pve-exporter",
            "--pve-source",
            "api",
            "--pve-scope",
            "cluster",
            "--pve-api-url",
            "https://pve1.example:8006",
            "--pve-api-token-file",
            "/etc/pve-exporter/token",
            "--pve-api-ca-file",
            "/etc/ssl/ca.pem",
            "--pve-api-insecure",
            "--pve-api-timeout",
            "2s",
            "--pve-api-max-concurrent",
            "3",
            "--ha-always-emit",
        ])
        .unwrap();
        assert_eq!((c.pve_source, c.pve_scope), (PveSource::Api, Some(PveScope::Cluster)));
        assert_eq!(c.pve_api_url, "https://pve1.example:8006");
        assert_eq!(c.pve_api_token_file, Some(PathBuf::from("/etc/pve-exporter/token")));
        assert_eq!(c.pve_api_ca_file, Some(PathBuf::from("/etc/ssl/ca.pem")));
        assert!(c.pve_api_insecure && c.ha_always_emit);
        assert_eq!((c.pve_api_timeout, c.pve_api_max_concurrent), (Duration::from_secs(2), 3));
        assert!(Config::from_args(["pve-exporter", "--pve-api-max-concurrent", "0"]).is_err());
        assert!(Config::from_args(["pve-exporter", "--pve-source", "ssh"]).is_err());
        // The token itself has no flag: it never appears on a command line.
        assert!(Config::from_args(["pve-exporter", "--pve-api-token", "a@b!c=d"]).is_err());
    }
}
