//! Whole scrapes of the fixture host trees in `fixtures/hosts/` (see the README there), through
//! the library API: `Config` -> `Engine::collect` -> `exposition::render`, no HTTP server.
//!
//! Golden files: `fixtures/golden/pve-basic.prom` (Prometheus text 0.0.4) and
//! `fixtures/golden/pve-basic.om` (OpenMetrics) hold the complete /metrics output of the
//! `pve-basic` tree. Before comparing, the value of every sample whose name ends in
//! `_duration_seconds` is replaced with `0` (timings vary), and the `ebpf_programs` label of
//! `*_exporter_build_info` is set to `absent` (it depends on the `ebpf` cargo feature; the
//! targeted test checks its real value).
//!
//! After an intended change of the output, regenerate the golden files with
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p pve-exporter --no-default-features --test fixtures
//! ```
//!
//! and review the diff of `fixtures/golden/` before committing it. The targeted tests below do
//! not depend on the golden files, so a wrong golden file cannot hide a bug they cover.

mod fixture_scrape;

use std::path::Path;

use fixture_scrape::{
    Sample, assert_value, check_golden, copy_tree, describe_diff, parse_sample, samples, series, tree as host_root,
    value,
};
use pve_exporter::exposition::Format;

/// One scrape of the host tree at `root`, rendered in `format`.
fn scrape_root(root: &str, extra_args: &[&str], format: Format) -> String {
    let mut args = vec!["--root", root];
    args.extend_from_slice(extra_args);
    fixture_scrape::scrape(&args, format)
}

fn scrape(fixture: &str, format: Format) -> String {
    scrape_root(&host_root(fixture), &[], format)
}

fn normalize(text: &str) -> String {
    fixture_scrape::normalize(text, |_| false)
}

/// The `id` labels of the samples of `name`, in output order, deduplicated.
fn ids(text: &str, name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in series(text, name, &[]) {
        let id = s.label("id").unwrap_or("").to_string();
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

#[test]
fn golden_pve_basic_text() {
    check_golden(&normalize(&scrape("pve-basic", Format::Text)), "pve-basic.prom");
}

#[test]
fn golden_pve_basic_openmetrics() {
    let om = scrape("pve-basic", Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"), "OpenMetrics output ends in # EOF");
    check_golden(&normalize(&om), "pve-basic.om");
}

// ---------------------------------------------------------------------------------------------
// Targeted assertions on pve-basic.

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

#[test]
fn pve_basic_reports_exactly_the_pve_vms() {
    let t = scrape("pve-basic", Format::Text);
    assert_eq!(ids(&t, "pve_kvm_info"), ["100", "200", "300"], "{t}");
    // Every per-VM family has these VMs and no others.
    for fam in [
        "pve_kvm_cpu_seconds_total",
        "pve_kvm_vcores",
        "pve_kvm_maxmem_bytes",
        "pve_kvm_memory_percent",
        "pve_kvm_memory_extended",
        "pve_kvm_threads",
        "pve_kvm_ctx_switches_total",
        "pve_kvm_io_read_count_total",
        "pve_kvm_io_read_bytes_total",
        "pve_kvm_io_read_chars_total",
        "pve_kvm_io_write_count_total",
        "pve_kvm_io_write_bytes_total",
        "pve_kvm_io_write_chars_total",
    ] {
        assert_eq!(ids(&t, fam), ["100", "200", "300"], "{fam}");
    }
    // VM 400 runs without a config (migrating in); pid 1500 is sshd; pid 1600 is QEMU
    // without -id; pid 2 is a kernel thread.
    for s in samples(&t) {
        assert_ne!(s.label("id"), Some("400"), "{s:?}");
        assert!(!matches!(s.label("pid"), Some("1400" | "1500" | "1600" | "2")), "{s:?}");
    }
    for absent in ["plain-test", "incoming01", "sshd", "staging"] {
        assert!(!t.contains(absent), "{absent:?} in the output:\n{t}");
    }
}

#[test]
fn pve_basic_vm_info_and_pools() {
    let t = scrape("pve-basic", Format::Text);
    let info = |id: &str| {
        let s = series(&t, "pve_kvm_info", &[("id", id)]);
        assert_eq!(s.len(), 1, "kvm_info of {id}");
        assert_eq!(s[0].num(), 1.0);
        s[0].clone()
    };
    let labels = |s: &Sample, keys: &[&str]| -> Vec<String> {
        keys.iter().map(|k| s.label(k).unwrap_or_else(|| panic!("{k} missing in {s:?}")).to_string()).collect()
    };
    let keys = ["name", "cpu", "pid", "pool", "pool_levels", "pool1", "pool2", "pool3"];
    assert_eq!(labels(&info("100"), &keys), ["web01", "host", "1100", "production", "1", "production", "", ""]);
    assert_eq!(
        labels(&info("200"), &keys),
        ["db01", "EPYC-Milan", "1200", "production/tier1/db", "3", "production", "tier1", "db"]
    );
    // VM 300: its binary was replaced by an upgrade (exe reads "... (deleted)"); in no pool.
    assert_eq!(labels(&info("300"), &keys), ["legacy01", "qemu64", "1300", "", "0", "", "", ""]);
}

#[test]
fn pve_basic_values() {
    let t = scrape("pve-basic", Format::Text);
    // CPU: ticks / 100 (utime 123400, stime 56700, delayacct_blkio_ticks 890).
    for (id, user, system, iowait) in
        [("100", 1234.0, 567.0, 8.9), ("200", 2500.0, 750.0, 12.5), ("300", 42.0, 18.0, 0.05)]
    {
        let cpu = |mode| value(&t, "pve_kvm_cpu_seconds_total", &[("id", id), ("mode", mode)]);
        assert_eq!((cpu("user"), cpu("system"), cpu("iowait")), (Some(user), Some(system), Some(iowait)), "VM {id}");
    }
    // -smp first field; -m in MiB; VM 200: the two NUMA memory backends, 4096M each.
    for (id, vcores, maxmem) in [("100", 4.0, 4.0 * GIB), ("200", 4.0, 8192.0 * MIB), ("300", 2.0, 2.0 * GIB)] {
        assert_value(&t, "pve_kvm_vcores", &[("id", id)], vcores);
        assert_value(&t, "pve_kvm_maxmem_bytes", &[("id", id)], maxmem);
    }
    assert_value(&t, "pve_kvm_maxmem_bytes", &[("id", "200")], 8_589_934_592.0);
    // VmRSS / MemTotal (65536000 kB) * 100.
    for (id, pct) in [("100", 5.0), ("200", 10.0), ("300", 2.5)] {
        assert_value(&t, "pve_kvm_memory_percent", &[("id", id)], pct);
    }
    // /proc/<pid>/status in bytes, type lowercased without the colon.
    let mem = series(&t, "pve_kvm_memory_extended", &[("id", "100")]);
    let types: Vec<&str> = mem.iter().map(|s| s.label("type").unwrap()).collect();
    assert_eq!(
        types,
        [
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
            "hugetlbpages"
        ]
    );
    for s in series(&t, "pve_kvm_memory_extended", &[]) {
        assert!(!s.label("type").unwrap().contains(':'), "{s:?}");
    }
    assert_value(&t, "pve_kvm_memory_extended", &[("id", "100"), ("type", "vmrss")], 3_276_800.0 * 1024.0);
    assert_value(&t, "pve_kvm_memory_extended", &[("id", "100"), ("type", "vmpeak")], 5_632_000.0 * 1024.0);
    assert_value(&t, "pve_kvm_memory_extended", &[("id", "300"), ("type", "vmswap")], 10_240.0 * 1024.0);
    // Threads and context switches from status.
    for (id, threads, vol, invol) in
        [("100", 12.0, 1_234_567.0, 8_910.0), ("200", 14.0, 2_345_678.0, 12_345.0), ("300", 8.0, 34_567.0, 890.0)]
    {
        assert_value(&t, "pve_kvm_threads", &[("id", id)], threads);
        assert_value(&t, "pve_kvm_ctx_switches_total", &[("id", id), ("type", "voluntary")], vol);
        assert_value(&t, "pve_kvm_ctx_switches_total", &[("id", id), ("type", "involuntary")], invol);
    }
    // /proc/<pid>/io of VM 100.
    for (fam, v) in [
        ("pve_kvm_io_read_count_total", 1_500_000.0),
        ("pve_kvm_io_read_bytes_total", 4.0 * GIB),
        ("pve_kvm_io_read_chars_total", 5.0 * GIB),
        ("pve_kvm_io_write_count_total", 750_000.0),
        ("pve_kvm_io_write_bytes_total", 1.0 * GIB),
        ("pve_kvm_io_write_chars_total", 2.0 * GIB),
    ] {
        assert_value(&t, fam, &[("id", "100")], v);
    }
}

#[test]
fn pve_basic_self_metrics() {
    let t = scrape("pve-basic", Format::Text);
    assert!(t.contains("\npve_exporter_collector_success{collector=\"kvm\"} 1\n"), "{t}");
    assert_value(&t, "pve_exporter_collector_success", &[("collector", "pve_config")], 1.0);
    assert_value(&t, "pve_exporter_ebpf_enabled", &[], 0.0);
    assert_value(&t, "pve_exporter_ebpf_info", &[("mode", "procfs"), ("reason", "disabled by --ebpf off")], 1.0);
    let built = if pve_exporter::sources::kernel::ebpf::EBPF_OBJECT.is_some() { "built" } else { "absent" };
    assert_value(
        &t,
        "pve_exporter_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("ebpf_programs", built)],
        1.0,
    );
    for name in ["pve_scrape_duration_seconds", "pve_exporter_collector_duration_seconds"] {
        let s = series(&t, name, &[]);
        assert!(!s.is_empty(), "{name} missing");
        for s in s {
            assert!(s.num() >= 0.0 && s.num() < 60.0, "{s:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pve-broken: one bad VM must not take the others down.

/// The lines of `text` that carry `id="<id>"`, other than kvm_info (pools differ per tree) and
/// the `guest` collector's (a guest configured on the node has them, running or not).
fn vm_lines<'a>(text: &'a str, id: &str) -> Vec<&'a str> {
    let needle = format!("id=\"{id}\"");
    text.lines()
        .filter(|l| l.contains(&needle) && !l.starts_with("pve_kvm_info{") && !l.starts_with("pve_guest_"))
        .collect()
}

#[test]
fn pve_broken_isolates_failures() {
    let t = scrape("pve-broken", Format::Text);

    // VM 100 is intact: the same series and values as in pve-basic.
    let basic = scrape("pve-basic", Format::Text);
    let (got, want) = (vm_lines(&t, "100"), vm_lines(&basic, "100"));
    assert_eq!(got, want, "VM 100 in pve-broken vs pve-basic");
    // ... and pve_kvm_agent_up (agent: 1, no socket in a fixture tree).
    assert_eq!(want.len(), 3 + 1 + 1 + 1 + 1 + 16 + 1 + 2 + 6 + 1);
    let info = series(&t, "pve_kvm_info", &[("id", "100")]);
    assert_eq!(info.len(), 1);
    // The one valid pool line among the garbage of user.cfg.
    assert_eq!(info[0].label("pool"), Some("lab"));

    // VM 101: stat is garbage -> no CPU series; status and io are fine.
    assert!(series(&t, "pve_kvm_cpu_seconds_total", &[("id", "101")]).is_empty(), "{t}");
    let info = series(&t, "pve_kvm_info", &[("id", "101")]);
    assert_eq!(info.len(), 1, "VM 101 is reported");
    assert_eq!(info[0].label("pool"), Some("lab"));
    assert_eq!(info[0].label("name"), Some("broken-stat"));
    assert_value(&t, "pve_kvm_threads", &[("id", "101")], 6.0);
    assert_value(&t, "pve_kvm_memory_extended", &[("id", "101"), ("type", "vmrss")], 1_048_576.0 * 1024.0);
    assert_value(&t, "pve_kvm_memory_percent", &[("id", "101")], 1.6);
    assert_value(&t, "pve_kvm_ctx_switches_total", &[("id", "101"), ("type", "voluntary")], 11_111.0);
    assert_value(&t, "pve_kvm_io_read_bytes_total", &[("id", "101")], 268_435_456.0);
    assert_value(&t, "pve_kvm_vcores", &[("id", "101")], 2.0);

    // VM 102 has no io file: no io series.
    for s in samples(&t) {
        if s.name.starts_with("pve_kvm_io_") {
            assert_ne!(s.label("id"), Some("102"), "{s:?}");
        }
    }

    // VM 103 vanished (cmdline, no stat): gone without a trace.
    assert!(vm_lines(&t, "103").is_empty(), "{t}");
    assert!(series(&t, "pve_kvm_info", &[("id", "103")]).is_empty());
    // Its config stays: a stopped guest named "vanished", and nothing of a process.
    assert!(
        t.lines()
            .filter(|l| l.contains("vanished"))
            .all(|l| l.starts_with("pve_guest_config_info{") || l.starts_with("pve_guest_info{")),
        "{t}"
    );
    assert_value(&t, "pve_guest_up", &[("id", "103"), ("type", "qemu")], 0.0);

    // The unparseable stat is a failure of the kvm collector; /etc/pve read fine.
    assert_value(&t, "pve_exporter_collector_success", &[("collector", "kvm")], 0.0);
    assert_value(&t, "pve_exporter_collector_success", &[("collector", "pve_config")], 1.0);
}

/// VM 102 of pve-broken: its process is alive (stat is readable) but it has no `io` file and
/// half a `status` (it ends at VmExe). Expected: reported with what can be read, without io
/// series, and the kvm collector failing (a missing file of a live process is not "gone").
#[test]
fn pve_broken_vm_without_io_is_still_reported() {
    let t = scrape("pve-broken", Format::Text);
    let info = series(&t, "pve_kvm_info", &[("id", "102")]);
    assert_eq!(info.len(), 1, "VM 102 is reported:\n{t}");
    assert_eq!(info[0].label("name"), Some("no-io"));
    // stat is fine.
    assert_value(&t, "pve_kvm_cpu_seconds_total", &[("id", "102"), ("mode", "user")], 60.0);
    // The half status still has the Vm* lines up to VmExe, but no Threads line: the thread
    // count comes from stat; no context switches.
    assert_value(&t, "pve_kvm_memory_extended", &[("id", "102"), ("type", "vmrss")], 1_048_576.0 * 1024.0);
    assert_value(&t, "pve_kvm_threads", &[("id", "102")], 6.0);
    assert!(series(&t, "pve_kvm_ctx_switches_total", &[("id", "102")]).is_empty());
    assert!(vm_lines(&t, "102").iter().all(|l| !l.starts_with("pve_kvm_io_")));
}

// ---------------------------------------------------------------------------------------------
// Variations built from pve-basic in a temporary directory.

#[test]
fn vm_that_exits_mid_scrape_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(Path::new(&host_root("pve-basic")), dir.path());
    // VM 300 exited after /proc was listed: its cmdline was read, the rest is gone.
    for f in ["stat", "status", "io"] {
        std::fs::remove_file(dir.path().join("proc/1300").join(f)).unwrap();
    }
    let t = scrape_root(dir.path().to_str().unwrap(), &[], Format::Text);
    assert_eq!(ids(&t, "pve_kvm_info"), ["100", "200"], "{t}");
    assert!(vm_lines(&t, "300").is_empty(), "{t}");
    assert_value(&t, "pve_exporter_collector_success", &[("collector", "kvm")], 1.0);
    // Its config is still there: a stopped guest, not a failure.
    assert_value(&t, "pve_guest_up", &[("id", "300"), ("type", "qemu")], 0.0);
    assert_value(&t, "pve_exporter_collector_success", &[("collector", "guest")], 1.0);
}

// ---------------------------------------------------------------------------------------------
// --metrics-prefix

#[test]
fn metrics_prefix_renames_every_family() {
    let root = host_root("pve-basic");
    for format in [Format::Text, Format::OpenMetrics] {
        let renamed = scrape_root(&root, &["--metrics-prefix", "pvex"], format);
        for line in renamed.lines() {
            assert!(!line.starts_with("pve_"), "{line}");
            if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
                assert!(rest.starts_with("pvex_"), "{line}");
            } else if line != "# EOF" {
                assert!(line.starts_with("pvex_"), "{line}");
            }
        }
        // Nothing else changes: the default output with its names renamed is the same.
        let default = normalize(&scrape_root(&root, &[], format));
        let expected: String = default
            .lines()
            .map(|l| {
                for p in ["# HELP ", "# TYPE ", ""] {
                    if let Some(rest) = l.strip_prefix(p).and_then(|r| r.strip_prefix("pve_")) {
                        return format!("{p}pvex_{rest}\n");
                    }
                }
                format!("{l}\n")
            })
            .collect();
        let got = normalize(&renamed);
        assert!(expected == got, "{format:?}:\n{}", describe_diff(&expected, &got));
    }
}

// ---------------------------------------------------------------------------------------------
// The helpers themselves.

#[test]
fn sample_parser() {
    let s = parse_sample(r#"pve_x{a="1",b="with \"quotes\", commas and } braces",c=""} 2.5"#).unwrap();
    assert_eq!(s.name, "pve_x");
    assert_eq!(
        s.labels,
        [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "with \"quotes\", commas and } braces".to_string()),
            ("c".to_string(), String::new()),
        ]
    );
    assert_eq!(s.num(), 2.5);
    let s = parse_sample("pve_up 1").unwrap();
    assert!(s.labels.is_empty());
    assert_eq!(s.value, "1");
    assert!(parse_sample("# HELP pve_up x").is_none());
    assert!(s.matches("pve_up", &[]));
    assert_eq!(
        normalize("a_duration_seconds{x=\"a b\"} 0.123\nb_duration_seconds 5\nc 1\n"),
        "a_duration_seconds{x=\"a b\"} 0\nb_duration_seconds 0\nc 1\n"
    );
}

/// Guests and containers from bad input: a config with malformed lines and unknown keys, a
/// `.vmlist` entry of an unknown type, a config that cannot be read, a container whose
/// `memory.current` cannot be read. Each costs what it concerns; the scrape answers.
#[test]
fn bad_guest_configs_vmlist_and_cgroup_files_cost_only_their_own_series() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    copy_tree(Path::new(&host_root("pve-basic")), r);
    let w = |rel: &str, text: &str| {
        let p = r.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("proc/sys/kernel/hostname", "pve1\n");
    // Malformed lines, unknown keys, a snapshot without snaptime, garbage bytes.
    w(
        "etc/pve/lxc/700.conf",
        "hostname: ok-ct\nthis is no key value\nfuture-key: 42\nmemory: lots\ncores: 2\n\u{0}\u{7f}: x\n\
         rootfs: local:700/vm-700-disk-0.raw,size=8G\n[snap]\nparent: x\n",
    );
    // Another node's guest, an unknown type, a guest whose config is a directory (EISDIR).
    w(
        "etc/pve/.vmlist",
        "{\n\"version\": 9,\n\"ids\": {\n\"100\": { \"node\": \"pve1\", \"type\": \"qemu\", \"version\": 1 },\n\
         \"200\": { \"node\": \"pve1\", \"type\": \"qemu\", \"version\": 1 },\n\
         \"300\": { \"node\": \"pve1\", \"type\": \"qemu\", \"version\": 1 },\n\
         \"700\": { \"node\": \"pve1\", \"type\": \"lxc\", \"version\": 1 },\n\
         \"701\": { \"node\": \"pve1\", \"type\": \"lxc\", \"version\": 1 },\n\
         \"800\": { \"node\": \"pve1\", \"type\": \"openvz\", \"version\": 1 },\n\
         \"900\": { \"node\": \"pve2\", \"type\": \"qemu\", \"version\": 1 }}\n\n}\n",
    );
    std::fs::create_dir_all(r.join("etc/pve/lxc/701.conf")).unwrap();
    // Container 700 runs: cgroup2 at /sys/fs/cgroup with its controllers, init pid 1700.
    w("proc/self/mountinfo", "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
    w("sys/fs/cgroup/cgroup.controllers", "cpu io memory pids\n");
    w("sys/fs/cgroup/lxc/700/cpu.stat", "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n");
    w("sys/fs/cgroup/lxc/700/memory.stat", "anon 1048576\nfile 4096\n");
    w("sys/fs/cgroup/lxc/700/pids.current", "3\n");
    std::fs::create_dir_all(r.join("sys/fs/cgroup/lxc/700/memory.current")).unwrap();
    w("sys/fs/cgroup/lxc/700/ns/cgroup.procs", "1700\n");
    w("proc/1700/status", "Name:\tinit\nNSpid:\t1700\t1\n");
    let t = scrape_root(r.to_str().unwrap(), &["--collector.ppe"], Format::Text);

    // The readable guests are all there; the unreadable config is the guest collector's error.
    for (id, ty) in [("100", "qemu"), ("200", "qemu"), ("300", "qemu"), ("700", "lxc")] {
        assert!(!series(&t, "pve_guest_config_info", &[("id", id), ("type", ty)]).is_empty(), "{id}\n{t}");
    }
    assert_value(&t, "pve_guest_memory_bytes", &[("id", "700")], 512.0 * 1024.0 * 1024.0);
    assert_value(&t, "pve_guest_cpus", &[("id", "700")], 2.0);
    assert_value(&t, "pve_guest_snapshots", &[("id", "700")], 1.0);
    assert!(series(&t, "pve_guest_snapshot_newest_timestamp_seconds", &[("id", "700")]).is_empty());
    for gone in ["701", "800", "900"] {
        assert!(series(&t, "pve_guest_config_info", &[("id", gone)]).is_empty(), "{gone}");
    }
    assert_value(&t, "pve_exporter_collector_success", &[("collector", "guest")], 0.0);
    // The container: its other cgroup figures, without the unreadable one.
    assert_value(&t, "pve_lxc_info", &[("id", "700"), ("pid", "1700"), ("name", "ok-ct")], 1.0);
    assert_value(&t, "pve_lxc_cpu_seconds_total", &[("id", "700"), ("mode", "user")], 2.0);
    assert_value(&t, "pve_lxc_processes", &[("id", "700")], 3.0);
    assert_value(&t, "pve_lxc_memory_bytes", &[("id", "700"), ("type", "anon")], 1_048_576.0);
    assert!(series(&t, "pve_lxc_memory_bytes", &[("id", "700"), ("type", "current")]).is_empty());
    assert_value(&t, "pve_exporter_collector_success", &[("collector", "lxc")], 0.0);
    // Everything else is unaffected.
    for c in ["kvm", "ppe"] {
        assert_value(&t, "pve_exporter_collector_success", &[("collector", c)], 1.0);
    }
    assert_value(&t, "pve_guest_up", &[("id", "700"), ("type", "lxc")], 1.0);
}

/// The `guest` collector keeps the lines that follow from the configs between served
/// collections while no file of /etc/pve they come from changed (collector/guest.rs,
/// `ConfigLines`). After each kind of change, the served lines (`collect_until`, what the HTTP
/// side sends) are those a fresh collection writes from its samples (`collect`, which keeps
/// nothing between collections), and show the change.
#[test]
fn kept_guest_lines_follow_every_change_of_etc_pve() {
    use std::{sync::Arc, time::Duration};

    use pve_exporter::{collector::Engine, config::Config, deadline::Deadline, exposition};
    const KEPT: [&str; 14] = [
        "pve_guest_config_info",
        "pve_guest_template",
        "pve_guest_onboot",
        "pve_guest_startup_order",
        "pve_guest_protection",
        "pve_guest_lock",
        "pve_guest_ha_state",
        "pve_guest_cpus",
        "pve_guest_memory_bytes",
        "pve_guest_balloon_min_bytes",
        "pve_guest_swap_bytes",
        "pve_guest_disk_size_bytes",
        "pve_guest_snapshots",
        "pve_guest_snapshot_newest_timestamp_seconds",
    ];
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&Path::new(fixture_scrape::FIXTURES).join("hosts/pve-backup"), dir.path());
    let p = dir.path().join("etc/pve");
    let root = dir.path().to_str().unwrap();
    let engine = Engine::new(Config::from_args(["pve-exporter", "--ebpf", "off", "--root", root]).unwrap()).unwrap();
    let kept = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| KEPT.iter().any(|k| l.strip_prefix(k).is_some_and(|r| r.starts_with('{'))))
            .map(String::from)
            .collect()
    };
    let served =
        || kept(&exposition::render(engine.collect_until(Deadline::after(Duration::from_secs(10))), Format::Text));
    // Served twice (the second from the kept lines), and as a fresh collection writes them.
    let check = |what: &str| -> String {
        let (first, second) = (served(), served());
        let fresh = kept(&exposition::render(Arc::new(engine.collect()), Format::Text));
        assert_eq!(first, fresh, "{what}: served after the change");
        assert_eq!(second, fresh, "{what}: served from the kept lines");
        first.join("\n")
    };
    let t = check("unchanged");
    assert!(t.contains(r#"pve_guest_memory_bytes{id="100",type="qemu"} 4294967296"#), "{t}");
    assert!(t.contains(r#"pve_guest_config_info{id="103",type="qemu""#), "{t}");

    // A config edited in place (as pmxcfs writes): more memory and a lock.
    let conf = p.join("qemu-server/100.conf");
    let text = std::fs::read_to_string(&conf).unwrap().replace("memory: 4096", "memory: 8192");
    std::fs::write(&conf, format!("lock: backup\n{text}")).unwrap();
    let t = check("a config edited");
    assert!(t.contains(r#"pve_guest_memory_bytes{id="100",type="qemu"} 8589934592"#), "{t}");
    assert!(t.contains(r#"pve_guest_lock{id="100",type="qemu",lock="backup"} 1"#), "{t}");

    // A guest moved to another pool (user.cfg).
    let users = p.join("user.cfg");
    let text = std::fs::read_to_string(&users)
        .unwrap()
        .replace(":100,105,200::", ":105,200::")
        .replace(":103,104::", ":100,103,104::");
    std::fs::write(&users, text).unwrap();
    let t = check("user.cfg's pools changed");
    assert!(
        t.contains(
            r#"pve_guest_config_info{id="100",type="qemu",name="web01",node="pve1",ostype="l26",tags="",pool="lab""#
        ),
        "{t}"
    );

    // HA takes a guest (ha/manager_status).
    std::fs::create_dir_all(p.join("ha")).unwrap();
    std::fs::write(
        p.join("ha/manager_status"),
        r#"{"master_node":"pve1","node_status":{"pve1":"online"},"service_status":{"vm:101":{"node":"pve1","state":"started","uid":"x"}}}"#,
    )
    .unwrap();
    let t = check("HA manages a guest");
    assert!(t.contains(r#"pve_guest_ha_state{id="101",type="qemu",state="started"} 1"#), "{t}");

    // A guest gone from this node's list (.vmlist): moved to pve2.
    let vmlist = p.join(".vmlist");
    let text =
        std::fs::read_to_string(&vmlist).unwrap().replace(r#""103": { "node": "pve1""#, r#""103": { "node": "pve2""#);
    std::fs::write(&vmlist, text).unwrap();
    let t = check("a guest left the node");
    assert!(!t.contains(r#"id="103""#), "{t}");
    assert!(t.contains(r#"id="101""#), "{t}");
}
