"""Long-context evaluation: needle grid, passkey, key-value, topics, perplexity.

``evaluate(model, tokenizer, tasks, lengths, depths, seed, out_dir)`` is in
:mod:`trainkit.longctx.eval.runner` (re-exported here lazily, so importing this
package stays light).
"""


def __getattr__(name):
    if name in ("evaluate", "EvalConfig"):
        from trainkit.longctx.eval import runner

        return getattr(runner, name)
    raise AttributeError(name)
