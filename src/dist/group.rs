//! [`ProcessGroup`]: a store, a c10d backend and the collectives a data-parallel training step
//! needs, with failures that name the missing rank.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tch::{nn::VarStore, Device, Tensor};

use super::bucket;
use super::config::{Backend, DistConfig};
use super::health::{self, Heartbeat};
use super::shim::{self, Comm, Store};

/// How [`ProcessGroup::all_reduce_gradients`] combines the ranks' gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradReduction {
    /// The sum over ranks: right when each rank's loss is its share of one global loss (the
    /// detection losses normalised by [`global_normalizer`](super::global_normalizer)).
    Sum,
    /// The mean over ranks (PyTorch DDP): right when each rank's loss is a mean over its own
    /// batch.
    Average,
}

/// One process's membership in a distributed run: collectives over c10d (Gloo or NCCL), a
/// TCPStore for rendezvous and health keys, and a heartbeat thread.
///
/// Every collective is bounded by the config's timeout. When one fails, the error names the
/// rank that stopped, never joined, or did not reach the collective (see `health.rs`), and the
/// group refuses further collectives. Call [`finish`](Self::finish) at the end of a run; a group
/// that is merely dropped still shuts down, without the final barrier.
pub struct ProcessGroup {
    comm: Option<Comm>,
    heartbeat: Option<Heartbeat>,
    /// Our keys (`tchcv/...`); the backend has its own prefix.
    store: Store,
    config: DistConfig,
    backend: Backend,
    device: Device,
    seq: Cell<u64>,
    failure: RefCell<Option<String>>,
    /// False once a diagnosis found the store gone: then nothing more is asked of it.
    store_reachable: Cell<bool>,
    interval: Duration,
}

fn describe(config: &DistConfig) -> String {
    format!(
        "rank {} of {} (store {})",
        config.rank,
        config.world_size,
        config.master()
    )
}

impl ProcessGroup {
    /// Join the run described by `config`, for tensors on `device` (the backend follows the
    /// device unless the config names one). Blocks until every rank joined, or fails after the
    /// timeout naming the ranks that did not.
    pub fn new(config: &DistConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let backend = config.backend_for(device);
        check_backend(backend, device)?;
        let who = describe(config);
        let agent = config.agent_store_prefix.is_some();
        // Rank 0 does not wait for the others here: creating the backend below does (within
        // the timeout), and its failure is explained with the store's join keys.
        let root = Store::tcp(
            &config.master_addr,
            config.master_port,
            !agent && config.rank == 0,
            config.world_size,
            false,
            config.timeout,
        )
        .with_context(|| {
            if agent {
                format!("{who}: connecting to torchrun's store")
            } else if config.rank == 0 {
                format!("{who}: hosting the store")
            } else {
                format!(
                    "{who}: connecting to the store hosted by rank 0 (waited {:.0} s)",
                    config.timeout.as_secs_f64()
                )
            }
        })?;
        let root = match &config.agent_store_prefix {
            Some(prefix) => root.prefixed(prefix)?,
            None => root,
        };
        let store = root.prefixed("tchcv/")?;
        let interval = health::heartbeat_interval(config.timeout);
        store.set(
            &health::progress_key(config.rank),
            health::progress_value(0, "join").as_bytes(),
        )?;
        let heartbeat = Heartbeat::start(store.try_clone()?, config.rank, interval);
        let mut group = Self {
            comm: None,
            heartbeat: Some(heartbeat),
            store,
            config: config.clone(),
            backend,
            device,
            seq: Cell::new(0),
            failure: RefCell::new(None),
            store_reachable: Cell::new(true),
            interval,
        };
        let backend_store = root.prefixed("c10d/")?;
        let comm = group.collective("create the process group", |_| match backend {
            Backend::Gloo => Comm::gloo(
                &backend_store,
                config.rank,
                config.world_size,
                config.timeout,
            ),
            Backend::Nccl => Comm::nccl(
                &backend_store,
                config.rank,
                config.world_size,
                config.timeout,
                cuda_index(device),
            ),
        })?;
        group.comm = Some(comm);
        Ok(group)
    }

    /// Join the run torchrun (or the `WORLD_SIZE`, `RANK`, ... variables) describes, on
    /// `device`; `Ok(None)` when the process was not launched that way.
    pub fn from_env(device: Device) -> Result<Option<Self>> {
        match DistConfig::from_env()? {
            Some(config) => Self::new(&config, device).map(Some),
            None => Ok(None),
        }
    }

    pub fn rank(&self) -> usize {
        self.config.rank
    }

    pub fn world_size(&self) -> usize {
        self.config.world_size
    }

    pub fn local_rank(&self) -> usize {
        self.config.local_rank
    }

    /// Rank 0: the process that writes logs, metrics and checkpoints.
    pub fn is_main(&self) -> bool {
        self.config.rank == 0
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn config(&self) -> &DistConfig {
        &self.config
    }

    /// Where collectives run: the CPU for Gloo, the group's CUDA device for NCCL.
    pub fn comm_device(&self) -> Device {
        match self.backend {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => self.device,
        }
    }

    /// Run collective `name` through the backend: record it in the store first, and on failure
    /// explain it (which rank is missing) and refuse further collectives.
    fn collective<T>(&self, name: &str, run: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        if let Some(earlier) = self.failure.borrow().as_ref() {
            bail!(
                "rank {}: {name}: the process group failed earlier and cannot be used again \
                 ({earlier})",
                self.config.rank
            );
        }
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let started = Instant::now();
        let outcome = self
            .store
            .set(
                &health::progress_key(self.config.rank),
                health::progress_value(seq, name).as_bytes(),
            )
            .and_then(|()| run(self));
        outcome.map_err(|error| self.fail(seq, name, started, error))
    }

    fn fail(&self, seq: u64, name: &str, started: Instant, error: anyhow::Error) -> anyhow::Error {
        let failed_after = started.elapsed().as_secs_f64();
        let me = self.config.rank;
        let first_line = format!("{error:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let _ = self.store.set(
            &health::failed_key(me),
            format!("at #{seq} ({name}): {first_line}").as_bytes(),
        );
        let diagnosis = health::diagnose(
            &self.store,
            me,
            self.config.world_size,
            seq,
            name,
            self.interval,
            self.config.agent_store_prefix.is_some(),
        );
        let message = format!(
            "rank {me} of {}: collective #{seq} ({name}, {} backend) failed after {:.1} s \
             (timeout {:.0} s): {}. Backend error: {first_line}",
            self.config.world_size,
            self.backend.name(),
            failed_after,
            self.config.timeout.as_secs_f64(),
            diagnosis.text
        );
        self.store_reachable.set(diagnosis.store_reachable);
        *self.failure.borrow_mut() = Some(format!("collective #{seq} ({name})"));
        anyhow!(message)
    }

    fn comm(&self) -> Result<&Comm> {
        self.comm
            .as_ref()
            .ok_or_else(|| anyhow!("the process group has no backend"))
    }

    /// Sum `tensors` over all ranks, in place. They travel bucketed (one collective call).
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()> {
        self.reduce_bucketed("all-reduce (sum)", tensors, None)
    }

    /// Sum plain numbers over all ranks (as f64; exact for counts below 2^53).
    pub fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        let t = Tensor::f_from_slice(values)?.f_to_device(self.comm_device())?;
        self.collective("all-reduce (numbers)", |g| {
            g.comm()?
                .all_reduce_sum(std::slice::from_ref(&t), g.config.timeout)
        })?;
        let summed = Vec::<f64>::try_from(&t.f_to_device(Device::Cpu)?)?;
        values.copy_from_slice(&summed);
        Ok(())
    }

    /// Flatten `tensors` into buckets, sum them over ranks, scale by `scale` (when given) and
    /// copy back.
    fn reduce_bucketed(&self, name: &str, tensors: &[Tensor], scale: Option<f64>) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let buckets = bucket::plan_buckets(tensors, self.config.bucket_bytes);
        let flats = bucket::flatten(tensors, &buckets, self.comm_device())?;
        let label = format!("{name}, {} bucket(s)", buckets.len());
        self.collective(&label, |g| {
            g.comm()?.all_reduce_sum(&flats, g.config.timeout)
        })?;
        let flats = match scale {
            Some(s) => flats.iter().map(|f| f * s).collect(),
            None => flats,
        };
        bucket::unflatten_into(tensors, &buckets, &flats)
    }

    /// Combine the gradients of `params` over ranks (in place, bucketed). A parameter without a
    /// gradient gets a zero one first, so every rank sends the same layout.
    pub fn all_reduce_gradients(&self, params: &[Tensor], reduction: GradReduction) -> Result<()> {
        let mut grads = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let mut grad = p.grad();
            if !grad.defined() {
                grad = p.f_zeros_like()?;
                shim::set_grad(p, &grad)
                    .with_context(|| format!("giving parameter #{i} a zero gradient"))?;
            }
            grads.push(grad);
        }
        let scale = match reduction {
            GradReduction::Sum => None,
            GradReduction::Average => Some(1.0 / self.config.world_size as f64),
        };
        self.reduce_bucketed("all-reduce gradients", &grads, scale)
    }

    /// [`all_reduce_gradients`](Self::all_reduce_gradients) over a VarStore's trainable
    /// variables, in name order.
    pub fn all_reduce_varstore_gradients(
        &self,
        vs: &VarStore,
        reduction: GradReduction,
    ) -> Result<()> {
        let params: Vec<Tensor> = sorted_variables(vs)
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(_, t)| t)
            .collect();
        self.all_reduce_gradients(&params, reduction)
    }

    /// Overwrite `tensors` on every rank with rank 0's (in place, bucketed).
    pub fn broadcast_from_main(&self, tensors: &[Tensor]) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let buckets = bucket::plan_buckets(tensors, self.config.bucket_bytes);
        let flats = bucket::flatten(tensors, &buckets, self.comm_device())?;
        let label = format!("broadcast from rank 0, {} bucket(s)", buckets.len());
        self.collective(&label, |g| g.comm()?.broadcast(&flats, 0, g.config.timeout))?;
        if self.is_main() {
            return Ok(());
        }
        bucket::unflatten_into(tensors, &buckets, &flats)
    }

    /// Give every rank rank 0's variables: parameters and buffers (BatchNorm statistics), in
    /// name order. Fails on every rank, naming the ranks, when some rank's VarStore has other
    /// names, shapes or dtypes than rank 0's.
    pub fn broadcast_varstore(&self, vs: &VarStore) -> Result<()> {
        let variables = sorted_variables(vs);
        self.check_same_layout(&variables)?;
        let tensors: Vec<Tensor> = variables.into_iter().map(|(_, t)| t).collect();
        self.broadcast_from_main(&tensors)
    }

    /// All ranks learn which ranks' variables differ from rank 0's.
    fn check_same_layout(&self, variables: &[(String, Tensor)]) -> Result<()> {
        let mine = layout_fingerprint(variables);
        let fingerprint = Tensor::from_slice(&[mine]).to_device(self.comm_device());
        self.collective("broadcast the model layout", |g| {
            g.comm()?
                .broadcast(std::slice::from_ref(&fingerprint), 0, g.config.timeout)
        })?;
        let differs = fingerprint.int64_value(&[0]) != mine;
        let mut flags = vec![0.0; self.config.world_size];
        flags[self.config.rank] = if differs { 1.0 } else { 0.0 };
        self.all_reduce_f64(&mut flags)?;
        let odd: Vec<usize> = (0..flags.len()).filter(|&r| flags[r] > 0.0).collect();
        if !odd.is_empty() {
            bail!(
                "rank {}: the model of rank(s) {odd:?} has other variables (names, shapes or \
                 dtypes) than rank 0's; every rank must build the same model ({} variables here)",
                self.config.rank,
                variables.len()
            );
        }
        Ok(())
    }

    /// Wait until every rank gets here (within the group's timeout).
    pub fn barrier(&self) -> Result<()> {
        self.barrier_within(self.config.timeout)
    }

    /// Wait until every rank gets here, for up to `timeout`: after work that only some ranks
    /// do (rank 0 evaluating or writing a checkpoint), which can outlast the group's timeout.
    pub fn barrier_within(&self, timeout: Duration) -> Result<()> {
        self.barrier_named("barrier", timeout)
    }

    fn barrier_named(&self, name: &str, timeout: Duration) -> Result<()> {
        let device = match self.backend {
            Backend::Nccl => Some(cuda_index(self.device)),
            Backend::Gloo => None,
        };
        self.collective(name, |g| g.comm()?.barrier(device, timeout))
    }

    /// End the run: a last barrier, then shut down. The rank that hosts the store waits for the
    /// others to let go of it first.
    pub fn finish(self) -> Result<()> {
        self.barrier_named("finish", self.config.timeout)
    }

    fn hosts_store(&self) -> bool {
        self.config.rank == 0 && self.config.agent_store_prefix.is_none()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(mut heartbeat) = self.heartbeat.take() {
            heartbeat.stop();
        }
        let me = self.config.rank;
        let store_reachable = self.store_reachable.get();
        if store_reachable {
            let _ = self.store.set(&health::closed_key(me), b"1");
        }
        // Shut the backend down before the store it uses can go away.
        drop(self.comm.take());
        if store_reachable && self.hosts_store() {
            let limit = if self.failure.borrow().is_some() {
                self.config.timeout + self.interval * 6
            } else {
                self.config.timeout
            };
            health::wait_for_others_to_close(
                &self.store,
                me,
                self.config.world_size,
                self.seq.get(),
                self.interval,
                limit,
            );
        }
    }
}

/// A VarStore's variables sorted by name (the order every rank agrees on).
fn sorted_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

/// FNV-1a over names, dtypes and shapes, as an i64.
fn layout_fingerprint(variables: &[(String, Tensor)]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, t) in variables {
        let text = format!("{name}:{:?}:{:?};", t.kind(), t.size());
        for byte in text.bytes() {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash as i64
}

fn cuda_index(device: Device) -> usize {
    match device {
        Device::Cuda(i) => i,
        _ => 0,
    }
}

/// Errors for a backend that is not compiled in or does not fit the device.
fn check_backend(backend: Backend, device: Device) -> Result<()> {
    let (gloo, nccl) = shim::compiled_backends();
    if !gloo {
        bail!(
            "tchcv was built without distributed support: {} (rebuild after scripts/setup)",
            super::build_note()
        );
    }
    match backend {
        Backend::Nccl if !nccl => bail!(
            "the NCCL backend is not compiled in: {} (Gloo is: use --dist-backend gloo)",
            super::build_note()
        ),
        Backend::Nccl if !matches!(device, Device::Cuda(_)) => crate::bail_input!(
            "the NCCL backend needs a CUDA device, but the device is {}",
            crate::device::device_name(device)
        ),
        _ => Ok(()),
    }
}
