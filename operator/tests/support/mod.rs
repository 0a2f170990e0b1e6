//! Helpers shared by the operator's integration tests.
#![allow(dead_code)]

pub mod fake_api;
pub mod fake_jobmanager;

use std::path::PathBuf;

use streamjob_operator::crd::StreamJob;

pub fn operator_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sample_text(name: &str) -> String {
    let path = operator_dir().join("samples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A sample as the API server would hand it to the operator: defaults applied (by serde, the same
/// defaults the CRD declares), uid and generation set.
pub fn sample(name: &str) -> StreamJob {
    let mut job: StreamJob =
        serde_yaml::from_str(&sample_text(name)).expect("sample parses as a StreamJob");
    job.metadata.uid = Some("7c8e7f3a-0000-4000-8000-000000000001".into());
    job.metadata.generation = Some(1);
    job.metadata.resource_version = Some("100".into());
    job
}

/// The CRD's openAPIV3Schema as JSON.
pub fn crd_schema() -> serde_json::Value {
    let crd = streamjob_operator::crd::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has a schema");
    serde_json::to_value(schema).expect("schema serialises")
}
