//! `qm monitor <vmid>` on a pseudo-terminal: PVE's front end to a VM's human monitor, for
//! hosts or VMs where the QMP socket cannot be used directly.
//!
//! `qm` prints its `qm> ` prompt only on a terminal, so it runs on a PTY of its own (a new
//! session with the PTY as controlling terminal). Each step (the first prompt, each command)
//! has a time limit; the master side is non-blocking and waited on with `poll`. When done, the
//! session is told to `quit`; one that does not exit is killed with its process group, either
//! inline or, with `--qm-monitor-defer-close`, later by a reaper thread, which also reaps it:
//! no zombie, and the PTY is closed once the process is gone.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::{fs::OpenOptionsExt, process::CommandExt},
    },
    path::Path,
    process::{Child, Command, Stdio},
    sync::{OnceLock, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::sources::qemu::wait::{Wait, wait_fd};

pub const PROMPT: &str = "qm> ";
/// Largest output of one command.
const MAX_OUTPUT: usize = 16 << 20;

/// Terminal output as text: ANSI escape sequences (a readline may send some even for a dumb
/// terminal) and carriage returns removed (HMP ends lines in `\r\n`, and the terminal turns
/// each `\n` into `\r\n` again).
pub fn clean_terminal_output(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The output of `command` in the cleaned text a session printed after it was sent, up to the
/// next prompt: without the terminal's echo of the command line and without the prompt. None
/// while the prompt has not arrived.
pub fn command_output(cleaned: &str, command: &str) -> Option<String> {
    let body = cleaned.strip_suffix(PROMPT)?;
    let body = match body.split_once('\n') {
        Some((first, rest)) if first.trim() == command.trim() => rest,
        None if body.trim() == command.trim() => "",
        _ => body,
    };
    Some(body.to_string())
}

/// Whether terminal output ends in the prompt; looks at the tail only, so that a long output
/// is not cleaned again on every read.
fn at_prompt(raw: &[u8]) -> bool {
    clean_terminal_output(&raw[raw.len().saturating_sub(64)..]).ends_with(PROMPT)
}

/// A child `qm` that is done with: killed when `kill_at` passes, reaped, then its PTY closed.
struct Closing {
    child: Child,
    _pty: File,
    kill_at: Instant,
    killed: bool,
}

impl Closing {
    /// Advance; true when the child is reaped.
    fn poll(&mut self, now: Instant) -> bool {
        match self.child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) => {}
        }
        if !self.killed && now >= self.kill_at {
            kill_group(&self.child);
            self.killed = true;
        }
        false
    }
}

/// SIGKILL to the child's process group (it is a session leader: group id = pid). Only called
/// while the child is not reaped, so the id cannot have been reused.
fn kill_group(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals that process group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// The reaper thread's queue; started on first use.
fn reaper() -> Option<&'static mpsc::Sender<Closing>> {
    static REAPER: OnceLock<Option<mpsc::Sender<Closing>>> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Closing>();
            let spawned = thread::Builder::new().name("qm-reaper".into()).spawn(move || {
                let mut pending: Vec<Closing> = Vec::new();
                loop {
                    let wait = if pending.is_empty() { Duration::from_secs(3600) } else { Duration::from_millis(20) };
                    match rx.recv_timeout(wait) {
                        Ok(c) => pending.push(c),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let now = Instant::now();
                    pending.retain_mut(|c| !c.poll(now));
                }
            });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

/// One `qm monitor` session.
pub struct QmSession {
    child: Option<Child>,
    pty: File,
    step: Duration,
    defer_close: bool,
    broken: bool,
}

impl QmSession {
    /// Start `<qm> monitor <vmid>` on a new PTY and wait for its first prompt.
    pub fn open(qm: &Path, vmid: &str, step: Duration, defer_close: bool) -> io::Result<Self> {
        let (pty, tty) = open_pty()?;
        let mut cmd = Command::new(qm);
        cmd.args(["monitor", vmid])
            .stdin(Stdio::from(tty.try_clone()?))
            .stdout(Stdio::from(tty.try_clone()?))
            .stderr(Stdio::from(tty))
            // Plain output: no colours or bracketed-paste sequences from a readline.
            .env("TERM", "dumb")
            // The API token is the daemon's, not qm's.
            .env_remove(crate::sources::pve::api::TOKEN_ENV);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own with the PTY as controlling terminal: qm sees a terminal,
                // and the whole group can be killed.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", qm.display())))?;
        // Drop our copies of the terminal side: the PTY then reports the end when qm exits.
        drop(cmd);
        let mut s = QmSession { child: Some(child), pty, step, defer_close, broken: false };
        let deadline = Instant::now() + step;
        let mut raw = Vec::new();
        loop {
            if at_prompt(&raw) {
                return Ok(s);
            }
            if raw.len() > MAX_OUTPUT {
                s.broken = true;
                return Err(io::Error::new(io::ErrorKind::InvalidData, "no qm> prompt in a flood of output"));
            }
            if let Err(e) = s.read_some(&mut raw, deadline) {
                s.broken = true;
                return Err(io::Error::new(e.kind(), format!("waiting for the qm> prompt: {e}")));
            }
        }
    }

    /// True once a step failed: the session's state is unknown and it is not used again.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Run one monitor command; its output.
    pub fn command(&mut self, command: &str) -> io::Result<String> {
        if self.broken {
            return Err(io::Error::other("session failed earlier"));
        }
        let r = self.exchange(command);
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    fn exchange(&mut self, command: &str) -> io::Result<String> {
        let deadline = Instant::now() + self.step;
        self.write_all(format!("{command}\n").as_bytes(), deadline)?;
        let mut raw = Vec::new();
        loop {
            if at_prompt(&raw)
                && let Some(out) = command_output(&clean_terminal_output(&raw), command)
            {
                return Ok(out);
            }
            if raw.len() > MAX_OUTPUT {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "output too long"));
            }
            self.read_some(&mut raw, deadline)?;
        }
    }

    fn read_some(&mut self, raw: &mut Vec<u8>, deadline: Instant) -> io::Result<()> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.pty.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "qm exited")),
                Ok(n) => {
                    raw.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                // EIO: every terminal-side fd is closed, qm is gone.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "qm exited"));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(self.pty.as_fd(), Wait::Read, deadline)
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {:?}", self.step))
                    })?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn write_all(&mut self, mut data: &[u8], deadline: Instant) -> io::Result<()> {
        while !data.is_empty() {
            match self.pty.write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(self.pty.as_fd(), Wait::Write, deadline)
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "terminal does not take input"))?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for QmSession {
    /// Ask qm to quit, then make sure it is gone and reaped: later by the reaper thread
    /// (`--qm-monitor-defer-close`, the scrape does not wait) or here, within one step.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = self.pty.write(b"quit\n");
        let pty = match self.pty.try_clone() {
            Ok(f) => f,
            Err(_) => {
                // No second handle (fd limit): close inline.
                kill_group(&child);
                let _ = child.wait();
                return;
            }
        };
        let mut closing = Closing { child, _pty: pty, kill_at: Instant::now() + self.step, killed: false };
        if !self.defer_close {
            // Within one step, killed at its end; one that survives SIGKILL for a second
            // (uninterruptible I/O) is left to the reaper.
            let give_up = closing.kill_at + Duration::from_secs(1);
            loop {
                if closing.poll(Instant::now()) {
                    return;
                }
                if Instant::now() > give_up {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        let unsent = match reaper() {
            Some(tx) => tx.send(closing).err().map(|e| e.0),
            None => Some(closing),
        };
        if let Some(mut c) = unsent {
            kill_group(&c.child);
            let _ = c.child.wait();
        }
    }
}

/// A new pseudo-terminal: (master, terminal side), both close-on-exec.
fn open_pty() -> io::Result<(File, File)> {
    // SAFETY: posix_openpt returns a new fd or -1.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let master = File::from(unsafe { OwnedFd::from_raw_fd(master) });
    let fd = master.as_raw_fd();
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: valid master fd; ptsname_r writes a NUL-terminated name into `name`.
    unsafe {
        if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 || libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a C string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    let tty = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(&path)?;
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((master, tty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_output() {
        assert_eq!(clean_terminal_output(b"a\r\r\nb\x1b[?2004hqm> "), "a\nbqm> ");
        assert_eq!(clean_terminal_output(b"\x1b]0;title\x07x\x1b]2;t\x1b\\y\x1b"), "xy");
        assert_eq!(clean_terminal_output(b"\xff\x1b[1;31mred\x1b[0m"), "\u{fffd}red");
        assert_eq!(clean_terminal_output(b"\x1b["), "");
    }

    #[test]
    fn output_between_echo_and_prompt() {
        // As it arrives through a PTY: the echo, HMP's \r\n turned into \r\r\n, the prompt.
        let raw = b"info network\r\nnet0: index=0,type=tap,ifname=tap100i0\r\r\nnet1: index=1,type=tap,ifname=tap100i1\r\r\nqm> ";
        let out = command_output(&clean_terminal_output(raw), "info network").unwrap();
        assert_eq!(out, "net0: index=0,type=tap,ifname=tap100i0\nnet1: index=1,type=tap,ifname=tap100i1\n");
        assert_eq!(command_output("info block\nqm", "info block"), None, "no prompt yet");
        assert_eq!(command_output("info block\nqm> ", "info block").as_deref(), Some(""));
        // Without echo (a terminal with echo off).
        assert_eq!(command_output("x\nqm> ", "info block").as_deref(), Some("x\n"));
        assert_eq!(command_output("qm> ", "info block").as_deref(), Some(""));
    }

    #[test]
    fn missing_qm_fails_at_spawn() {
        let e = QmSession::open(Path::new("/nonexistent/qm"), "100", Duration::from_secs(1), true).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    /// Real programs on the PTY: one that never prompts, one that does.
    #[test]
    fn a_program_without_prompt_times_out_and_is_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("qm");
        std::fs::write(&script, "#!/bin/sh\nprintf 'Entering QEMU Monitor for VM %s\\n' \"$2\"\nexec sleep 60\n")
            .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let e = QmSession::open(&script, "100", Duration::from_millis(200), false).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // A prompting shell script: commands echo back through the terminal.
        std::fs::write(&script, "#!/bin/sh\nprintf 'banner\\nqm> '\nwhile read l; do [ \"$l\" = quit ] && exit 0; printf 'out:%s\\nqm> ' \"$l\"; done\n").unwrap();
        let mut s = QmSession::open(&script, "100", Duration::from_secs(5), false).unwrap();
        assert_eq!(s.command("info network").unwrap(), "out:info network\n");
        assert_eq!(s.command("info block").unwrap(), "out:info block\n");
        drop(s);
    }
}
