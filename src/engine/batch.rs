//! Continuous batching: many sequences, each with its own prompt, length, sampling settings and seeded RNG,
//! share one forward per step. A sequence joins at the next step (its prompt is prefilled in that step, next
//! to the other rows' one-token decodes), and leaves when it ends, freeing its row for the next one. Since a
//! row's logits depend on its own tokens only and each sequence draws from its own RNG, every sequence gets the
//! tokens it would get alone (`Engine::generate` with one sample and the same seed).

use super::{sample_next_token, Engine, InferModel, RowState, Specials};
use crate::rng::Rng;

/// One sequence to generate.
#[derive(Clone, Debug)]
pub struct Job {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (at least 1).
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f64,
    /// None or 0: no top-k.
    pub top_k: Option<usize>,
    pub seed: u64,
}

/// One token of one sequence, from a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// The row the sequence runs in (its handle until it is done).
    pub row: usize,
    pub token: u32,
    /// 1 sampled, 0 forced by the calculator tool.
    pub mask: u8,
    /// The sequence ended with this token (`<|assistant_end|>`, `<|bos|>` or its last allowed token) and left
    /// the batch; its row is free.
    pub done: bool,
}

struct Seq {
    /// Tokens to run at the next step: the prompt, then the last token.
    feed: Vec<u32>,
    produced: usize,
    max_tokens: usize,
    temperature: f64,
    top_k: Option<usize>,
    rng: Rng,
    tool: RowState,
}

/// A running batch over one engine: a KV cache of `rows` rows of up to `t_max` positions, allocated once.
pub struct Batcher<'e, M: InferModel> {
    engine: &'e Engine<M>,
    cache: M::Cache,
    t_max: usize,
    slots: Vec<Option<Seq>>,
    sp: Specials,
}

impl<'e, M: InferModel> Batcher<'e, M> {
    pub fn new(engine: &'e Engine<M>, rows: usize, t_max: usize) -> Result<Batcher<'e, M>, String> {
        if rows == 0 || t_max == 0 {
            return Err(format!(
                "a batch needs at least one row and one position ({rows} x {t_max})"
            ));
        }
        Ok(Batcher {
            cache: engine.model.new_cache(rows, t_max)?,
            engine,
            t_max,
            slots: (0..rows).map(|_| None).collect(),
            sp: Specials::of(&engine.tokenizer)?,
        })
    }

    /// Rows of the cache.
    pub fn rows(&self) -> usize {
        self.slots.len()
    }

    /// Positions per row.
    pub fn t_max(&self) -> usize {
        self.t_max
    }

    /// Sequences in the batch.
    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Rows free for new sequences.
    pub fn free(&self) -> usize {
        self.rows() - self.active()
    }

    /// Checks a job without adding it: a clear message for what no row could run.
    pub fn check(&self, job: &Job) -> Result<(), String> {
        let v = self.engine.model.config().vocab_size;
        if job.prompt.is_empty() {
            return Err("the prompt is empty".into());
        }
        if job.max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        if job.prompt.len() + job.max_tokens > self.t_max {
            return Err(format!(
                "prompt of {} tokens plus {} new ones exceeds the {} positions of a row",
                job.prompt.len(),
                job.max_tokens,
                self.t_max
            ));
        }
        if let Some(&bad) = job.prompt.iter().find(|&&i| i as usize >= v) {
            return Err(format!("token id {bad} is outside the vocabulary of {v}"));
        }
        if job.temperature.is_nan() || job.temperature < 0.0 {
            return Err(format!("temperature must be >= 0, got {}", job.temperature));
        }
        Ok(())
    }

    /// Adds a sequence; it is prefilled at the next step. Returns its row, or an error when the job is invalid
    /// or no row is free.
    pub fn add(&mut self, job: Job) -> Result<usize, String> {
        self.check(&job)?;
        let row = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| format!("all {} rows are in use", self.rows()))?;
        self.engine.model.clear_row(&mut self.cache, row)?;
        self.slots[row] = Some(Seq {
            feed: job.prompt,
            produced: 0,
            max_tokens: job.max_tokens,
            temperature: job.temperature,
            top_k: job.top_k,
            rng: Rng::new(job.seed),
            tool: RowState::default(),
        });
        Ok(row)
    }

    /// Drops the sequence in `row` (its client went away); the row is free at once.
    pub fn cancel(&mut self, row: usize) {
        if let Some(s) = self.slots.get_mut(row) {
            *s = None;
        }
    }

    /// One forward over every sequence in the batch (the new ones' prompts, one token for the others), then one
    /// token per sequence. Empty when the batch is. On an error of the forward every sequence is dropped (the
    /// caller tells their clients).
    pub fn step(&mut self) -> Result<Vec<Emitted>, String> {
        let (mut rows, mut lens, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        for (r, s) in self.slots.iter().enumerate() {
            if let Some(s) = s {
                rows.push(r);
                lens.push(s.feed.len());
                ids.extend_from_slice(&s.feed);
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let logits = match self.engine.model.forward_rows(&mut self.cache, &rows, &lens, &ids) {
            Ok(l) => l,
            Err(e) => {
                self.slots.iter_mut().for_each(|s| *s = None);
                return Err(e);
            }
        };
        let v = logits.len() / rows.len();
        let mut out = Vec::with_capacity(rows.len());
        for (j, &r) in rows.iter().enumerate() {
            let slot = &mut self.slots[r];
            let Some(s) = slot.as_mut() else { continue };
            let drawn = sample_next_token(&logits[j * v..(j + 1) * v], &mut s.rng, s.temperature, s.top_k);
            let sampled = match drawn {
                Ok(t) => t,
                Err(e) => {
                    self.slots.iter_mut().for_each(|s| *s = None);
                    return Err(e);
                }
            };
            let (token, mask) = s.tool.next(sampled, &self.sp, &self.engine.tokenizer);
            s.produced += 1;
            let done = s.tool.completed || s.produced >= s.max_tokens;
            out.push(Emitted {
                row: r,
                token,
                mask,
                done,
            });
            if done {
                *slot = None;
            } else {
                s.feed.clear();
                s.feed.push(token);
            }
        }
        Ok(out)
    }
}

impl<M: InferModel> Engine<M> {
    /// Generates for several prompts at once, rows of different lengths in one batch of at most `max_rows`
    /// rows (jobs beyond join as rows free up). Job i's tokens are those of `generate_batch(&jobs[i].prompt)`
    /// with one sample and job i's settings and seed. Returns per job the prompt plus its tokens up to
    /// (excluding) the first `<|assistant_end|>` / `<|bos|>`, and masks (0 prompt, 1 sampled, 0 forced).
    pub fn generate_jobs(&self, jobs: &[Job], max_rows: usize) -> Result<super::Batch, String> {
        let t_max = jobs.iter().map(|j| j.prompt.len() + j.max_tokens).max().unwrap_or(1);
        let mut b = Batcher::new(self, max_rows.clamp(1, jobs.len().max(1)), t_max)?;
        for j in jobs {
            b.check(j)?;
        }
        let sp = b.sp;
        let mut seqs: Vec<Vec<u32>> = jobs.iter().map(|j| j.prompt.clone()).collect();
        let mut masks: Vec<Vec<u8>> = jobs.iter().map(|j| vec![0u8; j.prompt.len()]).collect();
        // Which job each row runs.
        let mut owner = vec![usize::MAX; b.rows()];
        let mut next = 0;
        loop {
            while next < jobs.len() && b.free() > 0 {
                let row = b.add(jobs[next].clone())?;
                owner[row] = next;
                next += 1;
            }
            if b.active() == 0 {
                break;
            }
            for e in b.step()? {
                let i = owner[e.row];
                if e.token != sp.assistant_end && e.token != sp.bos {
                    seqs[i].push(e.token);
                    masks[i].push(e.mask);
                }
            }
        }
        Ok((seqs, masks))
    }
}
