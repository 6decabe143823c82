use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect KubervisorServices and switch their Service's traffic gating on and off.
///
/// Without a command, lists the KubervisorServices of the current namespace.
#[derive(Parser, Debug)]
#[command(name = "kubectl-kubervisor", bin_name = "kubectl kubervisor", version)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    // Repeated here so that the bare `kubectl kubervisor -A` lists like `list -A`.
    #[command(flatten)]
    pub list: ListArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Where to connect, the way kubectl reads it (kubectl does not pass its own global flags to plugins).
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ListArgs {
    /// List KubervisorServices of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
}

impl ListArgs {
    /// Flags given after `list` win over the ones given before it.
    pub fn merged_with(&self, later: &ListArgs) -> ListArgs {
        ListArgs {
            all_namespaces: self.all_namespaces || later.all_namespaces,
            output: later.output.or(self.output),
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// More columns: unknown pods, dry run, breakers.
    Wide,
    /// A `List` of the objects as JSON.
    Json,
    /// A `List` of the objects as YAML.
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Table of KubervisorServices (the default command).
    List(ListArgs),
    /// Spec summary, conditions and every managed pod with its traffic state.
    Describe {
        /// Name of the KubervisorService.
        name: String,
    },
    /// Make the Service select only `kubervisor/traffic: yes` pods, so Kubervisor's ejections take effect.
    Activate {
        /// Name of the KubervisorService.
        name: String,
        /// Activate even when the resource is not Ready or some managed pods would lose traffic.
        #[arg(long)]
        force: bool,
    },
    /// Remove `kubervisor/traffic` from the Service selector, so every pod gets traffic again.
    Deactivate {
        /// Name of the KubervisorService.
        name: String,
    },
    /// Take a pod out of traffic now (`yes` → `no`); its activator brings it back.
    Eject(PodArgs),
    /// Give an ejected pod its traffic back now (`no` → `yes`), its retry count kept.
    Restore(PodArgs),
    /// Park a pod for investigation (`yes` or `no` → `pause`); nothing brings it back.
    Pause(PodArgs),
    /// Give a parked pod its traffic back (`pause` → `yes`).
    Unpause(PodArgs),
}

/// One managed pod, for the manual actions.
#[derive(Args, Debug, Clone)]
pub struct PodArgs {
    /// Name of the pod.
    pub pod: String,
    /// Act even when fewer pods than the KubervisorService's floor would keep serving.
    #[arg(long)]
    pub force: bool,
}
