//! The API server's audit log, read back: every finished request with its user, verb, resource
//! and response code. Tests count the operator's calls per job and its 403s from it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// One finished request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub verb: String,
    pub user: AuditUser,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    #[serde(default)]
    pub stage: String,
    /// The path and query (the log spells it `requestURI`, which camelCase would not give).
    #[serde(default, rename = "requestURI")]
    pub request_uri: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    #[serde(default)]
    pub username: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    /// `verb resource[/subresource]`, e.g. `patch streamjobs/status`.
    pub fn call(&self) -> String {
        let resource = self
            .object_ref
            .as_ref()
            .map(|o| match &o.subresource {
                Some(sub) => format!("{}/{sub}", o.resource),
                None => o.resource.clone(),
            })
            .unwrap_or_else(|| self.request_uri.clone());
        format!("{} {resource}", self.verb)
    }

    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }
}

/// Every completed request in the log (a line cut off mid-write is skipped).
pub fn read(log: &Path) -> Vec<AuditEvent> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<AuditEvent>(line).ok())
        .filter(|e| e.stage == "ResponseComplete")
        .collect()
}

/// The requests `username` made.
pub fn by_user<'a>(events: &'a [AuditEvent], username: &str) -> Vec<&'a AuditEvent> {
    events
        .iter()
        .filter(|e| e.user.username == username)
        .collect()
}

/// How many calls of each kind (`verb resource`) the given requests are.
pub fn count_calls(events: &[&AuditEvent]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events {
        *counts.entry(event.call()).or_insert(0) += 1;
    }
    counts
}

/// The requests answered 403 Forbidden.
pub fn forbidden(events: &[AuditEvent]) -> Vec<&AuditEvent> {
    events.iter().filter(|e| e.code() == 403).collect()
}
