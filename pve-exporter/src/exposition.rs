//! The one exposition path: a [`MetricSet`] is written as OpenMetrics text, or, for scrapers
//! that do not ask for OpenMetrics, as the classic Prometheus text format (0.0.4). The bytes
//! are those prometheus-client's encoder gives (a test holds the two to each other).

use std::sync::Arc;

use bytes::Bytes;

use crate::metrics::{Family, HistogramValue, Kind, LineWriter, MetricSet, Sample, Value};

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

/// Encode a scrape in the requested format, as one text (see [`render_parts`]).
pub fn render(set: Arc<MetricSet>, format: Format) -> String {
    let parts = render_parts(&set, format);
    let mut out = String::with_capacity(parts.len);
    for p in &parts.chunks {
        // Every part is whole lines of UTF-8 text (headers, sample lines).
        out.push_str(std::str::from_utf8(p).unwrap_or_default());
    }
    out
}

/// A scrape's text as the parts it is served from, in order, and their total length.
pub struct Parts {
    pub chunks: Vec<Bytes>,
    pub len: usize,
}

/// Encode a scrape in the requested format: families in catalogue order, each with its HELP
/// and TYPE lines and its samples; the bytes prometheus-client's OpenMetrics encoder gives (and
/// the classic text format derived from it), which a test compares on every kind of sample.
/// A served collection's sample lines are sealed already ([`freeze`]): they are handed out as
/// they are, shared, and the only text written here is the HELP and TYPE lines. Copying
/// ~0.8 MiB into one buffer per scrape cost its page faults and copy (~7 % of a scrape of 100
/// VMs and 100 containers, docs/benchmarks.md).
pub fn render_parts(set: &MetricSet, format: Format) -> Parts {
    let families: Vec<&Family> = set.families().into_iter().filter(|f| !f.is_empty()).collect();
    let om = format == Format::OpenMetrics;
    // Every family's HELP and TYPE lines in one buffer, handed out as slices of it.
    let mut heads = String::with_capacity(families.len() * 160 + 8);
    let mut ranges = Vec::with_capacity(families.len());
    for fam in &families {
        let from = heads.len();
        let described = if om { stem(fam) } else { fam.name.as_str() };
        for (what, text) in [("# HELP ", fam.help()), ("# TYPE ", fam.kind().as_str())] {
            heads.push_str(what);
            heads.push_str(described);
            heads.push(' ');
            heads.push_str(text);
            heads.push('\n');
        }
        ranges.push(from..heads.len());
    }
    let eof = heads.len();
    if om {
        heads.push_str("# EOF\n");
    }
    let heads = Bytes::from(heads);
    let mut chunks = Vec::with_capacity(families.len() * 2 + 1);
    for (fam, range) in families.iter().zip(ranges) {
        chunks.push(heads.slice(range));
        chunks.extend(fam.chunks.iter().filter(|c| !c.is_empty()).cloned());
        // What is not sealed (a collection that is not served): written now.
        if !fam.text.is_empty() || !fam.samples.is_empty() {
            let mut text = String::with_capacity(fam.text.len() + estimate(fam));
            text.push_str(&fam.text);
            write_samples(&mut text, fam);
            chunks.push(Bytes::from(text));
        }
    }
    if om {
        chunks.push(heads.slice(eof..));
    }
    let len = chunks.iter().map(Bytes::len).sum();
    Parts { chunks, len }
}

/// Seal every family's sample lines ([`seal`]). A served collection stays in memory until the
/// next one replaces it (as the last good values of its groups, issue 15): as text it takes a
/// third of the room of its samples (~0.8 against ~2.3 MiB at 100 VMs + 100 containers), and
/// serving it is then handing out what is sealed. The lines are the same in both exposition
/// formats; only the HELP and TYPE lines differ, written by [`render_parts`].
pub fn freeze(set: &mut MetricSet) {
    for f in set.families_mut() {
        seal(f);
    }
}

/// Write a family's samples as their lines after its unsealed text, drop the samples, and
/// seal the text into a chunk of its own.
pub fn seal(f: &mut Family) {
    if !f.samples.is_empty() {
        f.text.reserve(estimate(f));
        let mut text = std::mem::take(&mut f.text);
        write_samples(&mut text, f);
        f.text = text;
        f.samples = Vec::new();
    }
    if !f.text.is_empty() {
        let mut text = std::mem::take(&mut f.text);
        // A chunk keeps its whole allocation: room reserved and not used would stay in the RSS
        // for as long as the collection is served.
        text.shrink_to_fit();
        f.chunks.push(Bytes::from(text));
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

/// A family's sample lines (its `samples`; what is written or sealed is not repeated).
pub fn write_samples(out: &mut String, fam: &Family) {
    let kind = fam.kind();
    let stem = stem(fam);
    // A label-less sample alone in its family is written without braces: `name 1`.
    let bare =
        fam.text.is_empty() && fam.chunks.is_empty() && matches!(fam.samples.as_slice(), [s] if s.labels.is_empty());
    for s in &fam.samples {
        let labels = if bare { None } else { Some(s.labels.as_slice()) };
        write_line(out, kind, stem, labels, &s.value);
    }
}

/// One sample's lines, written as it comes (a writing set: a histogram, a merged sample).
fn write_sample(out: &mut String, fam: &Family, s: &Sample) {
    let labels = if s.labels.is_empty() { None } else { Some(s.labels.as_slice()) };
    write_line(out, fam.kind(), stem(fam), labels, &s.value);
}

/// What writing sets write their lines with ([`MetricSet::writing`]): the same bytes as
/// [`write_samples`] gives for the same samples. A sample of a family without labels is
/// written without braces (`name 1`), as it is the only one of its family.
pub static WRITER: LineWriter = LineWriter {
    start: start_line,
    line: write_line_ref,
    label: write_label,
    end: end_line,
    sample: write_sample,
    seal,
};

/// A whole line of borrowed labels: the bytes of [`start_line`], each [`write_label`] and
/// [`end_line`], in one call with room reserved once.
fn write_line_ref(out: &mut String, fam: &Family, labels: &[(&'static str, &str)], v: &Value) {
    debug_assert!(
        labels.iter().map(|(k, _)| *k).eq(fam.def.labels.iter().copied()),
        "{}: labels {labels:?} differ from the catalogue's {:?}",
        fam.name,
        fam.def.labels
    );
    let stem = stem(fam);
    // Name, `_total`, each `,k="v"`, braces, value (at most 24 bytes) and newline.
    out.reserve(stem.len() + 34 + labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>());
    out.push_str(stem);
    if fam.kind() == Kind::Counter {
        out.push_str("_total");
    }
    for (n, (k, v)) in labels.iter().enumerate() {
        out.push(if n == 0 { '{' } else { ',' });
        out.push_str(k);
        out.push_str("=\"");
        push_escaped(out, v);
        out.push('"');
    }
    if !labels.is_empty() {
        out.push('}');
    }
    out.push(' ');
    write_value(out, v);
    out.push('\n');
}

fn start_line(out: &mut String, fam: &Family) {
    out.push_str(stem(fam));
    if fam.kind() == Kind::Counter {
        out.push_str("_total");
    }
}

/// Label `n` of a line.
fn write_label(out: &mut String, fam: &Family, n: usize, k: &str, v: &str) {
    debug_assert_eq!(
        fam.def.labels.get(n).copied(),
        Some(k),
        "{}: label {n} differs from the catalogue's {:?}",
        fam.name,
        fam.def.labels
    );
    out.push(if n == 0 { '{' } else { ',' });
    out.push_str(k);
    out.push_str("=\"");
    push_escaped(out, v);
    out.push('"');
}

fn end_line(out: &mut String, fam: &Family, labels: usize, v: &Value) {
    debug_assert_eq!(
        labels,
        fam.def.labels.len(),
        "{}: labels differ from the catalogue's {:?}",
        fam.name,
        fam.def.labels
    );
    if labels > 0 {
        out.push('}');
    }
    out.push(' ');
    write_value(out, v);
    out.push('\n');
}

fn write_line(out: &mut String, kind: Kind, stem: &str, labels: Option<&[crate::metrics::Label]>, v: &Value) {
    match v {
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
        // The family's labels after `le`; a bare histogram has `le` alone.
        with_le(*upper, |le| write_labels(out, Some(le), labels.filter(|l| !l.is_empty()).or(None)));
        out.push(' ');
        out.push_str(itoa::Buffer::new().format(cumulative));
        out.push('\n');
    }
}

/// `f` with bucket bound `upper` as `le` writes it. Histograms of one family share their
/// bounds (a 100-VM scrape writes ~2,400 bucket lines of a dozen bounds), so the text of the
/// last bounds seen is kept per thread rather than formatted on every line.
fn with_le<R>(upper: f64, f: impl FnOnce(&str) -> R) -> R {
    if upper == f64::INFINITY {
        return f("+Inf");
    }
    thread_local! {
        static KNOWN: std::cell::RefCell<Vec<(u64, Box<str>)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// Bounds kept: more than any family has; past that, formatted each time.
    const KEEP: usize = 64;
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        let bits = upper.to_bits();
        if let Some((_, t)) = k.iter().find(|(b, _)| *b == bits) {
            return f(t);
        }
        let mut buf = dtoa::Buffer::new();
        let t = buf.format(upper);
        if k.len() < KEEP {
            k.push((bits, t.into()));
        }
        f(t)
    })
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
        let set = Arc::new(varied(MetricSet::new("pve")));
        for format in [Format::OpenMetrics, Format::Text] {
            assert_eq!(render(set.clone(), format), render_reference(set.clone(), format), "{format:?}");
        }
        let set = sample_set();
        for format in [Format::OpenMetrics, Format::Text] {
            assert_eq!(render(set.clone(), format), render_reference(set.clone(), format), "{format:?}");
        }
    }

    /// What the daemon serves (lines written as samples are pushed, sealed after each
    /// collector, families merged from groups and replayed) is what the samples give.
    #[test]
    fn written_and_sealed_lines_are_those_of_the_samples() {
        use crate::catalog::*;
        let kept = Arc::new(varied(MetricSet::new("pve")));
        let mut written = varied(MetricSet::writing("pve", &WRITER));
        assert!(written.families().iter().all(|f| f.samples.is_empty()), "a writing set keeps no samples");
        freeze(&mut written);
        let written = Arc::new(written);
        for format in [Format::OpenMetrics, Format::Text] {
            assert_eq!(render(written.clone(), format), render(kept.clone(), format), "{format:?}");
            let parts = render_parts(&written, format);
            assert_eq!(parts.len, render(kept.clone(), format).len());
        }
        // Merged as the engine does: a family some lines of which were written before a sealed
        // part of it comes in keeps its order (its own lines first).
        let mut a = MetricSet::writing("pve", &WRITER);
        a.family(&KVM_THREADS).push([("id", "1")], 1u64);
        freeze(&mut a);
        let mut out = MetricSet::writing("pve", &WRITER);
        out.family(&KVM_THREADS).push([("id", "0")], 0u64);
        for f in a.into_families() {
            out.family(f.def).append(f);
        }
        out.family(&KVM_THREADS).push([("id", "2")], 2u64);
        let mut plain = MetricSet::new("pve");
        out.family(&KVM_VCORES).append_ref(plain.family(&KVM_VCORES));
        plain.family(&KVM_VCORES).push([("id", "3")], 3u64);
        out.family(&KVM_VCORES).append_ref(plain.family(&KVM_VCORES));
        freeze(&mut out);
        let text = render(Arc::new(out), Format::Text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "pve_kvm_vcores{id=\"3\"} 3",
                "pve_kvm_threads{id=\"0\"} 0",
                "pve_kvm_threads{id=\"1\"} 1",
                "pve_kvm_threads{id=\"2\"} 2"
            ]
        );
    }

    /// Every kind of sample: numbers of each form, escaped label values, label-less samples,
    /// histograms, counters.
    fn varied(mut m: MetricSet) -> MetricSet {
        use crate::catalog::*;
        let f = m.family(&KVM_MEMORY_PERCENT);
        for (i, v) in [0.0, 1.0, -2.5, 4e-6, 1e21, 123_456.789, f64::INFINITY, f64::MIN_POSITIVE].iter().enumerate() {
            f.push([("id", format!("{i}"))], *v);
        }
        m.family(&KVM_THREADS).push([("id", "a\\b\"c\nd")], u64::MAX);
        m.family(&KVM_CTX_SWITCHES).push([("id", "1"), ("type", "voluntary")], 7u64);
        m.family(&KVM_CTX_SWITCHES).push([("id", "1"), ("type", "involuntary")], 0.25);
        // Borrowed labels, escaped as owned ones are.
        let id = String::from("2\\\"x");
        m.family(&KVM_CTX_SWITCHES).push_ref(&[("id", &id), ("type", "voluntary")], 3u64);
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
        m.family(&EBPF_INFO).push([("mode", "a \"quoted\"\\name".to_string()), ("reason", "x".to_string())], 1u64);
        m.family(&EBPF_ENABLED).push(Vec::<(&str, String)>::new(), 1u64);
        m
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
