//! Faster R-CNN's training step: torchvision `GeneralizedRCNN.forward` in training mode, whose
//! `losses` are the RPN's (`loss_objectness`, `loss_rpn_box_reg`) and the box head's
//! (`loss_classifier`, `loss_box_reg`), summed.
//!
//! The first stage's loss is the run's [`DetectionLoss`] (the RPN loss with its sampler, fed
//! as for an RPN alone); the second stage's is [`RcnnLoss`] on the RoIs the spec's
//! `roi_heads.sampler` picks (`random`, `all` or `ohem`). Each stage is normalised by its own
//! global count, as a single process with the whole batch would: the sampled anchors, and the
//! sampled RoIs (cross entropy) or the foreground RoIs (focal).

use anyhow::Result;
use tch::Tensor;

use super::TrainConfig;
use crate::bbox::rcnn::BatchTruth;
use crate::bbox::rcnn::RoiSamplerConfig;
use crate::data::Batch;
use crate::dist::{global_normalizer_by, GlobalNormalizer, ProcessGroup};
use crate::loss::{DetectionLoss, LossInputs, LossSums, RcnnLoss, RcnnLossInputs};
use crate::models::faster_rcnn::FasterRcnn;
use crate::spec::ModelSpec;

/// The first key of the RoI sampler's draws ("RoI"), so they are not the RPN sampler's, which
/// draw under the same seed, step and image.
const ROI_STREAM: u64 = 0x52_6f_49;

/// The second stage of a two-stage run: its sampler and loss, and this process's place.
#[derive(Debug)]
pub(super) struct SecondStage {
    sampler: RoiSamplerConfig,
    loss: RcnnLoss,
    /// `[rank, world_size]`.
    shard: [u64; 2],
}

/// One step's targets on the device, for both stages.
pub(super) struct StepTargets<'a> {
    pub images: &'a Tensor,
    /// `[N, A, 4]`: the RPN's regression targets.
    pub loc_targets: &'a Tensor,
    /// `[N, A]`: the RPN's anchor labels (1, 0, -1).
    pub cls_targets: &'a Tensor,
    pub batch: &'a Batch,
}

impl SecondStage {
    /// The spec's second stage with the run's flags ([`TrainConfig::second_stage`]); None for
    /// a one-stage spec.
    pub fn new(
        config: &TrainConfig,
        spec: &ModelSpec,
        rank: usize,
        world: usize,
    ) -> Result<Option<Self>> {
        let Some((sampler, loss)) = config.second_stage(spec)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            sampler,
            loss: RcnnLoss::new(loss)?,
            shard: [rank as u64, world as u64],
        }))
    }

    /// Both stages' un-normalised parts for one batch: the first stage's by `rpn_loss`, the
    /// second's by [`RcnnLoss`]. `step` keys the RoI sampler's draws (the run's loss calls, so a
    /// resumed run draws what an unbroken one would).
    pub fn sums(
        &self,
        model: &FasterRcnn,
        rpn_loss: &dyn DetectionLoss,
        t: &StepTargets,
        step: u64,
    ) -> Result<(LossSums, LossSums)> {
        let truth = BatchTruth {
            boxes: &t.batch.boxes,
            labels: &t.batch.labels,
            crowd: &t.batch.crowd,
        };
        let out = model.forward_train(
            t.images,
            truth,
            &self.sampler,
            &self.loss,
            &[ROI_STREAM, step],
            self.shard,
        )?;
        let first = rpn_loss.sums(&LossInputs {
            loc_preds: &out.rpn_deltas,
            loc_targets: t.loc_targets,
            cls_preds: &out.objectness,
            cls_targets: t.cls_targets,
        })?;
        let second = self.loss.sums(&RcnnLossInputs {
            class_logits: &out.class_logits,
            box_regression: &out.box_regression,
            labels: &out.labels,
            regression_targets: &out.regression_targets,
        })?;
        Ok((first, second))
    }

    /// The second stage's normaliser over the global batch.
    pub fn normalizer(
        &self,
        group: Option<&ProcessGroup>,
        sums: &LossSums,
    ) -> Result<GlobalNormalizer> {
        let (normalization, by) = self.loss.normalization();
        global_normalizer_by(group, sums, normalization, by)
    }
}
