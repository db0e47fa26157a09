//! Continuous batching for the server: one lane per engine, a thread that owns a [`Batcher`] over a KV cache of
//! a fixed number of rows. Requests join the running batch at the next step and leave when done, so concurrent
//! requests share one forward per decode step. A request that finds every row busy waits in the lane's bounded
//! queue for at most the queue timeout; beyond the queue it gets 503 at once. The KV cache is allocated once at
//! start-up (rows x positions), so the server's memory does not grow with the load.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::engine::batch::{Batcher, Job};
use crate::engine::InferModel;

/// What a lane tells a request.
#[derive(Debug)]
pub enum Msg {
    /// The request has a row and is prefilled at the next step.
    Started,
    /// One token; `done` after the last.
    Token { token: u32, done: bool },
    /// No row became free within the queue timeout.
    Timeout,
    /// The forward failed (every request of the batch gets this).
    Failed(String),
}

struct Waiting {
    job: Job,
    reply: Sender<Msg>,
    since: Instant,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiting>,
    /// Rows in use.
    active: usize,
    stop: bool,
}

/// One engine's running batch, as the connection threads see it.
pub struct Lane {
    state: Mutex<State>,
    wake: Condvar,
    pub rows: usize,
    /// Positions per row.
    pub t_max: usize,
    max_queue: usize,
    timeout: Duration,
}

/// Why a request was not queued.
#[derive(Debug)]
pub struct Full {
    pub active: usize,
    pub waiting: usize,
}

impl Lane {
    pub fn new(rows: usize, t_max: usize, max_queue: usize, timeout: Duration) -> Lane {
        Lane {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            rows,
            t_max,
            max_queue,
            timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is updated in single assignments; after a panic elsewhere it is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (rows in use, requests waiting)
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.active, st.queue.len())
    }

    /// Queues a job; the receiver gets `Started` then its tokens, or `Timeout`. Err when every row is in use
    /// and the queue is full.
    pub fn submit(&self, job: Job) -> Result<Receiver<Msg>, Full> {
        let mut st = self.lock();
        let waiting = st.queue.len();
        if st.active + waiting >= self.rows + self.max_queue {
            return Err(Full {
                active: st.active,
                waiting,
            });
        }
        let (tx, rx) = mpsc::channel();
        st.queue.push_back(Waiting {
            job,
            reply: tx,
            since: Instant::now(),
        });
        drop(st);
        self.wake.notify_one();
        Ok(rx)
    }

    /// Stops the lane's thread once its batch is empty (requests still queued get `Timeout` when it stops).
    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }

    /// The lane's loop: admit waiting jobs into free rows, run one step, hand out the tokens; sleeps while
    /// there is nothing to do. Returns when stopped and empty.
    pub fn run<M: InferModel>(&self, batcher: &mut Batcher<'_, M>) {
        let mut clients: Vec<Option<Sender<Msg>>> = (0..batcher.rows()).map(|_| None).collect();
        loop {
            {
                let mut st = self.lock();
                while batcher.active() == 0 && st.queue.is_empty() && !st.stop {
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.stop && batcher.active() == 0 {
                    for w in st.queue.drain(..) {
                        let _ = w.reply.send(Msg::Timeout);
                    }
                    return;
                }
                // Waiting too long: 503.
                let now = Instant::now();
                st.queue.retain(|w| {
                    let keep = now.duration_since(w.since) < self.timeout;
                    if !keep {
                        let _ = w.reply.send(Msg::Timeout);
                    }
                    keep
                });
                while batcher.free() > 0 {
                    let Some(w) = st.queue.pop_front() else { break };
                    match batcher.add(w.job) {
                        Ok(row) => {
                            if w.reply.send(Msg::Started).is_ok() {
                                clients[row] = Some(w.reply);
                            } else {
                                batcher.cancel(row);
                            }
                        }
                        Err(e) => {
                            let _ = w.reply.send(Msg::Failed(e));
                        }
                    }
                }
                st.active = batcher.active();
            }
            match batcher.step() {
                Ok(tokens) => {
                    for e in tokens {
                        if e.done {
                            // Free the row before the client can see its end, so /stats agrees with it.
                            self.lock().active = batcher.active();
                        }
                        let gone = clients[e.row].as_ref().is_none_or(|c| {
                            c.send(Msg::Token {
                                token: e.token,
                                done: e.done,
                            })
                            .is_err()
                        });
                        if e.done || gone {
                            clients[e.row] = None;
                            batcher.cancel(e.row);
                        }
                    }
                }
                Err(e) => {
                    for c in clients.iter_mut().filter_map(Option::take) {
                        let _ = c.send(Msg::Failed(e.clone()));
                    }
                }
            }
            self.lock().active = batcher.active();
        }
    }
}
