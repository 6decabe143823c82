use std::process::ExitCode;

fn main() -> ExitCode {
    kubervisor::cli::main()
}
