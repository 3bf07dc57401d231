//! eBPF: load the embedded programs, attach them to tracepoints, and read their maps.
//!
//! `start` decides the mode once at start-up. In `auto` a kernel without BTF, missing rights
//! or a program the verifier refuses all lead to procfs mode with the reason exported; in
//! `on` they are fatal.

use std::collections::{HashMap, HashSet};

use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TracePoint,
};
use pve_exporter_common::{
    ERR_MAP_FULL, EVENT_SLOTS, EventKey, GLOBAL_UEXIT_ERRNO_OFFSET, GLOBAL_UEXIT_REASON_OFFSET, REASON_ERROR,
    REASON_RESTART, ReasonKey, event_program_name,
};

use crate::{config::EbpfMode, host::HostRoot, sources::tracefs};

/// The compiled `pve-exporter-ebpf` object, when this binary was built with the `ebpf` feature.
#[cfg(feature = "ebpf")]
pub static EBPF_OBJECT: Option<&[u8]> =
    Some(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pve-exporter-ebpf")));
#[cfg(not(feature = "ebpf"))]
pub static EBPF_OBJECT: Option<&[u8]> = None;

/// One tracepoint we were asked to count.
#[derive(Debug, Clone)]
pub struct TraceEvent {
    /// `category:name` as given.
    pub spec: String,
    pub name: String,
    /// The tracepoint id (`common_type`), when its format file was found.
    pub id: Option<u32>,
    /// The counter slot (program) it is attached with.
    pub slot: Option<u32>,
    pub attached: bool,
    /// Why it is not attached.
    pub error: Option<String>,
}

/// The by-reason counter of `kvm_userspace_exit`.
#[derive(Debug, Clone, Default)]
pub struct UserspaceExits {
    pub attached: bool,
    /// Why not.
    pub error: Option<String>,
    /// KVM_EXIT_* number -> label (`io`, `hlt`, ...), from the kernel's own print fmt.
    pub reason_names: HashMap<u32, String>,
}

impl UserspaceExits {
    /// The `reason` label of a map key.
    pub fn reason_label(&self, reason: u32) -> String {
        match reason {
            REASON_RESTART => "restart".to_string(),
            REASON_ERROR => "error".to_string(),
            r => self.reason_names.get(&r).cloned().unwrap_or_else(|| r.to_string()),
        }
    }
}

/// Live eBPF state: the loaded object (dropping it detaches every program) and what is attached.
pub struct EbpfCounters {
    bpf: Ebpf,
    pub events: Vec<TraceEvent>,
    pub userspace_exits: UserspaceExits,
}

impl std::fmt::Debug for EbpfCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfCounters").field("events", &self.events).finish()
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

/// Start eBPF as `mode` asks. Err only in `on` mode, with the reason.
pub fn start(host: &HostRoot, mode: EbpfMode, event_specs: &[String]) -> Result<EbpfStatus, String> {
    if mode == EbpfMode::Off {
        return Ok(EbpfStatus::procfs("disabled by --ebpf off"));
    }
    let fail = |reason: String| -> Result<EbpfStatus, String> {
        if mode == EbpfMode::On {
            Err(reason)
        } else {
            log::warn!("eBPF unavailable, running in procfs mode: {reason}");
            Ok(EbpfStatus::procfs(reason))
        }
    };
    let Some(object) = EBPF_OBJECT else {
        return fail("this binary was built without eBPF programs (--no-default-features)".into());
    };
    if !host.path("sys/kernel/btf/vmlinux").exists() {
        return fail("the kernel has no BTF (/sys/kernel/btf/vmlinux missing)".into());
    }
    match load(host, object, event_specs) {
        Ok(c) if c.events.iter().any(|e| e.attached) => {
            let n = c.events.iter().filter(|e| e.attached).count();
            let skipped: Vec<_> = c.events.iter().filter(|e| !e.attached).map(|e| e.spec.as_str()).collect();
            let reason = if skipped.is_empty() {
                format!("{n} tracepoints attached")
            } else {
                format!("{n} tracepoints attached, skipped: {}", skipped.join(","))
            };
            log::info!("eBPF mode: {reason}");
            Ok(EbpfStatus { mode: "ebpf", reason, counters: Some(c) })
        }
        Ok(c) => {
            let why: Vec<_> =
                c.events.iter().map(|e| format!("{}: {}", e.spec, e.error.as_deref().unwrap_or("?"))).collect();
            fail(format!("no tracepoint could be attached ({})", why.join("; ")))
        }
        Err(e) => fail(e),
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

fn load(host: &HostRoot, object: &[u8], event_specs: &[String]) -> Result<EbpfCounters, String> {
    let tracefs = tracefs::find_or_mount(host).map_err(|e| format!("tracefs: {e}"))?;
    let mut events: Vec<TraceEvent> = Vec::new();
    for spec in event_specs {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        let (cat, name) = spec.split_once(':').unwrap_or(("kvm", spec));
        let mut ev = TraceEvent {
            spec: format!("{cat}:{name}"),
            name: name.to_string(),
            id: None,
            slot: None,
            attached: false,
            error: None,
        };
        if events.iter().any(|e| e.spec == ev.spec) {
            continue;
        }
        // The format file tells whether the tracepoint exists on this kernel (and its id).
        match tracefs::read_format(&tracefs, cat, name) {
            Ok(fmt) => ev.id = Some(fmt.id),
            Err(e) => ev.error = Some(format!("not on this kernel ({e})")),
        }
        events.push(ev);
    }
    if events.iter().all(|e| e.id.is_none()) {
        let why: Vec<_> = events.iter().map(|e| format!("{}: {}", e.spec, e.error.as_deref().unwrap_or("?"))).collect();
        return Err(format!(
            "none of the requested tracepoints exists (is the kvm module loaded?): {}",
            why.join("; ")
        ));
    }

    // kvm_userspace_exit by reason: its field offsets come from the format file.
    let mut uexit = UserspaceExits::default();
    let mut uexit_offsets = None;
    match tracefs::read_format(&tracefs, "kvm", "kvm_userspace_exit") {
        Ok(fmt) => match (fmt.checked_field("reason", 4), fmt.checked_field("errno", 4)) {
            (Ok(r), Ok(e)) => {
                uexit_offsets = Some((r.offset, e.offset));
                uexit.reason_names = userspace_exit_names(&fmt.print_fmt);
            }
            (Err(e), _) | (_, Err(e)) => uexit.error = Some(e),
        },
        Err(e) => uexit.error = Some(format!("no kvm_userspace_exit tracepoint ({e})")),
    }

    raise_memlock_limit();
    let (reason_off, errno_off) = uexit_offsets.unwrap_or((0, 0));
    let mut bpf = EbpfLoader::new()
        .override_global(GLOBAL_UEXIT_REASON_OFFSET, &reason_off, true)
        .override_global(GLOBAL_UEXIT_ERRNO_OFFSET, &errno_off, true)
        .load(object)
        .map_err(|e| format!("loading the eBPF object: {e}"))?;
    if let Err(e) = aya_log::EbpfLogger::init(&mut bpf) {
        // The counter programs log nothing per event by design.
        log::debug!("aya-log not active: {e}");
    }
    let mut slot = 0u32;
    for ev in events.iter_mut().filter(|e| e.id.is_some()) {
        if slot >= EVENT_SLOTS {
            ev.error = Some(format!("more than {EVENT_SLOTS} tracepoints requested"));
            continue;
        }
        let (cat, name) = ev.spec.split_once(':').unwrap_or(("kvm", &ev.name));
        let mut buf = [0u8; 16];
        let prog_name = event_program_name(slot, &mut buf);
        match attach(&mut bpf, prog_name, cat, name) {
            Ok(()) => {
                ev.slot = Some(slot);
                ev.attached = true;
                slot += 1;
            }
            Err(e) => ev.error = Some(e),
        }
    }
    if uexit_offsets.is_some() {
        match attach(&mut bpf, "count_userspace_exit", "kvm", "kvm_userspace_exit") {
            Ok(()) => uexit.attached = true,
            Err(e) => uexit.error = Some(e),
        }
    }
    if let Some(e) = &uexit.error {
        log::warn!("kvm_userspace_exit by reason not counted: {e}");
    }
    Ok(EbpfCounters { bpf, events, userspace_exits: uexit })
}

fn attach(bpf: &mut Ebpf, prog_name: &str, cat: &str, name: &str) -> Result<(), String> {
    let prog: &mut TracePoint = bpf
        .program_mut(prog_name)
        .ok_or_else(|| format!("program {prog_name} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{prog_name}: {e}"))?;
    prog.load().map_err(|e| format!("loading {prog_name} (verifier or rights): {e}"))?;
    prog.attach(cat, name).map_err(|e| format!("attaching {prog_name} to {cat}:{name}: {e}"))?;
    Ok(())
}

/// KVM_EXIT_* number -> label (`KVM_EXIT_IO` -> `io`), from kvm_userspace_exit's print fmt.
pub fn userspace_exit_names(print_fmt: &str) -> HashMap<u32, String> {
    tracefs::print_symbolic_tables(print_fmt, "reason")
        .into_iter()
        .flatten()
        .filter_map(|(n, name)| {
            let n = u32::try_from(n).ok()?;
            Some((n, name.strip_prefix("KVM_EXIT_").unwrap_or(&name).to_ascii_lowercase()))
        })
        .collect()
}

/// Per-process event counts read from the maps.
#[derive(Debug, Default, Clone)]
pub struct EventCounts {
    /// (tgid, slot) -> events, summed over CPUs.
    pub counts: HashMap<(u32, u32), u64>,
    /// (tgid, KVM_EXIT_* or REASON_*) -> exits to user space, summed over CPUs.
    pub userspace_exits: HashMap<(u32, u32), u64>,
    /// Events the program could not count, by kind.
    pub errors: Vec<(&'static str, u64)>,
}

impl EbpfCounters {
    /// Read every counter.
    pub fn read(&self) -> Result<EventCounts, String> {
        let map = self.bpf.map("EVENT_COUNTS").ok_or("map EVENT_COUNTS missing")?;
        let counts_map: PerCpuHashMap<_, EventKey, u64> = PerCpuHashMap::try_from(map).map_err(|e| e.to_string())?;
        let mut out = EventCounts::default();
        for item in counts_map.iter() {
            match item {
                Ok((k, per_cpu)) => {
                    out.counts.insert((k.tgid, k.slot), per_cpu.iter().sum());
                }
                // A key deleted while we iterate: skip it.
                Err(e) => log::debug!("EVENT_COUNTS iteration: {e}"),
            }
        }
        if self.userspace_exits.attached {
            let map = self.bpf.map("USERSPACE_EXITS").ok_or("map USERSPACE_EXITS missing")?;
            let m: PerCpuHashMap<_, ReasonKey, u64> = PerCpuHashMap::try_from(map).map_err(|e| e.to_string())?;
            for (k, per_cpu) in m.iter().filter_map(Result::ok) {
                out.userspace_exits.insert((k.tgid, k.reason), per_cpu.iter().sum());
            }
        }
        if let Some(map) = self.bpf.map("COUNTER_ERRORS") {
            let errs: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(|e| e.to_string())?;
            let full = errs.get(&ERR_MAP_FULL, 0).map(|v| v.iter().sum()).unwrap_or(0);
            out.errors.push(("map_full", full));
        }
        Ok(out)
    }

    /// Drop every counter of the given processes (they exited), so the bounded maps never
    /// fill with the dead.
    pub fn forget(&mut self, tgids: &HashSet<u32>, counts: &EventCounts) {
        if let Some(map) = self.bpf.map_mut("EVENT_COUNTS")
            && let Ok(mut m) = PerCpuHashMap::<_, EventKey, u64>::try_from(map)
        {
            for &(tgid, slot) in counts.counts.keys().filter(|(t, _)| tgids.contains(t)) {
                if let Err(e) = m.remove(&EventKey { tgid, slot }) {
                    log::debug!("EVENT_COUNTS remove ({tgid}, {slot}): {e}");
                }
            }
        }
        if let Some(map) = self.bpf.map_mut("USERSPACE_EXITS")
            && let Ok(mut m) = PerCpuHashMap::<_, ReasonKey, u64>::try_from(map)
        {
            for &(tgid, reason) in counts.userspace_exits.keys().filter(|(t, _)| tgids.contains(t)) {
                if let Err(e) = m.remove(&ReasonKey { tgid, reason }) {
                    log::debug!("USERSPACE_EXITS remove ({tgid}, {reason}): {e}");
                }
            }
        }
    }

    /// slot -> event name, for the attached events.
    pub fn event_names(&self) -> HashMap<u32, String> {
        self.events.iter().filter_map(|e| e.slot.map(|s| (s, e.name.clone()))).collect()
    }
}
