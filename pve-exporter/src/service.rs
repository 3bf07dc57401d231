//! Running as a systemd service: the sd_notify protocol (readiness, watchdog, reload,
//! stopping), a journald-friendly log format, and the environment file SIGHUP re-reads.
//! No libsystemd: the protocol is one datagram per message.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    io::{self, Write as _},
    os::unix::{
        ffi::OsStrExt,
        net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

use crate::config::LogLevel;

/// Messages to the service manager on `$NOTIFY_SOCKET`; does nothing without one.
#[derive(Clone, Default)]
pub struct Notifier {
    addr: Option<SocketAddr>,
}

impl Notifier {
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Self::default(),
            Some(v) => match notify_addr(&v) {
                Ok(addr) => Self { addr: Some(addr) },
                Err(e) => {
                    log::warn!("NOTIFY_SOCKET ignored: {e}");
                    Self::default()
                }
            },
        }
    }

    pub fn enabled(&self) -> bool {
        self.addr.is_some()
    }

    /// Send `state` (`READY=1`, `WATCHDOG=1`, ... newline-separated). Never blocks: a full
    /// socket queue loses the message, which the log records.
    pub fn notify(&self, state: &str) {
        let Some(addr) = &self.addr else { return };
        let sent = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(|s| s.send_to_addr(state.as_bytes(), addr));
        if let Err(e) = sent {
            log::warn!("cannot notify the service manager ({:?}): {e}", state.lines().next().unwrap_or_default());
        }
    }
}

/// The address in `$NOTIFY_SOCKET`: a path, or `@name` for an abstract socket.
pub fn notify_addr(value: &OsStr) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(value)),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{value:?} is not a path or @abstract name"))),
    }
}

/// The watchdog period systemd asks for (`WatchdogSec=`), when it asks this process.
pub fn watchdog_period() -> Option<Duration> {
    watchdog_from(std::env::var("WATCHDOG_USEC").ok().as_deref(), std::env::var("WATCHDOG_PID").ok().as_deref())
}

fn watchdog_from(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    // WATCHDOG_PID names the process meant; a child that inherited the variables is not it.
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `MONOTONIC_USEC=` for `RELOADING=1`: CLOCK_MONOTONIC in µs.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

/// Whether stderr is the journal stream systemd set up (`$JOURNAL_STREAM` is its
/// `device:inode`): only then the `<N>` priority prefixes are understood.
fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    // SAFETY: fstat writes into the struct we pass; fd 2 is ours.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(2, &mut st) } == 0) && st.st_dev == dev && st.st_ino == ino
}

/// syslog priority of a log level, as journald reads it from a `<N>` prefix.
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// One event, one line: newlines inside a message would split it in the journal.
pub fn one_line(msg: &str) -> std::borrow::Cow<'_, str> {
    if msg.contains(['\n', '\r']) { msg.replace("\r\n", " | ").replace(['\n', '\r'], " | ").into() } else { msg.into() }
}

/// Log to stderr at `level`, which [`set_log_level`] changes later. Under journald: `<N>message`
/// (journald adds time and unit); elsewhere: `time LEVEL message`.
pub fn init_logging(level: LogLevel) {
    let journal = stderr_is_journal();
    env_logger::Builder::new()
        // Everything reaches the logger; log::max_level decides, so SIGHUP can change it.
        .filter_level(log::LevelFilter::Trace)
        .format(move |buf, rec| {
            let msg = rec.args().to_string();
            if journal {
                writeln!(buf, "<{}>{}", syslog_priority(rec.level()), one_line(&msg))
            } else {
                writeln!(buf, "{} {:<5} {}", buf.timestamp_millis(), rec.level(), one_line(&msg))
            }
        })
        .init();
    set_log_level(level);
}

pub fn set_log_level(level: LogLevel) {
    log::set_max_level(level.filter());
}

/// Parse an environment file as systemd's `EnvironmentFile=` reads the simple cases: one
/// `KEY=VALUE` per line, `#` and `;` comment lines, values optionally in single quotes
/// (literal) or double quotes (`\"`, `\\`, `\$`, `` \` `` escapes). Lines that are not
/// assignments are reported, not guessed at.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: not KEY=VALUE", n + 1));
        };
        let key = key.trim();
        let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("line {}: {key:?} is not a variable name", n + 1));
        }
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('\'') {
            inner.strip_suffix('\'').ok_or_else(|| format!("line {}: unterminated quote", n + 1))?.to_string()
        } else if let Some(inner) = value.strip_prefix('"') {
            let inner = inner.strip_suffix('"').ok_or_else(|| format!("line {}: unterminated quote", n + 1))?;
            let mut s = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match (c, chars.clone().next()) {
                    ('\\', Some(e @ ('"' | '\\' | '$' | '`'))) => {
                        s.push(e);
                        chars.next();
                    }
                    _ => s.push(c),
                }
            }
            s
        } else {
            value.to_string()
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// Variables of the environment file that take effect on SIGHUP; every other flag needs a
/// restart.
pub const RELOADABLE: &[&str] = &["PVE_EXPORTER_LOGLEVEL", "PVE_EXPORTER_WEB_CONFIG_FILE"];

/// What a SIGHUP changes, from the environment file as it was at start-up, as it was at the
/// last reload, and as it is now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Reloadable variables whose value changed since the last reload: the new value, None
    /// when the line was removed (back to the default).
    pub apply: BTreeMap<String, Option<String>>,
    /// Other `PVE_EXPORTER_*` variables that differ from start-up: they wait for a restart.
    pub need_restart: Vec<String>,
}

pub fn reload_plan(
    at_start: &BTreeMap<String, String>,
    last: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for key in RELOADABLE {
        if last.get(*key) != now.get(*key) {
            plan.apply.insert(key.to_string(), now.get(*key).cloned());
        }
    }
    let keys: std::collections::BTreeSet<&String> = at_start.keys().chain(now.keys()).collect();
    for key in keys {
        if key.starts_with("PVE_EXPORTER_")
            && !RELOADABLE.contains(&key.as_str())
            && key != "PVE_EXPORTER_ENV_FILE"
            && at_start.get(key) != now.get(key)
        {
            plan.need_restart.push(key.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_addresses() {
        let a = notify_addr(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(a.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        use std::os::linux::net::SocketAddrExt as _;
        let a = notify_addr(OsStr::new("@/org/freedesktop/systemd1/notify/123")).unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"/org/freedesktop/systemd1/notify/123"[..]));
        assert!(notify_addr(OsStr::new("relative/path")).is_err());
        assert!(notify_addr(OsStr::new("")).is_err());
    }

    #[test]
    fn notifications_reach_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { addr: Some(notify_addr(path.as_os_str()).unwrap()) };
        n.notify("READY=1\nSTATUS=ok");
        let mut buf = [0u8; 64];
        let len = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
        // No socket: nothing happens.
        Notifier::default().notify("READY=1");
    }

    #[test]
    fn watchdog_variables() {
        let me = std::process::id().to_string();
        assert_eq!(watchdog_from(Some("30000000"), None), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_from(Some("30000000"), Some(&me)), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_from(Some("30000000"), Some("1")), None, "meant for another process");
        assert_eq!(watchdog_from(Some("0"), None), None);
        assert_eq!(watchdog_from(Some("soon"), None), None);
        assert_eq!(watchdog_from(None, Some(&me)), None);
    }

    #[test]
    fn log_lines() {
        assert_eq!(one_line("a\nb\r\nc"), "a | b | c");
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Trace), 7);
    }

    #[test]
    fn env_files() {
        let text = "# settings\n\n; also a comment\nPVE_EXPORTER_PORT=9200\n  PVE_EXPORTER_LOGLEVEL = DEBUG  \n\
                    A='it''s'\nB=\"x \\\"y\\\" \\$z \\n\"\nC=\nD='a b'\n";
        let env = parse_env_file(text).unwrap();
        assert_eq!(env["PVE_EXPORTER_PORT"], "9200");
        assert_eq!(env["PVE_EXPORTER_LOGLEVEL"], "DEBUG");
        assert_eq!(env["A"], "it''s");
        assert_eq!(env["B"], "x \"y\" $z \\n");
        assert_eq!(env["C"], "");
        assert_eq!(env["D"], "a b");
        assert!(parse_env_file("just words\n").unwrap_err().contains("line 1"));
        assert!(parse_env_file("1X=2\n").is_err());
        assert!(parse_env_file("X=\"open\n").is_err());
    }

    #[test]
    fn reload_plans() {
        let m = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let start = m(&[("PVE_EXPORTER_PORT", "9116"), ("PVE_EXPORTER_LOGLEVEL", "INFO")]);
        // Nothing changed.
        assert_eq!(reload_plan(&start, &start, &start), ReloadPlan::default());
        // Log level changed, web config added, port changed, a foreign variable changed.
        let now = m(&[
            ("PVE_EXPORTER_PORT", "9200"),
            ("PVE_EXPORTER_LOGLEVEL", "DEBUG"),
            ("PVE_EXPORTER_WEB_CONFIG_FILE", "/etc/pve-exporter/web.yml"),
            ("OTHER", "x"),
        ]);
        let plan = reload_plan(&start, &start, &now);
        assert_eq!(plan.apply["PVE_EXPORTER_LOGLEVEL"].as_deref(), Some("DEBUG"));
        assert_eq!(plan.apply["PVE_EXPORTER_WEB_CONFIG_FILE"].as_deref(), Some("/etc/pve-exporter/web.yml"));
        assert_eq!(plan.need_restart, ["PVE_EXPORTER_PORT"]);
        // Second reload with the same file: nothing more to apply, the port still waits.
        let plan = reload_plan(&start, &now, &now);
        assert!(plan.apply.is_empty());
        assert_eq!(plan.need_restart, ["PVE_EXPORTER_PORT"]);
        // The log level line removed: back to the default.
        let plan = reload_plan(&start, &now, &m(&[("PVE_EXPORTER_PORT", "9116")]));
        assert_eq!(plan.apply["PVE_EXPORTER_LOGLEVEL"], None);
        assert_eq!(plan.apply["PVE_EXPORTER_WEB_CONFIG_FILE"], None);
        assert!(plan.need_restart.is_empty());
    }
}
