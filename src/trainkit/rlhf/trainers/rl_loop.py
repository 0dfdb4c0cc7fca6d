"""The online-RL training loop, one for every place the models can live.

:func:`run_loop` is the whole recipe around a *backend* (:class:`RLBackend`) that holds
the models: the single-process one (:class:`~trainkit.rlhf.trainers.rl_local.LocalBackend`,
policy, reference, critic and rollout engine in this process) and the Ray one
(:class:`~trainkit.rlhf.ray.trainer.RayBackend`, the same roles as actors). The loop owns
what must not differ between them:

* the prompts of each step (:func:`prompt_indices`: a seeded permutation per epoch, so
  the order depends only on ``(train.seed, step)`` and resume is exact) and the step's
  seed (:func:`step_seed`: sampling, dropout, mini-batch shuffles);
* decoding the completions, the experience (KL, advantages over the whole batch:
  :func:`~trainkit.rlhf.trainers.experience.make_experience`, with the no-grad passes
  done or handed in by the backend);
* the timings (wall and CPU seconds per phase), the step record (rollout stats, reward
  failures, experience and update stats, accuracy, lr, the caller's ``metrics``), the
  ``metrics.jsonl`` logger, ``on_log``, the progress bar and its postfix;
* when to evaluate and to checkpoint, Ctrl-C (:class:`~trainkit.common.guard.GracefulInterrupt`:
  finish the step, checkpoint it, no final eval or model, ``interrupted: true``; the CLI
  exits 130) and the summary (``summary.json``; the same keys for every backend, plus
  the backend's own, e.g. Ray's ``startup_s``).

One step, in order: ``generate`` -> decode -> ``score`` -> ``forwards`` + experience ->
``learn`` -> ``sync_weights`` -> record, metrics, log -> eval / save when due. The first
three are the step's *producing* (:meth:`_Loop.produce`, or the multi-turn episodes);
with ``rollout.async=true`` they run ahead on the pipeline's thread
(:mod:`~trainkit.rlhf.trainers.rl_async`) on a fixed lag of ``rollout.max_staleness``
policy versions, and ``sync_weights`` gives way to a weight snapshot per update that the
pipeline loads into the engine when a batch is due.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = [
    "Metric",
    "RLBackend",
    "StepContext",
    "prepare_output",
    "prompt_indices",
    "run_loop",
    "step_seed",
]

SEED_STRIDE = 1_000_003


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step`` (0-based) of a run seeded ``seed``: the rollout's sampling
    seed, and every process that trains seeds torch with it before its update."""
    return seed * SEED_STRIDE + step


def prompt_indices(n_items: int, per_step: int, step: int, seed: int) -> list[int]:
    """Prompts of ``step``: consecutive slots of a seeded permutation per epoch."""
    out = []
    for slot in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(slot, n_items)
        g = torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)
        out.append(int(torch.randperm(n_items, generator=g)[pos]))
    return out


def prepare_output(cfg: Any) -> Path:
    """Check the prompt records, then create ``output_dir`` and write the resolved config
    there (a bad data file leaves no folder behind); returns the folder."""
    from trainkit.common.run import save_config
    from trainkit.rlhf.trainers.rl_data import check_prompt_records

    check_prompt_records(cfg.data, cfg.train.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return out


@dataclass
class StepContext:
    """What a metric function sees after each training step (treat it as read-only).

    Attributes:
        step: the finished step, 1-based (the ``step`` of its record).
        prompts: ``[B]`` prompt texts, each repeated ``rollout.n`` times (``B = n_prompts * n``).
        completions: ``[B]`` decoded completions.
        labels: per-key lists of ``[B]`` labels (``answer``, ...).
        rewards: ``[B]`` float32 rewards.
        valid: ``[B]`` False where the reward failed.
        rollout: the step's :class:`~trainkit.rlhf.rollout.base.Rollout` (token ids,
            masks, behaviour log-probs; rows in the order of ``completions``).
        record: the step record so far (rollout stats, timings, losses, ...).
    """

    step: int
    prompts: list[str]
    completions: list[str]
    labels: dict[str, list]
    rewards: torch.Tensor
    valid: list[bool]
    rollout: Any
    record: dict[str, Any]


#: a metric: called by the loop once per step; the returned keys join the step record
Metric = Callable[[StepContext], dict]


class RLBackend(Protocol):
    """Where the models live and how each piece of a step is computed there.

    Attributes:
        name: ``"local"``, ``"ray"``, ... (the progress bar shows it when not local).
        tokenizer: the policy's tokenizer, in this process (prompts and decoding).
        nonfinite_skipped: updates dropped by the non-finite guard so far.
    """

    name: str
    tokenizer: Any
    nonfinite_skipped: int

    def resume(self) -> int:
        """Load the newest checkpoint of ``output_dir`` (models, optimizers, RNGs); the
        step it continues from (0: none). The loop calls :meth:`sync_weights` next."""

    def sync_weights(self) -> float:
        """Give the rollout engines the policy's current weights (nothing to do when the
        engine *is* the policy); the seconds it took."""

    def snapshot(self) -> Any:
        """``rollout.async``: a copy of the policy's current weights that
        :meth:`load_weights` can give the engines later (called after each update)."""

    def load_weights(self, snapshot: Any) -> float:
        """``rollout.async``: give the engines the weights of a :meth:`snapshot` (called
        on the pipeline's thread between batches); the seconds it took."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        seed: int,
        n: int | None = None,
        max_new_tokens: int | None = None,
    ) -> Any:
        """Sample ``n`` (default ``rollout.n``) completions per prompt of at most
        ``max_new_tokens`` (default ``rollout.max_new_tokens``) with the sampling settings
        of ``rollout``; a :class:`~trainkit.rlhf.rollout.base.Rollout` of ``B`` rows,
        groups of ``n`` consecutive. ``info["gen_tokens"]`` is required; ``info["actor_cpu_s"]``
        (CPU seconds spent in other processes) is added to ``gen_cpu_s``."""

    def score(self, prompts: list[str], completions: list[str], labels: dict) -> Any:
        """:class:`~trainkit.rlhf.trainers.rl_data.Scores` of the ``B`` rows."""

    def forwards(self, rollout: Any, step: int) -> dict[str, Any]:
        """The no-grad side of :func:`~trainkit.rlhf.trainers.experience.make_experience`
        as its keyword arguments: the models that run the passes in this process
        (``policy``, ``ref_model``, ``critic``), or their results computed elsewhere
        (``policy=None, precomputed={old_logp, ref_logp, values}``)."""

    def learn(self, exp: Any, step: int) -> dict[str, float]:
        """The PPO / value-loss update on the step's experience; its stats (``lr`` when
        known: the loop logs the last one on steps without an update)."""

    def evaluate(self, step: int) -> dict[str, float] | None:
        """Held-out ``eval_*`` figures with the current weights; None: no eval split."""

    def save(self, step: int) -> None:
        """Checkpoint the state after ``step`` steps (critic first, then the policy)."""

    def save_model(self) -> None:
        """Write the final policy (and tokenizer) to ``output_dir/final``."""

    def failed(self, error: Exception, done: int, saved: int) -> Exception | None:
        """A step raised ``error`` after ``done`` finished steps, the last checkpoint
        being of step ``saved``: checkpoint what can be saved and return the exception
        to raise instead, or None to re-raise ``error``."""

    def summary(self) -> dict[str, Any]:
        """Keys this backend adds to the summary (e.g. startup seconds)."""

    def close(self) -> None:
        """Release engines, actors and clusters (called once, also after errors)."""


def run_loop(
    cfg: Any,
    backend: RLBackend,
    on_log: Callable[[dict], Any] | None = None,
    metrics: Sequence[Metric] = (),
) -> dict[str, Any]:
    """Train ``cfg.train.max_steps`` steps with ``backend``; closes it at the end.

    Args:
        cfg: a validated RL config.
        backend: the built backend (:class:`RLBackend`).
        on_log: optional ``f(record)`` called with every logged record (steps and evals).
        metrics: functions ``f(ctx: StepContext) -> dict`` called after every step; their
            keys are added to the step record (a key the record already has is an error).

    Returns:
        The summary: ``steps``, ``seconds``, ``first_eval``, ``last_eval``,
        ``nonfinite_skipped``, ``interrupted`` and the backend's :meth:`RLBackend.summary`.
    """
    from trainkit.common.logging import MetricsLogger
    from trainkit.config import to_dict
    from trainkit.rlhf.trainers import rl_data

    try:
        recs, _ = rl_data.load_prompt_records(cfg.data, cfg.train.seed)
        train_set = rl_data.tokenize_prompts(recs, backend.tokenizer, cfg.data)
        start = backend.resume() if cfg.train.resume else 0
        backend.sync_weights()
        logger = MetricsLogger(
            Path(cfg.output_dir), report_to=cfg.train.report_to, config=to_dict(cfg)
        )
        try:
            return _Loop(cfg, backend, train_set, logger, on_log, metrics).run(start)
        finally:
            logger.close()
    finally:
        backend.close()


class _Loop:
    """The state of one run of :func:`run_loop`."""

    def __init__(self, cfg, backend, train_set, logger, on_log, metrics):
        self.cfg, self.b, self.train_set, self.logger = cfg, backend, train_set, logger
        self.on_log, self.metrics = on_log, tuple(metrics)
        self.evals: list[dict] = []
        self.lr: float | None = None
        self.episodes = None  # multi-turn (env.name): the step's episodes
        self.pipe = None  # rollout.async: the batches produced ahead (rl_async.Pipeline)
        if getattr(cfg, "env", None) is not None and cfg.env.name:
            from trainkit.rlhf.trainers.rl_env import EpisodeRunner

            self.episodes = EpisodeRunner(cfg, backend.tokenizer)

    def log(self, step: int, rec: dict) -> None:
        r = self.logger.log(step, **rec)
        if self.on_log:
            self.on_log(r)

    def evaluate(self, step: int) -> None:
        t = time.perf_counter()
        rec = self.b.evaluate(step) if self.pipe is None else self.pipe.evaluate(step)
        if rec is None:
            return
        rec["eval_s"] = time.perf_counter() - t
        self.evals.append({"step": step, **rec})
        self.log(step, rec)

    def run(self, start: int) -> dict[str, Any]:
        if not self.cfg.rollout.async_:
            return self._run(start)
        from trainkit.rlhf.trainers.rl_async import Pipeline, load_inflight

        r, out = self.cfg.rollout, Path(self.cfg.output_dir)
        restored = load_inflight(out, start) if start else {}
        if start and not restored:
            print(
                f"warning: no batches in flight saved with step {start}: steps {start}.."
                f"{start + r.max_staleness - 1} are sampled by version {start}",
                file=sys.stderr,
            )
        self.pipe = Pipeline(
            self.b, self.produce, start, r.max_staleness, self.cfg.train.max_steps, restored
        )
        try:
            return self._run(start)
        finally:
            self.pipe.close()

    def save(self, step: int) -> None:
        self.b.save(step)
        if self.pipe is not None:  # the batches produced ahead, for an exact resume
            self.pipe.save(Path(self.cfg.output_dir), step)

    def _run(self, start: int) -> dict[str, Any]:
        from trainkit.common.guard import GracefulInterrupt
        from trainkit.common.io import atomic_write_json
        from trainkit.common.logging import progress

        cfg, b, t = self.cfg, self.b, self.cfg.train
        if start == 0:
            self.evaluate(0)
        t_run = time.perf_counter()
        where = "" if b.name == "local" else f" ({b.name})"
        bar = progress(
            total=t.max_steps,
            initial=start,
            desc=f"rl {cfg.algo.estimator}{where}",
            disable=not t.progress,
        )
        done = saved = start
        try:
            with GracefulInterrupt() as stop:
                for step in range(start, t.max_steps):
                    rec = self.step(step)
                    bar.update(1)
                    bar.set_postfix(reward=f"{rec['reward']:.3f}", kl=f"{rec.get('kl', 0.0):.3f}")
                    done = step + 1
                    if cfg.eval.every and done % cfg.eval.every == 0 and done < t.max_steps:
                        self.evaluate(done)
                    if (t.save_every and done % t.save_every == 0) or stop.requested:
                        self.save(done)
                        saved = done
                    if stop.requested:
                        break
        except Exception as e:
            bar.close()
            instead = b.failed(e, done, saved)
            if instead is None:
                raise
            raise instead from None
        bar.close()
        # Ctrl-C: the step finished and was checkpointed above; no final eval or model
        interrupted = stop.requested and done < t.max_steps
        if not interrupted and (done > start or not self.evals):
            self.evaluate(done)
        if done > saved:
            self.save(done)
        if t.save_model and not interrupted:
            b.save_model()
        summary = {
            "steps": done,
            "seconds": time.perf_counter() - t_run,
            "first_eval": self.evals[0] if self.evals else None,
            "last_eval": self.evals[-1] if self.evals else None,
            "nonfinite_skipped": b.nonfinite_skipped,
            "interrupted": interrupted,
            **({} if self.pipe is None else {"staleness": self.pipe.histogram()}),
            **b.summary(),
        }
        atomic_write_json(Path(cfg.output_dir) / "summary.json", summary)
        return summary

    def produce(self, step: int, version: int) -> Any:
        """The samples of ``step`` (0-based): generate, decode, score (or the episodes);
        on the pipeline's thread with ``rollout.async``, else in the step."""
        from trainkit.rlhf.trainers import rl_data
        from trainkit.rlhf.trainers.rl_async import Batch

        cfg, b = self.cfg, self.b
        clock = time.thread_time if self.pipe is not None else time.process_time
        t0, c0 = time.perf_counter(), clock()  # CPU s: fair on shared cores
        seed = step_seed(cfg.train.seed, step)
        idx = prompt_indices(
            len(self.train_set), cfg.rollout.prompts_per_step, step, cfg.train.seed
        )
        texts, ids, labels = self.train_set.take(idx)
        n = cfg.rollout.n
        rep = {k: [v for v in vals for _ in range(n)] for k, vals in labels.items()}
        prompts = [x for x in texts for _ in range(n)]
        if self.episodes is None:
            ro = b.generate(ids, seed)
            t1, c1 = time.perf_counter(), clock()
            comps = rl_data.decode(b.tokenizer, ro.response_ids, ro.action_mask)
            sc = b.score(prompts, comps, rep)
        else:  # multi-turn: generation and scoring are the episodes (gen_s covers both)
            ep = self.episodes.play(b, self.train_set.originals(idx), labels, seed)
            ro, comps, sc = ep.rollout, ep.replies, rl_data.episode_scores(ep)
            t1, c1 = time.perf_counter(), clock()
        cpu = c1 - c0 + ro.info.get("actor_cpu_s", 0.0)
        return Batch(
            step, version, prompts, rep, ro, comps, sc, t1 - t0, cpu, time.perf_counter() - t1
        )

    def step(self, step: int) -> dict[str, Any]:
        """One training step; returns its record (already logged)."""
        from trainkit.rlhf.trainers.experience import make_experience, rollout_stats
        from trainkit.rlhf.trainers.ppo_update import share_prompt

        cfg, b = self.cfg, self.b
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(cfg.train.seed, step))  # dropout etc.: exact resume
        if self.pipe is not None:  # produced ahead on the pipeline's thread
            batch, arec = self.pipe.get(step)
        else:
            batch, arec = self.produce(step, step), {}
        ro, comps, sc, rep = batch.rollout, batch.completions, batch.scores, batch.labels
        t1 = time.perf_counter()
        rewards = torch.tensor(sc.rewards, dtype=torch.float32)
        exp, xstats = make_experience(
            ro,
            rewards,
            algo=cfg.algo,
            temperature=cfg.rollout.temperature,
            micro_batch=cfg.train.micro_batch_size,
            share_prompt=share_prompt(cfg),
            valid=torch.tensor(sc.valid),
            **b.forwards(ro, step),
        )
        t2 = t3 = time.perf_counter()
        stats, sync_s = {}, 0.0
        if exp is not None:  # None: dynamic sampling dropped every group
            stats = dict(b.learn(exp, step))
            t3 = time.perf_counter()
            if self.pipe is None:
                sync_s = b.sync_weights()
        if self.pipe is not None:  # the weights of version step + 1, for later batches
            self.pipe.updated(step + 1)
            sync_s = time.perf_counter() - t3
        t4 = time.perf_counter()
        self.lr = stats.pop("lr", self.lr)
        score_s = batch.score_s if self.pipe is None else 0.0  # async: off the main thread
        rec = {
            **rollout_stats(rewards, ro),
            "gen_s": batch.gen_s,
            "gen_cpu_s": batch.gen_cpu_s,
            "exp_s": t2 - t1 + score_s,
            "train_s": t3 - t2,
            "sync_s": sync_s,
            "step_s": t4 - t0,
            "tokens_per_s": ro.info["gen_tokens"] / max(t4 - t0, 1e-9),
            **({} if self.lr is None else {"lr": self.lr}),
            **sc.stats,
            **xstats,
            **stats,
            **arec,
        }
        if sc.hits is not None:
            rec["accuracy"] = sum(v == 1.0 for v in sc.hits) / len(comps)
        if exp is None:
            rec["skipped_update"] = 1
        if b.nonfinite_skipped:
            rec["nonfinite_skipped"] = b.nonfinite_skipped
        if self.metrics:
            ctx = StepContext(step + 1, batch.prompts, comps, rep, rewards, list(sc.valid), ro, rec)
            for fn in self.metrics:
                rec.update(_metric_values(fn, ctx, rec))
        self.log(step + 1, rec)
        return rec


def _metric_values(fn: Metric, ctx: StepContext, rec: dict) -> dict:
    got = fn(ctx)
    name = getattr(fn, "__name__", repr(fn))
    if not isinstance(got, dict):
        raise TypeError(f"metric {name} returned {type(got).__name__}, expected a dict")
    clash = sorted(k for k in got if k in rec or k == "step")
    if clash:
        raise ValueError(f"metric {name} returned keys the step record already has: {clash}")
    return got
