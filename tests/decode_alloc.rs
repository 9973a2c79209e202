//! A decode step on the CPU backend allocates nothing once warm (the CPU-speed issue's "no
//! allocation inside the decode loop"): a counting global allocator (this test binary's
//! only, so every thread counts) around steady-state steps. Buffers that grow with the sequence grow
//! when its block table gains a block (every `BLOCK_SIZE` tokens); the counted steps stay
//! inside one block.

mod common;

use ferrite::backend::cpu::CpuBackend;
use ferrite::kv_cache::BLOCK_SIZE;
use ferrite::model::{Batch, Model};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// The system allocator, counting allocations and reallocations.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's arguments, so its
// contract is the caller's; the counter is an atomic add.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded as given (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded as given (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded as given (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn cpu_decode_step_allocates_nothing() {
    let path = common::model("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let file = Arc::new(ferrite::loader::GgufFile::open(&path).unwrap());
    let cfg = ferrite::ModelConfig::from_gguf(&file).unwrap();
    let mut m = Model::load(CpuBackend::new(), &file, cfg, 4 * BLOCK_SIZE).unwrap();
    let (mut batch, mut logits) = (Batch::default(), Vec::new());
    // A prompt that ends at the start of the second block, then single-token steps.
    for i in 0..BLOCK_SIZE + 1 {
        batch.push(100 + i as u32, 1, i == BLOCK_SIZE);
    }
    m.forward_into(&batch, &mut logits).unwrap();
    // As the engine runs it: inside its thread pool (a call from outside would go through
    // rayon's injector queue, which allocates a block every 63 jobs). One worker, so that
    // the warm-up surely reaches every per-thread buffer (rope tables, attention scratch):
    // those are allocated once per worker, the first time that worker runs such a job,
    // which with more workers can happen at any later step.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut step = |m: &mut Model, t: u32| {
        batch.clear();
        batch.push(t, 1, true);
        pool.install(|| m.forward_into(&batch, &mut logits)).unwrap();
        assert_eq!(logits.len(), m.cfg.n_vocab);
    };
    // Warm-up: every worker's buffers reach their size.
    for t in 0..8 {
        step(&mut m, 200 + t);
    }
    let before = ALLOCATIONS.load(Relaxed);
    for t in 0..16 {
        step(&mut m, 300 + t);
    }
    let n = ALLOCATIONS.load(Relaxed) - before;
    assert_eq!(n, 0, "16 decode steps allocated {n} times");
}
