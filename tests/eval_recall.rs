//! Proposal recall (`tchcv::eval::recall`): hand-made cases whose answers the test works out,
//! and random cases against an independent Python reference (`tests/reference/
//! proposal_recall.py`: torchvision.ops.box_iou and COCOeval's greedy matching), which must find
//! exactly the same objects.

mod common;

use std::collections::HashMap;

use serde_json::Value;
use tch::Tensor;
use tchcv::eval::recall::{
    objects_found, proposal_recall, ImageProposals, IOU_THRESHOLDS, PROPOSAL_LIMITS,
};
use tchcv::rng::Rng;

/// IoU of two xyxy boxes worked out by hand (no +1), in f64.
fn iou(a: [f32; 4], b: [f32; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) as f64;
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0) as f64;
    let area = |x: [f32; 4]| ((x[2] - x[0]) * (x[3] - x[1])) as f64;
    w * h / (area(a) + area(b) - w * h)
}

/// How many thresholds of 0.50:0.05:0.95 are <= `v`.
fn thresholds_up_to(v: f64) -> usize {
    IOU_THRESHOLDS.iter().filter(|&&t| t <= v).count()
}

#[test]
fn a_proposal_beyond_the_budget_does_not_count() {
    // One object; proposal 0 covers half of it (IoU 0.5), proposal 1 all of it.
    let object = [0.0, 0.0, 10.0, 10.0];
    let (half, whole) = ([0.0, 0.0, 10.0, 5.0], object);
    assert_eq!(iou(half, object), 0.5);
    let proposals = [half, whole];
    let image = ImageProposals {
        proposals: &proposals,
        objects: &[object],
    };
    let found = objects_found(&image, &[1, 2, 5], &IOU_THRESHOLDS);
    // Budget 1: only proposal 0, found at t = 0.5 alone. Budgets 2 and 5: at every t.
    let mut only_half = vec![0; IOU_THRESHOLDS.len()];
    only_half[..thresholds_up_to(0.5)].fill(1);
    assert_eq!(found[0], only_half);
    assert_eq!(found[1], vec![1; IOU_THRESHOLDS.len()]);
    assert_eq!(found[2], found[1], "fewer proposals than the budget");
}

#[test]
fn each_proposal_takes_one_object_in_proposal_order() {
    // P overlaps A (IoU 2/3) and B (7/13): it takes A. Q is A itself, but A is taken and Q's
    // IoU with B is 1/3: B stays unfound, though P alone would have covered it at 0.5.
    let (a, b) = ([0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]);
    let (p, q) = ([2.0, 0.0, 12.0, 10.0], a);
    let (pa, pb, qb) = (iou(p, a), iou(p, b), iou(q, b));
    assert!(pa > pb && pb >= 0.5 && qb < 0.5, "{pa} {pb} {qb}");
    let image = ImageProposals {
        proposals: &[p, q],
        objects: &[a, b],
    };
    let found = objects_found(&image, &[2], &IOU_THRESHOLDS);
    // A is found at every threshold (by P up to 2/3, by Q above); B never.
    assert_eq!(found[0], vec![1; IOU_THRESHOLDS.len()]);

    let result = proposal_recall(&[image]).unwrap();
    assert_eq!(result.objects, 2);
    assert_eq!(result.recall_50, 0.5);
    assert_eq!(result.ar_100, 0.5);
    assert_eq!(result.ar_1000, 0.5);
}

#[test]
fn equal_ious_go_to_the_later_object_as_in_cocoeval() {
    // P is equally close to O0 and O1 (IoU 9/11 each) and takes O1, the later; Q (= O0) then
    // takes O0 at every threshold. Were ties to go to O0, O1 would need Q (IoU 2/3).
    let (o0, o1) = ([0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]);
    let (p, q) = ([1.0, 0.0, 11.0, 10.0], o0);
    assert_eq!(iou(p, o0), iou(p, o1));
    let both = thresholds_up_to(iou(p, o1));
    assert_eq!(both, 7, "0.50 .. 0.80 are <= 9/11");
    let objects = [o0, o1];
    let proposals = [p, q];
    let image = ImageProposals {
        proposals: &proposals,
        objects: &objects,
    };
    let result = proposal_recall(&[image]).unwrap();
    let expected: Vec<f64> = (0..IOU_THRESHOLDS.len())
        .map(|i| if i < both { 1.0 } else { 0.5 })
        .collect();
    assert_eq!(result.per_limit[2].recall, expected);
    let ar = expected.iter().sum::<f64>() / 10.0;
    assert!(
        (result.ar_1000 - ar).abs() < 1e-15,
        "{} vs {ar}",
        result.ar_1000
    );
    assert_eq!(result.recall_70, 1.0);
}

#[test]
fn recall_pools_objects_over_images_and_refuses_an_empty_set() {
    let object = [10.0, 10.0, 50.0, 30.0];
    let found = ImageProposals {
        proposals: &[object],
        objects: &[object],
    };
    let missed = [[0.0, 0.0, 5.0, 5.0], [60.0, 60.0, 90.0, 90.0], object];
    let empty = ImageProposals {
        proposals: &[],
        objects: &missed,
    };
    let result = proposal_recall(&[found, empty]).unwrap();
    assert_eq!((result.images, result.objects), (2, 4));
    assert_eq!(result.recall_50, 0.25);
    assert_eq!(result.mean_proposals, 0.5);
    let none = ImageProposals {
        proposals: &[object],
        objects: &[],
    };
    let err = proposal_recall(&[none]).unwrap_err();
    assert!(tchcv::is_bad_input(&err), "{err:#}");
    assert!(format!("{err:#}").contains("no (non-difficult) objects"));
    let bad = ImageProposals {
        proposals: &[[0.0, f32::NAN, 1.0, 1.0]],
        objects: &[object],
    };
    let err = proposal_recall(&[bad]).unwrap_err();
    assert!(
        format!("{err:#}").contains("image 0: proposal 0"),
        "{err:#}"
    );
}

/// A box near `b` (each side moved by up to `jitter` of its size), or anywhere in 200x200.
fn random_box(rng: &mut Rng, near: Option<[f32; 4]>, jitter: f64) -> [f32; 4] {
    match near {
        Some(b) => {
            let (w, h) = ((b[2] - b[0]) as f64, (b[3] - b[1]) as f64);
            let mut d = |s: f64| (rng.uniform(-jitter, jitter) * s) as f32;
            let out = [b[0] + d(w), b[1] + d(h), b[2] + d(w), b[3] + d(h)];
            [
                out[0],
                out[1],
                out[2].max(out[0] + 1.0),
                out[3].max(out[1] + 1.0),
            ]
        }
        None => {
            let (x, y) = (rng.uniform(0.0, 180.0), rng.uniform(0.0, 180.0));
            let (w, h) = (rng.uniform(4.0, 120.0), rng.uniform(4.0, 120.0));
            [x as f32, y as f32, (x + w) as f32, (y + h) as f32]
        }
    }
}

/// One image's proposals (best first) and objects.
type Image = (Vec<[f32; 4]>, Vec<[f32; 4]>);

/// Random images: 0-6 objects each; 0-1200 proposals, many near the objects (IoU 0.3-1) in a
/// random order, so objects compete and the budgets matter.
fn random_images(seed: u64, n: usize) -> Vec<Image> {
    let mut rng = Rng::keyed(seed, &[16]);
    // Two images make the budgets and thresholds matter whatever the draw: an object that only
    // proposal 500 finds (after the budgets of 100 and 300), and one whose only proposal is at
    // IoU 0.6 (found at 0.5, not at 0.7).
    let object = [20.0, 20.0, 80.0, 80.0];
    let mut late: Vec<[f32; 4]> = (0..1200)
        .map(|i| {
            let x = 120.0 + (i % 60) as f32;
            [x, 150.0, x + 10.0, 160.0]
        })
        .collect();
    late[500] = object;
    let mut images = vec![
        (late, vec![object]),
        (vec![[0.0, 0.0, 10.0, 6.0]], vec![[0.0, 0.0, 10.0, 10.0]]),
    ];
    images.extend((0..n).map(|_| {
        let objects: Vec<[f32; 4]> = (0..rng.below(7))
            .map(|_| random_box(&mut rng, None, 0.0))
            .collect();
        let count = [0, 40, 150, 420, 1200][rng.below(5) as usize];
        let proposals = (0..count)
            .map(|_| {
                let near = (!objects.is_empty() && rng.chance(0.4))
                    .then(|| objects[rng.below(objects.len() as u64) as usize]);
                let jitter = rng.uniform(0.0, 0.35);
                random_box(&mut rng, near, jitter)
            })
            .collect();
        (proposals, objects)
    }));
    images
}

fn boxes_tensor(images: &[Image], objects: bool) -> (Tensor, Tensor) {
    let pick = |im: &Image| {
        if objects {
            im.1.clone()
        } else {
            im.0.clone()
        }
    };
    let flat: Vec<f32> = images.iter().flat_map(pick).flatten().collect();
    let counts: Vec<i64> = images.iter().map(|im| pick(im).len() as i64).collect();
    (
        Tensor::from_slice(&flat).view([-1, 4]),
        Tensor::from_slice(&counts),
    )
}

#[test]
fn random_cases_find_what_torchvision_box_iou_and_cocoeval_matching_find() {
    let seed = common::fresh_seed("proposal recall vs the reference");
    let dir = common::scratch("eval_recall/random");
    let images = random_images(seed, 40);
    let (proposals, proposal_counts) = boxes_tensor(&images, false);
    let (objects, object_counts) = boxes_tensor(&images, true);
    let case = dir.join("case.safetensors");
    let named: HashMap<&str, Tensor> = [
        ("proposals", proposals),
        ("objects", objects),
        ("proposal_counts", proposal_counts),
        ("object_counts", object_counts),
    ]
    .into();
    Tensor::write_safetensors(&named.into_iter().collect::<Vec<_>>(), &case).unwrap();
    let limits = PROPOSAL_LIMITS.map(|l| l.to_string()).join(",");
    let out = common::run_reference(
        "proposal_recall.py",
        &["--case", case.to_str().unwrap(), "--limits", &limits],
    );
    let reference: Value = serde_json::from_str(out.trim()).unwrap();

    let views: Vec<ImageProposals> = images
        .iter()
        .map(|(p, o)| ImageProposals {
            proposals: p,
            objects: o,
        })
        .collect();
    let result = proposal_recall(&views).unwrap();
    let mut found = vec![vec![0u64; IOU_THRESHOLDS.len()]; PROPOSAL_LIMITS.len()];
    for image in &views {
        for (total, counts) in
            found
                .iter_mut()
                .zip(objects_found(image, &PROPOSAL_LIMITS, &IOU_THRESHOLDS))
        {
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c as u64;
            }
        }
    }
    let want: Vec<Vec<u64>> = serde_json::from_value(reference["found"].clone()).unwrap();
    assert_eq!(found, want, "objects found per budget and threshold");
    assert_eq!(
        result.objects as u64,
        reference["objects"].as_u64().unwrap()
    );
    let thresholds: Vec<f64> = serde_json::from_value(reference["thresholds"].clone()).unwrap();
    for (a, b) in thresholds.iter().zip(IOU_THRESHOLDS) {
        assert!((a - b).abs() < 1e-12, "threshold {a} vs {b}");
    }
    let ar: Vec<f64> = serde_json::from_value(reference["average_recall"].clone()).unwrap();
    for (got, want) in [result.ar_100, result.ar_300, result.ar_1000]
        .iter()
        .zip(&ar)
    {
        assert!((got - want).abs() < 1e-12, "AR {got} vs {want}");
    }
    // Budgets and thresholds change the answer (the two fixed images see to it).
    assert!(result.ar_100 < result.ar_1000 && result.recall_70 < result.recall_50);
    eprintln!(
        "{} objects in {} images: AR@100 {:.4} AR@300 {:.4} AR@1000 {:.4} R@0.5 {:.4} R@0.7 {:.4}",
        result.objects,
        result.images,
        result.ar_100,
        result.ar_300,
        result.ar_1000,
        result.recall_50,
        result.recall_70
    );
}
