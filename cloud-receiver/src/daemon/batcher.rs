//! Dynamic batching on a dedicated inference thread.
//!
//! Requests arrive on a bounded channel (a full channel makes senders wait:
//! backpressure reaches the MQTT consumer, which then stops acknowledging
//! and the broker stops sending). The thread takes the first waiting
//! request, then keeps collecting until it has `max_batch` of them or
//! `max_wait` has passed since the first arrived, runs one inference for the
//! whole batch and answers each request on its own one-shot channel.
//!
//! Inference is CPU or GPU work that must never run on the async reactor;
//! this thread owns the model. When every sender is gone the thread answers
//! what it holds and ends, which is how shutdown drains it.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

/// What a request gets back.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// What the inference function returned for this image.
    pub output: Vec<f32>,
    /// How many images shared the inference call.
    pub batch_size: usize,
    /// Time from submission to the start of inference.
    pub queued: Duration,
    /// Time the inference call took.
    pub inference: Duration,
}

struct Request {
    input: Vec<u8>,
    submitted: Instant,
    reply: oneshot::Sender<Answer>,
}

/// Why a request was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The inference thread has stopped (shutdown, or it failed).
    #[error("the inference thread has stopped")]
    Stopped,
}

/// The sending side; clone it freely.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Request>,
}

impl Batcher {
    /// Queues one preprocessed image and waits for its answer.
    ///
    /// # Errors
    /// [`BatchError::Stopped`] when the thread is gone.
    pub async fn infer(&self, input: Vec<u8>) -> Result<Answer, BatchError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            input,
            submitted: Instant::now(),
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| BatchError::Stopped)?;
        answer.await.map_err(|_| BatchError::Stopped)
    }
}

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Images per inference call at most.
    pub max_batch: usize,
    /// How long the first image of a batch may wait for company.
    pub max_wait: Duration,
    /// Requests the channel holds before senders wait.
    pub queue: usize,
}

/// Starts the inference thread. `infer` gets the images of one batch, each
/// `input.len()` bytes, concatenated, and their count; it returns one
/// probability vector per image.
///
/// # Errors
/// If the thread cannot be spawned.
pub fn spawn<F>(limits: BatchLimits, mut infer: F) -> std::io::Result<(Batcher, JoinHandle<()>)>
where
    F: FnMut(&[u8], usize) -> Vec<Vec<f32>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Request>(limits.queue.max(1));
    let max_batch = limits.max_batch.max(1);
    let handle = std::thread::Builder::new()
        .name("medgate-inference".into())
        .spawn(move || {
            // A small runtime of its own, only to wait on the channel with a
            // deadline; inference itself runs outside it.
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            else {
                tracing::error!("inference thread could not start its timer runtime");
                return;
            };
            let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
            let mut inputs: Vec<u8> = Vec::new();
            loop {
                let open =
                    runtime.block_on(collect(&mut rx, &mut batch, max_batch, limits.max_wait));
                if !batch.is_empty() {
                    run_batch(&mut batch, &mut inputs, &mut infer);
                }
                if !open {
                    break;
                }
            }
        })?;
    Ok((Batcher { tx }, handle))
}

/// Fills `batch`: waits for a first request, then for more until the batch
/// is full or `max_wait` has passed. Returns false once the channel is closed.
async fn collect(
    rx: &mut mpsc::Receiver<Request>,
    batch: &mut Vec<Request>,
    max_batch: usize,
    max_wait: Duration,
) -> bool {
    let Some(first) = rx.recv().await else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + max_wait;
    batch.push(first);
    while batch.len() < max_batch {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(request)) => batch.push(request),
            Ok(None) => return false,
            Err(_) => break,
        }
    }
    true
}

fn run_batch<F>(batch: &mut Vec<Request>, inputs: &mut Vec<u8>, infer: &mut F)
where
    F: FnMut(&[u8], usize) -> Vec<Vec<f32>>,
{
    inputs.clear();
    for request in batch.iter() {
        inputs.extend_from_slice(&request.input);
    }
    let started = Instant::now();
    let outputs = infer(inputs, batch.len());
    let inference = started.elapsed();
    let size = batch.len();
    for (request, output) in batch.drain(..).zip(outputs) {
        let answer = Answer {
            output,
            batch_size: size,
            queued: started.saturating_duration_since(request.submitted),
            inference,
        };
        // The requester may have given up (shutdown); nothing to do then.
        let _ = request.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn fake(sizes: Arc<Mutex<Vec<usize>>>) -> impl FnMut(&[u8], usize) -> Vec<Vec<f32>> + Send {
        move |inputs: &[u8], count: usize| {
            sizes.lock().unwrap().push(count);
            let per = inputs.len() / count;
            inputs
                .chunks(per)
                .map(|x| vec![f32::from(x[0]), 0.0])
                .collect()
        }
    }

    #[tokio::test]
    async fn answers_come_back_to_their_own_requests() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let limits = BatchLimits {
            max_batch: 4,
            max_wait: Duration::from_millis(50),
            queue: 16,
        };
        let (batcher, thread) = spawn(limits, fake(sizes.clone())).unwrap();
        let tasks: Vec<_> = (0..10u8)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.infer(vec![i; 3]).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (i, answer) = t.await.unwrap();
            assert_eq!(answer.output[0], f32::from(i));
            assert!(answer.batch_size >= 1 && answer.batch_size <= 4);
        }
        drop(batcher);
        thread.join().unwrap();
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.iter().all(|&s| s <= 4));
    }

    #[tokio::test]
    async fn a_lone_request_waits_at_most_max_wait_and_batches_fill_up() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let limits = BatchLimits {
            max_batch: 8,
            max_wait: Duration::from_millis(20),
            queue: 64,
        };
        let (batcher, thread) = spawn(limits, fake(sizes.clone())).unwrap();
        // Alone: answered after the wait, in a batch of one.
        let answer = batcher.infer(vec![1; 3]).await.unwrap();
        assert_eq!(answer.batch_size, 1);
        // Many at once: full batches.
        let tasks: Vec<_> = (0..32u8)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.infer(vec![i; 3]).await.unwrap().batch_size })
            })
            .collect();
        let mut biggest = 0;
        for t in tasks {
            biggest = biggest.max(t.await.unwrap());
        }
        assert_eq!(biggest, 8);
        drop(batcher);
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn a_stopped_thread_is_reported() {
        let limits = BatchLimits {
            max_batch: 2,
            max_wait: Duration::from_millis(1),
            queue: 2,
        };
        let (batcher, thread) = spawn(limits, |_: &[u8], _: usize| -> Vec<Vec<f32>> {
            panic!("model failed")
        })
        .unwrap();
        assert_eq!(batcher.infer(vec![0]).await, Err(BatchError::Stopped));
        assert!(thread.join().is_err());
    }
}
