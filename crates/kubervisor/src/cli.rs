//! The `kubervisor` command line.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kubervisor_api::manifest::{Document, check_documents};

/// Exit code for input that is invalid (bad YAML, invalid spec).
const EXIT_INVALID: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "kubervisor",
    version,
    about = "Takes anomalous pods out of a Service's traffic, never below a minimum"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the KubervisorService CustomResourceDefinition as YAML.
    Crd,
    /// Show the operator at work on a simulated cluster, with no cluster needed.
    #[cfg(feature = "demo")]
    Demo {
        /// Print plain lines instead of redrawing a table (for logs and CI).
        #[arg(long)]
        no_tui: bool,
        /// Leave the simulated cluster and Prometheus running at the end.
        #[arg(long)]
        keep: bool,
    },
    /// Run the operator.
    Run(Box<RunArgs>),
    /// Check KubervisorService manifests: print each with defaults applied, or every error.
    Check {
        /// Manifest file to check (`-` for standard input); repeat for several.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Replay a KubervisorService over Prometheus history: what would it have done?
    Backtest(Box<crate::backtest::command::Args>),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Kubeconfig file; without it, KUBECONFIG, ~/.kube/config or the pod's service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// API server URL, overriding the kubeconfig's.
    #[arg(long)]
    master: Option<String>,
    /// Listen address of /live, /ready and /metrics.
    #[arg(long, default_value = "0.0.0.0:8086")]
    addr: std::net::SocketAddr,
    /// Watch only this namespace (default: every namespace the service account may see).
    #[arg(long)]
    namespace: Option<String>,
    /// Create or update the CRD at startup and wait until it is Established.
    #[arg(long)]
    install_crd: bool,
    /// Run several replicas: only the holder of a Lease acts.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the Lease (default: --namespace, else the client's default namespace).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "kubervisor")]
    lease_name: String,
    /// This replica's identity for leader election and events (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// File holding a bearer token sent to Prometheus.
    #[arg(long)]
    prometheus_bearer_token_file: Option<PathBuf>,
    /// PEM bundle of the certificate authorities that HTTPS sources are checked against.
    #[arg(long)]
    source_ca_bundle: Option<PathBuf>,
    /// Largest answer read from a Prometheus or a custom detector, in MiB; a larger one is
    /// a source error and judges nobody.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    source_max_body_mib: u32,
    /// Seconds a pod's `kubervisor_breaker_count_total` series outlive the pod, so that
    /// scrapes and `increase()` see their last value before they go.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pod_metrics_retention: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logs(args.log_format);
    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("kubervisor-{}", std::process::id()));
    let options = crate::operator::RunOptions {
        kubeconfig: args.kubeconfig,
        master: args.master,
        addr: args.addr,
        namespace: args.namespace,
        install_crd: args.install_crd,
        leader_elect: args.leader_elect,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        sources: crate::source::SourceSettings {
            bearer_token_file: args.prometheus_bearer_token_file,
            ca_bundle: args.source_ca_bundle,
            max_body: (args.source_max_body_mib as usize) << 20,
            ..Default::default()
        },
        timing: crate::task::Timing {
            pod_metrics_retention: std::time::Duration::from_secs(args.pod_metrics_retention),
            ..Default::default()
        },
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::operator::run(options, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "demo")]
fn demo(no_tui: bool, keep: bool) -> ExitCode {
    // Quiet by default: the demo's own view is the output; RUST_LOG shows the operator's logs.
    if std::env::var_os("RUST_LOG").is_some() {
        init_logs(LogFormat::Text);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = crate::demo::DemoOptions { tui: !no_tui, keep };
    match runtime.block_on(crate::demo::run(options)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            // Written, not printed: a closed pipe (`kubervisor crd | head`) is not a panic.
            let _ = write!(std::io::stdout().lock(), "{}", kubervisor_api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Check { files } => check(&files),
        Command::Run(args) => run(*args),
        Command::Backtest(args) => crate::backtest::command::main(*args),
        #[cfg(feature = "demo")]
        Command::Demo { no_tui, keep } => demo(no_tui, keep),
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    let mut printed = 0;
    for file in files {
        let label = file.display().to_string();
        let text = match read_input(file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: {label}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        let documents = match check_documents(&text) {
            Ok(documents) => documents,
            Err(e) => {
                eprintln!("error: {label}: invalid YAML: {e}");
                failed = true;
                continue;
            }
        };
        for document in documents {
            match document {
                Document::Valid(object) => {
                    let yaml =
                        serde_saphyr::to_string(&object).expect("a resource serialises to YAML");
                    if printed > 0 {
                        let _ = writeln!(out, "---");
                    }
                    let _ = write!(out, "{yaml}");
                    printed += 1;
                }
                Document::Invalid { name, errors } => {
                    failed = true;
                    for error in errors {
                        eprintln!("error: {label}: KubervisorService {name}: {error}");
                    }
                }
                Document::Other { kind, name } => {
                    eprintln!("note: {label}: skipping {kind} {name}: not a KubervisorService");
                }
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

fn read_input(file: &PathBuf) -> std::io::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file)
    }
}
