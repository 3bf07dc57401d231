//! Guest file systems through the QEMU guest agent, with the real `qemu-ga` (Debian's
//! qemu-guest-agent) on a Unix socket where PVE puts a VM's agent socket: it answers about this
//! machine's own file systems, so what the daemon reports must equal statvfs of those mounts.
//! Beside it, agents that fail as real ones do: silent, closing, answering garbage, answering
//! late (the late answer waits on the socket for the next client, as QEMU's chardev keeps it),
//! one that floods (what is read is capped), and a VM locked for backup, whose agent must not be
//! asked at all. Production defaults
//! throughout (2 s per query, once per 60 s). Needs root and /dev/kvm (real KVM guests).

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Daemon, Guest, host_root, require_privileges, sample};

const REAL: u32 = 980;
const SILENT: u32 = 981;
const CLOSES: u32 = 982;
const GARBAGE: u32 = 983;
const LATE: u32 = 984;
const LOCKED: u32 = 985;
const OFF: u32 = 986;
const FLOOD: u32 = 987;

fn qga_path(root: &Path, vmid: u32) -> PathBuf {
    root.join(format!("var/run/qemu-server/{vmid}.qga"))
}

/// The real agent, killed when dropped.
struct QemuGa(Child);

impl QemuGa {
    fn start(socket: &Path, state: &Path) -> QemuGa {
        std::fs::create_dir_all(state).expect("state dir");
        let child = Command::new("qemu-ga")
            .args(["-m", "unix-listen", "-p"])
            .arg(socket)
            .arg("-t")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-ga (`cargo xtask setup` installs qemu-guest-agent)");
        let t0 = Instant::now();
        while !socket.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "qemu-ga did not create {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuGa(child)
    }
}

impl Drop for QemuGa {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fake {
    /// Takes the connection, reads, never answers.
    Silent,
    /// Closes each connection at once.
    Closes,
    /// Answers the handshake, then text that is not JSON.
    Garbage,
    /// Answers nothing on the first connection; the answers to that client's requests come
    /// out on the next connection, before the answers to the new client's (what QEMU's
    /// chardev does with a guest's late answer).
    Late,
    /// Counts connections (a VM that must not be asked).
    Counts,
    /// Answers the handshake, then sends without end (the answer is capped, not read to the end).
    Flood,
}

/// A fake agent on `socket`; the counter counts the connections it took.
fn fake_agent(socket: &Path, how: Fake) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(socket).expect("bind");
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    std::thread::spawn(move || {
        let mut pending: Vec<u8> = Vec::new();
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            match how {
                Fake::Silent | Fake::Counts => held.push(s),
                Fake::Closes => drop(s),
                Fake::Garbage => {
                    serve(&mut s, |_| Some(b"this is { not json\n".to_vec()));
                }
                Fake::Flood => {
                    std::thread::spawn(move || {
                        serve(&mut s, |_| {
                            let mut a = b"{\"return\": [".to_vec();
                            a.extend(std::iter::repeat_n(b' ', 64 << 20));
                            Some(a)
                        })
                    });
                }
                Fake::Late => {
                    if counter.load(Ordering::SeqCst) == 1 {
                        // Read the request, answer nothing; keep the late answer for the next client.
                        let mut line = Vec::new();
                        let _ = BufReader::new(&s).read_until(b'\n', &mut line);
                        let id = sync_id(&line).expect("a sync request");
                        pending = [&[0xffu8][..], format!("{{\"return\": {id}}}\n").as_bytes()].concat();
                        pending.extend_from_slice(
                            br#"{"return": [{"name": "stale", "mountpoint": "/stale", "type": "ext4", "total-bytes": 1, "used-bytes": 1, "disk": []}]}"#,
                        );
                        pending.push(b'\n');
                        held.push(s);
                    } else {
                        let _ = s.write_all(&std::mem::take(&mut pending));
                        serve(&mut s, |_| {
                            Some(br#"{"return": [{"name": "vdb", "mountpoint": "/fresh", "type": "xfs", "total-bytes": 4096, "used-bytes": 1024, "disk": [{"serial": "drive-scsi1", "bus-type": "scsi", "bus": 0, "unit": 1, "target": 0}]}]}
"#.to_vec())
                        });
                    }
                }
            }
        }
    });
    conns
}

fn sync_id(line: &[u8]) -> Option<u64> {
    let start = line.iter().position(|b| *b == b'{')?;
    let v: serde_json::Value = serde_json::from_slice(&line[start..]).ok()?;
    (v["execute"] == "guest-sync-delimited").then(|| v["arguments"]["id"].as_u64())?
}

/// Answer requests on one connection as an agent does: the handshake with its id, thawed, and
/// `fsinfo` for guest-get-fsinfo.
fn serve(s: &mut UnixStream, fsinfo: impl Fn(&[u8]) -> Option<Vec<u8>>) {
    let reader = BufReader::new(s.try_clone().expect("clone"));
    for line in reader.split(b'\n') {
        let Ok(line) = line else { return };
        let answer = if let Some(id) = sync_id(&line) {
            [&[0xffu8][..], format!("{{\"return\": {id}}}\n").as_bytes()].concat()
        } else if line.windows(21).any(|w| w == b"guest-fsfreeze-status") {
            b"{\"return\": \"thawed\"}\n".to_vec()
        } else if let Some(a) = fsinfo(&line) {
            a
        } else {
            return;
        };
        if s.write_all(&answer).is_err() {
            return;
        }
    }
}

fn statvfs(path: &str) -> (u64, u64) {
    let c = std::ffi::CString::new(path).expect("path");
    // SAFETY: a valid path and a zeroed statvfs for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs {path}");
    let f = st.f_frsize;
    let used = (st.f_blocks - st.f_bfree) * f;
    // As qemu-ga counts a file system's size: what an unprivileged user can have (used + available).
    (used + st.f_bavail * f, used)
}

#[test]
fn guest_file_systems_from_a_real_agent_and_agents_that_fail() {
    require_privileges();
    let root = host_root(&[REAL, SILENT, CLOSES, GARBAGE, LATE, LOCKED, OFF, FLOOD]);
    let conf = |vmid: u32, text: &str| {
        std::fs::write(root.path().join(format!("etc/pve/qemu-server/{vmid}.conf")), text).expect("conf")
    };
    for vmid in [REAL, SILENT, CLOSES, GARBAGE, LATE, FLOOD] {
        conf(vmid, "agent: 1,fstrim_cloned_disks=1\nmemory: 64\n");
    }
    conf(LOCKED, "agent: enabled=1\nlock: backup\nmemory: 64\n");
    conf(OFF, "agent: 0\nmemory: 64\n");
    std::fs::create_dir_all(root.path().join("var/run/qemu-server")).expect("mkdir");

    let _real = QemuGa::start(&qga_path(root.path(), REAL), &root.path().join("qga-state"));
    let silent = fake_agent(&qga_path(root.path(), SILENT), Fake::Silent);
    let closes = fake_agent(&qga_path(root.path(), CLOSES), Fake::Closes);
    let _garbage = fake_agent(&qga_path(root.path(), GARBAGE), Fake::Garbage);
    let late = fake_agent(&qga_path(root.path(), LATE), Fake::Late);
    let locked = fake_agent(&qga_path(root.path(), LOCKED), Fake::Counts);
    let off = fake_agent(&qga_path(root.path(), OFF), Fake::Counts);
    let _flood = fake_agent(&qga_path(root.path(), FLOOD), Fake::Flood);

    let guests: Vec<Guest> = [REAL, SILENT, CLOSES, GARBAGE, LATE, LOCKED, OFF, FLOOD]
        .iter()
        .map(|&id| Guest::start(id, 1, 1, root.path()))
        .collect();
    let daemon = Daemon::start(root.path(), &["--ebpf", "off"]);

    let m = daemon.get("/metrics");
    let up = |m: &str, vmid: u32| sample(m, "pve_kvm_agent_up", &[("id", &vmid.to_string())]);
    assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", "agent")]), Some(1.0), "{m}");
    assert_eq!(up(&m, REAL), Some(1.0), "{m}");
    for vmid in [SILENT, CLOSES, GARBAGE, LATE, FLOOD] {
        // Four queries at once (--agent-max-concurrent): a fifth may start late in the first
        // scrape and end after it stopped waiting; the next one reports it then.
        assert!(matches!(up(&m, vmid), Some(0.0) | None), "{vmid}\n{m}");
    }
    assert_eq!(up(&m, LOCKED), None, "locked for backup: not asked\n{m}");
    assert_eq!(up(&m, OFF), None, "agent: 0\n{m}");
    assert_eq!(locked.load(Ordering::SeqCst) + off.load(Ordering::SeqCst), 0, "asked a locked or agent-less VM");

    // The real agent's file systems are this machine's: their sizes are statvfs's.
    let lines: Vec<&str> =
        m.lines().filter(|l| l.starts_with(&format!("pve_kvm_guest_filesystem_size_bytes{{id=\"{REAL}\""))).collect();
    assert!(!lines.is_empty(), "no file system of the real agent\n{m}");
    for line in lines {
        let mp = line.split("mountpoint=\"").nth(1).and_then(|r| r.split('"').next()).expect("mountpoint");
        let (size, used) = statvfs(mp);
        let labels = [("id", &*REAL.to_string()), ("mountpoint", mp)];
        assert_eq!(sample(&m, "pve_kvm_guest_filesystem_size_bytes", &labels), Some(size as f64), "{mp}");
        let reported = sample(&m, "pve_kvm_guest_filesystem_used_bytes", &labels).expect("used");
        // Other tests write to this file system meanwhile: equal within what they could write.
        assert!((reported - used as f64).abs() < (256u64 << 20) as f64, "{mp}: {reported} vs {used}");
        let info = m
            .lines()
            .find(|l| l.starts_with(&format!("pve_kvm_guest_filesystem_info{{id=\"{REAL}\",mountpoint=\"{mp}\"")))
            .expect("info");
        assert!(info.contains("type=\""), "{info}");
    }
    for vmid in [SILENT, CLOSES, GARBAGE, LATE, FLOOD] {
        assert!(!m.contains(&format!("pve_kvm_guest_filesystem_size_bytes{{id=\"{vmid}\"")), "{vmid}\n{m}");
    }

    // The next scrape does not ask again within the interval, failed agents included: it
    // reports what the first one learned.
    if up(&m, LATE).is_none() {
        std::thread::sleep(Duration::from_secs(3));
    }
    let m2 = daemon.get("/metrics");
    assert_eq!(up(&m2, REAL), Some(1.0));
    for vmid in [SILENT, CLOSES, GARBAGE, LATE, FLOOD] {
        assert_eq!(up(&m2, vmid), Some(0.0), "{vmid}\n{m2}");
    }
    let asked = [&silent, &closes, &late].map(|c| c.load(Ordering::SeqCst));
    assert_eq!(asked, [1, 1, 1], "asked again within the interval");
    // What the operator reads: one line per failing agent with its reason, once (an agent that
    // does not answer is its VM's state, not the collector's failure: INFO, and `agent` keeps
    // succeeding); nothing about the agent that answers.
    assert_eq!(sample(&m2, "pve_exporter_collector_success", &[("collector", "agent")]), Some(1.0), "{m2}");
    for (vmid, why) in [
        (SILENT, "guest-sync-delimited: no answer within 2s"),
        (LATE, "guest-sync-delimited: no answer within 2s"),
        (CLOSES, "the agent closed the connection"),
        (GARBAGE, "not JSON"),
        // The cap on what is read ends it, or (on a busy machine, before 4 MiB came) the time limit.
        (FLOOD, "guest-get-fsinfo: answer longer than|guest-get-fsinfo: no answer within 2s"),
    ] {
        let needle = format!("VM {vmid}: guest agent did not answer: ");
        let line = daemon.wait_for_log(&needle, Duration::from_secs(5));
        assert!(line.contains(" INFO ") && why.split('|').any(|w| line.contains(w)), "VM {vmid}: {line}");
        assert_eq!(daemon.log_lines(&needle).len(), 1, "logged once:\n{}", daemon.logs());
    }
    assert!(daemon.log_lines(&format!("VM {REAL}: guest agent")).is_empty(), "{}", daemon.logs());
    assert!(daemon.log_lines("collector agent").is_empty(), "{}", daemon.logs());
    assert_eq!(
        sample(&m2, "pve_kvm_agent_last_answer_timestamp_seconds", &[("id", &REAL.to_string())]),
        sample(&m, "pve_kvm_agent_last_answer_timestamp_seconds", &[("id", &REAL.to_string())]),
    );

    // A restarted VM (a new QEMU process) is asked afresh: the late agent's stale answer to the
    // first query waits on its socket, and must not be read as this query's.
    let mut guests = guests;
    let i = [REAL, SILENT, CLOSES, GARBAGE, LATE].iter().position(|&v| v == LATE).expect("late guest");
    drop(guests.remove(i));
    guests.push(Guest::start(LATE, 1, 1, root.path()));
    let m3 = daemon.get("/metrics");
    assert_eq!(late.load(Ordering::SeqCst), 2);
    assert_eq!(up(&m3, LATE), Some(1.0), "{m3}");
    let fresh = [("id", &*LATE.to_string()), ("mountpoint", "/fresh")];
    assert_eq!(sample(&m3, "pve_kvm_guest_filesystem_size_bytes", &fresh), Some(4096.0), "{m3}");
    assert_eq!(sample(&m3, "pve_kvm_guest_filesystem_used_bytes", &fresh), Some(1024.0));
    assert!(
        sample(
            &m3,
            "pve_kvm_guest_filesystem_info",
            &[("id", &LATE.to_string()), ("mountpoint", "/fresh"), ("serial", "drive-scsi1"), ("type", "xfs")]
        )
        .is_some(),
        "{m3}"
    );
    assert!(!m3.contains("/stale"), "the stale answer was read\n{m3}");
    drop(guests);
}
