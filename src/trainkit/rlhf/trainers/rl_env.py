"""The multi-turn side of the RL loop: a step's episodes and their held-out evaluation.

With ``env.name`` set, :mod:`~trainkit.rlhf.trainers.rl_loop` replaces "generate, then
score with ``data.reward``" by :meth:`EpisodeRunner.play`: one environment per row (from
the prompt record: its ``prompt`` and labels), whole episodes sampled through the
backend's ``generate`` (any engine, local or Ray), and the episode rewards as the step's
rewards. Everything after (experience, estimators, the update) is the single-turn code:
the rollout's ``action_mask`` has holes on the observations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class EpisodeRunner:
    """Builds a row's environment and renders its messages for one run.

    Args:
        cfg: the RL config (``env``, ``data.chat_template``, ``rollout``).
        tokenizer: the policy's tokenizer.
    """

    def __init__(self, cfg: Any, tokenizer: Any):
        from trainkit.rlhf.envs.config import EnvFactory
        from trainkit.rlhf.envs.render import Renderer

        self.cfg, self.tok = cfg, tokenizer
        self.factory = EnvFactory(cfg.env)
        self.renderer = Renderer(tokenizer, self.factory.tools, cfg.data.chat_template)

    def envs(self, texts: list[Any], labels: dict[str, list], n: int) -> list[Any]:
        """``n`` fresh environments per prompt (a string or a message list), rows grouped
        by prompt."""
        out = []
        for i, text in enumerate(texts):
            record = {"prompt": text, **{k: v[i] for k, v in labels.items()}}
            out += [self.factory(record) for _ in range(n)]
        return out

    def episodes(
        self,
        generate: Callable[..., Any],
        texts: list[str],
        labels: dict[str, list],
        n: int,
        seed: int,
        max_new_tokens: int,
    ) -> Any:
        """:class:`~trainkit.rlhf.rollout.episodes.Episodes` of ``n`` episodes per prompt;
        ``generate(ids, n=, max_new_tokens=, seed=) -> Rollout``."""
        from trainkit.rlhf.rollout.episodes import run_episodes

        e = self.cfg.env
        return run_episodes(
            generate,
            self.tok,
            self.renderer,
            self.envs(texts, labels, n),
            n,
            max_turns=e.max_turns,
            max_new_tokens=max_new_tokens,
            max_tokens=e.max_tokens,
            seed=seed,
            tool_call_reward=e.tool_call_reward,
            tool_error_reward=e.tool_error_reward,
        )

    def play(self, backend: Any, texts: list[str], labels: dict[str, list], seed: int):
        """A training step's :class:`~trainkit.rlhf.rollout.episodes.Episodes`, sampled
        through ``backend.generate`` with the ``rollout`` settings."""
        r = self.cfg.rollout

        def generate(ids, n, max_new_tokens, seed):
            return backend.generate(ids, seed, n=n, max_new_tokens=max_new_tokens)

        return self.episodes(generate, texts, labels, r.n, seed, r.max_new_tokens)

    def evaluate(self, engine: Any, records: list[dict], seed: int) -> dict[str, float]:
        """Held-out episodes on ``engine`` with the ``eval`` settings (greedy when
        ``eval.temperature == 0``): ``eval_reward``, ``eval_accuracy`` (episodes the
        environment marked correct), ``eval_tool_call_rate``, ``eval_turns``,
        ``eval_truncated_frac``."""
        ev, r = self.cfg.eval, self.cfg.rollout
        tokens = ev.max_new_tokens or r.max_new_tokens
        recs = records[: ev.n_prompts]
        k = ev.samples_per_prompt

        def generate(ids, n, max_new_tokens, seed):
            return engine.generate(
                ids,
                n=n,
                max_new_tokens=max_new_tokens,
                temperature=ev.temperature,
                top_p=1.0,
                seed=seed,
            )

        rew, acc, tools, turns, trunc = [], [], [], [], []
        per = max(1, ev.batch_size // k)
        for s in range(0, len(recs), per):
            chunk = recs[s : s + per]
            labels = {
                key: [c.get(key) for c in chunk]
                for key in sorted({x for c in chunk for x in c if x != "prompt"})
            }
            ep = self.episodes(generate, [c["prompt"] for c in chunk], labels, k, seed + s, tokens)
            rew += ep.rewards
            acc += [c is True for c in ep.correct]
            B = len(ep.rewards)
            tools.append(ep.stats["env/tool_call_rate"] * B)
            turns.append(ep.stats["env/turns"] * B)
            trunc.append(ep.stats["env/truncated_frac"] * B)
        m = max(len(rew), 1)
        return {
            "eval_reward": sum(rew) / m,
            "eval_accuracy": sum(acc) / m,
            "eval_tool_call_rate": sum(tools) / m,
            "eval_turns": sum(turns) / m,
            "eval_truncated_frac": sum(trunc) / m,
        }
