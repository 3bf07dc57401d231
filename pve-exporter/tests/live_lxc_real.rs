//! A real LXC container through the real daemon: Debian's `lxc` (`lxc-create -t busybox`, the
//! template copies the host's busybox, nothing is downloaded) started with the configuration
//! pve-container writes (`lxc.cgroup.dir.container = lxc/<ctid>`, `.inner = ns`, the monitor in
//! `lxc.monitor/<ctid>`, the NIC's host end `veth<ctid>i0`), its root file system a tmpfs of a
//! known size. LXC itself makes the cgroups of every hierarchy, the namespaces and the veth
//! pair; the daemon must find the container, its init and its veth as on a PVE node. What the
//! kernel gives exactly is asserted exactly: the cgroup's memory, pids.current, the veth's
//! counters after a known ping from inside the container, statvfs of the tmpfs. Then
//! `lxc-freeze` (frozen) and `lxc-stop` (its series go, nothing fails). Needs root and the
//! `lxc` and `busybox-static` packages (`cargo xtask setup` installs them).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, collector_success as success, host_root, promtool_accepts, sample, write_below as write};
use pve_exporter::{host::HostRoot, sources::kernel::cgroup::Hierarchies};

const MIB: u64 = 1 << 20;
/// The container's id: no other test uses it (the vmid lock of `host_root` covers the rest).
const CTID: u32 = 975;
/// Root tmpfs, memory limit and swap of the container (the fixture config says the same).
const ROOTFS_MIB: u64 = 48;
const MEMORY_MIB: u64 = 256;
const SWAP_MIB: u64 = 128;
/// The veth's two ends: addresses and ping payload.
const HOST_IP: &str = "10.255.97.1";
const CT_IP: &str = "10.255.97.2";
const CT_MAC: &str = "bc:24:11:00:09:75";
const PINGS: u64 = 3;
const PING_PAYLOAD: u64 = 56;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Root, and Debian's LXC with a static busybox for its template. Missing ones fail the test
/// (a host of this kind has them after `cargo xtask setup`): it must not pass without running.
fn require_lxc() {
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test starts a real LXC container: run it as root");
    for tool in ["lxc-create", "lxc-start", "lxc-stop", "lxc-freeze", "lxc-attach", "busybox", "nsenter", "ip"] {
        assert!(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()),
            "{tool} is missing: this test needs Debian's lxc and busybox-static packages; run `cargo xtask setup` \
             (or `cargo xtask test`, which runs it first)"
        );
    }
    assert!(
        Path::new("/usr/share/lxc/templates/lxc-busybox").is_file(),
        "LXC's busybox template is missing: run `cargo xtask setup` (Debian package lxc)"
    );
}

/// The configuration pve-container's `update_lxc_config` writes for a privileged Debian
/// container (src/PVE/LXC.pm), for LXC >= 4: cgroups `lxc/<ctid>` (limits) and `lxc/<ctid>/ns`
/// (payload), the monitor outside in `lxc.monitor/<ctid>`, memory limits where the host has the
/// memory controller (cgroup2 keys on a unified host; the v1 keys pve-container wrote until
/// 2026 on a hybrid one), the NIC as `veth<ctid>i<N>`. Left out: AppArmor (not on this kernel),
/// the bridge hook `lxcnetaddbr` (the veth stays unbridged so that only the test's packets
/// cross it) and the NIC's `flags = up` (the test brings it up once IPv6 is off on both ends).
/// Added for busybox: its init's halt signal and the template's library bind mounts.
fn pve_config(ct_dir: &Path, h: &Hierarchies) -> String {
    let mut c = format!(
        "lxc.cgroup.relative = 0\n\
         lxc.cgroup.dir.monitor = lxc.monitor/{CTID}\n\
         lxc.cgroup.dir.container = lxc/{CTID}\n\
         lxc.cgroup.dir.container.inner = ns\n\
         lxc.arch = amd64\n\
         lxc.include = /usr/share/lxc/config/common.conf\n\
         lxc.monitor.unshare = 1\n\
         lxc.tty.max = 2\n\
         lxc.environment = TERM=linux\n\
         lxc.uts.name = real-ct\n"
    );
    let (mem, swap) = (MEMORY_MIB * MIB, SWAP_MIB * MIB);
    if h.v2_controllers.iter().any(|c| c == "memory") {
        c += &format!("lxc.cgroup2.memory.max = {mem}\nlxc.cgroup2.memory.swap.max = {swap}\n");
    } else if let Some(m) = h.v1.get("memory") {
        c += &format!("lxc.cgroup.memory.limit_in_bytes = {mem}\n");
        // Only with swap accounting (memsw files); LXC fails on a key the kernel lacks.
        if m.join("memory.memsw.limit_in_bytes").exists() {
            c += &format!("lxc.cgroup.memory.memsw.limit_in_bytes = {}\n", mem + swap);
        }
    }
    c += &format!(
        "lxc.rootfs.path = {}\n\
         lxc.net.0.type = veth\n\
         lxc.net.0.veth.pair = veth{CTID}i0\n\
         lxc.net.0.hwaddr = {CT_MAC}\n\
         lxc.net.0.name = eth0\n\
         lxc.net.0.mtu = 1500\n\
         lxc.signal.halt = SIGUSR1\n",
        ct_dir.join("rootfs").display()
    );
    // The template's read-only bind mounts of the host's libraries: a dynamic busybox (Debian's
    // `busybox` instead of `busybox-static`) needs them; they change nothing the test measures.
    for dir in ["lib", "usr/lib", "lib64", "usr/lib64"] {
        if Path::new("/").join(dir).is_dir() && ct_dir.join("rootfs").join(dir).is_dir() {
            c += &format!("lxc.mount.entry = /{dir} {dir} none ro,bind 0 0\n");
        }
    }
    c
}

/// A real LXC container `CTID` under a private lxcpath, its rootfs a tmpfs mounted there.
/// Dropping it stops the container (killing it if need be) and unmounts the tmpfs, whatever
/// the test did before.
struct LxcCt {
    lxcpath: tempfile::TempDir,
    rootfs: PathBuf,
    mounted: bool,
    pid: u32,
}

impl LxcCt {
    fn lxc(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.args(["-n", &CTID.to_string(), "-P"]).arg(self.lxcpath.path());
        c
    }

    fn create(h: &Hierarchies) -> LxcCt {
        stop_leftover(h);
        for d in h.lxc_dirs() {
            assert!(
                !d.join(CTID.to_string()).exists(),
                "{} exists: a container {CTID} runs on this host; this test needs the id free",
                d.join(CTID.to_string()).display()
            );
        }
        let lxcpath = tempfile::Builder::new().prefix("pve-lxc-").tempdir().expect("tempdir");
        let ct_dir = lxcpath.path().join(CTID.to_string());
        let rootfs = ct_dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).expect("mkdir rootfs");
        let mut ct = LxcCt { lxcpath, rootfs, mounted: false, pid: 0 };
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={ROOTFS_MIB}m,mode=755"), "tmpfs"])
            .arg(&ct.rootfs));
        ct.mounted = true;
        // The template fills the tmpfs (busybox and its links, /etc); its own config is then
        // replaced by pve-container's, as `pct` writes the whole file before every start.
        let init = ct.lxcpath.path().join("create.conf");
        std::fs::write(&init, format!("lxc.rootfs.path = dir:{}\n", ct.rootfs.display())).expect("create.conf");
        run(ct.lxc("lxc-create").args(["-t", "busybox", "-f"]).arg(&init));
        // busybox's rcS starts syslogd (a growing log on the rootfs) and udhcpc (DHCP requests
        // on eth0): neither may change what the test measures.
        std::fs::write(ct.rootfs.join("etc/init.d/rcS"), "#!/bin/sh\n/bin/mount -a\n").expect("rcS");
        std::fs::write(ct_dir.join("config"), pve_config(&ct_dir, h)).expect("config");
        let log = ct.lxcpath.path().join("start.log");
        let st = ct.lxc("lxc-start").args(["-l", "INFO", "-o"]).arg(&log).status().expect("lxc-start");
        assert!(st.success(), "lxc-start {CTID}: {st}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        run(ct.lxc("lxc-wait").args(["-s", "RUNNING", "-t", "30"]));
        ct.pid = run(ct.lxc("lxc-info").arg("-pH")).trim().parse().expect("lxc-info -p: the init's pid");
        ct
    }

    /// Host and container ends of the veth as pve-container's host-managed network would set
    /// them (addresses), IPv6 off on both ends before the link comes up (no router or
    /// neighbour solicitations, no MLD reports) and static neighbours (no ARP): afterwards
    /// only what the test sends crosses the veth.
    fn quiet_network(&self) -> String {
        let host = format!("veth{CTID}i0");
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1").expect("disable_ipv6");
        let host_mac = std::fs::read_to_string(format!("/sys/class/net/{host}/address")).expect("mac");
        run(Command::new("ip").args(["addr", "add", &format!("{HOST_IP}/30"), "dev", &host]));
        run(Command::new("ip").args(["neigh", "replace", CT_IP, "lladdr", CT_MAC, "nud", "permanent", "dev", &host]));
        // The container's netns seen from the host's mount namespace: its /proc/sys/net and
        // the host's `ip`.
        let script = format!(
            "echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 && ip addr add {CT_IP}/30 dev eth0 && \
             ip neigh replace {HOST_IP} lladdr {} nud permanent dev eth0 && ip link set eth0 up",
            host_mac.trim()
        );
        run(Command::new("nsenter").args(["-t", &self.pid.to_string(), "-n", "sh", "-c", &script]));
        common::wait_until_up(&host);
        host
    }

    fn stop(&mut self) {
        run(self.lxc("lxc-stop").args(["-t", "20"]));
    }
}

impl Drop for LxcCt {
    fn drop(&mut self) {
        let running = self
            .lxc("lxc-info")
            .arg("-sH")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() != "STOPPED");
        if running {
            let _ = self.lxc("lxc-unfreeze").output();
            let _ = self.lxc("lxc-stop").arg("-k").output();
        }
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.rootfs).status();
        }
    }
}

/// Stop container `CTID` where a run of this test killed before its guard stopped it left it
/// running (its LXC monitor, `[lxc monitor] <lxcpath> <name>`, names one of our lxcpaths; the
/// vmid lock says no other run of it is under way), and remove its tmpfs and lxcpath.
fn stop_leftover(h: &Hierarchies) {
    let ours = std::env::temp_dir().join("pve-lxc-");
    let Some(lxcpath) = h
        .lxc_dirs()
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.with_file_name(format!("lxc.monitor/{CTID}/cgroup.procs"))).ok())
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .find_map(|c| {
            let rest = c.strip_prefix("[lxc monitor] ")?.trim_end().strip_suffix(&format!(" {CTID}"))?;
            rest.starts_with(ours.to_str()?).then(|| PathBuf::from(rest))
        })
    else {
        return;
    };
    eprintln!("stopping container {CTID} left running by a killed run in {}", lxcpath.display());
    let _ = Command::new("lxc-unfreeze").args(["-n", &CTID.to_string(), "-P"]).arg(&lxcpath).output();
    run(Command::new("lxc-stop").args(["-k", "-n", &CTID.to_string(), "-P"]).arg(&lxcpath));
    let _ = Command::new("umount").arg("-l").arg(lxcpath.join(format!("{CTID}/rootfs"))).status();
    let _ = std::fs::remove_dir_all(&lxcpath);
}

/// A cgroup file of `lxc/<CTID>` in the hierarchy of v1 controller `v1` or, where cgroup2 has
/// controller `v2`, in cgroup2.
fn cgroup_value(h: &Hierarchies, v2: &str, v2_file: &str, v1: &str, v1_file: &str) -> u64 {
    let path = if h.v2_controllers.iter().any(|c| c == v2) {
        h.v2.as_ref().expect("cgroup2").join(format!("lxc/{CTID}/{v2_file}"))
    } else {
        h.v1.get(v1).unwrap_or_else(|| panic!("no {v1} controller")).join(format!("lxc/{CTID}/{v1_file}"))
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim().parse().unwrap_or_else(|_| panic!("{}: {text:?}", path.display()))
}

fn memory_current(h: &Hierarchies) -> u64 {
    cgroup_value(h, "memory", "memory.current", "memory", "memory.usage_in_bytes")
}

/// User CPU time of `lxc/<CTID>` in seconds: cgroup2's `cpu.stat` or v1's `cpuacct.stat`.
fn cpu_user_seconds(h: &Hierarchies) -> f64 {
    if h.v2_controllers.iter().any(|c| c == "cpu") || !h.v1.contains_key("cpuacct") {
        let path = h.v2.as_ref().expect("cgroup2").join(format!("lxc/{CTID}/cpu.stat"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let usec = text.lines().find_map(|l| l.strip_prefix("user_usec ")).expect("user_usec");
        usec.trim().parse::<u64>().expect("number") as f64 / 1e6
    } else {
        let path = h.v1["cpuacct"].join(format!("lxc/{CTID}/cpuacct.stat"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ticks = text.lines().find_map(|l| l.strip_prefix("user ")).expect("user");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ticks.trim().parse::<u64>().expect("number") as f64 / hz as f64
    }
}

fn pids_current(h: &Hierarchies) -> u64 {
    cgroup_value(h, "pids", "pids.current", "pids", "pids.current")
}

/// statvfs of `path`: (size, used) in bytes, as `df` and the daemon compute them.
fn statvfs(path: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs(3) fills the zeroed struct we own from a valid C string.
    let s = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0, "statvfs {}", path.display());
        s
    };
    (s.f_blocks * s.f_frsize, (s.f_blocks - s.f_bfree) * s.f_frsize)
}

fn veth_counter(ifname: &str, name: &str) -> f64 {
    let p = format!("/sys/class/net/{ifname}/statistics/{name}");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")).trim().parse().expect("number")
}

/// Wait until the kernel says the container's payload is frozen (or thawed): lxc-freeze
/// returns once it asked, under load the freezer says FREEZING for a while.
fn wait_frozen(h: &Hierarchies, on: bool) {
    let done = || match h.v1.get("freezer") {
        Some(m) => std::fs::read_to_string(m.join(format!("lxc/{CTID}/ns/freezer.state")))
            .is_ok_and(|t| t.trim() == if on { "FROZEN" } else { "THAWED" }),
        None => std::fs::read_to_string(h.v2.as_ref().expect("cgroup2").join(format!("lxc/{CTID}/ns/cgroup.events")))
            .is_ok_and(|t| t.lines().any(|l| l == format!("frozen {}", u8::from(on)))),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "container {CTID} did not become frozen={on} within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_real_lxc_container_laid_out_by_lxc_as_on_pve() {
    require_lxc();
    let root = host_root(&[CTID]);
    let r = root.path();
    std::fs::remove_file(r.join(format!("etc/pve/qemu-server/{CTID}.conf"))).expect("rm");
    write(
        r,
        &format!("etc/pve/lxc/{CTID}.conf"),
        &format!(
            "arch: amd64\ncores: 1\nhostname: real-ct\nmemory: {MEMORY_MIB}\nswap: {SWAP_MIB}\nostype: debian\n\
             net0: name=eth0,bridge=vmbr0,hwaddr={},ip={CT_IP}/30,type=veth\n\
             rootfs: local:{CTID}/vm-{CTID}-disk-0.raw,size={ROOTFS_MIB}M\n",
            CT_MAC.to_uppercase()
        ),
    );
    write(
        r,
        "etc/pve/.vmlist",
        &format!(
            "{{\n\"version\": 1,\n\"ids\": {{\n\"{CTID}\": {{ \"node\": \"testnode\", \"type\": \"lxc\", \"version\": 1 }}}}\n\n}}\n"
        ),
    );
    write(r, "etc/pve/.members", "{\n\"nodename\": \"testnode\",\n\"version\": 0\n}\n");
    let h = Hierarchies::read(&HostRoot::new("/")).expect("cgroup mounts");

    let mut ct = LxcCt::create(&h);
    let veth = ct.quiet_network();
    // A known ping from inside the container: PINGS echo requests out of eth0, as many
    // replies back, nothing else (static neighbours, no IPv6).
    let out = run(ct.lxc("lxc-attach").args([
        "--",
        "ping",
        "-c",
        &PINGS.to_string(),
        "-s",
        &PING_PAYLOAD.to_string(),
        HOST_IP,
    ]));
    assert!(out.contains(&format!("{PINGS} packets transmitted, {PINGS} packets received")), "{out}");
    let frame = 14 + 20 + 8 + PING_PAYLOAD; // Ethernet, IPv4, ICMP headers and the payload

    let daemon = Daemon::start(r, &["--ebpf", "off", "--collector.ppe"]);
    let (mem_before, pids_before, cpu_before) = (memory_current(&h), pids_current(&h), cpu_user_seconds(&h));
    let t = daemon.get("/metrics");
    let (mem_after, pids_after, cpu_after) = (memory_current(&h), pids_current(&h), cpu_user_seconds(&h));
    for c in ["guest", "lxc", "ppe"] {
        assert_eq!(success(&t, c), Some(1.0), "{c}\n{t}");
    }
    let id = CTID.to_string();
    let one = [("id", id.as_str())];
    // Found as PVE's container: its init (lxc-info's pid, pid 1 of its namespace), its name.
    let pid = ct.pid.to_string();
    assert_eq!(sample(&t, "pve_lxc_info", &[("id", &id), ("pid", &pid), ("name", "real-ct")]), Some(1.0), "{t}");
    // Memory: what the kernel charges to lxc/<ctid> (an idle busybox: the same before and after).
    let current = sample(&t, "pve_lxc_memory_bytes", &[("id", &id), ("type", "current")]).expect("current");
    assert!(
        (mem_before.min(mem_after) as f64..=mem_before.max(mem_after) as f64).contains(&current),
        "{current} vs {mem_before}..{mem_after}"
    );
    let file = sample(&t, "pve_lxc_memory_bytes", &[("id", &id), ("type", "file")]).expect("file");
    assert_eq!(sample(&t, "pve_lxc_memory_used_bytes", &one), Some(current - file));
    assert_eq!(sample(&t, "pve_lxc_memory_limit_bytes", &one), Some((MEMORY_MIB * MIB) as f64), "{t}");
    // The swap limit, where the kernel accounts swap (cgroup2, or v1's memsw files).
    let swap_accounted = h.v2_controllers.iter().any(|c| c == "memory")
        || h.v1.get("memory").is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists());
    if swap_accounted {
        assert_eq!(sample(&t, "pve_lxc_swap_limit_bytes", &one), Some((SWAP_MIB * MIB) as f64), "{t}");
    }
    // The processes: pids.current of the container's cgroup, exactly (busybox's init, the
    // getty of tty1 and the console's shell).
    assert_eq!(pids_before, pids_after, "the idle container's processes changed");
    assert_eq!(sample(&t, "pve_lxc_processes", &one), Some(pids_before as f64), "{t}");
    // CPU: the cgroup's user time, between the kernel's figures before and after the scrape.
    let user = sample(&t, "pve_lxc_cpu_seconds_total", &[("id", &id), ("mode", "user")]).expect("user");
    assert!((cpu_before..=cpu_after).contains(&user), "{user} vs {cpu_before}..{cpu_after}");
    // The veth: exactly the ping, on the host end LXC made (`veth<ctid>i0`).
    let nic = [("id", id.as_str()), ("ifname", veth.as_str()), ("net", "net0")];
    let bytes = (PINGS * frame) as f64;
    for (name, want) in
        [("rx_bytes", bytes), ("tx_bytes", bytes), ("rx_packets", PINGS as f64), ("tx_packets", PINGS as f64)]
    {
        assert_eq!(sample(&t, &format!("pve_lxc_nic_{name}_total"), &nic), Some(want), "{name}\n{t}");
        assert_eq!(veth_counter(&veth, name), want, "{name} of {veth} moved: something else crossed the veth");
    }
    assert_eq!(sample(&t, "pve_network_transmit_bytes_total", &[("id", &format!("lxc/{CTID}"))]), Some(bytes));
    // The root file system: statvfs of the tmpfs through the init's root, equal to the host's
    // view of the same tmpfs.
    let (size, used) = statvfs(&ct.rootfs);
    assert_eq!(size, ROOTFS_MIB * MIB);
    let fs = [("id", id.as_str()), ("disk", "rootfs"), ("mountpoint", "/")];
    assert_eq!(sample(&t, "pve_lxc_fs_size_bytes", &fs), Some(size as f64), "{t}");
    assert_eq!(sample(&t, "pve_lxc_fs_used_bytes", &fs), Some(used as f64), "{t}");
    assert_eq!(sample(&t, "pve_disk_usage_bytes", &[("id", &format!("lxc/{CTID}"))]), Some(used as f64));
    // Run state.
    let lxc = [("id", id.as_str()), ("type", "lxc")];
    assert_eq!(sample(&t, "pve_guest_up", &lxc), Some(1.0));
    assert_eq!(sample(&t, "pve_guest_state", &[("id", &id), ("type", "lxc"), ("state", "running")]), Some(1.0));
    assert_eq!(sample(&t, "pve_up", &[("id", &format!("lxc/{CTID}"))]), Some(1.0));
    promtool_accepts(&t);
    eprintln!(
        "container {CTID}: init pid {pid}, memory {current} B (kernel {mem_before}..{mem_after}), {pids_before} \
         processes, {veth} rx/tx {bytes} B in {PINGS} packets each way, rootfs {size} B of which {used} B used"
    );

    // lxc-freeze (`pct suspend`), then lxc-unfreeze.
    run(&mut ct.lxc("lxc-freeze"));
    wait_frozen(&h, true);
    let t = daemon.get("/metrics");
    run(&mut ct.lxc("lxc-unfreeze"));
    wait_frozen(&h, false);
    assert_eq!(sample(&t, "pve_guest_state", &[("id", &id), ("state", "frozen")]), Some(1.0), "{t}");
    let t = daemon.get("/metrics");
    assert_eq!(sample(&t, "pve_guest_state", &[("id", &id), ("state", "running")]), Some(1.0), "{t}");

    // lxc-stop: LXC removes the cgroups and the veth; the series go, nothing fails.
    ct.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.lxc_dirs().iter().any(|d| d.join(&id).exists()) {
        assert!(Instant::now() < deadline, "the cgroups of {CTID} were not removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = daemon.get("/metrics");
    for c in ["guest", "lxc", "ppe"] {
        assert_eq!(success(&t, c), Some(1.0), "{c}\n{t}");
    }
    assert!(!t.lines().any(|l| l.starts_with("pve_lxc_") && l.contains(&format!("id=\"{CTID}\""))), "{t}");
    assert_eq!(sample(&t, "pve_guest_up", &lxc), Some(0.0));
    assert_eq!(sample(&t, "pve_guest_state", &[("id", &id), ("state", "stopped")]), Some(1.0));
    assert_eq!(sample(&t, "pve_up", &[("id", &format!("lxc/{CTID}"))]), Some(0.0));
}
