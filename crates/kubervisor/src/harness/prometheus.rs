//! A real Prometheus server on a loopback port, for tests and `kubervisor demo`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde::Deserialize;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::source::HttpClient;

/// How long Prometheus may take to become ready; it is usually under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness and targets are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How many times a port taken by someone else between our probe and Prometheus' bind is retried.
const PORT_ATTEMPTS: usize = 3;

/// Why the Prometheus harness could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "the `prometheus` binary was not found on PATH; install it (Debian/Ubuntu: `apt-get install prometheus`) or pass its path"
    )]
    BinaryNotFound,
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Prometheus did not start: {reason}\nlast lines of its log:\n{log}")]
    NotStarted { reason: String, log: String },
    #[error("timed out after {} s waiting for {what} on Prometheus {url}; last seen: {last}", after.as_secs_f64())]
    WaitTimeout {
        what: String,
        url: String,
        after: Duration,
        last: String,
    },
}

/// How to run Prometheus.
#[derive(Clone, Debug)]
pub struct PrometheusOptions {
    /// A `file_sd_configs` JSON file listing the targets to scrape (kubesim writes one).
    pub sd_file: PathBuf,
    /// The scrape interval, also used as the scrape timeout and file refresh interval.
    pub scrape_interval: Duration,
    /// More `host:port` targets scraped at `/metrics` (e.g. the operator itself).
    pub extra_static_targets: Vec<String>,
    /// The binary to run; `prometheus` from PATH when absent.
    pub binary: Option<PathBuf>,
    /// TSDB blocks (such as `promtool tsdb create-blocks-from` writes) the data directory
    /// starts with, so that queries see a known past.
    pub blocks: Option<PathBuf>,
}

impl PrometheusOptions {
    /// Scrapes the targets of `sd_file` every second.
    pub fn new(sd_file: impl Into<PathBuf>) -> PrometheusOptions {
        PrometheusOptions {
            sd_file: sd_file.into(),
            scrape_interval: Duration::from_secs(1),
            extra_static_targets: Vec::new(),
            binary: None,
            blocks: None,
        }
    }
}

/// A running Prometheus, killed when dropped.
pub struct PrometheusProcess {
    child: Child,
    binary: PathBuf,
    port: u16,
    url: String,
    dir: TempDir,
    http: HttpClient,
    /// Starts so far, to name each start's log.
    starts: u32,
}

impl PrometheusProcess {
    /// Starts Prometheus on a free loopback port with a fresh data directory and waits until it is ready.
    pub async fn start(options: PrometheusOptions) -> Result<PrometheusProcess, HarnessError> {
        let binary = match &options.binary {
            Some(binary) => binary.clone(),
            None => find_on_path("prometheus").ok_or(HarnessError::BinaryNotFound)?,
        };
        let http = HttpClient::plain()
            .map_err(|e| io("set up an HTTP client", std::io::Error::other(e)))?;
        let mut dir = tempfile::Builder::new()
            .prefix("kubervisor-prometheus-")
            .tempdir()
            .map_err(|source| io("create a temporary directory", source))?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config(&options))
            .map_err(|source| io("write the Prometheus config", source))?;
        if let Some(blocks) = &options.blocks {
            copy_dir(blocks, &dir.path().join("data"))
                .map_err(|source| io("copy the TSDB blocks", source))?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let log_path = dir.path().join(format!("prometheus-{attempt}.log"));
            let child = spawn(&binary, &config_path, dir.path(), port, &log_path)?;
            let mut process = PrometheusProcess {
                child,
                binary: binary.clone(),
                port,
                url: format!("http://127.0.0.1:{port}"),
                dir,
                http: http.clone(),
                starts: attempt as u32,
            };
            match process.wait_ready(&log_path).await {
                Ok(()) => return Ok(process),
                Err(HarnessError::NotStarted { log, .. })
                    if attempt < PORT_ATTEMPTS && log.contains("address already in use") =>
                {
                    tracing::debug!(port, "port taken before Prometheus bound it; retrying");
                    let _ = process.child.kill().await;
                    dir = process.take_dir();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`: what a `prometheusService` points at.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `host:port` of the server, the original form of `prometheusService`.
    pub fn address(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// The directory holding the config, the data and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until at least `count` targets are up, or fails after `timeout` saying what it saw.
    pub async fn wait_for_targets(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        #[derive(Deserialize)]
        struct Answer {
            data: Targets,
        }
        #[derive(Deserialize)]
        struct Targets {
            #[serde(rename = "activeTargets")]
            active: Vec<Target>,
        }
        #[derive(Deserialize)]
        struct Target {
            health: String,
            #[serde(rename = "scrapeUrl")]
            scrape_url: String,
            #[serde(rename = "lastError", default)]
            last_error: String,
        }
        let deadline = Instant::now() + timeout;
        let url = format!("{}/api/v1/targets?state=active", self.url);
        let mut last: String;
        loop {
            match self.get(&url).await {
                Ok((StatusCode::OK, body)) => match serde_json::from_slice::<Answer>(&body) {
                    Ok(answer) => {
                        let up = answer
                            .data
                            .active
                            .iter()
                            .filter(|t| t.health == "up")
                            .count();
                        if up >= count {
                            return Ok(());
                        }
                        last = format!("{up} of {} targets up", answer.data.active.len());
                        if let Some(down) =
                            answer.data.active.iter().find(|t| !t.last_error.is_empty())
                        {
                            last.push_str(&format!(" ({}: {})", down.scrape_url, down.last_error));
                        }
                    }
                    Err(e) => last = format!("unreadable targets: {e}"),
                },
                Ok((status, _)) => last = format!("HTTP {status}"),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::WaitTimeout {
                    what: format!("{count} targets up"),
                    url: self.url.clone(),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills Prometheus and waits until it has exited.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Kills Prometheus (SIGKILL) and waits until it has exited; [`Self::start_again`]
    /// brings it back.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts Prometheus again on the same address, configuration and data directory,
    /// as a Prometheus that restarts with its volume comes back, and waits until it is
    /// ready.
    pub async fn start_again(&mut self) -> Result<(), HarnessError> {
        let _ = self.child.kill().await;
        self.starts += 1;
        let log_path = self
            .dir
            .path()
            .join(format!("prometheus-{}.log", self.starts));
        self.child = spawn(
            &self.binary,
            &self.dir.path().join("prometheus.yml"),
            self.dir.path(),
            self.port,
            &log_path,
        )?;
        self.wait_ready(&log_path).await
    }

    async fn wait_ready(&mut self, log_path: &Path) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready_url = format!("{}/-/ready", self.url);
        let not_started = |reason: String| HarnessError::NotStarted {
            reason,
            log: last_lines(log_path, 15),
        };
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(not_started(format!("it exited with {status}")));
            }
            if let Ok((StatusCode::OK, _)) = self.get(&ready_url).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(not_started(format!(
                    "{ready_url} not ready after {} s",
                    READY_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn get(&self, url: &str) -> Result<(StatusCode, bytes::Bytes), String> {
        self.http
            .send(
                Method::GET,
                url,
                &[],
                None,
                Duration::from_secs(2),
                16 << 20,
            )
            .await
            .map(|answer| (answer.status, answer.body))
            .map_err(|e| format!("{e:?}"))
    }

    // Hands the directory to the next attempt; this process is dead and only its log remains.
    fn take_dir(self) -> TempDir {
        let PrometheusProcess { dir, .. } = self;
        dir
    }
}

fn config(options: &PrometheusOptions) -> String {
    let interval = format!("{}ms", options.scrape_interval.as_millis().max(1));
    // JSON strings are valid YAML scalars, which saves quoting rules for paths.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let mut config = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
         scrape_configs:\n  - job_name: kubesim\n    file_sd_configs:\n      - files: [{}]\n        refresh_interval: {interval}\n",
        quote(&options.sd_file.to_string_lossy())
    );
    if !options.extra_static_targets.is_empty() {
        let targets: Vec<String> = options
            .extra_static_targets
            .iter()
            .map(|t| quote(t))
            .collect();
        config.push_str(&format!(
            "  - job_name: static\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ));
    }
    config
}

fn spawn(
    binary: &Path,
    config_path: &Path,
    dir: &Path,
    port: u16,
    log_path: &Path,
) -> Result<Child, HarnessError> {
    let log = std::fs::File::create(log_path)
        .map_err(|source| io("create the Prometheus log", source))?;
    let log_err = log
        .try_clone()
        .map_err(|source| io("open the Prometheus log", source))?;
    Command::new(binary)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--storage.tsdb.retention.time=1d")
        .arg("--log.level=info")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Dropping the process kills Prometheus, whatever way the test ends.
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| io(&format!("run {}", binary.display()), source))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|source| io("find a free loopback port", source))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| io("find a free loopback port", source))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

fn last_lines(path: &Path, count: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

fn io(action: &str, source: std::io::Error) -> HarnessError {
    HarnessError::Io {
        action: action.to_string(),
        source,
    }
}
