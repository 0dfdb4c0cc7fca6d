"""The tiny GRPO run that the RL trainer, Ray and reliability tests start from: a task from
the shipped arithmetic set, 2 prompts x 4 completions of 4 tokens a step, no periodic eval,
no progress bar. Tests add the model, output folder and budgets, and usually
``data.reward={VARIED_REWARD}``: this file is loaded by path (also inside Ray actors, whose
``sys.path`` lacks tests/), so it imports nothing."""


def varied_reward(prompts, completions, **labels):
    """A reward with spread on a random model's output: completion length mod 3."""
    return [float(len(c) % 3) for c in completions]


#: ``data.reward`` value naming :func:`varied_reward`
VARIED_REWARD = f"[{__file__}:varied_reward]"

TINY_GRPO = [
    "data.path=arithmetic_number_only",
    "data.chat_template=false",
    "rollout.max_new_tokens=4",
    "rollout.n=4",
    "rollout.prompts_per_step=2",
    "eval.n_prompts=4",
    "eval.every=0",
    "train.progress=false",
]
