//! The metric model collectors fill: families of samples, independent of the wire format.
//! [`crate::exposition`] is the one place that turns it into text.

use std::{borrow::Cow, fmt, ops::Deref, sync::Arc};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

use crate::catalog;
pub use crate::catalog::{Def, Kind};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
    Histogram(Box<HistogramValue>),
}

/// A histogram sample: per-bucket counts (not cumulative) with their upper bounds, +Inf last.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValue {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl From<HistogramValue> for Value {
    fn from(v: HistogramValue) -> Self {
        Value::Histogram(Box::new(v))
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}

/// A label value: fixed text (`"user"`), text shared by many samples (a VM's `id`: cloning it
/// is a reference count, not an allocation; a 100-VM scrape has ~6000 such values) or text of
/// its own.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelValue {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl LabelValue {
    pub fn as_str(&self) -> &str {
        match self {
            LabelValue::Static(s) => s,
            LabelValue::Shared(s) => s,
            LabelValue::Owned(s) => s,
        }
    }
}

impl Deref for LabelValue {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for LabelValue {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for LabelValue {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&'static str> for LabelValue {
    fn from(s: &'static str) -> Self {
        LabelValue::Static(s)
    }
}

impl From<String> for LabelValue {
    fn from(s: String) -> Self {
        LabelValue::Owned(s)
    }
}

impl From<Cow<'static, str>> for LabelValue {
    fn from(s: Cow<'static, str>) -> Self {
        match s {
            Cow::Borrowed(s) => LabelValue::Static(s),
            Cow::Owned(s) => LabelValue::Owned(s),
        }
    }
}

impl From<Arc<str>> for LabelValue {
    fn from(s: Arc<str>) -> Self {
        LabelValue::Shared(s)
    }
}

impl From<&Arc<str>> for LabelValue {
    fn from(s: &Arc<str>) -> Self {
        LabelValue::Shared(s.clone())
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

pub type Label = (Cow<'static, str>, LabelValue);

/// A sample's labels: up to two inline (most families have `id` and at most one more), so a
/// 100-VM scrape does not allocate ~9000 small vectors.
pub type Labels = smallvec::SmallVec<[Label; 2]>;

#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: Labels,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub struct Family {
    /// Full name, prefix included; counters end in `_total`.
    pub name: String,
    pub def: &'static Def,
    pub samples: Vec<Sample>,
    /// Sample lines written but not yet sealed: by [`Self::push`] in a set that writes its
    /// samples at once ([`MetricSet::writing`]). Exposed after `chunks`, before `samples`.
    pub text: String,
    /// Sealed sample lines (the exposition's `freeze`), exposed first: served as they are,
    /// without a copy, and shared by every scrape that answers with this collection.
    pub chunks: Vec<bytes::Bytes>,
    /// How `push` writes the sample's line instead of keeping the sample (a writing set).
    writer: Option<&'static LineWriter>,
    /// Lines `push` wrote (debug builds check which families a collector added to).
    written: usize,
}

impl Family {
    pub fn kind(&self) -> Kind {
        self.def.kind
    }

    pub fn help(&self) -> &'static str {
        self.def.help
    }

    /// Samples pushed to it: kept and written ones (lines that came in sealed are not counted).
    pub fn pushed(&self) -> usize {
        self.samples.len() + self.written
    }

    /// Whether it holds nothing to expose.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.text.is_empty() && self.chunks.is_empty()
    }

    /// Add a sample; its labels are the def's label names, in order. In a writing set the line
    /// is written now, from the labels as they come, and nothing is kept.
    pub fn push<L, K, V>(&mut self, labels: L, value: impl Into<Value>)
    where
        L: IntoIterator<Item = (K, V)>,
        K: Into<Cow<'static, str>>,
        V: Into<LabelValue>,
    {
        let value = value.into();
        // A histogram's labels are written on each of its lines: kept for that.
        if let Some(w) = self.writer
            && !matches!(value, Value::Histogram(_))
        {
            // The generic part is this loop alone: it is made once per call site of `push`
            // (some hundred), and what each copy holds is text the daemon maps and touches.
            let mut text = self.start_written(w);
            let mut n = 0;
            for (k, v) in labels {
                (w.label)(&mut text, self, n, &k.into(), &v.into());
                n += 1;
            }
            self.end_written(w, text, n, &value);
            return;
        }
        let labels: Labels = labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        debug_assert!(
            labels.iter().map(|(k, _)| k.as_ref()).eq(self.def.labels.iter().copied()),
            "{}: labels {:?} differ from the catalogue's {:?}",
            self.name,
            labels,
            self.def.labels
        );
        self.push_sample(Sample { labels, value });
    }

    /// [`Self::push`] of labels the caller has as text already (a guest's id, a device name):
    /// a writing set writes them as they are, with no label value made per sample; a keeping
    /// set (tests) owns copies. Not generic over the labels, so one copy of it serves every
    /// call site.
    pub fn push_ref(&mut self, labels: &[(&'static str, &str)], value: impl Into<Value>) {
        let value = value.into();
        if let Some(w) = self.writer
            && !matches!(value, Value::Histogram(_))
        {
            let mut text = std::mem::take(&mut self.text);
            (w.line)(&mut text, self, labels, &value);
            self.text = text;
            self.written += 1;
            return;
        }
        self.push(labels.iter().map(|(k, v)| (*k, LabelValue::Owned((*v).to_owned()))), value);
    }

    /// A written line's start: the family's unsealed text, taken while its labels are written
    /// (the writer reads the family beside it).
    fn start_written(&mut self, w: &LineWriter) -> String {
        let mut text = std::mem::take(&mut self.text);
        (w.start)(&mut text, self);
        text
    }

    /// A written line's end after `labels` labels, and the text given back.
    fn end_written(&mut self, w: &LineWriter, mut text: String, labels: usize, value: &Value) {
        (w.end)(&mut text, self, labels, value);
        self.text = text;
        self.written += 1;
    }

    /// Add a sample made elsewhere (a merge): kept, or written in a writing set.
    pub fn push_sample(&mut self, s: Sample) {
        if let Some(w) = self.writer {
            let mut text = std::mem::take(&mut self.text);
            (w.sample)(&mut text, self, &s);
            self.text = text;
            self.written += 1;
        } else {
            self.samples.push(s);
        }
    }

    /// Add the samples, lines and chunks of `other` (of the same family) after its own.
    pub fn append(&mut self, other: Family) {
        if self.is_empty() {
            self.samples = other.samples;
            self.text = other.text;
            self.chunks = other.chunks;
            self.written += other.written;
            return;
        }
        self.append_ref(&other);
        self.written += other.written;
    }

    /// [`Self::append`] of a family that is kept elsewhere (sealed chunks are shared, not copied).
    pub fn append_ref(&mut self, other: &Family) {
        self.append_parts(&other.chunks, &other.text, &other.samples);
    }

    /// Add sealed `chunks` (shared, not copied), written lines `text` and `samples`, in that
    /// order (a family's own exposition order), after what it has.
    pub fn append_parts(&mut self, chunks: &[bytes::Bytes], text: &str, samples: &[Sample]) {
        // Sealed text comes first in the exposition: what this family has not sealed yet goes
        // after the chunks added, so seal it first.
        let unsealed = !self.text.is_empty() || !self.samples.is_empty();
        if unsealed
            && !chunks.is_empty()
            && let Some(w) = self.writer
        {
            (w.seal)(self);
        }
        self.chunks.extend(chunks.iter().cloned());
        self.text.push_str(text);
        for s in samples {
            self.push_sample(s.clone());
        }
    }
}

/// How a writing set writes its samples' lines ([`MetricSet::writing`]). The exposition
/// supplies it (`exposition::WRITER`): the model holds lines, the exposition alone knows their
/// format. `start`, each `label` (its index, name and value) and `end` (the label count and
/// the value) write one sample's line as its labels come; `line` writes a line of borrowed
/// labels at once (one call, not one per label: most lines are written so); `sample` writes
/// a whole sample (a histogram, or a merged one); `seal` turns a family's written lines into a
/// chunk.
#[derive(Debug)]
pub struct LineWriter {
    pub start: fn(&mut String, &Family),
    pub line: fn(&mut String, &Family, &[(&'static str, &str)], &Value),
    pub label: fn(&mut String, &Family, usize, &str, &str),
    pub end: fn(&mut String, &Family, usize, &Value),
    pub sample: fn(&mut String, &Family, &Sample),
    pub seal: fn(&mut Family),
}

/// All families of one scrape, in the order they were first created.
#[derive(Debug, Clone, Default)]
pub struct MetricSet {
    prefix: String,
    /// How its families write each sample's line at once ([`Self::writing`]).
    writer: Option<&'static LineWriter>,
    /// Room to reserve for a written family's lines, by the address of its `Def` (what the
    /// same family took in the last collection, [`Self::sizes`]).
    hints: Option<std::sync::Arc<crate::fasthash::FastMap<usize, usize>>>,
    /// In the order of first use; [`Self::families`] gives catalogue order.
    families: Vec<Family>,
    /// Family index by the address of its (static) `Def`: a push is a hash lookup, not a walk
    /// over every family comparing names (a 100-VM scrape pushes ~10 000 samples).
    index: crate::fasthash::FastMap<usize, usize>,
}

impl MetricSet {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string(), ..Self::default() }
    }

    /// A set whose families write each sample's exposition line with `writer` when it is
    /// pushed and keep no samples: what the daemon serves. A scrape of 100 VMs and 100
    /// containers pushes ~13 000 samples; kept, each costs its labels and value (~130 bytes,
    /// grown by doubling) and a second pass to write it.
    pub fn writing(prefix: &str, writer: &'static LineWriter) -> Self {
        Self { prefix: prefix.to_string(), writer: Some(writer), ..Self::default() }
    }

    /// Reserve for each family what `hints` says it took the last time (by `Def` address,
    /// [`Self::sizes`]): written lines then go into a buffer of the right size, not one grown
    /// by doubling, which with ~90 families growing side by side is a copy of each at every
    /// step (8 % of a scrape of 100 VMs and 100 containers went to `realloc`).
    pub fn with_hints(mut self, hints: std::sync::Arc<crate::fasthash::FastMap<usize, usize>>) -> Self {
        self.hints = Some(hints);
        self
    }

    /// Each family's text length (sealed and not), by the address of its `Def`: the hints of
    /// the next collection.
    pub fn sizes(&self) -> crate::fasthash::FastMap<usize, usize> {
        self.families
            .iter()
            .map(|f| {
                (std::ptr::from_ref(f.def) as usize, f.text.len() + f.chunks.iter().map(|c| c.len()).sum::<usize>())
            })
            .collect()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether it writes each sample's line as it is pushed ([`Self::writing`]): what is
    /// served; a set that keeps its samples does not.
    pub fn writes(&self) -> bool {
        self.writer.is_some()
    }

    /// The lines `write` pushes, written as this set writes them (its prefix, writer and
    /// hints) and sealed, by family: lines a collector keeps between collections while what
    /// they were written from holds ([`Self::append_sealed`] adds them). None when this set
    /// keeps its samples.
    pub fn sealed(&self, write: impl FnOnce(&mut MetricSet)) -> Option<Vec<(&'static Def, bytes::Bytes)>> {
        let w = self.writer?;
        let mut set = Self { hints: self.hints.clone(), ..Self::writing(&self.prefix, w) };
        write(&mut set);
        let mut out = Vec::new();
        for mut f in set.families {
            (w.seal)(&mut f);
            out.extend(f.chunks.into_iter().map(|c| (f.def, c)));
        }
        Some(out)
    }

    /// Add sealed lines (shared, not copied) to their families.
    pub fn append_sealed(&mut self, chunks: &[(&'static Def, bytes::Bytes)]) {
        for (def, chunk) in chunks {
            self.family(def).append_parts(std::slice::from_ref(chunk), "", &[]);
        }
    }

    pub fn family(&mut self, def: &'static Def) -> &mut Family {
        let key = std::ptr::from_ref(def) as usize;
        if let Some(&i) = self.index.get(&key) {
            return &mut self.families[i];
        }
        // A second `Def` of the same name (not a catalogue static) shares the family.
        let i = match self.families.iter().position(|f| f.def.name == def.name) {
            Some(i) => i,
            None => {
                let name = format!("{}_{}", self.prefix, def.name);
                // An eighth more than the last time: a few more guests do not grow it.
                let room = self.hints.as_ref().and_then(|h| h.get(&key)).map_or(0, |n| n + n / 8);
                self.families.push(Family {
                    name,
                    def,
                    samples: Vec::new(),
                    text: String::with_capacity(room),
                    chunks: Vec::new(),
                    writer: self.writer,
                    written: 0,
                });
                self.families.len() - 1
            }
        };
        self.index.insert(key, i);
        &mut self.families[i]
    }

    /// The families in catalogue order (families not in the catalogue last).
    pub fn families(&self) -> Vec<&Family> {
        let mut v: Vec<&Family> = self.families.iter().collect();
        v.sort_by_key(|f| catalog::order(f.def));
        v
    }

    /// The families in the order of first use, to change in place (the exposition's `freeze`).
    pub fn families_mut(&mut self) -> &mut [Family] {
        &mut self.families
    }

    /// The families in the order of first use (a family keeps its place as others are added).
    pub fn families_by_use(&self) -> &[Family] {
        &self.families
    }

    /// The families, owned (in the order of first use).
    pub fn into_families(self) -> Vec<Family> {
        self.families
    }

    pub fn get(&self, full_name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == full_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::*;

    #[test]
    fn families_come_out_in_catalogue_order() {
        let mut m = MetricSet::new("pve");
        m.family(&SCRAPE_DURATION);
        m.family(&KVM_THREADS);
        m.family(&KVM_INFO);
        m.family(&KVM_THREADS).push([("id", "1".to_string())], 2u64);
        let names: Vec<&str> = m.families().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["pve_kvm_info", "pve_kvm_threads", "pve_scrape_duration_seconds"]);
        assert_eq!(m.get("pve_kvm_threads").map(|f| f.samples.len()), Some(1));
    }
}
