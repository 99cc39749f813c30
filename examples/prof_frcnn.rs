use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};
use tchcv::bbox::rcnn::RoiSamplerConfig;
use tchcv::loss::{RcnnLoss, RcnnLossInputs};
use tchcv::models::faster_rcnn::BatchTruth;
use tchcv::models::Detector;
use tchcv::spec::ModelSpec;

fn main() {
    let spec = ModelSpec::load(std::path::Path::new("models/faster_rcnn_r50_fpn.json")).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = tchcv::models::build(vs.root(), &spec, 20).unwrap();
    let frcnn = model.two_stage().unwrap();
    let images = Tensor::randn([2, 3, 800, 800], (Kind::Float, Device::Cpu));
    let boxes = vec![vec![[10.0f32, 20.0, 300.0, 400.0], [400.0, 400.0, 700.0, 650.0]]; 2];
    let labels = vec![vec![1i64, 2]; 2];
    let crowd = vec![vec![false; 2]; 2];
    let truth = BatchTruth {
        boxes: &boxes,
        labels: &labels,
        crowd: &crowd,
    };
    let loss = RcnnLoss::new(Default::default()).unwrap();
    let sampler = RoiSamplerConfig::default();
    let rpn_loss = tchcv::loss::LossKind::Rpn
        .build(serde_json::json!({"sampler": "random", "check_finite": false}))
        .unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        let (cls_t, loc_t) = frcnn.rpn_coder().label_batch(&boxes).unwrap();
        let lab = t.elapsed().as_secs_f64();
        let (d, o) = frcnn.forward_t(&images, true).unwrap();
        let t = Instant::now();
        let rl = rpn_loss
            .forward(&tchcv::loss::LossInputs {
                loc_preds: &d,
                loc_targets: &loc_t,
                cls_preds: &o,
                cls_targets: &cls_t,
            })
            .unwrap();
        println!(
            "label_batch {lab:.2}s rpn loss {:.2}s {}",
            t.elapsed().as_secs_f64(),
            rl.total.double_value(&[])
        );
        let t = Instant::now();
        let (d, o) = frcnn.forward_t(&images, true).unwrap();
        let a = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let c = frcnn.rpn_coder();
        let p = c
            .propose(&d, &o.squeeze_dim(2), &c.proposal_config(true))
            .unwrap();
        let b = t.elapsed().as_secs_f64();
        let t = Instant::now();
        (d.sum(Kind::Float) + o.sum(Kind::Float)).backward();
        let bb = t.elapsed().as_secs_f64();
        println!(
            "rpn fwd {a:.2}s propose {b:.2}s ({} {}) rpn bwd {bb:.2}s",
            p[0].len(),
            p[1].len()
        );
        let t = Instant::now();
        let out = frcnn
            .forward_train(&images, truth, &sampler, &loss, &[0], [0, 1])
            .unwrap();
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let l = loss
            .forward(&RcnnLossInputs {
                class_logits: &out.class_logits,
                box_regression: &out.box_regression,
                labels: &out.labels,
                regression_targets: &out.regression_targets,
            })
            .unwrap();
        (l.total + out.rpn_deltas.sum(Kind::Float) + out.objectness.sum(Kind::Float)).backward();
        println!(
            "forward_train {f:.2}s backward {:.2}s rois {}",
            t.elapsed().as_secs_f64(),
            out.labels.size()[0]
        );
    }
}
