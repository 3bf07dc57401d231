//! The kernel's process events connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`): which processes
//! were started or exec'd a new program since we last looked. It lets the /proc scan keep each
//! process's verdict ("QEMU with this command line" or "not QEMU") until the process execs,
//! instead of reading every process's cmdline on every scrape ([`super::proc_scan`]).
//!
//! Events queue in the socket between scrapes and are drained without blocking at the start of
//! each scan. When the queue overflowed (ENOBUFS) some events are lost, and the caller forgets
//! every verdict: exact, only slower that once. Needs CAP_NET_ADMIN (the daemon runs as root).

use std::{
    collections::HashSet,
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
/// Receive buffer asked for: events of a busy host over a minute of scrape interval.
const RCVBUF: libc::c_int = 8 << 20;
/// Messages drained per call at most: a fork storm must not keep a scrape draining forever.
const MAX_DRAIN: usize = 200_000;

/// A listening connector socket.
pub struct ProcEvents {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// What [`ProcEvents::drain`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Processes (tgids) that were forked or exec'd a program.
    pub pids: HashSet<u32>,
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
        // A big queue: FORCE goes past rmem_max (we are root); else take what the sysctl allows.
        let size: libc::c_int = RCVBUF;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: setsockopt reads one c_int.
            let r = unsafe {
                libc::setsockopt(raw, libc::SOL_SOCKET, opt, (&raw const size).cast(), size_of::<libc::c_int>() as _)
            };
            if r == 0 {
                break;
            }
        }
        // SAFETY: sockaddr_nl is plain data; zeroed is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: `addr` is a valid sockaddr_nl.
        if unsafe { libc::bind(raw, (&raw const addr).cast(), size_of::<libc::sockaddr_nl>() as _) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let msg = listen_message();
        // SAFETY: sending our own buffer on our socket.
        if unsafe { libc::send(raw, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, buf: vec![0; 64 << 10] })
    }

    /// Every event queued since the last call, without blocking.
    pub fn drain(&mut self) -> Changed {
        let mut out = Changed::default();
        for _ in 0..MAX_DRAIN {
            // SAFETY: receiving into our own buffer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return out,
                    Some(libc::EINTR) => continue,
                    // The queue overflowed: events are missing, the queue itself goes on.
                    Some(libc::ENOBUFS) => out.lost = true,
                    _ => {
                        out.lost = true;
                        return out;
                    }
                }
                continue;
            }
            parse_events(&self.buf[..n as usize], &mut out.pids);
        }
        out.lost = true; // more than MAX_DRAIN: treat the rest as lost
        out
    }
}

/// The subscription: nlmsghdr, cn_msg for the proc connector, and the LISTEN op.
fn listen_message() -> Vec<u8> {
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
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&(payload.len() as u16).to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&payload);
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Add the processes that forked or exec'd in one datagram of netlink messages to `pids`.
/// Truncated or foreign messages are skipped.
pub fn parse_events(mut b: &[u8], pids: &mut HashSet<u32>) {
    while let Some(len) = u32_at(b, 0).map(|l| l as usize) {
        if len < NLMSG_HDRLEN || len > b.len() {
            return;
        }
        let msg = &b[NLMSG_HDRLEN..len];
        if u32_at(msg, 0) == Some(CN_IDX_PROC) && u32_at(msg, 4) == Some(CN_VAL_PROC) {
            let ev = msg.get(CN_MSG_LEN..).unwrap_or_default();
            let data = |at: usize| u32_at(ev, EVENT_DATA + at);
            match u32_at(ev, 0) {
                // exec: (process_pid, process_tgid); fork: (parent pid, tgid, child pid, tgid).
                Some(PROC_EVENT_EXEC) => pids.extend(data(4)),
                Some(PROC_EVENT_FORK) => pids.extend(data(12)),
                _ => {}
            }
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or_default();
    }
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
        let mut m = listen_message();
        m.truncate(NLMSG_HDRLEN + CN_MSG_LEN);
        m.extend_from_slice(&ev);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn exec_and_fork_events() {
        let mut b = event(PROC_EVENT_EXEC, &[501, 500]);
        b.extend(event(PROC_EVENT_FORK, &[1, 1, 777, 777]));
        b.extend(event(0x8000_0000, &[600, 600, 0, 0])); // exit: not a change of program
        let mut pids = HashSet::new();
        parse_events(&b, &mut pids);
        assert_eq!(pids, HashSet::from([500, 777]));
    }

    #[test]
    fn bad_datagrams() {
        let mut pids = HashSet::new();
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

    /// The real connector (root): a child we start is reported.
    #[test]
    fn a_real_exec_is_seen() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (CAP_NET_ADMIN)");
            return;
        }
        let mut events = ProcEvents::open().expect("proc connector");
        let child = std::process::Command::new("/bin/true").spawn().expect("spawn");
        let pid = child.id();
        let mut child = child;
        child.wait().expect("wait");
        let mut seen = false;
        for _ in 0..100 {
            let c = events.drain();
            if c.pids.contains(&pid) || c.lost {
                seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(seen, "no fork/exec event for pid {pid}");
    }
}
