//! Secrets and privileges, with the real daemon: it runs with exactly the capability set of
//! the packaged unit (read from packaging/pve-exporter.service) and everything it needs works
//! (eBPF counting a real KVM guest, /proc of a root process, process events); without
//! CAP_NET_ADMIN the process events are missing (what the unit lacked before). The API token
//! reaches none of the programs the daemon runs, and secret files readable by others are named
//! at start. Needs root and /dev/kvm; vmid locks 283-284.

mod common;
mod ops;

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Guest, Proc, host_root, require_privileges, sample};
use ops::{Exporter, curl, free_port};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// `CapabilityBoundingSet=` of the packaged unit.
fn unit_capabilities() -> BTreeSet<String> {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/pve-exporter.service"))
        .expect("unit file");
    let line = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("CapabilityBoundingSet=");
    line.split_whitespace().map(str::to_string).collect()
}

/// `setpriv` arguments that run a program as root with `caps` only, as systemd runs the unit
/// (`User=root`, `CapabilityBoundingSet=`, `NoNewPrivileges=yes`): root's permitted and
/// effective sets after exec are its bounding set, once the inheritable set is empty.
fn setpriv(caps: &BTreeSet<String>) -> Vec<String> {
    let list: Vec<String> =
        caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())).collect();
    vec![
        "setpriv".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set=-all,{}", list.join(",")),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

/// The effective capabilities of `pid` (`CapEff` of its status), as a bit mask.
fn cap_eff(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff").trim();
    u64::from_str_radix(hex, 16).expect("hex")
}

fn cap_bit(name: &str) -> u64 {
    let n = match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("{other}: not a capability this test knows"),
    };
    1 << n
}

/// Start the daemon with `caps` only on a host with one real KVM guest (vmid 283), scrape it,
/// and hand back the scrape and the log.
fn run_with(caps: &BTreeSet<String>, ebpf: &str) -> (String, String) {
    let root = host_root(&[283]);
    let prefix = setpriv(caps);
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let mut e = Exporter::spawn_via(
        &prefix,
        free_port(),
        root.path(),
        &["--ebpf", ebpf],
        &[("PVE_EXPORTER_LOGLEVEL", "DEBUG")],
    );
    e.wait_for_log("ready: first collection", SECS(60));
    let want: u64 = caps.iter().map(|c| cap_bit(c)).sum();
    assert_eq!(cap_eff(e.child.id()), want, "the daemon runs with exactly {caps:?}");
    // Started after the programs are attached: every port write is counted.
    let guest = Guest::start(283, 2, 300, root.path());
    let m = curl(&[&e.url("http", "/metrics")]).body;
    drop(guest);
    (m, e.logs())
}

#[test]
fn the_packaged_capability_set_is_what_the_daemon_needs() {
    require_privileges();
    let caps = unit_capabilities();
    assert!(caps.contains("CAP_NET_ADMIN"), "the process events need CAP_NET_ADMIN: {caps:?}");
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let (m, log) = run_with(&caps, if btf { "on" } else { "auto" });
    // Process events: subscribed with the queue asked for (SO_RCVBUFFORCE), no fallback to
    // reading every cmdline per scrape.
    assert!(log.contains("process events subscribed (queue "), "{log}");
    assert!(!log.contains("process events unavailable") && !log.contains("limited to"), "{log}");
    if btf {
        assert_eq!(sample(&m, "pve_exporter_ebpf_enabled", &[]), Some(1.0), "{m}\n{log}");
        // CAP_BPF + CAP_PERFMON: the programs count the guest's 2 × 300 port writes exactly.
        let pio = sample(&m, "pve_kvm_tracepoint_events_total", &[("id", "283"), ("event", "kvm_pio")]);
        assert_eq!(pio, Some(600.0), "{m}");
    }
    // CAP_SYS_PTRACE: /proc/<pid>/io of a root process with every capability.
    assert!(sample(&m, "pve_kvm_io_read_chars_total", &[("id", "283")]).is_some(), "{m}\n{log}");
    for c in ["kvm", "vcpu"] {
        assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", c)]), Some(1.0), "{c}: {m}\n{log}");
    }

    // The check sees what the unit used to lack: without CAP_NET_ADMIN, kernels before 6.6
    // refuse the subscription, later ones cap its queue at net.core.rmem_max.
    let mut without = caps.clone();
    without.remove("CAP_NET_ADMIN");
    let (m, log) = run_with(&without, "auto");
    assert!(log.contains("process events unavailable") || log.contains("queue is limited to"), "{log}");
    assert!(m.contains("pve_kvm_info{id=\"283\""), "still correct, only slower: {m}");

    // The others are used too. Without CAP_SYS_PTRACE the kernel refuses /proc/<pid>/io of a
    // process with more capabilities than the daemon (QEMU runs as root with all of them).
    let mut without = caps.clone();
    without.remove("CAP_SYS_PTRACE");
    let (m, _) = run_with(&without, "auto");
    assert!(m.contains("pve_kvm_info{id=\"283\""), "{m}");
    assert_eq!(sample(&m, "pve_kvm_io_read_chars_total", &[("id", "283")]), None, "{m}");
    // Without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (which the kernel accepts for both) no
    // BPF program loads: procfs mode.
    if btf {
        let mut without = caps.clone();
        for c in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"] {
            without.remove(c);
        }
        let (m, _) = run_with(&without, "auto");
        assert_eq!(sample(&m, "pve_exporter_ebpf_enabled", &[]), Some(0.0), "{m}");
    }
}

/// Programs that write their environment to `<dir>/env.<name>.<pid>` and fail.
fn env_dumpers(dir: &Path, names: &[&str]) {
    for name in names {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\nenv > \"{}/env.{name}.$$\"\nexit 1\n", dir.display())).expect("script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn the_api_token_reaches_no_child_process() {
    // SAFETY: no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "run the suite as root, as CI does");
    let root = host_root(&[284]);
    let tools = tempfile::tempdir().expect("tempdir");
    env_dumpers(tools.path(), &["zfs", "zpool", "vgs", "lvs", "qm"]);
    std::fs::write(
        root.path().join("etc/pve/storage.cfg"),
        "zfspool: tank\n\tpool tank/data\n\tcontent images\n\nlvm: vg\n\tvgname pvevg\n\tcontent images\n",
    )
    .expect("storage.cfg");
    // A PVE VM for `qm monitor` (root's, vmid with a config).
    let mut vm = Command::new("/bin/sh");
    use std::os::unix::process::CommandExt;
    vm.arg0("/usr/bin/kvm").args(["-c", "read x", "-id", "284", "-name", "tok284"]).stdin(Stdio::piped());
    let mut child = vm.spawn().expect("start the VM stand-in");
    let _stdin = child.stdin.take();
    let _vm = Proc(child);
    let secret = "0b1d3c6e-8f3a-4a5b-9c7d-2e4f6a8b0c1d";
    let token = format!("root@pam!exporter={secret}");
    let qm = tools.path().join("qm");
    let cmds = tools.path().display().to_string();
    let qm_s = qm.display().to_string();
    let e = Exporter::start(
        root.path(),
        &["--ebpf", "off", "--command-path", &cmds, "--qm-mode", "qm", "--qm-path", &qm_s],
        &[("PVE_EXPORTER_API_TOKEN", &token)],
    );
    // The token was read (the API is used: it is configured), then every tool ran.
    let m = curl(&[&e.url("http", "/metrics")]).body;
    assert!(m.contains("pve_kvm_info{id=\"284\""), "{m}");
    let mut ran = BTreeSet::new();
    for entry in std::fs::read_dir(tools.path()).expect("list").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("env.") {
            let env = std::fs::read_to_string(entry.path()).expect("env dump");
            assert!(!env.contains(secret) && !env.contains("PVE_EXPORTER_API_TOKEN"), "{name}:\n{env}");
            ran.insert(rest.split('.').next().unwrap_or("").to_string());
        }
    }
    for tool in ["zfs", "qm"] {
        assert!(ran.contains(tool), "{tool} did not run ({ran:?}):\n{}", e.logs());
    }
    assert!(ran.contains("vgs") || ran.contains("lvs"), "no LVM tool ran ({ran:?}):\n{}", e.logs());
}

#[test]
fn secret_files_readable_by_others_are_named_at_start() {
    let root = ops::plain_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("pve-exporter");
    std::fs::write(&env_file, "PVE_EXPORTER_LOGLEVEL=INFO\n").expect("env file");
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "root@pam!exporter=0b1d3c6e-8f3a-4a5b-9c7d-2e4f6a8b0c1d\n").expect("token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (env_s, token_s) = (env_file.display().to_string(), token_file.display().to_string());
    let e =
        Exporter::start(root.path(), &["--ebpf", "off", "--env-file", &env_s, "--pve-api-token-file", &token_s], &[]);
    let log = e.logs();
    assert!(log.contains(&format!("{env_s} is readable by group or others (mode 0644)")), "{log}");
    assert!(log.contains(&format!("{token_s} is readable by group or others (mode 0640)")), "{log}");
    assert!(!log.contains("0b1d3c6e"), "the secret itself is never logged:\n{log}");
    drop(e);
    // 0600: nothing to say.
    for f in [&env_file, &token_file] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let e =
        Exporter::start(root.path(), &["--ebpf", "off", "--env-file", &env_s, "--pve-api-token-file", &token_s], &[]);
    assert!(!e.logs().contains("by group or others"), "{}", e.logs());
}
