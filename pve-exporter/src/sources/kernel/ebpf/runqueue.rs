//! Run-queue wait of vCPU threads (kernel side: pve-exporter-ebpf/src/runqueue.rs, the
//! `sched_*` programs): the daemon tells the programs which threads are vCPUs.

#[allow(unused_imports)]
use super::*;

impl EbpfCounters {
    /// Tell the programs which threads are vCPUs: `(tgid, tid)` of every vCPU thread of every
    /// running VM. Only changes reach the kernel: new threads are added, threads of stopped
    /// VMs (or unplugged vCPUs) removed, with their pending run-queue timestamps.
    pub fn sync_vcpus(&mut self, current: &[(u32, u32)]) {
        let want: HashMap<u32, u32> = current.iter().map(|&(tgid, tid)| (tid, tgid)).collect();
        let gone: Vec<u32> =
            self.vcpus.iter().filter(|(tid, tgid)| want.get(tid) != Some(tgid)).map(|(t, _)| *t).collect();
        let added: Vec<(u32, u32)> =
            want.iter().filter(|(tid, tgid)| self.vcpus.get(tid) != Some(tgid)).map(|(t, g)| (*t, *g)).collect();
        if gone.is_empty() && added.is_empty() {
            return;
        }
        if let Some(map) = self.bpf.map_mut(maps::VCPU_THREADS)
            && let Ok(mut m) = BpfHashMap::<&mut MapData, u32, u32>::try_from(map)
        {
            for tid in &gone {
                let _ = m.remove(tid);
                self.vcpus.remove(tid);
            }
            for (tid, tgid) in &added {
                match m.insert(tid, tgid, 0) {
                    Ok(()) => {
                        self.vcpus.insert(*tid, *tgid);
                    }
                    Err(e) => log::debug!("VCPU_THREADS insert {tid}: {e}"),
                }
            }
        }
        if let Some(map) = self.bpf.map_mut(maps::WAIT_START)
            && let Ok(mut m) = BpfHashMap::<&mut MapData, u32, u64>::try_from(map)
        {
            for tid in &gone {
                let _ = m.remove(tid);
            }
        }
        // The filter holds, per slot, how many registered threads fall into it.
        let slots: HashSet<u32> =
            gone.iter().chain(added.iter().map(|(t, _)| t)).map(|&t| vcpu_filter_slot(t)).collect();
        if let Some(map) = self.bpf.map_mut(maps::VCPU_FILTER)
            && let Ok(mut m) = Array::<&mut MapData, u8>::try_from(map)
        {
            for slot in slots {
                let n = self.vcpus.keys().filter(|&&t| vcpu_filter_slot(t) == slot).count();
                if let Err(e) = m.set(slot, n.min(255) as u8, 0) {
                    log::debug!("VCPU_FILTER set {slot}: {e}");
                }
            }
        }
    }
}
