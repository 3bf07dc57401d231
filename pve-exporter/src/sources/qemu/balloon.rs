//! Guest memory as the guest sees it, from the virtio balloon device: its size (`query-balloon`,
//! HMP `info balloon`) and the statistics the guest's balloon driver reports (the device's
//! `guest-stats` property, `qom-get` over QMP or HMP).
//!
//! Formats, from QEMU's QAPI schema and `hw/virtio/virtio-balloon.c` (and PVE's patch
//! `PVE-virtio-balloon-improve-query-balloon`, which adds the statistics to `query-balloon`):
//! - `query-balloon`: `{"actual": <bytes>}`; PVE's QEMU adds `max_mem` and, once the guest has
//!   reported, `last_update`, `total_mem`, `free_mem`, `mem_swapped_in`, `mem_swapped_out`,
//!   `major_page_faults`, `minor_page_faults`. No balloon device: the error class
//!   `DeviceNotActive`.
//! - `info balloon`: `balloon: actual=<MiB>`; PVE's adds ` max_mem=<MiB>`, ` total_mem=<MiB>`,
//!   ` free_mem=<MiB>`, ` mem_swapped_in=<n>`, ..., ` last_update=<n>`.
//! - `guest-stats`: `{"stats": {"stat-total-memory": <bytes>, "stat-free-memory": ...,
//!   "stat-available-memory", "stat-disk-caches", "stat-swap-in", "stat-swap-out" (bytes),
//!   "stat-major-faults", "stat-minor-faults", ...}, "last-update": <unix seconds>}`. A value
//!   the guest does not report is -1, printed as 18446744073709551615; before the first report
//!   (no driver in the guest, or polling off: PVE turns it on when it starts a VM)
//!   `last-update` is 0. Neither is a value: they give no series, not zeros.

use serde::Deserialize;

use crate::sources::error::ParseError;

/// QOM path of the balloon device PVE creates (`-device virtio-balloon-pci,id=balloon0`).
pub const BALLOON_QOM_PATH: &str = "/machine/peripheral/balloon0";

/// The balloon of one VM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Balloon {
    /// The guest's memory with the balloon taken out (`actual`), bytes.
    pub actual: Option<u64>,
    /// What the guest last reported; None before any report.
    pub stats: Option<GuestMemoryStats>,
}

/// The balloon driver's report. Each value is None when the guest does not report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestMemoryStats {
    /// When the guest reported (unix seconds).
    pub last_update: u64,
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    pub disk_caches_bytes: Option<u64>,
    pub swap_in_bytes: Option<u64>,
    pub swap_out_bytes: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
}

impl GuestMemoryStats {
    /// Memory the guest uses as PVE counts it (qemu-server's vmstatus): total less free.
    pub fn used_bytes(&self) -> Option<u64> {
        Some(self.total_bytes?.saturating_sub(self.free_bytes?))
    }
}

/// -1 (as QEMU prints it unsigned, or signed) is "not reported".
fn reported(v: Option<i128>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok()).filter(|v| *v != u64::MAX)
}

/// `query-balloon`'s `return` (JSON text).
pub fn parse_query_balloon(ret: &str) -> Result<Balloon, ParseError> {
    #[derive(Deserialize)]
    struct Info {
        actual: Option<i128>,
        last_update: Option<i128>,
        total_mem: Option<i128>,
        free_mem: Option<i128>,
        mem_swapped_in: Option<i128>,
        mem_swapped_out: Option<i128>,
        major_page_faults: Option<i128>,
        minor_page_faults: Option<i128>,
    }
    let i: Info = serde_json::from_str(ret).map_err(|e| ParseError::new("query-balloon", e))?;
    let actual = reported(i.actual);
    if actual.is_none() {
        return Err(ParseError::new("query-balloon", "no actual size"));
    }
    let stats = reported(i.last_update).filter(|t| *t > 0).map(|last_update| GuestMemoryStats {
        last_update,
        total_bytes: reported(i.total_mem),
        free_bytes: reported(i.free_mem),
        swap_in_bytes: reported(i.mem_swapped_in),
        swap_out_bytes: reported(i.mem_swapped_out),
        major_faults: reported(i.major_page_faults),
        minor_faults: reported(i.minor_page_faults),
        ..GuestMemoryStats::default()
    });
    Ok(Balloon { actual, stats })
}

/// The `guest-stats` property (`qom-get`'s `return`, JSON text; HMP `qom-get` prints the same
/// JSON, pretty). None: the guest has not reported.
pub fn parse_guest_stats(ret: &str) -> Result<Option<GuestMemoryStats>, ParseError> {
    #[derive(Deserialize)]
    struct Reply {
        stats: Stats,
        #[serde(rename = "last-update")]
        last_update: Option<i128>,
    }
    #[derive(Deserialize)]
    struct Stats {
        #[serde(rename = "stat-total-memory")]
        total: Option<i128>,
        #[serde(rename = "stat-free-memory")]
        free: Option<i128>,
        #[serde(rename = "stat-available-memory")]
        available: Option<i128>,
        #[serde(rename = "stat-disk-caches")]
        caches: Option<i128>,
        #[serde(rename = "stat-swap-in")]
        swap_in: Option<i128>,
        #[serde(rename = "stat-swap-out")]
        swap_out: Option<i128>,
        #[serde(rename = "stat-major-faults")]
        major: Option<i128>,
        #[serde(rename = "stat-minor-faults")]
        minor: Option<i128>,
    }
    let r: Reply = serde_json::from_str(ret).map_err(|e| ParseError::new("guest-stats", e))?;
    let Some(last_update) = reported(r.last_update).filter(|t| *t > 0) else { return Ok(None) };
    let s = r.stats;
    Ok(Some(GuestMemoryStats {
        last_update,
        total_bytes: reported(s.total),
        free_bytes: reported(s.free),
        available_bytes: reported(s.available),
        disk_caches_bytes: reported(s.caches),
        swap_in_bytes: reported(s.swap_in),
        swap_out_bytes: reported(s.swap_out),
        major_faults: reported(s.major),
        minor_faults: reported(s.minor),
    }))
}

/// HMP `info balloon`. None: no `balloon:` line (no balloon device: QEMU prints an error).
pub fn parse_info_balloon(text: &str) -> Option<Balloon> {
    let rest = text.lines().find_map(|l| l.trim().strip_prefix("balloon:"))?;
    let mut b = Balloon::default();
    let mut st = GuestMemoryStats::default();
    let mib = |v: u64| v.checked_mul(1 << 20);
    for word in rest.split_whitespace() {
        let Some((k, v)) = word.split_once('=') else { continue };
        let Ok(v) = v.parse::<i128>() else { continue };
        let v = reported(Some(v));
        match k {
            "actual" => b.actual = v.and_then(mib),
            "total_mem" => st.total_bytes = v.and_then(mib),
            "free_mem" => st.free_bytes = v.and_then(mib),
            "mem_swapped_in" => st.swap_in_bytes = v,
            "mem_swapped_out" => st.swap_out_bytes = v,
            "major_page_faults" => st.major_faults = v,
            "minor_page_faults" => st.minor_faults = v,
            "last_update" => st.last_update = v.unwrap_or(0),
            _ => {}
        }
    }
    b.actual?;
    if st.last_update > 0 {
        b.stats = Some(st);
    }
    Some(b)
}

/// The guest's statistics: the device's own report (`guest-stats`: it has the available memory
/// and the caches) where there is one, else what PVE's `query-balloon` carries.
pub fn merge(mut balloon: Balloon, guest_stats: Option<GuestMemoryStats>) -> Balloon {
    if guest_stats.is_some() {
        balloon.stats = guest_stats;
    }
    balloon
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's QEMU 7.2, `-device virtio-balloon-pci,id=balloon0`, no guest driver (recorded).
    const NO_DRIVER: &str = r#"{"stats": {"stat-htlb-pgalloc": 18446744073709551615, "stat-swap-out": 18446744073709551615, "stat-available-memory": 18446744073709551615, "stat-htlb-pgfail": 18446744073709551615, "stat-free-memory": 18446744073709551615, "stat-minor-faults": 18446744073709551615, "stat-major-faults": 18446744073709551615, "stat-total-memory": 18446744073709551615, "stat-swap-in": 18446744073709551615, "stat-disk-caches": 18446744073709551615}, "last-update": 0}"#;

    /// A Linux guest's report (the layout of QEMU's docs/interop/virtio-balloon-stats.rst; a
    /// kernel without `stat-htlb-*` leaves them -1).
    const LINUX: &str = r#"{"stats": {"stat-swap-out": 0, "stat-available-memory": 3410698240, "stat-free-memory": 3036262400, "stat-minor-faults": 2817261, "stat-major-faults": 1032, "stat-total-memory": 4109729792, "stat-swap-in": 4096, "stat-disk-caches": 542392320, "stat-htlb-pgalloc": 18446744073709551615, "stat-htlb-pgfail": 18446744073709551615}, "last-update": 1764547200}"#;

    #[test]
    fn guest_stats_without_and_with_a_driver() {
        assert_eq!(parse_guest_stats(NO_DRIVER).unwrap(), None);
        let s = parse_guest_stats(LINUX).unwrap().unwrap();
        assert_eq!(s.last_update, 1_764_547_200);
        assert_eq!((s.total_bytes, s.free_bytes), (Some(4_109_729_792), Some(3_036_262_400)));
        assert_eq!((s.available_bytes, s.disk_caches_bytes), (Some(3_410_698_240), Some(542_392_320)));
        assert_eq!((s.swap_in_bytes, s.swap_out_bytes), (Some(4096), Some(0)));
        assert_eq!((s.major_faults, s.minor_faults), (Some(1032), Some(2_817_261)));
        assert_eq!(s.used_bytes(), Some(4_109_729_792 - 3_036_262_400));
        // A guest that reports only some values: the others are absent, not zero.
        let partial = LINUX.replace("\"stat-disk-caches\": 542392320", "\"stat-disk-caches\": -1");
        assert_eq!(parse_guest_stats(&partial).unwrap().unwrap().disk_caches_bytes, None);
        assert!(parse_guest_stats("{\"stats\": 1}").is_err());
        assert!(parse_guest_stats("[]").is_err());
    }

    #[test]
    fn query_balloon_upstream_and_pve() {
        // Debian's QEMU (recorded).
        let b = parse_query_balloon(r#"{"actual": 536870912}"#).unwrap();
        assert_eq!(b, Balloon { actual: Some(536_870_912), stats: None });
        // PVE's QEMU before the guest reported, and after.
        let b = parse_query_balloon(r#"{"actual": 2147483648, "max_mem": 4294967296}"#).unwrap();
        assert_eq!(b.stats, None);
        let b = parse_query_balloon(
            r#"{"actual": 4294967296, "max_mem": 4294967296, "last_update": 1764547200, "total_mem": 4109729792, "free_mem": 3036262400, "mem_swapped_in": 0, "mem_swapped_out": 0, "major_page_faults": 1032, "minor_page_faults": 2817261}"#,
        )
        .unwrap();
        let s = b.stats.unwrap();
        assert_eq!((s.total_bytes, s.free_bytes, s.available_bytes), (Some(4_109_729_792), Some(3_036_262_400), None));
        assert!(parse_query_balloon("{}").is_err());
        assert!(parse_query_balloon(r#"{"actual": -1}"#).is_err());
    }

    #[test]
    fn info_balloon_upstream_and_pve() {
        assert_eq!(parse_info_balloon("balloon: actual=512\r\n").unwrap().actual, Some(512 << 20));
        let b = parse_info_balloon(
            "balloon: actual=4096 max_mem=4096 total_mem=3919 free_mem=2895 mem_swapped_in=0 mem_swapped_out=0 major_page_faults=1032 minor_page_faults=2817261 last_update=1764547200\r\n",
        )
        .unwrap();
        let s = b.stats.unwrap();
        assert_eq!((s.total_bytes, s.free_bytes), (Some(3919 << 20), Some(2895 << 20)));
        assert_eq!((s.major_faults, s.last_update), (Some(1032), 1_764_547_200));
        assert_eq!(parse_info_balloon("Error: No balloon device has been activated\r\n"), None);
        assert_eq!(parse_info_balloon("balloon: actual=x\n"), None);
    }

    #[test]
    fn the_device_report_wins() {
        let pve =
            parse_query_balloon(r#"{"actual": 1, "max_mem": 1, "last_update": 5, "total_mem": 10, "free_mem": 4}"#)
                .unwrap();
        let merged = merge(pve.clone(), parse_guest_stats(LINUX).unwrap());
        assert_eq!(merged.stats.unwrap().available_bytes, Some(3_410_698_240));
        assert_eq!(merge(pve.clone(), None), pve);
    }

    #[test]
    fn no_panic_on_random_input() {
        const ALPHABET: &[u8] = b"{}[]\":,-0123456789 =\nbalon:actu_memfrst-lpdgi";
        for t in crate::sources::testing::random_texts(ALPHABET, 0x853c_49e6_748f_ea9b, 3000, 120) {
            let _ = (parse_query_balloon(&t), parse_guest_stats(&t), parse_info_balloon(&t));
        }
    }
}
