//! The operator counter (`tchcv::device::op_count`): it sees what libtorch dispatches, on the
//! calling thread and the autograd engine's, and it counts a region exactly as torch.profiler
//! does for the same region in PyTorch (`tests/reference/op_count_region.py`), which is what
//! makes the operator counts of `tchcv bench loss` comparable across the two sides.
//!
//! The counter is process-wide, so every test here holds one lock (cargo runs tests of a binary
//! on parallel threads).

mod common;

use std::sync::{Mutex, MutexGuard};

use tch::{Kind, Reduction, Tensor};
use tchcv::device::op_count::{count_ops, OpCounts};

static COUNTER: Mutex<()> = Mutex::new(());

fn counter_lock() -> MutexGuard<'static, ()> {
    COUNTER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The region of tests/reference/op_count_region.py: cross entropy over [64, 21] logits with an
/// ignored label (-1), its sum over dim 0, a mask's nonzero, a scalar read back, and the
/// backward pass.
fn reference_region() -> OpCounts {
    tch::manual_seed(0);
    let logits = Tensor::randn([64, 21], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let labels = Tensor::randint_low(-1, 21, [64], (Kind::Int64, tch::Device::Cpu));
    let (_, counts) = count_ops(|| {
        let ce = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::None, -1, 0.0);
        let total = ce.sum_dim_intlist(0, false, Kind::Float);
        let positives = labels.gt(0).nonzero();
        let value = total.double_value(&[]);
        total.backward();
        Ok((value, positives))
    })
    .unwrap();
    counts
}

#[test]
fn counts_the_calls_of_a_region_with_their_children() {
    let _lock = counter_lock();
    let counts = reference_region();
    assert_eq!(counts.calls_of("aten::cross_entropy_loss"), 1);
    assert_eq!(counts.calls_of("aten::nonzero"), 1);
    // double_value reads one scalar back: one wait for the device, with nonzero's.
    assert_eq!(counts.calls_of("aten::_local_scalar_dense"), 1);
    assert_eq!(counts.host_syncs(), 2);
    let ce = counts
        .calls
        .iter()
        .find(|c| c.name == "aten::cross_entropy_loss")
        .unwrap();
    assert_eq!(ce.children, ["aten::log_softmax", "aten::nll_loss_nd"]);
    // The backward pass is counted too (the engine's calls).
    assert_eq!(counts.calls_of("aten::_log_softmax_backward_data"), 1);
    assert!(counts.ops() > 20, "{} ops", counts.ops());
    // Nothing outside a region is counted.
    let (_, none) = count_ops(|| Ok(())).unwrap();
    assert_eq!(none.ops(), 0);
}

#[test]
fn a_count_inside_a_count_is_an_error_and_counting_goes_on() {
    let _lock = counter_lock();
    let outer = count_ops(|| {
        let inner = count_ops(|| Ok(()));
        let message = format!("{:#}", inner.unwrap_err());
        assert!(message.contains("already running"), "{message}");
        let t = Tensor::ones([3], (Kind::Float, tch::Device::Cpu));
        Ok(t.exp())
    });
    let (_, counts) = outer.unwrap();
    assert_eq!(counts.calls_of("aten::exp"), 1);
    let (_, again) = count_ops(|| Ok(Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)))).unwrap();
    assert_eq!(again.calls_of("aten::zeros"), 1);
}

/// tchcv's count of the region equals torch.profiler's in PyTorch: the same ATen calls, in the
/// same order, with the same children.
#[test]
fn counts_the_same_calls_as_torch_profiler() {
    let _lock = counter_lock();
    let ours = reference_region();
    let json = common::run_reference("op_count_region.py", &[]);
    let value: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let theirs = OpCounts::from_json(&value).unwrap();
    let aten = |c: &OpCounts| {
        c.calls
            .iter()
            .filter(|call| call.name.starts_with("aten::"))
            .map(|call| {
                let children: Vec<&str> = call
                    .children
                    .iter()
                    .map(String::as_str)
                    .filter(|n| n.starts_with("aten::"))
                    .collect();
                format!("{} <- {:?}", call.name, children)
            })
            .collect::<Vec<_>>()
    };
    let (ours_aten, theirs_aten) = (aten(&ours), aten(&theirs));
    assert_eq!(
        ours_aten, theirs_aten,
        "tchcv's operator calls (left) differ from torch.profiler's (right)"
    );
    assert_eq!(ours.ops(), theirs.ops());
    assert_eq!(ours.host_syncs(), theirs.host_syncs());
}

#[test]
fn malformed_python_counts_are_errors() {
    for bad in [
        serde_json::json!({}),
        serde_json::json!([["aten::add"]]),
        serde_json::json!([["aten::add", [1]]]),
    ] {
        assert!(OpCounts::from_json(&bad).is_err(), "{bad}");
    }
}

/// Each loss reads back everything the host needs in one transfer: one forward + backward of
/// each waits for the device once (`tchcv::read_back`), with ignored anchors in the batch too
/// (the focal losses then select the valid rows), with the finite check on and off.
#[test]
fn every_loss_waits_for_the_device_once() {
    use tchcv::loss::{LossInputs, LossKind};
    let _lock = counter_lock();
    let cpu = tch::Device::Cpu;
    tch::manual_seed(3);
    let (n, a) = (3, 500);
    for (kind, c) in [
        (LossKind::Ssd, 6),
        (LossKind::Focal, 5),
        (LossKind::SoftmaxFocal, 6),
    ] {
        let max_label = if kind.has_background_column() {
            c - 1
        } else {
            c
        };
        let loc_targets = Tensor::randn([n, a, 4], (Kind::Float, cpu));
        let loc_preds = Tensor::randn([n, a, 4], (Kind::Float, cpu)).set_requires_grad(true);
        let cls_preds = Tensor::randn([n, a, c], (Kind::Float, cpu)).set_requires_grad(true);
        let is_pos = Tensor::rand([n, a], (Kind::Float, cpu)).lt(0.05);
        let ignored = Tensor::rand([n, a], (Kind::Float, cpu)).lt(0.05);
        let labels = Tensor::randint_low(1, max_label + 1, [n, a], (Kind::Int64, cpu));
        let cls_targets = (labels * is_pos.to_kind(Kind::Int64)).masked_fill(&ignored, -1);
        let inputs = LossInputs {
            loc_preds: &loc_preds,
            loc_targets: &loc_targets,
            cls_preds: &cls_preds,
            cls_targets: &cls_targets,
        };
        // The finite check's counts travel with the others: no extra wait either way.
        for check_finite in [false, true] {
            let loss = kind
                .build(serde_json::json!({ "check_finite": check_finite }))
                .unwrap();
            let (out, counts) = count_ops(|| {
                let out = loss.forward(&inputs)?;
                out.total.backward();
                Ok(out)
            })
            .unwrap();
            assert!(out.num_pos > 0, "{kind:?}: the case has positives");
            assert_eq!(
                (counts.calls_of("tchcv::read_back"), counts.host_syncs()),
                (1, 1),
                "{kind:?} (check_finite {check_finite}): expected one read back and no other \
                 wait for the device"
            );
        }
    }
}
