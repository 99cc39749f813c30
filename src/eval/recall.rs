//! Proposal recall: how many ground-truth objects a region proposal network's proposals find,
//! as COCO's average recall (AR) for proposals.
//!
//! For an IoU threshold `t` and a budget of `L` proposals per image, each image's proposals are
//! taken best first (at most `L`) and matched as pycocotools' `COCOeval.evaluateImg` matches
//! detections (one category, every area): each proposal in turn takes, among the objects not
//! taken yet, the one of highest IoU `>= t` (ties: the later object, as COCOeval's `<` test
//! lets an equal IoU replace the best so far); an object is found when some proposal takes it.
//! Since the matching is greedy in proposal order, the first `L` proposals of a budget of 1000
//! match exactly what a budget of `L` would.
//!
//! - `recall(t, L)` = objects found / objects, pooled over the images (COCO pools a category's
//!   objects over the images);
//! - `AR@L` = the mean of `recall(t, L)` over `t` in 0.50:0.05:0.95 ([`IOU_THRESHOLDS`]);
//! - reported: AR@100, AR@300, AR@1000 and `recall(0.5, 1000)`, `recall(0.7, 1000)`.
//!
//! Difficult objects are left out of the ground truth. (In COCOeval they would be ignored
//! objects; a proposal takes an ignored object only when no regular one is left for it, so
//! leaving them out finds the same regular objects.) IoU is xyxy without +1
//! ([`crate::bbox::ops::iou`], torchvision's `box_iou`); boxes and proposals must be in the same
//! pixels (IoU does not change under the test transform's per-axis resize).
//!
//! Pure host code over slices; [`crate::eval::runner::evaluate_proposals`] runs a network.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bail_input;
use crate::bbox::ops;

/// COCO's IoU thresholds, `np.linspace(.5, .95, 10)`.
pub const IOU_THRESHOLDS: [f64; 10] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];

/// The proposal budgets of AR@100, AR@300, AR@1000.
pub const PROPOSAL_LIMITS: [usize; 3] = [100, 300, 1000];

/// What `metric` says in a [`RecallResult`]'s JSON (so an `eval.json` tells its kind).
pub const METRIC_NAME: &str = "proposal_recall";

/// One image: its proposals best first and its (non-difficult) objects, xyxy, same pixels.
#[derive(Debug, Clone, Copy)]
pub struct ImageProposals<'a> {
    pub proposals: &'a [[f32; 4]],
    pub objects: &'a [[f32; 4]],
}

/// The objects found, `[limit][threshold]`: for each budget in `limits` (ascending) and each
/// IoU threshold, how many of the image's objects the first `limit` proposals take (COCO's
/// matching, see the module docs).
pub fn objects_found(
    image: &ImageProposals,
    limits: &[usize],
    thresholds: &[f64],
) -> Vec<Vec<usize>> {
    let budget = limits.iter().copied().max().unwrap_or(0);
    let proposals = &image.proposals[..image.proposals.len().min(budget)];
    let g = image.objects.len();
    // iou[p * g + j]: proposal p against object j.
    let iou: Vec<f32> = proposals
        .iter()
        .flat_map(|p| image.objects.iter().map(move |o| ops::iou(p, o)))
        .collect();
    let mut found = vec![vec![0; thresholds.len()]; limits.len()];
    for (ti, &t) in thresholds.iter().enumerate() {
        let t = t.min(1.0 - 1e-10);
        // taken_at[j]: the index of the proposal that took object j.
        let mut taken_at: Vec<Option<usize>> = vec![None; g];
        for p in 0..proposals.len() {
            let mut best: Option<(usize, f64)> = None;
            for (j, taken) in taken_at.iter().enumerate() {
                let v = f64::from(iou[p * g + j]);
                if taken.is_none() && v >= best.map_or(t, |(_, b)| b) {
                    best = Some((j, v));
                }
            }
            if let Some((j, _)) = best {
                taken_at[j] = Some(p);
            }
        }
        for (li, &limit) in limits.iter().enumerate() {
            found[li][ti] = taken_at.iter().flatten().filter(|&&p| p < limit).count();
        }
    }
    found
}

/// Recall at one budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitRecall {
    /// Proposals per image.
    pub limit: usize,
    /// Per IoU threshold ([`IOU_THRESHOLDS`]): objects found / objects.
    pub recall: Vec<f64>,
    /// The mean over the thresholds: AR@limit.
    pub average_recall: f64,
}

/// Proposal recall over a set of images (the JSON of `eval.json` for an RPN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecallResult {
    /// [`METRIC_NAME`].
    pub metric: String,
    pub images: usize,
    /// Objects counted (difficult ones left out).
    pub objects: usize,
    /// Proposals per image on average (a network may give fewer than the budget).
    pub mean_proposals: f64,
    pub iou_thresholds: Vec<f64>,
    /// Per budget ([`PROPOSAL_LIMITS`]).
    pub per_limit: Vec<LimitRecall>,
    pub ar_100: f64,
    pub ar_300: f64,
    pub ar_1000: f64,
    /// Recall at IoU 0.5 with 1000 proposals.
    pub recall_50: f64,
    /// Recall at IoU 0.7 with 1000 proposals.
    pub recall_70: f64,
}

/// Non-finite coordinates are bad input, naming the image and the box.
fn check_finite(images: &[ImageProposals]) -> Result<()> {
    for (i, image) in images.iter().enumerate() {
        for (what, boxes) in [("proposal", image.proposals), ("object", image.objects)] {
            if let Some(k) = boxes.iter().position(|b| !b.iter().all(|x| x.is_finite())) {
                bail_input!(
                    "image {i}: {what} {k} has a non-finite coordinate: {:?}",
                    boxes[k]
                );
            }
        }
    }
    Ok(())
}

/// AR@100, AR@300, AR@1000 and the recall at IoU 0.5 and 0.7 with 1000 proposals over
/// `images`. Bad input when no image has an object (recall is then undefined) or a box is not
/// finite.
pub fn proposal_recall(images: &[ImageProposals]) -> Result<RecallResult> {
    check_finite(images)?;
    let objects: usize = images.iter().map(|im| im.objects.len()).sum();
    if objects == 0 {
        bail_input!(
            "proposal recall: the {} images have no (non-difficult) objects, so recall is undefined",
            images.len()
        );
    }
    let mut found = vec![vec![0usize; IOU_THRESHOLDS.len()]; PROPOSAL_LIMITS.len()];
    for image in images {
        let counts = objects_found(image, &PROPOSAL_LIMITS, &IOU_THRESHOLDS);
        for (total, image_counts) in found.iter_mut().zip(counts) {
            for (t, c) in total.iter_mut().zip(image_counts) {
                *t += c;
            }
        }
    }
    let per_limit: Vec<LimitRecall> = PROPOSAL_LIMITS
        .iter()
        .zip(&found)
        .map(|(&limit, counts)| {
            let recall: Vec<f64> = counts.iter().map(|&c| c as f64 / objects as f64).collect();
            let average_recall = recall.iter().sum::<f64>() / recall.len() as f64;
            LimitRecall {
                limit,
                recall,
                average_recall,
            }
        })
        .collect();
    let proposals: usize = images.iter().map(|im| im.proposals.len()).sum();
    let at_1000 = &per_limit[2].recall;
    Ok(RecallResult {
        metric: METRIC_NAME.to_string(),
        images: images.len(),
        objects,
        mean_proposals: proposals as f64 / images.len().max(1) as f64,
        iou_thresholds: IOU_THRESHOLDS.to_vec(),
        ar_100: per_limit[0].average_recall,
        ar_300: per_limit[1].average_recall,
        ar_1000: per_limit[2].average_recall,
        recall_50: at_1000[0],
        recall_70: at_1000[4],
        per_limit,
    })
}

impl RecallResult {
    /// One line for logs: `AR@100 0.512 | AR@300 ... | R@0.5 0.97 | R@0.7 0.81 (1000 proposals)`.
    pub fn line(&self) -> String {
        format!(
            "AR@100 {:.4} | AR@300 {:.4} | AR@1000 {:.4} | recall@0.5 {:.4} | recall@0.7 {:.4} \
             (1000 proposals; {} objects in {} images, {:.0} proposals per image)",
            self.ar_100,
            self.ar_300,
            self.ar_1000,
            self.recall_50,
            self.recall_70,
            self.objects,
            self.images,
            self.mean_proposals
        )
    }

    /// A table: recall per IoU threshold for each budget, and AR.
    pub fn table(&self) -> String {
        let mut out = format!("{:>8}", "IoU");
        for l in &self.per_limit {
            out.push_str(&format!(" {:>9}", format!("@{}", l.limit)));
        }
        out.push('\n');
        for (ti, t) in self.iou_thresholds.iter().enumerate() {
            out.push_str(&format!("{t:>8.2}"));
            for l in &self.per_limit {
                out.push_str(&format!(" {:>9.4}", l.recall[ti]));
            }
            out.push('\n');
        }
        out.push_str(&format!("{:>8}", "AR"));
        for l in &self.per_limit {
            out.push_str(&format!(" {:>9.4}", l.average_recall));
        }
        out.push('\n');
        out
    }

    /// Write as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        crate::io::write_bytes_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Whether the JSON `value` (an `eval.json`) is a proposal recall.
    pub fn is_recall_json(value: &serde_json::Value) -> bool {
        value.get("metric").and_then(|m| m.as_str()) == Some(METRIC_NAME)
    }
}

/// Whether the JSON file at `path` (an `eval.json`) holds a proposal recall (false when it
/// cannot be read or parsed: the caller's own reading reports that).
pub fn is_recall_file(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|v| RecallResult::is_recall_json(&v))
}
