//! The operator under test, as a separate process: its binary, its memory and CPU from
//! `/proc`, and its own `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::stats::Histogram;

/// The features of the operator image's build (`Dockerfile`).
const IMAGE_FEATURES: [&str; 3] = ["--no-default-features", "--features", "jemalloc"];

/// Where the `kubervisor` binary is: beside this executable (`target/release/`), unless given.
///
/// When the driver runs under `cargo run`, `cargo build -p kubervisor` with the same
/// profile runs first, so the operator measured is built from the current sources, and
/// with the features the image is built with (`Dockerfile`): the operator that runs in a
/// cluster carries no emulator, and its code is part of its resident memory.
pub fn binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("cannot locate the benchmark executable")?;
    let dir = exe
        .parent()
        .context("the benchmark executable has no directory")?;
    let candidate = dir.join("kubervisor");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-p", "kubervisor", "--bin", "kubervisor"]);
        build.args(IMAGE_FEATURES);
        // `cargo run` describes this package in the environment; build scripts that watch
        // those variables (ring's does) would otherwise rebuild on every run.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            {
                build.env_remove(name.as_ref());
            }
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        eprintln!("building the operator: {build:?}");
        match build.status() {
            Ok(status) if status.success() => {}
            outcome if candidate.is_file() => {
                eprintln!(
                    "warning: building the operator failed ({outcome:?}); using the existing {}",
                    candidate.display()
                );
            }
            outcome => bail!("building the operator failed ({outcome:?})"),
        }
    }
    if !candidate.is_file() {
        bail!(
            "operator binary {} not found: run `cargo build --release -p kubervisor --no-default-features --features jemalloc` first, or give --operator-bin",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// A free port on loopback, for the operator's HTTP endpoint.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A running `kubervisor run`, killed when dropped.
pub struct Operator {
    child: tokio::process::Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub started: Instant,
    log: PathBuf,
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl Operator {
    /// Starts the operator against `kubeconfig`, logging at `warn` into `log`.
    pub async fn start(binary: &Path, kubeconfig: &Path, log: &Path) -> anyhow::Result<Operator> {
        Operator::start_with(binary, kubeconfig, log, &[]).await
    }

    /// [`Operator::start`] with more arguments to `kubervisor run`.
    pub async fn start_with(
        binary: &Path,
        kubeconfig: &Path,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Operator> {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let started = Instant::now();
        let child = tokio::process::Command::new(binary)
            .arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--identity")
            .arg("bench")
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the operator exited at once")?;
        Ok(Operator {
            child,
            pid,
            addr,
            started,
            log: log.to_path_buf(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Fails with the end of the operator's log when it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the operator exited ({status}); end of its log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The first `n` lines the operator logged, without terminal colours.
    pub fn log_head(&self, n: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().take(n).map(strip_ansi).collect()
    }

    /// Lines the operator logged (at warn and above) so far.
    pub fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Memory and CPU of the operator process now.
    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        ProcSample::read(self.pid)
    }

    /// Waits until `/live` answers, checking that the process is still there.
    pub async fn wait_live(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if self.get("/live").await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the operator's /live did not answer within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<String> {
        let uri: http::Uri = format!("http://{}{path}", self.addr).parse()?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.http.get(uri))
            .await
            .context("timed out")??;
        if !response.status().is_success() {
            bail!("GET {path}: {}", response.status());
        }
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// The operator's `/metrics`, parsed.
    pub async fn metrics(&self) -> anyhow::Result<Scrape> {
        Ok(Scrape::parse(&self.get("/metrics").await?))
    }

    /// Stops the operator as Kubernetes does: SIGTERM, then SIGKILL if it has not exited
    /// within 30 s (a heap-profiling build writes its profile on the way out).
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence `ESC [ ... letter`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Resident memory and CPU time of a process, from `/proc/PID/status` and `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub at: Option<Instant>,
    /// VmRSS.
    pub rss_kib: u64,
    /// VmHWM: the peak resident set so far.
    pub peak_rss_kib: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> anyhow::Result<ProcSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // Field 3 (state) is index 0 here, so utime (14) and stime (15) are 11 and 12.
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(ProcSample {
            at: Some(Instant::now()),
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
            cpu_ticks: tick(11) + tick(12),
        })
    }
}

/// Open file descriptors of a process, and how many of them are sockets.
pub fn open_files(pid: u32) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let mut files = 0;
    let mut sockets = 0;
    for entry in entries.flatten() {
        files += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    (files, sockets)
}

/// Clock ticks per second for `/proc/PID/stat`, from `getconf CLK_TCK` (100 when unavailable,
/// which is what Linux uses on every common architecture).
pub fn clock_ticks_per_second() -> (u64, &'static str) {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
        .map_or((100, "assumed"), |n| (n, "getconf CLK_TCK"))
}

/// One reading of a Prometheus text exposition: `(name, labels, value)` per sample.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value = value.parse::<f64>().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                    None => (series, BTreeMap::new()),
                };
                Some((name.to_string(), labels, value))
            })
            .collect();
        Scrape { samples }
    }

    /// The sum of every sample named `name` whose labels include `matching`.
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && matching
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The values of `name` by the value of one label.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, labels, v) in &self.samples {
            if n == name {
                let key = labels.get(label).cloned().unwrap_or_default();
                *out.entry(key).or_insert(0.0) += v;
            }
        }
        out
    }

    /// A histogram without labels (or the sum over its label sets).
    pub fn histogram(&self, name: &str) -> Histogram {
        let mut buckets: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (n, labels, v) in &self.samples {
            if *n == format!("{name}_bucket")
                && let Some(le) = labels.get("le")
            {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                buckets.entry(le.clone()).or_insert((bound, 0.0)).1 += v;
            }
        }
        let mut buckets: Vec<(f64, f64)> = buckets.into_values().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram {
            buckets,
            count: self.sum(&format!("{name}_count"), &[]),
            sum: self.sum(&format!("{name}_sum"), &[]),
        }
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_reads_labels_counters_and_histograms() {
        let text = "# TYPE kubervisor_pod_writes counter\n\
            kubervisor_pod_writes_total{verb=\"patch\",outcome=\"ok\"} 12\n\
            kubervisor_pod_writes_total{verb=\"delete\",outcome=\"ok\"} 1\n\
            h_bucket{le=\"0.001\"} 3\n\
            h_bucket{le=\"+Inf\"} 4\n\
            h_sum 0.01\n\
            h_count 4\n";
        let scrape = Scrape::parse(text);
        assert_eq!(scrape.sum("kubervisor_pod_writes_total", &[]), 13.0);
        assert_eq!(
            scrape.sum("kubervisor_pod_writes_total", &[("verb", "patch")]),
            12.0
        );
        let h = scrape.histogram("h");
        assert_eq!(h.buckets, vec![(0.001, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!(h.count, 4.0);
    }

    #[test]
    fn the_operator_measured_is_built_as_the_image_is() {
        let dockerfile =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Dockerfile"))
                .unwrap();
        let build = dockerfile
            .lines()
            .find(|l| l.contains("cargo build --release"))
            .expect("the Dockerfile builds the operator");
        assert!(build.contains(&IMAGE_FEATURES.join(" ")), "{build}");
    }

    #[test]
    fn own_process_can_be_sampled() {
        let sample = ProcSample::read(std::process::id()).unwrap();
        assert!(sample.rss_kib > 0 && sample.peak_rss_kib >= sample.rss_kib);
    }
}
