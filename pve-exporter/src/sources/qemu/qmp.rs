//! A minimal QMP client for a VM's monitor socket (`/var/run/qemu-server/<vmid>.qmp`).
//!
//! PVE's own tools use the same socket and QEMU serves one client at a time, so a connection
//! is kept to a few commands and every step (connect, greeting, each command) has its own time
//! limit. The socket is non-blocking and waited on with `poll`, so no step can block longer.

use std::{
    io::{self, Read, Write},
    os::{
        fd::{AsFd, FromRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::Path,
    time::{Duration, Instant},
};

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};

use crate::sources::{
    qemu::hmp::BlockStats,
    qemu::wait::{Wait, wait_fd},
};

/// Largest message accepted: `query-block` of a VM with many disks is tens of KiB.
const MAX_MESSAGE: usize = 16 << 20;

pub struct Qmp {
    stream: UnixStream,
    buf: Vec<u8>,
    step: Duration,
    next_id: u64,
    /// A read or write failed or timed out: the stream's state is unknown, it is not used again.
    broken: bool,
}

fn timed_out(what: &str, step: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: no answer within {step:?}"))
}

/// Connect a non-blocking Unix stream socket. A listener whose backlog is full makes
/// `connect` fail with EAGAIN (nothing to wait on): retry until the deadline.
pub(crate) fn connect(path: &Path, deadline: Instant, step: Duration) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: socket path too long", path.display())));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let r = unsafe { libc::connect(raw, (&raw const addr).cast(), len) };
        if r == 0 {
            return Ok(UnixStream::from(fd));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                if Instant::now() >= deadline {
                    return Err(timed_out("connect (backlog full)", step));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Some(libc::EINPROGRESS) => {
                wait_fd(fd.as_fd(), Wait::Write, deadline).map_err(|_| timed_out("connect", step))?;
                let mut err: libc::c_int = 0;
                let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: getsockopt writes one c_int into `err`.
                let r =
                    unsafe { libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &mut l) };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                if err != 0 {
                    return Err(io::Error::from_raw_os_error(err));
                }
                return Ok(UnixStream::from(fd));
            }
            _ => return Err(e),
        }
    }
}

impl Qmp {
    /// Connect, read the greeting and negotiate capabilities; each step within `step`.
    pub fn connect(path: &Path, step: Duration) -> io::Result<Self> {
        let stream = connect(path, Instant::now() + step, step)?;
        let mut q = Qmp { stream, buf: Vec::new(), step, next_id: 1, broken: false };
        let greeting = q.read_message(Instant::now() + step).map_err(|e| ctx("greeting", e))?;
        if greeting.get("QMP").is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("not a QMP greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// True once a read or write failed: the connection is not used again.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Run a command; its `return` value, or Err with QEMU's error description.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> io::Result<Value> {
        if self.broken {
            return Err(io::Error::other("the connection failed earlier"));
        }
        let r = self.exchange(command, arguments);
        if r.as_ref().is_err_and(|e| e.kind() != io::ErrorKind::Other) {
            self.broken = true;
        }
        r
    }

    fn exchange(&mut self, command: &str, arguments: Option<Value>) -> io::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let deadline = Instant::now() + self.step;
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');
        self.write_all(&line, deadline).map_err(|e| ctx(command, e))?;
        loop {
            let m = self.read_message(deadline).map_err(|e| ctx(command, e))?;
            // Events arrive between replies; a reply to an earlier (abandoned) id is stale.
            if m.get("event").is_some() || m.get("id").is_some_and(|i| i.as_u64() != Some(id)) {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let desc = e.get("desc").and_then(|d| d.as_str()).unwrap_or("unknown error");
                // Other: an error reply; the connection stays usable.
                return Err(io::Error::other(format!("{command}: QEMU error: {desc}")));
            }
        }
    }

    /// A human monitor command's text, through `human-monitor-command`.
    pub fn hmp(&mut self, command_line: &str) -> io::Result<String> {
        let r = self.execute("human-monitor-command", Some(json!({ "command-line": command_line })))?;
        r.as_str()
            .map(str::to_string)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{command_line}: reply is not text")))
    }

    fn write_all(&mut self, mut data: &[u8], deadline: Instant) -> io::Result<()> {
        while !data.is_empty() {
            match self.stream.write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.stream.as_fd(), Wait::Write, deadline).map_err(|_| timed_out("write", self.step))?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next JSON message (one per line).
    fn read_message(&mut self, deadline: Instant) -> io::Result<Value> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad QMP message: {e}")));
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "QMP message too long"));
            }
            let mut chunk = [0u8; 16 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QEMU closed the connection")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.stream.as_fd(), Wait::Read, deadline).map_err(|_| timed_out("read", self.step))?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn ctx(what: &str, e: io::Error) -> io::Error {
    if e.to_string().starts_with(what) { e } else { io::Error::new(e.kind(), format!("{what}: {e}")) }
}

/// Rows of `query-blockstats` (its `return` array, as JSON text): (drive name, counters) in
/// QEMU's order. The name is the BlockBackend's (`drive-scsi0`), or for a `-blockdev` drive
/// without one the top node's (`drive-scsi0` in PVE 9), as `info block` prints them. Parsed
/// into just the fields we export (this runs for every VM on every scrape); a counter that is
/// not a u64 is left at 0, an unparseable reply gives no rows.
pub fn blockstats_rows(ret: &str) -> Vec<(String, BlockStats)> {
    #[derive(Deserialize)]
    struct Row<'a> {
        #[serde(default, borrow)]
        device: Option<Cow<'a, str>>,
        #[serde(default, borrow, rename = "node-name")]
        node_name: Option<Cow<'a, str>>,
        stats: Option<Counters>,
    }
    /// Each field: any JSON value, kept only when it is a u64.
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Counters {
        rd_bytes: Option<Value>,
        wr_bytes: Option<Value>,
        rd_operations: Option<Value>,
        wr_operations: Option<Value>,
        flush_operations: Option<Value>,
        rd_total_time_ns: Option<Value>,
        wr_total_time_ns: Option<Value>,
        flush_total_time_ns: Option<Value>,
    }
    let Ok(rows) = serde_json::from_str::<Vec<Option<Row<'_>>>>(ret) else { return Vec::new() };
    rows.into_iter()
        .flatten()
        .filter_map(|r| {
            let name = drive_name(r.device.as_deref(), r.node_name.as_deref())?;
            let c = r.stats?;
            let v = |x: Option<Value>| x.and_then(|v| v.as_u64()).unwrap_or(0);
            let st = BlockStats {
                rd_bytes: v(c.rd_bytes),
                wr_bytes: v(c.wr_bytes),
                rd_operations: v(c.rd_operations),
                wr_operations: v(c.wr_operations),
                flush_operations: v(c.flush_operations),
                rd_total_time_ns: v(c.rd_total_time_ns),
                wr_total_time_ns: v(c.wr_total_time_ns),
                flush_total_time_ns: v(c.flush_total_time_ns),
            };
            Some((name, st))
        })
        .collect()
}

/// The run state of a `query-status` reply's `return` (JSON text): `{"running": true,
/// "status": "running"}` -> `running` (QAPI `RunState`: `paused`, `prelaunch`, `inmigrate`,
/// `postmigrate`, `suspended`, ...).
pub fn run_state(ret: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(ret).ok()?;
    let s = v.get("status")?.as_str()?;
    (!s.is_empty() && s.len() < 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')).then(|| s.to_string())
}

/// Virtual sizes of `query-block` (its `return` array, as JSON text): (drive name, bytes) for
/// every drive with a medium. The size the guest sees, whatever the image format or storage.
pub fn virtual_sizes(ret: &str) -> Vec<(String, u64)> {
    #[derive(Deserialize)]
    struct Row<'a> {
        #[serde(default, borrow)]
        device: Option<Cow<'a, str>>,
        #[serde(borrow)]
        inserted: Option<Inserted<'a>>,
    }
    #[derive(Deserialize)]
    struct Inserted<'a> {
        #[serde(default, borrow, rename = "node-name")]
        node_name: Option<Cow<'a, str>>,
        image: Option<Image>,
    }
    #[derive(Deserialize)]
    struct Image {
        #[serde(rename = "virtual-size")]
        virtual_size: Option<Value>,
    }
    let Ok(rows) = serde_json::from_str::<Vec<Option<Row<'_>>>>(ret) else { return Vec::new() };
    rows.into_iter()
        .flatten()
        .filter_map(|r| {
            let inserted = r.inserted?;
            let name = drive_name(r.device.as_deref(), inserted.node_name.as_deref())?;
            let size = inserted.image?.virtual_size?.as_u64()?;
            Some((name, size))
        })
        .collect()
}

fn drive_name(device: Option<&str>, node: Option<&str>) -> Option<String> {
    device.filter(|s| !s.is_empty()).or(node.filter(|s| !s.is_empty())).map(str::to_string)
}

/// A command of a pipelined exchange ([`exchange_many_each`]): its name and arguments.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    pub execute: &'a str,
    pub arguments: Option<&'a Value>,
}

impl<'a> From<&'a str> for Command<'a> {
    fn from(execute: &'a str) -> Self {
        Self { execute, arguments: None }
    }
}

/// The replies of one VM in [`exchange_many`]: one per command, in order, each the JSON text of
/// its `return`; an error reply is `Err(QEMU's description)` and leaves the others usable.
pub type Replies = Vec<Result<Box<RawValue>, QemuError>>;

/// An error reply of QEMU to one command: its description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("QEMU error: {desc}")]
pub struct QemuError {
    /// QMP's error class (`GenericError`, `DeviceNotActive`, `DeviceNotFound`, ...).
    pub class: String,
    pub desc: String,
}

/// A QMP message as far as [`exchange_many`] needs it; the `return` stays unparsed text.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "QMP")]
    greeting: Option<serde::de::IgnoredAny>,
    id: Option<u64>,
    #[serde(borrow, rename = "return")]
    ret: Option<&'a RawValue>,
    error: Option<ErrorReply>,
}

#[derive(Deserialize)]
struct ErrorReply {
    class: Option<String>,
    desc: Option<String>,
}

/// One VM's pipelined exchange.
struct Pipelined<'a> {
    path: &'a Path,
    stream: Option<UnixStream>,
    /// Request bytes not written yet.
    out: Vec<u8>,
    buf: Vec<u8>,
    greeted: bool,
    /// Reply to `qmp_capabilities` (id 0) and to command i (id i + 1).
    replies: Vec<Option<Result<Box<RawValue>, QemuError>>>,
    done: Option<io::Result<Replies>>,
    /// `done` was handed to the caller.
    reported: bool,
}

impl Pipelined<'_> {
    fn fail(&mut self, e: io::Error) {
        self.stream = None;
        self.done = Some(Err(e));
    }

    /// Take the complete lines of the buffer; true when every reply is in.
    fn take_lines(&mut self) -> io::Result<bool> {
        // Lines are parsed where they lie in the buffer (a reply is ~15 KiB: no copy of it
        // before the one kept), and the buffer is shifted once per read.
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let line = &self.buf[start..start + nl + 1];
            start += nl + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let m: Envelope<'_> = serde_json::from_slice(line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad QMP message: {e}")))?;
            if !self.greeted {
                if m.greeting.is_none() {
                    let shown = String::from_utf8_lossy(line).trim().to_string();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("not a QMP greeting: {shown}")));
                }
                self.greeted = true;
                continue;
            }
            // Events (no id) come between replies.
            let Some(id) = m.id else { continue };
            let Some(slot) = usize::try_from(id).ok().and_then(|i| self.replies.get_mut(i)) else { continue };
            *slot = Some(match (m.ret, m.error) {
                (Some(r), _) => Ok(r.to_owned()),
                (None, e) => Err(QemuError {
                    class: e.as_ref().and_then(|e| e.class.clone()).unwrap_or_default(),
                    desc: e.and_then(|e| e.desc).unwrap_or_else(|| "unknown error".into()),
                }),
            });
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_MESSAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "QMP message too long"));
        }
        if let Some(Some(Err(e))) = self.replies.first() {
            return Err(io::Error::other(format!("qmp_capabilities: {e}")));
        }
        Ok(self.replies.iter().all(Option::is_some))
    }

    /// Read what is there; Some(result) once the exchange is over.
    fn on_readable(&mut self) -> Option<io::Result<Replies>> {
        let stream = self.stream.as_mut()?;
        let mut chunk = [0u8; 16 << 10];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QEMU closed the connection"))),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
        match self.take_lines() {
            Ok(true) => Some(Ok(self.replies.drain(1..).flatten().collect())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn on_writable(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        while !self.out.is_empty() {
            match stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => drop(self.out.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Run the same argument-less `commands` on many VMs' QMP sockets at once, from the calling
/// thread: each connection gets `qmp_capabilities` and the commands in one write (QEMU runs
/// them in order), at most `window` connections are open at a time, and all share one
/// `deadline`. Each socket is closed as soon as its replies are in, so PVE's own tools, which
/// use the same single-client socket, wait no longer than for a one-VM exchange.
///
/// This is the scrape's hot path: for 100 VMs it costs one thread and a few system calls per
/// VM, where a session per VM on its own thread costs a thread start and four round trips.
pub fn exchange_many(paths: &[&Path], commands: &[&str], window: usize, deadline: Instant) -> Vec<io::Result<Replies>> {
    let mut out: Vec<Option<io::Result<Replies>>> = paths.iter().map(|_| None).collect();
    let commands: Vec<Command<'_>> = commands.iter().map(|c| Command::from(*c)).collect();
    exchange_many_each(paths, &commands, window, deadline, |i, r| out[i] = Some(r));
    out.into_iter().map(|r| r.unwrap_or_else(|| Err(io::Error::other("no result")))).collect()
}

/// [`exchange_many`], handing each VM's replies to `done(index in paths, replies)` as soon as
/// they are complete (or failed), and freeing that VM's buffers then: the caller parses a
/// VM's ~20 KiB of replies into rows while the others are still answering, instead of
/// holding every VM's text until the last one is in (2 MiB for 100 VMs).
pub fn exchange_many_each(
    paths: &[&Path],
    commands: &[Command<'_>],
    window: usize,
    deadline: Instant,
    mut done: impl FnMut(usize, io::Result<Replies>),
) {
    let mut request = Vec::new();
    for (i, c) in std::iter::once(Command::from("qmp_capabilities")).chain(commands.iter().copied()).enumerate() {
        let mut m = json!({ "execute": c.execute, "id": i });
        if let Some(a) = c.arguments {
            m["arguments"] = a.clone();
        }
        request.extend_from_slice(m.to_string().as_bytes());
        request.push(b'\n');
    }
    let mut vms: Vec<Pipelined<'_>> = paths
        .iter()
        .map(|path| Pipelined {
            path,
            stream: None,
            out: request.clone(),
            buf: Vec::new(),
            greeted: false,
            replies: vec![None; commands.len() + 1],
            done: None,
            reported: false,
        })
        .collect();
    let mut next = 0; // the next VM to connect
    loop {
        // Open connections up to the window. A full backlog (EAGAIN) is retried on the next
        // round; anything else is that VM's error.
        let open = vms.iter().filter(|v| v.stream.is_some()).count();
        let mut backlog_full = false;
        for _ in open..window.max(1) {
            let Some(v) = vms.get_mut(next) else { break };
            match connect(v.path, Instant::now(), Duration::ZERO) {
                Ok(s) => {
                    v.stream = Some(s);
                    if let Err(e) = v.on_writable() {
                        v.fail(ctx("write", e));
                    }
                    next += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    backlog_full = true;
                    break;
                }
                Err(e) => {
                    v.fail(e);
                    next += 1;
                }
            }
        }
        let mut fds: Vec<(usize, libc::pollfd)> = vms
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let s = v.stream.as_ref()?;
                let events = libc::POLLIN | if v.out.is_empty() { 0 } else { libc::POLLOUT };
                Some((i, libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(s), events, revents: 0 }))
            })
            .collect();
        if fds.is_empty() && next >= vms.len() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let ms =
            if backlog_full { 5 } else { libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX) };
        let mut pfds: Vec<libc::pollfd> = fds.iter().map(|(_, p)| *p).collect();
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            for (i, _) in &fds {
                vms[*i].fail(io::Error::new(e.kind(), format!("poll: {e}")));
            }
            continue;
        }
        for ((i, _), p) in fds.iter_mut().zip(&pfds) {
            let v = &mut vms[*i];
            if p.revents & libc::POLLOUT != 0
                && let Err(e) = v.on_writable()
            {
                v.fail(ctx("write", e));
                continue;
            }
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                && let Some(r) = v.on_readable()
            {
                v.stream = None; // closed now: the socket is free for PVE's tools
                v.done = Some(r.map_err(|e| ctx("read", e)));
            }
        }
        report(&mut vms, &mut done);
    }
    for v in &mut vms {
        if v.done.is_none() {
            v.stream = None;
            v.done = Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete answer before the scrape's monitor deadline",
            )));
        }
    }
    report(&mut vms, &mut done);
}

/// Hand over the results of VMs that finished since the last call, and free their buffers.
fn report(vms: &mut [Pipelined<'_>], done: &mut impl FnMut(usize, io::Result<Replies>)) {
    for (i, v) in vms.iter_mut().enumerate() {
        if v.reported {
            continue;
        }
        if let Some(r) = v.done.take() {
            v.reported = true;
            v.buf = Vec::new();
            v.out = Vec::new();
            v.replies = Vec::new();
            done(i, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_status_run_state() {
        assert_eq!(
            run_state(r#"{"running": false, "singlestep": false, "status": "prelaunch"}"#).as_deref(),
            Some("prelaunch")
        );
        assert_eq!(run_state(r#"{"running": true, "status": "running"}"#).as_deref(), Some("running"));
        for bad in ["", "[]", r#"{"status": 3}"#, r#"{"status": "Bad State"}"#, r#"{"running": true}"#] {
            assert_eq!(run_state(bad), None, "{bad:?}");
        }
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/qemu");

    fn ret(name: &str) -> String {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()).unwrap();
        v["return"].to_string()
    }

    #[test]
    fn blockstats_of_real_qemu() {
        let rows = blockstats_rows(&ret("query-blockstats.json"));
        let names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "drive-scsi0",
                "drive-virtio0",
                "drive-scsi1",
                "drive-virtio1",
                "drive-ide2",
                "drive-ide0",
                "drive-scsi2",
                "drive-scsi3"
            ]
        );
        let s = rows[0].1;
        assert_eq!((s.rd_operations, s.rd_bytes, s.wr_operations, s.wr_bytes), (1, 65536, 1, 12288));
        assert!(s.wr_total_time_ns > 0 && s.rd_total_time_ns > 0);
        assert_eq!((rows[1].1.rd_operations, rows[1].1.rd_bytes), (1, 4096));
        // The HMP text of the same moment says the same.
        let text = std::fs::read_to_string(format!("{FIXTURES}/info-blockstats.txt")).unwrap();
        let hmp = crate::sources::qemu::hmp::parse_info_blockstats(&text);
        assert_eq!(hmp[0].1, rows[0].1);
    }

    #[test]
    fn sizes_of_real_qemu() {
        let sizes = virtual_sizes(&ret("query-block.json"));
        assert_eq!(
            sizes,
            [
                ("drive-scsi0".to_string(), 1 << 30),
                ("drive-virtio0".to_string(), 64 << 20),
                ("drive-scsi1".to_string(), 32 << 20),
                ("drive-virtio1".to_string(), 32 << 20),
                ("drive-ide0".to_string(), 4 << 20),
                ("drive-scsi2".to_string(), 2 << 30),
                ("drive-scsi3".to_string(), 32 << 20),
            ]
        );
    }

    #[test]
    fn odd_replies() {
        assert!(blockstats_rows(&json!({}).to_string()).is_empty());
        assert!(blockstats_rows("not json").is_empty());
        assert!(blockstats_rows(&json!([{"device": ""}, {"device": "a", "stats": 3}]).to_string()).is_empty());
        assert_eq!(
            blockstats_rows(&json!([{"device": "a", "stats": {"rd_bytes": -1, "wr_bytes": 2}}]).to_string())[0]
                .1
                .wr_bytes,
            2
        );
        assert!(
            virtual_sizes(&json!([{"device": "a", "inserted": {"image": {"virtual-size": "big"}}}]).to_string())
                .is_empty()
        );
    }

    #[test]
    fn a_missing_socket_fails_fast() {
        let e = Qmp::connect(Path::new("/nonexistent/x.qmp"), Duration::from_secs(5)).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let long = format!("/{}", "x".repeat(200));
        assert_eq!(
            Qmp::connect(Path::new(&long), Duration::from_secs(5)).err().unwrap().kind(),
            io::ErrorKind::InvalidInput
        );
    }
    /// A QMP server double on a Unix socket: greets, then answers each line with `answer`
    /// (None: say nothing more). Serves `clients` connections, one at a time as QEMU does.
    fn fake_qemu(dir: &Path, name: &str, clients: usize, answer: fn(&Value) -> Option<String>) -> std::path::PathBuf {
        use std::io::BufRead;
        let path = dir.join(name);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for _ in 0..clients {
                let Ok((mut conn, _)) = listener.accept() else { return };
                let _ = conn.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n");
                let reader = io::BufReader::new(conn.try_clone().unwrap());
                for line in reader.lines().map_while(Result::ok) {
                    let req: Value = serde_json::from_str(&line).unwrap();
                    match answer(&req) {
                        Some(a) => {
                            let _ = conn.write_all(a.as_bytes());
                        }
                        None => std::thread::sleep(Duration::from_secs(3)),
                    }
                }
            }
        });
        path
    }

    fn polite(req: &Value) -> Option<String> {
        let id = &req["id"];
        Some(match req["execute"].as_str() {
            // An event before the reply, and replies split over two writes' worth of lines.
            Some("query-blockstats") => format!(
                "{{\"event\": \"RTC_CHANGE\", \"data\": {{}}}}\r\n{{\"return\": [{{\"device\": \"drive-scsi0\", \"stats\": {{\"rd_bytes\": 7}}}}], \"id\": {id}}}\r\n"
            ),
            Some("query-block") => {
                format!("{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"nope\"}}, \"id\": {id}}}\n")
            }
            _ => format!("{{\"return\": {{}}, \"id\": {id}}}\n"),
        })
    }

    #[test]
    fn many_vms_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let good: Vec<_> = (0..5).map(|i| fake_qemu(dir.path(), &format!("{i}.qmp"), 1, polite)).collect();
        let silent = fake_qemu(dir.path(), "silent.qmp", 1, |_| None);
        let missing = dir.path().join("missing.qmp");
        let mut paths: Vec<&Path> = good.iter().map(|p| p.as_path()).collect();
        paths.push(&silent);
        paths.push(&missing);
        let t = Instant::now();
        // A window of 2: the seven are served two at a time, all within one deadline.
        let r =
            exchange_many(&paths, &["query-blockstats", "query-block"], 2, Instant::now() + Duration::from_millis(500));
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(r.len(), 7);
        for reply in &r[..5] {
            let replies = reply.as_ref().unwrap();
            assert_eq!(blockstats_rows(replies[0].as_ref().unwrap().get())[0].1.rd_bytes, 7);
            assert_eq!(replies[1].as_ref().unwrap_err().desc, "nope");
        }
        assert_eq!(r[5].as_ref().unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(r[6].as_ref().unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_peer_that_hangs_up_or_talks_nonsense() {
        let dir = tempfile::tempdir().unwrap();
        let rude = fake_qemu(dir.path(), "rude.qmp", 1, |_| Some("this is not json\n".into()));
        let refusing = fake_qemu(dir.path(), "refusing.qmp", 1, |req| {
            Some(format!("{{\"error\": {{\"desc\": \"no caps\"}}, \"id\": {}}}\n", req["id"]))
        });
        let r = exchange_many(&[&rude, &refusing], &["query-blockstats"], 4, Instant::now() + Duration::from_secs(2));
        assert_eq!(r[0].as_ref().unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(r[1].as_ref().unwrap_err().to_string().contains("no caps"), "{:?}", r[1]);
        assert!(exchange_many(&[], &["x"], 4, Instant::now()).is_empty());
    }
}
