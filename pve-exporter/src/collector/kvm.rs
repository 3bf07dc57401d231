//! Per-VM families from /proc (and the eBPF maps): the host-local VM metrics of pvemon and
//! pve_local_exporter, under their Go names, with `id` labels.

use super::{Collector, Context, Error, Group, Need, Setup};
use crate::{
    catalog::*,
    metrics::{LabelValue, MetricSet},
    sources::proc::process::{self, ProcessStats},
    vm::Vm,
};

/// The `id` label value of `vm`, shared by its samples (one allocation per VM, not per sample).
pub fn shared_id(vm: &Vm) -> LabelValue {
    LabelValue::Shared(vm.id.as_str().into())
}

pub fn new(_: &Setup) -> Box<dyn Collector> {
    Box::new(Kvm)
}

/// The `kvm` collector: every VM's process figures, read by the VM list stage (which also
/// reports what discovery could not list or read).
struct Kvm;

impl Collector for Kvm {
    fn name(&self) -> &'static str {
        "kvm"
    }
    fn families(&self) -> &'static [&'static [&'static Def]] {
        FAMILIES
    }
    fn group(&self) -> Group {
        Group::Vms
    }
    fn needs(&self) -> &'static [Need] {
        &[Need::PveConfig, Need::Vms]
    }
    fn collect(&self, cx: &Context, out: &mut MetricSet) -> Result<(), Error> {
        let list = cx.vms();
        let mut errors: Vec<Error> = Vec::new();
        let memtotal = cx
            .files
            .read("proc/meminfo")
            .map_err(|e| Error::io(cx.host.path("proc/meminfo"), e))
            .and_then(|t| process::parse_memtotal(&t).map_err(|e| e.input("/proc/meminfo").into()))
            .map_err(|e| errors.push(e))
            .ok();
        emit(&list.vms, &list.stats, memtotal, out);
        // What discovery could not list or read is this collector's to report.
        errors.extend(list.errors.take());
        Error::all(errors)
    }
}

/// The families of every VM from its process figures.
fn emit(vms: &[Vm], stats: &[ProcessStats], memtotal: Option<u64>, out: &mut MetricSet) {
    let (mut pid, mut levels) = (itoa::Buffer::new(), itoa::Buffer::new());
    for (vm, st) in vms.iter().zip(stats) {
        // Labels are borrowed from the VM and its pool: written as they are.
        let id = vm.id.as_str();
        let one = [("id", id)];
        let [pool, pool_levels, pool1, pool2, pool3] = super::guest::pool_labels(vm.pool.as_ref(), &mut levels);
        out.family(&KVM_INFO).push_ref(
            &[
                ("id", id),
                ("name", &vm.name),
                ("cpu", &vm.cpu),
                ("pid", pid.format(vm.pid)),
                pool,
                pool_levels,
                pool1,
                pool2,
                pool3,
            ],
            1u64,
        );
        if vm.source == crate::vm::LIBVIRT
            && let Some(x) = &vm.extra
        {
            let nova = x.nova.clone().unwrap_or_default();
            out.family(&KVM_LIBVIRT_INFO).push_ref(
                &[
                    ("id", id),
                    ("name", &vm.name),
                    ("uuid", &x.uuid),
                    ("nova_instance", &nova.name),
                    ("nova_project", &nova.project),
                    ("nova_project_id", &nova.project_id),
                    ("nova_flavor", &nova.flavor),
                ],
                1u64,
            );
        }
        if let Some(cpu) = &st.cpu {
            let f = out.family(&KVM_CPU_SECONDS);
            for (mode, d) in [("user", cpu.user), ("system", cpu.system), ("iowait", cpu.iowait)] {
                f.push_ref(&[("id", id), ("mode", mode)], d.as_secs_f64());
            }
        }
        out.family(&KVM_VCORES).push_ref(&one, vm.vcores);
        out.family(&KVM_MAXMEM_BYTES).push_ref(&one, vm.maxmem_bytes);
        if let Some(status) = &st.status {
            if let Some(rss) = status.memory("vmrss")
                && vm.maxmem_bytes > 0
            {
                out.family(&KVM_MEMORY_UTILISATION).push_ref(&one, rss as f64 / vm.maxmem_bytes as f64);
            }
            if let (Some(rss), Some(total)) = (status.memory("vmrss"), memtotal.filter(|t| *t > 0)) {
                out.family(&KVM_MEMORY_PERCENT).push_ref(&one, rss as f64 * 100.0 / total as f64);
            }
            let f = out.family(&KVM_MEMORY_EXTENDED);
            for (k, v) in &status.memory {
                f.push_ref(&[("id", id), ("type", k)], *v);
            }
        }
        // Threads from status, else from stat.
        let threads = st.status.as_ref().and_then(|s| s.threads).or(st.cpu.map(|c| c.num_threads));
        if let Some(t) = threads {
            out.family(&KVM_THREADS).push_ref(&one, t);
        }
        if let Some(status) = &st.status {
            let f = out.family(&KVM_CTX_SWITCHES);
            for (ty, v) in
                [("voluntary", status.voluntary_ctxt_switches), ("involuntary", status.nonvoluntary_ctxt_switches)]
            {
                if let Some(v) = v {
                    f.push_ref(&[("id", id), ("type", ty)], v);
                }
            }
        }
        if let Some(io) = &st.io {
            for (def, v) in KVM_IO.iter().zip([io.syscr, io.read_bytes, io.rchar, io.syscw, io.write_bytes, io.wchar]) {
                out.family(def).push_ref(&one, v);
            }
        }
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[KVM_PROC, KVM_IO, KVM_LIBVIRT];
