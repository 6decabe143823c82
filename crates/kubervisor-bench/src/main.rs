//! `kubervisor-bench SCENARIO`: prints one JSON object per scenario on stdout and a
//! human-readable table on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kubervisor_bench::reaction::ReactionConfig;
use kubervisor_bench::scale::ScaleConfig;
use kubervisor_bench::soak::SoakConfig;
use kubervisor_bench::{Env, decide, machine, operator, reaction, scale, soak};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "kubervisor-bench",
    about = "Kubervisor's figures: reaction time, cost at scale, decision speed, soak"
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
    /// reaction, soak: seed of the moments, pods and verdicts chosen.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// scale: fleet sizes in pods, run in turn.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
    sizes: Vec<usize>,
    /// scale: seconds of the steady-state window.
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// scale: seconds between the end of start-up and the steady-state window, for what
    /// start-up queued (breaker queries behind the adoption's writes) to drain.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// decide: pods in the result (two series each).
    #[arg(long, default_value_t = 50_000)]
    decide_pods: usize,
    /// decide: timed iterations of each measurement.
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// soak: how long the churn runs (`600`, `600s`, `10m`, `1h`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
}

/// Seconds, or a number with `s`, `m` or `h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.trim().char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text.trim()[..i], c),
        _ => (text.trim(), 's'),
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("{text:?}: a duration is a number, optionally followed by s, m or h")
    })?;
    let seconds = match unit {
        's' => value,
        'm' => value * 60.0,
        'h' => value * 3600.0,
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    Reaction,
    Scale,
    Decide,
    /// The backtest's replay of 24 h at a 5 s period over 100 pods (not part of `all`).
    Backtest,
    /// 2,000 pods under random verdicts, rollouts and API faults for `--duration`, with the
    /// invariant monitor judging (not part of `all`); exits non-zero on a violation.
    Soak,
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
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenarios asked for; `false` when one of them failed its verdict.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let wants = |s: Scenario| cli.scenario == s || cli.scenario == Scenario::All;
    let env = if wants(Scenario::Reaction) || wants(Scenario::Scale) || wants(Scenario::Soak) {
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
            settle: Duration::from_secs(cli.settle),
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
    if cli.scenario == Scenario::Soak
        && let Some(env) = &env
    {
        let config = SoakConfig {
            duration: cli.duration,
            seed: cli.seed,
            ..SoakConfig::default()
        };
        let report = soak::run(env, &config).await?;
        soak::print_table(&report);
        let passed = soak::passed(&report);
        emit(report);
        return Ok(passed);
    }
    Ok(true)
}

/// One JSON object per line on stdout, with the machine it ran on.
fn emit(mut figures: Value) {
    figures["machine"] = machine();
    println!("{figures}");
}
