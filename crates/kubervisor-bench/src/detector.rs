//! A custom detector served by the driver, so the moment a pod turns anomalous is known
//! exactly, and every query the operator sends is counted and timed.
//!
//! One path per breaker, `/d/NAMESPACE/KVS/BREAKER`, answering a `PodList` of the pods
//! currently reported for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio::task::JoinHandle;

/// What one breaker's path has answered.
#[derive(Clone, Debug, Default)]
pub struct PathStats {
    pub queries: u64,
    pub first_query: Option<Instant>,
    pub last_query: Option<Instant>,
    /// Pods reported now.
    pub reporting: Vec<String>,
    /// When the pods were set to be reported.
    pub reporting_since: Option<Instant>,
    /// The first answer naming them, once given.
    pub first_reporting_answer: Option<Instant>,
}

#[derive(Default)]
struct Paths {
    by_key: HashMap<String, PathStats>,
    total: u64,
    lateness: Lateness,
}

/// Gaps between two queries of one path, every path together: a breaker evaluated every
/// `period` is late when its next query comes more than `late_after` after the last.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lateness {
    pub late_after: Option<std::time::Duration>,
    pub gaps: u64,
    pub late: u64,
}

/// The detector: cheap to clone, stopped when the last clone is dropped.
#[derive(Clone)]
pub struct Detector {
    pub addr: SocketAddr,
    paths: Arc<Mutex<Paths>>,
    _server: Arc<Server>,
}

struct Server(JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Detector {
    pub async fn start() -> anyhow::Result<Detector> {
        let paths = Arc::new(Mutex::new(Paths::default()));
        let app = Router::new()
            .route("/d/{namespace}/{kvs}/{breaker}", get(answer))
            .with_state(paths.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Detector {
            addr,
            paths,
            _server: Arc::new(Server(server)),
        })
    }

    /// The `customService` URL of one breaker.
    pub fn url(&self, namespace: &str, kvs: &str, breaker: &str) -> String {
        format!("http://{}/d/{namespace}/{kvs}/{breaker}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Paths> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, `key` (`NAMESPACE/KVS/BREAKER`) reports `pods`; returns the moment.
    pub fn report(&self, key: &str, pods: Vec<String>) -> Instant {
        let mut paths = self.lock();
        let stats = paths.by_key.entry(key.to_string()).or_default();
        let now = Instant::now();
        stats.reporting = pods;
        stats.reporting_since = Some(now);
        stats.first_reporting_answer = None;
        now
    }

    /// From now on, `key` reports nothing.
    pub fn clear(&self, key: &str) {
        self.report(key, Vec::new());
    }

    pub fn stats(&self, key: &str) -> PathStats {
        self.lock().by_key.get(key).cloned().unwrap_or_default()
    }

    /// Forgets per-path query counts and first queries (not the total), to time a restart.
    pub fn reset_counts(&self) {
        for stats in self.lock().by_key.values_mut() {
            stats.queries = 0;
            stats.first_query = None;
        }
    }

    /// Counts from now on the gaps longer than `late_after` between two queries of a path.
    pub fn count_late_after(&self, late_after: std::time::Duration) {
        self.lock().lateness.late_after = Some(late_after);
    }

    /// The gaps counted so far.
    pub fn lateness(&self) -> Lateness {
        self.lock().lateness
    }

    /// Of `keys`: how many were not queried since `since`.
    pub fn silent_since(&self, keys: &[String], since: Instant) -> usize {
        let paths = self.lock();
        keys.iter()
            .filter(|key| {
                paths
                    .by_key
                    .get(*key)
                    .and_then(|s| s.last_query)
                    .is_none_or(|at| at < since)
            })
            .count()
    }

    /// Queries answered so far, every path together.
    pub fn total_queries(&self) -> u64 {
        self.lock().total
    }

    /// Of `keys`: how many were queried at least `n` times, and the latest first query.
    pub fn coverage(&self, keys: &[String], n: u64) -> (usize, Option<Instant>) {
        let paths = self.lock();
        let mut covered = 0;
        let mut latest: Option<Instant> = None;
        for key in keys {
            if let Some(stats) = paths.by_key.get(key)
                && stats.queries >= n
            {
                covered += 1;
                latest = latest.max(stats.first_query);
            }
        }
        (covered, latest)
    }
}

async fn answer(
    State(paths): State<Arc<Mutex<Paths>>>,
    Path((namespace, kvs, breaker)): Path<(String, String, String)>,
) -> impl IntoResponse {
    let key = format!("{namespace}/{kvs}/{breaker}");
    let items: Vec<serde_json::Value> = {
        let mut paths = paths.lock().unwrap_or_else(|e| e.into_inner());
        paths.total += 1;
        let late_after = paths.lateness.late_after;
        let stats = paths.by_key.entry(key).or_default();
        let now = Instant::now();
        stats.queries += 1;
        stats.first_query.get_or_insert(now);
        let gap = stats.last_query.replace(now).map(|last| now - last);
        if !stats.reporting.is_empty() {
            stats.first_reporting_answer.get_or_insert(now);
        }
        let items = stats
            .reporting
            .iter()
            .map(|pod| json!({"metadata": {"name": pod, "namespace": namespace}}))
            .collect();
        if let Some((gap, late_after)) = gap.zip(late_after) {
            paths.lateness.gaps += 1;
            paths.lateness.late += u64::from(gap > late_after);
        }
        items
    };
    let body = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
