//! The optimizer groups in the form upstream's fixtures list them (`optimizer_param_groups` of a fixture's
//! config.json), and their comparison, so a parity run can check that the groups are upstream's.

use super::{GroupKind, MuonAdamW};
use serde::{Deserialize, Serialize};

/// One group as a fixture lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum GroupSummary {
    Adamw {
        betas: [f64; 2],
        eps: f64,
        weight_decay: f64,
        initial_lr: f64,
        params: Vec<String>,
    },
    Muon {
        ns_steps: usize,
        beta2: f64,
        initial_lr: f64,
        params: Vec<String>,
    },
}

impl GroupSummary {
    /// (kind, parameter names, named numbers) for field-by-field comparison.
    fn parts(&self) -> (&'static str, &[String], Vec<(&'static str, f64)>) {
        match self {
            GroupSummary::Adamw {
                betas,
                eps,
                weight_decay,
                initial_lr,
                params,
            } => (
                "adamw",
                params,
                vec![
                    ("initial_lr", *initial_lr),
                    ("beta1", betas[0]),
                    ("beta2", betas[1]),
                    ("eps", *eps),
                    ("weight_decay", *weight_decay),
                ],
            ),
            GroupSummary::Muon {
                ns_steps,
                beta2,
                initial_lr,
                params,
            } => (
                "muon",
                params,
                vec![
                    ("initial_lr", *initial_lr),
                    ("ns_steps", *ns_steps as f64),
                    ("beta2", *beta2),
                ],
            ),
        }
    }
}

impl MuonAdamW {
    /// The groups in the format of a fixture's `optimizer_param_groups`.
    pub fn group_summaries(&self) -> Vec<GroupSummary> {
        self.groups
            .iter()
            .map(|g| match g.kind {
                GroupKind::AdamW {
                    betas,
                    eps,
                    weight_decay,
                } => GroupSummary::Adamw {
                    betas,
                    eps,
                    weight_decay,
                    initial_lr: g.initial_lr,
                    params: g.params.clone(),
                },
                GroupKind::Muon { ns_steps, beta2, .. } => GroupSummary::Muon {
                    ns_steps,
                    beta2,
                    initial_lr: g.initial_lr,
                    params: g.params.clone(),
                },
            })
            .collect()
    }

    /// Compares our groups with `expected` (e.g. a fixture's): same order, kinds and parameter names, and the
    /// same numbers within a relative 1e-9 (upstream's lrs can differ from ours in the last bit). The error
    /// names the first group and field that differ.
    pub fn check_groups(&self, expected: &[GroupSummary]) -> Result<(), String> {
        let ours = self.group_summaries();
        if ours.len() != expected.len() {
            return Err(format!("{} optimizer groups, expected {}", ours.len(), expected.len()));
        }
        for (i, (o, e)) in ours.iter().zip(expected).enumerate() {
            let ((ko, po, no), (ke, pe, ne)) = (o.parts(), e.parts());
            if ko != ke {
                return Err(format!("optimizer group {i}: kind {ko}, expected {ke}"));
            }
            if po != pe {
                return Err(format!("optimizer group {i} ({ko}): params {po:?}, expected {pe:?}"));
            }
            for ((name, a), (_, b)) in no.iter().zip(&ne) {
                if (a - b).abs() > 1e-9 * a.abs().max(b.abs()) {
                    return Err(format!(
                        "optimizer group {i} ({ko}, {}): {name} {a}, expected {b}",
                        po.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}
