//! The `streamjob-operator` binary: `run` (default), `crd`, `rbac`.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "streamjob-operator",
    version,
    about = "Kubernetes operator for StreamJobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the StreamJob CustomResourceDefinition as YAML.
    Crd,
    /// Print the RBAC PolicyRules the operator needs, as JSON.
    Rbac,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => print!("{}", streamjob_operator::crd::crd_yaml()?),
        Some(Command::Rbac) => println!("{}", streamjob_operator::rbac::policy_rules_json()),
        None => anyhow::bail!("run: not implemented yet"),
    }
    Ok(())
}
