//! A fixed set of threads for batch-1 decode, where one token is a few hundred parallel steps of
//! tens of microseconds each. Waking sleeping threads for every step (a futex round trip, as a
//! pool driven from outside costs) took a fifth of the decode time; these workers spin between
//! steps and sleep only after [`SPIN_BEFORE_SLEEP`] without work, so a pause in generation does
//! not hold the cores.
//!
//! Work is split statically: call `run(f)` and thread i runs `f(i)` (the caller is thread 0), so
//! who computes what never depends on timing.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
pub const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(500);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per `run`; a worker runs the job when it sees a new value.
    generation: AtomicU64,
    /// Workers finished with the current generation.
    finished: AtomicUsize,
    /// Set by a worker whose job panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Workers asleep (incremented under `lock`).
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    job: UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is written only by `run` while no worker reads it (every worker has finished the
// previous generation) and read by workers only after the generation bump that publishes it.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// `threads - 1` spinning workers plus the calling thread.
pub struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl SpinPool {
    /// A pool of `threads` (at least 1) threads including the caller's.
    pub fn new(threads: usize) -> SpinPool {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            job: UnsafeCell::new(None),
        });
        let workers = (1..threads.max(1))
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("gstick-decode-{index}"))
                    .spawn(move || worker(&shared, index))
                    .expect("spawning a decode thread")
            })
            .collect();
        SpinPool { shared, workers }
    }

    /// Threads that share each `run`, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` on thread i for every i in 0..threads (0 on the caller) and returns when all
    /// have finished. A panic in any of them is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            return f(0);
        }
        let s = &*self.shared;
        // SAFETY: every worker finished the previous generation before the last `run` returned,
        // so none reads `job` now. The lifetime is erased, but `Wait` below keeps this call from
        // returning (or unwinding) before every worker is done with `f`.
        unsafe {
            let job: Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f);
            *s.job.get() = Some(job);
        }
        s.finished.store(0, Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        struct Wait<'a>(&'a Shared, usize);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                while self.0.finished.load(Ordering::Acquire) < self.1 {
                    std::hint::spin_loop();
                }
            }
        }
        let wait = Wait(s, self.workers.len());
        f(0);
        drop(wait);
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a decode thread panicked");
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SPIN_BEFORE_SLEEP {
                continue;
            }
            let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.generation.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            idle_since = None;
        }
        // SAFETY: published by the generation bump observed above; `run` waits for us.
        let job = unsafe { (*s.job.get()).expect("a job is published with each generation") };
        let ok =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*job)(index) }));
        if ok.is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.finished.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_its_index_once_per_call() {
        for threads in [1, 2, 3] {
            let pool = SpinPool::new(threads);
            assert_eq!(pool.threads(), threads);
            for round in 0..200 {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|i| {
                    hits[i].fetch_add(round + 1, Ordering::Relaxed);
                });
                for h in &hits {
                    assert_eq!(h.load(Ordering::Relaxed), round + 1);
                }
            }
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = SpinPool::new(2);
        std::thread::sleep(SPIN_BEFORE_SLEEP * 4);
        let hit = AtomicUsize::new(0);
        pool.run(&|i| {
            hit.fetch_add(i + 1, Ordering::Relaxed);
        });
        assert_eq!(hit.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_panic_in_a_worker_reaches_the_caller() {
        let pool = SpinPool::new(2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|i| assert_eq!(i, 0, "worker fails"));
        }));
        assert!(caught.is_err());
        // The pool still works afterwards.
        let hit = AtomicUsize::new(0);
        pool.run(&|_| {
            hit.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hit.load(Ordering::Relaxed), 2);
    }
}
