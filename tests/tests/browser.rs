//! The dashboard and the Trace page in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver), against a real standalone run: embedded broker,
//! demo traffic, a real redis-server, and an API token.
//!
//! One browser session for all of it (it is the expensive part): the dashboard shows the job
//! RUNNING, fills the partition table and draws the throughput chart; the Trace page finds a
//! receiver's timeline and a template's chart with exactly what Redis holds; the dashboard's
//! savepoint action is refused without the token and creates a savepoint with it.
//!
//! Screenshots go to a temp dir; with `STREAMJOB_UPDATE_SCREENSHOTS=1` to `tests/screenshots/`
//! (the ones the README shows: they are produced by this test, not by hand).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use streamjob_tests::{free_port, worker_binary, Worker};
use streamjob_worker::testkit::redis::RedisServer;

const TOKEN: &str = "browser-test-token";
/// Demo traffic: long enough for the dashboard's 2 s throughput samples to draw a line while it
/// flows, short enough to keep the test CI-sized.
const DEMO_RATE: u64 = 1_000;
const DEMO_EVENTS: u64 = 8_000;

/// chromedriver in a process group of its own, killed with the Chromium it started on drop (a
/// failing test never closes its session, and Chromium would outlive a killed chromedriver).
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/setup.sh --test installs chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (process_group(0)).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &ChromeDriver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

/// One HTTP/1.1 exchange with the jobmanager: (status, body).
fn http(addr: &str, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("jobmanager reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    (head[9..12].parse().expect("status"), body.to_string())
}

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Types `query` into the Trace page's emptied search box and searches.
async fn search(client: &Client, query: &str) {
    let box_ = client
        .find(Locator::Id("trace-query"))
        .await
        .expect("search box");
    box_.clear().await.expect("clear");
    box_.send_keys(query).await.expect("type");
    click(client, "#trace-search").await;
}

fn savepoint_count(addr: &str) -> usize {
    get_json(addr, "/jobs/trace/savepoints")["snapshots"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn text(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn count(client: &Client, css: &str) -> usize {
    client
        .find_all(Locator::Css(css))
        .await
        .map_or(0, |all| all.len())
}

async fn attr(client: &Client, css: &str, name: &str) -> Option<String> {
    client
        .find(Locator::Css(css))
        .await
        .ok()?
        .attr(name)
        .await
        .ok()
        .flatten()
}

fn screenshot_dir() -> PathBuf {
    if std::env::var_os("STREAMJOB_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("screenshots")
    } else {
        std::env::temp_dir().join(format!("streamjob-screenshots-{}", std::process::id()))
    }
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real picture"
    );
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join(name), png).expect("screenshot written");
}

/// Starts the standalone job; returns it and the jobmanager's `host:port` (from its banner).
fn start_standalone(dir: &Path, redis: &RedisServer) -> (Worker, String) {
    let config = dir.join("job.yaml");
    std::fs::write(
        &config,
        format!(
            "job:\n  name: trace\nsink:\n  redis:\n    url: \"{}\"\nbatch:\n  linger: 50ms\n\
             checkpoint:\n  dir: \"{}\"\n  interval: 3s\nmetrics:\n  bind: \"127.0.0.1:{}\"\n\
             jobmanager:\n  bind: \"127.0.0.1:{}\"\n",
            redis.url(),
            dir.join("state").display(),
            free_port(),
            free_port()
        ),
    )
    .expect("job.yaml");
    let log = dir.join("standalone.log");
    let config = config.display().to_string();
    let demo_rate = DEMO_RATE.to_string();
    let demo_events = DEMO_EVENTS.to_string();
    let worker = Worker::start_with_env(
        &[
            "standalone",
            "--config",
            &config,
            "--embedded-kafka",
            "--partitions",
            "4",
            "--demo",
            &demo_rate,
            "--demo-events",
            &demo_events,
            "--taskmanagers",
            "2",
        ],
        &[("STREAMJOB_API_TOKEN".to_string(), TOKEN.to_string())],
        &log,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let file = std::fs::File::open(&log).expect("log");
        let banner = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let rest = line.split("streamjob dashboard: http://").nth(1)?;
                Some(rest.split('/').next()?.to_string())
            });
        if let Some(addr) = banner {
            return (worker, addr);
        }
        assert!(
            Instant::now() < deadline,
            "no dashboard URL printed:\n{}",
            worker.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A receiver with the longest list among the first keys found, and a template hash.
fn pick_keys(redis: &RedisServer) -> (String, Vec<String>, String, BTreeMap<i64, i64>) {
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_connection()
        .expect("connection");
    let users: Vec<String> = redis::cmd("KEYS")
        .arg("138*")
        .query(&mut conn)
        .expect("keys");
    let receiver = users
        .iter()
        .max_by_key(|k| {
            redis::cmd("LLEN")
                .arg(k.as_str())
                .query::<i64>(&mut conn)
                .unwrap_or(0)
        })
        .expect("a receiver")
        .clone();
    let entries: Vec<String> = redis::cmd("LRANGE")
        .arg(&receiver)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .expect("lrange");
    let templates: Vec<String> = redis::cmd("KEYS")
        .arg("[12]0000*")
        .query(&mut conn)
        .expect("keys");
    // The one with the most states, among those with state 24 (the longest name): the state
    // axis is checked for overlapping labels.
    let template = templates
        .into_iter()
        .filter(|k| k.len() == 16)
        .max_by_key(|k| {
            let states: i64 = redis::cmd("HLEN").arg(k).query(&mut conn).unwrap_or(0);
            let night: bool = redis::cmd("HEXISTS")
                .arg(k)
                .arg("24")
                .query(&mut conn)
                .unwrap_or(false);
            (night, states)
        })
        .expect("a template hash");
    let counts: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(&template)
        .query(&mut conn)
        .expect("hgetall");
    let counts = counts
        .into_iter()
        .map(|(s, n)| (s.parse().expect("state"), n.parse().expect("count")))
        .collect();
    (receiver, entries, template, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_dashboard_and_trace_page_in_headless_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start().expect("redis-server");
    let _ = worker_binary();
    let (mut job, addr) = start_standalone(dir.path(), &redis);
    let driver = ChromeDriver::start();
    let profile = dir.path().join("chromium-profile");
    let client = browser(&driver, &profile).await;
    let base = format!("http://{addr}");

    // The dashboard: RUNNING, every partition owned, the chart gets points.
    client.goto(&format!("{base}/")).await.expect("dashboard");
    wait_until("job RUNNING", Duration::from_secs(60), || async {
        text(&client, "#job-state").await == "RUNNING"
    })
    .await;
    wait_until("4 owned partitions", Duration::from_secs(60), || async {
        let rows = count(&client, "#partitions tbody tr").await;
        let owners = client
            .find_all(Locator::Css("#partitions tbody tr td:nth-child(3)"))
            .await
            .unwrap_or_default();
        let mut owned = 0;
        for cell in owners {
            if cell
                .text()
                .await
                .unwrap_or_default()
                .starts_with("standalone-")
            {
                owned += 1;
            }
        }
        rows == 4 && owned == 4
    })
    .await;
    wait_until(
        "chart points while traffic flows",
        Duration::from_secs(60),
        || async {
            let points: usize = attr(&client, "#throughput svg", "data-points")
                .await
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let eps = text(&client, "#eps").await;
            points >= 3 && eps != "0" && eps != "–"
        },
    )
    .await;
    let committed = text(&client, "#partitions tbody tr td:nth-child(4)").await;
    assert!(
        committed.replace(',', "").parse::<u64>().is_ok(),
        "{committed}"
    );
    // The Redis the taskmanagers reported: a single node at the test's redis-server.
    let redis_address = format!("single · 127.0.0.1:{}", redis.port());
    wait_until("the Redis topology", Duration::from_secs(30), || async {
        text(&client, "#redis").await == redis_address
    })
    .await;
    screenshot(&client, "dashboard.png").await;
    client
        .set_window_size(412, 1400)
        .await
        .expect("phone-sized window");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    screenshot(&client, "dashboard-phone.png").await;
    client
        .set_window_size(1280, 1000)
        .await
        .expect("laptop window");

    // The event-time watermark, per partition and for the job.
    wait_until(
        "the event-time watermark",
        Duration::from_secs(60),
        || async {
            let shown = text(&client, "#watermark").await;
            shown.contains(':') && count(&client, "#partitions td[data-watermark]").await == 4
        },
    )
    .await;
    // Let the demo finish and the pipeline drain: then Redis holds still.
    wait_until("the demo drained", Duration::from_secs(90), || async {
        let overview = get_json(&addr, "/jobs/trace");
        overview["totalLag"] == 0
            && overview["eventsPerSecond"] == 0.0
            && overview["partitions"].as_array().is_some_and(|p| {
                p.iter()
                    .all(|p| p["highWatermark"].as_i64().unwrap_or(0) > 0)
            })
    })
    .await;
    let (receiver, entries, template, counts) = pick_keys(&redis);

    // The Trace page: the receiver's timeline has every event of its list, in order.
    client
        .goto(&format!("{base}/trace"))
        .await
        .expect("trace page");
    search(&client, &receiver).await;
    wait_until("the timeline", Duration::from_secs(20), || async {
        attr(&client, "#trace-status", "data-done").await.as_deref() == Some("user")
    })
    .await;
    let steps = client
        .find_all(Locator::Css("#timeline .step"))
        .await
        .expect("steps");
    assert_eq!(
        steps.len(),
        entries.len(),
        "one step per list entry of {receiver}"
    );
    let mut shown_states = Vec::new();
    for step in &steps {
        shown_states.push(step.attr("data-state").await.expect("attr").expect("state"));
    }
    let mut listed: Vec<(i64, String)> = entries
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e).expect("entry JSON");
            (v["timestamp"].as_i64().expect("ts"), v["state"].to_string())
        })
        .collect();
    listed.sort_by_key(|(ts, _)| std::cmp::Reverse(*ts));
    let mut expected: Vec<String> = listed.into_iter().map(|(_, s)| s).collect();
    expected.sort();
    shown_states.sort();
    assert_eq!(shown_states, expected, "the states of {receiver}'s list");

    // Its template's chart (opened from the timeline): the counts of the hash.
    let first_business_id = attr(&client, "#timeline .item", "data-business-id")
        .await
        .expect("an item");
    click(&client, "#timeline .item .head a").await;
    wait_until("the template chart", Duration::from_secs(20), || async {
        attr(&client, "#trace-status", "data-done").await.as_deref() == Some("messageTemplate")
    })
    .await;
    assert!(
        attr(&client, "#template-chart svg", "data-bars")
            .await
            .is_some(),
        "the template chart is drawn"
    );
    screenshot(&client, "trace.png").await;
    let shown = chart_counts(&client).await;
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_connection()
        .expect("connection");
    let linked: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(&first_business_id)
        .query(&mut conn)
        .expect("hgetall");
    let linked: BTreeMap<i64, i64> = linked
        .into_iter()
        .map(|(s, n)| (s.parse().expect("state"), n.parse().expect("count")))
        .collect();
    assert_eq!(shown, linked, "chart of {first_business_id}");

    // A template searched by its businessId.
    click(&client, "#trace-kind option[value=messageTemplate]").await;
    search(&client, &template).await;
    wait_until("the searched template", Duration::from_secs(20), || async {
        text(&client, "#trace-status").await.contains(&template)
    })
    .await;
    assert_eq!(chart_counts(&client).await, counts, "chart of {template}");
    // Its state axis at laptop width: long names such as 夜间屏蔽(次日早上9点发送) (state 24) are
    // wider than a bar's slot and used to run into their neighbours.
    assert!(
        counts.contains_key(&24),
        "{template} has state 24: {counts:?}"
    );
    let labels = axis_labels(&client, "#template-chart").await;
    assert_eq!(
        labels.len(),
        counts.len(),
        "one label per state: {labels:?}"
    );
    let overlaps = overlapping(&labels);
    assert!(overlaps.is_empty(), "state labels overlap: {overlaps:?}");
    for label in &labels {
        assert!(
            label.name.is_empty() || label.shown.replace(' ', "") == label.name.replace(' ', ""),
            "{label:?} shown in full"
        );
    }
    // Its per-minute chart: the windows of GET /jobs/trace/series, finality marked.
    wait_until("the per-minute chart", Duration::from_secs(20), || async {
        attr(&client, "#series-note", "data-done").await.as_deref() == Some("series")
    })
    .await;
    let api = get_json(&addr, &format!("/jobs/trace/series?businessId={template}"));
    let bars = series_bars(&client).await;
    assert!(
        !bars.is_empty(),
        "the demo's events fall into minutes: {api}"
    );
    assert_eq!(bars, api_windows(&api), "{api}");
    let late: i64 = api["late"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_i64).sum());
    assert_eq!(
        attr(&client, "#series-note", "data-late").await,
        Some(late.to_string())
    );
    screenshot(&client, "trace-template.png").await;

    // The savepoint action: refused without the token, nothing written; done with it.
    client.goto(&format!("{base}/")).await.expect("dashboard");
    wait_until("the token field", Duration::from_secs(20), || async {
        client.find(Locator::Id("api-token")).await.is_ok()
            && text(&client, "#job-state").await == "RUNNING"
    })
    .await;
    let before = savepoint_count(&addr);
    click(&client, "#savepoint-trigger").await;
    wait_until("the refusal", Duration::from_secs(20), || async {
        text(&client, "#savepoint-result")
            .await
            .contains("refused (401)")
    })
    .await;
    let result = text(&client, "#savepoint-result").await;
    assert!(result.contains("API token"), "{result}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = savepoint_count(&addr);
    assert_eq!(after, before, "a refused trigger writes nothing");

    client
        .find(Locator::Id("api-token"))
        .await
        .expect("token field")
        .send_keys(TOKEN)
        .await
        .expect("type the token");
    click(&client, "#savepoint-trigger").await;
    wait_until("the savepoint", Duration::from_secs(60), || async {
        text(&client, "#savepoint-result")
            .await
            .contains("savepoint written")
    })
    .await;
    let listed = get_json(&addr, "/jobs/trace/savepoints");
    let snapshots = listed["snapshots"].as_array().expect("snapshots");
    assert_eq!(snapshots.len(), before + 1, "{listed}");
    wait_until("the savepoint row", Duration::from_secs(10), || async {
        count(&client, "#savepoints tbody tr[data-id]").await == before + 1
    })
    .await;

    client.close().await.expect("browser closed");
    drop(driver);
    let status = job.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "standalone stops cleanly: {status:?}\n{}",
        job.log_tail(20)
    );
}

/// The per-minute chart's bars: (window start, count, final).
async fn series_bars(client: &Client) -> Vec<(i64, i64, bool)> {
    let mut bars = Vec::new();
    for bar in client
        .find_all(Locator::Css("#series-chart rect.bar"))
        .await
        .expect("bars")
    {
        let get = |name: &'static str| {
            let bar = bar.clone();
            async move { bar.attr(name).await.expect("attr").expect(name) }
        };
        bars.push((
            get("data-start").await.parse().expect("start"),
            get("data-count").await.parse().expect("count"),
            get("data-final").await == "true",
        ));
    }
    bars
}

/// The newest 60 windows of a series answer: (start, Σ counts, final).
fn api_windows(api: &Value) -> Vec<(i64, i64, bool)> {
    let windows = api["windows"].as_array().expect("windows");
    windows[windows.len().saturating_sub(60)..]
        .iter()
        .map(|w| {
            let total = w["counts"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_i64).sum());
            (
                w["startMs"].as_i64().expect("startMs"),
                total,
                w["final"].as_bool().expect("final"),
            )
        })
        .collect()
}

/// An axis label of a chart as the browser lays it out.
#[derive(Debug, Clone, PartialEq)]
struct AxisLabel {
    /// The full label (`data-label`; empty when the chart does not say).
    name: String,
    /// The text drawn, all its lines.
    shown: String,
    /// Bounding box in the page: left, top, right, bottom (px).
    rect: [f64; 4],
}

/// The labels under the bars of the chart in `chart` (centred texts other than the value on top
/// of each bar).
async fn axis_labels(client: &Client, chart: &str) -> Vec<AxisLabel> {
    let script = "return [...document.querySelectorAll(arguments[0] + \
        ' svg text[text-anchor=middle]:not(.bar-label):not(.empty)')].map((t) => { \
        const r = t.getBoundingClientRect(); \
        return [t.getAttribute('data-label') || '', t.textContent, r.left, r.top, r.right, r.bottom]; })";
    let found = client
        .execute(script, vec![json!(chart)])
        .await
        .expect("axis labels");
    found
        .as_array()
        .expect("an array")
        .iter()
        .map(|l| {
            let number = |i: usize| l[i].as_f64().expect("a coordinate");
            AxisLabel {
                name: l[0].as_str().unwrap_or_default().to_string(),
                shown: l[1].as_str().unwrap_or_default().to_string(),
                rect: [number(2), number(3), number(4), number(5)],
            }
        })
        .collect()
}

/// Pairs of labels whose boxes overlap (touching is fine).
fn overlapping(labels: &[AxisLabel]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (i, a) in labels.iter().enumerate() {
        for b in &labels[i + 1..] {
            let [al, at, ar, ab] = a.rect;
            let [bl, bt, br, bb] = b.rect;
            if al < br && bl < ar && at < bb && bt < ab {
                pairs.push((a.shown.clone(), b.shown.clone()));
            }
        }
    }
    pairs
}

/// The template chart's bars: state → count.
async fn chart_counts(client: &Client) -> BTreeMap<i64, i64> {
    let mut shown = BTreeMap::new();
    for bar in client
        .find_all(Locator::Css("#template-chart rect.bar"))
        .await
        .expect("bars")
    {
        let state = bar.attr("data-state").await.expect("attr").expect("state");
        let n = bar.attr("data-count").await.expect("attr").expect("count");
        shown.insert(
            state.parse().expect("state number"),
            n.parse().expect("count number"),
        );
    }
    shown
}
