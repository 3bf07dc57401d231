//! Shared pieces of the live tests: a host root whose /proc and /sys are the real ones, the
//! daemon and test guests as real processes, and a minimal HTTP client.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::{fs::symlink, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_pve-exporter");
/// The KVM test guest (the `pve-test-guest` crate's binary, built beside the daemon:
/// `cargo xtask test` builds it first; by hand: `cargo build -p pve-test-guest`).
pub fn guest() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let p = Path::new(DAEMON).with_file_name("pve-test-guest");
        assert!(
            p.is_file(),
            "{} is missing: build it first with `cargo build -p pve-test-guest` (cargo xtask test does)",
            p.display()
        );
        p.to_string_lossy().into_owned()
    })
}

/// The lines of a scrape that carry `id="<id>"` from a process (everything but the `guest`
/// collector's, which a configured guest has whether it runs or not).
pub fn process_series<'a>(m: &'a str, id: &str) -> Vec<&'a str> {
    let needle = format!("id=\"{id}\"");
    m.lines().filter(|l| l.contains(&needle) && !l.starts_with("pve_guest_")).collect()
}

/// The `pve-test-container` binary beside the daemon (a container laid out as PVE's LXC does).
pub fn container_bin() -> PathBuf {
    let p = Path::new(guest()).with_file_name("pve-test-container");
    assert!(p.is_file(), "{} is missing: build it with `cargo build -p pve-test-guest --bins`", p.display());
    p
}

/// Panic with a clear message if a process on this host already claims one of `vmids`
/// (a left-over test guest, or a real VM): the live tests count per vmid.
fn require_vmids_free(vmids: &[u32]) {
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        for w in args.windows(2) {
            if w[0] == b"-id"
                && let Some(id) = std::str::from_utf8(w[1]).ok().and_then(|s| s.parse::<u32>().ok())
            {
                assert!(
                    !vmids.contains(&id),
                    "vmid {id} is already used on this host by pid {:?}; the live tests need it free",
                    e.file_name()
                );
            }
        }
    }
}

/// A host root for a live test; holds the test's vmids (see [`host_root`]) until dropped.
pub struct TestRoot {
    dir: tempfile::TempDir,
    _locks: Vec<std::fs::File>,
}

impl std::ops::Deref for TestRoot {
    type Target = tempfile::TempDir;
    fn deref(&self) -> &tempfile::TempDir {
        &self.dir
    }
}

/// Take an exclusive lock on `vmid` shared by every test process on this machine: two test
/// suites running at once (two developers, or a developer and CI on one machine) would
/// otherwise start guests with the same vmid, and each daemon would see the other's guest.
fn lock_vmid(vmid: u32) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let dir = std::env::temp_dir().join("pve-exporter-test-vmids");
    let _ = std::fs::create_dir_all(&dir);
    let f = std::fs::File::create(dir.join(format!("{vmid}.lock"))).expect("vmid lock file");
    // SAFETY: flock on a file descriptor we own; blocks until the other test releases it.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock vmid {vmid}: {}", std::io::Error::last_os_error());
    f
}

/// A host root: real /proc and /sys, our own /etc/pve with configs for `vmids`, which this
/// test holds until the root is dropped and which must not be in use by anything else.
pub fn host_root(vmids: &[u32]) -> TestRoot {
    let mut sorted = vmids.to_vec();
    sorted.sort_unstable(); // one lock order for everybody: no deadlock between tests
    let locks = sorted.iter().map(|&id| lock_vmid(id)).collect();
    require_vmids_free(vmids);
    let dir = tempfile::tempdir().expect("tempdir");
    symlink("/proc", dir.path().join("proc")).expect("symlink proc");
    symlink("/sys", dir.path().join("sys")).expect("symlink sys");
    std::fs::create_dir_all(dir.path().join("etc/pve/qemu-server")).expect("mkdir");
    for id in vmids {
        std::fs::write(dir.path().join(format!("etc/pve/qemu-server/{id}.conf")), "memory: 64\n").expect("conf");
    }
    TestRoot { dir, _locks: locks }
}

/// A host root like [`host_root`] without /etc/pve and with an empty `/run/libvirt/qemu`, where
/// the test writes the pid files and status XML of the domains it presents (`--vm-source auto`
/// picks libvirt there). `vmids` are only locked: the domains are named by the test.
pub fn libvirt_root(vmids: &[u32]) -> TestRoot {
    let root = host_root(vmids);
    std::fs::remove_dir_all(root.path().join("etc")).expect("rm etc");
    std::fs::create_dir_all(root.path().join("run/libvirt/qemu")).expect("mkdir run/libvirt/qemu");
    root
}

/// A host root with neither /etc/pve nor libvirt: `--vm-source auto` picks plain QEMU.
pub fn plain_root(vmids: &[u32]) -> TestRoot {
    let root = host_root(vmids);
    std::fs::remove_dir_all(root.path().join("etc")).expect("rm etc");
    root
}

pub fn require_privileges() {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && Path::new("/dev/kvm").exists(),
        "this test needs root and /dev/kvm (it runs real KVM guests and loads BPF programs); \
         run the suite as root on a KVM host, as `cargo xtask test` on the CI machine does"
    );
}

/// Kills the process when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Daemon {
    pub proc: Proc,
    pub port: u16,
    /// Every line the daemon logged so far (each is also forwarded to the test's stderr): the
    /// fault tests check what an operator reads in the journal.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Start the daemon on a port the kernel picks (`--port 0`) and learn it from the daemon's
    /// "listening on" line: a port picked here and handed over could be taken by another
    /// test's daemon in between, and the test would then talk to the wrong daemon.
    pub fn start(root: &Path, extra: &[&str]) -> Daemon {
        Self::start_with(root, extra, |_| {})
    }

    /// [`Daemon::start`], with `configure` applied to the command before it is spawned (a
    /// `pre_exec` that changes the process's limits, capabilities or mounts).
    pub fn start_with(root: &Path, extra: &[&str], configure: impl FnOnce(&mut Command)) -> Daemon {
        let mut cmd = Command::new(DAEMON);
        configure(&mut cmd);
        let mut child = cmd
            .arg("--root")
            .arg(root)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--loglevel", "INFO"])
            // These tests look for the effect of each change in the very next scrape; the
            // minimum interval between collections has its own test, with its default.
            .env("PVE_EXPORTER_MIN_COLLECTION_INTERVAL", "0")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pve-exporter");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        // Forward the daemon's log (the test harness shows it for failed tests), keep it for
        // the test, and report the port.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(addr) = rest.split("://").nth(1)
                    && let Some(port) = addr.split_whitespace().next().and_then(|a| a.rsplit(':').next())
                    && let Ok(port) = port.parse::<u16>()
                {
                    let _ = tx.send(port);
                }
                eprintln!("[pve-exporter] {line}");
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut proc = Proc(child);
        let port = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(port) => break port,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = proc.0.try_wait() {
                        panic!("pve-exporter exited during start-up: {st}");
                    }
                }
                Err(e) => panic!("pve-exporter did not say where it listens: {e}"),
            }
        };
        let d = Daemon { proc, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(d.try_get("/healthz", None), Ok((200, _, _))) {
            assert!(Instant::now() < deadline, "pve-exporter did not answer /healthz within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The daemon collects once at start-up (systemd readiness), and a scrape arriving while
        // a collection is in flight shares it: without this, a test's first scrape could show
        // the host as it was before the test started its guests.
        let _ = d.get("/metrics");
        d
    }

    /// The lines the daemon logged so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Everything the daemon logged so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Wait until the daemon logs a line containing `needle` (or has logged one already) and
    /// return it; panics with the whole log after `limit`.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.log_lines(needle).into_iter().next() {
                return l;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in the log within {limit:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET a path: (status, content type, body).
    pub fn try_get(&self, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String, String)> {
        http_get(self.port, path, accept)
    }

    pub fn get(&self, path: &str) -> String {
        let (status, _, body) = self.try_get(path, None).expect("GET");
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

pub fn http_get(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    // axum answers `Connection: close` requests with a plain body or chunks; undo chunking.
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok((status, ctype, body))
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A test guest presenting a PVE command line; returns once it has done its first burst.
pub struct Guest {
    pub proc: Proc,
    pub pid: u32,
}

impl Guest {
    pub fn start(vmid: u32, smp: u32, writes: u64, dir: &Path) -> Guest {
        let ident = ["-id".to_string(), vmid.to_string(), "-name".into(), format!("test{vmid},debug-threads=on")];
        Self::start_as("/usr/bin/kvm", &ident, vmid, smp, writes, dir)
    }

    /// A test guest with `argv0` and the identity options `ident` (libvirt's
    /// `-name guest=<name>,... -uuid <uuid>`, a plain `-name`, ...); `vmid` names its ready file.
    pub fn start_as(argv0: &str, ident: &[String], vmid: u32, smp: u32, writes: u64, dir: &Path) -> Guest {
        let ready: PathBuf = dir.join(format!("guest-{vmid}.ready"));
        // A ready file of an earlier guest with this vmid would end the wait at once.
        let _ = std::fs::remove_file(&ready);
        let name = Path::new(argv0).file_name().and_then(|n| n.to_str()).unwrap_or("qemu-system-x86_64");
        let child = Command::new(guest_named(name))
            .arg0(argv0)
            .args(ident)
            .args(["-smp", &smp.to_string(), "-m", "32", "-cpu", "host"])
            .args(["-pio-writes", &writes.to_string()])
            .arg("-ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pve-test-guest");
        let pid = child.id();
        let mut g = Guest { proc: Proc(child), pid };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                assert_eq!(text.trim(), format!("done {}", writes * u64::from(smp)), "guest {vmid} report");
                return g;
            }
            if let Ok(Some(st)) = g.proc.0.try_wait() {
                panic!("test guest {vmid} exited early: {st}");
            }
            assert!(Instant::now() < deadline, "test guest {vmid} did not finish its writes within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The test guest's binary under the name `name` (`kvm`, `qemu-system-x86_64`): plain-QEMU
/// discovery reports only processes whose executable is a QEMU binary, and `/proc/<pid>/exe`
/// names the file run, whatever argv[0] says. A hard link next to the guest binary (the same
/// file system), replaced by each call so that it is always this build's.
pub fn guest_named(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(guest()).parent().expect("guest dir").join("qemu-named");
    std::fs::create_dir_all(&dir).expect("mkdir qemu-named");
    let link = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(guest(), &tmp).expect("hard link of the test guest");
    std::fs::rename(&tmp, &link).expect("rename the guest link");
    // rename(2) does nothing when both names are links of one file already.
    let _ = std::fs::remove_file(&tmp);
    link
}

/// `pve_exporter_collector_success{collector=c}` of a scrape.
pub fn collector_success(text: &str, c: &str) -> Option<f64> {
    sample(text, "pve_exporter_collector_success", &[("collector", c)])
}

/// Write `text` to `rel` below `root`, making its directories.
pub fn write_below(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, text).expect("write");
}

/// The value of the sample `name{labels}` in a text-format scrape; labels must match exactly
/// those given (in any order), other labels of the sample are ignored.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, lbls) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| lbls.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if all { value.parse().ok() } else { None }
    })
}

/// `(comm, [run ns, wait ns, timeslices])` of every thread of `pid`, from the real /proc.
pub fn thread_schedstats(pid: u32) -> Vec<(String, [u64; 3])> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir").flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim_end().to_string();
        let Ok(text) = std::fs::read_to_string(e.path().join("schedstat")) else { continue };
        let v: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        if let [run, wait, slices, ..] = v[..] {
            out.push((comm, [run, wait, slices]));
        }
    }
    out
}

/// `promtool check metrics` (Prometheus' own linter) accepts `text` without a remark.
pub fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: `cargo xtask setup` installs it (Debian package prometheus)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Send `n` Ethernet frames of `len` bytes out of `ifname` (an experimental ethertype nobody
/// answers).
pub fn send_frames(ifname: &str, n: usize, len: usize) {
    let name = std::ffi::CString::new(ifname).expect("name");
    // SAFETY: plain libc calls on a socket we own and close; the buffers outlive the calls.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index > 0, "{ifname}: no such interface");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        let mut frame = vec![0u8; len];
        frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]);
        for _ in 0..n {
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(sent, len as isize, "sendto {ifname}: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

/// Wait until network interface `dev` is operationally up: frames sent before the link watch
/// has attached its queueing discipline are dropped without being counted.
pub fn wait_until_up(dev: &str) {
    let path = format!("/sys/class/net/{dev}/operstate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&path).map(|s| s.trim() != "up").unwrap_or(true) {
        assert!(Instant::now() < deadline, "{dev} did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running test container; killed (and its cgroups and veth removed) when dropped.
pub struct Ct {
    proc: Option<Proc>,
    pub pid: u32,
}

impl Ct {
    pub fn start(ctid: u32, args: &[&str]) -> Ct {
        let mut child = Command::new(container_bin())
            .arg(ctid.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pve-test-container");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("read");
        let pid = line.trim().strip_prefix("started pid=").and_then(|p| p.parse().ok());
        let proc = Proc(child);
        let Some(pid) = pid else { panic!("pve-test-container {ctid} did not start: {line:?}") };
        Ct { proc: Some(proc), pid }
    }

    /// Stop it as `pct stop` would, and wait until its cgroups are gone.
    pub fn stop(&mut self, h: &pve_exporter::sources::kernel::cgroup::Hierarchies, ctid: u32) {
        if let Some(mut p) = self.proc.take() {
            // SAFETY: SIGTERM to our own child: it kills its init and removes the cgroups.
            unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
            let _ = p.0.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.lxc_dirs().iter().any(|d| d.join(ctid.to_string()).exists()) {
            assert!(Instant::now() < deadline, "the cgroups of {ctid} were not removed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ct {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // SAFETY: as in stop().
            unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
            let _ = p.0.wait();
        }
    }
}

/// The mount points of cgroup2 in this process's /proc/self/mountinfo.
pub fn cgroup2_mounts() -> Vec<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split(' ').next()? != "cgroup2" {
                return None;
            }
            Some(std::path::PathBuf::from(left.split(' ').nth(4)?))
        })
        .collect()
}

/// The (first) cgroup2 mount point.
pub fn cgroup2_mount() -> std::path::PathBuf {
    cgroup2_mounts().into_iter().next().expect("this test needs a cgroup v2 mount")
}
