//! libvirt's runtime directory `/run/libvirt/qemu/`: one `<name>.pid` (the QEMU pid) and one
//! `<name>.xml` (the live status XML: `<domstatus>` around the running `<domain>`) per running
//! domain. libvirt holds each QEMU monitor itself, so everything about a domain comes from
//! here, /proc and /sys. The parser is a pure function from text to [`LibvirtDomain`]; the
//! reader caches each parsed XML by its file stamp.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::MetadataExt,
    sync::{Arc, Mutex},
};

use crate::{
    host::HostRoot,
    sources::error::{ParseError, SourceError},
};

/// Where libvirt's QEMU driver keeps its runtime state.
pub const RUN_DIR: &str = "run/libvirt/qemu";

/// OpenStack Nova's metadata namespaces (`.../nova/1.0`, `.../nova/1.1`).
const NOVA_NS_PREFIX: &str = "http://openstack.org/xmlns/libvirt/nova/";

/// A guest NIC of the domain XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainNic {
    /// `<interface type=...>`: `bridge`, `ethernet`, `network`, `vhostuser`, ...
    pub kind: String,
    /// `<target dev>`: the host's tap device (empty when libvirt did not name one).
    pub target: String,
    pub mac: String,
    /// `<model type>`: `virtio`, `e1000`, ...
    pub model: String,
    /// `<source bridge>` (or `<source network>`).
    pub bridge: String,
}

/// A disk of the domain XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainDisk {
    /// `<target dev>`: `vda`, `sda`.
    pub target: String,
    /// `<source file>` or `<source dev>`; for a network disk `<protocol>:<name>` (`rbd:pool/vol`).
    pub source: String,
    /// `<driver type>`: `qcow2`, `raw`.
    pub format: String,
    /// `<disk device>`: `disk`, `cdrom`.
    pub device: String,
    pub read_only: bool,
}

/// OpenStack Nova's `<nova:instance>` metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NovaInstance {
    /// `<nova:name>`: the instance's display name.
    pub name: String,
    /// `<nova:flavor name>`.
    pub flavor: String,
    /// `<nova:owner><nova:project uuid>name</nova:project>`.
    pub project: String,
    pub project_id: String,
    /// `<nova:owner><nova:user>`.
    pub user: String,
}

/// What the exporter needs of a running domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibvirtDomain {
    pub name: String,
    pub uuid: String,
    /// `<domstatus pid>` of the status XML (the pid file says the same).
    pub pid: Option<u32>,
    /// vCPUs given to the guest: `<vcpu current>` when set, else `<vcpu>`.
    pub vcpus: u64,
    /// `<memory>` in bytes (the guest's maximum: initial memory plus what a balloon may take back).
    pub memory_bytes: u64,
    pub nics: Vec<DomainNic>,
    pub disks: Vec<DomainDisk>,
    pub nova: Option<NovaInstance>,
}

/// A libvirt memory amount: `value` in `unit` (libvirt's default unit is KiB).
fn scaled(value: &str, unit: Option<&str>) -> Option<u64> {
    let n: u64 = value.trim().parse().ok()?;
    let mult: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

fn attr(n: roxmltree::Node, child_name: &str, attr: &str) -> String {
    child(n, child_name).and_then(|c| c.attribute(attr)).unwrap_or("").to_string()
}

fn text(n: Option<roxmltree::Node>) -> String {
    n.and_then(|n| n.text()).map(str::trim).unwrap_or("").to_string()
}

fn parse_nova(metadata: roxmltree::Node) -> Option<NovaInstance> {
    let inst = metadata.children().find(|c| {
        c.is_element()
            && c.tag_name().name() == "instance"
            && c.tag_name().namespace().is_some_and(|ns| ns.starts_with(NOVA_NS_PREFIX))
    })?;
    let owner = child(inst, "owner");
    let project = owner.and_then(|o| child(o, "project"));
    Some(NovaInstance {
        name: text(child(inst, "name")),
        flavor: child(inst, "flavor").and_then(|f| f.attribute("name")).unwrap_or("").to_string(),
        project: text(project),
        project_id: project.and_then(|p| p.attribute("uuid")).unwrap_or("").to_string(),
        user: text(owner.and_then(|o| child(o, "user"))),
    })
}

/// Deepest element nesting a domain XML may have.
const MAX_XML_DEPTH: usize = 64;

/// Whether elements nest deeper than `max`, in one pass over the bytes (start tags with their
/// quoted attribute values, end tags, empty-element tags; comments, CDATA, processing
/// instructions and declarations skipped).
fn nesting_exceeds(xml: &str, max: usize) -> bool {
    let b = xml.as_bytes();
    let find = |from: usize, what: &[u8]| {
        b.get(from..).and_then(|r| r.windows(what.len()).position(|w| w == what)).map(|p| from + p + what.len())
    };
    let (mut i, mut depth) = (0, 0usize);
    while let Some(p) = b.get(i..).and_then(|r| r.iter().position(|&c| c == b'<')) {
        i += p;
        let rest = &b[i..];
        let end = if rest.starts_with(b"<!--") {
            find(i + 4, b"-->")
        } else if rest.starts_with(b"<![CDATA[") {
            find(i + 9, b"]]>")
        } else if rest.starts_with(b"<?") || rest.starts_with(b"<!") {
            find(i + 2, b">")
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            find(i + 2, b">")
        } else {
            // A start tag: to its `>`, outside quoted attribute values.
            let mut quote = None;
            let mut j = i + 1;
            while let Some(&c) = b.get(j) {
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None if c == b'"' || c == b'\'' => quote = Some(c),
                    None if c == b'>' => break,
                    None => {}
                }
                j += 1;
            }
            if b.get(j.wrapping_sub(1)) != Some(&b'/') {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            Some(j + 1)
        };
        match end {
            Some(e) => i = e,
            None => break,
        }
    }
    false
}

/// Parse a domain XML: the status XML of `/run/libvirt/qemu/<name>.xml` (`<domstatus>` with the
/// `<domain>` inside) or a bare `<domain>` (`virsh dumpxml`). Err when it is not XML, has no
/// domain, or the domain has no name; optional parts that are missing or malformed are left
/// empty (0 for numbers).
pub fn parse_domain_xml(xml: &str) -> Result<LibvirtDomain, ParseError> {
    // Bounded before the parser sees it: thousands of nested elements overflowed the stack
    // (an abort, not a panic one collector could contain). libvirt's own nest ~10 deep.
    if nesting_exceeds(xml, MAX_XML_DEPTH) {
        return Err(ParseError::new("domain XML", format!("elements nested deeper than {MAX_XML_DEPTH}")));
    }
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| ParseError::new("domain XML", format!("not XML: {e}")).at(e.pos().row as usize))?;
    let root = doc.root_element();
    let (status, domain) = match root.tag_name().name() {
        "domain" => (None, root),
        "domstatus" => (
            Some(root),
            child(root, "domain").ok_or_else(|| ParseError::new("domain XML", "<domstatus> without <domain>"))?,
        ),
        other => {
            return Err(ParseError::new("domain XML", format!("root element <{other}>, not <domain> or <domstatus>")));
        }
    };
    let name = text(child(domain, "name"));
    if name.is_empty() {
        return Err(ParseError::new("domain XML", "domain without <name>"));
    }
    let vcpu = child(domain, "vcpu");
    let vcpus = vcpu
        .and_then(|v| v.attribute("current"))
        .or_else(|| vcpu.and_then(|v| v.text()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let memory_bytes =
        child(domain, "memory").and_then(|m| scaled(m.text().unwrap_or(""), m.attribute("unit"))).unwrap_or(0);
    let mut nics = Vec::new();
    let mut disks = Vec::new();
    if let Some(devices) = child(domain, "devices") {
        for d in devices.children().filter(|c| c.is_element()) {
            match d.tag_name().name() {
                "interface" => {
                    let source = child(d, "source");
                    let bridge = source.and_then(|s| s.attribute("bridge").or(s.attribute("network")));
                    nics.push(DomainNic {
                        kind: d.attribute("type").unwrap_or("").to_string(),
                        target: attr(d, "target", "dev"),
                        mac: attr(d, "mac", "address"),
                        model: attr(d, "model", "type"),
                        bridge: bridge.unwrap_or("").to_string(),
                    });
                }
                "disk" => {
                    let source = child(d, "source");
                    let path = source.and_then(|s| s.attribute("file").or(s.attribute("dev")));
                    let source = match (path, source) {
                        (Some(p), _) => p.to_string(),
                        (None, Some(s)) => match (s.attribute("protocol"), s.attribute("name")) {
                            (Some(proto), Some(n)) => format!("{proto}:{n}"),
                            _ => String::new(),
                        },
                        (None, None) => String::new(),
                    };
                    disks.push(DomainDisk {
                        target: attr(d, "target", "dev"),
                        source,
                        format: attr(d, "driver", "type"),
                        device: d.attribute("device").unwrap_or("disk").to_string(),
                        read_only: child(d, "readonly").is_some(),
                    });
                }
                _ => {}
            }
        }
    }
    Ok(LibvirtDomain {
        name,
        uuid: text(child(domain, "uuid")),
        pid: status.and_then(|s| s.attribute("pid")).and_then(|p| p.parse().ok()),
        vcpus,
        memory_bytes,
        nics,
        disks,
        nova: child(domain, "metadata").and_then(parse_nova),
    })
}

/// A running domain as its runtime directory tells.
#[derive(Debug, Clone)]
pub struct RunningDomain {
    /// From the pid file (else the status XML).
    pub pid: u32,
    pub domain: Arc<LibvirtDomain>,
}

/// What identifies one version of a file: libvirt replaces the status XML by rename, so a new
/// version has a new inode; mtime and size catch an in-place rewrite.
type Stamp = (u64, i64, i64, u64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    (m.ino(), m.mtime(), m.mtime_nsec(), m.size())
}

/// Reads `/run/libvirt/qemu/` and keeps each parsed XML until its file changes: a scrape costs
/// one directory listing, one small pid file and one `stat` per domain.
#[derive(Debug, Default)]
pub struct LibvirtReader {
    cache: Mutex<HashMap<String, (Stamp, Arc<LibvirtDomain>)>>,
}

impl LibvirtReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The running domains. Err when the directory cannot be listed; a domain whose files
    /// cannot be read or parsed is left out and named in `errors`; a domain whose files vanish
    /// while we look stopped (not an error).
    pub fn running(&self, host: &HostRoot, errors: &mut Vec<SourceError>) -> io::Result<Vec<RunningDomain>> {
        let mut names: Vec<String> = Vec::new();
        for e in std::fs::read_dir(host.path(RUN_DIR))? {
            let Ok(e) = e else { continue };
            let file = e.file_name();
            if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".xml"))
                && !name.is_empty()
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Stopped domains leave the cache with their files.
        cache.retain(|k, _| names.binary_search(k).is_ok());
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let xml_path = host.path(format!("{RUN_DIR}/{name}.xml"));
            let meta = match std::fs::metadata(&xml_path) {
                Ok(m) => m,
                Err(e) if crate::host::is_gone(&e) => continue,
                Err(e) => {
                    errors.push(SourceError::io(&xml_path, e));
                    continue;
                }
            };
            // The XML says which process is the domain and which files are its disks (the daemon
            // opens them): root's word only.
            if let Err(e) = crate::sources::proc::trust::check_owner(&xml_path, &meta) {
                errors.push(SourceError::io(&xml_path, e));
                continue;
            }
            let st = stamp(&meta);
            let domain = match cache.get(&name) {
                Some((s, d)) if *s == st => d.clone(),
                _ => {
                    let parsed = crate::host::read_string_capped(&xml_path, crate::host::MAX_FILE)
                        .map_err(|e| (crate::host::is_gone(&e), SourceError::io(&xml_path, e)))
                        .and_then(|t| {
                            parse_domain_xml(&t).map_err(|e| (false, e.input(xml_path.display().to_string()).into()))
                        });
                    match parsed {
                        Ok(d) => {
                            let d = Arc::new(d);
                            cache.insert(name.clone(), (st, d.clone()));
                            d
                        }
                        Err((true, _)) => continue,
                        Err((false, e)) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
            };
            // libvirt writes the pid file first and removes it last: a domain without one is
            // starting or stopping; the status XML's pid covers the gap.
            let pid_path = host.path(format!("{RUN_DIR}/{name}.pid"));
            let pid = match crate::sources::proc::trust::read_owned_file(&pid_path) {
                Ok(t) => t.trim().parse::<u32>().ok(),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    errors.push(SourceError::io(&pid_path, e));
                    continue;
                }
                Err(_) => None,
            }
            .or(domain.pid);
            match pid {
                Some(pid) => out.push(RunningDomain { pid, domain }),
                None => errors.push(SourceError::invalid(format!("libvirt domain {name}"), "no pid")),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOVA: &str = r#"<domstatus state='running' reason='booted' pid='4242'>
  <monitor path='/var/lib/libvirt/qemu/domain-1-instance-0000002a/monitor.sock' type='unix'/>
  <domain type='kvm' id='1'>
    <name>instance-0000002a</name>
    <uuid>9f2ac8d4-5b0e-4c57-9d1c-3f6f3c2f2a10</uuid>
    <metadata>
      <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
        <nova:package version="27.1.0"/>
        <nova:name>web-1</nova:name>
        <nova:creationTime>2024-03-01 10:00:00</nova:creationTime>
        <nova:flavor name="m1.small">
          <nova:memory>2048</nova:memory>
          <nova:vcpus>2</nova:vcpus>
        </nova:flavor>
        <nova:owner>
          <nova:user uuid="u-1">alice</nova:user>
          <nova:project uuid="p-1">webteam</nova:project>
        </nova:owner>
      </nova:instance>
    </metadata>
    <memory unit='KiB'>2097152</memory>
    <currentMemory unit='KiB'>2097152</currentMemory>
    <vcpu placement='static'>2</vcpu>
    <devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2' cache='none'/>
        <source file='/var/lib/nova/instances/9f2ac8d4/disk'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='network' device='disk'>
        <driver name='qemu' type='raw'/>
        <source protocol='rbd' name='volumes/volume-1'/>
        <target dev='vdb' bus='virtio'/>
      </disk>
      <disk type='file' device='cdrom'>
        <target dev='sda' bus='sata'/>
        <readonly/>
      </disk>
      <interface type='bridge'>
        <mac address='fa:16:3e:11:22:33'/>
        <source bridge='qbr1234'/>
        <target dev='tap1234abcd-01'/>
        <model type='virtio'/>
      </interface>
    </devices>
  </domain>
</domstatus>"#;

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{}{}", "<domain>".repeat(5000), "</domain>".repeat(5000));
        let e = parse_domain_xml(&deep).unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
        assert!(!nesting_exceeds("<a><b x='>' y=\"<c>\"/><!-- <d><d><d> --><![CDATA[<e><e>]]></a>", 2));
        assert!(nesting_exceeds("<a><b><c></c></b></a>", 2));
        assert!(!nesting_exceeds("<a></a><a></a><a></a>", 1), "siblings are not nesting");
        assert!(nesting_exceeds("<a", 0), "an unterminated start tag counts");
        assert!(!nesting_exceeds("<!-- <a><a>", 1) && !nesting_exceeds("</a></a><", 1), "unterminated: no panic");
    }

    #[test]
    fn nova_status_xml() {
        let d = parse_domain_xml(NOVA).unwrap();
        assert_eq!(d.name, "instance-0000002a");
        assert_eq!(d.uuid, "9f2ac8d4-5b0e-4c57-9d1c-3f6f3c2f2a10");
        assert_eq!((d.pid, d.vcpus, d.memory_bytes), (Some(4242), 2, 2 << 30));
        assert_eq!(
            d.nics,
            [DomainNic {
                kind: "bridge".into(),
                target: "tap1234abcd-01".into(),
                mac: "fa:16:3e:11:22:33".into(),
                model: "virtio".into(),
                bridge: "qbr1234".into(),
            }]
        );
        assert_eq!(d.disks.len(), 3);
        assert_eq!(
            (d.disks[0].target.as_str(), d.disks[0].source.as_str()),
            ("vda", "/var/lib/nova/instances/9f2ac8d4/disk")
        );
        assert_eq!(d.disks[0].format, "qcow2");
        assert_eq!(d.disks[1].source, "rbd:volumes/volume-1");
        assert!(d.disks[2].read_only && d.disks[2].source.is_empty());
        assert_eq!(
            d.nova,
            Some(NovaInstance {
                name: "web-1".into(),
                flavor: "m1.small".into(),
                project: "webteam".into(),
                project_id: "p-1".into(),
                user: "alice".into(),
            })
        );
    }

    #[test]
    fn bare_domain_without_metadata() {
        let d = parse_domain_xml(
            "<domain type='kvm'><name>plain</name><memory unit='MiB'>512</memory><vcpu current='2'>4</vcpu>\
             <metadata><other:x xmlns:other='urn:x'/></metadata></domain>",
        )
        .unwrap();
        assert_eq!((d.name.as_str(), d.vcpus, d.memory_bytes, d.pid), ("plain", 2, 512 << 20, None));
        assert_eq!(d.nova, None);
        // Default unit KiB; odd or missing numbers are 0, not an error.
        let d = parse_domain_xml("<domain><name>a</name><memory>1024</memory><vcpu>x</vcpu></domain>").unwrap();
        assert_eq!((d.vcpus, d.memory_bytes), (0, 1 << 20));
        let d = parse_domain_xml("<domain><name>a</name><memory unit='parsec'>1</memory></domain>").unwrap();
        assert_eq!(d.memory_bytes, 0);
        assert_eq!(scaled("99999999999999999999", None), None);
        assert_eq!(scaled("3", Some("GB")), Some(3_000_000_000));
    }

    #[test]
    fn malformed_xml() {
        for bad in [
            "",
            "not xml",
            "<domain><name>x</name>",                  // truncated
            "<domstatus pid='1'></domstatus>",         // no domain
            "<domain><uuid>u</uuid></domain>",         // no name
            "<domain><name>  </name></domain>",        // empty name
            "<network><name>default</name></network>", // another kind of XML
            "<domain><name>x</name></domain><domain/>",
        ] {
            assert!(parse_domain_xml(bad).is_err(), "{bad:?}");
        }
        // A pid that is not a number is no pid.
        let d = parse_domain_xml("<domstatus pid='-3'><domain><name>x</name></domain></domstatus>").unwrap();
        assert_eq!(d.pid, None);
    }

    #[test]
    fn reader_caches_by_stamp_and_forgets_stopped_domains() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let run = dir.path().join(RUN_DIR);
        std::fs::create_dir_all(&run).unwrap();
        let r = LibvirtReader::new();
        std::fs::write(run.join("a.xml"), "<domain><name>a</name><vcpu>1</vcpu></domain>").unwrap();
        std::fs::write(run.join("a.pid"), "100\n").unwrap();
        std::fs::write(run.join("b.xml"), "garbage").unwrap();
        std::fs::write(run.join("c.xml"), "<domstatus pid='300'><domain><name>c</name></domain></domstatus>").unwrap();
        let mut errors = Vec::new();
        let got = r.running(&host, &mut errors).unwrap();
        assert_eq!(got.iter().map(|d| (d.domain.name.as_str(), d.pid)).collect::<Vec<_>>(), [("a", 100), ("c", 300)]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("b.xml"), "{errors:?}");
        // The same Arc while the file is unchanged; a new parse after a replace.
        let again = r.running(&host, &mut Vec::new()).unwrap();
        assert!(Arc::ptr_eq(&got[0].domain, &again[0].domain));
        std::fs::write(run.join("a.new"), "<domain><name>a</name><vcpu>3</vcpu></domain>").unwrap();
        std::fs::rename(run.join("a.new"), run.join("a.xml")).unwrap();
        let again = r.running(&host, &mut Vec::new()).unwrap();
        assert_eq!(again[0].domain.vcpus, 3);
        std::fs::remove_file(run.join("c.xml")).unwrap();
        assert_eq!(r.running(&host, &mut Vec::new()).unwrap().len(), 1);
        assert_eq!(r.cache.lock().unwrap().len(), 1);
        assert!(LibvirtReader::new().running(&HostRoot::new("/nonexistent"), &mut Vec::new()).is_err());
    }

    /// A status XML or pid file that is not root's names no domain (root can hand a file over).
    #[test]
    fn files_of_other_owners_are_ignored() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let run = dir.path().join(RUN_DIR);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("a.xml"), "<domstatus pid='100'><domain><name>a</name></domain></domstatus>").unwrap();
        std::fs::write(run.join("b.xml"), "<domstatus pid='200'><domain><name>b</name></domain></domstatus>").unwrap();
        std::fs::write(run.join("b.pid"), "300\n").unwrap();
        std::os::unix::fs::chown(run.join("a.xml"), Some(65534), None).unwrap();
        std::os::unix::fs::chown(run.join("b.pid"), Some(65534), None).unwrap();
        let mut errors = Vec::new();
        let got = LibvirtReader::new().running(&host, &mut errors).unwrap();
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| e.to_string().contains("owned by uid 65534, not root")), "{errors:?}");
    }
}
