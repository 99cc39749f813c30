//! Backbone weights: `scripts/convert_weights.py` on randomly initialised torchvision models
//! (`weights=None`: nothing is downloaded), loaded with `tchcv::models::load_backbone`; files
//! that do not fit are errors listing the names.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{nn, Device, Kind, Tensor};
use tchcv::models::{build, load_backbone};
use tchcv::spec::ModelSpec;

fn spec(name: &str) -> ModelSpec {
    ModelSpec::load(&common::repo().join("models").join(name)).unwrap()
}

/// A random torchvision `arch`, saved as .pth (converted by the script) and as safetensors
/// with torchvision's names (returned, to compare against).
fn torchvision_random(arch: &str, dir: &Path, seed: u64) -> (PathBuf, HashMap<String, Tensor>) {
    let pth = dir.join(format!("{arch}.pth"));
    let raw = dir.join(format!("{arch}_torchvision.safetensors"));
    common::run_reference(
        "torchvision_random.py",
        &[
            "--arch",
            arch,
            "--seed",
            &seed.to_string(),
            "--pth",
            pth.to_str().unwrap(),
            "--safetensors",
            raw.to_str().unwrap(),
        ],
    );
    (pth, common::read_safetensors(&raw))
}

/// Run the converter; returns (success, stdout + stderr).
fn convert(arch: &str, input: &Path, output: &Path) -> (bool, String) {
    convert_with(&["--arch", arch], input, output)
}

/// Run the converter with `flags`; returns (success, stdout + stderr).
fn convert_with(flags: &[&str], input: &Path, output: &Path) -> (bool, String) {
    let out = Command::new(common::python())
        .arg(common::repo().join("scripts/convert_weights.py"))
        .args(flags)
        .arg(input)
        .arg(output)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A random torchvision `arch` converted by the script: (converted file, torchvision tensors).
fn converted(arch: &str) -> (PathBuf, HashMap<String, Tensor>) {
    let seed = common::fresh_seed(&format!("{arch} conversion"));
    let dir = common::scratch(&format!("models_weights/{arch}"));
    let (pth, tv) = torchvision_random(arch, &dir, seed);
    let out = dir.join(format!("{arch}_backbone.safetensors"));
    let (ok, text) = convert(arch, &pth, &out);
    assert!(ok, "convert_weights.py failed: {text}");
    (out, tv)
}

fn assert_same(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    assert_eq!(
        common::max_abs_diff(got, want),
        0.0,
        "{what}: values differ"
    );
}

/// Every tensor of a torchvision ResNet `tv` but `fc` and `num_batches_tracked` is in `vars`
/// under `prefix`, equal; returns how many.
fn resnet_arrived(
    tv: &HashMap<String, Tensor>,
    vars: &HashMap<String, Tensor>,
    prefix: &str,
) -> usize {
    let mut compared = 0;
    for (name, t) in tv {
        if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
            continue;
        }
        assert_same(name, &vars[&format!("{prefix}{name}")], t);
        compared += 1;
    }
    compared
}

#[test]
fn converted_torchvision_vgg16_loads_as_the_ssd_backbone() {
    let (converted, tv) = converted("vgg16");
    let spec = spec("ssd300.json");
    let vs = nn::VarStore::new(Device::Cpu);
    let detector = build(vs.root(), &spec, 20).unwrap();
    let vars = vs.variables();
    let head_before = vars["loc_layers.0.weight"].copy();
    let extra_before = vars["extractor.conv8_1.weight"].copy();
    let loaded = load_backbone(&vs, &spec, &converted).unwrap();
    assert_eq!(loaded, 2 * (10 + 3 + 2));

    // torchvision features.i are torchcv's features.layers.i for conv1_1 .. conv4_3.
    for i in [0, 2, 5, 7, 10, 12, 14, 17, 19, 21] {
        for p in ["weight", "bias"] {
            let name = format!("extractor.features.layers.{i}.{p}");
            assert_same(&name, &vars[&name], &tv[&format!("features.{i}.{p}")]);
        }
    }
    for (i, conv) in [(24, "conv5_1"), (26, "conv5_2"), (28, "conv5_3")] {
        let name = format!("extractor.{conv}.weight");
        assert_same(&name, &vars[&name], &tv[&format!("features.{i}.weight")]);
    }
    // fc6 reduced: filter 4j, input channel c, taps (3a, 3b) of the 7x7 view; fc7: (4j, 4c).
    // (The helper keeps fc6/fc7 rows 0, 4, 12, 308, 4092 only.)
    let conv6 = &vars["extractor.conv6.weight"];
    for (j, c, a, b) in [
        (0, 0, 0, 0),
        (1, 5, 2, 1),
        (1023, 511, 2, 2),
        (77, 300, 1, 0),
    ] {
        let fc6_row = tv[&format!("classifier.0.weight.row{}", 4 * j)].view([512, 7, 7]);
        assert_eq!(
            conv6.double_value(&[j, c, a, b]),
            fc6_row.double_value(&[c, 3 * a, 3 * b]),
            "conv6[{j},{c},{a},{b}]"
        );
    }
    assert_eq!(
        vars["extractor.conv6.bias"].double_value(&[10]),
        tv["classifier.0.bias"].double_value(&[40])
    );
    let conv7 = &vars["extractor.conv7.weight"];
    assert_eq!(conv7.size(), [1024, 1024, 1, 1]);
    assert_eq!(
        conv7.double_value(&[3, 7, 0, 0]),
        tv["classifier.3.weight.row12"].double_value(&[28])
    );
    // Heads and extras untouched; the model still runs.
    assert_same(
        "loc_layers.0.weight",
        &vars["loc_layers.0.weight"],
        &head_before,
    );
    assert_same("conv8_1", &vars["extractor.conv8_1.weight"], &extra_before);
    let images = Tensor::zeros([1, 3, 300, 300], (Kind::Float, Device::Cpu));
    let (loc, _) = tch::no_grad(|| detector.forward_t(&images, false)).unwrap();
    assert_eq!(loc.size(), [1, 8732, 4]);
}

#[test]
fn converted_torchvision_resnet50_loads_as_the_retinanet_backbone() {
    let (converted, tv) = converted("resnet50");
    let spec = spec("retinanet.json");
    let vs = nn::VarStore::new(Device::Cpu);
    build(vs.root(), &spec, 20).unwrap();
    let fpn_before = vs.variables()["fpn.toplayer.weight"].copy();
    let loaded = load_backbone(&vs, &spec, &converted).unwrap();
    let vars = vs.variables();
    // Every torchvision tensor but fc and num_batches_tracked arrived, under fpn.
    assert_eq!(resnet_arrived(&tv, &vars, "fpn."), loaded);
    // conv1 + bn1 (4 tensors) + 16 bottlenecks x (3 convs + 3 bns x 4) + 4 downsamples x 5.
    assert_eq!(loaded, 1 + 4 + 16 * (3 + 3 * 4) + 4 * 5);
    assert_same("fpn.toplayer", &vars["fpn.toplayer.weight"], &fpn_before);
}

#[test]
fn converted_torchvision_fasterrcnn_loads_as_the_whole_rpn_and_gives_its_outputs() {
    // A random torchvision fasterrcnn_resnet50_fpn, saved with today's names and with the
    // pre-0.13 names of its COCO checkpoint; both convert to the same file, which `--init`
    // loads whole into models/rpn_r50_fpn.json; the network then gives torchvision's first
    // stage outputs (backbone, FPN with the max-pool level, RPNHead) on an 800x800 image.
    let seed = common::fresh_seed("fasterrcnn conversion");
    let dir = common::scratch("models_weights/fasterrcnn");
    let arch = "fasterrcnn_resnet50_fpn";
    let (pth, old_pth) = (dir.join("new.pth"), dir.join("old.pth"));
    let (raw, case) = (dir.join("tv.safetensors"), dir.join("case.safetensors"));
    let seed_text = seed.to_string();
    let mut args = vec!["--arch", arch, "--seed", &seed_text, "--safetensors"];
    args.extend([raw.to_str().unwrap(), "--pth", pth.to_str().unwrap()]);
    let mut with_case = args.clone();
    with_case.extend(["--rpn-case", case.to_str().unwrap(), "--size", "800"]);
    common::run_reference("torchvision_random.py", &with_case);
    let last = args.len() - 1;
    args[last] = old_pth.to_str().unwrap();
    args.push("--old-names");
    common::run_reference("torchvision_random.py", &args);
    let tv = common::read_safetensors(&raw);
    let (out, old_out) = (dir.join("rpn.safetensors"), dir.join("rpn_old.safetensors"));
    for (input, output) in [(&pth, &out), (&old_pth, &old_out)] {
        let (ok, text) = convert(arch, input, output);
        assert!(ok, "convert_weights.py failed: {text}");
    }
    let (new, old) = (
        common::read_safetensors(&out),
        common::read_safetensors(&old_out),
    );
    assert_eq!(new.len(), old.len());
    for (name, t) in &new {
        assert_same(&format!("{name} (old names)"), &old[name], t);
    }

    let spec = spec("rpn_r50_fpn.json");
    let vs = nn::VarStore::new(Device::Cpu);
    let detector = build(vs.root(), &spec, 20).unwrap();
    let loaded = tchcv::models::load_init(&vs, &spec, &out).unwrap();
    let vars = vs.variables();
    assert_eq!(loaded, tchcv::models::InitWeights::Model(vars.len()));
    let mut compared = 0;
    for (name, t) in &tv {
        if name.starts_with("roi_heads.") || name.ends_with("num_batches_tracked") {
            continue;
        }
        assert_same(name, &vars[name], t);
        compared += 1;
    }
    assert_eq!(
        compared,
        vars.len(),
        "every variable is torchvision's tensor of that name"
    );

    let mut expected = common::read_safetensors(&case);
    let images = expected.remove("images").unwrap();
    let (loc, cls) = tch::no_grad(|| detector.forward_t(&images, false)).unwrap();
    for (what, got) in [("loc_preds", &loc), ("cls_preds", &cls)] {
        let want = &expected[what];
        assert_eq!(got.size(), want.size(), "{what}");
        let scale = want.abs().max().double_value(&[]);
        assert!(scale > 1e-3, "{what}: all zeros");
        common::assert_close(what, got, want, 1e-4, 1e-4 * scale);
        eprintln!(
            "{what} {:?}: max |tchcv - torchvision| / max |torchvision| = {:.3e}",
            want.size(),
            common::max_abs_diff(got, want) / scale
        );
    }
}

#[test]
fn converted_torchvision_resnet50_loads_as_the_rpn_backbone_with_a_prefix() {
    let seed = common::fresh_seed("resnet50 conversion for the rpn");
    let dir = common::scratch("models_weights/resnet50_rpn");
    let (pth, tv) = torchvision_random("resnet50", &dir, seed);
    let out = dir.join("backbone.safetensors");
    let flags = ["--arch", "resnet50", "--prefix", "backbone.body."];
    let (ok, text) = convert_with(&flags, &pth, &out);
    assert!(ok, "convert_weights.py failed: {text}");
    // A smaller input builds the same variables faster.
    let mut value = spec("rpn_r50_fpn.json").to_json();
    value["input_size"] = serde_json::json!([256, 256]);
    value["anchors"]["feature_maps"] = serde_json::json!([64, 32, 16, 8, 4]);
    value.as_object_mut().unwrap().remove("num_anchors");
    let spec = ModelSpec::from_json_str(&value.to_string(), "rpn_r50_256").unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    build(vs.root(), &spec, 1).unwrap();
    let fpn_before = vs.variables()["backbone.fpn.inner_blocks.0.0.weight"].copy();
    let loaded = tchcv::models::load_init(&vs, &spec, &out).unwrap();
    let vars = vs.variables();
    let compared = resnet_arrived(&tv, &vars, "backbone.body.");
    assert_eq!(loaded, tchcv::models::InitWeights::Backbone(compared));
    let fpn = &vars["backbone.fpn.inner_blocks.0.0.weight"];
    assert_same("the FPN is untouched", fpn, &fpn_before);
}

#[test]
fn a_backbone_file_that_does_not_fit_lists_the_names() {
    let spec = spec("ssd300.json");
    let vs = nn::VarStore::new(Device::Cpu);
    build(vs.root(), &spec, 20).unwrap();
    let vars = vs.variables();
    let dir = common::scratch("models_weights/bad");
    // Every backbone tensor but conv5_3's weight, conv6's weight with another shape, plus a
    // classifier tensor and a head tensor that are not the backbone.
    let mut named: Vec<(String, Tensor)> = vars
        .iter()
        .filter(|(k, _)| {
            tchcv::models::vgg::BACKBONE_PREFIXES
                .iter()
                .any(|p| k.starts_with(p))
        })
        .filter(|(k, _)| k.as_str() != "extractor.conv5_3.weight")
        .map(|(k, v)| (k.clone(), v.copy()))
        .collect();
    for (k, v) in named.iter_mut() {
        if k == "extractor.conv6.weight" {
            *v = Tensor::zeros([1024, 512, 7, 7], (Kind::Float, Device::Cpu));
        }
    }
    named.push((
        "classifier.6.weight".into(),
        Tensor::zeros([1000, 4096], (Kind::Float, Device::Cpu)),
    ));
    named.push(("loc_layers.0.bias".into(), vars["loc_layers.0.bias"].copy()));
    let file = dir.join("bad.safetensors");
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    tchcv::io::write_safetensors(&file, &refs).unwrap();
    let before = vars["extractor.features.layers.0.weight"].copy();

    let err = load_backbone(&vs, &spec, &file).unwrap_err();
    assert!(tchcv::is_bad_input(&err));
    let msg = format!("{err:#}");
    for part in [
        file.display().to_string().as_str(),
        "the vgg16 backbone",
        "1 missing [extractor.conv5_3.weight]",
        "2 unexpected [classifier.6.weight, loc_layers.0.bias]",
        "extractor.conv6.weight (file [1024, 512, 7, 7], model [1024, 512, 3, 3])",
    ] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    // Nothing was copied.
    assert_same(
        "features.layers.0",
        &vars["extractor.features.layers.0.weight"],
        &before,
    );

    let err = load_backbone(&vs, &spec, &dir.join("absent.safetensors")).unwrap_err();
    assert!(tchcv::is_bad_input(&err) && format!("{err}").contains("no such file"));
}

#[test]
fn the_converter_refuses_a_state_dict_of_another_architecture() {
    let seed = common::fresh_seed("converter, wrong architecture");
    let dir = common::scratch("models_weights/wrong_arch");
    let (pth, _) = torchvision_random("resnet18", &dir, seed);
    let (ok, text) = convert("vgg16", &pth, &dir.join("out.safetensors"));
    assert!(!ok, "converted a resnet18 as vgg16: {text}");
    assert!(
        text.contains("error:") && text.contains("missing 'features.0.weight'"),
        "{text}"
    );
    assert!(!dir.join("out.safetensors").exists());
    // The same file converts as what it is, and a ResNet-18 RetinaNet takes it.
    let out = dir.join("r18.safetensors");
    let (ok, text) = convert("resnet18", &pth, &out);
    assert!(ok, "{text}");
    let path = dir.join("retina_r18.json");
    let mut value: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("models/retinanet.json")).unwrap(),
    )
    .unwrap();
    value["backbone"] = serde_json::json!("resnet18");
    std::fs::write(&path, value.to_string()).unwrap();
    let spec = ModelSpec::load(&path).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    build(vs.root(), &spec, 3).unwrap();
    assert_eq!(
        load_backbone(&vs, &spec, &out).unwrap(),
        1 + 4 + 8 * (2 + 2 * 4) + 3 * 5
    );
}
