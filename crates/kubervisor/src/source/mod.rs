//! Metric sources: Prometheus queries and custom detectors, feeding the core detectors.
//!
//! One evaluation of a breaker is one request. Identical Prometheus requests in flight at the
//! same time (same endpoint, same PromQL) share one HTTP exchange. Every failure is an error
//! value, never an empty or a full set of anomalies: the caller ejects nothing because of it.

mod answer;
mod custom;
mod prometheus;
mod transport;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http::{HeaderValue, Method, StatusCode, header};
use kubervisor_api::{ContinuousRule, CustomRule, Detection, DiscreteRule, TrendRule};
use kubervisor_core::detect::{
    self, ContinuousSample, DiscreteSample, Findings, Tallies, TrendSeries,
};

use kubervisor_api::address::AddressError;
pub use kubervisor_api::address::Endpoint;
pub use prometheus::{Labels, QueryResult, Sample, Series};

use answer::Wanted;
use prometheus::DisplayLabels;
pub(crate) use transport::HttpClient;
use transport::{Answer, Roots, TransportError};

/// Largest answer read from a source by default (`--source-max-body-mib`): a runaway
/// query, a flood of series or a hostile detector cannot exhaust the operator's memory.
pub const DEFAULT_MAX_BODY: usize = 32 << 20;

/// How the controller reaches its sources; configured once at startup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSettings {
    /// A file holding a bearer token sent to Prometheus (never to custom detectors).
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM bundle of the authorities HTTPS sources are checked against, instead of the system's.
    pub ca_bundle: Option<PathBuf>,
    /// How long a custom detector may take to answer.
    pub custom_timeout: Duration,
    /// The cap of a Prometheus query's timeout, which is otherwise the evaluation period.
    pub max_query_timeout: Duration,
    /// Largest answer read from any source, in bytes; a larger one is a source error.
    pub max_body: usize,
}

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            bearer_token_file: None,
            ca_bundle: None,
            custom_timeout: Duration::from_secs(1),
            max_query_timeout: Duration::from_secs(10),
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Reads a Prometheus HTTP API answer (`/api/v1/query` or `query_range`) as the operator
/// does, without the transfer: for benchmarks and fuzzing. `request` names it in errors.
pub fn parse_prometheus_answer(
    request: &Request,
    status: u16,
    body: &[u8],
) -> Result<QueryResult, SourceError> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    prometheus::parse_answer(request, status, body)
}

/// Judges a source's answer for one breaker's detection as the operator does, without the
/// transfer: the answer to the detection's query (`/api/v1/query`, or `query_range` for a
/// `valueTrend`) or a custom detector's `PodList`. For benchmarks and fuzzing; `request`
/// names it in errors.
pub fn findings_from_answer(
    request: &Request,
    status: u16,
    body: &[u8],
    detection: &Detection,
) -> Result<Findings, SourceError> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    judge_answer(request, status, body, detection)
}

/// Reads a custom detector's `PodList` answer as the operator does: the anomalous pods.
pub fn parse_custom_answer(request: &Request, body: &[u8]) -> Result<Vec<String>, SourceError> {
    custom::parse_pod_list(request, body)
}

/// What was asked of which source, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Prometheus { base: String, promql: String },
    Custom { url: String },
}

impl Request {
    fn decode(&self, reason: String) -> SourceError {
        SourceError::Decode {
            request: self.clone(),
            reason,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Prometheus { base, promql } => {
                write!(f, "query `{promql}` to Prometheus {base}")
            }
            Request::Custom { url } => write!(f, "custom detector {url}"),
        }
    }
}

/// Why a source gave no usable answer. Cloneable because one answer may serve several breakers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("invalid {field} `{address}`: {reason}")]
    Address {
        field: &'static str,
        address: String,
        reason: String,
    },
    #[error("cannot use the {what} {}: {reason}", path.display())]
    Config {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{request}: {reason}")]
    Unreachable { request: Request, reason: String },
    #[error("{request}: no complete answer after {} s", after.as_secs_f64())]
    Timeout { request: Request, after: Duration },
    #[error("{request}: HTTP {status}: {body}")]
    Http {
        request: Request,
        status: u16,
        body: String,
    },
    #[error("{request}: Prometheus answered {error_type}: {error}")]
    Prometheus {
        request: Request,
        error_type: String,
        error: String,
    },
    #[error("{request}: {reason}")]
    Decode { request: Request, reason: String },
    #[error(
        "series {series} of {request} has no label `{label}` (the breaker's {field}); keep it in the query's `by (…)` clause"
    )]
    MissingLabel {
        request: Request,
        series: String,
        label: String,
        field: &'static str,
    },
}

impl From<AddressError> for SourceError {
    fn from(e: AddressError) -> Self {
        SourceError::Address {
            field: e.field,
            address: e.address,
            reason: e.reason,
        }
    }
}

impl SourceError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Address { .. } => "address",
            SourceError::Config { .. } => "config",
            SourceError::Unreachable { .. } => "unreachable",
            SourceError::Timeout { .. } => "timeout",
            SourceError::Http { .. } => "http",
            SourceError::Prometheus { .. } => "prometheus",
            SourceError::Decode { .. } => "decode",
            SourceError::MissingLabel { .. } => "missing_label",
        }
    }
}

type Flight = Shared<BoxFuture<'static, Result<Answer, SourceError>>>;

/// The metric sources of the controller: cheap to clone, shared by every breaker.
#[derive(Clone)]
pub struct Sources {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    authorization: Option<HeaderValue>,
    settings: SourceSettings,
    /// Prometheus requests under way, keyed by URL and form body (without the timeout).
    in_flight: Mutex<HashMap<(String, String), Flight>>,
    /// Source addresses already read, by kind and address as written in the spec: every
    /// evaluation of a breaker uses the same one.
    addresses: Mutex<HashMap<AddressKind, AddressesRead>>,
}

/// Addresses as written in specs, and what each reads as.
type AddressesRead = HashMap<Box<str>, Arc<Address>>;

/// Distinct addresses remembered at most; past that the memory starts again. Far more than
/// clusters use (most breakers share a Prometheus), so that it never starts again at every
/// evaluation: one address per breaker of 20,000 breakers is about 3 MiB.
const ADDRESSES_KEPT: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AddressKind {
    Prometheus,
    Custom,
}

/// A source address read once: where requests go.
#[derive(Debug)]
struct Address {
    endpoint: Endpoint,
    /// The endpoint as a URL.
    url: String,
}

impl fmt::Debug for Sources {
    // By hand, so the bearer token never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Sources {
    /// Reads the token file and the CA bundle once; a missing or bad file is an error naming it.
    pub fn new(settings: SourceSettings) -> Result<Sources, SourceError> {
        let authorization = settings
            .bearer_token_file
            .as_deref()
            .map(read_bearer_token)
            .transpose()?;
        let roots = match settings.ca_bundle.as_deref() {
            Some(path) => {
                let config_error = |reason: String| SourceError::Config {
                    what: "CA bundle",
                    path: path.to_path_buf(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| config_error(e.to_string()))?;
                Roots::Bundle(transport::roots_from_pem(&pem).map_err(config_error)?)
            }
            None => Roots::Native,
        };
        let http = HttpClient::new(roots).map_err(|e| SourceError::Config {
            what: "TLS settings",
            path: settings.ca_bundle.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        Ok(Sources {
            inner: Arc::new(Inner {
                http,
                authorization,
                settings,
                in_flight: Mutex::new(HashMap::new()),
                addresses: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Reads a source address, or finds it read already.
    fn address(&self, kind: AddressKind, written: &str) -> Result<Arc<Address>, SourceError> {
        // The map holds no invariant a panic could break halfway.
        let lock = || {
            self.inner
                .addresses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if let Some(address) = lock().get(&kind).and_then(|a| a.get(written)) {
            return Ok(address.clone());
        }
        let endpoint = match kind {
            AddressKind::Prometheus => Endpoint::prometheus(written)?,
            AddressKind::Custom => Endpoint::custom(written)?,
        };
        let address = Arc::new(Address {
            url: endpoint.to_string(),
            endpoint,
        });
        let mut addresses = lock();
        let of_kind = addresses.entry(kind).or_default();
        if of_kind.len() >= ADDRESSES_KEPT {
            of_kind.clear();
        }
        of_kind.insert(written.into(), address.clone());
        Ok(address)
    }

    fn prometheus_address(&self, written: &str) -> Result<Arc<Address>, SourceError> {
        self.address(AddressKind::Prometheus, written)
    }

    /// The timeout of a breaker's query: its evaluation period, capped.
    pub fn query_timeout(&self, evaluation_period: Duration) -> Duration {
        let cap = self.inner.settings.max_query_timeout;
        if evaluation_period.is_zero() {
            cap
        } else {
            evaluation_period.min(cap)
        }
    }

    /// One evaluation of a breaker's detection: one request, then the matching core detector.
    pub async fn findings(
        &self,
        detection: &Detection,
        evaluation_period: Duration,
    ) -> Result<Findings, SourceError> {
        let timeout = self.query_timeout(evaluation_period);
        let (base, promql) = match detection {
            Detection::Custom(rule) => return Ok(detect::custom(&self.custom_pods(rule).await?)),
            Detection::Discrete(r) => (&r.prometheus_service, &r.promql),
            Detection::Continuous(r) => (&r.prometheus_service, &r.promql),
            Detection::Threshold(r) => (&r.prometheus_service, &r.promql),
            Detection::Outlier(r) => (&r.prometheus_service, &r.promql),
            Detection::SuccessRate(r) => (&r.prometheus_service, &r.promql),
            Detection::Trend(r) => (&r.prometheus_service, &r.promql),
        };
        let address = self.prometheus_address(base)?;
        let endpoint = &address.endpoint;
        let request = prometheus_request(endpoint, promql);
        let answer = match detection {
            Detection::Trend(rule) => {
                let step = trend_step(rule.window, evaluation_period);
                let (start, end) = trend_range(rule, crate::clock::now());
                self.range_answer(endpoint, promql, (start, end, step), timeout)
                    .await?
            }
            _ => {
                self.prometheus(endpoint, "/api/v1/query", promql, &[], timeout)
                    .await?
            }
        };
        judge_answer(&request, answer.status, &answer.body, detection)
    }

    /// The series of a `valueTrend` query over the window ending at `end`, one per pod.
    pub async fn trend_series(
        &self,
        rule: &TrendRule,
        end: jiff::Timestamp,
        step: Duration,
        timeout: Duration,
    ) -> Result<Vec<TrendSeries>, SourceError> {
        let address = self.prometheus_address(&rule.prometheus_service)?;
        let endpoint = &address.endpoint;
        let request = prometheus_request(endpoint, &rule.promql);
        let (start, end) = trend_range(rule, end);
        let answer = self
            .range_answer(endpoint, &rule.promql, (start, end, step), timeout)
            .await?;
        let result = prometheus::parse_answer(&request, answer.status, &answer.body)?;
        trend_of(&request, result, &rule.pod_name_key)
    }

    /// The samples of a `discreteValueOutOfList` query: one per series, with pod and key labels.
    pub async fn discrete_samples(
        &self,
        rule: &DiscreteRule,
        timeout: Duration,
    ) -> Result<Vec<DiscreteSample>, SourceError> {
        let query = (
            rule.prometheus_service.as_str(),
            rule.promql.as_str(),
            rule.pod_name_key.as_str(),
        );
        self.keyed(query, &rule.key, timeout).await
    }

    /// One sample per series of an instant query, with its pod and key labels.
    async fn keyed(
        &self,
        (base, promql, pod_key): (&str, &str, &str),
        key: &str,
        timeout: Duration,
    ) -> Result<Vec<DiscreteSample>, SourceError> {
        let (request, samples) = self.instant_vector(base, promql, timeout, pod_key).await?;
        keyed_samples(&request, &samples, pod_key, key)
    }

    /// The samples of a `continuousValueDeviation` query: one per series, with the pod label.
    pub async fn continuous_samples(
        &self,
        rule: &ContinuousRule,
        timeout: Duration,
    ) -> Result<Vec<ContinuousSample>, SourceError> {
        let (request, samples) = self
            .instant_vector(
                &rule.prometheus_service,
                &rule.promql,
                timeout,
                &rule.pod_name_key,
            )
            .await?;
        value_samples(&request, &samples, &rule.pod_name_key)
    }

    /// The pods a custom detector reports anomalous: GET, 200 and a `PodList`, or an error.
    pub async fn custom_pods(&self, rule: &CustomRule) -> Result<Vec<String>, SourceError> {
        let address = self.address(AddressKind::Custom, &rule.url)?;
        let url = &address.url;
        let request = Request::Custom { url: url.clone() };
        let timeout = self.inner.settings.custom_timeout;
        let accept = [(header::ACCEPT, HeaderValue::from_static("application/json"))];
        let answer = self
            .inner
            .http
            .send(
                Method::GET,
                url,
                &accept,
                None,
                timeout,
                self.inner.settings.max_body,
            )
            .await
            .map_err(|e| transport_error(&request, e, timeout))?;
        custom_answer(&request, answer.status, &answer.body)
    }

    /// An instant query (`/api/v1/query`) at the current time.
    pub async fn query(
        &self,
        base: &str,
        promql: &str,
        timeout: Duration,
    ) -> Result<QueryResult, SourceError> {
        let address = self.prometheus_address(base)?;
        let endpoint = &address.endpoint;
        let answer = self
            .prometheus(endpoint, "/api/v1/query", promql, &[], timeout)
            .await?;
        let request = prometheus_request(endpoint, promql);
        prometheus::parse_answer(&request, answer.status, &answer.body)
    }

    /// A range query (`/api/v1/query_range`) from `start` to `end` every `step`.
    pub async fn query_range(
        &self,
        base: &str,
        promql: &str,
        start: jiff::Timestamp,
        end: jiff::Timestamp,
        step: Duration,
        timeout: Duration,
    ) -> Result<QueryResult, SourceError> {
        let address = self.prometheus_address(base)?;
        let endpoint = &address.endpoint;
        let answer = self
            .range_answer(endpoint, promql, (start, end, step), timeout)
            .await?;
        let request = prometheus_request(endpoint, promql);
        prometheus::parse_answer(&request, answer.status, &answer.body)
    }

    /// The answer to a range query from `start` to `end` every `step`, not yet read.
    async fn range_answer(
        &self,
        endpoint: &Endpoint,
        promql: &str,
        (start, end, step): (jiff::Timestamp, jiff::Timestamp, Duration),
        timeout: Duration,
    ) -> Result<Answer, SourceError> {
        let seconds = |t: jiff::Timestamp| format!("{}", t.as_millisecond() as f64 / 1000.0);
        let params = [
            ("start", seconds(start)),
            ("end", seconds(end)),
            ("step", format!("{}", step.as_secs_f64())),
        ];
        self.prometheus(endpoint, "/api/v1/query_range", promql, &params, timeout)
            .await
    }

    async fn instant_vector(
        &self,
        base: &str,
        promql: &str,
        timeout: Duration,
        pod_label: &str,
    ) -> Result<(Request, Vec<Sample>), SourceError> {
        let address = self.prometheus_address(base)?;
        let endpoint = &address.endpoint;
        let request = prometheus_request(endpoint, promql);
        let answer = self
            .prometheus(endpoint, "/api/v1/query", promql, &[], timeout)
            .await?;
        let result = prometheus::parse_answer(&request, answer.status, &answer.body)?;
        Ok((request.clone(), vector_of(&request, result, pod_label)?))
    }

    /// Sends a Prometheus API request, sharing it with identical requests already under way.
    /// The answer is not read here: each breaker reads what its rule needs.
    async fn prometheus(
        &self,
        endpoint: &Endpoint,
        api_path: &str,
        promql: &str,
        params: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Answer, SourceError> {
        let url = endpoint.join(api_path);
        let request = prometheus_request(endpoint, promql);
        let mut pairs: Vec<(&str, &str)> = vec![("query", promql)];
        pairs.extend(params.iter().map(|(name, value)| (*name, value.as_str())));
        let form = prometheus::form_encode(&pairs);
        let key = (url, form);
        let flight = {
            let mut in_flight = self.inner.lock_in_flight();
            match in_flight.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    let flight = self.start_flight(key.clone(), request.clone(), timeout);
                    in_flight.insert(key, flight.clone());
                    flight
                }
            }
        };
        // A breaker joining a longer request still waits no more than its own timeout.
        tokio::time::timeout(timeout, flight)
            .await
            .unwrap_or(Err(SourceError::Timeout {
                request,
                after: timeout,
            }))
    }

    /// Runs the request in its own task, so it completes (within its timeout) and leaves the
    /// in-flight map even when every breaker waiting on it has given up.
    fn start_flight(&self, key: (String, String), request: Request, timeout: Duration) -> Flight {
        let inner = Arc::clone(&self.inner);
        let failed = request.clone();
        let task = tokio::spawn(async move {
            let (url, form) = &key;
            // Prometheus abandons the evaluation when the client would anyway.
            let body = format!("{form}&timeout={}ms", timeout.as_millis().max(1));
            let result = inner.post(url, body, &request, timeout).await;
            inner.lock_in_flight().remove(&key);
            result
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(SourceError::Unreachable {
                    request: failed,
                    reason: format!("the request task failed: {e}"),
                })
            })
        }
        .boxed()
        .shared()
    }
}

impl Inner {
    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Flight>> {
        // The map holds no invariant a panic could break halfway.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn post(
        &self,
        url: &str,
        body: String,
        request: &Request,
        timeout: Duration,
    ) -> Result<Answer, SourceError> {
        let mut headers = vec![(header::ACCEPT, HeaderValue::from_static("application/json"))];
        if let Some(authorization) = &self.authorization {
            headers.push((header::AUTHORIZATION, authorization.clone()));
        }
        let form = Some(("application/x-www-form-urlencoded", body));
        self.http
            .send(
                Method::POST,
                url,
                &headers,
                form,
                timeout,
                self.settings.max_body,
            )
            .await
            .map_err(|e| transport_error(request, e, timeout))
    }
}

/// The step of a `valueTrend` range query: about a twentieth of the window, never finer
/// than the evaluation period, and never under a second.
pub fn trend_step(window: Duration, evaluation_period: Duration) -> Duration {
    (window / 20)
        .max(evaluation_period)
        .max(Duration::from_secs(1))
}

/// The window of a `valueTrend` range query ending at `end`.
fn trend_range(rule: &TrendRule, end: jiff::Timestamp) -> (jiff::Timestamp, jiff::Timestamp) {
    let window = jiff::SignedDuration::try_from(rule.window).unwrap_or(jiff::SignedDuration::MAX);
    let start = end.checked_sub(window).unwrap_or(jiff::Timestamp::MIN);
    (start, end)
}

fn prometheus_request(endpoint: &Endpoint, promql: &str) -> Request {
    Request::Prometheus {
        base: endpoint.to_string(),
        promql: promql.to_string(),
    }
}

/// About the room of a series with a few short labels in an answer, to size the
/// accumulators from the body (`{"metric":{"code":"200","pod":"web-…"},"value":[…,"1"]}`).
const BYTES_PER_SERIES: usize = 80;

/// One evaluation's findings from a source's answer: read in one pass for the rule, or,
/// when that reader gives up, by the full parser, whose errors show the whole series.
fn judge_answer(
    request: &Request,
    status: StatusCode,
    body: &[u8],
    detection: &Detection,
) -> Result<Findings, SourceError> {
    match judge_in_one_pass(status, body, detection) {
        Some(findings) => Ok(findings),
        None => judge_parsed(request, status, body, detection),
    }
}

/// The findings of an answer the one-pass reader vouches for; None otherwise.
fn judge_in_one_pass(status: StatusCode, body: &[u8], detection: &Detection) -> Option<Findings> {
    let series = body.len() / BYTES_PER_SERIES;
    let pod = |pod_name_key| Wanted {
        pod: pod_name_key,
        key: None,
    };
    let values = |pod_name_key| {
        let mut samples = Vec::with_capacity(series);
        answer::read_vector(status, body, pod(pod_name_key), &mut samples).then_some(samples)
    };
    match detection {
        Detection::Discrete(rule) => {
            let mut tallies = Tallies::for_discrete(rule, series / 2);
            let wanted = Wanted {
                pod: &rule.pod_name_key,
                key: Some(&rule.key),
            };
            answer::read_vector(status, body, wanted, &mut tallies)
                .then(|| detect::discrete_tallied(rule, tallies))
        }
        Detection::SuccessRate(rule) => {
            let mut tallies = Tallies::for_success_rate(rule, series / 2);
            let wanted = Wanted {
                pod: &rule.pod_name_key,
                key: Some(&rule.key),
            };
            answer::read_vector(status, body, wanted, &mut tallies)
                .then(|| detect::success_rate_outlier_tallied(rule, tallies))
        }
        Detection::Continuous(rule) => {
            values(&rule.pod_name_key).map(|samples| detect::continuous(rule, &samples))
        }
        Detection::Threshold(rule) => {
            values(&rule.pod_name_key).map(|samples| detect::threshold(rule, &samples))
        }
        Detection::Outlier(rule) => {
            values(&rule.pod_name_key).map(|samples| detect::continuous_outlier(rule, &samples))
        }
        Detection::Trend(rule) => {
            let mut all = Vec::new();
            answer::read_matrix(status, body, pod(&rule.pod_name_key), |pod, _, points| {
                all.push(TrendSeries {
                    pod: pod.into_owned(),
                    points,
                })
            })
            .then(|| detect::trend(rule, &all))
        }
        Detection::Custom(_) => None,
    }
}

impl<'a> answer::VectorSink<'a> for Tallies<'_, 'a> {
    fn sample(&mut self, pod: Cow<'a, str>, key: Option<Cow<'a, str>>, value: f64) {
        self.add(pod, key.as_deref().unwrap_or_default(), value)
    }

    fn restart(&mut self) {
        self.clear()
    }
}

impl<'a> answer::VectorSink<'a> for Vec<ContinuousSample> {
    fn sample(&mut self, pod: Cow<'a, str>, _: Option<Cow<'a, str>>, value: f64) {
        self.push(ContinuousSample {
            pod: pod.into_owned(),
            value,
        })
    }

    fn restart(&mut self) {
        self.clear()
    }
}

/// The findings of an answer read by the full parser: the reference the one-pass reader
/// agrees with, and the source of every error message.
fn judge_parsed(
    request: &Request,
    status: StatusCode,
    body: &[u8],
    detection: &Detection,
) -> Result<Findings, SourceError> {
    if let Detection::Custom(_) = detection {
        return Ok(detect::custom(&custom_answer(request, status, body)?));
    }
    let result = prometheus::parse_answer(request, status, body)?;
    match detection {
        Detection::Discrete(rule) => {
            let samples = vector_of(request, result, &rule.pod_name_key)?;
            let samples = keyed_samples(request, &samples, &rule.pod_name_key, &rule.key)?;
            Ok(detect::discrete(rule, &samples))
        }
        Detection::SuccessRate(rule) => {
            let samples = vector_of(request, result, &rule.pod_name_key)?;
            let samples = keyed_samples(request, &samples, &rule.pod_name_key, &rule.key)?;
            Ok(detect::success_rate_outlier(rule, &samples))
        }
        Detection::Continuous(rule) => {
            let samples = vector_of(request, result, &rule.pod_name_key)?;
            let samples = value_samples(request, &samples, &rule.pod_name_key)?;
            Ok(detect::continuous(rule, &samples))
        }
        Detection::Threshold(rule) => {
            let samples = vector_of(request, result, &rule.pod_name_key)?;
            let samples = value_samples(request, &samples, &rule.pod_name_key)?;
            Ok(detect::threshold(rule, &samples))
        }
        Detection::Outlier(rule) => {
            let samples = vector_of(request, result, &rule.pod_name_key)?;
            let samples = value_samples(request, &samples, &rule.pod_name_key)?;
            Ok(detect::continuous_outlier(rule, &samples))
        }
        Detection::Trend(rule) => {
            let series = trend_of(request, result, &rule.pod_name_key)?;
            Ok(detect::trend(rule, &series))
        }
        Detection::Custom(_) => unreachable!("answered above"),
    }
}

/// A custom detector's answer: 200 and a `PodList`, or an error.
fn custom_answer(
    request: &Request,
    status: StatusCode,
    body: &[u8],
) -> Result<Vec<String>, SourceError> {
    if status != StatusCode::OK {
        return Err(SourceError::Http {
            request: request.clone(),
            status: status.as_u16(),
            body: prometheus::excerpt(body),
        });
    }
    custom::parse_pod_list(request, body)
}

/// The series of an instant query's result, which must be a vector.
fn vector_of(
    request: &Request,
    result: QueryResult,
    pod_label: &str,
) -> Result<Vec<Sample>, SourceError> {
    match result {
        // No series is "no data": nothing is judged, so nothing is ejected.
        QueryResult::Vector(samples) => Ok(samples),
        QueryResult::Matrix(_) => Err(request.decode(
            "the query returned a matrix, expected a vector: drop the range selector `[…]` at its end or wrap it in a function such as increase() or rate()".into(),
        )),
        other => {
            let reason = format!(
                "the query returned a {}, expected a vector with one series per pod (label `{pod_label}`)",
                other.type_name()
            );
            Err(request.decode(reason))
        }
    }
}

/// The per-pod series of a range query's result, which must be a matrix.
fn trend_of(
    request: &Request,
    result: QueryResult,
    pod_label: &str,
) -> Result<Vec<TrendSeries>, SourceError> {
    let QueryResult::Matrix(series) = result else {
        return Err(request.decode(format!(
            "the range query returned a {}, expected a matrix with one series per pod (label `{pod_label}`)",
            result.type_name(),
        )));
    };
    series
        .into_iter()
        .map(|s| {
            Ok(TrendSeries {
                pod: required_label(request, &s.labels, pod_label, "podNamekey")?,
                points: s.values,
            })
        })
        .collect()
}

/// One sample per series, with its pod and key labels.
fn keyed_samples(
    request: &Request,
    samples: &[Sample],
    pod_label: &str,
    key: &str,
) -> Result<Vec<DiscreteSample>, SourceError> {
    samples
        .iter()
        .map(|sample| {
            Ok(DiscreteSample {
                pod: required_label(request, &sample.labels, pod_label, "podNamekey")?,
                key: required_label(request, &sample.labels, key, "key")?,
                value: sample.value,
            })
        })
        .collect()
}

/// One value per series, with its pod label.
fn value_samples(
    request: &Request,
    samples: &[Sample],
    pod_label: &str,
) -> Result<Vec<ContinuousSample>, SourceError> {
    samples
        .iter()
        .map(|sample| {
            Ok(ContinuousSample {
                pod: required_label(request, &sample.labels, pod_label, "podNamekey")?,
                value: sample.value,
            })
        })
        .collect()
}

fn read_bearer_token(path: &Path) -> Result<HeaderValue, SourceError> {
    let config_error = |reason: String| SourceError::Config {
        what: "bearer token file",
        path: path.to_path_buf(),
        reason,
    };
    let token = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(config_error("the file is empty".into()));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        config_error("the token contains characters not allowed in a header".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn required_label(
    request: &Request,
    labels: &Labels,
    label: &str,
    field: &'static str,
) -> Result<String, SourceError> {
    labels
        .get(label)
        .cloned()
        .ok_or_else(|| SourceError::MissingLabel {
            request: request.clone(),
            series: DisplayLabels(labels).to_string(),
            label: label.to_string(),
            field,
        })
}

fn transport_error(request: &Request, error: TransportError, timeout: Duration) -> SourceError {
    match error {
        TransportError::Unreachable(reason) => SourceError::Unreachable {
            request: request.clone(),
            reason: format!("cannot connect: {reason}"),
        },
        TransportError::Broken(reason) => SourceError::Unreachable {
            request: request.clone(),
            reason: format!("the connection failed: {reason}"),
        },
        TransportError::Timeout => SourceError::Timeout {
            request: request.clone(),
            after: timeout,
        },
        TransportError::TooLarge(limit) => request.decode(format!(
            "the answer is larger than {} MiB (--source-max-body-mib); nothing is judged from it",
            limit >> 20
        )),
    }
}

#[cfg(test)]
mod one_pass_tests;
#[cfg(test)]
mod tests;
