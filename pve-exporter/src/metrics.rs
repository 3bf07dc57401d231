//! The metric model collectors fill: families of samples, independent of the wire format.
//! [`crate::exposition`] is the one place that turns it into text.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
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

pub type Label = (Cow<'static, str>, String);

#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: Vec<Label>,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub struct Family {
    /// Full name, prefix included; counters end in `_total`.
    pub name: String,
    pub help: Cow<'static, str>,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn push<L, K>(&mut self, labels: L, value: impl Into<Value>)
    where
        L: IntoIterator<Item = (K, String)>,
        K: Into<Cow<'static, str>>,
    {
        self.samples.push(Sample {
            labels: labels.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            value: value.into(),
        });
    }
}

/// All families of one scrape, in the order they were first created.
#[derive(Debug, Clone, Default)]
pub struct MetricSet {
    prefix: String,
    families: Vec<Family>,
}

impl MetricSet {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            families: Vec::new(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The family `<prefix>_<name>`, created on first use. Asking again for the same name
    /// returns the same family (collectors may add to it from several places).
    pub fn family(
        &mut self,
        name: &str,
        help: impl Into<Cow<'static, str>>,
        kind: Kind,
    ) -> &mut Family {
        let full = format!("{}_{}", self.prefix, name);
        debug_assert!(
            kind != Kind::Counter || full.ends_with("_total"),
            "{full}: counters end in _total"
        );
        match self.families.iter().position(|f| f.name == full) {
            Some(i) => &mut self.families[i],
            None => {
                self.families.push(Family {
                    name: full,
                    help: help.into(),
                    kind,
                    samples: Vec::new(),
                });
                let last = self.families.len() - 1;
                &mut self.families[last]
            }
        }
    }

    pub fn gauge(&mut self, name: &str, help: impl Into<Cow<'static, str>>) -> &mut Family {
        self.family(name, help, Kind::Gauge)
    }

    pub fn counter(&mut self, name: &str, help: impl Into<Cow<'static, str>>) -> &mut Family {
        self.family(name, help, Kind::Counter)
    }

    pub fn families(&self) -> &[Family] {
        &self.families
    }

    pub fn get(&self, full_name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == full_name)
    }

    /// Move every family of `other` into `self` (merging same-named families).
    pub fn extend(&mut self, other: MetricSet) {
        for f in other.families {
            match self.families.iter_mut().find(|g| g.name == f.name) {
                Some(g) => g.samples.extend(f.samples),
                None => self.families.push(f),
            }
        }
    }
}
