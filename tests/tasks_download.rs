//! `download_data --tasks` against a loopback hub that this test starts: the split is listed through
//! `/api/datasets/{repo}/parquet/{subset}/{split}`, an interrupted transfer is continued with a range request,
//! a corrupt file is refused (never renamed into place, no manifest), a complete split is not fetched again,
//! and the downloaded rows load as a task. Nothing leaves the machine.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nanochat::data::download::DownloadOptions;
use nanochat::tasks::download::{
    complete_manifest, download_split, download_words, write_identity, HubSplit, Manifest, Outcome, MANIFEST,
};
use nanochat::tasks::{arc::Arc as ArcTask, hub, Task};

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Ok,
    /// The first response announces the whole length but the connection ends halfway.
    CutFirst,
    /// Always the same bytes, with a damaged footer.
    Corrupt,
}

type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A minimal HTTP/1.1 server on a raw socket (one request per connection, then close), so that a transfer can
/// really be cut: the headers announce the whole file, half of it is sent, the socket is closed.
struct Hub {
    url: String,
    stop: Arc<AtomicBool>,
    log: Log,
    thread: Option<JoinHandle<()>>,
}

/// Reads the request head; returns (path, Range header).
fn read_head(s: &mut TcpStream) -> Option<(String, Option<String>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split_whitespace().nth(1)?.to_string();
    let range = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("range").then(|| v.trim().to_string())
    });
    Some((path, range))
}

fn respond(s: &mut TcpStream, status: &str, announced: usize, body: &[u8]) {
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let _ = s.flush();
}

impl Hub {
    /// `files`: path -> (bytes, behaviour); `/api/...` listings are JSON answered from `lists`.
    fn start(files: HashMap<String, (Vec<u8>, Behaviour)>, lists: HashMap<String, Vec<String>>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let (stop2, log2, base) = (stop.clone(), log.clone(), url.clone());
        let thread = std::thread::spawn(move || {
            let mut seen: HashMap<String, usize> = HashMap::new();
            while !stop2.load(Ordering::Relaxed) {
                let mut s = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let Some((path, range)) = read_head(&mut s) else {
                    continue;
                };
                log2.lock().unwrap().push((path.clone(), range.clone()));
                let count = seen.entry(path.clone()).or_default();
                *count += 1;
                if let Some(names) = lists.get(&path) {
                    let urls: Vec<String> = names.iter().map(|n| format!("{base}{n}")).collect();
                    let body = serde_json::to_vec(&urls).unwrap();
                    respond(&mut s, "200 OK", body.len(), &body);
                    continue;
                }
                match files.get(&path) {
                    None => respond(&mut s, "404 Not Found", 9, b"not found"),
                    Some((data, Behaviour::CutFirst)) if *count == 1 => {
                        respond(&mut s, "200 OK", data.len(), &data[..data.len() / 2])
                    }
                    Some((data, b)) => {
                        let mut data = data.clone();
                        if *b == Behaviour::Corrupt {
                            let n = data.len();
                            data[n - 6..n - 4].copy_from_slice(b"XX");
                        }
                        match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
                            Some(r) => {
                                let from: usize = r.trim_end_matches('-').parse().unwrap();
                                let body = &data[from..];
                                respond(&mut s, "206 Partial Content", body.len(), body)
                            }
                            None => respond(&mut s, "200 OK", data.len(), &data),
                        }
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        });
        Hub {
            url,
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn requests(&self, path: &str) -> Vec<Option<String>> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|(p, _)| p == path).map(|(_, r)| r.clone()).collect()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tasks")
            .join(rel),
    )
    .unwrap()
}

fn opts() -> DownloadOptions {
    DownloadOptions {
        workers: 1,
        attempts: 3,
        backoff: Duration::from_millis(1),
        timeout: Duration::from_secs(10),
        verbose: false,
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

const EASY: HubSplit = HubSplit {
    repo: "allenai/ai2_arc",
    subset: "ARC-Easy",
    split: "test",
};
const CHALLENGE: HubSplit = HubSplit {
    repo: "allenai/ai2_arc",
    subset: "ARC-Challenge",
    split: "test",
};

#[test]
fn task_data_downloads_resume_refuse_corruption_and_load() {
    let easy = fixture("task_data/allenai--ai2_arc/ARC-Easy/test/00000.parquet");
    let challenge = fixture("task_data/allenai--ai2_arc/ARC-Challenge/test/00000.parquet");
    let mut files = HashMap::new();
    // ARC-Easy comes as two files: the first is cut off mid-transfer once, the second was half downloaded by
    // an earlier run.
    files.insert("/files/easy0.parquet".to_string(), (easy.clone(), Behaviour::CutFirst));
    files.insert("/files/easy1.parquet".to_string(), (challenge.clone(), Behaviour::Ok));
    files.insert(
        "/files/challenge0.parquet".to_string(),
        (challenge.clone(), Behaviour::Corrupt),
    );
    files.insert(
        "/words.txt".to_string(),
        (b"<html>rate limited</html>".to_vec(), Behaviour::Ok),
    );
    let mut lists = HashMap::new();
    lists.insert(
        "/api/datasets/allenai/ai2_arc/parquet/ARC-Easy/test".to_string(),
        vec!["/files/easy0.parquet".to_string(), "/files/easy1.parquet".to_string()],
    );
    lists.insert(
        "/api/datasets/allenai/ai2_arc/parquet/ARC-Challenge/test".to_string(),
        vec!["/files/challenge0.parquet".to_string()],
    );
    let server = Hub::start(files, lists);
    let base = tempfile::tempdir().unwrap();
    let dir = hub::dataset_dir(base.path(), EASY.repo, EASY.subset, EASY.split);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("00001.parquet.tmp"), &challenge[..700]).unwrap();

    let got = download_split(base.path(), &server.url, &EASY, &opts()).unwrap();
    assert_eq!(
        got,
        Outcome::Downloaded {
            files: 2,
            bytes: (easy.len() + challenge.len()) as u64
        }
    );
    assert_eq!(files_in(&dir), ["00000.parquet", "00001.parquet", MANIFEST]);
    assert_eq!(std::fs::read(dir.join("00000.parquet")).unwrap(), easy);
    assert_eq!(std::fs::read(dir.join("00001.parquet")).unwrap(), challenge);
    // The cut transfer was continued where it stopped; the earlier partial file too.
    let cut = server.requests("/files/easy0.parquet");
    assert_eq!(cut.len(), 2);
    assert_eq!(cut[0], None);
    assert_eq!(cut[1], Some(format!("bytes={}-", easy.len() / 2)));
    assert_eq!(
        server.requests("/files/easy1.parquet"),
        [Some("bytes=700-".to_string())]
    );
    let m: Manifest = serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(m.files.len(), 2);
    assert_eq!((m.files[0].rows, m.files[1].rows), (4, 3));
    assert_eq!(m.files[0].url, format!("{}/files/easy0.parquet", server.url));
    assert_eq!(complete_manifest(&dir), Some(m));

    // The two files load as one task of 7 rows, in upstream's shuffled order.
    let arc = ArcTask::load(base.path(), "ARC-Easy", "test").unwrap();
    assert_eq!(arc.num_examples(), 7);

    // A complete split is not listed or fetched again.
    let before = server.log.lock().unwrap().len();
    assert_eq!(
        download_split(base.path(), &server.url, &EASY, &opts()).unwrap(),
        Outcome::Present
    );
    assert_eq!(server.log.lock().unwrap().len(), before);

    // A corrupt file is refused on every attempt: nothing renamed into place, no manifest, no leftovers.
    let e = download_split(base.path(), &server.url, &CHALLENGE, &opts()).unwrap_err();
    assert!(e.to_string().contains("not usable"), "{e}");
    assert_eq!(server.requests("/files/challenge0.parquet").len(), 3);
    let cdir = hub::dataset_dir(base.path(), CHALLENGE.repo, CHALLENGE.subset, CHALLENGE.split);
    assert!(files_in(&cdir).is_empty(), "{:?}", files_in(&cdir));
    assert!(ArcTask::load(base.path(), "ARC-Challenge", "test").is_err());

    // A split the hub does not have is an error naming the listing URL.
    let missing = HubSplit {
        repo: "cais/mmlu",
        subset: "all",
        split: "test",
    };
    let e = download_split(base.path(), &server.url, &missing, &opts()).unwrap_err();
    assert!(
        e.to_string().contains("/api/datasets/cais/mmlu/parquet/all/test"),
        "{e}"
    );

    // A word list that is an error page is refused too.
    let e = download_words(base.path(), Some(&format!("{}/words.txt", server.url)), &opts()).unwrap_err();
    assert!(e.to_string().contains("not a word list"), "{e}");
    assert!(!base.path().join("words_alpha.txt").exists());

    // The identity conversations are written once and a user's own file is kept.
    let id = write_identity(base.path()).unwrap();
    assert!(std::fs::read_to_string(&id).unwrap().contains("nanochat"));
    std::fs::write(&id, "mine").unwrap();
    write_identity(base.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&id).unwrap(), "mine");
}

#[test]
fn download_data_tasks_eval_only_from_a_mirror() {
    let arc = fixture("task_data/allenai--ai2_arc/ARC-Easy/test/00000.parquet");
    let splits = [
        ("allenai/ai2_arc", "ARC-Easy", "test"),
        ("allenai/ai2_arc", "ARC-Challenge", "test"),
        ("cais/mmlu", "all", "test"),
        ("openai/gsm8k", "main", "test"),
        ("openai/openai_humaneval", "openai_humaneval", "test"),
    ];
    let mut files = HashMap::new();
    let mut lists = HashMap::new();
    for (i, (repo, subset, split)) in splits.iter().enumerate() {
        let name = format!("/f/{i}.parquet");
        files.insert(name.clone(), (arc.clone(), Behaviour::Ok));
        lists.insert(format!("/api/datasets/{repo}/parquet/{subset}/{split}"), vec![name]);
    }
    files.insert(
        "/words.txt".to_string(),
        (b"apple\r\nzebra\r\n".to_vec(), Behaviour::Ok),
    );
    let server = Hub::start(files, lists);
    let base = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_download_data"))
        .args(["--tasks", "--eval-only", "--hub-url", &server.url, "--attempts", "2"])
        .arg("--words-url")
        .arg(format!("{}/words.txt", server.url))
        .arg("--dir")
        .arg(base.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for (repo, subset, split) in splits {
        let dir = hub::dataset_dir(base.path(), repo, subset, split);
        assert!(complete_manifest(&dir).is_some(), "{repo} {subset} {split}");
    }
    // No training data was asked for.
    assert!(!base.path().join("task_data/HuggingFaceTB--smol-smoltalk").exists());
    assert!(server
        .requests("/api/datasets/openai/gsm8k/parquet/main/train")
        .is_empty());
    assert_eq!(
        std::fs::read_to_string(base.path().join("words_alpha.txt")).unwrap(),
        "apple\r\nzebra\r\n"
    );
    assert!(base.path().join("identity_conversations.jsonl").is_file());
    assert!(stdout.contains("task data done"), "{stdout}");
}
