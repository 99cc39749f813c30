//! No panic from a user's tensors: every tensor a command reads from a file, given the wrong
//! dtype, rank or shape or left empty, and damaged files (truncated, wrong keys, a lying .npz
//! header) exit with status 2 and a message naming the tensor or the file, never a Rust panic.
//!
//! Commands: `tchcv loss --input`, `tchcv train --resume`, `tchcv eval --checkpoint`,
//! `tchcv detect --checkpoint` and `tchcv train --init`. The checkpoint comes from a one-step
//! training run of the small SSD on a few synthetic images.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tch::{Kind, Tensor};
use tchcv::data::synth::{write_dataset, SynthConfig};

/// One command run and what its error must name.
struct Case {
    what: String,
    args: Vec<String>,
    /// Substrings the error must contain (a tensor, a key, a file).
    names: Vec<String>,
}

fn case(what: impl Into<String>, args: &[&str], names: &[&str]) -> Case {
    Case {
        what: what.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        names: names.iter().map(|s| s.to_string()).collect(),
    }
}

fn tchcv(args: &[String]) -> Output {
    Command::new(common::tchcv_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run tchcv")
}

/// Run the cases four at a time; collect every failure, then fail once listing them all.
fn expect_bad_input(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for chunk in cases.chunks(4) {
        let outputs: Vec<Output> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|c| s.spawn(|| tchcv(&c.args))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (c, out) in chunk.iter().zip(outputs) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let mut wrong = Vec::new();
            if out.status.code() != Some(2) {
                wrong.push(format!("exit status {:?}, expected 2", out.status.code()));
            }
            if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
                wrong.push("a panic".to_string());
            }
            for name in &c.names {
                if !stderr.contains(name.as_str()) {
                    wrong.push(format!("the message does not name {name:?}"));
                }
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "{}: {}\n  args: {:?}\n  stderr: {}",
                    c.what,
                    wrong.join("; "),
                    c.args,
                    stderr.trim()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) {
    let mut named: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), t.contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    Tensor::write_safetensors(&named, path).unwrap();
}

/// The first `len / 2` bytes of `from`, written to `to`.
fn truncated_copy(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap();
    std::fs::write(to, &bytes[..bytes.len() / 2]).unwrap();
}

// ---------------------------------------------------------------------------------------------
// tchcv loss

/// A valid loss input: N = 2 images, A = 5 anchors, C = 3 columns.
fn loss_tensors() -> HashMap<String, Tensor> {
    let opts = (Kind::Float, tch::Device::Cpu);
    HashMap::from([
        ("loc_preds".into(), Tensor::randn([2, 5, 4], opts)),
        ("loc_targets".into(), Tensor::randn([2, 5, 4], opts)),
        ("cls_preds".into(), Tensor::randn([2, 5, 3], opts)),
        (
            "cls_targets".into(),
            Tensor::from_slice(&[0i64, 1, 2, 0, -1, 1, 0, 0, 2, 0]).view([2, 5]),
        ),
    ])
}

/// For each tensor: a wrong dtype, a wrong rank, a wrong shape and an empty tensor.
fn loss_variants(name: &str, t: &Tensor) -> Vec<(&'static str, Tensor)> {
    let dtype = match name {
        "loc_preds" => Kind::Int64, // the case: set_requires_grad panicked
        "loc_targets" => Kind::Uint8,
        "cls_preds" => Kind::Int,
        _ => Kind::Float,
    };
    // One more of a size the others fix: 4 box offsets, or A anchors (C is free).
    let mut bigger = t.size();
    let dim = if name == "cls_preds" {
        1
    } else {
        bigger.len() - 1
    };
    bigger[dim] += 1;
    let mut empty = t.size();
    empty[1] = 0;
    vec![
        ("dtype", t.to_kind(dtype)),
        ("rank", t.unsqueeze(-1)),
        (
            "shape",
            Tensor::zeros(bigger.as_slice(), (t.kind(), t.device())),
        ),
        (
            "empty",
            Tensor::zeros(empty.as_slice(), (t.kind(), t.device())),
        ),
    ]
}

#[test]
fn loss_each_tensor_wrong_dtype_rank_shape_or_empty() {
    let dir = common::scratch("bad-input-loss");
    let good = loss_tensors();
    let mut cases = Vec::new();
    let kinds = ["ssd", "focal", "softmax-focal"];
    for (i, name) in ["loc_preds", "loc_targets", "cls_preds", "cls_targets"]
        .into_iter()
        .enumerate()
    {
        for (j, (variant, t)) in loss_variants(name, &good[name]).into_iter().enumerate() {
            let mut tensors = loss_tensors();
            tensors.insert(name.to_string(), t);
            // Each case with one loss, in turn (they share the validation); the dtype cases
            // (the issue's: an int64 loc_preds in an .npz) from .npz, the others safetensors.
            let loss = kinds[(i + j) % 3];
            let ext = if variant == "dtype" {
                "npz"
            } else {
                "safetensors"
            };
            let path = dir.join(format!("{name}-{variant}.{ext}"));
            if ext == "npz" {
                let named: Vec<(&str, &Tensor)> =
                    tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
                Tensor::write_npz(&named, &path).unwrap();
            } else {
                write_safetensors(&path, &tensors);
            }
            cases.push(case(
                format!("loss {loss}: {name} with a wrong {variant} ({ext})"),
                &["loss", "--input", s(&path), "--loss", loss],
                &[name],
            ));
        }
    }
    // class_counts for static class weights: a bool and a 2-D tensor.
    for (variant, counts) in [
        ("dtype", Tensor::from_slice(&[true, false, true])),
        (
            "rank",
            Tensor::ones([3, 1], (Kind::Float, tch::Device::Cpu)),
        ),
    ] {
        let mut tensors = loss_tensors();
        tensors.insert("class_counts".into(), counts);
        let path = dir.join(format!("class_counts-{variant}.safetensors"));
        write_safetensors(&path, &tensors);
        cases.push(case(
            format!("loss softmax-focal: class_counts with a wrong {variant}"),
            &[
                "loss",
                "--input",
                s(&path),
                "--loss",
                "softmax-focal",
                "--class-weights",
                "static",
            ],
            &["class_counts", s(&path)],
        ));
    }
    // A number flag JSON cannot carry: `--alpha nan` used to turn the weighting off.
    let path = dir.join("good.safetensors");
    write_safetensors(&path, &good);
    cases.push(case(
        "loss focal --alpha nan",
        &[
            "loss",
            "--input",
            s(&path),
            "--loss",
            "focal",
            "--alpha",
            "nan",
        ],
        &["--alpha"],
    ));
    expect_bad_input(cases);
}

#[test]
fn loss_on_an_empty_batch_is_zero() {
    let dir = common::scratch("bad-input-loss-empty");
    let opts = (Kind::Float, tch::Device::Cpu);
    for (n, a) in [(0, 5), (2, 0)] {
        let tensors = [
            ("loc_preds", Tensor::zeros([n, a, 4], opts)),
            ("loc_targets", Tensor::zeros([n, a, 4], opts)),
            ("cls_preds", Tensor::zeros([n, a, 3], opts)),
            ("cls_targets", Tensor::zeros([n, a], (Kind::Int64, opts.1))),
        ];
        let path = dir.join(format!("empty-{n}-{a}.npz"));
        Tensor::write_npz(&tensors, &path).unwrap();
        for loss in ["ssd", "focal", "softmax-focal"] {
            let grads = dir.join(format!("grads-{n}-{a}-{loss}.safetensors"));
            let args: Vec<String> = [
                "loss",
                "--input",
                s(&path),
                "--loss",
                loss,
                "--grads",
                s(&grads),
            ]
            .map(String::from)
            .to_vec();
            let out = tchcv(&args);
            assert!(
                out.status.success(),
                "{loss} on N={n}, A={a}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["total"], 0.0, "{loss} on N={n}, A={a}: {report}");
            assert_eq!(report["num_pos"], 0, "{loss} on N={n}, A={a}: {report}");
        }
    }
}

/// An .npz of one `.npy` member `name` whose header says `descr` and `shape` (Python tuple
/// text) over `data`, stored uncompressed.
fn npz_with_member(path: &Path, name: &str, descr: &str, shape: &str, data: &[u8]) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    npy.extend(data);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(format!("{name}.npy"), options).unwrap();
    zip.write_all(&npy).unwrap();
    zip.finish().unwrap();
}

#[test]
fn loss_damaged_npz_files() {
    let dir = common::scratch("bad-input-npz");
    let good = loss_tensors();
    let named: Vec<(&str, &Tensor)> = good.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut cases = Vec::new();

    // A header promising far more data than the member holds (tch's reader copied past the end).
    let liar = dir.join("liar.npz");
    npz_with_member(&liar, "loc_preds", "<f4", "(200000000, 5, 4)", &[0u8; 160]);
    cases.push(case(
        "npz member whose header promises more bytes",
        &["loss", "--input", s(&liar)],
        &[s(&liar), "loc_preds.npy"],
    ));
    // A big-endian member.
    let big_endian = dir.join("big-endian.npz");
    npz_with_member(&big_endian, "loc_preds", ">f4", "(2, 5, 4)", &[0u8; 160]);
    cases.push(case(
        "big-endian npz member",
        &["loss", "--input", s(&big_endian)],
        &[s(&big_endian), "loc_preds.npy"],
    ));
    // A damaged local header (tch's reader unwrapped the zip error).
    let damaged = dir.join("damaged.npz");
    Tensor::write_npz(&named, &damaged).unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[..4].copy_from_slice(b"XXXX");
    std::fs::write(&damaged, bytes).unwrap();
    cases.push(case(
        "npz with a damaged member header",
        &["loss", "--input", s(&damaged)],
        &[s(&damaged)],
    ));
    // Truncated files of both formats.
    for ext in ["npz", "safetensors"] {
        let whole = dir.join(format!("whole.{ext}"));
        match ext {
            "npz" => Tensor::write_npz(&named, &whole).unwrap(),
            _ => write_safetensors(&whole, &good),
        }
        let cut = dir.join(format!("truncated.{ext}"));
        truncated_copy(&whole, &cut);
        cases.push(case(
            format!("truncated .{ext}"),
            &["loss", "--input", s(&cut)],
            &[s(&cut)],
        ));
    }
    expect_bad_input(cases);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: train --resume, eval --checkpoint, detect, train --init

/// Synthetic data and a checkpoint of one training step, made once for all tests here.
struct Trained {
    dir: PathBuf,
    data: PathBuf,
    checkpoint: PathBuf,
    image: PathBuf,
}

fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = common::scratch("bad-input-checkpoints");
        let data = dir.join("data");
        let config = SynthConfig {
            train: 4,
            test: 2,
            size: (96, 96),
            seed: 5,
            empty_fraction: 0.0,
            ..SynthConfig::default()
        };
        write_dataset(&data, &config).expect("synthetic data");
        let run = dir.join("run");
        let out = tchcv(&train_args(&data, &run, &["--iters", "1"]));
        assert!(
            out.status.success(),
            "training the checkpoint: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut images: Vec<PathBuf> = std::fs::read_dir(data.join("JPEGImages"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        images.sort();
        Trained {
            checkpoint: run.join("last.safetensors"),
            image: images.remove(0),
            dir,
            data,
        }
    })
}

fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let model = common::repo().join("models/ssd_small.json");
    let mut args = vec![
        "train",
        "--data",
        s(data),
        "--sets",
        "trainval",
        "--model",
        s(&model),
        "--device",
        "cpu",
        "--workers",
        "1",
        "--batch",
        "2",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    args.into_iter().map(String::from).collect()
}

/// The first name under `prefix` (sorted).
fn first_key(tensors: &HashMap<String, Tensor>, prefix: &str) -> String {
    let mut keys: Vec<&String> = tensors.keys().filter(|k| k.starts_with(prefix)).collect();
    keys.sort();
    keys[0].clone()
}

/// A tensor of `t`'s dtype and another shape: `[0]` for "empty", `t` with a trailing 1 for
/// "rank", the first size + 1 for "shape".
fn reshaped(t: &Tensor, how: &str) -> Tensor {
    let opts = (t.kind(), t.device());
    match how {
        "empty" => Tensor::zeros([0], opts),
        "rank" => t.unsqueeze(-1),
        _ => {
            let mut size = t.size();
            size[0] += 1;
            Tensor::zeros(size.as_slice(), opts)
        }
    }
}

/// A damaged copy of the checkpoint: `(label, the tensors, what the error must name)`.
type Damage = (String, HashMap<String, Tensor>, Vec<String>);

/// `base` with the tensor `key` replaced by `t`, or with `None` moved to another name
/// (wrong-keyed).
fn damage(
    base: &HashMap<String, Tensor>,
    label: &str,
    key: &str,
    t: Option<Tensor>,
    names: &[&str],
) -> Damage {
    let mut tensors: HashMap<String, Tensor> = base
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    let old = tensors.remove(key).unwrap();
    match t {
        Some(t) => tensors.insert(key.to_string(), t),
        None => tensors.insert(format!("{key}_renamed"), old),
    };
    let names = names.iter().map(|s| s.to_string()).collect();
    (label.to_string(), tensors, names)
}

/// Damaged copies of the checkpoint's weights and run state (what every command reads).
fn damaged_checkpoints(base: &HashMap<String, Tensor>) -> Vec<Damage> {
    let weight = first_key(base, "model.");
    let w = weight.strip_prefix("model.").unwrap();
    let state = "meta.state_json";
    let (t, st) = (&base[&weight], &base[state]);
    vec![
        damage(base, "weight wrong-keyed", &weight, None, &[w]),
        damage(
            base,
            "weight dtype",
            &weight,
            Some(t.to_kind(Kind::Int64)),
            &[w, "dtype"],
        ),
        damage(
            base,
            "weight rank",
            &weight,
            Some(reshaped(t, "rank")),
            &[w],
        ),
        damage(
            base,
            "weight shape",
            &weight,
            Some(reshaped(t, "shape")),
            &[w],
        ),
        damage(
            base,
            "weight empty",
            &weight,
            Some(reshaped(t, "empty")),
            &[w],
        ),
        damage(
            base,
            "run state dtype",
            state,
            Some(st.to_kind(Kind::Float)),
            &[state],
        ),
        damage(
            base,
            "run state rank",
            state,
            Some(st.unsqueeze(0)),
            &[state],
        ),
        damage(
            base,
            "run state empty",
            state,
            Some(reshaped(st, "empty")),
            &["run state"],
        ),
    ]
}

/// Damaged copies of the optimizer state (what only `--resume` reads).
fn damaged_optimizer_states(base: &HashMap<String, Tensor>) -> Vec<Damage> {
    let buffer = first_key(base, "optim.momentum.");
    let b = buffer.strip_prefix("optim.").unwrap();
    let steps = "optim.steps";
    let (t, st) = (&base[&buffer], &base[steps]);
    vec![
        damage(base, "momentum wrong-keyed", &buffer, None, &[b]),
        damage(
            base,
            "momentum dtype",
            &buffer,
            Some(t.to_kind(Kind::Int64)),
            &[b],
        ),
        damage(
            base,
            "momentum shape",
            &buffer,
            Some(reshaped(t, "shape")),
            &[b],
        ),
        damage(
            base,
            "momentum empty",
            &buffer,
            Some(reshaped(t, "empty")),
            &[b],
        ),
        // (Was a panic: tch's int64_value on an empty tensor.)
        damage(
            base,
            "steps empty",
            steps,
            Some(reshaped(st, "empty")),
            &["steps"],
        ),
        damage(
            base,
            "steps dtype",
            steps,
            Some(st.to_kind(Kind::Float)),
            &["steps"],
        ),
    ]
}

#[test]
fn checkpoints_damaged_for_resume_eval_and_detect() {
    let t = trained();
    let base = common::read_safetensors(&t.checkpoint);
    let mut damages = damaged_checkpoints(&base);
    let resume_only = damaged_optimizer_states(&base);
    let mut cases = Vec::new();
    let root = t.dir.join("damaged");
    // Each damage in its own run folder (--resume reads OUT/last.safetensors).
    let folder = |label: &str, tensors: Option<&HashMap<String, Tensor>>| -> PathBuf {
        let run = root.join(label.replace(' ', "-"));
        std::fs::create_dir_all(&run).unwrap();
        let ckpt = run.join("last.safetensors");
        match tensors {
            Some(tensors) => write_safetensors(&ckpt, tensors),
            None => truncated_copy(&t.checkpoint, &ckpt),
        }
        run
    };
    // Truncated: the file itself is named.
    damages.insert(0, ("truncated".into(), HashMap::new(), Vec::new()));
    for (label, tensors, names) in &damages {
        let run = folder(label, (label != "truncated").then_some(tensors));
        let ckpt = run.join("last.safetensors");
        let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
        names.push(s(&ckpt));
        // --resume loads the weights as eval and detect do (io::load_into_varstore), after
        // opening the data: the slow cases run there once each kind of damage, not each shape.
        if !matches!(
            label.as_str(),
            "weight rank" | "weight shape" | "weight empty"
        ) {
            let resume = train_args(&t.data, &run, &["--iters", "2", "--resume"]);
            let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
            cases.push(case(format!("train --resume: {label}"), &resume, &names));
        }
        let detections = run.join("detections");
        cases.push(case(
            format!("eval --checkpoint: {label}"),
            &[
                "eval",
                "--data",
                s(&t.data),
                "--sets",
                "test",
                "--checkpoint",
                s(&ckpt),
                "--device",
                "cpu",
                "--out",
                s(&detections),
            ],
            &names,
        ));
        // detect reads the checkpoint as eval does (checkpoint::load_detector): the file and
        // its weights, not the run state again.
        if label.starts_with("run state") {
            continue;
        }
        let pictures = run.join("pictures");
        cases.push(case(
            format!("detect: {label}"),
            &[
                "detect",
                "--checkpoint",
                s(&ckpt),
                s(&t.image),
                "--device",
                "cpu",
                "--out",
                s(&pictures),
            ],
            &names,
        ));
    }
    for (label, tensors, names) in &resume_only {
        let run = folder(label, Some(tensors));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let resume = train_args(&t.data, &run, &["--iters", "2", "--resume"]);
        let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
        cases.push(case(format!("train --resume: {label}"), &resume, &names));
    }
    // A flag detect used to apply image by image (each image "skipped", exit 1).
    let pictures = t.dir.join("pictures-nan");
    cases.push(case(
        "detect --score nan",
        &[
            "detect",
            "--checkpoint",
            s(&t.checkpoint),
            s(&t.image),
            "--device",
            "cpu",
            "--score",
            "nan",
            "--out",
            s(&pictures),
        ],
        &["score_threshold"],
    ));
    expect_bad_input(cases);
}

#[test]
fn init_weights_damaged() {
    let t = trained();
    let checkpoint = common::read_safetensors(&t.checkpoint);
    // The backbone weights a user would convert: the checkpoint's extractor, without "model.".
    let backbone: HashMap<String, Tensor> = checkpoint
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("model.")?;
            name.starts_with("extractor.")
                .then(|| (name.to_string(), v.shallow_clone()))
        })
        .collect();
    let weight = first_key(&backbone, "extractor.");
    let dir = t.dir.join("init");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cases = Vec::new();
    let mut add = |label: &str, file: PathBuf, names: &[&str]| {
        let out = dir.join(format!("run-{}", label.replace(' ', "-")));
        let args = train_args(&t.data, &out, &["--iters", "1", "--init", s(&file)]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut names = names.to_vec();
        names.push(s(&file));
        cases.push(case(format!("train --init: {label}"), &args, &names));
    };
    let whole = dir.join("backbone.safetensors");
    write_safetensors(&whole, &backbone);
    let cut = dir.join("truncated.safetensors");
    truncated_copy(&whole, &cut);
    add("truncated", cut.clone(), &[]);
    let w = &backbone[&weight];
    for (label, tensors, names) in [
        damage(&backbone, "wrong-keyed", &weight, None, &[&weight]),
        damage(
            &backbone,
            "dtype",
            &weight,
            Some(w.to_kind(Kind::Int64)),
            &[&weight, "dtype"],
        ),
        damage(
            &backbone,
            "rank",
            &weight,
            Some(reshaped(w, "rank")),
            &[&weight],
        ),
        damage(
            &backbone,
            "shape",
            &weight,
            Some(reshaped(w, "shape")),
            &[&weight],
        ),
        damage(
            &backbone,
            "empty",
            &weight,
            Some(reshaped(w, "empty")),
            &[&weight],
        ),
    ] {
        let file = dir.join(format!("{label}.safetensors"));
        write_safetensors(&file, &tensors);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        add(&label, file, &names);
    }
    // The same weights as .npz, truncated.
    let named: Vec<(&str, &Tensor)> = backbone.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let npz = dir.join("backbone.npz");
    Tensor::write_npz(&named, &npz).unwrap();
    let cut_npz = dir.join("truncated.npz");
    truncated_copy(&npz, &cut_npz);
    add("truncated npz", cut_npz, &[]);
    expect_bad_input(cases);
}
