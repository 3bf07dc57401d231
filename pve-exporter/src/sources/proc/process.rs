//! /proc: process discovery, the QEMU command line, and per-process CPU, memory, threads,
//! context switches and I/O. Parsers are pure functions from file contents to types; the
//! reading functions do one read per file.

use std::{borrow::Cow, collections::HashSet, io, time::Duration};

use crate::{
    heldfile::HeldFiles,
    host::HostRoot,
    sources::error::{ParseError, SourceError},
};

/// argv of a process from `/proc/<pid>/cmdline` (NUL-separated, trailing NUL optional).
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// Whether an executable path or argv[0] names QEMU: `kvm`, `qemu-kvm` (RHEL's libexec name),
/// `qemu-system-*`, also after a
/// package upgrade replaced the binary (`/proc/<pid>/exe` then reads `... (deleted)`).
pub fn is_qemu_binary(path: &str) -> bool {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let base = path.rsplit('/').next().unwrap_or(path);
    base == "kvm" || base == "qemu-kvm" || base.starts_with("qemu-system-")
}

/// What the QEMU command line tells about a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QemuCmdline {
    /// `-id <vmid>` (a PVE patch to QEMU).
    pub id: Option<String>,
    /// `-name` up to the first comma (`guest=` prefix of libvirt removed).
    pub name: String,
    /// `-cpu` up to the first comma.
    pub cpu: String,
    /// vCPUs from `-smp`.
    pub vcores: u64,
    /// Guest memory from `-m` (or the sum of memory backends with the NUMA/hotplug form).
    pub maxmem_bytes: u64,
    /// `-uuid`.
    pub uuid: Option<String>,
    /// NICs of `-netdev`/`-nic` with their `-device` (plain QEMU VMs; PVE asks the monitor).
    pub nics: Vec<CmdlineNic>,
    /// Drives of `-drive file=...` (plain QEMU VMs).
    pub drives: Vec<CmdlineDrive>,
}

/// A NIC as the command line describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdlineNic {
    /// `id=` of the `-netdev` (`nicN` for the Nth `-nic`).
    pub netdev: String,
    /// The backend: `tap`, `bridge`, `user`, ...
    pub kind: String,
    /// `ifname=` of a tap backend; empty when QEMU or a helper picks the name.
    pub ifname: String,
    /// The `-device` driver (`virtio-net-pci`) or `model=` of `-nic`.
    pub model: String,
    pub mac: String,
    /// `queues=` of the backend (a multiqueue tap); 1 without.
    pub queues: u32,
}

/// A `-drive` with a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdlineDrive {
    /// `id=`, else `drive<N>` by position.
    pub name: String,
    pub file: String,
    pub format: String,
    pub read_only: bool,
}

/// `queues=N` of a tap backend (QEMU takes 1..=1024); 1 when absent or not a count.
fn queues(v: &str) -> u32 {
    kv(v, "queues").and_then(|q| q.parse::<u32>().ok()).filter(|q| *q >= 1).unwrap_or(1)
}

/// The most NICs and drives read from one command line. PVE gives a VM at most 32 NICs and
/// some 60 drives (ide 4, sata 6, scsi 31, virtio 16, EFI, TPM), libvirt no more in practice;
/// a command line with more is not a real VM's. Matching devices to NICs and finding a drive's
/// free unit are linear in what is taken, so the caps keep a hostile command line (anything
/// that names itself kvm can run with one) from costing quadratic time (found by the scaling
/// check of the `qemu_cmdline` fuzz target: 10x the drives took 57x the time).
const MAX_NICS: usize = 256;
const MAX_DRIVES: usize = 256;

fn parse_nics(args: &[String]) -> Vec<CmdlineNic> {
    let mut nics: Vec<CmdlineNic> = Vec::new();
    for w in args.windows(2) {
        if nics.len() >= MAX_NICS {
            break;
        }
        let v = w[1].as_str();
        let kind = || kv(v, "type").unwrap_or_else(|| first_field(v)).to_string();
        match w[0].as_str() {
            "-netdev" => nics.push(CmdlineNic {
                netdev: kv(v, "id").unwrap_or("").to_string(),
                kind: kind(),
                ifname: kv(v, "ifname").unwrap_or("").to_string(),
                queues: queues(v),
                ..CmdlineNic::default()
            }),
            "-nic" => nics.push(CmdlineNic {
                netdev: kv(v, "id").map_or_else(|| format!("nic{}", nics.len()), str::to_string),
                kind: kind(),
                ifname: kv(v, "ifname").unwrap_or("").to_string(),
                model: kv(v, "model").unwrap_or("").to_string(),
                mac: kv(v, "mac").unwrap_or("").to_string(),
                queues: queues(v),
            }),
            _ => {}
        }
    }
    // The NIC devices name their backend.
    for dev in option_values(args, "-device") {
        if let Some(n) = kv(dev, "netdev").and_then(|id| nics.iter_mut().find(|n| n.netdev == id)) {
            n.model = first_field(dev).to_string();
            n.mac = kv(dev, "mac").unwrap_or("").to_string();
        }
    }
    nics
}

fn parse_drives(args: &[String]) -> Vec<CmdlineDrive> {
    let mut taken: HashSet<(String, u64, u64)> = HashSet::new();
    option_values(args, "-drive")
        .take(MAX_DRIVES)
        .filter_map(|d| {
            // Every drive takes its (interface, bus, unit), named or not, as QEMU counts them.
            let name = qemu_drive_name(d, &mut taken);
            Some(CmdlineDrive {
                name: kv(d, "id").map_or(name, str::to_string),
                file: kv(d, "file").filter(|f| !f.is_empty())?.to_string(),
                format: kv(d, "format").unwrap_or("").to_string(),
                read_only: matches!(kv(d, "readonly"), Some("on" | "true" | "yes")) || kv(d, "media") == Some("cdrom"),
            })
        })
        .collect()
}

/// The name QEMU gives a `-drive` without `id=` (blockdev.c, drive_new): `<if><bus>-hd<unit>`
/// or `-cd<unit>` for IDE (2 units a bus) and SCSI (7), `<if><unit>` for the others
/// (`pflash0`, `virtio1`); `if=` defaults to `ide` (x86's machines); a unit not given is the
/// first free one of its interface, counted over every drive before it.
fn qemu_drive_name(d: &str, taken: &mut HashSet<(String, u64, u64)>) -> String {
    let iface = kv(d, "if").unwrap_or("ide").to_string();
    let max_devs: u64 = match iface.as_str() {
        "ide" => 2,
        "scsi" => 7,
        _ => 0,
    };
    let num = |k| kv(d, k).and_then(|v| v.parse::<u64>().ok());
    let (mut bus, mut unit) = (num("bus").unwrap_or(0), num("unit"));
    if let Some(index) = num("index") {
        (bus, unit) = match index.checked_div(max_devs) {
            Some(b) => (b, Some(index % max_devs)),
            None => (0, Some(index)),
        };
    }
    let unit = unit.unwrap_or_else(|| {
        let mut u = 0u64;
        // At most as many steps as drives a command line can name: a hostile `bus=` at the
        // end of the numbers must not keep it going.
        let mut steps = 0;
        while taken.contains(&(iface.clone(), bus, u)) && u < 4096 && steps < 4096 {
            steps += 1;
            u += 1;
            if max_devs > 0 && u >= max_devs {
                u -= max_devs;
                // A hostile `bus=` near u64::MAX must not wrap (found by the `qemu_cmdline` fuzz target).
                bus = bus.saturating_add(1);
            }
        }
        u
    });
    taken.insert((iface.clone(), bus, unit));
    let media = match (iface.as_str(), kv(d, "media")) {
        ("ide" | "scsi", Some("cdrom")) => "-cd",
        ("ide" | "scsi", _) => "-hd",
        _ => "",
    };
    if max_devs > 0 { format!("{iface}{bus}{media}{unit}") } else { format!("{iface}{media}{unit}") }
}

fn option_values<'a>(args: &'a [String], opt: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    args.windows(2).filter(move |w| w[0] == opt).map(|w| w[1].as_str())
}

fn first_field(v: &str) -> &str {
    v.split(',').next().unwrap_or("")
}

fn kv<'a>(v: &'a str, key: &str) -> Option<&'a str> {
    v.split(',').find_map(|p| p.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// A QEMU size (`2048`, `2048M`, `4G`, `512k`); `default_unit` applies to a bare number.
pub fn parse_qemu_size(v: &str, default_unit: u64) -> Option<u64> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" => default_unit,
        "b" | "B" => 1,
        "k" | "K" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn parse_smp(v: &str) -> u64 {
    let first = first_field(v);
    if let Ok(n) = first.parse::<u64>() {
        return n;
    }
    if let Some(n) = kv(v, "cpus").and_then(|c| c.parse().ok()) {
        return n;
    }
    // Topology only: QEMU multiplies it out. Saturating: a hostile command line's product
    // must not wrap around to a small count (QEMU itself rejects such a topology).
    let get = |k| kv(v, k).and_then(|c| c.parse::<u64>().ok()).unwrap_or(1);
    ["sockets", "dies", "cores", "threads"].into_iter().fold(1u64, |n, k| n.saturating_mul(get(k)))
}

fn parse_maxmem(args: &[String]) -> u64 {
    let Some(m) = option_values(args, "-m").next() else {
        return 0;
    };
    let first = first_field(m);
    if !first.contains('=') {
        return parse_qemu_size(first, 1 << 20).unwrap_or(0);
    }
    // `-m size=...,slots=...,maxmem=...`: the guest's memory is spread over memory backend
    // objects (one per NUMA node, plus hotplugged DIMMs).
    let backends: u64 = option_values(args, "-object")
        .filter(|o| first_field(o).starts_with("memory-backend-"))
        .filter_map(|o| kv(o, "size").and_then(|s| parse_qemu_size(s, 1)))
        .fold(0u64, u64::saturating_add);
    if backends > 0 {
        return backends;
    }
    kv(m, "size").and_then(|s| parse_qemu_size(s, 1 << 20)).unwrap_or(0)
}

/// Parse a QEMU command line (argv without the NULs).
pub fn parse_qemu_cmdline(args: &[String]) -> QemuCmdline {
    let name = option_values(args, "-name").next().map(first_field).unwrap_or("");
    let name = name.strip_prefix("guest=").unwrap_or(name);
    QemuCmdline {
        id: option_values(args, "-id").next().map(str::to_string),
        name: name.to_string(),
        cpu: option_values(args, "-cpu").next().map(first_field).unwrap_or("").to_string(),
        vcores: option_values(args, "-smp").next().map(parse_smp).unwrap_or(1),
        maxmem_bytes: parse_maxmem(args),
        uuid: option_values(args, "-uuid").next().map(str::to_string),
        nics: parse_nics(args),
        drives: parse_drives(args),
    }
}

/// A QEMU process found in /proc: its command line, and who says so (the discovery in
/// `vm.rs` decides from owner and executable whether to believe it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuProcess {
    pub pid: u32,
    pub cmdline: QemuCmdline,
    /// Real, effective, saved and file-system uid (`Uid:` of `/proc/<pid>/status`), read
    /// after the command line. None when status has no such line.
    pub uids: Option<[u32; 4]>,
    /// The target of `/proc/<pid>/exe` (`... (deleted)` after an upgrade); None when it
    /// cannot be read (no ptrace rights on the process, or none in a fixture tree).
    pub exe: Option<String>,
}

impl QemuProcess {
    /// Whether every uid of the process is in `owners`. The real uid matters as much as the
    /// effective one: whoever started a process chose its command line (a setuid binary run
    /// by a user has that user as real uid), and whoever it runs as can rewrite it.
    pub fn owned_by(&self, owners: &[u32]) -> bool {
        self.uids.is_some_and(|u| u.iter().all(|id| owners.contains(id)))
    }
}

/// The four uids of the `Uid:` line of `/proc/<pid>/status` (real, effective, saved, fs).
pub fn parse_status_uids(text: &str) -> Option<[u32; 4]> {
    let rest = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = rest.split_whitespace().map(|w| w.parse::<u32>());
    let mut out = [0u32; 4];
    for slot in &mut out {
        *slot = ids.next()?.ok()?;
    }
    Some(out)
}

/// CPU times from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
    /// Block I/O delay (delayacct_blkio_ticks).
    pub iowait: Duration,
    pub num_threads: u64,
    /// When the process started, since boot (`starttime`): its uptime is /proc/uptime less this.
    pub started: Duration,
}

/// `/proc/<pid>/stat` (proc(5)): `pid (comm) state ppid ...`. Our own parser, not procfs':
/// that one sliced the line off a character boundary (a panic, found by the `proc_files` fuzz
/// target) when `comm`, which any process may set, held a multi-byte character.
pub fn parse_stat(text: &[u8], ticks_per_second: u64) -> Result<CpuTimes, ParseError> {
    let bad = |why: &str| ParseError::new("stat", why.to_string());
    // `comm` may hold spaces and parentheses: the fields start after the last `)`.
    let close = text.iter().rposition(|b| *b == b')').ok_or_else(|| bad("no `(comm)`"))?;
    let rest = std::str::from_utf8(&text[close + 1..]).map_err(|_| bad("fields are not text"))?;
    // Field N of proc(5) is rest[N - 3] (field 3, the state, comes first).
    // The fields up to the last one read (42), without a list of all 50 per process.
    let mut all = [""; 40];
    let mut count = 0;
    for (slot, f) in all.iter_mut().zip(rest.split_ascii_whitespace()) {
        *slot = f;
        count += 1;
    }
    let fields = &all[..count];
    let num = |n: usize, what: &str| -> Result<u64, ParseError> {
        let f = fields.get(n - 3).ok_or_else(|| bad(&format!("no {what} (field {n})")))?;
        f.parse::<u64>().map_err(|_| bad(&format!("{what} (field {n}) is not a number: {f:?}")))
    };
    let tps = ticks_per_second.max(1) as f64;
    let d = |t: u64| Duration::from_secs_f64(t as f64 / tps);
    Ok(CpuTimes {
        user: d(num(14, "utime")?),
        system: d(num(15, "stime")?),
        // Since Linux 2.6.18; absent on older kernels.
        iowait: d(num(42, "delayacct_blkio_ticks").unwrap_or(0)),
        // A signed field: a negative or garbled count is no count.
        num_threads: fields.get(20 - 3).and_then(|f| f.parse::<i64>().ok()).unwrap_or(0).max(0) as u64,
        started: d(num(22, "starttime")?),
    })
}

/// The lines of `/proc/<pid>/status` we export.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub threads: Option<u64>,
    pub voluntary_ctxt_switches: Option<u64>,
    pub nonvoluntary_ctxt_switches: Option<u64>,
    /// `Vm*`, `Rss*` and `Hugetlb*` lines: key lowercased without the colon, value in bytes.
    pub memory: Vec<(Cow<'static, str>, u64)>,
}

impl Status {
    pub fn memory(&self, key: &str) -> Option<u64> {
        self.memory.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// Our own parser rather than procfs' `Status`: that one requires some thirty lines to be
/// present and fails as a whole when a kernel lacks one; we need only a few and take what
/// is there.
pub fn parse_status(text: &str) -> Status {
    let mut st = Status { memory: Vec::with_capacity(MEMORY_KEYS.len()), ..Status::default() };
    // Lines found by a plain byte scan, and those of no interest (most of the ~57) skipped on
    // their first byte: a scrape parses one status per VM, and the per-line searches of
    // `lines()` and `split_once` were most of its cost.
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let end = bytes[start..].iter().position(|b| *b == b'\n').map_or(bytes.len(), |n| start + n);
        let line = &text[start..end];
        start = end + 1;
        if !matches!(line.as_bytes().first(), Some(b'V' | b'R' | b'H' | b'T' | b'v' | b'n')) {
            continue;
        }
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        // Most of the ~57 lines are of no interest: skip them before looking at their value.
        let memory = key.starts_with("Vm") || key.starts_with("Rss") || key.starts_with("Hugetlb");
        if !memory && !matches!(key, "Threads" | "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches") {
            continue;
        }
        let mut words = rest.split_whitespace();
        let Some(num) = words.next().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        match key {
            "Threads" => st.threads = Some(num),
            "voluntary_ctxt_switches" => st.voluntary_ctxt_switches = Some(num),
            "nonvoluntary_ctxt_switches" => st.nonvoluntary_ctxt_switches = Some(num),
            k if k.starts_with("Vm") || k.starts_with("Rss") || k.starts_with("Hugetlb") => {
                let bytes = match words.next() {
                    Some("kB") => num.saturating_mul(1024),
                    _ => num,
                };
                st.memory.push((memory_key(k), bytes));
            }
            _ => {}
        }
    }
    st
}

/// The memory fields of status this kernel prints (lowercased): named without an allocation.
const MEMORY_KEYS: [&str; 16] = [
    "vmpeak",
    "vmsize",
    "vmlck",
    "vmpin",
    "vmhwm",
    "vmrss",
    "rssanon",
    "rssfile",
    "rssshmem",
    "vmdata",
    "vmstk",
    "vmexe",
    "vmlib",
    "vmpte",
    "vmswap",
    "hugetlbpages",
];

fn memory_key(k: &str) -> Cow<'static, str> {
    match MEMORY_KEYS.iter().find(|m| m.eq_ignore_ascii_case(k)) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(k.to_ascii_lowercase()),
    }
}

pub use procfs::process::Io;

/// `/proc/<pid>/io`: the seven `key: value` lines, each required. Our own parser rather than
/// procfs's: that one allocates a String per line and a map per file (100 VMs: ~900
/// allocations per scrape) and slices a key's last byte off without looking (a multi-byte
/// character there panics).
pub fn parse_io(text: &[u8]) -> Result<Io, ParseError> {
    const KEYS: [&str; 7] = ["rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes"];
    let text = std::str::from_utf8(text).map_err(|_| ParseError::new("io", "not UTF-8"))?;
    let mut v = [None::<u64>; 7];
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let Some(i) = KEYS.iter().position(|k| *k == key.trim()) else { continue };
        let n = value.trim().parse::<u64>().map_err(|_| ParseError::new("io", format!("bad {key} {value:?}")))?;
        v[i] = Some(n);
    }
    let get = |i: usize| v[i].ok_or_else(|| ParseError::new("io", format!("no {} line", KEYS[i])));
    Ok(Io {
        rchar: get(0)?,
        wchar: get(1)?,
        syscr: get(2)?,
        syscw: get(3)?,
        read_bytes: get(4)?,
        write_bytes: get(5)?,
        cancelled_write_bytes: get(6)?,
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_memtotal(text: &[u8]) -> Result<u64, ParseError> {
    super::node::meminfo_bytes(text, "MemTotal")
}

/// Everything we read about one process: each file read once.
#[derive(Debug, Clone, Default)]
pub struct ProcessStats {
    pub cpu: Option<CpuTimes>,
    pub status: Option<Status>,
    pub io: Option<Io>,
}

/// The slots of a process's files in the [`HeldFiles`] of [`read_process`].
const STAT: usize = 0;
const STATUS: usize = 1;
const IO: usize = 2;

/// Read stat, status and io of `pid`, through the files `held` keeps open for it (opened on
/// first use; reopened by path when the held ones belong to a process that exited). Err only
/// when the process is gone; a file that cannot be read or parsed leaves its part empty and
/// is reported in `errors`.
pub fn read_process(
    host: &HostRoot,
    held: &mut HeldFiles<u32>,
    pid: u32,
    errors: &mut Vec<SourceError>,
) -> io::Result<ProcessStats> {
    let mut st = ProcessStats::default();
    let stat = held.read(&pid, STAT, || host.path(format!("proc/{pid}/stat")))?; // gone: the caller drops the VM
    match parse_stat(stat, procfs::ticks_per_second()) {
        Ok(c) => st.cpu = Some(c),
        Err(e) => errors.push(e.input(format!("/proc/{pid}/stat")).into()),
    }
    // A file missing while /proc/<pid> is still there (io without CONFIG_TASK_IO_ACCOUNTING)
    // is a missing file, not a process that exited.
    let failed = |e: io::Error, file: &str, errors: &mut Vec<SourceError>| -> io::Result<()> {
        if crate::host::is_gone(&e) && !host.path(format!("proc/{pid}")).exists() {
            return Err(e);
        }
        errors.push(SourceError::io(format!("/proc/{pid}/{file}"), e));
        Ok(())
    };
    match held.read(&pid, STATUS, || host.path(format!("proc/{pid}/status"))).and_then(utf8) {
        Ok(t) => st.status = Some(parse_status(t)),
        Err(e) => failed(e, "status", errors)?,
    }
    match held.read(&pid, IO, || host.path(format!("proc/{pid}/io"))) {
        Ok(t) => match parse_io(t) {
            Ok(io) => st.io = Some(io),
            Err(e) => errors.push(e.input(format!("/proc/{pid}/io")).into()),
        },
        Err(e) => failed(e, "io", errors)?,
    }
    Ok(st)
}

/// Text of a file read as bytes, with the error `read_to_string` gives.
pub fn utf8(raw: &[u8]) -> io::Result<&str> {
    std::str::from_utf8(raw)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"))
}

/// The vCPU index of a QEMU thread from its comm: `CPU 3/KVM` -> 3 (also `CPU 3/TCG`).
/// QEMU names vCPU threads so with `debug-threads=on` (PVE always sets it); anything else,
/// including a comm cut at 15 bytes mid-name, is not a vCPU thread.
pub fn vcpu_index(comm: &str) -> Option<u32> {
    let (index, accel) = comm.strip_prefix("CPU ")?.split_once('/')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || !matches!(accel, "KVM" | "TCG") {
        return None;
    }
    index.parse().ok()
}

/// `/proc/<pid>/task/<tid>/schedstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Schedstat {
    /// Time spent on a CPU, in ns.
    pub run_ns: u64,
    /// Time spent runnable, waiting on a run queue, in ns (for a vCPU thread: the guest's steal).
    pub wait_ns: u64,
    /// Timeslices run on a CPU.
    pub timeslices: u64,
}

/// `<run ns> <wait ns> <timeslices>`. A kernel without schedstat support prints `0 0 0`, which
/// parses (the caller cannot tell it from a thread that never ran). Fields a later kernel may
/// append are ignored; fewer than three numbers is None.
pub fn parse_schedstat(text: &str) -> Option<Schedstat> {
    let mut f = text.split_ascii_whitespace().map(|w| w.parse::<u64>().ok());
    Some(Schedstat { run_ns: f.next()??, wait_ns: f.next()??, timeslices: f.next()?? })
}

/// A vCPU thread of a QEMU process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuThread {
    pub tid: u32,
    /// N of `CPU N/KVM`.
    pub index: u32,
}

/// The vCPU threads of `pid`, by index, from `/proc/<pid>/task/<tid>/comm`. Threads that exit
/// while we look are skipped. Err when the task directory cannot be listed (NotFound: the
/// process is gone) or a comm cannot be read for another reason.
pub fn vcpu_threads(host: &HostRoot, pid: u32) -> io::Result<Vec<VcpuThread>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(host.path(format!("proc/{pid}/task")))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = match host.read(format!("proc/{pid}/task/{tid}/comm")) {
            Ok(c) => c,
            Err(e) if crate::host::is_gone(&e) => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("pid {pid}: task {tid}: comm: {e}"))),
        };
        if let Some(index) = vcpu_index(String::from_utf8_lossy(&comm).trim_end_matches('\n')) {
            out.push(VcpuThread { tid, index });
        }
    }
    out.sort_by_key(|t| (t.index, t.tid));
    Ok(out)
}

/// Read and parse `/proc/<pid>/task/<tid>/schedstat`.
pub fn read_schedstat(host: &HostRoot, pid: u32, tid: u32) -> io::Result<Schedstat> {
    let text = host.read(format!("proc/{pid}/task/{tid}/schedstat"))?;
    parse_schedstat(&String::from_utf8_lossy(&text)).ok_or_else(|| {
        let shown = text.escape_ascii().to_string();
        io::Error::new(io::ErrorKind::InvalidData, format!("task {tid}: schedstat: unparseable {shown:?}"))
    })
}

/// The number the kernel keeps of `pid`'s threads, from one `fstat` of `/proc/<pid>/task`
/// (held open in slot 0 of `pid` in `dirs`) without reading a file: procfs gives that directory
/// a link count of 2 + the number of threads (`proc_task_getattr`), and 2 once the process it
/// was opened for has exited. (On an ordinary file system, as in fixture trees, a directory's
/// link count is 2 + its subdirectories: the same number.)
pub fn task_link_count(dirs: &mut HeldFiles<u32>, host: &HostRoot, pid: u32) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(dirs.metadata(&pid, 0, || host.path(format!("proc/{pid}/task")))?.nlink())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn held_task_dir_counts_threads_until_the_process_exits() {
        let host = HostRoot::new("/");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let mut dirs = HeldFiles::new(crate::heldfile::FdBudget::new(8), crate::heldfile::OnStale::Fail);
        assert_eq!(task_link_count(&mut dirs, &host, pid).unwrap(), 2 + 1);
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: the held directory answers with no thread; by path the process is gone.
        assert_eq!(task_link_count(&mut dirs, &host, pid).unwrap(), 2);
        dirs.remove(&pid);
        assert_eq!(task_link_count(&mut dirs, &host, pid).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn status_uids() {
        let text = "Name:\tqemu-system-x86\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nPid:\t4242\n\
                    PPid:\t1\nTracerPid:\t0\nUid:\t64055\t64055\t64055\t64055\nGid:\t994\t994\t994\t994\n";
        assert_eq!(parse_status_uids(text), Some([64055; 4]));
        assert_eq!(parse_status_uids("Uid:\t1000\t0\t0\t0\n"), Some([1000, 0, 0, 0]));
        for bad in ["", "Uid:\t0\t0\t0\n", "Uid:\t0\tx\t0\t0\n", "Uid:\t-1\t0\t0\t0\n", "Gid:\t0\t0\t0\t0\n"] {
            assert_eq!(parse_status_uids(bad), None, "{bad:?}");
        }
        // Every uid must be allowed: a setuid-root program run by a user has the user as real uid.
        let p = |uids| QemuProcess { pid: 1, cmdline: QemuCmdline::default(), uids, exe: None };
        assert!(p(Some([0; 4])).owned_by(&[0]));
        assert!(!p(Some([1000, 0, 0, 0])).owned_by(&[0]));
        assert!(!p(Some([0, 0, 0, 1000])).owned_by(&[0]));
        assert!(p(Some([64055, 64055, 64055, 64055])).owned_by(&[0, 64055]));
        assert!(!p(None).owned_by(&[0]), "unknown owner: not believed");
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(parse_cmdline(b"/usr/bin/kvm\x00-id\x00100\x00"), vec!["/usr/bin/kvm", "-id", "100"]);
        assert_eq!(parse_cmdline(b"a\0b"), vec!["a", "b"]);
        assert!(parse_cmdline(b"").is_empty());
        assert_eq!(parse_cmdline(b"\xff\0"), vec!["\u{fffd}"]);
    }

    #[test]
    fn qemu_binaries() {
        assert!(is_qemu_binary("/usr/bin/kvm"));
        assert!(is_qemu_binary("kvm"));
        assert!(is_qemu_binary("/usr/bin/qemu-system-x86_64"));
        assert!(is_qemu_binary("/usr/bin/qemu-system-x86_64 (deleted)"));
        assert!(is_qemu_binary("/usr/libexec/qemu-kvm"));
        assert!(!is_qemu_binary("/usr/bin/kvm-ok"));
        assert!(!is_qemu_binary("/usr/bin/bash"));
        assert!(!is_qemu_binary(""));
    }

    #[test]
    fn spec_cmdline() {
        let c = parse_qemu_cmdline(&parse_cmdline(
            b"/usr/bin/qemu-system-x86_64\x00-id\x00100\x00-name\x00myvm\x00-cpu\x00host\x00-smp\x004\x00-m\x002048\x00",
        ));
        assert_eq!(
            c,
            QemuCmdline {
                id: Some("100".into()),
                name: "myvm".into(),
                cpu: "host".into(),
                vcores: 4,
                maxmem_bytes: 2048 << 20,
                ..QemuCmdline::default()
            }
        );
    }

    /// Found by the `qemu_cmdline` fuzz target: a `-drive` with `bus=` near u64::MAX and no
    /// unit made the search for a free unit wrap the bus number (a panic with overflow checks).
    #[test]
    fn a_drive_bus_at_the_end_of_the_numbers() {
        let crash = include_bytes!("../../../../fixtures/fuzz/qemu_cmdline-crash-a63290c9");
        let _ = parse_qemu_cmdline(&parse_cmdline(crash));
        let max = u64::MAX.to_string();
        let args: Vec<String> = [
            "kvm",
            "-drive",
            &format!("file=a,if=scsi,bus={max},unit=6"),
            "-drive",
            &format!("file=b,if=scsi,bus={max}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let names: Vec<String> = parse_qemu_cmdline(&args).drives.into_iter().map(|d| d.name).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// Found by the scaling check (`cargo xtask fuzz --scaling`): a command line of thousands of
    /// drives and NICs took quadratic time (every drive searched the units of all before it).
    /// The first 256 of each are read, which is more than PVE or libvirt ever writes.
    #[test]
    fn drives_and_nics_past_the_cap_are_not_read() {
        let mut a = vec!["kvm".to_string()];
        for i in 0..3000 {
            a.extend(["-drive".into(), format!("file=/d{i},if=virtio")]);
            a.extend(["-netdev".into(), format!("type=tap,id=net{i},ifname=tap100i{i}")]);
            a.extend(["-device".into(), format!("virtio-net-pci,netdev=net{i},mac=02:00:00:00:00:01")]);
        }
        let c = parse_qemu_cmdline(&a);
        assert_eq!((c.drives.len(), c.nics.len()), (MAX_DRIVES, MAX_NICS));
        assert_eq!(c.drives[255].name, "virtio255");
        assert_eq!(c.nics[255].model, "virtio-net-pci");
    }

    #[test]
    fn name_cpu_smp_forms() {
        let c = parse_qemu_cmdline(&args(
            "kvm -id 101 -name vm100,debug-threads=on -cpu host,+kvm_pv_eoi,+kvm_pv_unhalt -smp 4,sockets=1,cores=4,maxcpus=4",
        ));
        assert_eq!((c.name.as_str(), c.cpu.as_str(), c.vcores), ("vm100", "host", 4));
        assert_eq!(parse_qemu_cmdline(&args("kvm -smp cpus=6,sockets=2")).vcores, 6);
        assert_eq!(parse_qemu_cmdline(&args("kvm -smp sockets=2,cores=3,threads=2")).vcores, 12);
        assert_eq!(parse_qemu_cmdline(&args("kvm -name guest=inst-1,debug-threads=on")).name, "inst-1");
        // No -smp: QEMU's default of one vCPU. No -id: not a PVE VM.
        let c = parse_qemu_cmdline(&args("qemu-system-x86_64 -m 512"));
        assert_eq!((c.id, c.vcores, c.maxmem_bytes), (None, 1, 512 << 20));
        // Option at the very end without a value.
        assert_eq!(parse_qemu_cmdline(&args("kvm -id")).id, None);
        // A hostile topology or memory backends do not wrap around to small numbers.
        let big = u64::MAX / 2;
        let c = parse_qemu_cmdline(&args(&format!("kvm -smp sockets={big},cores={big},threads=3")));
        assert_eq!(c.vcores, u64::MAX);
        let c = parse_qemu_cmdline(&args(&format!(
            "kvm -m size=1G,maxmem=2G -object memory-backend-ram,id=a,size={big} -object memory-backend-ram,id=b,size={big} -object memory-backend-ram,id=c,size={big}"
        )));
        assert_eq!(c.maxmem_bytes, u64::MAX);
    }

    #[test]
    fn plain_qemu_devices() {
        let c = parse_qemu_cmdline(&args(
            "qemu-system-x86_64 -name web -uuid 1b4e28ba-2fa1-11d2-883f-0016d3cca427 \
             -netdev tap,id=n0,ifname=qtap0,script=no,downscript=no,queues=4 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,mq=on \
             -netdev user,id=n1 -nic tap,ifname=qtap1,model=e1000,mac=52:54:00:00:00:02 \
             -drive file=/img/web.qcow2,format=qcow2,if=virtio,id=disk0 -drive if=none,id=empty \
             -drive file=/img/seed.iso,media=cdrom",
        ));
        assert_eq!(c.uuid.as_deref(), Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427"));
        let nics: Vec<_> = c.nics.iter().map(|n| (&*n.netdev, &*n.kind, &*n.ifname, &*n.model, &*n.mac)).collect();
        assert_eq!(
            nics,
            [
                ("n0", "tap", "qtap0", "virtio-net-pci", "52:54:00:12:34:56"),
                ("n1", "user", "", "", ""),
                ("nic2", "tap", "qtap1", "e1000", "52:54:00:00:00:02"),
            ]
        );
        assert_eq!(c.nics.iter().map(|n| n.queues).collect::<Vec<_>>(), [4, 1, 1], "queues=4 of the tap");
        let drives: Vec<_> = c.drives.iter().map(|d| (&*d.name, &*d.file, &*d.format, d.read_only)).collect();
        assert_eq!(drives, [("disk0", "/img/web.qcow2", "qcow2", false), ("ide0-cd0", "/img/seed.iso", "", true)]);
        // Drives without id= as QEMU names them: the UEFI firmware's pflash pair, IDE units
        // filling bus 0 then bus 1, explicit index= and unit=.
        let c = parse_qemu_cmdline(&args(
            "qemu-system-x86_64 -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
             -drive if=pflash,format=raw,file=/var/lib/vm/OVMF_VARS.fd -drive file=/a.img -drive file=/b.img \
             -drive file=/c.iso,media=cdrom -drive file=/d.img,if=virtio -drive file=/e.img,if=scsi,index=8",
        ));
        let names: Vec<&str> = c.drives.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["pflash0", "pflash1", "ide0-hd0", "ide0-hd1", "ide1-cd0", "virtio0", "scsi1-hd1"]);
    }

    #[test]
    fn numa_memory() {
        let c = parse_qemu_cmdline(&args(
            "kvm -m size=4096M,slots=255,maxmem=524288M -object memory-backend-ram,id=ram-node0,size=2048M -object memory-backend-ram,id=ram-node1,size=2048M",
        ));
        assert_eq!(c.maxmem_bytes, 4096 << 20);
        // Hotplug form without backend objects: size= of -m.
        assert_eq!(parse_qemu_cmdline(&args("kvm -m size=1024,slots=255,maxmem=4096M")).maxmem_bytes, 1024 << 20);
        assert_eq!(parse_qemu_cmdline(&args("kvm -m 4G")).maxmem_bytes, 4 << 30);
        assert_eq!(parse_qemu_cmdline(&args("kvm -m lots")).maxmem_bytes, 0);
        assert_eq!(parse_qemu_size("99999999999999999999", 1), None);
    }

    #[test]
    fn stat_of_the_spec() {
        let text = b"12345 (qemu-system-x86) S 1 12345 12345 0 -1 4194304 1000 0 0 0 500 200 0 0 20 0 50 0 100 1000000 500 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 42";
        let c = parse_stat(text, 100).unwrap();
        assert_eq!(c.user, Duration::from_secs(5));
        assert_eq!(c.system, Duration::from_secs(2));
        assert_eq!(c.iowait, Duration::from_millis(420));
        assert_eq!(c.num_threads, 50);
        // A comm with spaces and parentheses.
        let text = b"7 (CPU 0/KVM) (x) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 100 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0";
        assert_eq!(parse_stat(text, 100).unwrap().user, Duration::from_millis(30));
        assert!(parse_stat(b"garbage", 100).is_err());
        assert!(parse_stat(b"", 100).is_err());
        // Found by the `proc_files` fuzz target: a multi-byte character in `comm` made
        // procfs' parser panic; it parses (comm is not needed).
        let crash = include_bytes!("../../../../fixtures/fuzz/proc_files-crash-a207919d");
        let _ = parse_stat(crash, 100);
        let c = parse_stat("3100 (kvm\u{e9}) S 1 3100 3100 0 -1 0 0 0 0 0 7 8 0 0 20 0 3 0 9".as_bytes(), 1).unwrap();
        assert_eq!((c.user, c.num_threads, c.started), (Duration::from_secs(7), 3, Duration::from_secs(9)));
        assert!(parse_stat(b"1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 8 0 0 20 0 3 0 9", 1).is_err());
    }

    #[test]
    fn status_of_the_spec() {
        let s = parse_status(
            "Name:\tqemu-system-x86\nThreads:\t50\nVmPeak:\t1000 kB\nVmRSS:\t500 kB\nVmData:\t200 kB\nRssAnon:\t100 kB\nHugetlbPages:\t0 kB\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n",
        );
        assert_eq!(s.threads, Some(50));
        assert_eq!(s.voluntary_ctxt_switches, Some(1234));
        assert_eq!(s.nonvoluntary_ctxt_switches, Some(56));
        assert_eq!(s.memory("vmrss"), Some(500 * 1024));
        assert_eq!(s.memory("vmpeak"), Some(1000 * 1024));
        assert_eq!(s.memory("hugetlbpages"), Some(0));
        assert_eq!(s.memory.len(), 5);
        let s = parse_status("VmRSS:\tlots kB\nThreads\n::\n");
        assert_eq!(s, Status::default());
    }

    /// The line scan that skips lines on their first byte finds what a plain walk over every
    /// line finds, in the status files of every process of this machine (and without a final
    /// newline, and with CRLF).
    #[test]
    fn status_scan_finds_what_every_line_says() {
        fn every_line(text: &str) -> Status {
            let mut st = Status::default();
            for line in text.lines() {
                let Some((key, rest)) = line.split_once(':') else { continue };
                let mut words = rest.split_whitespace();
                let Some(num) = words.next().and_then(|n| n.parse::<u64>().ok()) else { continue };
                match key {
                    "Threads" => st.threads = Some(num),
                    "voluntary_ctxt_switches" => st.voluntary_ctxt_switches = Some(num),
                    "nonvoluntary_ctxt_switches" => st.nonvoluntary_ctxt_switches = Some(num),
                    k if k.starts_with("Vm") || k.starts_with("Rss") || k.starts_with("Hugetlb") => {
                        let b = if words.next() == Some("kB") { num.saturating_mul(1024) } else { num };
                        st.memory.push((memory_key(k), b));
                    }
                    _ => {}
                }
            }
            st
        }
        let mut seen = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(text) = std::fs::read_to_string(e.path().join("status")) else { continue };
            seen += 1;
            assert_eq!(parse_status(&text), every_line(&text), "{text}");
            let cut = text.trim_end();
            assert_eq!(parse_status(cut), every_line(cut));
            let crlf = text.replace('\n', "\r\n");
            assert_eq!(parse_status(&crlf), every_line(&crlf));
        }
        assert!(seen > 1);
    }

    #[test]
    fn io_of_the_spec() {
        let io = parse_io(b"rchar: 123456\nwchar: 789012\nsyscr: 100\nsyscw: 200\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n").unwrap();
        assert_eq!(
            (io.rchar, io.wchar, io.syscr, io.syscw, io.read_bytes, io.write_bytes),
            (123456, 789012, 100, 200, 4096, 8192)
        );
        assert!(parse_io(b"rchar: x\n").is_err());
        assert!(parse_io(b"rchar: 1\nwchar: 2\n").is_err(), "every line is required");
        // procfs's parser sliced a key's last byte: a multi-byte character there panicked.
        assert!(parse_io("r\u{e9} 1\nrchar: 1\n".as_bytes()).is_err());
        assert!(parse_io(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn process_files_through_held_descriptors() {
        use crate::heldfile::{FdBudget, OnStale};
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let p = dir.path().join("proc/60");
        std::fs::create_dir_all(&p).unwrap();
        let stat = |utime: u64| {
            format!(
                "60 (kvm) S 1 60 60 0 -1 0 0 0 0 0 {utime} 200 0 0 20 0 50 0 100 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 42"
            )
        };
        std::fs::write(p.join("stat"), stat(500)).unwrap();
        std::fs::write(p.join("status"), "Threads:\t50\nVmRSS:\t500 kB\n").unwrap();
        let budget = FdBudget::new(100);
        let mut held = HeldFiles::new(budget.clone(), OnStale::Reopen);
        let mut errors = Vec::new();
        // io missing while the process is there: reported, the rest is read.
        let st = read_process(&host, &mut held, 60, &mut errors).unwrap();
        assert_eq!(st.cpu.map(|c| c.num_threads), Some(50));
        assert_eq!(st.status.map(|s| s.memory("vmrss")), Some(Some(500 * 1024)));
        assert!(st.io.is_none());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().starts_with("/proc/60/io: "), "{errors:?}");
        assert_eq!(budget.used(), 2);
        // The next read gives the new values through the held files, and finds io now.
        std::fs::write(p.join("stat"), stat(900)).unwrap();
        std::fs::write(
            p.join("io"),
            "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 6\ncancelled_write_bytes: 0\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        let st = read_process(&host, &mut held, 60, &mut errors).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(st.cpu.map(|c| c.user), Some(Duration::from_secs(9)));
        assert_eq!(st.io.map(|io| io.write_bytes), Some(6));
        assert_eq!(budget.used(), 3);
        // status that is not text: reported as read_to_string did.
        std::fs::write(p.join("status"), b"\xff\xfe").unwrap();
        let mut errors = Vec::new();
        let st = read_process(&host, &mut held, 60, &mut errors).unwrap();
        assert!(st.status.is_none());
        assert_eq!(
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            ["/proc/60/status: stream did not contain valid UTF-8"]
        );
        // A process that is gone: NotFound, nothing reported.
        let mut errors = Vec::new();
        assert!(crate::host::is_gone(&read_process(&host, &mut held, 61, &mut errors).unwrap_err()));
        assert!(errors.is_empty());
    }

    #[test]
    fn vcpu_thread_names() {
        assert_eq!(vcpu_index("CPU 0/KVM"), Some(0));
        assert_eq!(vcpu_index("CPU 3/KVM"), Some(3));
        assert_eq!(vcpu_index("CPU 254/KVM"), Some(254));
        assert_eq!(vcpu_index("CPU 3/TCG"), Some(3));
        for other in [
            "kvm",
            "vnc_worker",
            "iou-wrk-1100",
            "CPU /KVM",
            "CPU 3/",
            "CPU 3/KVM ",
            "CPU 3/kvm",
            "CPU 3/HVF",
            "CPU -1/KVM",
            "CPU +1/KVM",
            "CPU 1 /KVM",
            "CPU 99999999999/KVM",
            "CPU 1234567/KV", // cut at the kernel's 15 bytes
            "cpu 3/KVM",
            "",
        ] {
            assert_eq!(vcpu_index(other), None, "{other:?}");
        }
    }

    #[test]
    fn schedstat_lines() {
        assert_eq!(
            parse_schedstat("177476808 33448476 432\n"),
            Some(Schedstat { run_ns: 177_476_808, wait_ns: 33_448_476, timeslices: 432 })
        );
        // A kernel without schedstat support.
        assert_eq!(parse_schedstat("0 0 0\n"), Some(Schedstat::default()));
        // A field a later kernel might append is ignored.
        assert_eq!(parse_schedstat("1 2 3 4").map(|s| s.timeslices), Some(3));
        assert_eq!(parse_schedstat(&format!("{} 0 0", u64::MAX)).map(|s| s.run_ns), Some(u64::MAX));
        for bad in ["", "\n", "1 2", "1", "a b c", "1 2 x", "-1 2 3", "18446744073709551616 0 0", "1,2,3"] {
            assert_eq!(parse_schedstat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn vcpu_threads_from_a_task_directory() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        for (tid, comm) in
            [(40, "kvm\n"), (42, "CPU 1/KVM\n"), (41, "CPU 0/KVM\n"), (43, "iou-wrk-40\n"), (44, "CPU 2/KVM")]
        {
            let d = dir.path().join(format!("proc/40/task/{tid}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("comm"), comm).unwrap();
        }
        // A thread that exited between the listing and the read of its comm, and junk.
        std::fs::create_dir_all(dir.path().join("proc/40/task/45")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc/40/task/not-a-tid")).unwrap();
        let t = vcpu_threads(&host, 40).unwrap();
        assert_eq!(
            t,
            [VcpuThread { tid: 41, index: 0 }, VcpuThread { tid: 42, index: 1 }, VcpuThread { tid: 44, index: 2 }]
        );
        let mut dirs = HeldFiles::new(crate::heldfile::FdBudget::new(8), crate::heldfile::OnStale::Fail);
        assert_eq!(task_link_count(&mut dirs, &host, 40).unwrap(), 2 + 7);
        assert_eq!(dirs.held(), 1);
        assert!(crate::host::is_gone(&vcpu_threads(&host, 41).unwrap_err()));
        std::fs::write(dir.path().join("proc/40/task/41/schedstat"), "5 6 7\n").unwrap();
        std::fs::write(dir.path().join("proc/40/task/42/schedstat"), "garbage\n").unwrap();
        assert_eq!(read_schedstat(&host, 40, 41).unwrap(), Schedstat { run_ns: 5, wait_ns: 6, timeslices: 7 });
        assert_eq!(read_schedstat(&host, 40, 42).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(crate::host::is_gone(&read_schedstat(&host, 40, 44).unwrap_err()));
    }
}
