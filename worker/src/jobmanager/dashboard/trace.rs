//! austin-web's read API (`POST /trace/user`, `/trace/message`, `/trace/messageTemplate`) over
//! the job's own Redis: the same request body (`{messageId, receiver, businessId, dateTime}`)
//! and the same answers (`{"status":"0","msg":"操作成功","data":…}`), so austin's front end (or
//! anything written against it) can point here. Keys come from the sink's [`Layout`], so the key
//! prefix and the time zone are the job's.
//!
//! Template names, channels and creators live in austin's MySQL, which streamjob does not have:
//! an item's `title` is its template id, `sendType` and `creator` are empty.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::RedisSinkConfig;
use crate::sink::redis::{Layout, Topology};

/// Limit of one Redis read.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries read from one list at most (a user list holds one day of events).
const MAX_LIST_ENTRIES: isize = 10_000;

/// austin's `RespStatusEnum`: success, and the client-parameter error.
const STATUS_OK: &str = "0";
const MSG_OK: &str = "操作成功";
const STATUS_BAD_PARAMETERS: &str = "A0001";
const STATUS_UNAVAILABLE: &str = "B0001";

/// austin's `AnchorState` codes with their descriptions (what austin-web shows).
pub const STATES: &[(i64, &str, &str)] = &[
    (10, "RECEIVE", "消息接收成功"),
    (20, "DISCARD", "消费被丢弃"),
    (22, "NIGHT_SHIELD", "夜间屏蔽"),
    (24, "NIGHT_SHIELD_NEXT_SEND", "夜间屏蔽(次日早上9点发送)"),
    (30, "CONTENT_DEDUPLICATION", "消息被内容去重"),
    (40, "RULE_DEDUPLICATION", "消息被频次去重"),
    (50, "WHITE_LIST", "白名单过滤"),
    (60, "SEND_SUCCESS", "消息下发成功"),
    (64, "CLICK", "消息被点击"),
    (70, "SEND_FAIL", "消息下发失败"),
];

const RECEIVE: i64 = 10;

/// A state's description; a code austin does not name (e.g. a raw WeChat error code) is shown
/// as the number.
pub fn state_description(state: i64) -> String {
    STATES
        .iter()
        .find(|(code, _, _)| *code == state)
        .map_or_else(|| state.to_string(), |(_, _, d)| (*d).to_string())
}

fn state_name(state: i64) -> String {
    STATES
        .iter()
        .find(|(code, _, _)| *code == state)
        .map_or_else(|| format!("CODE_{state}"), |(_, n, _)| (*n).to_string())
}

/// austin-web's `DataParam`. `businessId` is a string in austin; a number is accepted too.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceRequest {
    pub message_id: Option<String>,
    pub receiver: Option<String>,
    pub business_id: Option<Value>,
    pub date_time: Option<i64>,
}

/// The wrapper of every answer (austin's `BasicResultVO`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    pub status: String,
    pub msg: String,
    pub data: Option<T>,
}

/// `UserTimeLineVo`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TimeLine {
    pub items: Vec<TimeLineItem>,
}

/// `UserTimeLineVo.ItemsVO`, plus `events` (the same chain, structured, for the Trace page).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimeLineItem {
    pub business_id: String,
    pub title: String,
    /// `yyyy-MM-dd HH:mm:ss:<state description>==>` per event, in the list's order.
    pub detail: String,
    pub send_type: String,
    pub creator: String,
    pub events: Vec<TimeLineEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimeLineEvent {
    pub state: i64,
    pub state_name: String,
    pub description: String,
    pub timestamp: i64,
    /// `yyyy-MM-dd HH:mm:ss` in the job's time zone.
    pub time: String,
}

/// One entry of a user or message list (`SimpleAnchorInfo`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SimpleAnchorInfo {
    pub business_id: i64,
    pub state: i64,
    pub timestamp: i64,
}

/// The ECharts bar chart payload of `/trace/messageTemplate` (austin's `EchartsVo`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Echarts {
    pub title: EchartsTitle,
    pub tooltip: BTreeMap<String, Value>,
    pub legend: EchartsLegend,
    #[serde(rename = "xAxis")]
    pub x_axis: EchartsAxis,
    #[serde(rename = "yAxis")]
    pub y_axis: BTreeMap<String, Value>,
    pub series: Vec<EchartsSeries>,
    /// Not in austin: the businessId read and the raw state codes of `xAxis.data`.
    pub business_id: String,
    pub states: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EchartsTitle {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EchartsLegend {
    pub data: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EchartsAxis {
    pub data: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EchartsSeries {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Vec<i64>,
}

/// A refused or failed trace request: austin's envelope with an error status.
#[derive(Debug)]
pub struct TraceError {
    http: StatusCode,
    status: &'static str,
    msg: String,
}

impl TraceError {
    fn bad_request(msg: impl Into<String>) -> Self {
        Self {
            http: StatusCode::BAD_REQUEST,
            status: STATUS_BAD_PARAMETERS,
            msg: msg.into(),
        }
    }

    fn unavailable(msg: impl Into<String>) -> Self {
        Self {
            http: StatusCode::SERVICE_UNAVAILABLE,
            status: STATUS_UNAVAILABLE,
            msg: msg.into(),
        }
    }
}

impl IntoResponse for TraceError {
    fn into_response(self) -> Response {
        let body: Envelope<()> = Envelope {
            status: self.status.into(),
            msg: self.msg,
            data: None,
        };
        (self.http, Json(body)).into_response()
    }
}

fn ok<T: Serialize>(data: T) -> Response {
    Json(Envelope {
        status: STATUS_OK.into(),
        msg: MSG_OK.into(),
        data: Some(data),
    })
    .into_response()
}

/// Parses the body; malformed JSON is a 400 that says where.
pub fn parse_request(body: &Bytes) -> Result<TraceRequest, TraceError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(TraceError::bad_request(
            "empty request body: send a JSON object such as {\"receiver\":\"13800000001\"}",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| TraceError::bad_request(format!("malformed JSON request body: {e}")))
}

fn required(value: Option<&str>, field: &str, example: &str) -> Result<String, TraceError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => Ok(v.to_string()),
        None => Err(TraceError::bad_request(format!(
            "field `{field}` is required (a non-empty string), e.g. {{\"{field}\":\"{example}\"}}"
        ))),
    }
}

/// Formats an epoch-ms time as austin does (`yyyy-MM-dd HH:mm:ss`), in the job's time zone.
pub fn format_time(tz: Tz, timestamp_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(timestamp_ms).map_or_else(
        || timestamp_ms.to_string(),
        |t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// Parses list entries (entries that are not SimpleAnchorInfo JSON are skipped).
pub fn parse_entries(raw: &[String]) -> Vec<SimpleAnchorInfo> {
    raw.iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect()
}

/// austin's timeline: entries grouped by businessId (groups in order of first appearance), each
/// group's chain split into one item per `RECEIVE`.
pub fn build_timeline(entries: &[SimpleAnchorInfo], tz: Tz) -> TimeLine {
    let mut groups: Vec<(i64, Vec<SimpleAnchorInfo>)> = Vec::new();
    for entry in entries {
        match groups.iter_mut().find(|(b, _)| *b == entry.business_id) {
            Some((_, list)) => list.push(*entry),
            None => groups.push((entry.business_id, vec![*entry])),
        }
    }
    let mut items = Vec::new();
    for (business_id, list) in groups {
        let mut chains: Vec<Vec<SimpleAnchorInfo>> = vec![Vec::new()];
        for entry in list {
            let current_empty = chains.last().is_none_or(Vec::is_empty);
            if entry.state == RECEIVE && !current_empty {
                chains.push(Vec::new());
            }
            if let Some(chain) = chains.last_mut() {
                chain.push(entry);
            }
        }
        for chain in chains.into_iter().filter(|c| !c.is_empty()) {
            items.push(item(business_id, &chain, tz));
        }
    }
    TimeLine { items }
}

fn item(business_id: i64, chain: &[SimpleAnchorInfo], tz: Tz) -> TimeLineItem {
    let events: Vec<TimeLineEvent> = chain
        .iter()
        .map(|e| TimeLineEvent {
            state: e.state,
            state_name: state_name(e.state),
            description: state_description(e.state),
            timestamp: e.timestamp,
            time: format_time(tz, e.timestamp),
        })
        .collect();
    let detail = events
        .iter()
        .map(|e| format!("{}:{}==>", e.time, e.description))
        .collect();
    TimeLineItem {
        business_id: business_id.to_string(),
        title: template_id(business_id).to_string(),
        detail,
        send_type: String::new(),
        creator: String::new(),
        events,
    }
}

/// Template id of a businessId (`templateType*1000000 + templateId`, then `yyyyMMdd`).
pub fn template_id(business_id: i64) -> i64 {
    (business_id / 100_000_000) % 1_000_000
}

/// The businessIds a `/trace/messageTemplate` input stands for: a 16-digit businessId itself;
/// a template id today's businessIds (austin derives the template type from MySQL, which
/// streamjob has not: both types, 10 = CLOCKING and 20 = REALTIME, are tried).
pub fn business_ids(input: &str, tz: Tz, now_ms: i64) -> Result<Vec<i64>, String> {
    let digits = input.trim();
    let parsed: Option<i64> = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten();
    let Some(number) = parsed else {
        return Err(format!(
            "field `businessId` must be a 16-digit businessId or a template id (digits), got {input:?}"
        ));
    };
    if digits.len() == 16 {
        return Ok(vec![number]);
    }
    if number > 999_999 {
        return Err(format!(
            "field `businessId` {input:?} is neither a 16-digit businessId nor a template id (at most 6 digits)"
        ));
    }
    let today: i64 = DateTime::<Utc>::from_timestamp_millis(now_ms)
        .map(|t| t.with_timezone(&tz).format("%Y%m%d").to_string())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    Ok([10i64, 20]
        .iter()
        .map(|kind| (kind * 1_000_000 + number) * 100_000_000 + today)
        .collect())
}

/// The chart of one template hash (`HGETALL {businessId}`), states in numeric order.
pub fn build_chart(business_id: i64, counts: &BTreeMap<String, String>) -> Echarts {
    let mut by_state: BTreeMap<i64, i64> = BTreeMap::new();
    for (state, count) in counts {
        if let (Ok(state), Ok(count)) = (state.parse::<i64>(), count.parse::<i64>()) {
            *by_state.entry(state).or_insert(0) += count;
        }
    }
    let date = business_id % 100_000_000;
    let title = format!(
        "【{}】在{:04}年{:02}月{:02}日的下发情况：",
        template_id(business_id),
        date / 10_000,
        (date / 100) % 100,
        date % 100
    );
    Echarts {
        title: EchartsTitle { text: title },
        legend: EchartsLegend {
            data: vec!["人数".into()],
        },
        x_axis: EchartsAxis {
            data: by_state.keys().map(|s| state_description(*s)).collect(),
        },
        series: vec![EchartsSeries {
            name: "人数".into(),
            kind: "bar".into(),
            data: by_state.values().copied().collect(),
        }],
        business_id: business_id.to_string(),
        states: by_state.keys().copied().collect(),
        ..Echarts::default()
    }
}

/// Reads the job's Redis for the trace endpoints through the sink's topology (`topology.rs`,
/// opened lazily): the URL, the primary Sentinel names (followed through a failover), or the
/// cluster primary that serves each key's slot (following `MOVED` and `ASK`).
pub struct TraceReader {
    config: RedisSinkConfig,
    layout: Layout,
    topology: OnceCell<Topology>,
}

impl TraceReader {
    pub fn new(config: RedisSinkConfig, layout: Layout) -> Self {
        Self {
            config,
            layout,
            topology: OnceCell::new(),
        }
    }

    async fn topology(&self) -> Result<&Topology, TraceError> {
        self.topology
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(READ_TIMEOUT))
                    .set_response_timeout(Some(READ_TIMEOUT))
                    .set_number_of_retries(2);
                Topology::connect(&self.config, config, READ_TIMEOUT).await
            })
            .await
            .map_err(|e| TraceError::unavailable(format!("the job's Redis is unreachable: {e}")))
    }

    /// Runs `cmd` on the one key `key` where it lives.
    async fn query<T: redis::FromRedisValue>(
        &self,
        key: &str,
        cmd: redis::Cmd,
    ) -> Result<T, TraceError> {
        let topology = self.topology().await?;
        let value = topology
            .query(
                key.as_bytes(),
                &cmd,
                "reading the job's Redis",
                READ_TIMEOUT,
            )
            .await
            .map_err(|err| {
                TraceError::unavailable(format!("reading the job's Redis failed: {err}"))
            })?;
        redis::from_redis_value(value).map_err(|err| {
            TraceError::unavailable(format!("unexpected reply from the job's Redis: {err}"))
        })
    }

    async fn list(&self, key: &str) -> Result<Vec<SimpleAnchorInfo>, TraceError> {
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(key).arg(0).arg(MAX_LIST_ENTRIES - 1);
        let raw: Vec<String> = self.query(key, cmd).await?;
        Ok(parse_entries(&raw))
    }

    /// `/trace/user`: the receiver's list, newest first.
    pub async fn user(&self, body: &Bytes) -> Result<Response, TraceError> {
        let request = parse_request(body)?;
        let receiver = required(request.receiver.as_deref(), "receiver", "13800000001")?;
        let mut entries = self.list(&self.layout.user_key(&receiver)).await?;
        entries.sort_by_key(|e| std::cmp::Reverse(e.timestamp));
        Ok(ok(build_timeline(&entries, self.layout.time_zone())))
    }

    /// `/trace/message`: the message's list, oldest first.
    pub async fn message(&self, body: &Bytes) -> Result<Response, TraceError> {
        let request = parse_request(body)?;
        let message_id = required(request.message_id.as_deref(), "messageId", "msg0001")?;
        let mut entries = self.list(&self.layout.message_key(&message_id)).await?;
        entries.sort_by_key(|e| e.timestamp);
        Ok(ok(build_timeline(&entries, self.layout.time_zone())))
    }

    /// `/trace/messageTemplate`: the template's counters by state, as an ECharts bar chart.
    pub async fn template(&self, body: &Bytes, now_ms: i64) -> Result<Response, TraceError> {
        let request = parse_request(body)?;
        let input = match &request.business_id {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => {
                return Err(TraceError::bad_request(format!(
                    "field `businessId` must be a string or a number, got {other}"
                )))
            }
        };
        let input = required(Some(&input), "businessId", "1000000120240101")?;
        let candidates = business_ids(&input, self.layout.time_zone(), now_ms)
            .map_err(TraceError::bad_request)?;
        let mut chosen = None;
        for business_id in &candidates {
            let key = self.layout.template_key(*business_id);
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&key);
            let counts: BTreeMap<String, String> = self.query(&key, cmd).await?;
            if !counts.is_empty() || chosen.is_none() {
                let empty = counts.is_empty();
                chosen = Some((*business_id, counts));
                if !empty {
                    break;
                }
            }
        }
        let (business_id, counts) = chosen.unwrap_or_default();
        Ok(ok(build_chart(business_id, &counts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(business_id: i64, state: i64, timestamp: i64) -> SimpleAnchorInfo {
        SimpleAnchorInfo {
            business_id,
            state,
            timestamp,
        }
    }

    #[test]
    fn a_chain_is_split_at_each_receive_and_formatted_like_austin() {
        let tz: Tz = "Asia/Shanghai".parse().expect("zone");
        // 2024-01-01 08:00:00 in Shanghai = 00:00:00 UTC.
        let t0 = 1_704_067_200_000;
        let entries = [
            entry(1000000120240101, 10, t0),
            entry(1000000120240101, 60, t0 + 1000),
            entry(2000000220240101, 10, t0 + 2000),
            entry(1000000120240101, 10, t0 + 3000),
        ];
        let timeline = build_timeline(&entries, tz);
        assert_eq!(timeline.items.len(), 3);
        let first = &timeline.items[0];
        assert_eq!(first.business_id, "1000000120240101");
        assert_eq!(first.title, "1");
        assert_eq!(
            first.detail,
            "2024-01-01 08:00:00:消息接收成功==>2024-01-01 08:00:01:消息下发成功==>"
        );
        assert_eq!(
            timeline.items[1].detail,
            "2024-01-01 08:00:03:消息接收成功==>"
        );
        assert_eq!(timeline.items[2].business_id, "2000000220240101");
        assert_eq!(timeline.items[2].title, "2");
    }

    #[test]
    fn template_ids_become_todays_business_ids_of_both_types() {
        let tz: Tz = "Asia/Shanghai".parse().expect("zone");
        // 2024-01-01 23:30 UTC is already 2024-01-02 in Shanghai.
        let now = 1_704_151_800_000;
        assert_eq!(
            business_ids("7", tz, now).expect("valid"),
            vec![1000000720240102, 2000000720240102]
        );
        assert_eq!(
            business_ids("1000000120240101", tz, now).expect("valid"),
            vec![1000000120240101]
        );
        assert!(business_ids("abc", tz, now).is_err());
        assert!(business_ids("12345678", tz, now).is_err());
    }

    #[test]
    fn the_chart_lists_states_in_numeric_order_with_their_descriptions() {
        let counts = BTreeMap::from([
            ("60".to_string(), "5".to_string()),
            ("40001".to_string(), "1".to_string()),
            ("10".to_string(), "7".to_string()),
        ]);
        let chart = build_chart(1000000120240101, &counts);
        assert_eq!(chart.title.text, "【1】在2024年01月01日的下发情况：");
        assert_eq!(chart.x_axis.data, ["消息接收成功", "消息下发成功", "40001"]);
        assert_eq!(chart.series[0].data, [7, 5, 1]);
        assert_eq!(chart.series[0].kind, "bar");
        assert_eq!(chart.legend.data, ["人数"]);
        let json = serde_json::to_value(&chart).expect("serialises");
        assert!(json.get("xAxis").is_some() && json.get("yAxis").is_some());
        assert_eq!(json["series"][0]["type"], "bar");
    }
}
