//! How the ranks of a job find each other over TCP, before any collective runs.
//!
//! Rank 0 listens on the master port (a mio event loop, so it serves every joining rank at once and keeps
//! its deadline). Every other rank connects, retrying until the deadline (rank 0 may start later), and sends
//! a hello: its rank, the world size it was launched with, the port of its own ring listener and the run's
//! [`Fingerprint`]. When all have joined and every hello agrees with rank 0's launch, rank 0 answers each
//! with the ring addresses and an opaque payload (the NCCL unique id on GPUs); any disagreement is answered
//! with a rejection naming what differs, so a mismatched launch fails on every rank at once. Finally each rank
//! connects to its right neighbour and accepts its left one: the sockets of the CPU ring.

use super::env::RankInfo;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Deadlines of the job.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long the ranks wait for each other to start and join.
    pub connect: Duration,
    /// How long a collective waits for a peer's data before declaring it hung.
    pub op: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(300),
            op: Duration::from_secs(600),
        }
    }
}

/// What must be equal on every rank for the job to make sense (model configuration, batch geometry, world
/// size, tokenizer, binary version, ...), as named strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint(pub BTreeMap<String, String>);

impl Fingerprint {
    pub fn new() -> Fingerprint {
        Fingerprint::default()
    }

    pub fn with(mut self, key: &str, value: impl ToString) -> Fingerprint {
        self.0.insert(key.to_string(), value.to_string());
        self
    }

    /// One clause per differing entry: `depth: 4 on rank 0, 2 on rank 1`.
    pub fn differences(&self, mine: usize, other: &Fingerprint, theirs: usize) -> Vec<String> {
        let missing = "(unset)".to_string();
        let mut keys: Vec<&String> = self.0.keys().chain(other.0.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| {
                let a = self.0.get(k).unwrap_or(&missing);
                let b = other.0.get(k).unwrap_or(&missing);
                (a != b).then(|| format!("{k}: {a} on rank {mine}, {b} on rank {theirs}"))
            })
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct Hello {
    rank: usize,
    world_size: usize,
    ring_port: u16,
    fingerprint: Fingerprint,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Welcome { ring: Vec<String>, payload: Vec<u8> },
    Reject { reason: String },
}

/// A joined rank: its ring sockets (none for a lone rank) and rank 0's payload.
pub struct Joined {
    pub left: Option<TcpStream>,
    pub right: Option<TcpStream>,
    pub payload: Vec<u8>,
}

/// Joins the job described by `info`. `payload` is sent by rank 0 to everyone (ignored elsewhere).
pub fn join(
    info: &RankInfo,
    fingerprint: &Fingerprint,
    payload: Vec<u8>,
    timeouts: &Timeouts,
) -> Result<Joined, String> {
    let (rank, world) = (info.rank.value, info.world_size.value);
    if world == 1 {
        return Ok(Joined {
            left: None,
            right: None,
            payload,
        });
    }
    let deadline = Instant::now() + timeouts.connect;
    // The ring listener first, so its port can be announced.
    let ring_listener = std::net::TcpListener::bind(("0.0.0.0", 0))
        .map_err(|e| format!("rank {rank}: cannot open a listening socket for the ring: {e}"))?;
    let ring_port = ring_listener.local_addr().map_err(|e| e.to_string())?.port();
    let hello = Hello {
        rank,
        world_size: world,
        ring_port,
        fingerprint: fingerprint.clone(),
    };
    let (ring, payload) = if rank == 0 {
        let ring = serve_master(info, hello, &payload, deadline)?;
        (ring, payload)
    } else {
        match join_master(info, &hello, deadline)? {
            Reply::Welcome { ring, payload } => (ring, payload),
            Reply::Reject { reason } => return Err(reason),
        }
    };
    let (left, right) = connect_ring(rank, world, &ring, ring_listener, deadline, timeouts)?;
    Ok(Joined {
        left: Some(left),
        right: Some(right),
        payload,
    })
}

fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(&(bytes.len() as u32).to_le_bytes())?;
    s.write_all(bytes)
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 24 {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "bootstrap message too large (not a nanochat rank?)",
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

const LISTENER: Token = Token(usize::MAX);

/// A joining rank's connection at the master, with what it has sent so far.
struct Pending {
    stream: mio::net::TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    hello: Option<Hello>,
}

/// Rank 0: waits for every other rank's hello, checks them and answers.
fn serve_master(info: &RankInfo, mine: Hello, payload: &[u8], deadline: Instant) -> Result<Vec<String>, String> {
    let port = info.master_port.value;
    let world = info.world_size.value;
    let addr: SocketAddr = ([0, 0, 0, 0], port).into();
    let mut listener = TcpListener::bind(addr).map_err(|e| {
        if e.kind() == ErrorKind::AddrInUse {
            format!(
                "rank 0: master port {port} ({}) is already in use on this host (another run?): set MASTER_PORT to a free port",
                info.master_port.source
            )
        } else {
            format!("rank 0: cannot listen on port {port}: {e}")
        }
    })?;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(64);
    let mut conns: HashMap<usize, Pending> = HashMap::new();
    let mut next_token = 0usize;
    let joined = |conns: &HashMap<usize, Pending>| conns.values().filter(|p| p.hello.is_some()).count();
    while joined(&conns) < world - 1 {
        let now = Instant::now();
        if now >= deadline {
            let mut seen: Vec<usize> = conns
                .values()
                .filter_map(|p| p.hello.as_ref().map(|h| h.rank))
                .collect();
            seen.push(0);
            let missing: Vec<String> = (0..world)
                .filter(|r| !seen.contains(r))
                .map(|r| r.to_string())
                .collect();
            return Err(format!(
                "rank 0: rank(s) {} did not join the master on port {port} in time (did they start? same MASTER_ADDR/MASTER_PORT?)",
                missing.join(", ")
            ));
        }
        poll.poll(&mut events, Some((deadline - now).min(Duration::from_millis(500))))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            let tok = next_token;
                            next_token += 1;
                            poll.registry()
                                .register(&mut stream, Token(tok), Interest::READABLE)
                                .map_err(|e| e.to_string())?;
                            conns.insert(
                                tok,
                                Pending {
                                    stream,
                                    peer,
                                    buf: Vec::new(),
                                    hello: None,
                                },
                            );
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("rank 0: accept failed: {e}")),
                    }
                }
                continue;
            }
            let tok = ev.token().0;
            let Some(p) = conns.get_mut(&tok) else {
                continue;
            };
            let mut chunk = [0u8; 4096];
            let mut closed = false;
            loop {
                match p.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => p.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if p.hello.is_none() && p.buf.len() >= 4 {
                let len = u32::from_le_bytes(p.buf[..4].try_into().unwrap()) as usize;
                if p.buf.len() >= 4 + len {
                    let hello: Hello = serde_json::from_slice(&p.buf[4..4 + len]).map_err(|e| {
                        format!(
                            "rank 0: a process at {} sent a bad hello ({e}): not a nanochat rank of this version?",
                            p.peer
                        )
                    })?;
                    p.hello = Some(hello);
                }
            }
            if closed && p.hello.is_none() {
                conns.remove(&tok);
            }
        }
        // Check each hello as soon as it is complete, so a mismatch fails without waiting for the rest.
        let mut reject = None;
        let mut ranks_seen: HashMap<usize, SocketAddr> = HashMap::new();
        for p in conns.values() {
            let Some(h) = &p.hello else { continue };
            if h.world_size != world {
                reject = Some(format!(
                    "launch mismatch: rank {} was started with a world size of {}, rank 0 with {world}",
                    h.rank, h.world_size
                ));
            } else if h.rank == 0 || h.rank >= world {
                reject = Some(format!(
                    "launch mismatch: a process at {} claims rank {} in a world of {world}",
                    p.peer, h.rank
                ));
            } else if let Some(other) = ranks_seen.insert(h.rank, p.peer) {
                reject = Some(format!(
                    "launch mismatch: two processes ({other} and {}) claim rank {}",
                    p.peer, h.rank
                ));
            } else {
                let diff = mine.fingerprint.differences(0, &h.fingerprint, h.rank);
                if !diff.is_empty() {
                    reject = Some(format!("launch mismatch: {}", diff.join("; ")));
                }
            }
            if reject.is_some() {
                break;
            }
        }
        if let Some(reason) = reject {
            for p in conns.into_values() {
                let mut s: TcpStream = p.stream.into();
                let _ = s.set_nonblocking(false);
                let reply = serde_json::to_vec(&Reply::Reject { reason: reason.clone() }).unwrap();
                let _ = write_frame(&mut s, &reply);
            }
            return Err(reason);
        }
    }
    // Everyone is here: the ring addresses, rank 0's as the others reached it.
    let mut ring = vec![String::new(); world];
    let master_host = info.master_addr.value.clone();
    ring[0] = format!("{}:{}", bracket(&master_host), mine.ring_port);
    let mut streams = Vec::new();
    for p in conns.into_values() {
        let h = p.hello.expect("only joined connections are left");
        ring[h.rank] = format!("{}:{}", bracket(&p.peer.ip().to_string()), h.ring_port);
        streams.push(p.stream);
    }
    let reply = serde_json::to_vec(&Reply::Welcome {
        ring: ring.clone(),
        payload: payload.to_vec(),
    })
    .unwrap();
    for s in streams {
        let mut s: TcpStream = s.into();
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        write_frame(&mut s, &reply).map_err(|e| format!("rank 0: answering a rank: {e}"))?;
    }
    Ok(ring)
}

/// IPv6 literals need brackets before a port.
fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn resolve(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(host_port.to_socket_addrs()?.collect())
}

/// Connects to `host_port` until `deadline`, retrying refused or failed attempts.
fn connect_retry(host_port: &str, deadline: Instant, what: &str) -> Result<TcpStream, String> {
    let mut last = String::from("no attempt");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "could not reach {what} at {host_port} in time (last error: {last})"
            ));
        }
        match resolve(host_port) {
            Err(e) => last = format!("cannot resolve: {e}"),
            Ok(addrs) => {
                for a in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match TcpStream::connect_timeout(&a, left.clamp(Duration::from_millis(1), Duration::from_secs(5))) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = e.to_string(),
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// A rank other than 0: hello to the master, then wait for its answer.
fn join_master(info: &RankInfo, hello: &Hello, deadline: Instant) -> Result<Reply, String> {
    let rank = hello.rank;
    let master = format!("{}:{}", bracket(&info.master_addr.value), info.master_port.value);
    let what = format!(
        "the master (rank 0; MASTER_ADDR from {}, port from {})",
        info.master_addr.source, info.master_port.source
    );
    let mut s = connect_retry(&master, deadline, &what).map_err(|e| format!("rank {rank}: {e}"))?;
    write_frame(&mut s, &serde_json::to_vec(hello).unwrap())
        .map_err(|e| format!("rank {rank}: sending hello to the master {master}: {e}"))?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    let bytes = read_frame(&mut s).map_err(|e| {
        format!("rank {rank}: no answer from the master {master} (it failed, or other ranks never joined): {e}")
    })?;
    serde_json::from_slice(&bytes).map_err(|e| format!("rank {rank}: bad answer from the master {master}: {e}"))
}

/// Ring sockets: connect to the right neighbour, accept the left one; each side names itself.
fn connect_ring(
    rank: usize,
    world: usize,
    ring: &[String],
    listener: std::net::TcpListener,
    deadline: Instant,
    timeouts: &Timeouts,
) -> Result<(TcpStream, TcpStream), String> {
    let right_rank = (rank + 1) % world;
    let left_rank = (rank + world - 1) % world;
    let mut right = connect_retry(&ring[right_rank], deadline, &format!("rank {right_rank}"))
        .map_err(|e| format!("rank {rank}: {e}"))?;
    right
        .write_all(&(rank as u64).to_le_bytes())
        .map_err(|e| format!("rank {rank}: greeting rank {right_rank}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut left = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(format!("rank {rank}: rank {left_rank} never connected to the ring"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("rank {rank}: ring accept: {e}")),
        }
    };
    left.set_nonblocking(false).map_err(|e| e.to_string())?;
    left.set_read_timeout(Some(timeouts.connect))
        .map_err(|e| e.to_string())?;
    let mut who = [0u8; 8];
    left.read_exact(&mut who)
        .map_err(|e| format!("rank {rank}: ring greeting from rank {left_rank}: {e}"))?;
    let who = u64::from_le_bytes(who) as usize;
    if who != left_rank {
        return Err(format!(
            "rank {rank}: expected rank {left_rank} on the ring, rank {who} connected"
        ));
    }
    for s in [&left, &right] {
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeouts.op)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeouts.op)).map_err(|e| e.to_string())?;
    }
    Ok((left, right))
}
