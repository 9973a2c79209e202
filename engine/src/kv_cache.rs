//! Paged KV cache bookkeeping: fixed-size blocks, per-sequence block tables, reference
//! counts so that sequences can share the blocks of a common prompt prefix. The storage
//! itself belongs to the backend (device memory); this module only decides which slot each
//! token's key and value go to.

use std::collections::HashMap;

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

/// Block allocator and per-sequence block tables.
#[derive(Debug)]
pub struct BlockTables {
    n_blocks: usize,
    free: Vec<u32>,
    refcount: Vec<u32>,
    tables: HashMap<SeqId, SeqTable>,
}

#[derive(Debug, Default, Clone)]
struct SeqTable {
    blocks: Vec<u32>,
    len: usize,
}

impl BlockTables {
    /// A cache of `n_blocks` blocks of `BLOCK_SIZE` tokens.
    pub fn new(n_blocks: usize) -> Self {
        BlockTables {
            n_blocks,
            free: (0..n_blocks as u32).rev().collect(),
            refcount: vec![0; n_blocks],
            tables: HashMap::new(),
        }
    }

    /// Total number of blocks.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Blocks not in use.
    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Tokens stored for a sequence (0 if unknown).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.tables.get(&seq).map_or(0, |t| t.len)
    }

    /// The block table of a sequence.
    pub fn table(&self, seq: SeqId) -> &[u32] {
        self.tables.get(&seq).map_or(&[], |t| &t.blocks)
    }

    /// Reserves slots for `n` more tokens of `seq` (creating it if new) and returns the slot
    /// index of each (block × BLOCK_SIZE + offset). All or nothing: on `KvFull` nothing changes.
    pub fn append(&mut self, seq: SeqId, n: usize) -> Result<Vec<u32>, KvFull> {
        let t = self.tables.entry(seq).or_default();
        let new_len = t.len + n;
        let need = new_len.div_ceil(BLOCK_SIZE).saturating_sub(t.blocks.len());
        if need > self.free.len() {
            return Err(KvFull { needed: need, free: self.free.len(), total: self.n_blocks });
        }
        for _ in 0..need {
            let b = self.free.pop().expect("checked above");
            self.refcount[b as usize] = 1;
            t.blocks.push(b);
        }
        let slots = (t.len..new_len)
            .map(|p| t.blocks[p / BLOCK_SIZE] * BLOCK_SIZE as u32 + (p % BLOCK_SIZE) as u32)
            .collect();
        t.len = new_len;
        Ok(slots)
    }

    /// Forgets tokens of `seq` from position `len` on (e.g. to re-run a shorter prompt);
    /// blocks that become empty are released.
    pub fn truncate(&mut self, seq: SeqId, len: usize) {
        let Some(t) = self.tables.get_mut(&seq) else { return };
        if len >= t.len {
            return;
        }
        let keep = len.div_ceil(BLOCK_SIZE);
        for b in t.blocks.drain(keep..).rev() {
            Self::release(&mut self.refcount, &mut self.free, b);
        }
        t.len = len;
    }

    /// Drops a sequence and releases its blocks.
    pub fn remove(&mut self, seq: SeqId) {
        if let Some(t) = self.tables.remove(&seq) {
            for b in t.blocks.into_iter().rev() {
                Self::release(&mut self.refcount, &mut self.free, b);
            }
        }
    }

    /// Makes `dst` start with the first `len` tokens of `src`, sharing their full blocks
    /// (prefix cache). Only whole blocks are shared, so `len` is rounded down to a block.
    /// Returns the number of tokens shared.
    pub fn fork_prefix(&mut self, src: SeqId, dst: SeqId, len: usize) -> usize {
        self.remove(dst);
        let Some(s) = self.tables.get(&src) else { return 0 };
        let n_blocks = len.min(s.len) / BLOCK_SIZE;
        let blocks: Vec<u32> = s.blocks[..n_blocks].to_vec();
        for &b in &blocks {
            self.refcount[b as usize] += 1;
        }
        self.tables.insert(dst, SeqTable { blocks, len: n_blocks * BLOCK_SIZE });
        n_blocks * BLOCK_SIZE
    }

    /// Callers release a sequence's blocks last to first, so the free stack hands them out
    /// again in ascending order: a sequence's cache stays one forward stream in memory,
    /// which the CPU's prefetchers follow (descending blocks made decode at depth wait on
    /// memory).
    fn release(refcount: &mut [u32], free: &mut Vec<u32>, b: u32) {
        let r = &mut refcount[b as usize];
        *r -= 1;
        if *r == 0 {
            free.push(b);
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
    fn prefix_sharing_counts_references() {
        let mut t = BlockTables::new(8);
        t.append(1, 70).unwrap();
        assert_eq!(t.fork_prefix(1, 2, 70), 64);
        assert_eq!(t.table(2), &t.table(1)[..2]);
        assert_eq!(t.n_free(), 5);
        t.remove(1);
        assert_eq!(t.n_free(), 6, "shared blocks stay while seq 2 holds them");
        t.truncate(2, 10);
        assert_eq!(t.n_free(), 7);
        t.remove(2);
        assert_eq!(t.n_free(), 8);
    }
}
