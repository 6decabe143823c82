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
    /// Check KubervisorService manifests: print each with defaults applied, or every error.
    Check {
        /// Manifest file to check (`-` for standard input); repeat for several.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", kubervisor_api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Check { files } => check(&files),
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
