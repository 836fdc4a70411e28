//! Group commit: writes that arrive while a write is in flight are gathered into one batch.
//!
//! A write that finds its lane idle runs at once, on its caller's task, so a lone caller waits
//! no longer than without batching. Writes that arrive meanwhile queue up. When the running
//! write ends, a drain task commits the queue in batches of up to `MAX_BATCH_WRITES` writes and
//! `MAX_BATCH_BYTES` bytes of session data until the queue is empty. Sids are hashed to lanes,
//! and a lane runs one batch at a time, so the writes of one sid keep their order.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;

use crate::dialect::{Backend, PendingWrite};
use crate::error::{Result, StoreError};

/// Maximum writes in one batch.
const MAX_BATCH_WRITES: usize = 256;

/// Maximum session bytes in one batch. The default max_allowed_packet is 16 MiB on MariaDB and
/// 64 MiB on MySQL 8, so a full batch stays well under either.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

enum Queued {
  Write {
    write: PendingWrite,
    reply: oneshot::Sender<Result<u64>>,
  },
  /// Barrier that is released once every write queued before it is committed.
  Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct LaneState {
  /// True while a write or a batch of this lane runs.
  busy: bool,
  queue: VecDeque<Queued>,
}

#[derive(Default)]
struct Lane {
  state: Mutex<LaneState>,
}

impl Lane {
  fn lock(&self) -> MutexGuard<'_, LaneState> {
    // The state stays consistent across a panic: every change is a single push, pop or flag.
    self.state.lock().unwrap_or_else(PoisonError::into_inner)
  }
}

/// The lanes of one store.
pub struct WriteQueue {
  backend: Arc<Backend>,
  lanes: Vec<Arc<Lane>>,
  /// Maximum time of one batch, after which the lane gives up on it and goes on.
  timeout: Duration,
}

impl WriteQueue {
  /// Creates `lanes` idle lanes; drain tasks start on the current Tokio runtime when needed.
  /// A batch that runs longer than `timeout` fails, so a row lock held elsewhere cannot stop
  /// the lane.
  pub fn start(backend: Arc<Backend>, lanes: usize, timeout: Duration) -> Self {
    let lanes = (0..lanes.max(1)).map(|_| Arc::default()).collect();
    Self {
      backend,
      lanes,
      timeout,
    }
  }

  /// Commits a write, alone or in a batch, and returns the rows it changed.
  pub async fn submit(&self, write: PendingWrite) -> Result<u64> {
    let lane = &self.lanes[lane_of(&write.sid, self.lanes.len())];
    let queued = {
      let mut state = lane.lock();
      if state.busy {
        let (reply, answer) = oneshot::channel();
        state.queue.push_back(Queued::Write { write, reply });
        Err(answer)
      } else {
        state.busy = true;
        Ok(write)
      }
    };
    let write = match queued {
      Ok(write) => write,
      Err(answer) => return answer.await.unwrap_or(Err(StoreError::Closed)),
    };

    // This caller leads: its write runs on its own task, and what queued meanwhile goes to a
    // drain task when it ends, also when a timeout drops this future halfway.
    let _handoff = Handoff {
      lane: Arc::clone(lane),
      backend: Arc::clone(&self.backend),
      timeout: self.timeout,
    };
    let mut results = self
      .backend
      .write_batch(std::slice::from_ref(&write), Utc::now())
      .await;
    results.pop().unwrap_or(Err(StoreError::Closed))
  }

  /// Waits until every write accepted so far is committed or failed.
  pub async fn flush(&self) {
    let mut answers = Vec::with_capacity(self.lanes.len());
    for lane in &self.lanes {
      let mut state = lane.lock();
      if state.busy {
        let (reply, answer) = oneshot::channel();
        state.queue.push_back(Queued::Flush(reply));
        answers.push(answer);
      }
    }
    for answer in answers {
      let _ = answer.await;
    }
  }
}

/// Passes a busy lane on when the write that held it ends.
struct Handoff {
  lane: Arc<Lane>,
  backend: Arc<Backend>,
  timeout: Duration,
}

impl Drop for Handoff {
  fn drop(&mut self) {
    let mut state = self.lane.lock();
    if state.queue.is_empty() {
      state.busy = false;
      return;
    }
    match tokio::runtime::Handle::try_current() {
      // The lane stays busy: the drain task owns it until the queue is empty.
      Ok(runtime) => {
        drop(state);
        let (lane, backend) = (Arc::clone(&self.lane), Arc::clone(&self.backend));
        runtime.spawn(drain(lane, backend, self.timeout));
      }
      // Only when the runtime is shutting down, with the process.
      Err(_) => {
        for queued in state.queue.drain(..) {
          match queued {
            Queued::Write { reply, .. } => drop(reply.send(Err(StoreError::Closed))),
            Queued::Flush(reply) => drop(reply.send(())),
          }
        }
        state.busy = false;
      }
    }
  }
}

/// Commits the queue of a busy lane in batches, then marks the lane idle.
async fn drain(lane: Arc<Lane>, backend: Arc<Backend>, timeout: Duration) {
  let mut writes = Vec::new();
  let mut replies = Vec::new();
  loop {
    let mut flushes = Vec::new();
    {
      let mut state = lane.lock();
      let mut bytes = 0;
      loop {
        let take = match state.queue.front() {
          // A flush marker is released once the writes before it are committed.
          Some(Queued::Flush(_)) => writes.is_empty(),
          Some(Queued::Write { .. }) => writes.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES,
          None => false,
        };
        if !take {
          break;
        }
        match state.queue.pop_front() {
          // Its caller timed out while it waited here and got ERR_QUERY_TIMEOUT, so it must
          // never run.
          Some(Queued::Write { reply, .. }) if reply.is_closed() => {}
          Some(Queued::Write { write, reply }) => {
            bytes += write.size();
            writes.push(write);
            replies.push(reply);
          }
          Some(Queued::Flush(reply)) => flushes.push(reply),
          None => break,
        }
      }
      if writes.is_empty() && flushes.is_empty() {
        state.busy = false;
        return;
      }
    }

    for reply in flushes {
      let _ = reply.send(());
    }
    if !writes.is_empty() {
      // Dropping a batch that timed out closes its connection. A statement the server had
      // started may still commit, as with any client that gives up on a query.
      let batch = backend.write_batch(&writes, Utc::now());
      let results = match tokio::time::timeout(timeout, batch).await {
        Ok(results) => results,
        Err(_) => writes
          .iter()
          .map(|write| Err(timed_out(write, timeout)))
          .collect(),
      };
      for (reply, result) in replies.drain(..).zip(results) {
        // A caller that timed out has dropped its receiver; nothing is left to tell.
        let _ = reply.send(result);
      }
      writes.clear();
    }
  }
}

fn timed_out(write: &PendingWrite, timeout: Duration) -> StoreError {
  StoreError::QueryTimeout {
    operation: write.op.name(),
    millis: timeout.as_millis(),
  }
}

fn lane_of(sid: &str, lanes: usize) -> usize {
  if lanes == 1 {
    return 0;
  }
  let mut hasher = std::collections::hash_map::DefaultHasher::new();
  sid.hash(&mut hasher);
  usize::try_from(hasher.finish() % lanes as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn one_sid_always_maps_to_one_lane() {
    for lanes in 1..6 {
      let lane = lane_of("abcdef", lanes);
      assert!(lane < lanes);
      assert_eq!(lane_of("abcdef", lanes), lane);
    }
  }
}
