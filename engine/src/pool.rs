//! The engine's thread pool: rayon's, with the other workers kept awake through each
//! forward pass on the CPU.
//!
//! A decode step is a chain of short parallel operations (matmuls, attention) with short
//! serial stretches between them (biases, rope, the KV store). A rayon worker that finds no
//! work yields for a while and then sleeps; waking a sleeping vCPU costs 15–25 µs, and at
//! depth 4096 the woken worker started its attention job that late in every layer
//! (docs/PERFORMANCE.md, sessions 26–27). ggml's thread pool keeps its workers polling
//! through a whole graph for the same reason. Here, while a pass runs, every other worker
//! runs a keep-awake job that takes the pool's pending work as it appears
//! ([`rayon::yield_now`]) and spins in between, so a parallel operation's jobs are picked up
//! within a microsecond. The jobs are halves of `rayon::join`s, on the stack: a pass
//! allocates nothing for them.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest a worker spins with no work before it goes back to rayon (and may sleep): past
/// it the pass is in a long serial stretch, or the machine is oversubscribed and the spin
/// would take time from the threads doing the work.
const IDLE_MAX: Duration = Duration::from_millis(2);

/// Longest the pass and the keep-awake jobs wait for every keep-awake job to have started.
const START_MAX: Duration = Duration::from_micros(500);

thread_local! {
    /// Set on the thread running a forward pass: a keep-awake job it picks up while waiting
    /// inside the pass returns at once (spinning there, it would hold up the pass).
    static IN_PASS: Cell<bool> = const { Cell::new(false) };
}

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

    /// Runs a forward pass `f` in the pool, the other workers kept awake while it runs (see
    /// the module's doc) where [`Pool::set_cpu`] allowed it.
    pub(crate) fn forward<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if !self.awake {
            return self.pool.install(f);
        }
        self.pool.install(|| {
            let others = rayon::current_num_threads() - 1;
            let awake = Awake { others, started: AtomicUsize::new(0), stop: AtomicBool::new(false) };
            let (r, ()) = rayon::join(
                || {
                    // Set when the pass returns or unwinds: the keep-awake jobs end.
                    let _stop = Stop(&awake.stop);
                    let _pass = Pass::enter();
                    // Until the others have taken their jobs, one could still sit in this
                    // worker's queue when the pass waits (and be skipped, see `spread`).
                    awake.wait_started();
                    f()
                },
                || awake.spread(others),
            );
            r
        })
    }
}

/// One pass's keep-awake jobs.
struct Awake {
    others: usize,
    started: AtomicUsize,
    stop: AtomicBool,
}

impl Awake {
    /// Starts `n` keep-awake jobs: one here, the rest handed on for another worker to steal.
    fn spread(&self, n: usize) {
        if n == 0 || IN_PASS.with(Cell::get) {
            return;
        }
        self.started.fetch_add(1, Ordering::AcqRel);
        rayon::join(|| self.keep_awake(), || self.spread(n - 1));
    }

    /// Waits, bounded (a worker may be descheduled), until every keep-awake job has started.
    fn wait_started(&self) {
        let t0 = Instant::now();
        while self.started.load(Ordering::Acquire) < self.others && t0.elapsed() < START_MAX {
            std::hint::spin_loop();
        }
    }

    /// Takes the pool's pending jobs until the pass ends, spinning in between; returns
    /// after [`IDLE_MAX`] without work. It first waits for the other keep-awake jobs to
    /// start, so as not to take the rest of `spread` from its own queue.
    fn keep_awake(&self) {
        self.wait_started();
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        while !self.stop.load(Ordering::Acquire) {
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
}

/// Sets its flag when dropped, so the keep-awake jobs end even if the pass panics.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Marks the current thread as running a pass until dropped (also on unwind).
struct Pass;

impl Pass {
    fn enter() -> Pass {
        IN_PASS.with(|p| p.set(true));
        Pass
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        IN_PASS.with(|p| p.set(false));
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

    /// A pass with a long serial stretch: the keep-awake jobs give up spinning after a
    /// while, and the work after it is still done.
    #[test]
    fn a_long_serial_stretch_ends_the_spinning_not_the_pass() {
        let p = pool(2);
        let got = p.forward(|| {
            let a: u64 = (0..1000u64).into_par_iter().sum();
            std::thread::sleep(IDLE_MAX * 3);
            a + (0..1000u64).into_par_iter().sum::<u64>()
        });
        assert_eq!(got, 2 * 499_500);
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
