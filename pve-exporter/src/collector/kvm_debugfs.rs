//! KVM debugfs stats per VM (and per vCPU with `--kvm-debugfs-per-vcpu`): procfs mode's
//! counterpart of the eBPF counters. VM directories `<pid>-<fd>` are matched to VMs by pid
//! (no hand-written VM map), stat names come from the listings.
//!
//! Reading is refused for good when the kernel says so (lockdown: EPERM; no rights: EACCES):
//! that is a state (`pve_exporter_kvm_debugfs_available 0`, one log line), not a failure of
//! every scrape, and nothing is read again.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    path::{Path, PathBuf},
};

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    host::{HostRoot, is_gone},
    metrics::{MetricSet, Value},
    sources::kernel::kvm_debugfs::{self, Listing},
    vm::Vm,
};

/// Whether KVM debugfs is read: `--kvm-debugfs on`, or `auto` without the eBPF counters
/// (eBPF mode counts the same events without reading ~60 files per VM per scrape).
pub fn new(setup: &Setup) -> Box<dyn Collector> {
    use crate::config::KvmDebugfsMode;
    let wanted = setup.config.collector_enabled("kvm_debugfs")
        && match setup.config.kvm_debugfs {
            KvmDebugfsMode::On => true,
            KvmDebugfsMode::Off => false,
            KvmDebugfsMode::Auto => !setup.ebpf_counting,
        };
    let reader =
        wanted.then(|| std::sync::Mutex::new(KvmDebugfs::start(setup.host, setup.config.kvm_debugfs_per_vcpu)));
    Box::new(KvmDebugfsCollector { reader })
}

/// The `kvm_debugfs` collector; no reader: not collected (`--kvm-debugfs off`, or `auto` in eBPF mode).
struct KvmDebugfsCollector {
    reader: Option<std::sync::Mutex<KvmDebugfs>>,
}

impl Collector for KvmDebugfsCollector {
    fn name(&self) -> &'static str {
        "kvm_debugfs"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Vms
    }
    fn needs(&self) -> &'static [Need] {
        &[Need::Vms]
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        let Some(reader) = &self.reader else { return Err(Error::NotApplicable) };
        reader.lock().unwrap_or_else(|p| p.into_inner()).collect(&cx.vms().vms, out)
    }
}

/// Reads one stat file. The collector takes it as a parameter so tests can answer EPERM,
/// which no file of a fixture tree does for root.
pub type ReadFn<'a> = &'a dyn Fn(&Path) -> io::Result<String>;

fn read_file(p: &Path) -> io::Result<String> {
    crate::host::read_string_capped(p, crate::host::MAX_FILE)
}

pub struct KvmDebugfs {
    per_vcpu: bool,
    /// `<debugfs>/kvm`, or why debugfs is not there (decided at start-up; `kvm/` itself comes
    /// and goes with the kvm module and is looked for on every scrape).
    kvm_dir: Result<PathBuf, crate::sources::error::SourceError>,
    /// Why reading is refused, once it was: lockdown lasts until reboot, rights do not change.
    refused: Option<String>,
    /// Whether the host-wide stats of `kvm/` were read once, to learn about a refusal even
    /// while no VM runs.
    probed: bool,
    /// The state last logged: None before the first scrape, `Some(None)` available,
    /// `Some(Some(why))` not. Each change is logged once.
    logged: Option<Option<String>>,
    /// Stat names of each VM directory (`1100-11`) and vCPU directory (`1100-11/vcpu0`),
    /// listed once: KVM creates a directory's stat files together with the directory. Dropped
    /// when the directory is gone from `kvm/`.
    names: HashMap<String, Vec<String>>,
    /// Stats whose file is not one number (x86's `mmu_rmaps_stat` table), not read again: a
    /// file's format is the running kernel's.
    not_numbers: HashSet<String>,
}

/// One VM's stats, summed over its directories (QEMU opens one VM per process; should a
/// process hold several, their stats add up).
#[derive(Default)]
struct VmStats {
    stats: BTreeMap<String, i128>,
    vcpus: BTreeMap<(u32, String), i128>,
}

enum Outcome {
    Read(Vec<(usize, VmStats)>),
    /// Not readable now; the reason.
    Unavailable(String),
}

impl KvmDebugfs {
    /// Find debugfs (mounting it if needed). Never fails: where there is none, every scrape
    /// reports it unavailable.
    pub fn start(host: &HostRoot, per_vcpu: bool) -> Self {
        let kvm_dir = kvm_debugfs::find_or_mount(host).map(|d| d.join("kvm"));
        Self {
            per_vcpu,
            kvm_dir,
            refused: None,
            probed: false,
            logged: None,
            names: HashMap::new(),
            not_numbers: HashSet::new(),
        }
    }

    pub fn collect(&mut self, vms: &[Vm], out: &mut MetricSet) -> Result<(), Error> {
        self.collect_with(vms, out, &read_file)
    }

    fn collect_with(&mut self, vms: &[Vm], out: &mut MetricSet, read: ReadFn) -> Result<(), Error> {
        let mut errors = Vec::new();
        let outcome = self.read_all(vms, read, &mut errors);
        let state = match &outcome {
            Outcome::Read(_) => None,
            Outcome::Unavailable(why) => Some(why.clone()),
        };
        if self.logged.as_ref() != Some(&state) {
            match &state {
                None => log::info!("KVM debugfs stats available in {}", self.dir_display()),
                Some(why) => log::warn!("KVM debugfs stats not available: {why}"),
            }
            self.logged = Some(state);
        }
        const NO_LABELS: [(&str, String); 0] = [];
        out.family(&KVM_DEBUGFS_AVAILABLE).push(NO_LABELS, matches!(outcome, Outcome::Read(_)));
        if let Outcome::Read(per_vm) = outcome {
            for (i, st) in per_vm {
                let id = &vms[i].id;
                let f = out.family(&KVM_DEBUGFS_STAT);
                for (stat, v) in st.stats {
                    f.push([("id", id.clone()), ("stat", stat)], value(v));
                }
                let f = out.family(&KVM_DEBUGFS_VCPU_STAT);
                for ((vcpu, stat), v) in st.vcpus {
                    f.push([("id", id.clone()), ("vcpu", vcpu.to_string()), ("stat", stat)], value(v));
                }
            }
        }
        Error::all(errors)
    }

    fn dir_display(&self) -> String {
        self.kvm_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
    }

    /// Mark reading refused for good (`e` was refused by the kernel at `p`).
    fn refuse(&mut self, p: &Path, why: &str) -> Outcome {
        let why = format!("{}: {why}; not read again", p.display());
        self.refused = Some(why.clone());
        self.names.clear();
        Outcome::Unavailable(why)
    }

    fn read_all(&mut self, vms: &[Vm], read: ReadFn, errors: &mut Vec<Error>) -> Outcome {
        if let Some(why) = &self.refused {
            return Outcome::Unavailable(why.clone());
        }
        let kvm_dir = match &self.kvm_dir {
            Ok(d) => d.clone(),
            Err(why) => return Outcome::Unavailable(format!("no debugfs: {why}")),
        };
        let top = match kvm_debugfs::list_dir(&kvm_dir) {
            Ok(l) => l,
            Err(e) if is_gone(&e) => {
                self.names.clear();
                return Outcome::Unavailable(format!("{} does not exist (kvm module not loaded?)", kvm_dir.display()));
            }
            Err(e) => match kvm_debugfs::refusal(&e) {
                Some(why) => return self.refuse(&kvm_dir, why),
                None => {
                    let why = format!("{} cannot be listed: {e}", kvm_dir.display());
                    errors.push(Error::io(&kvm_dir, e));
                    return Outcome::Unavailable(why);
                }
            },
        };
        if !self.probed {
            // The host-wide sums: read once, so that a refusal shows before the first VM.
            for stat in &top.stats {
                let p = kvm_dir.join(stat);
                if let Err(e) = read(&p)
                    && let Some(why) = kvm_debugfs::refusal(&e)
                {
                    return self.refuse(&p, why);
                }
            }
            self.probed = true;
        }
        // Directories of processes that are gone take their names with them.
        let present: HashSet<&str> = top.vms.iter().map(|(_, _, name)| name.as_str()).collect();
        self.names.retain(|k, _| present.contains(k.split('/').next().unwrap_or(k)));

        let index: HashMap<u32, usize> = vms.iter().enumerate().map(|(i, vm)| (vm.pid, i)).collect();
        let mut per_vm: BTreeMap<usize, VmStats> = BTreeMap::new();
        let mut failed: HashSet<usize> = HashSet::new();
        for (pid, _, name) in &top.vms {
            // Exact pid: `110-3` is not a directory of pid 1100.
            let Some(&i) = index.get(pid) else { continue };
            if failed.contains(&i) {
                continue;
            }
            match self.read_vm_dir(&kvm_dir, name, read) {
                Ok(Some(st)) => {
                    let acc = per_vm.entry(i).or_default();
                    for (k, v) in st.stats {
                        *acc.stats.entry(k).or_default() += v;
                    }
                    for (k, v) in st.vcpus {
                        *acc.vcpus.entry(k).or_default() += v;
                    }
                }
                // The VM stopped while we read: it is simply not reported.
                Ok(None) => {
                    per_vm.remove(&i);
                    failed.insert(i);
                }
                Err(DirError::Refused(p, why)) => return self.refuse(&p, why),
                Err(DirError::Failed(p, e)) => {
                    errors.push(Error::source(format!("VM {} (pid {pid}): {}", vms[i].id, p.display()), e));
                    per_vm.remove(&i);
                    failed.insert(i);
                }
            }
        }
        Outcome::Read(per_vm.into_iter().collect())
    }

    /// The stats of one VM directory; None when it vanished (the VM stopped).
    fn read_vm_dir(&mut self, kvm_dir: &Path, name: &str, read: ReadFn) -> Result<Option<VmStats>, DirError> {
        let dir = kvm_dir.join(name);
        // The vCPU directories are looked for on every scrape (vCPUs can be hot-plugged); the
        // VM's own stat names are listed once.
        let listing = if self.per_vcpu || !self.names.contains_key(name) {
            match kvm_debugfs::list_dir(&dir) {
                Ok(l) => Some(l),
                Err(e) if is_gone(&e) => return Ok(None),
                Err(e) => return Err(DirError::from_io(&dir, e)),
            }
        } else {
            None
        };
        if let Some(l) = &listing {
            self.names.entry(name.to_string()).or_insert_with(|| l.stats.clone());
        }
        let mut st = VmStats::default();
        let Some(stats) = self.read_stats(name, &dir, read)? else { return Ok(None) };
        st.stats = stats;
        if self.per_vcpu {
            let vcpus = listing.map(|l: Listing| l.vcpus).unwrap_or_default();
            for (n, sub) in vcpus {
                let key = format!("{name}/{sub}");
                let vdir = dir.join(&sub);
                if !self.names.contains_key(&key) {
                    match kvm_debugfs::list_dir(&vdir) {
                        Ok(l) => {
                            self.names.insert(key.clone(), l.stats);
                        }
                        Err(e) if is_gone(&e) => return Ok(None),
                        Err(e) => return Err(DirError::from_io(&vdir, e)),
                    }
                }
                let Some(stats) = self.read_stats(&key, &vdir, read)? else { return Ok(None) };
                for (stat, v) in stats {
                    *st.vcpus.entry((n, stat)).or_default() += v;
                }
            }
        }
        Ok(Some(st))
    }

    /// Read the stats listed for `key` in `dir`; None when a file vanished (the VM stopped).
    fn read_stats(&mut self, key: &str, dir: &Path, read: ReadFn) -> Result<Option<BTreeMap<String, i128>>, DirError> {
        let mut out = BTreeMap::new();
        for stat in self.names.get(key).into_iter().flatten() {
            if self.not_numbers.contains(stat) {
                continue;
            }
            let p = dir.join(stat);
            match read(&p) {
                Ok(text) => match kvm_debugfs::parse_stat_value(&text) {
                    Some(v) => {
                        out.insert(stat.clone(), v);
                    }
                    None => {
                        log::debug!("{}: not a number, not read again", p.display());
                        self.not_numbers.insert(stat.clone());
                    }
                },
                Err(e) if is_gone(&e) => return Ok(None),
                Err(e) => return Err(DirError::from_io(&p, e)),
            }
        }
        Ok(Some(out))
    }
}

enum DirError {
    Refused(PathBuf, &'static str),
    Failed(PathBuf, io::Error),
}

impl DirError {
    fn from_io(p: &Path, e: io::Error) -> Self {
        match kvm_debugfs::refusal(&e) {
            Some(why) => DirError::Refused(p.to_path_buf(), why),
            None => DirError::Failed(p.to_path_buf(), e),
        }
    }
}

/// Values as read: counters fit u64, a few per-vCPU values are signed (`tsc-offset`).
fn value(v: i128) -> Value {
    match u64::try_from(v) {
        Ok(u) => Value::Int(u),
        Err(_) => Value::Float(v as f64),
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[KVM_DEBUGFS, EXPORTER_KVM_DEBUGFS];

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn vm(id: &str, pid: u32) -> Vm {
        Vm { vcores: 2, ..crate::vm::tests_vm(id, pid) }
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("sys/kernel/debug/kvm");
        for (rel, v) in [
            ("exits", "300\n"),
            ("halt_exits", "30\n"),
            ("1100-11/exits", "100\n"),
            ("1100-11/halt_exits", "10\n"),
            ("1100-11/mmu_rmaps_stat", "Rmap_Count:  0  1\nLevel=4K:  3  4\n"),
            ("1100-11/vcpu0/tsc-offset", "-5\n"),
            ("1100-11/vcpu0/pid", "1101\n"),
            ("1100-11/vcpu1/tsc-offset", "-5\n"),
            ("110-3/exits", "200\n"),
            ("110-3/halt_exits", "20\n"),
        ] {
            let p = kvm.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        dir
    }

    fn scrape(d: &mut KvmDebugfs, vms: &[Vm], read: ReadFn) -> (MetricSet, Result<(), Error>) {
        let mut out = MetricSet::new("pve");
        let r = d.collect_with(vms, &mut out, read);
        (out, r)
    }

    /// (label values, value as `Int(n)` / `Float(x)`) of each sample of `fam`.
    fn samples(out: &MetricSet, fam: &str) -> Vec<(Vec<String>, String)> {
        let sample =
            |s: &crate::metrics::Sample| (s.labels.iter().map(|l| l.1.to_string()).collect(), format!("{:?}", s.value));
        out.get(fam).map(|f| f.samples.iter().map(sample).collect()).unwrap_or_default()
    }

    fn int(n: u64) -> String {
        format!("{:?}", Value::Int(n))
    }

    #[test]
    fn stats_by_exact_pid_and_per_vcpu() {
        let dir = tree();
        let mut d = KvmDebugfs::start(&HostRoot::new(dir.path()), true);
        let (out, r) = scrape(&mut d, &[vm("100", 1100)], &read_file);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(samples(&out, "pve_exporter_kvm_debugfs_available"), [(vec![], int(1))]);
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // 110-3 is another process's; the table is not a number; pid is not a stat.
        assert_eq!(
            samples(&out, "pve_kvm_debugfs_stat"),
            [(s(&["100", "exits"]), int(100)), (s(&["100", "halt_exits"]), int(10))]
        );
        assert_eq!(
            samples(&out, "pve_kvm_debugfs_vcpu_stat"),
            [
                (s(&["100", "0", "tsc-offset"]), format!("{:?}", Value::Float(-5.0))),
                (s(&["100", "1", "tsc-offset"]), format!("{:?}", Value::Float(-5.0)))
            ]
        );
        assert!(d.not_numbers.contains("mmu_rmaps_stat"));
        // A VM that stopped: its directory is gone, and so are its cached names.
        std::fs::remove_dir_all(dir.path().join("sys/kernel/debug/kvm/1100-11")).unwrap();
        let (out, r) = scrape(&mut d, &[vm("100", 1100)], &read_file);
        assert!(r.is_ok(), "{r:?}");
        assert!(samples(&out, "pve_kvm_debugfs_stat").is_empty());
        assert!(d.names.is_empty(), "{:?}", d.names.keys());
    }

    /// The EPERM of kernel lockdown, injected through the reader (root reads every fixture
    /// file, so a fixture tree cannot produce it): reported as unavailable, logged once, the
    /// collector does not fail, and nothing is read again.
    #[test]
    fn lockdown_is_a_state_not_an_error() {
        let dir = tree();
        let mut d = KvmDebugfs::start(&HostRoot::new(dir.path()), false);
        let reads = Cell::new(0);
        let locked = |p: &Path| -> io::Result<String> {
            reads.set(reads.get() + 1);
            if p.ends_with("halt_exits") {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            std::fs::read_to_string(p)
        };
        let (out, r) = scrape(&mut d, &[vm("100", 1100)], &locked);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(samples(&out, "pve_exporter_kvm_debugfs_available"), [(vec![], int(0))]);
        assert!(out.get("pve_kvm_debugfs_stat").is_none());
        assert!(d.refused.as_deref().is_some_and(|r| r.contains("lockdown")), "{:?}", d.refused);
        let after_first = reads.get();
        assert!(after_first > 0);
        for _ in 0..3 {
            let (out, r) = scrape(&mut d, &[vm("100", 1100)], &locked);
            assert!(r.is_ok(), "{r:?}");
            assert_eq!(samples(&out, "pve_exporter_kvm_debugfs_available"), [(vec![], int(0))]);
        }
        assert_eq!(reads.get(), after_first, "nothing is read once refused");
        assert!(d.logged.as_ref().is_some_and(|s| s.is_some()));

        // A refusal that first shows in a VM's directory (the host-wide files read fine).
        let mut d = KvmDebugfs::start(&HostRoot::new(dir.path()), false);
        let vm_locked = |p: &Path| -> io::Result<String> {
            if p.to_string_lossy().contains("1100-11") {
                return Err(io::Error::from_raw_os_error(libc::EACCES));
            }
            std::fs::read_to_string(p)
        };
        let (out, r) = scrape(&mut d, &[vm("100", 1100)], &vm_locked);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(samples(&out, "pve_exporter_kvm_debugfs_available"), [(vec![], int(0))]);
    }

    #[test]
    fn other_errors_cost_only_that_vm() {
        let dir = tree();
        std::fs::create_dir_all(dir.path().join("sys/kernel/debug/kvm/1200-12")).unwrap();
        std::fs::write(dir.path().join("sys/kernel/debug/kvm/1200-12/exits"), "7\n").unwrap();
        let mut d = KvmDebugfs::start(&HostRoot::new(dir.path()), false);
        let eio = |p: &Path| -> io::Result<String> {
            if p.to_string_lossy().contains("1100-11") {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            std::fs::read_to_string(p)
        };
        let (out, r) = scrape(&mut d, &[vm("100", 1100), vm("200", 1200)], &eio);
        assert!(r.as_ref().is_err_and(|e| e.to_string().contains("VM 100")), "{r:?}");
        assert_eq!(samples(&out, "pve_exporter_kvm_debugfs_available"), [(vec![], int(1))]);
        assert_eq!(samples(&out, "pve_kvm_debugfs_stat"), [(vec!["200".into(), "exits".into()], int(7))]);
        assert!(d.refused.is_none());
    }

    #[test]
    fn without_debugfs_or_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = KvmDebugfs::start(&HostRoot::new(dir.path()), false);
        let (out, r) = scrape(&mut d, &[vm("100", 1100)], &read_file);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(samples(&out, "pve_exporter_kvm_debugfs_available"), [(vec![], int(0))]);
        // debugfs is there, the kvm module is not (yet): looked for again on every scrape.
        std::fs::create_dir_all(dir.path().join("sys/kernel/debug/x86")).unwrap();
        let mut d = KvmDebugfs::start(&HostRoot::new(dir.path()), false);
        let (out, _) = scrape(&mut d, &[], &read_file);
        assert_eq!(samples(&out, "pve_exporter_kvm_debugfs_available"), [(vec![], int(0))]);
        std::fs::create_dir_all(dir.path().join("sys/kernel/debug/kvm")).unwrap();
        let (out, _) = scrape(&mut d, &[], &read_file);
        assert_eq!(samples(&out, "pve_exporter_kvm_debugfs_available"), [(vec![], int(1))]);
    }
}
