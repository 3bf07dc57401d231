//! tracefs: finding (or mounting) it, and parsing tracepoint format files. Field offsets for
//! the BPF programs come from here, never from constants.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::{host::HostRoot, sources::error::ParseError};

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
    pub fn checked_field(&self, name: &str, size: u32) -> Result<&FieldDesc, ParseError> {
        match self.field(name) {
            Some(f) if f.size == size => Ok(f),
            Some(f) => Err(ParseError::new(
                format!("tracepoint {}", self.name),
                format!("field {name} has size {} (expected {size})", f.size),
            )),
            None => Err(ParseError::new(format!("tracepoint {}", self.name), format!("no field {name}"))),
        }
    }
}

/// The symbol tables of `__print_symbolic(REC-><field>..., { N, "NAME" }, ...)` in a print
/// fmt line, in order of appearance (kvm_exit has one for VMX and one for SVM). Adjacent string
/// literals are joined as C does (`"KVM_EXIT_" "IO"` is `KVM_EXIT_IO`); an entry whose number
/// is not a literal is skipped. Negative numbers are taken as the 32-bit fields these tables
/// decode hold them (`-1` is 0xffffffff).
pub fn print_symbolic_tables(print_fmt: &str, field: &str) -> Vec<Vec<(u64, String)>> {
    let needle = format!("__print_symbolic(REC->{field}");
    let mut tables = Vec::new();
    let mut rest = print_fmt;
    while let Some(i) = rest.find(&needle) {
        rest = &rest[i + needle.len()..];
        // The next character must end the field name (`REC->reason,` not `REC->reasons`).
        if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let mut table = Vec::new();
        let mut depth = 1; // inside __print_symbolic(
        let mut chars = rest.char_indices().peekable();
        let mut entry: Option<(String, String)> = None; // (number text, joined name)
        let mut in_str = false;
        let mut after_comma = false;
        while let Some((_, c)) = chars.next() {
            if in_str {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next()
                            && let Some(e) = entry.as_mut()
                        {
                            e.1.push(n);
                        }
                    }
                    '"' => in_str = false,
                    _ => {
                        if let Some(e) = entry.as_mut() {
                            e.1.push(c);
                        }
                    }
                }
                continue;
            }
            match c {
                '"' => in_str = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                '{' => {
                    entry = Some((String::new(), String::new()));
                    after_comma = false;
                }
                ',' if entry.is_some() => after_comma = true,
                '}' => {
                    if let Some((num, name)) = entry.take() {
                        let num = num.trim();
                        let v = symbol_value(num);
                        if let Some(v) = v
                            && !name.is_empty()
                        {
                            table.push((v, name));
                        }
                    }
                }
                _ => {
                    if let Some(e) = entry.as_mut()
                        && !after_comma
                    {
                        e.0.push(c);
                    }
                }
            }
        }
        tables.push(table);
    }
    tables
}

/// The number of a `__print_symbolic` entry as the preprocessor left it: a literal (hex or
/// decimal), or a sum of them (SVM's exception intercepts, `{ 0x040 + 14, "PF excp" }`, are
/// `SVM_EXIT_EXCP_BASE + PF_VECTOR`). A negative code (SVM's `{ -1, "invalid_guest_state" }`)
/// is what the 32-bit field holds: its two's complement. Anything else: None (skipped).
fn symbol_value(num: &str) -> Option<u64> {
    let literal = |t: &str| {
        let t = t.trim();
        match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => t.parse::<u64>().ok(),
        }
    };
    if num.starts_with('-') {
        return num.parse::<i32>().ok().map(|n| u64::from(n as u32));
    }
    let mut sum = 0u64;
    for term in num.split('+') {
        sum = sum.checked_add(literal(term)?)?;
    }
    Some(sum)
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
    // Where the name starts: after the last character that cannot be in it (which may be
    // more than one byte: a hostile format must not slice off a character boundary).
    let split = head
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map(|(i, c)| i + c.len_utf8())?;
    let name = &head[split..];
    if name.is_empty() {
        return None;
    }
    let ty = format!("{}{}", head[..split].trim(), array);
    Some(FieldDesc { ty, name: name.to_string(), offset: offset?, size: size?, signed: signed.unwrap_or(false) })
}

/// Parse a tracepoint `format` file.
pub fn parse_format(text: &str) -> Result<TraceFormat, ParseError> {
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
            fields.push(parse_field(t).ok_or_else(|| ParseError::new("format", format!("bad field line {t:?}")))?);
        } else if let Some(v) = t.strip_prefix("print fmt:") {
            print_fmt = v.trim().to_string();
        }
    }
    let missing = |what: &str| ParseError::new("format", format!("format has no {what}"));
    Ok(TraceFormat {
        name: name.ok_or_else(|| missing("name"))?,
        id: id.ok_or_else(|| missing("ID"))?,
        fields,
        print_fmt,
    })
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
    mount_pseudo_fs("tracefs", &target)?;
    if target.join("events").is_dir() {
        log::info!("mounted tracefs at {}", target.display());
        Ok(target)
    } else {
        Err(io::Error::other(format!("mounted tracefs at {} but it has no events/", target.display())))
    }
}

/// Mount a kernel pseudo file system without a device (`tracefs`, `debugfs`) at `target`.
pub fn mount_pseudo_fs(fstype: &str, target: &Path) -> io::Result<()> {
    let c = |s: &[u8]| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let target_c = c(target.as_os_str().as_bytes())?;
    let (src, fstype_c) = (c(b"nodev")?, c(fstype.as_bytes())?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target_c.as_ptr(), fstype_c.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("mount {fstype} at {}: {e}", target.display())));
    }
    Ok(())
}

/// Read and parse `events/<category>/<name>/format`.
pub fn read_format(tracefs: &Path, category: &str, name: &str) -> io::Result<TraceFormat> {
    let p = tracefs.join("events").join(category).join(name).join("format");
    let text = crate::host::read_string_capped(&p, crate::host::MAX_FILE)?;
    parse_format(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIO: &str = include_str!("../../../../fixtures/tracepoints/kvm_kvm_pio.format");

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
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "format") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            let f = parse_format(&text).unwrap();
            assert_eq!(f.checked_field("common_type", 2).unwrap().offset, 0);
            n += 1;
        }
        assert!(n >= 10);
    }

    #[test]
    fn userspace_exit_reason_names() {
        let f = parse_format(include_str!("../../../../fixtures/tracepoints/kvm_kvm_userspace_exit.format")).unwrap();
        let t = print_symbolic_tables(&f.print_fmt, "reason");
        assert_eq!(t.len(), 1);
        let names: std::collections::HashMap<u64, &str> = t[0].iter().map(|(n, s)| (*n, s.as_str())).collect();
        assert_eq!(names[&2], "KVM_EXIT_IO");
        assert_eq!(names[&5], "KVM_EXIT_HLT");
        assert_eq!(names[&6], "KVM_EXIT_MMIO");
        assert_eq!(names[&30], "KVM_EXIT_X86_WRMSR");
        assert_eq!(names.len(), 31);
    }

    #[test]
    fn exit_reason_tables_for_vmx_and_svm() {
        let f = parse_format(include_str!("../../../../fixtures/tracepoints/kvm_kvm_exit.format")).unwrap();
        let t = print_symbolic_tables(&f.print_fmt, "exit_reason");
        assert_eq!(t.len(), 2, "VMX and SVM tables");
        assert!(t[0].contains(&(12, "HLT".to_string())), "{:?}", &t[0][..5]);
        assert!(t[0].contains(&(30, "IO_INSTRUCTION".to_string())));
        assert!(t[1].iter().any(|(_, n)| n == "hlt" || n == "HLT"), "{:?}", &t[1][..5]);
        // SVM_EXIT_ERR is -1: the u32 field holds 0xffffffff, which must decode by name.
        assert!(t[1].contains(&(0xffff_ffff, "invalid_guest_state".to_string())), "{:?}", &t[1]);
        let r = crate::sources::kernel::ebpf::ExitReasons::from_print_fmt(&f.print_fmt, pve_exporter_common::ISA_SVM);
        assert_eq!(r.label(pve_exporter_common::ISA_SVM, u32::MAX), "invalid_guest_state");
        // Beyond 32 bits is no code of these fields.
        assert!(
            print_symbolic_tables(r#"__print_symbolic(REC->reason, { -4294967297, "X" })"#, "reason")[0].is_empty()
        );
    }

    /// kvm_exit as each kernel PVE ships renders it (fixtures/tracepoints/README.md says where
    /// each comes from), with the 6.18 capture as the newest.
    struct KvmExitLayout {
        fixture: &'static str,
        text: &'static str,
        /// Entries of the VMX and the SVM table as parsed, the SVM count with the kernel's 17
        /// `{ 0x040 + N, "XX excp" }` exception intercepts (their number is a sum).
        vmx_len: usize,
        svm_len: usize,
        /// Offset of the `u64 requests` field (6.14 and newer).
        requests: Option<u32>,
        /// Present in this kernel's tables.
        vmx_has: &'static [(u64, &'static str)],
        svm_has: &'static [(u64, &'static str)],
        /// Codes this kernel's tables do not name yet (a newer kernel's does).
        vmx_lacks: &'static [u64],
        svm_lacks: &'static [u64],
    }

    const KVM_EXIT_LAYOUTS: &[KvmExitLayout] = &[
        KvmExitLayout {
            fixture: "v5.15",
            text: include_str!("../../../../fixtures/tracepoints/kvm_kvm_exit.v5.15-reconstructed.format"),
            vmx_len: 61,
            svm_len: 103,
            requests: None,
            vmx_has: &[(74, "BUS_LOCK"), (68, "TPAUSE")],
            svm_has: &[(0x8000_0005, "vmgexit_ap_jump_table")],
            vmx_lacks: &[75, 77, 84, 85],
            svm_lacks: &[0x8000_0010, 0x8000_0013, 0x8000_fffd, 0xa5, 0xa6],
        },
        KvmExitLayout {
            fixture: "v6.2",
            text: include_str!("../../../../fixtures/tracepoints/kvm_kvm_exit.v6.2-reconstructed.format"),
            vmx_len: 62,
            svm_len: 108,
            requests: None,
            vmx_has: &[(75, "NOTIFY")],
            svm_has: &[(0x8000_0010, "vmgexit_page_state_change"), (0x8000_fffd, "vmgexit_hypervisor_feature")],
            vmx_lacks: &[77, 84, 85],
            svm_lacks: &[0xa5, 0xa6],
        },
        KvmExitLayout {
            fixture: "v6.5",
            text: include_str!("../../../../fixtures/tracepoints/kvm_kvm_exit.v6.5-reconstructed.format"),
            vmx_len: 62,
            svm_len: 108,
            requests: None,
            vmx_has: &[(75, "NOTIFY")],
            svm_has: &[(0x8000_0011, "vmgexit_guest_request"), (0x8000_0013, "vmgexit_ap_creation")],
            vmx_lacks: &[77, 84, 85],
            svm_lacks: &[0xa5, 0xa6],
        },
        KvmExitLayout {
            fixture: "v6.8",
            text: include_str!("../../../../fixtures/tracepoints/kvm_kvm_exit.v6.8-reconstructed.format"),
            vmx_len: 62,
            svm_len: 108,
            requests: None,
            vmx_has: &[(75, "NOTIFY")],
            svm_has: &[(0x8000_0012, "vmgexit_ext_guest_request")],
            vmx_lacks: &[77, 84, 85],
            svm_lacks: &[0xa5, 0xa6],
        },
        KvmExitLayout {
            fixture: "v6.14",
            text: include_str!("../../../../fixtures/tracepoints/kvm_kvm_exit.v6.14-reconstructed.format"),
            vmx_len: 62,
            svm_len: 108,
            requests: Some(64),
            vmx_has: &[(75, "NOTIFY")],
            svm_has: &[(0x8000_fffd, "vmgexit_hypervisor_feature")],
            vmx_lacks: &[77, 84, 85],
            svm_lacks: &[0xa5, 0xa6],
        },
        KvmExitLayout {
            fixture: "6.18 capture",
            text: include_str!("../../../../fixtures/tracepoints/kvm_kvm_exit.format"),
            vmx_len: 65,
            svm_len: 110,
            requests: Some(64),
            vmx_has: &[(77, "TDCALL"), (84, "MSR_READ_IMM"), (85, "MSR_WRITE_IMM")],
            svm_has: &[(0xa5, "buslock"), (0xa6, "idle-halt")],
            vmx_lacks: &[],
            svm_lacks: &[],
        },
    ];

    #[test]
    fn kvm_exit_layout_of_every_shipped_kernel() {
        use crate::sources::kernel::ebpf::{ExitReasons, PROGRAMS, resolve_offsets};
        use pve_exporter_common::{ISA_SVM, ISA_VMX, globals};
        let kvm_exit = PROGRAMS.iter().find(|p| p.event == "kvm_exit").unwrap();
        for l in KVM_EXIT_LAYOUTS {
            let f = parse_format(l.text).unwrap_or_else(|e| panic!("{}: {e}", l.fixture));
            assert_eq!(f.name, "kvm_exit", "{}", l.fixture);
            // The record: what the BPF program reads is where it always was.
            let reason = f.checked_field("exit_reason", 4).unwrap();
            assert_eq!((reason.offset, reason.ty.as_str(), reason.signed), (8, "unsigned int", false), "{}", l.fixture);
            let isa = f.checked_field("isa", 4).unwrap();
            assert_eq!((isa.offset, isa.ty.as_str()), (24, "u32"), "{}", l.fixture);
            assert_eq!(f.checked_field("guest_rip", 8).unwrap().offset, 16, "{}", l.fixture);
            assert_eq!(f.checked_field("vcpu_id", 4).unwrap().offset, 56, "{}", l.fixture);
            assert_eq!(f.field("requests").map(|r| (r.offset, r.size)), l.requests.map(|o| (o, 8)), "{}", l.fixture);
            assert_eq!(
                resolve_offsets(kvm_exit, &f).unwrap(),
                [(globals::EXIT_REASON, 8), (globals::EXIT_ISA, 24)],
                "{}",
                l.fixture
            );
            // The print fmt picks the table by isa: 1 is VMX (on the low 16 bits), else SVM.
            assert!(f.print_fmt.contains("(REC->isa == 1) ? __print_symbolic(REC->exit_reason & 0xffff, {"));
            assert!(f.print_fmt.contains(") : __print_symbolic(REC->exit_reason, {"));
            let t = print_symbolic_tables(&f.print_fmt, "exit_reason");
            assert_eq!(t.len(), 2, "{}: VMX and SVM tables, the flags table is not one", l.fixture);
            let (vmx, svm) = (&t[0], &t[1]);
            assert_eq!((vmx.len(), svm.len()), (l.vmx_len, l.svm_len), "{}", l.fixture);
            let has = |table: &[(u64, String)], n: u64, name: &str| table.iter().any(|(c, s)| *c == n && s == name);
            for (n, name) in [(0, "EXCEPTION_NMI"), (12, "HLT"), (30, "IO_INSTRUCTION"), (48, "EPT_VIOLATION")]
                .iter()
                .chain(l.vmx_has)
            {
                assert!(has(vmx, *n, name), "{}: VMX {n} {name}", l.fixture);
            }
            for (n, name) in [(0x78, "hlt"), (0x7b, "io"), (0x400, "npf"), (0x403, "vmgexit")].iter().chain(l.svm_has) {
                assert!(has(svm, *n, name), "{}: SVM {n:#x} {name}", l.fixture);
            }
            for n in l.vmx_lacks {
                assert!(!vmx.iter().any(|(c, _)| c == n), "{}: VMX {n} should be unnamed", l.fixture);
            }
            for n in l.svm_lacks {
                assert!(!svm.iter().any(|(c, _)| c == n), "{}: SVM {n:#x} should be unnamed", l.fixture);
            }
            // The BPF program keeps only the low 16 bits of a VMX reason: every VMX code fits.
            assert!(vmx.iter().all(|(c, _)| *c <= 0xffff), "{}", l.fixture);
            // SVM_EXIT_ERR is `-1`: last in the table, decoded as the u32 field holds it.
            assert!(f.print_fmt.contains(r#"{ -1, "invalid_guest_state" })"#), "{}", l.fixture);
            assert_eq!(svm.last(), Some(&(0xffff_ffff, "invalid_guest_state".to_string())), "{}", l.fixture);
            assert!(svm.iter().all(|(c, _)| *c <= u64::from(u32::MAX)), "{}", l.fixture);
            // VM-entry failure is a flag above the 16 bits, printed by its own table.
            let flags = r#"__print_flags(REC->exit_reason & ~0xffff, " ", { 0x80000000, "FAILED_VMENTRY" })"#;
            assert!(f.print_fmt.contains(flags), "{}", l.fixture);
            let as_symbolic = f.print_fmt.replace("__print_flags(", "__print_symbolic(");
            let with_flags = print_symbolic_tables(&as_symbolic, "exit_reason");
            assert_eq!(with_flags.len(), 3, "{}", l.fixture);
            assert_eq!(with_flags[2], [(0x8000_0000, "FAILED_VMENTRY".to_string())], "{}", l.fixture);
            // What the daemon labels with.
            let r = ExitReasons::from_print_fmt(&f.print_fmt, ISA_SVM);
            assert_eq!((r.vmx.len(), r.svm.len()), (l.vmx_len, l.svm_len), "{}", l.fixture);
            assert_eq!(r.label(ISA_VMX, 30), "io_instruction");
            assert_eq!(r.label(ISA_SVM, 0x7b), "io");
            assert_eq!(r.label(ISA_SVM, u32::MAX), "invalid_guest_state");
            assert_eq!(r.label(ISA_VMX, u32::MAX), u32::MAX.to_string());
            let notify = if l.vmx_lacks.contains(&75) { "75" } else { "notify" };
            assert_eq!(r.label(ISA_VMX, 75), notify, "{}", l.fixture);
            // The exception intercepts are in every kernel's table as `0x040 + <vector>`: named
            // by their sum (a page fault intercept is exit code 0x4e).
            assert!(f.print_fmt.contains(r#"{ 0x040 + 14, "PF excp" }"#), "{}", l.fixture);
            assert_eq!(r.label(ISA_SVM, 0x4e), "pf excp", "{}", l.fixture);
        }
    }

    #[test]
    fn kvm_exit_6_2_to_6_8_render_alike() {
        // Same trace.h, vmx.h and svm.h in all three trees: the files differ in the ID only.
        let body = |s: &str| s.lines().filter(|l| !l.starts_with("ID:")).collect::<Vec<_>>().join("\n");
        let v = |i: usize| body(KVM_EXIT_LAYOUTS[i].text);
        assert_eq!(v(1), v(2));
        assert_eq!(v(2), v(3));
        assert_ne!(v(0), v(1));
        assert_ne!(v(3), v(4));
    }

    /// Found by the `tracefs_format` fuzz target: a multi-byte character before a field's
    /// name sliced a string off a character boundary (a panic).
    #[test]
    fn a_field_name_after_a_multibyte_character() {
        let f = parse_field("field:unsigned inté exit_reason;\toffset:8;\tsize:4;\tsigned:0;").unwrap();
        assert_eq!((f.name.as_str(), f.ty.as_str()), ("exit_reason", "unsigned inté"));
        let f = parse_field("field:intéx;\toffset:8;\tsize:4;\tsigned:0;").unwrap();
        assert_eq!((f.name.as_str(), f.ty.as_str()), ("x", "inté"));
        assert!(parse_field("field:é;\toffset:8;\tsize:4;").is_none());
        let crash = include_bytes!("../../../../fixtures/fuzz/tracefs_format-crash-12d79a84");
        let _ = parse_format(&String::from_utf8_lossy(crash));
    }

    #[test]
    fn print_symbolic_edge_cases() {
        assert!(print_symbolic_tables("", "reason").is_empty());
        assert!(print_symbolic_tables("\"%d\", REC->reasons", "reason").is_empty());
        // Unterminated, junk numbers, escaped quotes: no panic, what parses is kept.
        let t = print_symbolic_tables(
            r#"__print_symbolic(REC->reason, { 1, "A\"B" }, { x, "C" }, { 0x10, "D" "E" }"#,
            "reason",
        );
        assert_eq!(t, vec![vec![(1, "A\"B".to_string()), (16, "DE".to_string())]]);
        let t = print_symbolic_tables(
            "__print_symbolic(REC->reasons, { 1, \"A\" }), __print_symbolic(REC->reason, { 2, \"B\" })",
            "reason",
        );
        assert_eq!(t, vec![vec![(2, "B".to_string())]]);
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
