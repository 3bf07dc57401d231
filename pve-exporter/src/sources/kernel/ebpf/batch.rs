//! Read a per-CPU BPF map in one `BPF_MAP_LOOKUP_BATCH` syscall (a few for a large hash)
//! instead of one or two syscalls per key, which is what aya 0.14 offers (it has no batch
//! operations). Linux has the command since 5.6 for arrays and hashes; callers fall back to
//! the per-key path on [`BatchError::Unsupported`].

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::Map;

/// `BPF_MAP_LOOKUP_BATCH` of `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's internal ENOTSUPP, which the batch commands return for a map type without them.
const ENOTSUPP: i32 = 524;
/// Value bytes asked for per syscall (a hash grows its request when a bucket is larger). Below
/// glibc's mmap threshold, so the kept buffers live on the heap and are not mapped, faulted in
/// and unmapped again on every scrape.
const CHUNK_BYTES: usize = 64 << 10;

/// Key and value buffers of the batch calls, kept between scrapes: zeroing and faulting in
/// fresh ones cost more than the syscalls they save.
#[derive(Debug, Default)]
pub struct Buffers {
    keys: Vec<u8>,
    values: Vec<u8>,
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[derive(Debug)]
pub enum BatchError {
    /// This kernel or map type has no batch lookup: read key by key instead.
    Unsupported(std::io::Error),
    Failed(String),
}

impl std::error::Error for BatchError {}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Unsupported(e) => write!(f, "no BPF_MAP_LOOKUP_BATCH here: {e}"),
            BatchError::Failed(e) => f.write_str(e),
        }
    }
}

/// Call `f(key, per-CPU values)` for every element of the per-CPU array or hash `map`, the
/// first `limit` at most (an array's elements come in index order, so `limit` bounds the
/// indexes read). `nr_cpus` is the number of possible CPUs (the kernel's per-CPU layout).
pub fn for_each_percpu<K: aya::Pod, V: aya::Pod>(
    map: &Map,
    nr_cpus: usize,
    limit: usize,
    bufs: &mut Buffers,
    mut f: impl FnMut(K, &[V]),
) -> Result<(), BatchError> {
    let fd = match map {
        Map::PerCpuArray(d) | Map::PerCpuHashMap(d) => d.fd().as_fd().as_raw_fd(),
        _ => return Err(BatchError::Failed("not a per-CPU array or hash".into())),
    };
    let (key_size, value_size) = (size_of::<K>(), size_of::<V>());
    // Each CPU's value is rounded up to 8 bytes in the kernel's copy.
    let stride = value_size.next_multiple_of(8);
    let elem = stride * nr_cpus.max(1);
    let mut chunk = (CHUNK_BYTES / elem).clamp(1, limit.max(1));
    let Buffers { keys, values } = bufs;
    // The position token: an array's last key, a hash's bucket number (u32); 64 bytes hold both.
    let (mut in_batch, mut out_batch) = ([0u64; 8], [0u64; 8]);
    let mut first = true;
    let mut cpu_values: Vec<V> = Vec::with_capacity(nr_cpus);
    let mut done = 0usize;
    while done < limit {
        let want = chunk.min(limit - done);
        // Only growth is zeroed: a kept buffer of the right size is used as it is.
        if keys.len() < want * key_size {
            keys.resize(want * key_size, 0u8);
        }
        if values.len() < want * elem {
            values.resize(want * elem, 0u8);
        }
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { in_batch.as_ptr() as u64 },
            out_batch: out_batch.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(want).unwrap_or(u32::MAX),
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the attr points at buffers of `count` keys and values (per-CPU layout) and
        // two 64-byte tokens, all alive and writable for the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr, size_of::<BatchAttr>()) };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(want);
        if let Some(e) = &err
            && n == 0
        {
            match e.raw_os_error() {
                // The end of the map.
                Some(libc::ENOENT) => return Ok(()),
                // A hash bucket holds more elements than asked for: ask for more.
                Some(libc::ENOSPC) if want < limit - done => {
                    chunk = (want * 2).min(limit - done);
                    continue;
                }
                Some(code @ (libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | ENOTSUPP)) if first => {
                    return Err(BatchError::Unsupported(std::io::Error::from_raw_os_error(code)));
                }
                _ => return Err(BatchError::Failed(format!("BPF_MAP_LOOKUP_BATCH: {e}"))),
            }
        }
        for i in 0..n {
            // SAFETY: K and V are Pod (plain data, any bytes valid); the reads are within the
            // buffers the kernel filled (i < n <= want), unaligned reads of their sizes.
            let key = unsafe { std::ptr::read_unaligned(keys.as_ptr().add(i * key_size).cast::<K>()) };
            cpu_values.clear();
            for cpu in 0..nr_cpus {
                let at = i * elem + cpu * stride;
                // SAFETY: as above.
                cpu_values.push(unsafe { std::ptr::read_unaligned(values.as_ptr().add(at).cast::<V>()) });
            }
            f(key, &cpu_values);
        }
        done += n;
        if let Some(e) = err {
            // ENOENT: the end of the map, after the last elements.
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(())
            } else {
                Err(BatchError::Failed(format!("BPF_MAP_LOOKUP_BATCH: {e}")))
            };
        }
        if n == 0 {
            return Ok(()); // nothing more and no error: do not spin
        }
        in_batch = out_batch;
        first = false;
    }
    Ok(())
}
