//! pidfds (Linux 5.3, every kernel PVE ships): a descriptor that names one process, not
//! whatever process gets its pid next, and that polls readable once that process has exited.
//! Holding one per kept process and polling them all in one call tells, without a read per
//! process, which of them are gone.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// A pidfd of process `pid` (ESRCH: it has exited).
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open has no memory arguments; the descriptor it returns is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Which of `fds` (pidfds) name a process that has exited, in their order: one `poll`, no
/// waiting.
pub fn exited(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    let mut polled: Vec<libc::pollfd> =
        fds.iter().map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    if polled.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: an array of pollfds of descriptors the caller holds, no waiting.
    let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // A pidfd is readable once its process has exited (POLLIN); POLLHUP and POLLERR say the
    // same on kernels that also set them.
    Ok(polled.iter().map(|p| p.revents != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn an_exited_child_polls_readable_a_running_one_does_not() {
        let mut running = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let mut done = std::process::Command::new("true").spawn().expect("true");
        let (a, b) = (open(running.id()).expect("pidfd"), open(done.id()).expect("pidfd"));
        // Reaped or not, a process that ended polls readable.
        done.wait().expect("wait");
        assert_eq!(exited(&[a.as_fd(), b.as_fd()]).expect("poll"), vec![false, true]);
        running.kill().expect("kill");
        running.wait().expect("wait");
        assert_eq!(exited(&[a.as_fd()]).expect("poll"), vec![true]);
        assert!(exited(&[]).expect("poll").is_empty());
    }

    #[test]
    fn no_pidfd_for_a_pid_that_is_not_running() {
        assert_eq!(open(u32::MAX).unwrap_err().raw_os_error(), Some(libc::ESRCH));
        // pid_max is at most 2^22: this pid can never be in use.
        assert_eq!(open((1 << 22) + 1).unwrap_err().raw_os_error(), Some(libc::ESRCH));
    }
}
