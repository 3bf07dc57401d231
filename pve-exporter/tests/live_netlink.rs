//! The netlink dump of interface counters (`sources::kernel::netlink`) against the sysfs statistics files
//! it replaces, on the real kernel: veth pairs that carry only the test's frames, compared
//! counter by counter. Needs root (creates and removes interfaces named `pvenl*`).

mod common;

use std::{io::Write, process::Command};

use common::{send_frames, wait_until_up};

use pve_exporter::{
    host::HostRoot,
    sources::{kernel::netlink, kernel::sysfs::NET_STATISTICS},
};

fn require_root() {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "this test needs root (it creates veth pairs); run the suite as root, as `cargo xtask test` does");
}

fn ip_batch(commands: &str) {
    let mut child = Command::new("ip").args(["-batch", "-"]).stdin(std::process::Stdio::piped()).spawn().expect("ip");
    child.stdin.take().expect("stdin").write_all(commands.as_bytes()).expect("write ip batch");
    let st = child.wait().expect("ip");
    assert!(st.success(), "ip -batch: {st}\n{commands}");
}

/// veth pairs `<name>` / `<name>p`, removed when dropped. `up`: brought up without IPv6 (no
/// router solicitations: the counters move only by the test's frames).
struct Veths(Vec<String>);

impl Veths {
    fn new(names: &[String], up: bool) -> Veths {
        let mut del = String::new();
        let mut add = String::new();
        for n in names {
            // Left over from an interrupted run: deleting one end removes the pair.
            if std::path::Path::new(&format!("/sys/class/net/{n}")).exists() {
                del += &format!("link del {n}\n");
            }
            add += &format!("link add {n} type veth peer name {n}p\n");
        }
        if !del.is_empty() {
            ip_batch(&del);
        }
        ip_batch(&add);
        let v = Veths(names.to_vec());
        if up {
            let mut set = String::new();
            for n in names {
                for dev in [n.clone(), format!("{n}p")] {
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1").expect("disable_ipv6");
                    set += &format!("link set {dev} up\n");
                }
            }
            ip_batch(&set);
            for n in names {
                wait_until_up(n);
                wait_until_up(&format!("{n}p"));
            }
        }
        v
    }
}

impl Drop for Veths {
    fn drop(&mut self) {
        let del: String = self.0.iter().map(|n| format!("link del {n}\n")).collect();
        let _ =
            Command::new("ip").args(["-force", "-batch", "-"]).stdin(std::process::Stdio::piped()).spawn().and_then(
                |mut c| {
                    c.stdin.take().map(|mut s| s.write_all(del.as_bytes()));
                    c.wait()
                },
            );
    }
}

/// Every statistics file of `ifname` (None where the kernel has no such file).
fn sysfs_counters(ifname: &str) -> Vec<Option<u64>> {
    NET_STATISTICS
        .iter()
        .map(|f| {
            let p = format!("/sys/class/net/{ifname}/statistics/{f}");
            std::fs::read_to_string(&p).ok().map(|t| t.trim().parse().unwrap_or_else(|_| panic!("{p}: {t:?}")))
        })
        .collect()
}

/// Compare the dump's counters of `names` with sysfs, read before and after it; retried while
/// sysfs itself moves between the two reads (nothing should send, but the host is shared).
fn assert_dump_equals_sysfs(names: &[String]) -> netlink::Dump {
    dump_equals_sysfs(names, &mut |keep| netlink::dump_links(keep).expect("netlink dump"))
}

/// A way to dump the counters of the interfaces a filter keeps.
type DumpWith<'a> = dyn FnMut(&dyn Fn(&str) -> bool) -> netlink::Dump + 'a;

/// As [`assert_dump_equals_sysfs`], for the counters `dump` gives of the interfaces it keeps.
fn dump_equals_sysfs(names: &[String], dump: &mut DumpWith) -> netlink::Dump {
    for attempt in 0.. {
        let before: Vec<_> = names.iter().map(|n| sysfs_counters(n)).collect();
        let dump = dump(&|n| names.iter().any(|x| x == n));
        let after: Vec<_> = names.iter().map(|n| sysfs_counters(n)).collect();
        if before != after && attempt < 5 {
            std::thread::sleep(std::time::Duration::from_millis(200));
            continue;
        }
        assert_eq!(before, after, "sysfs counters keep moving");
        for (n, sys) in names.iter().zip(&after) {
            let link = dump.links.get(n).unwrap_or_else(|| panic!("{n} missing from the dump"));
            let got = link.as_ref().unwrap_or_else(|| panic!("{n}: no IFLA_STATS64"));
            for (i, file) in NET_STATISTICS.iter().enumerate() {
                assert_eq!(got.0[i], sys[i], "{n}: {file}");
            }
        }
        return dump;
    }
    unreachable!()
}

#[test]
fn netlink_counters_equal_the_sysfs_files() {
    require_root();
    assert!(netlink::sees_own_sysfs(&HostRoot::new("/")));
    let _v = Veths::new(&["pvenl0".to_string()], true);
    send_frames("pvenl0", 5, 100);
    send_frames("pvenl0p", 3, 64);
    let names = ["pvenl0".to_string(), "pvenl0p".to_string()];
    let dump = assert_dump_equals_sysfs(&names);
    // The known frames, as both ends count them.
    let get = |n: &str, f: &str| dump.links[n].as_ref().and_then(|s| s.get(f));
    assert_eq!(get("pvenl0", "tx_packets"), Some(5));
    assert_eq!(get("pvenl0", "tx_bytes"), Some(500));
    assert_eq!(get("pvenl0", "rx_packets"), Some(3));
    assert_eq!(get("pvenl0p", "rx_bytes"), Some(500));
    assert_eq!(get("pvenl0p", "tx_bytes"), Some(192));
    // rx_nohandler came with Linux 4.6: every kernel this runs on has it.
    assert!(get("pvenl0", "rx_nohandler").is_some());
    // Only what the filter keeps.
    assert_eq!(dump.links.len(), 2);
}

#[test]
fn a_dump_of_many_interfaces_in_several_parts() {
    require_root();
    // 2 × 40 interfaces at 1–3 KiB each: more than one ~32 KiB datagram.
    let names: Vec<String> = (0..40).map(|i| format!("pvenlm{i}")).collect();
    let v = Veths::new(&names, false);
    let mut all: Vec<String> = names.iter().flat_map(|n| [n.clone(), format!("{n}p")]).collect();
    all.push("lo".to_string());
    assert_dump_equals_sysfs(&all);
    let every = netlink::dump_links(&|_| true).expect("netlink dump");
    assert!(every.links.len() >= all.len(), "{} interfaces", every.links.len());

    // Deleted: gone from the next dump.
    drop(v);
    let after = netlink::dump_links(&|n| n.starts_with("pvenlm")).expect("netlink dump");
    assert!(after.links.is_empty(), "{:?}", after.links.keys().collect::<Vec<_>>());
}

/// What `LinkWatch` gives for `names`, compared with sysfs.
fn watch_equals_sysfs(watch: &mut netlink::LinkWatch, names: &[String]) -> netlink::Dump {
    let d = dump_equals_sysfs(names, &mut |keep| watch.links(keep).expect("link watch"));
    assert_eq!(d.links.len(), names.len(), "{:?}", d.links.keys().collect::<Vec<_>>());
    d
}

/// Each scrape dumps only the counters (RTM_GETSTATS) and names them from the last RTM_GETLINK
/// dump, which is repeated when the kernel announces a link change: a new interface, a
/// renamed one and a removed one are seen at the next scrape, by their real names.
#[test]
fn the_link_watch_names_counters_and_follows_link_changes() {
    require_root();
    let mut watch = netlink::LinkWatch::new();
    let _a = Veths::new(&["pvenlw0".to_string()], true);
    let names = ["pvenlw0".to_string(), "pvenlw0p".to_string()];
    watch_equals_sysfs(&mut watch, &names);
    let full = watch.full_dumps;
    assert!(full >= 1, "the first call names every interface");
    // Unchanged links: the counters move, the names are not dumped again. Another test of
    // this file may add interfaces meanwhile (each is then one more full dump): a quiet
    // moment is waited for.
    let quiet = (0..50).any(|_| {
        let before = watch.full_dumps;
        send_frames("pvenlw0", 4, 120);
        let d = watch_equals_sysfs(&mut watch, &names);
        assert!(d.names.is_empty() || watch.full_dumps > before);
        watch.full_dumps == before
    });
    assert!(quiet, "every call dumped the links again ({} of them)", watch.full_dumps);

    // Renamed: the counters under the new name only, from the next call on.
    ip_batch("link set pvenlw0 down\nlink set pvenlw0 name pvenlw9\nlink set pvenlw9 up\n");
    let renamed = ["pvenlw9".to_string(), "pvenlw0p".to_string()];
    let d = watch_equals_sysfs(&mut watch, &renamed);
    assert!(!d.links.contains_key("pvenlw0"));
    // Added: there at once.
    let _b = Veths::new(&["pvenlw1".to_string()], false);
    let d = watch.links(&|n| n.starts_with("pvenlw")).expect("link watch");
    assert!(d.links.contains_key("pvenlw1") && d.links.contains_key("pvenlw1p"), "{:?}", d.links.keys());
    // Removed (one end removes the pair): gone.
    ip_batch("link del pvenlw9\n");
    let d = watch.links(&|n| n.starts_with("pvenlw")).expect("link watch");
    let mut left: Vec<&String> = d.links.keys().collect();
    left.sort();
    assert_eq!(left, ["pvenlw1", "pvenlw1p"]);
}
