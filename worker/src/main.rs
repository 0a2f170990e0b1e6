//! `streamjob-worker`: `standalone | taskmanager | jobmanager --config PATH`.
//!
//! Exit codes: 0 after a clean stop (SIGTERM/SIGINT or `--duration`), 1 on a runtime failure or
//! a second SIGTERM/SIGINT (exit at once), 2 on an invalid command line or configuration (one
//! message naming the field).

// The whole process is one future (standalone runs a jobmanager and taskmanagers in it); its
// nesting is deeper than the compiler's default layout depth.
#![recursion_limit = "256"]

mod cli;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use streamjob_worker::config::{JobConfig, LogFormat};
use streamjob_worker::embedded_kafka::EmbeddedKafka;
use streamjob_worker::standalone::{self, StandaloneOptions};

use cli::{Cli, Command, LogFormatArg};

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// glibc malloc settings for a process whose big allocations are librdkafka's fetch buffers
/// (≥ 1 MB segments, freed as soon as their messages are consumed), spread over a dozen threads.
/// - a fixed mmap threshold: glibc otherwise raises it to the size of every freed mmapped block,
///   so after the first fetch buffers those come from the heap and their holes stay resident;
/// - two arenas instead of 8 per core: fewer heaps that each keep their own free memory.
///
/// Measured with `scripts/bench-worker.sh`: peak RSS 57 → 47 MB at the same throughput
/// (BENCHMARKS.md). Set before any thread starts; `MALLOC_*` environment variables still win,
/// as glibc reads them at start-up and `mallopt` is skipped when they are present.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
        const ARENAS: libc::c_int = 2;
        // SAFETY: `mallopt` only changes allocator parameters; called before any other thread
        // exists, so no allocation races with it.
        unsafe {
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            }
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Standalone(args) => load_config(args.config.as_deref()),
        Command::Taskmanager(args) => load_config(Some(&args.config)),
        Command::Jobmanager(args) => load_config(Some(&args.config)),
        Command::MockKafka(_) => Ok(JobConfig::default()),
    };
    let config = match config {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(&config, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = runtime.block_on(run(cli.command, config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            write_termination_message(&format!("{err:#}"));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Kubernetes shows a container's termination message (`/dev/termination-log`, which the kubelet
/// creates) in the pod's status; the operator puts it into the StreamJob's `Degraded` condition,
/// so "wrong CA" or "wrong password" reaches `kubectl describe sj` without reading logs.
fn write_termination_message(message: &str) {
    const LIMIT: usize = 4096; // the kubelet's own cap
    let path = std::env::var_os("STREAMJOB_TERMINATION_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/dev/termination-log".into());
    if !path.exists() {
        return;
    }
    let mut end = message.len().min(LIMIT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(err) = std::fs::write(&path, &message[..end]) {
        tracing::debug!(%err, path = %path.display(), "cannot write the termination message");
    }
}

async fn run(command: Command, config: JobConfig) -> anyhow::Result<()> {
    match command {
        Command::Standalone(args) => {
            let options = StandaloneOptions {
                taskmanagers: usize::from(args.taskmanagers),
                embedded_kafka: args.embedded_kafka.then_some(args.partitions),
                demo_rate: args.demo,
                demo_events: args.demo_events,
                duration: args.duration,
                ..StandaloneOptions::default()
            };
            let summary = standalone::run(config, options, shutdown_signal()).await?;
            println!(
                "streamjob standalone stopped: {} events read, {} written to Redis, {} dead-lettered, {} Redis commands",
                summary.events_in, summary.events_written, summary.events_dead_lettered, summary.redis_commands
            );
            Ok(())
        }
        // Filled in by the jobmanager/taskmanager runtimes (jobmanager::run, taskmanager client).
        Command::Jobmanager(args) => {
            let mut options = streamjob_worker::jobmanager::JobManagerOptions::from_config(&config);
            if args.from_savepoint.is_some() {
                options.from_savepoint = args.from_savepoint;
            }
            options.allow_non_restored_state |= args.allow_non_restored_state;
            streamjob_worker::jobmanager::run(
                std::sync::Arc::new(config),
                options,
                shutdown_signal(),
            )
            .await?;
            Ok(())
        }
        Command::Taskmanager(_) => {
            let options = streamjob_worker::taskmanager::TaskManagerOptions::from_env();
            streamjob_worker::taskmanager::run(
                std::sync::Arc::new(config),
                options,
                shutdown_signal(),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
            Ok(())
        }
        Command::MockKafka(args) => {
            let topics: Vec<(&str, i32)> = args
                .topics
                .iter()
                .map(|t| (t.as_str(), args.partitions))
                .collect();
            let broker = EmbeddedKafka::start(args.brokers, &topics)?;
            // The harness reads this line to learn where the broker listens.
            println!("BOOTSTRAP {}", broker.bootstrap_servers());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            shutdown_signal().await;
            drop(broker);
            Ok(())
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<JobConfig, String> {
    let mut config = match path {
        Some(path) => JobConfig::load(path).map_err(|e| e.to_string())?,
        None => JobConfig::default(),
    };
    config.apply_env(|name| std::env::var(name).ok());
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn init_logging(config: &JobConfig, format: Option<LogFormatArg>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormatArg::Json) => true,
        Some(LogFormatArg::Text) => false,
        None => config.logging.format == LogFormat::Json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder.with_target(false).init();
    }
}

/// Resolves at the first SIGTERM or SIGINT. The handlers are installed when this is called (not
/// when first polled), so a signal during start-up is never fatal. A second signal ends the
/// process at once (exit code 1) without waiting for in-flight batches: exactly-once still holds,
/// since a batch either moved its partition's fence in Redis or left no trace there.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            _ = next_signal(&mut int) => tracing::info!("SIGINT received; stopping (a second signal exits at once)"),
            _ = next_signal(&mut term) => tracing::info!("SIGTERM received; stopping (a second signal exits at once)"),
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = next_signal(&mut int) => {}
                _ = next_signal(&mut term) => {}
            }
            tracing::warn!(
                "second stop signal: exiting now; batches not yet applied are re-read from the \
                 fence by the partitions' next owner"
            );
            std::process::exit(i32::from(EXIT_RUNTIME));
        });
    }
}

async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
