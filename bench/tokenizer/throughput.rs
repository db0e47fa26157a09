//! Tokenizer throughput without the reference libraries: `cargo bench --bench tokenizer`.
//!
//! Trains on the synthetic corpus of tests/fixtures/tokenizer (repeated to 20 MB), then measures the
//! split alone, encoding on one thread, and batch encoding on all threads. The side-by-side comparison
//! with tiktoken and rustbpe is `bench/tokenizer/run.sh bench`.

use std::time::Instant;

use nanochat::tokenizer::Tokenizer;

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer/train_docs.json");
    let unit: Vec<String> = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let unit_bytes: usize = unit.iter().map(|d| d.len() + 1).sum();
    let docs: Vec<String> = unit
        .iter()
        .cycle()
        .take(unit.len() * (20_000_000 / unit_bytes + 1))
        .cloned()
        .collect();
    let text = docs.join("\n");
    let mb = text.len() as f64 / 1e6;
    println!(
        "text: {mb:.1} MB in {} documents, {} threads",
        docs.len(),
        rayon::current_num_threads()
    );

    let t = Instant::now();
    let tok = Tokenizer::train(docs.iter().cloned(), 8192, 8192, &mut |_, _| {})?;
    println!(
        "train (asked 8192, the corpus allows {}): {:.2} s ({:.1} MB/s of text)",
        tok.vocab_size(),
        t.elapsed().as_secs_f64(),
        mb / t.elapsed().as_secs_f64()
    );

    let split = best_of(3, || tok.splitter().split(text.as_bytes()).count());
    let single = best_of(3, || tok.encode_ordinary(&text).len());
    let refs: Vec<&str> = docs.iter().map(|d| d.as_str()).collect();
    let batch = best_of(3, || tok.encode_ordinary_batch(&refs).len());
    println!("split only        {:8.1} MB/s", mb / split);
    println!("encode 1 thread   {:8.1} MB/s", mb / single);
    println!("encode batch      {:8.1} MB/s", mb / batch);
    Ok(())
}
