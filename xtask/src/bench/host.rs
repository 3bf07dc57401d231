//! `cargo xtask bench host`: the daemon scraped over HTTP, as Prometheus would, on generated
//! hosts of N VMs. docs/benchmarks.md explains the figures.
//!
//! - `qemu-N` (N = 10, 100): N real QEMU processes (`-accel tcg -S`) with PVE-shaped command
//!   lines (`/usr/bin/kvm -id <vmid> ...`, two disks, a tap and a user NIC, a QMP socket and a
//!   pid file under the host root), PVE configs, pools and storage.cfg; the real /proc and /sys.
//!   The daemon runs as in production: every collector, eBPF on. `qemu-N + agents`: the same
//!   with `agent: 1` and a real qemu-ga per VM.
//! - `fixture-N` (N = 100, 1000): a generated host root whose /proc holds N QEMU-shaped
//!   processes (cmdline, stat, status, io, vCPU threads) among other processes, with PVE
//!   configs and cgroup PSI files; no monitor sockets (so no NIC and disk series) and eBPF off.
//!   1000 real QEMU processes do not fit this machine; the fixture pair gives the scaling ratio.
//!
//! For each host: cold = the daemon's own time for its first collection (every cache empty,
//! every VM's topology fetched), over several daemon starts; warm = M sequential scrapes: wall
//! time (median, p99) measured here, CPU per scrape from the daemon's utime+stime, RSS after,
//! series and bytes of a scrape.

use std::{
    fmt::Write as _,
    fs,
    os::unix::{fs::symlink, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{Bench, Daemon, median_p99};
use crate::run_cmd;

/// First vmid of the generated VMs (clear of the live tests' vmids).
const FIRST_VMID: u32 = 2000;

/// One measured host.
struct Row {
    host: String,
    vms: usize,
    cold_ms: f64,
    warm_median_ms: f64,
    warm_p99_ms: f64,
    cpu_ms: f64,
    rss_mib: f64,
    rss_anon_mib: f64,
    series: usize,
    bytes: usize,
}

pub fn run(bench: &Bench) -> Result<()> {
    let (qemu_sizes, fixture_sizes, starts, scrapes) =
        if bench.quick { (vec![2], vec![20], 1, 5) } else { (vec![10, 100], vec![100, 1000], 5, 200) };
    // Overrides for profiling one case: BENCH_QEMU=100 BENCH_FIXTURE= BENCH_SCRAPES=50 ...
    let sizes = |var: &str, default: Vec<usize>| match std::env::var(var) {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => default,
    };
    let (qemu_sizes, fixture_sizes) = (sizes("BENCH_QEMU", qemu_sizes), sizes("BENCH_FIXTURE", fixture_sizes));
    let starts = sizes("BENCH_STARTS", vec![starts]).first().copied().unwrap_or(starts).max(1);
    let scrapes = sizes("BENCH_SCRAPES", vec![scrapes]).first().copied().unwrap_or(scrapes).max(1);
    let (mut rows, mut floors) = (Vec::new(), Vec::new());
    for &n in &qemu_sizes {
        let (r, floor) = qemu_host(bench, n, starts, scrapes)?;
        rows.extend(r);
        floors.push(floor);
    }
    for &n in &fixture_sizes {
        rows.push(fixture_host(bench, n, starts, scrapes)?);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| host | VMs | cold scrape (ms, median of {starts}) | warm scrape median (ms) | warm p99 (ms) | CPU per warm scrape (ms) | RSS (MiB) | RSS anon (MiB) | series | bytes |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} |",
            r.host,
            r.vms,
            r.cold_ms,
            r.warm_median_ms,
            r.warm_p99_ms,
            r.cpu_ms,
            r.rss_mib,
            r.rss_anon_mib,
            r.series,
            r.bytes
        );
    }
    // The scaling figure: the larger fixture host against the smaller one.
    if let [small, large] = rows.iter().filter(|r| r.host.starts_with("fixture")).collect::<Vec<_>>()[..] {
        let _ = writeln!(
            md,
            "\nScaling: warm scrape {} VMs / {} VMs = {:.2} (VMs x{:.0}); CPU per scrape x{:.2}.",
            large.vms,
            small.vms,
            large.warm_median_ms / small.warm_median_ms,
            large.vms as f64 / small.vms as f64,
            large.cpu_ms / small.cpu_ms
        );
    }
    for f in &floors {
        let _ = writeln!(md, "\n{f}");
    }
    let _ = writeln!(md, "\nMachine: {} (load average before: {})", machine(), loadavg());
    bench.report("host", &md)
}

/// What `cargo xtask pgo` records: every case of the host bench at 100 QEMUs (the monitor
/// exchange, guest agents, `--qm-mode off`, containers and stopped guests) and the fixture
/// tree, fewer scrapes, no report.
pub fn profile_workload(bench: &Bench) -> Result<()> {
    qemu_host(bench, 100, 2, 60)?;
    fixture_host(bench, 100, 2, 60)?;
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, kernel {}", kernel.trim())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Cold starts, then warm scrapes of one host root.
fn measure(bench: &Bench, host: String, vms: usize, args: &[&str], starts: usize, scrapes: usize) -> Result<Row> {
    println!("    {host}: {starts} cold start(s), {scrapes} warm scrapes (load {})", loadavg());
    let mut cold = Vec::new();
    for _ in 1..starts {
        cold.push(Daemon::start(bench, args)?.first_collection.as_secs_f64() * 1e3);
    }
    let daemon = Daemon::start(bench, args)?;
    cold.push(daemon.first_collection.as_secs_f64() * 1e3);
    // Two scrapes settle what the first collection left (thread pools, allocator arenas).
    let (_, body) = daemon.scrape()?;
    let (series, bytes) = (body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count(), body.len());
    check_vms(&host, &body, vms)?;
    let cts = body.lines().filter(|l| l.starts_with("pve_lxc_info{")).count();
    if host.contains("CTs") && cts != vms {
        bail!("{host}: the scrape shows {cts} containers, expected {vms}");
    }
    daemon.scrape()?;

    let ticks_before = daemon.cpu_ticks()?;
    let mut walls = Vec::with_capacity(scrapes);
    for _ in 0..scrapes {
        walls.push(daemon.scrape()?.0.as_secs_f64() * 1e3);
    }
    let ticks = daemon.cpu_ticks()? - ticks_before;
    let (rss, anon, _file) = daemon.rss_kib()?;
    let (warm_median_ms, warm_p99_ms) = median_p99(&mut walls);
    let tick_ms = 1e3 / clock_ticks_per_second();
    Ok(Row {
        host,
        vms,
        cold_ms: median_p99(&mut cold).0,
        warm_median_ms,
        warm_p99_ms,
        cpu_ms: ticks as f64 * tick_ms / scrapes as f64,
        rss_mib: rss as f64 / 1024.0,
        rss_anon_mib: anon as f64 / 1024.0,
        series,
        bytes,
    })
}

/// The scrape must show every generated VM, or the figures measure something else.
fn check_vms(host: &str, body: &str, vms: usize) -> Result<()> {
    let seen = body.lines().filter(|l| l.starts_with("pve_kvm_info{")).count();
    if seen != vms {
        bail!("{host}: the scrape shows {seen} VMs, expected {vms}");
    }
    Ok(())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

// ---- real QEMU hosts ----------------------------------------------------------------------

/// QEMU processes, killed when dropped.
struct Vms(Vec<Child>);

impl Drop for Vms {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn qemu_host(bench: &Bench, n: usize, starts: usize, scrapes: usize) -> Result<(Vec<Row>, String)> {
    let root = bench.dir.join(format!("qemu-{n}"));
    fresh_dir(&root)?;
    symlink("/proc", root.join("proc"))?;
    symlink("/sys", root.join("sys"))?;
    // Paths QEMU reports (the images under the root) resolve below --root too.
    if let Some(first) = root.components().nth(1) {
        symlink(Path::new("/").join(first), root.join(first))?;
    }
    write_pve_etc(&root, n, true)?;
    let shim = hide_id_shim(bench)?;
    let template = disk_templates(bench)?;
    let run_dir = root.join("var/run/qemu-server");
    fs::create_dir_all(&run_dir)?;
    let t = Instant::now();
    let mut vms = Vms(Vec::new());
    for i in 0..n {
        let vmid = FIRST_VMID + i as u32;
        vms.0.push(start_qemu(&root, vmid, &shim, &template)?);
    }
    // Ready when every QMP socket and pid file is there.
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..n {
        let vmid = FIRST_VMID + i as u32;
        while !(run_dir.join(format!("{vmid}.qmp")).exists() && run_dir.join(format!("{vmid}.pid")).exists()) {
            if Instant::now() > deadline {
                bail!("QEMU for VM {vmid} did not create its QMP socket and pid file");
            }
            if let Some(status) = vms.0[i].try_wait()? {
                bail!("QEMU for VM {vmid} exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("    {n} QEMU VMs up in {:.1} s", t.elapsed().as_secs_f64());
    let root_s = root.to_string_lossy().into_owned();
    // For profiling by hand: keep the VMs (BENCH_HOLD=vms), or the VMs, containers and stopped
    // VMs (BENCH_HOLD=guests), up until killed.
    let hold = |what: &str| {
        if std::env::var("BENCH_HOLD").is_ok_and(|h| h == what) {
            println!("    holding: pve-exporter --root {root_s}");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    };
    hold("vms");
    if std::env::var("BENCH_HOLD").is_ok_and(|h| h == "guests") {
        with_guests(bench, &root, n, |_| -> Result<()> {
            hold("guests");
            Ok(())
        })?;
    }
    let floor = qmp_floor(&run_dir, n)?;
    let all = measure(bench, format!("qemu-{n}"), n, &["--root", &root_s, "--ebpf", "on"], starts, scrapes)?;
    // The same with a guest agent per VM (`agent: 1` and the real qemu-ga on its socket,
    // answering about this machine): asked by the first scrape, then once per --agent-interval
    // in the background (issue 18: within 1.2x of the row above).
    let agents = with_agents(&root, n, || {
        measure(bench, format!("qemu-{n} + agents"), n, &["--root", &root_s, "--ebpf", "on"], starts, scrapes)
    })?;
    // The same host without the monitor exchange: what the exporter itself costs, apart from
    // the QEMU processes' own time to answer QMP.
    let args = ["--root", &root_s, "--ebpf", "on", "--qm-mode", "off"];
    let off = measure(bench, format!("qemu-{n}, --qm-mode off"), n, &args, starts, scrapes)?;
    // Every guest of a PVE node: as many containers as VMs and half as many stopped VMs.
    let guests = with_guests(bench, &root, n, |bench| {
        measure(bench, format!("qemu-{n} + {n} CTs + {} stopped, --qm-mode off", n / 2), n, &args, starts, scrapes)
    })?;
    drop(vms);
    Ok((vec![all, agents, off, guests], floor))
}

/// Run `f` while each of the `n` VMs has `agent: 1` in its config and a real qemu-ga on its
/// agent socket; the configs are restored after.
fn with_agents<T>(root: &Path, n: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let etc = root.join("etc/pve/qemu-server");
    let run_dir = root.join("var/run/qemu-server");
    let mut agents = Vms(Vec::new());
    for i in 0..n {
        let vmid = FIRST_VMID + i as u32;
        let conf = etc.join(format!("{vmid}.conf"));
        let text = fs::read_to_string(&conf)?;
        fs::write(&conf, format!("agent: 1\n{text}"))?;
        let state = root.join(format!("qga-state/{vmid}"));
        fs::create_dir_all(&state)?;
        let socket = run_dir.join(format!("{vmid}.qga"));
        let _ = fs::remove_file(&socket);
        let mut c = Command::new("qemu-ga");
        c.args(["-m", "unix-listen", "-p"])
            .arg(&socket)
            .arg("-t")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        agents.0.push(c.spawn().context("qemu-ga (cargo xtask setup installs qemu-guest-agent)")?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        let vmid = FIRST_VMID + i as u32;
        while !run_dir.join(format!("{vmid}.qga")).exists() {
            if Instant::now() > deadline {
                bail!("qemu-ga for VM {vmid} did not create its socket");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let r = f();
    drop(agents);
    for i in 0..n {
        let conf = etc.join(format!("{}.conf", FIRST_VMID + i as u32));
        let text = fs::read_to_string(&conf)?;
        fs::write(&conf, text.strip_prefix("agent: 1\n").unwrap_or(&text))?;
    }
    r
}

/// `/etc/pve/.vmlist` as pmxcfs writes it (pve-cluster `cfs_create_vmlist_msg`): every guest
/// configured below `etc`, on this node (the host name's first label, as PVE names its node).
/// A PVE node always has it; the exporter lists a node's guests from it.
fn write_vmlist(etc: &Path) -> Result<()> {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")?;
    let node = host.trim().split('.').next().unwrap_or_default().to_string();
    let mut ids = Vec::new();
    for (dir, ty) in [("qemu-server", "qemu"), ("lxc", "lxc")] {
        for e in fs::read_dir(etc.join(dir))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".conf").and_then(|i| i.parse::<u32>().ok()) {
                ids.push((id, ty));
            }
        }
    }
    ids.sort_unstable();
    let lines: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, (id, ty))| {
            format!("\"{id}\": {{ \"node\": \"{node}\", \"type\": \"{ty}\", \"version\": {} }}", i + 1)
        })
        .collect();
    let text = format!("{{\n\"version\": {},\n\"ids\": {{\n{}}}\n\n}}\n", ids.len() + 1, lines.join(",\n"));
    fs::write(etc.join(".vmlist"), text)?;
    Ok(())
}

/// First ctid of the generated containers and first vmid of the stopped VMs.
const FIRST_CTID: u32 = 3000;
const FIRST_STOPPED: u32 = 4000;

/// Test containers (`pve-test-container`), stopped (cgroups and veths removed) when dropped.
struct Cts(Vec<Child>);

impl Drop for Cts {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: SIGTERM to our own child: it kills its init and removes what it made.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Run `f` on `root` with `n` containers (laid out as PVE's LXC does, each with a veth) and
/// `n / 2` VMs configured and not running added to its /etc/pve; they go again afterwards.
fn with_guests<T>(bench: &Bench, root: &Path, n: usize, f: impl FnOnce(&Bench) -> Result<T>) -> Result<T> {
    let etc = root.join("etc/pve");
    fs::create_dir_all(etc.join("lxc"))?;
    let t = Instant::now();
    let mut cts = Cts(Vec::new());
    for i in 0..n {
        let ctid = FIRST_CTID + i as u32;
        fs::write(
            etc.join(format!("lxc/{ctid}.conf")),
            format!(
                "arch: amd64\ncores: 1\nhostname: ct{ctid}\nmemory: 128\nswap: 0\nostype: debian\nunprivileged: 1\n\
                 net0: name=eth0,bridge=vmbr0,hwaddr={},ip=dhcp,type=veth\n\
                 rootfs: local:{ctid}/vm-{ctid}-disk-0.raw,size=4M\n",
                mac(ctid, 0)
            ),
        )?;
        let mut c = Command::new(bench.bin.join("pve-test-container"));
        c.args([&ctid.to_string(), "--veth", "--rootfs-mib", "4", "--touch-mib", "0", "--file-bytes", "0"])
            .stdout(Stdio::piped());
        let mut child = c.spawn().context("starting pve-test-container")?;
        let out = child.stdout.take().context("stdout")?;
        cts.0.push(child);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
        if !line.starts_with("started") {
            bail!("container {ctid} did not start: {line:?}");
        }
    }
    for i in 0..n / 2 {
        let vmid = FIRST_STOPPED + i as u32;
        fs::write(
            etc.join(format!("qemu-server/{vmid}.conf")),
            format!(
                "boot: order=scsi0\ncores: 2\nmemory: 2048\nname: stopped{vmid}\nonboot: 1\nostype: l26\n\
                 scsi0: local:{vmid}/vm-{vmid}-disk-0.qcow2,size=32G\nparent: snap\n\n[snap]\nsnaptime: 1764547200\n"
            ),
        )?;
    }
    write_vmlist(&etc)?;
    println!("    {n} containers up and {} stopped VMs configured in {:.1} s", n / 2, t.elapsed().as_secs_f64());
    let r = f(bench);
    let _ = fs::remove_file(etc.join(".vmlist"));
    drop(cts);
    for i in 0..n {
        let _ = fs::remove_file(etc.join(format!("lxc/{}.conf", FIRST_CTID + i as u32)));
    }
    for i in 0..n / 2 {
        let _ = fs::remove_file(etc.join(format!("qemu-server/{}.conf", FIRST_STOPPED + i as u32)));
    }
    r
}

/// QEMU's own time to answer what a warm scrape asks each VM (`qmp_capabilities`,
/// `query-blockstats`, `query-block`, `query-status`, `query-balloon`, the balloon's
/// `guest-stats`, pipelined as the daemon does), without the daemon: each
/// VM alone (the latency one VM adds), and all VMs 16 at a time (the daemon's default window).
/// This is the floor of the `qm` collector's wall time on this machine.
fn qmp_floor(run_dir: &Path, n: usize) -> Result<String> {
    use std::{io::Read, io::Write, os::unix::net::UnixStream};
    const REQUEST: &[u8] = b"{\"execute\":\"qmp_capabilities\",\"id\":0}\n{\"execute\":\"query-blockstats\",\"id\":1}\n{\"execute\":\"query-block\",\"id\":2}\n\
        {\"execute\":\"query-status\",\"id\":3}\n{\"execute\":\"query-balloon\",\"id\":4}\n\
        {\"execute\":\"qom-get\",\"arguments\":{\"path\":\"/machine/peripheral/balloon0\",\"property\":\"guest-stats\"},\"id\":5}\n";
    let ask = |vmid: u32| -> Result<UnixStream> {
        let mut s = UnixStream::connect(run_dir.join(format!("{vmid}.qmp")))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(REQUEST)?;
        Ok(s)
    };
    // Greeting and six replies: seven lines.
    let finish = |mut s: UnixStream| -> Result<()> {
        let (mut buf, mut chunk) = (Vec::new(), [0u8; 16 << 10]);
        while buf.iter().filter(|b| **b == b'\n').count() < 7 {
            let k = s.read(&mut chunk)?;
            if k == 0 {
                bail!("QEMU closed the QMP connection");
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        Ok(())
    };
    let mut alone = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        finish(ask(FIRST_VMID + i as u32)?)?;
        alone.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let open: Vec<UnixStream> = chunk.iter().map(|i| ask(FIRST_VMID + *i as u32)).collect::<Result<_>>()?;
        for s in open {
            finish(s)?;
        }
    }
    let window = t.elapsed().as_secs_f64() * 1e3;
    let (median, _) = median_p99(&mut alone);
    Ok(format!(
        "QEMU's own answer to a warm scrape's QMP request (no daemon), {n} VMs: {median:.2} ms per VM alone (median), \
         {:.1} ms for one VM after another, {window:.1} ms for all {n} sixteen at a time.",
        alone.iter().sum::<f64>()
    ))
}

/// The LD_PRELOAD shim that hides `-id` from Debian's QEMU (pve-exporter/tests/support/hide_id.c).
fn hide_id_shim(bench: &Bench) -> Result<PathBuf> {
    let src = crate::workspace_root().join("pve-exporter/tests/support/hide_id.c");
    let out = bench.dir.join("hide-id.so");
    run_cmd(Command::new("cc").args(["-shared", "-fPIC", "-O2", "-Wall", "-o"]).arg(&out).arg(&src))?;
    Ok(out)
}

/// One qcow2 and one raw image, copied for each VM (qemu-img once, not N times).
fn disk_templates(bench: &Bench) -> Result<[PathBuf; 2]> {
    let qcow2 = bench.dir.join("template.qcow2");
    let raw = bench.dir.join("template.raw");
    if !qcow2.exists() {
        run_cmd(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&qcow2).arg("1G"))?;
    }
    if !raw.exists() {
        run_cmd(Command::new("qemu-img").args(["create", "-q", "-f", "raw"]).arg(&raw).arg("64M"))?;
    }
    Ok([qcow2, raw])
}

fn mac(vmid: u32, nic: u32) -> String {
    format!("BC:24:11:{nic:02X}:{:02X}:{:02X}", vmid >> 8, vmid & 0xff)
}

fn start_qemu(root: &Path, vmid: u32, shim: &Path, template: &[PathBuf; 2]) -> Result<Child> {
    let images = root.join(format!("var/lib/vz/images/{vmid}"));
    fs::create_dir_all(&images)?;
    let disk0 = images.join(format!("vm-{vmid}-disk-0.qcow2"));
    let disk1 = images.join(format!("vm-{vmid}-disk-1.raw"));
    fs::copy(&template[0], &disk0)?;
    fs::copy(&template[1], &disk1)?;
    let run_dir = root.join("var/run/qemu-server");
    let p = |p: &Path| p.to_string_lossy().into_owned();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.arg0("/usr/bin/kvm")
        .env("LD_PRELOAD", shim)
        .args(["-id", &vmid.to_string(), "-name", &format!("bench{vmid},debug-threads=on"), "-no-shutdown"])
        .args([
            "-chardev",
            &format!("socket,id=qmp,path={},server=on,wait=off", p(&run_dir.join(format!("{vmid}.qmp")))),
        ])
        .args(["-mon", "chardev=qmp,mode=control"])
        .args(["-pidfile", &p(&run_dir.join(format!("{vmid}.pid")))])
        .args(["-smp", "1,sockets=1,cores=1,maxcpus=1", "-nodefaults", "-display", "none", "-m", "32"])
        .args(["-accel", "tcg", "-S", "-cpu", "qemu64"])
        // PVE's balloon device (every VM without `balloon: 0`): the warm scrape asks it too.
        .args(["-device", "virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x3,free-page-reporting=on"])
        .args(["-netdev", &format!("type=tap,id=net0,ifname=tap{vmid}i0,script=no,downscript=no")])
        .args(["-device", &format!("virtio-net-pci,mac={},netdev=net0,id=net0", mac(vmid, 0))])
        .args(["-netdev", "type=user,id=net1"])
        .args(["-device", &format!("e1000,mac={},netdev=net1,id=net1", mac(vmid, 1))])
        .args(["-device", "virtio-scsi-pci,id=scsihw0"])
        .args(["-drive", &format!("file={},if=none,id=drive-scsi0,format=qcow2,cache=writeback,discard=on", p(&disk0))])
        .args(["-device", "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0,id=scsi0"])
        .args(["-drive", &format!("file={},if=none,id=drive-virtio0,format=raw,cache=writeback", p(&disk1))])
        .args(["-device", "virtio-blk-pci,drive=drive-virtio0,id=virtio0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl in the child before exec: the VMs die with the bench.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting QEMU for VM {vmid}"))
}

/// /etc/pve of a host with VMs `FIRST_VMID..+n`: configs, pools, storage.cfg.
fn write_pve_etc(root: &Path, n: usize, disks: bool) -> Result<()> {
    let etc = root.join("etc/pve");
    fs::create_dir_all(etc.join("qemu-server"))?;
    fs::create_dir_all(root.join("var/lib/vz/images"))?;
    let mut pools: [Vec<String>; 3] = Default::default();
    for i in 0..n {
        let vmid = FIRST_VMID + i as u32;
        let mut conf = format!(
            "boot: order=scsi0;net0\ncores: 1\ncpu: qemu64\nmemory: 32\nname: bench{vmid}\n\
             net0: virtio={},bridge=vmbr0,firewall=1\nnet1: e1000={},bridge=vmbr0\nostype: l26\n\
             scsihw: virtio-scsi-pci\nsockets: 1\n",
            mac(vmid, 0),
            mac(vmid, 1)
        );
        if disks {
            let _ = writeln!(conf, "scsi0: local:{vmid}/vm-{vmid}-disk-0.qcow2,discard=on,size=1G");
            let _ = writeln!(conf, "virtio0: local:{vmid}/vm-{vmid}-disk-1.raw,size=64M");
        }
        fs::write(etc.join(format!("qemu-server/{vmid}.conf")), conf)?;
        pools[i % 3].push(vmid.to_string());
    }
    fs::write(
        etc.join("user.cfg"),
        format!(
            "user:root@pam:1:0:::root@pam:\npool:web:Web:{}:\npool:web/db:Databases:{}:\npool:batch:Batch:{}:\n",
            pools[0].join(","),
            pools[1].join(","),
            pools[2].join(",")
        ),
    )?;
    fs::write(etc.join("storage.cfg"), "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,images\n")?;
    Ok(())
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

// ---- generated fixture hosts --------------------------------------------------------------

/// Processes that are not VMs, as on a PVE node (pvedaemon workers, sshd, kernel threads...).
const OTHER_PROCESSES: usize = 300;

fn fixture_host(bench: &Bench, n: usize, starts: usize, scrapes: usize) -> Result<Row> {
    let root = bench.dir.join(format!("fixture-{n}"));
    fresh_dir(&root)?;
    write_pve_etc(&root, n, false)?;
    let proc = root.join("proc");
    for f in ["meminfo", "stat", "loadavg", "uptime", "vmstat"] {
        fs::create_dir_all(&proc)?;
        fs::copy(Path::new("/proc").join(f), proc.join(f)).with_context(|| format!("copying /proc/{f}"))?;
    }
    fs::create_dir_all(proc.join("pressure"))?;
    for r in ["cpu", "memory", "io"] {
        fs::write(proc.join(format!("pressure/{r}")), psi())?;
    }
    let run_dir = root.join("var/run/qemu-server");
    fs::create_dir_all(&run_dir)?;
    for i in 0..OTHER_PROCESSES {
        let pid = 100 + i as u32;
        let dir = proc.join(pid.to_string());
        fs::create_dir_all(&dir)?;
        // Every third a kernel thread (empty cmdline), like a real /proc.
        let cmdline = if i % 3 == 0 { String::new() } else { format!("/usr/sbin/daemon{i}\0--foreground\0") };
        fs::write(dir.join("cmdline"), cmdline)?;
        fs::write(dir.join("stat"), stat_line(pid, "daemon", 1))?;
    }
    for i in 0..n {
        let vmid = FIRST_VMID + i as u32;
        let pid = 10_000 + 10 * i as u32;
        let vcpus = 1 + (i % 4) as u32;
        write_fixture_vm(&root, vmid, pid, vcpus)?;
        fs::write(run_dir.join(format!("{vmid}.pid")), format!("{pid}\n"))?;
        let cg = root.join(format!("sys/fs/cgroup/qemu.slice/{vmid}.scope"));
        fs::create_dir_all(&cg)?;
        for r in ["cpu", "memory", "io"] {
            fs::write(cg.join(format!("{r}.pressure")), psi())?;
        }
    }
    let root_s = root.to_string_lossy().into_owned();
    measure(bench, format!("fixture-{n}"), n, &["--root", &root_s, "--ebpf", "off"], starts, scrapes)
}

fn psi() -> &'static str {
    "some avg10=0.12 avg60=0.08 avg300=0.05 total=123456789\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=2345678\n"
}

fn stat_line(pid: u32, comm: &str, threads: u32) -> String {
    format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 138412352 220133 0 12 0 {u} {s} 0 0 20 0 {threads} 0 1234567 \
         2307014656 279311 18446744073709551615 1 1 0 0 0 0 268444224 4096 17635 0 0 0 17 1 0 0 7 0 0 0 0 0 0 0 0 0 0\n",
        u = 1000 + pid % 997,
        s = 500 + pid % 499
    )
}

/// One QEMU-shaped process: PVE's command line, stat, status, io, and its threads (the vCPUs
/// named `CPU n/KVM` as with debug-threads=on, plus QEMU's other threads).
fn write_fixture_vm(root: &Path, vmid: u32, pid: u32, vcpus: u32) -> Result<()> {
    let dir = root.join(format!("proc/{pid}"));
    fs::create_dir_all(dir.join("task"))?;
    let args = [
        "/usr/bin/kvm".to_string(),
        "-id".into(),
        vmid.to_string(),
        "-name".into(),
        format!("bench{vmid},debug-threads=on"),
        "-no-shutdown".into(),
        "-chardev".into(),
        format!("socket,id=qmp,path=/var/run/qemu-server/{vmid}.qmp,server=on,wait=off"),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-pidfile".into(),
        format!("/var/run/qemu-server/{vmid}.pid"),
        "-daemonize".into(),
        "-smbios".into(),
        "type=1,uuid=6c2f6a52-0d4e-4d7a-9a1b-2f6d1e0c9a10".into(),
        "-smp".into(),
        format!("{vcpus},sockets=1,cores={vcpus},maxcpus={vcpus}"),
        "-nodefaults".into(),
        "-vnc".into(),
        format!("unix:/var/run/qemu-server/{vmid}.vnc,password=on"),
        "-cpu".into(),
        "host,+kvm_pv_eoi,+kvm_pv_unhalt".into(),
        "-m".into(),
        "4096".into(),
        "-device".into(),
        "virtio-scsi-pci,id=scsihw0,bus=pci.0,addr=0x5".into(),
        "-drive".into(),
        format!("file=/dev/zvol/rpool/data/vm-{vmid}-disk-0,if=none,id=drive-scsi0,format=raw,cache=none,aio=io_uring"),
        "-device".into(),
        "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0,id=scsi0,bootindex=100".into(),
        "-netdev".into(),
        format!("type=tap,id=net0,ifname=tap{vmid}i0,script=/var/lib/qemu-server/pve-bridge,vhost=on"),
        "-device".into(),
        format!("virtio-net-pci,mac={},netdev=net0,bus=pci.0,addr=0x12,id=net0", mac(vmid, 0)),
        "-machine".into(),
        "type=pc+pve0".into(),
    ];
    fs::write(dir.join("cmdline"), args.iter().map(|a| format!("{a}\0")).collect::<String>())?;
    let threads = vcpus + 3;
    fs::write(dir.join("stat"), stat_line(pid, "kvm", threads))?;
    fs::write(
        dir.join("status"),
        format!(
            "Name:\tkvm\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t1\nTracerPid:\t0\n\
             Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nVmPeak:\t 5230412 kB\n\
             VmSize:\t 5165260 kB\nVmLck:\t       0 kB\nVmPin:\t       0 kB\nVmHWM:\t 4301244 kB\nVmRSS:\t 4290112 kB\n\
             RssAnon:\t 4271232 kB\nRssFile:\t   18880 kB\nRssShmem:\t       0 kB\nVmData:\t 4420348 kB\n\
             VmStk:\t     132 kB\nVmExe:\t    6244 kB\nVmLib:\t   38720 kB\nVmPTE:\t    8980 kB\nVmSwap:\t       0 kB\n\
             HugetlbPages:\t       0 kB\nThreads:\t{threads}\nvoluntary_ctxt_switches:\t{v}\n\
             nonvoluntary_ctxt_switches:\t{nv}\n",
            v = 123_456 + pid,
            nv = 7_890 + pid
        ),
    )?;
    fs::write(
        dir.join("io"),
        format!(
            "rchar: {r}\nwchar: {w}\nsyscr: 1234567\nsyscw: 2345678\nread_bytes: 987654321\nwrite_bytes: 123456789\n\
             cancelled_write_bytes: 0\n",
            r = 10_000_000 + u64::from(pid),
            w = 20_000_000 + u64::from(pid)
        ),
    )?;
    fs::write(dir.join("exe"), "")?;
    // The main thread (tid = pid) first, as in /proc.
    let names = std::iter::once("kvm".to_string())
        .chain((0..vcpus).map(|c| format!("CPU {c}/KVM")))
        .chain(["call_rcu", "vnc_worker"].map(String::from));
    for (k, name) in names.enumerate() {
        let tid = if k == 0 { pid } else { pid + k as u32 };
        let t = dir.join(format!("task/{tid}"));
        fs::create_dir_all(&t)?;
        fs::write(t.join("comm"), format!("{name}\n"))?;
        fs::write(t.join("schedstat"), format!("{} {} {}\n", 123_456_789 * u64::from(tid), 2_345_678, 98_765))?;
        fs::write(t.join("stat"), stat_line(tid, &name, threads))?;
    }
    Ok(())
}
