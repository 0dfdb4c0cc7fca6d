"""A tiny model that plays the feedback game's reply format (multi-turn RL tests)."""

import random

import torch

from trainkit.rlhf.envs.builtin import make_guess
from trainkit.rlhf.envs.render import Renderer


def guess_warm_start(out, tok_model, high, steps=30, lr=3e-3, seed=0):
    """SFT on the reply format of the feedback game: any context -> ' <k><eos>', k
    uniform in 1..high (after 0-2 earlier turns with random feedback). It leaves many
    empty replies (' <eos>'), which waste turns: room for RL."""
    model, tok = tok_model
    torch.manual_seed(seed)
    r = Renderer(tok, {}, chat_template=False)
    rng = random.Random(seed)
    recs = make_guess(64, seed, "train", high=high)

    def sample():
        ids = r.first([{"role": "user", "content": rng.choice(recs)["prompt"]}])
        for _ in range(rng.randint(0, 2)):
            fb = [{"role": "user", "content": rng.choice(["higher", "lower"])}]
            g = tok(f" {rng.randint(1, high)}", add_special_tokens=False).input_ids
            ids = ids + g + [tok.eos_token_id] + r.continuation(fb)
        a = tok(f" {rng.randint(1, high)}", add_special_tokens=False).input_ids
        return ids, a + [tok.eos_token_id]

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = [sample() for _ in range(32)]
        L = max(len(p) + len(a) for p, a in batch)
        x = torch.full((32, L), tok.pad_token_id)
        y = torch.full((32, L), -100)
        am = torch.zeros(32, L, dtype=torch.long)
        for k, (p, a) in enumerate(batch):
            x[k, : len(p) + len(a)] = torch.tensor(p + a)
            am[k, : len(p) + len(a)] = 1
            y[k, len(p) : len(p) + len(a)] = torch.tensor(a)
        logits = model(input_ids=x, attention_mask=am).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
