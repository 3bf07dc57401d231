//! "Trust only what root says", with the real daemon and real processes, at production
//! defaults: an unprivileged process (user `nobody`) posing as QEMU, with a FIFO, /etc/shadow
//! and a root-only file as drives and `-id ../x`, is neither opened nor reported nor does it
//! stop the daemon from answering; neither is a root process whose executable is not QEMU on a
//! plain-QEMU host. Beside them a root process with a QEMU-named executable is reported, with
//! its drives' sizes, so the daemon demonstrably looks. Needs root (to start processes as
//! `nobody`); vmid locks 280-282.

mod common;

use std::{
    fs,
    io::Read,
    os::unix::{
        fs::{OpenOptionsExt, PermissionsExt},
        net::UnixListener,
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
};

use common::{Daemon, Proc, host_root, plain_root, sample};

const NOBODY: u32 = 65534;

fn require_root() {
    // SAFETY: no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "this test starts processes as nobody: run the suite as root, as CI does");
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o666) },
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// inotify on one file (a FIFO too): whether anybody opened it since. Events queue from the
/// watch on, so an open before the first look is not missed; an open that blocks (a FIFO
/// without writer, opened without O_NONBLOCK) is no event, but then the daemon hangs and the
/// scrape fails.
struct OpenWatch(std::fs::File);

impl OpenWatch {
    fn new(path: &Path) -> OpenWatch {
        use std::os::fd::FromRawFd;
        // SAFETY: plain inotify calls; the fd is owned right away.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nobody else owns.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: our inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS) };
        assert!(wd >= 0, "inotify_add_watch: {}", std::io::Error::last_os_error());
        OpenWatch(f)
    }

    fn opened(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        matches!(self.0.read(&mut buf), Ok(n) if n > 0)
    }
}

/// A process that sleeps in `read` (a shell waiting on a pipe nobody writes) with the argv
/// `argv0 args...`, running `exe`, as `uid` (None: as root).
fn poser(exe: &Path, argv0: &str, args: &[&str], uid: Option<u32>) -> (Proc, ChildStdin) {
    let mut c = Command::new(exe);
    c.arg0(argv0).args(["-c", "read x"]).args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(uid) = uid {
        c.uid(uid).gid(uid);
    }
    // A copy of the shell just written may still be open in a process another test thread is
    // forking at this moment (ETXTBSY until that child execs): try again briefly.
    let mut tries = 0;
    let child = loop {
        match c.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.expect("start the poser"),
        }
    };
    let mut child = Proc(child);
    let stdin = child.0.stdin.take().expect("stdin");
    let pid = child.0.id();
    // Its new command line is in place before the daemon looks (spawn returns while execve
    // still sets it up).
    let want = format!("{argv0}\0");
    let mut cmdline = Vec::new();
    for _ in 0..1000 {
        cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        if cmdline.starts_with(want.as_bytes()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(cmdline.starts_with(want.as_bytes()), "pid {pid} runs {:?}", String::from_utf8_lossy(&cmdline));
    (child, stdin)
}

/// A directory everybody may enter, with a copy of the shell named `qemu-system-x86_64` (an
/// executable QEMU's name: only the owner rule can stop a process running it).
fn workdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let qemu = dir.path().join("qemu-system-x86_64");
    fs::copy("/bin/dash", &qemu).expect("copy dash");
    fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).expect("chmod");
    (dir, qemu)
}

/// A qcow2 header of an image of `size` bytes.
fn qcow2(path: &Path, size: u64) {
    let mut h = b"QFI\xfb\0\0\0\x03".to_vec();
    h.resize(24, 0);
    h.extend_from_slice(&size.to_be_bytes());
    fs::write(path, h).expect("qcow2 header");
}

fn forbidden_in(m: &str, needles: &[&str]) {
    for n in needles {
        assert!(!m.contains(n), "{n:?} appears in the scrape:\n{m}");
    }
}

/// The watch sees what it is to see: a non-blocking open of a FIFO for reading, closed at once
/// (as the daemon would), and an open of a file.
#[test]
fn the_watch_sees_an_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    mkfifo(&dir.path().join("f"));
    let mut w = OpenWatch::new(&dir.path().join("f"));
    assert!(!w.opened());
    drop(fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(dir.path().join("f")).expect("open"));
    assert!(w.opened());
    fs::write(dir.path().join("x"), "x").expect("write");
    let mut o = OpenWatch::new(&dir.path().join("x"));
    assert!(!o.opened());
    drop(fs::File::open(dir.path().join("x")).expect("open"));
    assert!(o.opened());
}

/// Plain-QEMU host (`--vm-source auto` without /etc/pve and libvirt), production defaults.
/// (The daemon sees every process of the machine, those of the other tests too: each test
/// names its files after its vmid and looks for those only.)
#[test]
fn a_user_posing_as_qemu_is_neither_opened_nor_reported() {
    require_root();
    let root = plain_root(&[280]);
    let (_work, qemu) = workdir();
    // Drives are host paths: the daemon reads them below --root. /etc/shadow is the real one.
    let img = root.path().join("img280");
    fs::create_dir_all(&img).expect("mkdir");
    fs::create_dir_all(root.path().join("etc")).expect("mkdir");
    std::os::unix::fs::symlink("/etc/shadow", root.path().join("etc/shadow")).expect("symlink");
    mkfifo(&img.join("drive.fifo"));
    mkfifo(&img.join("root.fifo"));
    let mut fifo = OpenWatch::new(&img.join("drive.fifo"));
    let mut fifo_root = OpenWatch::new(&img.join("root.fifo"));
    qcow2(&img.join("secret.qcow2"), 1 << 30);
    fs::set_permissions(img.join("secret.qcow2"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut secret_watch = OpenWatch::new(&img.join("secret.qcow2"));
    qcow2(&img.join("good.qcow2"), 3 << 30);
    let drive = |file: &str, id: &str| format!("file={file},if=none,id={id},format=qcow2");
    let (fifo_d, shadow_d, secret_d) = (
        drive("/img280/drive.fifo", "d0"),
        "file=/etc/shadow,if=none,id=d1,format=raw".to_string(),
        drive("/img280/secret.qcow2", "d2"),
    );
    let evil_args = ["-name", "evil", "-id", "../x", "-drive", &fifo_d, "-drive", &shadow_d, "-drive", &secret_d];
    // nobody, running a binary named as QEMU: stopped by the owner rule.
    let _evil = poser(&qemu, "qemu-system-x86_64", &evil_args, Some(NOBODY));
    // root, but running a shell under QEMU's name: stopped by the executable rule.
    let not_qemu_args = ["-name", "notqemu", "-drive", &fifo_d, "-drive", &shadow_d, "-drive", &secret_d];
    let _not_qemu = poser(Path::new("/bin/dash"), "/usr/bin/qemu-system-x86_64", &not_qemu_args, None);
    // root running a QEMU-named binary: a VM. Its second drive is a FIFO: an error, not a hang.
    let (good_d, root_fifo_d) = (drive("/img280/good.qcow2", "g0"), drive("/img280/root.fifo", "g1"));
    let _ok =
        poser(&qemu, "qemu-system-x86_64", &["-name", "okvm280", "-drive", &good_d, "-drive", &root_fifo_d], None);

    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    for _ in 0..3 {
        let m = daemon.get("/metrics");
        forbidden_in(&m, &["evil", "notqemu", "../x", "img280/drive.fifo", "shadow", "img280/secret"]);
        assert!(m.contains("pve_kvm_info{id=\"okvm280\""), "the root-owned QEMU process is a VM:\n{m}");
        let size = sample(&m, "pve_kvm_disk_size_bytes", &[("id", "okvm280"), ("disk_name", "g0")]);
        assert_eq!(size, Some((3u64 << 30) as f64), "its qcow2 header was read:\n{m}");
        // The FIFO of the trusted VM: refused by type, the collector says so, the scrape answers.
        assert!(m.contains("disk_path=\"/img280/root.fifo\""), "{m}");
        assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", "disk")]), Some(0.0), "{m}");
    }
    assert_eq!(daemon.try_get("/healthz", None).expect("healthz").0, 200);
    assert!(!secret_watch.opened(), "the root-only file named by untrusted processes was opened");
    assert!(!fifo.opened(), "the FIFO named by untrusted processes was opened");
    assert!(!fifo_root.opened(), "a FIFO drive is refused by stat, never opened");
}

/// PVE host: `-id` of somebody else than root, and a non-numeric `-id`, are no VMs, and their
/// monitor sockets are never connected to.
#[test]
fn pve_believes_root_and_digits_only() {
    require_root();
    let root = host_root(&[281, 282]);
    let (_work, qemu) = workdir();
    let run = root.path().join("var/run/qemu-server");
    fs::create_dir_all(&run).expect("mkdir");
    // Where the monitor would connect for each claim: `<vmid>.qmp`, and for `-id ../x` the
    // path that builds, one directory up.
    let listeners: Vec<(String, UnixListener)> = [run.join("281.qmp"), root.path().join("var/run/x.qmp")]
        .into_iter()
        .map(|p| {
            let l = UnixListener::bind(&p).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            (p.display().to_string(), l)
        })
        .collect();
    fs::create_dir_all(root.path().join("img281")).expect("mkdir");
    mkfifo(&root.path().join("img281/drive.fifo"));
    let mut fifo = OpenWatch::new(&root.path().join("img281/drive.fifo"));
    let fifo_d = "file=/img281/drive.fifo,if=none,id=drive-scsi0,format=raw".to_string();
    // nobody claims vmid 281 (whose config exists); root claims `../x`; root runs VM 282.
    let _claim = poser(&qemu, "/usr/bin/kvm", &["-id", "281", "-name", "claim281", "-drive", &fifo_d], Some(NOBODY));
    let _dotdot = poser(&qemu, "/usr/bin/kvm", &["-id", "../x", "-name", "dotdot", "-drive", &fifo_d], None);
    let _vm = poser(&qemu, "/usr/bin/kvm", &["-id", "282", "-name", "vm282"], None);

    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);
    for _ in 0..3 {
        let m = daemon.get("/metrics");
        assert!(m.contains("pve_kvm_info{id=\"282\",name=\"vm282\""), "{m}");
        forbidden_in(&m, &["claim281", "dotdot", "../x", "img281"]);
        // VM 281 is configured and the process claiming it is not believed: a stopped guest,
        // with no series of that process.
        let process_lines: Vec<&str> =
            m.lines().filter(|l| l.contains("id=\"281\"") && !l.starts_with("pve_guest_")).collect();
        assert!(process_lines.is_empty(), "{process_lines:?}");
        assert!(m.contains("pve_guest_up{id=\"281\",type=\"qemu\"} 0"), "{m}");
    }
    for (path, l) in &listeners {
        match l.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the daemon connected to {path}: {other:?}"),
        }
    }
    assert!(!fifo.opened(), "a drive of an untrusted claim was opened");
}
