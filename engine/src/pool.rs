//! The engine's thread pool: rayon's, with the other workers kept awake through each
//! forward pass on the CPU.
//!
//! A decode step is a chain of short parallel operations (matmuls, attention) with short
//! serial stretches between them (biases, rope, the KV store). A rayon worker that finds no
//! work yields for a while and then sleeps; waking a sleeping vCPU costs 15–25 µs, and at
//! depth 4096 the woken worker started its attention job that late in every layer
//! (docs/PERFORMANCE.md, sessions 26–27). ggml's thread pool keeps its workers polling
//! through a whole graph for the same reason. Here every other worker of the pool runs a
//! job for the length of the pass that keeps taking the pool's pending work
//! ([`rayon::yield_now`]) and spins between jobs, so a parallel operation's jobs are picked
//! up within a microsecond.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest a worker spins with no work before it goes back to rayon (and may sleep): past
/// it the pass is in a long serial stretch, or the machine is oversubscribed and the spin
/// would take time from the threads doing the work.
const IDLE_MAX: Duration = Duration::from_millis(2);

/// Longest the caller waits for the other workers to take their keep-awake jobs.
const START_MAX: Duration = Duration::from_micros(500);

/// The engine's workers.
#[derive(Debug)]
pub(crate) struct Pool {
    pool: rayon::ThreadPool,
    /// Whether [`Pool::forward`] keeps the workers awake: the model runs on the CPU, with
    /// at most one thread per CPU the OS gives this process (else the spinning would take
    /// time from the threads doing the work).
    awake: bool,
}

impl Pool {
    /// `threads` workers, named `ferrite-N`.
    pub(crate) fn new(threads: usize) -> Result<Pool, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ferrite-{i}"))
            .build()?;
        Ok(Pool { pool, awake: false })
    }

    /// Keep the workers awake through forward passes when `cpu` (the model runs on the CPU)
    /// and the pool has no more threads than this process has CPUs.
    pub(crate) fn set_cpu(&mut self, cpu: bool) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.awake = cpu && (2..=cpus).contains(&self.threads());
    }

    pub(crate) fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` in the pool (as [`rayon::ThreadPool::install`]).
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Runs a forward pass `f` in the pool, the other workers kept awake while it runs
    /// (see the module's doc) where [`Pool::set_cpu`] allowed it.
    pub(crate) fn forward<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self.awake {
            true => self.pool.install(|| awake(f)),
            false => self.pool.install(f),
        }
    }
}

/// Runs `f` on the current rayon worker with the pool's other workers kept awake.
fn awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let others = rayon::current_num_threads() - 1;
    let caller = rayon::current_thread_index();
    let stop = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    rayon::in_place_scope(|s| {
        for _ in 0..others {
            s.spawn(|_| {
                // The caller, waiting inside `f` for a parallel operation, may take a
                // keep-awake job itself: it must not spin there, or `f` never ends.
                if rayon::current_thread_index() == caller {
                    return;
                }
                started.fetch_add(1, Ordering::Relaxed);
                keep_awake(&stop);
            });
        }
        // Until the others have taken their jobs, one could still sit in the caller's queue
        // when `f` waits (and be skipped, above); bounded, in case a worker is descheduled.
        let t0 = Instant::now();
        while started.load(Ordering::Relaxed) < others && t0.elapsed() < START_MAX {
            std::hint::spin_loop();
        }
        // Set when `f` returns or unwinds, before the scope waits for the jobs.
        let _stop = Stop(&stop);
        f()
    })
}

/// Sets its flag when dropped, so the keep-awake jobs end even if the pass panics.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Takes the pool's pending jobs until `stop`, spinning in between; returns after
/// [`IDLE_MAX`] without work.
fn keep_awake(stop: &AtomicBool) {
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    while !stop.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => {
                idle_since = Instant::now();
                spins = 0;
            }
            _ => {
                std::hint::spin_loop();
                spins += 1;
                // The clock only now and then: it costs more than a look for work.
                if spins.is_multiple_of(64) && idle_since.elapsed() > IDLE_MAX {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> Pool {
        let mut p = Pool::new(threads).expect("thread pool");
        p.awake = threads > 1;
        p
    }

    /// Parallel work inside a kept-awake pass gives the same results as without, pass after
    /// pass (no job lost, no deadlock), with serial stretches between the operations.
    #[test]
    fn passes_run_their_parallel_work() {
        for threads in [1, 2, 3] {
            let p = pool(threads);
            for pass in 0..200u64 {
                let got = p.forward(|| {
                    let mut total = 0u64;
                    for op in 0..5u64 {
                        let v: Vec<u64> = (0..1000u64).into_par_iter().map(|i| i * (pass + op)).collect();
                        total += v.iter().sum::<u64>();
                        // A serial stretch, as between a step's operations.
                        std::hint::black_box((0..2000u64).sum::<u64>());
                        let (a, b) = rayon::join(|| op + 1, || pass + 2);
                        total += a + b;
                    }
                    total
                });
                let want: u64 = (0..5u64).map(|op| 499_500 * (pass + op) + op + 1 + pass + 2).sum();
                assert_eq!(got, want, "{threads} threads, pass {pass}");
            }
        }
    }

    /// A pass that panics hands the panic to the caller, and the pool keeps working.
    #[test]
    fn a_panicking_pass_ends_and_the_pool_goes_on() {
        let p = pool(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.forward(|| {
                let _: Vec<u32> = (0..64u32).into_par_iter().map(|i| i + 1).collect();
                panic!("pass failed")
            })
        }));
        assert!(r.is_err());
        assert_eq!(p.forward(|| (0..100u32).into_par_iter().sum::<u32>()), 4950);
    }

    /// Only a CPU model with no more threads than CPUs is kept awake.
    #[test]
    fn awake_only_on_the_cpu_within_the_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut p = Pool::new(2).expect("thread pool");
        p.set_cpu(false);
        assert!(!p.awake);
        p.set_cpu(true);
        assert_eq!(p.awake, cpus >= 2);
        let mut p = Pool::new(cpus + 1).expect("thread pool");
        p.set_cpu(true);
        assert!(!p.awake);
        let mut p = Pool::new(1).expect("thread pool");
        p.set_cpu(true);
        assert!(!p.awake);
    }
}
