//! Detections compared with torchvision's: labels exact, boxes and scores within tolerances,
//! order kept except among near-equal scores.

use tch::{Device, Tensor};

/// One detection on the host.
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    pub boxes: [f32; 4],
    pub score: f32,
    pub label: i64,
}

impl Detection {
    /// boxes `[D, 4]`, scores `[D]`, labels `[D]` (any device) -> host detections.
    pub fn all(boxes: &Tensor, scores: &Tensor, labels: &Tensor) -> Vec<Detection> {
        let b = tchcv::bbox::ops::host_boxes(&boxes.to_device(Device::Cpu)).unwrap();
        let s = Vec::<f32>::try_from(scores.to_device(Device::Cpu).contiguous()).unwrap();
        let l = Vec::<i64>::try_from(labels.to_device(Device::Cpu).contiguous()).unwrap();
        (0..s.len())
            .map(|i| Detection {
                boxes: b[i],
                score: s[i],
                label: l[i],
            })
            .collect()
    }
}

/// How close two detections must be.
#[derive(Debug, Clone, Copy)]
pub struct DetectionTolerance {
    /// Box coordinates: `|a - b| <= box_rtol * |b| + box_atol` (pixels).
    pub box_rtol: f32,
    pub box_atol: f32,
    /// Scores: `|a - b| <= score_rtol * |b| + score_atol`.
    pub score_rtol: f32,
    pub score_atol: f32,
    /// Scores this close (relative) may come in either order (torchvision's sort is not
    /// stable, and a saturated softmax ties).
    pub tie_rtol: f32,
    /// Detections whose score is within `tail_rtol` of the last kept score may be another
    /// one of equal score at the per-image cap (0: none).
    pub tail_rtol: f32,
}

impl Default for DetectionTolerance {
    /// Boxes 1e-5 relative + 1e-4 px, scores 1e-5 + 1e-6, ties within 1e-5, no tail.
    fn default() -> Self {
        Self {
            box_rtol: 1e-5,
            box_atol: 1e-4,
            score_rtol: 1e-5,
            score_atol: 1e-6,
            tie_rtol: 1e-5,
            tail_rtol: 0.0,
        }
    }
}

/// The same detections (label exact, box and score within `tol`), in the same order except
/// among scores within `tol.tie_rtol` of each other; at the tail (scores within
/// `tol.tail_rtol` of the last), one side's detection may be missing from the other.
pub fn assert_same_detections(
    got: &[Detection],
    want: &[Detection],
    tol: &DetectionTolerance,
    ctx: &str,
) {
    assert_eq!(got.len(), want.len(), "{ctx}: detection count");
    let close = |a: f32, b: f32, rtol: f32, atol: f32| (a - b).abs() <= rtol * b.abs() + atol;
    let same = |g: &Detection, w: &Detection| {
        g.label == w.label
            && (0..4).all(|c| close(g.boxes[c], w.boxes[c], tol.box_rtol, tol.box_atol))
            && close(g.score, w.score, tol.score_rtol, tol.score_atol)
    };
    let last = want.last().map_or(0.0, |d| d.score);
    let mut used = vec![false; want.len()];
    for (i, g) in got.iter().enumerate() {
        let found = (0..want.len()).find(|&j| {
            !used[j]
                && same(g, &want[j])
                && (i == j || close(want[i].score, want[j].score, tol.tie_rtol, 0.0))
        });
        match found {
            Some(j) => used[j] = true,
            None if close(g.score, last, tol.tail_rtol, 0.0) => {}
            None => panic!(
                "{ctx}: detection {i} {g:?} is not torchvision's {:?}",
                want.get(i)
            ),
        }
    }
}
