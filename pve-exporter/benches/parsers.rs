//! Micro-benchmarks of the pure parsers (file or monitor text -> types) and of the one
//! exposition path, on the repository's fixtures: real /proc, /sys and /etc/pve files of the
//! fixture hosts, real QEMU 7.2 monitor captures and real tracepoint format files.
//!
//! `cargo bench -p pve-exporter --bench parsers` measures; `-- --test` runs each benchmark once
//! (what `cargo xtask bench --quick parsers` does in the test suite). Benchmark ids read
//! `<source>/<what>[/<input>]`; throughput is in input bytes (output bytes for exposition).

use std::{hint::black_box, path::Path, sync::Arc};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pve_exporter::{
    catalog::*,
    exposition::{self, Format},
    metrics::MetricSet,
    sources::{
        kernel::kvm_debugfs, kernel::tracefs, proc::node, proc::pressure, proc::process, pve::config, pve::ha,
        pve::storage_cfg, qemu::hmp, qemu::libvirt, qemu::qmp, storage::lvm, storage::zfs,
    },
};

/// A fixture file's bytes, embedded at compile time (path below `fixtures/`).
macro_rules! fixture {
    ($p:literal) => {
        include_bytes!(concat!("../../fixtures/", $p)).as_slice()
    };
}

/// A fixture file's text, embedded at compile time (path below `fixtures/`).
macro_rules! fixture_str {
    ($p:literal) => {
        include_str!(concat!("../../fixtures/", $p))
    };
}

fn bytes(n: usize) -> Throughput {
    Throughput::Bytes(n as u64)
}

fn text(raw: &[u8]) -> &str {
    std::str::from_utf8(raw).expect("fixture is UTF-8")
}

// ---- /proc -------------------------------------------------------------------------------------

fn procfs(c: &mut Criterion) {
    let mut g = c.benchmark_group("procfs");
    let stat = fixture!("hosts/pve-basic/proc/1100/stat");
    let status = fixture!("hosts/pve-basic/proc/1100/status");
    let io = fixture!("hosts/pve-basic/proc/1100/io");
    let schedstat = fixture!("hosts/pve-kvmstat/proc/1200/task/1204/schedstat");
    let comm = fixture!("hosts/pve-kvmstat/proc/1200/task/1204/comm");
    let meminfo = fixture!("hosts/pve-basic/proc/meminfo");

    // Each input parses (a benchmark of the error path would mislead).
    process::parse_stat(stat, 100).expect("stat fixture parses");
    process::parse_io(io).expect("io fixture parses");
    process::parse_memtotal(meminfo).expect("meminfo fixture parses");
    process::parse_schedstat(text(schedstat)).expect("schedstat fixture parses");
    process::vcpu_index(text(comm).trim_end_matches('\n')).expect("comm fixture is a vCPU thread");
    assert!(!process::parse_status(text(status)).memory.is_empty(), "status fixture has memory lines");

    g.throughput(bytes(stat.len()));
    g.bench_function("stat", |b| b.iter(|| process::parse_stat(black_box(stat), 100)));
    g.throughput(bytes(status.len()));
    let status_text = text(status);
    g.bench_function("status", |b| b.iter(|| process::parse_status(black_box(status_text))));
    g.throughput(bytes(io.len()));
    g.bench_function("io", |b| b.iter(|| process::parse_io(black_box(io))));
    g.throughput(bytes(schedstat.len()));
    let schedstat_text = text(schedstat);
    g.bench_function("schedstat", |b| b.iter(|| process::parse_schedstat(black_box(schedstat_text))));
    g.throughput(bytes(comm.len()));
    let comm_text = text(comm).trim_end_matches('\n');
    g.bench_function("vcpu_comm", |b| b.iter(|| process::vcpu_index(black_box(comm_text))));
    g.throughput(bytes(meminfo.len()));
    g.bench_function("meminfo", |b| b.iter(|| process::parse_memtotal(black_box(meminfo))));

    // /proc/<pid>/cmdline: NUL split, then the QEMU options (what discovery does per process).
    let cmdlines: [(&str, &[u8]); 3] = [
        ("pve", fixture!("hosts/pve-basic/proc/1100/cmdline")),
        ("libvirt", fixture!("hosts/libvirt-nova/proc/2100/cmdline")),
        ("plain-qemu", fixture!("hosts/plain-qemu/proc/3100/cmdline")),
    ];
    for (what, raw) in cmdlines {
        assert!(
            !process::parse_qemu_cmdline(&process::parse_cmdline(raw)).name.is_empty(),
            "{what}: cmdline has -name"
        );
        g.throughput(bytes(raw.len()));
        g.bench_with_input(BenchmarkId::new("qemu_cmdline", what), raw, |b, raw| {
            b.iter(|| process::parse_qemu_cmdline(&process::parse_cmdline(black_box(raw))))
        });
    }
    g.finish();
}

/// The PSI files of one VM's cgroup (cpu, memory, io), and the node status files.
fn node_and_pressure(c: &mut Criterion) {
    let mut g = c.benchmark_group("pressure");
    let files = [
        fixture_str!("hosts/pve-cluster/sys/fs/cgroup/qemu.slice/100.scope/cpu.pressure"),
        fixture_str!("hosts/pve-cluster/sys/fs/cgroup/qemu.slice/100.scope/memory.pressure"),
        fixture_str!("hosts/pve-cluster/sys/fs/cgroup/qemu.slice/100.scope/io.pressure"),
    ];
    for f in files {
        pressure::parse_pressure(f).expect("pressure fixture parses");
    }
    g.throughput(bytes(files.iter().map(|f| f.len()).sum()));
    g.bench_function("vm_scope_3_files", |b| {
        b.iter(|| files.map(|f| pressure::parse_pressure(black_box(f)).map(|p| pressure::ratios(&p))))
    });
    g.finish();

    let mut g = c.benchmark_group("node");
    let loadavg = fixture_str!("hosts/pve-cluster/proc/loadavg");
    node::parse_loadavg(loadavg).expect("loadavg fixture parses");
    g.throughput(bytes(loadavg.len()));
    g.bench_function("loadavg", |b| b.iter(|| node::parse_loadavg(black_box(loadavg))));
    let meminfo = fixture!("hosts/pve-cluster/proc/meminfo");
    node::swap_from_meminfo(meminfo).expect("meminfo fixture parses");
    g.throughput(bytes(meminfo.len()));
    g.bench_function("meminfo_swap", |b| b.iter(|| node::swap_from_meminfo(black_box(meminfo))));
    g.finish();
}

/// Every stat file of one VM's KVM debugfs directory, parsed one by one (procfs mode reads them
/// per VM and scrape).
fn kvm_debugfs(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hosts/pve-kvmstat/sys/kernel/debug/kvm/1200-14");
    let listing = kvm_debugfs::list_dir(&dir).expect("listing the debugfs fixture");
    let files: Vec<String> = listing
        .stats
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n)).expect("reading a debugfs fixture file"))
        .collect();
    let numbers = files.iter().filter_map(|f| kvm_debugfs::parse_stat_value(f)).count();
    assert!(numbers + 1 >= files.len(), "debugfs fixture files are numbers (but mmu_rmaps_stat)");
    let mut g = c.benchmark_group("kvm_debugfs");
    g.throughput(bytes(files.iter().map(String::len).sum()));
    g.bench_function(BenchmarkId::new("stat_values", format!("{}_files", files.len())), |b| {
        b.iter(|| files.iter().filter_map(|f| kvm_debugfs::parse_stat_value(black_box(f))).count())
    });
    g.finish();
}

// ---- QEMU monitor ------------------------------------------------------------------------------

fn monitor(c: &mut Criterion) {
    let mut g = c.benchmark_group("hmp");
    let network = fixture_str!("qemu/info-network.txt");
    let block = fixture_str!("qemu/info-block.txt");
    let blockstats = fixture_str!("qemu/info-blockstats.txt");
    assert!(!hmp::parse_info_network(network).is_empty(), "info network fixture has NICs");
    assert!(!hmp::parse_info_block(block).is_empty(), "info block fixture has drives");
    assert!(!hmp::parse_info_blockstats(blockstats).is_empty(), "info blockstats fixture has rows");
    g.throughput(bytes(network.len()));
    g.bench_function("info_network", |b| b.iter(|| hmp::parse_info_network(black_box(network))));
    g.throughput(bytes(block.len()));
    g.bench_function("info_block", |b| b.iter(|| hmp::parse_info_block(black_box(block))));
    g.throughput(bytes(blockstats.len()));
    g.bench_function("info_blockstats", |b| b.iter(|| hmp::parse_info_blockstats(black_box(blockstats))));
    g.finish();

    // QMP replies as QEMU sends them: one compact JSON line (the fixtures are pretty-printed).
    // Decoding is what the scrape's QMP path (`qmp::exchange_many`) and the collector do: parse
    // the line's envelope keeping `return` as raw JSON text, then the rows from that text.
    let compact = |pretty: &str| {
        let v: serde_json::Value = serde_json::from_str(pretty).expect("QMP fixture is JSON");
        serde_json::to_vec(&v).expect("re-encoding JSON")
    };
    let blockstats = compact(fixture_str!("qemu/query-blockstats.json"));
    let block = compact(fixture_str!("qemu/query-block.json"));
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, rename = "return")]
        ret: &'a serde_json::value::RawValue,
    }
    let decode = |line: &[u8]| -> String {
        let m: Envelope<'_> = serde_json::from_slice(line).expect("QMP line is JSON");
        m.ret.get().to_string()
    };
    assert!(!qmp::blockstats_rows(&decode(&blockstats)).is_empty(), "query-blockstats fixture has rows");
    assert!(!qmp::virtual_sizes(&decode(&block)).is_empty(), "query-block fixture has drives");
    let mut g = c.benchmark_group("qmp");
    g.throughput(bytes(blockstats.len()));
    g.bench_function("query_blockstats", |b| b.iter(|| qmp::blockstats_rows(&decode(black_box(&blockstats)))));
    g.throughput(bytes(block.len()));
    g.bench_function("query_block", |b| b.iter(|| qmp::virtual_sizes(&decode(black_box(&block)))));
    g.finish();
}

// ---- /etc/pve and storage tools ----------------------------------------------------------------

fn pve_files(c: &mut Criterion) {
    let mut g = c.benchmark_group("storage_cfg");
    let cfg = fixture_str!("hosts/pve-storage/etc/pve/storage.cfg");
    assert!(storage_cfg::parse_storage_cfg(cfg).storages.len() > 10, "storage.cfg fixture has storages");
    g.throughput(bytes(cfg.len()));
    g.bench_function("parse", |b| b.iter(|| storage_cfg::parse_storage_cfg(black_box(cfg))));
    g.finish();

    let mut g = c.benchmark_group("pve_config");
    let user_cfg = fixture_str!("hosts/pve-basic/etc/pve/user.cfg");
    assert!(!config::parse_user_cfg_pools(user_cfg).is_empty(), "user.cfg fixture has pools");
    g.throughput(bytes(user_cfg.len()));
    g.bench_function("user_cfg_pools", |b| b.iter(|| config::parse_user_cfg_pools(black_box(user_cfg))));
    // The fixture's user.cfg has 3 pooled VMs; a node of 100 VMs in 10 pools, same format.
    let big: String = (0..10)
        .map(|p| {
            let vms: Vec<String> = (0..10).map(|v| (100 + p * 10 + v).to_string()).collect();
            format!("pool:team{p}/prod:Team {p} production:{}:local-zfs:\n\n", vms.join(","))
        })
        .collect();
    let big = format!("{user_cfg}\n{big}");
    assert!(config::parse_user_cfg_pools(&big).len() >= 100, "generated user.cfg has 100 VMs");
    g.throughput(bytes(big.len()));
    g.bench_function(BenchmarkId::new("user_cfg_pools", "100_vms"), |b| {
        b.iter(|| config::parse_user_cfg_pools(black_box(&big)))
    });
    // The qemu-server/ listing of 100 VMs (names are owned Strings, as read_dir yields them).
    let names: Vec<String> = (100..200).map(|v| format!("{v}.conf")).collect();
    g.throughput(bytes(names.iter().map(String::len).sum()));
    g.bench_function(BenchmarkId::new("vmids_from_listing", "100_vms"), |b| {
        b.iter_batched(|| names.clone(), |n| config::vmids_from_listing(black_box(n)), BatchSize::SmallInput)
    });
    g.finish();

    let mut g = c.benchmark_group("pve_ha");
    let manager = fixture_str!("hosts/pve-cluster/etc/pve/ha/manager_status");
    let lrm = fixture_str!("hosts/pve-cluster/etc/pve/nodes/pve1/lrm_status");
    let resources = fixture_str!("hosts/pve-cluster/etc/pve/ha/resources.cfg");
    ha::parse_manager_status(manager).expect("manager_status fixture parses");
    ha::parse_lrm_status(lrm).expect("lrm_status fixture parses");
    assert!(!ha::parse_resources_cfg(resources).is_empty(), "resources.cfg fixture has resources");
    g.throughput(bytes(manager.len()));
    g.bench_function("manager_status", |b| b.iter(|| ha::parse_manager_status(black_box(manager))));
    g.throughput(bytes(lrm.len()));
    g.bench_function("lrm_status", |b| b.iter(|| ha::parse_lrm_status(black_box(lrm))));
    g.throughput(bytes(resources.len()));
    g.bench_function("resources_cfg", |b| b.iter(|| ha::parse_resources_cfg(black_box(resources))));
    g.finish();

    let mut g = c.benchmark_group("libvirt");
    let nova = fixture_str!("hosts/libvirt-nova/run/libvirt/qemu/instance-0000002a.xml");
    libvirt::parse_domain_xml(nova).expect("domain XML fixture parses");
    g.throughput(bytes(nova.len()));
    g.bench_function("domain_xml", |b| b.iter(|| libvirt::parse_domain_xml(black_box(nova))));
    g.finish();

    let mut g = c.benchmark_group("storage_tools");
    let zfs_get = fixture_str!("commands/pve-storage/zfs-get.out");
    let zpool = fixture_str!("commands/pve-storage/zpool-list.out");
    let vgs = fixture_str!("commands/pve-storage/vgs.json");
    let lvs = fixture_str!("commands/pve-storage/lvs.json");
    assert!(!zfs::parse_zfs_get(zfs_get).is_empty(), "zfs get fixture has datasets");
    assert!(!zfs::parse_zpool_list(zpool).is_empty(), "zpool list fixture has pools");
    assert!(!lvm::parse_vgs_json(vgs).expect("vgs fixture parses").is_empty(), "vgs fixture has VGs");
    assert!(!lvm::parse_lvs_json(lvs).expect("lvs fixture parses").is_empty(), "lvs fixture has LVs");
    g.throughput(bytes(zfs_get.len()));
    g.bench_function("zfs_get", |b| b.iter(|| zfs::parse_zfs_get(black_box(zfs_get))));
    g.throughput(bytes(zpool.len()));
    g.bench_function("zpool_list", |b| b.iter(|| zfs::parse_zpool_list(black_box(zpool))));
    g.throughput(bytes(vgs.len()));
    g.bench_function("vgs_json", |b| b.iter(|| lvm::parse_vgs_json(black_box(vgs))));
    g.throughput(bytes(lvs.len()));
    g.bench_function("lvs_json", |b| b.iter(|| lvm::parse_lvs_json(black_box(lvs))));
    g.finish();
}

// ---- tracefs -----------------------------------------------------------------------------------

fn tracefs(c: &mut Criterion) {
    let mut g = c.benchmark_group("tracefs");
    let formats = [
        ("kvm_exit", fixture_str!("tracepoints/kvm_kvm_exit.format")),
        ("kvm_pio", fixture_str!("tracepoints/kvm_kvm_pio.format")),
        ("sched_switch", fixture_str!("tracepoints/sched_sched_switch.format")),
    ];
    for (what, text) in formats {
        tracefs::parse_format(text).expect("format fixture parses");
        g.throughput(bytes(text.len()));
        g.bench_with_input(BenchmarkId::new("format", what), text, |b, text| {
            b.iter(|| tracefs::parse_format(black_box(text)))
        });
    }
    // The exit reason names of kvm_exit's print fmt (VMX and SVM tables).
    let exit = tracefs::parse_format(formats[0].1).expect("kvm_exit format parses");
    assert_eq!(tracefs::print_symbolic_tables(&exit.print_fmt, "exit_reason").len(), 2, "VMX and SVM tables");
    g.throughput(bytes(exit.print_fmt.len()));
    g.bench_function(BenchmarkId::new("print_symbolic", "kvm_exit"), |b| {
        b.iter(|| tracefs::print_symbolic_tables(black_box(&exit.print_fmt), "exit_reason"))
    });
    g.finish();
}

// ---- exposition --------------------------------------------------------------------------------

const VMS: u32 = 100;

/// A scrape's MetricSet shaped like the procfs collector's output for `VMS` VMs (the 33 series per
/// VM of fixtures/golden/pve-basic.prom, memory types from a real status file) plus the
/// exporter's own families.
fn scrape_set() -> MetricSet {
    let status = process::parse_status(fixture_str!("hosts/pve-basic/proc/1100/status"));
    let mut m = MetricSet::new("pve");
    for i in 0..VMS {
        let id = (100 + i).to_string();
        let idl = || [("id", id.clone())];
        m.family(&KVM_INFO).push(
            [
                ("id", id.clone()),
                ("name", format!("vm-{id}-web")),
                ("cpu", "host".to_string()),
                ("pid", (10_000 + i).to_string()),
                ("pool", "production/tier1".to_string()),
                ("pool_levels", "2".to_string()),
                ("pool1", "production".to_string()),
                ("pool2", "tier1".to_string()),
                ("pool3", String::new()),
            ],
            1u64,
        );
        for (mode, v) in [("user", 1234.5), ("system", 567.25), ("iowait", 8.9)] {
            m.family(&KVM_CPU_SECONDS).push([("id", id.clone()), ("mode", mode.to_string())], v * f64::from(i + 1));
        }
        m.family(&KVM_VCORES).push(idl(), 4u64);
        m.family(&KVM_MAXMEM_BYTES).push(idl(), 4_294_967_296u64);
        m.family(&KVM_MEMORY_UTILISATION).push(idl(), 0.78125);
        m.family(&KVM_MEMORY_PERCENT).push(idl(), 5.0);
        for (k, v) in &status.memory {
            m.family(&KVM_MEMORY_EXTENDED).push([("id", id.clone()), ("type", k.to_string())], *v + u64::from(i));
        }
        m.family(&KVM_THREADS).push(idl(), 12u64);
        for (t, v) in [("voluntary", 1_234_567u64), ("involuntary", 8910)] {
            m.family(&KVM_CTX_SWITCHES).push([("id", id.clone()), ("type", t.to_string())], v + u64::from(i));
        }
        for (def, v) in [
            (&KVM_IO_READ_COUNT, 1_500_000u64),
            (&KVM_IO_READ_BYTES, 4_294_967_296),
            (&KVM_IO_READ_CHARS, 5_368_709_120),
            (&KVM_IO_WRITE_COUNT, 750_000),
            (&KVM_IO_WRITE_BYTES, 1_073_741_824),
            (&KVM_IO_WRITE_CHARS, 2_147_483_648),
        ] {
            m.family(def).push(idl(), v + u64::from(i));
        }
    }
    m.family(&EBPF_ENABLED).push(Vec::<(&str, String)>::new(), 0u64);
    m.family(&SCRAPE_DURATION).push(Vec::<(&str, String)>::new(), 0.0123);
    m
}

fn exposition(c: &mut Criterion) {
    let set = Arc::new(scrape_set());
    let series: usize = set.families().iter().map(|f| f.samples.len()).sum();
    let text = exposition::render(set.clone(), Format::Text);
    let om = exposition::render(set.clone(), Format::OpenMetrics);
    let mut g = c.benchmark_group("exposition");
    g.throughput(bytes(text.len()));
    g.bench_function(BenchmarkId::new("text_0.0.4", format!("{VMS}_vms_{series}_series")), |b| {
        b.iter(|| exposition::render(black_box(set.clone()), Format::Text))
    });
    g.throughput(bytes(om.len()));
    g.bench_function(BenchmarkId::new("openmetrics", format!("{VMS}_vms_{series}_series")), |b| {
        b.iter(|| exposition::render(black_box(set.clone()), Format::OpenMetrics))
    });
    g.throughput(Throughput::Elements(series as u64));
    g.bench_function(BenchmarkId::new("build_metric_set", format!("{VMS}_vms_{series}_series")), |b| {
        b.iter(scrape_set)
    });
    g.finish();
}

criterion_group!(benches, procfs, node_and_pressure, kvm_debugfs, monitor, pve_files, tracefs, exposition);
criterion_main!(benches);
