//! The scheduler thread: owns the [`ModelRunner`], admits sequences FCFS, builds one mixed
//! prefill + decode batch per step (chunked prefill under a token budget), samples, checks
//! stop tokens and lengths, and retracts the newest sequence when decode runs out of KV slots.
//!
//! Overlap scheduling (SGLang's, on by default; `--disable-overlap-schedule` turns it off):
//! step k + 1 is
//! scheduled and launched before step k's tokens are read, its decode rows taking those tokens
//! as [`FutureToken`](crate::executor::forward_batch::FutureToken)s (fed on the GPU), so the
//! host's scheduling, batch building and token handling run while the GPU computes. A sequence
//! that step k finishes has one wasted row in step k + 1 (dropped); sequences that will reach
//! their length limit are not scheduled past it. Aborts, cache flushes and retractions first
//! wait for the step in flight.
//!
//! Image requests ([`TokenizedRequest::mm`]) run only on a runner that runs images (Qwen3-VL):
//! their images are checked against the placeholders on arrival, registered with the runner
//! on admission ([`ModelRunner::attach_images`]), queued by the step they enter
//! ([`ModelRunner::encode_images`]; its forward encodes them all in one tower forward) and
//! forgotten when the sequence leaves its slot. An image that fails fails its request only.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use super::batch_log::{DecodeLog, Load, PrefillLine};
use super::metrics::Metrics;
use crate::executor::forward_batch::{LogitsMode, SequenceInput};
use crate::executor::model_runner::ModelRunner;
use crate::executor::pending::PendingStep;
use crate::executor::sampler::{SampleOutput, SequenceState};
use crate::io_struct::{EventSender, Finish, SchedulerMsg, SeqId, TokenEvent, TokenizedRequest};
use crate::mem_cache::radix_cache::{NodeId, RadixCache};
use crate::multimodal::MultimodalInputs;

/// Scheduling limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running at once (request slots of the runner).
    pub max_running_requests: usize,
    /// Most prompt tokens prefilled in one step (longer prompts are chunked).
    pub max_prefill_tokens: usize,
    /// Longest sequence (prompt + output).
    pub max_context_len: usize,
    /// Reuse the KV of shared prompt prefixes (radix cache).
    pub enable_radix_cache: bool,
    /// Launch each step before reading the previous one's tokens (see the module docs).
    pub overlap: bool,
}

/// One sequence in the scheduler.
struct Seq {
    id: SeqId,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    max_new: usize,
    stop_ids: Vec<u32>,
    state: Option<SequenceState>,
    slot: Option<usize>,
    /// Leading tokens whose K/V are in the cache (or being computed by a launched step).
    cached: usize,
    /// Samples launched for it and not read yet (0 or 1 between steps): its tokens to compute
    /// are `tokens.len() + in_flight - cached`.
    in_flight: usize,
    /// Leading tokens whose KV slots belong to the prefix cache (matched at admission).
    prefix_len: usize,
    /// The prefix cache node this sequence holds a lock on.
    node: Option<NodeId>,
    /// The prompt's images.
    mm: Option<Arc<MultimodalInputs>>,
    out: EventSender,
    arrived: Instant,
    last_token: Option<Instant>,
}

impl Seq {
    fn output_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens to compute before its next sample.
    fn pending(&self) -> usize {
        self.tokens.len() + self.in_flight - self.cached
    }

    /// Whether the sample in flight reaches a length limit (so it needs no further step).
    fn ends_in_flight(&self, max_context_len: usize) -> bool {
        self.in_flight > 0
            && (self.output_len() + self.in_flight >= self.max_new
                || self.tokens.len() + self.in_flight >= max_context_len)
    }

    /// The prefix-cache key of the first `len` tokens: the tokens, with image placeholders
    /// replaced by ids of their image's hash, so different images never share KV.
    fn radix_key(&self, len: usize) -> Cow<'_, [u32]> {
        match &self.mm {
            None => Cow::Borrowed(&self.tokens[..len]),
            Some(mm) => mm.radix_key(&self.tokens[..len]),
        }
    }

    /// A cached prefix of `len` tokens cut back to hold no partial image.
    fn clamp_prefix(&self, len: usize) -> usize {
        self.mm.as_ref().map_or(len, |mm| mm.clamp_prefix(len))
    }
}

/// The scheduler's state; [`Scheduler::run`] is the thread body.
pub struct Scheduler {
    runner: ModelRunner,
    cfg: SchedulerConfig,
    metrics: Arc<Metrics>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    radix: RadixCache,
    shutting_down: bool,
    /// Sequences admitted and their prefix-cache hits in the current step (for the batch log).
    admitted: (usize, usize),
    decode_log: DecodeLog,
    /// The launched step whose tokens are not read yet (overlap scheduling).
    in_flight: Option<InFlight>,
}

/// A launched step and what its rows are.
struct InFlight {
    pending: PendingStep,
    /// Each batch row's sequence, and whether its sample is real (the row completes the
    /// sequence's pending tokens; a prompt chunk with more to come samples a throwaway).
    rows: Vec<(SeqId, bool)>,
    /// For its batch log line: prompt tokens computed, and the admissions of its step.
    prompt_tokens: usize,
    admitted: (usize, usize),
}

impl Scheduler {
    /// A scheduler over `runner`.
    pub fn new(runner: ModelRunner, cfg: SchedulerConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            runner,
            cfg,
            metrics,
            waiting: VecDeque::new(),
            running: Vec::new(),
            radix: RadixCache::new(!cfg.enable_radix_cache),
            shutting_down: false,
            admitted: (0, 0),
            decode_log: DecodeLog::default(),
            in_flight: None,
        }
    }

    /// KV slots the runner holds in total.
    pub fn kv_capacity(&self) -> usize {
        self.runner.kv_pool().capacity()
    }

    /// Serves messages until [`SchedulerMsg::Shutdown`] (after draining) or until every sender
    /// is gone.
    pub fn run(mut self, rx: Receiver<SchedulerMsg>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() && self.in_flight.is_none() {
                if self.shutting_down {
                    break;
                }
                match rx.recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.shutting_down = true;
                        break;
                    }
                }
            }
            self.drop_disconnected();
            self.step();
            self.update_gauges();
        }
        self.update_gauges();
    }

    fn load(&self) -> Load {
        let cap = self.kv_capacity();
        let free = self.runner.kv_pool().available() + self.radix.evictable_size();
        Load {
            kv_used: cap - free.min(cap),
            kv_capacity: cap,
            running: self.running.len(),
            queued: self.waiting.len(),
        }
    }

    fn update_gauges(&self) {
        let l = self.load();
        self.metrics.set_gauges(l.running, l.queued, l.kv_used, l.kv_capacity);
    }

    /// A prefill line for a step that computed prompt tokens, else counts a decode step.
    fn log_step(&mut self, prompt_tokens: usize, generated: usize, admitted: (usize, usize)) {
        let load = self.load();
        if prompt_tokens > 0 {
            let (new_seqs, cached_tokens) = admitted;
            let line = PrefillLine {
                new_seqs,
                new_tokens: prompt_tokens,
                cached_tokens,
                hit_rate: self.radix.hit_rate(),
                load,
            };
            tracing::info!("{line}");
        } else if let Some(line) = self.decode_log.record(generated, load) {
            tracing::info!("{line}");
        }
    }

    fn handle(&mut self, msg: SchedulerMsg) {
        if matches!(
            msg,
            SchedulerMsg::Abort(_) | SchedulerMsg::AbortSeq(_) | SchedulerMsg::AbortAll | SchedulerMsg::FlushCache(_)
        ) {
            // Sequences leave (or the cache empties) only with no sample of theirs in flight.
            self.drain();
        }
        match msg {
            SchedulerMsg::Add(req, out) => self.add(*req, out),
            SchedulerMsg::Abort(rid) => self.abort(|id| id.rid == rid),
            SchedulerMsg::AbortSeq(seq) => self.abort(|id| *id == seq),
            SchedulerMsg::AbortAll => self.abort(|_| true),
            SchedulerMsg::FlushCache(reply) => {
                let _ = reply.send(self.flush_cache());
            }
            SchedulerMsg::Shutdown => self.shutting_down = true,
        }
    }

    fn add(&mut self, req: TokenizedRequest, out: EventSender) {
        if self.shutting_down {
            let _ = out.send(TokenEvent::Error("the server is shutting down".into()));
            return;
        }
        if let Err(msg) = self.check(&req) {
            let _ = out.send(TokenEvent::Error(msg));
            return;
        }
        let state = match SequenceState::new(req.params, &req.input_ids) {
            Ok(s) => s,
            Err(e) => {
                let _ = out.send(TokenEvent::Error(e.to_string()));
                return;
            }
        };
        Metrics::add(&self.metrics.prompt_tokens_total, req.input_ids.len() as u64);
        self.waiting.push_back(Seq {
            id: req.id,
            prompt_len: req.input_ids.len(),
            tokens: req.input_ids,
            max_new: req.max_new_tokens,
            stop_ids: req.stop_token_ids,
            state: Some(state),
            slot: None,
            cached: 0,
            in_flight: 0,
            prefix_len: 0,
            node: None,
            mm: req.mm,
            out,
            arrived: Instant::now(),
            last_token: None,
        });
    }

    /// Rejects what could make a step fail (the handlers check these first).
    fn check(&self, req: &TokenizedRequest) -> Result<(), String> {
        let vocab = self.runner.config().vocab_size;
        let limit = self.cfg.max_context_len.min(self.kv_capacity());
        if req.input_ids.is_empty() {
            return Err("the prompt is empty".into());
        }
        self.runner
            .check_images(&req.input_ids, req.mm.as_deref())
            .map_err(|e| e.to_string())?;
        if let Some(bad) = req.input_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(format!("token id {bad} is out of the vocabulary (size {vocab})"));
        }
        if req.max_new_tokens == 0 || req.input_ids.len() + req.max_new_tokens > limit {
            return Err(format!(
                "prompt ({} tokens) + max_new_tokens ({}) exceeds the limit of {limit} tokens",
                req.input_ids.len(),
                req.max_new_tokens
            ));
        }
        Ok(())
    }

    fn abort(&mut self, matches: impl Fn(&SeqId) -> bool) {
        let (gone, kept): (Vec<Seq>, Vec<Seq>) = self.waiting.drain(..).partition(|s| matches(&s.id));
        self.waiting = kept.into();
        let (gone_running, kept): (Vec<Seq>, Vec<Seq>) = self.running.drain(..).partition(|s| matches(&s.id));
        self.running = kept;
        for mut s in gone.into_iter().chain(gone_running) {
            self.free(&mut s);
            let _ = s.out.send(TokenEvent::Aborted);
        }
    }

    /// Sequences whose receiver is gone (client disconnected) are dropped with their KV.
    fn drop_disconnected(&mut self) {
        let closed = |s: &Seq| s.out.is_closed();
        if self.running.iter().any(closed) || self.waiting.iter().any(closed) {
            self.drain();
            self.abort_where(closed);
        }
    }

    fn abort_where(&mut self, pred: impl Fn(&Seq) -> bool) {
        let mut i = 0;
        while i < self.running.len() {
            if pred(&self.running[i]) {
                let mut s = self.running.remove(i);
                self.free(&mut s);
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|s| !pred(s));
    }

    /// Releases a sequence's KV slots and request slot, first handing its computed tokens to the
    /// prefix cache.
    fn free(&mut self, s: &mut Seq) {
        self.release(s, true);
    }

    /// Releases a sequence; `cache`: keep its computed KV in the prefix cache (not after a
    /// failed step, whose KV may be garbage).
    fn release(&mut self, s: &mut Seq, cache: bool) {
        let Some(slot) = s.slot.take() else {
            return;
        };
        let result = (|| -> Result<(), String> {
            let kv = self
                .runner
                .req_pool_mut()
                .kv_indices(slot, 0..s.cached)
                .map_err(|e| e.to_string())?;
            // Only tokens the host knows can key the tree (a launched step may be computing
            // the K/V of one it has not read yet: that slot is freed like the uncached ones).
            let known = s.cached.min(s.tokens.len());
            // Slots before `prefix_len` are the tree's. Cached: the tree takes ours past what it
            // already held up to `known`, we free our duplicates of what it held and the rest.
            // Not cached: free all ours.
            let (dups_end, rest) = if cache && !self.radix.is_disabled() {
                let held = self
                    .radix
                    .insert(&s.radix_key(known), &kv[..known])
                    .map_err(|e| e.to_string())?;
                (held.max(s.prefix_len), known.max(s.prefix_len))
            } else {
                (s.cached, s.cached)
            };
            let pool = self.runner.kv_pool_mut();
            pool.free(&kv[s.prefix_len..dups_end]).map_err(|e| e.to_string())?;
            pool.free(&kv[rest..]).map_err(|e| e.to_string())?;
            if let Some(node) = s.node.take() {
                self.radix.dec_lock_ref(node).map_err(|e| e.to_string())?;
            }
            self.runner.detach_images(slot);
            self.runner.req_pool_mut().free(slot).map_err(|e| e.to_string())
        })();
        if let Err(e) = result {
            tracing::error!("releasing {:?}: {e}", s.id);
        }
        s.cached = 0;
        s.in_flight = 0;
        s.prefix_len = 0;
    }

    /// Drops the prefix cache when nothing is in flight.
    fn flush_cache(&mut self) -> bool {
        if !self.running.is_empty() || !self.waiting.is_empty() {
            return false;
        }
        match self.radix.reset() {
            Ok(slots) => self.runner.kv_pool_mut().free(&slots).is_ok(),
            Err(_) => false,
        }
    }

    /// Admits `s` into request slot `slot`, reusing its longest cached prefix (always leaving
    /// one token to compute, for the logits, and never part of an image).
    fn admit(&mut self, s: &mut Seq, slot: usize) -> Result<(), String> {
        let mut m = self.radix.match_prefix(&s.radix_key(s.tokens.len() - 1));
        // The lock on the deeper node also protects the shorter prefix kept.
        m.kv_slots.truncate(s.clamp_prefix(m.kv_slots.len()));
        self.radix.inc_lock_ref(m.last_node).map_err(|e| e.to_string())?;
        s.node = Some(m.last_node);
        s.slot = Some(slot);
        if let Some(mm) = &s.mm {
            self.runner
                .attach_images(slot, &s.tokens[..s.prompt_len], mm.clone())
                .map_err(|e| e.to_string())?;
        }
        if !m.kv_slots.is_empty() {
            self.runner
                .req_pool_mut()
                .write(slot, 0, &m.kv_slots)
                .map_err(|e| e.to_string())?;
            Metrics::add(&self.metrics.cached_tokens_total, m.kv_slots.len() as u64);
        }
        s.cached = m.kv_slots.len();
        s.prefix_len = m.kv_slots.len();
        Ok(())
    }

    /// Moves the newest running sequence back to the queue front; its tokens are recomputed
    /// when it is admitted again.
    fn retract_newest(&mut self) -> bool {
        let Some(mut s) = self.running.pop() else {
            return false;
        };
        self.free(&mut s);
        Metrics::add(&self.metrics.retractions_total, 1);
        tracing::info!("retracted {:?} ({} tokens) for lack of KV slots", s.id, s.tokens.len());
        self.waiting.push_front(s);
        true
    }

    /// Free KV slots, counting what the prefix cache can evict.
    fn kv_available(&self) -> usize {
        self.runner.kv_pool().available() + self.radix.evictable_size()
    }

    /// Evicts from the prefix cache until `needed` slots are free in the pool.
    fn make_room(&mut self, needed: usize) {
        let available = self.runner.kv_pool().available();
        if available < needed {
            let pool = self.runner.kv_pool_mut();
            self.radix.evict(needed - available, |slots| {
                if let Err(e) = pool.free(slots) {
                    tracing::error!("freeing evicted KV slots: {e}");
                }
            });
        }
    }

    /// Chooses this step's work: every running sequence's pending tokens (decode: one; an
    /// unfinished chunked prefill: the next chunk), then new sequences FCFS, prefill chunks
    /// limited by `max_prefill_tokens` and free KV slots.
    fn schedule(&mut self) -> Vec<(usize, usize)> {
        let max_context = self.cfg.max_context_len;
        let decodes = |running: &[Seq]| {
            running
                .iter()
                .filter(|s| s.pending() == 1 && !s.ends_in_flight(max_context))
                .count()
        };
        // Decodes first: each needs one slot; retract the newest until they fit (with no
        // sample in flight: a retracted sequence must have all its tokens).
        while decodes(&self.running) > self.kv_available() && self.running.len() > 1 {
            if self.in_flight.is_some() {
                self.drain();
            } else {
                self.retract_newest();
            }
        }
        let mut kv_left = self.kv_available().saturating_sub(decodes(&self.running));
        let mut budget = self.cfg.max_prefill_tokens;
        let mut plan = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            if s.ends_in_flight(max_context) {
                continue;
            }
            let pending = s.pending();
            if pending == 1 {
                plan.push((i, 1));
                continue;
            }
            let take = pending.min(budget).min(kv_left);
            if take > 0 {
                budget -= take;
                kv_left -= take;
                plan.push((i, take));
            }
        }
        while self.running.len() < self.cfg.max_running_requests && budget > 0 {
            let Some(front) = self.waiting.front() else { break };
            let hit = self
                .radix
                .rematch_prefix(&front.radix_key(front.tokens.len() - 1))
                .kv_slots
                .len();
            let cached = front.clamp_prefix(hit);
            let take = (front.tokens.len() - cached).min(budget);
            // Admit only with room for the chunk plus one decode slot per running sequence.
            if take + self.running.len() > kv_left || self.runner.req_pool_mut().available() == 0 {
                break;
            }
            let Some(mut s) = self.waiting.pop_front() else { break };
            let slot = match self.runner.req_pool_mut().alloc(1) {
                Ok(slots) => slots[0],
                Err(e) => {
                    let _ = s.out.send(TokenEvent::Error(format!("no request slot: {e}")));
                    continue;
                }
            };
            if let Err(e) = self.admit(&mut s, slot) {
                self.release(&mut s, false);
                let _ = s.out.send(TokenEvent::Error(format!("admitting the request: {e}")));
                continue;
            }
            // Locking the matched prefix made it unevictable: check the room again.
            let take = (s.tokens.len() - s.cached).min(budget);
            let planned: usize = plan.iter().map(|&(_, t)| t).sum();
            if planned + take + self.running.len() > self.kv_available() {
                self.release(&mut s, false);
                self.waiting.push_front(s);
                break;
            }
            budget -= take;
            kv_left -= take;
            self.admitted.0 += 1;
            self.admitted.1 += s.cached;
            self.running.push(s);
            plan.push((self.running.len() - 1, take));
        }
        plan
    }

    /// Runs one step: launch the planned chunks (sampling for sequences whose pending tokens are
    /// all in), then read the previous step's tokens, emit them and retire finished sequences.
    /// Without overlap the step's own tokens are read at once.
    fn step(&mut self) {
        // Only this step's admissions go into its batch line (a failed step logs none).
        self.admitted = (0, 0);
        let plan = self.schedule();
        if plan.is_empty() {
            if self.in_flight.is_some() {
                // What is in flight may finish sequences and free their slots.
                return self.drain();
            }
            if self.running.len() > 1 {
                // Partly prefilled sequences hold all free KV slots: make room.
                self.retract_newest();
            } else if !self.waiting.is_empty() && self.running.is_empty() {
                // Nothing fits even alone: cannot happen after `check`, but never spin.
                let s = self.waiting.pop_front();
                if let Some(s) = s {
                    let _ = s
                        .out
                        .send(TokenEvent::Error("the request does not fit the KV cache".into()));
                }
            }
            return;
        }
        let plan = self.encode_images(plan);
        if plan.is_empty() {
            return self.drain();
        }
        // Rows of the step in flight, by sequence: where a continuing sequence's token is.
        let sample_rows: std::collections::HashMap<&SeqId, usize> = self
            .in_flight
            .iter()
            .flat_map(|f| f.rows.iter().enumerate().map(|(row, (id, _))| (id, row)))
            .collect();
        let mut futures = Vec::new();
        let mut inputs = Vec::with_capacity(plan.len());
        for (b, &(i, take)) in plan.iter().enumerate() {
            let s = &self.running[i];
            let new_tokens = if s.in_flight > 0 {
                // Its one pending token is the step in flight's sample (a placeholder here).
                let Some(&row) = sample_rows.get(&s.id) else {
                    let id = s.id.clone();
                    self.drain();
                    let msg = "internal error: the sequence waits for a sample no step has in flight";
                    return self.fail_seqs(&[id], msg);
                };
                futures.push((b, row));
                vec![0]
            } else {
                s.tokens[s.cached..s.cached + take].to_vec()
            };
            inputs.push(SequenceInput {
                req_slot: s.slot.unwrap_or(usize::MAX),
                prefix_len: s.cached,
                new_tokens,
            });
        }
        drop(sample_rows);
        let needed = inputs.iter().map(|i| i.new_tokens.len()).sum();
        // Prompt chunks: everything but one-token steps of sequences already generating.
        let prompt_tokens: usize = plan
            .iter()
            .filter(|&&(i, take)| take > 1 || (self.running[i].output_len() == 0 && self.running[i].in_flight == 0))
            .map(|&(_, take)| take)
            .sum();
        self.make_room(needed);
        let ids: Vec<SeqId> = plan.iter().map(|&(i, _)| self.running[i].id.clone()).collect();
        let launched = catch_unwind(AssertUnwindSafe(|| self.launch(&plan, &inputs, &futures)));
        let launched = match launched {
            Ok(Ok(rows)) => Some(rows),
            Ok(Err(e)) => {
                self.fail_seqs(&ids, &e);
                None
            }
            Err(panic) => {
                self.fail_seqs(&ids, &format!("internal error (panic): {}", panic_message(&*panic)));
                None
            }
        };
        let launched = launched.map(|(pending, rows)| InFlight {
            pending,
            rows,
            prompt_tokens,
            admitted: self.admitted,
        });
        self.drain();
        self.in_flight = launched;
        if !self.cfg.overlap {
            self.drain();
        }
    }

    /// Reads the step in flight, if any: emits its tokens and retires finished sequences.
    fn drain(&mut self) {
        if let Some(f) = self.in_flight.take() {
            self.complete(f);
        }
    }

    /// Reads a launched step's tokens. Rows of sequences that left meanwhile are dropped.
    fn complete(&mut self, f: InFlight) {
        let index: std::collections::HashMap<&SeqId, usize> =
            self.running.iter().enumerate().map(|(i, s)| (&s.id, i)).collect();
        let at: Vec<Option<usize>> = f
            .rows
            .iter()
            .map(|(id, real)| real.then(|| index.get(id).copied()).flatten())
            .collect();
        drop(index);
        let mut states: Vec<SequenceState> = at
            .iter()
            .map(|i| {
                i.and_then(|i| self.running[i].state.take())
                    .unwrap_or_else(SequenceState::placeholder)
            })
            .collect();
        let result = catch_unwind(AssertUnwindSafe(|| self.runner.finish(f.pending, &mut states)));
        for (i, st) in at.iter().zip(states) {
            if let Some(&i) = i.as_ref() {
                self.running[i].state = Some(st);
                self.running[i].in_flight -= 1;
            }
        }
        let samples = match result {
            Ok(Ok(samples)) => samples,
            Ok(Err(e)) => return self.fail_rows(&f.rows, &e.to_string()),
            Err(panic) => {
                return self.fail_rows(&f.rows, &format!("internal error (panic): {}", panic_message(&*panic)))
            }
        };
        let samples: Vec<(usize, SampleOutput)> = at
            .into_iter()
            .zip(samples)
            .filter_map(|(i, sample)| Some((i?, sample)))
            .collect();
        let generated = samples.len();
        self.postprocess(samples);
        self.log_step(f.prompt_tokens, generated, f.admitted);
    }

    fn fail_rows(&mut self, rows: &[(SeqId, bool)], msg: &str) {
        let ids: Vec<SeqId> = rows.iter().map(|(id, _)| id.clone()).collect();
        self.fail_seqs(&ids, msg);
    }

    /// Checks and queues the images the planned chunks reach (the forward encodes them at once);
    /// a request whose image fails gets the error and leaves. Returns the others' plan.
    fn encode_images(&mut self, plan: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
        let mut failed = Vec::new();
        for &(i, take) in &plan {
            let s = &self.running[i];
            let (Some(slot), Some(_)) = (s.slot, &s.mm) else {
                continue;
            };
            if let Err(e) = self.runner.encode_images(slot, s.cached..s.cached + take) {
                failed.push((s.id.clone(), format!("image input: {e}")));
            }
        }
        if failed.is_empty() {
            return plan;
        }
        let ids: Vec<(SeqId, usize)> = plan.iter().map(|&(i, t)| (self.running[i].id.clone(), t)).collect();
        Metrics::add(&self.metrics.request_errors_total, failed.len() as u64);
        for (id, msg) in &failed {
            tracing::error!("{id:?}: {msg}");
            if let Some(i) = self.running.iter().position(|s| s.id == *id) {
                let mut s = self.running.remove(i);
                self.release(&mut s, false);
                let _ = s.out.send(TokenEvent::Error(msg.clone()));
            }
        }
        ids.into_iter()
            .filter_map(|(id, t)| Some((self.running.iter().position(|s| s.id == id)?, t)))
            .collect()
    }

    /// Prepares and launches the planned chunks (`futures`: `(batch row, sample row of the
    /// step in flight)` for continuing sequences); returns the launched step and each row's
    /// sequence with whether its sample is real. Sampling goes through
    /// [`ModelRunner::launch`], so on a GPU only the sampled ids come back (not `[batch,
    /// vocab]` f32 logits to sample here), and not before the next step is launched.
    fn launch(
        &mut self,
        plan: &[(usize, usize)],
        inputs: &[SequenceInput],
        futures: &[(usize, usize)],
    ) -> Result<(PendingStep, Vec<(SeqId, bool)>), String> {
        let batch = self
            .runner
            .prepare(inputs, LogitsMode::LastPerSequence)
            .map_err(|e| e.to_string())?;
        for &(i, take) in plan {
            self.running[i].cached += take;
        }
        let batch = batch.with_future_tokens(futures).map_err(|e| e.to_string())?;
        // A step samples every sequence of the batch: the real state where this step
        // completes the sequence's pending tokens, a throwaway greedy one for a prompt chunk
        // with more to come (its sample is dropped, its own RNG is not advanced).
        let rows: Vec<(SeqId, bool)> = plan
            .iter()
            .map(|&(i, _)| {
                let s = &self.running[i];
                (s.id.clone(), s.cached == s.tokens.len() + s.in_flight)
            })
            .collect();
        if plan
            .iter()
            .zip(&rows)
            .any(|(&(i, _), (_, real))| *real && self.running[i].state.is_none())
        {
            return Err("sequence state missing".into());
        }
        let mut states: Vec<SequenceState> = plan
            .iter()
            .zip(&rows)
            .map(|(&(i, _), (_, real))| {
                if *real {
                    self.running[i].state.take().expect("checked above")
                } else {
                    SequenceState::placeholder()
                }
            })
            .collect();
        let launched = self.runner.launch(&batch, &mut states);
        for ((&(i, _), (_, real)), st) in plan.iter().zip(&rows).zip(states) {
            if *real {
                self.running[i].state = Some(st);
            }
        }
        let pending = launched.map_err(|e| e.to_string())?;
        for (&(i, _), (_, real)) in plan.iter().zip(&rows) {
            self.running[i].in_flight += usize::from(*real);
        }
        Ok((pending, rows))
    }

    /// Fails the sequences among `ids` still running (their KV is not cached).
    fn fail_seqs(&mut self, ids: &[SeqId], msg: &str) {
        tracing::error!("step failed: {msg}");
        let mut i = 0;
        let mut failed = 0;
        while i < self.running.len() {
            if ids.contains(&self.running[i].id) {
                let mut s = self.running.remove(i);
                self.release(&mut s, false);
                let _ = s.out.send(TokenEvent::Error(msg.to_string()));
                failed += 1;
            } else {
                i += 1;
            }
        }
        Metrics::add(&self.metrics.request_errors_total, failed);
    }

    /// Emits each `(running index, sample)`, then retires finished sequences.
    fn postprocess(&mut self, samples: Vec<(usize, SampleOutput)>) {
        let now = Instant::now();
        let mut done = Vec::new();
        for (i, sample) in samples {
            let s = &mut self.running[i];
            let token = sample.token;
            s.tokens.push(token);
            Metrics::add(&self.metrics.generation_tokens_total, 1);
            match s.last_token {
                None => self.metrics.observe_ttft((now - s.arrived).as_secs_f64()),
                Some(t) => self.metrics.observe_tpot((now - t).as_secs_f64()),
            }
            s.last_token = Some(now);
            let finish = if s.stop_ids.contains(&token) {
                Some(Finish::StopToken(token))
            } else if s.output_len() >= s.max_new || s.tokens.len() >= self.cfg.max_context_len {
                Some(Finish::Length)
            } else {
                None
            };
            let sent = s.out.send(TokenEvent::Token {
                sample,
                finish: finish.clone(),
            });
            if finish.is_some() || sent.is_err() {
                done.push(s.id.clone());
            }
        }
        if !done.is_empty() {
            self.abort_where(|s| done.contains(&s.id));
        }
    }
}

/// A caught panic's message.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
