//! The `kubervisor backtest` command: arguments, the run, the output, the exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use jiff::Timestamp;

use super::{Backtest, BacktestError, Options, Policy, report, write_report};
use crate::source::{SourceSettings, Sources};

/// Exit code for invalid input (bad times, unknown breaker, invalid spec), as `check` uses.
const EXIT_INVALID: u8 = 2;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The KubervisorService manifest to replay (one resource per file).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Prometheus to query (`host:port` or a URL), instead of each breaker's prometheusService.
    #[arg(long)]
    pub prometheus: Option<String>,
    /// Start of the range: RFC 3339 (2026-11-25T10:00:00Z) or relative (-6h, -30m, now).
    #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
    pub start: String,
    /// End of the range, same forms as --start.
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    pub end: String,
    /// Replay only this breaker.
    #[arg(long)]
    pub breaker: Option<String>,
    /// The number of pods of the Service, when some never report metrics.
    #[arg(long)]
    pub fleet_size: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    /// Also write a self-contained HTML report with a chart per breaker.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Another version of the policy to replay over the same history, side by side.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// File holding a bearer token sent to Prometheus.
    #[arg(long)]
    pub prometheus_bearer_token_file: Option<PathBuf>,
    /// PEM bundle of the certificate authorities HTTPS Prometheus is checked against.
    #[arg(long)]
    pub source_ca_bundle: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Runs the command; every error is printed naming what is wrong, never a panic.
pub fn main(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(text) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let _ = out.write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_invalid_input() {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// What the command prints, or why it cannot.
pub async fn run(args: &Args) -> Result<String, BacktestError> {
    let now = Timestamp::now();
    let start = super::parse_time("--start", &args.start, now)?;
    let end = super::parse_time("--end", &args.end, now)?;
    super::check_range(start, end)?;
    let policy = Policy::load(&args.file)?;
    let other = args.compare.as_deref().map(Policy::load).transpose()?;
    let sources = Sources::new(SourceSettings {
        bearer_token_file: args.prometheus_bearer_token_file.clone(),
        ca_bundle: args.source_ca_bundle.clone(),
        ..SourceSettings::default()
    })
    .map_err(|e| BacktestError::Settings(Box::new(e)))?;
    let options = Options {
        prometheus: args.prometheus.clone(),
        start,
        end,
        breaker: args.breaker.clone(),
        fleet_size: args.fleet_size,
        charts: args.report.is_some(),
    };
    let first = super::run(&sources, &policy, &options).await?;
    let second: Option<Backtest> = match &other {
        Some(other) => Some(super::run(&sources, other, &options).await?),
        None => None,
    };
    if let Some(path) = &args.report {
        let mut all = vec![&first];
        all.extend(second.as_ref());
        write_report(path, &all)?;
    }
    Ok(match (&second, args.output) {
        (None, Output::Text) => report::text(&first),
        (None, Output::Json) => report::json_lines(&first),
        (Some(second), Output::Text) => {
            format!(
                "{}\n{}",
                report::text(&first),
                report::compare_text(&first, second)
            )
        }
        (Some(second), Output::Json) => format!(
            "{}{}",
            report::json_lines(&first),
            report::json_compare(&first, second)
        ),
    })
}
