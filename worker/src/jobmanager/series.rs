//! The jobmanager's side of the event-time series: it records the final job watermark in Redis
//! (forward only) and serves `GET /jobs/{jobId}/series`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::api::{SeriesResponse, SeriesWindow, WatermarkStatus};
use crate::config::JobConfig;
use crate::sink::redis::window::{parse_window_field, WindowRules};
use crate::sink::redis::{RedisSink, SinkError, SinkOptions};

use super::Shared;

/// A Redis connection opened on first use (the jobmanager starts and serves without Redis).
pub(crate) struct SeriesRedis {
    config: Arc<JobConfig>,
    pub(crate) rules: WindowRules,
    sink: OnceCell<RedisSink>,
}

impl SeriesRedis {
    pub(crate) fn new(config: &Arc<JobConfig>) -> Self {
        Self {
            config: config.clone(),
            rules: WindowRules::from_config(&config.window),
            sink: OnceCell::new(),
        }
    }

    pub(crate) async fn sink(&self) -> Result<&RedisSink, SinkError> {
        self.sink
            .get_or_try_init(|| {
                RedisSink::connect_with(
                    &self.config.sink.redis,
                    &self.config.job.name,
                    &self.config.source.kafka.topic,
                    SinkOptions {
                        call_timeout: Duration::from_secs(2),
                        ..SinkOptions::default()
                    },
                )
            })
            .await
    }

    /// The watermark fields of the job overview.
    pub(crate) fn status(
        &self,
        job: Option<i64>,
        recorded: Option<i64>,
    ) -> Option<WatermarkStatus> {
        self.config.window.enabled.then(|| WatermarkStatus {
            watermark_ms: job,
            final_watermark_ms: recorded,
            final_before_ms: recorded.map(|w| self.rules.final_before(w)),
        })
    }
}

/// What Redis records as the final watermark (a few tries; `None` if Redis cannot say). A
/// restarted or restored jobmanager starts its watermark there; the taskmanagers read it again
/// when they claim partitions, so an unreachable Redis here costs nothing but the status.
pub(crate) async fn read_final_watermark(shared: &Shared) -> Option<i64> {
    if !shared.config.window.enabled {
        return None;
    }
    for attempt in 0..3u32 {
        let result = match shared.series.sink().await {
            Ok(sink) => sink.read_final_watermark().await,
            Err(err) => Err(err),
        };
        match result {
            Ok(recorded) => return recorded.map(|(watermark, _)| watermark),
            Err(err) => {
                tracing::warn!(%err, attempt, "cannot read the recorded final watermark yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    None
}

/// Starts the job watermark at what Redis records as final (a restarted or restored jobmanager
/// never reports less), then records every advance of the acknowledged job watermark there.
pub(crate) async fn publish_final_watermark(shared: Arc<Shared>) {
    let mut recorded = read_final_watermark(&shared).await;
    if recorded.is_some() {
        shared.with_coordinator(|c| c.seed_watermark(None, recorded));
    }
    let mut interval = tokio::time::interval(shared.config.jobmanager.heartbeat_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let (_, acknowledged) = shared.lock_coordinator().watermarks();
        let Some(watermark) = acknowledged.filter(|w| recorded.is_none_or(|r| *w > r)) else {
            continue;
        };
        let rules = shared.series.rules;
        let result = match shared.series.sink().await {
            Ok(sink) => {
                sink.record_final_watermark(watermark, rules.final_before(watermark))
                    .await
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(stored) => {
                recorded = Some(stored);
                shared.metrics.set_final_watermark(stored);
            }
            Err(err) => {
                tracing::warn!(%err, watermark, "cannot record the final watermark; retrying")
            }
        }
    }
}

/// `GET /jobs/{jobId}/series?businessId=…&from=…&to=…` (epoch ms, `to` exclusive; both
/// optional).
pub(crate) async fn read_series(
    shared: &Shared,
    business_id: i64,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<SeriesResponse, SinkError> {
    let sink = shared.series.sink().await?;
    let fields = sink.read_series(business_id).await?;
    let recorded = sink.read_final_watermark().await?;
    Ok(series_response(
        &shared.series.rules,
        business_id,
        &fields,
        recorded.map(|(_, final_before)| final_before),
        from,
        to,
    ))
}

/// Turns a series hash into windows (pure; unit-tested).
pub(crate) fn series_response(
    rules: &WindowRules,
    business_id: i64,
    fields: &BTreeMap<String, i64>,
    final_before_ms: Option<i64>,
    from: Option<i64>,
    to: Option<i64>,
) -> SeriesResponse {
    let mut windows: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    let mut late = BTreeMap::new();
    let mut skewed = BTreeMap::new();
    for (field, count) in fields {
        if let Some(state) = field.strip_prefix("late:") {
            late.insert(state.to_string(), *count);
        } else if let Some(state) = field.strip_prefix("skewed:") {
            skewed.insert(state.to_string(), *count);
        } else if let Some((start, state)) = parse_window_field(field) {
            let inside = from.is_none_or(|f| start >= f) && to.is_none_or(|t| start < t);
            if inside {
                windows
                    .entry(start)
                    .or_default()
                    .insert(state.to_string(), *count);
            }
        }
    }
    SeriesResponse {
        business_id,
        window_size_ms: rules.size_ms,
        final_before_ms,
        windows: windows
            .into_iter()
            .map(|(start, counts)| {
                let end = start + rules.size_ms;
                SeriesWindow {
                    start_ms: start,
                    end_ms: end,
                    r#final: final_before_ms.is_some_and(|f| end <= f),
                    counts,
                }
            })
            .collect(),
        late,
        skewed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WindowConfig;
    use crate::sink::redis::window::window_field;

    #[test]
    fn series_hashes_become_windows_with_finality_marked() {
        let rules = WindowRules::from_config(&WindowConfig::default());
        let t0 = 1_704_067_200_000i64;
        let mut fields = BTreeMap::new();
        fields.insert(window_field(t0, 60), 5);
        fields.insert(window_field(t0, 70), 1);
        fields.insert(window_field(t0 + 60_000, 60), 2);
        fields.insert(window_field(t0 + 120_000, 60), 9);
        fields.insert("late:60".into(), 3);
        fields.insert("skewed:10".into(), 1);
        let response = series_response(
            &rules,
            42,
            &fields,
            Some(t0 + 120_000),
            Some(t0),
            Some(t0 + 120_000),
        );
        assert_eq!(response.windows.len(), 2, "to is exclusive");
        assert!(response.windows[0].r#final && response.windows[1].r#final);
        assert_eq!(response.windows[0].counts.get("60"), Some(&5));
        assert_eq!(response.windows[0].counts.get("70"), Some(&1));
        assert_eq!(response.late.get("60"), Some(&3));
        assert_eq!(response.skewed.get("10"), Some(&1));
        let open = series_response(&rules, 42, &fields, Some(t0 + 60_000), None, None);
        let finality: Vec<bool> = open.windows.iter().map(|w| w.r#final).collect();
        assert_eq!(finality, vec![true, false, false]);
        let json = serde_json::to_string(&open.windows[0]).expect("serialises");
        assert!(json.contains(r#""final":true"#), "{json}");
    }
}
