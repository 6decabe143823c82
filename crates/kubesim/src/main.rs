use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// kubesim: a Kubernetes API emulator with a simulated workload.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API on 127.0.0.1 until killed.
    Serve {
        /// API port (0 picks a free one; the URL is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Where to write a kubeconfig for kubectl and kube-rs.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Keep a Prometheus file_sd_configs document of the pods' metrics targets here.
        #[arg(long)]
        prometheus_sd: Option<PathBuf>,
        /// Seconds from pod start to Ready.
        #[arg(long, default_value_t = 0.5)]
        ready_delay: f64,
        /// Requests per second per Service without the sim.kubervisor.io/rps annotation.
        #[arg(long, default_value_t = 50.0)]
        rps: f64,
    },
    /// Simulate the workload of any cluster (kubesim or a real kube-apiserver): load on
    /// each Service's ready endpoints, every pod's metrics on one loopback listener, and a
    /// Prometheus SD document. Runs until killed.
    Workload {
        /// Kubeconfig of the cluster to watch (its current context).
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Keep a Prometheus file_sd_configs document of the pods' metrics targets here.
        #[arg(long)]
        prometheus_sd: PathBuf,
        /// Watch this namespace only (default: all namespaces).
        #[arg(long)]
        namespace: Option<String>,
        /// Loopback address of the metrics listener (port 0 picks a free one; it is printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        metrics_addr: SocketAddr,
        /// Requests per second per Service without the sim.kubervisor.io/rps annotation.
        #[arg(long, default_value_t = 50.0)]
        rps: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            port,
            kubeconfig,
            prometheus_sd,
            ready_delay,
            rps,
        } => {
            if !(ready_delay.is_finite() && ready_delay >= 0.0) {
                anyhow::bail!("--ready-delay must be a non-negative number of seconds");
            }
            let config = kubesim::SimConfig {
                port,
                ready_delay: Duration::from_secs_f64(ready_delay),
                prometheus_sd,
                default_rps: rps,
                ..Default::default()
            };
            let sim = kubesim::Sim::start(config).await?;
            sim.write_kubeconfig(&kubeconfig)?;
            tracing::info!(url = %sim.url(), metrics = %sim.metrics_addr(), kubeconfig = %kubeconfig.display(), "kubesim serving");
            println!("{}", sim.url());
            wait_for_signal().await;
            sim.shutdown().await;
        }
        Command::Workload {
            kubeconfig,
            prometheus_sd,
            namespace,
            metrics_addr,
            rps,
        } => {
            let parsed = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|e| {
                anyhow::anyhow!("cannot read kubeconfig {}: {e}", kubeconfig.display())
            })?;
            let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", kubeconfig.display()))?;
            let client = kube::Client::try_from(config)?;
            let handle = kubesim::workload::start_against(
                client,
                kubesim::workload::WorkloadConfig {
                    namespace,
                    metrics_addr,
                    prometheus_sd: Some(prometheus_sd),
                    default_rps: rps,
                    ..Default::default()
                },
            )
            .await?;
            println!("{}", handle.metrics_addr());
            wait_for_signal().await;
            handle.shutdown().await;
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
