//! Opt-in wall-time accounting of the CPU reference, by phase (forward, backward, optimizer) and op family.
//!
//! Off by default: a disabled [`span`] costs one relaxed atomic load. `cargo bench --bench cpu_model` turns it
//! on and prints the table. Spans do not nest: while one is open on a thread, spans opened inside it (say, the
//! GEMM inside the lm_head span) are not recorded, so every interval is counted once, under the outermost
//! family. The phase is a per-thread setting made by the caller of the model ([`phase`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

thread_local! {
    static PHASE: Cell<&'static str> = const { Cell::new("other") };
    static OPEN: Cell<bool> = const { Cell::new(false) };
}

/// One row of the profile: time spent in `op` during `phase`, over `calls` calls.
#[derive(Clone, Debug)]
pub struct Entry {
    pub phase: &'static str,
    pub op: &'static str,
    pub time: Duration,
    pub calls: u64,
}

/// Turns recording on or off for the whole process.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Sets the phase that this thread's spans are filed under; returns the previous one.
pub fn phase(name: &'static str) -> &'static str {
    PHASE.with(|p| p.replace(name))
}

/// Files this thread's profile spans under a phase until dropped (then restores the previous phase).
pub struct PhaseGuard(&'static str);

impl PhaseGuard {
    pub fn enter(name: &'static str) -> PhaseGuard {
        PhaseGuard(phase(name))
    }
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        phase(self.0);
    }
}

/// Clears the totals.
pub fn reset() {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The totals so far, in first-recorded order.
pub fn totals() -> Vec<Entry> {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Records the time until the guard drops under `op` (unless recording is off or a span is already open).
pub fn span(op: &'static str) -> Span {
    if !ENABLED.load(Ordering::Relaxed) || OPEN.with(|o| o.replace(true)) {
        return Span(None);
    }
    Span(Some((op, Instant::now())))
}

/// Guard returned by [`span`].
pub struct Span(Option<(&'static str, Instant)>);

impl Drop for Span {
    fn drop(&mut self) {
        let Some((op, t0)) = self.0.take() else { return };
        let dt = t0.elapsed();
        OPEN.with(|o| o.set(false));
        let phase = PHASE.with(Cell::get);
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        match totals.iter_mut().find(|e| e.phase == phase && e.op == op) {
            Some(e) => {
                e.time += dt;
                e.calls += 1;
            }
            None => totals.push(Entry {
                phase,
                op,
                time: dt,
                calls: 1,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outermost_span_wins_and_phases_are_separate() {
        enable(true);
        reset();
        let prev = phase("forward");
        {
            let _outer = span("probe_outer");
            let _inner = span("probe_inner"); // inside: not recorded
            std::thread::sleep(Duration::from_millis(2));
        }
        phase("backward");
        drop(span("probe_bwd"));
        phase(prev);
        enable(false);
        drop(span("probe_off"));
        let t = totals();
        let find = |p: &str, o: &str| t.iter().find(|e| e.phase == p && e.op == o).cloned();
        assert!(find("forward", "probe_outer").is_some_and(|e| e.calls == 1 && e.time >= Duration::from_millis(2)));
        assert!(find("forward", "probe_inner").is_none());
        assert_eq!(find("backward", "probe_bwd").map(|e| e.calls), Some(1));
        assert!(!t.iter().any(|e| e.op == "probe_off"));
    }
}
