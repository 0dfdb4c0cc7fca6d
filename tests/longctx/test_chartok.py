"""The 64-token character tokenizer: one id per character, newlines included."""

from trainkit.longctx.chartok import char_tokenizer, vocab


def test_newlines_are_characters_and_round_trip(tmp_path):
    from transformers import AutoTokenizer

    v = vocab()
    nl, unk = v["\n"], v["<unk>"]
    tok = char_tokenizer()
    assert tok("a\nb", add_special_tokens=False)["input_ids"] == [v["a"], nl, v["b"]]
    # the old Split regex "." left "\n\n" as one unmatched piece -> a single <unk>
    assert tok("a\n\nb", add_special_tokens=False)["input_ids"] == [v["a"], nl, nl, v["b"]]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Key:\n\n\n  X9 é"
    ids = again(text, add_special_tokens=False)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and ids.count(nl) == 3 and ids.count(unk) == 1  # "é"
    assert again.decode(ids) == "key:\n\n\n  x9 <unk>"
    assert again.decode(again("a\nb", add_special_tokens=False)["input_ids"]) == "a\nb"
    chat = again.apply_chat_template(
        [{"role": "user", "content": "x\n\ny"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|user|>x\n\ny<|end|><|assistant|>"
