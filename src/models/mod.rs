//! Detectors built from a model spec (`models/*.json`): torchcv's `models/` on `tch`.
//!
//! | torchcv | here |
//! |---|---|
//! | `models/ssd/net.py` `VGG16`, `VGG16Extractor300/512` | [`vgg::Vgg16`], [`ssd::SsdVgg`] |
//! | `models/ssd/net.py` `SSD300`, `SSD512` heads | [`ssd::SsdHead`] |
//! | (none: a CPU-sized SSD for the demo) | [`small::SmallSsd`] |
//! | `models/retinanet/fpn.py` `Bottleneck`, `FPN` | [`resnet::ResNet`], [`retina::Fpn`] |
//! | `models/retinanet/net.py` `RetinaNet` | [`retina::RetinaNet`] |
//! | torchvision `ops/poolers.py` `MultiScaleRoIAlign`, `ops.roi_align` | [`roi_align`] |
//! | torchvision `roi_heads.py` `TwoMLPHead`, `FastRCNNPredictor`, `postprocess_detections` | [`roi_heads`] |
//! | torchvision `faster_rcnn.py` `FasterRCNN` (RPN + `RoIHeads`' box branch) | [`faster_rcnn::FasterRcnn`] |
//! | torchvision `rpn.py` `RPNHead`, `ops/feature_pyramid_network.py` (Faster R-CNN's RPN) | [`rpn::RpnSmall`], [`rpn::RpnResNetFpn`], [`retina::TorchvisionFpn`] |
//!
//! [`build`] reads the spec's `backbone`, `head` and `network` options, creates the variables
//! under the given `nn::Path` with torchcv's `state_dict` names, and checks with a zero-input
//! forward that every feature map has the size the spec's anchors expect. Every detector
//! returns `loc_preds [N, A, 4]` and `cls_preds [N, A, C]`, flattened per map as
//! `permute(0, 2, 3, 1).reshape(N, -1, 4)` and concatenated in the anchor order of
//! [`crate::bbox`] (map, row, column, anchor in cell). A region proposal network (`head: "rpn"`)
//! returns its deltas as `loc_preds` and its objectness logits as `cls_preds [N, A, 1]`.
//!
//! Models know nothing of data, losses or files other than weights.

pub mod faster_rcnn;
pub mod layers;
pub mod resnet;
pub mod retina;
pub mod roi_align;
pub mod roi_heads;
pub mod rpn;
pub mod small;
pub mod ssd;
pub mod vgg;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use tch::{nn, Tensor};

use crate::spec::ModelSpec;

/// A detector: images in, per-anchor box deltas and class scores out.
pub trait Detector: Send + std::fmt::Debug {
    /// images: `[N, 3, H, W]` f32 with `(W, H)` the spec's `input_size`.
    ///
    /// Returns `loc_preds [N, A, 4]` f32 and `cls_preds [N, A, C]` f32 logits, `A` the spec's
    /// `num_anchors()` and `C` the foreground classes plus a background column 0 when the spec's
    /// loss has one ([`class_columns`]; an RPN: its deltas and `[N, A, 1]` objectness). With
    /// `train`, batch norms use (and update) batch statistics.
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<(Tensor, Tensor)>;

    /// A two-stage detector ([`faster_rcnn::FasterRcnn`]), whose `forward_t` gives its first
    /// stage's (RPN) outputs and whose detections come from its second stage.
    fn two_stage(&self) -> Option<&faster_rcnn::FasterRcnn> {
        None
    }
}

/// One feature map's raw head outputs, NCHW.
#[derive(Debug)]
pub struct MapOutput {
    /// The layer the map comes from (`conv4_3`, `P3`), for messages.
    pub name: String,
    /// `[N, k * 4, h, w]` f32, `k` anchors per cell.
    pub loc: Tensor,
    /// `[N, k * C, h, w]` f32.
    pub cls: Tensor,
}

/// A network whose heads give one [`MapOutput`] per feature map, in anchor order.
pub trait MultiBoxNet: Send + std::fmt::Debug {
    /// images: `[N, 3, H, W]` f32 (already checked) -> one output per feature map.
    fn heads_t(&self, images: &Tensor, train: bool) -> Result<Vec<MapOutput>>;

    /// A parameter of the network: its device and kind are the network's.
    fn probe(&self) -> &Tensor;

    /// The feature maps `[N, c_l, h_l, w_l]` the heads run on, with [`Self::heads_t`]'s
    /// outputs (what Faster R-CNN's RoI heads pool from). Only region proposal networks give
    /// them.
    fn features_heads_t(
        &self,
        _images: &Tensor,
        _train: bool,
    ) -> Result<(Vec<Tensor>, Vec<MapOutput>)> {
        crate::bail_input!("only a region proposal network gives its feature maps")
    }

    /// The channels of each map [`Self::features_heads_t`] gives (None: it gives none).
    fn feature_channels(&self) -> Option<Vec<i64>> {
        None
    }
}

/// A [`MultiBoxNet`] with the spec's input size and class columns: the [`Detector`] that
/// [`build`] returns.
#[derive(Debug)]
pub struct SpecDetector {
    net: Box<dyn MultiBoxNet>,
    /// `[h, w]`.
    input_hw: [i64; 2],
    /// `C`: classes plus the background column when there is one.
    columns: i64,
    origin: String,
}

impl SpecDetector {
    /// The class columns `C` of `cls_preds`.
    pub fn columns(&self) -> i64 {
        self.columns
    }

    /// The raw per-map outputs (NCHW), before flattening.
    pub fn maps_t(&self, images: &Tensor, train: bool) -> Result<Vec<MapOutput>> {
        self.check_images(images)?;
        self.net.heads_t(images, train)
    }

    /// The feature maps and the raw per-map outputs ([`MultiBoxNet::features_heads_t`]).
    pub fn features_maps_t(
        &self,
        images: &Tensor,
        train: bool,
    ) -> Result<(Vec<Tensor>, Vec<MapOutput>)> {
        self.check_images(images)?;
        self.net.features_heads_t(images, train)
    }

    /// The channels of each feature map ([`MultiBoxNet::feature_channels`]).
    pub fn feature_channels(&self) -> Option<Vec<i64>> {
        self.net.feature_channels()
    }

    fn check_images(&self, images: &Tensor) -> Result<()> {
        let [h, w] = self.input_hw;
        let size = images.size();
        if size.len() != 4 || size[0] < 1 || size[1] != 3 || size[2] != h || size[3] != w {
            crate::bail_input!(
                "images: expected [N, 3, {h}, {w}] with N >= 1 ({} takes {w}x{h} inputs), got {size:?}",
                self.origin
            );
        }
        let probe = self.net.probe();
        if images.kind() != probe.kind() {
            crate::bail_input!(
                "images: expected {:?} like the model's weights, got {:?}",
                probe.kind(),
                images.kind()
            );
        }
        if images.device() != probe.device() {
            crate::bail_input!(
                "images: on {:?}, but the model is on {:?}",
                images.device(),
                probe.device()
            );
        }
        Ok(())
    }
}

impl Detector for SpecDetector {
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let maps = self.maps_t(images, train)?;
        flatten_maps(&maps, self.columns)
    }
}

/// torchcv's flattening: each map `permute(0, 2, 3, 1).reshape(N, -1, 4 | C)`, concatenated
/// along the anchors. Returns `[N, A, 4]`, `[N, A, C]`.
pub fn flatten_maps(maps: &[MapOutput], columns: i64) -> Result<(Tensor, Tensor)> {
    let mut locs = Vec::with_capacity(maps.len());
    let mut clss = Vec::with_capacity(maps.len());
    for m in maps {
        let n = m.loc.size()[0];
        locs.push(m.loc.f_permute([0, 2, 3, 1])?.f_reshape([n, -1, 4])?);
        clss.push(m.cls.f_permute([0, 2, 3, 1])?.f_reshape([n, -1, columns])?);
    }
    Ok((Tensor::f_cat(&locs, 1)?, Tensor::f_cat(&clss, 1)?))
}

/// Build the detector a spec describes, its variables under `path` (use the VarStore's root so
/// names read like torchcv's `state_dict`: `extractor.conv5_1.weight`, `loc_layers.0.bias`).
///
/// `num_classes` counts the foreground classes; a background column is added when
/// `spec.has_background_column()`; an RPN (`head: "rpn"`) has one column, its objectness,
/// whatever `num_classes`. Runs one zero image through the network (no gradient,
/// batch statistics untouched) and fails when a feature map's size differs from the spec's
/// `anchors.feature_maps`, naming the map.
pub fn build<'a>(
    path: impl Borrow<nn::Path<'a>>,
    spec: &ModelSpec,
    num_classes: i64,
) -> Result<Box<dyn Detector>> {
    let origin = format!("model spec {:?}", spec.name);
    build_any(path.borrow(), spec, num_classes, &origin)
}

/// A one-stage [`SpecDetector`], or for `head: "faster_rcnn"` a [`faster_rcnn::FasterRcnn`]
/// around one.
fn build_any(
    path: &nn::Path,
    spec: &ModelSpec,
    num_classes: i64,
    origin: &str,
) -> Result<Box<dyn Detector>> {
    let first = build_spec_detector(path, spec, num_classes, origin)?;
    if spec.is_two_stage() {
        let model = faster_rcnn::FasterRcnn::new(path, first, spec, num_classes, origin)?;
        return Ok(Box::new(model));
    }
    Ok(Box::new(first))
}

/// Load a spec file and [`build`] its detector; errors name the file.
pub fn build_from_file<'a>(
    path: impl Borrow<nn::Path<'a>>,
    spec_file: &Path,
    num_classes: i64,
) -> Result<(ModelSpec, Box<dyn Detector>)> {
    let spec = ModelSpec::load(spec_file)?;
    let origin = spec_file.display().to_string();
    let detector = build_any(path.borrow(), &spec, num_classes, &origin)?;
    Ok((spec, detector))
}

/// [`build`] with `origin` naming the spec in errors, returning the concrete type.
pub fn build_spec_detector(
    path: &nn::Path,
    spec: &ModelSpec,
    num_classes: i64,
    origin: &str,
) -> Result<SpecDetector> {
    if num_classes < 1 {
        crate::bail_input!("{origin}: num_classes must be at least 1, got {num_classes}");
    }
    let columns = class_columns(spec, num_classes);
    // Faster R-CNN's first stage is its RPN.
    let head = if spec.is_two_stage() {
        "rpn"
    } else {
        spec.head.as_str()
    };
    let net: Box<dyn MultiBoxNet> = match (head, spec.backbone.as_str()) {
        ("ssd", "vgg16") => make(ssd::SsdVgg::new, path, spec, columns, origin)?,
        ("ssd", "small") => make(small::SmallSsd::new, path, spec, columns, origin)?,
        ("retina", b) if b.starts_with("resnet") => {
            make(retina::RetinaNet::new, path, spec, columns, origin)?
        }
        ("rpn", "small") => make(rpn::RpnSmall::new, path, spec, columns, origin)?,
        ("rpn", b) if b.starts_with("resnet") => {
            make(rpn::RpnResNetFpn::new, path, spec, columns, origin)?
        }
        (head, backbone) => crate::bail_input!(
            "{origin}: head {head:?} with backbone {backbone:?} is not a network tchcv builds \
             (known: \"ssd\" with \"vgg16\" or \"small\", \"retina\" with \"resnet18\", \
             \"resnet34\", \"resnet50\", \"resnet101\" or \"resnet152\", \"rpn\" and \
             \"faster_rcnn\" with \"small\" or a ResNet)"
        ),
    };
    let [w, h] = spec.input_size;
    let detector = SpecDetector {
        net,
        input_hw: [h, w],
        columns,
        origin: origin.to_string(),
    };
    check_feature_maps(&detector, spec, origin)?;
    Ok(detector)
}

/// The score columns `C` of a spec's detector for `num_classes` foreground classes: 1 for an
/// RPN (objectness; Faster R-CNN's first stage too), else the classes plus the background
/// column when the loss has one.
pub fn class_columns(spec: &ModelSpec, num_classes: i64) -> i64 {
    if spec.has_rpn() {
        1
    } else {
        num_classes + i64::from(spec.has_background_column())
    }
}

/// The signature of every network's constructor: `(path, spec, columns, options, origin)`.
type NetConstructor<N, O> = fn(&nn::Path, &ModelSpec, i64, O, &str) -> Result<N>;

/// Parse the spec's `network` options for `new` and build the network.
fn make<N: MultiBoxNet + 'static, O: DeserializeOwned + Default>(
    new: NetConstructor<N, O>,
    path: &nn::Path,
    spec: &ModelSpec,
    columns: i64,
    origin: &str,
) -> Result<Box<dyn MultiBoxNet>> {
    let options = network_options(spec, origin)?;
    Ok(Box::new(new(path, spec, columns, options, origin)?))
}

/// Run a zero image through the network and compare each map with the spec.
fn check_feature_maps(detector: &SpecDetector, spec: &ModelSpec, origin: &str) -> Result<()> {
    let probe = detector.net.probe();
    let [h, w] = detector.input_hw;
    let zeros = Tensor::f_zeros([1, 3, h, w], (probe.kind(), probe.device()))?;
    let maps = tch::no_grad(|| detector.net.heads_t(&zeros, false))
        .with_context(|| format!("{origin}: running a {w}x{h} zero image through the network"))?;
    let expected = spec.feature_map_sizes();
    let per_cell = spec.anchors_per_cell();
    if maps.len() != expected.len() {
        let names: Vec<&str> = maps.iter().map(|m| m.name.as_str()).collect();
        crate::bail_input!(
            "{origin}: the network gives {} feature maps ({}), the spec's anchors.feature_maps lists {}",
            maps.len(),
            names.join(", "),
            expected.len()
        );
    }
    for (i, (m, ([eh, ew], k))) in maps
        .iter()
        .zip(expected.into_iter().zip(per_cell))
        .enumerate()
    {
        let size = m.loc.size();
        let (gh, gw) = (size[2], size[3]);
        if [gh, gw] != [eh, ew] {
            crate::bail_input!(
                "{origin}: feature map {i} ({}): the network gives {gh}x{gw} for a {w}x{h} input, \
                 the spec's anchors.feature_maps[{i}] says {eh}x{ew}",
                m.name
            );
        }
        let (loc_c, cls_c) = (size[1], m.cls.size()[1]);
        if loc_c != 4 * k || cls_c != detector.columns * k {
            crate::bail_input!(
                "{origin}: feature map {i} ({}): the heads give {loc_c} box and {cls_c} class \
                 channels, expected {k} anchors per cell x 4 and x {}",
                m.name,
                detector.columns
            );
        }
    }
    Ok(())
}

/// The spec's `network` options as `T` (missing: `T::default()`); unknown keys are errors.
fn network_options<T: DeserializeOwned + Default>(spec: &ModelSpec, origin: &str) -> Result<T> {
    match &spec.network {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|e| crate::bad_input(format!("{origin}: network: {e}"))),
    }
}

/// The VarStore name prefixes of the backbone the spec builds: what [`load_backbone`] fills
/// (and `--init` loads). VGG16: conv1_1 to conv5_3 plus conv6/conv7 (fc6/fc7 reduced);
/// ResNet: the stem and `layer1`-`layer4` (`fpn.*` in a RetinaNet, `backbone.body.*` in an
/// RPN, torchvision's Faster R-CNN names); small: the whole extractor.
pub fn backbone_prefixes(spec: &ModelSpec) -> Result<Vec<String>> {
    if spec.has_rpn() && spec.backbone.starts_with("resnet") {
        return Ok(rpn::resnet_backbone_prefixes());
    }
    let prefixes: &[&str] = match spec.backbone.as_str() {
        "vgg16" => &vgg::BACKBONE_PREFIXES,
        "small" => &small::BACKBONE_PREFIXES,
        b if b.starts_with("resnet") => &retina::BACKBONE_PREFIXES,
        other => crate::bail_input!(
            "model spec {:?}: backbone {other:?}: no known backbone weights",
            spec.name
        ),
    };
    Ok(prefixes.iter().map(|p| p.to_string()).collect())
}

/// Load backbone weights (e.g. ImageNet weights converted by `scripts/convert_weights.py`)
/// from a `.safetensors` (or `.npz`) file into a detector built by [`build`] at `vs.root()`.
///
/// Every backbone variable (names under [`backbone_prefixes`]) must be in the file with its
/// shape, and the file may hold nothing else; otherwise the error lists the missing,
/// unexpected and mismatched names. Other variables (heads, extras) keep their values.
/// Returns the number of tensors loaded.
pub fn load_backbone(vs: &nn::VarStore, spec: &ModelSpec, file: &Path) -> Result<usize> {
    let prefixes = backbone_prefixes(spec)?;
    let backbone: HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| prefixes.iter().any(|p| name.starts_with(p.as_str())))
        .collect();
    if backbone.is_empty() {
        crate::bail_input!(
            "{}: the VarStore has no backbone variables (names starting with {}); build the \
             detector at the VarStore's root",
            file.display(),
            prefixes.join(", ")
        );
    }
    let count = backbone.len();
    let named = crate::io::read_tensors(file)?;
    let origin = format!(
        "{} (the {} backbone: {}*)",
        file.display(),
        spec.backbone,
        prefixes.join("*, ")
    );
    crate::io::load_into_variables(backbone, &named, false, &origin)?;
    Ok(count)
}

/// `-log((1 - pi) / pi)`: the classification bias that makes every anchor start with
/// probability `pi` of each class (RetinaNet's prior; pi = 0.01 gives -4.595).
pub fn prior_bias(pi: f64) -> f64 {
    -((1.0 - pi) / pi).ln()
}

/// What [`load_init`] loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitWeights {
    /// Every variable of the model (e.g. a converted torchvision Faster R-CNN's RPN).
    Model(usize),
    /// The backbone's variables ([`load_backbone`]).
    Backbone(usize),
}

/// `--init`: a file holding every variable of the model (and nothing else) loads whole;
/// otherwise it must be backbone weights ([`load_backbone`], whose errors list the names).
pub fn load_init(vs: &nn::VarStore, spec: &ModelSpec, file: &Path) -> Result<InitWeights> {
    let named = crate::io::read_tensors(file)?;
    let variables = vs.variables();
    let whole = variables.keys().all(|k| named.contains_key(k))
        && named.keys().all(|k| variables.contains_key(k));
    if whole {
        let origin = format!("{} (the whole model)", file.display());
        let count = variables.len();
        crate::io::load_into_variables(variables, &named, false, &origin)?;
        return Ok(InitWeights::Model(count));
    }
    Ok(InitWeights::Backbone(load_backbone(vs, spec, file)?))
}
