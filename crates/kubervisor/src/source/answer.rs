//! A Prometheus answer read in one pass for one rule.
//!
//! Only what the rule judges is read from each series: the pod label, the key label when
//! the rule has one, and the value (instant vector) or values (range matrix). Label values
//! are borrowed from the body, and nothing of a series outlives the call that hands it on.
//!
//! Two readers, tried in turn: a byte scanner for the plain form in which Prometheus writes
//! instant vectors (`compact`), then a serde visitor for any other spelling of the same
//! JSON. Each vouches only for answers it understands completely. On anything else (an
//! error answer, a missing label, a value that is not a number, a shape Prometheus does
//! not write) both give up, and the caller reads the body again with the full parser of
//! `prometheus.rs`, whose errors show the whole series. The readers agree with the full
//! parser on every answer they accept (a property test holds them to it), so findings and
//! errors are the same.

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

/// Where the series of an instant vector go.
pub(crate) trait VectorSink<'de> {
    /// A series: its pod, its key when wanted, its value.
    fn sample(&mut self, pod: Cow<'de, str>, key: Option<Cow<'de, str>>, value: f64);
    /// Forgets every series handed over so far: the answer is read again.
    fn restart(&mut self);
}

/// Reads an instant query's answer into `sink`, series by series in answer order.
/// False when the reader does not vouch for the answer (see the module's comment).
pub(crate) fn read_vector<'de, S: VectorSink<'de>>(
    status: StatusCode,
    body: &'de [u8],
    wanted: Wanted<'_>,
    sink: &mut S,
) -> bool {
    if !status.is_success() {
        return false;
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if compact::read_vector(text, wanted, sink).is_some() {
            return true;
        }
        sink.restart();
    }
    read(status, body, wanted, &mut Vector(sink))
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

struct Vector<'s, S>(&'s mut S);

impl<'de, S: VectorSink<'de>> Sink<'de> for Vector<'_, S> {
    const RESULT_TYPE: &'static str = "vector";
    const DATA_FIELD: &'static str = "value";
    type Data = f64;
    // A series without a float value (a native histogram) is an error.
    const MISSING: Option<fn() -> f64> = None;

    fn data<D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(PointSeed.deserialize(deserializer)?.1)
    }

    fn take(&mut self, pod: Cow<'de, str>, key: Option<Cow<'de, str>>, value: f64) {
        self.0.sample(pod, key, value)
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

/// The compact form in which Prometheus writes an instant vector, read byte by byte: about
/// twice as fast as the serde reader on large answers. It accepts only plain answers (the
/// fields Prometheus writes, strings without escapes, numbers without exponents) and
/// leaves anything else to the serde reader.
mod compact {
    use std::borrow::Cow;

    use super::{VectorSink, Wanted};
    use crate::source::prometheus::sample_value;

    /// The longest number read here: always within f64's range, as serde_json requires.
    const MAX_NUMBER: usize = 30;

    pub(super) fn read_vector<'de, S: VectorSink<'de>>(
        text: &'de str,
        wanted: Wanted<'_>,
        sink: &mut S,
    ) -> Option<()> {
        let mut scan = Scan { text, at: 0 };
        let (mut status, mut data) = (false, false);
        scan.object(|scan, field| match field {
            "status" if !status => {
                status = true;
                (scan.string()? == "success").then_some(())
            }
            "data" if !data => {
                data = true;
                scan.data(wanted, sink)
            }
            _ => None,
        })?;
        scan.skip_whitespace();
        (status && data && scan.at == text.len()).then_some(())
    }

    /// Where a string's bytes stop being plain: the first quote, backslash or control
    /// character. Eight bytes are tested at a time, with the classic bit tricks for "some
    /// byte is zero" and "some byte is less than n"; their lowest flagged byte is always
    /// exact (a false flag can only sit above a true one), and that is the one taken.
    pub(super) fn plain_string_end(bytes: &[u8]) -> Option<usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x;
        let mut at = 0;
        while let Some(chunk) = bytes.get(at..at + 8) {
            let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let hits = (zero_bytes(x ^ (ONES * u64::from(b'"')))
                | zero_bytes(x ^ (ONES * u64::from(b'\\')))
                | (x.wrapping_sub(ONES * 0x20) & !x))
                & HIGHS;
            if hits != 0 {
                return Some(at + hits.trailing_zeros() as usize / 8);
            }
            at += 8;
        }
        bytes[at..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .map(|i| at + i)
    }

    struct Scan<'de> {
        text: &'de str,
        at: usize,
    }

    impl<'de> Scan<'de> {
        fn skip_whitespace(&mut self) {
            let bytes = self.text.as_bytes();
            while let Some(b' ' | b'\n' | b'\t' | b'\r') = bytes.get(self.at) {
                self.at += 1;
            }
        }

        fn peek(&mut self) -> Option<u8> {
            self.skip_whitespace();
            self.text.as_bytes().get(self.at).copied()
        }

        fn eat(&mut self, byte: u8) -> Option<()> {
            (self.peek()? == byte).then(|| self.at += 1)
        }

        /// A string without escapes or control characters.
        fn string(&mut self) -> Option<&'de str> {
            self.eat(b'"')?;
            let rest = &self.text.as_bytes()[self.at..];
            let end = plain_string_end(rest)?;
            if rest[end] != b'"' {
                return None;
            }
            let string = self.text.get(self.at..self.at + end)?;
            self.at += end + 1;
            Some(string)
        }

        /// A JSON number without an exponent, skipped.
        fn number(&mut self) -> Option<()> {
            self.skip_whitespace();
            let bytes = &self.text.as_bytes()[self.at..];
            let digits = |from: usize| {
                from + bytes[from..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count()
            };
            let mut end = usize::from(bytes.first() == Some(&b'-'));
            end = match bytes.get(end)? {
                b'0' => end + 1,
                b'1'..=b'9' => digits(end + 1),
                _ => return None,
            };
            if bytes.get(end) == Some(&b'.') {
                let fraction = digits(end + 1);
                if fraction == end + 1 {
                    return None;
                }
                end = fraction;
            }
            if matches!(bytes.get(end), Some(b'e' | b'E')) || end > MAX_NUMBER {
                return None;
            }
            self.at += end;
            Some(())
        }

        /// An object whose members `member` reads, given each name.
        fn object(
            &mut self,
            mut member: impl FnMut(&mut Self, &'de str) -> Option<()>,
        ) -> Option<()> {
            self.eat(b'{')?;
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            loop {
                let name = self.string()?;
                self.eat(b':')?;
                member(self, name)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }

        fn data<S: VectorSink<'de>>(&mut self, wanted: Wanted<'_>, sink: &mut S) -> Option<()> {
            let (mut result_type, mut result) = (false, false);
            self.object(|scan, field| match field {
                "resultType" if !result_type => {
                    result_type = true;
                    (scan.string()? == "vector").then_some(())
                }
                "result" if !result => {
                    result = true;
                    scan.result(wanted, sink)
                }
                _ => None,
            })?;
            (result_type && result).then_some(())
        }

        fn result<S: VectorSink<'de>>(&mut self, wanted: Wanted<'_>, sink: &mut S) -> Option<()> {
            self.eat(b'[')?;
            if self.peek()? == b']' {
                self.at += 1;
                return Some(());
            }
            loop {
                self.series(wanted, sink)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b']' => {
                        self.at += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }

        fn series<S: VectorSink<'de>>(&mut self, wanted: Wanted<'_>, sink: &mut S) -> Option<()> {
            let (mut labels, mut value) = (None, None);
            self.object(|scan, field| match field {
                "metric" if labels.is_none() => {
                    labels = Some(scan.labels(wanted)?);
                    Some(())
                }
                "value" if value.is_none() => {
                    value = Some(scan.value()?);
                    Some(())
                }
                _ => None,
            })?;
            let (Some(pod), key) = labels? else {
                return None;
            };
            if wanted.key.is_some() && key.is_none() {
                return None;
            }
            let key = key.map(Cow::Borrowed);
            sink.sample(Cow::Borrowed(pod), key, value?);
            Some(())
        }

        /// The pod and key labels; a label given twice keeps its last value.
        fn labels(&mut self, wanted: Wanted<'_>) -> Option<(Option<&'de str>, Option<&'de str>)> {
            let (mut pod, mut key) = (None, None);
            self.object(|scan, name| {
                let value = scan.string()?;
                if name == wanted.pod {
                    pod = Some(value);
                }
                if wanted.key == Some(name) {
                    key = Some(value);
                }
                Some(())
            })?;
            Some((pod, key))
        }

        /// `[time, "value"]`: the value as Prometheus writes it.
        fn value(&mut self) -> Option<f64> {
            self.eat(b'[')?;
            self.number()?;
            self.eat(b',')?;
            let value = sample_value(self.string()?)?;
            self.eat(b']')?;
            Some(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::compact::plain_string_end;

    /// The byte-at-a-time definition the word-at-a-time search must agree with.
    fn by_bytes(bytes: &[u8]) -> Option<usize> {
        bytes
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    }

    /// Bytes next to the ones that stop a string, where a bit trick would go wrong.
    fn tricky_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            prop::sample::select(vec![
                0x00, 0x01, 0x1f, 0x20, 0x21, b'"', 0x23, b'\\', 0x5b, 0x5d, 0x7f, 0x80, 0x9f,
                0xa0, 0xa2, 0xdc, 0xff,
            ]),
            b'a'..=b'z',
            any::<u8>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn the_word_search_finds_the_first_byte_that_ends_a_plain_string(
            bytes in prop::collection::vec(tricky_byte(), 0..40),
        ) {
            prop_assert_eq!(plain_string_end(&bytes), by_bytes(&bytes));
        }
    }

    #[test]
    fn a_stop_byte_is_found_in_every_lane_behind_every_kind_of_byte() {
        for stop in [b'"', b'\\', 0x00, 0x1f] {
            for filler in [b'a', 0x20, 0x7f, 0x80, 0xff, b'#', b']'] {
                for at in 0..20 {
                    let mut bytes = vec![filler; 20];
                    bytes[at] = stop;
                    assert_eq!(
                        plain_string_end(&bytes),
                        Some(at),
                        "{stop:#x} at {at} in {filler:#x}"
                    );
                }
                assert_eq!(plain_string_end(&[filler; 20]), None);
            }
        }
    }
}
