//! The compute thread: tensor work never runs on the async runtime's threads.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use burn::tensor::Device;
use ctcluster_common::model::{
    BatchInput, EvalOutput, ModelConfig, TrainOutput, eval_batch, train_micro_batches,
};
use tokio::sync::oneshot;

use crate::WorkerError;

/// One piece of work for the compute thread.
pub enum Work {
    /// Forward and backward of each micro-batch of this many images, their gradients summed in
    /// the step's reduction tree.
    Train {
        /// Images per micro-batch.
        micro_batch: usize,
    },
    /// Forward only.
    Eval,
}

/// What the compute thread returns.
pub enum Output {
    /// A training result.
    Train(TrainOutput),
    /// An evaluation result.
    Eval(EvalOutput),
}

struct Request {
    work: Work,
    model: Arc<ModelConfig>,
    params: Arc<Vec<f32>>,
    batch: BatchInput,
    reply: oneshot::Sender<ctcluster_common::Result<Output>>,
}

/// A dedicated thread running burn computations one at a time; joined on drop.
pub struct ComputeThread {
    tx: Option<std_mpsc::Sender<Request>>,
    handle: Option<JoinHandle<()>>,
}

impl ComputeThread {
    /// Starts the thread for a device.
    pub fn start(device: Device) -> Self {
        let (tx, rx) = std_mpsc::channel::<Request>();
        let handle = std::thread::Builder::new()
            .name("ctcluster-compute".into())
            .spawn(move || {
                for req in rx {
                    let out = match req.work {
                        Work::Train { micro_batch } => train_micro_batches(
                            &req.model,
                            &req.params,
                            &req.batch,
                            micro_batch,
                            &device,
                        )
                        .map(Output::Train),
                        Work::Eval => eval_batch(&req.model, &req.params, &req.batch, &device)
                            .map(Output::Eval),
                    };
                    let _ = req.reply.send(out);
                }
            })
            .ok();
        ComputeThread {
            tx: Some(tx),
            handle,
        }
    }

    /// Runs one computation and waits for it without blocking the runtime.
    pub async fn run(
        &self,
        work: Work,
        model: Arc<ModelConfig>,
        params: Arc<Vec<f32>>,
        batch: BatchInput,
    ) -> Result<Output, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(WorkerError::ComputeGone)?
            .send(Request {
                work,
                model,
                params,
                batch,
                reply,
            })
            .map_err(|_| WorkerError::ComputeGone)?;
        Ok(rx.await.map_err(|_| WorkerError::ComputeGone)??)
    }
}

impl Drop for ComputeThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
