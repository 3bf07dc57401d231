//! Real QEMU VMs for the NIC and disk tests: `qemu-system-x86_64 -accel tcg -S` with a
//! PVE-shaped command line under a test host root, disks made with qemu-img, tap NICs, a loop
//! device; plus the `qm` test double and a scrape parser.
#![allow(dead_code)] // each test uses a different part

pub mod qmp_client;

use std::{
    os::unix::{fs::symlink, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub const QM_DOUBLE: &str = env!("CARGO_BIN_EXE_pve-test-qm");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The LD_PRELOAD shim that hides `-id` from Debian's QEMU (tests/support/hide_id.c), built
/// once per test run with the system's C compiler.
pub fn hide_id_shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/hide_id.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hide-id-{}.so", std::process::id()));
        run(Command::new("cc").args(["-shared", "-fPIC", "-O2", "-Wall", "-o"]).arg(&out).arg(&src));
        out
    })
}

/// Make the host root see the real file system at the path of the root itself, so that image
/// paths QEMU reports (`/tmp/.tmpXYZ/var/lib/vz/...`) resolve below `--root` too.
pub fn link_own_path(root: &Path) {
    let first = root.components().nth(1).expect("an absolute temp dir");
    let link = root.join(first);
    if !link.exists() {
        symlink(Path::new("/").join(first), link).expect("symlink");
    }
}

/// A loop device over a file, detached when dropped; `<root>/dev/loopN` links to it.
pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn new(root: &Path, file: &Path, size: u64) -> Loop {
        std::fs::File::create(file).and_then(|f| f.set_len(size)).expect("loop image");
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(file)).trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "{dev}");
        std::fs::create_dir_all(root.join("dev")).expect("mkdir dev");
        symlink(&dev, root.join(dev.trim_start_matches('/'))).expect("symlink loop");
        Loop { dev }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Options of a test VM.
#[derive(Default)]
pub struct VmSpec {
    /// A raw disk on this block device (`virtio1`).
    pub block_device: Option<String>,
    /// No balloon device (PVE's `balloon: 0`); by default there is PVE's `balloon0`.
    pub no_balloon: bool,
    /// UEFI firmware as PVE 8 (`-drive if=pflash`) or PVE 9 (`-blockdev` + `-machine
    /// pflash0=,pflash1=`) passes it: a 2 MiB code ROM and an EFI vars disk.
    pub uefi: Option<Pve>,
    /// A PVE 9 `-blockdev` drive whose protocol node has no file name (`null-co`, standing in
    /// for iSCSI, NBD, RBD), attached as scsi2.
    pub null_disk: bool,
}

/// Which PVE generation's command-line layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pve {
    V8,
    V9,
}

/// A real QEMU process with a PVE-shaped command line, killed when dropped.
pub struct Qemu {
    pub child: Child,
    pub pid: u32,
    pub vmid: u32,
    pub socket: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mac(vmid: u32, nic: u32) -> String {
    format!("BC:24:11:{nic:02X}:{:02X}:{:02X}", vmid >> 8, vmid & 0xff)
}

impl Qemu {
    /// Images under `<root>/var/lib/vz/images/<vmid>/` (created once per vmid), the QMP socket
    /// and pid file under `<root>/var/run/qemu-server/`. NICs: net0 (tap), net1 (tap, two
    /// queues), net2 (user). Disks: scsi0 qcow2 1 GiB, virtio0 raw 64 MiB, scsi1 a PVE 9
    /// `-blockdev` throttle + qcow2 2 GiB, ide0 an ISO, ide2 an empty CD-ROM, and virtio1 on a
    /// block device when asked.
    pub fn start(root: &Path, vmid: u32, spec: &VmSpec) -> Qemu {
        let run_dir = root.join("var/run/qemu-server");
        let images = root.join(format!("var/lib/vz/images/{vmid}"));
        let iso = root.join("var/lib/vz/template/iso/install.iso");
        std::fs::create_dir_all(&run_dir).expect("mkdir");
        std::fs::create_dir_all(&images).expect("mkdir");
        std::fs::create_dir_all(iso.parent().expect("dir")).expect("mkdir");
        let disk = |n: u32, ext: &str| images.join(format!("vm-{vmid}-disk-{n}.{ext}"));
        if !disk(0, "qcow2").exists() {
            run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(disk(0, "qcow2")).arg("1G"));
            run(Command::new("qemu-img").args(["create", "-q", "-f", "raw"]).arg(disk(1, "raw")).arg("64M"));
            run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(disk(2, "qcow2")).arg("2G"));
            std::fs::File::create(&iso).and_then(|f| f.set_len(4 << 20)).expect("iso");
        }
        let socket = run_dir.join(format!("{vmid}.qmp"));
        let _ = std::fs::remove_file(&socket);
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.arg0("/usr/bin/kvm")
            .env("LD_PRELOAD", hide_id_shim())
            .args(["-id", &vmid.to_string(), "-name", &format!("vm{vmid},debug-threads=on"), "-no-shutdown"])
            .args(["-chardev", &format!("socket,id=qmp,path={},server=on,wait=off", path(&socket))])
            .args(["-mon", "chardev=qmp,mode=control"])
            .args(["-pidfile", &path(&run_dir.join(format!("{vmid}.pid")))])
            .args(["-smp", "1,sockets=1,cores=1,maxcpus=1", "-nodefaults", "-display", "none", "-m", "64"])
            .args(["-accel", "tcg", "-S", "-cpu", "qemu64"])
            // PVE's balloon device, where its config does not say `balloon: 0`.
            .args(if spec.no_balloon {
                &[][..]
            } else {
                &["-device", "virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x3,free-page-reporting=on"][..]
            })
            .args(["-netdev", &format!("type=tap,id=net0,ifname=tap{vmid}i0,script=no,downscript=no")])
            .args(["-device", &format!("virtio-net-pci,mac={},netdev=net0,id=net0", mac(vmid, 0))])
            .args([
                "-netdev",
                &format!("type=tap,id=net1,ifname=tap{vmid}i1,script=no,downscript=no,queues=2,vhost=off"),
            ])
            .args(["-device", &format!("virtio-net-pci,mac={},netdev=net1,id=net1,mq=on,vectors=6", mac(vmid, 1))])
            .args(["-netdev", "type=user,id=net2"])
            .args(["-device", &format!("e1000,mac={},netdev=net2,id=net2", mac(vmid, 2))])
            .args(["-device", "virtio-scsi-pci,id=scsihw0"])
            .args([
                "-drive",
                &format!(
                    "file={},if=none,id=drive-scsi0,format=qcow2,cache=none,discard=on,detect-zeroes=unmap",
                    path(&disk(0, "qcow2"))
                ),
            ])
            .args(["-device", "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0,id=scsi0"])
            .args([
                "-drive",
                &format!(
                    "file={},if=none,id=drive-virtio0,format=raw,cache=writeback,detect-zeroes=on",
                    path(&disk(1, "raw"))
                ),
            ])
            .args(["-device", "virtio-blk-pci,drive=drive-virtio0,id=virtio0"])
            .args(["-object", "throttle-group,id=throttle-drive-scsi1"])
            .args([
                "-blockdev",
                &serde_json::json!({
                    "driver": "throttle", "throttle-group": "throttle-drive-scsi1", "node-name": "drive-scsi1",
                    "file": {"driver": "qcow2", "file": {"driver": "file", "filename": path(&disk(2, "qcow2"))}}
                })
                .to_string(),
            ])
            .args(["-device", "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=1,lun=1,drive=drive-scsi1,id=scsi1"])
            .args(["-drive", &format!("file={},if=none,id=drive-ide0,media=cdrom,format=raw", path(&iso))])
            .args(["-device", "ide-cd,bus=ide.0,unit=0,drive=drive-ide0,id=ide0"])
            .args([
                "-drive",
                "if=none,id=drive-ide2,media=cdrom",
                "-device",
                "ide-cd,bus=ide.1,unit=0,drive=drive-ide2,id=ide2",
            ]);
        if let Some(pve) = spec.uefi {
            // OVMF_CODE's stand-in (QEMU needs a multiple of the flash sector size, not OVMF),
            // and the EFI vars disk, 528 KiB as PVE's 4m vars.
            let code = root.join("usr/share/pve-edk2-firmware/OVMF_CODE_4M.secboot.fd");
            std::fs::create_dir_all(code.parent().expect("dir")).expect("mkdir");
            std::fs::File::create(&code).and_then(|f| f.set_len(2 << 20)).expect("code");
            let vars = images.join(format!("vm-{vmid}-disk-3.raw"));
            std::fs::File::create(&vars).and_then(|f| f.set_len(528 << 10)).expect("vars");
            match pve {
                Pve::V8 => {
                    cmd.args(["-drive", &format!("if=pflash,unit=0,format=raw,readonly=on,file={}", path(&code))])
                        .args([
                            "-drive",
                            &format!("if=pflash,unit=1,id=drive-efidisk0,format=raw,file={},size=540672", path(&vars)),
                        ]);
                }
                Pve::V9 => {
                    cmd.args(["-object", "throttle-group,id=throttle-drive-efidisk0"])
                        .args([
                            "-blockdev",
                            &serde_json::json!({
                                "driver": "raw", "file": {"driver": "file", "filename": path(&code)},
                                "node-name": "pflash0", "read-only": true
                            })
                            .to_string(),
                        ])
                        .args([
                            "-blockdev",
                            &serde_json::json!({
                                "driver": "throttle", "throttle-group": "throttle-drive-efidisk0",
                                "node-name": "drive-efidisk0",
                                "file": {"driver": "raw", "size": 540_672, "file": {"driver": "file", "filename": path(&vars)}}
                            })
                            .to_string(),
                        ])
                        .args(["-machine", "pc,pflash0=pflash0,pflash1=drive-efidisk0"]);
                }
            }
        }
        if spec.null_disk {
            cmd.args(["-object", "throttle-group,id=throttle-drive-scsi2"])
                .args([
                    "-blockdev",
                    &serde_json::json!({
                        "driver": "throttle", "throttle-group": "throttle-drive-scsi2", "node-name": "drive-scsi2",
                        "file": {"driver": "raw", "file": {"driver": "null-co", "size": 1_048_576}}
                    })
                    .to_string(),
                ])
                .args(["-device", "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=2,lun=2,drive=drive-scsi2,id=scsi2"]);
        }
        if let Some(dev) = &spec.block_device {
            cmd.args(["-drive", &format!("file={dev},if=none,id=drive-virtio1,format=raw,cache=none")])
                .args(["-device", "virtio-blk-pci,drive=drive-virtio1,id=virtio1"]);
        }
        let log = root.join(format!("qemu-{vmid}.log"));
        let stderr = std::fs::File::create(&log).expect("QEMU log");
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn().expect("start QEMU");
        let pid = child.id();
        let mut q = Qemu { child, pid, vmid, socket };
        // Ready when QMP answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if q.socket.exists() && qmp_client::Client::connect(&q.socket).is_ok() {
                return q;
            }
            if let Ok(Some(st)) = q.child.try_wait() {
                panic!("QEMU {vmid} exited: {st}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "QEMU {vmid} did not answer on QMP within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A human monitor command on the VM (e.g. `qemu-io drive-scsi0 "aio_read 0 4k"`).
    pub fn hmp(&self, command: &str) -> String {
        qmp_client::Client::connect(&self.socket)
            .and_then(|mut c| c.hmp(command))
            .unwrap_or_else(|e| panic!("VM {}: {command}: {e}", self.vmid))
    }
}

/// A wrapper script for `--qm-path`: the test double with its environment. Replaced
/// atomically: a `qm` the daemon starts meanwhile reads a whole script, old or new.
pub fn qm_wrapper(root: &Path, log: &Path, hang: &[u32]) -> PathBuf {
    let script = root.join("qm");
    let tmp = root.join("qm.new");
    let hang: Vec<String> = hang.iter().map(u32::to_string).collect();
    std::fs::write(
        &tmp,
        format!(
            "#!/bin/sh\nPVE_TEST_QM_ROOT='{}' PVE_TEST_QM_LOG='{}' PVE_TEST_QM_HANG='{}' exec '{}' \"$@\"\n",
            root.display(),
            log.display(),
            hang.join(","),
            QM_DOUBLE
        ),
    )
    .expect("write qm wrapper");
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, &script).expect("rename qm wrapper");
    script
}

/// One sample of a text-format scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
}

/// Parse the samples of a text-format scrape (label values may hold commas and escapes).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let (name, mut rest) = match series.split_once('{') {
            Some((n, r)) => (n, r.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut labels = Vec::new();
        while let Some((k, r)) = rest.split_once("=\"") {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => v.push('\n'),
                        Some((_, c)) => v.push(c),
                        None => {}
                    },
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            labels.push((k.trim_start_matches(',').to_string(), v));
            rest = &r[end..];
        }
        out.push(Sample { name: name.to_string(), labels, value: value.parse().expect("numeric value") });
    }
    out
}

/// The samples of `name` whose labels include `labels`.
pub fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v))).collect()
}

/// The value of the one sample of `name` with `labels`.
#[track_caller]
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let f = find(samples, name, labels);
    assert!(f.len() <= 1, "{name}{labels:?}: {} samples", f.len());
    f.first().map(|s| s.value)
}

/// Children of `pid` (pid, state) from /proc.
pub fn children(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((head, tail)) = stat.rsplit_once(')') else { continue };
        let mut f = tail.split_whitespace();
        let (Some(state), Some(ppid)) = (f.next(), f.next()) else { continue };
        if ppid.parse::<u32>().ok() == Some(pid)
            && let Some(child) = head.split_whitespace().next().and_then(|p| p.parse().ok())
        {
            out.push((child, state.chars().next().unwrap_or('?')));
        }
    }
    out
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Threads of `pid`.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}
