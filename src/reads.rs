//! Read batching: `get` calls that arrive while enough gets are in flight share one query.
//!
//! Up to `slots` gets run at once, each on its caller's task, so a lone caller waits no longer
//! than without batching. Gets that arrive beyond that queue up. When a running get ends, a
//! drain task takes its slot and looks the queued sids up with one multi-row query per batch
//! of up to `MAX_BATCH_READS`, until the queue is empty. A batch that fails is retried sid by
//! sid, so a row that cannot be read fails only its own call.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;

use crate::dialect::Backend;
use crate::error::{Result, StoreError};

/// Maximum sids in one batch.
const MAX_BATCH_READS: usize = 128;

type Reply = oneshot::Sender<Result<Option<String>>>;

#[derive(Default)]
struct ReadState {
  /// Gets and drain tasks running now.
  running: usize,
  queue: VecDeque<(String, Reply)>,
}

#[derive(Default)]
struct Shared {
  state: Mutex<ReadState>,
}

impl Shared {
  fn lock(&self) -> MutexGuard<'_, ReadState> {
    // The state stays consistent across a panic: every change is a single push, pop or count.
    self.state.lock().unwrap_or_else(PoisonError::into_inner)
  }
}

/// The read slots of one store.
pub struct ReadQueue {
  backend: Arc<Backend>,
  shared: Arc<Shared>,
  slots: usize,
  /// How long a queued get waits for a slot, like a call waiting for a pooled connection.
  wait: Duration,
  /// The database, for the timeout's message.
  label: String,
}

impl ReadQueue {
  /// Lets `slots` gets run at once (`usize::MAX` turns batching off); a get that waits longer
  /// than `wait` for a slot fails with ERR_POOL_TIMEOUT.
  pub fn start(backend: Arc<Backend>, slots: usize, wait: Duration, label: &str) -> Self {
    Self {
      backend,
      shared: Arc::default(),
      slots: slots.max(1),
      wait,
      label: label.to_owned(),
    }
  }

  /// Returns the stored JSON of a live session, read alone or in a batch.
  pub async fn get(&self, sid: &str) -> Result<Option<String>> {
    let queued = {
      let mut state = self.shared.lock();
      if state.running >= self.slots {
        let (reply, answer) = oneshot::channel();
        state.queue.push_back((sid.to_owned(), reply));
        Some(answer)
      } else {
        state.running += 1;
        None
      }
    };
    if let Some(answer) = queued {
      // Every slot is held by a get that waits, on a lock for instance. When this wait ends
      // first, the batch still reads the sid and drops the reply.
      return match tokio::time::timeout(self.wait, answer).await {
        Ok(reply) => reply.unwrap_or(Err(StoreError::Closed)),
        Err(_) => Err(StoreError::PoolTimeout {
          target: self.label.clone(),
        }),
      };
    }

    // The slot passes to a drain task when this read ends, also when a timeout drops it.
    let _handoff = Handoff {
      shared: Arc::clone(&self.shared),
      backend: Arc::clone(&self.backend),
    };
    self.backend.get(sid, Utc::now()).await
  }
}

/// Passes a slot on to a drain task when the get that held it ends and gets are queued.
struct Handoff {
  shared: Arc<Shared>,
  backend: Arc<Backend>,
}

impl Drop for Handoff {
  fn drop(&mut self) {
    let mut state = self.shared.lock();
    if state.queue.is_empty() {
      state.running -= 1;
      return;
    }
    match tokio::runtime::Handle::try_current() {
      Ok(runtime) => {
        drop(state);
        runtime.spawn(drain(Arc::clone(&self.shared), Arc::clone(&self.backend)));
      }
      // Only when the runtime is shutting down, with the process.
      Err(_) => {
        for (_, reply) in state.queue.drain(..) {
          drop(reply.send(Err(StoreError::Closed)));
        }
        state.running -= 1;
      }
    }
  }
}

/// Runs the queued gets in batches, then frees the slot.
async fn drain(shared: Arc<Shared>, backend: Arc<Backend>) {
  loop {
    let (sids, replies): (Vec<String>, Vec<Reply>) = {
      let mut state = shared.lock();
      if state.queue.is_empty() {
        state.running -= 1;
        return;
      }
      let take = state.queue.len().min(MAX_BATCH_READS);
      state.queue.drain(..take).unzip()
    };
    let now = Utc::now();
    let results = match backend.get_many(&sids, now).await {
      Ok(found) => found.into_iter().map(Ok).collect(),
      Err(_) if sids.len() > 1 => {
        let mut results = Vec::with_capacity(sids.len());
        for sid in &sids {
          results.push(backend.get(sid, now).await);
        }
        results
      }
      Err(error) => vec![Err(error)],
    };
    for (reply, result) in replies.into_iter().zip(results) {
      // A caller that timed out has dropped its receiver.
      let _ = reply.send(result);
    }
  }
}
