//! The worker pool: one engine per device; a request takes a free worker, waiting in a bounded queue for at
//! most a timeout (the caller answers 503 beyond either).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why no worker was handed out.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// The wait queue is full.
    QueueFull,
    /// No worker became free in time.
    Timeout,
}

struct State {
    free: Vec<usize>,
    waiting: usize,
}

pub struct Pool<W> {
    workers: Vec<W>,
    state: Mutex<State>,
    freed: Condvar,
    max_queue: usize,
    timeout: Duration,
}

/// A worker held by one request; dropping it gives the worker back.
pub struct Lease<'a, W> {
    pool: &'a Pool<W>,
    pub index: usize,
}

impl<W> Lease<'_, W> {
    pub fn worker(&self) -> &W {
        &self.pool.workers[self.index]
    }
}

impl<W> Drop for Lease<'_, W> {
    fn drop(&mut self) {
        self.pool.lock().free.push(self.index);
        self.pool.freed.notify_one();
    }
}

impl<W> Pool<W> {
    pub fn new(workers: Vec<W>, max_queue: usize, timeout: Duration) -> Pool<W> {
        let free = (0..workers.len()).rev().collect();
        Pool {
            workers,
            state: Mutex::new(State { free, waiting: 0 }),
            freed: Condvar::new(),
            max_queue,
            timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the counters consistent (no partial updates); keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn acquire(&self) -> Result<Lease<'_, W>, Busy> {
        let mut st = self.lock();
        if let Some(i) = st.free.pop() {
            return Ok(Lease { pool: self, index: i });
        }
        if st.waiting >= self.max_queue {
            return Err(Busy::QueueFull);
        }
        st.waiting += 1;
        let deadline = Instant::now() + self.timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                st.waiting -= 1;
                return Err(Busy::Timeout);
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if let Some(i) = st.free.pop() {
                st.waiting -= 1;
                return Ok(Lease { pool: self, index: i });
            }
        }
    }

    /// Worker `i` (for a caller that schedules the workers itself).
    pub fn get(&self, i: usize) -> &W {
        &self.workers[i]
    }

    /// The first worker (all are replicas of one model).
    pub fn first(&self) -> &W {
        &self.workers[0]
    }

    pub fn total(&self) -> usize {
        self.workers.len()
    }

    /// (free workers, requests waiting)
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.free.len(), st.waiting)
    }
}
