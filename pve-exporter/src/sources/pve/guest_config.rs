//! Guest config files of /etc/pve: `qemu-server/<vmid>.conf` (VMs) and `lxc/<ctid>.conf`
//! (containers), as qemu-server's and pve-container's `parse_vm_config` / `parse_pct_config`
//! read them:
//!
//! ```text
//! #description, URL-encoded, one comment line each
//! cores: 4
//! memory: current=4096        (PVE 8.1+: a property string; before, a plain number of MiB)
//! scsi0: local-lvm:vm-100-disk-0,iothread=1,size=32G
//! lock: backup
//! parent: before-upgrade
//!
//! [before-upgrade]            a snapshot: the config as it was, and when it was taken
//! snaptime: 1736939109
//!
//! [PENDING]                   changes applied at the next start (not a snapshot)
//! [special:cloudinit]         the cloud-init state (not a snapshot)
//! ```
//!
//! The parser keeps the main section's keys and each snapshot's name and `snaptime`; it never
//! fails on content (unknown keys and malformed lines are skipped and counted), since one odd
//! line must not hide a guest.

use std::collections::HashMap;

/// A guest's config, as far as the exporter reads it.
#[derive(Debug, Clone, Default)]
pub struct GuestConfig {
    /// Keys of the main section (the current config), in file order.
    pub main: Entries,
    /// Snapshot sections (not `[PENDING]`, not `[special:...]`), in file order.
    pub snapshots: Vec<Snapshot>,
    /// Lines that are neither `key: value`, a comment nor a section header.
    pub malformed: usize,
    /// [`GuestConfig::disks`] per guest type, worked out on first use: a config is parsed
    /// once per version of its file and asked for its disks by several collectors on every
    /// scrape (property strings, sizes: ~3 allocations per disk each time).
    disks: [std::sync::OnceLock<Vec<ConfigDisk>>; 2],
    /// [`GuestConfig::nics`], likewise.
    nics: std::sync::OnceLock<Vec<ConfigNic>>,
    /// [`GuestConfig::tags`], likewise (a label of three collectors' series per guest).
    tags: std::sync::OnceLock<String>,
}

impl PartialEq for GuestConfig {
    fn eq(&self, other: &Self) -> bool {
        (&self.main, &self.snapshots, self.malformed) == (&other.main, &other.snapshots, other.malformed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    /// Seconds since the epoch (`snaptime`); None for a snapshot without one.
    pub snaptime: Option<u64>,
}

/// Parse a guest config file. Never fails: what it does not understand it skips.
pub fn parse_guest_config(text: &str) -> GuestConfig {
    let mut out = GuestConfig::default();
    // None: the main section; Some(None): a section that is not a snapshot.
    let mut section: Option<Option<usize>> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(if name == "PENDING" || name.starts_with("special:") || name.is_empty() {
                None
            } else {
                out.snapshots.push(Snapshot { name: name.to_string(), snaptime: None });
                Some(out.snapshots.len() - 1)
            });
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            out.malformed += 1;
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
            out.malformed += 1;
            continue;
        }
        let value = value.trim();
        match section {
            None => out.main.push(key, value),
            Some(Some(i)) if key == "snaptime" => out.snapshots[i].snaptime = value.parse().ok(),
            Some(_) => {}
        }
    }
    out.main.shrink_to_fit();
    out
}

/// The `key: value` lines of a config section, in file order, in one buffer. A parsed config
/// is kept between scrapes for every guest of the node: as two strings per key it was ~60
/// small allocations per guest, ~1.5 KB of heap each with the allocator's own room, pinned
/// among a collection's temporaries (docs/benchmarks.md, seventh pass).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    text: String,
    /// Per entry, where its key and its value end in `text`; each starts where the one before
    /// ends.
    ends: Vec<(u32, u32)>,
}

impl Entries {
    /// Append `key: value`. A section past 4 GiB (no config is: reads are capped far below)
    /// would lose its later keys, never panic.
    pub fn push(&mut self, key: &str, value: &str) {
        let (Ok(k), Ok(v)) =
            (u32::try_from(self.text.len() + key.len()), u32::try_from(self.text.len() + key.len() + value.len()))
        else {
            return;
        };
        self.text.push_str(key);
        self.text.push_str(value);
        self.ends.push((k, v));
    }

    /// (key, value) in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(k, v)| {
            let (k, v) = (k as usize, v as usize);
            let kv = (self.text.get(start..k).unwrap_or(""), self.text.get(k..v).unwrap_or(""));
            start = v;
            kv
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

/// Which kind of guest a config belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GuestType {
    Qemu,
    Lxc,
}

impl GuestType {
    /// The name PVE uses (`.vmlist` types, API paths, PPE's `qemu/100` ids).
    pub fn as_str(self) -> &'static str {
        match self {
            GuestType::Qemu => "qemu",
            GuestType::Lxc => "lxc",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "qemu" => Some(GuestType::Qemu),
            "lxc" => Some(GuestType::Lxc),
            _ => None,
        }
    }

    /// Its config directory below /etc/pve.
    pub fn config_dir(self) -> &'static str {
        match self {
            GuestType::Qemu => "etc/pve/qemu-server",
            GuestType::Lxc => "etc/pve/lxc",
        }
    }
}

/// A configured disk: its config key, volume and size from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDisk {
    /// `scsi0`, `virtio1`, `efidisk0`, `tpmstate0`, `rootfs`, `mp0`.
    pub key: String,
    /// The volume id (`local-lvm:vm-100-disk-0`) or, for a bind mount, the host path.
    pub volume: String,
    /// `size=` of the config, in bytes (None where the config has none: bind mounts, old
    /// configs).
    pub size: Option<u64>,
    /// A container mount point's path in the container (`/` for rootfs).
    pub mountpoint: Option<String>,
}

/// A container NIC of the config (`net0: name=eth0,bridge=vmbr0,hwaddr=...,type=veth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigNic {
    /// `net0` -> 0 (the host side is `veth<ctid>i0`).
    pub index: u32,
    /// The interface name in the container.
    pub name: String,
    pub bridge: String,
}

/// A parsed property string (`a=b,c=d`, with a leading value without key allowed).
pub fn property_string(value: &str) -> (Option<&str>, HashMap<&str, &str>) {
    let mut first = None;
    let mut props = HashMap::new();
    for (i, part) in value.split(',').enumerate() {
        match part.split_once('=') {
            Some((k, v)) => {
                props.insert(k.trim(), v.trim());
            }
            None if i == 0 => first = Some(part.trim()),
            None => {}
        }
    }
    (first, props)
}

/// A disk size as PVE writes it: `32G`, `512M`, `707456K`, `1T`, or bytes without unit.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        b'T' | b't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    // PVE writes fractions too (`size=1.5G` after a resize by a non-integer amount).
    let f: f64 = num.parse().ok()?;
    (f.is_finite() && f >= 0.0 && f * (mult as f64) < u64::MAX as f64).then_some((f * mult as f64) as u64)
}

fn numbered(key: &str, prefix: &str) -> Option<u32> {
    let n = key.strip_prefix(prefix)?;
    if n.is_empty() || n.len() > 3 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

impl GuestConfig {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.main.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| matches!(v, "1" | "yes" | "on" | "true"))
    }

    fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0)
    }

    /// The guest's name: a VM's `name`, a container's `hostname` (PVE's defaults `VM <id>` and
    /// `CT<id>` where unset).
    pub fn name(&self, ty: GuestType, id: &str) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match (ty, self.get(if ty == GuestType::Qemu { "name" } else { "hostname" })) {
            (GuestType::Qemu, Some(n)) => Cow::Borrowed(n),
            (GuestType::Qemu, None) => Cow::Owned(format!("VM {id}")),
            (GuestType::Lxc, Some(h)) if !h.contains(char::is_whitespace) => Cow::Borrowed(h),
            (GuestType::Lxc, Some(h)) => Cow::Owned(h.replace(char::is_whitespace, "")),
            (GuestType::Lxc, None) => Cow::Owned(format!("CT{id}")),
        }
    }

    pub fn template(&self) -> bool {
        self.flag("template").unwrap_or(false)
    }
    pub fn onboot(&self) -> Option<bool> {
        self.flag("onboot")
    }
    pub fn protection(&self) -> bool {
        self.flag("protection").unwrap_or(false)
    }
    pub fn unprivileged(&self) -> bool {
        self.flag("unprivileged").unwrap_or(false)
    }
    pub fn lock(&self) -> Option<&str> {
        self.get("lock").filter(|l| !l.is_empty())
    }

    /// `startup: order=1,up=30,down=60` -> the order.
    pub fn startup_order(&self) -> Option<u64> {
        let (first, props) = property_string(self.get("startup")?);
        props.get("order").copied().or(first.and_then(|f| f.strip_prefix("order="))).and_then(|o| o.parse().ok())
    }

    /// Tags as PVE stores them (`a;b`, older configs `a,b` or `a b`), sorted and joined with
    /// `;` (PVE's API form).
    pub fn tags(&self) -> &str {
        self.tags.get_or_init(|| {
            let mut t: Vec<&str> = self
                .get("tags")
                .unwrap_or("")
                .split([';', ',', ' '])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            t.sort_unstable();
            t.dedup();
            t.join(";")
        })
    }

    /// Configured CPUs as PVE counts them for `maxcpu`: a VM's `vcpus`, else sockets x cores
    /// (defaults 1 x 1), capped at the host's CPUs; a container's `cores`, else its
    /// `cpulimit`, else the host's CPUs.
    pub fn cpus(&self, ty: GuestType, host_cpus: u64) -> f64 {
        let host = host_cpus.max(1) as f64;
        match ty {
            GuestType::Qemu => {
                if let Some(v) = self.number("vcpus").filter(|v| *v > 0.0) {
                    return v;
                }
                let n = self.number("sockets").unwrap_or(1.0).max(1.0) * self.number("cores").unwrap_or(1.0).max(1.0);
                n.min(host)
            }
            GuestType::Lxc => self
                .number("cores")
                .filter(|c| *c > 0.0)
                .or(self.number("cpulimit").filter(|c| *c > 0.0))
                .unwrap_or(host),
        }
    }

    /// Configured cores (`cores`, PVE's default 1 for VMs; a container without `cores` may use
    /// every host CPU: None).
    pub fn cores(&self, ty: GuestType) -> Option<f64> {
        match ty {
            GuestType::Qemu => Some(self.number("cores").unwrap_or(1.0)),
            GuestType::Lxc => self.number("cores"),
        }
    }

    /// A container's CPU limit in cores (`cpulimit`, 0 or unset: none).
    pub fn cpulimit(&self) -> Option<f64> {
        self.number("cpulimit").filter(|c| *c > 0.0)
    }

    /// Memory in bytes: `memory: 2048` or `memory: current=2048` (MiB), PVE's defaults 512
    /// for both kinds where unset.
    pub fn memory_bytes(&self) -> u64 {
        let mib = self
            .get("memory")
            .and_then(|v| {
                let (first, props) = property_string(v);
                props.get("current").copied().or(first).and_then(|m| m.parse::<u64>().ok())
            })
            .unwrap_or(512);
        mib.saturating_mul(1 << 20)
    }

    /// A VM's balloon minimum in bytes (`balloon`; 0 means ballooning off: None).
    pub fn balloon_min_bytes(&self) -> Option<u64> {
        self.get("balloon").and_then(|b| b.parse::<u64>().ok()).filter(|b| *b > 0).map(|b| b.saturating_mul(1 << 20))
    }

    /// A container's swap in bytes (`swap`, default 0).
    pub fn swap_bytes(&self) -> u64 {
        self.get("swap").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0).saturating_mul(1 << 20)
    }

    /// Every configured disk: a VM's `ide/sata/scsi/virtio<N>` (not CD-ROMs), `efidisk0`,
    /// `tpmstate0`; a container's `rootfs` and `mp<N>`. Unused volumes (`unused<N>`) are not
    /// the guest's disks.
    pub fn disks(&self, ty: GuestType) -> &[ConfigDisk] {
        self.disks[ty as usize].get_or_init(|| self.parse_disks(ty))
    }

    fn parse_disks(&self, ty: GuestType) -> Vec<ConfigDisk> {
        let mut out = Vec::new();
        for (k, v) in self.main.iter() {
            let is_disk = match ty {
                GuestType::Qemu => {
                    ["ide", "sata", "scsi", "virtio"].iter().any(|p| numbered(k, p).is_some())
                        || k == "efidisk0"
                        || k == "tpmstate0"
                }
                GuestType::Lxc => k == "rootfs" || numbered(k, "mp").is_some(),
            };
            if !is_disk {
                continue;
            }
            let (first, props) = property_string(v);
            if props.get("media") == Some(&"cdrom") {
                continue;
            }
            let volume = first.or(props.get("volume").copied()).unwrap_or("");
            if volume.is_empty() || volume == "none" {
                continue;
            }
            let mountpoint = match ty {
                GuestType::Lxc if k == "rootfs" => Some("/".to_string()),
                GuestType::Lxc => props.get("mp").map(|m| m.to_string()),
                GuestType::Qemu => None,
            };
            out.push(ConfigDisk {
                key: k.to_string(),
                volume: volume.to_string(),
                size: props.get("size").and_then(|s| parse_size(s)),
                mountpoint,
            });
        }
        out
    }

    /// A container's NICs (`net<N>`).
    pub fn nics(&self) -> &[ConfigNic] {
        self.nics.get_or_init(|| self.parse_nics())
    }

    fn parse_nics(&self) -> Vec<ConfigNic> {
        let mut out: Vec<ConfigNic> = self
            .main
            .iter()
            .filter_map(|(k, v)| {
                let index = numbered(k, "net")?;
                let (_, props) = property_string(v);
                Some(ConfigNic {
                    index,
                    name: props.get("name").unwrap_or(&"").to_string(),
                    bridge: props.get("bridge").unwrap_or(&"").to_string(),
                })
            })
            .collect();
        out.sort_by_key(|n| n.index);
        out
    }

    /// A VM's boot disk as qemu-server's `bootdisk_size` finds it: the first disk of
    /// `boot: order=a;b;c` (or the legacy `bootdisk`) that is a configured disk.
    pub fn boot_disk(&self) -> Option<ConfigDisk> {
        let disks = self.disks(GuestType::Qemu);
        let order: Vec<&str> = match self.get("boot") {
            Some(b) => {
                let (_, props) = property_string(b);
                props.get("order").map(|o| o.split(';').collect()).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let legacy = self.get("bootdisk");
        order.into_iter().chain(legacy).find_map(|k| disks.iter().find(|d| d.key == k).cloned())
    }

    /// The newest snapshot's time (seconds since the epoch), if any snapshot has one.
    pub fn newest_snapshot(&self) -> Option<u64> {
        self.snapshots.iter().filter_map(|s| s.snaptime).max()
    }
}

/// `tap100i0` -> (qemu, 100); `veth101i1` -> (lxc, 101); anything else None.
pub fn guest_of_interface(name: &str) -> Option<(GuestType, String)> {
    let (ty, rest) = if let Some(r) = name.strip_prefix("tap") {
        (GuestType::Qemu, r)
    } else {
        (GuestType::Lxc, name.strip_prefix("veth")?)
    };
    let (id, n) = rest.split_once('i')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(id) && !id.starts_with('0') && digits(n)).then(|| (ty, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_of_guests() {
        assert_eq!(guest_of_interface("tap100i0"), Some((GuestType::Qemu, "100".into())));
        assert_eq!(guest_of_interface("veth101i12"), Some((GuestType::Lxc, "101".into())));
        for other in ["tap0", "veth1234abc", "vethi0", "tap01i0", "vmbr0", "fwpr100p0", "tap100i"] {
            assert_eq!(guest_of_interface(other), None, "{other}");
        }
    }

    /// In the form of qemu-server's `test/parse-config-input/sections.conf`: a main section,
    /// `[PENDING]`, `[special:cloudinit]` and one snapshot.
    const SECTIONS: &str = "boot: order=scsi0\ncores: 2\nide2: lvm:vm-120-cloudinit,media=cdrom\nmemory: 4096\n\
        name: deb1223\nnet0: vmxnet3=BC:24:11:2C:69:EC,bridge=vnet0,firewall=1\nostype: l26\nparent: foo\n\
        scsi0: nfs:120/vm-120-disk-0.qcow2,iothread=1,size=4G\nsockets: 1\nunused0: rbd:vm-120-disk-0\n\n\
        [PENDING]\nbios: ovmf\n\n[special:cloudinit]\nipconfig0: ip=dhcp,ip6=dhcp\nname: deb122\n\n\
        [foo]\nboot: order=scsi0\ncores: 2\nmemory: 4096\nname: deb1223\nsnaptime: 1737548747\n";

    #[test]
    fn entries_keep_every_key_and_value_in_file_order() {
        let c = parse_guest_config("name: a\ndescription:\nscsi0: local:1,size=1G\nname: b\n[snap]\ncores: 9\n");
        let all: Vec<(&str, &str)> = c.main.iter().collect();
        assert_eq!(all, [("name", "a"), ("description", ""), ("scsi0", "local:1,size=1G"), ("name", "b")]);
        assert_eq!(c.main.len(), 4);
        // The first of a repeated key, as before; an empty value is a value.
        assert_eq!((c.get("name"), c.get("description"), c.get("cores")), (Some("a"), Some(""), None));
        assert!(parse_guest_config("").main.is_empty());
    }

    #[test]
    fn sections_are_told_apart() {
        let c = parse_guest_config(SECTIONS);
        assert_eq!(c.get("name"), Some("deb1223"), "[special:cloudinit]'s name is not the VM's");
        assert_eq!(c.get("bios"), None, "[PENDING] is not applied yet");
        assert_eq!(c.snapshots, vec![Snapshot { name: "foo".into(), snaptime: Some(1_737_548_747) }]);
        assert_eq!(c.newest_snapshot(), Some(1_737_548_747));
        assert_eq!(c.malformed, 0);
        let disks = c.disks(GuestType::Qemu);
        assert_eq!(disks.len(), 1, "no CD-ROM, no unused volume: {disks:?}");
        assert_eq!(disks[0].key, "scsi0");
        assert_eq!(disks[0].volume, "nfs:120/vm-120-disk-0.qcow2");
        assert_eq!(disks[0].size, Some(4 << 30));
        assert_eq!(c.cpus(GuestType::Qemu, 16), 2.0);
        assert_eq!(c.memory_bytes(), 4096 << 20);
        assert_eq!(c.boot_disk().map(|d| d.key), Some("scsi0".into()));
        let legacy = parse_guest_config("bootdisk: virtio0\nvirtio0: local:1/a.raw,size=2G\n");
        assert_eq!(legacy.boot_disk().and_then(|d| d.size), Some(2 << 30));
        assert_eq!(parse_guest_config("boot: order=net0;ide2\nide2: none,media=cdrom\n").boot_disk(), None);
    }

    #[test]
    fn vm_values_and_defaults() {
        let c = parse_guest_config(
            "# a description\n#line two\nlock: backup\nmemory: current=2048\nballoon: 1024\nsockets: 2\ncores: 4\n\
             onboot: 1\nstartup: order=3,up=30\ntags: prod;web\nprotection: 1\ntemplate: 1\n\
             efidisk0: local-lvm:vm-100-disk-1,efitype=4m,size=4M\ntpmstate0: local-lvm:vm-100-disk-2,size=4M,version=v2.0\n\
             virtio0: local:100/vm-100-disk-0.qcow2,size=1.5G\nide0: none,media=cdrom\n",
        );
        assert_eq!(c.lock(), Some("backup"));
        assert_eq!(c.memory_bytes(), 2048 << 20);
        assert_eq!(c.balloon_min_bytes(), Some(1024 << 20));
        assert_eq!(c.cpus(GuestType::Qemu, 16), 8.0);
        assert_eq!(c.cpus(GuestType::Qemu, 4), 4.0, "capped at the host's CPUs, as vmstatus does");
        assert_eq!((c.onboot(), c.startup_order(), c.protection(), c.template()), (Some(true), Some(3), true, true));
        assert_eq!(c.tags(), "prod;web");
        assert_eq!(c.name(GuestType::Qemu, "100"), "VM 100");
        let sizes: Vec<(String, Option<u64>)> =
            c.disks(GuestType::Qemu).iter().map(|d| (d.key.clone(), d.size)).collect();
        assert_eq!(
            sizes,
            vec![
                ("efidisk0".into(), Some(4 << 20)),
                ("tpmstate0".into(), Some(4 << 20)),
                ("virtio0".into(), Some(3 << 29))
            ]
        );
        let none = parse_guest_config("");
        assert_eq!((none.memory_bytes(), none.cpus(GuestType::Qemu, 8), none.onboot()), (512 << 20, 1.0, None));
        assert_eq!(parse_guest_config("vcpus: 3\ncores: 4\n").cpus(GuestType::Qemu, 16), 3.0);
    }

    /// In the form of pve-container's snapshot test configs.
    #[test]
    fn container_values() {
        let c = parse_guest_config(
            "arch: amd64\ncores: 2\nhostname: web 01\nmemory: 1024\nswap: 256\nostype: debian\nunprivileged: 1\n\
             net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth\n\
             net1: name=eth1,bridge=vmbr1,hwaddr=BC:24:11:00:00:02,ip=dhcp,type=veth\n\
             rootfs: local-lvm:vm-101-disk-0,size=8G\nmp0: local:101/vm-101-disk-1.raw,mp=/srv,size=10G\n\
             mp1: /mnt/host,mp=/mnt/shared\nparent: snap2\n\n[snap1]\nsnaptime: 100\n\n[snap2]\nsnaptime: 200\n",
        );
        assert_eq!(c.name(GuestType::Lxc, "101"), "web01", "PVE strips white space");
        assert!(c.unprivileged());
        assert_eq!((c.memory_bytes(), c.swap_bytes()), (1024 << 20, 256 << 20));
        assert_eq!(c.cpus(GuestType::Lxc, 16), 2.0);
        assert_eq!(parse_guest_config("cpulimit: 1.5\n").cpus(GuestType::Lxc, 16), 1.5);
        assert_eq!(parse_guest_config("").cpus(GuestType::Lxc, 16), 16.0);
        let disks = c.disks(GuestType::Lxc);
        let view: Vec<(&str, &str, Option<u64>, Option<&str>)> =
            disks.iter().map(|d| (d.key.as_str(), d.volume.as_str(), d.size, d.mountpoint.as_deref())).collect();
        assert_eq!(
            view,
            vec![
                ("rootfs", "local-lvm:vm-101-disk-0", Some(8 << 30), Some("/")),
                ("mp0", "local:101/vm-101-disk-1.raw", Some(10 << 30), Some("/srv")),
                ("mp1", "/mnt/host", None, Some("/mnt/shared")),
            ]
        );
        let nics = c.nics();
        assert_eq!(nics.iter().map(|n| (n.index, n.name.as_str())).collect::<Vec<_>>(), vec![(0, "eth0"), (1, "eth1")]);
        assert_eq!(c.newest_snapshot(), Some(200));
        assert_eq!(c.snapshots.len(), 2);
    }

    #[test]
    fn odd_input_is_skipped_not_fatal() {
        let c =
            parse_guest_config("no colon here\n: empty key\nname: ok\n[unterminated\nmemory: lots\n\0\u{fffd}: x\n");
        assert_eq!(c.get("name"), Some("ok"));
        assert_eq!(c.memory_bytes(), 512 << 20, "a memory that is no number is PVE's default");
        assert!(c.malformed >= 3);
        for s in ["", "G", "-1G", "1e400G", "99999999999999999999T", "1.5.5G"] {
            let _ = parse_size(s);
        }
        assert_eq!(parse_size("707456K"), Some(707_456 << 10));
        assert_eq!(parse_size("4194304"), Some(4_194_304));
    }

    /// Random text made of the characters that matter to the parser: no input panics (the
    /// fuzzing of issue 20 goes further; this keeps the parser honest in every test run).
    #[test]
    fn random_input_never_panics() {
        const ALPHABET: &[u8] = b"ab019:=,;[]\n #.-_ \tGMKTsize=mp=order=cdrom\xc3\xa9";
        for text in crate::sources::testing::random_texts(ALPHABET, 0x9e37_79b9_7f4a_7c15, 3000, 200) {
            let c = parse_guest_config(&text);
            for ty in [GuestType::Qemu, GuestType::Lxc] {
                let _ = (c.name(ty, "1"), c.cpus(ty, 4), c.cores(ty), c.disks(ty));
            }
            let _ = (c.memory_bytes(), c.balloon_min_bytes(), c.swap_bytes(), c.tags(), c.startup_order());
            let _ = (c.nics(), c.boot_disk(), c.newest_snapshot(), c.lock(), c.cpulimit());
            let _ = parse_size(&text);
        }
    }
}
