//! The CPU backend: a ring over TCP, one socket to each neighbour (rank r sends to r+1 and receives from r−1).
//!
//! All-reduce is the bandwidth-optimal ring: a reduce-scatter (W−1 steps, each rank adding the chunk arriving
//! from its left to its own and passing it on) then an all-gather (W−1 steps). Chunk c is always summed in the
//! same order, starting at rank c+1 around the ring and ending at rank c, and every rank receives the owner's
//! final copy, so results are identical on every rank and bitwise reproducible from run to run.
//!
//! Failure: each message is a framed header (data, heartbeat or abort). A neighbour's closed socket, a
//! neighbour silent past the deadline or an abort frame fails the collective with the name of the rank at
//! fault, and this rank passes an abort frame naming it both ways round the ring, so every rank fails naming
//! the same rank instead of the neighbour that exited after it.
//!
//! Hangs: a rank waiting for its left neighbour's data sends heartbeats to its right one (a few a second,
//! once its own data is sent). So a rank that waits only because the rank before it waits is never silent,
//! and the only rank that sees silence past the deadline is the right neighbour of the rank that stopped
//! calling collectives (hung, or computing past the deadline): it names that rank, and the abort frames
//! carry the name round the ring.

use super::{check_len, Collectives, CommError, CommResult, ReduceOp};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const DATA: u32 = 0;
const ABORT: u32 = 1;
const HEARTBEAT: u32 = 2;
/// How long the error path waits when telling neighbours about a failure or looking for their abort frame.
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// How often a waiting rank sends a heartbeat: often enough that its neighbour, whose silence limit is
/// `op_timeout`, hears several before that limit.
fn heartbeat_tick(op_timeout: Duration) -> Duration {
    (op_timeout / 8).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

/// Data-parallel collectives over a TCP ring (see the module notes).
pub struct Ring {
    rank: usize,
    world: usize,
    left: TcpStream,
    right: TcpStream,
    op_timeout: Duration,
    recv: Vec<f32>,
    work: Vec<f32>,
    /// Set at the first failure; every later call returns it.
    failed: Option<CommError>,
}

fn header(kind: u32, rank: u32, len: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[4..8].copy_from_slice(&rank.to_le_bytes());
    h[8..].copy_from_slice(&len.to_le_bytes());
    h
}

fn send_data(mut s: impl Write, data: &[f32]) -> std::io::Result<()> {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    s.write_all(&header(DATA, 0, bytes.len() as u64))?;
    s.write_all(bytes)
}

/// What a read from a neighbour found instead of the expected data.
enum ReadFail {
    Abort { rank: usize, reason: String },
    Io(std::io::Error),
    Protocol(String),
}

/// A wait for a neighbour's bytes: how long it may stay silent, and the heartbeats this rank sends to its
/// right neighbour meanwhile (once `sent` says this rank's own data for the step is out), one per tick
/// whether or not bytes (the left neighbour's heartbeats) arrive in between.
struct Wait<'a> {
    silence: Duration,
    last: Instant,
    tick: Duration,
    last_beat: Instant,
    beat: Option<(&'a TcpStream, &'a AtomicBool)>,
}

impl<'a> Wait<'a> {
    fn new(silence: Duration, beat: Option<(&'a TcpStream, &'a AtomicBool)>) -> Wait<'a> {
        let now = Instant::now();
        Wait {
            silence,
            last: now,
            tick: heartbeat_tick(silence),
            last_beat: now,
            beat,
        }
    }

    /// Sends a heartbeat if one is due.
    fn beat_if_due(&mut self) {
        if let Some((mut right, sent)) = self.beat {
            if sent.load(Ordering::Acquire) && self.last_beat.elapsed() >= self.tick {
                // Best effort: a failed heartbeat shows up as the right neighbour's failure elsewhere.
                let _ = right.write_all(&header(HEARTBEAT, 0, 0));
                self.last_beat = Instant::now();
            }
        }
    }

    /// A read timed out: silent for too long, or time for a heartbeat.
    fn tick(&mut self) -> std::io::Result<()> {
        if self.last.elapsed() >= self.silence {
            return Err(std::io::Error::new(ErrorKind::TimedOut, "neighbour silent"));
        }
        self.beat_if_due();
        Ok(())
    }
}

/// Reads exactly `buf.len()` bytes, tolerating the socket's short read timeout (the heartbeat tick) until
/// nothing at all has arrived for the wait's silence limit.
fn read_full(s: &mut TcpStream, mut buf: &mut [u8], w: &mut Wait) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.read(buf) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                w.last = Instant::now();
                w.beat_if_due();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => w.tick()?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_abort_body(s: &mut TcpStream, rank: u32, len: u64) -> ReadFail {
    let mut reason = vec![0u8; len.min(4096) as usize];
    match read_full(s, &mut reason, &mut Wait::new(ABORT_WAIT, None)) {
        Ok(()) => ReadFail::Abort {
            rank: rank as usize,
            reason: String::from_utf8_lossy(&reason).into_owned(),
        },
        Err(e) => ReadFail::Io(e),
    }
}

/// Receives one data frame of `out.len()` values, skipping heartbeats.
fn recv_data(s: &mut TcpStream, out: &mut [f32], w: &mut Wait) -> Result<(), ReadFail> {
    loop {
        let mut h = [0u8; 16];
        read_full(s, &mut h, w).map_err(ReadFail::Io)?;
        let kind = u32::from_le_bytes(h[..4].try_into().unwrap());
        let rank = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let len = u64::from_le_bytes(h[8..].try_into().unwrap());
        return match kind {
            HEARTBEAT if len == 0 => continue,
            DATA if len as usize == out.len() * 4 => {
                read_full(s, bytemuck::cast_slice_mut(out), w).map_err(ReadFail::Io)
            }
            DATA => Err(ReadFail::Protocol(format!(
                "received {len} bytes where {} were expected: the ranks are running different collectives \
                 (different configurations, or a bug)",
                out.len() * 4
            ))),
            ABORT => Err(read_abort_body(s, rank, len)),
            k => Err(ReadFail::Protocol(format!("unknown frame kind {k}"))),
        };
    }
}

/// A peer's failure as this rank words it.
fn io_failure(peer: usize, e: &std::io::Error, timeout: Duration) -> CommError {
    let reason = match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "sent nothing for {} s (hung, or busy outside the collectives for longer than the deadline)",
            timeout.as_secs_f64()
        ),
        ErrorKind::UnexpectedEof => "closed its connection (exited or crashed)".to_string(),
        _ => format!("connection lost ({e}; exited or crashed)"),
    };
    CommError::PeerFailed { rank: peer, reason }
}

impl Ring {
    /// The ring over the sockets that [`super::bootstrap::join`] connected.
    pub fn new(rank: usize, world: usize, left: TcpStream, right: TcpStream, op_timeout: Duration) -> Ring {
        // Reads from the left wake up at every heartbeat tick; silence is measured by `Wait`.
        let _ = left.set_read_timeout(Some(heartbeat_tick(op_timeout)));
        Ring {
            rank,
            world,
            left,
            right,
            op_timeout,
            recv: Vec::new(),
            work: Vec::new(),
            failed: None,
        }
    }

    fn left_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn right_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    /// Records `err`, tells both neighbours, and returns it.
    fn fail(&mut self, err: CommError) -> CommError {
        if let CommError::PeerFailed { rank, reason } = &err {
            self.send_abort(*rank, reason);
        }
        self.failed = Some(err.clone());
        err
    }

    fn send_abort(&mut self, rank: usize, reason: &str) {
        let bytes = reason.as_bytes();
        for s in [&mut self.left, &mut self.right] {
            let _ = s.set_write_timeout(Some(ABORT_WAIT));
            let _ = s.write_all(&header(ABORT, rank as u32, bytes.len() as u64));
            let _ = s.write_all(bytes);
            let _ = s.flush();
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    /// After a failed write to the right: did the right neighbour tell us why before it went?
    fn right_abort(&mut self) -> Option<CommError> {
        let _ = self.right.set_read_timeout(Some(ABORT_WAIT));
        let mut h = [0u8; 16];
        self.right.read_exact(&mut h).ok()?;
        if u32::from_le_bytes(h[..4].try_into().unwrap()) != ABORT {
            return None;
        }
        let rank = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let len = u64::from_le_bytes(h[8..].try_into().unwrap());
        match read_abort_body(&mut self.right, rank, len) {
            ReadFail::Abort { rank, reason } => Some(CommError::PeerFailed { rank, reason }),
            _ => None,
        }
    }

    /// Sends `send` to the right while receiving `recv.len()` values from the left.
    fn exchange(&mut self, send: &[f32], recv_len: usize) -> CommResult<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.recv.resize(recv_len, 0.0);
        let timeout = self.op_timeout;
        let (right, left, recv) = (&self.right, &mut self.left, &mut self.recv);
        let sent = AtomicBool::new(false);
        let (wrote, read) = std::thread::scope(|s| {
            let sent = &sent;
            let writer = s.spawn(move || {
                let r = send_data(right, send);
                sent.store(true, Ordering::Release);
                r
            });
            let read = recv_data(left, recv, &mut Wait::new(timeout, Some((right, sent))));
            (writer.join().expect("ring writer thread panicked"), read)
        });
        match read {
            Err(ReadFail::Abort { rank, reason }) => return Err(self.fail(CommError::PeerFailed { rank, reason })),
            Err(ReadFail::Io(e)) => {
                let err = io_failure(self.left_rank(), &e, timeout);
                return Err(self.fail(err));
            }
            Err(ReadFail::Protocol(m)) => {
                let err = CommError::PeerFailed {
                    rank: self.left_rank(),
                    reason: m,
                };
                return Err(self.fail(err));
            }
            Ok(()) => {}
        }
        if let Err(e) = wrote {
            let err = self
                .right_abort()
                .unwrap_or_else(|| io_failure(self.right_rank(), &e, timeout));
            return Err(self.fail(err));
        }
        Ok(())
    }

    /// Between collectives (or while another backend's collective runs, NCCL's): has a neighbour sent an
    /// abort frame? Never blocks for long; heartbeats found on the way are consumed.
    pub fn poll_abort(&mut self) -> Option<CommError> {
        if let Some(e) = &self.failed {
            return Some(e.clone());
        }
        for side in [0, 1] {
            let s = if side == 0 { &mut self.left } else { &mut self.right };
            loop {
                let mut h = [0u8; 16];
                let _ = s.set_nonblocking(true);
                let got = s.peek(&mut h);
                let _ = s.set_nonblocking(false);
                let n = match got {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => 0,
                };
                if n == 0 {
                    // Closed without a word: the neighbour exited.
                    let (peer, timeout) = (
                        if side == 0 { self.left_rank() } else { self.right_rank() },
                        self.op_timeout,
                    );
                    let err = io_failure(peer, &ErrorKind::UnexpectedEof.into(), timeout);
                    return Some(self.fail(err));
                }
                if n < 16 {
                    break;
                }
                let _ = s.read_exact(&mut h);
                let kind = u32::from_le_bytes(h[..4].try_into().unwrap());
                let rank = u32::from_le_bytes(h[4..8].try_into().unwrap());
                let len = u64::from_le_bytes(h[8..].try_into().unwrap());
                match kind {
                    HEARTBEAT => continue,
                    ABORT => {
                        if let ReadFail::Abort { rank, reason } = read_abort_body(s, rank, len) {
                            return Some(self.fail(CommError::PeerFailed { rank, reason }));
                        }
                        break;
                    }
                    _ => break,
                }
            }
        }
        None
    }

    /// Chunk c of a buffer of `n` values split `world` ways (the first `n % world` one longer).
    fn chunk(&self, n: usize, c: usize) -> std::ops::Range<usize> {
        let (w, c) = (self.world, c % self.world);
        c * n / w..(c + 1) * n / w
    }

    /// Reduce-scatter of `self.work` in place: afterwards chunk `rank` holds the reduction.
    fn ring_reduce(&mut self, op: ReduceOp) -> CommResult<()> {
        let (r, w, n) = (self.rank, self.world, self.work.len());
        for s in 0..w - 1 {
            let out = self.chunk(n, r + 2 * w - s - 1);
            let inc = self.chunk(n, r + 2 * w - s - 2);
            let send = std::mem::take(&mut self.work);
            let res = self.exchange(&send[out], inc.len());
            self.work = send;
            res?;
            for (dst, &got) in self.work[inc].iter_mut().zip(&self.recv) {
                *dst += got; // IEEE addition commutes: the order that matters is the ring's.
            }
        }
        if op == ReduceOp::Avg {
            let own = self.chunk(n, r);
            let wf = w as f32;
            self.work[own].iter_mut().for_each(|v| *v /= wf);
        }
        Ok(())
    }

    /// All-gather of `self.work` in place from chunk `rank`.
    fn ring_gather(&mut self) -> CommResult<()> {
        let (r, w, n) = (self.rank, self.world, self.work.len());
        for s in 0..w - 1 {
            let out = self.chunk(n, r + w - s);
            let inc = self.chunk(n, r + 2 * w - s - 1);
            let send = std::mem::take(&mut self.work);
            let res = self.exchange(&send[out], inc.len());
            self.work = send;
            res?;
            let recv = std::mem::take(&mut self.recv);
            self.work[inc].copy_from_slice(&recv);
            self.recv = recv;
        }
        Ok(())
    }
}

impl Collectives for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> CommResult<()> {
        self.work.clear();
        self.work.extend_from_slice(buf);
        self.ring_reduce(op)?;
        self.ring_gather()?;
        buf.copy_from_slice(&self.work);
        Ok(())
    }

    fn reduce_scatter(&mut self, input: &[f32], output: &mut [f32], op: ReduceOp) -> CommResult<()> {
        check_len("reduce_scatter input", input.len(), output.len() * self.world)?;
        self.work.clear();
        self.work.extend_from_slice(input);
        self.ring_reduce(op)?;
        let own = self.chunk(input.len(), self.rank);
        output.copy_from_slice(&self.work[own]);
        Ok(())
    }

    fn all_gather(&mut self, input: &[f32], output: &mut [f32]) -> CommResult<()> {
        check_len("all_gather output", output.len(), input.len() * self.world)?;
        self.work.clear();
        self.work.resize(output.len(), 0.0);
        let own = self.chunk(output.len(), self.rank);
        self.work[own].copy_from_slice(input);
        self.ring_gather()?;
        output.copy_from_slice(&self.work);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> CommResult<()> {
        if root >= self.world {
            return Err(CommError::Usage(format!(
                "broadcast from rank {root} in a world of {}",
                self.world
            )));
        }
        // Passed around the ring from the root, in segments so that the hops overlap.
        const SEG: usize = 1 << 18;
        let last = (root + self.world - 1) % self.world;
        let mut at = 0;
        while at < buf.len() || (at == 0 && buf.is_empty()) {
            let seg = at..(at + SEG).min(buf.len());
            if self.rank != root {
                // Receive only (send nothing): reuse exchange's read path with an empty send is not
                // possible without a frame, so read directly.
                if let Some(e) = &self.failed {
                    return Err(e.clone());
                }
                let timeout = self.op_timeout;
                let sent = AtomicBool::new(true);
                let mut wait = Wait::new(timeout, Some((&self.right, &sent)));
                if let Err(f) = recv_data(&mut self.left, &mut buf[seg.clone()], &mut wait) {
                    let err = match f {
                        ReadFail::Abort { rank, reason } => CommError::PeerFailed { rank, reason },
                        ReadFail::Io(e) => io_failure(self.left_rank(), &e, timeout),
                        ReadFail::Protocol(m) => CommError::PeerFailed {
                            rank: self.left_rank(),
                            reason: m,
                        },
                    };
                    return Err(self.fail(err));
                }
            }
            if self.rank != last {
                if let Err(e) = send_data(&mut self.right, &buf[seg.clone()]) {
                    let timeout = self.op_timeout;
                    let err = self
                        .right_abort()
                        .unwrap_or_else(|| io_failure(self.right_rank(), &e, timeout));
                    return Err(self.fail(err));
                }
            }
            if buf.is_empty() {
                break;
            }
            at = seg.end;
        }
        Ok(())
    }

    fn barrier(&mut self) -> CommResult<()> {
        let mut token = vec![0f32; self.world];
        self.all_reduce(&mut token, ReduceOp::Sum)
    }

    fn abort(&mut self, reason: &str) {
        if self.failed.is_none() {
            let rank = self.rank;
            self.send_abort(rank, reason);
            self.failed = Some(CommError::PeerFailed {
                rank,
                reason: reason.to_string(),
            });
        }
    }
}

/// Joins the job and returns its collectives: [`super::Solo`] for one rank, else the TCP ring.
pub fn connect(
    info: &super::RankInfo,
    fingerprint: &super::Fingerprint,
    timeouts: &super::Timeouts,
) -> Result<Box<dyn Collectives>, String> {
    if !info.is_distributed() {
        return Ok(Box::new(super::Solo));
    }
    let joined = super::bootstrap::join(info, fingerprint, Vec::new(), timeouts)?;
    let (Some(left), Some(right)) = (joined.left, joined.right) else {
        unreachable!("a distributed join has ring sockets")
    };
    Ok(Box::new(Ring::new(
        info.rank.value,
        info.world_size.value,
        left,
        right,
        timeouts.op,
    )))
}
