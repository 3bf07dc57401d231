//! Shared pieces of the live tests: a host root whose /proc and /sys are the real ones, the
//! daemon and test guests as real processes, and a minimal HTTP client.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::{fs::symlink, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_pve-exporter");
pub const GUEST: &str = env!("CARGO_BIN_EXE_pve-test-guest");

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

/// A host root: real /proc and /sys, our own /etc/pve with configs for `vmids` (which must not
/// be in use on the host).
pub fn host_root(vmids: &[u32]) -> tempfile::TempDir {
    require_vmids_free(vmids);
    let dir = tempfile::tempdir().expect("tempdir");
    symlink("/proc", dir.path().join("proc")).expect("symlink proc");
    symlink("/sys", dir.path().join("sys")).expect("symlink sys");
    std::fs::create_dir_all(dir.path().join("etc/pve/qemu-server")).expect("mkdir");
    for id in vmids {
        std::fs::write(dir.path().join(format!("etc/pve/qemu-server/{id}.conf")), "memory: 64\n").expect("conf");
    }
    dir
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
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
}

impl Daemon {
    pub fn start(root: &Path, extra: &[&str]) -> Daemon {
        let port = free_port();
        let child = Command::new(DAEMON)
            .arg("--root")
            .arg(root)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--loglevel", "WARNING"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start pve-exporter");
        let mut d = Daemon { proc: Proc(child), port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _, _)) = d.try_get("/healthz", None) {
                return d;
            }
            if let Ok(Some(st)) = d.proc.0.try_wait() {
                panic!("pve-exporter exited during start-up: {st}");
            }
            assert!(Instant::now() < deadline, "pve-exporter did not answer /healthz within 30 s");
            std::thread::sleep(Duration::from_millis(50));
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

fn dechunk(mut s: &str) -> String {
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
        let ready: PathBuf = dir.join(format!("guest-{vmid}.ready"));
        let child = Command::new(GUEST)
            .arg0("/usr/bin/kvm")
            .args(["-id", &vmid.to_string(), "-name", &format!("test{vmid},debug-threads=on")])
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
