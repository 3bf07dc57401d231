//! The kernel's process events connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`): which processes
//! were started, exec'd a new program or exited since we last looked. It lets the /proc scan
//! keep the set of processes and each one's verdict ("QEMU with this command line" or "not
//! QEMU") up to date from these events alone, instead of listing /proc and reading every
//! process's cmdline on every scrape ([`crate::sources::proc::scan`]).
//!
//! Events queue in the socket between scrapes and are drained without blocking at the start of
//! each scan. When the queue overflowed (ENOBUFS) some events are lost, and the caller forgets
//! every verdict: exact, only slower that once. Needs CAP_NET_ADMIN (the daemon runs as root).

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
/// `struct cn_msg` without its payload: cb_id (idx, val), seq, ack, len (u16), flags (u16).
const CN_MSG_LEN: usize = 20;
/// `struct proc_event`: what (u32), cpu (u32), timestamp_ns (u64), then the event's data.
const EVENT_DATA: usize = 16;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_UID: u32 = 0x4;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// Receive buffer asked for: events of a busy host over a minute of scrape interval.
const RCVBUF: libc::c_int = 8 << 20;
/// Messages drained per call at most: a fork storm must not keep a scrape draining forever.
const MAX_DRAIN: usize = 200_000;

/// A listening connector socket.
pub struct ProcEvents {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// The socket's receive queue in bytes, as the kernel set it.
    queue_bytes: usize,
    /// Whether the queue is as large as asked for (SO_RCVBUFFORCE, which needs CAP_NET_ADMIN),
    /// rather than capped by `net.core.rmem_max`.
    queue_forced: bool,
}

/// What happened to a process (a thread group) last, of what [`ProcEvents::drain`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Forked as a new process, or exec'd a program: its command line may be new; or changed
    /// its uids (setuid, QEMU's `-run-with user=`): whether it is believed may be new.
    Started,
    /// The process (its thread-group leader) exited.
    Exited,
}

/// What [`ProcEvents::drain`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Processes (tgids) by their last change. Threads starting or ending are not changes.
    pub pids: HashMap<u32, Change>,
    /// Events were lost (the queue overflowed): any process may have changed.
    pub lost: bool,
}

impl ProcEvents {
    /// Open a non-blocking connector socket and subscribe to process events.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A big queue: FORCE goes past rmem_max (CAP_NET_ADMIN); else take what the sysctl allows.
        let size: libc::c_int = RCVBUF;
        let mut queue_forced = false;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: setsockopt reads one c_int.
            let r = unsafe {
                libc::setsockopt(raw, libc::SOL_SOCKET, opt, (&raw const size).cast(), size_of::<libc::c_int>() as _)
            };
            if r == 0 {
                queue_forced = opt == libc::SO_RCVBUFFORCE;
                break;
            }
        }
        let mut got: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes one c_int and its length.
        unsafe { libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw mut got).cast(), &mut len) };
        // SAFETY: sockaddr_nl is plain data; zeroed is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: `addr` is a valid sockaddr_nl.
        if unsafe { libc::bind(raw, (&raw const addr).cast(), size_of::<libc::sockaddr_nl>() as _) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel answers a LISTEN with an acknowledgement carrying `ack + 1` and an error
        // code: a nonce of ours tells our answer from those to other subscribers.
        let nonce = listen_nonce();
        let msg = listen_message(nonce);
        // SAFETY: sending our own buffer on our socket.
        if unsafe { libc::send(raw, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut me = Self { fd, buf: vec![0; 64 << 10], queue_bytes: got.max(0) as usize, queue_forced };
        me.check_delivery(nonce.wrapping_add(1))?;
        Ok(me)
    }

    /// The receive queue in bytes, and whether it got the size asked for (else
    /// `net.core.rmem_max` capped it: SO_RCVBUFFORCE needs CAP_NET_ADMIN).
    pub fn queue(&self) -> (usize, bool) {
        (self.queue_bytes, self.queue_forced)
    }

    /// Whether events reach us: the subscription is ignored without notice outside the initial
    /// user and pid namespaces (a container), and a scan that trusts events which never come
    /// would miss new VMs. Starting a thread is a fork event with our tgid, queued before the
    /// thread creation returns. Other events drained here are of processes started before the
    /// caller's first full listing, which sees them anyway.
    ///
    /// A refused subscription (EPERM: kernels before 6.6 want CAP_NET_ADMIN for it) is an error
    /// even when events arrive: they come because another process subscribed, and stop when
    /// it goes. The kernel's acknowledgement (`ack` = the nonce + 1) says so.
    fn check_delivery(&mut self, ack: u32) -> io::Result<()> {
        let me = std::process::id();
        std::thread::Builder::new().name("proc-events-check".into()).spawn(|| {})?.join().ok();
        let mut seen = false;
        let mut acked = false;
        for _ in 0..MAX_DRAIN {
            match self.recv() {
                Recv::Data(n) => {
                    let mut refused = None;
                    for_each_event(&self.buf[..n], |ev| match ev {
                        Event::Fork { tgid, .. } if tgid == me => seen = true,
                        Event::Ack { ack: a, err } if a == ack => {
                            acked = true;
                            if err != 0 {
                                refused = Some(err);
                            }
                        }
                        _ => {}
                    });
                    if let Some(err) = refused {
                        let e = io::Error::from_raw_os_error(err as i32);
                        return Err(io::Error::new(e.kind(), format!("subscription refused: {e}")));
                    }
                    // The acknowledgement comes first; without one (none is sent when nobody
                    // listens, e.g. refused and alone) the events decide.
                    if seen && acked {
                        return Ok(());
                    }
                }
                Recv::Lost => {}
                Recv::Empty => break,
                Recv::Failed(e) => return Err(e),
            }
        }
        if seen {
            return Ok(());
        }
        Err(io::Error::other("subscribed, but no event arrived for a thread we started"))
    }

    /// Every event queued since the last call, without blocking.
    pub fn drain(&mut self) -> Changed {
        let mut out = Changed::default();
        for _ in 0..MAX_DRAIN {
            match self.recv() {
                Recv::Data(n) => parse_events(&self.buf[..n], &mut out.pids),
                // The queue overflowed: events are missing, the queue itself goes on.
                Recv::Lost => out.lost = true,
                Recv::Empty => return out,
                Recv::Failed(_) => {
                    out.lost = true;
                    return out;
                }
            }
        }
        out.lost = true; // more than MAX_DRAIN: treat the rest as lost
        out
    }

    /// One datagram into the buffer, without blocking.
    fn recv(&mut self) -> Recv {
        loop {
            // SAFETY: receiving into our own buffer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if let Ok(n) = usize::try_from(n) {
                return Recv::Data(n);
            }
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => Recv::Empty,
                Some(libc::ENOBUFS) => Recv::Lost,
                _ => Recv::Failed(e),
            };
        }
    }
}

/// What one [`ProcEvents::recv`] got.
enum Recv {
    /// A datagram of this many bytes.
    Data(usize),
    /// Nothing queued now.
    Empty,
    /// The queue overflowed since the last receive (ENOBUFS).
    Lost,
    Failed(io::Error),
}

/// A value for the `ack` field of our LISTEN that other subscribers are unlikely to use.
fn listen_nonce() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (std::process::id().rotate_left(16) ^ t) | 1
}

/// The subscription: nlmsghdr, cn_msg for the proc connector (with `nonce` as its `ack`), and
/// the LISTEN op.
fn listen_message(nonce: u32) -> Vec<u8> {
    let payload = PROC_CN_MCAST_LISTEN.to_ne_bytes();
    let len = NLMSG_HDRLEN + CN_MSG_LEN + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&std::process::id().to_ne_bytes());
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&nonce.to_ne_bytes()); // ack
    m.extend_from_slice(&(payload.len() as u16).to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&payload);
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One process event, as far as the scan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A task was forked: a new process when `pid == tgid`, else a thread of `tgid`.
    Fork { pid: u32, tgid: u32 },
    /// `tgid` exec'd a program.
    Exec { tgid: u32 },
    /// A task of `tgid` changed its real or effective uid.
    Owner { tgid: u32 },
    /// A task ended: the process when `pid == tgid` (its leader), else one of its threads.
    Exit { pid: u32, tgid: u32 },
    /// The kernel's answer to a LISTEN: `ack` is the request's `ack` + 1, `err` an errno or 0.
    Ack { ack: u32, err: u32 },
}

/// Every process event in one datagram of netlink messages, in order. Truncated or foreign
/// messages are skipped.
fn for_each_event(mut b: &[u8], mut f: impl FnMut(Event)) {
    while let Some(len) = u32_at(b, 0).map(|l| l as usize) {
        if len < NLMSG_HDRLEN || len > b.len() {
            return;
        }
        let msg = &b[NLMSG_HDRLEN..len];
        if u32_at(msg, 0) == Some(CN_IDX_PROC) && u32_at(msg, 4) == Some(CN_VAL_PROC) {
            let ev = msg.get(CN_MSG_LEN..).unwrap_or_default();
            let data = |at: usize| u32_at(ev, EVENT_DATA + at);
            // fork: (parent pid, parent tgid, child pid, child tgid); exec: (pid, tgid);
            // uid: (pid, tgid, ruid, euid); exit: (pid, tgid, code, signal, ...).
            let event = match u32_at(ev, 0) {
                // PROC_EVENT_NONE: an acknowledgement; the cn_msg's ack field names the request.
                Some(0) => u32_at(msg, 12).zip(data(0)).map(|(ack, err)| Event::Ack { ack, err }),
                Some(PROC_EVENT_FORK) => data(8).zip(data(12)).map(|(pid, tgid)| Event::Fork { pid, tgid }),
                Some(PROC_EVENT_EXEC) => data(4).map(|tgid| Event::Exec { tgid }),
                Some(PROC_EVENT_UID) => data(4).map(|tgid| Event::Owner { tgid }),
                Some(PROC_EVENT_EXIT) => data(0).zip(data(4)).map(|(pid, tgid)| Event::Exit { pid, tgid }),
                _ => None,
            };
            if let Some(e) = event {
                f(e);
            }
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or_default();
    }
}

/// Note each process's last change in one datagram in `pids`: a new process or an exec is
/// [`Change::Started`], and so is a change of owner (of any of its threads: the process is
/// read again), a leader's exit [`Change::Exited`]. Threads starting or ending are left out:
/// they change neither the set of processes nor a command line.
pub fn parse_events(b: &[u8], pids: &mut HashMap<u32, Change>) {
    for_each_event(b, |ev| match ev {
        Event::Fork { pid, tgid } if pid == tgid => {
            pids.insert(tgid, Change::Started);
        }
        Event::Exec { tgid } | Event::Owner { tgid } => {
            pids.insert(tgid, Change::Started);
        }
        Event::Exit { pid, tgid } if pid == tgid => {
            pids.insert(tgid, Change::Exited);
        }
        _ => {}
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, data: &[u32]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&1u32.to_ne_bytes()); // cpu
        ev.extend_from_slice(&123u64.to_ne_bytes());
        for d in data {
            ev.extend_from_slice(&d.to_ne_bytes());
        }
        let mut m = listen_message(0);
        m.truncate(NLMSG_HDRLEN + CN_MSG_LEN);
        m.extend_from_slice(&ev);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn exec_fork_and_exit_events() {
        let mut b = event(PROC_EVENT_EXEC, &[501, 500]);
        b.extend(event(PROC_EVENT_FORK, &[1, 1, 777, 777]));
        b.extend(event(PROC_EVENT_EXIT, &[600, 600, 0, 0]));
        b.extend(event(PROC_EVENT_FORK, &[777, 777, 778, 777])); // a thread of 777: no change
        b.extend(event(PROC_EVENT_EXIT, &[701, 700, 0, 0])); // a thread of 700 ends: no change
        b.extend(event(PROC_EVENT_FORK, &[1, 1, 600, 600])); // 600 reused: the last change counts
        b.extend(event(PROC_EVENT_EXIT, &[777, 777, 0, 0]));
        b.extend(event(PROC_EVENT_UID, &[901, 900, 64055, 64055])); // a thread of 900 dropped root
        let mut pids = HashMap::new();
        parse_events(&b, &mut pids);
        assert_eq!(
            pids,
            HashMap::from([
                (500, Change::Started),
                (600, Change::Started),
                (777, Change::Exited),
                (900, Change::Started)
            ])
        );
    }

    /// The kernel's answer to a LISTEN: PROC_EVENT_NONE with the request's ack + 1 in the
    /// cn_msg and the errno as data.
    #[test]
    fn acknowledgements() {
        let mut m = listen_message(4243);
        m.truncate(NLMSG_HDRLEN + CN_MSG_LEN);
        m.extend_from_slice(&0u32.to_ne_bytes()); // PROC_EVENT_NONE
        m.extend_from_slice(&0u32.to_ne_bytes()); // cpu
        m.extend_from_slice(&0u64.to_ne_bytes());
        m.extend_from_slice(&(libc::EPERM as u32).to_ne_bytes());
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        let mut got = Vec::new();
        for_each_event(&m, |e| got.push(e));
        assert_eq!(got, [Event::Ack { ack: 4243, err: libc::EPERM as u32 }]);
        // Not a change of any process.
        let mut pids = HashMap::new();
        parse_events(&m, &mut pids);
        assert!(pids.is_empty());
    }

    #[test]
    fn bad_datagrams() {
        let mut pids = HashMap::new();
        parse_events(&[], &mut pids);
        parse_events(&[0xff; 3], &mut pids);
        let mut b = event(PROC_EVENT_EXEC, &[501, 500]);
        b[..4].copy_from_slice(&1000u32.to_ne_bytes()); // longer than the datagram
        parse_events(&b, &mut pids);
        let mut short = event(PROC_EVENT_EXEC, &[501, 500]);
        short.truncate(NLMSG_HDRLEN + CN_MSG_LEN + 4);
        let len = short.len() as u32;
        short[..4].copy_from_slice(&len.to_ne_bytes());
        parse_events(&short, &mut pids);
        assert!(pids.is_empty());
    }

    /// The real connector (root): a child we start is reported, its exit last.
    #[test]
    fn a_real_exec_is_seen() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (CAP_NET_ADMIN)");
            return;
        }
        let mut events = ProcEvents::open().expect("proc connector");
        let (bytes, forced) = events.queue();
        assert!(forced && bytes >= RCVBUF as usize, "root forces the queue size: {bytes} bytes, forced {forced}");
        let child = std::process::Command::new("/bin/true").spawn().expect("spawn");
        let pid = child.id();
        let mut child = child;
        child.wait().expect("wait");
        let mut seen = false;
        for _ in 0..100 {
            let c = events.drain();
            if c.pids.get(&pid) == Some(&Change::Exited) || c.lost {
                seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(seen, "no exit event for pid {pid}");
    }
}
