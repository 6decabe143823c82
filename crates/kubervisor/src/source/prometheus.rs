//! The Prometheus HTTP API: result types and the parsing of its answers.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::{Request, SourceError};

/// The labels of one series.
pub type Labels = BTreeMap<String, String>;

/// One series of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    /// Unix time in seconds.
    pub timestamp: f64,
    pub value: f64,
}

/// One series of a range result.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    /// (unix time in seconds, value), oldest first.
    pub values: Vec<(f64, f64)>,
}

/// The `data` of a successful query, by `resultType`.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryResult {
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
    Scalar { timestamp: f64, value: f64 },
    String { timestamp: f64, value: String },
}

impl QueryResult {
    /// The result type as Prometheus names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            QueryResult::Vector(_) => "vector",
            QueryResult::Matrix(_) => "matrix",
            QueryResult::Scalar { .. } => "scalar",
            QueryResult::String { .. } => "string",
        }
    }
}

/// Displays labels the way PromQL writes them: `{code="500", pod="a"}`.
pub(crate) struct DisplayLabels<'a>(pub &'a Labels);

impl fmt::Display for DisplayLabels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}={value:?}")?;
        }
        f.write_str("}")
    }
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    /// Kept as text and parsed once its type is known: no intermediate JSON tree.
    result: Box<serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct RawSample<'a> {
    #[serde(default)]
    metric: Labels,
    #[serde(borrow)]
    value: Option<(f64, std::borrow::Cow<'a, str>)>,
}

#[derive(Deserialize)]
struct RawSeries<'a> {
    #[serde(default)]
    metric: Labels,
    #[serde(default, borrow)]
    values: Vec<(f64, std::borrow::Cow<'a, str>)>,
}

/// Reads a Prometheus answer of any HTTP status: its JSON says whether the query failed and why.
pub(crate) fn parse_answer(
    request: &Request,
    status: http::StatusCode,
    body: &[u8],
) -> Result<QueryResult, SourceError> {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(_) if !status.is_success() => {
            return Err(SourceError::Http {
                request: request.clone(),
                status: status.as_u16(),
                body: excerpt(body),
            });
        }
        Err(e) => {
            return Err(request.decode(format!(
                "the answer is not Prometheus API JSON ({e}): {}",
                excerpt(body)
            )));
        }
    };
    if envelope.status != "success" {
        return Err(SourceError::Prometheus {
            request: request.clone(),
            error_type: envelope.error_type.unwrap_or_else(|| "unknown".into()),
            error: envelope.error.unwrap_or_else(|| {
                format!("status `{}` without an error message", envelope.status)
            }),
        });
    }
    if !status.is_success() {
        return Err(SourceError::Http {
            request: request.clone(),
            status: status.as_u16(),
            body: excerpt(body),
        });
    }
    let data = envelope
        .data
        .ok_or_else(|| request.decode("a successful answer without `data`".into()))?;
    parse_data(request, data)
}

fn parse_data(request: &Request, data: Data) -> Result<QueryResult, SourceError> {
    let shape = |e: serde_json::Error| {
        request.decode(format!(
            "a {} result of unexpected shape: {e}",
            data.result_type
        ))
    };
    match data.result_type.as_str() {
        "vector" => {
            let raw: Vec<RawSample> = serde_json::from_str(data.result.get()).map_err(shape)?;
            raw.into_iter()
                .map(|s| {
                    let Some((timestamp, value)) = s.value else {
                        return Err(request.decode(format!(
                            "series {} has no float value (a native histogram?)",
                            DisplayLabels(&s.metric)
                        )));
                    };
                    Ok(Sample {
                        value: parse_value(request, &value)?,
                        labels: s.metric,
                        timestamp,
                    })
                })
                .collect::<Result<_, _>>()
                .map(QueryResult::Vector)
        }
        "matrix" => {
            let raw: Vec<RawSeries> = serde_json::from_str(data.result.get()).map_err(shape)?;
            raw.into_iter()
                .map(|s| {
                    let values = s
                        .values
                        .iter()
                        .map(|(t, v)| Ok((*t, parse_value(request, v)?)))
                        .collect::<Result<_, SourceError>>()?;
                    Ok(Series {
                        labels: s.metric,
                        values,
                    })
                })
                .collect::<Result<_, _>>()
                .map(QueryResult::Matrix)
        }
        "scalar" => {
            let (timestamp, value): (f64, String) =
                serde_json::from_str(data.result.get()).map_err(shape)?;
            Ok(QueryResult::Scalar {
                timestamp,
                value: parse_value(request, &value)?,
            })
        }
        "string" => {
            let (timestamp, value): (f64, String) =
                serde_json::from_str(data.result.get()).map_err(shape)?;
            Ok(QueryResult::String { timestamp, value })
        }
        other => Err(request.decode(format!("unknown result type `{other}`"))),
    }
}

/// Prometheus writes sample values as strings, with `NaN`, `+Inf` and `-Inf` for the non-finite ones.
pub fn parse_value(request: &Request, text: &str) -> Result<f64, SourceError> {
    sample_value(text)
        .ok_or_else(|| request.decode(format!("sample value {text:?} is not a number")))
}

/// A sample value as Prometheus writes it, or None when it is not a number.
pub(crate) fn sample_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        // Rust would also read "inf" or "nan": only Prometheus' own spellings mean non-finite.
        _ => text.parse::<f64>().ok().filter(|value| value.is_finite()),
    }
}

/// The start of a body, for error messages: a few hundred characters of text at most.
pub(crate) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let single_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match single_line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &single_line[..cut]),
        None => single_line,
    }
}

/// `application/x-www-form-urlencoded`, written here to avoid a URL crate for one function.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(name, &mut out);
        out.push('=');
        percent_encode(value, &mut out);
    }
    out
}

fn percent_encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn request() -> Request {
        Request::Prometheus {
            base: "http://prom:9090".into(),
            promql: "up".into(),
        }
    }

    fn parse(status: u16, body: &str) -> Result<QueryResult, SourceError> {
        parse_answer(
            &request(),
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn vector_results_keep_labels_and_values() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"code":"200","pod":"a"},"value":[1700000000.5,"38"]},
            {"metric":{"code":"500","pod":"a"},"value":[1700000000.5,"6.5e1"]}]}}"#;
        assert_eq!(
            parse(200, body).unwrap(),
            QueryResult::Vector(vec![
                Sample {
                    labels: labels(&[("code", "200"), ("pod", "a")]),
                    timestamp: 1700000000.5,
                    value: 38.0
                },
                Sample {
                    labels: labels(&[("code", "500"), ("pod", "a")]),
                    timestamp: 1700000000.5,
                    value: 65.0
                },
            ])
        );
    }

    #[test]
    fn non_finite_values_are_read_explicitly() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"nan"},"value":[1,"NaN"]},
            {"metric":{"pod":"up"},"value":[1,"+Inf"]},
            {"metric":{"pod":"down"},"value":[1,"-Inf"]}]}}"#;
        let QueryResult::Vector(samples) = parse(200, body).unwrap() else {
            panic!("not a vector");
        };
        assert!(samples[0].value.is_nan());
        assert_eq!(samples[1].value, f64::INFINITY);
        assert_eq!(samples[2].value, f64::NEG_INFINITY);
    }

    #[test]
    fn values_that_are_not_numbers_are_refused() {
        for bad in ["infinity", "nan", "", "12abc", "0x10"] {
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"scalar","result":[1,"{bad}"]}}}}"#
            );
            let err = parse(200, &body).unwrap_err();
            assert_eq!(err.kind(), "decode", "{bad}: {err}");
            assert!(err.to_string().contains("is not a number"), "{err}");
        }
    }

    #[test]
    fn scalar_string_and_matrix_results() {
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[2,"-Inf"]}}"#;
        assert_eq!(
            parse(200, scalar).unwrap(),
            QueryResult::Scalar {
                timestamp: 2.0,
                value: f64::NEG_INFINITY
            }
        );
        let string = r#"{"status":"success","data":{"resultType":"string","result":[2,"hi"]}}"#;
        assert_eq!(
            parse(200, string).unwrap(),
            QueryResult::String {
                timestamp: 2.0,
                value: "hi".into()
            }
        );
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"pod":"a"},"values":[[1,"1"],[2,"NaN"],[3,"3"]]}]}}"#;
        let QueryResult::Matrix(series) = parse(200, matrix).unwrap() else {
            panic!("not a matrix");
        };
        assert_eq!(series[0].labels, labels(&[("pod", "a")]));
        assert_eq!(series[0].values.len(), 3);
        assert!(series[0].values[1].1.is_nan());
        assert_eq!(series[0].values[2], (3.0, 3.0));
    }

    #[test]
    fn prometheus_errors_are_surfaced_verbatim() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:9: parse error: unexpected <by>"}"#;
        let err = parse(400, body).unwrap_err();
        assert_eq!(err.kind(), "prometheus");
        let message = err.to_string();
        assert!(
            message.contains("bad_data")
                && message
                    .contains(r#"invalid parameter "query": 1:9: parse error: unexpected <by>"#)
                && message.contains("`up`")
                && message.contains("http://prom:9090"),
            "{message}"
        );
    }

    #[test]
    fn non_json_error_pages_give_the_status_and_an_excerpt() {
        let err = parse(502, "<html>Bad Gateway</html>").unwrap_err();
        assert_eq!(err.kind(), "http");
        assert!(err.to_string().contains("HTTP 502") && err.to_string().contains("Bad Gateway"));
        let err = parse(200, "not json").unwrap_err();
        assert_eq!(err.kind(), "decode");
        let long = "x".repeat(10_000);
        assert!(parse(500, &long).unwrap_err().to_string().len() < 600);
    }

    #[test]
    fn wrong_shapes_are_decode_errors() {
        for body in [
            r#"{"status":"success"}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":{"a":1}}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}"#,
            r#"{"status":"success","data":{"resultType":"histogram","result":[]}}"#,
        ] {
            assert_eq!(parse(200, body).unwrap_err().kind(), "decode", "{body}");
        }
    }

    #[test]
    fn form_encoding_escapes_everything_but_unreserved_characters() {
        assert_eq!(
            form_encode(&[
                ("query", "sum by (pod) (rate(x{a=\"b\"}[1m]))+1"),
                ("t", "é")
            ]),
            "query=sum%20by%20%28pod%29%20%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29%2B1&t=%C3%A9"
        );
    }
}
