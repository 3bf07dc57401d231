//! Shared pieces of the operations tests (service, web, package, prometheus): the daemon as a
//! real process with its log in a file, signals, a unix datagram socket playing systemd,
//! test certificates made by openssl, and curl as the client.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_pve-exporter");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A host root for a daemon without VMs: the real /proc and /sys, an empty /etc/pve.
pub fn plain_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/proc", dir.path().join("proc")).expect("symlink proc");
    std::os::unix::fs::symlink("/sys", dir.path().join("sys")).expect("symlink sys");
    std::fs::create_dir_all(dir.path().join("etc/pve/qemu-server")).expect("mkdir");
    std::fs::write(dir.path().join("etc/pve/user.cfg"), "").expect("user.cfg");
    dir
}

/// The daemon as a process, its stderr in a file.
pub struct Exporter {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Exporter {
    /// Start `pve-exporter --root <root> --port <free> <args>` with `env` added to its
    /// environment, on 127.0.0.1 and at log level INFO unless `args` or `env` say otherwise.
    /// Does not wait.
    pub fn spawn(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let port = free_port();
        Self::spawn_on(port, root, args, env)
    }

    pub fn spawn_on(port: u16, root: &Path, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        Self::spawn_via(&[], port, root, args, env)
    }

    /// Like [`Exporter::spawn_on`], the daemon started through `prefix` (a program that execs
    /// its arguments, such as `setpriv --bounding-set=... --`): the child is then the daemon.
    pub fn spawn_via(prefix: &[&str], port: u16, root: &Path, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join("stderr.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(DAEMON);
                c
            }
            None => Command::new(DAEMON),
        };
        cmd.arg("--root").arg(root).args(["--port", &port.to_string()]);
        cmd.args(args).stdout(Stdio::null()).stderr(file);
        // The test runner's environment must not configure the daemon behind our back.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PVE_EXPORTER_")
                || ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"]
                    .contains(&k.to_string_lossy().as_ref())
            {
                cmd.env_remove(&k);
            }
        }
        cmd.env("PVE_EXPORTER_HOST", "127.0.0.1").env("PVE_EXPORTER_LOGLEVEL", "INFO");
        // These tests look for the effect of each change in the very next scrape; the minimum
        // interval between collections has its own test, with its default.
        cmd.env("PVE_EXPORTER_MIN_COLLECTION_INTERVAL", "0");
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().expect("start pve-exporter");
        Exporter { child, port, log, _logdir: logdir }
    }

    /// Start and wait until the first collection is done (the `ready:` log line).
    pub fn start(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let mut e = Self::spawn(root, args, env);
        e.wait_for_log("ready: first collection", Duration::from_secs(30));
        e
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`; panics with the log when it does not in time or
    /// the daemon exits.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("pve-exporter exited ({st}) before logging {needle:?}:\n{logs}");
            }
            assert!(Instant::now() < deadline, "no {needle:?} in the log within {limit:?}:\n{logs}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "pve-exporter still running after {limit:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A unix datagram socket in the role of systemd's notify socket.
pub struct NotifySocket {
    pub sock: UnixDatagram,
    /// The `NOTIFY_SOCKET` value for the daemon.
    pub address: String,
    _dir: Option<tempfile::TempDir>,
}

impl NotifySocket {
    pub fn path() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket { sock, address: path.to_string_lossy().into_owned(), _dir: Some(dir) }
    }

    pub fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("pve-exporter-test/{}/{}", std::process::id(), free_port());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
        NotifySocket { sock, address: format!("@{name}"), _dir: None }
    }

    /// The next message, or None after `limit`.
    pub fn recv(&self, limit: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(limit)).expect("timeout");
        let mut buf = vec![0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Messages until one contains `needle` (returned last), each with its arrival time.
    pub fn until(&self, needle: &str, limit: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {needle:?} within {limit:?}; got {got:?}");
            if let Some(m) = self.recv(left) {
                let done = m.contains(needle);
                got.push((Instant::now(), m));
                if done {
                    return got;
                }
            }
        }
    }
}

/// Test PKI made with the openssl command: a CA, a server certificate for 127.0.0.1 and
/// localhost, a client certificate from the same CA and one from another CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ossl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(d).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        for ca in ["ca", "other-ca"] {
            ossl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=pve-exporter test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ]);
        }
        let leaf = |name: &str, ca: &str, ext: &str| {
            std::fs::write(d.join(format!("{name}.ext")), ext).expect("ext file");
            ossl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            ossl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ]);
        };
        leaf("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        leaf("client", "ca", "extendedKeyUsage=clientAuth\n");
        leaf("stranger", "other-ca", "extendedKeyUsage=clientAuth\n");
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_string_lossy().into_owned()
    }
}

/// curl's answer: status code (0 when there was no HTTP answer), body, curl's exit code.
pub struct CurlResult {
    pub status: u16,
    pub body: String,
    pub headers: String,
    pub exit: i32,
    pub stderr: String,
}

/// Run curl with `args` (plus `-sS`, a time limit, the headers and the status code).
pub fn curl(args: &[&str]) -> CurlResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl (package curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    CurlResult {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        exit: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A bcrypt hash for a web config (cost 4: the tests check behaviour, not strength).
pub fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

/// Raise the soft RLIMIT_NOFILE to the hard one (at most 16,384): the attack tests hold
/// thousands of connections.
pub fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls with valid structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(16384);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0, "RLIMIT_NOFILE");
    }
    assert!(lim.rlim_cur >= 4096, "this test needs 4096 descriptors (RLIMIT_NOFILE hard limit {})", lim.rlim_max);
}

/// Whether the other end closed (or reset) the connection, without reading from it.
pub fn closed_by_peer(s: &TcpStream) -> bool {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) };
    p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// One HTTP/1.1 response on a kept-alive connection: (status, body).
pub fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if let Some(len) =
        head.lines().find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
    {
        let mut body = vec![0; len];
        s.read_exact(&mut body)?;
        body
    } else {
        // Chunked: size lines and chunks up to the empty one.
        let mut body = Vec::new();
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                if s.read(&mut byte)? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                line.push(byte[0]);
            }
            let n = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            let mut chunk = vec![0; n + 2];
            s.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body
    };
    Ok((status, body))
}
