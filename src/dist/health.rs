//! Knowing which rank is missing when a collective fails.
//!
//! A collective that fails or times out says little (Gloo: "Connection closed by peer" or
//! "Timed out waiting ... for recv"). So every rank keeps a few keys in the store:
//!
//! | key | written | meaning |
//! |---|---|---|
//! | `hb/<r>` | every heartbeat interval, by a thread | rank r's process is alive |
//! | `at/<r>` | before each collective: `"<seq> <name>"` | the last collective rank r entered |
//! | `failed/<r>` | when a collective fails there | rank r saw the failure itself |
//! | `closed/<r>` | when the group is dropped | rank r is done with the store |
//!
//! After a failure, [`diagnose`] reads them, waits a few heartbeat intervals, reads the
//! heartbeats again, and names the ranks that stopped (no heartbeat), never joined, or are
//! alive but have not reached this collective (hung, or running other code).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::shim::Store;

pub(crate) fn heartbeat_key(rank: usize) -> String {
    format!("hb/{rank}")
}
pub(crate) fn progress_key(rank: usize) -> String {
    format!("at/{rank}")
}
pub(crate) fn failed_key(rank: usize) -> String {
    format!("failed/{rank}")
}
pub(crate) fn closed_key(rank: usize) -> String {
    format!("closed/{rank}")
}

/// The heartbeat interval for a group timeout: a tenth of it, within 100 ms ..= 1 s.
pub(crate) fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// A thread that bumps `hb/<rank>` every `interval` on its own store connection.
pub(crate) struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(store: Store, rank: usize, interval: Duration) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let key = heartbeat_key(rank);
        let thread = std::thread::Builder::new()
            .name(format!("tchcv-heartbeat-{rank}"))
            .spawn(move || {
                let (lock, cvar) = &*signal;
                loop {
                    // A store that is gone ends the heartbeat; the collectives report it.
                    if store.add(&key, 1).is_err() {
                        return;
                    }
                    let Ok(stopped) = lock.lock() else { return };
                    let Ok((stopped, _)) = cvar.wait_timeout_while(stopped, interval, |s| !*s)
                    else {
                        return;
                    };
                    if *stopped {
                        return;
                    }
                }
            })
            .ok();
        Self { stop, thread }
    }

    pub fn stop(&mut self) {
        let (lock, cvar) = &*self.stop;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        cvar.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `"<seq> <name>"` as written to `at/<r>`.
pub(crate) fn progress_value(seq: u64, name: &str) -> String {
    format!("{seq} {name}")
}

fn parse_progress(bytes: &[u8]) -> Option<(u64, String)> {
    let text = String::from_utf8_lossy(bytes);
    let (seq, name) = text.split_once(' ')?;
    Some((seq.parse().ok()?, name.to_string()))
}

/// What the store says about one other rank.
struct Peer {
    rank: usize,
    progress: Option<(u64, String)>,
    failed: Option<String>,
    closed: bool,
    alive: bool,
}

/// Everything the store tells about the other ranks, or the store's own error.
fn survey(store: &Store, me: usize, world: usize, interval: Duration) -> anyhow::Result<Vec<Peer>> {
    let others: Vec<usize> = (0..world).filter(|&r| r != me).collect();
    let mut before = Vec::with_capacity(others.len());
    for &r in &others {
        before.push(store.add(&heartbeat_key(r), 0)?);
    }
    std::thread::sleep(interval * 3);
    let mut peers = Vec::with_capacity(others.len());
    for (&rank, beat) in others.iter().zip(before) {
        let alive = store.add(&heartbeat_key(rank), 0)? > beat;
        let progress = store
            .get_now(&progress_key(rank))?
            .and_then(|b| parse_progress(&b));
        let failed = store
            .get_now(&failed_key(rank))?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let closed = store.has(&closed_key(rank))?;
        peers.push(Peer {
            rank,
            progress,
            failed,
            closed,
            alive,
        });
    }
    Ok(peers)
}

/// Why a collective failed, as far as the store tells.
pub(crate) struct Diagnosis {
    /// Sentences naming the ranks that explain the failure, and the ranks that failed too.
    pub text: String,
    /// Whether the store still answered (else there is no point in using it again).
    pub store_reachable: bool,
}

/// Explain a failure of collective `seq` (`name`) on `me`. Takes about three heartbeat
/// intervals.
pub(crate) fn diagnose(
    store: &Store,
    me: usize,
    world: usize,
    seq: u64,
    name: &str,
    interval: Duration,
    agent: bool,
) -> Diagnosis {
    let started = Instant::now();
    let peers = match survey(store, me, world, interval) {
        Ok(peers) => peers,
        Err(e) => {
            let text = if agent {
                format!(
                    "the store (hosted by torchrun's agent) cannot be reached either ({e:#}): \
                     the launcher has probably stopped"
                )
            } else {
                format!(
                    "the store, hosted by rank 0, cannot be reached either ({e:#}): rank 0 has \
                     probably exited"
                )
            };
            return Diagnosis {
                text,
                store_reachable: false,
            };
        }
    };
    let waited = started.elapsed().as_secs_f64();
    let mut culprits = Vec::new();
    let mut fellow_failures = Vec::new();
    for p in &peers {
        let r = p.rank;
        let at = match &p.progress {
            Some((s, n)) => format!("its last collective was #{s} ({n})"),
            None => "it never joined the group".to_string(),
        };
        if let Some(note) = &p.failed {
            fellow_failures.push(format!("rank {r} failed too ({note})"));
        } else if p.closed {
            culprits.push(format!(
                "rank {r} has left the group (its process closed it, after an error of its own?); \
                 {at}"
            ));
        } else if !p.alive {
            if p.progress.is_none() {
                culprits.push(format!("rank {r} never joined the group"));
            } else {
                culprits.push(format!(
                    "rank {r} has stopped: no heartbeat for {waited:.1} s; {at}"
                ));
            }
        } else {
            match &p.progress {
                Some((s, _)) if *s < seq => culprits.push(format!(
                    "rank {r} is alive but has not reached collective #{seq} ({name}); {at}: \
                     it hangs or runs other code"
                )),
                Some((s, n)) if *s > seq => culprits.push(format!(
                    "rank {r} is ahead, at collective #{s} ({n}): the ranks run different \
                     sequences of collectives"
                )),
                Some(_) => {}
                None => culprits.push(format!("rank {r} is alive but never joined the group")),
            }
        }
    }
    let mut text = if culprits.is_empty() {
        "no rank could be singled out: every other rank reached this collective and is alive \
         (a network problem, or a rank that failed in another way)"
            .to_string()
    } else {
        culprits.join("; ")
    };
    if !fellow_failures.is_empty() {
        text.push_str(". ");
        text.push_str(&fellow_failures.join("; "));
    }
    Diagnosis {
        text,
        store_reachable: true,
    }
}

/// Wait until no other rank still needs the store, or `limit` has passed: a rank needs it while
/// it has not closed the group, still beats, and has reached collective `seq` (so it is about
/// to finish, or to diagnose the same failure). Ranks that lag behind (hung) are not waited for.
/// The rank that hosts the store calls this before it goes.
pub(crate) fn wait_for_others_to_close(
    store: &Store,
    me: usize,
    world: usize,
    seq: u64,
    interval: Duration,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    let mut last_beat: Vec<Option<(i64, Instant)>> = vec![None; world];
    let needs_store = |r: usize, last: &mut Option<(i64, Instant)>| -> anyhow::Result<bool> {
        if store.has(&closed_key(r))? {
            return Ok(false);
        }
        let reached = store
            .get_now(&progress_key(r))?
            .and_then(|b| parse_progress(&b))
            .is_some_and(|(s, _)| s >= seq);
        if !reached {
            return Ok(false);
        }
        let beat = store.add(&heartbeat_key(r), 0)?;
        let now = Instant::now();
        Ok(match *last {
            Some((b, since)) if b == beat => now - since <= interval * 3,
            _ => {
                *last = Some((beat, now));
                true
            }
        })
    };
    loop {
        let mut waiting = false;
        for r in (0..world).filter(|&r| r != me) {
            match needs_store(r, &mut last_beat[r]) {
                Ok(needs) => waiting |= needs,
                Err(_) => return,
            }
        }
        if !waiting || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(interval / 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_values_round_trip() {
        let v = progress_value(12, "all-reduce gradients (3 buckets)");
        assert_eq!(
            parse_progress(v.as_bytes()),
            Some((12, "all-reduce gradients (3 buckets)".to_string()))
        );
        assert_eq!(parse_progress(b"x y"), None);
    }

    #[test]
    fn heartbeat_interval_is_a_tenth_of_the_timeout_within_bounds() {
        assert_eq!(
            heartbeat_interval(Duration::from_secs(3)),
            Duration::from_millis(300)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(600)),
            Duration::from_secs(1)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
    }
}
