//! The assignment planner: which partitions move, and where. Pure and deterministic.
//!
//! Goals, in order: a partition never has two owners (a partition that is being revoked is
//! neither free nor counted, so it is only reassigned once its owner released it); an even spread
//! (every member owns ⌊P/N⌋ or ⌈P/N⌉); minimal movement (the members that get the extra partition
//! are the ones that already hold the most, and only a member's excess is revoked).

use std::collections::BTreeMap;

/// What the planner needs to know about one partition's current owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerView {
    pub member: String,
    /// The owner was asked to release it and has not confirmed yet.
    pub revoking: bool,
}

/// Moves to make now. Revokes and assigns never name the same partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (owner, partition): ask the owner to flush and release.
    pub revoke: Vec<(String, i32)>,
    /// (new owner, partition): free partitions to hand out.
    pub assign: Vec<(String, i32)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.revoke.is_empty() && self.assign.is_empty()
    }
}

/// How many partitions each member should own: ⌊P/N⌋, plus one for the `P mod N` members that
/// already hold the most (ties broken by id, so the plan is deterministic).
pub fn quotas(
    partition_count: u32,
    members: &[String],
    load: &BTreeMap<&str, u32>,
) -> BTreeMap<String, u32> {
    let mut quotas = BTreeMap::new();
    if members.is_empty() {
        return quotas;
    }
    let n = members.len() as u32;
    let base = partition_count / n;
    let extra = (partition_count % n) as usize;
    let mut by_load: Vec<&String> = members.iter().collect();
    by_load.sort_by(|a, b| {
        let la = load.get(a.as_str()).copied().unwrap_or(0);
        let lb = load.get(b.as_str()).copied().unwrap_or(0);
        lb.cmp(&la).then_with(|| a.cmp(b))
    });
    for (rank, member) in by_load.into_iter().enumerate() {
        quotas.insert(member.clone(), base + u32::from(rank < extra));
    }
    quotas
}

/// Plans the next moves.
///
/// * `members`: members that may own partitions (alive and not leaving).
/// * `owners`: current owner of every owned partition; partitions missing from it are free.
///
/// Partitions held by anyone not in `members` (leaving) or beyond `partition_count` are revoked.
pub fn plan(partition_count: u32, members: &[String], owners: &BTreeMap<i32, OwnerView>) -> Plan {
    let mut plan = Plan::default();
    let is_member = |m: &str| members.iter().any(|x| x == m);

    // Active holdings per member (revoking ones are on their way out).
    let mut held: BTreeMap<&str, Vec<i32>> =
        members.iter().map(|m| (m.as_str(), Vec::new())).collect();
    for (&partition, owner) in owners {
        if owner.revoking {
            continue;
        }
        let in_range = partition >= 0 && (partition as i64) < partition_count as i64;
        if !in_range || !is_member(&owner.member) {
            plan.revoke.push((owner.member.clone(), partition));
            continue;
        }
        if let Some(list) = held.get_mut(owner.member.as_str()) {
            list.push(partition);
        }
    }
    let load: BTreeMap<&str, u32> = held.iter().map(|(m, l)| (*m, l.len() as u32)).collect();
    let quotas = quotas(partition_count, members, &load);

    // Revoke each member's excess: its highest-numbered partitions.
    let mut after: BTreeMap<String, u32> = BTreeMap::new();
    for (member, partitions) in &held {
        let quota = quotas.get(*member).copied().unwrap_or(0) as usize;
        let mut partitions = partitions.clone();
        partitions.sort_unstable();
        if partitions.len() > quota {
            for &p in &partitions[quota..] {
                plan.revoke.push(((*member).to_string(), p));
            }
        }
        after.insert((*member).to_string(), partitions.len().min(quota) as u32);
    }

    // Hand the free partitions to the members furthest below their quota.
    for partition in 0..partition_count as i32 {
        if owners.contains_key(&partition) {
            continue;
        }
        let best = members
            .iter()
            .map(|m| {
                let quota = quotas.get(m).copied().unwrap_or(0);
                let now = after.get(m).copied().unwrap_or(0);
                (quota.saturating_sub(now), m)
            })
            .filter(|(deficit, _)| *deficit > 0)
            .max_by(|(da, ma), (db, mb)| da.cmp(db).then_with(|| mb.cmp(ma)));
        if let Some((_, member)) = best {
            *after.entry(member.clone()).or_default() += 1;
            plan.assign.push((member.clone(), partition));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("tm-{i}")).collect()
    }

    /// Applies a plan as if every revoke were acknowledged at once.
    fn settle(
        owners: &mut BTreeMap<i32, OwnerView>,
        partition_count: u32,
        members: &[String],
    ) -> usize {
        let mut moved = 0;
        for _ in 0..4 {
            let p = plan(partition_count, members, owners);
            if p.is_empty() {
                break;
            }
            for (member, partition) in &p.revoke {
                let owner = owners
                    .remove(partition)
                    .expect("revoked partition had an owner");
                assert_eq!(&owner.member, member);
                moved += 1;
            }
            for (member, partition) in &p.assign {
                let previous = owners.insert(
                    *partition,
                    OwnerView {
                        member: member.clone(),
                        revoking: false,
                    },
                );
                assert!(
                    previous.is_none(),
                    "partition {partition} assigned while owned"
                );
            }
        }
        moved
    }

    fn loads(owners: &BTreeMap<i32, OwnerView>, members: &[String]) -> Vec<usize> {
        members
            .iter()
            .map(|m| owners.values().filter(|o| &o.member == m).count())
            .collect()
    }

    #[test]
    fn twelve_partitions_over_three_members_is_four_each() {
        let mut owners = BTreeMap::new();
        settle(&mut owners, 12, &names(3));
        assert_eq!(loads(&owners, &names(3)), vec![4, 4, 4]);
    }

    #[test]
    fn a_joining_member_takes_only_its_share() {
        let mut owners = BTreeMap::new();
        settle(&mut owners, 12, &names(2));
        let before = owners.clone();
        let moved = settle(&mut owners, 12, &names(3));
        assert_eq!(moved, 4, "exactly the new member's quota moves");
        assert_eq!(loads(&owners, &names(3)), vec![4, 4, 4]);
        let stayed = before
            .iter()
            .filter(|(p, o)| owners.get(p) == Some(o))
            .count();
        assert_eq!(stayed, 8);
    }

    #[test]
    fn revoking_partitions_are_never_handed_out() {
        let members = names(2);
        let mut owners = BTreeMap::new();
        owners.insert(
            0,
            OwnerView {
                member: "gone".into(),
                revoking: true,
            },
        );
        let p = plan(2, &members, &owners);
        assert!(
            p.assign.iter().all(|(_, partition)| *partition != 0),
            "{p:?}"
        );
        assert!(p.revoke.is_empty());
    }

    #[test]
    fn a_leaving_member_is_revoked_and_extra_members_idle() {
        let mut owners = BTreeMap::new();
        owners.insert(
            0,
            OwnerView {
                member: "leaver".into(),
                revoking: false,
            },
        );
        let p = plan(2, &names(4), &owners);
        assert_eq!(p.revoke, vec![("leaver".to_string(), 0)]);
        assert_eq!(
            p.assign.len(),
            1,
            "partition 1 is free, partition 0 waits for the release"
        );
        let mut owners = BTreeMap::new();
        settle(&mut owners, 2, &names(4));
        let mut l = loads(&owners, &names(4));
        l.sort_unstable();
        assert_eq!(l, vec![0, 0, 1, 1]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Join,
        Leave(usize),
        /// Acknowledge some outstanding revokes.
        Ack(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Join),
            (0usize..8).prop_map(Step::Leave),
            (0usize..8).prop_map(Step::Ack)
        ]
    }

    proptest! {
        /// Drive the planner through joins, leaves and partial acknowledgements: no partition is
        /// ever handed to a member while another holds it; once everything is acknowledged the
        /// spread is even and every partition owned.
        #[test]
        fn never_two_owners_and_even_once_settled(partition_count in 1u32..40, steps in proptest::collection::vec(step(), 1..30)) {
            let mut members: Vec<String> = vec!["tm-0".into()];
            let mut next = 1;
            let mut owners: BTreeMap<i32, OwnerView> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Join => { members.push(format!("tm-{next}")); next += 1; }
                    Step::Leave(i) => { if !members.is_empty() { let i = i % members.len(); members.remove(i); } }
                    Step::Ack(k) => {
                        let revoking: Vec<i32> = owners.iter().filter(|(_, o)| o.revoking).map(|(p, _)| *p).take(k).collect();
                        for p in revoking { owners.remove(&p); }
                    }
                }
                let p = plan(partition_count, &members, &owners);
                for (member, partition) in &p.revoke {
                    let owner = owners.get_mut(partition).expect("revoke names an owned partition");
                    prop_assert_eq!(&owner.member, member);
                    prop_assert!(!owner.revoking);
                    owner.revoking = true;
                }
                for (member, partition) in &p.assign {
                    prop_assert!(!owners.contains_key(partition), "partition {} assigned while owned", partition);
                    prop_assert!(members.contains(member));
                    owners.insert(*partition, OwnerView { member: member.clone(), revoking: false });
                }
            }
            // Acknowledge everything and settle.
            owners.retain(|_, o| !o.revoking);
            settle(&mut owners, partition_count, &members);
            if members.is_empty() {
                return Ok(());
            }
            prop_assert_eq!(owners.len() as u32, partition_count);
            let l = loads(&owners, &members);
            let (min, max) = (*l.iter().min().unwrap_or(&0), *l.iter().max().unwrap_or(&0));
            prop_assert!(max - min <= 1, "uneven spread {:?}", l);
        }

        /// From an even spread, a join moves exactly the newcomer's quota and a leave moves
        /// exactly the leaver's partitions.
        #[test]
        fn membership_changes_move_the_minimum(partition_count in 1u32..64, n in 1usize..8) {
            let mut members = names(n);
            let mut owners = BTreeMap::new();
            settle(&mut owners, partition_count, &members);
            members.push("tm-new".into());
            let moved = settle(&mut owners, partition_count, &members);
            let new_quota = owners.values().filter(|o| o.member == "tm-new").count();
            prop_assert_eq!(moved, new_quota);
            prop_assert_eq!(new_quota as u32, partition_count / (n as u32 + 1));
            let leaver = members.remove(0);
            let leaver_load = owners.values().filter(|o| o.member == leaver).count();
            let before = owners.clone();
            let moved = settle(&mut owners, partition_count, &members);
            prop_assert_eq!(moved, leaver_load);
            let kept = before.iter().filter(|(p, o)| o.member != leaver && owners.get(p) == Some(o)).count();
            prop_assert_eq!(kept, partition_count as usize - leaver_load);
        }
    }
}
