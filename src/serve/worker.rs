//! The engine thread: owns the scheduler, takes requests from the HTTP side between steps,
//! runs forward passes while there is work and sleeps on its queue when there is none.
//! Events go back on one channel per HTTP request; a closed channel (the client went away)
//! cancels that request's sequences and frees their KV blocks before the next step.

use super::metrics::Metrics;
use ferrite::{BatchRequest, EngineError, RequestId, Scheduler, SeqEvent};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::{mpsc as tmpsc, oneshot};

/// Events of one HTTP request: (choice index, event).
pub type EventTx = tmpsc::UnboundedSender<(usize, SeqEvent)>;

/// What the HTTP side asks of the engine thread.
pub enum Job {
    /// Start these sequences (the choices of one request), all or none.
    Submit { seqs: Vec<BatchRequest>, events: EventTx, ack: oneshot::Sender<Result<(), EngineError>> },
    /// Cancel everything (shutdown after the grace period).
    CancelAll,
}

/// The HTTP side's handle on the engine thread.
#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Cleared when the engine thread ends (a panic in a forward pass): /health then says
    /// so and new requests get 503.
    alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Worker")
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Worker {
    /// Starts the engine thread.
    pub fn spawn(mut sched: Scheduler, metrics: Arc<Metrics>) -> Worker {
        let (tx, rx) = mpsc::channel::<Job>();
        metrics.observe(&sched.stats());
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        std::thread::Builder::new()
            .name("ferrite-engine".into())
            .spawn(move || {
                // Whatever ends this thread, a panic included, marks the worker dead; its
                // listeners drop, so every open request ends with an error.
                struct Dead(Arc<AtomicBool>);
                impl Drop for Dead {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::SeqCst);
                    }
                }
                let _dead = Dead(flag);
                let mut listeners: HashMap<RequestId, (EventTx, usize)> = HashMap::new();
                loop {
                    // Sleep on the queue when idle; otherwise take what arrived since the last step.
                    let first = if sched.is_busy() {
                        rx.try_recv().ok()
                    } else {
                        match rx.recv() {
                            Ok(j) => Some(j),
                            Err(_) => return, // the server is gone
                        }
                    };
                    for job in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                        handle(&mut sched, &mut listeners, job);
                    }
                    // Clients that went away.
                    let gone: Vec<RequestId> =
                        listeners.iter().filter(|(_, (tx, _))| tx.is_closed()).map(|(&id, _)| id).collect();
                    for id in gone {
                        sched.cancel(id);
                        listeners.remove(&id);
                        metrics.success.with_label_values(&["abort"]).inc();
                    }
                    sched.step(&mut |id, ev| {
                        let last = matches!(ev, SeqEvent::Done(_) | SeqEvent::Failed(_));
                        let Some((tx, choice)) = listeners.get(&id) else { return false };
                        let ok = tx.send((*choice, ev)).is_ok();
                        if last || !ok {
                            listeners.remove(&id);
                        }
                        ok
                    });
                    metrics.observe(&sched.stats());
                }
            })
            .expect("spawn the engine thread");
        Worker { jobs: tx, alive }
    }

    /// Whether the engine thread still runs.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queues the choices of one request; their events arrive on the returned channel.
    pub async fn submit(
        &self,
        seqs: Vec<BatchRequest>,
    ) -> Result<tmpsc::UnboundedReceiver<(usize, SeqEvent)>, EngineError> {
        let (events, rx) = tmpsc::unbounded_channel();
        let (ack, done) = oneshot::channel();
        self.jobs.send(Job::Submit { seqs, events, ack }).map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())??;
        Ok(rx)
    }

    /// Cancels every request (their streams end).
    pub fn cancel_all(&self) {
        let _ = self.jobs.send(Job::CancelAll);
    }
}

fn handle(sched: &mut Scheduler, listeners: &mut HashMap<RequestId, (EventTx, usize)>, job: Job) {
    match job {
        Job::Submit { seqs, events, ack } => {
            let mut added = Vec::with_capacity(seqs.len());
            let mut result = Ok(());
            for (choice, req) in seqs.into_iter().enumerate() {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                match sched.add(id, req) {
                    Ok(()) => {
                        added.push(id);
                        listeners.insert(id, (events.clone(), choice));
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_err() {
                for id in added {
                    sched.cancel(id);
                    listeners.remove(&id);
                }
            }
            let _ = ack.send(result);
        }
        Job::CancelAll => {
            for (id, (tx, choice)) in listeners.drain() {
                sched.cancel(id);
                let _ = tx.send((choice, SeqEvent::Failed("the server is shutting down".into())));
            }
        }
    }
}

/// The error of a request the engine thread cannot take or finish: it has stopped.
pub fn stopped() -> EngineError {
    EngineError::BackendUnavailable {
        name: "engine".into(),
        why: "the engine thread has stopped; see the server's log".into(),
    }
}
