//! The CRD's CEL rules, evaluated client-side (kube's `cel` feature) on valid and invalid objects.
//! Each invalid case checks that the message names the offending field.

mod support;

use serde_json::{json, Value};

fn valid_object() -> Value {
    serde_json::to_value(support::sample("minimal.yaml")).expect("serialises")
}

fn validate(object: &Value) -> Result<(), String> {
    kube::core::cel::Validator::new()
        .validate(&support::crd_schema(), object, None)
        .map_err(|errors| errors.to_string())
}

/// Sets `value` at a dotted path below `spec`, creating objects on the way.
fn with(path: &str, value: Value) -> Value {
    let mut object = valid_object();
    let mut cursor = &mut object["spec"];
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if cursor.get(*part).is_none() {
            cursor[*part] = json!({});
        }
        cursor = &mut cursor[*part];
    }
    cursor[parts[parts.len() - 1]] = value;
    object
}

fn assert_refused(object: Value, expected_message: &str) {
    match validate(&object) {
        Ok(()) => panic!("accepted an object that should fail with {expected_message:?}: {object}"),
        Err(errors) => assert!(
            errors.contains(expected_message),
            "expected {expected_message:?} in:\n{errors}"
        ),
    }
}

#[test]
fn every_sample_passes_every_rule() {
    for sample in [
        "minimal.yaml",
        "full.yaml",
        "sentinel.yaml",
        "sentinel-tls.yaml",
        "cluster.yaml",
    ] {
        let object = serde_json::to_value(support::sample(sample)).expect("serialises");
        validate(&object).unwrap_or_else(|e| panic!("{sample}: {e}"));
    }
}

/// Ranges are the schema's own `minimum`/`maximum` (the API server names the field in its
/// message); no CEL rule repeats them, so one mistake gets one message.
#[test]
fn ranges_are_left_to_the_schema_not_repeated_by_rules() {
    for (path, bad) in [
        ("replicas", -1),
        ("replicas", 1001),
        ("batch.maxEvents", 0),
        ("checkpoint.retain", 0),
        ("savepoint.retention.maxCount", 0),
        ("savepoint.maxAttempts", 0),
    ] {
        validate(&with(path, json!(bad)))
            .unwrap_or_else(|e| panic!("a CEL rule repeats the range of {path}: {e}"));
    }
    let spec = &support::crd_schema()["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["minimum"].as_f64(), Some(0.0));
    assert_eq!(spec["replicas"]["maximum"].as_f64(), Some(1000.0));
    assert_eq!(
        spec["batch"]["properties"]["maxEvents"]["minimum"].as_f64(),
        Some(1.0)
    );
}

#[test]
fn image_must_not_be_empty() {
    assert_refused(
        with("image", json!("")),
        "spec.image must be a non-empty image reference",
    );
}

#[test]
fn topic_names_follow_kafkas_rule() {
    assert_refused(
        with("kafka.topic", json!("bad topic")),
        "spec.kafka.topic must be 1-249 characters",
    );
    assert_refused(
        with("kafka.topic", json!("..")),
        "spec.kafka.topic must be 1-249 characters",
    );
    assert_refused(
        with("kafka.topic", json!("t".repeat(250))),
        "spec.kafka.topic must be 1-249 characters",
    );
    assert_refused(
        with("kafka.dlqTopic", json!("dlq/x")),
        "spec.kafka.dlqTopic must be 1-249 characters",
    );
    validate(&with("kafka.topic", json!("austin.Trace_Log-2"))).expect("valid topic");
}

#[test]
fn the_dlq_topic_must_differ_from_the_source_topic() {
    assert_refused(
        with("kafka.dlqTopic", json!("austinTraceLog")),
        "spec.kafka.dlqTopic must differ from spec.kafka.topic",
    );
}

#[test]
fn brokers_are_host_port_lists() {
    assert_refused(
        with("kafka.brokers", json!("kafka")),
        "spec.kafka.brokers must be a comma separated list",
    );
    assert_refused(
        with("kafka.brokers", json!("a:1, b:2")),
        "spec.kafka.brokers must be a comma separated list",
    );
    validate(&with("kafka.brokers", json!("a:1,b.c:9093"))).expect("valid brokers");
}

#[test]
fn redis_urls_have_a_scheme_and_no_credentials() {
    assert_refused(
        with("redis.url", json!("http://redis:6379")),
        "spec.redis.url must start with redis://",
    );
    assert_refused(
        with("redis.url", json!("redis://:hunter2@redis:6379/0")),
        "spec.redis.url must not carry credentials",
    );
    validate(&with("redis.url", json!("unix:///run/redis.sock"))).expect("unix socket url");
}

#[test]
fn a_sentinel_primary_needs_a_master_name_and_host_port_nodes() {
    let sentinel = |master: &str, nodes: Value| {
        with(
            "redis.sentinel",
            json!({"masterName": master, "nodes": nodes, "passwordSecretRef": {"name": "redis", "key": "sentinel"}}),
        )
    };
    validate(&sentinel(
        "trace",
        json!(["s-0.sentinel:26379", "10.0.0.3:26379"]),
    ))
    .expect("valid sentinel");
    assert_refused(
        sentinel("", json!(["s:26379"])),
        "spec.redis.sentinel.masterName must be",
    );
    assert_refused(
        sentinel("trace", json!([])),
        "spec.redis.sentinel.nodes must list 1-16 sentinels as host:port",
    );
    assert_refused(
        sentinel("trace", json!(["s:26379", "no-port"])),
        "spec.redis.sentinel.nodes must list 1-16 sentinels as host:port",
    );
    assert_refused(
        sentinel("trace", json!(["user:pw@s:26379"])),
        "spec.redis.sentinel.nodes must list 1-16 sentinels as host:port",
    );
    let mut unix = sentinel("trace", json!(["s:26379"]));
    unix["spec"]["redis"]["url"] = json!("unix:///run/redis.sock");
    assert_refused(
        unix,
        "spec.redis.url must be redis:// or rediss:// with spec.redis.sentinel",
    );
}

#[test]
fn time_zones_look_like_iana_names() {
    assert_refused(
        with("redis.timeZone", json!("+08:00")),
        "spec.redis.timeZone must be an IANA time zone",
    );
    validate(&with(
        "redis.timeZone",
        json!("America/Argentina/Buenos_Aires"),
    ))
    .expect("IANA zone");
}

#[test]
fn durations_and_quantities_are_checked() {
    assert_refused(
        with("batch.linger", json!("20 ms")),
        "spec.batch.linger must be a duration",
    );
    assert_refused(
        with("batch.stopTimeout", json!("20 s")),
        "spec.batch.stopTimeout must be a duration",
    );
    assert_refused(
        with("checkpoint.interval", json!("10")),
        "spec.checkpoint.interval must be a duration",
    );
    assert_refused(
        with("savepoint.retention.maxAge", json!("1w")),
        "spec.savepoint.retention.maxAge must be a duration",
    );
    assert_refused(
        with("savepoint.storage.size", json!("lots")),
        "spec.savepoint.storage.size must be a positive quantity",
    );
    assert_refused(
        with("savepoint.storage.size", json!("0")),
        "spec.savepoint.storage.size must be a positive quantity",
    );
    validate(&with("savepoint.storage.size", json!("500Mi"))).expect("valid quantity");
    validate(&with("batch.linger", json!("1m30s"))).expect("compound duration");
}

#[test]
fn a_rolling_upgrades_progress_deadline_is_a_non_zero_duration() {
    for refused in ["5 minutes", "0s", "0m0s", "10"] {
        assert_refused(
            with("rolling.progressDeadline", json!(refused)),
            "spec.rolling.progressDeadline must be a non-zero duration like 5m",
        );
    }
    validate(&with("rolling.progressDeadline", json!("90s"))).expect("a duration");
    validate(&with("rolling.progressDeadline", json!("1h30m"))).expect("compound duration");
}

#[test]
fn secret_refs_must_be_well_formed() {
    assert_refused(
        with(
            "redis.passwordSecretRef",
            json!({"name": "Bad_Name", "key": "password"}),
        ),
        "secret ref name must be a DNS-1123 subdomain",
    );
    assert_refused(
        with(
            "redis.passwordSecretRef",
            json!({"name": "redis", "key": "pass word"}),
        ),
        "secret ref key must be 1-253 characters",
    );
    validate(&with(
        "redis.passwordSecretRef",
        json!({"name": "redis.creds", "key": "pass_word"}),
    ))
    .expect("valid ref");
}

#[test]
fn sasl_and_tls_need_a_matching_security_protocol() {
    let sasl = json!({
        "mechanism": "PLAIN",
        "usernameSecretRef": {"name": "kafka", "key": "user"},
        "passwordSecretRef": {"name": "kafka", "key": "password"}
    });
    assert_refused(
        with("kafka.sasl", sasl.clone()),
        "spec.kafka.securityProtocol must be sasl_plaintext or sasl_ssl",
    );
    let mut ok = with("kafka.sasl", sasl);
    ok["spec"]["kafka"]["securityProtocol"] = json!("sasl_plaintext");
    validate(&ok).expect("sasl with sasl_plaintext");

    let tls = json!({"caSecretRef": {"name": "kafka-ca", "key": "ca.crt"}});
    assert_refused(
        with("kafka.tls", tls),
        "spec.kafka.securityProtocol must be ssl or sasl_ssl",
    );
    let mut half = with(
        "kafka.tls",
        json!({"certSecretRef": {"name": "c", "key": "tls.crt"}}),
    );
    half["spec"]["kafka"]["securityProtocol"] = json!("ssl");
    assert_refused(
        half,
        "spec.kafka.tls.certSecretRef and spec.kafka.tls.keySecretRef must be set together",
    );
}

#[test]
fn cross_field_rules_hold() {
    let mut last_state = with("upgradeMode", json!("last-state"));
    last_state["spec"]["checkpoint"]["interval"] = json!("0s");
    assert_refused(
        last_state,
        "spec.upgradeMode: last-state needs periodic checkpoints",
    );
    let mut ok = with("upgradeMode", json!("last-state"));
    ok["spec"]["checkpoint"]["interval"] = json!("30s");
    validate(&ok).expect("last-state with checkpoints");

    assert_refused(
        with(
            "savepoint.onDelete",
            json!({"pvc": "delete", "finalSavepoint": true}),
        ),
        "spec.savepoint.onDelete: a final savepoint is pointless",
    );
    validate(&with(
        "savepoint.onDelete",
        json!({"pvc": "delete", "finalSavepoint": false}),
    ))
    .expect("delete without final savepoint");
}

/// A hash tag in a cluster's key prefix would pin every key, and every slot's fence, to one
/// slot; on a single node the same prefix only names the keys.
#[test]
fn a_cluster_key_prefix_holds_no_hash_tag() {
    let cluster = |prefix: &str| {
        let mut object = with("redis.keyPrefix", json!(prefix));
        object["spec"]["redis"]["url"] = json!("redis://cluster");
        object["spec"]["redis"]["cluster"] = json!({"nodes": ["redis-0.redis:6379"]});
        object
    };
    for prefix in ["{eu}:", "eu{", "{}"] {
        assert_refused(
            cluster(prefix),
            "spec.redis.keyPrefix must not contain '{' with spec.redis.cluster",
        );
        validate(&with("redis.keyPrefix", json!(prefix))).expect("a single node has no slots");
    }
    validate(&cluster("eu:")).expect("a plain prefix on a cluster");
    validate(&cluster("eu}:")).expect("a '}' alone opens no tag");
}

#[test]
fn reserved_labels_and_secret_properties_are_refused() {
    assert_refused(
        with(
            "podTemplate.labels",
            json!({"app.kubernetes.io/instance": "x"}),
        ),
        "spec.podTemplate.labels must not set app.kubernetes.io/* labels",
    );
    assert_refused(
        with("kafka.properties", json!({"sasl.password": "x"})),
        "spec.kafka.properties must not set credentials",
    );
}

#[test]
fn enums_are_closed_in_the_schema_and_in_serde() {
    let schema = support::crd_schema();
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(
        spec["upgradeMode"]["enum"],
        json!(["rolling", "savepoint", "last-state", "stateless"])
    );
    assert_eq!(spec["state"]["enum"], json!(["running", "suspended"]));
    let text = support::sample_text("minimal.yaml")
        .replace("spec:\n", "spec:\n  upgradeMode: blue-green\n");
    let error = serde_yaml::from_str::<streamjob_operator::crd::StreamJob>(&text)
        .expect_err("unknown mode");
    assert!(error.to_string().contains("blue-green"), "{error}");
}

fn validate_update(new: &Value, old: &Value) -> Result<(), String> {
    kube::core::cel::Validator::new()
        .validate(&support::crd_schema(), new, Some(old))
        .map_err(|errors| errors.to_string())
}

#[test]
fn the_savepoint_volume_can_grow_but_not_shrink_or_change_class() {
    let old = with(
        "savepoint.storage",
        json!({"size": "2Gi", "storageClassName": "standard"}),
    );
    let grown = with(
        "savepoint.storage",
        json!({"size": "5Gi", "storageClassName": "standard"}),
    );
    validate_update(&grown, &old).expect("growing is allowed");
    let shrunk = with(
        "savepoint.storage",
        json!({"size": "1Gi", "storageClassName": "standard"}),
    );
    let error = validate_update(&shrunk, &old).expect_err("shrinking is refused");
    assert!(
        error.contains("spec.savepoint.storage.size can only grow"),
        "{error}"
    );
    let reclassed = with(
        "savepoint.storage",
        json!({"size": "2Gi", "storageClassName": "fast"}),
    );
    let error = validate_update(&reclassed, &old).expect_err("class change is refused");
    assert!(
        error.contains("spec.savepoint.storage.storageClassName is immutable"),
        "{error}"
    );
    validate(&shrunk).expect("transition rules do not apply on create");
}

#[test]
fn the_redis_tls_server_name_must_be_a_dns_name() {
    let with_name = |name: &str| {
        let mut object = with("redis.tls", json!({ "serverName": name }));
        object["spec"]["redis"]["url"] = json!("rediss://10.0.0.5:6380/0");
        object
    };
    validate(&with_name("redis.internal")).expect("a DNS name");
    validate(&with_name("redis-0.redis.trace.svc.cluster.local")).expect("a service name");
    let long_label = "a".repeat(64);
    for bad in [
        "Redis.Internal",
        "redis_internal",
        "-redis.internal",
        "redis..internal",
        "10.0.0.5:6380",
        long_label.as_str(),
    ] {
        assert_refused(
            with_name(bad),
            "spec.redis.tls.serverName must be a DNS name",
        );
    }
}

#[test]
fn the_autoscaler_bounds_are_consistent() {
    let autoscaler = |value: Value| with("autoscaler", value);
    assert_refused(
        autoscaler(json!({"enabled": true, "minReplicas": 5, "maxReplicas": 3})),
        "spec.autoscaler.minReplicas must not exceed spec.autoscaler.maxReplicas",
    );
    assert_refused(
        autoscaler(json!({"targetUtilization": 0.6, "scaleDownUtilization": 0.6})),
        "spec.autoscaler.scaleDownUtilization must be below spec.autoscaler.targetUtilization",
    );
    // A whole number is a valid utilization too (JSON does not tell 1 from 1.0).
    validate(&autoscaler(
        json!({"targetUtilization": 1, "scaleDownUtilization": 0.5}),
    ))
    .expect("targetUtilization 1");
    validate(&autoscaler(
        json!({"enabled": true, "minReplicas": 3, "maxReplicas": 3}),
    ))
    .expect("min == max");
    let spec = &support::crd_schema()["properties"]["spec"]["properties"]["autoscaler"];
    assert_eq!(
        spec["properties"]["minReplicas"]["minimum"].as_f64(),
        Some(1.0)
    );
}

#[test]
fn the_autoscaler_durations_are_durations_and_the_rates_not_zero() {
    for (field, bad, message) in [
        (
            "metricsWindow",
            "0s",
            "spec.autoscaler.metricsWindow must be a non-zero duration",
        ),
        (
            "catchUpDuration",
            "0m",
            "spec.autoscaler.catchUpDuration must be a non-zero duration",
        ),
        (
            "redisLatencyLimit",
            "fast",
            "spec.autoscaler.redisLatencyLimit must be a non-zero duration",
        ),
        (
            "scaleUpStabilization",
            "30",
            "spec.autoscaler.scaleUpStabilization must be a duration",
        ),
        (
            "scaleDownStabilization",
            "ten minutes",
            "spec.autoscaler.scaleDownStabilization must be a duration",
        ),
    ] {
        assert_refused(with(&format!("autoscaler.{field}"), json!(bad)), message);
    }
    validate(&with("autoscaler.scaleUpStabilization", json!("0s"))).expect("0s: scale up at once");
    validate(&with("autoscaler.catchUpDuration", json!("10m"))).expect("10m");
}
