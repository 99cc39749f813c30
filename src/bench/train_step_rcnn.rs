//! `tchcv bench train-step` for a two-stage spec (`head: "faster_rcnn"`): one Faster R-CNN
//! training step, tchcv against torchvision's `FasterRCNN` built around the same network
//! (`bench/train_step_reference.py`), on the same images and boxes.
//!
//! Both timed steps hold the whole of what torchvision's `model(images, targets)` does: the
//! anchors' labels (tchcv: `RpnCoder::label_batch`, which `tchcv train` runs in its data
//! workers, here inside the step), the RPN and its sampled loss, the proposals, the RoI
//! matching and sampling, RoIAlign, the box head and its loss, then backward and the SGD update.
//! The second stage is torchvision's (the random sampler, cross entropy), whatever the spec's
//! `roi_heads` cure.

use anyhow::Result;
use tch::{nn, Device, Kind, Tensor};

use super::median_ms;
use super::train_step::{compare_with_reference, random_batch, Timed, TrainStepBench};
use super::Comparison;
use crate::bbox::rcnn::BatchTruth;
use crate::bbox::rcnn::RoiSamplerKind;
use crate::bbox::RpnCoder;
use crate::device::{autocast, convert_variables, to_memory_format};
use crate::loss::{DetectionLoss, LossInputs, LossKind, RcnnLoss, RcnnLossInputs};
use crate::models::build;
use crate::models::faster_rcnn::FasterRcnn;
use crate::spec::ModelSpec;
use crate::train::optim::{trainable_params, Optimizer, OptimizerConfig};

/// Time tchcv's Faster R-CNN step (and torchvision's) on `device`.
pub fn run(b: &TrainStepBench, spec: &ModelSpec, device: Device) -> Result<Comparison> {
    let (pixels, objects) = random_batch(spec, b)?;
    let images = pixels.to_device(device);
    let boxes: Vec<Vec<[f32; 4]>> = objects.iter().map(|(b, _)| b.clone()).collect();
    let labels: Vec<Vec<i64>> = objects.iter().map(|(_, l)| l.clone()).collect();
    let crowd: Vec<Vec<bool>> = boxes.iter().map(|b| vec![false; b.len()]).collect();
    let truth = BatchTruth {
        boxes: &boxes,
        labels: &labels,
        crowd: &crowd,
    };
    let cudnn_before = crate::device::cudnn_benchmark();
    crate::device::set_cudnn_benchmark(b.cudnn_benchmark);
    let row = time_both(b, spec, device, &images, truth);
    crate::device::set_cudnn_benchmark(cudnn_before);
    row
}

/// The losses of both stages as torchvision's default Faster R-CNN trains them.
fn losses(spec: &ModelSpec) -> Result<(Box<dyn DetectionLoss + Send + Sync>, RcnnLoss)> {
    let rpn = spec.rpn_or_default();
    let first = LossKind::Rpn.build(serde_json::json!({
        "sampler": "random",
        "batch_size_per_image": rpn.batch_size_per_image,
        "positive_fraction": rpn.positive_fraction,
        "check_finite": false,
    }))?;
    let second = RcnnLoss::new(Default::default())?;
    Ok((first, second))
}

/// [`run`] once the batch is made.
fn time_both(
    b: &TrainStepBench,
    spec: &ModelSpec,
    device: Device,
    images: &Tensor,
    truth: BatchTruth,
) -> Result<Comparison> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let detector = build(vs.root(), spec, b.classes)?;
    let model: &FasterRcnn = detector
        .two_stage()
        .ok_or_else(|| anyhow::anyhow!("{}: not a two-stage detector", spec.name))?;
    convert_variables(&vs, b.memory_format())?;
    let images_in_format = to_memory_format(images, b.memory_format())?;
    let params = trainable_params(&vs);
    let parameters: i64 = params.iter().map(|p| p.tensor.numel() as i64).sum();
    let mut optimizer = Optimizer::new(OptimizerConfig::default(), params);
    let (rpn_loss, rcnn_loss) = losses(spec)?;
    let sampler = crate::bbox::rcnn::RoiSamplerConfig {
        kind: RoiSamplerKind::Random,
        ..spec.roi_heads_or_default().sampler
    };
    let coder = RpnCoder::from_spec(spec)?;
    crate::memory::reset_device_peak(device)?;
    let mut step = 0u64;
    let tchcv_ms = median_ms(b.warmup, b.repeat, || {
        let (cls_targets, loc_targets) = coder.label_batch(truth.boxes)?;
        let (loc_targets, cls_targets) =
            (loc_targets.to_device(device), cls_targets.to_device(device));
        let total = autocast(device, b.autocast, || {
            let out = model.forward_train(
                &images_in_format,
                truth,
                &sampler,
                &rcnn_loss,
                &[step],
                [0, 1],
            )?;
            let first = rpn_loss.forward(&LossInputs {
                loc_preds: &out.rpn_deltas,
                loc_targets: &loc_targets,
                cls_preds: &out.objectness,
                cls_targets: &cls_targets,
            })?;
            let second = rcnn_loss.forward(&RcnnLossInputs {
                class_logits: &out.class_logits,
                box_regression: &out.box_regression,
                labels: &out.labels,
                regression_targets: &out.regression_targets,
            })?;
            Ok(first.total + second.total)
        })?;
        optimizer.zero_grad();
        total.backward();
        optimizer.step(1e-4)?;
        crate::device::synchronize(device);
        step += 1;
        Ok(())
    })?;
    let named = case(images, truth);
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let timed = Timed {
        tchcv_ms,
        parameters,
    };
    compare_with_reference(b, spec, device, timed, &refs)
}

/// The reference's batch file: `images`, and per image `boxes_{i}` `[K_i, 4]`, `labels_{i}`
/// `[K_i]` (0-based).
fn case(images: &Tensor, truth: BatchTruth) -> Vec<(String, Tensor)> {
    let mut out = vec![("images".to_string(), images.shallow_clone())];
    for (i, (boxes, labels)) in truth.boxes.iter().zip(truth.labels).enumerate() {
        let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
        let boxes = Tensor::from_slice(&flat).view([-1, 4]).to_kind(Kind::Float);
        out.push((format!("boxes_{i}"), boxes));
        out.push((format!("labels_{i}"), Tensor::from_slice(labels)));
    }
    out
}
