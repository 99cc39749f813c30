//! Hand-checked behaviour of tchcv::bbox: IoU, conversions, anchors, encode, NMS and decode.

mod common;

use tch::{Device, Kind, Tensor};
use tchcv::bbox::nms::{batched_nms_with, NmsMethod};
use tchcv::bbox::{ops, Anchors, BoxCoder, DecodeConfig};
use tchcv::spec::ModelSpec;

fn load(name: &str) -> ModelSpec {
    ModelSpec::load(&common::repo().join("models").join(name)).unwrap()
}

fn t2(rows: &[[f32; 4]]) -> Tensor {
    Tensor::from_slice(rows.as_flattened()).view([rows.len() as i64, 4])
}

fn i64s(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_device(Device::Cpu).contiguous().view(-1)).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(Device::Cpu).contiguous().view(-1)).unwrap()
}

#[test]
fn iou_by_hand_and_never_nan() {
    // [0,0,10,10] vs [0,0,10,20]: 100 / 200.
    assert_eq!(ops::iou(&[0., 0., 10., 10.], &[0., 0., 10., 20.]), 0.5);
    // [0,0,2,2] vs [1,1,3,3]: 1 / 7.
    assert_eq!(ops::iou(&[0., 0., 2., 2.], &[1., 1., 3., 3.]), 1.0 / 7.0);
    assert_eq!(ops::iou(&[0., 0., 1., 1.], &[2., 2., 3., 3.]), 0.0);
    // Degenerate boxes: torchcv's formula gives 0/0 = NaN for two points.
    assert_eq!(ops::iou(&[5., 5., 5., 5.], &[5., 5., 5., 5.]), 0.0);
    assert_eq!(ops::iou(&[0., 0., 0., 10.], &[0., 0., 10., 10.]), 0.0);

    let a = t2(&[[0., 0., 10., 10.], [5., 5., 5., 5.], [0., 0., 2., 2.]]);
    let b = t2(&[[0., 0., 10., 20.], [5., 5., 5., 5.], [1., 1., 3., 3.]]);
    let iou = ops::box_iou(&a, &b).unwrap();
    assert_eq!(iou.size(), [3, 3]);
    let v = f32s(&iou);
    assert!(v.iter().all(|x| x.is_finite()));
    assert_eq!(v[0], 0.5);
    assert_eq!(v[4], 0.0);
    assert_eq!(v[8], 1.0 / 7.0);
    // Host and tensor IoU agree to the bit.
    for (i, ra) in [[0., 0., 10., 10.], [5., 5., 5., 5.], [0., 0., 2., 2.]]
        .iter()
        .enumerate()
    {
        for (j, rb) in [[0., 0., 10., 20.], [5., 5., 5., 5.], [1., 1., 3., 3.]]
            .iter()
            .enumerate()
        {
            assert_eq!(v[i * 3 + j], ops::iou(ra, rb));
        }
    }
    let err = ops::box_iou(&Tensor::zeros([3, 5], (Kind::Float, Device::Cpu)), &b).unwrap_err();
    assert!(tchcv::is_bad_input(&err) && format!("{err}").contains("[K, 4]"));
}

#[test]
fn order_conversions_and_clamp() {
    let xyxy = [2.0f32, 4.0, 12.0, 10.0];
    let c = ops::to_cxcywh(&xyxy);
    assert_eq!(c, [7.0, 7.0, 10.0, 6.0]);
    assert_eq!(ops::to_xyxy(&c), xyxy);
    let t = t2(&[xyxy, [-5., -5., 400., 20.]]);
    let back = ops::cxcywh_to_xyxy(&ops::xyxy_to_cxcywh(&t).unwrap()).unwrap();
    assert_eq!(f32s(&back), f32s(&t));
    let clamped = ops::clamp_boxes(&t, 300.0, 100.0).unwrap();
    assert_eq!(f32s(&clamped)[4..], [0., 0., 300., 20.]);
    assert_eq!(f32s(&ops::box_area(&t).unwrap())[0], 60.0);
    let scaled = ops::scale_boxes(&[xyxy], [100.0, 50.0], [300.0, 300.0]).unwrap();
    assert_eq!(scaled[0], [6.0, 24.0, 36.0, 60.0]);
    assert!(ops::scale_boxes(&[xyxy], [0.0, 50.0], [300.0, 300.0]).is_err());
}

/// The first anchors (cxcywh) within 1e-4 px of hand-computed values.
fn assert_first_anchors(anchors: &Anchors, want: &[[f64; 4]]) {
    for (i, (got, want)) in anchors.cxcywh.iter().zip(want).enumerate() {
        let close = got
            .iter()
            .zip(want)
            .all(|(g, w)| (*g as f64 - w).abs() < 1e-4);
        assert!(close, "anchor {i}: {got:?} vs {want:?}");
    }
}

/// torchcv's first default boxes of SSD300, by hand: cell (0, 0) has centre (4, 4); s = 30,
/// s' = sqrt(30 * 60) = 42.4264; ratio 2 gives 30 * sqrt(2) x 30 / sqrt(2) and its transpose;
/// cell (0, 1) has centre (12, 4).
#[test]
fn ssd300_first_six_default_boxes() {
    let anchors = Anchors::from_spec(&load("ssd300.json"));
    let r2 = 2f64.sqrt();
    let s1 = (30.0f64 * 60.0).sqrt();
    let want = [
        [4.0, 4.0, 30.0, 30.0],
        [4.0, 4.0, s1, s1],
        [4.0, 4.0, 30.0 * r2, 30.0 / r2],
        [4.0, 4.0, 30.0 / r2, 30.0 * r2],
        [12.0, 4.0, 30.0, 30.0],
        [12.0, 4.0, s1, s1],
    ];
    assert_first_anchors(&anchors, &want);
    // The last box: the 1x1 map, centre (150, 150), s = 264 with ratio 2 (tall).
    let last = anchors.cxcywh[8731];
    assert!((last[0] - 150.0).abs() < 1e-4 && (last[2] as f64 - 264.0 / r2).abs() < 1e-3);
    assert_eq!(anchors.per_map, vec![5776, 2166, 600, 150, 36, 4]);
    assert_eq!(anchors.xyxy[0], [-11.0, -11.0, 19.0, 19.0]);
}

/// torchcv RetinaNet anchors at P3: ratio 1/2 gives h = sqrt(1024 / 0.5) = 45.25, w = 22.63,
/// then scales 2^(1/3), 2^(2/3); ratio 1 gives 32 x 32.
#[test]
fn retinanet_first_anchors() {
    let anchors = Anchors::from_spec(&load("retinanet.json"));
    assert_eq!(anchors.len(), 49104);
    let h = (1024.0f64 / 0.5).sqrt();
    let w = 0.5 * h;
    let k = 2f64.powf(1.0 / 3.0);
    let want = [
        [4.0, 4.0, w, h],
        [4.0, 4.0, w * k, h * k],
        [4.0, 4.0, w * k * k, h * k * k],
        [4.0, 4.0, 32.0, 32.0],
    ];
    assert_first_anchors(&anchors, &want);
    assert_eq!(anchors.cxcywh[9][0], 12.0);
}

#[test]
fn encode_empty_degenerate_and_bad_input() {
    let coder = BoxCoder::from_spec(&load("ssd300.json")).unwrap();
    let empty = coder.encode(&[], &[]).unwrap();
    assert_eq!(empty.loc_targets.size(), [8732, 4]);
    assert_eq!(empty.cls_targets.kind(), Kind::Int64);
    assert!(i64s(&empty.cls_targets).iter().all(|&c| c == 0));
    assert!(f32s(&empty.loc_targets).iter().all(|&x| x == 0.0));

    // torchcv's random_crop fallback [0,0,0,0] and an inverted box are dropped.
    let boxes = [
        [0., 0., 0., 0.],
        [50., 60., 150., 200.],
        [80., 80., 40., 120.],
    ];
    let enc = coder.encode(&boxes, &[3, 4, 5]).unwrap();
    assert_eq!(enc.dropped, vec![0, 2]);
    assert_eq!(enc.num_pos_per_box[0], 0);
    assert_eq!(enc.num_pos_per_box[2], 0);
    assert!(enc.num_pos_per_box[1] >= 1);
    let cls = i64s(&enc.cls_targets);
    assert!(
        cls.iter().all(|&c| c == 0 || c == 5),
        "only label 4 + 1 may appear"
    );
    assert_eq!(
        cls.iter().filter(|&&c| c == 5).count() as i64,
        enc.num_pos_per_box[1]
    );
    assert!(f32s(&enc.loc_targets).iter().all(|x| x.is_finite()));

    for (boxes, labels, want) in [
        (
            vec![[0f32, 0., 10., 10.]],
            vec![1i64, 2],
            "1 boxes but 2 labels",
        ),
        (vec![[0., 0., 10., 10.]], vec![-1], "label -1 is negative"),
        (vec![[0., f32::NAN, 10., 10.]], vec![1], "non-finite"),
    ] {
        let err = coder.encode(&boxes, &labels).unwrap_err();
        assert!(tchcv::is_bad_input(&err), "{err:#}");
        assert!(format!("{err:#}").contains(want), "{err:#}");
    }
}

/// One GT equal to an anchor: that anchor's deltas are exactly 0 (loc) and log(1) = 0 (wh).
#[test]
fn encode_box_equal_to_an_anchor() {
    let coder = BoxCoder::from_spec(&load("ssd300.json")).unwrap();
    let k = 100;
    let b = coder.host_anchors().xyxy[k];
    let enc = coder.encode(&[b], &[7]).unwrap();
    let cls = i64s(&enc.cls_targets);
    assert_eq!(cls[k], 8);
    assert_eq!(&f32s(&enc.loc_targets)[4 * k..4 * k + 4], &[0.0; 4]);
}

#[test]
fn encode_batch_stacks_encode() {
    let coder = BoxCoder::from_spec(&load("ssd_small.json")).unwrap();
    let images = vec![
        (
            vec![[10f32, 20., 60., 90.], [100., 100., 150., 140.]],
            vec![0i64, 3],
        ),
        (vec![], vec![]),
        (vec![[0., 0., 160., 160.]], vec![19]),
    ];
    let (loc, cls) = coder.encode_batch(&images).unwrap();
    assert_eq!(loc.size(), [3, 2386, 4]);
    assert_eq!(cls.size(), [3, 2386]);
    for (i, (b, l)) in images.iter().enumerate() {
        let one = coder.encode(b, l).unwrap();
        assert!(loc.get(i as i64).equal(&one.loc_targets));
        assert!(cls.get(i as i64).equal(&one.cls_targets));
    }
    let err = coder
        .encode_batch(&[(vec![[0., 0., 1., 1.]], vec![])])
        .unwrap_err();
    assert!(format!("{err:#}").contains("image 0 of the batch"));
}

#[test]
fn box_coder_is_shareable_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<BoxCoder>();
    let coder = std::sync::Arc::new(BoxCoder::from_spec(&load("ssd_small.json")).unwrap());
    let counts: Vec<i64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let coder = coder.clone();
                s.spawn(move || {
                    let b = [10.0 + i as f32, 10.0, 70.0, 90.0];
                    coder.encode(&[b], &[1]).unwrap().num_pos_per_box[0]
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(counts.iter().all(|&n| n >= 1));
}

/// The demo layout suits synthetic objects of 10-60% of the image side (aspect 1/2..2): almost
/// all have an anchor at IoU >= 0.5, and none is far from one.
#[test]
fn ssd_small_covers_demo_object_sizes() {
    let coder = BoxCoder::from_spec(&load("ssd_small.json")).unwrap();
    let mut rng = tchcv::rng::Rng::new(5);
    let (mut good, n) = (0, 1000);
    let mut worst = 1.0f32;
    for _ in 0..n {
        let side = rng.uniform(0.1, 0.6) * 160.0;
        let ratio = rng.uniform(-0.69, 0.69).exp();
        let (w, h) = (
            (side * ratio.sqrt()).min(159.0),
            (side / ratio.sqrt()).min(159.0),
        );
        let x = rng.uniform(0.0, 160.0 - w);
        let y = rng.uniform(0.0, 160.0 - h);
        let b = [x as f32, y as f32, (x + w) as f32, (y + h) as f32];
        let best = coder
            .host_anchors()
            .xyxy
            .iter()
            .map(|a| ops::iou(a, &b))
            .fold(0.0, f32::max);
        worst = worst.min(best);
        good += usize::from(best >= 0.5);
    }
    assert!(
        good * 10 >= n * 9,
        "only {good}/{n} objects have an anchor at IoU >= 0.5"
    );
    assert!(worst >= 0.35, "an object's best anchor IoU is {worst}");
}

#[test]
fn nms_by_hand() {
    // IoU([0,0,10,10], [0,0,10,20]) = 0.5 exactly: suppressed only when IoU > threshold.
    let boxes = t2(&[
        [0., 0., 10., 10.],
        [0., 0., 10., 20.],
        [100., 100., 110., 110.],
    ]);
    let scores = Tensor::from_slice(&[0.9f32, 0.8, 0.7]);
    for method in [NmsMethod::Host, NmsMethod::Matrix] {
        let keep = |thr| i64s(&batched_nms_with(&boxes, &scores, None, thr, method).unwrap());
        assert_eq!(keep(0.5), vec![0, 1, 2], "{method:?}");
        assert_eq!(keep(0.49), vec![0, 2], "{method:?}");
        // Descending score order, whatever the input order.
        let rev = Tensor::from_slice(&[0.1f32, 0.8, 0.9]);
        let k = i64s(&batched_nms_with(&boxes, &rev, None, 0.3, method).unwrap());
        assert_eq!(k, vec![2, 1], "{method:?}");
        // Degenerate boxes neither suppress nor get suppressed (torchcv: NaN IoU suppresses).
        let degenerate = t2(&[[5., 5., 5., 5.], [5., 5., 5., 5.], [0., 0., 10., 10.]]);
        let k = i64s(&batched_nms_with(&degenerate, &scores, None, 0.1, method).unwrap());
        assert_eq!(k, vec![0, 1, 2], "{method:?}");
        // Class-wise: the same boxes in different classes survive, even at negative
        // coordinates (where torchvision's offset trick can make classes overlap).
        let neg = t2(&[
            [-500., -500., -400., -400.],
            [-500., -500., -400., -400.],
            [-500., -500., -401., -400.],
        ]);
        let classes = Tensor::from_slice(&[0i64, 1, 0]);
        let k = i64s(&batched_nms_with(&neg, &scores, Some(&classes), 0.5, method).unwrap());
        assert_eq!(k, vec![0, 1], "{method:?}");
        // Empty and single inputs.
        let none = batched_nms_with(
            &t2(&[]),
            &Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            None,
            0.5,
            method,
        )
        .unwrap();
        assert_eq!(none.size(), [0]);
        assert_eq!(none.kind(), Kind::Int64);
        let one = batched_nms_with(
            &t2(&[[0., 0., 1., 1.]]),
            &Tensor::from_slice(&[0.5f32]),
            None,
            0.5,
            method,
        )
        .unwrap();
        assert_eq!(i64s(&one), vec![0]);
    }
    // More boxes than one 64-bit mask word, all overlapping a chain: greedy keeps every other.
    let chain: Vec<[f32; 4]> = (0..150)
        .map(|i| [i as f32 * 6.0, 0., i as f32 * 6.0 + 10.0, 10.0])
        .collect();
    let scores = Tensor::from_slice(&(0..150).map(|i| 1.0 - i as f32 / 200.0).collect::<Vec<_>>());
    for method in [NmsMethod::Host, NmsMethod::Matrix] {
        let k = i64s(&batched_nms_with(&t2(&chain), &scores, None, 0.2, method).unwrap());
        assert_eq!(k, (0..150).step_by(2).collect::<Vec<i64>>(), "{method:?}");
    }
    let err = batched_nms_with(
        &boxes,
        &Tensor::from_slice(&[1.0f32]),
        None,
        0.5,
        NmsMethod::Auto,
    )
    .unwrap_err();
    assert!(tchcv::is_bad_input(&err) && format!("{err}").contains("one per box"));
}

#[test]
fn decode_edge_cases() {
    let spec = load("ssd_small.json");
    let coder = BoxCoder::from_spec(&spec).unwrap();
    let a = coder.num_anchors();
    let loc = Tensor::zeros([2, a, 4], (Kind::Float, Device::Cpu));
    // Zero deltas decode to the anchors themselves.
    let boxes = coder.decode_boxes(&loc).unwrap();
    assert!(boxes.get(0).equal(&coder.host_anchors().to_xyxy_tensor()));
    // Huge wh deltas: exp is capped at 1000/16 = 62.5 times the anchor size (no inf).
    let big = Tensor::full([1, a, 4], 1e4, (Kind::Float, Device::Cpu));
    let b = coder.decode_boxes(&big).unwrap();
    assert!(f32s(&b).iter().all(|x| x.is_finite()));
    let w0 = f32s(&b.get(0).get(0))[2] - f32s(&b.get(0).get(0))[0];
    assert!((w0 as f64 - 16.0 * 62.5).abs() < 1e-2, "capped width {w0}");

    // Nothing above the threshold: empty tensors, not errors.
    let mut cfg = DecodeConfig::for_spec(&spec);
    let scores = Tensor::full([2, a, 4], 0.001, (Kind::Float, Device::Cpu));
    let dets = coder.decode(&loc, &scores, &cfg).unwrap();
    assert_eq!(dets.len(), 2);
    for d in &dets {
        assert!(d.is_empty());
        assert_eq!(d.boxes.size(), [0, 4]);
        assert_eq!(d.labels.kind(), Kind::Int64);
    }

    // Every anchor scores 0.5 in class column 2 (label 1): top_k and max_detections cap it,
    // and the background column 0 is never a detection.
    let scores = Tensor::zeros([2, a, 4], (Kind::Float, Device::Cpu));
    let _ = scores.narrow(2, 2, 1).fill_(0.5);
    let _ = scores.narrow(2, 0, 1).fill_(0.9);
    cfg.top_k = Some(7);
    cfg.nms_threshold = 1.0; // nothing suppressed
    let dets = coder.decode(&loc, &scores, &cfg).unwrap();
    assert_eq!(dets[0].len(), 7);
    assert!(i64s(&dets[0].labels).iter().all(|&l| l == 1));
    let host = dets[0].to_host().unwrap();
    assert_eq!(host.boxes.len(), 7);
    assert_eq!(host.boxes.as_flattened(), f32s(&dets[0].boxes).as_slice());
    assert_eq!(host.scores, vec![0.5; 7]);
    assert_eq!(host.labels, vec![1; 7]);
    cfg.top_k = None;
    cfg.max_detections = 11;
    assert_eq!(coder.decode(&loc, &scores, &cfg).unwrap()[1].len(), 11);
    // Without a background column, column 0 is class 0.
    cfg.background_column = false;
    let labels = i64s(&coder.decode(&loc, &scores, &cfg).unwrap()[0].labels);
    assert!(labels.iter().all(|&l| l == 0), "{labels:?}");

    // Equal scores: the lower class first, then the lower anchor (torchcv's per-class loop,
    // concatenated and stably sorted), whether or not top_k cuts.
    let tied = Tensor::zeros([1, a, 4], (Kind::Float, Device::Cpu));
    for (anchor, column, score) in [(5, 3, 0.5), (100, 1, 0.5), (200, 1, 0.5), (3, 2, 0.7)] {
        let _ = tied.get(0).get(anchor).get(column).fill_(score);
    }
    let mut tie_cfg = DecodeConfig::for_spec(&spec);
    tie_cfg.nms_threshold = 1.0;
    let anchors = coder.host_anchors().to_xyxy_tensor();
    for top_k in [None, Some(3)] {
        tie_cfg.top_k = top_k;
        let d = &coder.decode(&loc.narrow(0, 0, 1), &tied, &tie_cfg).unwrap()[0];
        assert_eq!(i64s(&d.labels), [1, 0, 0, 2], "top_k {top_k:?}");
        assert_eq!(f32s(&d.scores), [0.7, 0.5, 0.5, 0.5], "top_k {top_k:?}");
        let want = anchors.index_select(0, &Tensor::from_slice(&[3i64, 100, 200, 5]));
        assert!(
            d.boxes.equal(&want),
            "top_k {top_k:?}: boxes of anchors 3, 100, 200, 5"
        );
    }

    // Shape errors are bad input naming the tensor.
    let err = coder
        .decode(&loc.narrow(1, 0, 10), &scores, &cfg)
        .unwrap_err();
    assert!(tchcv::is_bad_input(&err) && format!("{err}").contains("loc_preds"));
    let err = coder
        .decode(&loc, &scores.narrow(1, 0, 10), &cfg)
        .unwrap_err();
    assert!(tchcv::is_bad_input(&err) && format!("{err}").contains("scores"));
}
