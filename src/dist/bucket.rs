//! Buckets: many small tensors travel as a few flat ones (PyTorch DDP's reducer does the
//! same, with `bucket_cap_mb = 25`).

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

/// Groups of consecutive indices into `tensors`, each of one dtype and device and at most
/// `cap_bytes` (a tensor larger than the cap gets a bucket of its own).
pub(crate) fn plan_buckets(tensors: &[Tensor], cap_bytes: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0usize;
    let mut key: Option<(Kind, Device)> = None;
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let this = (t.kind(), t.device());
        let fits = key == Some(this) && bytes + size <= cap_bytes;
        if !current.is_empty() && !fits {
            buckets.push(std::mem::take(&mut current));
            bytes = 0;
        }
        key = Some(this);
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        buckets.push(current);
    }
    buckets
}

/// The tensors of each bucket flattened into one contiguous 1-D tensor on `device`.
pub(crate) fn flatten(
    tensors: &[Tensor],
    buckets: &[Vec<usize>],
    device: Device,
) -> Result<Vec<Tensor>> {
    buckets
        .iter()
        .map(|bucket| {
            let parts: Vec<&Tensor> = bucket.iter().map(|&i| &tensors[i]).collect();
            let flat = Tensor::f_flatten_dense_tensors(&parts)
                .context("flattening a bucket of tensors")?;
            flat.f_to_device(device)
                .context("moving a bucket to the communication device")
        })
        .collect()
}

/// Copy each flat bucket back into its tensors, in place (under no_grad).
pub(crate) fn unflatten_into(
    tensors: &[Tensor],
    buckets: &[Vec<usize>],
    flats: &[Tensor],
) -> Result<()> {
    let _no_grad = tch::no_grad_guard();
    for (bucket, flat) in buckets.iter().zip(flats) {
        let parts: Vec<&Tensor> = bucket.iter().map(|&i| &tensors[i]).collect();
        let flat = flat
            .f_to_device(parts[0].device())
            .context("moving a bucket back")?;
        let pieces = Tensor::f_unflatten_dense_tensors(&flat, &parts)
            .context("unflattening a bucket of tensors")?;
        for (piece, target) in pieces.iter().zip(&parts) {
            let mut target = target.shallow_clone();
            target
                .f_copy_(piece)
                .context("copying a reduced tensor back")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(n: i64) -> Tensor {
        Tensor::zeros([n], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn buckets_fill_up_to_the_cap_and_split_on_dtype() {
        let t = [
            f32s(10),                                        // 40 B
            f32s(10),                                        // 40 B -> 80
            f32s(10),                                        // would be 120 > 100: new bucket
            Tensor::zeros([3], (Kind::Double, Device::Cpu)), // other dtype: new bucket
            f32s(100),                                       // 400 B > cap: alone
            f32s(1),
        ];
        assert_eq!(
            plan_buckets(&t, 100),
            vec![vec![0, 1], vec![2], vec![3], vec![4], vec![5]]
        );
        assert_eq!(plan_buckets(&t[..3], 1 << 20), vec![vec![0, 1, 2]]);
        assert!(plan_buckets(&[], 100).is_empty());
    }

    #[test]
    fn flatten_and_unflatten_round_trip() {
        let a = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
        let b = Tensor::from_slice(&[7.0f32, 8.0]);
        let tensors = [a.copy(), b.copy()];
        let buckets = plan_buckets(&tensors, 1 << 20);
        let flats = flatten(&tensors, &buckets, Device::Cpu).unwrap();
        assert_eq!(flats.len(), 1);
        assert_eq!(flats[0].size(), [8]);
        let doubled = [&flats[0] * 2.0];
        unflatten_into(&tensors, &buckets, &doubled).unwrap();
        assert!(tensors[0].equal(&(&a * 2.0)));
        assert!(tensors[1].equal(&(&b * 2.0)));
    }
}
