//! tracefs: finding (or mounting) it, and parsing tracepoint format files. Field offsets for
//! the BPF programs come from here, never from constants.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::host::HostRoot;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDesc {
    /// The C declaration without the field name (`unsigned short`, `__u32`, `char[16]`).
    pub ty: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceFormat {
    pub name: String,
    pub id: u32,
    pub fields: Vec<FieldDesc>,
    /// The `print fmt:` line (it carries the kernel's symbol tables, e.g. exit reasons).
    pub print_fmt: String,
}

impl TraceFormat {
    pub fn field(&self, name: &str) -> Option<&FieldDesc> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The field `name` if it exists with the expected size, else why not.
    pub fn checked_field(&self, name: &str, size: u32) -> Result<&FieldDesc, String> {
        match self.field(name) {
            Some(f) if f.size == size => Ok(f),
            Some(f) => Err(format!("{}: field {name} has size {} (expected {size})", self.name, f.size)),
            None => Err(format!("{}: no field {name}", self.name)),
        }
    }
}

fn parse_field(line: &str) -> Option<FieldDesc> {
    // `field:unsigned int exit_reason;	offset:8;	size:4;	signed:0;`
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once(':')?;
        match k.trim() {
            "field" => decl = Some(v.trim()),
            "offset" => offset = v.trim().parse().ok(),
            "size" => size = v.trim().parse().ok(),
            "signed" => signed = v.trim().parse::<u8>().ok().map(|s| s != 0),
            _ => {}
        }
    }
    let decl = decl?;
    // The name is the last identifier, possibly followed by an array suffix: `char comm[16]`.
    // (`__data_loc char[] name` has its brackets in the type, not after the name.)
    let (head, array) = match decl.rfind('[').filter(|_| decl.ends_with(']')) {
        Some(i) => (&decl[..i], &decl[i..]),
        None => (decl, ""),
    };
    let head = head.trim_end();
    let split = head.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let name = &head[split + 1..];
    if name.is_empty() {
        return None;
    }
    let ty = format!("{}{}", head[..split + 1].trim(), array);
    Some(FieldDesc { ty, name: name.to_string(), offset: offset?, size: size?, signed: signed.unwrap_or(false) })
}

/// Parse a tracepoint `format` file.
pub fn parse_format(text: &str) -> Result<TraceFormat, String> {
    let mut name = None;
    let mut id = None;
    let mut fields = Vec::new();
    let mut print_fmt = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = t.strip_prefix("ID:") {
            id = v.trim().parse::<u32>().ok();
        } else if t.starts_with("field:") {
            fields.push(parse_field(t).ok_or_else(|| format!("bad field line {t:?}"))?);
        } else if let Some(v) = t.strip_prefix("print fmt:") {
            print_fmt = v.trim().to_string();
        }
    }
    Ok(TraceFormat { name: name.ok_or("format has no name")?, id: id.ok_or("format has no ID")?, fields, print_fmt })
}

/// The tracefs mount below `host`: `/sys/kernel/tracing`, else the older
/// `/sys/kernel/debug/tracing`; mounted at `/sys/kernel/tracing` when neither is there.
pub fn find_or_mount(host: &HostRoot) -> io::Result<PathBuf> {
    for rel in ["sys/kernel/tracing", "sys/kernel/debug/tracing"] {
        let p = host.path(rel);
        if p.join("events").is_dir() {
            return Ok(p);
        }
    }
    let target = host.path("sys/kernel/tracing");
    mount_tracefs(&target)?;
    if target.join("events").is_dir() {
        log::info!("mounted tracefs at {}", target.display());
        Ok(target)
    } else {
        Err(io::Error::other(format!("mounted tracefs at {} but it has no events/", target.display())))
    }
}

fn mount_tracefs(target: &Path) -> io::Result<()> {
    let c = |s: &[u8]| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let target_c = c(target.as_os_str().as_bytes())?;
    let (src, fstype) = (c(b"nodev")?, c(b"tracefs")?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target_c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("mount tracefs at {}: {e}", target.display())));
    }
    Ok(())
}

/// Read and parse `events/<category>/<name>/format`.
pub fn read_format(tracefs: &Path, category: &str, name: &str) -> io::Result<TraceFormat> {
    let p = tracefs.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&p)?;
    parse_format(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIO: &str = include_str!("../../../fixtures/tracepoints/kvm_kvm_pio.format");

    #[test]
    fn kvm_pio_format() {
        let f = parse_format(PIO).unwrap();
        assert_eq!(f.name, "kvm_pio");
        assert_eq!(f.id, 110);
        let ct = f.checked_field("common_type", 2).unwrap();
        assert_eq!((ct.offset, ct.ty.as_str(), ct.signed), (0, "unsigned short", false));
        let port = f.checked_field("port", 4).unwrap();
        assert_eq!(port.offset, 12);
        assert!(f.checked_field("port", 8).is_err());
        assert!(f.checked_field("nope", 4).is_err());
        assert!(f.print_fmt.starts_with("\"pio_%s"));
    }

    #[test]
    fn every_fixture_format_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tracepoints");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let f = parse_format(&text).unwrap();
            assert_eq!(f.checked_field("common_type", 2).unwrap().offset, 0);
            n += 1;
        }
        assert!(n >= 10);
    }

    #[test]
    fn array_and_odd_fields() {
        let f = parse_field("field:char prev_comm[16];	offset:8;	size:16;	signed:0;").unwrap();
        assert_eq!((f.name.as_str(), f.ty.as_str(), f.size), ("prev_comm", "char[16]", 16));
        let f = parse_field("field:__data_loc char[] name;	offset:8;	size:4;	signed:0;").unwrap();
        assert_eq!(f.name, "name");
        assert!(parse_field("field:;offset:x;").is_none());
        assert!(parse_format("garbage").is_err());
        assert!(parse_format("name: x\nID: y\n").is_err());
        assert!(parse_format("name: x\nID: 1\n\tfield:int a;\toffset:zz;\tsize:4;\n").is_err());
    }
}
