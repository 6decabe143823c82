use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kubectl_kubervisor::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors; usage errors exit 1 like kubectl's.
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
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
    match runtime.block_on(kubectl_kubervisor::run(cli)) {
        Ok(output) => {
            // Write errors (a closed pipe, as with `| head`) are ignored rather than panicking.
            let _ = std::io::stderr().write_all(output.stderr.as_bytes());
            let _ = std::io::stdout().write_all(output.stdout.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::FAILURE
        }
    }
}
