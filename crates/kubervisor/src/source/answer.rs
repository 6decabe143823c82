//! A Prometheus answer read in one pass for one rule.
//!
//! Only what the rule judges is read from each series: the pod label, the key label when
//! the rule has one, and the value (instant vector) or values (range matrix). Label values
//! are borrowed from the body, and nothing of a series outlives the call that hands it on.
//!
//! The reader vouches only for answers it understands completely. On anything else (an
//! error answer, a missing label, a value that is not a number, a shape Prometheus does
//! not write) it gives up, and the caller reads the body again with the full parser of
//! `prometheus.rs`, whose errors show the whole series. The two agree on every answer the
//! reader accepts (a property test holds them to it), so findings and errors are the same.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use http::StatusCode;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::prometheus::sample_value;

/// The labels a rule reads from each series.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted<'r> {
    /// The pod label (`podNamekey`).
    pub pod: &'r str,
    /// The key label (`key`) of the rules that judge series by it.
    pub key: Option<&'r str>,
}

/// Reads an instant query's answer: `sample(pod, key, value)` per series, in answer order.
/// False when the reader does not vouch for the answer (see the module's comment).
pub(crate) fn read_vector<'de>(
    status: StatusCode,
    body: &'de [u8],
    wanted: Wanted<'_>,
    sample: impl FnMut(Cow<'de, str>, Option<Cow<'de, str>>, f64),
) -> bool {
    read(status, body, wanted, &mut Vector(sample))
}

/// Reads a range query's answer: `series(pod, key, points)` per series, in answer order.
/// False when the reader does not vouch for the answer (see the module's comment).
pub(crate) fn read_matrix<'de>(
    status: StatusCode,
    body: &'de [u8],
    wanted: Wanted<'_>,
    series: impl FnMut(Cow<'de, str>, Option<Cow<'de, str>>, Vec<(f64, f64)>),
) -> bool {
    read(status, body, wanted, &mut Matrix(series))
}

fn read<'de, S: Sink<'de>>(
    status: StatusCode,
    body: &'de [u8],
    wanted: Wanted<'_>,
    sink: &mut S,
) -> bool {
    if !status.is_success() {
        return false;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(EnvelopeVisitor { wanted, sink }).is_ok() && de.end().is_ok()
}

/// What a result type carries per series, and where it goes.
trait Sink<'de> {
    /// The `resultType` read.
    const RESULT_TYPE: &'static str;
    /// The field of a series that holds its data.
    const DATA_FIELD: &'static str;
    type Data;
    /// The data of a series without its field, when the full parser accepts that.
    const MISSING: Option<fn() -> Self::Data>;
    fn data<D: Deserializer<'de>>(deserializer: D) -> Result<Self::Data, D::Error>;
    fn take(&mut self, pod: Cow<'de, str>, key: Option<Cow<'de, str>>, data: Self::Data);
}

struct Vector<F>(F);

impl<'de, F: FnMut(Cow<'de, str>, Option<Cow<'de, str>>, f64)> Sink<'de> for Vector<F> {
    const RESULT_TYPE: &'static str = "vector";
    const DATA_FIELD: &'static str = "value";
    type Data = f64;
    // A series without a float value (a native histogram) is an error.
    const MISSING: Option<fn() -> f64> = None;

    fn data<D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(PointSeed.deserialize(deserializer)?.1)
    }

    fn take(&mut self, pod: Cow<'de, str>, key: Option<Cow<'de, str>>, value: f64) {
        (self.0)(pod, key, value)
    }
}

struct Matrix<F>(F);

impl<'de, F: FnMut(Cow<'de, str>, Option<Cow<'de, str>>, Vec<(f64, f64)>)> Sink<'de> for Matrix<F> {
    const RESULT_TYPE: &'static str = "matrix";
    const DATA_FIELD: &'static str = "values";
    type Data = Vec<(f64, f64)>;
    const MISSING: Option<fn() -> Vec<(f64, f64)>> = Some(Vec::new);

    fn data<D: Deserializer<'de>>(deserializer: D) -> Result<Self::Data, D::Error> {
        deserializer.deserialize_seq(PointsVisitor)
    }

    fn take(&mut self, pod: Cow<'de, str>, key: Option<Cow<'de, str>>, points: Self::Data) {
        (self.0)(pod, key, points)
    }
}

/// Gives up on the answer: the message is never shown, the full parser's is.
fn give_up<E: de::Error>() -> E {
    E::custom("left to the full parser")
}

/// Which of the known names a map key is, compared without copying it.
struct KeySeed<'n>(&'n [&'n str]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    /// The index of the name in the list, or None for any other key.
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|known| *known == name))
    }
}

/// A string, borrowed from the body unless escapes forced a copy.
struct CowStr;

impl<'de> DeserializeSeed<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(text))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text.to_owned()))
    }
}

/// Any string, checked and dropped: a field the full parser reads as `String`.
struct AnyStr;

impl<'de> de::Deserialize<'de> for AnyStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(AnyStr)
    }
}

impl<'de> Visitor<'de> for AnyStr {
    type Value = AnyStr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(AnyStr)
    }
}

struct EnvelopeVisitor<'w, 's, S> {
    wanted: Wanted<'w>,
    sink: &'s mut S,
}

impl<'de, S: Sink<'de>> Visitor<'de> for EnvelopeVisitor<'_, '_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Prometheus API answer")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const FIELDS: &[&str] = &["status", "data", "errorType", "error"];
        let mut seen = [false; FIELDS.len()];
        while let Some(field) = map.next_key_seed(KeySeed(FIELDS))? {
            let Some(field) = field else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            // The full parser refuses a field given twice.
            if std::mem::replace(&mut seen[field], true) {
                return Err(give_up());
            }
            match FIELDS[field] {
                "status" => {
                    if map.next_value_seed(CowStr)? != "success" {
                        return Err(give_up());
                    }
                }
                "data" => map.next_value_seed(DataVisitor {
                    wanted: self.wanted,
                    sink: &mut *self.sink,
                })?,
                // Neither is read from a successful answer, but each must be a string or null.
                _ => {
                    map.next_value::<Option<AnyStr>>()?;
                }
            }
        }
        if seen[0] && seen[1] {
            Ok(())
        } else {
            Err(give_up())
        }
    }
}

struct DataVisitor<'w, 's, S> {
    wanted: Wanted<'w>,
    sink: &'s mut S,
}

impl<'de, S: Sink<'de>> DeserializeSeed<'de> for DataVisitor<'_, '_, S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, S: Sink<'de>> Visitor<'de> for DataVisitor<'_, '_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the data of a Prometheus answer")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (mut result_type, mut result) = (false, false);
        while let Some(field) = map.next_key_seed(KeySeed(&["resultType", "result"]))? {
            match field {
                Some(0) if !result_type => {
                    result_type = true;
                    if map.next_value_seed(CowStr)? != S::RESULT_TYPE {
                        return Err(give_up());
                    }
                }
                // Prometheus names the type first, but JSON writers that sort keys do not:
                // a result read before its type counts only once the type is the one expected.
                Some(1) if !result => {
                    result = true;
                    map.next_value_seed(ResultVisitor {
                        wanted: self.wanted,
                        sink: &mut *self.sink,
                    })?;
                }
                Some(_) => return Err(give_up()),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if result_type && result {
            Ok(())
        } else {
            Err(give_up())
        }
    }
}

struct ResultVisitor<'w, 's, S> {
    wanted: Wanted<'w>,
    sink: &'s mut S,
}

impl<'de, S: Sink<'de>> DeserializeSeed<'de> for ResultVisitor<'_, '_, S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, S: Sink<'de>> Visitor<'de> for ResultVisitor<'_, '_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of series")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some((pod, key, data)) = seq.next_element_seed(SeriesVisitor::<S> {
            wanted: self.wanted,
            sink: PhantomData,
        })? {
            self.sink.take(pod, key, data);
        }
        Ok(())
    }
}

struct SeriesVisitor<'w, S> {
    wanted: Wanted<'w>,
    sink: PhantomData<S>,
}

type SeriesOf<'de, S> = (Cow<'de, str>, Option<Cow<'de, str>>, <S as Sink<'de>>::Data);

impl<'de, S: Sink<'de>> DeserializeSeed<'de> for SeriesVisitor<'_, S> {
    type Value = SeriesOf<'de, S>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, S: Sink<'de>> Visitor<'de> for SeriesVisitor<'_, S> {
    type Value = SeriesOf<'de, S>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a series")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut labels = None;
        let mut data = None;
        while let Some(field) = map.next_key_seed(KeySeed(&["metric", S::DATA_FIELD]))? {
            match field {
                Some(0) if labels.is_none() => {
                    labels = Some(map.next_value_seed(LabelsVisitor(self.wanted))?);
                }
                Some(1) if data.is_none() => {
                    data = Some(map.next_value_seed(DataSeed::<S>(PhantomData))?);
                }
                Some(_) => return Err(give_up()),
                // Borrowed as raw text: the full parser checks its encoding too.
                None => {
                    map.next_value::<&RawValue>()?;
                }
            }
        }
        let Some((Some(pod), key)) = labels else {
            return Err(give_up());
        };
        if self.wanted.key.is_some() && key.is_none() {
            return Err(give_up());
        }
        let data = match (data, S::MISSING) {
            (Some(data), _) => data,
            (None, Some(missing)) => missing(),
            (None, None) => return Err(give_up()),
        };
        Ok((pod, key, data))
    }
}

struct DataSeed<S>(PhantomData<S>);

impl<'de, S: Sink<'de>> DeserializeSeed<'de> for DataSeed<S> {
    type Value = S::Data;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Data, D::Error> {
        S::data(deserializer)
    }
}

/// The pod and key labels of a series; every other label is checked to be a string.
struct LabelsVisitor<'w>(Wanted<'w>);

type PodAndKey<'de> = (Option<Cow<'de, str>>, Option<Cow<'de, str>>);

impl<'de> DeserializeSeed<'de> for LabelsVisitor<'_> {
    type Value = PodAndKey<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LabelsVisitor<'_> {
    type Value = PodAndKey<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the labels of a series")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut pod, mut key) = (None, None);
        // The pod and the key may be the same label.
        let names = [self.0.pod, self.0.key.unwrap_or(self.0.pod)];
        while let Some(label) = map.next_key_seed(LabelSeed(names))? {
            // A label given twice keeps its last value, as in the full parser's map.
            match label {
                (false, false) => {
                    map.next_value::<AnyStr>()?;
                }
                (is_pod, is_key) => {
                    let value = map.next_value_seed(CowStr)?;
                    if is_key && self.0.key.is_some() {
                        key = Some(value.clone());
                    }
                    if is_pod {
                        pod = Some(value);
                    }
                }
            }
        }
        Ok((pod, key))
    }
}

/// Whether a label name is the pod label, the key label, both or neither.
struct LabelSeed<'n>([&'n str; 2]);

impl<'de> DeserializeSeed<'de> for LabelSeed<'_> {
    type Value = (bool, bool);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for LabelSeed<'_> {
    type Value = (bool, bool);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a label name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok((name == self.0[0], name == self.0[1]))
    }
}

/// One `[unix seconds, "value"]` pair, the value read as Prometheus writes it.
struct PointSeed;

impl<'de> DeserializeSeed<'de> for PointSeed {
    type Value = (f64, f64);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PointSeed {
    type Value = (f64, f64);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [time, value] pair")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let time: f64 = seq.next_element()?.ok_or_else(give_up)?;
        let text = seq.next_element_seed(CowStr)?.ok_or_else(give_up)?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(give_up());
        }
        let value = sample_value(&text).ok_or_else(give_up)?;
        Ok((time, value))
    }
}

struct PointsVisitor;

impl<'de> Visitor<'de> for PointsVisitor {
    type Value = Vec<(f64, f64)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of [time, value] pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut points = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(point) = seq.next_element_seed(PointSeed)? {
            points.push(point);
        }
        Ok(points)
    }
}
