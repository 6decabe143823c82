//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded
//! into the JSON that kubesim stores. kubectl's generators (`kubectl create deployment`,
//! `create namespace`, `create configmap`, ...) send built-in objects this way.
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` envelope naming apiVersion and
//! kind around the object's own bytes. The object is decoded by a table of field
//! numbers (`schema.txt`), following Go's JSON rules so the result is what a JSON client
//! would have sent: zero-valued plain scalars are left out (`omitempty`), explicit zeros
//! of pointer fields are kept, inlined structs merge into their parent. A field number
//! the table lacks is an error, never a silent drop.

mod schema;
mod wire;

use base64::Engine;
use schema::Shape;
use serde_json::{Map, Value};
use wire::Reader;

// Named by `DecodeError`'s variants.
pub use schema::Type;
pub use wire::{WireError, WireType};

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body could not be turned into JSON.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body does not start with the Kubernetes protobuf prefix \"k8s\\x00\"")]
    NoMagic,
    #[error("the protobuf envelope (runtime.Unknown) is malformed: {0}")]
    Envelope(WireError),
    #[error("the protobuf envelope names no apiVersion and kind")]
    NoTypeMeta,
    #[error("raw data with content encoding {0:?} is not supported")]
    ContentEncoding(String),
    #[error("raw data of content type {0:?} is not supported")]
    ContentType(String),
    /// A kind kubesim has no table for: the real server answers 415 for such bodies too.
    #[error("no protobuf serialization is known for {api_version}, Kind={kind}")]
    UnknownKind { api_version: String, kind: String },
    #[error("{path}: {source}")]
    Wire { path: String, source: WireError },
    #[error("{path}: unknown field number {number} of {message}")]
    UnknownField {
        path: String,
        number: u32,
        message: &'static str,
    },
    #[error("{path}: wire type {wire:?} cannot hold a {ty:?} value")]
    WireType {
        path: String,
        wire: WireType,
        ty: Type,
    },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error("the protobuf schema table is malformed: {0}")]
    Schema(&'static str),
}

impl DecodeError {
    fn invalid(path: &str, problem: impl Into<String>) -> Self {
        DecodeError::Invalid {
            path: path.to_string(),
            problem: problem.into(),
        }
    }
}

/// Messages whose JSON form is not a plain object of their fields.
const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";

fn is_special(message: &str) -> bool {
    matches!(
        message,
        TIME | MICRO_TIME | FIELDS_V1 | QUANTITY | INT_OR_STRING | RAW_EXTENSION
    )
}

/// Decodes a whole protobuf body into a JSON object with `apiVersion` and `kind`.
pub fn decode_object(body: &[u8]) -> Result<Value, DecodeError> {
    let rest = body.strip_prefix(MAGIC).ok_or(DecodeError::NoMagic)?;
    let envelope = Envelope::read(rest).map_err(DecodeError::Envelope)?;
    if envelope.api_version.is_empty() || envelope.kind.is_empty() {
        return Err(DecodeError::NoTypeMeta);
    }
    if !envelope.content_encoding.is_empty() {
        return Err(DecodeError::ContentEncoding(envelope.content_encoding));
    }
    let mut object = match envelope.content_type.as_str() {
        "" | MEDIA_TYPE => {
            let message = message_for(&envelope.api_version, &envelope.kind)?;
            let mut out = Map::new();
            decode_message(message, envelope.raw, &envelope.kind, &mut out)?;
            out
        }
        ct if ct.contains("json") => match serde_json::from_slice(envelope.raw) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(DecodeError::invalid(
                    &envelope.kind,
                    "raw is not a JSON object",
                ));
            }
        },
        ct => return Err(DecodeError::ContentType(ct.to_string())),
    };
    object.insert("apiVersion".into(), Value::String(envelope.api_version));
    object.insert("kind".into(), Value::String(envelope.kind));
    Ok(Value::Object(object))
}

/// `runtime.Unknown`: typeMeta (1: apiVersion, 2: kind), raw, contentEncoding, contentType.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Envelope<'a> {
    fn read(buf: &'a [u8]) -> Result<Self, WireError> {
        let mut env = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut r = Reader::new(buf);
        while let Some((number, wire)) = r.key()? {
            match (number, wire) {
                (1, WireType::Len) => {
                    let mut tm = Reader::new(r.bytes()?);
                    while let Some((n, w)) = tm.key()? {
                        match (n, w) {
                            (1, WireType::Len) => env.api_version = text(tm.bytes()?),
                            (2, WireType::Len) => env.kind = text(tm.bytes()?),
                            _ => tm.skip(w)?,
                        }
                    }
                }
                (2, WireType::Len) => env.raw = r.bytes()?,
                (3, WireType::Len) => env.content_encoding = text(r.bytes()?),
                (4, WireType::Len) => env.content_type = text(r.bytes()?),
                _ => r.skip(wire)?,
            }
        }
        Ok(env)
    }
}

/// The table entry for a built-in kind: `apps/v1` `Deployment` is `api.apps.v1.Deployment`.
fn message_for(api_version: &str, kind: &str) -> Result<&'static str, DecodeError> {
    let unknown = || DecodeError::UnknownKind {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => "core",
        g => g
            .strip_suffix(".k8s.io")
            .map_or(g, |g| g.split('.').next().unwrap_or(g)),
    };
    let name = format!("api.{package}.{version}.{kind}");
    let schema = schema::schema().map_err(DecodeError::Schema)?;
    schema
        .get_key_value(name.as_str())
        .map(|(k, _)| *k)
        .ok_or_else(unknown)
}

/// Decodes one message's fields into `out` (the parent's object for inlined structs).
fn decode_message(
    message: &'static str,
    bytes: &[u8],
    path: &str,
    out: &mut Map<String, Value>,
) -> Result<(), DecodeError> {
    let schema = schema::schema().map_err(DecodeError::Schema)?;
    let fields = &schema
        .get(message)
        .ok_or_else(|| DecodeError::invalid(path, format!("no table for {message}")))?
        .fields;
    let wire_err = |source| DecodeError::Wire {
        path: path.to_string(),
        source,
    };
    let mut r = Reader::new(bytes);
    while let Some((number, wire)) = r.key().map_err(wire_err)? {
        let field = fields
            .get(&number)
            .ok_or_else(|| DecodeError::UnknownField {
                path: path.to_string(),
                number,
                message,
            })?;
        let Some(name) = field.json else {
            // An inlined struct: its fields belong to this object.
            let Type::Message(inner) = field.ty else {
                return Err(DecodeError::invalid(path, "inlined field is not a message"));
            };
            let b = expect_len(&mut r, wire, path, field.ty)?;
            decode_message(inner, b, path, out)?;
            continue;
        };
        let child = format!("{path}.{name}");
        match field.shape {
            Shape::Single => {
                let value = decode_value(field.ty, wire, &mut r, &child)?;
                if field.pointer || !is_zero(field.ty, &value) {
                    out.insert(name.to_string(), value);
                } else {
                    out.remove(name);
                }
            }
            Shape::Repeated => {
                let list = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else {
                    return Err(DecodeError::invalid(&child, "repeated field set twice"));
                };
                if wire == WireType::Len && is_packable(field.ty) {
                    let mut packed = Reader::new(r.bytes().map_err(wire_err)?);
                    let scalar_wire = if matches!(field.ty, Type::Double) {
                        WireType::Fixed64
                    } else if matches!(field.ty, Type::Float) {
                        WireType::Fixed32
                    } else {
                        WireType::Varint
                    };
                    while !packed.is_empty() {
                        list.push(decode_value(field.ty, scalar_wire, &mut packed, &child)?);
                    }
                } else {
                    list.push(decode_value(field.ty, wire, &mut r, &child)?);
                }
            }
            Shape::Map => {
                let entry = expect_len(&mut r, wire, &child, field.ty)?;
                let (key, value) = decode_map_entry(field.ty, entry, &child)?;
                let map = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(map) = map else {
                    return Err(DecodeError::invalid(&child, "map field set twice"));
                };
                map.insert(key, value);
            }
        }
    }
    Ok(())
}

fn decode_map_entry(ty: Type, bytes: &[u8], path: &str) -> Result<(String, Value), DecodeError> {
    let wire_err = |source| DecodeError::Wire {
        path: path.to_string(),
        source,
    };
    let mut key = String::new();
    let mut value = None;
    let mut r = Reader::new(bytes);
    while let Some((number, wire)) = r.key().map_err(wire_err)? {
        match number {
            1 => {
                key = match decode_value(Type::String, wire, &mut r, path)? {
                    Value::String(s) => s,
                    _ => String::new(),
                }
            }
            2 => value = Some(decode_value(ty, wire, &mut r, &format!("{path}[{key:?}]"))?),
            n => {
                return Err(DecodeError::invalid(
                    path,
                    format!("unknown field number {n} of a map entry"),
                ));
            }
        }
    }
    let value = match value {
        Some(v) => v,
        None => zero_value(ty),
    };
    Ok((key, value))
}

fn expect_len<'a>(
    r: &mut Reader<'a>,
    wire: WireType,
    path: &str,
    ty: Type,
) -> Result<&'a [u8], DecodeError> {
    if wire != WireType::Len {
        return Err(DecodeError::WireType {
            path: path.to_string(),
            wire,
            ty,
        });
    }
    r.bytes().map_err(|source| DecodeError::Wire {
        path: path.to_string(),
        source,
    })
}

fn is_packable(ty: Type) -> bool {
    matches!(
        ty,
        Type::Bool | Type::Int32 | Type::Int64 | Type::Double | Type::Float
    )
}

fn decode_value(
    ty: Type,
    wire: WireType,
    r: &mut Reader<'_>,
    path: &str,
) -> Result<Value, DecodeError> {
    let wire_err = |source| DecodeError::Wire {
        path: path.to_string(),
        source,
    };
    let mismatch = || DecodeError::WireType {
        path: path.to_string(),
        wire,
        ty,
    };
    Ok(match (ty, wire) {
        (Type::String, WireType::Len) => {
            let b = r.bytes().map_err(wire_err)?;
            let s = std::str::from_utf8(b)
                .map_err(|_| DecodeError::invalid(path, "string is not valid UTF-8"))?;
            Value::String(s.to_string())
        }
        (Type::Bytes, WireType::Len) => Value::String(
            base64::engine::general_purpose::STANDARD.encode(r.bytes().map_err(wire_err)?),
        ),
        (Type::Bool, WireType::Varint) => Value::Bool(r.varint().map_err(wire_err)? != 0),
        // Negative int32s are sign-extended to 64 bits on the wire.
        (Type::Int32, WireType::Varint) => Value::from(r.varint().map_err(wire_err)? as i64 as i32),
        (Type::Int64, WireType::Varint) => Value::from(r.varint().map_err(wire_err)? as i64),
        (Type::Double, WireType::Fixed64) => {
            Value::from(f64::from_bits(r.fixed64().map_err(wire_err)?))
        }
        (Type::Float, WireType::Fixed32) => {
            Value::from(f64::from(f32::from_bits(r.fixed32().map_err(wire_err)?)))
        }
        (Type::Message(m), WireType::Len) => {
            let b = r.bytes().map_err(wire_err)?;
            if is_special(m) {
                decode_special(m, b, path)?
            } else {
                let mut out = Map::new();
                decode_message(m, b, path, &mut out)?;
                Value::Object(out)
            }
        }
        _ => return Err(mismatch()),
    })
}

/// Whether Go's `omitempty` leaves this value out of JSON (for non-pointer fields).
fn is_zero(ty: Type, v: &Value) -> bool {
    match (ty, v) {
        (_, Value::Null) => true,
        (Type::String | Type::Bytes, Value::String(s)) => s.is_empty(),
        (Type::Bool, Value::Bool(b)) => !b,
        (Type::Int32 | Type::Int64 | Type::Double | Type::Float, Value::Number(n)) => {
            n.as_f64() == Some(0.0)
        }
        // A zero IntOrString means "unset" (a Service's targetPort then defaults to its port).
        (Type::Message(INT_OR_STRING), Value::Number(n)) => n.as_i64() == Some(0),
        _ => false,
    }
}

fn zero_value(ty: Type) -> Value {
    match ty {
        Type::String | Type::Bytes => Value::String(String::new()),
        Type::Bool => Value::Bool(false),
        Type::Int32 | Type::Int64 | Type::Double | Type::Float => Value::from(0),
        Type::Message(QUANTITY) => Value::String("0".into()),
        Type::Message(_) => Value::Object(Map::new()),
    }
}

/// Scalar fields of a small message, by number (for the hand-decoded ones).
fn small_fields(bytes: &[u8], path: &str) -> Result<Vec<(u32, SmallValue)>, DecodeError> {
    let wire_err = |source| DecodeError::Wire {
        path: path.to_string(),
        source,
    };
    let mut out = Vec::new();
    let mut r = Reader::new(bytes);
    while let Some((number, wire)) = r.key().map_err(wire_err)? {
        let v = match wire {
            WireType::Varint => SmallValue::Int(r.varint().map_err(wire_err)?),
            WireType::Len => SmallValue::Bytes(r.bytes().map_err(wire_err)?.to_vec()),
            other => {
                return Err(DecodeError::invalid(
                    path,
                    format!("unexpected wire type {other:?} in field {number}"),
                ));
            }
        };
        out.push((number, v));
    }
    Ok(out)
}

enum SmallValue {
    Int(u64),
    Bytes(Vec<u8>),
}

fn decode_special(message: &str, bytes: &[u8], path: &str) -> Result<Value, DecodeError> {
    let fields = small_fields(bytes, path)?;
    let int = |n: u32| {
        fields.iter().rev().find_map(|(k, v)| match v {
            SmallValue::Int(i) if *k == n => Some(*i),
            _ => None,
        })
    };
    let raw = |n: u32| {
        fields.iter().rev().find_map(|(k, v)| match v {
            SmallValue::Bytes(b) if *k == n => Some(b.as_slice()),
            _ => None,
        })
    };
    let text = |n: u32| -> Result<String, DecodeError> {
        let b = raw(n).unwrap_or_default();
        String::from_utf8(b.to_vec())
            .map_err(|_| DecodeError::invalid(path, "string is not valid UTF-8"))
    };
    let json = |n: u32| -> Result<Value, DecodeError> {
        match raw(n) {
            None | Some([]) => Ok(Value::Null),
            Some(b) => serde_json::from_slice(b)
                .map_err(|e| DecodeError::invalid(path, format!("embedded JSON is invalid: {e}"))),
        }
    };
    Ok(match message {
        // Go marshals a zero Time as null; metav1.Time has second precision in JSON.
        TIME | MICRO_TIME => {
            let seconds = int(1).unwrap_or(0) as i64;
            let nanos = int(2).unwrap_or(0) as i64 as i32;
            if seconds == 0 && nanos == 0 {
                return Ok(Value::Null);
            }
            let t = jiff::Timestamp::from_second(seconds)
                .map_err(|e| DecodeError::invalid(path, format!("time out of range: {e}")))?;
            if message == TIME {
                Value::String(t.to_string())
            } else {
                let base = t.to_string();
                let base = base.trim_end_matches('Z');
                Value::String(format!("{base}.{:06}Z", nanos.clamp(0, 999_999_999) / 1000))
            }
        }
        QUANTITY => Value::String(text(1)?),
        INT_OR_STRING => match int(1).unwrap_or(0) {
            0 => Value::from(int(2).unwrap_or(0) as i64 as i32),
            _ => Value::String(text(3)?),
        },
        FIELDS_V1 | RAW_EXTENSION => json(1)?,
        other => {
            return Err(DecodeError::invalid(
                path,
                format!("no decoder for {other}"),
            ));
        }
    })
}

#[cfg(test)]
mod tests;
