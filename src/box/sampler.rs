//! Which labelled anchors enter the RPN loss: torchvision's `BalancedPositiveNegativeSampler`,
//! seeded, and two alternatives (OHEM on the objectness loss; no sampling).
//!
//! ```text
//! torchvision BalancedPositiveNegativeSampler           sample_image (one image)
//! positive = where(matched_idxs >= 1)                   labels == 1
//! negative = where(matched_idxs == 0)                   labels == 0
//! num_pos = min(#pos, int(batch_size * fraction))       quotas(#pos, #neg).0
//! num_neg = min(#neg, batch_size - num_pos)             quotas(#pos, #neg).1
//! perm1 = randperm(#pos)[:num_pos]                      partial Fisher-Yates, crate::rng::Rng
//! perm2 = randperm(#neg)[:num_neg]                      random: the same; hard: the num_neg
//!                                                         negatives of highest objectness BCE
//! masks pos_idx, neg_idx                                labels [A]: 1 / 0 sampled, -1 not
//! ```
//!
//! torchvision draws from torch's global generator; tchcv draws from a [`Rng`] keyed by the
//! sampler's seed and the image, so the same seed gives the same sample on any device and thread
//! count (the subsets are uniform like torchvision's, not the same ones).
//!
//! `hard` (OHEM, Shrivastava et al. 2016, on the objectness loss): positives as `random`, the
//! negatives are the `num_neg` with the highest `BCE(objectness, 0)`, ties to the lowest anchor.
//! `all`: every positive and negative (no sampling).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use super::rpn::{IGNORE, NEGATIVE, POSITIVE};
use crate::bail_input;
use crate::rng::Rng;
use crate::spec::RpnSpec;

/// How the anchors of an image are sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// torchvision's balanced sampler: random positives (at most `fraction` of the batch) and
    /// random negatives filling the rest.
    #[default]
    Random,
    /// Positives as `random`; the negatives with the highest objectness loss (OHEM).
    Hard,
    /// Every positive and every negative.
    All,
}

impl SamplerKind {
    /// The name the CLI and JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Hard => "hard",
            Self::All => "all",
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(Self::Random),
            "hard" => Ok(Self::Hard),
            "all" => Ok(Self::All),
            _ => Err(crate::bad_input(format!(
                "sampler {s:?}: expected random, hard or all"
            ))),
        }
    }
}

/// Sampler settings; the JSON names are torchvision's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    /// Anchors per image (torchvision: 256).
    pub batch_size_per_image: i64,
    /// At most `floor(batch_size_per_image * positive_fraction)` positives (torchvision: 0.5).
    pub positive_fraction: f64,
    /// Seed of the random draws.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::from_rpn(&RpnSpec::default(), SamplerKind::Random, 0)
    }
}

impl SamplerConfig {
    /// The spec's `rpn` sample size and positive fraction with a kind and a seed.
    pub fn from_rpn(rpn: &RpnSpec, kind: SamplerKind, seed: u64) -> Self {
        Self {
            kind,
            batch_size_per_image: rpn.batch_size_per_image,
            positive_fraction: rpn.positive_fraction,
            seed,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size_per_image < 0 {
            bail_input!(
                "sampler: batch_size_per_image must be >= 0, got {}",
                self.batch_size_per_image
            );
        }
        if !(0.0..=1.0).contains(&self.positive_fraction) {
            bail_input!(
                "sampler: positive_fraction must be in [0, 1], got {}",
                self.positive_fraction
            );
        }
        Ok(())
    }

    /// How many positives and negatives an image with `num_pos` and `num_neg` of them gives:
    /// `p = min(num_pos, floor(batch * fraction))`, `n = min(num_neg, batch - p)` (every one
    /// for `all`).
    pub fn quotas(&self, num_pos: usize, num_neg: usize) -> (usize, usize) {
        if self.kind == SamplerKind::All {
            return (num_pos, num_neg);
        }
        let batch = self.batch_size_per_image.max(0) as usize;
        let pos_cap = (batch as f64 * self.positive_fraction) as usize;
        let p = num_pos.min(pos_cap);
        (p, num_neg.min(batch.saturating_sub(p)))
    }

    /// The random stream of image `image` of a batch drawn under `keys` (e.g. the step).
    pub fn rng(&self, keys: &[u64], image: u64) -> Rng {
        let mut all = keys.to_vec();
        all.push(image);
        Rng::keyed(self.seed, &all)
    }
}

/// Uniform random `k` of `items` (a partial Fisher-Yates shuffle), in the drawn order.
fn choose(items: &mut [usize], k: usize, rng: &mut Rng) {
    for i in 0..k.min(items.len()) {
        let j = i + rng.below((items.len() - i) as u64) as usize;
        items.swap(i, j);
    }
}

/// Sample one image. labels: `[A]` with 1 (positive), 0 (negative), -1 (ignored);
/// neg_loss: `[A]` the objectness loss of each anchor as a negative (`hard` only: required
/// there). Returns `[A]`: 1 sampled positive, 0 sampled negative, -1 not sampled or ignored.
pub fn sample_image(
    labels: &[i64],
    neg_loss: Option<&[f32]>,
    config: &SamplerConfig,
    rng: &mut Rng,
) -> Result<Vec<i64>> {
    config.validate()?;
    let mut pos = Vec::new();
    let mut neg = Vec::new();
    for (a, &l) in labels.iter().enumerate() {
        match l {
            POSITIVE => pos.push(a),
            NEGATIVE => neg.push(a),
            IGNORE => {}
            other => bail_input!("labels[{a}]: {other} is not 1, 0 or -1"),
        }
    }
    let (num_pos, num_neg) = config.quotas(pos.len(), neg.len());
    let mut out = vec![IGNORE; labels.len()];
    choose(&mut pos, num_pos, rng);
    match config.kind {
        SamplerKind::All => {}
        SamplerKind::Random => choose(&mut neg, num_neg, rng),
        SamplerKind::Hard => {
            let Some(loss) = neg_loss else {
                bail_input!("sampler \"hard\" needs the objectness of every anchor");
            };
            if loss.len() != labels.len() {
                bail_input!(
                    "objectness: {} values for {} anchors",
                    loss.len(),
                    labels.len()
                );
            }
            hardest_first(&mut neg, loss, num_neg);
        }
    }
    for &a in &pos[..num_pos] {
        out[a] = POSITIVE;
    }
    for &a in &neg[..num_neg] {
        out[a] = NEGATIVE;
    }
    Ok(out)
}

/// Move the `k` candidates with the highest `loss` (ties: lower index) to the front.
fn hardest_first(candidates: &mut [usize], loss: &[f32], k: usize) {
    if k == 0 {
        return;
    }
    let harder = |a: &usize, b: &usize| loss[*b].total_cmp(&loss[*a]).then(a.cmp(b));
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, harder);
    }
    candidates[..k].sort_unstable_by(harder);
}

/// `BCE(objectness, 0)` per anchor (`binary_cross_entropy_with_logits`, no reduction), on the
/// host as f32: objectness `[N, A]` float -> `N * A` values. NaN or inf is bad input.
pub fn negative_bce(objectness: &Tensor) -> Result<Vec<f32>> {
    if !crate::device::is_float(objectness.kind()) {
        bail_input!(
            "objectness: expected a float tensor, got {:?}",
            objectness.kind()
        );
    }
    let _no_grad = tch::no_grad_guard();
    let x = objectness.detach().to_kind(Kind::Float);
    if x.isfinite().logical_not().any().int64_value(&[]) != 0 {
        bail_input!("objectness: holds NaN or inf");
    }
    let bce = x.f_binary_cross_entropy_with_logits::<Tensor>(
        &x.zeros_like(),
        None,
        None,
        Reduction::None,
    )?;
    Ok(Vec::<f32>::try_from(
        bce.to_device(Device::Cpu).contiguous().view(-1),
    )?)
}

/// Sample a batch. labels: `[N, A]` i64 (1, 0, -1) on any device; objectness: `[N, A]` float
/// logits (required for `hard`, else unused). Image `i` draws from
/// `config.rng(keys, i)`. Returns `[N, A]` i64 on the labels' device: 1 sampled positive,
/// 0 sampled negative, -1 not sampled or ignored.
pub fn sample_batch(
    labels: &Tensor,
    objectness: Option<&Tensor>,
    config: &SamplerConfig,
    keys: &[u64],
) -> Result<Tensor> {
    let n = labels.size().first().copied().unwrap_or(0).max(0) as u64;
    let images: Vec<u64> = (0..n).collect();
    sample_batch_of(labels, objectness, config, keys, &images)
}

/// [`sample_batch`] with image `i` drawing from `config.rng(keys, image_keys[i])` (`[N]`
/// keys): e.g. its index in the global batch of a data-parallel run, so the ranks together
/// draw what one process with the whole batch would.
pub fn sample_batch_of(
    labels: &Tensor,
    objectness: Option<&Tensor>,
    config: &SamplerConfig,
    keys: &[u64],
    image_keys: &[u64],
) -> Result<Tensor> {
    let size = labels.size();
    if size.len() != 2 || labels.kind() != Kind::Int64 {
        bail_input!(
            "labels: expected [N, A] int64, got {:?} {size:?}",
            labels.kind()
        );
    }
    if image_keys.len() as i64 != size[0] {
        bail_input!(
            "image keys: {} for a batch of {} images",
            image_keys.len(),
            size[0]
        );
    }
    let losses = match (config.kind, objectness) {
        (SamplerKind::Hard, None) => {
            bail_input!("sampler \"hard\" needs the objectness logits [N, A]")
        }
        (SamplerKind::Hard, Some(o)) => {
            if o.size() != size {
                bail_input!(
                    "objectness: expected {size:?} like the labels, got {:?}",
                    o.size()
                );
            }
            Some(negative_bce(o)?)
        }
        _ => None,
    };
    let host = Vec::<i64>::try_from(labels.to_device(Device::Cpu).contiguous().view(-1))?;
    let a = size[1].max(1) as usize;
    let mut out = Vec::with_capacity(host.len());
    for (i, image) in host.chunks(a).enumerate() {
        let loss = losses.as_ref().map(|l| &l[i * a..(i + 1) * a]);
        let mut rng = config.rng(keys, image_keys[i]);
        out.extend(
            sample_image(image, loss, config, &mut rng)
                .map_err(|e| e.context(format!("image {i}")))?,
        );
    }
    Ok(Tensor::from_slice(&out)
        .view([size[0], size[1]])
        .to_device(labels.device()))
}
