//! Credentials out of labels. A drive's path is exported as the `disk_path` label (and parts of
//! it as `vol_name`, `pool`, ...), and QEMU accepts secrets inside it: CHAP credentials in an
//! iSCSI URL (`iscsi://user%password@portal/iqn/lun`), user and password in curl and ssh URLs,
//! a cephx key or keyring in librbd's legacy filename (`rbd:pool/image:id=admin:key=AQD...==`,
//! as libvirt and CloudStack write it; PVE writes `:keyring=/etc/pve/priv/ceph/<storage>.keyring`),
//! and `password-secret`/`key-secret`/`cookie` options in `json:{...}` descriptions. Anyone who
//! can read /metrics (or the TSDB) must not learn them, so every drive path goes through
//! [`drive_path`] before it becomes a label.

use std::borrow::Cow;

/// What a secret is replaced by.
pub const REDACTED: &str = "<redacted>";

/// Words that make an option name secret, whatever else the name holds (`password`,
/// `password-secret`, `file.key-secret`, `keyring`, `rbd_key`...).
const SECRET_WORDS: &[&str] =
    &["password", "passwd", "pass", "pwd", "passphrase", "secret", "key", "keyring", "token", "cookie", "psk"];

/// Whether an option name names a secret: one of its words (split at `-`, `_`, `.`) is in
/// [`SECRET_WORDS`].
pub fn is_secret_name(name: &str) -> bool {
    name.split(['-', '_', '.']).any(|w| SECRET_WORDS.iter().any(|s| w.eq_ignore_ascii_case(s)))
}

/// The path of a drive with every credential replaced by [`REDACTED`]. Local paths (starting
/// with `/`) are returned as they are: QEMU's file and host_device drivers take no options in
/// the path, and a directory named `key=x` is not a secret.
pub fn drive_path(path: &str) -> Cow<'_, str> {
    if path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    if let Some(json) = path.strip_prefix("json:") {
        return Cow::Owned(format!("json:{}", redact_json(json)));
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    // A URL: `scheme://[userinfo@]host[:port]/path[?query][#fragment]`.
    if let Some(i) = path.find("://")
        && path[..i].bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        let (scheme, after) = path.split_at(i + 3);
        out.push_str(scheme);
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rfind('@') {
            // The user name goes too: with iSCSI's `user%password` the two are one field.
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        let (before_query, query) = match tail.find('?') {
            Some(q) => tail.split_at(q),
            None => (tail, ""),
        };
        out.push_str(before_query);
        // `?socket=...&password=...#frag`: options separated by `&` or `;`.
        redact_options(query, &['&', ';', '#'], &mut out);
        rest = "";
    }
    if !rest.is_empty() {
        // librbd's legacy form separates options by unescaped `:`; other protocol strings
        // (`nbd:host:port:exportname=x`, `gluster:...`) by `:` too; QEMU option lists by `,`.
        redact_options(rest, &[':', ','], &mut out);
    }
    if out == path { Cow::Borrowed(path) } else { Cow::Owned(out) }
}

/// Copy `text` to `out`, replacing the value of every `name=value` whose name is secret. A
/// value ends at the next of `seps` not escaped by a backslash (librbd escapes `:` and `;` in
/// values: `mon_host=10.0.0.1\:6789`).
fn redact_options(text: &str, seps: &[char], out: &mut String) {
    let mut token_start = true;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if token_start {
            token_start = false;
            if let Some(eq) = option_name_end(&text[i..])
                && is_secret_name(&text[i..i + eq])
            {
                out.push_str(&text[i..=i + eq]);
                out.push_str(REDACTED);
                // Skip the rest of the name (already copied) and the value, up to (not
                // including) the next unescaped separator.
                let mut escaped = false;
                while let Some(&(_, v)) = chars.peek() {
                    if !escaped && seps.contains(&v) {
                        break;
                    }
                    escaped = !escaped && v == '\\';
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
        if c == '\\' {
            // An escaped character is part of the current token.
            if let Some((_, n)) = chars.next() {
                out.push(n);
            }
            continue;
        }
        if seps.contains(&c) || c == '?' {
            token_start = true;
        }
    }
}

/// The byte index of the `=` ending an option name at the start of `s` (`[A-Za-z0-9_.-]+=`).
fn option_name_end(s: &str) -> Option<usize> {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))?;
    (end > 0 && s[end..].starts_with('=')).then_some(end)
}

/// A `json:{...}` description with the values of secret keys replaced, and every other string
/// redacted as a path (a `url` with user info, a legacy rbd filename). JSON that does not parse
/// is dropped whole: it cannot be checked.
fn redact_json(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut v) => {
            redact_value(&mut v, 0);
            v.to_string()
        }
        Err(_) => REDACTED.to_string(),
    }
}

fn redact_value(v: &mut serde_json::Value, depth: usize) {
    use serde_json::Value;
    if depth > 32 {
        *v = Value::String(REDACTED.into());
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                // `file.password-secret` in the flat form, `password-secret` in the nested one.
                if is_secret_name(k) {
                    *val = Value::String(REDACTED.into());
                } else {
                    redact_value(val, depth + 1);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact_value(x, depth + 1)),
        Value::String(s) => {
            if let Cow::Owned(r) = drive_path(s) {
                *s = r;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(path: &str, want: &str) {
        assert_eq!(drive_path(path), want, "{path}");
        // Redacting twice changes nothing more.
        assert_eq!(drive_path(want), want, "{want}");
    }

    #[test]
    fn local_paths_stay() {
        for p in [
            "/var/lib/vz/images/100/vm-100-disk-0.qcow2",
            "/dev/zvol/rpool/data/vm-100-disk-0",
            "/dev/rbd-pve/9b0c7e4a/ceph/vm-100-disk-0",
            "/mnt/pve/nfs/images/100/key=value.raw",
            "",
        ] {
            assert!(matches!(drive_path(p), Cow::Borrowed(_)), "{p}");
        }
        assert!(matches!(drive_path("rbd:rbd/vm-100-disk-0"), Cow::Borrowed(_)));
        assert!(matches!(drive_path("nbd://10.0.0.5:10809/export"), Cow::Borrowed(_)));
    }

    /// librbd's legacy filename as libvirt writes it (cephx key inline, `\:` and `\;` escapes),
    /// as CloudStack writes it, and as PVE's RBDPlugin writes it (a keyring path).
    #[test]
    fn rbd_keys_and_keyrings() {
        check(
            r"rbd:vms/centos7-20689:id=libvirt:key=AQDDoQdfftbKMhAAIp8Dsi63C5soe+ysHGCqff==:auth_supported=cephx\;none:mon_host=172.16.200.117\:6789",
            r"rbd:vms/centos7-20689:id=libvirt:key=<redacted>:auth_supported=cephx\;none:mon_host=172.16.200.117\:6789",
        );
        check(
            "rbd:cloudstack/3b9b4a6c:mon_host=10.1.1.10:auth_supported=cephx:id=cloudstack:key=AQBz4lRbAAAAABAA2w+fkMn0/eJ4Q==:rbd_default_format=2:client_mount_timeout=30",
            "rbd:cloudstack/3b9b4a6c:mon_host=10.1.1.10:auth_supported=cephx:id=cloudstack:key=<redacted>:rbd_default_format=2:client_mount_timeout=30",
        );
        check(
            "rbd:ceph-vm/vm-100-disk-0:mon_host=10.0.0.1;10.0.0.2;10.0.0.3:auth_supported=cephx:id=admin:keyring=/etc/pve/priv/ceph/ceph-ext.keyring",
            "rbd:ceph-vm/vm-100-disk-0:mon_host=10.0.0.1;10.0.0.2;10.0.0.3:auth_supported=cephx:id=admin:keyring=<redacted>",
        );
        // A key with an escaped separator inside stays redacted as a whole.
        check(r"rbd:p/i:key=AB\:CD:id=x", "rbd:p/i:key=<redacted>:id=x");
        // The storage labels come from the part before the options, which stays.
        let k =
            crate::sources::qemu::hmp::classify(&drive_path("rbd:ceph-vm/vm-100-disk-0:id=admin:key=SECRET"), "raw");
        assert_eq!((k.pool.as_str(), k.vol_name.as_str()), ("ceph-vm", "vm-100-disk-0"));
    }

    /// libiscsi's `iscsi://[<username>[%<password>]@]<host>[:<port>]/<target-iqn>/<lun>`, and
    /// user info in curl and ssh URLs.
    #[test]
    fn url_user_info() {
        check("iscsi://ronnie%password@server/iqn.ronnie.test/1", "iscsi://<redacted>@server/iqn.ronnie.test/1");
        check(
            "iscsi://admin%s3cr%40t@192.168.1.10:3260/iqn.2003-01.org.linux-iscsi.pve:sn.1/0",
            "iscsi://<redacted>@192.168.1.10:3260/iqn.2003-01.org.linux-iscsi.pve:sn.1/0",
        );
        check(
            "iscsi://192.168.1.10/iqn.2003-01.org.linux-iscsi.pve:sn.1/0",
            "iscsi://192.168.1.10/iqn.2003-01.org.linux-iscsi.pve:sn.1/0",
        );
        check("https://alice:hunter2@images.example.com/disk.img", "https://<redacted>@images.example.com/disk.img");
        // ssh's host_key_check holds a public fingerprint: redacted too (a word of it is `key`),
        // which costs nothing; letting one real secret through would.
        check(
            "ssh://root@10.0.0.7/srv/disk.qcow2?host_key_check=md5:aa:bb",
            "ssh://<redacted>@10.0.0.7/srv/disk.qcow2?host_key_check=<redacted>",
        );
        // An `@` in the path is not user info.
        check("https://h.example/a@b/disk.img", "https://h.example/a@b/disk.img");
        check(
            "https://h.example/disk.img?token=abc:def&x=1;password=p#frag",
            "https://h.example/disk.img?token=<redacted>&x=1;password=<redacted>#frag",
        );
    }

    /// Options after the protocol string and the `json:` form of `info block` (curl's
    /// `password-secret`, LUKS `key-secret`, the flat `file.` form).
    #[test]
    fn options_and_json() {
        check("gluster://10.0.0.1/vol/img.qcow2", "gluster://10.0.0.1/vol/img.qcow2");
        check("nbd:10.0.0.5:10809:exportname=disk", "nbd:10.0.0.5:10809:exportname=disk");
        check("somedriver:x,password=pw,cache=none", "somedriver:x,password=<redacted>,cache=none");
        // Compared as JSON: the key order of the re-serialised description is serde_json's.
        let json = |path: &str| -> serde_json::Value {
            serde_json::from_str(drive_path(path).strip_prefix("json:").expect("json: kept")).expect("valid JSON")
        };
        assert_eq!(
            json(
                r#"json:{"driver":"qcow2","encrypt.key-secret":"sec0","file":{"driver":"https","url":"https://u:p@h.example/d.qcow2","password-secret":"pw0","cookie":"session=abc"}}"#
            ),
            serde_json::json!({"driver":"qcow2","encrypt.key-secret":"<redacted>","file":{"driver":"https","url":"https://<redacted>@h.example/d.qcow2","password-secret":"<redacted>","cookie":"<redacted>"}})
        );
        assert_eq!(
            json(
                r#"json:{"driver":"raw","file":{"driver":"rbd","pool":"p","image":"i","key-secret":"s","user":"admin"}}"#
            ),
            serde_json::json!({"driver":"raw","file":{"driver":"rbd","pool":"p","image":"i","key-secret":"<redacted>","user":"admin"}})
        );
        assert_eq!(drive_path("json:{not json"), "json:<redacted>");
    }

    #[test]
    fn secret_names() {
        for n in [
            "password",
            "password-secret",
            "file.password-secret",
            "key",
            "keyring",
            "key-secret",
            "rbd_key",
            "PASS",
            "token",
            "cookie-secret",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in ["id", "mon_host", "auth_supported", "conf", "exportname", "monkey", "keys", "user"] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    /// Arbitrary input: no panic, and a secret option never survives.
    #[test]
    fn no_panics_on_odd_input() {
        for p in [
            "\\",
            "rbd:\\",
            "a://",
            "a://@",
            "x:key=",
            "x:=y",
            "é:key=ü:z",
            "://@/?&;#",
            "json:",
            "json:[1,{\"key\":2}]",
        ] {
            let r = drive_path(p);
            assert!(!r.contains("key=ü"), "{p} -> {r}");
        }
    }
}
