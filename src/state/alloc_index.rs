//! The server state's derived indexes of allocs, kept in one place as allocs are added,
//! changed and removed: allocs by job, allocs by node, what each node's live allocs use, the
//! live allocs holding ports per node, and the nodes by the `AllocModifyIndex` of their allocs.
//! Every write to [`ServerState::allocs`] in apply goes through [`ServerState::put_alloc`],
//! [`ServerState::update_alloc`] or [`ServerState::remove_alloc`];
//! [`ServerState::reindexed`](super::command::ServerState::reindexed) rebuilds them all from
//! the allocs with the same code, so the kept and the rebuilt indexes are equal by
//! construction (the unit tests check both against a full scan).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::command::{JobKey, ServerState};
use super::jobs::alloc::AllocRecord;
use super::plan::{alloc_ask, Usage};
use super::shared_str::{Interner, SharedStr};

/// An alloc's ID as the alloc table keys it: ONE string per alloc, shared by the table's key
/// and every derived index that names the alloc (at 100 000 allocs, four owned copies of
/// each ID were ~20 MiB).
pub type AllocId = SharedStr;

/// A node's ID as the node-keyed alloc indexes key it: the copy the node's allocs share (a
/// persistent map's leaf copied by apply clones its keys: a reference count each, not a
/// string).
pub type NodeKey = SharedStr;

/// What the derived indexes know of one alloc: when two versions of an alloc agree on these,
/// no index changes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Facts {
    job: JobKey,
    node: SharedStr,
    modify: u64,
    live: bool,
    ask: Usage,
    ported: bool,
}

impl Facts {
    fn of(a: &AllocRecord) -> Facts {
        let live = a.is_live();
        Facts {
            job: (a.namespace.to_string(), a.job_id.to_string()),
            node: a.node_id.clone(),
            modify: a.alloc_modify_index,
            live,
            // Only a live alloc's ask counts (and only then is its group looked up).
            ask: if live { alloc_ask(a) } else { Usage::default() },
            ported: live && !a.ports.is_empty(),
        }
    }
}

fn sub(u: &mut Usage, o: &Usage) {
    u.cpu -= o.cpu;
    u.memory_mb -= o.memory_mb;
    u.disk_mb -= o.disk_mb;
}

/// Add `id` to the set under `key` (made when the key has none yet). The map is walked once
/// where the key is there already (`get_mut`; `entry` walks it twice).
fn add_to<K: Ord + Clone>(map: &mut imbl::OrdMap<K, imbl::OrdSet<AllocId>>, key: &K, id: &AllocId) {
    match map.get_mut(key) {
        Some(set) => {
            set.insert(id.clone());
        }
        None => {
            map.insert(key.clone(), imbl::OrdSet::unit(id.clone()));
        }
    }
}

/// Remove `id` from the set under `key`, and the set when it empties; whether it emptied.
fn remove_from<K: Ord + Clone + std::borrow::Borrow<Q>, Q: Ord + ?Sized>(
    map: &mut imbl::OrdMap<K, imbl::OrdSet<AllocId>>,
    key: &Q,
    id: &str,
) -> bool {
    let emptied = match map.get_mut(key) {
        Some(set) => {
            set.remove(id);
            set.is_empty()
        }
        None => false,
    };
    if emptied {
        map.remove(key);
    }
    emptied
}

impl ServerState {
    /// Enter an alloc in every derived index (`id`: the table's key for it). Each map is
    /// walked once where the key is there already (`get_mut`; `entry` walks it twice).
    fn index_facts(&mut self, id: &AllocId, f: &Facts) {
        add_to(&mut self.allocs_by_job, &f.job, id);
        add_to(&mut self.allocs_by_node, &f.node, id);
        match self.node_usage.get_mut(f.node.as_str()) {
            Some(used) => {
                if f.live {
                    used.add(&f.ask);
                }
            }
            None => {
                let mut used = Usage::default();
                if f.live {
                    used.add(&f.ask);
                }
                self.node_usage.insert(f.node.clone(), used);
            }
        }
        if f.ported {
            add_to(&mut self.ported_allocs_by_node, &f.node, id);
        }
        self.allocs_by_modify
            .insert((f.modify, id.clone()), f.node.clone());
    }

    /// Take an alloc out of every derived index (the inverse of `index_facts`).
    fn unindex_facts(&mut self, id: &AllocId, f: &Facts) {
        remove_from(&mut self.allocs_by_job, &f.job, id);
        if remove_from(&mut self.allocs_by_node, f.node.as_str(), id) {
            self.node_usage.remove(f.node.as_str());
        } else if f.live {
            if let Some(used) = self.node_usage.get_mut(f.node.as_str()) {
                sub(used, &f.ask);
            }
        }
        if f.ported {
            remove_from(&mut self.ported_allocs_by_node, f.node.as_str(), id);
        }
        self.allocs_by_modify.remove(&(f.modify, id.clone()));
    }

    /// Empty every derived alloc index and enter each alloc again (what `reindexed` does).
    pub(super) fn rebuild_alloc_indexes(&mut self) {
        self.allocs_by_job = imbl::OrdMap::default();
        self.allocs_by_node = imbl::OrdMap::default();
        self.node_usage = imbl::OrdMap::default();
        self.ported_allocs_by_node = imbl::OrdMap::default();
        self.allocs_by_modify = imbl::OrdMap::default();
        // A record only this state holds (one just loaded) takes the key's copy of its ID
        // and one copy of each name the allocs repeat.
        let mut names = Interner::default();
        let allocs = std::mem::take(&mut self.allocs);
        for (id, mut a) in allocs {
            if let Some(m) = Arc::get_mut(&mut a) {
                m.id = id.clone();
                m.intern_names(&mut names);
            }
            let facts = Facts::of(&a);
            self.allocs.insert(id.clone(), a);
            self.index_facts(&id, &facts);
        }
    }

    /// Insert a new alloc or replace the one of its ID, keeping the derived indexes.
    /// A record no one else holds yet takes the table's copy of its ID and the copies of its
    /// names (job, plan, group, node) that another alloc of its job and one of its node hold.
    pub(crate) fn put_alloc(&mut self, mut a: Arc<AllocRecord>) {
        // The key already there, else the record's own ID (shared, not copied).
        let id = match self.allocs.get_key_value(a.id.as_str()) {
            Some((id, _)) => id.clone(),
            None => a.id.clone(),
        };
        if let Some(m) = Arc::get_mut(&mut a) {
            m.id = id.clone();
            self.share_names(m);
        }
        self.put_shared(id, a);
    }

    /// Insert a new alloc whose names are already the copies to share (plan apply's): no
    /// look for siblings, and the table walked once when the ID is new (as a plan's are).
    pub(crate) fn insert_shared_alloc(&mut self, a: AllocRecord) {
        let a = Arc::new(a);
        let id = a.id.clone();
        match self.allocs.insert(id.clone(), a.clone()) {
            None => self.index_facts(&id, &Facts::of(&a)),
            Some(old) => {
                // Taken: put the old record back and replace it the general way.
                self.allocs.insert(id, old);
                self.put_alloc(a);
            }
        }
    }

    /// Enter `a` under `id` (the table's key for it) and re-index what changed.
    fn put_shared(&mut self, id: AllocId, a: Arc<AllocRecord>) {
        let new = Facts::of(&a);
        if let Some(old) = self.allocs.insert(id.clone(), a) {
            let old = Facts::of(&old);
            if old == new {
                return;
            }
            self.unindex_facts(&id, &old);
        }
        self.index_facts(&id, &new);
    }

    /// Give `a` the copies of its names that a sibling holds: an alloc of the same job (its
    /// namespace, job ID, group and eval when equal), the node's key in the node index
    /// (its ID) and the node record's name.
    fn share_names(&self, a: &mut AllocRecord) {
        let job: JobKey = (a.namespace.to_string(), a.job_id.to_string());
        if let Some(sib) = self.job_sibling(&job) {
            a.share_names_with(sib);
        }
        if let Some((node, _)) = self.allocs_by_node.get_key_value(a.node_id.as_str()) {
            a.node_id = node.clone();
        }
        if let Some(n) = self.nodes.get(a.node_id.as_str()) {
            a.node_name.share_if_equal(&n.name);
        }
    }

    /// The copy of a node's ID its allocs hold (the node index's key; new when it has
    /// none): what plan apply gives the node's new allocs, with the node record's name.
    pub(crate) fn node_key(&self, node_id: &str) -> NodeKey {
        match self.allocs_by_node.get_key_value(node_id) {
            Some((id, _)) => id.clone(),
            None => NodeKey::from(node_id),
        }
    }

    /// One alloc of the job (the first by ID), whose names a new alloc of it can share.
    pub(crate) fn job_sibling(&self, job: &JobKey) -> Option<&Arc<AllocRecord>> {
        self.allocs_by_job
            .get(job)
            .and_then(|ids| ids.get_min())
            .and_then(|id| self.allocs.get(id.as_str()))
    }

    /// Change the alloc `id` in place (copied first when shared), keeping the derived
    /// indexes; `None` when there is no such alloc.
    pub(crate) fn update_alloc<R>(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut AllocRecord) -> R,
    ) -> Option<R> {
        let (key, slot) = self.allocs.get_key_value_mut(id)?;
        let key = key.clone();
        let old = Facts::of(slot);
        let a = Arc::make_mut(slot);
        let out = change(a);
        let new = Facts::of(a);
        if old != new {
            self.unindex_facts(&key, &old);
            self.index_facts(&key, &new);
        }
        Some(out)
    }

    /// Remove an alloc and its entries in the derived indexes.
    pub(crate) fn remove_alloc(&mut self, id: &str) -> Option<Arc<AllocRecord>> {
        let (key, old) = self.allocs.remove_with_key(id)?;
        self.unindex_facts(&key, &Facts::of(&old));
        Some(old)
    }

    /// The nodes with an alloc whose `AllocModifyIndex` is above `since` (what the server
    /// changed for them, not what their clients reported), sorted: a walk over those allocs
    /// only, not over every alloc.
    pub fn nodes_with_allocs_modified_after(&self, since: u64) -> BTreeSet<&str> {
        let Some(from) = since.checked_add(1) else {
            return BTreeSet::new();
        };
        self.allocs_by_modify
            .range((from, AllocId::from(""))..)
            .map(|(_, node)| node.as_str())
            .collect()
    }

    /// A node's live allocs that hold ports, in ID order (through the index).
    pub fn ported_allocs_on<'a>(
        &'a self,
        node_id: &str,
    ) -> impl Iterator<Item = &'a Arc<AllocRecord>> + 'a {
        self.ported_allocs_by_node
            .get(node_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.allocs.get(&**id))
    }

    /// What a node's live allocs use (through the index; zero for a node without allocs).
    pub fn usage_of(&self, node_id: &str) -> Usage {
        self.node_usage.get(node_id).copied().unwrap_or_default()
    }

    /// Panics unless every derived alloc index equals what a full scan of the allocs makes
    /// (the tests call it after every command they apply).
    #[cfg(test)]
    pub(crate) fn assert_alloc_indexes(&self) {
        let mut by_job: imbl::OrdMap<JobKey, imbl::OrdSet<AllocId>> = imbl::OrdMap::default();
        let mut by_node: imbl::OrdMap<NodeKey, imbl::OrdSet<AllocId>> = imbl::OrdMap::default();
        let mut ported: imbl::OrdMap<NodeKey, imbl::OrdSet<AllocId>> = imbl::OrdMap::default();
        let mut by_modify: imbl::OrdMap<(u64, AllocId), SharedStr> = imbl::OrdMap::default();
        for (id, a) in self.allocs.iter() {
            assert_eq!(**id, *a.id, "an alloc under another ID's key");
            by_job
                .entry((a.namespace.to_string(), a.job_id.to_string()))
                .or_default()
                .insert(id.clone());
            by_node
                .entry(a.node_id.clone())
                .or_default()
                .insert(id.clone());
            if a.is_live() && !a.ports.is_empty() {
                ported
                    .entry(a.node_id.clone())
                    .or_default()
                    .insert(id.clone());
            }
            by_modify.insert((a.alloc_modify_index, id.clone()), a.node_id.clone());
        }
        assert_eq!(self.allocs_by_job, by_job, "allocs by job");
        assert_eq!(self.allocs_by_node, by_node, "allocs by node");
        assert_eq!(self.ported_allocs_by_node, ported, "ported allocs by node");
        assert_eq!(self.allocs_by_modify, by_modify, "allocs by modify index");
        let usage: imbl::OrdMap<NodeKey, Usage> = by_node
            .keys()
            .map(|n| (n.clone(), super::plan::node_used(self, n)))
            .collect();
        assert_eq!(self.node_usage, usage, "node usage");
        self.assert_ids_shared();
    }

    /// Panics unless every ID a derived index holds is the table key's own string (the same
    /// allocation, not an equal copy).
    #[cfg(test)]
    pub(crate) fn assert_ids_shared(&self) {
        let sets = [
            self.allocs_by_job.values().collect::<Vec<_>>(),
            self.allocs_by_node.values().collect(),
            self.ported_allocs_by_node.values().collect(),
        ];
        let ids = sets
            .iter()
            .flatten()
            .flat_map(|set| set.iter())
            .chain(self.allocs_by_modify.keys().map(|(_, id)| id));
        for id in ids {
            let (key, _) = self.allocs.get_key_value(&**id).expect("indexed alloc");
            assert!(SharedStr::ptr_eq(key, id), "alloc {id}: a copy of its ID");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::jobs::alloc::AllocStamp;
    use crate::state::jobs::network::{AllocPorts, PortMapping};
    use crate::state::jobs::spec::Job;
    use crate::state::jobs::NodeInfo;
    use crate::state::status::{AllocClientStatus, AllocDesiredStatus};

    /// A small deterministic generator (xorshift), so a failing sequence replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn job(id: &str, cpu: i64) -> Arc<Job> {
        let mut j = Job::from_json(serde_json::json!({"ID": id, "TaskGroups": [{"Name": "g",
            "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Resources": {"CPU": cpu, "MemoryMB": 64},
            "Config": {"command": "/bin/true"}}]}]}))
        .unwrap();
        j.canonicalize("global");
        Arc::new(j)
    }

    fn alloc(jobs: &[Arc<Job>], rng: &mut Rng, id: &str, index: u64) -> AllocRecord {
        let job = &jobs[rng.below(jobs.len() as u64) as usize];
        let node = NodeInfo {
            id: format!("n{}", rng.below(6)),
            name: String::new(),
            unplaceable: None,
        };
        let at = AllocStamp { index, id, now: 0 };
        let mut a = AllocRecord::new_at(job, "g", 0, "e", &node, at);
        if rng.below(3) == 0 {
            a.ports = ports(rng).into();
        }
        a
    }

    fn ports(rng: &mut Rng) -> AllocPorts {
        let mut p = AllocPorts::default();
        p.group.push(PortMapping {
            label: "http".into(),
            value: 20000 + rng.below(4) as u16,
            to: 0,
            host_ip: "127.0.0.1".into(),
        });
        p
    }

    /// What `alloc_changes` did before the index: a walk over every alloc.
    fn scan_after(s: &ServerState, since: u64) -> BTreeSet<&str> {
        s.allocs
            .values()
            .filter(|a| a.alloc_modify_index > since)
            .map(|a| a.node_id.as_str())
            .collect()
    }

    fn check(s: &ServerState, index: u64) {
        s.assert_alloc_indexes();
        for since in [
            0,
            1,
            index / 3,
            index / 2,
            index.saturating_sub(2),
            index,
            u64::MAX,
        ] {
            assert_eq!(
                s.nodes_with_allocs_modified_after(since),
                scan_after(s, since),
                "nodes changed after {since}"
            );
        }
        let rebuilt = s.clone().reindexed();
        assert_eq!(rebuilt.allocs_by_modify, s.allocs_by_modify);
        assert_eq!(rebuilt.node_usage, s.node_usage);
        assert_eq!(rebuilt.ported_allocs_by_node, s.ported_allocs_by_node);
    }

    #[test]
    fn kept_indexes_equal_a_full_scan_and_a_rebuild_over_random_operations() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let jobs = [job("a", 100), job("b", 250), job("c", 0)];
            let mut s = ServerState::default();
            let mut next = 0u64;
            for index in 1..=300u64 {
                let ids: Vec<String> = s.allocs.keys().map(|k| k.to_string()).collect();
                let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize].clone();
                match rng.below(8) {
                    0 | 1 => {
                        next += 1;
                        let a = alloc(&jobs, &mut rng, &format!("a{next}"), index);
                        s.insert_new_alloc(a);
                    }
                    _ if ids.is_empty() => {}
                    2 => {
                        // Stopped by the server: its AllocModifyIndex moves.
                        let id = pick(&mut rng);
                        s.update_alloc(&id, |a| {
                            a.desired_status = AllocDesiredStatus::Stop;
                            a.modify_index = index;
                            a.alloc_modify_index = index;
                        });
                    }
                    3 => {
                        // A client report: the alloc ends, its AllocModifyIndex stays.
                        let id = pick(&mut rng);
                        s.update_alloc(&id, |a| {
                            a.client_status = AllocClientStatus::Complete;
                            a.modify_index = index;
                        });
                    }
                    4 => {
                        // Replaced whole (as a client update is), sometimes unchanged.
                        let id = pick(&mut rng);
                        let mut a = (*s.allocs[id.as_str()]).clone();
                        if rng.below(2) == 0 {
                            a.job = jobs[rng.below(3) as usize].clone();
                            a.ports = ports(&mut rng).into();
                            a.alloc_modify_index = index;
                        }
                        s.put_alloc(Arc::new(a));
                    }
                    5 => {
                        let id = pick(&mut rng);
                        s.update_alloc(&id, |a| a.next_allocation = "x".into());
                    }
                    _ => {
                        let id = pick(&mut rng);
                        assert!(s.remove_alloc(&id).is_some());
                    }
                }
                s.index = index;
                if index % 10 == 0 || rng.below(10) == 0 {
                    check(&s, index);
                }
            }
            check(&s, 300);
        }
    }

    #[test]
    fn one_id_string_per_alloc_through_create_update_replace_and_remove() {
        let jobs = [job("a", 100)];
        let mut rng = Rng(11);
        let mut s = ServerState::default();
        let mut a = alloc(&jobs, &mut rng, "x", 5);
        a.ports = ports(&mut rng).into(); // in every index, the ported one too
        s.insert_new_alloc(a);
        let key = s.allocs.get_key_value("x").unwrap().0.clone();
        // The table's key, the record's ID, the job's, the node's, the ported and the modify
        // index: 6 + ours.
        assert_eq!(SharedStr::strong_count(&key), 7);
        s.assert_ids_shared();
        // A change of facts moves it between index entries, still under the one string.
        s.update_alloc("x", |a| a.alloc_modify_index = 9);
        s.assert_ids_shared();
        // Replaced whole by a record decoded elsewhere (its own ID string): the key stays,
        // and the record takes it.
        let copy: AllocRecord =
            serde_json::from_str(&serde_json::to_string(&*s.allocs["x"]).unwrap()).unwrap();
        let mut copy = copy;
        copy.alloc_modify_index = 12;
        s.put_alloc(Arc::new(copy));
        assert!(SharedStr::ptr_eq(
            s.allocs.get_key_value("x").unwrap().0,
            &key
        ));
        assert!(SharedStr::ptr_eq(&s.allocs["x"].id, &key));
        assert_eq!(SharedStr::strong_count(&key), 7);
        s.assert_alloc_indexes();
        // Removed (GC): no index holds the string any more.
        s.remove_alloc("x");
        assert_eq!(SharedStr::strong_count(&key), 1);
        // Rebuilt at load from keys read back: shared again.
        s.insert_new_alloc(alloc(&jobs, &mut rng, "y", 13));
        s.clone().reindexed().assert_alloc_indexes();
    }

    #[test]
    fn nodes_changed_after_the_last_index_or_the_top_are_none() {
        let jobs = [job("a", 100)];
        let mut rng = Rng(7);
        let mut s = ServerState::default();
        s.insert_new_alloc(alloc(&jobs, &mut rng, "x", 5));
        let node = s.allocs["x"].node_id.clone();
        assert_eq!(
            s.nodes_with_allocs_modified_after(4),
            [node.as_str()].into()
        );
        assert!(s.nodes_with_allocs_modified_after(5).is_empty());
        assert!(s.nodes_with_allocs_modified_after(u64::MAX).is_empty());
        s.update_alloc("x", |a| a.alloc_modify_index = 9);
        assert!(s.nodes_with_allocs_modified_after(5).len() == 1);
        s.remove_alloc("x");
        assert!(s.nodes_with_allocs_modified_after(0).is_empty());
        assert!(s.node_usage.is_empty() && s.allocs_by_node.is_empty());
    }
}
