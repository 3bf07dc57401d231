//! External commands (`zfs`, `lvs`, ...): run without a shell, with a time limit and bounded
//! output. A command that overruns its time or output limit is killed together with its whole
//! process group (so a wrapper's children die too) and reaped; one that survives SIGKILL (stuck
//! in uninterruptible I/O) is reaped by a background thread and keeps its [`Slot`] busy, so
//! scrapes do not pile up stuck processes.

use std::{
    ffi::OsString,
    fmt,
    io::Read,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::deadline::{Backoff, Verdict};

/// PATH of a daemon started without one (systemd's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a killed command may take to die before a background thread takes over reaping it.
const KILL_GRACE: Duration = Duration::from_millis(500);

/// Where host tools are looked up: an optional directory first (`--command-path`, test doubles),
/// then `$PATH`. Commands are host tools, not files below `--root`.
#[derive(Debug, Clone)]
pub struct Tools {
    dirs: Vec<PathBuf>,
}

impl Tools {
    /// `first` (if any), then the directories of `$PATH` (or the standard PATH when unset).
    pub fn new(first: Option<&Path>) -> Self {
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        let mut dirs: Vec<PathBuf> = first.map(Path::to_path_buf).into_iter().collect();
        dirs.extend(std::env::split_paths(&path).filter(|d| d.is_absolute()));
        Self { dirs }
    }

    /// Exactly these directories (tests: no fallback to the host's tools).
    pub fn in_dirs(dirs: Vec<PathBuf>) -> Self {
        Self { dirs }
    }

    /// The first executable regular file called `name` in the search directories.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        self.dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    }

    /// A command for the tool `name`; Err(NotFound) when it is not installed.
    pub fn command(&self, name: &str) -> Result<Cmd, Error> {
        let program = self.find(name).ok_or_else(|| Error::NotFound { name: name.to_string() })?;
        Ok(Cmd::new(program))
    }
}

/// At most one run at a time per slot. A command that survives SIGKILL keeps its slot busy
/// until it is finally reaped; runs in the meantime fail at once with [`Error::Busy`].
///
/// A run that timed out puts the slot under back-off ([`Backoff`]): later runs fail at once
/// with [`Error::Stuck`] (a `zfs` hung on a pool is not started again on every scrape) until a
/// try is due, which runs on a thread of its own, not waited on; the slot opens again when a
/// try finishes in time.
#[derive(Debug, Default, Clone)]
pub struct Slot(Arc<AtomicBool>, Arc<Mutex<Backoff>>);

impl Slot {
    fn acquire(&self) -> Option<SlotGuard> {
        (!self.0.swap(true, Ordering::AcqRel)).then(|| SlotGuard(Some(self.0.clone())))
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.1.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note how a run ended: a timeout backs off, anything else (an answer, even an error)
    /// reopens the slot.
    fn note<T>(&self, r: &Result<T, Error>) {
        let mut b = self.backoff();
        match r {
            Err(Error::TimedOut { .. }) => b.failed(Instant::now()),
            Err(Error::Busy { .. } | Error::Stuck { .. }) => {}
            _ => b.recovered(),
        }
    }
}

struct SlotGuard(Option<Arc<AtomicBool>>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.store(false, Ordering::Release);
        }
    }
}

/// What a finished command left: exit status and (bounded) output. A non-zero exit is not an
/// error here: callers decide (`zfs get` exits 1 and still prints the datasets it found).
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// The first `max_stderr` bytes of stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// stderr as one short line for messages (first lines, whitespace collapsed).
    pub fn stderr_summary(&self) -> String {
        summarize(&self.stderr)
    }
}

/// What a command that reports on several named objects (datasets, volume groups, ...) found,
/// and its complaint when it exited non-zero, which usually explains the objects it left out.
#[derive(Debug)]
pub struct Report<T> {
    pub found: std::collections::HashMap<String, T>,
    pub complaint: Option<String>,
}

impl<T> Report<T> {
    pub fn new(found: std::collections::HashMap<String, T>, out: &Output) -> Self {
        let complaint = (!out.status.success()).then(|| format!("{}: {}", out.status, out.stderr_summary()));
        Self { found, complaint }
    }

    /// Why `name` is missing from the report.
    pub fn missing(&self, name: &str) -> String {
        match &self.complaint {
            Some(c) => format!("{name}: not in the output ({c})"),
            None => format!("{name}: not in the output"),
        }
    }
}

fn summarize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.len() > 300 {
        let cut = crate::sources::clip(&s, 300).len();
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name}: not found (not installed?)")]
    NotFound { name: String },
    #[error("{cmd}: an earlier run has not exited yet")]
    Busy { cmd: String },
    #[error("{cmd}: {why}")]
    Stuck { cmd: String, why: String },
    #[error("{cmd}: cannot start: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd}: {source}")]
    Io { cmd: String, source: std::io::Error },
    #[error("{cmd}: no result within {timeout:?}, killed{}", stderr_note(.stderr))]
    TimedOut { cmd: String, timeout: Duration, stderr: String },
    #[error("{cmd}: more than {limit} bytes of output, killed")]
    TooMuchOutput { cmd: String, limit: usize },
    /// It ran and failed, with no usable output.
    #[error("{cmd}: {status}: {stderr}")]
    Exited { cmd: String, status: String, stderr: String },
    /// Its output does not parse.
    #[error(transparent)]
    Parse(#[from] crate::sources::error::ParseError),
}

fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() { String::new() } else { format!(" (stderr: {stderr})") }
}

/// One command line. Defaults: 10 s, 1 MiB of stdout, 64 KiB of stderr kept, `LC_ALL=C`
/// (numbers and messages in a fixed format), stdin from /dev/null.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
    max_stdout: usize,
    max_stderr: usize,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: vec![("LC_ALL".into(), "C".into())],
            timeout: Duration::from_secs(10),
            max_stdout: 1 << 20,
            max_stderr: 64 << 10,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// stdout beyond this many bytes is an error (the command is killed).
    pub fn max_stdout(mut self, n: usize) -> Self {
        self.max_stdout = n;
        self
    }

    /// stderr beyond this many bytes is read and dropped.
    pub fn max_stderr(mut self, n: usize) -> Self {
        self.max_stderr = n;
        self
    }

    /// Run it. Blocks at most about `timeout` (+ a short grace to reap a killed command).
    pub fn run(&self) -> Result<Output, Error> {
        self.run_guarded(None)
    }

    /// Run it unless the previous run in `slot` is still alive or the slot backs off after a
    /// timeout (see [`Slot`]).
    pub fn run_in(&self, slot: &Slot) -> Result<Output, Error> {
        let now = Instant::now();
        let verdict = slot.backoff().verdict(now);
        if let Verdict::Wait(_) = verdict {
            return Err(Error::Stuck { cmd: self.to_string(), why: slot.backoff().describe(now) });
        }
        let guard = slot.acquire().ok_or_else(|| Error::Busy { cmd: self.to_string() })?;
        if verdict == Verdict::Retry {
            let failures = slot.backoff().failures();
            slot.backoff().trying(now, self.timeout);
            let (me, slot2) = (self.clone(), slot.clone());
            let spawned = thread::Builder::new().name("cmd-try".into()).spawn(move || {
                // Its own time limit, not the scrape's: no one waits for it.
                let r = me.run_guarded_for(Some(guard), me.timeout);
                slot2.note(&r);
            });
            if let Err(e) = spawned {
                log::warn!("cannot start a thread to try {self} again: {e}");
            }
            return Err(Error::Stuck {
                cmd: self.to_string(),
                why: format!("timed out {failures} time(s) in a row: being tried again in the background"),
            });
        }
        let r = self.run_guarded(Some(guard));
        slot.note(&r);
        r
    }

    /// Run within the command's time limit, capped by the deadline of the collection this
    /// thread works for.
    fn run_guarded(&self, guard: Option<SlotGuard>) -> Result<Output, Error> {
        self.run_guarded_for(guard, crate::deadline::cap(self.timeout))
    }

    fn run_guarded_for(&self, guard: Option<SlotGuard>, limit: Duration) -> Result<Output, Error> {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args)
            // The API token is the daemon's, never a tool's (main() also takes it out of the
            // environment; this covers library use).
            .env_remove(crate::sources::pve::api::TOKEN_ENV)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a timeout kills the command and everything it started.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn { cmd: self.to_string(), source })?;
        let deadline = Instant::now() + limit;
        let mut io = Pipes::new(&mut child);
        match io.drain(deadline, self.max_stdout, self.max_stderr) {
            Ok(()) => {}
            Err(Drain::Deadline) => {
                kill_and_reap(child, guard);
                return Err(self.timed_out(&io.stderr));
            }
            Err(Drain::TooMuch) => {
                kill_and_reap(child, guard);
                return Err(Error::TooMuchOutput { cmd: self.to_string(), limit: self.max_stdout });
            }
            Err(Drain::Io(source)) => {
                kill_and_reap(child, guard);
                return Err(Error::Io { cmd: self.to_string(), source });
            }
        }
        // Both pipes are closed: the command is exiting (or detached them and lives on).
        let mut pause = Duration::from_millis(1);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(Output { status, stdout: io.stdout, stderr: io.stderr }),
                Ok(None) if Instant::now() < deadline => {
                    thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Ok(None) => {
                    kill_and_reap(child, guard);
                    return Err(self.timed_out(&io.stderr));
                }
                Err(source) => {
                    kill_and_reap(child, guard);
                    return Err(Error::Io { cmd: self.to_string(), source });
                }
            }
        }
    }

    fn timed_out(&self, stderr: &[u8]) -> Error {
        Error::TimedOut { cmd: self.to_string(), timeout: self.timeout, stderr: summarize(stderr) }
    }
}

/// `zfs get -Hp ...`: the program's file name and the arguments, for messages.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.program.file_name().unwrap_or(self.program.as_os_str());
        write!(f, "{}", name.to_string_lossy())?;
        for a in &self.args {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(char::is_whitespace) { write!(f, " {a:?}")? } else { write!(f, " {a}")? }
        }
        Ok(())
    }
}

enum Drain {
    Deadline,
    TooMuch,
    Io(std::io::Error),
}

/// The child's stdout and stderr, read together with poll(2) so one thread can watch both
/// pipes and the deadline.
struct Pipes {
    out: Option<std::process::ChildStdout>,
    err: Option<std::process::ChildStderr>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Pipes {
    fn new(child: &mut Child) -> Self {
        Self { out: child.stdout.take(), err: child.stderr.take(), stdout: Vec::new(), stderr: Vec::new() }
    }

    fn drain(&mut self, deadline: Instant, max_out: usize, max_err: usize) -> Result<(), Drain> {
        let mut buf = vec![0u8; 16 << 10];
        while self.out.is_some() || self.err.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Drain::Deadline);
            }
            let mut fds: Vec<libc::pollfd> =
                [self.out.as_ref().map(|p| p.as_raw_fd()), self.err.as_ref().map(|p| p.as_raw_fd())]
                    .into_iter()
                    .map(|fd| libc::pollfd { fd: fd.unwrap_or(-1), events: libc::POLLIN, revents: 0 })
                    .collect();
            // Round up: a 0 ms poll before the deadline would spin.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid array of pollfd of the given length; negative fds are ignored.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Drain::Io(e));
            }
            if fds[0].revents != 0
                && let Some(p) = self.out.as_mut()
            {
                match read_some(p, &mut buf) {
                    Ok(0) => self.out = None,
                    Ok(k) => {
                        self.stdout.extend_from_slice(&buf[..k]);
                        if self.stdout.len() > max_out {
                            return Err(Drain::TooMuch);
                        }
                    }
                    Err(e) => return Err(Drain::Io(e)),
                }
            }
            if fds[1].revents != 0
                && let Some(p) = self.err.as_mut()
            {
                match read_some(p, &mut buf) {
                    Ok(0) => self.err = None,
                    Ok(k) => {
                        let keep = k.min(max_err.saturating_sub(self.stderr.len()));
                        self.stderr.extend_from_slice(&buf[..keep]);
                    }
                    Err(e) => return Err(Drain::Io(e)),
                }
            }
        }
        Ok(())
    }
}

fn read_some(p: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match p.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// SIGKILL the command's process group, then reap the command; if it does not die within
/// [`KILL_GRACE`] (uninterruptible sleep), a thread reaps it later and holds its slot until then.
fn kill_and_reap(mut child: Child, guard: Option<SlotGuard>) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain syscall. The child is not reaped yet, so its pid (= the group id) cannot
        // have been reused.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let until = Instant::now() + KILL_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(2)),
            Ok(None) => break,
        }
    }
    let pid = child.id();
    let spawned = thread::Builder::new().name("cmd-reaper".into()).spawn(move || {
        let _ = child.wait();
        drop(guard);
    });
    if let Err(e) = spawned {
        log::warn!("cannot start a thread to reap killed command (pid {pid}): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Cmd {
        Cmd::new("/bin/sh").args(["-c", script])
    }

    /// The state letter of /proc/<pid>/stat, None when the process is gone.
    fn proc_state(pid: &str) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
    }

    #[test]
    fn output_and_status() {
        let out = sh("echo hello; echo oops >&2; exit 3").run().unwrap();
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr_summary(), "oops");
        assert_eq!(out.status.code(), Some(3));
        let out = Cmd::new("/bin/echo").arg("a").run().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"a\n");
    }

    #[test]
    fn arguments_are_not_interpreted_by_a_shell() {
        let out = Cmd::new("/bin/echo").args(["$HOME", "`id`;", "a b", "*"]).run().unwrap();
        assert_eq!(out.stdout, b"$HOME `id`; a b *\n");
    }

    #[test]
    fn fixed_locale_and_no_stdin() {
        let out = Cmd::new("/usr/bin/env").env("EXTRA", "1").run().unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(env.lines().any(|l| l == "LC_ALL=C"), "{env}");
        assert!(env.lines().any(|l| l == "EXTRA=1"), "{env}");
        // stdin is /dev/null: cat ends at once instead of waiting for the test harness's stdin.
        let out = Cmd::new("/bin/cat").timeout(Duration::from_secs(30)).run().unwrap();
        assert!(out.status.success() && out.stdout.is_empty());
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        // What the command said before it was killed ends up in the message.
        let r = sh("echo waiting >&2; sleep 60").timeout(Duration::from_millis(300)).run();
        let Err(Error::TimedOut { stderr, .. }) = &r else { panic!("expected a timeout: {r:?}") };
        assert_eq!(stderr, "waiting");
        let msg = r.unwrap_err().to_string();
        assert!(msg.starts_with("sh -c \"echo waiting") && msg.ends_with("killed (stderr: waiting)"), "{msg}");
        // The shell starts a background sleep, reports its pid, and waits: the background sleep
        // is in the group and dies too (gone, or a zombie awaiting its reaper).
        let out = sh("sleep 60 & echo $! >&2; wait").timeout(Duration::from_millis(300)).run();
        let Err(Error::TimedOut { stderr: pid, .. }) = out else { panic!("expected a timeout: {out:?}") };
        let mut state = proc_state(&pid);
        for _ in 0..200 {
            if matches!(state, None | Some('Z')) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
            state = proc_state(&pid);
        }
        assert!(matches!(state, None | Some('Z')), "background sleep {pid} survived: {state:?}");
    }

    #[test]
    fn a_command_that_closes_its_pipes_but_lives_on_times_out() {
        let r = sh("exec >/dev/null 2>&1; sleep 60").timeout(Duration::from_millis(300)).run();
        assert!(matches!(r, Err(Error::TimedOut { .. })), "{r:?}");
    }

    #[test]
    fn output_is_bounded() {
        let r = Cmd::new("/usr/bin/yes").max_stdout(100_000).timeout(Duration::from_secs(30)).run();
        assert!(matches!(r, Err(Error::TooMuchOutput { limit: 100_000, .. })), "{r:?}");
        // stderr is capped, not fatal.
        let out = sh("i=0; while [ $i -lt 2000 ]; do echo xxxxxxxxxxxxxxxx >&2; i=$((i+1)); done; echo done")
            .max_stderr(100)
            .timeout(Duration::from_secs(30))
            .run()
            .unwrap();
        assert_eq!(out.stderr.len(), 100);
        assert_eq!(out.stdout, b"done\n");
        assert!(out.stderr_summary().len() <= 304);
    }

    #[test]
    fn missing_programs() {
        let r = Cmd::new("/nonexistent/zfs").run();
        assert!(matches!(&r, Err(Error::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound));
        let tools = Tools::in_dirs(vec![PathBuf::from("/nonexistent")]);
        let e = tools.command("zfs").unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }));
        assert_eq!(e.to_string(), "zfs: not found (not installed?)");
    }

    #[test]
    fn tools_are_looked_up_in_order_and_must_be_executable() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let write = |dir: &Path, name: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, "#!/bin/sh\necho hi\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        write(a.path(), "zfs", 0o644); // not executable: skipped
        let b_zfs = write(b.path(), "zfs", 0o755);
        let a_lvs = write(a.path(), "lvs", 0o755);
        write(b.path(), "lvs", 0o755);
        std::fs::create_dir(a.path().join("vgs")).unwrap(); // a directory: skipped
        let tools = Tools::in_dirs(vec![a.path().to_path_buf(), b.path().to_path_buf()]);
        assert_eq!(tools.find("zfs"), Some(b_zfs));
        assert_eq!(tools.find("lvs"), Some(a_lvs));
        assert_eq!(tools.find("vgs"), None);
        assert_eq!(tools.find("../b/zfs"), None);
        assert_eq!(tools.command("lvs").unwrap().run().unwrap().stdout, b"hi\n");
        // --command-path comes before PATH.
        let t = Tools::new(Some(b.path()));
        assert_eq!(t.dirs[0], b.path());
        assert!(t.find("sh").is_some(), "PATH is searched after --command-path");
    }

    #[test]
    fn a_busy_slot_refuses_at_once() {
        let slot = Slot::default();
        let held = slot.acquire().unwrap();
        let r = Cmd::new("/bin/echo").run_in(&slot);
        assert!(matches!(r, Err(Error::Busy { .. })), "{r:?}");
        drop(held);
        assert!(Cmd::new("/bin/echo").run_in(&slot).is_ok());
        // A timed-out run frees its slot, and puts it under back-off: the next run is refused
        // at once instead of starting another command that may hang the same way.
        let r = sh("sleep 60").timeout(Duration::from_millis(100)).run_in(&slot);
        assert!(matches!(r, Err(Error::TimedOut { .. })));
        let r = Cmd::new("/bin/echo").run_in(&slot);
        assert!(matches!(r, Err(Error::Stuck { .. })), "{r:?}");
        // When the try is due it runs in the background; once it answered, runs go on.
        std::thread::sleep(crate::deadline::BACKOFF_FIRST);
        let r = Cmd::new("/bin/echo").run_in(&slot);
        assert!(matches!(&r, Err(Error::Stuck { why, .. }) if why.contains("background")), "{r:?}");
        let mut ok = false;
        for _ in 0..500 {
            if Cmd::new("/bin/echo").run_in(&slot).is_ok() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ok, "the slot did not open again after a try answered");
    }
}
