//! LVM: volume group space (`vgs`) for `lvm` storages and thin pool usage (`lvs`) for
//! `lvmthin` storages, from LVM's JSON reports with sizes in bytes (`--units b --nosuffix`).
//!
//! A report looks like `{"report": [{"vg": [{"vg_name": "pve", "vg_size": "1000", ...}]}]}`;
//! values are strings (numbers too), and `data_percent` of a thin pool that is not active
//! is empty.

use std::{collections::HashMap, time::Duration};

use serde_json::Value;

use crate::sources::{
    error::ParseError,
    storage::command::{self, Report, Slot, Tools},
};

/// A volume group's size and free space, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VgSpace {
    pub size: u64,
    pub free: u64,
}

/// A logical volume as far as sizing a thin pool goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LvSpace {
    pub size: u64,
    /// Percentage of the (thin pool's) data space in use; None when LVM leaves it empty (an
    /// inactive pool) or the volume has none.
    pub data_percent: Option<f64>,
    /// `lv_attr` starts with `t`.
    pub thin_pool: bool,
}

impl LvSpace {
    /// (used, free) bytes of a thin pool. LVM prints the percentage with two decimals, so
    /// this is exact to 0.01 % of the pool size.
    pub fn thin_usage(&self) -> Option<(u64, u64)> {
        let pct = self.data_percent?.clamp(0.0, 100.0);
        let used = ((self.size as f64) * pct / 100.0).round() as u64;
        let used = used.min(self.size);
        Some((used, self.size - used))
    }
}

pub const VGS_FIELDS: &str = "vg_name,vg_size,vg_free";
pub const LVS_FIELDS: &str = "vg_name,lv_name,lv_size,data_percent,lv_attr";

/// The arguments of `vgs` for `vgs` (volume group names).
pub fn vgs_args(vgs: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", VGS_FIELDS].map(String::from).into();
    a.extend(vgs.iter().map(|v| v.to_string()));
    a
}

/// The arguments of `lvs` for `lvs` (`vg/lv` names).
pub fn lvs_args(lvs: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", LVS_FIELDS].map(String::from).into();
    a.extend(lvs.iter().map(|v| v.to_string()));
    a
}

/// The rows of the `key` ("vg", "lv") sections of a JSON report.
fn rows<'a>(doc: &'a Value, key: &'static str) -> Result<Vec<&'a serde_json::Map<String, Value>>, ParseError> {
    let report =
        doc.get("report").and_then(Value::as_array).ok_or_else(|| ParseError::new(key, "no \"report\" array"))?;
    Ok(report
        .iter()
        .filter_map(|r| r.get(key).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_object)
        .collect())
}

fn text<'a>(row: &'a serde_json::Map<String, Value>, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    match row.get(key)? {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        _ => None,
    }
}

/// A byte count as LVM prints it with `--units b`: `1000`, tolerating a `B` suffix and the `<`
/// LVM puts before rounded figures.
fn bytes(row: &serde_json::Map<String, Value>, key: &str) -> Option<u64> {
    let t = text(row, key)?;
    let t = t.trim().trim_start_matches('<').trim_end_matches(['B', 'b']);
    t.parse().ok().or_else(|| t.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

/// `vgs --reportformat json` -> vg name -> space. Err: not a JSON report.
pub fn parse_vgs_json(text_in: &str) -> Result<HashMap<String, VgSpace>, ParseError> {
    let doc: Value = serde_json::from_str(text_in)
        .map_err(|e| ParseError::new("vgs output", format!("not JSON: {e}")).at(e.line()))?;
    let mut out = HashMap::new();
    for row in rows(&doc, "vg")? {
        if let (Some(name), Some(size), Some(free)) =
            (text(row, "vg_name"), bytes(row, "vg_size"), bytes(row, "vg_free"))
        {
            out.insert(name.into_owned(), VgSpace { size, free });
        }
    }
    Ok(out)
}

/// `lvs --reportformat json` -> `vg/lv` -> space. Err: not a JSON report.
pub fn parse_lvs_json(text_in: &str) -> Result<HashMap<String, LvSpace>, ParseError> {
    let doc: Value = serde_json::from_str(text_in)
        .map_err(|e| ParseError::new("lvs output", format!("not JSON: {e}")).at(e.line()))?;
    let mut out = HashMap::new();
    for row in rows(&doc, "lv")? {
        let (Some(vg), Some(lv), Some(size)) = (text(row, "vg_name"), text(row, "lv_name"), bytes(row, "lv_size"))
        else {
            continue;
        };
        let data_percent =
            text(row, "data_percent").and_then(|p| p.trim().parse::<f64>().ok()).filter(|p| p.is_finite());
        let thin_pool = text(row, "lv_attr").is_some_and(|a| a.starts_with('t'));
        out.insert(format!("{vg}/{lv}"), LvSpace { size, data_percent, thin_pool });
    }
    Ok(out)
}

fn run<T>(
    tools: &Tools,
    slot: &Slot,
    tool: &str,
    args: Vec<String>,
    timeout: Duration,
    parse: fn(&str) -> Result<HashMap<String, T>, ParseError>,
) -> Result<Report<T>, command::Error> {
    let out = tools
        .command(tool)?
        .args(args)
        // Keeps LVM from warning about the daemon's inherited descriptors on every run.
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .timeout(timeout)
        .run_in(slot)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // LVM prints the report of what it found even when it misses some names (exit 5).
    let found = match parse(&stdout) {
        Ok(found) => found,
        Err(e) if out.status.success() => return Err(e.into()),
        Err(_) => {
            return Err(command::Error::Exited {
                cmd: tool.to_string(),
                status: out.status.to_string(),
                stderr: out.stderr_summary(),
            });
        }
    };
    Ok(Report::new(found, &out))
}

/// `vgs` of the volume groups `vgs` in one run.
pub fn vg_space(
    tools: &Tools,
    slot: &Slot,
    vgs: &[&str],
    timeout: Duration,
) -> Result<Report<VgSpace>, command::Error> {
    run(tools, slot, "vgs", vgs_args(vgs), timeout, parse_vgs_json)
}

/// `lvs` of the logical volumes `lvs` (`vg/lv`) in one run.
pub fn lv_space(
    tools: &Tools,
    slot: &Slot,
    lvs: &[&str],
    timeout: Duration,
) -> Result<Report<LvSpace>, command::Error> {
    run(tools, slot, "lvs", lvs_args(lvs), timeout, parse_lvs_json)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VGS: &str = r#"  {
      "report": [
          {
              "vg": [
                  {"vg_name":"pve", "vg_size":"499570991104", "vg_free":"16919822336"},
                  {"vg_name":"vg_san", "vg_size":"2199019061248B", "vg_free":"<1099511627776"},
                  {"vg_name":"broken", "vg_size":"", "vg_free":"1"}
              ]
          }
      ]
  }
"#;

    const LVS: &str = r#"{"report":[{"lv":[
        {"vg_name":"pve", "lv_name":"data", "lv_size":"348131704832", "data_percent":"12.59", "lv_attr":"twi-aotz--"},
        {"vg_name":"pve", "lv_name":"idle", "lv_size":"1073741824", "data_percent":"", "lv_attr":"twi---tz--"},
        {"vg_name":"pve", "lv_name":"root", "lv_size":"103079215104", "data_percent":"", "lv_attr":"-wi-ao----"},
        {"vg_name":"pve", "lv_name":"json_std", "lv_size":1000, "data_percent":50.0, "lv_attr":"twi-aotz--"}
    ]}]}"#;

    #[test]
    fn vgs() {
        let m = parse_vgs_json(VGS).unwrap();
        assert_eq!(m["pve"], VgSpace { size: 499_570_991_104, free: 16_919_822_336 });
        assert_eq!(m["vg_san"], VgSpace { size: 2_199_019_061_248, free: 1_099_511_627_776 });
        assert!(!m.contains_key("broken"));
        assert!(parse_vgs_json("").is_err());
        assert!(parse_vgs_json("{}").is_err());
        assert!(parse_vgs_json(r#"{"report":[{"lv":[]}]}"#).unwrap().is_empty());
        assert!(parse_vgs_json(r#"{"report":[1,{"vg":[2,{"vg_name":3}]}]}"#).unwrap().is_empty());
    }

    #[test]
    fn lvs() {
        let m = parse_lvs_json(LVS).unwrap();
        let data = m["pve/data"];
        assert!(data.thin_pool);
        assert_eq!(data.data_percent, Some(12.59));
        // 12.59 % of 348131704832, rounded.
        assert_eq!(data.thin_usage(), Some((43_829_781_638, 304_301_923_194)));
        assert_eq!(m["pve/idle"].thin_usage(), None, "inactive pool: no data_percent");
        assert!(!m["pve/root"].thin_pool);
        assert_eq!(m["pve/json_std"].thin_usage(), Some((500, 500)));
        let full = LvSpace { size: 10, data_percent: Some(150.0), thin_pool: true };
        assert_eq!(full.thin_usage(), Some((10, 0)));
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            vgs_args(&["vg_san"]).join(" "),
            "--reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free vg_san"
        );
        assert_eq!(
            lvs_args(&["pve/data"]).join(" "),
            "--reportformat json --units b --nosuffix -o vg_name,lv_name,lv_size,data_percent,lv_attr pve/data"
        );
    }
}
