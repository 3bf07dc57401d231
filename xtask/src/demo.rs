//! `cargo xtask run|demo`: run the exporter; on a host without PVE VMs, first start two demo
//! VMs (real KVM test guests presenting PVE command lines) and a demo host root for them.

use std::{
    fs,
    os::unix::{fs::symlink, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command},
};

use anyhow::{Context, Result};

use crate::run_cmd;

/// The demo VMs: vmid, name, test-guest arguments.
const DEMO_VMS: &[(&str, &str, &[&str])] = &[
    ("100", "demo-web", &["-smp", "2,sockets=1,cores=2,maxcpus=2", "-m", "256", "-cpu", "host", "-pio-writes", "500"]),
    ("101", "demo-db", &["-smp", "1", "-m", "128", "-cpu", "kvm64,+lahf_lm", "-pio-writes", "2000"]),
];

/// The demo container (a container laid out as PVE's LXC does, `pve-test-container`) and the
/// demo VM that is configured and not running.
const DEMO_CT: &str = "102";
const DEMO_STOPPED: &str = "103";

fn host_has_vms() -> bool {
    fs::read_dir("/etc/pve/qemu-server")
        .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(".conf")))
        .unwrap_or(false)
}

fn target_dir(ws: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| ws.join("target"))
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Kill the children when dropped (also on an error path).
struct Guests(Vec<Child>);

impl Drop for Guests {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// A fake host root whose /proc and /sys are the real ones and whose /etc/pve describes the
/// demo VMs (configs and a nested pool).
pub fn make_demo_root(root: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(root.join("etc/pve/qemu-server"))?;
    symlink("/proc", root.join("proc"))?;
    symlink("/sys", root.join("sys"))?;
    for (id, name, _) in DEMO_VMS {
        // The first demo VM has a guest agent (a real qemu-ga answering about this machine).
        let agent = if *id == DEMO_VMS[0].0 { "agent: 1\n" } else { "" };
        fs::write(
            root.join(format!("etc/pve/qemu-server/{id}.conf")),
            format!("{agent}name: {name}\nostype: l26\nmemory: 256\n"),
        )?;
    }
    fs::create_dir_all(root.join("var/run/qemu-server"))?;
    fs::create_dir_all(root.join("etc/pve/lxc"))?;
    fs::write(
        root.join(format!("etc/pve/lxc/{DEMO_CT}.conf")),
        format!(
            "arch: amd64\ncores: 1\nhostname: demo-ct\nmemory: 256\nswap: 128\nostype: debian\nunprivileged: 1\n\
             net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:01:02,ip=dhcp,type=veth\n\
             rootfs: local:{DEMO_CT}/vm-{DEMO_CT}-disk-0.raw,size=64M\ntags: demo\n"
        ),
    )?;
    fs::write(
        root.join(format!("etc/pve/qemu-server/{DEMO_STOPPED}.conf")),
        format!(
            "name: demo-stopped\nostype: l26\nmemory: 1024\ncores: 2\nonboot: 0\n\
             scsi0: local-lvm:vm-{DEMO_STOPPED}-disk-0,size=8G\nboot: order=scsi0\nparent: before-upgrade\n\n\
             [before-upgrade]\nsnaptime: 1764547200\n"
        ),
    )?;
    // A nightly backup job of the pool `demo` (pve_guest_backup_covered).
    fs::write(
        root.join("etc/pve/jobs.cfg"),
        "vzdump: backup-demo0000-0001\n\tschedule 21:00\n\tenabled 1\n\tmode snapshot\n\tpool demo\n\tstorage local\n",
    )?;
    fs::write(
        root.join("etc/pve/user.cfg"),
        "user:root@pam:1:0:::root@pam:\npool:demo:Demo VMs:100,102:\npool:demo/databases:Demo DBs:101:\n",
    )?;
    Ok(())
}

pub fn run(ws: &Path, daemon_args: &[String], force_demo: bool) -> Result<()> {
    run_cmd(Command::new(crate::cargo_bin()).current_dir(ws).args([
        "build",
        "-p",
        "pve-exporter",
        "-p",
        "pve-test-guest",
        "--bins",
    ]))?;
    let bin = target_dir(ws).join("debug");

    // Ctrl-C reaches the whole process group: the daemon shuts down, and we stay to clean up.
    // SAFETY: installing a handler that does nothing.
    unsafe { libc::signal(libc::SIGINT, ignore_signal as *const () as libc::sighandler_t) };

    let mut daemon = Command::new(bin.join("pve-exporter"));
    daemon.args(daemon_args);
    let _guests = if force_demo || !host_has_vms() {
        let root = target_dir(ws).join("demo-root");
        make_demo_root(&root)?;
        let mut guests = Guests(Vec::new());
        for (id, name, extra) in DEMO_VMS {
            let mut c = Command::new(bin.join("pve-test-guest"));
            // argv[0] as PVE starts QEMU, so the exporter finds it like a real VM.
            c.arg0("/usr/bin/kvm")
                .args(["-id", id, "-name", &format!("{name},debug-threads=on"), "-machine", "type=pc+pve0"])
                .args(*extra)
                .args(["-pio-interval-ms", "1000"]);
            // SAFETY: prctl in the child before exec; the guest dies with us.
            unsafe {
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            guests.0.push(c.spawn().context("starting a demo VM (pve-test-guest); is /dev/kvm there?")?);
            println!("demo VM {id} ({name}) started: {}", guests.0.last().map_or(0, |c| c.id()));
        }
        let mut c = Command::new(bin.join("pve-test-container"));
        c.args([DEMO_CT, "--veth", "--rootfs-mib", "64", "--memory-mib", "256", "--touch-mib", "16"]);
        // SAFETY: prctl in the child before exec; the container goes with us.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        guests.0.push(c.spawn().context("starting the demo container (pve-test-container)")?);
        println!(
            "demo container {DEMO_CT} (demo-ct) started; demo VM {DEMO_STOPPED} (demo-stopped) is configured, not running"
        );
        // The first demo VM's guest agent: the real qemu-ga on the socket PVE would give it,
        // answering about this machine's own file systems (pve_kvm_guest_filesystem_*).
        let qga = root.join(format!("var/run/qemu-server/{}.qga", DEMO_VMS[0].0));
        let state = root.join("qga-state");
        fs::create_dir_all(&state)?;
        let mut c = Command::new("qemu-ga");
        c.args(["-m", "unix-listen", "-p"]).arg(&qga).arg("-t").arg(&state);
        // SAFETY: prctl in the child before exec; the agent goes with us.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        match c.spawn() {
            Ok(child) => {
                guests.0.push(child);
                println!("demo guest agent of VM {} on {}", DEMO_VMS[0].0, qga.display());
            }
            Err(e) => println!("no demo guest agent (qemu-ga: {e}; `cargo xtask setup` installs qemu-guest-agent)"),
        }
        daemon.arg("--root").arg(&root);
        println!("demo host root: {} (/proc and /sys are the real ones)", root.display());
        guests
    } else {
        Guests(Vec::new())
    };
    let port = daemon_args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| daemon_args.get(i + 1))
        .map_or("9116", |p| p.as_str());
    println!("pve-exporter: http://localhost:{port}/metrics (Ctrl-C stops it)");
    let status = daemon.status().context("starting pve-exporter")?;
    println!("pve-exporter exited: {status}");
    Ok(())
}
