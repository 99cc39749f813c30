//! From matched detections to pycocotools' `precision [T, R, K, A, M]` and `recall [T, K, A, M]`
//! tables (its `accumulate`; semantics in [`super`]).

use std::cmp::Ordering;

use super::matching::{CategoryMatches, FP, TP};
use super::CocoParams;

/// numpy's `np.spacing(1)`, which pycocotools adds to `tp + fp`.
const EPS: f64 = f64::EPSILON;

/// The tables being filled, one category at a time, with buffers kept between categories.
pub(super) struct Accumulator {
    /// `(T, R, K, A, M)`.
    dims: [usize; 5],
    recall_thresholds: Vec<f64>,
    max_dets: Vec<usize>,
    precision: Vec<f64>,
    recall: Vec<f64>,
    /// The category's detections sorted by score: their ranks and statuses `[D, A, T]`.
    ranks: Vec<u32>,
    status: Vec<u8>,
    order: Vec<usize>,
    rc: Vec<f64>,
    pr: Vec<f64>,
}

impl Accumulator {
    pub(super) fn new(params: &CocoParams, k_total: usize) -> Self {
        let dims = params.dims(k_total);
        let [t, r, k, a, m] = dims;
        Self {
            dims,
            recall_thresholds: params.recall_thresholds.clone(),
            max_dets: params.max_detections.clone(),
            precision: vec![-1.0; t * r * k * a * m],
            recall: vec![-1.0; t * k * a * m],
            ranks: Vec::new(),
            status: Vec::new(),
            order: Vec::new(),
            rc: Vec::new(),
            pr: Vec::new(),
        }
    }

    /// `(precision [T, R, K, A, M], recall [T, K, A, M])`.
    pub(super) fn into_tables(self) -> (Vec<f64>, Vec<f64>) {
        (self.precision, self.recall)
    }

    /// Fill category `k`'s entries from its matches.
    pub(super) fn category(&mut self, k: usize, matches: &CategoryMatches) {
        if !matches.any {
            return;
        }
        self.sort(matches);
        let [n_t, _, _, n_a, n_m] = self.dims;
        for a in 0..n_a {
            let n_pos = matches.n_positive[a];
            if n_pos == 0 {
                continue;
            }
            for m in 0..n_m {
                for t in 0..n_t {
                    self.curve(a, t, self.max_dets[m], n_pos);
                    self.store(k, a, m, t);
                }
            }
        }
    }

    /// The category's detections over all images ordered by score, highest first, ties in
    /// image order then rank (a stable sort of the concatenation, as numpy's mergesort).
    fn sort(&mut self, matches: &CategoryMatches) {
        let scores = &matches.scores;
        self.order.clear();
        self.order.extend(0..scores.len());
        self.order
            .sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(Ordering::Equal));
        let stride = self.dims[0] * self.dims[3];
        self.ranks.clear();
        self.status.clear();
        for &j in &self.order {
            self.ranks.push(matches.ranks[j]);
            self.status
                .extend_from_slice(&matches.status[j * stride..(j + 1) * stride]);
        }
    }

    /// Recall and precision after each counted detection (ignored ones are left out: they repeat
    /// the previous point, which changes neither the envelope nor the interpolation), then the
    /// precision made non-increasing from the right.
    fn curve(&mut self, a: usize, t: usize, max_det: usize, n_pos: usize) {
        let stride = self.dims[0] * self.dims[3];
        let at = a * self.dims[0] + t;
        let n_pos = n_pos as f64;
        let (mut tp, mut fp) = (0.0f64, 0.0f64);
        self.rc.clear();
        self.pr.clear();
        for (j, &rank) in self.ranks.iter().enumerate() {
            if rank as usize >= max_det {
                continue;
            }
            match self.status[j * stride + at] {
                TP => tp += 1.0,
                FP => fp += 1.0,
                _ => continue,
            }
            self.rc.push(tp / n_pos);
            self.pr.push(tp / (fp + tp + EPS));
        }
        for i in (1..self.pr.len()).rev() {
            if self.pr[i] > self.pr[i - 1] {
                self.pr[i - 1] = self.pr[i];
            }
        }
    }

    /// Write recall and the interpolated precision of the current curve at `(k, a, m, t)`.
    fn store(&mut self, k: usize, a: usize, m: usize, t: usize) {
        let [_, n_r, n_k, n_a, n_m] = self.dims;
        self.recall[((t * n_k + k) * n_a + a) * n_m + m] = self.rc.last().copied().unwrap_or(0.0);
        // numpy's searchsorted(rc, r, side='left'): the first i with rc[i] >= r.
        let mut i = 0;
        for (ri, &r) in self.recall_thresholds.iter().enumerate() {
            while i < self.rc.len() && self.rc[i] < r {
                i += 1;
            }
            let q = if i < self.pr.len() { self.pr[i] } else { 0.0 };
            self.precision[(((t * n_r + ri) * n_k + k) * n_a + a) * n_m + m] = q;
        }
    }
}
