//! A mocked Kubernetes API server on a `tower_test` channel (the ApiServerVerifier pattern of
//! kube-rs' controller-rs): every request is recorded (method, path, query, body) for the test to
//! assert, and answered from a small in-memory object store so the reconciler sees a coherent API.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

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
}

type Failure = Box<dyn Fn(&Recorded) -> Option<(u16, String)> + Send>;

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    fail: Option<Failure>,
    resource_version: u64,
}

/// The fake API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    /// A client talking to a new fake server, and the server.
    pub fn start() -> (Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = server.answer(request).await;
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), api)
    }

    /// Stores an object at its item path (e.g. `/apis/apps/v1/namespaces/ns/deployments/x`).
    pub fn put(&self, path: &str, object: Value) {
        self.lock().objects.insert(path.to_string(), object);
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

    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    pub fn remove(&self, path: &str) {
        self.lock().objects.remove(path);
    }

    /// Makes matching requests fail with `(code, message)`.
    pub fn fail_when(&self, rule: impl Fn(&Recorded) -> Option<(u16, String)> + Send + 'static) {
        self.lock().fail = Some(Box::new(rule));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
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
        state.requests.push(recorded.clone());
        if let Some((code, message)) = state.fail.as_ref().and_then(|rule| rule(&recorded)) {
            return status_response(code, &message);
        }
        let (code, value) = state.handle(&recorded);
        respond(code, &value)
    }
}

impl State {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn handle(&mut self, request: &Recorded) -> (u16, Value) {
        let (item_path, subresource) = match request.path.strip_suffix("/status") {
            Some(base) => (base.to_string(), true),
            None => (request.path.clone(), false),
        };
        match request.method.as_str() {
            "GET" => match self.objects.get(&item_path) {
                Some(object) => (200, object.clone()),
                None if is_collection(&item_path) => {
                    // A list: the stored objects directly under the collection path.
                    let prefix = format!("{item_path}/");
                    let items: Vec<Value> = self
                        .objects
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                        .map(|(_, v)| v.clone())
                        .collect();
                    (
                        200,
                        json!({"kind": "List", "apiVersion": "v1",
                               "metadata": {"resourceVersion": self.resource_version.to_string()},
                               "items": items}),
                    )
                }
                None => (404, not_found(&item_path)),
            },
            "POST" => {
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
                self.objects
                    .insert(format!("{}/{}", request.path, name), object.clone());
                (201, object)
            }
            "PUT" => {
                let mut object = request.body.clone().unwrap_or(Value::Null);
                // Optimistic concurrency: a replace must name the stored resourceVersion.
                let stored = self
                    .objects
                    .get(&item_path)
                    .map(|o| o["metadata"]["resourceVersion"].clone());
                match stored {
                    None => return (404, not_found(&item_path)),
                    Some(version) if version != object["metadata"]["resourceVersion"] => {
                        return (409, conflict("the object has been modified"));
                    }
                    Some(_) => {}
                }
                object["metadata"]["resourceVersion"] = json!(self.next_version());
                self.objects.insert(item_path, object.clone());
                (200, object)
            }
            "PATCH" if request.content_type.contains("apply-patch") => {
                let applied = request.body.clone().unwrap_or(Value::Null);
                let version = self.next_version();
                let mut object = if subresource {
                    let Some(mut existing) = self.objects.get(&item_path).cloned() else {
                        return (404, not_found(&item_path));
                    };
                    existing["status"] = applied["status"].clone();
                    existing
                } else {
                    // Like the API server: the generation moves only when the spec does, and
                    // the status (owned by another controller) survives an apply.
                    let mut object = applied;
                    let existing = self.objects.get(&item_path);
                    let generation = existing
                        .and_then(|o| o["metadata"]["generation"].as_i64())
                        .unwrap_or(0);
                    let spec_changed = existing.is_none_or(|o| o["spec"] != object["spec"]);
                    object["metadata"]["generation"] = json!(generation + i64::from(spec_changed));
                    if let Some(status) = existing
                        .map(|o| o["status"].clone())
                        .filter(|s| !s.is_null())
                    {
                        object["status"] = status;
                    }
                    object
                };
                object["metadata"]["resourceVersion"] = json!(version);
                self.objects.insert(item_path, object.clone());
                (200, object)
            }
            "PATCH" if request.content_type.contains("json-patch") => {
                let Some(mut object) = self.objects.get(&item_path).cloned() else {
                    return (404, not_found(&item_path));
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
                self.objects.insert(item_path, object.clone());
                (200, object)
            }
            "PATCH" => {
                // Merge patch (e.g. kube's event series): echo the stored object.
                match self.objects.get(&item_path) {
                    Some(object) => (200, object.clone()),
                    None => (404, not_found(&item_path)),
                }
            }
            "DELETE" => match self.objects.remove(&item_path) {
                Some(object) => (200, object),
                None => (404, not_found(&item_path)),
            },
            _ => (405, json!({})),
        }
    }
}

/// `/api/v1/namespaces/NS/RESOURCE` or `/apis/GROUP/VERSION/namespaces/NS/RESOURCE`.
fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        (segments.first().copied(), segments.len()),
        (Some("api"), 5) | (Some("apis"), 6)
    )
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

fn status_response(code: u16, message: &str) -> Response<Body> {
    let reason = match code {
        403 => "Forbidden",
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

fn respond(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(value).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::from(Vec::new())))
}
