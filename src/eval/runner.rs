//! Running a detector over a dataset: batched forward, decode, boxes back to each image's
//! pixels, and the VOC evaluation of the result (torchcv `examples/ssd/eval.py`); or a region
//! proposal network's proposals and their recall ([`evaluate_proposals`]).

use anyhow::Result;
use tch::{Device, Tensor};

use super::detections::ImageDetections;
use super::ground_truth::ground_truth_of;
use super::recall::{proposal_recall, ImageProposals, RecallResult};
use super::voc::{evaluate, Detection, VocEvalConfig, VocEvalResult};
use crate::bbox::{ops, BoxCoder, DecodeConfig, RpnCoder};
use crate::data::image::RgbImage;
use crate::data::transforms::{test_transform, Objects, PixelNorm};
use crate::data::voc::pixel_to_voc_box;
use crate::data::{Batch, Loader};
use crate::models::Detector;

/// Class scores from logits: softmax over the classes (with the background column) or
/// sigmoid per class (focal loss heads). cls_preds: `[N, A, C]` -> `[N, A, C]`.
pub fn class_scores(cls_preds: &Tensor, background_column: bool) -> Tensor {
    if background_column {
        cls_preds.softmax(-1, tch::Kind::Float)
    } else {
        cls_preds.sigmoid()
    }
}

/// Detections of one batch, boxes in each image's own 0-based pixels (clipped to it).
pub fn detect_batch(
    model: &dyn Detector,
    coder: &BoxCoder,
    batch: &Batch,
    decode: &DecodeConfig,
    class_names: &[String],
    device: Device,
) -> Result<Vec<ImageDetections>> {
    let images = ImagesIn {
        pixels: &batch.images,
        ids: &batch.ids,
        sizes: &batch.original_sizes,
    };
    detect(model, coder, &images, decode, class_names, device)
}

/// Model inputs and where they came from.
pub struct ImagesIn<'a> {
    /// `[N, 3, H, W]` f32, the test transform of each image (resize + normalise).
    pub pixels: &'a Tensor,
    /// `[N]` image ids or paths.
    pub ids: &'a [String],
    /// `[N]` each image's `[width, height]` before the resize.
    pub sizes: &'a [[u32; 2]],
}

/// Forward, decode, and boxes back to each image's 0-based pixels (clipped to it). A two-stage
/// detector ([`Detector::two_stage`]) gives its own detections, with the spec's `roi_heads`
/// settings (of `decode`, only a higher score threshold applies).
pub fn detect(
    model: &dyn Detector,
    coder: &BoxCoder,
    images: &ImagesIn,
    decode: &DecodeConfig,
    class_names: &[String],
    device: Device,
) -> Result<Vec<ImageDetections>> {
    let _no_grad = tch::no_grad_guard();
    let pixels = images.pixels.to_device(device);
    let decoded = match model.two_stage() {
        // Faster R-CNN decodes in its second stage with the spec's `roi_heads` settings; a
        // higher `decode.score_threshold` (`tchcv detect --score`) applies too.
        Some(two_stage) => {
            let mut config = two_stage.postprocess_config();
            config.score_thresh = config.score_thresh.max(decode.score_threshold);
            two_stage.detect_with(&pixels, &config)?
        }
        None => {
            let (loc_preds, cls_preds) = model.forward_t(&pixels, false)?;
            let scores = class_scores(&cls_preds, decode.background_column);
            coder.decode(&loc_preds, &scores, decode)?
        }
    };
    let [in_w, in_h] = coder.input_size();
    let mut out = Vec::with_capacity(decoded.len());
    for ((dets, id), &[w, h]) in decoded.iter().zip(images.ids).zip(images.sizes) {
        // The test transform is a plain resize: scale x and y back separately, then clip.
        let (sx, sy) = (w as f32 / in_w as f32, h as f32 / in_h as f32);
        let on = |v: [f32; 4]| Tensor::from_slice(&v).to_device(dets.boxes.device());
        let boxes = (&dets.boxes * on([sx, sy, sx, sy]))
            .clamp_min(0.0)
            .minimum(&on([w as f32, h as f32, w as f32, h as f32]));
        out.push(ImageDetections::from_tensors(
            id,
            (w, h),
            &boxes,
            &dets.scores,
            &dets.labels,
            class_names,
        )?);
    }
    Ok(out)
}

/// Detect on one decoded image of any size (what `tchcv detect` runs per file).
pub fn detect_image(
    model: &dyn Detector,
    coder: &BoxCoder,
    image: &RgbImage,
    name: &str,
    decode: &DecodeConfig,
    class_names: &[String],
    device: Device,
) -> Result<ImageDetections> {
    let [w, h] = coder.input_size();
    let t = test_transform(
        image,
        Objects::default(),
        (w as u32, h as u32),
        &PixelNorm::default(),
    )?;
    let pixels = Tensor::from_slice(&t.pixels).view([1, 3, h, w]);
    let images = ImagesIn {
        pixels: &pixels,
        ids: &[name.to_string()],
        sizes: &[[image.width(), image.height()]],
    };
    let mut found = detect(model, coder, &images, decode, class_names, device)?;
    found
        .pop()
        .ok_or_else(|| anyhow::anyhow!("{name}: the decoder returned no result"))
}

/// Run `model` over every batch of `loader` (an evaluation loader: no augmentation, fixed
/// order). Boxes are in each image's 0-based pixels (upright: EXIF orientation applied). An
/// unreadable image is an error naming it.
pub fn detect_dataset(
    model: &dyn Detector,
    coder: &BoxCoder,
    loader: &Loader,
    decode: &DecodeConfig,
    device: Device,
) -> Result<Vec<ImageDetections>> {
    let class_names = loader.dataset().classes.names().to_vec();
    let mut images = Vec::with_capacity(loader.dataset().len());
    for batch in loader.epoch(0) {
        images.extend(detect_batch(
            model,
            coder,
            &batch?,
            decode,
            &class_names,
            device,
        )?);
    }
    refuse_skipped_images(loader)?;
    Ok(images)
}

/// An evaluation must see every image: a skipped one would still count its ground truth, and
/// the score would silently drop.
fn refuse_skipped_images(loader: &Loader) -> Result<()> {
    if let Some(problem) = loader.stats().problems().first() {
        crate::bail_input!(
            "{} image(s) of the evaluation set could not be read, e.g. {problem}",
            loader.stats().skipped()
        );
    }
    Ok(())
}

/// Run a region proposal network (`loc_preds` deltas `[N, A, 4]`, `cls_preds` objectness
/// `[N, A, 1]`) over every batch of `loader` (an evaluation loader: test transform, fixed
/// order, difficult objects flagged), take its proposals with the spec's test settings
/// ([`RpnCoder::propose`], `post_nms_top_n.test` per image, best first) and score them by
/// proposal recall ([`proposal_recall`]) against the objects neither difficult nor crowd, all in model-input
/// pixels. An unreadable image is an error naming it.
pub fn evaluate_proposals(
    model: &dyn Detector,
    rpn: &RpnCoder,
    loader: &Loader,
    device: Device,
) -> Result<RecallResult> {
    let _no_grad = tch::no_grad_guard();
    let config = rpn.proposal_config(false);
    let mut proposals: Vec<Vec<[f32; 4]>> = Vec::with_capacity(loader.dataset().len());
    let mut objects: Vec<Vec<[f32; 4]>> = Vec::with_capacity(loader.dataset().len());
    for batch in loader.epoch(0) {
        let batch = batch?;
        let (deltas, scores) = model.forward_t(&batch.images.to_device(device), false)?;
        let objectness = scores.f_squeeze_dim(2)?;
        for p in rpn.propose(&deltas, &objectness, &config)? {
            proposals.push(ops::host_boxes(&p.boxes)?);
        }
        for (i, boxes) in batch.boxes.iter().enumerate() {
            let skip = |k: usize, flags: &[Vec<bool>]| flags[i].get(k).copied().unwrap_or(false);
            let kept =
                (0..boxes.len()).filter(|&k| !skip(k, &batch.difficult) && !skip(k, &batch.crowd));
            objects.push(kept.map(|k| boxes[k]).collect());
        }
    }
    refuse_skipped_images(loader)?;
    let images: Vec<ImageProposals> = proposals
        .iter()
        .zip(&objects)
        .map(|(p, o)| ImageProposals {
            proposals: p,
            objects: o,
        })
        .collect();
    proposal_recall(&images)
}

/// The detections as devkit [`Detection`]s in VOC's 1-based box convention, the frame of the
/// ground truth (`[x1 + 1, y1 + 1, x2, y2]` of the 0-based boxes).
pub fn voc_detections(images: &[ImageDetections]) -> Vec<Detection> {
    images
        .iter()
        .flat_map(|img| {
            img.voc_detections(&img.image)
                .into_iter()
                .map(|d| Detection {
                    bbox: pixel_to_voc_box(d.bbox),
                    ..d
                })
        })
        .collect()
}

/// [`detect_dataset`], then the VOC evaluation against the loader's dataset. Returns the
/// evaluation and the detections.
pub fn evaluate_detector(
    model: &dyn Detector,
    coder: &BoxCoder,
    loader: &Loader,
    decode: &DecodeConfig,
    voc: &VocEvalConfig,
    device: Device,
) -> Result<(VocEvalResult, Vec<ImageDetections>)> {
    let images = detect_dataset(model, coder, loader, decode, device)?;
    let dataset = loader.dataset();
    let class_names = dataset.classes.names();
    let result = evaluate(
        class_names,
        &ground_truth_of(dataset, true),
        &voc_detections(&images),
        voc,
    )?;
    Ok((result, images))
}
