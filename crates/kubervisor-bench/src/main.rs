//! `kubervisor-bench SCENARIO`: prints one JSON object per scenario on stdout and a
//! human-readable table on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kubervisor_bench::reaction::ReactionConfig;
use kubervisor_bench::scale::ScaleConfig;
use kubervisor_bench::{Env, decide, machine, operator, reaction, scale};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "kubervisor-bench",
    about = "Kubervisor's figures: reaction time, cost at scale, decision speed"
)]
struct Cli {
    /// What to measure.
    scenario: Scenario,
    /// The operator binary (default: `kubervisor` beside this executable, rebuilt first under `cargo run`).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// reaction: ejections to measure (at least 100 for a meaningful p99).
    #[arg(long, default_value_t = 200)]
    ejections: usize,
    /// reaction: seed of the moments and pods chosen.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// scale: fleet sizes in pods, run in turn.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
    sizes: Vec<usize>,
    /// scale: seconds of the steady-state window.
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// decide: pods in the result (two series each).
    #[arg(long, default_value_t = 50_000)]
    decide_pods: usize,
    /// decide: timed iterations of each measurement.
    #[arg(long, default_value_t = 30)]
    iterations: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    Reaction,
    Scale,
    Decide,
    /// The backtest's replay of 24 h at a 5 s period over 100 pods (not part of `all`).
    Backtest,
    /// The three, one after the other.
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let wants = |s: Scenario| cli.scenario == s || cli.scenario == Scenario::All;
    let env = if wants(Scenario::Reaction) || wants(Scenario::Scale) {
        Some(Env {
            operator_bin: operator::binary(cli.operator_bin.as_deref())?,
            dir: tempfile::tempdir()?,
        })
    } else {
        None
    };
    if wants(Scenario::Reaction)
        && let Some(env) = &env
    {
        let config = ReactionConfig {
            ejections: cli.ejections,
            seed: cli.seed,
            ..ReactionConfig::default()
        };
        emit(reaction::run(env, &config).await?);
    }
    if wants(Scenario::Scale)
        && let Some(env) = &env
    {
        let config = ScaleConfig {
            sizes: cli.sizes.clone(),
            window: Duration::from_secs(cli.window),
            ..ScaleConfig::default()
        };
        emit(scale::run(env, &config).await?);
    }
    if cli.scenario == Scenario::Backtest {
        emit(kubervisor_bench::backtest::run(
            100,
            24,
            cli.iterations.min(5),
        )?);
    }
    if wants(Scenario::Decide) {
        emit(decide::run(cli.decide_pods, cli.iterations).await?);
    }
    Ok(())
}

/// One JSON object per line on stdout, with the machine it ran on.
fn emit(mut figures: Value) {
    figures["machine"] = machine();
    println!("{figures}");
}
