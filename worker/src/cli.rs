//! Command line of `streamjob-worker`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "streamjob-worker",
    version,
    about = "Runs the austin message-trace pipeline (Kafka AnchorInfo events -> Redis traces), exactly-once"
)]
pub struct Cli {
    /// Log format; overrides `logging.format` of the config.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole job in one process (optionally with an embedded broker and demo traffic).
    Standalone(StandaloneArgs),
    /// A taskmanager: registers with the jobmanager and runs the partitions it is given.
    Taskmanager(ConfigArgs),
    /// The jobmanager: membership, partition assignment, checkpoints and savepoints, REST on :8081.
    Jobmanager(JobManagerArgs),
    /// Hosts librdkafka's mock cluster (an in-memory Kafka-protocol broker) for multi-process
    /// tests, prints `BOOTSTRAP host:port` and runs until SIGTERM/SIGINT.
    #[command(hide = true)]
    MockKafka(MockKafkaArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The job's `job.yaml`.
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct JobManagerArgs {
    /// The job's `job.yaml`.
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
    /// Restore from this savepoint file instead of the latest checkpoint.
    #[arg(long, value_name = "PATH")]
    pub from_savepoint: Option<PathBuf>,
    /// Allow a savepoint whose topic or partition count differs from the job's.
    #[arg(long)]
    pub allow_non_restored_state: bool,
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// The job's `job.yaml`; without it, the built-in defaults (every field has one).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// In-process taskmanagers (pipelines) sharing the topic's partitions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub taskmanagers: u16,
    /// Host a Kafka-protocol broker (librdkafka's mock cluster) in-process and use it instead of
    /// `source.kafka.brokers`.
    #[arg(long)]
    pub embedded_kafka: bool,
    /// Partitions of the topic on the embedded broker.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub partitions: i32,
    /// Produce realistic demo AnchorInfo traffic at RATE events per second.
    #[arg(long, value_name = "RATE")]
    pub demo: Option<u64>,
    /// Stop the demo traffic after N events (the job keeps running).
    #[arg(long, value_name = "N", requires = "demo")]
    pub demo_events: Option<u64>,
    /// Stop after this long (e.g. `20s`, `5m`); otherwise run until SIGTERM/SIGINT.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct MockKafkaArgs {
    /// Topic to create (repeatable).
    #[arg(long = "topic", required = true)]
    pub topics: Vec<String>,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Mock brokers.
    #[arg(long, default_value_t = 1)]
    pub brokers: i32,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text)
        .map_err(|e| format!("{e} (examples: 20s, 5m, 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_flags_parse() {
        let cli = Cli::try_parse_from([
            "streamjob-worker",
            "standalone",
            "--embedded-kafka",
            "--demo",
            "2000",
            "--duration",
            "20s",
            "--taskmanagers",
            "2",
            "--log-format",
            "json",
        ])
        .expect("parses");
        assert_eq!(cli.log_format, Some(LogFormatArg::Json));
        let Command::Standalone(args) = cli.command else {
            panic!("standalone expected");
        };
        assert!(args.embedded_kafka);
        assert_eq!(args.demo, Some(2000));
        assert_eq!(args.duration, Some(Duration::from_secs(20)));
        assert_eq!(args.taskmanagers, 2);
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(
            Cli::try_parse_from(["streamjob-worker", "standalone", "--duration", "soon"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["streamjob-worker", "standalone", "--taskmanagers", "0"]).is_err()
        );
        assert!(Cli::try_parse_from(["streamjob-worker", "taskmanager"]).is_err());
    }
}
