//! The `streamjob-operator` binary: `run` (default), `crd`, `rbac`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use streamjob_operator::http::{router, HttpState};
use streamjob_operator::leader::LeaderElector;
use streamjob_operator::metrics::Metrics;
use streamjob_operator::planner::NetworkPeers;
use streamjob_operator::reconciler::{self, Context, Scope};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// jemalloc, not glibc's allocator: a background thread hands freed pages back to the system
/// (glibc keeps them in per-thread arenas, so 1,000 deleted StreamJobs kept their peak RSS), and
/// its statistics are the `heap_bytes` metrics.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Name of the leader-election Lease.
const LEASE_NAME: &str = "streamjob-operator";

#[derive(Parser, Debug)]
#[command(
    name = "streamjob-operator",
    version,
    about = "Kubernetes operator for StreamJobs",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Flags of `run`, which is the default command.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (the default).
    Run(RunArgs),
    /// Print the StreamJob CustomResourceDefinition as YAML.
    Crd,
    /// Print the RBAC PolicyRules the operator needs, as JSON.
    Rbac,
    /// Print, offline, the children the operator would create for a StreamJob manifest.
    Render {
        /// The StreamJob manifest (YAML).
        #[arg(short, long)]
        file: std::path::PathBuf,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Namespace to watch (repeatable); none = all namespaces.
    #[arg(
        long = "watch-namespace",
        env = "WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_BIND", default_value = "0.0.0.0:8080")]
    http_bind: SocketAddr,
    /// Elect a leader through a Lease (only the leader reconciles).
    #[arg(
        long = "leader-election",
        env = "LEADER_ELECTION",
        default_value_t = true,
        overrides_with = "no_leader_election"
    )]
    leader_election: bool,
    /// Reconcile without leader election (a single replica).
    #[arg(long = "no-leader-election")]
    no_leader_election: bool,
    /// Reconciliations running at once (per watched namespace); 0 = unbounded.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Labels (`k=v,k=v`) of the namespaces whose pods may scrape the jobs' metrics through their
    /// NetworkPolicies, e.g. `kubernetes.io/metadata.name=monitoring`; unset = every namespace.
    #[arg(long, env = "METRICS_NAMESPACE_SELECTOR", value_parser = parse_labels)]
    metrics_namespace_selector: Option<std::collections::BTreeMap<String, String>>,
}

/// `k=v,k=v` as a label map.
fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!("{pair:?} is not key=value")),
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => print!("{}", streamjob_operator::crd::crd_yaml()?),
        Some(Command::Rbac) => println!("{}", streamjob_operator::rbac::policy_rules_json()),
        Some(Command::Render { file }) => print!("{}", render(&file)?),
        Some(Command::Run(args)) => run(args)?,
        None => run(cli.run)?,
    }
    Ok(())
}

/// The children of a StreamJob manifest as multi-document YAML, planned as for a new object.
fn render(file: &std::path::Path) -> anyhow::Result<String> {
    use streamjob_operator::planner::{self, Observed, PlanInput};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut job: streamjob_operator::crd::StreamJob = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a StreamJob", file.display()))?;
    job.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    // Owner references need a uid; a placeholder stands in for the one the API server assigns.
    job.metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    let observed = Observed::default();
    let plan = planner::plan(PlanInput {
        job: &job,
        observed: &observed,
        jobmanager: None,
        now: Timestamp::now(),
    })?;
    let c = &plan.children;
    let docs = [
        serde_yaml::to_string(&c.config_map)?,
        serde_yaml::to_string(&c.savepoint_pvc)?,
        serde_yaml::to_string(&c.jobmanager_service)?,
        serde_yaml::to_string(&c.jobmanager)?,
        serde_yaml::to_string(&c.taskmanager)?,
    ];
    let policies = c
        .network_policies
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(docs
        .iter()
        .chain(&policies)
        .map(|d| format!("---\n{d}"))
        .collect())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let leader_election = args.leader_election && !args.no_leader_election;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(args.http_bind)
        .await
        .with_context(|| format!("cannot bind {}", args.http_bind))?;
    let app = router(HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    })
    .route("/debug/heap", axum::routing::get(heap_report));
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    info!(bind = %args.http_bind, "serving /healthz /readyz /metrics /debug/heap");

    tokio::spawn(record_heap(metrics.clone()));
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client")?;
    let scope = Scope {
        namespaces: args
            .watch_namespaces
            .iter()
            .filter(|ns| !ns.is_empty())
            .cloned()
            .collect(),
        concurrency: args.concurrency,
    };
    info!(namespaces = ?scope.namespaces, leader_election, "starting");

    let elector = if leader_election {
        let namespace =
            std::env::var("POD_NAMESPACE").context("leader election needs POD_NAMESPACE")?;
        let identity = std::env::var("POD_NAME").context("leader election needs POD_NAME")?;
        let api: Api<Lease> = Api::namespaced(client.clone(), &namespace);
        Some(Arc::new(LeaderElector::new(
            api,
            LEASE_NAME,
            &identity,
            Duration::from_secs(15),
        )))
    } else {
        None
    };

    // A standby is ready: it serves and waits for the Lease.
    ready.store(true, Ordering::Relaxed);
    if let Some(elector) = &elector {
        let mut stop = stop_rx.clone();
        loop {
            match elector.try_acquire_or_renew(Timestamp::now()).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => warn!(%error, "leader election: cannot reach the Lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.wait_for(|s| *s) => { let _ = http.await; return Ok(()); }
            }
        }
        info!("acquired the leader Lease");
        metrics.leader.set(1);
    }

    let peers = NetworkPeers {
        operator_namespace: std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|ns| !ns.is_empty()),
        metrics_namespace_labels: args.metrics_namespace_selector.clone(),
    };
    let ctx = Arc::new(Context::new(client.clone(), metrics.clone()).with_network_peers(peers));
    let controllers = reconciler::run(client, scope, ctx, stop_rx.clone());
    let result = match &elector {
        Some(elector) => {
            let mut controllers = std::pin::pin!(controllers);
            let lease = keep_lease(elector.clone(), stop_rx.clone());
            tokio::select! {
                _ = &mut controllers => Ok(()),
                lease = lease => match lease {
                    // Shutdown: the controllers stop gracefully (in-flight reconciles finish).
                    Ok(()) => {
                        controllers.await;
                        Ok(())
                    }
                    // Lost the Lease: stop reconciling at once.
                    Err(error) => Err(error),
                },
            }
        }
        None => {
            controllers.await;
            Ok(())
        }
    };
    if let Some(elector) = &elector {
        if let Err(error) = elector.release().await {
            warn!(%error, "could not release the Lease");
        }
        metrics.leader.set(0);
    }
    let _ = http.await;
    result
}

/// Renews the Lease until shutdown; an error when leadership is lost (the process then exits and
/// restarts as a follower, so two leaders never reconcile at once for long).
async fn keep_lease(
    elector: Arc<LeaderElector>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let period = elector.lease_duration() / 3;
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        match elector.try_acquire_or_renew(Timestamp::now()).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                error!("lost the leader Lease to another replica");
                anyhow::bail!("lost the leader Lease");
            }
            Err(error) => {
                warn!(%error, "cannot renew the leader Lease");
                // Give up well before a follower may take the Lease over.
                if last_renewed.elapsed() >= elector.lease_duration() * 2 / 3 {
                    anyhow::bail!(
                        "could not renew the leader Lease for {:?}",
                        elector.lease_duration()
                    );
                }
            }
        }
    }
}

/// Publishes the allocator's heap figures every 15 s: `allocated` is what the caches hold,
/// `resident` what the process pays for it, and `active` and `metadata` say where the difference
/// goes (fragmentation, or the allocator's bookkeeping).
async fn record_heap(metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(Duration::from_secs(15));
    loop {
        every.tick().await;
        #[cfg(not(target_env = "msvc"))]
        {
            use tikv_jemalloc_ctl::{epoch, stats};
            // The statistics are a snapshot taken when the epoch advances.
            if epoch::advance().is_ok() {
                let states = [
                    ("allocated", stats::allocated::read()),
                    ("active", stats::active::read()),
                    ("metadata", stats::metadata::read()),
                    ("resident", stats::resident::read()),
                    ("retained", stats::retained::read()),
                ];
                let read: Vec<(&str, u64)> = states
                    .into_iter()
                    .filter_map(|(state, bytes)| Some((state, bytes.ok()? as u64)))
                    .collect();
                metrics.record_heap(&read);
            }
        }
    }
}

/// `/debug/heap`: jemalloc's own report (`malloc_stats_print`, merged arenas), for memory
/// questions the `heap_bytes` gauges raise: per size class, how many objects are live and how full
/// their slabs are (live objects scattered over many slabs hold pages that no free returns).
async fn heap_report() -> String {
    let mut text = Vec::new();
    #[cfg(not(target_env = "msvc"))]
    {
        let mut options = tikv_jemalloc_ctl::stats_print::Options::default();
        options.skip_mutex_statistics = true;
        options.skip_per_arena = true;
        let _ = tikv_jemalloc_ctl::stats_print::stats_print(&mut text, options);
    }
    String::from_utf8_lossy(&text).into_owned()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
