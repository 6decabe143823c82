//! A real Prometheus scrapes the simulated fleet through the file_sd document.

mod common;

use common::{encode, http_get, pod_json, require_binary, sim_with, wait_for};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use kubesim::SimConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_pod_and_sees_the_error_rates() {
    let bin = require_binary("prometheus", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("targets.json");
    let sim = sim_with(SimConfig {
        ready_delay: Duration::from_millis(50),
        prometheus_sd: Some(sd.clone()),
        ..Default::default()
    })
    .await;
    let client = sim.client();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let rates = [("p-ok", 0.0), ("p-half", 0.5), ("p-bad", 0.8)];
    for (name, rate) in rates {
        let mut p = pod_json(name, json!({"app": "shop", "kubervisor/traffic": "yes"}));
        p["metadata"]["annotations"] = json!({"sim.kubervisor.io/error-rate": rate.to_string()});
        pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap())
            .await
            .unwrap();
    }
    let svc = json!({"metadata": {"name": "shop", "annotations": {"sim.kubervisor.io/rps": "300"}},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80}]}});
    Api::<Service>::default_namespaced(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(svc).unwrap(),
        )
        .await
        .unwrap();
    wait_for(
        "SD file lists the three pods",
        Duration::from_secs(10),
        || async {
            let v: Value = serde_json::from_slice(&std::fs::read(&sd).ok()?).ok()?;
            (v.as_array()?.len() == 3).then_some(())
        },
    )
    .await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: kubesim\n  file_sd_configs:\n  - files: ['{}']\n    refresh_interval: 1s\n",
            sd.display()
        ),
    )
    .unwrap();
    let mut prom = tokio::process::Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let query = |q: &str| {
        let path = format!("/api/v1/query?query={}", encode(q));
        let addr = addr.clone();
        async move {
            let (code, body) = http_get(&addr, &path).await?;
            if code != 200 {
                return None;
            }
            let v: Value = serde_json::from_str(&body).ok()?;
            v["data"]["result"].as_array().cloned()
        }
    };
    wait_for(
        "every simulated pod is scraped",
        Duration::from_secs(40),
        || async {
            let up = query("up{job=\"kubesim\"} == 1").await?;
            (up.len() == 3).then_some(())
        },
    )
    .await;
    let shares = wait_for(
        "rates for every pod and code",
        Duration::from_secs(40),
        || async {
            let result = query("sum by (pod, code) (rate(http_requests_total[30s]))").await?;
            let mut by_pod: BTreeMap<String, (f64, f64)> = BTreeMap::new();
            for r in result {
                let pod = r["metric"]["pod"].as_str()?.to_string();
                let value: f64 = r["value"][1].as_str()?.parse().ok()?;
                let e = by_pod.entry(pod).or_default();
                if r["metric"]["code"] == "500" {
                    e.1 += value
                } else {
                    e.0 += value
                }
            }
            let shares: BTreeMap<String, f64> = by_pod
                .iter()
                .filter(|(_, (ok, err))| ok + err > 0.0)
                .map(|(p, (ok, err))| (p.clone(), err / (ok + err)))
                .collect();
            (shares.len() == 3).then_some(shares)
        },
    )
    .await;
    for (name, rate) in rates {
        let got = shares[name];
        assert!(
            (got - rate).abs() < 0.05,
            "{name}: error share {got}, configured {rate}"
        );
    }
    let labelled = query(
        "http_requests_total{kubervisor_traffic=\"yes\",service=\"shop\",namespace=\"default\"}",
    )
    .await
    .unwrap();
    assert_eq!(
        labelled.len(),
        6,
        "pod labels are sanitised into target labels"
    );
    let _ = prom.kill().await;
    sim.shutdown().await;
}

/// Starts a real Prometheus scraping every target of the SD file `sd` each second.
async fn start_prometheus(
    bin: &str,
    dir: &std::path::Path,
    sd: &std::path::Path,
) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: workload\n  file_sd_configs:\n  - files: ['{}']\n    refresh_interval: 1s\n",
            sd.display()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, format!("127.0.0.1:{port}"))
}

/// `(pod, value)` of every series an instant query returns.
async fn query_by_pod(addr: &str, q: &str) -> Option<BTreeMap<String, f64>> {
    let (code, body) = http_get(addr, &format!("/api/v1/query?query={}", encode(q))).await?;
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"]
        .as_array()?
        .iter()
        .map(|r| {
            let pod = r["metric"]["pod"].as_str()?.to_string();
            let value: f64 = r["value"][1].as_str()?.parse().ok()?;
            value.is_finite().then_some((pod, value))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_client_workload_and_recovers_latencies() {
    let bin = require_binary("prometheus", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("targets.json");
    let sim = sim_with(SimConfig {
        ready_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let client = sim.client();
    let workload = kubesim::workload::start_against(
        client.clone(),
        kubesim::workload::WorkloadConfig {
            namespace: Some("default".into()),
            prometheus_sd: Some(sd.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let fleet = [("fast", 0.0, 30.0), ("slow", 0.5, 300.0)];
    for (name, rate, latency) in fleet {
        let mut p = pod_json(name, json!({"app": "shop"}));
        p["metadata"]["annotations"] = json!({
            "sim.kubervisor.io/error-rate": rate.to_string(),
            "sim.kubervisor.io/latency-ms": latency.to_string(),
        });
        pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap())
            .await
            .unwrap();
    }
    let svc = json!({"metadata": {"name": "shop", "annotations": {"sim.kubervisor.io/rps": "200"}},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80}]}});
    Api::<Service>::default_namespaced(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(svc).unwrap(),
        )
        .await
        .unwrap();
    wait_for(
        "SD file lists both pods",
        Duration::from_secs(10),
        || async {
            let v: Value = serde_json::from_slice(&std::fs::read(&sd).ok()?).ok()?;
            (v.as_array()?.len() == 2).then_some(())
        },
    )
    .await;
    let (mut prom, addr) = start_prometheus(&bin, dir.path(), &sd).await;
    let p50 = wait_for("median latency of both pods", Duration::from_secs(40), || async {
        let q = "histogram_quantile(0.5, sum by (pod, le) (rate(http_request_duration_seconds_bucket[20s])))";
        let m = query_by_pod(&addr, q).await?;
        (m.len() == 2).then_some(m)
    })
    .await;
    let errors = wait_for("error shares of both pods", Duration::from_secs(40), || async {
        let q = "sum by (pod) (rate(http_requests_total{code=\"500\"}[20s])) / sum by (pod) (rate(http_requests_total[20s]))";
        let m = query_by_pod(&addr, q).await?;
        (m.len() == 2).then_some(m)
    })
    .await;
    for (name, rate, latency) in fleet {
        let seconds = latency / 1000.0;
        assert!(
            (p50[name] / seconds - 1.0).abs() < 0.1,
            "{name}: median {} s, configured mean {seconds} s",
            p50[name]
        );
        assert!(
            (errors[name] - rate).abs() < 0.05,
            "{name}: error share {}, configured {rate}",
            errors[name]
        );
    }
    let _ = prom.kill().await;
    workload.shutdown().await;
    sim.shutdown().await;
}
