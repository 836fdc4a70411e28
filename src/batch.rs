//! Group commit: writes that arrive while a write is in flight are gathered into one batch.
//!
//! Each lane is a task that takes one write, then whatever else is already queued (up to
//! `MAX_BATCH_WRITES` writes and `MAX_BATCH_BYTES` bytes of session data), and commits them
//! together. A write that finds its lane idle runs at once, so a lone caller waits no longer
//! than without batching. Sids are hashed to lanes, so the writes of one sid keep their order.

#![forbid(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::dialect::{Backend, PendingWrite};
use crate::error::{Result, StoreError};

/// Most writes in one batch.
const MAX_BATCH_WRITES: usize = 256;

/// Most session bytes in one batch; MySQL's default max_allowed_packet is 16 MiB (MariaDB,
/// MySQL 8 uses 64 MiB), so a full batch stays well under it.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

enum Queued {
  Write {
    write: PendingWrite,
    reply: oneshot::Sender<Result<u64>>,
  },
  /// Answered once every write queued before it is committed.
  Flush(oneshot::Sender<()>),
}

/// The lanes of one store.
pub struct WriteQueue {
  lanes: Vec<mpsc::UnboundedSender<Queued>>,
}

impl WriteQueue {
  /// Starts `lanes` lane tasks on the current Tokio runtime. They end when the queue is dropped.
  pub fn start(backend: Arc<Backend>, lanes: usize) -> Self {
    let lanes = (0..lanes.max(1))
      .map(|_| {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run_lane(Arc::clone(&backend), receiver));
        sender
      })
      .collect();
    Self { lanes }
  }

  /// Queues a write and waits until it is committed; returns the rows it changed.
  pub async fn submit(&self, write: PendingWrite) -> Result<u64> {
    let lane = &self.lanes[lane_of(&write.sid, self.lanes.len())];
    let (reply, answer) = oneshot::channel();
    lane
      .send(Queued::Write { write, reply })
      .map_err(|_| StoreError::Closed)?;
    answer.await.unwrap_or(Err(StoreError::Closed))
  }

  /// Waits until every write queued so far is committed or failed.
  pub async fn flush(&self) {
    let mut answers = Vec::with_capacity(self.lanes.len());
    for lane in &self.lanes {
      let (reply, answer) = oneshot::channel();
      if lane.send(Queued::Flush(reply)).is_ok() {
        answers.push(answer);
      }
    }
    for answer in answers {
      let _ = answer.await;
    }
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

async fn run_lane(backend: Arc<Backend>, mut receiver: mpsc::UnboundedReceiver<Queued>) {
  let mut writes = Vec::new();
  let mut replies = Vec::new();
  while let Some(first) = receiver.recv().await {
    let mut flush = None;
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(queued) = next.take() {
      match queued {
        Queued::Write { write, reply } => {
          bytes += write.size();
          writes.push(write);
          replies.push(reply);
        }
        Queued::Flush(reply) => {
          flush = Some(reply);
          break;
        }
      }
      if writes.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
        next = receiver.try_recv().ok();
      }
    }

    if !writes.is_empty() {
      let results = backend.write_batch(&writes, Utc::now()).await;
      for (reply, result) in replies.drain(..).zip(results) {
        // A caller that timed out has dropped its receiver; nothing is left to tell.
        let _ = reply.send(result);
      }
      writes.clear();
    }
    if let Some(reply) = flush {
      let _ = reply.send(());
    }
  }
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
