//! vCPU threads per VM and their schedstat: time on a CPU, time waiting on a run queue (what
//! KVM reports to the guest as steal) and timeslices, summed over the VM's `CPU n/KVM`
//! threads. In both modes, so the same dashboards work with and without eBPF.

use std::{
    collections::{HashMap, HashSet},
    io,
    sync::{Arc, Mutex},
};

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    heldfile::{FdBudget, HeldFiles, OnStale},
    host::{HostRoot, is_gone},
    metrics::MetricSet,
    sources::proc::process::{self, Schedstat, VcpuThread},
    vm::Vm,
};

/// The vCPU threads of each QEMU process, listed once and kept while they cannot have changed.
///
/// Listing costs a read of `/proc/<pid>/task` and of every thread's `comm` (~25 µs for the
/// listing alone with 50 threads, measured); QEMU has dozens of threads. The set of vCPU
/// threads changes only when a thread is created, exits or renames itself, so a listing is
/// reused while all of these hold:
/// - the process has as many threads as when it was listed: creating or ending a thread
///   changes that number, which one `fstat` of `/proc/<pid>/task` gives (its link count, see
///   [`process::task_link_count`]), without reading a file. The directory is held open: an
///   `fstat` is ~0.5 µs where a `stat` by path walks four components (~6 µs, measured). Held,
///   it answers for the process it was opened for; once that process has exited its count is
///   that of no thread, which differs from any listing's, so the listing is taken again (and
///   the directory opened anew, by path: a reused pid is a new process);
/// - every listed vCPU thread still exists: one that exits while another thread starts
///   (count unchanged) answers ESRCH on its held schedstat file (or NotFound by path), and the
///   listing is dropped;
/// - the listing did not find fewer vCPU threads than the VM was started with (`-smp`): QEMU
///   names a vCPU thread right after creating it, and a listing taken in between misses it.
///   (Zero found is kept: a QEMU without `debug-threads=on` names no vCPU thread at all.)
///
/// A new pid is a new entry; entries of processes that are no longer VMs are dropped every
/// scrape. Not caught: a vCPU hot-plugged in the same interval in which another thread exits
/// (count unchanged); it is listed with the next change of the thread count, which QEMU's
/// worker threads bring soon. Listing every scrape to close that gap would cost more than the
/// rest of this collector together.
pub struct VcpuThreadCache {
    host: HostRoot,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: HashMap<u32, Entry>,
    /// The listed threads' schedstat files, by pid, slot i for `threads[i]`, opened when listed
    /// and held: one `pread` per scrape is 0.9 µs against 7 µs for open + read + close
    /// (measured), and a held file cannot follow a new thread that reuses the tid (its read
    /// fails, and the listing is taken again). Beyond the descriptor budget: read by path.
    files: HeldFiles<u32>,
    /// `/proc/<pid>/task` of each listed process, held for its link count.
    dirs: HeldFiles<u32>,
}

struct Entry {
    /// Link count of `/proc/<pid>/task` when listed (2 + the thread count).
    links: u64,
    /// The largest `-smp` a caller expects (0: unknown).
    expected: u64,
    threads: Vec<VcpuThread>,
}

impl Entry {
    fn usable(&self, links: u64, expected: u64) -> bool {
        let found = self.threads.len() as u64;
        self.links == links && (found == 0 || found >= expected.max(self.expected))
    }
}

/// Why a schedstat read of a listed thread failed.
enum ReadError {
    /// The thread exited (ESRCH on a held file, NotFound by path): the listing is stale.
    Exited,
    Other(io::Error),
}

impl VcpuThreadCache {
    /// With its own descriptor budget (half the soft RLIMIT_NOFILE).
    pub fn new(host: HostRoot) -> Self {
        Self::with_budget(host, FdBudget::from_rlimit())
    }

    /// Holding files within `budget`, shared with the engine's other held files.
    pub fn with_budget(host: HostRoot, budget: Arc<FdBudget>) -> Self {
        // A failed read of a held file makes the listing stale: no reopening by path, which
        // could read a new thread that reused the tid.
        let files = HeldFiles::new(budget.clone(), OnStale::Fail);
        let dirs = HeldFiles::new(budget, OnStale::Fail);
        Self { host, inner: Mutex::new(Inner { entries: HashMap::new(), files, dirs }) }
    }

    /// The vCPU threads of `pid` (sorted by index), listed again only when the rules above say
    /// the listing may be stale. For the eBPF side: which threads are vCPUs. Err NotFound when
    /// the process is gone.
    pub fn get(&self, pid: u32) -> io::Result<Vec<VcpuThread>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner { entries, files, dirs } = &mut *inner;
        Ok(entry(entries, files, dirs, &self.host, pid, 0)?.threads.clone())
    }

    /// The vCPU threads (pid, tid) of each of `pids` as listed by this scrape's
    /// [`Self::schedstat`] (which checked the listing just now), else as [`Self::get`] finds
    /// them; a process gone has none. One lock and one list for all.
    pub fn listed(&self, pids: impl Iterator<Item = u32>) -> Vec<(u32, u32)> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner { entries, files, dirs } = &mut *inner;
        let mut out = Vec::new();
        for pid in pids {
            let threads = if entries.contains_key(&pid) {
                &entries[&pid].threads
            } else {
                match entry(entries, files, dirs, &self.host, pid, 0) {
                    Ok(e) => &e.threads,
                    Err(_) => continue,
                }
            };
            out.extend(threads.iter().map(|t| (pid, t.tid)));
        }
        out
    }

    /// Forget `pid`'s listing (and close its files).
    pub fn invalidate(&self, pid: u32) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(pid);
    }

    /// Keep only the entries of `pids`.
    pub fn retain(&self, pids: &HashSet<u32>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.entries.retain(|p, _| pids.contains(p));
        inner.files.retain(|p| pids.contains(p));
        inner.dirs.retain(|p| pids.contains(p));
    }

    /// The number of vCPU threads of `pid` and the sum of their schedstat. A thread that exits
    /// meanwhile makes the listing stale: it is listed and read once more; what still fails
    /// then (the thread exited again) is left out. Err NotFound when the process is gone.
    pub fn schedstat(&self, pid: u32, vcores: u64) -> io::Result<(usize, Schedstat)> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut retried = false;
        loop {
            let Inner { entries, files, dirs } = &mut *inner;
            let entry = entry(entries, files, dirs, &self.host, pid, vcores)?;
            let mut sum = Schedstat::default();
            let mut counted = 0;
            let mut stale = false;
            for (slot, t) in entry.threads.iter().enumerate() {
                match read_schedstat(files, &self.host, pid, slot, t.tid) {
                    Ok(s) => {
                        sum.run_ns = sum.run_ns.saturating_add(s.run_ns);
                        sum.wait_ns = sum.wait_ns.saturating_add(s.wait_ns);
                        sum.timeslices = sum.timeslices.saturating_add(s.timeslices);
                        counted += 1;
                    }
                    Err(ReadError::Exited) => stale = true,
                    Err(ReadError::Other(e)) => return Err(e),
                }
            }
            if stale && !retried {
                inner.remove(pid);
                retried = true;
                continue;
            }
            return Ok((counted, sum));
        }
    }

    #[cfg(test)]
    fn open_files(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.files.held() + inner.dirs.held()
    }
}

impl Inner {
    fn remove(&mut self, pid: u32) {
        self.entries.remove(&pid);
        self.files.remove(&pid);
        self.dirs.remove(&pid);
    }
}

/// `pid`'s entry, listed again when it may be stale (its schedstat files opened anew then).
fn entry<'a>(
    entries: &'a mut HashMap<u32, Entry>,
    files: &mut HeldFiles<u32>,
    dirs: &mut HeldFiles<u32>,
    host: &HostRoot,
    pid: u32,
    expected: u64,
) -> io::Result<&'a mut Entry> {
    // Count first, list second: a thread started in between makes the next call list again
    // (harmless); the other order could keep a listing that misses it.
    let mut links = process::task_link_count(dirs, host, pid)?;
    let mut entry = match entries.remove(&pid) {
        Some(e) if e.usable(links, expected) => e,
        old => {
            files.remove(&pid);
            if old.is_some() {
                // The held directory may be that of an exited process: count anew by path.
                dirs.remove(&pid);
                links = process::task_link_count(dirs, host, pid)?;
            }
            let before = old.map_or(0, |e| e.expected);
            let threads = process::vcpu_threads(host, pid)?;
            for (slot, t) in threads.iter().enumerate() {
                files.hold(&pid, slot, &schedstat_path(host, pid, t.tid));
            }
            Entry { links, expected: before, threads }
        }
    };
    entry.expected = entry.expected.max(expected);
    Ok(entries.entry(pid).insert_entry(entry).into_mut())
}

fn schedstat_path(host: &HostRoot, pid: u32, tid: u32) -> std::path::PathBuf {
    host.path(format!("proc/{pid}/task/{tid}/schedstat"))
}

fn read_schedstat(
    files: &mut HeldFiles<u32>,
    host: &HostRoot,
    pid: u32,
    slot: usize,
    tid: u32,
) -> Result<Schedstat, ReadError> {
    let classify = |e: io::Error| if is_gone(&e) { ReadError::Exited } else { ReadError::Other(e) };
    let raw = files.read(&pid, slot, || schedstat_path(host, pid, tid)).map_err(classify)?;
    let text = String::from_utf8_lossy(raw);
    process::parse_schedstat(&text).ok_or_else(|| {
        ReadError::Other(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("task {tid}: schedstat: unparseable {:?}", text.trim_end()),
        ))
    })
}

/// The vCPU families of every VM. A VM whose process is gone is skipped; one whose threads
/// cannot be read loses its series and makes the collector fail.
fn collect(cache: &VcpuThreadCache, vms: &[Vm], out: &mut MetricSet) -> Result<(), Error> {
    cache.retain(&vms.iter().map(|v| v.pid).collect());
    let mut errors = Vec::new();
    for vm in vms {
        let (threads, sum) = match cache.schedstat(vm.pid, vm.vcores) {
            Ok(r) => r,
            Err(e) if is_gone(&e) => continue,
            Err(e) => {
                errors.push(Error::source(format!("VM {} (pid {})", vm.id, vm.pid), e));
                continue;
            }
        };
        let id = [("id", vm.id.as_str())];
        out.family(&KVM_VCPU_THREADS).push_ref(&id, threads as u64);
        if threads > 0 {
            out.family(&KVM_VCPU_RUN_SECONDS).push_ref(&id, sum.run_ns as f64 / 1e9);
            out.family(&KVM_VCPU_WAIT_SECONDS).push_ref(&id, sum.wait_ns as f64 / 1e9);
            out.family(&KVM_VCPU_TIMESLICES).push_ref(&id, sum.timeslices);
        }
    }
    Error::all(errors)
}

pub fn new(_: &Setup) -> Box<dyn Collector> {
    Box::new(Vcpu)
}

/// The `vcpu` collector: schedstat of every vCPU thread (both modes; it lists the threads
/// the eBPF run-queue program is told of, so it runs before `ebpf`).
struct Vcpu;

impl Collector for Vcpu {
    fn name(&self) -> &'static str {
        "vcpu"
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
        collect(&cx.stage_state().vcpu_threads, &cx.vms().vms, out)
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[KVM_VCPU];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn thread(root: &Path, pid: u32, tid: u32, comm: &str, schedstat: &str) {
        let d = root.join(format!("proc/{pid}/task/{tid}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(d.join("schedstat"), schedstat).unwrap();
    }

    #[test]
    fn listing_is_kept_until_the_thread_count_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        thread(root, 50, 50, "kvm", "1 1 1\n");
        thread(root, 50, 51, "CPU 0/KVM", "1000000000 500 10\n");
        thread(root, 50, 52, "CPU 1/KVM", "2000000000 700 20\n");
        let cache = VcpuThreadCache::new(HostRoot::new(root));
        let (n, s) = cache.schedstat(50, 2).unwrap();
        assert_eq!((n, s), (2, Schedstat { run_ns: 3_000_000_000, wait_ns: 1200, timeslices: 30 }));
        assert_eq!(cache.open_files(), 3, "two schedstat files and the task directory");
        assert_eq!(cache.get(50).unwrap().iter().map(|t| t.index).collect::<Vec<_>>(), [0, 1]);

        // A thread renamed without a change of the thread count is not seen (the listing is
        // kept: this is the case the rules accept)...
        std::fs::write(root.join("proc/50/task/50/comm"), "CPU 9/KVM\n").unwrap();
        assert_eq!(cache.get(50).unwrap().len(), 2);
        // ...a new thread changes the count, and the listing is renewed.
        thread(root, 50, 53, "CPU 2/KVM", "5 5 5\n");
        assert_eq!(cache.get(50).unwrap().iter().map(|t| t.index).collect::<Vec<_>>(), [0, 1, 2, 9]);
        assert_eq!(cache.open_files(), 5);

        // Values are read fresh every time from the held files.
        std::fs::write(root.join("proc/50/task/51/schedstat"), "3000000000 600 11\n").unwrap();
        assert_eq!(cache.schedstat(50, 2).unwrap().1.run_ns, 5_000_000_000 + 5 + 1);

        cache.retain(&HashSet::new());
        assert_eq!(cache.open_files(), 0);
        assert!(is_gone(&cache.schedstat(60, 1).unwrap_err()));
    }

    #[test]
    fn fewer_vcpus_than_smp_is_listed_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        thread(root, 70, 70, "kvm", "0 0 0\n");
        thread(root, 70, 71, "CPU 0/KVM", "10 0 1\n");
        // vCPU 1 is created but not yet named.
        thread(root, 70, 72, "kvm", "20 0 2\n");
        let cache = VcpuThreadCache::new(HostRoot::new(root));
        assert_eq!(cache.schedstat(70, 2).unwrap().0, 1);
        std::fs::write(root.join("proc/70/task/72/comm"), "CPU 1/KVM\n").unwrap();
        assert_eq!(cache.schedstat(70, 2).unwrap(), (2, Schedstat { run_ns: 30, wait_ns: 0, timeslices: 3 }));
        // The eBPF side asks without knowing -smp: the listing is complete now and kept.
        assert_eq!(cache.get(70).unwrap().len(), 2);

        // No vCPU thread named at all (QEMU without debug-threads=on): kept, not listed again.
        thread(root, 80, 80, "kvm", "0 0 0\n");
        thread(root, 80, 81, "kvm", "0 0 0\n");
        assert_eq!(cache.schedstat(80, 4).unwrap(), (0, Schedstat::default()));
        std::fs::write(root.join("proc/80/task/81/comm"), "CPU 0/KVM\n").unwrap();
        assert_eq!(cache.schedstat(80, 4).unwrap().0, 0);
    }

    #[test]
    fn a_vcpu_that_exits_while_another_thread_starts_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        thread(root, 90, 90, "kvm", "0 0 0\n");
        thread(root, 90, 91, "CPU 0/KVM", "10 1 1\n");
        thread(root, 90, 92, "CPU 1/KVM", "20 2 2\n");
        // Above the descriptor budget (the task directory and vCPU 0's schedstat): vCPU 1's
        // reads go by path.
        let cache = VcpuThreadCache::with_budget(HostRoot::new(root), FdBudget::new(2));
        assert_eq!(cache.schedstat(90, 2).unwrap(), (2, Schedstat { run_ns: 30, wait_ns: 3, timeslices: 3 }));
        assert_eq!(cache.open_files(), 2);
        // vCPU 1 (read by path) exits and a worker starts: same count, the read says NotFound.
        std::fs::remove_dir_all(root.join("proc/90/task/92")).unwrap();
        thread(root, 90, 93, "worker", "0 0 0\n");
        assert_eq!(cache.schedstat(90, 2).unwrap(), (1, Schedstat { run_ns: 10, wait_ns: 1, timeslices: 1 }));
        // Garbage in a schedstat file is an error of that VM, not a panic.
        std::fs::write(root.join("proc/90/task/91/schedstat"), "garbage").unwrap();
        let e = cache.schedstat(90, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
}
