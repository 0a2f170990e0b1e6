//! Lease-based leader election against the mocked API server: one leader at a time, a follower
//! takes over an expired Lease, a lost race is a conflict (not a second leader), release hands
//! over at once; every request is covered by the RBAC table.

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use streamjob_operator::leader::LeaderElector;
use streamjob_operator::rbac;
use support::fake_api::FakeApi;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/streamjob-operator";

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_763_700_000 + seconds).expect("valid time")
}

fn elector(client: &kube::Client, identity: &str) -> LeaderElector {
    let api: Api<Lease> = Api::namespaced(client.clone(), "ops");
    LeaderElector::new(api, "streamjob-operator", identity, Duration::from_secs(15))
}

fn holder(api: &FakeApi) -> Option<String> {
    api.get(LEASE)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn only_one_replica_leads_and_an_expired_lease_changes_hands() {
    let (client, api) = FakeApi::start();
    let a = elector(&client, "operator-a");
    let b = elector(&client, "operator-b");

    assert!(
        a.try_acquire_or_renew(at(0)).await.expect("a"),
        "a creates the Lease"
    );
    assert!(
        !b.try_acquire_or_renew(at(1)).await.expect("b"),
        "b follows a live Lease"
    );
    assert!(a.try_acquire_or_renew(at(5)).await.expect("a renews"));
    assert!(
        !b.try_acquire_or_renew(at(19)).await.expect("b"),
        "renewed at 5 s, alive until 20 s"
    );
    assert_eq!(holder(&api).as_deref(), Some("operator-a"));

    // a stops renewing (crash): after the lease duration b takes over, with a new transition.
    assert!(b.try_acquire_or_renew(at(21)).await.expect("b takes over"));
    let lease = api.get(LEASE).expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "operator-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(
        !a.try_acquire_or_renew(at(22)).await.expect("a"),
        "a comes back as a follower"
    );

    for r in api.requests() {
        let attributes = rbac::classify(&r.method, &r.path, &r.query).expect("resource request");
        assert!(
            rbac::allows(&attributes.group, &attributes.resource, &attributes.verb),
            "{attributes:?}"
        );
    }
}

#[tokio::test]
async fn a_lost_race_is_a_conflict_not_a_second_leader() {
    let (client, api) = FakeApi::start();
    let a = elector(&client, "operator-a");
    assert!(a.try_acquire_or_renew(at(0)).await.expect("a"));
    // Someone else replaced the Lease between our read and our write.
    api.fail_when(|r| {
        (r.method == "PUT").then(|| (409, "the object has been modified".to_string()))
    });
    let b = elector(&client, "operator-b");
    assert!(!b
        .try_acquire_or_renew(at(30))
        .await
        .expect("conflict is not an error"));
    assert_eq!(holder(&api).as_deref(), Some("operator-a"));
}

#[tokio::test]
async fn releasing_hands_the_lease_over_at_once() {
    let (client, api) = FakeApi::start();
    let a = elector(&client, "operator-a");
    let b = elector(&client, "operator-b");
    assert!(a.try_acquire_or_renew(at(0)).await.expect("a"));
    a.release().await.expect("release");
    assert_eq!(holder(&api), None);
    assert!(
        b.try_acquire_or_renew(at(1)).await.expect("b"),
        "no need to wait for expiry"
    );
    // Releasing a Lease someone else holds changes nothing.
    a.release().await.expect("release is a no-op");
    assert_eq!(holder(&api).as_deref(), Some("operator-b"));
}
