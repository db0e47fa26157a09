//! The chat server on tiny_http (spec §7.2): `GET /` (the page of `web/`), `POST /chat/completions` (Server-Sent
//! Events as upstream), an OpenAI-compatible `POST /v1/chat/completions` (streaming or not), `GET /v1/models`
//! and `GET /v1/models/{id}`, `GET /health` and `GET /stats`. One engine per device; a thread per request.
//! Two ways to share the engines ([`Options::batch_rows`]): continuous batching, where each engine runs one
//! batch that requests join and leave step by step (`lanes`), or one request per engine at a time in a worker
//! pool (`pool`, upstream's way). Both have a bounded wait queue and answer 503 beyond it. Errors of the `/v1` routes are OpenAI error objects
//! (`{"error": {"message", "type", "param", "code"}}`), those of upstream's routes `{"error": "message"}`.

pub mod api;
pub mod lanes;
pub mod pool;
mod respond;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::{Method, Request};

use crate::engine::{Engine, InferModel};
use api::Defaults;
use pool::Pool;
use respond::{json_response, Reply};

/// Server settings (chat_web's flags).
#[derive(Clone, Debug)]
pub struct Options {
    pub defaults: Defaults,
    /// Requests allowed to wait for a busy worker; more get 503 at once.
    pub max_queue: usize,
    /// How long a request may wait for a worker before it gets 503.
    pub queue_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body: usize,
    /// Connections handled at once; more get 503 at once.
    pub max_connections: usize,
    /// Log each request to stderr.
    pub log: bool,
    /// What `/v1/models` lists.
    pub model: ModelInfo,
    /// Continuous batching: rows of each engine's KV cache (requests running at once per engine), each of the
    /// model's context. 0: one request per engine at a time (a worker pool).
    pub batch_rows: usize,
}

/// The model being served, as `/v1/models` describes it.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The id clients see (the `model` of every answer). Requests may name any model: there is only this one.
    pub id: String,
    /// Where the weights come from (a checkpoint directory), if from a file.
    pub checkpoint: Option<String>,
    /// The checkpoint's training step.
    pub step: Option<usize>,
    /// base, sft or rl.
    pub source: Option<String>,
    /// Unix seconds: when the checkpoint was written (OpenAI's `created`).
    pub created: u64,
}

impl Default for ModelInfo {
    fn default() -> Self {
        ModelInfo {
            id: "nanochat".into(),
            checkpoint: None,
            step: None,
            source: None,
            created: 0,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            defaults: Defaults {
                temperature: 0.8,
                top_k: 50,
                max_tokens: 512,
            },
            max_queue: 16,
            queue_timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            max_connections: 256,
            log: true,
            model: ModelInfo::default(),
            batch_rows: 0,
        }
    }
}

/// Counters reported by `/stats`.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    completions: AtomicU64,
    /// Streams stopped because the client went away.
    cancelled: AtomicU64,
    rejected_busy: AtomicU64,
    tokens: AtomicU64,
}

struct Shared<M: InferModel> {
    /// The engines; with continuous batching the lanes run them and the pool only hands out the first one's
    /// tokenizer and configuration.
    pool: Pool<Engine<M>>,
    /// One per engine with continuous batching, else none.
    lanes: Vec<lanes::Lane>,
    opts: Options,
    /// Device names, one per worker.
    devices: Vec<String>,
    counters: Counters,
    seed: AtomicU64,
}

/// A running server; `shutdown` stops it.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    active: Arc<AtomicUsize>,
    /// Stops the batching threads.
    stop_lanes: Box<dyn Fn() + Send + Sync>,
    lane_threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (e.g. "127.0.0.1:0") and serves in background threads. `devices` names each engine's device.
    pub fn start<M>(engines: Vec<Engine<M>>, devices: Vec<String>, opts: Options, addr: &str) -> Result<Server, String>
    where
        M: InferModel + Sync + 'static,
    {
        if engines.is_empty() {
            return Err("the server needs at least one engine".into());
        }
        let http = Arc::new(tiny_http::Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?);
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("{addr} is not an IP address"))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let context = engines[0].model.config().sequence_len;
        let lanes = (0..if opts.batch_rows > 0 { engines.len() } else { 0 })
            .map(|_| lanes::Lane::new(opts.batch_rows, context, opts.max_queue, opts.queue_timeout))
            .collect();
        let shared = Arc::new(Shared {
            pool: Pool::new(engines, opts.max_queue, opts.queue_timeout),
            lanes,
            opts,
            devices,
            counters: Counters::default(),
            seed: AtomicU64::new(seed),
        });
        let mut lane_threads = Vec::new();
        for i in 0..shared.lanes.len() {
            match spawn_lane(shared.clone(), i) {
                Ok(h) => lane_threads.push(h),
                Err(e) => {
                    shared.lanes.iter().for_each(lanes::Lane::stop);
                    return Err(e);
                }
            }
        }
        let sh = shared.clone();
        let stop_lanes = Box::new(move || sh.lanes.iter().for_each(lanes::Lane::stop));
        let active = Arc::new(AtomicUsize::new(0));
        let (h, act) = (http.clone(), active.clone());
        let accept = std::thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || {
                for req in h.incoming_requests() {
                    if act.load(Ordering::SeqCst) >= shared.opts.max_connections {
                        let v1 = req.url().starts_with("/v1/");
                        let body = respond::error_body(v1, 503, "server busy", None, None);
                        let _ = req.respond(json_response(503, &body));
                        continue;
                    }
                    act.fetch_add(1, Ordering::SeqCst);
                    let (sh, a) = (shared.clone(), act.clone());
                    let spawned = std::thread::Builder::new().name("http-conn".into()).spawn(move || {
                        handle(&sh, req);
                        a.fetch_sub(1, Ordering::SeqCst);
                    });
                    if let Err(e) = spawned {
                        act.fetch_sub(1, Ordering::SeqCst);
                        eprintln!("cannot start a connection thread: {e}");
                    }
                }
            })
            .map_err(|e| format!("cannot start the accept thread: {e}"))?;
        Ok(Server {
            http,
            addr,
            accept: Some(accept),
            active,
            stop_lanes,
            lane_threads,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests being handled now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops accepting, then waits up to `grace` for requests in flight to finish.
    pub fn shutdown(mut self, grace: Duration) {
        self.http.unblock();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let end = Instant::now() + grace;
        while self.active() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A lane stops once its batch is empty; wait for that only when the requests in flight have finished.
        (self.stop_lanes)();
        if self.active() == 0 {
            for h in self.lane_threads.drain(..) {
                let _ = h.join();
            }
        }
    }
}

/// Starts lane `i`'s thread on engine `i`; returns once its KV cache is allocated (an allocation failure is
/// the error).
fn spawn_lane<M: InferModel + Sync + 'static>(sh: Arc<Shared<M>>, i: usize) -> Result<JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("batch-{i}"))
        .spawn(move || {
            let lane = &sh.lanes[i];
            let mut b = match crate::engine::batch::Batcher::new(sh.pool.get(i), lane.rows, lane.t_max) {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            lane.run(&mut b);
        })
        .map_err(|e| format!("cannot start a batching thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the batching thread stopped while allocating its KV cache".to_string())??;
    Ok(handle)
}

/// (engines free for a new request, requests waiting): with continuous batching an engine is free while its
/// batch has a free row.
fn availability<M: InferModel>(sh: &Shared<M>) -> (usize, usize) {
    if sh.lanes.is_empty() {
        return sh.pool.counts();
    }
    sh.lanes.iter().fold((0, 0), |(f, w), l| {
        let (active, waiting) = l.counts();
        (f + usize::from(active < l.rows), w + waiting)
    })
}

/// Reads the body, at most `max` bytes: None when it is larger.
fn read_body(req: &mut Request, max: usize) -> Result<Option<Vec<u8>>, String> {
    if req.body_length().is_some_and(|n| n > max) {
        return Ok(None);
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading the request body: {e}"))?;
    Ok((body.len() <= max).then_some(body))
}

/// `/v1/models` entry of the served model.
fn model_object<M: InferModel>(sh: &Shared<M>) -> serde_json::Value {
    let m = &sh.opts.model;
    let context = sh.pool.first().model.config().sequence_len;
    serde_json::json!({"id": m.id, "object": "model", "created": m.created, "owned_by": "nanochat",
        "checkpoint": m.checkpoint, "step": m.step, "source": m.source, "context_length": context})
}

fn handle<M: InferModel + Sync>(sh: &Shared<M>, mut req: Request) {
    let t0 = Instant::now();
    sh.counters.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let v1 = path.starts_with("/v1/");
    let error = |status: u16, msg: &str, param: Option<&str>, code: Option<&str>| {
        Reply::Json(status, respond::error_body(v1, status, msg, param, code))
    };
    let model_path = path.strip_prefix("/v1/models/").filter(|id| !id.is_empty());
    let reply = match (&method, path.as_str()) {
        (Method::Options, _) => Reply::Preflight,
        (Method::Get, "/") | (Method::Get, "/index.html") => Reply::Page,
        (Method::Get, "/logo.svg") => Reply::Logo,
        (Method::Get, "/health") => {
            let (free, _) = availability(sh);
            Reply::Json(
                200,
                serde_json::json!({"status": "ok", "ready": true, "num_gpus": sh.pool.total(),
                    "available_workers": free}),
            )
        }
        (Method::Get, "/stats") => {
            let (free, waiting) = availability(sh);
            let workers: Vec<_> = sh
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| serde_json::json!({"gpu_id": i, "device": d}))
                .collect();
            let c = &sh.counters;
            let mut v = serde_json::json!({"total_workers": sh.pool.total(), "available_workers": free,
                "busy_workers": sh.pool.total() - free, "waiting_requests": waiting,
                "workers": workers, "requests": c.requests.load(Ordering::Relaxed),
                "completions": c.completions.load(Ordering::Relaxed),
                "cancelled": c.cancelled.load(Ordering::Relaxed),
                "rejected_busy": c.rejected_busy.load(Ordering::Relaxed),
                "generated_tokens": c.tokens.load(Ordering::Relaxed),
                "batching": if sh.lanes.is_empty() { "per-worker" } else { "continuous" }});
            if !sh.lanes.is_empty() {
                let rows: usize = sh.lanes.iter().map(|l| l.rows).sum();
                let active: usize = sh.lanes.iter().map(|l| l.counts().0).sum();
                v["batch_rows"] = rows.into();
                v["active_rows"] = active.into();
                v["row_positions"] = sh.lanes[0].t_max.into();
            }
            Reply::Json(200, v)
        }
        (Method::Get, "/v1/models") => {
            Reply::Json(200, serde_json::json!({"object": "list", "data": [model_object(sh)]}))
        }
        (Method::Get, _) if model_path.is_some() => {
            // Ids may contain '/', as OpenAI's fine-tuned model ids do: the rest of the path is the id.
            let id = model_path.unwrap_or_default();
            if id == sh.opts.model.id {
                Reply::Json(200, model_object(sh))
            } else {
                error(
                    404,
                    &format!(
                        "the model {id:?} does not exist (this server serves {:?})",
                        sh.opts.model.id
                    ),
                    Some("model"),
                    Some("model_not_found"),
                )
            }
        }
        (Method::Post, "/chat/completions") | (Method::Post, "/v1/chat/completions") => {
            match read_body(&mut req, sh.opts.max_body) {
                Err(e) => error(400, &e, None, None),
                Ok(None) => error(
                    413,
                    &format!("request body exceeds {} bytes", sh.opts.max_body),
                    None,
                    Some("request_too_large"),
                ),
                Ok(Some(body)) => match api::parse_request(&body, sh.opts.defaults, v1) {
                    Err(e) => error(400, &e.message, e.param, None),
                    Ok(chat) => {
                        let picked = sh.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) % (1 << 31);
                        let seed = chat.seed.unwrap_or(picked);
                        Reply::Chat {
                            chat,
                            openai: v1,
                            seed,
                            id: picked,
                        }
                    }
                },
            }
        }
        (_, "/" | "/index.html" | "/logo.svg" | "/health" | "/stats" | "/v1/models") => {
            error(405, "method not allowed", None, None)
        }
        (_, _) if model_path.is_some() => error(405, "method not allowed (use GET)", None, None),
        (_, "/chat/completions" | "/v1/chat/completions") => error(405, "method not allowed (use POST)", None, None),
        _ => error(404, &format!("no route for {method} {path}"), None, Some("unknown_url")),
    };
    let summary = respond::send(sh, req, reply);
    if sh.opts.log {
        eprintln!(
            "{method} {path} -> {summary} ({:.1} ms)",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
}
