//! The VOC reader: counts on the shared datasets, layouts, classes, and every bad-input case
//! of issue 4 built in a scratch folder.

mod common;
mod voc_fixture;

use std::collections::BTreeMap;

use tchcv::data::check::{problem_of, CheckReport};
use tchcv::data::voc::{pixel_to_voc_box, voc_to_pixel_box};
use tchcv::data::{ClassMap, ImageCheck, ProblemKind, ReadOptions, SetSpec, VocDataset};
use voc_fixture::{obj, open_voc as open, Obj, VocDir};

/// Objects per class name (difficult included) and the difficult total.
fn per_class(ds: &VocDataset) -> (BTreeMap<String, usize>, usize) {
    let mut counts = BTreeMap::new();
    let mut difficult = 0;
    for r in &ds.records {
        for o in &r.objects {
            *counts
                .entry(ds.classes.name(o.class_id).unwrap().to_string())
                .or_insert(0) += 1;
            difficult += o.difficult as usize;
        }
    }
    (counts, difficult)
}

fn expect_counts(got: &BTreeMap<String, usize>, want: &[(&str, usize)]) {
    let want: BTreeMap<String, usize> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(got, &want);
}

#[test]
fn voc2012_subset_counts_match_its_readme() {
    let Some(root) = common::shared_dataset("voc2012_subset_rafaelpadilla") else {
        return;
    };
    let (ds, report) = open(&root, "trainval,test", ImageCheck::Decode);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(ds.len(), 100);
    assert_eq!(
        ds.classes,
        ClassMap::voc(),
        "uses only VOC classes: the standard order"
    );
    let (counts, difficult) = per_class(&ds);
    expect_counts(
        &counts,
        &[
            ("aeroplane", 15),
            ("bicycle", 14),
            ("bird", 6),
            ("boat", 11),
            ("bottle", 13),
            ("bus", 6),
            ("car", 14),
            ("cat", 5),
            ("chair", 15),
            ("cow", 14),
            ("diningtable", 7),
            ("dog", 8),
            ("horse", 7),
            ("motorbike", 5),
            ("person", 91),
            ("pottedplant", 7),
            ("sheep", 10),
            ("sofa", 10),
            ("train", 6),
            ("tvmonitor", 9),
        ],
    );
    assert_eq!(counts.values().sum::<usize>(), 273);
    assert_eq!(difficult, 38);
    let (train, _) = open(&root, "trainval", ImageCheck::Exists);
    let (test, _) = open(&root, "test", ImageCheck::Exists);
    assert_eq!(
        (train.len(), per_class(&train).0.values().sum::<usize>()),
        (80, 216)
    );
    assert_eq!(
        (test.len(), per_class(&test).0.values().sum::<usize>()),
        (20, 57)
    );
    assert_eq!(
        per_class(&test).0.len(),
        16,
        "test has 16 of the 20 classes"
    );
}

#[test]
fn playing_cards_counts_match_its_readme() {
    let Some(root) = common::shared_dataset("playing_cards_edjeelectronics") else {
        return;
    };
    let (ds, report) = open(&root, "trainval,test", ImageCheck::Decode);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(ds.len(), 363);
    assert_eq!(
        ds.classes.names(),
        ["ace", "jack", "king", "nine", "queen", "ten"],
        "discovered, sorted"
    );
    let (counts, difficult) = per_class(&ds);
    expect_counts(
        &counts,
        &[
            ("ace", 118),
            ("jack", 113),
            ("king", 118),
            ("nine", 115),
            ("queen", 106),
            ("ten", 100),
        ],
    );
    assert_eq!(difficult, 0);
    let sizes: std::collections::BTreeSet<(u32, u32)> =
        ds.records.iter().map(|r| (r.width, r.height)).collect();
    assert_eq!(
        sizes,
        [(378, 504), (480, 270), (960, 540)].into_iter().collect()
    );
    let (train, _) = open(&root, "trainval", ImageCheck::Exists);
    assert_eq!(
        (train.len(), per_class(&train).0.values().sum::<usize>()),
        (296, 527)
    );
}

#[test]
fn bccd_counts_match_its_readme_and_the_two_zero_area_boxes_are_reported() {
    let Some(root) = common::shared_dataset("bccd_shenggan") else {
        return;
    };
    let (ds, report) = open(&root, "trainval,test", ImageCheck::Decode);
    assert_eq!(ds.len(), 364);
    assert_eq!(ds.classes.names(), ["Platelets", "RBC", "WBC"]);
    let degenerate: Vec<String> = report
        .problems
        .iter()
        .map(|p| {
            assert_eq!(p.kind, ProblemKind::DegenerateBox, "{p}");
            p.file.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(degenerate, ["BloodImage_00338", "BloodImage_00343"]);
    let (counts, difficult) = per_class(&ds);
    // The README counts 4888 objects, RBC 4155, including the two zero-area RBC boxes.
    expect_counts(
        &counts,
        &[("Platelets", 361), ("RBC", 4155 - 2), ("WBC", 372)],
    );
    assert_eq!(difficult, 0);
    let check = CheckReport::new(&ds, &report);
    assert_eq!(check.errors(), 0);
    let images: Vec<usize> = check.classes.iter().map(|c| c.images).collect();
    assert_eq!(images, [201, 349, 358]);
    let (train, _) = open(&root, "trainval", ImageCheck::Exists);
    let (test, _) = open(&root, "test", ImageCheck::Exists);
    assert_eq!(
        (train.len(), per_class(&train).0.values().sum::<usize>()),
        (292, 3943 - 2)
    );
    assert_eq!(
        (test.len(), per_class(&test).0.values().sum::<usize>()),
        (72, 945)
    );
}

#[test]
fn check_data_cli_passes_on_the_shared_datasets() {
    for name in [
        "voc2012_subset_rafaelpadilla",
        "playing_cards_edjeelectronics",
        "bccd_shenggan",
    ] {
        let Some(root) = common::shared_dataset(name) else {
            continue;
        };
        let out = voc_fixture::tchcv(&[
            "check-data",
            "--data",
            root.to_str().unwrap(),
            "--sets",
            "trainval,test",
        ]);
        voc_fixture::assert_success(&out, name);
        let text = String::from_utf8_lossy(&out.stdout);
        if name == "bccd_shenggan" {
            assert!(
                text.contains("BloodImage_00338.xml: degenerate-box"),
                "{text}"
            );
            assert!(
                text.contains("BloodImage_00343.xml: degenerate-box"),
                "{text}"
            );
        }
    }
}

#[test]
fn set_specs_parse_and_reject_nonsense() {
    let specs = SetSpec::parse_list("2007:trainval, 2012:trainval,test").unwrap();
    assert_eq!(specs.len(), 3);
    assert_eq!(specs[0].year.as_deref(), Some("2007"));
    assert_eq!(specs[2].to_string(), "test");
    assert_eq!(
        SetSpec::parse_list("VOC2012:val").unwrap()[0].to_string(),
        "2012:val"
    );
    for bad in ["", ",", "a/b", "2007:", ":x"] {
        let err = SetSpec::parse_list(bad).unwrap_err();
        assert!(tchcv::is_bad_input(&err), "{bad:?}");
    }
}

#[test]
fn vocdevkit_layout_combines_years_and_single_folder_works() {
    let root = common::scratch("data_reader_devkit");
    let mut y07 = VocDir::new(&root.join("VOC2007"));
    y07.add("000001", (40, 30), &[obj("dog", [2.0, 3.0, 20.0, 25.0])]);
    y07.write_set("trainval");
    let mut y12 = VocDir::new(&root.join("VOC2012"));
    y12.add(
        "2008_000001",
        (50, 40),
        &[
            obj("cat", [5.0, 5.0, 30.0, 30.0]),
            obj("dog", [1.0, 1.0, 50.0, 40.0]),
        ],
    );
    y12.write_set("trainval");
    let (ds, report) = open(&root, "2007:trainval,2012:trainval", ImageCheck::Header);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.records[0].source, "2007:trainval");
    assert_eq!(ds.records[1].source, "2012:trainval");
    assert_eq!(ds.classes, ClassMap::voc());
    // Two VOC folders and no year: a named error; a single folder needs no year.
    let err = VocDataset::open(
        &root,
        &SetSpec::parse_list("trainval").unwrap(),
        &ReadOptions::default(),
    )
    .unwrap_err();
    assert!(
        tchcv::is_bad_input(&err) && format!("{err:#}").contains("write the year"),
        "{err:#}"
    );
    let (single, _) = open(&root.join("VOC2012"), "trainval", ImageCheck::Exists);
    assert_eq!(single.len(), 1);
    // A missing set names the sets that exist.
    let err = VocDataset::open(
        &root,
        &SetSpec::parse_list("2007:val").unwrap(),
        &ReadOptions::default(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("sets there: trainval"),
        "{err:#}"
    );
}

#[test]
fn classes_discovery_file_and_json_round_trip() {
    assert_eq!(ClassMap::discover(["dog", "cat"]).unwrap(), ClassMap::voc());
    let other = ClassMap::discover(["b", "a", "b", " c "]).unwrap();
    assert_eq!(other.names(), ["a", "b", "c"]);
    let dir = common::scratch("data_reader_classes");
    let list = dir.join("classes.txt");
    std::fs::write(&list, "# mine\nzebra\n\nant\n").unwrap();
    let given = ClassMap::load(&list).unwrap();
    assert_eq!(
        given.names(),
        ["zebra", "ant"],
        "a given list keeps its order"
    );
    let json = dir.join("classes.json");
    given.save_json(&json).unwrap();
    assert_eq!(ClassMap::load(&json).unwrap(), given);
    assert_eq!(given.id("ant"), Some(1));
    std::fs::write(&list, "a\na\n").unwrap();
    assert!(tchcv::is_bad_input(&ClassMap::load(&list).unwrap_err()));
}

/// Every bad-input case of issue 4 that the reader sees (image decoding has its own tests).
#[test]
fn bad_inputs_give_named_problems_and_never_panic() {
    let root = common::scratch("data_reader_bad");
    let mut voc = VocDir::new(&root);
    let ok = |name| obj(name, [10.0, 10.0, 30.0, 30.0]);
    voc.add("good", (64, 48), &[ok("cat")]);
    voc.add_raw("malformed", "<annotation><object><name>cat</name>", None);
    voc.add("noimage", (64, 48), &[ok("cat")]);
    std::fs::remove_file(voc.image_path("noimage", "jpg")).unwrap();
    voc.add("unknown", (64, 48), &[ok("unicorn"), ok("cat")]);
    voc.add("outside", (64, 48), &[obj("cat", [-5.0, 0.0, 70.0, 30.0])]);
    voc.add(
        "zero",
        (64, 48),
        &[
            obj("cat", [10.0, 10.0, 10.0, 30.0]),
            obj("dog", [20.0, 30.0, 25.0, 12.0]),
            ok("dog"),
        ],
    );
    voc.add("empty", (64, 48), &[]);
    voc.add(
        "nodifficult",
        (64, 48),
        &[Obj {
            name: "cat",
            bbox: [1.5, 2.5, 40.25, 30.0],
            difficult: None,
        }],
    );
    voc.add("badcoord", (64, 48), &[]);
    std::fs::write(
        voc.annotation_path("badcoord"),
        "<annotation><size><width>64</width><height>48</height></size>\
         <object><name>cat</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>\
         <object><name>cat</name></object>\
         <object><name>dog</name><difficult>1</difficult><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax><ymax>20</ymax></bndbox>\
         <part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part></object>\
         </annotation>",
    )
    .unwrap();
    voc.add_raw("noxml", "", None);
    std::fs::remove_file(voc.annotation_path("noxml")).unwrap();
    voc.write_set("trainval");
    let classes = ClassMap::new(vec!["cat".into(), "dog".into()]).unwrap();
    let options = ReadOptions {
        classes: Some(classes),
        check_images: ImageCheck::Header,
    };
    let (ds, report) = VocDataset::open(
        &root,
        &SetSpec::parse_list("trainval,trainval").unwrap(),
        &options,
    )
    .unwrap();
    let kinds_of = |id: &str| -> Vec<ProblemKind> {
        let mut k: Vec<ProblemKind> = report
            .problems
            .iter()
            .filter(|p| p.file.file_stem().is_some_and(|s| s == id))
            .map(|p| p.kind)
            .collect();
        k.sort();
        k
    };
    use ProblemKind::*;
    let sorted = |mut v: Vec<ProblemKind>| {
        v.sort();
        v
    };
    assert_eq!(
        kinds_of("good"),
        sorted(vec![DuplicateId]),
        "listed twice in trainval,trainval"
    );
    assert_eq!(
        kinds_of("malformed"),
        sorted(vec![MalformedXml, DuplicateId])
    );
    assert_eq!(kinds_of("noimage"), sorted(vec![MissingImage, DuplicateId]));
    assert_eq!(kinds_of("unknown"), sorted(vec![UnknownClass, DuplicateId]));
    assert_eq!(kinds_of("outside"), sorted(vec![BoxClipped, DuplicateId]));
    assert_eq!(
        kinds_of("zero"),
        sorted(vec![DegenerateBox, DegenerateBox, DuplicateId])
    );
    assert_eq!(kinds_of("empty"), sorted(vec![NoObjects, DuplicateId]));
    assert_eq!(kinds_of("nodifficult"), sorted(vec![DuplicateId]));
    assert_eq!(
        kinds_of("badcoord"),
        sorted(vec![BadObject, BadObject, DuplicateId])
    );
    assert_eq!(
        kinds_of("noxml"),
        sorted(vec![MissingAnnotation, DuplicateId])
    );
    let ids: Vec<&str> = ds.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "good",
            "unknown",
            "outside",
            "zero",
            "empty",
            "nodifficult",
            "badcoord"
        ]
    );
    let rec = |id: &str| ds.records.iter().find(|r| r.id == id).unwrap();
    assert_eq!(
        rec("unknown").objects.len(),
        1,
        "the unknown-class object is dropped, the other kept"
    );
    assert_eq!(
        rec("outside").objects[0].bbox,
        [1.0, 1.0, 64.0, 30.0],
        "clipped to [1, W] x [1, H]"
    );
    assert_eq!(rec("zero").objects.len(), 1);
    let nd = &rec("nodifficult").objects[0];
    assert!(!nd.difficult, "a missing <difficult> is 0");
    assert_eq!(
        nd.bbox,
        [1.5, 2.5, 40.25, 30.0],
        "float coordinates are kept"
    );
    let bc = &rec("badcoord").objects;
    assert_eq!(bc.len(), 1, "only the direct <object> box, not the <part>");
    assert!(bc[0].difficult);
    assert_eq!(bc[0].bbox, [3.0, 4.0, 20.0, 20.0]);
    let check = CheckReport::new(&ds, &report);
    assert!(check.errors() > 0);
    let text = check.render();
    assert!(text.contains("malformed.xml: malformed-xml"), "{text}");
    // The CLI exits 1 when there are errors.
    let status = std::process::Command::new(common::tchcv_bin())
        .args(["check-data", "--data"])
        .arg(&root)
        .args(["--headers-only"])
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(1));
    // Loading still works and maps boxes to 0-based continuous pixels.
    let i = ds.records.iter().position(|r| r.id == "good").unwrap();
    let sample = ds.load(i, false).unwrap();
    assert_eq!(sample.boxes, [[9.0, 9.0, 30.0, 30.0]]);
    assert_eq!(sample.image.dimensions(), (64, 48));
}

#[test]
fn difficult_objects_are_left_out_of_training_samples_unless_asked() {
    let root = common::scratch("data_reader_difficult");
    let mut voc = VocDir::new(&root);
    let hard = Obj {
        name: "dog",
        bbox: [5.0, 5.0, 20.0, 20.0],
        difficult: Some(1),
    };
    voc.add("a", (32, 32), &[obj("cat", [1.0, 1.0, 10.0, 10.0]), hard]);
    voc.write_set("trainval");
    let (ds, _) = open(&root, "trainval", ImageCheck::Exists);
    assert_eq!(ds.load(0, false).unwrap().labels.len(), 1);
    let all = ds.load(0, true).unwrap();
    assert_eq!(all.difficult, [false, true]);
}

#[test]
fn voc_and_pixel_boxes_convert_both_ways() {
    // VOC pixels 1..=10 are the continuous span [0, 10].
    assert_eq!(
        voc_to_pixel_box([1.0, 1.0, 10.0, 10.0]),
        [0.0, 0.0, 10.0, 10.0]
    );
    assert_eq!(
        pixel_to_voc_box([0.0, 0.0, 10.0, 10.0]),
        [1.0, 1.0, 10.0, 10.0]
    );
}

#[test]
fn unreadable_record_problem_is_recoverable_from_the_error() {
    let root = common::scratch("data_reader_unreadable");
    let mut voc = VocDir::new(&root);
    voc.add("a", (32, 32), &[obj("cat", [1.0, 1.0, 10.0, 10.0])]);
    voc.write_set("trainval");
    let (ds, _) = open(&root, "trainval", ImageCheck::Exists);
    std::fs::write(voc.image_path("a", "jpg"), b"not an image").unwrap();
    let err = ds.load(0, false).unwrap_err();
    assert!(tchcv::is_bad_input(&err));
    assert_eq!(
        problem_of(&err).unwrap().kind,
        ProblemKind::CorruptImage,
        "{err:#}"
    );
}
