//! The one exposition path: a [`MetricSet`] is encoded with prometheus-client's OpenMetrics
//! encoder; scrapers that do not ask for OpenMetrics get the classic Prometheus text format
//! (0.0.4), derived line by line from the OpenMetrics text.

use std::{fmt::Write as _, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::metrics::{Kind, MetricSet, Value};

pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// Pick the format from an HTTP `Accept` header: OpenMetrics only when asked for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => TEXT_CONTENT_TYPE,
        }
    }
}

#[derive(Debug)]
struct SetCollector {
    set: Arc<MetricSet>,
    /// OpenMetrics names a counter family without `_total`: a gauge of that very name
    /// (prometheus-pve-exporter's deprecated `pve_disk_read_bytes` beside its
    /// `pve_disk_read_bytes_total`) would be a second family of one name, which OpenMetrics
    /// forbids. Such gauges are left out of OpenMetrics output; the text format has both.
    skip_clashing_gauges: bool,
}

impl Collector for SetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families = self.set.families();
        let counters: std::collections::HashSet<&str> = if self.skip_clashing_gauges {
            families
                .iter()
                .filter(|f| f.kind() == Kind::Counter && !f.samples.is_empty())
                .filter_map(|f| f.name.strip_suffix("_total"))
                .collect()
        } else {
            Default::default()
        };
        for fam in families {
            if fam.samples.is_empty() || (fam.kind() == Kind::Gauge && counters.contains(fam.name.as_str())) {
                continue;
            }
            let (name, ty) = match fam.kind() {
                // The OpenMetrics encoder names a counter family without `_total` and adds it
                // to the samples.
                Kind::Counter => (fam.name.strip_suffix("_total").unwrap_or(&fam.name), MetricType::Counter),
                Kind::Gauge => (fam.name.as_str(), MetricType::Gauge),
                Kind::Histogram => (fam.name.as_str(), MetricType::Histogram),
            };
            let mut fam_enc = encoder.encode_descriptor(name, fam.help(), None, ty)?;
            // A label-less sample is encoded on the family itself: `name 1`, not `name{} 1`.
            if let [s] = fam.samples.as_slice()
                && s.labels.is_empty()
            {
                encode_value(fam.kind(), &s.value, fam_enc)?;
                continue;
            }
            for s in &fam.samples {
                encode_value(fam.kind(), &s.value, fam_enc.encode_family(&s.labels.as_slice())?)?;
            }
        }
        Ok(())
    }
}

fn encode_value(kind: Kind, value: &Value, mut enc: MetricEncoder) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (Kind::Counter, Value::Int(v)) => ConstCounter::new(*v).encode(enc),
        (Kind::Counter, Value::Float(v)) => ConstCounter::new(*v).encode(enc),
        (Kind::Gauge | Kind::Histogram, Value::Int(v)) => ConstGauge::new(*v).encode(enc),
        (Kind::Gauge | Kind::Histogram, Value::Float(v)) => ConstGauge::new(*v).encode(enc),
        (_, Value::Histogram(h)) => enc.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None),
    }
}

/// Encode a scrape in the requested format.
pub fn render(set: Arc<MetricSet>, format: Format) -> String {
    // Room for the whole text up front: growing a buffer of hundreds of KiB by doubling
    // costs copies and, with glibc, heap consolidation on every scrape.
    let series: usize = set.families().iter().map(|f| f.samples.len()).sum();
    let mut om = String::with_capacity(series * 96 + (64 << 10));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SetCollector { set, skip_clashing_gauges: format == Format::OpenMetrics }));
    // Writing into a String cannot fail; an error here would be a bug in a label value
    // encoder, and the scrape still answers with what was written.
    if let Err(e) = encode(&mut om, &registry) {
        log::error!("encoding metrics failed: {e}");
    }
    match format {
        Format::OpenMetrics => om,
        Format::Text => openmetrics_to_text(&om),
    }
}

/// Prometheus text format 0.0.4 from OpenMetrics text: drop `# EOF` and `# UNIT`, and name
/// counter families by their sample name (`x_total`), as the classic format does.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = pending_help.take() {
                out.push_str(h);
                out.push('\n');
            }
            pending_help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.rsplit_once(' ').unwrap_or((rest, ""));
            let name_total =
                if ty == "counter" && !name.ends_with("_total") { format!("{name}_total") } else { name.to_string() };
            if let Some(h) = pending_help.take() {
                let help = h.strip_prefix("# HELP ").and_then(|r| r.split_once(' '));
                match help {
                    Some((_, text)) => {
                        let _ = writeln!(out, "# HELP {name_total} {text}");
                    }
                    None => {
                        let _ = writeln!(out, "# HELP {name_total}");
                    }
                }
            }
            let _ = writeln!(out, "# TYPE {name_total} {ty}");
            continue;
        }
        if let Some(h) = pending_help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(h) = pending_help {
        out.push_str(h);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_set() -> Arc<MetricSet> {
        use crate::catalog::*;
        let mut m = MetricSet::new("pve");
        m.family(&KVM_CPU_SECONDS).push([("id", "100".to_string()), ("mode", "user".to_string())], 1.5);
        m.family(&KVM_VCORES).push([("id", "100".to_string())], 4u64);
        m.family(&EBPF_INFO).push([("mode", "a \"quoted\"\\name".to_string()), ("reason", "x".to_string())], 1u64);
        m.family(&KVM_THREADS); // no samples: not printed
        m.family(&EBPF_ENABLED).push(Vec::<(&str, String)>::new(), 1u64);
        let h = crate::metrics::HistogramValue {
            buckets: vec![(0.5, 1), (1.0, 2), (f64::INFINITY, 1)],
            sum: 3.5,
            count: 4,
        };
        m.family(&KVM_EXIT_HANDLING_SECONDS).push([("id", "100".to_string())], h);
        Arc::new(m)
    }

    #[test]
    fn openmetrics_output() {
        let om = render(sample_set(), Format::OpenMetrics);
        assert!(om.contains("# TYPE pve_kvm_cpu_seconds counter\n"), "{om}");
        assert!(om.contains("# HELP pve_kvm_cpu_seconds CPU time"), "{om}");
        assert!(om.contains("pve_kvm_cpu_seconds_total{id=\"100\",mode=\"user\"} 1.5\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        assert!(!om.contains("pve_kvm_threads"));
    }

    #[test]
    fn text_output() {
        let t = render(sample_set(), Format::Text);
        assert!(t.contains("# HELP pve_kvm_cpu_seconds_total CPU time of the VM's QEMU process by mode (user, system, iowait)\n# TYPE pve_kvm_cpu_seconds_total counter\n"), "{t}");
        assert!(t.contains("pve_kvm_vcores{id=\"100\"} 4\n"), "{t}");
        assert!(t.contains(r#"mode="a \"quoted\"\\name""#), "{t}");
        assert!(!t.contains("# EOF"));
        assert!(t.contains("\npve_exporter_ebpf_enabled 1\n"), "{t}");
        // Histograms: cumulative buckets, +Inf equal to the count.
        assert!(t.contains("# TYPE pve_kvm_exit_handling_seconds histogram\n"), "{t}");
        assert!(t.contains("pve_kvm_exit_handling_seconds_bucket{le=\"1.0\",id=\"100\"} 3\n"), "{t}");
        assert!(t.contains("pve_kvm_exit_handling_seconds_bucket{le=\"+Inf\",id=\"100\"} 4\n"), "{t}");
        assert!(t.contains("pve_kvm_exit_handling_seconds_sum{id=\"100\"} 3.5\n"), "{t}");
        assert!(t.contains("pve_kvm_exit_handling_seconds_count{id=\"100\"} 4\n"), "{t}");
    }

    /// PPE's deprecated gauge beside its counter: two families of one name in OpenMetrics, so
    /// only the counter goes there; the text format keeps both, as PPE serves them.
    #[test]
    fn a_gauge_named_like_a_counter_family_is_left_out_of_openmetrics() {
        let mut m = MetricSet::new("pve");
        m.family(&crate::catalog::PPE_DISK_READ).push([("id", "qemu/1")], 5u64);
        m.family(&crate::catalog::PPE_DISK_READ_TOTAL).push([("id", "qemu/1")], 5u64);
        let set = Arc::new(m);
        let om = render(set.clone(), Format::OpenMetrics);
        assert_eq!(om.matches("# TYPE pve_disk_read_bytes ").count(), 1, "{om}");
        assert!(om.contains("# TYPE pve_disk_read_bytes counter") && !om.contains("pve_disk_read_bytes{"), "{om}");
        let text = render(set, Format::Text);
        assert!(text.contains("# TYPE pve_disk_read_bytes gauge\npve_disk_read_bytes{id=\"qemu/1\"} 5"), "{text}");
        assert!(
            text.contains("# TYPE pve_disk_read_bytes_total counter\npve_disk_read_bytes_total{id=\"qemu/1\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn accept_header() {
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
    }
}
