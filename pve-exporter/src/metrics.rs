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
    /// Sample lines already written (by `exposition::freeze`), exposed after `samples`.
    pub text: String,
}

impl Family {
    pub fn kind(&self) -> Kind {
        self.def.kind
    }

    pub fn help(&self) -> &'static str {
        self.def.help
    }

    /// Add a sample; its labels are the def's label names, in order.
    pub fn push<L, K, V>(&mut self, labels: L, value: impl Into<Value>)
    where
        L: IntoIterator<Item = (K, V)>,
        K: Into<Cow<'static, str>>,
        V: Into<LabelValue>,
    {
        let labels: Labels = labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        debug_assert!(
            labels.iter().map(|(k, _)| k.as_ref()).eq(self.def.labels.iter().copied()),
            "{}: labels {:?} differ from the catalogue's {:?}",
            self.name,
            labels,
            self.def.labels
        );
        self.samples.push(Sample { labels, value: value.into() });
    }
}

/// All families of one scrape, in the order they were first created.
#[derive(Debug, Clone, Default)]
pub struct MetricSet {
    prefix: String,
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

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn family(&mut self, def: &'static Def) -> &mut Family {
        let key = std::ptr::from_ref(def) as usize;
        let i = match self.index.get(&key) {
            Some(&i) => i,
            // A second `Def` of the same name (not a catalogue static) shares the family.
            None => match self.families.iter().position(|f| f.def.name == def.name) {
                Some(i) => i,
                None => {
                    let name = format!("{}_{}", self.prefix, def.name);
                    self.families.push(Family { name, def, samples: Vec::new(), text: String::new() });
                    self.families.len() - 1
                }
            },
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

    /// The families in the order of first use, to change in place (exposition::freeze).
    pub fn families_mut(&mut self) -> &mut [Family] {
        &mut self.families
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
