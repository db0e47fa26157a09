//! The run's record: `metrics.jsonl` (one JSON object per line: train steps, evaluations) and `loss.svg`, a loss
//! curve any browser opens. Both live in the run directory and are rewritten atomically.

use crate::checkpoint::write_atomic;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Metrics {
    path: PathBuf,
    svg: PathBuf,
    records: Vec<Value>,
}

impl Metrics {
    /// Opens the log in `dir`, keeping only records of steps before `resume_step` (so a resumed run continues
    /// the same record instead of duplicating the steps it replays).
    pub fn open(dir: &Path, resume_step: Option<usize>) -> Result<Metrics, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("metrics.jsonl");
        let mut records = Vec::new();
        if let (Some(limit), Ok(text)) = (resume_step, std::fs::read_to_string(&path)) {
            for line in text.lines() {
                // A line cut by a crash is dropped.
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    if v.get("step")
                        .and_then(Value::as_u64)
                        .is_some_and(|s| (s as usize) < limit)
                    {
                        records.push(v);
                    }
                }
            }
        }
        let m = Metrics {
            path,
            svg: dir.join("loss.svg"),
            records,
        };
        m.rewrite()?;
        Ok(m)
    }

    fn rewrite(&self) -> Result<(), String> {
        let mut text = String::new();
        for r in &self.records {
            text.push_str(&r.to_string());
            text.push('\n');
        }
        write_atomic(&self.path, text.as_bytes())
    }

    /// Appends one record (flushed at once, so a crash loses at most the line being written).
    pub fn log(&mut self, record: Value) -> Result<(), String> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| format!("cannot append to {}: {e}", self.path.display()))?;
        writeln!(f, "{record}").map_err(|e| format!("cannot append to {}: {e}", self.path.display()))?;
        self.records.push(record);
        Ok(())
    }

    pub fn records(&self) -> &[Value] {
        &self.records
    }

    /// Draws train loss (smoothed) and validation bpb against the step.
    pub fn write_svg(&self) -> Result<(), String> {
        write_atomic(&self.svg, svg_of(&self.records).as_bytes())
    }
}

/// The loss chart of a run record: train loss (smoothed) and validation bpb against the step.
pub fn svg_of(records: &[Value]) -> String {
    let series = |kind: &str, key: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter(|r| r.get("kind").and_then(Value::as_str) == Some(kind))
            .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let train = series("train", "smooth_loss");
    let val = series("eval", "val_bpb");
    plot(&[("train loss (EMA)", "#1f77b4", &train), ("val bpb", "#d62728", &val)])
}

/// One line of a chart: name, colour, (x, y) points.
type Series<'a> = (&'a str, &'a str, &'a [(f64, f64)]);

/// A minimal line chart: shared x axis (step), each series scaled to the shared y range.
fn plot(series: &[Series]) -> String {
    let (w, h, pad) = (800.0, 480.0, 60.0);
    let pts: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.2.iter()).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &&(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0) * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"black\"/>\n",
        b = h - pad,
        r = w - pad
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let (xv, yv) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}</text>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.3}</text>\n",
            sx(xv),
            h - pad + 18.0,
            xv,
            pad - 6.0,
            sy(yv) + 4.0,
            yv
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">step</text>\n",
        w / 2.0,
        h - 12.0
    );
    for (k, (name, color, data)) in series.iter().enumerate() {
        if !data.is_empty() {
            let path: Vec<String> = data
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            svg += &format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                path.join(" ")
            );
        }
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{name}</text>\n",
            w - pad - 150.0,
            pad + 16.0 * k as f64
        );
    }
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_resume_truncates_and_svg_draws() {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = Metrics::open(tmp.path(), None).unwrap();
        for s in 0..5 {
            m.log(json!({"kind": "train", "step": s, "smooth_loss": 5.0 - s as f64}))
                .unwrap();
        }
        m.log(json!({"kind": "eval", "step": 4, "val_bpb": 2.0})).unwrap();
        m.write_svg().unwrap();
        let svg = std::fs::read_to_string(tmp.path().join("loss.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("val bpb"));
        // Resuming from step 3 keeps steps 0..2 (train) and nothing later.
        let m = Metrics::open(tmp.path(), Some(3)).unwrap();
        assert_eq!(m.records().len(), 3);
        let text = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 3);
    }
}
