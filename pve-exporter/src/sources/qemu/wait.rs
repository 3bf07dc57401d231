//! Waiting on a monitor's descriptor until a deadline (QMP sockets, `qm monitor` terminals).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    time::Instant,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Read,
    Write,
}

/// Wait until `fd` is readable / writable, or fail with TimedOut at `deadline`.
pub fn wait_fd(fd: BorrowedFd<'_>, what: Wait, deadline: Instant) -> io::Result<()> {
    let events = match what {
        Wait::Read => libc::POLLIN,
        Wait::Write => libc::POLLOUT,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            // POLLHUP / POLLERR: the next read or write reports what happened.
            return Ok(());
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
