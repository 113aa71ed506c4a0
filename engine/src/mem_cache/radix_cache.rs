//! [`RadixCache`]: SGLang-style prefix cache over token ids → KV slot indices (page size 1).
//!
//! The tree maps token sequences to the KV slots holding their keys/values, so a request whose
//! prompt starts with an already-computed prefix (a shared system prompt, an earlier turn) reuses
//! those slots instead of recomputing them. Nodes live in an arena (`Vec` plus free list) and are
//! addressed by [`NodeId`]s that carry a generation, so a stale id is reported instead of
//! silently touching whatever node reused its index.
//!
//! Accounting is per token: every cached slot is either *evictable* (no running request uses
//! its node) or *protected* (some request holds a lock on a path through it). Unlike pymllm's
//! `radix_cache.py` (inventory defect D7) the two counters are exact at all times; the tests walk
//! the tree after random operation sequences to check it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use thiserror::Error;

/// Errors from [`RadixCache`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RadixCacheError {
    /// [`RadixCache::insert`] got token ids and KV slots of different lengths.
    #[error("radix insert length mismatch: {tokens} token id(s) but {kv_slots} KV slot(s)")]
    LengthMismatch {
        /// Token ids given.
        tokens: usize,
        /// KV slots given.
        kv_slots: usize,
    },
    /// A [`NodeId`] whose node was evicted or reset (or that came from another cache).
    #[error("radix node {node:?} is stale (evicted, reset, or never part of this cache)")]
    StaleNode {
        /// The offending id.
        node: NodeId,
    },
    /// [`RadixCache::dec_lock_ref`] on a node whose lock count is already 0.
    #[error("dec_lock_ref on radix node {node:?}, which is not locked")]
    NotLocked {
        /// The offending id.
        node: NodeId,
    },
    /// [`RadixCache::reset`] while running requests still lock part of the tree.
    #[error("cannot reset the radix cache: {protected_tokens} cached token(s) are locked by running requests")]
    ResetWhileLocked {
        /// Tokens under a lock at the time.
        protected_tokens: usize,
    },
}

/// Result alias for [`RadixCache`].
pub type Result<T> = std::result::Result<T, RadixCacheError>;

/// Handle to a tree node. The root is [`RadixCache::root`]; other ids come from
/// [`RadixCache::match_prefix`] and stay valid while the node is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId {
    index: u32,
    generation: u32,
}

/// Result of [`RadixCache::match_prefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMatch {
    /// KV slots of the longest cached prefix, one per matched token.
    pub kv_slots: Vec<u32>,
    /// Deepest node of the match (the root when nothing matched); lock it while the slots are used.
    pub last_node: NodeId,
}

#[derive(Debug, Default)]
struct Node {
    /// Token ids on the edge into this node (empty only for the root).
    key: Vec<u32>,
    /// KV slots of `key`, same length.
    value: Vec<u32>,
    /// Children keyed by the first token of their edge.
    children: HashMap<u32, u32>,
    /// Parent index (the root points at itself).
    parent: u32,
    /// Locks held on this node or any descendant.
    lock_ref: u32,
    /// Logical access time (a monotonic counter).
    last_access: u64,
    generation: u32,
    alive: bool,
}

const ROOT: u32 = 0;

/// Prefix cache mapping token sequences to the KV slots that hold them (SGLang's `RadixCache`,
/// page size 1). The cache never allocates or frees KV slots itself: the caller owns the
/// [`TokenToKvPool`](super::TokenToKvPool) and frees whatever [`insert`](Self::insert) reports as
/// duplicate and whatever [`evict`](Self::evict) hands to its callback.
///
/// Request lifecycle, as in SGLang's scheduler:
///
/// ```
/// use mllm_engine::mem_cache::radix_cache::RadixCache;
/// use mllm_engine::mem_cache::{KvDtype, TokenToKvPool};
///
/// let mut pool = TokenToKvPool::new(16, 0, 1, 1, KvDtype::F32);
/// let mut cache = RadixCache::new(false);
/// let system = [1, 2, 3, 4];
///
/// // Request A: nothing cached yet; compute all tokens, then cache them when it finishes.
/// let a = [&system[..], &[10, 11]].concat();
/// let hit = cache.match_prefix(&a);
/// assert!(hit.kv_slots.is_empty());
/// cache.inc_lock_ref(hit.last_node).unwrap();
/// let mut slots_a = hit.kv_slots.clone();
/// slots_a.extend(pool.alloc(a.len()).unwrap());
/// let dup = cache.insert(&a, &slots_a).unwrap();
/// pool.free(&slots_a[hit.kv_slots.len()..dup]).unwrap(); // duplicates of cached slots
/// cache.dec_lock_ref(hit.last_node).unwrap();
///
/// // Request B shares the system prompt: its KV is reused, only the suffix is new.
/// let b = [&system[..], &[20]].concat();
/// let hit = cache.match_prefix(&b);
/// assert_eq!(hit.kv_slots, slots_a[..4]);
/// cache.inc_lock_ref(hit.last_node).unwrap(); // protects root → last_node from eviction
/// assert_eq!(cache.protected_size(), 4);
///
/// // Under memory pressure only unlocked nodes go: A's private suffix [10, 11].
/// let evicted = cache.evict(100, |slots: &[u32]| pool.free(slots).unwrap());
/// assert_eq!(evicted, 2);
/// assert!(cache.reset().is_err()); // B still holds a lock
/// cache.dec_lock_ref(hit.last_node).unwrap();
/// pool.free(&cache.reset().unwrap()).unwrap();
/// assert_eq!(pool.available(), 16);
/// assert_eq!(cache.hit_tokens(), 4);
/// assert_eq!(cache.queried_tokens(), 11);
/// ```
#[derive(Debug)]
pub struct RadixCache {
    disabled: bool,
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    evictable_size: usize,
    protected_size: usize,
    /// Monotonic logical clock for LRU ordering.
    clock: u64,
    hit_tokens: u64,
    queried_tokens: u64,
}

impl RadixCache {
    /// An empty cache. With `disable` (`--disable-radix-cache`) every operation is a no-op:
    /// matches are empty, [`insert`](Self::insert) keeps nothing and returns 0, so the caller
    /// frees all of a finished request's slots itself.
    pub fn new(disable: bool) -> Self {
        let root = Node {
            alive: true,
            ..Node::default()
        };
        Self {
            disabled: disable,
            nodes: vec![root],
            free_nodes: Vec::new(),
            evictable_size: 0,
            protected_size: 0,
            clock: 0,
            hit_tokens: 0,
            queried_tokens: 0,
        }
    }

    /// Whether the cache was created disabled.
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// The root node (empty prefix). Locking it is a no-op.
    pub fn root(&self) -> NodeId {
        NodeId {
            index: ROOT,
            generation: self.nodes[ROOT as usize].generation,
        }
    }

    /// Cached tokens no request holds a lock on (what [`evict`](Self::evict) can free).
    pub fn evictable_size(&self) -> usize {
        self.evictable_size
    }

    /// Cached tokens on locked paths.
    pub fn protected_size(&self) -> usize {
        self.protected_size
    }

    /// All cached tokens (`evictable_size + protected_size`).
    pub fn total_size(&self) -> usize {
        self.evictable_size + self.protected_size
    }

    /// Tokens served from the cache by [`match_prefix`](Self::match_prefix) so far (cumulative,
    /// survives [`reset`](Self::reset)).
    pub fn hit_tokens(&self) -> u64 {
        self.hit_tokens
    }

    /// Tokens queried through [`match_prefix`](Self::match_prefix) so far (cumulative).
    pub fn queried_tokens(&self) -> u64 {
        self.queried_tokens
    }

    /// `hit_tokens / queried_tokens`, 0 before any query.
    pub fn hit_rate(&self) -> f64 {
        if self.queried_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.queried_tokens as f64
        }
    }

    /// Longest cached prefix of `tokens`, counted in the hit statistics. A match that ends inside
    /// an edge splits that node so `last_node` covers exactly the matched prefix. Refreshes the
    /// access time of every node on the path.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> PrefixMatch {
        let m = self.rematch_prefix(tokens);
        self.queried_tokens += tokens.len() as u64;
        self.hit_tokens += m.kv_slots.len() as u64;
        m
    }

    /// [`match_prefix`](Self::match_prefix) without touching the hit statistics, for re-matching
    /// a request's own tokens after [`insert`](Self::insert).
    pub fn rematch_prefix(&mut self, tokens: &[u32]) -> PrefixMatch {
        let mut kv_slots = Vec::new();
        if self.disabled {
            return PrefixMatch {
                kv_slots,
                last_node: self.root(),
            };
        }
        let mut node = ROOT;
        self.touch(node);
        let mut rest = tokens;
        while let Some(&child) = rest.first().and_then(|t| self.nodes[node as usize].children.get(t)) {
            self.touch(child);
            let len = common_prefix(&self.nodes[child as usize].key, rest);
            if len < self.nodes[child as usize].key.len() {
                node = self.split(child, len);
                kv_slots.extend_from_slice(&self.nodes[node as usize].value);
                break;
            }
            kv_slots.extend_from_slice(&self.nodes[child as usize].value);
            node = child;
            rest = &rest[len..];
        }
        PrefixMatch {
            kv_slots,
            last_node: self.id(node),
        }
    }

    /// Caches `kv_slots` as the KV of `tokens` and returns how many leading tokens were already
    /// cached. The tree keeps its own slots for that prefix, so the caller frees its duplicates:
    /// `kv_slots[already_owned_by_tree..returned]`, where `already_owned_by_tree` is the length
    /// of the match the request started from (SGLang's `cache_finished_req`). Slots past the
    /// returned count now belong to the tree. Disabled: keeps nothing and returns 0.
    pub fn insert(&mut self, tokens: &[u32], kv_slots: &[u32]) -> Result<usize> {
        if tokens.len() != kv_slots.len() {
            return Err(RadixCacheError::LengthMismatch {
                tokens: tokens.len(),
                kv_slots: kv_slots.len(),
            });
        }
        if self.disabled {
            return Ok(0);
        }
        let mut node = ROOT;
        self.touch(node);
        let mut matched = 0;
        while let Some(&child) = tokens
            .get(matched)
            .and_then(|t| self.nodes[node as usize].children.get(t))
        {
            self.touch(child);
            let len = common_prefix(&self.nodes[child as usize].key, &tokens[matched..]);
            matched += len;
            node = if len < self.nodes[child as usize].key.len() {
                self.split(child, len)
            } else {
                child
            };
        }
        if matched < tokens.len() {
            let leaf = self.alloc_node(node, tokens[matched..].to_vec(), kv_slots[matched..].to_vec());
            self.nodes[node as usize].children.insert(tokens[matched], leaf);
            self.evictable_size += tokens.len() - matched;
        }
        Ok(matched)
    }

    /// Locks the path root → `node` against eviction (one lock per running request).
    pub fn inc_lock_ref(&mut self, node: NodeId) -> Result<()> {
        let mut i = self.check(node)?;
        while i != ROOT {
            let n = &mut self.nodes[i as usize];
            if n.lock_ref == 0 {
                self.evictable_size -= n.value.len();
                self.protected_size += n.value.len();
            }
            n.lock_ref += 1;
            i = n.parent;
        }
        Ok(())
    }

    /// Releases a lock taken by [`inc_lock_ref`](Self::inc_lock_ref) on the same node.
    pub fn dec_lock_ref(&mut self, node: NodeId) -> Result<()> {
        let mut i = self.check(node)?;
        // Ancestors hold at least as many locks as `node`, so checking it alone suffices.
        if i != ROOT && self.nodes[i as usize].lock_ref == 0 {
            return Err(RadixCacheError::NotLocked { node });
        }
        while i != ROOT {
            let n = &mut self.nodes[i as usize];
            n.lock_ref -= 1;
            if n.lock_ref == 0 {
                self.protected_size -= n.value.len();
                self.evictable_size += n.value.len();
            }
            i = n.parent;
        }
        Ok(())
    }

    /// Evicts unlocked leaves, least recently used first, until at least `num_tokens` tokens are
    /// freed or nothing evictable is left; a parent left childless and unlocked becomes a
    /// candidate in turn. `free` receives each evicted node's slots. Returns tokens evicted.
    pub fn evict(&mut self, num_tokens: usize, mut free: impl FnMut(&[u32])) -> usize {
        let mut heap: BinaryHeap<Reverse<(u64, u32)>> = (1..self.nodes.len() as u32)
            .filter(|&i| self.is_evictable_leaf(i))
            .map(|i| Reverse((self.nodes[i as usize].last_access, i)))
            .collect();
        let mut evicted = 0;
        while evicted < num_tokens {
            let Some(Reverse((_, i))) = heap.pop() else { break };
            let parent = self.nodes[i as usize].parent;
            let value = self.delete_leaf(i);
            free(&value);
            evicted += value.len();
            self.evictable_size -= value.len();
            if parent != ROOT && self.is_evictable_leaf(parent) {
                heap.push(Reverse((self.nodes[parent as usize].last_access, parent)));
            }
        }
        evicted
    }

    /// Flushes the tree and returns every cached slot for the caller to free. Refused while any
    /// request holds a lock. Hit statistics are kept. Outstanding [`NodeId`]s other than the root
    /// become stale.
    pub fn reset(&mut self) -> Result<Vec<u32>> {
        if self.protected_size > 0 {
            return Err(RadixCacheError::ResetWhileLocked {
                protected_tokens: self.protected_size,
            });
        }
        let mut slots = Vec::with_capacity(self.total_size());
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.alive {
                slots.append(&mut n.value);
                n.children.clear();
                // The root keeps its id: requests that matched nothing may still hold it.
                if i != ROOT as usize {
                    n.alive = false;
                    n.key = Vec::new();
                    n.generation = n.generation.wrapping_add(1);
                    self.free_nodes.push(i as u32);
                }
            }
        }
        self.evictable_size = 0;
        Ok(slots)
    }

    fn id(&self, index: u32) -> NodeId {
        NodeId {
            index,
            generation: self.nodes[index as usize].generation,
        }
    }

    fn check(&self, node: NodeId) -> Result<u32> {
        match self.nodes.get(node.index as usize) {
            Some(n) if n.alive && n.generation == node.generation => Ok(node.index),
            _ => Err(RadixCacheError::StaleNode { node }),
        }
    }

    fn touch(&mut self, index: u32) {
        self.clock += 1;
        self.nodes[index as usize].last_access = self.clock;
    }

    fn is_evictable_leaf(&self, index: u32) -> bool {
        let n = &self.nodes[index as usize];
        index != ROOT && n.alive && n.children.is_empty() && n.lock_ref == 0
    }

    fn alloc_node(&mut self, parent: u32, key: Vec<u32>, value: Vec<u32>) -> u32 {
        self.clock += 1;
        let mut node = Node {
            key,
            value,
            parent,
            last_access: self.clock,
            alive: true,
            ..Node::default()
        };
        match self.free_nodes.pop() {
            Some(i) => {
                node.generation = self.nodes[i as usize].generation;
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// Splits `child`'s edge after `len` tokens (0 < len < key length): a new node takes the
    /// first `len` tokens and the lock count, `child` keeps the rest (and its id, so locks held
    /// through it stay valid). Sizes are unchanged. Returns the new node.
    fn split(&mut self, child: u32, len: usize) -> u32 {
        let c = &mut self.nodes[child as usize];
        let (parent, lock_ref, last_access) = (c.parent, c.lock_ref, c.last_access);
        let key_tail = c.key.split_off(len);
        let value_tail = c.value.split_off(len);
        let key = std::mem::replace(&mut c.key, key_tail);
        let value = std::mem::replace(&mut c.value, value_tail);
        let first = key[0];
        let child_first = self.nodes[child as usize].key[0];
        let mid = self.alloc_node(parent, key, value);
        let m = &mut self.nodes[mid as usize];
        m.lock_ref = lock_ref;
        m.last_access = last_access;
        m.children.insert(child_first, child);
        self.nodes[child as usize].parent = mid;
        self.nodes[parent as usize].children.insert(first, mid);
        mid
    }

    /// Unlinks leaf `index` from its parent, frees the arena slot, returns its KV slots.
    fn delete_leaf(&mut self, index: u32) -> Vec<u32> {
        let n = &mut self.nodes[index as usize];
        let (parent, first) = (n.parent, n.key[0]);
        let value = std::mem::take(&mut n.value);
        n.key = Vec::new();
        n.alive = false;
        n.generation = n.generation.wrapping_add(1);
        self.nodes[parent as usize].children.remove(&first);
        self.free_nodes.push(index);
        value
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Test-side KV allocator: hands out slots `1..=capacity`, panics on a double free.
    struct Pool {
        free: Vec<u32>,
        allocated: HashSet<u32>,
    }

    impl Pool {
        fn new(capacity: u32) -> Self {
            Self {
                free: (1..=capacity).rev().collect(),
                allocated: HashSet::new(),
            }
        }

        fn alloc(&mut self, n: usize) -> Vec<u32> {
            let slots = self.free.split_off(self.free.len() - n);
            for &s in &slots {
                assert!(self.allocated.insert(s));
            }
            slots
        }

        fn free(&mut self, slots: &[u32]) {
            for &s in slots {
                assert!(self.allocated.remove(&s), "slot {s} double-freed");
                self.free.push(s);
            }
        }
    }

    /// Walks the tree, checks its structure and size counters, returns every cached slot.
    fn check_invariants(c: &RadixCache) -> HashSet<u32> {
        let (mut evictable, mut protected, mut seen) = (0, 0, 0);
        let mut slots = HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(i) = stack.pop() {
            let n = &c.nodes[i as usize];
            assert!(n.alive, "dead node {i} reachable");
            seen += 1;
            if i == ROOT {
                assert!(n.key.is_empty() && n.value.is_empty() && n.lock_ref == 0);
            } else {
                assert!(!n.key.is_empty(), "empty edge at node {i}");
                assert_eq!(n.key.len(), n.value.len());
                assert_eq!(c.nodes[n.parent as usize].children.get(&n.key[0]), Some(&i));
                if n.lock_ref > 0 {
                    protected += n.value.len();
                } else {
                    evictable += n.value.len();
                }
                let child_locks: u32 = n.children.values().map(|&ch| c.nodes[ch as usize].lock_ref).sum();
                assert!(n.lock_ref >= child_locks, "node {i} has fewer locks than its children");
            }
            for &s in &n.value {
                assert!(slots.insert(s), "slot {s} cached twice");
            }
            for (&t, &ch) in &n.children {
                assert_eq!(c.nodes[ch as usize].key[0], t);
                assert_eq!(c.nodes[ch as usize].parent, i);
                stack.push(ch);
            }
        }
        assert_eq!(
            seen,
            c.nodes.iter().filter(|n| n.alive).count(),
            "unreachable live nodes"
        );
        assert_eq!(seen + c.free_nodes.len(), c.nodes.len());
        assert_eq!(c.evictable_size(), evictable);
        assert_eq!(c.protected_size(), protected);
        assert_eq!(c.total_size(), slots.len());
        slots
    }

    fn live_nodes(c: &RadixCache) -> usize {
        c.nodes.iter().filter(|n| n.alive).count() - 1
    }

    #[test]
    fn radix_shared_system_prompt_is_reused() {
        let mut pool = Pool::new(100);
        let mut c = RadixCache::new(false);
        let system: Vec<u32> = (100..120).collect();
        let mut system_slots = None;
        for user in 0..5u32 {
            let tokens = [&system[..], &[user, user + 1, 7]].concat();
            let m = c.match_prefix(&tokens);
            let expected = if user == 0 { 0 } else { system.len() };
            assert_eq!(m.kv_slots.len(), expected);
            c.inc_lock_ref(m.last_node).unwrap();
            let mut slots = m.kv_slots.clone();
            slots.extend(pool.alloc(tokens.len() - slots.len()));
            let dup = c.insert(&tokens, &slots).unwrap();
            pool.free(&slots[m.kv_slots.len()..dup]);
            c.dec_lock_ref(m.last_node).unwrap();
            let sys = system_slots.get_or_insert_with(|| slots[..system.len()].to_vec());
            assert_eq!(&slots[..system.len()], &sys[..]);
            check_invariants(&c);
        }
        assert_eq!(c.hit_tokens(), 4 * 20);
        assert_eq!(c.queried_tokens(), 5 * 23);
        assert!((c.hit_rate() - 80.0 / 115.0).abs() < 1e-12);
        // User 0 and 1 share the token after the prompt ([0,1,7] vs [1,2,7] do not); 20 + 5×3.
        assert_eq!(c.total_size(), 35);
        assert_eq!(pool.allocated.len(), 35);
    }

    #[test]
    fn radix_partial_edge_split() {
        let mut c = RadixCache::new(false);
        assert_eq!(c.insert(&[1, 2, 3, 4, 5], &[10, 11, 12, 13, 14]).unwrap(), 0);
        assert_eq!(live_nodes(&c), 1);
        let m = c.match_prefix(&[1, 2, 3, 9]);
        assert_eq!(m.kv_slots, [10, 11, 12]);
        assert_eq!(live_nodes(&c), 2, "the edge was split at the mismatch");
        assert_eq!(c.nodes[m.last_node.index as usize].key, [1, 2, 3]);
        assert_eq!(c.total_size(), 5);
        check_invariants(&c);
        assert_eq!(c.match_prefix(&[1, 2, 3, 4, 5, 6]).kv_slots, [10, 11, 12, 13, 14]);
        assert_eq!(c.match_prefix(&[1, 2]).kv_slots, [10, 11]);
        assert_eq!(c.match_prefix(&[2, 1]).kv_slots, [] as [u32; 0]);
        assert_eq!(c.match_prefix(&[]).last_node, c.root());
        // The [1, 2] match split the [1, 2, 3] node again; the earlier id kept the suffix [3],
        // so locking it still protects exactly the 3 tokens it matched.
        c.inc_lock_ref(m.last_node).unwrap();
        assert_eq!((c.protected_size(), c.evictable_size()), (3, 2));
        check_invariants(&c);
    }

    #[test]
    fn radix_insert_reports_duplicates() {
        let mut c = RadixCache::new(false);
        assert_eq!(c.insert(&[1, 2, 3], &[10, 11, 12]).unwrap(), 0);
        assert_eq!(c.insert(&[1, 2, 3], &[20, 21, 22]).unwrap(), 3);
        assert_eq!(c.insert(&[1, 2], &[30, 31]).unwrap(), 2);
        assert_eq!(c.insert(&[1, 2, 7, 8], &[40, 41, 42, 43]).unwrap(), 2);
        assert_eq!(c.match_prefix(&[1, 2, 7, 8]).kv_slots, [10, 11, 42, 43]);
        assert_eq!(c.match_prefix(&[1, 2, 3]).kv_slots, [10, 11, 12]);
        assert_eq!(c.total_size(), 5);
        assert_eq!(c.insert(&[], &[]).unwrap(), 0);
        assert_eq!(
            c.insert(&[1], &[]),
            Err(RadixCacheError::LengthMismatch { tokens: 1, kv_slots: 0 })
        );
        check_invariants(&c);
    }

    #[test]
    fn radix_evict_spares_locked_paths() {
        let mut c = RadixCache::new(false);
        let mut pool = Pool::new(64);
        let seqs: [&[u32]; 5] = [
            &[1, 2, 3, 4],
            &[1, 2, 5, 6],
            &[1, 7],
            &[8, 9, 10],
            &[1, 2, 3, 4, 11, 12],
        ];
        for s in seqs {
            let slots = pool.alloc(s.len());
            let dup = c.insert(s, &slots).unwrap();
            pool.free(&slots[..dup]);
        }
        let m = c.match_prefix(&[1, 2, 3, 4, 11]); // splits [11, 12]
        c.inc_lock_ref(m.last_node).unwrap();
        let locked: HashSet<u32> = m.kv_slots.iter().copied().collect();
        let before = check_invariants(&c);
        let mut freed = HashSet::new();
        let n = c.evict(usize::MAX, |s: &[u32]| {
            for &x in s {
                assert!(freed.insert(x), "slot {x} evicted twice");
            }
            pool.free(s);
        });
        let after = check_invariants(&c);
        assert_eq!(n, freed.len());
        assert_eq!(after, locked, "exactly the locked path survives");
        assert_eq!(&freed | &after, before);
        assert_eq!((c.evictable_size(), c.protected_size()), (0, 5));
        assert_eq!(c.evict(1, |_: &[u32]| panic!("nothing evictable")), 0);
        // A split through the locked node keeps the lock on both halves.
        let slots = pool.alloc(3);
        assert_eq!(c.insert(&[1, 2, 9], &slots).unwrap(), 2);
        pool.free(&slots[..2]);
        assert_eq!(c.protected_size(), 5);
        c.evict(usize::MAX, |s: &[u32]| pool.free(s));
        assert_eq!(check_invariants(&c), locked);
        c.dec_lock_ref(m.last_node).unwrap();
        assert_eq!((c.evictable_size(), c.protected_size()), (5, 0));
        c.evict(usize::MAX, |s: &[u32]| pool.free(s));
        assert!(pool.allocated.is_empty());
        assert_eq!(live_nodes(&c), 0);
    }

    #[test]
    fn radix_evict_is_lru() {
        let mut c = RadixCache::new(false);
        c.insert(&[1, 2], &[10, 11]).unwrap();
        c.insert(&[3, 4], &[12, 13]).unwrap();
        c.insert(&[5, 6], &[14, 15]).unwrap();
        c.insert(&[7, 8, 1], &[16, 17, 18]).unwrap();
        c.insert(&[7, 8, 2], &[16, 17, 19]).unwrap();
        c.match_prefix(&[1, 2]); // [1, 2] is now the most recent, [3, 4] the oldest
        let mut order = Vec::new();
        let mut record = |s: &[u32]| order.push(s.to_vec());
        assert_eq!(c.evict(1, &mut record), 2, "whole leaves are evicted");
        assert_eq!(c.evict(3, &mut record), 3, "stops as soon as enough is freed");
        // [7, 8] becomes a leaf once both children are gone, still older than [1, 2].
        assert_eq!(c.evict(100, &mut record), 5);
        assert_eq!(
            order,
            [
                vec![12, 13],
                vec![14, 15],
                vec![18],
                vec![19],
                vec![16, 17],
                vec![10, 11]
            ]
        );
        check_invariants(&c);
    }

    #[test]
    fn radix_reset_refused_while_locked() {
        let mut c = RadixCache::new(false);
        c.insert(&[1, 2, 3], &[10, 11, 12]).unwrap();
        let m = c.match_prefix(&[1, 2]);
        c.inc_lock_ref(m.last_node).unwrap();
        assert_eq!(
            c.reset(),
            Err(RadixCacheError::ResetWhileLocked { protected_tokens: 2 })
        );
        check_invariants(&c);
        c.dec_lock_ref(m.last_node).unwrap();
        assert_eq!(
            c.dec_lock_ref(m.last_node),
            Err(RadixCacheError::NotLocked { node: m.last_node })
        );
        let mut slots = c.reset().unwrap();
        slots.sort();
        assert_eq!(slots, [10, 11, 12]);
        assert_eq!(
            c.inc_lock_ref(m.last_node),
            Err(RadixCacheError::StaleNode { node: m.last_node })
        );
        assert_eq!(c.total_size(), 0);
        assert_eq!(c.hit_tokens(), 2, "statistics survive reset");
        // Root ids stay valid across a reset; a recycled arena slot gets a new generation.
        c.inc_lock_ref(c.root()).unwrap();
        c.insert(&[4], &[20]).unwrap();
        let m2 = c.match_prefix(&[4]);
        assert_ne!(m2.last_node, m.last_node);
        check_invariants(&c);
    }

    #[test]
    fn radix_disabled_is_noop() {
        let mut c = RadixCache::new(true);
        assert!(c.is_disabled());
        assert_eq!(c.insert(&[1, 2, 3], &[10, 11, 12]).unwrap(), 0);
        let m = c.match_prefix(&[1, 2, 3]);
        assert!(m.kv_slots.is_empty());
        assert_eq!(m.last_node, c.root());
        c.inc_lock_ref(m.last_node).unwrap();
        c.dec_lock_ref(m.last_node).unwrap();
        assert_eq!(c.evict(10, |_: &[u32]| panic!("disabled cache holds nothing")), 0);
        assert_eq!((c.total_size(), c.evictable_size(), c.protected_size()), (0, 0, 0));
        assert_eq!((c.hit_tokens(), c.queried_tokens(), c.hit_rate()), (0, 3, 0.0));
        assert!(c.reset().unwrap().is_empty());
    }

    /// SplitMix64: small deterministic RNG for the randomized test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    struct Req {
        tokens: Vec<u32>,
        slots: Vec<u32>,
        /// Leading slots owned by the tree (the match at admission).
        cached: usize,
        node: NodeId,
    }

    /// A scheduler-like driver: admit (match, lock, alloc with eviction), finish (insert, free
    /// duplicates, unlock), abort, evict, reset. Tracks which token prefix each slot holds, so a
    /// match handing out a slot computed for a different prefix is caught.
    struct Sim {
        c: RadixCache,
        pool: Pool,
        holds: HashMap<u32, Vec<u32>>,
        active: Vec<Req>,
        rng: Rng,
        prompts: Vec<Vec<u32>>,
    }

    impl Sim {
        fn free(pool: &mut Pool, holds: &mut HashMap<u32, Vec<u32>>, slots: &[u32]) {
            pool.free(slots);
            for s in slots {
                holds.remove(s);
            }
        }

        fn gen_tokens(&mut self) -> Vec<u32> {
            let mut t = match self.rng.below(4) {
                0 => Vec::new(),
                k => {
                    let p = &self.prompts[k - 1];
                    p[..self.rng.below(p.len() + 1)].to_vec()
                }
            };
            for _ in 0..self.rng.below(8) {
                t.push(self.rng.below(4) as u32);
            }
            t
        }

        fn admit(&mut self) {
            let tokens = self.gen_tokens();
            let m = self.c.match_prefix(&tokens);
            for (i, s) in m.kv_slots.iter().enumerate() {
                assert_eq!(self.holds[s], tokens[..=i], "slot {s} holds another prefix");
            }
            self.c.inc_lock_ref(m.last_node).unwrap();
            let need = tokens.len() - m.kv_slots.len();
            if self.pool.free.len() < need {
                let (pool, holds) = (&mut self.pool, &mut self.holds);
                self.c
                    .evict(need - pool.free.len(), |s: &[u32]| Self::free(pool, holds, s));
            }
            if self.pool.free.len() < need {
                self.c.dec_lock_ref(m.last_node).unwrap();
                return;
            }
            let cached = m.kv_slots.len();
            let mut slots = m.kv_slots;
            for (j, s) in self.pool.alloc(need).into_iter().enumerate() {
                self.holds.insert(s, tokens[..=cached + j].to_vec());
                slots.push(s);
            }
            self.active.push(Req {
                tokens,
                slots,
                cached,
                node: m.last_node,
            });
        }

        fn finish(&mut self, i: usize, insert: bool) {
            let r = self.active.swap_remove(i);
            if insert {
                let dup = self.c.insert(&r.tokens, &r.slots).unwrap();
                assert!(dup >= r.cached);
                Self::free(&mut self.pool, &mut self.holds, &r.slots[r.cached..dup]);
                let again = self.c.rematch_prefix(&r.tokens).kv_slots;
                assert_eq!(again.len(), r.tokens.len());
                assert_eq!(again[..r.cached], r.slots[..r.cached]);
                assert_eq!(again[dup..], r.slots[dup..]);
            } else {
                Self::free(&mut self.pool, &mut self.holds, &r.slots[r.cached..]);
            }
            self.c.dec_lock_ref(r.node).unwrap();
        }

        fn step(&mut self) {
            match self.rng.below(10) {
                0..=3 => self.admit(),
                4..=6 if !self.active.is_empty() => {
                    let i = self.rng.below(self.active.len());
                    self.finish(i, true);
                }
                7 if !self.active.is_empty() => {
                    let i = self.rng.below(self.active.len());
                    self.finish(i, false);
                }
                8 => {
                    let n = self.rng.below(12);
                    let (pool, holds) = (&mut self.pool, &mut self.holds);
                    let before = self.c.evictable_size();
                    let got = self.c.evict(n, |s: &[u32]| Self::free(pool, holds, s));
                    assert!(got >= n.min(before) && got <= before);
                }
                9 if self.rng.below(5) == 0 => match self.c.reset() {
                    Ok(slots) => {
                        assert_eq!(self.c.protected_size(), 0);
                        Self::free(&mut self.pool, &mut self.holds, &slots);
                    }
                    Err(e) => {
                        assert!(matches!(e, RadixCacheError::ResetWhileLocked { .. }));
                        assert!(self.c.protected_size() > 0);
                    }
                },
                _ => {}
            }
            self.check();
        }

        /// Every allocated slot is owned by exactly one of: the tree, one running request.
        fn check(&self) {
            let tree = check_invariants(&self.c);
            let mut owned = tree.clone();
            for r in &self.active {
                for s in &r.slots[r.cached..] {
                    assert!(owned.insert(*s), "slot {s} owned twice");
                }
                for s in &r.slots[..r.cached] {
                    assert!(tree.contains(s), "matched slot {s} left the tree while locked");
                }
            }
            assert_eq!(owned, self.pool.allocated, "leaked or unowned slots");
        }
    }

    #[test]
    fn radix_random_operations_keep_invariants() {
        for seed in 0..40 {
            let mut rng = Rng(seed);
            let prompts = (0..3)
                .map(|_| (0..6 + rng.below(10)).map(|_| rng.below(5) as u32).collect())
                .collect();
            let mut sim = Sim {
                c: RadixCache::new(false),
                pool: Pool::new(48),
                holds: HashMap::new(),
                active: Vec::new(),
                rng,
                prompts,
            };
            for _ in 0..400 {
                sim.step();
            }
            while !sim.active.is_empty() {
                sim.finish(0, true);
            }
            let slots = sim.c.reset().unwrap();
            Sim::free(&mut sim.pool, &mut sim.holds, &slots);
            assert!(sim.pool.allocated.is_empty() && sim.holds.is_empty(), "seed {seed}");
            assert!(sim.c.hit_tokens() > 0, "seed {seed}: the workload should hit the cache");
        }
    }
}
