//! The box coder as the loader's target encoder.

use anyhow::Result;
use tch::Tensor;

use super::loader::TargetEncoder;
use crate::bbox::BoxCoder;

impl TargetEncoder for BoxCoder {
    fn num_anchors(&self) -> i64 {
        BoxCoder::num_anchors(self)
    }

    /// boxes: `[K, 4]` xyxy in model-input pixels; labels: `[K]` 0-based. Returns
    /// `(loc_targets [A, 4] f32, cls_targets [A] i64)`; degenerate boxes are dropped.
    fn encode(&self, boxes: &[[f32; 4]], labels: &[i64]) -> Result<(Tensor, Tensor)> {
        let encoded = BoxCoder::encode(self, boxes, labels)?;
        Ok((encoded.loc_targets, encoded.cls_targets))
    }
}
