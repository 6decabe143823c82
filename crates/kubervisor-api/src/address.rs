//! The addresses users write in `prometheusService` and `customService`.
//!
//! Parsed here, in the API crate, so that `kubervisor check` and the operator's
//! `InvalidSpec` refuse an unusable address up front, with the same words the
//! metric sources would use.

use std::fmt;

use http::uri::{Authority, Uri};

/// An address that cannot be used, with the field it was written in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} `{address}`: {reason}")]
pub struct AddressError {
    /// `prometheusService` or `customService`.
    pub field: &'static str,
    pub address: String,
    /// What is wrong, without the field or the address.
    pub reason: String,
}

/// A parsed, normalised source address: scheme, authority and path, no trailing slash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    https: bool,
    authority: String,
    /// The path (and for custom detectors the query), without a trailing `/`; may be empty.
    path: String,
}

impl Endpoint {
    /// Parses a `prometheusService`: `host:port` (plain HTTP) or a full URL whose path is a prefix.
    pub fn prometheus(address: &str) -> Result<Endpoint, AddressError> {
        Endpoint::parse("prometheusService", address, false)
    }

    /// Parses a `customService`: `host[:port][/path]` (plain HTTP) or a full URL.
    pub fn custom(address: &str) -> Result<Endpoint, AddressError> {
        Endpoint::parse("customService", address, true)
    }

    fn parse(
        field: &'static str,
        address: &str,
        allow_query: bool,
    ) -> Result<Endpoint, AddressError> {
        let invalid = |reason: String| AddressError {
            field,
            address: address.to_string(),
            reason,
        };
        let trimmed = address.trim();
        if trimmed.is_empty() {
            return Err(invalid("the address is empty".into()));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("the address contains whitespace".into()));
        }
        let (https, rest) = match trimmed.split_once("://") {
            None => (false, trimmed),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, _)) => {
                return Err(invalid(format!(
                    "unsupported scheme `{scheme}`, use http:// or https://"
                )));
            }
        };
        if rest.contains('#') {
            return Err(invalid("a fragment (`#…`) has no meaning here".into()));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(invalid("the host is missing".into()));
        }
        if authority.contains('@') {
            return Err(invalid(
                "credentials in the address are not supported; configure a bearer token file instead"
                    .into(),
            ));
        }
        let parsed: Authority = authority
            .parse()
            .map_err(|e| invalid(format!("invalid host or port `{authority}`: {e}")))?;
        if parsed.host().is_empty() {
            return Err(invalid("the host is missing".into()));
        }
        // Skip an IPv6 literal's colons; whatever follows the last `:` must be a port number.
        let host_end = authority.rfind(']').map_or(0, |i| i + 1);
        if let Some((_, port)) = authority[host_end..].rsplit_once(':')
            && port.parse::<u16>().is_err()
        {
            return Err(invalid(format!(
                "invalid port `{port}` in `{authority}`, expected a number up to 65535"
            )));
        }
        if path.contains('?') && !allow_query {
            return Err(invalid(
                "a query string (`?…`) is not allowed, give the base URL only".into(),
            ));
        }
        let path = if path.contains('?') {
            path.to_string()
        } else {
            path.trim_end_matches('/').to_string()
        };
        let endpoint = Endpoint {
            https,
            authority: authority.to_ascii_lowercase(),
            path,
        };
        // The final URL must be one hyper accepts, or every request would fail later.
        endpoint
            .to_string()
            .parse::<Uri>()
            .map_err(|e| invalid(format!("not a valid URL: {e}")))?;
        Ok(endpoint)
    }

    /// The URL of an API path below this endpoint, e.g. `/api/v1/query`.
    pub fn join(&self, api_path: &str) -> String {
        format!("{self}{api_path}")
    }

    /// Whether requests go over TLS.
    pub fn is_https(&self) -> bool {
        self.https
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prom(address: &str) -> String {
        Endpoint::prometheus(address).unwrap().to_string()
    }

    #[test]
    fn host_and_port_means_plain_http() {
        assert_eq!(prom("prometheus:9090"), "http://prometheus:9090");
        assert_eq!(
            prom("prometheus.monitoring.svc:9090"),
            "http://prometheus.monitoring.svc:9090"
        );
        assert_eq!(prom("127.0.0.1:9090"), "http://127.0.0.1:9090");
        assert_eq!(prom("[::1]:9090"), "http://[::1]:9090");
        assert_eq!(prom("prometheus"), "http://prometheus");
    }

    #[test]
    fn full_urls_keep_their_path_prefix() {
        let endpoint = Endpoint::prometheus("https://prom.example:9090/prefix/").unwrap();
        assert!(endpoint.is_https());
        assert_eq!(
            endpoint.join("/api/v1/query"),
            "https://prom.example:9090/prefix/api/v1/query"
        );
        assert_eq!(prom("HTTP://Prom:9090"), "http://prom:9090");
        assert_eq!(prom("http://prom:9090/"), "http://prom:9090");
    }

    #[test]
    fn custom_service_accepts_paths_and_queries() {
        let custom = |a: &str| Endpoint::custom(a).unwrap().to_string();
        assert_eq!(
            custom("detector:8080/anomalies"),
            "http://detector:8080/anomalies"
        );
        assert_eq!(custom("detector/anomalies"), "http://detector/anomalies");
        assert_eq!(
            custom("https://detector/anomalies?service=shop"),
            "https://detector/anomalies?service=shop"
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_the_field_and_the_reason() {
        for (address, reason) in [
            ("", "empty"),
            ("ftp://prom:9090", "unsupported scheme `ftp`"),
            ("http://", "host is missing"),
            ("prom:notaport", "port"),
            ("prom:", "port"),
            ("prom:99999", "port"),
            ("http://user:pw@prom:9090", "credentials"),
            ("prom:9090/x?y=1", "query string"),
            ("prom 9090", "whitespace"),
        ] {
            let err = Endpoint::prometheus(address).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("prometheusService") && message.contains(reason),
                "{address:?}: {message}"
            );
            assert!(message.contains(address), "{address:?}: {message}");
        }
    }
}
