"""Tiny retrieval base: size, answer-only labels, a save/reload round trip."""

import random

import torch

from trainkit.longctx import tinybase, tinydata
from trainkit.longctx.chartok import char_tokenizer


def test_model_size_and_answer_only_labels(tmp_path):
    cfg = tinybase.TinyBaseConfig()
    model = tinybase.build_model(cfg.model, seed=0)
    assert 1.0e6 < sum(p.numel() for p in model.parameters()) < 1.1e6
    assert model.config.head_dim == 32 and model.config.vocab_size == 64
    tok = char_tokenizer()
    ids, att, lab = tinydata.make_batch(tok, random.Random(0), cfg.train, 200, 0, 0, 4)
    assert ids.shape == lab.shape == att.shape and ids.shape[0] == 4
    for i in range(4):
        answer = [t for t in lab[i].tolist() if t != -100]
        text = tok.decode(answer[:-1])
        assert text.isdigit() and len(text) == 5 and answer[-1] == tok.eos_token_id
        n = int(att[i].sum())
        assert ids[i, n - len(answer) : n].tolist() == answer  # labels are the last tokens
    with torch.no_grad():
        loss, acc = tinybase.answer_loss_and_accuracy(model, ids, att, lab)
    assert abs(float(loss) - torch.log(torch.tensor(64.0)).item()) < 1.0 and float(acc) == 0.0
    tinybase.save(model, tok, tmp_path / "m")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    re_model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "m")("Ab1")["input_ids"] == tok("ab1")["input_ids"]
    )
    with torch.no_grad():
        torch.testing.assert_close(re_model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_random_filler_kv_formats():
    """Letter keys " abcd: NNNNN. " and symbol keys " %NNNNN. ": the asked pair is in the
    context at the stated depth, once, and every sample has exactly the requested length."""
    from trainkit.longctx.tinydata import FILLER, KEY_SYMBOLS, SEP, random_sample

    for alphabet, depth in (("letters", 0.0), ("symbols", 0.5), ("symbols", 1.0)):
        for seed in range(5):
            ctx, q, ans = random_sample(
                random.Random(seed), "kv", 256, depth, n_keys=4, key_alphabet=alphabet
            )
            assert len(ctx) + len(SEP) + len(q) == 256 and q.endswith("?")
            key = q[:-1]
            fact = f" {key}{'' if alphabet == 'symbols' else ': '}{ans}. "
            assert ctx.count(fact) == 1 and ans.isdigit() and len(ans) == 5
            n_fill = 256 - len(SEP) - len(q) - 4 * len(fact)
            assert abs(ctx.index(fact) - round(depth * n_fill)) <= 3 * len(fact)
            if alphabet == "symbols":
                assert len(key) == 1 and key in KEY_SYMBOLS and key not in FILLER
                assert sum(ctx.count(f" {k}") for k in KEY_SYMBOLS) == 4  # four distinct keys
            else:
                assert len(key) == 4 and set(key) <= set(FILLER)
    ctx, q, ans = random_sample(random.Random(0), "kv", 128, 0.5, 2, True, 4, "symbols")
    assert ans[0] == q[0] and f" {ans}. " in ctx  # echo: the answer repeats the key


def test_kv_queries_add_follow_up_turns_without_changing_the_sample():
    tok = char_tokenizer()
    one = tinybase.TinyTrainSection(tasks=["kv"], key_alphabet="symbols")
    many = tinybase.TinyTrainSection(tasks=["kv"], key_alphabet="symbols", kv_queries=4)
    ids1, lab1 = tinydata.sample_ids(tok, one, "kv", 128, 0.5, 0, 7, 4)
    ids4, lab4 = tinydata.sample_ids(tok, many, "kv", 128, 0.5, 0, 7, 4)
    assert ids4[: len(ids1)] == ids1 and lab4[: len(lab1)] == lab1  # first turn unchanged
    text = tok.decode(ids4)
    answers = tok.decode([t for t in lab4 if t != -100]).split("<|end|>")[:-1]
    questions = [q.split("<|end|>")[0][-2:] for q in text.split("<|user|>")[1:]]
    assert len(answers) == len(questions) == 4 and len(set(questions)) == 4
    for q, a in zip(questions, answers):
        assert f" {q[0]}{a}. " in text  # each answer is the value of the key asked


def test_prose_filler_is_real_text_without_digits_or_keys():
    """``prose``: the same sample format in stdlib docstring text, deterministic by seed; the
    asked pair is in the context once, near the stated depth, and the filler holds no digit,
    key symbol or separator."""
    from trainkit.longctx.tinydata import KEY_SYMBOLS, PROSE_KEEP, SEP, random_sample

    a = random_sample(random.Random(3), "kv", 400, 0.25, 4, True, 4, "symbols", prose=True)
    b = random_sample(random.Random(3), "kv", 400, 0.25, 4, True, 4, "symbols", prose=True)
    assert a == b
    ctx, q, ans = a
    assert len(ctx) + len(SEP) + len(q) == 400 and ans[0] == q[0]
    fact = f" {ans}. "
    assert ctx.count(fact) == 1
    n_fill = 400 - len(SEP) - len(q) - 4 * len(fact)
    assert abs(ctx.index(fact) - round(0.25 * n_fill)) <= 3 * len(fact)
    filler = ctx
    for k in KEY_SYMBOLS:
        filler = filler.replace(k, "")
    filler = "".join(c for c in filler if not c.isdigit())
    assert set(filler) <= PROSE_KEEP
    assert sum(ctx.count(k) for k in KEY_SYMBOLS) == 4  # only the four keys
    words = [w for w in ctx.split() if w.isalpha() and len(w) > 3]
    assert sum(w in ("the", "that", "with", "this", "return", "returns") for w in ctx.split()) >= 2
    assert len(words) > 20  # words, not random letters
    # the sample ids path: same text through sample_ids, and passkey works too
    t = tinybase.TinyTrainSection(source="prose", key_alphabet="symbols", kv_echo=True)
    ids, lab = tinydata.sample_ids(char_tokenizer(), t, "passkey", 300, 0.5, 0, 1, 1)
    assert len(ids) == 300 + 3 + 6 and len([x for x in lab if x != -100]) == 6
