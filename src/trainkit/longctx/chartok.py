"""A 64-token character tokenizer that plain ``transformers.AutoTokenizer`` reloads.

Small models for the CPU experiment need a small vocabulary (docs/papers.md, machine facts):
text is lower-cased and split into single characters; every character outside
:data:`CHARS` becomes ``<unk>``. Chat turns are marked with special tokens
``<|user|>``, ``<|assistant|>``, ``<|end|>`` through a Jinja chat template, so
``apply_chat_template`` works as for any chat model. Built with the ``tokenizers``
library as a ``PreTrainedTokenizerFast`` (imported lazily).
"""

from __future__ import annotations

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>")
#: the 57 ordinary symbols; with the 7 specials the vocabulary has 64 entries
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 \n.,:;'\"?!-()/_=+*[]%"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def vocab() -> dict[str, int]:
    """Token -> id: specials first (``<pad>`` = 0), then :data:`CHARS` in order."""
    return {t: i for i, t in enumerate(SPECIALS + tuple(CHARS))}


def char_tokenizer():
    """A fresh ``PreTrainedTokenizerFast`` (64 tokens, lower-casing, one token per character).

    ``eos_token`` is ``<|end|>`` (ends every chat turn, so greedy generation stops after
    the answer); ``bos_token`` ``<s>`` is not added automatically.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab(), unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # every character its own piece: "." would not match "\n", and the unmatched run "\n\n"
    # became one piece, i.e. one <unk> (tokenizers saved before 2026-11-27 have that bug)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        additional_special_tokens=["</s>", "<|user|>", "<|assistant|>"],
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
