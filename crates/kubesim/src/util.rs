//! Small helpers: timestamps, identifiers, JSON accessors.

use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

static RNG: AtomicU64 = AtomicU64::new(0);

/// A fast pseudo-random number (splitmix64); names and uids need uniqueness, not secrecy.
pub fn random_u64() -> u64 {
    if RNG.load(Ordering::Relaxed) == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (std::process::id() as u64) << 32;
        let _ = RNG.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut z = RNG
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random version-4-shaped UUID.
pub fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        a as u16 & 0x0fff,
        ((b >> 48) as u16 & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Five characters from the alphabet Kubernetes uses for generated names.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Now, as the RFC 3339 second-precision string Kubernetes `Time` uses.
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// Now plus some seconds, in the same format.
pub fn rfc3339_in(seconds: i64) -> String {
    let now = jiff::Timestamp::now().as_second().saturating_add(seconds);
    jiff::Timestamp::from_second(now)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now_rfc3339())
}

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

pub fn name_of(v: &Value) -> &str {
    str_at(v, "/metadata/name").unwrap_or_default()
}

pub fn namespace_of(v: &Value) -> &str {
    str_at(v, "/metadata/namespace").unwrap_or_default()
}

/// Labels of an object as an ordered map.
pub fn labels_of(v: &Value) -> std::collections::BTreeMap<String, String> {
    string_map(v.pointer("/metadata/labels"))
}

pub fn string_map(v: Option<&Value>) -> std::collections::BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Mutable access to `metadata`, creating it when missing.
pub fn metadata_mut(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Default::default());
    }
    let obj = v.as_object_mut().expect("just made an object");
    let md = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if !md.is_object() {
        *md = Value::Object(Default::default());
    }
    md.as_object_mut().expect("just made an object")
}

/// Whether a name is a valid DNS subdomain, as object names must be.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_identifiers_have_kubernetes_shapes() {
        let uid = super::new_uid();
        assert_eq!(uid.len(), 36);
        assert_ne!(uid, super::new_uid());
        assert_eq!(super::name_suffix().len(), 5);
        assert!(super::now_rfc3339().ends_with('Z'));
        assert!(super::valid_name("web-1.a"));
        assert!(!super::valid_name("Web"));
    }
}
