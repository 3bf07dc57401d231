//! A container as PVE's LXC lays one out, for tests and the demo where the host has no LXC:
//! real processes in real cgroups `lxc/<ctid>` (limits) and `lxc/<ctid>/ns` (the payload) of
//! every cgroup hierarchy the host mounts (cgroup2 and, on hybrid hosts, each v1 controller's),
//! an init that is pid 1 of its own PID namespace, a mount namespace whose root is a tmpfs of
//! a known size, and optionally the host side of its first NIC, the veth `veth<ctid>i0` (peer
//! `veth<ctid>p0`, both up without IPv6, so their counters move only by what is sent).
//!
//! `pve-test-container CTID [--rootfs-mib N] [--memory-mib N] [--touch-mib N] [--file-bytes N]
//! [--veth]` prints `started pid=<init's host pid>` once everything is in place and stays until
//! SIGTERM/SIGINT, then kills the init and removes its cgroups and veth.

use std::{
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    pub ctid: u32,
    /// Size of the root tmpfs.
    pub rootfs_mib: u64,
    /// The cgroup memory limit (memory.max / memory.limit_in_bytes).
    pub memory_mib: u64,
    /// Memory the init touches (anonymous, charged to the cgroup).
    pub touch_mib: u64,
    /// Bytes of the one file written to the root tmpfs.
    pub file_bytes: u64,
    pub veth: bool,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self { ctid: 0, rootfs_mib: 64, memory_mib: 512, touch_mib: 8, file_bytes: 1 << 20, veth: false }
    }
}

pub fn parse_container_args(args: &[String]) -> Result<ContainerConfig, String> {
    let mut c = ContainerConfig::default();
    let mut it = args.iter();
    let num = |opt: &str, v: Option<&String>| -> Result<u64, String> {
        v.ok_or_else(|| format!("{opt}: missing value"))?.parse().map_err(|_| format!("{opt}: not a number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rootfs-mib" => c.rootfs_mib = num(a, it.next())?,
            "--memory-mib" => c.memory_mib = num(a, it.next())?,
            "--touch-mib" => c.touch_mib = num(a, it.next())?,
            "--file-bytes" => c.file_bytes = num(a, it.next())?,
            "--veth" => c.veth = true,
            id if c.ctid == 0 && id.parse::<u32>().is_ok_and(|n| n >= 100) => c.ctid = id.parse().unwrap_or(0),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if c.ctid == 0 {
        return Err("a container id (>= 100) is required".into());
    }
    if c.rootfs_mib == 0 || c.file_bytes > c.rootfs_mib << 20 {
        return Err("--rootfs-mib must be > 0 and hold --file-bytes".into());
    }
    Ok(c)
}

/// Every cgroup mount of the host: (mount point, is cgroup2, v1 controllers).
fn cgroup_mounts() -> Result<Vec<(PathBuf, bool, Vec<String>)>> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        let (Some(mp), Some(ty)) = (f.get(4), f.get(sep + 1)) else { continue };
        match *ty {
            "cgroup2" => out.push((PathBuf::from(mp), true, Vec::new())),
            "cgroup" => {
                let ctrl: Vec<String> = f
                    .get(sep + 3)
                    .unwrap_or(&"")
                    .split(',')
                    .filter(|o| ["cpu", "cpuacct", "memory", "blkio", "pids", "freezer"].contains(o))
                    .map(str::to_string)
                    .collect();
                if !ctrl.is_empty() {
                    out.push((PathBuf::from(mp), false, ctrl));
                }
            }
            _ => {}
        }
    }
    if out.is_empty() {
        bail!("no cgroup file system is mounted");
    }
    Ok(out)
}

/// The container's cgroups and veth; removed when dropped.
struct Layout {
    dirs: Vec<PathBuf>,
    veth: Option<String>,
}

impl Drop for Layout {
    fn drop(&mut self) {
        // Children first: ns, then lxc/<ctid>. A cgroup with processes cannot go: the caller
        // killed the init before, and a killed process leaves its cgroup once reaped, which
        // may take a moment when its parent is gone too.
        for d in self.dirs.iter().rev() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while fs::remove_dir(d).is_err() && d.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        if let Some(v) = &self.veth {
            let _ = Command::new("ip").args(["link", "del", v]).status();
        }
    }
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    fs::write(path, text).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Build the container and wait for a signal. Runs as root.
pub fn run_container(c: &ContainerConfig) -> Result<()> {
    let ctid = c.ctid;
    let mut layout = Layout { dirs: Vec::new(), veth: None };
    let mut ns_dirs = Vec::new();
    for (mount, v2, ctrl) in cgroup_mounts()? {
        let lxc = mount.join("lxc");
        if v2 {
            // Hand the controllers cgroup2 has down to lxc/ and lxc/<ctid> (best effort: on a
            // hybrid host cgroup2 has none of them).
            let _ = write(&mount.join("cgroup.subtree_control"), "+cpu +memory +io +pids");
        }
        if !lxc.exists() {
            fs::create_dir(&lxc).with_context(|| format!("creating {}", lxc.display()))?;
        }
        if v2 {
            let _ = write(&lxc.join("cgroup.subtree_control"), "+cpu +memory +io +pids");
        }
        let ct = lxc.join(ctid.to_string());
        if ct.exists() {
            // Left over from a run that was killed: empty cgroups go; one with processes is a
            // container that runs.
            let _ = fs::remove_dir(ct.join("ns"));
            if fs::remove_dir(&ct).is_err() {
                bail!("{} exists: is container {ctid} running already?", ct.display());
            }
        }
        fs::create_dir(&ct).with_context(|| format!("creating {}", ct.display()))?;
        layout.dirs.push(ct.clone());
        let limit = (c.memory_mib << 20).to_string();
        if v2 {
            let _ = write(&ct.join("cgroup.subtree_control"), "+cpu +memory +io +pids");
            if ct.join("memory.max").exists() {
                write(&ct.join("memory.max"), &limit)?;
            }
        } else if ctrl.iter().any(|c| c == "memory") {
            write(&ct.join("memory.limit_in_bytes"), &limit)?;
        }
        let ns = ct.join("ns");
        fs::create_dir(&ns).with_context(|| format!("creating {}", ns.display()))?;
        layout.dirs.push(ns.clone());
        ns_dirs.push(ns);
    }
    if c.veth {
        let host = format!("veth{ctid}i0");
        let peer = format!("veth{ctid}p0");
        let _ = Command::new("ip").args(["link", "del", &host]).stderr(std::process::Stdio::null()).status();
        let st = Command::new("ip").args(["link", "add", &host, "type", "veth", "peer", "name", &peer]).status()?;
        if !st.success() {
            bail!("ip link add {host}: {st}");
        }
        layout.veth = Some(host.clone());
        for dev in [&host, &peer] {
            write(Path::new(&format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6")), "1")?;
            let st = Command::new("ip").args(["link", "set", dev, "up"]).status()?;
            if !st.success() {
                bail!("ip link set {dev} up: {st}");
            }
        }
    }

    // The init: pid 1 of a new PID namespace, in a new mount namespace rooted in a tmpfs. A
    // middle process makes the namespaces and forks it, so that this one stays in the host's
    // PID namespace and can still start `ip` to clean up once the init is gone.
    let (mut ready_r, ready_w) = pipe()?;
    let (go_r, mut go_w) = pipe()?;
    let (mut pid_r, mut pid_w) = pipe()?;
    // SAFETY: fork(2) in a single-threaded process; the child only makes system calls.
    let middle = unsafe { libc::fork() };
    if middle < 0 {
        return Err(io::Error::last_os_error()).context("fork");
    }
    if middle == 0 {
        drop(ready_r);
        drop(go_w);
        drop(pid_r);
        let code = match middle_process(c, go_r, ready_w, &mut pid_w) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("pve-test-container: {e:#}");
                1
            }
        };
        // SAFETY: ending the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    drop(go_r);
    drop(ready_w);
    drop(pid_w);
    let mut pid_text = String::new();
    let r = (|| -> Result<libc::pid_t> {
        // One line: the write end stays open in the init too, so no end of file comes.
        io::BufRead::read_line(&mut io::BufReader::new(&mut pid_r), &mut pid_text).context("the init's pid")?;
        let pid: libc::pid_t = pid_text.trim().parse().context("the init's pid")?;
        for ns in &ns_dirs {
            write(&ns.join("cgroup.procs"), &pid.to_string())?;
        }
        go_w.write_all(b"g")?;
        drop(go_w);
        let mut b = [0u8; 1];
        ready_r.read_exact(&mut b).context("the container's init did not get ready")?;
        Ok(pid)
    })();
    let pid = match r {
        Ok(pid) => pid,
        Err(e) => {
            if let Ok(pid) = pid_text.trim().parse() {
                kill_and_reap_init(pid, middle);
            }
            return Err(e);
        }
    };
    // Blocked before the test hears of the container: a SIGTERM right after "started" (a test
    // that stops the container at once) would otherwise end this process by its default
    // action before the mask is set, and leave the init and the middle process running for
    // good (seen: a leaked container in the next test's scrape).
    block_stop_signals();
    println!("started pid={pid}");
    let _ = io::stdout().flush();
    wait_for_signal();
    kill_and_reap_init(pid, middle);
    drop(layout);
    let _ = fs::remove_dir(format!("/tmp/pve-test-container-{ctid}"));
    Ok(())
}

/// Make the namespaces, fork the init, report its (host) pid and wait for it.
fn middle_process(c: &ContainerConfig, go: fs::File, ready: fs::File, pid_w: &mut fs::File) -> Result<()> {
    // Ctrl-C reaches the whole process group: this one stays to reap the init, which the
    // parent kills.
    // SAFETY: ignoring two signals in this single-threaded process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    // SAFETY: unshare(2) of this (single-threaded) process's namespaces for its next child.
    if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID) } != 0 {
        return Err(io::Error::last_os_error()).context("unshare");
    }
    // SAFETY: as the fork above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        let code = match init(c, go, ready) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("pve-test-container init: {e:#}");
                1
            }
        };
        // SAFETY: as above.
        unsafe { libc::_exit(code) };
    }
    drop((go, ready));
    pid_w.write_all(format!("{pid}\n").as_bytes())?;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    Ok(())
}

fn kill_and_reap_init(pid: libc::pid_t, middle: libc::pid_t) {
    // SAFETY: kill the init (the middle process's child) and reap the middle process, ours.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(middle, std::ptr::null_mut(), 0);
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: filling a zeroed sigset_t with the libc calls made for it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Block SIGTERM and SIGINT (kept pending for [`wait_for_signal`]), and have the parent's
/// death send SIGTERM (PR_SET_PDEATHSIG).
fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: signal mask of this (single) thread; prctl on this process.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
}

/// Wait for SIGTERM or SIGINT, blocked before by [`block_stop_signals`].
fn wait_for_signal() {
    let set = stop_signals();
    let mut sig = 0;
    // SAFETY: sigwait on a valid set, the signals in it blocked.
    unsafe { libc::sigwait(&set, &mut sig) };
}

fn pipe() -> Result<(fs::File, fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe");
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fresh descriptors from pipe2, owned from here on.
    Ok(unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) })
}

/// The init, once its parent put it in the cgroups: root tmpfs, memory, file, then sleep.
fn init(c: &ContainerConfig, mut go: fs::File, mut ready: fs::File) -> Result<()> {
    let mut b = [0u8; 1];
    go.read_exact(&mut b).context("waiting to be placed in the cgroups")?;
    // SAFETY: plain mount(2)/chroot(2)/chdir(2) calls with valid C strings.
    unsafe {
        let none = c"none".as_ptr();
        if libc::mount(none, c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return Err(io::Error::last_os_error()).context("making / private");
        }
    }
    let root = PathBuf::from(format!("/tmp/pve-test-container-{}", c.ctid));
    fs::create_dir_all(&root)?;
    let opts = std::ffi::CString::new(format!("size={}m,mode=755", c.rootfs_mib))?;
    let target = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())?;
    // SAFETY: as above.
    unsafe {
        if libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, opts.as_ptr().cast()) != 0 {
            return Err(io::Error::last_os_error()).context("mounting the root tmpfs");
        }
        if libc::chroot(target.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
            return Err(io::Error::last_os_error()).context("chroot into the root tmpfs");
        }
    }
    fs::write("/data", vec![0x5a; c.file_bytes as usize]).context("writing /data")?;
    // Anonymous memory, touched page by page so it is charged now.
    let mut mem = vec![0u8; (c.touch_mib << 20) as usize];
    for i in (0..mem.len()).step_by(4096) {
        mem[i] = 1;
    }
    std::hint::black_box(&mem);
    ready.write_all(b"r")?;
    drop(ready);
    loop {
        // SAFETY: pause(2) has no preconditions.
        unsafe { libc::pause() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let c = parse_container_args(&s(&["101", "--rootfs-mib", "32", "--veth"])).unwrap();
        assert_eq!((c.ctid, c.rootfs_mib, c.veth), (101, 32, true));
        assert!(parse_container_args(&s(&[])).is_err());
        assert!(parse_container_args(&s(&["5"])).is_err());
        assert!(parse_container_args(&s(&["101", "--rootfs-mib"])).is_err());
        assert!(parse_container_args(&s(&["101", "--rootfs-mib", "1", "--file-bytes", "9999999"])).is_err());
    }
}
