//! Data sources, one folder per domain. Each module reads one source: pure parsers from text
//! to types, and thin readers with typed errors. Sources are leaves: they import no collector,
//! no configuration struct (they take plain parameters) and nothing of the scrape; they may use
//! the host plumbing (`host`, `heldfile`, `deadline`) and the public types of another domain.
//! `tests/architecture.rs` holds them to it.
//!
//! - `proc`: /proc (processes, their scan and events, pressure, node files, ownership rules)
//! - `qemu`: QEMU's monitors (QMP, HMP text, `qm monitor`, the monitor cache), its guest agent and libvirt
//! - `pve`: /etc/pve (guest configs, HA, storage.cfg, jobs, replication), the task list and backups,
//!   calendar events, and the PVE API
//! - `kernel`: tracefs, BPF programs and maps, netlink, sysfs, KVM debugfs
//! - `storage`: statvfs, zfs and lvm, and the time-limited commands they run

pub mod error;
pub mod kernel;
pub mod proc;
pub mod pve;
pub mod qemu;
pub mod storage;

/// `s` cut to at most `max` bytes, on a character boundary: texts from outside (a guest, a log)
/// that become labels are bounded.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Random text for the parsers' no-panic tests (issue 20 fuzzes them properly).
#[cfg(test)]
pub mod testing {
    /// `n` texts of up to `max_len` characters drawn from `alphabet` (xorshift from `seed`).
    pub fn random_texts(alphabet: &[u8], seed: u64, n: usize, max_len: u64) -> Vec<String> {
        let mut x = seed.max(1);
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|_| {
                let len = next() % (max_len + 1);
                let bytes: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect()
    }
}
