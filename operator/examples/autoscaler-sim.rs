//! Runs the autoscaler's simulator over the scenarios of issue #27 and prints, for each, the
//! scale operations, the peak lag and how long it took to clear.
//!
//! ```text
//! cargo run -p streamjob-operator --example autoscaler-sim              # the table
//! cargo run -p streamjob-operator --example autoscaler-sim -- --verbose # plus every scale and its reason
//! cargo run -p streamjob-operator --example autoscaler-sim -- --svg operator/docs/autoscaler-day.svg
//! ```
//!
//! `--svg PATH` writes the chart of the simulated day (scenario `morning-peak`) the README shows.

use std::time::Duration;

use streamjob_operator::planner::autoscaler::{chart, sim};

fn human(d: Option<Duration>) -> String {
    match d {
        Some(d) => humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
        None => "never".to_string(),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verbose = args.iter().any(|a| a == "--verbose");
    let svg_path = args
        .iter()
        .position(|a| a == "--svg")
        .and_then(|i| args.get(i + 1));
    println!(
        "{:<16} {:>5} {:>7} {:>6} {:>10} {:>12} {:>14} {:>18}",
        "scenario",
        "ups",
        "downs",
        "max tm",
        "peak lag",
        "time to clear",
        "min down gap",
        "ups while redis-bound"
    );
    for scenario in sim::scenarios() {
        let report = sim::run(&scenario);
        let (peak, at) = report.peak_lag();
        println!(
            "{:<16} {:>5} {:>7} {:>6} {:>10.0} {:>12} {:>14} {:>18}",
            report.name,
            report.scale_ups(),
            report.scale_downs(),
            report.max_replicas(),
            peak,
            human(report.time_to_clear()),
            human(report.min_gap_between_scale_downs()),
            report.scale_ups_while_redis_bound(),
        );
        if verbose {
            println!(
                "    peak lag at {}",
                human(Some(Duration::from_secs_f64(at)))
            );
            for op in &report.ops {
                let t = humantime::format_duration(Duration::from_secs(op.t as u64));
                println!("    {t:>10}  {}", op.reason);
            }
        }
        if let (Some(path), "morning-peak") = (svg_path, report.name) {
            std::fs::write(path, chart::svg(&report))?;
            println!("    wrote {path}");
        }
    }
    Ok(())
}
