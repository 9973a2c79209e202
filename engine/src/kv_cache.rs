//! Paged KV cache bookkeeping: fixed-size blocks, per-sequence block tables, reference
//! counts so that sequences can share the blocks of a common prompt prefix. The storage
//! itself belongs to the backend (device memory); this module only decides which slot each
//! token's key and value go to.

use std::collections::{BTreeMap, HashMap};

/// Tokens per KV block.
pub const BLOCK_SIZE: usize = 32;

/// Identifies a sequence in the cache.
pub type SeqId = u32;

/// The cache ran out of blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV cache full: {needed} more blocks needed, {free} free of {total}")]
pub struct KvFull {
    /// Blocks the request needed.
    pub needed: usize,
    /// Blocks free.
    pub free: usize,
    /// Blocks in the cache.
    pub total: usize,
}

/// Block allocator, per-sequence block tables and the prefix cache.
///
/// Prefix cache: once a block is full, its contents are a function of the tokens up to its
/// end, so it is registered under a hash of (the previous block's hash, its own tokens). A
/// new sequence whose prompt starts with the same tokens shares those blocks instead of
/// recomputing them. A registered block that no sequence holds any more is not freed but
/// kept, least recently released first in line to be evicted when a block is needed; the
/// cache never makes an allocation fail. Lookups compare the tokens too, not only the hash,
/// so a crafted collision cannot hand one request another's cache.
#[derive(Debug)]
pub struct BlockTables {
    n_blocks: usize,
    free: Vec<u32>,
    refcount: Vec<u32>,
    tables: HashMap<SeqId, SeqTable>,
    /// What a registered block holds.
    meta: Vec<Option<BlockKey>>,
    by_hash: HashMap<u64, u32>,
    /// Registered blocks no sequence holds, by release time (evicted oldest first).
    idle: BTreeMap<u64, u32>,
    idle_since: Vec<u64>,
    tick: u64,
}

#[derive(Debug, Clone)]
struct BlockKey {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

#[derive(Debug, Default, Clone)]
struct SeqTable {
    blocks: Vec<u32>,
    len: usize,
    /// Chain hashes of the leading full blocks registered in (or taken from) the cache.
    hashes: Vec<u64>,
}

/// Chain hash of a block: its tokens and everything before it (through `parent`).
fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockTables {
    /// A cache of `n_blocks` blocks of `BLOCK_SIZE` tokens.
    pub fn new(n_blocks: usize) -> Self {
        BlockTables {
            n_blocks,
            free: (0..n_blocks as u32).rev().collect(),
            refcount: vec![0; n_blocks],
            tables: HashMap::new(),
            meta: vec![None; n_blocks],
            by_hash: HashMap::new(),
            idle: BTreeMap::new(),
            idle_since: vec![0; n_blocks],
            tick: 0,
        }
    }

    /// Total number of blocks.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Blocks a sequence could get now: never used, or only kept by the prefix cache.
    pub fn n_free(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Blocks held by sequences.
    pub fn n_used(&self) -> usize {
        self.n_blocks - self.n_free()
    }

    /// Blocks registered in the prefix cache (held or idle).
    pub fn n_cached(&self) -> usize {
        self.by_hash.len()
    }

    /// Tokens stored for a sequence (0 if unknown).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.tables.get(&seq).map_or(0, |t| t.len)
    }

    /// The block table of a sequence.
    pub fn table(&self, seq: SeqId) -> &[u32] {
        self.tables.get(&seq).map_or(&[], |t| &t.blocks)
    }

    /// A block for a sequence: a never-used one, else the longest-idle cached one.
    fn take_block(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                if let Some(key) = self.meta[b as usize].take() {
                    self.by_hash.remove(&key.hash);
                }
                b
            }
        };
        self.refcount[b as usize] = 1;
        Some(b)
    }

    /// Reserves slots for `n` more tokens of `seq` (creating it if new) and returns the slot
    /// index of each (block × BLOCK_SIZE + offset). All or nothing: on `KvFull` nothing changes.
    pub fn append(&mut self, seq: SeqId, n: usize) -> Result<Vec<u32>, KvFull> {
        let mut slots = Vec::with_capacity(n);
        self.append_into(seq, n, &mut slots)?;
        Ok(slots)
    }

    /// [`BlockTables::append`], the slots pushed onto `slots` (a decode step reuses one
    /// buffer and allocates nothing).
    pub fn append_into(&mut self, seq: SeqId, n: usize, slots: &mut Vec<u32>) -> Result<(), KvFull> {
        let (len, have) = self.tables.get(&seq).map_or((0, 0), |t| (t.len, t.blocks.len()));
        let new_len = len + n;
        let need = new_len.div_ceil(BLOCK_SIZE).saturating_sub(have);
        if need > self.n_free() {
            return Err(KvFull { needed: need, free: self.n_free(), total: self.n_blocks });
        }
        for _ in 0..need {
            let b = self.take_block().expect("checked above");
            self.tables.entry(seq).or_default().blocks.push(b);
        }
        let t = self.tables.entry(seq).or_default();
        slots.extend(
            (len..new_len).map(|p| t.blocks[p / BLOCK_SIZE] * BLOCK_SIZE as u32 + (p % BLOCK_SIZE) as u32),
        );
        t.len = new_len;
        Ok(())
    }

    /// Forgets tokens of `seq` from position `len` on (e.g. to re-run a shorter prompt);
    /// blocks that become empty are released. A cached block that becomes partial leaves the
    /// prefix cache (it will be written again).
    pub fn truncate(&mut self, seq: SeqId, len: usize) {
        let Some(t) = self.tables.get_mut(&seq) else { return };
        if len >= t.len {
            return;
        }
        let keep = len.div_ceil(BLOCK_SIZE);
        let dropped: Vec<u32> = t.blocks.drain(keep..).rev().collect();
        t.len = len;
        t.hashes.truncate(len / BLOCK_SIZE);
        let partial = (!len.is_multiple_of(BLOCK_SIZE)).then(|| t.blocks[keep - 1]);
        for b in dropped {
            self.release(b);
        }
        if let Some(b) = partial {
            debug_assert_eq!(self.refcount[b as usize], 1, "a shared block is never rewritten");
            if let Some(key) = self.meta[b as usize].take() {
                self.by_hash.remove(&key.hash);
            }
        }
    }

    /// Drops a sequence and releases its blocks.
    pub fn remove(&mut self, seq: SeqId) {
        if let Some(t) = self.tables.remove(&seq) {
            for b in t.blocks.into_iter().rev() {
                self.release(b);
            }
        }
    }

    /// Starts `seq` (dropped first if it exists) with the cached blocks that hold the longest
    /// whole-block prefix of `tokens[..max_len]`. Returns the number of tokens it now holds.
    pub fn share_prefix(&mut self, seq: SeqId, tokens: &[u32], max_len: usize) -> usize {
        self.remove(seq);
        let mut t = SeqTable::default();
        let mut parent = 0;
        for chunk in tokens[..max_len.min(tokens.len())].chunks_exact(BLOCK_SIZE) {
            let h = block_hash(parent, chunk);
            let Some(&b) = self.by_hash.get(&h) else { break };
            let key = self.meta[b as usize].as_ref().expect("registered blocks have a key");
            if key.parent != parent || *key.tokens != *chunk {
                break;
            }
            if self.refcount[b as usize] == 0 {
                self.idle.remove(&self.idle_since[b as usize]);
            }
            self.refcount[b as usize] += 1;
            t.blocks.push(b);
            t.hashes.push(h);
            parent = h;
        }
        t.len = t.blocks.len() * BLOCK_SIZE;
        let n = t.len;
        self.tables.insert(seq, t);
        n
    }

    /// Registers the full blocks of `seq` whose keys and values are computed: `tokens` are the
    /// sequence's tokens, of which the first `computed` are in the cache.
    pub fn register(&mut self, seq: SeqId, tokens: &[u32], computed: usize) {
        let Some(t) = self.tables.get_mut(&seq) else { return };
        let full = computed.min(t.len).min(tokens.len()) / BLOCK_SIZE;
        while t.hashes.len() < full {
            let i = t.hashes.len();
            let parent = t.hashes.last().copied().unwrap_or(0);
            let chunk = &tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE];
            let h = block_hash(parent, chunk);
            let b = t.blocks[i];
            // The same prefix may have been computed twice at once: the first copy stays.
            if self.meta[b as usize].is_none() && !self.by_hash.contains_key(&h) {
                self.meta[b as usize] = Some(BlockKey { hash: h, parent, tokens: chunk.into() });
                self.by_hash.insert(h, b);
            }
            t.hashes.push(h);
        }
    }

    /// Drops every idle cached block (they become free).
    pub fn clear_cache(&mut self) {
        while let Some((_, b)) = self.idle.pop_first() {
            if let Some(key) = self.meta[b as usize].take() {
                self.by_hash.remove(&key.hash);
            }
            self.free.push(b);
        }
    }

    /// Callers release a sequence's blocks last to first, so the free stack hands them out
    /// again in ascending order: a sequence's cache stays one forward stream in memory,
    /// which the CPU's prefetchers follow (descending blocks made decode at depth wait on
    /// memory). A registered block goes to the idle list instead, to be found again.
    fn release(&mut self, b: u32) {
        let r = &mut self.refcount[b as usize];
        *r -= 1;
        if *r == 0 {
            if self.meta[b as usize].is_some() {
                self.tick += 1;
                self.idle_since[b as usize] = self.tick;
                self.idle.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_assigns_slots_in_blocks() {
        let mut t = BlockTables::new(4);
        let s = t.append(7, 40).unwrap();
        assert_eq!(s.len(), 40);
        assert_eq!(t.table(7).len(), 2);
        let b0 = t.table(7)[0] as usize * BLOCK_SIZE;
        assert_eq!(s[0] as usize, b0);
        assert_eq!(s[31] as usize, b0 + 31);
        assert_eq!(s[32] as usize, t.table(7)[1] as usize * BLOCK_SIZE);
        assert_eq!(t.n_free(), 2);
        let err = t.append(8, 100).unwrap_err();
        assert_eq!(err.needed, 4);
        assert_eq!(t.seq_len(8), 0, "failed append changes nothing");
        t.remove(7);
        assert_eq!(t.n_free(), 4);
    }

    #[test]
    fn reused_blocks_come_back_in_ascending_order() {
        let mut t = BlockTables::new(8);
        t.append(1, 8 * BLOCK_SIZE).unwrap();
        assert_eq!(t.table(1), &[0, 1, 2, 3, 4, 5, 6, 7]);
        t.truncate(1, 2 * BLOCK_SIZE);
        t.append(1, 3 * BLOCK_SIZE).unwrap();
        assert_eq!(t.table(1), &[0, 1, 2, 3, 4]);
        t.remove(1);
        t.append(2, 8 * BLOCK_SIZE).unwrap();
        assert_eq!(t.table(2), &[0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn prefix_cache_shares_full_blocks_and_evicts_idle_ones() {
        let mut t = BlockTables::new(8);
        let toks: Vec<u32> = (0..100).map(|i| i * 7 + 1).collect();
        t.append(1, 70).unwrap();
        t.register(1, &toks, 70);
        assert_eq!(t.n_cached(), 2);
        // A second sequence with the same first 70 tokens shares the two full blocks.
        assert_eq!(t.share_prefix(2, &toks, 69), 64);
        assert_eq!(t.table(2), &t.table(1)[..2]);
        assert_eq!(t.n_free(), 5);
        // A different second block shares only the first.
        let mut other = toks.clone();
        other[40] = 9999;
        assert_eq!(t.share_prefix(3, &other, 99), 32);
        t.remove(3);
        t.remove(1);
        assert_eq!(t.n_free(), 6, "shared blocks stay while seq 2 holds them");
        t.remove(2);
        assert_eq!((t.n_free(), t.n_used(), t.n_cached()), (8, 0, 2), "idle blocks stay cached");
        // Found again after every holder left.
        assert_eq!(t.share_prefix(4, &toks, 100), 64);
        t.remove(4);
        // Filling the cache evicts the idle blocks rather than failing.
        t.append(5, 8 * BLOCK_SIZE).unwrap();
        assert_eq!(t.n_cached(), 0);
        t.remove(5);
        assert_eq!(t.share_prefix(6, &toks, 100), 0);
    }

    #[test]
    fn truncating_into_a_cached_block_unregisters_it() {
        let mut t = BlockTables::new(4);
        let toks: Vec<u32> = (0..64).collect();
        t.append(1, 64).unwrap();
        t.register(1, &toks, 64);
        t.truncate(1, 40);
        assert_eq!(t.n_cached(), 1);
        t.remove(1);
        assert_eq!(t.share_prefix(2, &toks, 64), 32);
    }
}
