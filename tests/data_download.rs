//! The shard download against a loopback HTTP server that this test starts and feeds with generated shards:
//! parallel workers, retries on server errors, a damaged transfer redone, a partial file continued with a
//! range request, present files skipped, and a missing shard reported. Nothing leaves the machine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nanochat::data::download::{download_shards, shard_indices, shard_name, DownloadOptions};
use nanochat::data::parquet::{write_text_parquet, TextParquet};

/// What the server does with a request for one file.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Ok,
    /// Answer 503 to the first `n` requests.
    FailFirst(usize),
    /// Send only the first half of the file (as a complete response) the first time.
    HalfFirst,
}

/// (path, Range header) of a request.
type Request = (String, Option<String>);

struct Server {
    url: String,
    stop: Arc<AtomicBool>,
    /// (path, Range header) of every request, in arrival order.
    log: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(files: HashMap<String, (Vec<u8>, Behaviour)>) -> Server {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", server.server_addr().to_ip().expect("ip address"));
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let mut seen: HashMap<String, usize> = HashMap::new();
            while !stop2.load(Ordering::Relaxed) {
                let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let path = req.url().trim_start_matches('/').to_string();
                let range = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Range"))
                    .map(|h| h.value.as_str().to_string());
                log2.lock().expect("log").push((path.clone(), range.clone()));
                let count = seen.entry(path.clone()).or_default();
                *count += 1;
                let response = match files.get(&path) {
                    None => tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404),
                    Some((_, Behaviour::FailFirst(n))) if *count <= *n => {
                        tiny_http::Response::from_data(b"busy".to_vec()).with_status_code(503)
                    }
                    Some((data, Behaviour::HalfFirst)) if *count == 1 => {
                        tiny_http::Response::from_data(data[..data.len() / 2].to_vec())
                    }
                    Some((data, _)) => match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
                        Some(r) => {
                            let from: usize = r.trim_end_matches('-').parse().expect("range start");
                            tiny_http::Response::from_data(data[from..].to_vec()).with_status_code(206)
                        }
                        None => tiny_http::Response::from_data(data.clone()),
                    },
                };
                let _ = req.respond(response);
            }
        });
        Server {
            url,
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn requests(&self, path: &str) -> Vec<Option<String>> {
        let log = self.log.lock().expect("log");
        log.iter().filter(|(p, _)| p == path).map(|(_, r)| r.clone()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn shard_bytes(dir: &std::path::Path, index: usize) -> Vec<u8> {
    let docs: Vec<String> = (0..1500)
        .map(|i| format!("shard {index} document {i}: some text"))
        .collect();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let path = dir.join(format!("gen_{index}.parquet"));
    write_text_parquet(&path, &refs, 1024).expect("write");
    std::fs::read(&path).expect("read")
}

#[test]
fn downloads_with_retries_resume_and_validation() {
    let gen = tempfile::tempdir().expect("tempdir");
    let max_shard = 9;
    let indices = shard_indices(Some(4), max_shard);
    assert_eq!(indices, vec![0, 1, 2, 3, 9], "shards 0..n plus the validation shard");
    assert_eq!(shard_indices(None, max_shard), (0..=9).collect::<Vec<_>>());
    assert_eq!(shard_indices(Some(50), max_shard), (0..=9).collect::<Vec<_>>());

    let behaviours = [
        (0, Behaviour::Ok),
        (1, Behaviour::FailFirst(2)),
        (2, Behaviour::HalfFirst),
        (9, Behaviour::Ok),
    ];
    let mut files = HashMap::new();
    let mut originals = HashMap::new();
    for (i, b) in behaviours {
        let data = shard_bytes(gen.path(), i);
        originals.insert(i, data.clone());
        files.insert(shard_name(i), (data, b));
    }
    // Shard 3 does not exist on the server.
    let server = Server::start(files);

    let out = tempfile::tempdir().expect("tempdir");
    // Shard 0 was half downloaded by an interrupted run; shard 9 is already complete.
    let tmp0 = out.path().join(format!("{}.tmp", shard_name(0)));
    std::fs::write(&tmp0, &originals[&0][..1000]).expect("write");
    std::fs::write(out.path().join(shard_name(9)), &originals[&9]).expect("write");

    let opts = DownloadOptions {
        workers: 3,
        attempts: 3,
        backoff: Duration::from_millis(1),
        timeout: Duration::from_secs(10),
        verbose: false,
    };
    let report = download_shards(&server.url, out.path(), &indices, &opts).expect("download");
    assert_eq!(report.downloaded, vec![0, 1, 2]);
    assert_eq!(report.skipped, vec![9]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, 3);
    assert!(report.failed[0].1.contains("HTTP 404"), "{}", report.failed[0].1);

    for i in [0, 1, 2, 9] {
        let got = std::fs::read(out.path().join(shard_name(i))).expect("downloaded file");
        assert_eq!(got, originals[&i], "shard {i} differs");
        assert_eq!(
            TextParquet::open(&out.path().join(shard_name(i)))
                .expect("parquet")
                .num_docs(),
            1500
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    assert_eq!(
        server.requests(&shard_name(0)),
        vec![Some("bytes=1000-".to_string())],
        "partial file continued"
    );
    assert_eq!(server.requests(&shard_name(1)).len(), 3, "two 503s then success");
    assert_eq!(
        server.requests(&shard_name(2)).len(),
        2,
        "damaged transfer redone from scratch"
    );
    assert_eq!(
        server.requests(&shard_name(2))[1],
        None,
        "the redo is not a range request"
    );
    assert_eq!(
        server.requests(&shard_name(3)).len(),
        3,
        "all attempts used on a missing shard"
    );
    assert!(
        server.requests(&shard_name(9)).is_empty(),
        "present shard not requested"
    );

    // A second run has nothing left to do but the missing shard.
    let report = download_shards(&server.url, out.path(), &indices, &opts).expect("download");
    assert_eq!(
        (report.downloaded.len(), report.skipped.len(), report.failed.len()),
        (0, 4, 1)
    );
}
