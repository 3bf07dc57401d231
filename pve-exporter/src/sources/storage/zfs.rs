//! ZFS: the space of datasets (`zfs get`) and pools (`zpool list`), for `zfspool` storages.
//! Both commands print exact byte counts with `-p` and tab-separated lines without header
//! with `-H`; `-o` fixes the columns, so the output does not depend on the ZFS version.

use std::{collections::HashMap, time::Duration};

use crate::sources::storage::command::{self, Report, Slot, Tools};

/// `used` and `available` of a dataset, in bytes (either may be missing from the output).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatasetSpace {
    pub used: Option<u64>,
    pub available: Option<u64>,
}

/// A pool's size and free space (`zpool list`: SIZE and FREE, raw space across all vdevs,
/// parity included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpace {
    pub size: u64,
    pub free: u64,
}

/// The arguments of `zfs get` for `datasets`.
pub fn zfs_get_args(datasets: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["get", "-Hp", "-o", "name,property,value", "used,available"].map(String::from).into();
    a.extend(datasets.iter().map(|d| d.to_string()));
    a
}

/// The arguments of `zpool list` for `pools`.
pub fn zpool_list_args(pools: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["list", "-Hp", "-o", "name,size,free"].map(String::from).into();
    a.extend(pools.iter().map(|p| p.to_string()));
    a
}

/// Lines `<dataset>\t<property>\t<value>` of `zfs get -Hp -o name,property,value used,available`.
/// Lines that do not parse are skipped.
pub fn parse_zfs_get(text: &str) -> HashMap<String, DatasetSpace> {
    let mut out: HashMap<String, DatasetSpace> = HashMap::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let (Some(name), Some(prop), Some(value), None) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        let e = out.entry(name.to_string()).or_default();
        match prop {
            "used" => e.used = Some(v),
            "available" => e.available = Some(v),
            _ => {}
        }
    }
    out
}

/// Lines `<pool>\t<size>\t<free>` of `zpool list -Hp -o name,size,free`.
pub fn parse_zpool_list(text: &str) -> HashMap<String, PoolSpace> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if let [name, size, free] = f[..]
            && let (Ok(size), Ok(free)) = (size.trim().parse(), free.trim().parse())
            && !name.is_empty()
        {
            out.insert(name.to_string(), PoolSpace { size, free });
        }
    }
    out
}

/// The pool a dataset lives in (`rpool/data` -> `rpool`).
pub fn pool_of(dataset: &str) -> &str {
    dataset.split('/').next().unwrap_or(dataset)
}

fn run<T>(
    tools: &Tools,
    slot: &Slot,
    tool: &str,
    args: Vec<String>,
    timeout: Duration,
    parse: fn(&str) -> HashMap<String, T>,
) -> Result<Report<T>, command::Error> {
    let out = tools.command(tool)?.args(args).timeout(timeout).run_in(slot)?;
    // zfs prints what it found and complains about the rest on stderr, exit status 1.
    Ok(Report::new(parse(&String::from_utf8_lossy(&out.stdout)), &out))
}

/// `zfs get` of `datasets` in one run.
pub fn dataset_space(
    tools: &Tools,
    slot: &Slot,
    datasets: &[&str],
    timeout: Duration,
) -> Result<Report<DatasetSpace>, command::Error> {
    run(tools, slot, "zfs", zfs_get_args(datasets), timeout, parse_zfs_get)
}

/// `zpool list` of `pools` in one run.
pub fn pool_space(
    tools: &Tools,
    slot: &Slot,
    pools: &[&str],
    timeout: Duration,
) -> Result<Report<PoolSpace>, command::Error> {
    run(tools, slot, "zpool", zpool_list_args(pools), timeout, parse_zpool_list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zfs_get() {
        let text = "rpool/data\tused\t53687091200\nrpool/data\tavailable\t912680550400\n\
                    tank\tused\t1099511627776\ntank\tavailable\t-\nbad line\nx\ty\tz\tw\n\n";
        let m = parse_zfs_get(text);
        assert_eq!(m["rpool/data"], DatasetSpace { used: Some(53_687_091_200), available: Some(912_680_550_400) });
        assert_eq!(m["tank"], DatasetSpace { used: Some(1_099_511_627_776), available: None });
        assert_eq!(m.len(), 2);
        assert!(parse_zfs_get("").is_empty());
        // Dataset names may hold spaces; only tabs separate fields.
        assert!(parse_zfs_get("a b/c d\tused\t1\n").contains_key("a b/c d"));
    }

    #[test]
    fn zpool_list() {
        let m = parse_zpool_list("rpool\t1992864825344\t1026497183744\ntank\t-\t5\n\t1\t2\nrpool2\t1\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m["rpool"], PoolSpace { size: 1_992_864_825_344, free: 1_026_497_183_744 });
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            zfs_get_args(&["rpool/data", "tank"]).join(" "),
            "get -Hp -o name,property,value used,available rpool/data tank"
        );
        assert_eq!(zpool_list_args(&["rpool"]).join(" "), "list -Hp -o name,size,free rpool");
        assert_eq!(pool_of("rpool/data/sub"), "rpool");
        assert_eq!(pool_of("tank"), "tank");
    }
}
