//! Who this process is in a distributed run: world size, rank, the store's address, the backend
//! and the timeout, from torchrun's environment variables or given explicitly.

use std::time::Duration;

use anyhow::Result;
use tch::Device;

use crate::bail_input;

/// The c10d backend that carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// ProcessGroupGloo: CPU tensors, over TCP.
    Gloo,
    /// ProcessGroupNCCL: CUDA tensors.
    Nccl,
}

impl Backend {
    /// The backend PyTorch would pick for `device`: NCCL for CUDA, Gloo otherwise.
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Self::Nccl,
            _ => Self::Gloo,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gloo => "gloo",
            Self::Nccl => "nccl",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gloo" => Ok(Self::Gloo),
            "nccl" => Ok(Self::Nccl),
            _ => Err(crate::bad_input(format!(
                "distributed backend {s:?}: expected gloo or nccl"
            ))),
        }
    }
}

/// The default timeout of the store and of every collective.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The default gradient bucket size (PyTorch DDP's `bucket_cap_mb = 25`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// One process's place in a distributed run.
#[derive(Debug, Clone, PartialEq)]
pub struct DistConfig {
    /// Processes in the run (`WORLD_SIZE`).
    pub world_size: usize,
    /// This process, `0 .. world_size` (`RANK`); rank 0 is the main process.
    pub rank: usize,
    /// This process among those of its machine (`LOCAL_RANK`): its CUDA device.
    pub local_rank: usize,
    /// The host of the store (`MASTER_ADDR`).
    pub master_addr: String,
    /// The store's port (`MASTER_PORT`).
    pub master_port: u16,
    /// `None`: chosen from the device ([`Backend::for_device`]).
    pub backend: Option<Backend>,
    /// Bounds connecting, the start-up rendezvous and every collective; a rank that dies or
    /// hangs makes the others fail after about this long.
    pub timeout: Duration,
    /// Gradients are all-reduced in buckets of about this many bytes.
    pub bucket_bytes: usize,
    /// `Some(prefix)` when torchrun's agent already hosts the store at the master address
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`): every rank connects as a client and keeps its keys
    /// under `prefix` (`/worker/attempt_<restart>`, as PyTorch does). `None`: rank 0 hosts it.
    pub agent_store_prefix: Option<String>,
}

/// `ADDR:PORT` (IPv6 as `[ADDR]:PORT`) into its parts.
pub fn parse_master(master: &str) -> Result<(String, u16)> {
    let Some((host, port)) = master.rsplit_once(':') else {
        bail_input!("--master {master:?}: expected ADDR:PORT, e.g. 127.0.0.1:29500");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail_input!("--master {master:?}: the address is empty");
    }
    Ok((host.to_string(), parse_port("--master", port)?))
}

fn parse_port(what: &str, port: &str) -> Result<u16> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => bail_input!("{what}: port {port:?} is not a number in 1..=65535"),
    }
}

fn parse_count(name: &str, value: &str) -> Result<usize> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| crate::bad_input(format!("{name}={value:?}: expected a whole number")))
}

impl DistConfig {
    /// Rank `rank` of `world_size`, with the store at `master` (`ADDR:PORT`, hosted by rank 0);
    /// `LOCAL_RANK` is taken to be the rank (one machine).
    pub fn explicit(world_size: usize, rank: usize, master: &str) -> Result<Self> {
        let (master_addr, master_port) = parse_master(master)?;
        let config = Self {
            world_size,
            rank,
            local_rank: rank,
            master_addr,
            master_port,
            backend: None,
            timeout: DEFAULT_TIMEOUT,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            agent_store_prefix: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// From the environment torchrun sets (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`,
    /// `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`, `TORCHELASTIC_RESTART_COUNT`).
    /// `Ok(None)` when neither `WORLD_SIZE` nor `RANK` is set: not a distributed launch.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let (world, rank) = (var("WORLD_SIZE"), var("RANK"));
        if world.is_none() && rank.is_none() {
            return Ok(None);
        }
        let require = |name: &str| {
            var(name).ok_or_else(|| {
                crate::bad_input(format!(
                    "a distributed launch (WORLD_SIZE or RANK is set) also needs {name}; \
                     torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
                ))
            })
        };
        let world_size = parse_count("WORLD_SIZE", &require("WORLD_SIZE")?)?;
        let rank = parse_count("RANK", &require("RANK")?)?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => parse_count("LOCAL_RANK", &v)?,
            None => rank,
        };
        let master_addr = require("MASTER_ADDR")?;
        if master_addr.trim().is_empty() {
            bail_input!("MASTER_ADDR is empty");
        }
        let master_port = parse_port("MASTER_PORT", &require("MASTER_PORT")?)?;
        let agent = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        let agent_store_prefix = agent.then(|| {
            let attempt = var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into());
            format!("/worker/attempt_{attempt}")
        });
        let config = Self {
            world_size,
            rank,
            local_rank,
            master_addr: master_addr.trim().to_string(),
            master_port,
            backend: None,
            timeout: DEFAULT_TIMEOUT,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            agent_store_prefix,
        };
        config.validate()?;
        Ok(Some(config))
    }

    /// What `tchcv train` uses: `--world-size W --rank R --master ADDR:PORT` when given (all
    /// three or none), else the environment ([`from_env`](Self::from_env)); `Ok(None)` when
    /// neither asks for a distributed run.
    pub fn from_flags_or_env(
        world_size: Option<usize>,
        rank: Option<usize>,
        master: Option<&str>,
    ) -> Result<Option<Self>> {
        Self::from_flags_or_vars(world_size, rank, master, |name| std::env::var(name).ok())
    }

    /// [`from_flags_or_env`](Self::from_flags_or_env) over any source of variables.
    pub fn from_flags_or_vars(
        world_size: Option<usize>,
        rank: Option<usize>,
        master: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>> {
        match (world_size, rank, master) {
            (None, None, None) => Self::from_vars(var),
            (Some(w), Some(r), Some(m)) => Self::explicit(w, r, m).map(Some),
            _ => bail_input!(
                "--world-size, --rank and --master go together (got {}, {}, {})",
                world_size.map_or("no --world-size".into(), |w| format!("--world-size {w}")),
                rank.map_or("no --rank".into(), |r| format!("--rank {r}")),
                master.map_or("no --master".into(), |m| format!("--master {m}"))
            ),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes;
        self
    }

    /// Check the numbers (what the constructors do; call it after editing fields).
    pub fn validate(&self) -> Result<()> {
        if self.world_size == 0 {
            bail_input!("world size 0: a run needs at least one process");
        }
        if self.rank >= self.world_size {
            bail_input!(
                "rank {} is not below the world size {} (ranks are 0 ..= {})",
                self.rank,
                self.world_size,
                self.world_size - 1
            );
        }
        if self.timeout.is_zero() {
            bail_input!("distributed timeout: must be above 0 s");
        }
        if self.bucket_bytes == 0 {
            bail_input!("gradient bucket size: must be above 0 bytes");
        }
        Ok(())
    }

    /// The backend for `device`: the configured one, else [`Backend::for_device`].
    pub fn backend_for(&self, device: Device) -> Backend {
        self.backend.unwrap_or_else(|| Backend::for_device(device))
    }

    /// This rank's CUDA device, `cuda:LOCAL_RANK`, on a machine with `device_count` of them.
    ///
    /// A rank without a GPU of its own (more processes on this machine than GPUs) is refused
    /// here, naming it: falling back to the CPU would put it on Gloo while the others use NCCL,
    /// and the run would fail later, at its first collective, with a message about neither.
    pub fn local_cuda_device(&self, device_count: i64) -> Result<Device> {
        if (self.local_rank as i64) < device_count {
            return Ok(Device::Cuda(self.local_rank));
        }
        bail_input!(
            "rank {} (LOCAL_RANK {}) has no GPU: CUDA training gives each process of a machine \
             its own GPU, cuda:LOCAL_RANK, and this machine has {device_count} CUDA device(s). \
             Start at most {device_count} process(es) per machine (torchrun --nproc-per-node \
             {device_count}), or train on the CPU with --device cpu (Gloo)",
            self.rank,
            self.local_rank
        );
    }

    /// `ADDR:PORT` of the store.
    pub fn master(&self) -> String {
        if self.master_addr.contains(':') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }
}

/// `RANK` from the environment (0 when unset or unreadable): the rank before a group exists.
pub fn rank_from_env() -> usize {
    std::env::var("RANK")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `LOCAL_RANK` from the environment (0 when unset or unreadable).
pub fn local_rank_from_env() -> usize {
    std::env::var("LOCAL_RANK")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether this process is the main one (`RANK` unset or 0): the one that writes logs,
/// metrics and checkpoints.
pub fn is_main() -> bool {
    rank_from_env() == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn no_variables_is_not_a_distributed_launch() {
        assert_eq!(DistConfig::from_vars(vars(&[])).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let c = DistConfig::from_vars(vars(&[
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((c.world_size, c.rank, c.local_rank), (8, 5, 1));
        assert_eq!(c.master(), "node0:29400");
        assert_eq!(c.agent_store_prefix.as_deref(), Some("/worker/attempt_2"));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn plain_variables_mean_rank_zero_hosts_the_store() {
        let c = DistConfig::from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.local_rank, 1, "LOCAL_RANK defaults to RANK");
        assert_eq!(c.agent_store_prefix, None);
    }

    #[test]
    fn bad_variables_name_the_variable() {
        let err = |pairs: &[(&str, &str)]| {
            let e = DistConfig::from_vars(vars(pairs)).unwrap_err();
            assert!(crate::is_bad_input(&e));
            e.to_string()
        };
        let base = [("MASTER_ADDR", "h"), ("MASTER_PORT", "1")];
        assert!(err(&[("RANK", "0")]).contains("WORLD_SIZE"));
        assert!(err(&[("WORLD_SIZE", "two"), ("RANK", "0")]).contains("WORLD_SIZE=\"two\""));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "0")]).contains("MASTER_ADDR"));
        let mut pairs = base.to_vec();
        pairs.extend([("WORLD_SIZE", "2"), ("RANK", "2")]);
        assert!(err(&pairs).contains("rank 2 is not below the world size 2"));
        let pairs = [
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ];
        assert!(err(&pairs).contains("MASTER_PORT"));
    }

    #[test]
    fn master_addresses() {
        assert_eq!(
            parse_master("127.0.0.1:29500").unwrap(),
            ("127.0.0.1".to_string(), 29500)
        );
        assert_eq!(parse_master("[::1]:80").unwrap(), ("::1".to_string(), 80));
        let c = DistConfig::explicit(2, 1, "[::1]:80").unwrap();
        assert_eq!(c.master(), "[::1]:80");
        for bad in ["localhost", ":80", "h:0", "h:x"] {
            assert!(
                crate::is_bad_input(&parse_master(bad).unwrap_err()),
                "{bad}"
            );
        }
        assert!(DistConfig::explicit(0, 0, "h:1").is_err());
        assert!(DistConfig::explicit(2, 2, "h:1").is_err());
    }

    #[test]
    fn flags_take_precedence_and_go_together() {
        let env = vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "9"),
        ]);
        let c = DistConfig::from_flags_or_vars(Some(2), Some(1), Some("a:5"), &env)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.world_size, c.rank, c.master()),
            (2, 1, "a:5".to_string())
        );
        let c = DistConfig::from_flags_or_vars(None, None, None, &env)
            .unwrap()
            .unwrap();
        assert_eq!((c.world_size, c.rank), (4, 3));
        assert_eq!(
            DistConfig::from_flags_or_vars(None, None, None, vars(&[])).unwrap(),
            None
        );
        let e = DistConfig::from_flags_or_vars(Some(2), None, Some("a:5"), &env).unwrap_err();
        assert!(crate::is_bad_input(&e));
        assert!(e.to_string().contains("no --rank"), "{e}");
    }

    #[test]
    fn backend_names_and_choice() {
        assert_eq!("NCCL".parse::<Backend>().unwrap(), Backend::Nccl);
        assert_eq!("gloo".parse::<Backend>().unwrap(), Backend::Gloo);
        assert!("mpi".parse::<Backend>().is_err());
        assert_eq!(Backend::for_device(Device::Cpu), Backend::Gloo);
        assert_eq!(Backend::for_device(Device::Cuda(3)), Backend::Nccl);
        let c = DistConfig::explicit(1, 0, "h:1")
            .unwrap()
            .with_backend(Backend::Gloo);
        assert_eq!(c.backend_for(Device::Cuda(0)), Backend::Gloo);
    }

    #[test]
    fn a_rank_without_a_gpu_is_refused_by_name() {
        let config = |rank: usize, local_rank: usize| DistConfig {
            local_rank,
            ..DistConfig::explicit(4, rank, "127.0.0.1:29500").unwrap()
        };
        assert_eq!(config(1, 1).local_cuda_device(2).unwrap(), Device::Cuda(1));
        let err = config(3, 2).local_cuda_device(2).unwrap_err();
        assert!(crate::error::is_bad_input(&err));
        let message = err.to_string();
        for part in [
            "rank 3",
            "LOCAL_RANK 2",
            "2 CUDA device(s)",
            "--nproc-per-node 2",
        ] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
        assert!(config(0, 0).local_cuda_device(0).is_err());
    }
}
