//! The synthetic VOC dataset: readable by the reader without errors, exact boxes, variety,
//! determinism, and the `tchcv synth` command.

mod common;
mod voc_fixture;

use std::collections::BTreeSet;

use tchcv::data::synth::{
    annotation_xml, image_id, render, write_dataset, SynthConfig, SYNTH_CLASSES,
};
use tchcv::data::{ImageCheck, ProblemKind};

#[test]
fn synth_output_passes_check_data_with_exact_boxes() {
    let seed = common::fresh_seed("synth_output_passes_check_data");
    let dir = common::scratch("data_synth_check");
    let config = SynthConfig {
        train: 40,
        test: 12,
        size: (160, 128),
        seed,
        ..SynthConfig::default()
    };
    let summary = write_dataset(&dir, &config).unwrap();
    assert_eq!(summary.images, 52);
    let (ds, report) = voc_fixture::open_voc(&dir, "trainval,test", ImageCheck::Decode);
    assert_eq!(ds.len(), 52);
    let kinds: BTreeSet<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
    assert!(
        kinds.iter().all(|&k| k == ProblemKind::NoObjects),
        "{:?}",
        report.problems
    );
    assert_eq!(report.count(ProblemKind::NoObjects), summary.empty_images);
    assert_eq!(
        ds.classes.names(),
        SYNTH_CLASSES,
        "the reader discovers the classes in this order"
    );
    let objects: usize = ds.records.iter().map(|r| r.objects.len()).sum();
    assert_eq!(objects, summary.objects);
    // Every box is the exact extent of its object's visible pixels in the id map.
    for (i, record) in ds.records.iter().enumerate() {
        let rendered = render(&config, i as u64);
        assert_eq!(record.id, image_id(i));
        assert_eq!(record.objects.len(), rendered.objects.len());
        let (w, h) = config.size;
        for (k, (o, r)) in record.objects.iter().zip(&rendered.objects).enumerate() {
            assert_eq!(o.class_id, r.class_id);
            assert_eq!(o.difficult, r.difficult);
            let b = o.pixel_box();
            let mut extent = [u32::MAX, u32::MAX, 0, 0];
            let mut count = 0;
            for y in 0..h {
                for x in 0..w {
                    if rendered.owner[(y * w + x) as usize] as usize == k + 1 {
                        extent = [
                            extent[0].min(x),
                            extent[1].min(y),
                            extent[2].max(x + 1),
                            extent[3].max(y + 1),
                        ];
                        count += 1;
                    }
                }
            }
            assert_eq!(
                b,
                extent.map(|v| v as f32),
                "image {i} object {k}: box is not tight"
            );
            assert_eq!(count, r.visible);
        }
    }
}

#[test]
fn synth_has_variety_difficult_objects_and_empty_images() {
    let config = SynthConfig::default();
    let mut per_class = [0usize; 5];
    let (mut empty, mut difficult, mut truncated, mut occluded) = (0, 0, 0, 0);
    let mut sides = Vec::new();
    for i in 0..300 {
        let r = render(&config, i);
        empty += r.objects.is_empty() as usize;
        for o in &r.objects {
            per_class[o.class_id] += 1;
            difficult += o.difficult as usize;
            truncated += o.truncated as usize;
            occluded += (o.visible < o.full) as usize;
            let p = o.pixels;
            sides.push((p[2] - p[0] + 1).max(p[3] - p[1] + 1));
        }
    }
    let total: usize = per_class.iter().sum();
    assert!(
        per_class.iter().all(|&n| n * 5 > total * 3 / 4),
        "classes balanced: {per_class:?}"
    );
    assert!(empty > 0 && empty < 30, "some empty images: {empty}");
    assert!(
        difficult > 0 && difficult * 5 < total,
        "some difficult objects: {difficult} of {total}"
    );
    assert!(
        truncated > 0 && occluded > 0,
        "truncated {truncated}, occluded {occluded}"
    );
    sides.sort();
    let (small, large) = (sides[sides.len() / 10], sides[sides.len() * 9 / 10]);
    assert!(
        small < 50 && large > 100,
        "sizes from small to large: p10 {small} px, p90 {large} px"
    );
}

#[test]
fn synth_is_a_pure_function_of_seed_and_index() {
    let config = SynthConfig::default();
    let a = render(&config, 7);
    let b = render(&config, 7);
    assert_eq!(a.image, b.image);
    assert_eq!(a.objects, b.objects);
    let other = render(
        &SynthConfig {
            seed: 1,
            ..config.clone()
        },
        7,
    );
    assert_ne!(a.image, other.image);
    let xml = annotation_xml("000008", config.size, &a.objects);
    assert!(
        xml.contains("<width>256</width>") && xml.matches("<object>").count() == a.objects.len()
    );
}

#[test]
fn synth_cli_writes_a_dataset_and_rejects_bad_sizes() {
    let dir = common::scratch("data_synth_cli");
    let out = dir.join("voc");
    let run = voc_fixture::tchcv;
    let ok = run(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--train",
        "6",
        "--test",
        "3",
        "--size",
        "64x48",
        "--seed",
        "2",
    ]);
    voc_fixture::assert_success(&ok, "synth");
    let list = |name: &str| {
        std::fs::read_to_string(out.join("ImageSets/Main").join(name))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(
        (list("train.txt"), list("trainval.txt"), list("test.txt")),
        (6, 6, 3)
    );
    assert_eq!(
        std::fs::read_dir(out.join("JPEGImages")).unwrap().count(),
        9
    );
    let check = run(&[
        "check-data",
        "--data",
        out.to_str().unwrap(),
        "--sets",
        "trainval,test",
    ]);
    voc_fixture::assert_success(&check, "check-data");
    for bad in ["64", "0x10", "axb"] {
        let r = run(&["synth", "--out", out.to_str().unwrap(), "--size", bad]);
        assert_eq!(r.status.code(), Some(2), "--size {bad}");
    }
}
