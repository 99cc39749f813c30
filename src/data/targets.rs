//! The box coders as the loader's target encoders: [`BoxCoder`] (SSD, RetinaNet) and
//! [`crate::bbox::RpnCoder`] (the region proposal network).

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

    /// As [`TargetEncoder::encode`] with crowd regions (`crowd` `[K]` flags): not matched, and
    /// the background anchors inside one ignored: cls -1 ([`BoxCoder::encode_with_crowd`]).
    fn encode_with_crowd(
        &self,
        boxes: &[[f32; 4]],
        labels: &[i64],
        crowd: &[bool],
    ) -> Result<(Tensor, Tensor)> {
        let encoded = BoxCoder::encode_with_crowd(self, boxes, labels, crowd)?;
        Ok((encoded.loc_targets, encoded.cls_targets))
    }
}

/// The RPN's coder as the loader's target encoder: class-agnostic (every object is "object").
impl TargetEncoder for crate::bbox::RpnCoder {
    fn num_anchors(&self) -> i64 {
        crate::bbox::RpnCoder::num_anchors(self)
    }

    /// boxes: `[K, 4]` xyxy in model-input pixels; labels: unused (class-agnostic). Returns
    /// `(regression_targets [A, 4] f32, labels [A] i64)`, the labels before sampling: 1
    /// object, 0 background, -1 ignored (`RpnCoder::label`); degenerate boxes are dropped.
    fn encode(&self, boxes: &[[f32; 4]], _labels: &[i64]) -> Result<(Tensor, Tensor)> {
        let targets = self.label(boxes)?;
        Ok((targets.regression_targets_tensor(), targets.labels_tensor()))
    }

    /// As [`TargetEncoder::encode`] with crowd regions (`crowd` `[K]` flags): not matched, and
    /// the negative anchors inside one ignored: -1 ([`crate::bbox::RpnCoder::label_with_crowd`]).
    fn encode_with_crowd(
        &self,
        boxes: &[[f32; 4]],
        _labels: &[i64],
        crowd: &[bool],
    ) -> Result<(Tensor, Tensor)> {
        let targets = self.label_with_crowd(boxes, crowd)?;
        Ok((targets.regression_targets_tensor(), targets.labels_tensor()))
    }
}
