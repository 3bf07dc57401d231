//! The one exposition path: a [`MetricSet`] is written as OpenMetrics text, or, for scrapers
//! that do not ask for OpenMetrics, as the classic Prometheus text format (0.0.4). The bytes
//! are those prometheus-client's encoder gives (a test holds the two to each other).

use std::sync::Arc;

use crate::metrics::{Family, HistogramValue, Kind, MetricSet, Value};

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

/// Encode a scrape in the requested format: families in catalogue order, each with its HELP
/// and TYPE lines and its samples. Written directly into one buffer: the same bytes as
/// prometheus-client's OpenMetrics encoder gives (and the classic text format derived from
/// it), which a test compares on every kind of sample, at half the cost per series (a
/// 200-guest scrape has ~20 000).
pub fn render(set: Arc<MetricSet>, format: Format) -> String {
    let families = set.families();
    // Room for the whole text up front: growing a buffer of hundreds of KiB by doubling
    // costs copies and, with glibc, heap consolidation on every scrape.
    let size: usize = families.iter().map(|f| f.text.len() + estimate(f)).sum();
    let mut out = String::with_capacity(size + (64 << 10));
    let om = format == Format::OpenMetrics;
    for fam in families {
        if fam.samples.is_empty() && fam.text.is_empty() {
            continue;
        }
        let described = if om { stem(fam) } else { fam.name.as_str() };
        for (what, text) in [("# HELP ", fam.help()), ("# TYPE ", fam.kind().as_str())] {
            out.push_str(what);
            out.push_str(described);
            out.push(' ');
            out.push_str(text);
            out.push('\n');
        }
        out.push_str(&fam.text);
        write_samples(&mut out, fam);
    }
    if om {
        out.push_str("# EOF\n");
    }
    out
}

/// Write every family's samples as their exposition lines and drop the samples. A served
/// collection stays in memory until the next one replaces it (as the last good values of its
/// groups, issue 15): as text it takes a third of the room (~0.8 against ~2.3 MiB at 100 VMs +
/// 100 containers), and writing a scrape is then a copy. The lines are the same in both
/// exposition formats; only the HELP and TYPE lines differ, written by [`render`].
pub fn freeze(set: &mut MetricSet) {
    for f in set.families_mut() {
        if f.samples.is_empty() {
            continue;
        }
        let mut text = String::with_capacity(f.text.len() + estimate(f));
        text.push_str(&f.text);
        write_samples(&mut text, f);
        text.shrink_to_fit();
        f.text = text;
        f.samples = Vec::new();
    }
}

/// About how long a family's sample lines are (room reserved up front).
pub fn estimate(fam: &Family) -> usize {
    fam.samples.len() * 96
}

/// The sample name's stem: a counter's samples are `<stem>_total`.
fn stem(fam: &Family) -> &str {
    match fam.kind() {
        Kind::Counter => fam.name.strip_suffix("_total").unwrap_or(&fam.name),
        _ => fam.name.as_str(),
    }
}

/// A family's sample lines (its `samples`; what [`freeze`] wrote is not repeated).
pub fn write_samples(out: &mut String, fam: &Family) {
    let kind = fam.kind();
    let stem = stem(fam);
    // A label-less sample alone in its family is written without braces: `name 1`.
    let bare = fam.text.is_empty() && matches!(fam.samples.as_slice(), [s] if s.labels.is_empty());
    for s in &fam.samples {
        let labels = if bare { None } else { Some(s.labels.as_slice()) };
        match &s.value {
            Value::Histogram(h) => write_histogram(out, stem, labels, h),
            v => {
                out.push_str(stem);
                if kind == Kind::Counter {
                    out.push_str("_total");
                }
                write_labels(out, None, labels);
                out.push(' ');
                write_value(out, v);
                out.push('\n');
            }
        }
    }
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
        Value::Float(f) => out.push_str(dtoa::Buffer::new().format(*f)),
        Value::Histogram(_) => {}
    }
}

/// `{le="0.5",k="v",...}`: `le` (of histogram buckets) first, as prometheus-client writes it;
/// nothing for a bare sample.
fn write_labels(out: &mut String, le: Option<&str>, labels: Option<&[crate::metrics::Label]>) {
    if le.is_none() && labels.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    if let Some(le) = le {
        out.push_str("le=\"");
        out.push_str(le);
        out.push('"');
        first = false;
    }
    for (k, v) in labels.unwrap_or_default() {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        push_escaped(out, v.as_str());
        out.push('"');
    }
    out.push('}');
}

/// A label value with `\`, `"` and newline escaped.
fn push_escaped(out: &mut String, s: &str) {
    if !s.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `_sum`, `_count`, then the cumulative `_bucket`s (`le="+Inf"` last), in prometheus-client's
/// order.
fn write_histogram(out: &mut String, stem: &str, labels: Option<&[crate::metrics::Label]>, h: &HistogramValue) {
    for (suffix, value) in [("_sum", Value::Float(h.sum)), ("_count", Value::Int(h.count))] {
        out.push_str(stem);
        out.push_str(suffix);
        write_labels(out, None, labels);
        out.push(' ');
        write_value(out, &value);
        out.push('\n');
    }
    let mut cumulative = 0u64;
    for (upper, count) in &h.buckets {
        cumulative += count;
        out.push_str(stem);
        out.push_str("_bucket");
        let mut le = dtoa::Buffer::new();
        let le = if *upper == f64::INFINITY { "+Inf" } else { le.format(*upper) };
        // The family's labels after `le`; a bare histogram has `le` alone.
        write_labels(out, Some(le), labels.filter(|l| !l.is_empty()).or(None));
        out.push(' ');
        out.push_str(itoa::Buffer::new().format(cumulative));
        out.push('\n');
    }
}

/// Prometheus text format 0.0.4 from OpenMetrics text: drop `# EOF` and `# UNIT`, and name
/// counter families by their sample name (`x_total`), as the classic format does (the
/// reference encoder's text format).
#[cfg(test)]
pub fn openmetrics_to_text(om: &str) -> String {
    use std::fmt::Write as _;
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

    use prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet, text::encode},
        metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
        registry::Registry,
    };

    #[derive(Debug)]
    struct SetCollector {
        set: Arc<MetricSet>,
    }

    impl Collector for SetCollector {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            for fam in self.set.families() {
                if fam.samples.is_empty() {
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

    /// The reference: prometheus-client's encoder, which [`render`] matches byte for byte.
    pub fn render_reference(set: Arc<MetricSet>, format: Format) -> String {
        // Room for the whole text up front: growing a buffer of hundreds of KiB by doubling
        // costs copies and, with glibc, heap consolidation on every scrape.
        let series: usize = set.families().iter().map(|f| f.samples.len()).sum();
        let mut om = String::with_capacity(series * 96 + (64 << 10));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SetCollector { set }));
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

    /// The direct encoder writes what prometheus-client's does, byte for byte, in both
    /// formats: labels with every escape, a bare sample, integers, floats of every magnitude,
    /// histograms, counters.
    #[test]
    fn the_direct_encoder_matches_prometheus_client() {
        use crate::catalog::*;
        let mut m = MetricSet::new("pve");
        let f = m.family(&KVM_MEMORY_PERCENT);
        for (i, v) in [0.0, 1.0, -2.5, 4e-6, 1e21, 123_456.789, f64::INFINITY, f64::MIN_POSITIVE].iter().enumerate() {
            f.push([("id", format!("{i}"))], *v);
        }
        m.family(&KVM_THREADS).push([("id", "a\\b\"c\nd")], u64::MAX);
        m.family(&KVM_CTX_SWITCHES).push([("id", "1"), ("type", "voluntary")], 7u64);
        m.family(&KVM_CTX_SWITCHES).push([("id", "1"), ("type", "involuntary")], 0.25);
        m.family(&SCRAPE_DURATION).push(Vec::<(&str, String)>::new(), 0.0123);
        let h = |sum| crate::metrics::HistogramValue {
            buckets: vec![(1e-6, 3), (0.000_25, 0), (1.0, 2), (f64::INFINITY, 1)],
            sum,
            count: 6,
        };
        m.family(&KVM_EXIT_HANDLING_SECONDS).push([("id", "100")], h(0.5));
        m.family(&KVM_EXIT_HANDLING_SECONDS).push([("id", "101")], h(2.0));
        m.family(&KVM_RUNQUEUE_WAIT_SECONDS).push([("id", "7")], h(1e-9));
        m.family(&PPE_NET_RECEIVE).push([("id", "lxc/1")], 5u64);
        m.family(&PPE_NET_RECEIVE_TOTAL).push([("id", "lxc/1")], 5u64);
        let set = Arc::new(m);
        for format in [Format::OpenMetrics, Format::Text] {
            assert_eq!(render(set.clone(), format), render_reference(set.clone(), format), "{format:?}");
        }
        let set = sample_set();
        for format in [Format::OpenMetrics, Format::Text] {
            assert_eq!(render(set.clone(), format), render_reference(set.clone(), format), "{format:?}");
        }
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

    /// PPE's deprecated gauge beside its counter: in OpenMetrics both are families named
    /// `pve_disk_read_bytes`, as prometheus-pve-exporter serves them (its dashboards query the
    /// gauge, and Prometheus ingests both).
    #[test]
    fn a_gauge_named_like_a_counter_family_is_kept() {
        let mut m = MetricSet::new("pve");
        m.family(&crate::catalog::PPE_DISK_READ).push([("id", "qemu/1")], 5u64);
        m.family(&crate::catalog::PPE_DISK_READ_TOTAL).push([("id", "qemu/1")], 5u64);
        let set = Arc::new(m);
        let om = render(set.clone(), Format::OpenMetrics);
        assert!(om.contains("# TYPE pve_disk_read_bytes gauge\npve_disk_read_bytes{id=\"qemu/1\"} 5\n"), "{om}");
        assert!(
            om.contains("# TYPE pve_disk_read_bytes counter\npve_disk_read_bytes_total{id=\"qemu/1\"} 5\n"),
            "{om}"
        );
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
