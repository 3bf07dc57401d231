//! eBPF: load the embedded programs, attach them to tracepoints, and read their maps.
//! docs/ebpf.md describes every program, map and cost. Each program's user side sits beside
//! this loader, named as its kernel side in pve-exporter-ebpf/src/: `events`, `exits`,
//! `userspace_exits`, `runqueue` (halt's map is read with the others here); `spec` lists
//! what the loader attaches and checks; `batch` reads whole maps in one syscall.
//!
//! `start` decides the mode once at start-up. In `auto` a kernel without BTF, missing rights
//! or an object the kernel refuses lead to procfs mode with the reason exported; in `on`
//! they are fatal. A single program whose tracepoint or fields are missing is skipped (and
//! reported) while the others carry on.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{Program, RawTracePoint, TracePoint},
};
use pve_exporter_common::{
    CountNs, ERR_MAP_FULL, ERR_NEGATIVE_DELTA, ERR_SLOTS, ERR_UNMATCHED_ENTRY, EVENT_COUNT_SLOTS, EVENT_SLOTS,
    EventCounts, ExitKey, HIST_BUCKETS, HIST_FIRST_BIT, Hist, ISA_SVM, ISA_UNKNOWN, ISA_VMX, MAX_INDEXED_VMS,
    REASON_ERROR, REASON_RESTART, SLOT_KVM_ENTRY, TgidKey, UEXIT_SLOTS, UexitCounts, VmSlot, event_program_name,
    globals, maps, programs, uexit_reason, vcpu_filter_slot, vm_index_slot,
};

use crate::{
    host::HostRoot,
    sources::{
        error::ParseError,
        kernel::ebpf::batch::{self as bpf_batch, BatchError},
        kernel::tracefs::{self, TraceFormat},
        proc::pidfd,
    },
};

mod batch;
mod events;
mod exits;
mod runqueue;
mod spec;
mod userspace_exits;

pub use self::{events::*, exits::*, spec::*, userspace_exits::*};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EbpfMode {
    /// Use eBPF when the kernel has BTF and the programs load; else procfs mode.
    Auto,
    /// eBPF or nothing: the daemon refuses to start when the programs cannot be loaded.
    On,
    /// procfs mode only.
    Off,
}

/// What loading, attaching and reading the programs fails with.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// eBPF cannot run on this host (`--ebpf on` refuses to start): why.
    #[error("{0}")]
    Unavailable(String),
    #[error("loading the eBPF object: {0}")]
    Object(Box<aya::EbpfError>),
    #[error("program {0} missing from the object")]
    ProgramMissing(String),
    #[error("loading {program} (verifier or rights): {source}")]
    Load {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {program} to {tracepoint}: {source}")]
    Attach {
        program: String,
        tracepoint: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {0} missing from the object")]
    MapMissing(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {map}: {source}")]
    Batch {
        map: &'static str,
        #[source]
        source: BatchError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The compiled `pve-exporter-ebpf` object, when this binary was built with the `ebpf` feature.
#[cfg(feature = "ebpf")]
pub static EBPF_OBJECT: Option<&[u8]> =
    Some(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pve-exporter-ebpf")));

#[cfg(not(feature = "ebpf"))]
pub static EBPF_OBJECT: Option<&[u8]> = None;

/// Live eBPF state: the loaded object (dropping it detaches every program) and what is attached.
pub struct EbpfCounters {
    bpf: Ebpf,
    pub events: Vec<TraceEvent>,
    pub programs: Vec<ProgramStatus>,
    pub userspace_exit_names: HashMap<u32, String>,
    pub exit_reasons: ExitReasons,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// vCPU thread -> process, as written to VCPU_THREADS (user space is its only writer).
    vcpus: HashMap<u32, u32>,
    /// Registered VMs: process -> index in EVENT_ARRAY / UEXIT_ARRAY, as written to VM_INDEX
    /// (user space is its only writer).
    vm_index: HashMap<u32, u32>,
    /// Indexes no process holds; their counters are zeroed when handed out.
    free_indexes: Vec<u32>,
    /// Keeps kernel.bpf_stats_enabled on while held (`--ebpf-stats`).
    _stats: Option<std::os::fd::OwnedFd>,
    stats_on: bool,
    /// Possible CPUs: the per-CPU maps hold a value for each.
    nr_cpus: usize,
    /// The sizes the maps were loaded with.
    pub sizes: MapSizes,
    /// A pidfd per VM process seen: it names that process, not whatever process gets its pid
    /// next, so a pid reused by a new process is told from the VM that had it.
    procs: HashMap<u32, OwnedFd>,
    /// pidfd_open works here (Linux 5.3); else exits are found by /proc alone.
    pidfd: bool,
    /// Maps are read with BPF_MAP_LOOKUP_BATCH (a syscall per map rather than one or two per
    /// key) until the kernel refuses it once.
    batch: bool,
    batch_bufs: bpf_batch::Buffers,
}

impl std::fmt::Debug for EbpfCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfCounters").field("events", &self.events).field("programs", &self.programs).finish()
    }
}

/// The outcome of start-up.
#[derive(Debug)]
pub struct EbpfStatus {
    pub mode: &'static str,
    pub reason: String,
    pub counters: Option<EbpfCounters>,
}

impl EbpfStatus {
    fn procfs(reason: impl Into<String>) -> Self {
        Self { mode: "procfs", reason: reason.into(), counters: None }
    }
}

/// What `start` needs besides the host root.
#[derive(Debug, Clone)]
pub struct EbpfOptions {
    pub mode: EbpfMode,
    pub events: Vec<String>,
    /// Where BTF is looked for (a flag, so tests can hide it).
    pub btf_path: PathBuf,
    /// Turn the kernel's per-program run-time accounting on while the daemon runs.
    pub stats: bool,
}

/// aya-log's ring buffer (its map name) and the size it gets here. aya-log-ebpf declares 128
/// KiB; the kernel maps a ring buffer's data twice into the reader, all of it at once, so that
/// was 264 KiB of the daemon's RSS. The programs log one line per anomaly kind and CPU, the
/// first time only (shared.rs), and the logger drains the buffer as records come: 16 KiB holds
/// ~100 of them; a record that does not fit is dropped, its anomaly still counted.
const AYA_LOGS: &str = "AYA_LOGS";
const AYA_LOGS_BYTES: u32 = 16 << 10;

/// Start eBPF as `opts.mode` asks. Err only in `on` mode, with the reason.
pub fn start(host: &HostRoot, opts: &EbpfOptions) -> Result<EbpfStatus, EbpfError> {
    if opts.mode == EbpfMode::Off {
        return Ok(EbpfStatus::procfs("disabled by --ebpf off"));
    }
    let fail = |reason: String| -> Result<EbpfStatus, EbpfError> {
        if opts.mode == EbpfMode::On {
            Err(EbpfError::Unavailable(reason))
        } else {
            log::warn!("eBPF unavailable, running in procfs mode: {reason}");
            Ok(EbpfStatus::procfs(reason))
        }
    };
    let Some(object) = EBPF_OBJECT else {
        return fail("this binary was built without eBPF programs (--no-default-features)".into());
    };
    let btf = host.path(&opts.btf_path);
    if !btf.exists() {
        return fail(format!("the kernel has no BTF ({} missing)", btf.display()));
    }
    match load(host, object, opts) {
        Ok(c) if c.events.iter().any(|e| e.attached) || c.programs.iter().any(|p| p.attached) => {
            let n = c.events.iter().filter(|e| e.attached).count();
            let progs: Vec<_> = c.programs.iter().filter(|p| p.attached).map(|p| p.program).collect();
            let skipped: Vec<_> = c
                .events
                .iter()
                .filter(|e| !e.attached)
                .map(|e| e.spec.as_str())
                .chain(c.programs.iter().filter(|p| !p.attached).map(|p| p.program))
                .collect();
            let mut reason = format!("{n} tracepoints counted; programs {}", progs.join(","));
            if !skipped.is_empty() {
                reason += &format!("; skipped {}", skipped.join(","));
            }
            log::info!("eBPF mode: {reason}");
            Ok(EbpfStatus { mode: "ebpf", reason, counters: Some(c) })
        }
        Ok(_) => fail("no program could be attached (is the kvm module loaded?)".into()),
        Err(e) => fail(e.to_string()),
    }
}

/// The entries of the preallocated per-CPU maps, chosen at load time for the host's possible
/// CPUs: each of their values exists once per possible CPU (also CPUs that are not online), so
/// at the compiled sizes they would lock 1.3 MiB per CPU, 170 MiB on a 128-CPU host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// VMs counted in the per-VM arrays (`EVENT_ARRAY`, `UEXIT_ARRAY`); VMs beyond count in the
    /// hash maps, which allocate per key.
    pub indexed_vms: u32,
    /// Keys of `HIST`: two histograms for twice as many VMs as the arrays hold.
    pub hist_keys: u32,
}

/// What the preallocated per-CPU values may take, over all CPUs.
pub const PERCPU_BUDGET: u64 = 32 << 20;

/// VMs the arrays hold at least, however many CPUs.
pub const MIN_INDEXED_VMS: u32 = 64;

/// Bytes of preallocated per-CPU values per indexed VM and CPU: its `EVENT_ARRAY` and
/// `UEXIT_ARRAY` values and four `HIST` values.
pub const PERCPU_BYTES_PER_VM: u64 =
    (std::mem::size_of::<EventCounts>() + std::mem::size_of::<UexitCounts>() + 4 * std::mem::size_of::<Hist>()) as u64;

/// The map sizes for `nr_cpus` possible CPUs: as many VMs as fit [`PERCPU_BUDGET`], at most
/// the compiled [`MAX_INDEXED_VMS`], at least [`MIN_INDEXED_VMS`].
pub fn map_sizes(nr_cpus: usize) -> MapSizes {
    let fit = PERCPU_BUDGET / (PERCPU_BYTES_PER_VM * nr_cpus.max(1) as u64);
    let indexed_vms = fit.clamp(u64::from(MIN_INDEXED_VMS), u64::from(MAX_INDEXED_VMS)) as u32;
    MapSizes { indexed_vms, hist_keys: 4 * indexed_vms }
}

impl MapSizes {
    /// The kernel's memory accounting (fdinfo `memlock`, `bpftool map show`) of the
    /// preallocated per-CPU maps at these sizes, as the kernel computes it
    /// (`array_map_mem_usage`, `htab_map_mem_usage`), without the maps' fixed headers.
    pub fn percpu_memlock(&self, nr_cpus: usize) -> u64 {
        let cpus = nr_cpus as u64;
        let round8 = |n: usize| (n as u64).div_ceil(8) * 8;
        let array = |entries: u32, value: usize| u64::from(entries) * (8 + round8(value) * cpus);
        // A preallocated per-CPU hash: buckets (16 bytes per power-of-two slot), per-CPU lock
        // counts, and per entry an element (header, key, per-CPU pointer) and its values.
        let hash = |entries: u32, key: usize, value: usize| {
            let elem = 48 + round8(key) + 8;
            16 * u64::from(entries.next_power_of_two())
                + 4 * 8 * cpus
                + u64::from(entries) * (elem + round8(value) * cpus)
        };
        array(self.indexed_vms, std::mem::size_of::<EventCounts>())
            + array(self.indexed_vms, std::mem::size_of::<UexitCounts>())
            + hash(self.hist_keys, std::mem::size_of::<TgidKey>(), std::mem::size_of::<Hist>())
    }
}

fn raise_memlock_limit() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        log::debug!("setrlimit(RLIMIT_MEMLOCK): {}", std::io::Error::last_os_error());
    }
}

fn program<'a>(bpf: &'a mut Ebpf, prog_name: &str) -> Result<&'a mut Program, EbpfError> {
    bpf.program_mut(prog_name).ok_or_else(|| EbpfError::ProgramMissing(prog_name.to_string()))
}

/// Load `prog_name` and attach it to `cat:name`, as a raw tracepoint or a perf tracepoint.
fn attach(bpf: &mut Ebpf, prog_name: &str, cat: &str, name: &str, raw: bool) -> Result<(), EbpfError> {
    let load_err = |source| EbpfError::Load { program: prog_name.to_string(), source: Box::new(source) };
    let attach_err = |source| EbpfError::Attach {
        program: prog_name.to_string(),
        tracepoint: format!("{cat}:{name}"),
        source: Box::new(source),
    };
    if raw {
        let prog: &mut RawTracePoint = program(bpf, prog_name)?.try_into().map_err(load_err)?;
        prog.load().map_err(load_err)?;
        // Raw tracepoints are named without their category (names are unique in a kernel).
        prog.attach(name).map_err(attach_err)?;
    } else {
        let prog: &mut TracePoint = program(bpf, prog_name)?.try_into().map_err(load_err)?;
        prog.load().map_err(load_err)?;
        prog.attach(cat, name).map_err(attach_err)?;
    }
    Ok(())
}

fn load(host: &HostRoot, object: &[u8], opts: &EbpfOptions) -> Result<EbpfCounters, EbpfError> {
    let tracefs = tracefs::find_or_mount(host).map_err(|e| EbpfError::Io { what: "tracefs".into(), source: e })?;

    // Per-tracepoint counters: which of the requested tracepoints exist here.
    let mut events: Vec<TraceEvent> = Vec::new();
    for spec in &opts.events {
        let spec = spec.trim();
        let (cat, name) = spec.split_once(':').unwrap_or(("kvm", spec));
        if spec.is_empty() || events.iter().any(|e| e.spec == format!("{cat}:{name}")) {
            continue;
        }
        let error = tracefs::read_format(&tracefs, cat, name).err().map(|e| format!("not on this kernel ({e})"));
        events.push(TraceEvent {
            spec: format!("{cat}:{name}"),
            name: name.to_string(),
            source: None,
            attached: false,
            error,
        });
    }

    // The other programs: their field offsets from the format files.
    let mut formats: HashMap<&str, TraceFormat> = HashMap::new();
    let mut programs: Vec<ProgramStatus> = Vec::new();
    let mut global_values: Vec<(&'static str, u32)> = Vec::new();
    for spec in PROGRAMS {
        let resolved = tracefs::read_format(&tracefs, spec.category, spec.event)
            .map_err(|e| format!("no {}:{} tracepoint ({e})", spec.category, spec.event))
            .and_then(|fmt| {
                let offsets = resolve_offsets(spec, &fmt).map_err(|e| e.to_string())?;
                formats.insert(spec.event, fmt);
                Ok(offsets)
            });
        match resolved {
            Ok(offsets) => {
                global_values.extend(offsets);
                programs.push(ProgramStatus { program: spec.program, attached: false, error: None });
            }
            Err(e) => programs.push(ProgramStatus { program: spec.program, attached: false, error: Some(e) }),
        }
    }
    let userspace_exit_names =
        formats.get("kvm_userspace_exit").map(|f| userspace_exit_names(&f.print_fmt)).unwrap_or_default();
    let cpu_isa = host.read_to_string("proc/cpuinfo").map(|c| host_isa(&c)).unwrap_or(ISA_UNKNOWN);
    let exit_reasons =
        formats.get("kvm_exit").map(|f| ExitReasons::from_print_fmt(&f.print_fmt, cpu_isa)).unwrap_or_default();

    raise_memlock_limit();
    let nr_cpus = aya::util::nr_cpus().map_err(|(what, e)| EbpfError::Io { what: what.to_string(), source: e })?;
    let sizes = map_sizes(nr_cpus);
    log::info!(
        "eBPF maps sized for {nr_cpus} possible CPUs: {} VMs in the counter arrays, {} histogram keys \
         ({:.1} MiB of preallocated per-CPU values)",
        sizes.indexed_vms,
        sizes.hist_keys,
        sizes.percpu_memlock(nr_cpus) as f64 / f64::from(1 << 20)
    );
    let mut loader = EbpfLoader::new();
    for (g, v) in &global_values {
        loader.override_global(g, v, true);
    }
    loader
        .map_max_entries(maps::EVENT_ARRAY, sizes.indexed_vms)
        .map_max_entries(maps::UEXIT_ARRAY, sizes.indexed_vms)
        .map_max_entries(maps::HIST, sizes.hist_keys)
        .map_max_entries(AYA_LOGS, AYA_LOGS_BYTES);
    let mut bpf = loader.load(object).map_err(|e| EbpfError::Object(Box::new(e)))?;
    let logger = match aya_log::EbpfLogger::init(&mut bpf) {
        Ok(l) => Some(l),
        Err(e) => {
            log::debug!("aya-log not active: {e}");
            None
        }
    };

    // In PROGRAMS order; `requires` always names an earlier program, so its status is known.
    for i in 0..PROGRAMS.len() {
        let spec = &PROGRAMS[i];
        if programs[i].error.is_some() {
            continue;
        }
        if let Some(req) = spec.requires
            && !programs[..i].iter().any(|p| p.program == req && p.attached)
        {
            programs[i].error = Some(format!("needs {req}, which is not attached"));
            continue;
        }
        programs[i].error =
            attach(&mut bpf, spec.program, spec.category, spec.event, spec.raw).err().map(|e| e.to_string());
        programs[i].attached = programs[i].error.is_none();
    }
    // The counters, after the programs: an event one of them counts already gets no second
    // program on its tracepoint (one program run less per hit); if it is not attached, a
    // counter program counts the event.
    let mut slot = 0u32;
    for ev in events.iter_mut().filter(|e| e.error.is_none()) {
        if let Some(source) = derived_source(&ev.spec, &programs) {
            ev.source = Some(source);
            ev.attached = true;
            continue;
        }
        if slot >= EVENT_SLOTS {
            ev.error = Some(format!("more than {EVENT_SLOTS} tracepoints requested"));
            continue;
        }
        let (cat, name) = ev.spec.split_once(':').unwrap_or(("kvm", &ev.name));
        let mut buf = [0u8; 16];
        match attach(&mut bpf, event_program_name(slot, &mut buf), cat, name, true) {
            Ok(()) => {
                ev.source = Some(EventSource::Slot(slot));
                ev.attached = true;
                slot += 1;
            }
            Err(e) => ev.error = Some(e.to_string()),
        }
    }
    for st in programs.iter().filter(|p| p.error.is_some()) {
        log::warn!("eBPF program {} not attached: {}", st.program, st.error.as_deref().unwrap_or(""));
    }

    let (stats_fd, stats_on) = if opts.stats {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => (Some(fd), true),
            Err(e) => {
                log::warn!("--ebpf-stats: cannot enable BPF run-time statistics: {e}");
                (None, false)
            }
        }
    } else {
        (None, false)
    };

    let mut c = EbpfCounters {
        bpf,
        events,
        programs,
        userspace_exit_names,
        exit_reasons,
        logger,
        vcpus: HashMap::new(),
        vm_index: HashMap::new(),
        // Popped from the end: low indexes first.
        free_indexes: (0..sizes.indexed_vms).rev().collect(),
        sizes,
        procs: HashMap::new(),
        pidfd: true,
        _stats: stats_fd,
        stats_on,
        nr_cpus,
        batch: true,
        batch_bufs: bpf_batch::Buffers::default(),
    };
    c.flush_log();
    Ok(c)
}

/// Everything read from the maps in one scrape; per-CPU values summed.
#[derive(Debug, Default, Clone)]
pub struct EbpfSnapshot {
    /// (tgid, slot) -> events.
    pub events: HashMap<(u32, u32), u64>,
    /// (tgid, KVM_EXIT_* or REASON_*) -> exits to user space.
    pub userspace_exits: HashMap<(u32, u32), u64>,
    /// (tgid, isa, reason) -> exits and nanoseconds from exit to next entry.
    pub exits: HashMap<(u32, u32, u32), CountNs>,
    /// (tgid, kind) -> histogram.
    pub hists: HashMap<(u32, u32), Hist>,
    /// (tgid, outcome) -> halt wakeups and nanoseconds halted.
    pub halt: HashMap<(u32, u32), CountNs>,
    /// Anomalies counted by the programs, by cause.
    pub errors: Vec<(&'static str, u64)>,
    /// (map, entries, capacity).
    pub maps: Vec<(&'static str, usize, u32)>,
    /// (program, runs, run time) when the kernel's BPF statistics are on.
    pub prog_stats: Vec<(String, u64, Duration)>,
    /// Processes registered in VM_INDEX (counted in the arrays).
    pub registered: Vec<u32>,
}

impl EbpfSnapshot {
    /// Every process that has an entry in some map.
    pub fn tgids(&self) -> HashSet<u32> {
        self.events
            .keys()
            .chain(self.userspace_exits.keys())
            .chain(self.hists.keys())
            .chain(self.halt.keys())
            .map(|k| k.0)
            .chain(self.exits.keys().map(|k| k.0))
            .chain(self.registered.iter().copied())
            .collect()
    }
}

fn sum_count_ns(v: &[CountNs]) -> CountNs {
    v.iter().fold(CountNs::default(), |a, b| CountNs { count: a.count + b.count, ns: a.ns + b.ns })
}

fn sum_hist(v: &[Hist]) -> Hist {
    let mut out = Hist::default();
    for h in v {
        for (o, b) in out.buckets.iter_mut().zip(h.buckets.iter()) {
            *o += b;
        }
        out.sum_ns += h.sum_ns;
    }
    out
}

fn sum_slots<const N: usize>(v: impl Iterator<Item = [u64; N]>) -> [u64; N] {
    v.fold([0; N], |mut a, c| {
        a.iter_mut().zip(c).for_each(|(a, c)| *a += c);
        a
    })
}

fn no_batch(batch: &mut bool, e: std::io::Error) {
    log::info!("eBPF maps are read key by key (no batch lookup on this kernel: {e})");
    *batch = false;
}

fn percpu_array_mut<'a, V: aya::Pod>(
    bpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<PerCpuArray<&'a mut MapData, V>, EbpfError> {
    let map = bpf.map_mut(name).ok_or(EbpfError::MapMissing(name))?;
    PerCpuArray::try_from(map).map_err(|source| EbpfError::Map { map: name, source: Box::new(source) })
}

impl EbpfCounters {
    /// The first `limit` elements of per-CPU map `name` in batch lookups; None when batches
    /// are off or the kernel has none (then off from now on): read key by key.
    fn read_batch<K: aya::Pod, V: aya::Pod, T>(
        &mut self,
        name: &'static str,
        limit: usize,
        sum: &impl Fn(&[V]) -> T,
    ) -> Option<Result<Vec<(K, T)>, EbpfError>> {
        if !self.batch {
            return None;
        }
        let map = match self.bpf.map(name) {
            Some(m) => m,
            None => return Some(Err(EbpfError::MapMissing(name))),
        };
        let mut out = Vec::new();
        match bpf_batch::for_each_percpu::<K, V>(map, self.nr_cpus, limit, &mut self.batch_bufs, |k, v| {
            out.push((k, sum(v)))
        }) {
            Ok(()) => Some(Ok(out)),
            Err(BatchError::Unsupported(e)) => {
                no_batch(&mut self.batch, e);
                None
            }
            Err(e) => Some(Err(EbpfError::Batch { map: name, source: e })),
        }
    }

    /// Every element of a per-CPU hash map, values summed over CPUs by `sum`: in one batch
    /// lookup (a few for a large map), or key by key where the kernel has none. Keys deleted
    /// while we iterate are skipped.
    fn read_hash<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod, T>(
        &mut self,
        name: &'static str,
        capacity: u32,
        sum: impl Fn(&[V]) -> T,
    ) -> Result<Vec<(K, T)>, EbpfError> {
        if let Some(r) = self.read_batch(name, capacity as usize, &sum) {
            return r;
        }
        let map = self.bpf.map(name).ok_or(EbpfError::MapMissing(name))?;
        let m: PerCpuHashMap<&MapData, K, V> =
            PerCpuHashMap::try_from(map).map_err(|source| EbpfError::Map { map: name, source: Box::new(source) })?;
        Ok(m.iter().filter_map(Result::ok).map(|(k, v)| (k, sum(&v))).collect())
    }

    /// Indexes `0..n` of a per-CPU array, values summed over CPUs by `sum`: in one batch
    /// lookup, or index by index where the kernel has none.
    fn read_array<V: aya::Pod, T>(
        &mut self,
        name: &'static str,
        n: u32,
        sum: impl Fn(&[V]) -> T,
    ) -> Result<Vec<(u32, T)>, EbpfError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if let Some(r) = self.read_batch(name, n as usize, &sum) {
            return r;
        }
        let map = self.bpf.map(name).ok_or(EbpfError::MapMissing(name))?;
        let m: PerCpuArray<&MapData, V> =
            PerCpuArray::try_from(map).map_err(|source| EbpfError::Map { map: name, source: Box::new(source) })?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            match m.get(&i, 0) {
                Ok(v) => out.push((i, sum(&v))),
                Err(e) => log::debug!("{name} {i}: {e}"),
            }
        }
        Ok(out)
    }

    /// Read every map.
    pub fn read(&mut self) -> Result<EbpfSnapshot, EbpfError> {
        use pve_exporter_common::{MAX_EVENT_KEYS, MAX_EXIT_KEYS, MAX_HALT_KEYS, MAX_REASON_KEYS};
        self.flush_log();
        let sum_u64 = |v: &[u64]| v.iter().sum::<u64>();
        let mut s = EbpfSnapshot::default();
        let events = self.read_hash::<TgidKey, u64, u64>(maps::EVENT_COUNTS, MAX_EVENT_KEYS, sum_u64)?;
        let uexits = self.read_hash::<TgidKey, u64, u64>(maps::USERSPACE_EXITS, MAX_REASON_KEYS, sum_u64)?;
        let exits = self.read_hash::<ExitKey, CountNs, CountNs>(maps::EXITS, MAX_EXIT_KEYS, sum_count_ns)?;
        let hists = self.read_hash::<TgidKey, Hist, Hist>(maps::HIST, self.sizes.hist_keys, sum_hist)?;
        let halt = self.read_hash::<TgidKey, CountNs, CountNs>(maps::HALT, MAX_HALT_KEYS, sum_count_ns)?;
        s.maps = vec![
            (maps::EVENT_COUNTS, events.len(), MAX_EVENT_KEYS),
            (maps::USERSPACE_EXITS, uexits.len(), MAX_REASON_KEYS),
            (maps::EXITS, exits.len(), MAX_EXIT_KEYS),
            (maps::HIST, hists.len(), self.sizes.hist_keys),
            (maps::HALT, halt.len(), MAX_HALT_KEYS),
            (maps::VCPU_THREADS, self.vcpus.len(), pve_exporter_common::MAX_VCPU_THREADS),
        ];
        s.maps.push((maps::VM_INDEX, self.vm_index.len(), self.sizes.indexed_vms));
        s.events = events.into_iter().map(|(k, v)| ((k.tgid, k.sub), v)).collect();
        s.userspace_exits = uexits.into_iter().map(|(k, v)| ((k.tgid, k.sub), v)).collect();
        // Registered VMs: their array counters, added to what they counted in the hash maps
        // before they were registered. Indexes are handed out lowest first, so reading up to
        // the highest one held reads every registered VM and few free indexes.
        let n = self.vm_index.values().max().map_or(0, |i| i + 1);
        let events_arr =
            self.read_array::<EventCounts, _>(maps::EVENT_ARRAY, n, |v| sum_slots(v.iter().map(|c| c.n)))?;
        let uexits_arr =
            self.read_array::<UexitCounts, _>(maps::UEXIT_ARRAY, n, |v| sum_slots(v.iter().map(|c| c.n)))?;
        let events_arr: HashMap<u32, _> = events_arr.into_iter().collect();
        let uexits_arr: HashMap<u32, _> = uexits_arr.into_iter().collect();
        for (&tgid, &index) in &self.vm_index {
            s.registered.push(tgid);
            if let Some(n) = events_arr.get(&index) {
                for slot in 0..EVENT_COUNT_SLOTS {
                    let n = n[slot as usize];
                    if n > 0 {
                        *s.events.entry((tgid, slot)).or_default() += n;
                    }
                }
            }
            if let Some(n) = uexits_arr.get(&index) {
                for slot in 0..UEXIT_SLOTS {
                    let n = n[slot as usize];
                    if n > 0 {
                        *s.userspace_exits.entry((tgid, uexit_reason(slot))).or_default() += n;
                    }
                }
            }
        }
        s.exits = exits.into_iter().map(|(k, v)| ((k.tgid, k.isa, k.reason), v)).collect();
        s.hists = hists.into_iter().map(|(k, v)| ((k.tgid, k.sub), v)).collect();
        s.halt = halt.into_iter().map(|(k, v)| ((k.tgid, k.sub), v)).collect();
        let errs: HashMap<u32, u64> =
            self.read_array::<u64, _>(maps::COUNTER_ERRORS, ERR_SLOTS, sum_u64)?.into_iter().collect();
        for (slot, cause) in [
            (ERR_MAP_FULL, "map_full"),
            (ERR_NEGATIVE_DELTA, "negative_delta"),
            (ERR_UNMATCHED_ENTRY, "unmatched_entry"),
        ] {
            s.errors.push((cause, errs.get(&slot).copied().unwrap_or(0)));
        }
        if self.stats_on || stats_enabled_by_sysctl() {
            for (name, prog) in self.bpf.programs() {
                if self.is_attached(name)
                    && let Ok(info) = prog.info()
                {
                    s.prog_stats.push((name.to_string(), info.run_count(), info.run_time()));
                }
            }
            s.prog_stats.sort();
        }
        Ok(s)
    }

    /// Whether `program` (a name of `pve_exporter_common::programs`) runs now.
    pub fn program_attached(&self, program: &str) -> bool {
        self.is_attached(program)
    }

    fn is_attached(&self, program: &str) -> bool {
        self.programs.iter().any(|p| p.attached && p.program == program)
            || self.events.iter().any(|e| match e.source {
                Some(EventSource::Slot(slot)) => {
                    let mut buf = [0u8; 16];
                    event_program_name(slot, &mut buf) == program
                }
                _ => false,
            })
    }

    /// Write aya-log records of the programs (rare anomalies) to our log.
    pub fn flush_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// The VM processes tracked so far that have exited, also those whose pid names another
    /// process by now; then tracks the processes of `pids` (the running VMs) not tracked yet.
    /// The maps key counters by pid alone, so the exited ones must be forgotten before their
    /// pid is counted again: else a VM started on a reused pid would carry on the dead VM's
    /// counts. One `poll` over all pidfds per scrape.
    pub fn exited(&mut self, pids: &[u32]) -> HashSet<u32> {
        let mut gone = HashSet::new();
        if !self.procs.is_empty() {
            let tgids: Vec<u32> = self.procs.keys().copied().collect();
            let fds: Vec<_> = tgids.iter().filter_map(|t| self.procs.get(t)).map(|fd| fd.as_fd()).collect();
            if let Ok(exited) = pidfd::exited(&fds) {
                gone.extend(tgids.iter().zip(exited).filter(|(_, e)| *e).map(|(t, _)| *t));
            }
            for t in &gone {
                self.procs.remove(t);
            }
        }
        let current: HashSet<u32> = pids.iter().copied().collect();
        self.procs.retain(|t, _| current.contains(t));
        if self.pidfd {
            for &pid in pids {
                if pid == 0 || self.procs.contains_key(&pid) {
                    continue;
                }
                let e = match pidfd::open(pid) {
                    Ok(fd) => {
                        self.procs.insert(pid, fd);
                        continue;
                    }
                    Err(e) => e,
                };
                match e.raw_os_error() {
                    Some(libc::ESRCH) => {} // exited already: /proc tells
                    _ => {
                        log::info!(
                            "no pidfd for VM processes ({e}): a VM started on the pid of one that exited between two \
                             scrapes may carry on its eBPF counters"
                        );
                        self.pidfd = false;
                        self.procs.clear();
                        break;
                    }
                }
            }
        }
        gone
    }

    /// Register `pids` (the running VMs) for the counter arrays: each one not registered yet
    /// gets a free index, its counters zeroed first, then its VM_INDEX slot, so the programs
    /// count it in the arrays from then on. Its events so far stay in the hash maps (read and
    /// added too). A VM whose slot another registered process holds, or beyond
    /// MAX_INDEXED_VMS, stays on the hash maps. Registrations end in `forget`.
    pub fn sync_vms(&mut self, pids: &[u32]) {
        let new: Vec<u32> = pids.iter().copied().filter(|p| *p != 0 && !self.vm_index.contains_key(p)).collect();
        if new.is_empty() {
            return;
        }
        let nr_cpus = self.nr_cpus;
        for tgid in new {
            let slot = vm_index_slot(tgid);
            if self.vm_index.keys().any(|t| vm_index_slot(*t) == slot) {
                continue; // taken: this VM counts in the hash maps
            }
            let Some(&index) = self.free_indexes.last() else { return };
            if let Err(e) = self.register(tgid, index, nr_cpus) {
                log::debug!("VM registration of {tgid}: {e}");
                continue;
            }
            self.free_indexes.pop();
            self.vm_index.insert(tgid, index);
        }
    }

    fn register(&mut self, tgid: u32, index: u32, nr_cpus: usize) -> Result<(), EbpfError> {
        let b = &mut self.bpf;
        let err = |map: &'static str| move |source| EbpfError::Map { map, source: Box::new(source) };
        // Zero first: nothing counts into a free index (no VM_INDEX slot names it).
        let zeros = PerCpuValues::try_from(vec![EventCounts::default(); nr_cpus])
            .map_err(|e| EbpfError::Io { what: maps::EVENT_ARRAY.into(), source: e })?;
        percpu_array_mut::<EventCounts>(b, maps::EVENT_ARRAY)?.set(index, zeros, 0).map_err(err(maps::EVENT_ARRAY))?;
        let zeros = PerCpuValues::try_from(vec![UexitCounts::default(); nr_cpus])
            .map_err(|e| EbpfError::Io { what: maps::UEXIT_ARRAY.into(), source: e })?;
        percpu_array_mut::<UexitCounts>(b, maps::UEXIT_ARRAY)?.set(index, zeros, 0).map_err(err(maps::UEXIT_ARRAY))?;
        let map = b.map_mut(maps::VM_INDEX).ok_or(EbpfError::MapMissing(maps::VM_INDEX))?;
        let mut m = Array::<&mut MapData, VmSlot>::try_from(map).map_err(err(maps::VM_INDEX))?;
        m.set(vm_index_slot(tgid), VmSlot { tgid, index }, 0).map_err(err(maps::VM_INDEX))
    }

    /// Drop every counter of the given processes (they exited), so the bounded maps never
    /// fill with the dead; their array indexes become free.
    pub fn forget(&mut self, tgids: &HashSet<u32>, snap: &EbpfSnapshot) {
        let gone: Vec<u32> = self.vm_index.keys().copied().filter(|t| tgids.contains(t)).collect();
        if !gone.is_empty()
            && let Some(map) = self.bpf.map_mut(maps::VM_INDEX)
            && let Ok(mut m) = Array::<&mut MapData, VmSlot>::try_from(map)
        {
            for tgid in gone {
                // The process is gone, so no program counts into its index any more.
                match m.set(vm_index_slot(tgid), VmSlot::default(), 0) {
                    Ok(()) => {
                        if let Some(index) = self.vm_index.remove(&tgid) {
                            self.free_indexes.push(index);
                        }
                    }
                    Err(e) => log::debug!("VM_INDEX clear {tgid}: {e}"),
                }
            }
        }
        fn remove<K: aya::Pod, V: aya::Pod>(bpf: &mut Ebpf, name: &str, keys: impl Iterator<Item = K>) {
            let Some(map) = bpf.map_mut(name) else { return };
            let Ok(mut m) = PerCpuHashMap::<&mut MapData, K, V>::try_from(map) else { return };
            for k in keys {
                if let Err(e) = m.remove(&k) {
                    log::debug!("{name} remove: {e}");
                }
            }
        }
        let dead = |t: &u32| tgids.contains(t);
        let b = &mut self.bpf;
        remove::<TgidKey, u64>(
            b,
            maps::EVENT_COUNTS,
            snap.events.keys().filter(|k| dead(&k.0)).map(|&(tgid, sub)| TgidKey { tgid, sub }),
        );
        remove::<TgidKey, u64>(
            b,
            maps::USERSPACE_EXITS,
            snap.userspace_exits.keys().filter(|k| dead(&k.0)).map(|&(tgid, sub)| TgidKey { tgid, sub }),
        );
        remove::<ExitKey, CountNs>(
            b,
            maps::EXITS,
            snap.exits.keys().filter(|k| dead(&k.0)).map(|&(tgid, isa, reason)| ExitKey { tgid, isa, reason }),
        );
        remove::<TgidKey, Hist>(
            b,
            maps::HIST,
            snap.hists.keys().filter(|k| dead(&k.0)).map(|&(tgid, sub)| TgidKey { tgid, sub }),
        );
        remove::<TgidKey, CountNs>(
            b,
            maps::HALT,
            snap.halt.keys().filter(|k| dead(&k.0)).map(|&(tgid, sub)| TgidKey { tgid, sub }),
        );
    }
}

/// Whether an operator turned the kernel's BPF statistics on (`sysctl kernel.bpf_stats_enabled=1`).
fn stats_enabled_by_sysctl() -> bool {
    std::fs::read_to_string(Path::new("/proc/sys/kernel/bpf_stats_enabled")).is_ok_and(|s| s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> TraceFormat {
        let p = format!("{}/../fixtures/tracepoints/{name}.format", env!("CARGO_MANIFEST_DIR"));
        tracefs::parse_format(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn every_program_resolves_on_the_recorded_kernel() {
        for spec in PROGRAMS {
            let fmt = fixture(&format!("{}_{}", spec.category, spec.event));
            let offsets = resolve_offsets(spec, &fmt).unwrap_or_else(|e| panic!("{}: {e}", spec.program));
            assert_eq!(offsets.len(), spec.fields.iter().filter(|f| f.global.is_some()).count());
        }
        let sw = resolve_offsets(&PROGRAMS[4], &fixture("sched_sched_switch")).unwrap();
        assert_eq!(
            sw,
            [(globals::SWITCH_PREV_PID, 24), (globals::SWITCH_PREV_STATE, 32), (globals::SWITCH_NEXT_PID, 56)]
        );
    }

    #[test]
    fn bad_fields_refuse_the_program() {
        let mut fmt = fixture("kvm_kvm_exit");
        fmt.fields.retain(|f| f.name != "isa");
        // isa is optional: old kernels.
        assert_eq!(resolve_offsets(&PROGRAMS[1], &fmt).unwrap()[1], (globals::EXIT_ISA, u32::MAX));
        fmt.fields.iter_mut().find(|f| f.name == "exit_reason").unwrap().size = 8;
        assert!(resolve_offsets(&PROGRAMS[1], &fmt).unwrap_err().to_string().contains("size 8"));
        fmt.fields.retain(|f| f.name != "exit_reason");
        assert!(resolve_offsets(&PROGRAMS[1], &fmt).unwrap_err().to_string().contains("no field exit_reason"));
    }

    #[test]
    fn exit_reason_labels() {
        let r = ExitReasons::from_print_fmt(&fixture("kvm_kvm_exit").print_fmt, ISA_UNKNOWN);
        assert_eq!(r.label(ISA_VMX, 30), "io_instruction");
        assert_eq!(r.label(ISA_VMX, 12), "hlt");
        assert_eq!(r.label(ISA_VMX, 48), "ept_violation");
        assert_eq!(r.label(ISA_SVM, 0x7b), "io");
        assert_eq!(r.label(ISA_SVM, 0x400), "npf");
        assert_eq!(r.label(ISA_VMX, 9999), "9999");
        assert_eq!(r.label(7, 1), "1");
        // No isa in the record: the host's vendor decides.
        let amd = ExitReasons { host_isa: ISA_SVM, ..r.clone() };
        assert_eq!(amd.label(ISA_UNKNOWN, 0x7b), "io");
        assert_eq!(r.label(ISA_UNKNOWN, 30), "30");
    }

    #[test]
    fn exit_decoding_on_the_older_layout() {
        let fmt = fixture("kvm_kvm_exit.v5.4-reconstructed");
        assert!(fmt.field("vcpu_id").is_none());
        let offsets = resolve_offsets(&PROGRAMS[1], &fmt).unwrap();
        assert_eq!(offsets, [(globals::EXIT_REASON, 8), (globals::EXIT_ISA, 24)]);
        let r = ExitReasons::from_print_fmt(&fmt.print_fmt, ISA_UNKNOWN);
        assert_eq!(r.label(ISA_VMX, 30), "io_instruction");
        assert_eq!(r.label(ISA_VMX, 7), "pending_interrupt"); // renamed INTERRUPT_WINDOW since
        assert_eq!(r.label(ISA_SVM, 0x7b), "io");
        assert_eq!(r.label(ISA_SVM, 0x402), "avic_incomplete_ipi");
        // A reason the older kernel has no name for: the number.
        assert_eq!(r.label(ISA_VMX, 74), "74");
        // The current layout moves nothing the program reads.
        let new = resolve_offsets(&PROGRAMS[1], &fixture("kvm_kvm_exit")).unwrap();
        assert_eq!(new, offsets);
    }

    #[test]
    fn vendors() {
        assert_eq!(host_isa("processor\t: 0\nvendor_id\t: GenuineIntel\n"), ISA_VMX);
        assert_eq!(host_isa("vendor_id\t: AuthenticAMD\n"), ISA_SVM);
        assert_eq!(host_isa("vendor_id : HygonGenuine"), ISA_SVM);
        assert_eq!(host_isa("garbage"), ISA_UNKNOWN);
    }

    #[test]
    fn userspace_exit_labels() {
        let names = userspace_exit_names(&fixture("kvm_kvm_userspace_exit").print_fmt);
        assert_eq!(userspace_exit_label(&names, 2), "io");
        assert_eq!(userspace_exit_label(&names, 24), "system_event");
        assert_eq!(userspace_exit_label(&names, REASON_RESTART), "restart");
        assert_eq!(userspace_exit_label(&names, REASON_ERROR), "error");
        assert_eq!(userspace_exit_label(&names, 1000), "1000");
    }

    fn event(spec: &str, source: Option<EventSource>) -> TraceEvent {
        let name = spec.split_once(':').map_or(spec, |(_, n)| n).to_string();
        TraceEvent { spec: spec.into(), name, source, attached: source.is_some(), error: None }
    }

    #[test]
    fn events_a_program_counts_get_no_counter_program() {
        let status = |program, attached| ProgramStatus { program, attached, error: None };
        let programs = [status("count_userspace_exit", true), status("kvm_exit", false), status("kvm_entry", true)];
        let src = |e| derived_source(e, &programs);
        assert_eq!(src("kvm:kvm_userspace_exit"), Some(EventSource::UserspaceExits));
        assert_eq!(src("kvm:kvm_entry"), Some(EventSource::Entries));
        // Its program is not attached (or absent): a counter program counts the event.
        assert_eq!(src("kvm:kvm_exit"), None);
        assert_eq!(src("kvm:kvm_vcpu_wakeup"), None);
        assert_eq!(src("kvm:kvm_pio"), None);
        // Every derived event names a program of PROGRAMS on the same tracepoint.
        for (ev, program, _) in DERIVED_EVENTS {
            let spec = PROGRAMS.iter().find(|p| p.program == *program).expect(program);
            assert_eq!(*ev, format!("{}:{}", spec.category, spec.event));
        }
    }

    #[test]
    fn derived_event_totals_are_the_programs_sums() {
        // Process 10 registered after some events (hash + array sums already merged by
        // `read`), process 20 never registered.
        let s = EbpfSnapshot {
            userspace_exits: HashMap::from([((10, 2), 1000), ((10, 5), 1), ((10, REASON_RESTART), 3), ((20, 2), 7)]),
            events: HashMap::from([((10, 0), 1000), ((20, 0), 7), ((10, SLOT_KVM_ENTRY), 42), ((20, 1), 0)]),
            exits: HashMap::from([
                ((10, ISA_VMX, 30), CountNs { count: 30, ns: 1 }),
                ((10, ISA_VMX, 12), CountNs { count: 12, ns: 1 }),
            ]),
            halt: HashMap::from([((20, 0), CountNs { count: 4, ns: 9 }), ((20, 1), CountNs { count: 5, ns: 9 })]),
            ..Default::default()
        };
        let events = [
            event("kvm:kvm_pio", Some(EventSource::Slot(0))),
            event("kvm:kvm_mmio", Some(EventSource::Slot(1))),
            event("kvm:kvm_userspace_exit", Some(EventSource::UserspaceExits)),
            event("kvm:kvm_exit", Some(EventSource::Exits)),
            event("kvm:kvm_entry", Some(EventSource::Entries)),
            event("kvm:kvm_vcpu_wakeup", Some(EventSource::HaltWakeups)),
            event("kvm:kvm_msr", None),
        ];
        let t = s.event_totals(&events);
        let get = |tgid, e: &str| t.get(&(tgid, e.to_string())).copied();
        assert_eq!(get(10, "kvm_pio"), Some(1000));
        assert_eq!(get(20, "kvm_pio"), Some(7));
        assert_eq!(get(10, "kvm_userspace_exit"), Some(1004), "every reason, restarts included");
        assert_eq!(get(20, "kvm_userspace_exit"), Some(7));
        assert_eq!(get(10, "kvm_exit"), Some(42));
        assert_eq!(get(10, "kvm_entry"), Some(42));
        assert_eq!(get(20, "kvm_vcpu_wakeup"), Some(9));
        assert_eq!(get(20, "kvm_mmio"), None, "no zero series");
        assert_eq!(t.len(), 7, "{t:?}");
    }

    #[test]
    fn histogram_buckets_are_exact() {
        let mut h = Hist::default();
        h.buckets[pve_exporter_common::hist_bucket(1) as usize] += 1;
        h.buckets[pve_exporter_common::hist_bucket(1023) as usize] += 2; // below 1.024 µs
        h.buckets[pve_exporter_common::hist_bucket(1024) as usize] += 4; // below 4.096 µs
        h.buckets[pve_exporter_common::hist_bucket(u64::MAX) as usize] += 8; // huge
        h.sum_ns = 123;
        let (b, n) = exported_buckets(&h);
        assert_eq!(n, 15);
        assert_eq!(b.len(), 12);
        assert_eq!(b[0], (1.024e-6, 3));
        assert_eq!(b[1], (4.096e-6, 4));
        assert_eq!(b[10].0, 1.073741824);
        assert_eq!(*b.last().unwrap(), (f64::INFINITY, 8));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), n);
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn maps_are_sized_for_the_possible_cpus() {
        // Few CPUs: the compiled sizes.
        assert_eq!(map_sizes(2), MapSizes { indexed_vms: 512, hist_keys: 2048 });
        assert_eq!(map_sizes(0), map_sizes(1));
        // Many: as many VMs as fit the budget, never fewer than the floor.
        let big = map_sizes(128);
        assert_eq!(big.indexed_vms, 300);
        assert!(big.percpu_memlock(128) <= PERCPU_BUDGET + PERCPU_BUDGET / 20, "{}", big.percpu_memlock(128));
        assert_eq!(map_sizes(100_000).indexed_vms, MIN_INDEXED_VMS);
        for cpus in [1, 2, 8, 64, 128, 256, 1024] {
            let s = map_sizes(cpus);
            assert!(s.indexed_vms >= MIN_INDEXED_VMS && s.indexed_vms <= MAX_INDEXED_VMS);
            assert!(map_sizes(cpus * 2).indexed_vms <= s.indexed_vms);
        }
        assert_eq!(PERCPU_BYTES_PER_VM, 200 + 256 + 4 * 104);
    }

    /// The daemon names maps and programs only through `pve_exporter_common::{maps, programs}`;
    /// the eBPF crate names them by its statics and functions. Both sides agree with the
    /// object actually built.
    #[cfg(feature = "ebpf")]
    #[test]
    fn every_map_and_program_name_is_in_the_object() {
        use std::collections::BTreeSet;
        let obj = aya_obj::Object::parse(EBPF_OBJECT.unwrap()).unwrap();
        // Sections of globals (.rodata, .bss, ...) and aya-log's own map are not ours to name.
        let built: BTreeSet<&str> =
            obj.maps.keys().map(String::as_str).filter(|m| !m.starts_with('.') && *m != "AYA_LOGS").collect();
        assert_eq!(built, maps::ALL.iter().copied().collect::<BTreeSet<_>>(), "maps");
        let mut buf = [0u8; 16];
        let mut named: BTreeSet<String> = programs::ALL.iter().map(|p| p.to_string()).collect();
        named.extend((0..EVENT_SLOTS).map(|s| event_program_name(s, &mut buf).to_string()));
        let built: BTreeSet<String> = obj.programs.keys().cloned().collect();
        assert_eq!(built, named, "programs");
        for spec in PROGRAMS {
            assert!(programs::ALL.contains(&spec.program), "{}", spec.program);
        }
    }
}
