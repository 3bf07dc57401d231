//! The HTTP limits under attack, with production defaults (`--web.max-connections 512`, the
//! default head, idle and write time limits): 2,000 idle TCP connections kept open, clients that
//! ask for responses and never read them, slow request heads and a flood of back-to-back
//! requests, while a real Prometheus and a client that behaves like one (its `Accept` and
//! `X-Prometheus-Scrape-Timeout-Seconds`, a new connection per scrape) keep scraping. Every
//! scrape must answer within the scrape timeout; the daemon must cut the idle connections and
//! the slow readers and be back to a handful of descriptors afterwards.

mod ops;
mod prom;

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::fd::FromRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ops::{Exporter, closed_by_peer, raise_nofile, read_response};
use prom::{Prometheus, value};

/// The attack phase: longer than the write time limit (10 s), so the slow readers meet it.
const ATTACK: Duration = Duration::from_secs(40);
const IDLE_CONNECTIONS: usize = 2000;
const SLOW_READERS: usize = 100;
const PIPELINED: usize = 2000;
const FLOODERS: usize = 8;
/// Prometheus' default scrape timeout: the answer must arrive within it.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect(("127.0.0.1", port))
}

/// A connection whose receive buffer is as small as the kernel allows, so that responses the
/// client does not read block the server's writes soon.
fn connect_small_rcvbuf(port: u16) -> std::io::Result<TcpStream> {
    // SAFETY: a socket we own, set up with plain libc calls on valid structs, then handed to
    // TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
            sin_zero: [0; 8],
        };
        if libc::connect(fd, (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// A scrape as Prometheus makes it, on a new connection, with its scrape timeout as the limit
/// for the whole answer.
fn prometheus_like_scrape(port: u16) -> Result<String, String> {
    let start = Instant::now();
    let mut s = connect(port).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT)).map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Prometheus/2.45.0\r\n\
         Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
         text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let (status, body) = read_response(&mut s).map_err(|e| format!("read after {:?}: {e}", start.elapsed()))?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != 200 || !body.contains("pve_exporter_build_info") {
        return Err(format!("status {status}: {}", body.chars().take(200).collect::<String>()));
    }
    // Within the scrape timeout: a correctness property, not a benchmark.
    if start.elapsed() > SCRAPE_TIMEOUT {
        return Err(format!("answered after {:?}", start.elapsed()));
    }
    Ok(body)
}

/// An instant query's samples as (labels, value).
fn query(p: &Prometheus, q: &str) -> Vec<(serde_json::Value, f64)> {
    p.query(q).iter().map(|s| (s["metric"].clone(), value(s))).collect()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(usize::MAX)
}

#[test]
fn scrapes_answer_under_idle_connections_slow_readers_and_a_request_flood() {
    raise_nofile();
    let root = ops::plain_root();
    // Production defaults: no --web.* flag.
    let mut daemon = Exporter::start(root.path(), &["--ebpf", "off"], &[]);
    let port = daemon.port;
    let pid = daemon.child.id();
    let baseline_fds = open_fds(pid);
    let sample = prometheus_like_scrape(port).expect("a scrape before the attack");
    eprintln!("one scrape: {} bytes; the daemon holds {baseline_fds} descriptors", sample.len());

    let prom = Prometheus::start(&format!(
        "global:\n  scrape_interval: 3s\n  scrape_timeout: 3s\n\
         scrape_configs:\n  - job_name: pve-exporter\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    ));
    // Prometheus scrapes before the attack starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while query(&prom, "up{job=\"pve-exporter\"} == 1").is_empty() {
        assert!(Instant::now() < deadline, "Prometheus did not scrape: {}\n{}", prom.targets(), prom.log());
        std::thread::sleep(Duration::from_millis(250));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let idle_closed = Arc::new(AtomicU64::new(0));
    let flood_answers = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();

    // 2,000 idle connections, each reopened when the daemon closes it (at most 100 per 0.5 s:
    // every closed connection leaves a TIME_WAIT entry, and the loopback has some 28,000 ports).
    {
        let (stop, closed) = (stop.clone(), idle_closed.clone());
        threads.push(std::thread::spawn(move || {
            let mut conns: Vec<Option<TcpStream>> = (0..IDLE_CONNECTIONS).map(|_| connect(port).ok()).collect();
            while !stop.load(Ordering::Relaxed) {
                let mut reopened = 0;
                for c in conns.iter_mut() {
                    if c.as_ref().is_some_and(closed_by_peer) {
                        closed.fetch_add(1, Ordering::Relaxed);
                        *c = None;
                    }
                    if c.is_none() && reopened < 100 {
                        *c = connect(port).ok();
                        reopened += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }));
    }

    // Slow readers: 2,000 pipelined requests each (some 9 MB of answers, more than the socket
    // buffers hold), never read (until the end).
    let slow: Vec<TcpStream> = (0..SLOW_READERS)
        .map(|_| {
            let mut s = connect_small_rcvbuf(port).expect("slow reader connect");
            let req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(PIPELINED);
            s.write_all(req.as_bytes()).expect("slow reader request");
            s
        })
        .collect();

    // Slow heads: a byte every second, never a complete request.
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut conns: Vec<TcpStream> = (0..50).filter_map(|_| connect(port).ok()).collect();
            while !stop.load(Ordering::Relaxed) {
                for c in conns.iter_mut() {
                    let _ = c.write_all(b"G");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }));
    }

    // The flood: back-to-back requests on kept-alive connections, reconnecting when closed.
    for _ in 0..FLOODERS {
        let (stop, answers) = (stop.clone(), flood_answers.clone());
        threads.push(std::thread::spawn(move || {
            let mut conn: Option<TcpStream> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(s) = conn.as_mut() else {
                    conn = connect(port).ok();
                    if conn.is_none() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    continue;
                };
                let _ = s.set_read_timeout(Some(SCRAPE_TIMEOUT));
                let ok = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").is_ok()
                    && read_response(s).is_ok_and(|(status, _)| status == 200);
                if ok {
                    answers.fetch_add(1, Ordering::Relaxed);
                } else {
                    conn = None;
                }
            }
        }));
    }

    // Meanwhile a Prometheus-like client scrapes once a second on a new connection.
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut scrapes = 0;
    let attack_start = Instant::now();
    while attack_start.elapsed() < ATTACK {
        let t = Instant::now();
        match prometheus_like_scrape(port) {
            Ok(_) => scrapes += 1,
            Err(e) => failures.lock().expect("failures").push(format!("at {:?}: {e}", attack_start.elapsed())),
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    // Prometheus' view of the attack window: every scrape up.
    let window = format!("{}s", ATTACK.as_secs() - 5);
    let up = query(&prom, &format!("min_over_time(up{{job=\"pve-exporter\"}}[{window}])"));
    let count = query(&prom, &format!("count_over_time(up{{job=\"pve-exporter\"}}[{window}])"));
    let max_duration =
        query(&prom, &format!("max_over_time(scrape_duration_seconds{{job=\"pve-exporter\"}}[{window}])"));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("attack thread");
    }

    let failures = failures.lock().expect("failures").clone();
    let logs = daemon.logs();
    eprintln!(
        "{scrapes} Prometheus-like scrapes answered, {} failed; Prometheus: min up {up:?}, {count:?} scrapes, \
         slowest {max_duration:?} s; {} flood answers; {} idle connections closed by the daemon",
        failures.len(),
        flood_answers.load(Ordering::Relaxed),
        idle_closed.load(Ordering::Relaxed),
    );
    assert!(failures.is_empty(), "scrapes failed under the attack: {failures:#?}\n{logs}");
    assert!(scrapes >= 20, "only {scrapes} scrapes in {ATTACK:?}");
    assert_eq!(up.first().map(|s| s.1), Some(1.0), "a Prometheus scrape failed: {}\n{}", prom.targets(), prom.log());
    assert!(count.first().is_some_and(|s| s.1 >= 8.0), "Prometheus scraped too rarely: {count:?}");
    assert!(flood_answers.load(Ordering::Relaxed) > 0, "the flood got no answer at all");
    // The cap held: of 2,000 idle connections at most 512 can be open at the daemon.
    assert!(
        idle_closed.load(Ordering::Relaxed) >= (IDLE_CONNECTIONS - 512) as u64,
        "the daemon closed only {} idle connections",
        idle_closed.load(Ordering::Relaxed)
    );
    assert!(logs.contains("HTTP connection limit (512 open, --web.max-connections) reached"), "{logs}");

    // The other attackers are gone. The slow readers still hold their connections and read
    // nothing: the daemon must close them (the write time limit: every one of them is stalled,
    // or soon will be, on a response it does not take) and be back to its descriptors from
    // before the attack.
    let deadline = Instant::now() + Duration::from_secs(120);
    while open_fds(pid) > baseline_fds + 10 {
        assert!(
            Instant::now() < deadline,
            "the daemon still holds {} descriptors (before the attack: {baseline_fds})",
            open_fds(pid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The slow readers now read: a connection the daemon cut ends before all its answers.
    let mut cut = 0;
    for mut s in slow {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut got = Vec::new();
        let ended = match s.read_to_end(&mut got) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        let answers = String::from_utf8_lossy(&got).matches("HTTP/1.1 200").count();
        if ended && answers < PIPELINED {
            cut += 1;
        }
    }

    assert_eq!(cut, SLOW_READERS, "slow readers not cut off");
    prometheus_like_scrape(port).expect("a scrape after the attack");
    assert!(daemon.child.try_wait().expect("try_wait").is_none(), "the daemon exited");
}

/// Basic auth under a flood of wrong passwords, with the default bcrypt queue: every request
/// gets its answer (401, or 503 at once when 16 checks wait already), never a hang, and the
/// scraper with the right password, verified once, keeps getting its metrics.
#[test]
fn a_flood_of_wrong_passwords_is_answered_and_the_scraper_gets_in() {
    raise_nofile();
    let root = ops::plain_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let web = dir.path().join("web.yml");
    // Cost 10, as `htpasswd -nBC 10` makes it (docs/operations.md): tens of ms per check.
    let hash = bcrypt::hash("scrape secret", 10).expect("bcrypt");
    std::fs::write(&web, format!("basic_auth_users:\n  prometheus: {hash}\n")).expect("web config");
    let daemon = Exporter::start(root.path(), &["--ebpf", "off", "--web.config.file", &web.to_string_lossy()], &[]);
    let port = daemon.port;
    let auth = |pw: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{pw}"))
    };
    let scrape = |pw: &str| -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = connect(port)?;
        s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nConnection: close\r\n\
             X-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
            auth(pw)
        )?;
        read_response(&mut s)
    };
    // The scraper's password is verified (and remembered) before the flood.
    assert_eq!(scrape("scrape secret").expect("scrape").0, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let flood: Vec<_> = (0..64)
        .map(|i| {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut s = match connect(port) {
                        Ok(s) => s,
                        Err(_) => continue,
                    };
                    let _ = s.set_read_timeout(Some(SCRAPE_TIMEOUT));
                    let pw = {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD.encode(format!("prometheus:guess{i}-{n}"))
                    };
                    let sent = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {pw}\r\n\r\n");
                    let outcome = match sent.and_then(|()| read_response(&mut s)) {
                        Ok((status, _)) => status.to_string(),
                        Err(e) => format!("{:?}", e.kind()),
                    };
                    *counts.lock().expect("counts").entry(outcome).or_default() += 1;
                }
            })
        })
        .collect();
    let mut scrapes = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        scrapes.push(scrape("scrape secret").map(|(status, body)| (status, body.len())));
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().expect("flood thread");
    }
    let counts = counts.lock().expect("counts").clone();
    eprintln!("wrong-password flood: {counts:?}; {} scrapes with the right password", scrapes.len());
    assert!(scrapes.iter().all(|r| matches!(r, Ok((200, n)) if *n > 0)), "{scrapes:?}\n{}", daemon.logs());
    // Every wrong password got an answer: 401, or 503 when the queue was full; nothing hung.
    assert!(counts.keys().all(|k| k == "401" || k == "503"), "{counts:?}");
    assert!(counts.get("503").is_some_and(|n| *n > 0), "64 clients never filled the queue of 16: {counts:?}");
    assert!(counts.get("401").is_some_and(|n| *n > 0), "{counts:?}");
}
