//! A mocked Kubernetes API server on a `tower_test` channel (the ApiServerVerifier pattern of
//! kube-rs' controller-rs): every request is recorded (method, path, query, body) for the test to
//! assert, counted by verb and resource, charged a configurable latency, and answered from a small
//! in-memory object store so the reconciler sees a coherent API: get, list and watch (with label
//! selectors and resource versions), create, server-side apply, JSON patch of finalizers, and
//! deletion that waits for finalizers.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// How long watch events are kept for a watch that starts from an older resource version.
const EVENT_LOG_RETENTION: Duration = Duration::from_secs(60);

/// One request as the API server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Option<Value>,
}

impl Recorded {
    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }

    /// The RBAC verb (`get`, `list`, `watch`, `create`, `patch`, ...) and resource
    /// (`deployments`, `streamjobs/status`, ...).
    pub fn verb_and_resource(&self) -> (String, String) {
        streamjob_operator::rbac::classify(&self.method, &self.path, &self.query)
            .map(|a| (a.verb, a.resource))
            .unwrap_or_else(|| (self.method.to_lowercase(), self.path.clone()))
    }

    /// Whether the call changes something (create, update, patch, delete).
    pub fn is_write(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD")
    }
}

/// API calls counted by `(verb, resource)`.
pub type CallCounts = BTreeMap<(String, String), u64>;

type Failure = Box<dyn Fn(&Recorded) -> Option<(u16, String)> + Send>;
type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// Where a collection request points: group-version prefix, resource, namespace (None = all).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Collection {
    prefix: String,
    resource: String,
    namespace: Option<String>,
}

impl Collection {
    fn parse(path: &str) -> Option<Collection> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (prefix, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => (format!("/api/{version}"), rest),
            ["apis", group, version, rest @ ..] => (format!("/apis/{group}/{version}"), rest),
            _ => return None,
        };
        match rest {
            [resource] => Some(Collection {
                prefix,
                resource: resource.to_string(),
                namespace: None,
            }),
            ["namespaces", namespace, resource] => Some(Collection {
                prefix,
                resource: resource.to_string(),
                namespace: Some(namespace.to_string()),
            }),
            _ => None,
        }
    }

    /// Whether the object stored at item path `path` is in this collection.
    fn contains(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix(&self.prefix) else {
            return false;
        };
        let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
        match segments.as_slice() {
            ["namespaces", namespace, resource, _name] => {
                *resource == self.resource
                    && self.namespace.as_deref().is_none_or(|ns| ns == *namespace)
            }
            [resource, _name] => *resource == self.resource && self.namespace.is_none(),
            _ => false,
        }
    }
}

/// An equality label selector (`k=v,k2=v2`).
#[derive(Debug, Clone, Default)]
struct Selector(Vec<(String, String)>);

impl Selector {
    fn parse(query: &str) -> Selector {
        let Some(raw) = query_param(query, "labelSelector") else {
            return Selector::default();
        };
        Selector(
            raw.split(',')
                .filter_map(|term| {
                    let (k, v) = term.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect(),
        )
    }

    fn matches(&self, object: &Value) -> bool {
        self.0
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Watcher {
    id: u64,
    collection: Collection,
    selector: Selector,
    sender: mpsc::UnboundedSender<Bytes>,
}

struct LoggedEvent {
    at: Instant,
    version: u64,
    kind: &'static str,
    path: String,
    object: Value,
}

struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    record: bool,
    counts: CallCounts,
    fail: Option<Failure>,
    resource_version: u64,
    latency: Duration,
    watchers: Vec<Watcher>,
    next_watcher: u64,
    log: VecDeque<LoggedEvent>,
    /// Events up to this version were dropped from the log (a watch from before is told 410).
    pruned_through: u64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            requests: Vec::new(),
            record: true,
            counts: CallCounts::new(),
            fail: None,
            resource_version: 1,
            latency: Duration::ZERO,
            watchers: Vec::new(),
            next_watcher: 0,
            log: VecDeque::new(),
            pruned_through: 0,
        }
    }
}

/// The fake API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    /// A client talking to a new fake server, and the server. Requests are answered concurrently,
    /// each after the configured latency, as a real API server would.
    pub fn start() -> (Client, FakeApi) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let latency = server.lock().latency;
                    if !latency.is_zero() {
                        tokio::time::sleep(latency).await;
                    }
                    send.send_response(server.answer(request).await);
                });
            }
        });
        (Client::new(service, "default"), api)
    }

    /// Charges every call this much time before it is answered.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Whether to keep every request (tests) or only count them (benchmarks at scale).
    pub fn set_recording(&self, record: bool) {
        self.lock().record = record;
    }

    /// Stores an object at its item path (e.g. `/apis/apps/v1/namespaces/ns/deployments/x`), as
    /// another client would: a new resource version, and watchers are told.
    pub fn put(&self, path: &str, mut object: Value) {
        let mut state = self.lock();
        let kind = if state.objects.contains_key(path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        object["metadata"]["resourceVersion"] = json!(state.next_version());
        state.store(path, object, kind);
    }

    /// Changes a stored object in place (another client's update), e.g. `spec.replicas`.
    pub fn modify(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut object = self.get(path).expect("object stored");
        change(&mut object);
        self.put(path, object);
    }

    /// Marks the stored Deployments at `paths` as rolled out and ready, as the Deployment
    /// controller would.
    pub fn finish_rollouts(&self, paths: &[&str]) {
        for path in paths {
            let mut deployment = self.get(path).expect("deployment stored");
            let replicas = deployment["spec"]["replicas"].clone();
            let generation = deployment["metadata"]["generation"].clone();
            deployment["status"] = json!({
                "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "availableReplicas": replicas
            });
            self.put(path, deployment);
        }
    }

    /// Looks at a stored object without copying it (cheap enough to poll thousands).
    pub fn inspect<R>(&self, path: &str, look: impl FnOnce(Option<&Value>) -> R) -> R {
        look(self.lock().objects.get(path))
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Every stored object whose item path starts with `prefix`.
    pub fn objects_under(&self, prefix: &str) -> Vec<(String, Value)> {
        self.lock()
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn remove(&self, path: &str) {
        let mut state = self.lock();
        if let Some(object) = state.objects.remove(path) {
            state.next_version();
            let version = state.resource_version;
            state.notify(path, "DELETED", object, version);
        }
    }

    /// Deletes as `kubectl delete` does: an object with finalizers only gets a deletion
    /// timestamp and goes when the last finalizer does.
    pub fn delete(&self, path: &str) {
        self.lock().delete(path);
    }

    /// Makes matching requests fail with `(code, message)`.
    pub fn fail_when(&self, rule: impl Fn(&Recorded) -> Option<(u16, String)> + Send + 'static) {
        self.lock().fail = Some(Box::new(rule));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Calls by `(verb, resource)` since the last [`FakeApi::clear_requests`].
    pub fn counts(&self) -> CallCounts {
        self.lock().counts.clone()
    }

    /// All calls since the last clear.
    pub fn total_calls(&self) -> u64 {
        self.lock().counts.values().sum()
    }

    pub fn clear_requests(&self) {
        let mut state = self.lock();
        state.requests.clear();
        state.counts.clear();
    }

    /// Open watch streams.
    pub fn watches(&self) -> usize {
        self.lock().watchers.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers one request (also usable behind a real HTTP listener).
    pub async fn answer(&self, request: Request<Body>) -> Response<ResponseBody> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body = (!bytes.is_empty())
            .then(|| serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null));
        let recorded = Recorded {
            method,
            path,
            query,
            content_type,
            body,
        };
        let mut state = self.lock();
        *state
            .counts
            .entry(recorded.verb_and_resource())
            .or_insert(0) += 1;
        if state.record {
            state.requests.push(recorded.clone());
        }
        if let Some((code, message)) = state.fail.as_ref().and_then(|rule| rule(&recorded)) {
            return status_response(code, &message);
        }
        if recorded.method == "GET" && query_param(&recorded.query, "watch").is_some() {
            return self.start_watch(&mut state, &recorded);
        }
        let (code, value) = state.handle(&recorded);
        respond(code, &value)
    }

    /// A watch: the logged events after the requested version, then live ones, until
    /// `timeoutSeconds`.
    fn start_watch(&self, state: &mut State, request: &Recorded) -> Response<ResponseBody> {
        let Some(collection) = Collection::parse(&request.path) else {
            return respond(404, &not_found(&request.path));
        };
        let selector = Selector::parse(&request.query);
        let since: u64 = query_param(&request.query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (sender, receiver) = mpsc::unbounded();
        if since != 0 && since < state.pruned_through {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {since}")}});
            let _ = sender.unbounded_send(line(&gone));
        } else if since == 0 {
            for (path, object) in &state.objects {
                if collection.contains(path) && selector.matches(object) {
                    let _ =
                        sender.unbounded_send(line(&json!({"type": "ADDED", "object": object})));
                }
            }
        } else {
            for event in state.log.iter().filter(|e| e.version > since) {
                if collection.contains(&event.path) && selector.matches(&event.object) {
                    let _ = sender
                        .unbounded_send(line(&json!({"type": event.kind, "object": event.object})));
                }
            }
        }
        let id = state.next_watcher;
        state.next_watcher += 1;
        state.watchers.push(Watcher {
            id,
            collection,
            selector,
            sender,
        });
        let timeout = query_param(&request.query, "timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(290));
        let server = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            server.lock().watchers.retain(|w| w.id != id);
        });
        let frames = receiver.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(StreamBody::new(frames).boxed_unsync())
            .unwrap_or_else(|_| Response::new(empty()))
    }
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

impl State {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Stores `object` (its resource version already set) and tells the watchers.
    fn store(&mut self, path: &str, object: Value, kind: &'static str) {
        let version = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.resource_version);
        self.objects.insert(path.to_string(), object.clone());
        self.notify(path, kind, object, version);
    }

    fn notify(&mut self, path: &str, kind: &'static str, object: Value, version: u64) {
        if path.contains("/events/") {
            return;
        }
        let event = line(&json!({"type": kind, "object": object}));
        self.watchers.retain(|w| {
            if w.collection.contains(path) && w.selector.matches(&object) {
                w.sender.unbounded_send(event.clone()).is_ok()
            } else {
                !w.sender.is_closed()
            }
        });
        let now = Instant::now();
        while let Some(oldest) = self.log.front() {
            if now.duration_since(oldest.at) < EVENT_LOG_RETENTION {
                break;
            }
            self.pruned_through = oldest.version;
            self.log.pop_front();
        }
        self.log.push_back(LoggedEvent {
            at: now,
            version,
            kind,
            path: path.to_string(),
            object,
        });
    }

    fn handle(&mut self, request: &Recorded) -> (u16, Value) {
        let (item_path, subresource) = match request.path.strip_suffix("/status") {
            Some(base) => (base.to_string(), true),
            None => (request.path.clone(), false),
        };
        match request.method.as_str() {
            "GET" => self.read(&item_path, &request.query),
            "POST" => self.create(request),
            "PUT" => self.replace(&item_path, request),
            "PATCH" if request.content_type.contains("apply-patch") => {
                self.apply(&item_path, subresource, request)
            }
            "PATCH" if request.content_type.contains("json-patch") => {
                self.json_patch(&item_path, request)
            }
            "PATCH" => {
                // Merge patch (e.g. kube's event series): echo the stored object.
                match self.objects.get(&item_path) {
                    Some(object) => (200, object.clone()),
                    None => (404, not_found(&item_path)),
                }
            }
            "DELETE" => self.delete(&item_path),
            _ => (405, json!({})),
        }
    }

    fn read(&self, item_path: &str, query: &str) -> (u16, Value) {
        if let Some(object) = self.objects.get(item_path) {
            return (200, object.clone());
        }
        let Some(collection) = Collection::parse(item_path) else {
            return (404, not_found(item_path));
        };
        let selector = Selector::parse(query);
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(k, v)| collection.contains(k) && selector.matches(v))
            .map(|(_, v)| v.clone())
            .collect();
        (
            200,
            json!({"kind": "List", "apiVersion": "v1",
                   "metadata": {"resourceVersion": self.resource_version.to_string()},
                   "items": items}),
        )
    }

    fn create(&mut self, request: &Recorded) -> (u16, Value) {
        let mut object = request.body.clone().unwrap_or(Value::Null);
        if let Some(name) = object["metadata"]["name"].as_str() {
            if self
                .objects
                .contains_key(&format!("{}/{}", request.path, name))
            {
                return (409, conflict(&format!("{name} already exists")));
            }
        }
        let name = object["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{}{}",
                    object["metadata"]["generateName"]
                        .as_str()
                        .unwrap_or("obj-"),
                    self.resource_version
                )
            });
        object["metadata"]["name"] = json!(name);
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        let path = format!("{}/{}", request.path, name);
        // Events are counted and recorded, not kept: a benchmark makes thousands.
        if !request.path.ends_with("/events") {
            self.store(&path, object.clone(), "ADDED");
        }
        (201, object)
    }

    fn replace(&mut self, item_path: &str, request: &Recorded) -> (u16, Value) {
        let mut object = request.body.clone().unwrap_or(Value::Null);
        // Optimistic concurrency: a replace must name the stored resourceVersion.
        let stored = self
            .objects
            .get(item_path)
            .map(|o| o["metadata"]["resourceVersion"].clone());
        match stored {
            None => return (404, not_found(item_path)),
            Some(version) if version != object["metadata"]["resourceVersion"] => {
                return (409, conflict("the object has been modified"));
            }
            Some(_) => {}
        }
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        self.store(item_path, object.clone(), "MODIFIED");
        (200, object)
    }

    fn apply(&mut self, item_path: &str, subresource: bool, request: &Recorded) -> (u16, Value) {
        let applied = request.body.clone().unwrap_or(Value::Null);
        let existing = self.objects.get(item_path).cloned();
        let mut object = if subresource {
            let Some(mut existing) = existing.clone() else {
                return (404, not_found(item_path));
            };
            existing["status"] = applied["status"].clone();
            existing
        } else {
            // Like the API server: the generation moves only when the spec does, and the status
            // (owned by another controller) survives an apply.
            let mut object = applied;
            let generation = existing
                .as_ref()
                .and_then(|o| o["metadata"]["generation"].as_i64())
                .unwrap_or(0);
            let spec_changed = existing
                .as_ref()
                .is_none_or(|o| o["spec"] != object["spec"]);
            object["metadata"]["generation"] = json!(generation + i64::from(spec_changed));
            if let Some(status) = existing
                .as_ref()
                .map(|o| o["status"].clone())
                .filter(|s| !s.is_null())
            {
                object["status"] = status;
            }
            object
        };
        // An apply that changes nothing is a no-op for the API server too: no new version, no
        // watch event.
        if let Some(existing) = &existing {
            let mut unchanged = object.clone();
            unchanged["metadata"]["resourceVersion"] =
                existing["metadata"]["resourceVersion"].clone();
            if &unchanged == existing {
                return (200, unchanged);
            }
        }
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.store(item_path, object.clone(), kind);
        (200, object)
    }

    fn json_patch(&mut self, item_path: &str, request: &Recorded) -> (u16, Value) {
        let Some(mut object) = self.objects.get(item_path).cloned() else {
            return (404, not_found(item_path));
        };
        for op in request
            .body
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if op["op"] == "add" && op["path"] == "/metadata/finalizers" {
                object["metadata"]["finalizers"] = op["value"].clone();
            } else if op["op"] == "add" && op["path"] == "/metadata/finalizers/-" {
                let mut finalizers = object["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                finalizers.push(op["value"].clone());
                object["metadata"]["finalizers"] = json!(finalizers);
            } else if op["op"] == "remove" {
                object["metadata"]["finalizers"] = json!([]);
            }
        }
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        let released = object["metadata"]["deletionTimestamp"].is_string()
            && object["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        if released {
            self.objects.remove(item_path);
            let version = self.resource_version;
            self.notify(item_path, "DELETED", object.clone(), version);
        } else {
            self.store(item_path, object.clone(), "MODIFIED");
        }
        (200, object)
    }

    /// Like the API server: an object with finalizers only gets a deletion timestamp.
    fn delete(&mut self, item_path: &str) -> (u16, Value) {
        let Some(mut object) = self.objects.get(item_path).cloned() else {
            return (404, not_found(item_path));
        };
        let finalized = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        if finalized {
            if !object["metadata"]["deletionTimestamp"].is_string() {
                object["metadata"]["deletionTimestamp"] = json!("2025-11-21T04:40:00Z");
            }
            self.store(item_path, object.clone(), "MODIFIED");
        } else {
            self.objects.remove(item_path);
            let version = self.resource_version;
            self.notify(item_path, "DELETED", object.clone(), version);
        }
        (200, object)
    }
}

fn not_found(path: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{path} not found"), "reason": "NotFound", "code": 404
    })
}

fn conflict(message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": "Conflict", "code": 409
    })
}

fn status_response(code: u16, message: &str) -> Response<ResponseBody> {
    let reason = match code {
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        _ => "InternalError",
    };
    respond(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn empty() -> ResponseBody {
    Full::new(Bytes::new()).boxed_unsync()
}

fn respond(code: u16, value: &Value) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default()));
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.boxed_unsync())
        .unwrap_or_else(|_| Response::new(empty()))
}
