//! The detector builder: shipped specs build with outputs `[N, A, 4]`, `[N, A, C]`; specs the
//! network cannot satisfy, bad options and bad images are named errors (bad input, never a
//! panic); outputs are flattened in the box module's anchor order; init details.

mod common;

use std::path::PathBuf;

use tch::{nn, Device, Kind, Tensor};
use tchcv::models::{self, build, build_from_file, flatten_maps, MapOutput};
use tchcv::spec::ModelSpec;

fn spec_path(name: &str) -> PathBuf {
    common::repo().join("models").join(name)
}

fn load(name: &str) -> ModelSpec {
    ModelSpec::load(&spec_path(name)).unwrap()
}

/// A shipped spec with `edit` applied, written to scratch dir `name`.
fn edited(name: &str, from: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spec_path(from)).unwrap()).unwrap();
    edit(&mut value);
    let path = common::scratch(&format!("models_shapes/{name}")).join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    path
}

/// The error of building `path`, as text (and checks it is bad input).
fn build_error(path: &std::path::Path, classes: i64) -> String {
    let vs = nn::VarStore::new(Device::Cpu);
    let err = build_from_file(vs.root(), path, classes).unwrap_err();
    assert!(tchcv::is_bad_input(&err), "not marked bad input: {err:#}");
    format!("{err:#}")
}

fn num_parameters(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

#[test]
fn shipped_specs_give_outputs_of_the_spec_anchor_count() {
    // (file, foreground classes, batch, A worked out from the spec by hand, C)
    let cases = [
        ("ssd300.json", 20, 1, 8732, 21), // 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 4
        ("ssd512.json", 20, 1, 24564, 21), // 64^2*4 + 32^2*6 + 16^2*6 + 8^2*6 + 4^2*6 + 4*4 + 4
        ("retinanet.json", 20, 1, 49104, 20), // 9 * (64^2 + 32^2 + 16^2 + 8^2 + 4^2), no bg
        ("ssd_small.json", 3, 2, 2386, 4), // 20^2*4 + 10^2*6 + 5^2*6 + 3^2*4
        // RPNs: one column (objectness) whatever the classes.
        ("rpn_small.json", 5, 2, 3204, 1), // 6 * (20^2 + 10^2 + 5^2 + 3^2)
        ("rpn_r50_fpn.json", 20, 1, 159882, 1), // 3 * (200^2 + 100^2 + 50^2 + 25^2 + 13^2)
    ];
    for (file, classes, n, a, c) in cases {
        let spec = load(file);
        assert_eq!(spec.num_anchors(), a, "{file}");
        let vs = nn::VarStore::new(Device::Cpu);
        let detector = build(vs.root(), &spec, classes).unwrap();
        let [w, h] = spec.input_size;
        let images = Tensor::randn([n, 3, h, w], (Kind::Float, Device::Cpu));
        let (loc, cls) = tch::no_grad(|| detector.forward_t(&images, false)).unwrap();
        assert_eq!(loc.size(), [n, a, 4], "{file}: loc_preds");
        assert_eq!(cls.size(), [n, a, c], "{file}: cls_preds");
        assert_eq!(loc.kind(), Kind::Float);
        eprintln!("{file}: {} parameters", num_parameters(&vs));
    }
}

#[test]
fn ssd300_has_torchcv_names_shapes_and_parameter_count() {
    let vs = nn::VarStore::new(Device::Cpu);
    build(vs.root(), &load("ssd300.json"), 20).unwrap();
    let vars = vs.variables();
    let expect = [
        ("extractor.features.layers.0.weight", vec![64, 3, 3, 3]),
        ("extractor.features.layers.21.weight", vec![512, 512, 3, 3]),
        ("extractor.norm4.weight", vec![512]),
        ("extractor.conv5_3.bias", vec![512]),
        ("extractor.conv6.weight", vec![1024, 512, 3, 3]),
        ("extractor.conv7.weight", vec![1024, 1024, 1, 1]),
        ("extractor.conv8_2.weight", vec![512, 256, 3, 3]),
        ("extractor.conv11_2.weight", vec![256, 128, 3, 3]),
        ("loc_layers.0.weight", vec![16, 512, 3, 3]),
        ("cls_layers.1.weight", vec![126, 1024, 3, 3]),
        ("cls_layers.5.bias", vec![84]),
    ];
    for (name, shape) in expect {
        assert_eq!(vars[name].size(), shape, "{name}");
    }
    // 10 VGG convs + conv5_1..3 + conv6 + conv7 + 8 extra convs + 12 head convs, weight and
    // bias each, plus the L2Norm weight.
    assert_eq!(vars.len(), 2 * (10 + 3 + 2 + 8 + 12) + 1);
    // Worked out by hand per layer (c_in * c_out * k^2 + c_out); equals ssd.pytorch's count.
    assert_eq!(num_parameters(&vs), 26_285_486);
    assert_eq!(
        vars["extractor.norm4.weight"]
            .mean(Kind::Float)
            .double_value(&[]),
        20.0
    );
}

#[test]
fn a_feature_map_the_network_does_not_give_is_named() {
    let path = edited("small_bad_map", "ssd_small.json", |v| {
        v["anchors"]["feature_maps"] = serde_json::json!([20, 10, 4, 3]);
        v.as_object_mut().unwrap().remove("num_anchors");
    });
    let msg = build_error(&path, 3);
    for part in [
        path.display().to_string().as_str(),
        "feature map 2",
        "stride 32",
        "gives 5x5",
        "160x160",
        "anchors.feature_maps[2] says 4x4",
    ] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    // The same through `build`, which names the spec by its name.
    let spec = ModelSpec::load(&path).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let err = build(vs.root(), &spec, 3).unwrap_err();
    assert!(format!("{err:#}").contains("model spec \"ssd_small\": feature map 2"));
}

#[test]
fn a_vgg_spec_with_a_wrong_map_is_named() {
    let path = edited("ssd300_bad_map", "ssd300.json", |v| {
        v["anchors"]["feature_maps"] = serde_json::json!([38, 19, 10, 5, 3, 2]);
        v.as_object_mut().unwrap().remove("num_anchors");
    });
    let msg = build_error(&path, 20);
    assert!(
        msg.contains("feature map 5 (conv11_2): the network gives 1x1"),
        "{msg}"
    );
}

#[test]
fn map_counts_backbones_and_options_the_builder_cannot_make_are_named() {
    let path = edited("ssd300_5_maps", "ssd300.json", |v| {
        let a = &mut v["anchors"];
        a["feature_maps"] = serde_json::json!([38, 19, 10, 5, 3]);
        a["steps"] = serde_json::json!([8, 16, 32, 64, 100]);
        a["box_sizes"] = serde_json::json!([30, 60, 111, 162, 213, 264]);
        a["aspect_ratios"] = serde_json::json!([[2], [2, 3], [2, 3], [2, 3], [2]]);
        v.as_object_mut().unwrap().remove("num_anchors");
    });
    let msg = build_error(&path, 20);
    assert!(
        msg.contains("gives [6, 7] feature maps, the spec lists 5"),
        "{msg}"
    );

    let path = edited("unknown_backbone", "ssd_small.json", |v| {
        v["backbone"] = serde_json::json!("mobilenet");
    });
    let msg = build_error(&path, 20);
    assert!(
        msg.contains("backbone \"mobilenet\" is not a network"),
        "{msg}"
    );

    let path = edited("typo_option", "ssd_small.json", |v| {
        v["network"] = serde_json::json!({"widht": 0.5});
    });
    let msg = build_error(&path, 20);
    assert!(msg.contains("network: unknown field `widht`"), "{msg}");

    let path = edited("bad_width", "ssd_small.json", |v| {
        v["network"] = serde_json::json!({"width": -1});
    });
    assert!(build_error(&path, 20).contains("network.width"));

    let path = edited("bad_depth", "retinanet.json", |v| {
        v["network"] = serde_json::json!({"depth": 101});
    });
    let msg = build_error(&path, 20);
    assert!(
        msg.contains("network.depth 101 contradicts backbone \"resnet50\""),
        "{msg}"
    );

    let path = edited("uneven_retina", "retinanet.json", |v| {
        v["anchors"] = serde_json::json!({
            "style": "ssd", "feature_maps": [64, 32, 16, 8, 4], "steps": [8, 16, 32, 64, 128],
            "box_sizes": [32, 64, 128, 256, 512, 600], "aspect_ratios": [[2], [2, 3], [2], [2], [2]]
        });
        v.as_object_mut().unwrap().remove("num_anchors");
    });
    assert!(build_error(&path, 20).contains("same anchors per cell"));

    let vs = nn::VarStore::new(Device::Cpu);
    let err = build(vs.root(), &load("ssd_small.json"), 0).unwrap_err();
    assert!(tchcv::is_bad_input(&err) && format!("{err}").contains("num_classes"));
}

#[test]
fn wrong_images_are_bad_input_not_panics() {
    let vs = nn::VarStore::new(Device::Cpu);
    let detector = build(vs.root(), &load("ssd_small.json"), 3).unwrap();
    let cases = [
        Tensor::zeros([1, 3, 161, 160], (Kind::Float, Device::Cpu)),
        Tensor::zeros([1, 1, 160, 160], (Kind::Float, Device::Cpu)),
        Tensor::zeros([3, 160, 160], (Kind::Float, Device::Cpu)),
        Tensor::zeros([0, 3, 160, 160], (Kind::Float, Device::Cpu)),
        Tensor::zeros([1, 3, 160, 160], (Kind::Uint8, Device::Cpu)),
        Tensor::zeros([1, 3, 160, 160], (Kind::Double, Device::Cpu)),
    ];
    for images in cases {
        let err = detector.forward_t(&images, false).unwrap_err();
        assert!(tchcv::is_bad_input(&err), "{err:#}");
        assert!(format!("{err}").starts_with("images: "), "{err}");
    }
}

#[test]
fn outputs_are_flattened_per_map_row_column_anchor() {
    // Two maps: 2x3 cells with k = 2 anchors, then 1x1 with k = 1; C = 3 columns. Every head
    // channel holds a code of (map, row, column, anchor, coordinate or class).
    let code = |m: i64, y: i64, x: i64, a: i64, j: i64| {
        (m * 10000 + y * 1000 + x * 100 + a * 10 + j) as f32
    };
    let n = 2;
    let c = 3;
    let make = |m: i64, h: i64, w: i64, k: i64, per: i64| {
        let mut values = Vec::new();
        for _ in 0..n {
            for ch in 0..k * per {
                for y in 0..h {
                    for x in 0..w {
                        values.push(code(m, y, x, ch / per, ch % per));
                    }
                }
            }
        }
        Tensor::from_slice(&values).view([n, k * per, h, w])
    };
    let maps = vec![
        MapOutput {
            name: "a".into(),
            loc: make(0, 2, 3, 2, 4),
            cls: make(0, 2, 3, 2, c),
        },
        MapOutput {
            name: "b".into(),
            loc: make(1, 1, 1, 1, 4),
            cls: make(1, 1, 1, 1, c),
        },
    ];
    let (loc, cls) = flatten_maps(&maps, c).unwrap();
    assert_eq!(loc.size(), [n, 2 * 3 * 2 + 1, 4]);
    assert_eq!(cls.size(), [n, 13, c]);
    let mut anchor = 0;
    for (m, h, w, k) in [(0, 2, 3, 2), (1, 1, 1, 1)] {
        for y in 0..h {
            for x in 0..w {
                for a in 0..k {
                    for j in 0..4 {
                        let got = loc.double_value(&[1, anchor, j]) as f32;
                        assert_eq!(got, code(m, y, x, a, j), "loc anchor {anchor} coord {j}");
                    }
                    for j in 0..c {
                        let got = cls.double_value(&[0, anchor, j]) as f32;
                        assert_eq!(got, code(m, y, x, a, j), "cls anchor {anchor} class {j}");
                    }
                    anchor += 1;
                }
            }
        }
    }
}

/// retinanet.json at 128x128 with a ResNet-18 and 64 FPN channels (fast), `network` merged.
fn small_retina(name: &str, network: serde_json::Value) -> PathBuf {
    edited(name, "retinanet.json", |v| {
        v["input_size"] = serde_json::json!([128, 128]);
        v["anchors"]["feature_maps"] = serde_json::json!([16, 8, 4, 2, 1]);
        v.as_object_mut().unwrap().remove("num_anchors");
        let mut net = serde_json::json!({"depth": 18, "fpn_channels": 64});
        if let serde_json::Value::Object(extra) = network {
            net.as_object_mut().unwrap().extend(extra);
        }
        v["backbone"] = serde_json::json!("resnet");
        v["network"] = net;
    })
}

#[test]
fn retinanet_classifier_starts_at_the_prior() {
    let path = small_retina("retina_prior", serde_json::json!({}));
    let vs = nn::VarStore::new(Device::Cpu);
    let (_, detector) = build_from_file(vs.root(), &path, 5).unwrap();
    let vars = vs.variables();
    // -log((1 - 0.01) / 0.01) = -log(99) = -4.59512
    let bias = &vars["cls_head.8.bias"];
    assert_eq!(bias.size(), [9 * 5]);
    let expected = -(99f64.ln());
    assert!((bias.min().double_value(&[]) - expected).abs() < 1e-6);
    assert!((bias.max().double_value(&[]) - expected).abs() < 1e-6);
    assert_eq!(vars["loc_head.8.bias"].abs().max().double_value(&[]), 0.0);
    assert!((models::prior_bias(0.01) - expected).abs() < 1e-12);
    // Head convs N(0, 0.01): the scores start near pi.
    let images = Tensor::randn([2, 3, 128, 128], (Kind::Float, Device::Cpu));
    let (_, cls) = tch::no_grad(|| detector.forward_t(&images, false)).unwrap();
    let p = cls.sigmoid().mean(Kind::Float).double_value(&[]);
    assert!((0.005..0.02).contains(&p), "mean score {p}");

    let path = small_retina(
        "retina_prior_gn",
        serde_json::json!({"head_norm": "group_norm", "prior_prob": 0.1}),
    );
    let vs = nn::VarStore::new(Device::Cpu);
    build_from_file(vs.root(), &path, 5).unwrap();
    let vars = vs.variables();
    assert_eq!(
        vars["cls_head.1.weight"].size(),
        [64],
        "group norm at index 1"
    );
    let b = vars["cls_head.12.bias"].mean(Kind::Float).double_value(&[]);
    assert!((b - (-(9f64.ln()))).abs() < 1e-6, "prior 0.1: {b}");
}

#[test]
fn frozen_batch_norm_trains_nothing_and_keeps_its_statistics() {
    let images = Tensor::randn([2, 3, 128, 128], (Kind::Float, Device::Cpu));
    for frozen in [false, true] {
        let name = format!("retina_frozen_{frozen}");
        let path = small_retina(&name, serde_json::json!({"frozen_bn": frozen}));
        let vs = nn::VarStore::new(Device::Cpu);
        let (_, detector) = build_from_file(vs.root(), &path, 5).unwrap();
        let vars = vs.variables();
        let mean = &vars["fpn.layer2.0.bn1.running_mean"];
        // The build-time check ran a zero image in evaluation mode: statistics untouched.
        assert_eq!(mean.abs().max().double_value(&[]), 0.0);
        let norm_affine: Vec<&String> = vars
            .keys()
            .filter(|k| {
                (k.contains(".bn") || k.contains(".downsample.1."))
                    && (k.ends_with(".weight") || k.ends_with(".bias"))
            })
            .collect();
        assert_eq!(
            norm_affine.len(),
            2 * (1 + 8 * 2 + 3),
            "ResNet-18 batch norms"
        );
        for name in norm_affine {
            assert_eq!(
                vars[name].requires_grad(),
                !frozen,
                "frozen_bn {frozen}: {name}"
            );
        }
        let _outputs = tch::no_grad(|| detector.forward_t(&images, true)).unwrap();
        let moved = mean.abs().max().double_value(&[]) > 0.0;
        assert_eq!(
            moved, !frozen,
            "frozen_bn {frozen}: running mean moved: {moved}"
        );
    }
}

#[test]
fn small_ssd_is_light_and_its_options_change_it() {
    let params = |network: serde_json::Value, classes: i64| {
        let path = edited("small_options", "ssd_small.json", |v| {
            v["network"] = network
        });
        let vs = nn::VarStore::new(Device::Cpu);
        build_from_file(vs.root(), &path, classes).unwrap();
        (num_parameters(&vs), vs.variables())
    };
    let (default, vars) = params(serde_json::Value::Null, 20);
    eprintln!("ssd_small with 20 classes: {default} parameters");
    assert!(default < 1_000_000, "{default}");
    assert_eq!(vars["extractor.stem.conv.weight"].size(), [16, 3, 3, 3]);
    assert_eq!(
        vars["extractor.layers.7.dw.conv.weight"].size(),
        [128, 1, 3, 3]
    );
    assert_eq!(
        vars["extractor.layers.7.pw.conv.weight"].size(),
        [128, 128, 1, 1]
    );
    assert!(
        !vars.contains_key("extractor.stem.conv.bias"),
        "a conv before BN has no bias"
    );
    let (narrow, vars) = params(serde_json::json!({"width": 0.5}), 20);
    assert_eq!(
        vars["extractor.layers.7.pw.conv.weight"].size(),
        [64, 64, 1, 1]
    );
    assert!(narrow < default);
    let (plain, vars) = params(serde_json::json!({"depthwise": false}), 20);
    assert_eq!(
        vars["extractor.layers.7.conv.weight"].size(),
        [128, 128, 3, 3]
    );
    assert!(plain > default);
    let (_, vars) = params(serde_json::json!({"bn": false}), 20);
    assert!(vars.contains_key("extractor.stem.conv.bias"));
    assert!(!vars.keys().any(|k| k.contains(".bn.")));
}

/// An SSD head scored by the sigmoid focal loss (no background column) starts its class bias at
/// RetinaNet's prior, as the focal paper initialises it; a softmax head keeps a zero bias.
#[test]
fn ssd_heads_under_a_sigmoid_focal_loss_start_at_the_prior() {
    let focal = edited("small_focal", "ssd_small.json", |v| {
        v["loss"] = serde_json::json!("focal");
    });
    let vs = nn::VarStore::new(Device::Cpu);
    let (_, detector) = build_from_file(vs.root(), &focal, 4).unwrap();
    let vars = vs.variables();
    let expected = models::prior_bias(0.01);
    for i in 0..4 {
        let bias = &vars[&format!("cls_layers.{i}.bias")];
        assert!(
            (bias.min().double_value(&[]) - expected).abs() < 1e-6
                && (bias.max().double_value(&[]) - expected).abs() < 1e-6,
            "cls_layers.{i}.bias starts at the prior"
        );
        let loc = &vars[&format!("loc_layers.{i}.bias")];
        assert_eq!(loc.abs().max().double_value(&[]), 0.0);
    }
    let images = Tensor::randn([2, 3, 160, 160], (Kind::Float, Device::Cpu));
    let (_, cls) = tch::no_grad(|| detector.forward_t(&images, false)).unwrap();
    let p = cls.sigmoid().mean(Kind::Float).double_value(&[]);
    assert!(p < 0.1, "sigmoid scores start low, mean {p}");

    let vs = nn::VarStore::new(Device::Cpu);
    build_from_file(vs.root(), &spec_path("ssd_small.json"), 4).unwrap();
    let softmax_bias = &vs.variables()["cls_layers.0.bias"];
    assert_eq!(softmax_bias.abs().max().double_value(&[]), 0.0);

    let bad = edited("small_bad_prior", "ssd_small.json", |v| {
        v["network"] = serde_json::json!({"prior_prob": 1.5});
    });
    assert!(build_error(&bad, 4).contains("network.prior_prob"));
}

#[test]
fn rpn_heads_start_at_torchvisions_init_under_its_names() {
    // torchvision's RPNHead: every conv N(0, 0.01), every bias 0; one head per map on the small
    // backbone (64- and 128-channel maps), one shared head on the FPN.
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    build(vs.root(), &load("rpn_small.json"), 3).unwrap();
    let vars = vs.variables();
    let expect = [
        ("rpn.head.0.conv.0.0.weight", vec![64, 64, 3, 3]),
        ("rpn.head.0.cls_logits.weight", vec![6, 64, 1, 1]),
        ("rpn.head.0.bbox_pred.weight", vec![24, 64, 1, 1]),
        ("rpn.head.3.conv.0.0.weight", vec![128, 128, 3, 3]),
        ("rpn.head.3.bbox_pred.bias", vec![24]),
        ("extractor.stem.conv.weight", vec![16, 3, 3, 3]),
    ];
    for (name, shape) in expect {
        assert_eq!(vars[name].size(), shape, "{name}");
    }
    for (name, t) in vars.iter().filter(|(n, _)| n.starts_with("rpn.head.")) {
        if name.ends_with("bias") {
            assert_eq!(t.abs().max().double_value(&[]), 0.0, "{name}");
        } else if t.numel() > 10_000 {
            let std = t.std(true).double_value(&[]);
            assert!((std - 0.01).abs() < 5e-4, "{name}: std {std}");
        }
    }
    let mut spec = load("rpn_r50_fpn.json");
    // A smaller input builds the same variables faster.
    spec.input_size = [256, 256];
    let mut value = spec.to_json();
    value["anchors"]["feature_maps"] = serde_json::json!([64, 32, 16, 8, 4]);
    value.as_object_mut().unwrap().remove("num_anchors");
    let spec = tchcv::spec::ModelSpec::from_json_str(&value.to_string(), "r50").unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    build(vs.root(), &spec, 3).unwrap();
    let vars = vs.variables();
    let expect = [
        ("backbone.body.conv1.weight", vec![64, 3, 7, 7]),
        ("backbone.body.layer4.2.conv3.weight", vec![2048, 512, 1, 1]),
        ("backbone.fpn.inner_blocks.0.0.weight", vec![256, 256, 1, 1]),
        (
            "backbone.fpn.inner_blocks.3.0.weight",
            vec![256, 2048, 1, 1],
        ),
        ("backbone.fpn.layer_blocks.3.0.weight", vec![256, 256, 3, 3]),
        ("rpn.head.conv.0.0.weight", vec![256, 256, 3, 3]),
        ("rpn.head.cls_logits.weight", vec![3, 256, 1, 1]),
        ("rpn.head.bbox_pred.weight", vec![12, 256, 1, 1]),
    ];
    for (name, shape) in expect {
        assert_eq!(vars[name].size(), shape, "{name}");
    }
    assert!(
        !vars.keys().any(|k| k.starts_with("rpn.head.0.")),
        "one shared head"
    );
    // Frozen batch norm (the spec's): nothing of it trains.
    let trainable: Vec<String> = vs
        .trainable_variables()
        .iter()
        .filter_map(|t| {
            vars.iter()
                .find(|(_, v)| v.data_ptr() == t.data_ptr())
                .map(|(n, _)| n.clone())
        })
        .filter(|n| n.contains(".bn") || n.contains("downsample.1"))
        .collect();
    assert!(trainable.is_empty(), "frozen norms train: {trainable:?}");
}
