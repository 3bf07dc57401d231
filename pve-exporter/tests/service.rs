//! The daemon as systemd runs it: sd_notify readiness, watchdog and stopping on a real unix
//! datagram socket, graceful shutdown and its deadline, SIGHUP reloads, the journald log
//! format, and a clear error when the port is taken.

mod ops;

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::MetadataExt,
    process::Command,
    time::{Duration, Instant},
};

use ops::{Exporter, NotifySocket, bcrypt_hash, curl, plain_root};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Replace /etc/pve/user.cfg below `root` by a FIFO without writer: the next read of it hangs
/// like a read from a hung pmxcfs, until --pmxcfs-timeout.
fn hang_pmxcfs(root: &std::path::Path) {
    let cfg = root.join("etc/pve/user.cfg");
    std::fs::remove_file(&cfg).expect("remove user.cfg");
    let st = Command::new("mkfifo").arg(&cfg).status().expect("mkfifo");
    assert!(st.success());
}

/// GET in a thread: (status, body) when it answers.
fn get_in_background(port: u16, path: &'static str) -> std::thread::JoinHandle<std::io::Result<(u16, String)>> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(SECS(30)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((status, text))
    })
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let root = plain_root();
    let sock = NotifySocket::path();
    let mut e = Exporter::spawn(
        root.path(),
        &["--ebpf", "off"],
        &[("NOTIFY_SOCKET", &sock.address), ("WATCHDOG_USEC", "1500000")],
    );
    let before_ready = sock.until("READY=1", SECS(30));
    let ready = &before_ready.last().expect("READY").1;
    assert!(ready.contains(&format!("STATUS=serving on 127.0.0.1:{}", e.port)), "{ready}");
    assert!(before_ready.iter().all(|(_, m)| !m.contains("WATCHDOG")), "no watchdog ping before the first collection");
    // The first collection is done before READY: /metrics answers with data at once.
    let m = curl(&[&e.url("http", "/metrics")]);
    assert!(m.body.contains("pve_exporter_collector_success"), "{}", m.body);

    // Nobody scrapes: the daemon collects on its own and pings, well within the period.
    let mut pings = Vec::new();
    let deadline = Instant::now() + SECS(3);
    while Instant::now() < deadline {
        if let Some(msg) = sock.recv(SECS(2)) {
            assert_eq!(msg, "WATCHDOG=1");
            pings.push(Instant::now());
        }
    }
    assert!(pings.len() >= 4, "at least one ping per 0.75 s, got {} in 3 s", pings.len());
    for w in pings.windows(2) {
        assert!(w[1] - w[0] < Duration::from_millis(1500), "gap of {:?} between pings", w[1] - w[0]);
    }

    e.signal(libc::SIGTERM);
    let rest = sock.until("STOPPING=1", SECS(10));
    assert_eq!(rest.last().map(|m| m.1.as_str()), Some("STOPPING=1"));
    assert!(e.wait_exit(SECS(15)).success(), "{}", e.logs());
    assert!(e.logs().contains("SIGTERM: shutting down"), "{}", e.logs());
}

#[test]
fn abstract_notify_socket_and_a_watchdog_meant_for_another_process() {
    let root = plain_root();
    let sock = NotifySocket::abstract_name();
    // WATCHDOG_PID names another process: this one must not ping.
    let mut e = Exporter::spawn(
        root.path(),
        &["--ebpf", "off"],
        &[("NOTIFY_SOCKET", &sock.address), ("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "1")],
    );
    sock.until("READY=1", SECS(30));
    assert_eq!(sock.recv(SECS(1)), None, "no watchdog pings for another pid");
    e.signal(libc::SIGINT);
    sock.until("STOPPING=1", SECS(10));
    assert!(e.wait_exit(SECS(15)).success());
}

#[test]
fn watchdog_pings_stop_while_a_collection_hangs() {
    let root = plain_root();
    let sock = NotifySocket::path();
    let e = Exporter::spawn(
        root.path(),
        &["--ebpf", "off", "--pmxcfs-timeout", "3s"],
        &[("NOTIFY_SOCKET", &sock.address), ("WATCHDOG_USEC", "1200000")],
    );
    sock.until("READY=1", SECS(30));
    sock.until("WATCHDOG=1", SECS(5));
    // The next collection waits 3 s for the hung read: no ping meanwhile, although the
    // daemon itself is fine; systemd (WatchdogSec=1.2s) would restart it.
    hang_pmxcfs(root.path());
    let hung_at = Instant::now();
    let mut pings = vec![hung_at];
    while pings.len() < 6 {
        match sock.recv(SECS(10)) {
            Some(m) if m == "WATCHDOG=1" => pings.push(Instant::now()),
            Some(m) => panic!("unexpected {m:?}"),
            None => panic!("pings did not resume:\n{}", e.logs()),
        }
    }
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().expect("gaps");
    assert!(longest >= Duration::from_millis(2500), "a gap of about 3 s while the read hung, longest {longest:?}");
    // Afterwards the failed collector fails fast (the hung read is not repeated), and pings go on.
    let after: Vec<Duration> = pings.windows(2).skip(2).map(|w| w[1] - w[0]).collect();
    assert!(after.iter().all(|d| *d < SECS(1)), "{after:?}");
    assert!(e.logs().contains("collector pve_config failed"), "{}", e.logs());
}

#[test]
fn sigterm_lets_a_scrape_in_flight_finish_and_refuses_new_ones() {
    let root = plain_root();
    let mut e = Exporter::start(root.path(), &["--ebpf", "off", "--pmxcfs-timeout", "3s"], &[]);
    hang_pmxcfs(root.path());
    let t0 = Instant::now();
    let scrape = get_in_background(e.port, "/metrics");
    std::thread::sleep(Duration::from_millis(500));
    e.signal(libc::SIGTERM);
    e.wait_for_log("SIGTERM: shutting down", SECS(5));
    // The listener is closed at once: new connections are refused.
    std::thread::sleep(Duration::from_millis(200));
    assert!(TcpStream::connect(("127.0.0.1", e.port)).is_err(), "still accepting after SIGTERM");
    let (status, text) = scrape.join().expect("scrape thread").expect("the scrape in flight gets its answer");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("pve_exporter_collector_success{collector=\"pve_config\"} 0"), "{text}");
    assert!(t0.elapsed() >= Duration::from_millis(2500), "the answer waited for the collection");
    let st = e.wait_exit(SECS(10));
    assert!(st.success(), "{st}: {}", e.logs());
}

#[test]
fn the_shutdown_deadline_cuts_a_scrape_that_takes_too_long() {
    let root = plain_root();
    let mut e =
        Exporter::start(root.path(), &["--ebpf", "off", "--pmxcfs-timeout", "20s", "--shutdown-timeout", "1s"], &[]);
    hang_pmxcfs(root.path());
    let scrape = get_in_background(e.port, "/metrics");
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    e.signal(libc::SIGTERM);
    let st = e.wait_exit(SECS(10));
    assert!(st.success(), "{st}: {}", e.logs());
    // 1 s of grace and up to 2 s for the runtime to let go of the hung collection thread; the
    // hung read itself would take 20 s.
    assert!(t0.elapsed() < SECS(8), "exited after {:?}", t0.elapsed());
    let logs = e.logs();
    assert!(logs.contains("requests still running after 1s are cut"), "{logs}");
    let r = scrape.join().expect("scrape thread");
    assert!(!matches!(r, Ok((200, _))), "the cut scrape must not look like a complete answer: {r:?}");
}

#[test]
fn a_second_signal_stops_without_waiting() {
    let root = plain_root();
    let mut e =
        Exporter::start(root.path(), &["--ebpf", "off", "--pmxcfs-timeout", "20s", "--shutdown-timeout", "30s"], &[]);
    hang_pmxcfs(root.path());
    let _scrape = get_in_background(e.port, "/metrics");
    std::thread::sleep(Duration::from_millis(500));
    e.signal(libc::SIGTERM);
    e.wait_for_log("SIGTERM: shutting down", SECS(5));
    let t0 = Instant::now();
    e.signal(libc::SIGINT);
    assert!(e.wait_exit(SECS(20)).success());
    assert!(t0.elapsed() < SECS(10), "the 30 s grace was not waited for");
    assert!(e.logs().contains("second stop signal"), "{}", e.logs());
}

/// A request hyper cannot parse: logged at DEBUG only.
fn send_garbage(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"NOT HTTP AT ALL\r\n\r\n").expect("write");
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn sighup_applies_log_level_and_web_config_and_names_what_needs_a_restart() {
    let root = plain_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("pve-exporter.env");
    let web = dir.path().join("web.yml");
    let port = ops::free_port();
    std::fs::write(&env_file, format!("# as installed\nPVE_EXPORTER_PORT={port}\nPVE_EXPORTER_EBPF=off\n")).unwrap();
    // systemd passes the file's variables in the environment; the daemon re-reads the file on SIGHUP.
    let env_path = env_file.to_string_lossy().into_owned();
    let mut e = Exporter::spawn_on(
        port,
        root.path(),
        &[],
        &[("PVE_EXPORTER_ENV_FILE", &env_path), ("PVE_EXPORTER_EBPF", "off")],
    );
    e.wait_for_log("ready: first collection", SECS(30));
    let metrics = e.url("http", "/metrics");
    assert_eq!(curl(&[&metrics]).status, 200);
    send_garbage(port);

    // Log level to DEBUG, basic auth on, and a port change that must wait for a restart.
    std::fs::write(&web, format!("basic_auth_users:\n  prom: {}\n", bcrypt_hash("first"))).unwrap();
    std::fs::write(
        &env_file,
        format!(
            "PVE_EXPORTER_PORT={}\nPVE_EXPORTER_EBPF=off\nPVE_EXPORTER_LOGLEVEL=DEBUG\n\
             PVE_EXPORTER_WEB_CONFIG_FILE=\"{}\"\n",
            port + 1,
            web.display()
        ),
    )
    .unwrap();
    e.signal(libc::SIGHUP);
    e.wait_for_log("reloaded: plain HTTP, basic auth (1 users)", SECS(10));
    let logs = e.logs();
    assert!(logs.contains("log level now Debug"), "{logs}");
    assert!(logs.contains("effective after a restart: PVE_EXPORTER_PORT"), "{logs}");
    assert!(!logs.contains("connection: "), "DEBUG lines only after the reload: {logs}");
    send_garbage(port);
    e.wait_for_log("connection: ", SECS(5));
    assert_eq!(curl(&[&metrics]).status, 401);
    assert_eq!(curl(&["-u", "prom:first", &metrics]).status, 200);

    // The same path with new content (a password change), and the log level line removed.
    std::fs::write(&web, format!("basic_auth_users:\n  prom: {}\n", bcrypt_hash("second"))).unwrap();
    std::fs::write(
        &env_file,
        format!("PVE_EXPORTER_PORT={port}\nPVE_EXPORTER_EBPF=off\nPVE_EXPORTER_WEB_CONFIG_FILE={}\n", web.display()),
    )
    .unwrap();
    e.signal(libc::SIGHUP);
    e.wait_for_log("log level now Info", SECS(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&["-u", "prom:first", &metrics]).status, 401, "the old password is gone");
    assert_eq!(curl(&["-u", "prom:second", &metrics]).status, 200);

    // A broken web config: the daemon keeps the one it has.
    std::fs::write(&web, "basic_auth_users:\n  prom: not-a-hash\n").unwrap();
    e.signal(libc::SIGHUP);
    e.wait_for_log("keeping the current one", SECS(10));
    assert_eq!(curl(&["-u", "prom:second", &metrics]).status, 200);
    assert!(e.child.try_wait().expect("try_wait").is_none(), "still running");
}

#[test]
fn command_line_flags_win_over_the_environment_file_on_reload() {
    let root = plain_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "").unwrap();
    let env_path = env_file.to_string_lossy().into_owned();
    let mut e = Exporter::start(root.path(), &["--ebpf", "off", "--loglevel", "INFO", "--env-file", &env_path], &[]);
    std::fs::write(&env_file, "PVE_EXPORTER_LOGLEVEL=DEBUG\n").unwrap();
    e.signal(libc::SIGHUP);
    e.wait_for_log("--loglevel on the command line wins", SECS(10));
    send_garbage(e.port);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!e.logs().contains("connection: "), "still INFO: {}", e.logs());
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let root = plain_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let sock = NotifySocket::path();
    let mut e = Exporter::spawn_on(port, root.path(), &["--ebpf", "off"], &[("NOTIFY_SOCKET", &sock.address)]);
    let st = e.wait_exit(SECS(20));
    assert_eq!(st.code(), Some(1));
    let logs = e.logs();
    // One line that says what is wrong and what to change.
    let line = logs.lines().find(|l| l.contains("cannot listen")).unwrap_or_default();
    assert!(
        line.contains(&format!("ERROR cannot listen on 127.0.0.1:{port}: port {port} is already in use on 127.0.0.1"))
            && line.contains("--port")
            && line.contains("Address already in use"),
        "{logs}"
    );
    assert_eq!(sock.recv(Duration::from_millis(200)), None, "never READY");
    // An address that is not this host's.
    let mut e = Exporter::spawn_on(9, root.path(), &["--ebpf", "off", "--host", "192.0.2.1"], &[]);
    assert_eq!(e.wait_exit(SECS(20)).code(), Some(1));
    assert!(e.logs().contains("192.0.2.1 is not an address of this host"), "{}", e.logs());
}

#[test]
fn journald_gets_priorities_and_no_timestamps() {
    let root = plain_root();
    // JOURNAL_STREAM names the device and inode of stderr, as systemd sets it.
    let logdir = tempfile::tempdir().expect("tempdir");
    let log = logdir.path().join("journal");
    let file = std::fs::File::create(&log).expect("log");
    let meta = file.metadata().expect("metadata");
    let port = ops::free_port();
    let mut child = Command::new(ops::DAEMON)
        .arg("--root")
        .arg(root.path())
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--ebpf", "off", "--loglevel", "INFO"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("NOTIFY_SOCKET")
        .stderr(file)
        .spawn()
        .expect("start");
    let deadline = Instant::now() + SECS(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("ready:") {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
    let text = std::fs::read_to_string(&log).expect("log");
    for line in text.lines() {
        let b = line.as_bytes();
        assert!(
            b.len() > 3 && b[0] == b'<' && (b'0'..=b'7').contains(&b[1]) && b[2] == b'>',
            "journald line: {line:?}"
        );
        assert!(!line.contains("Z INFO"), "no timestamp: {line:?}");
    }
    assert!(text.contains("<6>listening on http://127.0.0.1:"), "{text}");
    assert!(text.contains("<6>SIGTERM: shutting down"), "{text}");

    // Without JOURNAL_STREAM (or with one that is not stderr): timestamps and level names.
    let mut e = Exporter::start(root.path(), &["--ebpf", "off"], &[("JOURNAL_STREAM", "1:1")]);
    e.signal(libc::SIGTERM);
    e.wait_exit(SECS(10));
    let logs = e.logs();
    let line = logs.lines().find(|l| l.contains("listening on")).unwrap_or_default();
    assert!(line.contains("Z INFO  listening on") && line.starts_with("20"), "{logs}");
    assert!(!logs.contains("<6>"), "{logs}");
}

#[test]
fn sigterm_detaches_the_ebpf_programs() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root: it loads BPF programs (run the suite as root, as `cargo xtask test` does)");
    }
    let root = plain_root();
    let mut e = Exporter::start(root.path(), &["--ebpf", "on"], &[]);
    let pid = e.child.id();
    let bpf_links = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter(|f| std::fs::read_link(f.path()).is_ok_and(|t| t.to_string_lossy().contains("bpf-prog")))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(bpf_links() > 0, "programs loaded while running");
    e.signal(libc::SIGTERM);
    assert!(e.wait_exit(SECS(15)).success(), "{}", e.logs());
    assert!(e.logs().contains("eBPF programs detached"), "{}", e.logs());
}
